//! One flow record as one JSON line, written by hand.
//!
//! The agent's JSON output and the collector's files write one line per
//! record, hundreds of thousands per second at a busy site; serde with
//! `String` fields (MAC, timestamps, joined AS paths) cost an allocation per
//! field and was most of the collector's CPU per record. This writer appends
//! to a reused buffer with no allocation. The line is byte for byte what
//! `serde_json` writes for the same fields in the same order (the tests hold
//! the serde version as the reference).
//!
//! Field names follow pmacct's JSON (see [`crate::export::jsonl`]).

use std::{
    io::Write as _,
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{enrich::BgpAttrs, export::jsonl::proto_name, flow::FlowRecord};

/// Appends `r` as one JSON line (with its `\n`) to `buf`: `agent_id` when
/// given (the collector's files hold many agents' records), the routing
/// fields when `routing` says which.
pub fn push(buf: &mut Vec<u8>, r: &FlowRecord, agent_id: Option<&str>, routing: Option<BgpAttrs>) {
    buf.extend_from_slice(b"{\"event_type\":\"purge\"");
    if let Some(id) = agent_id {
        key(buf, "agent_id");
        string(buf, id);
    }
    key(buf, "ip_src");
    addr(buf, r.src);
    key(buf, "ip_dst");
    addr(buf, r.dst);
    key(buf, "port_src");
    int(buf, r.src_port);
    key(buf, "port_dst");
    int(buf, r.dst_port);
    key(buf, "ip_proto");
    match proto_name(r.proto) {
        Some(name) => string(buf, name),
        None => int(buf, r.proto),
    }
    key(buf, "tos");
    int(buf, r.tos);
    key(buf, "tcp_flags");
    int(buf, r.tcp_flags);
    key(buf, "mac_src");
    mac(buf, r.src_mac);
    key(buf, "iface_in");
    opt_string(buf, r.iface_in.as_deref());
    key(buf, "iface_out");
    opt_string(buf, r.iface_out.as_deref());
    key(buf, "ifindex");
    int(buf, r.ifindex);
    key(buf, "direction");
    string(buf, r.direction.as_str());
    key(buf, "vlan");
    int(buf, r.vlan);
    if let Some(hop) = r.next_hop {
        key(buf, "peer_ip_dst");
        addr(buf, hop);
    }
    key(buf, "packets");
    int(buf, r.packets);
    key(buf, "bytes");
    int(buf, r.bytes);
    key(buf, "timestamp_start");
    timestamp(buf, r.start);
    key(buf, "timestamp_end");
    timestamp(buf, r.end);
    key(buf, "sampling_rate");
    int(buf, r.sampling_rate);
    if let Some(attrs) = routing {
        routing_fields(buf, r, attrs);
    }
    buf.extend_from_slice(b"}\n");
}

/// The routing fields, pmacct names. A prefix that did not match is the
/// unspecified address of the record's family with mask 0, as pmacct writes.
fn routing_fields(buf: &mut Vec<u8>, r: &FlowRecord, attrs: BgpAttrs) {
    let e = &r.enrichment;
    for (name, v) in [
        ("as_src", e.as_src),
        ("as_dst", e.as_dst),
        ("peer_as_src", e.peer_as_src),
        ("peer_as_dst", e.peer_as_dst),
    ] {
        key(buf, name);
        int(buf, v);
    }
    for (net, of, addr_key, mask_key) in [
        (e.net_src, r.src, "net_src", "mask_src"),
        (e.net_dst, r.dst, "net_dst", "mask_dst"),
    ] {
        let (net, len) = net.unwrap_or((unspecified_like(of), 0));
        key(buf, addr_key);
        addr(buf, net);
        key(buf, mask_key);
        int(buf, len);
    }
    if let Some(hop) = e.bgp_nexthop {
        key(buf, "bgp_nexthop");
        addr(buf, hop);
    }
    if attrs.as_path {
        key(buf, "as_path");
        joined(buf, &e.as_path, |buf, asn| int(buf, *asn));
    }
    if attrs.communities {
        key(buf, "comms");
        joined(buf, &e.communities, |buf, c| {
            int(buf, c >> 16);
            buf.push(b':');
            int(buf, c & 0xffff);
        });
        key(buf, "lcomms");
        joined(buf, &e.large_communities, |buf, [a, b, c]| {
            int(buf, *a);
            buf.push(b':');
            int(buf, *b);
            buf.push(b':');
            int(buf, *c);
        });
    }
}

fn unspecified_like(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// `,"name":`
fn key(buf: &mut Vec<u8>, name: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
}

fn int(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A JSON string, escaped as serde_json escapes (RFC 8259: quote,
/// backslash and control characters; the short forms where there is one).
fn string(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..0x20 => b'u',
            _ => continue,
        };
        buf.extend_from_slice(&s.as_bytes()[start..i]);
        buf.push(b'\\');
        buf.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(&[
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&s.as_bytes()[start..]);
    buf.push(b'"');
}

fn opt_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// Items joined by `_` in one string, as pmacct prints AS paths and
/// communities (digits and separators only: nothing to escape).
fn joined<T>(buf: &mut Vec<u8>, items: &[T], item: impl Fn(&mut Vec<u8>, &T)) {
    buf.push(b'"');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b'_');
        }
        item(buf, v);
    }
    buf.push(b'"');
}

fn addr(buf: &mut Vec<u8>, a: IpAddr) {
    buf.push(b'"');
    match a {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                int(buf, octet);
            }
        }
        // RFC 5952 text, as std writes it (no allocation: Vec's io::Write).
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
    buf.push(b'"');
}

