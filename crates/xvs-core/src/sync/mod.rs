//! Connection synchronisation, IPVS's redundancy mechanism (reference §5): a master sends
//! its connections to backups, which enter them in their tables, so that a backup that takes
//! the virtual address over forwards every connection to the real server it had.
//!
//! Here, without I/O: the sync sysctls ([`SyncSettings`]), the master's decision of when a
//! connection is sent (`needed`, mainline's `ip_vs_sync_conn_needed`) and the bounded queue
//! the workers hand records to ([`Sync::push`]: lock-free, no allocation; a full queue drops
//! and counts), and the backup's entry of a received record ([`Engine::apply_sync`],
//! `ip_vs_proc_conn`). The wire format is in [`wire`]; the sockets and threads are xvsd's.

pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

pub use wire::{decode, Message, MessageError, MessageWriter, RecordError, SyncConn};

use crate::conn::{
    Conn, ConnKey, InsertError, KeyRef, CONN_F_INACTIVE, CONN_F_SYNC, CONN_F_TEMPLATE,
};
use crate::dest::DestState;
use crate::proto::{SctpState, TcpState, SCTP_STATES, TCP_STATES};
use crate::service::{Service, Tables};
use crate::types::{ForwardMethod, Protocol, Time};
use crate::wire::{IPPROTO_SCTP, IPPROTO_TCP};
use crate::Engine;

/// Records the workers may queue for the sender.
pub const QUEUE_RECORDS: usize = 1 << 16;

/// The sync sysctls (`/proc/sys/net/ipv4/vs/sync_*`, `backup_only`), with mainline's
/// defaults, and whether the master and backup roles run.
#[derive(Debug)]
pub struct SyncSettings {
    /// `sync_threshold`, first value: the packet count at which a connection is sent.
    pub threshold: AtomicU32,
    /// `sync_threshold`, second value (`sync_period`): resent every this many packets.
    pub period: AtomicU32,
    /// `sync_retries` (0..=3): resends of an unchanged expiry with a refresh period.
    pub retries: AtomicU32,
    /// `sync_refresh_period`, seconds (0: off).
    pub refresh_period: AtomicU32,
    /// `sync_persist_mode`: connections controlled by a template are not sent.
    pub persist_mode: AtomicBool,
    /// `sync_version` (0 or 1).
    pub version: AtomicU32,
    /// `sync_ports`: sockets (and threads) per role, a power of two up to 64.
    pub ports: AtomicU32,
    /// `sync_qlen_max`: messages a master may have queued for sending (applied when the master
    /// starts, see [`Sync::set_limit`]).
    pub qlen_max: AtomicU32,
    /// `sync_sock_size`: the sockets' buffer (0: the system's default).
    pub sock_size: AtomicU32,
    /// `backup_only`: a node running a backup daemon balances nothing.
    pub backup_only: AtomicBool,
    /// The master daemon runs: connections are queued.
    pub master: AtomicBool,
    /// The backup daemon runs.
    pub backup: AtomicBool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            threshold: AtomicU32::new(3),
            period: AtomicU32::new(50),
            retries: AtomicU32::new(0),
            refresh_period: AtomicU32::new(0),
            persist_mode: AtomicBool::new(false),
            version: AtomicU32::new(1),
            ports: AtomicU32::new(1),
            qlen_max: AtomicU32::new(65536),
            sock_size: AtomicU32::new(0),
            backup_only: AtomicBool::new(false),
            master: AtomicBool::new(false),
            backup: AtomicBool::new(false),
        }
    }
}

