//! Alert rules: the `[[alerts.rules]]` tables of the configuration file, checked at start-up
//! into typed [`Rule`]s, and the device selection each rule applies to.
//!
//! ```toml
//! [[alerts.rules]]
//! name = "too-hot"
//! groups = ["hq/building-a/**"]   # `*` is one level, `**` any number of levels
//! metric = "temperature"
//! above = 30.0
//! clear = 28.0                    # deadband: clears below 28, not just below 30
//! for = "30s"                     # on-delay
//! keep_firing_for = "1m"          # off-delay
//! severity = "major"
//! ```

use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::Severity;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The `[alerts]` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// How long closed alerts and their transitions stay in the store.
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
    /// The rules, evaluated in the bridge shard that owns each device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            history_retention: Duration::from_secs(90 * 24 * 3600),
            rules: Vec::new(),
        }
    }
}

/// One rule as written in the configuration file. Exactly one condition: a threshold
/// (`above` or `below`), a rate of change (`rate_above` or `rate_below`), or `offline`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name: how alerts, the store and `/api/rules` refer to the rule.
    pub name: String,
    pub severity: Severity,
    /// Group-path patterns of the devices it applies to (`hq/*/floor-3`, `hq/**`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Device ids it applies to (besides those of `groups`). With neither: every device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// The metric a threshold or rate rule watches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Fires when the value rises above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires when the value falls below this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Fires when the value rises faster than this, per minute, over `window`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_above: Option<f64>,
    /// Fires when the value falls faster than this (a negative number), per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_below: Option<f64>,
    /// The level at which a firing threshold or rate rule clears (the deadband): below it for
    /// `above`, above it for `below`. Defaults to the trigger level itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// How far back a rate rule looks.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// Fires while the device is offline: its last will or `offline` status, or silence
    /// longer than its presence limit (or than `offline_after` when given).
    pub offline: bool,
    /// For an offline rule: the silence after which it fires.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub offline_after: Option<Duration>,
    /// On-delay: the condition must hold this long before the alert is raised.
    #[serde(
        rename = "for",
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub for_: Option<Duration>,
    /// Off-delay: the condition must stay normal this long before the alert clears.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_firing_for: Option<Duration>,
}

/// Index of a rule in its [`RuleSet`]: what a device's alert state refers to.
pub type RuleIndex = usize;

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub name: Arc<str>,
    pub severity: Severity,
    pub select: Selector,
    pub condition: Condition,
    /// On-delay, ms.
    pub for_ms: i64,
    /// Off-delay, ms.
    pub keep_firing_for_ms: i64,
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// A metric's value beyond `trigger`, until it is back beyond `clear`.
    Threshold {
        metric: Arc<str>,
        direction: Direction,
        trigger: f64,
        clear: f64,
    },
    /// A metric's change per minute over `window_ms` beyond `trigger`, until back beyond
    /// `clear`.
    Rate {
        metric: Arc<str>,
        direction: Direction,
        trigger: f64,
        clear: f64,
        window_ms: i64,
    },
    /// The device is offline (status or silence), or silent longer than `after_ms`.
    Offline { after_ms: Option<i64> },
}

impl Condition {
    /// The metric it watches, if any.
    pub fn metric(&self) -> Option<&Arc<str>> {
        match self {
            Condition::Threshold { metric, .. } | Condition::Rate { metric, .. } => Some(metric),
            Condition::Offline { .. } => None,
        }
    }
}

/// Which side of a level is a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Above,
    Below,
}

impl Direction {
    /// Whether `value` breaches `level` on this side (strictly).
    pub fn beyond(self, value: f64, level: f64) -> bool {
        match self {
            Direction::Above => value > level,
            Direction::Below => value < level,
        }
    }

    /// `above` or `below`, for messages.
    pub fn word(self) -> &'static str {
        match self {
            Direction::Above => "above",
            Direction::Below => "below",
        }
    }
}

/// Which devices a rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Selector {
    /// Group-path patterns, levels split.
    groups: Vec<Vec<String>>,
    devices: Vec<Arc<str>>,
}

impl Selector {
    /// Whether a device `id` under `group` is selected.
    pub fn matches(&self, id: &str, group: &str) -> bool {
        if self.groups.is_empty() && self.devices.is_empty() {
            return true;
        }
        self.devices.iter().any(|device| &**device == id)
            || self.groups.iter().any(|pattern| {
                let levels: Vec<&str> = group.split('/').collect();
                glob_matches(pattern, &levels)
            })
    }
}

/// Whether path `levels` match `pattern`: `*` is any one level, `**` any number (0 or more).
fn glob_matches(pattern: &[String], levels: &[&str]) -> bool {
    match pattern.split_first() {
        None => levels.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=levels.len()).any(|skip| glob_matches(rest, &levels[skip..]))
        }
        Some((first, rest)) => match levels.split_first() {
            Some((level, more)) => (first == "*" || first == level) && glob_matches(rest, more),
            None => false,
        },
    }
}

