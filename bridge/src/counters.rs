//! The bridge's counters, shared with whatever exports them (`/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use iotmon_wire::metrics::{encode, encode_one, Collector, DescriptorEncoder, Kind};

use crate::ingest::RejectReason;

/// Monotonic counters (and a few gauges), updated by the bridge and read by exporters.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Messages received from the broker on device topics.
    pub messages: AtomicU64,
    /// Readings accepted.
    pub readings: AtomicU64,
    /// Refused messages or batch elements, one slot per [`RejectReason`].
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Live batches held back because the consumer was still busy with earlier ones; their
    /// devices go out, coalesced, in the next batch.
    pub live_batches_deferred: AtomicU64,
    /// Aggregate batches held back because the consumer was busy; the groups go out next window.
    pub aggregates_deferred: AtomicU64,
    /// Readings that came after their rollup window closed (window end + grace): left out of
    /// the rollups, still applied to the live state.
    pub late_readings: AtomicU64,
    /// Store batches dropped because the store's queue was full.
    pub store_batches_dropped: AtomicU64,
    /// Store transactions that failed (disk full, I/O error, ...): writes, whose batches are
    /// lost, and maintenance, counted in `store_maintenance_errors` too.
    pub store_errors: AtomicU64,
    /// Of the failed store transactions, cascade, export, retention and merge passes: nothing
    /// is lost, they are tried again.
    pub store_maintenance_errors: AtomicU64,
    /// Rollup rows (finest tier deltas) written to the store.
    pub store_rollup_rows: AtomicU64,
    /// Batches waiting in the store's queue (gauge).
    pub store_queued_batches: AtomicU64,
    /// How long the oldest batch of the store's latest transaction waited between being
    /// queued and being committed, milliseconds (gauge): how far the disk lags behind ingest.
    pub store_lag_ms: AtomicU64,
    /// Points written to InfluxDB.
    pub influx_points_written: AtomicU64,
    /// Failed InfluxDB writes (each retried later from the outbox).
    pub influx_write_errors: AtomicU64,
    /// Points dropped from the InfluxDB outbox because it reached its size bound.
    pub influx_points_dropped: AtomicU64,
    /// Bytes waiting in the InfluxDB outbox (gauge).
    pub influx_outbox_bytes: AtomicU64,
    /// Alerts raised (new alerts, not reactivations).
    pub alerts_raised: AtomicU64,
    /// Alert transitions of any kind (raised, cleared, acknowledged, shelved, ...).
    pub alert_transitions: AtomicU64,
    /// Open alerts (gauge).
    pub alerts_open: AtomicU64,
    /// Alert store writes that failed; their changes are kept and written again.
    pub alert_store_errors: AtomicU64,
    /// Times a shard's condition changes waited for the alert manager (its queue was full);
    /// they went at the next live tick.
    pub alert_events_deferred: AtomicU64,
    /// Alert transitions posted to the webhook.
    pub webhook_sent: AtomicU64,
    /// Webhook posts that failed (each retried with backoff).
    pub webhook_failures: AtomicU64,
    /// Transitions dropped because the webhook's queue or outbox was full.
    pub webhook_dropped: AtomicU64,
    /// Device messages skipped because their device is another partition's (a partitioned
    /// bridge reads the whole tree on brokers that cannot split it; see docs/scaling.md).
    pub other_partition_messages: AtomicU64,
    /// Partial aggregates received from the other partitions (by the bridge that evaluates
    /// group rules).
    pub peer_partials: AtomicU64,
    /// Partial aggregates refused: unreadable, invalid, or on a topic that does not match.
    pub peer_partials_rejected: AtomicU64,
    /// Other partitions' shares aged out unrefreshed (their bridge is gone).
    pub peer_partials_expired: AtomicU64,
    /// Dashboards' history questions answered over MQTT (partitioned bridges).
    pub history_requests: AtomicU64,
    /// History questions refused: unreadable, with a reply topic outside
    /// `iotmon/history/reply/`, asking beyond the REST API's limits, or while replies are
    /// backed up.
    pub history_requests_rejected: AtomicU64,
}