/// `aa:bb:cc:dd:ee:ff`, as pmacct prints MAC addresses.
fn mac(buf: &mut Vec<u8>, m: [u8; 6]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    for (i, b) in m.into_iter().enumerate() {
        if i > 0 {
            buf.push(b':');
        }
        buf.push(HEX[usize::from(b >> 4)]);
        buf.push(HEX[usize::from(b & 0xf)]);
    }
    buf.push(b'"');
}

/// [`rfc3339_micros`] as a JSON string.
fn timestamp(buf: &mut Vec<u8>, t: SystemTime) {
    buf.push(b'"');
    push_rfc3339_micros(buf, t);
    buf.push(b'"');
}

/// RFC 3339 UTC with microseconds (`2023-11-14T22:13:20.250000Z`), the
/// format of every timestamp in the JSON lines. Times before 1970 are
/// written as the epoch.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let mut buf = Vec::with_capacity(27);
    push_rfc3339_micros(&mut buf, t);
    // Only ASCII digits and separators were written.
    String::from_utf8(buf).unwrap_or_default()
}

fn push_rfc3339_micros(buf: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    digits(buf, y, 4);
    buf.push(b'-');
    digits(buf, mo, 2);
    buf.push(b'-');
    digits(buf, d, 2);
    buf.push(b'T');
    digits(buf, sod / 3600, 2);
    buf.push(b':');
    digits(buf, sod / 60 % 60, 2);
    buf.push(b':');
    digits(buf, sod % 60, 2);
    buf.push(b'.');
    digits(buf, u64::from(since.subsec_micros()), 6);
    buf.push(b'Z');
}

/// `v` zero-padded to `width` digits (wider values are written whole).
fn digits(buf: &mut Vec<u8>, v: u64, width: usize) {
    let mut tmp = itoa::Buffer::new();
    let s = tmp.format(v);
    buf.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
    buf.extend_from_slice(s.as_bytes());
}

