//! Load points against `iotmon serve` (a fleet, and viewers, for a measurement window) and
//! the scenarios built from them: `reference`, `stress` and `fanout`.

use std::time::Duration;

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::process::{own_usage, Measured, Usage};
use crate::report::{mib, BenchReport, LoadPoint, Machine, Target};
use crate::BenchError;
use crate::{poll_until, ramp_for, BenchConfig};
use iotmon_simulator::viewers::{http_get, ViewerConfig, Viewers};
use iotmon_simulator::Progress;
use iotmon_simulator::{layout, Fleet, FleetConfig};

/// The reference load: 10K devices every 5 s.
const REFERENCE_DEVICES: usize = 10_000;
const REFERENCE_INTERVAL: Duration = Duration::from_secs(5);
const REFERENCE_VIEWERS: usize = 1_000;
const REFERENCE_VISIBLE: usize = 100;
/// Chance per reading that a reference device starts an anomaly: at 2,000 readings/s, about
/// 4 anomalies (alert raises) a second fleet-wide, some 80 in a 20 s window; about 0.6 % of
/// the devices are in an anomaly at any time.
const REFERENCE_ANOMALY_RATE: f64 = 0.002;
/// The alert rule of every `iotmon serve` whose fleet makes anomalies: an anomaly lifts the
/// temperature from 15–27 °C to above 36 °C for three readings, so each one raises an alert
/// and clears it. No `for`: the alert is raised on the first anomalous reading, so the delay
/// measured is iotmon's own, not a delay the rule asks for.
const ANOMALY_RULE: &str = r#"
[[alerts.rules]]
name = "bench-anomaly"
metric = "temperature"
above = 35.0
clear = 30.0
severity = "major"
"#;
/// One viewer in this many (at least one) also subscribes to the fleet's top-level groups,
/// so that every alert reaches a few viewers whatever they view; the others receive the
/// alerts of the devices in their view.
const VIEWERS_PER_GROUP_SUBSCRIBER: usize = 100;
/// Targets of issue 6.
const TARGET_P99_MS: u64 = 150;
/// Target of alert delivery: from the device's publish to the viewer's receipt.
const TARGET_ALERT_P99_MS: u64 = 50;
const TARGET_CPU_PERCENT: f64 = 30.0;
const TARGET_RSS_MIB: f64 = 1024.0;
const TARGET_STRESS_PER_SECOND: f64 = 100_000.0;
const TARGET_FANOUT_VIEWERS: usize = 10_000;
/// `fanout` counts a step clean only if p99 stays under this, besides zero loss and every
/// viewer served.
const FANOUT_P99_LIMIT_MS: u64 = 1_000;
/// `stress`: devices of the fleet (the rate is set by the interval), on their own
/// connections.
const STRESS_DEVICES: usize = 2_000;
/// How long connections, viewers and draining may take before the bench gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Once the fleet stops, iotmon has this long to ingest what was published.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);
/// Viewer sessions opened per second while a bench ramps up.
const VIEWERS_PER_SECOND: f64 = 1_000.0;
/// Mean time between a bench viewer's scrolls.
const SCROLL_EVERY: Duration = Duration::from_secs(20);

/// One load point to measure.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub devices: usize,
    pub interval: Duration,
    pub devices_per_connection: usize,
    pub readings_per_message: usize,
    pub viewers: usize,
    pub visible: usize,
    /// Chance per reading of an anomaly; above 0, `iotmon serve` gets [`ANOMALY_RULE`].
    pub anomaly_rate: f64,
}

