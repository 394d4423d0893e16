//! The data path: one function from (tables, frames, now) to a verdict per frame, rewriting each
//! frame in place. The AF_XDP workers and the offline pcap replay both call [`Engine::process`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::conn::{
    ClientHash, Conn, ConnKey, ConnTable, InsertError, KeyRef, ReplyKey, CONN_F_INACTIVE,
    CONN_F_NOOUTPUT, CONN_F_ONE_PACKET, CONN_F_TEMPLATE, TPL_S_NONE,
};
use crate::defence::{Defence, DropEntryCounters, SetError};
use crate::dest::{ConnForward, DestState};
use crate::hops::HopCache;
use crate::proto::{tcp_next_state, tcp_state_active, Direction, TcpFlags, TcpState, Timeouts};
pub use crate::routes::Routes;
use crate::sched::SchedInput;
use crate::service::{Service, Tables};
use crate::stats::{Counting, WorkerSlot};
use crate::types::{ForwardMethod, Protocol, ServiceKey, Time};
use crate::wire::{
    self, dec_ttl, encapsulate, icmp_error_in_place, is_icmp_error, nat_icmp, nat_rewrite, parse,
    parse_quoted, set_macs, tunnel_overhead, Frame, IcmpError, NatSide, NextHop, Packet,
    ParseError,
};

/// The state a worker thread keeps of its own between batches: its counter slot, its
/// next-hop cache and the prefetching path's scratch.
#[derive(Debug)]
pub struct WorkerState {
    slot: WorkerSlot,
    hops: HopCache,
    /// The prefetching path's frames parsed ahead, a slot for each frame of a group (kept, so
    /// a batch allocates nothing).
    parsed: Box<[Parsed]>,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState::new()
    }
}

impl WorkerState {
    /// A worker with a counter slot of its own (see [`WorkerSlot::claim`]) and an empty
    /// next-hop cache.
    pub fn new() -> WorkerState {
        WorkerState {
            slot: WorkerSlot::claim(),
            hops: HopCache::new(),
            parsed: vec![(Err(ParseError::NotIp), None); PREFETCH_GROUP].into_boxed_slice(),
        }
    }

    /// Its next-hop cache.
    pub fn hop_cache(&self) -> &HopCache {
        &self.hops
    }

    /// The start of a batch: where it counts, its next hops (the cache checked against
    /// `routes`) and the prefetching path's scratch.
    fn start<'a>(
        &'a mut self,
        routes: &'a dyn Routes,
        now: Time,
    ) -> (Step, Hops<'a>, &'a mut [Parsed]) {
        self.hops.sync(routes);
        (
            Step {
                now,
                w: self.slot.counting(),
            },
            Hops {
                routes,
                cache: &mut self.hops,
            },
            &mut self.parsed,
        )
    }
}

/// Where the data path gets next hops: a worker's cache of `routes` (synced once a batch), or
/// a cache never synced, which asks `routes` every time.
struct Hops<'a> {
    routes: &'a dyn Routes,
    cache: &'a mut HopCache,
}

impl Hops<'_> {
    #[inline(always)] // The cache's hit is inlined for the data path's loop: keep it there.
    fn get(&mut self, dst: &IpAddr) -> Option<&NextHop> {
        self.cache.get(self.routes, dst)
    }
}

/// Why a frame was dropped. Every drop is counted under its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Truncated or inconsistent headers.
    Malformed = 0,
    /// IP fragment (xvs does not reassemble).
    Fragment,
    /// IPv6 extension headers.
    Ipv6Extension,
    /// TCP packet without SYN and without a connection.
    NonSynNoConn,
    /// The connection's destination was deleted.
    DestUnavailable,
    /// The connection table is full.
    TableFull,
    /// No next hop known for the destination.
    NoRoute,
    /// TTL / hop limit exhausted and no room for the ICMP error.
    TtlExceeded,
    /// Too big for the path and not allowed to send frag-needed (IPv4 without DF).
    TooBig,
    /// Not enough headroom for encapsulation or an ICMP error.
    NoHeadroom,
    /// No local address of the tunnel's outer family.
    NoTunnelSource,
    /// No destination available and the ICMP error could not be built.
    NoDest,
    /// A new connection from a source no host may use (unspecified, broadcast, multicast,
    /// loopback, or the virtual address itself), as the kernel's routing drops martians.
    MartianSource,
    /// A new connection dropped by the `drop_packet` defence.
    DefenceDropPacket,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 14] = [
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::Ipv6Extension,
        DropReason::NonSynNoConn,
        DropReason::DestUnavailable,
        DropReason::TableFull,
        DropReason::NoRoute,
        DropReason::TtlExceeded,
        DropReason::TooBig,
        DropReason::NoHeadroom,
        DropReason::NoTunnelSource,
        DropReason::NoDest,
        DropReason::MartianSource,
        DropReason::DefenceDropPacket,
    ];

    /// A stable name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::Ipv6Extension => "ipv6_extension_header",
            DropReason::NonSynNoConn => "tcp_non_syn_no_conn",
            DropReason::DestUnavailable => "dest_unavailable",
            DropReason::TableFull => "conn_table_full",
            DropReason::NoRoute => "no_route",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::TooBig => "too_big_no_df",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::NoTunnelSource => "no_tunnel_source",
            DropReason::NoDest => "no_dest",
            DropReason::MartianSource => "martian_source",
            DropReason::DefenceDropPacket => "defence_drop_packet",
        }
    }
}

