//! Publishing derived data when the bridge runs in a process of its own, so any number of
//! dashboards can subscribe: device states on `iotmon/live/<group>/<device>`, group aggregates
//! on `iotmon/agg/<group>` (JSON, QoS 0) — or, for one partition of a split fleet, partial
//! aggregates on `iotmon/partial/<K>/<group>` for dashboards to merge — alerts on `iotmon/alerts/<subject>` (JSON, QoS 1:
//! an alert must arrive, and it is never coalesced away).

use std::time::Duration;

use iotmon_wire::partial::PartialAggregate;
use iotmon_wire::partition::Partition;
use iotmon_wire::topics::{agg_topic, alert_topic, live_topic, partial_topic};
use iotmon_wire::LiveUpdate;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Publishes every batch from `live_updates` through `client` at QoS 0, until `shutdown`;
/// aggregates as `partition`'s partials, each standing `share_lifetime` unrefreshed, when the
/// fleet is split. Waits while the client's request queue is full; meanwhile the bridge
/// coalesces.
pub async fn publish_live(
    client: AsyncClient,
    mut live_updates: mpsc::Receiver<LiveUpdate>,
    partition: Partition,
    share_lifetime: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => break,
            batch = live_updates.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
        };
        let qos = match batch {
            LiveUpdate::Alerts(_) => QoS::AtLeastOnce,
            _ => QoS::AtMostOnce,
        };
        let messages: Vec<(String, Option<Vec<u8>>)> = match batch {
            LiveUpdate::Devices(devices) => devices
                .iter()
                .map(|state| (live_topic(&state.group, &state.id), encode(state)))
                .collect(),
            LiveUpdate::Aggregates(aggregates) if partition.is_split() => aggregates
                .iter()
                .map(|aggregate| {
                    let partial =
                        PartialAggregate::from_aggregate(aggregate, partition, share_lifetime);
                    (
                        partial_topic(partition.index, &aggregate.group),
                        encode(&partial),
                    )
                })
                .collect(),
            LiveUpdate::Aggregates(aggregates) => aggregates
                .iter()
                .map(|aggregate| (agg_topic(&aggregate.group), encode(aggregate)))
                .collect(),
            LiveUpdate::Alerts(alerts) => alerts
                .iter()
                .map(|alert| (alert_topic(&alert.subject), encode(alert)))
                .collect(),
            // Said by a dashboard's source to its hub; a bridge has nothing to publish.
            LiveUpdate::PartitionGone(_) => Vec::new(),
        };
        for (topic, payload) in messages {
            let Some(payload) = payload else { continue };
            tokio::select! {
                () = shutdown.cancelled() => return,
                published = client.publish(topic, qos, false, payload) => {
                    if published.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn encode(value: &impl Serialize) -> Option<Vec<u8>> {
    serde_json::to_vec(value)
        .inspect_err(|error| warn!(%error, "derived data not serializable"))
        .ok()
}
