//! New connections: persistence templates, the scheduler's pick, the insertion; no destination
//! answers port unreachable.

use super::inbound::{account, fwmark_addr, is_martian_source, mark_of, transition, Hit};
use super::{put, Batch, DropReason, Engine, NewConn, Settled, Step, Verdict};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::conn::{
    Conn, ConnKey, InsertError, CONN_F_INACTIVE, CONN_F_NOOUTPUT, CONN_F_ONE_PACKET,
    CONN_F_TEMPLATE, TPL_S_NONE,
};
use crate::dest::DestState;
use crate::proto::{chunk, Direction};
use crate::sched::SchedInput;
use crate::service::{Service, Tables};
use crate::stats::Counting;
use crate::types::{ForwardMethod, Protocol, ServiceKey, Time};
use crate::wire::{Frame, IcmpError, Packet};

/// Count a new connection (Conns of its destination, service and the totals, while the
/// destination is available) and its first packet, of `len` bytes going `dir`.
fn count_conn(c: &Conn, t: &Tables, dir: Direction, len: usize, w: Counting) {
    if c.dest.is_available() {
        c.dest.stats.count_conn(w);
        c.svc.stats.count_conn(w);
        t.totals.count_conn(w);
    }
    account(c, t, dir, len, w);
}

/// A new persistence template of `svc` to `dest` (real-server port `dport`), controlling the
/// connection about to be made, bound to its destination.
fn new_template(svc: &Service, dest: &Arc<DestState>, dport: u16, now: Time) -> Conn {
    Conn {
        dport,
        dest: dest.clone(),
        svc: svc.live.clone(),
        fwd: dest.forward(),
        state: TPL_S_NONE,
        flags: CONN_F_TEMPLATE,
        timeout: svc.cfg.timeout,
        expires: now.plus_secs(svc.cfg.timeout),
        template: None,
        controlled: 1,
        in_pkts: 0,
        sync_state: 0,
        sync_end: 0,
    }
    .bound()
}

/// Slots a new SIP call tries before it falls back to the default persistence.
const SIP_PROBES: u32 = 64;

/// The Call-ID of a UDP datagram to a service with `--pe sip` (`ip_vs_sip_fill_param`).
fn sip_call<'a>(svc: &Service, p: &Packet, frame: &'a [u8]) -> Option<&'a [u8]> {
    if svc.cfg.pe.as_deref() != Some("sip") || p.proto != crate::wire::IPPROTO_UDP {
        return None;
    }
    let payload = frame.get(p.l4 + 8..crate::wire::ETH_LEN + p.ip_len)?;
    (!payload.is_empty())
        .then(|| crate::sip::call_id(payload))
        .flatten()
}

impl Engine {
    /// The persistence template key for a packet of a persistent service (reference §4.4).
    pub(super) fn template_key(svc: &Service, p: &Packet) -> ConnKey {
        let caddr = svc.cfg.netmask.apply(p.saddr);
        match svc.cfg.key {
            ServiceKey::Fwmark { mark, .. } => ConnKey {
                proto: 0,
                caddr,
                cport: 0,
                vaddr: fwmark_addr(p.v6, mark),
                vport: 0,
            },
            ServiceKey::Addr { port, .. } => {
                let vport = if port != 0 && p.dport == port && port != 21 {
                    port
                } else {
                    0
                };
                ConnKey {
                    proto: p.proto,
                    caddr,
                    cport: 0,
                    vaddr: p.daddr,
                    vport,
                }
            }
        }
    }

    /// Pick a destination through a persistence template (`ip_vs_sched_persist`). Returns the
    /// destination and the template key, which then controls one more connection. `frame`:
    /// the packet's frame, whose payload the SIP persistence engine reads.
    pub(super) fn persist(
        &self,
        t: &Tables,
        svc: &Service,
        p: &Packet,
        frame: &[u8],
        now: Time,
    ) -> Result<Option<(Arc<DestState>, ConnKey)>, DropReason> {
        let tkey = Self::template_key(svc, p);
        if let Some(call) = sip_call(svc, p, frame) {
            return self.persist_sip(t, svc, p, now, tkey, call);
        }
        self.persist_at(t, svc, p, now, tkey)
    }

