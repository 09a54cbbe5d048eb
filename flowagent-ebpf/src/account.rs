//! Accounting: turns a parsed packet into a flow-map update or a counter.
//!
//! Fast path (existing flow): the slot from the CPU's line, the flow's
//! entry in this CPU's flow cache (an index computed from the key's hash;
//! the lookup inlined by the verifier), an inlined jiffies read, four
//! stores. The cache is two-way: a flow whose own entry another flow holds
//! tries the other entry of its set (the adjacent line), and a new flow
//! fills the first empty one of the two, after the FIB lookup (ingress
//! only). A flow whose set is full goes to the per-CPU hash map instead (an
//! inlined lookup, or an insert); when that map is full the packet goes to
//! the overflow counters, so nothing sampled is ever lost.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        BPF_NOEXIST, bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_jiffies64},
    maps::PerCpuHashMap,
};
use aya_log_ebpf::warn;
use flowagent_common::{
    CacheEntry, CacheKey, CachedV4, CachedV6, Counter, DIRECTION_INGRESS, FirstPacket, FlowKeyV4,
    FlowKeyV6, FlowStats, Tally,
};

use crate::{
    maps::{
        CACHE_V4, CACHE_V6, Cpu, FLOWS_V4_0, FLOWS_V4_1, FLOWS_V6_0, FLOWS_V6_1, Run, count,
        count_entry,
    },
    parse::{Frame, Meta, Parsed, parse, src_mac},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const EEXIST: i32 = 17;

/// `Observation::vlan_hint` when the stack holds no VLAN tag.
pub const NO_VLAN_HINT: u32 = u32::MAX;

/// Where and how a packet was observed.
pub struct Observation {
    /// The interface the program runs on.
    pub ifindex: u32,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u8,
    /// Wire packets the frame stands for: 1, or a GSO skb's segments. In
    /// here rather than a parameter of its own: the TC program's stack is
    /// at the verifier's 512-byte limit, and this fits in padding.
    pub segs: u16,
    /// Outer VLAN id already taken out of the frame by the stack (TC), or
    /// [`NO_VLAN_HINT`]. Not an `Option<u16>`: LLVM spills a `None`'s
    /// undefined payload from whatever register is at hand, a pointer at
    /// times, and the verifier rejects a pointer stored in two bytes.
    pub vlan_hint: u32,
    /// The flow's other interface when the context knows it (TC egress).
    pub other_ifindex: u32,
}

/// Parses a frame of `frame_len` bytes and accounts it in the active slot.
#[inline(always)]
pub fn account<C: EbpfContext, F: Frame>(
    ctx: &C,
    cpu: Cpu,
    run: &Run,
    frame: F,
    frame_len: u64,
    obs: &Observation,
) {
    let slot = run.slot;
    match parse(frame, obs.vlan_hint, obs.segs) {
        Parsed::V4(mut key, meta) => {
            key.ifindex = obs.ifindex;
            key.direction = obs.direction;
            update_slot(
                ctx,
                slot,
                &Job {
                    key,
                    meta,
                    obs,
                    frame,
                    cpu,
                },
            );
        }
        Parsed::V6(mut key, meta) => {
            key.ifindex = obs.ifindex;
            key.direction = obs.direction;
            update_slot(
                ctx,
                slot,
                &Job {
                    key,
                    meta,
                    obs,
                    frame,
                    cpu,
                },
            );
        }
        Parsed::NonIp => {
            count(
                slot,
                Counter::NonIpPackets as u32,
                obs.segs as u64,
                frame_len,
            );
        }
        Parsed::Malformed => {
            count(
                slot,
                Counter::MalformedPackets as u32,
                obs.segs as u64,
                frame_len,
            );
        }
    }
}

/// A key type with its flow caches, one flow map per slot and a way to ask
/// the FIB about it.
trait FlowKey: CacheKey + 'static {
    /// The family's index in a CPU line's `full` marks: 0 IPv4, 1 IPv6.
    const FAMILY: u32;
    /// The counter of entries created in this key's maps.
    const CREATED: Counter;
    /// The counter of entries filled in this key's caches.
    const CACHED: Counter;
    /// The entry type of this key's caches.
    type Cached: CacheEntry<Key = Self>;
    /// The cache entry at `index` of this key's cache array.
    fn cached(index: u32) -> Option<*mut Self::Cached>;
    /// The flow map of slot `SLOT`.
    fn map<const SLOT: u32>() -> &'static PerCpuHashMap<Self, FlowStats>;
    /// Fills family and addresses of a FIB request.
    fn fib_request(&self, params: &mut FibParams);
    /// The gateway the FIB answered with, as next-hop bytes, if it is one
    /// (a destination left unchanged means on-link: no next hop).
    fn gateway(&self, params: &FibParams) -> Option<[u8; 16]>;
}

