//! `FlowStream.Subscribe`: live records for analytics services, from the
//! agent (every drained batch) and the collector (every stored batch).
//!
//! The [`Hub`] fans records out to subscribers. Invariants: publishing never
//! blocks or awaits (it holds a std mutex only for `try_send`s), so the
//! drain and other subscribers never wait for a slow one. Each subscriber
//! has its own bounded buffer of [`SUBSCRIBER_BUFFER`] events; records that
//! do not fit are counted, and the subscriber gets a `Gap` event with the
//! count as soon as there is room at a publish (before any later record). Subscribers that went away are removed on
//! the next publish.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use log::{info, warn};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Response, Status,
    transport::{
        Server,
        server::{Router, TcpIncoming},
    },
};
use tonic_health::server::HealthReporter;

use super::{
    convert,
    proto::{self, subscribe_event::Event},
    security::{self, Security, TokenCheck},
};
use crate::flow::FlowRecord;

/// Events buffered per subscriber before records are dropped for it.
pub const SUBSCRIBER_BUFFER: usize = 4096;
/// Most concurrent subscribers; more get `RESOURCE_EXHAUSTED`.
pub const MAX_SUBSCRIBERS: usize = 256;

type EventTx = mpsc::Sender<Result<proto::SubscribeEvent, Status>>;

/// A checked subscription filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    interfaces: Vec<String>,
    protocols: Vec<u32>,
    prefixes: Vec<(IpAddr, u8)>,
    asns: Vec<u32>,
    min_bytes: u64,
}

impl Filter {
    /// Checks a request's filter; bad prefixes are `INVALID_ARGUMENT`.
    pub fn from_proto(f: proto::Filter) -> Result<Self, Status> {
        let prefixes = f
            .prefixes
            .iter()
            .map(
                |p| match convert::prefix_from_parts("prefixes", &p.addr, p.len) {
                    Ok(Some(prefix)) => Ok(prefix),
                    Ok(None) => Err(Status::invalid_argument(
                        "filter prefix with an empty address",
                    )),
                    Err(e) => Err(Status::invalid_argument(format!("filter: {e}"))),
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(Self {
            interfaces: f.interfaces,
            protocols: f.protocols,
            prefixes,
            asns: f.asns,
            min_bytes: f.min_bytes,
        })
    }

    /// Whether `r` passes every non-empty criterion.
    pub fn matches(&self, r: &proto::FlowRecord) -> bool {
        let iface = |n: &Option<String>| n.as_ref().is_some_and(|n| self.interfaces.contains(n));
        let addr_in = |bytes: &[u8]| {
            convert::addr_from_bytes("", bytes).is_ok_and(|a| {
                self.prefixes
                    .iter()
                    .any(|&(net, len)| contains(net, len, a))
            })
        };
        r.bytes >= self.min_bytes
            && (self.interfaces.is_empty() || iface(&r.iface_in) || iface(&r.iface_out))
            && (self.protocols.is_empty() || self.protocols.contains(&r.proto))
            && (self.prefixes.is_empty() || addr_in(&r.src_addr) || addr_in(&r.dst_addr))
            && (self.asns.is_empty()
                || [r.as_src, r.as_dst, r.peer_as_src, r.peer_as_dst]
                    .iter()
                    .any(|a| self.asns.contains(a)))
    }
}

/// Whether `addr` is inside `net/len` (same family only).
fn contains(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    let (net, addr, bits) = match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(n).into(), u32::from(a).into(), 32),
        (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
        _ => return false,
    };
    let shift = bits - u32::from(len);
    // len == 0 matches all; checked_shr covers shift == 128.
    net.checked_shr(shift).unwrap_or(0) == addr.checked_shr(shift).unwrap_or(0)
}

struct Subscriber {
    id: u64,
    filter: Filter,
    /// Deliver 1 in this many matches.
    sample: u64,
    matched: u64,
    /// Records dropped since the last event that got through.
    missed: u64,
    tx: EventTx,
}

impl Subscriber {
    /// Tells the subscriber what it missed, if anything and if there is
    /// room; false when the subscriber has gone.
    fn flush_gap(&mut self) -> bool {
        if self.missed == 0 {
            return true;
        }
        let gap = proto::SubscribeEvent {
            event: Some(Event::Gap(proto::Gap {
                missed_records: self.missed,
            })),
        };
        match self.tx.try_send(Ok(gap)) {
            Ok(()) => {
                self.missed = 0;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Offers one matching record; false when the subscriber has gone.
    fn offer(&mut self, r: &proto::FlowRecord) -> bool {
        self.matched += 1;
        if !(self.matched - 1).is_multiple_of(self.sample) {
            return true;
        }
        if !self.flush_gap() {
            return false;
        }
        if self.missed > 0 {
            // Still no room: this one is missed too.
            self.missed += 1;
            return true;
        }
        let event = proto::SubscribeEvent {
            event: Some(Event::Record(r.clone())),
        };
        match self.tx.try_send(Ok(event)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.missed += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Fans records out to subscribers.
#[derive(Default)]
pub struct Hub {
    subscribers: Mutex<(u64, Vec<Subscriber>)>,
    /// Agent id stamped on records published from the agent.
    agent_id: String,
}

impl Hub {
    /// A hub that stamps `agent_id` on the agent's own records.
    pub fn new(agent_id: String) -> Self {
        Self {
            subscribers: Mutex::default(),
            agent_id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Subscriber>)> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a push, a retain or counter updates): keep going.
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends every subscription (their streams finish).
    pub fn close(&self) {
        let n = std::mem::take(&mut self.lock().1).len();
        if n > 0 {
            info!("closed {n} subscriptions");
        }
    }

    /// Current number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.lock().1.len()
    }

    /// Registers a subscriber and returns its event stream.
    pub fn subscribe(
        &self,
        filter: Filter,
        sample_one_in: u32,
    ) -> Result<ReceiverStream<Result<proto::SubscribeEvent, Status>>, Status> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut guard = self.lock();
        let (next_id, subs) = &mut *guard;
        subs.retain(|s| !s.tx.is_closed());
        if subs.len() >= MAX_SUBSCRIBERS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_SUBSCRIBERS} subscribers already"
            )));
        }
        *next_id += 1;
        subs.push(Subscriber {
            id: *next_id,
            filter,
            sample: u64::from(sample_one_in.max(1)),
            matched: 0,
            missed: 0,
            tx,
        });
        info!("subscriber {next_id} joined ({} now)", subs.len());
        Ok(ReceiverStream::new(rx))
    }

