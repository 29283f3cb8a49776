//! What the dashboard does with alerts beyond showing them (the hub pushes those): operators'
//! commands, relayed to the bridge's alert manager, and the history and rules the REST API
//! serves.

use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::alert::{AlertRequest, CommandError};
use iotmon_wire::{Alert, AlertCommand};
use tokio::sync::{mpsc, oneshot};

/// How long a command may wait for the alert manager before the caller is told it failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where operators' commands go.
#[derive(Debug, Clone)]
pub enum CommandRoute {
    /// The alert manager of the bridge in this process, which answers with the outcome.
    InProcess(mpsc::Sender<AlertRequest>),
    /// The broker, to a bridge in another process (`iotmon/commands/alerts`, QoS 1): the
    /// outcome arrives as the changed alert, like any other alert change.
    Broker(mpsc::Sender<AlertCommand>),
}

/// Capacity of the queue of commands waiting to be published to the broker. When full, a
/// command is refused with "try again".
pub const BROKER_COMMAND_CAPACITY: usize = 64;

/// What became of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// Carried out: the alert as changed (boxed: much larger than the other variant).
    Applied(Box<Alert>),
    /// Handed to the broker for the bridge that owns the alert.
    Forwarded,
}

/// The dashboard's access to alerting.
#[derive(Debug, Clone, Default)]
pub struct AlertAccess {
    /// Where operators' commands go; `None`: nowhere (they are refused).
    pub commands: Option<CommandRoute>,
    /// The configured rules, as `/api/rules` serves them.
    pub rules: Arc<serde_json::Value>,
    /// The first batch of alerts on the live stream holds every open alert: the alert
    /// manager of a bridge in this process sends the alerts it reloaded first, even none.
    /// The HTTP listener then answers only once the hub has them, so that the first
    /// `/api/alerts` after a restart lists every alert still open. `false` when split: alerts
    /// come from the broker one at a time, with no batch known to be complete.
    pub open_alerts_first: bool,
}

/// Longest shelving an operator may ask for: 30 days.
pub const MAX_SHELVE_MINUTES: u32 = 30 * 24 * 60;

/// The operator a command is by: `by` (1 to 64 characters), or `default` when not given.
///
/// # Errors
/// `by` is empty or too long.
pub fn operator(by: Option<String>, default: &str) -> Result<String, String> {
    match by {
        None => Ok(default.to_string()),
        Some(name) if (1..=64).contains(&name.chars().count()) => Ok(name),
        Some(_) => Err("\"by\" must be 1 to 64 characters".to_string()),
    }
}

/// When a shelving of `minutes` from now ends, ms since the epoch.
///
/// # Errors
/// `minutes` is 0 or more than [`MAX_SHELVE_MINUTES`].
pub fn shelve_until(minutes: u32) -> Result<i64, String> {
    if minutes == 0 || minutes > MAX_SHELVE_MINUTES {
        return Err(format!(
            "shelve for 1 to {MAX_SHELVE_MINUTES} minutes, not {minutes}"
        ));
    }
    Ok(iotmon_wire::unix_millis().saturating_add(i64::from(minutes) * 60_000))
}

/// Why a command did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandFailure {
    /// The alert manager refused it (unknown alert, shelving in the past).
    Refused(CommandError),
    /// No alert manager to send it to, or it did not answer in time.
    Unavailable(&'static str),
}

impl AlertAccess {
    /// Carries out `command`: in process, waits for the alert as changed; through the
    /// broker, hands it over.
    ///
    /// # Errors
    /// Refused by the manager, or no manager answered, or too many commands wait.
    pub async fn command(&self, command: AlertCommand) -> Result<CommandOutcome, CommandFailure> {
        match &self.commands {
            None => Err(CommandFailure::Unavailable(
                "alert commands are not available on this dashboard",
            )),
            Some(CommandRoute::InProcess(commands)) => in_process(commands, command)
                .await
                .map(|alert| CommandOutcome::Applied(Box::new(alert))),
            Some(CommandRoute::Broker(commands)) => match commands.try_send(command) {
                Ok(()) => Ok(CommandOutcome::Forwarded),
                Err(_) => Err(CommandFailure::Unavailable(
                    "too many alert commands are waiting for the broker; try again",
                )),
            },
        }
    }
}

/// Sends `command` to the alert manager in this process and waits for the outcome.
async fn in_process(
    commands: &mpsc::Sender<AlertRequest>,
    command: AlertCommand,
) -> Result<Alert, CommandFailure> {
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
