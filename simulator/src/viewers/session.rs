//! One fake viewer: a WebSocket session that views a window of devices (and perhaps
//! subscribes to groups), scrolls now and then, and records how late each reading and each
//! alert arrives. Reconnects with backoff when the server goes away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use iotmon_wire::mqtt::Backoff;
use iotmon_wire::viewer::ClientMessage;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::latency::LatencyRecorder;
use crate::device::unix_millis;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Counters every viewer task updates. Relaxed: independent tallies read for reporting.
#[derive(Debug, Default)]
pub struct ViewerCounters {
    /// Sessions open right now.
    pub connected: AtomicU64,
    /// Most sessions open at once.
    pub peak_connected: AtomicU64,
    /// `snapshot` and `update` frames received.
    pub frames: AtomicU64,
    /// Device states received in updates (each one a latency sample).
    pub states: AtomicU64,
    /// `alert` frames received (raises, clears and every other change).
    pub alert_frames: AtomicU64,
    /// Bytes of text frames received.
    pub bytes: AtomicU64,
    /// `view` messages sent after the first (scrolls).
    pub scrolls: AtomicU64,
    /// `error` messages received.
    pub errors: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Sessions that ended while the run went on (socket failure or `reconnect`).
    pub disconnects: AtomicU64,
}

impl ViewerCounters {
    fn opened(&self) {
        let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connected.fetch_max(now, Ordering::Relaxed);
    }
}

/// The part of a server frame a viewer measures. Parsed leniently and only this far (not as
/// `iotmon_wire::viewer::ServerMessage`, whose metric maps would cost the load generator more
/// CPU than the measurement needs): unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    devices: Vec<StateTime>,
    /// In an `alert` frame.
    #[serde(default)]
    alert: Option<AlertTime>,
}

#[derive(Debug, Deserialize)]
struct StateTime {
    ts: i64,
}

/// The part of an alert a viewer measures.
#[derive(Debug, Deserialize)]
struct AlertTime {
    id: u64,
    state: String,
    /// The device's `ts` of the reading that caused the latest raise, clear or reactivation.
    #[serde(default)]
    reading_ts: Option<i64>,
}

/// The raises a session has measured, so that each counts once: the `reading_ts` of the
/// latest raise seen per alert id. An alert frame that does not come from a new reading (a
/// shelving, a suppression) repeats the alert's state and `reading_ts`, and is not a new
/// sample; a reactivation is (a new reading raised it again). Holds at most one entry per
/// alert in the viewer's scope; a closed alert's entry is dropped.
#[derive(Debug, Default)]
struct SeenRaises(HashMap<u64, i64>);

impl SeenRaises {
    /// The `reading_ts` of `alert` if it is a raise (or reactivation) not measured yet.
    fn new_raise(&mut self, alert: &AlertTime) -> Option<i64> {
        match alert.state.as_str() {
            "active_unacknowledged" => {
                let ts = alert.reading_ts?;
                (self.0.insert(alert.id, ts) != Some(ts)).then_some(ts)
            }
            "closed" => {
                self.0.remove(&alert.id);
                None
            }
            _ => None,
        }
    }
}

/// What one viewer needs.
#[derive(Debug)]
pub(crate) struct ViewerTask {
    pub number: usize,
    pub url: Arc<str>,
    pub ids: Arc<[String]>,
    pub visible: usize,
    /// Groups this viewer subscribes to (`groups`) besides its view; `None` subscribes to
    /// none.
    pub groups: Option<Arc<[String]>>,
    /// Mean time between scrolls; `None` never scrolls.
    pub scroll_every: Option<Duration>,
    pub start_at: Instant,
    pub seed: u64,
    pub counters: Arc<ViewerCounters>,
    pub latency: Arc<LatencyRecorder>,
    /// Raise→viewer delays of alerts.
    pub alert_latency: Arc<LatencyRecorder>,
}

/// Why a session ended.
enum Ended {
    Shutdown,
    Lost,
}

/// Each fake viewer's WebSocket settings. tungstenite zero-fills its whole read buffer on
/// every read; at the default 128 KiB that is most of a viewer's memory and, with thousands of
/// viewers each reading ten frames a second, most of the load generator's CPU. Frames are a few
/// hundred bytes; a larger one (a snapshot) still arrives, the buffer growing to fit.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

