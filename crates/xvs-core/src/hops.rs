//! A worker's own next-hop cache.
//!
//! Every forwarded packet needs the MACs, egress and MTU of its next hop. Asking the
//! [`Routes`] for them costs a hash-map probe (and, in xvsd, an `ArcSwap` load) per packet;
//! a balancer sends to a few hundred real servers at most, so a small direct-mapped cache that
//! one worker owns answers nearly every packet from its L1 cache.
//!
//! The cache is kept true by [`Routes::version`]: a routes object whose answers may change
//! returns a new version after every change (numbers from [`crate::routes::next_routes_version`], so two
//! objects never share one). The cache compares it once per batch and empties itself when it
//! moved. A routes object that returns `None` is never cached, nor is any answer before the
//! first [`HopCache::sync`] (the cache's entries are allocated by the first sync with versioned
//! routes: a cache that is never synced, as [`crate::Engine::process_frame`] uses for one
//! frame, costs no allocation).

use std::net::IpAddr;

use crate::hash::{fold_addr, hash_32};
use crate::routes::Routes;
use crate::wire::NextHop;

/// Entries of a [`HopCache`] (a power of two).
pub const HOP_CACHE_ENTRIES: usize = 256;

/// Next hops one worker resolved, by destination address (direct-mapped: a destination
/// evicts the one that shares its entry).
#[derive(Debug)]
pub struct HopCache {
    version: Option<u64>,
    /// Empty until the first sync with versioned routes.
    entries: Box<[Option<(IpAddr, NextHop)>]>,
    /// The last answer of routes that are not cached (or before any sync).
    uncached: Option<NextHop>,
    /// Answers from the cache.
    pub hits: u64,
    /// Answers from the routes.
    pub misses: u64,
}

impl Default for HopCache {
    fn default() -> Self {
        HopCache::new()
    }
}

impl HopCache {
    /// An empty cache (it allocates nothing until synced with versioned routes).
    pub fn new() -> HopCache {
        HopCache {
            version: None,
            entries: Box::default(),
            uncached: None,
            hits: 0,
            misses: 0,
        }
    }

    /// Bring the cache in line with `routes` before a batch: empty it when `routes` changed
    /// (or is another object) since the last batch.
    pub fn sync(&mut self, routes: &dyn Routes) {
        let v = routes.version();
        if v != self.version || v.is_none() {
            if v.is_some() && self.entries.is_empty() {
                self.entries = vec![None; HOP_CACHE_ENTRIES].into_boxed_slice();
            } else if self.entries.iter().any(Option::is_some) {
                self.entries.fill(None);
            }
            self.version = v;
        }
    }

    fn index(dst: &IpAddr) -> usize {
        hash_32(fold_addr(dst), HOP_CACHE_ENTRIES.trailing_zeros()) as usize
    }

    /// The next hop to `dst`: from the cache, else from `routes` (and then cached when
    /// `routes` has a version). Call [`HopCache::sync`] with the same `routes` first; without
    /// it, nothing is cached.
    ///
    /// `dst` is taken by reference: the data path passes the address where it lives, and a copy
    /// of an `IpAddr` through the stack is read back in straddling words (see `datapath::Hit`).
    #[inline(always)] // The hit, once per forwarded packet, in the caller's loop.
    pub fn get(&mut self, routes: &dyn Routes, dst: &IpAddr) -> Option<&NextHop> {
        let i = Self::index(dst);
        if matches!(self.entries.get(i), Some(Some((a, _))) if a == dst) {
            self.hits += 1;
            return self.entries[i].as_ref().map(|(_, hop)| hop);
        }
        self.miss(routes, *dst)
    }

