//! The machine's floor under the engine's figures: what one lookup of a random key in a
//! hashbrown table of 96-byte entries costs at 10 K and 1 M entries (the connection table's
//! entry size); one uncontended lock and unlock of a `parking_lot::Mutex`, the connection
//! table's shard lock (two per packet on the workers' path); and `floor_path`, the least an
//! established-flow packet costs with a table of the same kind: a minimal direct-routing path
//! for IPv4 TCP alone (fixed-offset parse, hash, shard lock, lookup by a key of plain integers,
//! state and timer, three counter sets, MAC and TTL rewrite), without anything else IPVS asks
//! of a packet, one packet after the other; and the same path with its lookups announced
//! ahead, on a table laid out for it (open addressing, 32-byte slots holding key and
//! connection, whose address follows from the hash alone): a group of 32 frames is read and
//! its slots prefetched before any is processed. No xvs code runs here (but xvs-xdp's
//! prefetch): these are what the machine allows, for comparison with `engine`
//! (docs/performance.md).
//!
//! Run: `cargo bench -p xvs-bench --bench floor`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{group, Pace};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use parking_lot::Mutex;
use xvs_bench::{
    flow, table_sizes, write_client_frame, Rng, BATCH, CLIENT_FRAME_LEN, HEADROOM, SLOT,
};
use xvs_core::datapath::PREFETCH_GROUP;

/// Lookups per iteration (independent of each other, so the CPU may overlap their misses as it
/// overlaps the misses of a batch of packets).
const LOOKUPS: usize = 256;

