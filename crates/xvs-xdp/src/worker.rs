//! The worker loop: one thread per queue index, owning that queue's sockets on every interface.
//! Receive a batch, hand each frame to the engine, transmit by verdict, recycle frames; no
//! allocation and no lock held across a batch on the fast path (the engine's shard locks are
//! taken and released per packet).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use xvs_core::{Engine, Frame, Routes, Tables, Time, Verdict, WorkerState};

use crate::rings::Rings;
use crate::xsk::QueueSet;

/// Frames per receive batch.
pub const BATCH: usize = 64;
/// Most UMEM buffers one frame may span (multi-buffer, `XDP_PKT_CONTD`).
pub const MAX_BUFFERS: usize = 8;
/// Largest frame (Ethernet header included) xvs forwards: a 9,216-byte MTU.
pub const MAX_FRAME: usize = 9216 + 14;
/// Room in front of a gathered frame for encapsulation headers, as in a UMEM frame.
const GATHER_HEADROOM: usize = 256;
/// One gather buffer: headroom, the largest frame, and room behind it for what encapsulation
/// prepends.
const GATHER_SLOT: usize = GATHER_HEADROOM + MAX_FRAME + 128;
const XDP_PKT_CONTD: u32 = 1;

/// Counters of one worker (read by the control socket).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// UMEM buffers received (a frame of several buffers counts each; see `multi_buffer`).
    pub rx: AtomicU64,
    /// Wake-ups that received at least one buffer: rx / rx_batches is the mean batch, which
    /// sets the per-packet share of the system calls and of the cache misses of each batch's
    /// start.
    pub rx_batches: AtomicU64,
    /// UMEM buffers transmitted.
    pub tx: AtomicU64,
    /// Frames the engine handed back to the kernel and no injector was available for: dropped.
    pub pass_dropped: AtomicU64,
    /// Frames handed back to the kernel through the TAP injector.
    pub passed_to_kernel: AtomicU64,
    /// Forwards to an interface xvs has no socket on.
    pub no_egress: AtomicU64,
    /// Frames dropped because a TX ring was full.
    pub tx_ring_full: AtomicU64,
    /// Frames the engine dropped (reasons are in the engine's counters).
    pub engine_drops: AtomicU64,
    /// Frames that spanned several UMEM buffers (jumbo frames).
    pub multi_buffer: AtomicU64,
    /// Frames dropped for being larger than [`MAX_FRAME`] or than [`MAX_BUFFERS`] buffers.
    pub oversize: AtomicU64,
    /// Frames dropped because no free UMEM frame was left to hold what encapsulation added.
    pub no_frame: AtomicU64,
}

/// What a worker does with each received frame.
pub trait Handler: Send {
    /// Called before each batch (e.g. to load the current tables once per batch).
    fn begin(&mut self) {}
    /// Rewrite the frame in place and say where it goes.
    fn handle(&mut self, frame: &mut Frame<'_>, now: Time) -> Verdict;
    /// The same for a received batch (`verdicts` as long as `frames`); by default frame by frame.
    fn handle_batch(&mut self, frames: &mut [Frame<'_>], now: Time, verdicts: &mut [Verdict]) {
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            *v = self.handle(f, now);
        }
    }
    /// Periodic work: one step every [`HOUSEKEEPING`] (steps missed while asleep are caught up).
    fn housekeeping(&mut self, _now: Time) {}
}

/// The load balancer: the engine over the published tables.
pub struct EngineHandler {
    /// Shared engine (connection table, counters).
    pub engine: Arc<Engine>,
    /// The published tables.
    pub tables: Arc<ArcSwap<Tables>>,
    /// Next hops.
    pub routes: Arc<dyn Routes + Send + Sync>,
    current: Arc<Tables>,
    /// This worker's own traffic counters (one writer, no locked instructions) and next-hop
    /// cache.
    worker: WorkerState,
    /// Where offers of established connections go (None: no fast path).
    fast: Option<Arc<crate::fast::FastPath>>,
    /// The fast path's generation read at this batch's start.
    gen: u32,
}

impl std::fmt::Debug for EngineHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandler").finish_non_exhaustive()
    }
}

impl EngineHandler {
    /// A handler over shared state.
    pub fn new(
        engine: Arc<Engine>,
        tables: Arc<ArcSwap<Tables>>,
        routes: Arc<dyn Routes + Send + Sync>,
    ) -> Self {
        let current = tables.load_full();
        EngineHandler {
            engine,
            tables,
            routes,
            current,
            worker: WorkerState::new(),
            fast: None,
            gen: 0,
        }
    }

