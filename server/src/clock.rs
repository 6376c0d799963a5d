//! Wall-clock time for the server's domain logic, behind a seam tests can drive.
//!
//! Deadlines, certificate validity and audit timestamps are wall-clock (`SystemTime`);
//! schedules wait with `tokio::time`. Components that decide by the wall clock (task
//! deadlines) take a [`Clock`], so a test can run them under a paused tokio clock with
//! [`TokioClock`], whose wall time advances exactly as tokio's time does: a deadline an
//! hour away is reached in milliseconds with `tokio::time::advance`, and nothing else
//! changes. Production uses [`SystemClock`].

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

/// A wall clock that starts at a given time and advances with `tokio::time` (which a
/// test may pause and advance at will).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: SystemTime,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now; call from inside a tokio runtime.
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            start,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start + self.base.elapsed()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now_unix(), 1_000);
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert_eq!(clock.now_unix(), 4_600);
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
