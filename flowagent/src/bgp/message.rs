//! BGP message framing (RFC 4271 section 4), NOTIFICATION, KEEPALIVE and
//! ROUTE-REFRESH encoding, and OPEN encoding/decoding through netgauze.
//!
//! The header is checked here by hand before any body is parsed, so the
//! reaction to a bad marker, length or type is exactly RFC 4271 section 6.1
//! (Message Header Error, subcodes 1 to 3, with the offending field as data).
//! Invariant: no function here panics on any input.

use std::{collections::HashMap, net::Ipv4Addr};

use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
        MultiProtocolExtensionsCapability,
    },
    open::{BgpOpenMessage, BgpOpenMessageParameter},
    wire::deserializer::BgpParsingContext,
};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::{WritablePdu, reader::SliceReader, traits::ParseFromWithOneInput};

/// Length of the fixed header: marker, length, type.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended-message capability (RFC 8654), which
/// the agent does not advertise.
pub const MAX_LEN: usize = 4096;
/// AS_TRANS (RFC 6793): the 2-octet stand-in for a 4-octet AS.
pub const AS_TRANS: u16 = 23456;

/// Message type codes.
pub mod kind {
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// UPDATE.
    pub const UPDATE: u8 = 2;
    /// NOTIFICATION.
    pub const NOTIFICATION: u8 = 3;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 4;
    /// ROUTE-REFRESH (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 5;
}

/// A NOTIFICATION (RFC 4271 section 4.5): error code, subcode, data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data (the offending field or attribute).
    pub data: Vec<u8>,
}

/// NOTIFICATION codes and the subcodes the agent sends.
pub mod code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;

    /// Header: Connection Not Synchronized.
    pub const NOT_SYNCHRONIZED: u8 = 1;
    /// Header: Bad Message Length.
    pub const BAD_LENGTH: u8 = 2;
    /// Header: Bad Message Type.
    pub const BAD_TYPE: u8 = 3;

    /// OPEN: Unsupported Version Number.
    pub const BAD_VERSION: u8 = 1;
    /// OPEN: Bad Peer AS.
    pub const BAD_PEER_AS: u8 = 2;
    /// OPEN: Bad BGP Identifier.
    pub const BAD_BGP_ID: u8 = 3;
    /// OPEN: Unacceptable Hold Time.
    pub const BAD_HOLD_TIME: u8 = 6;

    /// UPDATE: Malformed Attribute List.
    pub const MALFORMED_ATTR_LIST: u8 = 1;
    /// UPDATE: Unrecognized Well-known Attribute.
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    /// UPDATE: Optional Attribute Error.
    pub const OPTIONAL_ATTR: u8 = 9;
    /// UPDATE: Invalid Network Field.
    pub const INVALID_NETWORK: u8 = 10;

    /// FSM (RFC 6608): unexpected message in OpenSent.
    pub const FSM_OPEN_SENT: u8 = 1;
    /// FSM: unexpected message in OpenConfirm.
    pub const FSM_OPEN_CONFIRM: u8 = 2;
    /// FSM: unexpected message in Established.
    pub const FSM_ESTABLISHED: u8 = 3;

    /// Cease (RFC 4486): Maximum Number of Prefixes Reached.
    pub const MAX_PREFIXES: u8 = 1;
    /// Cease: Administrative Shutdown.
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Cease: Connection Rejected.
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Cease: Connection Collision Resolution.
    pub const COLLISION: u8 = 7;
}

