//! What a fleet has done: counters shared by its tasks, a live progress display, and the
//! summary [`crate::run`] returns.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How often the plain progress line is logged (when stderr is not a terminal).
const LINE_EVERY: Duration = Duration::from_secs(10);
/// How often the terminal status is redrawn.
const BAR_EVERY: Duration = Duration::from_secs(1);

/// How a run shows its progress while it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// A live status display when stderr is a terminal, plain periodic log lines otherwise.
    Auto,
    /// Plain log lines every ten seconds.
    #[default]
    Lines,
    /// Nothing (a benchmark reports at the end).
    Off,
}

/// Counters every connection task updates; shared as one `Arc<Counters>`. Relaxed ordering:
/// each is an independent tally, read only for reporting.
#[derive(Debug, Default)]
pub struct Counters {
    /// Publishes written to a socket: readings and presence messages.
    written: AtomicU64,
    /// Presence messages queued (subtracted from `written` to count readings).
    presence: AtomicU64,
    /// PUBACKs received (QoS 1 readings; presence goes at QoS 0).
    acked: AtomicU64,
    publish_errors: AtomicU64,
    connections_lost: AtomicU64,
    connect_failures: AtomicU64,
    offline_spells: AtomicU64,
    skipped_offline: AtomicU64,
    anomalies: AtomicU64,
    missed_turns: AtomicU64,
    /// Connections up right now (a gauge, for the progress display).
    connected: AtomicU64,
    /// Readings in each reading message (1, or the batch size).
    readings_per_message: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// Counters for a fleet whose reading messages each carry `readings_per_message`.
    pub(crate) fn new(readings_per_message: usize) -> Self {
        Counters {
            readings_per_message: readings_per_message.max(1) as u64,
            ..Counters::default()
        }
    }

    /// A publish (reading or presence) was written to a broker connection.
    pub(crate) fn written(&self) {
        bump(&self.written);
    }

    /// A presence message was queued.
    pub(crate) fn presence_queued(&self) {
        bump(&self.presence);
    }

    /// The broker acknowledged a QoS 1 reading.
    pub(crate) fn acked(&self) {
        bump(&self.acked);
    }

    /// A reading was dropped because its connection's request queue was full.
    pub(crate) fn publish_failed(&self) {
        bump(&self.publish_errors);
    }

    /// A connection attempt failed before the broker accepted it.
    pub(crate) fn connect_failed(&self) {
        bump(&self.connect_failures);
    }

    /// A device started an offline spell.
    pub(crate) fn went_offline(&self) {
        bump(&self.offline_spells);
    }

    /// A device's turn passed while it was offline.
    pub(crate) fn skipped_offline(&self) {
        bump(&self.skipped_offline);
    }

    /// A device started an anomaly.
    pub(crate) fn anomaly(&self) {
        bump(&self.anomalies);
    }

    /// Turns skipped because the publisher had fallen behind its schedule.
    pub(crate) fn missed_turns(&self, turns: u64) {
        self.missed_turns.fetch_add(turns, Ordering::Relaxed);
    }

    /// A connection was accepted by the broker.
    pub(crate) fn connected(&self) {
        bump(&self.connected);
    }

