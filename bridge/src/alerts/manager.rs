//! The alert manager: one task that owns the [`AlertBook`]. It takes the shards' condition
//! changes and operators' commands, pushes every changed alert to the live stream at once
//! (never on a batching tick), then writes the changes to the alert store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::alert::AlertRequest;
use iotmon_wire::{Alert, AlertCommand, Derived};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::evaluator::ConditionEvent;
use super::lifecycle::AlertBook;
use super::store::{AlertStore, Changes};
use super::webhook::{Notification, WebhookHandle};
use crate::counters::BridgeCounters;
use crate::pipeline::Clock;

/// What the shards send the manager.
#[derive(Debug)]
pub enum ManagerInput {
    /// Condition phase changes of one shard, in order.
    Conditions(Vec<ConditionEvent>),
    /// A dashboard asked for everything: resend every open alert.
    SyncAll,
    /// An operator's command from a dashboard in another process (no one waits for the
    /// outcome: the changed alert is published like any other).
    Command(AlertCommand),
}

/// Capacity of the shards' queue into the manager. When full, a shard keeps its events and
/// sends them at its next live tick (counted in `iotmon_alert_events_deferred_total`).
pub const MANAGER_CAPACITY: usize = 256;

/// Capacity of the operators' command queue. When full, the REST handler or session waits.
pub const REQUEST_CAPACITY: usize = 64;

/// Changes kept for a retry after failed store writes, in transitions; beyond it the oldest
/// are dropped (the alerts themselves stay correct in memory and on screens).
const MAX_UNSAVED_TRANSITIONS: usize = 100_000;

/// How often shelvings are checked for expiry and closed history is pruned.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Where the manager's output goes.
#[derive(Debug)]
pub struct ManagerOutputs {
    pub live_updates: mpsc::Sender<Derived>,
    pub store: Option<AlertStore>,
    pub counters: Arc<BridgeCounters>,
    pub clock: Clock,
    /// Closed alerts older than this are pruned from the store.
    pub retention_ms: i64,
    /// The webhook sink, when one is configured.
    pub webhook: Option<WebhookHandle>,
}

/// Runs the manager until `shutdown` or until the shards are gone.
pub async fn run(
    mut book: AlertBook,
    mut from_shards: mpsc::Receiver<ManagerInput>,
    mut requests: mpsc::Receiver<AlertRequest>,
    mut outputs: ManagerOutputs,
    shutdown: CancellationToken,
) {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsaved = book.take_changes();
    let mut last_prune = i64::MIN;
    // Dashboards start knowing the alerts still open from before a restart.
    let open: Vec<Alert> = book.open_alerts().cloned().collect();
    if !open.is_empty()
        && outputs
            .live_updates
            .send(Derived::Alerts(open))
            .await
            .is_err()
    {
        return;
    }
    loop {
        let mut replies = Vec::new();
        let changed: Vec<Alert> = tokio::select! {
            () = shutdown.cancelled() => break,
            input = from_shards.recv() => match input {
                Some(ManagerInput::Conditions(events)) => {
                    events.iter().flat_map(|event| book.on_condition(event)).collect()
                }
                Some(ManagerInput::SyncAll) => book.open_alerts().cloned().collect(),
                Some(ManagerInput::Command(command)) => {
                    match book.on_command(&command, outputs.clock.now_ms()) {
                        Ok(alert) => vec![alert],
                        Err(error) => {
                            debug!(%error, "alert command from a dashboard refused");
                            Vec::new()
                        }
                    }
                }
                None => break,
            },
            Some(request) = requests.recv() => {
                let now = outputs.clock.now_ms();
                let outcome = book.on_command(&request.command, now).map_err(|e| e.to_string());
                let changed = outcome.iter().cloned().collect();
                replies.push((request.reply, outcome));
                changed
            }
            _ = housekeeping.tick() => {
                let now = outputs.clock.now_ms();
                if now.saturating_sub(last_prune) >= 3_600_000 {
                    last_prune = now;
                    prune(&mut outputs, now).await;
                }
                book.expire_shelves(now)
            }
        };
        outputs
            .counters
            .alerts_open
            .store(book.open_alerts().count() as u64, Ordering::Relaxed);
        if !changed.is_empty()
            && outputs
                .live_updates
                .send(Derived::Alerts(changed))
                .await
                .is_err()
        {
            // Nobody watches any more (shutting down); the store still gets the changes.
        }
        let changes = book.take_changes();
        notify(outputs.webhook.as_ref(), &changes);
        merge(&mut unsaved, changes, &outputs.counters);
        save(&mut outputs, &mut unsaved).await;
        for (reply, outcome) in replies {
            // The asker may have gone; the change stands.
            let _ = reply.send(outcome);
        }
    }
    // Whatever the shards flushed at shutdown.
    while let Ok(input) = from_shards.try_recv() {
        if let ManagerInput::Conditions(events) = input {
            for event in &events {
                book.on_condition(event);
            }
        }
    }
    merge(&mut unsaved, book.take_changes(), &outputs.counters);
    save(&mut outputs, &mut unsaved).await;
}

