//! Types shared by the flowagent eBPF programs and the userspace agent.
//!
//! Everything here crosses the kernel/user boundary through BPF maps, so every
//! type is `#[repr(C)]`, `Copy`, ordered largest field first, padded
//! explicitly, and free of `bool` and Rust enums (the kernel side writes raw
//! bytes; codes are plain integers converted with `TryFrom` in userspace).
//! Layouts are pinned by compile-time assertions at the bottom of this file.
//!
//! Invariant: keys are always built from a zeroed value, so padding bytes hash
//! identically on every CPU.
#![no_std]

#[cfg(feature = "user")]
pub mod user;

/// Names of maps and globals, used by both sides so a rename cannot drift.
pub mod names {
    /// Per-CPU hash maps of IPv4 flows, one per drain slot.
    pub const FLOWS_V4: [&str; 2] = ["FLOWS_V4_0", "FLOWS_V4_1"];
    /// Per-CPU hash maps of IPv6 flows, one per drain slot.
    pub const FLOWS_V6: [&str; 2] = ["FLOWS_V6_0", "FLOWS_V6_1"];
    /// Array (mmapable) of [`crate::CachedV4`] entries: every CPU's IPv4
    /// flow cache, for both slots.
    pub const CACHE_V4: &str = "CACHE_V4";
    /// The same for IPv6 ([`crate::CachedV6`]).
    pub const CACHE_V6: &str = "CACHE_V6";
    /// Per-CPU array of [`crate::Counter`] values for both slots.
    pub const COUNTERS: &str = "COUNTERS";
    /// Array (mmapable) of one [`crate::CpuLine`] per possible CPU.
    pub const CPUS: &str = "CPUS";
    /// Two-entry array the clock program fills: [jiffies, CLOCK_MONOTONIC ns].
    pub const CLOCK: &str = "CLOCK";
    /// The XDP program.
    pub const PROG_XDP: &str = "flowagent_xdp";
    /// An XDP program never attached: run by the agent through
    /// BPF_PROG_TEST_RUN to read jiffies and CLOCK_MONOTONIC together.
    pub const PROG_CLOCK: &str = "flowagent_clock";
    /// An XDP program that only returns XDP_PASS: the benchmark's baseline.
    pub const PROG_NOOP: &str = "flowagent_noop";
    /// A TC classifier that only returns TC_ACT_OK: the benchmark's TC baseline.
    pub const PROG_TC_NOOP: &str = "flowagent_tc_noop";
    /// The TC classifier for clsact/tcx ingress.
    pub const PROG_TC_INGRESS: &str = "flowagent_tc_ingress";
    /// The TC classifier for clsact/tcx egress.
    pub const PROG_TC_EGRESS: &str = "flowagent_tc_egress";
}

/// One CPU's line of per-packet state, written by the agent and by the
/// programs running on that CPU: the sampling generator and threshold, the
/// slot to write, the count of program runs, and where the CPU's flow
/// caches are.
///
/// Why one line per CPU: a sampled-out packet then reads one line and
/// nothing else, and an accounted one finds its slot and cache entry from
/// the same line. With live traffic the network stack runs between two
/// packets and evicts L1, so every further line costs a miss on most
/// packets (the `.rodata` threshold and the `CONTROL` slot map were two).
///
/// The drain's handshake with the programs (see the agent's `drain`
/// module): a program adds 1 to `runs` (an atomic add, a full barrier)
/// before it reads `slot`, and 1 again when it is done with that slot, so
/// `runs` is odd exactly while a run may be writing the slot it read. The
/// agent writes the new `slot` into every line, then waits for each odd
/// `runs` to move on.
#[repr(C, align(64))]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CpuLine {
    /// xorshift32 state (host order); 0 until the CPU's first decision seeds
    /// it. Written only by the programs running on that CPU.
    pub state: u32,
    /// A packet is sampled when a uniform random `u32` is below this; 0
    /// samples every packet. Set by the agent at load time.
    pub threshold: u32,
    /// At `slot * 2 + family` (family 0: IPv4, 1: IPv6): the index of this
    /// CPU's first entry in that family's cache array (`CACHE_V4`,
    /// `CACHE_V6`). Set by the agent at load time.
    pub cache_base: [u32; 4],
    /// Per family: this CPU's cache entries per slot minus one (a power of
    /// two minus one), the mask applied to a key's cache hash.
    pub cache_mask: [u32; 2],
    /// The slot (0 or 1) the programs on this CPU write. Written by the
    /// agent at each drain.
    pub slot: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Program runs begun plus runs ended on this CPU (wrapping): odd while
    /// one is in progress. Written only by the programs on that CPU.
    pub runs: u64,
    /// At `slot * 2 + family`: nonzero once an insert into that hash map
    /// failed on this CPU (the map is full until it is drained), so that
    /// later new flows go straight to the overflow counters instead of
    /// paying for a failed insert each. Set by the programs, cleared by the
    /// agent after it drained the slot.
    pub full: [u32; 4],
}

