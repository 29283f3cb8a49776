//! What a simulated fleet looks like and where it publishes, with its defaults in one place.

use std::time::Duration;

use std::collections::HashSet;

use iotmon_wire::mqtt::{BrokerUrl, DEFAULT_PORT};
use iotmon_wire::topics::{parse_sensor_topic, sensor_topic};

use crate::client::MqttVersion;
use crate::layout::{Group, Layout};
use crate::sensor::Metric;
use crate::SimulatorError;

/// Most MQTT connections one simulator process opens: the machine allows 20,000 open files
/// per process and a few are needed for everything else. Larger fleets use gateway mode
/// ([`FleetConfig::devices_per_connection`]) or several processes.
pub const MAX_CONNECTIONS: usize = 19_500;

/// Most readings in one message: a batch of readings stays well under the 16 KiB packet limit.
pub const MAX_BATCH: usize = 100;

/// MQTT quality of service for readings: the simulator offers the two that sensors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "u8")]
pub enum Qos {
    /// Fire and forget: the cheapest, what most telemetry uses.
    #[default]
    AtMostOnce,
    /// Acknowledged by the broker (PUBACK), retransmitted on a persistent session.
    AtLeastOnce,
}

impl Qos {
    /// The number MQTT uses for it (0 or 1).
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
        }
    }

    /// From the number MQTT uses; QoS 2 is not offered.
    ///
    /// # Errors
    /// Anything but 0 or 1.
    pub fn from_level(level: u8) -> Result<Qos, SimulatorError> {
        match level {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            other => Err(SimulatorError::Qos(other)),
        }
    }

    pub(crate) fn to_rumqttc(self) -> rumqttc::QoS {
        match self {
            Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }

    pub(crate) fn to_rumqttc_v5(self) -> rumqttc::v5::mqttbytes::QoS {
        match self {
            Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        }
    }
}

impl TryFrom<u8> for Qos {
    type Error = SimulatorError;

    fn try_from(level: u8) -> Result<Self, Self::Error> {
        Qos::from_level(level)
    }
}

/// A simulated fleet: how many devices, how they are laid out and behave, how often they
/// publish, to which broker, for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The broker every device connects to.
    pub broker: BrokerUrl,
    /// The MQTT version every connection speaks.
    pub mqtt_version: MqttVersion,
    /// How many devices; with [`Layout::Groups`], the total of the groups' devices.
    pub devices: usize,
    /// Where the devices sit: a shape that devices fill in order (floors, buildings, then
    /// sites as needed), or groups listed by hand.
    pub layout: Layout,
    /// Each device publishes one reading per interval.
    pub interval: Duration,
    /// Stop after this long; `None` runs until shutdown.
    pub duration: Option<Duration>,
    /// Prefix of the MQTT client ids (`<prefix>-<device id>`, or the bare id when empty), so
    /// two fleets on one broker do not take over each other's sessions.
    pub client_prefix: String,
    /// Seed of every device's sensor model and behaviour, so a fleet is reproducible.
    pub seed: u64,
    /// The metrics every device reports, in payload order.
    pub metrics: Vec<Metric>,
    /// QoS of readings.
    pub qos: Qos,
    /// Chance per reading that a device starts an anomaly (readings far past alert
    /// thresholds for a few readings), 0 to 1.
    pub anomaly_rate: f64,
    /// Chance per reading that a device goes offline, 0 to 1. A device with a connection of
    /// its own drops it abruptly (the broker publishes its last will); one behind a gateway
    /// is reported `offline` by the gateway.
    pub offline_rate: f64,
    /// How long a device stays offline before it comes back.
    pub offline_for: Duration,
    /// Publish presence: `status/<group>/<id>` retained `online` on connect, `offline` on
    /// leaving, and a last will of `offline`.
    pub presence: bool,
    /// Devices sharing one MQTT connection (gateway mode); 1 gives each device its own.
    pub devices_per_connection: usize,
    /// Password sent with every connection (the username is the client id); `None` connects
    /// without credentials.
    pub password: Option<String>,
    /// Connections open spread evenly over this; `None` spreads them over the interval or a
    /// second, whichever is shorter. Large fleets with short intervals set it so the broker
    /// is not asked to accept thousands of connections at once.
    pub ramp: Option<Duration>,
    /// Readings in each message: 1 sends one JSON object per interval; more sends a batch
    /// (a JSON array) of that many readings sampled evenly over the interval, as a device
    /// that buffers between uploads does.
    pub readings_per_message: usize,
    /// Connect over TLS, trusting the certificate authorities in this PEM (rustls); `None`
    /// connects in plain TCP. The broker's certificate must name the host of `broker`.
    pub tls_ca: Option<Vec<u8>>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            broker: BrokerUrl {
                host: "127.0.0.1".to_string(),
                port: DEFAULT_PORT,
            },
            mqtt_version: MqttVersion::V3_1_1,
            devices: 1000,
            layout: Layout::default(),
            interval: Duration::from_secs(5),
            duration: None,
            client_prefix: "sim".to_string(),
            seed: 1,
            metrics: Metric::DEFAULT.to_vec(),
            qos: Qos::AtMostOnce,
            anomaly_rate: 0.0,
            offline_rate: 0.0,
            offline_for: Duration::from_secs(30),
            presence: false,
            devices_per_connection: 1,
            password: None,
            ramp: None,
            readings_per_message: 1,
            tls_ca: None,
        }
    }
}

