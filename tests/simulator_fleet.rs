//! End to end: simulated fleets publishing through a real broker (mosquitto, or iotmon's
//! embedded broker) to a real subscriber: one connection per device, gateways with
//! credentials and QoS 1, presence with last wills and offline spells, TLS, MQTT 3.1.1 and
//! MQTT 5, and a fleet read from a fleet file.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use iotmon_simulator::{layout, run, FleetConfig, FleetDescription, Metric, MqttVersion, Qos};
use iotmon_wire::mqtt::BrokerUrl;
use iotmon_wire::topics::{parse_sensor_topic, SENSORS_FILTER};
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::embedded::Embedded;
use crate::support::mosquitto::Mosquitto;
use crate::support::subscriber::{collect_until, subscribe, Received};
use crate::support::TempDir;

/// How long the subscriber may take to see what it waits for once the fleet has stopped.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(5);

fn broker_of(mosquitto: &Mosquitto) -> BrokerUrl {
    format!("mqtt://127.0.0.1:{}", mosquitto.port)
        .parse()
        .expect("broker address")
}

fn devices_heard(messages: &[Received]) -> HashSet<String> {
    messages
        .iter()
        .filter_map(|(topic, _, _)| parse_sensor_topic(topic).ok())
        .map(|parsed| parsed.device.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_publishes_readings_on_its_own_topic() {
    const DEVICES: usize = 30;
    let mosquitto = Mosquitto::start();
    let broker = broker_of(&mosquitto);
    let stop_subscriber = CancellationToken::new();
    let mut received = subscribe(
        &broker,
        "fleet-test-subscriber",
        None,
        &[SENSORS_FILTER],
        stop_subscriber.clone(),
    )
    .await;

    let config = FleetConfig {
        broker,
        devices: DEVICES,
        interval: Duration::from_millis(200),
        duration: Some(Duration::from_millis(1500)),
        client_prefix: "fleet-test".to_string(),
        seed: 7,
        ..FleetConfig::default()
    };
    let summary = run(config, CancellationToken::new())
        .await
        .expect("a valid config");

    let messages = collect_until(&mut received, RECEIVE_DEADLINE, |m| {
        devices_heard(m).len() == DEVICES
    })
    .await;
    stop_subscriber.cancel();

    let groups: HashMap<String, String> = layout(DEVICES)
        .into_iter()
        .map(|device| (device.id, device.group))
        .collect();
    let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
    for (topic, payload, _) in &messages {
        let parsed = parse_sensor_topic(topic).expect("a sensor topic");
        assert_eq!(
            groups.get(parsed.device).map(String::as_str),
            Some(parsed.group),
            "device {} published under {topic}",
            parsed.device
        );
        assert_reading(payload, &["temperature", "humidity", "pressure"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_authenticate_and_publish_each_device_on_its_own_topic_at_qos_1() {
    gateways_with_credentials(MqttVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_speaking_mqtt_5_authenticate_and_publish_at_qos_1() {
    gateways_with_credentials(MqttVersion::V5).await;
}

/// Gateway mode with credentials, QoS 1 and presence, speaking `version`: 25 devices on 3
/// connections to a mosquitto that refuses anonymous clients; every device is heard on its
/// own topic, every QoS 1 reading is acknowledged, and each device is announced `online`
/// (retained) and says `offline` when the fleet stops. A wrong password is refused.
async fn gateways_with_credentials(version: MqttVersion) {
    const DEVICES: usize = 25;
    let scratch = TempDir::new(&format!("gateway-v{version}"));
    let dir = scratch.dir();
    let passwords = dir.join("passwords");
    for user in [
        "gateway-000001",
        "gateway-000002",
        "gateway-000003",
        "watcher",
    ] {
        add_password(&passwords, user, "s3cret");
    }
    let mosquitto = Mosquitto::start_with(
        dir,
        &format!(
            "allow_anonymous false\npassword_file {}",
            passwords.display()
        ),
    );
    let broker = broker_of(&mosquitto);
    let stop_subscriber = CancellationToken::new();
    let mut received = subscribe(
        &broker,
        "watcher",
        Some(("watcher", "s3cret")),
        &[SENSORS_FILTER, "status/#"],
        stop_subscriber.clone(),
    )
    .await;

    let config = FleetConfig {
        broker: broker.clone(),
        mqtt_version: version,
        devices: DEVICES,
        devices_per_connection: 10,
        interval: Duration::from_millis(250),
        duration: Some(Duration::from_millis(1500)),
        client_prefix: String::new(),
        metrics: vec![Metric::Co2, Metric::Battery],
        qos: Qos::AtLeastOnce,
        presence: true,
        password: Some("s3cret".into()),
        ..FleetConfig::default()
    };
    let summary = run(config, CancellationToken::new())
        .await
        .expect("a valid config");
    let messages = collect_until(&mut received, RECEIVE_DEADLINE, |m| {
        offline_devices(m).len() == DEVICES && devices_heard(m).len() == DEVICES
    })
    .await;
    stop_subscriber.cancel();

    assert_eq!(summary.connections, 3, "{summary}");
    assert_eq!(summary.connect_failures, 0, "{summary}");
    assert_eq!(devices_heard(&messages).len(), DEVICES);
    for (topic, payload, _) in &messages {
        if topic.starts_with("sensors/") {
            assert_reading(payload, &["co2", "battery"]);
        }
    }
    assert!(summary.readings_published > 0, "{summary}");
    assert_eq!(
        summary.readings_acked, summary.readings_published,
        "every QoS 1 reading acknowledged: {summary}"
    );
    let online: HashSet<_> = presence(&messages, "online").into_iter().collect();
    assert_eq!(online.len(), DEVICES, "announced online: {online:?}");
    assert_eq!(offline_devices(&messages).len(), DEVICES);

    // Wrong password: the broker refuses, the fleet counts it and publishes nothing.
    let refused = FleetConfig {
        broker,
        mqtt_version: version,
        devices: 1,
        interval: Duration::from_millis(100),
        duration: Some(Duration::from_millis(600)),
        client_prefix: String::new(),
        password: Some("wrong".into()),
        ..FleetConfig::default()
    };
    let summary = run(refused, CancellationToken::new())
        .await
        .expect("a valid config");
    assert_eq!(summary.readings_published, 0, "{summary}");
    assert!(summary.connect_failures > 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_trigger_their_last_will_and_come_back_online() {
    last_will_and_return(MqttVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_speaking_mqtt_5_trigger_their_last_will() {
    last_will_and_return(MqttVersion::V5).await;
}

/// Devices with connections of their own, speaking `version`, go offline by dropping the
/// socket: the broker (mosquitto) publishes their last will (`offline`, retained) while the
/// fleet still runs, and they announce `online` again when they come back.
async fn last_will_and_return(version: MqttVersion) {
    const DEVICES: usize = 4;
    let mosquitto = Mosquitto::start();
    let broker = broker_of(&mosquitto);
    let stop_subscriber = CancellationToken::new();
    let mut received = subscribe(
        &broker,
        "presence-watcher",
        None,
        &["status/#"],
        stop_subscriber.clone(),
    )
    .await;
    let config = FleetConfig {
        broker,
        mqtt_version: version,
        devices: DEVICES,
        interval: Duration::from_millis(100),
        client_prefix: "presence-test".into(),
        offline_rate: 0.2,
        offline_for: Duration::from_millis(300),
        presence: true,
        ..FleetConfig::default()
    };
    let stop_fleet = CancellationToken::new();
    let fleet = tokio::spawn(run(config, stop_fleet.clone()));
    // While the fleet runs, some device must go online → offline (its will) → online.
    let messages = collect_until(&mut received, Duration::from_secs(10), |m| {
        came_back(m).is_some()
    })
    .await;
    stop_fleet.cancel();
    let summary = fleet.await.expect("fleet task").expect("a valid config");
    stop_subscriber.cancel();
    assert!(
        came_back(&messages).is_some(),
        "no device went offline and came back: {:?}",
        presence_log(&messages)
    );
    assert!(summary.offline_spells > 0, "{summary}");
    assert!(summary.turns_skipped_offline > 0, "{summary}");
}

/// MQTT 5 against iotmon's own broker, which checks credentials: each device on a connection
/// of its own (so with a last will) publishes at QoS 1 on its MQTT 5 listener, and a
/// subscriber on its MQTT 3.1.1 listener hears every device, its `online` and its `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_5_fleet_publishes_through_the_embedded_broker() {
    const DEVICES: usize = 6;
    let ids: Vec<String> = layout(DEVICES).into_iter().map(|d| d.id).collect();
    let mut credentials: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "pw")).collect();
    credentials.push(("watcher", "pw"));
    let scratch = TempDir::new("embedded-v5");
    let broker = Embedded::start(scratch.dir(), &credentials);
    let stop_subscriber = CancellationToken::new();
    let mut received = subscribe(
        &broker.mqtt,
        "watcher",
        Some(("watcher", "pw")),
        &[SENSORS_FILTER, "status/#"],
        stop_subscriber.clone(),
    )
    .await;
    let config = FleetConfig {
        broker: broker.mqtt5.clone(),
        mqtt_version: MqttVersion::V5,
        devices: DEVICES,
        interval: Duration::from_millis(200),
        duration: Some(Duration::from_millis(1500)),
        client_prefix: String::new(),
        qos: Qos::AtLeastOnce,
        presence: true,
        password: Some("pw".into()),
        ..FleetConfig::default()
    };
    let summary = run(config, CancellationToken::new())
        .await
        .expect("a valid config");
    let messages = collect_until(&mut received, RECEIVE_DEADLINE, |m| {
        offline_devices(m).len() == DEVICES && devices_heard(m).len() == DEVICES
    })
    .await;
    stop_subscriber.cancel();

    assert_eq!(summary.connect_failures, 0, "{summary}");
    assert_eq!(devices_heard(&messages).len(), DEVICES, "{summary}");
    for (topic, payload, _) in &messages {
        if topic.starts_with("sensors/") {
            assert_reading(payload, &["temperature", "humidity", "pressure"]);
        }
    }
    assert!(summary.readings_published > 0, "{summary}");
    assert_eq!(
        summary.readings_acked, summary.readings_published,
        "every QoS 1 reading acknowledged: {summary}"
    );
    let online: HashSet<_> = presence(&messages, "online").into_iter().collect();
    assert_eq!(online.len(), DEVICES, "announced online: {online:?}");
    assert_eq!(offline_devices(&messages).len(), DEVICES);
}

/// A fleet described in a fleet file: groups listed by hand (by count and by id), MQTT 5,
/// gateways logging in with a password from a file named relative to the fleet file, QoS 1,
/// batches. Every listed device is heard on its group's topic through the embedded broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_file_describes_the_fleet_that_runs() {
    let scratch = TempDir::new("fleet-file");
    let dir = scratch.dir();
    let broker = Embedded::start(
        dir,
        &[
            ("gateway-000001", "pw"),
            ("gateway-000002", "pw"),
            ("watcher", "pw"),
        ],
    );
    std::fs::write(dir.join("device-password"), "pw\n").expect("password file");
    let fleet_file = dir.join("fleet.toml");
    std::fs::write(
        &fleet_file,
        format!(
            r#"
broker = "{broker}"
mqtt_version = 5
interval = "250ms"
duration = "1500ms"
metrics = ["temperature", "co2"]
qos = 1
readings_per_message = 3
devices_per_connection = 4
client_prefix = ""
password_file = "device-password"

[[groups]]
path = "hq/building-a/floor-3"
devices = 3

[[groups]]
path = "hq/lab"
ids = ["temp-0042", "co2-7"]
"#,
            broker = broker.mqtt5
        ),
    )
    .expect("write the fleet file");
    let config = FleetDescription::load(&fleet_file)
        .and_then(FleetDescription::resolve)
        .expect("a valid fleet file");
    assert_eq!((config.devices, config.connections()), (5, 2));

    let stop_subscriber = CancellationToken::new();
    let mut received = subscribe(
        &broker.mqtt,
        "watcher",
        Some(("watcher", "pw")),
        &[SENSORS_FILTER],
        stop_subscriber.clone(),
    )
    .await;
    let summary = run(config, CancellationToken::new())
        .await
        .expect("a valid config");
    let expected: HashSet<String> = [
        "hq/building-a/floor-3/sensor-000001",
        "hq/building-a/floor-3/sensor-000002",
        "hq/building-a/floor-3/sensor-000003",
        "hq/lab/temp-0042",
        "hq/lab/co2-7",
    ]
    .map(String::from)
    .into();
    let heard = |messages: &[Received]| -> HashSet<String> {
        messages
            .iter()
            .filter_map(|(topic, _, _)| topic.strip_prefix("sensors/").map(String::from))
            .collect()
    };
    let messages = collect_until(&mut received, RECEIVE_DEADLINE, |m| heard(m) == expected).await;
    stop_subscriber.cancel();

    assert_eq!(heard(&messages), expected, "{summary}");
    for (_, payload, _) in &messages {
        let batch: Vec<serde_json::Value> = serde_json::from_slice(payload).expect("a batch");
        assert_eq!(batch.len(), 3);
        assert_reading(
            &serde_json::to_vec(&batch[0]).expect("JSON"),
            &["temperature", "co2"],
        );
    }
    assert_eq!(summary.connect_failures, 0, "{summary}");
    assert_eq!(
        summary.readings_acked, summary.readings_published,
        "{summary}"
    );
}

/// Devices whose presence went online, offline, online in that order.
fn came_back(messages: &[Received]) -> Option<String> {
    let mut states: HashMap<String, Vec<String>> = HashMap::new();
    for (topic, payload) in presence_log(messages) {
        states.entry(topic).or_default().push(payload);
    }
    states.into_iter().find_map(|(topic, log)| {
        let joined = log.join(",");
        joined.contains("online,offline,online").then_some(topic)
    })
}

fn presence_log(messages: &[Received]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|(topic, _, _)| topic.starts_with("status/"))
        .map(|(topic, payload, _)| (topic.clone(), String::from_utf8_lossy(payload).into_owned()))
        .collect()
}

/// Devices that said `state` (the last level of their status topic).
fn presence(messages: &[Received], state: &str) -> Vec<String> {
    presence_log(messages)
        .into_iter()
        .filter(|(_, payload)| payload == state)
        .filter_map(|(topic, _)| topic.rsplit('/').next().map(str::to_string))
        .collect()
}

fn offline_devices(messages: &[Received]) -> HashSet<String> {
    presence(messages, "offline").into_iter().collect()
}

/// The payload is a JSON object with a timestamp and exactly `metrics` as numbers.
fn assert_reading(payload: &[u8], metrics: &[&str]) {
    let json: serde_json::Value = serde_json::from_slice(payload).expect("JSON payload");
    assert!(json["ts"].as_i64().is_some_and(|ts| ts > 0), "{json}");
    let object = json.as_object().expect("an object");
    assert_eq!(object.len(), metrics.len() + 1, "{json}");
    for metric in metrics {
        assert!(
            json[*metric].as_f64().is_some(),
            "{metric} missing in {json}"
        );
    }
}

/// Adds `user` to a mosquitto password file with Debian's `mosquitto_passwd`.
fn add_password(file: &std::path::Path, user: &str, password: &str) {
    let mut command = std::process::Command::new("mosquitto_passwd");
    if !file.exists() {
        command.arg("-c");
    }
    let status = command
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .expect("mosquitto_passwd runs (apt-get install mosquitto)");
    assert!(status.success(), "mosquitto_passwd {user}");
}

/// TLS: a mosquitto listener with a self-signed certificate made here by the `openssl`
/// CLI; the fleet trusts that certificate and its readings arrive. Without the CA, it
/// cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_over_tls_to_a_broker_they_trust() {
    const DEVICES: usize = 5;
    let scratch = TempDir::new("tls");
    let dir = scratch.dir();
    let (cert, key) = support::certificate::self_signed(dir);
    let mosquitto = Mosquitto::start_with(
        dir,
        &format!(
            "allow_anonymous true\ncertfile {}\nkeyfile {}",
            cert.display(),
            key.display()
        ),
    );
    let broker = broker_of(&mosquitto);
    let ca = std::fs::read(&cert).expect("read the certificate");

    let mut watcher_options = broker.options("tls-watcher", 64 * 1024);
    watcher_options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth: None,
        },
    ));
    let stop_subscriber = CancellationToken::new();
    let mut received = support::subscriber::subscribe_with(
        watcher_options,
        &[SENSORS_FILTER],
        stop_subscriber.clone(),
    )
    .await;
    let config = FleetConfig {
        broker: broker.clone(),
        devices: DEVICES,
        interval: Duration::from_millis(200),
        duration: Some(Duration::from_millis(1200)),
        client_prefix: "tls-test".into(),
        tls_ca: Some(ca),
        ..FleetConfig::default()
    };
    let summary = run(config, CancellationToken::new())
        .await
        .expect("a valid config");
    let messages = collect_until(&mut received, RECEIVE_DEADLINE, |m| {
        devices_heard(m).len() == DEVICES
    })
    .await;
    stop_subscriber.cancel();
    assert_eq!(devices_heard(&messages).len(), DEVICES, "{summary}");
    assert_eq!(summary.connect_failures, 0, "{summary}");

    // Plain TCP to the TLS listener: never accepted, nothing published.
    let plain = FleetConfig {
        broker,
        devices: 1,
        interval: Duration::from_millis(100),
        duration: Some(Duration::from_millis(600)),
        client_prefix: "tls-plain".into(),
        ..FleetConfig::default()
    };
    let summary = run(plain, CancellationToken::new())
        .await
        .expect("a valid config");
    assert_eq!(summary.readings_published, 0, "{summary}");
}
