//! The bridge's main loop: device messages in, sharded by device id across worker tasks;
//! coalesced device states and group aggregates out; rollups and registry changes to the store.
//!
//! ```text
//! from_broker ─▶ dispatch ─┬─▶ shard 0 ─┬─▶ live_updates (device states, each live_interval)
//!   (hash of device id)    ├─▶ shard 1 ─┼─▶ aggregator ─▶ live_updates (aggregates, each window)
//!                          └─▶ ...      └─▶ store thread (deltas + registry, each flush interval)
//! ```

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use iotmon_wire::mqtt::Message;
use iotmon_wire::partial::PartialAggregate;
use iotmon_wire::partition::Partition;
use iotmon_wire::supervise::critical;
use iotmon_wire::topics::{
    parse_partial_topic, ALERT_COMMANDS, PARTIALS_SYNC_REQUEST, SYNC_REQUEST,
};
use iotmon_wire::unix_millis;
use iotmon_wire::LiveUpdate;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::aggregates::{AggregateMerger, ShardGroup};
use crate::alerts::group_evaluator::GroupEvaluator;
use crate::alerts::lifecycle::AlertBook;
use crate::alerts::manager::{self, ManagerInput, ManagerOutputs};
use crate::alerts::store::Saved;
use crate::alerts::{webhook, Alerting};
use crate::config::BridgeConfig;
use crate::counters::BridgeCounters;
use crate::shard::{SavedConditions, Shard};
use crate::store::{OpenStore, StoreHandle};

/// Messages queued per shard. When full, the dispatcher waits (and with it the broker link).
pub const SHARD_CAPACITY: usize = 1024;

/// Other partitions' partial aggregates queued for the aggregator (of the bridge that
/// evaluates group rules). When full, the dispatcher waits: a partial is the latest state of
/// a group and must not be lost, and the aggregator takes each in microseconds.
pub const PEER_PARTIALS_CAPACITY: usize = 1024;

/// What a shard receives.
#[derive(Debug)]
pub enum ShardInput {
    /// A message from a device topic.
    Message(Message),
    /// A dashboard asked for everything: resend every device and group.
    SyncAll,
    /// The bridge evaluating group rules asked for every group's partial: resend every group.
    SyncGroups,
}

/// What happened to a batch of changed devices handed to the live stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Nothing had changed.
    Idle,
    /// The batch went out.
    Sent,
    /// The consumer is busy; the devices stay marked changed for the next tick.
    Deferred,
    /// The consumer is gone.
    Closed,
}

/// The shard a device belongs to: a stable hash of its id.
pub fn shard_of(device: &str, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    device.hash(&mut hasher);
    (hasher.finish() % shards.max(1) as u64) as usize
}

/// The device id of a device topic (its last level), for routing; malformed topics go to
/// the shard of their last level too and are refused there.
fn routing_key(topic: &str) -> &str {
    topic.rsplit_once('/').map_or(topic, |(_, device)| device)
}

