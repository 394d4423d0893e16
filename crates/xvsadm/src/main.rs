//! `xvsadm`: ipvsadm's command line for xvs. Syntax is checked here (so `-h`, `-v` and errors
//! need no daemon); the command then goes to xvsd over its control socket (`XVS_CONTROL` or
//! `/run/xvs/xvsd.sock`), which runs it and returns ipvsadm's output and exit status.
//!
//! `xvsadm --xvs-stats` (not an ipvsadm command) prints the data plane's counters: the XDP
//! program's, each worker's, each socket's `XDP_STATISTICS`, the engine's drop reasons, the
//! table's evictions and the DoS defences'. `xvsadm --sysctl [NAME[=VALUE]]` lists, reads or
//! sets the IPVS sysctls xvs implements (`net.ipv4.vs.*`). `xvsadm --xvs-conn-sync` prints the
//! connections with their origin (`LOCAL`, or `SYNC` for entries a sync backup entered), as the
//! kernel's `/proc/net/ip_vs_conn_sync` does. `xvsadm --xvs-fwmark-rules [-R]` lists the
//! firewall-mark rules or replaces them with the `iptables-save` text on standard input.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use xvs_ipvsadm::control::{decode_response, encode_request, header, Request, MAX_RESPONSE};
use xvs_ipvsadm::exec::{usage_text, version_text};
use xvs_ipvsadm::parse::{parse_command, Command};

mod resolve;

const DEFAULT_CONTROL: &str = "/run/xvs/xvsd.sock";

fn exit(status: i32) -> ExitCode {
    ExitCode::from((status & 0xff) as u8)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prog = "xvsadm";
    let path = std::env::var("XVS_CONTROL").unwrap_or_else(|_| DEFAULT_CONTROL.to_string());
    // xvs's own commands, outside ipvsadm's syntax: the data plane's counters, the sysctls.
    if args.first().is_some_and(|a| a == "--xvs-fwmark-rules") && args.len() <= 2 {
        // `-R`: the new rules on standard input, as `-R` takes ipvsadm's.
        let mut stdin = String::new();
        if args.get(1).is_some_and(|a| a == "-R") {
            if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
                eprintln!("xvsadm: reading standard input: {e}");
                return exit(1);
            }
        }
        return send(&path, Request { args, stdin });
    }
    if (args.len() == 1 && (args[0] == "--xvs-stats" || args[0] == "--xvs-conn-sync"))
        || (args.first().is_some_and(|a| a == "--sysctl") && args.len() <= 2)
    {
        return send(
            &path,
            Request {
                args,
                stdin: String::new(),
            },
        );
    }
    // Host and service names resolved here, as ipvsadm resolves them (xvsd does no IO).
    let args = resolve::args(&args);
    let cmd = match parse_command(prog, &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", e.message);
            return exit(e.status);
        }
    };
    match cmd {
        Command::Help => {
            return output(&usage_text(prog), "").map_or_else(|c| c, |()| ExitCode::SUCCESS);
        }
        Command::Version => {
            return output(&version_text(), "").map_or_else(|c| c, |()| ExitCode::SUCCESS);
        }
        _ => {}
    }
    let mut stdin = String::new();
    if cmd == Command::Restore {
        if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
            eprintln!("xvsadm: reading standard input: {e}");
            return exit(255);
        }
        stdin = resolve::restore(&stdin);
    }
    send(&path, Request { args, stdin })
}

fn send(path: &str, req: Request) -> ExitCode {
    let resp = match talk(path, &req) {
        Ok(r) => r,
        Err(e) => {
            // ipvsadm's own message when it cannot reach IPVS, naming xvsd instead.
            eprintln!(
                "Can't initialize ipvs: {e}\nAre you sure that xvsd is running and serving {path}?"
            );
            return exit(2);
        }
    };
    if let Err(code) = output(&resp.stdout, &resp.stderr) {
        return code;
    }
    exit(resp.status)
}

/// Write a reply's two texts. A reader that went away (`xvsadm -L -n | head -1`) ends the
/// command quietly with the status a C tool killed by SIGPIPE shows (141), as ipvsadm would.
fn output(stdout: &str, stderr: &str) -> Result<(), ExitCode> {
    let wrote = std::io::stdout()
        .lock()
        .write_all(stdout.as_bytes())
        .and_then(|()| std::io::stdout().flush());
    match wrote {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(ExitCode::from(141)),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "xvsadm: writing the output: {e}");
            return Err(ExitCode::from(1));
        }
    }
    let _ = std::io::stderr().write_all(stderr.as_bytes());
    Ok(())
}

fn talk(path: &str, req: &Request) -> std::io::Result<xvs_ipvsadm::control::Response> {
    let mut s = UnixStream::connect(path)?;
    s.write_all(&encode_request(req))?;
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    let len = header(&h, MAX_RESPONSE)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    decode_response(&payload).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
