//! What a fleet has done: counters shared by its tasks, a periodic progress line, and the
//! summary [`crate::run`] returns.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How often the progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Counters every device task updates; shared as one `Arc<Counters>`. Relaxed ordering: each
/// is an independent tally, read only for reporting.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    readings_published: AtomicU64,
    publish_errors: AtomicU64,
    connections_lost: AtomicU64,
    /// Devices connected right now (a gauge, for the progress line).
    connected: AtomicU64,
}

impl Counters {
    /// A reading was written to a broker connection.
    pub(crate) fn published(&self) {
        self.readings_published.fetch_add(1, Ordering::Relaxed);
    }

    /// A reading was dropped because its device's request queue was full.
    pub(crate) fn publish_failed(&self) {
        self.publish_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A device's connection was accepted by the broker.
    pub(crate) fn connected(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    /// A connected device is no longer: `lost` when the connection failed rather than being
    /// closed at shutdown.
    pub(crate) fn disconnected(&self, lost: bool) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if lost {
            self.connections_lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far, as a summary of `devices` devices over `elapsed`.
    pub(crate) fn summary(&self, devices: usize, elapsed: Duration) -> Summary {
        Summary {
            devices,
            readings_published: self.readings_published.load(Ordering::Relaxed),
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            connections_lost: self.connections_lost.load(Ordering::Relaxed),
            elapsed,
        }
    }

    fn connected_now(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }
}

/// What a fleet did, returned by [`crate::run`]; `Display` gives a one-line summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Devices in the fleet.
    pub devices: usize,
    /// Readings written to a broker connection (QoS 0: the broker does not acknowledge them).
    pub readings_published: u64,
    /// Readings dropped because a device's request queue was full, i.e. its broker was
    /// unreachable or too slow.
    pub publish_errors: u64,
    /// Established connections that failed (each one was then re-established with backoff).
    pub connections_lost: u64,
    /// From the start of the fleet until every device had disconnected.
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} devices published {} readings in {:.1} s ({:.1}/s); {} dropped, {} connections lost",
            self.devices,
            self.readings_published,
            self.elapsed.as_secs_f64(),
            per_second(self.readings_published, self.elapsed),
            self.publish_errors,
            self.connections_lost,
        )
    }
}

/// Logs the publish rate, drops and connected devices every [`PROGRESS_EVERY`] until shutdown.
pub(crate) async fn report_progress(
    counters: Arc<Counters>,
    devices: usize,
    shutdown: CancellationToken,
) {
    let mut ticks = interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = (Instant::now(), counters.summary(devices, Duration::ZERO));
    loop {
        let now = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            now = ticks.tick() => now,
        };
        let current = counters.summary(devices, Duration::ZERO);
        let published = current.readings_published - last.1.readings_published;
        info!(
            readings_per_second = per_second(published, now - last.0),
            publish_errors = current.publish_errors,
            connections_lost = current.connections_lost,
            connected = counters.connected_now(),
            devices,
            "simulated fleet progress"
        );
        last = (now, current);
    }
}

/// `count` per second over `elapsed`; 0 over no time at all.
fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_readings_drops_and_lost_connections() {
        let counters = Counters::default();
        counters.connected();
        counters.published();
        counters.published();
        counters.publish_failed();
        counters.disconnected(true);
        counters.connected();
        counters.disconnected(false);
        let summary = counters.summary(3, Duration::from_secs(2));
        assert_eq!(
            (
                summary.readings_published,
                summary.publish_errors,
                summary.connections_lost
            ),
            (2, 1, 1)
        );
        assert_eq!(counters.connected_now(), 0);
    }

    #[test]
    fn summary_reads_as_one_line() {
        let summary = Summary {
            devices: 30,
            readings_published: 210,
            publish_errors: 2,
            connections_lost: 1,
            elapsed: Duration::from_millis(1500),
        };
        assert_eq!(
            summary.to_string(),
            "30 devices published 210 readings in 1.5 s (140.0/s); 2 dropped, 1 connections lost"
        );
    }

    #[test]
    fn rate_over_no_time_is_zero() {
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
        assert_eq!(per_second(50, Duration::from_secs(10)), 5.0);
    }
}
