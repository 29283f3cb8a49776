//! iotmon's embedded broker in the test process, with its MQTT 3.1.1 and MQTT 5 listeners on
//! free loopback ports and a device registry of the test's choosing.

use std::net::SocketAddr;
use std::path::Path;

use iotmon_broker::{BrokerConfig, CredentialRegistry, EmbeddedBroker, ListenerKind};
use iotmon_wire::mqtt::BrokerUrl;

/// A running embedded broker; dropping it stops its listeners.
#[allow(missing_debug_implementations)] // EmbeddedBroker has no Debug
pub struct Embedded {
    _broker: EmbeddedBroker,
    /// The MQTT 3.1.1 listener.
    pub mqtt: BrokerUrl,
    /// The MQTT 5 listener.
    pub mqtt5: BrokerUrl,
}

impl Embedded {
    /// Starts the broker with `credentials` (device id, password) registered under `dir`;
    /// anonymous clients are refused. Call from within the test's tokio runtime.
    ///
    /// # Panics
    /// The registry cannot be written or a listener cannot be bound.
    pub fn start(dir: &Path, credentials: &[(&str, &str)]) -> Embedded {
        let registry_file = dir.join("devices.credentials");
        let mut registry = CredentialRegistry::default();
        for (id, password) in credentials {
            registry
                .set_password(id, password)
                .expect("hash a password");
        }
        registry.save(&registry_file).expect("write the registry");
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = BrokerConfig {
            mqtt_listen: loopback,
            mqtt5_listen: Some(loopback),
            allow_anonymous: false,
            ..BrokerConfig::default()
        };
        let mut broker = EmbeddedBroker::start(config, &registry_file).expect("broker starts");
        broker.listen().expect("listeners bind");
        let url = |kind| url_of(broker.bound_addr(kind).expect("listener bound"));
        let (mqtt, mqtt5) = (url(ListenerKind::Mqtt), url(ListenerKind::Mqtt5));
        Embedded {
            _broker: broker,
            mqtt,
            mqtt5,
        }
    }
}

fn url_of(addr: SocketAddr) -> BrokerUrl {
    format!("mqtt://{addr}").parse().expect("broker address")
}
