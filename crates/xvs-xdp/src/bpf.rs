//! The steering XDP program: loading, attaching through a bpf_link, and its maps.
//!
//! By default the link dies with its file descriptor: an xvsd that exits or is killed leaves no
//! program behind, and the interface's traffic goes to the kernel. Kept attached
//! (`--keep-attached`), the program is attached through netlink instead and outlives the
//! process: while no xvsd runs it stays and drops the services' packets (their sockets are
//! gone from its map) instead of passing them to the kernel, which would reset the
//! connections; the next xvsd replaces it with its own program atomically
//! (`XDP_FLAGS_REPLACE` against the program it found, which must be xvs's).

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_sys as bpf;
use xvs_core::service::Steering;
use xvs_core::Protocol;

use crate::fast::{FastKey, FastVal};

/// The compiled steering program (`bpf/xvs.bpf.c`), built by `build.rs`.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xvs.bpf.o"));
/// The benchmark sink (`bpf/xvs_sink.bpf.c`): counts and drops every frame.
#[cfg(feature = "bench")]
static SINK_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xvs_sink.bpf.o"));

/// Queues per interface in the socket map (must match `MAX_QUEUES` in the program).
pub const MAX_QUEUES: u32 = 64;
/// Interfaces per program (must match `MAX_IFACES`).
pub const MAX_IFACES: u32 = 8;

/// How to attach (`--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Driver mode when the driver has it, else generic.
    Auto,
    /// Driver (native) mode only.
    Drv,
    /// Generic (SKB) mode.
    Skb,
}

/// Errors of the loader, naming the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A libbpf or bpf() call failed.
    #[error("{call}: {err}")]
    Call {
        /// What was called.
        call: &'static str,
        /// The OS error.
        err: io::Error,
    },
    /// Attaching failed because a program is already attached.
    #[error("interface {ifname} already has an XDP program attached (another xvsd, one left by --keep-attached, or another tool): stop that xvsd, run xvsd --detach --interface {ifname} (a program left by --keep-attached), or detach it (ip link set dev {ifname} xdp off)")]
    Busy {
        /// Interface.
        ifname: String,
    },
    /// Too many interfaces.
    #[error("at most {MAX_IFACES} interfaces")]
    TooManyInterfaces,
}

fn mode_flags(mode: XdpMode) -> u32 {
    match mode {
        XdpMode::Auto => 0,
        XdpMode::Drv => bpf::XDP_FLAGS_DRV_MODE,
        XdpMode::Skb => bpf::XDP_FLAGS_SKB_MODE,
    }
}

/// The name the steering program has in the kernel (its function's, cut to 15 bytes).
const PROG_NAME: &[u8] = b"xvs_steer";

/// The steering program of xvs attached to `ifindex` through netlink, if any; an error when
/// another program is.
fn attached_xvs(ifindex: u32, ifname: &str) -> Result<Option<OwnedFd>, BpfError> {
    let mut id = 0u32;
    // Safety: id is a valid, writable u32.
    let rc = unsafe { bpf::bpf_xdp_query_id(ifindex as i32, 0, &mut id) };
    if rc != 0 {
        return Err(neg_err("bpf_xdp_query_id", rc));
    }
    if id == 0 {
        return Ok(None);
    }
    // Safety: plain syscall wrapper on an id.
    let fd = unsafe { bpf::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(neg_err("bpf_prog_get_fd_by_id", fd));
    }
    // Safety: bpf_prog_get_fd_by_id returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Safety: an all-zero bpf_prog_info is a valid buffer for the kernel to fill.
    let mut info: bpf::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<bpf::bpf_prog_info>() as u32;
    // Safety: info is writable for len bytes; fd is a program.
    let rc = unsafe { bpf::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(neg_err("bpf_prog_get_info_by_fd", rc));
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    if name != PROG_NAME {
        return Err(BpfError::Busy {
            ifname: ifname.to_string(),
        });
    }
    Ok(Some(fd))
}

/// Take xvs's steering program, attached to stay (`--keep-attached`), off `ifindex`; false
/// when none was there.
pub fn detach_kept(ifindex: u32, ifname: &str) -> Result<bool, BpfError> {
    let Some(old) = attached_xvs(ifindex, ifname)? else {
        return Ok(false);
    };
    // Safety: an all-zero bpf_xdp_attach_opts is the documented default; sz is set below.
    let mut opts: bpf::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<bpf::bpf_xdp_attach_opts>() as _;
    opts.old_prog_fd = old.as_raw_fd();
    // Safety: opts is initialised and outlives the call.
    let rc = unsafe { bpf::bpf_xdp_attach(ifindex as i32, -1, bpf::XDP_FLAGS_REPLACE, &opts) };
    if rc != 0 {
        return Err(neg_err("bpf_xdp_attach(detach)", rc));
    }
    Ok(true)
}

fn last_err(call: &'static str) -> BpfError {
    BpfError::Call {
        call,
        err: io::Error::last_os_error(),
    }
}

fn neg_err(call: &'static str, rc: i32) -> BpfError {
    BpfError::Call {
        call,
        err: io::Error::from_raw_os_error(-rc),
    }
}

/// The key of the steering maps (layout of `struct steer_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SteerKey {
    addr: [u8; 16],
    family: u8,
    proto: u8,
    port_be: u16,
}

