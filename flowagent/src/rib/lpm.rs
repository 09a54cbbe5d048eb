//! Longest-prefix-match tables for IPv4 and IPv6.
//!
//! IPv4, the family nearly all flows are, lives in [`Flat4`]: a 16-8-8
//! multibit table with run-length compressed 64-byte nodes, updated in place per
//! prefix, where a lookup reads the top-level slot (a 512 KiB array that
//! stays in cache), one node line, its run values in the arena and the
//! matched prefix's slab entry. IPv6
//! stays on `prefix-trie` 0.10 (a tree-bitmap trie).
//!
//! Measured (`flowagent-bench --only rib`, 2-core shared VM under a load
//! average of 4 from other builds, release, per CPU-second of the
//! looking-up thread, medians of 5 rounds alternating with a bare
//! `prefix_trie::PrefixMap` on the same table): 1.0M DFZ-like IPv4
//! prefixes, 12.6 M lookups/s through the RIB (rounds 10.4 to 18.4) against
//! 14.0 M/s for prefix-trie, i.e. 0.9 to 1.2x it over the runs (the
//! prefix-trie-backed RIB measured 0.75x in the same conditions); 230k IPv6
//! prefixes on prefix-trie, 0.7 to 0.8x the bare map (the RIB's values are
//! 8-byte `Arc`s behind a lock, the bare map's 4-byte integers). Agent RSS
//! with 1.0M IPv4 + 230k IPv6 routes from BIRD: 137 MiB. The 30 M/s target
//! is not reached on that machine: a lookup is three dependent cache misses
//! (node, runs, slab) and the rate is what the CPU overlaps of them.
//! Invariant: stored prefixes have no host bits set (inserts truncate), so
//! `10.1.2.3/16` and `10.1.0.0/16` are the same key.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use prefix_trie::PrefixMap;

use super::flat4::Flat4;

/// One value per prefix, both families, with longest-prefix lookup.
#[derive(Clone)]
pub struct Lpm<V> {
    v4: Flat4<V>,
    v6: PrefixMap<Ipv6Net, V>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Self {
            v4: Flat4::default(),
            v6: PrefixMap::new(),
        }
    }
}

impl<V> std::fmt::Debug for Lpm<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lpm")
            .field("v4", &self.v4.len())
            .field("v6", &self.v6.len())
            .finish()
    }
}

