//! The store thread: writes the shards' batches in one transaction per wake-up, and once a
//! second cascades closed windows into the coarser tiers, exports closed windows to the
//! InfluxDB outbox (when enabled) and, every few minutes, applies retention.
//!
//! Errors (disk full, I/O) never stop the thread: the transaction is rolled back, counted in
//! `iotmon_store_errors_total`, logged at most once per interval, and the thread goes on.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, Transaction};
use tracing::{error, info};

use crate::config::BridgeConfig;
use crate::counters::BridgeCounters;
use crate::influx::line::{self, ExportRow};
use crate::pipeline::unix_millis;
use crate::rollup::window_start;
use crate::shard::StoreBatch;
use crate::store::registry::{self, Ids};
use crate::store::StoreError;

/// How often maintenance (cascade, export) runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Most windows one tier cascades or exports per maintenance (catching up after downtime).
const MAX_WINDOWS_PER_PASS: usize = 1000;
/// Most lines per outbox entry (one InfluxDB write).
const LINES_PER_WRITE: usize = 5000;
/// Least time between two logged store errors.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// One tier as the writer uses it.
#[derive(Debug, Clone, Copy)]
struct Tier {
    width: i64,
    retention: i64,
}

/// The store thread's state.
#[derive(Debug)]
pub struct Writer {
    connection: Connection,
    tiers: Vec<Tier>,
    /// A window is final (cascaded, exported) this long after its end: the grace period plus
    /// two flush intervals for deltas still on their way.
    settle_ms: i64,
    /// The outbox bound, when the InfluxDB sink is enabled.
    influx_outbox_bytes: Option<u64>,
    counters: Arc<BridgeCounters>,
    ids: Ids,
    last_retention: Option<Instant>,
    last_error_log: Option<Instant>,
}

impl Writer {
    /// Prepares the writer; watermarks of a new database start at `now_ms`.
    ///
    /// # Errors
    /// The watermarks cannot be read or initialised.
    pub fn new(
        connection: Connection,
        config: &BridgeConfig,
        counters: Arc<BridgeCounters>,
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let writer = Writer {
            connection,
            tiers: config
                .rollups
                .tiers
                .iter()
                .map(|tier| Tier {
                    width: tier.width_ms(),
                    retention: tier.retention_ms(),
                })
                .collect(),
            settle_ms: millis(config.rollups.grace) + 2 * millis(config.store.flush_interval),
            influx_outbox_bytes: config
                .influx
                .enabled
                .then_some(config.influx.max_outbox_bytes),
            counters,
            ids: Ids::default(),
            last_retention: None,
            last_error_log: None,
        };
        for tier in &writer.tiers {
            let start = window_start(now_ms, tier.width);
            init_watermark(&writer.connection, &cascade_key(tier.width), start)?;
            init_watermark(&writer.connection, &export_key(tier.width), start)?;
        }
        Ok(writer)
    }

