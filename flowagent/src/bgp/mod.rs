//! BGP speaker: learns routes from the router's own BGP daemon (BIRD, FRR,
//! GoBGP...) and feeds them to the [`crate::rib`]. It never announces routes.
//!
//! ```text
//!  TcpListener ──accept (configured neighbours only)──▶ session task ─┐
//!  active connect (optional, per neighbour) ─────────▶ session task ─┤ RibMsg (bounded)
//!                                                                    ▼
//!   session task = socket I/O + fsm::Session (pure)           Rib owner task ──▶ RibHandle
//! ```
//!
//! Layers: [`message`] (framing, OPEN/NOTIFICATION/KEEPALIVE), [`update`]
//! (UPDATE decoding with RFC 7606 error handling), [`fsm`] (the session
//! state machine, pure: no sockets, no tokio, time passed in), and
//! [`speaker`] (tokio I/O, listener, RIB owner task).
//!
//! Peering with the router's own daemon over loopback, as the integration
//! tests do (`flowagent --bgp-listen 127.0.0.1:17917 --local-as 65000
//! --bgp-router-id 192.0.2.250 --bgp-neighbor 127.0.0.1=65000`), BIRD 2:
//!
//! ```text
//! protocol bgp flowagent {
//!   local 127.0.0.1 as 65000;
//!   neighbor 127.0.0.1 port 17917 as 65000;
//!   rr client;                      # iBGP: send every best route unchanged
//!   ipv4 { import none; export all; add paths tx; };
//!   ipv6 { import none; export all; add paths tx; };
//! }
//! ```
//!
//! For eBGP over loopback BIRD needs `multihop`, and it will not export an
//! IPv4 route whose next hop equals the neighbour's address (both are
//! 127.0.0.1), so set `next hop address` or prefer iBGP as above. FRR
//! (`neighbor 127.0.0.1 port 17917`, `ebgp-multihop`) and GoBGP
//! (`transport.config.remote-port`) are tested the same way.
//!
//! Codec choice: netgauze-bgp-pkt 0.13 parses and encodes correctly, builds
//! on Rust 1.95, and reports malformed attributes as typed errors, which are
//! mapped to RFC 7606 reactions in [`update`]. zettabgp was rejected (it
//! writes AS_SEQUENCE as AS_SET and panics on a truncated MP_REACH_NLRI);
//! routecore 0.7 quietly accepts some malformed input, which would hide the
//! errors RFC 7606 asks to act on.

pub mod control;
pub mod fsm;
pub mod message;
pub mod speaker;
pub mod update;

use std::net::IpAddr;

pub use speaker::{NeighborConfig, SessionStatus, Speaker, SpeakerConfig, Status};

/// BGP errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be opened.
    #[error("cannot listen for BGP on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A session's socket failed.
    #[error("BGP session with {neighbor}: {source}")]
    Io {
        /// The neighbour.
        neighbor: IpAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