    /// Hand the connections the data path offers to `fast` (see [`crate::fast`]).
    pub fn with_fast_path(mut self, fast: Arc<crate::fast::FastPath>) -> Self {
        self.fast = Some(fast);
        self
    }
}

impl Handler for EngineHandler {
    fn begin(&mut self) {
        // The fast path's generation is read before the tables: an offer made from tables
        // older than a change carries the generation the change ended.
        if let Some(f) = &self.fast {
            self.gen = f.generation();
        }
        // A published change is picked up at the next batch; the Arc is only replaced (and the
        // old one released) when it actually changed.
        let now = self.tables.load();
        if !Arc::ptr_eq(&now, &self.current) {
            self.current = Arc::clone(&now);
        }
    }

    fn handle(&mut self, frame: &mut Frame<'_>, now: Time) -> Verdict {
        self.engine
            .process_frame(&self.current, &*self.routes, frame, now)
    }

    fn handle_batch(&mut self, frames: &mut [Frame<'_>], now: Time, verdicts: &mut [Verdict]) {
        // The connection-table lookups of a group are prefetched before it is processed.
        self.engine.process(
            &self.current,
            &*self.routes,
            frames,
            now,
            verdicts,
            &mut self.worker,
            crate::prefetch,
        );
        if let Some(f) = &self.fast {
            for o in self.worker.take_offloads() {
                f.offer(self.gen, o);
            }
        }
    }

    fn housekeeping(&mut self, now: Time) {
        self.engine.conns.expire_step(now);
    }
}

/// The housekeeping period (one connection-table shard's expiry step).
pub const HOUSEKEEPING: Duration = Duration::from_millis(10);

/// The longest an idle worker sleeps: how soon it sees `stop`. Each wake-up of an idle worker
/// costs tens of microseconds of CPU, so it stays rare.
const IDLE_WAIT_MS: i32 = 250;

/// Everything a worker needs: its rings (the AF_XDP sockets of one queue, [`QueueSet`], or
/// an in-memory model in the tests) and what to do with the frames.
#[derive(Debug)]
pub struct Worker<H: Handler, R: Rings = QueueSet> {
    /// The sockets of this queue.
    pub qs: R,
    /// What to do with frames.
    pub handler: H,
    /// Counters.
    pub counters: Arc<WorkerCounters>,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
    /// The clock's zero, shared by all workers.
    pub epoch: Instant,
    /// Where frames for the kernel go (None: they are dropped and counted).
    pub injector: Option<Arc<crate::inject::Injector>>,
    /// Never sleep when idle: poll the rings in a loop (lower latency, one core kept busy).
    pub busy_poll: bool,
    /// After receiving, keep polling this long before sleeping: a reply that follows a request
    /// within it finds the worker awake (no wake-up to pay), and an idle worker still sleeps.
    pub spin: Duration,
}

/// Run the calling thread under `SCHED_IDLE`: a busy-polling worker spins on whatever time its
/// core has left, and the kernel's receive processing there (NAPI threads and softirqs, which
/// carry the fast path and fill the worker's rings) always goes first. On a core of its own
/// nothing changes. A refusal is logged and the worker spins at its usual priority.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // Safety: pid 0 is the calling thread; param is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::warn!(
            "busy polling at the normal priority (SCHED_IDLE refused: {})",
            std::io::Error::last_os_error()
        );
    }
}

/// A worker's buffers for one loop, allocated once.
struct Scratch<D> {
    rx: Vec<D>,
    gather: Vec<u8>,
    done: Vec<D>,
    tx: Vec<Vec<D>>,
}

impl<D: Copy + Default> Scratch<D> {
    fn new(ports: usize) -> Scratch<D> {
        Scratch {
            rx: vec![D::default(); BATCH + MAX_BUFFERS],
            gather: vec![0u8; BATCH * GATHER_SLOT],
            done: vec![D::default(); BATCH * 4],
            tx: (0..ports).map(|_| Vec::with_capacity(BATCH * 2)).collect(),
        }
    }
}

