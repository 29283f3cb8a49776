//! Downsampling: wall-clock-aligned windows, and the per-shard buffer of rollup deltas for the
//! finest tier.
//!
//! The shards only accumulate the finest tier, and only since their last flush: every flush
//! interval the deltas go to the store, which merges them into its rows (count and sum add,
//! min and max widen, `last` follows the newest timestamp). Coarser tiers are computed by the
//! store from the finest one once their windows have closed. So a `kill -9` loses at most one
//! flush interval, and memory holds one interval of deltas rather than open windows.
//!
//! Late readings: a reading counts in its window while `now < window end + grace`; later, it
//! is left out of the rollups and counted (it still updates the device's live state).

use std::sync::Arc;

use iotmon_wire::DeviceId;

use crate::FastMap;

/// Start of the window of width `width_ms` holding `ts_ms`: the greatest multiple of
/// `width_ms` not after `ts_ms` (also for timestamps before the epoch).
pub fn window_start(ts_ms: i64, width_ms: i64) -> i64 {
    ts_ms.div_euclid(width_ms) * width_ms
}

/// When the window starting at `start_ms` stops accepting readings.
pub fn closes_at(start_ms: i64, width_ms: i64, grace_ms: i64) -> i64 {
    start_ms.saturating_add(width_ms).saturating_add(grace_ms)
}

/// Whether a reading stamped `ts_ms` and processed at `now_ms` is too late for its window.
pub fn is_late(ts_ms: i64, now_ms: i64, width_ms: i64, grace_ms: i64) -> bool {
    now_ms >= closes_at(window_start(ts_ms, width_ms), width_ms, grace_ms)
}

/// count/sum/min/max/last of the values seen for one key in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accumulator {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// The value with the newest timestamp, and that timestamp.
    pub last: f64,
    pub last_ts: i64,
}

impl Accumulator {
    /// An accumulator holding one value.
    pub fn new(value: f64, ts: i64) -> Self {
        Accumulator {
            count: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
            last_ts: ts,
        }
    }

    /// Adds one value stamped `ts`.
    pub fn add(&mut self, value: f64, ts: i64) {
        self.merge(&Accumulator::new(value, ts));
    }

    /// Merges another accumulator of the same key and window.
    pub fn merge(&mut self, other: &Accumulator) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_ts >= self.last_ts {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
    }

    /// The mean of the values.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// One finest-tier delta handed to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupDelta {
    pub device: DeviceId,
    pub metric: Arc<str>,
    /// Window start, ms since the epoch.
    pub start: i64,
    pub values: Accumulator,
}

/// Deltas of the finest tier since the last flush, keyed by window and then device and metric.
#[derive(Debug)]
pub struct RollupBuffer {
    width_ms: i64,
    grace_ms: i64,
    windows: FastMap<i64, FastMap<(DeviceId, Arc<str>), Accumulator>>,
}

impl RollupBuffer {
    pub fn new(width_ms: i64, grace_ms: i64) -> Self {
        RollupBuffer {
            width_ms,
            grace_ms,
            windows: FastMap::default(),
        }
    }

    /// Adds a value; `false` (and nothing recorded) when it is too late for its window.
    pub fn add(
        &mut self,
        device: &DeviceId,
        metric: &Arc<str>,
        value: f64,
        ts: i64,
        now: i64,
    ) -> bool {
        if is_late(ts, now, self.width_ms, self.grace_ms) {
            return false;
        }
        let window = self
            .windows
            .entry(window_start(ts, self.width_ms))
            .or_default();
        match window.get_mut(&(device.clone(), metric.clone())) {
            Some(accumulator) => accumulator.add(value, ts),
            None => {
                window.insert(
                    (device.clone(), metric.clone()),
                    Accumulator::new(value, ts),
                );
            }
        }
        true
    }

