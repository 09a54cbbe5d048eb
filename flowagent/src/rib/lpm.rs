//! Longest-prefix-match tables for IPv4 and IPv6.
//!
//! IPv4, the family nearly all flows are, lives in [`Flat4`]: a 16-8-8
//! multibit table with run-length compressed 64-byte nodes, updated in
//! place per prefix, where a lookup reads the top-level slot (a 512 KiB
//! array that stays in cache), one node line, its run values in the arena
//! and the matched prefix's slab entry. IPv6 lives in [`Flat6`]: a top
//! level for the first 16 bits and one hash table probed per stored length
//! (lengths up to /64; longer prefixes, absent from the DFZ, in a
//! `prefix-trie` map searched only where they exist).
//!
//! On a full table each lookup is a few dependent cache misses, so the
//! rate one lookup at a time is memory latency. [`Lpm::lookup_batch`]
//! (what the enricher uses) carries [`GROUP`] addresses through the stages
//! together, prefetching the next stage's line for all of them before
//! reading any, so their misses overlap. It returns exactly what
//! [`Lpm::lookup`] returns.
//!
//! Measured: see the "RIB" section of BENCHMARKS.md (`flowagent-bench
//! --only lpm` runs just these figures).
//! Invariant: stored prefixes have no host bits set (inserts truncate), so
//! `10.1.2.3/16` and `10.1.0.0/16` are the same key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

pub use super::flat4::GROUP;
use super::{flat4::Flat4, flat6::Flat6};

/// The table an address is looked up in: IPv4 for IPv4 and v4-mapped IPv6
/// addresses (IPv4 traffic seen through a v6 socket), else IPv6.
#[inline(always)]
fn v4_of(addr: IpAddr) -> Result<Ipv4Addr, Ipv6Addr> {
    match addr {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => a.to_ipv4_mapped().ok_or(a),
    }
}

/// One value per prefix, both families, with longest-prefix lookup.
#[derive(Clone)]
pub struct Lpm<V> {
    v4: Flat4<V>,
    v6: Flat6<V>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Self {
            v4: Flat4::default(),
            v6: Flat6::default(),
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
        match v4_of(addr) {
            Ok(a) => self.v4.lookup(a).map(|(p, v)| (IpNet::V4(p), v)),
            Err(a) => self.lookup_v6(a),
        }
    }

    /// The most specific prefix covering each of `addrs`, and its value,
    /// into `out` (the same length; panics otherwise): exactly what
    /// [`Self::lookup`] returns for each, several times faster for IPv4
    /// because the cache misses of a batch's lookups overlap (see
    /// [`GROUP`]). Families may be mixed.
    pub fn lookup_batch<'a>(&'a self, addrs: &[IpAddr], out: &mut [Option<(IpNet, &'a V)>]) {
        assert_eq!(addrs.len(), out.len(), "one output per address");
        for (addrs, out) in addrs.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            // The chunk's addresses by family, with their places.
            let (mut v4, mut at4, mut n4) = ([Ipv4Addr::UNSPECIFIED; GROUP], [0u8; GROUP], 0);
            let (mut v6, mut at6, mut n6) = ([Ipv6Addr::UNSPECIFIED; GROUP], [0u8; GROUP], 0);
            for (i, a) in addrs.iter().enumerate() {
                match v4_of(*a) {
                    Ok(a) => {
                        (v4[n4], at4[n4]) = (a, i as u8);
                        n4 += 1;
                    }
                    Err(a) => {
                        (v6[n6], at6[n6]) = (a, i as u8);
                        n6 += 1;
                    }
                }
            }
            let mut got4 = [None; GROUP];
            self.v4.lookup_batch(&v4[..n4], &mut got4[..n4]);
            for (&i, g) in at4[..n4].iter().zip(got4) {
                out[usize::from(i)] = g.map(|(p, v)| (IpNet::V4(p), v));
            }
            let mut got6 = [None; GROUP];
            self.v6.lookup_batch(&v6[..n6], &mut got6[..n6]);
            for (&i, g) in at6[..n6].iter().zip(got6) {
                out[usize::from(i)] = g.map(|(p, v)| (IpNet::V6(p), v));
            }
        }
    }

    /// The IPv6 longest match of a non-v4-mapped address.
    fn lookup_v6(&self, a: Ipv6Addr) -> Option<(IpNet, &V)> {
        self.v6.lookup(a).map(|(p, v)| (IpNet::V6(p), v))
    }

