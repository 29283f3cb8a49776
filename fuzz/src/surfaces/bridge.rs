//! Device messages into the bridge: topic parsing, payload parsing and a whole shard
//! (`Shard::handle`) on an arbitrary topic and payload.
//!
//! An input is a topic and a payload: two bytes of topic length (big-endian), the topic
//! (lossily UTF-8, as MQTT topics reach the bridge as `String`s), then the payload.

use std::sync::Arc;

use bytes::Bytes;
use iotmon_bridge::alerts::{AlertsConfig, RuleSet};
use iotmon_bridge::ingest::parse_payload;
use iotmon_bridge::shard::Shard;
use iotmon_bridge::{BridgeConfig, BridgeCounters};
use iotmon_wire::mqtt::Message;
use iotmon_wire::topics;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::driver::Surface;
use crate::mutate::{mutate, pick};

/// Receipt time of the first message; each input advances the clock a little.
const START_MS: i64 = 1_704_723_845_000;
/// Inputs between two flushes of the shard (what the bridge's timers do).
const FLUSH_EVERY: u64 = 256;
/// Inputs before the shard is replaced by a fresh one, so its device map stays bounded
/// (a real shard holds the devices of a fleet; a fuzz run invents new ones all the time).
const FRESH_SHARD_EVERY: u64 = 100_000;

/// The bridge's ingest path.
#[derive(Debug)]
pub struct Bridge {
    config: Arc<BridgeConfig>,
    shard: Shard,
    now_ms: i64,
    handled: u64,
}

/// Alert rules of every kind of device rule, so every reading is evaluated too.
const RULES: &str = r#"
[[rules]]
name = "hot"
metric = "t"
above = 30.0
clear = 28.0
for = "2s"
keep_firing_for = "1s"
[[rules]]
name = "rise"
metric = "t"
rate_above = 5.0
window = "10s"
[[rules]]
name = "silent"
offline = true
offline_after = "3s"
"#;

fn shard(config: &Arc<BridgeConfig>) -> Shard {
    let rules: AlertsConfig = toml::from_str(RULES).unwrap_or_default();
    let rules = RuleSet::new(&rules).unwrap_or_default();
    Shard::new(
        config.clone(),
        Arc::new(BridgeCounters::default()),
        Arc::new(rules),
    )
}

impl Default for Bridge {
    fn default() -> Self {
        let config = Arc::new(BridgeConfig::default());
        Bridge {
            shard: shard(&config),
            config,
            now_ms: START_MS,
            handled: 0,
        }
    }
}

/// Splits an input into topic and payload.
pub fn split(input: &[u8]) -> (String, &[u8]) {
    let (len, rest) = match input {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => (0, input),
    };
    let (topic, payload) = rest.split_at(len.min(rest.len()));
    (String::from_utf8_lossy(topic).into_owned(), payload)
}

const ROOTS: [&str; 6] = [
    "sensors",
    "status",
    "iotmon/live",
    "sensors/",
    "",
    "Sensors",
];
const LEVELS: [&str; 12] = [
    "a", "site-1", "floor", "d1", "d2", "", "+", "#", "é", "\u{0}", " ", "x.y_z",
];
const NAMES: [&str; 10] = [
    "t",
    "temperature",
    "ts",
    "door_open",
    "",
    "a\u{1}b",
    "é",
    "TS",
    "x",
    "rssi",
];
const NUMBERS: [&str; 16] = [
    "0",
    "-0",
    "1",
    "21.5",
    "-40",
    "1e308",
    "-1e308",
    "1e-320",
    "1e400",
    "9007199254740993",
    "18446744073709551616",
    "-9223372036854775809",
    "1704723845000",
    "1.5",
    "NaN",
    "0x10",
];

fn topic(rng: &mut SmallRng) -> String {
    let mut topic = pick(rng, &ROOTS).to_string();
    for _ in 0..rng.random_range(0..=10) {
        topic.push('/');
        topic.push_str(pick(rng, &LEVELS));
    }
    topic
}