    /// Takes every delta accumulated since the previous call.
    pub fn drain(&mut self) -> Vec<RollupDelta> {
        let mut deltas = Vec::new();
        for (start, window) in self.windows.drain() {
            deltas.extend(
                window
                    .into_iter()
                    .map(|((device, metric), values)| RollupDelta {
                        device,
                        metric,
                        start,
                        values,
                    }),
            );
        }
        deltas
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_timestamp_lies_in_its_aligned_window(ts in -1_000_000_000_000i64..4_000_000_000_000, width in 1i64..100_000_000) {
            let start = window_start(ts, width);
            prop_assert!(start <= ts && ts < start + width);
            prop_assert_eq!(start.rem_euclid(width), 0);
        }

        #[test]
        fn nested_tiers_contain_their_finer_windows(ts in 0i64..4_000_000_000_000, fine in 1i64..10_000, factor in 1i64..100) {
            let coarse = fine * factor;
            let fine_start = window_start(ts, fine);
            let coarse_start = window_start(ts, coarse);
            prop_assert!(coarse_start <= fine_start);
            prop_assert!(fine_start + fine <= coarse_start + coarse);
        }

        #[test]
        fn lateness_is_exactly_the_grace_after_the_window(ts in 0i64..4_000_000_000_000, width in 1i64..100_000, grace in 0i64..100_000, after in 0i64..400_000) {
            let end = window_start(ts, width) + width;
            let now = ts + after;
            prop_assert_eq!(is_late(ts, now, width, grace), now >= end + grace);
        }

        #[test]
        fn merging_in_any_split_equals_accumulating_all(values in proptest::collection::vec((-1e6f64..1e6, 0i64..1000), 1..50), split in 0usize..50) {
            let split = split.min(values.len());
            let fold = |slice: &[(f64, i64)]| {
                let mut acc: Option<Accumulator> = None;
                for &(value, ts) in slice {
                    match &mut acc {
                        Some(acc) => acc.add(value, ts),
                        None => acc = Some(Accumulator::new(value, ts)),
                    }
                }
                acc
            };
            let all = fold(&values).expect("non-empty");
            let merged = match (fold(&values[..split]), fold(&values[split..])) {
                (Some(mut a), Some(b)) => { a.merge(&b); a }
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => unreachable!(),
            };
            prop_assert_eq!(merged.count, all.count);
            prop_assert_eq!(merged.min, all.min);
            prop_assert_eq!(merged.max, all.max);
            prop_assert_eq!(merged.last_ts, all.last_ts);
            prop_assert!((merged.sum - all.sum).abs() < 1e-3);
        }
    }

    #[test]
    fn windows_align_to_the_wall_clock() {
        assert_eq!(window_start(1_704_723_845_123, 10_000), 1_704_723_840_000);
        assert_eq!(window_start(-1, 10_000), -10_000);
        assert_eq!(closes_at(0, 10_000, 5_000), 15_000);
    }

    #[test]
    fn the_buffer_accumulates_per_window_and_refuses_late_readings() {
        let mut buffer = RollupBuffer::new(10_000, 5_000);
        let device: DeviceId = "d1".into();
        let metric: Arc<str> = "t".into();
        assert!(buffer.add(&device, &metric, 1.0, 1_000, 2_000));
        assert!(buffer.add(&device, &metric, 3.0, 2_000, 2_000));
        assert!(buffer.add(&device, &metric, 5.0, 11_000, 12_000));
        assert!(
            buffer.add(&device, &metric, 7.0, 9_000, 14_999),
            "within grace"
        );
        assert!(
            !buffer.add(&device, &metric, 9.0, 9_000, 15_000),
            "after grace"
        );
        let mut deltas = buffer.drain();
        deltas.sort_by_key(|delta| delta.start);
        assert_eq!(deltas.len(), 2);
        assert_eq!(deltas[0].values.count, 3);
        assert_eq!(deltas[0].values.max, 7.0);
        assert_eq!(deltas[0].values.last, 7.0);
        assert_eq!(deltas[0].values.mean(), 11.0 / 3.0);
        assert_eq!(deltas[1].start, 10_000);
        assert!(buffer.is_empty());
    }
}
