//! End to end: a simulated fleet publishing through a real broker (mosquitto) to a real
//! subscriber.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use iotmon_simulator::{layout, run, FleetConfig};
use iotmon_wire::mqtt::BrokerUrl;
use iotmon_wire::topics::{parse_sensor_topic, SENSORS_FILTER};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use support::mosquitto::Mosquitto;

const DEVICES: usize = 30;
/// How long the subscriber may take to see every device once the fleet has stopped.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_publishes_readings_on_its_own_topic() {
    let mosquitto = Mosquitto::start();
    let broker: BrokerUrl = format!("mqtt://127.0.0.1:{}", mosquitto.port)
        .parse()
        .expect("broker address");
    let stop_subscriber = CancellationToken::new();
    let mut received = subscribe(&broker, stop_subscriber.clone()).await;

    let config = FleetConfig {
        broker,
        devices: DEVICES,
        interval: Duration::from_millis(200),
        duration: Some(Duration::from_millis(1500)),
        client_prefix: "fleet-test".to_string(),
        seed: 7,
    };
    let summary = run(config, CancellationToken::new())
        .await
        .expect("a valid config");

    let messages = collect_until_every_device_seen(&mut received).await;
    stop_subscriber.cancel();

    let groups: HashMap<String, String> = layout(DEVICES)
        .into_iter()
        .map(|device| (device.id, device.group))
        .collect();
    let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
    for (topic, payload) in &messages {
        let parsed = parse_sensor_topic(topic).expect("a sensor topic");
        assert_eq!(
            groups.get(parsed.device).map(String::as_str),
            Some(parsed.group),
            "device {} published under {topic}",
            parsed.device
        );
        assert_reading(payload);
        *per_device.entry(parsed.device.to_string()).or_default() += 1;
    }
    assert_eq!(
        per_device.len(),
        DEVICES,
        "devices heard from: {per_device:?}"
    );
    assert_eq!(summary.devices, DEVICES);
    assert!(
        summary.readings_published >= messages.len() as u64,
        "{summary}, but {} received",
        messages.len()
    );
    assert_eq!(summary.publish_errors, 0, "{summary}");
    assert_eq!(summary.connections_lost, 0, "{summary}");
}

/// Connects a subscriber to `sensors/#`, waits for the broker to confirm the subscription, and
/// forwards every message (topic, payload) until `stop`.
async fn subscribe(
    broker: &BrokerUrl,
    stop: CancellationToken,
) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let (client, mut eventloop) =
        AsyncClient::new(broker.options("fleet-test-subscriber", 64 * 1024), 16);
    client
        .subscribe(SENSORS_FILTER, QoS::AtMostOnce)
        .await
        .expect("queue the subscription");
    timeout(Duration::from_secs(5), wait_for_suback(&mut eventloop))
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
                if to_test
                    .send((publish.topic, publish.payload.to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    received
}

async fn wait_for_suback(eventloop: &mut EventLoop) {
    loop {
        let event = eventloop.poll().await.expect("subscriber connects");
        if matches!(event, Event::Incoming(Packet::SubAck(_))) {
            return;
        }
    }
}

/// Everything received so far, reading on until every device has been heard from or the
/// deadline passes (the assertions then say which devices are missing).
async fn collect_until_every_device_seen(
    received: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let deadline = Instant::now() + RECEIVE_DEADLINE;
    let mut messages = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < DEVICES {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(message)) => {
                seen.insert(message.0.clone());
                messages.push(message);
            }
            Ok(None) | Err(_) => break,
        }
    }
    while let Ok(message) = received.try_recv() {
        messages.push(message);
    }
    messages
}

/// The payload is the documented JSON object with a timestamp and the three metrics.
fn assert_reading(payload: &[u8]) {
    let json: serde_json::Value = serde_json::from_slice(payload).expect("JSON payload");
    assert!(json["ts"].as_i64().is_some_and(|ts| ts > 0), "{json}");
    for metric in ["temperature", "humidity", "pressure"] {
        assert!(
            json[metric].as_f64().is_some(),
            "{metric} missing in {json}"
        );
    }
}
