//! The usual test topology: a traffic generator namespace and an observer
//! namespace (where the agent runs) joined by one veth pair.
//!
//! ```text
//!   [gen] ga 02:00:00:00:00:01  <── veth ──>  gb 02:00:00:00:00:02 [obs: agent]
//! ```
//! IPv6 is disabled in both namespaces so the kernel sends nothing of its
//! own (no DAD, MLD or router solicitations) and counts stay exact.

use crate::netns::{Netns, veth};

/// MAC of the generator's interface.
pub const GEN_MAC: &str = "02:00:00:00:00:01";
/// MAC of the observed interface.
pub const OBS_MAC: &str = "02:00:00:00:00:02";

/// Two namespaces and the veth pair between them.
pub struct Lab {
    /// Where frames are sent from (interface `ga`).
    pub gen_ns: Netns,
    /// Where the agent runs (interface `gb`).
    pub obs: Netns,
}

/// A namespace whose kernel stays quiet: no IPv6 on any interface.
pub fn quiet_netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    ns
}

impl Lab {
    /// Builds the topology.
    pub fn new(tag: &str) -> Lab {
        let gen_ns = quiet_netns(&format!("{tag}g"));
        let obs = quiet_netns(&format!("{tag}o"));
        veth(&gen_ns, "ga", GEN_MAC, &obs, "gb", OBS_MAC);
        Lab { gen_ns, obs }
    }
}
