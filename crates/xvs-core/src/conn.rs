//! The connection table: (protocol, client, virtual) → destination, state and expiry; NAT
//! replies (protocol, real server, client) are found in the same map.
//!
//! Layout: a fixed number of shards, each a mutex around its entries, packed in a vector of
//! fixed-size chunks ([`Chunked`]), and an index of their positions (`index::Index`); both grow with
//! the entries up to the shard's share of the capacity. Memory follows the connections (about
//! 110 bytes each), and a small table stays small enough for the caches and the TLB (a table
//! allocated at its full capacity spreads 10 K connections over hundreds of megabytes: one TLB
//! and cache miss per lookup). A growth rebuilds *one shard's* index (at most capacity / shards
//! entries, 4,096 at 1 M) and moves no entry, never the whole table, so its cost on the data
//! path is bounded.
//! Entries are hashed by their client side only (protocol, client address, client port), which
//! both directions of a connection carry: a NAT reply hashes to the very group of buckets its
//! connection sits in, so it is found by the same probe with another comparison (real server
//! instead of virtual service), under one lock, even when it arrives on another NIC queue than
//! its request. No reply index, no second entry, no second cache miss per NAT connection.
//! Templates live in the same table; a connection refers to its template by key and the two are
//! never locked at the same time (no lock ordering to get wrong).

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use spin::relax::Yield;

use crate::chunks::{Chunked, CHUNK, FIRST};
use crate::defence::DropEntryCounters;
use crate::dest::{Binding, ConnForward, DestState};
use crate::hash::hash_endpoint;
use crate::index::{self, Index, MAX_LOAD};
use crate::proto::{SctpState, TcpState};
use crate::service::ServiceLive;
use crate::types::{ForwardMethod, Time};

/// A shard's lock: a spin lock (the `spin` crate's, through `lock_api`), taken once or twice
/// per packet and held for tens of nanoseconds. Its unlock is a plain release store, where a
/// parking lock's is a locked compare-and-swap (it must look for parked waiters). A waiter yields the CPU between its tries, so a holder
/// preempted on the same core (the control thread listing a shard, a growth rebuild) gets to
/// run.
type RawShardLock = spin::mutex::SpinMutex<(), Yield>;
type Mutex<T> = lock_api::Mutex<RawShardLock, T>;
type MutexGuard<'a, T> = lock_api::MutexGuard<'a, RawShardLock, T>;
type MappedMutexGuard<'a, T> = lock_api::MappedMutexGuard<'a, RawShardLock, T>;

/// Connection flag: the connection counts in InActConn.
pub const CONN_F_INACTIVE: u16 = 0x100;
/// Connection flag: no reply seen by the director yet (DR/TUN always).
pub const CONN_F_NOOUTPUT: u16 = 0x80;
/// Connection flag: a persistence template.
pub const CONN_F_TEMPLATE: u16 = 0x1000;
/// Connection flag: one-packet scheduling.
pub const CONN_F_ONE_PACKET: u16 = 0x2000;
/// Connection flag: entered from a sync message.
pub const CONN_F_SYNC: u16 = 0x0020;
/// xvs's own: the client → server direction is offloaded to the XDP fast path.
pub const CONN_F_OFFLOAD_IN: u16 = 0x4000;
/// xvs's own: the server → client direction (NAT replies) is offloaded.
pub const CONN_F_OFFLOAD_OUT: u16 = 0x8000;
/// The flags that are xvs's own and never leave it (sync records).
pub const CONN_F_XVS_ONLY: u16 = CONN_F_OFFLOAD_IN | CONN_F_OFFLOAD_OUT;

/// Template state: not yet assured.
pub const TPL_S_NONE: u8 = 0;
/// Template state: a controlled connection was established.
pub const TPL_S_ASSURED: u8 = 1;

/// Entries a shard has room for before its first growth.
const INITIAL_PER_SHARD: usize = 16;

/// Seconds a template that still controls connections lives on when its timer fires.
const TEMPLATE_REARM_SECS: u32 = 60;

/// Key of a connection or template, in the incoming direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// IP protocol number (0 for fwmark templates).
    pub proto: u8,
    /// Client address (masked for templates).
    pub caddr: IpAddr,
    /// Client port (0 for templates).
    pub cport: u16,
    /// Virtual address (the fwmark as an IPv4 address for fwmark templates).
    pub vaddr: IpAddr,
    /// Virtual port.
    pub vport: u16,
}

impl ConnKey {
    /// This key as a [`KeyRef`].
    pub fn view(&self) -> KeyRef<'_> {
        KeyRef {
            proto: self.proto,
            caddr: &self.caddr,
            cport: self.cport,
            vaddr: &self.vaddr,
            vport: self.vport,
        }
    }
}

/// A [`ConnKey`] whose addresses are borrowed where they live: the data path looks up a
/// packet's connection with the addresses of its parsed headers, and builds a `ConnKey` (two
/// 17-byte copies) only for a connection it inserts.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    /// IP protocol number.
    pub proto: u8,
    /// Client address.
    pub caddr: &'a IpAddr,
    /// Client port.
    pub cport: u16,
    /// Virtual address.
    pub vaddr: &'a IpAddr,
    /// Virtual port.
    pub vport: u16,
}

impl KeyRef<'_> {
    /// Whether `k` is this key. The ports first: they tell most entries of a bucket apart.
    #[inline(always)]
    fn matches(&self, k: &ConnKey) -> bool {
        k.cport == self.cport
            && k.vport == self.vport
            && k.proto == self.proto
            && k.caddr == *self.caddr
            && k.vaddr == *self.vaddr
    }

    /// The owned key.
    pub fn to_key(&self) -> ConnKey {
        ConnKey {
            proto: self.proto,
            caddr: *self.caddr,
            cport: self.cport,
            vaddr: *self.vaddr,
            vport: self.vport,
        }
    }
}

/// Key of a NAT reply: (protocol, real server, client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    /// IP protocol number.
    pub proto: u8,
    /// Real-server address.
    pub daddr: IpAddr,
    /// Real-server port.
    pub dport: u16,
    /// Client address.
    pub caddr: IpAddr,
    /// Client port.
    pub cport: u16,
}

/// One connection or template.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Real-server port (the real server's address is `dest.addr`).
    pub dport: u16,
    /// The destination it is bound to.
    pub dest: Arc<DestState>,
    /// The service, for its counters.
    pub svc: Arc<ServiceLive>,
    /// Forwarding method and tunnel settings, copied at bind time.
    pub fwd: ConnForward,
    /// Protocol state (TCP state number, 0 for UDP, template state).
    pub state: u8,
    /// CONN_F_* flags.
    pub flags: u16,
    /// Timeout of the current state, seconds.
    pub timeout: u32,
    /// When the entry expires.
    pub expires: Time,
    /// The template that controls this connection (boxed: only persistent services have one,
    /// and inline it would add 32 bytes to every entry).
    pub template: Option<Box<ConnKey>>,
    /// For templates: how many connections it controls.
    pub controlled: u32,
    /// Incoming packets seen, wrapping at 65,536: the sync decision takes it modulo the sync
    /// period, and `drop_entry` looks only at entries idle for a minute with fewer than 9.
    pub in_pkts: u16,
    /// The state last sent to the sync backups (mainline's `old_state`).
    pub sync_state: u8,
    /// The expiry the last sync send announced (mainline's `sync_endtime`), for
    /// `sync_refresh_period`: seconds modulo 16,384 in the high 14 bits, the retries of that
    /// send in the low 2; 0 before the first send (see `sync::needed`).
    pub sync_end: u16,
}

impl Conn {
    /// Whether this entry is a persistence template.
    pub fn is_template(&self) -> bool {
        self.flags & CONN_F_TEMPLATE != 0
    }

    /// Whether it counts in InActConn.
    pub fn is_inactive(&self) -> bool {
        self.flags & CONN_F_INACTIVE != 0
    }

    /// When its timer was last armed (its last packet, for a connection), at most `now`.
    fn last_seen(&self, now: Time) -> u64 {
        self.expires
            .0
            .saturating_sub(u64::from(self.timeout) * 1000)
            .min(now.0)
    }

    /// Re-arm the timer with `secs`.
    pub fn rearm(&mut self, now: Time, secs: u32) {
        self.timeout = secs;
        self.expires = now.plus_secs(secs);
    }

    /// Whether this entry is the connection a NAT reply `rk` belongs to.
    fn answers(&self, key: &ConnKey, rk: &ReplyKey) -> bool {
        self.dest.addr == rk.daddr
            && self.dport == rk.dport
            && key.cport == rk.cport
            && key.caddr == rk.caddr
            && key.proto == rk.proto
            && self.fwd.method == ForwardMethod::Masq
            && !self.is_template()
    }

