//! A real third-party MQTT broker for tests: Debian's `mosquitto`, started on a free loopback
//! port and killed when the guard is dropped.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long mosquitto may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between attempts to connect while waiting for it.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A running mosquitto; dropping it kills the process.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
}

impl Mosquitto {
    /// Starts mosquitto on a free port and returns once it accepts connections.
    ///
    /// # Panics
    /// The `mosquitto` binary is not installed, it exits, or it is not listening in time.
    pub fn start() -> Mosquitto {
        let port = free_port();
        Mosquitto::spawn(port, &["-p", &port.to_string()])
    }

    /// Starts mosquitto with a configuration file holding `settings` after a loopback
    /// listener line (e.g. `allow_anonymous false`, `password_file ...`). The file is written
    /// under `dir`.
    ///
    /// # Panics
    /// As [`Mosquitto::start`], or the file cannot be written.
    pub fn start_with(dir: &std::path::Path, settings: &str) -> Mosquitto {
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, format!("listener {port} 127.0.0.1\n{settings}\n"))
            .expect("write mosquitto.conf");
        Mosquitto::spawn(port, &["-c", config.to_str().expect("UTF-8 path")])
    }

    fn spawn(port: u16, args: &[&str]) -> Mosquitto {
        let child = Command::new("mosquitto")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| match error.kind() {
                ErrorKind::NotFound => panic!(
                    "the `mosquitto` binary is not installed; this test needs a real MQTT \
                     broker: run `apt-get install -y mosquitto` (CI installs it)"
                ),
                _ => panic!("could not start mosquitto: {error}"),
            });
        let mut broker = Mosquitto { child, port };
        broker.wait_until_listening();
        broker
    }

    /// Polls the port until mosquitto accepts a connection, failing at once if it exits.
    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mosquitto exited before listening on port {}: {status}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto was not listening on port {} within {START_DEADLINE:?}",
                self.port
            );
            thread::sleep(POLL_EVERY);
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Errors here mean it has already exited, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now: bound by the OS, then released.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}
