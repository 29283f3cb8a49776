//! A small HTTP endpoint for a role running alone without the dashboard (`iotmon broker`,
//! `iotmon bridge`): `/metrics` (its counters in the Prometheus text format) and `/healthz`.
//! With `serve`, the dashboard serves both.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use iotmon_wire::metrics::MetricsSource;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The routes, without a server: tests call it directly.
pub fn app(metrics: Arc<dyn MetricsSource>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn render(State(metrics): State<Arc<dyn MetricsSource>>) -> impl IntoResponse {
    let mut text = String::new();
    metrics.render_prometheus(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Serves [`app`] on `listener` until `shutdown`.
///
/// # Errors
/// The listener fails while accepting.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<dyn MetricsSource>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app(metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
