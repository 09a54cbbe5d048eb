//! The agent's gRPC side, started as one unit by `app`: an exporter per
//! `--collector`, and the `--grpc-listen` server (FlowStream, health,
//! reflection). [`AgentGrpc::offer`] hands a drained batch to all of them
//! without blocking.

use std::{net::SocketAddr, sync::Arc};

use log::{info, warn};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    client::{self, ExporterConfig, ExporterHandle},
    security::{self, Security},
    server::{self, Hub},
};
use crate::drain::Batch;

/// Agent gRPC errors (setup only; running errors are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An exporter could not be set up.
    #[error(transparent)]
    Exporter(#[from] client::Error),
    /// TLS or token setup failed.
    #[error(transparent)]
    Security(#[from] security::Error),
    /// The listen address could not be bound.
    #[error("--grpc-listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checked gRPC settings of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcConfig {
    /// Collector URLs; every record goes to each.
    pub collectors: Vec<String>,
    /// Export queue capacity per collector, in items.
    pub export_buffer: usize,
    /// This agent's id in exported records.
    pub agent_id: String,
    /// Where to serve FlowStream; `None` when off.
    pub listen: Option<SocketAddr>,
    /// TLS and token, for both the exporters and the server.
    pub security: Security,
}

/// The running gRPC side.
pub struct AgentGrpc {
    exporters: Vec<ExporterHandle>,
    hub: Arc<Hub>,
    tasks: Vec<JoinHandle<()>>,
}

impl AgentGrpc {
    /// Binds the server and starts the exporters; all run until `cancel`.
    pub async fn start(config: &GrpcConfig, cancel: CancellationToken) -> Result<Self, Error> {
        let hub = Arc::new(Hub::new(config.agent_id.clone()));
        let mut tasks = Vec::new();
        if let Some(addr) = config.listen {
            config.security.check_listen(addr)?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?;
            let (router, _health, _token) =
                server::router(&config.security, hub.clone(), cancel.clone()).await?;
            info!("serving FlowStream on {addr}");
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = server::serve(router, listener, cancel).await {
                    warn!("gRPC server stopped: {e}");
                }
            }));
        }
        let mut exporters = Vec::new();
        for url in &config.collectors {
            let exporter = ExporterConfig::new(
                url.clone(),
                config.agent_id.clone(),
                config.export_buffer,
                config.security.clone(),
            );
            let (handle, task) = client::spawn(exporter, cancel.clone())?;
            exporters.push(handle);
            tasks.push(task);
        }
        Ok(Self {
            exporters,
            hub,
            tasks,
        })
    }

    /// Hands a drained batch to every exporter and subscriber. Never blocks.
    pub fn offer(&self, batch: &Batch) {
        for e in &self.exporters {
            e.offer(batch);
        }
        self.hub.publish(&batch.records);
    }

    /// Waits for the exporters' flush and the server's stop (after `cancel`).
    pub async fn finish(self) {
        for task in self.tasks {
            if let Err(e) = task.await {
                warn!("a gRPC task failed: {e}");
            }
        }
    }
}
