//! The alert lifecycle (ISA-18.2, see [`iotmon_wire::alert`]): the [`AlertBook`] of open
//! alerts, turning condition phase changes and operator commands into alert transitions.
//! Synchronous and clock-free (time comes with each call), so it is tested without tasks.

use std::collections::HashMap;
use std::sync::Arc;

use iotmon_wire::alert::AlertTransition;
pub use iotmon_wire::alert::CommandError;
use iotmon_wire::{Alert, AlertCommand, AlertId, AlertState, GroupPath};

use super::condition::Phase;
use super::evaluator::ConditionEvent;
use super::rules::{Condition, Rule, RuleIndex, RuleSet, Share, Stat};
use super::store::{Changes, Saved, SavedCondition};

/// The open alerts, one per rule and subject, and the changes not yet stored.
#[derive(Debug)]
pub struct AlertBook {
    rules: Arc<RuleSet>,
    open: HashMap<AlertId, Alert>,
    /// (rule name, subject) → the open alert about it.
    by_subject: HashMap<(Arc<str>, Arc<str>), AlertId>,
    next_id: AlertId,
    /// How far apart the ids this book hands out are: 1 for a lone bridge; N for partition
    /// K of N, whose ids are all K modulo N, so that alerts of different bridges never share
    /// an id and an operator's command names the alert of exactly one bridge.
    id_step: AlertId,
    next_seq: u64,
    unsaved: Changes,
    /// Active alerts whose rule suppresses others (a group's, a gateway's), with their rule
    /// and group.
    suppressors: HashMap<AlertId, (RuleIndex, GroupPath)>,
}

impl AlertBook {
    /// The book as the store left it. Alerts and conditions of rules no longer configured
    /// are closed and forgotten (an alert nothing can clear would stay open for ever).
    pub fn new(rules: Arc<RuleSet>, saved: Saved, now_ms: i64) -> AlertBook {
        let mut book = AlertBook {
            rules,
            open: HashMap::new(),
            by_subject: HashMap::new(),
            next_id: saved.next_id.max(1),
            id_step: 1,
            next_seq: 1,
            unsaved: Changes::default(),
            suppressors: HashMap::new(),
        };
        for alert in saved.open {
            book.next_seq = book.next_seq.max(alert.seq + 1);
            if book.rules.index_of(&alert.rule).is_some() {
                book.insert(alert);
            } else {
                book.close_orphan(alert, now_ms);
            }
        }
        for condition in &saved.conditions {
            if book.rules.index_of(&condition.rule).is_none() {
                book.unsaved.conditions.push(SavedCondition {
                    phase: Phase::Normal,
                    ..condition.clone()
                });
            }
        }
        let suppressors: Vec<(AlertId, (RuleIndex, GroupPath))> = book
            .open
            .values()
            .filter(|alert| alert.state.is_active())
            .filter_map(|alert| {
                let rule = book.suppressing_rule(alert)?;
                Some((alert.id, (rule, alert.group.clone())))
            })
            .collect();
        book.suppressors.extend(suppressors);
        book
    }

    /// From now on, hands out only ids that are `index` modulo `count` (partition `index` of
    /// `count`), never below the next id the store expects.
    pub fn partition_ids(&mut self, index: u32, count: u32) {
        let step = AlertId::from(count.max(1));
        let index = AlertId::from(index) % step;
        let mut next = self.next_id.max(1);
        next += (index + step - next % step) % step;
        if next == 0 {
            next = step;
        }
        self.next_id = next;
        self.id_step = step;
    }

    /// `alert`'s rule, if its alerts suppress others while active.
    fn suppressing_rule(&self, alert: &Alert) -> Option<RuleIndex> {
        let index = self.rules.index_of(&alert.rule)?;
        self.rules
            .get(index)
            .is_some_and(Rule::suppresses_any)
            .then_some(index)
    }

    /// Whether the active suppressor (`rule`, `group`) explains `alert`.
    fn explains(&self, (rule, group): &(RuleIndex, GroupPath), alert: &Alert) -> bool {
        self.rules
            .get(*rule)
            .is_some_and(|rule| rule.explains(group, &alert.group))
    }