    /// [`Engine::persist`] for a SIP call (`--pe sip`): the template of the call's slot (see
    /// [`crate::sip`]), the Call-IDs held locked meanwhile so that two new calls never take one
    /// slot.
    #[cold]
    fn persist_sip(
        &self,
        t: &Tables,
        svc: &Service,
        p: &Packet,
        now: Time,
        base: ConnKey,
        call: &[u8],
    ) -> Result<Option<(Arc<DestState>, ConnKey)>, DropReason> {
        let mut calls = self.sip.lock();
        let Some(key) = self.sip_slot(&calls, base, call, now) else {
            // Every slot probed is taken: the default persistence, as without a Call-ID.
            drop(calls);
            return self.persist_at(t, svc, p, now, base);
        };
        let r = self.persist_at(t, svc, p, now, key);
        if matches!(r, Ok(Some(_))) {
            calls.insert(key, call.into());
        }
        r
    }

    /// The key of `call`'s template (`base` with the call's slot as its client port): the
    /// slot remembered for it, else the first free one from its hash; None when every slot
    /// probed holds another call's template. `calls`: the Call-IDs, locked by the caller.
    pub(crate) fn sip_slot(
        &self,
        calls: &std::collections::HashMap<ConnKey, Box<[u8]>>,
        base: ConnKey,
        call: &[u8],
        now: Time,
    ) -> Option<ConnKey> {
        let first = self.sip.first_slot(call);
        (0..SIP_PROBES).find_map(|probe| {
            let slot = ((u32::from(first) - 1 + probe) % 65535) as u16 + 1;
            let key = ConnKey {
                cport: slot,
                ..base
            };
            let ours = calls.get(&key).is_some_and(|c| **c == *call);
            (ours || self.conns.with_conn(&key, now, |_| ()).is_none()).then_some(key)
        })
    }

    /// Pick a destination through the template at `tkey`, creating it when there is none.
    fn persist_at(
        &self,
        t: &Tables,
        svc: &Service,
        p: &Packet,
        now: Time,
        tkey: ConnKey,
    ) -> Result<Option<(Arc<DestState>, ConnKey)>, DropReason> {
        let eqt = t.settings.expire_quiescent_template;
        for _ in 0..2 {
            let found = self.conns.use_template(&tkey, now, |tc| {
                tc.dest.is_available() && !(eqt && tc.dest.weight() == 0)
            });
            if let Some((dest, _)) = found {
                return Ok(Some((dest, tkey)));
            }
            let Some(dest) = self.schedule(t, svc, p, now) else {
                return Ok(None);
            };
            let tdport = if svc.cfg.key.port() != 0 && p.dport == svc.cfg.key.port() {
                dest.port
            } else {
                0
            };
            let tpl = new_template(svc, &dest, tdport, now);
            match self.conns.admit(None, tkey, tpl, now, |_| {}) {
                Ok(()) => return Ok(Some((dest, tkey))),
                Err((InsertError::Full, _)) => return Err(DropReason::TableFull),
                // Another worker created it first: use that one.
                Err((InsertError::Exists, _)) => {}
            }
        }
        Err(DropReason::TableFull)
    }

    pub(super) fn schedule(
        &self,
        t: &Tables,
        svc: &Service,
        p: &Packet,
        now: Time,
    ) -> Option<Arc<DestState>> {
        svc.live.schedule(&SchedInput {
            flags: svc.cfg.sched_flags(),
            dests: &svc.dests,
            saddr: p.saddr,
            sport: p.sport,
            daddr: p.daddr,
            dport: p.dport,
            now,
            settings: &t.settings,
        })
    }

