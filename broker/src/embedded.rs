//! Starting rumqttd inside the iotmon process.
//!
//! We assemble rumqttd's parts ourselves instead of calling `Broker::start`, which blocks a
//! thread per listener and cannot report the port it bound: the router runs on its own OS
//! thread (rumqttd's design), and each listener runs as a task on iotmon's runtime.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::task::Poll;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::BrokerConfig;

/// Opens an in-process link to the router. rumqttd's router sender has a type we cannot
/// name (its event enum is private), so the sender lives inside these two closures.
type LinkFactory = Box<dyn Fn(&str) -> Result<(LinkTx, LinkRx), BrokerError> + Send + Sync>;
/// Builds an MQTT 3.1.1 server attached to the router.
type ServerFactory = Box<dyn Fn(ServerSettings) -> Server<V4> + Send + Sync>;

/// Why the broker could not start or serve a request.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// Boxed: rumqttd's link error is several hundred bytes.
    #[error("in-process link to the broker failed: {0}")]
    Link(Box<LinkError>),
    #[error("broker setting {0} must be greater than zero")]
    ZeroLimit(&'static str),
}

impl From<LinkError> for BrokerError {
    fn from(error: LinkError) -> Self {
        BrokerError::Link(Box::new(error))
    }
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    /// How the broker was configured (kept to build listeners).
    config: BrokerConfig,
    /// Creates in-process links to the router thread.
    new_link: LinkFactory,
    /// Creates listeners attached to the router thread.
    new_server: ServerFactory,
    /// The address the MQTT listener actually bound (the real port when 0 was asked).
    mqtt_addr: Option<SocketAddr>,
    /// The listener's accept loop; aborted on drop because rumqttd has no shutdown API.
    listener: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts the router. No listener is open yet: call [`EmbeddedBroker::listen`] once the
    /// in-process subscribers are in place, so no early reading is published into a void.
    ///
    /// # Errors
    /// A limit that rumqttd cannot work with (zero connections, zero-sized segments).
    pub fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        validate(&config)?;
        let router = Router::new(0, router_config(&config));
        let router_tx = router.spawn();
        let link_router = router_tx.clone();
        let new_link: LinkFactory = Box::new(move |client_id| {
            let (link_tx, link_rx, _connack) = LinkBuilder::new(client_id, link_router.clone())
                .clean_session(true)
                .build()?;
            Ok((link_tx, link_rx))
        });
        let new_server: ServerFactory =
            Box::new(move |settings| Server::new(settings, router_tx.clone(), V4));
        Ok(EmbeddedBroker {
            config,
            new_link,
            new_server,
            mqtt_addr: None,
            listener: None,
        })
    }

    /// Opens the MQTT 3.1.1 listener on `config.mqtt_listen` and returns the bound address.
    /// Must be called from within the tokio runtime that will serve the connections.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local, no permission).
    pub fn listen(&mut self) -> Result<SocketAddr, BrokerError> {
        let wanted = self.config.mqtt_listen;
        // rumqttd binds the address itself and cannot report a kernel-chosen port, so for port
        // 0 we ask the kernel for a free port first. Another process could take it in between;
        // rumqttd's bind then fails at once and we try another.
        let attempts = if wanted.port() == 0 { 8 } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            let addr = match pick_port(wanted) {
                Ok(addr) => addr,
                Err(source) => {
                    return Err(BrokerError::Listen {
                        addr: wanted,
                        source,
                    })
                }
            };
            match self.spawn_listener(addr) {
                Ok(handle) => {
                    self.listener = Some(handle);
                    self.mqtt_addr = Some(addr);
                    return Ok(addr);
                }
                Err(source) => last_error = Some(BrokerError::Listen { addr, source }),
            }
        }
        Err(last_error.unwrap_or(BrokerError::Listen {
            addr: wanted,
            source: io::Error::from(io::ErrorKind::AddrInUse),
        }))
    }

    /// The bound MQTT address, once [`EmbeddedBroker::listen`] succeeded.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// Opens an in-process client link to the router: no socket, no MQTT encoding. Blocks
    /// briefly while the router registers it, so call it outside the async workers.
    ///
    /// # Errors
    /// The router refused the link (connection limit) or has stopped.
    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
        (self.new_link)(client_id)
    }

    /// Binds `addr` through rumqttd's server and starts its accept loop as a task. The first
    /// poll of rumqttd's `Server::start` binds synchronously, so polling it once tells us at
    /// once whether the bind worked.
    fn spawn_listener(&self, addr: SocketAddr) -> io::Result<JoinHandle<()>> {
        let settings = server_settings(&self.config, addr);
        let mut server = (self.new_server)(settings);
        let mut accept_loop: Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(async move { server.start(LinkType::Remote).await });
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match accept_loop.as_mut().poll(&mut context) {
            Poll::Ready(Err(error)) => Err(io::Error::other(error.to_string())),
            Poll::Ready(Ok(())) => Err(io::Error::other("listener ended at once")),
            Poll::Pending => Ok(tokio::spawn(async move {
                if let Err(error) = accept_loop.await {
                    warn!(%error, "MQTT listener stopped");
                }
            })),
        }
    }
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("config", &self.config)
            .field("mqtt_addr", &self.mqtt_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

/// For port 0, a free port chosen by the kernel; otherwise `wanted` itself.
fn pick_port(wanted: SocketAddr) -> io::Result<SocketAddr> {
    if wanted.port() != 0 {
        return Ok(wanted);
    }
    StdTcpListener::bind(wanted)?.local_addr()
}

fn validate(config: &BrokerConfig) -> Result<(), BrokerError> {
    let limits = [
        ("max_connections", config.max_connections),
        ("max_packet_size", config.max_packet_size),
        ("segment_size", config.segment_size),
        ("segment_count", config.segment_count),
    ];
    match limits.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(BrokerError::ZeroLimit(name)),
        None => Ok(()),
    }
}

/// Every router field set explicitly: rumqttd's defaults refuse all clients (zero
/// connections) and panic on small segments.
fn router_config(config: &BrokerConfig) -> RouterConfig {
    RouterConfig {
        max_connections: config.max_connections,
        max_outgoing_packet_count: 200,
        // rumqttd panics below 1 KiB segments.
        max_segment_size: config.segment_size.max(1024),
        max_segment_count: config.segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

fn server_settings(config: &BrokerConfig, listen: SocketAddr) -> ServerSettings {
    ServerSettings {
        name: format!("mqtt-{listen}"),
        listen,
        tls: None,
        // rumqttd sleeps this long after every accept; 0 keeps accepts unthrottled.
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            // A client that opens a socket but never sends CONNECT is dropped after this.
            connection_timeout_ms: 5_000,
            max_payload_size: config.max_packet_size,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            // A publish to a topic nobody subscribes to must not create a filter: that would
            // grow router memory with every distinct device topic.
            dynamic_filters: false,
        },
    }
}
