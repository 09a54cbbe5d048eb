//! Where drained batches go: JSON lines ([`jsonl`]), and gRPC ([`grpc`]):
//! exporters to collectors and live subscriptions. [`fan_out`] hands every
//! batch to all of them.

pub mod grpc;
pub mod jsonl;

use log::warn;
use tokio::sync::mpsc;

use crate::drain::Batch;

/// Hands each drained batch to the gRPC side (never blocks) and to the JSON
/// lines writer's bounded channel. A writer that falls behind loses whole
/// batches, counted and reported in the `dropped_records` of the next batch
/// it gets, as the drain does; it never holds back the gRPC side.
pub async fn fan_out(
    mut batches: mpsc::Receiver<Batch>,
    grpc: &grpc::agent::AgentGrpc,
    writer: mpsc::Sender<Batch>,
) {
    let mut dropped = 0u64;
    while let Some(mut batch) = batches.recv().await {
        grpc.offer(&batch);
        batch.dropped_records += dropped;
        let n = batch.records.len() as u64;
        match writer.try_send(batch) {
            Ok(()) => dropped = 0,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += n;
                warn!(
                    "JSON output is behind: dropped a batch of {n} records ({dropped} since the last one written)"
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                warn!("JSON output closed; batches go to gRPC only");
            }
        }
    }
}
