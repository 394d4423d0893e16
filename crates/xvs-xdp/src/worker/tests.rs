//! The worker's ring handling against the in-memory rings of `rings::mem`: batches, frames
//! of several buffers, verdicts, full rings, and every buffer accounted for after each loop.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use etherparse::{PacketBuilder, SlicedPacket};
use xvs_core::dest::DestConfig;
use xvs_core::routes::StaticRoutes;
use xvs_core::service::ServiceConfig;
use xvs_core::{
    Director, DropReason, Engine, ForwardMethod, Frame, Protocol, ServiceKey, Time, Verdict,
};

use super::{EngineHandler, Handler, Scratch, Worker, WorkerCounters, BATCH};
use crate::rings::mem::{MemRings, CHUNK, HEADROOM};

const IN: u32 = 10;
const OUT: u32 = 20;

/// Marks in a test frame's first byte, and what [`Marks`] does with them.
const FORWARD: u8 = 0xf1;
const DROP: u8 = 0xd0;
const PASS: u8 = 0x55;
const REPLY: u8 = 0x77;

/// A handler that obeys the frame's first byte and stamps forwarded frames' second byte.
struct Marks;

impl Handler for Marks {
    fn handle(&mut self, frame: &mut Frame<'_>, _now: Time) -> Verdict {
        let d = frame.data_mut();
        match d.first() {
            Some(&FORWARD) => {
                d[1] = 0xaa;
                Verdict::Forward {
                    ifindex: OUT,
                    real: None,
                }
            }
            Some(&REPLY) => Verdict::Reply(xvs_core::wire::IcmpError::TimeExceeded),
            Some(&PASS) => Verdict::Pass,
            _ => Verdict::Drop(DropReason::Malformed),
        }
    }
}

fn worker<H: Handler>(handler: H, rings: MemRings) -> Worker<H, MemRings> {
    Worker {
        qs: rings,
        handler,
        counters: Arc::new(WorkerCounters::default()),
        stop: Arc::new(AtomicBool::new(false)),
        epoch: Instant::now(),
        injector: None,
        busy_poll: false,
        spin: Duration::ZERO,
    }
}

/// One loop of the worker, with fresh scratch buffers.
fn poll<H: Handler>(w: &mut Worker<H, MemRings>) -> usize {
    let mut s = Scratch::new(w.qs.ports.len());
    w.poll_once(&mut s, Time(1_000))
}

fn frame(mark: u8, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    f[0] = mark;
    f
}

fn assert_accounted(w: &Worker<impl Handler, MemRings>, total: usize) {
    assert_eq!(w.qs.accounted(), total, "every buffer is somewhere");
    assert!(w.qs.each_buffer_once(), "no buffer is in two places");
}

#[test]
fn verdicts_send_drop_and_recycle_every_buffer() {
    let total = 256;
    let mut w = worker(Marks, MemRings::new(total, &[IN, OUT], 64));
    // The first loop only fills the fill rings.
    assert_eq!(poll(&mut w), 0);
    let marks = [FORWARD, DROP, FORWARD, PASS, REPLY, FORWARD, 0x00];
    for (i, &m) in marks.iter().enumerate() {
        assert!(w.qs.deliver(0, &frame(m, 60 + i)));
    }
    assert_eq!(poll(&mut w), marks.len());
    let sent = w.qs.transmit(1);
    assert_eq!(sent.len(), 3);
    for (f, want_len) in sent.iter().zip([60, 62, 65]) {
        let mut want = frame(FORWARD, want_len);
        want[1] = 0xaa;
        assert_eq!(f, &want);
    }
    // The ICMP error goes back out of the port it came in on, as the handler left it.
    assert_eq!(w.qs.transmit(0), vec![frame(REPLY, 64)]);
    let c = &w.counters;
    assert_eq!(c.rx.load(Relaxed), 7);
    assert_eq!(c.tx.load(Relaxed), 4);
    assert_eq!(c.engine_drops.load(Relaxed), 2);
    assert_eq!(c.pass_dropped.load(Relaxed), 1);
    // Sent buffers come back through the completion rings on the next loop.
    poll(&mut w);
    assert!(w.qs.ports.iter().all(|p| p.comp.is_empty()));
    assert_accounted(&w, total);
}

