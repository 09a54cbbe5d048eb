//! Agent configuration: command-line flags over an optional TOML file over
//! defaults, checked once by [`RawConfig::validate`] into a [`Config`].
//!
//! Every flag has a key of the same name (dashes become underscores) in the
//! file, and a flag given on the command line wins over the file.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

pub use crate::export::grpc::agent::GrpcConfig;
use crate::export::grpc::security::Security;
use crate::{
    bgp::{NeighborConfig, SpeakerConfig},
    enrich::BgpAttrs,
};

/// Largest accepted `--max-flows`: 16M entries per map. Per-CPU values make a
/// map cost about `max_flows * (80 + 56 * CPUs)` bytes, so this already asks
/// the kernel for gigabytes on a large machine.
pub const MAX_FLOWS_LIMIT: u32 = 1 << 24;
/// Largest accepted `--flow-cache`: 16M entries per CPU (each costs 256
/// bytes: a 64-byte IPv4 entry and half a 128-byte IPv6 entry, two slots).
pub const FLOW_CACHE_LIMIT: u32 = 1 << 24;
/// Largest accepted sampling rate (1 in 16M).
pub const SAMPLING_LIMIT: u32 = 1 << 24;
/// Longest accepted drain interval, one hour.
pub const INTERVAL_LIMIT_SECS: u64 = 3600;
/// Default per-neighbour route limit: a full table (about 1M IPv4 + 250k
/// IPv6 prefixes) with room to grow.
pub const DEFAULT_MAX_PREFIXES: usize = 2_000_000;
/// Largest accepted per-neighbour route limit.
pub const MAX_PREFIXES_LIMIT: usize = 50_000_000;

/// Configuration errors; each names the key and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, on one line.
        message: String,
    },
    /// A value is outside what the key accepts.
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        /// The flag / key name.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        reason: String,
    },
}

/// How the programs are attached.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Native XDP where the driver supports it, else TC ingress: cheaper
    /// than generic XDP on the same skb, and exact for GSO skbs.
    Auto,
    /// Native (driver) XDP only; fails where the driver has none.
    Xdp,
    /// Generic (skb) XDP, which works on any interface.
    XdpGeneric,
    /// TC classifiers (tcx on Linux 6.6+, clsact before), ingress and/or egress.
    Tc,
}

/// Which directions TC mode observes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
    /// Both.
    Both,
}

impl Direction {
    /// Whether ingress is observed.
    pub fn ingress(self) -> bool {
        matches!(self, Direction::Ingress | Direction::Both)
    }
    /// Whether egress is observed.
    pub fn egress(self) -> bool {
        matches!(self, Direction::Egress | Direction::Both)
    }
}

/// Where flow records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File(PathBuf),
}

/// The checked agent configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interface name patterns; empty means "the interfaces of the default routes".
    pub interfaces: Vec<glob::Pattern>,
    /// Attach mode.
    pub mode: Mode,
    /// Directions observed (always ingress for XDP).
    pub direction: Direction,
    /// Drain interval.
    pub interval: Duration,
    /// Sample 1 in this many packets.
    pub sampling: u32,
    /// Entries per flow map.
    pub max_flows: u32,
    /// Entries of each CPU's IPv4 flow cache (`--flow-cache`; IPv6: half); None: the
    /// loader's default for `max_flows` and the CPUs; 0: no cache.
    pub flow_cache: Option<u32>,
    /// Record destination.
    pub output: Output,
    /// BGP and/or networks-file enrichment; `None` when neither is configured.
    pub routing: Option<Routing>,
    /// Collectors, the FlowStream server, TLS and token.
    pub grpc: GrpcConfig,
}

