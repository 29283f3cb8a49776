//! Inputs the fuzzer found that crashed iotmon, each checked to be handled now.

use bytes::BytesMut;
use iotmon_fuzz::driver::check_one;
use iotmon_fuzz::surfaces::config::ConfigFile;
use iotmon_fuzz::surfaces::listener::Listener;
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