fn reading(rng: &mut SmallRng, out: &mut String) {
    out.push('{');
    for i in 0..rng.random_range(0..6) {
        if i > 0 {
            out.push(',');
        }
        let name = pick(rng, &NAMES);
        out.push_str(&serde_json::to_string(name).unwrap_or_default());
        out.push(':');
        match rng.random_range(0..8) {
            0..=3 => out.push_str(pick(rng, &NUMBERS)),
            4 => {
                out.push_str(&(START_MS + rng.random_range(-10_000_000_000..1_000_000)).to_string())
            }
            5 => out.push_str(pick(rng, &["true", "false", "null"])),
            6 => out.push_str(r#""text""#),
            _ => reading(rng, out),
        }
    }
    out.push('}');
}

fn payload(rng: &mut SmallRng) -> Vec<u8> {
    let mut out = String::new();
    match rng.random_range(0..10) {
        0 => out.push_str(pick(
            rng,
            &["online", "offline", "", "[]", "{}", "[[[[[[[[[["],
        )),
        1..=2 => {
            out.push('[');
            for i in 0..rng.random_range(0..=101) {
                if i > 0 {
                    out.push(',');
                }
                reading(rng, &mut out);
            }
            out.push(']');
        }
        _ => reading(rng, &mut out),
    }
    out.into_bytes()
}

impl Surface for Bridge {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn generate(&mut self, rng: &mut SmallRng, out: &mut Vec<u8>) {
        let topic = topic(rng);
        let payload = payload(rng);
        out.extend_from_slice(&(topic.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&payload);
        if rng.random_ratio(3, 4) {
            mutate(
                rng,
                out,
                &[
                    b"\"ts\":",
                    b"sensors/",
                    b"status/",
                    b"1e999",
                    b"[",
                    b"{\"t\":1}",
                ],
            );
        }
    }

    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let (topic, payload) = split(input);
        check_topic(&topic)?;
        let limits = &self.config.limits;
        let parsed = parse_payload(payload, self.now_ms, limits);
        for reading in &parsed.readings {
            if reading.metrics.is_empty() || reading.metrics.len() > limits.max_metrics {
                return Err(format!(
                    "a reading with {} metrics accepted",
                    reading.metrics.len()
                ));
            }
            let finite = reading
                .metrics
                .iter()
                .all(|(_, value)| value.as_f64().is_finite());
            if !finite {
                return Err(format!(
                    "a non-finite value accepted: {:?}",
                    reading.metrics
                ));
            }
        }
        let message = Message {
            topic,
            payload: Bytes::copy_from_slice(payload),
        };
        self.shard.handle(&message, self.now_ms);
        self.now_ms += 7;
        self.handled += 1;
        if self.handled % FLUSH_EVERY == 0 {
            self.flush();
        }
        if self.handled % FRESH_SHARD_EVERY == 0 {
            self.reset();
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.shard = shard(&self.config);
    }
}

impl Bridge {
    /// What the bridge's timers do between messages: presence checks and the batches for the
    /// live stream, the aggregates and the store.
    fn flush(&mut self) {
        self.shard.check_silence(self.now_ms);
        self.shard.check_alert_deadlines(self.now_ms);
        let _ = self.shard.take_alert_events();
        let _ = self.shard.take_due(self.now_ms, 250);
        let _ = self.shard.take_groups();
        let _ = self.shard.take_store_batch();
    }
}

/// A device topic parser, and the function that builds its topics.
type TopicParser = fn(&str) -> Result<topics::DeviceTopic<'_>, topics::TopicError>;
type TopicBuilder = fn(&str, &str) -> String;

/// Every device topic parser: a topic that parses must be rebuilt exactly from its parts.
fn check_topic(topic: &str) -> Result<(), String> {
    let parsers: [(TopicParser, TopicBuilder); 3] = [
        (topics::parse_sensor_topic, topics::sensor_topic),
        (topics::parse_status_topic, topics::status_topic),
        (topics::parse_live_topic, topics::live_topic),
    ];
    for (parse, build) in parsers {
        if let Ok(parts) = parse(topic) {
            let rebuilt = build(parts.group, parts.device);
            if rebuilt != topic {
                return Err(format!(
                    "{topic:?} parsed as {parts:?}, which builds {rebuilt:?}"
                ));
            }
            if parts.group.is_empty() || parts.device.is_empty() || parts.device.contains('/') {
                return Err(format!("{topic:?} parsed as {parts:?}"));
            }
        }
    }
    Ok(())
}
