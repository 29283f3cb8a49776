//! The InfluxDB sink: closed rollup windows, exported by the store thread into a durable
//! outbox table (in the same SQLite file), are sent in order by [`run_sender`] through the
//! `influxdb2` crate's v2 write API.
//!
//! Delivery: an outbox entry is deleted only after the server answered 204, so while the
//! server is unreachable entries wait on disk and are replayed oldest first when it returns;
//! across an outage every point arrives exactly once. If the process dies between the 204 and
//! the delete, that one entry is sent again after the restart (at least once). The outbox is
//! bounded (`bridge.influx.max_outbox_bytes`, default 1 GiB): beyond it the oldest entries are
//! dropped and counted (`iotmon_influx_points_dropped_total`).
//!
//! - [`line`]: the mapping to line protocol (measurement, tags, fields).

pub mod line;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use influxdb2::api::write::TimestampPrecision;
use iotmon_wire::mqtt::Backoff;
use rusqlite::{params, Connection, OptionalExtension};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::InfluxConfig;
use crate::counters::BridgeCounters;
use crate::store::{schema, StoreError};

/// How often an empty outbox is looked at again.
const POLL: Duration = Duration::from_millis(500);
/// Longest one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two logged write failures.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// One outbox entry: a batch of lines, written in one request.
#[derive(Debug)]
struct Entry {
    seq: i64,
    lines: String,
    points: i64,
}

/// The outbox, read and trimmed from async code through `spawn_blocking`.
#[derive(Debug, Clone)]
struct Outbox(Arc<Mutex<Connection>>);

impl Outbox {
    async fn oldest(&self) -> Result<Option<Entry>, StoreError> {
        self.blocking(|connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT seq, lines, points FROM influx_outbox ORDER BY seq LIMIT 1",
                )?
                .query_row([], |row| {
                    Ok(Entry {
                        seq: row.get(0)?,
                        lines: row.get(1)?,
                        points: row.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn remove(&self, seq: i64) -> Result<(), StoreError> {
        self.blocking(move |connection| {
            connection.execute("DELETE FROM influx_outbox WHERE seq = ?1", params![seq])?;
            Ok(())
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let connection = connection
                .lock()
                .map_err(|_| StoreError::Sqlite(rusqlite::Error::InvalidQuery))?;
            work(&connection)
        })
        .await
        .map_err(|_| StoreError::Sqlite(rusqlite::Error::InvalidQuery))?
    }
}

/// Sends the outbox at `db_path` to the server in `config`, oldest entry first, until
/// `shutdown`; retries a failed write with exponential backoff and jitter.
///
/// # Errors
/// The outbox cannot be opened, or the client cannot be built.
pub async fn run_sender(
    config: InfluxConfig,
    db_path: PathBuf,
    counters: Arc<BridgeCounters>,
    shutdown: CancellationToken,
) -> Result<(), InfluxError> {
    let connection = tokio::task::spawn_blocking(move || schema::open(&db_path))
        .await
        .map_err(|_| InfluxError::Outbox(StoreError::Sqlite(rusqlite::Error::InvalidQuery)))?
        .map_err(|error| InfluxError::Outbox(error.into()))?;
    let outbox = Outbox(Arc::new(Mutex::new(connection)));
    let client = influxdb2::ClientBuilder::new(&config.url, &config.org, &config.token)
        .build()
        .map_err(InfluxError::Client)?;
    info!(
        url = config.url,
        bucket = config.bucket,
        "InfluxDB sink running"
    );
    let mut backoff = Backoff::new();
    let mut last_error_log: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let pause = match outbox.oldest().await {
            Ok(Some(entry)) => {
                let sent = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    client.write_line_protocol_with_precision(
                        &config.org,
                        &config.bucket,
                        entry.lines,
                        TimestampPrecision::Milliseconds,
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {
                        backoff.reset();
                        counters
                            .influx_points_written
                            .fetch_add(entry.points.unsigned_abs(), Ordering::Relaxed);
                        match outbox.remove(entry.seq).await {
                            Ok(()) => None,
                            Err(error) => {
                                Some(log_failure(&mut last_error_log, &error.to_string(), POLL))
                            }
                        }
                    }
                    Ok(Err(error)) => {
                        counters.influx_write_errors.fetch_add(1, Ordering::Relaxed);
                        Some(log_failure(
                            &mut last_error_log,
                            &error.to_string(),
                            backoff.next_delay(),
                        ))
                    }
                    Err(_) => {
                        counters.influx_write_errors.fetch_add(1, Ordering::Relaxed);
                        Some(log_failure(
                            &mut last_error_log,
                            "write timed out",
                            backoff.next_delay(),
                        ))
                    }
                }
            }
            Ok(None) => Some(POLL),
            Err(error) => Some(log_failure(&mut last_error_log, &error.to_string(), POLL)),
        };
        if let Some(pause) = pause {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
    Ok(())
}

/// Logs a failure at most once per [`ERROR_LOG_EVERY`]; returns `retry_in` for chaining.
fn log_failure(last: &mut Option<Instant>, error: &str, retry_in: Duration) -> Duration {
    if last.is_none_or(|at| at.elapsed() >= ERROR_LOG_EVERY) {
        *last = Some(Instant::now());
        warn!(
            error,
            ?retry_in,
            "InfluxDB write failed; points stay in the outbox"
        );
    }
    retry_in
}

/// Why the InfluxDB sink cannot run.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    #[error("cannot open the InfluxDB outbox: {0}")]
    Outbox(#[source] StoreError),
    #[error("cannot build the InfluxDB client: {0}")]
    Client(#[source] influxdb2::BuildError),
}
