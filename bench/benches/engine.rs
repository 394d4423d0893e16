//! Engine benchmarks: established-flow packets (lookup + rewrite; for NAT also the real
//! servers' replies) and new connections (schedule + insert), at 10 K and 1 M entries, flows
//! drawn uniformly at random.
//!
//! Run: `cargo bench -p xvs-bench --bench engine`.

mod common;

use std::time::Duration;

use common::{group, Pace};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use xvs_bench::{balancer, real_servers, remove_flows, table_sizes, Rng, Scratch, BATCH};
use xvs_core::{ForwardMethod, Verdict};

fn established(c: &mut Criterion) {
    let mut g = group(c, "established", BATCH as u64, Pace::Steady);
    // "nat-reply": the real servers' replies to the clients of the NAT connections.
    for (method, name, replies) in [
        (ForwardMethod::Route, "dr", false),
        (ForwardMethod::Masq, "nat", false),
        (ForwardMethod::Masq, "nat-reply", true),
        (ForwardMethod::Tunnel, "tun", false),
    ] {
        for &flows in table_sizes() {
            let (_d, tables, engine, routes) = balancer("rr", method, 100, flows as usize * 2);
            let mut scratch = Scratch::new();
            // Create the flows with SYNs.
            scratch.prefill(&engine, &tables, &routes, flows);
            let servers = if replies {
                real_servers(&engine, flows)
            } else {
                Vec::new()
            };
            let mut rng = Rng::new(7);
            // Each size twice, in the same run: `process` without prefetching ("plain"), and with the CPU
            // prefetch of xvs-xdp's worker.
            for prefetch in [false, true] {
                let id = if prefetch {
                    format!("{name}+prefetch")
                } else {
                    name.to_string()
                };
                g.bench_function(BenchmarkId::new(id, flows), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        let mut ids = vec![0u64; BATCH];
                        for _ in 0..iters {
                            // Random flows, their ACKs written into the batch's buffers (not
                            // timed; no allocation between two timed batches).
                            ids.iter_mut().for_each(|i| *i = rng.below(flows));
                            total += if replies {
                                scratch.run_replies(
                                    &engine, &tables, &routes, &ids, &servers, prefetch,
                                )
                            } else {
                                scratch.run_flows(&engine, &tables, &routes, &ids, false, prefetch)
                            };
                            debug_assert!(scratch
                                .verdicts(ids.len())
                                .iter()
                                .all(|v| matches!(v, Verdict::Forward { .. })));
                        }
                        total
                    })
                });
            }
        }
    }
    g.finish();
}

fn new_connections(c: &mut Criterion) {
    let mut g = group(c, "new_conn", BATCH as u64, Pace::Quick);
    let scheds = [
        "rr", "wrr", "lc", "wlc", "sed", "nq", "lblc", "lblcr", "dh", "sh", "mh", "fo", "ovf",
        "twos",
    ];
    for &flows in table_sizes() {
        for sched in scheds {
            let (_d, tables, engine, routes) =
                balancer(sched, ForwardMethod::Route, 100, flows as usize * 2);
            let mut scratch = Scratch::new();
            scratch.prefill(&engine, &tables, &routes, flows);
            let mut next = flows;
            g.bench_function(BenchmarkId::new(sched, flows), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut ids = vec![0u64; BATCH];
                    for _ in 0..iters {
                        ids.iter_mut().zip(next..).for_each(|(i, n)| *i = n);
                        next += BATCH as u64;
                        total += scratch.run_flows(&engine, &tables, &routes, &ids, true, false);
                        // Keep the table at its size: remove what was inserted (not timed).
                        remove_flows(&engine, &ids);
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, established, new_connections);
criterion_main!(benches);
