//! Deterministic tests: a fake clock (one base instant plus offsets), FSM
//! logic on `Message` values through `handle_message`/`poll_pending`, and
//! the byte path through the codec.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use super::sim::{Order, Sim};
use super::*;
use crate::wire::notification::{cease, code, fsm, open as open_err};
use crate::wire::{
    AS_TRANS, AsPath, AsSegment, Capability, GracefulRestart, MpReach, Origin, PathAttributes,
};

pub(super) const A_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(super) const B_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub(super) fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

pub(super) fn config(
    local_as: u32,
    local_id: Ipv4Addr,
    peer_as: u32,
    peer_id: Ipv4Addr,
) -> SessionConfig {
    let mut c = SessionConfig::new(local_as, local_id, peer_as, IpAddr::V4(peer_id));
    c.connect_retry = s(5);
    // Exact instants in these tests; the interleavings turn jitter on.
    c.jitter = false;
    c
}

pub(super) fn cfg_a() -> SessionConfig {
    config(65001, A_ID, 65002, B_ID)
}

fn cfg_b() -> SessionConfig {
    config(65002, B_ID, 65001, A_ID)
}

pub(super) fn gr_config() -> GracefulRestartConfig {
    GracefulRestartConfig {
        restart_time: 120,
        ..GracefulRestartConfig::default()
    }
}

fn drain(session: &mut Session) -> Vec<Pending> {
    std::iter::from_fn(|| session.poll_pending()).collect()
}

pub(super) fn send(message: Message) -> Pending {
    Pending::Send(message, CodecContext::default())
}

pub(super) fn send4(message: Message) -> Pending {
    Pending::Send(
        message,
        CodecContext {
            four_octet_as: true,
        },
    )
}

pub(super) fn out(output: Output) -> Pending {
    Pending::Out(output)
}

fn notification(code: u8, subcode: u8, data: &[u8]) -> Message {
    Message::Notification(Notification::new(code, subcode, data.to_vec()))
}

/// The OPEN a peer with this AS and identifier sends, IPv4 unicast,
/// route refresh and 4-octet AS.
pub(super) fn open_from(asn: u32, id: Ipv4Addr, hold_time: u16) -> Open {
    Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time,
        bgp_id: id,
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(asn),
        ],
    }
}

pub(super) fn gr_cap(restart_time: u16, forwarding_preserved: bool) -> Capability {
    Capability::GracefulRestart(GracefulRestart {
        restarting: false,
        restart_time,
        families: vec![GracefulRestartFamily {
            family: AfiSafi::IPV4_UNICAST,
            forwarding_preserved,
        }],
    })
}

/// Started and connected: OpenSent, outputs drained.
fn open_sent(config: SessionConfig, now: Instant) -> Session {
    let mut session = Session::new(config);
    session.handle_event(now, Event::ManualStart);
    session.handle_event(now, Event::TcpConnectionSucceeded);
    assert_eq!(session.state(), State::OpenSent);
    drain(&mut session);
    session
}

/// Established with a peer that sent `open`, outputs drained.
fn established(config: SessionConfig, open: Open, now: Instant) -> Session {
    let mut session = open_sent(config, now);
    session.handle_message(now, Message::Open(open));
    session.handle_message(now, Message::Keepalive);
    assert_eq!(
        session.state(),
        State::Established,
        "{:?}",
        session.last_reason()
    );
    drain(&mut session);
    session
}

fn ipv4_update() -> Update {
    Update {
        withdrawn: vec![],
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath {
                segments: vec![AsSegment::Sequence(vec![65002])],
            }),
            next_hop: Some(B_ID),
            local_pref: Some(200),
            ..PathAttributes::default()
        },
        nlri: vec!["10.1.0.0/24".parse::<IpNetwork>().unwrap()],
    }
}

/// Delivers messages between two sessions until both are quiet; returns
/// the non-transmit outputs of each.
fn pump(a: &mut Session, b: &mut Session, now: Instant) -> (Vec<Output>, Vec<Output>) {
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    loop {
        let (pa, pb) = (drain(a), drain(b));
        if pa.is_empty() && pb.is_empty() {
            return (oa, ob);
        }
        for p in pa {
            match p {
                Pending::Send(m, _) => b.handle_message(now, m),
                Pending::Out(o) => oa.push(o),
            }
        }
        for p in pb {
            match p {
                Pending::Send(m, _) => a.handle_message(now, m),
                Pending::Out(o) => ob.push(o),
            }
        }
    }
}

/// The same through bytes: the codec and the session's framing, with the
/// bytes delivered `chunk` at a time.
fn pump_bytes(
    a: &mut Session,
    b: &mut Session,
    now: Instant,
    chunk: usize,
) -> (Vec<Output>, Vec<Output>) {
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    loop {
        let pa: Vec<_> = std::iter::from_fn(|| a.poll_output()).collect();
        let pb: Vec<_> = std::iter::from_fn(|| b.poll_output()).collect();
        if pa.is_empty() && pb.is_empty() {
            return (oa, ob);
        }
        for o in pa {
            match o {
                Output::Transmit(bytes) => {
                    for c in bytes.chunks(chunk) {
                        b.handle_event(now, Event::BytesReceived(c));
                    }
                }
                o => oa.push(o),
            }
        }
        for o in pb {
            match o {
                Output::Transmit(bytes) => {
                    for c in bytes.chunks(chunk) {
                        a.handle_event(now, Event::BytesReceived(c));
                    }
                }
                o => ob.push(o),
            }
        }
    }
}

