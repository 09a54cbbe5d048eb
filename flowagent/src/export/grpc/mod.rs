//! gRPC: the `flowagent.v1` API (generated from `proto/flowagent/v1/flow.proto`
//! by the build script), conversion between [`crate::flow::FlowRecord`] and
//! its message, the agent's exporter client, and the FlowStream subscription
//! server shared by the agent and the collector.

pub mod agent;
pub mod client;
pub mod convert;
pub mod security;
pub mod server;

/// Generated `flowagent.v1` messages, clients and servers.
pub mod proto {
    tonic::include_proto!("flowagent.v1");

    /// Encoded file descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("flowagent_v1_descriptor");
}
