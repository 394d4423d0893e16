//! The worker loop: one thread per queue index, owning that queue's sockets on every interface.
//! Receive a batch, hand each frame to the engine, transmit by verdict, recycle frames; no
//! allocation and no lock held across a batch on the fast path (the engine's shard locks are
//! taken and released per packet).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use xsk_rs::FrameDesc;
use xvs_core::{Engine, Frame, Routes, Tables, Time, Verdict, WorkerState};

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
    /// Periodic work (about every 10 ms).
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
        }
    }
}

impl Handler for EngineHandler {
    fn begin(&mut self) {
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
    }

    fn housekeeping(&mut self, now: Time) {
        self.engine.conns.expire_step(now);
    }
}

/// Everything a worker needs.
#[derive(Debug)]
pub struct Worker<H: Handler> {
    /// The sockets of this queue.
    pub qs: QueueSet,
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

impl<H: Handler> Worker<H> {
    /// Fill every fill ring from the free frames.
    fn refill(&mut self, port: usize) {
        let qs = &mut self.qs;
        let p = &mut qs.ports[port];
        let n = p.fq.nb_free(qs.free.len().min(BATCH * 4) as u32) as usize;
        let n = n.min(qs.free.len());
        if n == 0 {
            return;
        }
        let start = qs.free.len() - n;
        // Safety: frames on the free list are owned by this worker and not in any ring.
        let done = unsafe { p.fq.produce(&qs.free[start..]) };
        qs.free.truncate(qs.free.len() - done);
        if done > 0 && p.fq.needs_wakeup() {
            // Kick the driver so it uses the new fill entries.
            let _ = p.fq.wakeup(p.rx.fd_mut(), 0);
        }
    }

    fn reclaim(&mut self, port: usize, scratch: &mut [FrameDesc]) {
        let qs = &mut self.qs;
        // Safety: descriptors popped from the completion ring are frames the kernel is done
        // with; they become ours again.
        let n = unsafe { qs.ports[port].cq.consume(scratch) };
        qs.free.extend_from_slice(&scratch[..n]);
    }

