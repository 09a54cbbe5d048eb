//! Longest-prefix-match rate: the agent's RIB (what the enricher reads)
//! against a plain `prefix_trie::PrefixMap` holding the same table, one
//! thread, random IPv4 addresses (most of the space is covered, as in the
//! DFZ). The table is loaded through the RIB owner's API, 10 prefixes per
//! UPDATE sharing attributes.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use flowagent::rib::{AsSegment, PathAttrs, Rib, RibHandle, RibUpdate};
use ipnet::{IpNet, Ipv4Net};
use prefix_trie::PrefixMap;

use super::{Rng, report::Figure};

const SECTION: &str = "RIB";

/// A DFZ-like IPv4 prefix: mostly /24, some shorter.
fn v4(rng: &mut Rng) -> Ipv4Net {
    let b = rng.next();
    let len = match b % 100 {
        0..=59 => 24,
        60..=74 => 23,
        75..=84 => 22,
        85..=94 => 16 + (b >> 8) as u8 % 6,
        _ => 8 + (b >> 8) as u8 % 8,
    };
    Ipv4Net::new(Ipv4Addr::from((b >> 32) as u32), len)
        .unwrap_or_default()
        .trunc()
}

/// The figures.
pub fn run(quick: bool) -> Vec<Figure> {
    let prefixes = if quick { 100_000 } else { 1_000_000 };
    let lookups: u32 = if quick { 2_000_000 } else { 20_000_000 };
    let neighbor: IpAddr = "192.0.2.1".parse().unwrap();
    let handle = RibHandle::default();
    let mut rib = Rib::new(handle.clone(), 5_000_000);
    let mut reference: PrefixMap<Ipv4Net, u32> = PrefixMap::new();
    let mut rng = Rng(42);
    let mut i = 0u32;
    while reference.len() < prefixes {
        i += 1;
        let announced: Vec<(IpNet, u32)> = (0..10).map(|_| (IpNet::V4(v4(&mut rng)), 0)).collect();
        for (p, _) in &announced {
            if let IpNet::V4(p) = p {
                reference.insert(*p, 100_000 + i);
            }
        }
        rib.apply(RibUpdate {
            announced,
            attrs: PathAttrs {
                as_path: vec![AsSegment::Sequence(vec![
                    65001,
                    64512 + i % 1000,
                    100_000 + i,
                ])],
                next_hop: Some(neighbor),
                ..PathAttrs::default()
            },
            ..RibUpdate::new(neighbor)
        })
        .expect("load the table");
    }
    let addresses: Vec<Ipv4Addr> = (0..lookups)
        .map(|_| Ipv4Addr::from(rng.next() as u32))
        .collect();

    let view = handle.read();
    let t = Instant::now();
    let mut rib_hits = 0usize;
    for a in &addresses {
        rib_hits += usize::from(std::hint::black_box(view.bgp(IpAddr::V4(*a))).is_some());
    }
    let rib_rate = f64::from(lookups) / t.elapsed().as_secs_f64() / 1e6;
    drop(view);

    let t = Instant::now();
    let mut ref_hits = 0usize;
    for a in &addresses {
        let host = Ipv4Net::new(*a, 32).unwrap_or_default();
        ref_hits += usize::from(std::hint::black_box(reference.get_lpm(&host)).is_some());
    }
    let ref_rate = f64::from(lookups) / t.elapsed().as_secs_f64() / 1e6;
    assert_eq!(
        rib_hits, ref_hits,
        "the RIB and prefix-trie disagree on coverage"
    );

    vec![Figure {
        section: SECTION,
        name: "IPv4 longest-prefix lookups per second, one core".into(),
        value: rib_rate,
        unit: "M lookups/s",
        baseline: Some(("prefix-trie PrefixMap, same table".into(), ref_rate)),
        target: Some((
            ">= 30 M/s and >= prefix-trie".into(),
            rib_rate >= 30.0 && rib_rate >= ref_rate,
        )),
        samples: vec![rib_rate],
        conditions: format!(
            "{} IPv4 prefixes (DFZ-like lengths) loaded through the RIB, {lookups} random addresses ({rib_hits} covered), release build",
            reference.len()
        ),
    }]
}
