//! Alert persistence: `alerts.db` (SQLite, WAL) in the data directory, apart from the rollup
//! store so that an alert transition is written at once, never queued behind a batch of
//! rollups. It holds every alert (open and closed, as JSON with the columns queries filter
//! on), every transition, and the phase of each condition still waiting out a delay or
//! firing, so that a restart resumes exactly where the bridge stopped.

use std::path::{Path, PathBuf};

use iotmon_wire::alert::AlertTransition;
use iotmon_wire::history::AlertQuery;
use iotmon_wire::{Alert, AlertId, AlertState};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use thiserror::Error;

use super::condition::Phase;

/// The alert store's file name inside the data directory.
pub const ALERTS_DB_FILE: &str = "alerts.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    group_path TEXT NOT NULL,
    state TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    alert TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (state) WHERE state <> 'closed';
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (raised_at);
CREATE TABLE IF NOT EXISTS alert_transitions (
    alert INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    transition TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_transitions_by_alert ON alert_transitions (alert, ts);
CREATE TABLE IF NOT EXISTS alert_conditions (
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    group_path TEXT NOT NULL,
    phase TEXT NOT NULL,
    PRIMARY KEY (rule, device)
) WITHOUT ROWID;
";

/// Why the alert store failed.
#[derive(Debug, Error)]
pub enum AlertStoreError {
    #[error("alert store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("alert store: unreadable record: {0}")]
    Record(#[from] serde_json::Error),
}

/// The path of the alert store under `data_dir`.
pub fn alerts_db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ALERTS_DB_FILE)
}

/// A condition not in `Normal`, as saved: enough to restore it, and its device, after a
/// restart (even a device whose registry row the crash lost).
#[derive(Debug, Clone, PartialEq)]
pub struct SavedCondition {
    pub rule: String,
    pub device: String,
    pub group: String,
    /// `Normal` deletes the saved condition.
    pub phase: Phase,
}

/// What the store holds at start-up.
#[derive(Debug, Default)]
pub struct Saved {
    pub open: Vec<Alert>,
    /// Conditions not in `Normal`.
    pub conditions: Vec<SavedCondition>,
    /// The next alert id to hand out.
    pub next_id: AlertId,
}

/// Changes to write in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    pub alerts: Vec<Alert>,
    pub transitions: Vec<AlertTransition>,
    pub conditions: Vec<SavedCondition>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.transitions.is_empty() && self.conditions.is_empty()
    }
}

/// The writing connection, owned by the alert manager.
#[derive(Debug)]
pub struct AlertStore {
    connection: Connection,
}

