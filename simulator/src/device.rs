//! The devices behind one MQTT connection (one device, or many in gateway mode) and the loop
//! that gives each its turn: a reading every interval, now and then an anomaly or a spell
//! offline, and presence announcements.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, Client, ConnectOptions};
use crate::config::{FleetConfig, Qos};
use crate::connection::{keep_connected, Session};
use crate::sensor::{batch_payload, SensorModel};
use crate::stats::Counters;

/// Largest MQTT packet a device sends or accepts; a reading is under 200 bytes.
const MAX_PACKET_SIZE: usize = 16 * 1024;
/// Requests a connection's client may queue for its event loop, beyond two per device (a
/// reading and a presence message). See [`Turns::publish`] for what happens when it is full.
const REQUEST_QUEUE_SLACK: usize = 16;
/// Presence payloads.
pub(crate) const ONLINE: &str = "online";
pub(crate) const OFFLINE: &str = "offline";

/// One simulated device.
#[derive(Debug)]
pub(crate) struct Device {
    /// `sensor-000042`.
    pub id: String,
    /// `sensors/<group>/<device id>`.
    pub topic: String,
    /// `status/<group>/<device id>`.
    pub status_topic: String,
    pub sensor: SensorModel,
    /// When this device publishes its first reading; later ones follow every interval.
    pub first_publish_at: Instant,
    /// While offline, when the device comes back.
    pub offline_until: Option<Instant>,
}

/// One MQTT connection and the devices it carries.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The MQTT client id (and username, with credentials).
    pub client_id: String,
    /// In fleet order; one device unless in gateway mode.
    pub devices: Vec<Device>,
    /// When to open the connection.
    pub connect_at: Instant,
    /// Seed of the behaviour draws (anomalies, offline spells).
    pub seed: u64,
}

/// What every connection of a fleet shares.
#[derive(Debug)]
pub(crate) struct FleetShared {
    pub config: FleetConfig,
    pub counters: Arc<Counters>,
}

impl Connection {
    /// Starts the connection's session and its devices' turns on `tracker`; both stop at
    /// `shutdown`.
    pub(crate) fn spawn(
        self,
        shared: &Arc<FleetShared>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let config = &shared.config;
        let gateway = self.devices.len() > 1;
        let options = ConnectOptions {
            version: config.mqtt_version,
            broker: &config.broker,
            client_id: &self.client_id,
            // A gateway's will could speak for one device only: it reports its devices itself.
            will_topic: (config.presence && !gateway)
                .then(|| self.devices[0].status_topic.as_str()),
            password: config.password.as_deref(),
            tls_ca: config.tls_ca.as_deref(),
            max_packet_size: MAX_PACKET_SIZE,
        };
        let queue = 2 * self.devices.len() + REQUEST_QUEUE_SLACK;
        let (client, eventloop) = client::open(&options, queue);
        let (go_offline, offline_requests) = mpsc::channel(1);
        let (epoch_tx, epoch) = watch::channel(0);
        let farewell = if config.presence {
            self.devices
                .iter()
                .map(|device| device.status_topic.clone())
                .collect()
        } else {
            Vec::new()
        };
        tracker.spawn(keep_connected(
            Session {
                eventloop,
                client: client.clone(),
                start_at: self.connect_at,
                farewell,
                offline_requests,
                epoch: epoch_tx,
                counters: Arc::clone(&shared.counters),
            },
            shutdown.clone(),
        ));
        let turns = Turns {
            rng: SmallRng::seed_from_u64(self.seed),
            devices: self.devices,
            client,
            go_offline,
            shared: Arc::clone(shared),
        };
        tracker.spawn(turns.run(epoch, shutdown.clone()));
    }
}

/// The publishing side of one connection.
struct Turns {
    rng: SmallRng,
    devices: Vec<Device>,
    client: Client,
    /// Asks the session to drop the connection for a while (a device alone going offline).
    go_offline: mpsc::Sender<Duration>,
    shared: Arc<FleetShared>,
}

