//! When a master sends a connection (`needed`).

use std::sync::Arc;

use super::*;
use crate::dest::{ConnForward, DestConfig};
use crate::service::ServiceLive;

fn conn(state: TcpState) -> Conn {
    let d = Arc::new(DestState::new(
        1,
        &DestConfig::new("192.168.1.1".parse().unwrap(), 80),
    ));
    Conn {
        dport: 80,
        dest: d,
        svc: Arc::new(ServiceLive::new(
            crate::sched::new_scheduler("rr", &[], &crate::hash::HashSeed::FIXED).unwrap(),
        )),
        fwd: ConnForward::default(),
        state: state as u8,
        flags: 0,
        timeout: 900,
        expires: Time(0),
        template: None,
        controlled: 0,
        in_pkts: 0,
        sync_state: 0,
        sync_end: 0,
    }
}

fn sent_at(c: &mut Conn, proto: u8, s: &SyncSettings, upto: u32) -> Vec<u32> {
    (1..=upto)
        .filter(|&p| needed(c, proto, p, Time(5_000_000), s))
        .collect()
}

#[test]
fn established_tcp_is_sent_at_the_threshold_and_every_period() {
    let s = SyncSettings::default();
    let mut c = conn(TcpState::Established);
    assert_eq!(sent_at(&mut c, 6, &s, 160), vec![3, 53, 103, 153]);
    // Not in states before ESTABLISHED.
    let mut c = conn(TcpState::SynRecv);
    assert!(sent_at(&mut c, 6, &s, 160).is_empty());
    // UDP by the packet count alone.
    let mut c = conn(TcpState::None);
    assert_eq!(sent_at(&mut c, 17, &s, 60), vec![3, 53]);
}

#[test]
fn a_change_into_a_closing_state_is_sent_at_once_and_once() {
    let s = SyncSettings::default();
    let mut c = conn(TcpState::Established);
    assert!(needed(&mut c, 6, 3, Time(5_000_000), &s));
    c.state = TcpState::FinWait as u8;
    assert!(needed(&mut c, 6, 10, Time(5_000_000), &s), "the change");
    assert!(
        !needed(&mut c, 6, 11, Time(5_000_000), &s),
        "not again in the same state"
    );
    c.state = TcpState::TimeWait as u8;
    assert!(needed(&mut c, 6, 12, Time(5_000_000), &s));
}

#[test]
fn the_sysctls_change_what_is_sent() {
    // Period 0: only at the threshold.
    let s = SyncSettings::default();
    s.period.store(0, Relaxed);
    let mut c = conn(TcpState::Established);
    assert_eq!(sent_at(&mut c, 6, &s, 200), vec![3]);
    // Persist mode: a connection under a template is not sent; its template is, every packet.
    let s = SyncSettings::default();
    s.persist_mode.store(true, Relaxed);
    let mut c = conn(TcpState::Established);
    c.template = Some(Box::new(ConnKey {
        proto: 6,
        caddr: "10.9.0.0".parse().unwrap(),
        cport: 0,
        vaddr: "10.0.0.1".parse().unwrap(),
        vport: 80,
    }));
    assert!(sent_at(&mut c, 6, &s, 100).is_empty());
    let mut t = conn(TcpState::None);
    t.flags = CONN_F_TEMPLATE;
    assert_eq!(sent_at(&mut t, 6, &s, 5), vec![1, 2, 3, 4, 5]);
}

/// The fast check never hides a packet `needed` would send.
#[test]
fn the_fast_check_agrees_with_the_remainder() {
    let s = Sync::default();
    s.settings.master.store(true, Relaxed);
    for (t, p) in [
        (3u32, 50u32),
        (0, 1),
        (7, 1000),
        (1, 3),
        (0, 0),
        (5, 0x7fff_ffff),
    ] {
        s.settings.threshold.store(t, Relaxed);
        s.settings.period.store(p, Relaxed);
        let m = s.mode();
        // Established, whether or not already sent in that state: by the packet count.
        for sent in [TcpState::Established, TcpState::SynRecv] {
            let mut c = conn(TcpState::Established);
            c.sync_state = sent as u8;
            for pkts in (0..2000).chain([u32::MAX, u32::MAX - 1, 0x8000_0000, 123_456_789]) {
                let want = p == 0 || pkts % p == t;
                assert_eq!(m.may_send(&c, pkts), want, "t {t} p {p} pkts {pkts}");
            }
        }
        // A change into a closing state: always considered.
        let mut c = conn(TcpState::FinWait);
        c.sync_state = TcpState::Established as u8;
        assert!(m.may_send(&c, 7));
    }
}

/// Whatever the state, the last state sent and the packet count, a packet the fast check
/// skips is one the send decision would not send.
#[test]
fn the_fast_check_skips_only_what_would_not_be_sent() {
    let s = Sync::default();
    s.settings.master.store(true, Relaxed);
    let m = s.mode();
    for state in 0..TCP_STATES as u8 {
        for last in 0..TCP_STATES as u8 {
            for pkts in 0..160 {
                let mut c = conn(TcpState::from_u8(state).unwrap());
                c.sync_state = last;
                if !m.may_send(&c, pkts) {
                    assert!(
                        !needed(&mut c, 6, pkts, Time(5_000_000), &s.settings),
                        "state {state} last {last} pkts {pkts}"
                    );
                }
            }
        }
    }
}

/// `sync_refresh_period`: a connection is sent again only once the expiry it would announce
/// moved enough, or as one of `sync_retries` retries refresh / 8 after its last send.
#[test]
fn the_refresh_period_holds_back_resends_of_an_unchanged_expiry() {
    let s = SyncSettings::default();
    s.refresh_period.store(16, Relaxed);
    let mut c = conn(TcpState::Established);
    let at = |c: &mut Conn, pkts: u32, secs: u64| needed(c, 6, pkts, Time(secs * 1000), &s);
    assert!(at(&mut c, 3, 100), "the first send");
    assert!(
        !at(&mut c, 53, 101),
        "the expiry moved 1 s: below min(16, 450)"
    );
    assert!(!at(&mut c, 103, 115), "15 s");
    assert!(at(&mut c, 153, 117), "17 s since the last send");
    assert!(!at(&mut c, 203, 120));
    // With retries: resent while the expiry stands still, at least refresh / 8 = 2 s apart,
    // at most twice.
    s.retries.store(2, Relaxed);
    let mut c = conn(TcpState::Established);
    assert!(at(&mut c, 3, 1_000));
    assert!(!at(&mut c, 53, 1_001), "1 s after: too soon for a retry");
    assert!(at(&mut c, 103, 1_003), "the first retry");
    assert!(at(&mut c, 153, 1_006), "the second");
    assert!(!at(&mut c, 203, 1_009), "no third");
    // The 16,384-second circle of `sync_end`: a send across its turn still counts the move.
    let mut c = conn(TcpState::Established);
    s.retries.store(0, Relaxed);
    assert!(at(&mut c, 3, 16_384 - 905));
    assert!(!at(&mut c, 53, 16_384 - 895), "10 s later, across the turn");
    assert!(at(&mut c, 103, 16_384 - 880));
}
