//! What rtnetlink tells about interfaces: the current links, the interfaces
//! that carry the default routes, and link events as they happen.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    route::{RouteAttribute, RouteMessage, RouteType},
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The main routing table (RT_TABLE_MAIN).
const RT_TABLE_MAIN: u8 = 254;

/// A change to the set of interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (new, or changed: renamed, up/down).
    Present {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
    },
    /// A link was deleted.
    Gone {
        /// Interface index.
        index: u32,
    },
}

/// Reads a link event out of a netlink notification, if it is one.
pub fn link_event(msg: RouteNetlinkMessage) -> Option<LinkEvent> {
    match msg {
        RouteNetlinkMessage::NewLink(link) => link_name(&link).map(|name| LinkEvent::Present {
            index: link.header.index,
            name,
        }),
        RouteNetlinkMessage::DelLink(link) => Some(LinkEvent::Gone {
            index: link.header.index,
        }),
        _ => None,
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// Every link of this network namespace as `(index, name)`.
pub async fn dump_links(handle: &Handle) -> Result<Vec<(u32, String)>, rtnetlink::Error> {
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(link) = links.try_next().await? {
        if let Some(name) = link_name(&link) {
            out.push((link.header.index, name));
        }
    }
    Ok(out)
}

/// Interfaces that carry an IPv4 or IPv6 default route in the main table,
/// including every leg of a multipath (ECMP) default.
pub async fn default_route_interfaces(handle: &Handle) -> Result<Vec<u32>, rtnetlink::Error> {
    let mut out = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut routes = handle.route().get(query).execute();
        while let Some(route) = routes.try_next().await? {
            for index in default_route_oifs(&route) {
                if !out.contains(&index) {
                    out.push(index);
                }
            }
        }
    }
    Ok(out)
}

fn default_route_oifs(route: &RouteMessage) -> Vec<u32> {
    let h = &route.header;
    if h.destination_prefix_length != 0 || h.table != RT_TABLE_MAIN || h.kind != RouteType::Unicast
    {
        return Vec::new();
    }
    route
        .attributes
        .iter()
        .flat_map(|a| match a {
            RouteAttribute::Oif(index) => vec![*index],
            RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
            _ => Vec::new(),
        })
        .collect()
}
