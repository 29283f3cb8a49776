//! Composing the roles into processes: `serve` and `demo` run all of them in one process,
//! the other commands one role each, talking through an MQTT broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iotmon_bridge::alerts::{Alerting, RuleSet};
use iotmon_bridge::store::StoreHistory;
use iotmon_bridge::{source, BridgeCounters, INPUT_CAPACITY, LIVE_CAPACITY};
use iotmon_broker::credentials::registry_path;
use iotmon_broker::{EmbeddedBroker, ListenerKind, LocalSubscription};
use iotmon_dashboard::alerts::{AlertAccess, CommandRoute, BROKER_COMMAND_CAPACITY};
use iotmon_dashboard::remote_history::BrokerHistory;
use iotmon_dashboard::LIVE_UPDATE_CAPACITY;
use iotmon_simulator::viewers::ViewerConfig;
use iotmon_simulator::{FleetConfig, Progress};
use iotmon_wire::history::HistorySource;
use iotmon_wire::metrics::{Collector, Registry};
use iotmon_wire::mqtt::{BrokerUrl, Login};
use iotmon_wire::supervise::{critical, PanicMetrics};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::Config;

/// The in-process client id the bridge uses on the embedded broker.
const BRIDGE_LINK_ID: &str = "iotmon-bridge";

/// Where a started `serve` listens (port 0 in the configuration becomes the port picked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The devices' MQTT listener.
    pub mqtt: SocketAddr,
    /// The web UI, REST API, WebSocket and `/metrics`.
    pub http: SocketAddr,
}

/// Runs broker, bridge and dashboard in this process until `shutdown`; with `fleet`, also a
/// simulated fleet against the embedded broker (`iotmon demo`). Once every listener is
/// open, the addresses are printed and, for callers in this process (tests), sent on
/// `listening`.
///
/// # Errors
/// A listener cannot be bound, or the data directory cannot be created.
pub async fn serve(
    config: Config,
    fleet: Option<FleetConfig>,
    shutdown: CancellationToken,
    listening: Option<oneshot::Sender<Listening>>,
) -> anyhow::Result<()> {
    let counters = Arc::new(BridgeCounters::default());
    let store = open_store(&config, counters.clone())?;
    let (alerting, alert_commands) = open_alerting(&config)?;
    let alert_access = AlertAccess {
        commands: Some(CommandRoute::InProcess(alert_commands)),
        rules: rules_json(&alerting.rules),
        open_alerts_first: true,
    };
    let broker = start_broker(&config)?;
    // The bridge subscribes before the listener opens, so no early reading is lost.
    let (mut broker, subscription) = tokio::task::spawn_blocking(move || {
        let subscription = LocalSubscription::open(&broker, BRIDGE_LINK_ID, &source::FILTERS);
        (broker, subscription)
    })
    .await?;
    let subscription = subscription?;
    let listeners = broker.listen()?;
    let mqtt_addr = broker.mqtt_addr().context("the MQTT listener is open")?;
    let http = iotmon_dashboard::bind(&config.dashboard).await?;
    announce_listeners(&listeners);
    let http_addr = http.local_addr()?;
    announce_http(http_addr);
    if let Some(listening) = listening {
        // A caller that stopped waiting is not an error.
        let _ = listening.send(Listening {
            mqtt: mqtt_addr,
            http: http_addr,
        });
    }
    if let Some(fleet) = &fleet {
        println!(
            "demo: {} simulated devices; open http://{} in a browser",
            fleet.devices,
            reachable(http_addr)
        );
    }

    let (to_bridge, from_broker) = mpsc::channel(INPUT_CAPACITY);
    let (to_dashboard, updates) = mpsc::channel(LIVE_CAPACITY.max(LIVE_UPDATE_CAPACITY));
    let tasks = TaskTracker::new();
    tasks.spawn(critical(
        "the bridge's broker link",
        subscription.forward(to_bridge, shutdown.clone()),
    ));
    tasks.spawn(critical(
        "the bridge",
        iotmon_bridge::run(
            config.bridge.clone(),
            alerting,
            from_broker,
            to_dashboard,
            counters.clone(),
            store,
            shutdown.clone(),
        ),
    ));
    if let Some(fleet) = fleet {
        let fleet = FleetConfig {
            broker: BrokerUrl {
                host: reachable(mqtt_addr).ip().to_string(),
                port: mqtt_addr.port(),
            },
            ..fleet
        };
        tasks.spawn(run_fleet(fleet, shutdown.clone()));
    }
    tasks.close();
    let metrics = registry([Box::new(counters), Box::new(broker.metrics())]);
    let history: Arc<dyn HistorySource> =
        Arc::new(StoreHistory::new(&config.data_dir, &config.bridge));
    let served = iotmon_dashboard::run(
        config.dashboard,
        http,
        updates,
        metrics,
        Some(history),
        alert_access,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    tasks.wait().await;
    drop(broker);
    Ok(served?)
}

/// Runs the embedded broker alone until `shutdown`; with `http_listen`, also serves its
/// `/metrics` and `/healthz` there.
///
/// # Errors
/// A listener cannot be bound, or the device credentials cannot be read.
pub async fn broker(
    config: Config,
    http_listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut broker = start_broker(&config)?;
    announce_listeners(&broker.listen()?);
    let Some(http_listen) = http_listen else {
        shutdown.cancelled().await;
        return Ok(());
    };
    let http = tokio::net::TcpListener::bind(http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {http_listen}"))?;
    announce_http(http.local_addr()?);
    let metrics = registry([Box::new(broker.metrics())]);
    crate::metrics_http::serve(http, Arc::new(metrics), shutdown).await?;
    Ok(())
}

/// The process's metrics registry: the panic counter every process exports, and `parts`.
fn registry<const N: usize>(parts: [Box<dyn Collector>; N]) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PanicMetrics));
    for part in parts {
        registry.register_collector(part);
    }
    registry
}

