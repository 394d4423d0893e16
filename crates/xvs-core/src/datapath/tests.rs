//! Packet fixtures for every forwarding method, both NAT directions, IPv4 and IPv6, TCP and UDP;
//! ICMP handling; and property tests (random frames never panic, NAT in then out restores the
//! original addresses with valid checksums).

use std::net::IpAddr;

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpHeaderSlice};
use proptest::prelude::*;

use super::*;
use crate::conn::{ConnKey, Eviction};
use crate::dest::{DestConfig, DestState};
use crate::director::Director;
use crate::proto::TcpState;
use crate::routes::StaticRoutes;
use crate::service::ServiceConfig;
use crate::types::{ForwardMethod, Protocol, ServiceKey};
use crate::types::{TunnelConfig, TunnelType};
use crate::wire::{bad_checksum, checksum, l4_checksum, parse, ETH_LEN};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x1b];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];
const HEADROOM: usize = 256;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rs_mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0xaa, n]
}

fn routes() -> StaticRoutes {
    let mut r = StaticRoutes::new(7, LB_MAC, vec![ip("10.0.0.254"), ip("fd00::fe")], 1500);
    for n in 1..=3u8 {
        r.add_neighbour(IpAddr::from([192, 168, 1, n]), rs_mac(n));
        r.add_neighbour(format!("fd01::{n}").parse().unwrap(), rs_mac(n));
    }
    r.set_gateway(Some(GW_MAC));
    r
}

struct Lb {
    dir: Director,
    engine: Engine,
    tables: Tables,
    routes: StaticRoutes,
}

impl Lb {
    /// `f` summed over the first service's destinations.
    fn sum(&self, f: impl Fn(&DestState) -> u32) -> u32 {
        self.tables.services[0].dests.iter().map(|d| f(d)).sum()
    }

    /// The TCP service 10.0.0.1:80 or, for an IPv6 `addr`, [fd00::1]:80 (rr) with one real
    /// server, `addr`:80 by `method`.
    fn one(addr: &str, method: ForwardMethod) -> Lb {
        let vip = if addr.contains(':') {
            "fd00::1"
        } else {
            "10.0.0.1"
        };
        Lb::new(tcp_key(vip, 80), "rr", &[dest(addr, 80, method)])
    }

    fn new(svc: ServiceKey, sched: &str, dests: &[DestConfig]) -> Lb {
        let mut cfg = ServiceConfig::new(svc);
        cfg.scheduler = sched.into();
        Lb::with(cfg, dests, 10_000)
    }

    /// The service `cfg` with `dests`, in a table of `capacity` entries.
    fn with(cfg: ServiceConfig, dests: &[DestConfig], capacity: usize) -> Lb {
        let mut dir = Director::new();
        let svc = cfg.key;
        dir.add_service(cfg).unwrap();
        for d in dests {
            dir.add_dest(&svc, *d).unwrap();
        }
        let tables = dir.snapshot();
        Lb {
            dir,
            engine: Engine::new(capacity, 1),
            tables,
            routes: routes(),
        }
    }

    fn republish(&mut self) {
        self.tables = self.dir.snapshot();
    }

    /// Run one frame; returns the verdict and the output frame bytes.
    fn run(&self, frame: &[u8], now: u64) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut f = Frame::new(&mut buf, HEADROOM, frame.len());
        let v = self
            .engine
            .process_frame(&self.tables, &self.routes, &mut f, Time(now));
        (v, f.data().to_vec())
    }

    /// Run one frame as a batch of a worker (its counter slot and next-hop cache).
    fn run_as(&self, w: &mut WorkerState, frame: &[u8], now: u64) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut fs = [Frame::new(&mut buf, HEADROOM, frame.len())];
        let mut vs = [Verdict::Pass];
        self.engine.process(
            &self.tables,
            &self.routes,
            &mut fs,
            Time(now),
            &mut vs,
            w,
            |_| {},
        );
        (vs[0], fs[0].data().to_vec())
    }
}

#[test]
fn a_worker_sees_a_changed_next_hop_at_its_next_batch() {
    let svc = tcp_key("10.0.0.1", 80);
    let mut lb = Lb::new(svc, "rr", &[dest("192.168.1.1", 80, ForwardMethod::Route)]);
    let mut w = WorkerState::new();
    let syn = tcp4("1.2.3.4", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let ack = tcp4("1.2.3.4", 40000, "10.0.0.1", 80, Flags::Ack, 64, b"");
    let (v, out) = lb.run_as(&mut w, &syn, 0);
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!(out[..6], rs_mac(1));
    let (_, out) = lb.run_as(&mut w, &ack, 1);
    assert_eq!(out[..6], rs_mac(1));
    assert_eq!(w.hop_cache().hits, 1);
    // The real server moved to another MAC: the next batch must use it.
    lb.routes
        .add_neighbour(ip("192.168.1.1"), [2, 0, 0, 0, 0xbb, 1]);
    let (_, out) = lb.run_as(&mut w, &ack, 2);
    assert_eq!(out[..6], [2, 0, 0, 0, 0xbb, 1]);
    // And when it is gone (no neighbour entry, no gateway), packets are dropped as no_route.
    let mut r = StaticRoutes::new(7, LB_MAC, vec![ip("10.0.0.254")], 1500);
    r.set_gateway(None);
    lb.routes = r;
    let (v, _) = lb.run_as(&mut w, &ack, 3);
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
}

fn tcp_key(vip: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        proto: Protocol::Tcp,
        addr: ip(vip),
        port,
    }
}

fn udp_key(vip: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        proto: Protocol::Udp,
        addr: ip(vip),
        port,
    }
}

/// Real servers 192.168.1.1 to .3 on `port`, by direct routing.
fn three_reals(port: u16) -> [DestConfig; 3] {
    [1, 2, 3].map(|n| dest(&format!("192.168.1.{n}"), port, ForwardMethod::Route))
}

fn dest(addr: &str, port: u16, method: ForwardMethod) -> DestConfig {
    let mut d = DestConfig::new(ip(addr), port);
    d.method = method;
    d
}

fn octets4(a: &str) -> [u8; 4] {
    match ip(a) {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(_) => unreachable!(),
    }
}

fn octets6(a: &str) -> [u8; 16] {
    match ip(a) {
        IpAddr::V6(v) => v.octets(),
        IpAddr::V4(_) => unreachable!(),
    }
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
    Fin,
}

fn tcp4(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    flags: Flags,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(octets4(src), octets4(dst), ttl);
    tcp_on(ip, sport, dport, flags, payload)
}

/// A TCP segment in the IP header `ip` (and the client's Ethernet header).
fn tcp_on(
    ip: PacketBuilderStep<IpHeaders>,
    sport: u16,
    dport: u16,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let b = ip.tcp(sport, dport, 1000, 64240);
    let b = match flags {
        Flags::Syn => b.syn(),
        Flags::SynAck => b.syn().ack(1),
        Flags::Ack => b.ack(1),
        Flags::Fin => b.fin().ack(1),
    };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// A UDP datagram in the IP header `ip`.
fn udp_on(ip: PacketBuilderStep<IpHeaders>, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ip.udp(sport, dport).write(&mut v, payload).unwrap();
    v
}

fn tcp6(src: &str, sport: u16, dst: &str, dport: u16, flags: Flags, payload: &[u8]) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv6(octets6(src), octets6(dst), 64);
    tcp_on(ip, sport, dport, flags, payload)
}

fn udp4(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(octets4(src), octets4(dst), 64);
    udp_on(ip, sport, dport, payload)
}

fn udp6(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv6(octets6(src), octets6(dst), 64);
    udp_on(ip, sport, dport, payload)
}

/// The verdict of a client's packet forwarded to the real server `addr`:`port` out of the test
/// balancer's interface.
fn forwarded_to(addr: &str, port: u16) -> Verdict {
    Verdict::Forward {
        ifindex: 7,
        real: Some((ip(addr), port)),
    }
}

/// The verdict of a NAT reply forwarded back to the client.
const REPLY_TO_CLIENT: Verdict = Verdict::Forward {
    ifindex: 7,
    real: None,
};

/// Every checksum in the frame verifies (IPv4 header, TCP/UDP/ICMPv6 with pseudo-header, ICMP).
fn assert_checksums(frame: &[u8]) {
    assert_eq!(bad_checksum(frame), None);
}

#[test]
fn direct_routing_v4_rewrites_only_macs_and_ttl() {
    let lb = Lb::one("192.168.1.1", ForwardMethod::Route);
    let input = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let (v, out) = lb.run(&input, 0);
    assert_eq!(v, forwarded_to("192.168.1.1", 80));
    assert_eq!(&out[0..6], &rs_mac(1));
    assert_eq!(&out[6..12], &LB_MAC);
    assert_eq!(out[ETH_LEN + 8], 63, "TTL decremented");
    // Everything from the IP header on is unchanged except TTL and header checksum.
    let mut expect = input.clone();
    expect[0..12].copy_from_slice(&out[0..12]);
    expect[ETH_LEN + 8] = 63;
    expect[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&out[ETH_LEN + 10..ETH_LEN + 12]);
    assert_eq!(out, expect);
    assert_checksums(&out);
    let st = &lb.tables.services[0];
    assert_eq!(st.live.stats.counters().conns, 1);
    // SYN_RECV counts in ActiveConn (`tcp_state_active_table`).
    assert_eq!((st.dests[0].active(), st.dests[0].inactive()), (1, 0));
}

#[test]
fn direct_routing_v6() {
    let lb = Lb::one("fd01::1", ForwardMethod::Route);
    let input = tcp6("fd09::5", 40000, "fd00::1", 80, Flags::Syn, b"");
    let (v, out) = lb.run(&input, 0);
    assert_eq!(v, forwarded_to("fd01::1", 80));
    assert_eq!(out[ETH_LEN + 7], 63, "hop limit decremented");
    assert_eq!(&out[0..6], &rs_mac(1));
    assert_eq!(&out[ETH_LEN + 8..], &input[ETH_LEN + 8..]);
}

#[test]
fn nat_v4_tcp_both_directions_and_states() {
    let lb = nat_lb();
    let (v, out) = lb.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        0,
    );
    assert_eq!(v, forwarded_to("192.168.1.2", 8080));
    let p = parse(&out).unwrap();
    assert_eq!(
        (p.saddr, p.sport, p.daddr, p.dport),
        (ip("10.9.0.5"), 40000, ip("192.168.1.2"), 8080)
    );
    assert_checksums(&out);

    // The reply from the real server goes back to the client from the VIP, via the gateway.
    let reply = tcp4(
        "192.168.1.2",
        8080,
        "10.9.0.5",
        40000,
        Flags::SynAck,
        64,
        b"",
    );
    let (v, out) = lb.run(&reply, 10);
    assert_eq!(v, REPLY_TO_CLIENT);
    let p = parse(&out).unwrap();
    assert_eq!(
        (p.saddr, p.sport, p.daddr, p.dport),
        (ip("10.0.0.1"), 80, ip("10.9.0.5"), 40000)
    );
    assert_eq!(&out[0..6], &GW_MAC);
    assert_checksums(&out);

    let d = &lb.tables.services[0].dests[0];
    assert_eq!((d.active(), d.inactive()), (1, 0), "SYN_RECV is active");
    let (v, _) = lb.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Ack, 64, b"hello"),
        20,
    );
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!((d.active(), d.inactive()), (1, 0), "ESTABLISHED is active");
    let c = lb.tables.services[0].live.stats.counters();
    assert_eq!((c.conns, c.inpkts, c.outpkts), (1, 2, 1));
    lb.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Fin, 64, b""),
        30,
    );
    assert_eq!((d.active(), d.inactive()), (0, 1));
}

#[test]
fn nat_v6_udp_both_directions() {
    let lb = Lb::new(
        udp_key("fd00::1", 53),
        "rr",
        &[dest("fd01::3", 5353, ForwardMethod::Masq)],
    );
    let (v, out) = lb.run(&udp6("fd09::5", 5000, "fd00::1", 53, b"query"), 0);
    assert_eq!(v, forwarded_to("fd01::3", 5353));
    let p = parse(&out).unwrap();
    assert_eq!((p.daddr, p.dport), (ip("fd01::3"), 5353));
    assert_checksums(&out);
    let (v, out) = lb.run(&udp6("fd01::3", 5353, "fd09::5", 5000, b"answer"), 5);
    assert_eq!(v, REPLY_TO_CLIENT);
    let p = parse(&out).unwrap();
    assert_eq!((p.saddr, p.sport), (ip("fd00::1"), 53));
    assert_checksums(&out);
}

#[test]
fn nat_v4_udp_zero_checksum_stays_zero() {
    let lb = Lb::new(
        udp_key("10.0.0.1", 53),
        "rr",
        &[dest("192.168.1.1", 53, ForwardMethod::Masq)],
    );
    let mut input = udp4("10.9.0.5", 5000, "10.0.0.1", 53, b"query");
    let l4 = ETH_LEN + 20;
    input[l4 + 6] = 0;
    input[l4 + 7] = 0;
    let (_, out) = lb.run(&input, 0);
    assert_eq!(&out[l4 + 6..l4 + 8], &[0, 0]);
    assert_checksums(&out);
}

#[test]
fn tunnel_v4_in_v4_outer_header() {
    let lb = Lb::one("192.168.1.3", ForwardMethod::Tunnel);
    let input = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let (v, out) = lb.run(&input, 0);
    assert_eq!(v, forwarded_to("192.168.1.3", 80));
    assert_eq!(out.len(), input.len() + 20);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let o = &out[ETH_LEN..ETH_LEN + 20];
    assert_eq!(o[0], 0x45);
    assert_eq!(
        u16::from_be_bytes([o[2], o[3]]) as usize,
        input.len() - ETH_LEN + 20
    );
    assert_eq!(o[9], 4, "IPIP");
    assert_eq!(o[8], 63, "outer TTL = inner TTL after decrement");
    assert_eq!(&o[12..16], &[10, 0, 0, 254]);
    assert_eq!(&o[16..20], &[192, 168, 1, 3]);
    assert_eq!(
        o[6] & 0x40,
        input[ETH_LEN + 6] & 0x40,
        "DF copied from the inner header"
    );
    assert_eq!(checksum(o), 0);
    // The inner packet is the original with TTL − 1.
    let inner = &out[ETH_LEN + 20..];
    assert_eq!(inner[8], 63);
    assert_eq!(&inner[12..], &input[ETH_LEN + 12..]);
    assert_eq!(checksum(&inner[..20]), 0);
}

