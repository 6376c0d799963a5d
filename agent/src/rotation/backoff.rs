//! Retry delays: capped exponential backoff with jitter, and the cap by remaining life.
//!
//! Delays start at [`BACKOFF_MIN`] and double up to [`BACKOFF_MAX`]; each is drawn in
//! the upper half of its step (`[step/2, step]`) so a fleet of agents that lost the server
//! together does not come back in lock-step. A retry for an SVID that is still being
//! served is also capped by a quarter of that SVID's remaining life
//! ([`capped_by_life`]): backoff grown during a long outage must not sleep through the
//! last minutes in which renewal could still save the SVID.

use std::time::Duration;

/// First retry delay.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Shortest retry delay, even for an SVID about to expire (no busy loop).
pub(crate) const RETRY_FLOOR: Duration = Duration::from_millis(100);

/// Capped exponential backoff with jitter in the upper half.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The delay to wait now; doubles the next one up to the cap.
    pub(crate) fn step(&mut self) -> Duration {
        self.step_with(rand::random::<f64>())
    }

    /// [`Backoff::step`] with the random draw `unit` in `[0, 1)` given.
    pub(crate) fn step_with(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        base.mul_f64(0.5 + unit.clamp(0.0, 1.0) * 0.5)
    }
}

/// `delay`, but no longer than a quarter of `remaining` (the life left to the SVID that
/// is still served, if any) and no shorter than [`RETRY_FLOOR`].
pub(crate) fn capped_by_life(delay: Duration, remaining: Option<Duration>) -> Duration {
    match remaining {
        Some(left) if !left.is_zero() => delay.min(left / 4).max(RETRY_FLOOR.min(delay)),
        _ => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_start_within_jitter_and_is_capped() {
        let mut b = Backoff::default();
        let mut base = BACKOFF_MIN;
        for _ in 0..20 {
            let low = b.step_with(0.0);
            assert_eq!(low, base / 2, "lowest draw is half the step");
            base = (base * 2).min(BACKOFF_MAX);
        }
        let mut b = Backoff::default();
        // 0.5 s to 16 s: the steps below the cap.
        let steps: Vec<Duration> = (0..6).map(|_| b.step_with(0.999_999)).collect();
        assert!(steps[0] <= BACKOFF_MIN && steps[0] > BACKOFF_MIN * 99 / 100);
        for w in steps.windows(2) {
            assert!(w[1] > w[0] * 19 / 10 && w[1] <= w[0] * 21 / 10, "{steps:?}");
        }
        for _ in 0..20 {
            assert!(b.step() <= BACKOFF_MAX);
        }
        assert_eq!(b.step_with(0.0), BACKOFF_MAX / 2, "capped at 30 s");
        b.reset();
        assert!(b.step() <= BACKOFF_MIN, "reset starts over");
    }

    #[test]
    fn draws_are_jittered() {
        let draws: std::collections::HashSet<Duration> =
            (0..50).map(|_| Backoff::default().step()).collect();
        assert!(
            draws.len() > 40,
            "50 first delays, {} distinct",
            draws.len()
        );
        assert!(
            draws
                .iter()
                .all(|d| (BACKOFF_MIN / 2..=BACKOFF_MIN).contains(d))
        );
    }

    #[test]
    fn remaining_life_caps_the_delay() {
        let s = Duration::from_secs;
        assert_eq!(capped_by_life(s(30), None), s(30), "no SVID served: no cap");
        assert_eq!(
            capped_by_life(s(30), Some(s(3600))),
            s(30),
            "far from expiry"
        );
        assert_eq!(
            capped_by_life(s(30), Some(s(40))),
            s(10),
            "a quarter of 40 s"
        );
        assert_eq!(
            capped_by_life(s(30), Some(Duration::from_millis(200))),
            RETRY_FLOOR,
            "never a busy loop"
        );
        assert_eq!(
            capped_by_life(Duration::from_millis(50), Some(Duration::from_millis(200))),
            Duration::from_millis(50),
            "the floor never lengthens a delay"
        );
        assert_eq!(
            capped_by_life(s(30), Some(Duration::ZERO)),
            s(30),
            "expired"
        );
    }
}
