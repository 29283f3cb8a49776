//! End-to-end: devices publish over real MQTT, viewers watch over a real WebSocket, and each
//! viewer receives exactly the devices it asked for — with `iotmon serve`, with the roles
//! split across three processes, and with the bridge and dashboard on Debian's mosquitto.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::mosquitto;
use crate::support::{eventually, http_get, metric_value, Iotmon, Publisher, Viewer, DEADLINE};

/// A small fleet spread over several groups: (group path, device id).
const FLEET: [(&str, &str); 6] = [
    ("hq/building-a/floor-1", "dev-a1"),
    ("hq/building-a/floor-2", "dev-a2"),
    ("hq/building-b", "dev-b1"),
    ("hq", "dev-h1"),
    ("plant", "dev-p1"),
    ("plant/line-1", "dev-p2"),
];

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// Publishes round after round of readings (temperature = round) for the whole fleet, with
/// malformed messages mixed in, until every viewer's condition holds.
async fn publish_until(
    publisher: &Publisher,
    round: &mut u32,
    viewers: &mut [&mut Viewer],
    done: impl Fn(&Viewer) -> bool,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        *round += 1;
        for (group, id) in FLEET {
            let payload = json!({"temperature": *round, "online": true}).to_string();
            publisher
                .publish(&format!("sensors/{group}/{id}"), payload)
                .await;
        }
        publisher.publish("sensors/hq/dev-bad", "not json {").await;
        publisher.publish("sensors/dev-nogroup", r#"{"t":1}"#).await;
        let mut all_done = true;
        for viewer in viewers.iter_mut() {
            all_done &= viewer.read_until(Duration::from_millis(300), &done).await;
        }
        if all_done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "viewers did not get their devices in time"
        );
    }
}

/// The core promise: each viewer gets a snapshot and then updates for its view, and nothing
/// about any other device, also after it changes its view.
async fn viewers_get_exactly_their_devices(mqtt: SocketAddr, ws_url: &str, publisher_id: &str) {
    let publisher = Publisher::connect(mqtt, publisher_id).await;
    let mut first = Viewer::connect(ws_url).await;
    let mut second = Viewer::connect(ws_url).await;
    first.view(&["dev-a1", "dev-p2", "dev-never-seen"]).await;
    second.view(&["dev-b1"]).await;

    let mut round = 0;
    let has_fresh = |wanted: &'static [&'static str]| {
        move |viewer: &Viewer| {
            wanted
                .iter()
                .all(|id| viewer.metric(id, "temperature").is_some_and(|t| t >= 3.0))
        }
    };
    publish_until(
        &publisher,
        &mut round,
        &mut [&mut first],
        has_fresh(&["dev-a1", "dev-p2"]),
    )
    .await;
    publish_until(
        &publisher,
        &mut round,
        &mut [&mut second],
        has_fresh(&["dev-b1"]),
    )
    .await;

    assert_eq!(first.seen, set(&["dev-a1", "dev-p2"]));
    assert_eq!(second.seen, set(&["dev-b1"]));
    assert_eq!(
        first.messages[0]["type"], "snapshot",
        "a view is answered by a snapshot"
    );
    assert_seq_increases(&first.messages);
    let a1 = &first.devices["dev-a1"];
    assert_eq!(a1["group"], "hq/building-a/floor-1");
    assert_eq!(a1["metrics"]["online"], true);
    assert!(a1["ts"].as_i64().is_some_and(|ts| ts > 1_700_000_000_000));

    // A new view replaces the old one: a snapshot of the new devices, then only those.
    first.view(&["dev-h1"]).await;
    let before = first.messages.len();
    first
        .read_until(DEADLINE, |v| {
            v.messages[before..].iter().any(|m| m["type"] == "snapshot")
        })
        .await;
    let snapshot_at = before
        + first.messages[before..]
            .iter()
            .position(|m| m["type"] == "snapshot")
            .expect("a snapshot for the new view");
    let after = first.messages.len();
    publish_until(&publisher, &mut round, &mut [&mut first], |v| {
        v.messages.len() > after + 2
    })
    .await;
    for message in &first.messages[snapshot_at..] {
        for device in message["devices"].as_array().into_iter().flatten() {
            assert_eq!(
                device["id"], "dev-h1",
                "only the new view after the snapshot"
            );
        }
    }
    assert!(first.devices.contains_key("dev-h1"));
}

fn assert_seq_increases(messages: &[Value]) {
    let seqs: Vec<u64> = messages.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "sequence numbers count up by one: {seqs:?}"
    );
}

