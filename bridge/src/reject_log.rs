//! Logging refused input without letting a misbehaving device flood the log: at most one line
//! per reason per interval, with the number of refusals not logged in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::ingest::RejectReason;

/// Per-reason log throttle.
#[derive(Debug)]
pub struct RejectLog {
    interval: Duration,
    /// When each reason was last logged, and how many refusals went unlogged since.
    last: HashMap<RejectReason, (Instant, u64)>,
}

impl RejectLog {
    pub fn new(interval: Duration) -> Self {
        RejectLog {
            interval,
            last: HashMap::new(),
        }
    }

    /// Records a refusal at `now`, logging it if its reason has not been logged recently.
    pub fn record(&mut self, reason: RejectReason, topic: &str, now: Instant) {
        if let Some(suppressed) = self.should_log(reason, now) {
            warn!(
                reason = reason.as_str(),
                topic,
                suppressed_since_last_log = suppressed,
                "device message refused"
            );
        }
    }

    /// `Some(number suppressed since the last line)` when a line is due.
    fn should_log(&mut self, reason: RejectReason, now: Instant) -> Option<u64> {
        match self.last.get_mut(&reason) {
            Some((logged_at, suppressed)) if now.duration_since(*logged_at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((logged_at, suppressed)) => {
                let count = *suppressed;
                *logged_at = now;
                *suppressed = 0;
                Some(count)
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_reports_the_suppressed() {
        let mut log = RejectLog::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.should_log(RejectReason::NotJson, start), Some(0));
        assert_eq!(log.should_log(RejectReason::NotJson, start), None);
        assert_eq!(log.should_log(RejectReason::NoMetrics, start), Some(0));
        let later = start + Duration::from_secs(3);
        assert_eq!(log.should_log(RejectReason::NotJson, later), None);
        let much_later = start + Duration::from_secs(11);
        assert_eq!(log.should_log(RejectReason::NotJson, much_later), Some(2));
    }
}
