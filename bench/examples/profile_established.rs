//! A fixed workload for profilers (`valgrind --tool=callgrind`, `perf record`): 10,000
//! established DR flows, then 200,000 ACKs drawn at random, through `Engine::process`.
//! Run: `cargo build --release -p xvs-bench --example profile_established` and profile the binary;
//! an argument sets the number of ACKs (default 200,000). It prints the wall-clock ns per packet.

use xvs_bench::{balancer, client_frame, flow, Rng, HEADROOM, SLOT};
use xvs_core::{ForwardMethod, Frame, Time, Verdict};

fn main() {
    let flows = 10_000u64;
    let (_d, tables, engine, routes) = balancer("rr", ForwardMethod::Route, 100, 20_000);
    let mut buf = vec![0u8; SLOT];
    let mut run = |frame: &[u8]| {
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut f = Frame::new(&mut buf, HEADROOM, frame.len());
        engine.process_frame(&tables, &routes, &mut f, Time(1000))
    };
    for i in 0..flows {
        let (a, p) = flow(i);
        run(&client_frame(a, p, true));
    }
    let mut rng = Rng::new(3);
    let frames: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let (a, p) = flow(rng.below(flows));
            client_frame(a, p, false)
        })
        .collect();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let mut fwd = 0u64;
    let t0 = std::time::Instant::now();
    for k in 0..n {
        if matches!(run(&frames[k % frames.len()]), Verdict::Forward { .. }) {
            fwd += 1;
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    println!("forwarded {fwd}, {ns:.0} ns per packet (frame copy included)");
}