#[test]
fn tunnel_v6_in_v6_and_mixed() {
    let lb = Lb::one("fd01::2", ForwardMethod::Tunnel);
    let input = tcp6("fd09::5", 40000, "fd00::1", 80, Flags::Syn, b"");
    let (_, out) = lb.run(&input, 0);
    assert_eq!(out.len(), input.len() + 40);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let o = &out[ETH_LEN..ETH_LEN + 40];
    assert_eq!(o[6], 41, "IPv6-in-IPv6");
    assert_eq!(o[7], 63);
    assert_eq!(&o[8..24], &octets6("fd00::fe"));
    assert_eq!(&o[24..40], &octets6("fd01::2"));
    assert_eq!(
        u16::from_be_bytes([o[4], o[5]]) as usize,
        input.len() - ETH_LEN
    );

    // IPv4 service, IPv6 real server: IPv4-in-IPv6.
    let lb = Lb::new(
        tcp_key("10.0.0.1", 80),
        "rr",
        &[dest("fd01::2", 80, ForwardMethod::Tunnel)],
    );
    let input = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let (v, out) = lb.run(&input, 0);
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!(out[ETH_LEN + 6], 4, "next header IPIP");
    assert_eq!(out.len(), input.len() + 40);
}

#[test]
fn tunnel_gue_and_gre() {
    let mut gue = dest("192.168.1.3", 80, ForwardMethod::Tunnel);
    gue.tunnel = TunnelConfig {
        kind: TunnelType::Gue,
        port: 6080,
        csum: crate::types::TunnelCsum::Csum,
    };
    let lb = Lb::new(tcp_key("10.0.0.1", 80), "rr", &[gue]);
    let input = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let (_, out) = lb.run(&input, 0);
    assert_eq!(out.len(), input.len() + 20 + 8 + 4);
    assert_eq!(out[ETH_LEN + 9], 17);
    let udp = ETH_LEN + 20;
    assert_eq!(u16::from_be_bytes([out[udp + 2], out[udp + 3]]), 6080);
    assert_eq!(out[udp + 9], 4, "GUE proto field = IPIP");
    assert_eq!(
        l4_checksum(&ip("10.0.0.254"), &ip("192.168.1.3"), 17, &out[udp..]),
        0
    );

    // --tun-remcsum: mainline adds the remote checksum option only to a packet whose checksum is
    // left to offload (CHECKSUM_PARTIAL), which a forwarded packet's never is, and checksums the
    // outer UDP (`ip_vs_tunnel_xmit`, `ipvs_gue_encap`): the same bytes as --tun-csum.
    let mut rem = gue;
    rem.tunnel.csum = crate::types::TunnelCsum::RemCsum;
    let (_, with_csum) = lb.run(&input, 0);
    let lb = Lb::new(tcp_key("10.0.0.1", 80), "rr", &[rem]);
    let (_, out) = lb.run(&input, 0);
    assert_eq!(out, with_csum);
    assert_eq!(out[udp + 8], 0, "GUE version 0, no option");

    let mut gre = dest("192.168.1.3", 80, ForwardMethod::Tunnel);
    gre.tunnel = TunnelConfig {
        kind: TunnelType::Gre,
        port: 0,
        csum: crate::types::TunnelCsum::NoCsum,
    };
    let lb = Lb::new(tcp_key("10.0.0.1", 80), "rr", &[gre]);
    let (_, out) = lb.run(&input, 0);
    assert_eq!(out.len(), input.len() + 24);
    assert_eq!(out[ETH_LEN + 9], 47);
    assert_eq!(&out[ETH_LEN + 20..ETH_LEN + 24], &[0, 0, 0x08, 0x00]);
}

#[test]
fn non_syn_without_connection_is_dropped_and_counted() {
    let lb = Lb::one("192.168.1.1", ForwardMethod::Route);
    let (v, _) = lb.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Ack, 64, b"x"),
        0,
    );
    assert_eq!(v, Verdict::Drop(DropReason::NonSynNoConn));
    assert_eq!(lb.engine.counters.drops(DropReason::NonSynNoConn), 1);
}

#[test]
fn sloppy_tcp_schedules_mid_stream_packets() {
    let mut lb = Lb::new(
        tcp_key("10.0.0.1", 80),
        "sh",
        &[
            dest("192.168.1.1", 80, ForwardMethod::Route),
            dest("192.168.1.2", 80, ForwardMethod::Route),
        ],
    );
    let mut s = lb.dir.settings();
    s.sloppy_tcp = true;
    lb.dir.set_settings(s);
    lb.republish();
    // Never a RST, sloppy or not (`tcp_conn_schedule`).
    let mut rst = tcp4("10.9.0.5", 40001, "10.0.0.1", 80, Flags::Ack, 64, b"");
    rst[ETH_LEN + 20 + 13] |= 0x04;
    let (v, _) = lb.run(&rst, 0);
    assert_eq!(v, Verdict::Drop(DropReason::NonSynNoConn));
    let pkt = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Ack, 64, b"x");
    let (v1, _) = lb.run(&pkt, 0);
    // A restarted balancer (fresh table) with sh sends the flow to the same server.
    let lb2 = Lb {
        engine: Engine::new(100, 9),
        ..lb
    };
    let (v2, _) = lb2.run(&pkt, 0);
    assert!(matches!(v1, Verdict::Forward { .. }));
    assert_eq!(v1, v2);
}

#[test]
fn no_destination_answers_port_unreachable() {
    let lb = Lb::new(tcp_key("10.0.0.1", 80), "rr", &[]);
    let input = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let (v, out) = lb.run(&input, 0);
    assert_eq!(v, Verdict::Reply(IcmpError::PortUnreachable));
    let p = parse(&out).unwrap();
    assert_eq!(
        (p.saddr, p.daddr, p.proto, p.icmp),
        (ip("10.0.0.1"), ip("10.9.0.5"), 1, Some((3, 3)))
    );
    assert_eq!(&out[0..6], &CLIENT_MAC);
    // The quoted original IP header follows the ICMP header.
    assert_eq!(
        &out[ETH_LEN + 28..ETH_LEN + 48],
        &input[ETH_LEN..ETH_LEN + 20]
    );
    assert_checksums(&out);

    let lb6 = Lb::new(tcp_key("fd00::1", 80), "rr", &[]);
    let (v, out) = lb6.run(&tcp6("fd09::5", 40000, "fd00::1", 80, Flags::Syn, b""), 0);
    assert_eq!(v, Verdict::Reply(IcmpError::PortUnreachable));
    let p = parse(&out).unwrap();
    assert_eq!(p.icmp, Some((1, 4)));
    assert_checksums(&out);
}

#[test]
fn ttl_exhausted_gets_time_exceeded() {
    let lb = Lb::one("192.168.1.1", ForwardMethod::Route);
    let (v, out) = lb.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 1, b""),
        0,
    );
    assert_eq!(v, Verdict::Reply(IcmpError::TimeExceeded));
    assert_eq!(parse(&out).unwrap().icmp, Some((11, 0)));
    assert_checksums(&out);
}

#[test]
fn too_big_with_df_gets_frag_needed_with_tunnel_mtu() {
    let lb = Lb::one("192.168.1.3", ForwardMethod::Tunnel);
    let payload = vec![7u8; 1500 - 40];
    let input = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, &payload);
    assert_eq!(input[ETH_LEN + 6] & 0x40, 0x40, "builder sets DF");
    let (v, out) = lb.run(&input, 0);
    assert_eq!(v, Verdict::Reply(IcmpError::TooBig(1480)));
    let p = parse(&out).unwrap();
    assert_eq!(p.icmp, Some((3, 4)));
    assert_eq!(u16::from_be_bytes([out[p.l4 + 6], out[p.l4 + 7]]), 1480);
    assert_eq!(p.ip_len, 576, "quotes up to 576 bytes in all");
    assert_checksums(&out);
}

/// An ICMPv4 destination-unreachable error (`why`) from `src` to `dst`, sent by `from`'s MAC,
/// quoting the IP packet of the frame `quoted`.
fn icmp4_unreachable(
    from: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    why: etherparse::icmpv4::DestUnreachableHeader,
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(from, LB_MAC)
        .ipv4(src, dst, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(why))
        .write(&mut icmp, &quoted[ETH_LEN..])
        .unwrap();
    icmp
}

/// A NAT balancer with the connection 10.9.0.5:40000 → VIP:80, and a frag-needed error from a
/// router near the client about the VIP's reply (quoted VIP:80 → client), addressed to `dst`.
fn nat_lb_and_frag_needed(dst: [u8; 4]) -> (Lb, Vec<u8>) {
    let lb = nat_lb();
    lb.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        0,
    );
    let quoted = tcp4("10.0.0.1", 80, "10.9.0.5", 40000, Flags::Ack, 64, b"");
    let why = etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 };
    (
        lb,
        icmp4_unreachable(GW_MAC, [10, 8, 0, 1], dst, why, &quoted),
    )
}

#[test]
fn icmp_from_outside_reaches_nat_real_server_rewritten() {
    let (lb, icmp) = nat_lb_and_frag_needed([10, 0, 0, 1]);
    let (v, out) = lb.run(&icmp, 5);
    assert_eq!(v, forwarded_to("192.168.1.2", 8080));
    let p = parse(&out).unwrap();
    assert_eq!(p.daddr, ip("192.168.1.2"));
    let q = crate::wire::parse_quoted(&out, &p).unwrap();
    assert_eq!(
        (q.saddr, q.sport, q.daddr, q.dport),
        (ip("192.168.1.2"), 8080, ip("10.9.0.5"), 40000)
    );
    assert_checksums(&out);
    assert_eq!(checksum(&out[q.ip..q.l4]), 0, "quoted IP header checksum");
}

#[test]
fn icmp_errors_addressed_to_another_address_are_not_relayed() {
    // The same quoted packet, but the error is addressed to the balancer's own address: not
    // an error about a packet of this connection.
    let (lb, icmp) = nat_lb_and_frag_needed([10, 0, 0, 254]);
    let (v, out) = lb.run(&icmp, 5);
    assert_eq!(v, Verdict::Pass);
    assert_eq!(out, icmp);
}

#[test]
fn arp_and_foreign_traffic_pass() {
    let lb = Lb::one("192.168.1.1", ForwardMethod::Route);
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(lb.run(&arp, 0).0, Verdict::Pass);
    assert_eq!(
        lb.run(
            &tcp4("10.9.0.5", 40000, "10.0.0.2", 22, Flags::Syn, 64, b""),
            0
        )
        .0,
        Verdict::Pass
    );
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([10, 9, 0, 5], [10, 0, 0, 1], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    assert_eq!(
        lb.run(&echo, 0).0,
        Verdict::Pass,
        "echo requests to the VIP are the kernel's"
    );
}

#[test]
fn persistence_keeps_a_client_on_one_server() {
    let mut cfg = ServiceConfig::new(tcp_key("10.0.0.1", 80));
    cfg.scheduler = "rr".into();
    cfg.flags = crate::service::SVC_F_PERSISTENT;
    cfg.timeout = 300;
    cfg.netmask = crate::types::Netmask::V4("255.255.255.0".parse().unwrap());
    let lb = Lb::with(cfg, &three_reals(80), 1000);
    let real = |src: &str, port: u16| match lb
        .run(&tcp4(src, port, "10.0.0.1", 80, Flags::Syn, 64, b""), 0)
        .0
    {
        Verdict::Forward { real, .. } => real.unwrap().0,
        v => panic!("{v:?}"),
    };
    let first = real("10.9.0.5", 1000);
    assert_eq!(real("10.9.0.5", 1001), first);
    assert_eq!(real("10.9.0.77", 1002), first, "same /24");
    assert_ne!(
        real("10.9.1.5", 1003),
        first,
        "another /24 is scheduled (rr moves on)"
    );
    assert_eq!(lb.sum(|d| d.persist()), 2);
}

#[test]
fn quiesced_server_keeps_existing_connections() {
    let mut lb = Lb::new(
        tcp_key("10.0.0.1", 80),
        "rr",
        &[
            dest("192.168.1.1", 80, ForwardMethod::Route),
            dest("192.168.1.2", 80, ForwardMethod::Route),
        ],
    );
    let (v, _) = lb.run(
        &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        0,
    );
    let Verdict::Forward {
        real: Some((first, _)),
        ..
    } = v
    else {
        panic!()
    };
    let mut c = DestConfig::new(first, 80);
    c.weight = 0;
    lb.dir.edit_dest(&tcp_key("10.0.0.1", 80), c).unwrap();
    lb.republish();
    assert_eq!(
        lb.run(
            &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Ack, 64, b"x"),
            1
        )
        .0,
        Verdict::Forward {
            ifindex: 7,
            real: Some((first, 80))
        }
    );
    for port in 2000..2010 {
        let (v, _) = lb.run(
            &tcp4("10.9.0.5", port, "10.0.0.1", 80, Flags::Syn, 64, b""),
            1,
        );
        assert!(matches!(v, Verdict::Forward { real: Some((r, _)), .. } if r != first));
    }
    // Deleting the server: its connections' packets are dropped (expire_nodest_conn = 0).
    lb.dir
        .del_dest(&tcp_key("10.0.0.1", 80), first, 80)
        .unwrap();
    lb.republish();
    assert_eq!(
        lb.run(
            &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Ack, 64, b"x"),
            2
        )
        .0,
        Verdict::Drop(DropReason::DestUnavailable)
    );
}