/// Counters of the sync daemons.
#[derive(Debug, Default)]
pub struct SyncCounters {
    /// Records queued by the workers.
    pub queued: AtomicU64,
    /// Records dropped because the queue was full (`sync_qlen_max`).
    pub queue_full: AtomicU64,
    /// Datagrams sent.
    pub sent_msgs: AtomicU64,
    /// Records sent.
    pub sent_conns: AtomicU64,
    /// Bytes sent (UDP payload).
    pub sent_bytes: AtomicU64,
    /// Messages dropped because `sync_qlen_max` were waiting, or the socket refused them.
    pub send_dropped: AtomicU64,
    /// Datagrams received.
    pub rx_msgs: AtomicU64,
    /// Datagrams refused as a whole, by [`MessageError`].
    pub rx_refused: [AtomicU64; MessageError::ALL.len()],
    /// Records skipped ([`RecordError`]).
    pub rx_bad_records: AtomicU64,
    /// Connections and templates entered or updated.
    pub rx_applied: AtomicU64,
    /// Records of a service this node does not have.
    pub rx_no_service: AtomicU64,
    /// Records of a real server this node does not have in that service.
    pub rx_no_dest: AtomicU64,
    /// Records that found the table full.
    pub rx_table_full: AtomicU64,
}

impl SyncCounters {
    /// Count a refused datagram.
    pub fn refused(&self, e: MessageError) {
        let i = MessageError::ALL.iter().position(|x| *x == e).unwrap_or(0);
        self.rx_refused[i].fetch_add(1, Relaxed);
    }
}

/// What the data path does for sync.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// The master runs: connections are considered for sending.
    pub master: bool,
    /// `backup_only` is set while the backup runs (mainline's `sysctl_backup_only`): every
    /// packet goes to the kernel.
    pub pass_all: bool,
    threshold: u32,
    period: u32,
    /// `u64::MAX / period + 1`: the remainder by `period` as two multiplications (Lemire's
    /// "faster remainder by direct computation"), not a division per packet.
    period_m: u64,
}

impl Mode {
    /// `sync_period` (0 while no master runs).
    pub fn period(&self) -> u32 {
        self.period
    }

    /// Whether the `pkts`-th packet of connection `c` may be due for sending: false for the
    /// packets of a connection between two sends (nearly all), which then skip [`needed`] and
    /// its call. A change into ESTABLISHED is sent by the packet count like the packets after
    /// it; a change into another state may be sent at once.
    #[inline(always)]
    pub fn may_send(&self, c: &Conn, pkts: u32) -> bool {
        const SPECIAL: u16 = CONN_F_TEMPLATE | crate::conn::CONN_F_ONE_PACKET;
        // (TCP's LAST_ACK has SCTP's ESTABLISHED number: a TCP change into it is never sent.)
        let changed = c.state != c.sync_state
            && c.state != TcpState::Established as u8
            && c.state != SctpState::Established as u8;
        if changed || c.flags & SPECIAL != 0 || self.period == 0 {
            return true;
        }
        let low = self.period_m.wrapping_mul(u64::from(pkts));
        let rem = ((u128::from(low) * u128::from(self.period)) >> 64) as u32;
        rem == self.threshold
    }
}

/// The sync state the engine holds: settings, the master's queue, counters.
#[derive(Debug)]
pub struct Sync {
    /// Settings.
    pub settings: SyncSettings,
    /// Counters.
    pub counters: SyncCounters,
    queue: ArrayQueue<SyncConn>,
    /// Records the queue may hold (`sync_qlen_max` messages' worth, see [`Sync::set_limit`]).
    limit: AtomicUsize,
}

impl Default for Sync {
    fn default() -> Self {
        Sync {
            settings: SyncSettings::default(),
            counters: SyncCounters::default(),
            queue: ArrayQueue::new(QUEUE_RECORDS),
            limit: AtomicUsize::new(QUEUE_RECORDS),
        }
    }
}

impl Sync {
    /// What the data path does for sync, read once a batch.
    #[inline(always)]
    pub fn mode(&self) -> Mode {
        let s = &self.settings;
        let master = s.master.load(Relaxed);
        let period = if master { s.period.load(Relaxed) } else { 0 };
        Mode {
            master,
            pass_all: s.backup_only.load(Relaxed) && s.backup.load(Relaxed),
            threshold: s.threshold.load(Relaxed),
            period,
            period_m: if period == 0 {
                0
            } else {
                (u64::MAX / u64::from(period)).wrapping_add(1)
            },
        }
    }

