//! The machine's floor under the engine's figures: what one lookup of a random key in a
//! hashbrown table of 96-byte entries costs at 10 K and 1 M entries (the connection table's
//! entry size), and one uncontended lock and unlock of a `parking_lot::Mutex`, the connection
//! table's shard lock (two per packet on the workers' path). No xvs code runs here: these are
//! the costs no engine on this machine can go below, for comparison with `engine`
//! (docs/performance.md).
//!
//! Run: `cargo bench -p xvs-bench --bench floor`.

mod common;

use std::hint::black_box;

use common::{group, Pace};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use parking_lot::Mutex;
use xvs_bench::{table_sizes, Rng};

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

criterion_group!(benches, lookup, mutex);
criterion_main!(benches);
