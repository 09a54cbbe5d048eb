//! Longest-prefix-match rate: the agent's RIB (what the enricher reads)
//! against a plain `prefix_trie::PrefixMap` holding the same table, one
//! thread, per family. The headline is the batched lookup the enricher
//! uses (`RibView::bgp_batch`, 2048 addresses per call); the rate one
//! address per call (`RibView::bgp`) is reported beside it. IPv4: random
//! addresses over a DFZ-like table (most of the space is covered, as in
//! the DFZ). IPv6: a DFZ-like table inside 2000::/3, half the addresses
//! random in 2000::/3 (mostly uncovered, as for scans and unrouted space),
//! half inside a stored prefix. The tables are loaded through the RIB
//! owner's API, 10 prefixes per UPDATE sharing attributes. The three ways
//! run in turn, several rounds, so all see the same machine load; figures
//! are the medians, per CPU-second of the looking-up thread.

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

/// Addresses per batched call: what the enricher hands the RIB per
/// read-lock section (source and destination of 1024 records).
const BATCH: usize = 2048;

/// Lookups per CPU-second (millions) of the looking-up thread ("per core":
/// on a shared machine the wall clock also counts time spent waiting for a
/// CPU) of `lookup` over `addresses` in calls of [`BATCH`] addresses (it
/// returns how many were covered), and hits.
fn rate<A>(addresses: &[A], mut lookup: impl FnMut(&[A]) -> usize) -> (f64, usize) {
    let t = super::cpu::clock_seconds(libc::CLOCK_THREAD_CPUTIME_ID);
    let hits = addresses.chunks(BATCH).map(&mut lookup).sum();
    (
        addresses.len() as f64
            / (super::cpu::clock_seconds(libc::CLOCK_THREAD_CPUTIME_ID) - t)
            / 1e6,
        hits,
    )
}

/// One way of looking up a batch of addresses: returns how many are covered.
type Way<'a, A> = dyn FnMut(&[A]) -> usize + 'a;

/// The rates of each way of looking up, one `Vec` per way, in order.
type Rates = Vec<Vec<f64>>;

/// Alternating rounds of each way of looking up `addresses` (the batched
/// RIB, the RIB one address at a time, the reference), so all see the same
/// machine load; (rates per way, hits). Every way must cover the same
/// addresses.
fn rounds<A>(rounds: usize, addresses: &[A], ways: &mut [&mut Way<'_, A>]) -> (Rates, usize) {
    let mut rates = vec![Vec::new(); ways.len()];
    let mut hits = None;
    for _ in 0..rounds {
        for (way, r) in ways.iter_mut().zip(&mut rates) {
            let (rate, h) = rate(addresses, way);
            assert_eq!(
                *hits.get_or_insert(h),
                h,
                "the RIB's batched and single lookups and prefix-trie disagree on coverage"
            );
            r.push(rate);
        }
    }
    (rates, hits.unwrap_or(0))
}

/// The headline figure (batched lookups, what the enricher does) and the
/// one-address-at-a-time figure beside it, both against prefix-trie.
fn figures(family: &str, mut rates: Rates, target: Option<f64>, conditions: &str) -> [Figure; 2] {
    let reference = rates.pop().unwrap_or_default();
    let single = rates.pop().unwrap_or_default();
    let batched = rates.pop().unwrap_or_default();
    let ref_rate = median(&reference);
    let baseline = Some(("prefix-trie PrefixMap, same table".to_string(), ref_rate));
    let value = median(&batched);
    let headline = Figure {
        section: SECTION,
        name: format!("{family} longest-prefix lookups per second, one core"),
        value,
        unit: "M lookups/s",
        baseline: baseline.clone(),
        target: Some(match target {
            Some(t) => (
                format!(">= {t} M/s and >= prefix-trie"),
                value >= t && value >= ref_rate,
            ),
            None => (">= prefix-trie".into(), value >= ref_rate),
        }),
        samples: batched,
        conditions: format!(
            "batched as the enricher looks up ({BATCH} addresses per call, RibView::bgp_batch); {conditions}"
        ),
    };
    let one = Figure {
        section: SECTION,
        name: format!("{family} longest-prefix lookups per second, one core, one address per call"),
        value: median(&single),
        unit: "M lookups/s",
        baseline,
        target: None,
        samples: single,
        conditions: format!("RibView::bgp, one address per call; {conditions}"),
    };
    [headline, one]
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

    let addresses: Vec<IpAddr> = (0..lookups)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
        .collect();
    let view = handle.read();
    let mut out = vec![None; BATCH];
    let batched = |addrs: &[IpAddr], out: &mut Vec<_>| {
        let out = &mut out[..addrs.len()];
        view.bgp_batch(addrs, out);
        std::hint::black_box(out)
            .iter()
            .filter(|o| o.is_some())
            .count()
    };
    let mut single = |addrs: &[IpAddr]| {
        addrs
            .iter()
            .filter(|a| std::hint::black_box(view.bgp(**a)).is_some())
            .count()
    };
    let (rates4, hits4) = rounds(
        reps,
        &addresses,
        &mut [&mut |a| batched(a, &mut out), &mut single, &mut |addrs| {
            addrs
                .iter()
                .filter(|a| match a {
                    IpAddr::V4(a) => {
                        let host = Ipv4Net::new(*a, 32).unwrap_or_default();
                        std::hint::black_box(ref4.get_lpm(&host)).is_some()
                    }
                    IpAddr::V6(_) => false,
                })
                .count()
        }],
    );

    let stored: Vec<Ipv6Net> = ref6.iter().map(|(p, _)| p).collect();
    let addresses6: Vec<IpAddr> = (0..lookups / 2)
        .map(|i| {
            let a = if i % 2 == 0 {
                global6(&mut rng)
            } else {
                let p = stored[rng.next() as usize % stored.len()];
                let host = u128::MAX >> p.prefix_len();
                u128::from(p.network()) | (global6(&mut rng) & host)
            };
            IpAddr::V6(Ipv6Addr::from(a))
        })
        .collect();
    let (rates6, hits6) = rounds(
        reps,
        &addresses6,
        &mut [&mut |a| batched(a, &mut out), &mut single, &mut |addrs| {
            addrs
                .iter()
                .filter(|a| match a {
                    IpAddr::V6(a) => {
                        let host = Ipv6Net::new(*a, 128).unwrap_or_default();
                        std::hint::black_box(ref6.get_lpm(&host)).is_some()
                    }
                    IpAddr::V4(_) => false,
                })
                .count()
        }],
    );
    drop(view);

    let mut all = Vec::new();
    all.extend(figures(
        "IPv4",
        rates4,
        Some(30.0),
        &format!(
            "{} IPv4 prefixes (DFZ-like lengths) loaded through the RIB, {lookups} random addresses ({hits4} covered), median of {reps} rounds alternating with prefix-trie, per CPU-second of the thread, release build",
            ref4.len()
        ),
    ));
    all.extend(figures(
        "IPv6",
        rates6,
        None,
        &format!(
            "{} IPv6 prefixes (half /48, rest /32-/44, in 2000::/3) loaded through the RIB, {} addresses, half random in 2000::/3, half inside a stored prefix ({hits6} covered), median of {reps} rounds alternating with prefix-trie, per CPU-second of the thread, release build",
            ref6.len(),
            addresses6.len()
        ),
    ));
    all
}
