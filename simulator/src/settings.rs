//! A fleet as its user describes it: a fleet file (TOML, `iotmon simulate --fleet-file`) and
//! command-line flags over it, every setting optional, resolved onto [`FleetConfig`]'s
//! defaults and validated before anything connects. The file's keys are the flags' names
//! (`devices_per_connection` for `--devices-per-connection`), plus `[[groups]]` to list
//! groups and devices by hand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use iotmon_wire::mqtt::BrokerUrl;
use serde::{Deserialize, Deserializer};

use crate::config::{read_ca_file, read_password_file};
use crate::layout::{device_id, Group, Layout, Shape};
use crate::{FleetConfig, Metric, MqttVersion, Qos, SimulatorError};

/// Settings of a fleet, each `None` when not given. [`FleetSettings::overridden_by`] lays
/// one set over another (flags over the file); [`FleetSettings::resolve`] fills in the
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSettings {
    /// `mqtt://HOST:PORT`; required (from the file or the flags).
    #[serde(deserialize_with = "broker_url")]
    pub broker: Option<BrokerUrl>,
    pub mqtt_version: Option<MqttVersion>,
    /// Devices of a generated layout; with `groups`, their total instead.
    pub devices: Option<usize>,
    pub devices_per_floor: Option<usize>,
    pub floors_per_building: Option<usize>,
    pub buildings_per_site: Option<usize>,
    /// Groups listed by hand, instead of a generated layout.
    pub groups: Option<Vec<GroupSettings>>,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub duration: Option<Duration>,
    pub metrics: Option<Vec<Metric>>,
    pub qos: Option<Qos>,
    pub readings_per_message: Option<usize>,
    pub anomaly_rate: Option<f64>,
    pub seed: Option<u64>,
    pub presence: Option<bool>,
    pub offline_rate: Option<f64>,
    #[serde(with = "humantime_serde")]
    pub offline_for: Option<Duration>,
    pub devices_per_connection: Option<usize>,
    pub client_prefix: Option<String>,
    pub password: Option<String>,
    /// In a fleet file, relative to the file's directory.
    pub password_file: Option<PathBuf>,
    /// In a fleet file, relative to the file's directory.
    pub tls_ca: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub ramp: Option<Duration>,
}

/// A `[[groups]]` entry: a group path and its devices, by count (generated ids numbered in
/// fleet order) or by id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    /// `hq/building-a/floor-3`.
    pub path: String,
    /// How many devices with generated ids (`sensor-000001`, ...).
    pub devices: Option<usize>,
    /// The devices' ids.
    pub ids: Option<Vec<String>>,
}

impl FleetSettings {
    /// Reads the fleet file at `path`; relative paths in it are taken from its directory.
    ///
    /// # Errors
    /// [`SimulatorError::FleetFile`]: the file cannot be read, is not TOML, holds an unknown
    /// key or a value of the wrong kind (the message says where).
    pub fn load(path: &Path) -> Result<FleetSettings, SimulatorError> {
        let fault = |error: &dyn std::fmt::Display| {
            SimulatorError::FleetFile(format!("{}: {error}", path.display()))
        };
        let text = std::fs::read_to_string(path).map_err(|error| fault(&error))?;
        let mut settings = FleetSettings::parse(&text).map_err(|error| fault(&error))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for file in [&mut settings.password_file, &mut settings.tls_ca]
            .into_iter()
            .flatten()
        {
            *file = dir.join(&*file);
        }
        Ok(settings)
    }

    /// Parses a fleet file's text.
    ///
    /// # Errors
    /// Not TOML, an unknown key, or a value of the wrong kind.
    pub fn parse(text: &str) -> Result<FleetSettings, toml::de::Error> {
        toml::from_str(text)
    }

