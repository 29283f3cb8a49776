//! Answers dashboards' history questions over MQTT, for a partitioned bridge: each bridge
//! keeps its own SQLite store, and no dashboard reads another process's file, so a dashboard
//! asks partition K's bridge on `iotmon/history/request/<K>` and gets the answer on its own
//! `iotmon/history/reply/<client id>`.
//!
//! It runs on an MQTT connection of its own, apart from the ingest session: a burst of chart
//! queries then never holds up readings, and ingest never delays a chart beyond its query.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use iotmon_wire::history::{
    answer, HistoryAnswer, HistoryAsk, HistoryReply, HistoryRequest, HistorySource,
    MAX_ALERTS_LISTED, MAX_SERIES_POINTS,
};
use iotmon_wire::mqtt::{drive_session, BrokerUrl, Login, Message, SessionPlan};
use iotmon_wire::partition::Partition;
use iotmon_wire::topics::history_request_topic;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::counters::BridgeCounters;

/// Queries run at once, each on a blocking thread. Further requests wait in the queue below.
pub const CONCURRENT_QUERIES: usize = 4;

/// Requests queued for a free query slot. When full, the MQTT session waits (this connection
/// only: ingest has its own) for a query to end, and the broker holds or drops the requests;
/// the asking dashboard times out and answers its viewer with an error.
pub const REQUEST_QUEUE: usize = 64;

/// Largest packet on the history connection both ways: a reply holds up to a few thousand
/// points or alerts, far beyond the 16 KiB device limit. The broker must accept it too
/// (mosquitto: unlimited by default; EMQX: 1 MB; iotmon's broker: `broker.max_packet_size`).
pub const HISTORY_MAX_PACKET: usize = 1024 * 1024;

/// What an MQTT 3.1.1 PUBLISH at QoS 1 adds to its topic and payload: the fixed header (1 byte
/// and up to 4 of remaining length), the topic's 2-byte length and the packet id.
const PUBLISH_OVERHEAD: usize = 9;

/// Requests taken and not yet answered (queried, or waiting to hand their reply to the MQTT
/// client). Beyond it, a request is refused at once and counted: when the broker takes
/// replies more slowly than dashboards ask (a slow link, a flood of questions), replies —
/// up to 1 MiB each — must not pile up in memory. Refusing rather than waiting also keeps
/// the session reading: its one event loop carries the replies out too.
pub const REPLIES_IN_FLIGHT: usize = 16;

/// Prefix every reply topic must have: a request cannot make the bridge publish anywhere else.
const REPLY_PREFIX: &str = "iotmon/history/reply/";

/// Serves `partition`'s history from `history` to dashboards through `broker`, as `login`,
/// until `shutdown`.
pub async fn run(
    broker: BrokerUrl,
    login: Login,
    partition: Partition,
    history: Arc<dyn HistorySource>,
    counters: Arc<BridgeCounters>,
    shutdown: CancellationToken,
) {
    let (client, eventloop) = AsyncClient::new(
        broker.options_for(&login, HISTORY_MAX_PACKET),
        REQUEST_QUEUE,
    );
    let (to_queue, mut requests) = mpsc::channel(REQUEST_QUEUE);
    let plan = SessionPlan {
        subscriptions: Vec::new(),
        reliable_subscriptions: vec![history_request_topic(partition.index)],
        announce: None,
    };
    let session = tokio::spawn(drive_session(
        eventloop,
        client.clone(),
        plan,
        Some(to_queue),
        shutdown.clone(),
    ));
    let slots = Arc::new(Semaphore::new(CONCURRENT_QUERIES));
    let in_flight = Arc::new(Semaphore::new(REPLIES_IN_FLIGHT));
    let queries = TaskTracker::new();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = requests.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let Some(request) = read_request(&message, &counters) else {
            continue;
        };
        let Ok(in_flight) = in_flight.clone().try_acquire_owned() else {
            debug!("history request refused: replies are backed up");
            counters
                .history_requests_rejected
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (client, history, counters) = (client.clone(), history.clone(), counters.clone());
        queries.spawn(async move {
            let HistoryRequest { id, reply_to, ask } = request;
            let answered =
                tokio::task::spawn_blocking(move || answer(history.as_ref(), &ask)).await;
            drop(slot);
            let answer = answered.unwrap_or_else(|_| HistoryAnswer::Failed("query failed".into()));
            if let HistoryAnswer::Failed(error) = &answer {
                warn!(%error, "history query failed");
            }
            counters.history_requests.fetch_add(1, Ordering::Relaxed);
            publish_reply(&client, reply_to, HistoryReply { id, answer }).await;
            drop(in_flight);
        });
    }
    queries.close();
    queries.wait().await;
    shutdown.cancel();
    let _ = session.await;
}

