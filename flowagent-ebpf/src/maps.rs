//! The maps the programs write. Sizes here are defaults: the agent sets the
//! flow maps' size at load time (`--max-flows`).
//!
//! There are two of everything indexed by slot: the programs write the slot
//! named in `CONTROL` while the agent drains the other one, so a drain never
//! races with a writer (see the agent's `drain` module for the barrier).

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
};
use flowagent_common::{
    COUNTERS_PER_SLOT, DEFAULT_MAX_FLOWS, FlowKeyV4, FlowKeyV6, FlowStats, SLOTS,
};

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

/// Out-of-flow counters (`flowagent_common::Counter`) for both slots.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS * COUNTERS_PER_SLOT, 0);

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

/// Adds `packets` and `bytes` to a pair of counters of `slot`.
#[inline(always)]
pub fn count(slot: u32, packets_index: u32, bytes: u64) -> bool {
    let first = bump(slot * COUNTERS_PER_SLOT + packets_index, 1);
    bump(slot * COUNTERS_PER_SLOT + packets_index + 1, bytes);
    first
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
