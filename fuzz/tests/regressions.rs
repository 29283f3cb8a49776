//! Inputs the fuzzer found that crashed iotmon, each checked to be handled now.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use iotmon_fuzz::driver::{self, check_one};
use iotmon_fuzz::mqtt::Version;
use iotmon_fuzz::surfaces::config::ConfigFile;
use iotmon_fuzz::surfaces::listener::{self, Listener};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Protocol};

/// A packet: fixed header byte, remaining length (short), body.
fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1, u8::try_from(body.len()).expect("a short body")];
    out.extend_from_slice(body);
    out
}

fn string(value: &str) -> Vec<u8> {
    let mut out = u16::try_from(value.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(value.as_bytes());
    out
}

/// CONNECT (MQTT `level`, clean session) for `client_id`, with a last will on `will_topic`.
fn connect_with_will(level: u8, client_id: &str, will_topic: &str) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend([level, 0b0000_0110, 0, 60]);
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id));
    if level == 5 {
        body.push(0); // no will properties
    }
    body.extend(string(will_topic));
    body.extend(string("offline"));
    packet(0x10, &body)
}

fn subscribe(level: u8, filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    if level == 5 {
        body.push(0);
    }
    body.extend(string(filter));
    body.push(0);
    packet(0x82, &body)
}

#[test]
fn an_mqtt5_client_sending_a_connack_or_unsuback_is_refused_without_a_panic() {
    for bytes in [&[0x20u8, 3, 0, 0, 0][..], &[0xb0, 4, 0, 1, 0, 0][..]] {
        let read = V5.read_mut(&mut BytesMut::from(bytes), 1024);
        assert!(
            matches!(read, Ok(Packet::ConnAck(..) | Packet::UnsubAck(..))),
            "{read:?}"
        );
    }
    // The same over a socket: the broker goes on serving.
    let mut listener = Listener::start();
    let mut input = vec![1]; // the MQTT 5 listener
    input.extend(packet(0xb0, &[0, 1, 0, 0]));
    assert_eq!(check_one(&mut listener, &input), Ok(()));
}

#[test]
fn an_mqtt5_disconnect_with_a_reason_and_no_properties_is_written_whole() {
    let disconnect = Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::DisconnectWithWillMessage,
        },
        None,
    );
    let mut written = BytesMut::new();
    V5.write(disconnect.clone(), &mut written).expect("written");
    assert_eq!(&written[..], &[0xe0, 2, 0x04, 0]);
    assert_eq!(V5.read_mut(&mut written, 1024), Ok(disconnect));
}

#[test]
fn a_topic_starting_with_a_multibyte_character_does_not_stop_the_router() {
    assert!(rumqttd::protocol::matches("é/ü", "#"));
    assert!(rumqttd::protocol::matches("é/ü", "é/+"));
    assert!(!rumqttd::protocol::matches("$SYS/x", "#"));
    // A last will on such a topic, published when the connection ends without DISCONNECT,
    // was matched against the router's filters on the router thread.
    let mut listener = Listener::start();
    let mut input = vec![0];
    input.extend(connect_with_will(4, "fuzz-a", "é/ü"));
    input.extend(subscribe(4, "#"));
    assert_eq!(check_one(&mut listener, &input), Ok(()));
}

#[test]
fn a_client_subscribed_to_a_filter_and_a_shared_subscription_of_it_does_not_stop_the_router() {
    let mut listener = Listener::start();
    for (selector, level) in [(0u8, 4u8), (1, 5)] {
        let mut input = vec![selector];
        input.extend(connect_with_will(level, "fuzz-b", "status/a/d1"));
        input.extend(subscribe(level, "a"));
        input.extend(subscribe(level, "$share/g/a"));
        input.extend(subscribe(level, "$share/h/a"));
        assert_eq!(
            check_one(&mut listener, &input),
            Ok(()),
            "MQTT level {level}"
        );
    }
}

#[test]
fn dashboard_settings_that_would_panic_at_start_are_refused_by_validation() {
    let mut config = ConfigFile::default();
    for text in [
        "[dashboard]\ntick = \"0s\"\n",
        "[dashboard]\nheartbeat = \"0s\"\n",
        "[dashboard]\nviewer_queue = 0\n",
        "[dashboard]\nviewer_queue = 2305843009213693952\n",
        "[dashboard]\nmax_viewers = 2305843009213693952\n",
    ] {
        assert_eq!(check_one(&mut config, text.as_bytes()), Ok(()), "{text}");
    }
}

