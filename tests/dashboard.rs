//! The dashboard's defences and promises, end to end against `iotmon serve`: a viewer that
//! stops reading, floods, oversize messages, view-change rate, the viewer token, group views.
use std::time::Duration;

use serde_json::json;

use crate::support::{
    eventually, http_get, http_get_with, metric_value, InProcessServe, Publisher, Viewer, DEADLINE,
};

/// Publishes rounds of wide readings (40 metrics each) for `devices` devices until `done`
/// returns true, checking it between rounds.
async fn publish_rounds_until<F, Fut>(publisher: &Publisher, devices: usize, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut round = 0u32;
    while !done().await {
        round += 1;
        for device in 0..devices {
            let mut reading = serde_json::Map::new();
            for metric in 0..40 {
                reading.insert(format!("metric_{metric:02}"), json!(round));
            }
            let topic = format!("sensors/load/dev-{device:04}");
            publisher
                .publish(&topic, serde_json::Value::Object(reading).to_string())
                .await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
    }
}

async fn metrics(iotmon: &InProcessServe) -> String {
    http_get(iotmon.http, "/metrics").await.1
}

/// A viewer that stops reading gets no growing queue: its frames are held back, then one
/// fresh snapshot resynchronises it when it reads again; stalled past the limit, it is
/// disconnected.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_that_stops_reading_is_resynced_then_disconnected() {
    let iotmon = InProcessServe::start(
        "[bridge]\nlive_interval = \"20ms\"\n\
         [dashboard]\ntick = \"20ms\"\nviewer_queue = 2\nstall_limit = \"3s\"\n",
    )
    .await;
    let http = iotmon.http;
    let publisher = Publisher::connect(iotmon.mqtt, "load").await;
    let devices: Vec<String> = (0..300).map(|d| format!("dev-{d:04}")).collect();
    let ids: Vec<&str> = devices.iter().map(String::as_str).collect();

    let mut slow = Viewer::connect_with_small_buffer(&iotmon.ws_url(), http).await;
    slow.view(&ids).await;
    slow.read_until(DEADLINE, |v| v.got("snapshot")).await;

    // Phase 1: stop reading until the server has held frames back, then given up on the
    // viewer's pending changes: it is owed a snapshot.
    publish_rounds_until(&publisher, ids.len(), || async {
        let metrics = metrics(&iotmon).await;
        metric_value(&metrics, "iotmon_viewer_frames_deferred_total") > 0
            && metric_value(&metrics, "iotmon_viewer_resync_snapshots_total") > 0
    })
    .await;
    assert!(metric_value(&metrics(&iotmon).await, "iotmon_viewer_max_queued_frames") <= 2);

    // Read again: after the backlog comes a fresh snapshot, and updates follow it.
    let snapshots = |v: &Viewer| {
        v.messages
            .iter()
            .filter(|m| m["type"] == "snapshot")
            .count()
    };
    let resynced = |v: &Viewer| {
        let resync = v.messages.iter().rposition(|m| m["type"] == "snapshot");
        snapshots(v) >= 2 && resync.is_some_and(|at| at + 1 < v.messages.len())
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !slow.read_until(Duration::from_millis(200), resynced).await {
        publisher
            .publish("sensors/load/dev-0000", r#"{"metric_00":-1}"#)
            .await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "no resynchronising snapshot"
        );
    }
    let seqs: Vec<u64> = slow
        .messages
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|p| p[1] == p[0] + 1),
        "no gap in seq: {seqs:?}"
    );

    // Phase 2: stop reading for good; past the stall limit the server lets the viewer go.
    publish_rounds_until(&publisher, ids.len(), || async {
        metric_value(&metrics(&iotmon).await, "iotmon_viewers") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abusive_viewers_are_refused_with_a_reason() {
    let iotmon = InProcessServe::start("").await;

    // A flood of messages closes the connection with a policy-violation reason.
    let mut flooder = Viewer::connect(&iotmon.ws_url()).await;
    for _ in 0..200 {
        // The server may close mid-flood; the close frame is what this test reads next.
        if flooder.try_send(json!({"type": "ping"})).await.is_err() {
            break;
        }
    }
    let (code, reason) = flooder
        .read_until_closed(DEADLINE)
        .await
        .expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("messages per second"), "{reason}");

    // An oversize message closes it with "message too big".
    let mut big = Viewer::connect(&iotmon.ws_url()).await;
    let huge: Vec<String> = (0..20_000).map(|i| format!("device-{i}")).collect();
    big.send(json!({"type": "view", "devices": huge})).await;
    let (code, reason) = big
        .read_until_closed(DEADLINE)
        .await
        .expect("a close frame");
    assert_eq!(code, 1009, "{reason}");

    // Changing the view too fast is refused with an error, and the session goes on.
    let mut fidget = Viewer::connect(&iotmon.ws_url()).await;
    for i in 0..15 {
        fidget.view(&[&format!("dev-{i}")]).await;
    }
    fidget.send(json!({"type": "ping"})).await;
    fidget
        .read_until(DEADLINE, |v| v.got("error") && v.got("pong"))
        .await;
    let error = fidget
        .messages
        .iter()
        .find(|m| m["type"] == "error")
        .expect("an error");
    assert!(error["message"]
        .as_str()
        .is_some_and(|m| m.contains("too many view changes")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_view_of_the_most_devices_allowed_is_answered() {
    // 1,000 ids make a message of about 16 KB, four times the server's 4 KiB read
    // buffer per viewer: it must still arrive whole.
    let iotmon = InProcessServe::start("").await;
    let publisher = Publisher::connect(iotmon.mqtt, "big-view").await;
    publisher
        .publish("sensors/hq/device-000999", json!({"t": 1.5}).to_string())
        .await;
    let mut viewer = Viewer::connect(&iotmon.ws_url()).await;
    let ids: Vec<String> = (0..1000).map(|i| format!("device-{i:06}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let message = json!({"type": "view", "devices": ids}).to_string();
    assert!(message.len() > 15_000, "{} bytes", message.len());
    viewer.view(&ids).await;
    let seen = viewer
        .read_until(DEADLINE, |v| {
            v.messages.iter().any(|m| {
                m["devices"]
                    .as_array()
                    .is_some_and(|devices| devices.iter().any(|d| d["id"] == "device-000999"))
            })
        })
        .await;
    assert!(seen, "{:?}", viewer.messages);
    assert!(
        !viewer.messages.iter().any(|m| m["type"] == "error"),
        "{:?}",
        viewer.messages
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_viewer_token_guards_the_api_and_the_websocket() {
    let iotmon = InProcessServe::start("[dashboard]\ntoken = \"s3cret\"\n").await;
    let http = iotmon.http;
    let (status, body) = http_get(http, "/api/devices").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token"), "{body}");
    let (status, _) = http_get_with(http, "/api/devices", "Authorization: Bearer wrong\r\n").await;
    assert_eq!(status, 401);
    let (status, _) = http_get_with(http, "/api/devices", "Authorization: Bearer s3cret\r\n").await;
    assert_eq!(status, 200);
    let (status, _) = http_get(http, "/api/devices?token=s3cret&limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(
        http_get(http, "/").await.0,
        200,
        "the page itself loads and asks"
    );
    assert_eq!(http_get(http, "/healthz").await.0, 200);

    let refused = tokio_tungstenite::connect_async(iotmon.ws_url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let mut viewer = Viewer::connect(&format!("{}?token=s3cret", iotmon.ws_url())).await;
    viewer.send(json!({"type": "ping"})).await;
    viewer.read_until(DEADLINE, |v| v.got("pong")).await;
    assert!(viewer.got("pong"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_view_shows_a_page_of_the_group() {
    let iotmon = InProcessServe::start("").await;
    let publisher = Publisher::connect(iotmon.mqtt, "groups").await;
    let placed = [
        ("site/a/1", "g-01"),
        ("site/a/1", "g-02"),
        ("site/a/2", "g-03"),
        ("site/b", "g-04"),
        ("site-b", "g-05"),
    ];
    let http = iotmon.http;
    // Until all five are listed (a reading published before the bridge subscribed is gone).
    eventually(DEADLINE, "devices listed", || async {
        for (group, id) in placed {
            publisher
                .publish(&format!("sensors/{group}/{id}"), r#"{"t":1}"#)
                .await;
        }
        let (_, body) = http_get(http, "/api/devices").await;
        if body.contains("\"total\":5") {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
    let mut viewer = Viewer::connect(&iotmon.ws_url()).await;
    viewer
        .send(json!({"type": "view", "group": "site/a", "offset": 1, "limit": 5}))
        .await;
    viewer.read_until(DEADLINE, |v| v.got("snapshot")).await;
    let snapshot = &viewer.messages[0];
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["total"], 3, "{snapshot}");
    let ids: Vec<&str> = snapshot["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    let mut ids = ids;
    ids.sort_unstable();
    assert_eq!(ids, ["g-02", "g-03"]);
}

/// Group aggregates reach the viewers that subscribed to them, the group tree lists every
/// level, and the store's history keeps a spike's maximum.
#[tokio::test(flavor = "multi_thread")]
async fn aggregates_tree_and_history_reach_the_viewer() {
    let iotmon = InProcessServe::start("[bridge.rollups]\ngrace = \"1s\"\n").await;
    let http = iotmon.http;
    let publisher = Publisher::connect(iotmon.mqtt, "campus").await;
    let mut viewer = Viewer::connect(&iotmon.ws_url()).await;
    viewer
        .send(json!({"type": "groups", "groups": ["campus", "campus/a"]}))
        .await;

    let campus_mean = |v: &Viewer| {
        v.messages
            .iter()
            .flat_map(|m| m["groups"].as_array().into_iter().flatten())
            .filter(|g| g["group"] == "campus")
            .filter_map(|g| g["metrics"]["temperature"]["mean"].as_f64())
            .next_back()
    };
    let started = tokio::time::Instant::now();
    let mut round = 0u32;
    // Two devices at 20 and 30 °C, one spike of 100 °C early on.
    while campus_mean(&viewer) != Some(25.0) {
        round += 1;
        let spike = if round == 3 { 100 } else { 20 };
        publisher
            .publish(
                "sensors/campus/a/c-1",
                json!({"temperature": spike}).to_string(),
            )
            .await;
        publisher
            .publish(
                "sensors/campus/b/c-2",
                json!({"temperature": 30}).to_string(),
            )
            .await;
        viewer
            .read_until(Duration::from_millis(200), |_| false)
            .await;
        assert!(started.elapsed() < DEADLINE, "no campus aggregate of 25 °C");
    }
    let groups_seen: Vec<&str> = viewer
        .messages
        .iter()
        .flat_map(|m| m["groups"].as_array().into_iter().flatten())
        .filter_map(|g| g["group"].as_str())
        .collect();
    assert!(groups_seen
        .iter()
        .all(|g| *g == "campus" || *g == "campus/a"));
    assert!(groups_seen.contains(&"campus/a"));

    let (status, body) = http_get(http, "/api/groups").await;
    assert_eq!(status, 200, "{body}");
    let tree: serde_json::Value = serde_json::from_str(&body).expect("JSON tree");
    let campus = &tree["groups"][0];
    assert_eq!(campus["group"], "campus", "{tree}");
    let children: Vec<&str> = campus["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(children, ["a", "b"]);
    assert_eq!(campus["aggregate"]["devices"]["online"], 2, "{tree}");

    // History: keep the devices reporting until a closed 10 s window holds the spike.
    let path = "/api/history?device=c-1&metric=temperature&points=50";
    let points = eventually(
        Duration::from_secs(45),
        "the spike in the history",
        || async {
            let (status, body) = http_get(http, path).await;
            assert_eq!(status, 200, "{body}");
            let series: serde_json::Value = serde_json::from_str(&body).expect("JSON series");
            let points = series["points"].as_array().cloned().expect("points");
            if points.iter().any(|p| p["max"] == 100.0) {
                return Ok(points);
            }
            publisher
                .publish(
                    "sensors/campus/a/c-1",
                    json!({"temperature": 20}).to_string(),
                )
                .await;
            Err(series)
        },
    )
    .await;
    assert!(points.iter().all(|p| p["min"].as_f64() >= Some(20.0)));
    let (status, body) =
        http_get(http, "/api/history?device=c-1&metric=temperature&points=1").await;
    assert_eq!(status, 400, "{body}");
}

/// A stream that keeps a copy of every byte read through it, to see the frames on the wire.
struct Recorded {
    inner: tokio::net::TcpStream,
    read: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Recorded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Ok(mut read) = self.read.lock() {
            read.extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl tokio::io::AsyncWrite for Recorded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The (final?, opcode, payload length) of each unmasked frame in `wire`, which starts with
/// the server's handshake response.
fn server_frames(wire: &[u8]) -> Vec<(bool, u8, usize)> {
    let start = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the handshake response")
        + 4;
    let mut frames = Vec::new();
    let mut at = start;
    while at + 2 <= wire.len() {
        let (fin, opcode) = (wire[at] & 0x80 != 0, wire[at] & 0x0f);
        assert_eq!(wire[at + 1] & 0x80, 0, "a server frame is never masked");
        let (len, header) = match wire[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([wire[at + 2], wire[at + 3]])),
                4,
            ),
            127 => {
                let bytes: [u8; 8] = wire[at + 2..at + 10].try_into().expect("8 bytes");
                (
                    usize::try_from(u64::from_be_bytes(bytes)).expect("a length"),
                    10,
                )
            }
            short => (usize::from(short), 2),
        };
        frames.push((fin, opcode, len));
        at += header + len;
    }
    frames
}

/// A snapshot larger than one fragment goes out as a text frame and continuation frames, none
/// larger than the fragment size (so the server's write buffer per viewer stays that small),
/// and an ordinary WebSocket client reads it as one whole message.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_snapshot_goes_out_in_fragments_and_arrives_whole() {
    use futures_util::{SinkExt, StreamExt};
    use iotmon_dashboard::websocket::FRAGMENT_BYTES;
    use tokio_tungstenite::tungstenite::Message;

    let iotmon = InProcessServe::start("").await;
    let publisher = Publisher::connect(iotmon.mqtt, "wide").await;
    let devices: Vec<String> = (0..300).map(|d| format!("dev-{d:04}")).collect();
    let ids: Vec<&str> = devices.iter().map(String::as_str).collect();
    let mut watcher = Viewer::connect(&iotmon.ws_url()).await;
    watcher.view(&ids).await;
    // One round of wide readings (40 metrics each): a snapshot of ~300 KB.
    let mut rounds = 0;
    publish_rounds_until(&publisher, ids.len(), || {
        rounds += 1;
        async move { rounds > 1 }
    })
    .await;
    let everyone = watcher
        .read_until(DEADLINE, |v| v.devices.len() == ids.len())
        .await;
    assert!(everyone, "{} devices seen", watcher.devices.len());

    let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tcp = tokio::net::TcpStream::connect(iotmon.http)
        .await
        .expect("TCP connect");
    let stream = Recorded {
        inner: tcp,
        read: read.clone(),
    };
    let (mut socket, _) = tokio_tungstenite::client_async(iotmon.ws_url(), stream)
        .await
        .expect("WebSocket handshake");
    let view = serde_json::json!({"type": "view", "devices": ids}).to_string();
    socket.send(Message::text(view)).await.expect("view sent");
    let snapshot = tokio::time::timeout(DEADLINE, async {
        while let Some(message) = socket.next().await {
            if let Message::Text(text) = message.expect("a message") {
                let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if value["type"] == "snapshot" {
                    return (text.len(), value);
                }
            }
        }
        panic!("closed before the snapshot");
    })
    .await
    .expect("a snapshot in time");
    let (length, snapshot) = snapshot;
    assert_eq!(
        snapshot["devices"].as_array().map(Vec::len),
        Some(ids.len())
    );
    assert!(length > 2 * FRAGMENT_BYTES, "{length} bytes");

    let wire = read.lock().expect("the recording").clone();
    let frames = server_frames(&wire);
    let first = frames
        .iter()
        .position(|&(fin, opcode, _)| opcode == 1 && !fin)
        .unwrap_or_else(|| panic!("no fragmented text message in {frames:?}"));
    let fragments: Vec<_> = frames[first..]
        .iter()
        .take_while(|&&(_, opcode, _)| opcode == 1 || opcode == 0)
        .collect();
    let last = fragments
        .iter()
        .position(|&&(fin, _, _)| fin)
        .expect("a final fragment");
    let message: usize = fragments[..=last].iter().map(|&&(_, _, len)| len).sum();
    assert_eq!(message, length, "the fragments make up the snapshot");
    assert!(
        fragments[1..=last]
            .iter()
            .all(|&&(_, opcode, _)| opcode == 0),
        "continuations follow the first fragment: {fragments:?}"
    );
    assert!(
        frames.iter().all(|&(_, _, len)| len <= FRAGMENT_BYTES),
        "no frame larger than a fragment: {frames:?}"
    );
}