/// The checked rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

/// A rule that cannot be used, with the rule's position (0-based) in the file so the
/// configuration loader can name its line.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("alerts.rules[{index}] ({name:?}): {problem}")]
pub struct RuleError {
    pub index: usize,
    pub name: String,
    pub problem: String,
}

/// Longest rate window: a rate rule keeps the samples of its window per device.
const MAX_RATE_WINDOW: Duration = Duration::from_secs(3600);

impl RuleSet {
    /// Checks every rule.
    ///
    /// # Errors
    /// The first rule that cannot be used, and why.
    pub fn new(config: &AlertsConfig) -> Result<RuleSet, RuleError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, raw) in config.rules.iter().enumerate() {
            let fail = |problem: String| RuleError {
                index,
                name: raw.name.clone(),
                problem,
            };
            let rule = check_rule(raw).map_err(fail)?;
            if rules.iter().any(|other: &Rule| other.name == rule.name) {
                return Err(fail("another rule has this name".into()));
            }
            rules.push(rule);
        }
        Ok(RuleSet { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, index: RuleIndex) -> Option<&Rule> {
        self.rules.get(index)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The index of the rule named `name`.
    pub fn index_of(&self, name: &str) -> Option<RuleIndex> {
        self.rules.iter().position(|rule| &*rule.name == name)
    }

    /// The rules that apply to device `id` under `group`.
    pub fn for_device(&self, id: &str, group: &str) -> Vec<RuleIndex> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.select.matches(id, group))
            .map(|(index, _)| index)
            .collect()
    }
}

fn check_rule(raw: &RuleConfig) -> Result<Rule, String> {
    if raw.name.is_empty() || raw.name.len() > 128 {
        return Err("name must be 1 to 128 characters".into());
    }
    let select = check_selector(raw)?;
    let condition = check_condition(raw)?;
    Ok(Rule {
        name: raw.name.as_str().into(),
        severity: raw.severity,
        select,
        condition,
        for_ms: millis(raw.for_),
        keep_firing_for_ms: millis(raw.keep_firing_for),
    })
}

