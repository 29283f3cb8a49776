//! The MQTT topic tree shared by devices, the bridge and the dashboard.
//!
//! - `sensors/<group path>/<device-id>`: readings published by devices.
//! - `iotmon/live/<group path>/<device-id>`: a device's latest state, published by the bridge
//!   when the roles run as separate processes.
//! - `status/<group path>/<device-id>`: `online` / `offline`, retained, with a last will of
//!   `offline`: a device's presence, when it says so itself.
//! - `iotmon/agg/<group path>`: a group's aggregate, published by the bridge each aggregation
//!   window when the roles run as separate processes.
//! - `iotmon/alerts/<subject>`: an alert's latest state (QoS 1), published by the bridge at
//!   once on every change when the roles run as separate processes.
//! - `iotmon/commands/alerts`: operators' alert commands (acknowledge, shelve), JSON, QoS 1,
//!   published by a dashboard that runs apart from the bridge.
//! - `iotmon/partial/<K>/<group path>`: partition K's share of a group's aggregate (count,
//!   sum, min, max per metric; device counts), published instead of `iotmon/agg/...` by a
//!   bridge that owns one partition of the fleet (`--partition K/N`); dashboards merge them.
//! - `iotmon/sync/request`: published by a dashboard when it (re)connects; the bridge answers by
//!   republishing every device's state so the new dashboard starts complete.
//! - `iotmon/history/request/<K>` and `iotmon/history/reply/<client id>`: a dashboard's
//!   history questions to partition K's bridge (JSON `HistoryRequest`, QoS 1) and their
//!   answers (`HistoryReply`), when each bridge keeps its own SQLite store.
//! - `iotmon/sync/partials`: published by partition 0's bridge when it (re)connects; every
//!   partitioned bridge answers by republishing its partial aggregates.

use thiserror::Error;

/// Filter the bridge subscribes to for device readings.
pub const SENSORS_FILTER: &str = "sensors/#";
/// Filter a dashboard subscribes to for device states.
pub const LIVE_FILTER: &str = "iotmon/live/#";
/// Filter the bridge subscribes to for device presence.
pub const STATUS_FILTER: &str = "status/#";
/// Filter a dashboard subscribes to for group aggregates.
pub const AGG_FILTER: &str = "iotmon/agg/#";
/// Filter a dashboard subscribes to for alerts.
pub const ALERTS_FILTER: &str = "iotmon/alerts/#";
/// Where a dashboard asks partition K's bridge for history: `iotmon/history/request/<K>`.
pub fn history_request_topic(partition: u32) -> String {
    format!("iotmon/history/request/{partition}")
}

/// Where the bridges answer a dashboard's history questions: one topic per dashboard,
/// named after its MQTT client id.
pub fn history_reply_topic(client_id: &str) -> String {
    format!("iotmon/history/reply/{client_id}")
}

/// Filter a dashboard (and the bridge that evaluates group rules) subscribes to for the
/// partitions' partial aggregates.
pub const PARTIAL_FILTER: &str = "iotmon/partial/#";
/// Topic a dashboard publishes operators' alert commands on, for the bridge.
pub const ALERT_COMMANDS: &str = "iotmon/commands/alerts";
/// Topic a dashboard publishes to ask the bridge for a full republish.
pub const SYNC_REQUEST: &str = "iotmon/sync/request";
/// Topic the bridge that evaluates group rules publishes when it (re)starts, asking the
/// other partitions to republish their partial aggregates (and nothing else).
pub const PARTIALS_SYNC_REQUEST: &str = "iotmon/sync/partials";

const SENSORS_ROOT: &str = "sensors";
const LIVE_ROOT: &str = "iotmon/live";
const STATUS_ROOT: &str = "status";
const AGG_ROOT: &str = "iotmon/agg";
const ALERTS_ROOT: &str = "iotmon/alerts";
const PARTIAL_ROOT: &str = "iotmon/partial";

/// Group levels allowed between the root and the device id.
pub const MAX_GROUP_LEVELS: usize = 8;

/// Where a device sits in the topic tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTopic<'a> {
    /// The group path, levels joined by `/`.
    pub group: &'a str,
    /// The device id (the last level).
    pub device: &'a str,
}

