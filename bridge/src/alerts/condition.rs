//! One rule's condition on one device, as pure synchronous state: the deadband that keeps a
//! noisy signal from flapping, the on-delay (`for`) and off-delay (`keep_firing_for`), and
//! the sample window of a rate-of-change rule. Time is passed in (ms), never read, so every
//! decision is testable without a clock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::rules::{Direction, Rule};

/// Where a condition stands once its delays are applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Not breached.
    #[default]
    Normal,
    /// Breached since `since`, waiting out the on-delay.
    Pending { since: i64 },
    /// Breached long enough: the alert is active.
    Firing,
    /// Back to normal since `since`, waiting out the off-delay; the alert is still active.
    Clearing { since: i64 },
}

impl Phase {
    /// Whether the alert is active in this phase.
    pub fn is_firing(self) -> bool {
        matches!(self, Phase::Firing | Phase::Clearing { .. })
    }

    /// When this phase's delay ends, if it has one.
    pub fn deadline(self, rule: &Rule) -> Option<i64> {
        match self {
            Phase::Pending { since } => Some(since.saturating_add(rule.for_ms)),
            Phase::Clearing { since } => Some(since.saturating_add(rule.keep_firing_for_ms)),
            Phase::Normal | Phase::Firing => None,
        }
    }
}

/// A rule's condition on one device.
#[derive(Debug, Clone, Default)]
pub struct ConditionState {
    pub phase: Phase,
    /// The condition itself, deadband applied, before delays.
    pub breached: bool,
    /// Recent samples, for a rate rule: points of the window, then the newest.
    samples: VecDeque<(i64, f64)>,
    /// For an offline rule: a silence check is in the deadline queue.
    pub check_scheduled: bool,
}

/// How finely a rate rule's window is kept: samples at least `window / RATE_RESOLUTION` apart
/// (the newest always). A device and rule hold at most `RATE_RESOLUTION + 2` samples however
/// fast the device reports, so 100K devices with a rate rule cost a few MB, not hundreds;
/// the window's start is exact to a sixteenth of the window.
const RATE_RESOLUTION: i64 = 16;

impl ConditionState {
    /// A condition restored in `phase` (after a restart).
    pub fn restored(phase: Phase) -> Self {
        ConditionState {
            phase,
            breached: matches!(phase, Phase::Pending { .. } | Phase::Firing),
            samples: VecDeque::new(),
            check_scheduled: false,
        }
    }

    /// Feeds the condition's truth at `now_ms`. Returns whether the phase changed; the new
    /// phase's deadline (if any) is `self.phase.deadline(rule)`.
    pub fn observe(&mut self, breached: bool, now_ms: i64, rule: &Rule) -> bool {
        self.breached = breached;
        let next = match (self.phase, breached) {
            (Phase::Normal, true) if rule.for_ms > 0 => Phase::Pending { since: now_ms },
            (Phase::Normal, true) => Phase::Firing,
            (Phase::Pending { .. }, false) => Phase::Normal,
            (Phase::Firing, false) if rule.keep_firing_for_ms > 0 => {
                Phase::Clearing { since: now_ms }
            }
            (Phase::Firing, false) => Phase::Normal,
            (Phase::Clearing { .. }, true) => Phase::Firing,
            (phase, _) => phase,
        };
        self.set(next)
    }

    /// A deadline came at `now_ms`: ends a delay that has run out. Returns whether the phase
    /// changed. Stale deadlines (the phase moved on since) change nothing.
    pub fn expire(&mut self, now_ms: i64, rule: &Rule) -> bool {
        let due = self.phase.deadline(rule).is_some_and(|at| at <= now_ms);
        if !due {
            return false;
        }
        let next = match self.phase {
            Phase::Pending { .. } if self.breached => Phase::Firing,
            Phase::Clearing { .. } if !self.breached => Phase::Normal,
            phase => phase,
        };
        self.set(next)
    }

    fn set(&mut self, next: Phase) -> bool {
        let changed = next != self.phase;
        self.phase = next;
        changed
    }

    /// Records a sample of a rate rule at `ts` and returns the change per minute over the
    /// last `window_ms`, once two samples at least a second apart are in the window.
    pub fn rate_per_minute(&mut self, ts: i64, value: f64, window_ms: i64) -> Option<f64> {
        if self.samples.back().is_some_and(|&(last, _)| ts <= last) {
            // Out of order or repeated: not a new point of the series.
            return None;
        }
        // The newest sample replaces the previous one unless that one is far enough from the
        // sample before it to be kept as a point of the window.
        let spacing = (window_ms / RATE_RESOLUTION).max(1);
        let len = self.samples.len();
        if len >= 2 && self.samples[len - 1].0 - self.samples[len - 2].0 < spacing {
            self.samples.pop_back();
        }
        self.samples.push_back((ts, value));
        while self
            .samples
            .front()
            .is_some_and(|&(first, _)| first < ts.saturating_sub(window_ms))
        {
            self.samples.pop_front();
        }
        let &(first_ts, first_value) = self.samples.front()?;
        let span_ms = ts - first_ts;
        (span_ms >= 1000).then(|| (value - first_value) * 60_000.0 / span_ms as f64)
    }
}