impl Notification {
    /// A NOTIFICATION with the given code, subcode and data.
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// The full message on the wire (data cut to fit 4096 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let data = &self.data[..self.data.len().min(MAX_LEN - HEADER_LEN - 2)];
        let mut body = vec![self.code, self.subcode];
        body.extend_from_slice(data);
        frame(kind::NOTIFICATION, &body)
    }

    /// Decodes a NOTIFICATION body (after the header).
    pub fn decode(body: &[u8]) -> Option<Self> {
        match body {
            [code, subcode, data @ ..] => Some(Self::new(*code, *subcode, data)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.code {
            code::HEADER => "message header error",
            code::OPEN => "OPEN message error",
            code::UPDATE => "UPDATE message error",
            code::HOLD_TIMER => "hold timer expired",
            code::FSM => "finite state machine error",
            code::CEASE => "cease",
            _ => "unknown error",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)
    }
}

/// Prepends the header to a body.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Checks a header: returns the total message length and the type, or the
/// NOTIFICATION RFC 4271 section 6.1 asks for.
pub fn check_header(header: &[u8; HEADER_LEN]) -> Result<(usize, u8), Notification> {
    if header[..16] != [0xff; 16] {
        return Err(Notification::new(code::HEADER, code::NOT_SYNCHRONIZED, []));
    }
    let len_field = [header[16], header[17]];
    let len = usize::from(u16::from_be_bytes(len_field));
    let msg_type = header[18];
    let min = match msg_type {
        kind::OPEN => 29,
        kind::UPDATE => 23,
        kind::NOTIFICATION => 21,
        kind::KEEPALIVE => 19,
        kind::ROUTE_REFRESH => 23,
        other => return Err(Notification::new(code::HEADER, code::BAD_TYPE, [other])),
    };
    let exact = matches!(msg_type, kind::KEEPALIVE | kind::ROUTE_REFRESH);
    if len < min || len > MAX_LEN || (exact && len != min) {
        return Err(Notification::new(code::HEADER, code::BAD_LENGTH, len_field));
    }
    Ok((len, msg_type))
}

/// A KEEPALIVE.
pub fn keepalive() -> Vec<u8> {
    frame(kind::KEEPALIVE, &[])
}

/// A ROUTE-REFRESH request (RFC 2918) for one AFI/SAFI.
pub fn route_refresh(afi: u16, safi: u8) -> Vec<u8> {
    let a = afi.to_be_bytes();
    frame(kind::ROUTE_REFRESH, &[a[0], a[1], 0, safi])
}

/// What the agent learns from a neighbour's OPEN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenInfo {
    /// The neighbour's AS (4-octet when it has the capability).
    pub asn: u32,
    /// Proposed hold time, seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// 4-octet AS capability (RFC 6793).
    pub asn4: bool,
    /// Multiprotocol IPv4 unicast (also true when no MP capability is sent at all).
    pub ipv4: bool,
    /// Multiprotocol IPv6 unicast (RFC 4760).
    pub ipv6: bool,
    /// Route refresh (RFC 2918).
    pub route_refresh: bool,
    /// ADD-PATH: the neighbour will send several paths for IPv4 unicast.
    pub add_path_v4: bool,
    /// ADD-PATH: the neighbour will send several paths for IPv6 unicast.
    pub add_path_v6: bool,
}

impl Default for OpenInfo {
    fn default() -> Self {
        Self {
            asn: 0,
            hold_time: 0,
            router_id: Ipv4Addr::UNSPECIFIED,
            asn4: false,
            ipv4: false,
            ipv6: false,
            route_refresh: false,
            add_path_v4: false,
            add_path_v6: false,
        }
    }
}

/// The agent's OPEN: 4-octet AS, MP IPv4+IPv6 unicast, route refresh, and
/// ADD-PATH receive for both families. The agent never sends routes, so it
/// advertises no send capabilities.
pub fn encode_open(local_as: u32, hold_time: u16, router_id: Ipv4Addr) -> Vec<u8> {
    let my_as = u16::try_from(local_as).unwrap_or(AS_TRANS);
    let caps = vec![
        BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
            AddressType::Ipv4Unicast,
        )),
        BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
            AddressType::Ipv6Unicast,
        )),
        BgpCapability::RouteRefresh,
        BgpCapability::FourOctetAs(FourOctetAsCapability::new(local_as)),
        BgpCapability::AddPath(AddPathCapability::new(vec![
            AddPathAddressFamily::new(AddressType::Ipv4Unicast, false, true),
            AddPathAddressFamily::new(AddressType::Ipv6Unicast, false, true),
        ])),
    ];
    let open = BgpMessage::Open(BgpOpenMessage::new(
        my_as,
        hold_time,
        router_id,
        vec![BgpOpenMessageParameter::new_capabilities(caps)],
    ));
    let mut out = Vec::with_capacity(open.len());
    // Writing into a Vec cannot fail for a message built from valid values.
    if open.write(&mut out).is_err() {
        out.clear();
    }
    out
}

