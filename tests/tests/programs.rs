//! The XDP program on hand-built frames through BPF_PROG_TEST_RUN: parser
//! and accounting without a network. The hash maps are read back directly
//! (with the flow cache off), the caches through the agent's drain.

use std::{process::Command, time::Duration};

use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use flowagent::{
    capture::{
        IfNames,
        loader::{Sizes, load_object, program},
    },
    drain::{Drainer, Maps},
    flow::FlowRecord,
};
use flowagent_common::{Counter, FlowKeyV4, FlowKeyV6, FlowStats, names};
use flowagent_tests::bench::kernel::{frame_v4, frame_v6};

/// The object with maps of 1024 flows and caches of `cache` entries per
/// CPU (0: none), its XDP program loaded.
fn loaded(sampling: u32, cache: u32) -> Ebpf {
    loaded_with(sampling, 1024, cache)
}

/// The object with maps of `max_flows` flows and caches of `cache` entries
/// per CPU (0: none), its XDP program loaded.
fn loaded_with(sampling: u32, max_flows: u32, cache: u32) -> Ebpf {
    let sizes = Sizes::new(max_flows, Some(cache)).expect("possible CPUs");
    let mut ebpf = load_object(sampling, &sizes).expect("load");
    program::<Xdp>(&mut ebpf, names::PROG_XDP)
        .expect("program")
        .load()
        .expect("verifier");
    ebpf
}

/// Runs the XDP program `repeat` times on `frame`, on the CPU this thread
/// runs on.
fn test_run(ebpf: &mut Ebpf, frame: &[u8], repeat: u32) {
    let xdp = program::<Xdp>(ebpf, names::PROG_XDP).expect("program");
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::new()
    };
    let result = xdp.test_run(opts).expect("BPF_PROG_TEST_RUN");
    assert_eq!(result.return_value, 2, "XDP_PASS");
}

/// The hash path alone: no flow cache.
fn run(frame: &[u8], repeat: u32) -> Ebpf {
    let mut ebpf = loaded(1, 0);
    test_run(&mut ebpf, frame, repeat);
    ebpf
}

/// Moves this thread to `cpu`, so that the next test runs count there.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity get valid pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The agent's drainer of `ebpf`'s maps and caches.
fn drainer(ebpf: &mut Ebpf) -> Drainer {
    let maps = Maps::take(ebpf).expect("maps");
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    Drainer::new(maps, IfNames::default(), 1, Duration::from_secs(10), tx).expect("drainer")
}

/// One drain of `ebpf`'s maps and caches by the agent's drainer: source
/// address, packets and bytes of each record, sorted by source address.
fn drained(ebpf: &mut Ebpf) -> Vec<(String, u64, u64)> {
    let batch = drainer(ebpf).drain().expect("drain");
    let mut records: Vec<&FlowRecord> = batch.records.iter().collect();
    records.sort_by_key(|r| r.src);
    records
        .iter()
        .map(|r| (r.src.to_string(), r.packets, r.bytes))
        .collect()
}

/// The IPv4 test frame with source address 10.50.0.`host`.
fn frame_from(host: u8) -> Vec<u8> {
    let mut frame = frame_v4();
    frame[14 + 15] = host;
    // The IPv4 header checksum is not checked on the way into XDP.
    frame
}

#[test]
fn cached_flows_drain_exactly() {
    let mut ebpf = loaded(1, 1024);
    test_run(&mut ebpf, &frame_v4(), 1000);
    test_run(&mut ebpf, &frame_v6(), 700);
    // The hash maps were not used.
    for name in [names::FLOWS_V4[0], names::FLOWS_V4[1]] {
        let map: PerCpuHashMap<_, FlowKeyV4, FlowStats> =
            PerCpuHashMap::try_from(ebpf.map(name).unwrap()).unwrap();
        assert_eq!(map.keys().count(), 0, "{name}");
    }
    assert_eq!(
        drained(&mut ebpf),
        [
            ("10.50.0.1".to_owned(), 1000, 1000 * 46),
            ("2001:db8:50::1".to_owned(), 700, 700 * 50)
        ]
    );
}

