//! Running a fleet: lay it out, start every device at its turn, stop them all when the
//! duration ends or shutdown is requested, and sum up.

use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::topics::sensor_topic;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::device::Device;
use crate::layout::layout;
use crate::schedule::offsets;
use crate::sensor::SensorModel;
use crate::stats::{report_progress, Counters};
use crate::{FleetConfig, SimulatorError, Summary};

/// Runs a simulated fleet until `config.duration` elapses or `shutdown` is cancelled,
/// whichever comes first; returns once every device has disconnected.
///
/// Devices keep running through broker outages (reconnecting with backoff); what was lost is
/// counted in the [`Summary`].
///
/// # Errors
/// The config is invalid (see [`FleetConfig::validate`]); nothing has connected then.
pub async fn run(
    config: FleetConfig,
    shutdown: CancellationToken,
) -> Result<Summary, SimulatorError> {
    config.validate()?;
    let started = Instant::now();
    let fleet = shutdown.child_token();
    let counters = Arc::new(Counters::default());
    let tracker = TaskTracker::new();
    for device in plan_devices(&config, started) {
        device.spawn(&config.broker, &counters, &tracker, &fleet);
    }
    tracker.spawn(report_progress(
        Arc::clone(&counters),
        config.devices,
        fleet.clone(),
    ));
    tracker.close();
    info!(
        devices = config.devices,
        interval = ?config.interval,
        broker = %config.broker,
        "simulated fleet started"
    );
    wait_for_end(config.duration, &fleet).await;
    fleet.cancel();
    tracker.wait().await;
    let summary = counters.summary(config.devices, started.elapsed());
    info!(%summary, "simulated fleet stopped");
    Ok(summary)
}

/// Waits for `duration` to pass (when there is one) or for `fleet` to be cancelled.
async fn wait_for_end(duration: Option<Duration>, fleet: &CancellationToken) {
    match duration {
        Some(duration) => tokio::select! {
            () = fleet.cancelled() => {}
            () = sleep(duration) => {}
        },
        None => fleet.cancelled().await,
    }
}

/// Every device of the fleet with its ids, topic, sensors and turn, for a fleet starting at
/// `started`.
fn plan_devices(config: &FleetConfig, started: Instant) -> impl Iterator<Item = Device> + '_ {
    let count = config.devices;
    layout(count)
        .into_iter()
        .enumerate()
        .map(move |(index, device)| {
            let at = offsets(index, count, config.interval);
            Device {
                client_id: format!("{}-{}", config.client_prefix, device.id),
                topic: sensor_topic(&device.group, &device.id),
                sensor: SensorModel::new(device_seed(config.seed, index)),
                connect_at: started + at.connect,
                first_publish_at: started + at.first_publish,
                interval: config.interval,
            }
        })
}

/// A device's sensor seed: distinct per device, and not shifted copies of another fleet's
/// seeds (as `seed + index` would be).
fn device_seed(fleet_seed: u64, index: usize) -> u64 {
    const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    fleet_seed ^ (index as u64 + 1).wrapping_mul(GOLDEN_GAMMA)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn plans_ids_topics_and_turns_for_every_device() {
        let config = FleetConfig {
            devices: 30,
            interval: Duration::from_millis(200),
            client_prefix: "demo".to_string(),
            ..FleetConfig::default()
        };
        let started = Instant::now();
        let devices: Vec<_> = plan_devices(&config, started).collect();
        assert_eq!(devices.len(), 30);
        assert_eq!(devices[0].client_id, "demo-sensor-000001");
        assert_eq!(
            devices[0].topic,
            "sensors/site-1/building-a/floor-1/sensor-000001"
        );
        assert_eq!(
            devices[29].topic,
            "sensors/site-1/building-a/floor-2/sensor-000030"
        );
        assert!(devices
            .iter()
            .all(|device| device.connect_at <= device.first_publish_at));
        assert!(devices
            .iter()
            .all(|device| device.first_publish_at < started + config.interval));
        let client_ids: HashSet<_> = devices.iter().map(|device| &device.client_id).collect();
        assert_eq!(client_ids.len(), 30);
    }

    #[test]
    fn devices_and_fleets_get_distinct_seeds() {
        let seeds: HashSet<_> = (1..=3)
            .flat_map(|fleet| (0..1000).map(move |index| device_seed(fleet, index)))
            .collect();
        assert_eq!(seeds.len(), 3000);
    }

    #[tokio::test]
    async fn an_invalid_config_is_refused_before_anything_starts() {
        let config = FleetConfig {
            devices: 0,
            ..FleetConfig::default()
        };
        let result = run(config, CancellationToken::new()).await;
        assert_eq!(result, Err(SimulatorError::NoDevices));
    }

    #[tokio::test]
    async fn stops_promptly_on_shutdown_even_without_a_broker() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let config = FleetConfig {
            broker: format!("mqtt://127.0.0.1:{port}").parse().expect("address"),
            devices: 5,
            interval: Duration::from_millis(50),
            ..FleetConfig::default()
        };
        let shutdown = CancellationToken::new();
        let fleet = tokio::spawn(run(config, shutdown.clone()));
        sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        let summary = tokio::time::timeout(Duration::from_secs(2), fleet)
            .await
            .expect("run returns soon after shutdown")
            .expect("run does not panic")
            .expect("valid config");
        assert_eq!(summary.devices, 5);
        assert_eq!(summary.readings_published, 0);
        assert_eq!(summary.connections_lost, 0);
    }
}
