//! flowagent: in-kernel flow accounting for Linux routers.
//!
//! Data flows one way: kernel maps ([`capture`] loads and attaches the
//! programs that fill them) → [`drain`] (flip, wait for runs, read) →
//! [`flow::FlowRecord`]s → [`export`]. [`app`] wires the stages together and
//! owns the shutdown order.

pub mod app;
pub mod bgp;
pub mod capture;
pub mod collect;
pub mod config;
pub mod drain;
pub mod enrich;
pub mod export;
pub mod flow;
pub mod rib;
#[cfg(test)]
mod testing;
