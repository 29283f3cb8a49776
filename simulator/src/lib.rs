//! The simulator: fleets of simulated IoT sensors publishing plausible readings over MQTT,
//! and fake dashboard viewers measuring how fast readings reach a screen. Run them against
//! any broker and dashboard; the `iotmon-bench` crate builds its scenarios from them.
//!
//! - [`config`]: what a fleet looks like ([`FleetConfig`]) and its validation.
//! - [`settings`]: a fleet file and flags over it ([`FleetDescription`]), resolved into a
//!   [`FleetConfig`].
//! - [`mod@layout`]: where each device sits (sites, buildings, floors, or groups listed by
//!   hand) and its id.
//! - [`sensor`]: seeded, plausible readings for a configurable set of metrics, and anomalies.
//! - `schedule`: when each device connects and publishes, spread over the interval.
//! - `device`: the devices behind one connection and their turns; `connection`: the MQTT
//!   session (backoff, offline spells, presence, goodbye); `client`: that session's MQTT
//!   client, speaking MQTT 3.1.1 or 5 ([`MqttVersion`]).
//! - [`stats`]: counters, the progress display and the [`Summary`].
//! - `fleet`: [`run`] and [`Fleet`], which tie them together.
//! - [`viewers`]: fake dashboard viewers and the reading→viewer delay.

mod client;
pub mod config;
mod connection;
mod device;
mod error;
mod fleet;
pub mod layout;
mod schedule;
pub mod sensor;
pub mod settings;
pub mod stats;
pub mod viewers;

pub use client::MqttVersion;
pub use config::{FleetConfig, Qos};
pub use error::SimulatorError;
pub use fleet::{run, Fleet};
pub use layout::{layout, Group, Layout, Shape, SimulatedDevice};
pub use sensor::{Metric, Reading, SensorModel};
pub use settings::FleetDescription;
pub use stats::{Progress, Summary};
