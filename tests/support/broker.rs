//! Helpers for the broker tests: `iotmon broker` as a process with its own config and data
//! directory, and Debian's `mosquitto_sub` / `mosquitto_pub` and the paho-mqtt check script
//! as clients. Every wait polls with a deadline; nothing sleeps for readiness.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{http_get, TempDir, DEADLINE};

/// A running `iotmon broker`, killed when dropped.
pub struct BrokerProcess {
    child: Child,
    /// Bound addresses by listener name (`mqtt`, `mqtt5`, `mqtt-ws`, `mqtts`, `http`).
    pub listeners: BTreeMap<String, SocketAddr>,
    pub data_dir: TempDir,
}

impl BrokerProcess {
    /// Starts `iotmon broker` with `[broker]` settings `broker_toml` (listeners on port 0) and
    /// an HTTP endpoint, and waits for the start-up lines of `wanted` listeners and `http`.
    /// `devices` are registered first, as (device id, password).
    pub fn start(broker_toml: &str, wanted: &[&str], devices: &[(&str, &str)]) -> BrokerProcess {
        let data_dir = TempDir::new("broker");
        for (id, password) in devices {
            add_device(data_dir.path(), id, password);
        }
        let config = format!("{}/iotmon.toml", data_dir.path());
        std::fs::write(&config, format!("[broker]\n{broker_toml}\n")).expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_iotmon"))
            .args(["broker", "--config", &config, "--data-dir", data_dir.path()])
            .args([
                "--mqtt-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("iotmon starts");
        let lines = read_lines(child.stdout.take().expect("stdout is piped"));
        let mut listeners = BTreeMap::new();
        let deadline = Instant::now() + DEADLINE;
        while !wanted
            .iter()
            .chain(&["mqtt", "http"])
            .all(|kind| listeners.contains_key(*kind))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("iotmon broker printed its listeners in time");
            if let Some((kind, addr)) = line.split_once(" listening on ") {
                let addr = addr.trim_start_matches("http://");
                listeners.insert(kind.to_string(), addr.parse().expect("an address"));
            }
        }
        BrokerProcess {
            child,
            listeners,
            data_dir,
        }
    }

    /// The port of listener `kind`.
    pub fn port(&self, kind: &str) -> u16 {
        self.listeners[kind].port()
    }

    /// The process id, to read its memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.listeners["http"], "/metrics").await;
        assert_eq!(status, 200, "/metrics answers");
        body
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers `id` with `password` through `iotmon devices add --password-stdin`.
pub fn add_device(data_dir: &str, id: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotmon"))
        .args([
            "devices",
            "--data-dir",
            data_dir,
            "add",
            id,
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("iotmon devices starts");
    writeln!(child.stdin.take().expect("stdin is piped"), "{password}").expect("password sent");
    let output = child.wait_with_output().expect("iotmon devices ends");
    assert!(output.status.success(), "iotmon devices add {id} failed");
}

/// The value of an unlabelled sample, or of one with exactly `labels`.
pub fn sample(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{metrics}"))
}

/// Lines of `stream`, read on a thread of their own.
fn read_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A `mosquitto_sub -d` process: its debug lines say when the SUBACK arrived and how each
/// PUBLISH came (QoS, retain flag).
pub struct MosquittoSub {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -d -p PORT ARGS...` and waits for its SUBACK. ARGS name the
    /// host (`-h`).
    pub fn start(port: u16, args: &[&str]) -> MosquittoSub {
        // Line-buffered: mosquitto_sub only flushes after a message, not after its debug
        // lines, so without this the SUBACK line would arrive late.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs (Debian package mosquitto-clients)");
        let lines = read_lines(child.stdout.take().expect("stdout is piped"));
        let mut sub = MosquittoSub {
            child,
            lines,
            seen: Vec::new(),
        };
        sub.wait_for(|line| line.contains("received SUBACK"));
        sub
    }

    /// Reads lines until one satisfies `wanted`, and returns it; fails at the deadline.
    pub fn wait_for(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|line| wanted(line)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "mosquitto_sub never printed the line wanted; saw {:?}",
                    self.seen
                )
            });
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// Reads lines, without keeping them, until `counted` has accepted `wanted` of them;
    /// fails at the deadline with how many it accepted.
    pub fn count_lines(&mut self, wanted: usize, mut counted: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        let mut count = 0;
        while count < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("mosquitto_sub printed {count} of the {wanted} lines wanted")
            });
            if counted(&line) {
                count += 1;
            }
        }
    }

    /// Freezes the client (SIGSTOP): its socket stays open but it sends and reads nothing,
    /// not even keep-alive pings.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a frozen client run again (SIGCONT).
    pub fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "{signal} delivered");
    }

    /// Kills the client abruptly (no DISCONNECT).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `mosquitto_pub -p PORT ARGS...` to completion. ARGS name the host (`-h`). A client
/// that hangs (a broker that never answers) fails the test at the deadline.
pub fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    let mut command = Command::new("mosquitto_pub");
    command.args(["-p", &port.to_string()]).args(args);
    run_with_deadline(command, "mosquitto_pub (Debian package mosquitto-clients)")
}

/// Runs `command` with its output captured, killing it and failing at the deadline.
fn run_with_deadline(mut command: Command, what: &str) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{what} cannot run: {error}"));
    wait_with_deadline(child, what)
}

/// Waits for `child` to exit and returns its output; kills it and fails at the deadline.
pub fn wait_with_deadline(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("child status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
}

/// Runs one check of `tests/interop/paho_check.py` (paho-mqtt, pinned in scripts/test.sh)
/// and fails the test with its output if the check fails.
pub fn paho_check(check: &str, port: u16, credentials: Option<(&str, &str)>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_check.py");
    let mut command = Command::new("python3");
    command.args([script, check, "127.0.0.1", &port.to_string()]);
    if let Some((user, password)) = credentials {
        command.args([user, password]);
    }
    let output = run_with_deadline(
        command,
        "python3 with paho-mqtt (pip install paho-mqtt==2.1.0)",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "paho check {check} failed:\n{stdout}\n{stderr}"
    );
}

/// Debian's mosquitto broker (2.0.11) on a free port, anonymous, in memory; killed when
/// dropped. One listener serves MQTT 3.1.1 and 5.
pub struct MosquittoBroker {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl MosquittoBroker {
    /// Starts `/usr/sbin/mosquitto` and waits until it accepts connections.
    pub fn start() -> MosquittoBroker {
        let dir = TempDir::new("mosquitto");
        // A port the system just handed out and gave back; mosquitto cannot bind port 0.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let config = format!("{}/mosquitto.conf", dir.path());
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .expect("config written");
        let child = Command::new("/usr/sbin/mosquitto")
            .args(["-c", &config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (Debian package mosquitto)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        MosquittoBroker {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for MosquittoBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
