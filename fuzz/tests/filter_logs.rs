//! The broker's memory does not grow with the number of distinct filters that clients
//! subscribed to and gave up (the live-listener fuzzing subscribes to a new mutated filter
//! about once a second; rumqttd kept a log for each, for ever, until patch 41). In its own
//! test binary so that no other test's broker moves the process's memory meanwhile.

use std::io::{Read, Write};

use iotmon_fuzz::driver::rss_kib;
use iotmon_fuzz::mqtt::{self, Version};
use iotmon_fuzz::surfaces::listener::{self, Listener};
use iotmon_probe::mqtt as packets;

/// Filters each visit subscribes to.
const FILTERS_PER_VISIT: usize = 5;

/// Connects with a clean session as `client_id`, subscribes to `FILTERS_PER_VISIT` filters
/// of its own, publishes one message that the first of them matches (kept in its log, and
/// the topic remembered as matching it), and disconnects.
fn visit(listener: &Listener, client_id: &str) {
    let mut stream = listener::connect(listener.addr(Version::V4)).expect("connected");
    let filters: Vec<String> = (0..FILTERS_PER_VISIT)
        .map(|k| format!("visits/{client_id}/{k}/#"))
        .collect();
    let filters: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 0)).collect();
    let topic = format!("visits/{client_id}/0/reading");
    let mut out = mqtt::connect(Version::V4, client_id, None);
    out.extend(packets::subscribe(packets::Version::V311, 1, &filters));
    out.extend(packets::Publish::new(&topic, b"21.5").encode(packets::Version::V311));
    out.extend(mqtt::disconnect());
    stream.write_all(&out).expect("sent");
    // Wait for the broker to close, so the router has handled the disconnect.
    let mut sink = [0u8; 256];
    while matches!(stream.read(&mut sink), Ok(read) if read > 0) {}
}

#[test]
fn filters_subscribed_to_and_given_up_leave_nothing_behind() {
    let listener = Listener::start();
    // Warm up: buffers, maps and the allocator reach their working size.
    for i in 0..1_000 {
        visit(&listener, &format!("warm-{i}"));
    }
    let before = rss_kib();
    let visits = 4_000;
    for i in 0..visits {
        visit(&listener, &format!("device-{i}"));
    }
    let grown = rss_kib().saturating_sub(before);
    let filters = visits * FILTERS_PER_VISIT;
    // Measured: 128–136 KiB; 37,900 KiB (~1.9 KiB per filter) when every filter's log, its
    // entry in the router's maps and the topic matched to it were kept for ever.
    assert!(
        grown < 2_000,
        "{filters} filters subscribed to and given up grew the broker by {grown} KiB"
    );
}