    /// A connection is no longer up: `lost` when it failed rather than being closed on
    /// purpose (shutdown or an offline spell).
    pub(crate) fn disconnected(&self, lost: bool) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if lost {
            bump(&self.connections_lost);
        }
    }

    /// Reading messages written so far.
    pub fn messages_written(&self) -> u64 {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        load(&self.written).saturating_sub(load(&self.presence))
    }

    /// Readings written so far (messages × readings per message).
    pub fn readings_written(&self) -> u64 {
        self.messages_written() * self.readings_per_message.max(1)
    }

    /// Turns missed so far (the generator fell behind).
    pub fn missed_turns_so_far(&self) -> u64 {
        self.missed_turns.load(Ordering::Relaxed)
    }

    /// Readings dropped so far because a connection's queue was full.
    pub fn publish_errors_so_far(&self) -> u64 {
        self.publish_errors.load(Ordering::Relaxed)
    }

    /// Connections up right now.
    pub fn connected_now(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// The counts so far, as a summary of a fleet over `elapsed`.
    pub(crate) fn summary(&self, fleet: FleetSize, elapsed: Duration) -> Summary {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Summary {
            devices: fleet.devices,
            connections: fleet.connections,
            offered_per_second: fleet.offered_per_second,
            readings_published: self.readings_written(),
            messages_published: self.messages_written(),
            readings_acked: load(&self.acked) * self.readings_per_message.max(1),
            publish_errors: load(&self.publish_errors),
            presence_messages: load(&self.presence),
            connections_lost: load(&self.connections_lost),
            connect_failures: load(&self.connect_failures),
            offline_spells: load(&self.offline_spells),
            turns_skipped_offline: load(&self.skipped_offline),
            anomalies: load(&self.anomalies),
            missed_turns: load(&self.missed_turns),
            elapsed_seconds: elapsed.as_secs_f64(),
        }
    }
}

/// The fixed facts of a fleet a summary repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FleetSize {
    pub devices: usize,
    pub connections: usize,
    pub offered_per_second: f64,
}

/// What a fleet did, returned by [`crate::run`]; `Display` gives a one-line summary and
/// `Serialize` the `--json` form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Devices in the fleet.
    pub devices: usize,
    /// MQTT connections (fewer than devices in gateway mode).
    pub connections: usize,
    /// Readings per second the schedule offers.
    pub offered_per_second: f64,
    /// Readings written to a broker connection.
    pub readings_published: u64,
    /// Messages carrying them (fewer than readings when devices send batches).
    pub messages_published: u64,
    /// Readings the broker acknowledged (QoS 1 only; 0 at QoS 0).
    pub readings_acked: u64,
    /// Readings dropped because a connection's request queue was full, i.e. its broker was
    /// unreachable or too slow.
    pub publish_errors: u64,
    /// Retained `online`/`offline` messages queued.
    pub presence_messages: u64,
    /// Established connections that failed (each then re-established with backoff).
    pub connections_lost: u64,
    /// Connection attempts the broker refused or that failed before it answered.
    pub connect_failures: u64,
    /// Offline spells started.
    pub offline_spells: u64,
    /// Device turns that passed while the device was offline (no reading sent).
    pub turns_skipped_offline: u64,
    /// Anomalies started.
    pub anomalies: u64,
    /// Turns skipped because the simulator fell more than an interval behind its schedule
    /// (the machine could not keep up with the offered load).
    pub missed_turns: u64,
    /// From the start of the fleet until every connection had closed.
    pub elapsed_seconds: f64,
}

impl Summary {
    /// Readings published per second over the run.
    pub fn published_per_second(&self) -> f64 {
        if self.elapsed_seconds > 0.0 {
            self.readings_published as f64 / self.elapsed_seconds
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} devices on {} connections published {} readings in {:.1} s ({:.1}/s of {:.1}/s offered); \
             {} dropped, {} missed turns, {} connections lost, {} connect failures",
            self.devices,
            self.connections,
            self.readings_published,
            self.elapsed_seconds,
            self.published_per_second(),
            self.offered_per_second,
            self.publish_errors,
            self.missed_turns,
            self.connections_lost,
            self.connect_failures,
        )?;
        if self.readings_acked > 0 {
            write!(f, "; {} acknowledged", self.readings_acked)?;
        }
        if self.offline_spells + self.anomalies > 0 {
            write!(
                f,
                "; {} offline spells, {} anomalies",
                self.offline_spells, self.anomalies
            )?;
        }
        Ok(())
    }
}

/// Shows progress until `shutdown`, in the way `mode` asks.
pub(crate) async fn report_progress(
    counters: Arc<Counters>,
    fleet: FleetSize,
    duration: Option<Duration>,
    mode: Progress,
    shutdown: CancellationToken,
) {
    match mode {
        Progress::Off => {}
        Progress::Auto if std::io::stderr().is_terminal() => {
            show_status(counters, fleet, duration, shutdown).await;
        }
        Progress::Auto | Progress::Lines => log_lines(counters, fleet, shutdown).await,
    }
}

