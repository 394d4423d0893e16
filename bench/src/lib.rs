//! Shared pieces of the benchmarks: a balancer with one service and 100 real servers, frame
//! builders, a small deterministic random generator (flows drawn uniformly at random), and
//! batches run through the engine as a worker runs them.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use xvs_core::conn::ConnKey;
use xvs_core::dest::DestConfig;
use xvs_core::routes::StaticRoutes;
use xvs_core::service::ServiceConfig;
use xvs_core::{
    Director, Engine, ForwardMethod, Frame, Protocol, ServiceKey, Tables, Time, Verdict,
    WorkerState,
};

/// Headroom in front of each frame.
pub const HEADROOM: usize = 128;
/// Slot size per frame in a batch buffer.
pub const SLOT: usize = 256;
/// The VIP.
pub const VIP: [u8; 4] = [10, 0, 0, 1];
/// Frames per batch, as a worker receives them.
pub const BATCH: usize = 256;

/// xorshift64*: uniform enough for drawing flows, and deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Table sizes for the criterion benchmarks: 10 K and 1 M when benchmarking (`cargo bench`
/// passes `--bench`); a small one when `cargo test` runs the benchmarks once as a smoke test.
pub fn table_sizes() -> &'static [u64] {
    if std::env::args().any(|a| a == "--bench") {
        &[10_000, 1_000_000]
    } else {
        &[1_000]
    }
}

/// A flow: client address and port.
pub fn flow(i: u64) -> ([u8; 4], u16) {
    // 2^16 ports per address, addresses from 11.0.0.0 up: every i is a distinct flow.
    let a = 0x0b00_0000u32 + (i >> 14) as u32;
    (a.to_be_bytes(), 1024 + (i & 0x3fff) as u16)
}

/// The connection key of flow `i` (see [`flow`]): TCP to VIP:80.
pub fn flow_key(i: u64) -> ConnKey {
    let (a, p) = flow(i);
    ConnKey {
        proto: 6,
        caddr: a.into(),
        cport: p,
        vaddr: VIP.into(),
        vport: 80,
    }
}

/// Remove the connections of flows `ids` (see [`flow`]) from `engine`'s table: what a
/// new-connection benchmark inserted, so that the table keeps its size.
pub fn remove_flows(engine: &Engine, ids: &[u64]) {
    for &i in ids {
        engine.conns.remove(&flow_key(i));
    }
}

/// A TCP frame from a client to the VIP (SYN or ACK), 64 bytes on the wire.
pub fn client_frame(client: [u8; 4], port: u16, syn: bool) -> Vec<u8> {
    let mut v = vec![0u8; CLIENT_FRAME_LEN];
    write_client_frame(&mut v, client, port, syn);
    v
}

/// Bytes of a [`client_frame`].
pub const CLIENT_FRAME_LEN: usize = 64;

/// Write [`client_frame`] into the first [`CLIENT_FRAME_LEN`] bytes of `out` (no allocation).
pub fn write_client_frame(out: &mut [u8], client: [u8; 4], port: u16, syn: bool) {
    let from_client = [2, 0, 0, 0, 0, 0xc1];
    write_tcp_frame(out, from_client, (client, port), (VIP, 80), syn);
}

/// Write a TCP ACK from real server `server` (address, port) to a client's `port`, as a NAT
/// real server answers through the balancer, into the first [`CLIENT_FRAME_LEN`] bytes of
/// `out` (no allocation).
pub fn write_reply_frame(out: &mut [u8], server: ([u8; 4], u16), client: [u8; 4], port: u16) {
    let from_server = [2, 0, 0, 0, 0xaa, 0];
    write_tcp_frame(out, from_server, server, (client, port), false);
}

