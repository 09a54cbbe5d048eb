//! Wiring: load, attach, spawn the stages, and shut down in order.
//!
//! ```text
//!  rtnetlink ──▶ Capture (owns programs, attaches)        kernel: XDP/TC programs
//!                                                             │ per-CPU maps, slot A/B
//!  tick ──────▶ Drainer (flip slot, wait for runs, read) ◀────┘
//!                   │ bounded channel (drops counted)
//!                   ▼
//!               Enricher thread (only with BGP / --networks-file) ◀── RibHandle ◀── bgp::Speaker
//!                   │ bounded channel
//!               fan_out ──▶ gRPC exporters (queues) ──▶ collectors
//!                   │   └──▶ FlowStream hub ──▶ subscribers (--grpc-listen)
//!                   ▼ bounded channel (drops counted)
//!               JsonlWriter thread ──▶ stdout / file
//! ```
//!
//! Shutdown (SIGINT/SIGTERM): detach everything first, so no packet is
//! counted after the last drain; then the final drain of the partial
//! interval; then the writer flushes and exits.

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
    bgp::{Speaker, Status, control},
    capture::{self, Capture, IfNames},
    config::{Config, Routing},
    drain::{self, Drainer},
    enrich::{BgpAttrs, Enricher},
    export::{self, grpc::agent::AgentGrpc, jsonl::JsonlWriter},
    rib::{self, RibHandle},
};

/// Batches that may wait for the writer before the drain starts dropping.
/// Each can hold up to 2 x --max-flows records, so this bounds memory: a
/// writer more than a few intervals behind is not catching up anyway.
const OUTPUT_QUEUE: usize = 4;

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    capture::preflight::check()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let routing = match &config.routing {
        Some(r) => Some(RoutingStage::start(r).await?),
        None => None,
    };
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
    let mut writer = JsonlWriter::open(&config.output)?;
    if let Some(r) = &routing {
        writer = writer.with_routing(r.attrs);
    }
    let capture = Capture::start(&config, ebpf, names.clone()).await?;

    let (batches, batches_rx) = mpsc::channel(OUTPUT_QUEUE);
    let drainer = Drainer::new(maps, names, config.sampling, config.interval, batches)?;
    // With routing, the enricher sits between the drain and the writer.
    let (batches_rx, enrich_thread) = match &routing {
        Some(r) => {
            let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
            let enricher = r.enricher.clone();
            let thread = std::thread::Builder::new()
                .name("enrich".into())
                .spawn(move || enricher.run(batches_rx, tx))
                .context("starting the enrichment thread")?;
            (rx, Some(thread))
        }
        None => (batches_rx, None),
    };
    let (to_writer, writer_rx) = mpsc::channel(OUTPUT_QUEUE);
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
    // The drainer is gone, so the enricher and then the fan-out end after
    // the final batch.
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
    if let Some(thread) = enrich_thread
        && thread.join().is_err()
    {
        warn!("the enrichment thread panicked");
    }
    // BGP stops last, so the final drain is still enriched with every route.
    if let Some(r) = routing {
        r.stop().await;
    }
    log_pump.abort();
    info!("stopped");
    Ok(())
}

/// The routing side: the RIB handle, the BGP speaker task if any, and the
/// enricher built on them.
struct RoutingStage {
    enricher: Enricher,
    attrs: BgpAttrs,
    speaker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// Stops the `bgp routes` socket.
    control_stop: CancellationToken,
}

impl RoutingStage {
    /// Loads the networks file and starts the speaker (its listener is bound
    /// here, so a busy port stops the agent at start).
    async fn start(r: &Routing) -> anyhow::Result<Self> {
        let networks = match &r.networks_file {
            Some(path) => rib::networks::load(path).context("check --networks-file")?,
            None => rib::Lpm::default(),
        };
        if !networks.is_empty() {
            info!("networks file: {} prefixes", networks.len());
        }
        let handle = RibHandle::new(networks);
        let mut status = Status::default();
        let speaker = match &r.bgp {
            Some(cfg) => {
                let speaker = Speaker::bind(cfg.clone(), handle.clone())
                    .await
                    .context("starting BGP (check --bgp-listen)")?;
                if let Some(addr) = speaker.local_addr() {
                    info!("BGP: listening on {addr}, AS{}", cfg.local_as);
                }
                status = speaker.status();
                let stop = CancellationToken::new();
                Some((stop.clone(), tokio::spawn(speaker.run(stop))))
            }
            None => None,
        };
        let control_stop = CancellationToken::new();
        tokio::spawn(control::serve(
            r.socket.clone(),
            status,
            handle.clone(),
            control_stop.clone(),
        ));
        let enricher = Enricher::new(handle, r.local_as, r.attrs, r.peer_src_as.clone());
        Ok(Self {
            enricher,
            attrs: r.attrs,
            speaker,
            control_stop,
        })
    }

    /// Closes the BGP sessions (Cease, Administrative Shutdown).
    async fn stop(self) {
        self.control_stop.cancel();
        if let Some((stop, task)) = self.speaker {
            stop.cancel();
            if task.await.is_err() {
                warn!("the BGP task panicked");
            }
        }
    }
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