/// Logs the publish rate, errors and connections every [`LINE_EVERY`] until shutdown.
async fn log_lines(counters: Arc<Counters>, fleet: FleetSize, shutdown: CancellationToken) {
    let mut rate = RateMeter::new(&counters);
    let mut ticks = interval_at(Instant::now() + LINE_EVERY, LINE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = counters.summary(fleet, Duration::ZERO);
        info!(
            readings_per_second = rate.next(&counters),
            publish_errors = now.publish_errors,
            connections_lost = now.connections_lost,
            connect_failures = now.connect_failures,
            connected = counters.connected_now(),
            connections = fleet.connections,
            "simulated fleet progress"
        );
    }
}

/// A live terminal status: a bar over the duration (or a spinner without one) and a line
/// with connections, rate, errors and reconnects.
async fn show_status(
    counters: Arc<Counters>,
    fleet: FleetSize,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) {
    let bar = match duration {
        Some(duration) => ProgressBar::new(duration.as_secs().max(1)).with_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise}  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    let started = Instant::now();
    let mut rate = RateMeter::new(&counters);
    let mut ticks = interval_at(Instant::now() + BAR_EVERY, BAR_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = counters.summary(fleet, Duration::ZERO);
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!(
            "connected {}/{}  {:.0} readings/s  {} errors  {} reconnects",
            counters.connected_now(),
            fleet.connections,
            rate.next(&counters),
            now.publish_errors + now.connect_failures,
            now.connections_lost,
        ));
    }
    bar.finish_and_clear();
}

/// Readings per second between two looks at the counters.
struct RateMeter {
    at: Instant,
    readings: u64,
}

impl RateMeter {
    fn new(counters: &Counters) -> Self {
        RateMeter {
            at: Instant::now(),
            readings: counters.readings_written(),
        }
    }

    fn next(&mut self, counters: &Counters) -> f64 {
        let (now, readings) = (Instant::now(), counters.readings_written());
        let rate = per_second(readings - self.readings, now - self.at);
        (self.at, self.readings) = (now, readings);
        rate
    }
}

/// `count` per second over `elapsed`; 0 over no time at all.
pub(crate) fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: FleetSize = FleetSize {
        devices: 3,
        connections: 3,
        offered_per_second: 1.5,
    };

    #[test]
    fn counts_readings_apart_from_presence() {
        let counters = Counters::default();
        counters.connected();
        for _ in 0..4 {
            counters.written();
        }
        counters.presence_queued();
        counters.publish_failed();
        counters.disconnected(true);
        counters.connected();
        counters.disconnected(false);
        counters.connect_failed();
        let summary = counters.summary(FLEET, Duration::from_secs(2));
        assert_eq!(
            (
                summary.readings_published,
                summary.presence_messages,
                summary.publish_errors,
                summary.connections_lost,
                summary.connect_failures,
            ),
            (3, 1, 1, 1, 1)
        );
        assert_eq!(counters.connected_now(), 0);
        assert!((summary.published_per_second() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn summary_reads_as_one_line_and_serializes() {
        let summary = Summary {
            devices: 30,
            connections: 3,
            offered_per_second: 150.0,
            readings_published: 210,
            messages_published: 210,
            readings_acked: 0,
            publish_errors: 2,
            presence_messages: 0,
            connections_lost: 1,
            connect_failures: 0,
            offline_spells: 0,
            turns_skipped_offline: 0,
            anomalies: 0,
            missed_turns: 0,
            elapsed_seconds: 1.5,
        };
        assert_eq!(
            summary.to_string(),
            "30 devices on 3 connections published 210 readings in 1.5 s (140.0/s of 150.0/s offered); \
             2 dropped, 0 missed turns, 1 connections lost, 0 connect failures"
        );
        let json = serde_json::to_value(&summary).expect("serializes");
        assert_eq!(json["readings_published"], 210);
        assert_eq!(json["connections"], 3);
    }

    #[test]
    fn rate_over_no_time_is_zero() {
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
        assert_eq!(per_second(50, Duration::from_secs(10)), 5.0);
    }
}
