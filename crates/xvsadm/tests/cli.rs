//! xvsadm against a control-plane-only xvsd (its socket in a temporary directory): the
//! examples of ipvsadm's man page and the LVS how-tos, every listing variant, error paths with
//! their messages and statuses, `-S` → `-C` → `-R` round trips, 1,000 services × 10 servers,
//! concurrent clients, and a non-root user refused.

#![allow(clippy::unwrap_used)] // test helpers unwrap freely

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stop the daemon we started, by its PID.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bin(name: &str) -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_xvsadm"));
    let p = me.parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is not built: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

fn daemon_with(extra: &[&str]) -> Daemon {
    let dir = std::env::temp_dir().join(format!(
        "xvsadm-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("xvsd.sock");
    // A fixed capacity: the default depends on the machine's memory, and listings show it.
    let child = Command::new(bin("xvsd"))
        .arg("--control")
        .arg(&sock)
        .args(["--conn-capacity", "1048576"])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon { child, dir, sock };
    let start = Instant::now();
    while !d.sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "xvsd did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

fn daemon() -> Daemon {
    daemon_with(&[])
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1000
        + (std::time::SystemTime::now()
            .elapsed()
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            % 1000) as u64
}

struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

fn adm_in(d: &Daemon, args: &str, stdin: &str) -> Out {
    let (status, stdout, stderr) = common::xvsadm(&d.sock, args, stdin);
    Out {
        status,
        stdout,
        stderr,
    }
}

fn adm(d: &Daemon, args: &str) -> Out {
    adm_in(d, args, "")
}

fn ok(d: &Daemon, args: &str) -> String {
    let o = adm(d, args);
    assert_eq!(o.status, 0, "xvsadm {args}: {}", o.stderr);
    o.stdout
}

const HEAD: &str = "IP Virtual Server version 1.2.1 (size=1048576)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n";

#[test]
fn man_page_and_howto_examples() {
    let d = daemon();
    // ipvsadm(8) example 1: a simple virtual service (NAT).
    ok(&d, "-A -t 207.175.44.110:80 -s rr");
    ok(&d, "-a -t 207.175.44.110:80 -r 192.168.10.1:80 -m");
    ok(&d, "-a -t 207.175.44.110:80 -r 192.168.10.2:80 -m");
    ok(&d, "-a -t 207.175.44.110:80 -r 192.168.10.3:80 -m");
    ok(&d, "-a -t 207.175.44.110:80 -r 192.168.10.4:80 -m");
    ok(&d, "-a -t 207.175.44.110:80 -r 192.168.10.5:80 -m");
    // Example 2: a firewall-mark virtual service (direct routing), persistent.
    ok(&d, "-A -f 1 -s rr -p 1500");
    ok(&d, "-a -f 1 -r 192.168.10.1 -g");
    // LVS-DR how-to: a DR service with weights.
    ok(&d, "-A -t 10.1.1.1:http -s wlc");
    ok(&d, "-a -t 10.1.1.1:http -r 10.1.1.2 -g -w 2");
    let out = ok(&d, "-L -n");
    // 207.x sorts before 10.x: ipvsadm's comparator subtracts the addresses and the difference
    // overflows 32 bits (IPVS-REFERENCE §2.3), and xvsadm keeps that order.
    assert_eq!(
        out,
        HEAD.to_string()
            + "TCP  207.175.44.110:80 rr\n"
            + "  -> 192.168.10.1:80              Masq    1      0          0         \n"
            + "  -> 192.168.10.2:80              Masq    1      0          0         \n"
            + "  -> 192.168.10.3:80              Masq    1      0          0         \n"
            + "  -> 192.168.10.4:80              Masq    1      0          0         \n"
            + "  -> 192.168.10.5:80              Masq    1      0          0         \n"
            + "TCP  10.1.1.1:80 wlc\n"
            + "  -> 10.1.1.2:80                  Route   2      0          0         \n"
            + "FWM  1 rr persistent 1500\n"
            + "  -> 192.168.10.1:0               Route   1      0          0         \n"
    );
    // Without -n ports are named (addresses stay numeric unless /etc/hosts names them).
    let named = ok(&d, "-L");
    assert!(
        named.contains("TCP  10.1.1.1:http wlc") || named.contains(":http wlc"),
        "{named}"
    );
}

#[test]
fn listing_variants() {
    let d = daemon();
    ok(
        &d,
        "-A -t 10.0.0.1:80 -s sh -b sh-fallback,sh-port -p 300 -M 255.255.255.0",
    );
    ok(&d, "-a -t 10.0.0.1:80 -r 192.168.10.1:80 -m -x 100 -y 50");
    ok(
        &d,
        "-a -t 10.0.0.1:80 -r 192.168.10.2:80 -i --tun-type gue --tun-port 6080 --tun-csum",
    );
    ok(&d, "-A -u 10.0.0.1:53 -s rr -o");
    ok(&d, "-A -t [2001:db8::1]:443 -s mh -p 600 -M 64");
    assert_eq!(
        ok(&d, "-L -n"),
        HEAD.to_string()
            + "TCP  10.0.0.1:80 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0\n"
            + "  -> 192.168.10.1:80              Masq    1      0          0         \n"
            + "  -> 192.168.10.2:80              Tunnel  1      0          0         \n"
            + "UDP  10.0.0.1:53 rr ops\n"
            + "TCP  [2001:db8::1]:443 mh persistent 600 mask 64\n"
    );
    assert_eq!(
        ok(&d, "-L -n --thresholds -t 10.0.0.1:80"),
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n  -> RemoteAddress:Port\n".to_string()
            + "TCP  10.0.0.1:80 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0\n"
            + "  -> 192.168.10.1:80              100        50         0          0         \n"
            + "  -> 192.168.10.2:80              0          0          0          0         \n"
    );
    assert_eq!(
        ok(&d, "-L -n --stats -u 10.0.0.1:53"),
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n".to_string()
            + "UDP  10.0.0.1:53                         0        0        0        0        0\n"
    );
    assert_eq!(
        ok(&d, "-L -n --rate -u 10.0.0.1:53"),
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\n".to_string()
            + "UDP  10.0.0.1:53                         0        0        0        0        0\n"
    );
    assert_eq!(
        ok(&d, "-L -n --persistent-conn -t 10.0.0.1:80"),
        "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn \n  -> RemoteAddress:Port\n".to_string()
            + "TCP  10.0.0.1:80 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0\n"
            + "  -> 192.168.10.1:80              1         0           0          0         \n"
            + "  -> 192.168.10.2:80              1         0           0          0         \n"
    );
    assert_eq!(
        ok(&d, "-L -n --tun-info -t 10.0.0.1:80"),
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n".to_string()
            + "TCP  10.0.0.1:80 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0\n"
            + "  -> 192.168.10.1:80              Masq    n/a           1      0          0         \n"
            + "  -> 192.168.10.2:80              Tunnel  gue:6080:+c   1      0          0         \n"
    );
    assert_eq!(ok(&d, "-L -n -c"), "IPVS connection entries\npro expire state       source             virtual            destination\n");
    assert_eq!(
        ok(&d, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 900 120 300\n"
    );
    ok(&d, "--set 3600 30 0");
    assert_eq!(
        ok(&d, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 3600 30 300\n"
    );
    assert_eq!(ok(&d, "-L --daemon"), "");
    let o = adm(&d, "--start-daemon backup --mcast-interface lo --syncid 7");
    assert_eq!((o.status, o.stderr.as_str()), (0, ""));
    assert_eq!(
        ok(&d, "-L --daemon"),
        // The backup's maxlen follows the interface's MTU, as the kernel's: lo's 65,536,
        // clamped to 65,535, less 28 bytes of IPv4 and UDP headers.
        "backup sync daemon (mcast=lo, syncid=7, maxlen=65507, group=224.0.0.81, port=8848, ttl=1)\n"
    );
    let o = adm(&d, "--start-daemon backup");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (255, "Daemon has already run\n")
    );
    ok(&d, "--stop-daemon backup");
    let o = adm(&d, "--stop-daemon backup");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (255, "No daemon is running\n")
    );
    // --nosort keeps configuration order; the sorted view puts 10.x before [2001:...]
    let nosort = ok(&d, "-L -n --nosort");
    assert!(nosort.find("TCP  10.0.0.1:80").unwrap() < nosort.find("UDP  10.0.0.1:53").unwrap());
    // Zeroing works on one service and on all.
    ok(&d, "-Z -t 10.0.0.1:80");
    ok(&d, "-Z");
}

#[test]
fn error_paths_with_messages_and_statuses() {
    let d = daemon();
    let cases: &[(&str, i32, &str)] = &[
        (
            "-A -t 10.0.0.1",
            2,
            "Zero port specified for non-persistent service\n",
        ),
        (
            "-t 10.0.0.1:80 -A",
            255,
            "Try `xvsadm -h' or 'xvsadm --help' for more information.\n",
        ),
        (
            "-A -t 10.0.0.1:80 -s nosuch",
            255,
            "Scheduler or persistence engine not found\n",
        ),
        ("-E -t 10.0.0.9:80", 255, "No such service\n"),
        ("-D -t 10.0.0.9:80", 255, "No such service\n"),
        (
            "-a -t 10.0.0.9:80 -r 10.1.0.1",
            255,
            "Service not defined\n",
        ),
        ("-L -t 10.0.0.9:80", 1, "No such service\n"),
        ("-Z -t 10.0.0.9:80", 255, "No such service\n"),
        ("--bogus", 255, "--bogus: unknown option\n"),
        (
            "-A --sctp-service 10.0.0.1:80 -o",
            2,
            "One-Packet Scheduling is only for UDP virtual services\n",
        ),
    ];
    for (args, status, err) in cases {
        let o = adm(&d, args);
        assert_eq!(
            (o.status, o.stderr.as_str()),
            (*status, *err),
            "xvsadm {args}"
        );
    }
    ok(&d, "-A -t 10.0.0.1:80");
    let o = adm(&d, "-A -t 10.0.0.1:80");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (255, "Service already exists\n")
    );
    ok(&d, "-a -t 10.0.0.1:80 -r 10.1.0.1");
    let o = adm(&d, "-a -t 10.0.0.1:80 -r 10.1.0.1");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (255, "Destination already exists\n")
    );
    let o = adm(&d, "-d -t 10.0.0.1:80 -r 10.1.0.2");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (255, "No such destination\n")
    );
    let o = adm(&d, "-e -t 10.0.0.1:80 -r 10.1.0.1 -y 5");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (255, "Numerical result out of range\n")
    );
    let o = adm(&d, "-A -u 10.0.0.1:5061 -p 60 --pe nosuch");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (255, "Scheduler or persistence engine not found\n")
    );
    let o = adm(&d, "-A -u 10.0.0.1:5060 -p 60 --pe sip");
    assert_eq!((o.status, o.stderr.as_str()), (0, ""));
    let o = adm(&d, "-S -n");
    assert!(
        o.stdout
            .contains("-A -u 10.0.0.1:5060 -s wlc -p 60 --pe sip\n"),
        "{}",
        o.stdout
    );
    // -h and -v need no daemon.
    let o = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .arg("-h")
        .env("XVS_CONTROL", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    // ipvsadm 1.31's text (its usage_exit), then xvs's additions.
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("Commands:\nEither long or short options are allowed.\n  --add-service"));
    assert!(help.contains("  --sctp-service    service-address   service-address is host[:port]\n"));
    assert!(help.contains("alternate persistence engine may be sip,\n"));
    assert!(help.contains("  --sched-flags  -b flags             scheduler flags (comma-separated)\nDaemon Options:\n"));
    assert!(help.contains("syncid for connection sync (default=255)"));
    assert!(help.contains("list, read or set an IPVS sysctl (net.ipv4.vs.name)\n"));
    assert!(help.ends_with("the kernel's /proc/net/ip_vs_conn_sync\n"));
    // No daemon: ipvsadm's initialisation failure, exit 2.
    let o = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .args(["-L", "-n"])
        .env("XVS_CONTROL", "/nonexistent/sock")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("Can't initialize ipvs: "));
    // A malformed request gets an error reply and the daemon keeps serving.
    let mut s = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf).contains("bad magic"));
    assert!(ok(&d, "-L -n").contains("TCP  10.0.0.1:80 wlc"));
}

