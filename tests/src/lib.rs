//! Test harness for flowagent's privileged end-to-end tests.
//!
//! Each test builds its own little network out of network namespaces and
//! veth pairs ([`netns`]), starts the real agent binary inside one of them
//! ([`agent`]), sends hand-built Ethernet frames ([`packet`]) from a raw
//! socket in another ([`send`]), and reads the JSON lines the agent wrote.
//! Everything is removed on drop, also when a test fails.
//!
//! The agent binary comes from `FLOWAGENT_BIN` (set by `cargo xtask test`).

pub mod agent;
pub mod bench;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod peers;
pub mod procfs;
pub mod send;
pub mod sockets;
pub mod trafgen;
