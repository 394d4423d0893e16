//! The control socket and the state file under hostile or broken conditions, as an attacker
//! on the box or a failing disk would present them: clients that hold slots and drip bytes, an
//! oversized request from a group member, a client that never reads its reply, a closed pipe,
//! SIGHUP, a state directory that disappears, a state file cut short or partly invalid, and a
//! kill -9 during a large `-R`. Needs root (other users, signals); CI runs it as root.

#![allow(clippy::unwrap_used)] // test helpers unwrap freely

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xvs_ipvsadm::control::{encode_request, Request, MAGIC};

struct Daemon {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // By the PID we started; std sends nothing to a child already waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bin(name: &str) -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_xvsadm"));
    me.parent().unwrap().join(name)
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

fn new_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xvs-hostile-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start xvsd (control plane only) in `dir`; None if it exited (its log says why).
fn start_in(dir: &Path, extra: &[&str]) -> Option<Daemon> {
    let sock = dir.join("xvsd.sock");
    let log = dir.join("xvsd.log");
    let child = Command::new(bin("xvsd"))
        .arg("--control")
        .arg(&sock)
        .args(["--conn-capacity", "65536"])
        .args(extra)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        dir: dir.to_path_buf(),
        sock,
        log,
    };
    let start = Instant::now();
    while !d.sock.exists() {
        if d.child.try_wait().unwrap().is_some() {
            // Keep the directory for the caller (the log); the Daemon must not remove it.
            d.dir = new_dir("gone");
            return None;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "xvsd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(d)
}

fn start(tag: &str, extra: &[&str]) -> Daemon {
    start_in(&new_dir(tag), extra).expect("xvsd starts")
}

fn adm_in(sock: &Path, args: &str, stdin: &str) -> (i32, String, String) {
    common::xvsadm(sock, args, stdin)
}

fn ok(d: &Daemon, args: &str) -> String {
    let (st, out, err) = adm_in(&d.sock, args, "");
    assert_eq!(st, 0, "xvsadm {args}: {err}");
    out
}

/// A Python one-liner run as user nobody with the socket's group (xvsd's --control-group).
fn as_group_member(d: &Daemon, code: &str) -> Child {
    std::fs::set_permissions(&d.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", code])
        .arg(&d.sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn dripping_group_members_cannot_lock_root_out() {
    let d = start("drip", &["--control-group", "nogroup"]);
    // 64 connections from a group member, each sending one byte of a request and then nothing.
    let code = r#"
import socket, sys, time
socks = []
for i in range(64):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.send(b"X")
    socks.append(s)
print("connected", flush=True)
time.sleep(30)
"#;
    let mut attacker = as_group_member(&d, code);
    let mut line = [0u8; 10];
    attacker
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"connected\n");
    // Root is still served, at once.
    let t = Instant::now();
    ok(&d, "-A -t 10.0.0.1:80 -s rr");
    assert!(ok(&d, "-L -n").contains("10.0.0.1:80"));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "root waited {:?}",
        t.elapsed()
    );
    attacker.kill().unwrap();
    let _ = attacker.wait();
}

#[test]
fn a_request_that_trickles_in_is_cut_off_at_its_deadline() {
    let d = start("deadline", &[]);
    let mut s = UnixStream::connect(&d.sock).unwrap();
    let req = encode_request(&Request {
        args: vec!["-L".into(), "-n".into()],
        stdin: String::new(),
    });
    // Half the request, then one byte every 2 s: the per-read timeout never fires, the
    // per-request deadline (10 s) does.
    s.write_all(&req[..6]).unwrap();
    let t = Instant::now();
    let mut closed = false;
    for b in &req[6..] {
        std::thread::sleep(Duration::from_secs(2));
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        if t.elapsed() > Duration::from_secs(16) {
            break;
        }
    }
    if !closed {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
    }
    assert!(
        closed,
        "the trickling client was still connected after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn an_oversized_request_from_a_group_member_is_refused_before_any_payload() {
    let d = start("oversized", &["--control-group", "nogroup"]);
    let rss0 = rss_kib(d.child.id());
    // 16 group members each announce a 60 MiB request and send nothing more.
    let code = format!(
        r#"
import socket, sys, struct
out = []
for i in range(16):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.send(bytes({magic:?}) + struct.pack(">I", 60 << 20))
    s.settimeout(5)
    r = s.recv(4096)
    out.append(b"larger than allowed" in r)
print(all(out), flush=True)
"#,
        magic = MAGIC.to_vec()
    );
    let attacker = as_group_member(&d, &code);
    let o = attacker.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "True",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rss1 = rss_kib(d.child.id());
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    ok(&d, "-L -n");
}

#[test]
fn a_client_that_never_reads_its_reply_blocks_nobody() {
    let d = start("unread", &[]);
    let mut rules = String::new();
    for s in 0..3000u32 {
        rules.push_str(&format!("-A -t 10.{}.{}.1:80 -s rr\n", s / 256, s % 256));
    }
    let (st, _, err) = adm_in(&d.sock, "-R", &rules);
    assert_eq!(st, 0, "{err}");
    // Six clients ask for the listing (about 150 KB each) and never read it.
    let mut idle = Vec::new();
    for _ in 0..6 {
        let mut s = UnixStream::connect(&d.sock).unwrap();
        s.write_all(&encode_request(&Request {
            args: vec!["-L".into(), "-n".into()],
            stdin: String::new(),
        }))
        .unwrap();
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    ok(&d, "-A -t 10.200.0.1:80 -s rr");
    assert_eq!(ok(&d, "-L -n").lines().count(), 3 + 3001);
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(idle);
}

#[test]
fn a_closed_pipe_ends_xvsadm_quietly() {
    let d = start("pipe", &[]);
    let mut rules = String::new();
    for s in 0..20_000u32 {
        rules.push_str(&format!("-A -t 10.{}.{}.1:80 -s rr\n", s / 256, s % 256));
    }
    assert_eq!(adm_in(&d.sock, "-R", &rules).0, 0);
    // `xvsadm -L -n | head -1`: the reader leaves after one line.
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' -L -n | head -1 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
            env!("CARGO_BIN_EXE_xvsadm")
        ))
        .env("XVS_CONTROL", &d.sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "141", "{err}");
}

#[test]
fn sighup_does_not_stop_xvsd() {
    let d = start("hup", &[]);
    ok(&d, "-A -t 10.0.0.1:80 -s rr");
    signal(&d.child, "HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(ok(&d, "-L -n").contains("10.0.0.1:80"));
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("SIGHUP"), "{log}");
}

#[test]
fn a_change_that_cannot_be_saved_is_refused_and_not_applied() {
    let dir = new_dir("unsaved");
    let state_dir = dir.join("state.d");
    std::fs::create_dir_all(&state_dir).unwrap();
    let state = state_dir.join("state");
    let d = start_in(&dir, &["--state", state.to_str().unwrap()]).unwrap();
    ok(&d, "-A -t 10.0.0.1:80 -s rr");
    // The state directory goes away (a full or failed disk is the same to xvsd).
    std::fs::remove_dir_all(&state_dir).unwrap();
    let (st, _, err) = adm_in(&d.sock, "-A -t 10.0.0.2:80 -s rr", "");
    assert_ne!(st, 0);
    assert!(err.contains("not applied"), "{err}");
    let list = ok(&d, "-L -n");
    assert!(
        list.contains("10.0.0.1:80") && !list.contains("10.0.0.2:80"),
        "{list}"
    );
    // A -R that cannot be saved is undone as a whole.
    let (st, _, _) = adm_in(
        &d.sock,
        "-R",
        "-A -t 10.0.0.3:80 -s rr\n-A -t 10.0.0.4:80 -s rr\n",
    );
    assert_ne!(st, 0);
    assert!(!ok(&d, "-L -n").contains("10.0.0.3:80"));
    // A state directory that does not exist at start: xvsd refuses to start.
    let dir2 = new_dir("nostate");
    let missing = dir2.join("missing").join("state");
    assert!(start_in(&dir2, &["--state", missing.to_str().unwrap()]).is_none());
    let log = std::fs::read_to_string(dir2.join("xvsd.log")).unwrap();
    assert!(log.contains("saving state"), "{log}");
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn a_read_only_state_directory_stops_the_start() {
    // xvsd in a mount namespace of its own where the state directory is mounted read-only
    // (root ignores permission bits, not a read-only mount).
    let dir = new_dir("readonly");
    let state_dir = dir.join("state.d");
    std::fs::create_dir_all(&state_dir).unwrap();
    let state = state_dir.join("state");
    let sock = dir.join("xvsd.sock");
    {
        let d = start_in(&dir, &["--state", state.to_str().unwrap()]).unwrap();
        ok(&d, "-A -t 10.0.0.1:80 -s rr");
        signal(&d.child, "TERM");
        let mut d = d;
        let _ = d.child.wait();
        d.dir = new_dir("readonly-keep");
    }
    let script = format!(
        "mount --make-rprivate / && mount --bind '{s}' '{s}' && mount -o remount,ro,bind '{s}' && exec '{x}' --control '{c}' --conn-capacity 65536 --state '{f}'",
        s = state_dir.display(),
        x = bin("xvsd").display(),
        c = sock.display(),
        f = state.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stderr(std::fs::File::create(dir.join("xvsd.log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut up = false;
    while start.elapsed() < Duration::from_secs(10) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if sock.exists() && adm_in(&sock, "-L -n", "").0 == 0 {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("xvsd.log")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    // A state file that cannot be written at start stops the start: no change could be saved.
    assert!(!up, "xvsd served with a read-only state directory");
    assert!(
        log.contains("saving state") && log.contains("Read-only"),
        "{log}"
    );
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("10.0.0.1:80"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_state_file_cut_short_or_partly_invalid_stops_the_start() {
    let dir = new_dir("cut");
    let state = dir.join("state");
    let s = state.to_str().unwrap().to_string();
    {
        let d = start_in(&dir, &["--state", &s]).unwrap();
        ok(&d, "-A -t 10.0.0.1:80 -s rr");
        ok(&d, "-a -t 10.0.0.1:80 -r 10.1.0.1 -m");
        ok(&d, "-a -t 10.0.0.1:80 -r 10.1.0.2 -m");
        signal(&d.child, "TERM");
        let mut d = d;
        let _ = d.child.wait();
        d.dir = new_dir("keep"); // keep `dir` for the next start
    }
    let good = std::fs::read_to_string(&state).unwrap();
    // Cut in the middle of the last destination's line.
    let cut = good.find("10.1.0.2").unwrap() + 5;
    std::fs::write(&state, &good[..cut]).unwrap();
    let d2 = new_dir("cut2");
    assert!(start_in(&d2, &["--state", &s]).is_none());
    let log = std::fs::read_to_string(d2.join("xvsd.log")).unwrap();
    assert!(log.contains("cut short") && log.contains(".prev"), "{log}");
    // The file as written but for one line xvsd refuses (an unknown scheduler): without its
    // integrity line (an old file) it loads line by line, and the bad line stops the start
    // with its file and line number instead of being dropped.
    let body = xvs_state_body(&good);
    let bad = body.replace("-s rr", "-s nosuch");
    std::fs::write(&state, &bad).unwrap();
    let d3 = new_dir("bad");
    assert!(start_in(&d3, &["--state", &s]).is_none());
    let log = std::fs::read_to_string(d3.join("xvsd.log")).unwrap();
    assert!(log.contains(&format!("{s}:2:")), "{log}");
    // The refused file is left as it was.
    assert_eq!(std::fs::read_to_string(&state).unwrap(), bad);
    // The good one loads.
    std::fs::write(&state, &good).unwrap();
    let d4 = start_in(&new_dir("good"), &["--state", &s]).unwrap();
    assert!(ok(&d4, "-L -n").contains("10.1.0.2:80"));
    drop(d4);
    for p in [dir, d2, d3] {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// The configuration lines of a sealed state file (without its header and integrity line).
fn xvs_state_body(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn kill_9_during_a_large_restore_leaves_a_loadable_state() {
    let dir = new_dir("kill9");
    let state = dir.join("state");
    let s = state.to_str().unwrap().to_string();
    let d = start_in(&dir, &["--state", &s]).unwrap();
    ok(&d, "-A -t 10.0.0.1:80 -s rr");
    let mut rules = String::new();
    for i in 0..100_000u32 {
        rules.push_str(&format!(
            "-A -t 10.{}.{}.{}:80 -s rr\n",
            1 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .arg("-R")
        .env("XVS_CONTROL", &d.sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut d = d;
    signal(&d.child, "KILL");
    let _ = d.child.wait();
    let _ = c.wait();
    d.dir = new_dir("kill9-keep");
    drop(d);
    // Whatever the moment: the state file is whole, either before or after the -R.
    let d2 = start_in(&new_dir("kill9-again"), &["--state", &s]).expect("xvsd starts again");
    let n = ok(&d2, "-S -n")
        .lines()
        .filter(|l| l.starts_with("-A"))
        .count();
    assert!(n == 1 || n == 100_001, "{n} services after the restart");
    drop(d2);
    let _ = std::fs::remove_dir_all(dir);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}
