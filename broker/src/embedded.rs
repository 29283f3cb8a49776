//! Starting rumqttd inside the iotmon process.
//!
//! We assemble rumqttd's parts ourselves instead of calling `Broker::start`, which blocks a
//! thread per listener and cannot report the port it bound: the router runs on its own OS
//! thread (rumqttd's design), and each listener runs as a task on iotmon's runtime.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use rumqttd::alerts::AlertsLink;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::meters::MetersLink;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::Protocol;
use rumqttd::{
    ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings, TlsConfig,
};
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::auth::{DeviceAuth, Verdict};
use crate::config::BrokerConfig;
use crate::metrics::{poll_router, BrokerMetrics};
use iotmon_wire::supervise::critical;

/// Opens an in-process link to the router. rumqttd's router sender has a type we cannot
/// name (its event enum is private), so the sender lives inside these closures.
type LinkFactory = Box<dyn Fn(&str) -> Result<(LinkTx, LinkRx), BrokerError> + Send + Sync>;
/// A listener's accept loop, as rumqttd's `Server::start` returns it.
type AcceptLoop = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// Builds a listener of one kind attached to the router.
type ServerFactory = Box<dyn Fn(ServerSettings, ListenerKind) -> AcceptLoop + Send + Sync>;
/// Starts the task that polls the router's meters and alerts into [`BrokerMetrics`].
type MeterPoller = Box<dyn FnOnce(CancellationToken) -> Result<JoinHandle<()>, BrokerError> + Send>;

