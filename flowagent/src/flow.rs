//! The userspace flow record: one flow, one interval, per-CPU values merged.
//!
//! A drain builds up to millions of records per interval on several
//! threads, so a record holds no per-record heap allocation it can avoid:
//! interface names are inline ([`IfName`]), not `String`s.

use std::{fmt, net::IpAddr, ops::Deref, time::SystemTime};

use flowagent_common::{DIRECTION_EGRESS, FlowStats};

/// The direction a flow was observed in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FlowDirection {
    /// On the way in (XDP, TC ingress).
    Ingress,
    /// On the way out (TC egress).
    Egress,
}

impl FlowDirection {
    /// From the kernel's direction code.
    pub fn from_code(code: u8) -> Self {
        if code == DIRECTION_EGRESS {
            FlowDirection::Egress
        } else {
            FlowDirection::Ingress
        }
    }

    /// Lower-case name, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowDirection::Ingress => "ingress",
            FlowDirection::Egress => "egress",
        }
    }
}

/// One flow's traffic in one drain interval.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 when none).
    pub src_port: u16,
    /// Destination port; ICMP type << 8 | code for ICMP/ICMPv6.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// ToS / traffic class of the first packet.
    pub tos: u8,
    /// OR of all TCP flags.
    pub tcp_flags: u8,
    /// Outer VLAN id, 0 when untagged.
    pub vlan: u16,
    /// Interface the flow was observed on.
    pub ifindex: u32,
    /// Direction it was observed in.
    pub direction: FlowDirection,
    /// The other interface (FIB egress for ingress flows, ingress for egress), 0 when none.
    pub other_ifindex: u32,
    /// Name of the input interface, when known.
    pub iface_in: Option<IfName>,
    /// Name of the output interface, when known.
    pub iface_out: Option<IfName>,
    /// FIB next hop (gateway) for forwarded ingress flows.
    pub next_hop: Option<IpAddr>,
    /// Source MAC address of the first packet.
    pub src_mac: [u8; 6],
    /// Sampled packets.
    pub packets: u64,
    /// Sampled IP bytes.
    pub bytes: u64,
    /// First packet (wall clock).
    pub start: SystemTime,
    /// Last packet (wall clock).
    pub end: SystemTime,
    /// 1 in how many packets was sampled.
    pub sampling_rate: u32,
    /// Routing context (BGP or networks file); all default without routes.
    pub enrichment: Enrichment,
}

/// An interface name, stored inline: Linux names are at most 15 bytes
/// (IFNAMSIZ 16 with the NUL, include/uapi/linux/if.h), so a copy costs
/// 16 bytes and no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfName {
    len: u8,
    bytes: [u8; IfName::MAX],
}

impl IfName {
    /// Longest name kept, in bytes.
    pub const MAX: usize = 15;

    /// The name.
    pub fn as_str(&self) -> &str {
        // From<&str> only stores whole UTF-8 characters.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl From<&str> for IfName {
    /// Keeps the first [`IfName::MAX`] bytes (whole characters) of a longer
    /// name; interface names from the kernel always fit.
    fn from(name: &str) -> Self {
        let mut len = name.len().min(Self::MAX);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; Self::MAX];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            len: len as u8,
            bytes,
        }
    }
}

impl Deref for IfName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Routing context of a flow, pmacct semantics: filled by the enrichment
/// stage from the RIB; zeros and `None` when no route covers an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enrichment {
    /// Origin AS of the best route covering the source address.
    pub as_src: u32,
    /// Origin AS of the best route covering the destination address.
    pub as_dst: u32,
    /// Neighbour AS the traffic came in from (peer_src_as map, else first AS toward the source).
    pub peer_as_src: u32,
    /// First AS of the path toward the destination.
    pub peer_as_dst: u32,
    /// Matched source prefix and its length.
    pub net_src: Option<(IpAddr, u8)>,
    /// Matched destination prefix and its length.
    pub net_dst: Option<(IpAddr, u8)>,
    /// BGP next hop of the destination route.
    pub bgp_nexthop: Option<IpAddr>,
    /// AS_PATH of the destination route, when asked for.
    pub as_path: Vec<u32>,
    /// Standard communities (RFC 1997) of the destination route, when asked for.
    pub communities: Vec<u32>,
    /// Large communities (RFC 8092) of the destination route, when asked for.
    pub large_communities: Vec<[u32; 3]>,
}

/// Merges the per-CPU copies of one flow's statistics. CPUs that saw no
/// packet of the flow (all-zero copies) are ignored; `None` if none did.
pub fn merge_per_cpu<'a>(values: impl IntoIterator<Item = &'a FlowStats>) -> Option<FlowStats> {
    let mut merged: Option<FlowStats> = None;
    for v in values.into_iter().filter(|v| v.packets > 0) {
        let Some(m) = merged.as_mut() else {
            merged = Some(*v);
            continue;
        };
        m.packets += v.packets;
        m.bytes += v.bytes;
        m.tcp_flags |= v.tcp_flags;
        m.last_seen = m.last_seen.max(v.last_seen);
        if v.first_seen < m.first_seen {
            // First-packet fields come from the CPU that saw the first packet.
            m.first_seen = v.first_seen;
            m.tos = v.tos;
            m.src_mac = v.src_mac;
            if v.other_ifindex != 0 {
                m.other_ifindex = v.other_ifindex;
                m.next_hop = v.next_hop;
            }
        }
        if m.other_ifindex == 0 {
            m.other_ifindex = v.other_ifindex;
            m.next_hop = v.next_hop;
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(packets: u64, first: u64, last: u64, flags: u8, tos: u8, other: u32) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 100,
            first_seen: first,
            last_seen: last,
            tcp_flags: flags,
            tos,
            other_ifindex: other,
            ..Default::default()
        }
    }

    #[test]
    fn interface_names_are_kept_whole_up_to_15_bytes() {
        assert_eq!(&*IfName::from("eth0"), "eth0");
        assert_eq!(&*IfName::from("fifteen-bytes-x"), "fifteen-bytes-x");
        assert_eq!(&*IfName::from("sixteen-bytes-xy"), "sixteen-bytes-x");
        // Never a partial character: "é" is 2 bytes across the limit.
        assert_eq!(&*IfName::from("fourteen-bytesé"), "fourteen-bytes");
        assert_eq!(format!("{:?}", IfName::from("lo")), "\"lo\"");
    }

    #[test]
    fn merges_cpus_and_skips_idle_ones() {
        let cpus = [
            stats(0, 0, 0, 0, 0, 0),
            stats(3, 50, 90, 0x02, 8, 0),
            stats(2, 10, 60, 0x10, 4, 7),
        ];
        let m = merge_per_cpu(&cpus).unwrap();
        assert_eq!(m.packets, 5);
        assert_eq!(m.bytes, 500);
        assert_eq!(m.first_seen, 10);
        assert_eq!(m.last_seen, 90);
        assert_eq!(m.tcp_flags, 0x12);
        assert_eq!(m.tos, 4);
        assert_eq!(m.other_ifindex, 7);
        assert_eq!(merge_per_cpu(&[FlowStats::default()]), None);
    }
}
