//! The benchmarks' packet generator: an AF_XDP socket that only transmits. Frames are built
//! once in the UMEM and only the varying fields (client address and port, checksums) are
//! rewritten per packet. Bounded by a packet count and a duration; optionally paced.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{FrameDesc, Socket, Umem};

use xvs_core::wire::{checksum, l4_checksum};

use crate::xsk::XskError;

/// What to send.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Interface to send on.
    pub ifname: String,
    /// Queue of that interface.
    pub queue: u32,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC (the balancer, or the sink for the ceiling).
    pub dst_mac: [u8; 6],
    /// Destination address (the VIP).
    pub dst: Ipv4Addr,
    /// Destination port.
    pub dport: u16,
    /// Clients: flow i comes from `client_base + i / 16384`, port `1024 + i % 16384`.
    pub client_base: Ipv4Addr,
    /// Established flows cycled through (`new_conns` false), or the size of the space new
    /// connections are drawn from.
    pub flows: u32,
    /// SYNs from ever new clients instead of ACKs of established flows.
    pub new_conns: bool,
    /// UDP datagrams instead of TCP segments (with `new_conns`: from ever new clients).
    pub udp: bool,
    /// Frame length (at least 54).
    pub frame_len: usize,
    /// Packets per second (0 = as fast as possible).
    pub rate: u64,
    /// Stop after this many packets.
    pub count: u64,
    /// Stop after this long.
    pub duration: Duration,
    /// First sequence number (to continue where an earlier run stopped).
    pub seq_start: u64,
}

/// The flow's client address and port.
pub fn flow_client(base: Ipv4Addr, i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from(base).wrapping_add(i >> 14)),
        1024 + (i & 0x3fff) as u16,
    )
}

