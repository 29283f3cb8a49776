//! A known leak the live-listener fuzzing found and that is not fixed yet: a connection that
//! ends without DISCONNECT while a message routed to it is in flight leaves about 2.5 KiB in
//! the broker. Ignored until fixed; `cargo test -p iotmon-fuzz --test vanished --
//! --ignored` shows it. In its own test binary so that no other test's broker moves the
//! process's memory meanwhile.

use std::io::{Read, Write};

use iotmon_fuzz::driver::rss_kib;
use iotmon_fuzz::mqtt::{self, Version};
use iotmon_fuzz::surfaces::listener::{self, Listener};

/// Connects as `client_id`, subscribes to `q/#`, publishes to `q/1` (the message is routed
/// back to this connection), and closes the socket without DISCONNECT, as a device that
/// loses power does.
fn vanish_with_a_message_in_flight(listener: &Listener, client_id: &str) {
    let mut stream = listener::connect(listener.addr(Version::V4)).expect("connected");
    let mut packets = mqtt::connect(Version::V4, client_id, None);
    packets.extend([0x82, 8, 0, 1, 0, 3, b'q', b'/', b'#', 0]);
    packets.extend([0x30, 6, 0, 3, b'q', b'/', b'1', b'x']);
    stream.write_all(&packets).expect("sent");
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 256];
    while matches!(stream.read(&mut sink), Ok(read) if read > 0) {}
}

#[test]
#[ignore = "known leak, not fixed yet: see docs/fuzzing.md, \"Found and not fixed\""]
fn connections_that_vanish_with_a_message_in_flight_leave_nothing_behind() {
    let listener = Listener::start();
    for i in 0..2_000 {
        vanish_with_a_message_in_flight(&listener, &format!("warm-{i}"));
    }
    let before = rss_kib();
    let connections = 4_000;
    for _ in 0..connections {
        vanish_with_a_message_in_flight(&listener, "device");
    }
    let grown = rss_kib().saturating_sub(before);
    // Measured: about 2.5 KiB per connection, 10,000 KiB here.
    assert!(
        grown < 1_200,
        "{connections} vanished connections grew the broker by {grown} KiB"
    );
}
