//! The command line: one subcommand per way of running iotmon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use iotmon_simulator::FleetDescription;
use iotmon_wire::mqtt::{BrokerUrl, Login};

use crate::config::Config;

/// Real-time monitoring for fleets of IoT sensors.
#[derive(Debug, Parser)]
#[command(name = "iotmon", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Built once per process from the command line: the size of its largest variant (the
// fleet's flags) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Broker, bridge and dashboard in one process (the default deployment).
    Serve(ServeArgs),
    /// `serve` plus a simulated fleet of devices; prints the dashboard's URL.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Simulated devices.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Each simulated device publishes once per interval.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// The embedded MQTT broker alone.
    Broker(ServeArgs),
    /// The bridge alone, against any MQTT broker; publishes device states on `iotmon/live/...`.
    Bridge(BridgeArgs),
    /// A dashboard alone, fed by a bridge through any MQTT broker.
    Dashboard(DashboardArgs),
    /// Simulated devices publishing readings to a broker (or `simulate viewers`).
    Simulate(SimulateArgs),
    /// A whole scenario on this machine (iotmon as a child process, fleet and viewers), with
    /// a report: reference, stress, fanout, broker, viewer-cost, faults or split.
    Bench(BenchArgs),
    /// Prints the default configuration file; with --check FILE, checks FILE instead (every
    /// setting and alert rule, with the line at fault) and lists its alert rules.
    Config {
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
    /// Device credentials for the embedded broker: add, remove, list.
    Devices(DevicesArgs),
}

/// Which credential registry to edit, and how.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Configuration file (TOML): its `data_dir` and `broker.credentials_file` locate the
    /// registry.
    #[arg(long, env = "IOTMON_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where iotmon keeps its data; the registry is `devices.credentials` inside it unless
    /// the config names another file.
    #[arg(long, env = "IOTMON_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub action: DeviceAction,
}

#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Registers a device, or replaces its password. Without --password-stdin, a random
    /// password is generated and printed once.
    Add {
        /// The device id: its MQTT client id and user name.
        device_id: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forgets a device; it can no longer connect.
    Remove {
        /// The device id.
        device_id: String,
    },
    /// Lists the registered device ids.
    List,
}

/// Settings shared by the commands that run roles; each flag overrides the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see `iotmon config` for every key.
    #[arg(long, env = "IOTMON_CONFIG")]
    pub config: Option<PathBuf>,
    /// MQTT listener for devices (port 0 picks a free port).
    #[arg(long, env = "IOTMON_MQTT_LISTEN")]
    pub mqtt_listen: Option<SocketAddr>,
    /// HTTP listener for the web UI and API; for `bridge`, for its /metrics and /healthz
    /// (none unless given). Port 0 picks a free port.
    #[arg(long, env = "IOTMON_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Where iotmon keeps its data.
    #[arg(long, env = "IOTMON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Let devices connect without credentials.
    #[arg(long, env = "IOTMON_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

impl ServeArgs {
    /// The config file with these flags applied on top.
    ///
    /// # Errors
    /// The config file cannot be read or parsed.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(addr) = self.mqtt_listen {
            config.broker.mqtt_listen = addr;
        }
        if let Some(addr) = self.http_listen {
            config.dashboard.http_listen = addr;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if self.allow_anonymous {
            config.broker.allow_anonymous = true;
        }
        config.validate()?;
        Ok(config)
    }
}