    /// Let the queue hold `messages` messages of `per_message` records (`sync_qlen_max`), at
    /// most [`QUEUE_RECORDS`].
    pub fn set_limit(&self, messages: usize, per_message: usize) {
        let n = messages
            .saturating_mul(per_message.max(1))
            .min(QUEUE_RECORDS);
        self.limit.store(n, Relaxed);
    }

    /// Queue a record for the sender; a full queue drops it and counts.
    pub fn push(&self, r: SyncConn) {
        if self.queue.len() >= self.limit.load(Relaxed) {
            self.counters.queue_full.fetch_add(1, Relaxed);
            return;
        }
        match self.queue.push(r) {
            Ok(()) => self.counters.queued.fetch_add(1, Relaxed),
            Err(_) => self.counters.queue_full.fetch_add(1, Relaxed),
        };
    }

    /// The next queued record (the sender's side).
    pub fn pop(&self) -> Option<SyncConn> {
        self.queue.pop()
    }

    /// Records waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// The wire's forwarding bits of a method.
fn fwd_bits(m: ForwardMethod) -> u32 {
    match m {
        ForwardMethod::Masq => wire::flags::MASQ,
        ForwardMethod::Tunnel => wire::flags::TUNNEL,
        ForwardMethod::Route => wire::flags::DROUTE,
    }
}

/// The record of connection `c` with key `k` (`fwmark`: the packet's mark).
pub fn record(k: KeyRef<'_>, c: &Conn, fwmark: u32) -> SyncConn {
    SyncConn {
        proto: k.proto,
        flags: u32::from(c.flags & !crate::conn::CONN_F_XVS_ONLY) & !wire::flags::FWD_MASK
            | fwd_bits(c.fwd.method),
        state: u16::from(c.state),
        caddr: *k.caddr,
        cport: k.cport,
        vaddr: *k.vaddr,
        vport: k.vport,
        daddr: c.dest.addr,
        dport: c.dport,
        fwmark,
        timeout: c.timeout,
        pe: None,
    }
}

/// A SIP template's record (see [`crate::sip`]): client port 0, as the kernel's template
/// has, and the Call-ID as the engine's data.
fn with_call(mut r: SyncConn, call: Option<Box<[u8]>>) -> SyncConn {
    if let Some(call) = call {
        r.cport = 0;
        r.pe = wire::PeData::new(&call);
    }
    r
}

/// Whether connection `c`, at its `pkts`-th incoming packet, is to be sent now (mainline's
/// `ip_vs_sync_conn_needed`): TCP only in the states that matter, at once on a change into a
/// closing one; otherwise at the threshold and every period after it (a template at each of
/// its packets while the period is set); with `sync_refresh_period`, only when the expiry it
/// would announce moved by at least min(refresh period, max(timeout / 2, 10 s)) since the last
/// send, or as one of `sync_retries` retries at least refresh / 8 after it. Records the send
/// in the connection (`sync_state`, `sync_end`).
pub fn needed(c: &mut Conn, proto: u8, pkts: u32, now: Time, s: &SyncSettings) -> bool {
    let template = c.flags & CONN_F_TEMPLATE != 0;
    let now_s = (now.0 / 1000) as u32;
    let n = end_of(now_s.wrapping_add(c.timeout));
    if !template {
        if s.persist_mode.load(Relaxed) && c.template.is_some() {
            return false;
        }
        // The states sent, ESTABLISHED first: a change into any other is sent at once.
        const TCP_SENT: [u8; 5] = [
            TcpState::Established as u8,
            TcpState::FinWait as u8,
            TcpState::Close as u8,
            TcpState::CloseWait as u8,
            TcpState::TimeWait as u8,
        ];
        const SCTP_SENT: [u8; 5] = [
            SctpState::Established as u8,
            SctpState::ShutdownSent as u8,
            SctpState::ShutdownReceived as u8,
            SctpState::ShutdownAckSent as u8,
            SctpState::Closed as u8,
        ];
        let sent = match proto {
            IPPROTO_TCP => Some(&TCP_SENT),
            IPPROTO_SCTP => Some(&SCTP_SENT),
            _ => None,
        };
        if let Some(sent) = sent {
            if !sent.contains(&c.state) {
                return false;
            }
            if c.state != c.sync_state && c.state != sent[0] {
                c.sync_state = c.state;
                c.sync_end = n;
                return true;
            }
        }
    }
    let orig = c.sync_end;
    let mut n = n;
    let refresh = s.refresh_period.load(Relaxed);
    // 0: never sent (a send that announced exactly second 0 of the circle is sent again once).
    if refresh > 0 && orig != 0 {
        let min_diff = (c.timeout / 2).max(10);
        if secs_between(orig, n).unsigned_abs() < refresh.min(min_diff) {
            let retries = orig & 3;
            if u32::from(retries) >= s.retries.load(Relaxed) {
                return false;
            }
            // The last send was `timeout` before the expiry it announced.
            let last_sent = end_of((orig >> 2).wrapping_sub(c.timeout as u16) as u32);
            if secs_between(last_sent, end_of(now_s)) < (refresh / 8) as i32 {
                return false;
            }
            n |= retries + 1;
        }
    }
    let period = s.period.load(Relaxed);
    let threshold = s.threshold.load(Relaxed);
    if period > 0 {
        if !template && pkts % period != threshold {
            return false;
        }
    } else if refresh == 0 && pkts != threshold {
        return false;
    }
    c.sync_state = c.state;
    c.sync_end = n;
    true
}

/// Seconds `secs` as kept in `Conn::sync_end`: modulo 16,384, no retry.
fn end_of(secs: u32) -> u16 {
    ((secs & 0x3fff) as u16) << 2
}

/// The seconds from `a` to `b` (two `sync_end` values), taken as the nearer way round the
/// 16,384-second circle: right for differences within ±8,192 s (2 h 16 min).
fn secs_between(a: u16, b: u16) -> i32 {
    let d = i32::from((b >> 2).wrapping_sub(a >> 2) & 0x3fff);
    if d >= 0x2000 {
        d - 0x4000
    } else {
        d
    }
}

/// Why a received record did not enter the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyError {
    /// No such service here.
    NoService,
    /// No such real server in the service.
    NoDest,
    /// The table is full.
    TableFull,
}