fn expected_negotiated(peer_as: u32, peer_id: Ipv4Addr) -> Negotiated {
    Negotiated {
        peer_as,
        peer_id,
        hold_time: 90,
        keepalive: 30,
        four_octet_as: true,
        families: vec![AfiSafi::IPV4_UNICAST],
        route_refresh: true,
        peer_graceful_restart: None,
        ibgp: false,
    }
}

/// A (active) and B (passive) start and connect.
fn start_pair(now: Instant) -> (Session, Session) {
    let mut a = Session::new(cfg_a());
    let mut b = Session::new(SessionConfig {
        passive: true,
        ..cfg_b()
    });
    a.handle_event(now, Event::ManualStart);
    b.handle_event(now, Event::ManualStart);
    assert_eq!(drain(&mut a), vec![out(Output::Connect)]);
    assert_eq!(a.state(), State::Connect);
    assert_eq!(drain(&mut b), vec![]);
    assert_eq!(b.state(), State::Active);
    assert_eq!(b.poll_timeout(), None, "passive: never connects");
    a.handle_event(now, Event::TcpConnectionSucceeded);
    b.handle_event(now, Event::TcpConnectionConfirmed);
    assert_eq!(a.direction(), Some(Direction::Outgoing));
    assert_eq!(b.direction(), Some(Direction::Incoming));
    (a, b)
}

#[test]
fn handshake_back_to_back_messages() {
    let now = Instant::now();
    let (mut a, mut b) = start_pair(now);
    let (oa, ob) = pump(&mut a, &mut b, now);
    assert_eq!(
        oa,
        vec![Output::Established(expected_negotiated(65002, B_ID))]
    );
    assert_eq!(
        ob,
        vec![Output::Established(expected_negotiated(65001, A_ID))]
    );
    assert_eq!(
        (a.state(), b.state()),
        (State::Established, State::Established)
    );
    // Keepalive timer: 30 s; hold timer: 90 s.
    assert_eq!(a.poll_timeout(), Some(now + s(30)));
}

#[test]
fn handshake_back_to_back_bytes() {
    for chunk in [1, 7, 4096] {
        let now = Instant::now();
        let (mut a, mut b) = start_pair(now);
        let (oa, ob) = pump_bytes(&mut a, &mut b, now, chunk);
        assert_eq!(
            oa,
            vec![Output::Established(expected_negotiated(65002, B_ID))]
        );
        assert_eq!(
            ob,
            vec![Output::Established(expected_negotiated(65001, A_ID))]
        );
        // An UPDATE and End-of-RIB across, through the negotiated codec.
        a.send_update(now, ipv4_update()).unwrap();
        a.send_end_of_rib(now, AfiSafi::IPV4_UNICAST).unwrap();
        let (oa, ob) = pump_bytes(&mut a, &mut b, now, chunk);
        assert_eq!(oa, vec![]);
        let mut expected = ipv4_update();
        expected.attributes.local_pref = None; // eBGP: ignored
        assert_eq!(
            ob,
            vec![
                Output::Update(expected),
                Output::EndOfRib(AfiSafi::IPV4_UNICAST)
            ]
        );
        // Route refresh both ways.
        b.request_route_refresh(AfiSafi::IPV4_UNICAST).unwrap();
        let (oa, _) = pump_bytes(&mut a, &mut b, now, chunk);
        assert_eq!(
            oa,
            vec![Output::RouteRefreshRequested(AfiSafi::IPV4_UNICAST)]
        );
    }
}

#[test]
fn handshake_four_octet_as_and_ibgp() {
    let now = Instant::now();
    let asn = 4_200_000_000;
    let mut a = Session::new(config(asn, A_ID, asn, B_ID));
    let mut b = Session::new(config(asn, B_ID, asn, A_ID));
    a.handle_event(now, Event::ManualStart);
    b.handle_event(now, Event::ManualStart);
    drain(&mut b);
    a.handle_event(now, Event::TcpConnectionSucceeded);
    b.handle_event(now, Event::TcpConnectionConfirmed);
    let sent = drain(&mut a);
    let Some(Pending::Send(Message::Open(open), _)) = sent.get(1) else {
        panic!("{sent:?}")
    };
    assert_eq!(open.my_as, AS_TRANS);
    assert_eq!(open.asn(), asn);
    b.handle_message(now, Message::Open(open.clone()));
    let (oa, ob) = pump_bytes(&mut a, &mut b, now, 3);
    let expected = |peer_id| Negotiated {
        peer_as: asn,
        ibgp: true,
        ..expected_negotiated(asn, peer_id)
    };
    assert_eq!(oa, vec![Output::Established(expected(B_ID))]);
    assert_eq!(ob, vec![Output::Established(expected(A_ID))]);
    // iBGP: LOCAL_PREF kept.
    a.send_update(now, ipv4_update()).unwrap();
    let (_, ob) = pump_bytes(&mut a, &mut b, now, 4096);
    assert_eq!(ob, vec![Output::Update(ipv4_update())]);
}

