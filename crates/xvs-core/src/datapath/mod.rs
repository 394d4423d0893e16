//! The data path: from (tables, frames, now) to a verdict per frame, each frame rewritten in
//! place. Split as IPVS splits it (`ip_vs_core.c`, `ip_vs_xmit.c`, `ip_vs_conn.c`):
//!
//! - here: the [`Engine`], [`Verdict`], [`DropReason`], the counters, a worker's own state, and
//!   the entry point for one frame ([`Engine::process_frame`]: the replay, the fuzzing);
//! - `batch`: [`Engine::process`], the entry point for a batch and the workers' path: a batch
//!   in groups whose table lookups are announced before any frame of the group is processed;
//! - `inbound`: each frame's classification (`classify_parsed`): an ICMP error, a NAT reply, a
//!   connection's packet (its state transition and accounting) or a new connection;
//! - `schedule`: new connections (`new_conn`): persistence templates, the scheduler's pick,
//!   admission into the table; no destination answers port unreachable;
//! - `xmit`: the rewrite of each forwarding method both ways (`forward_in`, `reply`), after the
//!   MTU and TTL checks;
//! - `icmp`: the errors xvs sends, and ICMP errors about connections relayed (`icmp`).
//!
//! A worker's frame goes `process` → `classify_parsed` → (`hit_in` and `transition`
//! → `forward_in`) | `reply` → `forward_reply` | `icmp` | `new_conn` → `forward_in`, and comes
//! back with its verdict.
//!
//! **Store forwarding.** A value written field by field and then copied as a whole (an
//! `IpAddr`: a tag byte, then 16 bytes at an odd offset; a packet; a verdict) is read back in
//! wider words than the stores that wrote it, and each such load waits for those stores to
//! reach the cache (a store-forwarding stall) instead of taking the value from the store buffer.
//! So on the per-packet path addresses are borrowed where they live and hashed there, parse
//! results and forward verdicts are written in place, never built aside and moved: the places
//! that do so say "in place (store forwarding)".

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::conn::{ClientHash, ConnKey, ConnTable};
use crate::defence::{Defence, DropEntryCounters, SetError};
use crate::hops::HopCache;
use crate::offload::Offload;
pub use crate::routes::Routes;
use crate::service::{Service, Tables};
use crate::stats::{Counting, WorkerSlot};
use crate::types::{Protocol, Time};
use crate::wire::{Frame, IcmpError, NextHop, Packet, ParseError};

mod batch;
mod icmp;
mod inbound;
mod offer;
mod schedule;
mod xmit;

/// The state a worker thread keeps of its own between batches: its counter slot, its
/// next-hop cache and the prefetching path's scratch.
#[derive(Debug)]
pub struct WorkerState {
    slot: WorkerSlot,
    hops: HopCache,
    /// The prefetching path's frames parsed ahead, a slot for each frame of a group (kept, so
    /// a batch allocates nothing).
    parsed: Box<[Parsed]>,
    /// Connections' directions the data path found ready for the fast path, for the worker to
    /// install (see [`crate::offload`]); at most [`OFFLOAD_QUEUE`].
    offloads: Vec<Offload>,
}

/// Offloads a worker collects before it installs them; more wait for a later segment.
pub const OFFLOAD_QUEUE: usize = 256;

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
            offloads: Vec::with_capacity(OFFLOAD_QUEUE),
        }
    }

    /// The offloads found since the last call (see [`Engine::set_offload`]), taken out.
    pub fn take_offloads(&mut self) -> std::vec::Drain<'_, Offload> {
        self.offloads.drain(..)
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
    ) -> (Step, Hops<'a>, &'a mut [Parsed], &'a mut Vec<Offload>) {
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
            &mut self.offloads,
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
    /// SCTP packet without a connection whose first chunk is not an INIT (or is an ABORT).
    SctpNonInitNoConn,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 15] = [
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
        DropReason::SctpNonInitNoConn,
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
            DropReason::SctpNonInitNoConn => "sctp_non_init_no_conn",
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
    /// Table size (entries) from which [`Engine::process`] prefetches.
    prefetch_from: AtomicUsize,
    /// Connection synchronisation: settings, the master's queue, counters.
    pub sync: crate::sync::Sync,
    /// Whether established connections are offered to the fast path.
    offload: AtomicBool,
    /// The Call-IDs of SIP persistence templates (`--pe sip`).
    pub sip: crate::sip::SipCalls,
}

