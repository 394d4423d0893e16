//! The steering XDP program: loading, attaching through a bpf_link, and its maps.
//!
//! Unpinned, the link dies with its file descriptor: an xvsd that exits or is killed leaves no
//! program behind, and the interface's traffic goes to the kernel. Pinned (`--pin-dir`), the
//! link outlives the process: while no xvsd runs the program stays attached and drops the
//! services' packets (their sockets are gone from its map) instead of passing them to the
//! kernel, which would reset the connections; the next xvsd swaps its own program into the
//! same link (`bpf_link_update`), atomically.

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use libbpf_sys as bpf;
use xvs_core::service::Steering;
use xvs_core::Protocol;

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
    #[error("interface {ifname} already has an XDP program attached (another xvsd, or another tool): detach it first (ip link set dev {ifname} xdp off) or stop that xvsd")]
    Busy {
        /// Interface.
        ifname: String,
    },
    /// Too many interfaces.
    #[error("at most {MAX_IFACES} interfaces")]
    TooManyInterfaces,
}

fn path_c(path: &Path) -> Result<CString, BpfError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| BpfError::Call {
        call: "pin path",
        err: io::Error::from(io::ErrorKind::InvalidInput),
    })
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
        pin: Option<&Path>,
    ) -> Result<(), BpfError> {
        if let Some(path) = pin {
            if let Some(link) = self.take_over(path)? {
                self.links.push((ifindex, link));
                return Ok(());
            }
        }
        // Safety: an all-zero bpf_link_create_opts is the documented default; sz is set below.
        let mut opts: bpf::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<bpf::bpf_link_create_opts>() as _;
        opts.flags = match mode {
            XdpMode::Auto => 0,
            XdpMode::Drv => bpf::XDP_FLAGS_DRV_MODE,
            XdpMode::Skb => bpf::XDP_FLAGS_SKB_MODE,
        };
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
        if let Some(path) = pin {
            let c = path_c(path)?;
            // Safety: link is a valid bpf_link descriptor; c is a valid C string.
            let rc = unsafe { bpf::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
            if rc != 0 {
                return Err(neg_err("bpf_obj_pin(XDP link)", rc));
            }
        }
        self.links.push((ifindex, link));
        Ok(())
    }

    /// The link pinned at `path`, now running this program; None when there is no pin, or
    /// its link no longer attaches anything (its interface is gone: the pin is removed).
    fn take_over(&self, path: &Path) -> Result<Option<OwnedFd>, BpfError> {
        if !path.exists() {
            return Ok(None);
        }
        let c = path_c(path)?;
        // Safety: c is a valid C string.
        let fd = unsafe { bpf::bpf_obj_get(c.as_ptr()) };
        if fd < 0 {
            return Err(neg_err("bpf_obj_get(pinned XDP link)", fd));
        }
        // Safety: bpf_obj_get returned a new file descriptor that nothing else owns.
        let link = unsafe { OwnedFd::from_raw_fd(fd) };
        // Safety: an all-zero bpf_link_update_opts is the documented default; sz is set below.
        let mut opts: bpf::bpf_link_update_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<bpf::bpf_link_update_opts>() as _;
        // Safety: link and prog_fd are valid descriptors; opts outlives the call.
        let rc = unsafe { bpf::bpf_link_update(link.as_raw_fd(), self.prog_fd, &opts) };
        if rc == 0 {
            return Ok(Some(link));
        }
        if -rc == libc::ENOLINK {
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        Err(neg_err("bpf_link_update(pinned XDP link)", rc))
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
        pin: Option<&Path>,
    ) -> Result<u32, BpfError> {
        let slot = self.inner.links.len() as u32;
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
        self.inner.attach(ifindex, ifname, mode, pin)?;
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
        })
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
        inner.attach(ifindex, ifname, mode, None)?;
        Ok(SinkProgram { inner, count })
    }

    /// Frames received so far.
    pub fn count(&self) -> Result<u64, BpfError> {
        let _ = &self.inner;
        Loaded::percpu_sum(self.count, 0)
    }
}
