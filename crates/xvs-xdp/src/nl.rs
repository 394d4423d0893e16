//! One netlink request and its replies, for any family (routes, generic netlink).

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::Socket;

/// Send `msg` (a dump when `dump`) with sequence number `seq` on `sock`, connected to the
/// kernel, and collect the replies to it: all of a dump's, or the first of a request's. A
/// netlink error is the `io::Error` of its code.
pub(crate) fn transact<M>(sock: &mut Socket, seq: u32, msg: M, dump: bool) -> io::Result<Vec<M>>
where
    M: NetlinkSerializable + NetlinkDeserializable + Debug,
{
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    hdr.sequence_number = seq;
    let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut off = 0;
        while off < data.len() {
            let m = NetlinkMessage::<M>::deserialize(&data[off..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            if len == 0 {
                break;
            }
            off += len;
            if m.header.sequence_number != seq {
                continue;
            }
            match m.payload {
                NetlinkPayload::InnerMessage(x) => out.push(x),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(out),
                    };
                }
                _ => {}
            }
        }
        if !dump && !out.is_empty() {
            return Ok(out);
        }
    }
}
