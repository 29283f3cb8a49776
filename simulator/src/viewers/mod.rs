//! Fake dashboard viewers: many WebSocket sessions, each viewing a window of devices and
//! scrolling now and then, measuring the delay from a reading's publish (its `ts`) to its
//! arrival on the viewer's screen, and from the reading that raised an alert (the alert's
//! `reading_ts`) to the alert's arrival.
//!
//! The delay includes everything between the device and the screen: the broker, the
//! bridge's coalescing (`bridge.live_interval`) and the dashboard's tick (`dashboard.tick`).
//! Alerts skip both: they are pushed at once.
//!
//! - `latency`: the sharded HDR histogram.
//! - `session`: one viewer.
//! - `discover`: device ids from a dashboard's `/api/devices`.

mod discover;
pub mod latency;
mod session;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use discover::{discover_devices, http_get};
pub use latency::{LatencyRecorder, Percentiles};
pub use session::ViewerCounters;

use crate::stats::{per_second, Progress};
use crate::SimulatorError;
use session::ViewerTask;

/// How often the plain progress line is logged.
const LINE_EVERY: Duration = Duration::from_secs(10);
/// Most groups one viewer subscribes to: the dashboard's default `max_view_groups`.
const MAX_GROUPS_PER_VIEWER: usize = 100;

/// A crowd of fake viewers.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewerConfig {
    /// The dashboard's WebSocket: `ws://HOST:PORT/ws`.
    pub url: String,
    /// Concurrent sessions.
    pub viewers: usize,
    /// Devices each session views.
    pub visible: usize,
    /// The ids to view; `None` asks the dashboard's `/api/devices` for them.
    pub devices: Option<Vec<String>>,
    /// Groups to subscribe to (`groups`), so that their alerts reach viewers whatever they
    /// view. More than [`MAX_GROUPS_PER_VIEWER`] are shared out in chunks of that size,
    /// subscriber by subscriber.
    pub groups: Vec<String>,
    /// How many viewers (the first ones) subscribe to `groups`; the others view only.
    pub group_viewers: usize,
    /// Mean time between a viewer's scrolls (a new `view`); `None` never scrolls.
    pub scroll_every: Option<Duration>,
    /// Stop after this long; `None` runs until shutdown.
    pub duration: Option<Duration>,
    /// Sessions open spread evenly over this, so the server is not hit all at once.
    pub ramp: Duration,
    /// Seed of the windows and scroll times.
    pub seed: u64,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        ViewerConfig {
            url: "ws://127.0.0.1:8080/ws".into(),
            viewers: 10,
            visible: 100,
            devices: None,
            groups: Vec::new(),
            group_viewers: 0,
            scroll_every: Some(Duration::from_secs(30)),
            duration: None,
            ramp: Duration::from_secs(1),
            seed: 1,
        }
    }
}

impl ViewerConfig {
    /// `host:port` of the dashboard's HTTP side, from the WebSocket URL.
    ///
    /// # Errors
    /// The URL is not `ws://HOST:PORT/...`.
    pub fn http_base(&self) -> Result<String, SimulatorError> {
        let rest = self.url.strip_prefix("ws://").ok_or_else(|| {
            SimulatorError::Viewers(format!("{}: use ws://HOST:PORT/ws", self.url))
        })?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(SimulatorError::Viewers(format!("{}: no host", self.url)));
        }
        Ok(authority.to_string())
    }

    fn validate(&self) -> Result<(), SimulatorError> {
        if self.viewers == 0 || self.visible == 0 {
            return Err(SimulatorError::Viewers(
                "--viewers and --visible must be at least 1".into(),
            ));
        }
        if self.viewers > crate::config::MAX_CONNECTIONS {
            return Err(SimulatorError::Viewers(format!(
                "{} viewers exceed the {} sockets one process may open",
                self.viewers,
                crate::config::MAX_CONNECTIONS
            )));
        }
        self.http_base().map(|_| ())
    }
}

