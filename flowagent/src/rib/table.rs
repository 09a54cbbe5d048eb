//! The RIB owner ([`Rib`]: Adj-RIB-In per neighbour, best-path selection)
//! and the readers' handle ([`RibHandle`]) on the published Loc-RIB.
//!
//! Only the task that owns the [`Rib`] changes routes. After each change it
//! recomputes the best path of the touched prefixes with no lock held, then
//! publishes them into the shared Loc-RIB in chunks of [`PUBLISH_CHUNK`], one
//! short write-lock section per chunk.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock, RwLockReadGuard},
};

use ipnet::IpNet;
use smallvec::SmallVec;

use super::{
    Error,
    attrs::{Interner, PathAttrs},
    best::{self, Candidate},
    lpm::Lpm,
    networks::NetworkEntry,
};

/// Prefixes written per Loc-RIB write-lock section.
pub const PUBLISH_CHUNK: usize = 1024;

/// Routes of one prefix from one neighbour: (ADD-PATH id, attributes).
type Paths = SmallVec<[(u32, Arc<PathAttrs>); 1]>;

/// The route changes of one UPDATE from one neighbour.
#[derive(Clone, Debug, PartialEq)]
pub struct RibUpdate {
    /// The neighbour that sent it.
    pub neighbor: IpAddr,
    /// Withdrawn (prefix, ADD-PATH id); id 0 without ADD-PATH.
    pub withdrawn: Vec<(IpNet, u32)>,
    /// Announced (prefix, ADD-PATH id), all with `attrs`.
    pub announced: Vec<(IpNet, u32)>,
    /// Attributes of the announced routes (ignored when none are announced).
    pub attrs: PathAttrs,
}

impl RibUpdate {
    /// An empty update from `neighbor`.
    pub fn new(neighbor: IpAddr) -> Self {
        Self {
            neighbor,
            withdrawn: Vec::new(),
            announced: Vec::new(),
            attrs: PathAttrs::default(),
        }
    }
}

impl Default for RibHandle {
    fn default() -> Self {
        Self::new(Lpm::default())
    }
}

/// Cheap, cloneable read access to the published best routes and the
/// networks file.
#[derive(Clone, Debug)]
pub struct RibHandle {
    loc: Arc<RwLock<Lpm<Arc<PathAttrs>>>>,
    networks: Arc<Lpm<NetworkEntry>>,
}

impl RibHandle {
    /// A handle with no BGP routes and the given networks-file table.
    pub fn new(networks: Lpm<NetworkEntry>) -> Self {
        Self {
            loc: Arc::default(),
            networks: Arc::new(networks),
        }
    }

    /// A read view. Keep it for a bounded batch of lookups (the RIB owner
    /// waits for it to publish); it cannot be held across `.await`.
    pub fn read(&self) -> RibView<'_> {
        RibView {
            // A panic elsewhere while writing leaves a consistent trie (each
            // insert is atomic from the reader's view), so poison is ignored.
            bgp: self.loc.read().unwrap_or_else(|e| e.into_inner()),
            networks: &self.networks,
        }
    }
}

/// A consistent view of the RIB for a batch of lookups.
pub struct RibView<'a> {
    bgp: RwLockReadGuard<'a, Lpm<Arc<PathAttrs>>>,
    networks: &'a Lpm<NetworkEntry>,
}

impl RibView<'_> {
    /// The best BGP route covering `addr`: matched prefix and attributes.
    #[inline]
    pub fn bgp(&self, addr: IpAddr) -> Option<(IpNet, &PathAttrs)> {
        self.bgp.lookup(addr).map(|(p, a)| (p, &**a))
    }

    /// The networks-file entry covering `addr`.
    #[inline]
    pub fn network(&self, addr: IpAddr) -> Option<(IpNet, &NetworkEntry)> {
        self.networks.lookup(addr)
    }

    /// Best BGP routes inside `prefix` (itself included), for `bgp routes`.
    pub fn bgp_covered(&self, prefix: &IpNet) -> Vec<(IpNet, Arc<PathAttrs>)> {
        self.bgp
            .covered(prefix)
            .into_iter()
            .map(|(p, a)| (p, Arc::clone(a)))
            .collect()
    }

    /// The most specific best BGP route covering `prefix`.
    pub fn bgp_lookup_prefix(&self, prefix: &IpNet) -> Option<(IpNet, Arc<PathAttrs>)> {
        self.bgp
            .lookup_prefix(prefix)
            .map(|(p, a)| (p, Arc::clone(a)))
    }

    /// (IPv4, IPv6) best routes held.
    pub fn bgp_len(&self) -> (usize, usize) {
        (self.bgp.len_v4(), self.bgp.len_v6())
    }

    /// Networks-file prefixes held.
    pub fn networks_len(&self) -> usize {
        self.networks.len()
    }
}

