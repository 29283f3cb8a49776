//! Dashboard settings, with iotmon's defaults in one place.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the dashboard listens and what each viewer may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Address of the HTTP server (web UI, REST API, WebSocket); port 0 picks a free port.
    pub http_listen: SocketAddr,
    /// How often changed devices are pushed to each viewer, batched.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Most devices one viewer may have in its view.
    pub max_view_devices: usize,
    /// Most group aggregates one viewer may subscribe to at once.
    pub max_view_groups: usize,
    /// Frames queued for one viewer before the server coalesces instead of queueing more.
    pub viewer_queue: usize,
    /// Largest message a viewer may send, in bytes; a larger one closes the connection.
    pub max_message_bytes: usize,
    /// Viewers connected at once; more are refused with 503.
    pub max_viewers: usize,
    /// Messages per second a viewer may send on average (bursts of twice as many pass);
    /// a viewer flooding beyond that is disconnected.
    pub max_messages_per_second: u32,
    /// View or group changes per second a viewer may make on average (bursts of twice as
    /// many pass); faster changes are refused with an `error` and the session goes on.
    pub max_view_changes_per_second: u32,
    /// How often the server pings each viewer.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A viewer silent this long (not even answering pings) is disconnected.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A viewer whose connection accepts nothing for this long is disconnected; until then,
    /// it receives coalesced state and a fresh snapshot when it catches up.
    #[serde(with = "humantime_serde")]
    pub stall_limit: Duration,
    /// When set, `/api/*` and `/ws` require this token, as `Authorization: Bearer TOKEN` or a
    /// `token` query parameter (browsers cannot set headers on a WebSocket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A dashboard setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dashboard.{0} must be greater than zero")]
pub struct ConfigError(pub &'static str);

impl DashboardConfig {
    /// Checks what serde cannot: every interval, queue and limit is non-zero (a zero tick or
    /// heartbeat would make tokio panic; a zero queue could never carry a frame).
    ///
    /// # Errors
    /// The first setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("tick", self.tick),
            ("heartbeat", self.heartbeat),
            ("idle_timeout", self.idle_timeout),
            ("stall_limit", self.stall_limit),
        ] {
            if value.is_zero() {
                return Err(ConfigError(key));
            }
        }
        for (key, value) in [
            ("viewer_queue", self.viewer_queue),
            ("max_viewers", self.max_viewers),
            ("max_view_devices", self.max_view_devices),
            ("max_view_groups", self.max_view_groups),
            ("max_message_bytes", self.max_message_bytes),
            (
                "max_messages_per_second",
                self.max_messages_per_second as usize,
            ),
            (
                "max_view_changes_per_second",
                self.max_view_changes_per_second as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError(key));
            }
        }
        Ok(())
    }
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tick: Duration::from_millis(100),
            max_view_devices: 1000,
            max_view_groups: 100,
            viewer_queue: 16,
            max_message_bytes: 64 * 1024,
            max_viewers: 20_000,
            max_messages_per_second: 20,
            max_view_changes_per_second: 5,
            heartbeat: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            stall_limit: Duration::from_secs(10),
            token: None,
        }
    }
}
