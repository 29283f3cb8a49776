//! The bridge: turns the raw device stream into per-device state, group aggregates, rollups
//! and durable history.
//!
//! Data flow: [`source`] (broker messages) → [`pipeline`] (dispatch by device id to shards,
//! one task each) → [`shard`] ([`ingest`] parses, latest state and presence per device,
//! [`aggregates`] incrementally per group, [`rollup`] deltas) → the dashboard in-process or
//! [`live_publisher`] on `iotmon/...` topics; the [`store`] thread (SQLite) keeps rollup tiers
//! and the device registry, serves history, and feeds the [`influx`] sink's outbox.
//! [`alerts`] evaluates rules in the shards and keeps the alert lifecycle, persisted and
//! pushed to dashboards at once. [`history_server`] answers dashboards' history questions over
//! MQTT when bridges are partitioned. [`standalone`] composes the pieces for `iotmon bridge --broker ...`.

pub mod aggregates;
pub mod alerts;
pub mod config;
pub mod counters;
pub mod history_server;
pub mod influx;
pub mod ingest;
pub mod live_publisher;
pub mod pipeline;
pub mod reject_log;
pub mod rollup;
pub mod shard;
pub mod source;
pub mod standalone;
pub mod store;

pub use config::{BridgeConfig, ConfigError, IngestLimits};
pub use counters::BridgeCounters;
pub use pipeline::run;

/// Hash maps and sets on the hot path: ahash, randomly keyed (device ids come from devices,
/// so the hasher must resist flooding), several times faster than std's SipHash here.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, ahash::RandomState>;

/// Capacity of the channel from the broker to the bridge, in messages. When full, the
/// reader waits (the broker holds messages in its bounded log, then skips for us).
pub const INPUT_CAPACITY: usize = 4096;

/// Capacity of the channel of live batches to the consumer, in batches. When full, the bridge
/// keeps the changed devices and groups and sends them, coalesced, in a later batch.
pub const LIVE_CAPACITY: usize = 8;
