//! Alerts: rules from the configuration file, evaluated in the shard that owns each device on
//! every reading and on a deadline queue for delays and silence; a lifecycle after ISA-18.2
//! owned by one manager task; persistence in `alerts.db`; delivery to dashboards at once.
//!
//! ```text
//! shard ──(condition phase changes)──▶ manager ──▶ live stream (LiveUpdate::Alerts, at once)
//!   rules, deadlines (evaluator)         ▲  │
//!                       operators' commands  └──▶ alerts.db (alerts, transitions, phases)
//! ```
//!
//! - [`rules`]: the `[[alerts.rules]]` configuration, checked, and device selection.
//! - [`condition`]: one rule on one device: deadband, on/off delays, rate window.
//! - [`evaluator`]: a shard's conditions and deadline queue.
//! - [`group_evaluator`]: group rules, on each window's aggregates.
//! - [`lifecycle`]: open alerts and their transitions.
//! - [`manager`]: the task that owns the lifecycle.
//! - [`store`]: the alert store, `alerts.db`.
//! - [`webhook`]: the optional webhook sink.

pub mod condition;
pub mod evaluator;
pub mod group_evaluator;
pub mod lifecycle;
pub mod manager;
pub mod rules;
pub mod store;
pub mod webhook;

pub use rules::{AlertsConfig, RuleSet};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iotmon_wire::alert::AlertRequest;
use tokio::sync::mpsc;

use self::store::{alerts_db_path, AlertStore, AlertStoreError, Saved};

/// Everything the bridge needs for alerting, opened before it starts.
#[derive(Debug)]
pub struct Alerting {
    pub rules: Arc<RuleSet>,
    /// The alert store, or `None` when nothing is persisted (no data directory).
    pub store: Option<AlertStore>,
    /// What the store held at start-up.
    pub saved: Saved,
    /// Operators' commands (acknowledge, shelve) from dashboards.
    pub requests: mpsc::Receiver<AlertRequest>,
    /// How long closed alerts stay in the store.
    pub retention: Duration,
    /// When a cleared, unacknowledged alert is closed.
    pub close_cleared_after: Duration,
    /// Where transitions are posted, if anywhere.
    pub webhook: webhook::WebhookConfig,
}

impl Alerting {
    /// Alerting with `rules`, its store in `data_dir` (none without one), and the sending
    /// end for operators' commands.
    ///
    /// # Errors
    /// The store cannot be opened or read.
    pub fn open(
        rules: Arc<RuleSet>,
        config: &AlertsConfig,
        data_dir: Option<&Path>,
    ) -> Result<(Alerting, mpsc::Sender<AlertRequest>), AlertStoreError> {
        let store = data_dir
            .map(|dir| AlertStore::open(&alerts_db_path(dir)))
            .transpose()?;
        let saved = match &store {
            Some(store) => store.load()?,
            None => Saved::default(),
        };
        let (to_manager, requests) = mpsc::channel(manager::REQUEST_CAPACITY);
        let alerting = Alerting {
            rules,
            store,
            saved,
            requests,
            retention: config.history_retention,
            close_cleared_after: config.close_cleared_after,
            webhook: config.webhook.clone(),
        };
        Ok((alerting, to_manager))
    }

    /// No rules, nothing persisted, no commands: the bridge without alerts (tests, benches).
    pub fn disabled() -> Alerting {
        let (_, requests) = mpsc::channel(1);
        Alerting {
            rules: Arc::default(),
            store: None,
            saved: Saved::default(),
            requests,
            retention: Duration::ZERO,
            close_cleared_after: Duration::MAX,
            webhook: webhook::WebhookConfig::default(),
        }
    }
}
