//! Command lines with the expected command or ipvsadm's expected error text and exit status.

#![allow(clippy::unwrap_used)] // test helpers unwrap freely

use std::net::IpAddr;

use xvs_core::director::Director;
use xvs_core::service::{SVC_F_ONEPACKET, SVC_F_PERSISTENT};
use xvs_core::types::{Af, ForwardMethod, Netmask, Protocol, ServiceKey, TunnelCsum, TunnelType};
use xvs_ipvsadm::apply::restore;
use xvs_ipvsadm::parse::{Command, DaemonRole};
use xvs_ipvsadm::save::save;
use xvs_ipvsadm::{parse_command, ParseError};

fn p(line: &str) -> Result<Command, ParseError> {
    let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    parse_command("ipvsadm", &args)
}

fn err(line: &str) -> (String, i32) {
    let e = p(line).expect_err(line);
    (e.message, e.status)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(a: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        proto: Protocol::Tcp,
        addr: ip(a),
        port,
    }
}

#[test]
fn add_service_defaults() {
    let Command::AddService(c) = p("-A -t 207.175.44.110:80 -s rr").unwrap() else {
        panic!()
    };
    assert_eq!(c.key, tcp("207.175.44.110", 80));
    assert_eq!(c.scheduler, "rr");
    assert_eq!(c.flags, 0);
    let Command::AddService(c) = p("-A -t 10.0.0.1:80").unwrap() else {
        panic!()
    };
    assert_eq!(c.scheduler, "wlc", "default scheduler");
    let Command::EditService(c) = p("--edit-service --tcp-service=10.0.0.1:http").unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.key, c.scheduler.as_str()),
        (tcp("10.0.0.1", 80), "wlc"),
        "-E is a full replacement"
    );
}

#[test]
fn persistence_forms() {
    let Command::AddService(c) = p("-A -t 10.0.0.1:80 -p").unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.flags & SVC_F_PERSISTENT, c.timeout),
        (SVC_F_PERSISTENT, 360),
        "ipvsadm's default is 360 s"
    );
    let Command::AddService(c) = p("-A -t 10.0.0.1:80 -p 600 -M 255.255.255.0").unwrap() else {
        panic!()
    };
    assert_eq!(c.timeout, 600);
    assert_eq!(c.netmask, Netmask::V4("255.255.255.0".parse().unwrap()));
    let Command::AddService(c) = p("-A -t 10.0.0.1:0 --persistent=60").unwrap() else {
        panic!()
    };
    assert_eq!(c.timeout, 60);
    let Command::AddService(c) = p("-A -t 10.0.0.1:80 -p -s rr").unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.timeout, c.scheduler.as_str()),
        (360, "rr"),
        "-p does not eat an option"
    );
    let Command::AddService(c) = p("-A -t [2001:db8::1]:443 -s mh -p 600 -M 64").unwrap() else {
        panic!()
    };
    assert_eq!(c.netmask, Netmask::V6(64));
    assert_eq!(
        err("-A -t 10.0.0.1:80 -p 0"),
        ("invalid timeout value `0' specified".into(), 2)
    );
    assert_eq!(
        err("-A -t 10.0.0.1:80 -p 2678401"),
        ("invalid timeout value `2678401' specified".into(), 2)
    );
}

#[test]
fn fwmark_and_ipv6_flag() {
    let Command::AddService(c) = p("-A -f 2 -6 -s wrr").unwrap() else {
        panic!()
    };
    assert_eq!(
        c.key,
        ServiceKey::Fwmark {
            af: Af::V6,
            mark: 2
        }
    );
    assert_eq!(err("-A -6 -f 2"), ("-6 used before -f\n".into(), 2));
    assert_eq!(
        err("-A -f 0"),
        ("invalid fwmark value `0' specified".into(), 2)
    );
    assert_eq!(
        err("-A -f 0x10"),
        ("invalid fwmark value `0x10' specified".into(), 2)
    );
    let Command::AddService(c) = p("-A -f 1 -s sh -b sh-fallback,sh-port").unwrap() else {
        panic!()
    };
    assert_eq!(c.flags, 0x18);
}