/// A running crowd of viewers, for callers that measure a window of it (benchmarks).
#[derive(Debug)]
pub struct Viewers {
    config: ViewerConfig,
    devices: usize,
    counters: Arc<ViewerCounters>,
    latency: Arc<LatencyRecorder>,
    alert_latency: Arc<LatencyRecorder>,
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Start of the measurement window, with the byte count then.
    window: (Instant, u64),
}

impl Viewers {
    /// Finds the devices (unless given), then opens the sessions over the ramp.
    ///
    /// # Errors
    /// The config is invalid, or discovery failed or found no device.
    pub async fn start(
        config: ViewerConfig,
        progress: Progress,
        shutdown: &CancellationToken,
    ) -> Result<Viewers, SimulatorError> {
        config.validate()?;
        let ids: Arc<[String]> = match &config.devices {
            Some(ids) => ids.clone().into(),
            None => discover_devices(&config.http_base()?).await?.into(),
        };
        if ids.is_empty() {
            return Err(SimulatorError::Viewers(
                "no devices to view: the dashboard knows none yet".into(),
            ));
        }
        let counters = Arc::new(ViewerCounters::default());
        let latency = Arc::new(LatencyRecorder::default());
        let alert_latency = Arc::new(LatencyRecorder::default());
        let group_chunks: Vec<Arc<[String]>> = config
            .groups
            .chunks(MAX_GROUPS_PER_VIEWER)
            .map(Arc::from)
            .collect();
        let tracker = TaskTracker::new();
        let stop = shutdown.child_token();
        let url: Arc<str> = config.url.clone().into();
        let started = Instant::now();
        for number in 0..config.viewers {
            let task = ViewerTask {
                number,
                url: Arc::clone(&url),
                ids: Arc::clone(&ids),
                visible: config.visible,
                groups: (number < config.group_viewers && !group_chunks.is_empty())
                    .then(|| Arc::clone(&group_chunks[number % group_chunks.len()])),
                scroll_every: config.scroll_every,
                start_at: started + config.ramp.mul_f64(number as f64 / config.viewers as f64),
                seed: config.seed ^ (number as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                counters: Arc::clone(&counters),
                latency: Arc::clone(&latency),
                alert_latency: Arc::clone(&alert_latency),
            };
            tracker.spawn(task.run(stop.clone()));
        }
        if progress != Progress::Off {
            tracker.spawn(log_progress(
                Arc::clone(&counters),
                Arc::clone(&latency),
                config.viewers,
                stop.clone(),
            ));
        }
        tracker.close();
        info!(viewers = config.viewers, visible = config.visible, devices = ids.len(), url = %config.url, "fake viewers starting");
        Ok(Viewers {
            devices: ids.len(),
            config,
            counters,
            latency,
            alert_latency,
            tracker,
            stop,
            window: (started, 0),
        })
    }

    /// The live counters.
    pub fn counters(&self) -> &Arc<ViewerCounters> {
        &self.counters
    }

    /// Starts the measurement window now: latency and bytes count from here.
    pub fn start_window(&mut self) {
        self.latency.reset();
        self.alert_latency.reset();
        self.window = (Instant::now(), self.counters.bytes.load(Ordering::Relaxed));
    }

    /// Waits for the configured duration (or the caller's shutdown).
    pub async fn run_for(&self, duration: Option<Duration>) {
        match duration {
            Some(duration) => tokio::select! {
                () = self.stop.cancelled() => {}
                () = sleep(duration) => {}
            },
            None => self.stop.cancelled().await,
        }
    }

    /// What the window measured so far, without stopping.
    pub fn summary(&self) -> ViewerSummary {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let elapsed = self.window.0.elapsed();
        let bytes = load(&self.counters.bytes) - self.window.1;
        let viewers = self.config.viewers;
        ViewerSummary {
            viewers,
            visible: self.config.visible,
            devices: self.devices,
            peak_connected: load(&self.counters.peak_connected),
            connected_at_end: load(&self.counters.connected),
            frames: load(&self.counters.frames),
            states: load(&self.counters.states),
            alert_frames: load(&self.counters.alert_frames),
            scrolls: load(&self.counters.scrolls),
            errors: load(&self.counters.errors),
            connect_failures: load(&self.counters.connect_failures),
            disconnects: load(&self.counters.disconnects),
            bytes_per_second_per_viewer: per_second(bytes, elapsed) / viewers as f64,
            latency: self.latency.percentiles(),
            alert_latency: self.alert_latency.percentiles(),
            window_seconds: elapsed.as_secs_f64(),
        }
    }

    /// Closes every session and sums up the window.
    pub async fn stop(self) -> ViewerSummary {
        let summary = self.summary();
        self.stop.cancel();
        self.tracker.wait().await;
        info!(%summary, "fake viewers stopped");
        summary
    }
}

/// Runs fake viewers for `config.duration` (or until `shutdown`) and sums up.
///
/// # Errors
/// See [`Viewers::start`].
pub async fn run(
    config: ViewerConfig,
    progress: Progress,
    shutdown: CancellationToken,
) -> Result<ViewerSummary, SimulatorError> {
    let duration = config.duration;
    let viewers = Viewers::start(config, progress, &shutdown).await?;
    viewers.run_for(duration).await;
    Ok(viewers.stop().await)
}

/// What a crowd of viewers saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewerSummary {
    /// Sessions asked for.
    pub viewers: usize,
    /// Devices each viewed.
    pub visible: usize,
    /// Devices they chose their windows from.
    pub devices: usize,
    /// Most sessions open at once.
    pub peak_connected: u64,
    /// Sessions open when the summary was taken.
    pub connected_at_end: u64,
    /// Snapshots and updates received.
    pub frames: u64,
    /// Device states received in updates.
    pub states: u64,
    /// `alert` frames received (every change, not only raises).
    pub alert_frames: u64,
    /// Scrolls (new views) sent.
    pub scrolls: u64,
    /// `error` frames and unreadable frames received.
    pub errors: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Sessions lost while the run went on.
    pub disconnects: u64,
    /// Bytes received per second per viewer over the window.
    pub bytes_per_second_per_viewer: f64,
    /// Reading→viewer delays over the window.
    pub latency: Percentiles,
    /// Reading→viewer delays of alert raises over the window: arrival − the raising
    /// reading's `ts`, once per raise and viewer.
    pub alert_latency: Percentiles,
    /// Length of the measurement window.
    pub window_seconds: f64,
}