impl<V> Lpm<V> {
    /// Sets the value of `prefix` (host bits ignored); returns the old one.
    pub fn insert(&mut self, prefix: IpNet, value: V) -> Option<V> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.insert(p, value),
            IpNet::V6(p) => self.v6.insert(p, value),
        }
    }

    /// Removes `prefix` exactly (not the prefixes it covers).
    pub fn remove(&mut self, prefix: &IpNet) -> Option<V> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.remove(&p),
            IpNet::V6(p) => self.v6.remove(&p),
        }
    }

    /// The value of exactly `prefix`.
    pub fn get(&self, prefix: &IpNet) -> Option<&V> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.get(&p),
            IpNet::V6(p) => self.v6.get(&p),
        }
    }

    /// The value of exactly `prefix`, mutable.
    pub fn get_mut(&mut self, prefix: &IpNet) -> Option<&mut V> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.get_mut(&p),
            IpNet::V6(p) => self.v6.get_mut(&p),
        }
    }

    /// The most specific prefix covering `addr`, and its value.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<(IpNet, &V)> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(a).map(|(p, v)| (IpNet::V4(p), v)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                // v4-mapped addresses are IPv4 traffic seen through a v6 socket.
                Some(v4) => self.lookup(IpAddr::V4(v4)),
                None => self
                    .v6
                    .get_lpm(&Ipv6Net::from(a))
                    .map(|(p, v)| (IpNet::V6(p), v)),
            },
        }
    }

    /// The most specific stored prefix covering `prefix` (itself included).
    pub fn lookup_prefix(&self, prefix: &IpNet) -> Option<(IpNet, &V)> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.lookup_prefix(&p).map(|(p, v)| (IpNet::V4(p), v)),
            IpNet::V6(p) => self.v6.get_lpm(&p).map(|(p, v)| (IpNet::V6(p), v)),
        }
    }

    /// Stored prefixes inside `prefix` (itself included), in trie order.
    pub fn covered(&self, prefix: &IpNet) -> Vec<(IpNet, &V)> {
        match prefix.trunc() {
            IpNet::V4(p) => self
                .v4
                .covered(&p)
                .into_iter()
                .map(|(p, v)| (IpNet::V4(p), v))
                .collect(),
            IpNet::V6(p) => self
                .v6
                .children(&p)
                .map(|(p, v)| (IpNet::V6(p), v))
                .collect(),
        }
    }

    /// IPv4 prefixes held.
    pub fn len_v4(&self) -> usize {
        self.v4.len()
    }

    /// IPv6 prefixes held.
    pub fn len_v6(&self) -> usize {
        self.v6.len()
    }

    /// All prefixes held.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether no prefix is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::Ipv4Addr};

    use ipnet::Ipv4Net;

    use super::*;
    use crate::testing::Rng;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = Lpm::default();
        t.insert(net("0.0.0.0/0"), 0);
        t.insert(net("10.0.0.0/8"), 8);
        t.insert(net("10.1.0.0/16"), 16);
        t.insert(net("10.1.2.0/24"), 24);
        t.insert(net("10.1.2.3/32"), 32);
        t.insert(net("2001:db8::/32"), 632);
        t.insert(net("2001:db8:1::/48"), 648);
        let cases = [
            ("10.1.2.3", "10.1.2.3/32", 32),
            ("10.1.2.4", "10.1.2.0/24", 24),
            ("10.1.3.1", "10.1.0.0/16", 16),
            ("10.2.0.1", "10.0.0.0/8", 8),
            ("11.0.0.1", "0.0.0.0/0", 0),
            ("::ffff:10.1.2.9", "10.1.2.0/24", 24),
            ("2001:db8:1::1", "2001:db8:1::/48", 648),
            ("2001:db8:2::1", "2001:db8::/32", 632),
        ];
        for (addr, prefix, value) in cases {
            assert_eq!(t.lookup(ip(addr)), Some((net(prefix), &value)), "{addr}");
        }
        assert_eq!(t.lookup(ip("2001:db9::1")), None);
        assert_eq!(t.len_v4(), 5);
        assert_eq!(t.len_v6(), 2);
    }

    #[test]
    fn host_bits_are_ignored_and_remove_is_exact() {
        let mut t = Lpm::default();
        assert_eq!(t.insert(net("192.0.2.77/24"), 1), None);
        assert_eq!(t.insert(net("192.0.2.0/24"), 2), Some(1));
        t.insert(net("192.0.0.0/16"), 3);
        assert_eq!(t.get(&net("192.0.2.1/24")), Some(&2));
        assert_eq!(t.remove(&net("192.0.2.0/24")), Some(2));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some((net("192.0.0.0/16"), &3)));
        assert_eq!(t.remove(&net("192.0.2.0/24")), None);
        assert_eq!(t.len(), 1);
        let covered: Vec<_> = t.covered(&net("192.0.0.0/8"));
        assert_eq!(covered, vec![(net("192.0.0.0/16"), &3)]);
    }

    /// 100k random IPv4 prefixes (lengths 8 to 32), checked against a naive
    /// reference: one hash map per prefix length, probed longest first.
    #[test]
    fn random_100k_matches_naive_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut t = Lpm::default();
        let mut by_len: Vec<HashMap<u32, u32>> = vec![HashMap::new(); 33];
        for value in 0..100_000u32 {
            let bits = rng.next();
            let len = 8 + (bits % 25) as u8;
            let addr = (bits >> 32) as u32;
            let p = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
            t.insert(IpNet::V4(p), value);
            by_len[len as usize].insert(u32::from(p.network()), value);
        }
        // Queries: half near stored prefixes (so long matches are hit), half random.
        let stored: Vec<_> = by_len
            .iter()
            .enumerate()
            .flat_map(|(len, m)| m.keys().map(move |k| (*k, len)))
            .collect();
        let mut hits = 0;
        for i in 0..200_000usize {
            let q = if i % 2 == 0 {
                let (k, _) = stored[i / 2 % stored.len()];
                k | (rng.next() as u32 & 0xff)
            } else {
                rng.next() as u32
            };
            let expected = (0..=32usize).rev().find_map(|len| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                by_len[len].get(&(q & mask)).map(|v| {
                    (
                        Ipv4Net::new(Ipv4Addr::from(q & mask), len as u8).unwrap(),
                        *v,
                    )
                })
            });
            let got = t
                .lookup(IpAddr::V4(Ipv4Addr::from(q)))
                .map(|(p, v)| (p, *v));
            assert_eq!(
                got,
                expected.map(|(p, v)| (IpNet::V4(p), v)),
                "query {q:#x}"
            );
            hits += usize::from(got.is_some());
        }
        let total: usize = by_len.iter().map(HashMap::len).sum();
        assert_eq!(t.len_v4(), total);
        assert!(
            hits > 100_000,
            "too few covered queries to mean much: {hits}"
        );
    }
}
