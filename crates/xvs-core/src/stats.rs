//! Traffic counters and the kernel's 2-second rate estimator (`ip_vs_est.c`), with `-Z` zeroing.

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{AcqRel, Relaxed, Release},
};
use std::sync::Mutex;

/// Workers that count in slots of their own (see [`WorkerSlot`]); more workers count in the
/// shared atomics.
pub const WORKER_SLOTS: usize = 8;

/// The slots claimed in this process, one bit each.
static CLAIMED: AtomicU32 = AtomicU32::new(0);

/// A worker's right to count in slot `i` of every [`Stats`] of the process. A slot has one
/// holder, and the engine takes it by `&mut`, so a slot has one writer: its counters are
/// updated with a plain load and store (like the kernel's per-CPU counters) instead of a
/// locked read-modify-write, which every packet would otherwise pay six times. Readers sum the
/// slots. Dropping it frees the slot for the next worker.
#[derive(Debug)]
pub struct WorkerSlot(Option<usize>);

impl WorkerSlot {
    /// Claim a free slot; when all [`WORKER_SLOTS`] are taken, the holder counts in the shared
    /// atomics (correct, only slower).
    pub fn claim() -> WorkerSlot {
        let all = (1u32 << WORKER_SLOTS) - 1;
        let mut cur = CLAIMED.load(Relaxed);
        loop {
            let free = !cur & all;
            if free == 0 {
                return WorkerSlot(None);
            }
            let i = free.trailing_zeros();
            match CLAIMED.compare_exchange_weak(cur, cur | 1 << i, AcqRel, Relaxed) {
                Ok(_) => return WorkerSlot(Some(i as usize)),
                Err(c) => cur = c,
            }
        }
    }

    /// Whether the holder has a slot of its own.
    pub fn is_own(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn counting(&self) -> Counting {
        Counting(self.0)
    }
}

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            CLAIMED.fetch_and(!(1u32 << i), Release);
        }
    }
}

/// How the data path counts a packet: in a worker's slot, or in the shared atomics. Made only
/// from a [`WorkerSlot`] borrowed mutably, or as [`Counting::SHARED`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counting(Option<usize>);

impl Counting {
    /// Count with atomic read-modify-writes (any thread).
    pub(crate) const SHARED: Counting = Counting(None);
}

const CONNS: usize = 0;
const INPKTS: usize = 1;
const OUTPKTS: usize = 2;
const INBYTES: usize = 3;
const OUTBYTES: usize = 4;

/// One worker's counters of one [`Stats`], alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot([AtomicU64; 5]);

/// The five counters of a service, a destination or the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Connections created (templates not counted).
    pub conns: u64,
    /// Client→server packets.
    pub inpkts: u64,
    /// Server→client packets (NAT only).
    pub outpkts: u64,
    /// Client→server bytes (L3 length).
    pub inbytes: u64,
    /// Server→client bytes (L3 length).
    pub outbytes: u64,
}

impl Counters {
    fn minus(&self, z: &Counters) -> Counters {
        Counters {
            conns: self.conns.wrapping_sub(z.conns),
            inpkts: self.inpkts.wrapping_sub(z.inpkts),
            outpkts: self.outpkts.wrapping_sub(z.outpkts),
            inbytes: self.inbytes.wrapping_sub(z.inbytes),
            outbytes: self.outbytes.wrapping_sub(z.outbytes),
        }
    }
}

/// Estimated rates as ipvsadm `--rate` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rates {
    /// Connections per second.
    pub cps: u64,
    /// Incoming packets per second.
    pub inpps: u64,
    /// Outgoing packets per second.
    pub outpps: u64,
    /// Incoming bytes per second.
    pub inbps: u64,
    /// Outgoing bytes per second.
    pub outbps: u64,
}

#[derive(Debug, Default)]
struct Estimator {
    zero: Counters,
    last: Counters,
    // Scaled averages: conns/packets ×2^10, bytes ×2^5 (ip_vs_est.c).
    avg: [i64; 5],
}

/// Counters updated from the data path (relaxed atomics shared by all, plus one slot per
/// worker, see [`WorkerSlot`]) and the estimator state.
#[derive(Debug, Default)]
pub struct Stats {
    shared: [AtomicU64; 5],
    slots: [Slot; WORKER_SLOTS],
    est: Mutex<Estimator>,
}

impl Stats {
    fn add(&self, c: Counting, i: usize, v: u64) {
        match c.0 {
            Some(w) => {
                // Only the slot's holder writes it (see WorkerSlot): no lost update.
                let a = &self.slots[w].0[i];
                a.store(a.load(Relaxed).wrapping_add(v), Relaxed);
            }
            None => {
                self.shared[i].fetch_add(v, Relaxed);
            }
        }
    }

    /// Count one new connection.
    pub fn add_conn(&self) {
        self.count_conn(Counting::SHARED);
    }