impl BridgeCounters {
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Every unlabelled counter with its metric name and help.
    fn plain(&self) -> [(&'static str, &'static str, Kind, &AtomicU64); 29] {
        use Kind::{Counter, Gauge};
        [
            ("iotmon_ingest_messages_total", "Messages received on device topics.", Counter, &self.messages),
            ("iotmon_ingest_readings_total", "Device readings accepted.", Counter, &self.readings),
            ("iotmon_live_batches_deferred_total", "Live batches held back because the consumer was busy; their devices went out coalesced later.", Counter, &self.live_batches_deferred),
            ("iotmon_aggregates_deferred_total", "Aggregate batches held back because the consumer was busy; their groups went out next window.", Counter, &self.aggregates_deferred),
            ("iotmon_rollup_late_readings_total", "Readings later than their rollup window plus grace, left out of the rollups.", Counter, &self.late_readings),
            ("iotmon_store_batches_dropped_total", "Store batches dropped because the store queue was full.", Counter, &self.store_batches_dropped),
            ("iotmon_store_errors_total", "Store transactions that failed (a failed write loses its batches).", Counter, &self.store_errors),
            ("iotmon_store_maintenance_errors_total", "Of the failed store transactions, cascade, export, retention and merge passes (nothing lost, retried).", Counter, &self.store_maintenance_errors),
            ("iotmon_store_rollup_rows_total", "Finest-tier rollup deltas written to the store.", Counter, &self.store_rollup_rows),
            ("iotmon_store_queued_batches", "Batches waiting in the store's queue.", Gauge, &self.store_queued_batches),
            ("iotmon_store_lag_milliseconds", "Queue-to-commit time of the oldest batch in the store's latest transaction.", Gauge, &self.store_lag_ms),
            ("iotmon_influx_points_written_total", "Points written to InfluxDB.", Counter, &self.influx_points_written),
            ("iotmon_influx_write_errors_total", "Failed InfluxDB writes (retried from the outbox).", Counter, &self.influx_write_errors),
            ("iotmon_influx_points_dropped_total", "Points dropped from the full InfluxDB outbox (oldest first).", Counter, &self.influx_points_dropped),
            ("iotmon_influx_outbox_bytes", "Bytes waiting in the InfluxDB outbox.", Gauge, &self.influx_outbox_bytes),
            ("iotmon_alerts_raised_total", "Alerts raised.", Counter, &self.alerts_raised),
            ("iotmon_alert_transitions_total", "Alert transitions (raised, cleared, acknowledged, shelved, ...).", Counter, &self.alert_transitions),
            ("iotmon_alerts_open", "Open alerts.", Gauge, &self.alerts_open),
            ("iotmon_alert_store_errors_total", "Alert store writes that failed (kept and written again).", Counter, &self.alert_store_errors),
            ("iotmon_alert_events_deferred_total", "Times condition changes waited for the alert manager's queue.", Counter, &self.alert_events_deferred),
            ("iotmon_webhook_sent_total", "Alert transitions posted to the webhook.", Counter, &self.webhook_sent),
            ("iotmon_webhook_failures_total", "Webhook posts that failed (retried with backoff).", Counter, &self.webhook_failures),
            ("iotmon_webhook_dropped_total", "Alert transitions dropped because the webhook's queue or outbox was full.", Counter, &self.webhook_dropped),
            ("iotmon_partition_skipped_messages_total", "Device messages skipped because another partition owns the device.", Counter, &self.other_partition_messages),
            ("iotmon_partition_peer_partials_total", "Partial aggregates received from other partitions.", Counter, &self.peer_partials),
            ("iotmon_partition_peer_partials_rejected_total", "Partial aggregates from other partitions refused as unreadable or invalid.", Counter, &self.peer_partials_rejected),
            ("iotmon_partition_peer_partials_expired_total", "Other partitions' shares of group aggregates aged out unrefreshed (their bridge is gone); their devices count offline until it is back.", Counter, &self.peer_partials_expired),
            ("iotmon_history_requests_total", "Dashboards' history questions answered over MQTT.", Counter, &self.history_requests),
            ("iotmon_history_requests_rejected_total", "History questions refused: unreadable, a bad reply topic, beyond the API's limits, or while replies are backed up.", Counter, &self.history_requests_rejected),
        ]
    }
}

impl Collector for BridgeCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, kind, counter) in self.plain() {
            encode_one(
                &mut encoder,
                name,
                help,
                kind,
                counter.load(Ordering::Relaxed),
            )?;
        }
        let rejected: Vec<(&str, u64)> = RejectReason::ALL
            .iter()
            .map(|reason| (reason.as_str(), self.rejected(*reason)))
            .collect();
        encode(
            &mut encoder,
            "iotmon_ingest_rejected_total",
            "Device messages or batch elements refused, by reason.",
            Kind::Counter,
            "reason",
            &rejected,
        )
    }
}
