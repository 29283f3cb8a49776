//! Configuration files into the binary: TOML text parsed into the binary's own `Config`
//! (its `src/config.rs`, compiled into this crate by path), then validated as the roles do
//! before they start. A file that validates must be usable: the parts the roles build from
//! it at start-up (a bridge shard, the dashboard's channels, timers and viewer slots) must
//! build without a panic. Every config that parses must also print back (`iotmon config`
//! prints TOML) to text that parses to the same config.

use std::sync::Arc;

use bytes::Bytes;
use iotmon_bridge::shard::Shard;
use iotmon_bridge::BridgeCounters;
use iotmon_wire::mqtt::Message;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::driver::Surface;
use crate::mutate::{mutate, pick};
use iotmon::config::Config;

/// The configuration file.
#[derive(Debug)]
pub struct ConfigFile {
    /// For the timers the roles start: tokio's `interval` needs a runtime to exist.
    runtime: tokio::runtime::Runtime,
}

impl Default for ConfigFile {
    fn default() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|error| panic!("a tokio runtime: {error}"));
        ConfigFile { runtime }
    }
}

/// (section, key, kind of value) of every setting.
const KEYS: [(&str, &str, Kind); 51] = {
    use Kind::*;
    [
        ("", "data_dir", Str),
        ("broker", "mqtt_listen", Addr),
        ("broker", "mqtt5_listen", Addr),
        ("broker", "ws_listen", Addr),
        ("broker", "allow_anonymous", Bool),
        ("broker", "credentials_file", Str),
        ("broker", "max_connections", Int),
        ("broker", "max_packet_size", Int),
        ("broker", "segment_size", Int),
        ("broker", "segment_count", Int),
        ("broker", "lossless_subscribers", StrList),
        ("broker.tls", "listen", Addr),
        ("broker.tls", "cert", Str),
        ("broker.tls", "key", Str),
        ("bridge", "live_interval", Dur),
        ("bridge", "live_min_gap", Dur),
        ("bridge", "aggregate_interval", Dur),
        ("bridge", "shards", Int),
        ("bridge.limits", "max_payload_bytes", Int),
        ("bridge.limits", "max_metrics", Int),
        ("bridge.limits", "max_metric_name_bytes", Int),
        ("bridge.limits", "max_batch", Int),
        ("bridge.limits", "max_past", Dur),
        ("bridge.limits", "max_future", Dur),
        ("bridge.presence", "silence_factor", Float),
        ("bridge.presence", "min_silence", Dur),
        ("bridge.presence", "default_silence", Dur),
        ("bridge.rollups", "grace", Dur),
        ("bridge.rollups", "tiers", Tiers),
        ("bridge.store", "enabled", Bool),
        ("bridge.store", "flush_interval", Dur),
        ("bridge.store", "queue", Int),
        ("bridge.influx", "enabled", Bool),
        ("bridge.influx", "url", Url),
        ("bridge.influx", "org", Str),
        ("bridge.influx", "bucket", Str),
        ("bridge.influx", "token", Str),
        ("bridge.influx", "max_outbox_bytes", Int),
        ("dashboard", "http_listen", Addr),
        ("dashboard", "tick", Dur),
        ("dashboard", "max_view_devices", Int),
        ("dashboard", "max_view_groups", Int),
        ("dashboard", "viewer_queue", Int),
        ("dashboard", "viewer_queue_bytes", Int),
        ("dashboard", "send_buffer_bytes", Int),
        ("dashboard", "max_message_bytes", Int),
        ("dashboard", "max_viewers", Int),
        ("dashboard", "max_messages_per_second", Int),
        ("dashboard", "max_view_changes_per_second", Int),
        ("dashboard", "heartbeat", Dur),
        ("dashboard", "stall_limit", Dur),
    ]
};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Addr,
    Bool,
    Int,
    Float,
    Dur,
    StrList,
    Tiers,
    Url,
}

const DURATIONS: [&str; 14] = [
    "\"0s\"",
    "\"1ns\"",
    "\"1ms\"",
    "\"10s\"",
    "\"1m\"",
    "\"1h\"",
    "\"2days\"",
    "\"1.5s\"",
    "\"584942417355years\"",
    "\"18446744073709551615s\"",
    "\"\"",
    "\"-1s\"",
    "\"7days 3ms\"",
    "10",
];
const INTS: [&str; 10] = [
    "0",
    "1",
    "2",
    "64",
    "1000",
    "-1",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "2305843009213693952",
];

