//! The newest rollup rows, in a table ordered by time (`recent_rollups`), and their merge
//! into the series-ordered `rollups` table.
//!
//! Why two tables: `rollups` is keyed by series, `(tier, device, metric, start)`, so that a
//! device's history is one range read. But the finest tier's deltas arrive for thousands of
//! series every flush, and once the table is large every series has leaf pages of its own:
//! merging the deltas there dirtied one B-tree page per series touched, per flush, and each
//! dirty page is a 4 KiB WAL frame, later copied into the database file by a checkpoint. The
//! cost grew with the table. `recent_rollups` is keyed by time, `(tier, start, device,
//! metric)`: a flush touches only the pages of the windows still open, a few hundred at most
//! whatever the size of `rollups`. Every few minutes a [`MergePass`] moves all of it into
//! `rollups` in key order, so each series' page is dirtied once per merge instead of once per
//! flush. The pass goes by slices of devices ([`merge_slice`]), each its own short
//! transaction, so the store thread writes the shards' batches between slices: one merge of
//! the whole table in one transaction blocked the thread for seconds.
//!
//! Readers see both tables. A key may be in either or in both (a window merged while still
//! open and completed by later deltas, or a delta for a merged window): the two parts merge
//! like deltas (counts and sums add, min and max widen, `last` follows the newest timestamp).
//! Coarser tiers' rows are written once per window (their watermark advances in the same
//! transaction), so merging them additively is the same as replacing them. Read both tables
//! in one transaction: a merge slice committed between the two reads would otherwise be seen
//! twice or not at all.
//!
//! A database written by a version of iotmon older than `recent_rollups` does not have the
//! table until a writer opens it; readers (read-only) take a missing table as an empty one.

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Row};

use crate::rollup::Accumulator;
use crate::store::StoreError;

/// One stored rollup row: a window of one series in one tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredRow {
    pub start: i64,
    pub device: i64,
    pub metric: i64,
    pub values: Accumulator,
}

/// How two parts of one window merge, for both tables: counts and sums add, min and max
/// widen, `last` follows the newest timestamp. (In `DO UPDATE`, bare column names are the
/// old row.) A macro, so the statements below stay string literals.
macro_rules! merge_on_conflict {
    () => {
        "DO UPDATE SET
    count = count + excluded.count,
    sum = sum + excluded.sum,
    min = min(min, excluded.min),
    max = max(max, excluded.max),
    last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END,
    last_ts = max(last_ts, excluded.last_ts)"
    };
}

/// Merges `values` into the recent row of `(tier, start, device, metric)`.
const ADD_TO_RECENT: &str = concat!(
    "
INSERT INTO recent_rollups (tier, start, device, metric, count, sum, min, max, last, last_ts)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (tier, start, device, metric) ",
    merge_on_conflict!()
);

/// Moves the recent rows of one tier in the windows listed (`?2`, a JSON array of starts)
/// and of the devices in `[?3, ?4)` into `rollups`, merging with a row already there, in the
/// order of `rollups`' key so that consecutive inserts land on the same pages. Each window is
/// an index seek (`IN` on the key's second column, then a range of devices).
const MERGE_INTO_ROLLUPS: &str = concat!(
    "
INSERT INTO rollups (tier, device, metric, start, count, sum, min, max, last, last_ts)
SELECT tier, device, metric, start, count, sum, min, max, last, last_ts
FROM recent_rollups
WHERE tier = ?1 AND start IN (SELECT value FROM json_each(?2)) AND device >= ?3 AND device < ?4
ORDER BY device, metric, start
ON CONFLICT (tier, device, metric, start) ",
    merge_on_conflict!()
);

/// Deletes the rows [`MERGE_INTO_ROLLUPS`] moved, with the same parameters.
const DELETE_MOVED: &str = "
DELETE FROM recent_rollups
WHERE tier = ?1 AND start IN (SELECT value FROM json_each(?2)) AND device >= ?3 AND device < ?4";

/// Every row of one tier with its window start in `[?2, ?3)`, from both tables, ordered by
/// key and, within a key, `rollups` first (the older part, so ties of `last_ts` go to the
/// newer part as they do when merging).
const ROWS_IN_RANGE: &str = "
SELECT start, device, metric, count, sum, min, max, last, last_ts, 0 AS part FROM rollups
    WHERE tier = ?1 AND start >= ?2 AND start < ?3
UNION ALL
SELECT start, device, metric, count, sum, min, max, last, last_ts, 1 AS part FROM recent_rollups
    WHERE tier = ?1 AND start >= ?2 AND start < ?3
