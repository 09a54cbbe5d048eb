//! IPv6 longest-prefix table: a top level for the first 16 bits, one hash
//! table for prefixes up to /64, and a trie for the rare longer ones.
//!
//! A stride trie like [`super::flat4`]'s does not suit IPv6: DFZ prefixes
//! are /16 to /48, scattered over 2000::/3, so each one would need its own
//! chain of mostly empty nodes. Instead, for an address `a` with upper
//! 64 bits `hi`:
//!
//! ```text
//!  hi[63:48] ─▶ top[65536]: best prefix ≤ /16, lengths 17..=32 held in this /16
//!  (hi[63:32], DIR) ─▶ directory of the /32: lengths 33..=64 held in it,
//!                      and whether it holds prefixes longer than /64
//!  (hi & mask(l), l) ─▶ slab index of the /l, for each length l held
//!  slab index ─▶ slab[(length, value)]
//! ```
//!
//! The probes of one stage are independent, so a batched lookup asks for
//! all their lines at once: top (in cache) → directory and /17../32 probes
//! → /33../64 probes → slab entry, three rounds of misses whatever the
//! prefix length. Prefixes longer than /64 (not in the DFZ) live in a
//! `prefix-trie` map that is searched only for addresses in a /32 whose
//! directory says it holds one.
//!
//! Invariants:
//! - `hash` holds every stored prefix of length ≤ 64 (key: upper 64 bits
//!   of the network, length) with its slab index, and a directory entry
//!   (length [`DIR`]) for every /32 holding a prefix longer than /32;
//!   `long` holds every prefix longer than /64.
//! - `top[s].best` is the longest stored prefix of length ≤ 16 covering
//!   the /16 `s`, or NONE.
//! - Length sets are supersets: `top[s].lens` has the bit of every length
//!   17..=32 stored in the /16 and a directory's `val` the bit of every
//!   length 33..=64 stored in its /32, `aux` counting the prefixes longer
//!   than /32 in it (`top[s].count` those of 17..=32 in the /16). A set is
//!   emptied (a directory removed) when its count falls to zero; a count
//!   that saturated stays (its set is then only ever a superset, which
//!   costs probes, never answers).

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use prefix_trie::PrefixMap;

use super::{
    flat4::GROUP,
    prefix_hash::{PrefixHash, Slot},
    slab::Slab,
};

/// No prefix.
const NONE: u32 = u32::MAX;
/// The hash "length" of a /32's directory entry.
const DIR: u8 = 200;
/// Set in a directory's `aux`'s top bit: the /32 holds a prefix longer
/// than /64 (counted with the rest in the low bits).
const LONG: u16 = 1 << 15;
/// Saturated directory count.
const DIR_MAX: u16 = LONG - 1;

/// One /16 of the address space.
#[derive(Clone, Copy)]
struct Top {
    /// Slab index of the longest stored prefix ≤ /16 covering it, or NONE.
    best: u32,
    /// Bit `l - 17`: a prefix of length `l` (17..=32) may be stored in it.
    lens: u16,
    /// Stored prefixes of 17..=32 in it, saturating.
    count: u16,
}

/// The mask of the upper 64 bits for a length ≤ 64.
#[inline(always)]
fn mask(len: u8) -> u64 {
    u64::MAX.checked_shl(64 - u32::from(len)).unwrap_or(0)
}

/// The directory key of the /32 holding `hi`.
#[inline(always)]
fn dir_key(hi: u64) -> u64 {
    hi & mask(32)
}

/// IPv6 prefixes with one value each and longest-prefix lookup.
#[derive(Clone)]
pub struct Flat6<V> {
    top: Box<[Top]>,
    hash: PrefixHash,
    long: PrefixMap<Ipv6Net, u32>,
    /// Length and value of each prefix (its network is known wherever its
    /// index is found: 16 bytes a prefix less than storing it).
    slab: Slab<(u8, V)>,
    len: usize,
}

