//! The dashboard's input when it runs in a process of its own: device states from the
//! bridge's `iotmon/live/...` topics and group aggregates from `iotmon/agg/...` on an MQTT
//! broker. With partitioned bridges, each group's aggregate is merged here from the
//! partitions' partials on `iotmon/partial/<K>/...`: every dashboard merges for itself, so
//! none depends on another and any number can run. A partition's shares that go
//! unrefreshed past their lifetime are aged out (its bridge is gone): its devices then count
//! offline, with no values, until its bridge is back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iotmon_wire::metrics::{encode_one, Collector, DescriptorEncoder, Kind};
use iotmon_wire::mqtt::{drive_session, BrokerUrl, Login, Message, SessionPlan};
use iotmon_wire::partial::{PartialAggregate, PartialMerger};
use iotmon_wire::topics::{
    parse_partial_topic, AGG_FILTER, ALERTS_FILTER, ALERT_COMMANDS, LIVE_FILTER, PARTIAL_FILTER,
    SYNC_REQUEST,
};
use iotmon_wire::{Alert, AlertCommand, DeviceState, GroupAggregate, LiveUpdate};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Messages buffered between the MQTT client and the decoder.
const INPUT_CAPACITY: usize = 4096;

/// How often partials are checked for shares past their lifetime: a partition whose bridge
/// is gone shows offline at most this long after its shares' lifetime (33 s by default) ends.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What the dashboard's MQTT source refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Partial aggregates refused: unreadable, invalid, or on a topic that does not match.
    pub partials_refused: AtomicU64,
    /// Partitions' shares of group aggregates aged out unrefreshed (their bridge is gone).
    pub partials_expired: AtomicU64,
}

impl Collector for SourceCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        encode_one(
            &mut encoder,
            "iotmon_dashboard_partials_refused_total",
            "Partial aggregates from partitioned bridges refused as unreadable or invalid.",
            Kind::Counter,
            self.partials_refused.load(Ordering::Relaxed),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_dashboard_partials_expired_total",
            "Partitions' shares of group aggregates aged out unrefreshed (their bridge is gone); \
             their devices count offline until it is back.",
            Kind::Counter,
            self.partials_expired.load(Ordering::Relaxed),
        )
    }
}

/// Subscribes to the bridge's device states on `broker` and feeds them to `to_hub` until
/// `shutdown`. On every (re)connect it asks the bridge to resend all states, so a dashboard
/// that starts late, or lost its connection, is complete again. Operators' alert commands
/// from `alert_commands` are published for the bridge at QoS 1. Refused input is counted in
/// `counters`. With `partitions` (the deployment's N, `--partitions`), partial aggregates of
/// any other partition count are refused; without, each group takes the newest layout.
#[allow(clippy::too_many_arguments)] // Each is one of the source's separate inputs.
pub async fn from_broker(
    broker: BrokerUrl,
    login: Login,
    max_packet_size: usize,
    partitions: Option<u32>,
    to_hub: mpsc::Sender<LiveUpdate>,
    mut alert_commands: mpsc::Receiver<AlertCommand>,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
) {
    let (client, eventloop) = AsyncClient::new(broker.options_for(&login, max_packet_size), 64);
    let (messages_tx, mut messages) = mpsc::channel::<Message>(INPUT_CAPACITY);
    let plan = SessionPlan {
        subscriptions: vec![
            LIVE_FILTER.to_string(),
            AGG_FILTER.to_string(),
            PARTIAL_FILTER.to_string(),
        ],
        reliable_subscriptions: vec![ALERTS_FILTER.to_string()],
        announce: Some((SYNC_REQUEST.to_string(), Bytes::new())),
    };
    let session = tokio::spawn(drive_session(
        eventloop,
        client.clone(),
        plan,
        Some(messages_tx),
        shutdown.clone(),
    ));
    let mut partials = partitions.map_or_else(PartialMerger::new, PartialMerger::for_partitions);
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    'source: loop {
        tokio::select! {
            _ = expiry.tick() => {
                for aged in expire(&mut partials, &counters) {
                    if to_hub.send(aged).await.is_err() {
                        break 'source;
                    }
                }
            }
            message = messages.recv() => {
                let Some(message) = message else { break };
                let Some(derived) = decode(&message, &mut partials, &counters) else {
                    continue;
                };
                if to_hub.send(derived).await.is_err() {
                    break;
                }
            }
            Some(command) = alert_commands.recv() => publish_command(&client, &command).await,
        }
    }
    shutdown.cancel();
    let _ = session.await;
}

