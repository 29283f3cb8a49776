//! `viewer-cost`: what one viewer costs the dashboard as the fleet grows.
//!
//! Each viewer shows the same number of devices whatever the fleet's size, so what it costs
//! (CPU, memory, bytes on the wire) should not grow with the fleet. For each fleet size the
//! same fleet runs twice, without viewers and with them; the difference, shared among the
//! viewers, is the cost of a viewer. Every device reports at the same interval, so a larger
//! fleet also means more ingest: that part is in both runs and cancels out.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::report::{BenchReport, LoadPoint, Machine, Target, ViewerCost};
use crate::serve::{measure, Load};
use crate::BenchConfig;
use crate::BenchError;

/// Fleet sizes measured unless `--fleets` says otherwise.
pub(crate) const DEFAULT_FLEETS: [usize; 3] = [1_000, 10_000, 100_000];
/// Every device reports every 10 s: 10K readings/s at 100K devices, well inside what one
/// iotmon ingests on this machine with the viewers and the generator beside it, so the
/// largest fleet measures viewers, not an overloaded bridge. Each viewer sees the same 10
/// device changes a second at every fleet size.
const INTERVAL: Duration = Duration::from_secs(10);
/// Enough viewers that their cost stands out of the noise of the fleet's own cost.
const VIEWERS: usize = 5_000;
const VISIBLE: usize = 100;
/// Devices per gateway connection: a 100K fleet on 1,000 connections, well inside the
/// open-files limit, the same for every fleet size.
const DEVICES_PER_CONNECTION: usize = 100;
/// How much the cost per viewer may vary over the fleet sizes (largest over smallest) and
/// still count as flat on this shared machine.
const FLAT_CPU_AND_MEMORY: f64 = 1.5;
const FLAT_BYTES: f64 = 1.2;

/// Runs the fleet sizes and judges whether the cost per viewer stays flat.
pub(crate) async fn viewer_cost(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    let machine = Machine::now();
    let mut fleets = Vec::new();
    for &devices in &config.fleets {
        if shutdown.is_cancelled() {
            break;
        }
        let without = Load {
            devices,
            interval: config.interval.unwrap_or(INTERVAL),
            devices_per_connection: config
                .devices_per_connection
                .unwrap_or(DEVICES_PER_CONNECTION),
            readings_per_message: config.readings_per_message.unwrap_or(1),
            viewers: 0,
            visible: config.visible.unwrap_or(VISIBLE),
            anomaly_rate: config.anomaly_rate.unwrap_or(0.0),
        };
        let with = Load {
            viewers: config.viewers.unwrap_or(VIEWERS),
            ..without.clone()
        };
        let without_viewers = measure(config, &without, shutdown).await?;
        let with_viewers = measure(config, &with, shutdown).await?;
        fleets.push(cost_per_viewer(without_viewers, with_viewers));
    }
    let targets = flatness(&fleets);
    Ok(BenchReport::ViewerCost {
        machine,
        fleets,
        targets,
    })
}

/// The difference the viewers made, per viewer.
fn cost_per_viewer(without_viewers: LoadPoint, with_viewers: LoadPoint) -> ViewerCost {
    let viewers = with_viewers.viewers.max(1) as f64;
    let extra_cpu = with_viewers.iotmon_cpu_percent - without_viewers.iotmon_cpu_percent;
    let extra_rss_mib = with_viewers.iotmon_rss_mib - without_viewers.iotmon_rss_mib;
    ViewerCost {
        devices: with_viewers.devices,
        viewers: with_viewers.viewers,
        cpu_percent_per_1000_viewers: extra_cpu / viewers * 1000.0,
        rss_kib_per_viewer: extra_rss_mib * 1024.0 / viewers,
        bytes_per_second_per_viewer: with_viewers.bytes_per_second_per_viewer,
        p99_ms: with_viewers.latency.p99_ms,
        without_viewers,
        with_viewers,
    }
}

/// Targets: each cost per viewer varies little over the fleet sizes (most over least), and
/// every run is clean.
fn flatness(fleets: &[ViewerCost]) -> Vec<Target> {
    let (Some(smallest), Some(largest)) = (fleets.first(), fleets.last()) else {
        return Vec::new();
    };
    let span = format!("{} → {} devices", smallest.devices, largest.devices);
    let spread = |cost: fn(&ViewerCost) -> f64| {
        let costs = fleets.iter().map(cost);
        let most = costs.clone().fold(f64::MIN, f64::max);
        let least = costs.fold(f64::MAX, f64::min);
        if least > 0.0 {
            most / least
        } else {
            f64::INFINITY
        }
    };
    let flat = |what: &str, spread: f64, limit: f64| Target {
        what: format!("{what} per viewer, most over least, {span}"),
        target: format!("≤ {limit:.1}×"),
        measured: format!("{spread:.2}×"),
        met: spread <= limit,
    };
    let clean = fleets
        .iter()
        .all(|fleet| fleet.without_viewers.clean() && fleet.with_viewers.clean());
    vec![
        flat(
            "CPU",
            spread(|fleet| fleet.cpu_percent_per_1000_viewers),
            FLAT_CPU_AND_MEMORY,
        ),
        flat(
            "memory",
            spread(|fleet| fleet.rss_kib_per_viewer),
            FLAT_CPU_AND_MEMORY,
        ),
        flat(
            "bytes/s",
            spread(|fleet| fleet.bytes_per_second_per_viewer),
            FLAT_BYTES,
        ),
        Target {
            what: "every run clean (no loss, every viewer served)".into(),
            target: "all".into(),
            measured: if clean { "all" } else { "not all" }.into(),
            met: clean,
        },
    ]
}
