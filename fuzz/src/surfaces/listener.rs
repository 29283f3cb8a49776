//! Bytes over a real socket into the embedded broker (`EmbeddedBroker`, in process, both its
//! MQTT 3.1.1 and MQTT 5 listeners). After each input the broker must still accept a fresh,
//! well-formed CONNECT with a successful CONNACK.
//!
//! An input is one byte choosing the listener (even: MQTT 3.1.1, odd: MQTT 5), then the bytes
//! to send. The connection's write side is closed after them, so the broker sees the end of
//! its input at once; the input is done when the broker has closed the connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use iotmon_broker::{BrokerConfig, EmbeddedBroker, ListenerKind};
use rand::rngs::SmallRng;
use rand::Rng;

use crate::driver::Surface;
use crate::mqtt::{self, Version};
use crate::mutate::mutate;

/// How long the broker may take to close a connection after its input ended, or to answer
/// the probe's CONNECT.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);
/// Client ids of the inputs' CONNECTs; the probe uses its own.
const CLIENT_IDS: [&str; 3] = ["fuzz-a", "fuzz-b", ""];

/// An embedded broker on loopback and its two TCP listeners.
pub struct Listener {
    runtime: tokio::runtime::Runtime,
    /// The settings each (re)start uses; its listen addresses are replaced by loopback.
    config: BrokerConfig,
    broker: Option<EmbeddedBroker>,
    v4: SocketAddr,
    v5: SocketAddr,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("v4", &self.v4)
            .field("v5", &self.v5)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Starts the broker with its default settings on its own runtime.
    ///
    /// # Panics
    /// The broker cannot start (no loopback, no runtime).
    pub fn start() -> Self {
        Self::start_with(BrokerConfig::default())
    }

    /// Starts the broker with `config` (anonymous, on loopback ports of its own) on its own
    /// runtime.
    ///
    /// # Panics
    /// The broker cannot start (no loopback, no runtime, settings it refuses).
    pub fn start_with(config: BrokerConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("a tokio runtime: {error}"));
        let mut listener = Listener {
            runtime,
            config,
            broker: None,
            v4: SocketAddr::from(([127, 0, 0, 1], 0)),
            v5: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        listener.restart();
        listener
    }

    fn restart(&mut self) {
        self.broker = None;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = BrokerConfig {
            mqtt_listen: loopback,
            mqtt5_listen: Some(loopback),
            allow_anonymous: true,
            ..self.config.clone()
        };
        let broker = self.runtime.block_on(async {
            let mut broker = EmbeddedBroker::start(config, std::path::Path::new("/nonexistent"))
                .unwrap_or_else(|error| panic!("the broker starts: {error}"));
            broker
                .listen()
                .unwrap_or_else(|error| panic!("the broker listens: {error}"));
            broker
        });
        let addr = |kind| broker.bound_addr(kind).unwrap_or(loopback);
        self.v4 = addr(ListenerKind::Mqtt);
        self.v5 = addr(ListenerKind::Mqtt5);
        self.broker = Some(broker);
    }

    /// The address of the listener for `version`.
    pub fn addr(&self, version: Version) -> SocketAddr {
        match version {
            Version::V4 => self.v4,
            Version::V5 => self.v5,
        }
    }

    /// Connects with a well-formed CONNECT and expects a successful CONNACK.
    ///
    /// # Errors
    /// No CONNACK in time, or a refusal.
    pub fn probe(&self, version: Version) -> Result<(), String> {
        let addr = self.addr(version);
        let mut stream = connect(addr)?;
        stream
            .write_all(&mqtt::connect(version, "fuzz-probe", None))
            .map_err(|e| format!("probe: cannot send CONNECT: {e}"))?;
        let mut connack = [0u8; 4];
        stream
            .read_exact(&mut connack)
            .map_err(|e| format!("probe: no CONNACK: {e}"))?;
        // 3.1.1: 20 02 flags code; 5: 20 len flags reason (then properties).
        if connack[0] != 0x20 || connack[3] != 0 {
            return Err(format!("probe: CONNECT refused: {connack:02x?}"));
        }
        let _ = stream.write_all(&mqtt::disconnect());
        Ok(())
    }
}

/// A TCP connection to `addr` with the time limits of this surface.
///
/// # Errors
/// The connection cannot be made.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, ANSWER_LIMIT)
        .map_err(|e| format!("cannot connect to the broker at {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_LIMIT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_LIMIT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

impl Surface for Listener {
    fn name(&self) -> &'static str {
        "listener"
    }

    fn generate(&mut self, rng: &mut SmallRng, out: &mut Vec<u8>) {
        let version = if rng.random_bool(0.5) {
            Version::V4
        } else {
            Version::V5
        };
        out.push(u8::from(version == Version::V5));
        let mut stream = Vec::new();
        // Mostly a good CONNECT first, so that the packets after it reach the router.
        if rng.random_ratio(4, 5) {
            let id = CLIENT_IDS[rng.random_range(0..CLIENT_IDS.len())];
            stream.extend(mqtt::connect(version, id, Some(rng)));
        }
        let connect_len = stream.len();
        for _ in 0..rng.random_range(0..=5) {
            mqtt::any_packet(rng, version, &mut stream);
        }
        if rng.random_ratio(3, 4) {
            // Mutate the packets after the CONNECT most of the time, the CONNECT sometimes.
            let from = if rng.random_ratio(4, 5) {
                connect_len
            } else {
                0
            };
            let mut tail = stream.split_off(from);
            mutate(rng, &mut tail, &mqtt::DICTIONARY);
            stream.extend(tail);
        }
        out.extend(stream);
    }

    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let (version, bytes) = match input.split_first() {
            Some((selector, bytes)) if selector % 2 == 1 => (Version::V5, bytes),
            Some((_, bytes)) => (Version::V4, bytes),
            None => (Version::V4, input),
        };
        let addr = if version == Version::V5 {
            self.v5
        } else {
            self.v4
        };
        let mut stream = connect(addr)?;
        // The broker may close early (a bad packet) and reset the rest: not an error.
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(Shutdown::Write);
        let started = Instant::now();
        let mut sink = [0u8; 4096];
        loop {
            match stream.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Err(format!(
                        "the broker kept the connection open {:?} after its input ended",
                        started.elapsed()
                    ));
                }
                // Reset by the broker: it closed with input unread.
                Err(_) => break,
            }
        }
        self.probe(version)
    }

    fn reset(&mut self) {
        self.restart();
    }
}