impl CpuLine {
    /// The line of CPU `cpu` for this sampling threshold, whose IPv4 caches
    /// hold `1 << cache_bits` entries per slot (IPv6: [`cache_bits_v6`]) in
    /// arrays laid out for `cpus` CPUs: slot-major, then by CPU (see
    /// [`cache_index`]). None: no cache.
    pub const fn new(threshold: u32, cpu: u32, cpus: u32, cache_bits: Option<u32>) -> Self {
        let (cache_base, cache_mask) = match cache_bits {
            Some(v4) => {
                let v6 = cache_bits_v6(v4);
                (
                    [
                        cache_index(0, cpu, cpus, v4, 0),
                        cache_index(0, cpu, cpus, v6, 0),
                        cache_index(1, cpu, cpus, v4, 0),
                        cache_index(1, cpu, cpus, v6, 0),
                    ],
                    [(1u32 << v4) - 1, (1u32 << v6) - 1],
                )
            }
            // A base past any array's end makes the programs' cache lookup
            // fail its bounds check, so every flow goes to the hash maps.
            None => ([u32::MAX / 2; 4], [0; 2]),
        };
        CpuLine {
            state: 0,
            threshold,
            cache_base,
            cache_mask,
            slot: 0,
            _pad: 0,
            runs: 0,
            full: [0; 4],
        }
    }
}

const _: () = assert!(core::mem::size_of::<CpuLine>() == 64);
const _: () = assert!(core::mem::offset_of!(CpuLine, runs) == 40);

/// The index in a cache array of entry `at` of CPU `cpu`'s cache for `slot`,
/// with `cpus` CPUs and `1 << cache_bits` entries per CPU and slot.
pub const fn cache_index(slot: u32, cpu: u32, cpus: u32, cache_bits: u32, at: u32) -> u32 {
    ((slot * cpus + cpu) << cache_bits) + at
}

/// The other way of the two-way set that cache entry `at` belongs to, in a
/// cache whose entries per CPU and slot minus one are `mask`: entries `2n`
/// and `2n + 1` (two adjacent 64-byte lines for IPv4) form a set. A flow
/// tries its own entry first, then this one, and goes to the hash map only
/// when both hold other flows: at half load that is about one flow in ten
/// instead of one in five for a direct-mapped cache. A one-entry cache has
/// one way (`mask` 0: the entry itself). Works on a whole array index too,
/// as a CPU's cache starts at a multiple of `mask + 1`.
pub const fn cache_buddy(at: u32, mask: u32) -> u32 {
    at ^ (mask & 1)
}

/// Default number of entries in each flow map (`--max-flows`).
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;

/// Number of drain slots: the programs write one while the agent drains the other.
pub const SLOTS: u32 = 2;

/// Direction code: the packet was seen on its way into the host (XDP, TC ingress).
pub const DIRECTION_INGRESS: u8 = 0;
/// Direction code: the packet was seen on its way out (TC egress).
pub const DIRECTION_EGRESS: u8 = 1;

