//! gRPC subscription fan-out: the agent's FlowStream server (the real
//! `AgentGrpc`, fed drained batches as the agent feeds it) delivering every
//! record to 4 subscribers on loopback. Chunks no larger than a subscriber's
//! buffer are published and the next one only when all 4 have every record,
//! so nothing is dropped and the rate is the loss-free rate. The agent's
//! CPU (the publishing thread plus the server's runtime thread) is measured
//! per thread, apart from the subscribers' own runtime.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use flowagent::{
    drain::{Batch, Counters},
    export::grpc::{
        agent::{AgentGrpc, GrpcConfig},
        proto::{self, flow_stream_client::FlowStreamClient, subscribe_event::Event},
        security::Security,
        server::SUBSCRIBER_BUFFER,
    },
};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{grpc::record, report::Figure};

const SECTION: &str = "gRPC export";

/// Subscribers, as the issue asks.
const SUBSCRIBERS: usize = 4;

/// Records per published chunk: within one subscriber buffer, so a reader
/// that keeps up never misses one.
const CHUNK: u64 = SUBSCRIBER_BUFFER as u64 - 96;

/// A one-worker runtime whose threads' ids are collected in `tids`.
fn runtime(name: &str, tids: &Arc<Mutex<Vec<i32>>>) -> tokio::runtime::Runtime {
    let tids = tids.clone();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            tids.lock().unwrap().push(tid);
        })
        .enable_all()
        .build()
        .unwrap()
}

/// The figures.
pub fn run(quick: bool) -> Vec<Figure> {
    let total: u64 = if quick { 100_000 } else { 1_000_000 };
    let agent_tids = Arc::new(Mutex::new(Vec::new()));
    let agent_rt = runtime("fanout-agent", &agent_tids);
    let subs_rt = runtime("fanout-subs", &Arc::new(Mutex::new(Vec::new())));
    let cancel = CancellationToken::new();
    let config = GrpcConfig {
        collectors: vec![],
        export_buffer: 10,
        agent_id: "bench-agent".into(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        security: Security::default(),
    };
    let grpc = agent_rt
        .block_on(AgentGrpc::start(&config, cancel.clone()))
        .expect("start the FlowStream server");
    let url = format!("http://{}", grpc.local_addr().expect("bound"));

    let received: Vec<Arc<AtomicU64>> = (0..SUBSCRIBERS)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let gaps = Arc::new(AtomicU64::new(0));
    for n in &received {
        let (n, gaps, url) = (n.clone(), gaps.clone(), url.clone());
        subs_rt.spawn(async move {
            let channel = tonic::transport::Channel::from_shared(url)
                .expect("URL")
                .connect()
                .await
                .expect("connect");
            let mut client = FlowStreamClient::new(channel);
            let mut stream = client
                .subscribe(proto::SubscribeRequest::default())
                .await
                .expect("subscribe")
                .into_inner();
            while let Some(Ok(event)) = stream.next().await {
                match event.event {
                    Some(Event::Record(_)) => n.fetch_add(1, Ordering::Relaxed),
                    _ => gaps.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while grpc.subscribers() < SUBSCRIBERS {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }

    let batches: Vec<Batch> = (0..total.div_ceil(CHUNK))
        .map(|b| Batch {
            start: SystemTime::now(),
            end: SystemTime::now(),
            records: (b * CHUNK..((b + 1) * CHUNK).min(total))
                .map(record)
                .collect(),
            counters: Counters::default(),
            dropped_records: 0,
            sampling_rate: 1,
        })
        .collect();
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let agent_cpu = || {
        super::cpu::task_seconds(me as u32)
            + agent_tids
                .lock()
                .unwrap()
                .iter()
                .map(|&t| super::cpu::task_seconds(t as u32))
                .sum::<f64>()
    };
    let (c0, t0) = (agent_cpu(), Instant::now());
    let mut sent = 0;
    for b in &batches {
        grpc.offer(b);
        sent += b.records.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.iter().any(|n| n.load(Ordering::Relaxed) < sent) {
            assert!(
                Instant::now() < deadline && gaps.load(Ordering::Relaxed) == 0,
                "subscribers fell behind at {sent} records ({} gap events)",
                gaps.load(Ordering::Relaxed)
            );
            // Sleep, not spin: the waiting is the bench's, not the agent's CPU.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), agent_cpu() - c0);
    cancel.cancel();
    agent_rt.block_on(grpc.finish());
    for n in &received {
        assert_eq!(
            n.load(Ordering::Relaxed),
            total,
            "a subscriber lost records"
        );
    }
    assert_eq!(
        gaps.load(Ordering::Relaxed),
        0,
        "a subscriber was told of a gap"
    );

    let rate = total as f64 / wall / 1e6;
    let per_delivery = cpu / (total * SUBSCRIBERS as u64) as f64 * 1e6;
    let conditions = format!(
        "{total} records published in chunks of {CHUNK} (the next chunk once all {SUBSCRIBERS} subscribers have every record, so none is dropped) through the agent's FlowStream server (1 tokio worker) to {SUBSCRIBERS} subscribers on loopback (1 tokio worker); agent CPU = publishing thread + server thread"
    );
    vec![
        Figure {
            section: SECTION,
            name: format!("records per second to each of {SUBSCRIBERS} subscribers"),
            value: rate,
            unit: "M records/s",
            baseline: None,
            target: None,
            samples: vec![rate],
            conditions: conditions.clone(),
        },
        Figure {
            section: SECTION,
            name: format!("agent CPU per record delivered, {SUBSCRIBERS} subscribers"),
            value: per_delivery,
            unit: "µs",
            baseline: Some((
                format!("per published record (x{SUBSCRIBERS})"),
                cpu / total as f64 * 1e6,
            )),
            target: None,
            samples: vec![per_delivery],
            conditions,
        },
    ]
}
