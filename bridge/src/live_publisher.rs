//! Publishing device states on `iotmon/live/<group>/<device>` when the bridge runs in a process
//! of its own, so any number of dashboards can subscribe.

use iotmon_wire::topics::live_topic;
use iotmon_wire::Derived;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Publishes every batch from `live_updates` through `client` at QoS 0, until `shutdown`.
/// Waits while the client's request queue is full; meanwhile the bridge coalesces.
pub async fn publish_live(
    client: AsyncClient,
    mut live_updates: mpsc::Receiver<Derived>,
    shutdown: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => break,
            batch = live_updates.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
        };
        let Derived::Devices(devices) = batch;
        for state in devices {
            let topic = live_topic(&state.group, &state.id);
            let payload = match serde_json::to_vec(&state) {
                Ok(payload) => payload,
                Err(error) => {
                    warn!(%error, device = %state.id, "device state not serializable");
                    continue;
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                published = client.publish(topic, QoS::AtMostOnce, false, payload) => {
                    if published.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