impl Turns {
    /// Gives each device its turn every interval until `shutdown`; announces presence each
    /// time the session (re)connects (`epoch` changes).
    ///
    /// When the publisher falls more than an interval behind its schedule (the machine is
    /// saturated), whole rounds are skipped and counted as missed turns rather than sent in a
    /// burst: offered load stays honest.
    async fn run(mut self, mut epoch: watch::Receiver<u64>, shutdown: CancellationToken) {
        let interval = self.shared.config.interval;
        let mut round: u32 = 0;
        let mut slot = 0;
        loop {
            let due = self.devices[slot].first_publish_at + interval * round;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = epoch.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.announce_online();
                    continue;
                }
                () = sleep_until(due) => {}
            }
            let behind = Instant::now().saturating_duration_since(due);
            if behind > interval {
                let skipped = (behind.as_nanos() / interval.as_nanos()) as u32;
                self.shared
                    .counters
                    .missed_turns(u64::from(skipped) * self.devices.len() as u64);
                round += skipped;
                continue;
            }
            self.take_turn(slot);
            slot += 1;
            if slot == self.devices.len() {
                slot = 0;
                round += 1;
            }
        }
    }

    /// Device `slot`'s turn: come back, go offline, or publish a reading (perhaps starting an
    /// anomaly).
    fn take_turn(&mut self, slot: usize) {
        let config = &self.shared.config;
        let now = Instant::now();
        let gateway = self.devices.len() > 1;
        if let Some(until) = self.devices[slot].offline_until {
            if gateway && now >= until {
                self.devices[slot].offline_until = None;
                self.announce(slot, ONLINE);
            } else {
                self.shared.counters.skipped_offline();
                return;
            }
        }
        if config.offline_rate > 0.0 && self.rng.random_bool(config.offline_rate) {
            self.go_offline(slot, now);
            return;
        }
        let anomaly_rate = config.anomaly_rate;
        let device = &mut self.devices[slot];
        if anomaly_rate > 0.0 && !device.sensor.in_anomaly() && self.rng.random_bool(anomaly_rate) {
            device.sensor.start_anomaly();
            self.shared.counters.anomaly();
        }
        let payload = next_payload(
            &mut device.sensor,
            config.readings_per_message,
            config.interval,
        );
        let qos = config.qos;
        self.publish(slot, payload, qos);
    }

    /// Device `slot` goes offline for the configured spell: alone, its connection drops (the
    /// broker publishes its will); behind a gateway, the gateway reports it `offline`.
    fn go_offline(&mut self, slot: usize, now: Instant) {
        let offline_for = self.shared.config.offline_for;
        self.devices[slot].offline_until = Some(now + offline_for);
        self.shared.counters.went_offline();
        if self.devices.len() > 1 {
            self.announce(slot, OFFLINE);
        } else {
            // A request already pending means the session is on its way offline anyway.
            let _ = self.go_offline.try_send(offline_for);
        }
    }

    /// Policy when the request queue is full (the broker is unreachable or not keeping up):
    /// the reading is dropped and counted. A sensor's newest reading supersedes the old ones,
    /// so waiting would only deliver stale data late and let memory grow.
    fn publish(&self, slot: usize, payload: Vec<u8>, qos: Qos) {
        let topic = self.devices[slot].topic.as_str();
        if !self.client.try_publish(topic, qos, false, payload) {
            self.shared.counters.publish_failed();
        }
    }

    /// A retained presence message for device `slot`, when presence is on.
    fn announce(&self, slot: usize, state: &'static str) {
        if !self.shared.config.presence {
            return;
        }
        let topic = self.devices[slot].status_topic.as_str();
        if self
            .client
            .try_publish(topic, Qos::AtMostOnce, true, state.into())
        {
            self.shared.counters.presence_queued();
        }
    }

    /// The session has just connected: every device not in an offline spell is online. A
    /// device alone was offline only because its connection was down, so it is back.
    fn announce_online(&mut self) {
        let alone = self.devices.len() == 1;
        for slot in 0..self.devices.len() {
            if alone {
                self.devices[slot].offline_until = None;
            }
            if self.devices[slot].offline_until.is_none() {
                self.announce(slot, ONLINE);
            }
        }
    }
}

/// The next message of a device: one reading now, or a batch of `batch` readings sampled
/// evenly over the last `interval`, the newest now.
fn next_payload(sensor: &mut SensorModel, batch: usize, interval: Duration) -> Vec<u8> {
    let now = unix_millis();
    if batch <= 1 {
        return sensor.next_reading(now).to_payload();
    }
    let step = i64::try_from(interval.as_millis() / batch as u128).unwrap_or(0);
    let readings: Vec<_> = (0..batch)
        .map(|index| sensor.next_reading(now - step * (batch - 1 - index) as i64))
        .collect();
    batch_payload(&readings)
}

/// Wall-clock time in milliseconds since the Unix epoch, for a reading's `ts`.
pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