impl<V> Default for Flat6<V> {
    fn default() -> Self {
        let top = Top {
            best: NONE,
            lens: 0,
            count: 0,
        };
        Self {
            top: vec![top; 1 << 16].into_boxed_slice(),
            hash: PrefixHash::default(),
            long: PrefixMap::new(),
            slab: Slab::new(false),
            len: 0,
        }
    }
}

impl<V> Flat6<V> {
    /// Prefixes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The prefix at slab index `idx` (the one of its length holding
    /// `addr`) and its value.
    #[inline(always)]
    fn entry(&self, idx: u32, addr: Ipv6Addr) -> Option<(Ipv6Net, &V)> {
        let (len, v) = self.slab.get(idx)?;
        Some((Ipv6Net::new_assert(addr, *len).trunc(), v))
    }

    /// The length of the prefix at slab index `idx`.
    fn len_of(&self, idx: u32) -> Option<u8> {
        self.slab.get(idx).map(|(l, _)| *l)
    }

    /// The slab index of the longest stored prefix of a length in `lens`
    /// (bit `l - first`), longest first, covering `hi`; NONE if none.
    #[inline(always)]
    fn probe(&self, hi: u64, mut lens: u32, first: u8) -> u32 {
        while lens != 0 {
            let l = first + (31 - lens.leading_zeros()) as u8;
            if let Some(s) = self.hash.get(hi & mask(l), l) {
                return s.val;
            }
            lens &= !(1 << (l - first));
        }
        NONE
    }

    /// Asks for the lines [`Self::probe`] reads.
    #[inline(always)]
    fn prefetch_probes(&self, hi: u64, mut lens: u32, first: u8) {
        while lens != 0 {
            let l = first + lens.trailing_zeros() as u8;
            self.hash.prefetch(hi & mask(l), l);
            lens &= lens - 1;
        }
    }

    /// The answer for `a` once its directory (`dir`: the /32's length set
    /// and flags, if it has one) and top slot are known.
    #[inline(always)]
    fn resolve(&self, a: Ipv6Addr, dir: Option<Slot>, top: Top) -> u32 {
        let hi = (u128::from(a) >> 64) as u64;
        if let Some(d) = dir {
            if d.aux & LONG != 0
                && let Some((_, &i)) = self.long.get_lpm(&Ipv6Net::from(a))
            {
                return i;
            }
            let i = self.probe(hi, d.val, 33);
            if i != NONE {
                return i;
            }
        }
        let i = self.probe(hi, u32::from(top.lens), 17);
        if i != NONE { i } else { top.best }
    }

    /// The first stage of a lookup: the top slot (in cache); asks for the
    /// directory's line and the /17../32 probes' lines.
    #[inline(always)]
    fn stage_top(&self, hi: u64) -> Top {
        let top = self.top[(hi >> 48) as usize];
        self.hash.prefetch(dir_key(hi), DIR);
        self.prefetch_probes(hi, u32::from(top.lens), 17);
        top
    }

    /// The second stage: the directory; asks for the /33../64 probes' lines.
    #[inline(always)]
    fn stage_dir(&self, hi: u64) -> Option<Slot> {
        let dir = self.hash.get(dir_key(hi), DIR);
        if let Some(d) = dir {
            self.prefetch_probes(hi, d.val, 33);
        }
        dir
    }

    /// The most specific prefix covering `addr`, and its value.
    ///
    /// Staged like a batch of one: the probes of a stage are independent,
    /// so their lines are all asked for before any is read.
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<(Ipv6Net, &V)> {
        let hi = (u128::from(addr) >> 64) as u64;
        let top = self.stage_top(hi);
        let dir = self.stage_dir(hi);
        self.entry(self.resolve(addr, dir, top), addr)
    }

