//! The `flowagent` command line: parse flags, load the config file, start
//! logging, run. Errors come out as one line and a non-zero exit code:
//! 2 for bad flags or configuration, 1 for anything that stops the agent.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use flowagent::config::RawConfig;

/// eBPF/XDP flow accounting agent for Linux routers.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Run another role than the agent.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with any of the settings below (flags win).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Interface name or glob to observe (repeatable), e.g. eth0 or 'eth*'.
    /// Default: the interfaces that carry the default routes.
    #[arg(long, value_name = "NAME|GLOB")]
    iface: Vec<String>,
    /// auto (native XDP, else generic), xdp (native only), xdp-generic, or tc.
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// For --mode tc: ingress, egress or both. Default: ingress.
    #[arg(long, value_name = "DIR")]
    direction: Option<String>,
    /// Seconds between drains; one record per flow per interval. Default: 10.
    #[arg(long, value_name = "SECONDS")]
    interval: Option<u64>,
    /// Sample 1 in N packets (random). Default: 1, every packet.
    #[arg(long, value_name = "N")]
    sampling: Option<u32>,
    /// Entries per flow map (IPv4 and IPv6 each). Default: 65536.
    #[arg(long, value_name = "N")]
    max_flows: Option<u32>,
    /// Where JSON lines go: a file (appended) or - for stdout. Default: -.
    #[arg(long, value_name = "PATH|-")]
    output: Option<String>,
    /// Collector to stream records to over gRPC (repeatable: every record
    /// goes to each), http://HOST:PORT or https://HOST:PORT.
    #[arg(long, value_name = "URL")]
    collector: Vec<String>,
    /// Records (and interval counters) queued per collector while it is
    /// slow or unreachable; the oldest are dropped beyond. Default: 1500000.
    #[arg(long, value_name = "N")]
    export_buffer: Option<usize>,
    /// This agent's id in exported records. Default: the host name.
    #[arg(long, value_name = "ID")]
    agent_id: Option<String>,
    /// Serve FlowStream subscriptions, health and reflection here, or off.
    /// Default: 127.0.0.1:50051.
    #[arg(long, value_name = "ADDR|off")]
    grpc_listen: Option<String>,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key); also the
    /// client certificate toward collectors.
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH")]
    tls_key: Option<PathBuf>,
    /// PEM CA: trusted for collectors; required of subscribers' client certificates.
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    /// File whose first line is the bearer token (sent to collectors, required of subscribers).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Allow plaintext gRPC off loopback.
    #[arg(long)]
    insecure: bool,
}

/// Roles other than the agent.
#[derive(Debug, Subcommand)]
enum Command {
    /// Receive flow records from agents over gRPC and store them.
    Collect(flowagent::collect::cli::CollectArgs),
}

impl Cli {
    fn raw(&self) -> RawConfig {
        RawConfig {
            iface: self.iface.clone(),
            mode: self.mode.clone(),
            direction: self.direction.clone(),
            interval: self.interval,
            sampling: self.sampling,
            max_flows: self.max_flows,
            output: self.output.clone(),
            collector: self.collector.clone(),
            export_buffer: self.export_buffer,
            agent_id: self.agent_id.clone(),
            grpc_listen: self.grpc_listen.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            token_file: self.token_file.clone(),
            insecure: self.insecure.then_some(true),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("flowagent: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    // tonic logs refused TLS handshakes and broken connections at debug.
    let default_filter = "info,tonic::transport::server=debug";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .init();
    if let Some(Command::Collect(args)) = cli.command {
        return collect(args);
    }

    let file = match &cli.config {
        Some(path) => match RawConfig::from_file(path) {
            Ok(raw) => raw,
            Err(e) => return fail(2, &e),
        },
        None => RawConfig::default(),
    };
    let config = match file.overlay(cli.raw()).validate() {
        Ok(config) => config,
        Err(e) => return fail(2, &e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    match runtime.block_on(flowagent::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowagent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn collect(args: flowagent::collect::cli::CollectArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    match runtime.block_on(flowagent::collect::cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e),
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("flowagent: {e}");
    ExitCode::from(code)
}
