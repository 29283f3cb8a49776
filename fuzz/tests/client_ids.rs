//! The broker's memory does not grow with the number of distinct client ids that connected
//! with a clean session (the live-listener fuzzing showed it did). In its own test binary so
//! that no other test's broker moves the process's memory meanwhile.

use std::io::{Read, Write};

use iotmon_fuzz::driver::rss_kib;
use iotmon_fuzz::mqtt::{self, Version};
use iotmon_fuzz::surfaces::listener::{self, Listener};

/// Connects with a clean session as `client_id`, waits for the CONNACK, and disconnects.
fn visit(listener: &Listener, client_id: &str) {
    let mut stream = listener::connect(listener.addr(Version::V4)).expect("connected");
    stream
        .write_all(&mqtt::connect(Version::V4, client_id, None))
        .expect("CONNECT sent");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    stream
        .write_all(&mqtt::disconnect())
        .expect("DISCONNECT sent");
    // Wait for the broker to close, so the router has forgotten the connection.
    let _ = stream.read(&mut connack);
}

#[test]
fn clients_with_ever_new_ids_and_clean_sessions_leave_nothing_behind() {
    let listener = Listener::start();
    // Warm up: buffers, maps and the allocator reach their working size.
    for i in 0..2_000 {
        visit(&listener, &format!("warm-{i}"));
    }
    let before = rss_kib();
    let clients = 4_000;
    for i in 0..clients {
        visit(&listener, &format!("device-{i}"));
    }
    let grown = rss_kib().saturating_sub(before);
    // Upstream kept about 0.8 KiB per client id: 3,200 KiB here.
    assert!(
        grown < 1_200,
        "{clients} client ids grew the broker by {grown} KiB"
    );
}