impl FleetConfig {
    /// Checks the config before anything connects.
    ///
    /// # Errors
    /// No devices, a zero interval, no metrics, a rate outside 0..=1, an empty shape level,
    /// a bad listed group (see [`check_groups`]), zero devices per connection, or more
    /// connections than one process can open.
    pub fn validate(&self) -> Result<(), SimulatorError> {
        if self.devices == 0 {
            return Err(SimulatorError::NoDevices);
        }
        if self.interval.is_zero() {
            return Err(SimulatorError::ZeroInterval);
        }
        if self.metrics.is_empty() {
            return Err(SimulatorError::NoMetrics);
        }
        for (name, rate) in [
            ("anomaly rate", self.anomaly_rate),
            ("offline rate", self.offline_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SimulatorError::Rate(name));
            }
        }
        match &self.layout {
            Layout::Shape(shape) => {
                if shape.devices_per_floor == 0
                    || shape.floors_per_building == 0
                    || shape.buildings_per_site == 0
                {
                    return Err(SimulatorError::EmptyShape);
                }
            }
            Layout::Groups(groups) => check_groups(groups, self.devices)?,
        }
        if self.readings_per_message == 0 || self.readings_per_message > MAX_BATCH {
            return Err(SimulatorError::Batch(MAX_BATCH));
        }
        if self.devices_per_connection == 0 {
            return Err(SimulatorError::NoDevicesPerConnection);
        }
        let connections = self.connections();
        if connections > MAX_CONNECTIONS {
            return Err(SimulatorError::TooManyConnections {
                connections,
                max: MAX_CONNECTIONS,
            });
        }
        Ok(())
    }

    /// How many MQTT connections the fleet opens.
    pub fn connections(&self) -> usize {
        self.devices.div_ceil(self.devices_per_connection.max(1))
    }

    /// Readings the fleet offers per second.
    pub fn offered_rate(&self) -> f64 {
        (self.devices * self.readings_per_message) as f64 / self.interval.as_secs_f64()
    }
}

/// Checks groups listed by hand: each has devices, makes valid topics (1 to 8 levels, none
/// empty, no wildcard, no `/` in a device id), ids are unique, and `devices` is their total.
///
/// # Errors
/// [`SimulatorError::Layout`] naming the first fault.
fn check_groups(groups: &[Group], devices: usize) -> Result<(), SimulatorError> {
    let fault = |message: String| Err(SimulatorError::Layout(message));
    let mut seen = HashSet::new();
    for group in groups {
        if group.ids.is_empty() {
            return fault(format!("group {:?} has no devices", group.path));
        }
        for id in &group.ids {
            let topic = sensor_topic(&group.path, id);
            if topic.contains(['+', '#']) {
                return fault(format!(
                    "{topic:?}: MQTT wildcards (+, #) cannot be published to"
                ));
            }
            match parse_sensor_topic(&topic) {
                Ok(parsed) if parsed.device == id => {}
                Ok(_) => return fault(format!("device id {id:?} contains '/'")),
                Err(error) => return fault(format!("{topic:?}: {error}")),
            }
            if !seen.insert(id.as_str()) {
                return fault(format!("device id {id:?} is listed twice"));
            }
        }
    }
    if seen.len() != devices {
        return fault(format!(
            "the groups list {} devices, not {devices}",
            seen.len()
        ));
    }
    Ok(())
}

/// The PEM certificates in `path`, for [`FleetConfig::tls_ca`].
///
/// # Errors
/// The file cannot be read.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, SimulatorError> {
    std::fs::read(path).map_err(|source| SimulatorError::CaFile {
        path: path.to_path_buf(),
        source,
    })
}

