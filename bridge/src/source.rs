//! What the bridge reads. Its input is a channel of messages (`pipeline::run`'s
//! `from_broker`), fed by whoever links it to a broker: the embedded broker's in-process
//! subscription in `iotmon serve`, an MQTT client session otherwise. The bridge itself does
//! not depend on any broker.

use iotmon_wire::topics::{SENSORS_FILTER, STATUS_FILTER, SYNC_REQUEST};

/// Topic filters the bridge reads.
pub const FILTERS: [&str; 3] = [SENSORS_FILTER, STATUS_FILTER, SYNC_REQUEST];
