//! `faults`: faults iotmon should survive, one section each, with what was lost.
//!
//! - `kill`: `kill -9` of `iotmon serve` under load and a restart on the same data directory
//!   and ports; the readings its store kept against those it had ingested, and its open
//!   alerts (with acknowledgements) before and after.
//! - `influx`: the InfluxDB server (Debian's `victoria-metrics`) stopped for `--outage` under
//!   load and started again; the points it holds afterwards, window by window, and the
//!   outbox's peak.
//! - `stalled`: viewers that open a WebSocket, send a view and never read again; serve's
//!   memory before, during and after, and well-behaved viewers' delay without and with them.
//! - `storm`: every device of a fleet reconnecting within a few seconds, against
//!   `iotmon broker` and against mosquitto; time until all are connected.
//! - `disk`: serve's data directory on a small tmpfs that is then filled; the error logged
//!   and counted, live data still served, writes resumed once space returns.
//!
//! Every figure comes from real processes over real sockets; a target missed is reported as
//! missed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::process::{free_port, scratch_dir, Measured, Options};
use crate::report::{mib, BenchReport, Machine, Target};
use crate::serve::{drain, ingested, metric_value, start_viewers, wait_for_ingest, Load};
use crate::{load, poll_until, ramp_for, BenchConfig, BenchError};
use iotmon_simulator::viewers::http_get;
use iotmon_simulator::{layout, Fleet, FleetConfig, Progress};
use iotmon_wire::mqtt::Backoff;
use iotmon_wire::viewer::ClientMessage;

/// The reference load: 10K devices every 5 s.
const DEVICES: usize = 10_000;
const INTERVAL: Duration = Duration::from_secs(5);
/// `kill`: chance per reading of an anomaly, which [`STICKY_RULE`] turns into an alert.
const ANOMALY_RATE: f64 = 0.002;
/// `kill`: a rule every anomaly raises (above 35 °C) and nothing clears (the simulated
/// temperatures stay well above 10 °C), so the open alerts only grow and a comparison
/// before and after the restart is not blurred by alerts clearing meanwhile.
const STICKY_RULE: &str = r#"
[[alerts.rules]]
name = "bench-fault-sticky"
metric = "temperature"
above = 35.0
clear = 10.0
severity = "major"
"#;
/// `kill`: alerts acknowledged before the kill, so acknowledgements are checked too.
const ACKNOWLEDGED: usize = 10;
/// `kill`: how long after a first answer that lacks alerts to ask again.
const ALERTS_SETTLE: Duration = Duration::from_secs(5);
/// `kill`: readings lost may be at most this much of the fleet's ingest (the store's flush
/// interval).
const KILL_LOSS_TARGET: Duration = Duration::from_secs(1);
/// `influx`: the outage unless `--outage` says otherwise.
pub(crate) const DEFAULT_OUTAGE: Duration = Duration::from_secs(600);
/// `influx`: the finest rollup tier's width, ms: one point per device and window.
const TIER_MS: i64 = 10_000;
/// `influx`: a window is exported this long after it ends (grace 5 s, two flushes), plus a
/// few seconds for the sender.
const EXPORT_SETTLE: Duration = Duration::from_secs(20);
/// `stalled`: stalled viewers unless `--stalled` says otherwise.
const STALLED: usize = 1_000;
/// `stalled` and `disk`: well-behaved viewers unless `--viewers` says otherwise.
const GOOD_VIEWERS: usize = 100;
const VISIBLE: usize = 100;
/// `stalled`: a stalled viewer's receive buffer: small, so that its socket is full (and the
/// server's sends to it blocked) within a frame or two, not after megabytes of autotuned
/// buffer that a short run would never fill.
const STALLED_RECEIVE_BUFFER: u32 = 4096;
/// `stalled`: devices in a stalled viewer's view: the dashboard's most (`max_view_devices`),
/// the worst a client can ask for, and enough traffic (some 200 device states a second at
/// the reference load) to fill the kernel's socket buffers within the window.
const STALLED_VISIBLE: usize = 1_000;
/// `stalled`: the shortest window with the stalled viewers: the kernel's buffers fill, then
/// the viewer's queue, then `dashboard.stall_limit` (10 s) passes.
const STALLED_WINDOW: Duration = Duration::from_secs(60);
/// `stalled`: serve's memory may grow this much while the stalled viewers are connected.
const STALLED_RSS_GROWTH_MIB: f64 = 100.0;
/// `stalled`: and no more than this over the second half of that window (flat, not growing).
const STALLED_RSS_SLOPE_MIB: f64 = 8.0;
/// `stalled`: serve's memory counts as settled once it grew less than this...
const SETTLED_GROWTH_MIB: f64 = 2.0;
/// ...over this long,...
const SETTLED_SPAN: Duration = Duration::from_secs(20);
/// ...or after this long waiting, whichever comes first.
const RSS_SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// `stalled`: others' p50/p99 count as unchanged up to this factor of the run without...
const LATENCY_FACTOR: f64 = 1.5;
/// ...or this many milliseconds more, whichever is larger (the machine is shared and noisy).
const LATENCY_SLACK_MS: u64 = 50;
/// `storm`: devices reconnect at this rate (10K in 5 s).
const STORM_PER_SECOND: f64 = 2_000.0;
/// `storm`: every device must be connected within this long of the storm's start.
const STORM_TARGET: Duration = Duration::from_secs(10);
/// `storm`: a device gives up after this long (it then counts as never connected).
const STORM_LIMIT: Duration = Duration::from_secs(60);
/// `storm` and `stalled`: a handshake (CONNACK, HTTP 101) slower than this is a failure.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// `disk`: the size of the filesystem the store's directory is put on.
const DISK_SIZE_MIB: u64 = 256;
/// `disk`: errors the store may still count after space returns (a transaction under way).
const DISK_RECOVERY_GRACE: Duration = Duration::from_secs(5);
/// How long connections and viewers may take to come up.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);
/// Devices per connection where the fault is not about device connections: the fleet then
/// leaves serve's sockets (and the bench's) to the viewers.
const GATEWAY: usize = 10;

/// One fault of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` of `iotmon serve` under load, and a restart on the same data.
    Kill,
    /// An InfluxDB outage under load.
    Influx,
    /// Viewers that connect and never read.
    Stalled,
    /// A reconnect storm of the whole fleet, iotmon's broker and mosquitto.
    Storm,
    /// The store's disk filling up.
    Disk,
}

impl FaultKind {
    /// Every fault, in the order the scenario runs them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Influx,
        FaultKind::Stalled,
        FaultKind::Storm,
        FaultKind::Disk,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Influx => "influx",
            FaultKind::Stalled => "stalled",
            FaultKind::Storm => "storm",
            FaultKind::Disk => "disk",
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                format!("unknown fault {text:?}: use kill, influx, stalled, storm or disk")
            })
    }
}

/// One figure of a fault's section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub what: String,
    pub value: f64,
    pub unit: String,
}

fn figure(what: &str, value: f64, unit: &str) -> Figure {
    Figure {
        what: what.into(),
        value,
        unit: unit.into(),
    }
}

/// One fault's section of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultReport {
    pub fault: FaultKind,
    /// What was done, in a sentence.
    pub what: String,
    pub figures: Vec<Figure>,
    pub targets: Vec<Target>,
    /// What else was seen (log lines, why a figure is what it is).
    pub notes: Vec<String>,
}

impl FaultReport {
    /// Every target met.
    pub fn survived(&self) -> bool {
        !self.targets.is_empty() && self.targets.iter().all(|target| target.met)
    }

    /// A fault that could not be run, and why: reported, not hidden.
    fn not_run(fault: FaultKind, what: &str, why: &BenchError) -> FaultReport {
        FaultReport {
            fault,
            what: what.into(),
            figures: Vec::new(),
            targets: vec![Target {
                what: "the fault could run".into(),
                target: "yes".into(),
                measured: why.to_string(),
                met: false,
            }],
            notes: Vec::new(),
        }
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fault {} [{}]: {}",
            self.fault.name(),
            if self.survived() {
                "survived"
            } else {
                "NOT survived"
            },
            self.what
        )?;
        for figure in &self.figures {
            let value = if figure.value.fract() == 0.0 && figure.value.abs() < 1e15 {
                format!("{}", figure.value as i64)
            } else {
                format!("{:.2}", figure.value)
            };
            writeln!(f, "  {}: {value} {}", figure.what, figure.unit)?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        for (number, target) in self.targets.iter().enumerate() {
            if number + 1 < self.targets.len() {
                writeln!(f, "{target}")?;
            } else {
                write!(f, "{target}")?;
            }
        }
        Ok(())
    }
}

