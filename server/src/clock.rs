//! Wall-clock time for the server's domain logic, behind a seam tests can drive.
//!
//! Deadlines, certificate validity and audit timestamps are wall-clock (`SystemTime`);
//! schedules wait with `tokio::time`. Components that decide by the wall clock (task
//! deadlines) take a [`Clock`]: production uses [`SystemClock`], tests a [`ManualClock`]
//! they move forward, so an hour-long deadline is tested in milliseconds.
//!
//! (Why not tokio's paused clock: the datastore's connection pool bounds every acquire
//! with a tokio timer, and a paused runtime that waits on SQLite's worker thread jumps
//! straight to that timer and fails the acquire. Wall-clock deadlines through a seam keep
//! the real datastore in these tests.)

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Where the current wall-clock time comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;

    /// Now, in Unix seconds.
    fn now_unix(&self) -> i64 {
        unix_seconds(self.now())
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

/// A wall clock that moves only when told to ([`ManualClock::advance`]), for tests of
/// deadline logic: a deadline an hour away is reached at once, and exactly when the test
/// says.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn starting_at(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `t` in Unix seconds (0 before the epoch, saturating far in the future).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix seconds as a `SystemTime` (negative values are the epoch).
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs())
}

/// Unix seconds now, by the system clock.
pub fn now_unix() -> i64 {
    SystemClock.now_unix()
}

/// Milliseconds since the Unix epoch, by the system clock (0 before it).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let shared = clock.clone();
        assert_eq!(clock.now_unix(), 1_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now_unix(), 1_000);
        shared.advance(Duration::from_secs(3_600));
        assert_eq!(clock.now_unix(), 4_600, "clones share one time");
    }

    #[test]
    fn conversions() {
        assert_eq!(unix_seconds(from_unix_seconds(42)), 42);
        assert_eq!(from_unix_seconds(-5), SystemTime::UNIX_EPOCH);
        assert_eq!(
            unix_seconds(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            0
        );
    }
}
