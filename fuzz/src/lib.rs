//! Fuzzing iotmon's input surfaces on stable Rust.
//!
//! A seeded, structure-aware mutational driver: each [`surfaces`] entry builds well-formed
//! inputs (MQTT packets, device topics and JSON payloads, viewer messages, configuration
//! files) from a seeded RNG, mutates most of them ([`mutate`]), and feeds them to the code
//! that reads them from the outside world. The [`driver`] counts crashes (panics, on any
//! thread), broken expectations and hangs, and reports the rate and the memory at start and
//! end. No sanitizer or nightly compiler is needed; the same seed replays the same inputs.
//!
//! - [`driver`]: the run loop, panic and hang detection, the report.
//! - [`mutate`]: byte-level mutations.
//! - [`mqtt`]: well-formed MQTT 3.1.1 and 5 packets to mutate.
//! - [`surfaces`]: one module per input surface.

pub mod driver;
pub mod mqtt;
pub mod mutate;
pub mod surfaces;

pub use driver::{run, Options, Report, Surface};
