//! Kernel monotonic time to wall-clock time.
//!
//! The programs stamp packets with `bpf_ktime_get_coarse_ns()`, which counts
//! on the CLOCK_MONOTONIC base; the offset to CLOCK_REALTIME is read at each
//! drain so a clock step (NTP) applies from the next interval on.

use std::time::{Duration, SystemTime};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts kernel monotonic nanoseconds to wall-clock time.
#[derive(Copy, Clone, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns, when it was sampled.
    offset_ns: i128,
}

impl WallClock {
    /// Samples the offset now.
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real as i128 - mono as i128,
        }
    }

    /// The wall-clock time of kernel monotonic `ns`.
    pub fn wall(&self, ns: u64) -> SystemTime {
        let t = (ns as i128 + self.offset_ns).max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_now_maps_to_about_now() {
        let clock = WallClock::now();
        let wall = clock.wall(clock_ns(libc::CLOCK_MONOTONIC));
        let skew = wall
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(1), "{skew:?}");
    }
}
