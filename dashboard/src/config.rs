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
    /// Frames queued for one viewer before the server coalesces instead of queueing more.
    pub viewer_queue: usize,
    /// Largest message a viewer may send, in bytes.
    pub max_message_bytes: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tick: Duration::from_millis(100),
            max_view_devices: 1000,
            viewer_queue: 16,
            max_message_bytes: 64 * 1024,
        }
    }
}
