//! The one packet parser shared by the XDP and TC programs.
//!
//! It reads Ethernet, up to two VLAN tags (802.1Q 0x8100, 802.1ad 0x88a8),
//! IPv4 (any IHL, fragments), IPv6 (a bounded walk over the common extension
//! headers) and the first bytes of TCP, UDP, SCTP, UDP-Lite, ICMP and ICMPv6.
//! Every read goes through [`Frame::ptr_at`], the single bounds check the
//! verifier needs to see, over packet memory or a copy of the headers. The parser never fails: a frame is a flow (IPv4/IPv6), a
//! non-IP frame, or malformed.

use core::mem::size_of;

use flowagent_common::{FlowKeyV4, FlowKeyV6};

use crate::load::{be16, bytes4, bytes16};

const ETH_HLEN: usize = 14;
/// UDP (and UDP-Lite) header length.
const UDP_HEADER_LEN: usize = 8;
/// SCTP common header length.
const SCTP_HEADER_LEN: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// How many IPv6 extension headers the parser walks before it gives up and
/// accounts the packet by its L3 protocol alone (with the extension header's
/// number as `proto` and ports 0).
pub const IPV6_MAX_EXT_HEADERS: usize = 6;

/// What the parser made of a frame.
pub enum Parsed {
    /// An IPv4 packet; `ifindex` and `direction` of the key are still zero.
    V4(FlowKeyV4, Meta),
    /// An IPv6 packet; `ifindex` and `direction` of the key are still zero.
    V6(FlowKeyV6, Meta),
    /// Not IPv4 or IPv6 after the VLAN tags.
    NonIp,
    /// IP ethertype, but the IP header cannot be read.
    Malformed,
}

/// Per-packet values that are not part of the flow key.
pub struct Meta {
    /// Wire packets this one stands for: 1, or a GSO skb's segments.
    pub packets: u16,
    /// IPv4 total length or IPv6 payload length + 40; for a GSO skb, of
    /// all its segments on the wire (see [`on_the_wire`]).
    pub ip_len: u32,
    /// IPv4 ToS / IPv6 traffic class.
    pub tos: u8,
    /// TCP flags byte (0 for other protocols or a truncated TCP header).
    pub tcp_flags: u8,
}

/// The IP bytes on the wire of a packet of `ip_len` bytes, its IP header at
/// frame offset `ip_at`, that stands for `segs` packets (a GSO skb: TSO/USO
/// from the local stack, or GRO-merged on receive): each segment repeats
/// the IP and L4 headers, which the merged packet carries once. Without an
/// L4 header read, only the `fixed` IP header is known to repeat.
#[inline(always)]
fn on_the_wire(ip_len: u32, ip_at: usize, l4: &L4, fixed: u32, segs: u16) -> u32 {
    let hdr_len = if l4.end == 0 {
        fixed
    } else {
        l4.end as u32 - ip_at as u32
    };
    ip_len + (segs as u32).saturating_sub(1) * hdr_len
}

/// Ports and flags read from the L4 header; zeros when absent.
#[derive(Default)]
struct L4 {
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    /// Frame offset of the L4 payload (past the TCP or UDP header read);
    /// 0 when there is none. Not a tuple element beside the L4 header: the
    /// TC program's stack is at the verifier's limit.
    end: u16,
}

/// Where the parser reads a frame's bytes from.
///
/// Two sources, because the verifier proves reads safe differently for each:
/// packet memory by comparing pointers against `data_end`, any other memory
/// by the range of the offset.
pub trait Frame: Copy {
    /// A pointer to a `T` at `offset`, if the frame holds all of it: the one
    /// bounds check every read goes through.
    fn ptr_at<T>(self, offset: usize) -> Option<*const T>;
}

/// Packet memory `[start, end)`: XDP's frame, or the linear part of a TC skb.
#[derive(Clone, Copy)]
pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    /// The context's `data` and `data_end`.
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Packet { start, end }
    }
}

impl Frame for Packet {
    /// Read at least two bytes at a time: for a one-byte `T` LLVM rewrites
    /// `at + 1 > end` as `at >= end`, and the verifier derives no readable
    /// range from that form when the offset is variable.
    #[inline(always)]
    fn ptr_at<T>(self, offset: usize) -> Option<*const T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        Some(at as *const T)
    }
}

/// Bytes of a frame [`Copied`] holds at most.
pub const COPY_LEN: usize = 256;