/// Counters for packets that are accounted outside the flow maps, and of
/// the entries the programs create in them.
///
/// Every packet a program samples ends up in exactly one place: a flow entry
/// or one of the `*Packets` counters below, so that flow records plus counters
/// add up to every sampled packet.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Frames whose ethertype (after up to two VLAN tags) is neither IPv4 nor IPv6.
    NonIpPackets = 0,
    /// Frame length (L2 bytes) of those frames.
    NonIpBytes = 1,
    /// IPv4/IPv6 frames too short or inconsistent to read addresses from
    /// (truncated Ethernet or IP header, IPv4 IHL < 5, wrong IP version).
    MalformedPackets = 2,
    /// Frame length (L2 bytes) of those frames.
    MalformedBytes = 3,
    /// IP packets of new flows that found the flow map full.
    OverflowPackets = 4,
    /// IP bytes (total length) of those packets.
    OverflowBytes = 5,
    /// Entries the programs created in the slot's IPv4 flow map (successful
    /// inserts; one per flow, whichever CPU saw it first). The drain sizes
    /// its walk by it, and skips an empty map. Not exported.
    FlowsV4 = 6,
    /// The same for the IPv6 flow map.
    FlowsV6 = 7,
    /// Entries the programs filled in the slot's IPv4 flow caches (one per
    /// flow and CPU). The drain skips the scan of empty caches. Not exported.
    CachedV4 = 8,
    /// The same for the IPv6 flow caches.
    CachedV6 = 9,
}

/// Number of counter indexes reserved per slot in the `COUNTERS` array.
pub const COUNTERS_PER_SLOT: u32 = 10;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 10] = [
        Counter::NonIpPackets,
        Counter::NonIpBytes,
        Counter::MalformedPackets,
        Counter::MalformedBytes,
        Counter::OverflowPackets,
        Counter::OverflowBytes,
        Counter::FlowsV4,
        Counter::FlowsV6,
        Counter::CachedV4,
        Counter::CachedV6,
    ];

    /// Index of this counter for `slot` in the `COUNTERS` per-CPU array.
    #[inline(always)]
    pub const fn index(self, slot: u32) -> u32 {
        slot * COUNTERS_PER_SLOT + self as u32
    }
}

/// Key of an IPv4 flow (the IPv4 map uses this shorter key to hash less).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    /// Source address, network byte order.
    pub src: [u8; 4],
    /// Destination address, network byte order.
    pub dst: [u8; 4],
    /// Interface the packet was observed on (host order).
    pub ifindex: u32,
    /// Source port (host order); 0 for non-first fragments and port-less protocols.
    pub src_port: u16,
    /// Destination port (host order); ICMP carries `type << 8 | code` here.
    pub dst_port: u16,
    /// Outer VLAN id (0-4095), 0 when untagged.
    pub vlan: u16,
    /// IP protocol number (RFC 5237 registry).
    pub proto: u8,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
}

/// Key of an IPv6 flow.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV6 {
    /// Source address, network byte order.
    pub src: [u8; 16],
    /// Destination address, network byte order.
    pub dst: [u8; 16],
    /// Interface the packet was observed on (host order).
    pub ifindex: u32,
    /// Source port (host order); 0 for non-first fragments and port-less protocols.
    pub src_port: u16,
    /// Destination port (host order); ICMPv6 carries `type << 8 | code` here.
    pub dst_port: u16,
    /// Outer VLAN id (0-4095), 0 when untagged.
    pub vlan: u16,
    /// Upper-layer protocol number after the extension headers the parser skips.
    pub proto: u8,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
}

/// Per-CPU statistics of one flow in one drain slot.
///
/// The fields every packet writes (`packets`, `bytes`, `last_seen`,
/// `tcp_flags`) come first, within 25 bytes, so that the update touches one
/// cache line more often (the kernel places per-CPU values 8-byte aligned,
/// not line-aligned); the first-packet fields follow.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Sampled packets.
    pub packets: u64,
    /// Sum of the IP total length of the sampled packets (IPv6: payload length + 40).
    pub bytes: u64,
    /// Last packet, in kernel jiffies (`bpf_jiffies64()`; the agent maps
    /// them to wall-clock time, see its drain clock).
    pub last_seen: u64,
    /// OR of the TCP flags of every packet (0 for other protocols).
    pub tcp_flags: u8,
    /// DSCP/ECN (IPv4 ToS, IPv6 traffic class) of the first packet.
    pub tos: u8,
    /// Source MAC address of the first packet (for a peer-source-AS map
    /// keyed by interface and neighbour router MAC).
    pub src_mac: [u8; 6],
    /// First packet, in kernel jiffies.
    pub first_seen: u64,
    /// Next hop from the FIB for forwarded ingress flows, network order; IPv4
    /// as an IPv4-mapped IPv6 address; all zero when none.
    pub next_hop: [u8; 16],
    /// The other interface of the flow (host order), 0 when unknown: for
    /// ingress the FIB's egress interface, for egress the packet's ingress interface.
    pub other_ifindex: u32,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