#[derive(Default)]
struct AdjRibIn {
    routes: Lpm<Paths>,
    /// (prefix, path id) pairs held: what the prefix limit counts.
    paths: usize,
}

/// The RIB owner: one per agent, owned by one task.
pub struct Rib {
    adj_in: HashMap<IpAddr, AdjRibIn>,
    interner: Interner<PathAttrs>,
    handle: RibHandle,
    max_prefixes: usize,
}

impl Rib {
    /// A RIB publishing into `handle`, allowing each neighbour at most
    /// `max_prefixes` (prefix, path id) pairs.
    pub fn new(handle: RibHandle, max_prefixes: usize) -> Self {
        Self {
            adj_in: HashMap::new(),
            interner: Interner::default(),
            handle,
            max_prefixes,
        }
    }

    /// The readers' handle.
    pub fn handle(&self) -> &RibHandle {
        &self.handle
    }

    /// Applies one UPDATE's changes and publishes the new best paths.
    ///
    /// Over the neighbour's prefix limit, all its routes are dropped and
    /// [`Error::PrefixLimit`] tells the caller to close the session
    /// (NOTIFICATION Cease, subcode 1, RFC 4486).
    pub fn apply(&mut self, update: RibUpdate) -> Result<(), Error> {
        let neighbor = update.neighbor;
        let adj = self.adj_in.entry(neighbor).or_default();
        let mut changed = Vec::with_capacity(update.withdrawn.len() + update.announced.len());
        for (prefix, id) in update.withdrawn {
            let prefix = prefix.trunc();
            let Some(paths) = adj.routes.get_mut(&prefix) else {
                continue;
            };
            let Some(at) = paths.iter().position(|(i, _)| *i == id) else {
                continue;
            };
            paths.remove(at);
            adj.paths -= 1;
            if paths.is_empty() {
                adj.routes.remove(&prefix);
            }
            changed.push(prefix);
        }
        if !update.announced.is_empty() {
            let attrs = self.interner.intern(PathAttrs {
                neighbor: Some(neighbor),
                ..update.attrs
            });
            for (prefix, id) in update.announced {
                let prefix = prefix.trunc();
                match adj.routes.get_mut(&prefix) {
                    Some(paths) => match paths.iter_mut().find(|(i, _)| *i == id) {
                        Some(slot) => slot.1 = Arc::clone(&attrs),
                        None => {
                            paths.push((id, Arc::clone(&attrs)));
                            adj.paths += 1;
                        }
                    },
                    None => {
                        let mut paths = Paths::new();
                        paths.push((id, Arc::clone(&attrs)));
                        adj.routes.insert(prefix, paths);
                        adj.paths += 1;
                    }
                }
                changed.push(prefix);
            }
        }
        let over = adj.paths > self.max_prefixes;
        self.publish(&changed);
        if over {
            self.drop_neighbor(neighbor);
            return Err(Error::PrefixLimit {
                neighbor,
                limit: self.max_prefixes,
            });
        }
        Ok(())
    }

    /// Forgets everything a neighbour sent (session down) and publishes the
    /// new best paths of its prefixes.
    pub fn drop_neighbor(&mut self, neighbor: IpAddr) {
        let Some(adj) = self.adj_in.remove(&neighbor) else {
            return;
        };
        let mut prefixes: Vec<IpNet> = Vec::with_capacity(adj.routes.len());
        for family in ["0.0.0.0/0", "::/0"] {
            let all: IpNet = family.parse().unwrap_or_default();
            prefixes.extend(adj.routes.covered(&all).into_iter().map(|(p, _)| p));
        }
        drop(adj);
        self.publish(&prefixes);
        self.interner.sweep();
    }