impl FlowKey for FlowKeyV4 {
    const FAMILY: u32 = 0;
    const CREATED: Counter = Counter::FlowsV4;
    const CACHED: Counter = Counter::CachedV4;
    type Cached = CachedV4;

    #[inline(always)]
    fn cached(index: u32) -> Option<*mut CachedV4> {
        CACHE_V4.get_ptr_mut(index)
    }

    #[inline(always)]
    fn map<const SLOT: u32>() -> &'static PerCpuHashMap<Self, FlowStats> {
        if SLOT == 0 { &FLOWS_V4_0 } else { &FLOWS_V4_1 }
    }

    #[inline(always)]
    fn fib_request(&self, params: &mut FibParams) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(self.src);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(self.dst);
    }

    #[inline(always)]
    fn gateway(&self, params: &FibParams) -> Option<[u8; 16]> {
        // SAFETY: the family is AF_INET, so the IPv4 member is the live one.
        let gw = unsafe { params.__bindgen_anon_4.ipv4_dst }.to_ne_bytes();
        if gw == self.dst || gw == [0; 4] {
            return None;
        }
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..16].copy_from_slice(&gw);
        Some(mapped)
    }
}

impl FlowKey for FlowKeyV6 {
    const FAMILY: u32 = 1;
    const CREATED: Counter = Counter::FlowsV6;
    const CACHED: Counter = Counter::CachedV6;
    type Cached = CachedV6;

    #[inline(always)]
    fn cached(index: u32) -> Option<*mut CachedV6> {
        CACHE_V6.get_ptr_mut(index)
    }

    #[inline(always)]
    fn map<const SLOT: u32>() -> &'static PerCpuHashMap<Self, FlowStats> {
        if SLOT == 0 { &FLOWS_V6_0 } else { &FLOWS_V6_1 }
    }

    #[inline(always)]
    fn fib_request(&self, params: &mut FibParams) {
        params.family = AF_INET6;
        // SAFETY: [u8; 16] and [u32; 4] have the same size; the kernel
        // reads these words as raw network-order bytes.
        unsafe {
            params.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(self.src);
            params.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(self.dst);
        }
    }

    #[inline(always)]
    fn gateway(&self, params: &FibParams) -> Option<[u8; 16]> {
        // SAFETY: the family is AF_INET6, so the IPv6 member is the live one.
        let gw =
            unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(params.__bindgen_anon_4.ipv6_dst) };
        (gw != self.dst && gw != [0; 16]).then_some(gw)
    }
}

/// One packet to account: its key and what the update needs besides.
struct Job<'a, K, F> {
    key: K,
    meta: Meta,
    obs: &'a Observation,
    /// The frame, for what a new flow reads beyond the key (source MAC).
    frame: F,
    /// The CPU, whose line says where its caches are.
    cpu: Cpu,
}