    /// The most specific prefix covering each of `addrs`, into `out` (the
    /// same length; panics otherwise): what [`Self::lookup`] returns for
    /// each, with the misses of a group of addresses overlapped: each
    /// stage runs for the whole group before the next.
    pub fn lookup_batch<'a>(&'a self, addrs: &[Ipv6Addr], out: &mut [Option<(Ipv6Net, &'a V)>]) {
        assert_eq!(addrs.len(), out.len(), "one output per address");
        let none = Top {
            best: NONE,
            lens: 0,
            count: 0,
        };
        for (addrs, out) in addrs.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            let mut hi = [0u64; GROUP];
            let mut tops = [none; GROUP];
            let mut dirs = [None; GROUP];
            let mut idx = [NONE; GROUP];
            for ((h, top), a) in hi.iter_mut().zip(&mut tops).zip(addrs) {
                *h = (u128::from(*a) >> 64) as u64;
                *top = self.stage_top(*h);
            }
            for (dir, h) in dirs.iter_mut().zip(&hi).take(addrs.len()) {
                *dir = self.stage_dir(*h);
            }
            // The probes: ask for the slab entries.
            for (((i, a), dir), top) in idx.iter_mut().zip(addrs).zip(dirs).zip(tops) {
                *i = self.resolve(*a, dir, top);
                self.slab.prefetch(*i);
            }
            for ((o, &i), a) in out.iter_mut().zip(&idx).zip(addrs) {
                *o = self.entry(i, *a);
            }
        }
    }

    /// The slab index of exactly `p` (truncated).
    fn find(&self, p: &Ipv6Net) -> Option<u32> {
        let len = p.prefix_len();
        if len > 64 {
            return self.long.get(p).copied();
        }
        let hi = (u128::from(p.network()) >> 64) as u64;
        self.hash.get(hi, len).map(|s| s.val)
    }

    /// The value of exactly `p` (host bits ignored).
    pub fn get(&self, p: &Ipv6Net) -> Option<&V> {
        let idx = self.find(&p.trunc())?;
        self.slab.get(idx).map(|(_, v)| v)
    }

    /// The value of exactly `p` (host bits ignored), mutable.
    pub fn get_mut(&mut self, p: &Ipv6Net) -> Option<&mut V> {
        let idx = self.find(&p.trunc())?;
        self.slab.get_mut(idx).map(|(_, v)| v)
    }

    /// The slab index of the longest stored prefix of length ≤ 64 in
    /// `lens` covering `hi`, by probing each length (for updates and
    /// prefix queries, not lookups).
    fn covering(&self, hi: u64, lens: std::ops::RangeInclusive<u8>) -> u32 {
        lens.rev()
            .find_map(|l| self.hash.get(hi & mask(l), l))
            .map_or(NONE, |s| s.val)
    }

    /// The most specific stored prefix covering `p` (itself included).
    pub fn lookup_prefix(&self, p: &Ipv6Net) -> Option<(Ipv6Net, &V)> {
        let p = p.trunc();
        if p.prefix_len() > 64
            && let Some((_, &i)) = self.long.get_lpm(&p)
        {
            return self.entry(i, p.network());
        }
        let hi = (u128::from(p.network()) >> 64) as u64;
        self.entry(self.covering(hi, 0..=p.prefix_len().min(64)), p.network())
    }

    /// Stored prefixes inside `p` (itself included), ordered by address
    /// then length (the order of a pre-order trie walk).
    pub fn covered(&self, p: &Ipv6Net) -> Vec<(Ipv6Net, &V)> {
        let p = p.trunc();
        let mut out: Vec<(Ipv6Net, &V)> = self
            .long
            .children(&p)
            .filter_map(|(q, &i)| self.entry(i, q.network()))
            .collect();
        if p.prefix_len() <= 64 {
            let (net, m) = ((u128::from(p.network()) >> 64) as u64, mask(p.prefix_len()));
            out.extend(
                self.hash
                    .iter()
                    .filter(|&(n, l, _)| l <= 64 && l >= p.prefix_len() && n & m == net)
                    .filter_map(|(n, _, s)| self.entry(s.val, Ipv6Addr::from(u128::from(n) << 64))),
            );
        }
        out.sort_unstable_by_key(|(p, _)| (p.network(), p.prefix_len()));
        out
    }

