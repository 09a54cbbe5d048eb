//! An open-addressing hash table from (network, length) to a small value,
//! laid out so that a batched lookup can prefetch a key's cache line.
//!
//! Keys are the upper 64 bits of an IPv6 network and a length (or a tag
//! above 128 for entries that are not prefixes). Entries are 16 bytes,
//! four to a 64-byte bucket; a key lives in its home bucket or, when that
//! was full at insertion, in one of the next ones (linear probing over
//! buckets). A bucket that ever overflowed says so, and only then does a
//! search go on past it: most searches, hits or misses, read one line,
//! the one [`PrefixHash::prefetch`] asked for.
//!
//! The hash is seeded per table from the process's random hash keys, so
//! prefixes chosen by a BGP peer cannot be aimed at one bucket chain.
//!
//! Invariants: the table is at most [`MAX_LOAD`] full; a key is in its home
//! bucket or in a later one reached only through buckets marked
//! overflowed; removals leave overflow marks in place (they only cost a
//! look at the next bucket) until the next resize rebuilds them.

use std::hash::{BuildHasher, RandomState};

use super::mem::prefetch;

/// Fraction of the entries in use above which the table doubles. At 5/8,
/// about one bucket in ten overflows, so a search reads 1.1 lines.
const MAX_LOAD: (usize, usize) = (5, 8);

/// `len` of an empty entry.
const EMPTY: u8 = u8::MAX;

/// Set in `meta` of a bucket's first entry: a key whose home is this
/// bucket may be in a later one.
const OVERFLOWED: u8 = 1;

/// The value of an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Slot {
    /// The caller's value (a slab index, a bit set).
    pub val: u32,
    /// A second, smaller value (a count).
    pub aux: u16,
}

/// One key and its value: 16 bytes (the [`Slot`] unpacked so that it
/// does not pad), four to a cache line.
#[derive(Clone, Copy)]
struct Entry {
    net: u64,
    val: u32,
    aux: u16,
    len: u8,
    /// Bucket flags, meaningful on a bucket's first entry only.
    meta: u8,
}

impl Entry {
    fn slot(&self) -> Slot {
        Slot {
            val: self.val,
            aux: self.aux,
        }
    }
}

const VACANT: Entry = Entry {
    net: 0,
    val: 0,
    aux: 0,
    len: EMPTY,
    meta: 0,
};

/// Four entries: one cache line.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Bucket([Entry; 4]);

/// (network, length) → [`Slot`].
#[derive(Clone)]
pub(super) struct PrefixHash {
    buckets: Vec<Bucket>,
    /// log2 of the bucket count.
    bits: u32,
    seed: u64,
    len: usize,
}

impl Default for PrefixHash {
    fn default() -> Self {
        Self::with_bits(3)
    }
}

