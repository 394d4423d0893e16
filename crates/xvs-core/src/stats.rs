//! Traffic counters and the kernel's 2-second rate estimator (`ip_vs_est.c`), with `-Z` zeroing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

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

/// Counters updated from the data path (relaxed atomics) plus the estimator state.
#[derive(Debug, Default)]
pub struct Stats {
    conns: AtomicU64,
    inpkts: AtomicU64,
    outpkts: AtomicU64,
    inbytes: AtomicU64,
    outbytes: AtomicU64,
    est: Mutex<Estimator>,
}

impl Stats {
    /// Count one new connection.
    pub fn add_conn(&self) {
        self.conns.fetch_add(1, Relaxed);
    }

    /// Count one client→server packet of `bytes` bytes.
    pub fn add_in(&self, bytes: usize) {
        self.inpkts.fetch_add(1, Relaxed);
        self.inbytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Count one server→client packet of `bytes` bytes.
    pub fn add_out(&self, bytes: usize) {
        self.outpkts.fetch_add(1, Relaxed);
        self.outbytes.fetch_add(bytes as u64, Relaxed);
    }

    fn raw(&self) -> Counters {
        Counters {
            conns: self.conns.load(Relaxed),
            inpkts: self.inpkts.load(Relaxed),
            outpkts: self.outpkts.load(Relaxed),
            inbytes: self.inbytes.load(Relaxed),
            outbytes: self.outbytes.load(Relaxed),
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
}
