//! The rings a worker drives, as a trait: the AF_XDP sockets of a queue ([`QueueSet`]) in
//! production, and in the tests an in-memory model of the kernel's side (`mem::MemRings`), so
//! the worker's ring handling (batches, frames of several buffers, the free list, full rings,
//! recycling) is tested without sockets, as s2n-quic-xdp tests its I/O.
//!
//! The descriptors' life: free list → fill ring → (kernel) → rx ring → worker → tx ring →
//! (kernel) → completion ring → free list, or straight back to the free list when a frame is
//! dropped. A descriptor is in exactly one of those places at any time.

use std::os::fd::RawFd;

use xsk_rs::FrameDesc;

use crate::xsk::QueueSet;

/// A worker's sockets on every interface of one queue, with their shared buffers.
pub trait Rings {
    /// A buffer's descriptor.
    type Desc: Copy + Default;

    /// Number of ports (interfaces).
    fn ports(&self) -> usize;
    /// Interface index of a port.
    fn ifindex(&self, port: usize) -> u32;
    /// Whether the port sends frames of several buffers (`XDP_USE_SG`).
    fn multi_buffer(&self, port: usize) -> bool;
    /// The descriptors the worker holds that are in no ring.
    fn free(&mut self) -> &mut Vec<Self::Desc>;
    /// Give free buffers to the port's fill ring (as many as it takes, at most `max`).
    fn refill(&mut self, port: usize, max: usize);
    /// Take the port's completed transmissions back onto the free list.
    fn reclaim(&mut self, port: usize, scratch: &mut [Self::Desc]);
    /// Received buffers of the port, at most `out.len()`.
    fn receive(&mut self, port: usize, out: &mut [Self::Desc]) -> usize;
    /// Queue buffers (their lengths set) for transmission on the port and wake the kernel;
    /// how many were taken (the rest are still the caller's).
    fn send(&mut self, port: usize, descs: &[Self::Desc]) -> usize;
    /// Wake the kernel for a port whose tx ring still holds frames (copy mode sends a bounded
    /// number per wake-up).
    fn kick(&mut self, port: usize);
    /// Sleep until a port has frames, at most `timeout_ms`.
    fn wait(&mut self, timeout_ms: i32);
    /// Whether a port's tx ring still holds frames the kernel has not taken.
    fn tx_pending(&mut self) -> bool {
        false
    }

    /// The descriptor's options (`XDP_PKT_CONTD`).
    fn options(d: &Self::Desc) -> u32;
    /// Set the descriptor's options.
    fn set_options(d: &mut Self::Desc, options: u32);
    /// Length of the data in the buffer.
    fn len(d: &Self::Desc) -> usize;
    /// Address of the buffer's data (for a CPU prefetch; nothing is read).
    fn data_addr(&self, d: &Self::Desc) -> usize;

    /// The buffer's data, as received.
    ///
    /// # Safety
    /// `d` must be a buffer of these rings that the worker owns (received or free, in no ring),
    /// with no mutable reference into it alive.
    unsafe fn data(&self, d: &Self::Desc) -> &[u8];
    /// The whole buffer (headroom, data and the room behind) and the data's offset in it.
    ///
    /// # Safety
    /// `d` must be owned by the worker as for [`Rings::data`], and no other reference into the
    /// buffer may be alive while the returned one is.
    unsafe fn buffer<'f>(&self, d: &mut Self::Desc) -> (&'f mut [u8], usize);
    /// Set the length of the data to transmit, which starts at the data offset.
    ///
    /// # Safety
    /// As [`Rings::buffer`]; `len` must fit behind the data offset.
    unsafe fn set_len(&mut self, d: &mut Self::Desc, len: usize);
    /// Write `bytes` (as many as the buffer's data segment holds) as its data; how many.
    ///
    /// # Safety
    /// As [`Rings::buffer`].
    unsafe fn write(&mut self, d: &mut Self::Desc, bytes: &[u8]) -> usize;
}

impl Rings for QueueSet {
    type Desc = FrameDesc;

    fn ports(&self) -> usize {
        self.ports.len()
    }

    fn ifindex(&self, port: usize) -> u32 {
        self.ports[port].ifindex
    }

    fn multi_buffer(&self, port: usize) -> bool {
        self.ports[port].multi_buffer
    }

    fn free(&mut self) -> &mut Vec<FrameDesc> {
        &mut self.free
    }

