//! Best-path selection among the routes for one prefix.
//!
//! The agent never forwards, so it only needs a deterministic choice that
//! matches what the router most likely chose. Rules, in order (a subset of
//! RFC 4271 section 9.1.2.2):
//!
//! 1. highest LOCAL_PREF (a route without one counts as 100, the usual default);
//! 2. shortest AS_PATH ([`PathAttrs::as_path_len`]: an AS_SET counts as one,
//!    confederation segments as zero);
//! 3. lowest ORIGIN (IGP < EGP < INCOMPLETE);
//! 4. lowest MED (missing counts as 0), compared between *all* routes
//!    ("always-compare-med"): comparing only routes from the same neighbour AS
//!    makes the order non-transitive, and the result would then depend on the
//!    order routes arrived in;
//! 5. lowest neighbour address (IPv4 before IPv6), then lowest ADD-PATH id.
//!
//! Invariant: [`compare`] is a total order, so the best of a set does not
//! depend on the order of the set.

use std::cmp::Ordering;

use super::attrs::PathAttrs;

/// LOCAL_PREF assumed for routes without one.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// One route for a prefix: its ADD-PATH id (0 without ADD-PATH) and attributes.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// ADD-PATH path identifier (RFC 7911), 0 when not negotiated.
    pub path_id: u32,
    /// The route's attributes, including the neighbour that sent it.
    pub attrs: &'a PathAttrs,
}

/// `Less` when `a` is preferred over `b`.
pub fn compare(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    let lp = |c: &Candidate<'_>| c.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
    let neighbor = |c: &Candidate<'_>| c.attrs.neighbor.map(|n| (n.is_ipv6(), n));
    lp(b)
        .cmp(&lp(a))
        .then_with(|| a.attrs.as_path_len().cmp(&b.attrs.as_path_len()))
        .then_with(|| a.attrs.origin.cmp(&b.attrs.origin))
        .then_with(|| a.attrs.med.unwrap_or(0).cmp(&b.attrs.med.unwrap_or(0)))
        .then_with(|| neighbor(a).cmp(&neighbor(b)))
        .then_with(|| a.path_id.cmp(&b.path_id))
}

/// The preferred candidate, `None` for none.
pub fn select<'a>(candidates: impl IntoIterator<Item = Candidate<'a>>) -> Option<Candidate<'a>> {
    candidates.into_iter().min_by(compare)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::attrs::{AsSegment, Origin};

    fn route(n: &str) -> PathAttrs {
        PathAttrs {
            neighbor: Some(n.parse().unwrap()),
            as_path: vec![AsSegment::Sequence(vec![65001, 65002])],
            ..Default::default()
        }
    }

    fn best(routes: &[PathAttrs]) -> usize {
        let cands: Vec<_> = routes
            .iter()
            .map(|attrs| Candidate { path_id: 0, attrs })
            .collect();
        let b = select(cands.iter().copied()).unwrap();
        routes
            .iter()
            .position(|r| std::ptr::eq(r, b.attrs))
            .unwrap()
    }

    #[test]
    fn each_rule_decides_in_order() {
        let base = route("192.0.2.2");
        // 1. LOCAL_PREF beats a shorter path; missing counts as 100.
        let hi_lp = PathAttrs {
            local_pref: Some(200),
            as_path: vec![AsSegment::Sequence(vec![1, 2, 3, 4])],
            ..route("192.0.2.9")
        };
        assert_eq!(best(&[base.clone(), hi_lp.clone()]), 1);
        let lp99 = PathAttrs {
            local_pref: Some(99),
            ..route("192.0.2.1")
        };
        assert_eq!(best(&[lp99, base.clone()]), 1);
        // 2. Shorter AS_PATH beats a better origin; a set counts as one.
        let short = PathAttrs {
            as_path: vec![
                AsSegment::Sequence(vec![65001]),
                AsSegment::Set(vec![7, 8, 9]),
            ],
            origin: Origin::Incomplete,
            ..route("192.0.2.9")
        };
        let long = PathAttrs {
            as_path: vec![AsSegment::Sequence(vec![65001, 65002, 65003])],
            ..route("192.0.2.1")
        };
        assert_eq!(best(&[long, short]), 1);
        // 3. ORIGIN beats MED.
        let egp = PathAttrs {
            origin: Origin::Egp,
            ..route("192.0.2.1")
        };
        let med = PathAttrs {
            med: Some(50),
            ..route("192.0.2.9")
        };
        assert_eq!(best(&[egp, med.clone()]), 1);
        // 4. MED beats the neighbour address; missing counts as 0.
        assert_eq!(best(&[med, route("192.0.2.9")]), 1);
        // 5. Lowest neighbour address, IPv4 before IPv6.
        assert_eq!(best(&[route("192.0.2.10"), route("192.0.2.9")]), 1);
        assert_eq!(best(&[route("::1"), route("255.255.255.255")]), 1);
    }

    #[test]
    fn add_path_id_breaks_the_last_tie_and_order_does_not_matter() {
        let r = route("192.0.2.1");
        let a = Candidate {
            path_id: 7,
            attrs: &r,
        };
        let b = Candidate {
            path_id: 3,
            attrs: &r,
        };
        assert_eq!(select([a, b]).unwrap().path_id, 3);
        assert_eq!(select([b, a]).unwrap().path_id, 3);
        assert!(select(std::iter::empty()).is_none());
    }
}