/// Runs the bridge until `shutdown` or until its input ends. With `store`, devices from the
/// registry are restored first and every flush interval's rollups and registry changes go to
/// it; at the end the store is flushed and closed. `alerting` brings the rules and the alerts
/// and conditions saved before a restart.
pub async fn run(
    config: BridgeConfig,
    alerting: Alerting,
    mut from_broker: mpsc::Receiver<Message>,
    live_updates: mpsc::Sender<LiveUpdate>,
    counters: Arc<BridgeCounters>,
    store: Option<OpenStore>,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    let clock = Clock::start();
    let count = config.shard_count();
    let tasks = TaskTracker::new();
    let (store_handle, restored, writer) = match store {
        Some(store) => {
            if config.influx.enabled {
                tasks.spawn(run_influx(
                    config.influx.clone(),
                    store.path,
                    counters.clone(),
                    shutdown.clone(),
                ));
            }
            (Some(store.handle), store.restored, Some(store.writer))
        }
        None => (None, Vec::new(), None),
    };
    let Alerting {
        rules,
        store: alert_store,
        saved,
        requests,
        retention,
        close_cleared_after,
        webhook,
    } = alerting;
    let webhook = webhook::start(&webhook, counters.clone(), &tasks, shutdown.clone())
        .inspect_err(|error| tracing::error!(%error, "alert webhook not started"))
        .ok()
        .flatten();
    let partition = config.partition();
    let saved = keep_own_alerts(saved, partition, &rules);
    let now_ms = clock.now_ms();
    let mut shards: Vec<Shard> = (0..count)
        .map(|_| Shard::new(config.clone(), counters.clone(), rules.clone()))
        .collect();
    let restored_count = restored.len();
    let mut not_ours = 0usize;
    for entry in restored {
        // A device another partition owns now (the deployment was re-partitioned) is that
        // partition's to report; restoring it here would show it twice.
        if !partition.owns(&entry.state.id) {
            not_ours += 1;
            continue;
        }
        shards[shard_of(&entry.state.id, count)].restore(entry, now_ms);
    }
    let mut group_rules = GroupEvaluator::new(rules.clone());
    let mut conditions: std::collections::HashMap<(&str, &str), SavedConditions> =
        Default::default();
    for saved in &saved.conditions {
        let Some(index) = rules.index_of(&saved.rule) else {
            continue;
        };
        if rules.get(index).is_some_and(|rule| rule.is_group_rule()) {
            if !partition.is_split() || partition.evaluates_group_rules() {
                group_rules.restore(index, &saved.group, saved.phase);
            }
        } else if partition.owns(&saved.device) {
            let device = (saved.device.as_str(), saved.group.as_str());
            conditions
                .entry(device)
                .or_default()
                .push((index, saved.phase));
        }
    }
    for ((device, group), saved) in conditions {
        shards[shard_of(device, count)].restore_alerts(device, group, saved, now_ms);
    }
    info!(
        shards = count,
        %partition,
        restored = restored_count,
        restored_elsewhere = not_ours,
        rules = rules.rules().len(),
        open_alerts = saved.open.len(),
        "bridge starting"
    );
    let (to_alerts, from_shards_to_alerts) = mpsc::channel(manager::MANAGER_CAPACITY);
    let mut book = AlertBook::new(rules, saved, now_ms);
    if partition.is_split() {
        book.partition_ids(partition.index, partition.count);
    }
    tasks.spawn(critical(
        "the alert manager",
        manager::run(
            book,
            from_shards_to_alerts,
            requests,
            ManagerOutputs {
                live_updates: live_updates.clone(),
                store: alert_store,
                counters: counters.clone(),
                clock,
                retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
                close_cleared_after_ms: i64::try_from(close_cleared_after.as_millis())
                    .unwrap_or(i64::MAX),
                webhook,
            },
            shutdown.clone(),
        ),
    ));
    let (to_aggregator, from_shards) = mpsc::channel(count * 16);
    let mut inputs = Vec::with_capacity(count);
    for (index, shard) in shards.into_iter().enumerate() {
        let (input, from_dispatch) = mpsc::channel(SHARD_CAPACITY);
        inputs.push(input);
        let outputs = ShardOutputs {
            index,
            live_updates: live_updates.clone(),
            to_aggregator: to_aggregator.clone(),
            to_alerts: to_alerts.clone(),
            to_store: store_handle.clone(),
            counters: counters.clone(),
            clock,
        };
        tasks.spawn(critical(
            "a bridge shard",
            run_shard(
                shard,
                from_dispatch,
                outputs,
                config.clone(),
                shutdown.clone(),
            ),
        ));
    }
    drop(to_aggregator);
    drop(store_handle);
    let (to_merged, from_peers) = mpsc::channel(PEER_PARTIALS_CAPACITY);
    let scope = GroupScope::of(
        partition,
        config.aggregate_interval,
        config.share_lifetime(),
        from_peers,
    );
    // A partitioned bridge's partials are merged elsewhere, where a share not refreshed in
    // time is taken for a bridge that is gone: every group is sent again each refresh.
    let refresh = partition.is_split().then(|| ticker(config.partial_refresh));
    tasks.spawn(critical(
        "the aggregator",
        run_aggregator(
            count,
            from_shards,
            group_rules,
            config.aggregate_interval,
            refresh,
            AggregatorOutputs {
                live_updates,
                to_alerts: to_alerts.clone(),
                counters: counters.clone(),
                clock,
            },
            scope,
            shutdown.clone(),
        ),
    ));
    tasks.close();
    let route = Route {
        partition,
        shards: &inputs,
        to_alerts: &to_alerts,
        to_merged: &to_merged,
        counters: &counters,
    };
    dispatch(&mut from_broker, &route, &shutdown).await;
    drop(to_merged);
    drop(inputs);
    drop(to_alerts);
    tasks.wait().await;
    if let Some(writer) = writer {
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    info!("bridge stopped");
}

async fn run_influx(
    config: crate::config::InfluxConfig,
    path: std::path::PathBuf,
    counters: Arc<BridgeCounters>,
    shutdown: CancellationToken,
) {
    if let Err(error) = crate::influx::run_sender(config, path, counters, shutdown).await {
        tracing::error!(%error, "InfluxDB sink stopped");
    }
}

/// Keeps, of the open alerts saved before a restart, those this partition owns: alerts
/// about its devices, and group alerts when it evaluates group rules (the saved conditions
/// are sorted the same way where they are restored). A lone bridge owns them all. Alerts
/// left out (their device moved when the deployment was re-partitioned) stay in this store,
/// unloaded: the new owner starts them afresh.
fn keep_own_alerts(
    mut saved: Saved,
    partition: Partition,
    rules: &crate::alerts::RuleSet,
) -> Saved {
    if !partition.is_split() {
        return saved;
    }
    let is_group_rule = |name: &str| {
        rules
            .index_of(name)
            .and_then(|index| rules.get(index))
            .is_some_and(|rule| rule.is_group_rule())
    };
    saved.open.retain(|alert| {
        if is_group_rule(&alert.rule) {
            partition.evaluates_group_rules()
        } else {
            partition.owns(&alert.subject)
        }
    });
    saved
}

/// Where the dispatcher sends what it reads.
#[derive(Debug)]
struct Route<'a> {
    /// The devices this bridge owns; messages about others are skipped and counted.
    partition: Partition,
    shards: &'a [mpsc::Sender<ShardInput>],
    to_alerts: &'a mpsc::Sender<ManagerInput>,
    /// Other partitions' partial aggregates, for group rules on merged values.
    to_merged: &'a mpsc::Sender<PartialAggregate>,
    counters: &'a BridgeCounters,
}