    /// The connection bound to its destination (counted there by its [`Binding`]): how a new
    /// entry is made. From then on the table releases the binding, when it removes the entry
    /// or refuses it ([`ConnTable::admit`]).
    pub fn bound(self) -> Conn {
        self.dest.bind(self.binding());
        self
    }

    /// Release the binding of a connection that never went into the table (one-packet
    /// scheduling).
    pub fn release(self) {
        self.unbind();
    }

    /// What the connection counts in at its destination.
    pub fn binding(&self) -> Binding {
        if self.is_template() {
            Binding::Template
        } else if self.is_inactive() {
            Binding::Inactive
        } else {
            Binding::Active
        }
    }

    fn unbind(&self) {
        self.dest.unbind(self.binding());
    }
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The shard reached its share of the table's capacity.
    Full,
    /// An entry with this key exists.
    Exists,
}

/// Keys hashed by their client side (protocol, client address, client port): the one hash
/// both picks the shard and indexes the map, for connections and NAT replies alike.
trait ClientSide {
    fn client(&self) -> (u8, &IpAddr, u16);
}

impl ClientSide for KeyRef<'_> {
    fn client(&self) -> (u8, &IpAddr, u16) {
        (self.proto, self.caddr, self.cport)
    }
}

impl ClientSide for ConnKey {
    fn client(&self) -> (u8, &IpAddr, u16) {
        (self.proto, &self.caddr, self.cport)
    }
}

impl ClientSide for ReplyKey {
    fn client(&self) -> (u8, &IpAddr, u16) {
        (self.proto, &self.caddr, self.cport)
    }
}

/// The hash of a client side ([`hash_endpoint`]). The address by reference: the data path
/// hashes addresses the parser has just written, and a copy would wait for those stores.
#[inline(always)]
fn hash_client(hasher: &ahash::RandomState, (proto, addr, port): (u8, &IpAddr, u16)) -> u64 {
    let mut state = hasher.build_hasher();
    hash_endpoint(&mut state, proto, addr, port);
    state.finish()
}

/// One entry: key and connection, 96 bytes aligned to 32, so that every entry lies on exactly
/// two cache lines (on a 16-byte boundary a quarter of them spanned three) and a prefetch of
/// its first and last byte brings it whole.
#[derive(Debug)]
#[repr(align(32))]
struct Entry(ConnKey, Conn);

/// One shard's entries, packed in a vector of fixed-size chunks ([`Chunked`]: growth never
/// moves an entry) with no empty buckets between them, and an index of their positions
/// ([`Index`]: 64-byte buckets of 12 positions and their tags, 5⅓ bytes a slot). An index at a
/// load of 7/32 to 7/8 (see `grow_at`) costs 6 to 25 bytes per entry, where a map holding the
/// entries themselves would leave 1/8 to 9/16 of its entry-sized buckets empty. A removal moves
/// the last entry into the hole and re-points its index slot.
///
/// The shard grows its index at a load of its own (`grow_at`, see [`grow_load`]): the shards of
/// a table fill evenly, and at a single threshold all of them would grow within the same
/// second, each rebuild reading every entry of its shard.
#[derive(Debug)]
struct Shard {
    index: Index,
    entries: Chunked<Entry>,
    /// The index's load, in 1/1024, past which an insert first doubles its buckets.
    grow_at: u16,
    /// Where the next search for an entry to evict starts (see [`ConnTable::admit`]).
    hand: usize,
    /// Entries the hand has passed since it last saw one of the first two tiers (expired,
    /// unestablished, UDP): an idle established connection goes only once a whole turn found
    /// none.
    dry: usize,
}

/// The load (in 1/1024) at which shard `i` of `n` grows its index: from 7/8 (the index's
/// highest, [`MAX_LOAD`]) down to half of it, evenly in log scale over the shards, so that as
/// an evenly filled table doubles, its shards grow one after the other instead of all at once. On average an index
/// is then a little emptier (1 to 4 bytes more per connection, measured at 1 M and 9 M).
fn grow_load(i: usize, n: usize) -> u16 {
    (MAX_LOAD as f64 * (-(i as f64 + 0.5) / n as f64).exp2()) as u16
}

impl Shard {
    fn with_capacity(n: usize, grow_at: u16) -> Shard {
        Shard {
            index: Index::with_capacity(n),
            entries: Chunked::new(),
            grow_at,
            hand: 0,
            dry: 0,
        }
    }

    /// Before an insert: double the index's slots if one more entry takes it past `grow_at`.
    fn grow_if_due(&mut self, hasher: &ahash::RandomState) {
        let slots = self.index.nominal_slots();
        if (self.index.len() + 1) * 1024 <= slots * usize::from(self.grow_at) {
            return;
        }
        self.rebuild(hasher, Index::with_nominal_slots(slots * 2));
    }

    /// Replace the index by `index` (which must have room for every entry), filled by walking
    /// the entries in order (sequential reads).
    fn rebuild(&mut self, hasher: &ahash::RandomState, mut index: Index) {
        for (pos, Entry(k, _)) in self.entries.iter().enumerate() {
            let inserted = index.insert(hash_client(hasher, k.client()), pos as u32);
            debug_assert!(inserted, "an index built for its entries has room for them");
        }
        self.index = index;
    }

    /// Position of the entry hashed to `h` that `eq` accepts.
    #[inline(always)]
    fn find(&self, h: u64, eq: impl Fn(&Entry) -> bool) -> Option<usize> {
        let e = &self.entries;
        self.index
            .find(h, |i| e.get(i as usize).is_some_and(&eq))
            .map(|i| i as usize)
    }

    /// Position of `key`: the hinted one when it holds `key`, else a probe.
    #[inline(always)] // The hot lookup, once or twice per packet.
    fn position(&self, h: u64, hint: u32, key: KeyRef<'_>) -> Option<usize> {
        match self.entries.get(hint as usize) {
            Some(Entry(k, _)) if key.matches(k) => Some(hint as usize),
            _ => self.find(h, |Entry(k, _)| key.matches(k)),
        }
    }

    fn get_mut(&mut self, h: u64, key: &ConnKey) -> Option<&mut Conn> {
        let i = self.find(h, |Entry(k, _)| k == key)?;
        Some(&mut self.entries[i].1)
    }

    /// Remove the entry at `pos` (hash `h`); `hash` hashes the key of the entry that moves
    /// into its place.
    fn remove_at(&mut self, h: u64, pos: usize, hash: impl Fn(&ConnKey) -> u64) -> Entry {
        self.index.remove(h, pos as u32);
        let last = self.entries.len() - 1;
        let e = self.entries.swap_remove(pos);
        if pos != last {
            let moved = hash(&self.entries[pos].0);
            self.index.replace(moved, last as u32, pos as u32);
        }
        e
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Counters of the table itself.
#[derive(Debug, Default)]
pub struct TableCounters {
    /// New connections refused because the table was full.
    pub full: AtomicU64,
    /// Entries removed by expiry.
    pub expired: AtomicU64,
    /// Entries evicted to make room for a new one, by [`Eviction`].
    pub evicted: [AtomicU64; Eviction::ALL.len()],
}

/// Which kind of entry a full shard gave up for a new connection ([`ConnTable::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Eviction {
    /// Already expired (not yet swept): given up first.
    Expired = 0,
    /// A TCP connection that is not established (half-open, closing) or a persistence
    /// template not yet assured: given up with UDP, the longest silent first.
    Unestablished,
    /// A UDP connection: given up with the unestablished, the longest silent first.
    Datagram,
    /// An established TCP connection without a packet for 60 s, or an assured template that
    /// controls no connection: given up last.
    Idle,
}

impl Eviction {
    /// Its tier: a shard gives up an entry of the lowest tier it finds.
    fn tier(self) -> u8 {
        match self {
            Eviction::Expired => 0,
            Eviction::Unestablished | Eviction::Datagram => 1,
            Eviction::Idle => 2,
        }
    }
}

impl Eviction {
    /// Every kind, in order.
    pub const ALL: [Eviction; 4] = [
        Eviction::Expired,
        Eviction::Unestablished,
        Eviction::Datagram,
        Eviction::Idle,
    ];

    /// Its counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Eviction::Expired => "evicted_expired",
            Eviction::Unestablished => "evicted_unestablished",
            Eviction::Datagram => "evicted_udp",
            Eviction::Idle => "evicted_idle",
        }
    }
}

/// Entries a full shard looks at for one to evict, from its clock hand on: the first
/// [`EVICT_SAMPLE`], and up to [`EVICT_SAMPLE_MAX`] while none of them is an unestablished TCP
/// connection, a UDP one or dead.
pub const EVICT_SAMPLE: usize = 8;
/// See [`EVICT_SAMPLE`].
pub const EVICT_SAMPLE_MAX: usize = 32;

