//! A fixed workload for profilers (`valgrind --tool=callgrind` or `--tool=cachegrind`, `perf
//! record`) and for A/B comparisons of two builds on a noisy machine: F established flows
//! (default 10,000; direct routing, or NAT or tunnel by the fourth argument; `nat-reply`: NAT,
//! and the ACKs are the real servers' replies to the clients), then N ACKs of
//! flows drawn at random for every batch (default 200,000) through the batch path a worker
//! uses, in batches of B (default 256) with the worker's own counter slot, in 20 rounds.
//!
//! Run: `cargo build --release -p xvs-bench --example profile_established`, then
//! `profile_established [N] [F] [plain|prefetch|always|new] [dr|nat|tun|nat-reply] [EVICT_KIB] [B]`
//! (`prefetch`, the default, is `Engine::process` with the CPU prefetch, as xvsd's workers run
//! it: it prefetches from `xvs_core::datapath::PREFETCH_FROM` entries on; `always` prefetches
//! whatever the table's size; `plain` never prefetches; `new` sends SYNs of flows never seen, as
//! `new_conn` in the criterion benchmark does: each one schedules and inserts a connection
//! (`rr`), and they are removed again after each batch, not timed). It prints
//! the wall-clock ns per packet of the fastest and of the median round: the fastest round is the
//! one least disturbed by other tenants of the machine. The frame copy is not timed.
//!
//! With `XVS_SYNC_MASTER=1` in the environment the engine runs as a sync master (every
//! connection considered for sending at each packet, the records queued as xvsd's workers
//! queue them); the queue is drained between batches, not timed, as xvsd's sender thread
//! drains it on another core.
//!
//! EVICT_KIB (default 0) models the engine's place in xvsd: there, between two batches, the
//! kernel's transmit and receive work runs on the same core and pushes the engine's working set
//! (table, counters, next hops) out of the core's caches. With EVICT_KIB > 0 the program writes
//! a buffer of that size between batches (not timed), so each batch starts as cold as that.
//! B (default 256, at most 256) is the number of frames per batch: an xvsd worker at a
//! moderate rate wakes up to a handful of frames, not 256.

use std::time::Duration;

use xvs_bench::{balancer, real_servers, remove_flows, Rng, Scratch, BATCH};
use xvs_core::{ForwardMethod, Verdict};

const ROUNDS: usize = 20;

fn main() {
    let arg = |i: usize, d: u64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let n = arg(1, 200_000) as usize;
    let flows = arg(2, 10_000).max(1);
    let mode = std::env::args().nth(3).unwrap_or_else(|| "prefetch".into());
    let prefetch = mode != "plain";
    let replies = std::env::args().nth(4).as_deref() == Some("nat-reply");
    let method = match std::env::args().nth(4).as_deref() {
        Some("nat" | "nat-reply") => ForwardMethod::Masq,
        Some("tun") => ForwardMethod::Tunnel,
        _ => ForwardMethod::Route,
    };
    let (_d, tables, engine, routes) = balancer("rr", method, 100, flows as usize * 2);
    let sync = std::env::var("XVS_SYNC_MASTER").is_ok_and(|v| v == "1");
    engine
        .sync
        .settings
        .master
        .store(sync, std::sync::atomic::Ordering::Relaxed);
    if mode == "always" {
        engine.set_prefetch_from(0);
    }
    let mut scratch = Scratch::new();
    scratch.prefill(&engine, &tables, &routes, flows);
    let servers = if replies {
        real_servers(&engine, flows)
    } else {
        Vec::new()
    };
    let batch_len = (arg(6, BATCH as u64) as usize).clamp(1, BATCH);
    let mut rng = Rng::new(3);
    // Flows drawn afresh for every batch, over the whole table (as the criterion benchmark
    // draws them): a fixed set of batches replayed would touch only its own flows, 16,384 of a
    // million, and measure a table that fits the caches.
    let mut ids = vec![0u64; batch_len];
    let per_round = n.div_ceil(batch_len);
    let evict_kib = arg(5, 0) as usize;
    let mut evict = vec![0u8; evict_kib * 1024];
    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut fwd = 0;
    let new = mode == "new";
    if new && replies {
        eprintln!("profile_established: `new` sends SYNs of new clients; replies need connections");
        std::process::exit(2);
    }
    let mut next = flows;
    for _ in 0..ROUNDS {
        let mut t = Duration::ZERO;
        for _ in 0..per_round {
            if new {
                ids.iter_mut().zip(next..).for_each(|(i, n)| *i = n);
                next += batch_len as u64;
            } else {
                ids.iter_mut().for_each(|i| *i = rng.below(flows));
            }
            for line in evict.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            std::hint::black_box(&mut evict);
            t += if replies {
                scratch.run_replies(&engine, &tables, &routes, &ids, &servers, prefetch)
            } else {
                scratch.run_flows(&engine, &tables, &routes, &ids, new, prefetch)
            };
            fwd += scratch
                .verdicts(ids.len())
                .iter()
                .filter(|v| matches!(v, Verdict::Forward { .. }))
                .count();
            if new {
                remove_flows(&engine, &ids);
            }
            while engine.sync.pop().is_some() {}
        }
        rounds.push(t.as_nanos() as f64 / (per_round * batch_len) as f64);
    }
    rounds.sort_by(f64::total_cmp);
    println!(
        "{mode} path{}, {flows} flows, batches of {batch_len}, {evict_kib} KiB evicted between batches: forwarded {fwd} of {}; ns per packet: fastest round {:.0}, median {:.0}",
        if sync { " (sync master)" } else { "" },
        ROUNDS * per_round * batch_len,
        rounds[0],
        rounds[ROUNDS / 2]
    );
}
