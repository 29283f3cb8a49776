//! The broker comparison (issue 3, item 8; issue 6's target of 1.5× mosquitto): each
//! broker's highest sustained throughput under the same load, `iotmon broker` and Debian's
//! mosquitto one after the other, at each connection count and QoS.
//!
//! The load comes from the raw MQTT generator in `load`, not from the simulator's fleet
//! (~18 µs of CPU per message). Measured here, the generator costs 0.2–2.5 µs per message
//! when connections write several messages at once, so on a two-core machine the brokers,
//! not the generator, run out first; with one message per write (`--write-batch 1`, or
//! 10,000 connections at these rates) loopback writes cost it 5–25 µs per message and the
//! shared cores bound the result again (docs/benchmarks.md). For each broker the offered rate starts
//! at `--rate` and is multiplied by `--step-factor` while the broker keeps up; after the
//! first step it does not, two bisection steps narrow the limit. A step is *sustained* when
//! the subscriber on `sensors/#` receives at least [`SUSTAINED_SHARE`] of what was offered
//! and the backlog (published − delivered) does not grow by more than the rest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::load::{self, LoadCount, RawFleet};
use crate::process::{own_usage, Measured, Usage};
use crate::report::{mib, BenchReport, BrokerRatio, BrokerRun, BrokerSearch, Machine, Target};
use crate::BenchError;
use crate::{poll_until, BenchConfig};
use iotmon_simulator::Qos;

/// The first step's offered messages per second unless `--rate` says otherwise.
const DEFAULT_RATE: f64 = 20_000.0;
/// The highest offered rate tried unless `--max` says otherwise.
const DEFAULT_MAX: f64 = 2_000_000.0;
/// The target: iotmon's sustained throughput at least this many times mosquitto's.
const TARGET_RATIO: f64 = 1.5;
/// A step is sustained when this share of the offered messages is delivered.
const SUSTAINED_SHARE: f64 = 0.97;
/// Bisection steps after the first step that is not sustained.
const REFINEMENTS: usize = 2;
/// Steps down from a first rate that was not sustained before giving up.
const MAX_DESCENTS: usize = 4;
/// How long the subscriber may take to receive what is still in flight, after a step that
/// was not sustained and at the end.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// Searches every (connections, QoS) pair on both brokers and compares.
pub(crate) async fn compare(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    let machine = Machine::now();
    let mut runs = Vec::new();
    let mut searches = Vec::new();
    let mut ratios = Vec::new();
    'shapes: for &connections in &config.connections {
        for &qos in &config.qos {
            let iotmon =
                Measured::start_iotmon(&config.iotmon, "broker", None, config.config_args())
                    .await?;
            let ours = search(config, iotmon, connections, qos, shutdown, &mut runs).await?;
            let theirs = if config.iotmon_only {
                None
            } else {
                let mosquitto = Measured::start_mosquitto().await?;
                Some(search(config, mosquitto, connections, qos, shutdown, &mut runs).await?)
            };
            if let Some(theirs) = &theirs {
                ratios.push(compare_searches(&ours, theirs));
            }
            searches.push(ours);
            searches.extend(theirs);
            if shutdown.is_cancelled() {
                break 'shapes;
            }
        }
    }
    let targets = ratios.iter().map(target).collect();
    Ok(BenchReport::Broker {
        machine,
        runs,
        searches,
        ratios,
        targets,
    })
}

fn compare_searches(ours: &BrokerSearch, theirs: &BrokerSearch) -> BrokerRatio {
    BrokerRatio {
        connections: ours.connections,
        qos: ours.qos,
        throughput_ratio: ratio(
            ours.sustained_per_second.unwrap_or(0.0),
            theirs.sustained_per_second.unwrap_or(0.0),
        ),
        efficiency_ratio: ratio(
            theirs.cpu_seconds_per_million.unwrap_or(0.0),
            ours.cpu_seconds_per_million.unwrap_or(0.0),
        ),
    }
}