#[test]
fn syn_on_time_wait_reschedules() {
    let lb = Lb::new(
        tcp_key("10.0.0.1", 80),
        "rr",
        &[
            dest("192.168.1.1", 80, ForwardMethod::Route),
            dest("192.168.1.2", 80, ForwardMethod::Route),
        ],
    );
    let syn = tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let first = lb.run(&syn, 0).0;
    // In-only FIN from SYN_RECV → TIME_WAIT (an RST would leave SYN_RECV as it is).
    lb.run(
        &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Fin, 64, b""),
        1,
    );
    let again = lb.run(&syn, 2).0;
    assert_ne!(first, again, "rescheduled to the next rr destination");
    assert_eq!(lb.tables.services[0].live.stats.counters().conns, 2);
}

#[test]
fn one_packet_scheduling_schedules_every_datagram() {
    let mut cfg = ServiceConfig::new(udp_key("10.0.0.1", 53));
    cfg.scheduler = "rr".into();
    cfg.flags = crate::service::SVC_F_ONEPACKET;
    let lb = Lb::with(cfg, &three_reals(53)[..2], 100);
    let pkt = udp4("10.9.0.5", 5000, "10.0.0.1", 53, b"q");
    let a = lb.run(&pkt, 0).0;
    let b = lb.run(&pkt, 1).0;
    assert_ne!(a, b);
    assert!(lb.engine.conns.is_empty());
    assert_eq!(lb.sum(|d| d.inactive()), 0);
}

#[test]
fn fragments_and_malformed_frames_are_counted() {
    let lb = Lb::one("192.168.1.1", ForwardMethod::Route);
    let mut frag = tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    frag[ETH_LEN + 6] = 0x20; // MF
    assert_eq!(lb.run(&frag, 0).0, Verdict::Drop(DropReason::Fragment));
    let good = tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    assert_eq!(
        lb.run(&good[..40], 0).0,
        Verdict::Drop(DropReason::Malformed)
    );
    assert_eq!(lb.engine.counters.drops(DropReason::Fragment), 1);
    assert_eq!(lb.engine.counters.drops(DropReason::Malformed), 1);
}

fn nat_lb() -> Lb {
    Lb::new(
        tcp_key("10.0.0.1", 80),
        "rr",
        &[dest("192.168.1.2", 8080, ForwardMethod::Masq)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), tweak in any::<bool>()) {
        let lb = nat_lb();
        let mut f = bytes.clone();
        if tweak && f.len() > 14 {
            // Make it look like IPv4 or IPv6 more often.
            f[12] = if f[13] & 1 == 0 { 0x08 } else { 0x86 };
            f[13] = if f[12] == 0x08 { 0x00 } else { 0xdd };
            f[14] = if f[12] == 0x08 { 0x45 } else { 0x60 };
        }
        let _ = lb.run(&f, 0);
    }

    #[test]
    fn nat_in_then_out_restores_addresses(sport in 1024u16..65535, a in 1u8..250, b in 1u8..250, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let lb = nat_lb();
        let client = format!("10.{a}.{b}.9");
        let syn = tcp4(&client, sport, "10.0.0.1", 80, Flags::Syn, 64, &payload);
        let (_, fwd) = lb.run(&syn, 0);
        assert_checksums(&fwd);
        // The server answers by swapping addresses and ports of what it received.
        let p = parse(&fwd).unwrap();
        let reply = tcp4("192.168.1.2", p.dport, &client, p.sport, Flags::SynAck, 64, &payload);
        let (_, back) = lb.run(&reply, 1);
        assert_checksums(&back);
        let q = parse(&back).unwrap();
        prop_assert_eq!((q.saddr, q.sport, q.daddr, q.dport), (ip("10.0.0.1"), 80, ip(&client), sport));
        let t = TcpHeaderSlice::from_slice(&back[q.l4..]).unwrap();
        prop_assert!(t.syn() && t.ack());
    }
}

#[test]
fn fwmark_service_matches_marked_frames() {
    let key = ServiceKey::Fwmark {
        af: crate::types::Af::V4,
        mark: 7,
    };
    let lb = Lb::new(key, "rr", &[dest("192.168.1.1", 0, ForwardMethod::Route)]);
    let syn = tcp4("10.9.0.5", 1000, "10.0.0.9", 443, Flags::Syn, 64, b"");
    assert_eq!(lb.run(&syn, 0).0, Verdict::Pass, "no mark: not ours");
    let mut buf = vec![0u8; HEADROOM + syn.len()];
    buf[HEADROOM..].copy_from_slice(&syn);
    let mut f = Frame::new(&mut buf, HEADROOM, syn.len()).with_mark(7);
    let v = lb
        .engine
        .process_frame(&lb.tables, &lb.routes, &mut f, Time(0));
    assert_eq!(
        v,
        forwarded_to("192.168.1.1", 443),
        "dest port 0 keeps the packet's port"
    );
}

#[test]
fn engine_is_shared_by_worker_threads() {
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<Engine>();
    assert_sync::<Tables>();
    let lb = nat_lb();
    let ranges = [2000..2250u16, 2250..2500u16];
    // Two workers receive requests at the same time; then each receives the replies of the
    // other's connections (a reply arriving on another queue than its request).
    std::thread::scope(|s| {
        for r in ranges.clone() {
            let lb = &lb;
            s.spawn(move || {
                for port in r {
                    let (v, _) = lb.run(
                        &tcp4("10.9.0.5", port, "10.0.0.1", 80, Flags::Syn, 64, b""),
                        0,
                    );
                    assert!(matches!(v, Verdict::Forward { .. }));
                }
            });
        }
    });
    std::thread::scope(|s| {
        for r in ranges.iter().rev().cloned() {
            let lb = &lb;
            s.spawn(move || {
                for port in r {
                    let (v, _) = lb.run(
                        &tcp4(
                            "192.168.1.2",
                            8080,
                            "10.9.0.5",
                            port,
                            Flags::SynAck,
                            64,
                            b"",
                        ),
                        1,
                    );
                    assert_eq!(v, REPLY_TO_CLIENT);
                }
            });
        }
    });
    assert_eq!(lb.tables.services[0].live.stats.counters().outpkts, 500);
}

#[test]
fn icmp_from_nat_real_server_reaches_client_rewritten() {
    let lb = nat_lb();
    lb.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        0,
    );
    // The real server reports port unreachable about the packet it received: client → RS:8080.
    let quoted = tcp4("10.9.0.5", 40000, "192.168.1.2", 8080, Flags::Ack, 63, b"");
    let port = etherparse::icmpv4::DestUnreachableHeader::Port;
    let icmp = icmp4_unreachable(
        rs_mac(2),
        [192, 168, 1, 2],
        [10, 9, 0, 5],
        port.clone(),
        &quoted,
    );
    let (v, out) = lb.run(&icmp, 5);
    assert_eq!(v, REPLY_TO_CLIENT);
    let p = parse(&out).unwrap();
    assert_eq!(
        (p.saddr, p.daddr),
        (ip("10.0.0.1"), ip("10.9.0.5")),
        "from the VIP to the client"
    );
    assert_eq!(&out[0..6], &GW_MAC);
    let q = crate::wire::parse_quoted(&out, &p).unwrap();
    assert_eq!(
        (q.saddr, q.sport, q.daddr, q.dport),
        (ip("10.9.0.5"), 40000, ip("10.0.0.1"), 80),
        "the quoted packet shows the VIP, as the client sent it"
    );
    assert_checksums(&out);
    assert_eq!(checksum(&out[q.ip..q.l4]), 0);
    // An ICMP error about no connection is not ours.
    let stray = tcp4("10.9.0.6", 1, "192.168.1.2", 8080, Flags::Ack, 63, b"");
    let icmp2 = icmp4_unreachable(rs_mac(2), [192, 168, 1, 2], [10, 9, 0, 6], port, &stray);
    assert_eq!(lb.run(&icmp2, 6).0, Verdict::Pass);
}

#[test]
fn nat_source_traffic_without_connection_is_the_kernels() {
    let lb = nat_lb();
    // The real server answers a client that reached it directly (not through the VIP).
    let reply = tcp4(
        "192.168.1.2",
        8080,
        "10.9.0.5",
        40000,
        Flags::SynAck,
        64,
        b"",
    );
    assert_eq!(lb.run(&reply, 0).0, Verdict::Pass);
}

/// `nat_icmp_send`: such a packet is answered with port unreachable to the real server and
/// dropped, except a TCP RST (`ip_vs_out_hook`).
#[test]
fn nat_icmp_send_answers_a_real_server_s_stray_packet() {
    let mut lb = nat_lb();
    let mut s = lb.dir.settings();
    s.nat_icmp_send = true;
    lb.dir.set_settings(s);
    lb.republish();
    let stray = tcp4("192.168.1.2", 8080, "10.9.0.5", 40000, Flags::Ack, 64, b"x");
    let (v, out) = lb.run(&stray, 0);
    assert_eq!(v, Verdict::Reply(IcmpError::PortUnreachable));
    let p = parse(&out).unwrap();
    assert_eq!((p.daddr, p.icmp), (ip("192.168.1.2"), Some((3, 3))));
    assert_checksums(&out);
    let mut rst = stray.clone();
    rst[ETH_LEN + 20 + 13] = 0x04;
    assert_eq!(lb.run(&rst, 0).0, Verdict::Pass);
}

/// Every forwarding method × family × protocol: the client's packet leaves for its real server
/// with valid checksums and the right addresses; for NAT the server's answer goes back from the
/// VIP.
#[test]
fn forwarding_matrix() {
    for v6 in [false, true] {
        for udp in [false, true] {
            for method in [
                ForwardMethod::Route,
                ForwardMethod::Tunnel,
                ForwardMethod::Masq,
            ] {
                let (vip, rs, client) = if v6 {
                    ("fd00::1", "fd01::2", "fd09::5")
                } else {
                    ("10.0.0.1", "192.168.1.2", "10.9.0.5")
                };
                let key = if udp {
                    udp_key(vip, 53)
                } else {
                    tcp_key(vip, 53)
                };
                let lb = Lb::new(key, "rr", &[dest(rs, 53, method)]);
                let input = match (v6, udp) {
                    (false, false) => tcp4(client, 4000, vip, 53, Flags::Syn, 64, b"q"),
                    (false, true) => udp4(client, 4000, vip, 53, b"q"),
                    (true, false) => tcp6(client, 4000, vip, 53, Flags::Syn, b"q"),
                    (true, true) => udp6(client, 4000, vip, 53, b"q"),
                };
                let what = format!("{method:?} v6={v6} udp={udp}");
                let (v, out) = lb.run(&input, 0);
                assert_eq!(v, forwarded_to(rs, 53), "{what}");
                assert_eq!(&out[0..6], &rs_mac(2), "{what}");
                let inner: Vec<u8> = if method == ForwardMethod::Tunnel {
                    let over = if rs.contains(':') { 40 } else { 20 };
                    [&out[..ETH_LEN], &out[ETH_LEN + over..]].concat()
                } else {
                    out.clone()
                };
                if method == ForwardMethod::Tunnel {
                    // Restore the inner Ethernet type for parsing the inner packet.
                    let mut inner = inner.clone();
                    inner[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
                    assert_checksums(&inner);
                    let p = parse(&inner).unwrap();
                    assert_eq!((p.saddr, p.daddr), (ip(client), ip(vip)), "{what}");
                    continue;
                }
                assert_checksums(&inner);
                let p = parse(&inner).unwrap();
                let want_dst = if method == ForwardMethod::Masq {
                    ip(rs)
                } else {
                    ip(vip)
                };
                assert_eq!(
                    (p.saddr, p.sport, p.daddr, p.dport),
                    (ip(client), 4000, want_dst, 53),
                    "{what}"
                );
                if method == ForwardMethod::Masq {
                    let reply = match (v6, udp) {
                        (false, false) => tcp4(rs, 53, client, 4000, Flags::SynAck, 64, b"a"),
                        (false, true) => udp4(rs, 53, client, 4000, b"a"),
                        (true, false) => tcp6(rs, 53, client, 4000, Flags::SynAck, b"a"),
                        (true, true) => udp6(rs, 53, client, 4000, b"a"),
                    };
                    let (v, back) = lb.run(&reply, 1);
                    assert_eq!(v, REPLY_TO_CLIENT, "{what}");
                    assert_checksums(&back);
                    let q = parse(&back).unwrap();
                    assert_eq!(
                        (q.saddr, q.sport, q.daddr, q.dport),
                        (ip(vip), 53, ip(client), 4000),
                        "{what}"
                    );
                }
            }
        }
    }
}

/// A prefetching batch is frame-by-frame processing with hints: for the same frames (new
/// connections, their packets, NAT replies, something that is not IP) it gives the same
/// verdicts and bytes, and once the table has entries it announces addresses to prefetch.
#[test]
fn prefetched_batches_match_frame_by_frame_processing() {
    let mk = || {
        Lb::new(
            tcp_key("10.0.0.1", 80),
            "rr",
            &[
                dest("192.168.10.1", 80, ForwardMethod::Masq),
                dest("192.168.10.2", 80, ForwardMethod::Masq),
            ],
        )
    };
    let (one, batched) = (mk(), mk());
    // Prefetch whatever the table's size (by default a table this small is not prefetched).
    batched.engine.set_prefetch_from(0);
    let client = |i: u16| format!("10.9.{}.{}", i / 200, i % 200 + 1);
    let syns: Vec<Vec<u8>> = (0..40)
        .map(|i| tcp4(&client(i), 1000 + i, "10.0.0.1", 80, Flags::Syn, 64, b""))
        .collect();
    let first: Vec<(Verdict, Vec<u8>)> = syns.iter().map(|f| one.run(f, 1000)).collect();
    let mut second: Vec<Vec<u8>> = (0..40)
        .map(|i| tcp4(&client(i), 1000 + i, "10.0.0.1", 80, Flags::Ack, 64, b"x"))
        .collect();
    for (i, (v, _)) in first.iter().enumerate() {
        let Verdict::Forward {
            real: Some((real, _)),
            ..
        } = v
        else {
            panic!("SYN {i}: {v:?}");
        };
        let real = real.to_string();
        let i = i as u16;
        second.push(tcp4(
            &real,
            80,
            &client(i),
            1000 + i,
            Flags::SynAck,
            64,
            b"",
        ));
    }
    second.push(vec![0xff; 60]);
    let expect: Vec<(Verdict, Vec<u8>)> = second.iter().map(|f| one.run(f, 1001)).collect();

    let announced = std::cell::RefCell::new(Vec::new());
    let worker = std::cell::RefCell::new(WorkerState::new());
    let run_on = |lb: &Lb, frames: &[Vec<u8>], now: u64| -> Vec<(Verdict, Vec<u8>)> {
        let mut bufs: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                let mut b = vec![0u8; HEADROOM + f.len() + 64];
                b[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
                b
            })
            .collect();
        let mut fs: Vec<Frame<'_>> = bufs
            .iter_mut()
            .zip(frames)
            .map(|(b, f)| Frame::new(b, HEADROOM, f.len()))
            .collect();
        let mut vs = vec![Verdict::Pass; fs.len()];
        lb.engine.process(
            &lb.tables,
            &lb.routes,
            &mut fs,
            Time(now),
            &mut vs,
            &mut worker.borrow_mut(),
            |a| announced.borrow_mut().push(a),
        );
        vs.into_iter()
            .zip(fs.iter())
            .map(|(v, f)| (v, f.data().to_vec()))
            .collect()
    };
    let run_batch = |frames: &[Vec<u8>], now: u64| run_on(&batched, frames, now);
    assert_eq!(run_batch(&syns, 1000), first);
    announced.borrow_mut().clear();
    assert_eq!(run_batch(&second, 1001), expect);
    // Three addresses per TCP frame of a shard with entries (the index's bucket, the candidate
    // entry's two cache lines): most of the 80.
    assert!(
        announced.borrow().len() >= 3 * 60,
        "{}",
        announced.borrow().len()
    );
    assert_eq!(one.engine.conns.len(), batched.engine.conns.len());
    // The same traffic counted, in the shared counters for one, in a worker's slot (when it got
    // one) for the other.
    assert_eq!(
        one.tables.totals.counters(),
        batched.tables.totals.counters()
    );
    let svc = |lb: &Lb| {
        let s = lb
            .tables
            .lookup(Protocol::Tcp, ip("10.0.0.1"), 80, 0)
            .unwrap();
        s.live.stats.counters()
    };
    assert_eq!(svc(&one), svc(&batched));
    assert_eq!(
        one.engine.counters.forwarded.load(Relaxed),
        batched.engine.counters.forwarded.load(Relaxed)
    );
    assert_eq!(one.engine.counters.forwarded.load(Relaxed), 120);
    // By default a table this small is processed without prefetching, with the same results.
    let small = mk();
    announced.borrow_mut().clear();
    assert_eq!(run_on(&small, &syns, 1000), first);
    assert_eq!(run_on(&small, &second, 1001), expect);
    assert!(announced.borrow().is_empty());
}

