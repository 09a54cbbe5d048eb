//! The `Collector.Export` service: one reader and one acker task per agent
//! stream, pipelined through the writer thread.
//!
//! A stream's batches are acknowledged in the order they arrived, each only
//! after the writer reports it durable (or a duplicate). A malformed batch
//! (no agent id, a record that does not convert) ends the stream with
//! `INVALID_ARGUMENT`; a failed commit ends it with `UNAVAILABLE`, and the
//! agent resends what it did not get acknowledged.

use std::sync::Arc;

use log::warn;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{Commit, Error, store};
use crate::export::grpc::{
    proto::{self, collector_server::CollectorServer},
    security::Security,
    server::{self, Hub},
};

/// Batches a stream may have in flight between its reader and its acker.
const STREAM_WINDOW: usize = 64;
/// Largest accepted message (a batch), bytes.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// What the acker waits for, in arrival order.
enum Pending {
    /// A batch at the writer.
    Written {
        epoch: u64,
        batch_id: u64,
        done: oneshot::Receiver<Result<store::Outcome, Status>>,
    },
    /// A batch refused before writing.
    Refused(Status),
}

/// The Export handler.
struct ExportService {
    commits: mpsc::Sender<Commit>,
    /// Ends every stream when the collector stops, so graceful shutdown
    /// does not wait for agents that never hang up.
    cancel: CancellationToken,
}

#[tonic::async_trait]
impl proto::collector_server::Collector for ExportService {
    type ExportStream = ReceiverStream<Result<proto::ExportAck, Status>>;

    async fn export(
        &self,
        request: Request<Streaming<proto::FlowBatch>>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let (acks, acks_rx) = mpsc::channel(STREAM_WINDOW);
        let (pending, mut pending_rx) = mpsc::channel(STREAM_WINDOW);
        let commits = self.commits.clone();
        let cancel = self.cancel.clone();
        let stopping = self.cancel.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = cancel.cancelled() => break,
                };
                let batch = match message {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        // Undecodable messages land here too: answer with
                        // the status after the acks already due.
                        warn!("export stream from {peer:?} failed: {status}");
                        let _ = pending.send(Pending::Refused(status)).await;
                        break;
                    }
                };
                let item = match check(&batch) {
                    Err(status) => {
                        warn!("refused a batch from {peer:?}: {}", status.message());
                        Pending::Refused(status)
                    }
                    Ok(()) => {
                        let (done, done_rx) = oneshot::channel();
                        let (epoch, batch_id) = (batch.epoch, batch.batch_id);
                        if commits.send(Commit { batch, done }).await.is_err() {
                            Pending::Refused(Status::unavailable("collector shutting down"))
                        } else {
                            Pending::Written {
                                epoch,
                                batch_id,
                                done: done_rx,
                            }
                        }
                    }
                };
                let last = matches!(item, Pending::Refused(_));
                if pending.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(item) = pending_rx.recv().await {
                let ack = match item {
                    Pending::Refused(status) => Err(status),
                    Pending::Written {
                        epoch,
                        batch_id,
                        done,
                    } => match done.await {
                        Ok(Ok(outcome)) => Ok(proto::ExportAck {
                            epoch,
                            batch_id,
                            duplicate: outcome == store::Outcome::Duplicate,
                        }),
                        Ok(Err(status)) => Err(status),
                        Err(_) => Err(Status::unavailable("collector shutting down")),
                    },
                };
                let failed = ack.is_err();
                if acks.send(ack).await.is_err() || failed {
                    return;
                }
            }
            if stopping.is_cancelled() {
                // Every batch read was answered; tell the agent to go elsewhere or retry.
                let _ = acks
                    .send(Err(Status::unavailable("collector shutting down")))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(acks_rx)))
    }
}

/// Refuses batches the store could not write.
fn check(batch: &proto::FlowBatch) -> Result<(), Status> {
    if batch.agent_id.is_empty() {
        return Err(Status::invalid_argument("batch without agent_id"));
    }
    store::check_batch(batch).map_err(Status::from)
}

/// Serves Export, FlowStream, health and reflection until `cancel`.
pub(super) async fn serve(
    listener: TcpListener,
    security: Security,
    commits: mpsc::Sender<Commit>,
    hub: Arc<Hub>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let (router, health, token) = server::router(&security, hub, cancel.clone()).await?;
    let export = CollectorServer::new(ExportService {
        commits,
        cancel: cancel.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE);
    health.set_serving::<CollectorServer<ExportService>>().await;
    let export = tonic::service::interceptor::InterceptedService::new(export, token);
    let router = router.add_service(export);
    server::serve(router, listener, cancel)
        .await
        .map_err(Error::Serve)
}
