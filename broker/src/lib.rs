//! The embedded MQTT broker: where every device meets iotmon.
//!
//! rumqttd does the MQTT work (a patched copy, see `vendor/PATCHES.md`); this crate wraps it so
//! the rest of iotmon never touches its configuration traps (see `shared/notes/dependencies.md`).
//!
//! - [`config`]: the broker's settings, with iotmon's defaults.
//! - [`embedded`]: starting the router and the listeners, and the bound addresses.
//! - [`credentials`]: the device credential registry file and its argon2id hashes.
//! - [`auth`]: checking each CONNECT against the registry, off the async workers.
//! - [`metrics`]: the broker's counters for iotmon's `/metrics`.
//! - [`local_link`]: an in-process subscription, how `serve` feeds the bridge without a socket.

pub mod auth;
pub mod config;
pub mod credentials;
pub mod embedded;
pub mod local_link;
pub mod metrics;

pub use config::{BrokerConfig, TlsListenerConfig};
pub use credentials::CredentialRegistry;
pub use embedded::{BrokerError, EmbeddedBroker, ListenerKind};
pub use local_link::LocalSubscription;
pub use metrics::BrokerMetrics;
