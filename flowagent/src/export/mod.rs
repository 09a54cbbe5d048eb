//! Where drained batches go. This exporter writes JSON lines; gRPC
//! and others join here.

pub mod grpc;
pub mod jsonl;