    /// The active suppressor that explains `alert`, other than `alert` itself.
    fn suppressor_of(&self, alert: &Alert) -> Option<AlertId> {
        self.suppressors
            .iter()
            .filter(|(id, suppressor)| **id != alert.id && self.explains(suppressor, alert))
            .map(|(id, _)| *id)
            .min()
    }

    /// After `changed` (an alert that just became active or inactive), updates which open
    /// alerts are suppressed; returns those whose suppression changed.
    fn resuppress(&mut self, changed: &Alert, now_ms: i64) -> Vec<Alert> {
        let Some(rule) = self.suppressing_rule(changed) else {
            return Vec::new();
        };
        let suppressor = (rule, changed.group.clone());
        if changed.state.is_active() {
            self.suppressors.insert(changed.id, suppressor.clone());
        } else {
            self.suppressors.remove(&changed.id);
        }
        let candidates: Vec<AlertId> = self
            .open
            .values()
            .filter(|alert| alert.id != changed.id && self.explains(&suppressor, alert))
            .map(|alert| alert.id)
            .collect();
        let mut updated = Vec::new();
        for id in candidates {
            let Some(mut alert) = self.open.remove(&id) else {
                continue;
            };
            let by = self.suppressor_of(&alert);
            if by != alert.suppressed_by {
                alert.suppressed_by = by;
                let event = if by.is_some() {
                    "suppressed"
                } else {
                    "unsuppressed"
                };
                let value = alert.value;
                self.record(&mut alert, event, value, None, now_ms);
                updated.push(alert.clone());
            }
            self.open.insert(id, alert);
        }
        updated
    }

    fn insert(&mut self, alert: Alert) {
        self.by_subject
            .insert((alert.rule.clone(), alert.subject.clone()), alert.id);
        self.open.insert(alert.id, alert);
    }

    fn close_orphan(&mut self, mut alert: Alert, now_ms: i64) {
        alert.state = AlertState::Closed;
        alert.changed_at = now_ms;
        alert.message = format!("closed: rule {} is no longer configured", alert.rule);
        self.record(&mut alert, "closed", None, None, now_ms);
    }

