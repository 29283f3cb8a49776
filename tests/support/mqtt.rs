//! A raw MQTT 3.1.1 and MQTT 5 client for tests that speak to a broker byte by byte: packets
//! built field by field (so a test can also build wrong ones), and decoded just enough to
//! check what a broker answers. Every read has a deadline; nothing sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw client waits for one answer from the broker.
pub const ANSWER: Duration = Duration::from_secs(10);

/// The protocol level a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311 = 4,
    V5 = 5,
}

// Control packet types (the high nibble of a packet's first byte).
pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

// MQTT 5 property identifiers used here.
pub const SESSION_EXPIRY: u8 = 0x11;
pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
pub const WILL_DELAY: u8 = 0x18;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// A last will.
#[derive(Debug, Clone, Copy)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a str,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Will Delay Interval, in seconds.
    pub delay: Option<u32>,
}

impl<'a> Will<'a> {
    /// A QoS 0, not retained will without a delay.
    pub fn new(topic: &'a str, payload: &'a str) -> Will<'a> {
        Will {
            topic,
            payload,
            qos: 0,
            retain: false,
            delay: None,
        }
    }
}

/// A CONNECT, built field by field.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub version: Version,
    pub client_id: &'a str,
    pub keep_alive: u16,
    /// Clean Session (3.1.1) or Clean Start (5).
    pub clean: bool,
    pub will: Option<Will<'a>>,
    /// MQTT 5 Session Expiry Interval, in seconds.
    pub session_expiry: Option<u32>,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub maximum_packet_size: Option<u32>,
    /// Sent instead of the version's level when set (to test a bad one).
    pub protocol_level: Option<u8>,
    /// Extra bits or'ed into the connect flags (to test the reserved bit).
    pub extra_flags: u8,
}

impl<'a> Connect<'a> {
    /// A clean CONNECT of `version` with a keep alive of 30 s.
    pub fn new(version: Version, client_id: &'a str) -> Connect<'a> {
        Connect {
            version,
            client_id,
            keep_alive: 30,
            clean: true,
            will: None,
            session_expiry: None,
            maximum_packet_size: None,
            protocol_level: None,
            extra_flags: 0,
        }
    }

    pub fn keep_alive(mut self, seconds: u16) -> Self {
        self.keep_alive = seconds;
        self
    }

    /// Clean Session 0 (3.1.1) or Clean Start 0 (5).
    pub fn persistent(mut self) -> Self {
        self.clean = false;
        self
    }

    pub fn will(mut self, will: Will<'a>) -> Self {
        self.will = Some(will);
        self
    }

    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.session_expiry = Some(seconds);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut flags = self.extra_flags;
        if self.clean {
            flags |= 0x02;
        }
        let mut body = Vec::new();
        put_str("MQTT", &mut body);
        body.push(self.protocol_level.unwrap_or(self.version as u8));
        let mut payload = Vec::new();
        put_str(self.client_id, &mut payload);
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
            if self.version == Version::V5 {
                let mut properties = Vec::new();
                if let Some(delay) = will.delay {
                    put_u32_property(WILL_DELAY, delay, &mut properties);
                }
                put_properties(&properties, &mut payload);
            }
            put_str(will.topic, &mut payload);
            put_str(will.payload, &mut payload);
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.version == Version::V5 {
            let mut properties = Vec::new();
            if let Some(expiry) = self.session_expiry {
                put_u32_property(SESSION_EXPIRY, expiry, &mut properties);
            }
            if let Some(size) = self.maximum_packet_size {
                put_u32_property(MAXIMUM_PACKET_SIZE, size, &mut properties);
            }
            put_properties(&properties, &mut body);
        }
        body.extend_from_slice(&payload);
        framed(CONNECT << 4, &body)
    }
}

/// A PUBLISH, built field by field.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Ignored at QoS 0.
    pub packet_id: u16,
}

impl<'a> Publish<'a> {
    /// A QoS 0, not retained PUBLISH.
    pub fn new(topic: &'a str, payload: &'a [u8]) -> Publish<'a> {
        Publish {
            topic,
            payload,
            qos: 0,
            retain: false,
            dup: false,
            packet_id: 1,
        }
    }

    pub fn qos(mut self, qos: u8, packet_id: u16) -> Self {
        self.qos = qos;
        self.packet_id = packet_id;
        self
    }

    pub fn retain(mut self) -> Self {
        self.retain = true;
        self
    }

    pub fn encode(&self, version: Version) -> Vec<u8> {
        let mut header = (PUBLISH << 4) | (self.qos << 1);
        if self.retain {
            header |= 0x01;
        }
        if self.dup {
            header |= 0x08;
        }
        let mut body = Vec::new();
        put_str(self.topic, &mut body);
        if self.qos > 0 {
            body.extend_from_slice(&self.packet_id.to_be_bytes());
        }
        if version == Version::V5 {
            put_properties(&[], &mut body);
        }
        body.extend_from_slice(self.payload);
        framed(header, &body)
    }
}