#[tokio::test]
async fn serve_sends_each_viewer_exactly_its_devices() {
    let iotmon = Iotmon::serve();
    viewers_get_exactly_their_devices(iotmon.mqtt.expect("mqtt"), &iotmon.ws_url(), "e2e").await;

    // The malformed messages published alongside were refused and counted, nothing else lost.
    let http = iotmon.http.expect("http");
    let (status, metrics) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metric_value(
            &metrics,
            r#"iotmon_ingest_rejected_total{reason="not_json"}"#
        ) >= 1
    );
    assert!(
        metric_value(
            &metrics,
            r#"iotmon_ingest_rejected_total{reason="bad_topic"}"#
        ) >= 1
    );
    assert!(metric_value(&metrics, "iotmon_ingest_readings_total") >= 18);

    let (status, body) = http_get(http, "/api/devices?limit=3&q=hq/building-a").await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).expect("JSON page");
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["devices"][0]["id"], "dev-a1");
    let (status, body) = http_get(http, "/api/devices?limit=zero").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit"), "{body}");
    let (status, _) = http_get(http, "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn serve_accepts_batches_and_tells_viewers_about_bad_messages() {
    let iotmon = Iotmon::serve();
    let publisher = Publisher::connect(iotmon.mqtt.expect("mqtt"), "e2e-batch").await;
    let mut viewer = Viewer::connect(&iotmon.ws_url()).await;
    viewer.send(json!({"type": "dance"})).await;
    viewer.send(json!({"type": "ping"})).await;
    viewer
        .read_until(DEADLINE, |v| v.got("error") && v.got("pong"))
        .await;
    let error = viewer
        .messages
        .iter()
        .find(|m| m["type"] == "error")
        .expect("an error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("dance")),
        "{error}"
    );

    viewer.view(&["dev-batch"]).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let batch = json!([
        {"ts": now_ms - 2000, "temperature": 20.0},
        {"ts": now_ms - 1000, "temperature": 21.0, "humidity": 40.0},
        {"ts": now_ms, "temperature": 22.5},
    ]);
    let got_batch = |v: &Viewer| v.metric("dev-batch", "temperature") == Some(22.5);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !viewer
        .read_until(Duration::from_millis(300), got_batch)
        .await
    {
        publisher
            .publish("sensors/lab/dev-batch", batch.to_string())
            .await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch never arrived"
        );
    }
    assert_eq!(viewer.metric("dev-batch", "humidity"), Some(40.0));
    assert_eq!(viewer.devices["dev-batch"]["ts"].as_i64(), Some(now_ms));
}

/// Also: several dashboards on one bridge each serve their own viewers.
#[tokio::test]
async fn split_roles_in_three_processes_behave_like_serve() {
    let broker = Iotmon::anonymous_broker();
    let url = broker.mqtt_url();
    let bridge_data = support::TempDir::new("bridge");
    let bridge = Iotmon::start(
        &[
            "bridge",
            "--broker",
            &url,
            "--data-dir",
            bridge_data.path(),
            "--http-listen",
            "127.0.0.1:0",
        ],
        false,
        true,
    );
    let start_dashboard = || {
        let args = [
            "dashboard",
            "--broker",
            &url,
            "--http-listen",
            "127.0.0.1:0",
        ];
        Iotmon::start(&args, false, true)
    };
    // Two dashboards on the same bridge, each serving its own viewers at the same time.
    let (first, second) = (start_dashboard(), start_dashboard());
    let mqtt = broker.mqtt.expect("mqtt");
    let (first_url, second_url) = (first.ws_url(), second.ws_url());
    tokio::join!(
        viewers_get_exactly_their_devices(mqtt, &first_url, "e2e-first"),
        viewers_get_exactly_their_devices(mqtt, &second_url, "e2e-second"),
    );

    // A dashboard started after the readings asks the bridge to resend, so it starts complete.
    let late = start_dashboard();
    let mut viewer = Viewer::connect(&late.ws_url()).await;
    let fleet: Vec<&str> = FLEET.iter().map(|(_, id)| *id).collect();
    let complete = |v: &Viewer| FLEET.iter().all(|(_, id)| v.devices.contains_key(*id));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Re-asking for the view gives a fresh snapshot once the resend has arrived.
    while !viewer
        .read_until(Duration::from_millis(300), complete)
        .await
    {
        viewer.view(&fleet).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "late dashboard never complete"
        );
    }

    // The bridge alone serves its own counters: at least every device's reading (the
    // publishers repeat until their viewers have seen them).
    let (status, metrics) = support::http_get(bridge.http.expect("http"), "/metrics").await;
    assert_eq!(status, 200);
    let ingested = support::metric_value(&metrics, "iotmon_ingest_readings_total");
    assert!(ingested >= FLEET.len() as u64, "{metrics}");
}