/// (year, month, day) of `days` since 1970-01-01, proleptic Gregorian:
/// Howard Hinnant's `civil_from_days`, for days >= 0.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    //! The hand-written line against the serde version it replaced, which
    //! stays here as the reference.

    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use serde::Serialize;

    use super::*;
    use crate::{
        flow::{Enrichment, FlowDirection},
        testing::Rng,
    };

    /// `serde_json`'s line for the same record (with its `\n`).
    fn reference_line(r: &FlowRecord, agent_id: Option<&str>, routing: Option<BgpAttrs>) -> String {
        let line = FlowLine {
            agent_id,
            routing: routing.map(|attrs| RoutingFields::new(r, attrs)),
            ..FlowLine::from(r)
        };
        serde_json::to_string(&line).unwrap() + "\n"
    }

    fn ours(r: &FlowRecord, agent_id: Option<&str>, routing: Option<BgpAttrs>) -> String {
        let mut buf = Vec::new();
        push(&mut buf, r, agent_id, routing);
        String::from_utf8(buf).unwrap()
    }

    fn random_record(rng: &mut Rng) -> FlowRecord {
        let addr = |rng: &mut Rng| -> IpAddr {
            let v = rng.next();
            match v % 4 {
                0 => Ipv6Addr::from(u128::from(v) << 64 | u128::from(rng.next())).into(),
                // Zero runs, for RFC 5952 compression.
                1 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, (v >> 48) as u16).into(),
                _ => Ipv4Addr::from((v >> 32) as u32).into(),
            }
        };
        let names = [
            "eth0",
            "a\"quoted\\name",
            "tab\there",
            "ctl\u{1}\u{1f}\u{8}\u{c}\r\n",
            "é网",
        ];
        let name = |rng: &mut Rng| match rng.next() % 6 {
            0 => None,
            i => Some(names[i as usize - 1].into()),
        };
        let t =
            |rng: &mut Rng| UNIX_EPOCH + Duration::from_micros(rng.next() % 8_000_000_000_000_000);
        let (src, dst) = (addr(rng), addr(rng));
        FlowRecord {
            src,
            dst,
            src_port: rng.next() as u16,
            dst_port: rng.next() as u16,
            proto: rng.next() as u8,
            tos: rng.next() as u8,
            tcp_flags: rng.next() as u8,
            vlan: rng.next() as u16,
            ifindex: rng.next() as u32,
            direction: if rng.next().is_multiple_of(2) {
                FlowDirection::Ingress
            } else {
                FlowDirection::Egress
            },
            other_ifindex: rng.next() as u32,
            iface_in: name(rng),
            iface_out: name(rng),
            next_hop: (rng.next().is_multiple_of(2)).then(|| addr(rng)),
            src_mac: (rng.next() >> 16).to_be_bytes()[2..].try_into().unwrap(),
            packets: rng.next(),
            bytes: rng.next(),
            start: t(rng),
            end: t(rng),
            sampling_rate: rng.next() as u32,
            enrichment: Enrichment {
                as_src: rng.next() as u32,
                as_dst: rng.next() as u32,
                peer_as_src: rng.next() as u32,
                peer_as_dst: rng.next() as u32,
                net_src: (!rng.next().is_multiple_of(3))
                    .then(|| (addr(rng), (rng.next() % 129) as u8)),
                net_dst: (!rng.next().is_multiple_of(3))
                    .then(|| (addr(rng), (rng.next() % 129) as u8)),
                bgp_nexthop: (rng.next().is_multiple_of(2)).then(|| addr(rng)),
                as_path: (0..rng.next() % 5).map(|_| rng.next() as u32).collect(),
                communities: (0..rng.next() % 4).map(|_| rng.next() as u32).collect(),
                large_communities: (0..rng.next() % 3)
                    .map(|_| [rng.next() as u32, rng.next() as u32, rng.next() as u32])
                    .collect(),
            },
        }
    }

    #[test]
    fn byte_for_byte_what_serde_json_writes() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let routings = [
            None,
            Some(BgpAttrs::default()),
            Some(BgpAttrs {
                as_path: true,
                communities: false,
            }),
            Some(BgpAttrs {
                as_path: true,
                communities: true,
            }),
        ];
        for i in 0..20_000 {
            let r = random_record(&mut rng);
            let routing = routings[i % 4];
            let agent = (i % 3 == 0).then_some("edge \"1\"");
            assert_eq!(
                ours(&r, agent, routing),
                reference_line(&r, agent, routing),
                "record {i}: {r:?}"
            );
        }
    }

    #[test]
    fn timestamps_at_calendar_edges() {
        for secs in [
            0u64,
            59,
            86_399,
            86_400,
            951_782_400,   // 2000-02-29 (a leap day of a year divisible by 400)
            4_107_542_400, // 2100-03-01 (2100 is not a leap year)
            1_700_000_000,
            253_402_300_799, // 9999-12-31T23:59:59
        ] {
            let t = UNIX_EPOCH + Duration::new(secs, 999_999_000);
            let mut buf = Vec::new();
            timestamp(&mut buf, t);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                format!("\"{}\"", humantime::format_rfc3339_micros(t)),
                "{secs}"
            );
        }
        let mut buf = Vec::new();
        timestamp(&mut buf, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(buf, b"\"1970-01-01T00:00:00.000000Z\"");
    }

    /// `ip_proto`: the name where known, else the number.
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Proto {
        Name(&'static str),
        Number(u8),
    }

    /// `aa:bb:cc:dd:ee:ff`, as pmacct prints MAC addresses.
    fn mac(m: [u8; 6]) -> String {
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    fn rfc3339(t: SystemTime) -> String {
        // The reference keeps humantime's formatter.
        humantime::format_rfc3339_micros(t).to_string()
    }

    #[derive(Serialize)]
    struct FlowLine<'a> {
        event_type: &'static str,
        /// Set by the collector, which writes the records of many agents.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent_id: Option<&'a str>,
        ip_src: IpAddr,
        ip_dst: IpAddr,
        port_src: u16,
        port_dst: u16,
        ip_proto: Proto,
        tos: u8,
        tcp_flags: u8,
        mac_src: String,
        iface_in: Option<&'a str>,
        iface_out: Option<&'a str>,
        ifindex: u32,
        direction: &'static str,
        vlan: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer_ip_dst: Option<IpAddr>,
        packets: u64,
        bytes: u64,
        timestamp_start: String,
        timestamp_end: String,
        sampling_rate: u32,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        routing: Option<RoutingFields>,
    }

    /// The routing fields, pmacct names; written when routing is configured.
    #[derive(Serialize)]
    struct RoutingFields {
        as_src: u32,
        as_dst: u32,
        peer_as_src: u32,
        peer_as_dst: u32,
        /// Matched prefix, or the unspecified address when none matched (as pmacct).
        net_src: IpAddr,
        mask_src: u8,
        net_dst: IpAddr,
        mask_dst: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        bgp_nexthop: Option<IpAddr>,
        /// ASes joined by `_`, as pmacct prints them.
        #[serde(skip_serializing_if = "Option::is_none")]
        as_path: Option<String>,
        /// `asn:value` joined by `_`.
        #[serde(skip_serializing_if = "Option::is_none")]
        comms: Option<String>,
        /// `global:local1:local2` joined by `_`.
        #[serde(skip_serializing_if = "Option::is_none")]
        lcomms: Option<String>,
    }

    impl RoutingFields {
        fn new(r: &FlowRecord, attrs: BgpAttrs) -> Self {
            let e = &r.enrichment;
            let join = |v: Vec<String>| v.join("_");
            RoutingFields {
                as_src: e.as_src,
                as_dst: e.as_dst,
                peer_as_src: e.peer_as_src,
                peer_as_dst: e.peer_as_dst,
                net_src: e.net_src.map_or(unspecified_like(r.src), |n| n.0),
                mask_src: e.net_src.map_or(0, |n| n.1),
                net_dst: e.net_dst.map_or(unspecified_like(r.dst), |n| n.0),
                mask_dst: e.net_dst.map_or(0, |n| n.1),
                bgp_nexthop: e.bgp_nexthop,
                as_path: attrs
                    .as_path
                    .then(|| join(e.as_path.iter().map(u32::to_string).collect())),
                comms: attrs.communities.then(|| {
                    join(
                        e.communities
                            .iter()
                            .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                            .collect(),
                    )
                }),
                lcomms: attrs.communities.then(|| {
                    join(
                        e.large_communities
                            .iter()
                            .map(|[a, b, c]| format!("{a}:{b}:{c}"))
                            .collect(),
                    )
                }),
            }
        }
    }

    impl<'a> From<&'a FlowRecord> for FlowLine<'a> {
        fn from(r: &'a FlowRecord) -> Self {
            FlowLine {
                event_type: "purge",
                agent_id: None,
                ip_src: r.src,
                ip_dst: r.dst,
                port_src: r.src_port,
                port_dst: r.dst_port,
                ip_proto: proto_name(r.proto).map_or(Proto::Number(r.proto), Proto::Name),
                tos: r.tos,
                tcp_flags: r.tcp_flags,
                mac_src: mac(r.src_mac),
                iface_in: r.iface_in.as_deref(),
                iface_out: r.iface_out.as_deref(),
                ifindex: r.ifindex,
                direction: r.direction.as_str(),
                vlan: r.vlan,
                peer_ip_dst: r.next_hop,
                packets: r.packets,
                bytes: r.bytes,
                timestamp_start: rfc3339(r.start),
                timestamp_end: rfc3339(r.end),
                sampling_rate: r.sampling_rate,
                routing: None,
            }
        }
    }
}