/// With one cache entry per CPU: a flow that finds the entry taken goes to
/// the hash map, and a flow counted in one CPU's cache and another CPU's
/// hash map copy still drains as one record with every packet.
#[test]
fn flows_that_miss_the_cache_are_merged_into_one_record() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "this test needs 2 CPUs, the machine has {cpus}");
    let mut ebpf = loaded(1, 1);
    pin(0);
    // CPU 0: flow 2 takes the cache entry, flow 1 goes to the hash map.
    test_run(&mut ebpf, &frame_from(2), 30);
    test_run(&mut ebpf, &frame_from(1), 100);
    pin(1);
    // CPU 1: flow 1 takes this CPU's entry, flow 3 goes to the hash map.
    test_run(&mut ebpf, &frame_from(1), 11);
    test_run(&mut ebpf, &frame_from(3), 5);
    assert_eq!(
        drained(&mut ebpf),
        [
            ("10.50.0.1".to_owned(), 111, 111 * 46),
            ("10.50.0.2".to_owned(), 30, 30 * 46),
            ("10.50.0.3".to_owned(), 5, 5 * 46),
        ]
    );
}

/// The drain's flip races with programs running on another CPU all the
/// time: every packet must still be counted exactly once, and some flips
/// must have found a run in progress and waited for it (drain/slots.rs),
/// so the test does exercise the handshake.
#[test]
fn drains_racing_with_running_programs_lose_and_double_nothing() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "this test needs 2 CPUs, the machine has {cpus}");
    let mut ebpf = loaded(1, 1024);
    let mut drainer = drainer(&mut ebpf);
    let (calls, repeat) = (200u64, 1000u32);
    let sender = std::thread::spawn(move || {
        pin(0);
        for i in 0..calls {
            // Two flows, so the cache holds more than one entry.
            test_run(&mut ebpf, &frame_from(1 + (i % 2) as u8), repeat);
        }
        ebpf
    });
    pin(1);
    let packets = |d: &mut Drainer| -> u64 {
        let batch = d.drain().expect("drain");
        batch.records.iter().map(|r| r.packets).sum()
    };
    let (mut total, mut drains) = (0, 0);
    while !sender.is_finished() {
        total += packets(&mut drainer);
        drains += 1;
    }
    let _ebpf = sender.join().expect("sender");
    total += packets(&mut drainer);
    assert_eq!(total, calls * u64::from(repeat), "after {drains} drains");
    assert!(drains >= 20, "only {drains} drains raced with the programs");
    assert!(
        drainer.waited_for_runs() > 0,
        "no flip of {drains} found a program run in progress"
    );
}

/// A full IPv4 map sends new IPv4 flows to the overflow counters, but not
/// IPv6 ones (each family has its own map and its own map-full mark), and
/// once drained the slot takes new flows again.
#[test]
fn a_full_map_overflows_until_it_is_drained() {
    let mut ebpf = loaded_with(1, 16, 0);
    let mut drainer = drainer(&mut ebpf);
    let send = |ebpf: &mut Ebpf, hosts: std::ops::RangeInclusive<u8>| {
        for host in hosts {
            test_run(ebpf, &frame_from(host), 1);
        }
    };
    // Slot 0: 20 IPv4 flows into 16 entries, then an IPv6 flow.
    send(&mut ebpf, 1..=20);
    test_run(&mut ebpf, &frame_v6(), 5);
    let batch = drainer.drain().expect("drain");
    let v6 = batch.records.iter().filter(|r| r.src.is_ipv6()).count();
    assert_eq!((batch.records.len(), v6), (17, 1));
    assert_eq!(batch.counters.get(Counter::OverflowPackets), 4);
    // Slot 1, then slot 0 again: it was emptied, so it takes new flows.
    let batch = drainer.drain().expect("drain");
    assert_eq!(batch.records.len(), 0);
    send(&mut ebpf, 21..=23);
    let batch = drainer.drain().expect("drain");
    assert_eq!(batch.records.len(), 3);
    assert_eq!(batch.counters.get(Counter::OverflowPackets), 0);
}

