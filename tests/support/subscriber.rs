//! A real MQTT subscriber (rumqttc) that forwards every message it receives to the test.

use std::time::Duration;

use iotmon_wire::mqtt::BrokerUrl;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// A message as the test sees it: topic, payload, retained flag.
pub type Received = (String, Vec<u8>, bool);

/// Connects as `client_id` (with `credentials` when given), subscribes to `filters`, waits
/// for the broker to confirm, and forwards every message until `stop`.
///
/// # Panics
/// The subscriber cannot connect or subscribe within 5 seconds.
pub async fn subscribe(
    broker: &BrokerUrl,
    client_id: &str,
    credentials: Option<(&str, &str)>,
    filters: &[&str],
    stop: CancellationToken,
) -> mpsc::UnboundedReceiver<Received> {
    let mut options = broker.options(client_id, 64 * 1024);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    subscribe_with(options, filters, stop).await
}

/// As [`subscribe`], with client options of the caller's (e.g. TLS).
///
/// # Panics
/// The subscriber cannot connect or subscribe within 5 seconds.
pub async fn subscribe_with(
    options: rumqttc::MqttOptions,
    filters: &[&str],
    stop: CancellationToken,
) -> mpsc::UnboundedReceiver<Received> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    for filter in filters {
        client
            .subscribe(*filter, QoS::AtLeastOnce)
            .await
            .expect("queue the subscription");
    }
    timeout(
        Duration::from_secs(5),
        wait_for_subacks(&mut eventloop, filters.len()),
    )
    .await
    .expect("subscribed in time");
    let (to_test, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client; // the event loop ends when every client handle is dropped
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                event = eventloop.poll() => event.expect("subscriber stays connected"),
            };
            if let Event::Incoming(Packet::Publish(publish)) = event {
                let message = (publish.topic, publish.payload.to_vec(), publish.retain);
                if to_test.send(message).is_err() {
                    break;
                }
            }
        }
    });
    received
}

async fn wait_for_subacks(eventloop: &mut EventLoop, mut left: usize) {
    while left > 0 {
        let event = eventloop.poll().await.expect("subscriber connects");
        if matches!(event, Event::Incoming(Packet::SubAck(_))) {
            left -= 1;
        }
    }
}

/// Reads messages until `done` holds for what was received, or `wait` passes; returns all.
pub async fn collect_until(
    received: &mut mpsc::UnboundedReceiver<Received>,
    wait: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let deadline = Instant::now() + wait;
    let mut messages = Vec::new();
    while !done(&messages) {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) | Err(_) => break,
        }
    }
    while let Ok(message) = received.try_recv() {
        messages.push(message);
    }
    messages
}