#[test]
fn our_open() {
    let mut c = cfg_a();
    c.families = vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST];
    c.graceful_restart = Some(GracefulRestartConfig {
        restarting: true,
        forwarding_preserved: true,
        ..gr_config()
    });
    let now = Instant::now();
    let mut session = Session::new(c);
    session.handle_event(now, Event::ManualStart);
    session.handle_event(now, Event::TcpConnectionSucceeded);
    let sent = drain(&mut session);
    let f = |family| GracefulRestartFamily {
        family,
        forwarding_preserved: true,
    };
    let expected = Open {
        version: 4,
        my_as: 65001,
        hold_time: 90,
        bgp_id: A_ID,
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(65001),
            Capability::GracefulRestart(GracefulRestart {
                restarting: true,
                restart_time: 120,
                families: vec![f(AfiSafi::IPV4_UNICAST), f(AfiSafi::IPV6_UNICAST)],
            }),
        ],
    };
    assert_eq!(
        sent,
        vec![out(Output::Connect), send(Message::Open(expected))]
    );
    // OpenSent: the large hold timer.
    assert_eq!(session.poll_timeout(), Some(now + s(240)));
}

#[test]
fn families_intersection_and_default() {
    let now = Instant::now();
    let mut c = cfg_a();
    c.families = vec![AfiSafi::IPV6_UNICAST, AfiSafi::IPV4_UNICAST];
    // The peer sends no multiprotocol capability: IPv4 unicast only.
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities
        .retain(|c| !matches!(c, Capability::Multiprotocol(_)));
    let session = established(c.clone(), open, now);
    assert_eq!(
        session.negotiated().unwrap().families,
        vec![AfiSafi::IPV4_UNICAST]
    );
    // Both: sorted intersection.
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities
        .push(Capability::Multiprotocol(AfiSafi::IPV6_UNICAST));
    let session = established(c, open, now);
    let families = &session.negotiated().unwrap().families;
    assert_eq!(
        families,
        &vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
    );
    // None in common: Unsupported Capability naming ours.
    let mut c = cfg_a();
    c.families = vec![AfiSafi::IPV6_UNICAST];
    let mut session = open_sent(c, now);
    session.handle_message(now, Message::Open(open_from(65002, B_ID, 90)));
    assert_eq!(
        drain(&mut session),
        vec![
            send(notification(
                code::OPEN_MESSAGE,
                open_err::UNSUPPORTED_CAPABILITY,
                &[1, 4, 0, 2, 0, 1]
            )),
            out(Output::Disconnect),
        ]
    );
}

#[test]
fn hold_time_negotiation_and_zero() {
    let now = Instant::now();
    let session = established(cfg_a(), open_from(65002, B_ID, 9), now);
    let n = session.negotiated().unwrap();
    assert_eq!((n.hold_time, n.keepalive), (9, 3));
    assert_eq!(session.poll_timeout(), Some(now + s(3)));
    // Hold time 0 on either side: no keepalives, no hold timer.
    let mut session = established(cfg_a(), open_from(65002, B_ID, 0), now);
    assert_eq!(session.poll_timeout(), None);
    session.handle_timeout(now + s(100_000));
    assert_eq!(drain(&mut session), vec![]);
    assert_eq!(session.state(), State::Established);
}

#[test]
fn hold_timer_expiry() {
    let now = Instant::now();
    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    // Keepalives go out at 30 and 60 (the peer is silent).
    session.handle_timeout(now + s(30));
    session.handle_timeout(now + s(60));
    assert_eq!(
        drain(&mut session),
        vec![send4(Message::Keepalive), send4(Message::Keepalive)]
    );
    session.handle_timeout(now + s(89));
    assert_eq!(drain(&mut session), vec![]);
    session.handle_timeout(now + s(90));
    assert_eq!(
        drain(&mut session),
        vec![
            send4(notification(code::HOLD_TIMER_EXPIRED, 0, &[])),
            out(Output::Disconnect),
            out(Output::Down {
                reason: Reason::HoldTimerExpired,
                graceful: None
            }),
        ]
    );
    assert_eq!(session.state(), State::Idle);
    // Automatic restart after connect_retry.
    assert_eq!(session.poll_timeout(), Some(now + s(95)));
    session.handle_timeout(now + s(95));
    assert_eq!(drain(&mut session), vec![out(Output::Connect)]);
    assert_eq!(session.state(), State::Connect);
}

#[test]
fn hold_timer_in_open_sent() {
    let now = Instant::now();
    let mut session = open_sent(cfg_a(), now);
    session.handle_timeout(now + s(240));
    assert_eq!(
        drain(&mut session),
        vec![
            send(notification(code::HOLD_TIMER_EXPIRED, 0, &[])),
            out(Output::Disconnect)
        ]
    );
    assert_eq!(session.state(), State::Idle);
    assert_eq!(session.last_reason(), Some(&Reason::HoldTimerExpired));
}

