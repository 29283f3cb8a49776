//! The hub: the one task that knows every device's latest state and every viewer's view, and
//! decides what each viewer is sent.
//!
//! Viewers are indexed by the devices they see, so a device update costs work only for the
//! viewers that show it. Each viewer's frames go through a bounded queue that the hub never
//! waits on: when it is full, the viewer's changed devices stay pending and go out coalesced
//! (latest value wins) once the viewer has caught up.

mod devices;
mod view;
mod viewers;

use std::cmp::Ordering as Order;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::metrics::{encode_one, Collector, DescriptorEncoder, Kind};
use iotmon_wire::partition::Partition;
use iotmon_wire::topics::{group_prefixes, in_group};
use iotmon_wire::{Alert, AlertId, DeviceId, DeviceState, GroupAggregate, GroupPath, LiveUpdate};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use devices::{DeviceSlot, DeviceTable};
use view::{PendingDevices, ViewIds};
use viewers::{ViewerKey, Viewers};

/// Identifies one viewer session.
pub type ViewerId = u64;

/// The group subscription that stands for every group: a fleet overview (`"groups": ["*"]`).
pub const FLEET: &str = "*";

/// Most group aggregates one `update` carries. A fleet subscriber may have thousands of groups
/// change each aggregation window; the rest wait for the next tick, oldest change first
/// (latest aggregate wins), so a frame stays small and every group still goes out.
pub const MAX_GROUPS_PER_UPDATE: usize = 500;

/// Ticks in a row a viewer's queue may refuse its frame while its session writes nothing
/// before the viewer counts as behind (1 s at the default tick). A queue that refuses a frame
/// but is being written to belongs to a viewer that reads, only slower than it is sent (a
/// fleet subscriber's frames are larger than the byte budget): its changes wait, coalesced,
/// for room. Declared behind at the first refusal, such a viewer was resynchronised with a
/// snapshot of every group over and over, each snapshot itself the next reason to refuse.
pub const PATIENCE_TICKS: u32 = 10;

/// Commands the hub accepts from sessions and REST handlers.
#[derive(Debug)]
pub enum HubCommand {
    /// A viewer connected; its serialized frames go to `outbound`.
    Join { id: ViewerId, outbound: ViewerQueue },
    /// A viewer's new view, replacing the previous one.
    View { id: ViewerId, spec: ViewSpec },
    /// A viewer's new set of group aggregates on screen, replacing the previous one.
    Groups {
        id: ViewerId,
        groups: Vec<GroupPath>,
    },
    /// A viewer disconnected.
    Leave { id: ViewerId },
    /// Gauges that need a walk over the viewers, for `/metrics`.
    Gauges {
        reply: oneshot::Sender<ViewerGauges>,
    },
    /// The group tree with the latest aggregates, for `/api/groups`.
    ListGroups {
        reply: oneshot::Sender<Vec<GroupNode>>,
    },
    /// A page of the device list, for `/api/devices`.
    ListDevices {
        query: DeviceQuery,
        reply: oneshot::Sender<DevicePage>,
    },
    /// The open alerts, for `/api/alerts`.
    ListAlerts { reply: oneshot::Sender<Vec<Alert>> },
    /// Answered once the first batch of alerts has arrived (at once if it has).
    AlertsReceived { reply: oneshot::Sender<()> },
}

/// The hub's end of one viewer's outbound queue: bounded in frames by the channel, and in
/// bytes by `bytes`, which the hub raises when it queues a frame and the session lowers once
/// the frame is written (or abandoned). A frame of a view of 1,000 devices is ~150 KB, so a
/// bound in frames alone let a viewer whose socket stopped accepting hold megabytes.
#[derive(Debug, Clone)]
pub struct ViewerQueue {
    pub frames: mpsc::Sender<String>,
    /// Bytes of the frames queued and not yet written; `None` for a queue bounded in frames
    /// alone.
    pub bytes: Option<Arc<AtomicUsize>>,
}

impl ViewerQueue {
    /// Bytes queued and not yet written (0 when untracked).
    fn queued_bytes(&self) -> usize {
        self.bytes
            .as_ref()
            .map_or(0, |bytes| bytes.load(Ordering::Relaxed))
    }
}

impl From<mpsc::Sender<String>> for ViewerQueue {
    /// A queue bounded in frames alone, for readers of the channel that account for nothing
    /// (unit tests, the fuzzer, the hub's benchmark).
    fn from(frames: mpsc::Sender<String>) -> Self {
        ViewerQueue {
            frames,
            bytes: None,
        }
    }
}

/// What a viewer has on screen.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewSpec {
    /// Exactly these devices.
    Devices(DeviceList),
    /// A page of a group: the devices under `group` (itself or any subgroup), in list order,
    /// `limit` of them from `offset`. Resolved when the view is set.
    GroupPage {
        group: String,
        offset: usize,
        limit: usize,
    },
}

/// The device ids of a `view`, one after the other in one string. Parsed, a view of 1,000
/// devices is 1,000 `Arc<str>`s, ~48 KB in 1,001 allocations by count (a 16-byte pointer and
/// a ~32-byte allocation each), and 1,000 viewers that send their views at once can queue
/// that many for the hub (its command queue holds 1,024); in one string with the ends beside
/// it, the same ids take ~17 KB. With this, the fault bench's RSS peak with 1,000 stalled
/// viewers fell from 278 to 250 MiB (one run each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceList {
    ids: String,
    /// Where each id ends in `ids`.
    ends: Vec<u32>,
}

impl DeviceList {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|&end| end as usize));
        starts
            .zip(self.ends.iter())
            .map(|(start, &end)| &self.ids[start..end as usize])
    }
}

impl<S: AsRef<str>> FromIterator<S> for DeviceList {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> Self {
        let mut list = DeviceList::default();
        for id in ids {
            list.ids.push_str(id.as_ref());
            let end = u32::try_from(list.ids.len()).expect("a view's ids take less than 4 GiB");
            list.ends.push(end);
        }
        list.ids.shrink_to_fit();
        list.ends.shrink_to_fit();
        list
    }
}

/// Viewer gauges computed on demand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewerGauges {
    /// Devices in all views together.
    pub viewed_devices: usize,
    /// Group aggregates in all viewers' subscriptions together.
    pub viewed_groups: usize,
    /// Frames waiting in all viewers' queues.
    pub queued_frames: usize,
    /// The longest single viewer queue.
    pub max_queued_frames: usize,
    /// Bytes waiting in all viewers' queues (and being written).
    pub queued_bytes: usize,
    /// The most bytes queued for a single viewer.
    pub max_queued_bytes: usize,
    /// Viewers currently behind (their queue was full; a snapshot is owed).
    pub lagging_viewers: usize,
    /// Viewers subscribed to every group (the fleet overview).
    pub fleet_viewers: usize,
}

/// Which devices `/api/devices` returns, and in what order.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub offset: usize,
    pub limit: usize,
    /// Case-insensitive text the device id or group path must contain.
    pub text: Option<String>,
    /// Only devices under this group (the group itself or a subgroup).
    pub group: Option<String>,
    /// Only devices in this condition.
    pub status: Option<DeviceStatus>,
    pub sort: DeviceSort,
    /// Largest first (the tie-break, group path then id, stays ascending).
    pub descending: bool,
}

/// A device's condition, to filter the device list by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// The subject of an active alert (acknowledged or not).
    Alerting,
    /// Marked offline (last will, `offline` status, or silence).
    Offline,
    Online,
}

/// The order of the device list. Every order ends with group path then id, so that pages of
/// one query never overlap or skip a device while the fleet stands still.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum DeviceSort {
    /// Group path, then id: the hub's own order, read without sorting.
    #[default]
    Group,
    Id,
    /// Time of the latest reading.
    LastSeen,
    /// A metric's latest value; devices without it come last in either direction.
    Metric(String),
}

/// One group of the location hierarchy, with its latest aggregate and its subgroups.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupNode {
    /// The full group path (`site-1/building-a`).
    pub group: GroupPath,
    /// The last level of the path (`building-a`).
    pub name: String,
    /// The latest aggregate, or `None` before the bridge has sent one.
    pub aggregate: Option<GroupAggregate>,
    /// Subgroups, sorted by name.
    pub children: Vec<GroupNode>,
}

/// A page of devices, sorted by group path then id.
#[derive(Debug, Clone, Serialize)]
pub struct DevicePage {
    /// Devices matching the query, over all pages.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub devices: Vec<DeviceState>,
}

/// Counters and gauges the hub shares with `/metrics`.
#[derive(Debug, Default)]
pub struct HubStats {
    pub viewers: AtomicUsize,
    pub devices: AtomicUsize,
    /// Frames sent to viewers.
    pub frames_sent: AtomicU64,
    /// Ticks at which a viewer's queue was full, so its changes were held and coalesced.
    pub frames_deferred: AtomicU64,
    /// Viewers that fell behind and were owed a resynchronising snapshot.
    pub resync_snapshots: AtomicU64,
    /// `alert` frames queued to viewers.
    pub alert_frames_sent: AtomicU64,
    /// Open alerts known to the dashboard.
    pub open_alerts: AtomicUsize,
    /// Devices marked offline by the dashboard itself because their partition's bridge is
    /// gone ([`LiveUpdate::PartitionGone`]).
    pub devices_marked_offline: AtomicU64,
}

impl Collector for HubStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let load = |gauge: &AtomicUsize| gauge.load(Ordering::Relaxed) as u64;
        encode_one(
            &mut encoder,
            "iotmon_viewers",
            "Connected dashboard viewers.",
            Kind::Gauge,
            load(&self.viewers),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_dashboard_devices",
            "Devices known to the dashboard.",
            Kind::Gauge,
            load(&self.devices),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_viewer_frames_sent_total",
            "Frames queued to viewers.",
            Kind::Counter,
            self.frames_sent.load(Ordering::Relaxed),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_viewer_frames_deferred_total",
            "Times a viewer's queue was full and its changes were held, coalesced.",
            Kind::Counter,
            self.frames_deferred.load(Ordering::Relaxed),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_viewer_resync_snapshots_total",
            "Times a viewer fell behind (its queue full while it read nothing) and was owed a resynchronising snapshot.",
            Kind::Counter,
            self.resync_snapshots.load(Ordering::Relaxed),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_viewer_alert_frames_sent_total",
            "Alert frames queued to viewers (pushed at once, not on the tick).",
            Kind::Counter,
            self.alert_frames_sent.load(Ordering::Relaxed),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_dashboard_open_alerts",
            "Open alerts known to the dashboard.",
            Kind::Gauge,
            load(&self.open_alerts),
        )?;
        encode_one(
            &mut encoder,
            "iotmon_dashboard_devices_marked_offline_total",
            "Devices marked offline because their partition's bridge is gone (every share of \
             aggregates it sent aged out); each comes back online with its next state.",
            Kind::Counter,
            self.devices_marked_offline.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}

