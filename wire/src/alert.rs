//! Alerts as every role sees them: what the bridge raises and clears, what dashboards push to
//! viewers at once, and what operators send back (acknowledge, shelve).
//!
//! The lifecycle follows ISA-18.2: an alert is raised *active unacknowledged*; an operator
//! acknowledges it (*active acknowledged*); its condition returns to normal (*cleared*); once
//! it is both cleared and acknowledged it is closed and only history remains. A cleared alert
//! whose condition comes back before it was acknowledged is the same alert, active again: one
//! open alert per rule and subject, never a duplicate. An operator may shelve an open alert
//! until a given time (hidden from the active list, still tracked), and an alert explained by
//! a broader one is suppressed (tracked, counted, shown on demand).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::device::GroupPath;

/// An alert's id: unique within one bridge's store, stable across restarts.
pub type AlertId = u64;

/// How bad an alert is, most severe first (the order sorts alert lists).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Major,
    #[default]
    Minor,
    Warning,
    Info,
}

impl Severity {
    /// The name used in configuration, JSON and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    /// The severity named `name`, as [`Severity::as_str`] spells it.
    pub fn parse(name: &str) -> Option<Severity> {
        [
            Severity::Critical,
            Severity::Major,
            Severity::Minor,
            Severity::Warning,
            Severity::Info,
        ]
        .into_iter()
        .find(|severity| severity.as_str() == name)
    }
}

/// Where an alert stands in its lifecycle (ISA-18.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds and no operator has acknowledged it yet.
    ActiveUnacknowledged,
    /// The condition holds and an operator has acknowledged it.
    ActiveAcknowledged,
    /// The condition returned to normal before anyone acknowledged it.
    ClearedUnacknowledged,
    /// Cleared and acknowledged: the alert is closed.
    Closed,
}

impl AlertState {
    /// The state after the condition changes to `active` (or not), given acknowledgement.
    pub fn of(active: bool, acknowledged: bool) -> AlertState {
        match (active, acknowledged) {
            (true, false) => AlertState::ActiveUnacknowledged,
            (true, true) => AlertState::ActiveAcknowledged,
            (false, false) => AlertState::ClearedUnacknowledged,
            (false, true) => AlertState::Closed,
        }
    }

    /// Whether the condition holds.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AlertState::ActiveUnacknowledged | AlertState::ActiveAcknowledged
        )
    }

    /// Whether an operator has acknowledged it.
    pub fn is_acknowledged(self) -> bool {
        matches!(self, AlertState::ActiveAcknowledged | AlertState::Closed)
    }

    /// Whether it is still open (anything but closed).
    pub fn is_open(self) -> bool {
        self != AlertState::Closed
    }

    /// The name used in JSON, the store and query parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::ActiveUnacknowledged => "active_unacknowledged",
            AlertState::ActiveAcknowledged => "active_acknowledged",
            AlertState::ClearedUnacknowledged => "cleared_unacknowledged",
            AlertState::Closed => "closed",
        }
    }

    /// The state named `name`, as [`AlertState::as_str`] spells it.
    pub fn parse(name: &str) -> Option<AlertState> {
        [
            AlertState::ActiveUnacknowledged,
            AlertState::ActiveAcknowledged,
            AlertState::ClearedUnacknowledged,
            AlertState::Closed,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

/// One alert as viewers and the REST API see it: its latest state, with enough context to
/// show it without another lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: AlertId,
    /// The name of the rule that raised it.
    pub rule: Arc<str>,
    /// What it is about: a device id, or a group path for a group rule.
    pub subject: Arc<str>,
    /// The group path of the device (for a group rule, the group itself), so viewers can
    /// place it in the hierarchy.
    pub group: GroupPath,
    pub severity: Severity,
    pub state: AlertState,
    /// A one-line description of the latest transition (`temperature 31.2 above 30`).
    pub message: String,
    /// The value that caused the latest transition (absent for offline alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The device's own timestamp (ms) of the reading that caused the latest raise, clear or
    /// reactivation, when a reading did: how far the alert is from the measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading_ts: Option<i64>,
    /// When it was raised, ms since the Unix epoch.
    pub raised_at: i64,
    /// When it last changed state, ms since the Unix epoch.
    pub changed_at: i64,
    /// Who acknowledged it, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<i64>,
    /// Hidden from the active list until then (ms since the epoch); still tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_until: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_by: Option<String>,
    /// The active group alert that explains this one (a floor mostly offline explains each
    /// of its devices being offline): tracked and counted, shown on demand, not in the
    /// active list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<AlertId>,
    /// `iotmon/alerts/...` messages are republished on resynchronisation; `seq` lets a
    /// receiver keep the newest of two copies of one alert (it grows with every change).
    pub seq: u64,
}

impl Alert {
    /// Whether the alert is shelved at `now_ms`.
    pub fn is_shelved(&self, now_ms: i64) -> bool {
        self.shelved_until.is_some_and(|until| until > now_ms)
    }

    /// The order alerts are listed in: most severe first, then most recently changed.
    pub fn screen_order(&self, other: &Alert) -> std::cmp::Ordering {
        let key = |alert: &Alert| {
            (
                alert.severity,
                std::cmp::Reverse(alert.changed_at),
                alert.id,
            )
        };
        key(self).cmp(&key(other))
    }

    /// Whether a device under `group` (or the group itself) is what this alert is about.
    pub fn is_under(&self, group: &str) -> bool {
        crate::topics::in_group(&self.group, group)
    }
}

/// One step of an alert's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTransition {
    pub alert: AlertId,
    /// When, ms since the Unix epoch.
    pub ts: i64,
    /// What happened: `raised`, `cleared`, `reactivated`, `acknowledged`, `shelved`,
    /// `unshelved`, `suppressed`, `unsuppressed`, `closed`.
    pub event: String,
    /// The state after it.
    pub state: AlertState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The operator, for acknowledgements and shelving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// What an operator asks of an alert, from a viewer or the REST API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertCommand {
    /// Acknowledge it.
    Acknowledge { id: AlertId, by: String },
    /// Hide it until `until` (ms since the epoch).
    Shelve { id: AlertId, until: i64, by: String },
    /// Show it again before its shelving expires.
    Unshelve { id: AlertId, by: String },
}

