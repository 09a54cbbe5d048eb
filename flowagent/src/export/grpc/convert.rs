//! Conversion between the domain types ([`FlowRecord`], drain [`Batch`]
//! counters) and their `flowagent.v1` messages.
//!
//! Invariants: `from_proto(to_proto(r))== r` for every record whose times
//! lie between the Unix epoch and year 2554 (the range of `u64`
//! nanoseconds; times outside it are clamped). Decoding never panics: a
//! message from the network with an address of the wrong length or a value
//! out of its range is an [`Error`] naming the field.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use flowagent_common::Counter;

use super::proto;
use crate::{
    drain::{Batch, Counters, Records},
    flow::{Enrichment, FlowDirection, FlowRecord},
};

/// A message field that does not fit the domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An address field is neither 4 nor 16 bytes long.
    #[error("field {field}: address of {len} bytes, expected 4 or 16")]
    AddressLength {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A numeric field is larger than its domain type allows.
    #[error("field {field}: value {value} larger than {max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value received.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// A MAC address field is neither empty nor 6 bytes long.
    #[error("field {field}: MAC address of {len} bytes, expected 6")]
    MacLength {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A prefix length is longer than its address.
    #[error("field {field}: prefix length {len} longer than the address")]
    PrefixLength {
        /// The field.
        field: &'static str,
        /// The length received.
        len: u32,
    },
}

/// An address as network-order bytes, 4 or 16 long.
pub fn addr_to_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An address from network-order bytes, which must be 4 or 16 long.
pub fn addr_from_bytes(field: &'static str, bytes: &[u8]) -> Result<IpAddr, Error> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(Ipv4Addr::from(v4).into())
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(Ipv6Addr::from(v6).into())
    } else {
        Err(Error::AddressLength {
            field,
            len: bytes.len(),
        })
    }
}

fn opt_addr_to_bytes(addr: Option<IpAddr>) -> Vec<u8> {
    addr.map(addr_to_bytes).unwrap_or_default()
}

fn opt_addr_from_bytes(field: &'static str, bytes: &[u8]) -> Result<Option<IpAddr>, Error> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        addr_from_bytes(field, bytes).map(Some)
    }
}

/// A prefix from its address bytes and length; `None` when the address is empty.
pub fn prefix_from_parts(
    field: &'static str,
    bytes: &[u8],
    len: u32,
) -> Result<Option<(IpAddr, u8)>, Error> {
    let Some(addr) = opt_addr_from_bytes(field, bytes)? else {
        return Ok(None);
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(Error::PrefixLength { field, len });
    }
    Ok(Some((addr, len as u8)))
}