/// Exported per scrape: the hub computes them when asked (`HubHandle::gauges`).
impl Collector for ViewerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let gauges = [
            (
                "iotmon_viewed_devices",
                "Devices in all viewers' views together.",
                self.viewed_devices,
            ),
            (
                "iotmon_viewed_groups",
                "Group aggregates in all viewers' subscriptions together.",
                self.viewed_groups,
            ),
            (
                "iotmon_viewer_queued_frames",
                "Frames waiting in all viewers' queues.",
                self.queued_frames,
            ),
            (
                "iotmon_viewer_max_queued_frames",
                "The longest viewer queue.",
                self.max_queued_frames,
            ),
            (
                "iotmon_viewer_queued_bytes",
                "Bytes of frames waiting in (or being written from) all viewers' queues.",
                self.queued_bytes,
            ),
            (
                "iotmon_viewer_max_queued_bytes",
                "The most bytes queued for one viewer.",
                self.max_queued_bytes,
            ),
            (
                "iotmon_viewers_lagging",
                "Viewers behind, owed a resynchronising snapshot.",
                self.lagging_viewers,
            ),
            (
                "iotmon_fleet_viewers",
                "Viewers subscribed to every group's aggregate (the fleet overview).",
                self.fleet_viewers,
            ),
        ];
        for (name, help, value) in gauges {
            encode_one(&mut encoder, name, help, Kind::Gauge, value as u64)?;
        }
        Ok(())
    }
}

/// The sending side of the hub, shared by sessions and handlers.
#[derive(Debug, Clone)]
pub struct HubHandle {
    commands: mpsc::Sender<HubCommand>,
    next_viewer: Arc<AtomicU64>,
    pub stats: Arc<HubStats>,
}

impl HubHandle {
    /// A fresh viewer id.
    pub fn next_viewer_id(&self) -> ViewerId {
        self.next_viewer.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a command, waiting while the hub's queue is full. `false` once the hub stopped.
    pub async fn send(&self, command: HubCommand) -> bool {
        self.commands.send(command).await.is_ok()
    }

    /// Viewer gauges, or `None` once the hub stopped.
    pub async fn gauges(&self) -> Option<ViewerGauges> {
        let (reply, answer) = oneshot::channel();
        if !self.send(HubCommand::Gauges { reply }).await {
            return None;
        }
        answer.await.ok()
    }

    /// The group tree, or `None` once the hub stopped.
    pub async fn list_groups(&self) -> Option<Vec<GroupNode>> {
        let (reply, answer) = oneshot::channel();
        if !self.send(HubCommand::ListGroups { reply }).await {
            return None;
        }
        answer.await.ok()
    }

    /// Returns once the first batch of alerts from the bridge has been applied (with the
    /// bridge in this process, that batch holds every open alert); `false` if the hub stopped
    /// first.
    pub async fn alerts_received(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        self.send(HubCommand::AlertsReceived { reply }).await && answer.await.is_ok()
    }

    /// The open alerts, or `None` once the hub stopped.
    pub async fn list_alerts(&self) -> Option<Vec<Alert>> {
        let (reply, answer) = oneshot::channel();
        if !self.send(HubCommand::ListAlerts { reply }).await {
            return None;
        }
        answer.await.ok()
    }

    /// A page of the device list, or `None` once the hub stopped.
    pub async fn list_devices(&self, query: DeviceQuery) -> Option<DevicePage> {
        let (reply, answer) = oneshot::channel();
        if !self.send(HubCommand::ListDevices { query, reply }).await {
            return None;
        }
        answer.await.ok()
    }
}

/// Commands queued for the hub before senders wait.
const COMMAND_QUEUE: usize = 1024;

/// Creates the hub: the handle for sessions and handlers, and the task to spawn.
pub fn create(
    tick: Duration,
    queue_bytes: usize,
    updates: mpsc::Receiver<LiveUpdate>,
    shutdown: CancellationToken,
) -> (HubHandle, impl std::future::Future<Output = ()>) {
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let stats = Arc::new(HubStats::default());
    let handle = HubHandle {
        commands,
        next_viewer: Arc::new(AtomicU64::new(1)),
        stats: stats.clone(),
    };
    let task = run_hub(
        Hub::new(stats).with_queue_bytes(queue_bytes),
        tick,
        command_rx,
        updates,
        shutdown,
    );
    (handle, task)
}

async fn run_hub(
    mut hub: Hub,
    tick: Duration,
    mut commands: mpsc::Receiver<HubCommand>,
    mut updates: mpsc::Receiver<LiveUpdate>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(command) = commands.recv() => hub.handle_command(command),
            batch = updates.recv() => match batch {
                Some(batch) => hub.apply(batch),
                None => {
                    warn!("the derived stream ended; the dashboard shows frozen values");
                    break;
                }
            },
            _ = ticker.tick() => hub.push_pending(),
        }
    }
}

/// One connected viewer.
#[derive(Debug)]
struct Viewer {
    outbound: ViewerQueue,
    view: ViewIds,
    /// Devices in the view changed since the viewer's last frame: one bit per place in the
    /// view. A tick builds the viewer's frame from its own entries alone (each device's JSON
    /// read from its slot), without visiting the fleet, so its cost does not grow with the
    /// fleet; and a viewer waiting for room holds 128 bytes for a view of 1,000 devices,
    /// where a table of changed ids and their JSON held ~10 KiB (heaptrack, 1,000 stalled
    /// viewers).
    pending: PendingDevices,
    /// Groups whose aggregates the viewer shows (empty for a fleet subscriber).
    groups: HashSet<GroupPath>,
    /// Subscribed to every group's aggregate ([`FLEET`]).
    fleet: bool,
    /// The next snapshot must carry every subscribed aggregate: after a `groups` message, or
    /// when the viewer fell behind. A fleet subscriber's snapshot answering a mere `view`
    /// change leaves them out: it has them, and they are thousands (megabytes).
    groups_owed: bool,
    /// Subscribed groups whose aggregate changed since the viewer's last frame.
    pending_groups: PendingGroups,
    /// A snapshot is owed instead of an update: after a new view, or after the viewer's queue
    /// was full (it fell behind; once it catches up, a snapshot resynchronises it).
    needs_snapshot: bool,
    /// The viewer's queued bytes when the hub last queued or was refused a frame: fewer at
    /// the next look means its session wrote some since.
    queued_seen: usize,
    /// Refused frames in a row with nothing written in between (see [`PATIENCE_TICKS`]).
    refusals_without_progress: u32,
    /// For a group view, the group's size over all pages (sent in the snapshot).
    group_total: Option<usize>,
    /// Sequence number of the next frame.
    seq: u64,
}

/// A device's state serialized once, shared by every frame that carries it.
type DeviceJson = Arc<RawValue>;

/// Groups whose aggregate changed and is owed to a viewer, in the order they first changed.
/// At most one entry per group (a group that changes again keeps its place: the frame carries
/// its latest aggregate), so it is bounded by the number of groups.
#[derive(Debug, Default)]
struct PendingGroups {
    order: VecDeque<GroupPath>,
    members: HashSet<GroupPath>,
}

impl PendingGroups {
    fn insert(&mut self, group: &GroupPath) {
        if self.members.insert(group.clone()) {
            self.order.push_back(group.clone());
        }
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The oldest `n` entries, left in place until [`Self::remove_first`].
    fn first(&self, n: usize) -> impl Iterator<Item = &GroupPath> {
        self.order.iter().take(n)
    }

    fn remove_first(&mut self, n: usize) {
        for group in self.order.drain(..n.min(self.order.len())) {
            self.members.remove(&group);
        }
    }

    fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

/// A frame as sent: [`ServerMessage`](iotmon_wire::viewer::ServerMessage)'s `snapshot` and `update`, with devices already in
/// JSON. `tests::frames_read_back_as_server_messages` keeps the two in step.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame<'a> {
    Snapshot {
        seq: u64,
        devices: Vec<DeviceJson>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        groups: Vec<&'a GroupAggregate>,
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<usize>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        alerts: Vec<&'a Alert>,
    },
    Alert {
        alert: &'a Alert,
    },
    Update {
        seq: u64,
        devices: Vec<DeviceJson>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        groups: Vec<&'a GroupAggregate>,
    },
}

/// What happened when a frame was offered to a viewer's queue.
enum Offer {
    Queued,
    Full,
    Gone,
}

/// The hub's state; every method is synchronous and runs on the hub task. Public so its cost
/// can be benchmarked without sockets (`dashboard/benches/hub.rs`).
#[derive(Debug)]
pub struct Hub {
    /// Every device's latest state and the viewers that have it in view, by slot.
    devices: DeviceTable,
    /// Devices in list order (group path, then id), for paging.
    order: BTreeSet<(GroupPath, DeviceId)>,
    viewers: Viewers<Viewer>,
    /// The latest aggregate of every group.
    aggregates: HashMap<GroupPath, GroupAggregate>,
    /// Group path to the viewers subscribed to its aggregate.
    group_watchers: HashMap<GroupPath, HashSet<ViewerKey>>,
    /// Viewers subscribed to every group: each changed aggregate goes to each of them.
    fleet_watchers: HashSet<ViewerKey>,
    /// Viewers with something to send at the next tick.
    dirty: HashSet<ViewerKey>,
    /// The open alerts.
    alerts: HashMap<AlertId, Alert>,
    /// Whether a batch of alerts has arrived yet.
    alerts_received: bool,
    /// Who waits for the first batch of alerts (see [`HubHandle::alerts_received`]).
    awaiting_alerts: Vec<oneshot::Sender<()>>,
    /// Bytes a viewer's queue may hold before it is treated as full (`viewer_queue_bytes`).
    queue_bytes: usize,
    stats: Arc<HubStats>,
}

impl Hub {
    /// An empty hub reporting into `stats`.
    pub fn new(stats: Arc<HubStats>) -> Self {
        Hub {
            devices: DeviceTable::default(),
            order: BTreeSet::new(),
            viewers: Viewers::default(),
            aggregates: HashMap::new(),
            group_watchers: HashMap::new(),
            fleet_watchers: HashSet::new(),
            dirty: HashSet::new(),
            alerts: HashMap::new(),
            alerts_received: false,
            awaiting_alerts: Vec::new(),
            queue_bytes: crate::DashboardConfig::default().viewer_queue_bytes,
            stats,
        }
    }

    /// Sets the bytes each viewer's queue may hold (see [`ViewerQueue`]).
    #[must_use]
    pub fn with_queue_bytes(mut self, queue_bytes: usize) -> Self {
        self.queue_bytes = queue_bytes;
        self
    }