/// A request, checked; `None` (counted) for anything unreadable, asking for a reply
/// outside `iotmon/history/reply/`, or asking for more than a dashboard's API allows.
fn read_request(message: &Message, counters: &BridgeCounters) -> Option<HistoryRequest> {
    let request = match serde_json::from_slice::<HistoryRequest>(&message.payload) {
        Ok(request) => request,
        Err(error) => {
            debug!(%error, "unreadable history request ignored");
            counters
                .history_requests_rejected
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let reply_ok = request
        .reply_to
        .strip_prefix(REPLY_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['+', '#']));
    if !reply_ok {
        debug!(
            reply_to = request.reply_to,
            "history request with a bad reply topic ignored"
        );
        counters
            .history_requests_rejected
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if !within_limits(&request.ask) {
        debug!(ask = ?request.ask, "history request beyond the API's limits ignored");
        counters
            .history_requests_rejected
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(request)
}

/// Whether `ask` stays within what a dashboard's API lets a viewer ask for: more can only
/// come from a forged request.
fn within_limits(ask: &HistoryAsk) -> bool {
    match ask {
        HistoryAsk::Series(query) => query.max_points <= MAX_SERIES_POINTS,
        HistoryAsk::Alerts(query) => query.limit <= MAX_ALERTS_LISTED,
        HistoryAsk::Alert(_) => true,
    }
}

async fn publish_reply(client: &AsyncClient, topic: String, reply: HistoryReply) {
    let Some(payload) = reply_payload(&topic, &reply) else {
        return;
    };
    if let Err(error) = client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
    {
        warn!(%error, "history reply not published");
    }
}

/// The reply's JSON, or, when it would not fit in one packet on `topic`, a failure with the
/// same id: the MQTT client fails a write beyond its packet limit by dropping the connection
/// (and with it every other reply in flight), and the asker would wait for nothing.
fn reply_payload(topic: &str, reply: &HistoryReply) -> Option<Vec<u8>> {
    let payload = serde_json::to_vec(reply)
        .inspect_err(|error| warn!(%error, "history reply not serializable"))
        .ok()?;
    if payload.len() + topic.len() + PUBLISH_OVERHEAD <= HISTORY_MAX_PACKET {
        return Some(payload);
    }
    warn!(
        bytes = payload.len(),
        limit = HISTORY_MAX_PACKET,
        "history reply too large for one packet; answered as failed"
    );
    let failed = HistoryReply {
        id: reply.id,
        answer: HistoryAnswer::Failed("the answer is too large for one reply".into()),
    };
    serde_json::to_vec(&failed).ok()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(payload: &str) -> Message {
        Message {
            topic: history_request_topic(0),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    /// A reply too large for one packet on the history connection (an alert that flapped for
    /// weeks has thousands of transitions) would make the MQTT client fail the write and drop
    /// the connection, with every other reply in flight; it goes out as a failure instead.
    #[test]
    fn a_reply_too_large_for_a_packet_becomes_a_failure_that_fits() {
        let topic = "iotmon/history/reply/dash-1";
        let point = iotmon_wire::history::HistoryPoint {
            ts: 1_704_723_845_000,
            count: 3,
            mean: 21.123456789,
            min: 20.123456789,
            max: 22.123456789,
            last: 21.123456789,
        };
        let series = iotmon_wire::history::HistorySeries {
            device: "dev-1".into(),
            metric: "t".into(),
            tier_ms: 0,
            bucket_ms: 0,
            points: vec![point; 20_000],
        };
        let reply = HistoryReply {
            id: 9,
            answer: HistoryAnswer::Series(series),
        };
        let payload = reply_payload(topic, &reply).expect("a payload");
        assert!(
            payload.len() + topic.len() + PUBLISH_OVERHEAD <= HISTORY_MAX_PACKET,
            "{} bytes",
            payload.len()
        );
        let sent: HistoryReply = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(sent.id, 9);
        assert!(matches!(sent.answer, HistoryAnswer::Failed(_)), "{sent:?}");
        // One that fits goes out as it is.
        let small = HistoryReply {
            id: 10,
            answer: HistoryAnswer::Alert(None),
        };
        let payload = reply_payload(topic, &small).expect("a payload");
        assert_eq!(
            serde_json::from_slice::<HistoryReply>(&payload).expect("JSON"),
            small
        );
    }

    /// Asks beyond what a dashboard's API allows (a forged request) are refused and counted:
    /// they would only cost the store and make replies too large.
    #[test]
    fn asks_beyond_the_dashboards_limits_are_refused() {
        let counters = BridgeCounters::default();
        let series = |points: usize| {
            format!(
                r#"{{"id":1,"reply_to":"iotmon/history/reply/d","ask":{{"series":{{"device":"d","metric":"t","from":0,"to":10,"max_points":{points},"now":10}}}}}}"#
            )
        };
        let alerts = |limit: usize| {
            format!(
                r#"{{"id":1,"reply_to":"iotmon/history/reply/d","ask":{{"alerts":{{"state":null,"group":null,"from":0,"to":null,"limit":{limit}}}}}}}"#
            )
        };
        assert!(read_request(&message(&series(MAX_SERIES_POINTS)), &counters).is_some());
        assert!(read_request(&message(&alerts(MAX_ALERTS_LISTED)), &counters).is_some());
        assert!(read_request(&message(&series(MAX_SERIES_POINTS + 1)), &counters).is_none());
        assert!(read_request(&message(&alerts(1_000_000_000)), &counters).is_none());
        assert_eq!(
            counters.history_requests_rejected.load(Ordering::Relaxed),
            2
        );
    }

    /// A broker that takes the bridge's connection and sends it history requests but never
    /// acknowledges a reply (a stalled link, a slow broker): replies cannot go out, and they
    /// must not pile up in memory as requests keep coming. Past a bounded number, requests
    /// are refused and counted, and the server keeps reading.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_the_broker_does_not_take_never_pile_up() {
        use bytes::BytesMut;
        use rumqttc::{ConnAck, ConnectReturnCode, Publish};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const SENT: u64 = 600;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let broker = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("the bridge connects");
            let (mut from_bridge, mut to_bridge) = socket.into_split();
            let mut packet = vec![0; 64 * 1024];
            let _ = from_bridge.read(&mut packet).await;
            let mut out = BytesMut::new();
            ConnAck::new(ConnectReturnCode::Success, false)
                .write(&mut out)
                .expect("encode");
            for id in 0..SENT {
                let request = format!(
                    r#"{{"id":{id},"reply_to":"iotmon/history/reply/d","ask":{{"alert":{id}}}}}"#
                );
                Publish::new(history_request_topic(0), QoS::AtMostOnce, request)
                    .write(&mut out)
                    .expect("encode");
            }
            to_bridge.write_all(&out).await.expect("requests sent");
            // Read (and never acknowledge) whatever the bridge sends, until it goes.
            while from_bridge.read(&mut packet).await.is_ok_and(|n| n > 0) {}
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let history = Arc::new(crate::store::StoreHistory::new(
            dir.path(),
            &crate::BridgeConfig::default(),
        ));
        let counters = Arc::new(BridgeCounters::default());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(run(
            format!("mqtt://127.0.0.1:{port}").parse().expect("url"),
            Login::anonymous("bridge-history"),
            Partition::new(0, 2).expect("valid"),
            history,
            counters.clone(),
            shutdown.clone(),
        ));
        let handled = || {
            counters.history_requests.load(Ordering::Relaxed)
                + counters.history_requests_rejected.load(Ordering::Relaxed)
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while handled() < SENT {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {SENT} requests handled",
                handled()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let answered = counters.history_requests.load(Ordering::Relaxed);
        // What the MQTT client holds unacknowledged (its inflight window of 100) and queued
        // (its request channel), and the replies waiting to be handed to it.
        let bound = 100 + REQUEST_QUEUE + REPLIES_IN_FLIGHT + CONCURRENT_QUERIES;
        assert!(answered as usize <= bound, "{answered} replies held");
        shutdown.cancel();
        server.abort();
        broker.abort();
    }

    #[test]
    fn requests_are_checked_and_refusals_counted() {
        let counters = BridgeCounters::default();
        let good = r#"{"id":1,"reply_to":"iotmon/history/reply/dash-1","ask":{"alert":5}}"#;
        assert!(read_request(&message(good), &counters).is_some());
        for bad in [
            "not json",
            r#"{"id":1,"reply_to":"sensors/hq/dev-1","ask":{"alert":5}}"#,
            r#"{"id":1,"reply_to":"iotmon/history/reply/#","ask":{"alert":5}}"#,
            r#"{"id":1,"reply_to":"iotmon/history/reply/","ask":{"alert":5}}"#,
        ] {
            assert!(read_request(&message(bad), &counters).is_none(), "{bad}");
        }
        assert_eq!(
            counters.history_requests_rejected.load(Ordering::Relaxed),
            4
        );
    }
}
