//! A raw MQTT 3.1.1 and MQTT 5 client for tests that speak to a broker byte by byte, over
//! `iotmon_probe::mqtt`'s packets (built field by field, so a test can also build wrong
//! ones). Every read has a deadline; nothing sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw client waits for one answer from the broker.
pub const ANSWER: Duration = Duration::from_secs(10);

pub use iotmon_probe::mqtt::*;

/// What a read from the broker gave.
#[derive(Debug)]
pub enum Read {
    Packet(Packet),
    /// The broker closed the connection (or reset it).
    Closed,
    /// Nothing arrived in time.
    Silent,
}

/// A raw MQTT connection to a broker.
pub struct RawClient {
    socket: TcpStream,
    /// Bytes read but not yet framed into a packet.
    unread: Vec<u8>,
    pub version: Version,
}

impl RawClient {
    /// Opens a TCP connection; sends nothing.
    pub async fn open(broker: SocketAddr, version: Version) -> RawClient {
        let socket = TcpStream::connect(broker).await.expect("broker accepts");
        RawClient {
            socket,
            unread: Vec::new(),
            version,
        }
    }

    /// Connects with `connect` and returns the client with the broker's CONNACK.
    pub async fn connect(broker: SocketAddr, connect: Connect<'_>) -> (RawClient, ConnAck) {
        let mut client = RawClient::open(broker, connect.version).await;
        client.send(&connect.encode()).await;
        let connack = client.connack().await;
        (client, connack)
    }

    /// Connects with `connect` and fails unless the broker accepts.
    pub async fn connected(broker: SocketAddr, connect: Connect<'_>) -> RawClient {
        let (client, connack) = RawClient::connect(broker, connect).await;
        assert_eq!(connack.code, 0, "{} is accepted", connect.client_id);
        client
    }

