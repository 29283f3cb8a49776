//! The store thread: writes the shards' batches in one transaction per wake-up into the
//! time-ordered `recent_rollups`, and once a second cascades closed windows into the coarser
//! tiers, exports closed windows to the InfluxDB outbox (when enabled), applies retention,
//! and every few minutes starts a merge of `recent_rollups` into `rollups`, which goes on in
//! slices between the shards' batches.
//!
//! Errors (disk full, I/O) never stop the thread: the transaction is rolled back, counted in
//! `iotmon_store_errors_total`, logged at most once per interval for each kind of failure,
//! and the thread goes on. A failed write loses its batches of rollups; a failed maintenance
//! pass or merge slice loses nothing (it is tried again later) and is also counted in
//! `iotmon_store_maintenance_errors_total`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tracing::{error, info};

use crate::config::BridgeConfig;
use crate::counters::BridgeCounters;
use crate::influx::line::{self, ExportRow};
use crate::rollup::{window_start, Accumulator};
use crate::shard::StoreBatch;
use crate::store::recent::{self, MergePass, RecentRows};
use crate::store::registry::{self, Ids};
use crate::store::StoreError;
use crate::FastMap;
use iotmon_wire::unix_millis;

/// How often maintenance (cascade, export) runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Most windows one tier cascades or exports per maintenance (catching up after downtime).
const MAX_WINDOWS_PER_PASS: usize = 1000;
/// Most lines per outbox entry (one InfluxDB write).
const LINES_PER_WRITE: usize = 5000;
/// Least time between two logged store errors of one [`Failed`] kind.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often a merge of `recent_rollups` into `rollups` starts (ms of the clock `maintain` is
/// given). A merge writes the newest pages of every active series once, where merging every
/// flush into `rollups` wrote them every second; the price of a longer interval is a larger
/// recent table for readers to look through (about 30 windows of every series at 5 minutes).
const MERGE_EVERY_MS: i64 = 5 * 60_000;
/// Rows written into `recent_rollups` since the last merge that make a merge due before
/// [`MERGE_EVERY_MS`] (about 80 MiB of table at ~40 bytes a row): the bound on that table
/// for fleets much larger than the reference one. If merges keep failing (a full disk) the
/// table grows beyond it, and each maintenance pass tries again.
const MERGE_AT_ROWS: u64 = 2_000_000;
/// Most rows one merge slice moves (one transaction, whole devices), which bounds how long a
/// batch from the shards waits behind the merge: at the reference load about 100 devices'
/// worth of five minutes, a few hundred of `rollups`' pages.
const MERGE_SLICE_ROWS: usize = 10_000;

