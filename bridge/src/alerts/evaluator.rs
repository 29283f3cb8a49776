//! Alert evaluation inside a bridge shard: on every reading of a device (no extra hop), and
//! on a deadline queue for on/off delays and silence — never a scan of the fleet per tick.
//!
//! Each device holds [`DeviceAlerts`]: the rules that select it (worked out when it appears
//! or moves, not per reading) and each rule's [`ConditionState`]. The shard's [`Evaluator`]
//! keeps the deadlines and collects [`ConditionEvent`]s, one per phase change, for the
//! alert manager, which owns the lifecycle.

use std::collections::BTreeMap;
use std::sync::Arc;

use iotmon_wire::{DeviceId, DeviceState, GroupPath, MetricValue};

use super::condition::{level_breached, ConditionState, Phase};
use super::rules::{Condition, Rule, RuleIndex, RuleSet};

/// A condition's phase changed: what the alert manager turns into alert transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionEvent {
    pub rule: RuleIndex,
    pub device: DeviceId,
    pub group: GroupPath,
    pub phase: Phase,
    /// When, ms since the epoch (the bridge's clock).
    pub at: i64,
    /// The value that caused it (the metric's, or the rate), absent for offline rules.
    pub value: Option<f64>,
    /// The device's timestamp of the reading that caused it, when a reading did (not a
    /// deadline or presence change).
    pub reading_ts: Option<i64>,
}

/// One device's alert conditions.
#[derive(Debug, Clone, Default)]
pub struct DeviceAlerts {
    conditions: Vec<(RuleIndex, ConditionState)>,
}

impl DeviceAlerts {
    /// Whether any of its alerts is active.
    pub fn is_alerting(&self) -> bool {
        self.conditions
            .iter()
            .any(|(_, state)| state.phase.is_firing())
    }

    fn get_mut(&mut self, rule: RuleIndex) -> Option<&mut ConditionState> {
        self.conditions
            .iter_mut()
            .find(|(index, _)| *index == rule)
            .map(|(_, state)| state)
    }
}

/// Waiting condition changes beyond which a shard keeps only the latest per device and rule.
pub const COALESCE_AT: usize = 4096;

/// The last event of each (device, rule), in the order of those last events.
fn coalesce(events: Vec<ConditionEvent>) -> Vec<ConditionEvent> {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<ConditionEvent> = events
        .into_iter()
        .rev()
        .filter(|event| seen.insert((event.device.clone(), event.rule)))
        .collect();
    kept.reverse();
    kept
}

/// What the evaluator needs to know of a device besides its alerts.
#[derive(Debug, Clone, Copy)]
pub struct DeviceContext<'a> {
    pub id: &'a DeviceId,
    pub group: &'a GroupPath,
    /// Latest receipt of anything from it, ms.
    pub last_seen: i64,
    pub online: bool,
}

/// What evaluation produces: deadlines to come back at, and phase changes.
#[derive(Debug, Default)]
struct Queue {
    /// Due times of delays and silence checks, each naming a device and rule; checked
    /// lazily (a stale entry, whose phase moved on, changes nothing when it comes due).
    deadlines: BTreeMap<i64, Vec<(DeviceId, RuleIndex)>>,
    /// Phase changes not yet handed to the alert manager.
    events: Vec<ConditionEvent>,
}

impl<'a> DeviceContext<'a> {
    /// The context of a device in `state`, last heard from at `last_seen`.
    pub fn of(state: &'a DeviceState, last_seen: i64) -> Self {
        DeviceContext {
            id: &state.id,
            group: &state.group,
            last_seen,
            online: state.online,
        }
    }
}

/// A shard's alert evaluator.
#[derive(Debug)]
pub struct Evaluator {
    rules: Arc<RuleSet>,
    queue: Queue,
    /// The silence after which a device counts as offline when no rule says otherwise.
    default_silence_ms: i64,
}

impl Evaluator {
    pub fn new(rules: Arc<RuleSet>, default_silence_ms: i64) -> Self {
        Evaluator {
            rules,
            queue: Queue::default(),
            default_silence_ms,
        }
    }

    /// Whether there are rules at all (without rules, a shard skips every call).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The conditions of a device that appears (or moves) under `group`, keeping the state
    /// of rules that still select it.
    pub fn select(&self, id: &str, group: &str, previous: DeviceAlerts) -> DeviceAlerts {
        let mut previous = previous;
        let conditions = self
            .rules
            .for_device(id, group)
            .into_iter()
            .map(|rule| {
                let state = previous
                    .get_mut(rule)
                    .map(std::mem::take)
                    .unwrap_or_default();
                (rule, state)
            })
            .collect();
        DeviceAlerts { conditions }
    }