#[test]
fn keepalive_cadence() {
    let now = Instant::now();
    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    assert_eq!(session.poll_timeout(), Some(now + s(30)));
    session.handle_timeout(now + s(29));
    assert_eq!(drain(&mut session), vec![]);
    session.handle_timeout(now + s(30));
    assert_eq!(drain(&mut session), vec![send4(Message::Keepalive)]);
    assert_eq!(session.poll_timeout(), Some(now + s(60)));
    // The peer's KEEPALIVE restarts the hold timer, not our keepalive one.
    session.handle_message(now + s(50), Message::Keepalive);
    assert_eq!(session.timers.hold, Some(now + s(140)));
    // An UPDATE sent restarts the keepalive timer.
    session.send_update(now + s(55), ipv4_update()).unwrap();
    assert_eq!(
        drain(&mut session),
        vec![send4(Message::Update(ipv4_update()))]
    );
    assert_eq!(session.poll_timeout(), Some(now + s(85)));
    session.handle_timeout(now + s(60));
    assert_eq!(drain(&mut session), vec![]);
    session.handle_timeout(now + s(85));
    assert_eq!(drain(&mut session), vec![send4(Message::Keepalive)]);
    // In OpenConfirm too.
    let mut session = open_sent(cfg_a(), now);
    session.handle_message(now, Message::Open(open_from(65002, B_ID, 90)));
    assert_eq!(drain(&mut session), vec![send4(Message::Keepalive)]);
    session.handle_timeout(now + s(30));
    assert_eq!(drain(&mut session), vec![send4(Message::Keepalive)]);
    assert_eq!(session.state(), State::OpenConfirm);
}

#[test]
fn bad_peer_as() {
    let now = Instant::now();
    let mut session = open_sent(cfg_a(), now);
    session.handle_message(now, Message::Open(open_from(65003, B_ID, 90)));
    let n = notification(
        code::OPEN_MESSAGE,
        open_err::BAD_PEER_AS,
        &65003u16.to_be_bytes(),
    );
    assert_eq!(drain(&mut session), vec![send(n), out(Output::Disconnect)]);
    assert_eq!(session.state(), State::Idle);
    // A 4-octet AS peer that does not send the capability shows AS_TRANS.
    let mut c = cfg_a();
    c.peer_as = 4_200_000_000;
    let mut session = open_sent(c, now);
    let mut open = open_from(4_200_000_000, B_ID, 90);
    open.capabilities
        .retain(|c| !matches!(c, Capability::FourOctetAs(_)));
    session.handle_message(now, Message::Open(open));
    let n = notification(
        code::OPEN_MESSAGE,
        open_err::BAD_PEER_AS,
        &AS_TRANS.to_be_bytes(),
    );
    assert_eq!(drain(&mut session), vec![send(n), out(Output::Disconnect)]);
}

#[test]
fn bad_bgp_identifier_on_ibgp_only() {
    let now = Instant::now();
    let mut session = open_sent(config(65001, A_ID, 65001, B_ID), now);
    session.handle_message(now, Message::Open(open_from(65001, A_ID, 90)));
    let n = notification(code::OPEN_MESSAGE, open_err::BAD_BGP_IDENTIFIER, &[]);
    assert_eq!(drain(&mut session), vec![send(n), out(Output::Disconnect)]);
    // eBGP: the same identifier is allowed (RFC 6286).
    established(cfg_a(), open_from(65002, A_ID, 90), now);
}

#[test]
fn unacceptable_hold_time() {
    let now = Instant::now();
    let mut session = open_sent(cfg_a(), now);
    session.handle_message(now, Message::Open(open_from(65002, B_ID, 2)));
    let n = notification(code::OPEN_MESSAGE, open_err::UNACCEPTABLE_HOLD_TIME, &[]);
    assert_eq!(drain(&mut session), vec![send(n), out(Output::Disconnect)]);
}

#[test]
fn fsm_errors() {
    let now = Instant::now();
    let mut session = open_sent(cfg_a(), now);
    session.handle_message(now, Message::Update(ipv4_update()));
    let n = notification(
        code::FSM,
        fsm::UNEXPECTED_IN_OPENSENT,
        &[message_type::UPDATE],
    );
    assert_eq!(drain(&mut session), vec![send(n), out(Output::Disconnect)]);
    assert_eq!(session.state(), State::Idle);
    assert_eq!(
        session.last_reason(),
        Some(&Reason::UnexpectedMessage {
            state: State::OpenSent,
            message_type: 2
        })
    );

    let mut session = open_sent(cfg_a(), now);
    session.handle_message(now, Message::Open(open_from(65002, B_ID, 90)));
    drain(&mut session);
    session.handle_message(
        now,
        Message::RouteRefresh(RouteRefresh {
            family: AfiSafi::IPV4_UNICAST,
        }),
    );
    let n = notification(
        code::FSM,
        fsm::UNEXPECTED_IN_OPENCONFIRM,
        &[message_type::ROUTE_REFRESH],
    );
    assert_eq!(drain(&mut session), vec![send4(n), out(Output::Disconnect)]);

    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    session.handle_message(now, Message::Open(open_from(65002, B_ID, 90)));
    let n = notification(
        code::FSM,
        fsm::UNEXPECTED_IN_ESTABLISHED,
        &[message_type::OPEN],
    );
    let reason = Reason::UnexpectedMessage {
        state: State::Established,
        message_type: 1,
    };
    assert_eq!(
        drain(&mut session),
        vec![
            send4(n),
            out(Output::Disconnect),
            out(Output::Down {
                reason,
                graceful: None
            }),
        ]
    );
}

