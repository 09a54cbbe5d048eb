//! Kernel jiffies to wall-clock time.
//!
//! The flow programs stamp packets with `bpf_jiffies64()` because the verifier
//! inlines it into a single load, where any clock helper costs a call. To map
//! jiffies to time the agent runs a tiny program (`flowagent_clock`, through
//! BPF_PROG_TEST_RUN) that writes the current jiffies and CLOCK_MONOTONIC
//! side by side. At start the tick length is measured from two consecutive
//! jiffies changes and rounded to the kernel's HZ; at every drain a fresh
//! (jiffies, monotonic) pair anchors the conversion, so NTP slewing and
//! clock steps apply from the next interval on. Timestamps are exact to one
//! tick (1/HZ: 1 to 10 ms), the resolution of the stamps themselves.

use std::{
    os::fd::{AsFd, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Array, MapData};

use super::{Error, sys};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// HZ values Linux is built with (CONFIG_HZ choices).
const KNOWN_HZ: [u64; 6] = [100, 200, 250, 300, 500, 1000];

/// Rounds a measured tick length to the nearest known HZ.
pub fn hz_from_tick(tick_ns: u64) -> Option<u64> {
    if tick_ns == 0 {
        return None;
    }
    let measured = 1e9 / tick_ns as f64;
    KNOWN_HZ
        .iter()
        .copied()
        .min_by(|a, b| {
            (*a as f64 - measured)
                .abs()
                .total_cmp(&(*b as f64 - measured).abs())
        })
        .filter(|hz| (*hz as f64 - measured).abs() / (*hz as f64) < 0.2)
}

/// Reads the kernel's jiffies next to CLOCK_MONOTONIC.
pub struct KernelClock {
    prog: OwnedFd,
    map: Array<MapData, u64>,
    hz: u64,
}

impl KernelClock {
    /// Takes the clock program and its map, and measures HZ (a few ticks).
    pub fn new(prog: OwnedFd, map: Array<MapData, u64>) -> Result<Self, Error> {
        let mut clock = KernelClock { prog, map, hz: 0 };
        clock.hz = clock.measure_hz()?;
        Ok(clock)
    }

    /// The kernel's tick rate.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// One (jiffies, CLOCK_MONOTONIC ns) pair from the kernel.
    fn sample(&self) -> Result<(u64, u64), Error> {
        sys::run_xdp_once(self.prog.as_fd()).map_err(|source| Error::Syscall {
            what: "running the clock program",
            source,
        })?;
        let read = |i| {
            self.map.get(&i, 0).map_err(|e| Error::Map {
                name: flowagent_common::names::CLOCK,
                reason: e.to_string(),
            })
        };
        Ok((read(0)?, read(1)?))
    }

    /// Times a span of [`SPAN`] jiffies, from just after one tick to just
    /// after another. Each end is seen up to one poll late (200 us, or a
    /// few ms when the CPU is busy: two consecutive ticks once measured
    /// 2.7 ms at HZ 250 on a loaded machine), so the span divides that error
    /// down, and a span that still matches no HZ is measured again.
    fn measure_hz(&self) -> Result<u64, Error> {
        const SPAN: u64 = 8;
        let deadline = Instant::now() + Duration::from_secs(2);
        let reach = |target: u64| -> Result<(u64, u64), Error> {
            loop {
                let (j, mono) = self.sample()?;
                if j >= target {
                    return Ok((j, mono));
                }
                if Instant::now() > deadline {
                    return Err(Error::Clock("jiffies did not advance within 2 s".into()));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        let mut tick = 0;
        for _ in 0..3 {
            let (j0, _) = self.sample()?;
            let (j1, t1) = reach(j0 + 1)?;
            let (j2, t2) = reach(j1 + SPAN)?;
            tick = (t2 - t1) / (j2 - j1).max(1);
            if let Some(hz) = hz_from_tick(tick) {
                return Ok(hz);
            }
        }
        Err(Error::Clock(format!("a tick of {tick} ns matches no HZ")))
    }

    /// A conversion anchored now.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let (jiffies, mono_ns) = self.sample()?;
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono_now = clock_ns(libc::CLOCK_MONOTONIC);
        Ok(Snapshot {
            jiffies,
            mono_ns,
            offset_ns: real as i128 - mono_now as i128,
            hz: self.hz,
        })
    }
}

/// Converts jiffies to wall-clock time around one anchor.
#[derive(Copy, Clone, Debug)]
pub struct Snapshot {
    jiffies: u64,
    mono_ns: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns.
    offset_ns: i128,
    hz: u64,
}

impl Snapshot {
    /// The kernel jiffies this snapshot was taken at: the anchor against
    /// which 32-bit jiffies (IPv4 cache entries) are widened.
    pub fn jiffies(&self) -> u64 {
        self.jiffies
    }

    /// The wall-clock time of kernel jiffies `j`.
    pub fn wall(&self, j: u64) -> SystemTime {
        // The drain converts two stamps per flow: stay in i64 (a hardware
        // divide) while the tick delta is small enough, which it always is
        // within an interval, and fall back to i128 (a libcall) otherwise.
        // Both truncate toward zero, so they agree wherever both apply.
        let dj = (j as i128 - self.jiffies as i128) as i64;
        let delta = match dj.checked_mul(1_000_000_000) {
            Some(ns) if j as i128 - self.jiffies as i128 == dj as i128 => {
                (ns / self.hz as i64) as i128
            }
            _ => (j as i128 - self.jiffies as i128) * 1_000_000_000 / self.hz as i128,
        };
        let t = (self.mono_ns as i128 + delta + self.offset_ns).max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_lengths_round_to_hz() {
        assert_eq!(hz_from_tick(4_000_000), Some(250));
        assert_eq!(hz_from_tick(4_003_100), Some(250));
        assert_eq!(hz_from_tick(1_000_000), Some(1000));
        assert_eq!(hz_from_tick(3_333_333), Some(300));
        assert_eq!(hz_from_tick(10_000_000), Some(100));
        assert_eq!(hz_from_tick(77), None);
        assert_eq!(hz_from_tick(0), None);
    }

    #[test]
    fn jiffies_map_around_the_anchor() {
        let s = Snapshot {
            jiffies: 1_000,
            mono_ns: 50_000_000_000,
            offset_ns: 1_700_000_000_000_000_000,
            hz: 250,
        };
        let at = |j| {
            s.wall(j)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        };
        assert_eq!(at(1_000), 1_700_000_050_000_000_000);
        assert_eq!(at(750), 1_700_000_049_000_000_000);
        assert_eq!(at(1_001), 1_700_000_050_004_000_000);
    }

    #[test]
    fn fast_and_wide_paths_agree() {
        // HZ 300 does not divide a second: both paths must truncate alike.
        let s = Snapshot {
            jiffies: 1 << 40,
            mono_ns: 7_000_000_000,
            offset_ns: 1_700_000_000_000_000_000,
            hz: 300,
        };
        let wide = |j: u64| {
            let delta = (j as i128 - s.jiffies as i128) * 1_000_000_000 / s.hz as i128;
            (s.mono_ns as i128 + delta + s.offset_ns).max(0) as u64 as u128
        };
        let ns = |j| {
            s.wall(j)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        };
        for j in [
            s.jiffies,
            s.jiffies + 1,
            s.jiffies - 1,
            s.jiffies - 7,
            s.jiffies + 12_345,
            0,
            u64::MAX,
        ] {
            assert_eq!(ns(j), wide(j), "jiffies {j}");
        }
    }
}