    /// Open alerts, in no particular order.
    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.open.values()
    }

    /// A condition changed phase: raises, reactivates or clears the alert of its rule and
    /// subject. Returns the alerts as changed: that one, and those whose suppression it
    /// changed.
    pub fn on_condition(&mut self, event: &ConditionEvent) -> Vec<Alert> {
        let Some(alert) = self.apply_condition(event) else {
            return Vec::new();
        };
        let mut changed = self.resuppress(&alert, event.at);
        changed.insert(0, alert);
        changed
    }

    fn apply_condition(&mut self, event: &ConditionEvent) -> Option<Alert> {
        let rules = Arc::clone(&self.rules);
        let rule = rules.get(event.rule)?;
        self.unsaved.conditions.push(SavedCondition {
            rule: rule.name.to_string(),
            device: event.device.to_string(),
            group: event.group.to_string(),
            phase: event.phase,
        });
        let key = (rule.name.clone(), Arc::<str>::from(&*event.device));
        let open = self.by_subject.get(&key).copied();
        match (event.phase, open) {
            (Phase::Firing, None) => Some(self.raise(rule, event)),
            (Phase::Firing, Some(id)) => self.reactivate(id, rule, event),
            (Phase::Normal, Some(id)) => self.clear(id, rule, event),
            _ => None,
        }
    }

    fn raise(&mut self, rule: &Rule, event: &ConditionEvent) -> Alert {
        let id = self.next_id;
        self.next_id += self.id_step;
        let mut alert = Alert {
            id,
            rule: rule.name.clone(),
            subject: Arc::from(&*event.device),
            group: event.group.clone(),
            severity: rule.severity,
            state: AlertState::ActiveUnacknowledged,
            message: describe(rule, event.value, true),
            value: event.value,
            reading_ts: event.reading_ts,
            raised_at: event.at,
            changed_at: event.at,
            acknowledged_by: None,
            acknowledged_at: None,
            shelved_until: None,
            shelved_by: None,
            suppressed_by: None,
            seq: 0,
        };
        alert.suppressed_by = self.suppressor_of(&alert);
        self.record(&mut alert, "raised", event.value, None, event.at);
        self.insert(alert.clone());
        alert
    }

    fn reactivate(&mut self, id: AlertId, rule: &Rule, event: &ConditionEvent) -> Option<Alert> {
        let mut alert = self.open.remove(&id)?;
        if alert.state.is_active() {
            // Already active (a restart replayed it): nothing new.
            self.open.insert(id, alert);
            return None;
        }
        // The condition came back before anyone acknowledged the clear: the same alert.
        alert.state = AlertState::ActiveUnacknowledged;
        alert.group = event.group.clone();
        alert.changed_at = event.at;
        alert.value = event.value;
        alert.reading_ts = event.reading_ts;
        alert.message = describe(rule, event.value, true);
        self.record(&mut alert, "reactivated", event.value, None, event.at);
        self.open.insert(id, alert.clone());
        Some(alert)
    }

    fn clear(&mut self, id: AlertId, rule: &Rule, event: &ConditionEvent) -> Option<Alert> {
        let mut alert = self.open.remove(&id)?;
        if !alert.state.is_active() {
            self.open.insert(id, alert);
            return None;
        }
        alert.state = AlertState::of(false, alert.state.is_acknowledged());
        alert.changed_at = event.at;
        alert.value = event.value;
        alert.reading_ts = event.reading_ts;
        alert.message = describe(rule, event.value, false);
        self.record(&mut alert, "cleared", event.value, None, event.at);
        self.keep_if_open(alert.clone());
        Some(alert)
    }

    /// Applies an operator's command at `now_ms`.
    ///
    /// # Errors
    /// The alert is not open, or a shelving ends in the past.
    pub fn on_command(
        &mut self,
        command: &AlertCommand,
        now_ms: i64,
    ) -> Result<Alert, CommandError> {
        let id = command.id();
        let mut alert = self.open.remove(&id).ok_or(CommandError::NotFound(id))?;
        let result = apply_command(&mut alert, command, now_ms);
        match result {
            Ok(Some((event, by))) => {
                alert.changed_at = now_ms;
                let value = alert.value;
                self.record(&mut alert, event, value, Some(by), now_ms);
                self.keep_if_open(alert.clone());
                Ok(alert)
            }
            Ok(None) => {
                self.open.insert(id, alert.clone());
                Ok(alert)
            }
            Err(error) => {
                self.open.insert(id, alert);
                Err(error)
            }
        }
    }

    /// Ends the shelving of alerts whose shelf time is over at `now_ms`.
    pub fn expire_shelves(&mut self, now_ms: i64) -> Vec<Alert> {
        let expired: Vec<AlertId> = self
            .open
            .values()
            .filter(|alert| alert.shelved_until.is_some_and(|until| until <= now_ms))
            .map(|alert| alert.id)
            .collect();
        let mut changed = Vec::new();
        for id in expired {
            if let Some(mut alert) = self.open.remove(&id) {
                alert.shelved_until = None;
                alert.shelved_by = None;
                alert.changed_at = now_ms;
                let value = alert.value;
                self.record(&mut alert, "unshelved", value, None, now_ms);
                self.open.insert(id, alert.clone());
                changed.push(alert);
            }
        }
        changed
    }

    /// Closes the alerts that cleared, unacknowledged, more than `after_ms` before `now_ms`.
    pub fn expire_cleared(&mut self, now_ms: i64, after_ms: i64) -> Vec<Alert> {
        let expired: Vec<AlertId> = self
            .open
            .values()
            .filter(|alert| {
                alert.state == AlertState::ClearedUnacknowledged
                    && now_ms.saturating_sub(alert.changed_at) >= after_ms
            })
            .map(|alert| alert.id)
            .collect();
        let mut closed = Vec::new();
        for id in expired {
            if let Some(mut alert) = self.open.remove(&id) {
                alert.state = AlertState::Closed;
                alert.changed_at = now_ms;
                let value = alert.value;
                self.record(&mut alert, "expired", value, None, now_ms);
                self.keep_if_open(alert.clone());
                closed.push(alert);
            }
        }
        closed
    }

    /// The earliest end of a shelving, if any alert is shelved.
    pub fn next_shelf_expiry(&self) -> Option<i64> {
        self.open
            .values()
            .filter_map(|alert| alert.shelved_until)
            .min()
    }

    fn keep_if_open(&mut self, alert: Alert) {
        if alert.state.is_open() {
            self.open.insert(alert.id, alert);
        } else {
            self.by_subject
                .remove(&(alert.rule.clone(), alert.subject.clone()));
        }
    }

    /// Stamps a new `seq` and queues the alert and its transition for the store, always as a
    /// pair (the webhook sink relies on it: the n-th transition goes with the n-th alert).
    fn record(
        &mut self,
        alert: &mut Alert,
        event: &str,
        value: Option<f64>,
        by: Option<String>,
        ts: i64,
    ) {
        alert.seq = self.next_seq;
        self.next_seq += 1;
        self.unsaved.transitions.push(AlertTransition {
            alert: alert.id,
            ts,
            event: event.to_string(),
            state: alert.state,
            value,
            by,
        });
        self.unsaved.alerts.push(alert.clone());
    }

    /// The changes since the previous call, for the store.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.unsaved)
    }
}

