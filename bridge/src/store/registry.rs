//! The device registry: one row per device ever seen, with its group, first and last
//! receipt, the metrics it has reported and its latest state; reloaded at start.

use std::sync::Arc;

use iotmon_wire::{DeviceId, DeviceState};
use rusqlite::{params, Connection, Transaction};

use crate::shard::RegistryEntry;
use crate::store::StoreError;
use crate::FastMap;

/// Every device in the registry.
///
/// # Errors
/// The query failed or a stored state is unreadable.
pub fn load(connection: &Connection) -> Result<Vec<RegistryEntry>, StoreError> {
    let mut statement = connection.prepare("SELECT state, first_seen, last_seen FROM devices")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut entries = Vec::new();
    for row in rows {
        let (state, first_seen, last_seen) = row?;
        let state: DeviceState = serde_json::from_str(&state)?;
        entries.push(RegistryEntry {
            state,
            first_seen,
            last_seen,
        });
    }
    Ok(entries)
}

/// Interned ids of devices and metrics, cached by the writer.
#[derive(Debug, Default)]
pub struct Ids {
    devices: FastMap<DeviceId, i64>,
    metrics: FastMap<Arc<str>, i64>,
}

impl Ids {
    /// Forgets every cached id (after a rolled-back transaction some may not exist).
    pub fn clear(&mut self) {
        self.devices.clear();
        self.metrics.clear();
    }

    /// The id of device `name`, which the registry must already hold.
    ///
    /// # Errors
    /// The device is not in the registry, or the query failed.
    pub fn device(&mut self, tx: &Transaction<'_>, name: &DeviceId) -> Result<i64, StoreError> {
        if let Some(id) = self.devices.get(&**name) {
            return Ok(*id);
        }
        let id = tx
            .prepare_cached("SELECT id FROM devices WHERE name = ?1")?
            .query_row([&**name], |row| row.get(0))
            .map_err(|_| StoreError::UnknownDevice(name.to_string()))?;
        self.devices.insert(name.clone(), id);
        Ok(id)
    }

    /// The id of metric `name`, creating it when new.
    ///
    /// # Errors
    /// The query failed.
    pub fn metric(&mut self, tx: &Transaction<'_>, name: &Arc<str>) -> Result<i64, StoreError> {
        if let Some(id) = self.metrics.get(&**name) {
            return Ok(*id);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO metrics (name) VALUES (?1)")?
            .execute([&**name])?;
        let id = tx
            .prepare_cached("SELECT id FROM metrics WHERE name = ?1")?
            .query_row([&**name], |row| row.get(0))?;
        self.metrics.insert(name.clone(), id);
        Ok(id)
    }
}

/// Inserts or updates one device's row (first_seen keeps its earliest value).
///
/// # Errors
/// The statement failed.
pub fn upsert(tx: &Transaction<'_>, entry: &RegistryEntry) -> Result<(), StoreError> {
    let state = &entry.state;
    let metrics_seen: Vec<&str> = state.metrics.keys().map(|name| &**name).collect();
    tx.prepare_cached(
        "INSERT INTO devices (name, group_path, first_seen, last_seen, metrics_seen, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET group_path = excluded.group_path,
             first_seen = min(first_seen, excluded.first_seen),
             last_seen = max(last_seen, excluded.last_seen),
             metrics_seen = excluded.metrics_seen, state = excluded.state",
    )?
    .execute(params![
        &*state.id,
        &*state.group,
        entry.first_seen,
        entry.last_seen,
        serde_json::to_string(&metrics_seen)?,
        serde_json::to_string(state)?,
    ])?;
    Ok(())
}
