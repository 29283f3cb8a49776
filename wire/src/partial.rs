//! Partial group aggregates: what a partitioned bridge publishes for the devices it owns, on
//! `iotmon/partial/<K>/<group path>`, and how dashboards (and the bridge that evaluates group
//! rules) merge the partitions' partials into one [`GroupAggregate`].
//!
//! A mean cannot be merged, a sum can: each partial carries per metric count, sum, min and
//! max, and device counts, all of which add (or take min/max) across partitions. The merged
//! mean is the sum of sums over the sum of counts, so a building whose floors live on
//! different bridges shows the mean over all its devices.
//!
//! A bridge publishes a group's partial when it changes, and every group's at least every
//! refresh period, changed or not; each partial states its lifetime. A share that outlives it
//! unrefreshed belongs to a bridge that is gone (killed and not replaced, or cut off from the
//! broker): the merger then counts its devices offline and drops its metrics, instead of
//! showing its last values as current forever. Once none of a partition's shares stands,
//! the merger reports the partition gone, so that dashboards mark its devices offline too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::aggregate::{DeviceCounts, GroupAggregate, MetricAggregate};
use crate::device::GroupPath;
use crate::partition::{Partition, MAX_PARTITIONS};

/// One metric over one partition's devices of a group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartialMetric {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl PartialMetric {
    /// Adds `other`'s devices: counts and sums add, min of mins, max of maxes. Saturating:
    /// a partial can come from the broker, and absurd counts must not overflow.
    pub fn combine(&mut self, other: &PartialMetric) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The metric's aggregate: the mean is the sum over the count.
    pub fn aggregate(&self) -> MetricAggregate {
        MetricAggregate {
            count: self.count,
            mean: self.sum / self.count as f64,
            min: self.min,
            max: self.max,
        }
    }
}

/// One partition's share of one group's aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialAggregate {
    pub group: GroupPath,
    /// The partition (K of `--partition K/N`) this is the share of.
    pub partition: u32,
    /// N: how many partitions the publishing bridge knows of.
    pub partitions: u32,
    /// When the bridge computed it, ms since the Unix epoch.
    pub ts: i64,
    /// How long the share stands without a newer one, in ms: the publishing bridge sends
    /// each group's share again well within it (see [`share_lifetime`]).
    pub lifetime_ms: u64,
    pub devices: DeviceCounts,
    pub metrics: BTreeMap<Arc<str>, PartialMetric>,
}

impl PartialAggregate {
    /// `aggregate` (one bridge's aggregate over its own devices) as partition `partition`'s
    /// share. The bridge keeps an exact sum internally but hands on a mean; count × mean
    /// gives the sum back to within f64 rounding (a relative error near 1e-16). `lifetime`
    /// is how long mergers hold it unrefreshed.
    pub fn from_aggregate(
        aggregate: &GroupAggregate,
        partition: Partition,
        lifetime: Duration,
    ) -> PartialAggregate {
        PartialAggregate {
            group: aggregate.group.clone(),
            partition: partition.index,
            partitions: partition.count,
            ts: aggregate.ts,
            lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            devices: aggregate.devices,
            metrics: aggregate
                .metrics
                .iter()
                .map(|(name, metric)| {
                    let partial = PartialMetric {
                        count: metric.count,
                        sum: metric.mean * metric.count as f64,
                        min: metric.min,
                        max: metric.max,
                    };
                    (name.clone(), partial)
                })
                .collect(),
        }
    }

    /// Checks what serde cannot: a partition within its count, a lifetime within bounds,
    /// finite numbers.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check(&self) -> Result<(), PartialError> {
        if Partition::new(self.partition, self.partitions).is_err() {
            return Err(PartialError::Partition(self.partition, self.partitions));
        }
        if !(1..=MAX_LIFETIME_MS).contains(&self.lifetime_ms) {
            return Err(PartialError::Lifetime(self.lifetime_ms));
        }
        for (name, metric) in &self.metrics {
            if ![metric.sum, metric.min, metric.max]
                .iter()
                .all(|value| value.is_finite())
            {
                return Err(PartialError::NotFinite(name.to_string()));
            }
        }
        Ok(())
    }
}

