//! The routing information base: what the agent knows about where addresses
//! are routed, learned from BGP ([`crate::bgp`]) or a networks file.
//!
//! ```text
//!  sessions ──RibUpdate──▶ Rib (one owner task)          readers (enrich, `bgp routes`)
//!                           │ writes ≤ 1024 prefixes per lock   │ RibHandle::read()
//!                           ├──▶ Lpm: best path per prefix ◀────┘  (short read sections)
//!                           └──▶ side map: full path lists, only for prefixes
//!                                with several paths (owner only)
//! ```
//!
//! Invariants:
//! - Only [`Rib`] mutates, at most [`table::PUBLISH_CHUNK`] prefixes per
//!   write lock, so a full table arriving or a session dropping never blocks
//!   readers for more than a few milliseconds.
//! - Readers take the read lock per chunk of lookups; the guard is not
//!   `Send`, so it cannot be held across an `.await` in a spawned task.
//! - Each neighbour's routes are capped (`max_prefixes`, and
//!   [`table::MAX_PATHS_PER_PREFIX`] ADD-PATH paths per prefix), so a peer
//!   cannot grow memory or CPU without bound.
//! - No tokio and no I/O here except [`networks::load`]: everything is unit-tested.

pub mod attrs;
pub mod best;
mod flat4;
mod flat6;
pub mod lpm;
mod mem;
pub mod networks;
mod prefix_hash;
mod slab;
pub mod table;

use std::net::IpAddr;

pub use attrs::{AsSegment, Origin, PathAttrs};
pub use lpm::Lpm;
pub use networks::NetworkEntry;
pub use table::{Rib, RibHandle, RibUpdate, RibView};

/// RIB errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A networks-file line is not `prefix,asn[,peer_asn]`.
    #[error("networks file {file} line {line}: {reason}")]
    Networks {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The networks file could not be read.
    #[error("cannot read networks file {file}: {source}")]
    ReadNetworks {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A neighbour sent more ADD-PATH paths for one prefix than allowed; its
    /// routes were dropped.
    #[error(
        "neighbour {neighbor} sent more than {limit} paths for {prefix}; its routes were dropped"
    )]
    PathLimit {
        /// The neighbour.
        neighbor: IpAddr,
        /// The prefix.
        prefix: ipnet::IpNet,
        /// The limit.
        limit: usize,
    },
    /// A neighbour sent more routes than allowed; its routes were dropped.
    #[error("neighbour {neighbor} exceeded {limit} routes; its routes were dropped")]
    PrefixLimit {
        /// The neighbour.
        neighbor: IpAddr,
        /// The limit.
        limit: usize,
    },
}
