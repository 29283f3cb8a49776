//! The HTTP routes, called in process through the router (`tower::ServiceExt::oneshot`):
//! status codes, content types, the token guard and the JSON errors, with a real hub behind
//! them and no socket.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::config::DashboardConfig;

/// A router over a running hub fed by nothing, as a dashboard with no bridge yet; `token`
/// guards `/api/*` and `/ws` when given.
fn app(token: Option<&str>) -> Router {
    let config = DashboardConfig::default();
    let shutdown = CancellationToken::new();
    let (updates_tx, updates) = tokio::sync::mpsc::channel(1);
    let (hub, hub_task) = crate::hub::create(
        config.tick,
        config.viewer_queue_bytes,
        updates,
        shutdown.clone(),
    );
    let mut metrics = Registry::default();
    metrics.register_collector(Box::new(hub.stats.clone()));
    tokio::spawn(hub_task);
    // The hub stops when its input closes, as it does when the bridge stops: keep it open.
    tokio::spawn(async move {
        let _open = updates_tx;
        std::future::pending::<()>().await;
    });
    router(AppState {
        hub,
        limits: SessionLimits::from(&config),
        max_message_bytes: config.max_message_bytes,
        viewer_slots: Arc::new(Semaphore::new(config.max_viewers)),
        token: token.map(Arc::from),
        sessions: TaskTracker::new(),
        shutdown,
        history: None,
        alerts: AlertAccess::default(),
        metrics: Arc::new(metrics),
    })
}

async fn call(app: Router, request: Request<Body>) -> (StatusCode, header::HeaderMap, String) {
    let response = app.oneshot(request).await.expect("the router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("a request")
}

#[tokio::test]
async fn health_page_and_unknown_paths() {
    let (status, _, body) = call(app(None), get("/healthz")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );
    let (status, headers, body) = call(app(None), get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .is_ok_and(|t| t.starts_with("text/html")));
    assert!(body.contains("<html"), "{body}");
    let (status, _, body) = call(app(None), get("/no/such/page")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("\"error\""), "errors are JSON: {body}");
}

#[tokio::test]
async fn assets_carry_their_type_and_an_etag_that_revalidates() {
    let (status, headers, body) = call(app(None), get("/assets/app.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], JS);
    assert!(!body.is_empty());
    let etag = headers[header::ETAG].clone();
    let revalidate = Request::get("/assets/app.js")
        .header(header::IF_NONE_MATCH, etag)
        .body(Body::empty())
        .expect("a request");
    let (status, _, body) = call(app(None), revalidate).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    let (status, _, _) = call(app(None), get("/assets/..%2Fapi.rs")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_token_guards_the_api_but_not_the_page_or_health() {
    let (status, _, body) = call(app(Some("s3cret")), get("/api/devices")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, _) = call(app(Some("s3cret")), get("/api/devices?token=wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let bearer = Request::get("/api/devices")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .expect("a request");
    let (status, _, body) = call(app(Some("s3cret")), bearer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = call(app(Some("s3cret")), get("/api/devices?token=s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    for open in ["/", "/healthz", "/assets/style.css"] {
        let (status, _, _) = call(app(Some("s3cret")), get(open)).await;
        assert_eq!(status, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn bad_parameters_are_refused_with_a_reason() {
    let (status, _, body) = call(app(None), get("/api/devices?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("limit must be between 1 and"), "{body}");
    let (status, _, body) = call(app(None), get("/api/devices?offset=-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = call(app(None), get("/api/devices")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"total\":0"), "{body}");
}

#[tokio::test]
async fn without_a_store_or_a_bridge_history_and_commands_say_why() {
    let (status, _, body) = call(app(None), get("/api/history?device=d&metric=t")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("history is not available"), "{body}");
    let ack = Request::post("/api/alerts/1/ack")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("a request");
    let (status, _, body) = call(app(None), ack).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (status, headers, body) = call(app(None), get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], metrics::CONTENT_TYPE);
    assert!(body.contains("# TYPE iotmon_viewers gauge"), "{body}");
    assert!(
        body.contains("\niotmon_viewer_frames_sent_total 0\n"),
        "{body}"
    );
    assert!(
        body.contains("\niotmon_viewed_devices 0\n"),
        "per-scrape gauges: {body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
}