impl SteerKey {
    fn new(addr: IpAddr, proto: u8, port: u16) -> SteerKey {
        let mut k = SteerKey {
            proto,
            port_be: port.to_be(),
            ..Default::default()
        };
        match addr {
            IpAddr::V4(a) => {
                k.addr[..4].copy_from_slice(&a.octets());
                k.family = 4;
            }
            IpAddr::V6(a) => {
                k.addr = a.octets();
                k.family = 6;
            }
        }
        k
    }
}

/// Counters of the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Frames passed to the kernel.
    pub passed: u64,
    /// Frames redirected to an xvs socket.
    pub redirected: u64,
    /// Frames that matched but found no socket on their queue (dropped).
    pub no_socket: u64,
    /// Unicast frames for another host's MAC, passed to the kernel, which drops them.
    pub other_host: u64,
    /// Segments of offloaded connections forwarded by the fast path.
    pub fast: u64,
}

/// A socket's admission bucket and counters (`struct admit_state` of the program).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmitState {
    /// The bucket's time credit, ns.
    pub credit_ns: u64,
    /// When the bucket was last filled (the kernel's monotonic clock, ns).
    pub last_ns: u64,
    /// Opening packets (TCP SYNs, UDP datagrams) to a service that arrived.
    pub seen: u64,
    /// Of those, passed to the socket.
    pub passed: u64,
    /// Of those, dropped by the bucket.
    pub dropped: u64,
    /// The service's other packets (established TCP) that arrived.
    pub others: u64,
}

/// A key of the program's `own_macs` map (`struct mac_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MacKey {
    ifindex: u32,
    mac: [u8; 6],
    pad: [u8; 2],
}

/// A loaded BPF object with one XDP program and the bpf_links attaching it.
#[derive(Debug)]
struct Loaded {
    obj: *mut bpf::bpf_object,
    prog_fd: RawFd,
    /// The bpf_links attaching the program, by interface: closing one detaches it.
    links: Vec<(u32, OwnedFd)>,
    /// Interfaces the program is attached to through netlink, to stay (`--keep-attached`).
    kept: Vec<u32>,
}

