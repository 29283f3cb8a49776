//! `split`: the same fleet through one bridge and through two partitioned bridges
//! (`--partition 0/2` and `1/2`) on Debian's mosquitto, with what each reading costs the
//! bridge processes, and what merging partial aggregates across partitions costs.
//!
//! mosquitto only round-robins shared subscriptions, so each partitioned bridge reads the
//! whole tree and skips the other partition's devices on the topic, before parsing: the
//! difference between the two runs' bridge CPU, over the messages skipped, bounds what a
//! skipped message costs (it also holds the second bridge's fixed costs: timers, its store,
//! its partials). The merge is measured twice: the aggregate traffic on the broker
//! (`iotmon/agg/#` with one bridge, `iotmon/partial/#` with two), and the CPU time of one
//! merge in a dashboard, timed here on partials shaped like the fleet's.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::mqtt::{drive_session, BrokerUrl, SessionPlan};
use iotmon_wire::partial::{PartialAggregate, PartialMerger, PartialMetric};
use iotmon_wire::topics::{AGG_FILTER, PARTIAL_FILTER};
use iotmon_wire::DeviceCounts;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use iotmon_simulator::viewers::http_get;
use iotmon_simulator::{Fleet, FleetConfig, Progress};

use crate::process::{usage_of, Measured, Usage};
use crate::report::{BenchReport, Machine, Target};
use crate::serve::metric_value;
use crate::{poll_until, ramp_for, BenchConfig, BenchError};

/// 10K devices every 2 s: 5K readings/s, which one bridge, mosquitto and the fleet together
/// carry on the 2-core development machine with room to spare, so both runs measure cost
/// rather than saturation.
const DEVICES: usize = 10_000;
const INTERVAL: Duration = Duration::from_secs(2);
const DEVICES_PER_CONNECTION: usize = 100;
/// How long the fleet and bridges may take to connect and report once.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Merges timed for the merge cost.
const MERGES: usize = 200_000;
/// How long a bridge may take to print its HTTP address.
const START_LIMIT: Duration = Duration::from_secs(20);

/// One run: the fleet through `bridges` bridges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitRun {
    pub bridges: usize,
    pub window_seconds: f64,
    /// Readings the fleet published in the window.
    pub published: u64,
    /// Readings the bridges accepted in the window (all bridges together).
    pub ingested: u64,
    /// Messages the bridges skipped as another partition's.
    pub skipped: u64,
    /// CPU seconds of each bridge process in the window.
    pub bridge_cpu_seconds: Vec<f64>,
    /// All bridges' CPU per reading ingested, microseconds.
    pub bridge_cpu_us_per_reading: f64,
    /// mosquitto's CPU per reading published, microseconds (it delivers each reading to
    /// every bridge).
    pub broker_cpu_us_per_reading: f64,
    /// Peak resident memory of each bridge, MiB.
    pub bridge_peak_rss_mib: Vec<f64>,
    /// CPU of one dashboard (no viewers) taking in every device state and aggregate, per
    /// reading ingested, microseconds: what the whole fleet's derived stream costs each
    /// dashboard, merging partials included.
    pub dashboard_cpu_us_per_reading: f64,
    /// Aggregate messages on the broker (`iotmon/agg/#` or `iotmon/partial/#`) per second.
    pub aggregate_messages_per_second: f64,
    pub aggregate_bytes_per_second: f64,
}

/// What merging partials costs a dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeCost {
    /// Groups in the fleet's hierarchy (sites, buildings, floors).
    pub groups: usize,
    /// CPU time of one merge (a partial in, the group's merged aggregate out), nanoseconds.
    pub ns_per_merge: f64,
}

/// The split bench's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitReport {
    pub devices: usize,
    pub interval_ms: u64,
    pub runs: Vec<SplitRun>,
    /// Extra bridge CPU of the two-bridge run over the one-bridge run, per message skipped,
    /// microseconds: an upper bound of what skipping a message on its topic costs.
    pub overhead_us_per_skipped: Option<f64>,
    pub merge: MergeCost,
}