    /// [`HopCache::get`] when `dst` is not in the cache (or nothing is cached).
    #[inline(never)]
    fn miss(&mut self, routes: &dyn Routes, dst: IpAddr) -> Option<&NextHop> {
        self.misses += 1;
        if self.version.is_none() {
            return Some(self.uncached.insert(routes.next_hop(dst)?));
        }
        let e = &mut self.entries[Self::index(&dst)];
        *e = Some((dst, routes.next_hop(dst)?));
        e.as_ref().map(|(_, hop)| hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::StaticRoutes;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn routes() -> StaticRoutes {
        let mut r = StaticRoutes::new(3, [2; 6], vec![ip("10.0.0.1")], 1500);
        r.add_neighbour(ip("10.0.0.2"), [4; 6]);
        r
    }

    #[test]
    fn answers_from_the_cache_until_the_routes_change() {
        let mut r = routes();
        let mut c = HopCache::new();
        c.sync(&r);
        let a = *c.get(&r, &ip("10.0.0.2")).unwrap();
        assert_eq!(a.dst_mac, [4; 6]);
        assert_eq!(c.get(&r, &ip("10.0.0.2")), Some(&a));
        assert_eq!((c.hits, c.misses), (1, 1));
        // Unresolved destinations are not cached.
        assert_eq!(c.get(&r, &ip("10.0.0.9")), None);
        assert_eq!(c.get(&r, &ip("10.0.0.9")), None);
        assert_eq!(c.misses, 3);

        r.add_neighbour(ip("10.0.0.2"), [5; 6]);
        c.sync(&r);
        assert_eq!(c.get(&r, &ip("10.0.0.2")).unwrap().dst_mac, [5; 6]);
        r.set_gateway(Some([6; 6]));
        c.sync(&r);
        assert_eq!(c.get(&r, &ip("10.0.0.9")).unwrap().dst_mac, [6; 6]);
    }

    #[test]
    fn another_routes_object_empties_the_cache() {
        let r1 = routes();
        let mut r2 = routes();
        r2.add_neighbour(ip("10.0.0.2"), [7; 6]);
        let mut c = HopCache::new();
        c.sync(&r1);
        assert_eq!(c.get(&r1, &ip("10.0.0.2")).unwrap().dst_mac, [4; 6]);
        c.sync(&r2);
        assert_eq!(c.get(&r2, &ip("10.0.0.2")).unwrap().dst_mac, [7; 6]);
    }

    #[test]
    fn colliding_destinations_evict_each_other_and_stay_right() {
        let mut r = StaticRoutes::new(3, [2; 6], vec![], 1500);
        let addrs: Vec<IpAddr> = (0..4 * HOP_CACHE_ENTRIES as u32)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .collect();
        for (i, a) in addrs.iter().enumerate() {
            r.add_neighbour(*a, [i as u8; 6]);
        }
        let mut c = HopCache::new();
        c.sync(&r);
        for _ in 0..2 {
            for (i, a) in addrs.iter().enumerate() {
                assert_eq!(c.get(&r, a).unwrap().dst_mac, [i as u8; 6]);
            }
        }
    }

    #[test]
    fn unversioned_routes_are_never_cached() {
        struct Fixed;
        impl Routes for Fixed {
            fn next_hop(&self, _: IpAddr) -> Option<NextHop> {
                Some(NextHop {
                    ifindex: 1,
                    src_mac: [1; 6],
                    dst_mac: [2; 6],
                    mtu: 1500,
                    src_ip: None,
                })
            }
        }
        let mut c = HopCache::new();
        c.sync(&Fixed);
        c.get(&Fixed, &ip("10.0.0.2"));
        c.get(&Fixed, &ip("10.0.0.2"));
        assert_eq!((c.hits, c.misses), (0, 2));
        assert!(c.entries.is_empty());
    }

    #[test]
    fn a_cache_never_synced_caches_nothing() {
        let r = routes();
        let mut c = HopCache::new();
        assert_eq!(c.get(&r, &ip("10.0.0.2")).unwrap().dst_mac, [4; 6]);
        assert_eq!(c.get(&r, &ip("10.0.0.2")).unwrap().dst_mac, [4; 6]);
        assert_eq!((c.hits, c.misses), (0, 2));
        assert!(c.entries.is_empty());
    }
}
