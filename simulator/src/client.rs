//! The MQTT client of one simulated connection, speaking MQTT 3.1.1 or MQTT 5: rumqttc has a
//! separate client and event loop for each version, and this module puts both behind the few
//! operations the session ([`crate::connection`]) and the devices ([`crate::device`]) use, so
//! the session loop and the publishing logic exist once.

use std::fmt;
use std::str::FromStr;

use iotmon_wire::mqtt::BrokerUrl;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use serde::Deserialize;
use thiserror::Error;

use crate::config::Qos;
use crate::device::OFFLINE;

/// The MQTT protocol version a simulated device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "VersionText")]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4): what most devices speak, and every broker accepts.
    #[default]
    V3_1_1,
    /// MQTT 5.
    V5,
}

impl MqttVersion {
    /// How users write it: `3.1.1` or `5`.
    pub fn name(self) -> &'static str {
        match self {
            MqttVersion::V3_1_1 => "3.1.1",
            MqttVersion::V5 => "5",
        }
    }
}

impl fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MqttVersion {
    type Err = String;

    /// `3.1.1` (or `3`) and `5`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "3.1.1" | "3" => Ok(MqttVersion::V3_1_1),
            "5" => Ok(MqttVersion::V5),
            other => Err(format!(
                "MQTT version {other:?} is not offered: use 3.1.1 or 5"
            )),
        }
    }
}

/// A version as a config file may write it: `5`, `"5"`, `3` or `"3.1.1"` (3.1.1 is not a TOML
/// number).
#[derive(Deserialize)]
#[serde(untagged)]
enum VersionText {
    Number(u8),
    Text(String),
}

impl TryFrom<VersionText> for MqttVersion {
    type Error = String;

    fn try_from(version: VersionText) -> Result<Self, Self::Error> {
        match version {
            VersionText::Number(number) => number.to_string().parse(),
            VersionText::Text(text) => text.parse(),
        }
    }
}

/// How one connection logs in: everything its CONNECT carries. (No `Debug`: it holds the
/// password.)
pub(crate) struct ConnectOptions<'a> {
    pub version: MqttVersion,
    pub broker: &'a BrokerUrl,
    pub client_id: &'a str,
    /// The topic of a retained `offline` last will, at QoS 1.
    pub will_topic: Option<&'a str>,
    /// The user name is the client id.
    pub password: Option<&'a str>,
    /// Connect over TLS trusting these PEM certificates.
    pub tls_ca: Option<&'a [u8]>,
    /// Largest packet sent or accepted.
    pub max_packet_size: usize,
}

