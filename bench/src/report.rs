//! What a benchmark reports: per load point, per broker run, and per scenario, as text for
//! people and as JSON (`--json`) for machines.

use std::fmt;

use serde::Serialize;

use iotmon_simulator::viewers::Percentiles;

const MIB: f64 = 1024.0 * 1024.0;

/// The machine a benchmark ran on, at its start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// Cores the process may use.
    pub cores: usize,
    /// `/proc/loadavg` at the start (the machine is shared: others' load shows here).
    pub load_average: String,
    /// Seconds since the Unix epoch at the start.
    pub started_unix: u64,
}

impl Machine {
    pub(crate) fn now() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|text| {
                    text.split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        }
    }
}

/// One load point against `iotmon serve`: a fleet and (perhaps) viewers for a measurement
/// window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadPoint {
    pub devices: usize,
    pub connections: usize,
    pub interval_ms: u64,
    /// Readings per message (batch size; 1 for single readings).
    pub readings_per_message: usize,
    pub viewers: usize,
    pub visible: usize,
    /// Readings per second the fleet's schedule offers.
    pub offered_per_second: f64,
    /// Readings per second the fleet wrote to its sockets in the window.
    pub published_per_second: f64,
    /// Readings per second iotmon accepted in the window (`iotmon_ingest_readings_total`).
    pub ingested_per_second: f64,
    /// Readings published over the whole run (warm-up included).
    pub published_total: u64,
    /// Readings iotmon accepted over the whole run, once it had drained.
    pub ingested_total: u64,
    /// `published_total - ingested_total` (negative would mean double counting).
    pub lost: i64,
    /// Turns the fleet skipped in the window because it fell behind (the generator could not
    /// keep up).
    pub missed_turns: u64,
    /// Readings the fleet dropped in the window because a connection's queue was full.
    pub publish_errors: u64,
    /// Viewers connected at the end of the window; fewer than asked means refusals.
    pub viewers_connected: u64,
    /// Viewer sessions lost during the run.
    pub viewer_disconnects: u64,
    /// Reading→viewer delay over the window (includes bridge coalescing and the tick).
    pub latency: Percentiles,
    /// Chance per reading that a device started an anomaly (0: none, and no alert rule).
    pub anomaly_rate: f64,
    /// Alerts iotmon raised per second in the window (`iotmon_alerts_raised_total`; not
    /// counting reactivations of an alert not yet acknowledged).
    pub alerts_raised_per_second: f64,
    /// Alert delay over the window: a viewer's receipt of an alert raised (or reactivated)
    /// − the device's `ts` of the reading that raised it, once per raise and viewer. Alerts
    /// are pushed at once, without the bridge's coalescing or the tick.
    pub alert_latency: Percentiles,
    /// Bytes per second each viewer received over the window.
    pub bytes_per_second_per_viewer: f64,
    /// iotmon's CPU over the window, percent of one core.
    pub iotmon_cpu_percent: f64,
    /// iotmon's CPU seconds per 1,000 readings ingested in the window.
    pub cpu_seconds_per_1000_readings: f64,
    /// iotmon's peak resident memory, MiB.
    pub iotmon_peak_rss_mib: f64,
    /// iotmon's resident memory at the end of the window, MiB.
    pub iotmon_rss_mib: f64,
    /// The bench process's (fleet + viewers) CPU over the window, percent of one core.
    pub generator_cpu_percent: f64,
    pub window_seconds: f64,
}

impl LoadPoint {
    /// Zero loss, nothing dropped by the generator, all viewers up. Missed turns (the
    /// generator briefly descheduled on this shared machine) are reported, not disqualifying:
    /// a step must still ingest 95 % of its offered load to count.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.publish_errors == 0
            && self.viewers_connected == self.viewers as u64
            && self.viewer_disconnects == 0
    }
}

