use crate::link::local::{LinkError, LinkRx, LinkTx};
use crate::link::network;
use crate::link::network::Network;
use crate::local::LinkBuilder;
use crate::protocol::{ConnAck, Connect, ConnectReturnCode, Login, Packet, Protocol};
use crate::router::{Event, Notification, MAX_PENDING_PACKETS};
use crate::{ConnectionId, ConnectionSettings};

use flume::{RecvError, SendError, Sender, TrySendError};
use std::cmp::min;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::error::Elapsed;
use tokio::{select, time};
use tracing::{trace, Span};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O")]
    Io(#[from] io::Error),
    #[error("Zero keep alive")]
    ZeroKeepAlive,
    #[error("Not connect packet")]
    NotConnectPacket(Packet),
    #[error("Network {0}")]
    Network(#[from] network::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Got new session, disconnecting old one")]
    SessionEnd,
    #[error("Persistent session requires valid client id")]
    InvalidClientId,
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Authentication error")]
    InvalidAuth,
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Link error = {0}")]
    Link(#[from] LinkError),
}

/// Orchestrates between Router and Network.
pub struct RemoteLink<P> {
    connect: Connect,
    pub(crate) connection_id: ConnectionId,
    /// iotmon patch: see `LinkRx::incarnation`.
    pub(crate) incarnation: u64,
    network: Network<P>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    notifications: VecDeque<Notification>,
    pub(crate) will_delay_interval: u32,
}

impl<P: Protocol> RemoteLink<P> {
    pub async fn new(
        router_tx: Sender<(ConnectionId, Event)>,
        tenant_id: Option<String>,
        mut network: Network<P>,
        connect_packet: Packet,
        dynamic_filters: bool,
        assigned_client_id: Option<String>,
    ) -> Result<RemoteLink<P>, Error> {
        let Packet::Connect(connect, props, lastwill, lastwill_props, _) = connect_packet else {
            return Err(Error::NotConnectPacket(connect_packet));
        };

        // Register this connection with the router. Router replys with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex max connection limit)
        let client_id = assigned_client_id.as_ref().unwrap_or(&connect.client_id);
        let clean_session = connect.clean_session;

        let topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
        let session_expiry = props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);

        let delay_interval = lastwill_props
            .as_ref()
            .and_then(|f| f.delay_interval)
            .unwrap_or(0);

        // The Server delays publishing the Client’s Will Message until
        // the Will Delay Interval has passed or the Session ends, whichever happens first
        let will_delay_interval = min(session_expiry, delay_interval);

        // iotmon patch: registering with the router awaits its answer. Upstream waited on a
        // blocking channel on the async worker itself, so a busy router stalled every task of
        // that worker (in iotmon: other connections, the bridge and the dashboard).
        let built = LinkBuilder::new(client_id, router_tx)
            .tenant_id(tenant_id)
            .clean_session(clean_session)
            // iotmon patch: see `LinkBuilder::session_expiry`. Upstream kept every Clean
            // Start 0 session until the broker stopped.
            .session_expiry(P::MQTT5.then_some(session_expiry))
            // iotmon patch: see `LinkBuilder::max_packet_size`.
            .max_packet_size(props.as_ref().and_then(|p| p.max_packet_size))
            .last_will(lastwill)
            .last_will_properties(lastwill_props)
            .dynamic_filters(dynamic_filters)
            .topic_alias_max(topic_alias_max.unwrap_or(0))
            .build_async()
            .await;
        // iotmon patch: when the router refuses the connection (max_connections reached),
        // say so with CONNACK "server unavailable" (3.1.1 code 3, MQTT 5 0x88) instead of a
        // silent close.
        let (link_tx, link_rx, notification) = match built {
            Ok(built) => built,
            Err(e) => {
                let ack = ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::ServiceUnavailable,
                };
                network.write(Packet::ConnAck(ack, None)).await.ok();
                return Err(e.into());
            }
        };

        let id = link_rx.id();
        Span::current().record("connection_id", id);

        if let Some(mut packet) = notification.into() {
            if let Packet::ConnAck(_ack, props) = &mut packet {
                let mut new_props = props.clone().unwrap_or_default();
                new_props.assigned_client_identifier = assigned_client_id;
                *props = Some(new_props);
                network.write(packet).await?;
            }
        }

        Ok(RemoteLink {
            connect,
            connection_id: id,
            incarnation: link_rx.incarnation(),
            network,
            link_tx,
            link_rx,
            // iotmon patch: grows on first use (see `Outgoing::new`).
            notifications: VecDeque::new(),
            will_delay_interval,
        })
    }

    pub async fn start(&mut self) -> Result<(), Error> {
        self.network.set_keepalive(self.connect.keep_alive);

        // iotmon patch: one keep-alive timer and one router-signal future for the life of the
        // connection, instead of a new timer (in `Network::read`) and a new receive future
        // (in `LinkRx::exchange`) on every turn of this loop, i.e. for every packet read.
        // The timer is only re-armed when it fires: if a packet arrived in the meantime it is
        // pushed back to `last_read + keepalive`, otherwise the connection has been silent
        // too long and is closed, as upstream's per-read timeout did.
        let keepalive = self.network.keepalive();
        let RemoteLink {
            network,
            link_tx,
            link_rx,
            notifications,
            ..
        } = self;
        let mut last_read = time::Instant::now();
        let silence = time::sleep_until(deadline_after(last_read, keepalive));
        tokio::pin!(silence);
        let notified = link_rx.notified();
        tokio::pin!(notified);

        // iotmon patch 40: what the router queued behind the CONNACK goes out now. Building
        // the link took the router's signal for that batch and wrote only the CONNACK, so a
        // resumed session's PUBRELs (and retained messages sent again, see
        // `Outgoing::resend_retained`) waited for the next, unrelated, signal: a client with
        // no other traffic never got them (MQTT-4.4.0-1).
        forward_notifications(network, link_rx, notifications).await?;

        // Note:
        // Shouldn't result in bounded queue deadlocks because of blocking n/w send
        loop {
            // iotmon patch: no more reads while `MAX_PENDING_PACKETS` packets wait for the
            // router (it may have paused ingest for a lossless subscriber, see
            // `LinkBuilder::lossless`); the router signals when it takes them. Upstream kept
            // reading into an unbounded buffer.
            let reading = link_tx.buffer().len() < MAX_PENDING_PACKETS;
            select! {
                o = network.read_untimed(), if reading => {
                    let packet = o?;
                    last_read = time::Instant::now();
                    let len = {
                        let mut buffer = link_tx.buffer();
                        buffer.push_back(packet);
                        network.readv(&mut buffer)?;
                        buffer.len()
                    };

                    trace!("Packets read from network, count = {}", len);
                    link_tx.notify().await?;
                }
                // Receive from router when previous when state isn't in collision
                // due to previously received data request
                o = &mut notified => {
                    o.map_err(LinkError::from)?;
                    notified.set(link_rx.notified());
                    forward_notifications(network, link_rx, notifications).await?;
                }
                () = &mut silence => {
                    // iotmon patch: a connection we stopped reading is not silent.
                    if !reading {
                        last_read = time::Instant::now();
                    }
                    let deadline = deadline_after(last_read, keepalive);
                    if deadline <= time::Instant::now() {
                        return Err(Error::Network(network::Error::KeepAlive(
                            keepalive_elapsed().await,
                        )));
                    }
                    silence.as_mut().reset(deadline);
                }
            }
        }
    }
}

