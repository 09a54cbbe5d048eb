//! The BGP session state machine (RFC 4271 section 8), pure: the caller
//! owns the socket and the clock, feeds complete messages and the current
//! time in, and carries out the returned [`Action`]s.
//!
//! The agent is a passive listener that never announces, so only the part of
//! the FSM after the TCP connection exists is modelled:
//! `OpenSent → OpenConfirm → Established → Closed`. Invariants: every path to
//! `Closed` returns exactly one [`Action::Close`]; nothing is done after
//! `Closed`; any received message restarts the hold timer (RFC 4271 section
//! 4.4 names KEEPALIVE and UPDATE; counting every message is as safe).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use super::{
    message::{self, HEADER_LEN, Notification, OpenInfo, code, kind},
    update::{self, DecodeParams, Decoded},
};
use crate::rib::RibUpdate;

/// Hold time used before the OPENs are exchanged (RFC 4271 section 8: "large", 4 minutes).
pub const OPEN_HOLD: Duration = Duration::from_secs(240);

/// Session state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Our OPEN is sent, waiting for theirs.
    OpenSent,
    /// OPENs exchanged, waiting for the first KEEPALIVE.
    OpenConfirm,
    /// Routes flow.
    Established,
    /// Finished; the connection must be closed.
    Closed,
}

/// Static parameters of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The neighbour's address.
    pub neighbor: IpAddr,
    /// The AS the neighbour must have.
    pub peer_as: u32,
    /// Hold time we propose, seconds (0 or at least 3).
    pub hold_time: u16,
}

/// What the session negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The neighbour's OPEN.
    pub open: OpenInfo,
    /// Negotiated hold time (0: no keepalives, no hold timer).
    pub hold_time: u16,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// We sent this NOTIFICATION.
    Sent(Notification),
    /// The neighbour sent this NOTIFICATION.
    Received(Notification),
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write these bytes.
    Send(Vec<u8>),
    /// The session is up (routes will follow).
    Established(Negotiated),
    /// Apply these route changes; `treated_as_withdraw` counts RFC 7606 events.
    Routes {
        /// The changes.
        updates: Vec<RibUpdate>,
        /// Whether RFC 7606 treat-as-withdraw was applied.
        treated_as_withdraw: bool,
    },
    /// Close the connection (after writing any preceding `Send`).
    Close(CloseReason),
}

/// One BGP session.
#[derive(Debug)]
pub struct Session {
    params: SessionParams,
    state: State,
    negotiated: Option<Negotiated>,
    decode: DecodeParams,
    hold_deadline: Option<Instant>,
    keepalive_deadline: Option<Instant>,
}