/// Milliseconds without a packet after which an established connection may be evicted (and
/// may be dropped by `drop_entry`, which uses the same 60 s).
const IDLE_MS: u64 = 60_000;

/// How readily an entry gives way to a new connection: its kind (whose tier comes first) and
/// when it last saw a packet (the longest silent first), or None when it never does (it
/// controls connections, or it is an established TCP connection that saw a packet in the last
/// 60 s). Within a tier, entries of the newcomer's protocol go first ([`ConnTable::admit`]),
/// then the silence decides: a flood of SYNs replaces its own oldest half-open entries, and a
/// flood of UDP flows its own oldest flows, leaving the other kind's handshakes alone.
fn eviction_rank(k: &ConnKey, c: &Conn, now: Time) -> Option<(Eviction, u64)> {
    if c.controlled > 0 {
        return None;
    }
    let kind = if c.expires.0 <= now.0 {
        Eviction::Expired
    } else if c.is_template() {
        if c.state == TPL_S_ASSURED {
            Eviction::Idle
        } else {
            Eviction::Unestablished
        }
    } else if k.proto == TCP || k.proto == SCTP {
        let established = if k.proto == TCP {
            TcpState::Established as u8
        } else {
            SctpState::Established as u8
        };
        if c.state != established {
            Eviction::Unestablished
        } else if c.last_seen(now) + IDLE_MS <= now.0 {
            Eviction::Idle
        } else {
            return None;
        }
    } else {
        Eviction::Datagram
    };
    Some((kind, c.last_seen(now)))
}

/// TCP's protocol number.
const TCP: u8 = 6;
/// SCTP's protocol number.
const SCTP: u8 = 132;

/// Heap bytes of a connection's boxed template key (persistent services only): the key and
/// the allocator's header.
pub const TEMPLATE_KEY_BYTES: usize = std::mem::size_of::<ConnKey>() + 16;

/// The most memory one shard of `per_shard` entries takes, growing its index at `grow_at`:
/// the index doubles while an insert below the capacity would take it past `grow_at`, and
/// entries fill whole chunks (each a vector: its header and the allocator's).
fn shard_max_bytes(per_shard: usize, grow_at: u16) -> usize {
    let mut nominal = Index::with_capacity(per_shard.min(INITIAL_PER_SHARD)).nominal_slots();
    while per_shard * 1024 > nominal * usize::from(grow_at) {
        nominal *= 2;
    }
    let index = nominal.div_ceil(index::SLOTS) * 64;
    // The first chunk doubles from FIRST up to a whole chunk as it fills.
    let (chunks, room) = if per_shard <= CHUNK {
        (1, per_shard.next_power_of_two().clamp(FIRST, CHUNK))
    } else {
        let n = per_shard.div_ceil(CHUNK);
        (n, n * CHUNK)
    };
    index + room * ENTRY + chunks * (std::mem::size_of::<Vec<Entry>>() + 16)
}

/// Milliseconds a half-open TCP connection (SYN_RECV, SYNACK) or SCTP association (INIT1,
/// INIT) is spared by `drop_entry` after its last packet: a real client's handshake completes
/// within a round trip, or a retransmission (TCP's first after 1 s, the next 2 s later), while
/// a flood's half-open entries stay silent. The kernel drops them at any age, and a client
/// whose handshake is in flight loses its connection.
const HALF_OPEN_GRACE_MS: u64 = 3_000;

/// Whether `drop_entry` drops this entry (`ip_vs_random_dropentry`'s choice).
fn drop_candidate(k: &ConnKey, c: &Conn, now: Time, counters: &mut DropEntryCounters) -> bool {
    if c.controlled > 0 {
        return false;
    }
    if c.is_template() {
        return c.state != TPL_S_ASSURED;
    }
    // `todrop_entry`: not if it saw a packet in the last 60 s; then one in k by its packets.
    let todrop = |counters: &mut DropEntryCounters| {
        c.last_seen(now) + IDLE_MS <= now.0 && counters.todrop(u32::from(c.in_pkts))
    };
    let half_open = || c.last_seen(now) + HALF_OPEN_GRACE_MS <= now.0;
    if k.proto == TCP {
        match TcpState::from_u8(c.state) {
            Some(TcpState::SynRecv | TcpState::Synack) => half_open(),
            Some(TcpState::Established) => todrop(counters),
            _ => false,
        }
    } else if k.proto == SCTP {
        match SctpState::from_u8(c.state) {
            Some(SctpState::Init1 | SctpState::Init) => half_open(),
            Some(SctpState::Established) => todrop(counters),
            _ => false,
        }
    } else {
        todrop(counters)
    }
}

/// One step of xorshift64 (the `drop_entry` pass's random places).
fn xorshift(s: &mut u64) -> u64 {
    let mut x = (*s).max(1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}

/// The table's hash of a client side (protocol, client address, client port): computed once
/// per packet by a caller that needs it several times (prefetch, then lookup), with the
/// position of the entry it probably names once [`ConnTable::candidate`] has looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHash {
    h: u64,
    hint: u32,
    /// Its shard ([`ConnTable::shard_of`] of `h`), computed once.
    shard: u32,
}

/// No position hint.
const NO_HINT: u32 = u32::MAX;

/// Where a shard's index keeps its memory, published for prefetching: the address of its
/// first bucket (0: none published) and the number of buckets ([`Index::layout`]). Written
/// under the shard's lock whenever the index may have moved, read without it; only ever used
/// as a hint.
#[derive(Debug, Default)]
struct Layout {
    base: AtomicUsize,
    buckets: AtomicUsize,
}

/// Bytes of one entry.
const ENTRY: usize = std::mem::size_of::<Entry>();

// At most 96 bytes from a 32-byte boundary: never more than two cache lines, which the
// candidate's two addresses (first and last byte) cover.
const _: () = assert!(ENTRY <= 96 && std::mem::align_of::<Entry>() == 32);

/// The sharded connection table.
#[derive(Debug)]
pub struct ConnTable {
    shards: Box<[Mutex<Shard>]>,
    layouts: Box<[Layout]>,
    per_shard: usize,
    hasher: ahash::RandomState,
    rover: AtomicUsize,
    /// Entries in the table, kept as they come and go (a plain `len` would lock every shard).
    count: AtomicUsize,
    /// Drops and expiries.
    pub counters: TableCounters,
}

/// Result of removing an entry: the template it was controlled by, if any.
type Removed = Option<ConnKey>;

impl ConnTable {
    /// A table for `capacity` entries (connections plus templates). `seed` keys the hash so that
    /// clients cannot aim at one shard.
    pub fn new(capacity: usize, seed: u64) -> ConnTable {
        let capacity = capacity.max(1);
        // Few shards keep the table dense (caches, TLB); 4,096 entries per shard at most for
        // tables up to 1 M keep an expiry sweep of one shard and a growth rehash short.
        let shards = (capacity / 4096).next_power_of_two().clamp(16, 256);
        // Positions in a shard are `u32`s.
        let per_shard = capacity.div_ceil(shards).min(u32::MAX as usize);
        let hasher = ahash::RandomState::with_seeds(
            seed,
            seed ^ 0x9E37_79B9_7F4A_7C15,
            0x243F_6A88,
            0x85A3_08D3,
        );
        let shards: Box<[Mutex<Shard>]> = (0..shards)
            .map(|i| {
                Mutex::new(Shard::with_capacity(
                    per_shard.min(INITIAL_PER_SHARD),
                    grow_load(i, shards),
                ))
            })
            .collect();
        let layouts = (0..shards.len()).map(|_| Layout::default()).collect();
        ConnTable {
            shards,
            layouts,
            per_shard,
            hasher,
            rover: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            counters: TableCounters::default(),
        }
    }

    /// Total capacity.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// The most memory the table takes, in bytes, with every shard full: entries in whole
    /// chunks, each shard's index at the size its growth load gives it at its capacity, and
    /// the shards themselves. (The boxed template key of each connection of a persistent
    /// service, [`TEMPLATE_KEY_BYTES`], comes on top.)
    pub fn max_bytes(&self) -> usize {
        let shards = self.shards.len();
        (0..shards)
            .map(|i| shard_max_bytes(self.per_shard, grow_load(i, shards)))
            .sum::<usize>()
            + shards * (std::mem::size_of::<Mutex<Shard>>() + std::mem::size_of::<Layout>())
    }

    /// The table's free room in pages (4 KiB) of the memory its entries would take: the
    /// unit of the `amemthresh` defence trigger ([`crate::defence`]).
    pub fn free_pages(&self) -> u64 {
        let free = self.capacity().saturating_sub(self.len_relaxed()) as u64;
        let per_entry = (self.max_bytes() / self.capacity().max(1)) as u64;
        free * per_entry / 4096
    }

