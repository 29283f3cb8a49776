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
//! whatever the size of `rollups`. Every few minutes [`merge_into_rollups`] moves all of it into
//! `rollups` in key order, so each series' page is dirtied once per merge instead of once per
//! flush.
//!
//! Readers see both tables. A key may be in either or in both (a window merged while still
//! open and completed by later deltas, or a delta for a merged window): the two parts merge
//! like deltas (counts and sums add, min and max widen, `last` follows the newest timestamp).
//! Coarser tiers' rows are written once per window (their watermark advances in the same
//! transaction), so merging them additively is the same as replacing them. Read both tables
//! in one transaction: a merge committed between the two reads would otherwise be seen twice
//! or not at all.

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

/// Moves every recent row into `rollups`, merging with a row already there, in the order of
/// `rollups`' key so that consecutive inserts land on the same pages. (The `WHERE true` keeps
/// SQLite's parser from reading `ON CONFLICT` as part of the `SELECT`.)
const MERGE_INTO_ROLLUPS: &str = concat!(
    "
INSERT INTO rollups (tier, device, metric, start, count, sum, min, max, last, last_ts)
SELECT tier, device, metric, start, count, sum, min, max, last, last_ts
FROM recent_rollups WHERE true
ORDER BY tier, device, metric, start
ON CONFLICT (tier, device, metric, start) ",
    merge_on_conflict!()
);

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

/// Moves every recent row into `rollups` and empties `recent_rollups`; returns the rows moved.
/// Call it inside a transaction: on failure nothing has moved.
///
/// # Errors
/// A statement failed.
pub fn merge_into_rollups(connection: &Connection) -> Result<usize, StoreError> {
    let moved = connection.prepare_cached(MERGE_INTO_ROLLUPS)?.execute([])?;
    // Without a WHERE clause SQLite drops the table's pages wholesale instead of row by row.
    connection
        .prepare_cached("DELETE FROM recent_rollups")?
        .execute([])?;
    Ok(moved)
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
/// holds minutes), where a range read would scan every series of every window.
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
