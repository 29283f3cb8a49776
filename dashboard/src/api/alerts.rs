//! The alert routes: `/api/alerts` (open alerts, or history from the store), one alert with
//! its transitions, acknowledge / shelve / unshelve, and `/api/rules`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use iotmon_wire::alert::{AlertTransition, CommandError};
use iotmon_wire::history::{AlertQuery, HistoryError};
use iotmon_wire::{Alert, AlertCommand, AlertId, AlertState, Severity};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::alerts::{operator, shelve_until, CommandFailure, CommandOutcome};

/// Most alerts one `/api/alerts` answer holds.
const MAX_ALERTS: usize = iotmon_wire::history::MAX_ALERTS_LISTED;

/// Query string of `/api/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsParams {
    /// `active_unacknowledged`, `active_acknowledged`, `cleared_unacknowledged` or `closed`.
    state: Option<String>,
    /// Only alerts under this group (the group itself or a subgroup).
    group: Option<String>,
    severity: Option<String>,
    /// Only suppressed alerts (`true`: those a group alert explains) or only the others.
    suppressed: Option<bool>,
    /// History: raised at or after, ms since the epoch.
    from: Option<i64>,
    /// History: raised before, ms since the epoch.
    to: Option<i64>,
    limit: Option<usize>,
    #[serde(rename = "token")]
    _token: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct AlertList {
    alerts: Vec<Alert>,
}

/// Open alerts from the dashboard's live state, most severe then newest first; with `from`,
/// `to` or `state=closed`, the history from the alert store, newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    params: Result<Query<AlertsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let wanted_state = parse_opt(params.state.as_deref(), AlertState::parse, "state")?;
    let severity = parse_opt(params.severity.as_deref(), Severity::parse, "severity")?;
    let limit = params.limit.unwrap_or(MAX_ALERTS);
    if limit == 0 || limit > MAX_ALERTS {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_ALERTS}"
        )));
    }
    let history =
        params.from.is_some() || params.to.is_some() || wanted_state == Some(AlertState::Closed);
    let mut alerts = if history {
        let reader = state.history.clone().ok_or(ApiError::NoStore)?;
        let query = AlertQuery {
            state: wanted_state,
            group: params.group.clone(),
            from: params.from,
            to: params.to,
            limit,
        };
        blocking(move || reader.alerts(&query)).await?
    } else {
        let mut open = state.hub.list_alerts().await.ok_or(ApiError::Unavailable)?;
        open.retain(|alert| {
            wanted_state.is_none_or(|s| alert.state == s)
                && params.group.as_deref().is_none_or(|g| alert.is_under(g))
        });
        open.sort_by(Alert::screen_order);
        open
    };
    alerts.retain(|alert| {
        severity.is_none_or(|s| alert.severity == s)
            && params
                .suppressed
                .is_none_or(|wanted| alert.suppressed_by.is_some() == wanted)
    });
    alerts.truncate(limit);
    Ok(Json(AlertList { alerts }))
}

/// One alert and every transition it went through.
#[derive(Debug, Serialize)]
pub(super) struct AlertDetail {
    alert: Alert,
    transitions: Vec<AlertTransition>,
}

pub(super) async fn one(
    State(state): State<AppState>,
    Path(id): Path<AlertId>,
) -> Result<Json<AlertDetail>, ApiError> {
    let open = state.hub.list_alerts().await.ok_or(ApiError::Unavailable)?;
    let live = open.into_iter().find(|alert| alert.id == id);
    let stored = match state.history.clone() {
        Some(reader) => blocking(move || reader.alert(id)).await?,
        None => None,
    };
    let (stored, transitions) = match stored {
        Some((alert, transitions)) => (Some(alert), transitions),
        None => (None, Vec::new()),
    };
    let alert = live.or(stored).ok_or(ApiError::NoSuchAlert(id))?;
    Ok(Json(AlertDetail { alert, transitions }))
}

/// Body of the acknowledge and unshelve requests (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ByBody {
    by: Option<String>,
}

/// Body of a shelve request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShelveBody {
    minutes: u32,
    by: Option<String>,
}

/// Who an alert command is by when the request does not say.
const API_OPERATOR: &str = "api";

pub(super) async fn acknowledge(
    State(state): State<AppState>,
    Path(id): Path<AlertId>,
    body: Option<Json<ByBody>>,
) -> Result<Response, ApiError> {
    let by = api_operator(body.map(|Json(b)| b.by).unwrap_or_default())?;
    command(&state, AlertCommand::Acknowledge { id, by }).await
}

pub(super) async fn shelve(
    State(state): State<AppState>,
    Path(id): Path<AlertId>,
    Json(body): Json<ShelveBody>,
) -> Result<Response, ApiError> {
    let until = shelve_until(body.minutes).map_err(ApiError::BadRequest)?;
    let by = api_operator(body.by)?;
    command(&state, AlertCommand::Shelve { id, until, by }).await
}

pub(super) async fn unshelve(
    State(state): State<AppState>,
    Path(id): Path<AlertId>,
    body: Option<Json<ByBody>>,
) -> Result<Response, ApiError> {
    let by = api_operator(body.map(|Json(b)| b.by).unwrap_or_default())?;
    command(&state, AlertCommand::Unshelve { id, by }).await
}

pub(super) async fn rules(State(state): State<AppState>) -> Response {
    (StatusCode::OK, Json(state.alerts.rules.as_ref().clone())).into_response()
}

/// Carries out a command: 200 with the alert as changed, or 202 when it went to a bridge in
/// another process (the change reaches viewers as an `alert` message).
async fn command(state: &AppState, command: AlertCommand) -> Result<Response, ApiError> {
    let id = command.id();
    match state.alerts.command(command).await {
        Ok(CommandOutcome::Applied(alert)) => Ok(Json(*alert).into_response()),
        Ok(CommandOutcome::Forwarded) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "accepted": true, "id": id })),
        )
            .into_response()),
        Err(CommandFailure::Refused(CommandError::NotFound(_))) => Err(ApiError::NoSuchAlert(id)),
        Err(CommandFailure::Refused(why)) => Err(ApiError::BadRequest(why.to_string())),
        Err(CommandFailure::Unavailable(why)) => Err(ApiError::AlertsUnavailable(why)),
    }
}

fn api_operator(by: Option<String>) -> Result<String, ApiError> {
    operator(by, API_OPERATOR).map_err(ApiError::BadRequest)
}

fn parse_opt<T>(
    value: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    value
        .map(|text| {
            parse(text).ok_or_else(|| ApiError::BadRequest(format!("unknown {name} {text:?}")))
        })
        .transpose()
}

/// Runs a store read on the blocking pool; failures are logged, the caller gets a 500 (a
/// 503 when a partitioned bridge did not answer).
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::warn!(%error, "alert store read failed");
            Err(ApiError::from_history(&error))
        }
        Err(_) => Err(ApiError::Store),
    }
}
