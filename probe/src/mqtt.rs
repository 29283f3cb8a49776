//! MQTT 3.1.1 and 5 packets by hand, for the tools and tests that speak to a broker byte by
//! byte: packets built field by field (so a test can also build wrong ones) and encoded
//! without rumqttc's per-packet allocations (the broker bench encodes each device's PUBLISH
//! once and patches its packet id), packet framing found without decoding (all a counting
//! subscriber needs), and what a broker answers decoded just enough to check it. rumqttc's
//! own decoder checks this codec in the tests.

use thiserror::Error;

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
        let mut packet = Vec::new();
        self.encode_into(&mut packet);
        packet
    }

    /// Appends the packet to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
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
        frame_into(CONNECT << 4, &body, out);
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
        let mut packet = Vec::new();
        self.encode_into(version, &mut packet);
        packet
    }

    /// Appends the packet to `out` without an intermediate buffer (the broker bench encodes
    /// each device's PUBLISH once); at QoS > 0, returns where its packet id sits in `out`, so
    /// a copy can be given a new id with [`set_packet_id`].
    pub fn encode_into(&self, version: Version, out: &mut Vec<u8>) -> Option<usize> {
        let mut header = (PUBLISH << 4) | (self.qos << 1);
        if self.retain {
            header |= 0x01;
        }
        if self.dup {
            header |= 0x08;
        }
        let id_len = if self.qos > 0 { 2 } else { 0 };
        let properties_len = usize::from(version == Version::V5);
        out.push(header);
        put_varint(
            2 + self.topic.len().min(usize::from(u16::MAX))
                + id_len
                + properties_len
                + self.payload.len(),
            out,
        );
        put_str(self.topic, out);
        let id_at = (self.qos > 0).then(|| {
            let at = out.len();
            out.extend_from_slice(&self.packet_id.to_be_bytes());
            at
        });
        if version == Version::V5 {
            put_properties(&[], out);
        }
        out.extend_from_slice(self.payload);
        id_at
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
    let mut packet = Vec::with_capacity(4);
    ack_into(kind, packet_id, &mut packet);
    packet
}

