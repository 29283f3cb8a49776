//! A device's latest state: what the bridge keeps per device and what viewers are sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A device's id: the last level of its topic, unique across the fleet.
pub type DeviceId = Arc<str>;

/// A device's location in the hierarchy, levels joined by `/` (`hq/building-a/floor-3`).
pub type GroupPath = Arc<str>;

/// Metric name to its latest value, sorted by name so output is stable.
pub type Metrics = BTreeMap<Arc<str>, MetricValue>;

/// One metric's value. Devices send numbers or booleans; both are kept as sent so a viewer
/// shows `true` rather than `1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricValue {
    Number(f64),
    Bool(bool),
}

impl MetricValue {
    /// The value as a number (booleans as 0 or 1), for arithmetic such as aggregates.
    pub fn as_f64(self) -> f64 {
        match self {
            MetricValue::Number(n) => n,
            MetricValue::Bool(b) => f64::from(u8::from(b)),
        }
    }
}

/// The latest known state of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub id: DeviceId,
    pub group: GroupPath,
    /// Time of the latest reading, milliseconds since the Unix epoch (the device's `ts`, or the
    /// time the bridge received it when the device sent none).
    pub ts: i64,
    /// Latest value of every metric the device has ever reported; a reading that omits a metric
    /// leaves its previous value in place.
    pub metrics: Metrics,
    /// Whether the device is online: it has reported within its silence limit and its latest
    /// `status/...` message (if any) is not `offline`. Absent in older payloads: online.
    #[serde(default = "online_by_default")]
    pub online: bool,
}

fn online_by_default() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json_keeping_booleans() {
        let mut metrics = Metrics::new();
        metrics.insert("temperature".into(), MetricValue::Number(23.5));
        metrics.insert("door_open".into(), MetricValue::Bool(true));
        let state = DeviceState {
            id: "temp-0042".into(),
            group: "hq/building-a".into(),
            ts: 1_704_723_845_000,
            metrics,
            online: true,
        };
        let json = serde_json::to_string(&state).expect("serialize");
        assert_eq!(
            json,
            r#"{"id":"temp-0042","group":"hq/building-a","ts":1704723845000,"metrics":{"door_open":true,"temperature":23.5},"online":true}"#
        );
        let back: DeviceState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, state);
    }
}