/// Decodes and checks an OPEN (the whole message, header included).
pub fn decode_open(msg: &[u8]) -> Result<OpenInfo, Notification> {
    let generic = || Notification::new(code::OPEN, 0, []);
    // Version is checked first so the reply names the version we speak.
    if msg.get(HEADER_LEN) != Some(&4) {
        return Err(Notification::new(code::OPEN, code::BAD_VERSION, [0, 4]));
    }
    // Fixed fields are checked on the raw bytes, so the reply carries the
    // RFC 4271 section 6.2 subcode even where the codec would refuse earlier.
    if let Some(fixed) = msg.get(HEADER_LEN + 3..HEADER_LEN + 9) {
        let hold = [fixed[0], fixed[1]];
        if matches!(u16::from_be_bytes(hold), 1 | 2) {
            return Err(Notification::new(code::OPEN, code::BAD_HOLD_TIME, hold));
        }
        if fixed[2..6] == [0, 0, 0, 0] {
            return Err(Notification::new(
                code::OPEN,
                code::BAD_BGP_ID,
                &fixed[2..6],
            ));
        }
    }
    let mut ctx = BgpParsingContext::new(
        true,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        false,
        true,
    );
    let parsed = BgpMessage::parse(&mut SliceReader::new(msg), &mut ctx).map_err(|_| generic())?;
    let BgpMessage::Open(open) = parsed else {
        return Err(generic());
    };
    let hold_time = open.hold_time();
    let mut info = OpenInfo {
        asn: u32::from(open.my_as()),
        hold_time,
        router_id: open.bgp_id(),
        ..OpenInfo::default()
    };
    let mut any_mp = false;
    for param in open.params() {
        let BgpOpenMessageParameter::Capabilities(caps) = param;
        for cap in caps.iter() {
            match cap {
                BgpCapability::MultiProtocolExtensions(mp) => {
                    any_mp = true;
                    match mp.address_type() {
                        AddressType::Ipv4Unicast => info.ipv4 = true,
                        AddressType::Ipv6Unicast => info.ipv6 = true,
                        _ => {}
                    }
                }
                BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh => {
                    info.route_refresh = true
                }
                BgpCapability::FourOctetAs(c) => {
                    info.asn4 = true;
                    info.asn = c.asn4();
                }
                BgpCapability::AddPath(c) => {
                    for af in c.address_families() {
                        match af.address_type() {
                            AddressType::Ipv4Unicast => info.add_path_v4 = af.send(),
                            AddressType::Ipv6Unicast => info.add_path_v6 = af.send(),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // RFC 4760 section 8: a speaker without the MP capability does IPv4 unicast.
    if !any_mp {
        info.ipv4 = true;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(marker: u8, len: u16, t: u8) -> [u8; HEADER_LEN] {
        let mut h = [marker; HEADER_LEN];
        h[16..18].copy_from_slice(&len.to_be_bytes());
        h[18] = t;
        h
    }

    #[test]
    fn header_checks_give_rfc4271_codes() {
        assert_eq!(check_header(&header(0xff, 19, 4)), Ok((19, 4)));
        assert_eq!(check_header(&header(0xff, 4096, 2)), Ok((4096, 2)));
        let cases = [
            (header(0xfe, 19, 4), Notification::new(1, 1, [])),
            (header(0xff, 18, 4), Notification::new(1, 2, [0, 18])),
            (header(0xff, 20, 4), Notification::new(1, 2, [0, 20])),
            (header(0xff, 4097, 2), Notification::new(1, 2, [0x10, 0x01])),
            (header(0xff, 28, 1), Notification::new(1, 2, [0, 28])),
            (header(0xff, 24, 5), Notification::new(1, 2, [0, 24])),
            (header(0xff, 19, 6), Notification::new(1, 3, [6])),
        ];
        for (h, n) in cases {
            assert_eq!(check_header(&h), Err(n), "{h:?}");
        }
    }

    #[test]
    fn fixed_messages_byte_exact() {
        let mut ka = vec![0xff; 16];
        ka.extend_from_slice(&[0, 19, 4]);
        assert_eq!(keepalive(), ka);
        let n = Notification::new(6, 2, [0xab]).encode();
        assert_eq!(&n[16..], &[0, 22, 3, 6, 2, 0xab]);
        assert_eq!(
            Notification::decode(&n[19..]),
            Some(Notification::new(6, 2, [0xab]))
        );
        assert_eq!(Notification::decode(&[6]), None);
        assert_eq!(&route_refresh(2, 1)[16..], &[0, 23, 5, 0, 2, 0, 1]);
    }

    /// The agent's OPEN, byte for byte, and decoded back.
    #[test]
    fn open_round_trip() {
        let open = encode_open(4_200_000_000, 90, Ipv4Addr::new(192, 0, 2, 1));
        let expected: Vec<u8> = [
            &[0xff; 16][..],
            &[0, 61, 1, 4, 0x5b, 0xa0, 0, 90, 192, 0, 2, 1, 32, 2, 30],
            &[1, 4, 0, 1, 0, 1],
            &[1, 4, 0, 2, 0, 1],
            &[2, 0],
            &[65, 4, 0xfa, 0x56, 0xea, 0x00],
            &[69, 8, 0, 1, 1, 1, 0, 2, 1, 1],
        ]
        .concat();
        assert_eq!(open, expected);
        let info = decode_open(&open).unwrap();
        assert_eq!(
            info,
            OpenInfo {
                asn: 4_200_000_000,
                hold_time: 90,
                router_id: Ipv4Addr::new(192, 0, 2, 1),
                asn4: true,
                ipv4: true,
                ipv6: true,
                route_refresh: true,
                add_path_v4: false,
                add_path_v6: false,
            }
        );
    }

    #[test]
    fn mutated_opens_never_panic() {
        let open = encode_open(4_200_000_000, 90, Ipv4Addr::new(192, 0, 2, 1));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = open.clone();
            let at = HEADER_LEN + (x as usize) % (m.len() - HEADER_LEN);
            m[at] = (x >> 32) as u8;
            if x.is_multiple_of(3) {
                m.truncate(at);
            }
            let _ = decode_open(&m);
        }
    }

    #[test]
    fn open_errors() {
        let mut bad_version = encode_open(65001, 90, Ipv4Addr::new(192, 0, 2, 1));
        bad_version[19] = 3;
        assert_eq!(
            decode_open(&bad_version),
            Err(Notification::new(2, 1, [0, 4]))
        );
        let bad_hold = encode_open(65001, 2, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(decode_open(&bad_hold), Err(Notification::new(2, 6, [0, 2])));
        let bad_id = encode_open(65001, 90, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            decode_open(&bad_id),
            Err(Notification::new(2, 3, [0, 0, 0, 0]))
        );
        let truncated = encode_open(65001, 90, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            decode_open(&truncated[..25]),
            Err(Notification::new(2, 0, []))
        );
        // A plain RFC 4271 OPEN without capabilities: 2-octet AS, IPv4 only.
        let plain = frame(kind::OPEN, &[4, 0xfd, 0xe9, 0, 180, 10, 0, 0, 1, 0]);
        let info = decode_open(&plain).unwrap();
        assert_eq!(
            (info.asn, info.asn4, info.ipv4, info.ipv6),
            (65001, false, true, false)
        );
    }
}
