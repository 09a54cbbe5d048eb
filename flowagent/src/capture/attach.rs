//! Attaching and detaching the loaded programs, per interface.
//!
//! Links are bpf_link based (XDP links, tcx links), so they are owned by this
//! process: dropping the [`Attacher`] (or the process dying) detaches them
//! and leaves nothing behind on any interface.

use std::collections::HashMap;

use aya::{
    Ebpf,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
};
use flowagent_common::names;
use log::{debug, info};

use super::{
    Error,
    loader::{classifier, program},
};
use crate::config::{Direction, Mode};

/// One program attached to one interface.
enum Attachment {
    Xdp(XdpLinkId),
    Tc(&'static str, SchedClassifierLinkId),
}

/// Owns the loaded programs and what they are attached to.
pub struct Attacher {
    ebpf: Ebpf,
    mode: Mode,
    direction: Direction,
    attached: HashMap<u32, Vec<Attachment>>,
}

impl Attacher {
    /// Wraps loaded programs; nothing is attached yet.
    pub fn new(ebpf: Ebpf, mode: Mode, direction: Direction) -> Self {
        Self {
            ebpf,
            mode,
            direction,
            attached: HashMap::new(),
        }
    }

    /// Whether the interface has our programs.
    pub fn is_attached(&self, index: u32) -> bool {
        self.attached.contains_key(&index)
    }

    /// Attaches the mode's programs to interface `index` (named `name` for messages).
    pub fn attach(&mut self, index: u32, name: &str) -> Result<(), Error> {
        if self.is_attached(index) {
            return Ok(());
        }
        let mut links = Vec::new();
        let result = self.attach_all(index, name, &mut links);
        if !links.is_empty() {
            // Keep what did attach even on a partial failure, so it is
            // detached with the rest.
            self.attached.insert(index, links);
        }
        result
    }

    fn attach_all(
        &mut self,
        index: u32,
        name: &str,
        links: &mut Vec<Attachment>,
    ) -> Result<(), Error> {
        match self.mode {
            Mode::Tc => self.attach_tc(index, name, self.direction, links),
            Mode::Auto => {
                let xdp = program::<Xdp>(&mut self.ebpf, names::PROG_XDP)?;
                match xdp.attach_to_if_index(index, XdpMode::Driver) {
                    Ok(link) => {
                        links.push(Attachment::Xdp(link));
                        info!("attached native XDP to {name} (ifindex {index})");
                        Ok(())
                    }
                    // Not generic XDP: it runs on the same skb as TC, but
                    // copies every non-linear skb to linearize it and sees
                    // a GSO skb as one packet, where TC reads gso_segs.
                    Err(e) => {
                        info!("no native XDP on {name} ({e}); using TC ingress");
                        self.attach_tc(index, name, Direction::Ingress, links)
                    }
                }
            }
            Mode::Xdp | Mode::XdpGeneric => {
                let (xdp_mode, used) = if self.mode == Mode::Xdp {
                    (XdpMode::Driver, "native")
                } else {
                    (XdpMode::Skb, "generic")
                };
                let link = program::<Xdp>(&mut self.ebpf, names::PROG_XDP)?
                    .attach_to_if_index(index, xdp_mode)
                    .map_err(attach_error(name))?;
                links.push(Attachment::Xdp(link));
                info!("attached {used} XDP to {name} (ifindex {index})");
                Ok(())
            }
        }
    }

    /// Attaches the TC programs of `direction` to `name`.
    fn attach_tc(
        &mut self,
        index: u32,
        name: &str,
        direction: Direction,
        links: &mut Vec<Attachment>,
    ) -> Result<(), Error> {
        let hooks = [
            (
                direction.ingress(),
                names::PROG_TC_INGRESS,
                TcAttachType::Ingress,
            ),
            (
                direction.egress(),
                names::PROG_TC_EGRESS,
                TcAttachType::Egress,
            ),
        ];
        for (wanted, prog, hook) in hooks {
            if !wanted {
                continue;
            }
            let link = classifier(&mut self.ebpf, prog)?
                .attach(name, hook)
                .map_err(attach_error(name))?;
            links.push(Attachment::Tc(prog, link));
        }
        info!("attached tc {direction:?} to {name} (ifindex {index})");
        Ok(())
    }

    /// Forgets interface `index` (it disappeared: the kernel already removed
    /// its programs) or detaches from it.
    pub fn detach(&mut self, index: u32) {
        let Some(links) = self.attached.remove(&index) else {
            return;
        };
        for link in links {
            // A vanished interface took its links along; closing the link
            // fd is all that is left, and an error here changes nothing.
            let result = match link {
                Attachment::Xdp(id) => program::<Xdp>(&mut self.ebpf, names::PROG_XDP)
                    .and_then(|p| p.detach(id).map_err(|e| Error::Detach(e.to_string()))),
                Attachment::Tc(prog, id) => program::<SchedClassifier>(&mut self.ebpf, prog)
                    .and_then(|p| p.detach(id).map_err(|e| Error::Detach(e.to_string()))),
            };
            if let Err(e) = result {
                debug!("detach from ifindex {index}: {e}");
            }
        }
        info!("detached from ifindex {index}");
    }

    /// Number of interfaces with programs attached.
    pub fn count(&self) -> usize {
        self.attached.len()
    }
}

/// Maps a failed attach to `iface` to this module's error.
fn attach_error(iface: &str) -> impl Fn(ProgramError) -> Error + '_ {
    move |source| Error::Attach {
        iface: iface.to_owned(),
        source,
    }
}
