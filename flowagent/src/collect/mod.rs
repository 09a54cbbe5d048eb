//! `flowagent collect`: the collector. Receives `Collector.Export` streams
//! from many agents, stores their batches durably ([`store`]) and
//! acknowledges each only once it is fsynced; serves
//! `FlowStream.Subscribe` over everything it stores.
//!
//! ```text
//!  agent ─┐ Export streams     ┌──────────────┐ group commit   OUT_DIR/
//!  agent ─┼──▶ ExportService ──▶ writer thread ├──▶ (fsync) ──▶ %Y-%m-%d-%H.jsonl
//!  agent ─┘  ◀── acks, in order └──────┬───────┘               .flowagent-collect.state
//!                                      ▼ stored records
//!                                  Hub ──▶ Subscribe streams
//! ```
//!
//! Each stream is pipelined: its reader hands batches to the writer thread
//! over a bounded channel (back-pressure reaches the agent through HTTP/2
//! flow control) and its acker answers them in arrival order. The writer
//! commits whatever batches are waiting, from all streams, with one fsync.

pub mod cli;
mod service;
pub mod store;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::SystemTime};

use log::{error, info, warn};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::export::grpc::{
    proto,
    security::{self, Security},
    server::Hub,
};

/// Batches waiting for the writer (from all streams) before readers wait.
const WRITE_QUEUE: usize = 256;

/// Collector errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error("opening the output directory: {0}")]
    Store(#[from] store::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS or token setup failed.
    #[error(transparent)]
    Security(#[from] security::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The writer thread or a signal handler could not be set up.
    #[error("starting the collector: {0}")]
    Thread(#[source] std::io::Error),
}

/// Collector settings.
#[derive(Clone, Debug)]
pub struct CollectConfig {
    /// Where to listen for agents and subscribers.
    pub listen: SocketAddr,
    /// Where the hourly files and the state file go.
    pub out_dir: PathBuf,
    /// TLS and token settings.
    pub security: Security,
}

/// A batch on its way to the writer, with where its outcome goes.
struct Commit {
    batch: proto::FlowBatch,
    done: oneshot::Sender<Result<store::Outcome, Status>>,
}

/// The collector: a bound listener and an opened store.
pub struct Collector {
    listener: TcpListener,
    store: store::Store,
    security: Security,
}

impl Collector {
    /// Opens the store (rolling back anything not committed) and binds.
    pub async fn bind(config: CollectConfig) -> Result<Self, Error> {
        config.security.check_listen(config.listen)?;
        let store = store::Store::open(&config.out_dir)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Self {
            listener,
            store,
            security: config.security,
        })
    }

    /// The bound address (useful when the port was 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `cancel`, then waits for the writer to finish what it
    /// has (every acknowledged batch is already durable).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let hub = Arc::new(Hub::default());
        let (commits, commits_rx) = mpsc::channel(WRITE_QUEUE);
        let writer_hub = hub.clone();
        let store = self.store;
        let writer = std::thread::Builder::new()
            .name("collect-writer".into())
            .spawn(move || write_loop(store, commits_rx, &writer_hub))
            .map_err(Error::Thread)?;
        let addr = self.listener.local_addr().ok();
        info!("collecting on {addr:?}");
        let served = service::serve(self.listener, self.security, commits, hub, cancel).await;
        // The server dropped its senders; the writer finishes what is queued.
        let joined = tokio::task::spawn_blocking(move || writer.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            error!("the writer thread panicked");
        }
        served
    }
}

/// The writer thread: group commits until every sender is gone.
fn write_loop(mut store: store::Store, mut commits: mpsc::Receiver<Commit>, hub: &Hub) {
    while let Some(first) = commits.blocking_recv() {
        let mut group = vec![first];
        while group.len() < WRITE_QUEUE {
            match commits.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let (batches, dones): (Vec<_>, Vec<_>) =
            group.into_iter().map(|c| (c.batch, c.done)).unzip();
        match store.commit(&batches, SystemTime::now()) {
            Ok(outcomes) => {
                for ((done, outcome), batch) in dones.into_iter().zip(outcomes).zip(&batches) {
                    if outcome == store::Outcome::Stored {
                        hub.publish_proto(&batch.records);
                    }
                    let _ = done.send(Ok(outcome));
                }
            }
            Err(e) => {
                // Nothing of the group is kept; the agents resend it.
                warn!(
                    "commit of {} batches failed, not acknowledged: {e}",
                    dones.len()
                );
                let status = Status::from(e);
                for done in dones {
                    let _ = done.send(Err(status.clone()));
                }
            }
        }
    }
}
