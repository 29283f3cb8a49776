//! The driver: runs one surface on a stream of generated inputs and counts what went wrong.
//!
//! Each input runs under `catch_unwind`, so a panic is counted (and its input kept) and the
//! run goes on. An input slower than the time limit counts as a hang; one that never returns
//! is caught by a watchdog thread, which saves it and ends the process, as libFuzzer does.
//! Panics on other threads (the broker's tasks and router) are seen through a panic hook.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

/// One input surface of iotmon: how to make inputs for it and how to check one.
pub trait Surface {
    /// The name used on the command line and in reports.
    fn name(&self) -> &'static str;
    /// Writes one input into `out` (cleared by the caller): usually a well-formed input,
    /// mutated.
    fn generate(&mut self, rng: &mut SmallRng, out: &mut Vec<u8>);
    /// Feeds `input` to the code under test. `Err` is a broken expectation (the code
    /// survived but answered wrongly); a panic is a crash.
    ///
    /// # Errors
    /// What was expected and what happened instead.
    fn check(&mut self, input: &[u8]) -> Result<(), String>;
    /// Brings the surface back to a known state after a crash or a failure.
    fn reset(&mut self) {}
}

/// How long a run is and where it keeps what it finds.
#[derive(Debug, Clone)]
pub struct Options {
    /// Inputs to run.
    pub inputs: u64,
    /// Seed of the input stream: the same seed gives the same inputs.
    pub seed: u64,
    /// An input taking longer than this counts as a hang.
    pub time_limit: Duration,
    /// An input still running after this ends the process (a true infinite loop).
    pub abort_after: Duration,
    /// Stop early after this long, whatever `inputs` says.
    pub max_time: Option<Duration>,
    /// Where crashing and hanging inputs are written (`<surface>-<kind>-<n>.bin`).
    pub artifacts: Option<PathBuf>,
    /// Print a progress line this often.
    pub progress: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            inputs: 10_000,
            seed: 1,
            time_limit: Duration::from_secs(1),
            abort_after: Duration::from_secs(60),
            max_time: None,
            artifacts: None,
            progress: None,
        }
    }
}

/// What went wrong on one input.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `crash` (a panic), `failure` (a broken expectation) or `hang` (over the time limit).
    pub kind: &'static str,
    /// The panic message or the expectation broken.
    pub message: String,
    pub input: Vec<u8>,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub surface: &'static str,
    pub inputs: u64,
    pub elapsed: Duration,
    pub crashes: u64,
    pub failures: u64,
    pub hangs: u64,
    /// The slowest input.
    pub slowest: Duration,
    /// Resident memory before the first input and after the last, KiB.
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// The first findings (at most [`KEPT_FINDINGS`]).
    pub findings: Vec<Finding>,
}

/// Findings kept in a report; later ones are only counted.
pub const KEPT_FINDINGS: usize = 20;

impl Report {
    pub fn inputs_per_second(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nothing went wrong.
    pub fn is_clean(&self) -> bool {
        self.crashes == 0 && self.failures == 0 && self.hangs == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<8} {:>11} inputs in {:>7.1} s ({:>9.0}/s): {} crashes, {} failures, {} hangs; \
             slowest {:.1} ms; RSS {} -> {} KiB",
            self.surface,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.inputs_per_second(),
            self.crashes,
            self.failures,
            self.hangs,
            self.slowest.as_secs_f64() * 1e3,
            self.rss_start_kib,
            self.rss_end_kib,
        )
    }
}

thread_local! {
    /// Set on a thread while it runs inputs: its panics are caught and reported by the driver.
    static DRIVING: Cell<bool> = const { Cell::new(false) };
    /// The last panic message on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics on threads that are not running inputs (the broker's), since the process started.
static OTHER_PANICS: AtomicU64 = AtomicU64::new(0);
/// The message of the latest of those.
static OTHER_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Installs the panic hook once: a driving thread's panics are recorded silently (they are
/// reported with their input); other threads' panics are counted, and printed as usual.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = info.to_string();
            if DRIVING.with(Cell::get) {
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(message));
            } else {
                OTHER_PANICS.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut other) = OTHER_PANIC.lock() {
                    *other = Some(message);
                }
                previous(info);
            }
        }));
    });
}

/// Panics so far on threads that run no inputs, and the latest message.
pub fn other_panics() -> (u64, Option<String>) {
    let message = OTHER_PANIC.lock().ok().and_then(|m| m.clone());
    (OTHER_PANICS.load(Ordering::SeqCst), message)
}

/// The resident set size of this process, KiB (0 where /proc is not available).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the watchdog needs to see of the input running now.
#[derive(Debug, Default)]
struct Current {
    /// Milliseconds since the run began when the current input started; 0 when idle.
    started_ms: AtomicU64,
    input: Mutex<Vec<u8>>,
}

