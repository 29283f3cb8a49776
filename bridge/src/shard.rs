//! One shard of the fleet: the devices whose id hashes to it, owned by one task so the hot
//! path takes no locks. Keeps each device's latest state and presence, its share of the group
//! aggregates, and the rollup deltas and registry changes due for the store.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use iotmon_wire::mqtt::Message;
use iotmon_wire::topics;
use iotmon_wire::{DeviceId, DeviceState, GroupPath, MetricValue, Metrics};

use crate::aggregates::{GroupPartials, ShardGroup};
use crate::alerts::condition::Phase;
use crate::alerts::evaluator::{ConditionEvent, DeviceAlerts, DeviceContext, Evaluator};
use crate::alerts::rules::{RuleIndex, RuleSet};
use crate::config::BridgeConfig;
use crate::counters::BridgeCounters;
use crate::ingest::{self, Reading, RejectReason};
use crate::reject_log::RejectLog;
use crate::rollup::{RollupBuffer, RollupDelta};
use crate::{FastMap, FastSet};

/// A device as the store keeps it in its registry, and as it is restored after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryEntry {
    /// Latest state (its metric names are the metrics seen).
    pub state: DeviceState,
    /// First and latest receipt of anything from it, ms since the epoch.
    pub first_seen: i64,
    pub last_seen: i64,
}

/// What a shard hands the store each flush interval.
#[derive(Debug, Default)]
pub struct StoreBatch {
    pub rollups: Vec<RollupDelta>,
    pub devices: Vec<RegistryEntry>,
}

impl StoreBatch {
    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty() && self.devices.is_empty()
    }
}

#[derive(Debug)]
struct Device {
    state: DeviceState,
    first_seen: i64,
    last_seen: i64,
    /// Smoothed interval between receipts, ms; `None` until two receipts were seen.
    interval_ms: Option<f64>,
    /// Listed in the silence schedule.
    check_scheduled: bool,
    /// When its registry row was last queued for the store.
    registry_queued_ms: i64,
    /// When its state was last handed to the live stream.
    live_sent_ms: i64,
    /// The alert rules that select it, with their conditions.
    alerts: DeviceAlerts,
}

/// Saved alert conditions of one device: (rule, phase).
pub type SavedConditions = Vec<(RuleIndex, Phase)>;

/// What makes a device's alert conditions be evaluated.
#[derive(Debug, Clone, Copy)]
enum AlertTrigger<'a> {
    /// A reading with these metrics, stamped `ts`.
    Reading(&'a [(Arc<str>, MetricValue)], i64),
    /// Its presence changed; `by_status` when the device said so (last will, status).
    Presence { by_status: bool },
    /// A rule's deadline came due.
    Deadline(RuleIndex),
}

/// How often a device reporting nothing new (same group, same metrics) has its registry row
/// (last seen, latest values) rewritten: often enough for a useful restore, rarely enough that
/// a large fleet does not turn into one SQLite upsert per reading.
const REGISTRY_REFRESH_MS: i64 = 30_000;

/// The devices of one shard.
#[derive(Debug)]
pub struct Shard {
    config: Arc<BridgeConfig>,
    counters: Arc<BridgeCounters>,
    devices: FastMap<DeviceId, Device>,
    /// Changed since the last live batch: one entry per device however often it reports,
    /// which is what coalesces the live stream.
    changed: FastSet<DeviceId>,
    /// Changed since the last store batch.
    registry_changed: FastSet<DeviceId>,
    groups: GroupPartials,
    rollups: RollupBuffer,
    /// When to check devices for silence (ms since the epoch), each device listed once: a
    /// device is looked at about once per silence limit, not on every reading.
    silence_checks: BTreeMap<i64, Vec<DeviceId>>,
    reject_log: RejectLog,
    /// Alert rules, conditions' deadlines, and the phase changes for the alert manager.
    evaluator: Evaluator,
}

