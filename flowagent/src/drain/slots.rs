//! Switching the programs to the other slot, and knowing when no program
//! still writes the old one.
//!
//! Every CPU's line in the `CPUS` array names the slot its programs write
//! and counts their runs (`flowagent_common::CpuLine`). A program adds 1 to
//! `runs` with an atomic add, a full barrier, before it reads `slot`, and 1
//! again when it is done: `runs` is odd exactly while a run may be writing
//! the slot it read. [`Slots::flip`] writes the new slot into every line,
//! issues a full fence, then reads each `runs`: a CPU whose count is even
//! has no run in progress, and any run it begins later reads the new slot
//! (its atomic add comes after our read in the count's order, and our slot
//! write before that read); a CPU whose count is odd has one run that may
//! have read the old slot, and the flip waits until that count moves on.
//! This is Dekker's handshake (store, fence, load on both sides).
//!
//! It replaces an RCU grace period (updating a map-in-map makes the kernel
//! call `synchronize_rcu()`), which took ~8 ms on these machines, most of a
//! drain of 10k flows. The price is two atomic adds per sampled packet on
//! a line the program already holds.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
    time::{Duration, Instant},
};

use flowagent_common::CpuLine;

use super::sys::MappedArray;

/// How long [`Slots::flip`] waits for a program run to end before it gives
/// up: far beyond any run (microseconds), so only a stalled CPU hits it.
const RUN_TIMEOUT: Duration = Duration::from_secs(1);

/// A program run on some CPU did not end within [`RUN_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("a program run on CPU {cpu} did not end within {RUN_TIMEOUT:?}")]
pub struct Stalled {
    /// The CPU.
    pub cpu: usize,
}

/// The CPUs' lines, mapped.
#[derive(Debug)]
pub struct Slots {
    lines: MappedArray<CpuLine>,
}

impl Slots {
    /// The lines of the `CPUS` array, mapped.
    pub fn new(lines: MappedArray<CpuLine>) -> Self {
        Self { lines }
    }

    /// `runs` of CPU `cpu`.
    fn runs(&self, cpu: usize) -> &AtomicU64 {
        // SAFETY: `cpu` < len (callers iterate over 0..len); the line lives
        // as long as the mapping, which `self` owns; `runs` is an 8-aligned
        // u64 that every party accesses atomically.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.lines.as_ptr().add(cpu)).runs) }
    }

    /// `slot` of CPU `cpu`.
    fn slot(&self, cpu: usize) -> &AtomicU32 {
        // SAFETY: as in `runs` (a 4-aligned u32).
        unsafe { AtomicU32::from_ptr(&raw mut (*self.lines.as_ptr().add(cpu)).slot) }
    }

    /// Clears every CPU's map-full mark of `slot`, which the drain has
    /// just emptied. Only for a slot no program writes.
    pub fn clear_full(&self, slot: u32) {
        for cpu in 0..self.lines.len() {
            // SAFETY: as in `runs`; the programs write this mark only for
            // the slot they write, which is not `slot`.
            let full = unsafe {
                AtomicU32::from_ptr(
                    &raw mut (*self.lines.as_ptr().add(cpu)).full[(slot & 1) as usize],
                )
            };
            full.store(0, Ordering::Relaxed);
        }
    }

    /// Points every CPU's programs at `slot` and returns once no program
    /// run that may have read the other slot is still going; Ok holds the
    /// number of CPUs whose run in progress it waited for.
    pub fn flip(&self, slot: u32) -> Result<usize, Stalled> {
        let cpus = self.lines.len();
        for cpu in 0..cpus {
            self.slot(cpu).store(slot, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        let mut waited = 0;
        for cpu in 0..cpus {
            let runs = self.runs(cpu);
            let seen = runs.load(Ordering::Acquire);
            if seen.is_multiple_of(2) {
                continue;
            }
            waited += 1;
            let started = Instant::now();
            let mut spins = 0u32;
            while runs.load(Ordering::Acquire) == seen {
                spins += 1;
                if spins < 1000 {
                    std::hint::spin_loop();
                } else if started.elapsed() > RUN_TIMEOUT {
                    return Err(Stalled { cpu });
                } else {
                    std::thread::yield_now();
                }
            }
        }
        // What the finished runs wrote is visible from here on.
        fence(Ordering::SeqCst);
        Ok(waited)
    }
}
