//! Why a benchmark could not run.

use iotmon_simulator::SimulatorError;
use thiserror::Error;

/// Everything a scenario can fail with before it has a report.
#[derive(Debug, Error, PartialEq)]
pub enum BenchError {
    /// The fleet or the viewers the scenario drives could not start.
    #[error(transparent)]
    Simulator(#[from] SimulatorError),
    /// The scenario itself could not run: a child process, a port, a measurement.
    #[error("bench: {0}")]
    Failed(String),
}
