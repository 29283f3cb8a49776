//! One viewer's WebSocket session: reads the viewer's messages, relays them to the hub, and
//! writes the frames the hub queued for it. Every limit on a viewer is enforced here: message
//! size and rate, view-change rate, view size, heartbeat and idle timeout, and the stall limit
//! for a viewer that stops reading.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotmon_wire::viewer::{ClientMessage, ServerMessage};
use iotmon_wire::{AlertCommand, GroupPath};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::alerts::{operator, shelve_until, AlertAccess, CommandFailure};
use crate::hub::{HubCommand, HubHandle, ViewSpec, ViewerId, ViewerQueue, FLEET};
use crate::rate::TokenBucket;
use crate::websocket::ViewerSocket;

/// What a session enforces on its viewer (see `DashboardConfig` for each).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_view_devices: usize,
    pub max_view_groups: usize,
    pub queue: usize,
    pub max_messages_per_second: u32,
    pub max_view_changes_per_second: u32,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    pub stall_limit: Duration,
}

impl From<&crate::DashboardConfig> for SessionLimits {
    fn from(config: &crate::DashboardConfig) -> Self {
        SessionLimits {
            max_view_devices: config.max_view_devices,
            max_view_groups: config.max_view_groups,
            queue: config.viewer_queue,
            max_messages_per_second: config.max_messages_per_second,
            max_view_changes_per_second: config.max_view_changes_per_second,
            heartbeat: config.heartbeat,
            idle_timeout: config.idle_timeout,
            stall_limit: config.stall_limit,
        }
    }
}

/// WebSocket close codes (RFC 6455, section 7.4.1).
mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// How long a goodbye (close frame, `reconnect`) may take before the socket is abandoned.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session ended.
#[derive(Debug)]
enum Ending {
    /// The viewer closed the connection or it dropped.
    Left,
    /// The viewer's connection accepted nothing for the stall limit.
    Stalled,
    /// The server closes the connection, telling the viewer why.
    Close(u16, String),
    /// The server is shutting down: the viewer is told to reconnect.
    Shutdown,
}

/// Serves one viewer until it leaves, breaks a limit, or `shutdown`. `_slot` is the
/// viewer's place under `max_viewers`, released when the session ends.
pub async fn serve_viewer(
    socket: ViewerSocket,
    hub: HubHandle,
    alerts: AlertAccess,
    limits: SessionLimits,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let id = hub.next_viewer_id();
    let (outbound, frames) = mpsc::channel(limits.queue);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let outbound = ViewerQueue {
        frames: outbound,
        bytes: Some(queued_bytes.clone()),
    };
    if !hub.send(HubCommand::Join { id, outbound }).await {
        return;
    }
    let now = Instant::now();
    let mut session = Session {
        id,
        messages: TokenBucket::new(
            limits.max_messages_per_second,
            limits.max_messages_per_second * 2,
            now,
        ),
        view_changes: TokenBucket::new(
            limits.max_view_changes_per_second,
            limits.max_view_changes_per_second * 2,
            now,
        ),
        last_heard: now,
        queued_bytes,
        hub,
        alerts,
        limits,
        socket,
    };
    let ending = session.run(frames, shutdown).await;
    debug!(viewer = id, ?ending, "viewer session ended");
    session.finish(ending).await;
    session.hub.send(HubCommand::Leave { id }).await;
}

/// The state of one session.
struct Session {
    id: ViewerId,
    hub: HubHandle,
    alerts: AlertAccess,
    limits: SessionLimits,
    socket: ViewerSocket,
    /// Rate of all messages from the viewer.
    messages: TokenBucket,
    /// Rate of view changes.
    view_changes: TokenBucket,
    /// When the viewer last sent anything (a message, a pong).
    last_heard: Instant,
    /// Bytes of the frames the hub queued for this viewer and not yet written; lowered here
    /// once a frame is written, so the hub holds back while a slow socket holds them.
    queued_bytes: Arc<AtomicUsize>,
}

impl Session {
    async fn run(
        &mut self,
        mut frames: mpsc::Receiver<String>,
        shutdown: CancellationToken,
    ) -> Ending {
        let mut heartbeat = tokio::time::interval(self.limits.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            let ending = tokio::select! {
                () = shutdown.cancelled() => Some(Ending::Shutdown),
                frame = frames.recv() => match frame {
                    Some(frame) => self.send_frame(frame).await,
                    // The hub stops at shutdown too, and may be seen gone first: the viewer
                    // must still be told to reconnect.
                    None if shutdown.is_cancelled() => Some(Ending::Shutdown),
                    // The hub dropped this viewer.
                    None => Some(Ending::Left),
                },
                _ = heartbeat.tick() => self.heartbeat().await,
                incoming = self.socket.recv() => self.receive(incoming).await,
            };
            if let Some(ending) = ending {
                return ending;
            }
        }
    }

