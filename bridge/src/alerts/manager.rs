//! The alert manager: one task that owns the [`AlertBook`]. It takes the shards' condition
//! changes and operators' commands, pushes every changed alert to the live stream at once
//! (never on a batching tick), then writes the changes to the alert store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::alert::{AlertRequest, CommandError};
use iotmon_wire::{Alert, AlertCommand, LiveUpdate};
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
    pub live_updates: mpsc::Sender<LiveUpdate>,
    pub store: Option<AlertStore>,
    pub counters: Arc<BridgeCounters>,
    pub clock: Clock,
    /// Closed alerts older than this are pruned from the store.
    pub retention_ms: i64,
    /// Cleared, unacknowledged alerts older than this are closed.
    pub close_cleared_after_ms: i64,
    /// The webhook sink, when one is configured.
    pub webhook: Option<WebhookHandle>,
}

/// What the manager's loop woke up for.
enum Wake {
    /// Alerts changed (to publish), with the answers owed to operators.
    Changed(Vec<Alert>, Vec<Reply>),
    /// The store finished a write.
    Written(Written),
    Stop,
}

type Reply = (
    tokio::sync::oneshot::Sender<Result<Alert, CommandError>>,
    Result<Alert, CommandError>,
);

/// Runs the manager until `shutdown` or until the shards are gone.
pub async fn run(
    mut book: AlertBook,
    mut from_shards: mpsc::Receiver<ManagerInput>,
    mut requests: mpsc::Receiver<AlertRequest>,
    outputs: ManagerOutputs,
    shutdown: CancellationToken,
) {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ManagerOutputs {
        live_updates,
        store,
        counters,
        clock,
        retention_ms,
        close_cleared_after_ms,
        webhook,
    } = outputs;
    let mut writer = Writer::new(store, counters.clone());
    writer.queue(book.take_changes());
    let mut last_prune = i64::MIN;
    // Dashboards start knowing the alerts still open from before a restart. This is the
    // first batch of alerts on the live stream, and it is sent even when empty: a dashboard
    // in this process waits for it before it answers (`AlertAccess::open_alerts_first`).
    let open: Vec<Alert> = book.open_alerts().cloned().collect();
    if live_updates.send(LiveUpdate::Alerts(open)).await.is_err() {
        return;
    }
    loop {
        let wake = tokio::select! {
            () = shutdown.cancelled() => Wake::Stop,
            input = from_shards.recv() => match input {
                Some(input) => Wake::Changed(on_input(&mut book, input, &clock), Vec::new()),
                None => Wake::Stop,
            },
            Some(request) = requests.recv() => {
                let outcome = book.on_command(&request.command, clock.now_ms());
                let changed = outcome.iter().cloned().collect();
                Wake::Changed(changed, vec![(request.reply, outcome)])
            }
            written = writer.in_flight(), if writer.is_writing() => Wake::Written(written),
            _ = housekeeping.tick() => {
                let now = clock.now_ms();
                if now.saturating_sub(last_prune) >= 3_600_000 {
                    last_prune = now;
                    writer.prune_before(now.saturating_sub(retention_ms));
                }
                writer.resume();
                let mut changed = book.expire_shelves(now);
                changed.extend(book.expire_cleared(now, close_cleared_after_ms));
                Wake::Changed(changed, Vec::new())
            }
        };
        let (changed, replies) = match wake {
            Wake::Stop => break,
            Wake::Written(written) => {
                writer.finished(written);
                continue;
            }
            Wake::Changed(changed, replies) => (changed, replies),
        };
        counters
            .alerts_open
            .store(book.open_alerts().count() as u64, Ordering::Relaxed);
        // Viewers first, at once; the disk never holds an alert back.
        if !changed.is_empty() {
            // An error means nobody watches any more (shutting down); the store still gets
            // the changes.
            let _ = live_updates.send(LiveUpdate::Alerts(changed)).await;
        }
        for (reply, outcome) in replies {
            // The asker may have gone; the change stands.
            let _ = reply.send(outcome);
        }
        let changes = book.take_changes();
        count(&counters, &changes);
        notify(webhook.as_ref(), &changes);
        writer.queue(changes);
    }
    // Whatever the shards flushed at shutdown.
    while let Ok(input) = from_shards.try_recv() {
        on_input(&mut book, input, &clock);
    }
    let changes = book.take_changes();
    count(&counters, &changes);
    writer.queue(changes);
    writer.flush().await;
}

/// Applies one input from the shards; returns the alerts it changed.
fn on_input(book: &mut AlertBook, input: ManagerInput, clock: &Clock) -> Vec<Alert> {
    match input {
        ManagerInput::Conditions(events) => events
            .iter()
            .flat_map(|event| book.on_condition(event))
            .collect(),
        ManagerInput::SyncAll => book.open_alerts().cloned().collect(),
        ManagerInput::Command(command) => match book.on_command(&command, clock.now_ms()) {
            Ok(alert) => vec![alert],
            Err(error) => {
                debug!(%error, "alert command from a dashboard refused");
                Vec::new()
            }
        },
    }
}

