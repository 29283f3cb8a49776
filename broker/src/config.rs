//! Broker settings: the listener address and the limits that protect the process.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How the embedded broker listens and what it allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address of the MQTT 3.1.1 listener; port 0 picks a free port.
    pub mqtt_listen: SocketAddr,
    /// Let devices connect without credentials. Device credentials arrive with the broker's
    /// authentication work; until then this is the only mode and `false` is reported at start.
    pub allow_anonymous: bool,
    /// Connections the broker accepts at once; more are refused.
    pub max_connections: usize,
    /// Largest MQTT packet a client may send, in bytes.
    pub max_packet_size: usize,
    /// Size of one segment of the router's in-memory log per subscription filter. The router
    /// keeps at most `segment_count + 1` segments per filter, so this bounds broker memory
    /// and sets how far a slow subscriber may lag before it skips messages.
    pub segment_size: usize,
    /// Segments kept per subscription filter (see `segment_size`).
    pub segment_count: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            allow_anonymous: false,
            max_connections: 20_000,
            max_packet_size: 16 * 1024,
            segment_size: 16 * 1024 * 1024,
            segment_count: 4,
        }
    }
}
