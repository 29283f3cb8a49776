//! The HTTP routes: the web UI, the REST API, health and metrics, and the WebSocket upgrade.
//! The alert routes are in [`alerts`].

mod alerts;
#[cfg(test)]
mod routes_tests;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use iotmon_wire::metrics::{self, Registry};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use iotmon_wire::history::{HistoryQuery, HistorySeries, HistorySource};
use iotmon_wire::unix_millis;

use crate::alerts::AlertAccess;
use crate::hub::{DevicePage, DeviceQuery, DeviceSort, DeviceStatus, GroupNode, HubHandle};
use crate::session::{serve_viewer, SessionLimits};
use crate::websocket::Handshake;

/// The page, compiled into the binary: users need nothing but `iotmon` to run the UI.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// What the page loads from `/assets/`: its style sheet and its script as ES modules (no build
/// step), compiled into the binary like the page. Name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", CSS, include_str!("../assets/style.css")),
    ("app.js", JS, include_str!("../assets/app.js")),
    ("state.js", JS, include_str!("../assets/state.js")),
    ("util.js", JS, include_str!("../assets/util.js")),
    ("connection.js", JS, include_str!("../assets/connection.js")),
    ("devices.js", JS, include_str!("../assets/devices.js")),
    ("groups.js", JS, include_str!("../assets/groups.js")),
    ("alerts.js", JS, include_str!("../assets/alerts.js")),
    (
        "alert-model.js",
        JS,
        include_str!("../assets/alert-model.js"),
    ),
    ("detail.js", JS, include_str!("../assets/detail.js")),
    ("chart.js", JS, include_str!("../assets/chart.js")),
    ("grid-model.js", JS, include_str!("../assets/grid-model.js")),
    // uPlot, vendored (see assets/VENDORED.md), loaded when a device panel first opens.
    (
        "uPlot.iife.min.js",
        JS,
        include_str!("../assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        CSS,
        include_str!("../assets/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE.txt",
        TEXT,
        include_str!("../assets/uPlot.LICENSE.txt"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Most devices one `/api/devices` page may hold.
const MAX_PAGE: usize = 500;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub hub: HubHandle,
    pub limits: SessionLimits,
    pub max_message_bytes: usize,
    /// One permit per viewer allowed at once (`max_viewers`).
    pub viewer_slots: Arc<Semaphore>,
    /// The token `/api/*` and `/ws` require, when configured.
    pub token: Option<Arc<str>>,
    /// Viewer sessions, awaited on shutdown so each is told to reconnect.
    pub sessions: TaskTracker,
    pub shutdown: CancellationToken,
    /// The store's history (metrics and alerts), when this dashboard can read it (always in
    /// `serve`).
    pub history: Option<Arc<dyn HistorySource>>,
    /// Alert commands, history and rules.
    pub alerts: AlertAccess,
    /// The process's metrics registry, which `/metrics` exports: the hub's counters and,
    /// in `serve`, the broker's and the bridge's.
    pub metrics: Arc<Registry>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The dashboard's routes.
pub fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/ws", get(websocket))
        .route("/api/devices", get(devices))
        .route("/api/groups", get(groups))
        .route("/api/history", get(history))
        .route("/api/alerts", get(alerts::list))
        .route("/api/alerts/{id}", get(alerts::one))
        .route("/api/alerts/{id}/ack", post(alerts::acknowledge))
        .route("/api/alerts/{id}/shelve", post(alerts::shelve))
        .route("/api/alerts/{id}/unshelve", post(alerts::unshelve))
        .route("/api/rules", get(alerts::rules))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(guarded)
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// An API error: a status code and a message for the caller, as JSON.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    /// The viewer token is missing or wrong.
    Unauthorized,
    NotFound,
    /// No open alert with this id (or, for history, none at all).
    NoSuchAlert(iotmon_wire::AlertId),
    /// Alert commands cannot be carried out here (why).
    AlertsUnavailable(&'static str),
    /// `max_viewers` are connected already.
    TooManyViewers,
    /// History needs the store, which this dashboard cannot read.
    NoStore,
    /// The store failed; the details go to the log, not to the caller.
    Store,
    /// A partitioned bridge asked for history did not answer in time.
    BridgeSilent(String),
    /// The hub has stopped (the server is shutting down).
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid viewer token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)"
                    .to_string(),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "no such route".to_string()),
            ApiError::NoSuchAlert(id) => (StatusCode::NOT_FOUND, format!("no open alert {id}")),
            ApiError::AlertsUnavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
            ApiError::NoStore => (
                StatusCode::SERVICE_UNAVAILABLE,
                "history is not available: this dashboard has no access to the store \
                 (run it with the bridge's --data-dir, or with --partitions N to ask \
                 partitioned bridges)"
                    .to_string(),
            ),
            ApiError::Store => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store could not be read; see the server log".to_string(),
            ),
            ApiError::BridgeSilent(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("history is not available: {why}; try again later"),
            ),
            ApiError::TooManyViewers => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many viewers are connected; try again later".to_string(),
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down".to_string(),
            ),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// One of the page's [`ASSETS`]. Browsers revalidate on every load (`no-cache`) against the
/// asset's ETag, so a page never runs modules from two different builds.
async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some((content_type, body)) = find_asset(&name) else {
        return ApiError::NotFound.into_response();
    };
    let etag = asset_etag(body);
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|value| value.as_bytes() == etag.as_bytes());
    let headers = [
        (header::CONTENT_TYPE, content_type.to_string()),
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (header::ETAG, etag),
    ];
    if cached {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, body).into_response()
    }
}