#[test]
fn bundled_short_options() {
    let Command::List(l) = p("-Ln").unwrap() else {
        panic!()
    };
    assert!(l.numeric);
    let Command::AddService(c) = p("-At 10.0.0.1:80 -srr").unwrap() else {
        panic!()
    };
    assert_eq!(c.scheduler, "rr");
    let Command::List(l) = p("-L -n --stats --exact").unwrap() else {
        panic!()
    };
    assert!(l.stats && l.exact);
    assert_eq!(p("").unwrap(), Command::List(Default::default()));
}

#[test]
fn real_servers() {
    let Command::AddDest(k, d) = p("-a -t 207.175.44.110:80 -r 192.168.10.1:80 -m").unwrap() else {
        panic!()
    };
    assert_eq!(k, tcp("207.175.44.110", 80));
    assert_eq!(
        (d.addr, d.port, d.method, d.weight),
        (ip("192.168.10.1"), 80, ForwardMethod::Masq, 1)
    );
    // No port: the service port known at that moment is copied.
    let Command::AddDest(_, d) = p("-a -t 10.0.0.1:80 -r 192.168.10.1 -m -w 3").unwrap() else {
        panic!()
    };
    assert_eq!((d.port, d.weight), (80, 3));
    // -r before -t copies port 0 (QUIRK), and NAT keeps it.
    let Command::AddDest(_, d) = p("-a -r 192.168.10.1 -t 10.0.0.1:80 -m").unwrap() else {
        panic!()
    };
    assert_eq!(d.port, 0);
    // DR and tunnel force the service port.
    let Command::AddDest(_, d) = p("-a -t 10.0.0.1:80 -r 192.168.10.1:8080 -g").unwrap() else {
        panic!()
    };
    assert_eq!(d.port, 80);
    let Command::AddDest(_, d) =
        p("-a -f 1 -r 192.168.10.5:0 -i --tun-type gue --tun-port 6080 --tun-csum").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (d.tunnel.kind, d.tunnel.port, d.tunnel.csum),
        (TunnelType::Gue, 6080, TunnelCsum::Csum)
    );
    let Command::DelDest(k, a, port) = p("-d -t 10.0.0.1:80 -r 192.168.10.1").unwrap() else {
        panic!()
    };
    assert_eq!((k, a, port), (tcp("10.0.0.1", 80), ip("192.168.10.1"), 80));
}

#[test]
fn daemon_and_set() {
    let Command::StartDaemon(d) = p("--start-daemon master --syncid 5").unwrap() else {
        panic!()
    };
    assert_eq!(
        (d.role, d.mcast_ifn.as_str(), d.syncid),
        (DaemonRole::Master, "eth0", 5)
    );
    assert_eq!(
        err("--start-daemon primary"),
        ("illegal start-daemon parameter specified".into(), 2)
    );
    assert_eq!(
        p("--set 900 120 300").unwrap(),
        Command::SetTimeouts(900, 120, 300)
    );
    assert_eq!(
        err("--set 900 120"),
        ("--set option requires 3 timeout values".into(), 2)
    );
    assert_eq!(
        err("--start-daemon master --mcast-group 10.0.0.1"),
        ("invalid IPv4 mcast-group `10.0.0.1'".into(), 2)
    );
    // The family is the text's (a colon: IPv6), valid address or not.
    assert_eq!(
        err("--start-daemon master --mcast-group fe80::1"),
        ("invalid IPv6 mcast-group `fe80::1'".into(), 2)
    );
    assert_eq!(
        err("--start-daemon master --mcast-group ff02::zz"),
        ("invalid IPv6 mcast-group `ff02::zz'".into(), 2)
    );
}