    /// Runs until every sender is gone, then returns after writing what was queued.
    pub fn run(mut self, from_shards: &Receiver<(Instant, StoreBatch)>) {
        let mut last_maintenance = Instant::now();
        loop {
            match from_shards.recv_timeout(MAINTENANCE_EVERY) {
                Ok((oldest, first)) => {
                    let mut batches = vec![first];
                    batches.extend(from_shards.try_iter().map(|(_, batch)| batch));
                    self.counters
                        .store_queued_batches
                        .fetch_sub(batches.len() as u64, Ordering::Relaxed);
                    let written = self.write(&batches);
                    self.check(written);
                    let lag = u64::try_from(oldest.elapsed().as_millis()).unwrap_or(u64::MAX);
                    self.counters.store_lag_ms.store(lag, Ordering::Relaxed);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                last_maintenance = Instant::now();
                let maintained = self.maintain(unix_millis());
                self.check(maintained);
            }
        }
        info!("store closed");
    }

    /// Writes batches in one transaction: registry first (rollups refer to devices), then
    /// the rollup deltas merged into their rows.
    ///
    /// # Errors
    /// Any statement failed; the transaction is rolled back.
    pub fn write(&mut self, batches: &[StoreBatch]) -> Result<(), StoreError> {
        let tx = self.connection.transaction()?;
        let mut rows = 0;
        for batch in batches {
            for entry in &batch.devices {
                registry::upsert(&tx, entry)?;
            }
        }
        let base = self.tiers.first().map_or(10_000, |tier| tier.width);
        // Rows are merged in key order, so consecutive upserts land on the same B-tree pages.
        let mut keyed = Vec::with_capacity(batches.iter().map(|batch| batch.rollups.len()).sum());
        for batch in batches {
            for delta in &batch.rollups {
                let device = self.ids.device(&tx, &delta.device)?;
                let metric = self.ids.metric(&tx, &delta.metric)?;
                keyed.push((device, metric, delta));
            }
        }
        keyed.sort_unstable_by_key(|(device, metric, delta)| (*device, *metric, delta.start));
        let mut merge = tx.prepare_cached(MERGE_DELTA)?;
        for (device, metric, delta) in keyed {
            let v = &delta.values;
            merge.execute(params![
                base,
                device,
                metric,
                delta.start,
                v.count as i64,
                v.sum,
                v.min,
                v.max,
                v.last,
                v.last_ts
            ])?;
            rows += 1;
        }
        drop(merge);
        tx.commit()?;
        self.counters
            .store_rollup_rows
            .fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }

    /// Cascades closed windows into coarser tiers, exports closed windows to the outbox, and
    /// applies retention when due; all as of `now_ms`.
    ///
    /// # Errors
    /// Any statement failed; that pass is rolled back and retried next time.
    pub fn maintain(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let tx = self.connection.transaction()?;
        for index in 1..self.tiers.len() {
            cascade(
                &tx,
                self.tiers[index - 1],
                self.tiers[index],
                now_ms,
                self.settle_ms,
            )?;
        }
        if let Some(max_bytes) = self.influx_outbox_bytes {
            for (index, tier) in self.tiers.iter().enumerate() {
                let ready_until = if index == 0 {
                    now_ms - self.settle_ms
                } else {
                    watermark(&tx, &cascade_key(tier.width))?
                };
                export(&tx, *tier, ready_until)?;
            }
            bound_outbox(&tx, max_bytes, &self.counters)?;
        }
        let retention_due = self
            .last_retention
            .is_none_or(|last| last.elapsed() >= RETENTION_EVERY);
        if retention_due {
            for tier in &self.tiers {
                tx.prepare_cached("DELETE FROM rollups WHERE tier = ?1 AND start < ?2")?
                    .execute(params![tier.width, now_ms.saturating_sub(tier.retention)])?;
            }
        }
        tx.commit()?;
        if retention_due {
            self.last_retention = Some(Instant::now());
        }
        Ok(())
    }

    fn check(&mut self, result: Result<(), StoreError>) {
        let Err(failure) = result else { return };
        self.ids.clear();
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        let due = self
            .last_error_log
            .is_none_or(|last| last.elapsed() >= ERROR_LOG_EVERY);
        if due {
            self.last_error_log = Some(Instant::now());
            error!(error = %failure, "store write failed; batch lost (see iotmon_store_errors_total)");
        }
    }
}

/// Merges a finest-tier delta into its row: counts and sums add, min and max widen, `last`
/// follows the newest timestamp. (In `DO UPDATE`, bare column names are the old row.)
const MERGE_DELTA: &str = "
INSERT INTO rollups (tier, device, metric, start, count, sum, min, max, last, last_ts)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (tier, device, metric, start) DO UPDATE SET
    count = count + excluded.count,
    sum = sum + excluded.sum,
    min = min(min, excluded.min),
    max = max(max, excluded.max),
    last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END,
    last_ts = max(last_ts, excluded.last_ts)";

/// Builds one coarse window from the finer tier's rows in it (replacing any earlier result).
const CASCADE: &str = "
INSERT INTO rollups (tier, device, metric, start, count, sum, min, max, last, last_ts)
SELECT ?1, r.device, r.metric, ?2, SUM(r.count), SUM(r.sum), MIN(r.min), MAX(r.max),
    (SELECT l.last FROM rollups l WHERE l.tier = ?3 AND l.device = r.device
        AND l.metric = r.metric AND l.start >= ?2 AND l.start < ?4
        ORDER BY l.last_ts DESC LIMIT 1),
    MAX(r.last_ts)
FROM rollups r WHERE r.tier = ?3 AND r.start >= ?2 AND r.start < ?4
GROUP BY r.device, r.metric
ON CONFLICT (tier, device, metric, start) DO UPDATE SET
    count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
    last = excluded.last, last_ts = excluded.last_ts";

fn cascade_key(width: i64) -> String {
    format!("cascaded_until_{width}")
}

fn export_key(width: i64) -> String {
    format!("exported_until_{width}")
}

fn init_watermark(connection: &Connection, key: &str, value: i64) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
        params![key, value],
    )?;
    Ok(())
}

