//! Dashboard settings, with iotmon's defaults in one place.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

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
    /// Bytes of serialized frames queued for one viewer (those waiting and the one being
    /// written) before the server coalesces instead of queueing more. A frame always joins an
    /// empty queue, so one larger frame (a snapshot of a large view) still goes out; the queue
    /// then holds at most the larger of this budget and that one frame. Small by default: a
    /// viewer's socket already buffers `send_buffer_bytes` (twice that, in the kernel), and
    /// what this holds is paid in the server's memory by every viewer that stops reading.
    pub viewer_queue_bytes: usize,
    /// The kernel's send buffer of each HTTP and WebSocket connection (`SO_SNDBUF`), in
    /// bytes; Linux doubles it for its own bookkeeping and caps it at `net.core.wmem_max`.
    /// It bounds what a viewer that stops reading holds in the kernel: autotuned, each such
    /// socket grows towards `net.ipv4.tcp_wmem`'s maximum (4 MiB), and a thousand of them
    /// reach the kernel's TCP memory limit, which every connection on the machine then
    /// suffers. 0 leaves the size to the kernel's autotuning.
    pub send_buffer_bytes: usize,
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

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tick: Duration::from_millis(100),
            max_view_devices: 1000,
            max_view_groups: 100,
            viewer_queue: 16,
            viewer_queue_bytes: 16 * 1024,
            send_buffer_bytes: 128 * 1024,
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

/// Why dashboard settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("dashboard.{0} must be greater than zero")]
    Zero(&'static str),
    #[error("dashboard.{name} must be at most {max} (got {got})")]
    TooLarge {
        name: &'static str,
        max: usize,
        got: usize,
    },
}

impl DashboardConfig {
    /// Checks what serde cannot: the values the dashboard cannot start with (a zero period,
    /// queue or limit; a viewer queue or viewer slots beyond what a tokio channel or
    /// semaphore holds), which would otherwise panic or refuse everything once it runs.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("tick", self.tick),
            ("heartbeat", self.heartbeat),
            ("idle_timeout", self.idle_timeout),
            ("stall_limit", self.stall_limit),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("viewer_queue", self.viewer_queue),
            ("viewer_queue_bytes", self.viewer_queue_bytes),
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
                return Err(ConfigError::Zero(name));
            }
        }
        // Both become tokio semaphores (a bounded channel is one), which panic beyond this.
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        for (name, got) in [
            ("viewer_queue", self.viewer_queue),
            ("max_viewers", self.max_viewers),
        ] {
            if got > max {
                return Err(ConfigError::TooLarge { name, max, got });
            }
        }
        // The kernel takes an int.
        let max = i32::MAX as usize;
        if self.send_buffer_bytes > max {
            let (name, got) = ("send_buffer_bytes", self.send_buffer_bytes);
            return Err(ConfigError::TooLarge { name, max, got });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_the_dashboard_cannot_start_with_are_refused() {
        assert_eq!(DashboardConfig::default().validate(), Ok(()));
        let zero_tick = DashboardConfig {
            tick: Duration::ZERO,
            ..DashboardConfig::default()
        };
        assert_eq!(zero_tick.validate(), Err(ConfigError::Zero("tick")));
        let zero_heartbeat = DashboardConfig {
            heartbeat: Duration::ZERO,
            ..DashboardConfig::default()
        };
        assert_eq!(
            zero_heartbeat.validate(),
            Err(ConfigError::Zero("heartbeat"))
        );
        let no_queue = DashboardConfig {
            viewer_queue: 0,
            ..DashboardConfig::default()
        };
        assert_eq!(no_queue.validate(), Err(ConfigError::Zero("viewer_queue")));
        let too_many = DashboardConfig {
            max_viewers: usize::MAX,
            ..DashboardConfig::default()
        };
        assert!(matches!(
            too_many.validate(),
            Err(ConfigError::TooLarge {
                name: "max_viewers",
                ..
            })
        ));
        let huge_buffer = DashboardConfig {
            send_buffer_bytes: usize::MAX,
            ..DashboardConfig::default()
        };
        assert!(matches!(
            huge_buffer.validate(),
            Err(ConfigError::TooLarge {
                name: "send_buffer_bytes",
                ..
            })
        ));
        let huge_queue = DashboardConfig {
            viewer_queue: usize::MAX,
            ..DashboardConfig::default()
        };
        assert!(matches!(
            huge_queue.validate(),
            Err(ConfigError::TooLarge {
                name: "viewer_queue",
                ..
            })
        ));
    }
}