/// The first `len` (at most [`COPY_LEN`]) bytes of a frame, copied into a
/// buffer of `COPY_LEN` bytes at `start` (TC, when the headers are not in the
/// skb's linear part).
#[derive(Clone, Copy)]
pub struct Copied {
    start: usize,
    len: usize,
}

impl Copied {
    /// `len` bytes copied to the `COPY_LEN`-byte buffer at `start`.
    #[inline(always)]
    pub fn new(start: *const [u8; COPY_LEN], len: usize) -> Self {
        Copied {
            start: start as usize,
            len,
        }
    }
}

impl Frame for Copied {
    #[inline(always)]
    fn ptr_at<T>(self, offset: usize) -> Option<*const T> {
        // The first check bounds the offset against the buffer in a form
        // the verifier tracks (it does not learn from comparing pointers
        // outside packet memory); the second is the frame's real end.
        if offset > COPY_LEN - size_of::<T>() || offset + size_of::<T>() > self.len {
            return None;
        }
        Some((self.start + offset) as *const T)
    }
}

#[inline(always)]
fn be16_at<F: Frame>(frame: F, offset: usize) -> Option<u16> {
    // SAFETY: ptr_at checked both bytes are inside the frame.
    frame
        .ptr_at::<[u8; 2]>(offset)
        .map(|p| unsafe { be16::<0>(p.cast()) })
}

/// The source MAC address of the frame, zeros if it is too short.
#[inline(always)]
pub fn src_mac<F: Frame>(frame: F) -> [u8; 6] {
    match frame.ptr_at::<[u8; 6]>(6) {
        // SAFETY: ptr_at checked the six bytes are inside the frame.
        Some(p) => unsafe { *p },
        None => [0; 6],
    }
}

/// Parses a frame. `vlan_hint` is the outer VLAN id when the stack already
/// took the tag out of the frame (TC ingress), and larger than any VLAN id
/// otherwise.
#[inline(always)]
pub fn parse<F: Frame>(frame: F, vlan_hint: u32, segs: u16) -> Parsed {
    let Some(mut ethertype) = be16_at(frame, 12) else {
        return Parsed::Malformed;
    };
    let mut offset = ETH_HLEN;
    let mut have_vlan = vlan_hint <= 0x0fff;
    let mut vlan = if have_vlan { vlan_hint as u16 } else { 0 };
    // Two tags at most (802.1ad S-tag + 802.1Q C-tag); the outer id is kept.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let (Some(tci), Some(inner)) = (be16_at(frame, offset), be16_at(frame, offset + 2)) else {
            return Parsed::Malformed;
        };
        if !have_vlan {
            vlan = tci & 0x0fff;
            have_vlan = true;
        }
        ethertype = inner;
        offset += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, offset, vlan, segs),
        ETH_P_IPV6 => parse_ipv6(frame, offset, vlan, segs),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame>(frame: F, offset: usize, vlan: u16, segs: u16) -> Parsed {
    let Some(hdr) = frame.ptr_at::<[u8; 20]>(offset) else {
        return Parsed::Malformed;
    };
    let at = hdr.cast::<u8>();
    // SAFETY: ptr_at checked the 20-byte fixed header is inside the frame.
    let hdr = unsafe { &*hdr };
    let version = hdr[0] >> 4;
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    if version != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let proto = hdr[9];
    // SAFETY (all loads from `at`): within the checked 20 bytes.
    let fragment_offset = unsafe { be16::<6>(at) } & 0x1fff;
    // Only the first fragment carries the L4 header (RFC 791); later ones are
    // accounted with ports 0, as NetFlow and pmacct do.
    let l4 = if fragment_offset == 0 {
        parse_l4(frame, offset + ihl, proto)
    } else {
        L4::default()
    };
    let key = FlowKeyV4 {
        src: unsafe { bytes4::<12>(at) },
        dst: unsafe { bytes4::<16>(at) },
        ifindex: 0,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        vlan,
        proto,
        direction: 0,
    };
    let meta = Meta {
        packets: segs,
        ip_len: on_the_wire(
            unsafe { be16::<2>(at) } as u32,
            offset,
            &l4,
            ihl as u32,
            segs,
        ),
        tos: hdr[1],
        tcp_flags: l4.tcp_flags,
    };
    Parsed::V4(key, meta)
}

