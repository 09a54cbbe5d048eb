//! UPDATE decoding with RFC 7606 revised error handling.
//!
//! The message is framed here by hand (withdrawn routes, attribute list,
//! NLRI, and each attribute's flags/type/length), so every error is known
//! together with the attribute type it belongs to. Each attribute is then
//! parsed on its own by netgauze, and the error, if any, is mapped by type:
//!
//! | attribute | error reaction |
//! |---|---|
//! | ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF, COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST, EXTENDED COMMUNITIES, LARGE_COMMUNITY | treat-as-withdraw (RFC 7606 section 7, RFC 8092 section 6) |
//! | ATOMIC_AGGREGATE, AGGREGATOR, AS4_PATH, AS4_AGGREGATOR, other known optional | attribute discard (RFC 7606 sections 7.6, 7.7; RFC 6793 section 6) |
//! | MP_REACH_NLRI, MP_UNREACH_NLRI malformed or repeated | session reset, UPDATE error 9 / 1 (RFC 7606 sections 3 g, 5.3) |
//! | unrecognized attribute without the Optional flag | session reset, UPDATE error 2 (RFC 4271 section 6.3) |
//! | attribute overrunning the attribute list | treat-as-withdraw (RFC 7606 section 4) |
//! | withdrawn/attribute lengths overrunning the message | session reset, UPDATE error 1 |
//! | malformed IPv4 NLRI or withdrawn routes | session reset, UPDATE error 10 (RFC 7606 section 5.3) |
//! | missing ORIGIN / AS_PATH / NEXT_HOP with NLRI | treat-as-withdraw (RFC 7606 section 3 d) |
//! | other repeated attribute | all but the first discarded (RFC 7606 section 3 g) |
//!
//! Flag errors on known attributes (Optional/Transitive bits) are
//! malformations of that attribute (RFC 7606 section 3 c). LOCAL_PREF is not
//! required on iBGP sessions: the agent only reads it. Confederation
//! segments in AS_PATH are not supported by the codec and count as malformed.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};
use netgauze_bgp_pkt::path_attribute::{
    AsPath, AsPathSegmentType, MpReach, MpUnreach, Origin as NgOrigin, PathAttribute,
    PathAttributeValue,
};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::{reader::SliceReader, traits::ParseFromWithOneInput};

use super::message::{Notification, code};
use crate::rib::{AsSegment, Origin, PathAttrs, RibUpdate};

/// Session parameters that change how an UPDATE is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeParams {
    /// The neighbour (recorded in the routes).
    pub neighbor: IpAddr,
    /// 4-octet AS numbers in AS_PATH (RFC 6793).
    pub asn4: bool,
    /// ADD-PATH path ids in IPv4 unicast NLRI.
    pub add_path_v4: bool,
    /// ADD-PATH path ids in IPv6 unicast NLRI.
    pub add_path_v6: bool,
}

/// What to do with one UPDATE.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Apply these route changes (one per next-hop family), and note the
    /// RFC 7606 measures taken, if any.
    Apply {
        /// The changes.
        updates: Vec<RibUpdate>,
        /// Whether announced routes were turned into withdrawals.
        treated_as_withdraw: bool,
        /// Type codes of attributes discarded (malformed or repeated).
        discarded: Vec<u8>,
    },
    /// Close the session with this NOTIFICATION.
    Reset(Notification),
}

/// What an error in an attribute of this type leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reaction {
    Withdraw,
    Discard,
    Reset,
}

mod attr {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MED: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH: u8 = 14;
    pub const MP_UNREACH: u8 = 15;
    pub const EXT_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const LARGE_COMMUNITY: u8 = 32;
}

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const EXTENDED: u8 = 0x10;

