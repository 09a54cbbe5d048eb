//! The speaker: TCP listener and optional active connects (tokio), one task
//! per session driving a [`super::fsm::Session`], and the RIB owner.
//!
//! The RIB owner runs on its own thread (`bgp-rib`) and is the only code
//! that mutates the [`Rib`]: dropping a full table when a session goes down
//! is a second of CPU that must not stall the async runtime. Sessions send it
//! messages (`RibMsg`) over a bounded channel; when the channel is full a session
//! stops reading its socket, so a fast peer is slowed by TCP instead of
//! growing a queue. A neighbour over its prefix limit is told so with a
//! NOTIFICATION (Cease, subcode 1) and its routes are dropped.
//!
//! Connections from addresses that are not configured neighbours get a
//! NOTIFICATION (Cease, Connection Rejected) and are closed; a second
//! connection from a neighbour that already has a session gets Cease,
//! Connection Collision Resolution.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use log::{debug, info, warn};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::mpsc,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Error,
    fsm::{Action, CloseReason, Session, SessionParams},
    message::{self, HEADER_LEN, MAX_LEN, Notification, code},
};
use crate::rib::{self, Rib, RibHandle, RibUpdate};

/// Messages queued between the sessions and the RIB owner.
const RIB_QUEUE: usize = 64;
/// Pause between active connection attempts.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// One configured neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborConfig {
    /// Its address; connections from anywhere else are refused.
    pub address: IpAddr,
    /// The AS it must announce in its OPEN (equal to ours for iBGP).
    pub asn: u32,
    /// Connect to it as well as accepting from it (at `port`).
    pub active: bool,
    /// Port for active connects (179 unless told otherwise).
    pub port: u16,
}

/// Speaker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Where to listen; `None` for active connects only.
    pub listen: Option<SocketAddr>,
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Hold time we propose, seconds.
    pub hold_time: u16,
    /// The neighbours.
    pub neighbors: Vec<NeighborConfig>,
    /// Most (prefix, path id) pairs accepted from one neighbour.
    pub max_prefixes: usize,
}

/// State of one neighbour as `bgp routes` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStatus {
    /// The neighbour's AS.
    pub asn: u32,
    /// idle, open-sent, open-confirm, established.
    pub state: &'static str,
    /// When the state last changed.
    pub since: SystemTime,
    /// UPDATE messages received in this session.
    pub updates: u64,
    /// UPDATEs handled by RFC 7606 treat-as-withdraw.
    pub treated_as_withdraw: u64,
    /// (prefix, path id) pairs held from this neighbour.
    pub paths: usize,
    /// How the last session ended.
    pub last_error: Option<String>,
}

/// Shared, cheap-to-clone view of every neighbour's [`SessionStatus`].
#[derive(Clone, Debug, Default)]
pub struct Status(Arc<Mutex<BTreeMap<IpAddr, SessionStatus>>>);

impl Status {
    /// A copy of the current status of every neighbour.
    pub fn snapshot(&self) -> BTreeMap<IpAddr, SessionStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, neighbor: IpAddr, f: impl FnOnce(&mut SessionStatus)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(&neighbor) {
            f(s);
        }
    }

    fn set_state(&self, neighbor: IpAddr, state: &'static str) {
        self.update(neighbor, |s| {
            s.state = state;
            s.since = SystemTime::now();
        });
    }
}

/// What sessions tell the RIB owner.
#[derive(Debug)]
enum RibMsg {
    Up {
        neighbor: IpAddr,
        kill: CancellationToken,
    },
    Routes {
        neighbor: IpAddr,
        updates: Vec<RibUpdate>,
    },
    Down {
        neighbor: IpAddr,
    },
}

/// The BGP speaker component.
pub struct Speaker {
    config: SpeakerConfig,
    rib: RibHandle,
    status: Status,
    listener: Option<TcpListener>,
}