/// Writes the notifications the router left for this connection to the network, and asks
/// the router to schedule the connection again if it was unscheduled.
async fn forward_notifications<P: Protocol>(
    network: &mut Network<P>,
    link_rx: &LinkRx,
    notifications: &mut VecDeque<Notification>,
) -> Result<(), Error> {
    link_rx.take_notifications(notifications);
    let mut packets = VecDeque::new();
    let mut unscheduled = false;

    for notif in notifications.drain(..) {
        if let Some(packet) = notif.into() {
            packets.push_back(packet);
        } else {
            unscheduled = true;
        }
    }
    network.writev(packets).await?;
    if unscheduled {
        link_rx.wake().await?;
    }
    Ok(())
}

/// iotmon patch: `instant + keepalive`, or far in the future when that overflows (a
/// connection that has not sent CONNECT's keep-alive yet has `Duration::MAX`).
fn deadline_after(instant: time::Instant, keepalive: Duration) -> time::Instant {
    instant
        .checked_add(keepalive)
        .unwrap_or_else(|| instant + Duration::from_secs(86_400 * 365 * 30))
}

/// iotmon patch: an `Elapsed` for the keep-alive error (tokio offers no constructor).
async fn keepalive_elapsed() -> Elapsed {
    match time::timeout(Duration::ZERO, std::future::pending::<()>()).await {
        Err(elapsed) => elapsed,
        Ok(()) => unreachable!("a pending future never completes"),
    }
}

