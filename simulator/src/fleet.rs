//! Running a fleet: lay it out, group devices into connections, start every connection at
//! its turn, stop them all when the duration ends or shutdown is requested, and sum up.

use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::topics::sensor_topic;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::device::{Connection, Device, FleetShared};
use crate::layout::SimulatedDevice;
use crate::schedule::{offsets, offsets_over, Offsets};
use crate::sensor::SensorModel;
use crate::stats::{report_progress, Counters, FleetSize, Progress};
use crate::{FleetConfig, SimulatorError, Summary};

/// Runs a simulated fleet until `config.duration` elapses or `shutdown` is cancelled,
/// whichever comes first, logging progress lines; returns once every device has
/// disconnected.
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
    let duration = config.duration;
    let fleet = Fleet::start(config, Progress::Lines, &shutdown)?;
    fleet.run_for(duration).await;
    Ok(fleet.stop().await)
}

/// A running fleet, for callers that watch its counters while it runs (benchmarks).
#[derive(Debug)]
pub struct Fleet {
    size: FleetSize,
    counters: Arc<Counters>,
    tracker: TaskTracker,
    /// A child of the caller's shutdown: cancelled to stop this fleet alone.
    stop: CancellationToken,
    started: Instant,
}

impl Fleet {
    /// Validates `config` and starts every connection at its turn, showing progress per
    /// `progress`.
    ///
    /// # Errors
    /// The config is invalid (see [`FleetConfig::validate`]); nothing has connected then.
    pub fn start(
        config: FleetConfig,
        progress: Progress,
        shutdown: &CancellationToken,
    ) -> Result<Fleet, SimulatorError> {
        config.validate()?;
        let started = Instant::now();
        let stop = shutdown.child_token();
        let counters = Arc::new(Counters::new(config.readings_per_message));
        let tracker = TaskTracker::new();
        let size = FleetSize {
            devices: config.devices,
            connections: config.connections(),
            offered_per_second: config.offered_rate(),
        };
        info!(
            devices = config.devices,
            connections = size.connections,
            interval = ?config.interval,
            broker = %config.broker,
            mqtt = %config.mqtt_version,
            "simulated fleet starting"
        );
        let duration = config.duration;
        let connections = plan_connections(&config, started);
        let shared = Arc::new(FleetShared {
            config,
            counters: Arc::clone(&counters),
        });
        for connection in connections {
            connection.spawn(&shared, &tracker, &stop);
        }
        tracker.spawn(report_progress(
            Arc::clone(&counters),
            size,
            duration,
            progress,
            stop.clone(),
        ));
        tracker.close();
        Ok(Fleet {
            size,
            counters,
            tracker,
            stop,
            started,
        })
    }

    /// The live counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Waits for `duration` to pass (when there is one) or for the fleet to be stopped.
    pub async fn run_for(&self, duration: Option<Duration>) {
        match duration {
            Some(duration) => tokio::select! {
                () = self.stop.cancelled() => {}
                () = sleep(duration) => {}
            },
            None => self.stop.cancelled().await,
        }
    }

    /// Disconnects every device and sums up.
    pub async fn stop(self) -> Summary {
        self.stop.cancel();
        self.tracker.wait().await;
        let summary = self.counters.summary(self.size, self.started.elapsed());
        info!(%summary, "simulated fleet stopped");
        summary
    }
}

/// Every connection of the fleet with its devices (ids, topics, sensors, turns), for a fleet
/// starting at `started`. Devices fill connections in fleet order, so a gateway serves
/// neighbouring devices, as one on a floor would.
fn plan_connections(config: &FleetConfig, started: Instant) -> Vec<Connection> {
    let count = config.devices;
    let per_connection = config.devices_per_connection.max(1);
    let mut devices = config.layout.place(count).into_iter().enumerate();
    let mut connections = Vec::with_capacity(config.connections());
    for number in 0..config.connections() {
        let members: Vec<Device> = devices
            .by_ref()
            .take(per_connection)
            .map(|(index, device)| plan_device(config, started, index, device))
            .collect();
        let first = number * per_connection;
        let client_id = if per_connection == 1 {
            client_id(&config.client_prefix, &members[0].id)
        } else {
            let width = 6.max(config.connections().to_string().len());
            client_id(
                &config.client_prefix,
                &format!("gateway-{:0width$}", number + 1),
            )
        };
        connections.push(Connection {
            client_id,
            devices: members,
            connect_at: started + turn(config, first).connect,
            seed: device_seed(config.seed ^ 0xA5A5_A5A5, first),
        });
    }
    connections
}

fn plan_device(
    config: &FleetConfig,
    started: Instant,
    index: usize,
    device: SimulatedDevice,
) -> Device {
    let at = turn(config, index);
    Device {
        topic: sensor_topic(&device.group, &device.id),
        status_topic: format!("status/{}/{}", device.group, device.id),
        sensor: SensorModel::with_metrics(device_seed(config.seed, index), &config.metrics),
        first_publish_at: started + at.first_publish,
        offline_until: None,
        id: device.id,
    }
}

/// When device `index` connects and first publishes.
fn turn(config: &FleetConfig, index: usize) -> Offsets {
    match config.ramp {
        Some(ramp) => offsets_over(index, config.devices, config.interval, ramp),
        None => offsets(index, config.devices, config.interval),
    }
}

/// `<prefix>-<name>`, or the bare name without a prefix (credentials whose username is the
/// device id).
fn client_id(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}-{name}")
    }
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
        let connections = plan_connections(&config, started);
        assert_eq!(connections.len(), 30);
        assert_eq!(connections[0].client_id, "demo-sensor-000001");
        assert_eq!(
            connections[0].devices[0].topic,
            "sensors/site-1/building-a/floor-1/sensor-000001"
        );
        assert_eq!(
            connections[0].devices[0].status_topic,
            "status/site-1/building-a/floor-1/sensor-000001"
        );
        assert_eq!(
            connections[29].devices[0].topic,
            "sensors/site-1/building-a/floor-2/sensor-000030"
        );
        assert!(connections
            .iter()
            .all(|c| c.connect_at <= c.devices[0].first_publish_at));
        assert!(connections
            .iter()
            .all(|c| c.devices[0].first_publish_at < started + config.interval));
        let client_ids: HashSet<_> = connections.iter().map(|c| &c.client_id).collect();
        assert_eq!(client_ids.len(), 30);
    }

    #[test]
    fn gateways_carry_neighbouring_devices() {
        let config = FleetConfig {
            devices: 25,
            devices_per_connection: 10,
            client_prefix: String::new(),
            ..FleetConfig::default()
        };
        let connections = plan_connections(&config, Instant::now());
        let sizes: Vec<_> = connections.iter().map(|c| c.devices.len()).collect();
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(connections[0].client_id, "gateway-000001");
        assert_eq!(connections[2].devices[4].id, "sensor-000025");
        let ids: HashSet<_> = connections
            .iter()
            .flat_map(|c| c.devices.iter().map(|d| d.id.clone()))
            .collect();
        assert_eq!(ids.len(), 25);
        for connection in &connections {
            assert!(connection
                .devices
                .windows(2)
                .all(|pair| pair[0].first_publish_at < pair[1].first_publish_at));
        }
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
        assert!(summary.connect_failures > 0, "{summary}");
    }
}