/// Appends an acknowledgement (see [`ack`]) to `out`.
pub fn ack_into(kind: u8, packet_id: u16, out: &mut Vec<u8>) {
    let flags = if kind == PUBREL { 0x02 } else { 0x00 };
    out.extend_from_slice(&[(kind << 4) | flags, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub const PINGREQ_PACKET: [u8; 2] = [PINGREQ << 4, 0x00];
/// DISCONNECT; in MQTT 5 the short form means reason code 0 (normal disconnection).
pub const DISCONNECT_PACKET: [u8; 2] = [DISCONNECT << 4, 0x00];

/// Appends an MQTT string: its length, then its bytes. MQTT strings hold at most 65,535
/// bytes; a longer text is cut there (and the packet shows it).
pub fn put_str(text: &str, out: &mut Vec<u8>) {
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

fn put_u32_property(id: u8, value: u32, out: &mut Vec<u8>) {
    out.push(id);
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_properties(properties: &[u8], out: &mut Vec<u8>) {
    put_varint(properties.len(), out);
    out.extend_from_slice(properties);
}

/// Appends a variable byte integer (remaining lengths, property lengths).
pub fn put_varint(mut value: usize, out: &mut Vec<u8>) {
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
    let mut packet = Vec::with_capacity(body.len() + 5);
    frame_into(header, body, &mut packet);
    packet
}

fn frame_into(header: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(header);
    put_varint(body.len(), out);
    out.extend_from_slice(body);
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

/// Bytes a variable byte integer at the start of `bytes` takes (all of them when it does not
/// end).
fn varint_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(bytes.len(), |at| at + 1)
}

/// Reads a variable byte integer; returns it and the bytes it took.
pub fn read_varint(bytes: &[u8]) -> (usize, usize) {
    let len = varint_len(bytes);
    let value = bytes[..len]
        .iter()
        .rev()
        .fold(0, |value, byte| (value << 7) | usize::from(byte & 0x7F));
    (value, len)
}

/// A malformed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("remaining length longer than four bytes")]
    LengthTooLong,
}

/// One packet's framing, found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Packet type, 1–14.
    pub kind: u8,
    /// The low nibble of the first byte (for PUBLISH: dup, QoS, retain).
    pub flags: u8,
    /// Bytes of fixed header (1 + length bytes); the body starts here.
    pub header_len: usize,
    /// Bytes of the whole packet.
    pub len: usize,
}

impl Frame {
    /// A PUBLISH's QoS.
    pub fn qos(&self) -> u8 {
        (self.flags >> 1) & 0b11
    }
}

/// The packet at the start of `buf`, once all of it has arrived: `Ok(None)` while the
/// fixed header or the body is still incomplete.
///
/// # Errors
/// The remaining length does not end within four bytes.
pub fn frame(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (index, &byte) in buf[1..].iter().take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            let header_len = index + 2;
            let len = header_len + remaining;
            return Ok((buf.len() >= len).then_some(Frame {
                kind: first >> 4,
                flags: first & 0x0f,
                header_len,
                len,
            }));
        }
    }
    if buf.len() >= 5 {
        Err(FrameError::LengthTooLong)
    } else {
        Ok(None)
    }
}

/// A CONNACK's return code (0: accepted), if `packet` is a whole CONNACK.
pub fn connack_code(packet: &[u8]) -> Option<u8> {
    match frame(packet) {
        Ok(Some(frame)) if frame.kind == CONNACK && frame.len == 4 => Some(packet[3]),
        _ => None,
    }
}

/// Whether a SUBACK (for one filter) grants the subscription: its return code is not 0x80.
pub fn suback_granted(packet: &[u8], frame: &Frame) -> bool {
    frame.kind == SUBACK
        && packet
            .get(frame.header_len + 2)
            .is_some_and(|&code| code != 0x80)
}

/// The packet id of a QoS > 0 PUBLISH: after the topic.
pub fn publish_packet_id(frame: &Frame, packet: &[u8]) -> Option<u16> {
    let body = &packet[frame.header_len..];
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let at = 2 + topic_len;
    Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
}

/// Overwrites the packet id at `at` (from [`Publish::encode_into`]).
pub fn set_packet_id(packet: &mut [u8], at: usize, packet_id: u16) {
    packet[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{
        ConnAck as RumqttcConnAck, ConnectReturnCode, Packet as RumqttcPacket, PubAck,
        Publish as RumqttcPublish, SubAck, SubscribeReasonCode,
    };
    use rumqttc::mqttbytes::QoS;

    use super::*;

    #[test]
    fn finds_the_packet_id_of_a_qos1_publish() {
        let mut packet = Vec::new();
        Publish::new("sensors/a/b", b"{}")
            .qos(1, 4242)
            .encode_into(Version::V311, &mut packet);
        let frame = frame(&packet).expect("valid").expect("whole");
        assert_eq!(publish_packet_id(&frame, &packet), Some(4242));
    }

    /// Decodes `bytes` with rumqttc, checking it is exactly one packet.
    fn decode(bytes: &[u8]) -> RumqttcPacket {
        let mut stream = BytesMut::from(bytes);
        let packet = RumqttcPacket::read(&mut stream, 1 << 20).expect("rumqttc decodes it");
        assert!(stream.is_empty(), "one whole packet");
        packet
    }

    #[test]
    fn connect_decodes_with_rumqttc() {
        let mut out = Vec::new();
        Connect::new(Version::V311, "bench-7")
            .keep_alive(3600)
            .encode_into(&mut out);
        let RumqttcPacket::Connect(connect) = decode(&out) else {
            panic!("not a CONNECT")
        };
        assert_eq!(connect.client_id, "bench-7");
        assert_eq!(connect.keep_alive, 3600);
        assert!(connect.clean_session);
        assert!(connect.login.is_none() && connect.last_will.is_none());
    }

    #[test]
    fn subscribe_and_puback_decode_with_rumqttc() {
        let mut out = Vec::new();
        out.extend(subscribe(Version::V311, 1, &[("sensors/#", 0)]));
        let RumqttcPacket::Subscribe(subscribe) = decode(&out) else {
            panic!("not a SUBSCRIBE")
        };
        assert_eq!(subscribe.pkid, 1);
        assert_eq!(subscribe.filters.len(), 1);
        assert_eq!(subscribe.filters[0].path, "sensors/#");
        assert_eq!(subscribe.filters[0].qos, QoS::AtMostOnce);
        out.clear();
        ack_into(PUBACK, 513, &mut out);
        assert_eq!(decode(&out), RumqttcPacket::PubAck(PubAck::new(513)));
    }

    #[test]
    fn publishes_decode_with_rumqttc_at_both_qos_and_every_length_width() {
        for qos in [0, 1] {
            // 1-, 2- and 3-byte remaining lengths.
            for payload_len in [10, 200, 20_000] {
                let payload = vec![b'x'; payload_len];
                let mut out = Vec::new();
                let id_at = Publish::new("sensors/g1/d1", &payload)
                    .qos(qos, 1)
                    .encode_into(Version::V311, &mut out);
                assert_eq!(id_at.is_some(), qos == 1);
                if let Some(at) = id_at {
                    set_packet_id(&mut out, at, 0xbeef);
                }
                let RumqttcPacket::Publish(publish) = decode(&out) else {
                    panic!("not a PUBLISH")
                };
                assert_eq!(publish.topic, "sensors/g1/d1");
                assert_eq!(publish.payload.as_ref(), payload.as_slice());
                assert_eq!(publish.qos as u8, qos);
                assert_eq!(publish.pkid, if qos == 1 { 0xbeef } else { 0 });
                let frame = frame(&out).expect("valid").expect("whole");
                assert_eq!(
                    (frame.kind, frame.qos(), frame.len),
                    (PUBLISH, qos, out.len())
                );
            }
        }
    }

    /// rumqttc's encoding of packets a broker sends.
    fn from_broker() -> Vec<(Vec<u8>, u8)> {
        let mut packets = Vec::new();
        let mut push = |write: &dyn Fn(&mut BytesMut), kind| {
            let mut buf = BytesMut::new();
            write(&mut buf);
            packets.push((buf.to_vec(), kind));
        };
        push(
            &|buf| {
                RumqttcConnAck::new(ConnectReturnCode::Success, false)
                    .write(buf)
                    .expect("encodes");
            },
            CONNACK,
        );
        push(
            &|buf| {
                SubAck::new(7, vec![SubscribeReasonCode::Success(QoS::AtMostOnce)])
                    .write(buf)
                    .expect("encodes");
            },
            SUBACK,
        );
        push(
            &|buf| {
                PubAck::new(300).write(buf).expect("encodes");
            },
            PUBACK,
        );
        for len in [5, 300, 40_000] {
            push(
                &|buf| {
                    RumqttcPublish::new("sensors/a/b", QoS::AtMostOnce, vec![1; len])
                        .write(buf)
                        .expect("encodes");
                },
                PUBLISH,
            );
        }
        packets
    }

    #[test]
    fn frames_what_rumqttc_encodes() {
        for (packet, kind) in from_broker() {
            let frame = frame(&packet).expect("valid").expect("whole");
            assert_eq!(frame.kind, kind);
            assert_eq!(frame.len, packet.len());
        }
        let mut connack = BytesMut::new();
        RumqttcConnAck::new(ConnectReturnCode::NotAuthorized, false)
            .write(&mut connack)
            .expect("encodes");
        assert_eq!(connack_code(&connack), Some(5));
        for (code, granted) in [
            (SubscribeReasonCode::Success(QoS::AtMostOnce), true),
            (SubscribeReasonCode::Success(QoS::AtLeastOnce), true),
            (SubscribeReasonCode::Failure, false),
        ] {
            let mut suback = BytesMut::new();
            SubAck::new(7, vec![code])
                .write(&mut suback)
                .expect("encodes");
            let frame = frame(&suback).expect("valid").expect("whole");
            assert_eq!(suback_granted(&suback, &frame), granted, "{code:?}");
        }
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let stream: Vec<u8> = from_broker().into_iter().flat_map(|(p, _)| p).collect();
        // Every prefix that ends inside a packet is incomplete, never an error.
        let mut start = 0;
        let mut kinds = Vec::new();
        while start < stream.len() {
            let whole = frame(&stream[start..]).expect("valid").expect("whole");
            for cut in start..start + whole.len {
                assert_eq!(frame(&stream[start..cut]), Ok(None), "cut at {cut}");
            }
            kinds.push(whole.kind);
            start += whole.len;
        }
        assert_eq!(start, stream.len());
        assert_eq!(kinds, [CONNACK, SUBACK, PUBACK, PUBLISH, PUBLISH, PUBLISH]);
    }

    #[test]
    fn a_five_byte_length_is_an_error() {
        assert_eq!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(FrameError::LengthTooLong)
        );
        assert_eq!(frame(&[0x30, 0xff, 0xff]), Ok(None));
    }
}
