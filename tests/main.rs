//! iotmon's integration tests, in one test binary: each module below tests one part end to end
//! through real sockets, real clients (rumqttc, tokio-tungstenite, Debian's mosquitto and
//! mosquitto-clients, Python's paho-mqtt) and real `iotmon` processes or roles run in process.
//! `support` holds everything they share. One binary links once, where a binary per file
//! linked every dependency again for each.
//!
//! Run one part with a filter: `cargo test --test integration alerts::`.

mod support;

mod aggregates;
mod alert_webhook;
mod alerts;
mod bench;
mod broker_conformance;
mod broker_filter_logs;
mod broker_interop;
mod broker_memory;
mod broker_reconnect;
mod crate_graph;
mod dashboard;
mod end_to_end;
mod influx_victoria;
mod scale_out;
mod simulator_fleet;
mod store_restart;
