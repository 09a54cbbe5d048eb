//! The maps the programs write. Sizes here are defaults: the agent sets the
//! flow maps' size at load time (`--max-flows`).
//!
//! There are two of everything indexed by slot: the programs on a CPU write
//! the slot named in its line of `CPUS` while the agent drains the other
//! one, so a drain never races with a writer (see [`Cpu::enter`] and the
//! agent's `drain` module for the handshake).
//!
//! Per-CPU state (the sampling generator, the run count) lives in the CPU's
//! line of `CPUS` and is only ever written by its own CPU's programs.

use crate::parse::COPY_LEN;
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
};
use flowagent_common::{
    COUNTERS_PER_SLOT, CachedV4, CachedV6, CpuLine, DEFAULT_MAX_FLOWS, FlowKeyV4, FlowKeyV6,
    FlowStats, SLOTS,
};

/// Every CPU's IPv4 flow cache for both slots (layout: `CpuLine::new`); the
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

/// Every CPU's line of per-packet state, indexed by CPU number; the agent
/// sizes it at load time, writes it through a memory mapping before any
/// program is attached, and flips the slots in it at each drain.
///
/// Why an array map and not a `.bss` global: the agent must write each
/// CPU's `slot` and read its `runs` while programs run, which needs a
/// memory mapping (aya does not map `.bss`). The verifier inlines the
/// lookup into index arithmetic, so finding the line costs no load.
#[map]
pub static CPUS: Array<CpuLine> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Written by the clock program: [jiffies, CLOCK_MONOTONIC ns] of one instant.
#[map]
pub static CLOCK: Array<u64> = Array::with_max_entries(2, 0);

/// The CPU a program runs on: its line.
#[derive(Clone, Copy)]
pub struct Cpu {
    line: *mut CpuLine,
}

/// Accounts a packet when this CPU's sampler keeps it: calls `account`
/// with the CPU and the run between [`Cpu::enter`] and [`Cpu::leave`], so
/// that no entry point can leave a run open (the drain would wait for it).
#[inline(always)]
pub fn if_sampled(account: impl FnOnce(Cpu, &Run)) {
    let Some(cpu) = Cpu::current() else {
        return;
    };
    if cpu.sampled_out() {
        return;
    }
    let run = cpu.enter();
    account(cpu, &run);
    cpu.leave(run);
}

/// A program run between [`Cpu::enter`] and [`Cpu::leave`]: the slot it
/// writes.
pub struct Run {
    /// The slot (0 or 1) this run writes.
    pub slot: u32,
}

impl Cpu {
    /// The CPU this program runs on; None only if `CPUS` has no line for it
    /// (the agent sizes it for every possible CPU).
    #[inline(always)]
    fn current() -> Option<Self> {
        // SAFETY: helper without preconditions; the verifier inlines it.
        let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
        CPUS.get_ptr_mut(cpu).map(|line| Cpu { line })
    }

    /// Whether this packet is left out by 1-in-N sampling.
    ///
    /// The decision draws from this CPU's xorshift32 generator (Marsaglia,
    /// "Xorshift RNGs", 2003), seeded once from `bpf_get_prandom_u32()`: a
    /// helper call costs about 15 ns on these machines, most of the
    /// sampled-out path's budget, while the generator is six ALU ops. Its
    /// output is never 0 and its period 2^32 - 1, plenty for 1-in-N sampling.
    #[inline(always)]
    fn sampled_out(self) -> bool {
        // SAFETY: this CPU's line; the threshold is only written by the
        // agent before programs are attached.
        let threshold = unsafe { (*self.line).threshold };
        if threshold == 0 {
            return false;
        }
        // SAFETY: this CPU's own state; nothing else writes it while this
        // program runs (programs do not nest on one CPU, and a CPU only
        // touches its own line).
        let mut x = unsafe { (*self.line).state };
        if x == 0 {
            // SAFETY: helper without preconditions.
            x = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } | 1;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // SAFETY: as above.
        unsafe { (*self.line).state = x };
        x >= threshold
    }