async fn publish_command(client: &AsyncClient, command: &AlertCommand) {
    let Ok(payload) = serde_json::to_vec(command) else {
        return;
    };
    if let Err(error) = client
        .publish(ALERT_COMMANDS, QoS::AtLeastOnce, false, payload)
        .await
    {
        warn!(%error, "alert command not published");
    }
}

/// A device state (`iotmon/live/...`) or a group aggregate (`iotmon/agg/...`, or merged from
/// `iotmon/partial/...`); unreadable payloads are logged and skipped.
fn decode(
    message: &Message,
    partials: &mut PartialMerger,
    counters: &SourceCounters,
) -> Option<LiveUpdate> {
    if message.topic.starts_with("iotmon/partial/") {
        return merge_partial(message, partials)
            .inspect_err(|error| {
                counters.partials_refused.fetch_add(1, Ordering::Relaxed);
                // Counted for /metrics; at debug level, since a flood of bad partials
                // must not flood the log.
                debug!(topic = message.topic, %error, "partial aggregate refused");
            })
            .ok();
    }
    let decoded = if message.topic.starts_with("iotmon/alerts/") {
        serde_json::from_slice::<Alert>(&message.payload)
            .map(|alert| LiveUpdate::Alerts(vec![alert]))
    } else if message.topic.starts_with("iotmon/agg/") {
        serde_json::from_slice::<GroupAggregate>(&message.payload)
            .map(|aggregate| LiveUpdate::Aggregates(vec![aggregate]))
    } else {
        serde_json::from_slice::<DeviceState>(&message.payload)
            .map(|state| LiveUpdate::Devices(vec![state]))
    };
    decoded
        .inspect_err(
            |error| warn!(topic = message.topic, %error, "ignoring unreadable derived data"),
        )
        .ok()
}

/// Ages out the shares not refreshed in time, counted and logged: the groups changed, then
/// each partition left with no current share (its bridge is gone, so the hub marks its
/// devices offline).
fn expire(partials: &mut PartialMerger, counters: &SourceCounters) -> Vec<LiveUpdate> {
    let expired = partials.expire(Instant::now());
    if expired.is_empty() {
        return Vec::new();
    }
    counters
        .partials_expired
        .fetch_add(expired.shares as u64, Ordering::Relaxed);
    warn!(
        partitions = ?expired.partitions,
        shares = expired.shares,
        "partial aggregates not refreshed within their lifetime: their bridges are gone; \
         their devices count offline until they are back"
    );
    let gone = expired.gone.into_iter().map(LiveUpdate::PartitionGone);
    std::iter::once(LiveUpdate::Aggregates(expired.aggregates))
        .chain(gone)
        .collect()
}

/// Records one partition's partial and returns its group's aggregate merged over every
/// partition.
fn merge_partial(
    message: &Message,
    partials: &mut PartialMerger,
) -> Result<LiveUpdate, Box<dyn std::error::Error>> {
    let (partition, group) = parse_partial_topic(&message.topic)?;
    let partial: PartialAggregate = serde_json::from_slice(&message.payload)?;
    if partial.partition != partition || *partial.group != *group {
        return Err("the payload names another partition or group than its topic".into());
    }
    let merged = partials.update(partial, Instant::now())?;
    Ok(LiveUpdate::Aggregates(vec![merged]))
}

#[cfg(test)]
mod tests {
    use iotmon_wire::partition::Partition;

    use super::*;