    pub(super) fn new_conn(
        &self,
        b: &mut Batch<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        nc: NewConn<'_>,
        out: &mut Verdict,
    ) -> Settled {
        let (t, cx, hops) = (b.t, b.step, &mut b.hops);
        let NewConn { proto, key, h, svc } = nc;
        let Step { now, w } = cx;
        // `tcp_conn_schedule`: a SYN, or with `sloppy_tcp` any segment, but never a RST.
        if proto == Protocol::Tcp && (p.tcp.rst() || (!t.settings.sloppy_tcp && !p.tcp.syn())) {
            return put(out, self.drop(DropReason::NonSynNoConn));
        }
        // `sctp_conn_schedule`: an INIT first, or with `sloppy_sctp` any chunk, but never an
        // ABORT; a packet without a whole chunk header is dropped.
        if proto == Protocol::Sctp {
            match p.sctp {
                None => return put(out, self.drop(DropReason::Malformed)),
                Some(c)
                    if c.first == chunk::ABORT
                        || (!t.settings.sloppy_sctp && c.first != chunk::INIT) =>
                {
                    return put(out, self.drop(DropReason::SctpNonInitNoConn));
                }
                Some(_) => {}
            }
        }
        if is_martian_source(&p.saddr, &p.daddr) {
            return put(out, self.drop(DropReason::MartianSource));
        }
        if self.defence.todrop() {
            return put(out, self.drop(DropReason::DefenceDropPacket));
        }
        let (dest, tpl) = if svc.cfg.is_persistent() {
            match self.persist(t, svc, p, frame.data(), now) {
                Ok(Some((d, k))) => (d, Some(k)),
                Ok(None) => return put(out, self.no_dest(frame, p)),
                Err(r) => return put(out, self.drop(r)),
            }
        } else {
            match self.schedule(t, svc, p, now) {
                Some(d) => (d, None),
                None => return put(out, self.no_dest(frame, p)),
            }
        };
        let dport = if svc.cfg.is_persistent() {
            if p.dport == svc.cfg.key.port() && dest.port != 0 {
                dest.port
            } else {
                p.dport
            }
        } else if dest.port != 0 {
            dest.port
        } else {
            p.dport
        };
        let fwd = dest.forward();
        let one_packet = svc.cfg.is_one_packet() && proto == Protocol::Udp;
        let mut flags = CONN_F_INACTIVE;
        if fwd.method != ForwardMethod::Masq {
            flags |= CONN_F_NOOUTPUT;
        }
        if one_packet {
            flags |= CONN_F_ONE_PACKET;
        }
        // The scheduler's reference moves into the connection: a clone and a drop are two
        // locked instructions.
        let mut c = Conn {
            dport,
            dest,
            svc: svc.live.clone(),
            fwd,
            state: 0,
            flags,
            timeout: t.timeouts.tcp[0],
            expires: now.plus_secs(t.timeouts.tcp[0]),
            template: tpl.map(Box::new),
            controlled: 0,
            in_pkts: 1,
            sync_state: 0,
            sync_end: 0,
        }
        .bound();
        let secure = self.defence.secure_flag();
        transition(&mut c, proto, Direction::Input, p, &t.timeouts, now, secure);
        let daddr = c.dest.addr;
        let hit = Hit {
            daddr: &daddr,
            dport: c.dport,
            fwd: &fwd,
        };
        // A connection is counted (Conns, and its first packet in InPkts) once it is in the
        // table: one refused for want of room is not.
        let count_new = |c: &Conn| count_conn(c, t, Direction::Input, p.ip_len, w);
        if b.sync.master {
            self.sync_conn(key.view(), &mut c, 1, mark_of(t, frame, p), now);
        }
        if one_packet {
            // Not inserted: every datagram is scheduled on its own.
            count_new(&c);
            c.release();
            self.conns.release_template(tpl);
        } else if let Err((e, c)) = self.conns.admit(h, key, c, now, count_new) {
            self.conns.release_template(tpl);
            if e == InsertError::Full {
                return put(out, self.drop(DropReason::TableFull));
            }
            // `Exists`: another worker inserted the same connection first (and counted it);
            // this packet is still forwarded to the destination it was scheduled to.
            account(&c, t, Direction::Input, p.ip_len, w);
        }
        self.forward_in(hops, frame, p, hit, out)
    }