    /// Sets the value of `p` (host bits ignored); returns the old one.
    pub fn insert(&mut self, p: Ipv6Net, value: V) -> Option<V> {
        let p = p.trunc();
        if let Some(idx) = self.find(&p) {
            let slot = self.slab.get_mut(idx)?;
            return Some(std::mem::replace(&mut slot.1, value));
        }
        let idx = self.slab.insert((p.prefix_len(), value), NONE);
        self.len += 1;
        let (hi, len) = ((u128::from(p.network()) >> 64) as u64, p.prefix_len());
        let t = (hi >> 48) as usize;
        match len {
            0..=16 => {
                self.hash.insert(hi, len, Slot { val: idx, aux: 0 });
                let first = t & !((1usize << (16 - len)) - 1);
                for s in first..first + (1 << (16 - len)) {
                    let cur = self.top[s].best;
                    let shorter = self.len_of(cur).is_none_or(|l| l <= len);
                    if shorter {
                        self.top[s].best = idx;
                    }
                }
            }
            17..=32 => {
                self.hash.insert(hi, len, Slot { val: idx, aux: 0 });
                let top = &mut self.top[t];
                top.lens |= 1 << (len - 17);
                top.count = top.count.saturating_add(1);
            }
            _ => {
                if len <= 64 {
                    self.hash.insert(hi, len, Slot { val: idx, aux: 0 });
                } else {
                    self.long.insert(p, idx);
                }
                let mut dir = self.hash.get(dir_key(hi), DIR).unwrap_or_default();
                if len <= 64 {
                    dir.val |= 1 << (len - 33);
                } else {
                    dir.aux |= LONG;
                }
                if dir.aux & DIR_MAX != DIR_MAX {
                    dir.aux += 1;
                }
                self.hash.insert(dir_key(hi), DIR, dir);
            }
        }
        None
    }

    /// Removes exactly `p` (not the prefixes it covers).
    pub fn remove(&mut self, p: &Ipv6Net) -> Option<V> {
        let p = p.trunc();
        let (hi, len) = ((u128::from(p.network()) >> 64) as u64, p.prefix_len());
        let t = (hi >> 48) as usize;
        let idx = if len > 64 {
            self.long.remove(&p)?
        } else {
            self.hash.remove(hi, len)?.val
        };
        self.len -= 1;
        match len {
            0..=16 => {
                let next = match len {
                    0 => NONE,
                    _ => self.covering(hi, 0..=len - 1),
                };
                let first = t & !((1usize << (16 - len)) - 1);
                for s in first..first + (1 << (16 - len)) {
                    if self.top[s].best == idx {
                        self.top[s].best = next;
                    }
                }
            }
            17..=32 => {
                let top = &mut self.top[t];
                if top.count != u16::MAX {
                    top.count -= 1;
                    if top.count == 0 {
                        top.lens = 0;
                    }
                }
            }
            _ => {
                // A saturated count stays: its directory is kept.
                if let Some(mut dir) = self.hash.get(dir_key(hi), DIR)
                    && dir.aux & DIR_MAX != DIR_MAX
                {
                    dir.aux -= 1;
                    if dir.aux & DIR_MAX == 0 {
                        self.hash.remove(dir_key(hi), DIR);
                    } else {
                        self.hash.insert(dir_key(hi), DIR, dir);
                    }
                }
            }
        }
        self.slab.remove(idx).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{rib::flat4::TEST_BATCH_SIZES, testing::Rng};

    /// The reference: every stored prefix, scanned for the longest match.
    fn brute(r: &BTreeMap<Ipv6Net, u32>, a: Ipv6Addr) -> Option<(Ipv6Net, u32)> {
        r.iter()
            .filter(|(p, _)| p.contains(&a))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(p, v)| (*p, *v))
    }

