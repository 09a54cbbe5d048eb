//! Enrichment: fills each record's [`Enrichment`] from the RIB, pmacct
//! semantics, one batch at a time.
//!
//! - `as_src`/`as_dst`: origin AS (last AS of AS_PATH) of the best BGP route
//!   covering the address; the local AS for an empty path (a route of our
//!   own AS); else the networks-file AS; else 0.
//! - `peer_as_dst`: first AS of the path toward `ip_dst` (0 for an empty
//!   path), else the networks file's peer AS; `bgp_nexthop`: that route's
//!   next hop.
//! - `peer_as_src`: from the per-interface map (pmacct's
//!   `bgp_peer_src_as_map`): an entry for the ingress interface and the
//!   first packet's source MAC (the neighbour router) wins over one for the
//!   interface alone; else as `peer_as_dst` but toward `ip_src`.
//! - `net_src`/`net_dst`: the matched prefixes (BGP first, then the file).
//! - AS_PATH and communities of the destination route only when asked for
//!   (`--bgp-attrs`): they cost an allocation per record.
//!
//! Invariant: the RIB read lock is held for at most [`CHUNK`] records, so
//! the RIB owner publishing a full table waits microseconds, not a batch.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use log::warn;
use tokio::sync::mpsc;

use crate::{
    drain::Batch,
    flow::{Enrichment, FlowRecord},
    rib::{PathAttrs, RibHandle, RibView},
};

/// Records looked up per read-lock section.
pub const CHUNK: usize = 1024;

/// Optional attributes copied into records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BgpAttrs {
    /// Copy AS_PATH (`as_path`).
    pub as_path: bool,
    /// Copy standard and large communities (`comms`, `lcomms`).
    pub communities: bool,
}

/// Batch enrichment against a [`RibHandle`].
#[derive(Clone, Debug)]
pub struct Enricher {
    rib: RibHandle,
    local_as: u32,
    attrs: BgpAttrs,
    peer_src_as: PeerSrcAs,
}

/// `--bgp-peer-src-as`: (ingress interface, source MAC or `None` for any) to
/// the neighbour AS.
pub type PeerSrcAs = HashMap<(String, Option<[u8; 6]>), u32>;

/// What one address resolves to.
struct Lookup {
    origin: u32,
    peer: u32,
    net: Option<(IpAddr, u8)>,
}

impl Enricher {
    /// An enricher for `local_as`, copying `attrs`, with the interface →
    /// neighbour AS map for `peer_as_src`.
    pub fn new(rib: RibHandle, local_as: u32, attrs: BgpAttrs, peer_src_as: PeerSrcAs) -> Self {
        Self {
            rib,
            local_as,
            attrs,
            peer_src_as,
        }
    }

    /// Fills the enrichment of every record.
    ///
    /// The BGP lookups of a chunk (source and destination of every record)
    /// go through the RIB as one batch: on a full table each is a few
    /// cache misses, and a batch overlaps them.
    pub fn enrich(&self, records: &mut [FlowRecord]) {
        let mut addrs = Vec::with_capacity(2 * records.len().min(CHUNK));
        for chunk in records.chunks_mut(CHUNK) {
            addrs.clear();
            addrs.extend(chunk.iter().flat_map(|r| [r.src, r.dst]));
            let view = self.rib.read();
            let mut routes = vec![None; addrs.len()];
            view.bgp_batch(&addrs, &mut routes);
            for (r, route) in chunk.iter_mut().zip(routes.chunks_exact(2)) {
                r.enrichment = self.one(&view, r, route[0], route[1]);
            }
        }
    }

    /// What `addr` resolves to, given its best BGP route `bgp`.
    fn lookup<'v>(
        &self,
        view: &RibView<'_>,
        addr: IpAddr,
        bgp: Option<(IpNet, &'v PathAttrs)>,
    ) -> (Lookup, Option<&'v PathAttrs>) {
        if let Some((prefix, a)) = bgp {
            let l = Lookup {
                origin: a.origin_as().unwrap_or(self.local_as),
                peer: a.first_as().unwrap_or(0),
                net: Some((prefix.network(), prefix.prefix_len())),
            };
            return (l, Some(a));
        }
        if let Some((prefix, e)) = view.network(addr) {
            let l = Lookup {
                origin: e.asn,
                peer: e.peer_asn,
                net: Some((prefix.network(), prefix.prefix_len())),
            };
            return (l, None);
        }
        let none = Lookup {
            origin: 0,
            peer: 0,
            net: None,
        };
        (none, None)
    }

