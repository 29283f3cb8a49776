//! The configuration file: one TOML file with a section per role, every key optional.
//! Command-line flags and `IOTMON_*` environment variables override the file; the file
//! overrides the defaults, which live with each role's config struct.

use std::path::{Path, PathBuf};

use anyhow::Context;
use iotmon_bridge::alerts::rules::RuleError;
use iotmon_bridge::alerts::{AlertsConfig, RuleSet};
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
    /// Alert rules (`[[alerts.rules]]`) and alert history.
    pub alerts: AlertsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            broker: BrokerConfig::default(),
            bridge: BridgeConfig::default(),
            dashboard: DashboardConfig::default(),
            alerts: AlertsConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when no file is given, and checks its alert rules.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, holds an unknown key, or has an alert
    /// rule that cannot be used (the error names the rule's line).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses a configuration file's text and checks its alert rules.
    ///
    /// # Errors
    /// Not valid TOML, an unknown key, or an unusable alert rule.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        if let Err(error) = RuleSet::new(&config.alerts) {
            return Err(rule_error_at_line(text, &error));
        }
        Ok(config)
    }

    /// Checks every role's settings (after command-line flags are applied).
    ///
    /// # Errors
    /// The first setting that cannot be used, named by its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.broker.validate()?;
        self.bridge.validate()?;
        self.dashboard.validate()?;
        self.alerts.webhook.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// Gives `iotmon demo` alert rules to show, unless the file brought its own: a sensor
    /// running hot, a device gone silent, and a floor mostly offline (which then explains
    /// its devices' alerts).
    ///
    /// # Errors
    /// Never in practice: the demo's rules are checked by a unit test.
    pub fn add_demo_rules(&mut self) -> anyhow::Result<()> {
        if self.alerts.rules.is_empty() {
            let demo: AlertsConfig = toml::from_str(DEMO_RULES)?;
            self.alerts.rules = demo.rules;
        }
        Ok(())
    }

    /// The checked alert rules.
    ///
    /// # Errors
    /// A rule that cannot be used (configurations from [`Config::load`] have none).
    pub fn rules(&self) -> anyhow::Result<RuleSet> {
        Ok(RuleSet::new(&self.alerts)?)
    }

    /// The defaults as TOML, for `iotmon config`.
    ///
    /// # Errors
    /// Never in practice: every field serializes.
    pub fn defaults_toml() -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(&Config::default())?)
    }
}

/// The alert rules of `iotmon demo` (the simulated sensors run 15–27 °C; an anomaly takes
/// one above 36 °C for a few readings).
const DEMO_RULES: &str = r#"
[[rules]]
name = "too-hot"
metric = "temperature"
above = 35.0
clear = 30.0
severity = "major"

[[rules]]
name = "floor-offline"
scope = "group"
groups = ["*/*/*"]
offline_share_above = 0.5
clear = 0.2
severity = "critical"

[[rules]]
name = "silent"
offline = true
severity = "critical"
"#;

/// `error` with the line of its rule's `[[alerts.rules]]` header in `text`.
fn rule_error_at_line(text: &str, error: &RuleError) -> anyhow::Error {
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim() == "[[alerts.rules]]")
        .nth(error.index)
        .map(|(number, _)| number + 1);
    match line {
        Some(line) => anyhow::anyhow!("line {line}: {error}"),
        None => anyhow::anyhow!("{error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_rules_are_valid_and_do_not_replace_a_files_own() {
        let mut config = Config::default();
        config.add_demo_rules().expect("demo rules parse");
        assert_eq!(config.rules().expect("valid").rules().len(), 3);
        let mut own =
            Config::parse("[[alerts.rules]]\nname = \"mine\"\noffline = true\n").expect("parses");
        own.add_demo_rules().expect("demo rules parse");
        assert_eq!(own.alerts.rules.len(), 1);
    }

    #[test]
    fn a_bad_alert_rule_is_refused_with_its_line() {
        let text = "data_dir = \"/tmp\"\n\n[[alerts.rules]]\nname = \"ok\"\noffline = true\n\n[[alerts.rules]]\nname = \"hot\"\nmetric = \"t\"\nabove = 30.0\nclear = 35.0\n";
        let error = Config::parse(text).expect_err("clear above trigger");
        let message = format!("{error:#}");
        assert!(message.contains("line 7"), "{message}");
        assert!(message.contains("\"hot\""), "{message}");
        assert!(
            message.contains("clear (35) must not be above"),
            "{message}"
        );
    }

    #[test]
    fn every_setting_that_would_stop_a_role_is_refused_by_its_key() {
        for (text, key) in [
            ("[dashboard]\ntick = \"0s\"\n", "dashboard.tick"),
            ("[dashboard]\nheartbeat = \"0s\"\n", "dashboard.heartbeat"),
            ("[dashboard]\nviewer_queue = 0\n", "dashboard.viewer_queue"),
            ("[bridge]\nlive_interval = \"0s\"\n", "bridge.live_interval"),
            (
                "[alerts.webhook]\nurl = \"ftp://x\"\n",
                "alerts.webhook.url",
            ),
            (
                "[broker]\nmax_connections = 100000000\n",
                "broker.max_connections",
            ),
            ("[bridge.store]\nqueue = 100000000\n", "bridge.store.queue"),
        ] {
            let config = Config::parse(text).expect("parses");
            let error = config.validate().expect_err(text);
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
        Config::default()
            .validate()
            .expect("the defaults are valid");
    }

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
