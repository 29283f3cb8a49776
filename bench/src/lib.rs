//! `iotmon bench <scenario>`: whole scenarios on this machine, with a report.
//!
//! The system under test runs as a child process (`iotmon serve`, `iotmon broker` or
//! Debian's `mosquitto`) so its CPU time and peak memory can be read from `/proc/<pid>`;
//! the fleet and the viewers run in the bench process, whose own CPU is reported too (on a
//! small machine the load generator competes with what it measures).
//!
//! - `process`: the measured children and `/proc` readings.
//! - `serve`: one load point against `iotmon serve` (fleet + viewers), and the `reference`,
//!   `stress` and `fanout` scenarios built from load points.
//! - `broker`: the broker comparison, each broker's highest sustained rate, `iotmon broker`
//!   against mosquitto.
//! - `load`: the broker comparison's cheap load generator (raw MQTT publishers and a counting
//!   subscriber, with `iotmon_probe::mqtt`'s packets).
//! - `viewer_cost`: what one viewer costs as the fleet grows, from load points with and
//!   without viewers.
//! - `faults`: faults iotmon should survive (kill -9, an InfluxDB outage, stalled viewers, a
//!   reconnect storm, a full disk), each with what was lost.
//! - `split`: the same fleet through one bridge and through two partitioned bridges on
//!   mosquitto: CPU per reading, and the cost of merging partial aggregates.
//! - `report`: what a scenario prints.

mod broker;
mod error;
mod faults;
mod load;
pub mod process;
pub mod report;
mod serve;
pub mod split;
mod viewer_cost;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use iotmon_simulator::Qos;

pub use error::BenchError;
pub use faults::{FaultKind, FaultReport, Figure};
pub use report::BenchReport;

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 10K devices every 5 s, 1K viewers × 100 visible devices.
    Reference,
    /// The highest ingest sustained with zero loss, searched upward in steps.
    Stress,
    /// The most viewers at the reference ingest, searched upward in steps.
    Fanout,
    /// Broker throughput, `iotmon broker` against mosquitto, at QoS 0 and 1 with 1K and 10K
    /// connections.
    Broker,
    /// What each viewer costs (CPU, memory, bytes/s) at fleets of 1K, 10K and 100K devices
    /// with 5K viewers × 100 visible.
    ViewerCost,
    /// Faults survived, each with what was lost: `kill -9` of serve, an InfluxDB outage,
    /// stalled viewers, a reconnect storm, a full disk.
    Faults,
    /// The same fleet through one bridge and through two partitioned bridges on mosquitto.
    Split,
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "reference" => Ok(Scenario::Reference),
            "stress" => Ok(Scenario::Stress),
            "fanout" => Ok(Scenario::Fanout),
            "broker" => Ok(Scenario::Broker),
            "viewer-cost" => Ok(Scenario::ViewerCost),
            "faults" => Ok(Scenario::Faults),
            "split" => Ok(Scenario::Split),
            other => Err(format!(
                "unknown scenario {other:?}: use reference, stress, fanout, broker, viewer-cost, \
                 faults or split"
            )),
        }
    }
}

/// How to run a scenario. `None` fields take the scenario's own defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// The `iotmon` binary to start as the system under test.
    pub iotmon: PathBuf,
    pub scenario: Scenario,
    /// Devices in the fleet.
    pub devices: Option<usize>,
    /// Each device publishes once per interval.
    pub interval: Option<Duration>,
    /// Devices per MQTT connection (gateway mode).
    pub devices_per_connection: Option<usize>,
    /// Readings per message (batches); 1 sends one reading per message.
    pub readings_per_message: Option<usize>,
    /// Fake viewers (in `fanout`: the first step).
    pub viewers: Option<usize>,
    /// Devices on each viewer's screen.
    pub visible: Option<usize>,
    /// Chance per reading that a device starts an anomaly, which the bench's alert rule
    /// catches (`reference`: 0.002, a few alerts a second fleet-wide; other scenarios: 0, no
    /// anomalies and no rule).
    pub anomaly_rate: Option<f64>,
    /// Load before the measurement window starts (connections settle, the dashboard learns
    /// every device).
    pub warmup: Duration,
    /// Length of each measurement window.
    pub measure: Duration,
    /// A config file passed to `iotmon serve` or `iotmon broker` (e.g. to change
    /// `bridge.live_interval`, or to list the broker bench's subscriber as lossless).
    pub iotmon_config: Option<PathBuf>,
    /// `broker`: connection counts to compare at.
    pub connections: Vec<usize>,
    /// `broker`: QoS levels to compare at.
    pub qos: Vec<Qos>,
    /// `broker`: the first step's offered messages per second; `stress`: the first step's
    /// readings per second.
    pub rate: Option<f64>,
    /// `broker` and `stress`: highest rate tried; `fanout`: most viewers tried.
    pub max: Option<f64>,
    /// `broker`, `stress` and `fanout`: each step multiplies the load by this.
    pub step_factor: f64,
    /// `viewer-cost`: the fleet sizes to measure at, smallest first.
    pub fleets: Vec<usize>,
    /// `broker`: at most this many messages per socket write (1: one write per message, as
    /// single devices send); `None`: everything a connection owes at a visit (ten a second)
    /// in one write, as a gateway would.
    pub write_batch: Option<usize>,
    /// `broker`: search iotmon's broker only, without mosquitto (e.g. to compare builds).
    pub iotmon_only: bool,
    /// `faults`: which faults to run, in order.
    pub faults: Vec<FaultKind>,
    /// `faults`: how long the InfluxDB server stays down.
    pub outage: Duration,
    /// `faults`: viewers that connect and never read (default 1,000).
    pub stalled: Option<usize>,
}

