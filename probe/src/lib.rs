//! The few protocols iotmon's tools and tests speak by hand, in one place: raw MQTT packets
//! ([`mqtt`]), a plain HTTP/1.1 request ([`http`]) and reading a sample out of `/metrics`
//! text ([`metrics`]). The simulator's viewers, `iotmon bench` and the integration tests use
//! them, so each is written once. Nothing here is part of the running product.

pub mod http;
pub mod metrics;
pub mod mqtt;