    /// Begins a run that writes a slot: counts it in `runs` (odd from now
    /// on), then reads the slot. The add is atomic, which the JIT turns
    /// into a full barrier (x86 `lock xadd`, arm64 `ldaddal`), so the slot
    /// is read after the count is visible: the agent, which writes the new
    /// slot before it reads `runs`, either sees this run in progress or is
    /// seen by it (Dekker's handshake).
    #[inline(always)]
    fn enter(self) -> Run {
        // SAFETY: `runs` is an 8-aligned u64 in this CPU's line.
        unsafe { count_run(&raw mut (*self.line).runs) };
        // SAFETY: this CPU's line; volatile, as the agent changes it.
        let slot = unsafe { core::ptr::read_volatile(&raw const (*self.line).slot) };
        Run { slot: slot & 1 }
    }

    /// Ends a run begun with [`Cpu::enter`]: `runs` is even again. Atomic
    /// too, so that every write of the run is visible before the agent can
    /// see it ended (a plain store would do on x86, not on arm64).
    #[inline(always)]
    fn leave(self, _run: Run) {
        // SAFETY: as in `enter`.
        unsafe { count_run(&raw mut (*self.line).runs) };
    }

    /// Whether an insert into the hash map of `family` (0: IPv4, 1: IPv6)
    /// in `slot` failed on this CPU since the agent last drained it.
    #[inline(always)]
    pub fn map_full(self, slot: u32, family: u32) -> bool {
        let at = ((slot & 1) * 2 + (family & 1)) as usize;
        // SAFETY: this CPU's line; volatile, as the agent clears it.
        unsafe { core::ptr::read_volatile(&raw const (*self.line).full[at]) != 0 }
    }

    /// Notes that an insert into the hash map of `family` in `slot` failed.
    #[inline(always)]
    pub fn set_map_full(self, slot: u32, family: u32) {
        let at = ((slot & 1) * 2 + (family & 1)) as usize;
        // SAFETY: this CPU's line; the agent only clears it for a slot no
        // program writes.
        unsafe { core::ptr::write_volatile(&raw mut (*self.line).full[at], 1) };
    }

    /// The index in the cache array of `family` (0: IPv4, 1: IPv6) of the
    /// entry for a key hashing to `hash` in this CPU's cache of `slot`.
    #[inline(always)]
    pub fn cache_index(self, slot: u32, family: u32, hash: u32) -> u32 {
        // SAFETY: this CPU's line; the cache layout is only written by the
        // agent before programs are attached.
        let (base, mask) = unsafe {
            (
                (*self.line).cache_base[((slot & 1) * 2 + (family & 1)) as usize],
                (*self.line).cache_mask[(family & 1) as usize],
            )
        };
        base + (hash & mask)
    }

    /// The other way of the set of cache entry `index` of `family`
    /// (`flowagent_common::cache_buddy`).
    #[inline(always)]
    pub fn cache_buddy(self, family: u32, index: u32) -> u32 {
        // SAFETY: as in `cache_index`.
        let mask = unsafe { (*self.line).cache_mask[(family & 1) as usize] };
        flowagent_common::cache_buddy(index, mask)
    }
}

/// Adds 1 to `*runs` with BPF's atomic fetch-and-add, which the JITs turn
/// into a full barrier (x86 `lock xadd`, arm64 `ldaddal`). Assembly
/// because the BPF target has no `core::sync::atomic`; the fetched value is
/// not needed, but the non-fetching add is JITed without ordering on
/// arm64 (`stadd`).
///
/// # Safety
/// `runs` must point to an 8-aligned u64 in a map value.
#[inline(always)]
unsafe fn count_run(runs: *mut u64) {
    // SAFETY: forwarded to the caller.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) runs,
            v = inout(reg) 1u64 => _,
            options(nostack),
        );
    }
}

/// Adds `packets` and `bytes` to a pair of counters of `slot`.
#[inline(always)]
pub fn count(slot: u32, packets_index: u32, packets: u64, bytes: u64) -> bool {
    let first = bump(slot * COUNTERS_PER_SLOT + packets_index, packets);
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