impl BenchConfig {
    /// A scenario with its defaults: 10 s of warm-up and 20 s windows.
    pub fn new(iotmon: PathBuf, scenario: Scenario) -> Self {
        BenchConfig {
            iotmon,
            scenario,
            devices: None,
            interval: None,
            devices_per_connection: None,
            readings_per_message: None,
            viewers: None,
            visible: None,
            anomaly_rate: None,
            warmup: Duration::from_secs(10),
            measure: Duration::from_secs(20),
            iotmon_config: None,
            connections: vec![1_000, 10_000],
            qos: vec![Qos::AtMostOnce, Qos::AtLeastOnce],
            rate: None,
            max: None,
            iotmon_only: false,
            step_factor: 1.5,
            fleets: viewer_cost::DEFAULT_FLEETS.to_vec(),
            write_batch: None,
            faults: FaultKind::ALL.to_vec(),
            outage: faults::DEFAULT_OUTAGE,
            stalled: None,
        }
    }

    /// The arguments that pass `iotmon_config` to the iotmon under test, if any.
    fn config_args(&self) -> Vec<String> {
        self.iotmon_config
            .iter()
            .flat_map(|path| ["--config".to_string(), path.display().to_string()])
            .collect()
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.measure.is_zero() {
            return Err(BenchError::Failed("--measure must be positive".into()));
        }
        if self
            .anomaly_rate
            .is_some_and(|rate| !(0.0..=1.0).contains(&rate))
        {
            return Err(BenchError::Failed(
                "--anomaly-rate must be between 0 and 1".into(),
            ));
        }
        if self.step_factor <= 1.0 {
            return Err(BenchError::Failed("--step-factor must exceed 1".into()));
        }
        if self.write_batch == Some(0) {
            return Err(BenchError::Failed("--write-batch must be positive".into()));
        }
        if self.scenario == Scenario::Faults && self.faults.is_empty() {
            return Err(BenchError::Failed(
                "--faults needs at least one fault".into(),
            ));
        }
        if self.devices == Some(0) {
            return Err(BenchError::Failed("--devices must be positive".into()));
        }
        if self.connections.is_empty() || self.qos.is_empty() || self.fleets.is_empty() {
            return Err(BenchError::Failed(
                "--connections, --qos and --fleets need at least one value".into(),
            ));
        }
        Ok(())
    }
}

/// Runs the scenario and returns its report.
///
/// # Errors
/// The config is invalid, or the system under test could not be started or measured.
pub async fn run(
    config: BenchConfig,
    shutdown: CancellationToken,
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    match config.scenario {
        Scenario::Reference => serve::reference(&config, &shutdown).await,
        Scenario::Stress => serve::stress(&config, &shutdown).await,
        Scenario::Fanout => serve::fanout(&config, &shutdown).await,
        Scenario::Broker => broker::compare(&config, &shutdown).await,
        Scenario::ViewerCost => viewer_cost::viewer_cost(&config, &shutdown).await,
        Scenario::Faults => faults::faults(&config, &shutdown).await,
        Scenario::Split => split::split(&config, &shutdown).await,
    }
}

/// Polls `condition` every 50 ms until it holds or `limit` passes; whether it held.
pub(crate) async fn poll_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connections opened per second while a bench ramps up. iotmon's embedded broker (rumqttd's
/// accept loop) accepts about 1,000 connections a second at best on this machine, and
/// clients whose CONNACK takes longer than rumqttc's 5 s time out and retry, so benches ramp
/// well below that, and at the same pace for every broker compared.
pub(crate) const CONNECTS_PER_SECOND: f64 = 400.0;

/// How long to spread `count` connections over: [`CONNECTS_PER_SECOND`], at least a second.
pub(crate) fn ramp_for(count: usize) -> Duration {
    Duration::from_secs_f64((count as f64 / CONNECTS_PER_SECOND).max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_and_defaults_validate() {
        for (name, scenario) in [
            ("reference", Scenario::Reference),
            ("stress", Scenario::Stress),
            ("fanout", Scenario::Fanout),
            ("broker", Scenario::Broker),
            ("viewer-cost", Scenario::ViewerCost),
            ("faults", Scenario::Faults),
            ("split", Scenario::Split),
        ] {
            assert_eq!(name.parse(), Ok(scenario));
            let config = BenchConfig::new("iotmon".into(), scenario);
            assert_eq!(config.validate(), Ok(()));
        }
        assert!("fast".parse::<Scenario>().is_err());
        let bad = BenchConfig {
            step_factor: 1.0,
            ..BenchConfig::new("iotmon".into(), Scenario::Stress)
        };
        assert!(bad.validate().is_err());
        let bad = BenchConfig {
            anomaly_rate: Some(1.5),
            ..BenchConfig::new("iotmon".into(), Scenario::Reference)
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn ramps_grow_with_the_connection_count() {
        assert_eq!(ramp_for(10), Duration::from_secs(1));
        assert_eq!(ramp_for(10_000), Duration::from_secs(25));
    }

    #[tokio::test]
    async fn polling_gives_up_at_the_limit() {
        assert!(poll_until(Duration::from_millis(100), || true).await);
        assert!(!poll_until(Duration::from_millis(100), || false).await);
    }
}
