//! The collector binary killed with SIGKILL and restarted twice while an
//! exporter streams to it: every record offered is on disk exactly once.
//! Runs `flowagent collect` (no privileges, loopback only).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use flowagent::{
    drain::{Batch, Counters},
    export::grpc::{
        client::{self, ExporterConfig},
        security::Security,
    },
    flow::{Enrichment, FlowDirection, FlowRecord},
};
use tokio_util::sync::CancellationToken;

fn record(seq: u64) -> FlowRecord {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    FlowRecord {
        src: Ipv4Addr::new(192, 0, 2, 1).into(),
        dst: Ipv4Addr::new(198, 51, 100, 2).into(),
        src_port: 1234,
        dst_port: 443,
        proto: 6,
        tos: 0,
        tcp_flags: 0x18,
        vlan: 0,
        ifindex: 2,
        direction: FlowDirection::Ingress,
        other_ifindex: 0,
        iface_in: Some("eth0".into()),
        iface_out: None,
        next_hop: None,
        src_mac: [0; 6],
        // The sequence number, to find losses and duplicates.
        packets: seq,
        bytes: 1000,
        start: t,
        end: t,
        sampling_rate: 1,
        enrichment: Enrichment::default(),
    }
}

fn collector(addr: SocketAddr, dir: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_flowagent"))
        .args(["collect", "--listen", &addr.to_string(), "--out-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "collector did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn kill9(mut child: Child) {
    // Child::kill sends SIGKILL on Unix.
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_twice_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = collector(addr, dir.path());

    let mut config = ExporterConfig::new(
        format!("http://{addr}"),
        "edge-1".into(),
        1_000_000,
        Security::default(),
    );
    config.max_batch_records = 50;
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(100);
    let cancel = CancellationToken::new();
    let (exporter, task) = client::spawn(config, cancel.clone()).unwrap();

    let (intervals, per_interval) = (150u64, 100u64);
    for i in 0..intervals {
        exporter.offer(&Batch {
            start: SystemTime::now(),
            end: SystemTime::now(),
            records: (i * per_interval..(i + 1) * per_interval)
                .map(record)
                .collect(),
            counters: Counters::default(),
            dropped_records: 0,
            sampling_rate: 1,
        });
        if i == 50 || i == 100 {
            kill9(child);
            child = collector(addr, dir.path());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while exporter.stats().queued_items > 0 {
        assert!(
            Instant::now() < deadline,
            "not all acknowledged: {:?}",
            exporter.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.unwrap();
    kill9(child);

    let mut seqs = Vec::new();
    let mut counters = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                match v["event_type"].as_str() {
                    Some("purge") => seqs.push(v["packets"].as_u64().unwrap()),
                    Some("counters") => counters += 1,
                    other => panic!("unexpected line {other:?}: {line}"),
                }
            }
        }
    }
    let total = intervals * per_interval;
    let unique: BTreeSet<_> = seqs.iter().copied().collect();
    assert_eq!(unique.len() as u64, total, "records lost");
    assert_eq!(seqs.len() as u64, total, "records duplicated");
    assert_eq!(unique.last(), Some(&(total - 1)));
    assert_eq!(counters, intervals);
    let stats = exporter.stats();
    assert_eq!((stats.acked_records, stats.dropped_records), (total, 0));
    assert!(stats.session_errors >= 2, "{stats:?}");
}