/// The password in `path`: its first line, without the line ending.
///
/// # Errors
/// The file cannot be read.
pub fn read_password_file(path: &std::path::Path) -> Result<String, SimulatorError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimulatorError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Shape;

    #[test]
    fn default_is_valid() {
        let config = FleetConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.broker.to_string(), "mqtt://127.0.0.1:1883");
        assert_eq!(
            (config.devices, config.interval, config.duration),
            (1000, Duration::from_secs(5), None)
        );
        assert_eq!((config.client_prefix.as_str(), config.seed), ("sim", 1));
        assert_eq!(config.connections(), 1000);
        assert!((config.offered_rate() - 200.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_what_cannot_run() {
        let cases = [
            (
                FleetConfig {
                    devices: 0,
                    ..FleetConfig::default()
                },
                SimulatorError::NoDevices,
            ),
            (
                FleetConfig {
                    interval: Duration::ZERO,
                    ..FleetConfig::default()
                },
                SimulatorError::ZeroInterval,
            ),
            (
                FleetConfig {
                    metrics: Vec::new(),
                    ..FleetConfig::default()
                },
                SimulatorError::NoMetrics,
            ),
            (
                FleetConfig {
                    anomaly_rate: 1.5,
                    ..FleetConfig::default()
                },
                SimulatorError::Rate("anomaly rate"),
            ),
            (
                FleetConfig {
                    offline_rate: -0.1,
                    ..FleetConfig::default()
                },
                SimulatorError::Rate("offline rate"),
            ),
            (
                FleetConfig {
                    devices_per_connection: 0,
                    ..FleetConfig::default()
                },
                SimulatorError::NoDevicesPerConnection,
            ),
            (
                FleetConfig {
                    layout: Layout::Shape(Shape {
                        devices_per_floor: 0,
                        ..Shape::default()
                    }),
                    ..FleetConfig::default()
                },
                SimulatorError::EmptyShape,
            ),
        ];
        for (config, error) in cases {
            assert_eq!(config.validate(), Err(error));
        }
    }

    #[test]
    fn listed_groups_must_make_valid_unique_topics() {
        let fleet = |groups: &[(&str, &[&str])]| {
            let groups: Vec<Group> = groups
                .iter()
                .map(|(path, ids)| Group {
                    path: (*path).to_string(),
                    ids: ids.iter().map(ToString::to_string).collect(),
                })
                .collect();
            FleetConfig {
                devices: groups.iter().map(|group| group.ids.len()).sum(),
                layout: Layout::Groups(groups),
                ..FleetConfig::default()
            }
        };
        let good = fleet(&[("hq/lab", &["t-1", "t-2"]), ("plant", &["t-3"])]);
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            FleetConfig { devices: 4, ..good }.validate(),
            Err(SimulatorError::Layout(
                "the groups list 3 devices, not 4".into()
            ))
        );
        for (bad, why) in [
            (fleet(&[("hq", &["a", "a"])]), "listed twice"),
            (fleet(&[("hq", &[]), ("b", &["x"])]), "no devices"),
            (fleet(&[("hq//a", &["a"])]), "empty level"),
            (fleet(&[("", &["a"])]), "empty level"),
            (fleet(&[("hq/+", &["a"])]), "wildcards"),
            (fleet(&[("hq", &["a/b"])]), "contains '/'"),
            (fleet(&[("1/2/3/4/5/6/7/8/9", &["a"])]), "more than 8"),
        ] {
            let error = bad.validate().expect_err(why).to_string();
            assert!(error.contains(why), "{error} (wanted {why})");
        }
    }

    #[test]
    fn a_hundred_thousand_devices_need_gateway_mode() {
        let alone = FleetConfig {
            devices: 100_000,
            ..FleetConfig::default()
        };
        assert_eq!(
            alone.validate(),
            Err(SimulatorError::TooManyConnections {
                connections: 100_000,
                max: MAX_CONNECTIONS
            })
        );
        let gateways = FleetConfig {
            devices_per_connection: 10,
            ..alone
        };
        assert_eq!(gateways.validate(), Ok(()));
        assert_eq!(gateways.connections(), 10_000);
    }

    #[test]
    fn qos_levels_round_trip() {
        assert_eq!(Qos::from_level(0), Ok(Qos::AtMostOnce));
        assert_eq!(Qos::from_level(1).map(Qos::level), Ok(1));
        assert_eq!(Qos::from_level(2), Err(SimulatorError::Qos(2)));
    }
}