/// Why a partial was not merged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PartialError {
    #[error("partition {0}/{1} is not a valid partition (at most {MAX_PARTITIONS})")]
    Partition(u32, u32),
    #[error("metric {0:?} has a non-finite sum, min or max")]
    NotFinite(String),
    #[error("partial for group {partial:?} arrived on the topic of {topic:?}")]
    TopicMismatch { topic: String, partial: String },
    #[error("partial of a deployment of {partitions} partitions, not {expected}")]
    OtherLayout { partitions: u32, expected: u32 },
    #[error("lifetime of {0} ms is not between 1 ms and a day")]
    Lifetime(u64),
}

/// How often a partitioned bridge sends every group's partial, changed or not, by default
/// (`bridge.partial_refresh`).
pub const PARTIAL_REFRESH: Duration = Duration::from_secs(10);

/// The longest lifetime a share may state: a day. A share is input from the broker, and one
/// stating it lives forever would never be aged out.
pub const MAX_LIFETIME_MS: u64 = 24 * 3600 * 1000;

/// The lifetime a bridge gives its shares when it refreshes them every `refresh` and emits
/// aggregates every `window`: a refresh goes out at the window after it is due, and three
/// of them fit in the lifetime, so two lost in a row (partials are QoS 0) expire nothing.
pub fn share_lifetime(refresh: Duration, window: Duration) -> Duration {
    (refresh.max(window) + window) * 3
}

/// The latest partial of every partition, per group; merges them on every change.
///
/// Bounded by the deployment: one entry per group and partition, and groups are the prefixes
/// of the fleet's group paths. Shares of two layouts are never added together: a merger that
/// knows the deployment's N ([`PartialMerger::for_partitions`]) refuses a partial announcing
/// another (a bridge left running with an old N, or a forged message, would otherwise wipe
/// the right shares); one that does not know it lets a partial of a new N replace the shares
/// held for its group (the deployment was re-partitioned).
#[derive(Debug, Default)]
pub struct PartialMerger {
    groups: HashMap<GroupPath, GroupShares>,
    /// The deployment's N, when known.
    expected: Option<u32>,
}

#[derive(Debug, Default)]
struct GroupShares {
    partitions: u32,
    shares: BTreeMap<u32, Share>,
}

#[derive(Debug)]
struct Share {
    partial: PartialAggregate,
    /// When it goes stale unless refreshed; `None` once it has (its devices now count
    /// offline, with no metrics).
    expires_at: Option<Instant>,
}

/// What [`PartialMerger::expire`] aged out.
#[derive(Debug, Default, PartialEq)]
pub struct Expired {
    /// The merged aggregates of the groups that lost a share's values.
    pub aggregates: Vec<GroupAggregate>,
    /// The partitions whose shares expired.
    pub partitions: std::collections::BTreeSet<u32>,
    /// How many shares expired.
    pub shares: usize,
    /// The partitions left with no current share of any group: nothing their bridge sent
    /// stands, so it is gone. Each is reported once, on the pass that aged out its last
    /// share; one share expiring while its partition refreshes others (a group its bridge
    /// no longer has) does not make it gone.
    pub gone: Vec<Partition>,
}

impl Expired {
    pub fn is_empty(&self) -> bool {
        self.aggregates.is_empty()
    }
}

impl PartialMerger {
    /// A merger that takes the layout of the newest partial of each group.
    pub fn new() -> Self {
        Self::default()
    }

    /// A merger for a deployment of `partitions` partitions: partials of any other count are
    /// refused.
    pub fn for_partitions(partitions: u32) -> Self {
        PartialMerger {
            groups: HashMap::new(),
            expected: Some(partitions),
        }
    }

    /// Records `partial`, received at `now`, and returns its group's aggregate merged over
    /// every partition heard from.
    ///
    /// # Errors
    /// The partial fails [`PartialAggregate::check`], or announces another partition count
    /// than the one this merger was made for; nothing is recorded.
    pub fn update(
        &mut self,
        partial: PartialAggregate,
        now: Instant,
    ) -> Result<GroupAggregate, PartialError> {
        partial.check()?;
        if let Some(expected) = self.expected.filter(|n| *n != partial.partitions) {
            return Err(PartialError::OtherLayout {
                partitions: partial.partitions,
                expected,
            });
        }
        let shares = self.groups.entry(partial.group.clone()).or_default();
        if shares.partitions != partial.partitions {
            shares.shares.clear();
            shares.partitions = partial.partitions;
        }
        let group = partial.group.clone();
        let expires_at = now + Duration::from_millis(partial.lifetime_ms);
        shares.shares.insert(
            partial.partition,
            Share {
                partial,
                expires_at: Some(expires_at),
            },
        );
        Ok(merge(group, shares.partials()))
    }