impl ViewerTask {
    /// Runs the viewer until `shutdown`, reconnecting with backoff.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep_until(self.start_at) => {}
        }
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut backoff = Backoff::new();
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = tokio_tungstenite::connect_async_with_config(
                    &*self.url,
                    Some(socket_config()),
                    false,
                ) => connected,
            };
            match connected {
                Ok((socket, _)) => {
                    backoff.reset();
                    self.counters.opened();
                    let ended = self.session(socket, &mut rng, &shutdown).await;
                    self.counters.connected.fetch_sub(1, Ordering::Relaxed);
                    if let Ended::Shutdown = ended {
                        return;
                    }
                    self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One connected session: view (and subscribe to groups), then read frames and scroll
    /// until it ends.
    async fn session(
        &self,
        mut socket: Socket,
        rng: &mut SmallRng,
        shutdown: &CancellationToken,
    ) -> Ended {
        if !self.send_view(&mut socket, rng).await || !self.send_groups(&mut socket).await {
            return Ended::Lost;
        }
        let mut raises = SeenRaises::default();
        let mut next_scroll = self.next_scroll(rng);
        loop {
            let scroll_at =
                next_scroll.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ended::Shutdown;
                }
                () = sleep_until(scroll_at), if next_scroll.is_some() => {
                    self.counters.scrolls.fetch_add(1, Ordering::Relaxed);
                    if !self.send_view(&mut socket, rng).await {
                        return Ended::Lost;
                    }
                    next_scroll = self.next_scroll(rng);
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if !self.on_text(text.as_str(), &mut raises) {
                            return Ended::Lost;
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return Ended::Lost,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Measures one text frame; false when the server asks us to reconnect.
    fn on_text(&self, text: &str, raises: &mut SeenRaises) -> bool {
        let received = unix_millis();
        self.counters
            .bytes
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        match frame.kind.as_str() {
            "update" => {
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .states
                    .fetch_add(frame.devices.len() as u64, Ordering::Relaxed);
                self.latency.record(
                    self.number,
                    frame.devices.iter().map(|state| received - state.ts),
                );
            }
            // A snapshot carries states that may be old: not a latency sample.
            "snapshot" => {
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
            }
            "alert" => {
                self.counters.alert_frames.fetch_add(1, Ordering::Relaxed);
                if let Some(ts) = frame
                    .alert
                    .as_ref()
                    .and_then(|alert| raises.new_raise(alert))
                {
                    self.alert_latency.record(self.number, [received - ts]);
                }
            }
            "error" => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            "reconnect" => return false,
            _ => {}
        }
        true
    }

    /// Sends a `view` of a window of devices at a random position.
    async fn send_view(&self, socket: &mut Socket, rng: &mut SmallRng) -> bool {
        let devices = window(&self.ids, self.visible, rng)
            .iter()
            .map(|id| id.as_str().into())
            .collect();
        let Ok(text) = serde_json::to_string(&ClientMessage::view_devices(devices)) else {
            return false;
        };
        socket.send(Message::Text(text.into())).await.is_ok()
    }

    /// Subscribes to this viewer's groups, if it has any (true when there is nothing to send).
    async fn send_groups(&self, socket: &mut Socket) -> bool {
        let Some(groups) = &self.groups else {
            return true;
        };
        let message = ClientMessage::Groups {
            groups: groups.iter().map(|group| group.as_str().into()).collect(),
        };
        let Ok(text) = serde_json::to_string(&message) else {
            return false;
        };
        socket.send(Message::Text(text.into())).await.is_ok()
    }

    /// When to scroll next: the mean interval scaled by a random factor in [0.5, 1.5).
    fn next_scroll(&self, rng: &mut SmallRng) -> Option<Instant> {
        self.scroll_every
            .map(|every| Instant::now() + every.mul_f64(rng.random_range(0.5..1.5)))
    }
}

/// `visible` consecutive ids at a random position (all of them when there are fewer).
fn window<'a>(ids: &'a [String], visible: usize, rng: &mut SmallRng) -> &'a [String] {
    if ids.len() <= visible {
        return ids;
    }
    let start = rng.random_range(0..=ids.len() - visible);
    &ids[start..start + visible]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_consecutive_and_in_bounds() {
        let ids: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..200 {
            let view = window(&ids, 10, &mut rng);
            assert_eq!(view.len(), 10);
            let first: usize = view[0][1..].parse().expect("number");
            assert!(first <= 40);
            assert_eq!(view[9], format!("d{}", first + 9));
        }
        assert_eq!(window(&ids[..3], 10, &mut rng).len(), 3);
    }

    fn alert(id: u64, state: &str, reading_ts: Option<i64>) -> AlertTime {
        AlertTime {
            id,
            state: state.into(),
            reading_ts,
        }
    }

    #[test]
    fn each_raise_is_measured_once_and_a_reactivation_again() {
        let mut raises = SeenRaises::default();
        assert_eq!(
            raises.new_raise(&alert(1, "active_unacknowledged", Some(100))),
            Some(100)
        );
        // The same raise again (shelved, suppressed): not a new sample.
        assert_eq!(
            raises.new_raise(&alert(1, "active_unacknowledged", Some(100))),
            None
        );
        // Another alert's raise counts on its own.
        assert_eq!(
            raises.new_raise(&alert(2, "active_unacknowledged", Some(100))),
            Some(100)
        );
        // Clears and acknowledgements are not raises.
        assert_eq!(
            raises.new_raise(&alert(1, "cleared_unacknowledged", Some(200))),
            None
        );
        assert_eq!(
            raises.new_raise(&alert(2, "active_acknowledged", Some(100))),
            None
        );
        // Reactivated by a new reading: measured again.
        assert_eq!(
            raises.new_raise(&alert(1, "active_unacknowledged", Some(300))),
            Some(300)
        );
        // Without the reading's time there is nothing to measure.
        assert_eq!(
            raises.new_raise(&alert(3, "active_unacknowledged", None)),
            None
        );
        // A closed alert is forgotten.
        assert_eq!(raises.new_raise(&alert(1, "closed", Some(300))), None);
        assert!(!raises.0.contains_key(&1));
    }

    #[test]
    fn alert_frames_parse_leniently() {
        let text = r#"{"type":"alert","alert":{"id":17,"rule":"too-hot","subject":"s-1","group":"g",
            "severity":"major","state":"active_unacknowledged","message":"m","value":41.2,
            "reading_ts":1704723845000,"raised_at":1704723845010,"changed_at":1704723845010,"seq":3}}"#;
        let frame: Frame = serde_json::from_str(text).expect("alert frame");
        assert_eq!(frame.kind, "alert");
        let alert = frame.alert.expect("alert");
        assert_eq!(
            (alert.id, alert.state.as_str()),
            (17, "active_unacknowledged")
        );
        assert_eq!(alert.reading_ts, Some(1_704_723_845_000));
    }
}
