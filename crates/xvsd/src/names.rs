//! Name lookups for listings without `-n`, from the box's own files: `/etc/hosts` for host
//! names (xvs does no network DNS: a listing never waits on a resolver) and `/etc/services`
//! for port names, falling back to xvs's built-in table.

use std::collections::HashMap;
use std::net::IpAddr;

use xvs_core::Protocol;
use xvs_ipvsadm::list::Names;

/// Lookups loaded once at start.
#[derive(Debug, Default)]
pub struct FileNames {
    hosts: HashMap<IpAddr, String>,
    services: HashMap<(u16, &'static str), String>,
}

impl FileNames {
    /// Read `/etc/hosts` and `/etc/services` (missing files mean no names).
    pub fn load() -> FileNames {
        let mut n = FileNames::default();
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                let mut it = line.split_whitespace();
                if let (Some(addr), Some(name)) = (it.next(), it.next()) {
                    if let Ok(a) = addr.parse::<IpAddr>() {
                        n.hosts.entry(a).or_insert_with(|| name.to_string());
                    }
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string("/etc/services") {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                let mut it = line.split_whitespace();
                if let (Some(name), Some(pp)) = (it.next(), it.next()) {
                    if let Some((port, proto)) = pp.split_once('/') {
                        let proto = match proto {
                            "tcp" => "tcp",
                            "udp" => "udp",
                            "sctp" => "sctp",
                            _ => continue,
                        };
                        if let Ok(port) = port.parse::<u16>() {
                            n.services
                                .entry((port, proto))
                                .or_insert_with(|| name.to_string());
                        }
                    }
                }
            }
        }
        n
    }
}

impl Names for FileNames {
    fn host(&self, addr: &IpAddr) -> Option<String> {
        self.hosts.get(addr).cloned()
    }

    fn service(&self, port: u16, proto: Protocol) -> Option<String> {
        let p = match proto {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        self.services
            .get(&(port, p))
            .cloned()
            .or_else(|| xvs_ipvsadm::addr::port_service(port, proto).map(str::to_string))
    }
}