/// Expected (Optional, Transitive) flags and error reaction of the types the
/// agent recognizes.
fn known(type_code: u8) -> Option<((bool, bool), Reaction)> {
    use Reaction::*;
    use attr::*;
    Some(match type_code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF => ((false, true), Withdraw),
        ATOMIC_AGGREGATE => ((false, true), Discard),
        MED | ORIGINATOR_ID | CLUSTER_LIST => ((true, false), Withdraw),
        COMMUNITIES | EXT_COMMUNITIES | LARGE_COMMUNITY => ((true, true), Withdraw),
        AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => ((true, true), Discard),
        MP_REACH | MP_UNREACH => ((true, false), Reset),
        _ => return None,
    })
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// Parses IPv4 unicast prefixes (withdrawn routes or NLRI); `None` if malformed.
fn parse_v4_prefixes(mut b: &[u8], add_path: bool) -> Option<Vec<(IpNet, u32)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let mut id = 0;
        if add_path {
            let (head, rest) = b.split_first_chunk::<4>()?;
            id = u32::from_be_bytes(*head);
            b = rest;
        }
        let (&len, rest) = b.split_first()?;
        if len > 32 {
            return None;
        }
        let bytes = usize::from(len).div_ceil(8);
        let addr = rest.get(..bytes)?;
        let mut octets = [0u8; 4];
        octets[..bytes].copy_from_slice(addr);
        let net = Ipv4Net::new(Ipv4Addr::from(octets), len).ok()?.trunc();
        out.push((IpNet::V4(net), id));
        b = &rest[bytes..];
    }
    Some(out)
}

/// Decodes an UPDATE body (the bytes after the 19-byte header).
pub fn decode(body: &[u8], p: &DecodeParams) -> Decoded {
    let malformed_list = || {
        Decoded::Reset(Notification::new(
            code::UPDATE,
            code::MALFORMED_ATTR_LIST,
            [],
        ))
    };
    let Some(wlen) = be16(body, 0) else {
        return malformed_list();
    };
    let Some(alen) = be16(body, 2 + wlen) else {
        return malformed_list();
    };
    let attrs_start = 4 + wlen;
    if attrs_start + alen > body.len() {
        return malformed_list();
    }
    let withdrawn_raw = &body[2..2 + wlen];
    let attrs_raw = &body[attrs_start..attrs_start + alen];
    let nlri_raw = &body[attrs_start + alen..];
    let invalid_network =
        || Decoded::Reset(Notification::new(code::UPDATE, code::INVALID_NETWORK, []));
    let Some(withdrawn) = parse_v4_prefixes(withdrawn_raw, p.add_path_v4) else {
        return invalid_network();
    };
    let Some(nlri) = parse_v4_prefixes(nlri_raw, p.add_path_v4) else {
        return invalid_network();
    };

    let mut ctx = BgpParsingContext::new(
        p.asn4,
        HashMap::new(),
        HashMap::from([
            (AddressType::Ipv4Unicast, p.add_path_v4),
            (AddressType::Ipv6Unicast, p.add_path_v6),
        ]),
        true,
        true,
        true,
        true,
    );
    let mut withdraw_all = false;
    let mut discarded = Vec::new();
    let mut seen = [false; 256];
    let mut values: Vec<PathAttributeValue> = Vec::new();
    let mut rest = attrs_raw;
    while !rest.is_empty() {
        // Framing (RFC 7606 section 4): an attribute that does not fit the
        // list makes the rest unreadable; the NLRI is still located by the
        // total attribute length, and withdrawn.
        let flags = rest[0];
        let header = if flags & EXTENDED != 0 { 4 } else { 3 };
        let len = if rest.len() < header {
            None
        } else if header == 4 {
            be16(rest, 2)
        } else {
            Some(usize::from(rest[2]))
        };
        let Some(framed) = len.and_then(|l| rest.get(..header + l)) else {
            withdraw_all = true;
            break;
        };
        rest = &rest[framed.len()..];
        let type_code = framed[1];
        let optional = flags & OPTIONAL != 0;
        let transitive = flags & TRANSITIVE != 0;
        if seen[usize::from(type_code)] {
            if matches!(type_code, attr::MP_REACH | attr::MP_UNREACH) {
                return malformed_list();
            }
            discarded.push(type_code);
            continue;
        }
        seen[usize::from(type_code)] = true;
        let Some((expected_flags, reaction)) = known(type_code) else {
            if !optional {
                return Decoded::Reset(Notification::new(
                    code::UPDATE,
                    code::UNRECOGNIZED_WELL_KNOWN,
                    framed,
                ));
            }
            // Unknown optional attributes are kept by routers for others; the
            // agent passes nothing on, so it just skips them.
            continue;
        };
        let parsed = if (optional, transitive) == expected_flags {
            let mut reader = SliceReader::new(framed);
            match PathAttribute::parse(&mut reader, &mut ctx) {
                Ok(a) if reader.is_empty() => Some(a),
                _ => None,
            }
        } else {
            None
        };
        match (parsed, reaction) {
            (Some(a), _) => values.push(a.value().clone()),
            (None, Reaction::Withdraw) => withdraw_all = true,
            (None, Reaction::Discard) => discarded.push(type_code),
            (None, Reaction::Reset) => {
                return Decoded::Reset(Notification::new(
                    code::UPDATE,
                    code::OPTIONAL_ATTR,
                    framed,
                ));
            }
        }
    }
    build(p, withdrawn, nlri, values, withdraw_all, discarded)
}