impl Speaker {
    /// Binds the listener (if any) so that a port conflict is a setup error.
    pub async fn bind(config: SpeakerConfig, rib: RibHandle) -> Result<Self, Error> {
        let listener = match config.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Listen { addr, source })?,
            ),
            None => None,
        };
        let status = Status::default();
        {
            let mut map = status.0.lock().unwrap_or_else(|e| e.into_inner());
            for n in &config.neighbors {
                map.insert(
                    n.address,
                    SessionStatus {
                        asn: n.asn,
                        state: "idle",
                        since: SystemTime::now(),
                        updates: 0,
                        treated_as_withdraw: 0,
                        paths: 0,
                        last_error: None,
                    },
                );
            }
        }
        Ok(Self {
            config,
            rib,
            status,
            listener,
        })
    }

    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The sessions' status, for `bgp routes` and logs.
    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Runs until `cancel`: accepts, connects, runs sessions, owns the RIB.
    /// On cancel every session sends Cease (Administrative Shutdown).
    pub async fn run(self, cancel: CancellationToken) {
        let (tx, rx) = mpsc::channel(RIB_QUEUE);
        let rib = Rib::new(self.rib.clone(), self.config.max_prefixes);
        let status = self.status.clone();
        let owner = std::thread::Builder::new()
            .name("bgp-rib".into())
            .spawn(move || own_rib(rib, rx, status));
        if let Err(e) = &owner {
            warn!("cannot start the BGP RIB thread, BGP is off: {e}");
            return;
        }
        let ctx = Arc::new(Ctx {
            config: self.config,
            status: self.status,
            tx,
            active: Mutex::new(HashSet::new()),
            tracker: TaskTracker::new(),
            cancel: cancel.clone(),
        });
        for n in ctx.config.neighbors.iter().filter(|n| n.active) {
            ctx.tracker.spawn(connect_loop(Arc::clone(&ctx), n.clone()));
        }
        if let Some(listener) = self.listener {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => accept(&ctx, stream, peer),
                        Err(e) => {
                            warn!("BGP accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        } else {
            cancel.cancelled().await;
        }
        ctx.tracker.close();
        ctx.tracker.wait().await;
        // The sessions are gone; dropping the last sender ends the RIB thread.
        drop(ctx);
        if let Ok(handle) = owner {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

struct Ctx {
    config: SpeakerConfig,
    status: Status,
    tx: mpsc::Sender<RibMsg>,
    /// Neighbours with a session (one at a time).
    active: Mutex<HashSet<IpAddr>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Ctx {
    fn claim(self: &Arc<Self>, neighbor: IpAddr) -> Option<Claim> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.insert(neighbor).then(|| Claim {
            ctx: Arc::clone(self),
            neighbor,
        })
    }
}

/// A neighbour's session slot, released on drop.
struct Claim {
    ctx: Arc<Ctx>,
    neighbor: IpAddr,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut active = self.ctx.active.lock().unwrap_or_else(|e| e.into_inner());
        active.remove(&self.neighbor);
    }
}

fn accept(ctx: &Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let ip = canonical(peer.ip());
    let Some(n) = ctx
        .config
        .neighbors
        .iter()
        .find(|n| n.address == ip)
        .cloned()
    else {
        info!("BGP: refused connection from {peer}: not a configured neighbour");
        ctx.tracker.spawn(reject(stream, code::CONNECTION_REJECTED));
        return;
    };
    let Some(claim) = ctx.claim(ip) else {
        info!("BGP: second connection from {peer} refused: a session exists");
        ctx.tracker.spawn(reject(stream, code::COLLISION));
        return;
    };
    ctx.tracker
        .spawn(session(Arc::clone(ctx), claim, stream, n));
}

async fn reject(mut stream: TcpStream, subcode: u8) {
    let n = Notification::new(code::CEASE, subcode, []);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&n.encode())).await;
    let _ = stream.shutdown().await;
}

async fn connect_loop(ctx: Arc<Ctx>, n: NeighborConfig) {
    let addr = SocketAddr::new(n.address, n.port);
    loop {
        if let Some(claim) = ctx.claim(n.address) {
            let connect = tokio::time::timeout(CONNECT_RETRY, TcpStream::connect(addr));
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                r = connect => match r {
                    Ok(Ok(stream)) => session(Arc::clone(&ctx), claim, stream, n.clone()).await,
                    Ok(Err(e)) => debug!("BGP: connect to {addr}: {e}"),
                    Err(_) => debug!("BGP: connect to {addr}: timed out"),
                },
            }
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(CONNECT_RETRY) => {}
        }
    }
}