/// The content type and content of the asset `name`.
fn find_asset(name: &str) -> Option<(&'static str, &'static str)> {
    ASSETS
        .iter()
        .find(|(asset, _, _)| *asset == name)
        .map(|(_, content_type, body)| (*content_type, *body))
}

/// A strong ETag for an asset: FNV-1a of its content (stable across builds and runs).
fn asset_etag(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Read buffer of each viewer's WebSocket. Viewers send a few small messages a minute, and
/// tungstenite zero-fills its whole read buffer on every read: at its default of 128 KiB that
/// buffer was most of a viewer's memory. A larger message still arrives: the buffer grows to
/// fit it, up to `max_message_bytes`, and keeps that size for the life of the connection
/// (~20 KB after a `view` of 1,000 devices, 10.5 MiB for 1,000 such viewers). tungstenite
/// 0.29 gives no way to shrink it: the buffer is private to its codec, `set_config` leaves
/// it as it is, and a socket rebuilt from `WebSocketStream::into_inner` would lose whatever
/// the viewer sent after that message. Only a reader of our own, or a fork, could.
const VIEWER_READ_BUFFER_BYTES: usize = 4 * 1024;

async fn websocket(
    State(state): State<AppState>,
    handshake: Handshake,
) -> Result<Response, ApiError> {
    let slot = state
        .viewer_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyViewers)?;
    let AppState {
        hub,
        alerts,
        limits,
        sessions,
        shutdown,
        max_message_bytes,
        ..
    } = state;
    let config = WebSocketConfig::default()
        .read_buffer_size(VIEWER_READ_BUFFER_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes));
    let (response, socket) = handshake.accept(config);
    tokio::spawn(sessions.track_future(async move {
        if let Some(socket) = socket.open().await {
            serve_viewer(socket, hub, alerts, limits, shutdown, slot).await;
        }
    }));
    Ok(response)
}

/// Lets a request through only with the configured token (when there is one).
async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.token else {
        return Ok(next.run(request).await);
    };
    let presented = bearer_token(&request).or_else(|| query_token(request.uri().query()));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

fn bearer_token(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value.strip_prefix("Bearer ").map(str::to_string)
}

