//! Alert evaluation inside a shard, on an injected clock (milliseconds passed in): readings,
//! presence, deadlines, group counts and restarts.

use bytes::Bytes;
use iotmon_wire::MetricValue;

use super::*;
use crate::alerts::AlertsConfig;

fn shard_with(rules: &str) -> Shard {
    let config: AlertsConfig = toml::from_str(rules).expect("valid TOML");
    let rules = RuleSet::new(&config).expect("usable rules");
    Shard::new(
        Arc::new(BridgeConfig::default()),
        Arc::default(),
        Arc::new(rules),
    )
}

fn reading(ts: i64, metric: &str, value: f64) -> Reading {
    Reading {
        ts,
        metrics: vec![(metric.into(), MetricValue::Number(value))],
    }
}

fn status(device: &str, payload: &str) -> Message {
    Message {
        topic: format!("status/hq/a/{device}"),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

/// The phases of the events since the last call, as (device, phase).
fn phases(shard: &mut Shard) -> Vec<(String, Phase)> {
    shard
        .take_alert_events()
        .into_iter()
        .map(|event| (event.device.to_string(), event.phase))
        .collect()
}

const HOT: &str = r#"
[[rules]]
name = "hot"
groups = ["hq/**"]
metric = "t"
above = 30.0
clear = 28.0
"#;

#[test]
fn a_noisy_signal_around_the_threshold_raises_once_and_clears_once() {
    let mut shard = shard_with(HOT);
    let signal = [29.0, 30.5, 29.5, 31.0, 28.5, 30.2, 29.0, 27.9, 29.5, 28.8];
    let mut events = Vec::new();
    for (i, value) in signal.into_iter().enumerate() {
        let now = 1_000 * (i as i64 + 1);
        shard.apply("hq/a", "d1", reading(now, "t", value), now);
        events.extend(phases(&mut shard));
    }
    assert_eq!(
        events,
        vec![("d1".into(), Phase::Firing), ("d1".into(), Phase::Normal)],
        "one raise at 30.5, one clear at 27.9, nothing in between"
    );
}

#[test]
fn rules_apply_only_to_the_devices_they_select() {
    let mut shard = shard_with(HOT);
    shard.apply("plant/b", "d2", reading(1, "t", 99.0), 1);
    shard.apply("hq/a", "d3", reading(1, "other", 99.0), 1);
    assert!(phases(&mut shard).is_empty());
}

#[test]
fn on_delay_and_off_delay_run_on_the_deadline_queue() {
    let mut shard = shard_with(
        r#"
        [[rules]]
        name = "hot"
        metric = "t"
        above = 30.0
        for = "10s"
        keep_firing_for = "30s"
        "#,
    );
    shard.apply("hq/a", "d1", reading(0, "t", 35.0), 0);
    assert_eq!(
        phases(&mut shard),
        vec![("d1".into(), Phase::Pending { since: 0 })]
    );
    shard.check_alert_deadlines(9_999);
    assert!(phases(&mut shard).is_empty(), "not before the on-delay");
    shard.check_alert_deadlines(10_000);
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Firing)]);
    shard.apply("hq/a", "d1", reading(11_000, "t", 20.0), 11_000);
    assert_eq!(
        phases(&mut shard),
        vec![("d1".into(), Phase::Clearing { since: 11_000 })]
    );
    shard.check_alert_deadlines(40_999);
    assert!(
        phases(&mut shard).is_empty(),
        "still firing within the off-delay"
    );
    shard.check_alert_deadlines(41_000);
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Normal)]);
}

#[test]
fn a_short_breach_never_fires_under_an_on_delay() {
    let mut shard =
        shard_with("[[rules]]\nname = \"hot\"\nmetric = \"t\"\nabove = 30.0\nfor = \"10s\"\n");
    shard.apply("hq/a", "d1", reading(0, "t", 35.0), 0);
    shard.apply("hq/a", "d1", reading(5_000, "t", 25.0), 5_000);
    shard.check_alert_deadlines(60_000);
    let seen: Vec<Phase> = phases(&mut shard).into_iter().map(|(_, p)| p).collect();
    assert_eq!(seen, vec![Phase::Pending { since: 0 }, Phase::Normal]);
}

#[test]
fn a_rate_of_change_rule_fires_on_a_fast_rise() {
    let mut shard = shard_with(
        "[[rules]]\nname = \"rise\"\nmetric = \"t\"\nrate_above = 5.0\nwindow = \"1m\"\n",
    );
    // +1 per minute: fine; then +10 in 30 s (20 per minute): fires.
    for (at, value) in [(0, 20.0), (60_000, 21.0), (90_000, 31.0)] {
        shard.apply("hq/a", "d1", reading(at, "t", value), at);
    }
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Firing)]);
}

const OFFLINE: &str = r#"
[[rules]]
name = "silent"
offline = true
severity = "critical"
"#;

