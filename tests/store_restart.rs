//! The embedded store survives `kill -9`: what was flushed before the kill is there after a
//! restart on the same data directory, the device registry is reloaded (so `/api/devices`
//! lists the fleet before any device reports again), and new readings merge into the same
//! rollup rows.
use std::path::Path;

use iotmon_bridge::store::HistoryReader;
use iotmon_bridge::BridgeConfig;
use iotmon_wire::history::HistoryQuery;
use serde_json::json;

use crate::support::{eventually, http_get, metric_value, Iotmon, Publisher, TempDir, DEADLINE};

const DEVICES: [(&str, &str); 2] = [("plant/line-1", "press-1"), ("plant/line-2", "press-2")];

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("fits")
}

/// Readings of `device`'s `pressure` stored in the last few minutes.
fn stored_readings(data_dir: &Path, device: &str) -> u64 {
    let reader = HistoryReader::new(data_dir, &BridgeConfig::default());
    let now = now_ms();
    reader
        .query(&HistoryQuery {
            device: device.into(),
            metric: "pressure".into(),
            from: now - 300_000,
            to: now + 60_000,
            max_points: 1000,
            now,
        })
        .map(|series| series.points.iter().map(|point| point.count).sum())
        .unwrap_or(0)
}

async fn publish(publisher: &Publisher, readings: u32) {
    for i in 0..readings {
        for (group, device) in DEVICES {
            let payload = json!({"pressure": 100 + i, "ok": true}).to_string();
            publisher
                .publish(&format!("sensors/{group}/{device}"), payload)
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_serve_restarts_with_its_registry_and_rollups() {
    let data_dir = TempDir::new("restart");
    let dir = Path::new(data_dir.path());
    let mut first = Iotmon::serve_in(data_dir.path(), &[]);
    let publisher = Publisher::connect(first.mqtt.expect("mqtt"), "restart-publisher").await;
    publish(&publisher, 20).await;
    eventually(DEADLINE, "the first readings to be stored", || {
        std::future::ready(
            DEVICES
                .iter()
                .all(|(_, device)| stored_readings(dir, device) == 20),
        )
    })
    .await;
    drop(publisher);
    first.kill_hard();

    let second = Iotmon::serve_in(data_dir.path(), &[]);
    let http = second.http.expect("http");
    // The registry is back before any device reports again.
    let body = eventually(DEADLINE, "devices restored", || async {
        let (status, body) = http_get(http, "/api/devices").await;
        if status == 200 && body.contains("press-1") && body.contains("press-2") {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    assert!(body.contains("plant/line-1"), "{body}");
    for (_, device) in DEVICES {
        assert_eq!(stored_readings(dir, device), 20, "nothing flushed was lost");
    }
    // New readings merge with the stored rows.
    let publisher = Publisher::connect(second.mqtt.expect("mqtt"), "restart-publisher-2").await;
    publish(&publisher, 5).await;
    eventually(DEADLINE, "the new readings to be stored", || {
        std::future::ready(
            DEVICES
                .iter()
                .all(|(_, device)| stored_readings(dir, device) == 25),
        )
    })
    .await;
    // The store reports what it wrote and how far it lags. Once the readings are written
    // nothing is waiting (at most a registry change caught between queue and transaction).
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(metric_value(&metrics, "iotmon_store_rollup_rows_total") > 0);
    assert!(
        metric_value(&metrics, "iotmon_store_queued_batches") <= 1,
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "iotmon_store_lag_milliseconds") < 10_000,
        "{metrics}"
    );
}