ORDER BY start, device, metric, part";

/// Adds rows to `recent_rollups`: its statement is looked up once for the many rows of a
/// flush, not once per row.
pub struct RecentRows<'c>(CachedStatement<'c>);

impl std::fmt::Debug for RecentRows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecentRows")
    }
}

impl<'c> RecentRows<'c> {
    /// # Errors
    /// The statement cannot be prepared.
    pub fn new(connection: &'c Connection) -> Result<Self, StoreError> {
        Ok(RecentRows(connection.prepare_cached(ADD_TO_RECENT)?))
    }

    /// Adds `values` to the recent row of `tier`, `device`, `metric` and window `start`.
    ///
    /// # Errors
    /// The statement failed.
    pub fn add(
        &mut self,
        tier: i64,
        [device, metric, start]: [i64; 3],
        values: &Accumulator,
    ) -> Result<(), StoreError> {
        self.0.execute(params![
            tier,
            start,
            device,
            metric,
            i64::try_from(values.count).unwrap_or(i64::MAX),
            values.sum,
            values.min,
            values.max,
            values.last,
            values.last_ts
        ])?;
        Ok(())
    }
}

/// One merge of `recent_rollups` into `rollups`, done in slices of devices, each slice its own
/// transaction (see [`merge_slice`]), so that the store thread writes the shards' batches
/// between slices instead of waiting for the whole merge.
///
/// Every committed state is one readers can use: a slice moves a set of rows out of
/// `recent_rollups` and merges them into `rollups` in one transaction, and a key found in both
/// tables merges like deltas. Rows written during the pass (new windows, deltas for devices
/// already moved, new devices) stay in `recent_rollups` for the next pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergePass {
    /// The devices below this id have been moved in this pass.
    next_device: i64,
    /// One past the highest device id in `recent_rollups` when the pass began.
    end_device: i64,
    /// How many device ids the next slice reads, adapted to the rows per device seen.
    span: i64,
}

/// Device ids the first slice of a pass reads; later slices adapt (at most doubling).
const FIRST_SPAN: i64 = 16;

impl MergePass {
    /// A pass over every device with rows in `recent_rollups` now; `None` when it is empty.
    ///
    /// # Errors
    /// A query failed.
    pub fn begin(connection: &Connection) -> Result<Option<MergePass>, StoreError> {
        let mut lowest = None::<i64>;
        let mut highest = None::<i64>;
        let mut first = connection.prepare_cached(
            "SELECT device FROM recent_rollups WHERE tier = ?1 AND start = ?2
             ORDER BY device LIMIT 1",
        )?;
        let mut last = connection.prepare_cached(
            "SELECT device FROM recent_rollups WHERE tier = ?1 AND start = ?2
             ORDER BY device DESC LIMIT 1",
        )?;
        for [tier, start] in windows(connection)? {
            let low: i64 = first.query_row([tier, start], |row| row.get(0))?;
            let high: i64 = last.query_row([tier, start], |row| row.get(0))?;
            lowest = Some(lowest.map_or(low, |known| known.min(low)));
            highest = Some(highest.map_or(high, |known| known.max(high)));
        }
        Ok(lowest.zip(highest).map(|(low, high)| MergePass {
            next_device: low,
            end_device: high.saturating_add(1),
            span: FIRST_SPAN,
        }))
    }

    /// Whether every device of the pass has been moved.
    pub fn is_done(&self) -> bool {
        self.next_device >= self.end_device
    }
}

/// The windows `(tier, start)` present in `recent_rollups`, in key order: one index seek
/// each (a few dozen: the table holds minutes). (Compared as a row value, `(tier, start)` after
/// `(?, ?)`, listing them took about 30 ms at the reference load, as long as moving the rows
/// of a slice: the search went through the tier's rows.)
fn windows(connection: &Connection) -> Result<Vec<[i64; 2]>, StoreError> {
    let mut next_tier = connection
        .prepare_cached("SELECT tier FROM recent_rollups WHERE tier > ?1 ORDER BY tier LIMIT 1")?;
    let mut next_start = connection.prepare_cached(
        "SELECT start FROM recent_rollups WHERE tier = ?1 AND start > ?2
         ORDER BY start LIMIT 1",
    )?;
    let mut found = Vec::new();
    let mut tier = i64::MIN;
    while let Some(next) = next_tier
        .query_row([tier], |row| row.get::<_, i64>(0))
        .optional()?
    {
        tier = next;
        let mut start = i64::MIN;
        while let Some(next) = next_start
            .query_row([tier, start], |row| row.get::<_, i64>(0))
            .optional()?
        {
            start = next;
            found.push([tier, start]);
        }
    }
    Ok(found)
}