impl fmt::Display for SplitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench split: {} devices every {} ms through 1 and 2 bridges on mosquitto",
            self.devices, self.interval_ms
        )?;
        for run in &self.runs {
            let cpu: Vec<String> = run
                .bridge_cpu_seconds
                .iter()
                .map(|cpu| format!("{cpu:.2}"))
                .collect();
            let rss: Vec<String> = run
                .bridge_peak_rss_mib
                .iter()
                .map(|rss| format!("{rss:.0}"))
                .collect();
            writeln!(
                f,
                "  {} bridge(s), {:.0} s: published {}, ingested {}, skipped {}; bridge CPU s [{}] = {:.1} µs/reading; mosquitto {:.1} µs/reading; a dashboard {:.1} µs/reading; bridge peak RSS MiB [{}]; aggregates {:.0} msg/s, {:.0} B/s",
                run.bridges,
                run.window_seconds,
                run.published,
                run.ingested,
                run.skipped,
                cpu.join(", "),
                run.bridge_cpu_us_per_reading,
                run.broker_cpu_us_per_reading,
                run.dashboard_cpu_us_per_reading,
                rss.join(", "),
                run.aggregate_messages_per_second,
                run.aggregate_bytes_per_second,
            )?;
        }
        if let Some(overhead) = self.overhead_us_per_skipped {
            writeln!(
                f,
                "  second bridge's extra CPU per skipped message (upper bound): {overhead:.1} µs"
            )?;
        }
        write!(
            f,
            "  merging a partial into its group's aggregate ({} groups): {:.0} ns",
            self.merge.groups, self.merge.ns_per_merge
        )
    }
}

/// Runs the fleet through one bridge, then through two, and times the merge.
pub(crate) async fn split(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    let machine = Machine::now();
    let devices = config.devices.unwrap_or(DEVICES);
    let interval = config.interval.unwrap_or(INTERVAL);
    let mut runs = Vec::new();
    for bridges in [1, 2] {
        if shutdown.is_cancelled() {
            break;
        }
        runs.push(run(config, devices, interval, bridges, shutdown).await?);
    }
    let overhead_us_per_skipped = match runs.as_slice() {
        [one, two] if two.skipped > 0 => {
            let per_second =
                |run: &SplitRun| run.bridge_cpu_seconds.iter().sum::<f64>() / run.window_seconds;
            let extra = (per_second(two) - per_second(one)) * two.window_seconds;
            Some(extra.max(0.0) * 1e6 / two.skipped as f64)
        }
        _ => None,
    };
    let merge = merge_cost(devices);
    let lossless = runs
        .iter()
        .all(|run| run.ingested * 100 >= run.published * 99);
    let targets = vec![Target {
        what: "every reading through 1 and 2 bridges".into(),
        target: "ingested within 1% of published in each window".into(),
        measured: runs
            .iter()
            .map(|run| format!("{}: {}/{}", run.bridges, run.ingested, run.published))
            .collect::<Vec<_>>()
            .join(", "),
        met: lossless && runs.len() == 2,
    }];
    Ok(BenchReport::Split {
        machine,
        report: Box::new(SplitReport {
            devices,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            runs,
            overhead_us_per_skipped,
            merge,
        }),
        targets,
    })
}

