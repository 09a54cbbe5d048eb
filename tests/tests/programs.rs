//! The XDP program on hand-built frames through BPF_PROG_TEST_RUN, with the
//! flow map read back directly: parser and accounting without a network.

use std::process::Command;

use aya::{
    maps::PerCpuHashMap,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use flowagent::capture::loader::{load_object, program};
use flowagent_common::{FlowKeyV4, FlowKeyV6, FlowStats, names};
use flowagent_tests::bench::kernel::{frame_v4, frame_v6};

fn run(frame: &[u8], repeat: u32) -> aya::Ebpf {
    let mut ebpf = load_object(1, 1024).expect("load");
    let xdp = program::<Xdp>(&mut ebpf, names::PROG_XDP).expect("program");
    xdp.load().expect("verifier");
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::new()
    };
    let result = xdp.test_run(opts).expect("BPF_PROG_TEST_RUN");
    assert_eq!(result.return_value, 2, "XDP_PASS");
    ebpf
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
        let mut ebpf = load_object(sampling, 1024).expect("load");
        let mut ids = Vec::new();
        let xdp = program::<Xdp>(&mut ebpf, names::PROG_XDP).expect("program");
        xdp.load().expect("verifier");
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