/// Moves the recent rows of the pass's next devices into `rollups` (merging with rows already
/// there) and deletes them from `recent_rollups`; returns the pass as it stands after this
/// slice and the rows moved. A slice moves at most `max_rows` rows, whole devices only, unless
/// one device alone has more (then it moves that device). Call it inside a transaction: on
/// failure nothing has moved.
///
/// # Errors
/// A statement failed.
pub fn merge_slice(
    connection: &Connection,
    pass: MergePass,
    max_rows: usize,
) -> Result<(MergePass, usize), StoreError> {
    let from = pass.next_device;
    let mut to = from.saturating_add(pass.span).min(pass.end_device);
    let windows = windows(connection)?;
    // The devices of every row in the span, to choose where the slice ends.
    let mut devices = Vec::new();
    let mut in_window = connection.prepare_cached(
        "SELECT device FROM recent_rollups
         WHERE tier = ?1 AND start = ?2 AND device >= ?3 AND device < ?4",
    )?;
    for [tier, start] in &windows {
        let mut found = in_window.query(params![tier, start, from, to])?;
        while let Some(row) = found.next()? {
            devices.push(row.get::<_, i64>(0)?);
        }
    }
    let (read, read_span) = (devices.len(), to - from);
    if devices.len() > max_rows {
        to = slice_end(&mut devices, max_rows);
    }
    let mut into_rollups = connection.prepare_cached(MERGE_INTO_ROLLUPS)?;
    let mut delete = connection.prepare_cached(DELETE_MOVED)?;
    let (mut moved, mut deleted) = (0, 0);
    for (tier, starts) in by_tier(&windows) {
        moved += into_rollups.execute(params![tier, starts, from, to])?;
        deleted += delete.execute(params![tier, starts, from, to])?;
    }
    debug_assert_eq!(deleted, moved, "a slice deletes exactly the rows it moved");
    let next = MergePass {
        next_device: to,
        span: next_span(read_span, read, max_rows),
        ..pass
    };
    Ok((next, moved))
}

/// The windows grouped by tier: each tier with its starts as a JSON array.
fn by_tier(windows: &[[i64; 2]]) -> Vec<(i64, String)> {
    let mut grouped: Vec<(i64, Vec<String>)> = Vec::new();
    for [tier, start] in windows {
        match grouped.last_mut() {
            Some((known, starts)) if known == tier => starts.push(start.to_string()),
            _ => grouped.push((*tier, vec![start.to_string()])),
        }
    }
    grouped
        .into_iter()
        .map(|(tier, starts)| (tier, format!("[{}]", starts.join(","))))
        .collect()
}

/// The first device id that a slice of at most `max_rows` rows of whole devices leaves out,
/// given the device of every row (`devices`, sorted here); the first device's successor when
/// that device alone has more rows.
fn slice_end(devices: &mut [i64], max_rows: usize) -> i64 {
    devices.sort_unstable();
    let cut = devices[max_rows.min(devices.len() - 1)];
    if cut == devices[0] {
        cut.saturating_add(1)
    } else {
        cut
    }
}

/// Device ids for the next slice, given that the last one read `read` rows from `span` ids:
/// as many as should hold about three quarters of `max_rows`, at most twice the last span.
fn next_span(span: i64, read: usize, max_rows: usize) -> i64 {
    let span = span.max(1);
    let wanted = (max_rows as i64).saturating_mul(3) / 4;
    let estimate = if read == 0 {
        i64::MAX
    } else {
        wanted.saturating_mul(span) / read as i64
    };
    estimate.clamp(1, span.saturating_mul(2))
}

/// Rows in `recent_rollups`, e.g. left by a run that stopped before merging them.
///
/// # Errors
/// The query failed.
pub fn count(connection: &Connection) -> Result<u64, StoreError> {
    let rows: i64 = connection
        .prepare_cached("SELECT COUNT(*) FROM recent_rollups")?
        .query_row([], |row| row.get(0))?;
    Ok(rows.unsigned_abs())
}