/// Why a topic is not a valid device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic is not under the expected root")]
    WrongRoot,
    #[error("topic has no group level between the root and the device id")]
    NoGroup,
    #[error("topic has more than {MAX_GROUP_LEVELS} group levels")]
    TooDeep,
    #[error("topic has an empty level")]
    EmptyLevel,
}

/// Parses `sensors/<group path>/<device-id>`.
///
/// # Errors
/// The topic is not under `sensors/`, has no group level, more than [`MAX_GROUP_LEVELS`]
/// group levels, or an empty level.
pub fn parse_sensor_topic(topic: &str) -> Result<DeviceTopic<'_>, TopicError> {
    parse_under(SENSORS_ROOT, topic)
}

/// Parses `iotmon/live/<group path>/<device-id>`.
///
/// # Errors
/// As [`parse_sensor_topic`], for the `iotmon/live/` root.
pub fn parse_live_topic(topic: &str) -> Result<DeviceTopic<'_>, TopicError> {
    parse_under(LIVE_ROOT, topic)
}

/// Parses `status/<group path>/<device-id>`.
///
/// # Errors
/// As [`parse_sensor_topic`], for the `status/` root.
pub fn parse_status_topic(topic: &str) -> Result<DeviceTopic<'_>, TopicError> {
    parse_under(STATUS_ROOT, topic)
}

/// The topic a device announces its presence on.
pub fn status_topic(group: &str, device: &str) -> String {
    format!("{STATUS_ROOT}/{group}/{device}")
}

/// The topic the bridge publishes a group's aggregate on.
pub fn agg_topic(group: &str) -> String {
    format!("{AGG_ROOT}/{group}")
}

/// The topic a partitioned bridge publishes partition `partition`'s share of a group's
/// aggregate on.
pub fn partial_topic(partition: u32, group: &str) -> String {
    format!("{PARTIAL_ROOT}/{partition}/{group}")
}

/// The partition and group path of an `iotmon/partial/<K>/<group path>` topic.
///
/// # Errors
/// The topic is not under `iotmon/partial/`, K is not a number, or the group path is
/// empty, has an empty level or is too deep.
pub fn parse_partial_topic(topic: &str) -> Result<(u32, &str), TopicError> {
    let rest = topic
        .strip_prefix(PARTIAL_ROOT)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(TopicError::WrongRoot)?;
    let (partition, group) = rest.split_once('/').ok_or(TopicError::NoGroup)?;
    let partition = partition.parse().map_err(|_| TopicError::WrongRoot)?;
    if group.split('/').any(str::is_empty) {
        return Err(TopicError::EmptyLevel);
    }
    if group.split('/').count() > MAX_GROUP_LEVELS {
        return Err(TopicError::TooDeep);
    }
    Ok((partition, group))
}

/// The group path of an `iotmon/agg/<group path>` topic.
///
/// # Errors
/// The topic is not under `iotmon/agg/`, has an empty level, or is too deep.
pub fn parse_agg_topic(topic: &str) -> Result<&str, TopicError> {
    let group = topic
        .strip_prefix(AGG_ROOT)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(TopicError::WrongRoot)?;
    if group.split('/').any(str::is_empty) {
        return Err(TopicError::EmptyLevel);
    }
    if group.split('/').count() > MAX_GROUP_LEVELS {
        return Err(TopicError::TooDeep);
    }
    Ok(group)
}

/// Every group a device under `group` belongs to: each prefix of the path, shortest first
/// (`hq`, `hq/building-a`, `hq/building-a/floor-3`).
pub fn group_prefixes(group: &str) -> impl Iterator<Item = &str> {
    group
        .match_indices('/')
        .map(move |(at, _)| &group[..at])
        .chain(std::iter::once(group))
}

