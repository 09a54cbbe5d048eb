//! In-process collector tests: a real tonic server on 127.0.0.1:0 and real
//! tonic clients.

use std::{net::SocketAddr, path::Path};

use tokio::{io::AsyncWriteExt as _, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use super::*;
use crate::export::grpc::{
    convert::{self, tests::full_record},
    proto::collector_client::CollectorClient,
    security::TokenAdd,
};

pub(crate) struct Running {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    pub async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub(crate) async fn start(dir: &Path, security: Security) -> Running {
    let collector = Collector::bind(CollectConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        out_dir: dir.to_owned(),
        security,
    })
    .await
    .unwrap();
    let addr = collector.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(collector.run(cancel.clone()));
    Running { addr, cancel, task }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn batch(agent: &str, epoch: u64, id: u64, n: u64) -> proto::FlowBatch {
    proto::FlowBatch {
        agent_id: agent.into(),
        epoch,
        batch_id: id,
        records: (0..n)
            .map(|i| convert::to_proto(&full_record(i), agent))
            .collect(),
        counters: vec![],
        dropped: None,
    }
}

/// Every JSON line in the output directory.
pub(crate) fn lines(dir: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(dir.join(n))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

type Client = CollectorClient<tonic::service::interceptor::InterceptedService<Channel, TokenAdd>>;

fn connect(ch: Channel, token: Option<&str>) -> Client {
    CollectorClient::with_interceptor(ch, TokenAdd::new(token))
}

async fn export(
    client: &mut Client,
    batches: Vec<proto::FlowBatch>,
) -> Vec<Result<(u64, bool), Code>> {
    let mut acks = client
        .export(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    loop {
        match acks.message().await {
            Ok(Some(a)) => out.push(Ok((a.batch_id, a.duplicate))),
            Ok(None) => break,
            Err(status) => {
                out.push(Err(status.code()));
                break;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_after_write_and_drops_redelivered_batches_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), Security::default()).await;
    let mut client = connect(channel(c.addr).await, None);
    let acks = export(
        &mut client,
        vec![
            batch("a", 1, 1, 3),
            batch("a", 1, 2, 2),
            batch("a", 1, 1, 3),
            batch("b", 9, 1, 4),
        ],
    )
    .await;
    assert_eq!(
        acks,
        vec![
            Ok((1, false)),
            Ok((2, false)),
            Ok((1, true)),
            Ok((1, false))
        ]
    );
    assert_eq!(lines(dir.path()).len(), 3 + 2 + 4);
    c.stop().await;

    let c = start(dir.path(), Security::default()).await;
    let mut client = connect(channel(c.addr).await, None);
    let acks = export(&mut client, vec![batch("a", 1, 2, 2), batch("a", 1, 3, 5)]).await;
    assert_eq!(acks, vec![Ok((2, true)), Ok((3, false))]);
    let all = lines(dir.path());
    assert_eq!(all.len(), 3 + 2 + 4 + 5);
    assert_eq!(all.iter().filter(|l| l["agent_id"] == "b").count(), 4);
    assert_eq!(all[0]["bytes"], 15_000);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_codes_and_service_continues() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let out = dir.path().join("out");
    let c = start(
        &out,
        Security {
            token_file: Some(token),
            ..Security::default()
        },
    )
    .await;
    let ch = channel(c.addr).await;

    // No token, wrong token: UNAUTHENTICATED at the call.
    let err = CollectorClient::new(ch.clone())
        .export(tokio_stream::iter(vec![batch("a", 1, 1, 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = CollectorClient::with_interceptor(ch.clone(), TokenAdd::new(Some("nope")))
        .export(tokio_stream::iter(vec![batch("a", 1, 1, 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // FlowStream checks the same token.
    let mut flows =
        crate::export::grpc::proto::flow_stream_client::FlowStreamClient::new(ch.clone());
    let err = flows
        .subscribe(proto::SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let bad_filter = proto::SubscribeRequest {
        filter: Some(proto::Filter {
            prefixes: vec![proto::Prefix {
                addr: vec![1, 2, 3],
                len: 8,
            }],
            ..Default::default()
        }),
        sample_one_in: 0,
    };
    let err = crate::export::grpc::proto::flow_stream_client::FlowStreamClient::with_interceptor(
        ch.clone(),
        TokenAdd::new(Some("s3cret")),
    )
    .subscribe(bad_filter)
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Garbage bytes on the port: the connection is closed, nothing else.
    let mut raw = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage \x16\x03\x01")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut sink),
    )
    .await;

    // Malformed batches: INVALID_ARGUMENT, nothing written.
    let mut client = connect(ch.clone(), Some("s3cret"));
    let mut bad = batch("a", 1, 1, 2);
    bad.records[0].dst_addr = vec![1, 2, 3];
    let acks = export(&mut client, vec![batch("a", 1, 1, 1), bad]).await;
    assert_eq!(acks, vec![Ok((1, false)), Err(Code::InvalidArgument)]);
    let acks = export(&mut client, vec![batch("", 1, 5, 1)]).await;
    assert_eq!(acks, vec![Err(Code::InvalidArgument)]);

    // And the service still works.
    let acks = export(&mut client, vec![batch("a", 1, 2, 2)]).await;
    assert_eq!(acks, vec![Ok((2, false))]);
    assert_eq!(lines(&out).len(), 3);
    c.stop().await;
}

mod with_exporter {
    use std::time::Duration;

    use super::*;
    use crate::{
        drain::{Batch, Counters},
        export::grpc::client::{self, ExportStats, ExporterConfig, ExporterHandle},
    };

    fn drained(first: u64, n: u64) -> Batch {
        Batch {
            start: convert::time_from_ns(first),
            end: convert::time_from_ns(first + 1),
            records: (first..first + n).map(full_record).collect(),
            counters: Counters([1, 2, 3, 4, 5, 6, 0, 0, 0, 0]),
            dropped_records: 0,
            sampling_rate: 1,
        }
    }

    fn exporter(
        addr: SocketAddr,
        capacity: usize,
    ) -> (ExporterHandle, CancellationToken, JoinHandle<()>) {
        let mut config = ExporterConfig::new(
            format!("http://{addr}"),
            "edge-1".into(),
            capacity,
            Security::default(),
        );
        config.max_batch_records = 7;
        config.backoff_min = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(200);
        let cancel = CancellationToken::new();
        let (handle, task) = client::spawn(config, cancel.clone()).unwrap();
        (handle, cancel, task)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn count(lines: &[serde_json::Value], event: &str) -> usize {
        lines.iter().filter(|l| l["event_type"] == event).count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_record_once_across_collector_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let c = start(dir.path(), Security::default()).await;
        let addr = c.addr;
        let (exp, cancel, task) = exporter(addr, 100_000);
        let mut c = Some(c);
        for i in 0..30 {
            exp.offer(&drained(i * 100, 20));
            if i % 10 == 9 {
                // Restart on the same port while batches are in flight.
                c.take().unwrap().stop().await;
                exp.offer(&drained(10_000 + i, 3));
                let collector = Collector::bind(CollectConfig {
                    listen: addr,
                    out_dir: dir.path().to_owned(),
                    security: Security::default(),
                })
                .await
                .unwrap();
                let cancel = CancellationToken::new();
                let task = tokio::spawn(collector.run(cancel.clone()));
                c = Some(Running { addr, cancel, task });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        until("all acknowledged", || exp.stats().queued_items == 0).await;
        let all = lines(dir.path());
        assert_eq!(count(&all, "purge"), 30 * 20 + 3 * 3);
        assert_eq!(count(&all, "counters"), 33);
        let st = exp.stats();
        assert_eq!((st.dropped_records, st.acked_records), (0, 609));
        cancel.cancel();
        task.await.unwrap();
        c.unwrap().stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_collector_drops_oldest_and_reports_exact_count() {
        let dir = tempfile::tempdir().unwrap();
        // A port with nobody listening (yet).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (exp, cancel, task) = exporter(addr, 50);
        for i in 0..10 {
            exp.offer(&drained(i * 10, 10));
        }
        // 110 items offered; the 60 oldest (5 intervals of 10 records and
        // their counters, and 5 records) are gone; memory stays at 50 items.
        assert_eq!(
            exp.stats(),
            ExportStats {
                queued_items: 50,
                dropped_records: 55,
                dropped_counters: 5,
                ..exp.stats()
            }
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(exp.stats().session_errors >= 1);
        let collector = Collector::bind(CollectConfig {
            listen: addr,
            out_dir: dir.path().to_owned(),
            security: Security::default(),
        })
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(collector.run(stop.clone()));
        until("the report acknowledged", || {
            let st = exp.stats();
            st.queued_items == 0 && st.reported_dropped_records == 55
        })
        .await;
        let all = lines(dir.path());
        assert_eq!(count(&all, "purge"), 45);
        assert_eq!(count(&all, "counters"), 5);
        let dropped: Vec<_> = all
            .iter()
            .filter(|l| l["event_type"] == "dropped")
            .collect();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0]["dropped_records"], 55);
        assert_eq!(dropped[0]["dropped_counters"], 5);
        assert_eq!(dropped[0]["agent_id"], "edge-1");
        cancel.cancel();
        task.await.unwrap();
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}

mod tls {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    use super::*;
    use crate::{
        drain::{Batch, Counters},
        export::grpc::client::{self, ExporterConfig},
    };

    struct Pki {
        ca: std::path::PathBuf,
        server_cert: std::path::PathBuf,
        server_key: std::path::PathBuf,
        client_cert: std::path::PathBuf,
        client_key: std::path::PathBuf,
    }

    fn pki(dir: &Path) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |name: &str, san: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![san.to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let (server_cert, server_key) = leaf("server", "127.0.0.1");
        let (client_cert, client_key) = leaf("client", "edge-1");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Pki {
            ca: ca_path,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    fn drained(first: u64, n: u64) -> Batch {
        Batch {
            start: convert::time_from_ns(first),
            end: convert::time_from_ns(first + 1),
            records: (first..first + n).map(full_record).collect(),
            counters: Counters::default(),
            dropped_records: 0,
            sampling_rate: 1,
        }
    }

    async fn call_code(ep: Endpoint) -> Code {
        let ch = match ep.connect().await {
            Ok(ch) => ch,
            Err(_) => return Code::Unavailable,
        };
        let result = async {
            let mut acks = connect(ch, Some("s3cret"))
                .export(tokio_stream::iter(vec![batch("x", 1, 1, 1)]))
                .await?
                .into_inner();
            acks.message().await
        }
        .await;
        match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutual_tls_with_token_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki(dir.path());
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let out = dir.path().join("out");
        let c = start(
            &out,
            Security {
                tls_cert: Some(p.server_cert.clone()),
                tls_key: Some(p.server_key.clone()),
                tls_ca: Some(p.ca.clone()),
                token_file: Some(token.clone()),
                insecure: false,
            },
        )
        .await;
        let url = format!("https://{}", c.addr);
        let agent_security = Security {
            tls_cert: Some(p.client_cert.clone()),
            tls_key: Some(p.client_key.clone()),
            tls_ca: Some(p.ca.clone()),
            token_file: Some(token),
            insecure: false,
        };
        let mut config = ExporterConfig::new(url.clone(), "edge-1".into(), 1000, agent_security);
        config.backoff_max = Duration::from_millis(200);
        let cancel = CancellationToken::new();
        let (exp, task) = client::spawn(config, cancel.clone()).unwrap();
        exp.offer(&drained(0, 10));

        let ca = Certificate::from_pem(std::fs::read(&p.ca).unwrap());
        // No client certificate: the server refuses the handshake. Under
        // TLS 1.3 the client only learns it when its first read fails, which
        // tonic reports as UNKNOWN (transport error) rather than UNAVAILABLE.
        let no_cert = Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .domain_name("127.0.0.1")
                    .ca_certificate(ca),
            )
            .unwrap();
        // The code depends on when the client notices (UNKNOWN, CANCELLED,
        // INTERNAL or UNAVAILABLE); the call never succeeds.
        assert_ne!(call_code(no_cert).await, Code::Ok);
        // Plaintext to the TLS port: the client reads a TLS alert where it
        // expects HTTP/2 (INTERNAL or UNKNOWN, by timing).
        let plain = Endpoint::from_shared(format!("http://{}", c.addr)).unwrap();
        assert_ne!(call_code(plain).await, Code::Ok);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while exp.stats().acked_records < 10 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", exp.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        exp.offer(&drained(10, 5));
        while exp.stats().acked_records < 15 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", exp.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            lines(&out)
                .iter()
                .filter(|l| l["event_type"] == "purge")
                .count(),
            15
        );
        cancel.cancel();
        task.await.unwrap();
        c.stop().await;
    }
}
