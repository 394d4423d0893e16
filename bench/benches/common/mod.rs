//! What the criterion benchmarks share: how a group is measured. Each bench compiles this
//! module on its own and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

/// How long a group measures: `Steady` (20 samples of 3 s after 1 s of warm-up) for the
/// figures the report compares, `Quick` (10 samples of 2 s after 0.5 s) for the long lists.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    Steady,
    Quick,
}

/// A benchmark group named `name` whose iterations each handle `elements` packets or lookups
/// (criterion then reports time per element), measured at `pace`.
pub fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    elements: u64,
    pace: Pace,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(elements));
    let (samples, measure, warm) = match pace {
        Pace::Steady => (20, Duration::from_secs(3), Duration::from_secs(1)),
        Pace::Quick => (10, Duration::from_secs(2), Duration::from_millis(500)),
    };
    g.sample_size(samples)
        .measurement_time(measure)
        .warm_up_time(warm);
    g
}