fn target(ratio: &BrokerRatio) -> Target {
    Target {
        what: format!(
            "broker sustained throughput at {} connections, QoS {}",
            ratio.connections, ratio.qos
        ),
        target: format!("≥ {TARGET_RATIO}× mosquitto"),
        measured: format!(
            "{:.2}× (CPU efficiency {:.2}×)",
            ratio.throughput_ratio, ratio.efficiency_ratio
        ),
        met: ratio.throughput_ratio >= TARGET_RATIO,
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Where a search goes after a step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    /// Measure at this rate.
    Try(f64),
    /// Stop, for this reason.
    Stop(&'static str),
}

/// The search's state: the fastest sustained rate and the slowest failed one so far.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bracket {
    good: Option<f64>,
    bad: Option<f64>,
    refinements: usize,
    descents: usize,
}

impl Bracket {
    fn new() -> Bracket {
        Bracket {
            good: None,
            bad: None,
            refinements: 0,
            descents: 0,
        }
    }

    /// Records a step at `rate` and picks the next: multiply by `factor` while every step
    /// is sustained (up to `max`), or divide by it (at most [`MAX_DESCENTS`] times) while
    /// none is, then bisect [`REFINEMENTS`] times (geometrically).
    fn next(&mut self, rate: f64, sustained: bool, factor: f64, max: f64) -> Next {
        if sustained {
            self.good = Some(rate);
        } else {
            self.bad = Some(rate);
        }
        match (self.good, self.bad) {
            (_, None) if rate * factor > max => Next::Stop("reached the highest rate tried"),
            (_, None) => Next::Try(rate * factor),
            // Nothing sustained yet: step down until something is, so a broker slower than
            // the first rate still gets a figure.
            (None, Some(_)) if self.descents >= MAX_DESCENTS => {
                Next::Stop("no step was sustained (lower --rate)")
            }
            (None, Some(bad)) => {
                self.descents += 1;
                Next::Try(bad / factor)
            }
            (Some(_), Some(_)) if self.refinements >= REFINEMENTS => {
                Next::Stop("bracketed the highest sustained rate")
            }
            (Some(good), Some(bad)) => {
                self.refinements += 1;
                Next::Try((good * bad).sqrt())
            }
        }
    }
}

/// One broker's search: subscribe, connect the generator, step the rate, then stop and
/// drain. Appends each step to `runs`.
async fn search(
    config: &BenchConfig,
    broker: Measured,
    connections: usize,
    qos: Qos,
    shutdown: &CancellationToken,
    runs: &mut Vec<BrokerRun>,
) -> Result<BrokerSearch, BenchError> {
    let delivered = Arc::new(AtomicU64::new(0));
    let stop_subscriber = CancellationToken::new();
    let subscriber =
        load::subscribe(broker.mqtt, Arc::clone(&delivered), stop_subscriber.clone()).await?;
    let fleet = RawFleet::connect(
        broker.mqtt,
        connections,
        qos.level(),
        config.write_batch,
        shutdown,
    )
    .await?;
    let shape = Shape {
        broker: &broker,
        fleet: &fleet,
        delivered: &delivered,
        connections,
        qos: qos.level(),
    };
    let max = config.max.unwrap_or(DEFAULT_MAX);
    let mut rate = config.rate.unwrap_or(DEFAULT_RATE);
    let mut bracket = Bracket::new();
    let mut best: Option<BrokerRun> = None;
    let mut peak: f64 = 0.0;
    let first_step = runs.len();
    let stopped = loop {
        if shutdown.is_cancelled() {
            break "interrupted".to_string();
        }
        let step = measure(config, &shape, rate, runs.len() - first_step + 1, shutdown).await?;
        peak = peak.max(step.delivered_per_second);
        let sustained = step.sustained;
        let generator_limited =
            step.missed as f64 > 0.01 * step.offered_per_second * step.window_seconds;
        if sustained
            && best
                .as_ref()
                .is_none_or(|best| kept_up(&step) > kept_up(best))
        {
            best = Some(step.clone());
        }
        runs.push(step);
        if generator_limited {
            break format!("the generator could not keep up at {rate:.0}/s");
        }
        if !sustained {
            // Let the broker deliver its backlog before the next step measures.
            fleet.set_rate(0.0);
            drain(&fleet, &delivered).await;
        }
        match bracket.next(rate, sustained, config.step_factor, max) {
            Next::Try(next) => rate = next,
            Next::Stop(why) => break why.to_string(),
        }
    };
    let connected = fleet.connected as u64;
    let total = fleet.stop().await;
    drain_to(total.published, &delivered).await;
    let delivered_total = delivered.load(Ordering::Relaxed);
    stop_subscriber.cancel();
    let _ = subscriber.await;
    Ok(BrokerSearch {
        broker: broker.name.clone(),
        connections,
        connections_up: connected,
        qos: qos.level(),
        sustained_per_second: best.as_ref().map(kept_up),
        cpu_seconds_per_million: best.as_ref().map(|run| run.cpu_seconds_per_million),
        peak_delivered_per_second: peak,
        broker_peak_rss_mib: mib(broker.usage()?.peak_rss_bytes),
        published_total: total.published,
        delivered_total,
        lost: total.published as i64 - delivered_total as i64,
        stopped,
    })
}

/// What a step measures against.
struct Shape<'a> {
    broker: &'a Measured,
    fleet: &'a RawFleet,
    delivered: &'a AtomicU64,
    connections: usize,
    qos: u8,
}

