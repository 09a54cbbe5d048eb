//! The RIB owner ([`Rib`]) and the readers' handle ([`RibHandle`]).
//!
//! Readers see one table ([`Lpm`]) with the best path of every prefix, an 8-byte
//! `Arc<PathAttrs>` per prefix (the neighbour is part of the attributes).
//! Value size matters: lookups land at random in a million entries, and
//! 16- or 24-byte values (a list of paths in the trie) measured 40 % slower
//! lookups. The other paths of a prefix (several neighbours, or ADD-PATH
//! ids) live in a side map only the owner reads, holding the full list,
//! best first, for just those prefixes. With one neighbour and no ADD-PATH
//! the side map stays empty and a full table costs one trie.
//!
//! Only the task that owns the [`Rib`] changes routes, under the write lock,
//! at most [`PUBLISH_CHUNK`] prefixes per lock section: a full table
//! arriving or a session dropping never blocks readers for long (the
//! longest waits measured, 7 to 11 ms, are the trie's node array doubling).
//! Invariants: a prefix is in the trie iff it has a path; a prefix is in the
//! side map iff it has more than one path or its only path has an ADD-PATH
//! id other than 0, and then the trie holds the head of its list.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use ipnet::IpNet;

use super::{
    Error,
    attrs::{Interner, PathAttrs},
    best::{self, Candidate},
    lpm::{GROUP, Lpm},
    networks::NetworkEntry,
};

/// Prefix changes per write-lock section.
pub const PUBLISH_CHUNK: usize = 1024;
/// Most ADD-PATH paths one neighbour may have for one prefix. Each change
/// re-sorts the prefix's list, so an unbounded list would let one peer make
/// every UPDATE quadratic; real route servers send a handful.
pub const MAX_PATHS_PER_PREFIX: usize = 32;

/// The paths of one prefix, best first: (ADD-PATH id, attributes).
type Paths = Vec<(u32, Arc<PathAttrs>)>;

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

/// Cheap, cloneable read access to the best routes and the networks file.
#[derive(Clone, Debug)]
pub struct RibHandle {
    best: Arc<RwLock<Lpm<Arc<PathAttrs>>>>,
    networks: Arc<Lpm<NetworkEntry>>,
}

impl RibHandle {
    /// A handle with no BGP routes and the given networks-file table.
    pub fn new(networks: Lpm<NetworkEntry>) -> Self {
        Self {
            best: Arc::default(),
            networks: Arc::new(networks),
        }
    }