    fn refill(&mut self, port: usize, max: usize) {
        let p = &mut self.ports[port];
        let n = p.fq.nb_free(self.free.len().min(max) as u32) as usize;
        let n = n.min(self.free.len());
        if n == 0 {
            return;
        }
        let start = self.free.len() - n;
        // Safety: frames on the free list are owned by this worker and not in any ring.
        let done = unsafe { p.fq.produce(&self.free[start..]) };
        self.free.truncate(self.free.len() - done);
        if done > 0 && p.fq.needs_wakeup() {
            // Kick the driver so it uses the new fill entries.
            let _ = p.fq.wakeup(p.rx.fd_mut(), 0);
        }
    }

    fn reclaim(&mut self, port: usize, scratch: &mut [FrameDesc]) {
        // Safety: descriptors popped from the completion ring are frames the kernel is done
        // with; they become ours again.
        let n = unsafe { self.ports[port].cq.consume(scratch) };
        self.free.extend_from_slice(&scratch[..n]);
    }

    fn receive(&mut self, port: usize, out: &mut [FrameDesc]) -> usize {
        // Safety: consumed descriptors are frames the kernel filled for us; they are ours until
        // we put them in a ring again.
        unsafe { self.ports[port].rx.consume(out) }
    }

    fn send(&mut self, port: usize, descs: &[FrameDesc]) -> usize {
        // Safety: every descriptor is a frame we own with its length set; the ones produced
        // belong to the kernel until they come back on the completion ring.
        unsafe { self.ports[port].tx.produce_and_wakeup(descs) }.unwrap_or(0)
    }

    fn kick(&mut self, port: usize) {
        let p = &mut self.ports[port];
        if p.tx.nb_free_exact() < crate::xsk::RING_SIZE {
            let _ = p.tx.wakeup();
        }
    }

    fn tx_pending(&mut self) -> bool {
        self.ports
            .iter_mut()
            .any(|p| p.tx.nb_free_exact() < crate::xsk::RING_SIZE)
    }

    fn wait(&mut self, timeout_ms: i32) {
        let mut fds: [libc::pollfd; 16] = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 16];
        let n = self.ports.len().min(fds.len());
        for (f, p) in fds.iter_mut().zip(&self.ports) {
            f.fd = p.fd() as RawFd;
            f.events = libc::POLLIN;
        }
        // Safety: `fds` is a valid array of pollfd structures of at least `n` entries.
        unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    }

    fn options(d: &FrameDesc) -> u32 {
        d.options()
    }

    fn set_options(d: &mut FrameDesc, options: u32) {
        d.set_options(options);
    }

    fn len(d: &FrameDesc) -> usize {
        d.lengths().data()
    }

    fn data_addr(&self, d: &FrameDesc) -> usize {
        // Safety: `d` is a descriptor of this UMEM; `data` only computes the segment's address
        // and length, and the slice is not kept.
        let data = unsafe { self.umem.data(d) };
        data.contents().as_ptr() as usize
    }

    unsafe fn data(&self, d: &FrameDesc) -> &[u8] {
        // Safety: per this function's contract the frame is ours and not borrowed mutably.
        let data = unsafe { self.umem.data(d) };
        let bytes = data.contents();
        // Safety: the slice lies in the UMEM, which lives as long as `self`; `data` only
        // borrowed the descriptor.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) }
    }

    unsafe fn buffer<'f>(&self, d: &mut FrameDesc) -> (&'f mut [u8], usize) {
        let (base, data_ptr, cap) = {
            // Safety: per this function's contract the frame is ours and unaliased.
            let (mut head, mut data) = unsafe { self.umem.frame_mut(d) };
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
        (chunk, data_off)
    }

    unsafe fn set_len(&mut self, d: &mut FrameDesc, len: usize) {
        // Safety: per this function's contract the frame is ours and unaliased.
        let mut data = unsafe { self.umem.data_mut(d) };
        data.cursor().set_pos(len);
    }

    unsafe fn write(&mut self, d: &mut FrameDesc, bytes: &[u8]) -> usize {
        // Safety: per this function's contract the frame is ours and unaliased.
        let mut data = unsafe { self.umem.data_mut(d) };
        let mut cur = data.cursor();
        let take = cur.buf_len().min(bytes.len());
        cur.set_pos(0);
        let _ = std::io::Write::write_all(&mut cur, &bytes[..take]);
        take
    }
}

/// An in-memory model of the kernel's side of the rings, for the worker's tests.
#[cfg(test)]
pub mod mem {
    use std::collections::VecDeque;

