//! How long a restart's hand-over of the connection table takes: F connections (default
//! 1,000,000; direct routing) written as `xvsd` writes them on SIGTERM
//! (`xvs_core::sync::encode_table`) and entered by a fresh engine as the next `xvsd` enters
//! them before it forwards (`load_message`, message by message). Prints both times and the
//! bytes per connection.
//!
//! Run: `cargo run --release -p xvs-bench --example handoff [F]`.

use std::time::Instant;

use xvs_bench::{balancer, Scratch};
use xvs_core::{ForwardMethod, Time};

fn main() {
    let flows: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let (_d, tables, engine, routes) =
        balancer("rr", ForwardMethod::Route, 100, flows as usize * 2);
    Scratch::new().prefill(&engine, &tables, &routes, flows);
    let t0 = Instant::now();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    xvs_core::sync::encode_table(&engine, |m| messages.push(m.to_vec()));
    let written = t0.elapsed();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let (_d2, tables2, next, _r2) = balancer("rr", ForwardMethod::Route, 100, flows as usize * 2);
    let t1 = Instant::now();
    let mut l = xvs_core::sync::Loaded::default();
    for m in &messages {
        xvs_core::sync::load_message(&next, &tables2, &m[2..], Time(0), &mut l);
    }
    let loaded = t1.elapsed();
    println!(
        "{flows} connections: written in {:.3} s, entered in {:.3} s ({} entered, {} refused); \
         {bytes} bytes, {:.1} per connection",
        written.as_secs_f64(),
        loaded.as_secs_f64(),
        l.applied,
        l.refused,
        bytes as f64 / flows as f64
    );
}
