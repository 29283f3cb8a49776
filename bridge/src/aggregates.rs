//! Group aggregates, kept incrementally.
//!
//! Each shard keeps, for every group (every prefix of its devices' group paths) and metric,
//! the count and sum of its devices' latest values and a counted multiset of those values
//! (a `BTreeMap` from value to how many devices hold it). A reading that changes a value costs
//! one removal and one insertion per group level: O(depth × log n) with n the distinct values
//! in the group, and min/max are the first and last keys. A heap would need lazy deletion to
//! drop a device's old value; the ordered multiset removes exactly and never grows beyond the
//! group's devices. Nothing ever rescans the fleet.
//!
//! Every aggregation window each shard sends the groups it changed as [`ShardGroup`]
//! partials; the [`AggregateMerger`] combines the shards' partials of those groups (count and
//! sum add, min of mins, max of maxes) into [`GroupAggregate`]s.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use iotmon_wire::topics::group_prefixes;
use iotmon_wire::{DeviceCounts, GroupAggregate, GroupPath};

use crate::FastMap;

/// A finite `f64` with a total order, to key the multiset (ingest refuses non-finite values).
#[derive(Debug, Clone, Copy)]
struct Value(f64);

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Value {}
impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One metric over one shard's devices of one group.
#[derive(Debug, Default)]
struct MetricPartial {
    count: u64,
    sum: f64,
    values: BTreeMap<Value, u32>,
}

impl MetricPartial {
    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        *self.values.entry(Value(value)).or_insert(0) += 1;
    }

    fn remove(&mut self, value: f64) {
        let key = Value(value);
        let Some(held) = self.values.get_mut(&key) else {
            return;
        };
        *held -= 1;
        if *held == 0 {
            self.values.remove(&key);
        }
        self.count -= 1;
        // Removing by subtraction drifts; an empty set starts exact again.
        self.sum = if self.count == 0 {
            0.0
        } else {
            self.sum - value
        };
    }

    fn partial(&self) -> Option<PartialMetric> {
        let min = self.values.first_key_value()?.0 .0;
        let max = self.values.last_key_value()?.0 .0;
        Some(PartialMetric {
            count: self.count,
            sum: self.sum,
            min,
            max,
        })
    }
}

/// count/sum/min/max of one metric over some devices; combinable across shards, and (in
/// `wire`) across partitions.
pub use iotmon_wire::partial::PartialMetric;

/// One shard's share of one group's aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardGroup {
    pub group: GroupPath,
    pub online: u64,
    pub offline: u64,
    /// Devices with an active alert.
    pub alerting: u64,
    pub metrics: Vec<(Arc<str>, PartialMetric)>,
}

#[derive(Debug, Default)]
struct GroupPartial {
    online: u64,
    offline: u64,
    alerting: u64,
    metrics: FastMap<Arc<str>, MetricPartial>,
    /// Already listed in `GroupPartials::dirty`.
    dirty: bool,
}

/// A shard's incremental aggregates for every group its devices belong to.
#[derive(Debug, Default)]
pub struct GroupPartials {
    groups: FastMap<GroupPath, GroupPartial>,
    /// Groups changed since the last [`GroupPartials::take_dirty`].
    dirty: Vec<GroupPath>,
}

impl GroupPartials {
    pub fn new() -> Self {
        Self::default()
    }

    /// A device under `group` changed `metric` from `old` to `new` (either may be absent).
    pub fn value_changed(
        &mut self,
        group: &str,
        metric: &Arc<str>,
        old: Option<f64>,
        new: Option<f64>,
    ) {
        self.for_each_level(group, |partial| {
            let values = match partial.metrics.get_mut(metric) {
                Some(values) => values,
                None => partial.metrics.entry(metric.clone()).or_default(),
            };
            if let Some(old) = old {
                values.remove(old);
            }
            if let Some(new) = new {
                values.add(new);
            }
        });
    }

    /// A device joins (`delta` = 1) or leaves (`delta` = -1) `group`'s online or offline count.
    pub fn presence_changed(&mut self, group: &str, online: bool, joins: bool) {
        self.for_each_level(group, |partial| {
            let count = if online {
                &mut partial.online
            } else {
                &mut partial.offline
            };
            *count = if joins {
                *count + 1
            } else {
                count.saturating_sub(1)
            };
        });
    }

    /// A device under `group` started (`alerting`) or stopped having an active alert.
    pub fn alerting_changed(&mut self, group: &str, alerting: bool) {
        self.for_each_level(group, |partial| {
            partial.alerting = if alerting {
                partial.alerting + 1
            } else {
                partial.alerting.saturating_sub(1)
            };
        });
    }

    fn for_each_level(&mut self, group: &str, mut change: impl FnMut(&mut GroupPartial)) {
        for level in group_prefixes(group) {
            let partial = match self.groups.get_mut(level) {
                Some(partial) => partial,
                None => self.groups.entry(GroupPath::from(level)).or_default(),
            };
            change(partial);
            if !partial.dirty {
                partial.dirty = true;
                self.dirty.push(GroupPath::from(level));
            }
        }
    }

    /// The partials of the groups changed since the previous call.
    pub fn take_dirty(&mut self) -> Vec<ShardGroup> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|group| {
                let partial = self.groups.get_mut(&group)?;
                partial.dirty = false;
                Some(ShardGroup {
                    online: partial.online,
                    offline: partial.offline,
                    alerting: partial.alerting,
                    metrics: partial
                        .metrics
                        .iter()
                        .filter_map(|(name, values)| Some((name.clone(), values.partial()?)))
                        .collect(),
                    group,
                })
            })
            .collect()
    }

    /// Marks every group changed, so the next [`GroupPartials::take_dirty`] has them all.
    pub fn mark_all_dirty(&mut self) {
        for (group, partial) in &mut self.groups {
            if !partial.dirty {
                partial.dirty = true;
                self.dirty.push(group.clone());
            }
        }
    }
}