/// `iotmon bridge`: a role on a broker it does not run, owning all of the fleet or a
/// partition of it.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// Own only partition K of N: the devices whose id hashes (FNV-1a) to K modulo N. Run one
    /// bridge per K, each with its own data directory; see docs/scaling.md. Overrides
    /// `bridge.partition` in the config file.
    #[arg(long, value_name = "K/N", env = "IOTMON_PARTITION")]
    pub partition: Option<iotmon_wire::partition::Partition>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `iotmon dashboard`: a role on a broker it does not run.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// The bridges own N partitions (`iotmon bridge --partition K/N`): ask each device's
    /// owner for its history over MQTT instead of reading a store in the data directory.
    #[arg(long, value_name = "N", env = "IOTMON_PARTITIONS",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(iotmon_wire::partition::MAX_PARTITIONS)))]
    pub partitions: Option<u32>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// A role that connects to an MQTT broker it does not run.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The broker: mqtt://HOST:PORT.
    #[arg(long, env = "IOTMON_BROKER")]
    pub broker: BrokerUrl,
    /// MQTT client id (unique per process on the broker); defaults to the user name, or to
    /// the role and process id.
    #[arg(long)]
    pub client_id: Option<String>,
    /// MQTT user name, when the broker checks credentials (iotmon's broker: the client id).
    #[arg(long, env = "IOTMON_MQTT_USERNAME")]
    pub username: Option<String>,
    /// MQTT password (prefer the environment variable or --password-file to keep it out of
    /// the process list).
    #[arg(long, env = "IOTMON_MQTT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// File whose first line is the MQTT password.
    #[arg(long, conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl RemoteArgs {
    /// The login for `role`: explicit client id, else the user name, else `iotmon-ROLE-PID`.
    ///
    /// # Errors
    /// The client id cannot name a topic, or the password file cannot be read.
    pub fn login(&self, role: &str) -> anyhow::Result<Login> {
        if let Some(client_id) = &self.client_id {
            check_client_id(client_id)?;
        }
        let password = match &self.password_file {
            Some(path) => Some(read_first_line(path)?),
            None => self.password.clone(),
        };
        let client_id = self
            .client_id
            .clone()
            .or_else(|| self.username.clone())
            .unwrap_or_else(|| format!("iotmon-{role}-{}", std::process::id()));
        Ok(Login {
            client_id,
            username: self.username.clone(),
            password,
        })
    }
}

/// Roles name topics after their client id (a dashboard's history replies come on
/// `iotmon/history/reply/<client id>`): an empty one, which the broker would replace by one of
/// its own, or one with a wildcard, which no subscription can name exactly, would leave
/// replies nowhere to go.
fn check_client_id(client_id: &str) -> anyhow::Result<()> {
    if client_id.is_empty() || client_id.contains(['+', '#']) {
        anyhow::bail!(
            "--client-id {client_id:?} cannot be used: iotmon names topics after the client id, \
             so it must be non-empty and hold neither '+' nor '#'"
        );
    }
    Ok(())
}

fn read_first_line(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// `iotmon simulate`: a fleet of devices, or (`simulate viewers`) fake dashboard viewers.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimulateArgs {
    #[command(subcommand)]
    pub what: Option<SimulateCommand>,
    #[command(flatten)]
    pub fleet: FleetFlags,
}

/// What `iotmon simulate` can simulate besides devices.
#[derive(Debug, Subcommand)]
pub enum SimulateCommand {
    /// Fake dashboard viewers: WebSocket sessions that view devices and measure how long a
    /// reading takes from its device to the screen.
    Viewers(ViewerArgs),
}