fn lookup(c: &mut Criterion) {
    let mut g = group(c, "floor_lookup", LOOKUPS as u64, Pace::Steady);
    for &n in table_sizes() {
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let mut t = hashbrown::HashMap::with_capacity_and_hasher(n as usize, hasher);
        for k in 0..n {
            t.insert(k, [k; 11]); // 8-byte key + 88 bytes: 96-byte entries
        }
        let mut rng = Rng::new(5);
        g.bench_function(BenchmarkId::new("hashbrown_96B", n), |b| {
            b.iter_batched(
                || (0..LOOKUPS).map(|_| rng.below(n)).collect::<Vec<u64>>(),
                |keys| {
                    let mut s = 0u64;
                    for k in &keys {
                        s = s.wrapping_add(t.get(k).map_or(0, |e| e[3]));
                    }
                    black_box(s)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn mutex(c: &mut Criterion) {
    let shards: Vec<Mutex<u64>> = (0..256).map(|_| Mutex::new(0)).collect();
    let mut i = 0usize;
    c.bench_function("floor_mutex_lock_unlock", |b| {
        b.iter(|| {
            i = (i + 97) & 255;
            *shards[i].lock() += 1;
        })
    });
}

/// `floor_path`'s connection key: integers only (protocol 0: an empty slot of the open table).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Key {
    proto: u8,
    caddr: u32,
    cport: u16,
    vaddr: u32,
    vport: u16,
}

/// `floor_path`'s connection: its destination, state and timer.
#[derive(Clone, Copy, Default)]
struct Entry {
    dest: u16,
    state: u8,
    timeout: u32,
    expires: u64,
    packets: u32,
}

impl Entry {
    /// The packet's work on its connection: None unless it is an ACK of a live, established
    /// one; else its destination.
    #[inline(always)]
    fn ack(&mut self, flags: u8, now: u64) -> Option<usize> {
        if self.expires <= now || self.state != 1 || flags != 0x10 {
            return None;
        }
        self.packets += 1;
        self.expires = now + u64::from(self.timeout) * 1000;
        Some(usize::from(self.dest))
    }
}

/// Packets and bytes, one writer (a worker's slot in the engine).
#[derive(Default)]
struct Count {
    packets: u64,
    bytes: u64,
}

impl Count {
    fn add(&mut self, len: u64) {
        self.packets += 1;
        self.bytes += len;
    }
}

/// A real server of `floor_path`: its MAC and counters.
struct Dest {
    mac: [u8; 6],
    count: Count,
}

/// What `floor_path` reads of a frame.
#[derive(Clone, Copy)]
struct Hdr {
    key: Key,
    flags: u8,
    ttl: u8,
    total: u16,
}

/// Ethernet, IPv4 without options and TCP without options.
const ETH_IP_TCP: usize = 14 + 20 + 20;

/// An IPv4 TCP frame's key, flags, TTL and length; None for anything else.
#[inline(always)]
fn floor_read(frame: &[u8]) -> Option<Hdr> {
    let h = frame.get(..ETH_IP_TCP)?;
    let total = u16::from_be_bytes([h[16], h[17]]);
    if h[12..14] != [8, 0]
        || h[14] != 0x45
        || h[23] != 6
        || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0
        || usize::from(total) + 14 > frame.len()
    {
        return None;
    }
    Some(Hdr {
        key: Key {
            proto: 6,
            caddr: u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
            cport: u16::from_be_bytes([h[34], h[35]]),
            vaddr: u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
            vport: u16::from_be_bytes([h[36], h[37]]),
        },
        flags: h[47],
        ttl: h[22],
        total,
    })
}

/// The rest of the packet once its connection named `dest`: three counter sets, the TTL and
/// MTU checks, the MAC and TTL rewrite. 2 (forward) or 0.
#[inline(always)]
fn floor_forward(
    frame: &mut [u8],
    hdr: &Hdr,
    dest: usize,
    dests: &mut [Dest],
    counts: &mut [Count; 2],
) -> u32 {
    let len = u64::from(hdr.total);
    let Some(d) = dests.get_mut(dest) else {
        return 0;
    };
    d.count.add(len);
    counts[0].add(len);
    counts[1].add(len);
    if hdr.ttl <= 1 || hdr.total > 1500 {
        return 0;
    }
    let f: &mut [u8; 26] = (&mut frame[..26]).try_into().expect("26 bytes");
    f[..6].copy_from_slice(&d.mac);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x1b]);
    f[22] -= 1;
    let sum = u32::from(u16::from_be_bytes([f[24], f[25]])) + 0x100;
    f[24..26].copy_from_slice(&((sum + (sum >> 16)) as u16).to_be_bytes());
    2
}

type Shards = Vec<Mutex<hashbrown::HashMap<Key, Entry, ahash::RandomState>>>;

/// The shard of `shards` a hash falls in, for both tables: bits the tables' own positions do
/// not use, as in the engine.
fn shard_of(hash: u64, shards: usize) -> usize {
    (hash >> 40) as usize % shards
}

/// One established ACK through the minimal path, hashbrown table; 0 when it is not one.
#[inline(always)]
fn floor_packet(
    frame: &mut [u8],
    hasher: &ahash::RandomState,
    shards: &Shards,
    dests: &mut [Dest],
    counts: &mut [Count; 2],
    now: u64,
) -> u32 {
    let Some(hdr) = floor_read(frame) else {
        return 0;
    };
    let hash = hasher.hash_one(hdr.key);
    let dest = {
        let mut shard = shards[shard_of(hash, shards.len())].lock();
        match shard.get_mut(&hdr.key).and_then(|e| e.ack(hdr.flags, now)) {
            Some(d) => d,
            None => return 0,
        }
    };
    floor_forward(frame, &hdr, dest, dests, counts)
}

/// A slot of the open table: a key and its connection, on half a cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(32))]
struct Slot {
    key: Key,
    entry: Entry,
}

/// One shard of the open table: slots at a power-of-two count, linear probing, allocated
/// once (its address never changes, so a lookup's first slot is known from the hash alone).
struct OpenShard {
    slots: Vec<Slot>,
}

impl OpenShard {
    fn position(&self, hash: u64, key: &Key) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        for _ in 0..self.slots.len() {
            let k = &self.slots[i].key;
            if k == key {
                return Some(i);
            }
            if k.proto == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    fn insert(&mut self, hash: u64, key: Key, entry: Entry) {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i].key.proto != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { key, entry };
    }
}

/// The open table: shards behind `parking_lot` locks, and each shard's slot array address and
/// mask for prefetching (hints: read without the lock, never dereferenced).
struct Open {
    shards: Vec<Mutex<OpenShard>>,
    bases: Vec<(usize, usize)>,
}

impl Open {
    fn new(shards: usize, entries: u64) -> Open {
        let per = ((entries as usize * 2).div_ceil(shards)).next_power_of_two();
        let shards: Vec<Mutex<OpenShard>> = (0..shards)
            .map(|_| {
                Mutex::new(OpenShard {
                    slots: vec![Slot::default(); per],
                })
            })
            .collect();
        let bases = shards
            .iter()
            .map(|s| (s.lock().slots.as_ptr() as usize, per - 1))
            .collect();
        Open { shards, bases }
    }

    fn shard(&self, hash: u64) -> usize {
        shard_of(hash, self.shards.len())
    }
}

/// A group of frames through the minimal path with its lookups announced ahead: every frame
/// read, hashed and its first slot prefetched, then every frame processed.
#[allow(clippy::too_many_arguments)]
fn floor_group_prefetched(
    frames: &mut [&mut [u8]],
    verdicts: &mut [u32],
    hasher: &ahash::RandomState,
    open: &Open,
    dests: &mut [Dest],
    counts: &mut [Count; 2],
    now: u64,
    ahead: &mut [(Option<Hdr>, u64)],
) {
    for (f, a) in frames.iter().zip(ahead.iter_mut()) {
        *a = (floor_read(f), 0);
        if let Some(hdr) = &a.0 {
            let hash = hasher.hash_one(hdr.key);
            let (base, mask) = open.bases[open.shard(hash)];
            xvs_xdp::prefetch(base + (hash as usize & mask) * std::mem::size_of::<Slot>());
            a.1 = hash;
        }
    }
    for ((f, v), (hdr, hash)) in frames.iter_mut().zip(verdicts.iter_mut()).zip(ahead.iter()) {
        let Some(hdr) = hdr else {
            *v = 0;
            continue;
        };
        let dest = {
            let mut shard = open.shards[open.shard(*hash)].lock();
            let e = shard
                .position(*hash, &hdr.key)
                .and_then(|i| shard.slots[i].entry.ack(hdr.flags, now));
            match e {
                Some(d) => d,
                None => {
                    *v = 0;
                    continue;
                }
            }
        };
        *v = floor_forward(f, hdr, dest, dests, counts);
    }
}

fn path(c: &mut Criterion) {
    let mut g = group(c, "floor_path", BATCH as u64, Pace::Steady);
    for &n in table_sizes() {
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let shards: Shards = (0..16)
            .map(|_| Mutex::new(hashbrown::HashMap::with_hasher(hasher.clone())))
            .collect();
        let open = Open::new(16, n);
        for i in 0..n {
            let (a, p) = flow(i);
            let key = Key {
                proto: 6,
                caddr: u32::from_be_bytes(a),
                cport: p,
                vaddr: u32::from_be_bytes(xvs_bench::VIP),
                vport: 80,
            };
            let h = hasher.hash_one(key);
            let entry = Entry {
                dest: (i % 100) as u16,
                state: 1,
                timeout: 900,
                expires: u64::MAX,
                packets: 0,
            };
            shards[shard_of(h, shards.len())].lock().insert(key, entry);
            open.shards[open.shard(h)].lock().insert(h, key, entry);
        }
        let mut dests: Vec<Dest> = (0..100u8)
            .map(|i| Dest {
                mac: [2, 0, 0, 0, 0xaa, i],
                count: Count::default(),
            })
            .collect();
        let mut counts: [Count; 2] = Default::default();
        let mut buf = vec![0u8; BATCH * SLOT];
        let mut verdicts = vec![0u32; BATCH];
        let mut ahead = vec![(None, 0u64); PREFETCH_GROUP];
        let mut rng = Rng::new(7);
        for prefetch in [false, true] {
            let id = if prefetch {
                "dr_ipv4_tcp+prefetch_open_table"
            } else {
                "dr_ipv4_tcp"
            };
            g.bench_function(BenchmarkId::new(id, n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        for slot in buf.chunks_mut(SLOT) {
                            let (a, p) = flow(rng.below(n));
                            write_client_frame(&mut slot[HEADROOM..], a, p, false);
                        }
                        let mut frames: Vec<&mut [u8]> = buf
                            .chunks_mut(SLOT)
                            .map(|s| &mut s[HEADROOM..HEADROOM + CLIENT_FRAME_LEN])
                            .collect();
                        let start = Instant::now();
                        if prefetch {
                            for (fs, vs) in frames
                                .chunks_mut(PREFETCH_GROUP)
                                .zip(verdicts.chunks_mut(PREFETCH_GROUP))
                            {
                                floor_group_prefetched(
                                    fs,
                                    vs,
                                    &hasher,
                                    &open,
                                    &mut dests,
                                    &mut counts,
                                    1000,
                                    &mut ahead,
                                );
                            }
                        } else {
                            for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
                                *v = floor_packet(
                                    f,
                                    &hasher,
                                    &shards,
                                    &mut dests,
                                    &mut counts,
                                    1000,
                                );
                            }
                        }
                        total += start.elapsed();
                        black_box(&verdicts);
                        debug_assert!(verdicts.iter().all(|&v| v == 2));
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, lookup, mutex, path);
criterion_main!(benches);