/// `reference`: the reference load once, judged against the targets.
pub(crate) async fn reference(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    let machine = Machine::now();
    let load = Load {
        devices: config.devices.unwrap_or(REFERENCE_DEVICES),
        interval: config.interval.unwrap_or(REFERENCE_INTERVAL),
        devices_per_connection: config.devices_per_connection.unwrap_or(1),
        readings_per_message: config.readings_per_message.unwrap_or(1),
        viewers: config.viewers.unwrap_or(REFERENCE_VIEWERS),
        visible: config.visible.unwrap_or(REFERENCE_VISIBLE),
        anomaly_rate: config.anomaly_rate.unwrap_or(REFERENCE_ANOMALY_RATE),
    };
    let run = measure(config, &load, shutdown).await?;
    let targets = vec![
        Target {
            what: "p99 reading→viewer".into(),
            target: format!("≤ {TARGET_P99_MS} ms"),
            measured: format!("{} ms", run.latency.p99_ms),
            met: run.latency.count > 0 && run.latency.p99_ms <= TARGET_P99_MS,
        },
        Target {
            what: "alert delay".into(),
            target: format!("p99 ≤ {TARGET_ALERT_P99_MS} ms"),
            measured: format!(
                "p99 {} ms over {} raises",
                run.alert_latency.p99_ms, run.alert_latency.count
            ),
            met: run.alert_latency.count > 0 && run.alert_latency.p99_ms <= TARGET_ALERT_P99_MS,
        },
        Target {
            what: "iotmon CPU".into(),
            target: format!("≤ {TARGET_CPU_PERCENT:.0} % of one core"),
            measured: format!("{:.1} %", run.iotmon_cpu_percent),
            met: run.iotmon_cpu_percent <= TARGET_CPU_PERCENT,
        },
        Target {
            what: "iotmon peak RSS".into(),
            target: format!("≤ {TARGET_RSS_MIB:.0} MiB"),
            measured: format!("{:.0} MiB", run.iotmon_peak_rss_mib),
            met: run.iotmon_peak_rss_mib <= TARGET_RSS_MIB,
        },
        Target {
            what: "lost readings".into(),
            target: "0".into(),
            measured: run.lost.to_string(),
            met: run.lost == 0,
        },
    ];
    Ok(BenchReport::Reference {
        machine,
        run: Box::new(run),
        targets,
    })
}

/// `stress`: raise the offered ingest step by step (no viewers) until a step loses readings
/// or the generator cannot produce the offered load; report the highest clean step.
pub(crate) async fn stress(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    let machine = Machine::now();
    let devices = config.devices.unwrap_or(STRESS_DEVICES);
    let mut rate = config.rate.unwrap_or(20_000.0);
    let max = config.max.unwrap_or(200_000.0);
    let mut steps = Vec::new();
    let mut sustained = None;
    let stopped = loop {
        if shutdown.is_cancelled() {
            break "interrupted".to_string();
        }
        let batch = config.readings_per_message.unwrap_or(1);
        let load = Load {
            devices,
            interval: Duration::from_secs_f64((devices * batch) as f64 / rate),
            devices_per_connection: config.devices_per_connection.unwrap_or(1),
            readings_per_message: batch,
            viewers: config.viewers.unwrap_or(0),
            visible: config.visible.unwrap_or(REFERENCE_VISIBLE),
            anomaly_rate: config.anomaly_rate.unwrap_or(0.0),
        };
        let step = measure(config, &load, shutdown).await?;
        let clean = step.clean() && step.ingested_per_second >= 0.95 * step.offered_per_second;
        let why = stop_reason(&step);
        steps.push(step);
        if !clean {
            break why;
        }
        sustained = steps.last().map(|step| step.ingested_per_second);
        rate *= config.step_factor;
        if rate > max {
            break format!("reached the highest rate tried ({max:.0}/s)");
        }
    };
    let targets = vec![Target {
        what: "stress ingest with zero loss".into(),
        target: format!("≥ {TARGET_STRESS_PER_SECOND:.0} readings/s"),
        measured: sustained.map_or("none".into(), |rate| format!("{rate:.0} readings/s")),
        met: sustained.is_some_and(|rate| rate >= TARGET_STRESS_PER_SECOND),
    }];
    Ok(BenchReport::Stress {
        machine,
        steps,
        sustained_per_second: sustained,
        stopped,
        targets,
    })
}

