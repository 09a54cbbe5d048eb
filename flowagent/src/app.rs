//! Wiring: load, attach, spawn the stages, and shut down in order.
//!
//! ```text
//!  rtnetlink ──▶ Capture (owns programs, attaches)        kernel: XDP/TC programs
//!                                                             │ per-CPU maps, slot A/B
//!  tick ──────▶ Drainer (flip slot, barrier, batch read) ◀────┘
//!                   │ bounded channel (drops counted)
//!                   ▼
//!               fan_out ──▶ gRPC exporters (queues) ──▶ collectors
//!                   │   └──▶ FlowStream hub ──▶ subscribers (--grpc-listen)
//!                   ▼ bounded channel (drops counted)
//!               JsonlWriter thread ──▶ stdout / file
//! ```
//!
//! Shutdown (SIGINT/SIGTERM): detach everything first, so no packet is
//! counted after the last drain; then the final drain of the partial
//! interval; then the writer flushes and exits, and the exporters send what
//! they still hold (bounded by their flush timeout).

use std::os::fd::AsRawFd as _;

use anyhow::Context as _;
use aya_log::EbpfLogger;
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    capture::{self, Capture, IfNames},
    config::Config,
    drain::{self, Drainer},
    export::{self, grpc::agent::AgentGrpc, jsonl::JsonlWriter},
};

/// Batches that may wait for the writer before the drain starts dropping.
const OUTPUT_QUEUE: usize = 16;

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    capture::preflight::check()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut ebpf = capture::loader::load(&config)?;
    // The logger must live as long as the programs: dropping it closes the
    // log map the programs write to.
    let logger = EbpfLogger::init(&mut ebpf).context("initialising aya-log")?;
    let log_pump = tokio::spawn(pump_logs(logger));
    let maps = drain::Maps::take(&mut ebpf)?;
    let names = IfNames::default();
    let grpc_stop = CancellationToken::new();
    let grpc = AgentGrpc::start(&config.grpc, grpc_stop.clone())
        .await
        .context("starting gRPC (--collector, --grpc-listen)")?;
    let writer = JsonlWriter::open(&config.output)?;
    let capture = Capture::start(&config, ebpf, names.clone()).await?;

    let (batches, batches_rx) = mpsc::channel(OUTPUT_QUEUE);
    let (to_writer, writer_rx) = mpsc::channel(OUTPUT_QUEUE);
    let drainer = Drainer::new(maps, names, config.sampling, config.interval, batches)?;
    let writer_thread = std::thread::Builder::new()
        .name("jsonl-writer".into())
        .spawn(move || writer.run(writer_rx))
        .context("starting the output thread")?;
    let fan_out = tokio::spawn(async move {
        export::fan_out(batches_rx, &grpc, to_writer).await;
        grpc
    });

    let capture_stop = CancellationToken::new();
    let drain_stop = CancellationToken::new();
    let capture_task = tokio::spawn(capture.run(capture_stop.clone()));
    let drain_task = tokio::spawn(drainer.run(drain_stop.clone()));
    info!(
        "ready: draining every {}s, sampling 1:{}, {} flows per map",
        config.interval.as_secs(),
        config.sampling,
        config.max_flows
    );

    tokio::select! {
        _ = sigint.recv() => info!("SIGINT: final drain and exit"),
        _ = sigterm.recv() => info!("SIGTERM: final drain and exit"),
    }
    capture_stop.cancel();
    capture_task.await.context("capture task")?;
    drain_stop.cancel();
    drain_task.await.context("drain task")?;
    // The drainer is gone, so the fan-out ends after the final batch.
    let grpc = fan_out.await.context("fan-out task")?;
    grpc_stop.cancel();
    grpc.finish().await;
    let written = tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .context("joining the output thread")?;
    match written {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the output thread panicked"),
    }
    log_pump.abort();
    info!("stopped");
    Ok(())
}

/// Forwards aya-log records from the programs to the `log` crate.
async fn pump_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    let raw = logger.as_raw_fd();
    // SAFETY: the logger owns its ring buffer fd for as long as it lives, and
    // the AsyncFd owns the logger, so the fd stays open and the same.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF log fd {raw} cannot be polled, kernel logs are off: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