#[test]
fn notification_received() {
    let now = Instant::now();
    let cease = Notification::cease(cease::ADMINISTRATIVE_RESET);
    let mut session = open_sent(cfg_a(), now);
    session.handle_message(now, Message::Notification(cease.clone()));
    assert_eq!(drain(&mut session), vec![out(Output::Disconnect)]);
    assert_eq!(session.state(), State::Idle);

    let mut c = cfg_a();
    c.graceful_restart = Some(gr_config());
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities.push(gr_cap(120, true));
    let mut session = established(c, open, now);
    session.handle_message(now, Message::Notification(cease.clone()));
    assert_eq!(
        drain(&mut session),
        vec![
            out(Output::Disconnect),
            // GR ends with a NOTIFICATION (RFC 4724).
            out(Output::Down {
                reason: Reason::NotificationReceived(cease),
                graceful: None
            }),
        ]
    );
    assert_eq!(session.stale_families(), &[]);
}

#[test]
fn manual_stop_sends_cease() {
    let now = Instant::now();
    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    session.handle_event(now, Event::ManualStop);
    assert_eq!(
        drain(&mut session),
        vec![
            send4(Message::Notification(Notification::cease(
                cease::ADMINISTRATIVE_SHUTDOWN
            ))),
            out(Output::Disconnect),
            out(Output::Down {
                reason: Reason::ManualStop,
                graceful: None
            }),
        ]
    );
    assert_eq!(session.state(), State::Idle);
    assert_eq!(session.poll_timeout(), None, "no automatic restart");
    // Stopped: incoming connections are refused.
    session.handle_event(now, Event::TcpConnectionConfirmed);
    assert_eq!(drain(&mut session), vec![out(Output::Disconnect)]);
    // In Connect: abandon the attempt, nothing to send.
    let mut session = Session::new(cfg_a());
    session.handle_event(now, Event::ManualStart);
    drain(&mut session);
    session.handle_event(now, Event::ManualStop);
    assert_eq!(drain(&mut session), vec![out(Output::Disconnect)]);
    assert_eq!(session.poll_timeout(), None);
    // stop() with the owner's NOTIFICATION.
    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    let n = Notification::cease(cease::MAXIMUM_PREFIXES_REACHED);
    session.stop(now, n.clone());
    assert_eq!(
        drain(&mut session),
        vec![
            send4(Message::Notification(n.clone())),
            out(Output::Disconnect),
            out(Output::Down {
                reason: Reason::Stopped(n),
                graceful: None
            }),
        ]
    );
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[test]
fn connect_retry_after_failure() {
    let now = Instant::now();
    let mut session = Session::new(cfg_a());
    session.handle_event(now, Event::ManualStart);
    assert_eq!(drain(&mut session), vec![out(Output::Connect)]);
    assert_eq!(session.poll_timeout(), Some(now + s(5)));
    // Refused at 1 s: Active, retry after the first quick retry.
    session.handle_event(now + s(1), Event::TcpConnectionFails);
    assert_eq!(drain(&mut session), vec![]);
    assert_eq!(session.state(), State::Active);
    let t = now + s(1) + ms(25);
    assert_eq!(session.poll_timeout(), Some(t));
    session.handle_timeout(t);
    assert_eq!(drain(&mut session), vec![out(Output::Connect)]);
    assert_eq!(session.state(), State::Connect);
    // The attempt hangs (say the peer drops our SYNs): abandoned and
    // retried after the whole connect-retry time.
    assert_eq!(session.poll_timeout(), Some(t + s(5)));
    session.handle_timeout(t + s(5));
    assert_eq!(
        drain(&mut session),
        vec![out(Output::Disconnect), out(Output::Connect)]
    );
    // Meanwhile the peer connects to us: taken.
    session.handle_event(t + s(6), Event::TcpConnectionConfirmed);
    assert_eq!(session.state(), State::OpenSent);
    assert_eq!(session.direction(), Some(Direction::Incoming));
    // Lost in OpenSent, before the peer's OPEN: the second refusal in a
    // row, back to Active, connect again after twice the first wait.
    drain(&mut session);
    session.handle_event(t + s(7), Event::TcpConnectionFails);
    assert_eq!(drain(&mut session), vec![]);
    assert_eq!(session.state(), State::Active);
    assert_eq!(session.poll_timeout(), Some(t + s(7) + ms(50)));
}

/// A started session whose connection fails `times` times in a row, each
/// time by `fail` at the instant it is made: the waits before each new
/// attempt, the session (in Connect) and the instant of its last attempt.
fn retry_waits(
    times: usize,
    fail: impl Fn(&mut Session, Instant),
) -> (Vec<Duration>, Session, Instant) {
    let mut session = Session::new(cfg_a());
    let mut t = Instant::now();
    session.handle_event(t, Event::ManualStart);
    let mut waits = Vec::new();
    for _ in 0..times {
        session.handle_event(t, Event::TcpConnectionSucceeded);
        fail(&mut session, t);
        let next = session.poll_timeout().unwrap();
        waits.push(next - t);
        t = next;
        session.handle_timeout(t);
        assert_eq!(session.state(), State::Connect);
    }
    (waits, session, t)
}

#[test]
fn refused_connections_back_off_to_the_connect_retry_time() {
    // Accepted by the kernel, closed by the peer before its OPEN.
    let (waits, mut session, t) = retry_waits(10, |session, t| {
        session.handle_event(t, Event::TcpConnectionFails);
        assert_eq!(session.state(), State::Active);
    });
    let waits: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
    assert_eq!(
        waits,
        vec![25, 50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]
    );
    // The peer's OPEN shows it accepts us: the next refusal starts over.
    session.handle_event(t, Event::TcpConnectionSucceeded);
    session.handle_message(t, Message::Open(open_from(65002, B_ID, 90)));
    assert_eq!(session.state(), State::OpenConfirm);
    session.handle_event(t, Event::TcpConnectionFails);
    let restart = session.poll_timeout().unwrap();
    assert_eq!(restart - t, s(5), "a lost session restarts as before");
    session.handle_timeout(restart);
    session.handle_event(restart, Event::TcpConnectionFails);
    assert_eq!(session.poll_timeout(), Some(restart + ms(25)));
}

/// The lab's case: a new node (the higher address, so the side that
/// connects) reaches a node whose agent has not yet read its node record,
/// and is refused; the other side is configured a moment later. The
/// connection comes up within about as long again as the refusals lasted,
/// never later than the connect-retry time, instead of always a whole
/// connect-retry time later.
#[test]
fn a_peer_refused_before_it_was_configured_is_reconnected_soon_after() {
    let connect_retry = s(3);
    for configured_at in [0, 5, 10, 30, 100, 300, 1000, 2500, 10_000].map(ms) {
        let mut active = config(64512, B_ID, 64512, A_ID);
        let mut passive = config(64512, A_ID, 64512, B_ID);
        for c in [&mut active, &mut passive] {
            c.connect_retry = connect_retry;
            c.jitter = true;
        }
        passive.passive = true;
        let mut sim = Sim::new([active, passive], Order::Sent);
        sim.start(0);
        // Until then the peer refuses: it does not know us.
        sim.run_until(configured_at);
        assert_ne!(sim.peers[0].session().state(), State::Established);
        sim.start(1);
        sim.run_to_convergence();
        let up = sim.established_at(0).expect("Established");
        let waited = up - configured_at;
        let bound = (configured_at + ms(25)).min(connect_retry);
        assert!(
            waited <= bound,
            "configured at {configured_at:?}: up {waited:?} later, over {bound:?}"
        );
    }
}

#[test]
fn restart_backoff_grows_and_resets() {
    let (delays, mut session, t) = retry_waits(8, |session, t| {
        session.handle_message(t, Message::Open(open_from(65003, B_ID, 90))); // Bad Peer AS
        assert_eq!(session.state(), State::Idle);
    });
    let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![5, 10, 20, 40, 80, 120, 120, 120]);
    // A session that stays up a while restarts the count.
    drain(&mut session);
    session.handle_event(t, Event::TcpConnectionSucceeded);
    session.handle_message(t, Message::Open(open_from(65002, B_ID, 90)));
    session.handle_message(t, Message::Keepalive);
    assert_eq!(session.state(), State::Established);
    session.handle_message(t + s(80), Message::Keepalive);
    session.handle_event(t + s(100), Event::TcpConnectionFails);
    assert_eq!(session.poll_timeout(), Some(t + s(105)));
}

