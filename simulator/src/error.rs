//! Why a simulated fleet could not run.

use thiserror::Error;

/// Everything [`crate::run`] can fail with. Connection trouble is not here: a fleet keeps
/// running through it and reports it in its [`crate::Summary`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SimulatorError {
    /// A fleet needs at least one device.
    #[error("a fleet needs at least one device")]
    NoDevices,
    /// Devices publish once per interval, so it cannot be zero.
    #[error("the publish interval must be greater than zero")]
    ZeroInterval,
}