/// What to do with a frame after [`Engine::process`] rewrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the rewritten frame on `ifindex`. `real` is the real server a client packet
    /// was sent to (None for NAT replies going back to the client).
    Forward {
        /// Egress interface.
        ifindex: u32,
        /// Chosen real server.
        real: Option<(IpAddr, u16)>,
    },
    /// The frame was replaced by an ICMP error from xvs; send it back out of the ingress.
    Reply(IcmpError),
    /// Not the balancer's: hand to the kernel.
    Pass,
    /// Dropped and counted.
    Drop(DropReason),
}

/// Data-path counters beyond the per-service statistics.
#[derive(Debug, Default)]
pub struct EngineCounters {
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Frames forwarded.
    pub forwarded: AtomicU64,
    /// ICMP errors xvs generated.
    pub icmp_sent: AtomicU64,
    /// Frames passed to the kernel.
    pub passed: AtomicU64,
    /// New connections with no destination available.
    pub no_dest: AtomicU64,
}

impl EngineCounters {
    /// Drops for one reason.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize].load(Relaxed)
    }

    /// All drop counters by name.
    pub fn drop_counts(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops(*r)))
            .collect()
    }
}

/// The connection table and counters shared by every worker.
#[derive(Debug)]
pub struct Engine {
    /// Connections and templates.
    pub conns: ConnTable,
    /// Counters.
    pub counters: EngineCounters,
    /// The DoS defences.
    pub defence: Defence,
    /// The `drop_entry` pass's random state and counters (the control thread's).
    drop_entry: Mutex<(u64, DropEntryCounters)>,
    /// Table size (entries) from which [`Engine::process_prefetched`] prefetches.
    prefetch_from: usize,
}

/// Where a client packet goes: its connection's real server and forwarding method. The address
/// is borrowed where it lives (the destination's state, under the shard's lock on the
/// established path): copied out through the stack, an `IpAddr` (a tag byte, then 16 bytes at
/// an odd offset) is read back in words that straddle the stores that wrote it, and each such
/// load waits for those stores to reach the cache (a store-forwarding stall).
#[derive(Debug, Clone, Copy)]
struct Hit<'a> {
    daddr: &'a IpAddr,
    dport: u16,
    fwd: &'a ConnForward,
}

impl Hit<'_> {
    fn of(c: &Conn) -> Hit<'_> {
        Hit {
            daddr: &c.dest.addr,
            dport: c.dport,
            fwd: &c.fwd,
        }
    }
}

enum InResult {
    /// The connection takes the packet; the template to assure when this packet established the
    /// connection (boxed: a copy of the connection's own box, made once in a connection's life,
    /// keeps this result small for the other packets).
    Hit(Option<Box<ConnKey>>),
    Drop(DropReason),
    Reschedule,
}

/// Whether `src` may not start a connection to `dst`: the sources the kernel's routing drops
/// as martians before IPVS sees them (IPv4: `ip_route_input_slow` — 0.0.0.0/8, multicast,
/// the limited broadcast, loopback; IPv6: `ip6_rcv_core` — multicast, loopback, and the
/// unspecified address, which no TCP or UDP flow may use), and a packet from the virtual
/// address to itself (a local source, refused by `fib_validate_source`).
fn is_martian_source(src: &IpAddr, dst: &IpAddr) -> bool {
    src == dst
        || match src {
            IpAddr::V4(a) => {
                a.octets()[0] == 0 || a.is_multicast() || a.is_broadcast() || a.is_loopback()
            }
            IpAddr::V6(a) => a.is_multicast() || a.is_loopback() || a.is_unspecified(),
        }
}

fn fwmark_addr(af_v6: bool, mark: u32) -> IpAddr {
    if af_v6 {
        let b = mark.to_be_bytes();
        IpAddr::V6(Ipv6Addr::from([
            b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]))
    } else {
        IpAddr::V4(Ipv4Addr::from(mark))
    }
}

/// Count a packet in its destination's, its service's and the global counters; the kernel
/// skips this while the destination is unavailable.
fn account(c: &Conn, t: &Tables, dir: Direction, len: usize, w: Counting) {
    if !c.dest.is_available() {
        return;
    }
    match dir {
        Direction::Input => {
            c.dest.stats.count_in(w, len);
            c.svc.stats.count_in(w, len);
            t.totals.count_in(w, len);
        }
        Direction::Output => {
            c.dest.stats.count_out(w, len);
            c.svc.stats.count_out(w, len);
            t.totals.count_out(w, len);
        }
    }
}