    /// Count one client→server packet of `bytes` bytes.
    pub fn add_in(&self, bytes: usize) {
        self.count_in(Counting::SHARED, bytes);
    }

    /// Count one server→client packet of `bytes` bytes.
    pub fn add_out(&self, bytes: usize) {
        self.count_out(Counting::SHARED, bytes);
    }

    pub(crate) fn count_conn(&self, c: Counting) {
        self.add(c, CONNS, 1);
    }

    pub(crate) fn count_in(&self, c: Counting, bytes: usize) {
        self.add(c, INPKTS, 1);
        self.add(c, INBYTES, bytes as u64);
    }

    pub(crate) fn count_in_n(&self, c: Counting, packets: u64, bytes: u64) {
        self.add(c, INPKTS, packets);
        self.add(c, INBYTES, bytes);
    }

    pub(crate) fn count_out_n(&self, c: Counting, packets: u64, bytes: u64) {
        self.add(c, OUTPKTS, packets);
        self.add(c, OUTBYTES, bytes);
    }

    pub(crate) fn count_out(&self, c: Counting, bytes: usize) {
        self.add(c, OUTPKTS, 1);
        self.add(c, OUTBYTES, bytes as u64);
    }

    fn raw(&self) -> Counters {
        let sum = |i: usize| {
            self.slots
                .iter()
                .fold(self.shared[i].load(Relaxed), |a, s| {
                    a.wrapping_add(s.0[i].load(Relaxed))
                })
        };
        Counters {
            conns: sum(CONNS),
            inpkts: sum(INPKTS),
            outpkts: sum(OUTPKTS),
            inbytes: sum(INBYTES),
            outbytes: sum(OUTBYTES),
        }
    }

    fn est(&self) -> std::sync::MutexGuard<'_, Estimator> {
        // A poisoned estimator only means a reader panicked; the numbers are still valid.
        self.est.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters since the last zeroing.
    pub fn counters(&self) -> Counters {
        let raw = self.raw();
        raw.minus(&self.est().zero)
    }

    /// The current rate estimates.
    pub fn rates(&self) -> Rates {
        let e = self.est();
        let pps = |v: i64| ((v + 511) >> 10).max(0) as u64;
        let bps = |v: i64| ((v + 15) >> 5).max(0) as u64;
        Rates {
            cps: pps(e.avg[0]),
            inpps: pps(e.avg[1]),
            outpps: pps(e.avg[2]),
            inbps: bps(e.avg[3]),
            outbps: bps(e.avg[4]),
        }
    }

    /// One estimator step; the caller runs it every 2 seconds.
    pub fn estimate(&self) {
        let cur = self.raw();
        let mut e = self.est();
        let d = cur.minus(&e.last);
        let rates = [
            (d.conns as i64) << 9,
            (d.inpkts as i64) << 9,
            (d.outpkts as i64) << 9,
            (d.inbytes as i64) << 4,
            (d.outbytes as i64) << 4,
        ];
        for (avg, rate) in e.avg.iter_mut().zip(rates) {
            *avg += (rate - *avg) >> 2;
        }
        e.last = cur;
    }

    /// `-Z`: the current values become the zero point and the averages restart.
    pub fn zero(&self) {
        let cur = self.raw();
        let mut e = self.est();
        e.zero = cur;
        e.last = cur;
        e.avg = [0; 5];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroing_and_rates() {
        let s = Stats::default();
        for _ in 0..10 {
            s.add_conn();
            s.add_in(100);
        }
        assert_eq!(s.counters().conns, 10);
        s.zero();
        assert_eq!(s.counters(), Counters::default());
        // 2000 packets in 2 s = 1000 pps; the EWMA reaches it gradually.
        let mut last = 0;
        for _ in 0..80 {
            for _ in 0..2000 {
                s.add_in(1000);
            }
            s.estimate();
            let r = s.rates();
            assert!(r.inpps >= last);
            last = r.inpps;
        }
        assert_eq!(s.rates().inpps, 1000);
        assert_eq!(s.rates().inbps, 1_000_000);
        assert_eq!(s.counters().inpkts, 160_000);
    }

    /// Workers with slots of their own and the shared counters add up, across threads, with
    /// nothing lost; a freed slot is claimed again.
    #[test]
    fn worker_slots_add_up() {
        let s = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let w = WorkerSlot::claim();
                    for _ in 0..10_000 {
                        s.count_in(w.counting(), 10);
                        s.add_out(1);
                    }
                    w.is_own()
                })
            })
            .collect();
        let own = threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .filter(|own| *own)
            .count();
        assert!(own > 0);
        let c = s.counters();
        assert_eq!((c.inpkts, c.inbytes), (40_000, 400_000));
        assert_eq!((c.outpkts, c.outbytes), (40_000, 40_000));
        let again: Vec<WorkerSlot> = (0..WORKER_SLOTS).map(|_| WorkerSlot::claim()).collect();
        assert!(again.iter().filter(|w| w.is_own()).count() > 0);
    }
}