    fn handle_command(&mut self, command: HubCommand) {
        match command {
            HubCommand::Join { id, outbound } => self.join(id, outbound),
            HubCommand::View { id, spec } => self.set_view(id, spec),
            HubCommand::Groups { id, groups } => self.set_groups(id, groups),
            HubCommand::Leave { id } => self.leave(id),
            HubCommand::ListGroups { reply } => {
                let _ = reply.send(self.group_tree());
            }
            HubCommand::Gauges { reply } => {
                let _ = reply.send(self.gauges());
            }
            HubCommand::ListAlerts { reply } => {
                let _ = reply.send(self.alerts.values().cloned().collect());
            }
            HubCommand::AlertsReceived { reply } => {
                if self.alerts_received {
                    let _ = reply.send(());
                } else {
                    self.awaiting_alerts.push(reply);
                }
            }
            HubCommand::ListDevices { query, reply } => {
                // A page scrolled past is abandoned by the browser before its turn comes:
                // listing a large fleet is not free, and the hub has better things to do.
                if !reply.is_closed() {
                    let _ = reply.send(self.list(&query));
                }
            }
        }
    }

    /// Registers viewer `id`; its frames go to `outbound`.
    pub fn join(&mut self, id: ViewerId, outbound: impl Into<ViewerQueue>) {
        // Sessions' ids are never reused; one that joined twice starts afresh.
        self.leave(id);
        let viewer = Viewer {
            outbound: outbound.into(),
            view: ViewIds::default(),
            pending: PendingDevices::default(),
            groups: HashSet::new(),
            fleet: false,
            groups_owed: false,
            pending_groups: PendingGroups::default(),
            needs_snapshot: false,
            queued_seen: 0,
            refusals_without_progress: 0,
            group_total: None,
            seq: 0,
        };
        self.viewers.insert(id, viewer);
        self.stats
            .viewers
            .store(self.viewers.len(), Ordering::Relaxed);
    }

    /// Forgets viewer `id` and its view.
    pub fn leave(&mut self, id: ViewerId) {
        if let Some(key) = self.viewers.key(id) {
            self.remove_viewer(key);
        }
    }

    /// Forgets the viewer under `key`: it leaves every index before its key may be reused.
    fn remove_viewer(&mut self, key: ViewerKey) {
        if let Some(viewer) = self.viewers.remove(key) {
            for slot in viewer.view.iter() {
                self.devices.unwatch(slot, key);
            }
            unindex(&mut self.group_watchers, key, &viewer.groups);
        }
        self.fleet_watchers.remove(&key);
        self.dirty.remove(&key);
        self.stats
            .viewers
            .store(self.viewers.len(), Ordering::Relaxed);
    }

    /// Replaces viewer `id`'s view and sends it a snapshot at once.
    pub fn set_view(&mut self, id: ViewerId, spec: ViewSpec) {
        // Checked first: slots are given to the ids of a view only for a viewer to hold them.
        let Some(key) = self.viewers.key(id) else {
            return;
        };
        let (slots, group_total) = match spec {
            // A device not known yet gets a slot too: the viewer sees it once it reports.
            ViewSpec::Devices(devices) => {
                let slots = devices.iter().map(|device| {
                    self.devices
                        .slot(device)
                        .unwrap_or_else(|| self.devices.slot_or_insert(&device.into()))
                });
                (slots.collect(), None)
            }
            ViewSpec::GroupPage {
                group,
                offset,
                limit,
            } => {
                let (page, total) = self.group_page(&group, offset, limit);
                let slots = page
                    .iter()
                    .map(|device| self.devices.slot_or_insert(device));
                (slots.collect(), Some(total))
            }
        };
        let new_view = ViewIds::new(slots);
        let Some(viewer) = self.viewers.get_mut(key) else {
            return;
        };
        for slot in new_view.difference(&viewer.view) {
            self.devices.watch(slot, key);
        }
        for slot in viewer.view.difference(&new_view) {
            self.devices.unwatch(slot, key);
        }
        viewer.pending = PendingDevices::for_view(new_view.len());
        viewer.view = new_view;
        viewer.needs_snapshot = true;
        viewer.group_total = group_total;
        // A snapshot answers a view at once rather than at the next tick.
        self.push_to(key);
    }

    /// Replaces viewer `id`'s group subscriptions and sends it a snapshot at once. A list
    /// naming [`FLEET`] subscribes to every group.
    pub fn set_groups(&mut self, id: ViewerId, groups: Vec<GroupPath>) {
        let Some(key) = self.viewers.key(id) else {
            return;
        };
        let Some(viewer) = self.viewers.get_mut(key) else {
            return;
        };
        viewer.fleet = groups.iter().any(|group| &**group == FLEET);
        viewer.groups_owed = true;
        if viewer.fleet {
            self.fleet_watchers.insert(key);
        } else {
            self.fleet_watchers.remove(&key);
        }
        let new_groups: HashSet<GroupPath> = if viewer.fleet {
            HashSet::new()
        } else {
            groups.into_iter().collect()
        };
        let old_groups = std::mem::replace(&mut viewer.groups, new_groups.clone());
        viewer.pending_groups.clear();
        viewer.needs_snapshot = true;
        unindex(
            &mut self.group_watchers,
            key,
            old_groups.difference(&new_groups),
        );
        index(
            &mut self.group_watchers,
            key,
            new_groups.difference(&old_groups),
        );
        self.push_to(key);
    }

    /// The ids of one page of `group`'s devices, and the group's size.
    fn group_page(&self, group: &str, offset: usize, limit: usize) -> (Vec<DeviceId>, usize) {
        let start: (GroupPath, DeviceId) = (group.into(), "".into());
        // Subgroups sort after `group/`; siblings such as `group-2` may sit in between.
        let end = format!("{group}/\u{10ffff}");
        let members = self
            .order
            .range(start..)
            .take_while(|(path, _)| **path <= *end)
            .filter(|(path, _)| in_group(path, group));
        let mut total = 0;
        let mut page = Vec::new();
        for (index, (_, id)) in members.enumerate() {
            total += 1;
            if index >= offset && page.len() < limit {
                page.push(id.clone());
            }
        }
        (page, total)
    }

    fn gauges(&self) -> ViewerGauges {
        let mut gauges = ViewerGauges::default();
        for viewer in self.viewers.iter() {
            let frames = &viewer.outbound.frames;
            let queued = frames.max_capacity() - frames.capacity();
            let queued_bytes = viewer.outbound.queued_bytes();
            gauges.queued_bytes += queued_bytes;
            gauges.max_queued_bytes = gauges.max_queued_bytes.max(queued_bytes);
            gauges.viewed_devices += viewer.view.len();
            gauges.viewed_groups += if viewer.fleet {
                self.aggregates.len()
            } else {
                viewer.groups.len()
            };
            gauges.fleet_viewers += usize::from(viewer.fleet);
            gauges.queued_frames += queued;
            gauges.max_queued_frames = gauges.max_queued_frames.max(queued);
            gauges.lagging_viewers += usize::from(viewer.needs_snapshot && !viewer.view.is_empty());
        }
        gauges
    }

    /// Records a batch from the bridge and marks the viewers that see what changed.
    pub fn apply(&mut self, batch: LiveUpdate) {
        match batch {
            LiveUpdate::Devices(states) => self.apply_devices(states),
            LiveUpdate::Aggregates(aggregates) => self.apply_aggregates(aggregates),
            LiveUpdate::Alerts(alerts) => self.apply_alerts(alerts),
            LiveUpdate::PartitionGone(gone) => self.mark_partition_offline(gone),
        }
    }

    /// Partition `gone`'s bridge is gone: each of its devices still online goes offline, with
    /// its last values and `ts`, to the viewers that show it as any offline change does. The
    /// bridge that judged their presence (last will, status, silence) is not there to, and
    /// viewers would see them online, frozen, while their group's aggregate counts them
    /// offline. Each comes back with its next state, from the partition's new bridge. A
    /// fleet in one partition has no other bridge to outlive it: nothing is marked.
    fn mark_partition_offline(&mut self, gone: Partition) {
        if !gone.is_split() {
            return;
        }
        let marked: Vec<DeviceState> = self
            .devices
            .states()
            .filter(|state| state.online && gone.owns(&state.id))
            .map(|state| DeviceState {
                online: false,
                ..state.clone()
            })
            .collect();
        warn!(
            partition = %gone,
            devices = marked.len(),
            "the partition's bridge is gone (its shares aged out): its devices are marked \
             offline until it is back"
        );
        self.stats
            .devices_marked_offline
            .fetch_add(marked.len() as u64, Ordering::Relaxed);
        self.apply_devices(marked);
    }

    /// Pushes each changed alert at once to every viewer whose scope holds it: the device is
    /// in its view, or under one of its groups. A viewer whose queue is full gets it in the
    /// snapshot it is then owed.
    fn apply_alerts(&mut self, alerts: Vec<Alert>) {
        self.alerts_received = true;
        for waiting in self.awaiting_alerts.drain(..) {
            // One that stopped waiting needs no answer.
            let _ = waiting.send(());
        }
        for alert in alerts {
            // Copies of one alert may arrive twice (a resend after a dashboard asked for
            // everything); only a newer one counts.
            if self
                .alerts
                .get(&alert.id)
                .is_some_and(|known| known.seq >= alert.seq)
            {
                continue;
            }
            for key in self.viewers_in_scope(&alert) {
                self.push_alert(key, &alert);
            }
            if alert.state.is_open() {
                self.alerts.insert(alert.id, alert);
            } else {
                self.alerts.remove(&alert.id);
            }
        }
        self.stats
            .open_alerts
            .store(self.alerts.len(), Ordering::Relaxed);
    }

    fn viewers_in_scope(&self, alert: &Alert) -> HashSet<ViewerKey> {
        let mut viewers: HashSet<ViewerKey> = self
            .devices
            .slot(&alert.subject)
            .into_iter()
            .flat_map(|slot| self.devices.get(slot).watchers.iter())
            .collect();
        for group in group_prefixes(&alert.group) {
            if let Some(watchers) = self.group_watchers.get(group) {
                viewers.extend(watchers);
            }
        }
        viewers.extend(&self.fleet_watchers);
        viewers
    }