/// Runs the chosen faults one after the other.
pub(crate) async fn faults(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    let machine = Machine::now();
    let mut sections = Vec::new();
    for &kind in &config.faults {
        if shutdown.is_cancelled() {
            break;
        }
        let (what, outcome) = match kind {
            FaultKind::Kill => (KILL_WHAT, kill(config, shutdown).await),
            FaultKind::Influx => (INFLUX_WHAT, influx(config, shutdown).await),
            FaultKind::Stalled => (STALLED_WHAT, stalled(config, shutdown).await),
            FaultKind::Storm => (STORM_WHAT, storm(config, shutdown).await),
            FaultKind::Disk => (DISK_WHAT, disk(config, shutdown).await),
        };
        sections.push(outcome.unwrap_or_else(|error| FaultReport::not_run(kind, what, &error)));
    }
    let targets = sections
        .iter()
        .map(|section| Target {
            what: format!("fault {} survived", section.fault.name()),
            target: "every target met".into(),
            measured: format!(
                "{} of {} met",
                section.targets.iter().filter(|target| target.met).count(),
                section.targets.len()
            ),
            met: section.survived(),
        })
        .collect();
    Ok(BenchReport::Faults {
        machine,
        faults: sections,
        targets,
    })
}

// ---------------------------------------------------------------------------------------
// Shared pieces

/// A fleet of the simulator's devices on `mqtt`, connected and reported once.
struct RunningFleet {
    fleet: Fleet,
    connections: usize,
    /// When the fleet started (history is summed from here).
    started_ms: i64,
}

async fn start_fleet(
    mqtt: SocketAddr,
    http: &str,
    devices: usize,
    interval: Duration,
    per_connection: usize,
    anomaly_rate: f64,
    shutdown: &CancellationToken,
) -> Result<RunningFleet, BenchError> {
    let fleet_config = FleetConfig {
        broker: format!("mqtt://{mqtt}")
            .parse()
            .map_err(|error| failed(format!("broker address: {error}")))?,
        devices,
        interval,
        devices_per_connection: per_connection,
        anomaly_rate,
        client_prefix: "bench".into(),
        ramp: Some(ramp_for(devices.div_ceil(per_connection))),
        ..FleetConfig::default()
    };
    let connections = fleet_config.connections();
    let started_ms = iotmon_wire::unix_millis();
    let fleet = Fleet::start(fleet_config, Progress::Off, shutdown)?;
    let counters = fleet.counters().clone();
    if !poll_until(SETTLE_LIMIT, || {
        counters.connected_now() == connections as u64
    })
    .await
    {
        return Err(failed(format!(
            "only {} of {connections} fleet connections came up",
            counters.connected_now()
        )));
    }
    wait_for_ingest(http, devices as u64).await?;
    Ok(RunningFleet {
        fleet,
        connections,
        started_ms,
    })
}

fn http_of(serve: &Measured) -> Result<String, BenchError> {
    serve
        .http
        .map(|addr| addr.to_string())
        .ok_or_else(|| failed("serve printed no HTTP address".into()))
}

async fn metrics(http: &str) -> Result<String, BenchError> {
    Ok(http_get(http, "/metrics").await?)
}

/// A counter from `/metrics`, 0 when absent.
async fn counter(http: &str, name: &str) -> Result<u64, BenchError> {
    Ok(metric_value(&metrics(http).await?, name).unwrap_or(0))
}

async fn pause(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = sleep(duration) => {}
    }
}

fn failed(message: String) -> BenchError {
    BenchError::Failed(message)
}

fn devices_of(config: &BenchConfig) -> usize {
    config.devices.unwrap_or(DEVICES)
}

fn interval_of(config: &BenchConfig) -> Duration {
    config.interval.unwrap_or(INTERVAL)
}

/// Readings the fleet offers per second.
fn rate_of(config: &BenchConfig) -> f64 {
    devices_of(config) as f64 / interval_of(config).as_secs_f64()
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// kill -9

const KILL_WHAT: &str =
    "kill -9 of iotmon serve under load, restarted on the same data directory and ports; \
     readings the store kept against those it had ingested, open alerts before and after";

/// The state of one alert that a restart must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AlertSnap {
    id: u64,
    rule: String,
    subject: String,
    state: String,
    acknowledged_by: Option<String>,
    raised_at: i64,
}

/// The alerts of a `/api/alerts` answer.
fn parse_alerts(body: &str) -> Result<Vec<AlertSnap>, BenchError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|error| failed(format!("bad /api/alerts: {error}")))?;
    let alerts = value["alerts"]
        .as_array()
        .ok_or_else(|| failed("/api/alerts has no \"alerts\"".into()))?;
    alerts
        .iter()
        .map(|alert| {
            let text = |key: &str| alert[key].as_str().map(str::to_string);
            Some(AlertSnap {
                id: alert["id"].as_u64()?,
                rule: text("rule")?,
                subject: text("subject")?,
                state: text("state")?,
                acknowledged_by: text("acknowledged_by"),
                raised_at: alert["raised_at"].as_i64()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| failed("an alert of /api/alerts lacks a field".into()))
}

/// Open alerts before a restart against after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AlertDiff {
    /// Open before, the same after.
    kept: usize,
    /// Open before, gone after.
    missing: Vec<u64>,
    /// Open before and after, with another state or acknowledgement.
    changed: Vec<u64>,
    /// Open after only (raised after the snapshot).
    new: usize,
}

fn compare_alerts(before: &[AlertSnap], after: &[AlertSnap]) -> AlertDiff {
    let after_by_id: HashMap<u64, &AlertSnap> =
        after.iter().map(|alert| (alert.id, alert)).collect();
    let before_ids: BTreeSet<u64> = before.iter().map(|alert| alert.id).collect();
    let mut diff = AlertDiff::default();
    for alert in before {
        match after_by_id.get(&alert.id) {
            None => diff.missing.push(alert.id),
            Some(later) if *later != alert => diff.changed.push(alert.id),
            Some(_) => diff.kept += 1,
        }
    }
    diff.new = after
        .iter()
        .filter(|alert| !before_ids.contains(&alert.id))
        .count();
    diff
}

/// What the kill lost: readings ingested (and not left out as late) that the store does
/// not hold.
fn readings_lost(ingested_before: u64, ingested_after: u64, late: u64, stored: u64) -> i64 {
    (ingested_before + ingested_after) as i64 - late as i64 - stored as i64
}

/// Polls serve's `iotmon_broker_connections` until it reaches `wanted` (or
/// [`SETTLE_LIMIT`] passes); the last count.
async fn poll_broker_connections(http: &str, wanted: u64) -> Result<u64, BenchError> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let now = counter(http, "iotmon_broker_connections").await?;
        if now >= wanted || Instant::now() >= deadline {
            return Ok(now);
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// POST with an empty body; the status code.
async fn http_post(http: &str, path: &str) -> Result<u16, BenchError> {
    iotmon_probe::http::request(http, "POST", path, "Content-Length: 0\r\n", "")
        .await
        .map(|response| response.status)
        .map_err(|error| failed(format!("POST http://{http}{path}: {error}")))
}

/// The sum of `temperature` reading counts over every device's history since `from_ms`.
async fn stored_readings(http: &str, ids: &[String], from_ms: i64) -> Result<u64, BenchError> {
    const WORKERS: usize = 8;
    let to = iotmon_wire::unix_millis() + 60_000;
    let ids: Arc<[String]> = ids.into();
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let ids = Arc::clone(&ids);
        let http = http.to_string();
        workers.spawn(async move {
            let mut sum = 0u64;
            for id in ids.iter().skip(worker).step_by(WORKERS) {
                let path = format!(
                    "/api/history?device={id}&metric=temperature&from={from_ms}&to={to}&points=2000"
                );
                sum += history_count(&http_get(&http, &path).await?)?;
            }
            Ok::<u64, BenchError>(sum)
        });
    }
    let mut total = 0;
    while let Some(joined) = workers.join_next().await {
        total += joined.map_err(|error| failed(format!("history worker: {error}")))??;
    }
    Ok(total)
}

/// The readings counted in one `/api/history` answer.
fn history_count(body: &str) -> Result<u64, BenchError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|error| failed(format!("bad /api/history: {error}")))?;
    let points = value["points"]
        .as_array()
        .ok_or_else(|| failed("/api/history has no \"points\"".into()))?;
    Ok(points
        .iter()
        .filter_map(|point| point["count"].as_u64())
        .sum())
}