/// The destination of a record: the service by fwmark, then by address (mainline's
/// `ip_vs_find_dest`), then the real server by address and port; a fwmark service's real
/// server of port 0 takes any port.
fn find_dest(t: &Tables, r: &SyncConn) -> Result<(Arc<Service>, Arc<DestState>), ApplyError> {
    let template = r.flags & CONN_F_TEMPLATE as u32 != 0;
    let proto = match Protocol::from_number(r.proto) {
        Some(p) => p,
        // A fwmark template (protocol 0): only its mark finds its service.
        None if template => Protocol::Tcp,
        None => return Err(ApplyError::NoService),
    };
    let svc = t
        .lookup(proto, r.vaddr, r.vport, r.fwmark)
        .ok_or(ApplyError::NoService)?;
    let dest = svc
        .dests
        .iter()
        .find(|d| d.addr == r.daddr && (d.port == r.dport || d.port == 0))
        .ok_or(ApplyError::NoDest)?;
    Ok((svc.clone(), dest.clone()))
}

impl Engine {
    /// Enter a received record in the table (mainline's `ip_vs_proc_conn`): a connection
    /// already there for another real server is replaced when the record is active (an
    /// inactive one is the expiry of a connection already replaced, and ignored); one there for
    /// the same real server takes the record's INACTIVE bit (moving the server's counters),
    /// state and timeout; a new one is bound to the local real server of the same address and
    /// port, with the local forwarding method, flagged SYNC. Its packet count starts at the
    /// threshold, so it is sent on when this node is master.
    pub fn apply_sync(&self, t: &Tables, r: &SyncConn, now: Time) -> Result<(), ApplyError> {
        let mut key = ConnKey {
            proto: r.proto,
            caddr: r.caddr,
            cport: r.cport,
            vaddr: r.vaddr,
            vport: r.vport,
        };
        let template = r.flags & CONN_F_TEMPLATE as u32 != 0;
        // A SIP template: the slot of its Call-ID here (held locked while it is entered).
        // (A guard, kept to the end of the function.)
        let mut _calls = None;
        if let (true, Some(pe)) = (template, &r.pe) {
            let mut g = self.sip.lock();
            key.cport = 0;
            match self.sip_slot(&g, key, pe.bytes(), now) {
                Some(k) => {
                    g.insert(k, pe.bytes().into());
                    key = k;
                }
                None => return Err(ApplyError::TableFull),
            }
            _calls = Some(g);
        }
        let inactive = r.flags & CONN_F_INACTIVE as u32 != 0;
        let threshold = self.sync.settings.threshold.load(Relaxed);
        let timeout = if r.timeout > 0 {
            r.timeout
        } else if template {
            180
        } else {
            self.v0_timeout(t, r)
        };
        let state = r.state.min(u16::from(u8::MAX)) as u8;
        enum Found {
            Updated,
            Replace,
            Ignore,
        }
        let found = self.conns.with_conn(&key, now, |c| {
            if !template && (c.dport != r.dport || c.dest.addr != r.daddr) {
                return if inactive {
                    Found::Ignore
                } else {
                    Found::Replace
                };
            }
            if !template && c.is_inactive() != inactive {
                c.dest.move_conn(inactive);
            }
            let upd = (wire::flags::BACKUP_UPD_MASK & 0xffff) as u16;
            let fl = r.flags as u16;
            c.flags = (fl & upd) | (c.flags & !upd) | CONN_F_SYNC;
            c.state = state;
            c.sync_state = state;
            c.in_pkts = threshold.min(u32::from(u16::MAX)) as u16;
            c.rearm(now, timeout);
            Found::Updated
        });
        match found {
            Some(Found::Updated) => return Ok(()),
            Some(Found::Ignore) => return Ok(()),
            Some(Found::Replace) => {
                self.conns.remove(&key);
            }
            None => {}
        }
        let (svc, dest) = find_dest(t, r)?;
        let fwd = dest.forward();
        let keep = (wire::flags::BACKUP_MASK & !wire::flags::FWD_MASK & 0xffff) as u16;
        let c = Conn {
            dport: r.dport,
            dest,
            svc: svc.live.clone(),
            fwd,
            state,
            flags: (r.flags as u16 & keep) | CONN_F_SYNC,
            timeout,
            expires: now.plus_secs(timeout),
            template: None,
            controlled: 0,
            in_pkts: threshold.min(u32::from(u16::MAX)) as u16,
            sync_state: state,
            sync_end: 0,
        }
        .bound();
        match self.conns.admit(None, key, c, now, |_| {}) {
            Ok(()) => Ok(()),
            // Entered meanwhile by a packet or another record: as good.
            Err((InsertError::Exists, _)) => Ok(()),
            Err((InsertError::Full, _)) => Err(ApplyError::TableFull),
        }
    }