/// Apply a packet to a connection's state and timer (`ip_vs_set_state` + timer re-arm). Returns
/// true when a TCP connection just became ESTABLISHED (its template becomes ASSURED).
#[inline(always)] // Once per packet; out of line it cost 14 Ir per packet in calls.
fn transition(
    c: &mut Conn,
    proto: Protocol,
    dir: Direction,
    flags: TcpFlags,
    t: &Timeouts,
    now: Time,
    secure: &AtomicBool,
) -> bool {
    match proto {
        Protocol::Udp => {
            if dir == Direction::Output {
                c.flags &= !CONN_F_NOOUTPUT;
            }
            c.rearm(now, t.udp);
            dir == Direction::Output && c.template.is_some()
        }
        Protocol::Tcp => {
            // Most packets: a plain ACK of an established connection, which stays so in every
            // direction (the test proto::tests::ack_keeps_established).
            if c.state == TcpState::Established as u8 && flags == TcpFlags::ACK {
                if dir == Direction::Output {
                    c.flags &= !CONN_F_NOOUTPUT;
                }
                c.rearm(now, t.tcp[TcpState::Established as usize]);
                return false;
            }
            let cur = TcpState::from_u8(c.state).unwrap_or(TcpState::None);
            let no_output = c.flags & CONN_F_NOOUTPUT != 0;
            if dir == Direction::Output {
                c.flags &= !CONN_F_NOOUTPUT;
            }
            let new = tcp_next_state(cur, dir, no_output, flags, secure.load(Relaxed));
            let mut established = false;
            if new != cur {
                // `set_tcp_state`: between ActiveConn and InActConn as the state crosses the
                // line of `tcp_state_active`.
                let inactive = c.flags & CONN_F_INACTIVE != 0;
                let active = tcp_state_active(new);
                if !inactive && !active {
                    c.dest.move_conn(true);
                    c.flags |= CONN_F_INACTIVE;
                } else if inactive && active {
                    c.dest.move_conn(false);
                    c.flags &= !CONN_F_INACTIVE;
                }
                established = new == TcpState::Established;
                c.state = new as u8;
            }
            c.rearm(now, t.tcp[new as usize]);
            established && c.template.is_some()
        }
    }
}

/// What a client → server packet does to its connection `c` (under the shard's lock): the
/// connection-reuse and unavailable-destination checks, then the state, the timer and the
/// counters; the hit to forward by.
#[inline(always)] // Once per established packet: its result stays in registers.
fn hit_in(
    c: &mut Conn,
    t: &Tables,
    p: &Packet,
    proto: Protocol,
    now: Time,
    w: Counting,
    secure: &AtomicBool,
) -> InResult {
    if proto == Protocol::Tcp && p.tcp.syn() && reused_by_syn(c, t) {
        return InResult::Reschedule;
    }
    if !c.dest.is_available() {
        return if t.settings.expire_nodest_conn {
            InResult::Reschedule
        } else {
            InResult::Drop(DropReason::DestUnavailable)
        };
    }
    c.in_pkts = c.in_pkts.wrapping_add(1);
    let assure = transition(c, proto, Direction::Input, p.tcp, &t.timeouts, now, secure);
    account(c, t, Direction::Input, p.ip_len, w);
    InResult::Hit(assure.then(|| c.template.clone()).flatten())
}

/// Whether a SYN for the existing connection `c` starts a new one (`conn_reuse_mode`): out of
/// the established path's loop, which only tests for the SYN.
#[cold]
#[inline(never)]
fn reused_by_syn(c: &Conn, t: &Tables) -> bool {
    if c.template.is_some() || t.settings.conn_reuse_mode == 0 {
        return false;
    }
    let s = TcpState::from_u8(c.state);
    matches!(s, Some(TcpState::TimeWait | TcpState::Close))
        || (t.settings.conn_reuse_mode & 2 != 0
            && s == Some(TcpState::FinWait)
            && c.flags & CONN_F_NOOUTPUT != 0)
}

/// The moment a packet is processed at and where its traffic is counted.
#[derive(Debug, Clone, Copy)]
struct Step {
    now: Time,
    w: Counting,
}

/// Verdicts of a batch, added to the engine's counters once per batch.
#[derive(Debug, Default)]
struct Tally {
    forwarded: u64,
    icmp_sent: u64,
    passed: u64,
}

impl Tally {
    fn count(&mut self, v: &Verdict) {
        match v {
            Verdict::Forward { .. } => self.forwarded += 1,
            Verdict::Reply(_) => self.icmp_sent += 1,
            Verdict::Pass => self.passed += 1,
            Verdict::Drop(_) => {}
        }
    }

    /// Put `o` in the frame's verdict slot `v` (unless it is already there) and count it. A
    /// verdict written in place is a forward one (see [`Outcome`]): it is counted without being
    /// read back.
    #[inline(always)]
    fn settle(&mut self, o: Outcome, v: &mut Verdict) {
        match o {
            Some(o) => {
                self.count(&o);
                *v = o;
            }
            None => {
                debug_assert!(matches!(v, Verdict::Forward { .. }));
                self.forwarded += 1;
            }
        }
    }

    fn add_to(&self, c: &EngineCounters) {
        for (n, a) in [
            (self.forwarded, &c.forwarded),
            (self.icmp_sent, &c.icmp_sent),
            (self.passed, &c.passed),
        ] {
            if n > 0 {
                a.fetch_add(n, Relaxed);
            }
        }
    }
}

