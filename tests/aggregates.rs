//! Group aggregates and presence end to end, with the roles split: `iotmon broker`, `iotmon
//! bridge`, devices publishing readings and a last-will-style `offline` status, and an MQTT
//! subscriber reading `iotmon/agg/<group>` as a split dashboard would.
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::support::{Iotmon, Publisher, TempDir, DEADLINE};

#[tokio::test]
async fn the_bridge_publishes_aggregates_for_every_group_level() {
    let broker = Iotmon::anonymous_broker();
    let addr = broker.mqtt.expect("mqtt");
    let data = TempDir::new("agg");
    let _bridge = Iotmon::start(
        &[
            "bridge",
            "--broker",
            &broker.mqtt_url(),
            "--data-dir",
            data.path(),
        ],
        false,
        false,
    );
    let (subscriber, mut eventloop) = AsyncClient::new(
        MqttOptions::new("agg-reader", addr.ip().to_string(), addr.port()),
        16,
    );
    subscriber
        .subscribe("iotmon/agg/#", QoS::AtMostOnce)
        .await
        .expect("subscribe queued");
    let publisher = Publisher::connect(addr, "agg-devices").await;

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut next_round = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_round {
            // The bridge may subscribe after the first round: publish until it answers.
            next_round += Duration::from_millis(500);
            for (topic, t) in [("sensors/hq/a/d1", 10.0), ("sensors/hq/b/d2", 30.0)] {
                publisher
                    .publish(topic, json!({"temperature": t}).to_string())
                    .await;
            }
            publisher.publish("status/hq/b/d3", "offline").await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete hq aggregate"
        );
        let event = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
        let Ok(Ok(Event::Incoming(Packet::Publish(publish)))) = event else {
            continue;
        };
        let aggregate: Value = serde_json::from_slice(&publish.payload).expect("aggregate JSON");
        if publish.topic != "iotmon/agg/hq" || aggregate["devices"]["offline"] != 1 {
            continue;
        }
        if aggregate["devices"]["online"] != 2 {
            continue;
        }
        assert_eq!(aggregate["group"], "hq");
        assert_eq!(aggregate["devices"]["alerting"], 0);
        let temperature = &aggregate["metrics"]["temperature"];
        assert_eq!(temperature["count"], 2);
        assert_eq!(temperature["mean"], 20.0);
        assert_eq!(temperature["min"], 10.0);
        assert_eq!(temperature["max"], 30.0);
        break;
    }
}