fn value(rng: &mut SmallRng, kind: Kind) -> String {
    match kind {
        Kind::Str => pick(
            rng,
            &["\"\"", "\"./data\"", "\"/nonexistent/x\"", "\"é\"", "1"],
        )
        .to_string(),
        Kind::Addr => pick(
            rng,
            &[
                "\"127.0.0.1:0\"",
                "\"[::1]:1883\"",
                "\"0.0.0.0:65535\"",
                "\"host:1\"",
                "\"127.0.0.1\"",
            ],
        )
        .to_string(),
        Kind::Bool => pick(rng, &["true", "false", "\"yes\""]).to_string(),
        Kind::Int => pick(rng, &INTS).to_string(),
        Kind::Float => pick(
            rng,
            &[
                "0.0", "-1.0", "3.0", "nan", "inf", "-inf", "1e308", "5e-324", "2",
            ],
        )
        .to_string(),
        Kind::Dur => pick(rng, &DURATIONS).to_string(),
        Kind::StrList => pick(rng, &["[]", "[\"a\", \"\"]", "[1]"]).to_string(),
        Kind::Url => pick(
            rng,
            &[
                "\"http://127.0.0.1:8086\"",
                "\"https://\"",
                "\"http:// x\"",
                "\"ftp://x\"",
                "\"\"",
            ],
        )
        .to_string(),
        Kind::Tiers => {
            let tiers: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| {
                    format!(
                        "{{ width = {}, retention = {} }}",
                        pick(rng, &DURATIONS),
                        pick(rng, &DURATIONS)
                    )
                })
                .collect();
            format!("[{}]", tiers.join(", "))
        }
    }
}

fn file(rng: &mut SmallRng) -> String {
    let mut chosen: Vec<_> = (0..rng.random_range(0..8))
        .map(|_| KEYS[rng.random_range(0..KEYS.len())])
        .collect();
    chosen.sort_by_key(|(section, key, _)| (*section, *key));
    chosen.dedup_by_key(|(section, key, _)| (*section, *key));
    let mut text = String::new();
    let mut section = "";
    for (wanted, key, kind) in chosen {
        if wanted != section {
            section = wanted;
            text.push_str(&format!("[{section}]\n"));
        }
        text.push_str(&format!("{key} = {}\n", value(rng, kind)));
    }
    text
}

impl Surface for ConfigFile {
    fn name(&self) -> &'static str {
        "config"
    }

    fn generate(&mut self, rng: &mut SmallRng, out: &mut Vec<u8>) {
        out.extend_from_slice(file(rng).as_bytes());
        if rng.random_ratio(1, 3) {
            mutate(
                rng,
                out,
                &[
                    b"[broker]\n",
                    b"[bridge]\n",
                    b" = ",
                    b"\"",
                    b"[[bridge.rollups.tiers]]\n",
                    b"\n",
                ],
            );
        }
    }

    /// The file is read with `read_to_string`, which refuses invalid UTF-8; such input is
    /// taken lossily rather than wasted.
    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(input);
        let Ok(config) = toml::from_str::<Config>(&text) else {
            return Ok(());
        };
        check_prints_back(&config)?;
        let valid = config.broker.validate().is_ok()
            && config.bridge.validate().is_ok()
            && config.dashboard.validate().is_ok();
        if valid {
            self.build_parts(&config);
        }
        Ok(())
    }
}

/// `iotmon config` prints a config as TOML; what it prints must read back the same. Compared
/// as text printed twice, so that a NaN (never equal to itself) compares equal.
fn check_prints_back(config: &Config) -> Result<(), String> {
    let printed =
        toml::to_string_pretty(config).map_err(|e| format!("cannot print {config:?}: {e}"))?;
    let back: Config = toml::from_str(&printed)
        .map_err(|e| format!("printed config does not parse ({e}):\n{printed}"))?;
    let again = toml::to_string_pretty(&back).map_err(|e| format!("cannot print {back:?}: {e}"))?;
    if again != printed {
        return Err(format!("printed\n{printed}\nreads back as\n{again}"));
    }
    Ok(())
}

impl ConfigFile {
    /// What the roles build from their settings when they start, short of sockets and files.
    fn build_parts(&self, config: &Config) {
        let _runtime = self.runtime.enter();
        let bridge = Arc::new(config.bridge.clone());
        let rules = Arc::new(config.rules().unwrap_or_default());
        let mut shard = Shard::new(bridge.clone(), Arc::new(BridgeCounters::default()), rules);
        let now = 1_704_723_845_000;
        for (topic, payload) in [
            ("status/a/d1", "online"),
            ("sensors/a/d1", r#"{"t":1}"#),
            ("sensors/a/d1", r#"{"t":2,"ts":1704723845000}"#),
        ] {
            let message = Message {
                topic: topic.into(),
                payload: Bytes::from_static(payload.as_bytes()),
            };
            shard.handle(&message, now);
        }
        for later in [0, 60_000, 3_600_000, 400 * 86_400_000] {
            shard.check_silence(now + later);
            let _ = shard.take_store_batch();
        }
        for period in [
            bridge.live_interval,
            bridge.aggregate_interval,
            bridge.store.flush_interval,
        ] {
            let _ = tokio::time::interval(period);
        }
        let dashboard = &config.dashboard;
        for period in [dashboard.tick, dashboard.heartbeat] {
            let _ = tokio::time::interval(period);
        }
        let _ = tokio::sync::mpsc::channel::<String>(dashboard.viewer_queue);
        let _ = tokio::sync::Semaphore::new(dashboard.max_viewers);
    }
}