#[test]
fn save_clear_restore_roundtrip() {
    let d = daemon();
    let rules = "-A -t 10.0.0.1:80 -s wlc -p 300 -M 255.255.255.0\n-a -t 10.0.0.1:80 -r 192.168.10.1:80 -m -w 1\n-a -t 10.0.0.1:80 -r 192.168.10.2:80 -g -w 0\n-A -u 10.0.0.1:53 -s rr -o\n-A -t [2001:db8::1]:443 -s mh -p 600 -M 64\n-A -f 1 -s sh -b sh-fallback,sh-port\n-a -f 1 -r 192.168.10.5:0 -i -w 1 --tun-type ipip\n-a -f 1 -r 192.168.10.6:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum\n-A -f 2 -6 -s wrr\n";
    let o = adm_in(&d, "-R", rules);
    assert_eq!(o.status, 0, "{}", o.stderr);
    let saved = ok(&d, "-S -n");
    ok(&d, "-C");
    assert_eq!(ok(&d, "-S -n"), "");
    let o = adm_in(&d, "-R", &saved);
    assert_eq!(o.status, 0);
    assert_eq!(ok(&d, "-S -n"), saved);
    // A syntax error stops the stream; the lines before it stay.
    ok(&d, "-C");
    let o = adm_in(
        &d,
        "-R",
        "-A -t 10.0.0.7:80\n-A -t 10.0.0.8:80 -w 5\n-A -t 10.0.0.9:80\n",
    );
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (
            2,
            "Illegal 'weight' option with the 'add-service' command\n"
        )
    );
    assert_eq!(ok(&d, "-S -n"), "-A -t 10.0.0.7:80 -s wlc\n");
}

