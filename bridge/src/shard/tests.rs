//! Unit tests of a shard: live state, presence, aggregates and store batches.

use std::time::Duration;

use bytes::Bytes;
use iotmon_wire::MetricValue;

use super::*;

fn shard() -> Shard {
    Shard::new(
        Arc::new(BridgeConfig::default()),
        Arc::default(),
        Arc::default(),
    )
}

fn message(topic: &str, payload: &str) -> Message {
    Message {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn reading(ts: i64, metrics: &[(&str, f64)]) -> Reading {
    Reading {
        ts,
        metrics: metrics
            .iter()
            .map(|(name, value)| ((*name).into(), MetricValue::Number(*value)))
            .collect(),
    }
}

#[test]
fn keeps_latest_values_and_merges_metrics() {
    let mut shard = shard();
    shard.apply("hq/a", "d1", reading(10, &[("t", 1.0), ("h", 40.0)]), 10);
    shard.apply("hq/a", "d1", reading(20, &[("t", 2.0)]), 20);
    let changed = shard.take_changed();
    assert_eq!(changed.len(), 1, "two readings coalesce into one change");
    assert_eq!(changed[0].ts, 20);
    assert!(changed[0].online);
    assert_eq!(changed[0].metrics.get("t"), Some(&MetricValue::Number(2.0)));
    assert_eq!(
        changed[0].metrics.get("h"),
        Some(&MetricValue::Number(40.0))
    );
    assert!(shard.take_changed().is_empty());
}

#[test]
fn a_device_goes_live_at_most_once_per_gap_with_its_latest_state() {
    let mut shard = shard();
    shard.apply("hq", "d1", reading(1_000, &[("t", 1.0)]), 1_000);
    assert_eq!(
        shard.take_due(1_000, 250).len(),
        1,
        "the first change goes at once"
    );
    shard.apply("hq", "d1", reading(1_050, &[("t", 2.0)]), 1_050);
    shard.apply("hq", "d1", reading(1_100, &[("t", 3.0)]), 1_100);
    shard.apply("hq", "d2", reading(1_100, &[("t", 9.0)]), 1_100);
    let due = shard.take_due(1_100, 250);
    assert_eq!(due.len(), 1, "d2 is new; d1 waits for its gap");
    assert_eq!(&*due[0].id, "d2");
    assert!(shard.take_due(1_249, 250).is_empty());
    let due = shard.take_due(1_250, 250);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].metrics.get("t"), Some(&MetricValue::Number(3.0)));
    assert!(
        shard.take_due(5_000, 250).is_empty(),
        "nothing left once sent"
    );
}

#[test]
fn older_readings_do_not_overwrite_the_live_state() {
    let mut shard = shard();
    shard.apply("hq", "d1", reading(20, &[("t", 2.0)]), 20);
    shard.take_changed();
    shard.apply("hq", "d1", reading(10, &[("t", 1.0)]), 21);
    let changed = shard.take_changed();
    assert_eq!(changed[0].metrics.get("t"), Some(&MetricValue::Number(2.0)));
}

#[test]
fn a_device_under_a_new_group_has_moved_and_aggregates_follow() {
    let mut shard = shard();
    shard.apply("hq/a", "d1", reading(20, &[("t", 2.0)]), 20);
    shard.take_groups();
    shard.apply("hq/b", "d1", reading(25, &[("t", 3.0)]), 25);
    let changed = shard.take_changed();
    assert_eq!(&*changed[0].group, "hq/b");
    assert_eq!(shard.len(), 1);
    let groups = shard.take_groups();
    let a = groups.iter().find(|g| &*g.group == "hq/a").expect("hq/a");
    assert!(a.metrics.is_empty());
    assert_eq!(a.online, 0);
    let b = groups.iter().find(|g| &*g.group == "hq/b").expect("hq/b");
    assert_eq!(b.online, 1);
    assert_eq!(b.metrics[0].1.max, 3.0);
}

#[test]
fn silence_turns_a_device_offline_and_a_reading_back_online() {
    let mut shard = shard();
    let limit = BridgeConfig::default().presence.default_silence;
    let limit_ms = limit.as_millis() as i64;
    shard.apply("hq", "d1", reading(0, &[("t", 1.0)]), 0);
    shard.take_changed();
    shard.check_silence(limit_ms - 1);
    assert!(shard.take_changed().is_empty(), "not silent yet");
    shard.check_silence(limit_ms);
    let changed = shard.take_changed();
    assert!(!changed[0].online);
    shard.apply(
        "hq",
        "d1",
        reading(limit_ms + 5, &[("t", 1.0)]),
        limit_ms + 5,
    );
    assert!(shard.take_changed()[0].online);
}

