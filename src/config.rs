//! The configuration file: one TOML file with a section per role, every key optional.
//! Command-line flags and `IOTMON_*` environment variables override the file; the file
//! overrides the defaults, which live with each role's config struct.

use std::path::{Path, PathBuf};

use anyhow::Context;
use iotmon_bridge::BridgeConfig;
use iotmon_broker::BrokerConfig;
use iotmon_dashboard::DashboardConfig;
use serde::{Deserialize, Serialize};

/// Everything `iotmon` can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where iotmon keeps its data.
    pub data_dir: PathBuf,
    pub broker: BrokerConfig,
    pub bridge: BridgeConfig,
    pub dashboard: DashboardConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            broker: BrokerConfig::default(),
            bridge: BridgeConfig::default(),
            dashboard: DashboardConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when no file is given.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, or holds an unknown key.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The defaults as TOML, for `iotmon config`.
    ///
    /// # Errors
    /// Never in practice: every field serializes.
    pub fn defaults_toml() -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(&Config::default())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = Config::defaults_toml().expect("serialize");
        let back: Config = toml::from_str(&text).expect("parse");
        assert_eq!(back, Config::default());
    }

    #[test]
    fn the_example_file_is_valid_and_matches_the_defaults() {
        let text = include_str!("../iotmon.example.toml");
        let example: Config = toml::from_str(text).expect("example parses");
        assert_eq!(example, Config::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = toml::from_str::<Config>("[broker]\nmqtt_lissen = \"127.0.0.1:1\"\n")
            .expect_err("typo must be refused");
        assert!(error.to_string().contains("mqtt_lissen"), "{error}");
    }
}
