//! The `flowagent collect` command line: flags, and running the collector
//! until SIGINT or SIGTERM.

use std::{net::SocketAddr, path::PathBuf};

use log::info;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{CollectConfig, Collector, Error};
use crate::export::grpc::security::Security;

/// Default collector listen address: loopback, next to the agent's 50051.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// Receive flow records from agents over gRPC, store them durably as hourly
/// JSON lines files, and serve live subscriptions over them.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectArgs {
    /// Address to listen on for agents (Collector.Export) and subscribers.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Directory for OUT_DIR/%Y-%m-%d-%H.jsonl (UTC hour of writing) and the state file.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: require client certificates signed by it (mutual TLS).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// File whose first line is the bearer token clients must send.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Allow plaintext on a non-loopback --listen address.
    #[arg(long)]
    pub insecure: bool,
}

impl CollectArgs {
    /// The collector configuration.
    pub fn config(&self) -> CollectConfig {
        CollectConfig {
            listen: self.listen,
            out_dir: self.out_dir.clone(),
            security: Security {
                tls_cert: self.tls_cert.clone(),
                tls_key: self.tls_key.clone(),
                tls_ca: self.tls_ca.clone(),
                token_file: self.token_file.clone(),
                insecure: self.insecure,
            },
        }
    }
}

/// Runs the collector until SIGINT or SIGTERM.
pub async fn run(args: CollectArgs) -> Result<(), Error> {
    let collector = Collector::bind(args.config()).await?;
    let cancel = CancellationToken::new();
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Thread)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Thread)?;
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: stopping"),
            _ = sigterm.recv() => info!("SIGTERM: stopping"),
        }
        stop.cancel();
    });
    collector.run(cancel).await
}
