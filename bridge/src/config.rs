//! Bridge settings, with iotmon's defaults in one place.

use std::time::Duration;

use iotmon_wire::partition::Partition;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How the bridge ingests, derives and stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// How often changed device states are handed to dashboards: the delay a reading may wait
    /// in the bridge before it is on its way to viewers.
    #[serde(with = "humantime_serde")]
    pub live_interval: Duration,
    /// The shortest gap between two live states of one device: a device reporting faster is
    /// coalesced to its latest state, so this caps each device's live rate (4 per second by
    /// default) while `live_interval` keeps the delay short.
    #[serde(with = "humantime_serde")]
    pub live_min_gap: Duration,
    /// How often group aggregates are emitted (the aggregation window).
    #[serde(with = "humantime_serde")]
    pub aggregate_interval: Duration,
    /// How often a partitioned bridge sends every group's partial aggregate, changed or not:
    /// dashboards and partition 0 age out a partition's shares after three refreshes missed
    /// (its bridge is gone) and count its devices offline.
    #[serde(with = "humantime_serde")]
    pub partial_refresh: Duration,
    /// Worker tasks the devices are sharded across, by a hash of the device id; 0 means one
    /// per available core.
    pub shards: usize,
    /// What a device payload may contain.
    pub limits: IngestLimits,
    /// When a device counts as offline.
    pub presence: PresenceConfig,
    /// Downsampling tiers.
    pub rollups: RollupConfig,
    /// The embedded SQLite store.
    pub store: StoreConfig,
    /// The optional InfluxDB sink.
    pub influx: InfluxConfig,
    /// The share of the fleet this bridge owns, `"K/N"`: the devices whose id hashes to K
    /// modulo N (see `iotmon_wire::partition`). Absent: every device, as a lone bridge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<Partition>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            live_interval: Duration::from_millis(25),
            live_min_gap: Duration::from_millis(250),
            aggregate_interval: Duration::from_secs(1),
            partial_refresh: iotmon_wire::partial::PARTIAL_REFRESH,
            shards: 0,
            limits: IngestLimits::default(),
            presence: PresenceConfig::default(),
            rollups: RollupConfig::default(),
            store: StoreConfig::default(),
            influx: InfluxConfig::default(),
            partition: None,
        }
    }
}

/// The largest `bridge.store.queue` accepted, in batches.
pub const MAX_STORE_QUEUE: usize = 65_536;

/// Why a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("bridge.rollups.tiers must not be empty")]
    NoTiers,
    #[error("rollup tier widths must be whole seconds and each a multiple of the previous one ({0:?} is not)")]
    TierWidth(Duration),
    #[error("bridge.{0} must be greater than zero")]
    Zero(&'static str),
    #[error("bridge.{0} must be at most {1}")]
    TooLarge(&'static str, usize),
    #[error("bridge.influx is enabled but {0} is empty")]
    InfluxField(&'static str),
    #[error("bridge.influx.url must start with http:// or https:// (got {0:?})")]
    InfluxUrl(String),
}

impl BridgeConfig {
    /// Checks what serde cannot: tiers that nest, non-zero intervals, a complete InfluxDB
    /// section when it is enabled.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("live_interval", self.live_interval),
            ("aggregate_interval", self.aggregate_interval),
            ("partial_refresh", self.partial_refresh),
            ("store.flush_interval", self.store.flush_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        // The store's channel is allocated up front: an absurd bound would take the memory at
        // start instead of refusing.
        if self.store.queue > MAX_STORE_QUEUE {
            return Err(ConfigError::TooLarge("store.queue", MAX_STORE_QUEUE));
        }
        self.rollups.validate()?;
        self.influx.validate()
    }

    /// How long this bridge's partial aggregates stand unrefreshed where they are merged.
    pub fn share_lifetime(&self) -> Duration {
        iotmon_wire::partial::share_lifetime(self.partial_refresh, self.aggregate_interval)
    }

    /// The partition this bridge owns: all of the fleet unless one was given.
    pub fn partition(&self) -> Partition {
        self.partition.unwrap_or(Partition::WHOLE)
    }

    /// The number of shards to run: `shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism().map_or(1, usize::from)
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

/// Presence: a device is offline after `offline` on its status topic, or after a silence of
/// `silence_factor` times its observed reporting interval (`default_silence` until an interval
/// is known), never less than `min_silence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    pub silence_factor: f64,
    #[serde(with = "humantime_serde")]
    pub min_silence: Duration,
    #[serde(with = "humantime_serde")]
    pub default_silence: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            silence_factor: 3.0,
            min_silence: Duration::from_secs(10),
            default_silence: Duration::from_secs(60),
        }
    }
}

