//! The bridge's counters, shared with whatever exports them (`/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use iotmon_wire::metrics::{write_metric, Kind, MetricsSource};

use crate::ingest::RejectReason;

/// Monotonic counters, updated by the bridge and read by exporters.
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
}

impl BridgeCounters {
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }
}

impl MetricsSource for BridgeCounters {
    fn render_prometheus(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        write_metric(
            out,
            "iotmon_ingest_messages_total",
            "Messages received on device topics.",
            Kind::Counter,
            &[("", load(&self.messages))],
        );
        write_metric(
            out,
            "iotmon_ingest_readings_total",
            "Device readings accepted.",
            Kind::Counter,
            &[("", load(&self.readings))],
        );
        let labels: Vec<String> = RejectReason::ALL
            .iter()
            .map(|reason| format!("reason=\"{}\"", reason.as_str()))
            .collect();
        let rejected: Vec<(&str, u64)> = RejectReason::ALL
            .iter()
            .zip(&labels)
            .map(|(reason, label)| (label.as_str(), self.rejected(*reason)))
            .collect();
        write_metric(
            out,
            "iotmon_ingest_rejected_total",
            "Device messages or batch elements refused, by reason.",
            Kind::Counter,
            &rejected,
        );
        write_metric(out, "iotmon_live_batches_deferred_total", "Live batches held back because the consumer was busy; their devices went out coalesced later.", Kind::Counter, &[("", load(&self.live_batches_deferred))]);
    }
}
