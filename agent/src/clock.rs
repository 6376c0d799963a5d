//! Wall-clock time for the agent's schedules, behind a seam paused-time tests can drive.
//!
//! Certificates and task grants carry wall-clock instants (`notAfter`, a deadline in Unix
//! seconds), while the rotation worker waits with `tokio::time`. The worker reads "now"
//! from a [`Clock`] and turns the distance to the next wall-clock instant into a tokio
//! sleep ([`until`]). Production uses [`SystemClock`]; tests use [`TokioClock`], a wall
//! clock that moves with tokio's (paused) clock, so a certificate's half-life an hour
//! away is reached in milliseconds, exactly when the schedule says.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

/// Where the current wall-clock time comes from.
pub trait Clock: Debug + Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;

    /// Now, in Unix seconds.
    fn now_unix(&self) -> i64 {
        crate::cache::unix(self.now())
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that advances with tokio's clock: it reads `start` when created and then
/// moves exactly as `tokio::time::Instant` does, so `tokio::time::pause`/`advance` (or
/// `#[tokio::test(start_paused = true)]`) drive it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: SystemTime,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            wall: start,
            origin: tokio::time::Instant::now(),
        }
    }

    /// A clock reading the current system time rounded down to a whole second (X.509
    /// validity has second precision, so certificates issued "now" start exactly now).
    pub fn starting_now() -> Self {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// The tokio instant at which this clock reads `at` (now, if `at` has passed).
    pub fn instant_at(&self, at: SystemTime) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        now + until(self, at)
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall + self.origin.elapsed()
    }
}

/// How long from now until `at` by `clock` (zero if `at` has passed).
pub fn until(clock: &(impl Clock + ?Sized), at: SystemTime) -> Duration {
    at.duration_since(clock.now()).unwrap_or(Duration::ZERO)
}

/// The wall-clock instant of `unix` seconds.
pub fn from_unix(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_moves_with_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(3600));
        assert_eq!(clock.now_unix(), 1_000_000 + 3600);
        let later = start + Duration::from_secs(3700);
        assert_eq!(until(&clock, later), Duration::from_secs(100));
        assert_eq!(
            until(&clock, start),
            Duration::ZERO,
            "past instants are now"
        );
        tokio::time::sleep_until(clock.instant_at(later)).await;
        assert_eq!(clock.now(), later);
    }

    #[test]
    fn unix_seconds_map_to_wall_time() {
        assert_eq!(from_unix(0), SystemTime::UNIX_EPOCH);
        assert_eq!(
            from_unix(-5),
            SystemTime::UNIX_EPOCH,
            "before the epoch clamps"
        );
        assert_eq!(crate::cache::unix(from_unix(1_700_000_000)), 1_700_000_000);
    }
}
