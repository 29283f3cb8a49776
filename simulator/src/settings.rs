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

/// Declares [`FleetDescription`] from one list of its settings, and with it the merge that
/// lays one description over another, field by field: a setting added to the list is a
/// fleet-file key, a flag and part of the merge at once, and none can be forgotten in one of
/// them. Every field must be an `Option`.
macro_rules! fleet_description {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $type:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: $type,
            )*
        }

        impl $name {
            /// Every setting of `over` that is given, the one of `self` where it is not.
            fn each_given_in(self, over: $name) -> $name {
                $name {
                    $($field: over.$field.or(self.$field),)*
                }
            }
        }
    };
}

fleet_description! {
/// A fleet as its user describes it, each setting `None` when not given: the keys of a fleet
/// file, and (with the `cli` feature) the same settings as command-line flags, declared once
/// here. [`FleetDescription::overridden_by`] lays one description over another (flags over
/// the file); [`FleetDescription::resolve`] fills in the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct FleetDescription {
    /// The broker: mqtt://HOST:PORT (required here or in the fleet file).
    #[serde(deserialize_with = "broker_url")]
    #[cfg_attr(feature = "cli", arg(long, env = "IOTMON_BROKER"))]
    pub broker: Option<BrokerUrl>,
    /// MQTT version of every connection: 3.1.1 (default) or 5.
    #[cfg_attr(feature = "cli", arg(long))]
    pub mqtt_version: Option<MqttVersion>,
    /// Simulated devices (default 1000); with groups listed by hand, their total instead.
    #[cfg_attr(feature = "cli", arg(long))]
    pub devices: Option<usize>,
    /// Devices per floor in the layout (site-N/building-X/floor-N/sensor-NNNNNN; default 20).
    #[cfg_attr(feature = "cli", arg(long))]
    pub devices_per_floor: Option<usize>,
    /// Floors per building in the layout (default 5).
    #[cfg_attr(feature = "cli", arg(long))]
    pub floors_per_building: Option<usize>,
    /// Buildings per site in the layout (default 4); sites are added as needed.
    #[cfg_attr(feature = "cli", arg(long))]
    pub buildings_per_site: Option<usize>,
    /// Groups listed by hand (`[[groups]]`, fleet files only), instead of a generated layout.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub groups: Option<Vec<GroupSettings>>,
    /// Each device publishes once per interval (default 5s).
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "cli", arg(long, value_parser = humantime::parse_duration))]
    pub interval: Option<Duration>,
    /// Stop after this long (default: until interrupted).
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "cli", arg(long, value_parser = humantime::parse_duration))]
    pub duration: Option<Duration>,
    /// Metrics each device reports: temperature, humidity, pressure, co2, battery (default
    /// the first three).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
    pub metrics: Option<Vec<Metric>>,
    /// MQTT QoS of readings: 0 (default) or 1.
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_qos))]
    pub qos: Option<Qos>,
    /// Readings per message (default 1): more than 1 sends batches (JSON arrays) sampled
    /// over the interval.
    #[cfg_attr(feature = "cli", arg(long))]
    pub readings_per_message: Option<usize>,
    /// Chance per reading that a device starts an anomaly (values far past alert
    /// thresholds for 3 readings), 0 (default) to 1.
    #[cfg_attr(feature = "cli", arg(long))]
    pub anomaly_rate: Option<f64>,
    /// Seed of the sensor models and behaviour, for reproducible fleets (default 1).
    #[cfg_attr(feature = "cli", arg(long))]
    pub seed: Option<u64>,
    /// Publish presence: retained `online`/`offline` on status/<group>/<id>, with a last will.
    #[cfg_attr(
        feature = "cli",
        arg(long, num_args = 0..=1, default_missing_value = "true")
    )]
    pub presence: Option<bool>,
    /// Chance per reading that a device goes offline, 0 (default) to 1.
    #[cfg_attr(feature = "cli", arg(long))]
    pub offline_rate: Option<f64>,
    /// How long an offline device stays away (default 30s).
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "cli", arg(long, value_parser = humantime::parse_duration))]
    pub offline_for: Option<Duration>,
    /// Devices sharing one MQTT connection (gateway mode; default 1), so a fleet larger than
    /// the process's ~19,500 sockets fits.
    #[cfg_attr(feature = "cli", arg(long))]
    pub devices_per_connection: Option<usize>,
    /// Prefix of the MQTT client ids (`<prefix>-<device id>`; default `sim`); empty for the
    /// bare device id.
    #[cfg_attr(feature = "cli", arg(long))]
    pub client_prefix: Option<String>,
    /// Password of every connection (the username is the client id).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "IOTMON_DEVICE_PASSWORD", conflicts_with = "password_file")
    )]
    pub password: Option<String>,
    /// File holding the password (first line); in a fleet file, relative to its directory.
    #[cfg_attr(feature = "cli", arg(long))]
    pub password_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificates in this PEM file (the broker's
    /// certificate must name the broker's host); in a fleet file, relative to its directory.
    #[cfg_attr(feature = "cli", arg(long))]
    pub tls_ca: Option<PathBuf>,
    /// Open the connections spread over this long (default: the interval or 1 s, whichever
    /// is shorter).
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "cli", arg(long, value_parser = humantime::parse_duration))]
    pub ramp: Option<Duration>,
}
}