#[test]
fn repeated_ipv4_frame_is_one_flow_with_every_packet() {
    let ebpf = run(&frame_v4(), 1000);
    let map: PerCpuHashMap<_, FlowKeyV4, FlowStats> =
        PerCpuHashMap::try_from(ebpf.map(names::FLOWS_V4[0]).unwrap()).unwrap();
    let entries: Vec<_> = map.iter().map(|e| e.unwrap()).collect();
    assert_eq!(entries.len(), 1);
    let (key, values) = &entries[0];
    assert_eq!(
        (key.src, key.dst, key.src_port, key.dst_port, key.proto),
        ([10, 50, 0, 1], [10, 50, 0, 2], 1000, 2000, 17)
    );
    assert_eq!(key.ifindex, 1, "BPF_PROG_TEST_RUN runs XDP on lo");
    let packets: u64 = values.iter().map(|v| v.packets).sum();
    let bytes: u64 = values.iter().map(|v| v.bytes).sum();
    assert_eq!((packets, bytes), (1000, 1000 * 46));
}

#[test]
fn repeated_ipv6_frame_is_one_flow_with_every_packet() {
    let ebpf = run(&frame_v6(), 1000);
    let map: PerCpuHashMap<_, FlowKeyV6, FlowStats> =
        PerCpuHashMap::try_from(ebpf.map(names::FLOWS_V6[0]).unwrap()).unwrap();
    let entries: Vec<_> = map.iter().map(|e| e.unwrap()).collect();
    assert_eq!(entries.len(), 1);
    let (key, values) = &entries[0];
    assert_eq!((key.src_port, key.dst_port, key.proto), (1000, 2000, 17));
    let packets: u64 = values.iter().map(|v| v.packets).sum();
    let bytes: u64 = values.iter().map(|v| v.bytes).sum();
    assert_eq!((packets, bytes), (1000, 1000 * 50));
}

/// The verifier's rewrite of program `id`, as `bpftool prog dump xlated` prints it.
fn xlated(id: u32) -> String {
    let out = Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &id.to_string()])
        .output()
        .expect("run bpftool (Debian package bpftool)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What keeps the per-packet cost down is that the verifier inlines every
/// lookup and helper on the hot path (a helper call costs ~15 ns on the
/// bench machines): the flow map lookup must appear as a direct call of
/// `__htab_map_lookup_elem`, never through the `bpf_map_lookup_elem` helper
/// (which happens when LLVM merges the two slots' lookups into one call,
/// see flowagent-ebpf/src/account.rs), and the sampling decision must not
/// call `bpf_get_smp_processor_id`. Checked for every flow program, with and
/// without sampling (sampling adds the random-number path).
#[test]
fn hot_path_lookups_and_helpers_are_inlined() {
    for sampling in [1, 100] {
        let mut ebpf = loaded(sampling, 1024);
        let mut ids = Vec::new();
        let xdp = program::<Xdp>(&mut ebpf, names::PROG_XDP).expect("program");
        ids.push((names::PROG_XDP, xdp.info().unwrap().id()));
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let tc = program::<SchedClassifier>(&mut ebpf, name).expect("program");
            tc.load().expect("verifier");
            ids.push((name, tc.info().unwrap().id()));
        }
        for (name, id) in ids {
            let text = xlated(id);
            assert!(
                text.contains("call __htab_map_lookup_elem"),
                "{name}, 1:{sampling}: flow map lookup not inlined:\n{text}"
            );
            for helper in ["call bpf_map_lookup_elem", "call bpf_get_smp_processor_id"] {
                assert!(
                    !text.contains(helper),
                    "{name}, 1:{sampling}: `{helper}` left in the program:\n{text}"
                );
            }
        }
    }
}