/// Calls the update compiled for the active slot.
///
/// Each slot gets its own inlined copy of [`update`] in which the map is a
/// constant. With one copy taking the map as a value, LLVM merged the two
/// map pointers into one call site, and the verifier, seeing two maps reach
/// one `bpf_map_lookup_elem`, no longer inlines the hash lookup: it becomes an
/// indirect call through the helper. Measured with BPF_PROG_TEST_RUN, an
/// existing IPv4 flow went from 71-78 ns to 53-59 ns above the no-op program.
/// (A `#[inline(never)]` copy per slot also keeps the lookups inlined, but the
/// BPF-to-BPF call and the argument copy cost IPv6 10 ns.)
#[inline(always)]
fn update_slot<C: EbpfContext, K: FlowKey, F: Frame>(ctx: &C, slot: u32, job: &Job<'_, K, F>) {
    if slot == 0 {
        update::<C, K, F, 0>(ctx, job);
    } else {
        update::<C, K, F, 1>(ctx, job);
    }
}

#[inline(always)]
fn update<C: EbpfContext, K: FlowKey, F: Frame, const SLOT: u32>(ctx: &C, job: &Job<'_, K, F>) {
    let map = K::map::<SLOT>();
    let (key, meta) = (&job.key, &job.meta);
    // Jiffies, not bpf_ktime_get_*(): the verifier inlines bpf_jiffies64()
    // into one load on 64-bit JITs, while a helper call costs ~15 ns here.
    // The resolution (1/HZ, 1-10 ms) is what flow timestamps need.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_jiffies64() };
    // The flow's own cache entry, then the other way of its set; entries
    // are emptied only by the drain, so a flow found in neither way before
    // an empty one is new. The entry is chosen first and filled by one copy
    // of the code below: two inlined copies of the fill (FIB request and
    // all) took the TC program past the verifier's 512-byte stack.
    let own = job.cpu.cache_index(SLOT, K::FAMILY, key.cache_hash());
    let entry = cache_way(key, own).or_else(|| cache_way(key, job.cpu.cache_buddy(K::FAMILY, own)));
    if let Some(entry) = entry {
        // SAFETY: this CPU's own cache entry: only programs on this CPU
        // write it, and they do not nest; the agent touches it only after
        // the flip that retired the slot.
        let entry = unsafe { &mut *entry };
        if entry.packets() == 0 {
            // Empty (the agent zeroes what it drains): the flow takes it.
            entry.set_key(key);
            init(ctx, entry, job, now);
            count_entry(SLOT, K::CACHED as u32);
        }
        add(entry, meta, now);
        return;
    }
    // Both ways held by other flows: this one goes to the hash map.
    if let Some(stats) = map.get_ptr_mut(key) {
        // SAFETY: the value is this CPU's copy; no other writer runs on it.
        let stats = unsafe { &mut *stats };
        if stats.packets() == 0 {
            // The entry was created by another CPU: this CPU's copy is zero.
            init(ctx, stats, job, now);
        }
        add(stats, meta, now);
        return;
    }
    // A failed insert locks the bucket and searches every CPU's free list
    // (~150 ns here); once one failed, the map stays full until drained.
    if job.cpu.map_full(SLOT, K::FAMILY) {
        overflow(ctx, SLOT, meta);
        return;
    }
    // The FIB is asked only once the insert has succeeded: under a flood
    // of new flows the map is full, and the lookup would be wasted on
    // every packet that goes to the overflow counters.
    let mut stats = FlowStats::default();
    first_packet(&mut stats, job, now);
    add(&mut stats, meta, now);
    let ours = match map.insert(key, stats, BPF_NOEXIST as u64) {
        Ok(()) => {
            count_entry(SLOT, K::CREATED as u32);
            true
        }
        // Another CPU inserted the key between our lookup and insert: this
        // CPU's copy is zero, and the packet not counted yet.
        Err(err) if err == -EEXIST => false,
        Err(_) => {
            job.cpu.set_map_full(SLOT, K::FAMILY);
            overflow(ctx, SLOT, meta);
            return;
        }
    };
    let Some(value) = map.get_ptr_mut(key) else {
        // Deleted in between (only a drain of this slot could, which waits
        // for this run): count the packet rather than lose it.
        if !ours {
            overflow(ctx, SLOT, meta);
        }
        return;
    };
    // SAFETY: as above, this CPU's copy.
    let value = unsafe { &mut *value };
    if !ours {
        if value.packets != 0 {
            add(value, meta, now);
            return;
        }
        *value = stats;
    }
    route(ctx, value, job);
}