    /// Writes one frame from the hub, giving its bytes back to the viewer's budget as each
    /// fragment is written (the hub reads that as the viewer reading), and the rest once the
    /// write ends or is abandoned.
    async fn send_frame(&mut self, frame: String) -> Option<Ending> {
        let len = frame.len();
        let mut given_back = 0;
        let queued_bytes = &self.queued_bytes;
        let written = self.socket.send_text(frame, |bytes| {
            queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            given_back += bytes;
        });
        let ending = stall_limited(self.limits.stall_limit, written).await;
        self.queued_bytes
            .fetch_sub(len - given_back, Ordering::Relaxed);
        ending
    }

    /// Writes one message, giving up after the stall limit.
    async fn send(&mut self, message: WsMessage) -> Option<Ending> {
        stall_limited(self.limits.stall_limit, self.socket.send(message)).await
    }

    async fn reply(&mut self, message: &ServerMessage) -> Option<Ending> {
        match serde_json::to_string(message) {
            Ok(text) => self.send(WsMessage::text(text)).await,
            Err(_) => None,
        }
    }

    async fn heartbeat(&mut self) -> Option<Ending> {
        if self.last_heard.elapsed() > self.limits.idle_timeout {
            let reason = format!("idle for more than {:?}", self.limits.idle_timeout);
            return Some(Ending::Close(close_code::GOING_AWAY, reason));
        }
        self.send(WsMessage::Ping(Default::default())).await
    }

    async fn receive(
        &mut self,
        incoming: Option<Result<WsMessage, tungstenite::Error>>,
    ) -> Option<Ending> {
        let message = match incoming {
            None => return Some(Ending::Left),
            Some(Ok(message)) => message,
            Some(Err(error)) => return Some(ending_for(error)),
        };
        let now = Instant::now();
        self.last_heard = now;
        if !self.messages.try_take(now) {
            let reason = format!(
                "more than {} messages per second",
                self.limits.max_messages_per_second
            );
            return Some(Ending::Close(close_code::POLICY_VIOLATION, reason));
        }
        match message {
            WsMessage::Text(text) => self.handle_text(&text, now).await,
            WsMessage::Binary(_) => {
                self.reply(&error("binary frames are not supported: send JSON text"))
                    .await
            }
            WsMessage::Close(_) => Some(Ending::Left),
            // Pings are answered by the WebSocket layer; pongs only prove liveness. Whole
            // frames are never read, only written.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => None,
        }
    }

    async fn handle_text(&mut self, text: &str, now: Instant) -> Option<Ending> {
        match parse_client_message(text, &self.limits) {
            Ok(Request::View(spec)) => {
                let id = self.id;
                self.change_view(HubCommand::View { id, spec }, now).await
            }
            Ok(Request::Groups(groups)) => {
                let id = self.id;
                self.change_view(HubCommand::Groups { id, groups }, now)
                    .await
            }
            Ok(Request::Ping) => self.reply(&ServerMessage::Pong).await,
            Ok(Request::Alert(command)) => {
                // Success shows as the `alert` frame every viewer in scope receives.
                let id = command.id();
                match self.alerts.command(command).await {
                    Ok(_) => None,
                    Err(CommandFailure::Refused(why)) => {
                        self.reply(&alert_error(id, why.to_string())).await
                    }
                    Err(CommandFailure::Unavailable(why)) => {
                        self.reply(&alert_error(id, why)).await
                    }
                }
            }
            Err(message) => self.reply(&error(message)).await,
        }
    }

    /// Relays a view or group change to the hub, within the view-change rate.
    async fn change_view(&mut self, change: HubCommand, now: Instant) -> Option<Ending> {
        if !self.view_changes.try_take(now) {
            let message = format!(
                "too many view changes: at most {} per second; retry in {} ms",
                self.limits.max_view_changes_per_second,
                self.view_changes.wait_hint().as_millis()
            );
            return self.reply(&error(message)).await;
        }
        if self.hub.send(change).await {
            None
        } else {
            Some(Ending::Shutdown)
        }
    }