fn count(counters: &BridgeCounters, changes: &Changes) {
    let raised = changes
        .transitions
        .iter()
        .filter(|step| step.event == "raised")
        .count();
    counters
        .alerts_raised
        .fetch_add(raised as u64, Ordering::Relaxed);
    counters
        .alert_transitions
        .fetch_add(changes.transitions.len() as u64, Ordering::Relaxed);
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

/// Adds `new` (newer) to `unsaved` (older), dropping the oldest transitions beyond the bound
/// and keeping one version of each alert and condition.
fn merge(unsaved: &mut Changes, mut new: Changes) {
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

/// What a write job gives back: the store, what it wrote, and how it went.
type WriteOutcome = (
    AlertStore,
    Changes,
    Result<(), super::store::AlertStoreError>,
);

/// A finished write (or the job's panic).
type Written = Result<WriteOutcome, tokio::task::JoinError>;

/// The alert store's writes: one at a time on the blocking pool, in the background, so that
/// delivering alerts never waits for the disk. Changes that arrive meanwhile wait (merged,
/// bounded) for the next write; a failed write is kept and tried again a second later.
struct Writer {
    /// The store, when no write is in flight (and persistence is on).
    store: Option<AlertStore>,
    /// Whether there is a store at all.
    persists: bool,
    in_flight: Option<tokio::task::JoinHandle<WriteOutcome>>,
    unsaved: Changes,
    /// Closed alerts changed before this are deleted with the next write.
    prune_before: Option<i64>,
    /// After a failure, writes wait for [`Writer::resume`] (the next housekeeping tick).
    paused: bool,
    counters: Arc<BridgeCounters>,
}

impl Writer {
    fn new(store: Option<AlertStore>, counters: Arc<BridgeCounters>) -> Self {
        Writer {
            persists: store.is_some(),
            store,
            in_flight: None,
            unsaved: Changes::default(),
            prune_before: None,
            paused: false,
            counters,
        }
    }

    fn is_writing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The write in flight; only poll it while [`Writer::is_writing`].
    async fn in_flight(&mut self) -> Written {
        match self.in_flight.as_mut() {
            Some(handle) => handle.await,
            None => std::future::pending().await,
        }
    }

    /// Queues `changes` and starts a write if none is in flight.
    fn queue(&mut self, changes: Changes) {
        if !self.persists {
            return;
        }
        merge(&mut self.unsaved, changes);
        self.start();
    }

    fn prune_before(&mut self, before: i64) {
        self.prune_before = Some(before);
    }

    /// Lets writes go again after a failure.
    fn resume(&mut self) {
        self.paused = false;
        self.start();
    }

    fn start(&mut self) {
        if self.paused || self.in_flight.is_some() {
            return;
        }
        if self.unsaved.is_empty() && self.prune_before.is_none() {
            return;
        }
        let Some(mut store) = self.store.take() else {
            return;
        };
        let changes = std::mem::take(&mut self.unsaved);
        let prune = self.prune_before.take();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut result = store.write(&changes);
            if let (Ok(()), Some(before)) = (&result, prune) {
                result = store.prune(before).map(|_| ());
            }
            (store, changes, result)
        }));
    }

    /// A write finished: the store comes back; on failure its changes go back in front of
    /// what arrived since, and writing pauses until the next housekeeping tick.
    fn finished(&mut self, written: Written) {
        self.in_flight = None;
        match written {
            Ok((store, changes, result)) => {
                self.store = Some(store);
                if let Err(error) = result {
                    self.counters
                        .alert_store_errors
                        .fetch_add(1, Ordering::Relaxed);
                    error!(%error, "cannot write alert changes; keeping them to try again");
                    let newer = std::mem::replace(&mut self.unsaved, changes);
                    merge(&mut self.unsaved, newer);
                    self.paused = true;
                    return;
                }
                self.start();
            }
            Err(error) => {
                // The write panicked: the store is gone with it; alerts go on in memory.
                self.counters
                    .alert_store_errors
                    .fetch_add(1, Ordering::Relaxed);
                error!(%error, "the alert store failed; alerts are no longer persisted");
                self.persists = false;
            }
        }
    }

    /// Writes everything still waiting (at shutdown).
    async fn flush(&mut self) {
        self.paused = false;
        loop {
            if self.in_flight.is_some() {
                let written = self.in_flight().await;
                self.finished(written);
                if self.paused {
                    // A write failed at shutdown: nothing more can be done.
                    return;
                }
                continue;
            }
            self.start();
            if self.in_flight.is_none() {
                return;
            }
        }
    }
}
