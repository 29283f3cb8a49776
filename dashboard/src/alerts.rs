//! What the dashboard does with alerts beyond showing them (the hub pushes those): operators'
//! commands, relayed to the bridge's alert manager, and the history and rules the REST API
//! serves.

use std::sync::Arc;
use std::time::Duration;

use iotmon_bridge::alerts::store::AlertReader;
use iotmon_wire::alert::AlertRequest;
use iotmon_wire::{Alert, AlertCommand};
use tokio::sync::{mpsc, oneshot};

/// How long a command may wait for the alert manager before the caller is told it failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The dashboard's access to alerting.
#[derive(Debug, Clone, Default)]
pub struct AlertAccess {
    /// Where operators' commands go: the alert manager of the bridge in this process. `None`
    /// when the dashboard runs apart from the bridge (commands are then refused).
    pub commands: Option<mpsc::Sender<AlertRequest>>,
    /// Alert history, when this dashboard can read the alert store.
    pub history: Option<AlertReader>,
    /// The configured rules, as `/api/rules` serves them.
    pub rules: Arc<serde_json::Value>,
}

/// Why a command did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandFailure {
    /// The alert manager refused it (unknown alert, shelving in the past, ...).
    Refused(String),
    /// No alert manager to send it to, or it did not answer in time.
    Unavailable(&'static str),
}

impl AlertAccess {
    /// Sends `command` to the alert manager and waits for the alert as changed.
    ///
    /// # Errors
    /// Refused by the manager, or no manager answered.
    pub async fn command(&self, command: AlertCommand) -> Result<Alert, CommandFailure> {
        let Some(commands) = &self.commands else {
            return Err(CommandFailure::Unavailable(
                "alerts can only be changed through a dashboard that runs with the bridge (iotmon serve)",
            ));
        };
        let (reply, answer) = oneshot::channel();
        let sent = tokio::time::timeout(
            COMMAND_TIMEOUT,
            commands.send(AlertRequest { command, reply }),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(CommandFailure::Unavailable(
                "the alert manager is not answering",
            ));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
            Ok(Ok(Ok(alert))) => Ok(alert),
            Ok(Ok(Err(refusal))) => Err(CommandFailure::Refused(refusal)),
            _ => Err(CommandFailure::Unavailable(
                "the alert manager is not answering",
            )),
        }
    }
}
