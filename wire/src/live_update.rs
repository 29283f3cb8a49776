//! What the bridge derives from the raw device stream and hands to dashboards: in-process in
//! `iotmon serve`, or over `iotmon/...` topics when the roles run apart.

use crate::aggregate::GroupAggregate;
use crate::alert::Alert;
use crate::device::DeviceState;
use crate::partition::Partition;

/// One batch of live updates the bridge hands to dashboards: what changed since the previous
/// batch.
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
    /// Partition K of N's bridge is gone: every share of group aggregates it sent aged out
    /// unrefreshed (see [`crate::partial`]). Never sent by a bridge: a dashboard's MQTT source
    /// tells its hub, in the same stream as the device states so that a state its new bridge
    /// sends later is applied after it. The hub marks the partition's devices offline, since
    /// the bridge that judged their presence is not there to.
    PartitionGone(Partition),
}