    fn push_alert(&mut self, key: ViewerKey, alert: &Alert) {
        let Some(viewer) = self.viewers.get_mut(key) else {
            return;
        };
        if viewer.needs_snapshot {
            // The snapshot it is owed will carry the alert.
            self.dirty.insert(key);
            return;
        }
        // Alerts go at once, past the byte budget: they are small, and the frame bound still
        // holds them. Refused, an alert could not wait with the coalesced changes.
        match offer(&viewer.outbound, usize::MAX, &Frame::Alert { alert }) {
            Offer::Queued => {
                self.stats.alert_frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            Offer::Full => self.fell_behind(key),
            Offer::Gone => self.remove_viewer(key),
        }
    }

    fn apply_aggregates(&mut self, aggregates: Vec<GroupAggregate>) {
        for aggregate in aggregates {
            let watchers = self
                .group_watchers
                .get(&aggregate.group)
                .into_iter()
                .flatten();
            for &key in watchers.chain(&self.fleet_watchers) {
                if let Some(viewer) = self.viewers.get_mut(key) {
                    viewer.pending_groups.insert(&aggregate.group);
                    self.dirty.insert(key);
                }
            }
            self.aggregates.insert(aggregate.group.clone(), aggregate);
        }
    }

    fn apply_devices(&mut self, states: Vec<DeviceState>) {
        for state in states {
            let slot = self.devices.slot_or_insert(&state.id);
            let watchers = &self.devices.get(slot).watchers;
            // Serialized once here for all the viewers that show the device; devices nobody
            // shows are serialized only if a snapshot needs them.
            let json = if watchers.is_empty() {
                None
            } else {
                device_json(&state)
            };
            if json.is_some() {
                for key in watchers.iter() {
                    if let Some(viewer) = self.viewers.get_mut(key) {
                        // A viewer owed a snapshot gets every device's latest state in it:
                        // holding its changes meanwhile would only cost memory.
                        if !viewer.needs_snapshot {
                            if let Some(position) = viewer.view.position(slot) {
                                viewer.pending.insert(position);
                            }
                        }
                        self.dirty.insert(key);
                    }
                }
            }
            self.upsert(slot, state, json);
        }
        self.stats
            .devices
            .store(self.order.len(), Ordering::Relaxed);
    }

    fn upsert(&mut self, slot: DeviceSlot, state: DeviceState, json: Option<DeviceJson>) {
        let entry = self.devices.get_mut(slot);
        match &entry.state {
            Some(known) if known.group == state.group => {}
            Some(known) => {
                self.order.remove(&(known.group.clone(), known.id.clone()));
                self.order.insert((state.group.clone(), state.id.clone()));
            }
            None => {
                self.order.insert((state.group.clone(), state.id.clone()));
            }
        }
        entry.state = Some(state);
        entry.json = json;
    }

    /// Sends every viewer with pending changes its frame (called once per tick).
    pub fn push_pending(&mut self) {
        let dirty: Vec<ViewerKey> = self.dirty.drain().collect();
        for key in dirty {
            self.push_to(key);
        }
    }

    /// Offers viewer `key` a snapshot (if one is owed) or an update of its pending devices.
    /// If its queue is full, the viewer stays dirty and its changes wait, coalesced.
    fn push_to(&mut self, key: ViewerKey) {
        let Some(viewer) = self.viewers.get_mut(key) else {
            return;
        };
        if viewer.needs_snapshot && viewer.outbound.queued_bytes() > 0 {
            // A snapshot waits for an empty queue. Building one (a view of 1,000 devices is
            // ~150 KB) only to find it does not fit, every tick for every viewer behind, starved
            // the hub with 1,000 stalled viewers: the others' p99 went from 0.16 to 4.6 s.
            self.stats.frames_deferred.fetch_add(1, Ordering::Relaxed);
            self.dirty.insert(key);
            return;
        }
        let mut groups_sent = 0;
        let mut groups_in_snapshot = true;
        let (frame, is_snapshot) = if viewer.needs_snapshot {
            // A fleet snapshot carries every group, like `/api/groups` does, when it owes them.
            let groups = if viewer.fleet && !viewer.groups_owed {
                groups_in_snapshot = false;
                Vec::new()
            } else if viewer.fleet {
                self.aggregates.values().collect()
            } else {
                aggregates_of(&self.aggregates, viewer.groups.iter())
            };
            let snapshot = Frame::Snapshot {
                seq: viewer.seq,
                devices: self.devices.jsons(viewer.view.iter()),
                groups,
                total: viewer.group_total,
                alerts: alerts_in_scope(&self.alerts, viewer, &self.devices),
            };
            (snapshot, true)
        } else if viewer.pending.is_empty() && viewer.pending_groups.is_empty() {
            return;
        } else {
            groups_sent = MAX_GROUPS_PER_UPDATE;
            let update = Frame::Update {
                seq: viewer.seq,
                devices: self.devices.jsons(
                    viewer
                        .pending
                        .positions()
                        .map(|position| viewer.view.at(position)),
                ),
                groups: aggregates_of(&self.aggregates, viewer.pending_groups.first(groups_sent)),
            };
            (update, false)
        };
        match offer(&viewer.outbound, self.queue_bytes, &frame) {
            Offer::Queued => {
                viewer.seq += 1;
                viewer.pending.clear();
                if is_snapshot {
                    viewer.needs_snapshot = false;
                    viewer.groups_owed = false;
                    if groups_in_snapshot {
                        viewer.pending_groups.clear();
                    }
                } else {
                    viewer.pending_groups.remove_first(groups_sent);
                }
                viewer.queued_seen = viewer.outbound.queued_bytes();
                viewer.refusals_without_progress = 0;
                if !viewer.pending_groups.is_empty() {
                    // More than one frame's worth of groups changed: the rest go next tick.
                    self.dirty.insert(key);
                }
                self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            Offer::Full => self.refused(key),
            Offer::Gone => self.remove_viewer(key),
        }
    }

    /// Viewer `key`'s queue refused its frame. While the session goes on writing, the
    /// changes wait, coalesced, for the next tick; after [`PATIENCE_TICKS`] refusals in a row
    /// with nothing written, the viewer is behind.
    fn refused(&mut self, key: ViewerKey) {
        let Some(viewer) = self.viewers.get_mut(key) else {
            return;
        };
        let queued = viewer.outbound.queued_bytes();
        if queued < viewer.queued_seen {
            viewer.refusals_without_progress = 0;
        }
        viewer.queued_seen = queued;
        viewer.refusals_without_progress += 1;
        if viewer.refusals_without_progress >= PATIENCE_TICKS {
            self.fell_behind(key);
        } else {
            self.stats.frames_deferred.fetch_add(1, Ordering::Relaxed);
            self.dirty.insert(key);
        }
    }

    /// Viewer `key` is behind: its queue stayed full while nothing was written, or an alert
    /// found no room. Rather than queue more, its pending changes give way to one snapshot
    /// of its whole view (with its alerts), sent once it has room again.
    fn fell_behind(&mut self, key: ViewerKey) {
        let Some(viewer) = self.viewers.get_mut(key) else {
            return;
        };
        self.stats.frames_deferred.fetch_add(1, Ordering::Relaxed);
        if !viewer.needs_snapshot {
            self.stats.resync_snapshots.fetch_add(1, Ordering::Relaxed);
        }
        viewer.needs_snapshot = true;
        viewer.groups_owed = true;
        viewer.refusals_without_progress = 0;
        viewer.pending.clear();
        viewer.pending_groups.clear();
        self.dirty.insert(key);
    }

    /// One page of the device list. In the hub's own order the page is read off the ordered
    /// set; any other order selects the page from the matching devices in linear time (two
    /// partitions, then a sort of the page alone) rather than sorting the whole fleet.
    fn list(&self, query: &DeviceQuery) -> DevicePage {
        let needle = query.text.as_deref().map(str::to_lowercase);
        let alerting = (query.status == Some(DeviceStatus::Alerting)).then(|| self.alerting());
        let matches = |(group, id): &&(GroupPath, DeviceId)| {
            let in_scope = query
                .group
                .as_deref()
                .is_none_or(|scope| in_group(group, scope));
            let found = needle.as_ref().is_none_or(|needle| {
                id.to_lowercase().contains(needle) || group.to_lowercase().contains(needle)
            });
            in_scope && found
        };
        let in_status = |state: &DeviceState| match query.status {
            None => true,
            Some(DeviceStatus::Online) => state.online,
            Some(DeviceStatus::Offline) => !state.online,
            Some(DeviceStatus::Alerting) => alerting
                .as_ref()
                .is_some_and(|alerting| alerting.contains(&*state.id)),
        };
        let matching = self
            .order
            .iter()
            .filter(matches)
            .filter_map(|(_, id)| self.devices.state(id))
            .filter(|state| in_status(state));
        let (total, devices) = if query.sort == DeviceSort::Group && !query.descending {
            // Already in order: counted and paged in one pass, nothing collected but the page.
            let mut total = 0;
            let mut page = Vec::new();
            for (index, state) in matching.enumerate() {
                total += 1;
                if index >= query.offset && page.len() < query.limit {
                    page.push(state.clone());
                }
            }
            (total, page)
        } else {
            // Each device's sort key is read once, not at every comparison.
            let mut keyed: Vec<(SortKey, &DeviceState)> = matching
                .map(|state| (SortKey::of(state, &query.sort), state))
                .collect();
            let total = keyed.len();
            let compare = device_order(query.descending);
            let page = select_page(&mut keyed, query.offset, query.limit, compare);
            (
                total,
                page.iter().map(|(_, state)| (*state).clone()).collect(),
            )
        };
        DevicePage {
            total,
            offset: query.offset,
            limit: query.limit,
            devices,
        }
    }

    /// The devices that are the subject of an active alert.
    fn alerting(&self) -> HashSet<&str> {
        self.alerts
            .values()
            .filter(|alert| alert.state.is_active())
            .map(|alert| &*alert.subject)
            .collect()
    }
}

/// A device's key in a [`DeviceSort`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum SortKey<'a> {
    /// Sorting by group: the tie-break is the whole order.
    Group,
    Text(&'a str),
    Time(i64),
    Number(f64),
    /// The metric sorted by is absent.
    Missing,
}

impl<'a> SortKey<'a> {
    fn of(state: &'a DeviceState, sort: &DeviceSort) -> Self {
        match sort {
            DeviceSort::Group => SortKey::Group,
            DeviceSort::Id => SortKey::Text(&state.id),
            DeviceSort::LastSeen => SortKey::Time(state.ts),
            DeviceSort::Metric(name) => state
                .metrics
                .get(name.as_str())
                .map_or(SortKey::Missing, |value| SortKey::Number(value.as_f64())),
        }
    }
}

/// How two keyed devices compare: the key (reversed when `descending`), then group path and
/// id ascending, so the order is total and pages are stable. Devices without the metric
/// sorted by come last in either direction; sorting by group descending reverses it all.
fn device_order<'a>(
    descending: bool,
) -> impl Fn(&(SortKey<'a>, &'a DeviceState), &(SortKey<'a>, &'a DeviceState)) -> Order {
    let directed = move |order: Order| if descending { order.reverse() } else { order };
    move |(a_key, a), (b_key, b)| {
        let tie = || (&a.group, &a.id).cmp(&(&b.group, &b.id));
        let primary = match (a_key, b_key) {
            (SortKey::Group, _) => return directed(tie()),
            (SortKey::Text(x), SortKey::Text(y)) => directed(x.cmp(y)),
            (SortKey::Time(x), SortKey::Time(y)) => directed(x.cmp(y)),
            (SortKey::Number(x), SortKey::Number(y)) => directed(x.total_cmp(y)),
            (SortKey::Missing, SortKey::Missing) => Order::Equal,
            (SortKey::Missing, _) => Order::Greater,
            (_, SortKey::Missing) => Order::Less,
            // One sort gives every device the same kind of key.
            _ => Order::Equal,
        };
        primary.then_with(tie)
    }
}

/// The items at `offset..offset + limit` in `compare`'s order, sorted, without sorting the
/// rest: O(n + limit log limit).
fn select_page<T>(
    items: &mut [T],
    offset: usize,
    limit: usize,
    compare: impl Fn(&T, &T) -> Order,
) -> &[T] {
    if offset >= items.len() || limit == 0 {
        return &[];
    }
    if offset > 0 {
        items.select_nth_unstable_by(offset, &compare);
    }
    let tail = &mut items[offset..];
    let page = if tail.len() > limit {
        tail.select_nth_unstable_by(limit, &compare);
        &mut tail[..limit]
    } else {
        tail
    };
    page.sort_unstable_by(&compare);
    page
}

impl Hub {
    /// The whole group tree: every group that has an aggregate or holds a device, with every
    /// prefix of each path as an ancestor.
    fn group_tree(&self) -> Vec<GroupNode> {
        let mut paths: BTreeSet<GroupPath> = self.aggregates.keys().cloned().collect();
        let mut last_group: Option<&GroupPath> = None;
        for (group, _) in &self.order {
            if last_group != Some(group) {
                paths.insert(group.clone());
                last_group = Some(group);
            }
        }
        let with_ancestors: BTreeSet<GroupPath> = paths
            .iter()
            .flat_map(|path| group_prefixes(path))
            .map(GroupPath::from)
            .collect();
        let mut nodes: HashMap<GroupPath, GroupNode> = with_ancestors
            .iter()
            .map(|path| (path.clone(), self.group_node(path)))
            .collect();
        // Deepest first, so each node is complete when it joins its parent.
        let mut by_depth: Vec<&GroupPath> = with_ancestors.iter().collect();
        by_depth.sort_by_key(|path| std::cmp::Reverse(path.matches('/').count()));
        let mut roots = Vec::new();
        for path in by_depth {
            let Some(mut node) = nodes.remove(path) else {
                continue;
            };
            node.children.sort_by(|a, b| a.name.cmp(&b.name));
            match path.rsplit_once('/') {
                Some((parent, _)) => match nodes.get_mut(parent) {
                    Some(parent) => parent.children.push(node),
                    None => roots.push(node),
                },
                None => roots.push(node),
            }
        }
        roots.sort_by(|a, b| a.name.cmp(&b.name));
        roots
    }