    /// A version 0 record's timeout: its state's, as configured here.
    fn v0_timeout(&self, t: &Tables, r: &SyncConn) -> u32 {
        match Protocol::from_number(r.proto) {
            Some(Protocol::Tcp) => t.timeouts.tcp[usize::from(r.state).min(TCP_STATES - 1)],
            Some(Protocol::Sctp) => t.timeouts.sctp[usize::from(r.state).min(SCTP_STATES - 1)],
            _ => t.timeouts.udp,
        }
    }

    /// Consider connection `c` (key `k`) for sending at its `pkts`-th packet; queue its record
    /// when due. Called under the entry's lock, only while the master runs.
    #[cold]
    pub(crate) fn sync_conn(&self, k: KeyRef<'_>, c: &mut Conn, pkts: u32, mark: u32, now: Time) {
        if c.flags & crate::conn::CONN_F_ONE_PACKET != 0 {
            return;
        }
        if needed(c, k.proto, pkts, now, &self.sync.settings) {
            self.sync.push(record(k, c, mark));
        }
    }

    /// Consider the template `tk` that controls a connection just considered, with its own
    /// packet count incremented (mainline sends a connection's controller after it).
    #[cold]
    pub(crate) fn sync_template(&self, tk: &ConnKey, mark: u32, now: Time) {
        let s = &self.sync;
        // (Read before the entry is locked: the data path locks the Call-IDs first.)
        let call = (tk.cport != 0).then(|| self.sip.get(tk)).flatten();
        self.conns.with_conn(tk, now, |t| {
            t.in_pkts = t.in_pkts.wrapping_add(1);
            if needed(t, tk.proto, u32::from(t.in_pkts), now, &s.settings) {
                s.push(with_call(record(tk.view(), t, mark), call));
            }
        });
    }
}

