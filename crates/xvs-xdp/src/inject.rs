//! Handing frames back to the kernel. A frame that came up an AF_XDP socket cannot be returned
//! to the stack, so frames the engine would pass (for example a real server's packet from its
//! service port that belongs to no xvs connection, which the kernel simply forwards) are
//! written into a TAP device: the kernel receives them there as from the wire and routes them.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54CA;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TAP device that frames are injected into.
#[derive(Debug)]
pub struct Injector {
    file: File,
    /// The device's name.
    pub name: String,
    /// The device's MAC: injected frames are addressed to it so the kernel accepts them.
    pub mac: [u8; 6],
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (d, s) in r.name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(r)
}

impl Injector {
    /// Create (or attach to) TAP device `name` and bring it up.
    pub fn open(name: &str) -> io::Result<Injector> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")?;
        let mut req = ifreq(name)?;
        req.flags = IFF_TAP | IFF_NO_PI;
        // Safety: `req` is a valid, initialised struct ifreq-compatible buffer for TUNSETIFF, and
        // the descriptor is an open /dev/net/tun.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // Bring the link up (SIOCGIFFLAGS / SIOCSIFFLAGS on any socket).
        // Safety: plain socket(2) call.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut flags = ifreq(name)?;
        // Safety: `flags` is a valid ifreq buffer; `sock` is an open socket.
        let got = unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut flags) };
        let mut err = None;
        if got < 0 {
            err = Some(io::Error::last_os_error());
        } else {
            flags.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            // Safety: as above.
            if unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &flags) } < 0 {
                err = Some(io::Error::last_os_error());
            }
        }
        // Safety: `sock` was opened above and is closed exactly once.
        unsafe { libc::close(sock) };
        if let Some(e) = err {
            return Err(e);
        }
        let mac_s = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
        let mac = xvs_core::routes::parse_mac(mac_s.trim())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "TAP device has no MAC"))?;
        Ok(Injector {
            file,
            name: name.to_string(),
            mac,
        })
    }

    /// Hand one Ethernet frame to the kernel (its destination MAC is rewritten to the TAP's).
    pub fn inject(&self, frame: &mut [u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "short frame"));
        }
        frame[0..6].copy_from_slice(&self.mac);
        (&self.file).write_all(frame)
    }
}