/// Whether a level condition is breached for `value`, given whether it was: it starts
/// beyond `trigger` and lasts until the value is back beyond `clear` (the deadband).
pub fn level_breached(
    direction: Direction,
    trigger: f64,
    clear: f64,
    value: f64,
    was_breached: bool,
) -> bool {
    if was_breached {
        let back = match direction {
            Direction::Above => value < clear,
            Direction::Below => value > clear,
        };
        !back
    } else {
        direction.beyond(value, trigger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::{Condition, Selector};
    use iotmon_wire::Severity;

    fn rule(for_ms: i64, keep_firing_for_ms: i64) -> Rule {
        Rule {
            name: "r".into(),
            severity: Severity::Minor,
            select: Selector::default(),
            condition: Condition::Offline { after_ms: None },
            for_ms,
            keep_firing_for_ms,
            suppress_children: false,
            suppresses: None,
        }
    }

    #[test]
    fn a_noisy_signal_around_the_threshold_does_not_flap_with_a_deadband() {
        // Above 30 fires, below 28 clears; the signal wobbles 29..31 after the first breach.
        let mut breached = false;
        let mut flips = 0;
        for (i, value) in [29.0, 30.5, 29.2, 30.8, 29.0, 31.0, 28.5, 29.9, 30.1]
            .into_iter()
            .enumerate()
        {
            let now = level_breached(Direction::Above, 30.0, 28.0, value, breached);
            flips += usize::from(now != breached);
            breached = now;
            assert_eq!(breached, i >= 1, "sample {i} ({value})");
        }
        assert_eq!(flips, 1);
        assert!(!level_breached(Direction::Above, 30.0, 28.0, 27.9, true));
        assert!(level_breached(Direction::Below, 5.0, 7.0, 4.0, false));
        assert!(level_breached(Direction::Below, 5.0, 7.0, 6.5, true));
        assert!(!level_breached(Direction::Below, 5.0, 7.0, 7.5, true));
    }

    #[test]
    fn the_on_delay_fires_only_if_the_breach_lasts() {
        let rule = rule(10_000, 0);
        let mut state = ConditionState::default();
        assert!(state.observe(true, 1_000, &rule));
        assert_eq!(state.phase, Phase::Pending { since: 1_000 });
        assert_eq!(state.phase.deadline(&rule), Some(11_000));
        // A breach that ends early never fires, and its stale deadline does nothing.
        assert!(state.observe(false, 5_000, &rule));
        assert_eq!(state.phase, Phase::Normal);
        assert!(!state.expire(11_000, &rule));
        // A breach that lasts fires at its deadline, not before.
        state.observe(true, 20_000, &rule);
        assert!(!state.expire(29_999, &rule));
        assert!(state.expire(30_000, &rule));
        assert_eq!(state.phase, Phase::Firing);
        // Repeated breaches while firing change nothing.
        assert!(!state.observe(true, 31_000, &rule));
    }

    #[test]
    fn the_off_delay_keeps_firing_through_a_short_return_to_normal() {
        let rule = rule(0, 60_000);
        let mut state = ConditionState::default();
        assert!(state.observe(true, 0, &rule));
        assert_eq!(state.phase, Phase::Firing);
        assert!(state.observe(false, 1_000, &rule));
        assert_eq!(state.phase, Phase::Clearing { since: 1_000 });
        assert!(state.phase.is_firing(), "still active while clearing");
        // Back in breach before the off-delay: firing again, the deadline is stale.
        assert!(state.observe(true, 30_000, &rule));
        assert!(!state.expire(61_000, &rule));
        state.observe(false, 70_000, &rule);
        assert!(!state.expire(129_999, &rule));
        assert!(state.expire(130_000, &rule));
        assert_eq!(state.phase, Phase::Normal);
    }

    #[test]
    fn the_rate_is_the_change_per_minute_over_the_window() {
        let mut state = ConditionState::default();
        assert_eq!(state.rate_per_minute(0, 20.0, 60_000), None);
        assert_eq!(state.rate_per_minute(500, 20.5, 60_000), None, "too short");
        // +3 over 30 s: 6 per minute.
        assert_eq!(state.rate_per_minute(30_000, 23.0, 60_000), Some(6.0));
        // Out of order: ignored.
        assert_eq!(state.rate_per_minute(10_000, 99.0, 60_000), None);
        // The first samples leave the window: from 23.0 at 30 s to 23.0 at 90 s.
        assert_eq!(state.rate_per_minute(90_000, 23.0, 60_000), Some(0.0));
    }

    #[test]
    fn a_fast_device_keeps_a_bounded_window() {
        let mut state = ConditionState::default();
        let mut rate = None;
        // A reading every 10 ms for 3 minutes, rising 1 per minute, over a 1-minute window.
        for i in 0..18_000i64 {
            let ts = i * 10;
            rate = state.rate_per_minute(ts, ts as f64 / 60_000.0, 60_000);
            assert!(
                state.samples.len() <= RATE_RESOLUTION as usize + 2,
                "at {ts}"
            );
        }
        let rate = rate.expect("a rate");
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn restored_phases_keep_their_breach() {
        assert!(ConditionState::restored(Phase::Firing).breached);
        assert!(ConditionState::restored(Phase::Pending { since: 1 }).breached);
        assert!(!ConditionState::restored(Phase::Clearing { since: 1 }).breached);
    }
}