/// `fanout`: at the reference ingest, raise the number of viewers step by step until a
/// step is not clean (a viewer refused or lost, a reading lost, or p99 above a second).
pub(crate) async fn fanout(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    let machine = Machine::now();
    let mut viewers = config.viewers.unwrap_or(REFERENCE_VIEWERS);
    let max = config.max.map_or(20_000, |max| max as usize);
    let mut steps = Vec::new();
    let mut most = None;
    let stopped = loop {
        if shutdown.is_cancelled() {
            break "interrupted".to_string();
        }
        let load = Load {
            devices: config.devices.unwrap_or(REFERENCE_DEVICES),
            interval: config.interval.unwrap_or(REFERENCE_INTERVAL),
            // Gateways leave the server's sockets to the viewers.
            devices_per_connection: config.devices_per_connection.unwrap_or(10),
            readings_per_message: config.readings_per_message.unwrap_or(1),
            viewers,
            visible: config.visible.unwrap_or(REFERENCE_VISIBLE),
            anomaly_rate: config.anomaly_rate.unwrap_or(0.0),
        };
        let step = measure(config, &load, shutdown).await?;
        let clean = step.clean() && step.latency.p99_ms <= FANOUT_P99_LIMIT_MS;
        let why = if step.latency.p99_ms > FANOUT_P99_LIMIT_MS {
            format!(
                "p99 {} ms above {FANOUT_P99_LIMIT_MS} ms at {viewers} viewers",
                step.latency.p99_ms
            )
        } else {
            stop_reason(&step)
        };
        steps.push(step);
        if !clean {
            break why;
        }
        most = Some(viewers);
        let next = (viewers as f64 * config.step_factor).round() as usize;
        if next > max {
            break format!("reached the most viewers tried ({max})");
        }
        viewers = next;
    };
    let targets = vec![Target {
        what: "concurrent viewers at the reference ingest".into(),
        target: format!("≥ {TARGET_FANOUT_VIEWERS}"),
        measured: most.map_or("none".into(), |viewers| viewers.to_string()),
        met: most.is_some_and(|viewers| viewers >= TARGET_FANOUT_VIEWERS),
    }];
    Ok(BenchReport::Fanout {
        machine,
        steps,
        most_viewers: most,
        stopped,
        targets,
    })
}

/// Why a step is not clean, in words.
fn stop_reason(step: &LoadPoint) -> String {
    if step.lost != 0 {
        format!(
            "{} readings lost at {:.0}/s offered",
            step.lost, step.offered_per_second
        )
    } else if step.publish_errors > 0
        || step.ingested_per_second < 0.95 * step.offered_per_second && step.missed_turns > 0
    {
        format!(
            "the generator could not keep up at {:.0}/s offered ({} missed turns, {} dropped)",
            step.offered_per_second, step.missed_turns, step.publish_errors
        )
    } else if step.viewers_connected < step.viewers as u64 || step.viewer_disconnects > 0 {
        format!(
            "{} of {} viewers connected, {} lost",
            step.viewers_connected, step.viewers, step.viewer_disconnects
        )
    } else if step.ingested_per_second < 0.95 * step.offered_per_second {
        format!(
            "ingested {:.0}/s of {:.0}/s offered",
            step.ingested_per_second, step.offered_per_second
        )
    } else {
        "clean".into()
    }
}

/// Starts `iotmon serve`, the fleet and the viewers; warms up; measures one window; stops
/// the fleet and lets iotmon drain; reports.
pub(crate) async fn measure(
    config: &BenchConfig,
    load: &Load,
    shutdown: &CancellationToken,
) -> Result<LoadPoint, BenchError> {
    let (serve_config, serve_args) = serve_config(config, load)?;
    let serve = Measured::start_iotmon(&config.iotmon, "serve", serve_config, serve_args).await?;
    let http = serve
        .http
        .ok_or_else(|| BenchError::Failed("serve printed no HTTP address".into()))?
        .to_string();
    let fleet_config = FleetConfig {
        broker: format!("mqtt://{}", serve.mqtt)
            .parse()
            .map_err(|error| BenchError::Failed(format!("broker address: {error}")))?,
        devices: load.devices,
        interval: load.interval,
        devices_per_connection: load.devices_per_connection,
        readings_per_message: load.readings_per_message,
        anomaly_rate: load.anomaly_rate,
        client_prefix: "bench".into(),
        ramp: Some(ramp_for(load.devices.div_ceil(load.devices_per_connection))),
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
        return Err(BenchError::Failed(format!(
            "only {} of {connections} fleet connections came up",
            counters.connected_now()
        )));
    }
    // Every device reports once before viewers look, so their views are complete.
    wait_for_ingest(&http, load.devices as u64).await?;
    let mut viewers = if load.viewers > 0 {
        Some(start_viewers(&http, load, shutdown).await?)
    } else {
        None
    };
    sleep(config.warmup).await;

    let start = WindowEdge::take(&serve, &http, &counters).await?;
    if let Some(viewers) = &mut viewers {
        viewers.start_window();
    }
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = sleep(config.measure) => {}
    }
    let end = WindowEdge::take(&serve, &http, &counters).await?;
    let seen = viewers.as_ref().map(Viewers::summary);
    if let Some(viewers) = viewers {
        viewers.stop().await;
    }
    let summary = fleet.stop().await;
    let ingested_total = drain(&http, summary.readings_published).await?;
    let window = end.at - start.at;
    let seconds = window.as_secs_f64();
    let ingested = end.ingested.saturating_sub(start.ingested);
    let alerts_raised = end.alerts_raised.saturating_sub(start.alerts_raised);
    let cpu = end.serve.cpu_seconds - start.serve.cpu_seconds;
    Ok(LoadPoint {
        devices: load.devices,
        connections,
        interval_ms: u64::try_from(load.interval.as_millis()).unwrap_or(u64::MAX),
        viewers: load.viewers,
        visible: load.visible,
        offered_per_second: summary.offered_per_second,
        published_per_second: (end.published - start.published) as f64 / seconds,
        ingested_per_second: ingested as f64 / seconds,
        published_total: summary.readings_published,
        ingested_total,
        lost: summary.readings_published as i64 - ingested_total as i64,
        readings_per_message: load.readings_per_message,
        missed_turns: end.missed - start.missed,
        publish_errors: end.dropped - start.dropped,
        viewers_connected: seen.as_ref().map_or(0, |seen| seen.connected_at_end),
        viewer_disconnects: seen.as_ref().map_or(0, |seen| seen.disconnects),
        latency: seen.as_ref().map(|seen| seen.latency).unwrap_or_default(),
        anomaly_rate: load.anomaly_rate,
        alerts_raised_per_second: alerts_raised as f64 / seconds,
        alert_latency: seen
            .as_ref()
            .map(|seen| seen.alert_latency)
            .unwrap_or_default(),
        bytes_per_second_per_viewer: seen
            .as_ref()
            .map_or(0.0, |seen| seen.bytes_per_second_per_viewer),
        iotmon_cpu_percent: 100.0 * cpu / seconds,
        cpu_seconds_per_1000_readings: if ingested > 0 {
            cpu / (ingested as f64 / 1000.0)
        } else {
            0.0
        },
        iotmon_peak_rss_mib: mib(serve.usage()?.peak_rss_bytes),
        iotmon_rss_mib: mib(end.serve.rss_bytes),
        generator_cpu_percent: 100.0 * (end.own.cpu_seconds - start.own.cpu_seconds) / seconds,
        window_seconds: seconds,
    })
}