    fn group_node(&self, path: &GroupPath) -> GroupNode {
        GroupNode {
            group: path.clone(),
            name: path.rsplit('/').next().unwrap_or(path).to_string(),
            aggregate: self.aggregates.get(path).cloned(),
            children: Vec::new(),
        }
    }
}

/// Adds viewer `id` to the index entries of `keys`.
fn index<'a, K>(
    index: &mut HashMap<K, HashSet<ViewerKey>>,
    id: ViewerKey,
    keys: impl IntoIterator<Item = &'a K>,
) where
    K: std::hash::Hash + Eq + Clone + 'a,
{
    for key in keys {
        index.entry(key.clone()).or_default().insert(id);
    }
}

/// Removes viewer `id` from the index entries of `keys`, dropping entries left empty.
fn unindex<'a, K>(
    index: &mut HashMap<K, HashSet<ViewerKey>>,
    id: ViewerKey,
    keys: impl IntoIterator<Item = &'a K>,
) where
    K: std::hash::Hash + Eq + 'a,
{
    for key in keys {
        if let Some(viewers) = index.get_mut(key) {
            viewers.remove(&id);
            if viewers.is_empty() {
                index.remove(key);
            }
        }
    }
}

fn aggregates_of<'a>(
    aggregates: &'a HashMap<GroupPath, GroupAggregate>,
    groups: impl Iterator<Item = &'a GroupPath>,
) -> Vec<&'a GroupAggregate> {
    groups.filter_map(|group| aggregates.get(group)).collect()
}

/// The open alerts in `viewer`'s scope, most severe first, then newest first.
fn alerts_in_scope<'a>(
    alerts: &'a HashMap<AlertId, Alert>,
    viewer: &Viewer,
    devices: &DeviceTable,
) -> Vec<&'a Alert> {
    let mut in_scope: Vec<&Alert> = alerts
        .values()
        .filter(|alert| {
            viewer.fleet
                || devices
                    .slot(&alert.subject)
                    .is_some_and(|slot| viewer.view.contains(slot))
                || viewer
                    .groups
                    .iter()
                    .any(|group| in_group(&alert.group, group))
        })
        .collect();
    in_scope.sort_by(|a, b| a.screen_order(b));
    in_scope
}

fn device_json(state: &DeviceState) -> Option<DeviceJson> {
    match serde_json::value::to_raw_value(state) {
        Ok(json) => Some(json.into()),
        Err(error) => {
            warn!(%error, device = %state.id, "device state not serializable");
            None
        }
    }
}

fn offer(outbound: &ViewerQueue, budget: usize, frame: &Frame) -> Offer {
    let permit = match outbound.frames.try_reserve() {
        Ok(permit) => permit,
        Err(mpsc::error::TrySendError::Full(())) => return Offer::Full,
        Err(mpsc::error::TrySendError::Closed(())) => return Offer::Gone,
    };
    // Checked before serializing, so a viewer over its budget costs no frame; then again with
    // the frame's size. The session only ever lowers the count meanwhile.
    let queued = outbound.queued_bytes();
    if queued > 0 && queued >= budget {
        return Offer::Full;
    }
    match serde_json::to_string(frame).map(exact_size) {
        Ok(text) if !fits(queued, text.len(), budget) => Offer::Full,
        Ok(text) => {
            // Raised before the frame is visible to the session, which lowers it after.
            if let Some(bytes) = &outbound.bytes {
                bytes.fetch_add(text.len(), Ordering::Relaxed);
            }
            permit.send(text);
            Offer::Queued
        }
        Err(error) => {
            warn!(%error, "frame not serializable");
            Offer::Queued
        }
    }
}

/// `text` in an allocation of its own length. serde_json grows its output by doubling, so a
/// frame fresh from it holds up to twice its length, a third more on average, while the
/// byte budget counts lengths; a frame may sit in a stalled viewer's queue until the stall
/// limit. With 1,000 stalled viewers, their queued frames held ~100 MiB of heap (heaptrack,
/// the fault bench's stalled viewers, 64 KiB budget); a copy costs far less than the
/// serialization that made the frame.
fn exact_size(text: String) -> String {
    if text.capacity() - text.len() > text.len() / 8 {
        text.as_str().to_owned()
    } else {
        text
    }
}

/// Whether a frame of `len` bytes may join a queue holding `queued` bytes: always into an
/// empty queue (a snapshot larger than the budget must still go out), otherwise within it.
fn fits(queued: usize, len: usize, budget: usize) -> bool {
    queued == 0 || queued.saturating_add(len) <= budget
}

#[cfg(test)]
mod tests {
    use iotmon_wire::viewer::ServerMessage;
    use iotmon_wire::{MetricValue, Metrics};

    use super::*;

    fn state(id: &str, t: f64) -> DeviceState {
        let mut metrics = Metrics::new();
        metrics.insert("t".into(), MetricValue::Number(t));
        DeviceState {
            id: id.into(),
            group: "hq".into(),
            ts: 1,
            metrics,
            online: true,
        }
    }

    /// A device in `group`.
    fn placed(id: &str, group: &str) -> DeviceState {
        let mut device = state(id, 1.0);
        device.group = group.into();
        device
    }

