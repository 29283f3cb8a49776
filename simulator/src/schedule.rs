//! When each device connects and first publishes, so a fleet's load is spread evenly over time
//! instead of arriving in bursts.

use std::time::Duration;

/// Connection starts are spread over the interval or this, whichever is shorter, so a fleet is
/// up quickly without every device opening its socket at the same instant.
pub const MAX_CONNECT_SPREAD: Duration = Duration::from_secs(1);

/// Offsets from the fleet's start at which one device begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// When the device opens its connection.
    pub connect: Duration,
    /// When it publishes its first reading; later ones follow every interval.
    pub first_publish: Duration,
}

/// Offsets of device `index` of `devices`: its first publish is `index / devices` of the way
/// through the interval, and its connection the same fraction of the connect spread (so it
/// never comes after the first publish).
pub fn offsets(index: usize, devices: usize, interval: Duration) -> Offsets {
    Offsets {
        connect: fraction_of(interval.min(MAX_CONNECT_SPREAD), index, devices),
        first_publish: fraction_of(interval, index, devices),
    }
}

/// `span × index / devices`, in integer nanoseconds so offsets are exact and never overflow.
fn fraction_of(span: Duration, index: usize, devices: usize) -> Duration {
    let nanos = span.as_nanos() * index as u128 / devices.max(1) as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_publishes_are_spread_evenly_over_one_interval() {
        let interval = Duration::from_secs(5);
        let starts: Vec<_> = (0..1000)
            .map(|index| offsets(index, 1000, interval).first_publish)
            .collect();
        assert_eq!(starts[0], Duration::ZERO);
        assert_eq!(starts[500], Duration::from_millis(2500));
        assert!(starts
            .windows(2)
            .all(|pair| pair[1] - pair[0] == Duration::from_millis(5)));
        assert!(starts.iter().all(|start| *start < interval));
    }

    #[test]
    fn connections_are_spread_over_at_most_a_second_and_precede_publishing() {
        for interval in [Duration::from_millis(200), Duration::from_secs(5)] {
            for index in 0..100 {
                let at = offsets(index, 100, interval);
                assert!(at.connect <= at.first_publish);
                assert!(at.connect < interval.min(MAX_CONNECT_SPREAD));
            }
        }
        let last = offsets(99, 100, Duration::from_secs(5));
        assert_eq!(last.connect, Duration::from_millis(990));
    }

    #[test]
    fn a_single_device_starts_at_once() {
        assert_eq!(
            offsets(0, 1, Duration::from_secs(5)),
            Offsets {
                connect: Duration::ZERO,
                first_publish: Duration::ZERO
            }
        );
    }
}