    /// Says goodbye as `ending` requires, within [`GOODBYE_TIMEOUT`].
    async fn finish(&mut self, ending: Ending) {
        let goodbye = async {
            match ending {
                Ending::Left | Ending::Stalled => {}
                Ending::Shutdown => {
                    let reason = "server shutting down".to_string();
                    self.reply(&ServerMessage::Reconnect {
                        reason: reason.clone(),
                    })
                    .await;
                    self.close(close_code::GOING_AWAY, reason).await;
                }
                Ending::Close(code, reason) => self.close(code, reason).await,
            }
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    }

    async fn close(&mut self, code: u16, reason: String) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: close_reason(reason).into(),
        };
        if self
            .socket
            .send(WsMessage::Close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        // Complete the closing handshake: read (and discard) until the viewer's close. Closing
        // the TCP socket with unread input would reset it and could destroy our close frame
        // before the viewer reads it.
        while let Some(Ok(message)) = self.socket.recv().await {
            if matches!(message, WsMessage::Close(_)) {
                break;
            }
        }
    }
}

/// A viewer's request, checked.
#[derive(Debug, PartialEq)]
pub enum Request {
    View(ViewSpec),
    Groups(Vec<GroupPath>),
    Ping,
    Alert(AlertCommand),
}

/// Who an alert command is by, when the viewer does not say.
const ANONYMOUS_OPERATOR: &str = "viewer";

/// Parses and checks a viewer's message; the error says what was wrong, for the viewer.
/// Public so that it can be fuzzed (`fuzz/`): it is where any text from the network becomes
/// a command.
///
/// # Errors
/// The text is not a valid message, or asks for more than `limits` allow.
pub fn parse_client_message(text: &str, limits: &SessionLimits) -> Result<Request, String> {
    let message: ClientMessage =
        serde_json::from_str(text).map_err(|e| format!("invalid message: {e}"))?;
    match message {
        ClientMessage::Ping => Ok(Request::Ping),
        // The fleet (every group) is one subscription, whatever the number of groups.
        ClientMessage::Groups { groups } if groups.iter().any(|g| &**g == FLEET) => {
            if groups.len() == 1 {
                Ok(Request::Groups(groups))
            } else {
                Err(format!(
                    "\"{FLEET}\" (every group) is a subscription of its own: send it alone"
                ))
            }
        }
        ClientMessage::Groups { groups } if groups.len() > limits.max_view_groups => Err(format!(
            "at most {} groups at once, this message has {}",
            limits.max_view_groups,
            groups.len()
        )),
        ClientMessage::Groups { groups } => Ok(Request::Groups(groups)),
        ClientMessage::View {
            devices,
            group,
            offset,
            limit,
        } => view_spec(devices, group, offset, limit, limits.max_view_devices).map(Request::View),
        ClientMessage::Ack { id, by } => Ok(Request::Alert(AlertCommand::Acknowledge {
            id,
            by: operator(by, ANONYMOUS_OPERATOR)?,
        })),
        ClientMessage::Shelve { id, minutes, by } => Ok(Request::Alert(AlertCommand::Shelve {
            id,
            until: shelve_until(minutes)?,
            by: operator(by, ANONYMOUS_OPERATOR)?,
        })),
        ClientMessage::Unshelve { id, by } => Ok(Request::Alert(AlertCommand::Unshelve {
            id,
            by: operator(by, ANONYMOUS_OPERATOR)?,
        })),
    }
}

fn view_spec(
    devices: Option<Vec<iotmon_wire::DeviceId>>,
    group: Option<String>,
    offset: usize,
    limit: Option<usize>,
    max: usize,
) -> Result<ViewSpec, String> {
    match (devices, group) {
        (Some(devices), None) if devices.len() > max => Err(format!(
            "a view may hold at most {max} devices, this one has {}",
            devices.len()
        )),
        (Some(devices), None) => Ok(ViewSpec::Devices(devices.iter().collect())),
        (None, Some(group)) => {
            let limit = limit.ok_or("a group view needs a \"limit\" (devices per page)")?;
            if limit == 0 || limit > max {
                return Err(format!("\"limit\" must be between 1 and {max}"));
            }
            Ok(ViewSpec::GroupPage {
                group,
                offset,
                limit,
            })
        }
        _ => Err("a view names either \"devices\" or a \"group\", not both or neither".into()),
    }
}

