//! The embedded MQTT broker: where every device meets iotmon.
//!
//! rumqttd does the MQTT work; this crate wraps it so the rest of iotmon never touches its
//! configuration traps (see `shared/notes/dependencies.md`).
//!
//! - [`config`]: the broker's settings, with iotmon's defaults.
//! - [`embedded`]: starting the router and the listeners, and the bound addresses.
//! - [`local_link`]: an in-process subscription, how `serve` feeds the bridge without a socket.

pub mod config;
pub mod embedded;
pub mod local_link;

pub use config::BrokerConfig;
pub use embedded::{BrokerError, EmbeddedBroker};
pub use local_link::LocalSubscription;