#[test]
fn silence_follows_the_observed_interval() {
    let config = BridgeConfig::default();
    let min = config.presence.min_silence.as_millis() as i64;
    assert_eq!(silence_limit_ms(&config, Some(1_000.0)), min);
    assert_eq!(silence_limit_ms(&config, Some(20_000.0)), 60_000);
    let mut shard = shard();
    for i in 0..5 {
        shard.apply("hq", "d1", reading(i * 20_000, &[("t", 1.0)]), i * 20_000);
    }
    // Scheduled at first sight for the default silence, then rescheduled to last + 3 × 20 s.
    shard.check_silence(80_000 + 59_999);
    shard.take_changed();
    shard.check_silence(80_000 + Duration::from_secs(60).as_millis() as i64);
    assert!(!shard.take_changed()[0].online);
}

#[test]
fn status_messages_set_presence_and_bad_ones_are_counted() {
    let counters = Arc::new(BridgeCounters::default());
    let mut shard = Shard::new(
        Arc::new(BridgeConfig::default()),
        counters.clone(),
        Arc::default(),
    );
    shard.handle(&message("status/hq/d1", "online"), 1);
    assert!(shard.take_changed()[0].online);
    shard.handle(&message("status/hq/d1", "offline"), 2);
    assert!(!shard.take_changed()[0].online);
    shard.handle(&message("status/hq/d1", "maybe"), 3);
    shard.handle(&message("status/d1", "online"), 3);
    assert_eq!(counters.rejected(RejectReason::BadStatus), 1);
    assert_eq!(counters.rejected(RejectReason::BadTopic), 1);
    let groups = shard.take_groups();
    let hq = groups.iter().find(|g| &*g.group == "hq").expect("hq");
    assert_eq!((hq.online, hq.offline), (0, 1));
}

#[test]
fn bad_messages_are_counted_and_good_ones_still_flow() {
    let counters = Arc::new(BridgeCounters::default());
    let mut shard = Shard::new(
        Arc::new(BridgeConfig::default()),
        counters.clone(),
        Arc::default(),
    );
    shard.handle(&message("sensors/hq/d1", "garbage"), 1_000);
    shard.handle(&message("sensors/d1", r#"{"t":1}"#), 1_000);
    shard.handle(&message("sensors/hq/d1", r#"{"t":1}"#), 1_000);
    assert_eq!(counters.rejected(RejectReason::NotJson), 1);
    assert_eq!(counters.rejected(RejectReason::BadTopic), 1);
    assert_eq!(counters.readings.load(Ordering::Relaxed), 1);
    assert_eq!(shard.take_changed().len(), 1);
}

#[test]
fn the_store_batch_carries_rollup_deltas_and_registry_changes_once() {
    let counters = Arc::new(BridgeCounters::default());
    let mut shard = Shard::new(
        Arc::new(BridgeConfig::default()),
        counters.clone(),
        Arc::default(),
    );
    shard.apply("hq", "d1", reading(1_000, &[("t", 1.0)]), 1_000);
    shard.apply("hq", "d1", reading(2_000, &[("t", 3.0)]), 2_000);
    shard.apply("hq", "d1", reading(1_000, &[("t", 9.0)]), 100_000);
    assert_eq!(counters.late_readings.load(Ordering::Relaxed), 1);
    let batch = shard.take_store_batch();
    assert_eq!(batch.rollups.len(), 1);
    assert_eq!(batch.rollups[0].values.count, 2);
    assert_eq!(batch.devices.len(), 1);
    assert_eq!(batch.devices[0].first_seen, 1_000);
    assert_eq!(batch.devices[0].last_seen, 100_000);
    assert!(shard.take_store_batch().is_empty());
}

#[test]
fn restored_devices_are_offline_and_counted_in_their_groups() {
    let mut shard = shard();
    let mut metrics = Metrics::new();
    metrics.insert("t".into(), MetricValue::Number(4.0));
    shard.restore(
        RegistryEntry {
            state: DeviceState {
                id: "d1".into(),
                group: "hq/a".into(),
                ts: 5,
                metrics,
                online: true,
            },
            first_seen: 1,
            last_seen: 5,
        },
        10,
    );
    let changed = shard.take_changed();
    assert!(!changed[0].online);
    let groups = shard.take_groups();
    let hq = groups.iter().find(|g| &*g.group == "hq").expect("hq");
    assert_eq!((hq.online, hq.offline), (0, 1));
    assert_eq!(hq.metrics[0].1.count, 1);
}

#[test]
fn a_sync_request_marks_every_device_and_group() {
    let mut shard = shard();
    shard.apply("hq", "d1", reading(1, &[("t", 1.0)]), 1);
    shard.apply("hq", "d2", reading(1, &[("t", 1.0)]), 1);
    shard.take_changed();
    shard.take_groups();
    shard.mark_all_changed();
    assert_eq!(shard.take_changed().len(), 2);
    assert_eq!(shard.take_groups().len(), 1);
}
