//! The agent's gRPC side, started as one unit by `app`: an exporter per
//! `--collector`, and the `--grpc-listen` server (FlowStream, health,
//! reflection). [`AgentGrpc::offer`] hands a drained batch to all of them
//! without blocking.

use std::{net::SocketAddr, sync::Arc};

use log::{info, warn};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    client::{self, ExporterConfig, ExporterHandle},
    security::{self, Security},
    server::{self, Hub},
};
use crate::drain::Batch;

/// Agent gRPC errors (setup only; running errors are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An exporter could not be set up.
    #[error(transparent)]
    Exporter(#[from] client::Error),
    /// TLS or token setup failed.
    #[error(transparent)]
    Security(#[from] security::Error),
    /// The listen address could not be bound.
    #[error("--grpc-listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checked gRPC settings of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcConfig {
    /// Collector URLs; every record goes to each.
    pub collectors: Vec<String>,
    /// Export queue capacity per collector, in items.
    pub export_buffer: usize,
    /// This agent's id in exported records.
    pub agent_id: String,
    /// Where to serve FlowStream; `None` when off.
    pub listen: Option<SocketAddr>,
    /// TLS and token, for both the exporters and the server.
    pub security: Security,
}

/// The running gRPC side.
pub struct AgentGrpc {
    local_addr: Option<SocketAddr>,
    exporters: Vec<ExporterHandle>,
    hub: Arc<Hub>,
    tasks: Vec<JoinHandle<()>>,
}

impl AgentGrpc {
    /// Binds the server and starts the exporters; all run until `cancel`.
    pub async fn start(config: &GrpcConfig, cancel: CancellationToken) -> Result<Self, Error> {
        let hub = Arc::new(Hub::new(config.agent_id.clone()));
        let mut tasks = Vec::new();
        let mut local_addr = None;
        if let Some(addr) = config.listen {
            config.security.check_listen(addr)?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?;
            local_addr = listener.local_addr().ok();
            let (router, _health, _token) =
                server::router(&config.security, hub.clone(), cancel.clone()).await?;
            info!("serving FlowStream on {addr}");
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = server::serve(router, listener, cancel).await {
                    warn!("gRPC server stopped: {e}");
                }
            }));
        }
        let mut exporters = Vec::new();
        for url in &config.collectors {
            let exporter = ExporterConfig::new(
                url.clone(),
                config.agent_id.clone(),
                config.export_buffer,
                config.security.clone(),
            );
            let (handle, task) = client::spawn(exporter, cancel.clone())?;
            exporters.push(handle);
            tasks.push(task);
        }
        Ok(Self {
            local_addr,
            exporters,
            hub,
            tasks,
        })
    }

    /// The server's bound address, when serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Current FlowStream subscribers.
    pub fn subscribers(&self) -> usize {
        self.hub.subscribers()
    }

    /// The exporters, one per collector, in `--collector` order.
    pub fn exporters(&self) -> &[ExporterHandle] {
        &self.exporters
    }

    /// Hands a drained batch to every exporter and subscriber. Never blocks.
    pub fn offer(&self, batch: &Batch) {
        for e in &self.exporters {
            e.offer(batch);
        }
        self.hub.publish(&batch.records);
    }

    /// Waits for the exporters' flush and the server's stop (after `cancel`).
    pub async fn finish(self) {
        for task in self.tasks {
            if let Err(e) = task.await {
                warn!("a gRPC task failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    use tokio_stream::StreamExt as _;
    use tonic::transport::Channel;

    use super::*;
    use crate::{
        drain::Counters,
        export::grpc::{
            convert::{self, tests::full_record},
            proto::{self, flow_stream_client::FlowStreamClient, subscribe_event::Event},
            server::SUBSCRIBER_BUFFER,
        },
        flow::FlowRecord,
    };

    /// Even i: TCP, odd: UDP; i % 3 == 0: from 10.0.0.1; i % 5 == 0: 1500 bytes.
    fn rec(i: u64) -> FlowRecord {
        let mut r = full_record(i);
        r.proto = if i.is_multiple_of(2) { 6 } else { 17 };
        r.src = if i.is_multiple_of(3) {
            Ipv4Addr::new(10, 0, 0, 1).into()
        } else {
            Ipv4Addr::new(192, 0, 2, 1).into()
        };
        r.bytes = if i.is_multiple_of(5) { 1500 } else { 500 };
        r.packets = i;
        r
    }

    fn batch(from: u64, n: u64) -> Batch {
        Batch {
            start: convert::time_from_ns(0),
            end: convert::time_from_ns(1),
            records: (from..from + n).map(rec).collect(),
            counters: Counters::default(),
            dropped_records: 0,
            sampling_rate: 1,
        }
    }

    async fn start() -> (AgentGrpc, CancellationToken, Channel) {
        let cancel = CancellationToken::new();
        let config = GrpcConfig {
            collectors: vec![],
            export_buffer: 10,
            agent_id: "edge-1".into(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            security: Security::default(),
        };
        let grpc = AgentGrpc::start(&config, cancel.clone()).await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (grpc, cancel, ch)
    }

    /// Counts records (checking each with `check`) and gaps until the stream ends.
    fn reader(
        mut s: tonic::Streaming<proto::SubscribeEvent>,
        check: fn(&proto::FlowRecord) -> bool,
    ) -> (Arc<AtomicU64>, JoinHandle<u64>) {
        let n = Arc::new(AtomicU64::new(0));
        let count = n.clone();
        let task = tokio::spawn(async move {
            let mut gaps = 0;
            while let Some(Ok(e)) = s.next().await {
                match e.event {
                    Some(Event::Record(r)) => {
                        assert!(check(&r), "unexpected record {r:?}");
                        assert_eq!(r.agent_id, "edge-1");
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => gaps += 1,
                }
            }
            gaps
        });
        (n, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribers_get_exactly_their_share_and_a_stalled_one_stalls_nobody() {
        let (grpc, cancel, ch) = start().await;
        let mut client = FlowStreamClient::new(ch.clone());
        let tcp = client
            .subscribe(proto::SubscribeRequest {
                filter: Some(proto::Filter {
                    protocols: vec![6],
                    ..Default::default()
                }),
                sample_one_in: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let big_from_ten = client
            .subscribe(proto::SubscribeRequest {
                filter: Some(proto::Filter {
                    prefixes: vec![proto::Prefix {
                        addr: vec![10, 0, 0, 0],
                        len: 8,
                    }],
                    min_bytes: 1000,
                    ..Default::default()
                }),
                sample_one_in: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let sampled = client
            .subscribe(proto::SubscribeRequest {
                filter: None,
                sample_one_in: 10,
            })
            .await
            .unwrap()
            .into_inner();
        // Subscribes and then never reads.
        let mut stalled = client
            .subscribe(proto::SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
        let (n_tcp, t_tcp) = reader(tcp, |r| r.proto == 6);
        let (n_big, t_big) = reader(big_from_ten, |r| {
            r.src_addr == [10, 0, 0, 1] && r.bytes >= 1000
        });
        let (n_sampled, t_sampled) = reader(sampled, |r| r.packets % 10 == 0);

        let total = 25_000;
        assert!(total > 6 * SUBSCRIBER_BUFFER as u64);
        let chunk = 1000;
        for from in (0..total).step_by(chunk as usize) {
            grpc.offer(&batch(from, chunk));
            let sent = from + chunk;
            // Keep the readers within their buffers; the stalled one is not waited for.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while n_tcp.load(Ordering::SeqCst) < sent / 2
                || n_big.load(Ordering::SeqCst) < sent.div_ceil(15)
                || n_sampled.load(Ordering::SeqCst) < sent / 10
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "readers stalled at {sent}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert_eq!(n_tcp.load(Ordering::SeqCst), total / 2);
        assert_eq!(n_big.load(Ordering::SeqCst), total.div_ceil(15));
        assert_eq!(n_sampled.load(Ordering::SeqCst), total / 10);

        // The stalled one, reading at last: records it got plus the gaps it
        // is told about (a gap goes out before its next record) add up to
        // everything published.
        let (mut records, mut missed, mut published) = (0u64, 0u64, total);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{records} + {missed} != {published}"
            );
            match tokio::time::timeout(Duration::from_millis(300), stalled.next()).await {
                Ok(Some(Ok(proto::SubscribeEvent {
                    event: Some(Event::Record(_)),
                }))) => records += 1,
                Ok(Some(Ok(proto::SubscribeEvent {
                    event: Some(Event::Gap(g)),
                }))) => missed += g.missed_records,
                Ok(other) => panic!("stalled stream ended: {other:?}"),
                Err(_) if missed > 0 && records + missed == published => break,
                Err(_) => {
                    grpc.offer(&batch(published, 1));
                    published += 1;
                }
            }
        }
        assert!(missed > 0);

        // Health and reflection are served.
        let health = tonic_health::pb::health_client::HealthClient::new(ch.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: "flowagent.v1.FlowStream".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            health.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut refl = ServerReflectionClient::new(ch.clone())
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            refl.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "flowagent.v1.Collector",
                "flowagent.v1.FlowStream",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection"
            ]
        );

        cancel.cancel();
        drop(stalled);
        grpc.finish().await;
        assert_eq!(t_tcp.await.unwrap(), 0, "the TCP subscriber saw gaps");
        assert_eq!(t_big.await.unwrap(), 0);
        assert_eq!(t_sampled.await.unwrap(), 0);
    }
}
