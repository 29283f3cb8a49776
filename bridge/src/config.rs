//! Bridge settings, with iotmon's defaults in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the bridge ingests and how often it publishes device states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// How often changed device states are handed to dashboards. A device that reports more
    /// often is coalesced to its latest state, so this caps the live rate per device.
    #[serde(with = "humantime_serde")]
    pub live_interval: Duration,
    /// What a device payload may contain.
    pub limits: IngestLimits,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            live_interval: Duration::from_millis(250),
            limits: IngestLimits::default(),
        }
    }
}

/// Bounds on one device message; anything beyond is refused and counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestLimits {
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Most metrics in one reading.
    pub max_metrics: usize,
    /// Longest metric name, in bytes.
    pub max_metric_name_bytes: usize,
    /// Most readings in one batch (array payload).
    pub max_batch: usize,
    /// Oldest timestamp accepted, relative to receipt.
    #[serde(with = "humantime_serde")]
    pub max_past: Duration,
    /// Newest timestamp accepted, relative to receipt (device clocks drift).
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_payload_bytes: 16 * 1024,
            max_metrics: 64,
            max_metric_name_bytes: 64,
            max_batch: 100,
            max_past: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(5 * 60),
        }
    }
}
