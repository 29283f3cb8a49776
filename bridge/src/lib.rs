//! The bridge: turns the raw device stream into per-device state and hands the changes to
//! dashboards.
//!
//! Data flow: [`source`] (broker messages) → [`ingest`] (payload parsing) → [`devices`]
//! (latest state per device) → [`pipeline`] (the loop that ties them and emits coalesced
//! batches) → a dashboard in-process, or [`live_publisher`] on `iotmon/live/...` topics.
//! [`standalone`] composes the pieces for `iotmon bridge --broker ...`.

pub mod config;
pub mod counters;
pub mod devices;
pub mod ingest;
pub mod live_publisher;
pub mod pipeline;
pub mod reject_log;
pub mod source;
pub mod standalone;

pub use config::{BridgeConfig, IngestLimits};
pub use counters::BridgeCounters;
pub use pipeline::run;

/// Capacity of the channel from the broker to the bridge, in messages. When full, the
/// reader waits (the broker holds messages in its bounded log, then skips for us).
pub const INPUT_CAPACITY: usize = 4096;

/// Capacity of the channel of live batches to the consumer, in batches. When full, the bridge
/// keeps the changed devices and sends them, coalesced, in a later batch.
pub const LIVE_CAPACITY: usize = 8;