#[test]
fn updates_in_established() {
    let now = Instant::now();
    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    session.handle_message(now, Message::Update(ipv4_update()));
    let mut expected = ipv4_update();
    expected.attributes.local_pref = None;
    // A family we did not negotiate is dropped, the rest goes through.
    let mut with_v6 = ipv4_update();
    with_v6.attributes.mp_reach = Some(MpReach {
        family: AfiSafi::IPV6_UNICAST,
        next_hops: vec!["2001:db8::1".parse().unwrap()],
        nlri: vec!["2001:db8:1::/48".parse().unwrap()],
    });
    session.handle_message(now, Message::Update(with_v6));
    // Its End-of-RIB is ignored; ours is reported.
    session.handle_message(
        now,
        Message::Update(Update::end_of_rib(AfiSafi::IPV6_UNICAST)),
    );
    session.handle_message(
        now,
        Message::Update(Update::end_of_rib(AfiSafi::IPV4_UNICAST)),
    );
    assert_eq!(
        drain(&mut session),
        vec![
            out(Output::Update(expected.clone())),
            out(Output::Update(expected)),
            out(Output::EndOfRib(AfiSafi::IPV4_UNICAST)),
        ]
    );
    // Route refresh: a negotiated family is reported, another ignored.
    let rr = |family| Message::RouteRefresh(RouteRefresh { family });
    session.handle_message(now, rr(AfiSafi::IPV6_UNICAST));
    session.handle_message(now, rr(AfiSafi::IPV4_UNICAST));
    assert_eq!(
        drain(&mut session),
        vec![out(Output::RouteRefreshRequested(AfiSafi::IPV4_UNICAST))]
    );
    assert_eq!(session.state(), State::Established);
    // Sending: families are checked.
    assert_eq!(
        session.send_end_of_rib(now, AfiSafi::IPV6_UNICAST),
        Err(SendError::FamilyNotNegotiated(AfiSafi::IPV6_UNICAST))
    );
    assert_eq!(
        session.request_route_refresh(AfiSafi::IPV6_UNICAST),
        Err(SendError::FamilyNotNegotiated(AfiSafi::IPV6_UNICAST))
    );
    // Too large: refused, to be split by the owner.
    let mut big = ipv4_update();
    big.nlri = (0..1200u32)
        .map(|i| {
            IpNetwork::V4(
                ipnetwork::Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap(),
            )
        })
        .collect();
    assert!(matches!(session.send_update(now, big), Err(SendError::TooLarge(len)) if len > 4096));
    assert_eq!(drain(&mut session), vec![]);
    // Not established: refused.
    let mut idle = Session::new(cfg_a());
    assert_eq!(
        idle.send_update(now, ipv4_update()),
        Err(SendError::NotEstablished)
    );
    // Route refresh not negotiated.
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities.retain(|c| *c != Capability::RouteRefresh);
    let mut session = established(cfg_a(), open, now);
    assert_eq!(
        session.request_route_refresh(AfiSafi::IPV4_UNICAST),
        Err(SendError::RouteRefreshNotNegotiated)
    );
}

