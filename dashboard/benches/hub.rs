//! The hub's cost per tick as the fleet grows. Every device reports once per 5 s, so a 100 ms
//! tick sees 1/50 of the fleet change; 200 viewers each watch 100 devices. Ingest work
//! (`apply`) must grow with the fleet, but the work for the viewers (`push`: building,
//! serializing and queueing their frames) must not: each viewer sees ~2 changes per tick
//! whether the fleet holds 1,000 devices or 100,000.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use iotmon_dashboard::hub::{Hub, ViewSpec};
use iotmon_wire::{DeviceState, LiveUpdate, MetricValue, Metrics};
use tokio::sync::mpsc;

const VIEWERS: usize = 200;
const VISIBLE: usize = 100;
/// Fraction of the fleet that changes per tick: a 5 s report interval over a 100 ms tick.
const CHANGED_PER_TICK: usize = 50;

fn device(index: usize, value: f64) -> DeviceState {
    let mut metrics = Metrics::new();
    metrics.insert("temperature".into(), MetricValue::Number(value));
    metrics.insert("humidity".into(), MetricValue::Number(45.0));
    metrics.insert("pressure".into(), MetricValue::Number(1013.0));
    DeviceState {
        id: format!("sensor-{index:06}").into(),
        group: format!("site-{}/floor-{}", index / 1000, index / 20 % 50).into(),
        ts: 1_704_723_845_000 + index as i64,
        metrics,
        online: true,
    }
}

/// A hub with `fleet` devices and the viewers, each watching a page of 100 devices spread
/// across the fleet; returns the viewers' queues.
fn setup(fleet: usize) -> (Hub, Vec<mpsc::Receiver<String>>) {
    let mut hub = Hub::new(Arc::default());
    hub.apply(LiveUpdate::Devices(
        (0..fleet).map(|i| device(i, 20.0)).collect(),
    ));
    let stride = fleet / VIEWERS;
    let mut queues = Vec::new();
    for viewer in 0..VIEWERS {
        let (tx, rx) = mpsc::channel(64);
        hub.join(viewer as u64, tx);
        let first = viewer * stride;
        let ids = (first..first + VISIBLE.min(fleet - first))
            .map(|i| device(i, 0.0).id)
            .collect();
        hub.set_view(viewer as u64, ViewSpec::Devices(ids));
        queues.push(rx);
    }
    drain(&mut queues);
    (hub, queues)
}

fn drain(queues: &mut [mpsc::Receiver<String>]) -> usize {
    let mut bytes = 0;
    for queue in queues {
        while let Ok(frame) = queue.try_recv() {
            bytes += frame.len();
        }
    }
    bytes
}

/// The devices changing at tick `tick`: a rotating 1/50 of the fleet.
fn changes(fleet: usize, tick: usize) -> Vec<DeviceState> {
    let per_tick = (fleet / CHANGED_PER_TICK).max(1);
    (0..per_tick)
        .map(|k| {
            device(
                (k * CHANGED_PER_TICK + tick % CHANGED_PER_TICK) % fleet,
                tick as f64,
            )
        })
        .collect()
}

fn tick_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_tick");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for fleet in [1_000, 10_000, 100_000] {
        let (mut hub, mut queues) = setup(fleet);
        let mut tick = 0;
        group.bench_function(BenchmarkId::new("apply", fleet), |b| {
            b.iter(|| {
                tick += 1;
                hub.apply(LiveUpdate::Devices(changes(fleet, tick)));
            });
            hub.push_pending();
            drain(&mut queues);
        });
        let mut bytes = 0usize;
        let mut ticks = 0usize;
        group.bench_function(BenchmarkId::new("push_to_viewers", fleet), |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    tick += 1;
                    hub.apply(LiveUpdate::Devices(changes(fleet, tick)));
                    let start = Instant::now();
                    hub.push_pending();
                    bytes += black_box(drain(&mut queues));
                    spent += start.elapsed();
                    ticks += 1;
                }
                spent
            });
        });
        println!(
            "fleet {fleet}: {:.0} bytes per viewer per tick",
            bytes as f64 / ticks.max(1) as f64 / VIEWERS as f64
        );
    }
    group.finish();
}

/// One viewer leaving while 999 others watch the same 1,000 devices: the worst case for the
/// device → viewers index, whose every list the viewer is removed from.
fn leave_cost(c: &mut Criterion) {
    const CROWD: usize = 1_000;
    const SHARED_VIEW: usize = 1_000;
    let mut hub = Hub::new(Arc::default());
    hub.apply(LiveUpdate::Devices(
        (0..10_000).map(|i| device(i, 20.0)).collect(),
    ));
    let view = || ViewSpec::Devices((0..SHARED_VIEW).map(|i| device(i, 0.0).id).collect());
    let mut queues = Vec::new();
    for viewer in 0..CROWD {
        let (tx, rx) = mpsc::channel(4);
        hub.join(viewer as u64, tx);
        hub.set_view(viewer as u64, view());
        queues.push(rx);
    }
    drain(&mut queues);
    let mut group = c.benchmark_group("hub_viewers");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    let mut next = CROWD as u64;
    group.bench_function(BenchmarkId::new("leave_shared_view", CROWD), |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let leaving = next - CROWD as u64;
                let start = Instant::now();
                hub.leave(leaving);
                spent += start.elapsed();
                let (tx, mut rx) = mpsc::channel(4);
                hub.join(next, tx);
                hub.set_view(next, view());
                while rx.try_recv().is_ok() {}
                next += 1;
            }
            spent
        });
    });
    group.finish();
}

criterion_group!(benches, tick_cost, leave_cost);
criterion_main!(benches);
