//! The store as a dashboard's history source: rollups from `iotmon.db`, alerts from
//! `alerts.db`, both read beside their writers.

use std::path::Path;

use iotmon_wire::alert::AlertTransition;
use iotmon_wire::history::{AlertQuery, HistoryError, HistoryQuery, HistorySeries, HistorySource};
use iotmon_wire::{Alert, AlertId};

use crate::alerts::store::AlertReader;
use crate::config::BridgeConfig;
use crate::store::HistoryReader;

/// The bridge's store under a data directory, read-only.
#[derive(Debug, Clone)]
pub struct StoreHistory {
    rollups: HistoryReader,
    alerts: AlertReader,
}

impl StoreHistory {
    /// The store under `data_dir`, as a bridge configured with `config` writes it.
    pub fn new(data_dir: &Path, config: &BridgeConfig) -> Self {
        StoreHistory {
            rollups: HistoryReader::new(data_dir, config),
            alerts: AlertReader::new(data_dir),
        }
    }
}

fn boxed(error: impl std::error::Error + Send + Sync + 'static) -> HistoryError {
    HistoryError {
        source: Box::new(error),
    }
}

impl HistorySource for StoreHistory {
    fn series(&self, query: &HistoryQuery) -> Result<HistorySeries, HistoryError> {
        self.rollups.query(query).map_err(boxed)
    }

    fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, HistoryError> {
        self.alerts.alerts(query).map_err(boxed)
    }

    fn alert(&self, id: AlertId) -> Result<Option<(Alert, Vec<AlertTransition>)>, HistoryError> {
        let Some(alert) = self.alerts.alert(id).map_err(boxed)? else {
            return Ok(None);
        };
        let transitions = self.alerts.transitions(id).map_err(boxed)?;
        Ok(Some((alert, transitions)))
    }
}
