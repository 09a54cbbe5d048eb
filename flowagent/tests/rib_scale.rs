//! Full-table scale check of the RIB: memory, load time, lookup rate, and
//! how long readers wait while a table is loaded. Ignored by default (it
//! wants a release build):
//!
//! `cargo test --release -p flowagent --test rib_scale -- --ignored --nocapture`
//!
//! Measured on the 2-core dev machine shared with two other builders
//! (2026-11-24, release build, ranges over several runs): 955k IPv4 + 231k
//! IPv6 best routes, 125k attribute sets, loaded in 0.6 to 1.0 s while a
//! reader takes the lock for a 1024-lookup chunk every millisecond; the
//! reader's longest wait 7 to 11 ms; heap 83.7 MiB (74 B per route, all
//! paths and attributes included); 8 to 15 M lookups/s on one core;
//! enrichment 0.8 to 1.7 M records/s (two lookups and an AS_PATH copy
//! each); the same table from a second neighbour +134 MiB (every prefix then
//! has a two-path list), back to 83.7 MiB when it goes; dropping a table
//! 0.9 to 1.2 s. With a reader spinning on the lock without pause a load
//! takes 10 to 40 times longer: every write section waits for a read one.
//! With IPv4 in the flat 16-8-8 table (`rib::flat4`, one run, same machine,
//! 2026-11-24 23:22): load 1.31 s, longest reader wait 7.75 ms, heap
//! 94.9 MiB (84 B per route), 15.4 M lookups/s, enrichment 2.0 M records/s,
//! second neighbour +134 MiB, dropping a table 1.60 s.
//! With IPv6 in `rib::flat6` (per-length hash probes) and batched lookups
//! in the enricher (one run, same machine, 2026-11-25 01:30): load 1.49 s,
//! longest reader wait 11.9 ms (6.8 ms in the run before; the IPv6 hash
//! doubling to 131072 buckets takes 4.6 ms under the lock), heap 89.8 MiB
//! (79 B per route), 15.5 M single lookups/s, enrichment 3.7 M records/s,
//! second neighbour +134 MiB, dropping a table 1.62 s.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

mod common;

use common::Rng;
use flowagent::rib::{AsSegment, PathAttrs, Rib, RibHandle, RibUpdate};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Prefix lengths roughly as in the DFZ: most IPv4 are /24, most IPv6 /48.
fn v4(rng: &mut Rng) -> IpNet {
    let b = rng.next();
    let len = match b % 100 {
        0..=59 => 24,
        60..=74 => 23,
        75..=84 => 22,
        85..=94 => 16 + (b >> 8) as u8 % 6,
        _ => 8 + (b >> 8) as u8 % 8,
    };
    IpNet::V4(
        Ipv4Net::new(Ipv4Addr::from((b >> 32) as u32), len)
            .unwrap()
            .trunc(),
    )
}

fn v6(rng: &mut Rng) -> IpNet {
    let b = rng.next();
    let len = match b % 100 {
        0..=59 => 48,
        60..=79 => 32 + (b >> 8) as u8 % 16,
        _ => 29 + (b >> 8) as u8 % 3,
    };
    let addr = (0x2000u128 << 112) | (u128::from(rng.next()) << 48);
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc())
}

fn record(src: u32, dst: u32) -> flowagent::flow::FlowRecord {
    flowagent::flow::FlowRecord {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        src_port: 0,
        dst_port: 0,
        proto: 6,
        tos: 0,
        tcp_flags: 0,
        vlan: 0,
        ifindex: 1,
        direction: flowagent::flow::FlowDirection::Ingress,
        other_ifindex: 0,
        iface_in: None,
        iface_out: None,
        next_hop: None,
        src_mac: [0; 6],
        packets: 1,
        bytes: 1,
        start: std::time::SystemTime::UNIX_EPOCH,
        end: std::time::SystemTime::UNIX_EPOCH,
        sampling_rate: 1,
        enrichment: Default::default(),
    }
}

