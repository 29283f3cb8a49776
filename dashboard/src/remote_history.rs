//! History from partitioned bridges, asked over MQTT: each bridge keeps its own SQLite store,
//! so a dashboard asks the bridge owning the answer — a device's series from the partition its
//! id hashes to, an alert from the partition its id belongs to (partition K hands out ids K
//! modulo N), an alert list from every partition, merged — on `iotmon/history/request/<K>`,
//! and reads the answer on its own `iotmon/history/reply/<client id>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotmon_wire::alert::AlertTransition;
use iotmon_wire::history::{
    AlertQuery, HistoryAnswer, HistoryAsk, HistoryError, HistoryQuery, HistoryReply,
    HistoryRequest, HistorySeries, HistorySource,
};
use iotmon_wire::mqtt::{drive_session, BrokerUrl, Login, Message, SessionPlan};
use iotmon_wire::partition::partition_of;
use iotmon_wire::topics::{history_reply_topic, history_request_topic};
use iotmon_wire::{Alert, AlertId};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// How long a question may wait for its bridge's answer; then the request fails (the viewer
/// gets an error) rather than holding a blocking thread.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Questions awaiting an answer at once; more are refused at once ("busy").
pub const MAX_PENDING: usize = 256;

/// Largest packet on the history connection (replies carry whole series); see the bridge's
/// `history_server::HISTORY_MAX_PACKET`.
pub const HISTORY_MAX_PACKET: usize = 1024 * 1024;

/// Replies buffered between the MQTT session and the router; when full, the session waits.
const REPLY_QUEUE: usize = 64;

type Pending = Arc<Mutex<HashMap<u64, std_mpsc::SyncSender<HistoryAnswer>>>>;

/// A partition's bridge did not answer within [`ANSWER_TIMEOUT`]: it is down, or the broker
/// dropped the question. Not a store failure: the API answers 503 and names the partition.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition}'s bridge did not answer within {} s", ANSWER_TIMEOUT.as_secs())]
pub struct NoAnswer {
    pub partition: u32,
}

/// A question sent, awaiting its answer.
struct Asked {
    id: u64,
    partition: u32,
    answer: std_mpsc::Receiver<HistoryAnswer>,
}

/// A [`HistorySource`] that asks the bridges over MQTT.
#[derive(Debug)]
pub struct BrokerHistory {
    client: AsyncClient,
    reply_to: String,
    /// N: how many partitions the bridges split the fleet into.
    partitions: u32,
    /// Questions asked and not yet answered, by id; each waiter holds the receiving end.
    pending: Pending,
    next_id: AtomicU64,
}

impl BrokerHistory {
    /// Connects to `broker` as `login` (a client id of its own) and answers history from
    /// bridges split `partitions` ways, until `shutdown`; its tasks go in `tasks`.
    pub fn start(
        broker: &BrokerUrl,
        login: &Login,
        partitions: u32,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<BrokerHistory> {
        let (client, eventloop) =
            AsyncClient::new(broker.options_for(login, HISTORY_MAX_PACKET), MAX_PENDING);
        let reply_to = history_reply_topic(&login.client_id);
        let (to_router, replies) = mpsc::channel(REPLY_QUEUE);
        let plan = SessionPlan {
            subscriptions: Vec::new(),
            reliable_subscriptions: vec![reply_to.clone()],
            announce: None,
        };
        tasks.spawn(drive_session(
            eventloop,
            client.clone(),
            plan,
            Some(to_router),
            shutdown,
        ));
        let pending = Pending::default();
        tasks.spawn(route_replies(replies, pending.clone()));
        Arc::new(BrokerHistory {
            client,
            reply_to,
            partitions: partitions.max(1),
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    /// Asks partition `partition` and waits (blocking) for its answer.
    fn ask(&self, partition: u32, ask: HistoryAsk) -> Result<HistoryAnswer, HistoryError> {
        let asked = self.send(partition, ask)?;
        self.wait(asked, Instant::now() + ANSWER_TIMEOUT)
    }

    /// Publishes a question to partition `partition`, registered to receive its answer.
    fn send(&self, partition: u32, ask: HistoryAsk) -> Result<Asked, HistoryError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_to, answer) = std_mpsc::sync_channel(1);
        {
            let mut pending = self.pending.lock().map_err(|_| failed("poisoned"))?;
            if pending.len() >= MAX_PENDING {
                return Err(failed("too many history questions in flight"));
            }
            pending.insert(id, answer_to);
        }
        let request = HistoryRequest {
            id,
            reply_to: self.reply_to.clone(),
            ask,
        };
        let sent = serde_json::to_vec(&request)
            .map_err(|error| failed(&error.to_string()))
            .and_then(|payload| {
                self.client
                    .try_publish(
                        history_request_topic(partition),
                        QoS::AtLeastOnce,
                        false,
                        payload,
                    )
                    .map_err(|error| failed(&error.to_string()))
            });
        match sent {
            Ok(()) => Ok(Asked {
                id,
                partition,
                answer,
            }),
            Err(error) => {
                self.forget(id);
                Err(error)
            }
        }
    }

    /// Waits (blocking) until `deadline` for the answer to `asked`.
    fn wait(&self, asked: Asked, deadline: Instant) -> Result<HistoryAnswer, HistoryError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let answered = asked.answer.recv_timeout(left);
        self.forget(asked.id);
        let partition = asked.partition;
        let silent = || HistoryError {
            source: Box::new(NoAnswer { partition }),
        };
        match answered.map_err(|_| silent())? {
            HistoryAnswer::Failed(error) => Err(failed(&error)),
            answer => Ok(answer),
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&id);
        }
    }
}

