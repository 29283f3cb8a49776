//! Scale-out end to end, on Debian's mosquitto as the external broker: two bridges, each
//! owning one partition of the fleet (`--partition 0/2`, `1/2`), two dashboards, a simulated
//! fleet and a hand-made one whose building has a floor on each bridge. Each dashboard's
//! viewer sees every device of its view and the aggregates merged over both partitions;
//! group rules fire once, on merged values; operators' commands (REST and WebSocket) reach
//! the bridge owning the alert, and a dashboard that starts late gets every open alert; a
//! bridge killed with SIGKILL and started again with the same partition loses and doubles
//! nothing (rollups, alerts); a bridge killed and not replaced has its shares aged out.

use crate::support;

use crate::support::mosquitto;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use iotmon_bridge::store::HistoryReader;
use iotmon_bridge::BridgeConfig;
use iotmon_wire::history::HistoryQuery;
use iotmon_wire::partition::partition_of;
use serde_json::{json, Value};
use support::{
    eventually, http_get, http_post, metric_value, Iotmon, Publisher, TempDir, Viewer, DEADLINE,
};

/// A device rule every bridge evaluates on its own devices, and a group rule on a building
/// whose floors live on different bridges: only the merged mean (45) is above 40; one
/// partition alone (60) would be too, the other (30) not.
const CONFIG: &str = r#"
[[alerts.rules]]
name = "hot"
metric = "temperature"
above = 70.0
severity = "major"

[[alerts.rules]]
name = "building-loaded"
scope = "group"
groups = ["hq/building-a"]
metric = "load"
above = 40.0
suppress_children = false
severity = "minor"
"#;

const BUILDING: &str = "hq/building-a";

/// One device of the hand-made fleet.
#[derive(Debug, Clone)]
struct Device {
    id: String,
    group: String,
    partition: u32,
    temperature: f64,
    load: f64,
}

/// Six devices in building A — its floor 1 all partition 0's, its floor 2 all partition
/// 1's — and four in building B, two of each partition.
fn fleet() -> Vec<Device> {
    let mut fleet = Vec::new();
    let mut wanted = [
        (0u32, 3usize, "hq/building-a/floor-1"),
        (1, 3, "hq/building-a/floor-2"),
    ]
    .to_vec();
    wanted.extend([(0, 2, "hq/building-b"), (1, 2, "hq/building-b")]);
    let mut candidates = (0..).map(|n| format!("dev-{n:03}"));
    for (partition, count, group) in wanted {
        let mut found = 0;
        while found < count {
            let id = candidates.next().expect("endless");
            if partition_of(&id, 2) != partition {
                continue;
            }
            let index = fleet.len() as f64;
            fleet.push(Device {
                id,
                group: group.to_string(),
                partition,
                temperature: 10.0 + 3.0 * index,
                load: if partition == 0 { 30.0 } else { 60.0 },
            });
            found += 1;
        }
    }
    fleet
}

async fn publish_round(publisher: &Publisher, fleet: &[Device]) {
    for device in fleet {
        let payload = json!({"temperature": device.temperature, "load": device.load});
        publisher
            .publish(
                &format!("sensors/{}/{}", device.group, device.id),
                payload.to_string(),
            )
            .await;
    }
}

/// The latest aggregate of `group` a viewer received (snapshot or update).
fn aggregate(viewer: &Viewer, group: &str) -> Option<Value> {
    viewer.messages.iter().rev().find_map(|message| {
        message["groups"]
            .as_array()?
            .iter()
            .find(|entry| entry["group"] == group)
            .cloned()
    })
}

/// Every alert message a viewer received, oldest first.
fn alerts(viewer: &Viewer) -> Vec<Value> {
    viewer
        .messages
        .iter()
        .filter(|message| message["type"] == "alert")
        .map(|message| message["alert"].clone())
        .collect()
}

/// Whether `viewer` shows `group`'s `metric` as merged over `members`: their count and the
/// mean, min and max of `value` over them.
fn shows_merged(
    viewer: &Viewer,
    group: &str,
    metric: &str,
    members: &[&Device],
    value: fn(&Device) -> f64,
) -> bool {
    let Some(aggregate) = aggregate(viewer, group) else {
        return false;
    };
    let shown = &aggregate["metrics"][metric];
    let values: Vec<f64> = members.iter().map(|device| value(device)).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    shown["count"].as_u64() == Some(members.len() as u64)
        && shown["mean"]
            .as_f64()
            .is_some_and(|m| (m - mean).abs() < 1e-9)
        && shown["min"].as_f64() == Some(min)
        && shown["max"].as_f64() == Some(max)
}