    /// A reading arrived at `now_ms` with `metrics` stamped `ts`: evaluates every rule of
    /// the device that watches one of them; offline rules see the device back.
    pub fn on_reading(
        &mut self,
        alerts: &mut DeviceAlerts,
        device: DeviceContext<'_>,
        metrics: &[(Arc<str>, MetricValue)],
        ts: i64,
        now_ms: i64,
    ) {
        for (index, state) in &mut alerts.conditions {
            let Some(rule) = self.rules.get(*index) else {
                continue;
            };
            let observed = match &rule.condition {
                Condition::Threshold {
                    metric,
                    direction,
                    trigger,
                    clear,
                } => find(metrics, metric).map(|value| {
                    let breached =
                        level_breached(*direction, *trigger, *clear, value, state.breached);
                    (breached, Some(value))
                }),
                Condition::Rate {
                    metric,
                    direction,
                    trigger,
                    clear,
                    window_ms,
                } => find(metrics, metric).and_then(|value| {
                    let rate = state.rate_per_minute(ts, value, *window_ms)?;
                    let breached =
                        level_breached(*direction, *trigger, *clear, rate, state.breached);
                    Some((breached, Some(rate)))
                }),
                // Evaluated on groups by the aggregator, never selected for a device.
                Condition::GroupStat { .. } | Condition::GroupShare { .. } => None,
                Condition::Offline { after_ms } => {
                    // One silence check per device and rule at a time, not one per reading:
                    // when it comes due it looks at the latest receipt and goes again.
                    if let Some(after) = after_ms.filter(|_| !state.check_scheduled) {
                        let at = now_ms.saturating_add(after);
                        self.queue.schedule(at, device.id, *index);
                        state.check_scheduled = true;
                    }
                    Some((false, None))
                }
            };
            if let Some((breached, value)) = observed {
                if state.observe(breached, now_ms, rule) {
                    self.queue.changed(
                        *index,
                        state.phase,
                        rule,
                        device,
                        now_ms,
                        (value, Some(ts)),
                    );
                }
            }
        }
    }

    /// The device's presence changed at `now_ms`; `by_status` when it said so itself (last
    /// will or `offline` status) rather than by silence.
    pub fn on_presence(
        &mut self,
        alerts: &mut DeviceAlerts,
        device: DeviceContext<'_>,
        by_status: bool,
        now_ms: i64,
    ) {
        for (index, state) in &mut alerts.conditions {
            let Some(rule) = self.rules.get(*index) else {
                continue;
            };
            let Condition::Offline { after_ms } = rule.condition else {
                continue;
            };
            // With its own silence limit, a rule takes silence from its deadline instead.
            let breached = !device.online && (by_status || after_ms.is_none());
            if (device.online || breached) && state.observe(breached, now_ms, rule) {
                self.queue
                    .changed(*index, state.phase, rule, device, now_ms, (None, None));
            }
        }
    }

    /// A device restored after a restart (offline until it reports): its conditions are
    /// restored in their saved phases, and offline rules are checked again after a silence.
    pub fn restore(
        &mut self,
        alerts: &mut DeviceAlerts,
        device: DeviceContext<'_>,
        saved: &[(RuleIndex, Phase)],
        now_ms: i64,
    ) {
        for (index, state) in &mut alerts.conditions {
            let Some(rule) = self.rules.get(*index) else {
                continue;
            };
            if let Some((_, phase)) = saved.iter().find(|(rule, _)| rule == index) {
                *state = ConditionState::restored(*phase);
                if let Some(at) = phase.deadline(rule) {
                    self.queue.schedule(at, device.id, *index);
                }
            }
            if let Condition::Offline { after_ms } = rule.condition {
                // Restored devices are offline until they report, and their presence is
                // not tracked until then: a device that never comes back must still fire.
                let after = after_ms.unwrap_or(self.default_silence_ms);
                let at = device.last_seen.saturating_add(after).max(now_ms);
                self.queue.schedule(at, device.id, *index);
                state.check_scheduled = true;
            }
        }
    }

    /// The (device, rule) pairs whose deadline is due at `now_ms`, removed from the queue;
    /// the caller looks each device up and calls [`Evaluator::on_deadline`].
    pub fn take_due(&mut self, now_ms: i64) -> Vec<(DeviceId, RuleIndex)> {
        let mut due = Vec::new();
        while let Some(entry) = self.queue.deadlines.first_entry() {
            if *entry.key() > now_ms {
                break;
            }
            due.extend(entry.remove());
        }
        due
    }