    /// The mapped neighbour AS for the record's ingress interface and
    /// source MAC, or for the interface alone.
    fn peer_src_as(&self, r: &FlowRecord) -> Option<u32> {
        if self.peer_src_as.is_empty() {
            return None;
        }
        let iface = r.iface_in.as_deref()?.to_owned();
        let mut key = (iface, Some(r.src_mac));
        if let Some(asn) = self.peer_src_as.get(&key) {
            return Some(*asn);
        }
        key.1 = None;
        self.peer_src_as.get(&key).copied()
    }

    /// The enrichment of `r`, given the best BGP routes of its source and
    /// destination.
    fn one(
        &self,
        view: &RibView<'_>,
        r: &FlowRecord,
        src_route: Option<(IpNet, &PathAttrs)>,
        dst_route: Option<(IpNet, &PathAttrs)>,
    ) -> Enrichment {
        let (src, _) = self.lookup(view, r.src, src_route);
        let (dst, dst_route) = self.lookup(view, r.dst, dst_route);
        let mut e = Enrichment {
            as_src: src.origin,
            as_dst: dst.origin,
            peer_as_src: self.peer_src_as(r).unwrap_or(src.peer),
            peer_as_dst: dst.peer,
            net_src: src.net,
            net_dst: dst.net,
            ..Enrichment::default()
        };
        if let Some(a) = dst_route {
            e.bgp_nexthop = a.next_hop;
            if self.attrs.as_path {
                e.as_path = a.flat_path().collect();
            }
            if self.attrs.communities {
                e.communities = a.communities.clone();
                e.large_communities = a.large_communities.clone();
            }
        }
        e
    }