/// `--qos 0|1`.
#[cfg(feature = "cli")]
fn parse_qos(text: &str) -> Result<Qos, String> {
    let level = text
        .parse()
        .map_err(|_| format!("{text:?} is not a QoS: use 0 or 1"))?;
    Qos::from_level(level).map_err(|error| error.to_string())
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

impl FleetDescription {
    /// Reads the fleet file at `path`; relative paths in it are taken from its directory.
    ///
    /// # Errors
    /// [`SimulatorError::FleetFileRead`]: the file cannot be read;
    /// [`SimulatorError::FleetFileInvalid`]: it is not TOML, holds an unknown key or a value of
    /// the wrong kind (the message says where).
    pub fn load(path: &Path) -> Result<FleetDescription, SimulatorError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SimulatorError::FleetFileRead {
                path: path.to_path_buf(),
                source,
            })?;
        let mut settings =
            FleetDescription::parse(&text).map_err(|source| SimulatorError::FleetFileInvalid {
                path: path.to_path_buf(),
                source,
            })?;
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
    pub fn parse(text: &str) -> Result<FleetDescription, toml::de::Error> {
        toml::from_str(text)
    }

    /// These settings with every one that `over` gives replaced. A password given either way
    /// in `over` replaces both ways here.
    pub fn overridden_by(mut self, over: FleetDescription) -> FleetDescription {
        // The password and its file are one setting given two ways: a flag's password must
        // not meet the file's password file (which `resolve` refuses as two passwords).
        if over.password.is_some() || over.password_file.is_some() {
            self.password = None;
            self.password_file = None;
        }
        self.each_given_in(over)
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

    fn settings(text: &str) -> FleetDescription {
        FleetDescription::parse(text).expect("valid fleet file")
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
            FleetDescription::default().resolve(),
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
            let error = FleetDescription::parse(text).expect_err(text).to_string();
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
        let flags = FleetDescription {
            devices: Some(7),
            password: Some("from-flag".into()),
            mqtt_version: Some(MqttVersion::V5),
            ..FleetDescription::default()
        };
        let config = file.overridden_by(flags).resolve().expect("valid");
        assert_eq!(config.broker, "mqtt://file:1".parse().expect("address"));
        assert_eq!((config.devices, config.qos), (7, Qos::AtLeastOnce));
        assert_eq!(config.interval, Duration::from_secs(2));
        assert_eq!(config.mqtt_version, MqttVersion::V5);
        assert_eq!(config.password.as_deref(), Some("from-flag"));
    }

    /// A description giving every setting, the values of `side` 0 and `side` 1 all
    /// different. Built field by field with no `..`, so a setting added to the description
    /// does not compile here until it is given too, and then takes part in the tests below.
    fn every_setting(side: u8) -> FleetDescription {
        let pick = |values: [u64; 2]| values[usize::from(side)];
        let secs = |values: [u64; 2]| Some(Duration::from_secs(pick(values)));
        let path = |name: &str| Some(PathBuf::from(format!("{name}-{side}")));
        FleetDescription {
            broker: Some(format!("mqtt://host-{side}:1883").parse().expect("address")),
            mqtt_version: Some([MqttVersion::V3_1_1, MqttVersion::V5][usize::from(side)]),
            devices: Some(pick([10, 20]) as usize),
            devices_per_floor: Some(pick([2, 3]) as usize),
            floors_per_building: Some(pick([4, 5]) as usize),
            buildings_per_site: Some(pick([6, 7]) as usize),
            groups: Some(vec![GroupSettings {
                path: format!("site-{side}"),
                devices: Some(1),
                ids: None,
            }]),
            interval: secs([1, 2]),
            duration: secs([30, 40]),
            metrics: Some(vec![[Metric::Co2, Metric::Pressure][usize::from(side)]]),
            qos: Some([Qos::AtMostOnce, Qos::AtLeastOnce][usize::from(side)]),
            readings_per_message: Some(pick([8, 9]) as usize),
            anomaly_rate: Some([0.1, 0.2][usize::from(side)]),
            seed: Some(pick([11, 12])),
            presence: Some(side == 1),
            offline_rate: Some([0.3, 0.4][usize::from(side)]),
            offline_for: secs([50, 60]),
            devices_per_connection: Some(pick([13, 14]) as usize),
            client_prefix: Some(format!("prefix-{side}")),
            password: Some(format!("password-{side}")),
            password_file: path("password-file"),
            tls_ca: path("ca"),
            ramp: secs([70, 80]),
        }
    }

    #[test]
    fn each_setting_given_over_wins_and_each_given_only_below_is_kept() {
        let (below, over) = (every_setting(0), every_setting(1));
        assert_ne!(below, over);
        let none = FleetDescription::default;
        assert_eq!(none().overridden_by(over.clone()), over, "given only over");
        assert_eq!(
            below.clone().overridden_by(none()),
            below,
            "given only below"
        );
        assert_eq!(
            below.overridden_by(over.clone()),
            over,
            "given on both sides"
        );
    }

    #[test]
    fn a_password_given_either_way_over_replaces_both_ways_below() {
        let below = FleetDescription {
            password: Some("below".into()),
            password_file: Some("below-file".into()),
            ..FleetDescription::default()
        };
        let password = FleetDescription {
            password: Some("over".into()),
            ..FleetDescription::default()
        };
        let merged = below.clone().overridden_by(password);
        assert_eq!(merged.password.as_deref(), Some("over"));
        assert_eq!(merged.password_file, None);
        let file = FleetDescription {
            password_file: Some("over-file".into()),
            ..FleetDescription::default()
        };
        let merged = below.clone().overridden_by(file);
        assert_eq!(merged.password, None);
        assert_eq!(merged.password_file, Some("over-file".into()));
        let kept = below.clone().overridden_by(FleetDescription::default());
        assert_eq!(kept, below);
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
        let config = FleetDescription::load(&file)
            .and_then(FleetDescription::resolve)
            .expect("valid");
        assert_eq!(config.password.as_deref(), Some("s3cret"));
        let missing = FleetDescription::load(&dir.join("nope.toml")).expect_err("no file");
        assert!(missing.to_string().contains("nope.toml"), "{missing}");
    }
}