fn failed(why: &str) -> HistoryError {
    HistoryError {
        source: why.to_string().into(),
    }
}

fn unexpected() -> HistoryError {
    failed("the bridge answered another question")
}

impl HistorySource for BrokerHistory {
    fn series(&self, query: &HistoryQuery) -> Result<HistorySeries, HistoryError> {
        let owner = partition_of(&query.device, self.partitions);
        match self.ask(owner, HistoryAsk::Series(query.clone()))? {
            HistoryAnswer::Series(series) => Ok(series),
            _ => Err(unexpected()),
        }
    }

    /// Asks every partition at once, so that bridges that are down cost one timeout, not
    /// one each.
    fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, HistoryError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let asked: Vec<Result<Asked, HistoryError>> = (0..self.partitions)
            .map(|partition| self.send(partition, HistoryAsk::Alerts(query.clone())))
            .collect();
        let mut alerts = Vec::new();
        let mut first_error = None;
        // Every question is waited for (or times out) even after an error, so that none
        // stays registered.
        for asked in asked {
            match asked.and_then(|asked| self.wait(asked, deadline)) {
                Ok(HistoryAnswer::Alerts(some)) => alerts.extend(some),
                Ok(_) => {
                    first_error.get_or_insert_with(unexpected);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(newest_first(alerts, query.limit)),
        }
    }

    fn alert(&self, id: AlertId) -> Result<Option<(Alert, Vec<AlertTransition>)>, HistoryError> {
        let owner = u32::try_from(id % u64::from(self.partitions)).unwrap_or(0);
        match self.ask(owner, HistoryAsk::Alert(id))? {
            HistoryAnswer::Alert(alert) => Ok(alert),
            _ => Err(unexpected()),
        }
    }
}

/// The partitions' alert lists as one: newest raised first (as each store orders them),
/// at most `limit`.
fn newest_first(mut alerts: Vec<Alert>, limit: usize) -> Vec<Alert> {
    alerts.sort_by(|a, b| b.raised_at.cmp(&a.raised_at).then(b.id.cmp(&a.id)));
    alerts.truncate(limit);
    alerts
}

/// Hands each reply to the question waiting for it; replies nobody waits for any more (the
/// question timed out) are dropped.
async fn route_replies(mut replies: mpsc::Receiver<Message>, pending: Pending) {
    while let Some(message) = replies.recv().await {
        let reply: HistoryReply = match serde_json::from_slice(&message.payload) {
            Ok(reply) => reply,
            Err(error) => {
                debug!(%error, "unreadable history reply ignored");
                continue;
            }
        };
        let waiter = pending.lock().ok().and_then(|mut p| p.remove(&reply.id));
        if let Some(waiter) = waiter {
            let _ = waiter.try_send(reply.answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use iotmon_wire::{AlertState, Severity};

    use super::*;

    fn alert(id: AlertId, raised_at: i64) -> Alert {
        Alert {
            id,
            rule: "r".into(),
            subject: "d".into(),
            group: "g".into(),
            severity: Severity::Minor,
            state: AlertState::ActiveUnacknowledged,
            message: String::new(),
            value: None,
            reading_ts: None,
            raised_at,
            changed_at: raised_at,
            acknowledged_by: None,
            acknowledged_at: None,
            shelved_until: None,
            shelved_by: None,
            suppressed_by: None,
            seq: 1,
        }
    }

    #[test]
    fn the_partitions_alert_lists_merge_newest_first_within_the_limit() {
        let merged = newest_first(vec![alert(2, 10), alert(1, 30), alert(4, 20)], 2);
        let ids: Vec<AlertId> = merged.iter().map(|a| a.id).collect();
        assert_eq!(ids, [1, 4]);
    }
}