/// What `command` does to `alert`: the transition's name and who made it, or `None` when it
/// changes nothing (acknowledging twice).
fn apply_command(
    alert: &mut Alert,
    command: &AlertCommand,
    now_ms: i64,
) -> Result<Option<(&'static str, String)>, CommandError> {
    match command {
        AlertCommand::Acknowledge { by, .. } => {
            if alert.state.is_acknowledged() {
                return Ok(None);
            }
            alert.state = AlertState::of(alert.state.is_active(), true);
            alert.acknowledged_by = Some(by.clone());
            alert.acknowledged_at = Some(now_ms);
            let event = if alert.state.is_open() {
                "acknowledged"
            } else {
                "closed"
            };
            Ok(Some((event, by.clone())))
        }
        AlertCommand::Shelve { until, by, .. } => {
            if *until <= now_ms {
                return Err(CommandError::ShelveInPast);
            }
            alert.shelved_until = Some(*until);
            alert.shelved_by = Some(by.clone());
            Ok(Some(("shelved", by.clone())))
        }
        AlertCommand::Unshelve { by, .. } => {
            if alert.shelved_until.is_none() {
                return Ok(None);
            }
            alert.shelved_until = None;
            alert.shelved_by = None;
            Ok(Some(("unshelved", by.clone())))
        }
    }
}

/// A one-line description: `temperature 31.2 above 30`, `temperature back to 27.5`,
/// `offline`, `back online`.
fn describe(rule: &Rule, value: Option<f64>, active: bool) -> String {
    let shown = |v: Option<f64>| v.map_or_else(String::new, |v| format!(" {}", round(v)));
    match &rule.condition {
        Condition::Threshold {
            metric,
            direction,
            trigger,
            ..
        } if active => format!("{metric}{} {} {trigger}", shown(value), direction.word()),
        Condition::Rate {
            metric,
            direction,
            trigger,
            ..
        } if active => format!(
            "{metric} changing{}/min, {} {trigger}/min",
            shown(value),
            direction.word()
        ),
        Condition::Threshold { metric, .. } | Condition::Rate { metric, .. } => {
            format!("{metric} back to normal{}", shown(value))
        }
        Condition::Offline { .. } if active => "offline".to_string(),
        Condition::Offline { .. } => "back online".to_string(),
        Condition::GroupStat {
            metric,
            stat,
            direction,
            trigger,
            ..
        } if active => format!(
            "{} {metric}{} {} {trigger}",
            stat_word(*stat),
            shown(value),
            direction.word()
        ),
        Condition::GroupStat { metric, stat, .. } => {
            format!(
                "{} {metric} back to normal{}",
                stat_word(*stat),
                shown(value)
            )
        }
        Condition::GroupShare { share, trigger, .. } if active => format!(
            "{}% of devices {}, above {}%",
            percent(value.unwrap_or_default()),
            share_word(*share),
            percent(*trigger)
        ),
        Condition::GroupShare { share, .. } => format!(
            "{}% of devices {}, back to normal",
            percent(value.unwrap_or_default()),
            share_word(*share)
        ),
    }
}

fn stat_word(stat: Stat) -> &'static str {
    match stat {
        Stat::Mean => "mean",
        Stat::Min => "min",
        Stat::Max => "max",
    }
}