/// The configuration `iotmon serve` runs with, as (file text, arguments): with anomalies,
/// the `--iotmon-config` file (if any) with [`ANOMALY_RULE`] appended, written for the
/// process; without, the file as given.
///
/// # Errors
/// The `--iotmon-config` file cannot be read.
fn serve_config(
    config: &BenchConfig,
    load: &Load,
) -> Result<(Option<String>, Vec<String>), BenchError> {
    if load.anomaly_rate <= 0.0 {
        return Ok((None, config.config_args()));
    }
    let mut text = match &config.iotmon_config {
        Some(path) => std::fs::read_to_string(path).map_err(|error| {
            BenchError::Failed(format!("cannot read {}: {error}", path.display()))
        })?,
        None => String::new(),
    };
    text.push_str(ANOMALY_RULE);
    Ok((Some(text), Vec::new()))
}

/// The top-level groups of the fleet's layout, in order: together they hold every device.
fn top_level_groups(devices: &[iotmon_simulator::SimulatedDevice]) -> Vec<String> {
    let mut groups: Vec<String> = devices
        .iter()
        .map(|device| {
            device
                .group
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    groups.dedup();
    groups
}

/// Opens the viewers on the fleet's device ids and waits until all are connected (or the
/// limit passes: the report then shows how many were). With anomalies, some of them also
/// subscribe to the fleet's top-level groups, so that every alert has viewers.
pub(crate) async fn start_viewers(
    http: &str,
    load: &Load,
    shutdown: &CancellationToken,
) -> Result<Viewers, BenchError> {
    let devices = layout(load.devices);
    let groups = if load.anomaly_rate > 0.0 {
        top_level_groups(&devices)
    } else {
        Vec::new()
    };
    let ids = devices.into_iter().map(|device| device.id).collect();
    let config = ViewerConfig {
        url: format!("ws://{http}/ws"),
        viewers: load.viewers,
        visible: load.visible,
        devices: Some(ids),
        groups,
        group_viewers: load.viewers.div_ceil(VIEWERS_PER_GROUP_SUBSCRIBER),
        scroll_every: Some(SCROLL_EVERY),
        duration: None,
        // The dashboard accepts WebSockets faster than the broker accepts MQTT connections.
        ramp: Duration::from_secs_f64((load.viewers as f64 / VIEWERS_PER_SECOND).max(1.0)),
        seed: 7,
    };
    let viewers = Viewers::start(config, Progress::Off, shutdown).await?;
    let counters = viewers.counters().clone();
    let wanted = load.viewers as u64;
    poll_until(SETTLE_LIMIT, || {
        counters
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
            >= wanted
    })
    .await;
    Ok(viewers)
}

/// The counters at one edge of the measurement window.
struct WindowEdge {
    at: Instant,
    ingested: u64,
    alerts_raised: u64,
    published: u64,
    missed: u64,
    dropped: u64,
    serve: Usage,
    own: Usage,
}

impl WindowEdge {
    async fn take(
        serve: &Measured,
        http: &str,
        counters: &iotmon_simulator::stats::Counters,
    ) -> Result<WindowEdge, BenchError> {
        let metrics = http_get(http, "/metrics").await?;
        Ok(WindowEdge {
            at: Instant::now(),
            ingested: ingested_in(&metrics)?,
            alerts_raised: metric_value(&metrics, "iotmon_alerts_raised_total").unwrap_or(0),
            published: counters.readings_written(),
            missed: counters.missed_turns_so_far(),
            dropped: counters.publish_errors_so_far(),
            serve: serve.usage()?,
            own: own_usage()?,
        })
    }
}

/// Polls `/metrics` until iotmon has ingested `count` readings, or [`SETTLE_LIMIT`] passes
/// (then the run goes on: the report shows what was lost).
pub(crate) async fn wait_for_ingest(http: &str, count: u64) -> Result<(), BenchError> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    while ingested(http).await? < count && Instant::now() < deadline {
        sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits until iotmon has ingested `published` readings, or its count stops moving for two
/// seconds, or [`DRAIN_LIMIT`] passes; returns the final count.
pub(crate) async fn drain(http: &str, published: u64) -> Result<u64, BenchError> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut last = (ingested(http).await?, Instant::now());
    loop {
        if last.0 >= published || Instant::now() >= deadline {
            return Ok(last.0);
        }
        sleep(Duration::from_millis(200)).await;
        let now = ingested(http).await?;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(2) {
            return Ok(now);
        }
    }
}

/// `iotmon_ingest_readings_total` from `/metrics`.
pub(crate) async fn ingested(http: &str) -> Result<u64, BenchError> {
    ingested_in(&http_get(http, "/metrics").await?)
}

/// `iotmon_ingest_readings_total` in the text of `/metrics`.
fn ingested_in(metrics: &str) -> Result<u64, BenchError> {
    metric_value(metrics, "iotmon_ingest_readings_total")
        .ok_or_else(|| BenchError::Failed("no iotmon_ingest_readings_total in /metrics".into()))
}

/// The value of an unlabelled metric in Prometheus text.
/// A counter or gauge from `/metrics` text, as a whole number.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<u64> {
    iotmon_probe::metrics::sample(text, name).map(|value| value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_level_groups_cover_the_fleet() {
        let devices = layout(1_000);
        let groups = top_level_groups(&devices);
        assert_eq!(groups, ["site-1", "site-2", "site-3"]);
        assert!(devices.iter().all(|device| groups
            .iter()
            .any(|group| device.group.starts_with(&format!("{group}/")))));
    }

    #[test]
    fn anomalies_add_the_rule_to_the_config_given() {
        let dir = std::env::temp_dir().join(format!("iotmon-serve-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("mine.toml");
        std::fs::write(&path, "[bridge]\nlive_interval = \"25ms\"\n").expect("write");
        let config = BenchConfig {
            iotmon_config: Some(path.clone()),
            ..BenchConfig::new("iotmon".into(), super::super::Scenario::Reference)
        };
        let mut load = Load {
            devices: 10,
            interval: Duration::from_secs(1),
            devices_per_connection: 1,
            readings_per_message: 1,
            viewers: 0,
            visible: 10,
            anomaly_rate: 0.0,
        };
        let (text, args) = serve_config(&config, &load).expect("without anomalies");
        assert_eq!(text, None);
        assert_eq!(args, ["--config".to_string(), path.display().to_string()]);
        load.anomaly_rate = 0.01;
        let (text, args) = serve_config(&config, &load).expect("with anomalies");
        let text = text.expect("a config file");
        assert!(args.is_empty());
        assert!(
            text.starts_with("[bridge]\nlive_interval = \"25ms\"\n"),
            "{text}"
        );
        assert!(text.contains("name = \"bench-anomaly\""), "{text}");
        let parsed: toml::Value = toml::from_str(&text).expect("valid TOML");
        assert_eq!(parsed["alerts"]["rules"][0]["above"].as_float(), Some(35.0));
        assert_eq!(parsed["bridge"]["live_interval"].as_str(), Some("25ms"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