    /// Random inserts and removes of nested prefixes of every length
    /// 0..=128 (::/0 and longer than /64 included) in a small region,
    /// against a brute-force scan, single and batched lookups (batch sizes
    /// around the group size), then exact reads, covering and covered
    /// prefixes, and a drain to empty.
    #[test]
    fn random_updates_match_brute_force() {
        for seed in 1..=4u64 {
            let mut rng = Rng(0x6e6e_0000 + seed);
            let mut t = Flat6::default();
            let mut r: BTreeMap<Ipv6Net, u32> = BTreeMap::new();
            // 2001:db8:1200::/40 with the low 64 bits from a few values,
            // sometimes 2001:db8::/30 or anywhere.
            let addr = |rng: &mut Rng| -> Ipv6Addr {
                let (b, c) = (rng.next(), rng.next());
                let hi = match b % 8 {
                    0 => c,
                    1 => 0x2001_0db8_0000_0000 | (c >> 30),
                    _ => 0x2001_0db8_1200_0000 | (c >> 48),
                };
                let lo = [0u64, 1, 0xffff, c][(b >> 8) as usize % 4];
                Ipv6Addr::from(u128::from(hi) << 64 | u128::from(lo))
            };
            let mut recent = [Ipv6Addr::UNSPECIFIED; 300];
            for step in 0..3000u32 {
                let b = rng.next();
                if b % 10 < 6 || r.is_empty() {
                    let len = match b >> 8 & 3 {
                        0 => [0u8, 1, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 127, 128]
                            [(b >> 16) as usize % 14],
                        1 => (b >> 16) as u8 % 129,
                        _ => 24 + (b >> 16) as u8 % 41,
                    };
                    let p = Ipv6Net::new(addr(&mut rng), len).unwrap().trunc();
                    assert_eq!(t.insert(p, step), r.insert(p, step), "insert {p}");
                } else {
                    let k = (b >> 8) as usize % r.len();
                    let p = *r.keys().nth(k).unwrap();
                    assert_eq!(t.remove(&p), r.remove(&p), "remove {p}");
                }
                assert_eq!(t.len(), r.len());
                for i in 0..8 {
                    let a = if i < 5 {
                        addr(&mut rng)
                    } else {
                        let k = rng.next() as usize % r.len().max(1);
                        r.keys().nth(k).map_or(Ipv6Addr::UNSPECIFIED, |p| {
                            if i % 2 == 0 {
                                p.network()
                            } else {
                                p.broadcast()
                            }
                        })
                    };
                    let got = t.lookup(a).map(|(p, v)| (p, *v));
                    assert_eq!(got, brute(&r, a), "seed {seed} step {step} lookup {a}");
                    recent[(step as usize * 8 + i) % recent.len()] = a;
                }
                if step % 8 == 0 {
                    let n = TEST_BATCH_SIZES[step as usize / 8 % TEST_BATCH_SIZES.len()];
                    let mut out = vec![None; n];
                    t.lookup_batch(&recent[..n], &mut out);
                    for (a, got) in recent[..n].iter().zip(out) {
                        let got = got.map(|(p, v)| (p, *v));
                        let single = t.lookup(*a).map(|(p, v)| (p, *v));
                        assert_eq!(got, single, "batch vs single {a}");
                        assert_eq!(got, brute(&r, *a), "batch vs brute {a}");
                    }
                }
            }
            for (&p, &v) in &r {
                assert_eq!(t.get(&p), Some(&v));
                assert_eq!(t.lookup_prefix(&p).map(|(p, v)| (p, *v)), Some((p, v)));
            }
            for l in [0u8, 16, 30, 32, 40, 48, 64, 80, 128] {
                let p = Ipv6Net::new("2001:db8:1234::".parse().unwrap(), l)
                    .unwrap()
                    .trunc();
                let want: Vec<_> = r
                    .iter()
                    .filter(|(q, _)| p.contains(*q))
                    .map(|(q, v)| (*q, *v))
                    .collect();
                let mut got: Vec<_> = t.covered(&p).into_iter().map(|(p, v)| (p, *v)).collect();
                got.sort_by_key(|(q, _)| (q.network(), q.prefix_len()));
                assert_eq!(got, want, "covered {p}");
            }
            let keys: Vec<_> = r.keys().copied().collect();
            for p in keys {
                assert_eq!(t.remove(&p), r.remove(&p));
            }
            assert_eq!(t.len(), 0);
            assert_eq!(t.hash.len(), 0, "directories left behind");
            assert!(t.top.iter().all(|s| s.best == NONE && s.lens == 0));
        }
    }
}
