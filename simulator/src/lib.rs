//! The device simulator: a fleet of simulated IoT sensors, each with its own MQTT connection,
//! publishing plausible readings to a broker on the `sensors/...` topics.
//!
//! - [`config`]: what a fleet looks like ([`FleetConfig`]) and its validation.
//! - [`mod@layout`]: where each device sits (sites, buildings, floors) and its id.
//! - [`sensor`]: seeded, plausible temperature, humidity and pressure readings.
//! - `schedule`: when each device connects and publishes, spread over the interval.
//! - `device`: one device's publishing loop; `connection`: its MQTT connection.
//! - `stats`: counters, the progress line and the [`Summary`].
//! - `fleet`: [`run`], which ties them together.

pub mod config;
mod connection;
mod device;
mod error;
mod fleet;
pub mod layout;
mod schedule;
pub mod sensor;
mod stats;

pub use config::FleetConfig;
pub use error::SimulatorError;
pub use fleet::run;
pub use layout::{layout, SimulatedDevice};
pub use sensor::{Reading, SensorModel};
pub use stats::Summary;