fn millis(duration: Option<Duration>) -> i64 {
    duration.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn check_selector(raw: &RuleConfig) -> Result<Selector, String> {
    let mut groups = Vec::new();
    for pattern in &raw.groups {
        let levels: Vec<String> = pattern.split('/').map(str::to_string).collect();
        if levels.iter().any(String::is_empty) {
            return Err(format!("group pattern {pattern:?} has an empty level"));
        }
        if levels
            .iter()
            .any(|level| level.contains('*') && level != "*" && level != "**")
        {
            return Err(format!(
                "group pattern {pattern:?}: `*` and `**` must be whole levels"
            ));
        }
        groups.push(levels);
    }
    Ok(Selector {
        groups,
        devices: raw.devices.iter().map(|id| id.as_str().into()).collect(),
    })
}

fn check_condition(raw: &RuleConfig) -> Result<Condition, String> {
    let levels = [
        ("above", raw.above),
        ("below", raw.below),
        ("rate_above", raw.rate_above),
        ("rate_below", raw.rate_below),
    ];
    let given: Vec<(&str, f64)> = levels
        .iter()
        .filter_map(|(key, value)| value.map(|value| (*key, value)))
        .collect();
    match (given.as_slice(), raw.offline) {
        ([], true) => check_offline(raw),
        ([(key, trigger)], false) => check_level(raw, key, *trigger),
        ([], false) => {
            Err("needs a condition: above, below, rate_above, rate_below or offline".into())
        }
        _ => Err("has more than one condition (one of above, below, rate_above, rate_below, offline per rule)".into()),
    }
}

fn check_offline(raw: &RuleConfig) -> Result<Condition, String> {
    if raw.metric.is_some() || raw.clear.is_some() || raw.window.is_some() {
        return Err("an offline rule takes no metric, clear or window".into());
    }
    if raw.offline_after.is_some_and(|after| after.is_zero()) {
        return Err("offline_after must be greater than zero".into());
    }
    Ok(Condition::Offline {
        after_ms: raw.offline_after.map(|after| millis(Some(after))),
    })
}

fn check_level(raw: &RuleConfig, key: &str, trigger: f64) -> Result<Condition, String> {
    let Some(metric) = raw.metric.as_deref().filter(|metric| !metric.is_empty()) else {
        return Err(format!("`{key}` needs a `metric`"));
    };
    if raw.offline_after.is_some() {
        return Err("offline_after belongs to offline rules".into());
    }
    let direction = if key.ends_with("above") {
        Direction::Above
    } else {
        Direction::Below
    };
    let clear = raw.clear.unwrap_or(trigger);
    if !trigger.is_finite() || !clear.is_finite() {
        return Err("levels must be finite numbers".into());
    }
    if direction.beyond(clear, trigger) {
        return Err(format!(
            "clear ({clear}) must not be {} the trigger level ({trigger})",
            direction.word()
        ));
    }
    let metric: Arc<str> = metric.into();
    if key.starts_with("rate") {
        let window = raw
            .window
            .ok_or_else(|| format!("`{key}` needs a `window`"))?;
        if window < Duration::from_secs(1) || window > MAX_RATE_WINDOW {
            return Err("window must be between 1s and 1h".into());
        }
        return Ok(Condition::Rate {
            metric,
            direction,
            trigger,
            clear,
            window_ms: millis(Some(window)),
        });
    }
    if raw.window.is_some() {
        return Err("window belongs to rate rules".into());
    }
    Ok(Condition::Threshold {
        metric,
        direction,
        trigger,
        clear,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Result<RuleSet, RuleError> {
        let config: AlertsConfig = toml::from_str(toml_text).expect("valid TOML");
        RuleSet::new(&config)
    }

    #[test]
    fn group_patterns_match_whole_levels() {
        let pattern = |p: &str| p.split('/').map(str::to_string).collect::<Vec<_>>();
        let path = |p: &'static str| p.split('/').collect::<Vec<_>>();
        assert!(glob_matches(&pattern("hq/**"), &path("hq")));
        assert!(glob_matches(&pattern("hq/**"), &path("hq/a/floor-3")));
        assert!(!glob_matches(&pattern("hq/**"), &path("hq2/a")));
        assert!(glob_matches(
            &pattern("hq/*/floor-3"),
            &path("hq/a/floor-3")
        ));
        assert!(!glob_matches(
            &pattern("hq/*/floor-3"),
            &path("hq/a/b/floor-3")
        ));
        assert!(glob_matches(
            &pattern("**/floor-3"),
            &path("hq/a/b/floor-3")
        ));
        assert!(!glob_matches(&pattern("hq"), &path("hq/a")));
    }

    #[test]
    fn a_threshold_rule_with_a_deadband_and_delays_is_checked() {
        let set = rules(
            r#"
            [[rules]]
            name = "hot"
            groups = ["hq/**"]
            devices = ["loose-1"]
            metric = "temperature"
            above = 30
            clear = 28
            for = "10s"
            keep_firing_for = "1m"
            severity = "critical"
            "#,
        )
        .expect("valid rule");
        let rule = &set.rules()[0];
        assert_eq!(rule.severity, Severity::Critical);
        assert_eq!((rule.for_ms, rule.keep_firing_for_ms), (10_000, 60_000));
        assert_eq!(
            rule.condition,
            Condition::Threshold {
                metric: "temperature".into(),
                direction: Direction::Above,
                trigger: 30.0,
                clear: 28.0
            }
        );
        assert_eq!(set.for_device("t1", "hq/a"), vec![0]);
        assert_eq!(set.for_device("loose-1", "elsewhere"), vec![0]);
        assert!(set.for_device("t2", "elsewhere").is_empty());
    }

    #[test]
    fn bad_rules_are_refused_with_their_position_and_reason() {
        let cases = [
            ("name = \"a\"\nmetric = \"t\"", "needs a condition"),
            ("name = \"a\"\nabove = 1.0", "needs a `metric`"),
            (
                "name = \"a\"\nmetric = \"t\"\nabove = 1.0\nbelow = 0.0",
                "more than one",
            ),
            (
                "name = \"a\"\nmetric = \"t\"\nabove = 30.0\nclear = 31.0",
                "clear (31) must not be above",
            ),
            (
                "name = \"a\"\nmetric = \"t\"\nrate_above = 1.0",
                "needs a `window`",
            ),
            (
                "name = \"a\"\noffline = true\nmetric = \"t\"",
                "takes no metric",
            ),
            (
                "name = \"a\"\noffline = true\ngroups = [\"hq/x*\"]",
                "whole levels",
            ),
        ];
        for (body, expected) in cases {
            let text = format!("[[rules]]\nname = \"ok\"\noffline = true\n[[rules]]\n{body}\n");
            let error = rules(&text).expect_err(body);
            assert_eq!(error.index, 1, "{body}");
            assert!(error.to_string().contains(expected), "{body}: {error}");
        }
        let twice =
            "[[rules]]\nname = \"a\"\noffline = true\n[[rules]]\nname = \"a\"\noffline = true\n";
        assert!(rules(twice)
            .expect_err("duplicate")
            .problem
            .contains("name"));
    }

    #[test]
    fn unknown_keys_in_a_rule_are_refused() {
        let error = toml::from_str::<AlertsConfig>("[[rules]]\nname = \"a\"\nabov = 3\n")
            .expect_err("typo");
        assert!(error.to_string().contains("abov"), "{error}");
    }
}