    /// Enriches batches from `input` and passes them to `output` until
    /// `input` closes (blocking: run on its own thread). The drain never
    /// waits for this stage: it drops when `input` is full.
    pub fn run(self, mut input: mpsc::Receiver<Batch>, output: mpsc::Sender<Batch>) {
        while let Some(mut batch) = input.blocking_recv() {
            for part in batch.records.parts_mut() {
                self.enrich(part);
            }
            if output.blocking_send(batch).is_err() {
                warn!("enrichment: the output is gone, stopping");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        flow::FlowDirection,
        rib::{AsSegment, Rib, RibUpdate, networks},
    };

    fn record(src: &str, dst: &str, iface: Option<&str>) -> FlowRecord {
        FlowRecord {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 0,
            dst_port: 0,
            proto: 6,
            tos: 0,
            tcp_flags: 0,
            vlan: 0,
            ifindex: 1,
            direction: FlowDirection::Ingress,
            other_ifindex: 0,
            iface_in: iface.map(Into::into),
            iface_out: None,
            next_hop: None,
            src_mac: [0; 6],
            packets: 1,
            bytes: 1,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            sampling_rate: 1,
            enrichment: Enrichment::default(),
        }
    }

    fn rib() -> RibHandle {
        let nets = networks::parse("10.0.0.0/8,64496,64511\n198.51.0.0/16,64497\n", "t").unwrap();
        let h = RibHandle::new(nets);
        let mut rib = Rib::new(h.clone(), 1000);
        let add = |rib: &mut Rib, prefix: &str, path: Vec<u32>, nh: &str| {
            rib.apply(RibUpdate {
                announced: vec![(prefix.parse().unwrap(), 0)],
                attrs: PathAttrs {
                    as_path: if path.is_empty() {
                        vec![]
                    } else {
                        vec![AsSegment::Sequence(path)]
                    },
                    next_hop: Some(nh.parse().unwrap()),
                    communities: vec![0xfde9_0064],
                    large_communities: vec![[65001, 1, 2]],
                    ..PathAttrs::default()
                },
                ..RibUpdate::new("127.0.0.1".parse().unwrap())
            })
            .unwrap();
        };
        add(&mut rib, "198.51.100.0/24", vec![65001, 65010], "192.0.2.1");
        add(
            &mut rib,
            "2001:db8::/32",
            vec![65002, 65020, 65030],
            "2001:db8::1",
        );
        add(&mut rib, "192.0.2.0/24", vec![], "192.0.2.254");
        h
    }

    #[test]
    fn bgp_first_then_networks_file_then_zero() {
        let e = Enricher::new(rib(), 65000, BgpAttrs::default(), HashMap::new());
        let mut recs = vec![
            record("10.1.1.1", "198.51.100.7", None),
            record("198.51.7.7", "192.0.2.9", None),
            record("2001:db8::9", "2001:db9::1", None),
        ];
        e.enrich(&mut recs);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            recs[0].enrichment,
            Enrichment {
                as_src: 64496,
                peer_as_src: 64511,
                net_src: Some((ip("10.0.0.0"), 8)),
                as_dst: 65010,
                peer_as_dst: 65001,
                net_dst: Some((ip("198.51.100.0"), 24)),
                bgp_nexthop: Some(ip("192.0.2.1")),
                ..Enrichment::default()
            }
        );
        // File fills the gap BGP leaves (/16 not in BGP); empty path = local AS.
        assert_eq!(
            recs[1].enrichment,
            Enrichment {
                as_src: 64497,
                peer_as_src: 0,
                net_src: Some((ip("198.51.0.0"), 16)),
                as_dst: 65000,
                peer_as_dst: 0,
                net_dst: Some((ip("192.0.2.0"), 24)),
                bgp_nexthop: Some(ip("192.0.2.254")),
                ..Enrichment::default()
            }
        );
        assert_eq!(
            recs[2].enrichment,
            Enrichment {
                as_src: 65030,
                peer_as_src: 65002,
                net_src: Some((ip("2001:db8::"), 32)),
                ..Enrichment::default()
            }
        );
    }

    #[test]
    fn attrs_when_asked_and_peer_src_map() {
        let attrs = BgpAttrs {
            as_path: true,
            communities: true,
        };
        let router = [0x52, 0x54, 0, 0, 0, 7];
        let map = HashMap::from([
            (("eth1".to_string(), None), 64999),
            (("eth1".to_string(), Some(router)), 64777),
        ]);
        let e = Enricher::new(rib(), 65000, attrs, map);
        let mut via_router = record("2001:db8::9", "198.51.100.7", Some("eth1"));
        via_router.src_mac = router;
        let mut recs = vec![
            record("2001:db8::9", "198.51.100.7", Some("eth1")),
            record("2001:db8::9", "198.51.100.7", Some("eth2")),
            via_router,
        ];
        e.enrich(&mut recs);
        assert_eq!(recs[0].enrichment.peer_as_src, 64999);
        assert_eq!(recs[1].enrichment.peer_as_src, 65002);
        // Interface and MAC beat the interface alone.
        assert_eq!(recs[2].enrichment.peer_as_src, 64777);
        assert_eq!(recs[0].enrichment.as_path, vec![65001, 65010]);
        assert_eq!(recs[0].enrichment.communities, vec![0xfde9_0064]);
        assert_eq!(recs[0].enrichment.large_communities, vec![[65001, 1, 2]]);
    }

    #[test]
    fn run_passes_batches_through() {
        let e = Enricher::new(rib(), 65000, BgpAttrs::default(), HashMap::new());
        let (in_tx, in_rx) = mpsc::channel(2);
        let (out_tx, mut out_rx) = mpsc::channel(2);
        let batch = Batch {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            records: vec![record("10.1.1.1", "198.51.100.7", None)].into(),
            counters: Default::default(),
            dropped_records: 0,
            sampling_rate: 1,
        };
        in_tx.try_send(batch).unwrap();
        drop(in_tx);
        e.run(in_rx, out_tx);
        let out = out_rx.try_recv().unwrap();
        assert_eq!(out.records.iter().next().unwrap().enrichment.as_dst, 65010);
        assert!(out_rx.try_recv().is_err());
    }
}
