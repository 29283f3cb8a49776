//! The command line: one subcommand per way of running iotmon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use iotmon_wire::mqtt::BrokerUrl;

use crate::config::Config;

/// Real-time monitoring for fleets of IoT sensors.
#[derive(Debug, Parser)]
#[command(name = "iotmon", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

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
    Bridge(RemoteArgs),
    /// A dashboard alone, fed by a bridge through any MQTT broker.
    Dashboard(RemoteArgs),
    /// Simulated devices publishing readings to a broker.
    Simulate(SimulateArgs),
    /// Prints the default configuration file.
    Config,
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
    /// HTTP listener for the web UI and API (port 0 picks a free port).
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
        Ok(config)
    }
}

/// A role that connects to an MQTT broker it does not run.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The broker: mqtt://HOST:PORT.
    #[arg(long, env = "IOTMON_BROKER")]
    pub broker: BrokerUrl,
    /// MQTT client id (unique per process on the broker); defaults to the role and process id.
    #[arg(long)]
    pub client_id: Option<String>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The broker: mqtt://HOST:PORT.
    #[arg(long, env = "IOTMON_BROKER")]
    pub broker: BrokerUrl,
    /// Simulated devices, each with its own MQTT connection.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Each device publishes once per interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Prefix of the devices' MQTT client ids, so two fleets on one broker do not collide.
    #[arg(long, default_value = "sim")]
    pub client_prefix: String,
    /// Seed of the sensor models, for reproducible readings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
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