impl Shard {
    pub fn new(
        config: Arc<BridgeConfig>,
        counters: Arc<BridgeCounters>,
        rules: Arc<RuleSet>,
    ) -> Self {
        let base = config
            .rollups
            .tiers
            .first()
            .map_or(10_000, |tier| tier.width_ms());
        let grace = i64::try_from(config.rollups.grace.as_millis()).unwrap_or(i64::MAX);
        let default_silence = silence_limit_ms(&config, None);
        Shard {
            evaluator: Evaluator::new(rules, default_silence),
            rollups: RollupBuffer::new(base, grace),
            config,
            counters,
            devices: FastMap::default(),
            changed: FastSet::default(),
            registry_changed: FastSet::default(),
            groups: GroupPartials::new(),
            silence_checks: BTreeMap::new(),
            reject_log: RejectLog::new(std::time::Duration::from_secs(10)),
        }
    }

    /// Handles one message from a device topic (`sensors/...` or `status/...`) at `now_ms`.
    pub fn handle(&mut self, message: &Message, now_ms: i64) {
        if message.topic.starts_with("status/") {
            return self.handle_status(message, now_ms);
        }
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let Ok(topic) = topics::parse_sensor_topic(&message.topic) else {
            return self.reject(RejectReason::BadTopic, &message.topic);
        };
        let parsed = ingest::parse_payload(&message.payload, now_ms, &self.config.limits);
        for reason in parsed.rejected {
            self.reject(reason, &message.topic);
        }
        let accepted = parsed.readings.len() as u64;
        for reading in parsed.readings {
            self.apply(topic.group, topic.device, reading, now_ms);
        }
        self.counters
            .readings
            .fetch_add(accepted, Ordering::Relaxed);
    }

    fn handle_status(&mut self, message: &Message, now_ms: i64) {
        let Ok(topic) = topics::parse_status_topic(&message.topic) else {
            return self.reject(RejectReason::BadTopic, &message.topic);
        };
        let online = match &message.payload[..] {
            b"online" => true,
            b"offline" => false,
            _ => return self.reject(RejectReason::BadStatus, &message.topic),
        };
        let id = self.device(topic.group, topic.device, now_ms);
        if let Some(device) = self.devices.get_mut(&id) {
            device.last_seen = now_ms;
        }
        self.set_online(&id, online, true, now_ms);
        if online {
            self.schedule_check(&id, now_ms);
        }
        self.registry_changed.insert(id);
    }

    /// Applies one accepted reading from `device` under `group`.
    pub fn apply(&mut self, group: &str, device: &str, reading: Reading, now_ms: i64) {
        let id = self.device(group, device, now_ms);
        self.add_to_rollups(&id, &reading, now_ms);
        let Some(entry) = self.devices.get_mut(&id) else {
            return;
        };
        // Alerts see the readings that become the latest state, not late ones.
        if reading.ts >= entry.state.ts || entry.state.metrics.is_empty() {
            let trigger = AlertTrigger::Reading(&reading.metrics, reading.ts);
            self.evaluate_alerts(&id, now_ms, trigger);
        }
        let Some(entry) = self.devices.get_mut(&id) else {
            return;
        };
        entry.note_receipt(now_ms);
        let metrics_known = entry.state.metrics.len();
        if reading.ts >= entry.state.ts || entry.state.metrics.is_empty() {
            entry.state.ts = reading.ts;
            for (name, value) in reading.metrics {
                let old = entry.state.metrics.insert(name.clone(), value);
                if old != Some(value) {
                    let group = entry.state.group.clone();
                    self.groups.value_changed(
                        &group,
                        &name,
                        old.map(MetricValue::as_f64),
                        Some(value.as_f64()),
                    );
                }
            }
        }
        let registry_due = entry.state.metrics.len() != metrics_known
            || now_ms.saturating_sub(entry.registry_queued_ms) >= REGISTRY_REFRESH_MS;
        if registry_due {
            entry.registry_queued_ms = now_ms;
            self.registry_changed.insert(id.clone());
        }
        self.set_online(&id, true, false, now_ms);
        self.schedule_check(&id, now_ms);
        self.changed.insert(id);
    }