impl Loaded {
    fn open(bytes: &'static [u8], prog_name: &str) -> Result<Loaded, BpfError> {
        // Safety: `bytes` is a valid byte slice for its whole length; a null options pointer is
        // allowed by libbpf.
        let obj = unsafe {
            bpf::bpf_object__open_mem(bytes.as_ptr().cast(), bytes.len() as _, std::ptr::null())
        };
        if obj.is_null() {
            return Err(last_err("bpf_object__open_mem"));
        }
        let mut l = Loaded {
            obj,
            prog_fd: -1,
            links: Vec::new(),
            kept: Vec::new(),
        };
        // Safety: obj is a valid, opened object (checked above).
        let rc = unsafe { bpf::bpf_object__load(obj) };
        if rc != 0 {
            return Err(neg_err("bpf_object__load", rc));
        }
        let name = CString::new(prog_name).expect("program names have no NUL");
        // Safety: obj is loaded; name is a valid C string.
        let prog = unsafe { bpf::bpf_object__find_program_by_name(obj, name.as_ptr()) };
        if prog.is_null() {
            return Err(last_err("bpf_object__find_program_by_name"));
        }
        // Safety: prog was returned non-null by libbpf for this object.
        l.prog_fd = unsafe { bpf::bpf_program__fd(prog) };
        Ok(l)
    }

    fn map_fd(&self, name: &'static str) -> Result<RawFd, BpfError> {
        let c = CString::new(name).expect("no NUL in map names");
        // Safety: self.obj is a loaded object; c is a valid C string.
        let map = unsafe { bpf::bpf_object__find_map_by_name(self.obj, c.as_ptr()) };
        if map.is_null() {
            return Err(last_err("bpf_object__find_map_by_name"));
        }
        // Safety: map is non-null and belongs to self.obj.
        let fd = unsafe { bpf::bpf_map__fd(map) };
        if fd < 0 {
            return Err(neg_err("bpf_map__fd", fd));
        }
        Ok(fd)
    }

    fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
        keep: bool,
    ) -> Result<(), BpfError> {
        if keep {
            return self.attach_kept(ifindex, ifname, mode);
        }
        // Safety: an all-zero bpf_link_create_opts is the documented default; sz is set below.
        let mut opts: bpf::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<bpf::bpf_link_create_opts>() as _;
        opts.flags = mode_flags(mode);
        // Safety: prog_fd is a loaded XDP program; opts is initialised and outlives the call.
        let fd = unsafe { bpf::bpf_link_create(self.prog_fd, ifindex as i32, bpf::BPF_XDP, &opts) };
        if fd < 0 {
            if -fd == libc::EBUSY || -fd == libc::EEXIST {
                return Err(BpfError::Busy {
                    ifname: ifname.to_string(),
                });
            }
            return Err(neg_err("bpf_link_create(XDP)", fd));
        }
        // Safety: bpf_link_create returned a new file descriptor that nothing else owns.
        let link = unsafe { OwnedFd::from_raw_fd(fd) };
        self.links.push((ifindex, link));
        Ok(())
    }

    /// Attach through netlink, to stay after this process (see the module's documentation):
    /// in place of a steering program of xvs already there, atomically, or where there is none.
    fn attach_kept(&mut self, ifindex: u32, ifname: &str, mode: XdpMode) -> Result<(), BpfError> {
        let flags = mode_flags(mode);
        let old = attached_xvs(ifindex, ifname)?;
        // Safety: an all-zero bpf_xdp_attach_opts is the documented default; sz is set below.
        let mut opts: bpf::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<bpf::bpf_xdp_attach_opts>() as _;
        let flags = match &old {
            Some(fd) => {
                opts.old_prog_fd = fd.as_raw_fd();
                flags | bpf::XDP_FLAGS_REPLACE
            }
            None => flags | bpf::XDP_FLAGS_UPDATE_IF_NOEXIST,
        };
        // Safety: prog_fd is a loaded XDP program; opts is initialised and outlives the call.
        let rc = unsafe { bpf::bpf_xdp_attach(ifindex as i32, self.prog_fd, flags, &opts) };
        if rc != 0 {
            if -rc == libc::EBUSY || -rc == libc::EEXIST {
                return Err(BpfError::Busy {
                    ifname: ifname.to_string(),
                });
            }
            return Err(neg_err("bpf_xdp_attach", rc));
        }
        self.kept.push(ifindex);
        Ok(())
    }

    /// Sum of a per-CPU u64 array entry.
    fn percpu_sum(fd: RawFd, key: u32) -> Result<u64, BpfError> {
        // Safety: plain libbpf query without arguments.
        let ncpu = unsafe { bpf::libbpf_num_possible_cpus() };
        if ncpu <= 0 {
            return Err(neg_err("libbpf_num_possible_cpus", ncpu));
        }
        let mut vals = vec![0u64; ncpu as usize];
        // Safety: per-CPU array lookups write one u64 per possible CPU into vals, which has
        // exactly that many elements.
        let rc = unsafe {
            bpf::bpf_map_lookup_elem(fd, (&key as *const u32).cast(), vals.as_mut_ptr().cast())
        };
        if rc != 0 {
            return Err(neg_err("bpf_map_lookup_elem(per-CPU)", rc));
        }
        Ok(vals.iter().sum())
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // The links first (detaching the program), then the object they refer to.
        self.links.clear();
        // Safety: obj was returned by bpf_object__open_mem and is closed exactly once.
        unsafe { bpf::bpf_object__close(self.obj) };
    }
}

