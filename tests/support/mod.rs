//! Helpers for the end-to-end tests: real `iotmon` processes, a real MQTT client (rumqttc)
//! and a real WebSocket viewer (tokio-tungstenite). Nothing here sleeps to wait for
//! readiness: every wait polls for its condition with a deadline.

pub mod broker;
pub mod certificate;
pub mod embedded;
pub mod mosquitto;
pub mod mqtt;
pub mod subscriber;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// `iotmon serve` run in this process (`iotmon::roles::serve`) on free ports, keeping its
/// data in a fresh temp dir; stopped when dropped. For tests about what the server does,
/// where a separate process (start-up lines, signals, `kill -9`) is not the point: it starts
/// in milliseconds and fails with the server's own error.
pub struct InProcessServe {
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    _data_dir: TempDir,
}

impl InProcessServe {
    /// Serves with `config` (the TOML of a configuration file), anonymous devices allowed.
    pub async fn start(config: &str) -> InProcessServe {
        let data_dir = TempDir::new("in-process");
        let mut config = iotmon::config::Config::parse(config).expect("a valid config");
        config.data_dir = data_dir.dir().to_path_buf();
        config.broker.mqtt_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.dashboard.http_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.broker.allow_anonymous = true;
        config.validate().expect("a usable config");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (listening_tx, listening) = tokio::sync::oneshot::channel();
        let served = tokio::spawn(iotmon::roles::serve(
            config,
            None,
            shutdown.clone(),
            Some(listening_tx),
        ));
        let listening = match tokio::time::timeout(DEADLINE, listening).await {
            Ok(Ok(listening)) => listening,
            Ok(Err(_)) => panic!("serve stopped before listening: {:?}", served.await),
            Err(_) => panic!("serve not listening within {DEADLINE:?}"),
        };
        InProcessServe {
            mqtt: listening.mqtt,
            http: listening.http,
            shutdown,
            _data_dir: data_dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }
}

impl Drop for InProcessServe {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How long any single condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How often [`eventually`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// What a probe of [`eventually`] answers: `true` or `Some(value)` or `Ok(value)` once the
/// condition holds; `false`, `None` or `Err(what was seen)` while it does not.
pub trait Settled {
    type Value;
    /// The value once settled, or what was seen instead (for the failure message).
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl Settled for bool {
    type Value = ();
    fn settled(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Debug> Settled for Result<T, E> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(format!("{seen:?}")))
    }
}

/// Runs `probe` every few milliseconds until it settles and returns its value; fails the test
/// naming `what` (and the last thing seen) once `deadline` has passed. Every test waits for
/// state this way, never with a fixed sleep.
pub async fn eventually<F, Fut>(
    deadline: Duration,
    what: &str,
    mut probe: F,
) -> <Fut::Output as Settled>::Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
    Fut::Output: Settled,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        let seen = match probe().await.settled() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= give_up {
            match seen {
                Some(seen) => panic!("{what}: not within {deadline:?}; last seen: {seen}"),
                None => panic!("{what}: not within {deadline:?}"),
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A running `iotmon` process, killed when dropped.
pub struct Iotmon {
    child: Child,
    lines: std_mpsc::Receiver<String>,
    pub mqtt: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    _data_dir: Option<TempDir>,
}

impl Iotmon {
    /// Starts `iotmon ARGS...` and waits until it has printed the listener lines named by
    /// `wait_mqtt` / `wait_http`.
    pub fn start(args: &[&str], wait_mqtt: bool, wait_http: bool) -> Iotmon {
        Iotmon::start_with_env(args, &[], wait_mqtt, wait_http)
    }

    /// As [`Iotmon::start`], with extra environment variables.
    pub fn start_with_env(
        args: &[&str],
        envs: &[(&str, &str)],
        wait_mqtt: bool,
        wait_http: bool,
    ) -> Iotmon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iotmon"))
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("iotmon starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut iotmon = Iotmon {
            child,
            lines,
            mqtt: None,
            http: None,
            _data_dir: None,
        };
        let deadline = Instant::now() + DEADLINE;
        while (wait_mqtt && iotmon.mqtt.is_none()) || (wait_http && iotmon.http.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = iotmon
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("iotmon {args:?} did not print its addresses in time"));
            if let Some(addr) = line.strip_prefix("mqtt listening on ") {
                iotmon.mqtt = Some(addr.parse().expect("an address"));
            }
            if let Some(addr) = line.strip_prefix("http listening on http://") {
                iotmon.http = Some(addr.parse().expect("an address"));
            }
        }
        iotmon
    }

    /// `iotmon broker` on a free port, letting devices connect without credentials.
    pub fn anonymous_broker() -> Iotmon {
        let args = [
            "broker",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--allow-anonymous",
        ];
        Iotmon::start(&args, true, false)
    }

    /// `iotmon serve` on free ports with a data directory of its own.
    pub fn serve() -> Iotmon {
        Iotmon::serve_with_config("")
    }

    /// `iotmon serve` on free ports, with `config` (TOML) as its configuration file.
    pub fn serve_with_config(config: &str) -> Iotmon {
        let data_dir = TempDir::new("serve");
        let config_path = format!("{}/iotmon.toml", data_dir.path());
        std::fs::write(&config_path, config).expect("config file written");
        let mut iotmon = Iotmon::serve_in(data_dir.path(), &["--config", &config_path]);
        iotmon._data_dir = Some(data_dir);
        iotmon
    }

    /// `iotmon serve` on free ports keeping its data in `data_dir` (which the caller owns, so
    /// a later process can reopen it), with `extra` arguments.
    pub fn serve_in(data_dir: &str, extra: &[&str]) -> Iotmon {
        let mut args = vec![
            "serve",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--allow-anonymous",
            "--data-dir",
            data_dir,
        ];
        args.extend_from_slice(extra);
        Iotmon::start(&args, true, true)
    }

    pub fn mqtt_url(&self) -> String {
        format!("mqtt://{}", self.mqtt.expect("an MQTT listener"))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http.expect("an HTTP listener"))
    }

    /// Kills the process with SIGKILL (`kill -9`: no shutdown, no flush) and reaps it.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("reaped");
    }