    /// Sends `bytes`; a broker that has closed the connection is not an error here.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.socket.write_all(bytes).await;
    }

    /// The next packet, or a close, within `wait`.
    pub async fn read(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) = self.frame() {
                return Read::Packet(packet);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.socket.read(&mut chunk)).await {
                Err(_) => return Read::Silent,
                Ok(Ok(0) | Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.unread.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A whole packet from the bytes read, if there is one.
    fn frame(&mut self) -> Option<Packet> {
        let lengths = self.unread.get(1..)?;
        if !lengths.iter().take(4).any(|b| b & 0x80 == 0) {
            return None;
        }
        let (len, len_len) = read_varint(lengths);
        let end = 1 + len_len + len;
        if self.unread.len() < end {
            return None;
        }
        let packet = Packet {
            header: self.unread[0],
            body: self.unread[1 + len_len..end].to_vec(),
        };
        self.unread.drain(..end);
        Some(packet)
    }

    /// The next packet; fails if the broker closes the connection or says nothing.
    pub async fn packet(&mut self) -> Packet {
        match self.read(ANSWER).await {
            Read::Packet(packet) => packet,
            other => panic!("expected a packet from the broker, got {other:?}"),
        }
    }

    /// The next packet, which must be of `kind`.
    pub async fn expect(&mut self, kind: u8) -> Packet {
        let packet = self.packet().await;
        assert_eq!(packet.kind(), kind, "packet type of {packet:?}");
        packet
    }

    /// The CONNACK the broker must send next.
    pub async fn connack(&mut self) -> ConnAck {
        let packet = self.expect(CONNACK).await;
        let properties = match self.version {
            Version::V311 => Vec::new(),
            // A refusal of an unsupported version may come in the 3.1.1 form.
            Version::V5 if packet.body.len() > 2 => {
                let (len, len_len) = read_varint(&packet.body[2..]);
                packet.body[2 + len_len..2 + len_len + len].to_vec()
            }
            Version::V5 => Vec::new(),
        };
        ConnAck {
            session_present: packet.body[0] & 0x01 != 0,
            code: packet.body[1],
            properties,
        }
    }

    /// Subscribes and returns the SUBACK's return (reason) codes, checking that the SUBACK
    /// carries the SUBSCRIBE's packet identifier (MQTT-3.8.4-2).
    pub async fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&subscribe(self.version, packet_id, filters))
            .await;
        let suback = self.expect(SUBACK).await;
        assert_eq!(suback.packet_id(), packet_id, "SUBACK's packet identifier");
        let codes = match self.version {
            Version::V311 => &suback.body[2..],
            Version::V5 => {
                let (len, len_len) = read_varint(&suback.body[2..]);
                &suback.body[2 + len_len + len..]
            }
        };
        codes.to_vec()
    }

    /// Unsubscribes; fails unless an UNSUBACK with the same packet identifier comes next
    /// (MQTT-3.10.4-4). Returns its MQTT 5 reason codes (none in 3.1.1).
    pub async fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) -> Vec<u8> {
        self.send(&unsubscribe(self.version, packet_id, filters))
            .await;
        let unsuback = self.expect(UNSUBACK).await;
        assert_eq!(
            unsuback.packet_id(),
            packet_id,
            "UNSUBACK's packet identifier"
        );
        match self.version {
            Version::V311 => Vec::new(),
            Version::V5 => {
                let (len, len_len) = read_varint(&unsuback.body[2..]);
                unsuback.body[2 + len_len + len..].to_vec()
            }
        }
    }

    /// Publishes and, at QoS 1 and 2, completes the exchange with the broker.
    pub async fn publish(&mut self, publish: Publish<'_>) {
        self.send(&publish.encode(self.version)).await;
        match publish.qos {
            1 => {
                let puback = self.expect(PUBACK).await;
                assert_eq!(puback.packet_id(), publish.packet_id, "PUBACK's packet id");
            }
            2 => {
                let pubrec = self.expect(PUBREC).await;
                assert_eq!(pubrec.packet_id(), publish.packet_id, "PUBREC's packet id");
                self.send(&ack(PUBREL, publish.packet_id)).await;
                let pubcomp = self.expect(PUBCOMP).await;
                assert_eq!(
                    pubcomp.packet_id(),
                    publish.packet_id,
                    "PUBCOMP's packet id"
                );
            }
            _ => {}
        }
    }

    /// Sends a PINGREQ and returns every delivery that arrives before the PINGRESP,
    /// acknowledging each (QoS 1: PUBACK; QoS 2: PUBREC, and PUBCOMP for the PUBREL).
    /// The broker handles a connection's packets in order, so anything it had queued for
    /// this client before the PINGREQ arrives before the PINGRESP.
    pub async fn sync(&mut self) -> Vec<Delivery> {
        self.send(&PINGREQ_PACKET).await;
        let mut deliveries = Vec::new();
        loop {
            let packet = self.packet().await;
            if packet.kind() == PINGRESP {
                return deliveries;
            }
            if let Some(delivery) = self.acknowledge(&packet).await {
                deliveries.push(delivery);
            }
        }
    }

    /// Receives deliveries, acknowledging each, until one with payload `last` arrives;
    /// returns all of them.
    pub async fn deliveries_until(&mut self, last: &str) -> Vec<Delivery> {
        self.receive_until(|delivery| delivery.payload == last.as_bytes())
            .await
    }

    /// Receives deliveries, acknowledging each, until one satisfies `wanted`; returns all
    /// of them. Fails if the broker goes silent or closes the connection first.
    pub async fn receive_until(&mut self, wanted: impl Fn(&Delivery) -> bool) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        while !deliveries.iter().any(&wanted) {
            let packet = self.packet().await;
            if let Some(delivery) = self.acknowledge(&packet).await {
                deliveries.push(delivery);
            }
        }
        deliveries
    }

    /// Answers `packet` as a well-behaved client does, returning it if it is a PUBLISH.
    async fn acknowledge(&mut self, packet: &Packet) -> Option<Delivery> {
        match packet.kind() {
            PUBLISH => {
                let delivery = self.decode_publish(packet);
                match (delivery.qos, delivery.packet_id) {
                    (1, Some(id)) => self.send(&ack(PUBACK, id)).await,
                    (2, Some(id)) => self.send(&ack(PUBREC, id)).await,
                    _ => {}
                }
                Some(delivery)
            }
            PUBREL => {
                self.send(&ack(PUBCOMP, packet.packet_id())).await;
                None
            }
            other => panic!("unexpected packet type {other} from the broker: {packet:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH; not acknowledged.
    pub async fn delivery(&mut self) -> Delivery {
        let packet = self.expect(PUBLISH).await;
        self.decode_publish(&packet)
    }

    pub fn decode_publish(&self, packet: &Packet) -> Delivery {
        let qos = (packet.header >> 1) & 0x03;
        let body = &packet.body;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
        let mut at = 2 + topic_len;
        let packet_id = (qos > 0).then(|| {
            at += 2;
            u16::from_be_bytes([body[at - 2], body[at - 1]])
        });
        if self.version == Version::V5 {
            let (len, len_len) = read_varint(&body[at..]);
            at += len_len + len;
        }
        Delivery {
            topic,
            payload: body[at..].to_vec(),
            qos,
            retain: packet.header & 0x01 != 0,
            dup: packet.header & 0x08 != 0,
            packet_id,
        }
    }

    /// Whether the connection still answers a PINGREQ.
    pub async fn answers_ping(&mut self) -> bool {
        self.send(&PINGREQ_PACKET).await;
        matches!(self.read(ANSWER).await, Read::Packet(p) if p.kind() == PINGRESP)
    }

    /// Sends DISCONNECT and closes the socket.
    pub async fn disconnect(mut self) {
        self.send(&DISCONNECT_PACKET).await;
        let _ = self.socket.shutdown().await;
    }
}
