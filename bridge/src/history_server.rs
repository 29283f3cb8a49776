//! Answers dashboards' history questions over MQTT, for a partitioned bridge: each bridge
//! keeps its own SQLite store, and no dashboard reads another process's file, so a dashboard
//! asks partition K's bridge on `iotmon/history/request/<K>` and gets the answer on its own
//! `iotmon/history/reply/<client id>`.
//!
//! It runs on an MQTT connection of its own, apart from the ingest session: a burst of chart
//! queries then never holds up readings, and ingest never delays a chart beyond its query.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use iotmon_wire::history::{answer, HistoryAnswer, HistoryReply, HistoryRequest, HistorySource};
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
/// only: ingest has its own), and the broker holds or drops the requests; the asking
/// dashboard times out and answers its viewer with an error.
pub const REQUEST_QUEUE: usize = 64;

/// Largest packet on the history connection both ways: a reply holds up to a few thousand
/// points or alerts, far beyond the 16 KiB device limit. The broker must accept it too
/// (mosquitto: unlimited by default; EMQX: 1 MB; iotmon's broker: `broker.max_packet_size`).
pub const HISTORY_MAX_PACKET: usize = 1024 * 1024;

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
        });
    }
    queries.close();
    queries.wait().await;
    shutdown.cancel();
    let _ = session.await;
}

/// A request, checked; `None` (counted) for anything unreadable or asking for a reply
/// outside `iotmon/history/reply/`.
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
    Some(request)
}

async fn publish_reply(client: &AsyncClient, topic: String, reply: HistoryReply) {
    let payload = match serde_json::to_vec(&reply) {
        Ok(payload) => payload,
        Err(error) => {
            warn!(%error, "history reply not serializable");
            return;
        }
    };
    if let Err(error) = client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
    {
        warn!(%error, "history reply not published");
    }
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