/// The handle devices publish through; cheap to clone. Every operation only queues a request
/// for the [`EventLoop`], which does the I/O.
#[derive(Debug, Clone)]
pub(crate) enum Client {
    V3(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The connection's I/O: nothing is sent or received unless it is polled. (No `Debug`:
/// rumqttc's event loops have none.) Both boxed: they differ in size by about 450 bytes,
/// which every MQTT 3.1.1 session would otherwise carry.
pub(crate) enum EventLoop {
    V3(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What a poll of the event loop meant to the session; the rest (pings, subscriptions) is
/// [`Event::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The broker accepted the connection (CONNACK).
    Accepted,
    /// The broker acknowledged a QoS 1 publish (PUBACK with a success reason).
    Acked,
    /// A PUBLISH was written to the socket.
    PublishWritten,
    /// The DISCONNECT was written to the socket.
    DisconnectWritten,
    Other,
}

/// Why the connection failed; the next poll reconnects.
#[derive(Debug, Error)]
pub(crate) enum ConnectionError {
    #[error(transparent)]
    V3(#[from] rumqttc::ConnectionError),
    #[error(transparent)]
    V5(#[from] rumqttc::v5::ConnectionError),
}

/// A client and its event loop for `options`, whose request queue holds `queue` requests.
pub(crate) fn open(options: &ConnectOptions<'_>, queue: usize) -> (Client, EventLoop) {
    let transport = options.tls_ca.map(|ca| {
        Transport::tls_with_config(TlsConfiguration::Simple {
            ca: ca.to_vec(),
            alpn: None,
            client_auth: None,
        })
    });
    match options.version {
        MqttVersion::V3_1_1 => {
            let mut mqtt = options
                .broker
                .options(options.client_id, options.max_packet_size);
            if let Some(topic) = options.will_topic {
                mqtt.set_last_will(rumqttc::LastWill::new(
                    topic,
                    OFFLINE,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            }
            if let Some(password) = options.password {
                mqtt.set_credentials(options.client_id, password);
            }
            if let Some(transport) = transport {
                mqtt.set_transport(transport);
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(mqtt, queue);
            (Client::V3(client), EventLoop::V3(Box::new(eventloop)))
        }
        MqttVersion::V5 => {
            let mut mqtt = options
                .broker
                .options_v5(options.client_id, options.max_packet_size);
            if let Some(topic) = options.will_topic {
                mqtt.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    topic,
                    OFFLINE,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            if let Some(password) = options.password {
                mqtt.set_credentials(options.client_id, password);
            }
            if let Some(transport) = transport {
                mqtt.set_transport(transport);
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(mqtt, queue);
            (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
        }
    }
}

impl Client {
    /// Queues a publish; false when the queue is full or the event loop is gone.
    pub fn try_publish(&self, topic: &str, qos: Qos, retain: bool, payload: Vec<u8>) -> bool {
        match self {
            Client::V3(client) => client
                .try_publish(topic, qos.to_rumqttc(), retain, payload)
                .is_ok(),
            Client::V5(client) => client
                .try_publish(topic, qos.to_rumqttc_v5(), retain, payload)
                .is_ok(),
        }
    }

    /// Queues a DISCONNECT; false when the queue is full or the event loop is gone.
    pub fn try_disconnect(&self) -> bool {
        match self {
            Client::V3(client) => client.try_disconnect().is_ok(),
            Client::V5(client) => client.try_disconnect().is_ok(),
        }
    }
}

impl EventLoop {
    /// The next event, connecting first when there is no connection.
    ///
    /// # Errors
    /// The connection could not be opened, was refused, or failed.
    pub async fn poll(&mut self) -> Result<Event, ConnectionError> {
        Ok(match self {
            EventLoop::V3(eventloop) => v3_event(&eventloop.poll().await?),
            EventLoop::V5(eventloop) => v5_event(&eventloop.poll().await?),
        })
    }

    /// Closes the socket without a DISCONNECT, as a device losing power would: the broker
    /// then publishes the last will. Whatever was queued or in flight is forgotten, so the
    /// device does not replay stale readings when it comes back.
    pub fn drop_connection(&mut self) {
        match self {
            EventLoop::V3(eventloop) => {
                eventloop.clean();
                eventloop.pending.clear();
            }
            EventLoop::V5(eventloop) => {
                eventloop.clean();
                eventloop.pending.clear();
            }
        }
    }

    /// QoS 1 publishes sent and not yet acknowledged.
    pub fn inflight(&self) -> u16 {
        match self {
            EventLoop::V3(eventloop) => eventloop.state.inflight(),
            EventLoop::V5(eventloop) => eventloop.state.inflight(),
        }
    }

    /// The MQTT client id, for logs.
    pub fn client_id(&self) -> String {
        match self {
            EventLoop::V3(eventloop) => eventloop.mqtt_options.client_id(),
            EventLoop::V5(eventloop) => eventloop.options.client_id(),
        }
    }
}

fn v3_event(event: &rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Packet};
    match event {
        E::Incoming(Packet::ConnAck(_)) => Event::Accepted,
        E::Incoming(Packet::PubAck(_)) => Event::Acked,
        E::Outgoing(outgoing) => outgoing_event(outgoing),
        E::Incoming(_) => Event::Other,
    }
}

/// An MQTT 5 PUBACK may refuse the message (not authorized, quota exceeded): only a success
/// counts as acknowledged. `NoMatchingSubscribers` is a success: the broker took it.
fn v5_event(event: &rumqttc::v5::Event) -> Event {
    use rumqttc::v5::{mqttbytes::v5::Packet, Event as E};
    match event {
        E::Incoming(Packet::ConnAck(_)) => Event::Accepted,
        E::Incoming(Packet::PubAck(ack))
            if matches!(
                ack.reason,
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
            ) =>
        {
            Event::Acked
        }
        E::Outgoing(outgoing) => outgoing_event(outgoing),
        E::Incoming(_) => Event::Other,
    }
}

/// Both versions report what they wrote with the same type.
fn outgoing_event(outgoing: &Outgoing) -> Event {
    match outgoing {
        Outgoing::Publish(_) => Event::PublishWritten,
        Outgoing::Disconnect => Event::DisconnectWritten,
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_users_write_them() {
        assert_eq!("3.1.1".parse(), Ok(MqttVersion::V3_1_1));
        assert_eq!("3".parse(), Ok(MqttVersion::V3_1_1));
        assert_eq!("5".parse(), Ok(MqttVersion::V5));
        assert!("4".parse::<MqttVersion>().is_err());
        assert_eq!(MqttVersion::V5.to_string(), "5");
        assert_eq!(MqttVersion::default(), MqttVersion::V3_1_1);
    }
}