    /// The most specific stored prefix covering `prefix` (itself included).
    pub fn lookup_prefix(&self, prefix: &IpNet) -> Option<(IpNet, &V)> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.lookup_prefix(&p).map(|(p, v)| (IpNet::V4(p), v)),
            IpNet::V6(p) => self.v6.lookup_prefix(&p).map(|(p, v)| (IpNet::V6(p), v)),
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
                .covered(&p)
                .into_iter()
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
    use std::collections::HashMap;

    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;
    use crate::{rib::flat4::TEST_BATCH_SIZES, testing::Rng};

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

    /// The longest of `stored` covering `a`, by scanning all of them.
    fn naive(stored: &HashMap<IpNet, u32>, a: IpAddr) -> Option<(IpNet, u32)> {
        let a = match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
            v4 => v4,
        };
        stored
            .iter()
            .filter(|(p, _)| p.contains(&a))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(p, v)| (*p, *v))
    }

    /// Random inserts and removes of both families, every length (IPv4
    /// 0..=32, IPv6 0..=128 so ::/0 and prefixes longer than /64 too),
    /// nested in small regions; lookups of addresses of both families and
    /// v4-mapped ones, in batches of sizes that are and are not multiples
    /// of the group, each checked against the single lookup and a naive
    /// scan.
    #[test]
    fn batches_match_single_lookups_and_naive_scan() {
        let mut rng = Rng(0x0ba7_c4ed);
        let mut t = Lpm::default();
        let mut stored: HashMap<IpNet, u32> = HashMap::new();
        // Addresses in 10.20.0.0/15 or 2001:db8:1200::/40 (the low 64 bits
        // from a few values, so long IPv6 prefixes are hit), sometimes
        // anywhere; sometimes v4-mapped.
        let addr = |rng: &mut Rng| -> IpAddr {
            let b = rng.next();
            let c = rng.next();
            match b % 8 {
                0..=2 => IpAddr::V4(Ipv4Addr::from(0x0a14_0000 | (c as u32 & 0x1_ffff))),
                3 => {
                    IpAddr::V6(Ipv4Addr::from(0x0a14_0000 | (c as u32 & 0x1_ffff)).to_ipv6_mapped())
                }
                4..=6 => {
                    let hi = (0x2001_0db8_1200_0000u64 | (c >> 40)) as u128;
                    let lo = [0u128, 1, 0xffff, u128::from(c)][(b >> 8) as usize % 4];
                    IpAddr::V6(Ipv6Addr::from(hi << 64 | lo))
                }
                _ => match b >> 8 & 1 {
                    0 => IpAddr::V4(Ipv4Addr::from(c as u32)),
                    _ => IpAddr::V6(Ipv6Addr::from(u128::from(c) << 64 | u128::from(b))),
                },
            }
        };
        for step in 0..4000u32 {
            let b = rng.next();
            if b % 10 < 6 || stored.is_empty() {
                let a = addr(&mut rng);
                let len = match (a, b >> 8 & 3) {
                    (_, 0) => {
                        [0u8, 1, 8, 16, 24, 32, 48, 63, 64, 65, 127, 128][(b >> 16) as usize % 12]
                    }
                    (IpAddr::V4(_), _) => (b >> 16) as u8 % 33,
                    (IpAddr::V6(_), _) => (b >> 16) as u8 % 129,
                };
                let p = match a {
                    IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, len.min(32)).unwrap()),
                    IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, len).unwrap()),
                }
                .trunc();
                // v4-mapped prefixes are not stored (IPv4 traffic is looked
                // up in the IPv4 table); skip them.
                if matches!(p, IpNet::V6(v6) if v6.network().to_ipv4_mapped().is_some()) {
                    continue;
                }
                assert_eq!(t.insert(p, step), stored.insert(p, step), "insert {p}");
            } else {
                let k = (b >> 8) as usize % stored.len();
                let p = *stored.keys().nth(k).unwrap();
                assert_eq!(t.remove(&p), stored.remove(&p), "remove {p}");
            }
            if step % 4 != 0 {
                continue;
            }
            let n = TEST_BATCH_SIZES[step as usize / 4 % TEST_BATCH_SIZES.len()];
            let addrs: Vec<IpAddr> = (0..n).map(|_| addr(&mut rng)).collect();
            let mut out = vec![None; n];
            t.lookup_batch(&addrs, &mut out);
            for (a, got) in addrs.iter().zip(out) {
                let got = got.map(|(p, v)| (p, *v));
                assert_eq!(
                    got,
                    t.lookup(*a).map(|(p, v)| (p, *v)),
                    "step {step}: batch vs single {a}"
                );
                assert_eq!(got, naive(&stored, *a), "step {step}: batch vs naive {a}");
            }
        }
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