    /// Offers the agent's records to every subscriber. Never blocks.
    pub fn publish<'a>(&self, records: impl IntoIterator<Item = &'a FlowRecord>) {
        if self.lock().1.is_empty() {
            return;
        }
        let msgs: Vec<_> = records
            .into_iter()
            .map(|r| convert::to_proto(r, &self.agent_id))
            .collect();
        self.publish_proto(&msgs);
    }

    /// Offers records (already messages) to every subscriber. Never blocks.
    pub fn publish_proto(&self, records: &[proto::FlowRecord]) {
        let mut guard = self.lock();
        let subs = &mut guard.1;
        subs.retain_mut(|s| {
            // A gap is told at the next publish (every drain interval on the
            // agent) even when no matching record follows.
            if !s.flush_gap() {
                info!("subscriber {} left", s.id);
                return false;
            }
            for r in records {
                if s.filter.matches(r) && !s.offer(r) {
                    info!("subscriber {} left", s.id);
                    return false;
                }
            }
            true
        });
    }
}

/// A server with what the agent and the collector both serve:
/// `FlowStream` (token-checked), gRPC health (`grpc.health.v1`, with
/// `FlowStream` and the empty service name SERVING) and server reflection
/// (v1) for the `flowagent.v1` API, over TLS when configured. Returns the
/// router, to add more services, and the token check for them.
/// Subscription streams end when `cancel` fires.
pub async fn router(
    security: &Security,
    hub: Arc<Hub>,
    cancel: CancellationToken,
) -> Result<(Router, HealthReporter, TokenCheck), security::Error> {
    let token = TokenCheck::new(security.token()?);
    let mut builder = Server::builder();
    if let Some(tls) = security.server_tls()? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| security::Error::Invalid {
                flag: "--tls-cert",
                reason: format!("TLS setup: {e}"),
            })?;
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::flow_stream_server::FlowStreamServer<FlowStreamService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| security::Error::Invalid {
            flag: "--grpc-listen",
            reason: format!("reflection service: {e}"),
        })?;
    let closing = hub.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        closing.close();
    });
    let flows = proto::flow_stream_server::FlowStreamServer::with_interceptor(
        FlowStreamService::new(hub),
        token.clone(),
    );
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(flows);
    Ok((router, health, token))
}

/// How long a stopping server waits for open calls to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `cancel`, then for at most
/// [`SHUTDOWN_GRACE`] while open calls finish.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = router.serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    tokio::select! {
        served = serving => served,
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            warn!("calls still open {SHUTDOWN_GRACE:?} after shutdown began; closing");
            Ok(())
        }
    }
}