/// One run on a fresh mosquitto.
async fn run(
    config: &BenchConfig,
    devices: usize,
    interval: Duration,
    bridges: usize,
    shutdown: &CancellationToken,
) -> Result<SplitRun, BenchError> {
    let broker = Measured::start_mosquitto().await?;
    let url: BrokerUrl = format!("mqtt://{}", broker.mqtt)
        .parse()
        .map_err(|error| fail(format!("broker address: {error}")))?;
    let mut children = Vec::new();
    for index in 0..bridges {
        let partition = (bridges > 1).then(|| format!("{index}/{bridges}"));
        children.push(Role::start(&config.iotmon, "bridge", &url, partition).await?);
    }
    let dashboard = Role::start(&config.iotmon, "dashboard", &url, None).await?;
    let traffic = Arc::new(Traffic::default());
    let counting = CancellationToken::new();
    tokio::spawn(count_aggregates(
        url.clone(),
        traffic.clone(),
        counting.clone(),
    ));

    let fleet_config = FleetConfig {
        broker: url.clone(),
        devices,
        interval,
        devices_per_connection: config
            .devices_per_connection
            .unwrap_or(DEVICES_PER_CONNECTION),
        client_prefix: format!("split{bridges}"),
        ramp: Some(ramp_for(devices.div_ceil(DEVICES_PER_CONNECTION))),
        ..FleetConfig::default()
    };
    let connections = fleet_config.connections();
    let fleet = Fleet::start(fleet_config, Progress::Off, shutdown)?;
    let counters = fleet.counters().clone();
    if !poll_until(SETTLE_LIMIT, || {
        counters.connected_now() == connections as u64
    })
    .await
    {
        return Err(fail(format!(
            "only {} of {connections} fleet connections came up",
            counters.connected_now()
        )));
    }
    let deadline = Instant::now() + SETTLE_LIMIT;
    while ingested(&children).await? < devices as u64 && Instant::now() < deadline {
        sleep(Duration::from_millis(200)).await;
    }
    sleep(config.warmup).await;

    let start = Edge::take(&children, &dashboard, &broker, &counters, &traffic).await?;
    sleep(config.measure).await;
    let end = Edge::take(&children, &dashboard, &broker, &counters, &traffic).await?;
    counting.cancel();
    fleet.stop().await;

    let seconds = end.at.duration_since(start.at).as_secs_f64();
    let ingested = end.ingested - start.ingested;
    let published = end.published - start.published;
    let bridge_cpu_seconds: Vec<f64> = start
        .bridges
        .iter()
        .zip(&end.bridges)
        .map(|(before, after)| after.cpu_seconds - before.cpu_seconds)
        .collect();
    let per_reading = |cpu: f64, readings: u64| cpu * 1e6 / readings.max(1) as f64;
    Ok(SplitRun {
        bridges,
        window_seconds: seconds,
        published,
        ingested,
        skipped: end.skipped - start.skipped,
        bridge_cpu_us_per_reading: per_reading(bridge_cpu_seconds.iter().sum(), ingested),
        bridge_cpu_seconds,
        broker_cpu_us_per_reading: per_reading(
            end.broker.cpu_seconds - start.broker.cpu_seconds,
            published,
        ),
        dashboard_cpu_us_per_reading: per_reading(
            end.dashboard.cpu_seconds - start.dashboard.cpu_seconds,
            ingested,
        ),
        bridge_peak_rss_mib: end
            .bridges
            .iter()
            .map(|usage| usage.peak_rss_bytes as f64 / (1024.0 * 1024.0))
            .collect(),
        aggregate_messages_per_second: (end.aggregate_messages - start.aggregate_messages) as f64
            / seconds,
        aggregate_bytes_per_second: (end.aggregate_bytes - start.aggregate_bytes) as f64 / seconds,
    })
}

/// The counters at one edge of the window.
struct Edge {
    at: Instant,
    ingested: u64,
    skipped: u64,
    published: u64,
    bridges: Vec<Usage>,
    dashboard: Usage,
    broker: Usage,
    aggregate_messages: u64,
    aggregate_bytes: u64,
}

impl Edge {
    async fn take(
        bridges: &[Role],
        dashboard: &Role,
        broker: &Measured,
        counters: &iotmon_simulator::stats::Counters,
        traffic: &Traffic,
    ) -> Result<Edge, BenchError> {
        let mut ingested = 0;
        let mut skipped = 0;
        let mut usages = Vec::new();
        for bridge in bridges {
            let metrics = http_get(&bridge.http.to_string(), "/metrics").await?;
            ingested += metric_value(&metrics, "iotmon_ingest_readings_total").unwrap_or(0);
            skipped +=
                metric_value(&metrics, "iotmon_partition_skipped_messages_total").unwrap_or(0);
            usages.push(usage_of(&bridge.child.id().to_string())?);
        }
        Ok(Edge {
            at: Instant::now(),
            ingested,
            skipped,
            published: counters.readings_written(),
            bridges: usages,
            dashboard: usage_of(&dashboard.child.id().to_string())?,
            broker: broker.usage()?,
            aggregate_messages: traffic.messages.load(Ordering::Relaxed),
            aggregate_bytes: traffic.bytes.load(Ordering::Relaxed),
        })
    }
}

async fn ingested(bridges: &[Role]) -> Result<u64, BenchError> {
    let mut total = 0;
    for bridge in bridges {
        let metrics = http_get(&bridge.http.to_string(), "/metrics").await?;
        total += metric_value(&metrics, "iotmon_ingest_readings_total").unwrap_or(0);
    }
    Ok(total)
}

