//! The broker's counters, shown on iotmon's own `/metrics`: connect outcomes counted by the
//! authentication handler, and the router's meters and alerts, polled once a second.
//!
//! rumqttd's own Prometheus exporter is never started: it installs a process-global
//! recorder and listens on a port of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::metrics::{encode, encode_one, Collector, DescriptorEncoder, Kind};
use rumqttd::alerts::AlertsLink;
use rumqttd::meters::MetersLink;
use rumqttd::{AlertKind, Meter};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the router is asked for its meters and alerts.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a connect was refused by iotmon's authentication handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The CONNECT carried no user name and password.
    NoCredentials,
    /// No such device in the credential registry.
    UnknownDevice,
    /// The device exists but the password does not match.
    WrongPassword,
    /// The MQTT client id is not the device id given as user name.
    ClientIdMismatch,
    /// Verification could not run (the process is shutting down).
    Unavailable,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::UnknownDevice => "unknown_device",
            Refusal::WrongPassword => "wrong_password",
            Refusal::ClientIdMismatch => "client_id_mismatch",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// Counters of the embedded broker. Shared with the auth handler and the meter poller.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Connects whose credentials were accepted.
    connects_accepted: AtomicU64,
    /// Connects refused, one counter per [`Refusal`].
    refused_no_credentials: AtomicU64,
    refused_unknown_device: AtomicU64,
    refused_wrong_password: AtomicU64,
    refused_client_id_mismatch: AtomicU64,
    refused_unavailable: AtomicU64,
    /// Credential checks answered from the cache of recent successes (no argon2 run).
    auth_cache_hits: AtomicU64,
    /// Connections registered in the router (devices and in-process links), as of the last
    /// router report.
    connections: AtomicU64,
    /// Publishes the router accepted from clients.
    publishes_in: AtomicU64,
    /// Publishes the router could not append (bad topic, no filter).
    publishes_failed: AtomicU64,
    /// Messages appended to subscription logs, summed over filters: what subscribers get.
    publishes_routed: AtomicU64,
    /// Times a slow subscriber's cursor was moved past messages it had not read.
    cursor_jumps: AtomicU64,
    /// Messages skipped that way.
    messages_skipped: AtomicU64,
    /// Times the router stopped taking publishes so a lossless subscriber (the bridge) could
    /// catch up instead of losing messages.
    publisher_pauses: AtomicU64,
    /// 1 while publishers are paused that way, as of the last router report.
    publishers_paused: AtomicU64,
    /// Sessions kept for disconnected clients (gauge).
    saved_sessions: AtomicU64,
    /// Saved sessions dropped for the limit or their expiry.
    sessions_dropped: AtomicU64,
    /// Filters' logs in the router, one per distinct filter subscribed to (gauge).
    filter_logs: AtomicU64,
}

