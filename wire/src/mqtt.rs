//! Talking to an MQTT broker from a role that runs in its own process: parsing the
//! `mqtt://host:port` address, and a session loop that keeps a `rumqttc` client connected.
//!
//! rumqttc does not back off between reconnects and does not restore subscriptions after one
//! (see `shared/notes/dependencies.md`); [`drive_session`] does both, for every role.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The port MQTT brokers listen on when an address names none.
pub const DEFAULT_PORT: u16 = 1883;

/// How often an idle client pings the broker.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A published message as a role receives it, whatever the broker.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
}

/// A broker address: `mqtt://host:port`, `mqtt://host` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

/// Why a broker address could not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BrokerUrlError {
    #[error("unsupported scheme {0:?}: use mqtt://HOST:PORT")]
    Scheme(String),
    #[error("no host in broker address")]
    NoHost,
    #[error("invalid port {0:?}")]
    Port(String),
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = match text.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => rest,
            Some((scheme, _)) => return Err(BrokerUrlError::Scheme(scheme.to_string())),
            None => text,
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse()
                    .map_err(|_| BrokerUrlError::Port(port.to_string()))?;
                (host, port)
            }
            None => (rest, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost);
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

impl BrokerUrl {
    /// Client options for this broker with iotmon's defaults: clean session, 30 s keep-alive,
    /// and packets up to `max_packet_size` bytes both ways.
    pub fn options(&self, client_id: &str, max_packet_size: usize) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(KEEP_ALIVE);
        options.set_clean_session(true);
        options.set_max_packet_size(max_packet_size, max_packet_size);
        options
    }

    /// As [`BrokerUrl::options`], for an MQTT 5 client: clean start, the same keep-alive, and
    /// the largest packet accepted from the broker (the broker's CONNACK caps what is sent).
    pub fn options_v5(&self, client_id: &str, max_packet_size: usize) -> rumqttc::v5::MqttOptions {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(KEEP_ALIVE);
        options.set_clean_start(true);
        options.set_max_packet_size(u32::try_from(max_packet_size).ok());
        options
    }

    /// Client options for `login`: as [`BrokerUrl::options`], with its credentials if any.
    pub fn options_for(&self, login: &Login, max_packet_size: usize) -> MqttOptions {
        let mut options = self.options(&login.client_id, max_packet_size);
        if let Some(password) = &login.password {
            let username = login.username.as_deref().unwrap_or(&login.client_id);
            options.set_credentials(username, password.as_str());
        }
        options
    }
}

/// Who a role is on the broker. iotmon's own broker requires the user name to equal the
/// client id, which is the default when only a password is given.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Login {
    /// A login without credentials.
    pub fn anonymous(client_id: impl Into<String>) -> Self {
        Login {
            client_id: client_id.into(),
            username: None,
            password: None,
        }
    }
}

/// What a session does each time it (re)connects.
#[derive(Debug, Clone, Default)]
pub struct SessionPlan {
    /// Filters subscribed at QoS 0 after every ConnAck (rumqttc does not restore them).
    pub subscriptions: Vec<String>,
    /// Filters subscribed at QoS 1 (messages that must arrive, such as alerts).
    pub reliable_subscriptions: Vec<String>,
    /// A message published after the subscriptions on every connect, e.g. a request for the
    /// other side to resend its state.
    pub announce: Option<(String, Bytes)>,
}

/// Backoff between reconnect attempts: doubles from `INITIAL` up to `MAX`, with jitter so a
/// fleet that lost its broker does not reconnect in lockstep.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    /// The reconnect backoff: from 100 ms up to 10 s.
    pub fn new() -> Self {
        Self::between(Self::INITIAL, Self::MAX)
    }

    /// A backoff starting at `initial` and doubling up to `max`.
    pub fn between(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial,
            initial,
            max,
        }
    }

    /// The delay before the next attempt: the current step scaled by a random factor in
    /// [0.5, 1.5), after which the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let factor = rand::rng().random_range(0.5..1.5);
        let delay = self.next.mul_f64(factor);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Called once connected: the next failure starts from the initial step again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls `eventloop` until `shutdown`, keeping the session alive: on every ConnAck it