/// Why the broker could not start or serve a request.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("cannot listen for {kind} on {addr}: {source}")]
    Listen {
        kind: ListenerKind,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Boxed: rumqttd's link error is several hundred bytes.
    #[error("in-process link to the broker failed: {0}")]
    Link(Box<LinkError>),
    #[error("cannot read the broker's meters: {0}")]
    Meters(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("broker.{name} must be at most {max} (got {got})")]
    TooLarge {
        name: &'static str,
        max: usize,
        got: usize,
    },
    #[error("broker setting {0} must be greater than zero")]
    ZeroLimit(&'static str),
    #[error("broker setting segment_count must be at least 2")]
    OneSegment,
    #[error("TLS {what} file {path} does not exist")]
    TlsFile { what: &'static str, path: PathBuf },
    #[error("device credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    #[error("device credentials file {path}: {source}")]
    CredentialsIo { path: PathBuf, source: io::Error },
    #[error("{0}")]
    DeviceId(String),
    #[error("cannot hash the password: {0}")]
    Hash(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<LinkError> for BrokerError {
    fn from(error: LinkError) -> Self {
        BrokerError::Link(Box::new(error))
    }
}

/// The kinds of listener the broker can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT 3.1.1 over TCP.
    Mqtt,
    /// MQTT 5 over TCP.
    Mqtt5,
    /// MQTT 3.1.1 over WebSocket.
    MqttWs,
    /// MQTT 3.1.1 over TLS.
    Mqtts,
}

impl std::fmt::Display for ListenerKind {
    /// The name used in start-up lines (`mqtt5 listening on ...`) and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtt5 => "mqtt5",
            ListenerKind::MqttWs => "mqtt-ws",
            ListenerKind::Mqtts => "mqtts",
        })
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
    /// Checks device credentials; `None` when anonymous devices are allowed.
    auth: Option<Arc<DeviceAuth>>,
    /// The broker's counters, for `/metrics`.
    metrics: Arc<BrokerMetrics>,
    /// Starts the meter poller; taken by [`EmbeddedBroker::listen`].
    meter_poller: Option<MeterPoller>,
    /// Stops the meter poller when the broker is dropped.
    stop_polling: CancellationToken,
    /// The addresses the listeners actually bound (the real port when 0 was asked).
    bound: Vec<(ListenerKind, SocketAddr)>,
    /// The listeners' accept loops and the meter poller; aborted on drop because rumqttd
    /// has no shutdown API.
    tasks: Vec<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts the router. No listener is open yet: call [`EmbeddedBroker::listen`] once the
    /// in-process subscribers are in place, so no early reading is published into a void.
    /// `credentials` is the device registry file; it is read unless anonymous devices are
    /// allowed.
    ///
    /// # Errors
    /// A limit that rumqttd cannot work with (zero connections, zero-sized segments), a TLS
    /// file that does not exist, or an unreadable credentials file.
    pub fn start(config: BrokerConfig, credentials: &std::path::Path) -> Result<Self, BrokerError> {
        config.validate()?;
        let metrics = Arc::new(BrokerMetrics::default());
        let auth = if config.allow_anonymous {
            None
        } else {
            Some(Arc::new(DeviceAuth::load(credentials, metrics.clone())?))
        };
        let router = Router::new(0, router_config(&config));
        let router_tx = router.spawn();
        let link_router = router_tx.clone();
        let new_link: LinkFactory = Box::new(move |client_id| {
            let (link_tx, link_rx, _connack) = LinkBuilder::new(client_id, link_router.clone())
                .clean_session(true)
                .lossless(true)
                .exclusive(true)
                .build()?;
            Ok((link_tx, link_rx))
        });
        let meter_router = router_tx.clone();
        let poller_metrics = metrics.clone();
        let meter_poller: MeterPoller = Box::new(move |shutdown| {
            let meters = MetersLink::new(meter_router.clone())
                .map_err(|error| BrokerError::Meters(Box::new(error)))?;
            let alerts = AlertsLink::new(meter_router)
                .map_err(|error| BrokerError::Meters(Box::new(error)))?;
            Ok(tokio::spawn(critical(
                "the broker's meter poller",
                poll_router(meters, alerts, poller_metrics, shutdown),
            )))
        });
        let new_server: ServerFactory = Box::new(move |settings, kind| match kind {
            ListenerKind::Mqtt5 => accept_loop(
                Server::new(settings, router_tx.clone(), V5),
                LinkType::Remote,
            ),
            ListenerKind::Mqtt | ListenerKind::Mqtts | ListenerKind::MqttWs => accept_loop(
                Server::new(settings, router_tx.clone(), V4),
                link_type(kind),
            ),
        });
        Ok(EmbeddedBroker {
            config,
            new_link,
            new_server,
            auth,
            metrics,
            meter_poller: Some(meter_poller),
            stop_polling: CancellationToken::new(),
            bound: Vec::new(),
            tasks: Vec::new(),
        })
    }

    /// Opens every configured listener and returns their bound addresses, the MQTT 3.1.1
    /// listener first. Must be called from within the tokio runtime that will serve the
    /// connections.
    ///
    /// # Errors
    /// An address cannot be bound (in use, not local, no permission), or the TLS
    /// certificate or key cannot be loaded.
    pub fn listen(&mut self) -> Result<Vec<(ListenerKind, SocketAddr)>, BrokerError> {
        if let Some(start_poller) = self.meter_poller.take() {
            self.tasks.push(start_poller(self.stop_polling.clone())?);
        }
        let mut wanted = vec![(ListenerKind::Mqtt, self.config.mqtt_listen)];
        wanted.extend(self.config.mqtt5_listen.map(|a| (ListenerKind::Mqtt5, a)));
        wanted.extend(self.config.ws_listen.map(|a| (ListenerKind::MqttWs, a)));
        wanted.extend(
            self.config
                .tls
                .as_ref()
                .map(|t| (ListenerKind::Mqtts, t.listen)),
        );
        for (kind, addr) in wanted {
            let bound = self.open(kind, addr)?;
            self.bound.push((kind, bound));
        }
        Ok(self.bound.clone())
    }

    /// The bound MQTT 3.1.1 address, once [`EmbeddedBroker::listen`] succeeded.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.bound_addr(ListenerKind::Mqtt)
    }

    /// The bound address of the listener of `kind`, if it is open.
    pub fn bound_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.bound.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
    }

    /// The broker's counters, to show on `/metrics`.
    pub fn metrics(&self) -> Arc<BrokerMetrics> {
        self.metrics.clone()
    }

    /// Opens an in-process client link to the router: no socket, no MQTT encoding. Blocks
    /// briefly while the router registers it, so call it outside the async workers.
    ///
    /// In-process links are trusted consumers such as the bridge: the router never drops a
    /// message they have not read (publishers wait instead, see
    /// `BrokerConfig::lossless_subscribers`), and no MQTT client can take their client id.
    ///
    /// # Errors
    /// The router refused the link (connection limit) or has stopped.
    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
        (self.new_link)(client_id)
    }

    /// Binds one listener, retrying with another free port when port 0 was asked and the
    /// kernel's choice was taken in between.
    fn open(&mut self, kind: ListenerKind, wanted: SocketAddr) -> Result<SocketAddr, BrokerError> {
        // rumqttd binds the address itself and cannot report a kernel-chosen port, so for port
        // 0 we ask the kernel for a free port first. Another process could take it in between;
        // rumqttd's bind then fails at once and we try another.
        let attempts = if wanted.port() == 0 { 8 } else { 1 };
        let listen_error = |addr, source| BrokerError::Listen { kind, addr, source };
        let mut last_error = None;
        for _ in 0..attempts {
            let addr = pick_port(wanted).map_err(|source| listen_error(wanted, source))?;
            match self.spawn_listener(kind, addr) {
                Ok(handle) => {
                    self.tasks.push(handle);
                    return Ok(addr);
                }
                Err(source) => last_error = Some(listen_error(addr, source)),
            }
        }
        Err(last_error
            .unwrap_or_else(|| listen_error(wanted, io::Error::from(io::ErrorKind::AddrInUse))))
    }

    /// Binds `addr` through rumqttd's server and starts its accept loop as a task. The first
    /// poll of rumqttd's `Server::start` binds synchronously (and loads the TLS certificate),
    /// so polling it once tells us at once whether the listener works.
    fn spawn_listener(&self, kind: ListenerKind, addr: SocketAddr) -> io::Result<JoinHandle<()>> {
        let settings = server_settings(&self.config, kind, addr, self.auth.clone());
        let mut accept_loop = (self.new_server)(settings, kind);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match accept_loop.as_mut().poll(&mut context) {
            Poll::Ready(Err(error)) => Err(io::Error::other(error)),
            Poll::Ready(Ok(())) => Err(io::Error::other("listener ended at once")),
            Poll::Pending => Ok(tokio::spawn(critical("an MQTT listener", async move {
                if let Err(error) = accept_loop.await {
                    warn!(%error, %kind, "MQTT listener stopped");
                }
            }))),
        }
    }
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("config", &self.config)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop_polling.cancel();
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// rumqttd's accept loop for `server`, boxed so listeners of every protocol look alike.
fn accept_loop<P: Protocol + Clone + Send + 'static>(
    mut server: Server<P>,
    link_type: LinkType,
) -> AcceptLoop {
    Box::pin(async move { server.start(link_type).await.map_err(|e| e.to_string()) })
}

