//! A filter's in-memory log holds what its settings say. The live-listener fuzzing showed
//! each small message pinning its connection's whole read chunk (~2.5 KiB, rumqttd patch
//! 37), and then each costing ~0.3 KiB of bookkeeping that the log's size limit did not
//! count (patch 39). In its own test binary, and its tests one at a time, so that no other
//! broker moves the process's memory while one measures it.

use std::io::{Read, Write};
use std::sync::{Mutex, MutexGuard};

use iotmon_broker::BrokerConfig;

use iotmon_fuzz::driver::rss_kib;
use iotmon_fuzz::mqtt::{self, Version};
use iotmon_fuzz::surfaces::listener::{self, Listener};

/// Connects as `client_id`, subscribes to `q/#`, publishes one small message to `q/1` (kept
/// in the log of `q/#`), and closes the socket without DISCONNECT, as a device that loses
/// power does.
fn publish_once_and_vanish(listener: &Listener, client_id: &str) {
    let mut stream = listener::connect(listener.addr(Version::V4)).expect("connected");
    let mut packets = mqtt::connect(Version::V4, client_id, None);
    packets.extend([0x82, 8, 0, 1, 0, 3, b'q', b'/', b'#', 0]);
    packets.extend([0x30, 6, 0, 3, b'q', b'/', b'1', b'x']);
    stream.write_all(&packets).expect("sent");
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 256];
    while matches!(stream.read(&mut sink), Ok(read) if read > 0) {}
}

/// Held by each test while it measures the process's memory.
static MEASURING: Mutex<()> = Mutex::new(());

fn measuring_alone() -> MutexGuard<'static, ()> {
    MEASURING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn small_messages_from_short_connections_cost_their_size_in_the_log() {
    let _alone = measuring_alone();
    let listener = Listener::start();
    for i in 0..2_000 {
        publish_once_and_vanish(&listener, &format!("warm-{i}"));
    }
    let before = rss_kib();
    let messages = 4_000;
    for _ in 0..messages {
        publish_once_and_vanish(&listener, "device");
    }
    let grown = rss_kib().saturating_sub(before);
    // Measured: about 0.3 KiB per message kept (1,256 KiB here); 2.3 KiB (9,276 KiB) when
    // each message pinned its read chunk.
    assert!(
        grown < 4_000,
        "{messages} one-byte messages grew the broker by {grown} KiB"
    );
}

/// Reads from `stream` until `wanted` appears; everything the broker sent before it is
/// skipped.
fn read_until(stream: &mut std::net::TcpStream, wanted: &[u8]) {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 256];
    while !seen.windows(wanted.len()).any(|window| window == wanted) {
        let read = stream.read(&mut chunk).expect("the broker answers");
        assert!(
            read > 0,
            "the broker closed the connection before {wanted:02x?}"
        );
        seen.extend_from_slice(&chunk[..read]);
    }
}

#[test]
fn a_filters_log_of_small_messages_stays_within_its_configured_size() {
    let _alone = measuring_alone();
    let (segment_size, segment_count) = (128 * 1024, 4);
    let limit_kib = (segment_size * segment_count / 1024) as u64;
    let listener = Listener::start_with(BrokerConfig {
        segment_size,
        segment_count,
        ..BrokerConfig::default()
    });

    // The filter `q/#` gets its log; its subscriber leaves at once (a clean session), so
    // nothing reads the log and it keeps as much as its limit lets it.
    let mut subscriber = listener::connect(listener.addr(Version::V4)).expect("connected");
    let mut packets = mqtt::connect(Version::V4, "watcher", None);
    packets.extend([0x82, 8, 0, 1, 0, 3, b'q', b'/', b'#', 0]);
    subscriber.write_all(&packets).expect("sent");
    read_until(&mut subscriber, &[0x90, 3, 0, 1, 0]);
    drop(subscriber);

    let before = rss_kib();
    let mut device = listener::connect(listener.addr(Version::V4)).expect("connected");
    device
        .write_all(&mqtt::connect(Version::V4, "device", None))
        .expect("sent");
    read_until(&mut device, &[0x20, 2, 0, 0]);
    let messages = 100_000;
    let one = [0x30, 6, 0, 3, b'q', b'/', b'1', b'x'];
    for _ in 0..messages / 1_000 {
        device.write_all(&one.repeat(1_000)).expect("sent");
    }
    // The router takes a connection's packets in order: once this QoS 1 message is
    // acknowledged, every message before it is in the log.
    device
        .write_all(&[0x32, 7, 0, 3, b'q', b'/', b'1', 0, 1, b'x'])
        .expect("sent");
    read_until(&mut device, &[0x40, 2, 0, 1]);
    let grown = rss_kib().saturating_sub(before);

    // Measured: each message kept costs ~0.3 KiB whatever its size. Charged only its own
    // bytes (12 for these), the log kept ~50,000 of them: 15,620 KiB grown. Charged what
    // it costs: 1,240–1,690 KiB, the log's 512 KiB and the rest of the broker (the two
    // connections, the router's batches, the allocator's slack as segments grow).
    let tolerance_kib = 3 * 1024;
    assert!(
        grown < limit_kib + tolerance_kib,
        "{messages} one-byte messages on one filter grew the broker by {grown} KiB, \
         beyond its log's limit of {limit_kib} KiB and {tolerance_kib} KiB besides"
    );
}