/// Multiplier of the cache hash (2^64 / golden ratio, odd): multiplicative
/// hashing (Knuth, TAOCP 6.4) spreads the key's bits into the high bits.
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// A flow key as the flow caches use it, the same in the programs and in
/// the agent: its hash, so that a flow sits at the same index of every
/// CPU's cache, and a whole-word comparison.
pub trait CacheKey: Copy {
    /// The key's hash in the flow cache.
    fn cache_hash(&self) -> u32;
    /// Whether two keys are equal, compared word by word.
    fn same(&self, other: &Self) -> bool;
}

/// Whether two word arrays are equal: the XOR of each pair ORed together,
/// so the comparison is straight-line code without a branch per word.
#[inline(always)]
fn same_words<const N: usize>(a: &[u32; N], b: &[u32; N]) -> bool {
    let mut diff = 0;
    for i in 0..N {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

impl FlowKeyV4 {
    /// The key as five native-order words, for hashing and comparing in
    /// whole-word loads (the eBPF backend splits byte-array compares into
    /// byte loads).
    #[inline(always)]
    pub fn words(&self) -> [u32; 5] {
        // SAFETY: FlowKeyV4 is 20 bytes of plain integers, 4-aligned, with
        // no implicit padding (asserted below), so it reads as 5 words.
        unsafe { core::mem::transmute_copy(self) }
    }
}

impl CacheKey for FlowKeyV4 {
    #[inline(always)]
    fn cache_hash(&self) -> u32 {
        let w = self.words();
        let a = (w[0] as u64) | ((w[1] as u64) << 32);
        let b = (w[2] as u64) | ((w[3] as u64) << 32);
        let x = (a.wrapping_mul(HASH_MUL) ^ b).wrapping_mul(HASH_MUL) ^ w[4] as u64;
        (x.wrapping_mul(HASH_MUL) >> 32) as u32
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        same_words(&self.words(), &other.words())
    }
}

impl FlowKeyV6 {
    /// The key as eleven native-order words (see [`FlowKeyV4::words`]).
    #[inline(always)]
    pub fn words(&self) -> [u32; 11] {
        // SAFETY: FlowKeyV6 is 44 bytes of plain integers, 4-aligned, with
        // no implicit padding (asserted below), so it reads as 11 words.
        unsafe { core::mem::transmute_copy(self) }
    }
}

impl CacheKey for FlowKeyV6 {
    #[inline(always)]
    fn cache_hash(&self) -> u32 {
        let w = self.words();
        let word = |i: usize| (w[i] as u64) | ((w[i + 1] as u64) << 32);
        let mut x = word(0).wrapping_mul(HASH_MUL) ^ word(2);
        x = x.wrapping_mul(HASH_MUL) ^ word(4);
        x = x.wrapping_mul(HASH_MUL) ^ word(6);
        x = x.wrapping_mul(HASH_MUL) ^ word(8);
        x = x.wrapping_mul(HASH_MUL) ^ w[10] as u64;
        (x.wrapping_mul(HASH_MUL) >> 32) as u32
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        same_words(&self.words(), &other.words())
    }
}

/// What the programs fill for a flow's first packet, besides the counts.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FirstPacket {
    /// Kernel jiffies of the packet.
    pub now: u64,
    /// DSCP/ECN byte.
    pub tos: u8,
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// The flow's other interface when the context knows it (TC egress).
    pub other_ifindex: u32,
}

/// A flow's statistics as the programs update them: [`FlowStats`] in the
/// hash maps and the IPv6 caches, the compact [`CachedV4`] in the IPv4
/// caches.
pub trait Tally {
    /// Packets counted; 0 in an empty cache entry.
    fn packets(&self) -> u64;
    /// Counts `packets` packets of `bytes` IP bytes in all with these TCP
    /// flags at `now` (more than one for a GSO skb).
    fn add(&mut self, packets: u64, bytes: u64, tcp_flags: u8, now: u64);
    /// Fills the first-packet fields.
    fn first(&mut self, first: &FirstPacket);
    /// The FIB's answer: the egress interface and the gateway (an
    /// IPv4-mapped IPv6 address for IPv4), if any.
    fn set_route(&mut self, ifindex: u32, gateway: Option<[u8; 16]>);
}

impl Tally for FlowStats {
    #[inline(always)]
    fn packets(&self) -> u64 {
        self.packets
    }

    #[inline(always)]
    fn add(&mut self, packets: u64, bytes: u64, tcp_flags: u8, now: u64) {
        self.packets += packets;
        self.bytes += bytes;
        self.last_seen = now;
        self.tcp_flags |= tcp_flags;
    }

    #[inline(always)]
    fn first(&mut self, first: &FirstPacket) {
        self.first_seen = first.now;
        self.tos = first.tos;
        self.src_mac = first.src_mac;
        self.other_ifindex = first.other_ifindex;
    }

    #[inline(always)]
    fn set_route(&mut self, ifindex: u32, gateway: Option<[u8; 16]>) {
        self.other_ifindex = ifindex;
        if let Some(gw) = gateway {
            self.next_hop = gw;
        }
    }
}

/// A flow cache entry, as the programs fill it and the agent drains it.
pub trait CacheEntry: Tally + Copy {
    /// The flow key.
    type Key: CacheKey;
    /// The entry's key.
    fn key(&self) -> &Self::Key;
    /// Makes the entry hold `key`'s flow (its statistics are then filled).
    fn set_key(&mut self, key: &Self::Key);
    /// The entry's statistics, with jiffies stored in 32 bits widened to the
    /// value nearest `anchor` (kernel jiffies at the drain).
    fn stats(&self, anchor: u64) -> FlowStats;
    /// Replaces the entry's statistics (the agent merging a hash-map copy).
    fn set_stats(&mut self, stats: &FlowStats);
}

/// The 64-bit jiffies value nearest `anchor` whose low 32 bits are `low`:
/// exact while the two are less than 2^31 jiffies apart (24 days at
/// HZ=1000), far more than a drain interval.
#[inline(always)]
pub const fn widen_jiffies(low: u32, anchor: u64) -> u64 {
    anchor.wrapping_add(low.wrapping_sub(anchor as u32) as i32 as i64 as u64)
}

impl Tally for CachedV4 {
    #[inline(always)]
    fn packets(&self) -> u64 {
        self.packets
    }

    #[inline(always)]
    fn add(&mut self, packets: u64, bytes: u64, tcp_flags: u8, now: u64) {
        self.packets += packets;
        self.bytes += bytes;
        self.last_seen = now as u32;
        self.tcp_flags |= tcp_flags;
    }

    #[inline(always)]
    fn first(&mut self, first: &FirstPacket) {
        self.first_seen = first.now as u32;
        self.tos = first.tos;
        self.src_mac = first.src_mac;
        self.other_ifindex = first.other_ifindex;
    }

    #[inline(always)]
    fn set_route(&mut self, ifindex: u32, gateway: Option<[u8; 16]>) {
        self.other_ifindex = ifindex;
        if let Some(gw) = gateway {
            self.next_hop = [gw[12], gw[13], gw[14], gw[15]];
        }
    }
}

impl CacheEntry for CachedV4 {
    type Key = FlowKeyV4;

    #[inline(always)]
    fn key(&self) -> &FlowKeyV4 {
        &self.key
    }

    #[inline(always)]
    fn set_key(&mut self, key: &FlowKeyV4) {
        self.key = *key;
    }

    fn stats(&self, anchor: u64) -> FlowStats {
        let mut next_hop = [0; 16];
        if self.next_hop != [0; 4] {
            next_hop[10] = 0xff;
            next_hop[11] = 0xff;
            next_hop[12..].copy_from_slice(&self.next_hop);
        }
        FlowStats {
            packets: self.packets,
            bytes: self.bytes,
            last_seen: widen_jiffies(self.last_seen, anchor),
            tcp_flags: self.tcp_flags,
            tos: self.tos,
            src_mac: self.src_mac,
            first_seen: widen_jiffies(self.first_seen, anchor),
            next_hop,
            other_ifindex: self.other_ifindex,
            _pad: [0; 4],
        }
    }

    fn set_stats(&mut self, stats: &FlowStats) {
        self.packets = stats.packets;
        self.bytes = stats.bytes;
        self.last_seen = stats.last_seen as u32;
        self.tcp_flags = stats.tcp_flags;
        self.tos = stats.tos;
        self.src_mac = stats.src_mac;
        self.first_seen = stats.first_seen as u32;
        self.next_hop = [
            stats.next_hop[12],
            stats.next_hop[13],
            stats.next_hop[14],
            stats.next_hop[15],
        ];
        self.other_ifindex = stats.other_ifindex;
    }
}

impl Tally for CachedV6 {
    #[inline(always)]
    fn packets(&self) -> u64 {
        self.stats.packets
    }

    #[inline(always)]
    fn add(&mut self, packets: u64, bytes: u64, tcp_flags: u8, now: u64) {
        self.stats.add(packets, bytes, tcp_flags, now);
    }

    #[inline(always)]
    fn first(&mut self, first: &FirstPacket) {
        self.stats.first(first);
    }

    #[inline(always)]
    fn set_route(&mut self, ifindex: u32, gateway: Option<[u8; 16]>) {
        self.stats.set_route(ifindex, gateway);
    }
}

impl CacheEntry for CachedV6 {
    type Key = FlowKeyV6;

    #[inline(always)]
    fn key(&self) -> &FlowKeyV6 {
        &self.key
    }

    #[inline(always)]
    fn set_key(&mut self, key: &FlowKeyV6) {
        self.key = *key;
    }

    fn stats(&self, _anchor: u64) -> FlowStats {
        self.stats
    }

    fn set_stats(&mut self, stats: &FlowStats) {
        self.stats = *stats;
    }
}

/// One entry of a CPU's IPv4 flow cache: a two-way table indexed by
/// [`CacheKey::cache_hash`] (see [`cache_buddy`]), one per CPU and slot, in
/// an mmapable array.
///
/// Why a cache in front of the per-CPU hash maps: a hash map update reads
/// the map's struct, the bucket, the element (two lines) and the per-CPU
/// value, and with live traffic the stack between two packets evicts them
/// all from L1; a cache entry is one line, found by arithmetic. The agent
/// reads the caches through a memory mapping instead of a syscall per
/// batch. A flow whose set is taken by other flows goes to the hash
/// map, as before.
///
/// Why compact (one 64-byte line, not a [`FlowStats`]): with many flows
/// every packet's entry is a random line of the table, a TLB and cache
/// miss; half the bytes per entry doubles the entries held in the same
/// pages, so that fewer flows collide and go to the hash map (three more
/// misses each). Jiffies are kept in 32 bits (see [`widen_jiffies`]) and
/// the next hop as an IPv4 address.
///
/// An entry is empty when `packets` is 0 (a filled entry has counted its
/// first packet); the agent zeroes every entry it drains.
#[repr(C, align(64))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedV4 {
    /// The flow.
    pub key: FlowKeyV4,
    /// Last packet: the low 32 bits of kernel jiffies.
    pub last_seen: u32,
    /// Sampled packets on this CPU.
    pub packets: u64,
    /// Sum of their IP total length.
    pub bytes: u64,
    /// OR of the TCP flags of every packet.
    pub tcp_flags: u8,
    /// DSCP/ECN of the first packet.
    pub tos: u8,
    /// Source MAC address of the first packet.
    pub src_mac: [u8; 6],
    /// First packet: the low 32 bits of kernel jiffies.
    pub first_seen: u32,
    /// The FIB's gateway for a forwarded ingress flow, network order; zero
    /// when none.
    pub next_hop: [u8; 4],
    /// The other interface of the flow (see [`FlowStats::other_ifindex`]).
    pub other_ifindex: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

/// One entry of a CPU's IPv6 flow cache (see [`CachedV4`]); the key and
/// the packet and byte counts are in the first line. The IPv6 caches hold
/// half as many entries as the IPv4 ones (see [`cache_bits_v6`]), so both
/// families' caches take the same memory.
#[repr(C, align(64))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedV6 {
    /// The flow.
    pub key: FlowKeyV6,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
    /// Its statistics on this CPU.
    pub stats: FlowStats,
    /// Explicit padding to two lines, always zero.
    pub _tail: [u64; 2],
}

