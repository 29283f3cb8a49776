//! The dashboard's input when it runs in a process of its own: device states from the
//! bridge's `iotmon/live/...` topics and group aggregates from `iotmon/agg/...` on an MQTT
//! broker.

use bytes::Bytes;
use iotmon_wire::mqtt::{drive_session, BrokerUrl, Login, Message, SessionPlan};
use iotmon_wire::topics::{AGG_FILTER, ALERTS_FILTER, ALERT_COMMANDS, LIVE_FILTER, SYNC_REQUEST};
use iotmon_wire::{Alert, AlertCommand, LiveUpdate, DeviceState, GroupAggregate};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Messages buffered between the MQTT client and the decoder.
const INPUT_CAPACITY: usize = 4096;

/// Subscribes to the bridge's device states on `broker` and feeds them to `to_hub` until
/// `shutdown`. On every (re)connect it asks the bridge to resend all states, so a dashboard
/// that starts late, or lost its connection, is complete again. Operators' alert commands
/// from `alert_commands` are published for the bridge at QoS 1.
pub async fn from_broker(
    broker: BrokerUrl,
    login: Login,
    max_packet_size: usize,
    to_hub: mpsc::Sender<LiveUpdate>,
    mut alert_commands: mpsc::Receiver<AlertCommand>,
    shutdown: CancellationToken,
) {
    let (client, eventloop) = AsyncClient::new(broker.options_for(&login, max_packet_size), 64);
    let (messages_tx, mut messages) = mpsc::channel::<Message>(INPUT_CAPACITY);
    let plan = SessionPlan {
        subscriptions: vec![LIVE_FILTER.to_string(), AGG_FILTER.to_string()],
        reliable_subscriptions: vec![ALERTS_FILTER.to_string()],
        announce: Some((SYNC_REQUEST.to_string(), Bytes::new())),
    };
    let session = tokio::spawn(drive_session(
        eventloop,
        client.clone(),
        plan,
        Some(messages_tx),
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Some(message) = message else { break };
                let Some(derived) = decode(&message) else {
                    continue;
                };
                if to_hub.send(derived).await.is_err() {
                    break;
                }
            }
            Some(command) = alert_commands.recv() => publish_command(&client, &command).await,
        }
    }
    shutdown.cancel();
    let _ = session.await;
}

async fn publish_command(client: &AsyncClient, command: &AlertCommand) {
    let Ok(payload) = serde_json::to_vec(command) else {
        return;
    };
    if let Err(error) = client
        .publish(ALERT_COMMANDS, QoS::AtLeastOnce, false, payload)
        .await
    {
        warn!(%error, "alert command not published");
    }
}

/// A device state (`iotmon/live/...`) or a group aggregate (`iotmon/agg/...`); unreadable
/// payloads are logged and skipped.
fn decode(message: &Message) -> Option<LiveUpdate> {
    let decoded = if message.topic.starts_with("iotmon/alerts/") {
        serde_json::from_slice::<Alert>(&message.payload).map(|alert| LiveUpdate::Alerts(vec![alert]))
    } else if message.topic.starts_with("iotmon/agg/") {
        serde_json::from_slice::<GroupAggregate>(&message.payload)
            .map(|aggregate| LiveUpdate::Aggregates(vec![aggregate]))
    } else {
        serde_json::from_slice::<DeviceState>(&message.payload)
            .map(|state| LiveUpdate::Devices(vec![state]))
    };
    decoded
        .inspect_err(
            |error| warn!(topic = message.topic, %error, "ignoring unreadable derived data"),
        )
        .ok()
}