/// Whether a device under `path` belongs to `group` (the group itself or a subgroup).
pub fn in_group(path: &str, group: &str) -> bool {
    path.strip_prefix(group)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The topic the bridge publishes an alert about `subject` (a device id or group path) on.
pub fn alert_topic(subject: &str) -> String {
    format!("{ALERTS_ROOT}/{subject}")
}

/// The topic a device publishes its readings on.
pub fn sensor_topic(group: &str, device: &str) -> String {
    format!("{SENSORS_ROOT}/{group}/{device}")
}

/// The topic the bridge publishes a device's state on.
pub fn live_topic(group: &str, device: &str) -> String {
    format!("{LIVE_ROOT}/{group}/{device}")
}

fn parse_under<'a>(root: &str, topic: &'a str) -> Result<DeviceTopic<'a>, TopicError> {
    let rest = topic
        .strip_prefix(root)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(TopicError::WrongRoot)?;
    let (group, device) = rest.rsplit_once('/').ok_or(TopicError::NoGroup)?;
    if device.is_empty() || group.split('/').any(str::is_empty) {
        return Err(TopicError::EmptyLevel);
    }
    if group.split('/').count() > MAX_GROUP_LEVELS {
        return Err(TopicError::TooDeep);
    }
    Ok(DeviceTopic { group, device })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_group_path_from_device_id() {
        let topic = parse_sensor_topic("sensors/hq/building-a/floor-3/temp-0042").expect("valid");
        assert_eq!(topic.group, "hq/building-a/floor-3");
        assert_eq!(topic.device, "temp-0042");
        let topic = live_topic("hq", "d1");
        let live = parse_live_topic(&topic).expect("valid");
        assert_eq!((live.group, live.device), ("hq", "d1"));
    }

    #[test]
    fn status_and_aggregate_topics_round_trip() {
        let topic = status_topic("hq/a", "d1");
        let status = parse_status_topic(&topic).expect("valid");
        assert_eq!((status.group, status.device), ("hq/a", "d1"));
        assert_eq!(parse_agg_topic(&agg_topic("hq/a")), Ok("hq/a"));
        assert_eq!(parse_agg_topic("iotmon/agg/"), Err(TopicError::EmptyLevel));
        assert_eq!(parse_agg_topic("iotmon/live/x"), Err(TopicError::WrongRoot));
    }

    #[test]
    fn partial_topics_carry_the_partition_and_the_group() {
        assert_eq!(partial_topic(1, "hq/a"), "iotmon/partial/1/hq/a");
        assert_eq!(
            parse_partial_topic("iotmon/partial/1/hq/a"),
            Ok((1, "hq/a"))
        );
        assert_eq!(
            parse_partial_topic("iotmon/partial/x/hq"),
            Err(TopicError::WrongRoot)
        );
        assert_eq!(
            parse_partial_topic("iotmon/partial/1"),
            Err(TopicError::NoGroup)
        );
        assert_eq!(
            parse_partial_topic("iotmon/partial/1/hq//a"),
            Err(TopicError::EmptyLevel)
        );
    }

    #[test]
    fn every_prefix_of_a_group_path_is_a_group() {
        let prefixes: Vec<&str> = group_prefixes("hq/b/f3").collect();
        assert_eq!(prefixes, ["hq", "hq/b", "hq/b/f3"]);
        assert_eq!(group_prefixes("hq").collect::<Vec<_>>(), ["hq"]);
    }

    #[test]
    fn rejects_malformed_topics() {
        assert_eq!(
            parse_sensor_topic("other/hq/d1"),
            Err(TopicError::WrongRoot)
        );
        assert_eq!(
            parse_sensor_topic("sensorsx/hq/d1"),
            Err(TopicError::WrongRoot)
        );
        assert_eq!(parse_sensor_topic("sensors/d1"), Err(TopicError::NoGroup));
        assert_eq!(
            parse_sensor_topic("sensors/hq/"),
            Err(TopicError::EmptyLevel)
        );
        assert_eq!(
            parse_sensor_topic("sensors//d1"),
            Err(TopicError::EmptyLevel)
        );
        assert_eq!(
            parse_sensor_topic("sensors/a//b/d1"),
            Err(TopicError::EmptyLevel)
        );
        let eight = "sensors/1/2/3/4/5/6/7/8/d1";
        assert!(parse_sensor_topic(eight).is_ok());
        let nine = "sensors/1/2/3/4/5/6/7/8/9/d1";
        assert_eq!(parse_sensor_topic(nine), Err(TopicError::TooDeep));
    }
}