/// Readings of `device`'s `seq` metric in the rollups of the bridge keeping `data_dir`.
fn stored_readings(data_dir: &str, device: &str) -> u64 {
    let reader = HistoryReader::new(Path::new(data_dir), &BridgeConfig::default());
    let now = iotmon_wire::unix_millis();
    reader
        .query(&HistoryQuery {
            device: device.into(),
            metric: "seq".into(),
            from: now - 600_000,
            to: now + 60_000,
            max_points: 1000,
            now,
        })
        .map(|series| series.points.iter().map(|point| point.count).sum())
        .unwrap_or(0)
}

async fn bridge_metric(bridge: &Iotmon, name: &str) -> u64 {
    let (status, metrics) = http_get(bridge.http.expect("http"), "/metrics").await;
    assert_eq!(status, 200);
    metric_value(&metrics, name)
}

/// What every test here starts from: an external broker (Debian's mosquitto) and one
/// configuration file, `config`, that each role is given.
struct Split {
    url: String,
    mqtt: SocketAddr,
    config: String,
    _broker: mosquitto::Mosquitto,
    _dir: TempDir,
}

impl Split {
    fn start(tag: &str, config: &str) -> Split {
        let broker = mosquitto::Mosquitto::start();
        let dir = TempDir::new(tag);
        let path = format!("{}/iotmon.toml", dir.path());
        std::fs::write(&path, config).expect("config written");
        Split {
            url: format!("mqtt://127.0.0.1:{}", broker.port),
            mqtt: SocketAddr::from(([127, 0, 0, 1], broker.port)),
            config: path,
            _broker: broker,
            _dir: dir,
        }
    }

    fn bridge(&self, partition: &str, data_dir: &str) -> Iotmon {
        start_bridge(&self.url, partition, data_dir, &self.config)
    }

    fn dashboard(&self) -> Iotmon {
        start_dashboard(&self.url, &self.config)
    }
}

/// A bridge process owning `partition`, keeping its store in `data_dir`.
fn start_bridge(url: &str, partition: &str, data_dir: &str, config: &str) -> Iotmon {
    let args = [
        "bridge",
        "--broker",
        url,
        "--partition",
        partition,
        "--client-id",
        &format!("bridge-{}", partition.replace('/', "-of-")),
        "--data-dir",
        data_dir,
        "--config",
        config,
        "--http-listen",
        "127.0.0.1:0",
    ];
    Iotmon::start(&args, false, true)
}

fn start_dashboard(url: &str, config: &str) -> Iotmon {
    let args = [
        "dashboard",
        "--broker",
        url,
        "--config",
        config,
        "--partitions",
        "2",
        "--http-listen",
        "127.0.0.1:0",
    ];
    Iotmon::start(&args, false, true)
}

/// The readings of `device`'s `seq` in the last minutes, as a dashboard's `/api/history`
/// answers (asking the device's bridge over MQTT).
async fn history_readings(dashboard: &Iotmon, device: &str) -> u64 {
    let now = iotmon_wire::unix_millis();
    let path = format!(
        "/api/history?device={device}&metric=seq&from={}&to={}",
        now - 600_000,
        now + 60_000
    );
    let (status, body) = http_get(dashboard.http.expect("http"), &path).await;
    assert_eq!(status, 200, "{body}");
    let series: Value = serde_json::from_str(&body).expect("JSON");
    series["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|point| point["count"].as_u64().expect("count"))
        .sum()
}

/// Publishes the fleet's current values round after round until every viewer's condition
/// holds.
async fn publish_until(
    publisher: &Publisher,
    fleet: &[Device],
    viewers: &mut [&mut Viewer],
    what: &str,
    done: impl Fn(&Viewer) -> bool,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        publish_round(publisher, fleet).await;
        let mut all = true;
        for viewer in viewers.iter_mut() {
            all &= viewer.read_until(Duration::from_millis(300), &done).await;
        }
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}"
        );
    }
}

/// Makes a device of `partition` in building B hot and publishes until every viewer has its
/// alert; returns the device's id.
async fn heat_until_alert(
    publisher: &Publisher,
    fleet: &mut [Device],
    viewers: &mut [Viewer],
    partition: u32,
) -> String {
    let hot = fleet
        .iter()
        .position(|device| device.partition == partition && device.group == "hq/building-b")
        .expect("a device of the partition in building B");
    fleet[hot].temperature = 80.0;
    let hot_id = fleet[hot].id.clone();
    let mut refs: Vec<&mut Viewer> = viewers.iter_mut().collect();
    publish_until(
        publisher,
        fleet,
        &mut refs,
        &format!("partition {partition}'s device alert"),
        |viewer| {
            alerts(viewer)
                .iter()
                .any(|alert| alert["subject"] == hot_id.as_str())
        },
    )
    .await;
    hot_id
}

