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

    /// Kernel statistics of the socket (`XDP_STATISTICS`).
    pub fn statistics(&self) -> io::Result<xsk_rs::socket::XdpStatistics> {
        self.rx.fd().xdp_statistics()
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
        for &(is_zc, mode) in attempts {
            let cfg = SocketConfig::builder()
                .rx_queue_size(qsize(RING_SIZE))
                .tx_queue_size(qsize(RING_SIZE))
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(mode | BindFlags::XDP_USE_NEED_WAKEUP)
                .build();
            // Safety: the program is loaded by xvs (INHIBIT_PROG_LOAD is set, as xsk-rs requires
            // when a UMEM is shared), and each (interface, queue) pair is bound once.
            match unsafe { Socket::new(cfg, &self.umem, &Interface::new(name.clone()), self.queue) }
            {
                Ok((tx, rx, Some((fq, cq)))) => {
                    if zc == ZeroCopy::Auto && !is_zc {
                        eprintln!(
                            "xvsd: {ifname} queue {}: zero-copy not supported ({last}), using copy mode",
                            self.queue
                        );
                    } else {
                        eprintln!(
                            "xvsd: {ifname} queue {}: {} mode",
                            self.queue,
                            if is_zc { "zero-copy" } else { "copy" }
                        );
                    }
                    return Ok(Port {
                        ifname: ifname.to_string(),
                        ifindex,
                        slot,
                        zero_copy: is_zc,
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