/// Routes every message to its shard until the input ends or `shutdown`.
async fn dispatch(
    from_broker: &mut mpsc::Receiver<Message>,
    route: &Route<'_>,
    shutdown: &CancellationToken,
) {
    let inputs = route.shards;
    let to_alerts = route.to_alerts;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = from_broker.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        if message.topic == ALERT_COMMANDS {
            match serde_json::from_slice(&message.payload) {
                Ok(command) => {
                    let _ = to_alerts.send(ManagerInput::Command(command)).await;
                }
                Err(error) => debug!(%error, "unreadable alert command ignored"),
            }
            continue;
        }
        if message.topic == SYNC_REQUEST {
            debug!("a dashboard asked for every device state");
            for input in inputs {
                let _ = input.send(ShardInput::SyncAll).await;
            }
            let _ = to_alerts.send(ManagerInput::SyncAll).await;
            continue;
        }
        if message.topic == PARTIALS_SYNC_REQUEST {
            for input in inputs {
                let _ = input.send(ShardInput::SyncGroups).await;
            }
            continue;
        }
        if message.topic.starts_with("iotmon/partial/") {
            if let Some(partial) = peer_partial(&message, route.partition, route.counters) {
                let _ = route.to_merged.send(partial).await;
            }
            continue;
        }
        let device = routing_key(&message.topic);
        // Checked on the topic alone, before any parsing: on a broker that hands every
        // bridge the whole tree, this is all a message of another partition costs.
        if !route.partition.owns(device) {
            route
                .counters
                .other_partition_messages
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let shard = shard_of(device, inputs.len());
        if inputs[shard]
            .send(ShardInput::Message(message))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Another partition's partial aggregate, checked; `None` for this bridge's own (it comes
/// back from the broker) and for refused ones (counted).
fn peer_partial(
    message: &Message,
    own: Partition,
    counters: &BridgeCounters,
) -> Option<PartialAggregate> {
    let refuse = |error: &dyn std::fmt::Display| {
        counters
            .peer_partials_rejected
            .fetch_add(1, Ordering::Relaxed);
        debug!(topic = message.topic, %error, "partial aggregate refused");
    };
    let (partition, group) = match parse_partial_topic(&message.topic) {
        Ok(parsed) => parsed,
        Err(error) => {
            refuse(&error);
            return None;
        }
    };
    if partition == own.index {
        return None;
    }
    let partial: PartialAggregate = match serde_json::from_slice(&message.payload) {
        Ok(partial) => partial,
        Err(error) => {
            refuse(&error);
            return None;
        }
    };
    if partial.partition != partition || *partial.group != *group {
        refuse(&"the payload names another partition or group than its topic");
        return None;
    }
    counters.peer_partials.fetch_add(1, Ordering::Relaxed);
    Some(partial)
}

/// Where a shard's outputs go.
#[derive(Debug)]
struct ShardOutputs {
    index: usize,
    live_updates: mpsc::Sender<LiveUpdate>,
    to_aggregator: mpsc::Sender<(usize, Vec<ShardGroup>)>,
    to_alerts: mpsc::Sender<ManagerInput>,
    to_store: Option<StoreHandle>,
    counters: Arc<BridgeCounters>,
    clock: Clock,
}

fn ticker(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// The next tick of `ticker`; never, without one.
async fn tick_if_some(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One shard's loop: handles its messages, handing alert condition changes to the alert
/// manager at once; each live interval checks alert deadlines and sends its changed devices,
/// each aggregation window checks silence and sends its changed groups, each flush interval
/// hands its rollup deltas and registry changes to the store. Flushes everything at the end.
async fn run_shard(
    mut shard: Shard,
    mut from_dispatch: mpsc::Receiver<ShardInput>,
    outputs: ShardOutputs,
    config: Arc<BridgeConfig>,
    shutdown: CancellationToken,
) {
    let mut live = ticker(config.live_interval);
    let mut window = ticker(config.aggregate_interval);
    let mut flush = ticker(config.store.flush_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            input = from_dispatch.recv() => match input {
                Some(ShardInput::Message(message)) => {
                    shard.handle(&message, outputs.clock.now_ms());
                    send_alert_events(&mut shard, &outputs);
                }
                Some(ShardInput::SyncAll) => shard.mark_all_changed(),
                Some(ShardInput::SyncGroups) => shard.mark_groups(),
                None => break,
            },
            _ = live.tick() => {
                shard.check_alert_deadlines(outputs.clock.now_ms());
                send_alert_events(&mut shard, &outputs);
                if flush_live(&mut shard, &outputs, &config) == Flush::Closed {
                    break;
                }
            }
            _ = window.tick() => send_groups(&mut shard, &outputs, outputs.clock.now_ms()),
            _ = flush.tick() => send_to_store(&mut shard, &outputs),
        }
    }
    flush_live(&mut shard, &outputs, &config);
    send_groups(&mut shard, &outputs, outputs.clock.now_ms());
    send_to_store(&mut shard, &outputs);
    let events = shard.take_alert_events();
    if !events.is_empty() {
        let _ = outputs
            .to_alerts
            .send(ManagerInput::Conditions(events))
            .await;
    }
}

/// Hands the shard's alert condition changes to the manager without waiting; if its queue is
/// full they stay with the shard, in order, for the next call.
fn send_alert_events(shard: &mut Shard, outputs: &ShardOutputs) {
    let events = shard.take_alert_events();
    if events.is_empty() {
        return;
    }
    match outputs.to_alerts.try_send(ManagerInput::Conditions(events)) {
        Ok(()) => {}
        Err(TrySendError::Full(ManagerInput::Conditions(events))) => {
            outputs
                .counters
                .alert_events_deferred
                .fetch_add(1, Ordering::Relaxed);
            shard.defer_alert_events(events);
        }
        Err(_) => {}
    }
}

/// Hands the changed devices that are due (see `live_min_gap`) to the live stream without
/// waiting: if the consumer is still busy, they are kept (coalesced) for the next flush.
fn flush_live(shard: &mut Shard, outputs: &ShardOutputs, config: &BridgeConfig) -> Flush {
    let min_gap_ms = i64::try_from(config.live_min_gap.as_millis()).unwrap_or(i64::MAX);
    let changed = shard.take_due(outputs.clock.now_ms(), min_gap_ms);
    if changed.is_empty() {
        return Flush::Idle;
    }
    match outputs.live_updates.try_send(LiveUpdate::Devices(changed)) {
        Ok(()) => Flush::Sent,
        Err(TrySendError::Full(LiveUpdate::Devices(changed))) => {
            outputs
                .counters
                .live_batches_deferred
                .fetch_add(1, Ordering::Relaxed);
            shard.mark_changed(changed.into_iter().map(|state| state.id));
            Flush::Deferred
        }
        Err(TrySendError::Full(_)) => Flush::Deferred,
        Err(TrySendError::Closed(_)) => Flush::Closed,
    }
}

fn send_groups(shard: &mut Shard, outputs: &ShardOutputs, now_ms: i64) {
    shard.check_silence(now_ms);
    let groups = shard.take_groups();
    if groups.is_empty() {
        return;
    }
    if let Err(TrySendError::Full(_)) = outputs.to_aggregator.try_send((outputs.index, groups)) {
        // The aggregator is behind: resend every group next window.
        shard.mark_groups();
    }
}

fn send_to_store(shard: &mut Shard, outputs: &ShardOutputs) {
    let batch = shard.take_store_batch();
    if let Some(store) = &outputs.to_store {
        store.send(batch);
    }
}

/// Where the aggregator's output goes.
#[derive(Debug)]
struct AggregatorOutputs {
    live_updates: mpsc::Sender<LiveUpdate>,
    to_alerts: mpsc::Sender<ManagerInput>,
    counters: Arc<BridgeCounters>,
    clock: Clock,
}

/// On which aggregates group rules are evaluated: exactly one bridge of a deployment
/// evaluates them, on aggregates that cover the whole fleet.
#[derive(Debug)]
enum GroupScope {
    /// A lone bridge: its own aggregates are the fleet's.
    Own,
    /// A partitioned bridge other than partition 0: its aggregates are partial, and partition
    /// 0 evaluates group rules for the deployment.
    Elsewhere,
    /// Partition 0 of a split fleet: on its own partials merged with every other
    /// partition's, as dashboards merge them.
    Merged(Box<MergedGroups>),
}

/// How many aggregation windows partition 0 waits, after it starts, for every other
/// partition's partials before it evaluates group rules on what it has: evaluating on its
/// own share alone would raise (or clear) alerts the merged values do not justify, so while
/// a partition is missing, group conditions keep their phase (up to this long).
const MERGE_GRACE_WINDOWS: u32 = 30;

/// How many windows partition 0 waits after it has heard from every partition before it
/// evaluates: a partition's answer to `iotmon/sync/partials` is one publish per group, and
/// the first of them must not open the gate while the others are still on their way.
const MERGE_SETTLE_WINDOWS: u32 = 2;

/// Partition 0's view of every group across partitions.
#[derive(Debug)]
struct MergedGroups {
    partition: Partition,
    merger: iotmon_wire::partial::PartialMerger,
    from_peers: mpsc::Receiver<PartialAggregate>,
    /// Merged aggregates changed since the last evaluation (latest per group).
    pending: std::collections::HashMap<iotmon_wire::GroupPath, iotmon_wire::GroupAggregate>,
    /// Partitions heard from since start.
    heard: std::collections::HashSet<u32>,
    /// The aggregation window, for the waits below.
    window: Duration,
    /// When every partition had been heard from, plus the settling wait: group rules start
    /// then.
    settled_at: Option<Instant>,
    /// When group rules start regardless of partitions not yet heard from.
    grace_ends: Instant,
    /// Whether the grace ran out with partitions unheard (said once in the log).
    started_incomplete: bool,
    /// How long partition 0's own shares stand unrefreshed, as its published ones do.
    share_lifetime: Duration,
}

impl GroupScope {
    fn of(
        partition: Partition,
        window: Duration,
        share_lifetime: Duration,
        from_peers: mpsc::Receiver<PartialAggregate>,
    ) -> GroupScope {
        if !partition.is_split() {
            return GroupScope::Own;
        }
        if !partition.evaluates_group_rules() {
            return GroupScope::Elsewhere;
        }
        GroupScope::Merged(Box::new(MergedGroups {
            partition,
            merger: iotmon_wire::partial::PartialMerger::for_partitions(partition.count),
            from_peers,
            pending: Default::default(),
            heard: std::iter::once(partition.index).collect(),
            window,
            settled_at: None,
            grace_ends: Instant::now() + window * MERGE_GRACE_WINDOWS,
            started_incomplete: false,
            share_lifetime,
        }))
    }

    /// The next partial from another partition; never, for scopes that merge none.
    async fn next_peer(&mut self) -> Option<PartialAggregate> {
        match self {
            GroupScope::Merged(merged) => merged.from_peers.recv().await,
            _ => std::future::pending().await,
        }
    }
}

impl MergedGroups {
    fn add(&mut self, partial: PartialAggregate, counters: &BridgeCounters) {
        let partition = partial.partition;
        match self.merger.update(partial, Instant::now().into_std()) {
            Ok(merged) => {
                self.heard.insert(partition);
                if self.settled_at.is_none() && self.heard.len() >= self.partition.count as usize {
                    self.settled_at = Some(Instant::now() + self.window * MERGE_SETTLE_WINDOWS);
                }
                self.pending.insert(merged.group.clone(), merged);
            }
            Err(error) => {
                counters
                    .peer_partials_rejected
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%error, "partial aggregate refused");
            }
        }
    }

    /// Ages out the shares of partitions whose bridge has stopped refreshing them: group rules
    /// then see those devices offline, with no values, until the bridge is back.
    fn expire_stale(&mut self, counters: &BridgeCounters) {
        let expired = self.merger.expire(Instant::now().into_std());
        if expired.is_empty() {
            return;
        }
        counters
            .peer_partials_expired
            .fetch_add(expired.shares as u64, Ordering::Relaxed);
        tracing::warn!(
            partitions = ?expired.partitions,
            shares = expired.shares,
            "partial aggregates not refreshed within their lifetime: their bridges are gone; \
             group rules count their devices offline until they are back"
        );
        for merged in expired.aggregates {
            self.pending.insert(merged.group.clone(), merged);
        }
    }

    /// The merged aggregates to evaluate now: none until every partition has been heard
    /// from (and its resend has settled) or the grace has run out.
    fn take_ready(&mut self) -> Vec<iotmon_wire::GroupAggregate> {
        let now = Instant::now();
        let settled = self.settled_at.is_some_and(|at| now >= at);
        if !settled && now < self.grace_ends {
            return Vec::new();
        }
        if self.settled_at.is_none() && !self.started_incomplete {
            // From here on a group's merged value lacks the silent partitions' shares: its
            // alerts may be raised or cleared on part of the fleet until they are heard.
            self.started_incomplete = true;
            let silent: Vec<u32> = (0..self.partition.count)
                .filter(|partition| !self.heard.contains(partition))
                .collect();
            tracing::warn!(
                ?silent,
                "group rules evaluated without these partitions' partials: their bridges are \
                 down or not yet connected"
            );
        }
        self.pending.drain().map(|(_, merged)| merged).collect()
    }
}

/// Merges the shards' partials and emits the changed groups' aggregates each window, after
/// evaluating the group alert rules on them (or, split, on the merged partitions' values).
#[allow(clippy::too_many_arguments)] // Each is one of the aggregator's separate inputs.
async fn run_aggregator(
    shards: usize,
    mut from_shards: mpsc::Receiver<(usize, Vec<ShardGroup>)>,
    mut groups: GroupEvaluator,
    window: Duration,
    mut refresh: Option<Interval>,
    outputs: AggregatorOutputs,
    mut scope: GroupScope,
    shutdown: CancellationToken,
) {
    let mut merger = AggregateMerger::new(shards);
    let mut ticker = ticker(window);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            partials = from_shards.recv() => match partials {
                Some((shard, partials)) => partials.into_iter().for_each(|group| merger.update(shard, group)),
                None => break,
            },
            _ = tick_if_some(&mut refresh) => merger.mark_all(),
            Some(partial) = scope.next_peer() => {
                if let GroupScope::Merged(merged) = &mut scope {
                    merged.add(partial, &outputs.counters);
                }
            }
            _ = ticker.tick() => {
                if emit_aggregates(&mut merger, &mut groups, &mut scope, &outputs) == Flush::Closed {
                    break;
                }
            }
        }
    }
    while let Ok((shard, partials)) = from_shards.try_recv() {
        partials
            .into_iter()
            .for_each(|group| merger.update(shard, group));
    }
    emit_aggregates(&mut merger, &mut groups, &mut scope, &outputs);
    let events = groups.take_events();
    if !events.is_empty() {
        let _ = outputs
            .to_alerts
            .send(ManagerInput::Conditions(events))
            .await;
    }
}

fn emit_aggregates(
    merger: &mut AggregateMerger,
    groups: &mut GroupEvaluator,
    scope: &mut GroupScope,
    outputs: &AggregatorOutputs,
) -> Flush {
    let now_ms = outputs.clock.now_ms();
    let aggregates = merger.take(now_ms);
    match scope {
        GroupScope::Own => {
            for aggregate in &aggregates {
                groups.on_aggregate(aggregate, now_ms);
            }
        }
        GroupScope::Elsewhere => {}
        GroupScope::Merged(merged) => {
            for aggregate in &aggregates {
                let own = PartialAggregate::from_aggregate(
                    aggregate,
                    merged.partition,
                    merged.share_lifetime,
                );
                merged.add(own, &outputs.counters);
            }
            merged.expire_stale(&outputs.counters);
            for aggregate in merged.take_ready() {
                groups.on_aggregate(&aggregate, now_ms);
            }
        }
    }
    groups.check_deadlines(now_ms);
    send_group_events(groups, outputs);
    if aggregates.is_empty() {
        return Flush::Idle;
    }
    match outputs
        .live_updates
        .try_send(LiveUpdate::Aggregates(aggregates))
    {
        Ok(()) => Flush::Sent,
        Err(TrySendError::Full(LiveUpdate::Aggregates(aggregates))) => {
            outputs
                .counters
                .aggregates_deferred
                .fetch_add(1, Ordering::Relaxed);
            merger.defer(aggregates);
            Flush::Deferred
        }
        Err(TrySendError::Full(_)) => Flush::Deferred,
        Err(TrySendError::Closed(_)) => Flush::Closed,
    }
}

/// Hands group rule changes to the alert manager without waiting (kept for the next window
/// when its queue is full).
fn send_group_events(groups: &mut GroupEvaluator, outputs: &AggregatorOutputs) {
    let events = groups.take_events();
    if events.is_empty() {
        return;
    }
    if let Err(TrySendError::Full(ManagerInput::Conditions(events))) =
        outputs.to_alerts.try_send(ManagerInput::Conditions(events))
    {
        outputs
            .counters
            .alert_events_deferred
            .fetch_add(1, Ordering::Relaxed);
        groups.defer_events(events);
    }
}

/// The bridge's clock: wall-clock milliseconds read through tokio's monotonic clock, so
/// tests on tokio's paused clock drive windows and silence deterministically.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch_ms: i64,
    started: Instant,
}

