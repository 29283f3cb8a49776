//! The dashboard's WebSocket protocol: JSON messages tagged by `"type"`.
//!
//! A browser says which devices are on its screen (`view`); the server answers with a
//! `snapshot` of those devices, then `update`s carrying only the ones that changed, batched
//! once per tick. See `docs/protocol.md` for examples.

use serde::{Deserialize, Serialize};

use crate::device::{DeviceId, DeviceState};

/// Messages a viewer sends to the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The devices now on screen; replaces the previous view entirely.
    View { devices: Vec<DeviceId> },
    /// Liveness check; answered with `pong`.
    Ping,
}

/// Messages the dashboard sends to a viewer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The full state of every known device in the view, sent after each `view`.
    /// Devices in the view that have never reported are absent until their first update.
    Snapshot { seq: u64, devices: Vec<DeviceState> },
    /// Devices in the view whose state changed since the previous message.
    Update { seq: u64, devices: Vec<DeviceState> },
    /// Answer to `ping`.
    Pong,
    /// The viewer's last message was not understood or not allowed; the session goes on.
    Error { message: String },
    /// The server is going away; connect again (to another instance, or after a restart).
    Reconnect { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages() {
        let view: ClientMessage =
            serde_json::from_str(r#"{"type":"view","devices":["a","b"]}"#).expect("view");
        assert_eq!(
            view,
            ClientMessage::View {
                devices: vec!["a".into(), "b".into()]
            }
        );
        let ping: ClientMessage = serde_json::from_str(r#"{"type":"ping"}"#).expect("ping");
        assert_eq!(ping, ClientMessage::Ping);
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"view"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
    }

    #[test]
    fn server_messages_are_tagged() {
        let update = ServerMessage::Update {
            seq: 7,
            devices: vec![],
        };
        assert_eq!(
            serde_json::to_string(&update).expect("serialize"),
            r#"{"type":"update","seq":7,"devices":[]}"#
        );
    }
}
