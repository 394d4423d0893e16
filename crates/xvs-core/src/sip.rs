//! The SIP persistence engine (`--pe sip`, mainline's `ip_vs_pe_sip.c`): a persistent service's
//! UDP datagrams that carry a SIP Call-ID are held to one real server per call, the template's
//! key being the usual one (client network, virtual address and port) plus the Call-ID.
//!
//! The Call-ID is found as `get_callid` finds it with `ct_sip_get_header`
//! (`nf_conntrack_sip.c`, v6.12): a `Call-ID` or compact `i` header at the start of a line
//! (after CR, LF or CRLF; never the first line), case-insensitive, then optional whitespace
//! (continuation lines included), a colon, optional whitespace; the value is a word, or
//! word@word, of the characters `iswordc` allows; at most 255 bytes and followed by CR or LF.
//! A datagram without one is persisted by the default rule (no engine data).
//!
//! The connection table keys a template by (protocol, client, port, virtual address, port):
//! a SIP template takes the client port 0 of the kernel's key plus a slot 1..=65535 found from
//! the Call-ID's hash by linear probing, and [`SipCalls`] remembers each slot's Call-ID, so
//! two calls never share a template. Listings show such a template with port 0 and its
//! Call-ID, as the kernel does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;

use crate::conn::ConnKey;

/// The kernel's limit on engine data (`IP_VS_PEDATA_MAXLEN`).
pub const PEDATA_MAXLEN: usize = 255;

/// `iswordc` of `nf_conntrack_sip.c`: the characters of a Call-ID word.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'"'
                | b'%'
                | b'('..=b'+'
                | b':'
                | b'<'
                | b'>'
                | b'?'
                | b'['..=b']'
                | b'_'
                | b'`'
                | b'{'
                | b'}'
                | b'~'
                | b'-'..=b'/'
                | b'\''
        )
}

fn word_len(d: &[u8]) -> usize {
    d.iter().take_while(|&&c| is_word(c)).count()
}

/// `callid_len`: a word, or word@word (0 when the part after the `@` is empty).
fn callid_len(d: &[u8]) -> usize {
    let len = word_len(d);
    if len == 0 || d.get(len) != Some(&b'@') {
        return len;
    }
    match word_len(&d[len + 1..]) {
        0 => 0,
        dom => len + 1 + dom,
    }
}

/// Past the line terminator at `at` (CR LF as one): the next line's first byte, or None when
/// the data ends there.
fn next_line(d: &[u8], at: usize) -> Option<usize> {
    let at = at + 1 + usize::from(d[at] == b'\r' && d.get(at + 1) == Some(&b'\n'));
    (at < d.len()).then_some(at)
}

/// `sip_follow_continuation`: from a line terminator at `at`, the first non-blank byte of a
/// continuation line, or None when the next line is not one.
fn follow_continuation(d: &[u8], at: usize) -> Option<usize> {
    let mut at = next_line(d, at)?;
    if d[at] != b' ' && d[at] != b'\t' {
        return None;
    }
    while at < d.len() && (d[at] == b' ' || d[at] == b'\t') {
        at += 1;
    }
    Some(at)
}

/// `sip_skip_whitespace`: blanks, and a line break only into a continuation line.
fn skip_whitespace(d: &[u8], mut at: usize) -> Option<usize> {
    while at < d.len() {
        match d[at] {
            b' ' | b'\t' => at += 1,
            b'\r' | b'\n' => return follow_continuation(d, at),
            _ => break,
        }
    }
    Some(at)
}

/// One `ct_sip_get_header` for the Call-ID from `from`: Some(Ok((offset, len))) on a match,
/// Some(Err(offset)) for a header whose value is empty (the caller searches on from there),
/// None when there is none.
fn get_header(d: &[u8], from: usize) -> Option<Result<(usize, usize), usize>> {
    const NAME: &[u8] = b"call-id";
    let mut i = from;
    while i < d.len() {
        if d[i] != b'\r' && d[i] != b'\n' {
            i += 1;
            continue;
        }
        i = next_line(d, i)?;
        // (Where the kernel's loop `continue`s, its `dptr++` skips the line's first byte.)
        if d[i] == b' ' || d[i] == b'\t' {
            i += 1;
            continue;
        }
        let rest = &d[i..];
        if rest.len() >= NAME.len() && rest[..NAME.len()].eq_ignore_ascii_case(NAME) {
            i += NAME.len();
        } else if rest.len() >= 2
            && rest[0].eq_ignore_ascii_case(&b'i')
            && !rest[1].is_ascii_alphabetic()
        {
            i += 1;
        } else {
            i += 1;
            continue;
        }
        let at = skip_whitespace(d, i)?;
        if at >= d.len() || d[at] != b':' || at + 1 >= d.len() {
            return None;
        }
        let at = skip_whitespace(d, at + 1)?;
        return Some(match callid_len(&d[at..]) {
            0 => Err(at),
            n => Ok((at, n)),
        });
    }
    None
}