/// A SUBSCRIBE of `filters`, each with its options byte (the requested QoS, and in MQTT 5
/// the subscription options).
pub fn subscribe(version: Version, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version == Version::V5 {
        put_properties(&[], &mut body);
    }
    for (filter, options) in filters {
        put_str(filter, &mut body);
        body.push(*options);
    }
    framed((SUBSCRIBE << 4) | 0x02, &body)
}

/// An UNSUBSCRIBE of `filters`.
pub fn unsubscribe(version: Version, packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version == Version::V5 {
        put_properties(&[], &mut body);
    }
    for filter in filters {
        put_str(filter, &mut body);
    }
    framed((UNSUBSCRIBE << 4) | 0x02, &body)
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP (with the flags each must have) for `packet_id`, in
/// the short form both versions accept (MQTT 5: reason code 0 and no properties omitted).
pub fn ack(kind: u8, packet_id: u16) -> Vec<u8> {
    let flags = if kind == PUBREL { 0x02 } else { 0x00 };
    framed((kind << 4) | flags, &packet_id.to_be_bytes())
}

pub const PINGREQ_PACKET: [u8; 2] = [PINGREQ << 4, 0x00];
/// DISCONNECT; in MQTT 5 the short form means reason code 0 (normal disconnection).
pub const DISCONNECT_PACKET: [u8; 2] = [DISCONNECT << 4, 0x00];

pub fn put_str(text: &str, out: &mut Vec<u8>) {
    let len = u16::try_from(text.len()).expect("a short string");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_u32_property(id: u8, value: u32, out: &mut Vec<u8>) {
    out.push(id);
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_properties(properties: &[u8], out: &mut Vec<u8>) {
    put_varint(properties.len(), out);
    out.extend_from_slice(properties);
}

fn put_varint(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return;
        }
    }
}

/// A packet with first byte `header` around `body`.
pub fn framed(header: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![header];
    put_varint(body.len(), &mut packet);
    packet.extend_from_slice(body);
    packet
}

/// One packet as received: its first byte and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub header: u8,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }

    /// The packet identifier that starts the body of acknowledgements and (UN)SUBSCRIBEs.
    pub fn packet_id(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
}

/// A decoded CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// The 3.1.1 return code or the MQTT 5 reason code.
    pub code: u8,
    /// MQTT 5 properties, undecoded.
    pub properties: Vec<u8>,
}

impl ConnAck {
    /// The MQTT 5 string property `id`, if present.
    pub fn string_property(&self, id: u8) -> Option<String> {
        find_property(&self.properties, id).map(|value| {
            let len = usize::from(u16::from_be_bytes([value[0], value[1]]));
            String::from_utf8_lossy(&value[2..2 + len]).into_owned()
        })
    }
}

/// A decoded PUBLISH as a broker delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
}

impl Delivery {
    pub fn payload(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The value bytes of property `id` in an MQTT 5 property list (the value runs to the end of
/// the list: callers read only as much as the property's type holds).
fn find_property(mut properties: &[u8], id: u8) -> Option<&[u8]> {
    while let Some((&this, rest)) = properties.split_first() {
        if this == id {
            return Some(rest);
        }
        let len = match this {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0B => varint_len(rest),
            0x26 => {
                let key = 2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                key + 2 + usize::from(u16::from_be_bytes([rest[key], rest[key + 1]]))
            }
            _ => 2 + usize::from(u16::from_be_bytes([rest[0], rest[1]])),
        };
        properties = &rest[len..];
    }
    None
}

fn varint_len(bytes: &[u8]) -> usize {
    bytes.iter().position(|b| b & 0x80 == 0).expect("a varint") + 1
}

/// Reads a variable byte integer; returns it and the bytes it took.
fn read_varint(bytes: &[u8]) -> (usize, usize) {
    let len = varint_len(bytes);
    let value = bytes[..len]
        .iter()
        .rev()
        .fold(0, |value, byte| (value << 7) | usize::from(byte & 0x7F));
    (value, len)
}

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