impl fmt::Display for LoadPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  fleet: {} devices on {} connections every {} ms, {} readings per message; viewers: {} × {} devices ({} connected, {} lost)",
            self.devices,
            self.connections,
            self.interval_ms,
            self.readings_per_message,
            self.viewers,
            self.visible,
            self.viewers_connected,
            self.viewer_disconnects
        )?;
        writeln!(
            f,
            "  ingest: offered {:.0}/s, published {:.0}/s, ingested {:.0}/s over {:.1} s",
            self.offered_per_second,
            self.published_per_second,
            self.ingested_per_second,
            self.window_seconds
        )?;
        writeln!(
            f,
            "  lost readings: {} ({} published, {} ingested; {} missed turns, {} dropped by the generator)",
            self.lost, self.published_total, self.ingested_total, self.missed_turns, self.publish_errors
        )?;
        if self.viewers > 0 {
            writeln!(
                f,
                "  reading→viewer: {}; {:.0} B/s per viewer",
                self.latency, self.bytes_per_second_per_viewer
            )?;
        }
        if self.anomaly_rate > 0.0 {
            writeln!(
                f,
                "  alerts: anomaly rate {} per reading, {:.1} raised/s; alert delay {}",
                self.anomaly_rate,
                self.alerts_raised_per_second,
                self.alert_latency.counting("raises seen by viewers")
            )?;
        }
        write!(
            f,
            "  iotmon: {:.1} % of a core, {:.4} CPU-s per 1,000 readings, RSS {:.0} MiB (peak {:.0} MiB); generator {:.1} % of a core",
            self.iotmon_cpu_percent,
            self.cpu_seconds_per_1000_readings,
            self.iotmon_rss_mib,
            self.iotmon_peak_rss_mib,
            self.generator_cpu_percent
        )
    }
}

/// A target of issue 6 and where the run stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  [{}] {}: target {}, measured {}",
            if self.met { "met" } else { "MISSED" },
            self.what,
            self.target,
            self.measured
        )
    }
}

/// One step of one broker's search: the raw load generator at one offered rate for a
/// measurement window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerRun {
    /// `iotmon broker` or `mosquitto`.
    pub broker: String,
    pub connections: usize,
    /// Connections that completed the MQTT handshake (fewer than `connections`: refusals or
    /// CONNACK timeouts).
    pub connections_up: u64,
    pub qos: u8,
    /// The step's number in this broker's search, from 1.
    pub step: usize,
    /// Messages per second the generator's schedule asked for in the window.
    pub offered_per_second: f64,
    /// Messages per second written to the brokers' sockets in the window.
    pub published_per_second: f64,
    /// Messages per second the subscriber received in the window: the throughput.
    pub delivered_per_second: f64,
    /// Messages not sent in the window because the broker did not take them (full socket
    /// buffers, a full QoS 1 window, closed connections).
    pub held_back: u64,
    /// Messages not sent in the window because the generator ran late (its own limit).
    pub missed: u64,
    /// Messages per socket write in the window (the generator batches what each connection
    /// owes at each visit, ten visits a second).
    pub messages_per_write: f64,
    /// How much published − delivered grew over the window: a backlog building up in the
    /// broker, or messages lost.
    pub backlog_growth: i64,
    /// Delivered at least 97 % of the offered rate with no backlog growth beyond 3 %.
    pub sustained: bool,
    /// The broker's CPU seconds per million messages delivered.
    pub cpu_seconds_per_million: f64,
    /// The broker's CPU over the window, percent of one core.
    pub broker_cpu_percent: f64,
    pub broker_peak_rss_mib: f64,
    /// The bench process's CPU (generator + subscriber), percent of one core.
    pub generator_cpu_percent: f64,
    /// The bench process's CPU microseconds per message published.
    pub generator_cpu_us_per_message: f64,
    pub window_seconds: f64,
}

impl fmt::Display for BrokerRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {:<14} {:>6} conns ({} up) QoS {} step {:>2} [{}]: offered {:>7.0}/s, published {:>7.0}/s, \
             delivered {:>7.0}/s, held back {}, missed {}, {:.1} msgs/write, backlog {:+}, \
             {:>5.2} CPU-s/M msgs, {:>5.1} % CPU, {:>5.0} MiB; generator {:.0} % CPU, {:.2} µs/msg",
            self.broker,
            self.connections,
            self.connections_up,
            self.qos,
            self.step,
            if self.sustained { "sustained" } else { "NOT sustained" },
            self.offered_per_second,
            self.published_per_second,
            self.delivered_per_second,
            self.held_back,
            self.missed,
            self.messages_per_write,
            self.backlog_growth,
            self.cpu_seconds_per_million,
            self.broker_cpu_percent,
            self.broker_peak_rss_mib,
            self.generator_cpu_percent,
            self.generator_cpu_us_per_message
        )
    }
}