/// log2 of the IPv6 cache entries per CPU and slot for IPv4 caches of
/// `1 << v4_bits` entries: half as many (IPv6 entries are twice the size).
pub const fn cache_bits_v6(v4_bits: u32) -> u32 {
    v4_bits.saturating_sub(1)
}

const _: () = assert!(core::mem::size_of::<CachedV4>() == 64);
const _: () = assert!(core::mem::offset_of!(CachedV4, packets) == 24);
const _: () = assert!(core::mem::offset_of!(CachedV4, _pad) == 60);
const _: () = assert!(core::mem::size_of::<CachedV6>() == 128);
const _: () = assert!(core::mem::offset_of!(CachedV6, stats) == 48);
const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 20);
const _: () = assert!(core::mem::size_of::<FlowKeyV6>() == 44);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 64);
const _: () = assert!(core::mem::offset_of!(FlowStats, tcp_flags) == 24);
const _: () = assert!(core::mem::offset_of!(FlowStats, src_mac) == 26);
const _: () = assert!(core::mem::offset_of!(FlowKeyV4, ifindex) == 8);
const _: () = assert!(core::mem::offset_of!(FlowKeyV6, ifindex) == 32);
const _: () = assert!(core::mem::offset_of!(FlowStats, next_hop) == 40);
const _: () = assert!(core::mem::offset_of!(FlowStats, other_ifindex) == 56);
const _: () = assert!(Counter::ALL.len() as u32 <= COUNTERS_PER_SLOT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jiffies_widen_to_the_value_nearest_the_anchor() {
        let anchor = (7u64 << 32) + 10;
        // Earlier in the same 2^32 window, and just before it (wrapped).
        assert_eq!(widen_jiffies(3, anchor), (7 << 32) + 3);
        assert_eq!(widen_jiffies(u32::MAX - 4, anchor), (7 << 32) - 5);
        // A stamp a little after the anchor stays after it.
        assert_eq!(widen_jiffies(20, anchor), (7 << 32) + 20);
        assert_eq!(widen_jiffies(0, 0), 0);
    }

    #[test]
    fn a_compact_ipv4_entry_keeps_what_the_drain_reads() {
        let anchor = (3u64 << 32) + 500;
        let mut next_hop = [0; 16];
        next_hop[10..].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
        let stats = FlowStats {
            packets: 1 << 40,
            bytes: 1 << 50,
            last_seen: anchor - 1,
            tcp_flags: 0x12,
            tos: 0xb8,
            src_mac: [2, 0, 0, 0, 0, 9],
            first_seen: anchor - (1 << 20),
            next_hop,
            other_ifindex: 7,
            _pad: [0; 4],
        };
        let mut entry = CachedV4::default();
        entry.set_stats(&stats);
        assert_eq!(entry.stats(anchor), stats);
        // No gateway stays all zero, not an IPv4-mapped 0.0.0.0.
        entry.set_stats(&FlowStats {
            next_hop: [0; 16],
            ..stats
        });
        assert_eq!(entry.stats(anchor).next_hop, [0; 16]);
    }

    #[test]
    fn programs_fill_a_compact_entry_like_flow_stats() {
        let first = FirstPacket {
            now: (1 << 32) + 40,
            tos: 4,
            src_mac: [1, 2, 3, 4, 5, 6],
            other_ifindex: 9,
        };
        let mut gw = [0; 16];
        gw[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        let mut entry = CachedV4::default();
        let mut stats = FlowStats::default();
        for t in [&mut entry as &mut dyn Tally, &mut stats] {
            t.first(&first);
            t.set_route(3, Some(gw));
            t.add(1, 100, 0x02, (1 << 32) + 40);
            t.add(3, 60, 0x10, (1 << 32) + 41);
        }
        assert_eq!(entry.stats((1 << 32) + 50), stats);
        assert_eq!(stats.packets, 4);
        assert_eq!(stats.bytes, 160);
        assert_eq!(stats.tcp_flags, 0x12);
        assert_eq!(stats.last_seen, (1 << 32) + 41);
    }
}