/// The steering program and its maps; attachments are bpf_links owned by this value.
#[derive(Debug)]
pub struct XdpProgram {
    inner: Loaded,
    xsks: RawFd,
    if_slots: RawFd,
    services: RawFd,
    nat_sources: RawFd,
    local_addrs: RawFd,
    own_macs: RawFd,
    admit_rates: RawFd,
    admit_state: RawFd,
    counters: RawFd,
    fast: RawFd,
    fast_gen: RawFd,
}

// Safety: the libbpf object is only touched through &mut self (attach, drop) or through map
// file descriptors, which the kernel synchronises; the raw pointer is never shared.
unsafe impl Send for XdpProgram {}
// Safety: shared access only reads file descriptors and calls bpf() map syscalls, which are
// thread-safe in the kernel.
unsafe impl Sync for XdpProgram {}

impl XdpProgram {
    /// Load the embedded steering program into the kernel.
    pub fn load() -> Result<XdpProgram, BpfError> {
        let inner = Loaded::open(OBJECT, "xvs_steer")?;
        Ok(XdpProgram {
            xsks: inner.map_fd("xsks")?,
            if_slots: inner.map_fd("if_slots")?,
            services: inner.map_fd("services")?,
            nat_sources: inner.map_fd("nat_sources")?,
            local_addrs: inner.map_fd("local_addrs")?,
            own_macs: inner.map_fd("own_macs")?,
            admit_rates: inner.map_fd("admit_rates")?,
            admit_state: inner.map_fd("admit_state")?,
            counters: inner.map_fd("counters")?,
            fast: inner.map_fd("fast")?,
            fast_gen: inner.map_fd("fast_gen")?,
            inner,
        })
    }

    fn update<K, V>(
        &self,
        fd: RawFd,
        key: &K,
        value: &V,
        call: &'static str,
    ) -> Result<(), BpfError> {
        // Safety: key and value point to initialised values of the map's key and value sizes
        // (the callers pass the types declared in the program).
        let rc = unsafe {
            bpf::bpf_map_update_elem(
                fd,
                (key as *const K).cast(),
                (value as *const V).cast(),
                bpf::BPF_ANY as u64,
            )
        };
        if rc != 0 {
            return Err(neg_err(call, rc));
        }
        Ok(())
    }