impl<H: Handler, R: Rings> Worker<H, R> {
    /// Run until `stop` is set.
    pub fn run(&mut self) {
        if self.busy_poll {
            idle_priority();
        }
        let mut s = Scratch::new(self.qs.ports());
        let mut last_house = Instant::now();
        let mut last_rx = last_house;
        while !self.stop.load(Relaxed) {
            // One clock read per loop, for the engine's time and the housekeeping period.
            let instant = Instant::now();
            let now = Time((instant - self.epoch).as_millis() as u64);
            let received = self.poll_once(&mut s, now);
            let since = instant - last_house;
            if since >= HOUSEKEEPING {
                // After a long sleep, the steps missed (at most a second's): the table's
                // expiry keeps its pace however rarely the worker wakes.
                let steps = (since.as_millis() / HOUSEKEEPING.as_millis()).min(100);
                last_house = instant;
                for _ in 0..steps {
                    self.handler.housekeeping(now);
                }
            }
            if received > 0 {
                last_rx = instant;
            } else if self.busy_poll || instant - last_rx < self.spin {
                std::hint::spin_loop();
            } else if self.qs.tx_pending() {
                // Frames the kernel has not sent yet (copy mode sends a bounded number per
                // wake-up): back soon to wake it again.
                self.qs.wait(1);
            } else {
                // Idle: sleep until a socket has frames (bounded, to see `stop`).
                self.qs.wait(IDLE_WAIT_MS);
            }
        }
    }

    /// One pass over every port: recycle completed transmissions, refill, receive a batch,
    /// process it and transmit. The number of buffers received.
    fn poll_once(&mut self, s: &mut Scratch<R::Desc>, now: Time) -> usize {
        self.handler.begin();
        let mut received = 0;
        for pi in 0..self.qs.ports() {
            self.qs.reclaim(pi, &mut s.done);
            self.qs.refill(pi, BATCH * 4);
            let rx = &mut s.rx;
            let mut n = self.qs.receive(pi, &mut rx[..BATCH]);
            // A frame's buffers are published together: take the rest of a frame the batch cut.
            while n > 0 && n < rx.len() && R::options(&rx[n - 1]) & XDP_PKT_CONTD != 0 {
                let more = self.qs.receive(pi, &mut rx[n..n + 1]);
                if more == 0 {
                    break;
                }
                n += more;
            }
            received += n;
            self.prefetch(&rx[..n]);
            self.handle_batch(pi, &mut s.rx[..n], now, &mut s.tx, &mut s.gather);
        }
        if received > 0 {
            self.counters.rx.fetch_add(received as u64, Relaxed);
            self.counters.rx_batches.fetch_add(1, Relaxed);
        }
        self.transmit(&mut s.tx);
        // Wake the kernel for every tx ring it has not drained. In copy mode the kernel sends
        // at most 32 frames per wake-up (`__xsk_generic_xmit`), and otherwise only when
        // `poll()` drives it: a worker that never sleeps in `poll()` (`--busy-poll`), or one
        // that wakes to new frames before the ring is drained, would leave the rest of a burst
        // in the ring until it next has something to send, and TCP would wait for them in
        // retransmission timeouts.
        for pi in 0..self.qs.ports() {
            self.qs.kick(pi);
        }
        received
    }

    /// Ask for the headers of every frame of the batch at once: the kernel wrote them on
    /// another core, so each first touch is a cache miss; issued together, the misses overlap
    /// instead of stalling the handler one frame at a time.
    fn prefetch(&self, batch: &[R::Desc]) {
        for desc in batch {
            // The first two lines of the frame: its headers.
            let p = self.qs.data_addr(desc);
            crate::prefetch(p);
            crate::prefetch(p + 64);
        }
    }

    /// Copy the buffers of a multi-buffer frame into `slot` behind [`GATHER_HEADROOM`]: the
    /// frame the engine sees. None if it does not fit.
    fn gather(&self, chain: &[R::Desc], slot: &mut [u8]) -> Option<usize> {
        if chain.len() > MAX_BUFFERS {
            return None;
        }
        let mut at = GATHER_HEADROOM;
        for desc in chain {
            // Safety: every buffer of the chain is ours (received, in no ring); this borrow ends
            // before any other use of it.
            let bytes = unsafe { self.qs.data(desc) };
            slot.get_mut(at..at + bytes.len())?.copy_from_slice(bytes);
            at += bytes.len();
        }
        Some(at - GATHER_HEADROOM)
    }