/// A 64-byte TCP frame (SYN, or ACK of sequence 1) from `src_mac` to the balancer's MAC, `src`
/// → `dst` (address, port), written into the first [`CLIENT_FRAME_LEN`] bytes of `out`.
fn write_tcp_frame(
    out: &mut [u8],
    src_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    syn: bool,
) {
    let b = PacketBuilder::ethernet2(src_mac, [2, 0, 0, 0, 0, 0x1b])
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut w = std::io::Cursor::new(&mut out[..CLIENT_FRAME_LEN]);
    b.write(&mut w, &[0u8; 6])
        .expect("a benchmark frame is 64 bytes");
}

/// The real server (address, port) of each of the connections of flows `0..flows` (see
/// [`flow`]), for their replies ([`write_reply_frame`]); panics on an IPv6 or missing one.
pub fn real_servers(engine: &Engine, flows: u64) -> Vec<([u8; 4], u16)> {
    (0..flows)
        .map(|i| {
            let (addr, port) = engine
                .conns
                .with_conn(&flow_key(i), Time(1000), |c| (c.dest.addr, c.dport))
                .expect("the flow's connection is in the table");
            match addr {
                IpAddr::V4(a) => (a.octets(), port),
                IpAddr::V6(_) => panic!("the benchmark's real servers are IPv4"),
            }
        })
        .collect()
}

/// One service on VIP:80 with `n` real servers using `sched` and `method`.
pub fn balancer(
    sched: &str,
    method: ForwardMethod,
    n: u8,
    capacity: usize,
) -> (Director, Tables, Engine, StaticRoutes) {
    let key = ServiceKey::Addr {
        proto: Protocol::Tcp,
        addr: IpAddr::V4(Ipv4Addr::from(VIP)),
        port: 80,
    };
    let mut d = Director::new();
    let mut cfg = ServiceConfig::new(key);
    cfg.scheduler = sched.into();
    d.add_service(cfg).expect("valid service");
    let mut routes = StaticRoutes::new(
        1,
        [2, 0, 0, 0, 0, 0x1b],
        vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 254))],
        1500,
    );
    // The clients (11.0.0.0/8, see `flow`) are reached through a gateway: NAT replies go
    // there.
    routes.set_gateway(Some([2, 0, 0, 0, 0, 0xfe]));
    for i in 0..n {
        let addr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, i + 1));
        let mut dc = DestConfig::new(addr, 80);
        dc.method = method;
        dc.weight = 1 + i32::from(i % 3);
        d.add_dest(&key, dc).expect("valid destination");
        routes.add_neighbour(addr, [2, 0, 0, 0, 0xaa, i]);
    }
    let tables = d.snapshot();
    (d, tables, Engine::new(capacity, 42), routes)
}

/// Frame buffers, verdicts and the worker counter slot for running batches through an engine.
#[derive(Debug)]
pub struct Scratch {
    buf: Vec<u8>,
    lens: Vec<usize>,
    verdicts: Vec<Verdict>,
    worker: WorkerState,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    /// Room for one batch of [`BATCH`] frames, and a worker counter slot of its own.
    pub fn new() -> Scratch {
        Scratch {
            buf: vec![0u8; BATCH * SLOT],
            lens: Vec::with_capacity(BATCH),
            verdicts: vec![Verdict::Pass; BATCH],
            worker: WorkerState::new(),
        }
    }

    /// Copy `templates` (at most [`BATCH`]) into the buffers and process them as one batch
    /// ([`Engine::process`]): as xvsd's workers do when `prefetch` (with the CPU prefetch), else
    /// frame by frame without hints ("plain"). Returns the time of the processing alone (the copy is not timed).
    pub fn run(
        &mut self,
        engine: &Engine,
        tables: &Tables,
        routes: &StaticRoutes,
        templates: &[Vec<u8>],
        prefetch: bool,
    ) -> Duration {
        for (i, t) in templates.iter().enumerate() {
            self.buf[i * SLOT + HEADROOM..i * SLOT + HEADROOM + t.len()].copy_from_slice(t);
        }
        self.lens.clear();
        self.lens.extend(templates.iter().map(Vec::len));
        self.process(engine, tables, routes, prefetch)
    }

