//! The `flowagent` command line: parse flags, load the config file, start
//! logging, run. Errors come out as one line and a non-zero exit code:
//! 2 for bad flags or configuration, 1 for anything that stops the agent.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use flowagent::config::{RawConfig, RawNeighbor};

/// eBPF/XDP flow accounting agent for Linux routers.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
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
    /// Entries of each CPU's IPv4 flow cache (the IPv6 cache has half as
    /// many), rounded up to a power of two; 0 turns the cache off. The
    /// cache is a two-way table in front of the flow maps that makes
    /// an existing flow's update one cache line; it costs 256 bytes per
    /// entry and CPU. Default: twice a CPU's share of --max-flows, at least
    /// 1024, at most 64 MiB in all.
    #[arg(long, value_name = "N")]
    flow_cache: Option<u32>,
    /// Where JSON lines go: a file (appended) or - for stdout. Default: -.
    #[arg(long, value_name = "PATH|-")]
    output: Option<String>,
    /// Accept BGP sessions from the router's daemon on ADDR:PORT, e.g.
    /// 127.0.0.1:17917. The agent never announces routes. Default: off.
    #[arg(long, value_name = "ADDR:PORT")]
    bgp_listen: Option<String>,
    /// Our AS number (BGP, and the origin AS of routes with an empty AS_PATH).
    #[arg(long, value_name = "N")]
    local_as: Option<u32>,
    /// Our BGP identifier.
    #[arg(long, value_name = "A.B.C.D")]
    bgp_router_id: Option<String>,
    /// A BGP neighbour allowed to connect, with its AS (repeatable), e.g.
    /// 127.0.0.1=65000 (same AS as --local-as for iBGP).
    #[arg(long, value_name = "ADDRESS=AS")]
    bgp_neighbor: Vec<String>,
    /// Hold time to propose, seconds (0 or >= 3). Default: 90.
    #[arg(long, value_name = "SECONDS")]
    bgp_hold_time: Option<u16>,
    /// Routes accepted per neighbour before its session is closed. Default: 2000000.
    #[arg(long, value_name = "N")]
    bgp_max_prefixes: Option<usize>,
    /// Also write these destination-route attributes: as_path, communities.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    bgp_attrs: Vec<String>,
    /// peer_as_src for traffic entering an interface (repeatable), optionally
    /// only from one neighbour router's MAC, e.g. eth1=64496 or
    /// eth1@52:54:00:12:34:56=64496 (the MAC entry wins).
    #[arg(long, value_name = "IFACE[@MAC]=AS")]
    bgp_peer_src_as: Vec<String>,
    /// Lines of prefix,asn[,peer_asn]; fills the routing fields where BGP has no route.
    #[arg(long, value_name = "PATH")]
    networks_file: Option<String>,
    /// Socket on which `flowagent bgp routes` asks the running agent.
    /// Default: /run/flowagent-bgp.sock.
    #[arg(long, value_name = "PATH")]
    bgp_socket: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
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
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Ask a running agent about BGP.
    Bgp {
        #[command(subcommand)]
        what: BgpCommand,
    },
    /// Receive flow records from agents over gRPC and store them.
    Collect(flowagent::collect::cli::CollectArgs),
}

#[derive(Debug, clap::Subcommand)]
enum BgpCommand {
    /// Sessions and table sizes; with an address, the route covering it;
    /// with a prefix, the best routes inside it.
    Routes {
        /// An address or a prefix.
        #[arg(value_name = "PREFIX|IP")]
        query: Option<String>,
    },
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
            flow_cache: self.flow_cache,
            output: self.output.clone(),
            bgp_listen: self.bgp_listen.clone(),
            local_as: self.local_as,
            bgp_router_id: self.bgp_router_id.clone(),
            bgp_neighbor: self
                .bgp_neighbor
                .iter()
                .cloned()
                .map(RawNeighbor::Short)
                .collect(),
            bgp_hold_time: self.bgp_hold_time,
            bgp_max_prefixes: self.bgp_max_prefixes,
            bgp_attrs: self.bgp_attrs.clone(),
            bgp_peer_src_as: self.bgp_peer_src_as.clone(),
            networks_file: self.networks_file.clone(),
            bgp_socket: self.bgp_socket.clone(),
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
    if let Some(Command::Bgp {
        what: BgpCommand::Routes { query },
    }) = &cli.command
    {
        let socket = cli
            .bgp_socket
            .clone()
            .unwrap_or_else(|| flowagent::bgp::control::DEFAULT_SOCKET.into());
        let line = match query {
            Some(q) => format!("routes {q}"),
            None => "routes".into(),
        };
        return match flowagent::bgp::control::query(std::path::Path::new(&socket), &line) {
            Ok(text) => {
                print!("{text}");
                if text.starts_with("error:") {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => fail(
                1,
                &format!(
                    "cannot ask the agent on {socket}: {e} (is it running with BGP or --networks-file?)"
                ),
            ),
        };
    }
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