/// Host and service names resolve in xvsadm as ipvsadm resolves them (the daemon gets
/// addresses), on the command line and in `-R` streams.
#[test]
fn host_and_service_names_resolve() {
    let d = daemon();
    ok(&d, "-A -t localhost:http -s rr");
    ok(&d, "-a -t localhost:http -r localhost:8080 -m");
    let o = adm_in(&d, "-R", "-A -u localhost:domain -s rr\n");
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(
        ok(&d, "-S -n"),
        "-A -t 127.0.0.1:80 -s rr\n-a -t 127.0.0.1:80 -r 127.0.0.1:8080 -m -w 1\n-A -u 127.0.0.1:53 -s rr\n"
    );
    // A name that does not resolve gets ipvsadm's error.
    let o = adm(&d, "-A -t no-such-host.invalid:80");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (2, "illegal virtual server address[:port] specified\n")
    );
}

#[test]
fn state_file_survives_restart() {
    let dir = std::env::temp_dir().join(format!("xvsadm-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    let s = state.to_str().unwrap().to_string();
    {
        let d = daemon_with(&["--state", &s]);
        ok(&d, "-A -t 10.0.0.1:80 -s rr");
        ok(&d, "-a -t 10.0.0.1:80 -r 10.1.0.1 -m -x 10 -y 5");
        ok(&d, "--set 1000 0 0");
        ok(&d, "--sysctl net.ipv4.vs.sloppy_tcp=1");
        ok(&d, "--sysctl net.ipv4.vs.drop_packet=3");
    }
    let d = daemon_with(&["--state", &s]);
    // The sysctls are kept too.
    assert_eq!(ok(&d, "--sysctl net.ipv4.vs.sloppy_tcp"), "1\n");
    assert_eq!(ok(&d, "--sysctl net.ipv4.vs.drop_packet"), "3\n");
    assert_eq!(
        ok(&d, "-S -n"),
        "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n"
    );
    assert!(ok(&d, "-L -n --thresholds").contains("10         5"));
    assert_eq!(
        ok(&d, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 1000 120 300\n"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn thousand_services_with_ten_servers_each() {
    let d = daemon();
    let mut rules = String::new();
    for s in 0..1000u32 {
        let vip = format!("10.{}.{}.1:80", s / 256, s % 256);
        rules.push_str(&format!("-A -t {vip} -s wrr\n"));
        for r in 1..=10 {
            rules.push_str(&format!(
                "-a -t {vip} -r 192.168.{}.{r}:80 -m -w {r}\n",
                s % 200
            ));
        }
    }
    let t = Instant::now();
    let o = adm_in(&d, "-R", &rules);
    assert_eq!(o.status, 0, "{}", &o.stderr[..o.stderr.len().min(500)]);
    eprintln!("-R of 11,000 lines: {:?}", t.elapsed());
    let list = ok(&d, "-L -n");
    assert_eq!(list.lines().count(), 3 + 1000 * 11);
    assert_eq!(ok(&d, "-S -n").lines().count(), 11_000);
}

#[test]
fn concurrent_clients() {
    let d = daemon();
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let d = &d;
            s.spawn(move || {
                for i in 0..20u32 {
                    ok(d, &format!("-A -t 10.{t}.{i}.1:80 -s rr"));
                    ok(d, &format!("-a -t 10.{t}.{i}.1:80 -r 192.168.0.1:80 -m"));
                    assert!(ok(d, "-L -n").starts_with("IP Virtual Server"));
                }
            });
        }
    });
    assert_eq!(ok(&d, "-S -n").lines().count(), 8 * 20 * 2);
}

#[test]
fn non_root_users_are_refused() {
    // Needs root to switch users; the test suite runs as root (CI does).
    assert_eq!(nix_uid(), 0, "this test must run as root");
    let d = daemon_with(&["--control-group", "nogroup"]);
    std::fs::set_permissions(&d.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let as_nobody = |args: &str| {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_xvsadm"))
            .args(args.split_whitespace())
            .env("XVS_CONTROL", &d.sock)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    ok(&d, "-A -t 10.0.0.1:80 -s rr");
    // The group may read...
    let (st, out, _) = as_nobody("-L -n");
    assert_eq!(st, 0);
    assert!(out.contains("TCP  10.0.0.1:80 rr"));
    // ...but not change anything.
    let (st, _, err) = as_nobody("-A -t 10.0.0.2:80");
    assert_eq!(
        (st, err.as_str()),
        (255, "Permission denied (you must be root)\n")
    );
    assert!(!ok(&d, "-L -n").contains("10.0.0.2"));
    // Without the group the socket is 0600 root: other users cannot even connect.
    let d2 = daemon();
    std::fs::set_permissions(&d2.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_xvsadm"))
        .args(["-L", "-n"])
        .env("XVS_CONTROL", &d2.sock)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    assert_eq!(mode(&d2.sock), 0o600);
    assert_eq!(mode(&d.sock), 0o660);
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn nix_uid() -> u32 {
    // The owner of a file we just created is our effective uid.
    use std::os::unix::fs::MetadataExt;
    let p = std::env::temp_dir().join(format!("xvsadm-uid-{}", std::process::id()));
    std::fs::write(&p, b"").unwrap();
    let uid = std::fs::metadata(&p).unwrap().uid();
    let _ = std::fs::remove_file(&p);
    uid
}

/// Each start draws its hash seeds from the operating system: two starts log different
/// fingerprints. Without --conn-capacity the table is sized from the memory available, and the
/// log says how much it may take.
#[test]
fn two_starts_get_different_hash_seeds() {
    let fingerprint = || {
        let dir = std::env::temp_dir().join(format!(
            "xvsadm-seed-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(bin("xvsd"))
            .arg("--control")
            .arg(dir.join("xvsd.sock"))
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = String::new();
        let mut r = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) > 0 {
            if line.contains("fingerprint") {
                out = line.clone();
                break;
            }
            line.clear();
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        out
    };
    let (a, b) = (fingerprint(), fingerprint());
    let fp = |l: &str| {
        l.split("fingerprint ")
            .nth(1)
            .map(|f| f.trim().trim_end_matches(')').to_string())
    };
    assert!(a.contains("hash seed from getrandom"), "{a}");
    assert!(
        a.contains("connection table: ") && a.contains(" bytes ("),
        "{a}"
    );
    assert!(fp(&a).is_some() && fp(&b).is_some(), "{a} {b}");
    assert_ne!(fp(&a), fp(&b), "two starts, one seed: {a} {b}");
}