async fn kill(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<FaultReport, BenchError> {
    let devices = devices_of(config);
    let data = ScratchDir(scratch_dir("faults-kill")?);
    let options = Options {
        data_dir: Some(data.0.clone()),
        ..Options::default()
    };
    let rule = Some(STICKY_RULE.to_string());
    let mut serve = Measured::start_iotmon_with(
        &config.iotmon,
        "serve",
        rule.clone(),
        Vec::new(),
        options.clone(),
    )
    .await?;
    let http = http_of(&serve)?;
    let running = start_fleet(
        serve.mqtt,
        &http,
        devices,
        interval_of(config),
        config.devices_per_connection.unwrap_or(1),
        config.anomaly_rate.unwrap_or(ANOMALY_RATE),
        shutdown,
    )
    .await?;
    pause(config.warmup, shutdown).await;
    // Acknowledge a few alerts, and wait until the acknowledgements show.
    let open = parse_alerts(&http_get(&http, "/api/alerts").await?)?;
    let to_ack: Vec<u64> = open
        .iter()
        .filter(|alert| alert.acknowledged_by.is_none())
        .take(ACKNOWLEDGED)
        .map(|alert| alert.id)
        .collect();
    for id in &to_ack {
        http_post(&http, &format!("/api/alerts/{id}/ack")).await?;
    }
    pause(config.measure, shutdown).await;

    let before = parse_alerts(&http_get(&http, "/api/alerts").await?)?;
    let text = metrics(&http).await?;
    let read_at = Instant::now();
    serve.kill_hard();
    let gap = read_at.elapsed();
    let killed = Instant::now();
    let ingested_before = metric_value(&text, "iotmon_ingest_readings_total").unwrap_or(0);
    let late_before = metric_value(&text, "iotmon_rollup_late_readings_total").unwrap_or(0);
    let (mqtt, http_addr) = (serve.mqtt, serve.http);
    drop(serve);

    let restarted = Options {
        mqtt_listen: Some(mqtt),
        http_listen: http_addr,
        ..options
    };
    let serve =
        Measured::start_iotmon_with(&config.iotmon, "serve", rule, Vec::new(), restarted).await?;
    let restart_took = killed.elapsed();
    let first_answer = parse_alerts(&http_get(&http, "/api/alerts").await?)?;
    let mut diff = compare_alerts(&before, &first_answer);
    let mut after = first_answer;
    let mut notes = Vec::new();
    if !diff.missing.is_empty() || !diff.changed.is_empty() {
        // Not lost if it is back a moment later: say so, and judge the later answer.
        sleep(ALERTS_SETTLE).await;
        after = parse_alerts(&http_get(&http, "/api/alerts").await?)?;
        notes.push(format!(
            "the first /api/alerts after the restart lacked {} and changed {} of the alerts; {} s later: {} and {}",
            diff.missing.len(),
            diff.changed.len(),
            ALERTS_SETTLE.as_secs(),
            compare_alerts(&before, &after).missing.len(),
            compare_alerts(&before, &after).changed.len()
        ));
        diff = compare_alerts(&before, &after);
    }
    let acked_before = before
        .iter()
        .filter(|alert| alert.acknowledged_by.is_some())
        .count();
    let acked_after = after
        .iter()
        .filter(|alert| {
            before.iter().any(|old| old.id == alert.id) && alert.acknowledged_by.is_some()
        })
        .count();

    // The restarted broker's own count: the fleet's may not have noticed the drop yet.
    let connections = running.connections as u64;
    let reconnected = poll_broker_connections(&http, connections).await?;
    let reconnect_took = killed.elapsed();
    pause(config.measure, shutdown).await;
    let summary = running.fleet.stop().await;
    drain(&http, u64::MAX).await?;
    // The store flushes every second: let the last deltas land.
    sleep(Duration::from_secs(3)).await;
    let text = metrics(&http).await?;
    let ingested_after = metric_value(&text, "iotmon_ingest_readings_total").unwrap_or(0);
    let late_after = metric_value(&text, "iotmon_rollup_late_readings_total").unwrap_or(0);
    let ids: Vec<String> = layout(devices)
        .into_iter()
        .map(|device| device.id)
        .collect();
    let stored = stored_readings(&http, &ids, running.started_ms - 20_000).await?;
    let lost = readings_lost(
        ingested_before,
        ingested_after,
        late_before + late_after,
        stored,
    );
    let rate = rate_of(config);
    let allowed = rate * KILL_LOSS_TARGET.as_secs_f64();
    let never_ingested =
        summary.readings_published as i64 - (ingested_before + ingested_after) as i64;
    drop(serve);
    Ok(FaultReport {
        fault: FaultKind::Kill,
        what: KILL_WHAT.into(),
        figures: vec![
            figure("devices", devices as f64, ""),
            figure("offered", rate, "readings/s"),
            figure(
                "ingested before the kill",
                ingested_before as f64,
                "readings",
            ),
            figure(
                "ingested after the restart",
                ingested_after as f64,
                "readings",
            ),
            figure(
                "left out of rollups as late",
                (late_before + late_after) as f64,
                "readings",
            ),
            figure("held by the store afterwards", stored as f64, "readings"),
            figure(
                "lost by iotmon (ingested, not stored)",
                lost as f64,
                "readings",
            ),
            figure("lost by iotmon", lost as f64 / rate, "s of ingest"),
            figure(
                "published but never ingested (sent while serve was down or its connection dying)",
                never_ingested as f64,
                "readings",
            ),
            figure(
                "from /metrics read to the process gone (SIGKILL)",
                gap.as_secs_f64() * 1000.0,
                "ms",
            ),
            figure(
                "kill to restarted (addresses printed)",
                restart_took.as_secs_f64(),
                "s",
            ),
            figure(
                "kill to every fleet connection back",
                reconnect_took.as_secs_f64(),
                "s",
            ),
            figure("open alerts before", before.len() as f64, ""),
            figure("of them acknowledged", acked_before as f64, ""),
            figure("open alerts after, same state", diff.kept as f64, ""),
            figure("acknowledgements kept", acked_after as f64, ""),
            figure("alerts missing after", diff.missing.len() as f64, ""),
            figure("alerts changed", diff.changed.len() as f64, ""),
            figure("alerts new after the restart", diff.new as f64, ""),
        ],
        targets: vec![
            Target {
                what: "readings lost to kill -9".into(),
                target: format!(
                    "≤ {} s of ingest ({allowed:.0} readings)",
                    KILL_LOSS_TARGET.as_secs()
                ),
                measured: format!("{lost} readings ({:.2} s)", lost as f64 / rate),
                met: (lost as f64) <= allowed,
            },
            Target {
                what: "alert state lost to kill -9".into(),
                target: "none: every open alert back with its state and acknowledgement".into(),
                measured: format!(
                    "{} of {} kept, {} missing, {} changed",
                    diff.kept,
                    before.len(),
                    diff.missing.len(),
                    diff.changed.len()
                ),
                met: !before.is_empty() && diff.missing.is_empty() && diff.changed.is_empty(),
            },
            Target {
                what: "fleet reconnected after the restart".into(),
                target: format!("all {connections} connections"),
                measured: format!("{reconnected} in {:.1} s", reconnect_took.as_secs_f64()),
                met: reconnected >= connections,
            },
        ],
        notes,
    })
}

// ---------------------------------------------------------------------------------------
// InfluxDB outage

const INFLUX_WHAT: &str = "victoria-metrics (InfluxDB v2 write API) stopped for the outage under load, then started \
     on the same data; every device's 10 s points counted in it afterwards, the outbox watched on /metrics";

/// A victoria-metrics server, killed when dropped.
struct Victoria {
    child: Child,
    addr: SocketAddr,
    data: PathBuf,
}

impl Victoria {
    async fn start(data: &Path, addr: SocketAddr) -> Result<Victoria, BenchError> {
        let child = Command::new("victoria-metrics")
            .arg(format!("-storageDataPath={}", data.display()))
            .arg(format!("-httpListenAddr={addr}"))
            .arg("-loggerLevel=ERROR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                failed(format!(
                    "cannot start victoria-metrics ({error}): apt-get install victoria-metrics"
                ))
            })?;
        let victoria = Victoria {
            child,
            addr,
            data: data.to_path_buf(),
        };
        let host = addr.to_string();
        let deadline = Instant::now() + SETTLE_LIMIT;
        while http_get(&host, "/health").await.is_err() {
            if Instant::now() >= deadline {
                return Err(failed("victoria-metrics did not answer in time".into()));
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(victoria)
    }

    /// Stops it with SIGTERM, as an operator or a service manager would, and waits. A
    /// SIGKILL would lose its own last seconds of accepted samples: the server's durability,
    /// not the sink's, and this fault measures the sink.
    fn stop(mut self) -> Result<PathBuf, BenchError> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|error| failed(format!("kill: {error}")))?;
        if !status.success() {
            return Err(failed("SIGTERM to victoria-metrics failed".into()));
        }
        let _ = self.child.wait();
        Ok(self.data.clone())
    }

    /// Every stored sample of `series`, as JSON lines.
    async fn export(&self, series: &str) -> Result<String, BenchError> {
        Ok(http_get(
            &self.addr.to_string(),
            &format!("/api/v1/export?match%5B%5D={series}"),
        )
        .await?)
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a victoria-metrics export of one series name holds, per device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tally {
    /// Devices (series) found.
    devices: usize,
    /// Samples stored, duplicates included.
    samples: u64,
    /// Samples stored twice or more (beyond the first).
    duplicates: u64,
    /// Windows between a device's first and last sample that have none.
    missing: u64,
}

/// Counts an export (JSON lines with `metric.device` and `timestamps`) of a tier whose
/// windows are `width` ms apart: every device reports every window, so a window without a
/// sample between a device's first and last is a point lost.
fn tally(export: &str, width: i64) -> Result<Tally, BenchError> {
    let mut per_device: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in export.lines().filter(|line| line.starts_with('{')) {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|error| failed(format!("bad export line: {error}")))?;
        let device = value["metric"]["device"]
            .as_str()
            .ok_or_else(|| failed("an exported series has no device".into()))?
            .to_string();
        let timestamps = value["timestamps"]
            .as_array()
            .ok_or_else(|| failed("an exported series has no timestamps".into()))?;
        per_device
            .entry(device)
            .or_default()
            .extend(timestamps.iter().filter_map(serde_json::Value::as_i64));
    }
    let mut tally = Tally {
        devices: per_device.len(),
        ..Tally::default()
    };
    for timestamps in per_device.values_mut() {
        timestamps.sort_unstable();
        tally.samples += timestamps.len() as u64;
        let distinct: BTreeSet<i64> = timestamps.iter().copied().collect();
        tally.duplicates += (timestamps.len() - distinct.len()) as u64;
        if let (Some(first), Some(last)) = (distinct.first(), distinct.last()) {
            let expected = ((last - first) / width + 1) as u64;
            tally.missing += expected.saturating_sub(distinct.len() as u64);
        }
    }
    Ok(tally)
}

