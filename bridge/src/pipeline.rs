//! The bridge's main loop: device messages in, coalesced device states out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iotmon_wire::mqtt::Message;
use iotmon_wire::topics::{self, SYNC_REQUEST};
use iotmon_wire::Derived;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::BridgeConfig;
use crate::counters::BridgeCounters;
use crate::devices::DeviceTable;
use crate::ingest::{self, RejectReason};
use crate::reject_log::RejectLog;

/// The bridge's state: owned by one task, so the hot path takes no locks.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    devices: DeviceTable,
    counters: Arc<BridgeCounters>,
    reject_log: RejectLog,
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

impl Bridge {
    pub fn new(config: BridgeConfig, counters: Arc<BridgeCounters>) -> Self {
        Bridge {
            config,
            devices: DeviceTable::new(),
            counters,
            reject_log: RejectLog::new(Duration::from_secs(10)),
        }
    }

    /// Handles one message from the broker, received at `now_ms`.
    pub fn handle(&mut self, message: &Message, now_ms: i64) {
        if message.topic == SYNC_REQUEST {
            debug!("a dashboard asked for every device state");
            self.devices.mark_all_changed();
            return;
        }
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let device_topic = match topics::parse_sensor_topic(&message.topic) {
            Ok(device_topic) => device_topic,
            Err(_) => return self.reject(RejectReason::BadTopic, &message.topic),
        };
        let parsed = ingest::parse_payload(&message.payload, now_ms, &self.config.limits);
        for reason in parsed.rejected {
            self.reject(reason, &message.topic);
        }
        let accepted = parsed.readings.len() as u64;
        for reading in parsed.readings {
            self.devices
                .apply(device_topic.group, device_topic.device, reading);
        }
        self.counters
            .readings
            .fetch_add(accepted, Ordering::Relaxed);
    }

    /// Hands the devices changed since the last flush to `live_updates` without waiting:
    /// if the consumer is still busy, they are kept (coalesced) for the next flush.
    pub fn flush(&mut self, live_updates: &mpsc::Sender<Derived>) -> Flush {
        let changed = self.devices.take_changed();
        if changed.is_empty() {
            return Flush::Idle;
        }
        match live_updates.try_send(Derived::Devices(changed)) {
            Ok(()) => Flush::Sent,
            Err(TrySendError::Full(Derived::Devices(changed))) => {
                self.counters
                    .live_batches_deferred
                    .fetch_add(1, Ordering::Relaxed);
                self.devices
                    .mark_changed(changed.into_iter().map(|state| state.id));
                Flush::Deferred
            }
            Err(TrySendError::Closed(_)) => Flush::Closed,
        }
    }

    /// Number of devices seen since start.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    fn reject(&mut self, reason: RejectReason, topic: &str) {
        self.counters.reject(reason);
        self.reject_log.record(reason, topic, Instant::now());
    }
}

/// Runs the bridge until `shutdown` or until its input ends: parses every message from
/// `from_broker`, and every `live_interval` hands the changed devices to `live_updates`.
pub async fn run(
    config: BridgeConfig,
    mut from_broker: mpsc::Receiver<Message>,
    live_updates: mpsc::Sender<Derived>,
    counters: Arc<BridgeCounters>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(config.live_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut bridge = Bridge::new(config, counters);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            message = from_broker.recv() => match message {
                Some(message) => bridge.handle(&message, unix_millis()),
                None => break,
            },
            _ = ticker.tick() => {
                if bridge.flush(&live_updates) == Flush::Closed {
                    break;
                }
            }
        }
    }
    bridge.flush(&live_updates);
    info!(devices = bridge.device_count(), "bridge stopped");
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
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
    fn bad_messages_are_counted_and_good_ones_still_flow() {
        let counters = Arc::new(BridgeCounters::default());
        let mut bridge = Bridge::new(BridgeConfig::default(), counters.clone());
        bridge.handle(&message("sensors/hq/d1", "garbage"), 1_000);
        bridge.handle(&message("sensors/d1", r#"{"t":1}"#), 1_000);
        bridge.handle(&message("sensors/hq/d1", r#"{"t":1}"#), 1_000);
        assert_eq!(counters.rejected(RejectReason::NotJson), 1);
        assert_eq!(counters.rejected(RejectReason::BadTopic), 1);
        assert_eq!(counters.readings.load(Ordering::Relaxed), 1);

        let (live_tx, mut live_rx) = mpsc::channel(1);
        assert_eq!(bridge.flush(&live_tx), Flush::Sent);
        let Ok(Derived::Devices(devices)) = live_rx.try_recv() else {
            panic!("expected a batch");
        };
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].metrics.get("t"), Some(&MetricValue::Number(1.0)));
    }

    #[test]
    fn a_busy_consumer_gets_the_changes_coalesced_later() {
        let counters = Arc::new(BridgeCounters::default());
        let mut bridge = Bridge::new(BridgeConfig::default(), counters.clone());
        let (live_tx, mut live_rx) = mpsc::channel(1);
        bridge.handle(&message("sensors/hq/d1", r#"{"t":1}"#), 1_000);
        assert_eq!(bridge.flush(&live_tx), Flush::Sent);
        bridge.handle(&message("sensors/hq/d1", r#"{"t":2}"#), 1_001);
        bridge.handle(&message("sensors/hq/d2", r#"{"t":2}"#), 1_001);
        assert_eq!(bridge.flush(&live_tx), Flush::Deferred);
        assert_eq!(counters.live_batches_deferred.load(Ordering::Relaxed), 1);
        bridge.handle(&message("sensors/hq/d1", r#"{"t":3}"#), 1_002);
        live_rx.try_recv().expect("first batch");
        assert_eq!(bridge.flush(&live_tx), Flush::Sent);
        let Ok(Derived::Devices(mut devices)) = live_rx.try_recv() else {
            panic!("expected a batch");
        };
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].metrics.get("t"), Some(&MetricValue::Number(3.0)));
    }

    #[test]
    fn a_sync_request_resends_every_device() {
        let mut bridge = Bridge::new(BridgeConfig::default(), Arc::default());
        let (live_tx, mut live_rx) = mpsc::channel(4);
        bridge.handle(&message("sensors/hq/d1", r#"{"t":1}"#), 1_000);
        bridge.handle(&message("sensors/hq/d2", r#"{"t":1}"#), 1_000);
        bridge.flush(&live_tx);
        live_rx.try_recv().expect("first batch");
        bridge.handle(&message(SYNC_REQUEST, ""), 1_000);
        bridge.flush(&live_tx);
        let Ok(Derived::Devices(devices)) = live_rx.try_recv() else {
            panic!("expected a batch");
        };
        assert_eq!(devices.len(), 2);
    }
}
