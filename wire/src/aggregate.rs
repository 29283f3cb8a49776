//! Group aggregates: what the bridge derives for every prefix of the location hierarchy, and
//! publishes on `iotmon/agg/<group path>` when the roles run apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::device::GroupPath;

/// One metric aggregated over the latest values of a group's devices (booleans count as 0
/// or 1, so `mean` is the fraction that is `true`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricAggregate {
    /// Devices of the group that have reported this metric.
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// How many of a group's devices are online, offline, and alerting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    pub online: u64,
    pub offline: u64,
    /// Devices with an active alert (raised and not yet cleared).
    pub alerting: u64,
}

/// The aggregate of one group (every device whose group path starts with `group`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAggregate {
    /// The group path, levels joined by `/` (`hq`, `hq/building-a`).
    pub group: GroupPath,
    /// When the bridge computed it, milliseconds since the Unix epoch.
    pub ts: i64,
    pub devices: DeviceCounts,
    /// Metric name to its aggregate, sorted by name.
    pub metrics: BTreeMap<Arc<str>, MetricAggregate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_round_trips_through_json() {
        let mut metrics = BTreeMap::new();
        metrics.insert(
            Arc::from("temperature"),
            MetricAggregate {
                count: 2,
                mean: 21.5,
                min: 20.0,
                max: 23.0,
            },
        );
        let aggregate = GroupAggregate {
            group: "hq/building-a".into(),
            ts: 1_704_723_845_000,
            devices: DeviceCounts {
                online: 2,
                offline: 1,
                alerting: 0,
            },
            metrics,
        };
        let json = serde_json::to_string(&aggregate).expect("serialize");
        assert_eq!(
            json,
            r#"{"group":"hq/building-a","ts":1704723845000,"devices":{"online":2,"offline":1,"alerting":0},"metrics":{"temperature":{"count":2,"mean":21.5,"min":20.0,"max":23.0}}}"#
        );
        let back: GroupAggregate = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, aggregate);
    }
}