/// The `FlowStream` service over a [`Hub`].
pub struct FlowStreamService {
    hub: Arc<Hub>,
}

impl FlowStreamService {
    /// Serves subscriptions from `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl proto::flow_stream_server::FlowStream for FlowStreamService {
    type SubscribeStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::SubscribeEvent, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let req = request.into_inner();
        let filter = Filter::from_proto(req.filter.unwrap_or_default()).inspect_err(|e| {
            warn!("refused a subscription from {peer:?}: {}", e.message());
        })?;
        let stream = self.hub.subscribe(filter, req.sample_one_in)?;
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio_stream::StreamExt as _;

    use super::*;
    use crate::export::grpc::convert::tests::full_record;

    fn msg(n: u64) -> proto::FlowRecord {
        convert::to_proto(&full_record(n), "a")
    }

    #[test]
    fn filter_criteria() {
        let r = msg(0); // 192.0.2.1 -> 2001:db8::1, tcp, eth1 -> eth0, 15000 bytes
        let f = |f: proto::Filter| Filter::from_proto(f).unwrap().matches(&r);
        assert!(f(proto::Filter::default()));
        assert!(f(proto::Filter {
            interfaces: vec!["eth0".into()],
            ..Default::default()
        }));
        assert!(!f(proto::Filter {
            interfaces: vec!["eth9".into()],
            ..Default::default()
        }));
        assert!(f(proto::Filter {
            protocols: vec![17, 6],
            ..Default::default()
        }));
        assert!(!f(proto::Filter {
            protocols: vec![17],
            ..Default::default()
        }));
        let pfx = |a: IpAddr, len| proto::Prefix {
            addr: convert::addr_to_bytes(a),
            len,
        };
        assert!(f(proto::Filter {
            prefixes: vec![pfx(Ipv4Addr::new(192, 0, 2, 0).into(), 24)],
            ..Default::default()
        }));
        assert!(f(proto::Filter {
            prefixes: vec![pfx("2001:db8::".parse().unwrap(), 32)],
            ..Default::default()
        }));
        assert!(f(proto::Filter {
            prefixes: vec![pfx("::".parse().unwrap(), 0)],
            ..Default::default()
        }));
        assert!(!f(proto::Filter {
            prefixes: vec![pfx(Ipv4Addr::new(192, 0, 3, 0).into(), 24)],
            ..Default::default()
        }));
        assert!(f(proto::Filter {
            asns: vec![64_502],
            ..Default::default()
        }));
        assert!(!f(proto::Filter {
            asns: vec![1],
            ..Default::default()
        }));
        assert!(f(proto::Filter {
            min_bytes: 15_000,
            ..Default::default()
        }));
        assert!(!f(proto::Filter {
            min_bytes: 15_001,
            ..Default::default()
        }));
        let bad = proto::Filter {
            prefixes: vec![proto::Prefix {
                addr: vec![1, 2, 3, 4],
                len: 33,
            }],
            ..Default::default()
        };
        assert_eq!(
            Filter::from_proto(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn slow_subscriber_gets_gap_and_does_not_stall_others() {
        let hub = Hub::default();
        let mut slow = hub.subscribe(Filter::default(), 1).unwrap();
        let mut sampled = hub.subscribe(Filter::default(), 3).unwrap();
        let total = SUBSCRIBER_BUFFER as u64 + 10;
        let records: Vec<_> = (0..total).map(msg).collect();
        hub.publish_proto(&records);
        // The sampled one got 1 in 3: ceil(total / 3), all fit.
        let want = total.div_ceil(3);
        for i in 0..want {
            match sampled.next().await.unwrap().unwrap().event.unwrap() {
                Event::Record(r) => assert_eq!(r.packets, 10 + 3 * i),
                Event::Gap(g) => panic!("unexpected gap {g:?}"),
            }
        }
        // The slow one has a full buffer; 10 were missed.
        for _ in 0..SUBSCRIBER_BUFFER {
            assert!(matches!(
                slow.next().await.unwrap().unwrap().event,
                Some(Event::Record(_))
            ));
        }
        // Told at the next publish, even one without records.
        hub.publish_proto(&[]);
        match slow.next().await.unwrap().unwrap().event.unwrap() {
            Event::Gap(g) => assert_eq!(g.missed_records, 10),
            Event::Record(_) => panic!("expected a gap"),
        }
        hub.publish_proto(&[msg(1)]);
        assert!(matches!(
            slow.next().await.unwrap().unwrap().event,
            Some(Event::Record(_))
        ));
        drop(slow);
        hub.publish_proto(&[msg(2)]);
        assert_eq!(hub.subscribers(), 1);
    }
}
