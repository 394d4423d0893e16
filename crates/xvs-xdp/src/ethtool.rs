//! An interface's driver and its statistics (`ethtool -i`, `ethtool -S`), through the
//! `SIOCETHTOOL` ioctl.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;

/// `struct ifreq` with `ifr_data`.
#[repr(C)]
struct IfReqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Run one `SIOCETHTOOL` command whose buffer is `buf` (starting with the command word).
fn ethtool(sock: &OwnedFd, ifname: &str, buf: &mut [u8]) -> io::Result<()> {
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: buf.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // Safety: req is a valid ifreq whose data points to `buf`, laid out as the command's
    // struct and as long as the command writes (the callers size it from the count).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn words(cmd: u32, a: u32, b: u32, extra: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + extra);
    for w in [cmd, a, b] {
        v.extend_from_slice(&w.to_ne_bytes());
    }
    v.resize(12 + extra, 0);
    v
}

/// A socket to send `SIOCETHTOOL` on.
fn socket() -> io::Result<OwnedFd> {
    // Safety: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: fd is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The name of `ifname`'s driver ("veth", "mlx5_core", ...).
pub fn driver(ifname: &str) -> io::Result<String> {
    // struct ethtool_drvinfo: cmd, driver[32], then version, firmware and bus strings and
    // counts: 196 bytes.
    let mut info = vec![0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    ethtool(&socket()?, ifname, &mut info)?;
    let name = &info[4..36];
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// Every driver statistic of `ifname`, by name.
pub fn stats(ifname: &str) -> io::Result<Vec<(String, u64)>> {
    let sock = socket()?;
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
    let mut info = vec![0u8; 24];
    info[..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
    ethtool(&sock, ifname, &mut info)?;
    let n = u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")) as usize;
    // struct ethtool_gstrings: cmd, string_set, len, data[len * 32].
    let mut names = words(
        ETHTOOL_GSTRINGS,
        ETH_SS_STATS,
        n as u32,
        n * ETH_GSTRING_LEN,
    );
    ethtool(&sock, ifname, &mut names)?;
    // struct ethtool_stats: cmd, n_stats, data[n] (u64, at offset 8).
    let mut values = vec![0u8; 8 + n * 8];
    values[..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    values[4..8].copy_from_slice(&(n as u32).to_ne_bytes());
    ethtool(&sock, ifname, &mut values)?;
    Ok((0..n)
        .map(|i| {
            let raw = &names[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = String::from_utf8_lossy(&raw[..end]).into_owned();
            let at = 8 + i * 8;
            (
                name,
                u64::from_ne_bytes(values[at..at + 8].try_into().expect("8 bytes")),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_a_readable_answer() {
        // lo has no driver statistics: an error or an empty list, never a crash.
        if let Ok(s) = super::stats("lo") {
            assert!(s.iter().all(|(n, _)| !n.is_empty()));
        }
    }

    #[test]
    fn a_driver_name_or_an_error() {
        // Loopback has no driver information; nor has a name that is no interface.
        assert!(super::driver("lo").is_err());
        assert!(super::driver("xvs-none0").is_err());
        assert!(super::driver("a-name-longer-than-ifnamsiz").is_err());
    }
}