fn watermark(tx: &Transaction<'_>, key: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
}

fn set_watermark(tx: &Transaction<'_>, key: &str, value: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?
        .execute(params![key, value])?;
    Ok(())
}

/// The windows of `width` from `from` that ended before `until`, at most
/// [`MAX_WINDOWS_PER_PASS`], skipping what retention would delete anyway.
fn closed_windows(from: i64, until: i64, tier: Tier, now_ms: i64) -> impl Iterator<Item = i64> {
    let oldest = window_start(now_ms.saturating_sub(tier.retention), tier.width);
    let first = from.max(oldest);
    (0..MAX_WINDOWS_PER_PASS as i64)
        .map(move |i| first + i * tier.width)
        .take_while(move |start| start + tier.width <= until)
}

fn cascade(
    tx: &Transaction<'_>,
    finer: Tier,
    coarser: Tier,
    now_ms: i64,
    settle_ms: i64,
) -> Result<(), StoreError> {
    let key = cascade_key(coarser.width);
    let from = watermark(tx, &key)?;
    let mut done = from;
    for start in closed_windows(from, now_ms - settle_ms, coarser, now_ms) {
        tx.prepare_cached(CASCADE)?.execute(params![
            coarser.width,
            start,
            finer.width,
            start + coarser.width
        ])?;
        done = start + coarser.width;
    }
    if done != from {
        set_watermark(tx, &key, done)?;
    }
    Ok(())
}

/// Copies the tier's windows closed before `until` into the outbox as line protocol.
fn export(tx: &Transaction<'_>, tier: Tier, until: i64) -> Result<(), StoreError> {
    let key = export_key(tier.width);
    let from = watermark(tx, &key)?;
    let Some(last) = closed_windows(from, until, tier, until).last() else {
        return Ok(());
    };
    let end = last + tier.width;
    let mut statement = tx.prepare_cached(
        "SELECT d.name, d.group_path, m.name, r.start, r.count, r.sum, r.min, r.max, r.last
         FROM rollups r JOIN devices d ON d.id = r.device JOIN metrics m ON m.id = r.metric
         WHERE r.tier = ?1 AND r.start >= ?2 AND r.start < ?3
         ORDER BY r.start, r.device, r.metric",
    )?;
    let rows = statement.query_map(params![tier.width, from, end], |row| {
        Ok(ExportRow {
            device: row.get(0)?,
            group: row.get(1)?,
            metric: row.get(2)?,
            start: row.get(3)?,
            count: row.get(4)?,
            sum: row.get(5)?,
            min: row.get(6)?,
            max: row.get(7)?,
            last: row.get(8)?,
        })
    })?;
    let rows: Vec<ExportRow> = rows.collect::<Result<_, _>>()?;
    let lines = line::to_lines(tier.width, &rows);
    for chunk in lines.chunks(LINES_PER_WRITE) {
        let body = chunk.join("\n");
        tx.prepare_cached("INSERT INTO influx_outbox (lines, points, bytes) VALUES (?1, ?2, ?3)")?
            .execute(params![&body, chunk.len() as i64, body.len() as i64])?;
    }
    set_watermark(tx, &key, end)?;
    Ok(())
}

/// Drops the oldest outbox entries while the outbox is larger than `max_bytes`.
fn bound_outbox(
    tx: &Transaction<'_>,
    max_bytes: u64,
    counters: &BridgeCounters,
) -> Result<(), StoreError> {
    let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let mut total: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(bytes), 0) FROM influx_outbox")?
        .query_row([], |row| row.get(0))?;
    while total > max_bytes {
        let (seq, points, bytes): (i64, i64, i64) = tx
            .prepare_cached("SELECT seq, points, bytes FROM influx_outbox ORDER BY seq LIMIT 1")?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        tx.prepare_cached("DELETE FROM influx_outbox WHERE seq = ?1")?
            .execute([seq])?;
        counters
            .influx_points_dropped
            .fetch_add(points.unsigned_abs(), Ordering::Relaxed);
        total -= bytes;
    }
    counters
        .influx_outbox_bytes
        .store(total.unsigned_abs(), Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests;