    /// A read view. Keep it for a bounded batch of lookups (the RIB owner
    /// waits for it to publish); it cannot be held across `.await`.
    pub fn read(&self) -> RibView<'_> {
        RibView {
            // A panic elsewhere while writing leaves a consistent trie (each
            // insert is atomic from the reader's view), so poison is ignored.
            bgp: self.best.read().unwrap_or_else(|e| e.into_inner()),
            networks: &self.networks,
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, Lpm<Arc<PathAttrs>>> {
        self.best.write().unwrap_or_else(|e| e.into_inner())
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

    /// The best BGP route covering each of `addrs`, into `out` (the same
    /// length; panics otherwise): what [`Self::bgp`] returns for each, but
    /// with the lookups' cache misses overlapped, several times faster on a
    /// full table. What a batch of records is enriched with.
    pub fn bgp_batch<'v>(&'v self, addrs: &[IpAddr], out: &mut [Option<(IpNet, &'v PathAttrs)>]) {
        assert_eq!(addrs.len(), out.len(), "one output per address");
        let mut got = [None; GROUP];
        for (addrs, out) in addrs.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            let got = &mut got[..addrs.len()];
            self.bgp.lookup_batch(addrs, got);
            for (o, g) in out.iter_mut().zip(got.iter()) {
                *o = g.map(|(p, a)| (p, &**a));
            }
        }
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

    /// (IPv4, IPv6) prefixes with a route.
    pub fn bgp_len(&self) -> (usize, usize) {
        (self.bgp.len_v4(), self.bgp.len_v6())
    }

    /// Networks-file prefixes held.
    pub fn networks_len(&self) -> usize {
        self.networks.len()
    }
}

/// The RIB owner: one per agent, owned by one task.
pub struct Rib {
    interner: Interner<PathAttrs>,
    handle: RibHandle,
    /// Full path lists of the prefixes with more than one path or an
    /// ADD-PATH id (see the module invariants).
    multi: HashMap<IpNet, Paths>,
    /// (prefix, path id) pairs held per neighbour: what the limit counts.
    paths: HashMap<IpAddr, usize>,
    max_prefixes: usize,
}

fn candidate(entry: &(u32, Arc<PathAttrs>)) -> Candidate<'_> {
    Candidate {
        path_id: entry.0,
        attrs: &entry.1,
    }
}

/// One change to one prefix.
enum Change {
    Withdraw(u32),
    Announce(u32, Arc<PathAttrs>),
}

impl Rib {
    /// A RIB publishing into `handle`, allowing each neighbour at most
    /// `max_prefixes` (prefix, path id) pairs.
    pub fn new(handle: RibHandle, max_prefixes: usize) -> Self {
        Self {
            interner: Interner::default(),
            handle,
            multi: HashMap::new(),
            paths: HashMap::new(),
            max_prefixes,
        }
    }

    /// The readers' handle.
    pub fn handle(&self) -> &RibHandle {
        &self.handle
    }

    /// Applies one UPDATE's changes.
    ///
    /// Over the neighbour's prefix limit, or over [`MAX_PATHS_PER_PREFIX`]
    /// for a prefix, all its routes are dropped and [`Error::PrefixLimit`] or
    /// [`Error::PathLimit`] tells the caller to close the session
    /// (NOTIFICATION Cease, subcode 1, RFC 4486).
    pub fn apply(&mut self, update: RibUpdate) -> Result<(), Error> {
        let neighbor = update.neighbor;
        let mut too_many = None;
        for chunk in update.withdrawn.chunks(PUBLISH_CHUNK) {
            let mut best = self.handle.write();
            for (prefix, id) in chunk {
                let prefix = prefix.trunc();
                change(
                    &mut best,
                    &mut self.multi,
                    &mut self.paths,
                    neighbor,
                    prefix,
                    Change::Withdraw(*id),
                );
            }
        }
        if !update.announced.is_empty() {
            let attrs = self.interner.intern(PathAttrs {
                neighbor: Some(neighbor),
                ..update.attrs
            });
            for chunk in update.announced.chunks(PUBLISH_CHUNK) {
                let mut best = self.handle.write();
                for (prefix, id) in chunk {
                    let prefix = prefix.trunc();
                    let c = Change::Announce(*id, Arc::clone(&attrs));
                    if !change(
                        &mut best,
                        &mut self.multi,
                        &mut self.paths,
                        neighbor,
                        prefix,
                        c,
                    ) {
                        too_many = Some(prefix);
                    }
                }
            }
        }
        if let Some(prefix) = too_many {
            self.drop_neighbor(neighbor);
            return Err(Error::PathLimit {
                neighbor,
                prefix,
                limit: MAX_PATHS_PER_PREFIX,
            });
        }
        if self.paths_from(neighbor) > self.max_prefixes {
            self.drop_neighbor(neighbor);
            return Err(Error::PrefixLimit {
                neighbor,
                limit: self.max_prefixes,
            });
        }
        Ok(())
    }

    /// Forgets everything a neighbour sent (session down).
    pub fn drop_neighbor(&mut self, neighbor: IpAddr) {
        if self.paths.remove(&neighbor).is_none() {
            return;
        }
        let mine = |a: &PathAttrs| a.neighbor == Some(neighbor);
        // Its prefixes: those it has the best path of, and those with a
        // list it is in. Only this owner writes, so nothing changes between
        // the (shared) scan and the removal.
        let mut prefixes: Vec<IpNet> = {
            let view = self.handle.read();
            let mut out = Vec::new();
            for all in [IpNet::V4(Default::default()), IpNet::V6(Default::default())] {
                out.extend(
                    view.bgp
                        .covered(&all)
                        .into_iter()
                        .filter_map(|(p, a)| mine(a).then_some(p)),
                );
            }
            out
        };
        prefixes.extend(
            self.multi
                .iter()
                .filter(|(_, v)| v.iter().any(|(_, a)| mine(a)))
                .map(|(p, _)| *p),
        );
        prefixes.sort_unstable();
        prefixes.dedup();
        for chunk in prefixes.chunks(PUBLISH_CHUNK) {
            let mut best = self.handle.write();
            for prefix in chunk {
                let mut list = take_list(&best, &mut self.multi, prefix);
                list.retain(|(_, a)| !mine(a));
                put_list(&mut best, &mut self.multi, *prefix, list);
            }
        }
        self.interner.sweep();
        // A lost full-table neighbour can leave a huge, nearly empty table.
        if self.multi.capacity() > 4 * self.multi.len().max(1024) {
            self.multi.shrink_to_fit();
        }
    }

    /// (prefix, path id) pairs held from `neighbor`.
    pub fn paths_from(&self, neighbor: IpAddr) -> usize {
        self.paths.get(&neighbor).copied().unwrap_or(0)
    }

    /// Distinct attribute sets held (interned).
    pub fn attr_sets(&self) -> usize {
        self.interner.len()
    }

    /// Every path held for exactly `prefix`, best first, with ADD-PATH ids.
    pub fn paths_of(&self, prefix: &IpNet) -> Vec<(u32, Arc<PathAttrs>)> {
        let prefix = prefix.trunc();
        if let Some(list) = self.multi.get(&prefix) {
            return list.clone();
        }
        let view = self.handle.read();
        view.bgp
            .get(&prefix)
            .map(|a| vec![(0, Arc::clone(a))])
            .unwrap_or_default()
    }
}

/// The full list of `prefix`, taken out of the side map (or built from the trie).
fn take_list(
    best: &Lpm<Arc<PathAttrs>>,
    multi: &mut HashMap<IpNet, Paths>,
    prefix: &IpNet,
) -> Paths {
    match multi.remove(prefix) {
        Some(v) => v,
        None => best
            .get(prefix)
            .map(|a| vec![(0, Arc::clone(a))])
            .unwrap_or_default(),
    }
}

/// Stores a best-first list back: head into the trie, the list into the
/// side map when it is more than a lone id-0 path.
fn put_list(
    best: &mut Lpm<Arc<PathAttrs>>,
    multi: &mut HashMap<IpNet, Paths>,
    prefix: IpNet,
    list: Paths,
) {
    let Some((_, head)) = list.first() else {
        best.remove(&prefix);
        return;
    };
    if !best.get(&prefix).is_some_and(|a| Arc::ptr_eq(a, head)) {
        best.insert(prefix, Arc::clone(head));
    }
    if list.len() > 1 || list[0].0 != 0 {
        // Lists are read far more than changed; exact capacity halves them.
        let mut list = list;
        list.shrink_to_fit();
        multi.insert(prefix, list);
    }
}

/// Applies one change; `false` when it would exceed [`MAX_PATHS_PER_PREFIX`]
/// (and was not applied).
fn change(
    best: &mut Lpm<Arc<PathAttrs>>,
    multi: &mut HashMap<IpNet, Paths>,
    counts: &mut HashMap<IpAddr, usize>,
    neighbor: IpAddr,
    prefix: IpNet,
    change: Change,
) -> bool {
    let mine = |a: &PathAttrs| a.neighbor == Some(neighbor);
    let count = counts.entry(neighbor).or_insert(0);
    // Fast path, one neighbour without ADD-PATH: the trie entry is the list.
    if !multi.contains_key(&prefix) {
        let current = best.get(&prefix);
        match (&change, current) {
            (Change::Announce(0, attrs), None) => {
                best.insert(prefix, Arc::clone(attrs));
                *count += 1;
                return true;
            }
            (Change::Announce(0, attrs), Some(a)) if mine(a) => {
                best.insert(prefix, Arc::clone(attrs));
                return true;
            }
            (Change::Withdraw(0), Some(a)) if mine(a) => {
                best.remove(&prefix);
                *count = count.saturating_sub(1);
                return true;
            }
            (Change::Withdraw(_), None) => return true,
            _ => {}
        }
    }
    let mut list = take_list(best, multi, &prefix);
    let mut applied = true;
    match change {
        Change::Withdraw(id) => {
            if let Some(at) = list.iter().position(|(i, a)| *i == id && mine(a)) {
                list.remove(at);
                *count = count.saturating_sub(1);
            }
        }
        Change::Announce(id, attrs) => match list.iter().position(|(i, a)| *i == id && mine(a)) {
            Some(at) => list[at] = (id, attrs),
            None if list.iter().filter(|(_, a)| mine(a)).count() >= MAX_PATHS_PER_PREFIX => {
                applied = false;
            }
            None => {
                list.push((id, attrs));
                *count += 1;
            }
        },
    }
    // A few paths per prefix: a stable sort is cheap and keeps the best first.
    list.sort_by(|a, b| best::compare(&candidate(a), &candidate(b)));
    put_list(best, multi, prefix, list);
    applied
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
    fn path_limit_per_prefix_drops_the_neighbour() {
        let h = RibHandle::default();
        let mut rib = Rib::new(h.clone(), 1000);
        let mut u = announce("10.0.0.1", &[], attrs(&[1], None));
        u.announced = (0..MAX_PATHS_PER_PREFIX as u32)
            .map(|id| (net("192.0.2.0/24"), id))
            .collect();
        rib.apply(u).unwrap();
        assert_eq!(
            rib.paths_of(&net("192.0.2.0/24")).len(),
            MAX_PATHS_PER_PREFIX
        );
        // Another neighbour's paths do not count against this one.
        rib.apply(announce(
            "10.0.0.2",
            &["192.0.2.0/24"],
            attrs(&[2], Some(50)),
        ))
        .unwrap();
        let mut u = announce("10.0.0.1", &[], attrs(&[1], None));
        u.announced = vec![(net("192.0.2.0/24"), 999)];
        let err = rib.apply(u).unwrap_err();
        assert!(
            matches!(
                err,
                Error::PathLimit {
                    limit: MAX_PATHS_PER_PREFIX,
                    ..
                }
            ),
            "{err}"
        );
        let paths = rib.paths_of(&net("192.0.2.0/24"));
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].1.neighbor, Some(ip("10.0.0.2")));
    }

    #[test]
    fn lists_stay_sorted_best_first() {
        let h = RibHandle::default();
        let mut rib = Rib::new(h.clone(), 1000);
        for (n, lp) in [("10.0.0.3", 100), ("10.0.0.1", 300), ("10.0.0.2", 200)] {
            rib.apply(announce(n, &["192.0.2.0/24"], attrs(&[1], Some(lp))))
                .unwrap();
        }
        let order = |rib: &Rib| -> Vec<u32> {
            rib.paths_of(&net("192.0.2.0/24"))
                .iter()
                .map(|(_, a)| a.local_pref.unwrap())
                .collect()
        };
        assert_eq!(order(&rib), vec![300, 200, 100]);
        rib.apply(announce(
            "10.0.0.1",
            &["192.0.2.0/24"],
            attrs(&[1], Some(150)),
        ))
        .unwrap();
        assert_eq!(order(&rib), vec![200, 150, 100]);
        rib.drop_neighbor(ip("10.0.0.2"));
        assert_eq!(order(&rib), vec![150, 100]);
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
