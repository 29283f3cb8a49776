//! One simulated device: an MQTT connection of its own and a loop that publishes a reading
//! every interval, starting at the device's turn.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotmon_wire::mqtt::BrokerUrl;
use rumqttc::{AsyncClient, QoS};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::keep_connected;
use crate::sensor::SensorModel;
use crate::stats::Counters;

/// Largest MQTT packet a device sends or accepts; a reading is under 100 bytes.
const MAX_PACKET_SIZE: usize = 16 * 1024;
/// Requests a device's client may queue for its event loop (see [`publish_readings`] for what
/// happens when it is full).
const REQUEST_QUEUE: usize = 16;

/// Everything one device needs to run.
#[derive(Debug)]
pub(crate) struct Device {
    /// `<client prefix>-<device id>`.
    pub client_id: String,
    /// `sensors/<group>/<device id>`.
    pub topic: String,
    pub sensor: SensorModel,
    /// When to open the connection.
    pub connect_at: Instant,
    /// When to publish the first reading.
    pub first_publish_at: Instant,
    pub interval: Duration,
}

impl Device {
    /// Starts the device's connection and publishing tasks on `tracker`; both stop at
    /// `shutdown`.
    pub(crate) fn spawn(
        self,
        broker: &BrokerUrl,
        counters: &Arc<Counters>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let options = broker.options(&self.client_id, MAX_PACKET_SIZE);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        tracker.spawn(keep_connected(
            eventloop,
            client.clone(),
            self.connect_at,
            Arc::clone(counters),
            shutdown.clone(),
        ));
        tracker.spawn(publish_readings(
            client,
            self,
            Arc::clone(counters),
            shutdown.clone(),
        ));
    }
}

/// Publishes one reading per interval until `shutdown`. A late tick delays the ones after it
/// rather than bursting to catch up.
///
/// Policy when the request queue is full (the broker is unreachable or not keeping up): the
/// reading is dropped and counted in `publish_errors`. A sensor's newest reading supersedes
/// the old ones, so waiting would only deliver stale data late and let memory grow.
async fn publish_readings(
    client: AsyncClient,
    mut device: Device,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let mut ticks = interval_at(device.first_publish_at, device.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let payload = device.sensor.next_reading(unix_millis()).to_payload();
        let queued = client.try_publish(device.topic.as_str(), QoS::AtMostOnce, false, payload);
        if queued.is_err() {
            counters.publish_failed();
        }
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, for a reading's `ts`.
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