fn share_word(share: Share) -> &'static str {
    match share {
        Share::Offline => "offline",
        Share::Alerting => "alerting",
    }
}

fn percent(share: f64) -> f64 {
    (share * 1000.0).round() / 10.0
}

/// Rounds for display to 3 significant decimals.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use iotmon_wire::Severity;

    use super::*;
    use crate::alerts::rules::AlertsConfig;

    fn book() -> AlertBook {
        let config: AlertsConfig = toml::from_str(
            "[[rules]]\nname = \"hot\"\nmetric = \"t\"\nabove = 30.0\nseverity = \"major\"\n",
        )
        .expect("rules");
        let rules = Arc::new(RuleSet::new(&config).expect("valid"));
        AlertBook::new(rules, Saved::default(), 0)
    }

    fn event(phase: Phase, at: i64, value: f64) -> ConditionEvent {
        ConditionEvent {
            rule: 0,
            device: "d1".into(),
            group: "hq/a".into(),
            phase,
            at,
            value: Some(value),
            reading_ts: Some(at),
        }
    }

    fn ack(id: AlertId) -> AlertCommand {
        AlertCommand::Acknowledge {
            id,
            by: "ana".into(),
        }
    }

    #[test]
    fn an_alert_goes_active_acknowledged_cleared_and_closed_with_every_transition_stored() {
        let mut book = book();
        let raised = book
            .on_condition(&event(Phase::Firing, 10, 31.0))
            .into_iter()
            .next()
            .expect("raised");
        assert_eq!(raised.state, AlertState::ActiveUnacknowledged);
        assert_eq!(raised.severity, Severity::Major);
        assert_eq!(raised.message, "t 31 above 30");
        let acked = book.on_command(&ack(raised.id), 20).expect("acked");
        assert_eq!(acked.state, AlertState::ActiveAcknowledged);
        assert_eq!(acked.acknowledged_by.as_deref(), Some("ana"));
        let cleared = book
            .on_condition(&event(Phase::Normal, 30, 27.0))
            .into_iter()
            .next()
            .expect("cleared");
        assert_eq!(cleared.state, AlertState::Closed);
        assert_eq!(book.open_alerts().count(), 0);
        let changes = book.take_changes();
        let events: Vec<&str> = changes
            .transitions
            .iter()
            .map(|t| t.event.as_str())
            .collect();
        assert_eq!(events, ["raised", "acknowledged", "cleared"]);
        assert_eq!(changes.conditions.len(), 2);
        // A new breach after closing is a new alert.
        let again = book
            .on_condition(&event(Phase::Firing, 40, 32.0))
            .into_iter()
            .next()
            .expect("raised");
        assert_ne!(again.id, raised.id);
    }

    #[test]
    fn a_partitioned_book_hands_out_only_its_own_residue_of_ids() {
        let mut book = book();
        book.partition_ids(1, 3);
        let mut ids = Vec::new();
        for at in [10, 30, 50] {
            let raised = book.on_condition(&event(Phase::Firing, at, 31.0));
            ids.push(raised[0].id);
            let _ = book.on_command(&ack(raised[0].id), at + 1);
            book.on_condition(&event(Phase::Normal, at + 2, 20.0));
        }
        assert_eq!(ids, [1, 4, 7]);
        // Another bridge's id is not this book's: refused, whatever that bridge holds.
        assert!(book.on_command(&ack(2), 60).is_err());
        let mut restarted = book_with_next_id(8);
        restarted.partition_ids(0, 3);
        let raised = restarted.on_condition(&event(Phase::Firing, 10, 31.0));
        assert_eq!(
            raised[0].id, 9,
            "never below the stored next id, and 0 mod 3"
        );
    }

    fn book_with_next_id(next_id: AlertId) -> AlertBook {
        let fresh = book();
        let saved = Saved {
            next_id,
            ..Saved::default()
        };
        AlertBook::new(fresh.rules, saved, 0)
    }

    #[test]
    fn a_condition_that_returns_before_acknowledgement_reactivates_the_same_alert() {
        let mut book = book();
        let raised = book
            .on_condition(&event(Phase::Firing, 10, 31.0))
            .into_iter()
            .next()
            .expect("raised");
        let cleared = book
            .on_condition(&event(Phase::Normal, 20, 27.0))
            .into_iter()
            .next()
            .expect("cleared");
        assert_eq!(cleared.state, AlertState::ClearedUnacknowledged);
        let back = book
            .on_condition(&event(Phase::Firing, 30, 33.0))
            .into_iter()
            .next()
            .expect("back");
        assert_eq!(back.id, raised.id, "one open alert per device and rule");
        assert_eq!(back.state, AlertState::ActiveUnacknowledged);
        assert!(back.seq > cleared.seq);
        // Acknowledging a cleared alert closes it.
        book.on_condition(&event(Phase::Normal, 40, 27.0))
            .into_iter()
            .next();
        let closed = book.on_command(&ack(raised.id), 50).expect("acked");
        assert_eq!(closed.state, AlertState::Closed);
        assert_eq!(
            book.on_command(&ack(raised.id), 60),
            Err(CommandError::NotFound(raised.id))
        );
    }

    #[test]
    fn pending_phases_are_stored_but_raise_nothing() {
        let mut book = book();
        assert!(book
            .on_condition(&event(Phase::Pending { since: 5 }, 5, 31.0))
            .into_iter()
            .next()
            .is_none());
        let changes = book.take_changes();
        assert!(changes.alerts.is_empty());
        assert_eq!(
            changes.conditions,
            vec![SavedCondition {
                rule: "hot".into(),
                device: "d1".into(),
                group: "hq/a".into(),
                phase: Phase::Pending { since: 5 }
            }]
        );
    }

    #[test]
    fn shelving_hides_until_it_expires() {
        let mut book = book();
        let raised = book
            .on_condition(&event(Phase::Firing, 10, 31.0))
            .into_iter()
            .next()
            .expect("raised");
        let shelve = |until| AlertCommand::Shelve {
            id: raised.id,
            until,
            by: "ana".into(),
        };
        assert_eq!(
            book.on_command(&shelve(5), 10),
            Err(CommandError::ShelveInPast)
        );
        let shelved = book.on_command(&shelve(1_000), 10).expect("shelved");
        assert!(shelved.is_shelved(500));
        assert_eq!(book.next_shelf_expiry(), Some(1_000));
        assert!(book.expire_shelves(999).is_empty());
        let back = book.expire_shelves(1_000);
        assert_eq!(back.len(), 1);
        assert!(!back[0].is_shelved(1_000));
        assert_eq!(back[0].state, AlertState::ActiveUnacknowledged);
    }

    #[test]
    fn a_group_alert_suppresses_its_devices_alerts_while_active() {
        let config: AlertsConfig = toml::from_str(
            r#"
            [[rules]]
            name = "silent"
            offline = true
            [[rules]]
            name = "floor-offline"
            scope = "group"
            offline_share_above = 0.5
            "#,
        )
        .expect("rules");
        let rules = Arc::new(RuleSet::new(&config).expect("valid"));
        let mut book = AlertBook::new(rules, Saved::default(), 0);
        let offline = |device: &str, group: &str, phase, at| ConditionEvent {
            rule: 0,
            device: device.into(),
            group: group.into(),
            phase,
            at,
            value: None,
            reading_ts: None,
        };
        let floor = |phase, at| ConditionEvent {
            rule: 1,
            device: "hq/f3".into(),
            group: "hq/f3".into(),
            phase,
            at,
            value: Some(0.6),
            reading_ts: None,
        };
        let first = book.on_condition(&offline("d1", "hq/f3", Phase::Firing, 1));
        assert_eq!(first[0].suppressed_by, None, "nothing explains it yet");
        // The floor's alert explains d1's, and any new one under the floor.
        let changed = book.on_condition(&floor(Phase::Firing, 2));
        let floor_id = changed[0].id;
        assert_eq!(changed.len(), 2);
        assert_eq!(changed[1].suppressed_by, Some(floor_id));
        let second = book.on_condition(&offline("d2", "hq/f3", Phase::Firing, 3));
        assert_eq!(second[0].suppressed_by, Some(floor_id));
        let elsewhere = book.on_condition(&offline("d3", "hq/f2", Phase::Firing, 3));
        assert_eq!(elsewhere[0].suppressed_by, None, "another floor");
        // The floor clears: its devices' alerts stand on their own again.
        let changed = book.on_condition(&floor(Phase::Normal, 4));
        assert_eq!(changed.len(), 3);
        assert!(changed[1..]
            .iter()
            .all(|alert| alert.suppressed_by.is_none()));
        let events: Vec<String> = book
            .take_changes()
            .transitions
            .into_iter()
            .map(|t| t.event)
            .collect();
        assert_eq!(events.iter().filter(|e| *e == "suppressed").count(), 1);
        assert_eq!(events.iter().filter(|e| *e == "unsuppressed").count(), 2);
    }

    #[test]
    fn a_gateway_going_offline_suppresses_the_alerts_of_the_devices_behind_it() {
        let config: AlertsConfig = toml::from_str(
            r#"
            [[rules]]
            name = "gateway-offline"
            devices = ["gw-a"]
            offline = true
            suppresses = ["hq/a/**"]
            [[rules]]
            name = "silent"
            offline = true
            "#,
        )
        .expect("rules");
        let rules = Arc::new(RuleSet::new(&config).expect("valid"));
        let mut book = AlertBook::new(rules, Saved::default(), 0);
        let offline = |rule, device: &str, group: &str, phase| ConditionEvent {
            rule,
            device: device.into(),
            group: group.into(),
            phase,
            at: 1,
            value: None,
            reading_ts: None,
        };
        let gateway = book.on_condition(&offline(0, "gw-a", "hq/gateways", Phase::Firing));
        let gateway_id = gateway[0].id;
        // The gateway's own "silent" alert is not suppressed by itself or its rule's groups.
        let own = book.on_condition(&offline(1, "gw-a", "hq/gateways", Phase::Firing));
        assert_eq!(own[0].suppressed_by, None);
        let behind = book.on_condition(&offline(1, "d1", "hq/a/floor-1", Phase::Firing));
        assert_eq!(behind[0].suppressed_by, Some(gateway_id));
        let elsewhere = book.on_condition(&offline(1, "d2", "hq/b", Phase::Firing));
        assert_eq!(elsewhere[0].suppressed_by, None);
        // The gateway comes back: the devices behind it stand on their own.
        let back = book.on_condition(&offline(0, "gw-a", "hq/gateways", Phase::Normal));
        assert!(back[1..]
            .iter()
            .any(|alert| alert.subject.as_ref() == "d1" && alert.suppressed_by.is_none()));
    }

    #[test]
    fn a_cleared_alert_nobody_acknowledges_is_closed_after_a_while() {
        let mut book = book();
        let raised = book
            .on_condition(&event(Phase::Firing, 10, 31.0))
            .into_iter()
            .next()
            .expect("raised");
        book.on_condition(&event(Phase::Normal, 20, 27.0));
        assert!(book.expire_cleared(1_019, 1_000).is_empty(), "not yet");
        let closed = book.expire_cleared(1_020, 1_000);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].id, raised.id);
        assert_eq!(closed[0].state, AlertState::Closed);
        assert_eq!(book.open_alerts().count(), 0);
        // An active alert is never expired.
        book.on_condition(&event(Phase::Firing, 2_000, 31.0));
        assert!(book.expire_cleared(1_000_000, 1_000).is_empty());
    }

    #[test]
    fn alerts_of_rules_no_longer_configured_are_closed_at_start() {
        let mut first = book();
        let raised = first
            .on_condition(&event(Phase::Firing, 10, 31.0))
            .into_iter()
            .next()
            .expect("raised");
        let saved = Saved {
            open: vec![raised],
            conditions: vec![SavedCondition {
                rule: "gone".into(),
                device: "d1".into(),
                group: "hq/a".into(),
                phase: Phase::Firing,
            }],
            next_id: 2,
        };
        let rules = Arc::new(RuleSet::default());
        let mut book = AlertBook::new(rules, saved, 100);
        assert_eq!(book.open_alerts().count(), 0);
        let changes = book.take_changes();
        assert_eq!(changes.alerts[0].state, AlertState::Closed);
        assert_eq!(changes.conditions[0].phase, Phase::Normal);
    }
}
