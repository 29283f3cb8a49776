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
//!
//! [[alerts.rules]]
//! name = "floor-offline"
//! scope = "group"                 # on a group's live aggregate, not on each device
//! groups = ["hq/*/floor-3"]
//! offline_share_above = 0.2       # more than 20 % of the floor offline
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
    /// An alert whose condition cleared and that nobody acknowledged is closed after this
    /// long (transition `expired`), so that alerts nobody looks at do not pile up.
    #[serde(with = "humantime_serde")]
    pub close_cleared_after: Duration,
    /// Where every alert transition is posted, if anywhere.
    pub webhook: super::webhook::WebhookConfig,
    /// The rules, evaluated in the bridge shard that owns each device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            history_retention: Duration::from_secs(90 * 24 * 3600),
            close_cleared_after: Duration::from_secs(24 * 3600),
            webhook: super::webhook::WebhookConfig::default(),
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
    /// `device` (the default): evaluated on each selected device. `group`: evaluated on the
    /// live aggregate of each group that `groups` selects.
    pub scope: Scope,
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
    /// For a group rule on a metric: which statistic of the group (`mean`, `min`, `max`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Stat>,
    /// For a group rule: fires when more than this share (0 to 1) of its devices is offline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_share_above: Option<f64>,
    /// For a group rule: fires when more than this share (0 to 1) of its devices is alerting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerting_share_above: Option<f64>,
    /// For a group rule: while it is active, the alerts of the group's devices are marked
    /// suppressed (still tracked and counted, shown on demand) instead of flooding screens.
    /// On by default for group rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppress_children: Option<bool>,
    /// Group-path patterns whose devices' alerts this rule's alerts explain while active:
    /// the offline rule of a gateway names the groups of the devices behind it, so that a
    /// gateway going down raises one alert instead of one per device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppresses: Vec<String>,
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

/// What a rule is evaluated on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Device,
    Group,
}

/// A statistic of a group's aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    #[default]
    Mean,
    Min,
    Max,
}

/// Which share of a group's devices a group rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    Offline,
    Alerting,
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
    /// For a group rule: its devices' alerts are suppressed while it is active.
    pub suppress_children: bool,
    /// The groups (patterns) whose devices' alerts its alerts suppress while active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppresses: Option<Selector>,
}

impl Rule {
    /// Whether an active alert of this rule about group `own_group` explains an alert about a
    /// device under `group`.
    pub fn explains(&self, own_group: &str, group: &str) -> bool {
        (self.suppress_children && iotmon_wire::topics::in_group(group, own_group))
            || self
                .suppresses
                .as_ref()
                .is_some_and(|selector| selector.matches_group(group))
    }

    /// Whether its alerts may suppress others.
    pub fn suppresses_any(&self) -> bool {
        self.suppress_children || self.suppresses.is_some()
    }
}

impl Rule {
    /// Whether it is evaluated on groups rather than devices.
    pub fn is_group_rule(&self) -> bool {
        matches!(
            self.condition,
            Condition::GroupStat { .. } | Condition::GroupShare { .. }
        )
    }
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
    /// A statistic of a metric over a group's devices beyond `trigger`, until back beyond
    /// `clear`.
    GroupStat {
        metric: Arc<str>,
        stat: Stat,
        direction: Direction,
        trigger: f64,
        clear: f64,
    },
    /// The share of a group's devices offline (or alerting) above `trigger`, until back
    /// below `clear`.
    GroupShare {
        share: Share,
        trigger: f64,
        clear: f64,
    },
}

impl Condition {
    /// The metric it watches, if any.
    pub fn metric(&self) -> Option<&Arc<str>> {
        match self {
            Condition::Threshold { metric, .. }
            | Condition::Rate { metric, .. }
            | Condition::GroupStat { metric, .. } => Some(metric),
            Condition::Offline { .. } | Condition::GroupShare { .. } => None,
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
    /// Whether group `group` itself is selected (group rules; no patterns: every group).
    pub fn matches_group(&self, group: &str) -> bool {
        let levels: Vec<&str> = group.split('/').collect();
        self.groups.is_empty() || self.groups.iter().any(|p| glob_matches(p, &levels))
    }

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

    /// The device rules that apply to device `id` under `group`.
    pub fn for_device(&self, id: &str, group: &str) -> Vec<RuleIndex> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| !rule.is_group_rule() && rule.select.matches(id, group))
            .map(|(index, _)| index)
            .collect()
    }

    /// The group rules that apply to the group `group`.
    pub fn for_group(&self, group: &str) -> Vec<RuleIndex> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.is_group_rule() && rule.select.matches_group(group))
            .map(|(index, _)| index)
            .collect()
    }

    /// Whether any rule is a group rule.
    pub fn has_group_rules(&self) -> bool {
        self.rules.iter().any(Rule::is_group_rule)
    }
}