/// How a listener of `kind` carries MQTT: over WebSocket frames or straight on the stream
/// (TCP or TLS).
fn link_type(kind: ListenerKind) -> LinkType {
    match kind {
        ListenerKind::MqttWs => LinkType::Websocket,
        ListenerKind::Mqtt | ListenerKind::Mqtt5 | ListenerKind::Mqtts => LinkType::Remote,
    }
}

/// For port 0, a free port chosen by the kernel; otherwise `wanted` itself.
fn pick_port(wanted: SocketAddr) -> io::Result<SocketAddr> {
    if wanted.port() != 0 {
        return Ok(wanted);
    }
    StdTcpListener::bind(wanted)?.local_addr()
}

/// See `router_config`.
const OUTGOING_BATCH: u64 = 2_000;

/// Every router field set explicitly: rumqttd's defaults refuse all clients (zero
/// connections) and panic on small segments.
fn router_config(config: &BrokerConfig) -> RouterConfig {
    RouterConfig {
        max_connections: config.max_connections,
        // Messages the router hands a subscriber per turn (and its buffer's bound). The
        // bridge and other busy subscribers get a turn only when their task runs, which on a
        // loaded runtime can take milliseconds: at upstream's 200, delivery to them fell far
        // behind the intake under overload. Memory: up to ~0.5 MB per lagging subscriber.
        max_outgoing_packet_count: OUTGOING_BATCH,
        // rumqttd panics below 1 KiB segments.
        max_segment_size: config.segment_size.max(1024),
        max_segment_count: config.segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
        lossless_subscribers: config.lossless_subscribers.clone(),
        max_saved_sessions: config.max_saved_sessions,
    }
}

