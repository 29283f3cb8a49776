//! A device's MQTT connection: opened at the device's turn, re-opened with backoff when it
//! fails, counted, and closed with a real DISCONNECT at shutdown.
//!
//! This is a loop of its own rather than `iotmon_wire::mqtt::drive_session`, which a device
//! would otherwise use, for two reasons: the fleet's summary counts lost connections and
//! written readings, and `drive_session` reports neither; and at shutdown `drive_session`
//! queues a DISCONNECT but stops polling, so the packet is never sent and the broker sees the
//! socket drop instead (which would fire a last will). The backoff is the shared one.

use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::mqtt::Backoff;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::stats::Counters;

/// How long shutdown waits for queued readings and the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Keeps `eventloop` connected from `start_at` until `shutdown`, then disconnects cleanly.
/// `client` must be a handle on the same event loop.
pub(crate) async fn keep_connected(
    mut eventloop: EventLoop,
    client: AsyncClient,
    start_at: Instant,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = sleep_until(start_at) => {}
    }
    let mut backoff = Backoff::new();
    let mut connected = false;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(event) => connected |= on_event(&event, &counters, &mut backoff),
            Err(error) => {
                if std::mem::take(&mut connected) {
                    counters.disconnected(true);
                }
                let delay = backoff.next_delay();
                log_failure(&eventloop, &error, delay);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = sleep(delay) => {}
                }
            }
        }
    }
    if connected {
        counters.disconnected(false);
        disconnect(eventloop, &client, &counters).await;
    }
}

/// Counts what one event means; true when it is the broker accepting the connection.
fn on_event(event: &Event, counters: &Counters, backoff: &mut Backoff) -> bool {
    match event {
        Event::Incoming(Packet::ConnAck(_)) => {
            backoff.reset();
            counters.connected();
            true
        }
        Event::Outgoing(Outgoing::Publish(_)) => {
            counters.published();
            false
        }
        _ => false,
    }
}

/// Per device at debug level: with a thousand devices one broker outage would otherwise log a
/// thousand warnings; the progress line shows how many are connected.
fn log_failure(eventloop: &EventLoop, error: &ConnectionError, retry_in: Duration) {
    debug!(
        client_id = eventloop.mqtt_options.client_id(),
        %error,
        ?retry_in,
        "MQTT connection failed"
    );
}

/// Queues a DISCONNECT and polls until it has been written (after any readings queued before
/// it), the connection fails, or [`DISCONNECT_GRACE`] passes. rumqttc sends nothing unless its
/// event loop is polled.
async fn disconnect(mut eventloop: EventLoop, client: &AsyncClient, counters: &Counters) {
    if client.try_disconnect().is_err() {
        // The queue is full, so the broker is not reading: it will see the socket close.
        return;
    }
    let written = timeout(DISCONNECT_GRACE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(Event::Outgoing(Outgoing::Publish(_))) => counters.published(),
                Ok(_) => {}
            }
        }
    })
    .await;
    if written.is_err() {
        debug!(
            client_id = eventloop.mqtt_options.client_id(),
            "DISCONNECT not written in time; closing the socket"
        );
    }
}