impl Clock {
    /// A clock reading the wall clock now and advancing with tokio's clock from here.
    pub fn start() -> Self {
        Clock {
            epoch_ms: unix_millis(),
            started: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.epoch_ms.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use iotmon_wire::MetricValue;

    use super::*;

    fn message(topic: &str, payload: &str) -> Message {
        Message {
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    #[test]
    fn devices_spread_over_shards_stably() {
        let mut seen = vec![0; 4];
        for i in 0..1000 {
            let id = format!("dev-{i}");
            let shard = shard_of(&id, 4);
            assert_eq!(shard, shard_of(&id, 4));
            seen[shard] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
        assert_eq!(routing_key("sensors/hq/d1"), "d1");
    }

    /// A bridge owning partition 1 of 2 skips the other partition's devices before parsing
    /// them (even malformed ones), counts them, and aggregates only its own.
    #[tokio::test(start_paused = true)]
    async fn a_partition_keeps_only_its_own_devices() {
        let partition = Partition::new(1, 2).expect("valid");
        let config = BridgeConfig {
            shards: 2,
            partition: Some(partition),
            ..BridgeConfig::default()
        };
        let ids: Vec<String> = (0..20).map(|i| format!("dev-{i}")).collect();
        let (ours, theirs): (Vec<&String>, Vec<&String>) =
            ids.iter().partition(|id| partition.owns(id));
        assert!(!ours.is_empty() && !theirs.is_empty());
        let (to_bridge, from_broker) = mpsc::channel(64);
        let (live_updates, mut derived) = mpsc::channel(64);
        let counters = Arc::new(BridgeCounters::default());
        let shutdown = CancellationToken::new();
        let bridge = tokio::spawn(run(
            config,
            Alerting::disabled(),
            from_broker,
            live_updates,
            counters.clone(),
            None,
            shutdown.clone(),
        ));
        for id in &ids {
            let topic = format!("sensors/hq/{id}");
            to_bridge
                .send(message(&topic, r#"{"t":1}"#))
                .await
                .expect("bridge runs");
        }
        to_bridge
            .send(message(&format!("sensors/hq/{}", theirs[0]), "not json"))
            .await
            .expect("bridge runs");
        let mut seen = std::collections::BTreeSet::new();
        let mut hq_count = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hq_count < ours.len() as u64 || seen.len() < ours.len() {
            assert!(tokio::time::Instant::now() < deadline, "not in time");
            match derived.recv().await.expect("bridge runs") {
                LiveUpdate::Devices(states) => {
                    seen.extend(states.into_iter().map(|s| s.id.to_string()))
                }
                LiveUpdate::Aggregates(aggregates) => {
                    if let Some(hq) = aggregates.iter().find(|a| &*a.group == "hq") {
                        hq_count = hq.metrics["t"].count;
                    }
                }
                LiveUpdate::Alerts(_) | LiveUpdate::PartitionGone(_) => {}
            }
        }
        assert!(seen.iter().all(|id| partition.owns(id)), "{seen:?}");
        assert_eq!(hq_count, ours.len() as u64);
        assert_eq!(
            counters.other_partition_messages.load(Ordering::Relaxed),
            theirs.len() as u64 + 1
        );
        assert_eq!(counters.messages.load(Ordering::Relaxed), ours.len() as u64);
        shutdown.cancel();
        bridge.await.expect("bridge stops");
    }

    fn share(partition: u32, group: &str, sum: f64) -> PartialAggregate {
        let aggregate = iotmon_wire::GroupAggregate {
            group: group.into(),
            ts: 1,
            devices: iotmon_wire::DeviceCounts::default(),
            metrics: [(
                Arc::from("t"),
                iotmon_wire::MetricAggregate {
                    count: 1,
                    mean: sum,
                    min: sum,
                    max: sum,
                },
            )]
            .into_iter()
            .collect(),
        };
        PartialAggregate::from_aggregate(
            &aggregate,
            Partition::new(partition, 2).expect("valid"),
            LIFETIME,
        )
    }

    /// How long the tests' shares stand unrefreshed.
    const LIFETIME: Duration = Duration::from_secs(33);

    /// Partition 0 of 2's merged view of the groups, with no peer sending.
    fn partition_zero(window: Duration) -> Box<MergedGroups> {
        let partition = Partition::new(0, 2).expect("valid");
        let GroupScope::Merged(merged) =
            GroupScope::of(partition, window, LIFETIME, mpsc::channel(4).1)
        else {
            panic!("partition 0 merges");
        };
        merged
    }

    /// Partition 1's bridge is gone (killed, not replaced): once its shares outlive their
    /// lifetime, partition 0's group rules see the group without its values, and the ageing
    /// is counted.
    #[tokio::test(start_paused = true)]
    async fn partition_zero_ages_out_the_shares_of_a_bridge_that_is_gone() {
        let window = Duration::from_secs(1);
        let mut merged = partition_zero(window);
        let counters = BridgeCounters::default();
        merged.add(share(0, "hq", 10.0), &counters);
        merged.add(share(1, "hq", 30.0), &counters);
        tokio::time::sleep(window * MERGE_SETTLE_WINDOWS).await;
        assert_eq!(merged.take_ready()[0].metrics["t"].count, 2);
        // Partition 0 refreshes its own share; partition 1 sends nothing more.
        tokio::time::sleep(LIFETIME / 2).await;
        merged.add(share(0, "hq", 10.0), &counters);
        merged.take_ready();
        merged.expire_stale(&counters);
        assert!(merged.take_ready().is_empty(), "not yet stale");
        tokio::time::sleep(LIFETIME / 2).await;
        merged.expire_stale(&counters);
        let ready = merged.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            (ready[0].metrics["t"].count, ready[0].metrics["t"].mean),
            (1, 10.0),
            "partition 0's share alone"
        );
        assert_eq!(counters.peer_partials_expired.load(Ordering::Relaxed), 1);
    }

    /// A partial announcing another partition count (a bridge left running with an old N, or
    /// a forged message) is refused and counted: it neither wipes partition 0's own share
    /// nor counts as a partition heard from.
    #[tokio::test(start_paused = true)]
    async fn partition_zero_refuses_partials_of_another_partition_count() {
        let window = Duration::from_secs(1);
        let mut merged = partition_zero(window);
        let counters = BridgeCounters::default();
        merged.add(share(0, "hq", 10.0), &counters);
        let other_layout = |index: u32| PartialAggregate {
            partition: index,
            partitions: 3,
            ..share(1, "hq", 90.0)
        };
        merged.add(other_layout(2), &counters);
        merged.add(other_layout(1), &counters);
        tokio::time::sleep(window * MERGE_SETTLE_WINDOWS).await;
        assert!(
            merged.take_ready().is_empty(),
            "partition 1 of 2 is still unheard"
        );
        assert_eq!(counters.peer_partials_rejected.load(Ordering::Relaxed), 2);
        merged.add(share(1, "hq", 30.0), &counters);
        tokio::time::sleep(window * MERGE_SETTLE_WINDOWS).await;
        let ready = merged.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].metrics["t"].count, 2, "both shares of 2, no other");
        assert_eq!(ready[0].metrics["t"].mean, 20.0);
    }

    /// Partition 0 evaluates group rules only on complete merged values: not on its own share
    /// while the other partition is unheard, nor on the first partial of the other's resend.
    #[tokio::test(start_paused = true)]
    async fn partition_zero_waits_for_every_partition_before_group_rules() {
        let window = Duration::from_secs(1);
        let mut merged = partition_zero(window);
        let counters = BridgeCounters::default();
        merged.add(share(0, "hq", 10.0), &counters);
        assert!(merged.take_ready().is_empty(), "partition 1 not heard yet");
        merged.add(share(1, "hq/b", 50.0), &counters);
        assert!(merged.take_ready().is_empty(), "the resend has not settled");
        merged.add(share(1, "hq", 30.0), &counters);
        tokio::time::sleep(window * MERGE_SETTLE_WINDOWS).await;
        let mut ready = merged.take_ready();
        ready.sort_by(|a, b| a.group.cmp(&b.group));
        assert_eq!(ready.len(), 2);
        assert_eq!(ready[0].metrics["t"].mean, 20.0, "hq over both partitions");
        assert_eq!(ready[0].metrics["t"].count, 2);
        assert!(
            merged.take_ready().is_empty(),
            "each change is evaluated once"
        );
        // Without the other partition, the grace ends the wait.
        let mut alone = partition_zero(window);
        alone.add(share(0, "hq", 10.0), &counters);
        tokio::time::sleep(window * (MERGE_GRACE_WINDOWS - 1)).await;
        assert!(alone.take_ready().is_empty());
        tokio::time::sleep(window).await;
        assert_eq!(alone.take_ready().len(), 1);
        assert!(matches!(
            GroupScope::of(
                Partition::new(1, 2).expect("valid"),
                window,
                LIFETIME,
                mpsc::channel(1).1
            ),
            GroupScope::Elsewhere
        ));
        assert!(matches!(
            GroupScope::of(Partition::WHOLE, window, LIFETIME, mpsc::channel(1).1),
            GroupScope::Own
        ));
    }

    /// The whole pipeline on tokio's paused clock: states, aggregates, and presence by silence.
    #[tokio::test(start_paused = true)]
    async fn states_and_aggregates_flow_through_the_shards() {
        let config = BridgeConfig {
            shards: 3,
            ..BridgeConfig::default()
        };
        let (to_bridge, from_broker) = mpsc::channel(16);
        let (live_updates, mut derived) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let bridge = tokio::spawn(run(
            config,
            Alerting::disabled(),
            from_broker,
            live_updates,
            Arc::default(),
            None,
            shutdown.clone(),
        ));
        for (device, t) in [("d1", 10.0), ("d2", 20.0), ("d3", 30.0)] {
            let topic = format!("sensors/hq/{device}");
            to_bridge
                .send(message(&topic, &format!(r#"{{"t":{t}}}"#)))
                .await
                .expect("bridge runs");
        }
        to_bridge
            .send(message("status/hq/d4", "offline"))
            .await
            .expect("bridge runs");
        let mut devices = std::collections::BTreeMap::new();
        let mut hq = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while hq.is_none() || devices.len() < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no complete aggregate in time"
            );
            match derived.recv().await.expect("bridge runs") {
                LiveUpdate::Devices(states) => {
                    for state in states {
                        devices.insert(state.id.to_string(), state);
                    }
                }
                LiveUpdate::Aggregates(aggregates) => {
                    hq = aggregates
                        .into_iter()
                        .find(|a| &*a.group == "hq" && a.devices.online + a.devices.offline == 4)
                        .or(hq);
                }
                // The alert manager's opening batch of open alerts, empty without rules.
                LiveUpdate::Alerts(alerts) => assert!(alerts.is_empty(), "no rules, no alerts"),
                LiveUpdate::PartitionGone(_) => {}
            }
        }
        let hq = hq.expect("hq aggregate");
        assert_eq!((hq.devices.online, hq.devices.offline), (3, 1));
        assert_eq!(hq.metrics["t"].count, 3);
        assert_eq!(hq.metrics["t"].mean, 20.0);
        assert_eq!(
            devices["d2"].metrics.get("t"),
            Some(&MetricValue::Number(20.0))
        );
        // Nothing more is sent: after the default silence every device is offline.
        tokio::time::sleep(Duration::from_secs(61)).await;
        let mut offline = false;
        while let Ok(batch) = derived.try_recv() {
            if let LiveUpdate::Aggregates(aggregates) = batch {
                offline |= aggregates
                    .iter()
                    .any(|a| &*a.group == "hq" && a.devices.offline == 4);
            }
        }
        assert!(offline, "silence turned the devices offline");
        shutdown.cancel();
        bridge.await.expect("bridge stops");
    }
}