/// Combines the shards' partials into group aggregates.
#[derive(Debug)]
pub struct AggregateMerger {
    shards: usize,
    /// The latest partial from each shard, per group.
    groups: std::collections::HashMap<GroupPath, Vec<Option<ShardGroup>>>,
    /// Groups to emit at the next [`AggregateMerger::take`].
    dirty: HashSet<GroupPath>,
}

impl AggregateMerger {
    pub fn new(shards: usize) -> Self {
        AggregateMerger {
            shards,
            groups: std::collections::HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// Records `shard`'s latest partial of one group.
    pub fn update(&mut self, shard: usize, partial: ShardGroup) {
        let slots = self
            .groups
            .entry(partial.group.clone())
            .or_insert_with(|| vec![None; self.shards]);
        self.dirty.insert(partial.group.clone());
        if let Some(slot) = slots.get_mut(shard) {
            *slot = Some(partial);
        }
    }

    /// Marks every group for the next [`AggregateMerger::take`] (a dashboard asked for all).
    pub fn mark_all(&mut self) {
        self.dirty.extend(self.groups.keys().cloned());
    }

    /// The aggregates of the groups changed since the previous call, stamped `now_ms`.
    pub fn take(&mut self, now_ms: i64) -> Vec<GroupAggregate> {
        let dirty: Vec<GroupPath> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|group| Some(merge(group.clone(), self.groups.get(&group)?, now_ms)))
            .collect()
    }

    /// Puts aggregates that could not be delivered back, to go out in the next window.
    pub fn defer(&mut self, aggregates: Vec<GroupAggregate>) {
        self.dirty
            .extend(aggregates.into_iter().map(|aggregate| aggregate.group));
    }
}

fn merge(group: GroupPath, slots: &[Option<ShardGroup>], now_ms: i64) -> GroupAggregate {
    let mut devices = DeviceCounts::default();
    let mut metrics: BTreeMap<Arc<str>, PartialMetric> = BTreeMap::new();
    for partial in slots.iter().flatten() {
        devices.online += partial.online;
        devices.offline += partial.offline;
        devices.alerting += partial.alerting;
        for (name, metric) in &partial.metrics {
            metrics
                .entry(name.clone())
                .and_modify(|total| total.combine(metric))
                .or_insert(*metric);
        }
    }
    GroupAggregate {
        group,
        ts: now_ms,
        devices,
        metrics: metrics
            .into_iter()
            .map(|(name, total)| (name, total.aggregate()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use iotmon_wire::MetricAggregate;

    use super::*;

    fn metric(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn every_level_tracks_count_mean_min_and_max_of_latest_values() {
        let t = metric("t");
        let mut partials = GroupPartials::new();
        partials.value_changed("hq/a", &t, None, Some(10.0));
        partials.value_changed("hq/b", &t, None, Some(20.0));
        partials.value_changed("hq/a", &t, Some(10.0), Some(30.0));
        let mut merger = AggregateMerger::new(1);
        for partial in partials.take_dirty() {
            merger.update(0, partial);
        }
        let mut aggregates = merger.take(5);
        aggregates.sort_by(|a, b| a.group.cmp(&b.group));
        let groups: Vec<&str> = aggregates.iter().map(|a| &*a.group).collect();
        assert_eq!(groups, ["hq", "hq/a", "hq/b"]);
        let hq = aggregates[0].metrics[&t];
        assert_eq!(
            hq,
            MetricAggregate {
                count: 2,
                mean: 25.0,
                min: 20.0,
                max: 30.0
            }
        );
        assert_eq!(aggregates[1].metrics[&t].min, 30.0, "10 was replaced");
        assert!(merger.take(6).is_empty(), "nothing changed since");
    }

    #[test]
    fn shards_combine_and_presence_counts_per_level() {
        let t = metric("t");
        let mut first = GroupPartials::new();
        let mut second = GroupPartials::new();
        first.value_changed("hq/a", &t, None, Some(1.0));
        first.presence_changed("hq/a", true, true);
        second.value_changed("hq/b", &t, None, Some(5.0));
        second.presence_changed("hq/b", false, true);
        let mut merger = AggregateMerger::new(2);
        first
            .take_dirty()
            .into_iter()
            .for_each(|p| merger.update(0, p));
        second
            .take_dirty()
            .into_iter()
            .for_each(|p| merger.update(1, p));
        let hq = merger
            .take(1)
            .into_iter()
            .find(|a| &*a.group == "hq")
            .expect("hq");
        assert_eq!(
            hq.devices,
            DeviceCounts {
                online: 1,
                offline: 1,
                alerting: 0
            }
        );
        assert_eq!(hq.metrics[&t].mean, 3.0);
        assert_eq!((hq.metrics[&t].min, hq.metrics[&t].max), (1.0, 5.0));
    }

    #[test]
    fn a_device_leaving_removes_its_value_exactly() {
        let t = metric("t");
        let mut partials = GroupPartials::new();
        partials.value_changed("g", &t, None, Some(2.0));
        partials.value_changed("g", &t, None, Some(2.0));
        partials.value_changed("g", &t, Some(2.0), None);
        let dirty = partials.take_dirty();
        assert_eq!(
            dirty[0].metrics,
            vec![(
                t.clone(),
                PartialMetric {
                    count: 1,
                    sum: 2.0,
                    min: 2.0,
                    max: 2.0
                }
            )]
        );
        partials.value_changed("g", &t, Some(2.0), None);
        assert!(partials.take_dirty()[0].metrics.is_empty());
    }
}
