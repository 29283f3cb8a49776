//! The HTTP routes: the web UI, the REST API, health and metrics, and the WebSocket upgrade.

use std::sync::Arc;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use iotmon_wire::metrics::MetricsSource;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::{DevicePage, DeviceQuery, HubHandle};
use crate::session::{serve_viewer, SessionLimits};

/// The page, compiled into the binary: users need nothing but `iotmon` to run the UI.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// Most devices one `/api/devices` page may hold.
const MAX_PAGE: usize = 500;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub hub: HubHandle,
    pub limits: SessionLimits,
    pub max_message_bytes: usize,
    /// Viewer sessions, awaited on shutdown so each is told to reconnect.
    pub sessions: TaskTracker,
    pub shutdown: CancellationToken,
    /// Other parts of the process whose counters `/metrics` exports (the bridge in `serve`).
    pub metrics_sources: Vec<Arc<dyn MetricsSource>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The dashboard's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ws", get(websocket))
        .route("/api/devices", get(devices))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// An API error: a status code and a message for the caller, as JSON.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound,
    /// The hub has stopped (the server is shutting down).
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "no such route".to_string()),
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

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn websocket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let AppState {
        hub,
        limits,
        sessions,
        shutdown,
        max_message_bytes,
        ..
    } = state;
    upgrade
        .max_message_size(max_message_bytes)
        .max_frame_size(max_message_bytes)
        .on_upgrade(move |socket| {
            sessions.track_future(serve_viewer(socket, hub, limits, shutdown))
        })
}

/// Query string of `/api/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesParams {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    q: Option<String>,
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
    let query = DeviceQuery {
        offset: params.offset,
        limit,
        text: params.q.filter(|q| !q.is_empty()),
    };
    let page = state
        .hub
        .list_devices(query)
        .await
        .ok_or(ApiError::Unavailable)?;
    Ok(Json(page))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = String::new();
    state.hub.stats.render_prometheus(&mut text);
    for source in &state.metrics_sources {
        source.render_prometheus(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
