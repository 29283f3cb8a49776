//! A small HTTP endpoint for a role running alone without the dashboard (`iotmon broker`,
//! `iotmon bridge`): `/metrics` (its registry in the OpenMetrics text format) and `/healthz`.
//! With `serve`, the dashboard serves both.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use iotmon_wire::metrics::{self, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The routes, without a server: tests call it directly.
pub fn app(metrics: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn render(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&[&registry]),
    )
}

/// Serves [`app`] on `listener` until `shutdown`.
///
/// # Errors
/// The listener fails while accepting.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app(metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
