//! History for charts: one device's metric over a time range, at most `max_points` points,
//! each keeping its bucket's min and max so spikes survive downsampling.
//!
//! Contract of [`HistoryReader::query`]:
//! - range `[from, to)` in ms since the epoch; `max_points` below 2 is taken as 2;
//! - the tier is the coarsest whose retention still covers `from` and whose width is at most
//!   the ideal bucket `(to - from) / max_points` ([`choose_tier`]);
//! - points are buckets of `bucket_ms` (a multiple of the tier's width, aligned to multiples of
//!   itself since the epoch), only those holding data, oldest first, never more than
//!   `max_points`; each carries count, mean, min, max and the last value;
//! - the part of the range a coarse tier has not been computed for yet (its windows not yet
//!   closed) is read from the finer tiers, so the newest data is never missing;
//! - rows come from both `rollups` and `recent_rollups` (see [`crate::store::recent`]), read
//!   in one transaction, so everything committed up to the last flush is seen once, the open
//!   windows included;
//! - blocking (SQLite): call it from `spawn_blocking` in async code. It opens the database
//!   read-only and never blocks the writer (WAL).

use std::path::{Path, PathBuf};

use iotmon_wire::history::{HistoryPoint, HistoryQuery, HistorySeries};
use rusqlite::{Connection, OptionalExtension};

use crate::config::BridgeConfig;
use crate::rollup::{window_start, Accumulator};
use crate::store::{db_path, recent, schema, StoreError};

/// Reads history from the store's database file, beside the writer.
#[derive(Debug, Clone)]
pub struct HistoryReader {
    path: PathBuf,
    /// (width, retention) of each tier, finest first, in ms.
    tiers: Vec<(i64, i64)>,
}

impl HistoryReader {
    /// A reader of the store under `data_dir` configured as `config`.
    pub fn new(data_dir: &Path, config: &BridgeConfig) -> Self {
        HistoryReader {
            path: db_path(data_dir),
            tiers: config
                .rollups
                .tiers
                .iter()
                .map(|tier| (tier.width_ms(), tier.retention_ms()))
                .collect(),
        }
    }

    /// Reads one series; see the module documentation for the contract. An unknown device
    /// or metric, or an empty range, gives no points.
    ///
    /// # Errors
    /// The database cannot be opened or read.
    pub fn query(&self, query: &HistoryQuery) -> Result<HistorySeries, StoreError> {
        let mut connection = schema::open_read_only(&self.path)?;
        // One snapshot for every read: a merge of the recent rows committed between two reads
        // would otherwise show its rows twice or not at all.
        let snapshot = connection.transaction()?;
        let tier = choose_tier(
            &self.tiers,
            query.from,
            query.to,
            query.max_points,
            query.now,
        );
        let tier_ms = self.tiers.get(tier).map_or(10_000, |(width, _)| *width);
        let bucket_ms = bucket_width(tier_ms, query.from, query.to, query.max_points);
        let mut series = HistorySeries {
            device: query.device.clone(),
            metric: query.metric.clone(),
            tier_ms,
            bucket_ms,
            points: Vec::new(),
        };
        let Some((device, metric)) = ids(&snapshot, &query.device, &query.metric)? else {
            return Ok(series);
        };
        let mut buckets: Vec<(i64, Accumulator)> = Vec::new();
        let mut cursor = window_start(query.from, tier_ms);
        for finer in (0..=tier).rev() {
            let width = self.tiers.get(finer).map_or(tier_ms, |(width, _)| *width);
            let upper = if finer == 0 {
                query.to
            } else {
                cascaded_until(&snapshot, width)?.min(query.to)
            };
            if upper <= cursor {
                continue;
            }
            for (start, values) in
                recent::series_rows(&snapshot, [width, device, metric, cursor, upper])?
            {
                add_to_buckets(&mut buckets, window_start(start, bucket_ms), values);
            }
            cursor = upper;
        }
        series.points = buckets
            .into_iter()
            .map(|(ts, v)| HistoryPoint {
                ts,
                count: v.count,
                mean: v.mean(),
                min: v.min,
                max: v.max,
                last: v.last,
            })
            .collect();
        Ok(series)
    }
}

impl HistoryReader {
    /// Every device in the registry (id, group, first and last seen, latest state with the
    /// metrics seen), e.g. for listing devices before any has reported since a restart.
    ///
    /// # Errors
    /// The database cannot be opened or read.
    pub fn devices(&self) -> Result<Vec<crate::shard::RegistryEntry>, StoreError> {
        let connection = schema::open_read_only(&self.path)?;
        crate::store::registry::load(&connection)
    }
}