/// The counters a step reads at the start and the end of its window.
struct Reading {
    at: Instant,
    delivered: u64,
    load: LoadCount,
    broker: Usage,
    generator: Usage,
}

impl Shape<'_> {
    fn read(&self) -> Result<Reading, BenchError> {
        Ok(Reading {
            at: Instant::now(),
            delivered: self.delivered.load(Ordering::Relaxed),
            load: self.fleet.count(),
            broker: self.broker.usage()?,
            generator: own_usage()?,
        })
    }
}

/// One step: offer `rate`, warm up, measure a window.
async fn measure(
    config: &BenchConfig,
    shape: &Shape<'_>,
    rate: f64,
    number: usize,
    shutdown: &CancellationToken,
) -> Result<BrokerRun, BenchError> {
    shape.fleet.set_rate(rate);
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = sleep(config.warmup) => {}
    }
    let start = shape.read()?;
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = sleep(config.measure) => {}
    }
    let end = shape.read()?;
    Ok(step_run(shape, number, &start, &end))
}

/// A step's figures from the readings at the start and the end of its window.
fn step_run(shape: &Shape<'_>, number: usize, start: &Reading, end: &Reading) -> BrokerRun {
    let seconds = (end.at - start.at).as_secs_f64().max(1e-9);
    let load = end.load - start.load;
    let delivered = end.delivered - start.delivered;
    let backlog = |reading: &Reading| reading.load.published as i64 - reading.delivered as i64;
    let backlog_growth = backlog(end) - backlog(start);
    let cpu = end.broker.cpu_seconds - start.broker.cpu_seconds;
    let generator_cpu = end.generator.cpu_seconds - start.generator.cpu_seconds;
    BrokerRun {
        broker: shape.broker.name.clone(),
        connections: shape.connections,
        connections_up: shape.fleet.connected as u64,
        qos: shape.qos,
        step: number,
        offered_per_second: load.offered as f64 / seconds,
        published_per_second: load.published as f64 / seconds,
        delivered_per_second: delivered as f64 / seconds,
        held_back: load.held_back,
        missed: load.missed,
        messages_per_write: if load.writes > 0 {
            load.published as f64 / load.writes as f64
        } else {
            0.0
        },
        backlog_growth,
        sustained: sustained(load.offered, load.published, delivered, backlog_growth),
        cpu_seconds_per_million: per_million(cpu, delivered),
        broker_cpu_percent: 100.0 * cpu / seconds,
        broker_peak_rss_mib: mib(end.broker.peak_rss_bytes),
        generator_cpu_percent: 100.0 * generator_cpu / seconds,
        generator_cpu_us_per_message: if load.published > 0 {
            generator_cpu * 1e6 / load.published as f64
        } else {
            0.0
        },
        window_seconds: seconds,
    }
}

/// The rate a sustained step kept up with: what was delivered, but no more than was
/// published (a step may also deliver a backlog left by an earlier one).
fn kept_up(step: &BrokerRun) -> f64 {
    step.delivered_per_second.min(step.published_per_second)
}

/// Whether a window kept up: delivered at least [`SUSTAINED_SHARE`] of what was offered,
/// and the backlog grew by no more than the rest of what was published.
fn sustained(offered: u64, published: u64, delivered: u64, backlog_growth: i64) -> bool {
    offered > 0
        && delivered as f64 >= SUSTAINED_SHARE * offered as f64
        && backlog_growth as f64 <= (1.0 - SUSTAINED_SHARE) * published as f64
}