/// Checked routing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// The BGP speaker, when `--bgp-listen` or an active neighbour is given.
    pub bgp: Option<SpeakerConfig>,
    /// `--networks-file`.
    pub networks_file: Option<PathBuf>,
    /// `--local-as` (0 when not given): the origin AS of routes with an empty path.
    pub local_as: u32,
    /// `--bgp-attrs`.
    pub attrs: BgpAttrs,
    /// `--bgp-peer-src-as`: ingress interface name to neighbour AS.
    pub peer_src_as: crate::enrich::PeerSrcAs,
    /// `--bgp-socket`: where `flowagent bgp routes` asks the agent.
    pub socket: PathBuf,
}

/// A neighbour as written in the file: `"ADDRESS=AS"` or a table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RawNeighbor {
    /// `ADDRESS=AS`, as on the command line.
    Short(String),
    /// `{ address = "...", asn = N, active = false, port = 179 }`.
    Full(RawNeighborTable),
}

/// A neighbour table in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawNeighborTable {
    /// Its address.
    pub address: String,
    /// Its AS.
    pub asn: u32,
    /// Also connect to it (default: only accept).
    #[serde(default)]
    pub active: bool,
    /// Port for active connects (default 179).
    #[serde(default)]
    pub port: Option<u16>,
}

