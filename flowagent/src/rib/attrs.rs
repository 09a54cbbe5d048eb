//! Path attributes as the RIB keeps them, and the interner that makes every
//! route with the same attributes share one allocation.
//!
//! A full table has about a million prefixes but only a few hundred thousand
//! distinct attribute sets (one UPDATE usually carries many prefixes), so the
//! RIB stores an `Arc<PathAttrs>` (8 bytes) per prefix and per neighbour.
//! Invariant: two equal [`PathAttrs`] handed to the same [`Interner`] come
//! back as the same `Arc` as long as one of them is alive.

use std::{collections::HashSet, hash::Hash, net::IpAddr, sync::Arc};

/// The ORIGIN attribute (RFC 4271 section 5.1.1); lower is preferred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Learned from an interior protocol.
    #[default]
    Igp = 0,
    /// Learned from EGP.
    Egp = 1,
    /// Learned some other way (redistribution).
    Incomplete = 2,
}

impl Origin {
    /// The one-letter code `show route` prints (i, e, ?).
    pub fn code(self) -> char {
        match self {
            Origin::Igp => 'i',
            Origin::Egp => 'e',
            Origin::Incomplete => '?',
        }
    }
}

/// One AS_PATH segment (RFC 4271 section 4.3, RFC 5065 for the confederation types).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AsSegment {
    /// Ordered ASes, nearest first.
    Sequence(Vec<u32>),
    /// Unordered ASes of an aggregate.
    Set(Vec<u32>),
    /// Confederation member ASes, ordered; not counted in the path length.
    ConfedSequence(Vec<u32>),
    /// Confederation member ASes, unordered; not counted in the path length.
    ConfedSet(Vec<u32>),
}

/// Everything the agent keeps of one route besides its prefix: the sending
/// neighbour and the attributes that best-path selection and enrichment use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    /// Address of the BGP neighbour that sent the route (`None` only in tests of
    /// pure attribute logic).
    pub neighbor: Option<IpAddr>,
    /// ORIGIN.
    pub origin: Origin,
    /// AS_PATH (with AS4_PATH already merged in, RFC 6793 section 4.2.3).
    pub as_path: Vec<AsSegment>,
    /// NEXT_HOP or the MP_REACH_NLRI next hop (the global one for IPv6).
    pub next_hop: Option<IpAddr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
    /// COMMUNITIES (RFC 1997), in the order received.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY (RFC 8092), in the order received.
    pub large_communities: Vec<[u32; 3]>,
}

impl PathAttrs {
    /// Path length for best-path selection (RFC 4271 section 9.1.2.2 a): an
    /// AS_SET counts as one, confederation segments count as zero (RFC 5065
    /// section 5.3).
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(v) => usize::from(!v.is_empty()),
                AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => 0,
            })
            .sum()
    }

    /// The ASes of the non-confederation segments, in order (sets flattened).
    pub fn flat_path(&self) -> impl Iterator<Item = u32> + '_ {
        self.as_path
            .iter()
            .filter_map(|s| match s {
                AsSegment::Sequence(v) | AsSegment::Set(v) => Some(v.iter().copied()),
                AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => None,
            })
            .flatten()
    }

    /// Origin AS: the last AS of the path, `None` for an empty (locally
    /// originated, iBGP) path. For a path ending in an AS_SET this is the
    /// set's last member, as pmacct reports it.
    pub fn origin_as(&self) -> Option<u32> {
        self.flat_path().last()
    }

    /// First AS of the path: the neighbour AS the traffic goes to (pmacct's
    /// `peer_as_dst`); `None` for an empty path.
    pub fn first_as(&self) -> Option<u32> {
        self.flat_path().next()
    }

    /// The path as pmacct prints it: ASes separated by `_`, sets in braces
    /// with commas, confederation segments in parentheses.
    pub fn as_path_string(&self) -> String {
        let join =
            |v: &[u32], sep: &str| v.iter().map(u32::to_string).collect::<Vec<_>>().join(sep);
        self.as_path
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => join(v, "_"),
                AsSegment::Set(v) => format!("{{{}}}", join(v, ",")),
                AsSegment::ConfedSequence(v) => format!("({})", join(v, "_")),
                AsSegment::ConfedSet(v) => format!("[{}]", join(v, ",")),
            })
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("_")
    }
}

/// Hands out one shared `Arc` per distinct value.
///
/// Values whose only holder is the interner are dropped by [`Interner::sweep`],
/// which [`Interner::intern`] runs whenever the set has doubled since the last
/// sweep, so the set stays within twice the live values (plus a floor).
#[derive(Debug)]
pub struct Interner<T> {
    set: HashSet<Arc<T>>,
    next_sweep: usize,
}

/// Below this many entries the interner does not bother sweeping.
const SWEEP_FLOOR: usize = 1024;

impl<T: Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Self {
            set: HashSet::new(),
            next_sweep: SWEEP_FLOOR,
        }
    }
}

impl<T: Hash + Eq> Interner<T> {
    /// The shared copy of `value`.
    pub fn intern(&mut self, value: T) -> Arc<T> {
        if let Some(existing) = self.set.get(&value) {
            return Arc::clone(existing);
        }
        if self.set.len() >= self.next_sweep {
            self.sweep();
        }
        let arc = Arc::new(value);
        self.set.insert(Arc::clone(&arc));
        arc
    }

    /// Drops the values nobody else holds any more.
    pub fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.next_sweep = (self.set.len() * 2).max(SWEEP_FLOOR);
    }

    /// Distinct values held (including unswept dead ones).
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segments: Vec<AsSegment>) -> PathAttrs {
        PathAttrs {
            as_path: segments,
            ..Default::default()
        }
    }

    #[test]
    fn path_length_origin_and_first_as() {
        let p = path(vec![
            AsSegment::ConfedSequence(vec![64512, 64513]),
            AsSegment::Sequence(vec![65001, 65002]),
            AsSegment::Set(vec![65010, 65011, 65012]),
        ]);
        assert_eq!(p.as_path_len(), 3);
        assert_eq!(p.first_as(), Some(65001));
        assert_eq!(p.origin_as(), Some(65012));
        assert_eq!(
            p.as_path_string(),
            "(64512_64513)_65001_65002_{65010,65011,65012}"
        );
        let empty = path(vec![]);
        assert_eq!(empty.as_path_len(), 0);
        assert_eq!(empty.origin_as(), None);
        assert_eq!(empty.first_as(), None);
        assert_eq!(empty.as_path_string(), "");
        assert_eq!(path(vec![AsSegment::Set(vec![])]).as_path_len(), 0);
    }

    #[test]
    fn interner_shares_and_sweeps() {
        let mut i = Interner::default();
        let a = i.intern(path(vec![AsSegment::Sequence(vec![1])]));
        let b = i.intern(path(vec![AsSegment::Sequence(vec![1])]));
        assert!(Arc::ptr_eq(&a, &b));
        let c = i.intern(path(vec![AsSegment::Sequence(vec![2])]));
        assert_eq!(i.len(), 2);
        drop(c);
        i.sweep();
        assert_eq!(i.len(), 1);
        drop((a, b));
        i.sweep();
        assert!(i.is_empty());
    }

    #[test]
    fn interner_sweeps_on_growth() {
        let mut i = Interner::default();
        for n in 0..10 * SWEEP_FLOOR as u32 {
            // Each value is dropped at once, so sweeps keep the set bounded.
            let _ = i.intern(path(vec![AsSegment::Sequence(vec![n])]));
        }
        assert!(i.len() <= SWEEP_FLOOR + 1, "{}", i.len());
    }
}