/// Downsampling: tiers of wall-clock-aligned windows, finest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollupConfig {
    /// How long after a window of the finest tier ends a late reading is still counted in it.
    /// Readings later than that are left out of the rollups (counted as
    /// `iotmon_rollup_late_readings_total`) but still update the device's live state.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// The tiers, finest first; each width a whole number of seconds and a multiple of the
    /// previous tier's.
    pub tiers: Vec<TierConfig>,
}

impl Default for RollupConfig {
    fn default() -> Self {
        let day = 24 * 3600;
        RollupConfig {
            grace: Duration::from_secs(5),
            tiers: vec![
                TierConfig::new(10, 2 * day),
                TierConfig::new(60, 30 * day),
                TierConfig::new(3600, 730 * day),
            ],
        }
    }
}

impl RollupConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.tiers.is_empty() {
            return Err(ConfigError::NoTiers);
        }
        let mut previous = 0;
        for tier in &self.tiers {
            let ms = tier.width_ms();
            let nests = previous == 0 || (ms > previous && ms % previous == 0);
            if ms == 0 || tier.width.subsec_nanos() != 0 || !nests {
                return Err(ConfigError::TierWidth(tier.width));
            }
            previous = ms;
        }
        Ok(())
    }
}

/// One downsampling tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Window width; windows are aligned to multiples of it since the Unix epoch.
    #[serde(with = "humantime_serde")]
    pub width: Duration,
    /// How long its rows are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl TierConfig {
    fn new(width_secs: u64, retention_secs: u64) -> Self {
        TierConfig {
            width: Duration::from_secs(width_secs),
            retention: Duration::from_secs(retention_secs),
        }
    }

    /// The width in milliseconds.
    pub fn width_ms(&self) -> i64 {
        i64::try_from(self.width.as_millis()).unwrap_or(i64::MAX)
    }

    /// The retention in milliseconds.
    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The embedded store (SQLite under the data directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Keep rollups and the device registry in SQLite.
    pub enabled: bool,
    /// How often the shards hand their rollup deltas and registry changes to the store; a
    /// `kill -9` loses at most this much.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Batches queued for the store thread. When full, a batch is dropped and counted
    /// (`iotmon_store_batches_dropped_total`): ingest never waits for the disk.
    pub queue: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            flush_interval: Duration::from_secs(1),
            queue: 64,
        }
    }
}

/// The InfluxDB v2 sink: closed rollup windows written through a durable outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfluxConfig {
    pub enabled: bool,
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub org: String,
    pub bucket: String,
    pub token: String,
    /// Largest the on-disk outbox may grow while the server is unreachable, in bytes. Beyond
    /// it the oldest batches are dropped and counted (`iotmon_influx_points_dropped_total`).
    pub max_outbox_bytes: u64,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        InfluxConfig {
            enabled: false,
            url: String::new(),
            org: String::new(),
            bucket: String::new(),
            token: String::new(),
            max_outbox_bytes: 1 << 30,
        }
    }
}

impl InfluxConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        for (name, value) in [("url", &self.url), ("bucket", &self.bucket)] {
            if value.is_empty() {
                return Err(ConfigError::InfluxField(name));
            }
        }
        let host = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        if host.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
            return Err(ConfigError::InfluxUrl(self.url.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_in_the_file_is_checked_and_named_when_wrong() {
        let config: BridgeConfig = toml::from_str("partition = \"1/2\"").expect("valid");
        assert_eq!(config.partition(), Partition::new(1, 2).expect("valid"));
        assert_eq!(BridgeConfig::default().partition(), Partition::WHOLE);
        let error = toml::from_str::<BridgeConfig>("partition = \"3/2\"")
            .expect_err("3/2 refused")
            .to_string();
        assert!(
            error.contains("partition") && error.contains("K must be below N"),
            "{error}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(BridgeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn tiers_must_nest() {
        let mut config = BridgeConfig::default();
        config.rollups.tiers[1].width = Duration::from_secs(25);
        assert!(matches!(config.validate(), Err(ConfigError::TierWidth(_))));
        config.rollups.tiers.clear();
        assert_eq!(config.validate(), Err(ConfigError::NoTiers));
    }

    #[test]
    fn enabled_influx_needs_a_url() {
        let mut config = BridgeConfig::default();
        config.influx.enabled = true;
        assert_eq!(config.validate(), Err(ConfigError::InfluxField("url")));
        config.influx.url = "localhost:8086".into();
        config.influx.bucket = "b".into();
        assert!(matches!(config.validate(), Err(ConfigError::InfluxUrl(_))));
        config.influx.url = "http://127.0.0.1:8086".into();
        assert_eq!(config.validate(), Ok(()));
    }
}
