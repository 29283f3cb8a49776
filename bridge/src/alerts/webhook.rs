//! The optional webhook sink: one JSON POST per alert transition, in order, retried with
//! backoff while the receiver fails, from a bounded outbox. It never holds up evaluation:
//! the alert manager hands transitions over without waiting, and when the hand-over queue
//! or the outbox is full the oldest transitions are dropped and counted.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::alert::AlertTransition;
use iotmon_wire::mqtt::Backoff;
use iotmon_wire::Alert;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::counters::BridgeCounters;

/// `[alerts.webhook]`: where transitions are posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL; empty: no webhook.
    pub url: String,
    /// Sent as `Authorization: Bearer TOKEN` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// How long one POST may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The first retry's delay; it doubles on every failure, up to five minutes, scaled by a
    /// random factor between 0.5 and 1.5.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Transitions waiting to be posted; beyond, the oldest are dropped and counted.
    pub max_outbox: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            token: None,
            timeout: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(1),
            max_outbox: 10_000,
        }
    }
}

impl WebhookConfig {
    /// Whether a webhook is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks the URL and bounds.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "alerts.webhook.url must start with http:// or https:// (got {:?})",
                self.url
            ));
        }
        if self.timeout.is_zero() || self.retry_backoff.is_zero() || self.max_outbox == 0 {
            return Err(
                "alerts.webhook.timeout, retry_backoff and max_outbox must be greater than zero"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What one POST carries: the transition and the alert as it stands after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub transition: AlertTransition,
    pub alert: Alert,
}

/// Capacity of the hand-over queue from the alert manager. When full, the notification is
/// dropped and counted (`iotmon_webhook_dropped_total`).
pub const HANDOVER_CAPACITY: usize = 1024;

/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The manager's end of the sink.
#[derive(Debug, Clone)]
pub struct WebhookHandle {
    to_sink: mpsc::Sender<Notification>,
    counters: Arc<BridgeCounters>,
}

impl WebhookHandle {
    /// Queues `notification` without waiting; dropped and counted when the queue is full.
    pub fn notify(&self, notification: Notification) {
        if self.to_sink.try_send(notification).is_err() {
            self.counters
                .webhook_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the sink; returns the manager's handle, or `None` when no webhook is configured.
///
/// # Errors
/// The HTTP client cannot be built.
pub fn start(
    config: &WebhookConfig,
    counters: Arc<BridgeCounters>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> Result<Option<WebhookHandle>, reqwest::Error> {
    if !config.enabled() {
        return Ok(None);
    }
    let client = reqwest::Client::builder().timeout(config.timeout).build()?;
    let (to_sink, from_manager) = mpsc::channel(HANDOVER_CAPACITY);
    tasks.spawn(run(
        config.clone(),
        client,
        from_manager,
        counters.clone(),
        shutdown,
    ));
    info!(url = config.url, "alert webhook enabled");
    Ok(Some(WebhookHandle { to_sink, counters }))
}

async fn run(
    config: WebhookConfig,
    client: reqwest::Client,
    mut from_manager: mpsc::Receiver<Notification>,
    counters: Arc<BridgeCounters>,
    shutdown: CancellationToken,
) {
    let mut outbox: VecDeque<Notification> = VecDeque::new();
    let mut backoff = Backoff::between(config.retry_backoff, MAX_BACKOFF);
    loop {
        // Take what has arrived; wait for something when the outbox is empty.
        while let Ok(notification) = from_manager.try_recv() {
            push_bounded(&mut outbox, notification, config.max_outbox, &counters);
        }
        let Some(head) = outbox.front() else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                next = from_manager.recv() => match next {
                    Some(notification) => {
                        push_bounded(&mut outbox, notification, config.max_outbox, &counters);
                        continue;
                    }
                    None => return,
                },
            }
        };
        let posted = tokio::select! {
            () = shutdown.cancelled() => return,
            posted = post(&client, &config, head) => posted,
        };
        match posted {
            Ok(()) => {
                outbox.pop_front();
                counters.webhook_sent.fetch_add(1, Ordering::Relaxed);
                backoff.reset();
            }
            Err(error) => {
                counters.webhook_failures.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                warn!(%error, retry_in = ?delay, "alert webhook failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn push_bounded(
    outbox: &mut VecDeque<Notification>,
    notification: Notification,
    max: usize,
    counters: &BridgeCounters,
) {
    if outbox.len() >= max {
        outbox.pop_front();
        counters.webhook_dropped.fetch_add(1, Ordering::Relaxed);
    }
    outbox.push_back(notification);
}

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
}

async fn post(
    client: &reqwest::Client,
    config: &WebhookConfig,
    notification: &Notification,
) -> Result<(), PostError> {
    let mut request = client
        .post(&config.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(notification).unwrap_or_default());
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PostError::Status(response.status()))
    }
}
