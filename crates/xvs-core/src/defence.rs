//! The IPVS DoS defences (`drop_entry`, `drop_packet`, `secure_tcp`, with `amemthresh` and
//! `am_droprate` as their triggers), with mainline's semantics (v6.12:
//! `net/netfilter/ipvs/ip_vs_ctl.c`, `update_defense_level` and `defense_work_handler`;
//! `include/net/ip_vs.h`, `ip_vs_todrop`; `ip_vs_conn.c`, `ip_vs_random_dropentry` and
//! `todrop_entry`). One difference: the kernel compares the system's free memory with
//! `amemthresh`; xvs compares the connection table's free room, expressed in pages of the
//! memory it would take ([`crate::conn::ConnTable::free_pages`]), since the table's capacity,
//! not the system's memory, is what a flood exhausts.
//!
//! Every value is an atomic: the sysctls are set by the control plane, the levels by the
//! once-a-second [`Defence::update`], and the data path reads them without a lock.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};

/// The sysctls of the defences, by their kernel names.
pub const NAMES: [&str; 5] = [
    "am_droprate",
    "amemthresh",
    "drop_entry",
    "drop_packet",
    "secure_tcp",
];

/// The defences' settings and state.
#[derive(Debug)]
pub struct Defence {
    /// `drop_entry` (0-3; the automatic modes 1 and 2 switch between each other).
    drop_entry: AtomicI32,
    /// `drop_packet` (0-3).
    drop_packet: AtomicI32,
    /// `secure_tcp` (0-3).
    secure_tcp: AtomicI32,
    /// `amemthresh`, in pages of free room.
    amemthresh: AtomicI32,
    /// `am_droprate`: drop one in this many new connections in `drop_packet` mode 3.
    am_droprate: AtomicI32,
    /// Whether random entry dropping is on (`ipvs->dropentry`).
    dropentry_on: AtomicBool,
    /// Drop one in this many new connections; 0: none (`ipvs->drop_rate`).
    drop_rate: AtomicI32,
    /// Counts down to the next dropped new connection (`ipvs->drop_counter`).
    drop_counter: AtomicI32,
    /// Whether the secure TCP state table is in force.
    secure_on: AtomicBool,
    /// The `secure_tcp` value of the last update (`ipvs->old_secure_tcp`).
    old_secure_tcp: AtomicI32,
    /// Counters of what the defences did.
    pub counters: DefenceCounters,
}

/// What the defences did.
#[derive(Debug, Default)]
pub struct DefenceCounters {
    /// New connections dropped by `drop_packet`.
    pub dropped_packets: AtomicU64,
    /// Entries removed by `drop_entry`.
    pub dropped_entries: AtomicU64,
    /// Seconds (updates) with the table short of room (`amemthresh` crossed).
    pub short_updates: AtomicU64,
    /// Switches to the secure TCP state table.
    pub secure_switches: AtomicU64,
}

impl Default for Defence {
    fn default() -> Self {
        Defence {
            drop_entry: AtomicI32::new(0),
            drop_packet: AtomicI32::new(0),
            secure_tcp: AtomicI32::new(0),
            amemthresh: AtomicI32::new(1024),
            am_droprate: AtomicI32::new(10),
            dropentry_on: AtomicBool::new(false),
            drop_rate: AtomicI32::new(0),
            drop_counter: AtomicI32::new(0),
            secure_on: AtomicBool::new(false),
            old_secure_tcp: AtomicI32::new(0),
            counters: DefenceCounters::default(),
        }
    }
}

/// Why a sysctl could not be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// Not one of [`NAMES`].
    Unknown,
    /// Out of the kernel's range (EINVAL).
    Invalid,
}

impl Defence {
    fn field(&self, name: &str) -> Option<&AtomicI32> {
        Some(match name {
            "am_droprate" => &self.am_droprate,
            "amemthresh" => &self.amemthresh,
            "drop_entry" => &self.drop_entry,
            "drop_packet" => &self.drop_packet,
            "secure_tcp" => &self.secure_tcp,
            _ => return None,
        })
    }

    /// The value of sysctl `name`, as the kernel shows it (the automatic modes read 1 or 2).
    pub fn get(&self, name: &str) -> Option<i32> {
        self.field(name).map(|f| f.load(Relaxed))
    }

