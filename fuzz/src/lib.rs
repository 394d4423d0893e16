//! The fuzz targets of xvs, one function of the input bytes each. `fuzz/afl` runs them under
//! AFL (`scripts/fuzz.sh`); `tests/corpus.rs` replays the committed corpus and every crash
//! found, so that a regression fails the test command. A target returns normally for every
//! input; a panic (or an abort) is a finding. Where a property must hold (a configuration
//! saved and loaded again is the same one; a request decoded and encoded again is the same
//! bytes) the target asserts it.

use std::net::IpAddr;
use std::sync::OnceLock;

use xvs_core::routes::StaticRoutes;
use xvs_core::{Director, Engine, Frame, Tables, Time, Verdict, WorkerState};
use xvs_ipvsadm::control::{
    decode_request, decode_response, encode_request, encode_response, header, MAX_REQUEST,
};
use xvs_ipvsadm::exec::{execute, state_text, Session};
use xvs_ipvsadm::list::Numeric;

/// The services the frames target: every forwarding method in both families, persistence,
/// UDP, SCTP, the SIP persistence engine, a fwmark service and several schedulers.
pub const RULES: &str = "\
-A -t 10.0.0.1:80 -s rr
-a -t 10.0.0.1:80 -r 10.9.0.11:80 -g
-a -t 10.0.0.1:80 -r 10.9.0.12:80 -g -w 2
-A -t 10.0.0.2:80 -s wlc -p 300
-a -t 10.0.0.2:80 -r 192.168.10.1:8080 -m
-a -t 10.0.0.2:80 -r 192.168.10.2:8080 -m
-A -t 10.0.0.3:443 -s sh
-a -t 10.0.0.3:443 -r 10.9.0.13:443 -i
-A -t 10.0.0.4:80 -s mh
-a -t 10.0.0.4:80 -r 10.9.0.14:80 -i --tun-type gue --tun-port 6080 --tun-csum
-A -t 10.0.0.5:80 -s lblc
-a -t 10.0.0.5:80 -r 10.9.0.15:80 -i --tun-type gre --tun-csum
-A -u 10.0.0.1:53 -s rr
-a -u 10.0.0.1:53 -r 192.168.10.1:53 -m
-a -u 10.0.0.1:53 -r 10.9.0.11:53 -g
-A -t [fd00::1]:80 -s rr
-a -t [fd00::1]:80 -r [fd09::11]:80 -g
-a -t [fd00::1]:80 -r [fd01::1]:80 -m
-A -u [fd00::1]:53 -s sed
-a -u [fd00::1]:53 -r [fd09::12]:53 -i
-A -f 7 -s rr
-a -f 7 -r 10.9.0.16:0 -g
-A --sctp-service 10.0.0.6:3868 -s rr
-a --sctp-service 10.0.0.6:3868 -r 192.168.10.1:3869 -m
-a --sctp-service 10.0.0.6:3868 -r 10.9.0.17:3868 -g
-A -u 10.0.0.7:5060 -s rr -p 60 --pe sip
-a -u 10.0.0.7:5060 -r 10.9.0.18:5060 -g
-a -u 10.0.0.7:5060 -r 10.9.0.19:5060 -g
";

/// The balancer's MAC address in the frames.
pub const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fn tables() -> &'static (Tables, StaticRoutes) {
    static T: OnceLock<(Tables, StaticRoutes)> = OnceLock::new();
    T.get_or_init(|| {
        let mut d = Director::new();
        let rep = xvs_ipvsadm::apply::restore(&mut d, "xvs-fuzz", RULES);
        assert!(
            rep.errors.is_empty() && rep.stopped.is_none(),
            "fuzz rules: {:?}",
            rep.errors
        );
        let locals = vec![
            IpAddr::from([10, 9, 0, 1]),
            IpAddr::from([0xfd09, 0, 0, 0, 0, 0, 0, 1]),
        ];
        let mut r = StaticRoutes::new(1, LOCAL_MAC, locals, 1500);
        r.set_gateway(Some([0x02, 0, 0, 0, 0, 0xfe]));
        (d.snapshot(), r)
    })
}

