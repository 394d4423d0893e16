//! xvs-core: the sans-IO heart of the XDP Virtual Server.
//!
//! No IO, no clock (time is an argument), no `unsafe`. The control side ([`director`]) edits
//! services and destinations and publishes immutable [`service::Tables`]; the data path
//! ([`datapath::Engine`]) turns frames into verdicts, rewriting them in place.

#![forbid(unsafe_code)]

pub mod chunks;
pub mod conn;
pub mod datapath;
pub mod defence;
pub mod dest;
pub mod director;
pub mod hash;
pub mod hops;
mod index;
pub mod marks;
pub mod offload;
pub mod proto;
pub mod routes;
pub mod sched;
pub mod service;
pub mod sip;
pub mod stats;
pub mod sync;
pub mod types;
pub mod wire;

pub use datapath::{DropReason, Engine, Routes, Verdict, WorkerState};
pub use dest::{DestConfig, DestState};
pub use director::{CtlError, Director};
pub use service::{ServiceConfig, Tables};
pub use types::{Af, ForwardMethod, Netmask, Protocol, ServiceKey, Time};
pub use wire::{Frame, NextHop};