impl PrefixHash {
    fn with_bits(bits: u32) -> Self {
        // Not advised to huge pages: measured, the agent's RSS with a full
        // table grew 10 MiB (this table and the IPv6 slab doubling in
        // 2 MiB pages) for no lookup rate that stood out of the noise.
        let buckets = vec![Bucket([VACANT; 4]); 1 << bits];
        Self {
            buckets,
            bits,
            seed: RandomState::new().hash_one(0x5eed_u64),
            len: 0,
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The home bucket of a key: a 64-bit finaliser (murmur3's) over the
    /// seeded key, top bits.
    #[inline(always)]
    fn home(&self, net: u64, len: u8) -> usize {
        let mut h = net ^ self.seed ^ u64::from(len).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        (h >> (64 - self.bits)) as usize
    }

    /// Asks for the line a search for the key reads first.
    #[inline(always)]
    pub(super) fn prefetch(&self, net: u64, len: u8) {
        prefetch(self.buckets.as_ptr().wrapping_add(self.home(net, len)));
    }

    /// (bucket, entry) of the key.
    #[inline(always)]
    fn find(&self, net: u64, len: u8) -> Option<(usize, usize)> {
        let mask = self.buckets.len() - 1;
        let mut b = self.home(net, len);
        // Every bucket overflowed only if the table were full: bounded.
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b].0;
            for (i, e) in bucket.iter().enumerate() {
                if e.len == len && e.net == net {
                    return Some((b, i));
                }
            }
            if bucket[0].meta & OVERFLOWED == 0 {
                return None;
            }
            b = (b + 1) & mask;
        }
        None
    }

    /// The value of the key.
    #[inline(always)]
    pub(super) fn get(&self, net: u64, len: u8) -> Option<Slot> {
        self.find(net, len)
            .map(|(b, i)| self.buckets[b].0[i].slot())
    }

    /// Sets the value of the key; returns the old one.
    pub(super) fn insert(&mut self, net: u64, len: u8, slot: Slot) -> Option<Slot> {
        debug_assert_ne!(len, EMPTY);
        if let Some((b, i)) = self.find(net, len) {
            let e = &mut self.buckets[b].0[i];
            let old = e.slot();
            (e.val, e.aux) = (slot.val, slot.aux);
            return Some(old);
        }
        if (self.len + 1) * MAX_LOAD.1 > self.buckets.len() * 4 * MAX_LOAD.0 {
            self.grow();
        }
        self.place(Entry {
            net,
            val: slot.val,
            aux: slot.aux,
            len,
            meta: 0,
        });
        self.len += 1;
        None
    }

    /// Puts a key known to be absent in the first vacant entry from its
    /// home bucket on, marking the full buckets passed.
    fn place(&mut self, e: Entry) {
        let mask = self.buckets.len() - 1;
        let mut b = self.home(e.net, e.len);
        loop {
            let bucket = &mut self.buckets[b].0;
            if let Some(v) = bucket.iter_mut().find(|v| v.len == EMPTY) {
                // The vacant entry's `meta` may hold the bucket's flags.
                *v = Entry { meta: v.meta, ..e };
                return;
            }
            bucket[0].meta |= OVERFLOWED;
            b = (b + 1) & mask;
        }
    }

    /// Doubles the bucket count and rehashes (clearing overflow marks that
    /// removals left behind).
    fn grow(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        let seed = self.seed;
        *self = Self::with_bits(self.bits + 1);
        self.seed = seed;
        for e in old.iter().flat_map(|b| b.0) {
            if e.len != EMPTY {
                self.place(Entry { meta: 0, ..e });
                self.len += 1;
            }
        }
    }

    /// Removes the key; returns its value.
    pub(super) fn remove(&mut self, net: u64, len: u8) -> Option<Slot> {
        let (b, i) = self.find(net, len)?;
        let e = &mut self.buckets[b].0[i];
        let slot = e.slot();
        *e = Entry {
            meta: e.meta,
            ..VACANT
        };
        self.len -= 1;
        Some(slot)
    }

    /// Every (network, length, value).
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u8, Slot)> + '_ {
        self.buckets
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|e| e.len != EMPTY)
            .map(|e| (e.net, e.len, e.slot()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::testing::Rng;

    /// Random inserts, replacements and removes against a `HashMap`, with
    /// keys crowded into a few networks so buckets overflow, across resizes.
    #[test]
    fn matches_std_hash_map() {
        let mut rng = Rng(0xb0c4e7);
        let mut t = PrefixHash::default();
        let mut r: HashMap<(u64, u8), Slot> = HashMap::new();
        for step in 0..40_000u32 {
            let b = rng.next();
            let key = (((b >> 32) % 3000) << 40, (b >> 8) as u8 % 70);
            let slot = Slot {
                val: step,
                aux: b as u16,
            };
            if b.is_multiple_of(3) {
                assert_eq!(t.remove(key.0, key.1), r.remove(&key));
            } else {
                assert_eq!(t.insert(key.0, key.1, slot), r.insert(key, slot));
            }
            assert_eq!(t.len(), r.len());
            let probe = (((b >> 16) % 3000) << 40, (b >> 24) as u8 % 70);
            assert_eq!(t.get(probe.0, probe.1), r.get(&probe).copied());
        }
        let mut all: Vec<_> = t.iter().map(|(n, l, s)| ((n, l), s)).collect();
        let mut want: Vec<_> = r.into_iter().collect();
        all.sort_by_key(|(k, _)| *k);
        want.sort_by_key(|(k, _)| *k);
        assert_eq!(all, want);
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }
}
