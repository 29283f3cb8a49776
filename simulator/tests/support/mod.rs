//! Helpers shared by the simulator's integration tests.

#![allow(dead_code)] // Each test file uses its own subset of these helpers.

pub mod certificate;
pub mod embedded;
pub mod mosquitto;
pub mod subscriber;