/// Turns checked attribute values into RIB changes.
fn build(
    p: &DecodeParams,
    withdrawn: Vec<(IpNet, u32)>,
    nlri: Vec<(IpNet, u32)>,
    values: Vec<PathAttributeValue>,
    mut withdraw_all: bool,
    discarded: Vec<u8>,
) -> Decoded {
    let mut attrs = PathAttrs {
        neighbor: Some(p.neighbor),
        ..PathAttrs::default()
    };
    let (mut has_origin, mut has_path) = (false, false);
    let mut next_hop_v4 = None;
    let mut as4_path: Option<Vec<AsSegment>> = None;
    let mut mp_announced: Vec<(IpNet, u32)> = Vec::new();
    let mut mp_next_hop = None;
    let mut all_withdrawn = withdrawn;
    for v in values {
        match v {
            PathAttributeValue::Origin(o) => {
                has_origin = true;
                attrs.origin = match o {
                    NgOrigin::IGP => Origin::Igp,
                    NgOrigin::EGP => Origin::Egp,
                    NgOrigin::Incomplete => Origin::Incomplete,
                };
            }
            PathAttributeValue::AsPath(path) => {
                has_path = true;
                attrs.as_path = match path {
                    AsPath::As2PathSegments(segs) => segs
                        .iter()
                        .map(|s| {
                            segment(
                                s.segment_type(),
                                s.as_numbers().iter().map(|&a| u32::from(a)).collect(),
                            )
                        })
                        .collect(),
                    AsPath::As4PathSegments(segs) => segs
                        .iter()
                        .map(|s| segment(s.segment_type(), s.as_numbers().to_vec()))
                        .collect(),
                };
            }
            PathAttributeValue::As4Path(path) => {
                as4_path = Some(
                    path.segments()
                        .iter()
                        .map(|s| segment(s.segment_type(), s.as_numbers().to_vec()))
                        .collect(),
                );
            }
            PathAttributeValue::NextHop(n) => next_hop_v4 = Some(IpAddr::V4(n.next_hop())),
            PathAttributeValue::MultiExitDiscriminator(m) => attrs.med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => attrs.local_pref = Some(l.metric()),
            PathAttributeValue::Communities(c) => {
                attrs.communities = c.communities().iter().map(|c| c.value()).collect();
            }
            PathAttributeValue::LargeCommunities(c) => {
                attrs.large_communities = c
                    .communities()
                    .iter()
                    .map(|c| [c.global_admin(), c.local_data1(), c.local_data2()])
                    .collect();
            }
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast { next_hop, nlri, .. }) => {
                mp_next_hop = Some(next_hop);
                mp_announced.extend(
                    nlri.iter()
                        .map(|a| (IpNet::V4(a.network().address()), a.path_id().unwrap_or(0))),
                );
            }
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                nlri,
                ..
            }) => {
                mp_next_hop = Some(IpAddr::V6(next_hop_global));
                mp_announced.extend(
                    nlri.iter()
                        .map(|a| (IpNet::V6(a.network().address()), a.path_id().unwrap_or(0))),
                );
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri }) => {
                all_withdrawn.extend(
                    nlri.iter()
                        .map(|a| (IpNet::V4(a.network().address()), a.path_id().unwrap_or(0))),
                );
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => {
                all_withdrawn.extend(
                    nlri.iter()
                        .map(|a| (IpNet::V6(a.network().address()), a.path_id().unwrap_or(0))),
                );
            }
            // Other families were not negotiated; other attributes are not used.
            _ => {}
        }
    }
    if let Some(as4) = as4_path.filter(|_| !p.asn4) {
        attrs.as_path = merge_as4_path(std::mem::take(&mut attrs.as_path), as4);
    }
    let announcing = !nlri.is_empty() || !mp_announced.is_empty();
    if announcing && (!has_origin || !has_path || (!nlri.is_empty() && next_hop_v4.is_none())) {
        withdraw_all = true;
    }
    let mut updates = Vec::new();
    if withdraw_all {
        all_withdrawn.extend(nlri);
        all_withdrawn.extend(mp_announced);
        updates.push(RibUpdate {
            withdrawn: all_withdrawn,
            ..RibUpdate::new(p.neighbor)
        });
    } else {
        updates.push(RibUpdate {
            withdrawn: all_withdrawn,
            announced: nlri,
            attrs: PathAttrs {
                next_hop: next_hop_v4,
                ..attrs.clone()
            },
            ..RibUpdate::new(p.neighbor)
        });
        if !mp_announced.is_empty() {
            updates.push(RibUpdate {
                announced: mp_announced,
                attrs: PathAttrs {
                    next_hop: mp_next_hop,
                    ..attrs
                },
                ..RibUpdate::new(p.neighbor)
            });
        }
    }
    Decoded::Apply {
        updates,
        treated_as_withdraw: withdraw_all && announcing,
        discarded,
    }
}