/// What a failed transaction was doing, which says what its failure cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// Writing batches from the shards: their rollup deltas and registry changes are lost.
    Write { batches: usize },
    /// Cascade, export, retention or a merge slice: nothing is lost, the next maintenance
    /// pass tries again.
    Maintenance,
}

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
    /// When a failed write was last logged.
    last_write_error_log: Option<Instant>,
    /// When a failed maintenance pass or merge slice was last logged: kept apart from
    /// writes, so that failing maintenance never hides that batches are being lost.
    last_maintenance_error_log: Option<Instant>,
    /// When the last completed merge of `recent_rollups` into `rollups` started, on
    /// `maintain`'s clock.
    last_merge_ms: i64,
    /// Rows written into `recent_rollups` since then (with the rows not yet moved, an upper
    /// bound on its size: a write into an existing row counts too).
    rows_since_merge: u64,
    /// The merge under way, moved a slice at a time between batches, with its start time.
    merge: Option<(MergePass, i64)>,
    /// Most rows per merge slice: [`MERGE_SLICE_ROWS`], smaller in tests.
    merge_slice_rows: usize,
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
        let rows_since_merge = recent::count(&connection)?;
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
            last_write_error_log: None,
            last_maintenance_error_log: None,
            last_merge_ms: now_ms,
            rows_since_merge,
            merge: None,
            merge_slice_rows: MERGE_SLICE_ROWS,
        };
        for tier in &writer.tiers {
            let start = window_start(now_ms, tier.width);
            init_watermark(&writer.connection, &cascade_key(tier.width), start)?;
            init_watermark(&writer.connection, &export_key(tier.width), start)?;
        }
        Ok(writer)
    }

    /// Runs until every sender is gone, then returns after writing what was queued. While a
    /// merge is under way, one of its slices runs after every wake-up, and the thread does not
    /// sleep between them: a batch waits for at most one slice, and a merge goes on even when
    /// batches arrive back to back.
    pub fn run(mut self, from_shards: &Receiver<(Instant, StoreBatch)>) {
        let mut last_maintenance = Instant::now();
        loop {
            let received = if self.merge.is_some() {
                from_shards
                    .try_recv()
                    .map_err(|empty_or_closed| match empty_or_closed {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
            } else {
                from_shards.recv_timeout(MAINTENANCE_EVERY)
            };
            match received {
                Ok((oldest, first)) => self.write_queued(oldest, first, from_shards),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let merged = self.merge_slice();
            self.record_failure(Failed::Maintenance, merged);
            if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                last_maintenance = Instant::now();
                let maintained = self.maintain(unix_millis());
                self.record_failure(Failed::Maintenance, maintained);
            }
        }
        // Leaves the database in the layout older versions of iotmon read too; a kill before
        // this point loses nothing (the next run reads the recent rows and merges them).
        let merged = self.merge_recent(unix_millis());
        self.record_failure(Failed::Maintenance, merged);
        info!("store closed");
    }

    /// Writes `first` and every batch queued behind it, and records the store's lag.
    fn write_queued(
        &mut self,
        oldest: Instant,
        first: StoreBatch,
        from_shards: &Receiver<(Instant, StoreBatch)>,
    ) {
        let mut batches = vec![first];
        batches.extend(from_shards.try_iter().map(|(_, batch)| batch));
        self.counters
            .store_queued_batches
            .fetch_sub(batches.len() as u64, Ordering::Relaxed);
        let written = self.write(&batches);
        let batches = batches.len();
        self.record_failure(Failed::Write { batches }, written);
        let lag = u64::try_from(oldest.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.counters.store_lag_ms.store(lag, Ordering::Relaxed);
    }

    /// Writes batches in one transaction: registry first (rollups refer to devices), then
    /// the rollup deltas merged into their rows of `recent_rollups`.
    ///
    /// # Errors
    /// Any statement failed; the transaction is rolled back.
    pub fn write(&mut self, batches: &[StoreBatch]) -> Result<(), StoreError> {
        let tx = begin_writing(&mut self.connection)?;
        for batch in batches {
            for entry in &batch.devices {
                registry::upsert(&tx, entry)?;
            }
        }
        let base = self.tiers.first().map_or(10_000, |tier| tier.width);
        // In the table's key order, so consecutive upserts land on the same B-tree pages.
        let mut keyed = Vec::with_capacity(batches.iter().map(|batch| batch.rollups.len()).sum());
        for batch in batches {
            for delta in &batch.rollups {
                let device = self.ids.device(&tx, &delta.device)?;
                let metric = self.ids.metric(&tx, &delta.metric)?;
                keyed.push(([delta.start, device, metric], delta));
            }
        }
        keyed.sort_unstable_by_key(|(key, _)| *key);
        let mut into_recent = RecentRows::new(&tx)?;
        for ([start, device, metric], delta) in &keyed {
            into_recent.add(base, [*device, *metric, *start], &delta.values)?;
        }
        drop(into_recent);
        tx.commit()?;
        let rows = keyed.len() as u64;
        self.rows_since_merge += rows;
        self.counters
            .store_rollup_rows
            .fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }

    /// Moves every row of `recent_rollups` into `rollups` now, slice by slice (each slice its
    /// own transaction), as of `now_ms`; a merge under way is started over (the rows it moved
    /// are gone from `recent_rollups`, so that costs little).
    ///
    /// # Errors
    /// A slice failed; what earlier slices moved stays moved, the rest stays in
    /// `recent_rollups`, and a later merge moves it.
    pub fn merge_recent(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.begin_merge(now_ms)?;
        while self.merge.is_some() {
            self.merge_slice()?;
        }
        Ok(())
    }

    /// Starts a merge as of `now_ms` (completes it at once when `recent_rollups` is empty).
    ///
    /// # Errors
    /// The recent table cannot be read.
    fn begin_merge(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let pass = MergePass::begin(&self.connection)?;
        self.rows_since_merge = 0;
        self.merge = pass.map(|pass| (pass, now_ms));
        if self.merge.is_none() {
            self.last_merge_ms = now_ms;
        }
        Ok(())
    }

    /// Moves the next slice of the merge under way, if any, in one transaction; the merge is
    /// complete once the slice that moves its last devices commits.
    ///
    /// # Errors
    /// A statement failed: that slice is rolled back and the merge abandoned; the next
    /// maintenance starts another (the merge is still due).
    pub fn merge_slice(&mut self) -> Result<(), StoreError> {
        let Some((pass, started_ms)) = self.merge.take() else {
            return Ok(());
        };
        let tx = begin_writing(&mut self.connection)?;
        let (pass, _moved) = recent::merge_slice(&tx, pass, self.merge_slice_rows)?;
        tx.commit()?;
        if pass.is_done() {
            self.last_merge_ms = started_ms;
        } else {
            self.merge = Some((pass, started_ms));
        }
        Ok(())
    }

    /// Whether `recent_rollups` is due to be merged at `now_ms`.
    fn merge_due(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_merge_ms) >= MERGE_EVERY_MS
            || self.rows_since_merge >= MERGE_AT_ROWS
    }

    /// Cascades closed windows into coarser tiers, exports closed windows to the outbox,
    /// applies retention when due, and starts a merge of `recent_rollups` into `rollups` when
    /// one is due and none is under way ([`Writer::merge_slice`] moves it); all as of `now_ms`.
    ///
    /// # Errors
    /// Any statement failed; that pass is rolled back and retried next time.
    pub fn maintain(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let tx = begin_writing(&mut self.connection)?;
        let mut cascaded = 0;
        for index in 1..self.tiers.len() {
            cascaded += cascade(
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
                let oldest = now_ms.saturating_sub(tier.retention);
                tx.prepare_cached("DELETE FROM rollups WHERE tier = ?1 AND start < ?2")?
                    .execute(params![tier.width, oldest])?;
                tx.prepare_cached("DELETE FROM recent_rollups WHERE tier = ?1 AND start < ?2")?
                    .execute(params![tier.width, oldest])?;
            }
        }
        tx.commit()?;
        self.rows_since_merge += cascaded;
        if retention_due {
            self.last_retention = Some(Instant::now());
        }
        if self.merge.is_none() && self.merge_due(now_ms) {
            self.begin_merge(now_ms)?;
        }
        Ok(())
    }

    /// Counts a failed transaction and logs it, saying what it cost, at most once per
    /// [`ERROR_LOG_EVERY`] for each kind of failure.
    fn record_failure(&mut self, failed: Failed, result: Result<(), StoreError>) {
        let Err(error) = result else { return };
        // Ids the rolled-back transaction inserted are gone with it.
        self.ids.clear();
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        let last_log = match failed {
            Failed::Write { .. } => &mut self.last_write_error_log,
            Failed::Maintenance => {
                self.counters
                    .store_maintenance_errors
                    .fetch_add(1, Ordering::Relaxed);
                &mut self.last_maintenance_error_log
            }
        };
        if last_log.is_some_and(|last| last.elapsed() < ERROR_LOG_EVERY) {
            return;
        }
        *last_log = Some(Instant::now());
        match failed {
            Failed::Write { batches } => error!(
                %error,
                batches,
                "store write failed; batch lost (its rollups and device registry changes; see \
                 iotmon_store_errors_total)"
            ),
            Failed::Maintenance => error!(
                %error,
                "store maintenance failed; nothing lost, it is retried on the next pass \
                 (see iotmon_store_maintenance_errors_total)"
            ),
        }
    }
}

/// Begins a transaction that holds the write lock from its start (`BEGIN IMMEDIATE`),
/// waiting for it as long as the busy timeout allows. The InfluxDB sender deletes sent
/// entries through a connection of its own: a deferred transaction that had read before
/// such a delete committed could not upgrade to writing and failed at once with
/// SQLITE_BUSY, without waiting, losing its batch.
fn begin_writing(connection: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    connection.transaction_with_behavior(TransactionBehavior::Immediate)
}

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

/// Builds the closed windows of `coarser` from `finer`'s rows in them (from both tables),
/// into `recent_rollups`, and advances the tier's watermark; returns the rows written.
fn cascade(
    tx: &Transaction<'_>,
    finer: Tier,
    coarser: Tier,
    now_ms: i64,
    settle_ms: i64,
) -> Result<u64, StoreError> {
    let key = cascade_key(coarser.width);
    let from = watermark(tx, &key)?;
    let mut done = from;
    let mut written = 0;
    for start in closed_windows(from, now_ms - settle_ms, coarser, now_ms) {
        // Ordered by series, so the rows are written in `recent_rollups`' key order.
        let mut by_series: BTreeMap<(i64, i64), Accumulator> = BTreeMap::new();
        for row in recent::rows_in_range(tx, finer.width, start, start + coarser.width)? {
            by_series
                .entry((row.device, row.metric))
                .and_modify(|values| values.merge(&row.values))
                .or_insert(row.values);
        }
        let mut into_recent = RecentRows::new(tx)?;
        for ((device, metric), values) in &by_series {
            into_recent.add(coarser.width, [*device, *metric, start], values)?;
        }
        written += by_series.len() as u64;
        done = start + coarser.width;
    }
    if done != from {
        set_watermark(tx, &key, done)?;
    }
    Ok(written)
}

/// Copies the tier's windows closed before `until` into the outbox as line protocol.
fn export(tx: &Transaction<'_>, tier: Tier, until: i64) -> Result<(), StoreError> {
    let key = export_key(tier.width);
    let from = watermark(tx, &key)?;
    let Some(last) = closed_windows(from, until, tier, until).last() else {
        return Ok(());
    };
    let end = last + tier.width;
    let mut names = Names::default();
    let mut rows = Vec::new();
    for stored in recent::rows_in_range(tx, tier.width, from, end)? {
        let Some((device, group)) = names.device(tx, stored.device)? else {
            continue;
        };
        let Some(metric) = names.metric(tx, stored.metric)? else {
            continue;
        };
        let values = stored.values;
        rows.push(ExportRow {
            device,
            group,
            metric,
            start: stored.start,
            count: i64::try_from(values.count).unwrap_or(i64::MAX),
            sum: values.sum,
            min: values.min,
            max: values.max,
            last: values.last,
        });
    }
    let lines = line::to_lines(tier.width, &rows);
    for chunk in lines.chunks(LINES_PER_WRITE) {
        let body = chunk.join("\n");
        tx.prepare_cached("INSERT INTO influx_outbox (lines, points, bytes) VALUES (?1, ?2, ?3)")?
            .execute(params![&body, chunk.len() as i64, body.len() as i64])?;
    }
    set_watermark(tx, &key, end)?;
    Ok(())
}

/// Device and metric names by id, looked up once per export pass. A row whose device or
/// metric has no name is left out, as the join of the registry with the rollups did.
#[derive(Default)]
struct Names {
    devices: FastMap<i64, Option<(String, String)>>,
    metrics: FastMap<i64, Option<String>>,
}

impl Names {
    fn device(
        &mut self,
        tx: &Transaction<'_>,
        id: i64,
    ) -> rusqlite::Result<Option<(String, String)>> {
        if let Some(known) = self.devices.get(&id) {
            return Ok(known.clone());
        }
        let found = tx
            .prepare_cached("SELECT name, group_path FROM devices WHERE id = ?1")?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        self.devices.insert(id, found.clone());
        Ok(found)
    }

    fn metric(&mut self, tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Option<String>> {
        if let Some(known) = self.metrics.get(&id) {
            return Ok(known.clone());
        }
        let found = tx
            .prepare_cached("SELECT name FROM metrics WHERE id = ?1")?
            .query_row([id], |row| row.get(0))
            .optional()?;
        self.metrics.insert(id, found.clone());
        Ok(found)
    }
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