/// The tier to read for `[from, to)` with at most `max_points` points at `now`: among the
/// tiers whose retention still covers `from`, the coarsest no wider than the ideal bucket
/// (`span / max_points`), so buckets are never coarser than needed and each reads as few rows
/// as the tiers allow; when every such tier is wider, the finest of them; when no tier covers
/// `from`, the coarsest.
pub fn choose_tier(tiers: &[(i64, i64)], from: i64, to: i64, max_points: usize, now: i64) -> usize {
    let ideal = (to - from).max(1) / max_points.max(1) as i64;
    let holding: Vec<usize> = (0..tiers.len())
        .filter(|&i| now.saturating_sub(tiers[i].1) <= from)
        .collect();
    holding
        .iter()
        .rev()
        .find(|&&i| tiers[i].0 <= ideal)
        .or(holding.first())
        .copied()
        .unwrap_or(tiers.len().saturating_sub(1))
}

/// The bucket width: a multiple of `tier_ms` whose aligned buckets covering `[from, to)`
/// number at most `max_points` (taken as at least 2: one aligned bucket cannot always cover
/// an unaligned range): `span / max_points` rounded up to the tier when that fits, else
/// `span / (max_points - 1)` rounded up, which always fits.
pub fn bucket_width(tier_ms: i64, from: i64, to: i64, max_points: usize) -> i64 {
    let points = max_points.max(2) as i64;
    let span = (to - from).max(1);
    let round_up = |width: i64| ceil_div(width, tier_ms).max(1) * tier_ms;
    let tight = round_up(ceil_div(span, points));
    if buckets_covering(from, to, tight) <= points {
        tight
    } else {
        round_up(ceil_div(span, points - 1))
    }
}

/// `a / b` rounded up, for positive `b`.
fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

fn buckets_covering(from: i64, to: i64, width: i64) -> i64 {
    (window_start((to - 1).max(from), width) - window_start(from, width)) / width + 1
}

fn add_to_buckets(buckets: &mut Vec<(i64, Accumulator)>, bucket: i64, values: Accumulator) {
    match buckets.last_mut() {
        Some((start, total)) if *start == bucket => total.merge(&values),
        _ => buckets.push((bucket, values)),
    }
}

fn ids(
    connection: &Connection,
    device: &str,
    metric: &str,
) -> Result<Option<(i64, i64)>, StoreError> {
    let device: Option<i64> = connection
        .query_row("SELECT id FROM devices WHERE name = ?1", [device], |row| {
            row.get(0)
        })
        .optional()?;
    let metric: Option<i64> = connection
        .query_row("SELECT id FROM metrics WHERE name = ?1", [metric], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(device.zip(metric))
}

fn cascaded_until(connection: &Connection, width: i64) -> Result<i64, StoreError> {
    let key = format!("cascaded_until_{width}");
    Ok(connection
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?
        .unwrap_or(i64::MIN))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DAY: i64 = 86_400_000;
    const TIERS: [(i64, i64); 3] = [
        (10_000, 2 * DAY),
        (60_000, 30 * DAY),
        (3_600_000, 730 * DAY),
    ];

    #[test]
    fn the_finest_tier_that_fits_is_chosen() {
        let now = 1_000 * DAY;
        // One hour at 300 points: 12 s buckets, read from the 10 s tier.
        assert_eq!(choose_tier(&TIERS, now - 3_600_000, now, 300, now), 0);
        // One day at 300 points: 288 s buckets from the 1 min tier; a week at 100: 1h.
        assert_eq!(choose_tier(&TIERS, now - DAY, now, 300, now), 1);
        assert_eq!(choose_tier(&TIERS, now - 7 * DAY, now, 100, now), 2);
        // More points than 10 s windows: the finest tier.
        assert_eq!(choose_tier(&TIERS, now - 60_000, now, 1000, now), 0);
        // Three days ago is past the 10 s retention, even for a short range.
        assert_eq!(
            choose_tier(&TIERS, now - 3 * DAY, now - 3 * DAY + 60_000, 100, now),
            1
        );
        // Beyond every tier: the coarsest.
        assert_eq!(choose_tier(&TIERS, 0, now, 10, now), 2);
    }

    #[test]
    fn buckets_are_tier_multiples() {
        assert_eq!(bucket_width(10_000, 0, 3_600_000, 360), 10_000);
        assert_eq!(bucket_width(10_000, 0, 3_600_000, 100), 40_000);
        assert_eq!(bucket_width(10_000, 5_000, 15_000, 1), 10_000);
    }

    proptest! {
        #[test]
        fn never_more_buckets_than_points(from in 0i64..10_000_000_000, span in 1i64..1_000_000_000, points in 1usize..2000, tier in prop::sample::select(vec![1_000i64, 10_000, 60_000])) {
            let width = bucket_width(tier, from, from + span, points);
            prop_assert_eq!(width % tier, 0);
            prop_assert!(buckets_covering(from, from + span, width) <= points.max(2) as i64);
        }
    }
}
