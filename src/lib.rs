//! The `iotmon` binary's roles as a library: the command line (`cli`), the configuration file
//! (`config`), composing broker, bridge, dashboard, simulator and bench into processes
//! (`roles`), and device credentials (`devices`). `main.rs` only parses, sets up logging and
//! signals, and calls [`roles`]; the integration tests call the same functions in process.

pub mod cli;
pub mod config;
pub mod devices;
mod metrics_http;
pub mod roles;