    /// These settings with every one that `over` gives replaced. A password given either way
    /// in `over` replaces both ways here.
    pub fn overridden_by(self, over: FleetSettings) -> FleetSettings {
        let credentials = if over.password.is_some() || over.password_file.is_some() {
            (over.password, over.password_file)
        } else {
            (self.password, self.password_file)
        };
        FleetSettings {
            broker: over.broker.or(self.broker),
            mqtt_version: over.mqtt_version.or(self.mqtt_version),
            devices: over.devices.or(self.devices),
            devices_per_floor: over.devices_per_floor.or(self.devices_per_floor),
            floors_per_building: over.floors_per_building.or(self.floors_per_building),
            buildings_per_site: over.buildings_per_site.or(self.buildings_per_site),
            groups: over.groups.or(self.groups),
            interval: over.interval.or(self.interval),
            duration: over.duration.or(self.duration),
            metrics: over.metrics.or(self.metrics),
            qos: over.qos.or(self.qos),
            readings_per_message: over.readings_per_message.or(self.readings_per_message),
            anomaly_rate: over.anomaly_rate.or(self.anomaly_rate),
            seed: over.seed.or(self.seed),
            presence: over.presence.or(self.presence),
            offline_rate: over.offline_rate.or(self.offline_rate),
            offline_for: over.offline_for.or(self.offline_for),
            devices_per_connection: over.devices_per_connection.or(self.devices_per_connection),
            client_prefix: over.client_prefix.or(self.client_prefix),
            password: credentials.0,
            password_file: credentials.1,
            tls_ca: over.tls_ca.or(self.tls_ca),
            ramp: over.ramp.or(self.ramp),
        }
    }

    /// The fleet's device count and layout: the groups listed, or the generated layout's
    /// settings over the default shape.
    ///
    /// # Errors
    /// Groups together with a generated layout's settings, or a bad `[[groups]]` entry.
    fn layout(&mut self) -> Result<(usize, Layout), SimulatorError> {
        let shape_given = [
            self.devices,
            self.devices_per_floor,
            self.floors_per_building,
            self.buildings_per_site,
        ]
        .iter()
        .any(Option::is_some);
        if let Some(groups) = self.groups.take() {
            if shape_given {
                return Err(SimulatorError::GroupsAndShape);
            }
            return listed_groups(groups);
        }
        let default = Shape::default();
        let shape = Shape {
            devices_per_floor: self.devices_per_floor.unwrap_or(default.devices_per_floor),
            floors_per_building: self
                .floors_per_building
                .unwrap_or(default.floors_per_building),
            buildings_per_site: self
                .buildings_per_site
                .unwrap_or(default.buildings_per_site),
        };
        let devices = self.devices.unwrap_or(FleetConfig::default().devices);
        Ok((devices, Layout::Shape(shape)))
    }