#[test]
fn a_batch_takes_the_rest_of_a_frame_it_cut() {
    let total = 512;
    let mut w = worker(Marks, MemRings::new(total, &[IN, OUT], 256));
    poll(&mut w);
    // BATCH - 1 small frames, then a frame of three buffers: the batch's last descriptor is the
    // jumbo frame's first buffer, and the worker reads on to its end.
    for _ in 0..BATCH - 1 {
        assert!(w.qs.deliver(0, &frame(FORWARD, 64)));
    }
    let jumbo = frame(FORWARD, 9000);
    assert!(w.qs.deliver(0, &jumbo));
    assert!(w.qs.deliver(0, &frame(FORWARD, 70)));
    assert_eq!(poll(&mut w), BATCH - 1 + 3);
    assert_eq!(w.counters.multi_buffer.load(Relaxed), 1);
    let sent = w.qs.transmit(1);
    assert_eq!(sent.len(), BATCH);
    let mut want = jumbo.clone();
    want[1] = 0xaa;
    assert_eq!(
        sent[BATCH - 1],
        want,
        "the jumbo frame goes out whole, as rewritten"
    );
    // The frame after it waits for the next loop.
    assert_eq!(poll(&mut w), 1);
    assert_eq!(w.qs.transmit(1).len(), 1);
    poll(&mut w);
    assert_accounted(&w, total);
}

#[test]
fn a_full_tx_ring_drops_counts_and_keeps_the_buffers() {
    let total = 128;
    let mut w = worker(Marks, MemRings::new(total, &[IN, OUT], 8));
    poll(&mut w);
    for _ in 0..8 {
        assert!(w.qs.deliver(0, &frame(FORWARD, 64)));
    }
    assert_eq!(poll(&mut w), 8);
    // Refilled, and the tx ring is still full (the kernel has not sent).
    for _ in 0..5 {
        assert!(w.qs.deliver(0, &frame(FORWARD, 64)));
    }
    poll(&mut w);
    assert_eq!(w.counters.tx.load(Relaxed), 8);
    assert_eq!(w.counters.tx_ring_full.load(Relaxed), 5);
    // The kernel was woken for the ring it has not drained.
    assert!(w.qs.ports[1].kicks >= 1);
    assert_eq!(w.qs.transmit(1).len(), 8);
    poll(&mut w);
    assert_accounted(&w, total);
}

#[test]
fn frames_longer_than_the_buffers_allow_are_dropped_and_counted() {
    let total = 64;
    let mut w = worker(Marks, MemRings::new(total, &[IN, OUT], 32));
    poll(&mut w);
    // Nine buffers: more than MAX_BUFFERS.
    assert!(w.qs.deliver(0, &frame(FORWARD, 9 * (CHUNK - HEADROOM))));
    assert_eq!(poll(&mut w), 9);
    assert_eq!(w.counters.oversize.load(Relaxed), 1);
    assert!(w.qs.transmit(1).is_empty());
    assert_accounted(&w, total);
}

/// A balancer on the rings: one TCP service at 10.0.0.1:80, its real server reached through an
/// IPIP tunnel on the second port.
fn tunnel_balancer(total: usize) -> Worker<EngineHandler, MemRings> {
    let vip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let key = ServiceKey::Addr {
        proto: Protocol::Tcp,
        addr: vip,
        port: 80,
    };
    let mut d = Director::new();
    d.add_service(ServiceConfig::new(key)).expect("service");
    let real = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));
    let mut dc = DestConfig::new(real, 80);
    dc.method = ForwardMethod::Tunnel;
    d.add_dest(&key, dc).expect("destination");
    let mut routes = StaticRoutes::new(
        OUT,
        [2, 0, 0, 0, 0, 1],
        vec![IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))],
        9000,
    );
    routes.add_neighbour(real, [2, 0, 0, 0, 0, 2]);
    let handler = EngineHandler::new(
        Arc::new(Engine::new(1024, 7)),
        Arc::new(ArcSwap::from_pointee(d.snapshot())),
        Arc::new(routes),
    );
    worker(handler, MemRings::new(total, &[IN, OUT], 64))
}

