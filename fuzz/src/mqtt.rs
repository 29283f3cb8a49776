//! Well-formed MQTT 3.1.1 and MQTT 5 packets, framed with `iotmon_probe::mqtt` (not with the
//! codec under test), with random fields: the seeds that the mutations start from.

use rand::rngs::SmallRng;
use rand::Rng;

use iotmon_probe::mqtt::{framed, put_varint};

use crate::mutate::pick;

/// Protocol version of the packets to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// Client ids the packets use: few, so the broker's per-client maps do not grow with the run.
const CLIENT_IDS: [&str; 6] = ["", "d1", "d2", "fuzz", "sensor-0042", "x/y#+"];
const TOPICS: [&str; 12] = [
    "sensors/a/d1",
    "sensors/site/floor/room/d2",
    "status/a/d1",
    "a",
    "",
    "/",
    "a//b",
    "$SYS/x",
    "sensors/+/d1",
    "sensors/#",
    "é/ü",
    "iotmon/live/a/d1",
];
const FILTERS: [&str; 12] = [
    "sensors/#",
    "#",
    "+",
    "+/+/#",
    "a/#/b",
    "a+",
    "$share/g/sensors/#",
    "$share/g/#",
    "$share//x",
    "$SYS/#",
    "",
    "status/+/d1",
];

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, value: &[u8]) {
    put_u16(out, value.len().min(usize::from(u16::MAX)) as u16);
    out.extend_from_slice(value);
}

/// Appends a packet: the fixed header `byte1` and the remaining length, then `body`.
fn put_packet(out: &mut Vec<u8>, byte1: u8, body: &[u8]) {
    out.extend_from_slice(&framed(byte1, body));
}

/// A CONNECT for `client_id`, with the other fields chosen at random when `rng` is given.
pub fn connect(version: Version, client_id: &str, rng: Option<&mut SmallRng>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(if version == Version::V5 { 5 } else { 4 });
    let (mut flags, keep_alive) = (0b10, 60);
    let mut will = None;
    let mut login = None;
    let mut rng = rng;
    if let Some(rng) = rng.as_deref_mut() {
        flags = if rng.random_bool(0.7) { 0b10 } else { 0 };
        if rng.random_bool(0.3) {
            let qos = rng.random_range(0..3u8);
            flags |= 0b100 | (qos << 3) | if rng.random_bool(0.3) { 0x20 } else { 0 };
            will = Some((pick(rng, &TOPICS), b"offline".as_slice()));
        }
        if rng.random_bool(0.3) {
            flags |= 0xc0;
            login = Some(("user", "pass"));
        }
    }
    body.push(flags);
    let keep_alive = rng
        .as_deref_mut()
        .map_or(keep_alive, |rng| *pick(rng, &[&0u16, &1, &60, &u16::MAX]));
    put_u16(&mut body, keep_alive);
    if version == Version::V5 {
        properties(&mut body, rng.as_deref_mut());
    }
    put_str(&mut body, client_id.as_bytes());
    if let Some((topic, message)) = will {
        if version == Version::V5 {
            properties(&mut body, rng);
        }
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, message);
    }
    if let Some((user, password)) = login {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, password.as_bytes());
    }
    let mut out = Vec::new();
    put_packet(&mut out, 0x10, &body);
    out
}

/// A DISCONNECT.
pub fn disconnect() -> Vec<u8> {
    vec![0xe0, 0]
}

