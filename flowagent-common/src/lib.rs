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
    /// Per-CPU array of [`crate::Counter`] values for both slots.
    pub const COUNTERS: &str = "COUNTERS";
    /// One-entry array holding the slot the programs write to now.
    pub const CONTROL: &str = "CONTROL";
    /// Two-entry array the clock program fills: [jiffies, CLOCK_MONOTONIC ns].
    pub const CLOCK: &str = "CLOCK";
    /// Global (`.rodata`): packets are sampled when a random `u32` is below
    /// this; read only by CPUs numbered [`crate::SAMPLER_CPUS`] and above.
    pub const SAMPLE_THRESHOLD: &str = "SAMPLE_THRESHOLD";
    /// Global (`.bss`): `[Sampler; SAMPLER_CPUS]`, one per CPU number.
    pub const SAMPLERS: &str = "SAMPLERS";
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

/// CPUs whose sampling state is a [`Sampler`] in the `SAMPLERS` global;
/// CPUs beyond use a per-CPU map and the `SAMPLE_THRESHOLD` global.
pub const SAMPLER_CPUS: usize = 512;

/// One CPU's sampling decision: its generator state and the threshold, in
/// one cache line of its own.
///
/// Why the threshold is copied into every CPU's line: a sampled-out packet
/// then reads one line and nothing else. With live traffic the network stack
/// runs between two packets and evicts L1, so every further line (the
/// `.rodata` threshold was one) costs a miss on most packets.
#[repr(C, align(64))]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// xorshift32 state (host order); 0 until the CPU's first decision seeds
    /// it. Written only by the programs running on that CPU.
    pub state: u32,
    /// A packet is sampled when a uniform random `u32` is below this; 0
    /// samples every packet. Set by the agent at load time.
    pub threshold: u32,
    /// Explicit padding to the cache line, always zero.
    pub _pad: [u8; 56],
}

impl Sampler {
    /// An unseeded sampler with this threshold.
    pub const fn new(threshold: u32) -> Self {
        Sampler {
            state: 0,
            threshold,
            _pad: [0; 56],
        }
    }
}

const _: () = assert!(core::mem::size_of::<Sampler>() == 64);

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
}

/// Number of counter indexes reserved per slot in the `COUNTERS` array.
pub const COUNTERS_PER_SLOT: u32 = 8;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 8] = [
        Counter::NonIpPackets,
        Counter::NonIpBytes,
        Counter::MalformedPackets,
        Counter::MalformedBytes,
        Counter::OverflowPackets,
        Counter::OverflowBytes,
        Counter::FlowsV4,
        Counter::FlowsV6,
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