/// What a step of the data path returns: its verdict, or None when it wrote a forward verdict
/// into the frame's slot itself (the only kind written in place). A forward verdict carries
/// its real server's `IpAddr`; built aside and then moved into the slot, it is read back in
/// words that straddle the stores that built it, and the copy waits for them (a
/// store-forwarding stall). So [`Engine::forward_in`] and [`Engine::forward_reply`] write it in
/// place.
type Outcome = Option<Verdict>;

/// What the prefetching pass learned of a packet's first table lookup: whether it is a NAT
/// reply lookup (the packet comes from a NAT real server), and the hash of its client side.
#[derive(Debug, Clone, Copy)]
struct FirstLookup {
    from_nat: bool,
    h: ClientHash,
}

/// A frame parsed ahead, with its first lookup when it is TCP or UDP.
type Parsed = (Result<Packet, ParseError>, Option<FirstLookup>);

/// Frames whose table lookups [`Engine::process_prefetched`] announces together.
pub const PREFETCH_GROUP: usize = 32;

/// Table size (entries) from which [`Engine::process_prefetched`] prefetches by default. Below
/// it the table is in the caches and prefetching costs more than it saves: on the project's
/// machine (AMD EPYC guest, 512 KiB L2, 32 MiB L3) the plain path was the faster up to about
/// 1 K entries, on a par at 3 K, and the two-step prefetch 1.1 × faster at 10 K, 1.6 × at 30 K
/// (docs/performance-history.md, "Prefetching the table lookups").
pub const PREFETCH_FROM: usize = 4_096;

impl Engine {
    /// An engine whose connection table holds `capacity` entries.
    pub fn new(capacity: usize, seed: u64) -> Engine {
        Engine {
            conns: ConnTable::new(capacity, seed),
            counters: EngineCounters::default(),
            defence: Defence::default(),
            drop_entry: Mutex::new((seed | 1, DropEntryCounters::default())),
            prefetch_from: PREFETCH_FROM,
        }
    }

    /// The defences' once-a-second work (`defense_work_handler`): their levels from the
    /// table's free room, then, while `drop_entry` is on, a pass of random entry dropping.
    /// Returns the entries dropped.
    pub fn defence_tick(&self, now: Time) -> usize {
        if !self.defence.update(self.conns.free_pages()) {
            return 0;
        }
        let mut g = self.drop_entry.lock().unwrap_or_else(|e| e.into_inner());
        let (rng, counters) = &mut *g;
        let n = self.conns.drop_entries(now, rng, counters);
        self.defence
            .counters
            .dropped_entries
            .fetch_add(n as u64, Relaxed);
        n
    }

    /// Set a defence sysctl (see [`Defence::set`]), updating the levels at once.
    pub fn set_defence(&self, name: &str, value: i32) -> Result<(), SetError> {
        self.defence.set(name, value, self.conns.free_pages())
    }

    /// Set the table size (entries) from which [`Engine::process_prefetched`] prefetches; 0:
    /// always.
    pub fn set_prefetch_from(&mut self, entries: usize) {
        self.prefetch_from = entries;
    }

    fn drop(&self, r: DropReason) -> Verdict {
        self.counters.drops[r as usize].fetch_add(1, Relaxed);
        Verdict::Drop(r)
    }

