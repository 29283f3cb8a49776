//! A token bucket: how fast a viewer may send messages or change its view.

use std::time::{Duration, Instant};

/// Allows `rate` events per second on average and bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled_at: now,
        }
    }

    /// Takes one token if there is one at `now`; `false` means the event exceeds the rate.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token, for telling a client when to retry.
    pub fn wait_hint(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 4, start);
        assert!((0..4).all(|_| bucket.try_take(start)), "the burst passes");
        assert!(!bucket.try_take(start), "then the bucket is empty");
        assert!(bucket.wait_hint() > Duration::ZERO);
        let half_second = start + Duration::from_millis(500);
        assert!(
            bucket.try_take(half_second),
            "one token per half second at 2/s"
        );
        assert!(!bucket.try_take(half_second));
        let much_later = start + Duration::from_secs(60);
        assert!(
            (0..4).all(|_| bucket.try_take(much_later)),
            "refills up to the burst only"
        );
        assert!(!bucket.try_take(much_later));
    }
}