#[test]
fn offline_fires_at_once_on_a_last_will_and_clears_when_the_device_is_back() {
    let mut shard = shard_with(OFFLINE);
    shard.apply("hq/a", "d1", reading(0, "t", 1.0), 0);
    shard.handle(&status("d1", "offline"), 1_000);
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Firing)]);
    let groups = shard.take_groups();
    let hq = groups.iter().find(|g| &*g.group == "hq").expect("hq");
    assert_eq!(hq.alerting, 1, "the group counts the alerting device");
    shard.apply("hq/a", "d1", reading(2_000, "t", 1.0), 2_000);
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Normal)]);
    let groups = shard.take_groups();
    let hq = groups.iter().find(|g| &*g.group == "hq").expect("hq");
    assert_eq!(hq.alerting, 0);
}

#[test]
fn offline_fires_on_silence_with_the_presence_limit_or_the_rules_own() {
    // The default presence limit (60 s without an interval known).
    let mut shard = shard_with(OFFLINE);
    shard.apply("hq/a", "d1", reading(0, "t", 1.0), 0);
    shard.check_silence(59_999);
    assert!(phases(&mut shard).is_empty());
    shard.check_silence(60_000);
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Firing)]);

    // Its own limit: 5 s, checked once per silence, not per reading.
    let mut shard =
        shard_with("[[rules]]\nname = \"quiet\"\noffline = true\noffline_after = \"5s\"\n");
    for at in (0..4_000).step_by(1_000) {
        shard.apply("hq/a", "d1", reading(at, "t", 1.0), at);
    }
    assert!(
        shard.evaluator.deadlines_len() <= 1,
        "one check in the queue"
    );
    shard.check_alert_deadlines(5_000);
    assert!(
        phases(&mut shard).is_empty(),
        "heard from at 3 s: not silent yet"
    );
    shard.check_alert_deadlines(7_999);
    assert!(phases(&mut shard).is_empty());
    shard.check_alert_deadlines(8_000);
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Firing)]);
}

#[test]
fn a_restart_resumes_pending_delays_and_active_alerts() {
    let rules = "[[rules]]\nname = \"hot\"\nmetric = \"t\"\nabove = 30.0\nfor = \"10s\"\n[[rules]]\nname = \"silent\"\noffline = true\n";
    let mut shard = shard_with(rules);
    let entry = |id: &str| RegistryEntry {
        state: DeviceState {
            id: id.into(),
            group: "hq/a".into(),
            ts: 0,
            metrics: Metrics::new(),
            online: true,
        },
        first_seen: 0,
        last_seen: 0,
    };
    shard.restore(entry("pending"), 1_000);
    shard.restore(entry("firing"), 1_000);
    shard.restore_alerts(
        "pending",
        "hq/a",
        vec![(0, Phase::Pending { since: 500 })],
        1_000,
    );
    shard.restore_alerts("firing", "hq/a", vec![(0, Phase::Firing)], 1_000);
    // Its registry row lost in a crash: the device is restored from its conditions.
    shard.restore_alerts("newcomer", "hq/a", vec![(0, Phase::Firing)], 1_000);
    assert_eq!(
        shard
            .take_groups()
            .iter()
            .find(|g| &*g.group == "hq")
            .map(|g| g.alerting),
        Some(2)
    );
    // The pending delay ends when it would have without the restart.
    shard.check_alert_deadlines(10_500);
    assert_eq!(phases(&mut shard), vec![("pending".into(), Phase::Firing)]);
    // The restored alert clears on the next normal reading; so does the newcomer's.
    shard.apply("hq/a", "firing", reading(11_000, "t", 20.0), 11_000);
    shard.apply("hq/a", "newcomer", reading(11_000, "t", 20.0), 11_000);
    let mut seen = phases(&mut shard);
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("firing".into(), Phase::Normal),
            ("newcomer".into(), Phase::Normal)
        ]
    );
    // Restored devices that never come back go offline by silence (60 s by default).
    shard.check_alert_deadlines(61_000);
    let offline: Vec<String> = phases(&mut shard).into_iter().map(|(id, _)| id).collect();
    assert_eq!(offline, vec!["pending".to_string()]);
}

#[test]
fn a_device_that_moves_keeps_its_alert_and_its_groups_follow() {
    let mut shard = shard_with(HOT);
    shard.apply("hq/a", "d1", reading(0, "t", 35.0), 0);
    shard.take_groups();
    shard.apply("hq/b", "d1", reading(1, "t", 35.0), 1);
    assert_eq!(phases(&mut shard), vec![("d1".into(), Phase::Firing)]);
    let groups = shard.take_groups();
    let count = |name: &str| {
        groups
            .iter()
            .find(|g| &*g.group == name)
            .map(|g| g.alerting)
    };
    assert_eq!(
        (count("hq/a"), count("hq/b"), count("hq")),
        (Some(0), Some(1), Some(1))
    );
}
