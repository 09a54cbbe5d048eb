//! The maps the programs write. Sizes here are defaults: the agent sets the
//! flow maps' size at load time (`--max-flows`).
//!
//! There are two of everything indexed by slot: the programs write the slot
//! named in `CONTROL` while the agent drains the other one, so a drain never
//! races with a writer (see the agent's `drain` module for the barrier).
//!
//! The sampling generator's state is per CPU and only ever written by its
//! own CPU: in `SAMPLERS` (one cache line per CPU, beside the threshold) for
//! the first `SAMPLER_CPUS` CPUs, in the `RNG` per-CPU array beyond.

use crate::parse::COPY_LEN;
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
};
use flowagent_common::{
    COUNTERS_PER_SLOT, CachedV4, CachedV6, DEFAULT_MAX_FLOWS, FlowKeyV4, FlowKeyV6, FlowStats,
    SAMPLER_CPUS, SLOTS, Sampler,
};

/// Every CPU's IPv4 flow cache for both slots (layout: [`Sampler`]); the
/// agent sizes it at load time and reads it through a memory mapping.
#[map]
pub static CACHE_V4: Array<CachedV4> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Every CPU's IPv6 flow cache for both slots.
#[map]
pub static CACHE_V6: Array<CachedV6> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// IPv4 flows, slot 0.
#[map]
pub static FLOWS_V4_0: PerCpuHashMap<FlowKeyV4, FlowStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
/// IPv4 flows, slot 1.
#[map]
pub static FLOWS_V4_1: PerCpuHashMap<FlowKeyV4, FlowStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
/// IPv6 flows, slot 0.
#[map]
pub static FLOWS_V6_0: PerCpuHashMap<FlowKeyV6, FlowStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
/// IPv6 flows, slot 1.
#[map]
pub static FLOWS_V6_1: PerCpuHashMap<FlowKeyV6, FlowStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Per-CPU scratch space for the headers of a TC frame whose skb does not
/// hold them in its linear part (see the TC entry point).
#[map]
pub static HEADERS: PerCpuArray<[u8; COPY_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Out-of-flow counters (`flowagent_common::Counter`) for both slots.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS * COUNTERS_PER_SLOT, 0);

/// Per-CPU xorshift32 state for the sampling decision (0: not seeded yet),
/// for CPUs numbered [`SAMPLER_CPUS`] and above.
#[map]
pub static RNG: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The per-packet settings of CPUs 0 to [`SAMPLER_CPUS`] - 1, indexed by
/// CPU number (.bss, 32 KiB; the agent sets every line at load time).
///
/// Why not a per-CPU array map: its inlined lookup loads the map's per-CPU
/// pointer table before the value, two dependent cache lines on the
/// sampled-out path. Here the address is the inlined
/// `bpf_get_smp_processor_id()` (a per-CPU variable the kernel keeps hot)
/// times 64: one line, which also holds the threshold (see [`Sampler`]).
#[unsafe(no_mangle)]
static mut SAMPLERS: [Sampler; SAMPLER_CPUS] = [Sampler::new(0); SAMPLER_CPUS];

/// The threshold for CPUs numbered [`SAMPLER_CPUS`] and above, set by the
/// agent at load time (the verifier sees a constant).
#[unsafe(no_mangle)]
static SAMPLE_THRESHOLD: u32 = 0;

/// Written by the clock program: [jiffies, CLOCK_MONOTONIC ns] of one instant.
#[map]
pub static CLOCK: Array<u64> = Array::with_max_entries(2, 0);

/// Entry 0: the slot the programs write now (0 or 1).
#[map]
pub static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// The slot to write, read once per packet.
#[inline(always)]
pub fn active_slot() -> u32 {
    match CONTROL.get(0) {
        Some(slot) => *slot & 1,
        None => 0,
    }
}

/// The CPU a program runs on: its line of settings when it has one.
#[derive(Clone, Copy)]
pub struct Cpu {
    /// This CPU's entry of `SAMPLERS`; null for CPUs numbered
    /// [`SAMPLER_CPUS`] and above, which have no flow cache.
    sampler: *mut Sampler,
}