/// subscribes and announces per `plan`; after an error it waits with [`Backoff`]; every
/// incoming publish goes to `incoming` (when given), waiting while that channel is full so a
/// slow consumer slows the socket rather than growing memory.
pub async fn drive_session(
    mut eventloop: EventLoop,
    client: AsyncClient,
    plan: SessionPlan,
    incoming: Option<mpsc::Sender<Message>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %broker_of(&eventloop), "connected to MQTT broker");
                backoff.reset();
                // Sent from a task of its own: awaiting the client here could deadlock, since
                // the request channel only drains while this loop polls.
                tokio::spawn(establish(client.clone(), plan.clone()));
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Some(incoming) = &incoming else { continue };
                let message = Message {
                    topic: publish.topic,
                    payload: publish.payload,
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    sent = incoming.send(message) => if sent.is_err() { break },
                }
            }
            Ok(_) => {}
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(broker = %broker_of(&eventloop), %error, retry_in = ?delay, "MQTT connection lost");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    say_goodbye(&mut eventloop, &client).await;
}

/// How long a session keeps polling at shutdown for its DISCONNECT to go out.
const GOODBYE_LIMIT: Duration = Duration::from_secs(1);

/// Sends DISCONNECT and polls until it is written (or the limit passes), so the broker sees a
/// clean goodbye rather than a dropped socket.
async fn say_goodbye(eventloop: &mut EventLoop, client: &AsyncClient) {
    if let Err(error) = client.try_disconnect() {
        debug!(%error, "disconnect request not sent");
        return;
    }
    let _ = tokio::time::timeout(GOODBYE_LIMIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

async fn establish(client: AsyncClient, plan: SessionPlan) {
    let filters = plan
        .subscriptions
        .iter()
        .map(|filter| (filter, QoS::AtMostOnce))
        .chain(
            plan.reliable_subscriptions
                .iter()
                .map(|filter| (filter, QoS::AtLeastOnce)),
        );
    for (filter, qos) in filters {
        if let Err(error) = client.subscribe(filter.as_str(), qos).await {
            warn!(%error, filter, "subscribe failed");
        }
    }
    if let Some((topic, payload)) = plan.announce {
        if let Err(error) = client
            .publish(topic.as_str(), QoS::AtMostOnce, false, payload)
            .await
        {
            warn!(%error, topic, "announce failed");
        }
    }
}

fn broker_of(eventloop: &EventLoop) -> String {
    let (host, port) = eventloop.mqtt_options.broker_address();
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_addresses() {
        let url: BrokerUrl = "mqtt://127.0.0.1:1884".parse().expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 1884));
        let url: BrokerUrl = "broker.local".parse().expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port),
            ("broker.local", DEFAULT_PORT)
        );
        assert_eq!(url.to_string(), "mqtt://broker.local:1883");
        assert!(matches!(
            "http://x:1".parse::<BrokerUrl>(),
            Err(BrokerUrlError::Scheme(_))
        ));
        assert!(matches!(
            "mqtt://x:port".parse::<BrokerUrl>(),
            Err(BrokerUrlError::Port(_))
        ));
        assert_eq!(
            "mqtt://:1".parse::<BrokerUrl>(),
            Err(BrokerUrlError::NoHost)
        );
    }

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut backoff = Backoff::new();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = backoff.next_delay();
            assert!(last < Backoff::MAX.mul_f64(1.5));
        }
        assert!(last >= Backoff::MAX.mul_f64(0.5));
        backoff.reset();
        assert!(backoff.next_delay() < Backoff::INITIAL.mul_f64(1.5));
    }
}