    /// Hand a received batch to the handler, then send, pass or recycle every frame. A frame
    /// of several buffers is gathered into one contiguous buffer for the engine.
    fn handle_batch(
        &mut self,
        port: usize,
        descs: &mut [R::Desc],
        now: Time,
        tx: &mut [Vec<R::Desc>],
        gather: &mut [u8],
    ) {
        // Frame i is descs[firsts[i]..firsts[i + 1]].
        let mut firsts = [0usize; BATCH + 1];
        let mut n = 0;
        let mut i = 0;
        while i < descs.len() && n < BATCH {
            firsts[n] = i;
            while i < descs.len() && R::options(&descs[i]) & XDP_PKT_CONTD != 0 {
                i += 1;
            }
            i += 1;
            n += 1;
        }
        let end = i.min(descs.len());
        firsts[n] = end;
        // The ingress interface, for the firewall-mark rules' `-i`.
        let ifindex = self.qs.ifindex(port);
        let mut frames: [Frame<'_>; BATCH] = std::array::from_fn(|_| Frame::new(&mut [], 0, 0));
        // The data offset of each single-buffer frame in its chunk.
        let mut offsets = [0usize; BATCH];
        let mut slots = gather.chunks_mut(GATHER_SLOT);
        // A single-buffer frame's gather slot, kept as room for it should it outgrow its buffer.
        let mut spares: [Option<&mut [u8]>; BATCH] = std::array::from_fn(|_| None);
        for k in 0..n {
            let chain = &mut descs[firsts[k]..firsts[k + 1]];
            let slot = slots.next().expect("one gather slot per frame of a batch");
            if chain.len() == 1 {
                spares[k] = Some(slot);
                let len = R::len(&chain[0]);
                // Safety: the descriptors came from the rx ring in `poll_once`; they are ours
                // until `dispatch` puts them in a ring or on the free list, after their frame
                // is done with (each frame is used only up to its own dispatch).
                let (buf, off) = unsafe { self.qs.buffer(&mut chain[0]) };
                frames[k] = Frame::new(buf, off, len).with_ifindex(ifindex);
                offsets[k] = off;
                continue;
            }
            self.counters.multi_buffer.fetch_add(1, Relaxed);
            match self.gather(chain, slot) {
                Some(len) => {
                    frames[k] = Frame::new(slot, GATHER_HEADROOM, len).with_ifindex(ifindex)
                }
                None => {
                    // An empty frame: the engine drops it as malformed; counted here as well.
                    self.counters.oversize.fetch_add(1, Relaxed);
                }
            }
        }
        let mut verdicts: [Verdict; BATCH] = std::array::from_fn(|_| Verdict::Pass);
        self.handler
            .handle_batch(&mut frames[..n], now, &mut verdicts[..n]);
        for k in 0..n {
            let f = std::mem::replace(&mut frames[k], Frame::new(&mut [], 0, 0));
            let chain = &mut descs[firsts[k]..firsts[k + 1]];
            if let Some(spare) = spares[k].take() {
                self.dispatch(port, &mut chain[0], verdicts[k], f, offsets[k], tx, spare);
            } else {
                self.dispatch_chain(port, chain, verdicts[k], f, tx);
            }
        }
        // Buffers past the last whole frame (a frame longer than the batch could take).
        self.qs.free().extend_from_slice(&descs[end..]);
    }

    /// Where a frame goes: the index of its egress port, or None once it has been passed to
    /// the kernel or dropped (and counted).
    fn egress(&mut self, port: usize, verdict: Verdict, frame: &mut Frame<'_>) -> Option<usize> {
        match verdict {
            Verdict::Forward { ifindex, .. } => {
                match (0..self.qs.ports()).find(|&p| self.qs.ifindex(p) == ifindex) {
                    Some(i) => Some(i),
                    None => {
                        self.counters.no_egress.fetch_add(1, Relaxed);
                        None
                    }
                }
            }
            Verdict::Reply(_) => Some(port),
            Verdict::Pass => {
                let sent = self
                    .injector
                    .as_ref()
                    .is_some_and(|inj| inj.inject(frame.data_mut()).is_ok());
                if sent {
                    self.counters.passed_to_kernel.fetch_add(1, Relaxed);
                } else {
                    self.counters.pass_dropped.fetch_add(1, Relaxed);
                }
                None
            }
            Verdict::Drop(_) => {
                self.counters.engine_drops.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Act on one frame's verdict. Takes the frame (not used after this): the descriptor
    /// changes hands here. `spare` is room for a frame that no longer fits its buffer.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        port: usize,
        desc: &mut R::Desc,
        verdict: Verdict,
        mut frame: Frame<'_>,
        data_off: usize,
        tx: &mut [Vec<R::Desc>],
        spare: &mut [u8],
    ) {
        let (start, new_len) = (frame.start(), frame.len());
        let Some(out) = self.egress(port, verdict, &mut frame) else {
            self.qs.free().push(*desc);
            return;
        };
        if start != data_off {
            // The frame grew into the headroom (encapsulation with no room behind it in the
            // buffer), so it no longer fits behind the data offset, where transmission starts:
            // out as two buffers, through a copy, where the egress takes frames of several.
            let fits = data_off + new_len <= frame.buffer_mut().len();
            let bytes = &mut spare[..new_len];
            bytes.copy_from_slice(frame.data());
            if fits || self.qs.multi_buffer(out) {
                self.write_out(std::slice::from_mut(desc), bytes, out, tx);
            } else {
                self.counters.no_frame.fetch_add(1, Relaxed);
                self.qs.free().push(*desc);
            }
            return;
        }
        // Safety: the frame is still ours (not yet in a ring) and its `Frame` is not used again.
        unsafe { self.qs.set_len(desc, new_len) };
        R::set_options(desc, 0);
        tx[out].push(*desc);
    }

    /// Act on the verdict of a frame gathered from several buffers: its bytes, as the engine
    /// left them, are written back over the buffers (with one more from the free list when
    /// encapsulation made it longer than they hold), which go out as one multi-buffer frame.
    fn dispatch_chain(
        &mut self,
        port: usize,
        chain: &mut [R::Desc],
        verdict: Verdict,
        mut frame: Frame<'_>,
        tx: &mut [Vec<R::Desc>],
    ) {
        let out = if frame.is_empty() {
            None
        } else {
            self.egress(port, verdict, &mut frame)
        };
        let Some(out) = out else {
            self.qs.free().extend_from_slice(chain);
            return;
        };
        let first_len = R::len(&chain[0]);
        let gathered: usize = chain.iter().map(R::len).sum();
        if frame.start() == GATHER_HEADROOM && frame.len() == gathered && first_len >= 128 {
            // Same place, same length: the engine rewrote headers only (Ethernet, IP and the
            // ports and checksum of TCP or UDP: the first 74 bytes at most), all in the first
            // buffer; the others go out as they came.
            // Safety: the first buffer is ours (received, in no ring); no other reference to it
            // exists (the engine's frame is in the gather buffer).
            unsafe { self.qs.write(&mut chain[0], &frame.data()[..first_len]) };
            let n = chain.len();
            for (k, desc) in chain.iter_mut().enumerate() {
                R::set_options(desc, if k + 1 == n { 0 } else { XDP_PKT_CONTD });
                tx[out].push(*desc);
            }
            return;
        }
        self.write_out(chain, frame.data(), out, tx);
    }

    /// Write `bytes` over the buffers of `chain`, with up to two more from the free list, and
    /// queue them on `out` as one frame; or, short of buffers, recycle them and count.
    fn write_out(
        &mut self,
        chain: &mut [R::Desc],
        bytes: &[u8],
        out: usize,
        tx: &mut [Vec<R::Desc>],
    ) {
        let mut at = 0;
        let mut used = 0;
        let mut extra: [Option<R::Desc>; 2] = [None, None];
        while at < bytes.len() {
            let desc = if used < chain.len() {
                &mut chain[used]
            } else {
                let Some(slot) = extra.iter_mut().find(|e| e.is_none()) else {
                    break;
                };
                let Some(d) = self.qs.free().pop() else { break };
                slot.insert(d)
            };
            // Safety: the buffer is ours (received or from the free list, in no ring) and no
            // other reference to it exists; the engine's frame is in the gather buffer.
            at += unsafe { self.qs.write(desc, &bytes[at..]) };
            used += 1;
        }
        if at < bytes.len() {
            self.counters.no_frame.fetch_add(1, Relaxed);
            self.qs.free().extend_from_slice(chain);
            self.qs.free().extend(extra.iter().flatten());
            return;
        }
        for (k, desc) in chain
            .iter_mut()
            .chain(extra.iter_mut().flatten())
            .enumerate()
        {
            if k < used {
                R::set_options(desc, if k + 1 < used { XDP_PKT_CONTD } else { 0 });
                tx[out].push(*desc);
            } else {
                self.qs.free().push(*desc);
            }
        }
    }

    fn transmit(&mut self, tx: &mut [Vec<R::Desc>]) {
        for (pi, batch) in tx.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let sent = self.qs.send(pi, batch);
            self.counters.tx.fetch_add(sent as u64, Relaxed);
            if sent < batch.len() {
                self.counters
                    .tx_ring_full
                    .fetch_add((batch.len() - sent) as u64, Relaxed);
                self.qs.free().extend_from_slice(&batch[sent..]);
            }
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests;
