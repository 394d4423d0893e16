//! xvs-xdp: the AF_XDP side of xvs, and the only crate with `unsafe` (each block carries a
//! `// Safety:` comment). The steering XDP program ([`bpf`]), AF_XDP sockets sharing one UMEM
//! per worker ([`xsk`]), and the worker loop that hands received frames to
//! [`xvs_core::Engine::process`] ([`worker`]). With the `bench` feature, the benchmarks' packet
//! generator (`pktgen`) and sink program (`bpf::SinkProgram`).

pub mod admission;
pub mod bpf;
pub mod ethtool;
pub mod fast;
pub mod inject;
pub mod netdev;
pub mod nexthop;
mod nl;
#[cfg(feature = "bench")]
pub mod pktgen;
pub mod rings;
pub mod worker;
pub mod xsk;

/// Ask the CPU to bring the cache line at `addr` closer (a hint: nothing is read or written,
/// and an address that is stale or not mapped costs nothing but the hint). The engine gives
/// the addresses its next lookups will read ([`xvs_core::Engine::process`]).
#[inline]
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // Safety: PREFETCHT0 never faults and changes no memory or architectural state, whatever
    // the address; it needs only SSE, which every x86_64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}