impl AlertStore {
    /// Opens (creating if needed) the alert store at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or created.
    pub fn open(path: &Path) -> Result<AlertStore, AlertStoreError> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // A committed transaction survives the process being killed (kill -9); a power loss
        // may lose the last ones, never corrupt the file.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.execute_batch(SCHEMA)?;
        Ok(AlertStore { connection })
    }

    /// Reads the open alerts, the saved conditions and the next id.
    ///
    /// # Errors
    /// A read fails or a record is unreadable.
    pub fn load(&self) -> Result<Saved, AlertStoreError> {
        let mut saved = Saved::default();
        let mut open = self
            .connection
            .prepare("SELECT alert FROM alerts WHERE state <> 'closed' ORDER BY id")?;
        for json in open.query_map([], |row| row.get::<_, String>(0))? {
            saved.open.push(serde_json::from_str(&json?)?);
        }
        let mut conditions = self
            .connection
            .prepare("SELECT rule, device, group_path, phase FROM alert_conditions")?;
        let rows = conditions.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (rule, device, group, phase) = row?;
            saved.conditions.push(SavedCondition {
                rule,
                device,
                group,
                phase: serde_json::from_str(&phase)?,
            });
        }
        let max_id: Option<i64> = self
            .connection
            .query_row("SELECT MAX(id) FROM alerts", [], |row| row.get(0))
            .optional()?
            .flatten();
        saved.next_id = max_id.map_or(1, |id| id.unsigned_abs() + 1);
        Ok(saved)
    }

    /// Writes `changes` in one transaction.
    ///
    /// # Errors
    /// The write fails (disk full, say): nothing of it is written.
    pub fn write(&mut self, changes: &Changes) -> Result<(), AlertStoreError> {
        let tx = self.connection.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO alerts (id, rule, subject, group_path, state, raised_at, changed_at, alert)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                     changed_at = excluded.changed_at, alert = excluded.alert",
            )?;
            for alert in &changes.alerts {
                upsert.execute(params![
                    i64::try_from(alert.id).unwrap_or(i64::MAX),
                    &*alert.rule,
                    &*alert.subject,
                    &*alert.group,
                    alert.state.as_str(),
                    alert.raised_at,
                    alert.changed_at,
                    serde_json::to_string(alert)?,
                ])?;
            }
            let mut transition = tx.prepare_cached(
                "INSERT INTO alert_transitions (alert, ts, transition) VALUES (?1, ?2, ?3)",
            )?;
            for step in &changes.transitions {
                transition.execute(params![
                    i64::try_from(step.alert).unwrap_or(i64::MAX),
                    step.ts,
                    serde_json::to_string(step)?,
                ])?;
            }
            let mut save = tx.prepare_cached(
                "INSERT INTO alert_conditions (rule, device, group_path, phase)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (rule, device) DO UPDATE SET
                     group_path = excluded.group_path, phase = excluded.phase",
            )?;
            let mut forget =
                tx.prepare_cached("DELETE FROM alert_conditions WHERE rule = ?1 AND device = ?2")?;
            for saved in &changes.conditions {
                if saved.phase == Phase::Normal {
                    forget.execute(params![saved.rule, saved.device])?;
                } else {
                    let phase = serde_json::to_string(&saved.phase)?;
                    save.execute(params![saved.rule, saved.device, saved.group, phase])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes closed alerts (and their transitions) that last changed before `before_ms`.
    ///
    /// # Errors
    /// The delete fails.
    pub fn prune(&mut self, before_ms: i64) -> Result<usize, AlertStoreError> {
        let tx = self.connection.transaction()?;
        tx.execute(
            "DELETE FROM alert_transitions WHERE alert IN
                 (SELECT id FROM alerts WHERE state = 'closed' AND changed_at < ?1)",
            [before_ms],
        )?;
        let deleted = tx.execute(
            "DELETE FROM alerts WHERE state = 'closed' AND changed_at < ?1",
            [before_ms],
        )?;
        tx.commit()?;
        Ok(deleted)
    }
}

/// Reads alert history beside the writer (read-only, its own connection per query).
#[derive(Debug, Clone)]
pub struct AlertReader {
    path: PathBuf,
}

impl AlertReader {
    pub fn new(data_dir: &Path) -> Self {
        AlertReader {
            path: alerts_db_path(data_dir),
        }
    }

    fn connect(&self) -> Result<Option<Connection>, AlertStoreError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Some(connection))
    }

    /// Alerts matching `query`, newest first.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, AlertStoreError> {
        let Some(connection) = self.connect()? else {
            return Ok(Vec::new());
        };
        let group_prefix = query.group.as_ref().map(|group| format!("{group}/%"));
        let mut statement = connection.prepare_cached(
            "SELECT alert FROM alerts
             WHERE (?1 IS NULL OR state = ?1)
               AND (?2 IS NULL OR group_path = ?2 OR group_path LIKE ?3)
               AND (?4 IS NULL OR raised_at >= ?4)
               AND (?5 IS NULL OR raised_at < ?5)
             ORDER BY raised_at DESC, id DESC LIMIT ?6",
        )?;
        let rows = statement.query_map(
            params![
                query.state.map(AlertState::as_str),
                query.group,
                group_prefix,
                query.from,
                query.to,
                i64::try_from(query.limit).unwrap_or(i64::MAX),
            ],
            |row| row.get::<_, String>(0),
        )?;
        let mut alerts = Vec::new();
        for json in rows {
            alerts.push(serde_json::from_str(&json?)?);
        }
        Ok(alerts)
    }

    /// Alert `id`, open or closed.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn alert(&self, id: AlertId) -> Result<Option<Alert>, AlertStoreError> {
        let Some(connection) = self.connect()? else {
            return Ok(None);
        };
        let json: Option<String> = connection
            .query_row(
                "SELECT alert FROM alerts WHERE id = ?1",
                [i64::try_from(id).unwrap_or(i64::MAX)],
                |row| row.get(0),
            )
            .optional()?;
        Ok(json.map(|json| serde_json::from_str(&json)).transpose()?)
    }

    /// The transitions of alert `id`, oldest first.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn transitions(&self, id: AlertId) -> Result<Vec<AlertTransition>, AlertStoreError> {
        let Some(connection) = self.connect()? else {
            return Ok(Vec::new());
        };
        let mut statement = connection.prepare_cached(
            "SELECT transition FROM alert_transitions WHERE alert = ?1 ORDER BY ts, rowid",
        )?;
        let rows = statement.query_map([i64::try_from(id).unwrap_or(i64::MAX)], |row| {
            row.get::<_, String>(0)
        })?;
        let mut steps = Vec::new();
        for json in rows {
            steps.push(serde_json::from_str(&json?)?);
        }
        Ok(steps)
    }
}