    /// Write the ACKs (or SYNs) of flows `ids` (see [`flow`], at most [`BATCH`]) straight into
    /// the buffers and process them as [`Scratch::run`] does: the frames are built without an
    /// allocation, so the untimed part leaves the caches as a worker's receive would.
    pub fn run_flows(
        &mut self,
        engine: &Engine,
        tables: &Tables,
        routes: &StaticRoutes,
        ids: &[u64],
        syn: bool,
        prefetch: bool,
    ) -> Duration {
        for (i, &id) in ids.iter().enumerate() {
            let (a, p) = flow(id);
            write_client_frame(&mut self.buf[i * SLOT + HEADROOM..], a, p, syn);
        }
        self.lens.clear();
        self.lens.resize(ids.len(), CLIENT_FRAME_LEN);
        self.process(engine, tables, routes, prefetch)
    }

    /// Write the replies of flows `ids` from their real servers (`servers`, indexed by flow,
    /// see [`real_servers`]) into the buffers and process them as [`Scratch::run_flows`] does.
    pub fn run_replies(
        &mut self,
        engine: &Engine,
        tables: &Tables,
        routes: &StaticRoutes,
        ids: &[u64],
        servers: &[([u8; 4], u16)],
        prefetch: bool,
    ) -> Duration {
        for (i, &id) in ids.iter().enumerate() {
            let (a, p) = flow(id);
            write_reply_frame(
                &mut self.buf[i * SLOT + HEADROOM..],
                servers[id as usize],
                a,
                p,
            );
        }
        self.lens.clear();
        self.lens.resize(ids.len(), CLIENT_FRAME_LEN);
        self.process(engine, tables, routes, prefetch)
    }

    /// Process the frames in the buffers (their lengths in `self.lens`) as one batch; the time
    /// it took.
    fn process(
        &mut self,
        engine: &Engine,
        tables: &Tables,
        routes: &StaticRoutes,
        prefetch: bool,
    ) -> Duration {
        let lens = &self.lens;
        let verdicts = &mut self.verdicts[..lens.len()];
        let mut frames: Vec<Frame<'_>> = self
            .buf
            .chunks_mut(SLOT)
            .zip(lens)
            .map(|(slot, &len)| Frame::new(slot, HEADROOM, len))
            .collect();
        let start = Instant::now();
        if prefetch {
            engine.process(
                tables,
                routes,
                &mut frames,
                Time(1000),
                verdicts,
                &mut self.worker,
                xvs_xdp::prefetch,
            );
        } else {
            let from = engine.prefetch_from();
            engine.set_prefetch_from(usize::MAX);
            engine.process(
                tables,
                routes,
                &mut frames,
                Time(1000),
                verdicts,
                &mut self.worker,
                |_| {},
            );
            engine.set_prefetch_from(from);
        }
        let e = start.elapsed();
        black_box(&verdicts);
        e
    }

    /// The verdicts of the last batch of `n` frames.
    pub fn verdicts(&self, n: usize) -> &[Verdict] {
        &self.verdicts[..n]
    }

    /// Create flows `0..flows` (see [`flow`]) with SYNs, frame by frame
    /// ([`Engine::process_frame`], so that a profiler collecting in [`Engine::process`] counts
    /// the measured batches alone).
    pub fn prefill(&mut self, engine: &Engine, tables: &Tables, routes: &StaticRoutes, flows: u64) {
        let slot = &mut self.buf[..SLOT];
        for id in 0..flows {
            let (a, p) = flow(id);
            write_client_frame(&mut slot[HEADROOM..], a, p, true);
            let mut f = Frame::new(slot, HEADROOM, CLIENT_FRAME_LEN);
            engine.process_frame(tables, routes, &mut f, Time(1000));
        }
    }
}