/// Starts the embedded broker with the device credentials in the data directory (or the
/// configured file).
fn start_broker(config: &Config) -> anyhow::Result<EmbeddedBroker> {
    let credentials = registry_path(config.broker.credentials_file.as_deref(), &config.data_dir);
    if config.broker.allow_anonymous {
        info!("anonymous devices allowed: MQTT credentials are not checked");
    }
    Ok(EmbeddedBroker::start(config.broker.clone(), &credentials)?)
}

/// Runs the bridge alone against `broker_url` until `shutdown`; with `http_listen`, also
/// serves its counters on `/metrics` (and `/healthz`) there.
pub async fn bridge(
    config: Config,
    broker_url: BrokerUrl,
    login: Login,
    http_listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    info!(broker = %broker_url, client_id = login.client_id, partition = %config.bridge.partition(), "bridge starting");
    let counters = Arc::new(BridgeCounters::default());
    let store = open_store(&config, counters.clone())?;
    // Split, operators' commands arrive over the broker (`iotmon/commands/alerts`).
    let (alerting, _in_process_commands) = open_alerting(&config)?;
    let http = match http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            announce_http(listener.local_addr()?);
            let metrics = registry([Box::new(counters.clone())]);
            Some(tokio::spawn(crate::metrics_http::serve(
                listener,
                Arc::new(metrics),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    // A partitioned bridge answers dashboards' history questions over MQTT, on a
    // connection of its own; a lone bridge stays as it was (dashboards read its store).
    let partition = config.bridge.partition;
    let history = match (partition, config.bridge.store.enabled) {
        (Some(partition), true) => Some(tokio::spawn(critical(
            "the bridge's history server",
            iotmon_bridge::history_server::run(
                broker_url.clone(),
                history_login(&login),
                partition,
                Arc::new(StoreHistory::new(&config.data_dir, &config.bridge)),
                counters.clone(),
                shutdown.clone(),
            ),
        ))),
        _ => None,
    };
    iotmon_bridge::standalone::run(
        config.bridge,
        alerting,
        broker_url,
        &login,
        config.broker.max_packet_size,
        counters,
        store,
        shutdown,
    )
    .await;
    if let Some(http) = http {
        http.await??;
    }
    if let Some(history) = history {
        history.await?;
    }
    Ok(())
}

/// The login of a role's history connection: the role's own, under the client id
/// `<client id>-history` (a broker allows one connection per client id).
fn history_login(login: &Login) -> Login {
    Login {
        client_id: format!("{}-history", login.client_id),
        username: Some(
            login
                .username
                .clone()
                .unwrap_or_else(|| login.client_id.clone()),
        ),
        password: login.password.clone(),
    }
}

/// Creates the data directory and opens the bridge's store in it (unless disabled), after
/// checking the bridge's settings.
///
/// # Errors
/// Invalid bridge settings, or the directory or database cannot be created.
fn open_store(
    config: &Config,
    counters: Arc<BridgeCounters>,
) -> anyhow::Result<Option<iotmon_bridge::store::OpenStore>> {
    config.bridge.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    if !config.bridge.store.enabled {
        return Ok(None);
    }
    let now = iotmon_wire::unix_millis();
    let store = iotmon_bridge::store::open(&config.data_dir, &config.bridge, counters, now)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    Ok(Some(store))
}

/// Opens the alert store in the data directory (created by [`open_store`]) with the
/// configured rules; returns the bridge's alerting and where operators' commands go.
fn open_alerting(
    config: &Config,
) -> anyhow::Result<(
    Alerting,
    tokio::sync::mpsc::Sender<iotmon_wire::alert::AlertRequest>,
)> {
    let rules = Arc::new(config.rules()?);
    Alerting::open(rules, &config.alerts, Some(&config.data_dir)).with_context(|| {
        format!(
            "cannot open the alert store in {}",
            config.data_dir.display()
        )
    })
}

/// The rules as `/api/rules` serves them.
fn rules_json(rules: &RuleSet) -> Arc<serde_json::Value> {
    let value = serde_json::to_value(rules.rules()).unwrap_or_default();
    Arc::new(serde_json::json!({ "rules": value }))
}

/// Runs a dashboard alone, fed from `broker_url`, until `shutdown`; with `partitions`,
/// asking the partitioned bridges for history over MQTT.
///
/// # Errors
/// The HTTP listener cannot be bound.
pub async fn dashboard(
    config: Config,
    broker_url: BrokerUrl,
    login: Login,
    partitions: Option<u32>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http = iotmon_dashboard::bind(&config.dashboard).await?;
    announce_http(http.local_addr()?);
    let (to_hub, updates) = mpsc::channel(LIVE_UPDATE_CAPACITY);
    let (alert_commands, commands_to_publish) = mpsc::channel(BROKER_COMMAND_CAPACITY);
    let source_counters = Arc::new(iotmon_dashboard::source::SourceCounters::default());
    let source = tokio::spawn(critical(
        "the dashboard's MQTT source",
        iotmon_dashboard::source::from_broker(
            broker_url.clone(),
            login.clone(),
            config.broker.max_packet_size,
            partitions,
            to_hub,
            commands_to_publish,
            source_counters.clone(),
            shutdown.clone(),
        ),
    ));
    // History comes from the bridge's store: from each device's owner over MQTT when the
    // bridges are partitioned (each keeps its own file); else readable when this dashboard
    // shares the bridge's data directory (same machine, or a shared volume).
    let history_tasks = TaskTracker::new();
    let history = match partitions {
        Some(partitions) => {
            let history: Arc<dyn HistorySource> = BrokerHistory::start(
                &broker_url,
                &history_login(&login),
                partitions,
                &history_tasks,
                shutdown.clone(),
            );
            Some(history)
        }
        None => iotmon_bridge::store::db_path(&config.data_dir)
            .exists()
            .then(|| -> Arc<dyn HistorySource> {
                Arc::new(StoreHistory::new(&config.data_dir, &config.bridge))
            }),
    };
    if history.is_none() {
        info!(
            data_dir = %config.data_dir.display(),
            "no store in the data directory: /api/history is unavailable"
        );
    }
    let alert_access = AlertAccess {
        commands: Some(CommandRoute::Broker(alert_commands)),
        rules: rules_json(&config.rules()?),
        // Alerts arrive one subject at a time from the broker (retained, then resent when
        // the bridge answers the sync request), so no batch is known to be all of them.
        open_alerts_first: false,
    };
    let served = iotmon_dashboard::run(
        config.dashboard,
        http,
        updates,
        registry([Box::new(source_counters)]),
        history,
        alert_access,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = source.await;
    history_tasks.close();
    history_tasks.wait().await;
    Ok(served?)
}

/// Runs a simulated fleet until its duration ends or `shutdown`, showing its progress, then
/// prints its summary (as JSON with `json`).
pub async fn simulate(
    fleet: FleetConfig,
    json: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let duration = fleet.duration;
    let fleet = iotmon_simulator::Fleet::start(fleet, Progress::Auto, &shutdown)?;
    fleet.run_for(duration).await;
    print_summary(&fleet.stop().await, json)
}

/// Runs fake viewers until their duration ends or `shutdown`, then prints their summary.
pub async fn simulate_viewers(
    viewers: ViewerConfig,
    json: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let summary = iotmon_simulator::viewers::run(viewers, Progress::Lines, shutdown).await?;
    print_summary(&summary, json)
}

/// Runs a benchmark scenario and prints its report.
pub async fn bench(
    bench: iotmon_bench::BenchConfig,
    json: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let report = iotmon_bench::run(bench, shutdown).await?;
    print_summary(&report, json)
}

fn print_summary<S: std::fmt::Display + serde::Serialize>(
    summary: &S,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        println!("{summary}");
    }
    Ok(())
}

async fn run_fleet(fleet: FleetConfig, shutdown: CancellationToken) {
    match iotmon_simulator::run(fleet, shutdown).await {
        Ok(summary) => info!(%summary, "simulated fleet stopped"),
        Err(error) => error!(%error, "simulated fleet failed"),
    }
}

/// The address a client on this machine uses to reach a listener bound to `addr`: a
/// listener on every interface (0.0.0.0 or ::) is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Start-up lines that scripts read: keep their wording stable (`mqtt listening on ADDR`,
/// then `mqtt5`, `mqtt-ws` and `mqtts` for the listeners that are configured).
fn announce_listeners(listeners: &[(ListenerKind, SocketAddr)]) {
    for (kind, addr) in listeners {
        println!("{kind} listening on {addr}");
    }
}

fn announce_http(addr: SocketAddr) {
    println!("http listening on http://{addr}");
}

/// How long the process waits for its roles to stop after a signal before it exits anyway.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