impl Cpu {
    /// The CPU this program runs on.
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: helper without preconditions; the verifier inlines it.
        let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } as usize;
        let sampler = if cpu < SAMPLER_CPUS {
            // SAFETY: in bounds (checked above); a raw pointer, no reference
            // to the `static mut` is formed.
            unsafe { &raw mut SAMPLERS[cpu] }
        } else {
            core::ptr::null_mut()
        };
        Cpu { sampler }
    }

    /// Whether this packet is left out by 1-in-N sampling.
    ///
    /// The decision draws from this CPU's xorshift32 generator (Marsaglia,
    /// "Xorshift RNGs", 2003), seeded once from `bpf_get_prandom_u32()`: a
    /// helper call costs about 15 ns on these machines, most of the
    /// sampled-out path's budget, while the generator is six ALU ops. Its
    /// output is never 0 and its period 2^32 - 1, plenty for 1-in-N sampling.
    #[inline(always)]
    pub fn sampled_out(self) -> bool {
        let (state, threshold): (*mut u32, u32) = if !self.sampler.is_null() {
            // SAFETY: this CPU's entry of SAMPLERS. The threshold is only
            // written by the loader, before any program runs.
            unsafe { (&raw mut (*self.sampler).state, (*self.sampler).threshold) }
        } else {
            // SAFETY: reading a plain `.rodata` global; volatile stops the
            // compiler from folding the default value in before the loader
            // overrides it.
            let threshold = unsafe { core::ptr::read_volatile(&SAMPLE_THRESHOLD) };
            match RNG.get_ptr_mut(0) {
                Some(state) => (state, threshold),
                None => return false,
            }
        };
        if threshold == 0 {
            return false;
        }
        // SAFETY: this CPU's own state; nothing else writes it while this
        // program runs (programs do not nest on one CPU here, and a CPU only
        // touches its own entry).
        let mut x = unsafe { *state };
        if x == 0 {
            // SAFETY: helper without preconditions.
            x = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } | 1;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // SAFETY: as above.
        unsafe { *state = x };
        x >= threshold
    }

    /// The index in the cache arrays of the entry for a key hashing to
    /// `hash` in this CPU's cache of `slot` (0 or 1); None without a cache.
    #[inline(always)]
    pub fn cache_index(self, slot: u32, hash: u32) -> Option<u32> {
        if self.sampler.is_null() {
            return None;
        }
        // SAFETY: this CPU's entry of SAMPLERS, written only by the loader.
        let (base, mask) = unsafe {
            (
                (*self.sampler).cache_base[(slot & 1) as usize],
                (*self.sampler).cache_mask,
            )
        };
        Some(base + (hash & mask))
    }
}

/// Adds `packets` and `bytes` to a pair of counters of `slot`.
#[inline(always)]
pub fn count(slot: u32, packets_index: u32, bytes: u64) -> bool {
    let first = bump(slot * COUNTERS_PER_SLOT + packets_index, 1);
    bump(slot * COUNTERS_PER_SLOT + packets_index + 1, bytes);
    first
}

/// Counts one flow entry created in `slot` (`index`: `Counter::FlowsV4` or
/// `Counter::FlowsV6`).
#[inline(always)]
pub fn count_entry(slot: u32, index: u32) {
    bump(slot * COUNTERS_PER_SLOT + index, 1);
}

/// Adds `by` to one per-CPU counter; true when it was zero before (the first
/// event of its kind on this CPU in this interval).
#[inline(always)]
fn bump(index: u32, by: u64) -> bool {
    match COUNTERS.get_ptr_mut(index) {
        Some(c) => {
            // SAFETY: per-CPU slot, no other writer; the pointer comes from a
            // successful lookup.
            unsafe {
                let was = *c;
                *c = was + by;
                was == 0
            }
        }
        None => false,
    }
}