/// A client's SYN to the service with `payload` bytes.
fn syn(payload: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv4([10, 9, 0, 1], [10, 0, 0, 1], 64)
        .tcp(40000, 80, 1, 1000)
        .syn()
        .write(&mut out, &data)
        .expect("frame");
    out
}

/// The inner packet of an IPIP frame, after its outer header.
fn inner_of(sent: &[u8]) -> &[u8] {
    let p = SlicedPacket::from_ethernet(sent).expect("an Ethernet frame");
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4: {p:?}")
    };
    assert_eq!(ip.header().protocol().0, 4, "IPIP");
    &sent[14 + 20..]
}

#[test]
fn an_encapsulated_frame_that_fills_its_buffer_goes_out_in_two_buffers() {
    // As xvsd sizes them: the fill rings full, as many buffers again free.
    let total = 256;
    let mut w = tunnel_balancer(total);
    poll(&mut w);
    // No room behind the frame for the outer header: it grows into the headroom, and no longer
    // fits behind the buffer's data offset, where transmission starts: the worker sends it
    // as two buffers.
    let f = syn(CHUNK - HEADROOM - 14 - 40 - 8);
    assert!(f.len() > CHUNK - HEADROOM - 20);
    assert!(w.qs.deliver(0, &f));
    assert_eq!(poll(&mut w), 1);
    assert_eq!(w.qs.ports[1].tx.len(), 2, "two buffers, one frame");
    let sent = w.qs.transmit(1);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), f.len() + 20);
    // The inner packet is the client's, its TTL decremented (and the checksum with it).
    let inner = inner_of(&sent[0]);
    assert_eq!(inner.len(), f.len() - 14);
    assert_eq!(inner[8], 63);
    assert_eq!(&inner[40..], &f[14 + 40..], "the payload is intact");
    poll(&mut w);
    assert_accounted(&w, total);
}

#[test]
fn a_grown_frame_for_a_port_without_multi_buffer_is_dropped_and_counted() {
    let total = 256;
    let mut w = tunnel_balancer(total);
    w.qs.ports[1].multi_buffer = false;
    poll(&mut w);
    assert!(w.qs.deliver(0, &syn(CHUNK - HEADROOM - 14 - 40 - 8)));
    assert_eq!(poll(&mut w), 1);
    assert_eq!(w.counters.no_frame.load(Relaxed), 1);
    assert!(w.qs.transmit(1).is_empty());
    assert_accounted(&w, total);
}

#[test]
fn an_encapsulated_jumbo_frame_takes_one_more_buffer() {
    let total = 256;
    let mut w = tunnel_balancer(total);
    poll(&mut w);
    // Exactly two full buffers: with the outer header it needs a third, from the free list.
    let f = syn(2 * (CHUNK - HEADROOM) - 14 - 40);
    assert_eq!(f.len(), 2 * (CHUNK - HEADROOM));
    assert!(w.qs.deliver(0, &f));
    assert_eq!(poll(&mut w), 2);
    assert_eq!(w.qs.ports[1].tx.len(), 3, "three buffers, one frame");
    let sent = w.qs.transmit(1);
    assert_eq!(sent.len(), 1);
    let inner = inner_of(&sent[0]);
    assert_eq!(inner.len(), f.len() - 14);
    assert_eq!(&inner[40..], &f[14 + 40..], "the payload is intact");
    poll(&mut w);
    assert_accounted(&w, total);
}