    /// Run until `stop` is set.
    pub fn run(&mut self) {
        let nports = self.qs.ports.len();
        let mut rx = vec![FrameDesc::default(); BATCH + MAX_BUFFERS];
        let mut gather = vec![0u8; BATCH * GATHER_SLOT];
        let mut scratch = vec![FrameDesc::default(); BATCH * 4];
        let mut tx: Vec<Vec<FrameDesc>> =
            (0..nports).map(|_| Vec::with_capacity(BATCH * 2)).collect();
        let mut last_house = Instant::now();
        let mut last_rx = last_house;
        let mut pollfds: Vec<libc::pollfd> = self
            .qs
            .ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while !self.stop.load(Relaxed) {
            self.handler.begin();
            // One clock read per loop, for the engine's time and the housekeeping period.
            let instant = Instant::now();
            let now = Time((instant - self.epoch).as_millis() as u64);
            let mut received = 0;
            for pi in 0..nports {
                self.reclaim(pi, &mut scratch);
                self.refill(pi);
                // Safety: consumed descriptors are frames the kernel filled for us; they are ours
                // until we put them in a ring again.
                let mut n = unsafe { self.qs.ports[pi].rx.consume(&mut rx[..BATCH]) };
                // A frame's buffers are published together: take the rest of a frame the
                // batch cut.
                while n > 0 && n < rx.len() && rx[n - 1].options() & XDP_PKT_CONTD != 0 {
                    // Safety: as above.
                    let more = unsafe { self.qs.ports[pi].rx.consume(&mut rx[n..n + 1]) };
                    if more == 0 {
                        break;
                    }
                    n += more;
                }
                received += n;
                self.prefetch(&rx[..n]);
                self.handle_batch(pi, &mut rx[..n], now, &mut tx, &mut gather);
            }
            if received > 0 {
                self.counters.rx.fetch_add(received as u64, Relaxed);
                self.counters.rx_batches.fetch_add(1, Relaxed);
            }
            self.transmit(&mut tx);
            self.kick_pending();
            if instant - last_house >= Duration::from_millis(10) {
                last_house = instant;
                self.handler.housekeeping(now);
            }
            if received > 0 {
                last_rx = instant;
            } else if self.busy_poll || instant - last_rx < self.spin {
                std::hint::spin_loop();
            } else {
                // Idle: sleep in poll() until a socket has frames (bounded, to see `stop`).
                // Safety: pollfds is a valid array of pollfd structures of the given length.
                unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 10) };
            }
        }
    }

    /// Ask for the headers of every frame of the batch at once: the kernel wrote them on
    /// another core, so each first touch is a cache miss; issued together, the misses overlap
    /// instead of stalling the handler one frame at a time.
    fn prefetch(&self, batch: &[FrameDesc]) {
        for desc in batch {
            // Safety: `desc` came from this UMEM's rx ring (see `run`); `data` only computes the
            // segment's address and length, and no mutable reference to the frame exists now.
            let data = unsafe { self.qs.umem.data(desc) };
            // The first two lines of the frame: its headers.
            let p = data.contents().as_ptr() as usize;
            crate::prefetch(p);
            crate::prefetch(p + 64);
        }
    }

    /// The frame behind a received descriptor: its whole UMEM chunk, the packet at the data
    /// offset (also returned).
    ///
    /// # Safety
    /// `desc` must be a frame of this worker's UMEM that the worker owns (received, not yet put
    /// in any ring), and the returned frame must be dropped before the descriptor is.
    unsafe fn frame_of<'f>(&self, desc: &mut FrameDesc) -> (Frame<'f>, usize) {
        let len = desc.lengths().data();
        let (base, data_ptr, cap) = {
            // Safety: per this function's contract the frame is ours and unaliased.
            let (mut head, mut data) = unsafe { self.qs.umem.frame_mut(desc) };
            (
                head.contents_mut().as_mut_ptr(),
                data.contents_mut().as_mut_ptr(),
                data.cursor().buf_len(),
            )
        };
        let data_off = data_ptr as usize - base as usize;
        // Safety: [base, data_ptr + cap) is exactly this frame's chunk of the UMEM (xsk-rs gives
        // the frame start as the headroom pointer and the data segment runs to the chunk's end);
        // the worker owns the frame and, per the contract, no other reference into it outlives
        // the returned one.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base, data_off + cap) };
        (Frame::new(chunk, data_off, len), data_off)
    }

    /// Copy the buffers of a multi-buffer frame into `slot` behind [`GATHER_HEADROOM`]: the
    /// frame the engine sees. None if it does not fit.
    fn gather(&self, chain: &[FrameDesc], slot: &mut [u8]) -> Option<usize> {
        if chain.len() > MAX_BUFFERS {
            return None;
        }
        let mut at = GATHER_HEADROOM;
        for desc in chain {
            // Safety: every buffer of the chain is ours (received, in no ring); this borrow ends
            // before any other use of it.
            let data = unsafe { self.qs.umem.data(desc) };
            let bytes = data.contents();
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
        descs: &mut [FrameDesc],
        now: Time,
        tx: &mut [Vec<FrameDesc>],
        gather: &mut [u8],
    ) {
        // Frame i is descs[firsts[i]..firsts[i + 1]].
        let mut firsts = [0usize; BATCH + 1];
        let mut n = 0;
        let mut i = 0;
        while i < descs.len() && n < BATCH {
            firsts[n] = i;
            while i < descs.len() && descs[i].options() & XDP_PKT_CONTD != 0 {
                i += 1;
            }
            i += 1;
            n += 1;
        }
        let end = i.min(descs.len());
        firsts[n] = end;
        let mut frames: [Frame<'_>; BATCH] = std::array::from_fn(|_| Frame::new(&mut [], 0, 0));
        // The data offset of each single-buffer frame in its chunk.
        let mut offsets = [0usize; BATCH];
        let mut slots = gather.chunks_mut(GATHER_SLOT);
        for k in 0..n {
            let chain = &mut descs[firsts[k]..firsts[k + 1]];
            let slot = slots.next().expect("one gather slot per frame of a batch");
            if chain.len() == 1 {
                // Safety: the descriptors came from this UMEM's rx ring in `run`; they are ours
                // until `dispatch` puts them in a ring or on the free list, after their frame is
                // done with (each frame is used only up to its own dispatch).
                let (f, off) = unsafe { self.frame_of(&mut chain[0]) };
                frames[k] = f;
                offsets[k] = off;
                continue;
            }
            self.counters.multi_buffer.fetch_add(1, Relaxed);
            match self.gather(chain, slot) {
                Some(len) => frames[k] = Frame::new(slot, GATHER_HEADROOM, len),
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
            if chain.len() == 1 {
                self.dispatch(port, &mut chain[0], verdicts[k], f, offsets[k], tx);
            } else {
                self.dispatch_chain(port, chain, verdicts[k], f, tx);
            }
        }
        // Buffers past the last whole frame (a frame longer than the batch could take).
        for desc in &descs[end..] {
            self.qs.free.push(*desc);
        }
    }

    /// Where a frame goes: the index of its egress port, or None once it has been passed to
    /// the kernel or dropped (and counted).
    fn egress(&mut self, port: usize, verdict: Verdict, frame: &mut Frame<'_>) -> Option<usize> {
        match verdict {
            Verdict::Forward { ifindex, .. } => {
                match self.qs.ports.iter().position(|p| p.ifindex == ifindex) {
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
    /// changes hands here.
    fn dispatch(
        &mut self,
        port: usize,
        desc: &mut FrameDesc,
        verdict: Verdict,
        mut frame: Frame<'_>,
        data_off: usize,
        tx: &mut [Vec<FrameDesc>],
    ) {
        let (start, new_len) = (frame.start(), frame.len());
        let Some(out) = self.egress(port, verdict, &mut frame) else {
            self.qs.free.push(*desc);
            return;
        };
        if start != data_off {
            // The frame grew into the headroom (tunnel, ICMP error, and no room behind it in the
            // chunk). xsk-rs transmits from the descriptor's fixed address, so move the frame
            // there: one copy, only on these paths.
            frame
                .buffer_mut()
                .copy_within(start..start + new_len, data_off);
        }
        // Safety: the frame is still ours (not yet in a ring) and its `Frame` is not used again.
        let mut data = unsafe { self.qs.umem.data_mut(desc) };
        data.cursor().set_pos(new_len);
        desc.set_options(0);
        tx[out].push(*desc);
    }

    /// Act on the verdict of a frame gathered from several buffers: its bytes, as the engine
    /// left them, are written back over the buffers (with one more from the free list when
    /// encapsulation made it longer than they hold), which go out as one multi-buffer frame.
    fn dispatch_chain(
        &mut self,
        port: usize,
        chain: &mut [FrameDesc],
        verdict: Verdict,
        mut frame: Frame<'_>,
        tx: &mut [Vec<FrameDesc>],
    ) {
        let out = if frame.is_empty() {
            None
        } else {
            self.egress(port, verdict, &mut frame)
        };
        let Some(out) = out else {
            self.qs.free.extend_from_slice(chain);
            return;
        };
        let first_len = chain[0].lengths().data();
        let gathered: usize = chain.iter().map(|d| d.lengths().data()).sum();
        if frame.start() == GATHER_HEADROOM && frame.len() == gathered && first_len >= 128 {
            // Same place, same length: the engine rewrote headers only (Ethernet, IP and the
            // ports and checksum of TCP or UDP: the first 74 bytes at most), all in the first
            // buffer; the others go out as they came.
            // Safety: the first buffer is ours (received, in no ring); no other reference to it
            // exists (the engine's frame is in the gather buffer).
            let mut data = unsafe { self.qs.umem.data_mut(&mut chain[0]) };
            data.contents_mut()
                .copy_from_slice(&frame.data()[..first_len]);
            let n = chain.len();
            for (k, desc) in chain.iter_mut().enumerate() {
                desc.set_options(if k + 1 == n { 0 } else { XDP_PKT_CONTD });
                tx[out].push(*desc);
            }
            return;
        }
        let bytes = frame.data();
        let mut at = 0;
        let mut used = 0;
        let mut extra: [Option<FrameDesc>; 2] = [None, None];
        while at < bytes.len() {
            let desc = if used < chain.len() {
                &mut chain[used]
            } else {
                let Some(slot) = extra.iter_mut().find(|e| e.is_none()) else {
                    break;
                };
                let Some(d) = self.qs.free.pop() else { break };
                slot.insert(d)
            };
            // Safety: the buffer is ours (received or from the free list, in no ring) and no
            // other reference to it exists; the engine's frame is in the gather buffer.
            let mut data = unsafe { self.qs.umem.data_mut(desc) };
            let mut cur = data.cursor();
            let take = cur.buf_len().min(bytes.len() - at);
            cur.set_pos(0);
            let _ = std::io::Write::write_all(&mut cur, &bytes[at..at + take]);
            at += take;
            used += 1;
        }
        if at < bytes.len() {
            self.counters.no_frame.fetch_add(1, Relaxed);
            self.qs.free.extend_from_slice(chain);
            self.qs.free.extend(extra.iter().flatten());
            return;
        }
        for (k, desc) in chain
            .iter_mut()
            .chain(extra.iter_mut().flatten())
            .enumerate()
        {
            if k < used {
                desc.set_options(if k + 1 < used { XDP_PKT_CONTD } else { 0 });
                tx[out].push(*desc);
            } else {
                self.qs.free.push(*desc);
            }
        }
    }

    /// Kick every socket whose TX ring still holds frames the kernel has not taken. In copy
    /// mode the kernel sends at most 32 frames per kick (`__xsk_generic_xmit`), and otherwise
    /// only when `poll()` drives it: a worker that never sleeps in `poll()` (`--busy-poll`), or
    /// one that wakes to new frames before the ring is drained, would leave the rest of a burst
    /// in the ring until it next has something to send, and TCP would wait for them in
    /// retransmission timeouts.
    fn kick_pending(&mut self) {
        for p in &mut self.qs.ports {
            if p.tx.nb_free_exact() < crate::xsk::RING_SIZE {
                let _ = p.tx.wakeup();
            }
        }
    }

    fn transmit(&mut self, tx: &mut [Vec<FrameDesc>]) {
        for (pi, batch) in tx.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let p = &mut self.qs.ports[pi];
            // Safety: every descriptor in the batch is a frame we own with its length set; after
            // this call the ones produced belong to the kernel until they come back on the
            // completion ring.
            let sent = unsafe { p.tx.produce_and_wakeup(batch) }.unwrap_or(0);
            self.counters.tx.fetch_add(sent as u64, Relaxed);
            if sent < batch.len() {
                self.counters
                    .tx_ring_full
                    .fetch_add((batch.len() - sent) as u64, Relaxed);
                self.qs.free.extend_from_slice(&batch[sent..]);
            }
            batch.clear();
        }
    }
}
