//! Reading→viewer delays, in HDR histograms sharded so that thousands of viewer tasks can
//! record without contending on one lock.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Shards of the histogram; a viewer records into shard `viewer % SHARDS`.
const SHARDS: usize = 16;
/// Largest delay recorded exactly, ms (ten minutes); larger ones are clamped to it.
const MAX_DELAY_MS: u64 = 600_000;
/// Significant digits kept: 2 gives 1 % resolution (1 ms up to 100 ms).
const SIGNIFICANT_DIGITS: u8 = 2;

/// Delays in milliseconds from a reading's `ts` (set by the device when it published) to its
/// arrival at a viewer: as a device state in an update, or as the alert it raised.
#[derive(Debug)]
pub struct LatencyRecorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            shards: (0..SHARDS).map(|_| Mutex::new(empty())).collect(),
        }
    }
}

fn empty() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_DELAY_MS, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

impl LatencyRecorder {
    /// Records the delays of one frame's devices for viewer `viewer`. Negative delays (a
    /// device clock ahead of ours) count as 0.
    pub fn record(&self, viewer: usize, delays_ms: impl IntoIterator<Item = i64>) {
        let mut shard = lock(&self.shards[viewer % SHARDS]);
        for delay in delays_ms {
            let delay = u64::try_from(delay).unwrap_or(0).clamp(1, MAX_DELAY_MS);
            shard.saturating_record(delay);
        }
    }

    /// Forgets everything recorded so far (the start of a measurement window).
    pub fn reset(&self) {
        for shard in &self.shards {
            lock(shard).reset();
        }
    }

    /// The percentiles of everything recorded.
    pub fn percentiles(&self) -> Percentiles {
        let mut all = empty();
        for shard in &self.shards {
            // Same bounds on both sides, so adding cannot fail.
            let _ = all.add(&*lock(shard));
        }
        Percentiles::of(&all)
    }
}

/// A poisoned shard still holds valid counts: keep using it.
fn lock(shard: &Mutex<Histogram<u64>>) -> std::sync::MutexGuard<'_, Histogram<u64>> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Delay percentiles, milliseconds (at 1 % resolution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Percentiles {
    /// How many delays were recorded.
    pub count: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            p50_ms: histogram.value_at_quantile(0.50),
            p90_ms: histogram.value_at_quantile(0.90),
            p99_ms: histogram.value_at_quantile(0.99),
            max_ms: histogram.max(),
        }
    }
}

impl Percentiles {
    /// As text, naming what the samples are (`readings`, `alert raises`).
    pub fn counting<'a>(&'a self, what: &'a str) -> impl std::fmt::Display + 'a {
        Counting { of: self, what }
    }
}

struct Counting<'a> {
    of: &'a Percentiles,
    what: &'a str,
}

impl std::fmt::Display for Counting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.of;
        write!(
            f,
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms over {} {}",
            p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.count, self.what
        )
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.counting("readings").fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_merge_every_shard() {
        let recorder = LatencyRecorder::default();
        for viewer in 0..100 {
            recorder.record(viewer, [viewer as i64 + 1]);
        }
        let p = recorder.percentiles();
        assert_eq!(p.count, 100);
        assert!((49..=51).contains(&p.p50_ms), "{p:?}");
        assert!((89..=91).contains(&p.p90_ms), "{p:?}");
        assert!((98..=100).contains(&p.p99_ms), "{p:?}");
        assert_eq!(p.max_ms, 100);
    }

    #[test]
    fn negative_and_huge_delays_are_clamped_and_reset_forgets() {
        let recorder = LatencyRecorder::default();
        recorder.record(3, [-5, 10_000_000]);
        let p = recorder.percentiles();
        assert_eq!(p.count, 2);
        assert!(p.max_ms >= MAX_DELAY_MS && p.max_ms <= MAX_DELAY_MS * 101 / 100);
        recorder.reset();
        assert_eq!(recorder.percentiles(), Percentiles::default());
    }
}
