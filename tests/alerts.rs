//! Alerts end to end, with the real binary: a device (rumqttc) breaches a rule, a WebSocket
//! viewer receives the alert at once, operators acknowledge it over REST and over the
//! WebSocket, and open alerts and pending delays survive a graceful restart and a `kill -9`.
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::mosquitto;
use crate::support::{
    eventually, http_get, http_post, metric_value, Iotmon, Publisher, TempDir, Viewer, DEADLINE,
};

const RULES: &str = r#"
[[alerts.rules]]
name = "hot"
groups = ["hq/**"]
metric = "t"
above = 30.0
clear = 28.0
severity = "critical"

[[alerts.rules]]
name = "pressure-high"
metric = "p"
above = 10.0
for = "3s"
severity = "minor"
"#;

/// The latest `alert` frame the viewer received about `subject` under rule `rule`.
fn latest_alert<'a>(viewer: &'a Viewer, rule: &str, subject: &str) -> Option<&'a Value> {
    viewer.messages.iter().rev().find_map(|message| {
        let alert = message.get("alert")?;
        (message["type"] == "alert" && alert["rule"] == rule && alert["subject"] == subject)
            .then_some(alert)
    })
}

/// Reads until the viewer's latest alert about (`rule`, `subject`) is in `state`.
async fn expect_alert_state(viewer: &mut Viewer, rule: &str, subject: &str, state: &str) -> Value {
    let arrived = viewer
        .read_until(DEADLINE, |v| {
            latest_alert(v, rule, subject).is_some_and(|alert| alert["state"] == state)
        })
        .await;
    assert!(
        arrived,
        "no {state} alert {rule} on {subject}: {:?}",
        viewer.messages
    );
    latest_alert(viewer, rule, subject)
        .cloned()
        .expect("just seen")
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Polls `/api/alerts{query}` until `until` holds for its alert list.
async fn alerts_until(
    addr: std::net::SocketAddr,
    query: &str,
    until: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    eventually(
        DEADLINE,
        &format!("/api/alerts{query} matching"),
        || async {
            let answer = get_json(addr, &format!("/api/alerts{query}")).await;
            let alerts = answer["alerts"].as_array().cloned().unwrap_or_default();
            if until(&alerts) {
                Ok(alerts)
            } else {
                Err(alerts)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_reaches_the_viewer_at_once_and_operators_acknowledge_it_by_rest_and_websocket() {
    let iotmon = Iotmon::serve_with_config(RULES);
    let http = iotmon.http.expect("http");
    let device = Publisher::connect(iotmon.mqtt.expect("mqtt"), "d1").await;
    let mut viewer = Viewer::connect(&iotmon.ws_url()).await;
    viewer
        .send(json!({"type": "groups", "groups": ["hq"]}))
        .await;
    assert!(viewer.read_until(DEADLINE, |v| v.got("snapshot")).await);

    device.publish("sensors/hq/a/d1", r#"{"t":35.5}"#).await;
    let raised = expect_alert_state(&mut viewer, "hot", "d1", "active_unacknowledged").await;
    assert_eq!(raised["severity"], "critical");
    assert_eq!(raised["group"], "hq/a");
    assert_eq!(raised["message"], "t 35.5 above 30");
    let id = raised["id"].as_u64().expect("an id");

    // Listed, and counted in the group's aggregate.
    let open = alerts_until(http, "", |alerts| alerts.len() == 1).await;
    assert_eq!(open[0]["id"], id);
    let groups = get_json(http, "/api/groups").await;
    let hq = &groups["groups"][0];
    assert_eq!(hq["group"], "hq");

    // Acknowledge by REST: the viewer sees it at once.
    let (status, body) = http_post(
        http,
        &format!("/api/alerts/{id}/ack"),
        &json!({"by": "ana"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let acked = expect_alert_state(&mut viewer, "hot", "d1", "active_acknowledged").await;
    assert_eq!(acked["acknowledged_by"], "ana");

    // Inside the deadband nothing changes; below the clear level the alert closes.
    device.publish("sensors/hq/a/d1", r#"{"t":29.0}"#).await;
    device.publish("sensors/hq/a/d1", r#"{"t":27.0}"#).await;
    let closed = expect_alert_state(&mut viewer, "hot", "d1", "closed").await;
    assert_eq!(closed["id"], id, "the same alert, never a second one");
    alerts_until(http, "", |alerts| alerts.is_empty()).await;

    // History from the store: the alert and every transition, with who and the value.
    let history = alerts_until(http, "?state=closed", |alerts| alerts.len() == 1).await;
    assert_eq!(history[0]["id"], id);
    let detail = get_json(http, &format!("/api/alerts/{id}")).await;
    let events: Vec<&str> = detail["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["event"].as_str().expect("event"))
        .collect();
    assert_eq!(events, ["raised", "acknowledged", "cleared"]);
    assert_eq!(detail["transitions"][1]["by"], "ana");

    // Acknowledge over the WebSocket.
    device.publish("sensors/hq/b/d2", r#"{"t":40}"#).await;
    let second = expect_alert_state(&mut viewer, "hot", "d2", "active_unacknowledged").await;
    viewer
        .send(json!({"type": "ack", "id": second["id"], "by": "bo"}))
        .await;
    let acked = expect_alert_state(&mut viewer, "hot", "d2", "active_acknowledged").await;
    assert_eq!(acked["acknowledged_by"], "bo");

    // Mistakes get a clear answer and the session goes on.
    viewer.send(json!({"type": "ack", "id": 999_999})).await;
    assert!(
        viewer
            .read_until(DEADLINE, |v| v.messages.iter().any(|m| m["type"]
                == "error"
                && m["message"]
                    .as_str()
                    .is_some_and(|t| t.contains("no open alert 999999"))))
            .await
    );
    let (status, _) = http_post(http, "/api/alerts/999999/ack", &json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = http_post(
        http,
        &format!("/api/alerts/{}/shelve", second["id"]),
        &json!({"minutes": 0}),
    )
    .await;
    assert_eq!(status, 400);

    // Shelve: hidden for a while, still tracked, and said so to viewers.
    let (status, body) = http_post(
        http,
        &format!("/api/alerts/{}/shelve", second["id"]),
        &json!({"minutes": 30, "by": "ana"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        viewer
            .read_until(DEADLINE, |v| latest_alert(v, "hot", "d2").is_some_and(
                |a| a["shelved_by"] == "ana" && a["shelved_until"].is_i64()
            ))
            .await
    );

    // The rules as configured.
    let rules = get_json(http, "/api/rules").await;
    assert_eq!(rules["rules"][0]["name"], "hot");
    assert_eq!(rules["rules"][1]["for_ms"], 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_alerts_and_pending_delays_survive_kill_9_and_acknowledgements_a_restart() {
    let data_dir = TempDir::new("alerts-restart");
    let config = format!("{}/iotmon.toml", data_dir.path());
    std::fs::write(&config, RULES).expect("config written");
    let mut iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config]);
    let http = iotmon.http.expect("http");
    let device = Publisher::connect(iotmon.mqtt.expect("mqtt"), "d1").await;
    // One device, in this order: the pressure condition starts its 3 s on-delay, then the
    // temperature alert fires. Both changes go to the store in that order, so once the
    // alert is in the store the pending delay is too.
    device.publish("sensors/hq/a/d1", r#"{"p":12}"#).await;
    device.publish("sensors/hq/a/d1", r#"{"t":35}"#).await;
    let stored = alerts_until(http, "?from=0", |alerts| alerts.len() == 1).await;
    drop(device);
    let hot_id = stored[0]["id"].clone();
    assert_eq!(stored[0]["rule"], "hot");

    // kill -9 before the on-delay ends: no reading arrives after the restart, yet the
    // pressure alert fires when its delay runs out, and the hot alert is the same one.
    iotmon.kill_hard();
    let mut iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config]);
    let http = iotmon.http.expect("http");
    let open = alerts_until(http, "", |alerts| alerts.len() == 2).await;
    let by_rule = |rule: &str| {
        open.iter()
            .find(|alert| alert["rule"] == rule)
            .unwrap_or_else(|| panic!("an open {rule} alert: {open:?}"))
            .clone()
    };
    assert_eq!(by_rule("hot")["id"], hot_id, "not lost, not duplicated");
    assert_eq!(by_rule("hot")["state"], "active_unacknowledged");
    assert_eq!(by_rule("pressure-high")["subject"], "d1");

    // An acknowledgement survives a graceful restart.
    let (status, body) = http_post(http, &format!("/api/alerts/{hot_id}/ack"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(iotmon.terminate(Duration::from_secs(10)).success());
    let iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config]);
    let http = iotmon.http.expect("http");
    let open = alerts_until(http, "", |alerts| alerts.len() == 2).await;
    let hot = open
        .iter()
        .find(|alert| alert["id"] == hot_id)
        .expect("still open");
    assert_eq!(hot["state"], "active_acknowledged");
    assert_eq!(hot["acknowledged_by"], "api");
}

/// serve reloads the open alerts from its alert store at start, and its dashboard answers
/// only once it holds them: the very first `/api/alerts` after a `kill -9` lists them all,
/// even while the bridge is busy restoring a registry of thousands of devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_answer_of_api_alerts_after_kill_9_lists_every_open_alert() {
    const DEVICES: usize = 5_000;
    const HOT: usize = 100;
    let data_dir = TempDir::new("alerts-first-answer");
    let config = format!("{}/iotmon.toml", data_dir.path());
    std::fs::write(&config, RULES).expect("config written");
    let mut iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config]);
    let http = iotmon.http.expect("http");
    let device = Publisher::connect(iotmon.mqtt.expect("mqtt"), "fleet").await;
    for i in 0..DEVICES {
        let t = if i < HOT { 35.0 } else { 20.0 };
        device
            .publish(&format!("sensors/hq/a/d-{i}"), format!(r#"{{"t":{t}}}"#))
            .await;
    }
    // Every device in the store's registry (written with its rollups, in one transaction),
    // every alert in the alert store: what a restart reloads.
    eventually(DEADLINE, "every device's rollup stored", || async {
        let (_, metrics) = http_get(http, "/metrics").await;
        let rows = metric_value(&metrics, "iotmon_store_rollup_rows_total");
        if rows >= DEVICES as u64 {
            Ok(())
        } else {
            Err(rows)
        }
    })
    .await;
    alerts_until(http, "?from=0&limit=1000", |alerts| alerts.len() == HOT).await;
    drop(device);
    iotmon.kill_hard();

    let iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config]);
    let http = iotmon.http.expect("http").to_string();
    // The first answer there is: any later one would hide an answer given too early.
    let first = eventually(DEADLINE, "an answer of /api/alerts", || async {
        match iotmon_probe::http::get(&http, "/api/alerts?limit=1000").await {
            Ok(response) if response.status == 200 => Ok(response.body),
            Ok(response) => Err(format!("{}: {}", response.status, response.body)),
            Err(error) => Err(error.to_string()),
        }
    })
    .await;
    let first: Value = serde_json::from_str(&first).expect("JSON");
    let mut subjects: Vec<&str> = first["alerts"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|alert| alert["subject"].as_str().expect("a subject"))
        .collect();
    subjects.sort_unstable();
    let mut expected: Vec<String> = (0..HOT).map(|i| format!("d-{i}")).collect();
    expected.sort_unstable();
    assert_eq!(subjects, expected, "the first answer after the restart");
}

#[test]
fn a_bad_rule_is_refused_at_start_up_with_the_line_at_fault() {
    let data_dir = TempDir::new("alerts-bad-rule");
    let config = format!("{}/iotmon.toml", data_dir.path());
    let text =
        format!("{RULES}\n[[alerts.rules]]\nname = \"broken\"\nmetric = \"t\"\nrate_above = 1.0\n");
    std::fs::write(&config, &text).expect("config written");
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[alerts.rules]]")
        .nth(2)
        .map(|(n, _)| n + 1)
        .expect("third rule");
    let output = Command::new(env!("CARGO_BIN_EXE_iotmon"))
        .args(["serve", "--config", &config, "--data-dir", data_dir.path()])
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("iotmon runs");
    assert!(!output.status.success(), "a bad rule stops start-up");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("line {line}")), "{stderr}");
    assert!(
        stderr.contains("\"broken\"") && stderr.contains("needs a `window`"),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing started: {:?}",
        output.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_mostly_offline_raises_one_group_alert_that_suppresses_its_devices_alerts() {
    let iotmon = Iotmon::serve_with_config(
        r#"
[[alerts.rules]]
name = "silent"
offline = true
severity = "major"

[[alerts.rules]]
name = "floor-offline"
scope = "group"
groups = ["hq/*/floor-3"]
offline_share_above = 0.5
severity = "critical"
"#,
    );
    let http = iotmon.http.expect("http");
    let mqtt = iotmon.mqtt.expect("mqtt");
    let device = Publisher::connect(mqtt, "gateway").await;
    for id in ["d1", "d2", "d3"] {
        device
            .publish(&format!("sensors/hq/a/floor-3/{id}"), r#"{"t":20}"#)
            .await;
    }
    let mut viewer = Viewer::connect(&iotmon.ws_url()).await;
    viewer
        .send(json!({"type": "groups", "groups": ["hq"]}))
        .await;
    // Two of three devices say they are gone (their last will, as a gateway relays it).
    for id in ["d1", "d2"] {
        device
            .publish(&format!("status/hq/a/floor-3/{id}"), "offline")
            .await;
    }
    let floor = expect_alert_state(
        &mut viewer,
        "floor-offline",
        "hq/a/floor-3",
        "active_unacknowledged",
    )
    .await;
    assert_eq!(floor["group"], "hq/a/floor-3");
    let floor_id = floor["id"].as_u64().expect("id");
    // The devices' own alerts are there, explained by the floor's.
    let suppressed = alerts_until(http, "?suppressed=true", |alerts| alerts.len() == 2).await;
    assert!(suppressed
        .iter()
        .all(|alert| alert["suppressed_by"] == floor_id && alert["rule"] == "silent"));
    let shown = alerts_until(http, "?suppressed=false", |alerts| alerts.len() == 1).await;
    assert_eq!(shown[0]["id"], floor_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_across_processes_on_mosquitto_alerts_reach_every_dashboard_and_acks_reach_the_bridge(
) {
    let mosquitto = mosquitto::Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let data = TempDir::new("alerts-split");
    let config = format!("{}/iotmon.toml", data.path());
    std::fs::write(&config, RULES).expect("config written");
    let bridge_dir = format!("{}/bridge", data.path());
    let _bridge = Iotmon::start(
        &[
            "bridge",
            "--broker",
            &url,
            "--config",
            &config,
            "--data-dir",
            &bridge_dir,
        ],
        false,
        false,
    );
    let dashboard_args = [
        "dashboard",
        "--broker",
        &url,
        "--config",
        &config,
        "--http-listen",
        "127.0.0.1:0",
    ];
    let dashboard = Iotmon::start(&dashboard_args, false, true);
    let mut viewer = Viewer::connect(&dashboard.ws_url()).await;
    viewer
        .send(json!({"type": "groups", "groups": ["hq"]}))
        .await;
    let device = Publisher::connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], mosquitto.port)),
        "d1",
    )
    .await;
    // The bridge may still be subscribing: repeat the breach (one alert however often).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while latest_alert(&viewer, "hot", "d1").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert through mosquitto"
        );
        device.publish("sensors/hq/a/d1", r#"{"t":33}"#).await;
        viewer
            .read_until(Duration::from_millis(300), |v| {
                latest_alert(v, "hot", "d1").is_some()
            })
            .await;
    }
    let id = latest_alert(&viewer, "hot", "d1").expect("seen")["id"].clone();

    // Acknowledged through the dashboard: handed to the bridge over the broker (202), and
    // the change comes back to the viewer.
    let http = dashboard.http.expect("http");
    let (status, body) = http_post(
        http,
        &format!("/api/alerts/{id}/ack"),
        &json!({"by": "ana"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let acked = expect_alert_state(&mut viewer, "hot", "d1", "active_acknowledged").await;
    assert_eq!(acked["id"], id);

    // A dashboard that starts late gets the open alert.
    let late = Iotmon::start(&dashboard_args, false, true);
    let open = alerts_until(late.http.expect("http"), "", |alerts| alerts.len() == 1).await;
    assert_eq!(open[0]["id"], id);
    assert_eq!(open[0]["state"], "active_acknowledged");
}

/// Publishes, for every device of `devices`, a temperature that is hot for even rounds of
/// its own phase and cold otherwise, round after round, until `stop`.
async fn churn(device: Publisher, devices: usize, stop: tokio_util::sync::CancellationToken) {
    let mut round = 0usize;
    while !stop.is_cancelled() {
        for i in 0..devices {
            let hot = (round + i) % 4 < 2;
            let t = if hot { 35.0 } else { 20.0 };
            device
                .publish(
                    &format!("sensors/hq/a/churn-{i}"),
                    format!(r#"{{"t":{t}}}"#),
                )
                .await;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_mid_load_no_alert_is_lost_duplicated_or_stuck() {
    const DEVICES: usize = 40;
    let data_dir = TempDir::new("alerts-kill-mid-load");
    let config = format!("{}/iotmon.toml", data_dir.path());
    std::fs::write(&config, RULES).expect("config written");
    let mut iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config]);
    let http = iotmon.http.expect("http");
    let stop = tokio_util::sync::CancellationToken::new();
    let device = Publisher::connect(iotmon.mqtt.expect("mqtt"), "churn").await;
    let load = tokio::spawn(churn(device, DEVICES, stop.clone()));
    // Alerts raise and clear all the time; kill in the middle of it.
    alerts_until(http, "?from=0&limit=1000", |alerts| alerts.len() >= DEVICES).await;
    iotmon.kill_hard();
    stop.cancel();
    let _ = load.await;

    // After the restart every device reports its final state: even ones hot, odd ones cold.
    let iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config]);
    let http = iotmon.http.expect("http");
    let device = Publisher::connect(iotmon.mqtt.expect("mqtt"), "final").await;
    for _ in 0..2 {
        for i in 0..DEVICES {
            let t = if i % 2 == 0 { 35.0 } else { 20.0 };
            device
                .publish(
                    &format!("sensors/hq/a/churn-{i}"),
                    format!(r#"{{"t":{t}}}"#),
                )
                .await;
        }
    }
    let active = |alert: &Value| {
        alert["state"] == "active_unacknowledged" || alert["state"] == "active_acknowledged"
    };
    let open = alerts_until(http, "?limit=1000", |alerts| {
        alerts.iter().filter(|a| active(a)).count() == DEVICES / 2
            && alerts.iter().filter(|a| active(a)).all(|a| {
                a["subject"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(['0', '2', '4', '6', '8']))
            })
    })
    .await;
    // Not lost: every hot device has its alert. Not stuck: no cold device's alert is active.
    // Not duplicated: one open alert per device.
    let mut subjects: Vec<&str> = open
        .iter()
        .map(|a| a["subject"].as_str().expect("subject"))
        .collect();
    let all = subjects.len();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(
        subjects.len(),
        all,
        "one open alert per device and rule: {open:?}"
    );
    drop(device);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_going_offline_raises_its_alert_and_suppresses_the_devices_behind_it() {
    let iotmon = Iotmon::serve_with_config(
        r#"
[[alerts.rules]]
name = "gateway-offline"
devices = ["gw-a"]
offline = true
suppresses = ["hq/a/**"]
severity = "critical"

[[alerts.rules]]
name = "silent"
groups = ["hq/a/**"]
offline = true
"#,
    );
    let http = iotmon.http.expect("http");
    let relay = Publisher::connect(iotmon.mqtt.expect("mqtt"), "relay").await;
    relay
        .publish("sensors/hq/gateways/gw-a", r#"{"uptime":1}"#)
        .await;
    for id in ["d1", "d2"] {
        relay
            .publish(&format!("sensors/hq/a/floor-1/{id}"), r#"{"t":20}"#)
            .await;
    }
    // The gateway's last will, then the devices behind it as it relays them.
    relay.publish("status/hq/gateways/gw-a", "offline").await;
    let gateway = alerts_until(http, "?suppressed=false", |alerts| {
        alerts.iter().any(|a| a["rule"] == "gateway-offline")
    })
    .await;
    let gateway_id = gateway
        .iter()
        .find(|a| a["rule"] == "gateway-offline")
        .expect("the gateway's alert")["id"]
        .clone();
    for id in ["d1", "d2"] {
        relay
            .publish(&format!("status/hq/a/floor-1/{id}"), "offline")
            .await;
    }
    let suppressed = alerts_until(http, "?suppressed=true", |alerts| alerts.len() == 2).await;
    assert!(suppressed
        .iter()
        .all(|alert| alert["suppressed_by"] == gateway_id && alert["rule"] == "silent"));
    let shown = alerts_until(http, "?suppressed=false", |alerts| alerts.len() == 1).await;
    assert_eq!(shown[0]["id"], gateway_id, "one alert on screen, not three");
}

#[test]
fn config_check_lists_the_rules_of_a_good_file_and_names_the_line_of_a_bad_one() {
    let dir = TempDir::new("alerts-config-check");
    let good = format!("{}/good.toml", dir.path());
    std::fs::write(&good, RULES).expect("written");
    let output = Command::new(env!("CARGO_BIN_EXE_iotmon"))
        .args(["config", "--check", &good])
        .output()
        .expect("iotmon runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(
        stdout.contains("rule \"hot\": device rule, critical"),
        "{stdout}"
    );
    assert!(stdout.contains("rule \"pressure-high\""), "{stdout}");

    let bad = format!("{}/bad.toml", dir.path());
    std::fs::write(&bad, "\n[[alerts.rules]]\nname = \"x\"\nmetric = \"t\"\n").expect("written");
    let output = Command::new(env!("CARGO_BIN_EXE_iotmon"))
        .args(["config", "--check", &bad])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("iotmon runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("needs a condition"),
        "{stderr}"
    );
}