/// Runs one input, as a run would: `Err` says what went wrong (a panic on any thread, or a
/// broken expectation). For replaying saved inputs and for regression tests.
///
/// # Errors
/// The panic message or the expectation broken.
pub fn check_one(surface: &mut dyn Surface, input: &[u8]) -> Result<(), String> {
    install_panic_hook();
    DRIVING.with(|driving| driving.set(true));
    let (before, _) = other_panics();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| surface.check(input)));
    DRIVING.with(|driving| driving.set(false));
    let (after, message) = other_panics();
    match outcome {
        Err(_) => Err(format!(
            "crash: {}",
            LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_default()
        )),
        Ok(Ok(())) if after != before => Err(format!("crash: {}", message.unwrap_or_default())),
        Ok(result) => result,
    }
}

/// Runs `surface` as `options` say and returns its figures.
pub fn run(surface: &mut dyn Surface, options: &Options) -> Report {
    install_panic_hook();
    DRIVING.with(|driving| driving.set(true));
    let mut rng = SmallRng::seed_from_u64(options.seed);
    let began = Instant::now();
    let current = Arc::new(Current::default());
    let watchdog = start_watchdog(surface.name(), current.clone(), began, options);
    let mut report = Report {
        surface: surface.name(),
        inputs: 0,
        elapsed: Duration::ZERO,
        crashes: 0,
        failures: 0,
        hangs: 0,
        slowest: Duration::ZERO,
        rss_start_kib: rss_kib(),
        rss_end_kib: 0,
        findings: Vec::new(),
    };
    let mut input = Vec::new();
    let mut last_progress = Instant::now();
    let (mut seen_other, _) = other_panics();
    while report.inputs < options.inputs {
        if options.max_time.is_some_and(|max| began.elapsed() >= max) {
            break;
        }
        input.clear();
        surface.generate(&mut rng, &mut input);
        if let Ok(mut shown) = current.input.lock() {
            shown.clone_from(&input);
        }
        let started = Instant::now();
        let since_start = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        current
            .started_ms
            .store(since_start.max(1), Ordering::SeqCst);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| surface.check(&input)));
        current.started_ms.store(0, Ordering::SeqCst);
        let took = started.elapsed();
        report.inputs += 1;
        report.slowest = report.slowest.max(took);
        let (now_other, other_message) = other_panics();
        let finding = match outcome {
            Ok(Ok(())) if now_other == seen_other => None,
            Ok(Ok(())) => Some(("crash", other_message.unwrap_or_default())),
            Ok(Err(message)) => Some(("failure", message)),
            Err(_) => {
                let message = LAST_PANIC.with(|last| last.borrow_mut().take());
                Some(("crash", message.unwrap_or_default()))
            }
        };
        seen_other = now_other;
        let finding = finding
            .or_else(|| (took > options.time_limit).then(|| ("hang", format!("took {took:?}"))));
        if let Some((kind, message)) = finding {
            record(&mut report, options, kind, message, &input);
            if kind != "hang" {
                surface.reset();
            }
        }
        if let Some(every) = options.progress {
            if last_progress.elapsed() >= every {
                last_progress = Instant::now();
                report.elapsed = began.elapsed();
                report.rss_end_kib = rss_kib();
                eprintln!("{report}");
            }
        }
    }
    report.elapsed = began.elapsed();
    report.rss_end_kib = rss_kib();
    watchdog.stop();
    DRIVING.with(|driving| driving.set(false));
    report
}

fn record(
    report: &mut Report,
    options: &Options,
    kind: &'static str,
    message: String,
    input: &[u8],
) {
    let count = match kind {
        "crash" => &mut report.crashes,
        "failure" => &mut report.failures,
        _ => &mut report.hangs,
    };
    *count += 1;
    let number = *count;
    if let Some(dir) = &options.artifacts {
        if number <= KEPT_FINDINGS as u64 {
            let path = dir.join(format!("{}-{kind}-{number}.bin", report.surface));
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(&path, input);
        }
    }
    if report.findings.len() < KEPT_FINDINGS {
        report.findings.push(Finding {
            kind,
            message,
            input: input.to_vec(),
        });
    }
}

/// Ends the process when an input runs past `abort_after`.
struct Watchdog {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start_watchdog(
    surface: &'static str,
    current: Arc<Current>,
    began: Instant,
    options: &Options,
) -> Watchdog {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let abort_after = options.abort_after;
    let artifacts = options.artifacts.clone();
    let thread = std::thread::spawn(move || {
        while !stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            let started_ms = current.started_ms.load(Ordering::SeqCst);
            if started_ms == 0 {
                continue;
            }
            let running_ms = u64::try_from(began.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .saturating_sub(started_ms);
            if running_ms < u64::try_from(abort_after.as_millis()).unwrap_or(u64::MAX) {
                continue;
            }
            let input = current.input.lock().map(|i| i.clone()).unwrap_or_default();
            if let Some(dir) = &artifacts {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join(format!("{surface}-timeout.bin")), &input);
            }
            eprintln!(
                "{surface}: an input has run for {running_ms} ms; giving up. Input ({} bytes): {}",
                input.len(),
                escape(&input)
            );
            std::process::exit(70);
        }
    });
    Watchdog {
        stop,
        thread: Some(thread),
    }
}

/// `input` printable: ASCII as is, other bytes as `\xNN`.
pub fn escape(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}