/// The records of every entry of the table.
pub fn dump(engine: &Engine, mut out: impl FnMut(SyncConn)) {
    // SIP templates (the only ones with a client port) after the walk, with their Call-IDs.
    let mut sip = Vec::new();
    engine.conns.for_each(|k, c| {
        let r = record(k.view(), c, 0);
        if c.flags & CONN_F_TEMPLATE != 0 && k.cport != 0 {
            sip.push((*k, r));
        } else {
            out(r);
        }
    });
    for (k, r) in sip {
        out(with_call(r, engine.sip.get(&k)));
    }
}

/// Largest message of a table dump.
const DUMP_MESSAGE: usize = 60_000;

/// The whole table as version 1 sync messages, each behind its length (2 bytes, big-endian),
/// handed to `out` one message at a time (the caller writes them where it wants, a table of
/// millions is never all in memory): what a restarting xvsd hands to the next one.
pub fn encode_table(engine: &Engine, mut out: impl FnMut(&[u8])) {
    let mut w = MessageWriter::new(1, 0, DUMP_MESSAGE);
    let mut framed = Vec::with_capacity(DUMP_MESSAGE + 2);
    let mut flush = |w: &mut MessageWriter| {
        if !w.is_empty() {
            framed.clear();
            framed.extend_from_slice(&(w.bytes().len() as u16).to_be_bytes());
            framed.extend_from_slice(w.bytes());
            out(&framed);
            w.reset(0);
        }
    };
    dump(engine, |r| {
        if !w.push(&r) {
            flush(&mut w);
            w.push(&r);
        }
    });
    flush(&mut w);
}

/// What loading a table dump did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Entries entered.
    pub applied: usize,
    /// Records refused (no such service or real server, table full, bad record).
    pub refused: usize,
    /// Messages refused as a whole (a damaged dump).
    pub bad_messages: usize,
}

/// Enter the records of a dump made by [`encode_table`] (a damaged message is skipped and
/// counted; a truncated dump ends where the damage starts).
pub fn load_table(engine: &Engine, t: &Tables, mut bytes: &[u8], now: Time) -> Loaded {
    let mut l = Loaded::default();
    while bytes.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        let Some(m) = bytes.get(2..2 + n) else {
            l.bad_messages += 1;
            break;
        };
        bytes = &bytes[2 + n..];
        load_message(engine, t, m, now, &mut l);
    }
    l
}

/// Enter the records of one message of a dump (its length already taken off), counting in
/// `l`: for a caller that reads a dump message by message.
pub fn load_message(engine: &Engine, t: &Tables, m: &[u8], now: Time, l: &mut Loaded) {
    match decode(m, 0) {
        Ok(m) => {
            for r in m.records {
                match r.map(|r| engine.apply_sync(t, &r, now)) {
                    Ok(Ok(())) => l.applied += 1,
                    _ => l.refused += 1,
                }
            }
        }
        Err(_) => l.bad_messages += 1,
    }
}

#[cfg(test)]
mod tests;
