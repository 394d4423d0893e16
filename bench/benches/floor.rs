//! The machine's floor under the engine's figures: what one lookup of a random key in a
//! hashbrown table of 96-byte entries costs at 10 K and 1 M entries (the connection table's
//! entry size); one uncontended lock and unlock of a `parking_lot::Mutex`, the connection
//! table's shard lock (two per packet on the workers' path); and `floor_path`, the least an
//! established-flow packet costs with a table of the same kind: a minimal direct-routing path
//! for IPv4 TCP alone (fixed-offset parse, hash, shard lock, lookup by a key of plain integers,
//! state and timer, three counter sets, MAC and TTL rewrite), without anything else IPVS asks
//! of a packet. No xvs code runs here: these are the costs no engine on this machine can go
//! below, for comparison with `engine` (docs/performance.md).
//!
//! Run: `cargo bench -p xvs-bench --bench floor`.

mod common;

use std::hint::black_box;

use common::{group, Pace};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use xvs_bench::{
    flow, table_sizes, write_client_frame, Rng, BATCH, CLIENT_FRAME_LEN, HEADROOM, SLOT,
};

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

/// `floor_path`'s connection key: integers only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    proto: u8,
    caddr: u32,
    cport: u16,
    vaddr: u32,
    vport: u16,
}

/// `floor_path`'s connection: its destination, state and timer.
struct Entry {
    dest: u16,
    state: u8,
    timeout: u32,
    expires: u64,
    packets: u32,
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

type Shards = Vec<Mutex<hashbrown::HashMap<Key, Entry, ahash::RandomState>>>;

/// One established ACK through the minimal path; 0 when it is not one.
#[inline(always)]
fn floor_packet(
    frame: &mut [u8],
    hasher: &ahash::RandomState,
    shards: &Shards,
    dests: &mut [Dest],
    counts: &mut [Count; 2],
    now: u64,
) -> u32 {
    let Some(h) = frame.get(..ETH_IP_TCP) else {
        return 0;
    };
    let total = u16::from_be_bytes([h[16], h[17]]);
    if h[12..14] != [8, 0]
        || h[14] != 0x45
        || h[23] != 6
        || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0
        || usize::from(total) + 14 > frame.len()
    {
        return 0;
    }
    let key = Key {
        proto: 6,
        caddr: u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
        cport: u16::from_be_bytes([h[34], h[35]]),
        vaddr: u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
        vport: u16::from_be_bytes([h[36], h[37]]),
    };
    let (flags, ttl) = (h[47], h[22]);
    let hash = hasher.hash_one(key);
    let dest = {
        let mut shard = shards[(hash >> 40) as usize % shards.len()].lock();
        let Some(e) = shard.get_mut(&key) else {
            return 0;
        };
        if e.expires <= now || e.state != 1 || flags != 0x10 {
            return 0;
        }
        e.packets += 1;
        e.expires = now + u64::from(e.timeout) * 1000;
        usize::from(e.dest)
    };
    let len = u64::from(total);
    let Some(d) = dests.get_mut(dest) else {
        return 0;
    };
    d.count.add(len);
    counts[0].add(len);
    counts[1].add(len);
    if ttl <= 1 || total > 1500 {
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

/// Ethernet, IPv4 without options and TCP without options.
const ETH_IP_TCP: usize = 14 + 20 + 20;

fn path(c: &mut Criterion) {
    let mut g = group(c, "floor_path", BATCH as u64, Pace::Steady);
    for &n in table_sizes() {
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let shards: Shards = (0..16)
            .map(|_| Mutex::new(hashbrown::HashMap::with_hasher(hasher.clone())))
            .collect();
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
            shards[(h >> 40) as usize % shards.len()]
                .lock()
                .insert(key, entry);
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
        let mut rng = Rng::new(7);
        g.bench_function(BenchmarkId::new("dr_ipv4_tcp", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for slot in buf.chunks_mut(SLOT) {
                        let (a, p) = flow(rng.below(n));
                        write_client_frame(&mut slot[HEADROOM..], a, p, false);
                    }
                    let start = Instant::now();
                    for (slot, v) in buf.chunks_mut(SLOT).zip(verdicts.iter_mut()) {
                        let frame = &mut slot[HEADROOM..HEADROOM + CLIENT_FRAME_LEN];
                        *v = floor_packet(frame, &hasher, &shards, &mut dests, &mut counts, 1000);
                    }
                    total += start.elapsed();
                    black_box(&verdicts);
                    debug_assert!(verdicts.iter().all(|&v| v == 2));
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, mutex, path);
criterion_main!(benches);