    /// A deadline of `rule` on this device came due at `now_ms`.
    pub fn on_deadline(
        &mut self,
        alerts: &mut DeviceAlerts,
        device: DeviceContext<'_>,
        rule_index: RuleIndex,
        now_ms: i64,
    ) {
        let Some(rule) = self.rules.get(rule_index) else {
            return;
        };
        let Some(state) = alerts.get_mut(rule_index) else {
            return;
        };
        if let Condition::Offline { after_ms } = rule.condition {
            state.check_scheduled = false;
            let after = after_ms.unwrap_or(self.default_silence_ms);
            let silent_since = device.last_seen.saturating_add(after);
            let silent = now_ms >= silent_since && (after_ms.is_some() || !device.online);
            if silent && !state.breached {
                if state.observe(true, now_ms, rule) {
                    self.queue
                        .changed(rule_index, state.phase, rule, device, now_ms, (None, None));
                }
                return;
            }
            if !silent && after_ms.is_some() {
                // Heard from since: look again when its silence would be long enough.
                self.queue.schedule(silent_since, device.id, rule_index);
                state.check_scheduled = true;
            }
        }
        if state.expire(now_ms, rule) {
            self.queue
                .changed(rule_index, state.phase, rule, device, now_ms, (None, None));
        }
    }

    /// The phase changes since the previous call.
    pub fn take_events(&mut self) -> Vec<ConditionEvent> {
        std::mem::take(&mut self.queue.events)
    }

    /// Puts back events the manager could not take yet (they go first next time). While the
    /// manager stays busy, the waiting events are kept bounded: beyond [`COALESCE_AT`] only
    /// the latest phase of each device and rule is kept (the alert ends up right; the
    /// intermediate flips are not in its history).
    pub fn defer_events(&mut self, mut events: Vec<ConditionEvent>) {
        events.append(&mut self.queue.events);
        if events.len() > COALESCE_AT {
            events = coalesce(events);
        }
        self.queue.events = events;
    }

    /// Deadlines waiting (stale ones included), for tests and gauges.
    pub fn deadlines_len(&self) -> usize {
        self.queue.deadlines.values().map(Vec::len).sum()
    }
}

impl Queue {
    /// Records a phase change for the manager and schedules the new phase's deadline.
    fn changed(
        &mut self,
        rule_index: RuleIndex,
        phase: Phase,
        rule: &Rule,
        device: DeviceContext<'_>,
        now_ms: i64,
        (value, reading_ts): (Option<f64>, Option<i64>),
    ) {
        if let Some(at) = phase.deadline(rule) {
            self.schedule(at, device.id, rule_index);
        }
        self.events.push(ConditionEvent {
            rule: rule_index,
            device: device.id.clone(),
            group: device.group.clone(),
            phase,
            at: now_ms,
            value,
            reading_ts,
        });
    }

    fn schedule(&mut self, at: i64, device: &DeviceId, rule: RuleIndex) {
        let due = self.deadlines.entry(at).or_default();
        // One device's rule is due at most once at a given time.
        if !due.iter().any(|(id, index)| *index == rule && id == device) {
            due.push((device.clone(), rule));
        }
    }
}

/// The value of `metric` in a reading (readings carry a handful of metrics: a scan is
/// cheaper than a map).
fn find(metrics: &[(Arc<str>, MetricValue)], metric: &str) -> Option<f64> {
    metrics
        .iter()
        .find(|(name, _)| &**name == metric)
        .map(|(_, value)| value.as_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(device: &str, phase: Phase) -> ConditionEvent {
        ConditionEvent {
            rule: 0,
            device: device.into(),
            group: "hq".into(),
            phase,
            at: 0,
            value: None,
            reading_ts: None,
        }
    }

    #[test]
    fn events_waiting_for_a_busy_manager_stay_bounded_keeping_each_latest_phase() {
        let mut evaluator = Evaluator::new(Arc::default(), 60_000);
        // Each round the shard takes what waits, adds the new changes, and the manager's
        // queue is full again: everything goes back.
        for phase in [Phase::Firing, Phase::Normal, Phase::Firing, Phase::Normal] {
            let mut waiting = evaluator.take_events();
            waiting.extend((0..2_000).map(|i| event(&format!("d{i}"), phase)));
            evaluator.defer_events(waiting);
        }
        let events = evaluator.take_events();
        assert!(events.len() <= COALESCE_AT, "bounded: {}", events.len());
        // Whatever was coalesced, each device's last phase is its latest.
        let mut last = std::collections::HashMap::new();
        for event in &events {
            last.insert(event.device.clone(), event.phase);
        }
        assert_eq!(last.len(), 2_000);
        assert!(last.values().all(|phase| *phase == Phase::Normal));
    }
}
