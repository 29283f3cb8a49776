//! Why the simulator could not run.

use std::path::PathBuf;

use thiserror::Error;

/// Everything the simulator's entry points can fail with. Connection trouble during a run is
/// not here: fleets and viewers keep running through it and report it in their summaries.
#[derive(Debug, Error)]
pub enum SimulatorError {
    /// A fleet needs at least one device.
    #[error("a fleet needs at least one device")]
    NoDevices,
    /// Devices publish once per interval, so it cannot be zero.
    #[error("the publish interval must be greater than zero")]
    ZeroInterval,
    /// A reading with no metric is refused by the bridge.
    #[error("devices must report at least one metric")]
    NoMetrics,
    /// A per-reading chance outside 0..=1.
    #[error("the {0} must be between 0 and 1")]
    Rate(&'static str),
    /// A level of the layout holds nothing.
    #[error("every level of the layout must hold at least one")]
    EmptyShape,
    /// A group listed by hand cannot be used.
    #[error("layout: {0}")]
    Layout(String),
    /// Devices need a broker to connect to.
    #[error("a broker is required: --broker mqtt://HOST:PORT, or `broker` in the fleet file")]
    NoBroker,
    /// A password and a password file at once.
    #[error("give a password or a password file, not both")]
    TwoPasswords,
    /// Groups listed by hand leave nothing for a generated layout's settings to say.
    #[error(
        "the fleet lists its groups: devices, devices_per_floor, floors_per_building and \
         buildings_per_site do not apply"
    )]
    GroupsAndShape,
    /// A fleet file could not be read.
    #[error("cannot read the fleet file {path}: {source}")]
    FleetFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A fleet file is not TOML, holds an unknown key or a value of the wrong kind.
    #[error("invalid fleet file {path}: {source}")]
    FleetFileInvalid {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A batch size out of range.
    #[error("readings per message must be between 1 and {0}")]
    Batch(usize),
    /// Gateway mode needs at least one device per connection.
    #[error("devices per connection must be at least 1")]
    NoDevicesPerConnection,
    /// One process cannot open that many sockets.
    #[error(
        "{connections} connections exceed the {max} one process may open: \
         use --devices-per-connection (gateway mode) or several processes"
    )]
    TooManyConnections {
        /// Connections the fleet would open.
        connections: usize,
        /// The most allowed.
        max: usize,
    },
    /// Only QoS 0 and 1 are offered.
    #[error("QoS {0} is not offered: use 0 or 1")]
    Qos(u8),
    /// A password file could not be read.
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A CA certificate file could not be read.
    #[error("cannot read the CA certificate file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A viewer run was asked for nothing.
    #[error("viewers: {0}")]
    Viewers(String),
}

/// Two errors are equal when they say the same thing: the I/O and TOML errors some variants
/// keep as their source have no equality of their own.
impl PartialEq for SimulatorError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}