    /// Sends SIGTERM and waits for the exit status, within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "iotmon did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Iotmon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let unique = format!(
            "iotmon-test-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_suffix()
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    u128::from(RandomState::new().hash_one(std::thread::current().id()))
}

/// A real MQTT device-side client.
pub struct Publisher {
    client: AsyncClient,
    _eventloop: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Publisher {
        Publisher::connect_as(addr, client_id, None).await
    }

    /// Connects as `client_id`, logging in with that name and `password` when given.
    pub async fn connect_as(
        addr: SocketAddr,
        client_id: &str,
        password: Option<&str>,
    ) -> Publisher {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        if let Some(password) = password {
            options.set_credentials(client_id, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(DEADLINE, connected)
            .await
            .expect("MQTT connect in time")
            .expect("connected");
        Publisher {
            client,
            _eventloop: task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish queued");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self._eventloop.abort();
    }
}

/// A real WebSocket viewer that records every device state it receives.
pub struct Viewer {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Latest state per device id, from snapshots and updates.
    pub devices: BTreeMap<String, Value>,
    /// Every device id ever received.
    pub seen: BTreeSet<String>,
    /// Every message received, in order.
    pub messages: Vec<Value>,
}

impl Viewer {
    pub async fn connect(url: &str) -> Viewer {
        let (socket, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect in time")
            .expect("WebSocket connects");
        Viewer::over(socket)
    }

    /// A viewer whose TCP receive buffer is tiny, so that when it stops reading the server's
    /// writes back up within a few frames.
    pub async fn connect_with_small_buffer(url: &str, addr: SocketAddr) -> Viewer {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let stream = socket.connect(addr).await.expect("TCP connect");
        let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("WebSocket handshake");
        Viewer::over(socket)
    }

    fn over(socket: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Viewer {
        Viewer {
            socket,
            devices: BTreeMap::new(),
            seen: BTreeSet::new(),
            messages: Vec::new(),
        }
    }

    /// Reads until the server closes the connection (or `wait` passes); returns the close
    /// frame's code and reason, if the server sent one.
    pub async fn read_until_closed(&mut self, wait: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(Some(Ok(message))) => self.record(message),
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("the server did not close the connection within {wait:?}"),
            }
        }
    }

    pub async fn send(&mut self, message: Value) {
        self.try_send(message).await.expect("send to dashboard");
    }

    /// Sends, reporting failure (the server may have closed the connection) instead of
    /// panicking.
    pub async fn try_send(
        &mut self,
        message: Value,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
    }

    pub async fn view(&mut self, devices: &[&str]) {
        self.send(serde_json::json!({"type": "view", "devices": devices}))
            .await;
    }

    /// Reads messages for at most `wait`, recording them; returns early when `until` holds.
    /// Returns whether `until` held.
    pub async fn read_until(&mut self, wait: Duration, until: impl Fn(&Viewer) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !until(self) {
            let next = tokio::time::timeout_at(deadline, self.socket.next()).await;
            let Ok(Some(Ok(message))) = next else {
                return until(self);
            };
            self.record(message);
        }
        true
    }

    fn record(&mut self, message: Message) {
        let Message::Text(text) = message else { return };
        let value: Value = serde_json::from_str(&text).expect("dashboard sends JSON");
        if let Some(devices) = value.get("devices").and_then(Value::as_array) {
            for device in devices {
                let id = device["id"].as_str().expect("device id").to_string();
                self.seen.insert(id.clone());
                self.devices.insert(id, device.clone());
            }
        }
        self.messages.push(value);
    }

    /// The latest value of `metric` for `device`, if received.
    pub fn metric(&self, device: &str, metric: &str) -> Option<f64> {
        self.devices.get(device)?["metrics"][metric].as_f64()
    }

    /// Whether a message of `kind` has been received.
    pub fn got(&self, kind: &str) -> bool {
        self.messages.iter().any(|m| m["type"] == kind)
    }
}

/// A plain HTTP GET; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "").await
}

/// A plain HTTP GET with extra header lines (each ending in `\r\n`).
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    http_request(addr, "GET", path, headers, "").await
}

/// A plain HTTP POST of a JSON body; returns the status code and body.
pub async fn http_post(addr: SocketAddr, path: &str, json: &Value) -> (u16, String) {
    let headers = "Content-Type: application/json\r\n";
    http_request(addr, "POST", path, headers, &json.to_string()).await
}

/// One HTTP/1.1 request on a connection of its own; returns the status code and body.
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let response = iotmon_probe::http::request(&addr.to_string(), method, path, headers, body)
        .await
        .unwrap_or_else(|error| panic!("{method} http://{addr}{path}: {error}"));
    (response.status, response.body)
}

/// The value of the unlabelled sample `name` in a `/metrics` text.
pub fn metric_value(metrics: &str, name: &str) -> u64 {
    iotmon_probe::metrics::sample(metrics, name)
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}")) as u64
}