fn check_rule(raw: &RuleConfig) -> Result<Rule, String> {
    if raw.name.is_empty() || raw.name.len() > 128 {
        return Err("name must be 1 to 128 characters".into());
    }
    let select = check_selector(raw)?;
    let group_only = raw.aggregate.is_some()
        || raw.offline_share_above.is_some()
        || raw.alerting_share_above.is_some()
        || raw.suppress_children.is_some();
    if raw.scope == Scope::Device && group_only {
        return Err("aggregate, offline_share_above, alerting_share_above and suppress_children need scope = \"group\"".into());
    }
    let condition = match raw.scope {
        Scope::Device => check_condition(raw)?,
        Scope::Group => check_group_condition(raw)?,
    };
    Ok(Rule {
        name: raw.name.as_str().into(),
        severity: raw.severity,
        select,
        condition,
        for_ms: millis(raw.for_),
        keep_firing_for_ms: millis(raw.keep_firing_for),
        suppress_children: raw.scope == Scope::Group && raw.suppress_children.unwrap_or(true),
        suppresses: (!raw.suppresses.is_empty())
            .then(|| check_patterns(&raw.suppresses))
            .transpose()?
            .map(|groups| Selector {
                groups,
                devices: Vec::new(),
            }),
    })
}

fn millis(duration: Option<Duration>) -> i64 {
    duration.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn check_selector(raw: &RuleConfig) -> Result<Selector, String> {
    Ok(Selector {
        groups: check_patterns(&raw.groups)?,
        devices: raw.devices.iter().map(|id| id.as_str().into()).collect(),
    })
}

/// Group-path patterns, split into levels; `*` and `**` only as whole levels.
fn check_patterns(patterns: &[String]) -> Result<Vec<Vec<String>>, String> {
    let mut groups = Vec::new();
    for pattern in patterns {
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
    Ok(groups)
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

fn check_group_condition(raw: &RuleConfig) -> Result<Condition, String> {
    if !raw.devices.is_empty() {
        return Err("a group rule selects groups, not devices".into());
    }
    if raw.offline || raw.rate_above.is_some() || raw.rate_below.is_some() {
        return Err("a group rule takes above/below a metric's aggregate, offline_share_above or alerting_share_above".into());
    }
    if raw.window.is_some() || raw.offline_after.is_some() {
        return Err("window and offline_after belong to device rules".into());
    }
    let shares = [
        (Share::Offline, raw.offline_share_above),
        (Share::Alerting, raw.alerting_share_above),
    ];
    let given: Vec<(Share, f64)> = shares
        .iter()
        .filter_map(|(share, value)| value.map(|value| (*share, value)))
        .collect();
    let levels = usize::from(raw.above.is_some()) + usize::from(raw.below.is_some());
    match (given.as_slice(), levels) {
        ([(share, trigger)], 0) => {
            if raw.metric.is_some() || raw.aggregate.is_some() {
                return Err("a share rule takes no metric or aggregate".into());
            }
            let clear = raw.clear.unwrap_or(*trigger);
            let in_range = |v: f64| (0.0..=1.0).contains(&v);
            if !in_range(*trigger) || !in_range(clear) || clear > *trigger {
                return Err("shares are between 0 and 1, and clear must not be above the trigger".into());
            }
            Ok(Condition::GroupShare {
                share: *share,
                trigger: *trigger,
                clear,
            })
        }
        ([], 1) => {
            let key = if raw.above.is_some() { "above" } else { "below" };
            let trigger = raw.above.or(raw.below).unwrap_or_default();
            let Condition::Threshold {
                metric,
                direction,
                trigger,
                clear,
            } = check_level(raw, key, trigger)?
            else {
                return Err("a group rule on a metric takes above or below".into());
            };
            Ok(Condition::GroupStat {
                metric,
                stat: raw.aggregate.unwrap_or_default(),
                direction,
                trigger,
                clear,
            })
        }
        ([], 0) => Err("a group rule needs a condition: above, below, offline_share_above or alerting_share_above".into()),
        _ => Err("has more than one condition".into()),
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
            (
                "name = \"a\"\nscope = \"group\"\ndevices = [\"d1\"]\noffline_share_above = 0.2",
                "selects groups, not devices",
            ),
            (
                "name = \"a\"\nscope = \"group\"\noffline_share_above = 1.5",
                "between 0 and 1",
            ),
            (
                "name = \"a\"\noffline_share_above = 0.5",
                "need scope = \"group\"",
            ),
            (
                "name = \"a\"\nscope = \"group\"\noffline = true",
                "a group rule takes",
            ),
            (
                "name = \"a\"\noffline = true\nsuppresses = [\"hq//a\"]",
                "empty level",
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
    fn group_rules_select_groups_and_suppress_their_devices_by_default() {
        let set = rules(
            r#"
            [[rules]]
            name = "warm-floor"
            scope = "group"
            groups = ["hq/*/floor-3"]
            metric = "t"
            aggregate = "max"
            above = 30.0
            "#,
        )
        .expect("valid");
        let rule = &set.rules()[0];
        assert!(rule.is_group_rule() && rule.suppress_children);
        assert!(matches!(
            rule.condition,
            Condition::GroupStat {
                stat: Stat::Max,
                ..
            }
        ));
        assert_eq!(set.for_group("hq/a/floor-3"), vec![0]);
        assert!(set.for_group("hq/a").is_empty());
        assert!(
            set.for_device("d1", "hq/a/floor-3").is_empty(),
            "not a device rule"
        );
    }

    #[test]
    fn unknown_keys_in_a_rule_are_refused() {
        let error = toml::from_str::<AlertsConfig>("[[rules]]\nname = \"a\"\nabov = 3\n")
            .expect_err("typo");
        assert!(error.to_string().contains("abov"), "{error}");
    }
}
