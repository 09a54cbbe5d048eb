//! A Python grpcio client, with stubs generated from the .proto by
//! grpcio-tools, subscribes to the agent's FlowStream and gets exactly the
//! records its filter selects.
//!
//! The test installs grpcio and grpcio-tools (pinned) from PyPI into a
//! virtualenv under the target directory, once; set
//! `FLOWAGENT_SKIP_PYTHON=1` to skip it where PyPI cannot be reached.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use flowagent::{
    collect::{CollectConfig, Collector},
    drain::{Batch, Counters},
    export::grpc::{
        agent::{AgentGrpc, GrpcConfig},
        security::Security,
    },
    flow::{Enrichment, FlowDirection, FlowRecord},
};
use tokio_util::sync::CancellationToken;

const GRPCIO: &str = "grpcio==1.85.3";
const GRPCIO_TOOLS: &str = "grpcio-tools==1.85.1";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A virtualenv with grpcio and grpcio-tools; returns its python.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-grpc");
    let py = venv.join("bin/python");
    let ready = venv.join(format!("{GRPCIO}-{GRPCIO_TOOLS}.ok"));
    if !ready.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&py).args(["-m", "pip", "install", "--quiet", GRPCIO, GRPCIO_TOOLS]));
        std::fs::write(&ready, "").unwrap();
    }
    py
}

fn record(i: u64) -> FlowRecord {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    FlowRecord {
        src: Ipv4Addr::new(if i.is_multiple_of(3) { 10 } else { 192 }, 0, 0, 1).into(),
        dst: "2001:db8::1".parse().unwrap(),
        src_port: 1234,
        dst_port: 443,
        proto: if i.is_multiple_of(2) { 6 } else { 17 },
        tos: 0,
        tcp_flags: 0x18,
        vlan: 0,
        ifindex: 2,
        direction: FlowDirection::Egress,
        other_ifindex: 3,
        iface_in: Some("eth1".into()),
        iface_out: Some("eth0".into()),
        next_hop: None,
        src_mac: [0; 6],
        packets: i,
        bytes: if i.is_multiple_of(5) { 1500 } else { 500 },
        start: t,
        end: t,
        sampling_rate: 1,
        enrichment: Enrichment {
            as_path: vec![64_500, 64_501],
            large_communities: vec![[64_500, 1, 2]],
            ..Enrichment::default()
        },
    }
}

/// The venv's python and a directory of stubs generated from the .proto;
/// `None` when skipped.
async fn python_with_stubs() -> Option<(PathBuf, tempfile::TempDir)> {
    if std::env::var_os("FLOWAGENT_SKIP_PYTHON").is_some() {
        eprintln!("FLOWAGENT_SKIP_PYTHON set: skipped");
        return None;
    }
    // Both tests may install at once: one at a time.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let py = tokio::task::spawn_blocking(|| {
        let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        python()
    })
    .await
    .unwrap();
    let stubs = tempfile::tempdir().unwrap();
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    run(Command::new(&py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto_root)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(proto_root.join("flowagent/v1/flow.proto")));
    Some((py, stubs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_garbage_export_is_refused_and_a_valid_one_acknowledged() {
    let Some((py, stubs)) = python_with_stubs().await else {
        return;
    };
    let out_dir = tempfile::tempdir().unwrap();
    let collector = Collector::bind(CollectConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        out_dir: out_dir.path().to_owned(),
        security: Security::default(),
    })
    .await
    .unwrap();
    let addr = collector.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(collector.run(cancel.clone()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/export.py");
    let mut cmd = Command::new(&py);
    cmd.arg(script).arg(stubs.path()).arg(addr.to_string());
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"garbage": "INTERNAL", "acks": [[1, false]]})
    );
    cancel.cancel();
    server.await.unwrap().unwrap();
    let files: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"agent_id\":\"py\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_subscribes() {
    let Some((py, stubs)) = python_with_stubs().await else {
        return;
    };

    let cancel = CancellationToken::new();
    let config = GrpcConfig {
        collectors: vec![],
        export_buffer: 10,
        agent_id: "edge-py".into(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        security: Security::default(),
    };
    let grpc = AgentGrpc::start(&config, cancel.clone()).await.unwrap();
    let addr = grpc.local_addr().unwrap();

    // TCP (even), from 10/8 (multiple of 3), >= 1000 bytes (multiple of 5):
    // every 30th of 3000 records.
    let want = 100;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/subscribe.py");
    let child = Command::new(&py)
        .arg(script)
        .arg(stubs.path())
        .arg(addr.to_string())
        .arg(want.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while grpc.subscribers() == 0 {
        assert!(
            Instant::now() < deadline,
            "the Python client did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    grpc.offer(&Batch {
        start: SystemTime::now(),
        end: SystemTime::now(),
        records: (0..3000).map(record).collect(),
        counters: Counters::default(),
        dropped_records: 0,
        sampling_rate: 1,
    });
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({
            "records": 100, "gaps": 0,
            "first": {
                "src": "10.0.0.1", "dst": "2001:db8::1", "agent_id": "edge-py",
                "iface_in": "eth1", "as_path": [64500, 64501],
                "large_communities": [[64500, 1, 2]], "direction": "DIRECTION_EGRESS"
            }
        })
    );
    cancel.cancel();
    grpc.finish().await;
}