/// The `token` query parameter, whatever other parameters the query holds.
fn query_token(query: Option<&str>) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenParam {
        token: Option<String>,
    }
    let uri = format!("/?{}", query?).parse().ok()?;
    let Query(params) = Query::<TokenParam>::try_from_uri(&uri).ok()?;
    params.token
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Query string of `/api/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesParams {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    q: Option<String>,
    /// Only devices under this group path.
    group: Option<String>,
    /// Only devices that are `alerting`, `offline` or `online`.
    state: Option<String>,
    /// `group` (group path then id, the default), `id`, `seen` (latest reading) or
    /// `metric:NAME` (that metric's latest value).
    sort: Option<String>,
    /// `asc` (the default) or `desc`.
    order: Option<String>,
    /// The viewer token: checked by `require_token`, accepted here so it is not unknown.
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// The `state` filter of `/api/devices`.
fn device_status(state: Option<&str>) -> Result<Option<DeviceStatus>, ApiError> {
    match state.unwrap_or("") {
        "" => Ok(None),
        "alerting" => Ok(Some(DeviceStatus::Alerting)),
        "offline" => Ok(Some(DeviceStatus::Offline)),
        "online" => Ok(Some(DeviceStatus::Online)),
        other => Err(ApiError::BadRequest(format!(
            "unknown state {other:?}: expected alerting, offline or online"
        ))),
    }
}

/// The `sort` and `order` of `/api/devices`.
fn device_sort(sort: Option<&str>, order: Option<&str>) -> Result<(DeviceSort, bool), ApiError> {
    let sort = match sort.unwrap_or("") {
        "" | "group" => DeviceSort::Group,
        "id" => DeviceSort::Id,
        "seen" => DeviceSort::LastSeen,
        other => match other.strip_prefix("metric:") {
            Some(name) if !name.is_empty() => DeviceSort::Metric(name.to_string()),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown sort {other:?}: expected group, id, seen or metric:NAME"
                )))
            }
        },
    };
    let descending = match order.unwrap_or("asc") {
        "asc" => false,
        "desc" => true,
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown order {other:?}: expected asc or desc"
            )))
        }
    };
    Ok((sort, descending))
}

async fn devices(
    State(state): State<AppState>,
    params: Result<Query<DevicesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DevicePage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let (sort, descending) = device_sort(params.sort.as_deref(), params.order.as_deref())?;
    let query = DeviceQuery {
        offset: params.offset,
        limit,
        text: params.q.filter(|q| !q.is_empty()),
        group: params.group.filter(|g| !g.is_empty()),
        status: device_status(params.state.as_deref())?,
        sort,
        descending,
    };
    let page = state
        .hub
        .list_devices(query)
        .await
        .ok_or(ApiError::Unavailable)?;
    Ok(Json(page))
}

#[derive(Debug, serde::Serialize)]
struct GroupTree {
    groups: Vec<GroupNode>,
}

async fn groups(State(state): State<AppState>) -> Result<Json<GroupTree>, ApiError> {
    let groups = state.hub.list_groups().await.ok_or(ApiError::Unavailable)?;
    Ok(Json(GroupTree { groups }))
}

/// Query string of `/api/history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    device: String,
    metric: String,
    /// Start, ms since the epoch (default: one hour before `to`).
    from: Option<i64>,
    /// End, ms since the epoch (default: now).
    to: Option<i64>,
    /// Most points wanted (default 300).
    points: Option<usize>,
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// Most points one history request may ask for.
const MAX_HISTORY_POINTS: usize = iotmon_wire::history::MAX_SERIES_POINTS;
const DEFAULT_HISTORY_SPAN_MS: i64 = 3_600_000;

async fn history(
    State(state): State<AppState>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistorySeries>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let query = history_query(params, unix_millis())?;
    let reader = state.history.clone().ok_or(ApiError::NoStore)?;
    let answer = tokio::task::spawn_blocking(move || reader.series(&query)).await;
    match answer {
        Ok(Ok(series)) => Ok(Json(series)),
        Ok(Err(error)) => {
            tracing::warn!(%error, "history query failed");
            Err(ApiError::from_history(&error))
        }
        Err(_) => Err(ApiError::Store),
    }
}

impl ApiError {
    /// What a failed history read tells the caller: a partitioned bridge that did not answer
    /// is named (the operator can act on it), anything else is a store failure whose details
    /// stay in the log.
    fn from_history(error: &iotmon_wire::history::HistoryError) -> ApiError {
        match error
            .source
            .downcast_ref::<crate::remote_history::NoAnswer>()
        {
            Some(silent) => ApiError::BridgeSilent(silent.to_string()),
            None => ApiError::Store,
        }
    }
}

