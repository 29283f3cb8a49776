//! `iotmon bridge --broker mqtt://...`: the bridge in a process of its own, reading devices
//! from any MQTT broker and publishing device states back to it for dashboards.

use std::sync::Arc;

use bytes::Bytes;
use iotmon_wire::mqtt::{drive_session, BrokerUrl, Login, SessionPlan};
use iotmon_wire::partition::Partition;
use iotmon_wire::supervise::critical;
use iotmon_wire::topics::{ALERT_COMMANDS, PARTIALS_SYNC_REQUEST, PARTIAL_FILTER};
use rumqttc::AsyncClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::Alerting;
use crate::config::BridgeConfig;
use crate::counters::BridgeCounters;
use crate::live_publisher::publish_live;
use crate::source::FILTERS;
use crate::store::OpenStore;
use crate::{pipeline, INPUT_CAPACITY, LIVE_CAPACITY};

/// Requests the MQTT client may queue before a publish waits.
const CLIENT_QUEUE: usize = 1024;

/// Runs the bridge against the broker at `broker` until `shutdown`, keeping rollups and the
/// registry in `store` when given, raising alerts by `alerting`.
#[allow(clippy::too_many_arguments)] // Each is one of the bridge's separate inputs.
pub async fn run(
    config: BridgeConfig,
    alerting: Alerting,
    broker: BrokerUrl,
    login: &Login,
    max_packet_size: usize,
    counters: Arc<BridgeCounters>,
    store: Option<OpenStore>,
    shutdown: CancellationToken,
) {
    let (client, eventloop) =
        AsyncClient::new(broker.options_for(login, max_packet_size), CLIENT_QUEUE);
    let (to_bridge, from_broker) = mpsc::channel(INPUT_CAPACITY);
    let (live_updates, to_publish) = mpsc::channel(LIVE_CAPACITY);
    let partition = config.partition();
    let plan = session_plan(partition);
    let tasks = TaskTracker::new();
    tasks.spawn(critical(
        "the bridge's MQTT session",
        drive_session(
            eventloop,
            client.clone(),
            plan,
            Some(to_bridge),
            shutdown.clone(),
        ),
    ));
    tasks.spawn(critical(
        "the bridge's publisher",
        publish_live(
            client,
            to_publish,
            partition,
            config.share_lifetime(),
            shutdown.clone(),
        ),
    ));
    tasks.close();
    pipeline::run(
        config,
        alerting,
        from_broker,
        live_updates,
        counters,
        store,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    tasks.wait().await;
}

/// What the bridge subscribes to, and announces, on every connect. Split, every partition
/// also answers `iotmon/sync/partials`; partition 0, which evaluates group rules on the
/// merged partials, also reads every partition's partials and asks for them all on connect,
/// so that after a restart it merges complete values again at once.
fn session_plan(partition: Partition) -> SessionPlan {
    let mut subscriptions: Vec<String> = FILTERS.iter().map(|filter| filter.to_string()).collect();
    let mut announce = None;
    if partition.is_split() {
        subscriptions.push(PARTIALS_SYNC_REQUEST.to_string());
        if partition.evaluates_group_rules() {
            subscriptions.push(PARTIAL_FILTER.to_string());
            announce = Some((PARTIALS_SYNC_REQUEST.to_string(), Bytes::new()));
        }
    }
    SessionPlan {
        subscriptions,
        reliable_subscriptions: vec![ALERT_COMMANDS.to_string()],
        announce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partition_zero_reads_the_partials_and_a_lone_bridge_subscribes_as_before() {
        let lone = session_plan(Partition::WHOLE);
        assert_eq!(lone.subscriptions, FILTERS.map(String::from));
        assert!(lone.announce.is_none());
        let first = session_plan(Partition::new(0, 2).expect("valid"));
        assert!(first.subscriptions.contains(&PARTIAL_FILTER.to_string()));
        assert_eq!(
            first.announce.map(|(topic, _)| topic).as_deref(),
            Some(PARTIALS_SYNC_REQUEST)
        );
        let second = session_plan(Partition::new(1, 2).expect("valid"));
        assert!(!second.subscriptions.contains(&PARTIAL_FILTER.to_string()));
        assert!(second
            .subscriptions
            .contains(&PARTIALS_SYNC_REQUEST.to_string()));
        assert!(second.announce.is_none());
    }
}