impl AlertCommand {
    /// The alert it is about.
    pub fn id(&self) -> AlertId {
        match self {
            AlertCommand::Acknowledge { id, .. }
            | AlertCommand::Shelve { id, .. }
            | AlertCommand::Unshelve { id, .. } => *id,
        }
    }
}

/// Why the bridge refused an operator's command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no open alert {0}")]
    NotFound(AlertId),
    #[error("shelving must end in the future")]
    ShelveInPast,
}

/// An operator's command on its way to the bridge that owns the alert, with where to send
/// the outcome: the alert as changed, or why it was refused.
#[derive(Debug)]
pub struct AlertRequest {
    pub command: AlertCommand,
    pub reply: tokio::sync::oneshot::Sender<Result<Alert, CommandError>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_isa_18_2() {
        assert_eq!(
            AlertState::of(true, false),
            AlertState::ActiveUnacknowledged
        );
        assert_eq!(
            AlertState::of(false, false),
            AlertState::ClearedUnacknowledged
        );
        assert_eq!(AlertState::of(false, true), AlertState::Closed);
        assert!(!AlertState::Closed.is_open());
        assert!(AlertState::ClearedUnacknowledged.is_open());
        for state in [
            AlertState::ActiveUnacknowledged,
            AlertState::ActiveAcknowledged,
            AlertState::ClearedUnacknowledged,
            AlertState::Closed,
        ] {
            assert_eq!(AlertState::parse(state.as_str()), Some(state));
            assert_eq!(
                AlertState::of(state.is_active(), state.is_acknowledged()),
                state
            );
        }
    }

    #[test]
    fn severities_sort_most_severe_first_and_parse_their_names() {
        assert!(Severity::Critical < Severity::Info);
        assert_eq!(Severity::parse("major"), Some(Severity::Major));
        assert_eq!(Severity::parse("bad"), None);
    }

    #[test]
    fn commands_parse_from_json() {
        let command: AlertCommand =
            serde_json::from_str(r#"{"action":"acknowledge","id":7,"by":"ana"}"#).expect("ack");
        assert_eq!(
            command,
            AlertCommand::Acknowledge {
                id: 7,
                by: "ana".into()
            }
        );
        assert_eq!(command.id(), 7);
    }
}