    use super::Rings;

    /// Bytes per buffer.
    pub const CHUNK: usize = 4096;
    /// Headroom in front of received data, as the kernel leaves (`XDP_PACKET_HEADROOM`).
    pub const HEADROOM: usize = 256;
    const CONTD: u32 = 1;

    /// A buffer's descriptor: its chunk, data length and options.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Desc {
        /// Chunk index.
        pub chunk: usize,
        /// Data length.
        pub len: usize,
        /// Options.
        pub options: u32,
    }

    /// One port's four rings, each bounded.
    #[derive(Debug, Default)]
    pub struct MemPort {
        /// Interface index.
        pub ifindex: u32,
        /// Fill ring.
        pub fill: VecDeque<Desc>,
        /// Receive ring.
        pub rx: VecDeque<Desc>,
        /// Transmit ring.
        pub tx: VecDeque<Desc>,
        /// Completion ring.
        pub comp: VecDeque<Desc>,
        /// Wake-ups of the transmit side.
        pub kicks: usize,
        /// Whether the port takes frames of several buffers.
        pub multi_buffer: bool,
    }

    /// Buffers and rings; the test plays the kernel.
    #[derive(Debug)]
    pub struct MemRings {
        /// The buffers, reached through raw pointers only (frames of a batch are mutable at
        /// once, as in a UMEM): allocated in `new`, freed in `drop`.
        mem: *mut u8,
        chunks: usize,
        /// Free list.
        pub free: Vec<Desc>,
        /// Ports.
        pub ports: Vec<MemPort>,
        /// Capacity of every ring.
        pub ring: usize,
    }

    impl MemRings {
        /// `chunks` buffers, all free; ports with these interface indexes; rings of `ring`.
        pub fn new(chunks: usize, ifindexes: &[u32], ring: usize) -> MemRings {
            let mem = Box::into_raw(vec![0u8; chunks * CHUNK].into_boxed_slice()) as *mut u8;
            MemRings {
                mem,
                chunks,
                free: (0..chunks)
                    .map(|chunk| Desc {
                        chunk,
                        ..Desc::default()
                    })
                    .collect(),
                ports: ifindexes
                    .iter()
                    .map(|&ifindex| MemPort {
                        ifindex,
                        multi_buffer: true,
                        ..MemPort::default()
                    })
                    .collect(),
                ring,
            }
        }

        fn chunk(&self, chunk: usize) -> *mut u8 {
            assert!(chunk < self.chunks);
            // Safety: `chunk` is one of the allocation's chunks.
            unsafe { self.mem.add(chunk * CHUNK) }
        }

        /// The kernel receives `frame` on `port`: into as many fill buffers as it takes,
        /// all but the last flagged as continued. False if the fill or rx ring lacks room.
        pub fn deliver(&mut self, port: usize, frame: &[u8]) -> bool {
            let room = CHUNK - HEADROOM;
            let parts: Vec<&[u8]> = frame.chunks(room).collect();
            let p = &mut self.ports[port];
            if p.fill.len() < parts.len() || p.rx.len() + parts.len() > self.ring {
                return false;
            }
            let n = parts.len();
            for (k, part) in parts.into_iter().enumerate() {
                let mut d = p.fill.pop_front().expect("checked");
                let at = d.chunk * CHUNK + HEADROOM;
                // Safety: the buffer came from the fill ring, so the worker holds no reference
                // into it; `part` fits behind the headroom.
                unsafe {
                    std::ptr::copy_nonoverlapping(part.as_ptr(), self.mem.add(at), part.len())
                };
                d.len = part.len();
                d.options = if k + 1 < n { CONTD } else { 0 };
                p.rx.push_back(d);
            }
            true
        }

        /// The kernel sends what `port`'s tx ring holds: the frames (each gathered from its
        /// buffers), the buffers going to the completion ring.
        pub fn transmit(&mut self, port: usize) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            let mut cur = Vec::new();
            while let Some(d) = self.ports[port].tx.pop_front() {
                // Safety: a buffer in the tx ring is the kernel's: the worker holds no reference.
                cur.extend_from_slice(unsafe { self.data(&d) });
                if d.options & CONTD == 0 {
                    out.push(std::mem::take(&mut cur));
                }
                self.ports[port].comp.push_back(d);
            }
            assert!(
                cur.is_empty(),
                "a frame's last buffer is flagged as continued"
            );
            out
        }

        /// Every buffer, wherever it is: free, in a ring. With none in the worker's hands
        /// between two loops, this is all of them.
        pub fn accounted(&self) -> usize {
            self.free.len()
                + self
                    .ports
                    .iter()
                    .map(|p| p.fill.len() + p.rx.len() + p.tx.len() + p.comp.len())
                    .sum::<usize>()
        }

        /// Whether each chunk is in exactly one place.
        pub fn each_buffer_once(&self) -> bool {
            let mut seen = vec![0u8; self.chunks];
            let all = self.free.iter().chain(
                self.ports
                    .iter()
                    .flat_map(|p| p.fill.iter().chain(&p.rx).chain(&p.tx).chain(&p.comp)),
            );
            for d in all {
                seen[d.chunk] += 1;
            }
            seen.iter().all(|&n| n == 1)
        }
    }

    impl Rings for MemRings {
        type Desc = Desc;

        fn ports(&self) -> usize {
            self.ports.len()
        }

        fn ifindex(&self, port: usize) -> u32 {
            self.ports[port].ifindex
        }

        fn multi_buffer(&self, port: usize) -> bool {
            self.ports[port].multi_buffer
        }

        fn free(&mut self) -> &mut Vec<Desc> {
            &mut self.free
        }

        fn refill(&mut self, port: usize, max: usize) {
            let p = &mut self.ports[port];
            let n = (self.ring - p.fill.len()).min(max).min(self.free.len());
            for _ in 0..n {
                p.fill.push_back(self.free.pop().expect("counted"));
            }
        }

        fn reclaim(&mut self, port: usize, scratch: &mut [Desc]) {
            let p = &mut self.ports[port];
            let n = p.comp.len().min(scratch.len());
            self.free.extend(p.comp.drain(..n));
        }

        fn receive(&mut self, port: usize, out: &mut [Desc]) -> usize {
            let p = &mut self.ports[port];
            let n = p.rx.len().min(out.len());
            for (o, d) in out.iter_mut().zip(p.rx.drain(..n)) {
                *o = d;
            }
            n
        }

        fn send(&mut self, port: usize, descs: &[Desc]) -> usize {
            let p = &mut self.ports[port];
            let n = (self.ring - p.tx.len()).min(descs.len());
            p.tx.extend(&descs[..n]);
            n
        }

        fn kick(&mut self, port: usize) {
            let p = &mut self.ports[port];
            if !p.tx.is_empty() {
                p.kicks += 1;
            }
        }

        fn wait(&mut self, _timeout_ms: i32) {}

        fn options(d: &Desc) -> u32 {
            d.options
        }

        fn set_options(d: &mut Desc, options: u32) {
            d.options = options;
        }

        fn len(d: &Desc) -> usize {
            d.len
        }

        fn data_addr(&self, d: &Desc) -> usize {
            self.chunk(d.chunk) as usize + HEADROOM
        }

        unsafe fn data(&self, d: &Desc) -> &[u8] {
            // Safety: the data lies in the chunk; per the contract nothing writes it meanwhile.
            unsafe { std::slice::from_raw_parts(self.chunk(d.chunk).add(HEADROOM), d.len) }
        }

        unsafe fn buffer<'f>(&self, d: &mut Desc) -> (&'f mut [u8], usize) {
            // Safety: the chunk lies in the allocation, which outlives every frame of a loop;
            // per the contract no other reference into it is alive; chunks do not overlap.
            let chunk = unsafe { std::slice::from_raw_parts_mut(self.chunk(d.chunk), CHUNK) };
            (chunk, HEADROOM)
        }

        unsafe fn set_len(&mut self, d: &mut Desc, len: usize) {
            d.len = len;
        }

        unsafe fn write(&mut self, d: &mut Desc, bytes: &[u8]) -> usize {
            let take = (CHUNK - HEADROOM).min(bytes.len());
            // Safety: per the contract the buffer is the worker's and unaliased; `take` bytes
            // fit behind the headroom.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.chunk(d.chunk).add(HEADROOM),
                    take,
                )
            };
            d.len = take;
            take
        }
    }

    impl Drop for MemRings {
        fn drop(&mut self) {
            let all = std::ptr::slice_from_raw_parts_mut(self.mem, self.chunks * CHUNK);
            // Safety: `mem` is the boxed slice `new` leaked, of this length, freed once.
            drop(unsafe { Box::from_raw(all) });
        }
    }
}