fn server_settings(
    config: &BrokerConfig,
    kind: ListenerKind,
    listen: SocketAddr,
    auth: Option<Arc<DeviceAuth>>,
) -> ServerSettings {
    let tls = match (kind, &config.tls) {
        (ListenerKind::Mqtts, Some(tls)) => Some(TlsConfig::Rustls {
            capath: None,
            certpath: tls.cert.display().to_string(),
            keypath: tls.key.display().to_string(),
        }),
        _ => None,
    };
    let mut settings = ServerSettings {
        name: format!("{kind}-{listen}"),
        listen,
        tls,
        // rumqttd sleeps this long after every accept; 0 keeps accepts unthrottled.
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            // A client that opens a socket but never completes its TLS or WebSocket
            // handshake or sends CONNECT is dropped after this.
            connection_timeout_ms: 5_000,
            max_payload_size: config.max_packet_size,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            // A publish to a topic nobody subscribes to must not create a filter: that would
            // grow router memory with every distinct device topic.
            dynamic_filters: false,
        },
    };
    if let Some(auth) = auth {
        settings.set_auth_handler(move |client_id, username, password| {
            let auth = auth.clone();
            async move { auth.check(&client_id, &username, &password).await == Verdict::Accepted }
        });
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsListenerConfig;

    #[test]
    fn zero_limits_and_missing_tls_files_are_refused_before_start() {
        let zero = BrokerConfig {
            segment_count: 0,
            ..BrokerConfig::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(BrokerError::ZeroLimit("segment_count"))
        ));
        let one_segment = BrokerConfig {
            segment_count: 1,
            ..BrokerConfig::default()
        };
        assert!(matches!(
            one_segment.validate(),
            Err(BrokerError::OneSegment)
        ));
        let tls = BrokerConfig {
            tls: Some(TlsListenerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                cert: PathBuf::from("/nonexistent/iotmon/cert.pem"),
                key: PathBuf::from("/nonexistent/iotmon/key.pem"),
            }),
            ..BrokerConfig::default()
        };
        let error = tls.validate().expect_err("missing certificate");
        assert!(error.to_string().contains("cert.pem"), "{error}");
        assert!(BrokerConfig::default().validate().is_ok());
    }

    #[test]
    fn listener_names_are_the_stable_start_up_words() {
        let names = [
            ListenerKind::Mqtt,
            ListenerKind::Mqtt5,
            ListenerKind::MqttWs,
            ListenerKind::Mqtts,
        ]
        .map(|kind| kind.to_string());
        assert_eq!(names, ["mqtt", "mqtt5", "mqtt-ws", "mqtts"]);
    }

    #[test]
    fn anonymous_listeners_have_no_auth_handler_and_others_do() {
        let config = BrokerConfig::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let open = server_settings(&config, ListenerKind::Mqtt, addr, None);
        assert!(open.connections.external_auth.is_none());
        assert_eq!(open.next_connection_delay_ms, 0);
        assert!(!open.connections.dynamic_filters);
        assert!(open.tls.is_none());
    }

    #[test]
    fn a_subscriber_is_handed_a_whole_batch_before_the_router_waits_for_it() {
        let config = BrokerConfig {
            allow_anonymous: true,
            ..BrokerConfig::default()
        };
        let broker =
            EmbeddedBroker::start(config, std::path::Path::new("/nonexistent")).expect("starts");
        let (mut subscriber_tx, mut subscriber) = broker.link("subscriber").expect("links");
        subscriber_tx.subscribe("sensors/#").expect("subscribes");
        let (mut publisher, _publisher_rx) = broker.link("publisher").expect("links");
        // More than upstream's fixed batch of 200, fewer than ours.
        let sent = 1_500;
        for n in 0..sent {
            publisher
                .publish(format!("sensors/dev-{n}"), "{}")
                .expect("publishes");
        }

        // Let the router take all of them in before the first read, then read without ever
        // telling it we drained anything: what arrives is what it hands over in one turn, up
        // to the point where it would wait for us.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut forwarded = 0;
        while forwarded < sent {
            match subscriber.recv_deadline(deadline) {
                Ok(Some(rumqttd::Notification::Forward(_))) => forwarded += 1,
                Ok(Some(rumqttd::Notification::Unschedule)) => {
                    panic!("the router waited for the subscriber after {forwarded} messages")
                }
                Ok(_) => {}
                Err(error) => panic!("{forwarded} of {sent} messages arrived: {error}"),
            }
        }
        assert!(sent < OUTGOING_BATCH as usize);
    }
}