/// One broker's search for its highest sustained rate at one load shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerSearch {
    pub broker: String,
    pub connections: usize,
    pub connections_up: u64,
    pub qos: u8,
    /// Delivered messages/s of the fastest sustained step (at most what it published: a
    /// step may also deliver an earlier step's backlog).
    pub sustained_per_second: Option<f64>,
    /// The broker's CPU seconds per million messages at that step.
    pub cpu_seconds_per_million: Option<f64>,
    /// The most delivered messages/s of any step, sustained or not.
    pub peak_delivered_per_second: f64,
    /// The broker's peak resident memory over the whole search, MiB.
    pub broker_peak_rss_mib: f64,
    /// Messages published over the whole search.
    pub published_total: u64,
    /// Messages the subscriber received over the whole search, once the broker had drained.
    pub delivered_total: u64,
    /// `published_total - delivered_total`.
    pub lost: i64,
    /// Why the search stopped.
    pub stopped: String,
}

impl fmt::Display for BrokerSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sustained = self
            .sustained_per_second
            .map_or("none".to_string(), |rate| format!("{rate:.0} msg/s"));
        let cpu = self
            .cpu_seconds_per_million
            .map_or("-".to_string(), |cpu| format!("{cpu:.2}"));
        write!(
            f,
            "  {:<14} {:>6} conns ({} up) QoS {}: sustained {sustained} at {cpu} CPU-s/M msgs, peak delivered {:.0}/s, \
             peak RSS {:.0} MiB, lost {} of {}; stopped: {}",
            self.broker,
            self.connections,
            self.connections_up,
            self.qos,
            self.peak_delivered_per_second,
            self.broker_peak_rss_mib,
            self.lost,
            self.published_total,
            self.stopped
        )
    }
}

/// iotmon against mosquitto under one load shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerRatio {
    pub connections: usize,
    pub qos: u8,
    /// iotmon's highest sustained delivered messages/s over mosquitto's.
    pub throughput_ratio: f64,
    /// mosquitto's CPU per message over iotmon's, each at its fastest sustained step (above
    /// 1: iotmon is cheaper).
    pub efficiency_ratio: f64,
}

/// What viewers cost at one fleet size: the same fleet measured without viewers and with
/// them, the difference shared among the viewers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewerCost {
    pub devices: usize,
    pub viewers: usize,
    /// The fleet alone.
    pub without_viewers: LoadPoint,
    /// The same fleet with the viewers.
    pub with_viewers: LoadPoint,
    /// iotmon's extra CPU for the viewers, percent of one core per 1,000 viewers.
    pub cpu_percent_per_1000_viewers: f64,
    /// iotmon's extra resident memory per viewer, KiB (RSS at the end of each window).
    pub rss_kib_per_viewer: f64,
    pub bytes_per_second_per_viewer: f64,
    pub p99_ms: u64,
}

impl fmt::Display for ViewerCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fleet of {} devices, without viewers:", self.devices)?;
        writeln!(f, "{}", self.without_viewers)?;
        writeln!(f, "with {} viewers:", self.viewers)?;
        writeln!(f, "{}", self.with_viewers)?;
        write!(
            f,
            "  per viewer: {:.2} % of a core per 1,000 viewers, {:.0} KiB, {:.0} B/s; p99 reading→viewer {} ms",
            self.cpu_percent_per_1000_viewers,
            self.rss_kib_per_viewer,
            self.bytes_per_second_per_viewer,
            self.p99_ms
        )
    }
}

/// What a scenario reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum BenchReport {
    Reference {
        machine: Machine,
        /// Boxed: a load point is several times larger than the other variants.
        run: Box<LoadPoint>,
        targets: Vec<Target>,
    },
    Stress {
        machine: Machine,
        steps: Vec<LoadPoint>,
        /// The highest step's ingest with zero loss and the offered load generated.
        sustained_per_second: Option<f64>,
        /// Why the search stopped.
        stopped: String,
        targets: Vec<Target>,
    },
    Fanout {
        machine: Machine,
        steps: Vec<LoadPoint>,
        /// The most viewers of a clean step.
        most_viewers: Option<usize>,
        stopped: String,
        targets: Vec<Target>,
    },
    Broker {
        machine: Machine,
        /// Every step of every search.
        runs: Vec<BrokerRun>,
        /// Each broker's result per load shape.
        searches: Vec<BrokerSearch>,
        ratios: Vec<BrokerRatio>,
        targets: Vec<Target>,
    },
    ViewerCost {
        machine: Machine,
        fleets: Vec<ViewerCost>,
        targets: Vec<Target>,
    },
    Faults {
        machine: Machine,
        /// One section per fault, with its own targets.
        faults: Vec<crate::FaultReport>,
        /// One per fault: survived when every target of its section was met.
        targets: Vec<Target>,
    },
    Split {
        machine: Machine,
        /// Boxed: larger than the other variants.
        report: Box<crate::split::SplitReport>,
        targets: Vec<Target>,
    },
}