impl BrokerMetrics {
    /// Counts a connect whose credentials were accepted.
    pub fn accepted(&self) {
        self.connects_accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused connect.
    pub fn refused(&self, why: Refusal) {
        let counter = match why {
            Refusal::NoCredentials => &self.refused_no_credentials,
            Refusal::UnknownDevice => &self.refused_unknown_device,
            Refusal::WrongPassword => &self.refused_wrong_password,
            Refusal::ClientIdMismatch => &self.refused_client_id_mismatch,
            Refusal::Unavailable => &self.refused_unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a credential check answered from the cache.
    pub fn cache_hit(&self) {
        self.auth_cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Connects refused for `why` so far.
    pub fn refused_count(&self, why: Refusal) -> u64 {
        match why {
            Refusal::NoCredentials => &self.refused_no_credentials,
            Refusal::UnknownDevice => &self.refused_unknown_device,
            Refusal::WrongPassword => &self.refused_wrong_password,
            Refusal::ClientIdMismatch => &self.refused_client_id_mismatch,
            Refusal::Unavailable => &self.refused_unavailable,
        }
        .load(Ordering::Relaxed)
    }

    /// Adds one router report.
    fn record_meter(&self, meter: &Meter) {
        match meter {
            Meter::Router(_, router) => {
                self.connections
                    .store(router.total_connections as u64, Ordering::Relaxed);
                // The router resets these after each report: they are deltas.
                self.publishes_in
                    .fetch_add(router.total_publishes as u64, Ordering::Relaxed);
                self.publishes_failed
                    .fetch_add(router.failed_publishes as u64, Ordering::Relaxed);
                self.publisher_pauses
                    .fetch_add(router.ingest_pauses as u64, Ordering::Relaxed);
                self.publishers_paused
                    .store(u64::from(router.ingest_paused), Ordering::Relaxed);
                self.saved_sessions
                    .store(router.saved_sessions as u64, Ordering::Relaxed);
                self.sessions_dropped
                    .fetch_add(router.sessions_dropped as u64, Ordering::Relaxed);
                self.filter_logs
                    .store(router.filter_logs as u64, Ordering::Relaxed);
            }
            Meter::Subscription(_, subscription) => {
                self.publishes_routed
                    .fetch_add(subscription.count as u64, Ordering::Relaxed);
            }
        }
    }

    fn record_alert(&self, kind: &AlertKind) {
        if let AlertKind::CursorJump { lost, .. } = kind {
            self.cursor_jumps.fetch_add(1, Ordering::Relaxed);
            self.messages_skipped
                .fetch_add(*lost as u64, Ordering::Relaxed);
        }
    }
}

impl Collector for BrokerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let refusals = [
            Refusal::NoCredentials,
            Refusal::UnknownDevice,
            Refusal::WrongPassword,
            Refusal::ClientIdMismatch,
            Refusal::Unavailable,
        ]
        .map(|why| (why.label(), self.refused_count(why)));
        encode_one(
            &mut encoder,
            "iotmon_broker_connects_accepted_total",
            "Device connects whose credentials were accepted (anonymous connects are not checked).",
            Kind::Counter,
            get(&self.connects_accepted),
        )?;
        encode(
            &mut encoder,
            "iotmon_broker_connects_refused_total",
            "Device connects refused with CONNACK 'bad user name or password', by reason.",
            Kind::Counter,
            "reason",
            &refusals,
        )?;
        let rows: [(&str, &str, Kind, &AtomicU64); 12] = [
            (
                "iotmon_broker_auth_cache_hits_total",
                "Credential checks answered from the cache of recent successes.",
                Kind::Counter,
                &self.auth_cache_hits,
            ),
            (
                "iotmon_broker_connections",
                "Connections registered in the router, as of its last report.",
                Kind::Gauge,
                &self.connections,
            ),
            (
                "iotmon_broker_publishes_received_total",
                "Publishes received by the router.",
                Kind::Counter,
                &self.publishes_in,
            ),
            (
                "iotmon_broker_publishes_failed_total",
                "Publishes the router could not store.",
                Kind::Counter,
                &self.publishes_failed,
            ),
            (
                "iotmon_broker_publishes_routed_total",
                "Messages appended to subscription logs, summed over filters.",
                Kind::Counter,
                &self.publishes_routed,
            ),
            (
                "iotmon_broker_cursor_jumps_total",
                "Times a slow subscriber skipped messages it had not read.",
                Kind::Counter,
                &self.cursor_jumps,
            ),
            (
                "iotmon_broker_messages_skipped_total",
                "Messages slow subscribers skipped.",
                Kind::Counter,
                &self.messages_skipped,
            ),
            (
                "iotmon_broker_publisher_pauses_total",
                "Times the broker stopped reading publishers so a lossless subscriber (the \
                 bridge) could catch up instead of skipping messages.",
                Kind::Counter,
                &self.publisher_pauses,
            ),
            (
                "iotmon_broker_saved_sessions",
                "Sessions kept for disconnected clients with a persistent session.",
                Kind::Gauge,
                &self.saved_sessions,
            ),
            (
                "iotmon_broker_sessions_dropped_total",
                "Saved sessions dropped: the oldest past broker.max_saved_sessions, or expired.",
                Kind::Counter,
                &self.sessions_dropped,
            ),
            (
                "iotmon_broker_filter_logs",
                "Filters' logs in the router: one per distinct filter that a connected client \
                 or a saved session subscribes to.",
                Kind::Gauge,
                &self.filter_logs,
            ),
            (
                "iotmon_broker_publishers_paused",
                "1 while publishers wait for a lossless subscriber to catch up.",
                Kind::Gauge,
                &self.publishers_paused,
            ),
        ];
        for (name, help, kind, counter) in rows {
            encode_one(&mut encoder, name, help, kind, get(counter))?;
        }
        Ok(())
    }
}

/// Asks the router for its meters and alerts every [`POLL_INTERVAL`] and adds them to
/// `metrics`, until `shutdown`. The router answers asynchronously, so each tick reads what
/// the previous request produced. The links' queues are bounded by rumqttd (100 reports);
/// a report that does not fit is dropped by the router, which only loses a second of
/// resolution in these counters.
pub async fn poll_router(
    meters: MetersLink,
    alerts: AlertsLink,
    metrics: Arc<BrokerMetrics>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        while let Ok(reports) = meters.recv() {
            reports.iter().for_each(|meter| metrics.record_meter(meter));
        }
        while let Ok(reports) = alerts.recv() {
            reports
                .iter()
                .for_each(|alert| metrics.record_alert(&alert.kind));
        }
        // The router's inbox is bounded; when it is full the request is skipped and the
        // next tick asks again, so a loaded router is never made to wait for metrics.
        if let Err(error) = meters.request() {
            debug!(%error, "broker router busy: meters not requested this tick");
        }
        if let Err(error) = alerts.request() {
            debug!(%error, "broker router busy: alerts not requested this tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason() {
        let metrics = BrokerMetrics::default();
        metrics.refused(Refusal::WrongPassword);
        metrics.refused(Refusal::WrongPassword);
        metrics.refused(Refusal::ClientIdMismatch);
        metrics.accepted();
        let mut registry = iotmon_wire::metrics::Registry::default();
        registry.register_collector(Box::new(metrics));
        let out = iotmon_wire::metrics::render(&[&registry]);
        assert!(out.contains("iotmon_broker_connects_refused_total{reason=\"wrong_password\"} 2"));
        assert!(
            out.contains("iotmon_broker_connects_refused_total{reason=\"client_id_mismatch\"} 1")
        );
        assert!(out.contains("iotmon_broker_connects_accepted_total 1"));
        assert!(out.contains("iotmon_broker_messages_skipped_total 0"));
    }
}