/// Unchecked configuration as it comes from the file and the flags.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `--iface`: interface names or globs.
    pub iface: Vec<String>,
    /// `--mode`.
    pub mode: Option<String>,
    /// `--direction`.
    pub direction: Option<String>,
    /// `--interval`, seconds.
    pub interval: Option<u64>,
    /// `--sampling`.
    pub sampling: Option<u32>,
    /// `--max-flows`.
    pub max_flows: Option<u32>,
    /// `--flow-cache`.
    pub flow_cache: Option<u32>,
    /// `--output`: a path, or `-` for stdout.
    pub output: Option<String>,
    /// `--bgp-listen`: `ADDR:PORT`.
    pub bgp_listen: Option<String>,
    /// `--local-as`.
    pub local_as: Option<u32>,
    /// `--bgp-router-id`.
    pub bgp_router_id: Option<String>,
    /// `--bgp-neighbor` (repeatable).
    pub bgp_neighbor: Vec<RawNeighbor>,
    /// `--bgp-hold-time`, seconds.
    pub bgp_hold_time: Option<u16>,
    /// `--bgp-max-prefixes`.
    pub bgp_max_prefixes: Option<usize>,
    /// `--bgp-attrs`: `as_path`, `communities`.
    pub bgp_attrs: Vec<String>,
    /// `--bgp-peer-src-as`: `IFACE=AS` (repeatable).
    pub bgp_peer_src_as: Vec<String>,
    /// `--networks-file`.
    pub networks_file: Option<String>,
    /// `--bgp-socket`.
    pub bgp_socket: Option<String>,
    /// `--collector`: collector URLs (every record goes to each).
    pub collector: Vec<String>,
    /// `--export-buffer`: queued items per collector.
    pub export_buffer: Option<usize>,
    /// `--agent-id`: this agent's name in exported records.
    pub agent_id: Option<String>,
    /// `--grpc-listen`: FlowStream server address, or `off`.
    pub grpc_listen: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--insecure`: plaintext allowed off loopback.
    pub insecure: Option<bool>,
}

impl RawConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string().replace('\n', " ").trim().to_owned(),
        })
    }

    /// Layers `flags` over `self`: every value given on the command line wins.
    pub fn overlay(self, flags: RawConfig) -> RawConfig {
        RawConfig {
            iface: if flags.iface.is_empty() {
                self.iface
            } else {
                flags.iface
            },
            mode: flags.mode.or(self.mode),
            direction: flags.direction.or(self.direction),
            interval: flags.interval.or(self.interval),
            sampling: flags.sampling.or(self.sampling),
            max_flows: flags.max_flows.or(self.max_flows),
            flow_cache: flags.flow_cache.or(self.flow_cache),
            output: flags.output.or(self.output),
            bgp_listen: flags.bgp_listen.or(self.bgp_listen),
            local_as: flags.local_as.or(self.local_as),
            bgp_router_id: flags.bgp_router_id.or(self.bgp_router_id),
            bgp_neighbor: if flags.bgp_neighbor.is_empty() {
                self.bgp_neighbor
            } else {
                flags.bgp_neighbor
            },
            bgp_hold_time: flags.bgp_hold_time.or(self.bgp_hold_time),
            bgp_max_prefixes: flags.bgp_max_prefixes.or(self.bgp_max_prefixes),
            bgp_attrs: if flags.bgp_attrs.is_empty() {
                self.bgp_attrs
            } else {
                flags.bgp_attrs
            },
            bgp_peer_src_as: if flags.bgp_peer_src_as.is_empty() {
                self.bgp_peer_src_as
            } else {
                flags.bgp_peer_src_as
            },
            networks_file: flags.networks_file.or(self.networks_file),
            bgp_socket: flags.bgp_socket.or(self.bgp_socket),
            collector: if flags.collector.is_empty() {
                self.collector
            } else {
                flags.collector
            },
            export_buffer: flags.export_buffer.or(self.export_buffer),
            agent_id: flags.agent_id.or(self.agent_id),
            grpc_listen: flags.grpc_listen.or(self.grpc_listen),
            tls_cert: flags.tls_cert.or(self.tls_cert),
            tls_key: flags.tls_key.or(self.tls_key),
            tls_ca: flags.tls_ca.or(self.tls_ca),
            token_file: flags.token_file.or(self.token_file),
            insecure: flags.insecure.or(self.insecure),
        }
    }

    /// Checks every value and fills in defaults.
    pub fn validate(self) -> Result<Config, Error> {
        let routing = self.routing()?;
        let interfaces = self
            .iface
            .iter()
            .map(|p| {
                if p.is_empty() || p.len() > 15 && !p.contains(['*', '?', '[']) {
                    return Err(invalid(
                        "--iface",
                        p,
                        "an interface name has 1 to 15 characters",
                    ));
                }
                glob::Pattern::new(p).map_err(|e| invalid("--iface", p, &format!("bad glob: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Default: auto, i.e. native XDP, or TC ingress without it.
        let mode = match self.mode.as_deref().unwrap_or("auto") {
            "auto" => Mode::Auto,
            "xdp" => Mode::Xdp,
            "xdp-generic" => Mode::XdpGeneric,
            "tc" => Mode::Tc,
            other => {
                return Err(invalid(
                    "--mode",
                    other,
                    "expected auto, xdp, xdp-generic or tc",
                ));
            }
        };
        // Default: ingress, the direction XDP sees and pmacct's `pcap_direction: in`.
        let direction = match self.direction.as_deref() {
            None | Some("ingress") => Direction::Ingress,
            Some("egress") => Direction::Egress,
            Some("both") => Direction::Both,
            Some(other) => {
                return Err(invalid(
                    "--direction",
                    other,
                    "expected ingress, egress or both",
                ));
            }
        };
        if mode != Mode::Tc && direction != Direction::Ingress {
            return Err(invalid(
                "--direction",
                self.direction.as_deref().unwrap_or_default(),
                "XDP sees ingress only; use --mode tc for egress",
            ));
        }

        // Default: 10 s, short enough for "what changed" questions, long
        // enough that a busy router emits few records per flow.
        let interval = self.interval.unwrap_or(10);
        if !(1..=INTERVAL_LIMIT_SECS).contains(&interval) {
            return Err(invalid(
                "--interval",
                &interval.to_string(),
                &format!("seconds between drains, 1 to {INTERVAL_LIMIT_SECS}"),
            ));
        }
        // Default: 1, every packet; the maps are cheap enough on small routers.
        let sampling = self.sampling.unwrap_or(1);
        if !(1..=SAMPLING_LIMIT).contains(&sampling) {
            return Err(invalid(
                "--sampling",
                &sampling.to_string(),
                &format!("sample 1 in N packets, N from 1 to {SAMPLING_LIMIT}"),
            ));
        }
        // Default: 64k flows per map and slot, enough for a small AS at 10 s.
        let max_flows = self
            .max_flows
            .unwrap_or(flowagent_common::DEFAULT_MAX_FLOWS);
        if max_flows == 0 || max_flows > MAX_FLOWS_LIMIT {
            return Err(invalid(
                "--max-flows",
                &max_flows.to_string(),
                &format!("map size too large or zero: 1 to {MAX_FLOWS_LIMIT} entries"),
            ));
        }
        if let Some(cache) = self.flow_cache
            && cache > FLOW_CACHE_LIMIT
        {
            return Err(invalid(
                "--flow-cache",
                &cache.to_string(),
                &format!("cache too large: 0 (off) to {FLOW_CACHE_LIMIT} entries per CPU"),
            ));
        }
        let output = match self.output.as_deref() {
            None | Some("-") => Output::Stdout,
            Some("") => return Err(invalid("--output", "", "a file path or - for stdout")),
            Some(path) => Output::File(PathBuf::from(path)),
        };
        let grpc = self.grpc()?;
        Ok(Config {
            interfaces,
            mode,
            direction,
            interval: Duration::from_secs(interval),
            sampling,
            max_flows,
            flow_cache: self.flow_cache,
            output,
            routing,
            grpc,
        })
    }

    /// The gRPC part of [`RawConfig::validate`].
    fn grpc(&self) -> Result<GrpcConfig, Error> {
        // Default: 1.5M items, 5 minutes at 5,000 records/s (a busy router
        // at 10 s intervals: 50,000 flows per interval); about 400 MB when full.
        let export_buffer = self.export_buffer.unwrap_or(DEFAULT_EXPORT_BUFFER);
        if !(1..=EXPORT_BUFFER_LIMIT).contains(&export_buffer) {
            return Err(invalid(
                "--export-buffer",
                &export_buffer.to_string(),
                &format!("queued records per collector, 1 to {EXPORT_BUFFER_LIMIT}"),
            ));
        }
        // Default: the host name, which tells routers apart in a collector.
        let agent_id = match &self.agent_id {
            Some(id) if id.is_empty() || id.len() > 255 => {
                return Err(invalid("--agent-id", id, "1 to 255 characters"));
            }
            Some(id) => id.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "flowagent".into()),
        };
        // Default: loopback only, so local analytics can subscribe without
        // exposing anything.
        let listen = match self.grpc_listen.as_deref().unwrap_or(DEFAULT_GRPC_LISTEN) {
            "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(
                    "--grpc-listen",
                    addr,
                    "expected IP:PORT (e.g. [::1]:50051) or off",
                )
            })?),
        };
        let security = Security {
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            token_file: self.token_file.clone(),
            insecure: self.insecure.unwrap_or(false),
        };
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "--tls-cert",
                &format!("{:?}", self.tls_cert),
                "--tls-cert and --tls-key go together",
            ));
        }
        if let Some(addr) = listen {
            security
                .check_listen(addr)
                .map_err(|e| invalid("--grpc-listen", &addr.to_string(), &reason(e)))?;
        }
        for url in &self.collector {
            security
                .check_connect(url)
                .map_err(|e| invalid("--collector", url, &reason(e)))?;
        }
        Ok(GrpcConfig {
            collectors: self.collector.clone(),
            export_buffer,
            agent_id,
            listen,
            security,
        })
    }

    /// Checks the BGP and networks-file keys.
    fn routing(&self) -> Result<Option<Routing>, Error> {
        let listen = match &self.bgp_listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "--bgp-listen",
                    text,
                    "expected ADDR:PORT, e.g. 127.0.0.1:17917",
                )
            })?),
        };
        let mut neighbors: Vec<NeighborConfig> = Vec::new();
        for raw in &self.bgp_neighbor {
            let n = match raw {
                RawNeighbor::Short(text) => {
                    let (addr, asn) = text.split_once('=').ok_or_else(|| {
                        invalid(
                            "--bgp-neighbor",
                            text,
                            "expected ADDRESS=AS, e.g. 127.0.0.1=65000",
                        )
                    })?;
                    NeighborConfig {
                        address: parse_ip("--bgp-neighbor", addr)?,
                        asn: parse_asn("--bgp-neighbor", asn)?,
                        active: false,
                        port: 179,
                    }
                }
                RawNeighbor::Full(t) => NeighborConfig {
                    address: parse_ip("--bgp-neighbor", &t.address)?,
                    asn: nonzero_asn("--bgp-neighbor", t.asn)?,
                    active: t.active,
                    port: t.port.unwrap_or(179),
                },
            };
            if neighbors.iter().any(|m| m.address == n.address) {
                return Err(invalid(
                    "--bgp-neighbor",
                    &n.address.to_string(),
                    "listed twice",
                ));
            }
            neighbors.push(n);
        }
        let local_as = self
            .local_as
            .map(|a| nonzero_asn("--local-as", a))
            .transpose()?;
        let bgp_on = listen.is_some() || neighbors.iter().any(|n| n.active);
        let bgp = if bgp_on {
            if neighbors.is_empty() {
                return Err(invalid(
                    "--bgp-neighbor",
                    "",
                    "BGP needs at least one neighbour",
                ));
            }
            let local_as =
                local_as.ok_or_else(|| invalid("--local-as", "", "required with BGP"))?;
            let router_id = match &self.bgp_router_id {
                None => return Err(invalid("--bgp-router-id", "", "required with BGP")),
                Some(text) => text
                    .parse::<Ipv4Addr>()
                    .ok()
                    .filter(|a| !a.is_unspecified())
                    .ok_or_else(|| {
                        invalid("--bgp-router-id", text, "expected a non-zero A.B.C.D")
                    })?,
            };
            // Default: 90 s, the common router default (RFC 4271 suggests 90).
            let hold_time = self.bgp_hold_time.unwrap_or(90);
            if matches!(hold_time, 1 | 2) {
                return Err(invalid(
                    "--bgp-hold-time",
                    &hold_time.to_string(),
                    "0 or at least 3 seconds",
                ));
            }
            let max_prefixes = self.bgp_max_prefixes.unwrap_or(DEFAULT_MAX_PREFIXES);
            if !(1..=MAX_PREFIXES_LIMIT).contains(&max_prefixes) {
                return Err(invalid(
                    "--bgp-max-prefixes",
                    &max_prefixes.to_string(),
                    &format!("1 to {MAX_PREFIXES_LIMIT} routes per neighbour"),
                ));
            }
            Some(SpeakerConfig {
                listen,
                local_as,
                router_id,
                hold_time,
                neighbors,
                max_prefixes,
            })
        } else {
            if !neighbors.is_empty() {
                return Err(invalid(
                    "--bgp-neighbor",
                    &neighbors[0].address.to_string(),
                    "needs --bgp-listen (or active = true in the config file)",
                ));
            }
            None
        };
        let mut attrs = BgpAttrs::default();
        for a in &self.bgp_attrs {
            match a.as_str() {
                "as_path" => attrs.as_path = true,
                "communities" => attrs.communities = true,
                other => {
                    return Err(invalid(
                        "--bgp-attrs",
                        other,
                        "expected as_path and/or communities",
                    ));
                }
            }
        }
        let mut peer_src_as = HashMap::new();
        for text in &self.bgp_peer_src_as {
            let bad = || {
                invalid(
                    "--bgp-peer-src-as",
                    text,
                    "expected IFACE=AS or IFACE@MAC=AS, e.g. eth1=64496 or eth1@52:54:00:12:34:56=64496",
                )
            };
            let (lhs, asn) = text.split_once('=').ok_or_else(bad)?;
            let (iface, mac) = match lhs.split_once('@') {
                Some((iface, mac)) => (iface, Some(parse_mac(mac).ok_or_else(bad)?)),
                None => (lhs, None),
            };
            if iface.is_empty() || iface.len() > 15 {
                return Err(bad());
            }
            peer_src_as.insert(
                (iface.to_owned(), mac),
                parse_asn("--bgp-peer-src-as", asn)?,
            );
        }
        let networks_file = match self.networks_file.as_deref() {
            None => None,
            Some("") => return Err(invalid("--networks-file", "", "a file path")),
            Some(p) => Some(PathBuf::from(p)),
        };
        if bgp.is_none() && networks_file.is_none() {
            return Ok(None);
        }
        // Default: the path `flowagent bgp routes` asks by default.
        let socket = match self.bgp_socket.as_deref() {
            None => PathBuf::from(crate::bgp::control::DEFAULT_SOCKET),
            Some("") => return Err(invalid("--bgp-socket", "", "a socket path")),
            Some(p) => PathBuf::from(p),
        };
        Ok(Some(Routing {
            bgp,
            networks_file,
            local_as: local_as.unwrap_or(0),
            attrs,
            peer_src_as,
            socket,
        }))
    }
}

fn parse_ip(key: &'static str, text: &str) -> Result<IpAddr, Error> {
    text.trim()
        .parse()
        .map_err(|_| invalid(key, text, "expected an IPv4 or IPv6 address"))
}

fn parse_asn(key: &'static str, text: &str) -> Result<u32, Error> {
    let asn = text
        .trim()
        .parse::<u32>()
        .map_err(|_| invalid(key, text, "expected an AS number, 1 to 4294967295"))?;
    nonzero_asn(key, asn)
}

fn nonzero_asn(key: &'static str, asn: u32) -> Result<u32, Error> {
    if asn == 0 {
        return Err(invalid(key, "0", "AS 0 is reserved (RFC 7607)"));
    }
    Ok(asn)
}

/// The reason of a security check failure, without its flag (the caller names it).
fn reason(e: crate::export::grpc::security::Error) -> String {
    match e {
        crate::export::grpc::security::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Default `--export-buffer`.
pub const DEFAULT_EXPORT_BUFFER: usize = 1_500_000;
/// Largest accepted `--export-buffer` (about 16 GB of queued records).
pub const EXPORT_BUFFER_LIMIT: usize = 64 << 20;
/// Default `--grpc-listen`.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:50051";

/// `aa:bb:cc:dd:ee:ff` (hex digits, either case).
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn invalid(key: &'static str, value: &str, reason: &str) -> Error {
    Error::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Whether a pattern is a plain name (no glob characters): such a name must
/// exist when the agent starts, a glob may match later.
pub fn is_plain_name(pattern: &glob::Pattern) -> bool {
    !pattern.as_str().contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig::default()
    }

    #[test]
    fn defaults() {
        let c = raw().validate().unwrap();
        assert_eq!(c.mode, Mode::Auto);
        assert_eq!(c.direction, Direction::Ingress);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.sampling, 1);
        assert_eq!(c.max_flows, 65_536);
        assert_eq!(c.output, Output::Stdout);
        assert!(c.interfaces.is_empty());
    }

    #[test]
    fn flags_win_over_file() {
        let file: RawConfig =
            toml::from_str("iface = [\"eth*\"]\nsampling = 100\ninterval = 5\nmode = \"tc\"\n")
                .unwrap();
        let flags = RawConfig {
            sampling: Some(7),
            ..raw()
        };
        let c = file.overlay(flags).validate().unwrap();
        assert_eq!(c.sampling, 7);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.mode, Mode::Tc);
        assert_eq!(c.interfaces[0].as_str(), "eth*");
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let cases: [(RawConfig, &str); 9] = [
            (
                RawConfig {
                    sampling: Some(0),
                    ..raw()
                },
                "--sampling",
            ),
            (
                RawConfig {
                    max_flows: Some(0),
                    ..raw()
                },
                "--max-flows",
            ),
            (
                RawConfig {
                    max_flows: Some(MAX_FLOWS_LIMIT + 1),
                    ..raw()
                },
                "--max-flows",
            ),
            (
                RawConfig {
                    flow_cache: Some(FLOW_CACHE_LIMIT + 1),
                    ..raw()
                },
                "--flow-cache",
            ),
            (
                RawConfig {
                    interval: Some(0),
                    ..raw()
                },
                "--interval",
            ),
            (
                RawConfig {
                    mode: Some("fast".into()),
                    ..raw()
                },
                "--mode",
            ),
            (
                RawConfig {
                    iface: vec!["eth[".into()],
                    ..raw()
                },
                "--iface",
            ),
            (
                RawConfig {
                    iface: vec!["a-very-long-interface".into()],
                    ..raw()
                },
                "--iface",
            ),
            (
                RawConfig {
                    direction: Some("egress".into()),
                    ..raw()
                },
                "--direction",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.clone().validate().unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("invalid {key} ")),
                "{cfg:?}: {err}"
            );
        }
    }

    #[test]
    fn bgp_from_flags_and_file() {
        let file: RawConfig = toml::from_str(
            r#"
local_as = 65000
bgp_router_id = "192.0.2.250"
bgp_listen = "127.0.0.1:17917"
bgp_attrs = ["as_path", "communities"]
networks_file = "/etc/flowagent/networks"
bgp_peer_src_as = ["eth1=64496", "eth2@52:54:00:12:34:56=64497"]
bgp_neighbor = ["127.0.0.1=65001", { address = "::1", asn = 65002, active = true, port = 1179 }]
"#,
        )
        .unwrap();
        let r = file.validate().unwrap().routing.unwrap();
        let bgp = r.bgp.unwrap();
        assert_eq!(bgp.listen, Some("127.0.0.1:17917".parse().unwrap()));
        assert_eq!(
            (bgp.local_as, bgp.hold_time, bgp.max_prefixes),
            (65000, 90, DEFAULT_MAX_PREFIXES)
        );
        assert_eq!(bgp.router_id, Ipv4Addr::new(192, 0, 2, 250));
        assert_eq!(
            bgp.neighbors,
            vec![
                NeighborConfig {
                    address: "127.0.0.1".parse().unwrap(),
                    asn: 65001,
                    active: false,
                    port: 179
                },
                NeighborConfig {
                    address: "::1".parse().unwrap(),
                    asn: 65002,
                    active: true,
                    port: 1179
                },
            ]
        );
        assert_eq!(
            r.attrs,
            BgpAttrs {
                as_path: true,
                communities: true
            }
        );
        assert_eq!(
            r.peer_src_as,
            HashMap::from([
                (("eth1".to_string(), None), 64496),
                (
                    ("eth2".to_string(), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
                    64497
                ),
            ])
        );
        assert_eq!(
            r.networks_file,
            Some(PathBuf::from("/etc/flowagent/networks"))
        );
        // Nothing routing-related: no routing stage at all.
        assert_eq!(raw().validate().unwrap().routing, None);
        // A networks file alone.
        let only_file = RawConfig {
            networks_file: Some("n".into()),
            ..raw()
        };
        let r = only_file.validate().unwrap().routing.unwrap();
        assert_eq!((r.bgp, r.local_as), (None, 0));
    }

    #[test]
    fn bgp_errors_name_the_key() {
        let bgp = || RawConfig {
            bgp_listen: Some("127.0.0.1:17917".into()),
            local_as: Some(65000),
            bgp_router_id: Some("192.0.2.1".into()),
            bgp_neighbor: vec![RawNeighbor::Short("127.0.0.1=65001".into())],
            ..raw()
        };
        assert!(bgp().validate().is_ok());
        let cases: [(RawConfig, &str); 13] = [
            (
                RawConfig {
                    bgp_listen: Some("127.0.0.1".into()),
                    ..bgp()
                },
                "--bgp-listen",
            ),
            (
                RawConfig {
                    local_as: None,
                    ..bgp()
                },
                "--local-as",
            ),
            (
                RawConfig {
                    local_as: Some(0),
                    ..bgp()
                },
                "--local-as",
            ),
            (
                RawConfig {
                    bgp_router_id: None,
                    ..bgp()
                },
                "--bgp-router-id",
            ),
            (
                RawConfig {
                    bgp_router_id: Some("0.0.0.0".into()),
                    ..bgp()
                },
                "--bgp-router-id",
            ),
            (
                RawConfig {
                    bgp_neighbor: vec![],
                    ..bgp()
                },
                "--bgp-neighbor",
            ),
            (
                RawConfig {
                    bgp_neighbor: vec![RawNeighbor::Short("127.0.0.1:65001".into())],
                    ..bgp()
                },
                "--bgp-neighbor",
            ),
            (
                RawConfig {
                    bgp_hold_time: Some(2),
                    ..bgp()
                },
                "--bgp-hold-time",
            ),
            (
                RawConfig {
                    bgp_attrs: vec!["med".into()],
                    ..bgp()
                },
                "--bgp-attrs",
            ),
            (
                RawConfig {
                    bgp_peer_src_as: vec!["eth1".into()],
                    ..bgp()
                },
                "--bgp-peer-src-as",
            ),
            (
                RawConfig {
                    bgp_peer_src_as: vec!["eth1@52:54:00:12:34=64496".into()],
                    ..bgp()
                },
                "--bgp-peer-src-as",
            ),
            (
                RawConfig {
                    bgp_peer_src_as: vec!["eth1@zz:54:00:12:34:56=64496".into()],
                    ..bgp()
                },
                "--bgp-peer-src-as",
            ),
            (
                RawConfig {
                    bgp_listen: None,
                    ..bgp()
                },
                "--bgp-neighbor",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.clone().validate().unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("invalid {key} ")),
                "{cfg:?}: {err}"
            );
        }
    }

    #[test]
    fn grpc_defaults_and_checks() {
        let g = raw().validate().unwrap().grpc;
        assert_eq!(g.listen, Some("127.0.0.1:50051".parse().unwrap()));
        assert_eq!(g.export_buffer, 1_500_000);
        assert!(g.collectors.is_empty());
        assert!(!g.agent_id.is_empty());
        let file: RawConfig = toml::from_str(
            "collector = [\"http://127.0.0.1:9\", \"https://c.example:443\"]\n\
             export_buffer = 10\nagent_id = \"edge-1\"\ngrpc_listen = \"off\"\n",
        )
        .unwrap();
        let g = file.validate().unwrap().grpc;
        assert_eq!(g.collectors.len(), 2);
        assert_eq!(
            (g.export_buffer, g.agent_id.as_str(), g.listen),
            (10, "edge-1", None)
        );
        let cases: [(RawConfig, &str); 6] = [
            (
                RawConfig {
                    export_buffer: Some(0),
                    ..raw()
                },
                "--export-buffer",
            ),
            (
                RawConfig {
                    collector: vec!["c:1".into()],
                    ..raw()
                },
                "--collector",
            ),
            (
                RawConfig {
                    collector: vec!["http://192.0.2.1:1".into()],
                    ..raw()
                },
                "--collector",
            ),
            (
                RawConfig {
                    grpc_listen: Some("0.0.0.0:1".into()),
                    ..raw()
                },
                "--grpc-listen",
            ),
            (
                RawConfig {
                    grpc_listen: Some("nowhere".into()),
                    ..raw()
                },
                "--grpc-listen",
            ),
            (
                RawConfig {
                    agent_id: Some(String::new()),
                    ..raw()
                },
                "--agent-id",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.clone().validate().unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("invalid {key} ")),
                "{cfg:?}: {err}"
            );
        }
        let insecure = RawConfig {
            grpc_listen: Some("0.0.0.0:1".into()),
            collector: vec!["http://192.0.2.1:1".into()],
            insecure: Some(true),
            ..raw()
        };
        assert!(insecure.validate().is_ok());
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let err = toml::from_str::<RawConfig>("samplin = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
