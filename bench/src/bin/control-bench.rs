//! Control-plane benchmark: starts a control-plane-only xvsd (target/release/xvsd, or `$XVSD`)
//! with its socket in a temporary directory and measures, over one control connection, single
//! commands per second (`-A`, `-a`), a `-R` of 100,000 lines, `-L -n` / `-S -n` at 10,000
//! services, and a `-R` that replaces 100,000 services on a table that holds them (`-C`, then
//! the same services again, in the reverse order) while a second client lists (`-L -n`) in a loop: how long the
//! `-R` takes, and the longest a listing took meanwhile against one on the idle daemon.
//! Run: `cargo build --release -p xvsd && cargo run --release -p xvs-bench --bin control-bench`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xvs_ipvsadm::control::{
    decode_response, encode_request, header, Request, Response, MAX_RESPONSE,
};

fn call(s: &mut UnixStream, args: &str, stdin: &str) -> Response {
    let req = Request {
        args: args.split_whitespace().map(str::to_string).collect(),
        stdin: stdin.to_string(),
    };
    s.write_all(&encode_request(&req)).expect("write request");
    let mut h = [0u8; 8];
    s.read_exact(&mut h).expect("read header");
    let n = header(&h, MAX_RESPONSE).expect("valid header");
    let mut p = vec![0u8; n];
    s.read_exact(&mut p).expect("read payload");
    let r = decode_response(&p).expect("valid response");
    assert_eq!(r.status, 0, "{args}: {}", r.stderr);
    r
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let xvsd = std::env::var_os("XVSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/xvsd"));
    assert!(
        xvsd.exists(),
        "build xvsd first: cargo build --release -p xvsd"
    );
    let dir = std::env::temp_dir().join(format!("xvs-control-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("xvsd.sock");
    let mut child = Command::new(&xvsd)
        .arg("--control")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .expect("start xvsd");
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "xvsd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = UnixStream::connect(&sock).expect("connect");

    // Single commands: 10,000 services, 2 servers each (30,000 requests).
    let t = Instant::now();
    for i in 0..10_000u32 {
        let vip = format!("10.{}.{}.1:80", i / 256, i % 256);
        call(&mut s, &format!("-A -t {vip} -s wlc"), "");
        call(&mut s, &format!("-a -t {vip} -r 192.168.1.1:80 -m"), "");
        call(&mut s, &format!("-a -t {vip} -r 192.168.1.2:80 -m"), "");
    }
    let single = t.elapsed();
    let ops = 30_000.0 / single.as_secs_f64();

    let lists: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let r = call(&mut s, "-L -n", "");
            assert_eq!(r.stdout.lines().count(), 3 + 10_000 * 3);
            t.elapsed()
        })
        .collect();
    let saves: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            call(&mut s, "-S -n", "");
            t.elapsed()
        })
        .collect();

    // -R of 100,000 lines: 10,000 services with 9 servers each.
    call(&mut s, "-C", "");
    let mut rules = String::new();
    for i in 0..10_000u32 {
        let vip = format!("10.{}.{}.1:80", i / 256, i % 256);
        rules.push_str(&format!("-A -t {vip} -s rr\n"));
        for r in 1..=9 {
            rules.push_str(&format!("-a -t {vip} -r 192.168.2.{r}:80 -m\n"));
        }
    }
    let t = Instant::now();
    call(&mut s, "-R", &rules);
    let restore = t.elapsed();

    // 100,000 services, then the same again after -C, in one -R, while another client lists.
    let mut big = String::new();
    for i in 0..100_000u32 {
        big.push_str(&format!(
            "-A -t 10.{}.{}.{}:80 -s rr\n-a -t 10.{}.{}.{}:80 -r 192.168.3.1:80 -m\n",
            1 + i / 65536,
            (i / 256) % 256,
            i % 256,
            1 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    call(&mut s, "-C", "");
    call(&mut s, "-R", &big);
    let mut reader = UnixStream::connect(&sock).expect("connect");
    let idle_list = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                call(&mut reader, "-L -n", "");
                t.elapsed()
            })
            .collect(),
    );
    // The same services in the reverse order (a saved file's order need not be the table's).
    let mut replace = String::from("-C\n");
    for pair in big.lines().collect::<Vec<_>>().chunks(2).rev() {
        replace.push_str(pair[0]);
        replace.push('\n');
        replace.push_str(pair[1]);
        replace.push('\n');
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (replace_time, worst_list, lists_during) = std::thread::scope(|sc| {
        let lister = sc.spawn(|| {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                call(&mut reader, "-L -n", "");
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (worst, n)
        });
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        call(&mut s, "-R", &replace);
        let took = t.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (worst, n) = lister.join().expect("lister");
        (took, worst, n)
    });

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    println!("| control operation | result |");
    println!("|---|---|");
    println!(
        "| single commands (-A/-a), one connection | {ops:.0} ops/s ({} for 30,000) |",
        fmt(single)
    );
    println!(
        "| -L -n at 10,000 services × 2 servers (median of 5) | {} |",
        fmt(median(lists))
    );
    println!(
        "| -S -n at 10,000 services × 2 servers (median of 5) | {} |",
        fmt(median(saves))
    );
    println!(
        "| -R of 100,000 lines (10,000 services × 9 servers) | {} |",
        fmt(restore)
    );
    println!(
        "| -R replacing 100,000 services × 1 server on a table holding them (-C, then 200,000 lines in the reverse order) | {} |",
        fmt(replace_time)
    );
    println!(
        "| -L -n at 100,000 services: idle daemon (median of 3); longest during that -R ({lists_during} listings) | {}; {} |",
        fmt(idle_list),
        fmt(worst_list)
    );
}

fn fmt(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}
