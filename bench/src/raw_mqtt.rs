//! A minimal MQTT 3.1.1 codec for the broker bench's load generator: encoders for the four
//! packets it sends (CONNECT, SUBSCRIBE, PUBLISH, PUBACK) and a decoder of packet framing
//! only (type, flags, length), which is all a counting subscriber and an acknowledgement
//! counter need.
//!
//! Why not rumqttc's `mqttbytes`: its `Packet::read` allocates a `Bytes` and a `String` per
//! PUBLISH, and its `Publish::write` re-encodes the topic each time; the bench encodes each
//! device's PUBLISH once and patches only the packet id, and counts received packets without
//! decoding them. rumqttc's decoder checks this codec in the tests.

use thiserror::Error;

/// Packet types (the high nibble of the first byte).
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const SUBACK: u8 = 9;

/// The largest remaining length MQTT can express (four length bytes).
const MAX_REMAINING: usize = 268_435_455;

/// A malformed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum FrameError {
    #[error("remaining length longer than four bytes")]
    LengthTooLong,
}

/// One packet's framing, found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
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
pub(crate) fn frame(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
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
pub(crate) fn connack_code(packet: &[u8]) -> Option<u8> {
    match frame(packet) {
        Ok(Some(frame)) if frame.kind == CONNACK && frame.len == 4 => Some(packet[3]),
        _ => None,
    }
}

/// Whether a SUBACK (for one filter) grants the subscription: its return code is not 0x80.
pub(crate) fn suback_granted(packet: &[u8], frame: &Frame) -> bool {
    frame.kind == SUBACK
        && packet
            .get(frame.header_len + 2)
            .is_some_and(|&code| code != 0x80)
}

/// The packet id of a QoS > 0 PUBLISH: after the topic.
pub(crate) fn publish_packet_id(frame: &Frame, packet: &[u8]) -> Option<u16> {
    let body = &packet[frame.header_len..];
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let at = 2 + topic_len;
    Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
}

/// Appends a CONNECT (MQTT 3.1.1, clean session, no will, no login).
pub(crate) fn encode_connect(client_id: &str, keep_alive_secs: u16, out: &mut Vec<u8>) {
    let remaining = 10 + 2 + client_id.len();
    out.push(0x10);
    encode_length(remaining, out);
    encode_str("MQTT", out);
    out.push(4); // protocol level 3.1.1
    out.push(0b0000_0010); // clean session
    out.extend_from_slice(&keep_alive_secs.to_be_bytes());
    encode_str(client_id, out);
}

/// Appends a SUBSCRIBE to one filter.
pub(crate) fn encode_subscribe(packet_id: u16, filter: &str, qos: u8, out: &mut Vec<u8>) {
    let remaining = 2 + 2 + filter.len() + 1;
    out.push(0x82);
    encode_length(remaining, out);
    out.extend_from_slice(&packet_id.to_be_bytes());
    encode_str(filter, out);
    out.push(qos);
}

/// Appends a PUBLISH (not retained, not a duplicate); at QoS > 0, returns where its packet
/// id sits in `out`, so a copy can be given a new id with [`set_packet_id`].
pub(crate) fn encode_publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    packet_id: u16,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + id_len + payload.len();
    out.push(0x30 | (qos << 1));
    encode_length(remaining, out);
    encode_str(topic, out);
    let id_at = (qos > 0).then(|| {
        let at = out.len();
        out.extend_from_slice(&packet_id.to_be_bytes());
        at
    });
    out.extend_from_slice(payload);
    id_at
}

/// Overwrites the packet id at `at` (from [`encode_publish`]).
pub(crate) fn set_packet_id(packet: &mut [u8], at: usize, packet_id: u16) {
    packet[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
}

/// Appends a PUBACK.
pub(crate) fn encode_puback(packet_id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

fn encode_str(text: &str, out: &mut Vec<u8>) {
    // Topics, filters and client ids here are far below 64 KiB.
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

fn encode_length(mut remaining: usize, out: &mut Vec<u8>) {
    debug_assert!(remaining <= MAX_REMAINING);
    loop {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if remaining == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{
        ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    };
    use rumqttc::mqttbytes::QoS;

    use super::*;

    #[test]
    fn finds_the_packet_id_of_a_qos1_publish() {
        let mut packet = Vec::new();
        encode_publish("sensors/a/b", b"{}", 1, 4242, &mut packet);
        let frame = frame(&packet).expect("valid").expect("whole");
        assert_eq!(publish_packet_id(&frame, &packet), Some(4242));
    }

    /// Decodes `bytes` with rumqttc, checking it is exactly one packet.
    fn decode(bytes: &[u8]) -> Packet {
        let mut stream = BytesMut::from(bytes);
        let packet = Packet::read(&mut stream, 1 << 20).expect("rumqttc decodes it");
        assert!(stream.is_empty(), "one whole packet");
        packet
    }

    #[test]
    fn connect_decodes_with_rumqttc() {
        let mut out = Vec::new();
        encode_connect("bench-7", 3600, &mut out);
        let Packet::Connect(connect) = decode(&out) else {
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
        encode_subscribe(1, "sensors/#", 0, &mut out);
        let Packet::Subscribe(subscribe) = decode(&out) else {
            panic!("not a SUBSCRIBE")
        };
        assert_eq!(subscribe.pkid, 1);
        assert_eq!(subscribe.filters.len(), 1);
        assert_eq!(subscribe.filters[0].path, "sensors/#");
        assert_eq!(subscribe.filters[0].qos, QoS::AtMostOnce);
        out.clear();
        encode_puback(513, &mut out);
        assert_eq!(decode(&out), Packet::PubAck(PubAck::new(513)));
    }

    #[test]
    fn publishes_decode_with_rumqttc_at_both_qos_and_every_length_width() {
        for qos in [0, 1] {
            // 1-, 2- and 3-byte remaining lengths.
            for payload_len in [10, 200, 20_000] {
                let payload = vec![b'x'; payload_len];
                let mut out = Vec::new();
                let id_at = encode_publish("sensors/g1/d1", &payload, qos, 1, &mut out);
                assert_eq!(id_at.is_some(), qos == 1);
                if let Some(at) = id_at {
                    set_packet_id(&mut out, at, 0xbeef);
                }
                let Packet::Publish(publish) = decode(&out) else {
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
                ConnAck::new(ConnectReturnCode::Success, false)
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
                    Publish::new("sensors/a/b", QoS::AtMostOnce, vec![1; len])
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
        ConnAck::new(ConnectReturnCode::NotAuthorized, false)
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
