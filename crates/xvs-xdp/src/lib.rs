//! xvs-xdp: the AF_XDP side of xvs, and the only crate with `unsafe` (each block carries a
//! `// Safety:` comment). The steering XDP program ([`bpf`]), AF_XDP sockets sharing one UMEM
//! per worker ([`xsk`]), and the worker loop that hands received frames to
//! [`xvs_core::Engine::process`] ([`worker`]).

pub mod bpf;
pub mod inject;
pub mod nexthop;
pub mod pktgen;
pub mod worker;
pub mod xsk;