#[test]
fn error_table() {
    let cases: &[(&str, &str, i32)] = &[
        ("-t 10.0.0.1:80 -A", "Try `ipvsadm -h' or 'ipvsadm --help' for more information.", 255),
        ("-A -t 10.0.0.1:80 -a", "invalid option `-a'", 2),
        ("-A -t 10.0.0.1:80 -s rr -s wlc", "multiple 'scheduler' options specified", 2),
        ("-A -t 10.0.0.1", "Zero port specified for non-persistent service", 2),
        ("-A -t 10.0.0.1:53 -o", "One-Packet Scheduling is only for UDP virtual services", 2),
        ("-A -t 12345", "illegal virtual server address[:port] specified", 2),
        ("-A -t [2001:db8::1]", "illegal virtual server address[:port] specified", 2),
        ("-A -t 10.0.0.1:80 -r 10.0.0.2", "Illegal 'real-server' option with the 'add-service' command", 2),
        ("-A -s rr", "You need to supply the 'service-address' option for the 'add-service' command", 2),
        ("-a -t 10.0.0.1:80", "You need to supply the 'real-server' option for the 'add-server' command", 2),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 65536", "illegal weight specified", 2),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -w -1", "illegal weight specified", 2),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -x abc", "illegal u_threshold specified", 2),
        ("-a -t 10.0.0.1:80 -r nohost.example", "illegal real server address[:port] specified", 2),
        ("-a -t 10.0.0.1:80 -r 2001:db8::2 -g", "Different address family is allowed only for tunneling servers", 2),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -g --tun-type gue", "Tunnel options conflict with forward method", 2),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gue", "You need to supply the 'tun-port' option for the 'gue' tunnel type", 2),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-port 6080", "Illegal 'tun-port' option with the 'ipip' tunnel type", 2),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gre --tun-remcsum", "Illegal 'tun-remcsum' option with the 'gre' tunnel type", 2),
        (
            "-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gue --tun-port 1 --tun-csum --tun-nocsum",
            "The option 'tun-csum' conflicts with the 'tun-nocsum' option in the 'gue' tunnel type",
            2,
        ),
        ("-L -c -t 10.0.0.1:80", "The option 'service-address' conflicts with the 'connection' option in the 'list' command", 2),
        ("-L -c --stats", "options conflicts in the list command", 2),
        ("-L --timeout --persistent-conn", "options conflicts in the list command", 2),
        ("-L extra", "unexpected argument extra", 2),
        ("-C -n", "Illegal 'numeric' option with the 'flush' command", 2),
        ("-A -t 10.0.0.1:80 -s sh -b mh-port", "incompatible scheduler flag `mh-port'", 2),
        ("-A -t 10.0.0.1:80 -b sh-port", "incompatible scheduler flag `sh-port'", 2),
        ("-A -t 10.0.0.1:80 -b bogus", "invalid scheduler flag `bogus'", 2),
        ("-A -t 10.0.0.1:80 -s sh -b sh-port,bogus", "invalid scheduler flag `bogus'", 2),
        ("-A -t 10.0.0.1:80 -p 60 -M 300.0.0.0", "illegal virtual server persistent mask specified", 2),
        ("-A -t [2001:db8::1]:80 -p 60 -M 129", "illegal ipv6 netmask specified", 2),
        (
            "-A --sctp-service 10.0.0.1:5060 -o",
            "One-Packet Scheduling is only for UDP virtual services",
            2,
        ),
        ("-A --sctp-service", "--sctp-service: missing argument", 255),
        ("--bogus", "--bogus: unknown option", 255),
        ("-A -t", "-t: missing argument", 255),
        ("-Lq", "-q: unknown option", 255),
    ];
    for (line, msg, status) in cases {
        assert_eq!(err(line), (msg.to_string(), *status), "{line}");
    }
}

#[test]
fn one_packet_udp_and_pe_parse() {
    let Command::AddService(c) = p("-A -u 10.0.0.1:53 -s rr -o").unwrap() else {
        panic!()
    };
    assert_eq!(c.flags, SVC_F_ONEPACKET);
    let Command::AddService(c) = p("-A -u 10.0.0.1:5060 -p 60 --pe sip").unwrap() else {
        panic!()
    };
    assert_eq!(c.pe.as_deref(), Some("sip"));
}

const RULES: &str = "\
-A -t 10.0.0.1:80 -s wlc -p 300 -M 255.255.255.0
-a -t 10.0.0.1:80 -r 192.168.10.1:80 -m -w 1
-a -t 10.0.0.1:80 -r 192.168.10.2:80 -g -w 0
-A -u 10.0.0.1:53 -s rr -o
-A -f 1 -s sh -b sh-fallback,sh-port
-a -f 1 -r 192.168.10.5:0 -i -w 1 --tun-type ipip
-a -f 1 -r 192.168.10.6:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-A -f 2 -6 -s wrr
-A -t [2001:db8::1]:443 -s mh -p 600 -M 64
";

