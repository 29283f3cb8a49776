//! Partitions of the fleet across bridges: `iotmon bridge --partition K/N` owns the devices
//! whose id hashes to K modulo N.
//!
//! The hash must be the same in every process, on every machine and in every release, since
//! each bridge decides alone which devices are its own: Rust's `DefaultHasher` is neither
//! (randomly keyed per process, and its algorithm may change). FNV-1a over the id's UTF-8
//! bytes is tiny, fast for short ids, and specified (64-bit offset basis
//! 0xcbf29ce484222325, prime 0x100000001b3), so any other implementation can reproduce it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The most partitions a deployment may have: far beyond the bridges a fleet needs, low enough
/// that a typo (`0/10000000`) is refused rather than producing empty bridges.
pub const MAX_PARTITIONS: u32 = 1024;

/// FNV-1a, 64 bits, of `id`'s bytes: the documented, stable hash that places devices.
pub fn device_hash(id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition (0 to `count` - 1) owning the device `id` in a deployment of `count`.
pub fn partition_of(id: &str, count: u32) -> u32 {
    // `count` is at most MAX_PARTITIONS, so the remainder fits.
    (device_hash(id) % u64::from(count.max(1))) as u32
}

/// One bridge's share of the fleet: partition `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

/// Why a `K/N` partition was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PartitionError {
    #[error("partition {0:?} is not of the form K/N (e.g. 0/2)")]
    Form(String),
    #[error("partition {index}/{count}: K must be below N (partitions are numbered 0 to N-1)")]
    IndexTooLarge { index: u32, count: u32 },
    #[error("partition {index}/{count}: N must be between 1 and {MAX_PARTITIONS}")]
    Count { index: u32, count: u32 },
}

impl Partition {
    /// The whole fleet in one partition: what a bridge without `--partition` owns.
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };

    /// Partition `index` of `count`, checked.
    ///
    /// # Errors
    /// `count` is 0 or above [`MAX_PARTITIONS`], or `index` is not below `count`.
    pub fn new(index: u32, count: u32) -> Result<Partition, PartitionError> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(PartitionError::Count { index, count });
        }
        if index >= count {
            return Err(PartitionError::IndexTooLarge { index, count });
        }
        Ok(Partition { index, count })
    }

    /// Whether the device `id` is this partition's.
    pub fn owns(&self, id: &str) -> bool {
        self.count <= 1 || partition_of(id, self.count) == self.index
    }

    /// Whether this partition is the one that evaluates group rules on the merged
    /// aggregates of all partitions: partition 0, so that exactly one bridge does, and its
    /// replacement (the same K, with the same store) carries on.
    pub fn evaluates_group_rules(&self) -> bool {
        self.index == 0
    }

    /// Whether the fleet is split at all.
    pub fn is_split(&self) -> bool {
        self.count > 1
    }
}

impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let form = || PartitionError::Form(text.to_string());
        let (index, count) = text.trim().split_once('/').ok_or_else(form)?;
        let index = index.trim().parse().map_err(|_| form())?;
        let count = count.trim().parse().map_err(|_| form())?;
        Partition::new(index, count)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Serialize for Partition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Partition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_as_documented() {
        // Reference values of 64-bit FNV-1a (the empty string is the offset basis).
        assert_eq!(device_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(device_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(device_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_device_has_exactly_one_owner_and_the_split_is_even() {
        let partitions: Vec<Partition> = (0..3)
            .map(|k| Partition::new(k, 3).expect("valid"))
            .collect();
        let mut per_partition = [0u32; 3];
        for i in 0..3000 {
            let id = format!("sensor-{i:06}");
            let owners: Vec<&Partition> = partitions.iter().filter(|p| p.owns(&id)).collect();
            assert_eq!(owners.len(), 1, "{id}");
            per_partition[owners[0].index as usize] += 1;
        }
        assert!(per_partition.iter().all(|&n| n > 850), "{per_partition:?}");
        assert!(Partition::WHOLE.owns("anything"));
    }

    #[test]
    fn k_of_n_is_parsed_and_bad_ones_are_refused_clearly() {
        assert_eq!(
            "1/2".parse::<Partition>(),
            Ok(Partition { index: 1, count: 2 })
        );
        assert_eq!(
            "3/2".parse::<Partition>(),
            Err(PartitionError::IndexTooLarge { index: 3, count: 2 })
        );
        assert!(matches!(
            "0/0".parse::<Partition>(),
            Err(PartitionError::Count { .. })
        ));
        assert!(matches!(
            "0/5000".parse::<Partition>(),
            Err(PartitionError::Count { .. })
        ));
        for bad in ["2", "a/b", "-1/2", "1/2/3", ""] {
            assert!(
                matches!(bad.parse::<Partition>(), Err(PartitionError::Form(_))),
                "{bad}"
            );
        }
        let message = "3/2".parse::<Partition>().expect_err("refused").to_string();
        assert!(message.contains("K must be below N"), "{message}");
    }
}