impl BenchReport {
    /// The targets the run was judged against.
    pub fn targets(&self) -> &[Target] {
        match self {
            BenchReport::Reference { targets, .. }
            | BenchReport::Stress { targets, .. }
            | BenchReport::Fanout { targets, .. }
            | BenchReport::Broker { targets, .. }
            | BenchReport::ViewerCost { targets, .. }
            | BenchReport::Faults { targets, .. }
            | BenchReport::Split { targets, .. } => targets,
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machine = match self {
            BenchReport::Reference { machine, run, .. } => {
                writeln!(f, "bench reference")?;
                writeln!(f, "{run}")?;
                machine
            }
            BenchReport::Stress {
                machine,
                steps,
                sustained_per_second,
                stopped,
                ..
            } => {
                writeln!(
                    f,
                    "bench stress: search upward for the highest zero-loss ingest"
                )?;
                for (number, step) in steps.iter().enumerate() {
                    writeln!(f, "step {} ({}):", number + 1, verdict(step.clean()))?;
                    writeln!(f, "{step}")?;
                }
                match sustained_per_second {
                    Some(rate) => writeln!(f, "sustained with zero loss: {rate:.0} readings/s")?,
                    None => writeln!(f, "no step was sustained with zero loss")?,
                }
                writeln!(f, "search stopped: {stopped}")?;
                machine
            }
            BenchReport::Fanout {
                machine,
                steps,
                most_viewers,
                stopped,
                ..
            } => {
                writeln!(
                    f,
                    "bench fanout: search upward for the most viewers at the reference ingest"
                )?;
                for (number, step) in steps.iter().enumerate() {
                    writeln!(f, "step {} ({}):", number + 1, verdict(step.clean()))?;
                    writeln!(f, "{step}")?;
                }
                match most_viewers {
                    Some(viewers) => writeln!(f, "most viewers served cleanly: {viewers}")?,
                    None => writeln!(f, "no step served every viewer cleanly")?,
                }
                writeln!(f, "search stopped: {stopped}")?;
                machine
            }
            BenchReport::Broker {
                machine,
                runs,
                searches,
                ratios,
                ..
            } => {
                writeln!(f, "bench broker: each broker's highest sustained rate under the same raw MQTT load, searched upward")?;
                for run in runs {
                    writeln!(f, "{run}")?;
                }
                for search in searches {
                    writeln!(f, "{search}")?;
                }
                for ratio in ratios {
                    writeln!(
                        f,
                        "  ratio at {} conns QoS {}: sustained throughput iotmon/mosquitto {:.2}×, CPU efficiency {:.2}×",
                        ratio.connections, ratio.qos, ratio.throughput_ratio, ratio.efficiency_ratio
                    )?;
                }
                machine
            }
            BenchReport::ViewerCost {
                machine, fleets, ..
            } => {
                writeln!(
                    f,
                    "bench viewer-cost: what each viewer costs as the fleet grows"
                )?;
                for fleet in fleets {
                    writeln!(f, "{fleet}")?;
                }
                machine
            }
            BenchReport::Faults {
                machine, faults, ..
            } => {
                writeln!(f, "bench faults: faults survived, with what was lost")?;
                for fault in faults {
                    writeln!(f, "{fault}")?;
                }
                machine
            }
            BenchReport::Split {
                machine, report, ..
            } => {
                writeln!(f, "{report}")?;
                machine
            }
        };
        writeln!(f, "targets:")?;
        for target in self.targets() {
            writeln!(f, "{target}")?;
        }
        write!(
            f,
            "machine: {} cores, load average at start {}",
            machine.cores, machine.load_average
        )
    }
}

fn verdict(clean: bool) -> &'static str {
    if clean {
        "clean"
    } else {
        "NOT clean"
    }
}

/// Bytes as MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}
