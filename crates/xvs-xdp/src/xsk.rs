//! AF_XDP sockets through xsk-rs: for one queue index, one socket per interface, all sharing one
//! UMEM, so a frame received on one interface is transmitted on another without a copy.

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Bytes per UMEM frame.
pub const FRAME_SIZE: u32 = 4096;
/// Ring sizes (fill, completion, rx, tx).
pub const RING_SIZE: u32 = 2048;
/// Frames per (interface, queue): a full fill ring plus a full tx ring.
pub const FRAMES_PER_PORT: u32 = 2 * RING_SIZE;

/// `--zero-copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Try zero-copy, fall back to copy mode with a log line.
    Auto,
    /// Zero-copy or fail.
    On,
    /// Copy mode.
    Off,
}

/// Errors of socket set-up, with the failed call and the OS error (`{:?}` of xsk-rs errors:
/// their `Display` hides the errno).
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// UMEM creation.
    #[error("creating the UMEM: {0}")]
    Umem(String),
    /// Socket creation.
    #[error("creating the AF_XDP socket on {ifname} queue {queue}: {detail}")]
    Socket {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// xsk-rs error, debug-formatted.
        detail: String,
    },
}

/// One interface's socket on this queue.
#[derive(Debug)]
pub struct Port {
    /// Interface name.
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
    /// Slot of the interface in the XDP program's socket map.
    pub slot: u32,
    /// Whether the socket runs zero-copy.
    pub zero_copy: bool,
    /// Whether the socket takes and sends frames of several buffers (`XDP_USE_SG`).
    pub multi_buffer: bool,
    pub(crate) tx: TxQueue,
    pub(crate) rx: RxQueue,
    pub(crate) fq: FillQueue,
    pub(crate) cq: CompQueue,
}

