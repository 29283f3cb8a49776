//! The alert webhook against a real HTTP server on a local socket: transitions arrive in
//! order, a failing receiver gets retries with backoff until it accepts, and a receiver that
//! is down never holds more than the outbox bound.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iotmon_bridge::alerts::webhook::{self, Notification, WebhookConfig};
use iotmon_bridge::BridgeCounters;
use iotmon_wire::alert::AlertTransition;
use iotmon_wire::{Alert, AlertState, Severity};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{eventually, DEADLINE};

/// A minimal HTTP/1.1 server: answers 500 to the first `failures` requests, then 204, and
/// records every body it receives.
async fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let mut reader = BufReader::new(socket);
            // One request per connection is enough; keep-alive requests are read in a loop.
            loop {
                let mut length = 0;
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                loop {
                    line.clear();
                    reader.read_line(&mut line).await.expect("header");
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().expect("a length");
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.expect("body");
                served += 1;
                let status = if served <= failures {
                    "500 Internal Server Error"
                } else {
                    seen.lock()
                        .expect("lock")
                        .push(String::from_utf8(body).expect("UTF-8"));
                    "204 No Content"
                };
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    });
    (url, bodies)
}

fn notification(id: u64, event: &str) -> Notification {
    let alert = Alert {
        id,
        rule: "hot".into(),
        subject: "d1".into(),
        group: "hq".into(),
        severity: Severity::Major,
        state: AlertState::ActiveUnacknowledged,
        message: "t 31 above 30".into(),
        value: Some(31.0),
        reading_ts: None,
        raised_at: 1,
        changed_at: 1,
        acknowledged_by: None,
        acknowledged_at: None,
        shelved_until: None,
        shelved_by: None,
        suppressed_by: None,
        seq: id,
    };
    Notification {
        transition: AlertTransition {
            alert: id,
            ts: 1,
            event: event.into(),
            state: alert.state,
            value: alert.value,
            by: None,
        },
        alert,
    }
}

fn config(url: String, max_outbox: usize) -> WebhookConfig {
    WebhookConfig {
        url,
        retry_backoff: Duration::from_millis(20),
        max_outbox,
        ..WebhookConfig::default()
    }
}

#[tokio::test]
async fn transitions_arrive_in_order_after_the_receiver_recovers() {
    let (url, bodies) = receiver(3).await;
    let counters = Arc::new(BridgeCounters::default());
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let sink = webhook::start(
        &config(url, 100),
        counters.clone(),
        &tasks,
        shutdown.clone(),
    )
    .expect("client")
    .expect("enabled");
    for (id, event) in [(1, "raised"), (1, "acknowledged"), (2, "raised")] {
        sink.notify(notification(id, event));
    }
    eventually(DEADLINE, "all three posted", || {
        std::future::ready(bodies.lock().expect("lock").len() == 3)
    })
    .await;
    let received: Vec<(u64, String)> = bodies
        .lock()
        .expect("lock")
        .iter()
        .map(|body| {
            let posted: Notification = serde_json::from_str(body).expect("a notification");
            (posted.alert.id, posted.transition.event)
        })
        .collect();
    assert_eq!(
        received,
        [
            (1, "raised".into()),
            (1, "acknowledged".into()),
            (2, "raised".into())
        ]
    );
    assert_eq!(counters.webhook_failures.load(Ordering::Relaxed), 3);
    assert_eq!(counters.webhook_sent.load(Ordering::Relaxed), 3);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_costs_at_most_the_outbox_and_never_blocks_the_caller() {
    // A port nobody listens on: every post fails at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    let counters = Arc::new(BridgeCounters::default());
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let sink = webhook::start(&config(url, 5), counters.clone(), &tasks, shutdown.clone())
        .expect("client")
        .expect("enabled");
    let started = std::time::Instant::now();
    for id in 0..5_000 {
        sink.notify(notification(id, "raised"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "notify never waits"
    );
    // Whatever the queue and outbox could not hold is counted as dropped.
    eventually(DEADLINE, "the overflow is counted", || {
        std::future::ready(counters.webhook_dropped.load(Ordering::Relaxed) >= 5_000 - 1_024 - 5)
    })
    .await;
    assert_eq!(counters.webhook_sent.load(Ordering::Relaxed), 0);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