fn per_million(cpu_seconds: f64, messages: u64) -> f64 {
    if messages > 0 {
        cpu_seconds / (messages as f64 / 1e6)
    } else {
        0.0
    }
}

/// Waits until the subscriber has what the generator published so far (or the limit).
async fn drain(fleet: &RawFleet, delivered: &AtomicU64) {
    // The pacer may still be writing its last batch.
    sleep(Duration::from_millis(200)).await;
    drain_to(fleet.count().published, delivered).await;
}

async fn drain_to(published: u64, delivered: &AtomicU64) {
    poll_until(DRAIN_LIMIT, || {
        delivered.load(Ordering::Relaxed) >= published
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_climbs_then_bisects_twice() {
        let mut bracket = Bracket::new();
        assert_eq!(bracket.next(100.0, true, 1.5, 1e6), Next::Try(150.0));
        assert_eq!(bracket.next(150.0, true, 1.5, 1e6), Next::Try(225.0));
        let Next::Try(mid) = bracket.next(225.0, false, 1.5, 1e6) else {
            panic!("bisects")
        };
        assert!((mid - (150.0f64 * 225.0).sqrt()).abs() < 1e-9);
        let Next::Try(second) = bracket.next(mid, true, 1.5, 1e6) else {
            panic!("bisects again")
        };
        assert!(second > mid && second < 225.0);
        assert_eq!(
            bracket.next(second, false, 1.5, 1e6),
            Next::Stop("bracketed the highest sustained rate")
        );
    }

    #[test]
    fn a_search_stops_at_the_max() {
        let mut bracket = Bracket::new();
        assert_eq!(
            bracket.next(100.0, true, 1.5, 120.0),
            Next::Stop("reached the highest rate tried")
        );
    }

    #[test]
    fn a_search_steps_down_from_a_failed_first_step_then_bisects() {
        let mut bracket = Bracket::new();
        assert_eq!(bracket.next(900.0, false, 1.5, 1e6), Next::Try(600.0));
        assert_eq!(bracket.next(600.0, false, 1.5, 1e6), Next::Try(400.0));
        let Next::Try(mid) = bracket.next(400.0, true, 1.5, 1e6) else {
            panic!("bisects between the sustained and the failed rate")
        };
        assert!((mid - (400.0f64 * 600.0).sqrt()).abs() < 1e-9);

        let mut bracket = Bracket::new();
        let mut rate = 1000.0;
        for _ in 0..MAX_DESCENTS {
            let Next::Try(lower) = bracket.next(rate, false, 2.0, 1e6) else {
                panic!("steps down")
            };
            assert_eq!(lower, rate / 2.0);
            rate = lower;
        }
        assert!(matches!(bracket.next(rate, false, 2.0, 1e6), Next::Stop(_)));
    }

    #[test]
    fn sustained_needs_delivery_and_no_growing_backlog() {
        assert!(sustained(1000, 1000, 1000, 0));
        assert!(sustained(1000, 1000, 975, 25));
        assert!(!sustained(1000, 1000, 900, 100), "10 % short");
        assert!(
            !sustained(1000, 800, 800, 0),
            "the broker held messages back"
        );
        assert!(!sustained(1000, 1000, 990, 40), "a backlog is building");
        assert!(!sustained(0, 0, 0, 0), "nothing offered");
    }

    #[test]
    fn efficiency_compares_cpu_per_message_at_the_sustained_steps() {
        let search = |broker: &str, rate: f64, cpu: f64| BrokerSearch {
            broker: broker.into(),
            connections: 10,
            connections_up: 10,
            qos: 0,
            sustained_per_second: Some(rate),
            cpu_seconds_per_million: Some(cpu),
            peak_delivered_per_second: rate,
            broker_peak_rss_mib: 1.0,
            published_total: 1,
            delivered_total: 1,
            lost: 0,
            stopped: String::new(),
        };
        let ratio = compare_searches(&search("ours", 150.0, 5.0), &search("theirs", 100.0, 10.0));
        assert!((ratio.throughput_ratio - 1.5).abs() < 1e-9);
        assert!((ratio.efficiency_ratio - 2.0).abs() < 1e-9);
        assert!(target(&ratio).met);
    }
}