#[test]
fn save_restore_roundtrip_is_identical() {
    let mut d = Director::new();
    let rep = restore(&mut d, "ipvsadm", RULES);
    assert_eq!(rep.stopped, None);
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    let saved = save(d.services(), true);
    // The reference's example lists the IPv6 service last; ipvsadm's sort (fwmark 0 first) puts
    // it right after the IPv4 address services.
    let mut expect: Vec<&str> = RULES.lines().collect();
    let v6 = expect.pop().unwrap();
    expect.insert(4, v6);
    assert_eq!(saved, expect.join("\n") + "\n");
    let mut again = Director::new();
    restore(&mut again, "ipvsadm", &saved);
    assert_eq!(save(again.services(), true), saved);
}

#[test]
fn restore_rules() {
    let mut d = Director::new();
    let input = "ipvsadm -A -t 10.0.0.1:80 -s rr\n\n   \n-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m\n-A -t 10.0.0.2:80 -x 5\n-A -t 10.0.0.3:80\n";
    let rep = restore(&mut d, "ipvsadm", input);
    assert_eq!(rep.errors, vec![(4, "Service already exists".to_string())]);
    let (line, e) = rep.stopped.clone().unwrap();
    assert_eq!(
        (line, e.message.as_str(), rep.status),
        (
            6,
            "Illegal 'u-threshold' option with the 'add-service' command",
            2
        )
    );
    assert_eq!(
        d.services().len(),
        1,
        "lines before the syntax error stay, none after"
    );
    assert_eq!(d.services()[0].dests.len(), 1);
    let rep = restore(&mut d, "ipvsadm", "-R\n");
    assert_eq!(rep.stopped.unwrap().1.status, 255, "-R inside -R");
}

#[test]
fn sort_order_keeps_ipvsadm_quirk() {
    let mut d = Director::new();
    restore(
        &mut d,
        "ipvsadm",
        "-A -t 200.0.0.1:80\n-A -t 10.0.0.1:80\n-A -u 10.0.0.1:80\n-A -f 5\n-A -t 10.0.0.2:80\n",
    );
    let order: Vec<String> = save(d.services(), true)
        .lines()
        .map(str::to_string)
        .collect();
    // 200.x vs 10.x differ by ≥ 2^31: the subtraction overflows and 200.x sorts first.
    assert_eq!(
        order,
        [
            "-A -t 200.0.0.1:80 -s wlc",
            "-A -t 10.0.0.1:80 -s wlc",
            "-A -t 10.0.0.2:80 -s wlc",
            "-A -u 10.0.0.1:80 -s wlc",
            "-A -f 5 -s wlc",
        ]
    );
}

/// SCTP services: parsed, sorted after UDP (protocol 132), saved as `--sctp-service`, restored.
#[test]
fn sctp_services_save_and_restore() {
    let Command::AddService(c) = p("-A --sctp-service 10.0.0.1:3868 -s rr").unwrap() else {
        panic!()
    };
    assert_eq!(
        c.key,
        ServiceKey::Addr {
            proto: Protocol::Sctp,
            addr: ip("10.0.0.1"),
            port: 3868
        }
    );
    let rules = "-A --sctp-service 10.0.0.1:3868 -s rr\n\
                 -a --sctp-service 10.0.0.1:3868 -r 10.1.0.1:3868 -m -w 1\n\
                 -A -u 10.0.0.1:53 -s rr\n\
                 -A --sctp-service [2001:db8::1]:3868 -s wlc\n\
                 -a --sctp-service [2001:db8::1]:3868 -r [2001:db8::11]:3868 -g -w 1\n";
    let mut d = Director::new();
    let rep = restore(&mut d, "ipvsadm", rules);
    assert!(rep.errors.is_empty() && rep.stopped.is_none(), "{rep:?}");
    let saved = save(d.services(), true);
    assert_eq!(
        saved,
        "-A -u 10.0.0.1:53 -s rr\n\
         -A --sctp-service 10.0.0.1:3868 -s rr\n\
         -a --sctp-service 10.0.0.1:3868 -r 10.1.0.1:3868 -m -w 1\n\
         -A --sctp-service [2001:db8::1]:3868 -s wlc\n\
         -a --sctp-service [2001:db8::1]:3868 -r [2001:db8::11]:3868 -g -w 1\n"
    );
    let mut again = Director::new();
    restore(&mut again, "ipvsadm", &saved);
    assert_eq!(save(again.services(), true), saved);
}