/// A random well-formed packet of any type (client-to-server mostly, but also the
/// server-to-client ones, which a peer may send anyway).
pub fn any_packet(rng: &mut SmallRng, version: Version, out: &mut Vec<u8>) {
    let v5 = version == Version::V5;
    let mut body = Vec::new();
    let byte1 = match rng.random_range(0..14) {
        0 => {
            let client_id = pick(rng, &CLIENT_IDS);
            out.extend(connect(version, client_id, Some(rng)));
            return;
        }
        1..=4 => {
            let qos = rng.random_range(0..3u8);
            put_str(&mut body, pick(rng, &TOPICS).as_bytes());
            if qos > 0 {
                put_u16(&mut body, rng.random_range(0..4));
            }
            if v5 {
                properties(&mut body, Some(rng));
            }
            let payload = pick(rng, &[r#"{"t":21.5}"#, "online", "", "x"]);
            body.extend_from_slice(payload.as_bytes());
            let flags = (qos << 1)
                | u8::from(rng.random_bool(0.2))
                | if rng.random_bool(0.1) { 8 } else { 0 };
            0x30 | flags
        }
        5 => {
            put_u16(&mut body, rng.random_range(0..4));
            if v5 {
                properties(&mut body, Some(rng));
            }
            for _ in 0..rng.random_range(1..4) {
                put_str(&mut body, pick(rng, &FILTERS).as_bytes());
                body.push(
                    rng.random_range(0..3) | if v5 { rng.random_range(0..4) << 2 } else { 0 },
                );
            }
            0x82
        }
        6 => {
            put_u16(&mut body, rng.random_range(0..4));
            if v5 {
                properties(&mut body, Some(rng));
            }
            put_str(&mut body, pick(rng, &FILTERS).as_bytes());
            0xa2
        }
        7..=9 => {
            let (byte1, _) = pick(rng, &[&(0x40u8, ()), &(0x50, ()), &(0x62, ()), &(0x70, ())]);
            put_u16(&mut body, rng.random_range(0..4));
            if v5 && rng.random_bool(0.5) {
                body.push(*pick(rng, &[&0u8, &0x10, &0x80, &0x92]));
                properties(&mut body, Some(rng));
            }
            *byte1
        }
        10 => 0xc0,
        11 => {
            if v5 && rng.random_bool(0.5) {
                body.push(*pick(rng, &[&0u8, &4, &0x80, &0x8e]));
                properties(&mut body, Some(rng));
            }
            0xe0
        }
        12 => {
            // CONNACK, SUBACK, UNSUBACK, PINGRESP: the server's packets, sent to it.
            let (byte1, shape) = *pick(rng, &[&(0x20u8, 0u8), &(0x90, 1), &(0xb0, 1), &(0xd0, 2)]);
            match shape {
                0 => body.extend_from_slice(&[0, rng.random_range(0..6)]),
                1 => put_u16(&mut body, rng.random_range(0..4)),
                _ => {}
            }
            if shape != 2 {
                if v5 {
                    properties(&mut body, Some(rng));
                }
                if shape == 1 {
                    body.push(*pick(rng, &[&0u8, &1, &2, &0x80]));
                }
            }
            byte1
        }
        _ => {
            // A random packet type and flags, with a random body.
            let count = rng.random_range(0..12);
            body.extend(crate::mutate::random_bytes(rng, count));
            rng.random()
        }
    };
    put_packet(out, byte1, &body);
}

/// MQTT 5 properties: a random set of well-typed ones, or none.
fn properties(out: &mut Vec<u8>, rng: Option<&mut SmallRng>) {
    let mut props = Vec::new();
    if let Some(rng) = rng {
        for _ in 0..rng.random_range(0..4) {
            let id: u8 = *pick(
                rng,
                &[
                    &1u8, &2, &3, &8, &9, &11, &17, &18, &19, &21, &22, &23, &24, &25, &26, &28,
                    &31, &33, &34, &35, &36, &37, &38, &39, &40, &41, &42,
                ],
            );
            props.push(id);
            match id {
                1 | 23 | 25 | 36 | 37 | 40 | 41 | 42 => props.push(rng.random_range(0..3)),
                19 | 33 | 34 | 35 => put_u16(&mut props, *pick(rng, &[&0u16, &1, &10, &u16::MAX])),
                2 | 17 | 24 | 39 => {
                    props.extend_from_slice(&pick(rng, &[&0u32, &1, &u32::MAX]).to_be_bytes())
                }
                11 => put_varint(*pick(rng, &[&0usize, &1, &268_435_455]), &mut props),
                38 => {
                    put_str(&mut props, b"k");
                    put_str(&mut props, b"v");
                }
                _ => put_str(&mut props, pick(rng, &["", "a/b", "text/plain"]).as_bytes()),
            }
        }
    }
    put_varint(props.len(), out);
    out.extend_from_slice(&props);
}

/// Tokens the mutations may insert into MQTT input.
pub const DICTIONARY: [&[u8]; 10] = [
    b"\x00\x04MQTT\x04",
    b"\x00\x04MQTT\x05",
    b"\xff\xff\xff\x7f",
    b"\x80\x80\x80\x80\x01",
    b"\xc0\x00",
    b"\xe0\x00",
    b"$share/",
    b"#",
    b"+/",
    b"\x26\x00\x01k\x00\x01v",
];
