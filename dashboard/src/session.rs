//! One viewer's WebSocket session: reads the viewer's messages, relays them to the hub, and
//! writes the frames the hub queued for it.

use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use iotmon_wire::viewer::{ClientMessage, ServerMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::hub::{HubCommand, HubHandle, ViewerId};

/// What a session enforces on its viewer.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_view_devices: usize,
    pub queue: usize,
}

/// How long a write to a viewer may take during shutdown before it is abandoned.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one viewer until it leaves, its socket fails, or `shutdown` (then it is told to
/// reconnect).
pub async fn serve_viewer(
    mut socket: WebSocket,
    hub: HubHandle,
    limits: SessionLimits,
    shutdown: CancellationToken,
) {
    let id = hub.next_viewer_id();
    let (outbound, mut frames) = mpsc::channel(limits.queue);
    if !hub.send(HubCommand::Join { id, outbound }).await {
        return;
    }
    debug!(viewer = id, "viewer joined");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                say_goodbye(&mut socket).await;
                break;
            }
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                if socket.send(WsMessage::Text(frame.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { break };
                if !handle_incoming(id, message, &hub, &limits, &mut socket).await {
                    break;
                }
            }
        }
    }
    hub.send(HubCommand::Leave { id }).await;
    debug!(viewer = id, "viewer left");
}

/// Handles one message from the viewer; `false` ends the session.
async fn handle_incoming(
    id: ViewerId,
    message: WsMessage,
    hub: &HubHandle,
    limits: &SessionLimits,
    socket: &mut WebSocket,
) -> bool {
    let text = match message {
        WsMessage::Text(text) => text,
        WsMessage::Close(_) => return false,
        // Pings are answered by the WebSocket layer itself.
        WsMessage::Ping(_) | WsMessage::Pong(_) => return true,
        WsMessage::Binary(_) => {
            return reply(
                socket,
                error("binary frames are not supported: send JSON text"),
            )
            .await
        }
    };
    match parse_client_message(&text, limits) {
        Ok(ClientMessage::View { devices }) => hub.send(HubCommand::View { id, devices }).await,
        Ok(ClientMessage::Ping) => reply(socket, ServerMessage::Pong).await,
        Err(message) => reply(socket, error(message)).await,
    }
}

/// Parses and checks a viewer's message; the error says what was wrong, for the viewer.
fn parse_client_message(text: &str, limits: &SessionLimits) -> Result<ClientMessage, String> {
    let message: ClientMessage =
        serde_json::from_str(text).map_err(|e| format!("invalid message: {e}"))?;
    if let ClientMessage::View { devices } = &message {
        if devices.len() > limits.max_view_devices {
            return Err(format!(
                "a view may hold at most {} devices, this one has {}",
                limits.max_view_devices,
                devices.len()
            ));
        }
    }
    Ok(message)
}

fn error(message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        message: message.into(),
    }
}

async fn reply(socket: &mut WebSocket, message: ServerMessage) -> bool {
    match serde_json::to_string(&message) {
        Ok(text) => socket.send(WsMessage::Text(text.into())).await.is_ok(),
        Err(_) => true,
    }
}

async fn say_goodbye(socket: &mut WebSocket) {
    let goodbye = ServerMessage::Reconnect {
        reason: "server shutting down".into(),
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        reply(socket, goodbye).await;
        let _ = socket.send(WsMessage::Close(None)).await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SessionLimits = SessionLimits {
        max_view_devices: 2,
        queue: 4,
    };

    #[test]
    fn explains_what_is_wrong_with_a_message() {
        let err = parse_client_message("{oops", &LIMITS).expect_err("not JSON");
        assert!(err.starts_with("invalid message"), "{err}");
        let err = parse_client_message(r#"{"type":"fly"}"#, &LIMITS).expect_err("unknown");
        assert!(err.contains("fly"), "{err}");
        let err = parse_client_message(r#"{"type":"view","devices":["a","b","c"]}"#, &LIMITS)
            .expect_err("too many");
        assert!(err.contains("at most 2"), "{err}");
        assert!(parse_client_message(r#"{"type":"view","devices":["a"]}"#, &LIMITS).is_ok());
    }
}
