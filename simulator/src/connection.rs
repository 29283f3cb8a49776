//! A simulated MQTT connection: opened at its turn, re-opened with backoff when it fails,
//! dropped on purpose for an offline spell, counted, and closed with a real DISCONNECT (after
//! a farewell `offline` per device when presence is on) at shutdown.
//!
//! This is a loop of its own rather than `iotmon_wire::mqtt::drive_session`, which a device
//! would otherwise use, because the fleet's summary counts lost connections, written and
//! acknowledged publishes, and offline spells drop the socket without a goodbye so that the
//! broker publishes the last will. The backoff is the shared one.

use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::mqtt::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::{Client, ConnectionError, Event, EventLoop};
use crate::config::Qos;
use crate::device::OFFLINE;
use crate::stats::Counters;

/// How long shutdown waits for queued messages and the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);
/// How long the event loop must have nothing to do before the goodbye counts it drained.
const QUIET: Duration = Duration::from_millis(50);

/// Everything a connection's session loop owns. (No `Debug`: rumqttc's event loops have none.)
pub(crate) struct Session {
    pub eventloop: EventLoop,
    /// A handle on `eventloop`, for the farewell and the DISCONNECT.
    pub client: Client,
    /// When to open the connection.
    pub start_at: Instant,
    /// Status topics to publish `offline` on before disconnecting at shutdown (empty without
    /// presence).
    pub farewell: Vec<String>,
    /// Requests to drop the connection for a while (an offline spell).
    pub offline_requests: mpsc::Receiver<Duration>,
    /// Bumped on every accepted connection, so the publisher announces presence.
    pub epoch: watch::Sender<u64>,
    pub counters: Arc<Counters>,
}

/// Keeps the session connected from its start until `shutdown`, then says goodbye.
pub(crate) async fn keep_connected(mut session: Session, shutdown: CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = sleep_until(session.start_at) => {}
    }
    let mut backoff = Backoff::new();
    let mut connected = false;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(spell) = session.offline_requests.recv() => {
                if std::mem::take(&mut connected) {
                    session.counters.disconnected(false);
                }
                session.eventloop.drop_connection();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = sleep(spell) => continue,
                }
            }
            event = session.eventloop.poll() => event,
        };
        match event {
            Ok(event) => {
                if on_event(event, &session.counters, &mut backoff) {
                    connected = true;
                    session.epoch.send_modify(|epoch| *epoch += 1);
                }
            }
            Err(error) => {
                if std::mem::take(&mut connected) {
                    session.counters.disconnected(true);
                } else {
                    session.counters.connect_failed();
                }
                let delay = backoff.next_delay();
                log_failure(&session.eventloop, &error, delay);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = sleep(delay) => {}
                }
            }
        }
    }
    if connected {
        session.counters.disconnected(false);
        disconnect(session).await;
    }
}

/// Counts what one event means; true when it is the broker accepting the connection.
fn on_event(event: Event, counters: &Counters, backoff: &mut Backoff) -> bool {
    match event {
        Event::Accepted => {
            backoff.reset();
            counters.connected();
            true
        }
        Event::Acked => {
            counters.acked();
            false
        }
        Event::PublishWritten => {
            counters.written();
            false
        }
        Event::DisconnectWritten | Event::Other => false,
    }
}

/// Per connection at debug level: with a thousand devices one broker outage would otherwise
/// log a thousand warnings; the progress display shows how many are connected.
fn log_failure(eventloop: &EventLoop, error: &ConnectionError, retry_in: Duration) {
    debug!(
        client_id = eventloop.client_id(),
        %error,
        ?retry_in,
        "MQTT connection failed"
    );
}

/// Queues the farewell and a DISCONNECT, and polls until the DISCONNECT has been written
/// (after everything queued before it), the connection fails, or [`DISCONNECT_GRACE`] passes.
/// rumqttc sends nothing unless its event loop is polled.
async fn disconnect(session: Session) {
    let Session {
        mut eventloop,
        client,
        farewell,
        counters,
        ..
    } = session;
    // The broker may close the socket as soon as it reads the DISCONNECT, dropping the
    // PUBACKs it still owes (and MQTT says a client sends nothing after one), so the last
    // QoS 1 readings are acknowledged first: poll until none is in flight and the queue has
    // gone quiet.
    let drained = timeout(DISCONNECT_GRACE, async {
        loop {
            match timeout(QUIET, eventloop.poll()).await {
                Err(_) if eventloop.inflight() == 0 => break,
                Err(_) => {}
                Ok(Ok(event)) => {
                    on_event(event, &counters, &mut Backoff::new());
                }
                Ok(Err(_)) => break,
            }
        }
    })
    .await;
    if drained.is_err() {
        debug!(
            client_id = eventloop.client_id(),
            "QoS 1 readings still unacknowledged at the goodbye"
        );
    }
    for topic in &farewell {
        if client.try_publish(topic, Qos::AtMostOnce, true, OFFLINE.into()) {
            counters.presence_queued();
        }
    }
    if !client.try_disconnect() {
        // The queue is full, so the broker is not reading: it will see the socket close.
        return;
    }
    // After the DISCONNECT is written, keep reading until the broker closes the socket: the
    // PUBACKs of the last QoS 1 readings arrive then.
    let written = timeout(DISCONNECT_GRACE, async {
        let mut disconnect_sent = false;
        loop {
            match eventloop.poll().await {
                Err(_) => break,
                Ok(Event::DisconnectWritten) => disconnect_sent = true,
                Ok(event) => {
                    on_event(event, &counters, &mut Backoff::new());
                }
            }
            if disconnect_sent && eventloop.inflight() == 0 {
                break;
            }
        }
    })
    .await;
    if written.is_err() {
        debug!(
            client_id = eventloop.client_id(),
            "DISCONNECT not written in time; closing the socket"
        );
    }
}