/// TCP 10.0.0.1:80, rr, one real server by direct routing.
fn dr_lb() -> Lb {
    Lb::one("192.168.1.1", ForwardMethod::Route)
}

/// [`dr_lb`] with a table of `capacity` entries (16 shards).
fn small_lb(capacity: usize) -> Lb {
    Lb {
        engine: Engine::new(capacity, 3),
        ..dr_lb()
    }
}

/// The n-th client address of a flood (spoofed sources).
fn flood_src(n: u32) -> String {
    format!("10.{}.{}.{}", 100 + (n >> 16), (n >> 8) as u8, n as u8)
}

#[test]
fn a_syn_flood_does_not_lock_clients_out_of_a_full_table() {
    let lb = small_lb(64);
    let cap = lb.engine.conns.capacity();
    for n in 0..cap as u32 * 5 {
        let (v, _) = lb.run(
            &tcp4(&flood_src(n), 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
            0,
        );
        assert!(matches!(v, Verdict::Forward { .. }), "flood SYN {n}: {v:?}");
    }
    assert_eq!(lb.engine.conns.len(), cap);
    let c = &lb.engine.conns.counters;
    assert_eq!(c.full.load(Relaxed), 0);
    assert_eq!(
        c.evicted[Eviction::Unestablished as usize].load(Relaxed),
        cap as u64 * 4
    );
    // A real client gets in during the flood, completes its handshake and stays.
    let syn = tcp4("10.9.0.2", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let ack = tcp4("10.9.0.2", 40000, "10.0.0.1", 80, Flags::Ack, 64, b"x");
    assert!(matches!(lb.run(&syn, 1).0, Verdict::Forward { .. }));
    assert!(matches!(lb.run(&ack, 2).0, Verdict::Forward { .. }));
    for n in 0..cap as u32 * 5 {
        lb.run(
            &tcp4(
                &flood_src(n + 1_000_000),
                1000,
                "10.0.0.1",
                80,
                Flags::Syn,
                64,
                b"",
            ),
            3,
        );
    }
    assert!(matches!(lb.run(&ack, 4).0, Verdict::Forward { .. }));
    assert_eq!(lb.engine.counters.drops(DropReason::NonSynNoConn), 0);
    let key = ConnKey {
        proto: 6,
        caddr: ip("10.9.0.2"),
        cport: 40000,
        vaddr: ip("10.0.0.1"),
        vport: 80,
    };
    let state = lb.engine.conns.with_conn(&key, Time(5), |c| c.state);
    assert_eq!(state, Some(TcpState::Established as u8));
}

#[test]
fn a_table_of_busy_established_connections_refuses_new_ones_uncounted() {
    let lb = small_lb(32);
    let cap = lb.engine.conns.capacity();
    // Fill the table with established connections (SYN then ACK), at t = 0 s.
    let mut n = 0u32;
    while lb.engine.conns.len() < cap {
        let src = flood_src(n);
        lb.run(&tcp4(&src, 1000, "10.0.0.1", 80, Flags::Syn, 64, b""), 0);
        lb.run(&tcp4(&src, 1000, "10.0.0.1", 80, Flags::Ack, 64, b""), 0);
        n += 1;
    }
    let before = lb.tables.services[0].live.stats.counters();
    let full_before = lb.engine.conns.counters.full.load(Relaxed);
    let (mut refused, mut admitted) = (0u64, 0u64);
    for m in 0..200u32 {
        let (v, _) = lb.run(
            &tcp4(
                &flood_src(m + 500_000),
                9,
                "10.0.0.1",
                80,
                Flags::Syn,
                64,
                b"",
            ),
            10_000,
        );
        match v {
            Verdict::Drop(DropReason::TableFull) => refused += 1,
            Verdict::Forward { .. } => admitted += 1,
            v => panic!("{v:?}"),
        }
    }
    let after = lb.tables.services[0].live.stats.counters();
    // Connections with a packet in the last 60 s never give way: every SYN is refused, and
    // none is counted.
    assert_eq!((refused, admitted), (200, 0));
    assert_eq!(after, before);
    assert_eq!(
        lb.engine.conns.counters.full.load(Relaxed) - full_before,
        refused
    );
    let mut established = 0;
    lb.engine
        .conns
        .for_each(|_, c| established += usize::from(c.state == TcpState::Established as u8));
    assert_eq!(established as u32, n.min(cap as u32));
    // A minute later the established connections are idle: they give way, the idlest first.
    let (v, _) = lb.run(
        &tcp4("10.9.0.9", 5, "10.0.0.1", 80, Flags::Syn, 64, b""),
        70_000,
    );
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    assert_eq!(
        lb.engine.conns.counters.evicted[Eviction::Idle as usize].load(Relaxed),
        1
    );
}

#[test]
fn a_udp_flood_evicts_the_idlest_datagram_flows() {
    let lb = Lb::new(
        udp_key("10.0.0.1", 53),
        "rr",
        &[dest("192.168.1.1", 53, ForwardMethod::Masq)],
    );
    let lb = Lb {
        engine: Engine::new(64, 5),
        ..lb
    };
    let cap = lb.engine.conns.capacity();
    for n in 0..cap as u32 * 3 {
        let (v, _) = lb.run(
            &udp4(&flood_src(n), 1000, "10.0.0.1", 53, b"q"),
            u64::from(n),
        );
        assert!(matches!(v, Verdict::Forward { .. }));
    }
    let c = &lb.engine.conns.counters;
    assert_eq!(
        c.evicted[Eviction::Datagram as usize].load(Relaxed),
        cap as u64 * 2
    );
    assert_eq!(
        lb.tables.services[0].live.stats.counters().conns,
        cap as u64 * 3
    );
}

#[test]
fn martian_sources_are_dropped_and_counted() {
    let lb = dr_lb();
    for src in [
        "0.1.2.3",
        "127.0.0.1",
        "224.0.0.5",
        "255.255.255.255",
        "10.0.0.1",
    ] {
        let (v, _) = lb.run(&tcp4(src, 1000, "10.0.0.1", 80, Flags::Syn, 64, b""), 0);
        assert_eq!(v, Verdict::Drop(DropReason::MartianSource), "{src}");
    }
    let lb6 = Lb::one("fd01::1", ForwardMethod::Route);
    for src in ["::1", "ff02::1", "::", "fd00::1"] {
        let (v, _) = lb6.run(&tcp6(src, 1000, "fd00::1", 80, Flags::Syn, b""), 0);
        assert_eq!(v, Verdict::Drop(DropReason::MartianSource), "{src}");
    }
    assert_eq!(lb.engine.counters.drops(DropReason::MartianSource), 5);
    assert!(lb.engine.conns.is_empty() && lb6.engine.conns.is_empty());
    assert_eq!(lb.tables.services[0].live.stats.counters().conns, 0);
}

#[test]
fn drop_packet_drops_one_new_connection_in_am_droprate() {
    let lb = dr_lb();
    lb.engine.set_defence("am_droprate", 3).unwrap();
    lb.engine.set_defence("drop_packet", 3).unwrap();
    let verdicts: Vec<bool> = (0..9u32)
        .map(|n| {
            let (v, _) = lb.run(
                &tcp4(&flood_src(n), 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
                0,
            );
            v == Verdict::Drop(DropReason::DefenceDropPacket)
        })
        .collect();
    // As the kernel's counter starts at 0, the first one goes, then one in three.
    assert_eq!(
        verdicts,
        [true, false, false, true, false, false, true, false, false]
    );
    assert_eq!(lb.engine.defence.counters.dropped_packets.load(Relaxed), 3);
    // Packets of existing connections are never dropped by it.
    let src = flood_src(1);
    for _ in 0..6 {
        let (v, _) = lb.run(&tcp4(&src, 1000, "10.0.0.1", 80, Flags::Ack, 64, b""), 1);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    }
}

#[test]
fn secure_tcp_holds_a_lone_syn_in_synack() {
    let lb = dr_lb();
    lb.engine.set_defence("secure_tcp", 3).unwrap();
    lb.run(
        &tcp4("10.9.0.2", 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        0,
    );
    let key = ConnKey {
        proto: 6,
        caddr: ip("10.9.0.2"),
        cport: 1000,
        vaddr: ip("10.0.0.1"),
        vport: 80,
    };
    let st = |lb: &Lb| {
        lb.engine
            .conns
            .with_conn(&key, Time(1), |c| (c.state, c.timeout))
    };
    assert_eq!(st(&lb), Some((TcpState::Synack as u8, 120)));
    lb.run(
        &tcp4("10.9.0.2", 1000, "10.0.0.1", 80, Flags::Ack, 64, b""),
        1,
    );
    assert_eq!(st(&lb).map(|s| s.0), Some(TcpState::Established as u8));
    lb.engine.set_defence("secure_tcp", 0).unwrap();
    lb.run(
        &tcp4("10.9.0.3", 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        2,
    );
    let key3 = ConnKey {
        caddr: ip("10.9.0.3"),
        ..key
    };
    let s3 = lb.engine.conns.with_conn(&key3, Time(3), |c| c.state);
    assert_eq!(s3, Some(TcpState::SynRecv as u8));
}

#[test]
fn drop_entry_removes_half_open_connections_and_keeps_busy_ones() {
    let lb = small_lb(4096);
    // 2,000 half-open connections and 200 established ones with recent packets.
    for n in 0..2000u32 {
        lb.run(
            &tcp4(&flood_src(n), 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
            0,
        );
    }
    for n in 0..200u32 {
        let src = format!("10.50.0.{}", n);
        lb.run(&tcp4(&src, 7, "10.0.0.1", 80, Flags::Syn, 64, b""), 0);
        lb.run(&tcp4(&src, 7, "10.0.0.1", 80, Flags::Ack, 64, b""), 0);
    }
    // Off by default: nothing dropped.
    assert_eq!(lb.engine.defence_tick(Time(1000)), 0);
    lb.engine.set_defence("drop_entry", 3).unwrap();
    let mut dropped = 0;
    for s in 0..200u64 {
        dropped += lb.engine.defence_tick(Time(1000 + s * 1000));
    }
    assert!(dropped > 1000, "{dropped} dropped");
    let mut established = 0;
    lb.engine
        .conns
        .for_each(|_, c| established += usize::from(c.state == TcpState::Established as u8));
    // Established connections refreshed less than 60 s before a pass are never dropped; after
    // that, one in k of those with k packets may be (2 here): some of the 200 may go.
    assert!(established > 0);
    assert_eq!(
        lb.engine.defence.counters.dropped_entries.load(Relaxed),
        dropped as u64
    );
}

/// `drop_entry` spares a handshake in flight: a half-open connection is dropped only once it
/// has been silent for 3 s (a real client's ACK comes within a round trip or a retransmission),
/// so a client whose SYN has just gone through still completes its connection.
#[test]
fn drop_entry_spares_a_handshake_in_flight() {
    let lb = small_lb(4096);
    lb.engine.set_defence("drop_entry", 3).unwrap();
    let syn = |src: &str, now: u64| {
        lb.run(&tcp4(src, 7, "10.0.0.1", 80, Flags::Syn, 64, b""), now)
            .0
    };
    let key = |src: &str| ConnKey {
        proto: 6,
        caddr: src.parse().unwrap(),
        cport: 7,
        vaddr: "10.0.0.1".parse().unwrap(),
        vport: 80,
    };
    // 2,000 busy established connections (a pass looks at a 32nd of the table: enough entries
    // for it to look at some), and 40 handshakes begun at 10 s: every pass within 3 s of their
    // SYN keeps them all (run until it has looked at every entry).
    for n in 0..2000u32 {
        let src = flood_src(n);
        syn(&src, 10_000);
        lb.run(&tcp4(&src, 7, "10.0.0.1", 80, Flags::Ack, 64, b""), 10_000);
    }
    let clients: Vec<String> = (0..40).map(|n| format!("10.50.0.{n}")).collect();
    for c in &clients {
        assert!(matches!(syn(c, 10_000), Verdict::Forward { .. }));
    }
    for t in 0..1000u64 {
        lb.engine.defence_tick(Time(10_000 + t * 2));
    }
    assert!(clients.iter().all(|c| lb
        .engine
        .conns
        .with_conn(&key(c), Time(12_999), |_| ())
        .is_some()));
    assert_eq!(lb.engine.defence.counters.dropped_entries.load(Relaxed), 0);
    // The client's ACK establishes each connection.
    for c in &clients[..20] {
        assert!(matches!(
            lb.run(&tcp4(c, 7, "10.0.0.1", 80, Flags::Ack, 64, b""), 12_999)
                .0,
            Verdict::Forward { .. }
        ));
    }
    // The handshakes never completed go once silent for 3 s; the established ones stay.
    for t in 0..1000u64 {
        lb.engine.defence_tick(Time(13_000 + t * 4));
    }
    let alive = |c: &String| {
        lb.engine
            .conns
            .with_conn(&key(c), Time(17_000), |_| ())
            .is_some()
    };
    assert!(clients[..20].iter().all(alive));
    assert!(!clients[20..].iter().any(alive));
    assert_eq!(lb.engine.defence.counters.dropped_entries.load(Relaxed), 20);
}

/// Half-open connections count in ActiveConn (`tcp_state_active_table`, mainline since 4.7):
/// nq and sed, which weigh active connections, send the next client to the other server while
/// the first client's handshake is incomplete (counted as inactive, it would go to the first
/// server again); closing moves the connection to InActConn.
#[test]
fn half_open_connections_are_active_for_the_schedulers() {
    for sched in ["nq", "sed"] {
        let lb = Lb::new(
            tcp_key("10.0.0.1", 80),
            sched,
            &[
                dest("192.168.1.1", 80, ForwardMethod::Route),
                dest("192.168.1.2", 80, ForwardMethod::Route),
            ],
        );
        let real = |v: Verdict| match v {
            Verdict::Forward { real, .. } => real.map(|r| r.0),
            v => panic!("{sched}: {v:?}"),
        };
        let first = real(
            lb.run(
                &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
                0,
            )
            .0,
        );
        let second = real(
            lb.run(
                &tcp4("10.9.0.6", 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
                1,
            )
            .0,
        );
        assert_ne!(first, second, "{sched}: the half-open connection is active");
        let d = |a: Option<IpAddr>| {
            lb.tables.services[0]
                .dests
                .iter()
                .find(|d| Some(d.addr) == a)
                .unwrap()
                .clone()
        };
        assert_eq!((d(first).active(), d(first).inactive()), (1, 0), "{sched}");
        // Established: still active; its FIN (direct routing: FIN_WAIT) makes it inactive.
        lb.run(
            &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Ack, 64, b""),
            2,
        );
        assert_eq!((d(first).active(), d(first).inactive()), (1, 0), "{sched}");
        lb.run(
            &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Fin, 64, b""),
            3,
        );
        assert_eq!((d(first).active(), d(first).inactive()), (0, 1), "{sched}");
    }
}

/// What a client does after its SYN: nothing more (the handshake stays incomplete), or the ACK
/// and then a FIN (closing: direct routing's FIN_WAIT, inactive).
#[derive(Clone, Copy)]
enum Then {
    Open,
    Close,
}

/// The real servers a service of `sched` over 192.168.1.1 (weight `w1`) and .2 (`w2`) picks for
/// clients that each send a SYN and then do `script[i]`, in turn.
fn picks(sched: &str, (w1, w2): (i32, i32), script: &[Then]) -> Vec<u8> {
    let mut a = dest("192.168.1.1", 80, ForwardMethod::Route);
    a.weight = w1;
    let mut b = dest("192.168.1.2", 80, ForwardMethod::Route);
    b.weight = w2;
    let lb = Lb::new(tcp_key("10.0.0.1", 80), sched, &[a, b]);
    let mut out = Vec::new();
    for (i, then) in script.iter().enumerate() {
        let src = format!("10.9.1.{}", i + 1);
        let t = 10 * i as u64;
        match lb
            .run(&tcp4(&src, 1000, "10.0.0.1", 80, Flags::Syn, 64, b""), t)
            .0
        {
            Verdict::Forward {
                real: Some((IpAddr::V4(r), _)),
                ..
            } => out.push(r.octets()[3]),
            v => panic!("{sched}: {v:?}"),
        }
        if let Then::Close = then {
            lb.run(
                &tcp4(&src, 1000, "10.0.0.1", 80, Flags::Ack, 64, b""),
                t + 1,
            );
            lb.run(
                &tcp4(&src, 1000, "10.0.0.1", 80, Flags::Fin, 64, b""),
                t + 2,
            );
        }
    }
    out
}

/// Pick sequences worked out from the kernel's lc, wlc and ovf with mainline's ActiveConn
/// (half-open connections active, closing ones inactive). With half-open connections counted
/// as inactive the last pick of lc/wlc would be the other server (3 inactive against 2), and
/// ovf would never leave server 1.
#[test]
fn pick_sequences_with_incomplete_and_closing_handshakes() {
    use Then::{Close, Open};
    // The kernel lists the newest destination first (`list_add`): ties go to server 2. It ends
    // with three closed connections (overhead 3), server 1 with one closed and one half-open
    // (256 + 1): the sixth client goes to server 2 again.
    let script = [Close, Close, Close, Open, Close, Open];
    for sched in ["lc", "wlc"] {
        let p = picks(sched, (1, 1), &script);
        assert_eq!(p, [2, 1, 2, 1, 2, 2], "{sched}");
    }
    // ovf: the heaviest server until its active connections exceed its weight (2).
    assert_eq!(
        picks("ovf", (2, 1), &[Open, Open, Open, Open]),
        [1, 1, 1, 2]
    );
    // Closed connections do not count against it.
    assert_eq!(
        picks("ovf", (2, 1), &[Close, Close, Close, Close]),
        [1, 1, 1, 1]
    );
}

/// The same for sed, nq, lblc and lblcr, worked out from mainline's `ip_vs_sed.c`,
/// `ip_vs_nq.c`, `ip_vs_lblc.c` and `ip_vs_lblcr.c` (v6.12) with half-open connections active.
/// Counted as inactive, each of these would send every client to server 2.
#[test]
fn sed_nq_lblc_lblcr_pick_sequences_with_incomplete_handshakes() {
    use Then::{Close, Open};
    // sed: (ActiveConn + 1) / weight, ties to the first listed; closed connections cost nothing,
    // the third client's half-open one does.
    assert_eq!(
        picks("sed", (1, 1), &[Close, Close, Open, Open]),
        [2, 2, 2, 1]
    );
    // nq: the first server with no active connection, else as sed.
    assert_eq!(picks("nq", (1, 1), &[Open, Open, Open, Open]), [2, 1, 2, 1]);
    // lblc: every client asks for the same VIP; its server is kept until it has more active
    // connections than its weight while another is under half its weight.
    assert_eq!(picks("lblc", (1, 1), &[Open, Open, Open]), [2, 2, 1]);
    // lblcr: the same, the overloaded server's set growing by the other, then the least loaded
    // of the set.
    assert_eq!(
        picks("lblcr", (1, 1), &[Open, Open, Open, Open]),
        [2, 2, 1, 1]
    );
}

/// The sync daemon in miniature: a master queues a connection's record at its third packet
/// (`sync_threshold` 3 50) and every 50 after; the records cross the wire format; a backup
/// with the same service enters them bound to the same real server, flagged SYNC, and
/// forwards the connection's next packet (an ACK, no SYN) to it, where without the record it
/// drops it.
#[test]
fn a_backup_forwards_a_synced_connection_to_the_same_real_server() {
    let mk = || {
        Lb::new(
            tcp_key("10.0.0.1", 80),
            "rr",
            &[
                dest("192.168.1.1", 80, ForwardMethod::Route),
                dest("192.168.1.2", 80, ForwardMethod::Route),
                dest("192.168.1.3", 80, ForwardMethod::Route),
            ],
        )
    };
    let (master, backup) = (mk(), mk());
    master.engine.sync.settings.master.store(true, Relaxed);
    let ack = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Ack, 64, b"x");
    // Advance the backup's round robin so that a fresh pick would differ.
    backup.run(&tcp4("10.9.0.7", 1, "10.0.0.1", 80, Flags::Syn, 64, b""), 0);
    let (v, _) = master.run(
        &tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        0,
    );
    let Verdict::Forward { real, .. } = v else {
        panic!("{v:?}")
    };
    // SYN_RECV is not sent; the client's ACK establishes (packet 2), packet 3 is sent.
    assert_eq!(master.engine.sync.queued(), 0);
    master.run(&ack, 1);
    assert_eq!(master.engine.sync.queued(), 0);
    master.run(&ack, 2);
    assert_eq!(master.engine.sync.queued(), 1);
    for i in 4..=52 {
        master.run(&ack, i);
    }
    assert_eq!(
        master.engine.sync.queued(),
        1,
        "packets 4 to 52 are not sent"
    );
    master.run(&ack, 53);
    assert_eq!(master.engine.sync.queued(), 2, "packet 53 is");

    // Without the record the backup drops the mid-stream ACK.
    assert_eq!(
        backup.run(&ack, 60).0,
        Verdict::Drop(DropReason::NonSynNoConn)
    );
    let mut w = crate::sync::MessageWriter::new(1, 0, 1472);
    while let Some(r) = master.engine.sync.pop() {
        assert!(w.push(&r));
    }
    let m = crate::sync::decode(w.bytes(), 0).unwrap();
    for r in &m.records {
        let r = r.unwrap();
        assert_eq!(r.state, TcpState::Established as u16);
        assert_eq!(r.timeout, 900);
        backup
            .engine
            .apply_sync(&backup.tables, &r, Time(61_000))
            .unwrap();
    }
    let (v, _) = backup.run(&ack, 62_000);
    assert_eq!(v, Verdict::Forward { ifindex: 7, real });
    let key = ConnKey {
        proto: 6,
        caddr: ip("10.9.0.5"),
        cport: 40000,
        vaddr: ip("10.0.0.1"),
        vport: 80,
    };
    let flags = backup
        .engine
        .conns
        .with_conn(&key, Time(62_000), |c| c.flags)
        .unwrap();
    assert_ne!(flags & crate::conn::CONN_F_SYNC, 0);
    // Counted as active on the backup's real server, as on the master's.
    assert_eq!(backup.sum(|d| d.active()), 2);
}

#[test]
fn received_records_update_replace_or_are_refused() {
    let lb = Lb::new(
        tcp_key("10.0.0.1", 80),
        "rr",
        &[
            dest("192.168.1.1", 80, ForwardMethod::Route),
            dest("192.168.1.2", 80, ForwardMethod::Route),
        ],
    );
    let rec = |daddr: &str, flags: u32, state: u16| crate::sync::SyncConn {
        proto: 6,
        flags,
        state,
        caddr: ip("10.9.0.5"),
        cport: 40000,
        vaddr: ip("10.0.0.1"),
        vport: 80,
        daddr: ip(daddr),
        dport: 80,
        fwmark: 0,
        timeout: 900,
        pe: None,
    };
    let key = ConnKey {
        proto: 6,
        caddr: ip("10.9.0.5"),
        cport: 40000,
        vaddr: ip("10.0.0.1"),
        vport: 80,
    };
    let dest_of = |now: u64| {
        lb.engine
            .conns
            .with_conn(&key, Time(now), |c| (c.dest.addr, c.state, c.is_inactive()))
    };
    let t = &lb.tables;
    let e = &lb.engine;
    // DR bits on the wire; the local method is what the entry takes.
    e.apply_sync(t, &rec("192.168.1.1", 3, 1), Time(0)).unwrap();
    assert_eq!(dest_of(1), Some((ip("192.168.1.1"), 1, false)));
    assert_eq!((lb.sum(|d| d.active()), lb.sum(|d| d.inactive())), (1, 0));
    // The same connection closing: INACTIVE moves the counters; state and timer follow.
    e.apply_sync(t, &rec("192.168.1.1", 3 | 0x100, 5), Time(1_000))
        .unwrap();
    assert_eq!(dest_of(1_001), Some((ip("192.168.1.1"), 5, true)));
    assert_eq!((lb.sum(|d| d.active()), lb.sum(|d| d.inactive())), (0, 1));
    // An inactive record for another real server is a stale expiry: ignored.
    e.apply_sync(t, &rec("192.168.1.2", 3 | 0x100, 5), Time(2_000))
        .unwrap();
    assert_eq!(dest_of(2_001).unwrap().0, ip("192.168.1.1"));
    // An active one replaces the entry.
    e.apply_sync(t, &rec("192.168.1.2", 3, 1), Time(3_000))
        .unwrap();
    assert_eq!(dest_of(3_001), Some((ip("192.168.1.2"), 1, false)));
    assert_eq!((lb.sum(|d| d.active()), lb.sum(|d| d.inactive())), (1, 0));
    // Unknown service or real server: refused, nothing entered.
    let mut other = rec("192.168.1.1", 3, 1);
    other.vport = 81;
    other.cport = 1;
    assert_eq!(
        e.apply_sync(t, &other, Time(4_000)),
        Err(crate::sync::ApplyError::NoService)
    );
    let mut stranger = rec("192.168.1.9", 3, 1);
    stranger.cport = 2;
    assert_eq!(
        e.apply_sync(t, &stranger, Time(4_000)),
        Err(crate::sync::ApplyError::NoDest)
    );
    assert_eq!(e.conns.len(), 1);
    // The synced entry expires after the record's timeout, like any other.
    assert_eq!(dest_of(3_000 + 900_000), None);
}

/// A restart's hand-over: the whole table (connections of both families, a template) through
/// `encode_table` and `load_table` into a fresh engine, which forwards the connections' next
/// packets to the same real servers; a damaged dump loses only what it damaged.
#[test]
fn a_table_dump_carries_every_entry_to_the_next_engine() {
    let mk = || {
        let mut lb = Lb::new(
            tcp_key("10.0.0.1", 80),
            "rr",
            &[
                dest("192.168.1.1", 80, ForwardMethod::Route),
                dest("192.168.1.2", 80, ForwardMethod::Route),
            ],
        );
        lb.dir
            .add_service(ServiceConfig::new(tcp_key("fd00::1", 80)))
            .unwrap();
        lb.dir
            .add_dest(
                &tcp_key("fd00::1", 80),
                dest("fd01::1", 80, ForwardMethod::Route),
            )
            .unwrap();
        lb.republish();
        lb
    };
    let (old, new) = (mk(), mk());
    let mut reals = Vec::new();
    for i in 0..300u16 {
        let (v, _) = old.run(
            &tcp4("10.9.0.5", 1000 + i, "10.0.0.1", 80, Flags::Syn, 64, b""),
            0,
        );
        let Verdict::Forward { real, .. } = v else {
            panic!("{v:?}")
        };
        reals.push(real);
    }
    old.run(&tcp6("fd09::5", 7, "fd00::1", 80, Flags::Syn, b""), 0);
    let mut bytes = Vec::new();
    crate::sync::encode_table(&old.engine, |m| bytes.extend_from_slice(m));
    let l = crate::sync::load_table(&new.engine, &new.tables, &bytes, Time(1_000));
    assert_eq!((l.applied, l.refused, l.bad_messages), (301, 0, 0));
    for (i, real) in reals.iter().enumerate() {
        let ack = tcp4(
            "10.9.0.5",
            1000 + i as u16,
            "10.0.0.1",
            80,
            Flags::Ack,
            64,
            b"x",
        );
        assert_eq!(
            new.run(&ack, 2_000).0,
            Verdict::Forward {
                ifindex: 7,
                real: *real
            }
        );
    }
    let ack6 = tcp6("fd09::5", 7, "fd00::1", 80, Flags::Ack, b"x");
    assert_eq!(new.run(&ack6, 2_000).0, forwarded_to("fd01::1", 80));
    // A dump cut short, and one with a damaged message: the rest still loads.
    let third = mk();
    let l = crate::sync::load_table(
        &third.engine,
        &third.tables,
        &bytes[..bytes.len() - 5],
        Time(0),
    );
    assert_eq!(l.bad_messages, 1);
    let mut bad = bytes.clone();
    bad[2] = 0xff; // the first message's reserved byte: not version 1, not a valid version 0
    let fourth = mk();
    let l = crate::sync::load_table(&fourth.engine, &fourth.tables, &bad, Time(0));
    assert!(l.bad_messages == 1 || l.refused > 0, "{l:?}");
}

/// `backup_only`: while the backup daemon runs, the node balances nothing (every packet goes
/// to the kernel); without the backup running it has no effect.
#[test]
fn backup_only_passes_everything_while_the_backup_runs() {
    let lb = Lb::one("192.168.1.1", ForwardMethod::Route);
    let syn = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let s = &lb.engine.sync.settings;
    s.backup_only.store(true, Relaxed);
    assert_eq!(lb.run(&syn, 0).0, forwarded_to("192.168.1.1", 80));
    s.backup.store(true, Relaxed);
    assert_eq!(lb.run(&syn, 1).0, Verdict::Pass);
    s.backup_only.store(false, Relaxed);
    assert_eq!(lb.run(&syn, 2).0, forwarded_to("192.168.1.1", 80));
}

/// A master's queue holds `sync_qlen_max` messages' worth of records; beyond, records are
/// dropped and counted, and the worker goes on.
#[test]
fn a_full_sync_queue_drops_and_counts() {
    let lb = Lb::one("192.168.1.1", ForwardMethod::Route);
    let sync = &lb.engine.sync;
    sync.settings.master.store(true, Relaxed);
    sync.set_limit(1, 2);
    sync.settings.period.store(0, Relaxed);
    sync.settings.threshold.store(2, Relaxed);
    // Threshold 2, no period: each connection is sent at its second packet, which
    // establishes it; five of them.
    for i in 0..5u16 {
        lb.run(
            &tcp4("10.9.0.5", 1000 + i, "10.0.0.1", 80, Flags::Syn, 64, b""),
            0,
        );
        lb.run(
            &tcp4("10.9.0.5", 1000 + i, "10.0.0.1", 80, Flags::Ack, 64, b""),
            1,
        );
    }
    assert_eq!(sync.queued(), 2);
    assert_eq!(sync.counters.queue_full.load(Relaxed), 3);
}

/// Persistence and fwmark through sync: a master's template is sent at each packet of the
/// connection it controls, and the backup enters it as a template of the same real server, so
/// a new connection of that client there goes to that server; a fwmark service's connection is
/// found by its mark.
#[test]
fn templates_and_fwmark_connections_cross_to_the_backup() {
    let key = tcp_key("10.0.0.1", 80);
    let mk = || {
        let mut dir = Director::new();
        let mut cfg = ServiceConfig::new(key);
        cfg.flags = crate::service::SVC_F_PERSISTENT;
        cfg.timeout = 300;
        dir.add_service(cfg).unwrap();
        for n in 1..=3 {
            dir.add_dest(
                &key,
                dest(&format!("192.168.1.{n}"), 80, ForwardMethod::Route),
            )
            .unwrap();
        }
        let mark = ServiceKey::Fwmark {
            af: crate::types::Af::V4,
            mark: 7,
        };
        dir.add_service(ServiceConfig::new(mark)).unwrap();
        dir.add_dest(&mark, dest("192.168.1.3", 0, ForwardMethod::Route))
            .unwrap();
        Lb {
            tables: dir.snapshot(),
            dir,
            engine: Engine::new(1000, 1),
            routes: routes(),
        }
    };
    let (master, backup) = (mk(), mk());
    master.engine.sync.settings.master.store(true, Relaxed);
    let (v, _) = master.run(
        &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Syn, 64, b""),
        0,
    );
    let Verdict::Forward { real, .. } = v else {
        panic!("{v:?}")
    };
    master.run(
        &tcp4("10.9.0.5", 1000, "10.0.0.1", 80, Flags::Ack, 64, b""),
        1,
    );
    // A marked connection of the fwmark service.
    let marked = tcp4("10.9.0.6", 2000, "10.0.0.9", 443, Flags::Syn, 64, b"");
    let run_marked = |lb: &Lb, frame: &[u8], now: u64| {
        let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut f = Frame::new(&mut buf, HEADROOM, frame.len()).with_mark(7);
        lb.engine
            .process_frame(&lb.tables, &lb.routes, &mut f, Time(now))
    };
    run_marked(&master, &marked, 0);
    let ack = tcp4("10.9.0.6", 2000, "10.0.0.9", 443, Flags::Ack, 64, b"");
    run_marked(&master, &ack, 1);
    run_marked(&master, &ack, 2);
    let mut records = Vec::new();
    while let Some(r) = master.engine.sync.pop() {
        records.push(r);
    }
    let tpl = records
        .iter()
        .find(|r| r.flags & 0x1000 != 0)
        .expect("the template is sent");
    assert_eq!((tpl.cport, tpl.vport), (0, 80));
    assert!(records.iter().any(|r| r.fwmark == 7 && r.vport == 443));
    for r in &records {
        backup
            .engine
            .apply_sync(&backup.tables, r, Time(3_000))
            .unwrap();
    }
    // Another connection of the same client lands on the template's server.
    let (v, _) = backup.run(
        &tcp4("10.9.0.5", 1001, "10.0.0.1", 80, Flags::Syn, 64, b""),
        4_000,
    );
    assert_eq!(v, Verdict::Forward { ifindex: 7, real });
    // The marked connection's next packet, without a SYN, is forwarded.
    assert_eq!(
        run_marked(&backup, &ack, 4_000),
        forwarded_to("192.168.1.3", 443)
    );
}

/// The XDP program's encapsulation (`fast_tunnel`), in Rust: the inner TTL and checksum, then
/// the outer header built from the inner one's fields and the tunnel's header.
fn fast_tunnel(o: &crate::offload::Offload, frame: &[u8]) -> Vec<u8> {
    let v6 = frame[12..14] == [0x86, 0xdd];
    let ip_len = if v6 {
        usize::from(u16::from_be_bytes([frame[ETH_LEN + 4], frame[ETH_LEN + 5]])) + 40
    } else {
        usize::from(u16::from_be_bytes([frame[ETH_LEN + 2], frame[ETH_LEN + 3]]))
    };
    let mut inner = frame[ETH_LEN..ETH_LEN + ip_len].to_vec();
    let (tos, ttl, df, id) = if v6 {
        inner[7] -= 1;
        ((inner[0] << 4) | (inner[1] >> 4), inner[7], true, [0, 0])
    } else {
        inner[8] -= 1;
        let c = u16::from_be_bytes([inner[10], inner[11]]);
        let mut s = u32::from(!c) + u32::from(o.ip_delta);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        inner[10..12].copy_from_slice(&(!(s as u16)).to_be_bytes());
        (
            inner[1],
            inner[8],
            inner[6] & 0x40 != 0,
            [inner[4], inner[5]],
        )
    };
    let t = (tos & !3) | if tos & 3 == 3 { 2 } else { tos & 3 };
    let proto = o.tunnel.proto;
    let tlen = usize::from(o.tunnel.len);
    let mut th = o.tunnel.bytes[..tlen].to_vec();
    if tlen == 12 {
        th[4..6].copy_from_slice(&((12 + ip_len) as u16).to_be_bytes());
    }
    let mut out = o.eth.to_vec();
    match (o.src, o.addr) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, t];
            h.extend_from_slice(&((ip_len + 20 + tlen) as u16).to_be_bytes());
            h.extend_from_slice(if df { &[0, 0] } else { &id });
            h.extend_from_slice(&[if df { 0x40 } else { 0 }, 0, ttl, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            out.extend_from_slice(&[0x60 | (t >> 4), (t & 0xf) << 4, 0, 0]);
            out.extend_from_slice(&((ip_len + tlen) as u16).to_be_bytes());
            out.extend_from_slice(&[proto, ttl]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed outer addresses"),
    }
    out.extend_from_slice(&th);
    out.extend_from_slice(&inner);
    out
}

/// The XDP program's fast path (`fast_path` in `bpf/xvs.bpf.c`) applied to `frame` by `o`,
/// in Rust: the MACs, the NAT side, the TTL, both checksums by the precomputed differences.
fn fast_apply(o: &crate::offload::Offload, frame: &mut Vec<u8>) {
    use crate::offload::FastOp;
    if o.op == FastOp::Tunnel {
        *frame = fast_tunnel(o, frame);
        return;
    }
    fn adjust(frame: &mut [u8], at: usize, delta: u16) {
        let c = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let mut s = u32::from(!c) + u32::from(delta);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        frame[at..at + 2].copy_from_slice(&(!(s as u16)).to_be_bytes());
    }
    let v6 = frame[12..14] == [0x86, 0xdd];
    let (src, dst, l4, alen) = if v6 {
        (ETH_LEN + 8, ETH_LEN + 24, ETH_LEN + 40, 16)
    } else {
        (
            ETH_LEN + 12,
            ETH_LEN + 16,
            ETH_LEN + usize::from(frame[ETH_LEN] & 0xf) * 4,
            4,
        )
    };
    let a = match o.addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    match o.op {
        FastOp::Route | FastOp::Tunnel => {}
        FastOp::Dnat => {
            frame[dst..dst + alen].copy_from_slice(&a);
            frame[l4 + 2..l4 + 4].copy_from_slice(&o.port.to_be_bytes());
        }
        FastOp::Snat => {
            frame[src..src + alen].copy_from_slice(&a);
            frame[l4..l4 + 2].copy_from_slice(&o.port.to_be_bytes());
        }
    }
    if v6 {
        frame[ETH_LEN + 7] -= 1;
    } else {
        frame[ETH_LEN + 8] -= 1;
        adjust(frame, ETH_LEN + 10, o.ip_delta);
    }
    if o.op != FastOp::Route {
        adjust(frame, l4 + 16, o.l4_delta);
    }
    frame[..12].copy_from_slice(&o.eth);
}

/// A TCP segment from `client`:40000 to `vip`:80 (IPv4 or IPv6 by the addresses).
fn client_segment(client: &str, vip: &str, flags: Flags, ttl: u8, payload: &[u8]) -> Vec<u8> {
    if client.contains(':') {
        let ip =
            PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv6(octets6(client), octets6(vip), ttl);
        tcp_on(ip, 40000, 80, flags, payload)
    } else {
        tcp4(client, 40000, vip, 80, flags, ttl, payload)
    }
}

/// Run `frame` as a batch of `w` and take the offloads it made.
fn offers(lb: &Lb, w: &mut WorkerState, frame: &[u8], now: u64) -> Vec<crate::offload::Offload> {
    lb.run_as(w, frame, now);
    w.take_offloads().collect()
}

/// A segment after an offload: the fast path's rewrite is, byte for byte, the slow path's.
fn same_as_slow_path(lb: &Lb, o: &crate::offload::Offload, seg: &[u8]) {
    let mut fast = seg.to_vec();
    fast_apply(o, &mut fast);
    let (v, slow) = lb.run(seg, 50);
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!(fast, slow);
    assert_eq!(bad_checksum(&fast), None);
}

#[test]
fn direct_routing_offloads_once_established_and_the_fast_rewrite_is_the_slow_one() {
    for (rs, client, vip) in [
        ("10.9.0.11", "10.9.0.5", "10.0.0.1"),
        ("fd09::11", "fd09::5", "fd00::1"),
    ] {
        let lb = Lb::one(rs, ForwardMethod::Route);
        lb.engine.set_offload(true);
        let mut w = WorkerState::new();
        let seg = |flags, ttl, payload: &[u8]| client_segment(client, vip, flags, ttl, payload);
        assert!(offers(&lb, &mut w, &seg(Flags::Syn, 64, b""), 0).is_empty());
        let o = offers(&lb, &mut w, &seg(Flags::Ack, 64, b""), 10);
        assert_eq!(o.len(), 1, "the segment that establishes it offers it");
        let o = &o[0];
        assert_eq!(o.op, crate::offload::FastOp::Route);
        assert_eq!(
            (o.saddr, o.daddr, o.sport, o.dport),
            (ip(client), ip(vip), 40000, 80)
        );
        assert_eq!(o.ifindex, 7);
        // Offered once: the next segments through xvsd offer nothing.
        assert!(offers(&lb, &mut w, &seg(Flags::Ack, 64, b"x"), 20).is_empty());
        for ttl in [2, 37, 64, 255] {
            same_as_slow_path(&lb, o, &seg(Flags::Ack, ttl, b"some data"));
        }
    }
}

#[test]
fn nat_offloads_both_directions_and_the_fast_rewrites_are_the_slow_ones() {
    use crate::offload::FastOp;
    for (rs, client, vip) in [
        ("192.168.1.2", "10.9.0.5", "10.0.0.1"),
        ("fd01::2", "fd09::5", "fd00::1"),
    ] {
        let v6 = rs.contains(':');
        let lb = Lb::new(
            tcp_key(vip, 80),
            "rr",
            &[dest(rs, 8080, ForwardMethod::Masq)],
        );
        lb.engine.set_offload(true);
        let mut w = WorkerState::new();
        let seg = |src: &str, sport, dst: &str, dport, flags, ttl, payload: &[u8]| {
            let e = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
            let ip = if v6 {
                e.ipv6(octets6(src), octets6(dst), ttl)
            } else {
                e.ipv4(octets4(src), octets4(dst), ttl)
            };
            tcp_on(ip, sport, dport, flags, payload)
        };
        let c2s = |flags, ttl, p: &[u8]| seg(client, 40000, vip, 80, flags, ttl, p);
        let s2c = |flags, ttl, p: &[u8]| seg(rs, 8080, client, 40000, flags, ttl, p);
        assert!(offers(&lb, &mut w, &c2s(Flags::Syn, 64, b""), 0).is_empty());
        assert!(offers(&lb, &mut w, &s2c(Flags::SynAck, 64, b""), 1).is_empty());
        let inn = offers(&lb, &mut w, &c2s(Flags::Ack, 64, b"GET"), 2);
        assert_eq!(inn.len(), 1);
        assert_eq!(inn[0].op, FastOp::Dnat);
        assert_eq!((inn[0].addr, inn[0].port), (ip(rs), 8080));
        let out = offers(&lb, &mut w, &s2c(Flags::Ack, 64, b"200 OK"), 3);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].op, FastOp::Snat);
        assert_eq!((out[0].addr, out[0].port), (ip(vip), 80));
        assert_eq!((out[0].saddr, out[0].sport), (ip(rs), 8080));
        for ttl in [2, 64, 200] {
            same_as_slow_path(&lb, &inn[0], &c2s(Flags::Ack, ttl, b"more request"));
            same_as_slow_path(&lb, &out[0], &s2c(Flags::Ack, ttl, b"more response"));
        }
    }
}

#[test]
fn what_is_never_offloaded() {
    // A FIN, UDP, tunnels, and a connection the sync backups do not know yet.
    let lb = nat_lb();
    lb.engine.set_offload(true);
    let mut w = WorkerState::new();
    let c2s = |flags, p: &[u8]| tcp4("10.9.0.5", 40000, "10.0.0.1", 80, flags, 64, p);
    let s2c = |flags| tcp4("192.168.1.2", 8080, "10.9.0.5", 40000, flags, 64, b"");
    offers(&lb, &mut w, &c2s(Flags::Syn, b""), 0);
    offers(&lb, &mut w, &s2c(Flags::SynAck), 1);
    assert!(
        offers(&lb, &mut w, &c2s(Flags::Fin, b""), 2).is_empty(),
        "FIN"
    );
    assert!(
        offers(&lb, &mut w, &c2s(Flags::Ack, b""), 3).is_empty(),
        "closing"
    );

    let lb = Lb::new(
        udp_key("10.0.0.1", 53),
        "rr",
        &[dest("192.168.1.2", 53, ForwardMethod::Masq)],
    );
    lb.engine.set_offload(true);
    for t in 0..3 {
        assert!(offers(
            &lb,
            &mut w,
            &udp4("10.9.0.5", 4000, "10.0.0.1", 53, b"q"),
            t
        )
        .is_empty());
    }

    let mut lb = Lb::one("10.9.0.11", ForwardMethod::Tunnel);
    let gue = DestConfig {
        tunnel: TunnelConfig {
            kind: TunnelType::Gue,
            port: 6080,
            csum: crate::types::TunnelCsum::Csum,
        },
        ..dest("10.9.0.11", 80, ForwardMethod::Tunnel)
    };
    lb.dir.edit_dest(&tcp_key("10.0.0.1", 80), gue).unwrap();
    lb.republish();
    lb.engine.set_offload(true);
    let syn = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Syn, 64, b"");
    let ack = tcp4("10.9.0.5", 40000, "10.0.0.1", 80, Flags::Ack, 64, b"");
    offers(&lb, &mut w, &syn, 0);
    assert!(
        offers(&lb, &mut w, &ack, 1).is_empty(),
        "GUE and GRE stay on the slow path"
    );

    // Sync master: offered only once the backups were sent the ESTABLISHED state (at the
    // threshold's third packet).
    let lb = Lb::one("10.9.0.11", ForwardMethod::Route);
    lb.engine.set_offload(true);
    lb.engine
        .sync
        .settings
        .master
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let seg = |flags| tcp4("10.9.0.5", 40000, "10.0.0.1", 80, flags, 64, b"");
    assert!(offers(&lb, &mut w, &seg(Flags::Syn), 0).is_empty());
    assert!(
        offers(&lb, &mut w, &seg(Flags::Ack), 1).is_empty(),
        "established, not synced"
    );
    assert_eq!(
        offers(&lb, &mut w, &seg(Flags::Ack), 2).len(),
        1,
        "synced at packet 3"
    );
}

#[test]
fn what_the_fast_path_forwarded_reaches_the_connection_and_the_statistics() {
    use crate::offload::FastCounts;
    let lb = Lb::one("10.9.0.11", ForwardMethod::Route);
    lb.engine.set_offload(true);
    let mut w = WorkerState::new();
    let seg = |flags| tcp4("10.9.0.5", 40000, "10.0.0.1", 80, flags, 64, b"");
    offers(&lb, &mut w, &seg(Flags::Syn), 0);
    let o = offers(&lb, &mut w, &seg(Flags::Ack), 1000).remove(0);
    let before = lb.tables.services[0].live.stats.counters();
    let n = FastCounts {
        packets: 1000,
        bytes: 1_500_000,
        last: Some(Time(600_000)),
    };
    assert!(lb.engine.offloaded(&lb.tables, &o, n, false, Time(600_500)));
    let after = lb.tables.services[0].live.stats.counters();
    assert_eq!(after.inpkts - before.inpkts, 1000);
    assert_eq!(after.inbytes - before.inbytes, 1_500_000);
    let c = lb
        .engine
        .conns
        .with_conn(&o.conn, Time(600_500), |c| c.clone())
        .unwrap();
    // Re-armed from the last segment: ESTABLISHED's 15 minutes from 600 s.
    assert_eq!(c.expires, Time(600_000).plus_secs(900));
    assert_eq!(u32::from(c.in_pkts), 2 + 1000);
    assert_ne!(c.flags & crate::conn::CONN_F_OFFLOAD_IN, 0);
    // Ended: the flag is cleared and the next segment through xvsd offers it again.
    assert!(lb
        .engine
        .offloaded(&lb.tables, &o, FastCounts::default(), true, Time(600_600)));
    assert_eq!(offers(&lb, &mut w, &seg(Flags::Ack), 600_700).len(), 1);
    // Gone: false.
    lb.engine.conns.remove(&o.conn);
    assert!(!lb.engine.offloaded(&lb.tables, &o, n, false, Time(600_800)));
}

#[test]
fn tunnels_offload_and_the_fast_encapsulation_is_the_slow_one() {
    let gue = TunnelConfig {
        kind: TunnelType::Gue,
        port: 6080,
        csum: crate::types::TunnelCsum::NoCsum,
    };
    let gre = TunnelConfig {
        kind: TunnelType::Gre,
        port: 0,
        csum: crate::types::TunnelCsum::NoCsum,
    };
    for (rs, client, vip, tunnel) in [
        ("10.9.0.11", "10.9.0.5", "10.0.0.1", None),
        ("fd09::11", "fd09::5", "fd00::1", None),
        ("10.9.0.11", "10.9.0.5", "10.0.0.1", Some(gue)),
        ("10.9.0.11", "10.9.0.5", "10.0.0.1", Some(gre)),
        ("fd09::11", "fd09::5", "fd00::1", Some(gre)),
    ] {
        let mut lb = Lb::one(rs, ForwardMethod::Tunnel);
        if let Some(t) = tunnel {
            let d = DestConfig {
                tunnel: t,
                ..dest(rs, 80, ForwardMethod::Tunnel)
            };
            lb.dir.edit_dest(&tcp_key(vip, 80), d).unwrap();
            lb.republish();
        }
        lb.engine.set_offload(true);
        let mut w = WorkerState::new();
        let seg = |flags, ttl, tos: u8, payload: &[u8]| {
            let mut v = client_segment(client, vip, flags, ttl, payload);
            if !rs.contains(':') && tos != 0 {
                // A TOS with ECN bits (3: CE), the IPv4 checksum made again.
                v[ETH_LEN + 1] = tos;
                v[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
                let c = checksum(&v[ETH_LEN..ETH_LEN + 20]);
                v[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
            }
            v
        };
        offers(&lb, &mut w, &seg(Flags::Syn, 64, 0, b""), 0);
        let o = offers(&lb, &mut w, &seg(Flags::Ack, 64, 0, b""), 1);
        assert_eq!(o.len(), 1);
        let o = &o[0];
        assert_eq!(o.op, crate::offload::FastOp::Tunnel);
        assert_eq!(o.addr, ip(rs));
        for (ttl, tos) in [(2, 0), (64, 0xb8), (200, 0x03)] {
            same_as_slow_path(&lb, o, &seg(Flags::Ack, ttl, tos, b"tunnelled data"));
        }
    }
}

// ---- SCTP ------------------------------------------------------------------------------------

fn sctp_key(vip: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        proto: Protocol::Sctp,
        addr: ip(vip),
        port,
    }
}

/// An IPv4 SCTP packet from `src` to `dst` with `chunks` (type, value), its CRC32c filled in.
fn sctp4(src: &str, sport: u16, dst: &str, dport: u16, chunks: &[(u8, &[u8])]) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    seg.extend_from_slice(&[0; 4]);
    for (t, v) in chunks {
        seg.extend_from_slice(&[*t, 0]);
        seg.extend_from_slice(&(4 + v.len() as u16).to_be_bytes());
        seg.extend_from_slice(v);
        seg.resize(seg.len().div_ceil(4) * 4, 0);
    }
    crate::wire::fill_sctp_checksum(&mut seg);
    let mut f = Vec::new();
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(20 + seg.len() as u16).to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = 132;
    h[12..16].copy_from_slice(&octets4(src));
    h[16..20].copy_from_slice(&octets4(dst));
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&seg);
    f
}

