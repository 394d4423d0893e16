//! Benchmark sink: attaches an XDP program that counts and drops every frame on an interface,
//! then prints the count once per line read on standard input, and once more at end of input.

use std::io::BufRead;

use xvs_xdp::bpf::{SinkProgram, XdpMode};

fn main() {
    let ifname = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: xvs-sink IFNAME");
        std::process::exit(2)
    });
    let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            eprintln!("xvs-sink: no interface {ifname}");
            std::process::exit(1)
        });
    let sink = SinkProgram::attach(ifindex, &ifname, XdpMode::Auto).unwrap_or_else(|e| {
        eprintln!("xvs-sink: {e}");
        std::process::exit(1)
    });
    println!("ready");
    for _ in std::io::stdin().lock().lines().map_while(Result::ok) {
        println!("{}", sink.count().unwrap_or(0));
    }
    println!("{}", sink.count().unwrap_or(0));
}