/// How a failed read ends the session: an oversize message gets its own close code.
fn ending_for(error: tungstenite::Error) -> Ending {
    match error {
        tungstenite::Error::Capacity(capacity) => {
            Ending::Close(close_code::MESSAGE_TOO_BIG, capacity.to_string())
        }
        tungstenite::Error::Protocol(protocol) => {
            Ending::Close(close_code::PROTOCOL_ERROR, protocol.to_string())
        }
        _ => Ending::Left,
    }
}

/// Waits for a write, ending the session if the socket accepted nothing for `stall_limit`.
async fn stall_limited(
    stall_limit: Duration,
    write: impl std::future::Future<Output = Result<(), tungstenite::Error>>,
) -> Option<Ending> {
    match tokio::time::timeout(stall_limit, write).await {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(Ending::Left),
        Err(_) => Some(Ending::Stalled),
    }
}

/// Close reasons are limited to 123 bytes by the protocol.
fn close_reason(reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

fn error(message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        message: message.into(),
        alert: None,
    }
}

/// The refusal of a command about `alert`.
fn alert_error(alert: iotmon_wire::AlertId, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        message: message.into(),
        alert: Some(alert),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SessionLimits {
        SessionLimits {
            max_view_devices: 2,
            max_view_groups: 1,
            queue: 4,
            max_messages_per_second: 10,
            max_view_changes_per_second: 5,
            heartbeat: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            stall_limit: Duration::from_secs(10),
        }
    }

    #[test]
    fn explains_what_is_wrong_with_a_message() {
        let limits = limits();
        let err = parse_client_message("{oops", &limits).expect_err("not JSON");
        assert!(err.starts_with("invalid message"), "{err}");
        let err = parse_client_message(r#"{"type":"fly"}"#, &limits).expect_err("unknown");
        assert!(err.contains("fly"), "{err}");
        let err = parse_client_message(r#"{"type":"view","devices":["a","b","c"]}"#, &limits)
            .expect_err("too many");
        assert!(err.contains("at most 2"), "{err}");
        let err = parse_client_message(r#"{"type":"view"}"#, &limits).expect_err("empty");
        assert!(err.contains("either"), "{err}");
        let err = parse_client_message(r#"{"type":"view","devices":[],"group":"g"}"#, &limits)
            .expect_err("both");
        assert!(err.contains("not both"), "{err}");
        let err =
            parse_client_message(r#"{"type":"view","group":"g"}"#, &limits).expect_err("no limit");
        assert!(err.contains("limit"), "{err}");
        let err = parse_client_message(r#"{"type":"view","group":"g","limit":3}"#, &limits)
            .expect_err("limit too big");
        assert!(err.contains("between 1 and 2"), "{err}");
    }

    #[test]
    fn accepts_device_and_group_views() {
        let limits = limits();
        assert_eq!(
            parse_client_message(r#"{"type":"view","devices":["a"]}"#, &limits),
            Ok(Request::View(ViewSpec::Devices(
                ["a"].into_iter().collect()
            )))
        );
        assert_eq!(
            parse_client_message(
                r#"{"type":"view","group":"hq","offset":4,"limit":2}"#,
                &limits
            ),
            Ok(Request::View(ViewSpec::GroupPage {
                group: "hq".into(),
                offset: 4,
                limit: 2
            }))
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#, &limits),
            Ok(Request::Ping)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"groups","groups":["hq"]}"#, &limits),
            Ok(Request::Groups(vec!["hq".into()]))
        );
        let err = parse_client_message(r#"{"type":"groups","groups":["a","b"]}"#, &limits)
            .expect_err("too many groups");
        assert!(err.contains("at most 1 groups"), "{err}");
    }

    #[test]
    fn the_fleet_is_one_subscription_beyond_the_group_limit() {
        let limits = limits();
        assert_eq!(
            parse_client_message(r#"{"type":"groups","groups":["*"]}"#, &limits),
            Ok(Request::Groups(vec![FLEET.into()]))
        );
        let err = parse_client_message(r#"{"type":"groups","groups":["*","hq"]}"#, &limits)
            .expect_err("fleet with others");
        assert!(err.contains("alone"), "{err}");
    }

    #[test]
    fn close_reasons_fit_the_protocol_limit() {
        assert_eq!(close_reason("short".into()), "short");
        let long = "é".repeat(100);
        let cut = close_reason(long);
        assert!(cut.len() <= 123);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
