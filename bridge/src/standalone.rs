//! `iotmon bridge --broker mqtt://...`: the bridge in a process of its own, reading devices
//! from any MQTT broker and publishing device states back to it for dashboards.

use std::sync::Arc;

use iotmon_wire::mqtt::{drive_session, BrokerUrl, Login, SessionPlan};
use iotmon_wire::supervise::critical;
use iotmon_wire::topics::ALERT_COMMANDS;
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
    let plan = SessionPlan {
        subscriptions: FILTERS.iter().map(|filter| filter.to_string()).collect(),
        reliable_subscriptions: vec![ALERT_COMMANDS.to_string()],
        announce: None,
    };
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
        publish_live(client, to_publish, shutdown.clone()),
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
