//! Where the bridge's input comes from: the embedded broker in-process, or any MQTT broker.

use iotmon_broker::LocalSubscription;
use iotmon_wire::mqtt::Message;
use iotmon_wire::topics::{SENSORS_FILTER, STATUS_FILTER, SYNC_REQUEST};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Topic filters the bridge reads.
pub const FILTERS: [&str; 3] = [SENSORS_FILTER, STATUS_FILTER, SYNC_REQUEST];

/// Forwards an in-process subscription to the bridge until `shutdown`. Waits while the
/// bridge's channel is full: the router then holds messages in its bounded log.
pub async fn forward_local(
    mut subscription: LocalSubscription,
    to_bridge: mpsc::Sender<Message>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = subscription.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            sent = to_bridge.send(message) => if sent.is_err() { break },
        }
    }
}
