//! Each device's latest state, and which devices changed since the last live batch.

use std::collections::{HashMap, HashSet};

use iotmon_wire::{DeviceId, DeviceState, Metrics};

use crate::ingest::Reading;

/// The latest state of every device seen, keyed by device id.
#[derive(Debug, Default)]
pub struct DeviceTable {
    devices: HashMap<DeviceId, DeviceState>,
    /// Devices changed since the last [`DeviceTable::take_changed`]; at most one entry per
    /// device, however often it reports, which is what coalesces the live stream.
    changed: HashSet<DeviceId>,
}

impl DeviceTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a reading from `device` under `group`. A device seen under a new group has
    /// moved. A reading older than the device's latest leaves the live state unchanged.
    pub fn apply(&mut self, group: &str, device: &str, reading: Reading) {
        let state = match self.devices.get_mut(device) {
            Some(state) => state,
            None => {
                let id = DeviceId::from(device);
                self.devices.entry(id.clone()).or_insert(DeviceState {
                    id,
                    group: group.into(),
                    ts: reading.ts,
                    metrics: Metrics::new(),
                })
            }
        };
        if &*state.group != group {
            state.group = group.into();
        } else if reading.ts < state.ts {
            return;
        }
        state.ts = reading.ts;
        state.metrics.extend(reading.metrics);
        self.changed.insert(state.id.clone());
    }

    /// The states of the devices changed since the previous call, in no particular order.
    pub fn take_changed(&mut self) -> Vec<DeviceState> {
        self.changed
            .drain()
            .filter_map(|id| self.devices.get(&id).cloned())
            .collect()
    }

    /// Marks devices as changed again, e.g. when their batch could not be delivered.
    pub fn mark_changed(&mut self, ids: impl IntoIterator<Item = DeviceId>) {
        self.changed.extend(ids);
    }

    /// Marks every device changed so the next batch carries the whole fleet (a dashboard
    /// that just connected asked for it).
    pub fn mark_all_changed(&mut self) {
        self.changed.extend(self.devices.keys().cloned());
    }

    /// Number of devices seen.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use iotmon_wire::MetricValue;

    use super::*;

    fn reading(ts: i64, metrics: &[(&str, f64)]) -> Reading {
        Reading {
            ts,
            metrics: metrics
                .iter()
                .map(|(name, value)| ((*name).into(), MetricValue::Number(*value)))
                .collect(),
        }
    }

    #[test]
    fn keeps_latest_values_and_merges_metrics() {
        let mut table = DeviceTable::new();
        table.apply("hq/a", "d1", reading(10, &[("t", 1.0), ("h", 40.0)]));
        table.apply("hq/a", "d1", reading(20, &[("t", 2.0)]));
        let changed = table.take_changed();
        assert_eq!(changed.len(), 1, "two readings coalesce into one change");
        assert_eq!(changed[0].ts, 20);
        assert_eq!(changed[0].metrics.get("t"), Some(&MetricValue::Number(2.0)));
        assert_eq!(
            changed[0].metrics.get("h"),
            Some(&MetricValue::Number(40.0))
        );
        assert!(table.take_changed().is_empty());
    }

    #[test]
    fn older_readings_do_not_overwrite_the_live_state() {
        let mut table = DeviceTable::new();
        table.apply("hq", "d1", reading(20, &[("t", 2.0)]));
        table.take_changed();
        table.apply("hq", "d1", reading(10, &[("t", 1.0)]));
        assert!(table.take_changed().is_empty());
    }

    #[test]
    fn a_device_under_a_new_group_has_moved() {
        let mut table = DeviceTable::new();
        table.apply("hq/a", "d1", reading(20, &[("t", 2.0)]));
        table.apply("hq/b", "d1", reading(5, &[("t", 3.0)]));
        let changed = table.take_changed();
        assert_eq!(&*changed[0].group, "hq/b");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn mark_all_changed_resends_the_fleet() {
        let mut table = DeviceTable::new();
        table.apply("hq", "d1", reading(1, &[("t", 1.0)]));
        table.apply("hq", "d2", reading(1, &[("t", 1.0)]));
        table.take_changed();
        table.mark_all_changed();
        assert_eq!(table.take_changed().len(), 2);
    }
}