/// Write a TCP (or UDP) IPv4 frame for flow `i` into `f` (length `f.len()`).
pub fn build_frame(cfg: &GenConfig, i: u32, f: &mut [u8]) {
    let len = f.len();
    let (src, sport) = flow_client(cfg.client_base, i);
    f[0..6].copy_from_slice(&cfg.dst_mac);
    f[6..12].copy_from_slice(&cfg.src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = if cfg.udp { 17 } else { 6 };
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&cfg.dst.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    if cfg.udp {
        let udp = &mut f[34..];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&cfg.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&((len - 34) as u16).to_be_bytes());
        udp[6..].fill(0);
        let c = l4_checksum(&IpAddr::V4(src), &IpAddr::V4(cfg.dst), 17, udp);
        udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
        return;
    }
    let tcp = &mut f[34..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&cfg.dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&(if cfg.new_conns { 0u32 } else { 1 }).to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = if cfg.new_conns { 0x02 } else { 0x10 };
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[16..20].fill(0);
    for b in tcp[20..].iter_mut() {
        *b = 0;
    }
    let c = l4_checksum(&IpAddr::V4(src), &IpAddr::V4(cfg.dst), 6, tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

/// Send until the count, the duration or `stop`; returns the packets handed to the kernel.
pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> Result<u64, XskError> {
    const FRAMES: u32 = 4096;
    // The kernel transmits at most 32 frames per kick in copy mode: batches of 32 keep the TX
    // ring from building a backlog.
    const BATCH: usize = 32;
    let q = |n| QueueSize::new(n).expect("power of two");
    let ucfg = UmemConfig::builder()
        .frame_size(FrameSize::new(2048).expect("valid frame size"))
        .fill_queue_size(q(2048))
        .comp_queue_size(q(2048))
        .build()
        .map_err(|e| XskError::Umem(format!("{e:?}")))?;
    let (umem, mut free) = Umem::new(ucfg, NonZeroU32::new(FRAMES).expect("non-zero"), false)
        .map_err(|e| XskError::Umem(format!("{e:?}")))?;
    let scfg = SocketConfig::builder()
        .tx_queue_size(q(2048))
        .rx_queue_size(q(64))
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let name = CString::new(cfg.ifname.clone())
        .map_err(|_| XskError::Umem("interface name has NUL".into()))?;
    let err = |detail: String| XskError::Socket {
        ifname: cfg.ifname.clone(),
        queue: cfg.queue,
        detail,
    };
    // The queue of a generator that just exited may still be bound for a moment: retry briefly.
    let t0 = Instant::now();
    let (mut tx, _rx, fqcq) = loop {
        // Safety: a fresh UMEM, one socket, no program loaded by libxdp (TX only).
        match unsafe { Socket::new(scfg, &umem, &Interface::new(name.clone()), cfg.queue) } {
            Ok(s) => break s,
            Err(e)
                if t0.elapsed() < Duration::from_secs(2)
                    && format!("{e:?}").contains("ResourceBusy") =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(format!("{e:?}"))),
        }
    };
    let (_fq, mut cq) = fqcq.ok_or_else(|| err("no completion ring".into()))?;
    let len = cfg.frame_len.max(54);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut batch: Vec<FrameDesc> = Vec::with_capacity(BATCH);
    let mut done = vec![FrameDesc::default(); BATCH * 4];
    let mut seq: u64 = cfg.seq_start;
    let mut completed: u64 = 0;
    while sent < cfg.count && start.elapsed() < cfg.duration && !stop.load(Relaxed) {
        // Safety: completed descriptors are frames the kernel no longer uses.
        let n = unsafe { cq.consume(&mut done) };
        completed += n as u64;
        free.extend_from_slice(&done[..n]);
        if cfg.rate > 0 {
            // Pace: the next batch is due when `sent` packets at `rate` have had their time.
            let due = Duration::from_secs_f64(sent as f64 / cfg.rate as f64);
            if start.elapsed() < due {
                std::hint::spin_loop();
                continue;
            }
        }
        let want = BATCH.min(free.len()).min((cfg.count - sent) as usize);
        // Only fill what the TX ring can take now (copy mode drains it 32 frames per kick).
        let want = want.min(tx.nb_free(want as u32) as usize);
        if want == 0 {
            let _ = tx.wakeup();
            continue;
        }
        for _ in 0..want {
            let Some(mut d) = free.pop() else { break };
            let i = if cfg.new_conns {
                // A new client for every SYN: walk the flow space with a stride coprime to it.
                (seq.wrapping_mul(0x9E37_79B1) % u64::from(cfg.flows.max(1))) as u32
            } else {
                (seq % u64::from(cfg.flows.max(1))) as u32
            };
            seq += 1;
            // Safety: `d` came from the free list: no ring holds it.
            let mut data = unsafe { umem.data_mut(&mut d) };
            let mut cur = data.cursor();
            cur.set_pos(len);
            build_frame(cfg, i, data.contents_mut());
            batch.push(d);
        }
        // Safety: every descriptor in the batch is ours with its length set.
        let n = unsafe { tx.produce_and_wakeup(&batch) }.unwrap_or(0);
        sent += n as u64;
        // Flows of frames that did not fit are sent next time: no flow is skipped.
        seq -= (batch.len() - n) as u64;
        free.extend_from_slice(&batch[n..]);
        batch.clear();
    }
    // Let the kernel send what is still in the TX ring (bounded), and report what it completed.
    let drain = Instant::now();
    while completed < sent && drain.elapsed() < Duration::from_secs(1) {
        let _ = tx.wakeup();
        // Safety: as above.
        let n = unsafe { cq.consume(&mut done) };
        completed += n as u64;
    }
    Ok(completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN generator configuration for tests (nothing is sent).
    pub(super) fn test_config() -> GenConfig {
        GenConfig {
            ifname: "x".into(),
            queue: 0,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: Ipv4Addr::new(10, 0, 0, 1),
            dport: 80,
            client_base: Ipv4Addr::new(10, 200, 0, 0),
            flows: 100_000,
            new_conns: true,
            udp: false,
            frame_len: 64,
            rate: 0,
            count: 1,
            duration: Duration::from_secs(1),
            seq_start: 0,
        }
    }

    #[test]
    fn udp_frames_parse_with_valid_checksums() {
        let cfg = GenConfig {
            udp: true,
            ..test_config()
        };
        let mut f = vec![0u8; 64];
        build_frame(&cfg, 5, &mut f);
        let p = xvs_core::wire::parse(&f).expect("parses");
        assert_eq!((p.proto, p.sport, p.dport), (17, 1029, 80));
        assert_eq!(xvs_core::wire::checksum(&f[14..34]), 0);
        assert_eq!(
            xvs_core::wire::l4_checksum(&p.saddr, &p.daddr, 17, &f[34..]),
            0
        );
    }

    #[test]
    fn frames_parse_with_valid_checksums() {
        let cfg = test_config();
        let mut f = vec![0u8; 64];
        build_frame(&cfg, 70_000, &mut f);
        let p = xvs_core::wire::parse(&f).expect("parses");
        assert_eq!(p.saddr, std::net::IpAddr::V4(Ipv4Addr::new(10, 200, 0, 4)));
        assert_eq!(p.sport, 1024 + (70_000 & 0x3fff) as u16);
        assert!(p.tcp.syn() && !p.tcp.ack());
        assert_eq!(xvs_core::wire::checksum(&f[14..34]), 0);
        assert_eq!(
            xvs_core::wire::l4_checksum(&p.saddr, &p.daddr, 6, &f[34..]),
            0
        );
    }
}

#[cfg(test)]
mod flow_tests {
    use std::collections::HashSet;

    #[test]
    fn syn_sequence_covers_every_flow() {
        let flows = 10_000u64;
        let set: HashSet<u32> = (0..flows)
            .map(|seq| (seq.wrapping_mul(0x9E37_79B1) % flows) as u32)
            .collect();
        assert_eq!(set.len(), 10_000);
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;
    use xvs_core::dest::DestConfig;
    use xvs_core::routes::StaticRoutes;
    use xvs_core::service::ServiceConfig;
    use xvs_core::{Director, Engine, Frame, Protocol, ServiceKey, Time};

    #[test]
    fn every_syn_makes_a_connection() {
        let key = ServiceKey::Addr {
            proto: Protocol::Tcp,
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
        };
        let mut d = Director::new();
        let mut c = ServiceConfig::new(key);
        c.scheduler = "rr".into();
        d.add_service(c).unwrap();
        let mut routes = StaticRoutes::new(1, [2; 6], vec!["10.7.0.1".parse().unwrap()], 1500);
        for i in 1..=100u8 {
            let a = std::net::IpAddr::from([10, 7, 1, i]);
            d.add_dest(&key, DestConfig::new(a, 80)).unwrap();
            routes.add_neighbour(a, [3; 6]);
        }
        let t = d.snapshot();
        let e = Engine::new(1 << 22, 1);
        let cfg = super::tests::test_config();
        for seq in 0..10_000u64 {
            let i = (seq.wrapping_mul(0x9E37_79B1) % 10_000) as u32;
            let mut buf = vec![0u8; 256 + 64];
            build_frame(&cfg, i, &mut buf[256..]);
            let mut f = Frame::new(&mut buf, 256, 64);
            let v = e.process_frame(&t, &routes, &mut f, Time(0));
            assert!(matches!(v, xvs_core::Verdict::Forward { .. }), "{v:?}");
        }
        assert_eq!(e.conns.len(), 10_000);
    }
}