const INIT: u8 = 1;
const INIT_ACK: u8 = 2;
const SACK: u8 = 3;
const ABORT: u8 = 6;
const SHUTDOWN: u8 = 7;
const SHUTDOWN_ACK: u8 = 8;
const COOKIE_ECHO: u8 = 10;
const COOKIE_ACK: u8 = 11;
const SHUTDOWN_COMPLETE: u8 = 14;

fn sctp_state(lb: &Lb, client: (&str, u16), vip: (&str, u16)) -> Option<&'static str> {
    let key = ConnKey {
        proto: 132,
        caddr: ip(client.0),
        cport: client.1,
        vaddr: ip(vip.0),
        vport: vip.1,
    };
    let s = lb.engine.conns.with_conn(&key, Time(0), |c| c.state)?;
    crate::proto::SctpState::from_u8(s).map(crate::proto::SctpState::name)
}

#[test]
fn crc32c_is_castagnoli_stored_little_endian() {
    // The CRC-32C check value (RFC 3720, B.4 family): "123456789" → 0xE3069283.
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    let f = sctp4("10.9.0.5", 40000, "10.0.0.1", 3868, &[(INIT, &[0; 16])]);
    let seg = &f[ETH_LEN + 20..];
    let mut zeroed = seg.to_vec();
    zeroed[8..12].fill(0);
    assert_eq!(seg[8..12], crc32c::crc32c(&zeroed).to_le_bytes());
    assert_checksums(&f);
}