/// Aggregate traffic seen on the broker.
#[derive(Debug, Default)]
struct Traffic {
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// Counts every message on `iotmon/agg/#` and `iotmon/partial/#` (what each dashboard
/// receives for aggregates) until `stop`.
async fn count_aggregates(broker: BrokerUrl, traffic: Arc<Traffic>, stop: CancellationToken) {
    let options = broker.options(&format!("split-aggregates-{}", std::process::id()), 1 << 20);
    let (client, eventloop) = rumqttc::AsyncClient::new(options, 16);
    let (to_counter, mut messages) = mpsc::channel(1024);
    let plan = SessionPlan {
        subscriptions: vec![AGG_FILTER.to_string(), PARTIAL_FILTER.to_string()],
        reliable_subscriptions: Vec::new(),
        announce: None,
    };
    let session = tokio::spawn(drive_session(
        eventloop,
        client,
        plan,
        Some(to_counter),
        stop.clone(),
    ));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            message = messages.recv() => {
                let Some(message) = message else { break };
                traffic.messages.fetch_add(1, Ordering::Relaxed);
                traffic
                    .bytes
                    .fetch_add((message.topic.len() + message.payload.len()) as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = session.await;
}

/// Times [`MERGES`] merges of two partitions' partials over the groups of a fleet of
/// `devices` in the simulator's default layout, each partial with three metrics.
fn merge_cost(devices: usize) -> MergeCost {
    let mut groups: Vec<String> = iotmon_simulator::layout(devices)
        .into_iter()
        .flat_map(|device| {
            let levels: Vec<&str> = device.group.split('/').collect();
            (1..=levels.len())
                .map(|depth| levels[..depth].join("/"))
                .collect::<Vec<_>>()
        })
        .collect();
    groups.sort();
    groups.dedup();
    let partial = |group: &str, partition: u32, round: usize| {
        let metric = PartialMetric {
            count: 20,
            sum: 400.0 + round as f64,
            min: 18.0,
            max: 25.0,
        };
        PartialAggregate {
            group: group.into(),
            partition,
            partitions: 2,
            ts: round as i64,
            lifetime_ms: 33_000,
            devices: DeviceCounts {
                online: 20,
                offline: 0,
                alerting: 0,
            },
            metrics: ["humidity", "pressure", "temperature"]
                .into_iter()
                .map(|name| (name.into(), metric))
                .collect(),
        }
    };
    let inputs: Vec<PartialAggregate> = (0..MERGES)
        .map(|round| {
            let group = &groups[round % groups.len()];
            partial(group, (round % 2) as u32, round)
        })
        .collect();
    let mut merger = PartialMerger::new();
    let started = std::time::Instant::now();
    let mut counted = 0u64;
    for input in inputs {
        if let Ok(merged) = merger.update(input, std::time::Instant::now()) {
            counted += merged.devices.online;
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box(counted);
    MergeCost {
        groups: groups.len(),
        ns_per_merge: elapsed.as_nanos() as f64 / MERGES as f64,
    }
}

/// An `iotmon bridge` or `iotmon dashboard` under measurement; killed when dropped.
#[derive(Debug)]
struct Role {
    child: Child,
    http: SocketAddr,
    dir: PathBuf,
}

impl Role {
    /// [`Role::spawn`] off the async workers (it waits, blocking, for the start-up line).
    async fn start(
        exe: &Path,
        role: &'static str,
        broker: &BrokerUrl,
        partition: Option<String>,
    ) -> Result<Role, BenchError> {
        let (exe, broker) = (exe.to_path_buf(), broker.to_string());
        tokio::task::spawn_blocking(move || Role::spawn(&exe, role, &broker, partition.as_deref()))
            .await
            .map_err(|error| fail(format!("starting iotmon {role}: {error}")))?
    }

    /// Starts `iotmon ROLE` on `broker` (a bridge owning `partition`, or everything), with a
    /// data directory of its own and HTTP on a free port.
    fn spawn(
        exe: &Path,
        role: &str,
        broker: &str,
        partition: Option<&str>,
    ) -> Result<Role, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("iotmon-bench-split-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|error| fail(format!("cannot create {}: {error}", dir.display())))?;
        let mut args = vec![
            role.to_string(),
            "--broker".into(),
            broker.into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(partition) = partition {
            args.extend(["--partition".into(), partition.into()]);
        }
        let mut child = Command::new(exe)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| fail(format!("cannot start {}: {error}", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + START_LIMIT;
        let http = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .map_err(|_| fail(format!("iotmon {role} did not print its address in time")))?;
            if let Some(addr) = line.strip_prefix("http listening on http://") {
                break addr
                    .trim()
                    .parse()
                    .map_err(|_| fail(format!("bad address {addr:?}")))?;
            }
        };
        Ok(Role { child, http, dir })
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        // Errors mean it has already exited, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fail(message: String) -> BenchError {
    BenchError::Failed(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_is_timed_over_the_fleets_groups() {
        let cost = merge_cost(2_000);
        // 2,000 devices at 20 per floor, 5 floors per building, 4 buildings per site:
        // 100 floors, 20 buildings, 5 sites.
        assert_eq!(cost.groups, 125);
        assert!(cost.ns_per_merge > 0.0);
    }
}
