//! Readings per second through one shard (one core): parse + live state + presence +
//! rollup deltas + incremental group aggregates, for a fleet of 100K devices × 3 metrics
//! spread over a three-level hierarchy. Each iteration delivers one reading per device
//! (values alternate so every aggregate changes), then takes the live batch, the group
//! partials and the store batch as the shard's ticks would.
//!
//! `with_alert_rules` runs the same with four rules selecting every device (a threshold with
//! a deadband and on-delay, a threshold below, a rate of change, offline): the cost of alert
//! evaluation per reading is the difference between the two.
//!
//! Run with `cargo bench -p iotmon-bridge --bench pipeline`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iotmon_bridge::alerts::{AlertsConfig, RuleSet};
use iotmon_bridge::shard::Shard;
use iotmon_bridge::BridgeConfig;
use iotmon_wire::mqtt::Message;

const DEVICES: usize = 100_000;

fn fleet(round: u32) -> Vec<Message> {
    (0..DEVICES)
        .map(|i| {
            let topic = format!(
                "sensors/site-{}/building-{}/floor-{}/dev-{i}",
                i % 10,
                i % 100,
                i % 1000
            );
            let base = (i % 50) as f64 + f64::from(round);
            let payload = format!(
                r#"{{"temperature":{:.2},"humidity":{:.1},"pressure":{:.2}}}"#,
                20.0 + base / 10.0,
                40.0 + base,
                1013.0 + base / 100.0
            );
            Message {
                topic,
                payload: Bytes::from(payload),
            }
        })
        .collect()
}

/// Rules that select every device of the benchmark's fleet.
fn rules() -> RuleSet {
    let config: AlertsConfig = toml::from_str(
        r#"
        [[rules]]
        name = "hot"
        groups = ["**"]
        metric = "temperature"
        above = 24.5
        clear = 24.0
        for = "10s"
        [[rules]]
        name = "dry"
        metric = "humidity"
        below = 41.0
        [[rules]]
        name = "pressure-rising"
        metric = "pressure"
        rate_above = 5.0
        window = "1m"
        [[rules]]
        name = "silent"
        offline = true
        "#,
    )
    .expect("valid rules");
    RuleSet::new(&config).expect("usable rules")
}

fn one_shard(c: &mut Criterion) {
    let rounds = [fleet(0), fleet(1)];
    let mut group = c.benchmark_group("shard");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(DEVICES as u64));
    for (name, rules) in [
        ("100k_devices_x_3_metrics", RuleSet::default()),
        ("100k_devices_x_3_metrics_with_alert_rules", rules()),
    ] {
        let mut shard = Shard::new(
            Arc::new(BridgeConfig::default()),
            Arc::default(),
            Arc::new(rules),
        );
        let mut now = 1_704_067_200_000_i64;
        for message in &rounds[0] {
            shard.handle(message, now);
        }
        let mut round = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                round += 1;
                now += 1_000;
                for message in &rounds[round % 2] {
                    shard.handle(message, now);
                }
                shard.check_alert_deadlines(now);
                let alerts = shard.take_alert_events();
                let live = shard.take_due(now, 250);
                let groups = shard.take_groups();
                shard.check_silence(now);
                let store = shard.take_store_batch();
                (live.len(), groups.len(), store.rollups.len(), alerts.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, one_shard);
criterion_main!(benches);
