//! A monotonic clock cheap enough to read on every read and write.
//!
//! The echo loop stamps activity on each I/O so that its idle and frame
//! timeouts are exact, but `Instant::now()` (`CLOCK_MONOTONIC`) costs a
//! counter read and its scaling each time — a fifth of the loop's own
//! user-space time in `benches/hot_path.rs`. On Linux a [`Stamp`] is
//! `CLOCK_MONOTONIC_COARSE`, the time of the last timer tick, read from the
//! vDSO without touching the counter; it runs at most one tick (1–10 ms)
//! behind, which is far below any timeout's resolution. Elsewhere it is
//! `Instant` since the process's first stamp.
//!
//! A stamp becomes an `Instant` only when a timer is armed, which the loop
//! does far more rarely than it stamps.

use std::time::{Duration, Instant};

/// A point in monotonic time, in nanoseconds from an arbitrary origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    /// Now, to within one clock tick.
    pub fn now() -> Stamp {
        Stamp(imp::now())
    }

    /// `duration` later (saturating).
    pub fn after(self, duration: Duration) -> Stamp {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Stamp(self.0.saturating_add(nanos))
    }

    /// The same moment as an `Instant` (to within a tick).
    pub fn to_instant(self) -> Instant {
        let (stamp, instant) = (Stamp::now(), Instant::now());
        if self >= stamp {
            instant + Duration::from_nanos(self.0 - stamp.0)
        } else {
            let ago = Duration::from_nanos(stamp.0 - self.0);
            instant.checked_sub(ago).unwrap_or(instant)
        }
    }

    /// Nanoseconds from the origin, for storing in an atomic.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    pub fn from_nanos(nanos: u64) -> Stamp {
        Stamp(nanos)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    pub fn now() -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec for the call to fill in;
        // CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32.
        let done = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
        debug_assert_eq!(done, 0, "CLOCK_MONOTONIC_COARSE unavailable");
        (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::{sync::OnceLock, time::Instant};

    pub fn now() -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_run_with_the_monotonic_clock_to_within_a_tick() {
        let (start, started) = (Stamp::now(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (end, ended) = (Stamp::now(), Instant::now());
        let stamped = Duration::from_nanos(end.as_nanos() - start.as_nanos());
        let measured = ended - started;
        let tick = Duration::from_millis(20);
        assert!(
            stamped + tick >= measured && stamped <= measured + tick,
            "{stamped:?} stamped against {measured:?} measured"
        );
        let back = start.after(Duration::from_secs(1)).to_instant();
        let expected = started + Duration::from_secs(1);
        assert!(
            back + tick >= expected && back <= expected + tick,
            "{back:?} against {expected:?}"
        );
        assert!(start <= end);
    }
}
