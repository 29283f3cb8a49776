//! What a simulated fleet looks like and where it publishes, with its defaults in one place.

use std::time::Duration;

use iotmon_wire::mqtt::{BrokerUrl, DEFAULT_PORT};

use crate::SimulatorError;

/// A simulated fleet: how many devices, how often they publish, to which broker, for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The broker every device connects to.
    pub broker: BrokerUrl,
    /// How many devices, each with an MQTT connection of its own.
    pub devices: usize,
    /// Each device publishes one reading per interval.
    pub interval: Duration,
    /// Stop after this long; `None` runs until shutdown.
    pub duration: Option<Duration>,
    /// Prefix of the devices' MQTT client ids (`<prefix>-<device id>`), so two fleets on one
    /// broker do not take over each other's sessions.
    pub client_prefix: String,
    /// Seed of every device's sensor model, so a fleet's readings are reproducible.
    pub seed: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            broker: BrokerUrl {
                host: "127.0.0.1".to_string(),
                port: DEFAULT_PORT,
            },
            devices: 1000,
            interval: Duration::from_secs(5),
            duration: None,
            client_prefix: "sim".to_string(),
            seed: 1,
        }
    }
}

impl FleetConfig {
    /// Checks the config before anything connects.
    ///
    /// # Errors
    /// No devices, or a zero interval.
    pub fn validate(&self) -> Result<(), SimulatorError> {
        if self.devices == 0 {
            return Err(SimulatorError::NoDevices);
        }
        if self.interval.is_zero() {
            return Err(SimulatorError::ZeroInterval);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn rejects_an_empty_fleet_and_a_zero_interval() {
        let empty = FleetConfig {
            devices: 0,
            ..FleetConfig::default()
        };
        assert_eq!(empty.validate(), Err(SimulatorError::NoDevices));
        let frantic = FleetConfig {
            interval: Duration::ZERO,
            ..FleetConfig::default()
        };
        assert_eq!(frantic.validate(), Err(SimulatorError::ZeroInterval));
    }
}
