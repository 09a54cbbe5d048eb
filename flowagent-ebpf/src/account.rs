//! Accounting: turns a parsed packet into a flow-map update or a counter.
//!
//! Fast path (existing flow): one array lookup for the slot, one per-CPU hash
//! lookup, four stores. A new flow adds the FIB lookup (ingress only) and an
//! insert; when the map is full the packet goes to the overflow counters, so
//! nothing sampled is ever lost.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_NOEXIST,
        bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    maps::PerCpuHashMap,
};
use aya_log_ebpf::warn;
use flowagent_common::{Counter, DIRECTION_INGRESS, FlowKeyV6, FlowStats};

use crate::{
    maps::{FLOWS_V4_0, FLOWS_V4_1, FLOWS_V6_0, FLOWS_V6_1, active_slot, count},
    parse::{Meta, Parsed, parse},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const EEXIST: i32 = 17;

/// Where and how a packet was observed.
pub struct Observation {
    /// The interface the program runs on.
    pub ifindex: u32,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u8,
    /// Outer VLAN id already taken out of the frame by the stack (TC).
    pub vlan_hint: Option<u16>,
    /// The flow's other interface when the context knows it (TC egress).
    pub other_ifindex: u32,
}

/// Parses the frame in `[start, end)` and accounts it in the active slot.
#[inline(always)]
pub fn account<C: EbpfContext>(ctx: &C, start: usize, end: usize, obs: &Observation) {
    let slot = active_slot();
    let frame_len = (end - start) as u64;
    match parse(start, end, obs.vlan_hint) {
        Parsed::V4(mut key, meta) => {
            key.ifindex = obs.ifindex;
            key.direction = obs.direction;
            let map = if slot == 0 { &FLOWS_V4_0 } else { &FLOWS_V4_1 };
            update(ctx, map, &key, &meta, obs, slot, Fib::V4(key.src, key.dst));
        }
        Parsed::V6(mut key, meta) => {
            key.ifindex = obs.ifindex;
            key.direction = obs.direction;
            let map = if slot == 0 { &FLOWS_V6_0 } else { &FLOWS_V6_1 };
            update(ctx, map, &key, &meta, obs, slot, Fib::V6(&key));
        }
        Parsed::NonIp => {
            count(slot, Counter::NonIpPackets as u32, frame_len);
        }
        Parsed::Malformed => {
            count(slot, Counter::MalformedPackets as u32, frame_len);
        }
    }
}

/// What the FIB lookup needs from the key.
enum Fib<'a> {
    V4([u8; 4], [u8; 4]),
    V6(&'a FlowKeyV6),
}

#[inline(always)]
fn update<C: EbpfContext, K>(
    ctx: &C,
    map: &PerCpuHashMap<K, FlowStats>,
    key: &K,
    meta: &Meta,
    obs: &Observation,
    slot: u32,
    fib: Fib<'_>,
) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(stats) = map.get_ptr_mut(key) {
        // SAFETY: the value is this CPU's copy; no other writer runs on it.
        let stats = unsafe { &mut *stats };
        if stats.packets == 0 {
            // The entry was created by another CPU: this CPU's copy is zero.
            init(ctx, stats, meta, obs, now, &fib);
        }
        add(stats, meta, now);
        return;
    }
    let mut stats = FlowStats::default();
    init(ctx, &mut stats, meta, obs, now, &fib);
    add(&mut stats, meta, now);
    match map.insert(key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(err) if err == -EEXIST => {
            // Another CPU inserted the key between our lookup and insert.
            if let Some(existing) = map.get_ptr_mut(key) {
                // SAFETY: as above, this CPU's copy.
                let existing = unsafe { &mut *existing };
                if existing.packets == 0 {
                    *existing = stats;
                } else {
                    add(existing, meta, now);
                }
            } else {
                overflow(ctx, slot, meta);
            }
        }
        Err(_) => overflow(ctx, slot, meta),
    }
}

