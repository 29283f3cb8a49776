pub mod alerts;
pub mod bridge;
#[cfg(feature = "standalone")] // iotmon patch: the console needs axum 0.7
pub mod console;
pub mod local;
pub mod meters;
pub mod network;
pub mod remote;
pub mod timer;