    /// Ages out the shares not refreshed within their lifetime by `now`: their devices count
    /// offline and their metrics are dropped (the values of a bridge that is gone are not
    /// current), until a new share of their partition arrives. Returns the groups changed and
    /// the partitions gone.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        // Partition K of N, for each share aged out.
        let mut aged = HashSet::new();
        for (group, shares) in &mut self.groups {
            let mut changed = false;
            for (partition, share) in &mut shares.shares {
                if share.expires_at.is_some_and(|at| at <= now) {
                    share.go_stale();
                    expired.partitions.insert(*partition);
                    expired.shares += 1;
                    aged.insert(Partition {
                        index: *partition,
                        count: shares.partitions,
                    });
                    changed = true;
                }
            }
            if changed {
                expired
                    .aggregates
                    .push(merge(group.clone(), shares.partials()));
            }
        }
        expired.gone = aged
            .into_iter()
            .filter(|partition| !self.has_current_share(*partition))
            .collect();
        expired.gone.sort_by_key(|partition| partition.index);
        expired
    }

    /// Whether some group holds a share of `partition` that has not aged out.
    fn has_current_share(&self, partition: Partition) -> bool {
        self.groups.values().any(|shares| {
            shares.partitions == partition.count
                && shares
                    .shares
                    .get(&partition.index)
                    .is_some_and(|share| share.expires_at.is_some())
        })
    }

    /// Groups held.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Partitions heard from for `group` (including those whose share has gone stale).
    pub fn partitions_of(&self, group: &str) -> usize {
        self.groups
            .get(group)
            .map_or(0, |shares| shares.shares.len())
    }
}

impl GroupShares {
    fn partials(&self) -> impl Iterator<Item = &PartialAggregate> {
        self.shares.values().map(|share| &share.partial)
    }
}

impl Share {
    /// What is known of a partition whose bridge is gone: how many devices it owns, none
    /// online, no values.
    fn go_stale(&mut self) {
        let devices = &mut self.partial.devices;
        devices.offline = devices.offline.saturating_add(devices.online);
        devices.online = 0;
        self.partial.metrics.clear();
        self.expires_at = None;
    }
}