/// Frames through the data path: the input is a sequence of records `[clock step][length, 2
/// bytes][frame]`; each frame gets 256 bytes of headroom, as in a UMEM frame. The records go
/// through `Engine::process_frame` one by one, then all of them again as one batch through
/// `Engine::process` (the workers' path) on the connection table the first pass
/// filled, with the clock moving on by each record's step (seconds) so that entries expire.
pub fn frames(data: &[u8]) {
    let (t, routes) = tables();
    let engine = Engine::new(1024, 0x5eed);
    engine.set_prefetch_from(0);
    let mut records = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 && records.len() < 64 {
        let step = u64::from(rest[0]);
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        records.push((step, &rest[3..3 + len]));
        rest = &rest[3 + len..];
    }
    const HEADROOM: usize = 256;
    let mut now = 1_000u64;
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(records.len());
    for (step, bytes) in &records {
        now += step * 1000;
        let mut buf = vec![0u8; HEADROOM + bytes.len() + 128];
        buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        // An odd clock step carries the fwmark of the fwmark service.
        let mark = if step & 1 == 1 { 7 } else { 0 };
        let mut frame = Frame::new(&mut buf, HEADROOM, bytes.len()).with_mark(mark);
        let v = engine.process_frame(t, routes, &mut frame, Time(now));
        check(&v, &frame);
        if *step > 30 {
            engine.conns.expire_step(Time(now));
        }
        bufs.push(buf);
    }
    // The same frames (as the first pass left them) again, as one batch.
    let mut worker = WorkerState::new();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(&records)
        .map(|(b, (step, bytes))| {
            Frame::new(b, HEADROOM, bytes.len()).with_mark(if step & 1 == 1 { 7 } else { 0 })
        })
        .collect();
    let mut verdicts = vec![Verdict::Pass; frames.len()];
    engine.process(
        t,
        routes,
        &mut frames,
        Time(now),
        &mut verdicts,
        &mut worker,
        |_| {},
    );
    for (v, f) in verdicts.iter().zip(&frames) {
        check(v, f);
    }
}

/// What every verdict must leave: a frame inside its buffer, and an Ethernet frame to send.
fn check(v: &Verdict, f: &Frame<'_>) {
    if matches!(v, Verdict::Forward { .. } | Verdict::Reply(_)) {
        assert!(f.len() >= 14, "a frame to send of {} bytes", f.len());
    }
}

/// ipvsadm's language: the first line as one command line, then the whole input as a `-R`
/// stream on a fresh configuration, then every listing; the configuration saved as a state
/// file and loaded again must give the same state file.
pub fn ipvsadm(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut director = Director::new();
    let mut daemons = Vec::new();
    let none = Vec::new;
    let session = |director: &mut Director, daemons: &mut Vec<_>, args: &[String], stdin: &str| {
        let mut s = Session {
            director,
            daemons,
            connections: &none,
            conn_tab_size: 4096,
            names: &Numeric,
            may_change: true,
            prog: "xvsadm",
        };
        execute(&mut s, args, stdin)
    };
    let first: Vec<String> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    session(&mut director, &mut daemons, &first, "");
    session(&mut director, &mut daemons, &["-R".into()], &text);
    for list in [
        "-L -n",
        "-L -n --stats",
        "-L -n --rate",
        "-L -n --thresholds",
        "-L -n --persistent-conn",
        "-S -n",
        "-L --timeout",
        "-L --daemon",
        "-L -n -c",
    ] {
        let args: Vec<String> = list.split_whitespace().map(String::from).collect();
        session(&mut director, &mut daemons, &args, "");
    }
    let saved = state_text(&director, &daemons);
    let mut again = Director::new();
    let mut daemons2 = Vec::new();
    let out = session(&mut again, &mut daemons2, &["-R".into()], &saved);
    assert_eq!(
        out.status, 0,
        "a saved state does not load: {}\n{saved}",
        out.stderr
    );
    assert_eq!(
        state_text(&again, &daemons2),
        saved,
        "a saved state loads as another"
    );
    // The same text as firewall-mark rules: refused or read; rules written back read the same.
    let ifindex = |name: &str| (name == "eth0").then_some(2);
    if let Ok((rules, _)) = xvs_ipvsadm::marks::parse(&text, &ifindex) {
        let written = xvs_ipvsadm::marks::to_text(&rules);
        let (back, _) = xvs_ipvsadm::marks::parse(&written, &ifindex).expect("written rules read");
        assert_eq!(back, rules, "mark rules written back read as others");
    }
}