    /// Set sysctl `name` to `value`, with the kernel's checks: the three modes take 0 to 3
    /// (`proc_do_defense_mode`, which also runs an update at once: the caller passes the
    /// table's free room), the thresholds any integer (`proc_dointvec`).
    pub fn set(&self, name: &str, value: i32, free_pages: u64) -> Result<(), SetError> {
        let f = self.field(name).ok_or(SetError::Unknown)?;
        let mode = matches!(name, "drop_entry" | "drop_packet" | "secure_tcp");
        if mode && !(0..=3).contains(&value) {
            return Err(SetError::Invalid);
        }
        f.store(value, Relaxed);
        if mode {
            self.update(free_pages);
        }
        Ok(())
    }

    /// `update_defense_level`, run once a second and after a mode is set, with the table's
    /// free room in pages. Returns whether random entry dropping is on.
    pub fn update(&self, free_pages: u64) -> bool {
        let thresh = self.amemthresh.load(Relaxed);
        let avail = i64::try_from(free_pages).unwrap_or(i64::MAX);
        let nomem = avail < i64::from(thresh);
        if nomem {
            self.counters.short_updates.fetch_add(1, Relaxed);
        }
        // drop_entry
        let on = match self.drop_entry.load(Relaxed) {
            1 if nomem => {
                self.drop_entry.store(2, Relaxed);
                true
            }
            2 if !nomem => {
                self.drop_entry.store(1, Relaxed);
                false
            }
            2 => true,
            3 => true,
            _ => false,
        };
        self.dropentry_on.store(on, Relaxed);
        // drop_packet: the rate grows as the room shrinks below the threshold.
        let rate_now = || {
            let r = i64::from(thresh) / (i64::from(thresh) - avail);
            r.clamp(0, i64::from(i32::MAX)) as i32
        };
        match self.drop_packet.load(Relaxed) {
            1 | 2 if nomem => {
                let r = rate_now();
                self.drop_rate.store(r, Relaxed);
                self.drop_counter.store(r, Relaxed);
                self.drop_packet.store(2, Relaxed);
            }
            2 => {
                self.drop_rate.store(0, Relaxed);
                self.drop_packet.store(1, Relaxed);
            }
            3 => self
                .drop_rate
                .store(self.am_droprate.load(Relaxed), Relaxed),
            _ => self.drop_rate.store(0, Relaxed),
        }
        // secure_tcp: the state table follows the value (> 1: secure).
        match self.secure_tcp.load(Relaxed) {
            1 if nomem => self.secure_tcp.store(2, Relaxed),
            2 if !nomem => self.secure_tcp.store(1, Relaxed),
            _ => {}
        }
        let secure = self.secure_tcp.load(Relaxed);
        let old = self.old_secure_tcp.swap(secure, Relaxed);
        if (old >= 2) != (secure >= 2) && secure >= 2 {
            self.counters.secure_switches.fetch_add(1, Relaxed);
        }
        self.secure_on.store(secure >= 2, Relaxed);
        on
    }

    /// `ip_vs_todrop`: whether to drop a packet that would create a connection (one in every
    /// `drop_rate`). The kernel counts down under a lock; here the workers share an atomic
    /// counter, so the rate holds over all of them.
    #[inline]
    pub fn todrop(&self) -> bool {
        let rate = self.drop_rate.load(Relaxed);
        if rate == 0 {
            return false;
        }
        if self.drop_counter.fetch_sub(1, Relaxed) > 1 {
            return false;
        }
        self.drop_counter.store(rate, Relaxed);
        self.counters.dropped_packets.fetch_add(1, Relaxed);
        true
    }

    /// Whether the secure TCP state table (`tcp_states_dos`) is in force.
    pub fn secure_flag(&self) -> &AtomicBool {
        &self.secure_on
    }

    /// Whether random entry dropping is on.
    pub fn dropping_entries(&self) -> bool {
        self.dropentry_on.load(Relaxed)
    }

    /// The current drop rate of new connections (0: none).
    pub fn drop_rate(&self) -> i32 {
        self.drop_rate.load(Relaxed)
    }
}

