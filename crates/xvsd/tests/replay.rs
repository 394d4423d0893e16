//! `xvsd replay` end to end: a capture in, a capture and verdicts out, checked frame by frame.

#![allow(clippy::unwrap_used)] // test helpers unwrap freely

use std::path::Path;
use std::process::Command;

use pcap_file::pcap::PcapReader;

#[allow(dead_code)]
#[path = "../examples/demo_capture.rs"]
mod demo;

fn replay(
    dir: &Path,
    rules: &str,
    frames: &[Vec<u8>],
    extra: &[&str],
) -> (String, Vec<Vec<u8>>, Vec<String>) {
    let rules_p = dir.join("rules");
    std::fs::write(&rules_p, rules).unwrap();
    let in_p = dir.join("in.pcap");
    demo::write_pcap(in_p.to_str().unwrap(), frames).unwrap();
    let out_p = dir.join("out.pcap");
    let v_p = dir.join("v.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_xvsd"))
        .args(["replay", "--rules"])
        .arg(&rules_p)
        .arg("--in")
        .arg(&in_p)
        .arg("--out")
        .arg(&out_p)
        .arg("--verdicts")
        .arg(&v_p)
        .args([
            "--local-mac",
            "02:00:00:00:00:1b",
            "--local-ip",
            "10.0.0.254",
            "--gateway-mac",
            "02:00:00:00:00:99",
        ])
        .args([
            "--neigh",
            "192.168.10.1=02:00:00:00:aa:01",
            "--neigh",
            "192.168.10.2=02:00:00:00:aa:02",
        ])
        .args(["--neigh", "192.168.10.3=02:00:00:00:aa:03"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = PcapReader::new(std::fs::File::open(&out_p).unwrap()).unwrap();
    let mut frames = Vec::new();
    while let Some(p) = r.next_packet() {
        frames.push(p.unwrap().data.to_vec());
    }
    let verdicts = std::fs::read_to_string(&v_p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (String::from_utf8(out.stdout).unwrap(), frames, verdicts)
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xvs-replay-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn demo_capture_balances_three_servers() {
    let dir = tmp("demo");
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/demo.rules"
    ))
    .unwrap();
    let frames = demo::demo_frames();
    let (summary, out, verdicts) = replay(&dir, &rules, &frames, &[]);
    assert_eq!(verdicts.len(), frames.len());
    assert_eq!(out.len(), 15, "3 × (3 client packets + 2 replies)");
    for (i, server) in ["192.168.10.3:80", "192.168.10.2:80", "192.168.10.1:80"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            verdicts[i * 5],
            format!(
                "{{\"index\":{},\"verdict\":\"forward\",\"ifindex\":1,\"real\":\"{server}\"}}",
                i * 5
            )
        );
        // The client's SYN leaves towards the real server's MAC with the real server as destination.
        let f = &out[i * 5];
        assert_eq!(&f[0..6], &demo::RS_MACS[2 - i]);
        assert_eq!(&f[30..34], &[192, 168, 10, 3 - i as u8]);
        // The reply leaves from the VIP towards the gateway.
        let r = &out[i * 5 + 1];
        assert_eq!(&r[0..6], &[0x02, 0, 0, 0, 0, 0x99]);
        assert_eq!(&r[26..30], &[10, 0, 0, 1]);
    }
    assert!(verdicts[15].contains("\"pass\""), "ARP");
    assert!(verdicts[16].contains("\"pass\""), "ping");
    assert!(verdicts[17].contains("tcp_non_syn_no_conn"));
    assert!(summary.contains("TCP 10.0.0.1:80  3 9 6"), "{summary}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_rules_fail_with_the_line() {
    let dir = tmp("bad");
    let rules_p = dir.join("rules");
    std::fs::write(
        &rules_p,
        "-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.2:80 -w 3\n",
    )
    .unwrap();
    let in_p = dir.join("in.pcap");
    demo::write_pcap(in_p.to_str().unwrap(), &[]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xvsd"))
        .args(["replay", "--rules"])
        .arg(&rules_p)
        .arg("--in")
        .arg(&in_p)
        .arg("--out")
        .arg(dir.join("out.pcap"))
        .args([
            "--local-mac",
            "02:00:00:00:00:1b",
            "--local-ip",
            "10.0.0.254",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "xvsd replay: rules line 2: Illegal 'weight' option with the 'add-service' command"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