/// The outbox seen on `/metrics` while a fault runs: its peak, sampled every second.
async fn watch_outbox(http: String, stop: CancellationToken) -> u64 {
    let mut peak = 0;
    loop {
        if let Ok(text) = http_get(&http, "/metrics").await {
            peak = peak.max(metric_value(&text, "iotmon_influx_outbox_bytes").unwrap_or(0));
        }
        tokio::select! {
            () = stop.cancelled() => return peak,
            () = sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn influx(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<FaultReport, BenchError> {
    let devices = devices_of(config);
    let vm_dir = ScratchDir(scratch_dir("faults-victoria")?);
    let vm_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let victoria = Victoria::start(&vm_dir.0, vm_addr).await?;
    let max_outbox: u64 = 1 << 30;
    let serve_config = format!(
        "[bridge.influx]\nenabled = true\nurl = \"http://{vm_addr}\"\norg = \"iotmon\"\n\
         bucket = \"bench\"\ntoken = \"bench\"\nmax_outbox_bytes = {max_outbox}\n"
    );
    let serve =
        Measured::start_iotmon(&config.iotmon, "serve", Some(serve_config), Vec::new()).await?;
    let http = http_of(&serve)?;
    let running = start_fleet(
        serve.mqtt,
        &http,
        devices,
        interval_of(config),
        config.devices_per_connection.unwrap_or(GATEWAY),
        0.0,
        shutdown,
    )
    .await?;
    // The first windows are exported once they have closed.
    let exporting = tokio::time::Instant::now();
    while counter(&http, "iotmon_influx_points_written_total").await? == 0 {
        if exporting.elapsed() > SETTLE_LIMIT {
            return Err(failed(
                "no point reached victoria-metrics before the outage".into(),
            ));
        }
        sleep(Duration::from_millis(500)).await;
    }
    pause(config.warmup, shutdown).await;
    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn(watch_outbox(http.clone(), stop_watch.clone()));

    let written_before = counter(&http, "iotmon_influx_points_written_total").await?;
    let store_errors_before = counter(&http, "iotmon_store_errors_total").await?;
    let data = victoria.stop()?;
    let outage_started = Instant::now();
    pause(config.outage, shutdown).await;
    let outage = outage_started.elapsed();
    let outbox_at_end = counter(&http, "iotmon_influx_outbox_bytes").await?;
    let victoria = Victoria::start(&data, vm_addr).await?;
    let back = Instant::now();
    let drained = poll_outbox_empty(&http, SETTLE_LIMIT * 4).await?;
    let catch_up = back.elapsed();
    pause(config.measure, shutdown).await;
    let summary = running.fleet.stop().await;
    // The last windows close, are exported and sent.
    sleep(EXPORT_SETTLE).await;
    poll_outbox_empty(&http, SETTLE_LIMIT).await?;
    stop_watch.cancel();
    let peak = watcher.await.unwrap_or(0);
    let text = metrics(&http).await?;
    let written = metric_value(&text, "iotmon_influx_points_written_total").unwrap_or(0);
    let dropped = metric_value(&text, "iotmon_influx_points_dropped_total").unwrap_or(0);
    let write_errors = metric_value(&text, "iotmon_influx_write_errors_total").unwrap_or(0);
    let store_errors =
        metric_value(&text, "iotmon_store_errors_total").unwrap_or(0) - store_errors_before;
    // victoria-metrics makes what it accepted searchable within a second or so.
    sleep(Duration::from_secs(3)).await;
    let fine = tally(
        &victoria.export("rollup_10s_temperature_count").await?,
        TIER_MS,
    )?;
    let mut stored = fine.samples;
    for coarse in ["rollup_1m_temperature_count", "rollup_1h_temperature_count"] {
        stored += tally(&victoria.export(coarse).await?, i64::MAX)?.samples;
    }
    drop(serve);
    let outage_minutes = outage.as_secs_f64() / 60.0;
    Ok(FaultReport {
        fault: FaultKind::Influx,
        what: INFLUX_WHAT.into(),
        figures: vec![
            figure("devices", devices as f64, ""),
            figure("readings published", summary.readings_published as f64, ""),
            figure("outage", outage.as_secs_f64(), "s"),
            figure(
                "points written before the outage",
                written_before as f64,
                "",
            ),
            figure("outbox at the end of the outage", mib(outbox_at_end), "MiB"),
            figure("outbox peak (sampled every second)", mib(peak), "MiB"),
            figure(
                "outbox growth per minute of outage",
                mib(outbox_at_end) / outage_minutes.max(1e-9),
                "MiB/min",
            ),
            figure("outbox bound (max_outbox_bytes)", mib(max_outbox), "MiB"),
            figure("server back to outbox empty", catch_up.as_secs_f64(), "s"),
            figure("failed writes retried", write_errors as f64, ""),
            figure("points written in all (iotmon's count)", written as f64, ""),
            figure(
                "points stored in victoria-metrics (all tiers)",
                stored as f64,
                "",
            ),
            figure("devices with 10 s points", fine.devices as f64, ""),
            figure("10 s points stored", fine.samples as f64, ""),
            figure(
                "10 s windows missing between a device's first and last",
                fine.missing as f64,
                "",
            ),
            figure("10 s points stored twice", fine.duplicates as f64, ""),
            figure("points dropped from the outbox", dropped as f64, ""),
            figure(
                "store transactions failed meanwhile (iotmon_store_errors_total)",
                store_errors as f64,
                "",
            ),
        ],
        targets: vec![
            Target {
                what: "points lost across the outage".into(),
                target: "0 (no window missing, none dropped, every point written stored)".into(),
                measured: format!(
                    "{} windows missing, {dropped} dropped, {stored} stored of {written} written",
                    fine.missing
                ),
                met: fine.devices == devices
                    && fine.missing == 0
                    && dropped == 0
                    && stored >= written,
            },
            Target {
                what: "outbox bounded and drained".into(),
                target: format!("peak ≤ {:.0} MiB, empty after the outage", mib(max_outbox)),
                measured: format!(
                    "peak {:.1} MiB, drained in {:.1} s",
                    mib(peak),
                    catch_up.as_secs_f64()
                ),
                met: peak <= max_outbox && drained,
            },
            Target {
                what: "the store unharmed by the outage and the catch-up".into(),
                target: "0 failed store transactions".into(),
                measured: store_errors.to_string(),
                met: store_errors == 0,
            },
        ],
        notes: vec![format!(
            "duplicates are points sent again (at least once); {} were",
            fine.duplicates
        )],
    })
}

/// Polls `/metrics` until the outbox is empty (or `limit` passes); whether it emptied.
async fn poll_outbox_empty(http: &str, limit: Duration) -> Result<bool, BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        if counter(http, "iotmon_influx_outbox_bytes").await? == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Stalled viewers

const STALLED_WHAT: &str =
    "viewers that open /ws, send a view and never read again, beside well-behaved viewers; \
     serve's memory and the others' reading→viewer delay without, with and after them, then \
     serve's memory with a second wave as large";

/// A WebSocket frame from client to server: FIN, `opcode`, masked as RFC 6455 requires.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(index, byte)| byte ^ mask[index % 4]),
    );
    frame
}

/// Opens a WebSocket to `http`'s `/ws` with a small receive buffer, sends a view of
/// `devices`, and hands back the socket, which nobody reads from again.
async fn stalled_viewer(
    http: SocketAddr,
    devices: Vec<String>,
    seed: u32,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(STALLED_RECEIVE_BUFFER)?;
    let mut stream = socket.connect(http).await?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 4096 {
            return Err(std::io::Error::other("no HTTP answer"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other("upgrade refused"));
    }
    let view = serde_json::to_vec(&ClientMessage::view_devices(
        devices.into_iter().map(Into::into).collect(),
    ))
    .map_err(std::io::Error::other)?;
    stream
        .write_all(&client_frame(0x1, &view, seed.to_be_bytes()))
        .await?;
    Ok(stream)
}

/// Whether a window's latency stayed within [`LATENCY_FACTOR`] (or [`LATENCY_SLACK_MS`]) of
/// the window without the fault.
fn latency_unchanged(without: u64, with: u64) -> bool {
    let limit = (without as f64 * LATENCY_FACTOR).max((without + LATENCY_SLACK_MS) as f64);
    with as f64 <= limit
}

/// Resident memory of `serve`, sampled every second for `window`, with the fewest viewers
/// and the most lagging viewers its `/metrics` showed meanwhile.
async fn sample_rss(
    serve: &Measured,
    http: &str,
    window: Duration,
    shutdown: &CancellationToken,
) -> Result<(RssWindow, ViewerGauges), BenchError> {
    let mut samples = Vec::new();
    let mut gauges = ViewerGauges {
        fewest: u64::MAX,
        most_lagging: 0,
    };
    let end = Instant::now() + window;
    loop {
        samples.push(mib(serve.usage()?.rss_bytes));
        let text = metrics(http).await?;
        gauges.fewest = gauges
            .fewest
            .min(metric_value(&text, "iotmon_viewers").unwrap_or(0));
        gauges.most_lagging = gauges
            .most_lagging
            .max(metric_value(&text, "iotmon_viewers_lagging").unwrap_or(0));
        if Instant::now() >= end || shutdown.is_cancelled() {
            break;
        }
        sleep(Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()))).await;
    }
    Ok((RssWindow::of(&samples), gauges))
}

/// Waits until serve's resident memory has settled: grown by less than [`SETTLED_GROWTH_MIB`]
/// over [`SETTLED_SPAN`], or [`RSS_SETTLE_LIMIT`] passed. Under load, serve's memory grows for a
/// minute or more while the broker's logs fill to their bound (`segment_size` ×
/// `segment_count`); measured before that, the growth would be charged to the fault. Returns
/// how long it waited.
async fn settle_rss(
    serve: &Measured,
    shutdown: &CancellationToken,
) -> Result<Duration, BenchError> {
    let span = SETTLED_SPAN.as_secs() as usize;
    let mut samples: Vec<f64> = Vec::new();
    let start = Instant::now();
    let limit = start + RSS_SETTLE_LIMIT;
    loop {
        samples.push(mib(serve.usage()?.rss_bytes));
        let settled = samples.len() > span
            && samples[samples.len() - 1] - samples[samples.len() - 1 - span] < SETTLED_GROWTH_MIB;
        if settled || Instant::now() >= limit || shutdown.is_cancelled() {
            return Ok(start.elapsed());
        }
        sleep(Duration::from_secs(1)).await;
    }
}

/// Viewer gauges of serve's `/metrics` over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ViewerGauges {
    /// The fewest viewers connected at a sample.
    fewest: u64,
    /// The most viewers lagging (owed a snapshot) at a sample.
    most_lagging: u64,
}

