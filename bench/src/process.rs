//! The processes a benchmark measures: `iotmon serve`, `iotmon broker` or Debian's
//! `mosquitto`, started as children on loopback ports, with their CPU time and resident
//! memory read from `/proc/<pid>`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use crate::BenchError;

/// How long a child may take to print its addresses or start listening.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Clock ticks per second in `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// A child process under measurement; killed when dropped.
#[derive(Debug)]
pub struct Measured {
    child: Child,
    /// What it is, for the report (`iotmon serve`, `mosquitto`).
    pub name: String,
    /// Its MQTT listener.
    pub mqtt: SocketAddr,
    /// Its HTTP listener, when it has one.
    pub http: Option<SocketAddr>,
    /// A directory of its own (data dir or config), removed on drop unless the caller gave it
    /// (see [`Options::data_dir`]).
    dir: PathBuf,
    /// Whether `dir` is this process's own, to remove on drop.
    owns_dir: bool,
}

/// How to start `iotmon` beyond the defaults of [`Measured::iotmon`]: what the fault bench
/// needs to kill a process and start another on the same data and the same ports, or to put
/// the data on a filesystem of its own.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The data directory; it outlives the process (the caller removes it). `None`: a
    /// scratch directory of the process's own, removed with it.
    pub data_dir: Option<PathBuf>,
    /// The MQTT listener's address instead of a free port.
    pub mqtt_listen: Option<SocketAddr>,
    /// The HTTP listener's address instead of a free port (`serve`).
    pub http_listen: Option<SocketAddr>,
    /// Where its standard error (the log) goes instead of the bench's own.
    pub log_file: Option<PathBuf>,
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Peak resident set size so far, bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Resident set size now, bytes (`VmRSS`).
    pub rss_bytes: u64,
}

impl Measured {
    /// Starts `iotmon <role> ARGS` (`serve` or `broker`) on free loopback ports and waits for
    /// its start-up lines. `config`, when given, is the text of a configuration file, written
    /// into the process's own directory and passed with `--config`.
    ///
    /// # Errors
    /// It cannot start, exits, or does not print its addresses in time.
    pub fn iotmon(
        exe: &Path,
        role: &str,
        config: Option<&str>,
        extra: &[String],
    ) -> Result<Measured, BenchError> {
        Measured::iotmon_with(exe, role, config, extra, &Options::default())
    }

