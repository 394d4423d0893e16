//! What an interface does with XDP frames, from the kernel's `netdev` generic netlink family
//! (Linux 6.3 and later): whether it takes frames redirected to it from XDP.

use std::io;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr as NlAddr};

/// `NETDEV_XDP_ACT_NDO_XMIT` (`include/uapi/linux/netdev.h`): the interface takes frames
/// redirected to it. A veth has it only while its peer runs NAPI (`veth_set_xdp_features`).
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

/// A message of the `netdev` family: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetdevMsg {
    cmd: u8,
    attrs: Vec<DefaultNla>,
}

impl GenlFamily for NetdevMsg {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for NetdevMsg {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NetdevMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| DefaultNla::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetdevMsg {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// The `NETDEV_A_DEV_XDP_FEATURES` of a `dev-get` reply.
fn xdp_features_of(msg: &NetdevMsg) -> Option<u64> {
    let a = msg
        .attrs
        .iter()
        .find(|a| a.kind() == NETDEV_A_DEV_XDP_FEATURES)?;
    if a.value_len() != 8 {
        return None;
    }
    let mut v = [0u8; 8];
    a.emit_value(&mut v);
    Some(u64::from_ne_bytes(v))
}

/// A generic netlink socket speaking the `netdev` family.
#[derive(Debug)]
pub struct Netdev {
    sock: Socket,
    family: u16,
    seq: u32,
}

impl Netdev {
    /// Open the socket and look the family up; an error on a kernel without it.
    pub fn open() -> io::Result<Netdev> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&NlAddr::new(0, 0))?;
        let mut get = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("netdev".into())],
        });
        get.finalize();
        let family = crate::nl::transact(&mut sock, 1, get, false)?
            .into_iter()
            .flat_map(|m| m.payload.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(id),
                _ => None,
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no netdev family"))?;
        Ok(Netdev {
            sock,
            family,
            seq: 1,
        })
    }

    /// The XDP features (`NETDEV_XDP_ACT_*`) of interface `ifindex` in this namespace.
    pub fn xdp_features(&mut self, ifindex: u32) -> io::Result<u64> {
        self.seq = self.seq.wrapping_add(1);
        let mut get = GenlMessage::from_payload(NetdevMsg {
            cmd: NETDEV_CMD_DEV_GET,
            attrs: vec![DefaultNla::new(
                NETDEV_A_DEV_IFINDEX,
                ifindex.to_ne_bytes().to_vec(),
            )],
        });
        get.set_resolved_family_id(self.family);
        let replies = crate::nl::transact(&mut self.sock, self.seq, get, false)?;
        replies
            .iter()
            .find_map(|m| xdp_features_of(&m.payload))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "no XDP features in the reply")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_gives_its_features_and_a_malformed_one_none() {
        let reply = |v: Vec<u8>| NetdevMsg {
            cmd: NETDEV_CMD_DEV_GET,
            attrs: vec![
                DefaultNla::new(NETDEV_A_DEV_IFINDEX, 7u32.to_ne_bytes().to_vec()),
                DefaultNla::new(NETDEV_A_DEV_XDP_FEATURES, v),
            ],
        };
        // Emitted and parsed back as the kernel's reply would be.
        let m = reply(0x47u64.to_ne_bytes().to_vec());
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let hdr = GenlHeader {
            cmd: NETDEV_CMD_DEV_GET,
            version: 1,
        };
        let parsed = NetdevMsg::parse_with_param(&buf, hdr).expect("parses");
        assert_eq!(xdp_features_of(&parsed), Some(0x47));
        assert_eq!(xdp_features_of(&reply(vec![1, 2, 3])), None);
        assert!(NetdevMsg::parse_with_param(&buf[..buf.len() - 3], hdr).is_err());
    }

    #[test]
    fn the_kernel_answers_for_loopback() {
        // The family exists on every kernel the project supports (6.3+); loopback takes no
        // redirected frames.
        let mut n = Netdev::open().expect("netdev family");
        let f = n.xdp_features(1).expect("loopback's features");
        assert_eq!(f & XDP_ACT_NDO_XMIT, 0);
        assert!(n.xdp_features(u32::MAX).is_err());
    }
}