#[tokio::test]
async fn bridge_and_dashboard_work_against_mosquitto() {
    let mosquitto = mosquitto::Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let bridge_data = support::TempDir::new("bridge");
    let _bridge = Iotmon::start(
        &["bridge", "--broker", &url, "--data-dir", bridge_data.path()],
        false,
        false,
    );
    let dashboard = Iotmon::start(
        &[
            "dashboard",
            "--broker",
            &url,
            "--http-listen",
            "127.0.0.1:0",
        ],
        false,
        true,
    );
    let mqtt = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    viewers_get_exactly_their_devices(mqtt, &dashboard.ws_url(), "e2e").await;
}

#[tokio::test]
async fn sigterm_tells_viewers_to_reconnect_and_exits_cleanly() {
    let mut iotmon = Iotmon::serve();
    let mut viewer = Viewer::connect(&iotmon.ws_url()).await;
    viewer.view(&["anything"]).await;
    viewer.read_until(DEADLINE, |v| v.got("snapshot")).await;
    let status = iotmon.terminate(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    viewer.read_until(DEADLINE, |v| v.got("reconnect")).await;
    assert!(viewer.got("reconnect"), "viewer was told to reconnect");
}

/// With device authentication on, the split bridge and dashboard log in like devices do.
#[tokio::test]
async fn split_roles_log_in_when_the_broker_checks_credentials() {
    let registry = support::TempDir::new("credentials");
    for id in ["svc-bridge", "svc-dashboard", "cred-dev"] {
        let mut add = std::process::Command::new(env!("CARGO_BIN_EXE_iotmon"))
            .args([
                "devices",
                "add",
                id,
                "--password-stdin",
                "--data-dir",
                registry.path(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("iotmon devices add");
        use std::io::Write as _;
        let mut stdin = add.stdin.take().expect("stdin");
        writeln!(stdin, "pw-{id}").expect("password written");
        drop(stdin);
        assert!(add.wait().expect("exit").success());
    }
    let broker = Iotmon::start(
        &[
            "broker",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data-dir",
            registry.path(),
        ],
        true,
        false,
    );
    let url = broker.mqtt_url();
    let bridge_dir = support::TempDir::new("bridge");
    let _bridge = Iotmon::start_with_env(
        &[
            "bridge",
            "--broker",
            &url,
            "--username",
            "svc-bridge",
            "--data-dir",
            bridge_dir.path(),
        ],
        &[("IOTMON_MQTT_PASSWORD", "pw-svc-bridge")],
        false,
        false,
    );
    let dashboard = Iotmon::start_with_env(
        &[
            "dashboard",
            "--broker",
            &url,
            "--username",
            "svc-dashboard",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[("IOTMON_MQTT_PASSWORD", "pw-svc-dashboard")],
        false,
        true,
    );
    let mqtt = broker.mqtt.expect("mqtt");
    let device = Publisher::connect_as(mqtt, "cred-dev", Some("pw-cred-dev")).await;
    let mut viewer = Viewer::connect(&dashboard.ws_url()).await;
    viewer.view(&["cred-dev"]).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let arrived = |v: &Viewer| v.metric("cred-dev", "temperature") == Some(21.0);
    while !viewer.read_until(Duration::from_millis(300), arrived).await {
        device
            .publish("sensors/lab/cred-dev", r#"{"temperature":21.0}"#)
            .await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "reading never reached the viewer"
        );
    }
}

/// A device that connects with the client id of serve's in-process bridge link is refused;
/// it does not take the id over (which would cut the bridge off from every reading).
#[tokio::test]
async fn a_device_cannot_take_the_bridges_client_id() {
    let iotmon = Iotmon::serve();
    let mqtt = iotmon.mqtt.expect("mqtt");
    let options = rumqttc::MqttOptions::new("iotmon-bridge", mqtt.ip().to_string(), mqtt.port());
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let refused = tokio::time::timeout(DEADLINE, eventloop.poll())
        .await
        .expect("the broker answers the CONNECT");
    assert!(
        matches!(
            refused,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::ServiceUnavailable
            ))
        ),
        "{refused:?}"
    );

    // The bridge still gets readings.
    let publisher = Publisher::connect(mqtt, "e2e-after-hijack").await;
    let http = iotmon.http.expect("http");
    eventually(DEADLINE, "the bridge gets the reading", || async {
        publisher
            .publish("sensors/lab/dev-survivor", r#"{"temperature": 20.5}"#)
            .await;
        let (status, body) = http_get(http, "/api/devices?q=dev-survivor").await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).expect("JSON page");
        if page["total"] == 1 {
            Ok(())
        } else {
            Err(page)
        }
    })
    .await;
}