#[test]
#[ignore = "full-table scale run; use --release"]
fn full_table_memory_and_lookup_rate() {
    let mut rng = Rng(42);
    let base = LIVE.load(Ordering::Relaxed);
    let handle = RibHandle::default();
    let mut rib = Rib::new(handle.clone(), 5_000_000);
    let neighbor: IpAddr = "192.0.2.1".parse().unwrap();

    // A reader doing 1024-lookup chunks the whole time, measuring its
    // longest wait for the read lock.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let reader = {
        let (h, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(7);
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let view = h.read();
                worst = worst.max(t.elapsed());
                for _ in 0..1024 {
                    std::hint::black_box(view.bgp(IpAddr::V4(Ipv4Addr::from(rng.next() as u32))));
                }
                drop(view);
                // A busy enricher: a 1024-record chunk every millisecond.
                std::thread::sleep(Duration::from_millis(1));
            }
            worst
        })
    };

    // 1M IPv4 + 250k IPv6 in UPDATEs of 10 prefixes sharing attributes, as
    // a full table arrives (about 125k distinct attribute sets).
    let t = Instant::now();
    let mut sent = (0usize, 0usize);
    let mut i = 0u32;
    while sent.0 < 1_000_000 || sent.1 < 250_000 {
        let ipv6 = sent.0 >= 1_000_000;
        let announced: Vec<_> = (0..10)
            .map(|_| (if ipv6 { v6(&mut rng) } else { v4(&mut rng) }, 0))
            .collect();
        if ipv6 {
            sent.1 += 10;
        } else {
            sent.0 += 10;
        }
        i += 1;
        rib.apply(RibUpdate {
            announced,
            attrs: PathAttrs {
                as_path: vec![AsSegment::Sequence(vec![
                    65001,
                    64512 + i % 1000,
                    100_000 + i,
                ])],
                next_hop: Some(neighbor),
                communities: vec![(65001 << 16) | (i % 50)],
                ..PathAttrs::default()
            },
            ..RibUpdate::new(neighbor)
        })
        .unwrap();
    }
    let load = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let worst_wait = reader.join().unwrap();
    let (n4, n6) = handle.read().bgp_len();
    let bytes = LIVE.load(Ordering::Relaxed) - base;

    // Lookup rate, one thread, random addresses (most v4 space is covered).
    let view = handle.read();
    let mut hits = 0usize;
    let n = 20_000_000u32;
    let mut rng = Rng(99);
    let t = Instant::now();
    for _ in 0..n {
        let a = IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
        hits += usize::from(view.bgp(a).is_some());
    }
    let rate = f64::from(n) / t.elapsed().as_secs_f64();
    drop(view);

    println!(
        "loaded {n4} IPv4 + {n6} IPv6 best routes ({} attribute sets) in {:.2?}; heap {:.1} MiB ({:.0} B/route, all included); \
         longest reader wait during load {worst_wait:.2?}; {:.1} M lookups/s/core ({hits} hits)",
        rib.attr_sets(),
        load,
        bytes as f64 / 1048576.0,
        bytes as f64 / (n4 + n6) as f64,
        rate / 1e6,
    );
    assert!(n4 > 900_000 && n6 > 200_000);
    // Enrichment rate: 1M records, two lookups each, AS_PATH copied.
    let enricher = flowagent::enrich::Enricher::new(
        handle.clone(),
        65000,
        flowagent::enrich::BgpAttrs {
            as_path: true,
            communities: false,
        },
        Default::default(),
    );
    let mut rng = Rng(5);
    let mut records: Vec<_> = (0..1_000_000)
        .map(|_| record(rng.next() as u32, rng.next() as u32))
        .collect();
    let t = Instant::now();
    enricher.enrich(&mut records);
    let took = t.elapsed();
    let with_as = records.iter().filter(|r| r.enrichment.as_dst != 0).count();
    println!(
        "enriched 1M records in {took:.2?} ({:.1} M records/s, {with_as} with as_dst)",
        1.0 / took.as_secs_f64()
    );

    drop(records);

    // A second neighbour with the same table: every prefix gets a path list.
    let second: IpAddr = "192.0.2.2".parse().unwrap();
    let mut rng = Rng(42);
    let t = Instant::now();
    let mut sent = (0usize, 0usize);
    while sent.0 < 1_000_000 || sent.1 < 250_000 {
        let ipv6 = sent.0 >= 1_000_000;
        let announced: Vec<_> = (0..10)
            .map(|_| (if ipv6 { v6(&mut rng) } else { v4(&mut rng) }, 0))
            .collect();
        if ipv6 {
            sent.1 += 10;
        } else {
            sent.0 += 10;
        }
        rib.apply(RibUpdate {
            announced,
            attrs: PathAttrs {
                as_path: vec![AsSegment::Sequence(vec![65002, 64999])],
                next_hop: Some(second),
                ..PathAttrs::default()
            },
            ..RibUpdate::new(second)
        })
        .unwrap();
    }
    println!(
        "second neighbour's full table in {:.2?}; heap now {:.1} MiB",
        t.elapsed(),
        (LIVE.load(Ordering::Relaxed) - base) as f64 / 1048576.0
    );
    rib.drop_neighbor(second);
    println!(
        "second neighbour dropped; heap {:.1} MiB",
        (LIVE.load(Ordering::Relaxed) - base) as f64 / 1048576.0
    );

    // Loss of the session: everything goes, in chunks.
    let t = Instant::now();
    rib.drop_neighbor(neighbor);
    println!("dropped the neighbour's table in {:.2?}", t.elapsed());
    assert_eq!(handle.read().bgp_len(), (0, 0));
}