/// Merges partials of one group: counts add, min of mins, max of maxes, the mean is the sum
/// of sums over the sum of counts, the time is the newest.
pub fn merge<'a>(
    group: GroupPath,
    partials: impl IntoIterator<Item = &'a PartialAggregate>,
) -> GroupAggregate {
    let mut devices = DeviceCounts::default();
    let mut ts = 0;
    let mut metrics: BTreeMap<Arc<str>, PartialMetric> = BTreeMap::new();
    for partial in partials {
        ts = ts.max(partial.ts);
        // Saturating: a partial is input from the broker, and absurd counts must not overflow.
        devices.online = devices.online.saturating_add(partial.devices.online);
        devices.offline = devices.offline.saturating_add(partial.devices.offline);
        devices.alerting = devices.alerting.saturating_add(partial.devices.alerting);
        for (name, metric) in &partial.metrics {
            if metric.count == 0 {
                continue;
            }
            metrics
                .entry(name.clone())
                .and_modify(|total| total.combine(metric))
                .or_insert(*metric);
        }
    }
    GroupAggregate {
        group,
        ts,
        devices,
        metrics: metrics
            .into_iter()
            .map(|(name, total)| (name, total.aggregate()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(partition: u32, partitions: u32, values: &[f64], online: u64) -> PartialAggregate {
        let mut metrics = BTreeMap::new();
        if !values.is_empty() {
            metrics.insert(
                Arc::from("t"),
                PartialMetric {
                    count: values.len() as u64,
                    sum: values.iter().sum(),
                    min: values.iter().copied().fold(f64::INFINITY, f64::min),
                    max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                },
            );
        }
        PartialAggregate {
            group: "hq/building-a".into(),
            partition,
            partitions,
            ts: 1000 + i64::from(partition),
            lifetime_ms: 30_000,
            devices: DeviceCounts {
                online,
                offline: 1,
                alerting: partition.into(),
            },
            metrics,
        }
    }

    #[test]
    fn partitions_merge_into_the_mean_over_all_devices() {
        let mut merger = PartialMerger::new();
        // Partition 0 holds three devices, partition 1 one: the mean is over four devices,
        // not the mean of the two means (which would be 25).
        let first = merger
            .update(partial(0, 2, &[10.0, 20.0, 30.0], 3), Instant::now())
            .expect("valid");
        assert_eq!(first.metrics["t"].mean, 20.0);
        let both = merger
            .update(partial(1, 2, &[30.0], 1), Instant::now())
            .expect("valid");
        assert_eq!(
            both.metrics["t"],
            MetricAggregate {
                count: 4,
                mean: 22.5,
                min: 10.0,
                max: 30.0
            }
        );
        assert_eq!(
            both.devices,
            DeviceCounts {
                online: 4,
                offline: 2,
                alerting: 1
            }
        );
        assert_eq!(both.ts, 1001);
        // A newer share of partition 0 replaces its old one; it is not added.
        let again = merger
            .update(partial(0, 2, &[10.0], 1), Instant::now())
            .expect("valid");
        assert_eq!(
            (again.metrics["t"].count, again.metrics["t"].mean),
            (2, 20.0)
        );
        assert_eq!(merger.partitions_of("hq/building-a"), 2);
    }

    #[test]
    fn a_new_partition_count_drops_the_shares_of_the_old_layout() {
        let mut merger = PartialMerger::new();
        merger
            .update(partial(1, 2, &[100.0], 1), Instant::now())
            .expect("valid");
        let after = merger
            .update(partial(0, 3, &[1.0], 1), Instant::now())
            .expect("valid");
        assert_eq!(after.metrics["t"].count, 1);
        assert_eq!(merger.partitions_of("hq/building-a"), 1);
    }

    #[test]
    fn a_merger_that_knows_the_partition_count_refuses_any_other() {
        let mut merger = PartialMerger::for_partitions(2);
        merger
            .update(partial(0, 2, &[10.0], 1), Instant::now())
            .expect("valid");
        assert_eq!(
            merger.update(partial(1, 3, &[100.0], 1), Instant::now()),
            Err(PartialError::OtherLayout {
                partitions: 3,
                expected: 2
            })
        );
        let merged = merger
            .update(partial(1, 2, &[30.0], 1), Instant::now())
            .expect("valid");
        assert_eq!(
            (merged.metrics["t"].count, merged.metrics["t"].mean),
            (2, 20.0)
        );
    }

    #[test]
    fn absurd_counts_saturate_instead_of_overflowing() {
        let mut merger = PartialMerger::new();
        let mut huge = partial(0, 2, &[1.0], u64::MAX);
        if let Some(metric) = huge.metrics.get_mut("t") {
            metric.count = u64::MAX;
        }
        merger.update(huge, Instant::now()).expect("valid");
        let merged = merger
            .update(partial(1, 2, &[1.0], 5), Instant::now())
            .expect("valid");
        assert_eq!(merged.devices.online, u64::MAX);
        assert_eq!(merged.metrics["t"].count, u64::MAX);
    }

    #[test]
    fn bad_partials_are_refused_and_change_nothing() {
        let mut merger = PartialMerger::new();
        assert_eq!(
            merger.update(partial(2, 2, &[1.0], 1), Instant::now()),
            Err(PartialError::Partition(2, 2))
        );
        assert!(matches!(
            merger.update(partial(0, 2, &[f64::NAN], 1), Instant::now()),
            Err(PartialError::NotFinite(_))
        ));
        assert!(merger.is_empty());
    }

    #[test]
    fn a_bridge_aggregate_becomes_a_partial_that_round_trips() {
        let mut metrics = BTreeMap::new();
        metrics.insert(
            Arc::from("t"),
            MetricAggregate {
                count: 3,
                mean: 21.0,
                min: 20.0,
                max: 22.0,
            },
        );
        let aggregate = GroupAggregate {
            group: "hq".into(),
            ts: 5,
            devices: DeviceCounts::default(),
            metrics,
        };
        let partition = Partition::new(1, 2).expect("valid");
        let share =
            PartialAggregate::from_aggregate(&aggregate, partition, Duration::from_secs(33));
        assert_eq!(share.metrics["t"].sum, 63.0);
        let json = serde_json::to_string(&share).expect("serialize");
        assert_eq!(
            json,
            r#"{"group":"hq","partition":1,"partitions":2,"ts":5,"lifetime_ms":33000,"devices":{"online":0,"offline":0,"alerting":0},"metrics":{"t":{"count":3,"sum":63.0,"min":20.0,"max":22.0}}}"#
        );
        let back: PartialAggregate = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, share);
        assert_eq!(merge("hq".into(), [&back]), aggregate);
    }

    #[test]
    fn a_share_not_refreshed_within_its_lifetime_counts_its_devices_offline() {
        let start = Instant::now();
        let lifetime = Duration::from_millis(30_000);
        let mut merger = PartialMerger::for_partitions(2);
        merger
            .update(partial(0, 2, &[10.0, 20.0], 2), start)
            .expect("valid");
        merger
            .update(partial(1, 2, &[40.0], 1), start + lifetime / 2)
            .expect("valid");
        assert!(merger
            .expire(start + lifetime - Duration::from_millis(1))
            .is_empty());
        // Partition 0's bridge is gone: its two devices are offline, its values no longer
        // in the mean; partition 1's share is untouched.
        let expired = merger.expire(start + lifetime);
        assert_eq!(expired.partitions, [0].into_iter().collect());
        let [merged] = expired.aggregates.as_slice() else {
            panic!("one group changed: {expired:?}");
        };
        assert_eq!(
            (merged.metrics["t"].count, merged.metrics["t"].mean),
            (1, 40.0)
        );
        assert_eq!(
            merged.devices,
            DeviceCounts {
                online: 1,
                offline: 4,
                alerting: 1
            }
        );
        // Aged out once: the next pass changes nothing, until partition 1's share is due.
        assert!(merger.expire(start + lifetime + lifetime / 4).is_empty());
        assert_eq!(
            merger.expire(start + lifetime * 2).partitions,
            [1].into_iter().collect()
        );
        // Partition 0's new bridge sends its share: values and devices are back.
        let back = merger
            .update(partial(0, 2, &[10.0, 20.0], 2), start + lifetime * 3)
            .expect("valid");
        assert_eq!((back.metrics["t"].count, back.metrics["t"].mean), (2, 15.0));
        assert_eq!(back.devices.online, 2);
        assert_eq!(merger.partitions_of("hq/building-a"), 2);
    }

    #[test]
    fn a_partition_is_gone_once_its_last_share_ages_out_and_back_with_its_next() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        // Shares live 30 s.
        let share = |group: &str, partition: u32| {
            let mut share = partial(partition, 2, &[1.0], 1);
            share.group = group.into();
            share
        };
        let mut merger = PartialMerger::for_partitions(2);
        for (group, partition, received) in [
            ("hq/a", 1, 0),
            ("hq/b", 1, 15),
            ("hq/a", 0, 20),
            ("hq/a", 0, 40),
        ] {
            merger
                .update(share(group, partition), at(received))
                .expect("valid");
        }
        // One share of partition 1 ages out while another stands: its bridge is not gone.
        let first = merger.expire(at(30));
        assert_eq!(first.partitions, [1].into_iter().collect());
        assert!(first.gone.is_empty(), "{first:?}");
        // Its last share ages out: gone, said once.
        let partition_1 = Partition::new(1, 2).expect("valid");
        assert_eq!(merger.expire(at(45)).gone, [partition_1]);
        assert!(merger.expire(at(46)).is_empty());
        // Its bridge is back with one group: the other group's stale share does not make it
        // gone again.
        merger.update(share("hq/a", 1), at(47)).expect("valid");
        assert!(merger.expire(at(60)).is_empty());
        merger.update(share("hq/a", 0), at(60)).expect("valid");
        assert_eq!(merger.expire(at(77)).gone, [partition_1]);
    }

    #[test]
    fn a_share_stating_no_lifetime_or_more_than_a_day_is_refused() {
        let mut merger = PartialMerger::new();
        for lifetime_ms in [0, MAX_LIFETIME_MS + 1] {
            let mut forever = partial(0, 2, &[1.0], 1);
            forever.lifetime_ms = lifetime_ms;
            assert_eq!(
                merger.update(forever, Instant::now()),
                Err(PartialError::Lifetime(lifetime_ms))
            );
        }
        assert!(merger.is_empty());
    }

    #[test]
    fn a_share_lives_three_refreshes_each_up_to_a_window_late() {
        let second = Duration::from_secs(1);
        assert_eq!(share_lifetime(10 * second, second), 33 * second);
        // A window longer than the refresh: shares go out once a window at most.
        assert_eq!(share_lifetime(10 * second, 60 * second), 360 * second);
    }
}