/// What every frame of a batch is processed with: the published tables, the worker's next
/// hops, the moment and the counter slot.
struct Batch<'a> {
    t: &'a Tables,
    hops: Hops<'a>,
    step: Step,
    /// The sync daemons' roles, read once a batch.
    sync: crate::sync::Mode,
    /// Where offloads go while the fast path is on.
    offloads: Option<&'a mut Vec<Offload>>,
}

/// A new connection's facts, as the classification found them: its protocol, key, the hash of
/// its client side (when the prefetching pass made it) and its service.
struct NewConn<'s> {
    proto: Protocol,
    key: ConnKey,
    h: Option<ClientHash>,
    svc: &'s Arc<Service>,
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

    /// Count the verdict a step wrote into the frame's slot `v` (see [`Settled`]).
    #[inline(always)]
    fn settle(&mut self, _: Settled, v: &Verdict) {
        self.count(v);
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

/// What a step of the data path returns once it has written its frame's verdict into the
/// frame's slot, the one channel of a verdict (a forward verdict written there in place: store
/// forwarding, as `forward_in` and `forward_reply` do).
#[must_use]
struct Settled;

/// Write `v` into the frame's slot `out`.
#[inline(always)]
fn put(out: &mut Verdict, v: Verdict) -> Settled {
    *out = v;
    Settled
}

/// What the prefetching pass learned of a packet's first table lookup: whether it is a NAT
/// reply lookup (the packet comes from a NAT real server), and the hash of its client side.
#[derive(Debug, Clone, Copy)]
struct FirstLookup {
    from_nat: bool,
    h: ClientHash,
}

/// A frame parsed ahead, with its first lookup when it is TCP or UDP.
type Parsed = (Result<Packet, ParseError>, Option<FirstLookup>);

/// Frames whose table lookups [`Engine::process`] announces together.
pub const PREFETCH_GROUP: usize = 32;

/// Table size (entries) from which [`Engine::process`] prefetches by default. Below
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
            prefetch_from: AtomicUsize::new(PREFETCH_FROM),
            sync: crate::sync::Sync::default(),
            offload: AtomicBool::new(false),
            sip: crate::sip::SipCalls::new(seed),
        }
    }

    /// Offer established TCP connections (direct routing and NAT) to the XDP fast path: the
    /// workers' [`WorkerState::take_offloads`] then gives each direction once.
    pub fn set_offload(&self, on: bool) {
        self.offload.store(on, Relaxed);
    }

    /// The defences' once-a-second work (`defense_work_handler`): their levels from the
    /// table's free room, then, while `drop_entry` is on, a pass of random entry dropping.
    /// Returns the entries dropped.
    pub fn defence_tick(&self, now: Time) -> usize {
        // (With it, once a minute, the SIP slots of expired templates are forgotten.)
        self.sip
            .tick(|k| self.conns.with_conn(k, now, |_| ()).is_some());
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

    /// Set the table size (entries) from which [`Engine::process`] prefetches; 0: always;
    /// `usize::MAX`: never.
    pub fn set_prefetch_from(&self, entries: usize) {
        self.prefetch_from.store(entries, Relaxed);
    }

    /// The table size (entries) from which [`Engine::process`] prefetches.
    pub fn prefetch_from(&self) -> usize {
        self.prefetch_from.load(Relaxed)
    }

    fn drop(&self, r: DropReason) -> Verdict {
        self.counters.drops[r as usize].fetch_add(1, Relaxed);
        Verdict::Drop(r)
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
        let mut cache = HopCache::new();
        let b = &mut Batch {
            t,
            sync: self.sync.mode(),
            offloads: None,
            hops: Hops {
                routes,
                cache: &mut cache,
            },
            step: Step {
                now,
                w: Counting::SHARED,
            },
        };
        let o = self.classify(b, frame, &mut v);
        let mut tally = Tally::default();
        tally.settle(o, &v);
        tally.add_to(&self.counters);
        v
    }
}

#[cfg(test)]
mod tests;