    /// A NAT real server's own UDP request to a client, of a service with `--pe sip`, that
    /// belongs to no connection (`ip_vs_sip_conn_out`, `ip_vs_new_conn_out`): for a persistent
    /// service the call's template (its Call-ID required, pointing to this server), then a
    /// connection (client = the packet's destination, virtual = the service), and the packet
    /// leaves as a reply would. None: not such a packet (it goes on as before).
    #[cold]
    #[inline(never)]
    pub(super) fn sip_conn_out(
        &self,
        b: &mut Batch<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        out: &mut Verdict,
    ) -> Option<Settled> {
        let (t, Step { now, w }) = (b.t, b.step);
        if t.sip_out.is_empty() || p.proto != crate::wire::IPPROTO_UDP || p.sport == 0 {
            return None;
        }
        // `__ip_vs_rs_conn_out`: the NAT real server of the packet's source address and port.
        let (svc, dest) = t.sip_out.iter().find_map(|s| {
            s.dests
                .iter()
                .find(|d| {
                    d.addr == p.saddr
                        && d.port == p.sport
                        && d.forward().method == ForwardMethod::Masq
                })
                .map(|d| (s, d))
        })?;
        let ServiceKey::Addr {
            addr: vaddr,
            port: vport,
            ..
        } = svc.cfg.key
        else {
            return None;
        };
        if vport == 0 {
            return None;
        }
        let mut tpl = None;
        if svc.cfg.is_persistent() {
            let call = sip_call(svc, p, frame.data())?;
            let base = ConnKey {
                proto: p.proto,
                caddr: svc.cfg.netmask.apply(p.daddr),
                cport: 0,
                vaddr,
                vport,
            };
            let mut calls = self.sip.lock();
            let key = self.sip_slot(&calls, base, call, now)?;
            // `ip_vs_check_template`: the call's template if it points to this server (one
            // pointing elsewhere is dropped), else a new one.
            let same = |tc: &Conn| Arc::ptr_eq(&tc.dest, dest) && tc.dest.is_available();
            if self.conns.use_template(&key, now, same).is_none() {
                let tc = new_template(svc, dest, p.sport, now);
                if self.conns.admit(None, key, tc, now, |_| {}).is_err() {
                    return None;
                }
            }
            calls.insert(key, call.into());
            tpl = Some(key);
        }
        let one_packet = svc.cfg.is_one_packet();
        let mut c = Conn {
            dport: p.sport,
            dest: dest.clone(),
            svc: svc.live.clone(),
            fwd: dest.forward(),
            state: 0,
            flags: CONN_F_INACTIVE | if one_packet { CONN_F_ONE_PACKET } else { 0 },
            timeout: t.timeouts.udp,
            expires: now.plus_secs(t.timeouts.udp),
            template: tpl.map(Box::new),
            controlled: 0,
            in_pkts: 0,
            sync_state: 0,
            sync_end: 0,
        }
        .bound();
        let secure = self.defence.secure_flag();
        let assure = transition(
            &mut c,
            Protocol::Udp,
            Direction::Output,
            p,
            &t.timeouts,
            now,
            secure,
        );
        let count = |c: &Conn| count_conn(c, t, Direction::Output, p.ip_len, w);
        let key = ConnKey {
            proto: p.proto,
            caddr: p.daddr,
            cport: p.dport,
            vaddr,
            vport,
        };
        if one_packet {
            count(&c);
            c.release();
            self.conns.release_template(tpl);
        } else if let Err((_, c)) = self.conns.admit(None, key, c, now, count) {
            // Full, or entered meanwhile: this packet still leaves as the reply it is.
            account(&c, t, Direction::Output, p.ip_len, w);
            self.conns.release_template(tpl);
        }
        if let (true, Some(k)) = (assure, tpl) {
            self.conns.assure_template(&k);
        }
        Some(self.forward_reply(&mut b.hops, frame, p, &vaddr, vport, out))
    }

    pub(super) fn no_dest(&self, frame: &mut Frame<'_>, p: &Packet) -> Verdict {
        self.counters.no_dest.fetch_add(1, Relaxed);
        self.icmp_reply(frame, p, IcmpError::PortUnreachable)
    }
}