    /// [`Measured::iotmon`] with [`Options`].
    ///
    /// # Errors
    /// As [`Measured::iotmon`], or the log file cannot be created.
    pub fn iotmon_with(
        exe: &Path,
        role: &str,
        config: Option<&str>,
        extra: &[String],
        options: &Options,
    ) -> Result<Measured, BenchError> {
        let (dir, owns_dir) = match &options.data_dir {
            Some(dir) => (dir.clone(), false),
            None => (scratch_dir(role)?, true),
        };
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut args: Vec<String> = vec![
            role.to_string(),
            "--mqtt-listen".into(),
            options.mqtt_listen.unwrap_or(loopback).to_string(),
            "--allow-anonymous".into(),
            "--data-dir".into(),
        ];
        args.push(dir.display().to_string());
        if role == "serve" {
            let http = options.http_listen.unwrap_or(loopback);
            args.extend(["--http-listen".into(), http.to_string()]);
        }
        if let Some(text) = config {
            let path = dir.join("iotmon.toml");
            std::fs::write(&path, text)
                .map_err(|error| fail(format!("cannot write {}: {error}", path.display())))?;
            args.extend(["--config".into(), path.display().to_string()]);
        }
        args.extend(extra.iter().cloned());
        let stderr = match &options.log_file {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .map_err(|error| fail(format!("cannot create {}: {error}", path.display())))?,
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(exe)
            .args(&args)
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|error| fail(format!("cannot start {}: {error}", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let (lines_tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut measured = Measured {
            child,
            name: format!("iotmon {role}"),
            mqtt: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: None,
            dir,
            owns_dir,
        };
        let wants_http = role == "serve";
        let deadline = Instant::now() + START_DEADLINE;
        while measured.mqtt.port() == 0 || (wants_http && measured.http.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .map_err(|_| fail(format!("iotmon {role} did not print its addresses in time")))?;
            if let Some(addr) = line.strip_prefix("mqtt listening on ") {
                measured.mqtt = parse_addr(addr)?;
            }
            if let Some(addr) = line.strip_prefix("http listening on http://") {
                measured.http = Some(parse_addr(addr)?);
            }
        }
        Ok(measured)
    }

    /// Starts Debian's mosquitto on a free loopback port with anonymous access (its other
    /// settings at their defaults) and waits until it accepts connections.
    ///
    /// # Errors
    /// mosquitto is not installed, exits, or does not listen in time.
    pub fn mosquitto() -> Result<Measured, BenchError> {
        let dir = scratch_dir("mosquitto")?;
        let port = free_port()?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .map_err(|error| fail(format!("cannot write {}: {error}", config.display())))?;
        let exe = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|exe| !exe.starts_with('/') || Path::new(exe).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(exe)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                fail(format!(
                    "cannot start mosquitto ({error}): apt-get install mosquitto"
                ))
            })?;
        let mut measured = Measured {
            child,
            name: "mosquitto".into(),
            mqtt: SocketAddr::from(([127, 0, 0, 1], port)),
            http: None,
            dir,
            owns_dir: true,
        };
        let deadline = Instant::now() + START_DEADLINE;
        while TcpStream::connect(measured.mqtt).is_err() {
            if let Ok(Some(status)) = measured.child.try_wait() {
                return Err(fail(format!("mosquitto exited: {status}")));
            }
            if Instant::now() > deadline {
                return Err(fail("mosquitto did not listen in time".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(measured)
    }

    /// [`Measured::iotmon`] off the async workers: starting waits (blocking) for the child's
    /// start-up lines.
    ///
    /// # Errors
    /// As [`Measured::iotmon`].
    pub async fn start_iotmon(
        exe: &Path,
        role: &'static str,
        config: Option<String>,
        extra: Vec<String>,
    ) -> Result<Measured, BenchError> {
        let exe = exe.to_path_buf();
        tokio::task::spawn_blocking(move || Measured::iotmon(&exe, role, config.as_deref(), &extra))
            .await
            .map_err(|error| fail(format!("starting iotmon {role}: {error}")))?
    }

    /// [`Measured::iotmon_with`] off the async workers.
    ///
    /// # Errors
    /// As [`Measured::iotmon_with`].
    pub async fn start_iotmon_with(
        exe: &Path,
        role: &'static str,
        config: Option<String>,
        extra: Vec<String>,
        options: Options,
    ) -> Result<Measured, BenchError> {
        let exe = exe.to_path_buf();
        tokio::task::spawn_blocking(move || {
            Measured::iotmon_with(&exe, role, config.as_deref(), &extra, &options)
        })
        .await
        .map_err(|error| fail(format!("starting iotmon {role}: {error}")))?
    }

    /// [`Measured::mosquitto`] off the async workers.
    ///
    /// # Errors
    /// As [`Measured::mosquitto`].
    pub async fn start_mosquitto() -> Result<Measured, BenchError> {
        tokio::task::spawn_blocking(Measured::mosquitto)
            .await
            .map_err(|error| fail(format!("starting mosquitto: {error}")))?
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (`kill -9`: no flush, no goodbye) and reaps it.
    pub fn kill_hard(&mut self) {
        // An error means it has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its CPU time and peak memory now.
    ///
    /// # Errors
    /// `/proc/<pid>` cannot be read (the process has exited).
    pub fn usage(&self) -> Result<Usage, BenchError> {
        usage_of(&self.pid().to_string())
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        // Errors mean it has already exited, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// CPU time and peak memory of this process (the load generator).
///
/// # Errors
/// `/proc/self` cannot be read.
pub fn own_usage() -> Result<Usage, BenchError> {
    usage_of("self")
}

/// CPU seconds and peak RSS of process `pid` (a number or `self`) from `/proc`.
pub(crate) fn usage_of(pid: &str) -> Result<Usage, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|error| fail(format!("/proc/{pid}/stat: {error}")))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|error| fail(format!("/proc/{pid}/status: {error}")))?;
    Ok(Usage {
        cpu_seconds: cpu_seconds(&stat).ok_or_else(|| fail(format!("bad /proc/{pid}/stat")))?,
        peak_rss_bytes: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
        rss_bytes: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds. The command
/// name (field 2) may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so field N is index N - 3.
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// A field given in kB (`VmHWM:`, `VmRSS:`) of a `/proc/<pid>/status`.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_addr(text: &str) -> Result<SocketAddr, BenchError> {
    text.trim()
        .parse()
        .map_err(|_| fail(format!("bad address {text:?}")))
}

/// A loopback port nothing listens on right now: bound by the OS, then released.
pub(crate) fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| fail(format!("no free port: {error}")))
}

pub(crate) fn scratch_dir(tag: &str) -> Result<PathBuf, BenchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let dir =
        std::env::temp_dir().join(format!("iotmon-bench-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|error| fail(format!("cannot create {}: {error}", dir.display())))?;
    Ok(dir)
}

fn fail(message: String) -> BenchError {
    BenchError::Failed(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_even_with_spaces_in_the_name() {
        let stat =
            "1234 (iotmon serve) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn reads_memory_fields() {
        let status = "Name:\tiotmon\nVmHWM:\t  204800 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(204_800));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn measures_this_process() {
        let usage = own_usage().expect("/proc/self");
        assert!(usage.cpu_seconds >= 0.0);
        assert!(usage.peak_rss_bytes > 0);
        assert!(usage.rss_bytes > 0 && usage.rss_bytes <= usage.peak_rss_bytes);
    }
}