/// Hands every transition, with its alert as it stands, to the webhook sink.
fn notify(webhook: Option<&WebhookHandle>, changes: &Changes) {
    let Some(webhook) = webhook else {
        return;
    };
    // The book records each transition with the alert as it stood after it, in pairs.
    for (transition, alert) in changes.transitions.iter().zip(&changes.alerts) {
        webhook.notify(Notification {
            transition: transition.clone(),
            alert: alert.clone(),
        });
    }
}

/// Adds `new` to the changes waiting for the store, dropping the oldest beyond the bound.
fn merge(unsaved: &mut Changes, mut new: Changes, counters: &BridgeCounters) {
    let raised = new
        .transitions
        .iter()
        .filter(|step| step.event == "raised")
        .count();
    counters
        .alerts_raised
        .fetch_add(raised as u64, Ordering::Relaxed);
    counters
        .alert_transitions
        .fetch_add(new.transitions.len() as u64, Ordering::Relaxed);
    unsaved.alerts.append(&mut new.alerts);
    unsaved.transitions.append(&mut new.transitions);
    unsaved.conditions.append(&mut new.conditions);
    if unsaved.transitions.len() > MAX_UNSAVED_TRANSITIONS {
        let excess = unsaved.transitions.len() - MAX_UNSAVED_TRANSITIONS;
        unsaved.transitions.drain(..excess);
        warn!(
            excess,
            "alert store unwritable for long: oldest transitions dropped"
        );
    }
    // Only the latest version of an alert or condition needs writing.
    dedup_latest(&mut unsaved.alerts, |alert| alert.id);
    dedup_latest(&mut unsaved.conditions, |saved| {
        (saved.rule.clone(), saved.device.clone())
    });
}

/// Keeps the last element of each key, in order.
fn dedup_latest<T, K: std::hash::Hash + Eq>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in std::mem::take(items).into_iter().rev() {
        if seen.insert(key(&item)) {
            kept.push(item);
        }
    }
    kept.reverse();
    *items = kept;
}

/// Writes the waiting changes on the blocking pool; on failure they stay for the next try.
async fn save(outputs: &mut ManagerOutputs, unsaved: &mut Changes) {
    if unsaved.is_empty() {
        return;
    }
    let Some(mut store) = outputs.store.take() else {
        *unsaved = Changes::default();
        return;
    };
    let changes = std::mem::take(unsaved);
    let written = tokio::task::spawn_blocking(move || {
        let result = store.write(&changes);
        (store, changes, result)
    })
    .await;
    match written {
        Ok((store, changes, result)) => {
            outputs.store = Some(store);
            if let Err(error) = result {
                outputs
                    .counters
                    .alert_store_errors
                    .fetch_add(1, Ordering::Relaxed);
                error!(%error, "cannot write alert changes; keeping them to try again");
                *unsaved = changes;
            }
        }
        Err(error) => {
            // The write panicked: the store is gone with it; alerts go on in memory.
            outputs
                .counters
                .alert_store_errors
                .fetch_add(1, Ordering::Relaxed);
            error!(%error, "the alert store failed; alerts are no longer persisted");
        }
    }
}

async fn prune(outputs: &mut ManagerOutputs, now_ms: i64) {
    let Some(mut store) = outputs.store.take() else {
        return;
    };
    let before = now_ms.saturating_sub(outputs.retention_ms);
    let pruned = tokio::task::spawn_blocking(move || {
        let result = store.prune(before);
        (store, result)
    })
    .await;
    if let Ok((store, result)) = pruned {
        outputs.store = Some(store);
        if let Err(error) = result {
            warn!(%error, "cannot prune closed alerts");
        }
    }
}