#[inline(always)]
fn add(stats: &mut FlowStats, meta: &Meta, now: u64) {
    stats.packets += 1;
    stats.bytes += meta.ip_len as u64;
    stats.last_seen_ns = now;
    stats.tcp_flags |= meta.tcp_flags;
}

/// Fills the first-packet fields of this CPU's copy of a flow.
#[inline(always)]
fn init<C: EbpfContext>(
    ctx: &C,
    stats: &mut FlowStats,
    meta: &Meta,
    obs: &Observation,
    now: u64,
    fib: &Fib<'_>,
) {
    stats.first_seen_ns = now;
    stats.tos = meta.tos;
    stats.other_ifindex = obs.other_ifindex;
    if obs.direction == DIRECTION_INGRESS {
        fib_lookup(ctx, stats, meta, obs.ifindex, fib);
    }
}

/// Asks the kernel FIB where an ingress packet of this flow is forwarded to.
/// Done once per flow and CPU per interval, never per packet. A packet that
/// is not forwarded (local, forwarding off, no route) gets no egress interface.
#[inline(always)]
fn fib_lookup<C: EbpfContext>(
    ctx: &C,
    stats: &mut FlowStats,
    meta: &Meta,
    ifindex: u32,
    fib: &Fib<'_>,
) {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = ifindex;
    params.__bindgen_anon_1.tot_len = meta.ip_len as u16;
    match fib {
        Fib::V4(src, dst) => {
            params.family = AF_INET;
            params.__bindgen_anon_2.tos = meta.tos;
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(*src);
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*dst);
        }
        Fib::V6(key) => {
            params.family = AF_INET6;
            // SAFETY: [u8; 16] and [u32; 4] have the same size; the kernel
            // reads these words as raw network-order bytes.
            unsafe {
                params.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(key.src);
                params.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(key.dst);
            }
        }
    }
    // SKIP_NEIGH (Linux 6.3+): the egress interface and gateway are all we
    // want; resolving the neighbour would cost time and fail for new hosts.
    let mut flags = BPF_FIB_LOOKUP_SKIP_NEIGH;
    // SAFETY: ctx is the program's context, params a valid request of the size given.
    let mut rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params as *mut FibParams,
            size_of::<FibParams>() as i32,
            flags,
        )
    };
    if rc < 0 {
        // Older kernel without SKIP_NEIGH: ask again without it.
        flags = 0;
        // SAFETY: as above.
        rc = unsafe {
            bpf_fib_lookup(
                ctx.as_ptr(),
                &mut params as *mut FibParams,
                size_of::<FibParams>() as i32,
                flags,
            )
        };
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return;
    }
    stats.other_ifindex = params.ifindex;
    // On success the kernel replaced the destination with the gateway; an
    // unchanged destination means on-link, which has no next hop.
    match fib {
        Fib::V4(_, dst) => {
            // SAFETY: the family is AF_INET, so the IPv4 member is the live one.
            let gw = unsafe { params.__bindgen_anon_4.ipv4_dst }.to_ne_bytes();
            if gw != *dst && gw != [0; 4] {
                stats.next_hop[10] = 0xff;
                stats.next_hop[11] = 0xff;
                stats.next_hop[12..16].copy_from_slice(&gw);
            }
        }
        Fib::V6(key) => {
            // SAFETY: the family is AF_INET6, so the IPv6 member is the live one.
            let gw = unsafe {
                core::mem::transmute::<[u32; 4], [u8; 16]>(params.__bindgen_anon_4.ipv6_dst)
            };
            if gw != key.dst && gw != [0; 16] {
                stats.next_hop = gw;
            }
        }
    }
}

/// A new flow found the map full: count the packet, and say so once per CPU
/// and interval (the counter going from zero) so the log cannot flood.
#[inline(always)]
fn overflow<C: EbpfContext>(ctx: &C, slot: u32, meta: &Meta) {
    if count(slot, Counter::OverflowPackets as u32, meta.ip_len as u64) {
        warn!(
            ctx,
            "flow map full: new flows are counted in the overflow counters (raise --max-flows)"
        );
    }
}