/// Reads from `stream` until a packet whose first byte satisfies `wanted` arrives; its first
/// byte, or `None` at the end of the stream or the deadline.
fn read_until(stream: &mut TcpStream, wanted: impl Fn(u8) -> bool) -> Option<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while Instant::now() < deadline {
        let read = match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(read) => read,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                continue
            }
            Err(_) => return None,
        };
        seen.extend_from_slice(&chunk[..read]);
        // Walk the complete packets seen so far.
        let mut at = 0;
        while at + 2 <= seen.len() {
            let (mut length, mut shift, mut header) = (0usize, 0, 1);
            while let Some(byte) = seen.get(at + header) {
                length |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                header += 1;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if at + header + length > seen.len() {
                break;
            }
            if wanted(seen[at]) {
                return Some(seen[at]);
            }
            at += header + length;
        }
        seen.drain(..at);
    }
    None
}

fn session(listener: &Listener, version: Version, connect: &[u8]) -> TcpStream {
    let mut stream = listener::connect(listener.addr(version)).expect("connected");
    stream.write_all(connect).expect("CONNECT sent");
    assert_eq!(
        read_until(&mut stream, |b| b == 0x20),
        Some(0x20),
        "CONNACK"
    );
    stream
}

fn plain_connect(level: u8, client_id: &str, clean: bool) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend([level, if clean { 2 } else { 0 }, 0, 60]);
    if level == 5 {
        body.push(0);
    }
    body.extend(string(client_id));
    packet(0x10, &body)
}

#[test]
fn a_message_published_with_mqtt5_properties_reaches_an_mqtt_3_1_1_subscriber() {
    let listener = Listener::start();
    let (panics_before, _) = driver::other_panics();
    let mut subscriber = session(&listener, Version::V4, &plain_connect(4, "sub-v4", true));
    subscriber
        .write_all(&subscribe(4, "with/props"))
        .expect("SUBSCRIBE sent");
    assert_eq!(
        read_until(&mut subscriber, |b| b == 0x90),
        Some(0x90),
        "SUBACK"
    );
    let mut publisher = session(&listener, Version::V5, &plain_connect(5, "pub-v5", true));
    // PUBLISH QoS 0 with a content type property (3, "a/b").
    let mut body = string("with/props");
    body.extend([6, 3]);
    body.extend(string("a/b"));
    body.extend(b"payload");
    publisher
        .write_all(&packet(0x30, &body))
        .expect("PUBLISH sent");
    assert_eq!(
        read_until(&mut subscriber, |b| b >> 4 == 3),
        Some(0x30),
        "the MQTT 3.1.1 subscriber receives the message"
    );
    assert_eq!(
        driver::other_panics().0,
        panics_before,
        "no panic in the broker"
    );
}

#[test]
fn a_persistent_session_with_a_shared_subscription_and_unacknowledged_messages_can_leave() {
    let listener = Listener::start();
    let (panics_before, _) = driver::other_panics();
    let mut client = session(
        &listener,
        Version::V4,
        &plain_connect(4, "persistent", false),
    );
    let mut sub = vec![0, 1];
    sub.extend(string("$share/g/jobs"));
    sub.push(1); // QoS 1
    client
        .write_all(&packet(0x82, &sub))
        .expect("SUBSCRIBE sent");
    assert_eq!(read_until(&mut client, |b| b == 0x90), Some(0x90), "SUBACK");
    let mut publish = string("jobs");
    publish.extend([0, 7]);
    publish.extend(b"job");
    client
        .write_all(&packet(0x32, &publish))
        .expect("PUBLISH sent");
    // The message comes back (QoS 1) and is left unacknowledged when the client goes.
    assert!(
        read_until(&mut client, |b| b >> 4 == 3).is_some(),
        "PUBLISH delivered"
    );
    drop(client);
    // The router handles the disconnection; a new client must still be served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while driver::other_panics().0 == panics_before && Instant::now() < deadline {
        if listener.probe(Version::V4).is_ok() {
            break;
        }
    }
    assert_eq!(listener.probe(Version::V4), Ok(()));
    assert_eq!(
        driver::other_panics().0,
        panics_before,
        "no panic in the broker"
    );
}
