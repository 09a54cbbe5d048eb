//! Capture: loading the programs, attaching them to the right interfaces,
//! and following interfaces as they come and go.
//!
//! [`Capture`] owns the loaded programs. It attaches to the interfaces the
//! configuration names (or those of the default routes), then listens to
//! rtnetlink link events: a matching interface that appears is attached, one
//! that disappears is forgotten. Dropping it detaches everything.

mod attach;
pub mod ifnames;
pub mod links;
pub mod loader;
pub mod preflight;

use aya::Ebpf;
use futures::StreamExt as _;
use log::{error, info, warn};
use rtnetlink::{Handle, MulticastGroup};
use tokio_util::sync::CancellationToken;

use self::links::{LinkEvent, dump_links, link_event};
pub use self::{attach::Attacher, ifnames::IfNames};
use crate::config::{Config, Mode, is_plain_name};

/// Capture errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not enough privileges to load and attach eBPF programs.
    #[error(
        "missing privileges ({0}): flowagent needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; run it as root (sudo flowagent ..., or cargo xtask run)"
    )]
    Privileges(String),
    /// /proc could not be read.
    #[error("cannot read /proc/self/status: {0}")]
    Proc(#[source] std::io::Error),
    /// The kernel publishes no BTF.
    #[error(
        "kernel without BTF (/sys/kernel/btf/vmlinux is missing): flowagent needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    /// TC mode needs tcx links.
    #[error(
        "--mode tc needs Linux 6.6 or later (tcx links); this kernel is {0}: use --mode auto (XDP)"
    )]
    NoTcx(String),
    /// The object could not be loaded (map creation, relocation, BTF).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// The CPUs' lines could not be written.
    #[error("cannot set up the programs' per-CPU lines: {0}")]
    Lines(String),
    /// The possible CPUs could not be read.
    #[error("cannot read the possible CPUs: {0}")]
    Cpus(String),
    /// A program is missing from the object (a build problem).
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
    /// A program could not be loaded (verifier) or has the wrong type.
    #[error("program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Attaching to an interface failed.
    #[error("cannot attach to {iface}: {source}")]
    Attach {
        /// The interface.
        iface: String,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Detaching failed.
    #[error("detach: {0}")]
    Detach(String),
    /// A plain interface name given with --iface does not exist.
    #[error("unknown interface {0:?} (see `ip link`; globs such as 'eth*' may match later)")]
    UnknownInterface(String),
    /// No --iface and no default route to pick interfaces from.
    #[error("no --iface given and no default route found to pick interfaces from")]
    NoDefaultRoute,
    /// rtnetlink failed.
    #[error("rtnetlink: {0}")]
    Netlink(String),
}

impl From<rtnetlink::Error> for Error {
    fn from(e: rtnetlink::Error) -> Self {
        Error::Netlink(e.to_string())
    }
}

/// Which interfaces to attach to.
enum Targets {
    /// Names matching these patterns, now and later.
    Patterns(Vec<glob::Pattern>),
    /// These interface indexes (the default routes' at start).
    Indexes(Vec<u32>),
}

/// Owns the programs and keeps them attached to the right interfaces.
pub struct Capture {
    attacher: Attacher,
    targets: Targets,
    names: IfNames,
    events: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    _handle: Handle,
}

impl Capture {
    /// Attaches to the configured interfaces and subscribes to link events.
    /// Fails on anything the operator must fix: unknown interface, attach error.
    pub async fn start(config: &Config, ebpf: Ebpf, names: IfNames) -> Result<Self, Error> {
        if config.mode == Mode::Tc {
            let version = aya::util::KernelVersion::current()
                .map_err(|e| Error::Netlink(format!("kernel version: {e}")))?;
            if version < aya::util::KernelVersion::new(6, 6, 0) {
                return Err(Error::NoTcx(format!("{version:?}")));
            }
        }
        // Subscribe before the dump so no link created in between is missed.
        let (conn, handle, events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .map_err(|e| Error::Netlink(e.to_string()))?;
        tokio::spawn(conn);
        let links = dump_links(&handle).await?;
        for (index, name) in &links {
            names.present(*index, name);
        }
        let targets = if config.interfaces.is_empty() {
            let indexes = links::default_route_interfaces(&handle).await?;
            if indexes.is_empty() {
                return Err(Error::NoDefaultRoute);
            }
            Targets::Indexes(indexes)
        } else {
            for pattern in config.interfaces.iter().filter(|p| is_plain_name(p)) {
                if !links.iter().any(|(_, n)| n == pattern.as_str()) {
                    return Err(Error::UnknownInterface(pattern.as_str().to_owned()));
                }
            }
            Targets::Patterns(config.interfaces.clone())
        };
        let mut capture = Capture {
            attacher: Attacher::new(ebpf, config.mode, config.direction),
            targets,
            names,
            events,
            _handle: handle,
        };
        for (index, name) in &links {
            if capture.wanted(*index, name) {
                capture.attacher.attach(*index, name)?;
            }
        }
        if capture.attacher.count() == 0 {
            warn!("no interface matches yet; waiting for one to appear");
        }
        Ok(capture)
    }

    fn wanted(&self, index: u32, name: &str) -> bool {
        match &self.targets {
            Targets::Patterns(patterns) => patterns.iter().any(|p| p.matches(name)),
            Targets::Indexes(indexes) => indexes.contains(&index),
        }
    }

    /// Follows link events until cancelled, then detaches everything.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                msg = self.events.next() => msg,
            };
            let Some((msg, _)) = msg else {
                error!("rtnetlink event stream ended; interfaces are no longer followed");
                cancel.cancelled().await;
                break;
            };
            let rtnetlink::packet_core::NetlinkPayload::InnerMessage(msg) = msg.payload else {
                continue;
            };
            match link_event(msg) {
                Some(LinkEvent::Present { index, name }) => {
                    self.names.present(index, &name);
                    if self.wanted(index, &name)
                        && !self.attacher.is_attached(index)
                        && let Err(e) = self.attacher.attach(index, &name)
                    {
                        error!("{e}");
                    }
                }
                Some(LinkEvent::Gone { index }) => {
                    self.names.gone(index);
                    if self.attacher.is_attached(index) {
                        self.attacher.detach(index);
                    }
                }
                None => {}
            }
        }
        info!("detaching from {} interface(s)", self.attacher.count());
        drop(self.attacher);
    }
}