/// Read MQTT connect packet from network and verify it.
/// authentication and checks are done here.
pub async fn mqtt_connect<P>(
    config: Arc<ConnectionSettings>,
    network: &mut Network<P>,
) -> Result<Packet, Error>
where
    P: Protocol,
{
    // Wait for MQTT connect packet and error out if it's not received in time to prevent
    // DOS attacks by filling total connections that the server can handle with idle open
    // connections which results in server rejecting new connections
    let connection_timeout_ms = config.connection_timeout_ms.into();
    let packet = time::timeout(Duration::from_millis(connection_timeout_ms), async {
        let packet = network.read().await?;
        Ok::<_, network::Error>(packet)
    })
    .await?;
    // iotmon patch: a CONNECT of a protocol level this listener does not speak gets CONNACK
    // 0x01 (MQTT 5: 0x84) before the close (MQTT-3.1.2-2); upstream closed without a word.
    let packet = match packet {
        Err(network::Error::Protocol(crate::protocol::Error::InvalidProtocolLevel(level))) => {
            let ack = ConnAck {
                session_present: false,
                code: ConnectReturnCode::RefusedProtocolVersion,
            };
            network.write(Packet::ConnAck(ack, None)).await.ok();
            return Err(network::Error::Protocol(
                crate::protocol::Error::InvalidProtocolLevel(level),
            )
            .into());
        }
        packet => packet?,
    };

    let (connect, _props, login) = match packet {
        Packet::Connect(ref connect, ref props, _, _, ref login) => (connect, props, login),
        packet => return Err(Error::NotConnectPacket(packet)),
    };

    Span::current().record("client_id", &connect.client_id);

    // iotmon patch: a refused login gets a CONNACK saying so (MQTT 3.1.1 code 4, MQTT 5
    // reason 0x86) before the connection closes, instead of a silent close.
    if let Err(e) = handle_auth(config.clone(), login.as_ref(), &connect.client_id).await {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::BadUserNamePassword,
        };
        network.write(Packet::ConnAck(ack, None)).await?;
        return Err(e);
    }

    // iotmon patch: keep alive 0 is accepted. Upstream closed the socket without a CONNACK,
    // but MQTT 3.1.1 (3.1.2.10) and 5 (3.1.2.10) say 0 turns the keep-alive mechanism off,
    // and many embedded clients send it (see `Network::set_keepalive`).
    let empty_client_id = connect.client_id.is_empty();
    let clean_session = connect.clean_session;

    if empty_client_id && !clean_session {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::ClientIdentifierNotValid,
        };

        let packet = Packet::ConnAck(ack, None);
        network.write(packet).await?;

        return Err(Error::InvalidClientId);
    }

    // Ok((connect, props, lastwill, lastwill_props))
    Ok(packet)
}

async fn handle_auth(
    config: Arc<ConnectionSettings>,
    login: Option<&Login>,
    client_id: &str,
) -> Result<(), Error> {
    if config.auth.is_none() && config.external_auth.is_none() {
        return Ok(());
    }

    // if authentication is configured and connect packet doesn't have login details
    // return an error
    let Some(login) = login else {
        // iotmon patch: the handler hears of a CONNECT without credentials too (empty user
        // name and password), so it can count it; it is refused whatever the handler says.
        if let Some(auth) = &config.external_auth {
            auth(client_id.to_owned(), String::new(), String::new()).await;
        }
        return Err(Error::InvalidAuth);
    };

    let username = &login.username;
    let password = &login.password;

    if let Some(auth) = &config.external_auth {
        if !auth(
            client_id.to_owned(),
            username.to_owned(),
            password.to_owned(),
        )
        .await
        {
            return Err(Error::InvalidAuth);
        }

        return Ok(());
    }

    if let Some(pairs) = &config.auth {
        if let Some(stored_password) = pairs.get(username) {
            if stored_password.as_bytes().ct_eq(password.as_bytes()).into() {
                return Ok(());
            }
        }

        return Err(Error::InvalidAuth);
    }

    Err(Error::InvalidAuth)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use crate::{protocol::Login, ConnectionSettings};

    use super::handle_auth;

    fn config() -> ConnectionSettings {
        ConnectionSettings {
            connection_timeout_ms: 0,
            max_payload_size: 0,
            max_inflight_count: 0,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        }
    }

    fn login() -> Login {
        Login {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }
    }

    #[tokio::test]
    async fn no_login_no_auth() {
        let cfg = Arc::new(config());
        let r = handle_auth(cfg, None, "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn some_login_no_auth() {
        let cfg = Arc::new(config());
        let login = login();
        let r = handle_auth(cfg, Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_matches_static_auth() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert(login.username.clone(), login.password.clone());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_no_external() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn login_fails_static_matches_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { true };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_fails_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { false };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn external_auth_clousre_or_fnptr_type_check_or_fail_compile() {
        let closure = |_: String, _: String, _: String| async { false };
        async fn fnptr(_: String, _: String, _: String) -> bool {
            true
        }

        let mut cfg = config();
        cfg.set_auth_handler(closure);
        cfg.set_auth_handler(fnptr);
    }
}