    fn frames(rx: &mut mpsc::Receiver<String>) -> Vec<ServerMessage> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|text| serde_json::from_str(&text).expect("valid frame"))
            .collect()
    }

    fn ids(devices: &[DeviceState]) -> Vec<&str> {
        let mut ids: Vec<&str> = devices.iter().map(|d| &*d.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_viewer_gets_a_snapshot_then_only_its_devices() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Devices(vec![state("a", 1.0), state("b", 1.0)]));
        let (tx, mut rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_view(1, ViewSpec::Devices(["a", "c"].into_iter().collect()));
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot {
                seq: 0,
                devices,
                total: None,
                ..
            }] => assert_eq!(ids(devices), ["a"]),
            other => panic!("expected one snapshot, got {other:?}"),
        }
        hub.apply(LiveUpdate::Devices(vec![
            state("a", 2.0),
            state("b", 2.0),
            state("c", 2.0),
        ]));
        hub.push_pending();
        match frames(&mut rx).as_slice() {
            [ServerMessage::Update {
                seq: 1, devices, ..
            }] => assert_eq!(ids(devices), ["a", "c"]),
            other => panic!("expected one update, got {other:?}"),
        }
        hub.push_pending();
        assert!(frames(&mut rx).is_empty(), "nothing changed, nothing sent");
    }

    #[test]
    fn a_viewer_that_falls_behind_gets_one_fresh_snapshot_when_it_catches_up() {
        let mut hub = Hub::new(Arc::default());
        let (tx, mut rx) = mpsc::channel(1);
        hub.join(1, tx);
        hub.set_view(1, ViewSpec::Devices(["a", "b"].into_iter().collect()));
        // The snapshot fills the queue of one and nobody reads it: the updates that follow
        // wait, and after PATIENCE_TICKS refusals the viewer is behind.
        for t in 1..=PATIENCE_TICKS {
            hub.apply(LiveUpdate::Devices(vec![state("a", f64::from(t))]));
            hub.push_pending();
        }
        hub.apply(LiveUpdate::Devices(vec![state("b", 9.0)]));
        hub.push_pending();
        assert_eq!(
            hub.stats.frames_deferred.load(Ordering::Relaxed),
            u64::from(PATIENCE_TICKS) + 1
        );
        assert_eq!(hub.stats.resync_snapshots.load(Ordering::Relaxed), 1);
        assert_eq!(hub.gauges().lagging_viewers, 1);
        assert_eq!(
            frames(&mut rx).len(),
            1,
            "only the first snapshot was queued"
        );
        hub.push_pending();
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot {
                seq: 1, devices, ..
            }] => {
                let a = devices
                    .iter()
                    .find(|d| &*d.id == "a")
                    .expect("a in snapshot");
                let last = f64::from(PATIENCE_TICKS);
                assert_eq!(a.metrics.get("t"), Some(&MetricValue::Number(last)));
                assert_eq!(ids(devices), ["a", "b"]);
            }
            other => panic!("expected one resynchronising snapshot, got {other:?}"),
        }
        assert_eq!(hub.gauges().lagging_viewers, 0);
    }

    #[test]
    fn a_group_view_is_a_page_of_the_group_and_its_subgroups() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Devices(vec![
            placed("d1", "hq"),
            placed("d2", "hq/a"),
            placed("d3", "hq/a/1"),
            placed("d4", "hq-annex"),
            placed("d5", "other"),
            placed("d6", "hq/b"),
        ]));
        assert_eq!(hub.group_page("hq", 0, 10).1, 4);
        let (page, total) = hub.group_page("hq", 1, 2);
        assert_eq!((page, total), (vec!["d2".into(), "d3".into()], 4));
        assert_eq!(
            hub.group_page("hq/a", 0, 10).0,
            vec![DeviceId::from("d2"), "d3".into()]
        );
        assert_eq!(hub.group_page("nowhere", 0, 10), (vec![], 0));

        let (tx, mut rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_view(
            1,
            ViewSpec::GroupPage {
                group: "hq".into(),
                offset: 2,
                limit: 5,
            },
        );
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot {
                devices,
                total: Some(4),
                ..
            }] => {
                assert_eq!(ids(devices), ["d3", "d6"]);
            }
            other => panic!("expected a group snapshot, got {other:?}"),
        }
    }

    #[test]
    fn waiting_for_alerts_ends_with_the_first_batch_even_an_empty_one() {
        let mut hub = Hub::new(Arc::default());
        let (reply, mut early) = oneshot::channel();
        hub.handle_command(HubCommand::AlertsReceived { reply });
        hub.apply(LiveUpdate::Devices(vec![state("a", 1.0)]));
        assert!(early.try_recv().is_err(), "device states are not alerts");
        hub.apply(LiveUpdate::Alerts(Vec::new()));
        assert_eq!(early.try_recv(), Ok(()));
        let (reply, mut late) = oneshot::channel();
        hub.handle_command(HubCommand::AlertsReceived { reply });
        assert_eq!(late.try_recv(), Ok(()), "answered at once once received");
    }

    #[test]
    fn changing_the_view_moves_the_index() {
        let mut hub = Hub::new(Arc::default());
        let (tx, _rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_view(1, ViewSpec::Devices(["a"].into_iter().collect()));
        hub.set_view(1, ViewSpec::Devices(["b"].into_iter().collect()));
        let key = hub.viewers.key(1).expect("joined");
        // Neither has reported: "a", no longer viewed, gave its slot up.
        assert_eq!(hub.devices.slot("a"), None);
        let b = hub.devices.slot("b").expect("viewed");
        assert!(hub.devices.get(b).watchers.contains(key));
        hub.leave(1);
        assert_eq!(hub.devices.slots_in_use(), 0);
    }

    #[test]
    fn lists_devices_in_group_order_with_search_and_paging() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Devices(vec![
            state("b", 1.0),
            state("a", 1.0),
            placed("z-1", "a-site"),
        ]));
        let page = hub.list(&DeviceQuery {
            offset: 0,
            limit: 2,
            text: None,
            group: None,
            ..DeviceQuery::default()
        });
        assert_eq!(page.total, 3);
        let listed: Vec<&str> = page.devices.iter().map(|d| &*d.id).collect();
        assert_eq!(listed, ["z-1", "a"]);
        let found = hub.list(&DeviceQuery {
            offset: 0,
            limit: 10,
            text: Some("Z-".into()),
            group: None,
            ..DeviceQuery::default()
        });
        assert_eq!(found.total, 1);
    }

    fn aggregate(group: &str, online: u64) -> GroupAggregate {
        GroupAggregate {
            group: group.into(),
            ts: 1,
            devices: iotmon_wire::DeviceCounts {
                online,
                offline: 0,
                alerting: 0,
            },
            metrics: Default::default(),
        }
    }

    fn alert(id: AlertId, subject: &str, group: &str, seq: u64) -> Alert {
        Alert {
            id,
            rule: "hot".into(),
            subject: subject.into(),
            group: group.into(),
            severity: iotmon_wire::Severity::Major,
            state: iotmon_wire::AlertState::ActiveUnacknowledged,
            message: "t 31 above 30".into(),
            value: Some(31.0),
            reading_ts: None,
            raised_at: 1,
            changed_at: 1,
            acknowledged_by: None,
            acknowledged_at: None,
            shelved_until: None,
            shelved_by: None,
            suppressed_by: None,
            seq,
        }
    }

    #[test]
    fn alerts_go_at_once_to_the_viewers_whose_view_or_groups_hold_them_and_no_one_else() {
        let mut hub = Hub::new(Arc::default());
        let (by_device, mut device_frames) = mpsc::channel(16);
        let (by_group, mut group_frames) = mpsc::channel(16);
        let (elsewhere, mut other_frames) = mpsc::channel(16);
        hub.join(1, by_device);
        hub.join(2, by_group);
        hub.join(3, elsewhere);
        hub.apply(LiveUpdate::Devices(vec![placed("d1", "hq/floor-1")]));
        hub.set_view(1, ViewSpec::Devices(["d1"].into_iter().collect()));
        hub.set_groups(2, vec!["hq".into()]);
        hub.set_groups(3, vec!["plant".into()]);
        for frames in [&mut device_frames, &mut group_frames, &mut other_frames] {
            frames.try_recv().expect("the snapshot of the view");
        }
        hub.apply(LiveUpdate::Alerts(vec![alert(1, "d1", "hq/floor-1", 1)]));
        // No tick: the alert frames are queued already.
        for frames in [&mut device_frames, &mut group_frames] {
            let frame = frames.try_recv().expect("an alert frame at once");
            let message: ServerMessage = serde_json::from_str(&frame).expect("a message");
            assert!(matches!(message, ServerMessage::Alert { alert } if alert.id == 1));
        }
        assert!(other_frames.try_recv().is_err(), "out of scope: nothing");
        // An older copy (a resend) changes nothing; a new viewer's snapshot carries it.
        hub.apply(LiveUpdate::Alerts(vec![alert(1, "d1", "hq/floor-1", 0)]));
        assert!(device_frames.try_recv().is_err());
        hub.set_groups(3, vec!["hq/floor-1".into()]);
        let snapshot: ServerMessage =
            serde_json::from_str(&other_frames.try_recv().expect("snapshot")).expect("message");
        assert!(matches!(snapshot, ServerMessage::Snapshot { alerts, .. } if alerts.len() == 1));
        // A closed alert goes out once more and is forgotten.
        let mut closed = alert(1, "d1", "hq/floor-1", 2);
        closed.state = iotmon_wire::AlertState::Closed;
        hub.apply(LiveUpdate::Alerts(vec![closed]));
        assert!(device_frames.try_recv().is_ok());
        assert!(hub.alerts.is_empty());
    }

    #[test]
    fn frames_read_back_as_server_messages() {
        let devices = [state("a", 1.5), placed("b", "hq/floor-1")];
        let jsons: Vec<DeviceJson> = devices
            .iter()
            .map(|device| device_json(device).expect("serializable"))
            .collect();
        let groups = [aggregate("hq", 3)];
        let alerts = [alert(7, "a", "hq", 1)];
        let cases = [
            (
                Frame::Snapshot {
                    seq: 4,
                    devices: jsons.clone(),
                    groups: groups.iter().collect(),
                    total: Some(12),
                    alerts: alerts.iter().collect(),
                },
                ServerMessage::Snapshot {
                    seq: 4,
                    devices: devices.to_vec(),
                    groups: groups.to_vec(),
                    total: Some(12),
                    alerts: alerts.to_vec(),
                },
            ),
            (
                Frame::Snapshot {
                    seq: 0,
                    devices: Vec::new(),
                    groups: Vec::new(),
                    total: None,
                    alerts: Vec::new(),
                },
                ServerMessage::Snapshot {
                    seq: 0,
                    devices: Vec::new(),
                    groups: Vec::new(),
                    total: None,
                    alerts: Vec::new(),
                },
            ),
            (
                Frame::Alert { alert: &alerts[0] },
                ServerMessage::Alert {
                    alert: alerts[0].clone(),
                },
            ),
            (
                Frame::Update {
                    seq: 5,
                    devices: jsons,
                    groups: Vec::new(),
                },
                ServerMessage::Update {
                    seq: 5,
                    devices: devices.to_vec(),
                    groups: Vec::new(),
                },
            ),
        ];
        for (frame, message) in cases {
            let sent = serde_json::to_string(&frame).expect("frame");
            assert_eq!(
                sent,
                serde_json::to_string(&message).expect("message"),
                "a frame is byte for byte the message it stands for"
            );
            let read: ServerMessage = serde_json::from_str(&sent).expect("reads back");
            assert_eq!(read, message);
        }
    }

    #[test]
    fn a_viewer_gets_only_the_aggregates_it_subscribed_to() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Aggregates(vec![
            aggregate("hq", 1),
            aggregate("plant", 1),
        ]));
        let (tx, mut rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_groups(1, vec!["hq".into(), "hq/a".into()]);
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot { groups, .. }] => {
                assert_eq!(groups.len(), 1);
                assert_eq!(&*groups[0].group, "hq");
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
        hub.apply(LiveUpdate::Aggregates(vec![
            aggregate("hq", 2),
            aggregate("hq/a", 5),
            aggregate("plant", 9),
        ]));
        hub.push_pending();
        match frames(&mut rx).as_slice() {
            [ServerMessage::Update {
                devices, groups, ..
            }] => {
                assert!(devices.is_empty());
                let mut seen: Vec<(&str, u64)> = groups
                    .iter()
                    .map(|g| (&*g.group, g.devices.online))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, [("hq", 2), ("hq/a", 5)]);
            }
            other => panic!("expected an update, got {other:?}"),
        }
        hub.leave(1);
        assert!(hub.group_watchers.is_empty());
    }

    #[test]
    fn the_group_tree_nests_every_level() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Devices(vec![placed("d1", "site/b/floor-1")]));
        hub.apply(LiveUpdate::Aggregates(vec![
            aggregate("site", 3),
            aggregate("site/a", 2),
        ]));
        let tree = hub.group_tree();
        assert_eq!(tree.len(), 1);
        let site = &tree[0];
        assert_eq!((&*site.group, site.name.as_str()), ("site", "site"));
        assert_eq!(site.aggregate.as_ref().map(|a| a.devices.online), Some(3));
        let children: Vec<&str> = site.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(children, ["a", "b"]);
        let floor = &site.children[1].children[0];
        assert_eq!(
            (&*floor.group, floor.name.as_str()),
            ("site/b/floor-1", "floor-1")
        );
        assert!(floor.aggregate.is_none());
    }

    #[test]
    fn device_lists_can_be_scoped_to_a_group() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Devices(vec![
            placed("d1", "hq/a"),
            placed("d2", "hq-b"),
            placed("d3", "hq"),
        ]));
        let page = hub.list(&DeviceQuery {
            offset: 0,
            limit: 10,
            text: None,
            group: Some("hq".into()),
            ..DeviceQuery::default()
        });
        let listed: Vec<&str> = page.devices.iter().map(|d| &*d.id).collect();
        assert_eq!((page.total, listed), (2, vec!["d3", "d1"]));
    }

    #[test]
    fn a_fleet_subscriber_gets_every_group_and_every_alert_in_bounded_updates() {
        let mut hub = Hub::new(Arc::default());
        let many: Vec<GroupAggregate> = (0..MAX_GROUPS_PER_UPDATE + 20)
            .map(|n| aggregate(&format!("site-{n}"), 1))
            .collect();
        hub.apply(LiveUpdate::Aggregates(many.clone()));
        let (tx, mut rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_groups(1, vec![FLEET.into()]);
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot { groups, .. }] => assert_eq!(groups.len(), many.len()),
            other => panic!("expected a snapshot of every group, got {other:?}"),
        }
        assert_eq!(hub.gauges().fleet_viewers, 1);
        assert_eq!(hub.gauges().viewed_groups, many.len());
        // Every group changes: one tick carries at most a frame's worth, the next the rest.
        let changed: Vec<GroupAggregate> = many.iter().map(|a| aggregate(&a.group, 2)).collect();
        hub.apply(LiveUpdate::Aggregates(changed));
        let mut seen = HashSet::new();
        for expected in [MAX_GROUPS_PER_UPDATE, 20] {
            hub.push_pending();
            match frames(&mut rx).as_slice() {
                [ServerMessage::Update { groups, .. }] => {
                    assert_eq!(groups.len(), expected);
                    assert!(groups.iter().all(|g| g.devices.online == 2));
                    seen.extend(groups.iter().map(|g| g.group.clone()));
                }
                other => panic!("expected one update, got {other:?}"),
            }
        }
        assert_eq!(seen.len(), many.len(), "every group went out once");
        hub.push_pending();
        assert!(frames(&mut rx).is_empty(), "nothing left");
        // A view change is answered without the thousands of aggregates the viewer has.
        hub.set_view(1, ViewSpec::Devices(["d1"].into_iter().collect()));
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot { groups, .. }] => assert!(groups.is_empty()),
            other => panic!("expected a snapshot without groups, got {other:?}"),
        }
        // A viewer that fell behind is owed them all again.
        hub.fell_behind(hub.viewers.key(1).expect("joined"));
        hub.push_pending();
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot { groups, .. }] => assert_eq!(groups.len(), many.len()),
            other => panic!("expected a full snapshot, got {other:?}"),
        }
        // Alerts anywhere are in a fleet subscriber's scope.
        hub.apply(LiveUpdate::Alerts(vec![alert(4, "d9", "far/away", 1)]));
        assert!(matches!(
            frames(&mut rx).as_slice(),
            [ServerMessage::Alert { alert }] if alert.id == 4
        ));
        // Back to a plain subscription: the fleet's traffic stops.
        hub.set_groups(1, vec!["site-1".into()]);
        frames(&mut rx);
        hub.apply(LiveUpdate::Aggregates(vec![aggregate("site-2", 3)]));
        hub.push_pending();
        assert!(frames(&mut rx).is_empty());
        assert_eq!(hub.gauges().fleet_viewers, 0);
        hub.set_groups(1, vec![FLEET.into()]);
        hub.leave(1);
        assert!(hub.fleet_watchers.is_empty());
    }

    fn reading(id: &str, group: &str, ts: i64, t: Option<f64>, online: bool) -> DeviceState {
        let mut device = placed(id, group);
        device.ts = ts;
        device.online = online;
        device.metrics.clear();
        if let Some(t) = t {
            device.metrics.insert("t".into(), MetricValue::Number(t));
        }
        device
    }

    fn listed(hub: &Hub, query: DeviceQuery) -> (usize, Vec<String>) {
        let page = hub.list(&query);
        let ids = page.devices.iter().map(|d| d.id.to_string()).collect();
        (page.total, ids)
    }

    #[test]
    fn device_lists_sort_by_a_key_and_filter_by_state_in_stable_pages() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Devices(vec![
            reading("e", "hq/a", 50, Some(3.0), true),
            reading("b", "hq/b", 10, Some(9.0), false),
            reading("d", "hq/a", 40, None, true),
            reading("a", "hq/b", 30, Some(1.0), true),
            reading("c", "hq/a", 20, Some(3.0), false),
        ]));
        hub.apply(LiveUpdate::Alerts(vec![alert(1, "a", "hq/b", 1)]));
        let query = |sort: DeviceSort, descending: bool, offset: usize, limit: usize| DeviceQuery {
            offset,
            limit,
            sort,
            descending,
            ..DeviceQuery::default()
        };
        let by_metric = DeviceSort::Metric("t".into());
        // Equal values break ties by group then id; no value comes last either way.
        assert_eq!(
            listed(&hub, query(by_metric.clone(), false, 0, 10)),
            (5, ["a", "c", "e", "b", "d"].map(String::from).to_vec())
        );
        assert_eq!(
            listed(&hub, query(by_metric.clone(), true, 0, 10)).1,
            ["b", "c", "e", "a", "d"]
        );
        // Pages of a sorted list put together are the whole list.
        let pages: Vec<String> = (0..3)
            .flat_map(|page| listed(&hub, query(DeviceSort::LastSeen, true, page * 2, 2)).1)
            .collect();
        assert_eq!(pages, ["e", "d", "a", "c", "b"]);
        assert_eq!(
            listed(&hub, query(DeviceSort::Id, false, 3, 10)).1,
            ["d", "e"]
        );
        assert_eq!(
            listed(&hub, query(DeviceSort::Id, false, 9, 10)),
            (5, vec![])
        );
        assert_eq!(
            listed(&hub, query(DeviceSort::Group, true, 0, 2)).1,
            ["b", "a"]
        );
        let with_status = |status| DeviceQuery {
            limit: 10,
            status: Some(status),
            ..DeviceQuery::default()
        };
        assert_eq!(
            listed(&hub, with_status(DeviceStatus::Offline)),
            (2, vec!["c".into(), "b".into()])
        );
        assert_eq!(listed(&hub, with_status(DeviceStatus::Online)).0, 3);
        assert_eq!(
            listed(&hub, with_status(DeviceStatus::Alerting)),
            (1, vec!["a".into()])
        );
        // A cleared alert is no longer alerting.
        let mut cleared = alert(1, "a", "hq/b", 2);
        cleared.state = iotmon_wire::AlertState::ClearedUnacknowledged;
        hub.apply(LiveUpdate::Alerts(vec![cleared]));
        assert_eq!(listed(&hub, with_status(DeviceStatus::Alerting)).0, 0);
    }

    /// A session that stops writing: the hub raises the viewer's queued bytes as it queues
    /// frames, and nobody lowers them.
    fn stalled_viewer(
        hub: &mut Hub,
        devices: &[String],
    ) -> (mpsc::Receiver<String>, Arc<AtomicUsize>) {
        let (frames, rx) = mpsc::channel(16);
        let bytes = Arc::new(AtomicUsize::new(0));
        let queue = ViewerQueue {
            frames,
            bytes: Some(bytes.clone()),
        };
        hub.join(1, queue);
        hub.set_view(1, ViewSpec::Devices(devices.iter().collect()));
        (rx, bytes)
    }

    #[test]
    fn a_stalled_viewer_holds_at_most_its_byte_budget_then_is_resynced() {
        const BUDGET: usize = 2_000;
        let mut hub = Hub::new(Arc::default()).with_queue_bytes(BUDGET);
        let devices: Vec<String> = (0..40).map(|n| format!("device-{n:03}")).collect();
        hub.apply(LiveUpdate::Devices(
            devices.iter().map(|d| state(d, 0.0)).collect(),
        ));
        let (mut rx, bytes) = stalled_viewer(&mut hub, &devices);
        // The snapshot of the view is larger than the budget: it still goes, alone.
        let snapshot = bytes.load(Ordering::Relaxed);
        assert!(
            snapshot > BUDGET,
            "the snapshot ({snapshot} B) must exceed the budget"
        );
        for round in 1..=20 {
            hub.apply(LiveUpdate::Devices(
                devices.iter().map(|d| state(d, f64::from(round))).collect(),
            ));
            hub.push_pending();
            let queued = bytes.load(Ordering::Relaxed);
            assert!(
                queued <= snapshot.max(BUDGET),
                "round {round}: {queued} B queued"
            );
        }
        let gauges = hub.gauges();
        assert_eq!(
            gauges.lagging_viewers, 1,
            "held back by bytes, owed a snapshot"
        );
        assert!(
            gauges.queued_frames < 16,
            "the frame bound was not what held it"
        );
        assert_eq!(gauges.max_queued_bytes, bytes.load(Ordering::Relaxed));
        assert!(
            hub.viewers.iter().all(|v| v.pending.is_empty()),
            "a viewer owed a snapshot holds no changes"
        );
        // The session writes what it holds and gives the bytes back: a snapshot follows.
        let held = frames(&mut rx);
        assert_eq!(held.len(), 1, "nothing but the first snapshot was queued");
        bytes.store(0, Ordering::Relaxed);
        hub.push_pending();
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot { devices, .. }] => {
                assert_eq!(devices.len(), 40);
                assert!(devices
                    .iter()
                    .all(|d| d.metrics["t"] == MetricValue::Number(20.0)));
            }
            other => panic!("expected a resynchronising snapshot, got {other:?}"),
        }
        assert_eq!(hub.gauges().lagging_viewers, 0);
    }

    #[test]
    fn a_device_list_gives_back_each_id_in_order() {
        let ids = ["d1", "", "é-2", "d1"];
        let list: DeviceList = ids.into_iter().collect();
        assert_eq!(list.len(), 4);
        assert_eq!(list.iter().collect::<Vec<_>>(), ids);
        assert!(DeviceList::default().is_empty());
        assert_eq!(DeviceList::default().iter().count(), 0);
    }

    #[test]
    fn a_device_viewed_before_it_reports_keeps_its_slot_once_it_does() {
        let mut hub = Hub::new(Arc::default());
        let (tx, mut rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_view(1, ViewSpec::Devices(["later"].into_iter().collect()));
        let slot = hub.devices.slot("later").expect("a slot while viewed");
        hub.apply(LiveUpdate::Devices(vec![state("later", 1.0)]));
        hub.push_pending();
        assert_eq!(hub.devices.slot("later"), Some(slot));
        hub.leave(1);
        assert_eq!(
            hub.devices.slot("later"),
            Some(slot),
            "a device that reported is never forgotten"
        );
        let updates = frames(&mut rx);
        assert!(matches!(
            updates.as_slice(),
            [ServerMessage::Snapshot { .. }, ServerMessage::Update { devices, .. }] if devices.len() == 1
        ));
        assert_eq!(hub.stats.devices.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_viewer_that_leaves_is_gone_from_every_watcher_list_and_the_others_stay() {
        let mut hub = Hub::new(Arc::default());
        let fleet: Vec<String> = (0..50).map(|n| format!("d{n}")).collect();
        hub.apply(LiveUpdate::Devices(
            fleet.iter().map(|d| state(d, 0.0)).collect(),
        ));
        let view = || ViewSpec::Devices(fleet.iter().collect());
        let mut queues = Vec::new();
        for id in 1..=3 {
            let (tx, rx) = mpsc::channel(64);
            hub.join(id, tx);
            hub.set_view(id, view());
            hub.set_groups(id, vec!["hq".into()]);
            queues.push(rx);
        }
        let leaving = hub.viewers.key(2).expect("joined");
        hub.leave(2);
        for d in &fleet {
            let watchers = &hub
                .devices
                .get(hub.devices.slot(d).expect("known"))
                .watchers;
            assert!(!watchers.contains(leaving), "{d} still lists the viewer");
            assert_eq!(watchers.iter().count(), 2, "{d}");
        }
        assert!(hub.group_watchers["hq"].iter().all(|&key| key != leaving));
        assert!(!hub.dirty.contains(&leaving));
        // The key goes to the next viewer, which gets nothing of the old viewer's view.
        let (tx, mut rx) = mpsc::channel(64);
        hub.join(4, tx);
        assert_eq!(hub.viewers.key(4), Some(leaving));
        hub.apply(LiveUpdate::Devices(
            fleet.iter().map(|d| state(d, 1.0)).collect(),
        ));
        hub.push_pending();
        assert!(frames(&mut rx).is_empty(), "not the old viewer's devices");
        for queue in &mut queues[..] {
            let _ = frames(queue);
        }
        hub.set_view(4, ViewSpec::Devices(["d7"].into_iter().collect()));
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot { devices, .. }] => assert_eq!(ids(devices), ["d7"]),
            other => panic!("expected a snapshot of its own view, got {other:?}"),
        }
        assert_eq!(hub.stats.viewers.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_session_id_joined_again_starts_afresh() {
        let mut hub = Hub::new(Arc::default());
        let (tx, _rx) = mpsc::channel(8);
        hub.join(1, tx.clone());
        hub.set_view(1, ViewSpec::Devices(["a"].into_iter().collect()));
        hub.join(1, tx);
        assert_eq!(hub.devices.slot("a"), None, "the first view was let go");
        assert_eq!(hub.viewers.len(), 1);
    }

    #[test]
    fn a_viewer_gets_each_changed_device_once_with_its_latest_state() {
        let mut hub = Hub::new(Arc::default());
        hub.apply(LiveUpdate::Devices(vec![state("a", 0.0), state("b", 0.0)]));
        let (tx, mut rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_view(1, ViewSpec::Devices(["b", "a"].into_iter().collect()));
        let _ = frames(&mut rx);
        for t in 1..=3 {
            hub.apply(LiveUpdate::Devices(vec![state("a", f64::from(t))]));
        }
        hub.push_pending();
        match frames(&mut rx).as_slice() {
            [ServerMessage::Update { devices, .. }] => {
                assert_eq!(ids(devices), ["a"]);
                assert_eq!(devices[0].metrics["t"], MetricValue::Number(3.0));
            }
            other => panic!("expected one update, got {other:?}"),
        }
    }

    /// `n` device ids that partition `partition` of 2 owns.
    fn owned_by(partition: u32, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("device-{i}"))
            .filter(|id| iotmon_wire::partition::partition_of(id, 2) == partition)
            .take(n)
            .collect()
    }

    #[test]
    fn a_gone_partitions_devices_go_offline_with_their_last_values_until_they_report_again() {
        let stats = Arc::new(HubStats::default());
        let mut hub = Hub::new(stats.clone());
        let ours = owned_by(0, 1).remove(0);
        let [theirs, unseen] = <[String; 2]>::try_from(owned_by(1, 2)).expect("two ids");
        let mut last = state(&theirs, 7.0);
        last.ts = 42;
        hub.apply(LiveUpdate::Devices(vec![
            state(&ours, 1.0),
            last.clone(),
            state(&unseen, 1.0),
        ]));
        let (tx, mut rx) = mpsc::channel(8);
        hub.join(1, tx);
        hub.set_view(
            1,
            ViewSpec::Devices([ours.as_str(), theirs.as_str()].into_iter().collect()),
        );
        frames(&mut rx);
        // A fleet in one partition: no other bridge outlives its own.
        hub.apply(LiveUpdate::PartitionGone(Partition::WHOLE));
        hub.push_pending();
        assert!(frames(&mut rx).is_empty(), "one-bridge mode is unchanged");

        let partition_1 = Partition::new(1, 2).expect("valid");
        hub.apply(LiveUpdate::PartitionGone(partition_1));
        hub.push_pending();
        let offline = DeviceState {
            online: false,
            ..last
        };
        match frames(&mut rx).as_slice() {
            [ServerMessage::Update { devices, .. }] => assert_eq!(devices, &[offline]),
            other => panic!("expected an update with {theirs} offline, got {other:?}"),
        }
        let offline_listed = DeviceQuery {
            limit: 10,
            status: Some(DeviceStatus::Offline),
            ..DeviceQuery::default()
        };
        let (total, mut offline_ids) = listed(&hub, offline_listed.clone());
        offline_ids.sort_unstable();
        assert_eq!((total, offline_ids), (2, vec![theirs.clone(), unseen]));
        assert_eq!(stats.devices_marked_offline.load(Ordering::Relaxed), 2);
        // Said again, it finds nothing online to mark.
        hub.apply(LiveUpdate::PartitionGone(partition_1));
        hub.push_pending();
        assert!(frames(&mut rx).is_empty());

        // Its new bridge sends the device's next state: online again, the ordinary way.
        hub.apply(LiveUpdate::Devices(vec![state(&theirs, 8.0)]));
        hub.push_pending();
        match frames(&mut rx).as_slice() {
            [ServerMessage::Update { devices, .. }] => {
                assert!(devices[0].online && devices[0].metrics["t"] == MetricValue::Number(8.0));
            }
            other => panic!("expected an update with {theirs} online, got {other:?}"),
        }
        assert_eq!(listed(&hub, offline_listed).0, 1);
        let mut registry = iotmon_wire::metrics::Registry::default();
        registry.register_collector(Box::new(stats));
        let metrics = iotmon_wire::metrics::render(&[&registry]);
        assert!(
            metrics.contains("iotmon_dashboard_devices_marked_offline_total 2"),
            "{metrics}"
        );
    }

    #[test]
    fn a_viewer_that_reads_slower_than_it_is_sent_waits_for_room_and_is_never_resynced() {
        const BUDGET: usize = 2_000;
        const ROUNDS: u32 = 30;
        let mut hub = Hub::new(Arc::default()).with_queue_bytes(BUDGET);
        let devices: Vec<String> = (0..40).map(|n| format!("device-{n:03}")).collect();
        hub.apply(LiveUpdate::Devices(
            devices.iter().map(|d| state(d, 0.0)).collect(),
        ));
        let (mut rx, bytes) = stalled_viewer(&mut hub, &devices);
        assert!(
            bytes.load(Ordering::Relaxed) > BUDGET,
            "frames exceed the budget"
        );
        // Every device changes every tick; the session writes 1,500 B a tick, so each frame
        // takes it several ticks and the queue refuses the next one meanwhile.
        let mut received = Vec::new();
        for round in 1..=ROUNDS {
            hub.apply(LiveUpdate::Devices(
                devices.iter().map(|d| state(d, f64::from(round))).collect(),
            ));
            hub.push_pending();
            received.extend(frames(&mut rx));
            let queued = bytes.load(Ordering::Relaxed);
            bytes.store(queued.saturating_sub(1_500), Ordering::Relaxed);
        }
        bytes.store(0, Ordering::Relaxed);
        hub.push_pending();
        received.extend(frames(&mut rx));
        assert_eq!(hub.stats.resync_snapshots.load(Ordering::Relaxed), 0);
        assert!(
            received.len() > 3,
            "updates went out as room came: {} frames",
            received.len()
        );
        let mut latest = HashMap::new();
        for frame in &received {
            match frame {
                ServerMessage::Snapshot { devices, .. } | ServerMessage::Update { devices, .. } => {
                    for device in devices {
                        latest.insert(device.id.clone(), device.metrics["t"]);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(latest.len(), devices.len());
        assert!(
            latest
                .values()
                .all(|t| *t == MetricValue::Number(f64::from(ROUNDS))),
            "every device's last change arrived: {latest:?}"
        );
    }

    #[test]
    fn an_alert_goes_at_once_past_the_byte_budget() {
        const BUDGET: usize = 100;
        let mut hub = Hub::new(Arc::default()).with_queue_bytes(BUDGET);
        let devices = vec!["a".to_string()];
        hub.apply(LiveUpdate::Devices(vec![state("a", 1.0)]));
        let (mut rx, bytes) = stalled_viewer(&mut hub, &devices);
        assert!(bytes.load(Ordering::Relaxed) > BUDGET);
        hub.apply(LiveUpdate::Alerts(vec![alert(7, "a", "hq", 1)]));
        match frames(&mut rx).as_slice() {
            [ServerMessage::Snapshot { .. }, ServerMessage::Alert { alert }] => {
                assert_eq!(alert.id, 7);
            }
            other => panic!("expected the snapshot then the alert, got {other:?}"),
        }
        assert_eq!(hub.stats.resync_snapshots.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_frame_is_kept_in_an_allocation_of_its_own_length() {
        // 300 devices make a frame of ~22 KB: serde's doubling leaves a 32 KiB buffer.
        let jsons: Vec<DeviceJson> = (0..300)
            .filter_map(|n| device_json(&state(&format!("device-{n}"), f64::from(n))))
            .collect();
        let frame = Frame::Update {
            seq: 1,
            devices: jsons,
            groups: Vec::new(),
        };
        let (tx, mut rx) = mpsc::channel(1);
        let queue = ViewerQueue::from(tx);
        assert!(matches!(offer(&queue, usize::MAX, &frame), Offer::Queued));
        let text = rx.try_recv().expect("a queued frame");
        assert!(text.len() > 20_000, "a frame of {} bytes", text.len());
        assert_eq!(text.capacity(), text.len());
    }

    #[test]
    fn small_frames_queue_within_the_budget() {
        assert!(fits(0, 10_000, 100), "an empty queue takes any frame");
        assert!(fits(60, 40, 100));
        assert!(!fits(60, 41, 100));
    }

    #[test]
    fn a_page_is_selected_without_sorting_the_rest() {
        let mut items: Vec<u32> = (0..100).rev().collect();
        assert_eq!(
            select_page(&mut items, 10, 5, u32::cmp),
            [10, 11, 12, 13, 14]
        );
        assert_eq!(select_page(&mut items, 97, 5, u32::cmp), [97, 98, 99]);
        assert!(select_page(&mut items, 100, 5, u32::cmp).is_empty());
        assert_eq!(select_page(&mut items, 0, 2, u32::cmp), [0, 1]);
    }
}