/// Every window of `tier` starting in `[from, to)` from both tables, each key once, ordered
/// by (start, device, metric).
///
/// # Errors
/// The query failed.
pub fn rows_in_range(
    connection: &Connection,
    tier: i64,
    from: i64,
    to: i64,
) -> Result<Vec<StoredRow>, StoreError> {
    let mut statement = connection.prepare_cached(ROWS_IN_RANGE)?;
    let mut rows = statement.query(params![tier, from, to])?;
    let mut merged: Vec<StoredRow> = Vec::new();
    while let Some(row) = rows.next()? {
        let stored = StoredRow {
            start: row.get(0)?,
            device: row.get(1)?,
            metric: row.get(2)?,
            values: accumulator(row, 3)?,
        };
        match merged.last_mut() {
            Some(last) if same_key(last, &stored) => last.values.merge(&stored.values),
            _ => merged.push(stored),
        }
    }
    Ok(merged)
}

/// The windows of one series in `tier` starting in `[from, to)`, from both tables, each
/// window once, oldest first.
///
/// `rollups` is read as one range. `recent_rollups` is ordered by time, so the series' rows
/// there are found one window at a time: the next window start present in the table, then
/// the series' row in it. That is two index seeks per window held (a few dozen: the table
/// holds minutes), where a range read would scan every series of every window. Without a
/// `recent_rollups` table (a database of an older iotmon) the rows are those of `rollups`.
///
/// # Errors
/// A query failed.
pub fn series_rows(
    connection: &Connection,
    [tier, device, metric, from, to]: [i64; 5],
) -> Result<Vec<(i64, Accumulator)>, StoreError> {
    let mut merged = Vec::new();
    let mut in_rollups = connection.prepare_cached(
        "SELECT start, count, sum, min, max, last, last_ts FROM rollups
         WHERE tier = ?1 AND device = ?2 AND metric = ?3 AND start >= ?4 AND start < ?5
         ORDER BY start",
    )?;
    let mut rows = in_rollups.query(params![tier, device, metric, from, to])?;
    while let Some(row) = rows.next()? {
        merged.push((row.get(0)?, accumulator(row, 1)?));
    }
    if !table_exists(connection)? {
        return Ok(merged);
    }
    let mut next_window = connection.prepare_cached(
        "SELECT start FROM recent_rollups WHERE tier = ?1 AND start >= ?2 AND start < ?3
         ORDER BY start LIMIT 1",
    )?;
    let mut in_window = connection.prepare_cached(
        "SELECT count, sum, min, max, last, last_ts FROM recent_rollups
         WHERE tier = ?1 AND start = ?2 AND device = ?3 AND metric = ?4",
    )?;
    let mut recent = Vec::new();
    let mut cursor = from;
    while let Some(start) = next_window
        .query_row(params![tier, cursor, to], |row| row.get::<_, i64>(0))
        .optional()?
    {
        let values = in_window
            .query_row(params![tier, start, device, metric], |row| {
                accumulator(row, 0)
            })
            .optional()?;
        if let Some(values) = values {
            recent.push((start, values));
        }
        cursor = start + 1;
    }
    Ok(merge_by_start(merged, recent))
}

/// Whether `recent_rollups` exists: a database last written by an older iotmon lacks it, and
/// a read-only reader cannot (and should not) create it; such a reader takes it as empty.
///
/// # Errors
/// The query failed.
pub fn table_exists(connection: &Connection) -> Result<bool, StoreError> {
    Ok(connection
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recent_rollups'",
        )?
        .exists([])?)
}

/// Merges two lists of windows, each ordered by start, into one with each start once; on
/// equal starts `newer` merges into `older`.
fn merge_by_start(
    older: Vec<(i64, Accumulator)>,
    newer: Vec<(i64, Accumulator)>,
) -> Vec<(i64, Accumulator)> {
    if newer.is_empty() {
        return older;
    }
    let mut merged = Vec::with_capacity(older.len() + newer.len());
    let mut newer = newer.into_iter().peekable();
    for (start, mut values) in older {
        while let Some(earlier) = newer.next_if(|(next, _)| *next < start) {
            merged.push(earlier);
        }
        if let Some((_, same)) = newer.next_if(|(next, _)| *next == start) {
            values.merge(&same);
        }
        merged.push((start, values));
    }
    merged.extend(newer);
    merged
}

fn same_key(a: &StoredRow, b: &StoredRow) -> bool {
    (a.start, a.device, a.metric) == (b.start, b.device, b.metric)
}

/// The accumulator in columns `first..first + 6` (count, sum, min, max, last, last_ts).
fn accumulator(row: &Row<'_>, first: usize) -> rusqlite::Result<Accumulator> {
    let count: i64 = row.get(first)?;
    Ok(Accumulator {
        count: count.unsigned_abs(),
        sum: row.get(first + 1)?,
        min: row.get(first + 2)?,
        max: row.get(first + 3)?,
        last: row.get(first + 4)?,
        last_ts: row.get(first + 5)?,
    })
}
