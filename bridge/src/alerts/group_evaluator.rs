//! Group rules, evaluated by the aggregator on each group's merged aggregate once per
//! aggregation window: a statistic of a metric over the group's devices, or the share of its
//! devices offline or alerting. The same conditions (deadband, on/off delays) as device rules,
//! with the window's precision.

use std::collections::HashMap;
use std::sync::Arc;

use iotmon_wire::{GroupAggregate, GroupPath};

use super::condition::{level_breached, ConditionState, Phase};
use super::evaluator::ConditionEvent;
use super::rules::{Condition, Direction, RuleIndex, RuleSet, Share, Stat};

/// The aggregator's group rule conditions.
#[derive(Debug)]
pub struct GroupEvaluator {
    rules: Arc<RuleSet>,
    /// The group rules that select each group seen, worked out once per group.
    selected: HashMap<GroupPath, Vec<RuleIndex>>,
    conditions: HashMap<(RuleIndex, GroupPath), ConditionState>,
    events: Vec<ConditionEvent>,
}

impl GroupEvaluator {
    pub fn new(rules: Arc<RuleSet>) -> Self {
        GroupEvaluator {
            rules,
            selected: HashMap::new(),
            conditions: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// Restores a group condition saved before a restart.
    pub fn restore(&mut self, rule: RuleIndex, group: &str, phase: Phase) {
        self.conditions
            .insert((rule, group.into()), ConditionState::restored(phase));
    }

    /// Evaluates the group rules selecting `aggregate`'s group at `now_ms`.
    pub fn on_aggregate(&mut self, aggregate: &GroupAggregate, now_ms: i64) {
        if !self.rules.has_group_rules() {
            return;
        }
        let rules = &self.rules;
        let selected = self
            .selected
            .entry(aggregate.group.clone())
            .or_insert_with(|| rules.for_group(&aggregate.group));
        for &index in selected.iter() {
            let Some(rule) = self.rules.get(index) else {
                continue;
            };
            let key = (index, aggregate.group.clone());
            let state = self.conditions.entry(key).or_default();
            let Some(value) = observed_value(&rule.condition, aggregate) else {
                continue;
            };
            let breached = match &rule.condition {
                Condition::GroupStat {
                    direction,
                    trigger,
                    clear,
                    ..
                } => level_breached(*direction, *trigger, *clear, value, state.breached),
                Condition::GroupShare { trigger, clear, .. } => {
                    level_breached(Direction::Above, *trigger, *clear, value, state.breached)
                }
                _ => continue,
            };
            if state.observe(breached, now_ms, rule) {
                self.events.push(ConditionEvent {
                    rule: index,
                    device: aggregate.group.clone(),
                    group: aggregate.group.clone(),
                    phase: state.phase,
                    at: now_ms,
                    value: Some(value),
                    reading_ts: None,
                });
            }
        }
    }

    /// Ends the on/off delays that have run out at `now_ms` (few conditions are ever in a
    /// delay: one per group and rule at most).
    pub fn check_deadlines(&mut self, now_ms: i64) {
        for ((index, group), state) in &mut self.conditions {
            let Some(rule) = self.rules.get(*index) else {
                continue;
            };
            if state.expire(now_ms, rule) {
                self.events.push(ConditionEvent {
                    rule: *index,
                    device: group.clone(),
                    group: group.clone(),
                    phase: state.phase,
                    at: now_ms,
                    value: None,
                    reading_ts: None,
                });
            }
        }
        // Groups whose conditions are back to normal need no entry.
        self.conditions
            .retain(|_, state| state.phase != Phase::Normal || state.breached);
    }

    /// The phase changes since the previous call.
    pub fn take_events(&mut self) -> Vec<ConditionEvent> {
        std::mem::take(&mut self.events)
    }

    /// Puts back events the manager could not take yet.
    pub fn defer_events(&mut self, mut events: Vec<ConditionEvent>) {
        events.append(&mut self.events);
        self.events = events;
    }
}

/// The value a group condition watches in `aggregate`, if it has one.
fn observed_value(condition: &Condition, aggregate: &GroupAggregate) -> Option<f64> {
    match condition {
        Condition::GroupStat { metric, stat, .. } => {
            let metric = aggregate.metrics.get(metric)?;
            Some(match stat {
                Stat::Mean => metric.mean,
                Stat::Min => metric.min,
                Stat::Max => metric.max,
            })
        }
        Condition::GroupShare { share, .. } => {
            let devices = aggregate.devices;
            let total = devices.online + devices.offline;
            let part = match share {
                Share::Offline => devices.offline,
                Share::Alerting => devices.alerting,
            };
            (total > 0).then(|| part as f64 / total as f64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use iotmon_wire::{DeviceCounts, MetricAggregate};

    use super::*;
    use crate::alerts::AlertsConfig;

    fn evaluator(rules: &str) -> GroupEvaluator {
        let config: AlertsConfig = toml::from_str(rules).expect("TOML");
        GroupEvaluator::new(Arc::new(RuleSet::new(&config).expect("rules")))
    }

    fn aggregate(group: &str, online: u64, offline: u64, mean: f64) -> GroupAggregate {
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "t".into(),
            MetricAggregate {
                count: online + offline,
                mean,
                min: mean - 1.0,
                max: mean + 1.0,
            },
        );
        GroupAggregate {
            group: group.into(),
            ts: 0,
            devices: DeviceCounts {
                online,
                offline,
                alerting: 0,
            },
            metrics,
        }
    }

    fn phases(evaluator: &mut GroupEvaluator) -> Vec<(String, Phase)> {
        evaluator
            .take_events()
            .into_iter()
            .map(|e| (e.device.to_string(), e.phase))
            .collect()
    }

    #[test]
    fn more_than_a_fifth_of_a_floor_offline_fires_on_that_floor_only() {
        let mut groups = evaluator(
            "[[rules]]\nname = \"floor-offline\"\nscope = \"group\"\ngroups = [\"hq/*/floor-3\"]\noffline_share_above = 0.2\nclear = 0.1\n",
        );
        groups.on_aggregate(&aggregate("hq/a/floor-3", 9, 1, 20.0), 0);
        groups.on_aggregate(&aggregate("hq/a/floor-2", 1, 9, 20.0), 0);
        assert!(
            phases(&mut groups).is_empty(),
            "10 % offline; floor-2 is not selected"
        );
        groups.on_aggregate(&aggregate("hq/a/floor-3", 7, 3, 20.0), 1_000);
        assert_eq!(
            phases(&mut groups),
            vec![("hq/a/floor-3".into(), Phase::Firing)]
        );
        // 15 %: inside the deadband, still firing; 5 %: below the clear level, clears.
        groups.on_aggregate(&aggregate("hq/a/floor-3", 85, 15, 20.0), 2_000);
        assert!(phases(&mut groups).is_empty());
        groups.on_aggregate(&aggregate("hq/a/floor-3", 95, 5, 20.0), 3_000);
        assert_eq!(
            phases(&mut groups),
            vec![("hq/a/floor-3".into(), Phase::Normal)]
        );
    }

    #[test]
    fn a_group_mean_above_its_level_fires_after_the_on_delay() {
        let mut groups = evaluator(
            "[[rules]]\nname = \"warm\"\nscope = \"group\"\nmetric = \"t\"\naggregate = \"mean\"\nabove = 25.0\nfor = \"5s\"\n",
        );
        groups.on_aggregate(&aggregate("hq", 10, 0, 26.0), 0);
        assert_eq!(
            phases(&mut groups),
            vec![("hq".into(), Phase::Pending { since: 0 })]
        );
        groups.check_deadlines(4_000);
        assert!(phases(&mut groups).is_empty());
        groups.check_deadlines(5_000);
        assert_eq!(phases(&mut groups), vec![("hq".into(), Phase::Firing)]);
    }
}