#[tokio::test(flavor = "multi_thread")]
async fn two_partitioned_bridges_and_two_dashboards_on_mosquitto() {
    let split = Split::start("scale-out", CONFIG);
    let mqtt = split.mqtt;
    let (data_0, data_1) = (TempDir::new("bridge-0"), TempDir::new("bridge-1"));
    let mut bridge_0 = split.bridge("0/2", data_0.path());
    let bridge_1 = split.bridge("1/2", data_1.path());
    let dashboards = [split.dashboard(), split.dashboard()];

    let mut fleet = fleet();
    let ids: Vec<&str> = fleet.iter().map(|device| device.id.as_str()).collect();
    let mut viewers = Vec::new();
    for dashboard in &dashboards {
        let mut viewer = Viewer::connect(&dashboard.ws_url()).await;
        viewer.view(&ids).await;
        viewer
            .send(json!({"type": "groups", "groups": ["hq", BUILDING]}))
            .await;
        viewers.push(viewer);
    }
    let publisher = Publisher::connect(mqtt, "scale-out-fleet").await;

    // A simulated fleet alongside, spread by the same hash over both bridges.
    let simulator = Iotmon::start(
        &[
            "simulate",
            "--broker",
            &split.url,
            "--devices",
            "40",
            "--interval",
            "1s",
            "--devices-per-floor",
            "10",
            "--floors-per-building",
            "2",
            "--buildings-per-site",
            "2",
            "--devices-per-connection",
            "20",
        ],
        false,
        false,
    );

    // Every device of the view reaches both dashboards' viewers, and the building's
    // aggregate is the one over its six devices, three on each bridge.
    let building: Vec<Device> = fleet
        .iter()
        .filter(|device| device.group.starts_with(BUILDING))
        .cloned()
        .collect();
    let hq: Vec<Device> = fleet.clone();
    {
        let building: Vec<&Device> = building.iter().collect();
        let hq: Vec<&Device> = hq.iter().collect();
        let mut refs: Vec<&mut Viewer> = viewers.iter_mut().collect();
        publish_until(
            &publisher,
            &fleet,
            &mut refs,
            "devices and merged aggregates",
            |viewer| {
                ids.iter().all(|id| viewer.devices.contains_key(*id))
                    && shows_merged(viewer, BUILDING, "temperature", &building, |d| {
                        d.temperature
                    })
                    && shows_merged(viewer, BUILDING, "load", &building, |d| d.load)
                    && shows_merged(viewer, "hq", "temperature", &hq, |d| d.temperature)
            },
        )
        .await;
    }
    for viewer in &viewers {
        let seen: Vec<&String> = viewer.seen.iter().collect();
        assert!(
            seen.iter().all(|id| ids.contains(&id.as_str())),
            "a viewer received a device outside its view: {seen:?}"
        );
        let devices = &aggregate(viewer, BUILDING).expect("building")["devices"];
        assert_eq!(devices["online"].as_u64(), Some(6), "{devices}");
    }

    // A share of another layout (a bridge left running with another N, or a forged message)
    // and an unreadable one are refused and counted by every dashboard and by partition 0:
    // viewers never see the forged share, and the building keeps its six devices.
    let forged = json!({
        "group": BUILDING, "partition": 1, "partitions": 3, "ts": 1, "lifetime_ms": 30000,
        "devices": {"online": 100, "offline": 0, "alerting": 0},
        "metrics": {"load": {"count": 100, "sum": 100000.0, "min": 1000.0, "max": 1000.0}}
    });
    let partial_topic = format!("iotmon/partial/1/{BUILDING}");
    publisher.publish(&partial_topic, forged.to_string()).await;
    publisher.publish(&partial_topic, "not json").await;
    for dashboard in &dashboards {
        eventually(DEADLINE, "the dashboard refuses both partials", || async {
            bridge_metric(dashboard, "iotmon_dashboard_partials_refused_total").await >= 2
        })
        .await;
    }
    eventually(DEADLINE, "partition 0 refuses both partials", || async {
        bridge_metric(&bridge_0, "iotmon_partition_peer_partials_rejected_total").await >= 2
    })
    .await;
    {
        let building: Vec<&Device> = building.iter().collect();
        let mut refs: Vec<&mut Viewer> = viewers.iter_mut().collect();
        publish_until(
            &publisher,
            &fleet,
            &mut refs,
            "the building after the forged share",
            |viewer| shows_merged(viewer, BUILDING, "load", &building, |d| d.load),
        )
        .await;
    }
    for viewer in &viewers {
        let forged_shown = viewer.messages.iter().any(|message| {
            message["groups"].as_array().is_some_and(|groups| {
                groups.iter().any(|entry| {
                    entry["group"] == BUILDING && entry["devices"]["online"].as_u64() >= Some(100)
                })
            })
        });
        assert!(!forged_shown, "a viewer was shown the forged share");
    }

    // The simulated fleet: each dashboard shows all of site-1, from both bridges.
    for dashboard in &dashboards {
        let mut viewer = Viewer::connect(&dashboard.ws_url()).await;
        viewer
            .send(json!({"type": "groups", "groups": ["site-1"]}))
            .await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let complete = |v: &Viewer| {
            v.devices.len() == 40
                && aggregate(v, "site-1")
                    .is_some_and(|a| a["metrics"]["temperature"]["count"] == 40)
        };
        loop {
            viewer
                .send(json!({"type": "view", "group": "site-1", "offset": 0, "limit": 100}))
                .await;
            if viewer.read_until(Duration::from_secs(1), complete).await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "simulated fleet incomplete: {} devices, site-1 {:?}",
                viewer.devices.len(),
                aggregate(&viewer, "site-1")
            );
        }
        let partitions: std::collections::BTreeSet<u32> = viewer
            .devices
            .keys()
            .map(|id| partition_of(id, 2))
            .collect();
        assert_eq!(
            partitions.len(),
            2,
            "the simulated fleet spans both bridges"
        );
    }
    drop(simulator);

    // The group rule fires once, on the merged mean, raised by partition 0 alone.
    let building_alert = |viewer: &Viewer| {
        alerts(viewer)
            .into_iter()
            .find(|alert| alert["subject"] == BUILDING)
    };
    {
        let mut refs: Vec<&mut Viewer> = viewers.iter_mut().collect();
        publish_until(
            &publisher,
            &fleet,
            &mut refs,
            "the building's alert",
            |viewer| building_alert(viewer).is_some(),
        )
        .await;
    }
    let group_alert = building_alert(&viewers[0]).expect("raised");
    let group_alert_id = group_alert["id"].as_u64().expect("id");
    assert_eq!(group_alert["rule"], "building-loaded");
    assert_eq!(group_alert_id % 2, 0, "partition 0's ids are even");
    assert_eq!(
        bridge_metric(&bridge_0, "iotmon_alerts_raised_total").await,
        1
    );
    assert_eq!(
        bridge_metric(&bridge_1, "iotmon_alerts_raised_total").await,
        0
    );

    // A device alert on partition 0's device, raised by its owner.
    let hot_id = heat_until_alert(&publisher, &mut fleet, &mut viewers, 0).await;
    assert_eq!(
        bridge_metric(&bridge_0, "iotmon_alerts_raised_total").await,
        2
    );
    assert_eq!(
        bridge_metric(&bridge_1, "iotmon_alerts_raised_total").await,
        0
    );
    // A device alert of partition 1 (an odd id), and operators' commands on alerts of both
    // bridges through either dashboard, over REST and WebSocket: REST answers 202, the command
    // reaches the owning bridge over `iotmon/commands/alerts`, and the change comes back to
    // every dashboard's viewers.
    let hot_1_id = heat_until_alert(&publisher, &mut fleet, &mut viewers, 1).await;
    let odd_id = alerts(&viewers[0])
        .iter()
        .find(|alert| alert["subject"] == hot_1_id.as_str())
        .and_then(|alert| alert["id"].as_u64())
        .expect("an id");
    assert_eq!(odd_id % 2, 1, "partition 1's ids are odd");
    assert_eq!(
        bridge_metric(&bridge_1, "iotmon_alerts_raised_total").await,
        1
    );
    let latest = |viewer: &Viewer, id: u64| {
        alerts(viewer)
            .into_iter()
            .rev()
            .find(|alert| alert["id"].as_u64() == Some(id))
    };
    let (status, body) = http_post(
        dashboards[1].http.expect("http"),
        &format!("/api/alerts/{odd_id}/ack"),
        &json!({"by": "ana"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    for viewer in viewers.iter_mut() {
        let acknowledged = viewer
            .read_until(DEADLINE, |v| {
                latest(v, odd_id).is_some_and(|alert| {
                    alert["state"] == "active_acknowledged" && alert["acknowledged_by"] == "ana"
                })
            })
            .await;
        assert!(acknowledged, "{:?}", latest(viewer, odd_id));
    }
    viewers[0]
        .send(json!({"type": "shelve", "id": group_alert_id, "minutes": 30, "by": "bo"}))
        .await;
    for viewer in viewers.iter_mut() {
        let shelved = viewer
            .read_until(DEADLINE, |v| {
                latest(v, group_alert_id).is_some_and(|alert| alert["shelved_by"] == "bo")
            })
            .await;
        assert!(shelved, "{:?}", latest(viewer, group_alert_id));
    }
    let (status, body) = http_post(
        dashboards[1].http.expect("http"),
        &format!("/api/alerts/{group_alert_id}/unshelve"),
        &json!({"by": "bo"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    for viewer in viewers.iter_mut() {
        let unshelved = viewer
            .read_until(DEADLINE, |v| {
                latest(v, group_alert_id).is_some_and(|alert| alert["shelved_until"].is_null())
            })
            .await;
        assert!(unshelved, "{:?}", latest(viewer, group_alert_id));
    }
    // A dashboard that starts late gets every open alert, from both bridges.
    {
        let expected: std::collections::BTreeSet<u64> = alerts(&viewers[0])
            .iter()
            .filter_map(|alert| alert["id"].as_u64())
            .collect();
        assert_eq!(expected.len(), 3, "{expected:?}");
        let late = split.dashboard();
        let http = late.http.expect("http");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (status, body) = http_get(http, "/api/alerts").await;
            let listed: Value = serde_json::from_str(&body).unwrap_or_default();
            let open: std::collections::BTreeSet<u64> = listed["alerts"]
                .as_array()
                .map(|alerts| alerts.iter().filter_map(|a| a["id"].as_u64()).collect())
                .unwrap_or_default();
            if status == 200 && open == expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the late dashboard's open alerts: {open:?}, not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Each bridge skipped the other's devices before parsing them.
    assert!(bridge_metric(&bridge_1, "iotmon_partition_skipped_messages_total").await > 0);

    // Rollups: an exact number of readings per device, each in its owner's store only.
    const BEFORE: u64 = 5;
    const AFTER: u64 = 4;
    let publish_seq = |from: u64, to: u64| {
        let publisher = &publisher;
        let fleet = &fleet;
        async move {
            for seq in from..to {
                for device in fleet {
                    let topic = format!("sensors/{}/{}", device.group, device.id);
                    publisher
                        .publish(&topic, json!({ "seq": seq }).to_string())
                        .await;
                }
            }
        }
    };
    publish_seq(0, BEFORE).await;
    let store_of = |device: &Device| {
        if device.partition == 0 {
            data_0.path()
        } else {
            data_1.path()
        }
    };
    let other_store = |device: &Device| {
        if device.partition == 0 {
            data_1.path()
        } else {
            data_0.path()
        }
    };
    eventually(
        DEADLINE,
        "the first readings stored by their owners",
        || async {
            fleet
                .iter()
                .all(|device| stored_readings(store_of(device), &device.id) == BEFORE)
        },
    )
    .await;
    for device in &fleet {
        assert_eq!(
            stored_readings(other_store(device), &device.id),
            0,
            "{}",
            device.id
        );
    }

    // kill -9 partition 0's bridge (its devices, the group rule and both alerts) and start
    // a new one with the same partition and store.
    bridge_0.kill_hard();
    let bridge_0 = split.bridge("0/2", data_0.path());
    eventually(
        DEADLINE,
        "the new bridge reads its devices again",
        || async {
            publish_round(&publisher, &fleet).await;
            bridge_metric(&bridge_0, "iotmon_ingest_readings_total").await > 0
        },
    )
    .await;
    publish_seq(BEFORE, BEFORE + AFTER).await;
    eventually(
        DEADLINE,
        "the later readings stored by their owners",
        || async {
            fleet
                .iter()
                .all(|device| stored_readings(store_of(device), &device.id) == BEFORE + AFTER)
        },
    )
    .await;
    // The group rule runs again on merged values (partition 1 resent its partials), and
    // nothing was raised anew: both alerts were restored, still open.
    eventually(
        DEADLINE,
        "partition 1's partials reach the new bridge",
        || async { bridge_metric(&bridge_0, "iotmon_partition_peer_partials_total").await > 0 },
    )
    .await;
    for _ in 0..3 {
        publish_round(&publisher, &fleet).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        bridge_metric(&bridge_0, "iotmon_alerts_raised_total").await,
        0
    );
    assert_eq!(bridge_metric(&bridge_0, "iotmon_alerts_open").await, 2);
    // Two flush intervals later the rollups are still exact: nothing written twice.
    for device in &fleet {
        assert_eq!(
            stored_readings(store_of(device), &device.id),
            BEFORE + AFTER,
            "{}",
            device.id
        );
    }

    // Any dashboard answers history for devices of either bridge, by asking the owner; no
    // dashboard can read a bridge's SQLite file (they have no data directory in common).
    for dashboard in &dashboards {
        for partition in [0, 1] {
            let device = fleet
                .iter()
                .find(|device| device.partition == partition)
                .expect("a device");
            assert_eq!(
                history_readings(dashboard, &device.id).await,
                BEFORE + AFTER,
                "{}",
                device.id
            );
        }
    }

    // The building's load falls on both floors: the merged mean clears the same alert.
    for device in fleet.iter_mut().filter(|d| d.group.starts_with(BUILDING)) {
        device.load = 10.0;
    }
    let building: Vec<Device> = fleet
        .iter()
        .filter(|device| device.group.starts_with(BUILDING))
        .cloned()
        .collect();
    {
        let building: Vec<&Device> = building.iter().collect();
        let mut refs: Vec<&mut Viewer> = viewers.iter_mut().collect();
        publish_until(
            &publisher,
            &fleet,
            &mut refs,
            "the building's alert cleared",
            |viewer| {
                shows_merged(viewer, BUILDING, "load", &building, |d| d.load)
                    && alerts(viewer).iter().any(|alert| {
                        alert["subject"] == BUILDING && alert["state"] == "cleared_unacknowledged"
                    })
            },
        )
        .await;
    }
    for viewer in &viewers {
        let about_building: BTreeMap<u64, Vec<String>> = alerts(viewer)
            .iter()
            .filter(|alert| alert["subject"] == BUILDING)
            .fold(BTreeMap::new(), |mut ids, alert| {
                ids.entry(alert["id"].as_u64().expect("id"))
                    .or_default()
                    .push(alert["state"].as_str().unwrap_or_default().to_string());
                ids
            });
        assert_eq!(
            about_building.keys().copied().collect::<Vec<_>>(),
            [group_alert_id],
            "one alert about the building, before and after the restart: {about_building:?}"
        );
    }
    assert_eq!(
        bridge_metric(&bridge_0, "iotmon_alerts_raised_total").await,
        0
    );
    assert_eq!(
        bridge_metric(&bridge_1, "iotmon_alerts_raised_total").await,
        1
    );

    // The alert's history, from its bridge's store through a dashboard: raised once, shelved
    // and unshelved by an operator before the kill, and cleared once, after it.
    let http = dashboards[1].http.expect("http");
    let (status, body) = http_get(http, &format!("/api/alerts/{group_alert_id}")).await;
    assert_eq!(status, 200, "{body}");
    let detail: Value = serde_json::from_str(&body).expect("JSON");
    let events: Vec<&str> = detail["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter_map(|step| step["event"].as_str())
        .collect();
    assert_eq!(
        events,
        ["raised", "shelved", "unshelved", "cleared"],
        "{detail}"
    );
    // The alert history merges both bridges' stores: the building's and partition 0's
    // device's alerts from one, partition 1's device's from the other.
    let (status, body) = http_get(http, "/api/alerts?from=0").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    let subjects: std::collections::BTreeSet<&str> = listed["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|alert| alert["subject"].as_str())
        .collect();
    assert_eq!(
        subjects,
        [BUILDING, hot_id.as_str(), hot_1_id.as_str()]
            .into_iter()
            .collect(),
        "{listed}"
    );
}

/// `iotmon bench split`, tiny: both runs produce figures that add up (every reading through
/// one and two bridges, the second bridge skipping the first's devices), never how fast.
#[test]
fn a_tiny_split_bench_measures_one_and_two_bridges() {
    let report = crate::bench::bench(&[
        "split",
        "--devices",
        "40",
        "--interval",
        "500ms",
        "--warmup",
        "500ms",
        "--measure",
        "2s",
    ]);
    assert_eq!(report["scenario"], "split");
    let runs = report["report"]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{report}");
    for (run, bridges) in runs.iter().zip([1, 2]) {
        assert_eq!(run["bridges"], bridges);
        let published = run["published"].as_u64().expect("published");
        let ingested = run["ingested"].as_u64().expect("ingested");
        // The window's edges are not synchronized with the fleet: one interval's readings
        // (40) may be in flight at either edge.
        assert!(published > 0 && ingested.abs_diff(published) <= 40, "{run}");
        assert_eq!(
            run["bridge_cpu_seconds"].as_array().map(Vec::len),
            Some(bridges)
        );
        assert!(
            run["aggregate_messages_per_second"].as_f64() > Some(0.0),
            "{run}"
        );
    }
    // The one bridge skips nothing; each of the two skips the other's devices.
    assert_eq!(runs[0]["skipped"], 0);
    assert!(runs[1]["skipped"].as_u64() > Some(0), "{report}");
    assert!(report["report"]["merge"]["ns_per_merge"].as_f64() > Some(0.0));
}

/// A partition that cannot be is refused at start-up, naming the flag or the key at fault.
#[test]
fn an_impossible_partition_is_refused_before_anything_starts() {
    let dir = TempDir::new("bad-partition");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_iotmon"))
            .args(args)
            .output()
            .expect("iotmon runs");
        assert!(!output.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let flag = run(&[
        "bridge",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--data-dir",
        dir.path(),
        "--partition",
        "3/2",
    ]);
    assert!(
        flag.contains("--partition") && flag.contains("K must be below N"),
        "{flag}"
    );
    let config = format!("{}/iotmon.toml", dir.path());
    std::fs::write(&config, "[bridge]\npartition = \"0/0\"\n").expect("config written");
    let key = run(&[
        "bridge",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--data-dir",
        dir.path(),
        "--config",
        &config,
    ]);
    assert!(
        key.contains("partition") && key.contains("N must be between 1 and 1024"),
        "{key}"
    );
}

/// A dashboard whose bridges are down answers history with a clear error once the question
/// times out (503, naming the silent partition), never a hang and never a store failure: a
/// series, one alert, and the alert list it asks of every partition.
#[tokio::test(flavor = "multi_thread")]
async fn history_from_bridges_that_are_down_fails_clearly() {
    let split = Split::start("scale-out-silent", "");
    let dashboard = split.dashboard();
    let http = dashboard.http.expect("http");
    let device = (0..)
        .map(|n| format!("dev-{n:03}"))
        .find(|id| partition_of(id, 2) == 1)
        .expect("a device of partition 1");
    for (path, silent) in [
        (
            format!("/api/history?device={device}&metric=t"),
            "partition 1",
        ),
        ("/api/alerts/4".to_string(), "partition 0"),
        ("/api/alerts?from=0".to_string(), "partition"),
    ] {
        let (status, body) = http_get(http, &path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(
            body.contains(silent) && body.contains("did not answer"),
            "{path}: {body}"
        );
    }
}

/// With InfluxDB as the shared store, two partitioned bridges write their own devices'
/// closed rollup windows to the same bucket (Debian's victoria-metrics): every device of
/// both partitions is there, each reading counted once, none written by both bridges.
#[tokio::test(flavor = "multi_thread")]
async fn two_partitions_share_one_influx_bucket_without_overlap() {
    use crate::influx_victoria::{free_addr, get, Victoria};
    let victoria_dir = TempDir::new("scale-out-victoria");
    let victoria = Victoria::start(Path::new(victoria_dir.path()), free_addr()).await;
    let influx = format!(
        "[bridge.influx]\nenabled = true\nurl = \"http://{}\"\norg = \"iotmon\"\nbucket = \"b\"\n",
        victoria.addr
    );
    let split = Split::start("scale-out-influx", &influx);
    let (data_0, data_1) = (TempDir::new("influx-0"), TempDir::new("influx-1"));
    let bridge_0 = split.bridge("0/2", data_0.path());
    let bridge_1 = split.bridge("1/2", data_1.path());
    let publisher = Publisher::connect(split.mqtt, "influx-fleet").await;
    let devices: Vec<String> = (0..8).map(|n| format!("dev-{n:03}")).collect();
    let partitions: std::collections::BTreeSet<u32> =
        devices.iter().map(|id| partition_of(id, 2)).collect();
    assert_eq!(partitions.len(), 2, "the devices span both partitions");
    // Both bridges read every device once before the counted readings go out.
    eventually(DEADLINE, "both bridges subscribed", || async {
        for id in &devices {
            publisher
                .publish(&format!("sensors/hq/{id}"), r#"{"warmup":1}"#)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        bridge_metric(&bridge_0, "iotmon_ingest_readings_total").await > 0
            && bridge_metric(&bridge_1, "iotmon_ingest_readings_total").await > 0
    })
    .await;
    const READINGS: u64 = 3;
    for seq in 0..READINGS {
        for id in &devices {
            publisher
                .publish(
                    &format!("sensors/hq/{id}"),
                    json!({ "seq": seq }).to_string(),
                )
                .await;
        }
    }
    // Each device's 10 s windows reach the bucket once closed (10 s, plus 5 s of grace).
    let stored = || async {
        let path = "/api/v1/export?match%5B%5D=rollup_10s_seq_count";
        let body = get(victoria.addr, path).await.unwrap_or_default();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for line in body.lines().filter(|line| line.starts_with('{')) {
            let series: Value = serde_json::from_str(line).expect("export JSON");
            let device = series["metric"]["device"].as_str().expect("device tag");
            let sum: f64 = series["values"]
                .as_array()
                .expect("values")
                .iter()
                .filter_map(Value::as_f64)
                .sum();
            *counts.entry(device.to_string()).or_default() += sum as u64;
        }
        counts
    };
    let expected: BTreeMap<String, u64> = devices.iter().map(|id| (id.clone(), READINGS)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = stored().await;
        assert!(
            counts.values().all(|count| *count <= READINGS),
            "a reading stored twice: {counts:?}"
        );
        if counts == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bucket holds {counts:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A partition whose bridge is killed and not replaced: once its shares outlive their
/// lifetime (three refreshes missed), the dashboard and partition 0 count its devices
/// offline and drop its values instead of showing its last ones as current, and a viewer
/// sees each of its devices offline; while it ran, its quiet groups' shares were refreshed
/// and never aged out; its new bridge brings them back, and its devices online.
#[tokio::test(flavor = "multi_thread")]
async fn the_shares_of_a_bridge_gone_for_good_age_out_and_come_back_with_it() {
    let split = Split::start(
        "scale-out-gone",
        "[bridge]\naggregate_interval = \"500ms\"\npartial_refresh = \"1s\"\n",
    );
    let mqtt = split.mqtt;
    // Shares live 3 x (1 s + 0.5 s) = 4.5 s.
    let lifetime = Duration::from_millis(4_500);
    let (data_0, data_1) = (TempDir::new("gone-0"), TempDir::new("gone-1"));
    let bridge_0 = split.bridge("0/2", data_0.path());
    let mut bridge_1 = split.bridge("1/2", data_1.path());
    let dashboard = split.dashboard();
    let fleet = fleet();
    let ids: Vec<&str> = fleet.iter().map(|device| device.id.as_str()).collect();
    let mut viewer = Viewer::connect(&dashboard.ws_url()).await;
    viewer.view(&ids).await;
    viewer
        .send(json!({"type": "groups", "groups": [BUILDING]}))
        .await;
    let publisher = Publisher::connect(mqtt, "scale-out-gone-fleet").await;
    let building: Vec<&Device> = fleet
        .iter()
        .filter(|device| device.group.starts_with(BUILDING))
        .collect();
    let building_of_0: Vec<&Device> = building
        .iter()
        .copied()
        .filter(|device| device.partition == 0)
        .collect();
    let devices_shown = |viewer: &Viewer| {
        aggregate(viewer, BUILDING).map(|shown| {
            let devices = &shown["devices"];
            (devices["online"].as_u64(), devices["offline"].as_u64())
        })
    };
    // Whether the viewer shows every device of `partition` online (or every one offline).
    let partition_shown_online = |viewer: &Viewer, partition: u32, online: bool| {
        fleet
            .iter()
            .filter(|device| device.partition == partition)
            .all(|device| {
                viewer
                    .devices
                    .get(&device.id)
                    .is_some_and(|state| state["online"].as_bool() == Some(online))
            })
    };
    let whole = |viewer: &Viewer| {
        shows_merged(viewer, BUILDING, "load", &building, |d| d.load)
            && devices_shown(viewer) == Some((Some(6), Some(0)))
            && partition_shown_online(viewer, 0, true)
            && partition_shown_online(viewer, 1, true)
    };
    publish_until(&publisher, &fleet, &mut [&mut viewer], "both shares", whole).await;

    // Both bridges alive, the fleet quiet past a lifetime: refreshes keep every share.
    // Time passing is the point here, so this waits a fixed time.
    tokio::time::sleep(lifetime + Duration::from_secs(2)).await;
    assert_eq!(
        bridge_metric(&dashboard, "iotmon_dashboard_partials_expired_total").await,
        0
    );
    assert_eq!(
        bridge_metric(&bridge_0, "iotmon_partition_peer_partials_expired_total").await,
        0
    );

    bridge_1.kill_hard();
    publish_until(
        &publisher,
        &fleet,
        &mut [&mut viewer],
        "partition 1's devices offline, its values gone",
        |viewer| {
            shows_merged(viewer, BUILDING, "load", &building_of_0, |d| d.load)
                && devices_shown(viewer) == Some((Some(3), Some(3)))
                && partition_shown_online(viewer, 1, false)
                && partition_shown_online(viewer, 0, true)
        },
    )
    .await;
    // Each device of partition 1 marked once, none of partition 0's.
    let of_1 = fleet.iter().filter(|device| device.partition == 1).count();
    assert_eq!(
        bridge_metric(&dashboard, "iotmon_dashboard_devices_marked_offline_total").await,
        of_1 as u64
    );
    eventually(
        DEADLINE,
        "partition 0 ages out partition 1's shares",
        || async {
            bridge_metric(&bridge_0, "iotmon_partition_peer_partials_expired_total").await > 0
        },
    )
    .await;
    assert!(bridge_metric(&dashboard, "iotmon_dashboard_partials_expired_total").await > 0);

    // A new bridge for partition 1 reloads its store and sends its shares again.
    let _bridge_1 = split.bridge("1/2", data_1.path());
    publish_until(
        &publisher,
        &fleet,
        &mut [&mut viewer],
        "both shares again",
        whole,
    )
    .await;
}