    /// The `drop_entry` defence's once-a-second pass (`ip_vs_random_dropentry`): look at a
    /// 32nd of the entries, in runs of 32 from random places (`rng` is the caller's xorshift
    /// state), and drop, as the kernel does, templates not assured, TCP connections in
    /// SYN_RECV or SYNACK (silent for [`HALF_OPEN_GRACE_MS`]: the one difference), and,
    /// through `counters` (`todrop_entry`), established TCP and UDP
    /// connections without a packet for 60 s that saw 1 to 8 packets; never an entry that
    /// controls others. Returns the entries dropped.
    pub fn drop_entries(
        &self,
        now: Time,
        rng: &mut u64,
        counters: &mut DropEntryCounters,
    ) -> usize {
        const RUN: usize = 32;
        let runs = (self.len_relaxed() / 32).div_ceil(RUN);
        let mut dropped = 0;
        for _ in 0..runs {
            let r = xorshift(rng);
            let i = (r as usize) & (self.shards.len() - 1);
            let mut released = Vec::new();
            {
                let mut shard = self.lock(i);
                let n = shard.len();
                if n == 0 {
                    continue;
                }
                let mut pos = ((r >> 32) as usize) % n;
                for _ in 0..RUN.min(n) {
                    if pos >= shard.len() {
                        break;
                    }
                    let Entry(k, c) = &shard.entries[pos];
                    if drop_candidate(k, c, now, counters) {
                        let h = self.hash(k);
                        // The last entry moves into `pos`: look at it next.
                        released.extend(self.remove_at(&mut shard, h, pos));
                        dropped += 1;
                    } else {
                        pos += 1;
                    }
                }
            }
            for t in released {
                self.release_template(Some(t));
            }
        }
        dropped
    }

    fn hash<K: ClientSide>(&self, k: &K) -> u64 {
        hash_client(&self.hasher, k.client())
    }

    /// The shard from bits the maps do not use for their positions (low bits) or their
    /// control bytes (top 7 bits).
    fn shard_of(&self, h: u64) -> usize {
        ((h >> 40) as usize) & (self.shards.len() - 1)
    }

    /// The hash of a client side (protocol, client address, client port), for the `_at`
    /// lookups and [`ConnTable::lookup_address`].
    #[inline(always)] // Takes the address by reference: see its caller in the data path.
    pub fn client_hash(&self, proto: u8, addr: &IpAddr, port: u16) -> ClientHash {
        let h = hash_client(&self.hasher, (proto, addr, port));
        ClientHash {
            h,
            hint: NO_HINT,
            shard: self.shard_of(h) as u32,
        }
    }

    /// The hash, hint and shard of a lookup: the caller's [`ClientHash`], or the key's own.
    fn hash_hint_shard<K: ClientSide>(&self, h: Option<ClientHash>, key: &K) -> (u64, u32, usize) {
        match h {
            Some(c) => {
                debug_assert_eq!(c.h, self.hash(key));
                (c.h, c.hint, c.shard as usize)
            }
            None => {
                let h = self.hash(key);
                (h, NO_HINT, self.shard_of(h))
            }
        }
    }

    /// The index memory a lookup of the client side hashed to `h` reads first: the bucket at
    /// its probe position (tags and positions on one cache line; the entry's position is there
    /// unless that bucket was full). The address for a prefetch, from the shard's published
    /// layout; none while a shard has no published layout. Reads no table memory.
    pub fn lookup_address(&self, h: ClientHash) -> Option<usize> {
        let l = &self.layouts[h.shard as usize];
        let base = l.base.load(Relaxed);
        if base == 0 {
            return None;
        }
        Some(index::home_address(base, l.buckets.load(Relaxed), h.h))
    }

    /// The second step of a prefetch: under the shard's lock, read the index's home bucket
    /// (cheap once [`ConnTable::lookup_address`] was prefetched) for the position of the first
    /// entry whose tag matches `h`, remember it in `h` as a hint for the lookup, and return the
    /// addresses of that entry's first and last byte (its two cache lines: see `Entry`),
    /// without reading the entry itself.
    #[inline(always)] // Once per frame of a prefetched group, from one place.
    pub fn candidate(&self, h: &mut ClientHash) -> Option<[usize; 2]> {
        let shard = self.lock(h.shard as usize);
        let i = shard.index.home_candidate(h.h)?;
        h.hint = i;
        // Not read: only its address is taken.
        let start = shard.entries.address(i as usize)?;
        Some([start, start + ENTRY - 1])
    }

    /// Publish shard `i`'s layout after a change that may have moved its index.
    fn publish_layout(&self, i: usize, shard: &Shard) {
        let (base, buckets) = shard.index.layout();
        let l = &self.layouts[i];
        if l.base.load(Relaxed) != base || l.buckets.load(Relaxed) != buckets {
            l.buckets.store(buckets, Relaxed);
            l.base.store(base, Relaxed);
        }
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock()
    }

    /// Run `f` on the live entry for `key`. An expired entry is removed first and counts as
    /// missing (lazy expiry), so the data path never acts on a dead connection.
    pub fn with_conn<R>(
        &self,
        key: &ConnKey,
        now: Time,
        f: impl FnOnce(&mut Conn) -> R,
    ) -> Option<R> {
        self.conn_at(None, key.view(), now).map(|mut c| f(&mut c))
    }