#[test]
fn malformed_bytes() {
    let now = Instant::now();
    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    session.handle_event(now, Event::BytesReceived(&[0u8; 19]));
    let n = Notification::new(code::MESSAGE_HEADER, 1, Vec::new());
    assert_eq!(
        std::iter::from_fn(|| session.poll_output())
            .skip(1)
            .collect::<Vec<_>>(),
        vec![
            Output::Disconnect,
            Output::Down {
                reason: Reason::Malformed(n),
                graceful: None
            },
        ]
    );
    assert_eq!(session.state(), State::Idle);
    // Bytes when not connected are ignored.
    session.handle_event(now, Event::BytesReceived(&[0u8; 19]));
    assert_eq!(session.poll_output(), None);
    // Two messages in one read, then half of a third.
    let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
    let ctx = CodecContext {
        four_octet_as: true,
    };
    let mut bytes = wire::encode(&Message::Keepalive, ctx);
    bytes.extend(wire::encode(
        &Message::Update(Update::end_of_rib(AfiSafi::IPV4_UNICAST)),
        ctx,
    ));
    let third = wire::encode(&Message::Update(ipv4_update()), ctx);
    bytes.extend(&third[..10]);
    session.handle_event(now, Event::BytesReceived(&bytes));
    assert_eq!(
        drain(&mut session),
        vec![out(Output::EndOfRib(AfiSafi::IPV4_UNICAST))]
    );
    session.handle_event(now, Event::BytesReceived(&third[10..]));
    let mut expected = ipv4_update();
    expected.attributes.local_pref = None;
    assert_eq!(drain(&mut session), vec![out(Output::Update(expected))]);
}

/// Established with a GR-capable peer, both sides configured for GR.
fn gr_established(now: Instant, forwarding_preserved: bool) -> Session {
    let mut c = cfg_a();
    c.graceful_restart = Some(gr_config());
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities.push(gr_cap(100, forwarding_preserved));
    established(c, open, now)
}

pub(super) fn gr_down(reason: Reason) -> Output {
    Output::Down {
        reason,
        graceful: Some(GrInfo {
            restart_time: 100,
            families: vec![GracefulRestartFamily {
                family: AfiSafi::IPV4_UNICAST,
                forwarding_preserved: true,
            }],
        }),
    }
}

#[test]
fn graceful_restart_tcp_loss_and_restart_timer() {
    let now = Instant::now();
    let mut session = gr_established(now, true);
    session.handle_event(now, Event::TcpConnectionFails);
    assert_eq!(
        drain(&mut session),
        vec![out(gr_down(Reason::ConnectionLost))]
    );
    assert_eq!(session.stale_families(), &[AfiSafi::IPV4_UNICAST]);
    // The session tries again (5 s) and the restart timer runs (100 s).
    session.handle_timeout(now + s(5));
    assert_eq!(drain(&mut session), vec![out(Output::Connect)]);
    session.handle_event(now + s(6), Event::TcpConnectionFails);
    session.handle_timeout(now + s(99));
    drain(&mut session);
    session.handle_timeout(now + s(100));
    assert_eq!(
        drain(&mut session),
        vec![out(Output::StaleRoutesExpired(vec![AfiSafi::IPV4_UNICAST]))]
    );
    assert_eq!(session.stale_families(), &[]);
}

#[test]
fn graceful_restart_hold_timer_is_graceful_too() {
    let now = Instant::now();
    let mut session = gr_established(now, true);
    session.handle_timeout(now + s(90));
    let out: Vec<_> = drain(&mut session)
        .into_iter()
        .filter(|p| matches!(p, Pending::Out(_)))
        .collect();
    assert_eq!(
        out,
        vec![
            Pending::Out(Output::Disconnect),
            Pending::Out(gr_down(Reason::HoldTimerExpired))
        ]
    );
}