    /// The fleet these settings describe, defaults filling the gaps, validated (see
    /// [`FleetConfig::validate`]); reads the password and CA files.
    ///
    /// # Errors
    /// No broker, both a password and a password file, groups together with a generated
    /// layout's settings, a `[[groups]]` entry without exactly one of `devices` and `ids`,
    /// an unreadable file, or anything [`FleetConfig::validate`] refuses.
    pub fn resolve(mut self) -> Result<FleetConfig, SimulatorError> {
        let defaults = FleetConfig::default();
        let (devices, layout) = self.layout()?;
        let broker = self.broker.ok_or(SimulatorError::NoBroker)?;
        let password = match (self.password, self.password_file) {
            (Some(_), Some(_)) => return Err(SimulatorError::TwoPasswords),
            (Some(password), None) => Some(password),
            (None, Some(file)) => Some(read_password_file(&file)?),
            (None, None) => None,
        };
        let config = FleetConfig {
            broker,
            mqtt_version: self.mqtt_version.unwrap_or(defaults.mqtt_version),
            devices,
            layout,
            interval: self.interval.unwrap_or(defaults.interval),
            duration: self.duration.or(defaults.duration),
            client_prefix: self.client_prefix.unwrap_or(defaults.client_prefix),
            seed: self.seed.unwrap_or(defaults.seed),
            metrics: self.metrics.unwrap_or(defaults.metrics),
            qos: self.qos.unwrap_or(defaults.qos),
            anomaly_rate: self.anomaly_rate.unwrap_or(defaults.anomaly_rate),
            offline_rate: self.offline_rate.unwrap_or(defaults.offline_rate),
            offline_for: self.offline_for.unwrap_or(defaults.offline_for),
            presence: self.presence.unwrap_or(defaults.presence),
            devices_per_connection: self
                .devices_per_connection
                .unwrap_or(defaults.devices_per_connection),
            password,
            ramp: self.ramp.or(defaults.ramp),
            readings_per_message: self
                .readings_per_message
                .unwrap_or(defaults.readings_per_message),
            tls_ca: self.tls_ca.as_deref().map(read_ca_file).transpose()?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The layout of `[[groups]]` entries and its device count; generated ids are numbered by
/// their place in the fleet.
fn listed_groups(entries: Vec<GroupSettings>) -> Result<(usize, Layout), SimulatorError> {
    let total: usize = entries
        .iter()
        .map(|entry| match (entry.devices, &entry.ids) {
            (Some(count), None) => Ok(count),
            (None, Some(ids)) => Ok(ids.len()),
            _ => Err(SimulatorError::Layout(format!(
                "group {:?}: give either `devices` or `ids`",
                entry.path
            ))),
        })
        .sum::<Result<_, _>>()?;
    let mut next = 0;
    let groups = entries
        .into_iter()
        .map(|entry| {
            let ids = entry.ids.unwrap_or_else(|| {
                let count = entry.devices.unwrap_or(0);
                (next..next + count)
                    .map(|index| device_id(index, total))
                    .collect()
            });
            next += ids.len();
            Group {
                path: entry.path,
                ids,
            }
        })
        .collect();
    Ok((total, Layout::Groups(groups)))
}

/// A broker address from its text, so a bad one is reported with its place in the file.
fn broker_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<BrokerUrl>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> FleetSettings {
        FleetSettings::parse(text).expect("valid fleet file")
    }

    /// The example in the repository parses to the fleet it describes, so it cannot rot.
    #[test]
    fn the_example_fleet_file_describes_a_known_fleet() {
        let example = settings(include_str!("../fleet.example.toml"));
        let config = example.resolve().expect("the example is valid");
        let expected = FleetConfig {
            broker: "mqtt://127.0.0.1:1883".parse().expect("address"),
            mqtt_version: MqttVersion::V5,
            devices: 2000,
            layout: Layout::Shape(Shape {
                devices_per_floor: 25,
                floors_per_building: 4,
                buildings_per_site: 2,
            }),
            interval: Duration::from_secs(10),
            duration: Some(Duration::from_secs(300)),
            client_prefix: "fleet".into(),
            seed: 42,
            metrics: vec![Metric::Temperature, Metric::Humidity, Metric::Co2],
            qos: Qos::AtLeastOnce,
            anomaly_rate: 0.001,
            offline_rate: 0.0005,
            offline_for: Duration::from_secs(60),
            presence: true,
            devices_per_connection: 10,
            password: None,
            ramp: Some(Duration::from_secs(5)),
            readings_per_message: 1,
            tls_ca: None,
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn an_empty_file_with_a_broker_is_the_default_fleet() {
        let config = settings("broker = \"mqtt://127.0.0.1:1883\"")
            .resolve()
            .expect("valid");
        assert_eq!(config, FleetConfig::default());
        assert_eq!(
            FleetSettings::default().resolve(),
            Err(SimulatorError::NoBroker)
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_place() {
        for (text, said) in [
            ("devices_per_flor = 3", "devices_per_flor"),
            ("qos = 2", "QoS 2 is not offered"),
            ("mqtt_version = 4", "MQTT version \"4\" is not offered"),
            (
                "metrics = [\"temperature\", \"noise\"]",
                "unknown metric \"noise\"",
            ),
            ("interval = \"5 parsecs\"", "interval"),
            ("broker = \"http://x\"", "unsupported scheme"),
            ("devices = -1", "devices"),
            ("[[groups]]\npath = \"a\"\ncount = 3", "count"),
        ] {
            let error = FleetSettings::parse(text).expect_err(text).to_string();
            assert!(error.contains(said), "{text}: {error}");
        }
        let invalid = settings("broker = \"mqtt://h:1\"\nanomaly_rate = 2.0").resolve();
        assert_eq!(invalid, Err(SimulatorError::Rate("anomaly rate")));
        let both = settings("broker = \"mqtt://h:1\"\npassword = \"a\"\npassword_file = \"f\"");
        assert_eq!(both.resolve(), Err(SimulatorError::TwoPasswords));
    }

    #[test]
    fn flags_override_the_file() {
        let file = settings(
            "broker = \"mqtt://file:1\"\ndevices = 50\nqos = 1\npassword_file = \"pw\"\n\
             interval = \"2s\"",
        );
        let flags = FleetSettings {
            devices: Some(7),
            password: Some("from-flag".into()),
            mqtt_version: Some(MqttVersion::V5),
            ..FleetSettings::default()
        };
        let config = file.overridden_by(flags).resolve().expect("valid");
        assert_eq!(config.broker, "mqtt://file:1".parse().expect("address"));
        assert_eq!((config.devices, config.qos), (7, Qos::AtLeastOnce));
        assert_eq!(config.interval, Duration::from_secs(2));
        assert_eq!(config.mqtt_version, MqttVersion::V5);
        assert_eq!(config.password.as_deref(), Some("from-flag"));
    }

    #[test]
    fn groups_list_devices_by_count_or_by_id() {
        let text = r#"
            broker = "mqtt://127.0.0.1:1883"
            [[groups]]
            path = "hq/building-a/floor-3"
            devices = 2
            [[groups]]
            path = "hq/lab"
            ids = ["temp-0042", "co2-7"]
            [[groups]]
            path = "warehouse"
            devices = 1
        "#;
        let config = settings(text).resolve().expect("valid");
        assert_eq!(config.devices, 5);
        let placed: Vec<_> = config
            .layout
            .place(config.devices)
            .into_iter()
            .map(|device| format!("{}/{}", device.group, device.id))
            .collect();
        assert_eq!(
            placed,
            [
                "hq/building-a/floor-3/sensor-000001",
                "hq/building-a/floor-3/sensor-000002",
                "hq/lab/temp-0042",
                "hq/lab/co2-7",
                "warehouse/sensor-000005",
            ]
        );
        let with_devices = format!("devices = 5\n{text}");
        assert_eq!(
            settings(&with_devices).resolve(),
            Err(SimulatorError::GroupsAndShape)
        );
        let neither = "broker = \"mqtt://h:1\"\n[[groups]]\npath = \"a\"";
        let error = settings(neither).resolve().expect_err("no devices");
        assert!(error.to_string().contains("either `devices` or `ids`"));
    }

    #[test]
    fn paths_in_a_fleet_file_are_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("iotmon-fleet-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("pw"), "s3cret\n").expect("password file");
        let file = dir.join("fleet.toml");
        std::fs::write(&file, "broker = \"mqtt://h:1\"\npassword_file = \"pw\"\n").expect("write");
        let config = FleetSettings::load(&file)
            .and_then(FleetSettings::resolve)
            .expect("valid");
        assert_eq!(config.password.as_deref(), Some("s3cret"));
        let missing = FleetSettings::load(&dir.join("nope.toml")).expect_err("no file");
        assert!(missing.to_string().contains("nope.toml"), "{missing}");
    }
}