/// Cache entry `index` if it holds `key`'s flow or is empty (the flow may
/// take it); None when another flow holds it, or without a cache (the
/// index is then past the array's end).
#[inline(always)]
fn cache_way<K: FlowKey>(key: &K, index: u32) -> Option<*mut K::Cached> {
    let entry = K::cached(index)?;
    // SAFETY: this CPU's own entry (see `update`), only read here.
    let held = unsafe { &*entry };
    (held.packets() == 0 || held.key().same(key)).then_some(entry)
}

#[inline(always)]
fn add<T: Tally>(stats: &mut T, meta: &Meta, now: u64) {
    stats.add(meta.packets as u64, meta.ip_len as u64, meta.tcp_flags, now);
}

/// Fills the first-packet fields of this CPU's copy of a flow.
#[inline(always)]
fn init<C: EbpfContext, K: FlowKey, F: Frame, T: Tally>(
    ctx: &C,
    stats: &mut T,
    job: &Job<'_, K, F>,
    now: u64,
) {
    first_packet(stats, job, now);
    route(ctx, stats, job);
}

/// The first-packet fields that come from the packet itself.
#[inline(always)]
fn first_packet<K: FlowKey, F: Frame, T: Tally>(stats: &mut T, job: &Job<'_, K, F>, now: u64) {
    stats.first(&FirstPacket {
        now,
        tos: job.meta.tos,
        src_mac: src_mac(job.frame),
        other_ifindex: job.obs.other_ifindex,
    });
}

/// The FIB's egress interface and gateway, for an ingress flow.
#[inline(always)]
fn route<C: EbpfContext, K: FlowKey, F: Frame, T: Tally>(
    ctx: &C,
    stats: &mut T,
    job: &Job<'_, K, F>,
) {
    if job.obs.direction == DIRECTION_INGRESS {
        fib_lookup(ctx, stats, job);
    }
}

/// Asks the kernel FIB where an ingress packet of this flow is forwarded to.
/// Done once per flow and CPU per interval, never per packet. A packet that
/// is not forwarded (local, forwarding off, no route) gets no egress interface.
#[inline(always)]
fn fib_lookup<C: EbpfContext, K: FlowKey, F: Frame, T: Tally>(
    ctx: &C,
    stats: &mut T,
    job: &Job<'_, K, F>,
) {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = job.obs.ifindex;
    params.__bindgen_anon_1.tot_len = job.meta.ip_len as u16;
    params.__bindgen_anon_2.tos = job.meta.tos;
    job.key.fib_request(&mut params);
    // SKIP_NEIGH (Linux 6.3+): the egress interface and gateway are all we
    // want; resolving the neighbour would cost time and fail for new hosts.
    let mut rc = fib(ctx, &mut params, BPF_FIB_LOOKUP_SKIP_NEIGH);
    if rc < 0 {
        // Older kernel without SKIP_NEIGH: ask again without it.
        rc = fib(ctx, &mut params, 0);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return;
    }
    stats.set_route(params.ifindex, job.key.gateway(&params));
}

#[inline(always)]
fn fib<C: EbpfContext>(ctx: &C, params: &mut FibParams, flags: u32) -> i64 {
    // SAFETY: ctx is the program's context, params a valid request of the size given.
    unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params as *mut FibParams,
            size_of::<FibParams>() as i32,
            flags,
        )
    }
}

/// A new flow found the map full: count the packet, and say so once per CPU
/// and interval (the counter going from zero) so the log cannot flood.
#[inline(always)]
fn overflow<C: EbpfContext>(ctx: &C, slot: u32, meta: &Meta) {
    if count(
        slot,
        Counter::OverflowPackets as u32,
        meta.packets as u64,
        meta.ip_len as u64,
    ) {
        warn!(
            ctx,
            "flow map full: new flows are counted in the overflow counters (raise --max-flows)"
        );
    }
}