    fn message(topic: &str, payload: &str) -> Message {
        Message {
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    fn partial(partition: u32, count: u64, sum: f64) -> String {
        partial_living(partition, count, sum, 30_000)
    }

    fn partial_living(partition: u32, count: u64, sum: f64, lifetime_ms: u64) -> String {
        format!(
            r#"{{"group":"hq","partition":{partition},"partitions":2,"ts":1,"lifetime_ms":{lifetime_ms},"devices":{{"online":{count},"offline":0,"alerting":0}},"metrics":{{"t":{{"count":{count},"sum":{sum},"min":1.0,"max":9.0}}}}}}"#
        )
    }

    #[test]
    fn partials_of_two_partitions_reach_the_hub_merged() {
        let mut partials = PartialMerger::new();
        let counters = SourceCounters::default();
        decode(
            &message("iotmon/partial/0/hq", &partial(0, 3, 6.0)),
            &mut partials,
            &counters,
        )
        .expect("merged");
        let Some(LiveUpdate::Aggregates(merged)) = decode(
            &message("iotmon/partial/1/hq", &partial(1, 1, 10.0)),
            &mut partials,
            &counters,
        ) else {
            panic!("an aggregate");
        };
        assert_eq!(merged[0].metrics["t"].count, 4);
        assert_eq!(merged[0].metrics["t"].mean, 4.0);
        assert_eq!(merged[0].devices.online, 4);
    }

    #[test]
    fn a_share_past_its_lifetime_reaches_the_hub_aged_out_counted_and_its_partition_gone() {
        let mut partials = PartialMerger::new();
        let counters = SourceCounters::default();
        for (partition, lifetime_ms) in [(0, 30_000), (1, 1)] {
            decode(
                &message(
                    &format!("iotmon/partial/{partition}/hq"),
                    &partial_living(partition, 2, 10.0, lifetime_ms),
                ),
                &mut partials,
                &counters,
            )
            .expect("merged");
        }
        // Partition 1's share lives 1 ms: its bridge does not send another.
        std::thread::sleep(Duration::from_millis(5));
        let expired = expire(&mut partials, &counters);
        let [LiveUpdate::Aggregates(aged), LiveUpdate::PartitionGone(gone)] = expired.as_slice()
        else {
            panic!("partition 1's share aged out, and with it partition 1");
        };
        assert_eq!(aged[0].metrics["t"].count, 2, "partition 0's devices only");
        assert_eq!((aged[0].devices.online, aged[0].devices.offline), (2, 2));
        assert_eq!(*gone, Partition::new(1, 2).expect("valid"));
        assert!(expire(&mut partials, &counters).is_empty(), "aged out once");
        assert_eq!(counters.partials_expired.load(Ordering::Relaxed), 1);
        let mut registry = iotmon_wire::metrics::Registry::default();
        registry.register_collector(Box::new(Arc::new(counters)));
        let metrics = iotmon_wire::metrics::render(&[&registry]);
        assert!(
            metrics.contains("iotmon_dashboard_partials_expired_total 1"),
            "{metrics}"
        );
    }

    #[test]
    fn a_partial_on_the_wrong_topic_or_unreadable_is_skipped() {
        let mut partials = PartialMerger::new();
        let counters = SourceCounters::default();
        assert!(decode(
            &message("iotmon/partial/1/hq", &partial(0, 1, 1.0)),
            &mut partials,
            &counters
        )
        .is_none());
        assert!(decode(
            &message("iotmon/partial/0/other", &partial(0, 1, 1.0)),
            &mut partials,
            &counters
        )
        .is_none());
        assert!(decode(
            &message("iotmon/partial/0/hq", "{"),
            &mut partials,
            &counters
        )
        .is_none());
        assert!(partials.is_empty());
        assert_eq!(counters.partials_refused.load(Ordering::Relaxed), 3);
        let mut registry = iotmon_wire::metrics::Registry::default();
        registry.register_collector(Box::new(Arc::new(counters)));
        let metrics = iotmon_wire::metrics::render(&[&registry]);
        assert!(
            metrics.contains("iotmon_dashboard_partials_refused_total 3"),
            "{metrics}"
        );
    }
}