/// The Call-ID of a SIP message (a UDP datagram's payload), as `get_callid` accepts it.
pub fn call_id(payload: &[u8]) -> Option<&[u8]> {
    let mut from = 0;
    let (off, len) = loop {
        match get_header(payload, from)? {
            Ok(m) => break m,
            Err(at) => from = at,
        }
    };
    if len > PEDATA_MAXLEN || off + len == payload.len() {
        return None;
    }
    matches!(payload[off + len], b'\r' | b'\n').then(|| &payload[off..off + len])
}

/// The Call-IDs of the SIP templates, by the template's key (its slot in the client port).
#[derive(Debug, Default)]
pub struct SipCalls {
    calls: Mutex<HashMap<ConnKey, Box<[u8]>>>,
    seed: u64,
    ticks: AtomicU32,
}

/// Ticks (seconds) between two passes that forget the slots of expired templates.
const GC_TICKS: u32 = 60;

impl SipCalls {
    /// Call-IDs whose slots hash with `seed`.
    pub fn new(seed: u64) -> SipCalls {
        SipCalls {
            seed,
            ..SipCalls::default()
        }
    }

    /// The first slot (client port) the probing for `call` starts at: FNV-1a, seeded.
    pub fn first_slot(&self, call: &[u8]) -> u16 {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ self.seed;
        for &b in call {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h % 65535) as u16 + 1
    }

    /// Once a minute (called once a second): forget the slots whose template is gone.
    pub fn tick(&self, alive: impl FnMut(&ConnKey) -> bool) {
        if self.ticks.fetch_add(1, Relaxed) % GC_TICKS == GC_TICKS - 1 {
            self.retain(alive);
        }
    }

    /// The Call-ID of the template at `key`.
    pub fn get(&self, key: &ConnKey) -> Option<Box<[u8]>> {
        self.lock().get(key).cloned()
    }

    /// Whether the template at `key` is `call`'s.
    pub fn is(&self, key: &ConnKey, call: &[u8]) -> bool {
        self.lock().get(key).is_some_and(|c| **c == *call)
    }

    /// Record that the template at `key` is `call`'s.
    pub fn set(&self, key: ConnKey, call: &[u8]) {
        self.lock().insert(key, call.into());
    }

    /// Forget the slots whose template is gone (`alive` answers for a key).
    pub fn retain(&self, mut alive: impl FnMut(&ConnKey) -> bool) {
        self.lock().retain(|k, _| alive(k));
    }

    /// Slots remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// None remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Call-IDs, locked (the data path holds them while it creates a call's template).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnKey, Box<[u8]>>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(msg: &str) -> Option<&str> {
        call_id(msg.as_bytes()).map(|c| std::str::from_utf8(c).unwrap())
    }

    #[test]
    fn call_ids_as_the_kernel_finds_them() {
        let invite = "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.2\r\n\
                      Call-ID: a84b4c76e66710@pc33.atlanta.com\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(id(invite), Some("a84b4c76e66710@pc33.atlanta.com"));
        // Compact form, any case, blanks and a continuation line before the value; LF only.
        assert_eq!(id("BYE x SIP/2.0\ni :\n  abc-123\n"), Some("abc-123"));
        assert_eq!(id("BYE x SIP/2.0\r\nCALL-id:xyz\r\n"), Some("xyz"));
        // Never on the first line; a compact name must not run into letters ("info").
        assert_eq!(id("Call-ID: first\r\n"), None);
        assert_eq!(id("X\r\nInfo: 1\r\nCall-ID: two\r\n"), Some("two"));
        // A header with no word is skipped and the search goes on.
        assert_eq!(
            id("X\r\nCall-ID: \x01\r\nCall-ID: later\r\n"),
            Some("later")
        );
        // The value must end the line, and not the datagram; word@ with no domain is none.
        assert_eq!(id("X\r\nCall-ID: abc"), None);
        assert_eq!(id("X\r\nCall-ID: abc def\r\n"), None);
        assert_eq!(id("X\r\nCall-ID: abc@\r\n"), None);
        assert_eq!(id("X\r\nSubject: hi\r\n"), None);
        // As the kernel's scan: the line after an empty LF-only line is not looked at.
        assert_eq!(id("X\n\nCall-ID: a\n"), None);
        // At most 255 bytes.
        let long = format!("X\r\nCall-ID: {}\r\n", "a".repeat(255));
        assert_eq!(id(&long).map(str::len), Some(255));
        let longer = format!("X\r\nCall-ID: {}\r\n", "a".repeat(256));
        assert_eq!(id(&longer), None);
    }

    #[test]
    fn slots_are_never_zero() {
        let s = SipCalls::default();
        for n in 0..1000u32 {
            assert_ne!(s.first_slot(&n.to_be_bytes()), 0);
        }
    }
}