/// NAT to another port: every packet's CRC32c recomputed, the association's states as the
/// kernel's `sctp_states` moves them, ActiveConn only while ESTABLISHED, and an INIT on the
/// CLOSED association schedules a new one (`conn_reuse_mode`).
#[test]
fn nat_v4_sctp_association_states_and_crc() {
    let lb = Lb::new(
        sctp_key("10.0.0.1", 3868),
        "rr",
        &[
            dest("192.168.1.1", 3869, ForwardMethod::Masq),
            dest("192.168.1.2", 3869, ForwardMethod::Masq),
        ],
    );
    let (c, v) = (("10.9.0.5", 40000), ("10.0.0.1", 3868));
    let client = |chunks: &[(u8, &[u8])]| sctp4(c.0, c.1, v.0, v.1, chunks);
    let server = |chunks: &[(u8, &[u8])]| sctp4("192.168.1.2", 3869, c.0, c.1, chunks);
    let active = |lb: &Lb| (lb.sum(|d| d.active()), lb.sum(|d| d.inactive()));
    // (from the client, the frame, the state after it, (ActiveConn, InActConn)).
    type Step = (bool, Vec<u8>, &'static str, (u32, u32));
    let steps: [Step; 8] = [
        (true, client(&[(INIT, &[0; 16])]), "INIT1", (0, 1)),
        (false, server(&[(INIT_ACK, &[0; 24])]), "C-SENT", (0, 1)),
        (
            true,
            client(&[(COOKIE_ECHO, b"cookie-x")]),
            "C-REPLIED",
            (0, 1),
        ),
        (false, server(&[(COOKIE_ACK, b"")]), "ESTABLISHED", (1, 0)),
        (
            true,
            client(&[(0, &[0; 16]), (SACK, &[0; 12])]),
            "ESTABLISHED",
            (1, 0),
        ),
        (true, client(&[(SHUTDOWN, &[0; 4])]), "S-RECEIVED", (0, 1)),
        (false, server(&[(SHUTDOWN_ACK, b"")]), "S-ACK-SENT", (0, 1)),
        (true, client(&[(SHUTDOWN_COMPLETE, b"")]), "CLOSED", (0, 1)),
    ];
    for (n, (from_client, frame, state, counts)) in steps.iter().enumerate() {
        let (verdict, out) = lb.run(frame, n as u64 * 10);
        let p = parse(&out).unwrap();
        if *from_client {
            assert_eq!(verdict, forwarded_to("192.168.1.2", 3869), "step {n}");
            assert_eq!((p.daddr, p.dport), (ip("192.168.1.2"), 3869));
        } else {
            assert_eq!(verdict, REPLY_TO_CLIENT, "step {n}");
            assert_eq!((p.saddr, p.sport), (ip("10.0.0.1"), 3868));
        }
        assert_checksums(&out);
        assert_eq!(sctp_state(&lb, c, v), Some(*state), "step {n}");
        assert_eq!(active(&lb), *counts, "step {n}");
    }
    // A new INIT on the CLOSED association is a new connection, to the next rr server.
    let (verdict, _) = lb.run(&client(&[(INIT, &[0; 16])]), 100);
    assert_eq!(verdict, forwarded_to("192.168.1.1", 3869));
    assert_eq!(sctp_state(&lb, c, v), Some("INIT1"));
    assert_eq!(lb.tables.services[0].live.stats.counters().conns, 2);
}

/// NAT without a port change leaves the CRC32c as it is (it covers no address), and direct
/// routing's input-only table: INIT, then COOKIE ECHO establishes.
#[test]
fn sctp_same_port_nat_and_direct_routing() {
    let lb = Lb::new(
        sctp_key("10.0.0.1", 3868),
        "rr",
        &[dest("192.168.1.1", 3868, ForwardMethod::Masq)],
    );
    let init = sctp4("10.9.0.5", 40000, "10.0.0.1", 3868, &[(INIT, &[7; 16])]);
    let (_, out) = lb.run(&init, 0);
    assert_eq!(
        out[ETH_LEN + 20 + 8..],
        init[ETH_LEN + 20 + 8..],
        "CRC and chunks untouched"
    );
    assert_checksums(&out);

    let lb = Lb::new(
        sctp_key("10.0.0.1", 3868),
        "rr",
        &[dest("192.168.1.1", 3868, ForwardMethod::Route)],
    );
    let (c, v) = (("10.9.0.5", 40000), ("10.0.0.1", 3868));
    let (verdict, out) = lb.run(&init, 0);
    assert_eq!(verdict, forwarded_to("192.168.1.1", 3868));
    assert_eq!(out[ETH_LEN + 20..], init[ETH_LEN + 20..]);
    assert_eq!(sctp_state(&lb, c, v), Some("INIT1"));
    let echo = sctp4(c.0, c.1, v.0, v.1, &[(COOKIE_ECHO, b"cookie")]);
    lb.run(&echo, 1);
    assert_eq!(sctp_state(&lb, c, v), Some("ESTABLISHED"));
    assert_eq!(lb.sum(|d| d.active()), 1);
    // An ABORT bundled behind a COOKIE ECHO is the packet's event: CLOSED.
    let abort = sctp4(
        c.0,
        c.1,
        v.0,
        v.1,
        &[(COOKIE_ECHO, b"cookie"), (ABORT, b"")],
    );
    lb.run(&abort, 2);
    assert_eq!(sctp_state(&lb, c, v), Some("CLOSED"));
    assert_eq!(lb.sum(|d| d.inactive()), 1);
}

/// `sctp_conn_schedule`: only an INIT opens an association, or with `sloppy_sctp` any chunk
/// but an ABORT; a packet without a chunk header is malformed.
#[test]
fn sctp_scheduling_needs_an_init() {
    let mut lb = Lb::new(
        sctp_key("10.0.0.1", 3868),
        "rr",
        &[dest("192.168.1.1", 3868, ForwardMethod::Route)],
    );
    let data = sctp4("10.9.0.5", 40000, "10.0.0.1", 3868, &[(0, &[0; 16])]);
    let abort = sctp4("10.9.0.5", 40001, "10.0.0.1", 3868, &[(ABORT, b"")]);
    let mut bare = sctp4("10.9.0.5", 40002, "10.0.0.1", 3868, &[]);
    assert_eq!(bare.len(), ETH_LEN + 20 + 12);
    crate::wire::fill_sctp_checksum(&mut bare[ETH_LEN + 20..]);
    let r = DropReason::SctpNonInitNoConn;
    assert_eq!(lb.run(&data, 0).0, Verdict::Drop(r));
    assert_eq!(lb.run(&abort, 0).0, Verdict::Drop(r));
    assert_eq!(lb.run(&bare, 0).0, Verdict::Drop(DropReason::Malformed));
    assert_eq!(lb.engine.counters.drops(r), 2);
    let mut s = lb.dir.settings();
    s.sloppy_sctp = true;
    lb.dir.set_settings(s);
    lb.republish();
    assert_eq!(lb.run(&data, 1).0, forwarded_to("192.168.1.1", 3868));
    assert_eq!(lb.run(&abort, 1).0, Verdict::Drop(r));
}

/// `--pe sip` with one-packet scheduling (how SIP over UDP is balanced): each datagram finds
/// its call's template by the Call-ID, whatever its source port; calls are spread by the
/// scheduler; a datagram without a Call-ID takes the default template (port 0).
#[test]
fn sip_persistence_holds_each_call_to_one_server() {
    let mut cfg = ServiceConfig::new(udp_key("10.0.0.1", 5060));
    cfg.scheduler = "rr".into();
    cfg.flags = crate::service::SVC_F_ONEPACKET | crate::service::SVC_F_PERSISTENT;
    cfg.timeout = 60;
    cfg.pe = Some("sip".into());
    let lb = Lb::with(cfg, &three_reals(5060), 100);
    let msg = |call: &str| {
        format!("INVITE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.5\r\nCall-ID: {call}\r\n\r\n")
    };
    let send = |sport: u16, body: &str, now: u64| {
        let v = lb
            .run(
                &udp4("10.9.0.5", sport, "10.0.0.1", 5060, body.as_bytes()),
                now,
            )
            .0;
        match v {
            Verdict::Forward {
                real: Some((a, _)), ..
            } => a.to_string(),
            v => panic!("{v:?}"),
        }
    };
    let a = send(5060, &msg("call-a@10.9.0.5"), 0);
    let b = send(5060, &msg("call-b@10.9.0.5"), 1);
    let c = send(40000, &msg("call-c"), 2);
    assert_eq!(
        [&a, &b, &c]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "three calls, three servers (rr)"
    );
    for (n, sport) in [5060, 5061, 40001].into_iter().enumerate() {
        assert_eq!(send(sport, &msg("call-a@10.9.0.5"), 3 + n as u64), a);
        assert_eq!(send(sport, &msg("call-b@10.9.0.5"), 3 + n as u64), b);
    }
    // Three SIP templates (client port = the call's slot), their Call-IDs remembered.
    let mut slots = Vec::new();
    lb.engine.conns.for_each(|k, c| {
        if c.is_template() {
            slots.push(*k);
        }
    });
    assert_eq!(slots.len(), 3);
    assert!(slots.iter().all(|k| k.cport != 0));
    let mut ids: Vec<_> = slots
        .iter()
        .map(|k| String::from_utf8(lb.engine.sip.get(k).unwrap().into_vec()).unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["call-a@10.9.0.5", "call-b@10.9.0.5", "call-c"]);
    // A backup entered from the master's records (its own slots): the calls stay put.
    let backup = Lb {
        tables: lb.dir.snapshot(),
        dir: Director::new(),
        engine: Engine::new(100, 77),
        routes: routes(),
    };
    let mut records = Vec::new();
    crate::sync::dump(&lb.engine, |r| records.push(r));
    let sip_records: Vec<_> = records.iter().filter(|r| r.pe.is_some()).collect();
    assert_eq!(sip_records.len(), 3);
    assert!(
        sip_records.iter().all(|r| r.cport == 0),
        "the kernel's template port"
    );
    for r in &records {
        backup
            .engine
            .apply_sync(&backup.tables, r, Time(20))
            .unwrap();
    }
    let on_backup = |call: &str| {
        let frame = udp4("10.9.0.5", 7000, "10.0.0.1", 5060, msg(call).as_bytes());
        match backup.run(&frame, 21).0 {
            Verdict::Forward {
                real: Some((a, _)), ..
            } => a.to_string(),
            v => panic!("{v:?}"),
        }
    };
    assert_eq!(
        (
            on_backup("call-a@10.9.0.5"),
            on_backup("call-b@10.9.0.5"),
            on_backup("call-c")
        ),
        (a.clone(), b.clone(), c.clone())
    );
    // No Call-ID: the default template (client port 0), sticky as usual.
    let d = send(5060, "OPTIONS sip:x SIP/2.0\r\n\r\n", 10);
    assert_eq!(send(5062, "garbage", 11), d);
    let mut plain = 0;
    lb.engine.conns.for_each(|k, c| {
        if c.is_template() && k.cport == 0 {
            plain += 1;
        }
    });
    assert_eq!(plain, 1);
}

/// `ip_vs_sip_conn_out`: a NAT real server's own request (a BYE to a client) makes a
/// connection of its `--pe sip` service and the call's template: it leaves from the virtual
/// service, the client's answer reaches that server, and so does the call's next message from
/// another port. Without a Call-ID a persistent service makes nothing (the kernel's business).
#[test]
fn a_sip_server_s_own_request_makes_its_connection() {
    let mut cfg = ServiceConfig::new(udp_key("10.0.0.1", 5060));
    cfg.scheduler = "rr".into();
    cfg.flags = crate::service::SVC_F_PERSISTENT;
    cfg.timeout = 60;
    cfg.pe = Some("sip".into());
    let reals = [1, 2].map(|n| dest(&format!("192.168.1.{n}"), 5060, ForwardMethod::Masq));
    let lb = Lb::with(cfg, &reals, 100);
    let bye = b"BYE sip:alice@10.9.0.5 SIP/2.0\r\nCall-ID: out-1@rs2\r\n\r\n";
    let (v, out) = lb.run(&udp4("192.168.1.2", 5060, "10.9.0.5", 5070, bye), 0);
    assert_eq!(v, REPLY_TO_CLIENT);
    let p = parse(&out).unwrap();
    assert_eq!((p.saddr, p.sport), (ip("10.0.0.1"), 5060));
    assert_checksums(&out);
    let ok = b"SIP/2.0 200 OK\r\nCall-ID: out-1@rs2\r\n\r\n";
    let (v, _) = lb.run(&udp4("10.9.0.5", 5070, "10.0.0.1", 5060, ok), 1);
    assert_eq!(v, forwarded_to("192.168.1.2", 5060));
    // The call's next message from another port of the client: the template, not rr.
    let (v, _) = lb.run(&udp4("10.9.0.5", 5090, "10.0.0.1", 5060, ok), 2);
    assert_eq!(v, forwarded_to("192.168.1.2", 5060));
    let c = lb.tables.services[0].live.stats.counters();
    assert_eq!((c.conns, c.outpkts), (2, 1));
    // No Call-ID: nothing is made, the packet is the kernel's.
    let stray = udp4("192.168.1.1", 5060, "10.9.0.6", 5070, b"hello");
    assert_eq!(lb.run(&stray, 3).0, Verdict::Pass);
}
