//! Where drained batches go: JSON lines ([`jsonl`]), and gRPC ([`grpc`]):
//! exporters to collectors and live subscriptions. [`fan_out`] hands every
//! batch to all of them.

pub mod flow_line;
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        drain::Counters,
        export::grpc::{
            agent::{AgentGrpc, GrpcConfig},
            convert::tests::full_record,
            security::Security,
        },
    };

    fn batch(n: u64) -> Batch {
        Batch {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            records: (0..n).map(full_record).collect(),
            counters: Counters::default(),
            dropped_records: 0,
            sampling_rate: 1,
        }
    }

    #[tokio::test]
    async fn slow_writer_loses_counted_batches_and_grpc_gets_all() {
        let unreachable = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cancel = CancellationToken::new();
        let config = GrpcConfig {
            collectors: vec![format!("http://{unreachable}")],
            export_buffer: 1000,
            agent_id: "a".into(),
            listen: None,
            security: Security::default(),
        };
        let grpc = AgentGrpc::start(&config, cancel.clone()).await.unwrap();
        let exporter = grpc.exporters()[0].clone();
        let (batches, batches_rx) = mpsc::channel(8);
        let (writer, mut writer_rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            fan_out(batches_rx, &grpc, writer).await;
            grpc
        });
        let queued = |n| {
            let exporter = exporter.clone();
            async move {
                while exporter.stats().queued_items < n {
                    tokio::task::yield_now().await;
                }
            }
        };
        batches.send(batch(2)).await.unwrap();
        queued(3).await;
        // The writer has no room for these two: counted, not waited for.
        batches.send(batch(2)).await.unwrap();
        batches.send(batch(3)).await.unwrap();
        queued(3 + 3 + 4).await;
        assert_eq!(writer_rx.recv().await.unwrap().dropped_records, 0);
        batches.send(batch(1)).await.unwrap();
        let next = writer_rx.recv().await.unwrap();
        assert_eq!((next.records.len(), next.dropped_records), (1, 5));
        // Every batch reached the exporter: 8 records + 4 counters items.
        assert_eq!(exporter.stats().queued_items, 12);
        drop(batches);
        let grpc = task.await.unwrap();
        cancel.cancel();
        grpc.finish().await;
    }
}