fn segment(t: AsPathSegmentType, ases: Vec<u32>) -> AsSegment {
    match t {
        AsPathSegmentType::AsSet => AsSegment::Set(ases),
        AsPathSegmentType::AsSequence => AsSegment::Sequence(ases),
    }
}

/// RFC 6793 section 4.2.3: on a session without 4-octet ASes, the leading
/// ASes of AS_PATH that AS4_PATH does not cover are kept, then AS4_PATH
/// follows; an AS4_PATH longer than AS_PATH is ignored.
fn merge_as4_path(path: Vec<AsSegment>, as4: Vec<AsSegment>) -> Vec<AsSegment> {
    let count = |p: &[AsSegment]| {
        p.iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                _ => 1,
            })
            .sum::<usize>()
    };
    let (n, n4) = (count(&path), count(&as4));
    if n4 > n {
        return path;
    }
    let mut keep = n - n4;
    let mut out = Vec::new();
    for s in path {
        if keep == 0 {
            break;
        }
        match s {
            AsSegment::Sequence(v) => {
                let take = v.len().min(keep);
                keep -= take;
                out.push(AsSegment::Sequence(v[..take].to_vec()));
            }
            other => {
                keep -= 1;
                out.push(other);
            }
        }
    }
    out.extend(as4);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN_IGP: &[u8] = &[0x40, 1, 1, 0];
    const PATH_65001_65002: &[u8] = &[0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0, 0, 0xfd, 0xea];
    const NH_192_0_2_1: &[u8] = &[0x40, 3, 4, 192, 0, 2, 1];
    const MED_50: &[u8] = &[0x80, 4, 4, 0, 0, 0, 50];
    const COMM_65001_100: &[u8] = &[0xc0, 8, 4, 0xfd, 0xe9, 0, 100];
    const LCOMM_1_2_3: &[u8] = &[0xc0, 32, 12, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
    /// 203.0.113.0/24 and 10.0.0.0/8.
    const NLRI: &[u8] = &[24, 203, 0, 113, 8, 10];

    fn params() -> DecodeParams {
        DecodeParams {
            neighbor: "192.0.2.1".parse().unwrap(),
            asn4: true,
            add_path_v4: false,
            add_path_v6: false,
        }
    }

    fn body(withdrawn: &[u8], attrs: &[&[u8]], nlri: &[u8]) -> Vec<u8> {
        let attrs = attrs.concat();
        let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(withdrawn);
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(&attrs);
        b.extend_from_slice(nlri);
        b
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn base_attrs() -> PathAttrs {
        PathAttrs {
            neighbor: Some("192.0.2.1".parse().unwrap()),
            as_path: vec![AsSegment::Sequence(vec![65001, 65002])],
            next_hop: Some("192.0.2.1".parse().unwrap()),
            ..PathAttrs::default()
        }
    }

    fn apply(d: Decoded) -> (Vec<RibUpdate>, bool, Vec<u8>) {
        match d {
            Decoded::Apply {
                updates,
                treated_as_withdraw,
                discarded,
            } => (updates, treated_as_withdraw, discarded),
            Decoded::Reset(n) => panic!("unexpected reset {n}"),
        }
    }

    fn withdrawn_only(prefixes: &[(&str, u32)]) -> Vec<RibUpdate> {
        vec![RibUpdate {
            withdrawn: prefixes.iter().map(|(p, i)| (net(p), *i)).collect(),
            ..RibUpdate::new("192.0.2.1".parse().unwrap())
        }]
    }

    #[test]
    fn ipv4_announcement_with_all_used_attributes() {
        let b = body(
            &[16, 198, 51],
            &[
                ORIGIN_IGP,
                PATH_65001_65002,
                NH_192_0_2_1,
                MED_50,
                COMM_65001_100,
                LCOMM_1_2_3,
            ],
            NLRI,
        );
        let (updates, taw, discarded) = apply(decode(&b, &params()));
        assert!(!taw);
        assert!(discarded.is_empty());
        assert_eq!(
            updates,
            vec![RibUpdate {
                withdrawn: vec![(net("198.51.0.0/16"), 0)],
                announced: vec![(net("203.0.113.0/24"), 0), (net("10.0.0.0/8"), 0)],
                attrs: PathAttrs {
                    med: Some(50),
                    communities: vec![0xfde9_0064],
                    large_communities: vec![[1, 2, 3]],
                    ..base_attrs()
                },
                ..RibUpdate::new("192.0.2.1".parse().unwrap())
            }]
        );
    }

    #[test]
    fn ipv6_mp_reach_and_unreach() {
        let mut reach = vec![0x80, 14, 26, 0, 2, 1, 16];
        reach.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        reach.extend_from_slice(&[0, 32, 0x20, 0x01, 0x0d, 0xb8]);
        let unreach: &[u8] = &[0x80, 15, 10, 0, 2, 1, 48, 0x20, 0x01, 0x0d, 0xb9, 0, 1];
        let b = body(&[], &[ORIGIN_IGP, PATH_65001_65002, &reach, unreach], &[]);
        let (updates, taw, _) = apply(decode(&b, &params()));
        assert!(!taw);
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].withdrawn, vec![(net("2001:db9:1::/48"), 0)]);
        assert!(updates[0].announced.is_empty());
        assert_eq!(updates[1].announced, vec![(net("2001:db8::/32"), 0)]);
        assert_eq!(
            updates[1].attrs.next_hop,
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            updates[1].attrs.as_path,
            vec![AsSegment::Sequence(vec![65001, 65002])]
        );
    }

    #[test]
    fn add_path_ids_are_read() {
        let p = DecodeParams {
            add_path_v4: true,
            ..params()
        };
        let b = body(
            &[0, 0, 0, 9, 8, 11],
            &[ORIGIN_IGP, PATH_65001_65002, NH_192_0_2_1],
            &[0, 0, 0, 7, 8, 10],
        );
        let (updates, _, _) = apply(decode(&b, &p));
        assert_eq!(updates[0].withdrawn, vec![(net("11.0.0.0/8"), 9)]);
        assert_eq!(updates[0].announced, vec![(net("10.0.0.0/8"), 7)]);
    }

    #[test]
    fn as4_path_is_merged_on_two_octet_sessions() {
        let p = DecodeParams {
            asn4: false,
            ..params()
        };
        // AS_PATH 65001 23456 23456 (2-octet), AS4_PATH 4200000001 4200000002.
        let path: &[u8] = &[0x40, 2, 8, 2, 3, 0xfd, 0xe9, 0x5b, 0xa0, 0x5b, 0xa0];
        let as4: &[u8] = &[
            0xc0, 17, 10, 2, 2, 0xfa, 0x56, 0xea, 0x01, 0xfa, 0x56, 0xea, 0x02,
        ];
        let b = body(&[], &[ORIGIN_IGP, path, NH_192_0_2_1, as4], NLRI);
        let (updates, _, _) = apply(decode(&b, &p));
        assert_eq!(
            updates[0].attrs.as_path,
            vec![
                AsSegment::Sequence(vec![65001]),
                AsSegment::Sequence(vec![4_200_000_001, 4_200_000_002])
            ]
        );
    }

    /// Malformations whose RFC 7606 reaction is treat-as-withdraw.
    #[test]
    fn treat_as_withdraw_cases() {
        let bad_segment: &[u8] = &[0x40, 2, 6, 5, 1, 0, 0, 0xfd, 0xe9];
        let origin_bad_flags: &[u8] = &[0xc0, 1, 1, 0];
        let origin_bad_value: &[u8] = &[0x40, 1, 1, 7];
        let comm_bad_len: &[u8] = &[0xc0, 8, 3, 1, 2, 3];
        let overrun: &[u8] = &[0x40, 3, 40, 192, 0, 2];
        let cases: [(&str, Vec<&[u8]>); 6] = [
            (
                "AS_PATH bad segment type",
                vec![ORIGIN_IGP, bad_segment, NH_192_0_2_1],
            ),
            (
                "ORIGIN flagged optional",
                vec![origin_bad_flags, PATH_65001_65002, NH_192_0_2_1],
            ),
            (
                "ORIGIN value 7",
                vec![origin_bad_value, PATH_65001_65002, NH_192_0_2_1],
            ),
            (
                "COMMUNITIES length 3",
                vec![ORIGIN_IGP, PATH_65001_65002, NH_192_0_2_1, comm_bad_len],
            ),
            ("missing NEXT_HOP", vec![ORIGIN_IGP, PATH_65001_65002]),
            (
                "attribute overruns the list",
                vec![ORIGIN_IGP, PATH_65001_65002, overrun],
            ),
        ];
        for (name, attrs) in cases {
            let (updates, taw, _) = apply(decode(&body(&[], &attrs, NLRI), &params()));
            assert!(taw, "{name}");
            assert_eq!(
                updates,
                withdrawn_only(&[("203.0.113.0/24", 0), ("10.0.0.0/8", 0)]),
                "{name}"
            );
        }
    }

    #[test]
    fn attribute_discard_and_duplicates() {
        let atomic_bad_len: &[u8] = &[0x40, 6, 1, 0];
        let b = body(
            &[],
            &[
                ORIGIN_IGP,
                PATH_65001_65002,
                NH_192_0_2_1,
                atomic_bad_len,
                MED_50,
                &[0x80, 4, 4, 0, 0, 0, 99],
            ],
            NLRI,
        );
        let (updates, taw, discarded) = apply(decode(&b, &params()));
        assert!(!taw);
        assert_eq!(discarded, vec![6, 4]);
        assert_eq!(updates[0].attrs.med, Some(50), "first MED kept");
        assert_eq!(updates[0].announced.len(), 2);
        // Unknown optional attributes are skipped silently.
        let b = body(
            &[],
            &[
                ORIGIN_IGP,
                PATH_65001_65002,
                NH_192_0_2_1,
                &[0xc0, 250, 2, 1, 2],
            ],
            NLRI,
        );
        let (updates, taw, discarded) = apply(decode(&b, &params()));
        assert!(!taw && discarded.is_empty());
        assert_eq!(updates[0].attrs, base_attrs());
    }

    /// Malformations that must reset the session, with the exact NOTIFICATION.
    #[test]
    fn session_reset_cases() {
        let unknown_well_known: &[u8] = &[0x40, 99, 1, 0];
        let mp_reach_v4: &[u8] = &[0x80, 14, 12, 0, 1, 1, 4, 192, 0, 2, 1, 0, 16, 10, 1];
        let mp_reach_truncated: &[u8] = &[0x80, 14, 5, 0, 2, 1, 16, 0];
        let cases: Vec<(&str, Vec<u8>, Notification)> = vec![
            (
                "unrecognized well-known attribute",
                body(&[], &[ORIGIN_IGP, unknown_well_known], NLRI),
                Notification::new(3, 2, unknown_well_known),
            ),
            (
                "MP_REACH_NLRI twice",
                body(
                    &[],
                    &[ORIGIN_IGP, PATH_65001_65002, mp_reach_v4, mp_reach_v4],
                    &[],
                ),
                Notification::new(3, 1, []),
            ),
            (
                "MP_REACH_NLRI truncated",
                body(
                    &[],
                    &[ORIGIN_IGP, PATH_65001_65002, mp_reach_truncated],
                    &[],
                ),
                Notification::new(3, 9, mp_reach_truncated),
            ),
            (
                "NLRI prefix length 33",
                body(&[], &[ORIGIN_IGP], &[33, 1, 2, 3, 4, 5]),
                Notification::new(3, 10, []),
            ),
            (
                "NLRI truncated",
                body(&[], &[ORIGIN_IGP], &[24, 10, 0]),
                Notification::new(3, 10, []),
            ),
            (
                "withdrawn length overruns",
                vec![0, 50, 24, 10, 0, 0, 0, 0],
                Notification::new(3, 1, []),
            ),
            (
                "attribute length overruns",
                vec![0, 0, 0, 50, 0x40, 1, 1, 0],
                Notification::new(3, 1, []),
            ),
            ("no lengths at all", vec![0], Notification::new(3, 1, [])),
        ];
        for (name, b, n) in cases {
            assert_eq!(decode(&b, &params()), Decoded::Reset(n), "{name}");
        }
    }

    /// Random and mutated bodies never panic (a peer cannot crash the agent).
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = body(
            &[16, 198, 51],
            &[
                ORIGIN_IGP,
                PATH_65001_65002,
                NH_192_0_2_1,
                MED_50,
                COMM_65001_100,
                LCOMM_1_2_3,
            ],
            NLRI,
        );
        let mut reach = vec![0x80, 14, 26, 0, 2, 1, 16];
        reach.extend_from_slice(&[
            0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 32, 0x20, 1, 0xd, 0xb8,
        ]);
        let v6 = body(&[], &[ORIGIN_IGP, PATH_65001_65002, &reach], &[]);
        for i in 0..200_000u32 {
            let mut b = if i % 2 == 0 {
                valid.clone()
            } else {
                v6.clone()
            };
            if i % 5 == 0 {
                let len = (next() % 64) as usize;
                b = (0..len).map(|_| next() as u8).collect();
            } else {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
                if next() % 4 == 0 {
                    b.truncate((next() as usize) % b.len());
                }
            }
            let p = DecodeParams {
                asn4: i % 3 != 0,
                add_path_v4: i % 7 == 0,
                add_path_v6: i % 11 == 0,
                ..params()
            };
            let _ = decode(&b, &p);
        }
    }

    #[test]
    fn end_of_rib_is_an_empty_change() {
        let (updates, taw, _) = apply(decode(&[0, 0, 0, 0], &params()));
        assert!(!taw);
        assert_eq!(
            updates,
            vec![RibUpdate {
                attrs: PathAttrs {
                    neighbor: Some("192.0.2.1".parse().unwrap()),
                    ..PathAttrs::default()
                },
                ..RibUpdate::new("192.0.2.1".parse().unwrap())
            }]
        );
    }
}
