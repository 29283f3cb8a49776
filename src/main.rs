//! `iotmon`: parses the command line, sets up logging and shutdown, and runs the roles.

use anyhow::Context;
use clap::Parser;
use iotmon::cli::{BridgeArgs, Cli, Command, DashboardArgs, SimulateCommand};
use iotmon::config::Config;
use iotmon::{devices, roles};
use iotmon_simulator::FleetConfig;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system's allocator: glibc's keeps what a long-running server
/// freed in per-thread arenas, so after 1,000 viewers that stalled and left, serve's memory
/// stayed at its peak, and a second wave as large added another 19–32 MiB; with mimalloc it
/// fell back to where it was, and the second wave peaked lower than the first (the fault
/// bench's stalled viewers, docs/benchmarks.md). The price: ~40 MiB more resident memory at
/// the reference load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Logging when `RUST_LOG` is unset. rumqttd is silenced: it logs every connect at info and
/// every ordinary disconnect as an error, so a fleet's churn would drown iotmon's own lines.
/// `RUST_LOG=info,rumqttd=info` brings them back when debugging the broker.
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=off";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Config { check: None } => {
            print!("{}", Config::defaults_toml()?);
            return Ok(());
        }
        Command::Config { check: Some(path) } => return check_config(&path),
        Command::Devices(args) => return devices::run(args),
        _ => {}
    }
    let shutdown = CancellationToken::new();
    iotmon_wire::supervise::install(shutdown.clone());
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(run(cli.command, shutdown));
    if let Some(reason) = iotmon_wire::supervise::fatal_reason() {
        // Exit status 70 (EX_SOFTWARE): an internal error; a supervisor should restart us.
        eprintln!("iotmon stopped: {reason}");
        std::process::exit(70);
    }
    result
}

async fn run(command: Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let role = run_role(command, shutdown.clone());
    tokio::pin!(role);
    tokio::select! {
        result = &mut role => result,
        () = shutdown.cancelled() => {
            // Roles flush and say goodbye; past the limit, exit anyway.
            tokio::time::timeout(roles::SHUTDOWN_LIMIT, role)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!("shutdown took too long; exiting");
                    Ok(())
                })
        }
    }
}

async fn run_role(command: Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => roles::serve(args.resolve()?, None, shutdown, None).await,
        Command::Demo {
            serve,
            devices,
            interval,
        } => {
            let mut config = serve.resolve()?;
            // The demo's fleet connects without credentials.
            config.broker.allow_anonymous = true;
            // Alerts to show: the demo's rules (unless the file has its own) and a fleet
            // whose sensors now and then run hot (about one device every few seconds).
            config.add_demo_rules()?;
            let fleet = FleetConfig {
                devices,
                interval,
                client_prefix: "demo".into(),
                anomaly_rate: DEMO_ANOMALY_RATE,
                ..FleetConfig::default()
            };
            roles::serve(config, Some(fleet), shutdown, None).await
        }
        Command::Broker(args) => roles::broker(args.resolve()?, args.http_listen, shutdown).await,
        Command::Bridge(BridgeArgs {
            remote: args,
            partition,
        }) => {
            let login = args.login("bridge")?;
            let http_listen = args.serve.http_listen;
            let mut config = args.serve.resolve()?;
            config.bridge.partition = partition.or(config.bridge.partition);
            roles::bridge(config, args.broker, login, http_listen, shutdown).await
        }
        Command::Dashboard(DashboardArgs {
            remote: args,
            partitions,
        }) => {
            let login = args.login("dashboard")?;
            let config = args.serve.resolve()?;
            roles::dashboard(config, args.broker, login, partitions, shutdown).await
        }
        Command::Simulate(args) => match args.what {
            Some(SimulateCommand::Viewers(viewers)) => {
                roles::simulate_viewers(viewers.viewers(), viewers.json, shutdown).await
            }
            None => roles::simulate(args.fleet.fleet()?, args.fleet.json, shutdown).await,
        },
        Command::Bench(args) => {
            let iotmon = match &args.iotmon {
                Some(path) => path.clone(),
                None => std::env::current_exe().context("cannot find the iotmon binary")?,
            };
            roles::bench(args.bench(iotmon)?, args.json, shutdown).await
        }
        Command::Config { .. } | Command::Devices(_) => Ok(()),
    }
}

/// `iotmon config --check FILE`: checks the file as `serve` would at start-up and lists its
/// alert rules.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(Some(path))?;
    config.validate()?;
    let rules = config.rules()?;
    println!("{}: valid", path.display());
    for rule in rules.rules() {
        let scope = if rule.is_group_rule() {
            "group"
        } else {
            "device"
        };
        println!(
            "rule {:?}: {} rule, {}, {}",
            rule.name,
            scope,
            rule.severity.as_str(),
            serde_json::to_string(&rule.condition)?
        );
    }
    Ok(())
}

/// The demo fleet's chance per reading that a sensor runs hot for a while.
const DEMO_ANOMALY_RATE: f64 = 0.001;

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
