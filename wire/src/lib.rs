//! Types and conventions shared by every iotmon role: what a device's state looks like on the
//! wire, how MQTT topics are laid out, the dashboard's viewer protocol, and how a role connects
//! to an external MQTT broker.
//!
//! - [`device`]: a device's latest state, as the bridge derives it and viewers receive it.
//! - [`alert`]: alerts, their lifecycle, and what operators ask of them.
//! - [`aggregate`]: group aggregates (per metric count/mean/min/max, devices online/offline).
//! - [`partition`]: which bridge owns which devices (`--partition K/N`, a stable hash).
//! - [`partial`]: partitions' partial group aggregates and their merge.
//! - [`live_update`]: the batches the bridge hands to dashboards.
//! - [`topics`]: the topic tree (`sensors/...`, `iotmon/live/...`) and its parsing.
//! - [`viewer`]: the WebSocket messages between the dashboard and a browser.
//! - [`history`]: what a dashboard reads from the store, through [`history::HistorySource`].
//! - [`metrics`]: exporting counters in the Prometheus text format.
//! - [`supervise`]: panics logged and counted; a panic in a critical task stops the process.
//! - [`mqtt`]: `mqtt://host:port` addresses and a resilient client session loop.

pub mod aggregate;
pub mod alert;
pub mod device;
pub mod history;
pub mod live_update;
pub mod metrics;
pub mod mqtt;
pub mod partial;
pub mod partition;
pub mod supervise;
pub mod topics;
pub mod viewer;

pub use aggregate::{DeviceCounts, GroupAggregate, MetricAggregate};
pub use alert::{Alert, AlertCommand, AlertId, AlertState, Severity};
pub use device::{DeviceId, DeviceState, GroupPath, MetricValue, Metrics};
pub use live_update::LiveUpdate;

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn unix_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
