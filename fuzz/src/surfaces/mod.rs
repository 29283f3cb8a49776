//! The input surfaces, one module each.

pub mod bridge;
pub mod codec;
pub mod config;
pub mod listener;
pub mod viewer;

use crate::driver::Surface;
use crate::mqtt::Version;

/// Every surface's name, in the order a full run takes them.
pub const NAMES: [&str; 6] = [
    "mqtt-v4", "mqtt-v5", "listener", "bridge", "viewer", "config",
];

/// The surface called `name`, ready to run.
pub fn by_name(name: &str) -> Option<Box<dyn Surface>> {
    Some(match name {
        "mqtt-v4" => Box::new(codec::Codec::new(Version::V4)),
        "mqtt-v5" => Box::new(codec::Codec::new(Version::V5)),
        "listener" => Box::new(listener::Listener::start()),
        "bridge" => Box::<bridge::Bridge>::default(),
        "viewer" => Box::<viewer::Viewer>::default(),
        "config" => Box::<config::ConfigFile>::default(),
        _ => return None,
    })
}