#[test]
fn graceful_restart_needs_both_sides() {
    let now = Instant::now();
    // The peer advertised GR, we did not: no helper role.
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities.push(gr_cap(100, true));
    let mut session = established(cfg_a(), open, now);
    assert!(
        session
            .negotiated()
            .unwrap()
            .peer_graceful_restart
            .is_some()
    );
    session.handle_event(now, Event::TcpConnectionFails);
    assert_eq!(
        drain(&mut session),
        vec![out(Output::Down {
            reason: Reason::ConnectionLost,
            graceful: None
        })]
    );
}

#[test]
fn graceful_restart_peer_back_end_of_rib() {
    let now = Instant::now();
    let mut session = gr_established(now, true);
    session.handle_event(now, Event::TcpConnectionFails);
    drain(&mut session);
    // The restarting peer reconnects at once: taken although we were
    // waiting for the backoff.
    let t = now + s(2);
    session.handle_event(t, Event::TcpConnectionConfirmed);
    assert_eq!(session.state(), State::OpenSent);
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities.push(gr_cap(100, true));
    session.handle_message(t, Message::Open(open));
    session.handle_message(t, Message::Keepalive);
    let pending = drain(&mut session);
    assert!(
        matches!(pending.last(), Some(Pending::Out(Output::Established(_)))),
        "{pending:?}"
    );
    // Waiting for End-of-RIB: the stale timer replaces the restart timer.
    assert_eq!(session.timers.gr_restart, None);
    assert_eq!(session.timers.gr_stale, Some(t + s(360)));
    session.handle_message(t, Message::Update(ipv4_update()));
    session.handle_message(
        t,
        Message::Update(Update::end_of_rib(AfiSafi::IPV4_UNICAST)),
    );
    let mut expected = ipv4_update();
    expected.attributes.local_pref = None;
    assert_eq!(
        drain(&mut session),
        vec![
            out(Output::Update(expected)),
            out(Output::EndOfRib(AfiSafi::IPV4_UNICAST))
        ]
    );
    assert_eq!(session.stale_families(), &[]);
    assert_eq!(session.timers.gr_stale, None);
}

#[test]
fn graceful_restart_stale_timer_and_f_bit() {
    let now = Instant::now();
    // Back, but no End-of-RIB within the stale routes time.
    let mut session = gr_established(now, true);
    session.handle_event(now, Event::TcpConnectionFails);
    session.handle_event(now, Event::TcpConnectionConfirmed);
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities.push(gr_cap(100, true));
    session.handle_message(now, Message::Open(open.clone()));
    session.handle_message(now, Message::Keepalive);
    drain(&mut session);
    for k in 1..=12 {
        session.handle_message(now + s(30 * k), Message::Keepalive);
    }
    session.handle_timeout(now + s(360));
    let flushed: Vec<_> = drain(&mut session)
        .into_iter()
        .filter(|p| matches!(p, Pending::Out(_)))
        .collect();
    assert_eq!(
        flushed,
        vec![out(Output::StaleRoutesExpired(vec![AfiSafi::IPV4_UNICAST]))]
    );

    // Back without forwarding state (F bit clear): flushed at once.
    let mut session = gr_established(now, true);
    session.handle_event(now, Event::TcpConnectionFails);
    session.handle_event(now, Event::TcpConnectionConfirmed);
    let mut open = open_from(65002, B_ID, 90);
    open.capabilities.push(gr_cap(100, false));
    drain(&mut session);
    session.handle_message(now, Message::Open(open));
    session.handle_message(now, Message::Keepalive);
    let outs: Vec<_> = drain(&mut session)
        .into_iter()
        .filter(|p| matches!(p, Pending::Out(_)))
        .collect();
    assert!(matches!(outs[0], Pending::Out(Output::Established(_))));
    assert_eq!(
        outs[1..],
        [out(Output::StaleRoutesExpired(vec![AfiSafi::IPV4_UNICAST]))]
    );
    assert_eq!(
        session.poll_timeout(),
        Some(now + s(30)),
        "only the keepalive timer"
    );

    // Stopped while holding stale routes: flushed.
    let mut session = gr_established(now, true);
    session.handle_event(now, Event::TcpConnectionFails);
    drain(&mut session);
    session.handle_event(now, Event::ManualStop);
    assert_eq!(
        drain(&mut session),
        vec![out(Output::StaleRoutesExpired(vec![AfiSafi::IPV4_UNICAST]))]
    );
}

#[test]
fn garbage_never_panics() {
    // A small deterministic generator: messages with a valid marker and a
    // random length, type and body, cut into random chunks.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let now = Instant::now();
    for _ in 0..300 {
        let mut session = established(cfg_a(), open_from(65002, B_ID, 90), now);
        let mut bytes = Vec::new();
        for _ in 0..4 {
            bytes.extend(wire::MARKER);
            let len = (next() % 80) as u16 + if next() % 4 == 0 { 0 } else { 19 };
            bytes.extend(len.to_be_bytes());
            bytes.push((next() % 7) as u8);
            bytes.extend((0..next() % 64).map(|_| next() as u8));
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (next() as usize % 40 + 1).min(rest.len());
            session.handle_event(now, Event::BytesReceived(&rest[..n]));
            rest = &rest[n..];
        }
        while session.poll_output().is_some() {}
    }
}