/// Checks `/api/history`'s parameters and fills in the defaults.
fn history_query(params: HistoryParams, now: i64) -> Result<HistoryQuery, ApiError> {
    let to = params.to.unwrap_or(now);
    let from = params.from.unwrap_or(to - DEFAULT_HISTORY_SPAN_MS);
    let max_points = params.points.unwrap_or(300);
    if from >= to {
        return Err(ApiError::BadRequest(
            "\"from\" must be before \"to\"".into(),
        ));
    }
    if !(2..=MAX_HISTORY_POINTS).contains(&max_points) {
        return Err(ApiError::BadRequest(format!(
            "\"points\" must be between 2 and {MAX_HISTORY_POINTS}"
        )));
    }
    if params.device.is_empty() || params.metric.is_empty() {
        return Err(ApiError::BadRequest(
            "\"device\" and \"metric\" must not be empty".into(),
        ));
    }
    Ok(HistoryQuery {
        device: params.device,
        metric: params.metric,
        from,
        to,
        max_points,
        now,
    })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The process's registry (this dashboard's counters and whatever else runs in the
/// process), then the viewer gauges the hub computes for this scrape.
async fn metrics(State(state): State<AppState>) -> Response {
    let mut per_scrape = Registry::default();
    if let Some(gauges) = state.hub.gauges().await {
        per_scrape.register_collector(Box::new(gauges));
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&[&state.metrics, &per_scrape]),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: Option<i64>, to: Option<i64>, points: Option<usize>) -> HistoryParams {
        HistoryParams {
            device: "d1".into(),
            metric: "t".into(),
            from,
            to,
            points,
            _token: None,
        }
    }

    #[test]
    fn history_parameters_default_to_the_last_hour() {
        let query = history_query(params(None, None, None), 10_000_000).expect("valid");
        assert_eq!(
            (query.from, query.to, query.max_points),
            (6_400_000, 10_000_000, 300)
        );
        assert!(matches!(
            history_query(params(Some(5), Some(5), None), 0),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            history_query(params(None, None, Some(1)), 0),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            history_query(params(None, None, Some(5000)), 0),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn every_module_the_page_imports_is_served_with_its_content_type() {
        // The page and each module name what they load; each must be in ASSETS.
        let mut sources = vec![INDEX_HTML];
        sources.extend(ASSETS.iter().map(|(_, _, body)| *body));
        for source in sources {
            for name in source
                .split(['"', '\''])
                .filter_map(|s| s.strip_prefix("./").or_else(|| s.strip_prefix("assets/")))
            {
                assert!(
                    find_asset(name).is_some(),
                    "{name} is loaded but not served"
                );
            }
        }
        assert_eq!(find_asset("app.js").map(|a| a.0), Some(JS));
        assert_eq!(find_asset("style.css").map(|a| a.0), Some(CSS));
        assert!(find_asset("../api.rs").is_none());
        assert_ne!(asset_etag("a"), asset_etag("b"));
    }

    #[test]
    fn device_list_parameters_name_a_sort_an_order_and_a_state() {
        assert!(matches!(
            device_sort(None, None),
            Ok((DeviceSort::Group, false))
        ));
        assert!(matches!(
            device_sort(Some("seen"), Some("desc")),
            Ok((DeviceSort::LastSeen, true))
        ));
        assert!(matches!(
            device_sort(Some("metric:temperature"), None),
            Ok((DeviceSort::Metric(name), false)) if name == "temperature"
        ));
        for (sort, order) in [
            (Some("metric:"), None),
            (Some("size"), None),
            (None, Some("up")),
        ] {
            assert!(matches!(
                device_sort(sort, order),
                Err(ApiError::BadRequest(_))
            ));
        }
        assert!(matches!(
            device_status(Some("alerting")),
            Ok(Some(DeviceStatus::Alerting))
        ));
        assert!(matches!(device_status(Some("")), Ok(None)));
        assert!(matches!(
            device_status(Some("asleep")),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn finds_the_token_among_query_parameters() {
        assert_eq!(query_token(Some("limit=5&token=abc")), Some("abc".into()));
        assert_eq!(query_token(Some("limit=5")), None);
        assert_eq!(query_token(Some("token=a%20b")), Some("a b".into()));
    }
}