    /// Process a batch of frames received on one interface. `verdicts` must be as long as
    /// `frames`. Each frame is rewritten in place according to its verdict. Traffic is counted
    /// in `worker`'s counter slot (see [`WorkerSlot`]), verdicts once per batch; next hops come
    /// from `worker`'s cache of `routes` (see [`HopCache`]).
    #[inline(never)] // As process_prefetched.
    pub fn process(
        &self,
        tables: &Tables,
        routes: &dyn Routes,
        frames: &mut [Frame<'_>],
        now: Time,
        verdicts: &mut [Verdict],
        worker: &mut WorkerState,
    ) {
        let mut tally = Tally::default();
        let (step, mut hops, _) = worker.start(routes, now);
        self.classify_all(tables, &mut hops, frames, verdicts, step, &mut tally);
        tally.add_to(&self.counters);
    }

    /// Frame by frame, verdicts into `tally`.
    fn classify_all(
        &self,
        tables: &Tables,
        hops: &mut Hops<'_>,
        frames: &mut [Frame<'_>],
        verdicts: &mut [Verdict],
        step: Step,
        tally: &mut Tally,
    ) {
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            let o = self.classify(tables, hops, f, step, v);
            tally.settle(o, v);
        }
    }

    /// Like [`Engine::process`], with the connection-table lookups of the batch announced
    /// ahead once the table holds [`PREFETCH_FROM`] entries or more (see
    /// [`Engine::set_prefetch_from`]; a smaller table is processed as by `process`): frames are
    /// taken in groups of [`PREFETCH_GROUP`]; for each group every frame is
    /// parsed and `prefetch` is given the addresses of the index memory its lookup will read
    /// (control bytes, slot); then, that memory being on its way, each frame's candidate entry is
    /// read from the index and its cache lines are announced; then the frames are processed,
    /// each lookup starting at its candidate. The I/O layer passes a CPU prefetch
    /// (`xvs_xdp::prefetch`); the misses of a group then overlap instead of stalling one packet
    /// after the other. The addresses are hints: xvs-core never dereferences them, and a stale one
    /// (an index that grew meanwhile, an entry moved by a removal) only makes a useless prefetch
    /// and a lookup that probes as [`Engine::process`] does.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)] // Called once a batch; kept whole for profilers (callgrind's --toggle-collect).
    pub fn process_prefetched(
        &self,
        tables: &Tables,
        routes: &dyn Routes,
        frames: &mut [Frame<'_>],
        now: Time,
        verdicts: &mut [Verdict],
        worker: &mut WorkerState,
        prefetch: impl Fn(usize),
    ) {
        let (step, mut hops, parsed) = worker.start(routes, now);
        let hops = &mut hops;
        let mut tally = Tally::default();
        for (fs, vs) in frames
            .chunks_mut(PREFETCH_GROUP)
            .zip(verdicts.chunks_mut(PREFETCH_GROUP))
        {
            if self.conns.len_relaxed() < self.prefetch_from {
                // A table this small is mostly in the caches: the plain path is faster.
                self.classify_all(tables, hops, fs, vs, step, &mut tally);
                continue;
            }
            // Each frame parsed straight into its slot of the scratch (see `wire::parse_into`).
            for (f, (p, first)) in fs.iter().zip(parsed.iter_mut()) {
                wire::parse_into(f.data(), p);
                *first = None;
                if let Ok(p) = &*p {
                    if let Some(proto) = Protocol::from_number(p.proto) {
                        // The client side of the lookup classify will make first.
                        // Addresses by reference, each hashed where it is: a copy of an
                        // `IpAddr` just written field by field reads more bytes than the writes
                        // stored, and waits for them to reach the cache (a store-forwarding
                        // stall, 10 % of this loop's samples at 10 K flows).
                        let from_nat = tables.is_nat_source(proto, &p.saddr, p.sport);
                        let h = if from_nat {
                            self.conns.client_hash(p.proto, &p.daddr, p.dport)
                        } else {
                            self.conns.client_hash(p.proto, &p.saddr, p.sport)
                        };
                        if let Some(bucket) = self.conns.lookup_address(h) {
                            prefetch(bucket);
                        }
                        *first = Some(FirstLookup { from_nat, h });
                    }
                }
            }
            // The index memory is on its way; now read each frame's candidate position from it
            // and announce the entry itself.
            for (_, first) in parsed[..fs.len()].iter_mut() {
                if let Some(fl) = first {
                    if let Some([a, b]) = self.conns.candidate(&mut fl.h) {
                        prefetch(a);
                        prefetch(b);
                    }
                }
            }
            for ((f, v), (p, first)) in fs.iter_mut().zip(vs.iter_mut()).zip(parsed.iter()) {
                let o = self.classify_parsed(tables, hops, f, p, *first, step, v);
                tally.settle(o, v);
            }
        }
        tally.add_to(&self.counters);
    }

    /// Process one frame (counting in the shared counters, next hops straight from `routes`).
    pub fn process_frame(
        &self,
        t: &Tables,
        routes: &dyn Routes,
        frame: &mut Frame<'_>,
        now: Time,
    ) -> Verdict {
        let mut v = Verdict::Pass;
        let o = self.classify(
            t,
            &mut Hops {
                routes,
                cache: &mut HopCache::new(),
            },
            frame,
            Step {
                now,
                w: Counting::SHARED,
            },
            &mut v,
        );
        let mut tally = Tally::default();
        tally.settle(o, &mut v);
        tally.add_to(&self.counters);
        v
    }

    #[inline(always)] // The per-frame step of `process`'s loop.
    fn classify(
        &self,
        t: &Tables,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        cx: Step,
        out: &mut Verdict,
    ) -> Outcome {
        let p = parse(frame.data());
        self.classify_parsed(t, hops, frame, &p, None, cx, out)
    }

    /// One frame's verdict, into `out` or returned (see [`Outcome`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn classify_parsed(
        &self,
        t: &Tables,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        parsed: &Result<Packet, ParseError>,
        first: Option<FirstLookup>,
        cx: Step,
        out: &mut Verdict,
    ) -> Outcome {
        let p = match parsed {
            Ok(p) => p,
            Err(ParseError::NotIp) => return Some(Verdict::Pass),
            Err(ParseError::Malformed) => return Some(self.drop(DropReason::Malformed)),
            Err(ParseError::Fragment) => return Some(self.drop(DropReason::Fragment)),
            Err(ParseError::Ipv6Extension) => return Some(self.drop(DropReason::Ipv6Extension)),
        };
        let proto = match Protocol::from_number(p.proto) {
            Some(proto) => proto,
            None if is_icmp_error(p) => return Some(self.icmp(t, hops, frame, p, cx.now)),
            None => return Some(Verdict::Pass),
        };
        // The prefetching pass has already asked whether this is a NAT source, and hashed the
        // client side of the first lookup (the reply's for a NAT source).
        let (from_nat, h) = match first {
            Some(fl) => (fl.from_nat, Some(fl.h)),
            None => (t.is_nat_source(proto, &p.saddr, p.sport), None),
        };
        // The first lookup's hash is the reply's for a NAT source, else the connection's.
        let h_in = if from_nat {
            if let Some(o) = self.reply(t, hops, frame, p, h, cx, out) {
                return o;
            }
            None
        } else {
            h
        };
        let key = KeyRef {
            proto: p.proto,
            caddr: &p.saddr,
            cport: p.sport,
            vaddr: &p.daddr,
            vport: p.dport,
        };
        if let Some(mut c) = self.conns.conn_at(h_in, key, cx.now) {
            match hit_in(
                &mut c,
                t,
                p,
                proto,
                cx.now,
                cx.w,
                self.defence.secure_flag(),
            ) {
                InResult::Hit(tpl) => {
                    // Forwarded under the shard's lock, reading the destination where it is.
                    let v = self.forward_in(hops, frame, p, Hit::of(&c), out);
                    drop(c);
                    if let Some(tk) = tpl {
                        self.conns.assure_template(&tk);
                    }
                    return v;
                }
                InResult::Drop(r) => {
                    drop(c);
                    return Some(self.drop(r));
                }
                InResult::Reschedule => {
                    drop(c);
                    self.conns.remove(&key.to_key());
                }
            }
        }
        if from_nat {
            // Not a reply of ours (e.g. a client talking to the real server directly through
            // this box): the kernel's business, as in IPVS.
            return Some(Verdict::Pass);
        }
        match t.lookup(proto, p.daddr, p.dport, frame.mark()) {
            Some(svc) => {
                self.new_conn(t, hops, frame, p, proto, (key.to_key(), h_in), svc, cx, out)
            }
            None => Some(Verdict::Pass),
        }
    }

    /// A NAT reply, server → client: None when it belongs to no connection, else its
    /// outcome (a forward verdict written into `out`, as for client packets).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)] // Out of the client packets' loop: inlined, it cost them 5 instructions.
    fn reply(
        &self,
        t: &Tables,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        h: Option<ClientHash>,
        cx: Step,
        out: &mut Verdict,
    ) -> Option<Outcome> {
        let Step { now, w } = cx;
        let proto = Protocol::from_number(p.proto)?;
        let rk = ReplyKey {
            proto: p.proto,
            daddr: p.saddr,
            dport: p.sport,
            caddr: p.daddr,
            cport: p.dport,
        };
        let (o, tpl) = self.conns.with_reply_at(h, &rk, now, |key, c| {
            let assure = transition(
                c,
                proto,
                Direction::Output,
                p.tcp,
                &t.timeouts,
                now,
                self.defence.secure_flag(),
            );
            account(c, t, Direction::Output, p.ip_len, w);
            // Rewritten under the shard's lock, the virtual address read where it lives:
            // copied out through a result, it was read back in words that straddle the
            // stores that wrote it (see `Hit`).
            let o = self.forward_reply(hops, frame, p, &key.vaddr, key.vport, out);
            (o, assure.then(|| c.template.clone()).flatten())
        })?;
        if let Some(tk) = tpl {
            self.conns.assure_template(&tk);
        }
        Some(o)
    }

    /// Send a NAT reply to its client with the virtual service as its source; a forward
    /// verdict is written into `out` (see [`Outcome`]).
    #[inline(always)]
    fn forward_reply(
        &self,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        vaddr: &IpAddr,
        vport: u16,
        out: &mut Verdict,
    ) -> Outcome {
        let Some(hop) = hops.get(&p.daddr) else {
            return Some(self.drop(DropReason::NoRoute));
        };
        if let Some(v) = self.check_size_and_ttl(frame, p, usize::from(hop.mtu)) {
            return Some(v);
        }
        let d = frame.data_mut();
        nat_rewrite(d, p, NatSide::Src, *vaddr, vport);
        dec_ttl(d, p);
        set_macs(d, hop);
        *out = Verdict::Forward {
            ifindex: hop.ifindex,
            real: None,
        };
        None
    }

    /// MTU and TTL checks before forwarding; Some(verdict) when the packet cannot go on.
    #[inline(always)] // Once per forwarded packet: a call costs more than its two compares.
    fn check_size_and_ttl(&self, frame: &mut Frame<'_>, p: &Packet, mtu: usize) -> Option<Verdict> {
        if p.ip_len > mtu {
            if p.df {
                let mtu = mtu.min(usize::from(u16::MAX)) as u16;
                return Some(self.icmp_reply(frame, p, IcmpError::TooBig(mtu)));
            }
            return Some(self.drop(DropReason::TooBig));
        }
        if p.ttl <= 1 {
            return Some(self.icmp_reply(frame, p, IcmpError::TimeExceeded));
        }
        None
    }

    fn icmp_reply(&self, frame: &mut Frame<'_>, p: &Packet, kind: IcmpError) -> Verdict {
        // Never answer an ICMP error with an ICMP error.
        if is_icmp_error(p) {
            return self.drop(match kind {
                IcmpError::TimeExceeded => DropReason::TtlExceeded,
                IcmpError::TooBig(_) => DropReason::TooBig,
                IcmpError::PortUnreachable => DropReason::NoDest,
            });
        }
        match icmp_error_in_place(frame, p, kind) {
            Ok(()) => Verdict::Reply(kind),
            Err(_) => self.drop(DropReason::NoHeadroom),
        }
    }

    /// Send a client packet to its real server by the connection's forwarding method; a forward
    /// verdict is written into `out` (see [`Outcome`]).
    #[inline(always)]
    fn forward_in(
        &self,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        hit: Hit<'_>,
        out: &mut Verdict,
    ) -> Outcome {
        let Some(hop) = hops.get(hit.daddr) else {
            return Some(self.drop(DropReason::NoRoute));
        };
        match hit.fwd.method {
            ForwardMethod::Route | ForwardMethod::Masq => {
                if let Some(v) = self.check_size_and_ttl(frame, p, usize::from(hop.mtu)) {
                    return Some(v);
                }
                let d = frame.data_mut();
                if hit.fwd.method == ForwardMethod::Masq {
                    nat_rewrite(d, p, NatSide::Dst, *hit.daddr, hit.dport);
                }
                dec_ttl(d, p);
                set_macs(d, hop);
            }
            ForwardMethod::Tunnel => {
                let over = tunnel_overhead(hit.daddr.is_ipv6(), &hit.fwd.tunnel);
                let mtu = usize::from(hop.mtu).saturating_sub(over);
                let min = if p.v6 { 1280 } else { 68 };
                if mtu < min {
                    return Some(self.drop(DropReason::TooBig));
                }
                if let Some(v) = self.check_size_and_ttl(frame, p, mtu) {
                    return Some(v);
                }
                dec_ttl(frame.data_mut(), p);
                match encapsulate(frame, p, hop.src_ip, *hit.daddr, &hit.fwd.tunnel) {
                    Ok(()) => {}
                    Err(wire::EncapError::NoHeadroom) => {
                        return Some(self.drop(DropReason::NoHeadroom))
                    }
                    Err(wire::EncapError::NoSource) => {
                        return Some(self.drop(DropReason::NoTunnelSource))
                    }
                }
                set_macs(frame.data_mut(), hop);
            }
        }
        *out = Verdict::Forward {
            ifindex: hop.ifindex,
            real: Some((*hit.daddr, hit.dport)),
        };
        None
    }

    /// The persistence template key for a packet of a persistent service (reference §4.4).
    fn template_key(svc: &Service, p: &Packet) -> ConnKey {
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
    /// destination and the template key, which then controls one more connection.
    fn persist(
        &self,
        t: &Tables,
        svc: &Service,
        p: &Packet,
        now: Time,
    ) -> Result<Option<(Arc<DestState>, ConnKey)>, DropReason> {
        let tkey = Self::template_key(svc, p);
        let eqt = t.settings.expire_quiescent_template;
        for _ in 0..2 {
            let found = self.conns.use_template(&tkey, now, |tc| {
                tc.dest.is_available() && !(eqt && tc.dest.weight() == 0)
            });
            if let Some((dest, _)) = found {
                return Ok(Some((dest, tkey)));
            }
            let Some(dest) = self.schedule(svc, p, now) else {
                return Ok(None);
            };
            let tdport = if svc.cfg.key.port() != 0 && p.dport == svc.cfg.key.port() {
                dest.port
            } else {
                0
            };
            dest.bind(true, false);
            let tpl = Conn {
                dport: tdport,
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
            };
            match self.conns.admit(None, tkey, tpl, now, |_| {}) {
                Ok(()) => return Ok(Some((dest, tkey))),
                Err((InsertError::Full, tpl)) => {
                    tpl.dest.unbind(true, false);
                    return Err(DropReason::TableFull);
                }
                // Another worker created it first: use that one.
                Err((InsertError::Exists, tpl)) => tpl.dest.unbind(true, false),
            }
        }
        Err(DropReason::TableFull)
    }

    fn schedule(&self, svc: &Service, p: &Packet, now: Time) -> Option<Arc<DestState>> {
        svc.live.schedule(&SchedInput {
            flags: svc.cfg.sched_flags(),
            dests: &svc.dests,
            saddr: p.saddr,
            sport: p.sport,
            daddr: p.daddr,
            dport: p.dport,
            now,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_conn(
        &self,
        t: &Tables,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        proto: Protocol,
        (key, h): (ConnKey, Option<ClientHash>),
        svc: &Arc<Service>,
        cx: Step,
        out: &mut Verdict,
    ) -> Outcome {
        let Step { now, w } = cx;
        // `tcp_conn_schedule`: a SYN, or with `sloppy_tcp` any segment, but never a RST.
        if proto == Protocol::Tcp && (p.tcp.rst() || (!t.settings.sloppy_tcp && !p.tcp.syn())) {
            return Some(self.drop(DropReason::NonSynNoConn));
        }
        if is_martian_source(&p.saddr, &p.daddr) {
            return Some(self.drop(DropReason::MartianSource));
        }
        if self.defence.todrop() {
            return Some(self.drop(DropReason::DefenceDropPacket));
        }
        let (dest, tpl) = if svc.cfg.is_persistent() {
            match self.persist(t, svc, p, now) {
                Ok(Some((d, k))) => (d, Some(k)),
                Ok(None) => return Some(self.no_dest(frame, p)),
                Err(r) => return Some(self.drop(r)),
            }
        } else {
            match self.schedule(svc, p, now) {
                Some(d) => (d, None),
                None => return Some(self.no_dest(frame, p)),
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
        dest.bind(false, true);
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
        };
        let secure = self.defence.secure_flag();
        transition(
            &mut c,
            proto,
            Direction::Input,
            p.tcp,
            &t.timeouts,
            now,
            secure,
        );
        let daddr = c.dest.addr;
        let hit = Hit {
            daddr: &daddr,
            dport: c.dport,
            fwd: &fwd,
        };
        // A connection is counted (Conns, and its first packet in InPkts) once it is in the
        // table: one refused for want of room is not.
        let count_new = |c: &Conn| {
            if c.dest.is_available() {
                c.dest.stats.count_conn(w);
                c.svc.stats.count_conn(w);
                t.totals.count_conn(w);
            }
            account(c, t, Direction::Input, p.ip_len, w);
        };
        if one_packet {
            // Not inserted: every datagram is scheduled on its own.
            count_new(&c);
            c.dest.unbind(false, c.is_inactive());
            self.conns.release_template(tpl);
        } else if let Err((e, c)) = self.conns.admit(h, key, c, now, count_new) {
            c.dest.unbind(false, c.is_inactive());
            self.conns.release_template(tpl);
            if e == InsertError::Full {
                return Some(self.drop(DropReason::TableFull));
            }
            // `Exists`: another worker inserted the same connection first (and counted it);
            // this packet is still forwarded to the destination it was scheduled to.
            account(&c, t, Direction::Input, p.ip_len, w);
        }
        self.forward_in(hops, frame, p, hit, out)
    }

    fn no_dest(&self, frame: &mut Frame<'_>, p: &Packet) -> Verdict {
        self.counters.no_dest.fetch_add(1, Relaxed);
        self.icmp_reply(frame, p, IcmpError::PortUnreachable)
    }

    /// ICMP errors about existing connections (reference §4.8).
    fn icmp(
        &self,
        t: &Tables,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        now: Time,
    ) -> Verdict {
        let Some(q) = parse_quoted(frame.data(), p) else {
            return Verdict::Pass;
        };
        // An error goes back to the source of the packet it quotes (RFC 1122 3.2.2): the VIP
        // for a reply of ours, the client for a packet xvs sent on to a NAT real server. One
        // addressed elsewhere (the balancer's own address, say) is not about a connection of
        // ours: the kernel's business, never relayed to a real server.
        if Protocol::from_number(q.proto).is_none() || p.daddr != q.saddr {
            return Verdict::Pass;
        }
        // From outside: the quoted packet went VIP → client.
        let key = ConnKey {
            proto: q.proto,
            caddr: q.daddr,
            cport: q.dport,
            vaddr: q.saddr,
            vport: q.sport,
        };
        let hit = self.conns.with_conn(&key, now, |c| {
            account(c, t, Direction::Input, p.ip_len, Counting::SHARED);
            (c.dest.addr, c.dport, c.fwd)
        });
        if let Some((daddr, dport, fwd)) = hit {
            let Some(hop) = hops.get(&daddr) else {
                return self.drop(DropReason::NoRoute);
            };
            match fwd.method {
                ForwardMethod::Masq => {
                    let d = frame.data_mut();
                    nat_icmp(d, p, &q, NatSide::Src, daddr, dport);
                    set_macs(d, hop);
                }
                ForwardMethod::Route => set_macs(frame.data_mut(), hop),
                ForwardMethod::Tunnel => {
                    if let Err(e) = encapsulate(frame, p, hop.src_ip, daddr, &fwd.tunnel) {
                        return self.drop(match e {
                            wire::EncapError::NoHeadroom => DropReason::NoHeadroom,
                            wire::EncapError::NoSource => DropReason::NoTunnelSource,
                        });
                    }
                    set_macs(frame.data_mut(), hop);
                }
            }
            return Verdict::Forward {
                ifindex: hop.ifindex,
                real: Some((daddr, dport)),
            };
        }
        // From a NAT real server: the quoted packet went client → real server.
        let rk = ReplyKey {
            proto: q.proto,
            daddr: q.daddr,
            dport: q.dport,
            caddr: q.saddr,
            cport: q.sport,
        };
        let back = self.conns.with_reply(&rk, now, |k, c| {
            account(c, t, Direction::Output, p.ip_len, Counting::SHARED);
            (k.vaddr, k.vport)
        });
        if let Some((vaddr, vport)) = back {
            let Some(hop) = hops.get(&p.daddr) else {
                return self.drop(DropReason::NoRoute);
            };
            let d = frame.data_mut();
            nat_icmp(d, p, &q, NatSide::Dst, vaddr, vport);
            set_macs(d, hop);
            return Verdict::Forward {
                ifindex: hop.ifindex,
                real: None,
            };
        }
        Verdict::Pass
    }
}

#[cfg(test)]
#[path = "datapath_tests.rs"]
mod tests;