/// v4-mapped peers (dual-stack listener) are IPv4 neighbours.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

async fn session(ctx: Arc<Ctx>, claim: Claim, stream: TcpStream, n: NeighborConfig) {
    let neighbor = n.address;
    let _ = stream.set_nodelay(true);
    let params = SessionParams {
        local_as: ctx.config.local_as,
        router_id: ctx.config.router_id,
        neighbor,
        peer_as: n.asn,
        hold_time: ctx.config.hold_time,
    };
    let kill = CancellationToken::new();
    let result = drive(&ctx, stream, params, &kill).await;
    let reason = match result {
        Ok(reason) => reason,
        Err(e) => format!(
            "{}",
            Error::Io {
                neighbor,
                source: e
            }
        ),
    };
    info!("BGP: session with {neighbor} closed: {reason}");
    // Routes go before the slot is released, so a new session's routes are
    // never dropped by the old session's Down.
    let _ = ctx.tx.send(RibMsg::Down { neighbor }).await;
    ctx.status.update(neighbor, |s| {
        s.state = "idle";
        s.since = SystemTime::now();
        s.last_error = Some(reason);
    });
    drop(claim);
}

/// Runs one session; returns how it ended.
async fn drive(
    ctx: &Ctx,
    stream: TcpStream,
    params: SessionParams,
    kill: &CancellationToken,
) -> std::io::Result<String> {
    let neighbor = params.neighbor;
    let (mut rd, mut wr) = stream.into_split();
    let (mut fsm, actions) = Session::start(params, Instant::now());
    ctx.status.set_state(neighbor, "open-sent");
    ctx.status.update(neighbor, |s| {
        s.updates = 0;
        s.treated_as_withdraw = 0;
    });
    if let Some(end) = perform(ctx, neighbor, kill, &mut wr, actions).await? {
        return Ok(end);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(2 * MAX_LEN);
    let mut chunk = vec![0u8; MAX_LEN];
    loop {
        let deadline = fsm.next_deadline();
        let actions = tokio::select! {
            _ = ctx.cancel.cancelled() => {
                fsm.close(Notification::new(code::CEASE, code::ADMIN_SHUTDOWN, []))
            }
            _ = kill.cancelled() => {
                fsm.close(Notification::new(code::CEASE, code::MAX_PREFIXES, []))
            }
            _ = sleep_until(deadline) => fsm.on_timer(Instant::now()),
            read = rd.read(&mut chunk) => {
                let got = read?;
                if got == 0 {
                    return Ok("connection closed by the neighbour".into());
                }
                buf.extend_from_slice(&chunk[..got]);
                let mut actions = Vec::new();
                let mut start = 0;
                // Every complete message in the buffer; a partial one waits.
                while buf.len() - start >= HEADER_LEN {
                    let header: &[u8; HEADER_LEN] = buf[start..start + HEADER_LEN]
                        .try_into()
                        .unwrap_or(&[0; HEADER_LEN]);
                    match message::check_header(header) {
                        Err(n) => {
                            actions.extend(fsm.close(n));
                            break;
                        }
                        Ok((len, _)) if buf.len() - start >= len => {
                            actions.extend(fsm.on_message(&buf[start..start + len], Instant::now()));
                            start += len;
                            if actions.iter().any(|a| matches!(a, Action::Close(_))) {
                                break;
                            }
                        }
                        Ok(_) => break,
                    }
                }
                buf.drain(..start);
                actions
            }
        };
        if let Some(end) = perform(ctx, neighbor, kill, &mut wr, actions).await? {
            return Ok(end);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Carries out FSM actions; `Some(reason)` when the session is over.
async fn perform(
    ctx: &Ctx,
    neighbor: IpAddr,
    kill: &CancellationToken,
    wr: &mut OwnedWriteHalf,
    actions: Vec<Action>,
) -> std::io::Result<Option<String>> {
    for action in actions {
        match action {
            Action::Send(bytes) => wr.write_all(&bytes).await?,
            Action::Established(n) => {
                info!(
                    "BGP: session with {neighbor} (AS{}) established, hold {}s, IPv4 {} IPv6 {} ADD-PATH {}/{}",
                    n.open.asn,
                    n.hold_time,
                    n.open.ipv4,
                    n.open.ipv6,
                    n.open.add_path_v4,
                    n.open.add_path_v6
                );
                ctx.status.set_state(neighbor, "established");
                let _ = ctx
                    .tx
                    .send(RibMsg::Up {
                        neighbor,
                        kill: kill.clone(),
                    })
                    .await;
            }
            Action::Routes {
                updates,
                treated_as_withdraw,
            } => {
                ctx.status.update(neighbor, |s| {
                    s.updates += 1;
                    s.treated_as_withdraw += u64::from(treated_as_withdraw);
                });
                if treated_as_withdraw {
                    warn!(
                        "BGP: malformed UPDATE from {neighbor}: its routes are treated as withdrawn (RFC 7606)"
                    );
                }
                let _ = ctx.tx.send(RibMsg::Routes { neighbor, updates }).await;
            }
            Action::Close(reason) => {
                let _ = wr.shutdown().await;
                return Ok(Some(match reason {
                    CloseReason::Sent(n) => format!("sent NOTIFICATION {n}"),
                    CloseReason::Received(n) => format!("received NOTIFICATION {n}"),
                }));
            }
        }
    }
    Ok(None)
}

/// Route changes after which the RIB owner, once idle, hands the heap's
/// free memory back to the system.
const TRIM_AFTER_CHANGES: usize = 50_000;

/// The RIB owner loop (its own thread).
fn own_rib(mut rib: Rib, mut rx: mpsc::Receiver<RibMsg>, status: Status) {
    let mut kills: HashMap<IpAddr, CancellationToken> = HashMap::new();
    let mut changes = 0;
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                if changes >= TRIM_AFTER_CHANGES {
                    release_free_heap();
                    changes = 0;
                }
                match rx.blocking_recv() {
                    Some(msg) => msg,
                    None => break,
                }
            }
        };
        match msg {
            RibMsg::Up { neighbor, kill } => {
                kills.insert(neighbor, kill);
            }
            RibMsg::Routes { neighbor, updates } => {
                for u in updates {
                    changes += u.announced.len() + u.withdrawn.len();
                    if let Err(
                        e @ (rib::Error::PrefixLimit { .. } | rib::Error::PathLimit { .. }),
                    ) = rib.apply(u)
                    {
                        warn!("BGP: {e}");
                        if let Some(k) = kills.get(&neighbor) {
                            k.cancel();
                        }
                        break;
                    }
                }
                let paths = rib.paths_from(neighbor);
                status.update(neighbor, |s| s.paths = paths);
            }
            RibMsg::Down { neighbor } => {
                kills.remove(&neighbor);
                changes += rib.paths_from(neighbor);
                rib.drop_neighbor(neighbor);
                status.update(neighbor, |s| s.paths = 0);
            }
        }
    }
}

/// Returns the free memory of every malloc arena to the system.
///
/// Why: loading a full table churns through short-lived allocations
/// (UPDATE decoding, tables that double as they grow) on several threads,
/// and glibc keeps the freed pages resident in its arenas. Trimming once
/// the RIB goes idle after a burst returns them; it costs a walk of the
/// heap (milliseconds), rare next to the burst that caused it.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
