//! The InfluxDB sink against a real server speaking the v2 write API: Debian's
//! `victoria-metrics`, started here on a free loopback port. Closed rollup windows reach it
//! through the outbox; while it is down they wait on disk; after it restarts (same data
//! directory) every point is there exactly once.
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iotmon_bridge::rollup::{window_start, Accumulator, RollupDelta};
use iotmon_bridge::shard::{RegistryEntry, StoreBatch};
use iotmon_bridge::store::{db_path, schema, writer::Writer};
use iotmon_bridge::{influx, BridgeConfig, BridgeCounters};
use iotmon_wire::{DeviceState, MetricValue, Metrics};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, TempDir};

const DEADLINE: Duration = Duration::from_secs(30);
const WIDTH: i64 = 10_000;
/// Grace (5 s) plus two flush intervals: when a window counts as closed.
const SETTLE: i64 = 7_000;

/// A victoria-metrics process, killed when dropped.
pub(crate) struct Victoria {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Victoria {
    pub(crate) async fn start(data: &Path, addr: SocketAddr) -> Victoria {
        let child = Command::new("victoria-metrics")
            .arg(format!("-storageDataPath={}", data.display()))
            .arg(format!("-httpListenAddr={addr}"))
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("victoria-metrics runs (Debian: apt-get install victoria-metrics)");
        let victoria = Victoria { child, addr };
        eventually(DEADLINE, "victoria-metrics ready", || async {
            get(addr, "/health")
                .await
                .is_some_and(|body| body.contains("OK"))
        })
        .await;
        victoria
    }

    /// Stops the server with SIGTERM, as an operator or service manager would, and waits:
    /// it flushes what it stored to its data directory (a SIGKILL would lose its last
    /// seconds of data, which is the server's durability, not the sink's).
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
        let _ = self.child.wait();
    }

    /// Timestamps of every stored sample of `series`.
    async fn timestamps(&self, series: &str) -> Vec<i64> {
        let Some(body) = get(self.addr, &format!("/api/v1/export?match%5B%5D={series}")).await
        else {
            return Vec::new();
        };
        let mut timestamps = Vec::new();
        for line in body.lines().filter(|line| line.starts_with('{')) {
            let value: serde_json::Value = serde_json::from_str(line).expect("export JSON");
            for ts in value["timestamps"].as_array().expect("timestamps") {
                timestamps.push(ts.as_i64().expect("integer timestamp"));
            }
        }
        timestamps.sort_unstable();
        timestamps
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a successful GET, or `None` while the server is not answering.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let response = iotmon_probe::http::get(&addr.to_string(), path)
        .await
        .ok()?;
    (response.status == 200).then_some(response.body)
}

pub(crate) fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("fits")
}

fn batch(start: i64, value: f64) -> StoreBatch {
    let mut metrics = Metrics::new();
    metrics.insert("t".into(), MetricValue::Number(value));
    StoreBatch {
        devices: vec![RegistryEntry {
            state: DeviceState {
                id: "d1".into(),
                group: "hq/floor-1".into(),
                ts: start,
                metrics,
                online: true,
            },
            first_seen: start,
            last_seen: start,
        }],
        rollups: vec![RollupDelta {
            device: "d1".into(),
            metric: "t".into(),
            start,
            values: Accumulator::new(value, start),
        }],
    }
}

/// Writes window `i` (from `base`) and runs maintenance as of its close, which exports it.
fn write_window(writer: &mut Writer, base: i64, i: i64) -> i64 {
    let start = base + i * WIDTH;
    writer.write(&[batch(start, i as f64)]).expect("write");
    writer.maintain(start + WIDTH + SETTLE).expect("maintain");
    start
}

async fn wait_for(victoria: &Victoria, series: &str, expected: &[i64]) {
    eventually(
        DEADLINE,
        &format!("{series} stored as {expected:?}"),
        || async {
            let stored = victoria.timestamps(series).await;
            assert!(
                stored.len() <= expected.len(),
                "duplicates or strays: {stored:?}"
            );
            if stored == expected {
                Ok(())
            } else {
                Err(stored)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_windows_reach_victoria_metrics_exactly_once_across_an_outage() {
    let store_dir = TempDir::new("influx-store");
    let victoria_dir = TempDir::new("victoria");
    let addr = free_addr();
    let victoria = Victoria::start(victoria_dir.dir(), addr).await;

    let mut config = BridgeConfig::default();
    config.influx.enabled = true;
    config.influx.url = format!("http://{addr}");
    config.influx.org = "iotmon".into();
    config.influx.bucket = "test".into();
    let counters = Arc::new(BridgeCounters::default());
    let base = window_start(now_ms() - 600_000, WIDTH);
    let connection = schema::open(&db_path(store_dir.dir())).expect("open");
    let mut writer = Writer::new(connection, &config, counters.clone(), base).expect("writer");
    let shutdown = CancellationToken::new();
    let sender = tokio::spawn(influx::run_sender(
        config.influx.clone(),
        db_path(store_dir.dir()),
        counters.clone(),
        shutdown.clone(),
    ));

    let series = "rollup_10s_t_count";
    let mut expected: Vec<i64> = (0..5).map(|i| write_window(&mut writer, base, i)).collect();
    wait_for(&victoria, series, &expected).await;

    // Outage: the server goes away; windows keep closing and wait in the outbox.
    victoria.stop();
    expected.extend((5..10).map(|i| write_window(&mut writer, base, i)));
    eventually(DEADLINE, "the sender notices the outage", || {
        std::future::ready(counters.influx_write_errors.load(Ordering::Relaxed) > 0)
    })
    .await;
    expected.extend((10..15).map(|i| write_window(&mut writer, base, i)));

    // Back, on the same data: the outbox drains in order, each point once.
    let victoria = Victoria::start(victoria_dir.dir(), addr).await;
    wait_for(&victoria, series, &expected).await;
    let mean = victoria.timestamps("rollup_10s_t_mean").await;
    assert_eq!(mean, expected);
    assert_eq!(counters.influx_points_dropped.load(Ordering::Relaxed), 0);

    shutdown.cancel();
    sender.await.expect("sender task").expect("sender ran");
}