/// Control-socket messages: a frame header, a request and a response payload; what decodes
/// encodes back to the same bytes.
pub fn control(data: &[u8]) {
    if data.len() >= 8 {
        let h: [u8; 8] = data[..8].try_into().unwrap_or([0; 8]);
        let _ = header(&h, MAX_REQUEST);
    }
    let payload = data.get(8..).unwrap_or(&[]);
    if let Ok(req) = decode_request(payload) {
        let again = encode_request(&req);
        assert_eq!(
            &again[8..],
            payload,
            "a request does not encode back to its bytes"
        );
    }
    if let Ok(resp) = decode_response(payload) {
        let again = encode_response(&resp);
        assert_eq!(
            &again[8..],
            payload,
            "a response does not encode back to its bytes"
        );
    }
}

/// The state file: unsealed, and what unseals loads as `-R` input (errors are fine, panics are
/// not); sealing any text and unsealing it gives the text back (its last line ended).
pub fn state(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(body) = xvs_ipvsadm::state::unseal(&text) {
        let mut director = Director::new();
        let mut daemons = Vec::new();
        let none = Vec::new;
        let mut s = Session {
            director: &mut director,
            daemons: &mut daemons,
            connections: &none,
            conn_tab_size: 4096,
            names: &Numeric,
            may_change: true,
            prog: "xvsd",
        };
        execute(&mut s, &["-R".into()], body);
    }
    // Sealing ends the last line; otherwise what is sealed unseals to itself.
    let sealed = xvs_ipvsadm::state::seal(&text);
    let mut want = text.to_string();
    if !want.is_empty() && !want.ends_with('\n') {
        want.push('\n');
    }
    assert_eq!(
        xvs_ipvsadm::state::unseal(&sealed),
        Ok(&*want),
        "a sealed text does not unseal to itself"
    );
}

/// Sync datagrams, as a backup receives them: decoded (a refusal is fine, a panic is not),
/// every usable record entered in a connection table with the fuzz services, each record
/// written again reads back the same; and the same bytes as a table dump a restarting xvsd
/// reads (`load_table`).
pub fn sync(data: &[u8]) {
    use xvs_core::sync::{decode, load_table, MessageWriter};
    let (t, _) = tables();
    let engine = Engine::new(1024, 0x5eed);
    if let Ok(m) = decode(data, 0) {
        let mut w = MessageWriter::new(m.version, m.syncid, 65_000);
        let good: Vec<_> = m.records.iter().filter_map(|r| r.ok()).collect();
        for r in &good {
            let _ = engine.apply_sync(t, r, Time(1_000));
            assert!(
                w.push(r) || m.version == 0,
                "a decoded record fits an empty message"
            );
        }
        if m.version == 1 {
            let again = decode(w.bytes(), 0).expect("a written message decodes");
            let back: Vec<_> = again.records.iter().filter_map(|r| r.ok()).collect();
            assert_eq!(back, good, "records written again read back the same");
        }
    }
    let _ = load_table(&engine, t, data, Time(2_000));
}

/// A fuzz target.
pub type Target = fn(&[u8]);

/// The targets by name (the corpus directories' names).
pub const TARGETS: [(&str, Target); 5] = [
    ("frames", frames),
    ("ipvsadm", ipvsadm),
    ("control", control),
    ("state", state),
    ("sync", sync),
];
