//! gRPC: records per second and CPU per record from an exporter (the agent's
//! own, fed drained batches) to a real `flowagent collect` process on
//! loopback, which writes and fsyncs every batch before acknowledging it;
//! and the bytes each record costs on the wire.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use flowagent::{
    drain::{Batch, Counters},
    export::grpc::{
        client::{self, ExporterConfig},
        convert,
        security::Security,
    },
    flow::{Enrichment, FlowDirection, FlowRecord},
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::report::Figure;
use crate::agent::TempDir;

const SECTION: &str = "gRPC export";

/// A drained-looking record, distinct per `n`.
pub(super) fn record(n: u64) -> FlowRecord {
    let t = SystemTime::now();
    FlowRecord {
        src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n as u32)),
        dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        src_port: (n % 60_000) as u16,
        dst_port: 443,
        proto: 6,
        tos: 0,
        tcp_flags: 0x18,
        vlan: 0,
        ifindex: 2,
        direction: FlowDirection::Ingress,
        other_ifindex: 3,
        iface_in: Some("eth0".into()),
        iface_out: Some("eth1".into()),
        next_hop: None,
        src_mac: [2, 0, 0, 0, 0, 1],
        packets: 10,
        bytes: 6_000,
        start: t,
        end: t,
        sampling_rate: 1,
        enrichment: Enrichment::default(),
    }
}

fn lo_bytes() -> u64 {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .and_then(|l| l.split_whitespace().next().and_then(|b| b.parse().ok()))
        .unwrap_or(0)
}

/// The figures.
pub fn run(quick: bool) -> Vec<Figure> {
    let total: u64 = if quick { 200_000 } else { 2_000_000 };
    let per_batch: u64 = 20_000;
    let dir = TempDir::new("collect");
    let port = 50_600 + (std::process::id() % 300) as u16;
    let mut collector: Child = Command::new(crate::agent::bin())
        .args(["collect", "--out-dir"])
        .arg(&dir.0)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flowagent collect");
    std::thread::sleep(Duration::from_millis(500));
    let batches: Vec<Batch> = (0..total / per_batch)
        .map(|b| Batch {
            start: SystemTime::now(),
            end: SystemTime::now(),
            records: (b * per_batch..(b + 1) * per_batch).map(record).collect(),
            counters: Counters::default(),
            dropped_records: 0,
            sampling_rate: 1,
        })
        .collect();
    let first = batches[0].records.iter().next().expect("a record");
    let one = convert::to_proto(first, "bench-agent").encoded_len();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let me = std::process::id();
    let (wall, agent_cpu, collector_cpu, wire) = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let config = ExporterConfig::new(
            format!("http://127.0.0.1:{port}"),
            "bench-agent".into(),
            total as usize * 2,
            Security::default(),
        );
        let (handle, task) = client::spawn(config, cancel.clone()).expect("exporter");
        let (c0, k0, b0, t0) = (
            super::cpu::task_seconds(me),
            super::cpu::task_seconds(collector.id()),
            lo_bytes(),
            Instant::now(),
        );
        for b in &batches {
            handle.offer(b);
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while handle.stats().acked_records < total {
            assert!(
                Instant::now() < deadline,
                "export stalled: {:?}",
                handle.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let out = (
            t0.elapsed().as_secs_f64(),
            super::cpu::task_seconds(me) - c0,
            super::cpu::task_seconds(collector.id()) - k0,
            lo_bytes() - b0,
        );
        cancel.cancel();
        let _ = task.await;
        out
    });
    let _ = collector.kill();
    let _ = collector.wait();
    let rate = total as f64 / wall / 1e6;
    let agent_us = agent_cpu / total as f64 * 1e6;
    let per_core = total as f64 / agent_cpu / 1e6;
    let collector_per_core = total as f64 / collector_cpu / 1e6;
    let conditions = format!(
        "{total} records in batches of {per_batch} drained records, exporter (1 tokio worker) to `flowagent collect` on loopback, which fsyncs hourly JSON lines before acknowledging"
    );
    vec![
        Figure {
            section: SECTION,
            name: "records per second, agent to collector".into(),
            value: rate,
            unit: "M records/s",
            baseline: None,
            target: None,
            samples: vec![rate],
            conditions: format!(
                "{conditions}; wall-clock rate of the whole pipe, agent and collector sharing the machine's cores"
            ),
        },
        Figure {
            section: SECTION,
            name: "records exported per agent CPU-second (per core)".into(),
            value: per_core,
            unit: "M records/s",
            baseline: Some((
                "collector: records written per its CPU-second".into(),
                collector_per_core,
            )),
            target: Some((">= 1 M/s per core".into(), per_core >= 1.0)),
            samples: vec![per_core],
            conditions: conditions.clone(),
        },
        Figure {
            section: SECTION,
            name: "agent CPU per exported record".into(),
            value: agent_us,
            unit: "µs",
            baseline: Some((
                "collector CPU per record".into(),
                collector_cpu / total as f64 * 1e6,
            )),
            target: Some(("< 1 µs".into(), agent_us < 1.0)),
            samples: vec![agent_us],
            conditions: conditions.clone(),
        },
        Figure {
            section: SECTION,
            name: "bytes on the wire per record (loopback, both directions)".into(),
            value: wire as f64 / total as f64,
            unit: "B",
            baseline: Some(("protobuf FlowRecord alone".into(), one as f64)),
            target: None,
            samples: vec![wire as f64 / total as f64],
            conditions,
        },
    ]
}
