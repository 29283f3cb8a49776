//! The store's tables and connection settings.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Tables, created when missing. `tier` is the tier's width in milliseconds; `start` the
/// window start (ms since the epoch); devices and metrics are interned to integer ids.
///
/// Rollup rows live in `rollups`, ordered by series for history reads, and their newest
/// minutes in `recent_rollups`, ordered by time for cheap writes (see [`super::recent`]).
/// A database made before `recent_rollups` existed gains the table empty when opened; its
/// rows in `rollups` stay where they are and new rows merge into them.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    group_path TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    metrics_seen TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS rollups (
    tier INTEGER NOT NULL,
    device INTEGER NOT NULL,
    metric INTEGER NOT NULL,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    last REAL NOT NULL,
    last_ts INTEGER NOT NULL,
    PRIMARY KEY (tier, device, metric, start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_by_time ON rollups (tier, start);
CREATE TABLE IF NOT EXISTS recent_rollups (
    tier INTEGER NOT NULL,
    start INTEGER NOT NULL,
    device INTEGER NOT NULL,
    metric INTEGER NOT NULL,
    count INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    last REAL NOT NULL,
    last_ts INTEGER NOT NULL,
    PRIMARY KEY (tier, start, device, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS influx_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lines TEXT NOT NULL,
    points INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
";

/// WAL pages between automatic checkpoints (SQLite's default is 1,000, about 4 MiB). Every
/// flush rewrites the pages of the open windows in `recent_rollups`; a long interval lets a
/// checkpoint copy each of them once for many flushes. 10,000 pages is about 40 MiB of WAL,
/// which a merge of `recent_rollups` into `rollups` can exceed on its own. Durability is unchanged: a committed
/// transaction is in the WAL whether or not it has been checkpointed.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// The size the WAL file is cut back to after a checkpoint has emptied it. A merge of
/// `recent_rollups` is one transaction of a few hundred MiB of WAL at the reference load (the
/// WAL cannot be checkpointed in the middle of a transaction); without a limit the file would
/// keep that size on disk between merges.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// How long a connection waits for another one's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the database for writing, in WAL mode (readers never block the writer), with
/// `synchronous = NORMAL`: a committed transaction survives the process being killed; a power
/// loss may lose the last transactions, never corrupt the file.
///
/// # Errors
/// The file cannot be opened or created, or the schema cannot be applied.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    connection.execute_batch(SCHEMA)?;
    Ok(connection)
}

/// Opens the database read-only, for history queries beside the writer.
///
/// # Errors
/// The file does not exist or cannot be opened.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}
