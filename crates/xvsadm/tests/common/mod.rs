//! What the integration tests share: running xvsadm against a daemon's socket.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Run `xvsadm ARGS` (split at whitespace) with `stdin` against the daemon at `sock`: its exit
/// status, standard output and standard error.
pub fn xvsadm(sock: &Path, args: &str, stdin: &str) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .args(args.split_whitespace())
        .env("XVS_CONTROL", sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xvsadm starts");
    c.stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("xvsadm reads its input");
    let o = c.wait_with_output().expect("xvsadm ends");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
