//! The broker comparison (issue 3, item 8): the same fleet and the same subscriber against
//! `iotmon broker` and Debian's mosquitto, one after the other in one run, at each QoS and
//! connection count.
//!
//! Throughput is what the subscriber on `sensors/#` receives per second while every device
//! publishes at the offered rate; CPU seconds per million messages shows what each broker
//! spends for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::mqtt::BrokerUrl;
use iotmon_wire::topics::SENSORS_FILTER;
use rumqttc::{AsyncClient, Event, Packet};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::process::{own_usage, Measured};
use super::report::{mib, BenchReport, BrokerRatio, BrokerRun, Machine, Target};
use super::{poll_until, ramp_for, BenchConfig};
use crate::config::Qos;
use crate::stats::Progress;
use crate::{Fleet, FleetConfig, SimulatorError};

/// Offered messages per second unless `--rate` says otherwise.
const DEFAULT_RATE: f64 = 40_000.0;
/// The target: iotmon's throughput at least this many times mosquitto's.
const TARGET_RATIO: f64 = 1.5;
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Once the fleet stops, the subscriber has this long to receive what is still in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Runs every (connections, QoS) pair against both brokers and compares.
pub(crate) async fn compare(
    config: &BenchConfig,
    shutdown: &CancellationToken,
) -> Result<BenchReport, SimulatorError> {
    let machine = Machine::now();
    let rate = config.rate.unwrap_or(DEFAULT_RATE);
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    for &connections in &config.connections {
        for &qos in &config.qos {
            let iotmon = Measured::start_iotmon(&config.iotmon, "broker", Vec::new()).await?;
            let ours = measure(config, iotmon, connections, qos, rate, shutdown).await?;
            let mosquitto = Measured::start_mosquitto().await?;
            let theirs = measure(config, mosquitto, connections, qos, rate, shutdown).await?;
            ratios.push(BrokerRatio {
                connections,
                qos: qos.level(),
                throughput_ratio: ratio(ours.delivered_per_second, theirs.delivered_per_second),
                efficiency_ratio: ratio(
                    theirs.cpu_seconds_per_million,
                    ours.cpu_seconds_per_million,
                ),
            });
            runs.extend([ours, theirs]);
            if shutdown.is_cancelled() {
                break;
            }
        }
    }
    let targets = ratios
        .iter()
        .map(|ratio| Target {
            what: format!(
                "broker throughput at {} connections, QoS {}",
                ratio.connections, ratio.qos
            ),
            target: format!("≥ {TARGET_RATIO}× mosquitto"),
            measured: format!(
                "{:.2}× (CPU efficiency {:.2}×)",
                ratio.throughput_ratio, ratio.efficiency_ratio
            ),
            met: ratio.throughput_ratio >= TARGET_RATIO,
        })
        .collect();
    Ok(BenchReport::Broker {
        machine,
        runs,
        ratios,
        targets,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// One broker under one load: subscribe, start the fleet, warm up, measure a window, stop
/// the fleet, drain.
async fn measure(
    config: &BenchConfig,
    broker: Measured,
    connections: usize,
    qos: Qos,
    rate: f64,
    shutdown: &CancellationToken,
) -> Result<BrokerRun, SimulatorError> {
    let url: BrokerUrl = format!("mqtt://{}", broker.mqtt)
        .parse()
        .map_err(|error| SimulatorError::Bench(format!("broker address: {error}")))?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop_subscriber = CancellationToken::new();
    let subscriber = subscribe(&url, Arc::clone(&delivered), stop_subscriber.clone()).await?;
    let fleet_config = FleetConfig {
        broker: url,
        devices: connections,
        interval: Duration::from_secs_f64(connections as f64 / rate),
        qos,
        client_prefix: "bench".into(),
        ramp: Some(ramp_for(connections)),
        ..FleetConfig::default()
    };
    let fleet = Fleet::start(fleet_config, Progress::Off, shutdown)?;
    let counters = fleet.counters().clone();
    // A broker that cannot take every connection in time is measured anyway: the report
    // says how many were up.
    poll_until(SETTLE_LIMIT, || {
        counters.connected_now() == connections as u64
    })
    .await;
    sleep(config.warmup).await;
    let connections_up = counters.connected_now();
    let start = (
        Instant::now(),
        delivered.load(Ordering::Relaxed),
        counters.readings_written(),
        broker.usage()?,
        own_usage()?,
    );
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = sleep(config.measure) => {}
    }
    let end = (
        Instant::now(),
        delivered.load(Ordering::Relaxed),
        counters.readings_written(),
        broker.usage()?,
        own_usage()?,
    );
    let summary = fleet.stop().await;
    let published = summary.readings_published;
    poll_until(DRAIN_LIMIT, || {
        delivered.load(Ordering::Relaxed) >= published
    })
    .await;
    let delivered_total = delivered.load(Ordering::Relaxed);
    stop_subscriber.cancel();
    let _ = subscriber.await;
    let seconds = (end.0 - start.0).as_secs_f64();
    let delivered_in_window = end.1 - start.1;
    let cpu = end.3.cpu_seconds - start.3.cpu_seconds;
    Ok(BrokerRun {
        broker: broker.name.clone(),
        connections,
        connections_up,
        qos: qos.level(),
        offered_per_second: summary.offered_per_second,
        published_per_second: (end.2 - start.2) as f64 / seconds,
        delivered_per_second: delivered_in_window as f64 / seconds,
        published_total: published,
        delivered_total,
        lost: published as i64 - delivered_total as i64,
        missed_turns: summary.missed_turns,
        publish_errors: summary.publish_errors,
        cpu_seconds_per_million: if delivered_in_window > 0 {
            cpu / (delivered_in_window as f64 / 1e6)
        } else {
            0.0
        },
        broker_cpu_percent: 100.0 * cpu / seconds,
        broker_peak_rss_mib: mib(broker.usage()?.peak_rss_bytes),
        generator_cpu_percent: 100.0 * (end.4.cpu_seconds - start.4.cpu_seconds) / seconds,
        window_seconds: seconds,
    })
}

/// A subscriber on `sensors/#` that counts what it receives, until `stop`. Returns once the
/// broker has confirmed the subscription.
///
/// It subscribes at QoS 0 whatever the publishers use: one rumqttc client acknowledging
/// QoS 1 deliveries was measured here at a few thousand messages a second at best, far
/// below either broker, so a QoS 1 subscription would measure the subscriber. At QoS 1 the
/// benchmark therefore measures what QoS 1 costs a broker on the publishing side (a PUBACK
/// per message) and delivers at QoS 0.
async fn subscribe(
    url: &BrokerUrl,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, SimulatorError> {
    // rumqttc acknowledges each QoS 1 message itself.
    let options = url.options("bench-subscriber", 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(SENSORS_FILTER, rumqttc::QoS::AtMostOnce)
        .await
        .map_err(|error| SimulatorError::Bench(format!("subscribe: {error}")))?;
    let subscribed = timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    match subscribed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return Err(SimulatorError::Bench(format!(
                "subscriber could not connect: {error}"
            )))
        }
        Err(_) => {
            return Err(SimulatorError::Bench(
                "subscriber not confirmed in time".into(),
            ))
        }
    }
    Ok(tokio::spawn(async move {
        let _client = client; // the event loop stops when every handle is dropped
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                // A lost subscriber shows as lost messages in the report.
                Err(_) => break,
            }
        }
    }))
}