impl Port {
    /// The socket's file descriptor (for the XDP program's socket map and for poll).
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

/// The sockets of one queue index on every interface, with their shared UMEM.
#[derive(Debug)]
pub struct QueueSet {
    /// Queue index.
    pub queue: u32,
    pub(crate) umem: Umem,
    pub(crate) free: Vec<FrameDesc>,
    /// Sockets, one per interface.
    pub ports: Vec<Port>,
}

/// Whether an AF_XDP socket runs in zero-copy mode (`XDP_OPTIONS`).
pub fn zero_copy_of(fd: RawFd) -> io::Result<bool> {
    const SOL_XDP: libc::c_int = 283;
    const XDP_OPTIONS: libc::c_int = 8;
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // Safety: flags and len are valid, writable and sized for struct xdp_options (one u32).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & XDP_OPTIONS_ZEROCOPY != 0)
}

/// The NAPI instance whose packets the socket last received (`SO_INCOMING_NAPI_ID`; 0: none
/// known). The kernel's busy polling of a socket drives that NAPI, so it needs one.
pub fn napi_id(fd: RawFd) -> io::Result<u32> {
    let mut id: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // Safety: id and len are valid, writable and sized for the option's u32 value.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_INCOMING_NAPI_ID,
            (&mut id as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// The kernel's counters of an AF_XDP socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Frames dropped for reasons other than an invalid descriptor.
    pub rx_dropped: u64,
    /// Dropped because of an invalid RX descriptor.
    pub rx_invalid_descs: u64,
    /// Dropped because of an invalid TX descriptor.
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when the kernel needed a frame.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was empty when the kernel looked for frames to send.
    pub tx_ring_empty_descs: u64,
}

/// Read `XDP_STATISTICS` of a socket by its descriptor (valid while its worker runs).
pub fn socket_stats(fd: RawFd) -> io::Result<SocketStats> {
    const SOL_XDP: libc::c_int = 283;
    const XDP_STATISTICS: libc::c_int = 7;
    let mut v = [0u64; 6];
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // Safety: v is a writable buffer of `len` bytes, the size of struct xdp_statistics
    // (six u64, kernel 5.9+); the kernel writes at most `len` bytes and updates len.
    let rc =
        unsafe { libc::getsockopt(fd, SOL_XDP, XDP_STATISTICS, v.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SocketStats {
        rx_dropped: v[0],
        rx_invalid_descs: v[1],
        tx_invalid_descs: v[2],
        rx_ring_full: v[3],
        rx_fill_ring_empty_descs: v[4],
        tx_ring_empty_descs: v[5],
    })
}

fn qsize(n: u32) -> QueueSize {
    QueueSize::new(n).expect("ring sizes are powers of two")
}

impl QueueSet {
    /// Open sockets on `queue` of each interface (name, index, slot).
    pub fn open(
        queue: u32,
        ifaces: &[(String, u32, u32)],
        zero_copy: ZeroCopy,
    ) -> Result<QueueSet, XskError> {
        let frames = NonZeroU32::new(FRAMES_PER_PORT * ifaces.len().max(1) as u32)
            .expect("non-zero frame count");
        let cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).expect("4096 is a valid frame size"))
            .fill_queue_size(qsize(RING_SIZE))
            .comp_queue_size(qsize(RING_SIZE))
            .frame_headroom(0)
            .build()
            .map_err(|e| XskError::Umem(format!("{e:?}")))?;
        let (umem, descs) =
            Umem::new(cfg, frames, false).map_err(|e| XskError::Umem(format!("{e:?}")))?;
        let mut qs = QueueSet {
            queue,
            umem,
            free: descs,
            ports: Vec::new(),
        };
        for (ifname, ifindex, slot) in ifaces {
            let port = qs.open_port(ifname, *ifindex, *slot, zero_copy)?;
            qs.ports.push(port);
        }
        Ok(qs)
    }

    fn open_port(
        &mut self,
        ifname: &str,
        ifindex: u32,
        slot: u32,
        zc: ZeroCopy,
    ) -> Result<Port, XskError> {
        let err = |detail: String| XskError::Socket {
            ifname: ifname.to_string(),
            queue: self.queue,
            detail,
        };
        let name = CString::new(ifname).map_err(|_| err("interface name contains NUL".into()))?;
        let attempts: &[(bool, BindFlags)] = match zc {
            ZeroCopy::On => &[(true, BindFlags::XDP_ZEROCOPY)],
            ZeroCopy::Off => &[(false, BindFlags::XDP_COPY)],
            ZeroCopy::Auto => &[
                (true, BindFlags::XDP_ZEROCOPY),
                (false, BindFlags::XDP_COPY),
            ],
        };
        let mut last = String::new();
        // Multi-buffer first (frames larger than one UMEM frame: jumbo MTUs); kernels or
        // drivers without it bind without.
        let attempts = attempts
            .iter()
            .flat_map(|&(zc, mode)| [(zc, mode, true), (zc, mode, false)]);
        for (is_zc, mode, sg) in attempts {
            let flags = if sg {
                mode | BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_USE_SG
            } else {
                mode | BindFlags::XDP_USE_NEED_WAKEUP
            };
            let cfg = SocketConfig::builder()
                .rx_queue_size(qsize(RING_SIZE))
                .tx_queue_size(qsize(RING_SIZE))
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(flags)
                .build();
            // Safety: the program is loaded by xvs (INHIBIT_PROG_LOAD is set, as xsk-rs requires
            // when a UMEM is shared), and each (interface, queue) pair is bound once.
            match unsafe { Socket::new(cfg, &self.umem, &Interface::new(name.clone()), self.queue) }
            {
                Ok((tx, rx, Some((fq, cq)))) => {
                    // A socket sharing another socket's UMEM inherits its mode whatever flags
                    // it asked for: ask the kernel what it got.
                    let actual = zero_copy_of(rx.fd().as_raw_fd()).unwrap_or(is_zc);
                    if zc == ZeroCopy::On && !actual {
                        return Err(err(
                            "zero-copy requested but the socket runs in copy mode".into()
                        ));
                    }
                    if zc == ZeroCopy::Auto && !is_zc {
                        tracing::info!(
                            "{ifname} queue {}: zero-copy not supported ({last}), using copy mode",
                            self.queue
                        );
                    }
                    return Ok(Port {
                        ifname: ifname.to_string(),
                        ifindex,
                        slot,
                        zero_copy: actual,
                        multi_buffer: sg,
                        tx,
                        rx,
                        fq,
                        cq,
                    });
                }
                Ok((_, _, None)) => {
                    return Err(err("the pair is already bound on this UMEM".into()))
                }
                Err(e) => last = format!("{e:?}"),
            }
        }
        Err(err(last))
    }
}
