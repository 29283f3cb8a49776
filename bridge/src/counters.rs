//! The bridge's counters, shared with whatever exports them (`/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

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