impl std::fmt::Display for ViewerSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} viewers × {} devices (peak {} connected): {} frames, {} states, {:.0} B/s per viewer, \
             {} scrolls, {} errors, {} disconnects; reading→viewer {}",
            self.viewers,
            self.visible,
            self.peak_connected,
            self.frames,
            self.states,
            self.bytes_per_second_per_viewer,
            self.scrolls,
            self.errors,
            self.disconnects,
            self.latency
        )?;
        if self.alert_frames > 0 {
            write!(
                f,
                "; {} alert frames, alert raise→viewer {}",
                self.alert_frames,
                self.alert_latency.counting("raises")
            )?;
        }
        Ok(())
    }
}

async fn log_progress(
    counters: Arc<ViewerCounters>,
    latency: Arc<LatencyRecorder>,
    viewers: usize,
    stop: CancellationToken,
) {
    let mut ticks = interval_at(Instant::now() + LINE_EVERY, LINE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let p = latency.percentiles();
        info!(
            connected = counters.connected.load(Ordering::Relaxed),
            viewers,
            states = counters.states.load(Ordering::Relaxed),
            p50_ms = p.p50_ms,
            p99_ms = p.p99_ms,
            errors = counters.errors.load(Ordering::Relaxed),
            disconnects = counters.disconnects.load(Ordering::Relaxed),
            "fake viewers progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_http_side_of_the_websocket_url() {
        let config = ViewerConfig {
            url: "ws://127.0.0.1:8080/ws".into(),
            ..ViewerConfig::default()
        };
        assert_eq!(config.http_base(), Ok("127.0.0.1:8080".to_string()));
        let bad = ViewerConfig {
            url: "http://x/ws".into(),
            ..ViewerConfig::default()
        };
        assert!(bad.validate().is_err());
        let none = ViewerConfig {
            viewers: 0,
            ..ViewerConfig::default()
        };
        assert!(none.validate().is_err());
    }
}
