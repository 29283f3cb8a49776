//! Panics are bugs, and a process must never run on half-dead. Every panic is logged and
//! counted (`iotmon_panics_total`). A panic in a task that serves one client (a device
//! connection, a viewer session) ends that task alone. A panic in a task the whole process
//! depends on — a bridge shard, the aggregator, the alert manager, the dashboard hub, an MQTT
//! listener, the broker's router thread, the store thread — is fatal: the process shuts down
//! and exits with a non-zero status, so that its supervisor (systemd, Kubernetes) restarts it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::metrics::{encode_one, Collector, DescriptorEncoder, Kind};

/// Panics since the process started, whatever the thread or task.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Why the process must stop, once something fatal happened (the first reason wins).
static FATAL: OnceLock<String> = OnceLock::new();

/// The token that shuts the process down, cancelled on a fatal panic.
static SHUTDOWN: OnceLock<CancellationToken> = OnceLock::new();

/// OS threads the process cannot do without, by name prefix: the broker's router (rumqttd
/// names it `router-<id>`) and the store's writer.
const CRITICAL_THREADS: [&str; 2] = ["router-", "iotmon-store"];

/// Installs the process-wide panic hook (logs with the thread and location, counts, and
/// treats a panic on a critical thread as fatal) and registers `shutdown` as what a fatal
/// panic cancels. Call once, early in `main`.
pub fn install(shutdown: CancellationToken) {
    let _ = SHUTDOWN.set(shutdown);
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let message = panic_message(info.payload());
        error!(thread, location, message, "panic");
        if CRITICAL_THREADS
            .iter()
            .any(|prefix| thread.starts_with(prefix))
        {
            fatal(format!("thread {thread} panicked at {location}: {message}"));
        }
    }));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Records that the process must stop because of `reason`, and starts the shutdown.
pub fn fatal(reason: String) {
    error!(reason, "fatal: shutting down");
    let _ = FATAL.set(reason);
    if let Some(shutdown) = SHUTDOWN.get() {
        shutdown.cancel();
    }
}

/// Why the process must exit with an error, if something fatal happened.
pub fn fatal_reason() -> Option<&'static str> {
    FATAL.get().map(String::as_str)
}

/// Panics counted so far.
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Runs `task`, one the process cannot do without: if it panics, the process shuts down
/// (see [`fatal`]) instead of running on without it.
pub async fn critical<F: Future<Output = ()>>(name: &'static str, task: F) {
    if AssertUnwindSafe(task).catch_unwind().await.is_err() {
        fatal(format!("{name} panicked"));
    }
}

/// Exports `iotmon_panics_total`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PanicMetrics;

impl Collector for PanicMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        encode_one(
            &mut encoder,
            "iotmon_panics_total",
            "Panics in any thread or task (a critical one stops the process).",
            Kind::Counter,
            panics(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_critical_task_stops_the_process_and_others_are_counted() {
        let shutdown = CancellationToken::new();
        install(shutdown.clone());
        let before = panics();
        // A task serving one client: it ends alone, counted.
        let isolated = tokio::spawn(async { panic!("one viewer's bug") }).await;
        assert!(isolated.is_err());
        assert!(!shutdown.is_cancelled(), "one client's task is not fatal");
        assert!(fatal_reason().is_none());
        // A task the process depends on: fatal.
        critical("the hub", async { panic!("the hub's bug") }).await;
        assert!(shutdown.is_cancelled());
        assert_eq!(fatal_reason(), Some("the hub panicked"));
        assert_eq!(panics() - before, 2);
        let mut registry = crate::metrics::Registry::default();
        registry.register_collector(Box::new(PanicMetrics));
        let text = crate::metrics::render(&[&registry]);
        assert!(text.contains("iotmon_panics_total"), "{text}");
    }
}
