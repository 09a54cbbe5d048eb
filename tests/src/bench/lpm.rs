//! Longest-prefix-match rate: the agent's RIB (what the enricher reads)
//! against a plain `prefix_trie::PrefixMap` holding the same table, one
//! thread, per family. IPv4: random addresses over a DFZ-like table (most
//! of the space is covered, as in the DFZ). IPv6: a DFZ-like table inside
//! 2000::/3, half the addresses random in 2000::/3 (mostly uncovered, as
//! for scans and unrouted space), half inside a stored prefix. The tables
//! are loaded through the RIB owner's API, 10 prefixes per UPDATE sharing
//! attributes. The RIB and the reference run alternately, several rounds,
//! so both see the same machine load; figures are the medians, per
//! CPU-second of the looking-up thread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowagent::rib::{AsSegment, PathAttrs, Rib, RibHandle, RibUpdate};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use super::{
    Rng,
    report::{Figure, median},
};

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

/// An address inside 2000::/3 (global unicast).
fn global6(rng: &mut Rng) -> u128 {
    let a = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    (a >> 3) | (1u128 << 125)
}

/// A DFZ-like IPv6 prefix inside 2000::/3: half /48, the rest /32 to /44.
fn v6(rng: &mut Rng) -> Ipv6Net {
    let b = rng.next();
    let len = match b % 100 {
        0..=49 => 48,
        50..=69 => 32,
        70..=79 => 44,
        80..=89 => 40,
        _ => 36,
    };
    Ipv6Net::new(Ipv6Addr::from(global6(rng)), len)
        .unwrap_or_default()
        .trunc()
}

/// Loads `prefixes` into the RIB and the reference, 10 per UPDATE.
fn load<P: Copy + prefix_trie::Prefix>(
    rib: &mut Rib,
    reference: &mut PrefixMap<P, u32>,
    prefixes: usize,
    mut draw: impl FnMut() -> P,
    wrap: impl Fn(P) -> IpNet,
) {
    let neighbor: IpAddr = "192.0.2.1".parse().unwrap();
    let mut i = 0u32;
    while reference.len() < prefixes {
        i += 1;
        let mut announced = Vec::with_capacity(10);
        for _ in 0..10 {
            let p = draw();
            reference.insert(p, 100_000 + i);
            announced.push((wrap(p), 0));
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
}

/// Lookups per CPU-second (millions) of the looking-up thread ("per core":
/// on a shared machine the wall clock also counts time spent waiting for a
/// CPU) of `lookup` over `addresses`, and hits.
fn rate<A: Copy>(addresses: &[A], mut lookup: impl FnMut(A) -> bool) -> (f64, usize) {
    let t = super::cpu::clock_seconds(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut hits = 0usize;
    for a in addresses {
        hits += usize::from(lookup(*a));
    }
    (
        addresses.len() as f64
            / (super::cpu::clock_seconds(libc::CLOCK_THREAD_CPUTIME_ID) - t)
            / 1e6,
        hits,
    )
}

/// Alternating rounds of the RIB and the reference; (RIB rates, reference
/// rates, hits).
fn rounds<A: Copy>(
    rounds: usize,
    addresses: &[A],
    mut rib: impl FnMut(A) -> bool,
    mut reference: impl FnMut(A) -> bool,
) -> (Vec<f64>, Vec<f64>, usize) {
    let (mut a, mut b, mut hits) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds {
        let (r, h) = rate(addresses, &mut rib);
        let (r2, h2) = rate(addresses, &mut reference);
        assert_eq!(h, h2, "the RIB and prefix-trie disagree on coverage");
        a.push(r);
        b.push(r2);
        hits = h;
    }
    (a, b, hits)
}

fn figure(
    family: &str,
    rib: Vec<f64>,
    reference: Vec<f64>,
    target: Option<f64>,
    conditions: String,
) -> Figure {
    let (value, ref_rate) = (median(&rib), median(&reference));
    Figure {
        section: SECTION,
        name: format!("{family} longest-prefix lookups per second, one core"),
        value,
        unit: "M lookups/s",
        baseline: Some(("prefix-trie PrefixMap, same table".into(), ref_rate)),
        target: Some(match target {
            Some(t) => (
                format!(">= {t} M/s and >= prefix-trie"),
                value >= t && value >= ref_rate,
            ),
            None => (">= prefix-trie".into(), value >= ref_rate),
        }),
        samples: rib,
        conditions,
    }
}

/// The figures.
pub fn run(quick: bool) -> Vec<Figure> {
    let (n4, n6) = if quick {
        (100_000, 23_000)
    } else {
        (1_000_000, 230_000)
    };
    let lookups: usize = if quick { 2_000_000 } else { 20_000_000 };
    let reps = if quick { 3 } else { 5 };
    let handle = RibHandle::default();
    let mut rib = Rib::new(handle.clone(), 5_000_000);
    let mut rng = Rng(42);
    let mut ref4: PrefixMap<Ipv4Net, u32> = PrefixMap::new();
    load(&mut rib, &mut ref4, n4, || v4(&mut rng), IpNet::V4);
    let mut ref6: PrefixMap<Ipv6Net, u32> = PrefixMap::new();
    let mut rng6 = Rng(4242);
    load(&mut rib, &mut ref6, n6, || v6(&mut rng6), IpNet::V6);

    let addresses: Vec<Ipv4Addr> = (0..lookups)
        .map(|_| Ipv4Addr::from(rng.next() as u32))
        .collect();
    let view = handle.read();
    let (rib4, ref4_rates, hits4) = rounds(
        reps,
        &addresses,
        |a| std::hint::black_box(view.bgp(IpAddr::V4(a))).is_some(),
        |a| {
            let host = Ipv4Net::new(a, 32).unwrap_or_default();
            std::hint::black_box(ref4.get_lpm(&host)).is_some()
        },
    );

    let stored: Vec<Ipv6Net> = ref6.iter().map(|(p, _)| p).collect();
    let addresses6: Vec<Ipv6Addr> = (0..lookups / 2)
        .map(|i| {
            let a = if i % 2 == 0 {
                global6(&mut rng)
            } else {
                let p = stored[rng.next() as usize % stored.len()];
                let host = u128::MAX >> p.prefix_len();
                u128::from(p.network()) | (global6(&mut rng) & host)
            };
            Ipv6Addr::from(a)
        })
        .collect();
    let (rib6, ref6_rates, hits6) = rounds(
        reps,
        &addresses6,
        |a| std::hint::black_box(view.bgp(IpAddr::V6(a))).is_some(),
        |a| {
            let host = Ipv6Net::new(a, 128).unwrap_or_default();
            std::hint::black_box(ref6.get_lpm(&host)).is_some()
        },
    );
    drop(view);

    vec![
        figure(
            "IPv4",
            rib4,
            ref4_rates,
            Some(30.0),
            format!(
                "{} IPv4 prefixes (DFZ-like lengths) loaded through the RIB, {lookups} random addresses ({hits4} covered), median of {reps} rounds alternating with prefix-trie, per CPU-second of the thread, release build",
                ref4.len()
            ),
        ),
        figure(
            "IPv6",
            rib6,
            ref6_rates,
            None,
            format!(
                "{} IPv6 prefixes (half /48, rest /32-/44, in 2000::/3) loaded through the RIB, {} addresses, half random in 2000::/3, half inside a stored prefix ({hits6} covered), median of {reps} rounds alternating with prefix-trie, per CPU-second of the thread, release build",
                ref6.len(),
                addresses6.len()
            ),
        ),
    ]
}