#[inline(always)]
fn parse_ipv6<F: Frame>(frame: F, offset: usize, vlan: u16, segs: u16) -> Parsed {
    let Some(hdr) = frame.ptr_at::<[u8; 40]>(offset) else {
        return Parsed::Malformed;
    };
    let at = hdr.cast::<u8>();
    // SAFETY: ptr_at checked the 40-byte fixed header is inside the frame.
    let hdr = unsafe { &*hdr };
    if hdr[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    // SAFETY (all loads from `at`): within the checked 40 bytes.
    let (src, dst) = unsafe { (bytes16::<8>(at), bytes16::<24>(at)) };
    let meta_tos = (hdr[0] << 4) | (hdr[1] >> 4);
    let ip_len = unsafe { be16::<4>(at) } as u32 + 40;

    let (proto, l4) = walk_ipv6_extensions(frame, offset + 40, hdr[6]);
    let key = FlowKeyV6 {
        src,
        dst,
        ifindex: 0,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        vlan,
        proto,
        direction: 0,
    };
    let meta = Meta {
        packets: segs,
        ip_len: on_the_wire(ip_len, offset, &l4, 40, segs),
        tos: meta_tos,
        tcp_flags: l4.tcp_flags,
    };
    Parsed::V6(key, meta)
}

/// Skips up to [`IPV6_MAX_EXT_HEADERS`] extension headers (RFC 8200 section
/// 4; AH per RFC 4302) and reads the L4 header. Returns the last next-header
/// value reached (the upper-layer protocol, or the extension header the walk
/// stopped at: bound reached, truncated, or a non-first fragment) and the
/// L4 header.
#[inline(always)]
fn walk_ipv6_extensions<F: Frame>(frame: F, mut offset: usize, mut next: u8) -> (u8, L4) {
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let Some(h) = frame.ptr_at::<[u8; 2]>(offset) else {
                    return (next, L4::default());
                };
                // SAFETY: ptr_at checked both bytes are inside the packet.
                let [nh, len] = unsafe { *h };
                // Length is in 8-octet units excluding the first 8, except
                // for AH, which counts 4-octet units minus 2.
                let bytes = if next == IPPROTO_AH {
                    (len as usize + 2) * 4
                } else {
                    (len as usize + 1) * 8
                };
                next = nh;
                offset += bytes;
            }
            IPPROTO_FRAGMENT => {
                let Some(h) = frame.ptr_at::<[u8; 4]>(offset) else {
                    return (next, L4::default());
                };
                // SAFETY: ptr_at checked the four bytes are inside the packet.
                let h = unsafe { *h };
                // SAFETY: within the checked four bytes.
                let (nh, frag) = (h[0], unsafe { be16::<2>(h.as_ptr()) });
                next = nh;
                offset += 8;
                if frag & 0xfff8 != 0 {
                    // Non-first fragment: no L4 header here.
                    return (next, L4::default());
                }
            }
            _ => return (next, parse_l4(frame, offset, next)),
        }
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            (next, L4::default())
        }
        _ => (next, parse_l4(frame, offset, next)),
    }
}

/// Reads ports (or ICMP type/code, NetFlow-style in the destination port) and
/// TCP flags. A truncated L4 header leaves zeros: the packet still counts as
/// a flow of its L3 protocol.
#[inline(always)]
fn parse_l4<F: Frame>(frame: F, offset: usize, proto: u8) -> L4 {
    match proto {
        IPPROTO_TCP => match frame.ptr_at::<[u8; 14]>(offset) {
            Some(h) => {
                let h = h.cast::<u8>();
                // SAFETY: ptr_at checked the 14 bytes up to the flags are inside.
                unsafe {
                    L4 {
                        src_port: be16::<0>(h),
                        dst_port: be16::<2>(h),
                        tcp_flags: *h.add(13),
                        end: (offset + ((*h.add(12) >> 4) as usize) * 4) as u16,
                    }
                }
            }
            None => L4::default(),
        },
        IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE => match frame.ptr_at::<[u8; 4]>(offset) {
            Some(h) => {
                let h = h.cast::<u8>();
                // SAFETY: ptr_at checked both ports are inside.
                unsafe {
                    L4 {
                        src_port: be16::<0>(h),
                        dst_port: be16::<2>(h),
                        tcp_flags: 0,
                        end: (offset
                            + if proto == IPPROTO_SCTP {
                                SCTP_HEADER_LEN
                            } else {
                                UDP_HEADER_LEN
                            }) as u16,
                    }
                }
            }
            None => L4::default(),
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match frame.ptr_at::<[u8; 2]>(offset) {
            Some(h) => L4 {
                src_port: 0,
                // SAFETY: ptr_at checked type and code are inside.
                dst_port: unsafe { be16::<0>(h.cast()) },
                tcp_flags: 0,
                end: 0,
            },
            None => L4::default(),
        },
        _ => L4::default(),
    }
}