impl Session {
    /// A session on a freshly connected socket: sends our OPEN.
    pub fn start(params: SessionParams, now: Instant) -> (Self, Vec<Action>) {
        let open = message::encode_open(params.local_as, params.hold_time, params.router_id);
        let decode = DecodeParams {
            neighbor: params.neighbor,
            asn4: true,
            add_path_v4: false,
            add_path_v6: false,
        };
        let s = Self {
            params,
            state: State::OpenSent,
            negotiated: None,
            decode,
            hold_deadline: Some(now + OPEN_HOLD),
            keepalive_deadline: None,
        };
        (s, vec![Action::Send(open)])
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// What was negotiated, once past OpenSent.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The next time [`Session::on_timer`] must be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.hold_deadline, self.keepalive_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the session with a NOTIFICATION of our choosing (shutdown, prefix limit).
    pub fn close(&mut self, n: Notification) -> Vec<Action> {
        if self.state == State::Closed {
            return Vec::new();
        }
        self.fail(n)
    }

    /// Route refresh requests (RFC 2918) for every negotiated family, when
    /// the neighbour supports it; used to re-learn routes without a reset.
    pub fn refresh(&self) -> Vec<Action> {
        let Some(n) = &self.negotiated else {
            return Vec::new();
        };
        if self.state != State::Established || !n.open.route_refresh {
            return Vec::new();
        }
        let mut out = Vec::new();
        if n.open.ipv4 {
            out.push(Action::Send(message::route_refresh(1, 1)));
        }
        if n.open.ipv6 {
            out.push(Action::Send(message::route_refresh(2, 1)));
        }
        out
    }

    /// Timers: hold timer expiry closes, keepalive timer sends.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if self.state == State::Closed {
            return Vec::new();
        }
        if self.hold_deadline.is_some_and(|d| now >= d) {
            return self.fail(Notification::new(code::HOLD_TIMER, 0, []));
        }
        let mut out = Vec::new();
        if let Some(d) = self.keepalive_deadline
            && now >= d
        {
            out.push(Action::Send(message::keepalive()));
            self.keepalive_deadline = Some(now + self.keepalive_interval());
        }
        out
    }

    /// One complete message (header included, header already checked with
    /// [`message::check_header`]).
    pub fn on_message(&mut self, msg: &[u8], now: Instant) -> Vec<Action> {
        if self.state == State::Closed || msg.len() < HEADER_LEN {
            return Vec::new();
        }
        let msg_type = msg[18];
        let body = &msg[HEADER_LEN..];
        if msg_type == kind::NOTIFICATION {
            self.state = State::Closed;
            let n = Notification::decode(body).unwrap_or_else(|| Notification::new(0, 0, []));
            return vec![Action::Close(CloseReason::Received(n))];
        }
        if let Some(n) = &self.negotiated
            && n.hold_time > 0
        {
            self.hold_deadline = Some(now + Duration::from_secs(u64::from(n.hold_time)));
        }
        match (self.state, msg_type) {
            (State::OpenSent, kind::OPEN) => self.on_open(msg, now),
            (State::OpenSent, _) => {
                self.fail(Notification::new(code::FSM, code::FSM_OPEN_SENT, []))
            }
            (State::OpenConfirm, kind::KEEPALIVE) => {
                self.state = State::Established;
                let n = self.negotiated.clone().unwrap_or_else(|| Negotiated {
                    open: OpenInfo::default(),
                    hold_time: 0,
                });
                vec![Action::Established(n)]
            }
            (State::OpenConfirm, _) => {
                self.fail(Notification::new(code::FSM, code::FSM_OPEN_CONFIRM, []))
            }
            (State::Established, kind::KEEPALIVE | kind::ROUTE_REFRESH) => Vec::new(),
            (State::Established, kind::UPDATE) => match update::decode(body, &self.decode) {
                Decoded::Apply {
                    updates,
                    treated_as_withdraw,
                    ..
                } => vec![Action::Routes {
                    updates,
                    treated_as_withdraw,
                }],
                Decoded::Reset(n) => self.fail(n),
            },
            (State::Established, _) => {
                self.fail(Notification::new(code::FSM, code::FSM_ESTABLISHED, []))
            }
            (State::Closed, _) => Vec::new(),
        }
    }

    fn on_open(&mut self, msg: &[u8], now: Instant) -> Vec<Action> {
        let open = match message::decode_open(msg) {
            Ok(o) => o,
            Err(n) => return self.fail(n),
        };
        if open.asn != self.params.peer_as {
            let data = u16::try_from(open.asn)
                .unwrap_or(message::AS_TRANS)
                .to_be_bytes();
            return self.fail(Notification::new(code::OPEN, code::BAD_PEER_AS, data));
        }
        let hold_time = open.hold_time.min(self.params.hold_time);
        self.decode.asn4 = open.asn4;
        self.decode.add_path_v4 = open.add_path_v4;
        self.decode.add_path_v6 = open.add_path_v6;
        self.negotiated = Some(Negotiated { open, hold_time });
        self.state = State::OpenConfirm;
        if hold_time == 0 {
            self.hold_deadline = None;
            self.keepalive_deadline = None;
        } else {
            self.hold_deadline = Some(now + Duration::from_secs(u64::from(hold_time)));
            self.keepalive_deadline = Some(now + self.keepalive_interval());
        }
        vec![Action::Send(message::keepalive())]
    }

    /// A third of the hold time (RFC 4271 section 10), at least one second.
    fn keepalive_interval(&self) -> Duration {
        let hold = self.negotiated.as_ref().map_or(0, |n| n.hold_time);
        Duration::from_secs(u64::from(hold / 3).max(1))
    }

    fn fail(&mut self, n: Notification) -> Vec<Action> {
        self.state = State::Closed;
        self.hold_deadline = None;
        self.keepalive_deadline = None;
        vec![
            Action::Send(n.encode()),
            Action::Close(CloseReason::Sent(n)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SessionParams {
        SessionParams {
            local_as: 65000,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            neighbor: "127.0.0.2".parse().unwrap(),
            peer_as: 65001,
            hold_time: 90,
        }
    }

    fn their_open(asn: u32, hold: u16) -> Vec<u8> {
        message::encode_open(asn, hold, Ipv4Addr::new(10, 0, 0, 2))
    }

    fn established(now: Instant) -> Session {
        let (mut s, _) = Session::start(params(), now);
        s.on_message(&their_open(65001, 30), now);
        let a = s.on_message(&message::keepalive(), now);
        assert!(matches!(a.as_slice(), [Action::Established(n)] if n.hold_time == 30));
        s
    }

    #[test]
    fn open_exchange_to_established() {
        let t0 = Instant::now();
        let (mut s, a) = Session::start(params(), t0);
        assert_eq!(
            a,
            vec![Action::Send(message::encode_open(
                65000,
                90,
                Ipv4Addr::new(10, 0, 0, 1)
            ))]
        );
        assert_eq!(s.state(), State::OpenSent);
        assert_eq!(s.next_deadline(), Some(t0 + OPEN_HOLD));
        let a = s.on_message(&their_open(65001, 30), t0);
        assert_eq!(a, vec![Action::Send(message::keepalive())]);
        assert_eq!(s.state(), State::OpenConfirm);
        // Keepalive every 10 s (30 / 3), hold 30 s.
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
        s.on_message(&message::keepalive(), t0);
        assert_eq!(s.state(), State::Established);
    }

    #[test]
    fn timers_keepalive_then_hold_expiry() {
        let t0 = Instant::now();
        let mut s = established(t0);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(9)), vec![]);
        assert_eq!(
            s.on_timer(t0 + Duration::from_secs(10)),
            vec![Action::Send(message::keepalive())]
        );
        let n = Notification::new(4, 0, []);
        assert_eq!(
            s.on_timer(t0 + Duration::from_secs(30)),
            vec![
                Action::Send(n.encode()),
                Action::Close(CloseReason::Sent(n))
            ]
        );
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(60)), vec![]);
    }

    #[test]
    fn received_messages_restart_the_hold_timer() {
        let t0 = Instant::now();
        let mut s = established(t0);
        s.on_message(&message::keepalive(), t0 + Duration::from_secs(20));
        s.on_timer(t0 + Duration::from_secs(20));
        assert!(
            s.on_timer(t0 + Duration::from_secs(40))
                .iter()
                .all(|a| !matches!(a, Action::Close(_)))
        );
        assert_eq!(s.state(), State::Established);
    }

    #[test]
    fn open_errors_and_fsm_errors() {
        let t0 = Instant::now();
        let cases: Vec<(Vec<u8>, Notification)> = vec![
            (their_open(65002, 90), Notification::new(2, 2, [0xfd, 0xea])),
            (
                their_open(4_200_000_000, 90),
                Notification::new(2, 2, [0x5b, 0xa0]),
            ),
            (message::keepalive(), Notification::new(5, 1, [])),
        ];
        for (msg, n) in cases {
            let (mut s, _) = Session::start(params(), t0);
            assert_eq!(
                s.on_message(&msg, t0),
                vec![
                    Action::Send(n.encode()),
                    Action::Close(CloseReason::Sent(n.clone()))
                ]
            );
        }
        let mut s = established(t0);
        let n = Notification::new(5, 3, []);
        assert_eq!(
            s.on_message(&their_open(65001, 90), t0),
            vec![
                Action::Send(n.encode()),
                Action::Close(CloseReason::Sent(n))
            ]
        );
    }

    #[test]
    fn notification_received_closes_without_reply() {
        let t0 = Instant::now();
        let mut s = established(t0);
        let n = Notification::new(6, 2, []);
        assert_eq!(
            s.on_message(&n.encode(), t0),
            vec![Action::Close(CloseReason::Received(n))]
        );
        assert_eq!(s.on_message(&message::keepalive(), t0), vec![]);
    }

    #[test]
    fn updates_flow_and_malformed_ones_reset() {
        let t0 = Instant::now();
        let mut s = established(t0);
        let body = [0, 0, 0, 0];
        let a = s.on_message(&message::frame(kind::UPDATE, &body), t0);
        assert!(matches!(
            a.as_slice(),
            [Action::Routes {
                treated_as_withdraw: false,
                ..
            }]
        ));
        let bad = message::frame(kind::UPDATE, &[0, 9, 0, 0]);
        let n = Notification::new(3, 1, []);
        assert_eq!(
            s.on_message(&bad, t0),
            vec![
                Action::Send(n.encode()),
                Action::Close(CloseReason::Sent(n))
            ]
        );
        assert_eq!(s.close(Notification::new(6, 2, [])), vec![]);
    }

    #[test]
    fn refresh_only_when_supported_and_established() {
        let t0 = Instant::now();
        let (s, _) = Session::start(params(), t0);
        assert!(s.refresh().is_empty());
        let s = established(t0);
        assert_eq!(
            s.refresh(),
            vec![
                Action::Send(message::route_refresh(1, 1)),
                Action::Send(message::route_refresh(2, 1))
            ]
        );
    }
}
