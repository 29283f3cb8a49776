//! The dashboard server: pushes each browser viewer only the devices on its screen.
//!
//! - [`config`]: settings and defaults.
//! - [`hub`]: the latest state of every device and every viewer's view; builds the frames.
//! - [`session`]: one viewer's session, and the limits enforced on it ([`rate`]).
//! - [`websocket`]: the viewers' WebSocket: the upgrade, and large messages sent as fragments.
//! - [`alerts`]: operators' alert commands, alert history and rules for the REST API.
//! - [`api`]: HTTP routes (web UI, REST, `/ws`, `/healthz`, `/metrics`).
//! - [`source`]: device states from MQTT when the dashboard runs apart from the bridge.
//! - [`remote_history`]: history asked of partitioned bridges over MQTT.

pub mod alerts;
pub mod api;
pub mod config;
pub mod hub;
pub mod rate;
pub mod remote_history;
pub mod session;
pub mod source;
pub mod websocket;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::metrics::Registry;
use iotmon_wire::LiveUpdate;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::DashboardConfig;

/// Capacity of the channel of derived batches into the dashboard. When full, the bridge
/// coalesces (in-process) or the MQTT reader waits (split roles).
pub const LIVE_UPDATE_CAPACITY: usize = 8;

/// How long shutdown waits for viewer sessions to say goodbye.
const SESSIONS_GRACE: Duration = Duration::from_secs(2);

/// Longest the HTTP listener waits at start for the bridge's open alerts (see
/// [`alerts::AlertAccess::open_alerts_first`]); they normally come within milliseconds. Past
/// it the dashboard answers with what it has, as it would without a bridge.
const OPEN_ALERTS_WAIT: Duration = Duration::from_secs(5);

/// Why the dashboard stopped with an error.
#[derive(Debug, Error)]
pub enum DashboardError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(io::Error),
    #[error("invalid dashboard settings: {0}")]
    Config(#[from] config::ConfigError),
}

/// Checks the settings and binds the HTTP listener; separate from [`run`] so the caller can
/// print the bound address.
///
/// # Errors
/// Settings the dashboard cannot run with, or the address cannot be bound.
pub async fn bind(config: &DashboardConfig) -> Result<TcpListener, DashboardError> {
    config.validate()?;
    TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| DashboardError::Listen {
            addr: config.http_listen,
            source,
        })
}

/// Serves the dashboard on `listener` from the `updates` stream until `shutdown`; then tells
/// every viewer to reconnect and returns.
///
/// # Errors
/// The HTTP server failed.
pub async fn run(
    config: DashboardConfig,
    listener: TcpListener,
    updates: mpsc::Receiver<LiveUpdate>,
    mut metrics: Registry,
    history: Option<Arc<dyn iotmon_wire::history::HistorySource>>,
    alerts: alerts::AlertAccess,
    shutdown: CancellationToken,
) -> Result<(), DashboardError> {
    let (hub, hub_task) = hub::create(
        config.tick,
        config.viewer_queue_bytes,
        updates,
        shutdown.clone(),
    );
    metrics.register_collector(Box::new(hub.stats.clone()));
    let hub_task = tokio::spawn(iotmon_wire::supervise::critical(
        "the dashboard hub",
        hub_task,
    ));
    if alerts.open_alerts_first {
        await_open_alerts(&hub, &shutdown).await;
    }
    let sessions = TaskTracker::new();
    let state = api::AppState {
        hub,
        limits: session::SessionLimits::from(&config),
        max_message_bytes: config.max_message_bytes,
        viewer_slots: Arc::new(tokio::sync::Semaphore::new(config.max_viewers)),
        token: config.token.as_deref().map(Arc::from),
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
        metrics: Arc::new(metrics),
        history,
        alerts,
    };
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    sessions.close();
    let _ = tokio::time::timeout(SESSIONS_GRACE, sessions.wait()).await;
    let _ = hub_task.await;
    served.map_err(DashboardError::Serve)
}

/// Waits until the hub holds the open alerts the bridge sent first, for at most
/// [`OPEN_ALERTS_WAIT`] or until `shutdown`. Connections that arrive meanwhile wait in the
/// listener's backlog.
async fn await_open_alerts(hub: &hub::HubHandle, shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        received = tokio::time::timeout(OPEN_ALERTS_WAIT, hub.alerts_received()) => {
            if received.is_err() {
                tracing::warn!(
                    waited = ?OPEN_ALERTS_WAIT,
                    "no open alerts from the bridge yet; answering without them"
                );
            }
        }
    }
}
