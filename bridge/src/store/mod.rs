//! The embedded store: SQLite (bundled, WAL) under the data directory, written on a thread of
//! its own. See `docs/storage.md` for the schema, the tiers and the guarantees.
//!
//! - [`schema`]: tables and pragmas.
//! - [`writer`]: the store thread (batched transactions, tier cascade, retention, export to
//!   the InfluxDB outbox).
//! - [`recent`]: the newest rollup rows, ordered by time for cheap writes, and their merge
//!   into the series-ordered table every few minutes.
//! - [`history`]: reading a device's history for charts, downsampled with min and max kept.
//! - [`registry`]: the device registry, reloaded at start.
//! - [`source`]: the store as a dashboard's [`iotmon_wire::history::HistorySource`].

pub mod history;
pub mod recent;
pub mod registry;
pub mod schema;
pub mod source;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use thiserror::Error;
use tracing::warn;

use crate::config::BridgeConfig;
use crate::counters::BridgeCounters;
use crate::shard::{RegistryEntry, StoreBatch};

pub use history::HistoryReader;
pub use source::StoreHistory;

/// The store's file name inside the data directory.
pub const DB_FILE: &str = "iotmon.db";

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    #[error("a stored device state is unreadable: {0}")]
    State(#[from] serde_json::Error),
    #[error("no device {0:?} in the store")]
    UnknownDevice(String),
}

/// The path of the store's database under `data_dir`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// A batch on its way to the store thread, with the time it was queued (for the store's lag).
type Queued = (Instant, StoreBatch);

/// A sending end into the store thread, cloned into every shard.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    to_store: SyncSender<Queued>,
    counters: Arc<BridgeCounters>,
}

impl StoreHandle {
    /// Queues `batch` for the store without waiting. Policy when the queue is full: the batch
    /// is dropped and counted (`iotmon_store_batches_dropped_total`), so ingest never waits
    /// for the disk.
    pub fn send(&self, batch: StoreBatch) {
        if batch.is_empty() {
            return;
        }
        match self.to_store.try_send((Instant::now(), batch)) {
            Ok(()) => {
                self.counters
                    .store_queued_batches
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters
                    .store_batches_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The store thread, joined at shutdown once every [`StoreHandle`] is dropped.
#[derive(Debug)]
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    /// Waits for the store thread to write what it has queued and stop.
    pub fn join(self) {
        if self.0.join().is_err() {
            warn!("the store thread panicked");
        }
    }
}

/// An opened store: the handle for the shards, the devices to restore, the thread.
#[derive(Debug)]
pub struct OpenStore {
    /// The database file.
    pub path: PathBuf,
    pub handle: StoreHandle,
    pub restored: Vec<RegistryEntry>,
    pub writer: WriterThread,
}

/// Opens (creating if needed) the store under `data_dir`, reads the device registry and
/// starts the store thread.
///
/// # Errors
/// The database cannot be opened or created, or the thread cannot start.
pub fn open(
    data_dir: &Path,
    config: &BridgeConfig,
    counters: Arc<BridgeCounters>,
    now_ms: i64,
) -> Result<OpenStore, StoreError> {
    let path = db_path(data_dir);
    let connection = schema::open(&path)?;
    let restored = registry::load(&connection)?;
    let writer = writer::Writer::new(connection, config, counters.clone(), now_ms)?;
    let (to_store, from_shards) = mpsc::sync_channel(config.store.queue.max(1));
    let thread = std::thread::Builder::new()
        .name("iotmon-store".into())
        .spawn(move || writer.run(&from_shards))
        .map_err(StoreError::Thread)?;
    Ok(OpenStore {
        path,
        handle: StoreHandle { to_store, counters },
        restored,
        writer: WriterThread(thread),
    })
}
