//! The control-socket wire protocol between `xvsadm` and `xvsd` (documented in
//! `docs/control-protocol.md`). Pure encoding and decoding; the binaries do the IO.
//!
//! Every message is a frame: the 4-byte magic `XVS1` (the protocol version is its last byte),
//! a big-endian u32 payload length, then the payload. A request carries the command line and
//! standard input; a response carries the exit status, standard output and standard error.

/// Frame magic and protocol version.
pub const MAGIC: [u8; 4] = *b"XVS1";
/// Largest request payload accepted (a `-R` of 100,000 lines is about 6 MB).
pub const MAX_REQUEST: usize = 64 << 20;
/// Largest response payload accepted by the client.
pub const MAX_RESPONSE: usize = 1 << 30;
/// Most arguments in a request.
pub const MAX_ARGS: usize = 4096;

/// A request: an ipvsadm command line and, for `-R`, its standard input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// Arguments without the program name.
    pub args: Vec<String>,
    /// Standard input (for `-R`).
    pub stdin: String,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// Exit status.
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Response {
    /// A failed request: `status` and the message for standard error.
    pub fn failure(status: i32, stderr: impl Into<String>) -> Response {
        Response {
            status,
            stderr: stderr.into(),
            ..Default::default()
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Wrong magic or version.
    #[error("bad magic or unsupported protocol version")]
    BadMagic,
    /// Payload larger than allowed.
    #[error("message of {0} bytes is larger than allowed")]
    TooLarge(usize),
    /// The payload does not decode.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn frame(payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Check a frame header (8 bytes) and return the payload length.
pub fn header(h: &[u8; 8], max: usize) -> Result<usize, FrameError> {
    if h[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, FrameError> {
        if self.0.len() < 4 {
            return Err(FrameError::Malformed("truncated"));
        }
        let v = u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]);
        self.0 = &self.0[4..];
        Ok(v)
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(FrameError::Malformed("truncated string"));
        }
        let s = std::str::from_utf8(&self.0[..n])
            .map_err(|_| FrameError::Malformed("not UTF-8"))?
            .to_string();
        self.0 = &self.0[n..];
        Ok(s)
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed("trailing bytes"))
        }
    }
}

/// Encode a request frame.
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(r.args.len() as u32).to_be_bytes());
    for a in &r.args {
        put_bytes(&mut p, a.as_bytes());
    }
    put_bytes(&mut p, r.stdin.as_bytes());
    frame(p)
}

/// Decode a request payload.
pub fn decode_request(payload: &[u8]) -> Result<Request, FrameError> {
    let mut r = Reader(payload);
    let n = r.u32()? as usize;
    if n > MAX_ARGS {
        return Err(FrameError::Malformed("too many arguments"));
    }
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        args.push(r.string()?);
    }
    let stdin = r.string()?;
    r.end()?;
    Ok(Request { args, stdin })
}

/// Encode a response frame.
pub fn encode_response(r: &Response) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&r.status.to_be_bytes());
    put_bytes(&mut p, r.stdout.as_bytes());
    put_bytes(&mut p, r.stderr.as_bytes());
    frame(p)
}

/// Decode a response payload.
pub fn decode_response(payload: &[u8]) -> Result<Response, FrameError> {
    let mut r = Reader(payload);
    let status = r.u32()? as i32;
    let stdout = r.string()?;
    let stderr = r.string()?;
    r.end()?;
    Ok(Response {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let req = Request {
            args: vec!["-A".into(), "-t".into(), "10.0.0.1:80".into()],
            stdin: "x\ny".into(),
        };
        let f = encode_request(&req);
        let len = header(f[..8].try_into().unwrap(), MAX_REQUEST).unwrap();
        assert_eq!(decode_request(&f[8..8 + len]).unwrap(), req);
        let resp = Response {
            status: -1,
            stdout: "out".into(),
            stderr: "err".into(),
        };
        let f = encode_response(&resp);
        assert_eq!(decode_response(&f[8..]).unwrap(), resp);
    }

    #[test]
    fn refusals() {
        assert_eq!(header(b"HTTP/1.0", MAX_REQUEST), Err(FrameError::BadMagic));
        let mut h = *b"XVS1\0\0\0\0";
        h[4..].copy_from_slice(&(MAX_REQUEST as u32 + 1).to_be_bytes());
        assert!(matches!(
            header(&h, MAX_REQUEST),
            Err(FrameError::TooLarge(_))
        ));
        assert!(decode_request(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode_request(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
