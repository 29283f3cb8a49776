//! What a dashboard reads from the store, and the trait it reads it through: the dashboard
//! depends on [`HistorySource`], not on the bridge that keeps the store; the binary wires in
//! the store of the bridge in its process (or none).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::alert::{Alert, AlertId, AlertState, AlertTransition};

/// The most points a series may be asked for: more than a chart can show. The dashboard's
/// `/api/history` refuses more, and so does a bridge asked over MQTT.
pub const MAX_SERIES_POINTS: usize = 2000;

/// The most alerts one list may be asked for (`/api/alerts?limit=`); a bridge asked over MQTT
/// refuses more too.
pub const MAX_ALERTS_LISTED: usize = 1000;

/// A metric's history to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub device: String,
    pub metric: String,
    /// Start of the range, inclusive, ms since the epoch.
    pub from: i64,
    /// End of the range, exclusive.
    pub to: i64,
    pub max_points: usize,
    /// The current time, for retention (injected for tests).
    pub now: i64,
}

/// One bucket of history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Bucket start, ms since the epoch.
    pub ts: i64,
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

/// A metric's history: the points and how they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistorySeries {
    pub device: String,
    pub metric: String,
    /// Width of the tier read, ms.
    pub tier_ms: i64,
    /// Width of each point's bucket, ms.
    pub bucket_ms: i64,
    pub points: Vec<HistoryPoint>,
}

/// Which alerts a history query returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertQuery {
    pub state: Option<AlertState>,
    /// Only alerts about this group (the group itself or a subgroup).
    pub group: Option<String>,
    /// Raised at or after, ms.
    pub from: Option<i64>,
    /// Raised before, ms.
    pub to: Option<i64>,
    pub limit: usize,
}

/// The store could not answer; the source says why, for the log (callers show a generic
/// message).
#[derive(Debug, Error)]
#[error("the store could not be read: {source}")]
pub struct HistoryError {
    #[from]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where history comes from. Every method blocks (a database read): call it from
/// `spawn_blocking` in async code.
pub trait HistorySource: Send + Sync + std::fmt::Debug {
    /// A metric's history, downsampled to at most `query.max_points`, min and max kept.
    ///
    /// # Errors
    /// The store cannot be read.
    fn series(&self, query: &HistoryQuery) -> Result<HistorySeries, HistoryError>;

    /// Alerts matching `query`, newest first.
    ///
    /// # Errors
    /// The store cannot be read.
    fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, HistoryError>;

    /// One alert, open or closed, with its transitions oldest first.
    ///
    /// # Errors
    /// The store cannot be read.
    fn alert(&self, id: AlertId) -> Result<Option<(Alert, Vec<AlertTransition>)>, HistoryError>;
}

/// A history question a dashboard asks the bridge that owns the answer, over MQTT on
/// `iotmon/history/request/<K>`, when it cannot read a store itself (partitioned bridges,
/// each with its own SQLite file). The answer comes back as a [`HistoryReply`] on
/// `reply_to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// Chosen by the asker to match the reply to the question.
    pub id: u64,
    /// The topic to answer on (the asker's own).
    pub reply_to: String,
    pub ask: HistoryAsk,
}

/// What a [`HistoryRequest`] asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryAsk {
    Series(HistoryQuery),
    Alerts(AlertQuery),
    Alert(AlertId),
}

/// The answer to the [`HistoryRequest`] with the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReply {
    pub id: u64,
    pub answer: HistoryAnswer,
}

/// What a [`HistoryReply`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryAnswer {
    Series(HistorySeries),
    Alerts(Vec<Alert>),
    Alert(Option<(Alert, Vec<AlertTransition>)>),
    /// The store could not answer; the bridge logs why, the asker shows a generic error.
    Failed(String),
}

/// Answers `ask` from `source` (blocking, as every [`HistorySource`] method).
pub fn answer(source: &dyn HistorySource, ask: &HistoryAsk) -> HistoryAnswer {
    let answered = match ask {
        HistoryAsk::Series(query) => source.series(query).map(HistoryAnswer::Series),
        HistoryAsk::Alerts(query) => source.alerts(query).map(HistoryAnswer::Alerts),
        HistoryAsk::Alert(id) => source.alert(*id).map(HistoryAnswer::Alert),
    };
    answered.unwrap_or_else(|error| HistoryAnswer::Failed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_through_json() {
        let request = HistoryRequest {
            id: 7,
            reply_to: "iotmon/history/reply/d1".into(),
            ask: HistoryAsk::Series(HistoryQuery {
                device: "dev-1".into(),
                metric: "t".into(),
                from: 1,
                to: 2,
                max_points: 10,
                now: 3,
            }),
        };
        let json = serde_json::to_string(&request).expect("serialize");
        assert!(
            json.contains(r#""ask":{"series":{"device":"dev-1""#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<HistoryRequest>(&json).expect("parse"),
            request
        );
        let reply = HistoryReply {
            id: 7,
            answer: HistoryAnswer::Alert(None),
        };
        let json = serde_json::to_string(&reply).expect("serialize");
        assert_eq!(json, r#"{"id":7,"answer":{"alert":null}}"#);
        assert_eq!(
            serde_json::from_str::<HistoryReply>(&json).expect("parse"),
            reply
        );
    }
}