    /// (prefix, path id) pairs held from `neighbor`.
    pub fn paths_from(&self, neighbor: IpAddr) -> usize {
        self.adj_in.get(&neighbor).map_or(0, |a| a.paths)
    }

    /// Distinct attribute sets held (interned).
    pub fn attr_sets(&self) -> usize {
        self.interner.len()
    }

    fn best(&self, prefix: &IpNet) -> Option<Arc<PathAttrs>> {
        let candidates = self
            .adj_in
            .values()
            .filter_map(|a| a.routes.get(prefix))
            .flat_map(|paths| {
                paths.iter().map(|(id, attrs)| Candidate {
                    path_id: *id,
                    attrs,
                })
            });
        let best = best::select(candidates)?;
        // Find the Arc again so the Loc-RIB shares the interned copy.
        self.adj_in
            .get(&best.attrs.neighbor?)?
            .routes
            .get(prefix)?
            .iter()
            .find(|(id, _)| *id == best.path_id)
            .map(|(_, a)| Arc::clone(a))
    }

    fn publish(&self, prefixes: &[IpNet]) {
        for chunk in prefixes.chunks(PUBLISH_CHUNK) {
            let bests: Vec<_> = chunk.iter().map(|p| (*p, self.best(p))).collect();
            let mut loc = self.handle.loc.write().unwrap_or_else(|e| e.into_inner());
            for (prefix, best) in bests {
                match best {
                    Some(attrs) => {
                        loc.insert(prefix, attrs);
                    }
                    None => {
                        loc.remove(&prefix);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::attrs::AsSegment;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn attrs(path: &[u32], local_pref: Option<u32>) -> PathAttrs {
        PathAttrs {
            as_path: vec![AsSegment::Sequence(path.to_vec())],
            local_pref,
            next_hop: Some(ip("192.0.2.254")),
            ..Default::default()
        }
    }
    fn announce(n: &str, prefixes: &[&str], a: PathAttrs) -> RibUpdate {
        RibUpdate {
            announced: prefixes.iter().map(|p| (net(p), 0)).collect(),
            attrs: a,
            ..RibUpdate::new(ip(n))
        }
    }
    fn origin(h: &RibHandle, addr: &str) -> Option<(String, u32, IpAddr)> {
        let v = h.read();
        v.bgp(ip(addr)).map(|(p, a)| {
            (
                p.to_string(),
                a.origin_as().unwrap_or(0),
                a.neighbor.unwrap(),
            )
        })
    }

    #[test]
    fn best_path_follows_announcements_withdrawals_and_session_loss() {
        let h = RibHandle::default();
        let mut rib = Rib::new(h.clone(), 100);
        rib.apply(announce(
            "10.0.0.1",
            &["203.0.113.0/24", "198.51.0.0/16"],
            attrs(&[65001, 65010], None),
        ))
        .unwrap();
        rib.apply(announce(
            "10.0.0.2",
            &["203.0.113.0/24"],
            attrs(&[65002, 65020, 65030], Some(200)),
        ))
        .unwrap();
        rib.apply(announce(
            "10.0.0.2",
            &["198.51.100.0/24"],
            attrs(&[65002, 65040], None),
        ))
        .unwrap();
        // LOCAL_PREF 200 wins despite the longer path.
        assert_eq!(
            origin(&h, "203.0.113.9"),
            Some(("203.0.113.0/24".into(), 65030, ip("10.0.0.2")))
        );
        // Longest prefix: the /24 inside the /16 has its own origin.
        assert_eq!(
            origin(&h, "198.51.100.1"),
            Some(("198.51.100.0/24".into(), 65040, ip("10.0.0.2")))
        );
        assert_eq!(
            origin(&h, "198.51.101.1"),
            Some(("198.51.0.0/16".into(), 65010, ip("10.0.0.1")))
        );
        // Withdraw the preferred route: the other neighbour's takes over.
        rib.apply(RibUpdate {
            withdrawn: vec![(net("203.0.113.0/24"), 0)],
            ..RibUpdate::new(ip("10.0.0.2"))
        })
        .unwrap();
        assert_eq!(
            origin(&h, "203.0.113.9"),
            Some(("203.0.113.0/24".into(), 65010, ip("10.0.0.1")))
        );
        // Implicit withdraw: a re-announcement replaces the route.
        rib.apply(announce(
            "10.0.0.1",
            &["203.0.113.0/24"],
            attrs(&[65001, 65099], None),
        ))
        .unwrap();
        assert_eq!(origin(&h, "203.0.113.9").unwrap().1, 65099);
        assert_eq!(rib.paths_from(ip("10.0.0.1")), 2);
        // Session loss removes everything from that neighbour.
        rib.drop_neighbor(ip("10.0.0.1"));
        assert_eq!(origin(&h, "203.0.113.9"), None);
        assert_eq!(origin(&h, "198.51.101.1"), None);
        assert_eq!(origin(&h, "198.51.100.1").unwrap().1, 65040);
        assert_eq!(h.read().bgp_len(), (1, 0));
    }

    #[test]
    fn add_path_keeps_paths_apart_and_attrs_are_shared() {
        let h = RibHandle::default();
        let mut rib = Rib::new(h.clone(), 100);
        let mut u = announce("10.0.0.1", &[], attrs(&[65001, 1], None));
        u.announced = vec![
            (net("192.0.2.0/24"), 1),
            (net("192.0.2.0/24"), 2),
            (net("192.0.3.0/24"), 1),
        ];
        rib.apply(u).unwrap();
        let mut u = announce("10.0.0.1", &[], attrs(&[65001], None));
        u.announced = vec![(net("192.0.2.0/24"), 2)];
        rib.apply(u).unwrap();
        assert_eq!(rib.paths_from(ip("10.0.0.1")), 3);
        assert_eq!(origin(&h, "192.0.2.1").unwrap().1, 65001);
        // Withdrawing an unknown path id changes nothing.
        rib.apply(RibUpdate {
            withdrawn: vec![(net("192.0.2.0/24"), 9)],
            ..RibUpdate::new(ip("10.0.0.1"))
        })
        .unwrap();
        assert_eq!(rib.paths_from(ip("10.0.0.1")), 3);
        rib.apply(RibUpdate {
            withdrawn: vec![(net("192.0.2.0/24"), 2)],
            ..RibUpdate::new(ip("10.0.0.1"))
        })
        .unwrap();
        assert_eq!(origin(&h, "192.0.2.1").unwrap().1, 1);
        let v = h.read();
        let a = v.bgp(ip("192.0.2.1")).unwrap().1 as *const PathAttrs;
        let b = v.bgp(ip("192.0.3.1")).unwrap().1 as *const PathAttrs;
        assert_eq!(a, b, "one interned attribute set for both prefixes");
    }

    #[test]
    fn prefix_limit_drops_the_neighbour() {
        let h = RibHandle::default();
        let mut rib = Rib::new(h.clone(), 2);
        rib.apply(announce(
            "10.0.0.1",
            &["192.0.2.0/24", "192.0.3.0/24"],
            attrs(&[1], None),
        ))
        .unwrap();
        let err = rib
            .apply(announce("10.0.0.1", &["192.0.4.0/24"], attrs(&[1], None)))
            .unwrap_err();
        assert!(matches!(err, Error::PrefixLimit { limit: 2, .. }), "{err}");
        assert_eq!(h.read().bgp_len(), (0, 0));
        assert_eq!(rib.paths_from(ip("10.0.0.1")), 0);
    }

    #[test]
    fn networks_file_is_visible_through_the_view() {
        let nets = crate::rib::networks::parse("10.0.0.0/8,64496,64511\n", "t").unwrap();
        let h = RibHandle::new(nets);
        let v = h.read();
        assert_eq!(v.network(ip("10.9.9.9")).map(|(_, e)| e.asn), Some(64496));
        assert_eq!(v.networks_len(), 1);
        assert!(v.bgp(ip("10.9.9.9")).is_none());
    }
}
