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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::metrics::Registry;
use iotmon_wire::LiveUpdate;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
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

/// Connections the kernel queues before the server accepts them (a burst of viewers
/// reconnecting after a restart); as many as `TcpListener::bind` allows.
const LISTEN_BACKLOG: u32 = 1024;

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
    listen(config).map_err(|source| DashboardError::Listen {
        addr: config.http_listen,
        source,
    })
}

/// The HTTP listener. Set on the listening socket, the send buffer size is inherited by
/// every connection it accepts.
fn listen(config: &DashboardConfig) -> io::Result<TcpListener> {
    let socket = match config.http_listen {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted dashboard rebinds its port at once.
    socket.set_reuseaddr(true)?;
    if config.send_buffer_bytes > 0 {
        let size = u32::try_from(config.send_buffer_bytes).map_err(io::Error::other)?;
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(config.http_listen)?;
    socket.listen(LISTEN_BACKLOG)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The send buffer of an accepted connection, as the kernel reports it.
    async fn accepted_send_buffer(config: &DashboardConfig) -> u32 {
        let listener = bind(config).await.expect("bound");
        let addr = listener.local_addr().expect("an address");
        let _client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connected");
        let (accepted, _) = listener.accept().await.expect("accepted");
        let accepted = TcpSocket::from_std_stream(accepted.into_std().expect("a std socket"));
        accepted.send_buffer_size().expect("SO_SNDBUF")
    }

    #[tokio::test]
    async fn accepted_connections_get_the_configured_send_buffer() {
        let config = DashboardConfig {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            send_buffer_bytes: 96 * 1024,
            ..DashboardConfig::default()
        };
        // Linux reports twice what was set (the other half is its bookkeeping).
        assert_eq!(accepted_send_buffer(&config).await, 2 * 96 * 1024);
        let autotuned = DashboardConfig {
            send_buffer_bytes: 0,
            ..config
        };
        assert_ne!(accepted_send_buffer(&autotuned).await, 2 * 96 * 1024);
    }
}
