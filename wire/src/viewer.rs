//! The dashboard's WebSocket protocol: JSON messages tagged by `"type"`.
//!
//! A browser says which devices are on its screen (`view`); the server answers with a
//! `snapshot` of those devices, then `update`s carrying only the ones that changed, batched
//! once per tick. See `docs/protocol.md` for examples.

use serde::{Deserialize, Serialize};

use crate::aggregate::GroupAggregate;
use crate::alert::{Alert, AlertId};
use crate::device::{DeviceId, DeviceState, GroupPath};

/// Messages a viewer sends to the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// What is now on screen, replacing the previous view entirely: either a list of device
    /// ids, or a page of a group (the devices under `group`, sorted by group path then id,
    /// `limit` of them from `offset`), as a paged grid shows them.
    View {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        devices: Option<Vec<DeviceId>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default)]
        offset: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// The groups whose aggregates are on screen, replacing the previous set.
    Groups { groups: Vec<GroupPath> },
    /// Liveness check; answered with `pong`.
    Ping,
    /// Acknowledge an alert, as `by` (an operator's name; "viewer" when absent).
    Ack {
        id: AlertId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Shelve an alert for `minutes`: hidden from the active list, still tracked.
    Shelve {
        id: AlertId,
        minutes: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// End an alert's shelving early.
    Unshelve {
        id: AlertId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}

impl ClientMessage {
    /// A view of exactly these devices.
    pub fn view_devices(devices: Vec<DeviceId>) -> Self {
        ClientMessage::View {
            devices: Some(devices),
            group: None,
            offset: 0,
            limit: None,
        }
    }
}

/// Messages the dashboard sends to a viewer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The full state of every known device in the view: sent after each `view`, and again
    /// when a viewer that fell behind has caught up. Devices in the view that have never
    /// reported are absent until their first update.
    Snapshot {
        seq: u64,
        devices: Vec<DeviceState>,
        /// The current aggregates of the subscribed groups (absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<GroupAggregate>,
        /// For a group view: how many devices the group holds, over all pages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<usize>,
        /// The open alerts in the viewer's scope: about a device in the view, or under a
        /// subscribed group (absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        alerts: Vec<Alert>,
    },
    /// Devices in the view, and subscribed groups, whose state changed since the previous
    /// message.
    Update {
        seq: u64,
        devices: Vec<DeviceState>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<GroupAggregate>,
    },
    /// An alert in the viewer's scope changed (raised, cleared, acknowledged, shelved,
    /// closed): sent at once, not on the tick.
    Alert { alert: Alert },
    /// Answer to `ping`.
    Pong,
    /// The viewer's last message was not understood or not allowed; the session goes on.
    /// For a refused alert command (`ack`, `shelve`, `unshelve`), `alert` names the alert.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alert: Option<AlertId>,
    },
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
            ClientMessage::view_devices(vec!["a".into(), "b".into()])
        );
        let page: ClientMessage =
            serde_json::from_str(r#"{"type":"view","group":"hq/a","offset":50,"limit":50}"#)
                .expect("group view");
        assert_eq!(
            page,
            ClientMessage::View {
                devices: None,
                group: Some("hq/a".into()),
                offset: 50,
                limit: Some(50)
            }
        );
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"view","devices":[],"x":1}"#).is_err()
        );
        let groups: ClientMessage =
            serde_json::from_str(r#"{"type":"groups","groups":["hq"]}"#).expect("groups");
        assert_eq!(
            groups,
            ClientMessage::Groups {
                groups: vec!["hq".into()]
            }
        );
        let ping: ClientMessage = serde_json::from_str(r#"{"type":"ping"}"#).expect("ping");
        assert_eq!(ping, ClientMessage::Ping);
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
    }

    #[test]
    fn server_messages_are_tagged() {
        let update = ServerMessage::Update {
            seq: 7,
            devices: vec![],
            groups: vec![],
        };
        assert_eq!(
            serde_json::to_string(&update).expect("serialize"),
            r#"{"type":"update","seq":7,"devices":[]}"#
        );
    }
}
