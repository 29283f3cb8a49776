//! Broker settings: the listeners, device authentication, and the limits that protect the
//! process.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::embedded::BrokerError;

/// How the embedded broker listens and what it allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address of the MQTT 3.1.1 listener; port 0 picks a free port.
    pub mqtt_listen: SocketAddr,
    /// Address of an MQTT 5 listener, if any.
    pub mqtt5_listen: Option<SocketAddr>,
    /// Address of an MQTT 3.1.1 over WebSocket listener, if any (rumqttd has no MQTT 5 over
    /// WebSocket).
    pub ws_listen: Option<SocketAddr>,
    /// An MQTT 3.1.1 over TLS listener, if any.
    pub tls: Option<TlsListenerConfig>,
    /// Let devices connect without credentials. When false, every device needs an entry in
    /// the credential registry (`iotmon devices add`).
    pub allow_anonymous: bool,
    /// The device credential registry; by default `devices.credentials` in the data
    /// directory.
    pub credentials_file: Option<PathBuf>,
    /// Connections the broker accepts at once; more are refused.
    pub max_connections: usize,
    /// Largest MQTT packet a client may send, in bytes.
    pub max_packet_size: usize,
    /// Size of one segment of the router's in-memory log per subscription filter. The router
    /// keeps at most `segment_count` segments per filter, so this bounds broker memory and
    /// sets how far a slow subscriber may lag before it skips messages. A message counts its
    /// topic, payload and properties plus 288 bytes of the router's bookkeeping (rumqttd
    /// patch 39), so the bound is the memory the log holds.
    pub segment_size: usize,
    /// Segments kept per subscription filter (see `segment_size`); at least 2.
    pub segment_count: usize,
    /// Client ids of MQTT subscribers that must never skip a message, such as an archiver.
    /// When one falls so far behind that the log would drop messages it has not read, the
    /// broker stops reading from publishers until it catches up (TCP slows them down). A
    /// listed client that stops reading stops every publisher: list only trusted clients.
    /// The bridge inside `iotmon serve` is always treated this way.
    pub lossless_subscribers: Vec<String>,
    /// Most sessions kept for disconnected clients that asked for a persistent session
    /// (MQTT 3.1.1 clean session 0, or an MQTT 5 session expiry). Past it the oldest is
    /// dropped (counted in `iotmon_broker_sessions_dropped_total`), so clients connecting
    /// with ever-new ids cannot grow the broker without bound. An MQTT 5 session past its
    /// expiry is dropped too.
    pub max_saved_sessions: usize,
}

/// An MQTT over TLS listener: where it listens and its certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Address of the listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM file with the server certificate chain.
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            mqtt5_listen: None,
            ws_listen: None,
            tls: None,
            allow_anonymous: false,
            credentials_file: None,
            max_connections: 20_000,
            max_packet_size: 16 * 1024,
            segment_size: 16 * 1024 * 1024,
            segment_count: 4,
            lossless_subscribers: Vec::new(),
            max_saved_sessions: 100_000,
        }
    }
}

/// The largest `max_connections` accepted (50 times the default; one process here holds at
/// most about 20,000 sockets anyway).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

impl BrokerConfig {
    /// Checks what serde cannot: limits rumqttd cannot work with (zero connections, zero-sized
    /// segments, a single segment) and TLS files that do not exist. [`EmbeddedBroker::start`]
    /// calls it; public so a whole configuration file can be checked before anything starts.
    ///
    /// [`EmbeddedBroker::start`]: crate::EmbeddedBroker::start
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let limits = [
            ("max_connections", self.max_connections),
            ("max_packet_size", self.max_packet_size),
            ("segment_size", self.segment_size),
            ("segment_count", self.segment_count),
            ("max_saved_sessions", self.max_saved_sessions),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, value)| *value == 0) {
            return Err(BrokerError::ZeroLimit(name));
        }
        // rumqttd allocates a slot per allowed connection up front: an absurd limit would
        // take the memory at start instead of refusing.
        if self.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(BrokerError::TooLarge {
                name: "max_connections",
                max: MAX_CONNECTIONS_LIMIT,
                got: self.max_connections,
            });
        }
        // With one segment, opening the next drops the only one: a lossless subscriber could
        // not be kept from losing what it has not read.
        if self.segment_count < 2 {
            return Err(BrokerError::OneSegment);
        }
        if let Some(tls) = &self.tls {
            for (what, path) in [("certificate", &tls.cert), ("key", &tls.key)] {
                if !path.exists() {
                    return Err(BrokerError::TlsFile {
                        what,
                        path: path.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