/// `iotmon simulate viewers`: fake dashboard viewers.
#[derive(Debug, Args)]
pub struct ViewerArgs {
    /// The dashboard's WebSocket: ws://HOST:PORT/ws.
    #[arg(long)]
    pub url: String,
    /// Concurrent viewer sessions.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    /// Devices on each viewer's screen.
    #[arg(long, default_value_t = 100)]
    pub visible: usize,
    /// View the ids of a simulated fleet of this many devices (as `simulate --devices N`
    /// lays them out) instead of asking the dashboard's /api/devices.
    #[arg(long)]
    pub fleet_devices: Option<usize>,
    /// Groups to subscribe to, so that their alerts reach the viewer whatever it views
    /// (alerts are measured from the raising reading's ts to their arrival).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// How many viewers (the first ones) subscribe to --groups (default: all of them).
    #[arg(long)]
    pub group_viewers: Option<usize>,
    /// Mean time between scrolls (a new view); 0 never scrolls.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub scroll_every: Duration,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Open the sessions spread over this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// Seed of the windows and scroll times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

impl ViewerArgs {
    /// The crowd these flags describe.
    pub fn viewers(&self) -> iotmon_simulator::viewers::ViewerConfig {
        iotmon_simulator::viewers::ViewerConfig {
            url: self.url.clone(),
            viewers: self.viewers,
            visible: self.visible,
            devices: self.fleet_devices.map(|devices| {
                iotmon_simulator::layout(devices)
                    .into_iter()
                    .map(|device| device.id)
                    .collect()
            }),
            groups: self.groups.clone(),
            group_viewers: self.group_viewers.unwrap_or(self.viewers),
            scroll_every: Some(self.scroll_every).filter(|every| !every.is_zero()),
            duration: self.duration,
            ramp: self.ramp,
            seed: self.seed,
        }
    }
}

/// A simulated fleet of devices: a fleet file and these flags over it. Unset flags keep the
/// file's settings, or the defaults (see docs/simulator.md).
#[derive(Debug, Args)]
pub struct FleetFlags {
    /// The fleet described in TOML, with the flags' names as keys (see
    /// simulator/fleet.example.toml); flags override it.
    #[arg(long, env = "IOTMON_FLEET_FILE")]
    pub fleet_file: Option<PathBuf>,
    /// Every fleet setting, as a flag.
    #[command(flatten)]
    pub description: FleetDescription,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

impl FleetFlags {
    /// The fleet file, if any, with these flags over it, validated.
    ///
    /// # Errors
    /// The fleet file cannot be read or holds an unknown key or a bad value, no broker is
    /// given, an unreadable password or CA file, or a fleet that cannot run (see
    /// `FleetConfig::validate`).
    pub fn fleet(&self) -> anyhow::Result<iotmon_simulator::FleetConfig> {
        let file = match &self.fleet_file {
            Some(path) => FleetDescription::load(path)?,
            None => FleetDescription::default(),
        };
        Ok(file.overridden_by(self.description.clone()).resolve()?)
    }
}

/// `iotmon bench <scenario>`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// reference, stress, fanout, broker, viewer-cost, faults or split.
    pub scenario: iotmon_bench::Scenario,
    /// Devices in the fleet (default: the scenario's).
    #[arg(long)]
    pub devices: Option<usize>,
    /// Each device publishes once per interval (default: the scenario's).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Devices per MQTT connection (gateway mode).
    #[arg(long)]
    pub devices_per_connection: Option<usize>,
    /// Readings per message (batches of readings as JSON arrays).
    #[arg(long)]
    pub readings_per_message: Option<usize>,
    /// Fake viewers (fanout: the first step).
    #[arg(long)]
    pub viewers: Option<usize>,
    /// Devices on each viewer's screen.
    #[arg(long)]
    pub visible: Option<usize>,
    /// Chance per reading that a device starts an anomaly, caught by the bench's alert rule
    /// (reference: 0.002, about 4 alerts/s at 10K devices every 5 s; others: 0, no rule).
    #[arg(long)]
    pub anomaly_rate: Option<f64>,
    /// Load before each measurement window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Length of each measurement window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub measure: Duration,
    /// Config file for the `iotmon serve` or `iotmon broker` under test.
    #[arg(long, alias = "serve-config")]
    pub iotmon_config: Option<PathBuf>,
    /// broker: connection counts to compare at.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub connections: Vec<usize>,
    /// broker: QoS levels to compare at.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub qos: Vec<u8>,
    /// broker: offered messages/s; stress: the first step's readings/s.
    #[arg(long)]
    pub rate: Option<f64>,
    /// stress: highest readings/s tried; fanout: most viewers tried.
    #[arg(long)]
    pub max: Option<f64>,
    /// stress and fanout: each step multiplies the load by this.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// viewer-cost: fleet sizes to measure at, smallest first.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub fleets: Vec<usize>,
    /// broker: at most this many messages per socket write (1: one write per message, like
    /// single devices; default: what a connection owes every 100 ms in one write).
    #[arg(long)]
    pub write_batch: Option<usize>,
    /// broker: search iotmon's broker only, without mosquitto (e.g. to compare builds).
    #[arg(long)]
    pub iotmon_only: bool,
    /// faults: which to run, in order: kill (kill -9 of serve), influx (an InfluxDB outage),
    /// stalled (viewers that never read), storm (a reconnect storm), disk (a full disk).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,influx,stalled,storm,disk"
    )]
    pub faults: Vec<iotmon_bench::FaultKind>,
    /// faults: how long the InfluxDB server stays down.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// faults: viewers that connect, send a view and never read.
    #[arg(long)]
    pub stalled: Option<usize>,
    /// The iotmon binary to measure (default: this one), e.g. another build to compare.
    #[arg(long)]
    pub iotmon: Option<PathBuf>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// The benchmark these flags describe, testing the `iotmon` binary at `iotmon`.
    ///
    /// # Errors
    /// A QoS other than 0 or 1.
    pub fn bench(&self, iotmon: PathBuf) -> anyhow::Result<iotmon_bench::BenchConfig> {
        let qos = self
            .qos
            .iter()
            .map(|level| iotmon_simulator::Qos::from_level(*level))
            .collect::<Result<_, _>>()?;
        Ok(iotmon_bench::BenchConfig {
            devices: self.devices,
            interval: self.interval,
            devices_per_connection: self.devices_per_connection,
            readings_per_message: self.readings_per_message,
            viewers: self.viewers,
            visible: self.visible,
            anomaly_rate: self.anomaly_rate,
            warmup: self.warmup,
            measure: self.measure,
            iotmon_config: self.iotmon_config.clone(),
            connections: self.connections.clone(),
            qos,
            rate: self.rate,
            max: self.max,
            step_factor: self.step_factor,
            fleets: self.fleets.clone(),
            write_batch: self.write_batch,
            iotmon_only: self.iotmon_only,
            faults: self.faults.clone(),
            outage: self.outage,
            stalled: self.stalled,
            ..iotmon_bench::BenchConfig::new(iotmon, self.scenario)
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn devices_options_go_before_or_after_the_action() {
        for args in [
            &["iotmon", "devices", "--data-dir", "d", "add", "dev-1"][..],
            &[
                "iotmon",
                "devices",
                "add",
                "dev-1",
                "--data-dir",
                "d",
                "--password-stdin",
            ],
        ] {
            let cli = Cli::try_parse_from(args).expect("valid");
            let Command::Devices(devices) = cli.command else {
                panic!("expected devices");
            };
            assert_eq!(devices.data_dir, Some(PathBuf::from("d")));
            assert!(matches!(devices.action, DeviceAction::Add { .. }));
        }
    }

    #[test]
    fn a_client_id_that_cannot_name_a_topic_is_refused() {
        let login = |client_id: &str| {
            let cli = Cli::try_parse_from([
                "iotmon",
                "dashboard",
                "--broker",
                "mqtt://127.0.0.1:1883",
                "--client-id",
                client_id,
            ])
            .expect("valid command line");
            let Command::Dashboard(dashboard) = cli.command else {
                panic!("expected dashboard");
            };
            dashboard.remote.login("dashboard")
        };
        for refused in ["", "dash#1", "dash+1"] {
            let error = login(refused).expect_err(refused).to_string();
            assert!(error.contains("--client-id"), "{error}");
        }
        assert_eq!(login("dash-1").expect("usable").client_id, "dash-1");
    }

    fn fleet_of(args: &[&str]) -> anyhow::Result<iotmon_simulator::FleetConfig> {
        let cli = Cli::try_parse_from(args).expect("valid command line");
        let Command::Simulate(simulate) = cli.command else {
            panic!("expected simulate");
        };
        simulate.fleet.fleet()
    }

    #[test]
    fn fleet_flags_override_the_fleet_file() {
        let dir = std::env::temp_dir().join(format!("iotmon-cli-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("fleet.toml");
        std::fs::write(
            &file,
            "broker = \"mqtt://127.0.0.1:1884\"\nmqtt_version = 5\ndevices = 40\nqos = 1\n",
        )
        .expect("write the fleet file");
        let file = file.to_str().expect("UTF-8 path");
        let config = fleet_of(&["iotmon", "simulate", "--fleet-file", file, "--devices", "3"])
            .expect("valid fleet");
        assert_eq!(config.broker.port, 1884);
        assert_eq!(config.mqtt_version, iotmon_simulator::MqttVersion::V5);
        assert_eq!(
            (config.devices, config.qos),
            (3, iotmon_simulator::Qos::AtLeastOnce)
        );
        assert!(!config.presence, "off unless asked for");
        // `--presence` alone turns it on; `--qos` overrides the file's.
        let config = fleet_of(&[
            "iotmon",
            "simulate",
            "--fleet-file",
            file,
            "--presence",
            "--qos",
            "0",
        ])
        .expect("valid fleet");
        assert!(config.presence);
        assert_eq!(
            (config.devices, config.qos),
            (40, iotmon_simulator::Qos::AtMostOnce)
        );

        let error = fleet_of(&["iotmon", "simulate", "--devices", "3"]).expect_err("no broker");
        assert!(error.to_string().contains("broker is required"), "{error}");
        std::fs::write(dir.join("typo.toml"), "devises = 3\n").expect("write");
        let typo = dir.join("typo.toml");
        let error = fleet_of(&[
            "iotmon",
            "simulate",
            "--fleet-file",
            typo.to_str().expect("UTF-8"),
        ])
        .expect_err("unknown key");
        assert!(error.to_string().contains("devises"), "{error}");
    }

    /// `simulate --help` states the fleet's defaults; they are `FleetConfig`'s.
    #[test]
    fn the_fleet_defaults_in_the_help_are_the_simulators() {
        let defaults = iotmon_simulator::FleetConfig::default();
        let shape = iotmon_simulator::Shape::default();
        assert_eq!(defaults.devices, 1000);
        assert_eq!(defaults.interval, Duration::from_secs(5));
        assert_eq!(
            (
                shape.devices_per_floor,
                shape.floors_per_building,
                shape.buildings_per_site
            ),
            (20, 5, 4)
        );
        assert_eq!(defaults.layout, iotmon_simulator::Layout::Shape(shape));
        assert_eq!(defaults.mqtt_version, iotmon_simulator::MqttVersion::V3_1_1);
        assert_eq!(defaults.qos, iotmon_simulator::Qos::AtMostOnce);
        assert_eq!((defaults.anomaly_rate, defaults.offline_rate), (0.0, 0.0));
        assert_eq!(defaults.offline_for, Duration::from_secs(30));
        assert_eq!(defaults.devices_per_connection, 1);
        assert_eq!((defaults.client_prefix.as_str(), defaults.seed), ("sim", 1));
        assert_eq!(defaults.readings_per_message, 1);
        assert_eq!(defaults.metrics, iotmon_simulator::Metric::DEFAULT);
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "iotmon",
            "serve",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--allow-anonymous",
        ])
        .expect("valid");
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let config = args.resolve().expect("resolves");
        assert_eq!(config.broker.mqtt_listen.port(), 0);
        assert!(config.broker.allow_anonymous);
        assert_eq!(
            config.dashboard.http_listen,
            Config::default().dashboard.http_listen
        );
    }
}