    /// The live entry for `key` (hash `h` when the caller has it), locked in its shard until
    /// the guard is dropped: [`ConnTable::with_conn`] without a closure, for the data path,
    /// whose work on the entry then compiles into its own loop. Drop the guard before calling
    /// any other method of the table: they may lock the same shard (the lock is not
    /// reentrant).
    #[inline(always)] // Once per packet of the data path.
    pub fn conn_at(
        &self,
        h: Option<ClientHash>,
        key: KeyRef<'_>,
        now: Time,
    ) -> Option<MappedMutexGuard<'_, Conn>> {
        let (h, hint, i) = self.hash_hint_shard(h, &key);
        let mut expired = None;
        // Found and checked inside the mapping: the entry is indexed once more after the
        // lookup, not three times (a lookup, a check, a map).
        let found = MutexGuard::try_map(self.lock(i), |s| {
            let pos = s.position(h, hint, key)?;
            let c = &mut s.entries.get_mut(pos)?.1;
            if c.expires.0 <= now.0 {
                if c.controlled == 0 {
                    expired = Some(pos);
                    return None;
                }
                c.rearm(now, TEMPLATE_REARM_SECS);
            }
            Some(c)
        });
        match (found, expired) {
            (Ok(c), _) => Some(c),
            (Err(shard), Some(pos)) => {
                self.expire_at(shard, h, pos);
                None
            }
            (Err(_), None) => None,
        }
    }

    /// Run `f` on the connection a NAT reply belongs to.
    pub fn with_reply<R>(
        &self,
        rk: &ReplyKey,
        now: Time,
        f: impl FnOnce(&ConnKey, &mut Conn) -> R,
    ) -> Option<R> {
        self.with_reply_at(None, rk, now, f)
    }

    /// [`ConnTable::with_reply`] with the reply's [`ClientHash`] when the caller has it already.
    pub fn with_reply_at<R>(
        &self,
        h: Option<ClientHash>,
        rk: &ReplyKey,
        now: Time,
        f: impl FnOnce(&ConnKey, &mut Conn) -> R,
    ) -> Option<R> {
        // The reply and its connection share the client side, hence the hash, the shard and
        // the probe sequence; only the comparison differs.
        let (h, hint, i) = self.hash_hint_shard(h, rk);
        let mut shard = self.lock(i);
        let pos = match shard.entries.get(hint as usize) {
            Some(Entry(k, c)) if c.answers(k, rk) => hint as usize,
            _ => shard.find(h, |Entry(k, c)| c.answers(k, rk))?,
        };
        let Entry(k, c) = &mut shard.entries[pos];
        if c.expires > now {
            return Some(f(k, c));
        }
        self.expire_at(shard, h, pos);
        None
    }

    /// Remove the expired entry at `pos` (hash `h`) of the locked `shard`, count it, and release
    /// its template once the shard's lock is dropped (the two are never locked together).
    fn expire_at(&self, mut shard: MutexGuard<'_, Shard>, h: u64, pos: usize) {
        let tpl = self.remove_at(&mut shard, h, pos);
        drop(shard);
        self.counters.expired.fetch_add(1, Relaxed);
        self.release_template(tpl);
    }

    /// Insert a new entry. The caller has bound it to its destination; on error it must unbind.
    /// A full shard refuses it ([`InsertError::Full`]); the data path inserts with
    /// [`ConnTable::admit`], which makes room.
    pub fn insert(&self, key: ConnKey, conn: Conn) -> Result<(), (InsertError, Conn)> {
        self.insert_with(None, key, conn, None, |_| {})
    }

    /// Insert a new connection or template (hash `h` when the caller has it). A full shard
    /// makes room by evicting the entry that matters least among a few it looks at from its
    /// clock hand on ([`EVICT_SAMPLE`], up to [`EVICT_SAMPLE_MAX`]): an expired one, else a TCP
    /// connection not established, a template not assured or a UDP connection — of the
    /// newcomer's protocol first, so that a flood of one kind churns its own kind — else (only
    /// once a whole turn of the hand found none of those) an established connection idle for
    /// 60 s or an idle assured template, the longest silent first within a tier; never a template that
    /// controls connections or an established connection with a packet in the last 60 s (then
    /// the new entry is refused, [`InsertError::Full`]). The hand moves on by the entries
    /// looked at, so repeated evictions walk the whole shard. `on_insert` runs on the entry once it is in, under the
    /// shard's lock (a connection that was refused is never counted). The entry comes bound to
    /// its destination ([`Conn::bound`]); a refused one is returned with its binding released.
    pub fn admit(
        &self,
        h: Option<ClientHash>,
        key: ConnKey,
        conn: Conn,
        now: Time,
        on_insert: impl FnOnce(&Conn),
    ) -> Result<(), (InsertError, Conn)> {
        self.insert_with(h, key, conn, Some(now), on_insert)
    }

    /// Insert; with `evict_at`, make room in a full shard as [`ConnTable::admit`] says.
    fn insert_with(
        &self,
        h: Option<ClientHash>,
        key: ConnKey,
        conn: Conn,
        evict_at: Option<Time>,
        on_insert: impl FnOnce(&Conn),
    ) -> Result<(), (InsertError, Conn)> {
        let (h, _, i) = self.hash_hint_shard(h, &key);
        let mut shard = self.lock(i);
        if shard.find(h, |Entry(k, _)| *k == key).is_some() {
            conn.unbind();
            return Err((InsertError::Exists, conn));
        }
        let mut evicted = None;
        if shard.len() >= self.per_shard {
            match evict_at.and_then(|now| self.evict_one(&mut shard, now, key.proto)) {
                Some(tpl) => evicted = tpl,
                None => {
                    self.counters.full.fetch_add(1, Relaxed);
                    conn.unbind();
                    return Err((InsertError::Full, conn));
                }
            }
        } else {
            shard.grow_if_due(&self.hasher);
        }
        let pos = shard.entries.len();
        if !shard.index.insert(h, pos as u32) {
            drop(shard);
            self.release_template(evicted);
            debug_assert!(false, "an index below its shard's capacity has room");
            self.counters.full.fetch_add(1, Relaxed);
            conn.unbind();
            return Err((InsertError::Full, conn));
        }
        shard.entries.push(Entry(key, conn));
        on_insert(&shard.entries[pos].1);
        self.count.fetch_add(1, Relaxed);
        self.publish_layout(i, &shard);
        drop(shard);
        self.release_template(evicted);
        Ok(())
    }

    /// Evict one entry of the full, locked `shard` for a newcomer of protocol `proto` (see
    /// [`ConnTable::admit`]); None when none of those looked at may go. Returns the evicted
    /// entry's template key, to release once the lock is dropped.
    fn evict_one(&self, shard: &mut Shard, now: Time, proto: u8) -> Option<Removed> {
        let n = shard.len();
        if n == 0 {
            return None;
        }
        let start = shard.hand % n;
        // (kind, another protocol than the newcomer's, last packet, position)
        let mut best: Option<(Eviction, bool, u64, usize)> = None;
        let mut seen = 0;
        while seen < EVICT_SAMPLE_MAX.min(n) {
            if seen >= EVICT_SAMPLE && best.is_some_and(|b| b.0.tier() < Eviction::Idle.tier()) {
                break;
            }
            let pos = (start + seen) % n;
            seen += 1;
            let Entry(k, c) = &shard.entries[pos];
            let rank = eviction_rank(k, c, now);
            if rank.is_some_and(|(kind, _)| kind.tier() < Eviction::Idle.tier()) {
                shard.dry = 0;
            } else {
                shard.dry += 1;
            }
            if let Some((kind, last)) = rank {
                let other = k.proto != proto;
                if best.is_none_or(|b| (kind.tier(), other, last) < (b.0.tier(), b.1, b.2)) {
                    best = Some((kind, other, last, pos));
                }
                if kind == Eviction::Expired {
                    break;
                }
            }
        }
        shard.hand = start + seen;
        let (kind, _, _, pos) = best?;
        if kind == Eviction::Idle && shard.dry < n {
            // Half-open or UDP entries may remain where the hand has not looked this turn.
            return None;
        }
        let h = self.hash(&shard.entries[pos].0);
        let tpl = self.remove_at(shard, h, pos);
        self.counters.evicted[kind as usize].fetch_add(1, Relaxed);
        Some(tpl)
    }

    /// Remove an entry now (expire it), unbinding it from its destination and template.
    pub fn remove(&self, key: &ConnKey) -> bool {
        let h = self.hash(key);
        let mut shard = self.lock(self.shard_of(h));
        let tpl = self.remove_locked(&mut shard, h, key);
        drop(shard);
        let found = tpl.is_some();
        self.release_template(tpl.flatten());
        found
    }

    /// Returns None if absent, Some(template key) if removed.
    fn remove_locked(&self, shard: &mut Shard, h: u64, key: &ConnKey) -> Option<Removed> {
        let pos = shard.find(h, |Entry(k, _)| k == key)?;
        Some(self.remove_at(shard, h, pos))
    }

    /// Remove the entry at `pos` (hash `h`) of a locked shard; returns its template key.
    fn remove_at(&self, shard: &mut Shard, h: u64, pos: usize) -> Removed {
        let Entry(_, c) = shard.remove_at(h, pos, |k| self.hash(k));
        self.count.fetch_sub(1, Relaxed);
        c.unbind();
        c.template.map(|t| *t)
    }

    /// One connection fewer controlled by template `tpl` (if any).
    pub fn release_template(&self, tpl: Option<ConnKey>) {
        if let Some(t) = tpl {
            let h = self.hash(&t);
            let mut shard = self.lock(self.shard_of(h));
            if let Some(tc) = shard.get_mut(h, &t) {
                tc.controlled = tc.controlled.saturating_sub(1);
            }
        }
    }

    /// Look up a template and, if `usable` accepts it, count one more controlled connection and
    /// re-arm it; an unusable template is removed. Returns the template's destination and port.
    pub fn use_template(
        &self,
        key: &ConnKey,
        now: Time,
        usable: impl FnOnce(&Conn) -> bool,
    ) -> Option<(Arc<DestState>, u16)> {
        let h = self.hash(key);
        let mut shard = self.lock(self.shard_of(h));
        let t = shard.get_mut(h, key)?;
        if (t.expires > now || t.controlled > 0) && usable(t) {
            t.controlled += 1;
            let secs = t.timeout;
            t.rearm(now, secs);
            return Some((t.dest.clone(), t.dport));
        }
        let tpl = self.remove_locked(&mut shard, h, key);
        drop(shard);
        self.release_template(tpl.flatten());
        None
    }

    /// Mark a template ASSURED (a controlled connection was established).
    pub fn assure_template(&self, key: &ConnKey) {
        let h = self.hash(key);
        let mut shard = self.lock(self.shard_of(h));
        if let Some(t) = shard.get_mut(h, key) {
            t.state = TPL_S_ASSURED;
        }
    }

    /// Expire the entries of the next shard whose time has come. Call it regularly: each call
    /// costs one shard (about capacity / shards entries), never the whole table.
    pub fn expire_step(&self, now: Time) -> usize {
        let i = self.rover.fetch_add(1, Relaxed) & (self.shards.len() - 1);
        let mut released = Vec::new();
        let mut n = 0;
        {
            let mut shard = self.lock(i);
            let due: Vec<ConnKey> = shard
                .entries
                .iter_mut()
                .filter_map(|Entry(k, c)| {
                    if c.expires > now {
                        None
                    } else if c.controlled > 0 {
                        c.rearm(now, TEMPLATE_REARM_SECS);
                        None
                    } else {
                        Some(*k)
                    }
                })
                .collect();
            for k in due {
                let h = self.hash(&k);
                if let Some(t) = self.remove_locked(&mut shard, h, &k) {
                    n += 1;
                    released.extend(t);
                }
            }
            // Memory follows the connections down as well: after a flood has expired, a shard
            // left at under an eighth of its room gives most of it back (to half full).
            let (len, room) = (shard.len(), shard.index.capacity());
            if room > INITIAL_PER_SHARD * 8 && len < room / 8 {
                let keep = (len * 2).max(INITIAL_PER_SHARD);
                shard.rebuild(&self.hasher, Index::with_capacity(keep.max(len)));
                shard.entries.shrink_to(keep);
                self.publish_layout(i, &shard);
            }
        }
        for t in released {
            self.release_template(Some(t));
        }
        self.counters.expired.fetch_add(n as u64, Relaxed);
        n
    }

    /// Number of shards (an expiry sweep of the whole table takes this many steps).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Entries in the table (connections and templates).
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).len()).sum()
    }

    /// Entries in the table, without locking (exact when no insert or removal is under way).
    pub fn len_relaxed(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visit every entry (for `-L -c`); one shard is locked at a time.
    pub fn for_each(&self, mut f: impl FnMut(&ConnKey, &Conn)) {
        for i in 0..self.shards.len() {
            self.for_each_in_shard(i, &mut f);
        }
    }

    /// Visit the entries of shard `i` (of [`ConnTable::shard_count`]) under its lock.
    pub fn for_each_in_shard(&self, i: usize, mut f: impl FnMut(&ConnKey, &Conn)) {
        let shard = self.lock(i);
        for Entry(k, c) in shard.entries.iter() {
            f(k, c);
        }
    }

    /// Remove every entry (unbinding each).
    pub fn flush(&self) {
        for i in 0..self.shards.len() {
            let mut shard = self.lock(i);
            shard.index.clear();
            self.count.fetch_sub(shard.entries.len(), Relaxed);
            for Entry(_, c) in shard.entries.take_all() {
                c.unbind();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::DestConfig;
    use crate::sched::new_scheduler;

    fn dest() -> Arc<DestState> {
        let mut cfg = DestConfig::new("192.168.1.1".parse().unwrap(), 80);
        cfg.method = ForwardMethod::Masq;
        Arc::new(DestState::new(1, &cfg))
    }

    fn conn(d: &Arc<DestState>, now: Time, secs: u32) -> Conn {
        d.bind(Binding::Inactive);
        Conn {
            dport: d.port,
            dest: d.clone(),
            svc: Arc::new(ServiceLive::new(
                new_scheduler("rr", &[], &crate::hash::HashSeed::FIXED).unwrap(),
            )),
            fwd: d.forward(),
            state: 0,
            flags: CONN_F_INACTIVE,
            timeout: secs,
            expires: now.plus_secs(secs),
            template: None,
            controlled: 0,
            in_pkts: 0,
            sync_state: 0,
            sync_end: 0,
        }
    }

    /// The NAT reply of the connection `k` to destination `d` (port 80).
    fn reply_to(d: &DestState, k: &ConnKey) -> ReplyKey {
        ReplyKey {
            proto: k.proto,
            daddr: d.addr,
            dport: 80,
            caddr: k.caddr,
            cport: k.cport,
        }
    }

    fn key(cport: u16) -> ConnKey {
        ConnKey {
            proto: 6,
            caddr: "10.0.0.9".parse().unwrap(),
            cport,
            vaddr: "10.0.0.1".parse().unwrap(),
            vport: 80,
        }
    }

    #[test]
    fn insert_lookup_reply_expire() {
        let t = ConnTable::new(1000, 7);
        let d = dest();
        t.insert(key(1000), conn(&d, Time(0), 10)).unwrap();
        assert_eq!(d.inactive(), 1);
        assert_eq!(t.with_conn(&key(1000), Time(5000), |c| c.dport), Some(80));
        let rk = reply_to(&d, &key(1000));
        assert_eq!(t.with_reply(&rk, Time(5000), |k, _| k.cport), Some(1000));
        // Lazy expiry on lookup.
        assert_eq!(t.with_conn(&key(1000), Time(10_000), |_| ()), None);
        assert_eq!(d.inactive(), 0);
        assert!(t.is_empty());
        assert_eq!(t.with_reply(&rk, Time(10_000), |_, _| ()), None);
    }

    #[test]
    fn shard_locks_exclude_each_other() {
        // Workers count packets of the same few connections while another thread walks,
        // inserts and removes: no count is lost, so no two threads held a shard at once.
        const THREADS: u32 = 3;
        const ROUNDS: u32 = 20_000;
        let t = ConnTable::new(1000, 7);
        let d = dest();
        for port in 0..4 {
            t.insert(key(port), conn(&d, Time(0), 1000)).unwrap();
        }
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for i in 0..ROUNDS {
                        let mut c = t
                            .conn_at(None, key((i % 4) as u16).view(), Time(0))
                            .unwrap();
                        c.in_pkts = c.in_pkts.wrapping_add(1);
                    }
                });
            }
            s.spawn(|| {
                for i in 0..ROUNDS / 10 {
                    let port = 100 + (i % 50) as u16;
                    let _ = t.insert(key(port), conn(&d, Time(0), 1000));
                    t.for_each(|_, _| {});
                    t.remove(&key(port));
                }
            });
        });
        let mut total = 0;
        t.for_each(|k, c| {
            assert!(k.cport < 4, "{k:?} left behind");
            total += u32::from(c.in_pkts);
        });
        assert_eq!(total, THREADS * ROUNDS);
    }

    #[test]
    fn a_reply_finds_only_its_own_nat_connection() {
        let t = ConnTable::new(1000, 7);
        let nat = dest();
        let mut cfg = DestConfig::new("192.168.1.2".parse().unwrap(), 80);
        cfg.method = ForwardMethod::Route;
        let dr = Arc::new(DestState::new(2, &cfg));
        // One client port, three services: NAT to .1, DR to .2, and a NAT template for .1.
        t.insert(key(1000), conn(&nat, Time(0), 10)).unwrap();
        let k2 = ConnKey {
            vport: 443,
            ..key(1000)
        };
        t.insert(k2, conn(&dr, Time(0), 10)).unwrap();
        let tk = ConnKey {
            vport: 8080,
            ..key(1000)
        };
        let mut tpl = conn(&nat, Time(0), 10);
        tpl.flags |= CONN_F_TEMPLATE;
        t.insert(tk, tpl).unwrap();
        let rk = |daddr: &str, dport| ReplyKey {
            proto: 6,
            daddr: daddr.parse().unwrap(),
            dport,
            caddr: key(1000).caddr,
            cport: 1000,
        };
        assert_eq!(
            t.with_reply(&rk("192.168.1.1", 80), Time(1), |k, _| *k),
            Some(key(1000))
        );
        // No reply path for direct routing; wrong port, wrong client port: nothing.
        assert_eq!(
            t.with_reply(&rk("192.168.1.2", 80), Time(1), |_, _| ()),
            None
        );
        assert_eq!(
            t.with_reply(&rk("192.168.1.1", 81), Time(1), |_, _| ()),
            None
        );
        let other = ReplyKey {
            cport: 1001,
            ..rk("192.168.1.1", 80)
        };
        assert_eq!(t.with_reply(&other, Time(1), |_, _| ()), None);
        // Without the connection, the template does not answer for it.
        assert!(t.remove(&key(1000)));
        assert_eq!(
            t.with_reply(&rk("192.168.1.1", 80), Time(1), |_, _| ()),
            None
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn shards_grow_their_indexes_one_after_the_other() {
        // 256 shards filled evenly to about 24 entries each, in indexes of 32 slots: the shards
        // whose growth load is below 24/32 have doubled, the others not yet.
        let t = ConnTable::new(1 << 20, 9);
        assert_eq!(t.shard_count(), 256);
        let loads: Vec<u16> = (0..256).map(|i| t.lock(i).grow_at).collect();
        assert!(loads.windows(2).all(|w| w[0] > w[1]), "{loads:?}");
        assert!(loads[0] < 896 && loads[255] >= 448, "{loads:?}");
        let d = dest();
        let client = |p: u32| ConnKey {
            caddr: IpAddr::from([10, 2, (p >> 8) as u8, p as u8]),
            ..key(1000)
        };
        assert_eq!(t.lock(0).index.nominal_slots(), 32);
        for p in 0..256 * 24u32 {
            t.insert(client(p), conn(&d, Time(0), 1)).unwrap();
        }
        let slots: Vec<usize> = (0..256).map(|i| t.lock(i).index.nominal_slots()).collect();
        let grown = slots.iter().filter(|&&b| b > 32).count();
        assert!(
            (40..230).contains(&grown),
            "{grown} of 256 grown: {slots:?}"
        );
        // Every entry is still found through the rebuilt indexes.
        for p in 0..256 * 24u32 {
            let k = client(p);
            assert!(t.with_conn(&k, Time(0), |_| ()).is_some(), "{k:?} lost");
        }
    }

    #[test]
    fn maps_grow_with_entries_and_shrink_after_expiry() {
        let t = ConnTable::new(1 << 16, 5);
        let room = |t: &ConnTable| -> usize {
            (0..t.shard_count())
                .map(|i| {
                    let s = t.lock(i);
                    s.index.capacity() + s.entries.capacity()
                })
                .sum()
        };
        let empty = room(&t);
        assert!(
            empty <= t.shard_count() * 64,
            "not allocated for the capacity"
        );
        let d = dest();
        for p in 0..20_000u32 {
            let k = ConnKey {
                caddr: IpAddr::from([10, 1, (p >> 8) as u8, p as u8]),
                ..key(1000)
            };
            t.insert(k, conn(&d, Time(0), 1)).unwrap();
        }
        let full = room(&t);
        assert!((40_000..160_000).contains(&full), "room {full}");
        for _ in 0..t.shard_count() {
            t.expire_step(Time(2000));
        }
        assert!(t.is_empty());
        assert!(room(&t) < full / 8, "room {} after expiry", room(&t));
    }

    /// The published layout matches where the index really keeps the positions, and the
    /// candidate of the second step is the entry's real place: for entries in their home
    /// bucket (nearly all of them), the predicted bucket is the entry's own, and the candidate
    /// entry is the entry (then the lookup needs no probe).
    #[test]
    fn prefetch_addresses_point_at_the_index_slots_and_entries() {
        let t = ConnTable::new(1 << 16, 9);
        let d = dest();
        let keys: Vec<ConnKey> = (0..5_000u32)
            .map(|p| ConnKey {
                caddr: IpAddr::from([10, 2, (p >> 8) as u8, p as u8]),
                ..key(2000)
            })
            .collect();
        for k in &keys {
            t.insert(*k, conn(&d, Time(0), 10)).unwrap();
        }
        let (mut slot_exact, mut entry_exact) = (0, 0);
        for k in &keys {
            let mut ch = t.client_hash(k.proto, &k.caddr, k.cport);
            let bucket = t.lookup_address(ch).unwrap();
            assert_eq!(bucket % 64, 0, "a bucket is one cache line");
            // None for an entry that found its home bucket full: the candidate reads that
            // bucket only (counted below among the entries not at the predicted address).
            let Some([start, end]) = t.candidate(&mut ch) else {
                continue;
            };
            assert_eq!(end, start + ENTRY - 1);
            // Two cache lines exactly.
            assert_eq!(end / 64 - start / 64, 1);
            let h = t.hash(k);
            let shard = t.lock(t.shard_of(h));
            let pos = shard.find(h, |Entry(x, _)| x == k).unwrap();
            let real = shard.index.bucket_address(h, pos as u32).unwrap();
            let (base, n) = shard.index.layout();
            assert!((base..base + n * 64).contains(&real));
            slot_exact += usize::from(real == bucket);
            let real_entry = &shard.entries[pos] as *const Entry as usize;
            entry_exact += usize::from(real_entry == start);
            // The hint the candidate left leads the lookup to the entry.
            assert_eq!(shard.position(h, ch.hint, k.view()), Some(pos));
        }
        println!(
            "{slot_exact} buckets, {entry_exact} entries of {} at the predicted address",
            keys.len()
        );
        assert!(slot_exact * 10 > keys.len() * 9, "{slot_exact} buckets");
        assert!(entry_exact * 10 > keys.len() * 9, "{entry_exact} entries");
    }

    /// Removals move the last entry of a shard into the hole: every remaining entry stays
    /// reachable, by connection and by NAT reply.
    #[test]
    fn removals_keep_every_other_entry_reachable() {
        let t = ConnTable::new(64, 4);
        let d = dest();
        let keys: Vec<ConnKey> = (0..300u16).map(key).collect();
        for k in &keys {
            t.insert(*k, conn(&d, Time(0), 10))
                .unwrap_or_else(|(_, refused)| drop(refused));
        }
        let present: Vec<ConnKey> = keys
            .iter()
            .copied()
            .filter(|k| t.with_conn(k, Time(1), |_| ()).is_some())
            .collect();
        assert!(present.len() >= 64);
        for (n, k) in present.iter().enumerate() {
            if n % 3 == 0 {
                assert!(t.remove(k));
            }
        }
        for (n, k) in present.iter().enumerate() {
            let found = t.with_conn(k, Time(1), |c| c.dport).is_some();
            assert_eq!(found, n % 3 != 0, "entry {n}");
            let replied = t.with_reply(&reply_to(&d, k), Time(1), |k, _| k.cport);
            assert_eq!(replied, found.then_some(k.cport), "reply {n}");
        }
        assert_eq!(t.len(), present.len() - present.len().div_ceil(3));
        assert_eq!(d.inactive() as usize, t.len());
    }

    proptest::proptest! {
        /// The dense shards against a model: any sequence of inserts, removals, lookups (by
        /// connection and by NAT reply, with and without position hints) and expiry sweeps
        /// leaves exactly the model's entries reachable, each by its own key.
        #[test]
        fn random_operations_match_a_model(
            ops in proptest::collection::vec((0u8..5, 0u16..200), 1..400)
        ) {
            let t = ConnTable::new(64 * 16, 11);
            let d = dest();
            let mut model = std::collections::HashMap::new();
            for (op, p) in ops {
                let k = key(p);
                match op {
                    0 | 1 => {
                        let expect = if model.contains_key(&k) {
                            Err(InsertError::Exists)
                        } else {
                            Ok(())
                        };
                        match t.insert(k, conn(&d, Time(0), 10 + u32::from(p % 3))) {
                            Ok(()) => {
                                proptest::prop_assert_eq!(expect, Ok(()));
                                model.insert(k, 10 + u32::from(p % 3));
                            }
                            Err((e, _)) => {
                                // A shard may fill before the table does.
                                proptest::prop_assert!(
                                    e == InsertError::Full || expect == Err(e)
                                );
                            }
                        }
                    }
                    2 => {
                        proptest::prop_assert_eq!(t.remove(&k), model.remove(&k).is_some());
                    }
                    3 => {
                        let mut ch = t.client_hash(k.proto, &k.caddr, k.cport);
                        t.candidate(&mut ch);
                        let got = t.conn_at(Some(ch), k.view(), Time(1)).map(|c| c.timeout);
                        proptest::prop_assert_eq!(got, model.get(&k).copied());
                    }
                    _ => {
                        // Entries of 10 s expire at 10.5 s; sweep every shard.
                        if p % 8 == 0 {
                            for _ in 0..t.shard_count() {
                                t.expire_step(Time(10_500));
                            }
                            model.retain(|_, secs| *secs > 10);
                        }
                    }
                }
            }
            proptest::prop_assert_eq!(t.len(), model.len());
            proptest::prop_assert_eq!(t.len_relaxed(), model.len());
            proptest::prop_assert_eq!(d.inactive() as usize, model.len());
            for (k, secs) in &model {
                proptest::prop_assert_eq!(t.with_conn(k, Time(1), |c| c.timeout), Some(*secs));
                let replied = t.with_reply(&reply_to(&d, k), Time(1), |k, _| k.cport);
                proptest::prop_assert_eq!(replied, Some(k.cport));
            }
        }
    }

    /// A table filled to its capacity takes no more than [`ConnTable::max_bytes`], and not
    /// much less: the bound is what xvsd reserves.
    #[test]
    fn a_full_table_stays_within_its_reservation() {
        for cap in [1000, 65_536, 300_000] {
            let t = ConnTable::new(cap, 2);
            let d = dest();
            let mut p = 0u32;
            while t.len_relaxed() < t.capacity() && p < 4 * cap as u32 {
                let k = ConnKey {
                    caddr: IpAddr::from((0x0a00_0000 + p).to_be_bytes()),
                    ..key(1000)
                };
                t.insert(k, conn(&d, Time(0), 10))
                    .unwrap_or_else(|(_, refused)| drop(refused));
                p += 1;
            }
            assert_eq!(t.len(), t.capacity());
            let used: usize = (0..t.shard_count())
                .map(|i| {
                    let s = t.lock(i);
                    s.index.slots() / index::SLOTS * 64 + s.entries.capacity() * ENTRY
                })
                .sum();
            let max = t.max_bytes();
            assert!(used <= max, "{cap}: {used} > {max}");
            assert!(used * 10 > max * 7, "{cap}: {used} far below {max}");
            assert!(
                max / t.capacity() <= 136,
                "{cap}: {} B each",
                max / t.capacity()
            );
        }
    }

    /// `n` keys (TCP, client ports from 1 on) of the shard `key(0)` falls in.
    fn keys_in_one_shard(t: &ConnTable, n: usize) -> Vec<ConnKey> {
        let shard = t.shard_of(t.hash(&key(0)));
        (1..u16::MAX)
            .map(key)
            .filter(|k| t.shard_of(t.hash(k)) == shard)
            .take(n)
            .collect()
    }

    /// Eviction order: an expired entry first, then a half-open TCP connection, then UDP (the
    /// earliest to expire), then an idle established one; never a busy established one.
    #[test]
    fn admission_evicts_what_matters_least() {
        // 16 shards of one entry: every key of one shard competes for its single place.
        let t = ConnTable::new(16, 4);
        assert_eq!(t.capacity(), 16);
        let d = dest();
        let same_shard = keys_in_one_shard(&t, 8);
        let with_state = |state: TcpState, secs: u32, now: u64| {
            let mut c = conn(&d, Time(now), secs);
            c.state = state as u8;
            c
        };
        let try_admit = |k: ConnKey, now: u64| {
            t.admit(None, k, conn(&d, Time(now), 10), Time(now), |_| {})
                .map_err(|(e, _)| e)
        };
        // Busy established: refused.
        t.insert(same_shard[0], with_state(TcpState::Established, 900, 0))
            .unwrap();
        assert_eq!(try_admit(same_shard[1], 30_000), Err(InsertError::Full));
        // Idle for 60 s: it goes.
        assert_eq!(try_admit(same_shard[1], 61_000), Ok(()));
        assert_eq!(t.counters.evicted[Eviction::Idle as usize].load(Relaxed), 1);
        // The newcomer (TCP state NONE, half-open) gives way to the next.
        assert_eq!(try_admit(same_shard[2], 61_001), Ok(()));
        assert_eq!(
            t.counters.evicted[Eviction::Unestablished as usize].load(Relaxed),
            1
        );
        // Expired: it goes first, counted as such.
        assert_eq!(try_admit(same_shard[3], 200_000), Ok(()));
        assert_eq!(
            t.counters.evicted[Eviction::Expired as usize].load(Relaxed),
            1
        );
        // A UDP connection goes too.
        t.remove(&same_shard[3]);
        let udp = (1..5000u16)
            .map(|p| ConnKey {
                proto: 17,
                ..key(p)
            })
            .find(|k| t.shard_of(t.hash(k)) == t.shard_of(t.hash(&key(0))))
            .unwrap();
        t.insert(udp, conn(&d, Time(200_000), 300)).unwrap();
        assert_eq!(try_admit(same_shard[5], 200_001), Ok(()));
        assert_eq!(
            t.counters.evicted[Eviction::Datagram as usize].load(Relaxed),
            1
        );
        // A template controlling connections never goes.
        t.remove(&same_shard[5]);
        let mut tpl = conn(&d, Time(0), 10);
        tpl.flags |= CONN_F_TEMPLATE;
        tpl.controlled = 1;
        t.insert(same_shard[6], tpl).unwrap();
        assert_eq!(try_admit(same_shard[7], 300_000), Err(InsertError::Full));
        assert_eq!(t.counters.full.load(Relaxed), 2);
        assert_eq!(d.inactive() as usize + d.active() as usize, t.len());
    }

    /// Within a tier a newcomer takes the place of its own protocol's longest silent entry, even
    /// when the other protocol's is older: a UDP flood replaces UDP flows and leaves TCP
    /// handshakes alone, and a SYN flood the other way round.
    #[test]
    fn a_newcomer_replaces_its_own_kind_first() {
        // 16 shards of two entries; each case fills one with an older entry of the other kind
        // and a newer one of the newcomer's.
        for newcomer_udp in [true, false] {
            let t = ConnTable::new(32, 5);
            let d = dest();
            let tcp = keys_in_one_shard(&t, 2);
            let shard = t.shard_of(t.hash(&tcp[0]));
            let udp: Vec<ConnKey> = (1..u16::MAX)
                .map(|p| ConnKey {
                    proto: 17,
                    ..key(p)
                })
                .filter(|k| t.shard_of(t.hash(k)) == shard)
                .take(2)
                .collect();
            // The newcomer's kind is the newer entry: silence alone would evict the other.
            let (own, other) = if newcomer_udp {
                (&udp, &tcp)
            } else {
                (&tcp, &udp)
            };
            t.insert(other[0], conn(&d, Time(1_000), 300)).unwrap();
            t.insert(own[0], conn(&d, Time(2_000), 300)).unwrap();
            let got = t.admit(None, own[1], conn(&d, Time(3_000), 60), Time(3_000), |_| {});
            assert!(got.is_ok(), "udp {newcomer_udp}");
            assert!(t.with_conn(&other[0], Time(3_001), |_| ()).is_some());
            assert!(t.with_conn(&own[0], Time(3_001), |_| ()).is_none());
            let kind = if newcomer_udp {
                Eviction::Datagram
            } else {
                Eviction::Unestablished
            };
            assert_eq!(t.counters.evicted[kind as usize].load(Relaxed), 1);
        }
    }

    /// An idle established connection goes only once a whole turn of the hand found no
    /// half-open or UDP entry: the one half-open entry of a shard is found first.
    #[test]
    fn idle_established_connections_go_only_after_a_whole_turn() {
        let t = ConnTable::new(16 * 40, 6);
        assert_eq!(t.per_shard, 40);
        let d = dest();
        let keys = keys_in_one_shard(&t, 44);
        for k in &keys[..39] {
            let mut c = conn(&d, Time(0), 900);
            c.state = TcpState::Established as u8;
            t.insert(*k, c).unwrap();
        }
        // The last position: a half-open connection, as silent as the others.
        t.insert(keys[39], conn(&d, Time(0), 120)).unwrap();
        let admit = |k: ConnKey| {
            let mut c = conn(&d, Time(70_000), 900);
            c.state = TcpState::Established as u8;
            t.admit(None, k, c, Time(70_000), |_| {})
                .map_err(|(e, _)| e)
        };
        let evicted = |e: Eviction| t.counters.evicted[e as usize].load(Relaxed);
        // 32 idle established looked at: not a whole turn, refused.
        assert_eq!(admit(keys[40]), Err(InsertError::Full));
        // The hand goes on and finds the half-open one.
        assert_eq!(admit(keys[41]), Ok(()));
        assert_eq!(
            (evicted(Eviction::Unestablished), evicted(Eviction::Idle)),
            (1, 0)
        );
        // Now only established connections: after a whole turn without a half-open or UDP
        // entry, the idlest goes (the newcomers are busy: never).
        assert_eq!(admit(keys[42]), Err(InsertError::Full));
        assert_eq!(admit(keys[43]), Ok(()));
        assert_eq!(evicted(Eviction::Idle), 1);
        assert_eq!(t.with_conn(&keys[41], Time(70_001), |_| ()), Some(()));
    }

    #[test]
    fn capacity_is_enforced() {
        let t = ConnTable::new(16, 1);
        let d = dest();
        let mut full = 0;
        for p in 0..200 {
            if let Err((e, _)) = t.insert(key(p), conn(&d, Time(0), 10)) {
                assert_eq!(e, InsertError::Full);
                full += 1;
            }
        }
        assert!(t.len() <= t.capacity());
        assert_eq!(full, 200 - t.len());
        assert_eq!(d.inactive() as usize, t.len());
    }

    #[test]
    fn sweep_expires_shard_by_shard() {
        let t = ConnTable::new(100_000, 3);
        let d = dest();
        for p in 0..5000 {
            t.insert(key(p), conn(&d, Time(0), 1)).unwrap();
        }
        let mut removed = 0;
        for _ in 0..t.shard_count() {
            let n = t.expire_step(Time(2000));
            assert!(n < 5000);
            removed += n;
        }
        assert_eq!(removed, 5000);
        assert_eq!(d.inactive(), 0);
    }

    #[test]
    fn template_outlives_its_timer_while_controlling() {
        let t = ConnTable::new(100, 3);
        let d = dest();
        let tk = ConnKey { cport: 0, ..key(0) };
        let mut tpl = conn(&d, Time(0), 5);
        tpl.flags = CONN_F_TEMPLATE;
        d.unbind(Binding::Inactive);
        d.bind(Binding::Template);
        t.insert(tk, tpl).unwrap();
        assert!(t.use_template(&tk, Time(1000), |_| true).is_some());
        let mut c = conn(&d, Time(1000), 100);
        c.template = Some(Box::new(tk));
        t.insert(key(5), c).unwrap();
        // At 7 s the template's own timer (5 s from 1 s) has fired but it still controls key(5).
        for _ in 0..t.shard_count() {
            t.expire_step(Time(7000));
        }
        assert_eq!(d.persist(), 1);
        t.remove(&key(5));
        for _ in 0..t.shard_count() {
            t.expire_step(Time(200_000));
        }
        assert_eq!(d.persist(), 0);
        assert!(t.is_empty());
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Memory per entry as documented in docs/architecture.md: a connection entry is its key
    /// and value, plus an index slot and control byte; NAT connections have no second entry.
    #[test]
    fn entry_sizes_are_as_documented() {
        let conn = std::mem::size_of::<Entry>();
        println!("conn entry {conn} B");
        assert_eq!(std::mem::size_of::<ConnKey>(), 40);
        assert!(
            conn <= 96,
            "conn entry grew to {conn} B: update docs/architecture.md"
        );
    }
}