/// Nanoseconds since the Unix epoch, clamped to `0..=u64::MAX`.
pub fn time_to_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The time `ns` nanoseconds after the Unix epoch.
pub fn time_from_ns(ns: u64) -> SystemTime {
    // Cannot overflow on Linux (i64 seconds), but never panic on input.
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_nanos(ns))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn narrow<T: TryFrom<u32>>(field: &'static str, value: u32, max: T) -> Result<T, Error>
where
    u64: From<T>,
{
    T::try_from(value).map_err(|_| Error::OutOfRange {
        field,
        value: value.into(),
        max: max.into(),
    })
}

/// The message of `r`, stamped with the observing agent.
pub fn to_proto(r: &FlowRecord, agent_id: &str) -> proto::FlowRecord {
    let e = &r.enrichment;
    let (net_src, mask_src) = e
        .net_src
        .map_or((Vec::new(), 0), |(a, l)| (addr_to_bytes(a), l.into()));
    let (net_dst, mask_dst) = e
        .net_dst
        .map_or((Vec::new(), 0), |(a, l)| (addr_to_bytes(a), l.into()));
    proto::FlowRecord {
        src_addr: addr_to_bytes(r.src),
        dst_addr: addr_to_bytes(r.dst),
        src_port: r.src_port.into(),
        dst_port: r.dst_port.into(),
        proto: r.proto.into(),
        tos: r.tos.into(),
        tcp_flags: r.tcp_flags.into(),
        vlan: r.vlan.into(),
        ifindex: r.ifindex,
        direction: match r.direction {
            FlowDirection::Ingress => proto::Direction::Ingress,
            FlowDirection::Egress => proto::Direction::Egress,
        } as i32,
        other_ifindex: r.other_ifindex,
        iface_in: r.iface_in.as_deref().map(Into::into),
        iface_out: r.iface_out.as_deref().map(Into::into),
        next_hop: opt_addr_to_bytes(r.next_hop),
        mac_src: r.src_mac.to_vec(),
        packets: r.packets,
        bytes: r.bytes,
        start_ns: time_to_ns(r.start),
        end_ns: time_to_ns(r.end),
        sampling_rate: r.sampling_rate,
        agent_id: agent_id.to_owned(),
        as_src: e.as_src,
        as_dst: e.as_dst,
        peer_as_src: e.peer_as_src,
        peer_as_dst: e.peer_as_dst,
        net_src,
        mask_src,
        net_dst,
        mask_dst,
        bgp_nexthop: opt_addr_to_bytes(e.bgp_nexthop),
        as_path: e.as_path.clone(),
        communities: e.communities.clone(),
        large_communities: e
            .large_communities
            .iter()
            .map(
                |&[global_admin, local_data1, local_data2]| proto::LargeCommunity {
                    global_admin,
                    local_data1,
                    local_data2,
                },
            )
            .collect(),
    }
}

/// The record of a message (its `agent_id` is not part of [`FlowRecord`]).
pub fn from_proto(m: &proto::FlowRecord) -> Result<FlowRecord, Error> {
    let direction = match m.direction() {
        proto::Direction::Egress => FlowDirection::Egress,
        proto::Direction::Ingress | proto::Direction::Unspecified => FlowDirection::Ingress,
    };
    Ok(FlowRecord {
        src: addr_from_bytes("src_addr", &m.src_addr)?,
        dst: addr_from_bytes("dst_addr", &m.dst_addr)?,
        src_port: narrow("src_port", m.src_port, u16::MAX)?,
        dst_port: narrow("dst_port", m.dst_port, u16::MAX)?,
        proto: narrow("proto", m.proto, u8::MAX)?,
        tos: narrow("tos", m.tos, u8::MAX)?,
        tcp_flags: narrow("tcp_flags", m.tcp_flags, u8::MAX)?,
        vlan: narrow("vlan", m.vlan, u16::MAX)?,
        ifindex: m.ifindex,
        direction,
        other_ifindex: m.other_ifindex,
        iface_in: m.iface_in.as_deref().map(Into::into),
        iface_out: m.iface_out.as_deref().map(Into::into),
        next_hop: opt_addr_from_bytes("next_hop", &m.next_hop)?,
        src_mac: match m.mac_src.len() {
            0 => [0; 6],
            6 => m.mac_src[..6].try_into().unwrap_or([0; 6]),
            len => {
                return Err(Error::MacLength {
                    field: "mac_src",
                    len,
                });
            }
        },
        packets: m.packets,
        bytes: m.bytes,
        start: time_from_ns(m.start_ns),
        end: time_from_ns(m.end_ns),
        sampling_rate: m.sampling_rate,
        enrichment: Enrichment {
            as_src: m.as_src,
            as_dst: m.as_dst,
            peer_as_src: m.peer_as_src,
            peer_as_dst: m.peer_as_dst,
            net_src: prefix_from_parts("net_src", &m.net_src, m.mask_src)?,
            net_dst: prefix_from_parts("net_dst", &m.net_dst, m.mask_dst)?,
            bgp_nexthop: opt_addr_from_bytes("bgp_nexthop", &m.bgp_nexthop)?,
            as_path: m.as_path.clone(),
            communities: m.communities.clone(),
            large_communities: m
                .large_communities
                .iter()
                .map(|c| [c.global_admin, c.local_data1, c.local_data2])
                .collect(),
        },
    })
}

/// The interval counters of a drained batch.
pub fn counters_to_proto(batch: &Batch) -> proto::IntervalCounters {
    let c = &batch.counters;
    proto::IntervalCounters {
        start_ns: time_to_ns(batch.start),
        end_ns: time_to_ns(batch.end),
        non_ip_packets: c.get(Counter::NonIpPackets),
        non_ip_bytes: c.get(Counter::NonIpBytes),
        malformed_packets: c.get(Counter::MalformedPackets),
        malformed_bytes: c.get(Counter::MalformedBytes),
        overflow_packets: c.get(Counter::OverflowPackets),
        overflow_bytes: c.get(Counter::OverflowBytes),
        dropped_records: batch.dropped_records,
        sampling_rate: batch.sampling_rate,
    }
}

/// A batch without records carrying the interval counters of a message.
pub fn counters_from_proto(m: &proto::IntervalCounters) -> Batch {
    let mut counters = Counters::default();
    for (c, v) in [
        (Counter::NonIpPackets, m.non_ip_packets),
        (Counter::NonIpBytes, m.non_ip_bytes),
        (Counter::MalformedPackets, m.malformed_packets),
        (Counter::MalformedBytes, m.malformed_bytes),
        (Counter::OverflowPackets, m.overflow_packets),
        (Counter::OverflowBytes, m.overflow_bytes),
    ] {
        counters.0[c as usize] = v;
    }
    Batch {
        start: time_from_ns(m.start_ns),
        end: time_from_ns(m.end_ns),
        records: Records::default(),
        counters,
        dropped_records: m.dropped_records,
        sampling_rate: m.sampling_rate,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record with every field set to a distinct non-default value.
    pub(crate) fn full_record(n: u64) -> FlowRecord {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + n);
        FlowRecord {
            src: Ipv4Addr::new(192, 0, 2, (n % 250) as u8 + 1).into(),
            dst: "2001:db8::1".parse().unwrap(),
            src_port: 40_000 + (n % 1000) as u16,
            dst_port: 443,
            proto: 6,
            tos: 0xb8,
            tcp_flags: 0x1b,
            vlan: 4094,
            ifindex: 3,
            direction: FlowDirection::Egress,
            other_ifindex: 7,
            iface_in: Some("eth1".into()),
            iface_out: Some("eth0".into()),
            next_hop: Some(Ipv4Addr::new(198, 51, 100, 1).into()),
            src_mac: [0x52, 0x54, 0, 0x12, 0x34, n as u8],
            packets: 10 + n,
            bytes: 1500 * (10 + n),
            start: t,
            end: t + Duration::from_nanos(999),
            sampling_rate: 100,
            enrichment: Enrichment {
                as_src: 64_500,
                as_dst: 4_200_000_000,
                peer_as_src: 64_501,
                peer_as_dst: 64_502,
                net_src: Some((Ipv4Addr::new(192, 0, 2, 0).into(), 24)),
                net_dst: Some(("2001:db8::".parse().unwrap(), 32)),
                bgp_nexthop: Some("2001:db8:ffff::1".parse().unwrap()),
                as_path: vec![64_502, 64_503, 4_200_000_000],
                communities: vec![(64_500 << 16) | 100, 0xFFFF_FF01],
                large_communities: vec![[64_500, 1, 2], [4_200_000_000, 3, 4]],
            },
        }
    }

    #[test]
    fn full_record_round_trips_exactly() {
        let r = full_record(5);
        let m = to_proto(&r, "edge-1");
        assert_eq!(m.src_addr, vec![192, 0, 2, 6]);
        assert_eq!(m.dst_addr.len(), 16);
        assert_eq!(m.next_hop, vec![198, 51, 100, 1]);
        assert_eq!(m.start_ns, 1_700_000_000_123_456_794);
        assert_eq!(m.end_ns, 1_700_000_000_123_457_793);
        assert_eq!(m.direction, proto::Direction::Egress as i32);
        assert_eq!(m.agent_id, "edge-1");
        assert_eq!((m.mask_src, m.mask_dst), (24, 32));
        assert_eq!(m.large_communities[1].global_admin, 4_200_000_000);
        assert_eq!(from_proto(&m).unwrap(), r);
    }

    #[test]
    fn empty_optionals_round_trip_exactly() {
        let r = FlowRecord {
            direction: FlowDirection::Ingress,
            iface_in: None,
            iface_out: None,
            next_hop: None,
            src_mac: [0; 6],
            enrichment: Enrichment {
                // A zero-length prefix (default route) is not "no prefix".
                net_src: Some((Ipv4Addr::UNSPECIFIED.into(), 0)),
                ..Enrichment::default()
            },
            ..full_record(0)
        };
        let m = to_proto(&r, "");
        assert_eq!(m.next_hop, Vec::<u8>::new());
        assert_eq!(m.net_src, vec![0, 0, 0, 0]);
        assert_eq!(m.net_dst, Vec::<u8>::new());
        assert_eq!(m.iface_in, None);
        assert_eq!(from_proto(&m).unwrap(), r);
    }

    #[test]
    fn wire_encoding_round_trips() {
        use prost::Message as _;
        let r = full_record(1);
        let bytes = to_proto(&r, "a").encode_to_vec();
        let m = proto::FlowRecord::decode(bytes.as_slice()).unwrap();
        assert_eq!(from_proto(&m).unwrap(), r);
    }

    #[test]
    fn bad_fields_are_errors_naming_the_field() {
        let good = to_proto(&full_record(0), "a");
        let cases = [
            (
                proto::FlowRecord {
                    src_addr: vec![1, 2, 3],
                    ..good.clone()
                },
                Error::AddressLength {
                    field: "src_addr",
                    len: 3,
                },
            ),
            (
                proto::FlowRecord {
                    dst_addr: vec![],
                    ..good.clone()
                },
                Error::AddressLength {
                    field: "dst_addr",
                    len: 0,
                },
            ),
            (
                proto::FlowRecord {
                    src_port: 65_536,
                    ..good.clone()
                },
                Error::OutOfRange {
                    field: "src_port",
                    value: 65_536,
                    max: 65_535,
                },
            ),
            (
                proto::FlowRecord {
                    proto: 256,
                    ..good.clone()
                },
                Error::OutOfRange {
                    field: "proto",
                    value: 256,
                    max: 255,
                },
            ),
            (
                proto::FlowRecord {
                    mask_src: 33,
                    ..good.clone()
                },
                Error::PrefixLength {
                    field: "net_src",
                    len: 33,
                },
            ),
            (
                proto::FlowRecord {
                    bgp_nexthop: vec![0; 5],
                    ..good.clone()
                },
                Error::AddressLength {
                    field: "bgp_nexthop",
                    len: 5,
                },
            ),
        ];
        for (m, want) in cases {
            assert_eq!(from_proto(&m).unwrap_err(), want);
        }
        // Unknown direction values read as ingress.
        let m = proto::FlowRecord {
            direction: 99,
            ..good
        };
        assert_eq!(from_proto(&m).unwrap().direction, FlowDirection::Ingress);
    }

    #[test]
    fn times_clamp_and_counters_round_trip() {
        assert_eq!(
            time_to_ns(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            0
        );
        assert_eq!(
            time_from_ns(u64::MAX),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::MAX)
        );
        let batch = Batch {
            start: time_from_ns(1_000),
            end: time_from_ns(2_000),
            records: Records::default(),
            counters: Counters([1, 2, 3, 4, 5, 6, 0, 0, 0, 0]),
            dropped_records: 7,
            sampling_rate: 8,
        };
        let m = counters_to_proto(&batch);
        assert_eq!(
            (m.non_ip_packets, m.overflow_bytes, m.dropped_records),
            (1, 6, 7)
        );
        let back = counters_from_proto(&m);
        assert_eq!(back.counters, batch.counters);
        assert_eq!((back.start, back.end), (batch.start, batch.end));
        assert_eq!((back.dropped_records, back.sampling_rate), (7, 8));
    }
}