/// `todrop_entry`'s per-packet-count counters: an entry with k (1..8) incoming packets is
/// dropped one time in k; entries with 0 or more than 8 never.
#[derive(Debug, Default)]
pub struct DropEntryCounters([i8; 9]);

impl DropEntryCounters {
    /// Whether the candidate with `in_pkts` incoming packets goes (the caller has checked
    /// that it was not refreshed in the last 60 s).
    pub fn todrop(&mut self, in_pkts: u32) -> bool {
        let Ok(i) = usize::try_from(in_pkts) else {
            return false;
        };
        if i == 0 || i > 8 {
            return false;
        }
        self.0[i] -= 1;
        if self.0[i] > 0 {
            return false;
        }
        self.0[i] = i as i8;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_modes_follow_the_room() {
        let d = Defence::default();
        for n in ["drop_entry", "drop_packet", "secure_tcp"] {
            d.set(n, 1, 10_000).unwrap();
        }
        assert!(!d.dropping_entries());
        assert_eq!(d.drop_rate(), 0);
        // 1024 - 768 = 256: one in four new connections.
        assert!(d.update(768));
        assert_eq!(d.get("drop_entry"), Some(2));
        assert_eq!(d.get("drop_packet"), Some(2));
        assert_eq!(d.get("secure_tcp"), Some(2));
        assert_eq!(d.drop_rate(), 4);
        assert!(d.secure_flag().load(Relaxed));
        let dropped: Vec<bool> = (0..8).map(|_| d.todrop()).collect();
        assert_eq!(
            dropped,
            [false, false, false, true, false, false, false, true]
        );
        assert_eq!(d.counters.dropped_packets.load(Relaxed), 2);
        // Room again: everything off, the sysctls back to 1.
        assert!(!d.update(5000));
        for n in ["drop_entry", "drop_packet", "secure_tcp"] {
            assert_eq!(d.get(n), Some(1), "{n}");
        }
        assert_eq!(d.drop_rate(), 0);
        assert!(!d.todrop());
        assert!(!d.secure_flag().load(Relaxed));
        assert_eq!(d.counters.secure_switches.load(Relaxed), 1);
    }

    #[test]
    fn mode_three_is_always_on_and_mode_zero_never() {
        let d = Defence::default();
        d.set("drop_packet", 3, 1 << 20).unwrap();
        d.set("drop_entry", 3, 1 << 20).unwrap();
        d.set("secure_tcp", 3, 1 << 20).unwrap();
        assert_eq!(d.drop_rate(), 10);
        assert!(d.dropping_entries());
        assert!(d.secure_flag().load(Relaxed));
        d.set("am_droprate", 2, 1 << 20).unwrap();
        d.update(1 << 20);
        assert_eq!(d.drop_rate(), 2);
        for n in ["drop_entry", "drop_packet", "secure_tcp"] {
            d.set(n, 0, 0).unwrap();
            assert_eq!(d.get(n), Some(0));
        }
        assert!(!d.dropping_entries() && d.drop_rate() == 0 && !d.secure_flag().load(Relaxed));
    }

    #[test]
    fn out_of_range_and_unknown_are_refused() {
        let d = Defence::default();
        assert_eq!(d.set("drop_entry", 4, 0), Err(SetError::Invalid));
        assert_eq!(d.set("secure_tcp", -1, 0), Err(SetError::Invalid));
        assert_eq!(d.set("drop_rate", 1, 0), Err(SetError::Unknown));
        assert_eq!(d.get("drop_entry"), Some(0));
        d.set("amemthresh", 4096, 0).unwrap();
        assert_eq!(d.get("amemthresh"), Some(4096));
    }

    #[test]
    fn entries_are_dropped_one_in_k_by_their_packet_count() {
        let mut c = DropEntryCounters::default();
        assert!(!(0..10).any(|_| c.todrop(0)));
        assert!(!(0..10).any(|_| c.todrop(9)));
        assert!((0..5).all(|_| c.todrop(1)));
        let three: Vec<bool> = (0..6).map(|_| c.todrop(3)).collect();
        // The counter starts at 0: the first candidate goes, then one in three.
        assert_eq!(three, [true, false, false, true, false, false]);
    }
}
