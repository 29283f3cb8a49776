//! When each device connects and first publishes, so a fleet's load is spread evenly over time
//! instead of arriving in bursts.

use std::time::Duration;

/// Connection starts are spread over this unless the fleet says otherwise, so a fleet is up
/// quickly without every device opening its socket at the same instant.
pub const MAX_CONNECT_SPREAD: Duration = Duration::from_secs(1);

/// Offsets from the fleet's start at which one device begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// When the device opens its connection.
    pub connect: Duration,
    /// When it publishes its first reading; later ones follow every interval.
    pub first_publish: Duration,
}

/// Offsets of device `index` of `devices` with the default connect spread: the interval or
/// [`MAX_CONNECT_SPREAD`], whichever is shorter.
pub fn offsets(index: usize, devices: usize, interval: Duration) -> Offsets {
    offsets_over(index, devices, interval, interval.min(MAX_CONNECT_SPREAD))
}

/// Offsets of device `index` of `devices`: its connection opens `index / devices` of the way
/// through `ramp`, and its first publish is the same fraction
/// through the interval, moved on by whole intervals until it is not before the connection.
/// So publishes stay evenly spread and none is due before its device connects.
pub fn offsets_over(index: usize, devices: usize, interval: Duration, ramp: Duration) -> Offsets {
    let connect = fraction_of(ramp, index, devices);
    let mut first_publish = fraction_of(interval, index, devices);
    if first_publish < connect && !interval.is_zero() {
        let behind = (connect - first_publish).as_nanos();
        let rounds = behind.div_ceil(interval.as_nanos());
        first_publish += interval * u32::try_from(rounds).unwrap_or(u32::MAX);
    }
    Offsets {
        connect,
        first_publish,
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
    fn a_ramp_longer_than_the_interval_defers_first_publishes_past_the_connection() {
        let interval = Duration::from_millis(10);
        let ramp = Duration::from_secs(2);
        for index in [0, 1, 500, 999] {
            let at = offsets_over(index, 1000, interval, ramp);
            assert_eq!(at.connect, ramp * index as u32 / 1000);
            assert!(at.first_publish >= at.connect, "{at:?}");
            assert!(at.first_publish < at.connect + interval, "{at:?}");
            // Still on the device's own slot within the interval.
            assert_eq!(
                at.first_publish.as_nanos() % interval.as_nanos(),
                (interval * index as u32 / 1000).as_nanos()
            );
        }
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
