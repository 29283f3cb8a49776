//! What the bridge derives from the raw device stream and hands to dashboards: in-process in
//! `iotmon serve`, or over `iotmon/...` topics when the roles run apart.

use crate::aggregate::GroupAggregate;
use crate::alert::Alert;
use crate::device::DeviceState;

/// One batch of derived data.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveUpdate {
    /// Devices whose state changed since the previous batch (latest state only: a device
    /// appears at most once per batch).
    Devices(Vec<DeviceState>),
    /// Groups whose aggregate changed during the last aggregation window (every group after a
    /// dashboard asked for a full resend); at most one entry per group.
    Aggregates(Vec<GroupAggregate>),
    /// Alerts that changed (raised, cleared, acknowledged, shelved, closed), each with its
    /// latest state. Sent at once, never held for a tick; after a dashboard asked for a full
    /// resend, every open alert.
    Alerts(Vec<Alert>),
}