/// Resident memory over a window, MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RssWindow {
    first: f64,
    half_way: f64,
    last: f64,
    peak: f64,
}

impl RssWindow {
    fn of(samples: &[f64]) -> RssWindow {
        RssWindow {
            first: samples.first().copied().unwrap_or(0.0),
            half_way: samples.get(samples.len() / 2).copied().unwrap_or(0.0),
            last: samples.last().copied().unwrap_or(0.0),
            peak: samples.iter().copied().fold(0.0, f64::max),
        }
    }
}

async fn stalled(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<FaultReport, BenchError> {
    let devices = devices_of(config);
    let stalled_count = config.stalled.unwrap_or(STALLED);
    let serve = Measured::start_iotmon(&config.iotmon, "serve", None, config.config_args()).await?;
    let http = http_of(&serve)?;
    let http_addr = serve.http.ok_or_else(|| failed("no HTTP address".into()))?;
    let running = start_fleet(
        serve.mqtt,
        &http,
        devices,
        interval_of(config),
        config.devices_per_connection.unwrap_or(GATEWAY),
        0.0,
        shutdown,
    )
    .await?;
    let load = good_viewers(config, devices);
    let mut viewers = start_viewers(&http, &load, shutdown).await?;
    pause(config.warmup, shutdown).await;
    let settling = settle_rss(&serve, shutdown).await?;

    viewers.start_window();
    let (rss_before, _) = sample_rss(&serve, &http, config.measure, shutdown).await?;
    let before = viewers.summary();

    let ids: Vec<String> = layout(devices)
        .into_iter()
        .map(|device| device.id)
        .collect();
    let stalled_sockets = open_stalled_viewers(http_addr, &ids, stalled_count).await;
    let stalled_opened = stalled_sockets.len();
    let viewers_with_stalled = counter(&http, "iotmon_viewers").await?;
    viewers.start_window();
    let stalled_window = config.measure.max(STALLED_WINDOW);
    let (rss_during, gauges) = sample_rss(&serve, &http, stalled_window, shutdown).await?;
    let during = viewers.summary();
    let viewers_at_end = counter(&http, "iotmon_viewers").await?;
    let lagging = counter(&http, "iotmon_viewers_lagging").await?;
    drop(stalled_sockets);

    viewers.start_window();
    let (rss_after, _) = sample_rss(&serve, &http, config.measure, shutdown).await?;
    let after = viewers.summary();

    // A second wave, as many again: memory their predecessors left must serve them, or
    // misbehaving viewers would ratchet serve's memory up a wave at a time.
    let second_wave = open_stalled_viewers(http_addr, &ids, stalled_count).await;
    let (rss_second, _) = sample_rss(&serve, &http, stalled_window, shutdown).await?;
    drop(second_wave);
    let good_lost = after.disconnects;
    viewers.stop().await;
    running.fleet.stop().await;
    drop(serve);

    let good = load.viewers as u64;
    let growth = rss_during.peak - rss_before.peak;
    let slope = rss_during.last - rss_during.half_way;
    let ratchet = rss_second.peak - rss_during.peak.max(rss_after.peak);
    Ok(FaultReport {
        fault: FaultKind::Stalled,
        what: STALLED_WHAT.into(),
        figures: vec![
            figure("devices", devices as f64, ""),
            figure("well-behaved viewers", good as f64, ""),
            figure("waited after warm-up for serve's RSS to settle", settling.as_secs_f64(), "s"),
            figure("stalled viewers opened (view sent)", stalled_opened as f64, ""),
            figure("viewers on serve once the stalled joined", viewers_with_stalled as f64, ""),
            figure("viewers on serve at the end of the stalled window", viewers_at_end as f64, ""),
            figure("lagging viewers at that moment", lagging as f64, ""),
            figure("stalled window", stalled_window.as_secs_f64(), "s"),
            figure("fewest viewers on serve during it", gauges.fewest as f64, ""),
            figure("most viewers lagging during it", gauges.most_lagging as f64, ""),
            figure("RSS before (peak)", rss_before.peak, "MiB"),
            figure("RSS with stalled viewers (peak)", rss_during.peak, "MiB"),
            figure("RSS with stalled viewers, half-way", rss_during.half_way, "MiB"),
            figure("RSS with stalled viewers, at the end", rss_during.last, "MiB"),
            figure("RSS after they closed (end)", rss_after.last, "MiB"),
            figure("RSS with a second wave as large (peak)", rss_second.peak, "MiB"),
            figure("p50 reading→viewer without", before.latency.p50_ms as f64, "ms"),
            figure("p50 with stalled viewers", during.latency.p50_ms as f64, "ms"),
            figure("p50 after", after.latency.p50_ms as f64, "ms"),
            figure("p99 reading→viewer without", before.latency.p99_ms as f64, "ms"),
            figure("p99 with stalled viewers", during.latency.p99_ms as f64, "ms"),
            figure("p99 after", after.latency.p99_ms as f64, "ms"),
            figure("device states received per window without", before.latency.count as f64, ""),
            figure("with stalled viewers", during.latency.count as f64, ""),
            figure("well-behaved viewers lost", good_lost as f64, ""),
        ],
        targets: vec![
            Target {
                what: "serve's memory with stalled viewers".into(),
                target: format!(
                    "peak ≤ before + {STALLED_RSS_GROWTH_MIB:.0} MiB, ≤ {STALLED_RSS_SLOPE_MIB:.0} MiB growth over the second half"
                ),
                measured: format!("{growth:+.1} MiB, {slope:+.1} MiB over the second half"),
                met: growth <= STALLED_RSS_GROWTH_MIB && slope <= STALLED_RSS_SLOPE_MIB,
            },
            Target {
                what: "serve's memory with a second wave of stalled viewers".into(),
                target: format!(
                    "peak ≤ {STALLED_RSS_SLOPE_MIB:.0} MiB above the first wave's (memory reused, not accumulated)"
                ),
                measured: format!("{ratchet:+.1} MiB"),
                met: ratchet <= STALLED_RSS_SLOPE_MIB,
            },
            Target {
                what: "others' reading→viewer delay with stalled viewers".into(),
                target: format!(
                    "p50 and p99 ≤ {LATENCY_FACTOR}× without (or + {LATENCY_SLACK_MS} ms)"
                ),
                measured: format!(
                    "p50 {} → {} ms, p99 {} → {} ms",
                    before.latency.p50_ms,
                    during.latency.p50_ms,
                    before.latency.p99_ms,
                    during.latency.p99_ms
                ),
                met: during.latency.count > 0
                    && latency_unchanged(before.latency.p50_ms, during.latency.p50_ms)
                    && latency_unchanged(before.latency.p99_ms, during.latency.p99_ms),
            },
            Target {
                what: "well-behaved viewers kept".into(),
                target: format!("all {good}, none lost"),
                measured: format!("{} connected, {good_lost} lost", after.connected_at_end),
                met: after.connected_at_end == good && good_lost == 0,
            },
        ],
        notes: vec![format!(
            "stalled sockets ask for a {STALLED_RECEIVE_BUFFER}-byte receive buffer, so serve's sends to them block within a frame or two"
        )],
    })
}

/// Opens `count` stalled viewers, each viewing [`STALLED_VISIBLE`] consecutive devices of
/// `ids` from a spread of starting points; the sockets of those whose view was sent.
async fn open_stalled_viewers(http: SocketAddr, ids: &[String], count: usize) -> Vec<TcpStream> {
    let visible = STALLED_VISIBLE.min(ids.len());
    let mut opening = JoinSet::new();
    for number in 0..count {
        let start = (number * 7919) % (ids.len() - visible + 1);
        let view = ids[start..start + visible].to_vec();
        opening.spawn(async move {
            timeout(HANDSHAKE_LIMIT, stalled_viewer(http, view, number as u32))
                .await
                .ok()
                .and_then(Result::ok)
        });
    }
    let mut sockets = Vec::new();
    while let Some(joined) = opening.join_next().await {
        if let Ok(Some(stream)) = joined {
            sockets.push(stream);
        }
    }
    sockets
}

/// The well-behaved viewers of `stalled` and `disk`.
fn good_viewers(config: &BenchConfig, devices: usize) -> Load {
    Load {
        devices,
        interval: interval_of(config),
        devices_per_connection: GATEWAY,
        readings_per_message: 1,
        viewers: config.viewers.unwrap_or(GOOD_VIEWERS),
        visible: config.visible.unwrap_or(VISIBLE).min(devices),
        anomaly_rate: 0.0,
    }
}

// ---------------------------------------------------------------------------------------
// Reconnect storm

const STORM_WHAT: &str = "every device of the fleet connected (raw MQTT), all dropped at once, then all reconnecting \
     with the same client ids within a few seconds, retrying with backoff; iotmon broker, then mosquitto";

/// One broker's storm.
#[derive(Debug, Clone, Default, PartialEq)]
struct StormOutcome {
    devices: usize,
    connected: usize,
    /// From the storm's start to the last CONNACK, when every device got one.
    all_connected: Option<Duration>,
    /// From each device's turn to its CONNACK, ms.
    p50_ms: u64,
    p99_ms: u64,
    max_ms: u64,
    /// Attempts that failed (refused, timed out, reset) and were retried.
    failed_attempts: u64,
}

/// Summarises per-device times to CONNACK (`None`: never) over a storm.
fn storm_outcome(times: &[Option<(Duration, Duration)>], failed_attempts: u64) -> StormOutcome {
    let mut waits: Vec<u64> = times
        .iter()
        .flatten()
        .map(|(wait, _)| wait.as_millis() as u64)
        .collect();
    waits.sort_unstable();
    let connected = waits.len();
    let last = times.iter().flatten().map(|(_, done)| *done).max();
    StormOutcome {
        devices: times.len(),
        connected,
        all_connected: if connected == times.len() { last } else { None },
        p50_ms: percentile(&waits, 0.50),
        p99_ms: percentile(&waits, 0.99),
        max_ms: waits.last().copied().unwrap_or(0),
        failed_attempts,
    }
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Connects `count` devices spread evenly over `spread`, each retrying with backoff until
/// [`STORM_LIMIT`]; per device (time from its turn to its CONNACK, time from the start),
/// the failed attempts, and the open connections.
async fn connect_all(
    broker: SocketAddr,
    count: usize,
    spread: Duration,
) -> (Vec<Option<(Duration, Duration)>>, u64, Vec<TcpStream>) {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let turn = start + spread.mul_f64(index as f64 / count as f64);
        tasks.spawn(async move {
            sleep_until(turn).await;
            let client_id = format!("storm-{index}");
            let mut backoff = Backoff::new();
            let mut failures = 0u64;
            loop {
                let attempt = timeout(HANDSHAKE_LIMIT, load::connect(broker, &client_id)).await;
                if let Ok(Ok(stream)) = attempt {
                    let now = Instant::now();
                    return (index, Some((now - turn, now - start, stream)), failures);
                }
                failures += 1;
                if start.elapsed() >= STORM_LIMIT {
                    return (index, None, failures);
                }
                sleep(backoff.next_delay()).await;
            }
        });
    }
    let mut times = vec![None; count];
    let mut streams = Vec::with_capacity(count);
    let mut failed_attempts = 0;
    while let Some(joined) = tasks.join_next().await {
        let Ok((index, outcome, failures)) = joined else {
            continue;
        };
        failed_attempts += failures;
        if let Some((wait, done, stream)) = outcome {
            times[index] = Some((wait, done));
            streams.push(stream);
        }
    }
    (times, failed_attempts, streams)
}

async fn storm_against(broker: &Measured, devices: usize) -> StormOutcome {
    // Connect everyone first, at the benches' gentle pace...
    let (_, _, streams) = connect_all(broker.mqtt, devices, ramp_for(devices)).await;
    // ...then drop every connection at once (a network blip, a load balancer restarting),
    // and every device comes back within the storm's spread.
    drop(streams);
    let spread = Duration::from_secs_f64(devices as f64 / STORM_PER_SECOND);
    let (times, failed_attempts, streams) = connect_all(broker.mqtt, devices, spread).await;
    drop(streams);
    storm_outcome(&times, failed_attempts)
}

async fn storm(
    config: &BenchConfig,
    _shutdown: &CancellationToken,
) -> Result<FaultReport, BenchError> {
    let devices = devices_of(config);
    let iotmon =
        Measured::start_iotmon(&config.iotmon, "broker", None, config.config_args()).await?;
    let ours = storm_against(&iotmon, devices).await;
    let ours_rss = mib(iotmon.usage()?.peak_rss_bytes);
    drop(iotmon);
    let mosquitto = Measured::start_mosquitto().await?;
    let theirs = storm_against(&mosquitto, devices).await;
    drop(mosquitto);
    let spread = devices as f64 / STORM_PER_SECOND;
    let mut figures = vec![
        figure("devices", devices as f64, ""),
        figure("storm spread (all reconnect within)", spread, "s"),
    ];
    let mut targets = Vec::new();
    for (name, outcome) in [("iotmon broker", &ours), ("mosquitto", &theirs)] {
        figures.extend([
            figure(&format!("{name}: connected"), outcome.connected as f64, ""),
            figure(
                &format!("{name}: storm start to all connected"),
                outcome
                    .all_connected
                    .map_or(f64::NAN, |took| took.as_secs_f64()),
                "s",
            ),
            figure(
                &format!("{name}: turn to CONNACK p50"),
                outcome.p50_ms as f64,
                "ms",
            ),
            figure(
                &format!("{name}: turn to CONNACK p99"),
                outcome.p99_ms as f64,
                "ms",
            ),
            figure(
                &format!("{name}: turn to CONNACK max"),
                outcome.max_ms as f64,
                "ms",
            ),
            figure(
                &format!("{name}: failed attempts retried"),
                outcome.failed_attempts as f64,
                "",
            ),
        ]);
        targets.push(Target {
            what: format!("{name}: reconnect storm of {devices} devices"),
            target: format!(
                "all connected within {} s of the storm's start",
                STORM_TARGET.as_secs()
            ),
            measured: outcome.all_connected.map_or(
                format!(
                    "{} of {devices} connected in {} s",
                    outcome.connected,
                    STORM_LIMIT.as_secs()
                ),
                |took| format!("all in {:.2} s", took.as_secs_f64()),
            ),
            met: outcome
                .all_connected
                .is_some_and(|took| took <= STORM_TARGET),
        });
    }
    figures.push(figure("iotmon broker peak RSS", ours_rss, "MiB"));
    Ok(FaultReport {
        fault: FaultKind::Storm,
        what: STORM_WHAT.into(),
        figures,
        targets,
        notes: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------
// Disk full

const DISK_WHAT: &str =
    "serve's data directory on a small tmpfs, filled to the last byte under load, then freed; \
     the error logged and counted, live data still served, writes resumed";

/// A tmpfs mounted for the fault; unmounted and removed when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` on a new directory.
    ///
    /// # Errors
    /// `mount` is refused (not root, or no permission in this container).
    fn mount(size_mib: u64) -> Result<Tmpfs, BenchError> {
        let dir = scratch_dir("faults-disk")?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|error| failed(format!("mount: {error}")))?;
        if !output.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(failed(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `path` until the filesystem is full; the bytes written.
fn fill(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(taken) => written += taken as u64,
            // ENOSPC: full. A short write before it took whatever part of a chunk fitted.
            Err(error) if error.raw_os_error() == Some(28) => return Ok(written),
            Err(error) => return Err(error),
        }
    }
}

/// Lines of a log that report a store failure.
fn store_error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains("ERROR") && line.contains("store"))
        .collect()
}

async fn disk(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<FaultReport, BenchError> {
    let devices = devices_of(config);
    let mount = Tmpfs::mount(DISK_SIZE_MIB)?;
    let logs = ScratchDir(scratch_dir("faults-disk-log")?);
    let log_file = logs.0.join("serve.log");
    let data = mount.0.join("data");
    std::fs::create_dir_all(&data).map_err(|error| failed(format!("data dir: {error}")))?;
    let options = Options {
        data_dir: Some(data),
        log_file: Some(log_file.clone()),
        ..Options::default()
    };
    // Alerts too: their store (alerts.db) is on the same full disk.
    let rule = Some(STICKY_RULE.to_string());
    let anomaly_rate = config.anomaly_rate.unwrap_or(ANOMALY_RATE);
    let mut serve =
        Measured::start_iotmon_with(&config.iotmon, "serve", rule, Vec::new(), options).await?;
    let http = http_of(&serve)?;
    let running = start_fleet(
        serve.mqtt,
        &http,
        devices,
        interval_of(config),
        config.devices_per_connection.unwrap_or(GATEWAY),
        anomaly_rate,
        shutdown,
    )
    .await?;
    let mut load = good_viewers(config, devices);
    load.viewers = load.viewers.min(10);
    // Some of them subscribe to the top-level groups, so every alert reaches a viewer.
    load.anomaly_rate = anomaly_rate;
    let mut viewers = start_viewers(&http, &load, shutdown).await?;
    pause(config.warmup, shutdown).await;

    let errors_before = counter(&http, "iotmon_store_errors_total").await?;
    let rows_before = counter(&http, "iotmon_store_rollup_rows_total").await?;
    let filler = mount.0.join("filler");
    let filler_path = filler.clone();
    let filled = tokio::task::spawn_blocking(move || fill(&filler_path))
        .await
        .map_err(|error| failed(format!("filling: {error}")))?
        .map_err(|error| failed(format!("filling: {error}")))?;
    let full_started_ms = iotmon_wire::unix_millis();
    let ingested_full_start = ingested(&http).await?;
    let raised_before = counter(&http, "iotmon_alerts_raised_total").await?;
    let alert_errors_before = counter(&http, "iotmon_alert_store_errors_total").await?;
    viewers.start_window();
    let full_started = Instant::now();
    pause(config.measure, shutdown).await;
    let full_seconds = full_started.elapsed().as_secs_f64();
    let while_full = viewers.summary();
    let ingested_full = ingested(&http).await? - ingested_full_start;
    let errors_full = counter(&http, "iotmon_store_errors_total").await? - errors_before;
    let rows_full = counter(&http, "iotmon_store_rollup_rows_total").await? - rows_before;
    let alive_full = serve.exited().is_none();
    let raised_full = counter(&http, "iotmon_alerts_raised_total").await? - raised_before;
    let alert_errors_full =
        counter(&http, "iotmon_alert_store_errors_total").await? - alert_errors_before;

    std::fs::remove_file(&filler).map_err(|error| failed(format!("freeing: {error}")))?;
    let freed_ms = iotmon_wire::unix_millis();
    sleep(DISK_RECOVERY_GRACE).await;
    let errors_settled = counter(&http, "iotmon_store_errors_total").await?;
    let rows_settled = counter(&http, "iotmon_store_rollup_rows_total").await?;
    viewers.start_window();
    pause(config.measure, shutdown).await;
    let after = viewers.summary();
    let errors_after = counter(&http, "iotmon_store_errors_total").await? - errors_settled;
    let rows_after = counter(&http, "iotmon_store_rollup_rows_total").await? - rows_settled;
    let first = layout(devices)
        .into_iter()
        .next()
        .map(|device| device.id)
        .unwrap_or_default();
    let history = http_get(
        &http,
        &format!("/api/history?device={first}&metric=temperature&from={freed_ms}&points=100"),
    )
    .await
    .map(|body| history_count(&body).unwrap_or(0))
    .unwrap_or(0);
    let alive = serve.exited().is_none();
    // The alerts raised while the disk was full, from the alert store's history.
    let stored_alerts = http_get(
        &http,
        &format!("/api/alerts?from={full_started_ms}&to={freed_ms}&limit=1000"),
    )
    .await
    .map_err(BenchError::from)
    .and_then(|body| parse_alerts(&body))
    .map_or(0, |alerts| alerts.len() as u64);
    viewers.stop().await;
    running.fleet.stop().await;
    serve.kill_hard();
    drop(serve);
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    let error_lines = store_error_lines(&log);
    let rate = rate_of(config);
    let mut notes: Vec<String> = error_lines
        .iter()
        .take(3)
        .map(|line| format!("log: {}", line.trim()))
        .collect();
    if log.contains("panicked") {
        notes.push("log: a panic was logged".into());
    }
    Ok(FaultReport {
        fault: FaultKind::Disk,
        what: DISK_WHAT.into(),
        figures: vec![
            figure("devices", devices as f64, ""),
            figure("filesystem", DISK_SIZE_MIB as f64, "MiB tmpfs"),
            figure("filler written until full", mib(filled), "MiB"),
            figure("time full", full_seconds, "s"),
            figure("store errors counted while full", errors_full as f64, ""),
            figure(
                "store error lines logged (rate-limited)",
                error_lines.len() as f64,
                "",
            ),
            figure("rollup rows written while full", rows_full as f64, ""),
            figure(
                "ingested while full",
                ingested_full as f64 / full_seconds,
                "readings/s",
            ),
            figure("offered", rate, "readings/s"),
            figure(
                "device states to viewers while full",
                while_full.latency.count as f64,
                "",
            ),
            figure(
                "p99 reading→viewer while full",
                while_full.latency.p99_ms as f64,
                "ms",
            ),
            figure(
                "store errors after space returned (past the grace)",
                errors_after as f64,
                "",
            ),
            figure(
                "rollup rows written after space returned",
                rows_after as f64,
                "",
            ),
            figure(
                "readings in one device's history since space returned",
                history as f64,
                "",
            ),
            figure("viewers lost", after.disconnects as f64, ""),
            figure("alerts raised while full", raised_full as f64, ""),
            figure(
                "alert raises seen by viewers while full",
                while_full.alert_latency.count as f64,
                "",
            ),
            figure(
                "alert store errors while full (kept, retried)",
                alert_errors_full as f64,
                "",
            ),
            figure(
                "of the alerts raised while full, in the alert store afterwards",
                stored_alerts as f64,
                "",
            ),
        ],
        targets: vec![
            Target {
                what: "a full disk is logged and counted".into(),
                target: "iotmon_store_errors_total grows, an error line in the log".into(),
                measured: format!("{errors_full} errors, {} log lines", error_lines.len()),
                met: errors_full > 0 && !error_lines.is_empty(),
            },
            Target {
                what: "live data served while full".into(),
                target: "process up, ingest ≥ 90 % of offered, viewers receive updates".into(),
                measured: format!(
                    "{}, {:.0}/s of {rate:.0}/s, {} states to viewers",
                    if alive_full { "up" } else { "EXITED" },
                    ingested_full as f64 / full_seconds,
                    while_full.latency.count
                ),
                met: alive_full
                    && ingested_full as f64 / full_seconds >= 0.9 * rate
                    && while_full.latency.count > 0,
            },
            Target {
                what: "writes resume when space returns".into(),
                target: format!(
                    "no store error after {} s, rollup rows written, history grows",
                    DISK_RECOVERY_GRACE.as_secs()
                ),
                measured: format!(
                    "{errors_after} errors, {rows_after} rows, {history} readings in history"
                ),
                met: alive && errors_after == 0 && rows_after > 0 && history > 0,
            },
            Target {
                what: "alerts raised while full are kept".into(),
                target: "every one in the alert store once space returns".into(),
                measured: format!("{stored_alerts} of {raised_full}"),
                met: stored_alerts >= raised_full,
            },
        ],
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: u64, state: &str, acked: bool) -> AlertSnap {
        AlertSnap {
            id,
            rule: "r".into(),
            subject: format!("d{id}"),
            state: state.into(),
            acknowledged_by: acked.then(|| "api".into()),
            raised_at: 1_000 + id as i64,
        }
    }

    #[test]
    fn faults_parse_by_name() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse(), Ok(kind));
        }
        assert!("flood".parse::<FaultKind>().is_err());
    }

    #[test]
    fn alerts_parse_from_the_api_answer() {
        let body = r#"{"alerts":[{"id":7,"rule":"hot","subject":"s-1","group":"g","severity":"major",
            "state":"active_acknowledged","message":"m","raised_at":5,"changed_at":6,"acknowledged_by":"api","seq":3}]}"#;
        let alerts = parse_alerts(body).expect("valid");
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].id, 7);
        assert_eq!(alerts[0].acknowledged_by.as_deref(), Some("api"));
        assert!(parse_alerts(r#"{"alerts":[{"id":1}]}"#).is_err());
        assert!(parse_alerts("not json").is_err());
    }

    #[test]
    fn a_restart_that_forgets_or_changes_an_alert_is_caught() {
        let before = vec![
            alert(1, "active_unacknowledged", false),
            alert(2, "active_acknowledged", true),
            alert(3, "active_unacknowledged", false),
        ];
        let after = vec![
            alert(1, "active_unacknowledged", false),
            alert(2, "active_unacknowledged", false),
            alert(4, "active_unacknowledged", false),
        ];
        let diff = compare_alerts(&before, &after);
        assert_eq!(diff.kept, 1);
        assert_eq!(diff.missing, [3]);
        assert_eq!(diff.changed, [2], "the acknowledgement was lost");
        assert_eq!(diff.new, 1);
        assert_eq!(compare_alerts(&before, &before).kept, 3);
    }

    #[test]
    fn readings_lost_count_what_was_ingested_but_not_stored() {
        assert_eq!(readings_lost(1_000, 500, 10, 1_480), 10);
        assert_eq!(
            readings_lost(1_000, 0, 0, 1_003),
            -3,
            "read just before the kill"
        );
    }

    #[test]
    fn history_counts_add_up() {
        let body = r#"{"device":"d","metric":"temperature","tier_ms":10000,"bucket_ms":10000,
            "points":[{"ts":0,"count":2,"mean":1,"min":1,"max":1,"last":1},
                      {"ts":10000,"count":3,"mean":1,"min":1,"max":1,"last":1}]}"#;
        assert_eq!(history_count(body).expect("valid"), 5);
        assert!(history_count("{}").is_err());
    }

    #[test]
    fn an_export_tally_finds_gaps_and_duplicates() {
        let export = "{\"metric\":{\"__name__\":\"rollup_10s_temperature_count\",\"device\":\"a\"},\"values\":[2,2,2,2],\"timestamps\":[0,10000,20000,20000]}\n\
                      {\"metric\":{\"__name__\":\"rollup_10s_temperature_count\",\"device\":\"b\"},\"values\":[2,2],\"timestamps\":[0,30000]}\n";
        let tally = tally(export, 10_000).expect("valid");
        assert_eq!(
            tally,
            Tally {
                devices: 2,
                samples: 6,
                duplicates: 1,
                missing: 2,
            }
        );
        assert_eq!(tally_of_nothing(), Tally::default());
        assert!(super::tally("{\"metric\":{}}", 10_000).is_err());
    }

    fn tally_of_nothing() -> Tally {
        tally("", 10_000).expect("empty is valid")
    }

    #[test]
    fn client_frames_are_masked_with_the_right_length() {
        let mask = [1, 2, 3, 4];
        let frame = client_frame(0x1, b"hi", mask);
        assert_eq!(frame[..2], [0x81, 0x82]);
        assert_eq!(frame[2..6], mask);
        assert_eq!(frame[6..], [b'h' ^ 1, b'i' ^ 2]);
        let long = client_frame(0x1, &[0u8; 300], mask);
        assert_eq!(long[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([long[2], long[3]]), 300);
        assert_eq!(long.len(), 4 + 4 + 300);
        let huge = client_frame(0x2, &vec![0u8; 70_000], mask);
        assert_eq!(huge[1], 0x80 | 127);
        assert_eq!(huge.len(), 10 + 4 + 70_000);
    }

    #[test]
    fn latency_counts_as_unchanged_within_the_factor_or_the_slack() {
        assert!(latency_unchanged(100, 150));
        assert!(!latency_unchanged(200, 301));
        assert!(latency_unchanged(10, 60), "small figures get the slack");
        assert!(!latency_unchanged(10, 61));
    }

    #[test]
    fn rss_windows_take_the_half_way_and_peak() {
        let window = RssWindow::of(&[100.0, 120.0, 110.0, 111.0]);
        assert_eq!(window.first, 100.0);
        assert_eq!(window.half_way, 110.0);
        assert_eq!(window.last, 111.0);
        assert_eq!(window.peak, 120.0);
        assert_eq!(RssWindow::of(&[]), RssWindow::default());
    }

    #[test]
    fn a_storm_is_all_connected_only_when_every_device_is() {
        let secs = Duration::from_secs;
        let times = vec![Some((secs(1), secs(2))), Some((secs(3), secs(7)))];
        let outcome = storm_outcome(&times, 4);
        assert_eq!(outcome.all_connected, Some(secs(7)));
        assert_eq!(
            (outcome.p50_ms, outcome.p99_ms, outcome.max_ms),
            (1000, 3000, 3000)
        );
        assert_eq!(outcome.failed_attempts, 4);
        let partial = storm_outcome(&[Some((secs(1), secs(1))), None], 9);
        assert_eq!(partial.connected, 1);
        assert_eq!(partial.all_connected, None);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), 50);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    #[test]
    fn store_errors_are_found_in_the_log() {
        let log = "2026-01-01T00:00:00Z ERROR iotmon_bridge::store::writer: store write failed; batch lost (its rollups and device registry changes; see iotmon_store_errors_total) error=database or disk is full batches=1\n\
                   2026-01-01T00:00:01Z WARN iotmon_dashboard: something else\n\
                   2026-01-01T00:00:02Z ERROR iotmon_bridge::store::writer: store maintenance failed; nothing lost, it is retried on the next pass (see iotmon_store_maintenance_errors_total) error=database or disk is full\n";
        assert_eq!(store_error_lines(log).len(), 2);
    }

    #[test]
    fn a_fault_that_cannot_run_is_reported_not_survived() {
        let report = FaultReport::not_run(
            FaultKind::Disk,
            DISK_WHAT,
            &BenchError::Failed("no mount".into()),
        );
        assert!(!report.survived());
        assert!(report.to_string().contains("NOT survived"));
    }
}