    fn add_to_rollups(&mut self, id: &DeviceId, reading: &Reading, now_ms: i64) {
        for (name, value) in &reading.metrics {
            if !self
                .rollups
                .add(id, name, value.as_f64(), reading.ts, now_ms)
            {
                self.counters.late_readings.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The id of `device`, registering it (offline, no metrics) when new and moving it when
    /// it appears under another group.
    fn device(&mut self, group: &str, device: &str, now_ms: i64) -> DeviceId {
        let Some(entry) = self.devices.get(device) else {
            let id = DeviceId::from(device);
            let state = DeviceState {
                id: id.clone(),
                group: group.into(),
                ts: 0,
                metrics: Metrics::new(),
                online: false,
            };
            self.groups.presence_changed(group, false, true);
            let mut device = Device::new(state, now_ms, now_ms);
            device.alerts = self.evaluator.select(&id, group, DeviceAlerts::default());
            self.devices.insert(id.clone(), device);
            self.changed.insert(id.clone());
            return id;
        };
        let id = entry.state.id.clone();
        if &*entry.state.group != group {
            self.move_device(&id, group.into());
        }
        id
    }

    fn move_device(&mut self, id: &DeviceId, to: GroupPath) {
        let Some(entry) = self.devices.get_mut(id) else {
            return;
        };
        let from = std::mem::replace(&mut entry.state.group, to.clone());
        entry.registry_queued_ms = i64::MIN;
        let online = entry.state.online;
        let was_alerting = entry.alerts.is_alerting();
        let alerts = std::mem::take(&mut entry.alerts);
        entry.alerts = self.evaluator.select(id, &to, alerts);
        let alerting = entry.alerts.is_alerting();
        if was_alerting {
            self.groups.alerting_changed(&from, false);
        }
        if alerting {
            self.groups.alerting_changed(&to, true);
        }
        for (name, value) in &entry.state.metrics {
            self.groups
                .value_changed(&from, name, Some(value.as_f64()), None);
            self.groups
                .value_changed(&to, name, None, Some(value.as_f64()));
        }
        self.groups.presence_changed(&from, online, false);
        self.groups.presence_changed(&to, online, true);
        self.changed.insert(id.clone());
    }

    fn set_online(&mut self, id: &DeviceId, online: bool, by_status: bool, now_ms: i64) {
        let Some(entry) = self.devices.get_mut(id) else {
            return;
        };
        if entry.state.online == online {
            return;
        }
        entry.state.online = online;
        let group = entry.state.group.clone();
        self.groups.presence_changed(&group, !online, false);
        self.groups.presence_changed(&group, online, true);
        self.changed.insert(id.clone());
        self.evaluate_alerts(id, now_ms, AlertTrigger::Presence { by_status });
    }

    /// Evaluates the device's alert conditions on `trigger`, keeping its groups' alerting
    /// counts in step.
    fn evaluate_alerts(&mut self, id: &DeviceId, now_ms: i64, trigger: AlertTrigger<'_>) {
        if !self.evaluator.has_rules() {
            return;
        }
        let Some(device) = self.devices.get_mut(id) else {
            return;
        };
        let was_alerting = device.alerts.is_alerting();
        let context = DeviceContext::of(&device.state, device.last_seen);
        let alerts = &mut device.alerts;
        match trigger {
            AlertTrigger::Reading(metrics, ts) => {
                self.evaluator
                    .on_reading(alerts, context, metrics, ts, now_ms);
            }
            AlertTrigger::Presence { by_status } => {
                self.evaluator
                    .on_presence(alerts, context, by_status, now_ms);
            }
            AlertTrigger::Deadline(rule) => {
                self.evaluator.on_deadline(alerts, context, rule, now_ms);
            }
        }
        let alerting = device.alerts.is_alerting();
        if alerting != was_alerting {
            let group = device.state.group.clone();
            self.groups.alerting_changed(&group, alerting);
        }
    }

    /// Evaluates the alert conditions whose delay or silence check is due at `now_ms`.
    pub fn check_alert_deadlines(&mut self, now_ms: i64) {
        for (id, rule) in self.evaluator.take_due(now_ms) {
            self.evaluate_alerts(&id, now_ms, AlertTrigger::Deadline(rule));
        }
    }

    /// Condition phase changes since the previous call, for the alert manager.
    pub fn take_alert_events(&mut self) -> Vec<ConditionEvent> {
        self.evaluator.take_events()
    }

    /// Puts back phase changes the manager could not take yet.
    pub fn defer_alert_events(&mut self, events: Vec<ConditionEvent>) {
        self.evaluator.defer_events(events);
    }

    /// Restores the saved alert conditions of device `id` under `group` (after a restart).
    /// Call after the registry is restored: a device the registry lost (first seen just
    /// before a crash) is restored too, offline and without values, so that its alerts go on.
    pub fn restore_alerts(&mut self, id: &str, group: &str, saved: SavedConditions, now_ms: i64) {
        if !self.devices.contains_key(id) {
            let state = DeviceState {
                id: id.into(),
                group: group.into(),
                ts: 0,
                metrics: Metrics::new(),
                online: false,
            };
            let entry = RegistryEntry {
                state,
                first_seen: now_ms,
                last_seen: now_ms,
            };
            self.restore(entry, now_ms);
        }
        let Some(device) = self.devices.get(id) else {
            return;
        };
        let id = device.state.id.clone();
        self.restore_conditions(&id, &saved, now_ms);
    }

    fn restore_conditions(&mut self, id: &DeviceId, saved: &[(RuleIndex, Phase)], now_ms: i64) {
        let Some(device) = self.devices.get_mut(id) else {
            return;
        };
        let was_alerting = device.alerts.is_alerting();
        let context = DeviceContext::of(&device.state, device.last_seen);
        self.evaluator
            .restore(&mut device.alerts, context, saved, now_ms);
        if device.alerts.is_alerting() != was_alerting {
            let group = device.state.group.clone();
            self.groups.alerting_changed(&group, !was_alerting);
        }
    }

    fn schedule_check(&mut self, id: &DeviceId, now_ms: i64) {
        let Some(entry) = self.devices.get_mut(id) else {
            return;
        };
        if entry.check_scheduled {
            return;
        }
        entry.check_scheduled = true;
        let at = now_ms.saturating_add(silence_limit_ms(&self.config, entry.interval_ms));
        self.silence_checks.entry(at).or_default().push(id.clone());
    }

    /// Marks offline the devices silent for longer than their limit, looking only at those
    /// whose check is due; the others are rescheduled to their new deadline.
    pub fn check_silence(&mut self, now_ms: i64) {
        while let Some(entry) = self.silence_checks.first_entry() {
            if *entry.key() > now_ms {
                break;
            }
            for id in entry.remove() {
                self.check_one(&id, now_ms);
            }
        }
    }

    fn check_one(&mut self, id: &DeviceId, now_ms: i64) {
        let Some(entry) = self.devices.get_mut(id) else {
            return;
        };
        entry.check_scheduled = false;
        if !entry.state.online {
            return;
        }
        let deadline = entry
            .last_seen
            .saturating_add(silence_limit_ms(&self.config, entry.interval_ms));
        if now_ms >= deadline {
            self.set_online(id, false, false, now_ms);
            self.registry_changed.insert(id.clone());
        } else {
            entry.check_scheduled = true;
            self.silence_checks
                .entry(deadline)
                .or_default()
                .push(id.clone());
        }
    }

    /// Restores a device from the registry after a restart: offline until it reports again.
    /// Its saved alert conditions follow with [`Shard::restore_alerts`]; offline rules are
    /// checked again after a silence even without them.
    pub fn restore(&mut self, entry: RegistryEntry, now_ms: i64) {
        let mut state = entry.state;
        state.online = false;
        let id = state.id.clone();
        if self.devices.contains_key(&id) {
            return;
        }
        self.groups.presence_changed(&state.group, false, true);
        for (name, value) in &state.metrics {
            self.groups
                .value_changed(&state.group, name, None, Some(value.as_f64()));
        }
        let mut device = Device::new(state, entry.first_seen, entry.last_seen);
        device.alerts = self
            .evaluator
            .select(&id, &device.state.group, DeviceAlerts::default());
        self.devices.insert(id.clone(), device);
        self.restore_conditions(&id, &[], now_ms);
        self.changed.insert(id);
    }

    /// The states of the changed devices that may go out at `now_ms`: each device at most
    /// once per `min_gap_ms`. The others stay changed for a later call, coalesced to their
    /// latest state.
    pub fn take_due(&mut self, now_ms: i64, min_gap_ms: i64) -> Vec<DeviceState> {
        let devices = &mut self.devices;
        let mut due = Vec::new();
        self.changed.retain(|id| {
            let Some(device) = devices.get_mut(id) else {
                return false;
            };
            if now_ms.saturating_sub(device.live_sent_ms) < min_gap_ms {
                return true;
            }
            device.live_sent_ms = now_ms;
            due.push(device.state.clone());
            false
        });
        due
    }

    /// The states of all the devices changed since the previous call, whatever their gap.
    #[cfg(test)]
    pub fn take_changed(&mut self) -> Vec<DeviceState> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .filter_map(|id| Some(self.devices.get(&id)?.state.clone()))
            .collect()
    }

    /// Marks devices changed again, e.g. when their batch could not be delivered.
    pub fn mark_changed(&mut self, ids: impl IntoIterator<Item = DeviceId>) {
        self.changed.extend(ids);
    }

    /// Marks every device and group changed: a dashboard asked for everything.
    pub fn mark_all_changed(&mut self) {
        self.changed.extend(self.devices.keys().cloned());
        self.groups.mark_all_dirty();
    }

    /// This shard's partials of the groups changed since the previous call.
    pub fn take_groups(&mut self) -> Vec<ShardGroup> {
        self.groups.take_dirty()
    }

    /// Marks groups changed again when their partials could not be delivered.
    pub fn mark_groups(&mut self) {
        self.groups.mark_all_dirty();
    }

    /// Rollup deltas and registry changes since the previous call.
    pub fn take_store_batch(&mut self) -> StoreBatch {
        let changed = std::mem::take(&mut self.registry_changed);
        StoreBatch {
            rollups: self.rollups.drain(),
            devices: changed
                .into_iter()
                .filter_map(|id| {
                    let device = self.devices.get(&id)?;
                    Some(RegistryEntry {
                        state: device.state.clone(),
                        first_seen: device.first_seen,
                        last_seen: device.last_seen,
                    })
                })
                .collect(),
        }
    }

    /// Number of devices in this shard.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    fn reject(&mut self, reason: RejectReason, topic: &str) {
        self.counters.reject(reason);
        self.reject_log.record(reason, topic, Instant::now());
    }
}

impl Device {
    fn new(state: DeviceState, first_seen: i64, last_seen: i64) -> Self {
        Device {
            state,
            first_seen,
            last_seen,
            interval_ms: None,
            check_scheduled: false,
            registry_queued_ms: i64::MIN,
            live_sent_ms: i64::MIN,
            alerts: DeviceAlerts::default(),
        }
    }

    /// Records a receipt at `now_ms`, smoothing the reporting interval (readings of one batch
    /// arrive together and do not count as an interval).
    fn note_receipt(&mut self, now_ms: i64) {
        let gap = now_ms - self.last_seen;
        if gap > 0 {
            let gap = gap as f64;
            self.interval_ms = Some(match self.interval_ms {
                Some(smoothed) => smoothed * 0.8 + gap * 0.2,
                None => gap,
            });
        }
        self.last_seen = self.last_seen.max(now_ms);
    }
}

/// How long a device may stay silent before it counts as offline.
pub fn silence_limit_ms(config: &BridgeConfig, interval_ms: Option<f64>) -> i64 {
    let presence = &config.presence;
    let floor = presence.min_silence.as_millis() as f64;
    let limit = match interval_ms {
        Some(interval) => interval * presence.silence_factor,
        None => presence.default_silence.as_millis() as f64,
    };
    limit.max(floor) as i64
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod alert_tests;