    /// Attach to an interface through a bpf_link; returns the interface's slot. The
    /// interface's own MAC is accepted first ([`XdpProgram::accept_mac`]).
    pub fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
        keep: bool,
    ) -> Result<u32, BpfError> {
        let slot = (self.inner.links.len() + self.inner.kept.len()) as u32;
        if slot >= MAX_IFACES {
            return Err(BpfError::TooManyInterfaces);
        }
        let mac = crate::nexthop::link_info(ifname)
            .map_err(|err| BpfError::Call {
                call: "reading the interface's MAC",
                err,
            })?
            .mac;
        self.accept_mac(ifindex, mac)?;
        self.update(
            self.if_slots,
            &ifindex,
            &slot,
            "bpf_map_update_elem(if_slots)",
        )?;
        self.inner.attach(ifindex, ifname, mode, keep)?;
        Ok(slot)
    }

    /// Accept unicast frames for `mac` on `ifindex` (the interface's own MAC, and the
    /// operator's additions such as a VRRP virtual MAC); others are left to the kernel.
    pub fn accept_mac(&self, ifindex: u32, mac: [u8; 6]) -> Result<(), BpfError> {
        let key = MacKey {
            ifindex,
            mac,
            pad: [0; 2],
        };
        self.update(self.own_macs, &key, &1u8, "bpf_map_update_elem(own_macs)")
    }

    /// Limit the opening packets (TCP SYNs, UDP datagrams) to services that (interface slot,
    /// queue) passes to its socket to `rate` per second; 0: no limit.
    pub fn set_admit_rate(&self, slot: u32, queue: u32, rate: u64) -> Result<(), BpfError> {
        let key = slot * MAX_QUEUES + queue;
        self.update(
            self.admit_rates,
            &key,
            &rate,
            "bpf_map_update_elem(admit_rates)",
        )
    }

    /// The value at `key` of an array map whose values are `V`s.
    fn lookup<V: Copy + Default>(
        &self,
        fd: RawFd,
        key: u32,
        call: &'static str,
    ) -> Result<V, BpfError> {
        let mut v = V::default();
        // Safety: key is a u32, the array map's key size; v is writable storage of the map's
        // value size (the callers pass the type laid out as the program declares the value).
        let rc = unsafe {
            bpf::bpf_map_lookup_elem(fd, (&key as *const u32).cast(), (&mut v as *mut V).cast())
        };
        if rc != 0 {
            return Err(neg_err(call, rc));
        }
        Ok(v)
    }

    /// The admission rate of (interface slot, queue) in force (0: no limit).
    pub fn admit_rate(&self, slot: u32, queue: u32) -> Result<u64, BpfError> {
        let key = slot * MAX_QUEUES + queue;
        self.lookup(self.admit_rates, key, "bpf_map_lookup_elem(admit_rates)")
    }

    /// The admission bucket and counters of (interface slot, queue) (`struct admit_state`, six u64s,
    /// as [`AdmitState`] is laid out).
    pub fn admit_state(&self, slot: u32, queue: u32) -> Result<AdmitState, BpfError> {
        let key = slot * MAX_QUEUES + queue;
        self.lookup(self.admit_state, key, "bpf_map_lookup_elem(admit_state)")
    }

    /// Register the AF_XDP socket of (interface slot, queue).
    pub fn set_socket(&self, slot: u32, queue: u32, fd: RawFd) -> Result<(), BpfError> {
        let key = slot * MAX_QUEUES + queue;
        let val = fd as u32;
        self.update(self.xsks, &key, &val, "bpf_map_update_elem(xsks)")
    }

    fn replace_keys(
        &self,
        fd: RawFd,
        keys: &[SteerKey],
        call: &'static str,
    ) -> Result<(), BpfError> {
        // Remove keys that are no longer wanted, then insert the wanted ones (updates are
        // atomic per key, so traffic to unchanged keys is never interrupted).
        let mut existing = Vec::new();
        let mut cur: Option<SteerKey> = None;
        loop {
            let mut next = SteerKey::default();
            let prev = cur
                .as_ref()
                .map_or(std::ptr::null(), |k| (k as *const SteerKey).cast());
            // Safety: prev is null or points to a key of the map's key size; next is writable
            // storage of that size.
            let rc =
                unsafe { bpf::bpf_map_get_next_key(fd, prev, (&mut next as *mut SteerKey).cast()) };
            if rc != 0 {
                break;
            }
            existing.push(next);
            cur = Some(next);
        }
        for k in existing.iter().filter(|k| !keys.contains(k)) {
            // Safety: k points to a key of the map's key size.
            unsafe { bpf::bpf_map_delete_elem(fd, (k as *const SteerKey).cast()) };
        }
        for k in keys {
            self.update(fd, k, &1u8, call)?;
        }
        Ok(())
    }

    /// Make the program steer exactly what `steering` lists; `local` are the box's own
    /// addresses (never steered as NAT replies).
    pub fn sync(&self, steering: &Steering, local: &[IpAddr]) -> Result<(), BpfError> {
        let proto = |p: Protocol| p.number();
        let mut svc: Vec<SteerKey> = Vec::new();
        for &(addr, p, port) in &steering.services {
            svc.push(SteerKey::new(addr, proto(p), port));
            // (VIP, 0, 0): ICMP errors to a VIP.
            svc.push(SteerKey::new(addr, 0, 0));
        }
        svc.sort_by_key(|k| (k.addr, k.family, k.proto, k.port_be));
        svc.dedup();
        let nat: Vec<SteerKey> = steering
            .nat_sources
            .iter()
            .map(|&(a, p, port)| SteerKey::new(a, proto(p), port))
            .collect();
        let loc: Vec<SteerKey> = local.iter().map(|&a| SteerKey::new(a, 0, 0)).collect();
        self.replace_keys(self.services, &svc, "bpf_map_update_elem(services)")?;
        self.replace_keys(self.nat_sources, &nat, "bpf_map_update_elem(nat_sources)")?;
        self.replace_keys(self.local_addrs, &loc, "bpf_map_update_elem(local_addrs)")?;
        Ok(())
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, BpfError> {
        Ok(XdpCounters {
            passed: Loaded::percpu_sum(self.counters, 0)?,
            redirected: Loaded::percpu_sum(self.counters, 1)?,
            no_socket: Loaded::percpu_sum(self.counters, 2)?,
            other_host: Loaded::percpu_sum(self.counters, 3)?,
            fast: Loaded::percpu_sum(self.counters, 4)?,
        })
    }

    /// Install or replace a fast-path entry.
    pub(crate) fn fast_put(&self, key: &FastKey, val: &FastVal) -> Result<(), BpfError> {
        self.update(self.fast, key, val, "bpf_map_update_elem(fast)")
    }

    /// A fast-path entry as the program has it now; None when there is none.
    pub(crate) fn fast_get(&self, key: &FastKey) -> Option<FastVal> {
        let mut v = FastVal::default();
        // Safety: key and v have the sizes and layouts of the map's key and value types.
        let rc = unsafe {
            bpf::bpf_map_lookup_elem(
                self.fast,
                (key as *const FastKey).cast(),
                (&mut v as *mut FastVal).cast(),
            )
        };
        (rc == 0).then_some(v)
    }

    /// Remove a fast-path entry.
    pub(crate) fn fast_remove(&self, key: &FastKey) {
        // Safety: key has the size and layout of the map's key type.
        unsafe { bpf::bpf_map_delete_elem(self.fast, (key as *const FastKey).cast()) };
    }

    /// Set the configuration generation fast-path entries must carry.
    pub(crate) fn set_fast_gen(&self, gen: u32) -> Result<(), BpfError> {
        self.update(self.fast_gen, &0u32, &gen, "bpf_map_update_elem(fast_gen)")
    }
}

/// The benchmark sink: counts every frame it receives and drops it.
#[cfg(feature = "bench")]
#[derive(Debug)]
pub struct SinkProgram {
    inner: Loaded,
    count: RawFd,
}

// Safety: as for XdpProgram: only map file descriptors are used through &self.
#[cfg(feature = "bench")]
unsafe impl Send for SinkProgram {}
// Safety: as for XdpProgram.
#[cfg(feature = "bench")]
unsafe impl Sync for SinkProgram {}

#[cfg(feature = "bench")]
impl SinkProgram {
    /// Load the sink and attach it to an interface.
    pub fn attach(ifindex: u32, ifname: &str, mode: XdpMode) -> Result<SinkProgram, BpfError> {
        let mut inner = Loaded::open(SINK_OBJECT, "xvs_sink")?;
        let count = inner.map_fd("sink_count")?;
        inner.attach(ifindex, ifname, mode, false)?;
        Ok(SinkProgram { inner, count })
    }

    /// Frames received so far.
    pub fn count(&self) -> Result<u64, BpfError> {
        let _ = &self.inner;
        Loaded::percpu_sum(self.count, 0)
    }
}
