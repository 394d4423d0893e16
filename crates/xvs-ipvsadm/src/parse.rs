//! ipvsadm's command line (reference §1): popt-style tokenising, one command first, options
//! applied in order, `generic_opt_check`'s command × option table, and the checks ipvsadm makes
//! before it talks to the kernel. The result is a typed [`Command`] or the error text and exit
//! status ipvsadm would give.

use std::net::{IpAddr, Ipv4Addr};

use xvs_core::dest::DestConfig;
use xvs_core::service::{ServiceConfig, SVC_F_ONEPACKET, SVC_F_PERSISTENT};
use xvs_core::service::{SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3};
use xvs_core::types::{
    Af, ForwardMethod, Netmask, Protocol, ServiceKey, TunnelConfig, TunnelCsum, TunnelType,
};

use crate::addr::{inet_aton, parse_host_port, string_to_number};

/// Persistence timeout when `-p` has no value (ipvsadm's 6 × 60; the man page says 300).
pub const DEFAULT_PERSISTENCE: u32 = 360;
/// Largest `-p` / `--set` value (31 days).
pub const MAX_TIMEOUT: i64 = 86400 * 31;

/// A refused command line: what ipvsadm prints on stderr and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The message (without trailing newline).
    pub message: String,
    /// Exit status (2 for validation errors, 255 for "Try ..." and popt errors).
    pub status: i32,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

fn fail<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        message: msg.into(),
        status: 2,
    })
}

/// Sync daemon role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonRole {
    /// Sends connection state.
    Master,
    /// Receives it.
    Backup,
}

/// `--start-daemon` settings (unset values are left to the defaults of the daemon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Role.
    pub role: DaemonRole,
    /// Multicast interface (ipvsadm fills in `eth0`).
    pub mcast_ifn: String,
    /// Sync id 0..=255.
    pub syncid: u8,
    /// Multicast group.
    pub group: Option<IpAddr>,
    /// UDP port.
    pub port: Option<u16>,
    /// Multicast TTL.
    pub ttl: Option<u8>,
    /// Maximum payload.
    pub maxlen: Option<u16>,
}

/// Listing options of `-L`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `-n`.
    pub numeric: bool,
    /// `-c`.
    pub connections: bool,
    /// One service only.
    pub service: Option<ServiceKey>,
    /// `--timeout`.
    pub timeout: bool,
    /// `--daemon`.
    pub daemon: bool,
    /// `--stats`.
    pub stats: bool,
    /// `--rate`.
    pub rate: bool,
    /// `--thresholds`.
    pub thresholds: bool,
    /// `--persistent-conn`.
    pub persistent_conn: bool,
    /// `--nosort`.
    pub nosort: bool,
    /// `-X`.
    pub exact: bool,
    /// `--tun-info`.
    pub tun_info: bool,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `-A`.
    AddService(ServiceConfig),
    /// `-E`.
    EditService(ServiceConfig),
    /// `-D`.
    DelService(ServiceKey),
    /// `-C`.
    Clear,
    /// `-R`: the caller reads standard input.
    Restore,
    /// `-S`.
    Save {
        /// `-n`.
        numeric: bool,
    },
    /// `-a`.
    AddDest(ServiceKey, DestConfig),
    /// `-e`.
    EditDest(ServiceKey, DestConfig),
    /// `-d`.
    DelDest(ServiceKey, IpAddr, u16),
    /// `-L` / `-l`.
    List(ListOptions),
    /// `-Z`.
    Zero(Option<ServiceKey>),
    /// `--set tcp tcpfin udp`.
    SetTimeouts(u32, u32, u32),
    /// `--start-daemon`.
    StartDaemon(DaemonConfig),
    /// `--stop-daemon`.
    StopDaemon(DaemonRole),
    /// `-h`.
    Help,
    /// `-v`.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Add,
    Edit,
    Del,
    Flush,
    List,
    AddDest,
    DelDest,
    EditDest,
    Set,
    Restore,
    Save,
    Zero,
    StartDaemon,
    StopDaemon,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Add => "add-service",
            Cmd::Edit => "edit-service",
            Cmd::Del => "delete-service",
            Cmd::Flush => "flush",
            Cmd::List => "list",
            Cmd::AddDest => "add-server",
            Cmd::DelDest => "delete-server",
            Cmd::EditDest => "edit-server",
            Cmd::Set => "set",
            Cmd::Restore => "restore",
            Cmd::Save => "save",
            Cmd::Zero => "zero",
            Cmd::StartDaemon => "start-daemon",
            Cmd::StopDaemon => "stop-daemon",
        }
    }
}

/// Options in ipvsadm's `optnames` order, which decides which error is reported first.
const OPTNAMES: [&str; 34] = [
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "mcast-interface",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "syncid",
    "exact",
    "ops",
    "pe",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
    "sched-flags",
    "mcast-group",
    "mcast-port",
    "mcast-ttl",
    "sync-maxlen",
    "tun-info",
];

mod opt {
    pub const NUMERIC: usize = 0;
    pub const CONNECTION: usize = 1;
    pub const SERVICE: usize = 2;
    pub const SCHEDULER: usize = 3;
    pub const PERSISTENT: usize = 4;
    pub const NETMASK: usize = 5;
    pub const SERVER: usize = 6;
    pub const FORWARD: usize = 7;
    pub const WEIGHT: usize = 8;
    pub const UTHRESHOLD: usize = 9;
    pub const LTHRESHOLD: usize = 10;
    pub const MCAST: usize = 11;
    pub const TIMEOUT: usize = 12;
    pub const DAEMON: usize = 13;
    pub const STATS: usize = 14;
    pub const RATE: usize = 15;
    pub const THRESHOLDS: usize = 16;
    pub const PERSISTENTCONN: usize = 17;
    pub const NOSORT: usize = 18;
    pub const SYNCID: usize = 19;
    pub const EXACT: usize = 20;
    pub const ONEPACKET: usize = 21;
    pub const PE: usize = 22;
    pub const TUN_TYPE: usize = 23;
    pub const TUN_PORT: usize = 24;
    pub const TUN_NOCSUM: usize = 25;
    pub const TUN_CSUM: usize = 26;
    pub const TUN_REMCSUM: usize = 27;
    pub const SCHED_FLAGS: usize = 28;
    pub const MCAST_GROUP: usize = 29;
    pub const MCAST_PORT: usize = 30;
    pub const MCAST_TTL: usize = 31;
    pub const SYNC_MAXLEN: usize = 32;
    pub const TUN_INFO: usize = 33;
}

/// `commands_v_options`: '+' required, ' ' optional, 'x' illegal, '1' at most one of the group.
fn allowed(cmd: Cmd, o: usize) -> u8 {
    use opt::*;
    match cmd {
        Cmd::Add | Cmd::Edit => match o {
            SERVICE => b'+',
            SCHEDULER | PERSISTENT | NETMASK | ONEPACKET | PE | SCHED_FLAGS => b' ',
            _ => b'x',
        },
        Cmd::Del => match o {
            SERVICE => b'+',
            _ => b'x',
        },
        Cmd::Flush | Cmd::Set | Cmd::Restore => b'x',
        Cmd::AddDest | Cmd::EditDest => match o {
            SERVICE | SERVER => b'+',
            FORWARD | WEIGHT | UTHRESHOLD | LTHRESHOLD | TUN_TYPE | TUN_PORT | TUN_NOCSUM
            | TUN_CSUM | TUN_REMCSUM => b' ',
            _ => b'x',
        },
        Cmd::DelDest => match o {
            SERVICE | SERVER => b'+',
            _ => b'x',
        },
        Cmd::List => match o {
            NUMERIC | STATS | RATE | THRESHOLDS | PERSISTENTCONN | NOSORT | EXACT | TUN_INFO
            | SYNCID => b' ',
            CONNECTION | SERVICE | TIMEOUT | DAEMON => b'1',
            _ => b'x',
        },
        Cmd::Save => match o {
            NUMERIC => b' ',
            _ => b'x',
        },
        Cmd::Zero => match o {
            SERVICE => b' ',
            _ => b'x',
        },
        Cmd::StartDaemon => match o {
            MCAST | SYNCID | MCAST_GROUP | MCAST_PORT | MCAST_TTL | SYNC_MAXLEN => b' ',
            _ => b'x',
        },
        Cmd::StopDaemon => match o {
            SYNCID => b' ',
            _ => b'x',
        },
    }
}

/// What an option token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Command(Cmd),
    Help,
    Version,
    StartDaemon,
    StopDaemon,
    Tcp,
    Udp,
    Sctp,
    Fwmark,
    Scheduler,
    Persistent,
    Netmask,
    Server,
    Masq,
    Ipip,
    Gate,
    Weight,
    UThresh,
    LThresh,
    Numeric,
    Connection,
    McastIfn,
    Syncid,
    Timeout,
    Daemon,
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
    NoSort,
    Sort,
    Exact,
    Ipv6,
    Ops,
    Pe,
    SchedFlags,
    TunType,
    TunPort,
    TunNoCsum,
    TunCsum,
    TunRemCsum,
    TunInfo,
    McastGroup,
    McastPort,
    McastTtl,
    SyncMaxlen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    None,
    Required,
    Optional,
}

fn by_long(name: &str) -> Option<(Tok, Arg)> {
    use Tok::*;
    Some(match name {
        "add-service" => (Command(Cmd::Add), Arg::None),
        "edit-service" => (Command(Cmd::Edit), Arg::None),
        "delete-service" => (Command(Cmd::Del), Arg::None),
        "clear" => (Command(Cmd::Flush), Arg::None),
        "list" => (Command(Cmd::List), Arg::None),
        "zero" => (Command(Cmd::Zero), Arg::None),
        "add-server" => (Command(Cmd::AddDest), Arg::None),
        "edit-server" => (Command(Cmd::EditDest), Arg::None),
        "delete-server" => (Command(Cmd::DelDest), Arg::None),
        "set" => (Command(Cmd::Set), Arg::None),
        "restore" => (Command(Cmd::Restore), Arg::None),
        "save" => (Command(Cmd::Save), Arg::None),
        "help" => (Help, Arg::None),
        "version" => (Version, Arg::None),
        "start-daemon" => (StartDaemon, Arg::Required),
        "stop-daemon" => (StopDaemon, Arg::Required),
        "tcp-service" => (Tcp, Arg::Required),
        "udp-service" => (Udp, Arg::Required),
        "sctp-service" => (Sctp, Arg::Required),
        "fwmark-service" => (Fwmark, Arg::Required),
        "scheduler" => (Scheduler, Arg::Required),
        "persistent" => (Persistent, Arg::Optional),
        "netmask" => (Netmask, Arg::Required),
        "real-server" => (Server, Arg::Required),
        "masquerading" => (Masq, Arg::None),
        "ipip" => (Ipip, Arg::None),
        "gatewaying" => (Gate, Arg::None),
        "weight" => (Weight, Arg::Required),
        "u-threshold" => (UThresh, Arg::Required),
        "l-threshold" => (LThresh, Arg::Required),
        "numeric" => (Numeric, Arg::None),
        "connection" => (Connection, Arg::None),
        "mcast-interface" => (McastIfn, Arg::Required),
        "syncid" => (Syncid, Arg::Required),
        "timeout" => (Timeout, Arg::None),
        "daemon" => (Daemon, Arg::None),
        "stats" => (Stats, Arg::None),
        "rate" => (Rate, Arg::None),
        "thresholds" => (Thresholds, Arg::None),
        "persistent-conn" => (PersistentConn, Arg::None),
        "nosort" => (NoSort, Arg::None),
        "sort" => (Sort, Arg::None),
        "exact" => (Exact, Arg::None),
        "ipv6" => (Ipv6, Arg::None),
        "ops" => (Ops, Arg::None),
        "pe" => (Pe, Arg::Required),
        "sched-flags" => (SchedFlags, Arg::Required),
        "tun-type" => (TunType, Arg::Required),
        "tun-port" => (TunPort, Arg::Required),
        "tun-nocsum" => (TunNoCsum, Arg::None),
        "tun-csum" => (TunCsum, Arg::None),
        "tun-remcsum" => (TunRemCsum, Arg::None),
        "tun-info" => (TunInfo, Arg::None),
        "mcast-group" => (McastGroup, Arg::Required),
        "mcast-port" => (McastPort, Arg::Required),
        "mcast-ttl" => (McastTtl, Arg::Required),
        "sync-maxlen" => (SyncMaxlen, Arg::Required),
        _ => return None,
    })
}

fn by_short(c: char) -> Option<(Tok, Arg)> {
    use Tok::*;
    Some(match c {
        'A' => (Command(Cmd::Add), Arg::None),
        'E' => (Command(Cmd::Edit), Arg::None),
        'D' => (Command(Cmd::Del), Arg::None),
        'C' => (Command(Cmd::Flush), Arg::None),
        'L' | 'l' => (Command(Cmd::List), Arg::None),
        'Z' => (Command(Cmd::Zero), Arg::None),
        'a' => (Command(Cmd::AddDest), Arg::None),
        'e' => (Command(Cmd::EditDest), Arg::None),
        'd' => (Command(Cmd::DelDest), Arg::None),
        'R' => (Command(Cmd::Restore), Arg::None),
        'S' => (Command(Cmd::Save), Arg::None),
        'h' => (Help, Arg::None),
        'v' => (Version, Arg::None),
        't' => (Tcp, Arg::Required),
        'u' => (Udp, Arg::Required),
        'f' => (Fwmark, Arg::Required),
        's' => (Scheduler, Arg::Required),
        'p' => (Persistent, Arg::Optional),
        'M' => (Netmask, Arg::Required),
        'r' => (Server, Arg::Required),
        'm' => (Masq, Arg::None),
        'i' => (Ipip, Arg::None),
        'g' => (Gate, Arg::None),
        'w' => (Weight, Arg::Required),
        'x' => (UThresh, Arg::Required),
        'y' => (LThresh, Arg::Required),
        'n' => (Numeric, Arg::None),
        'c' => (Connection, Arg::None),
        'X' => (Exact, Arg::None),
        '6' => (Ipv6, Arg::None),
        'o' => (Ops, Arg::None),
        'b' => (SchedFlags, Arg::Required),
        _ => return None,
    })
}

/// One option as popt returns it: the token, its text (for error messages) and its argument.
struct Item {
    tok: Tok,
    text: String,
    arg: Option<String>,
}

/// popt-style tokenising: options anywhere, bundled short options, `--opt=value`, `--` ends
/// options, everything else is a positional argument.
fn tokenize(args: &[String]) -> Result<(Vec<Item>, Vec<String>), ParseError> {
    let popt_err = |text: &str, what: &str| ParseError {
        message: format!("{text}: {what}"),
        status: 255,
    };
    let mut items = Vec::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            positional.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let Some((tok, kind)) = by_long(name) else {
                return Err(popt_err(a, "unknown option"));
            };
            let text = format!("--{name}");
            let arg = match (kind, inline) {
                (Arg::None, Some(_)) => {
                    return Err(popt_err(&text, "option does not take an argument"))
                }
                (Arg::None, None) => None,
                (_, Some(v)) => Some(v),
                (Arg::Required, None) => {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| popt_err(&text, "missing argument"))?;
                    i += 1;
                    Some(v)
                }
                (Arg::Optional, None) => match args.get(i) {
                    Some(v) if !v.starts_with('-') => {
                        i += 1;
                        Some(v.clone())
                    }
                    _ => None,
                },
            };
            items.push(Item { tok, text, arg });
        } else if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                let text = format!("-{c}");
                let Some((tok, kind)) = by_short(c) else {
                    return Err(popt_err(&text, "unknown option"));
                };
                let rest: String = chars[k..].iter().collect();
                let arg = match kind {
                    Arg::None => None,
                    _ if !rest.is_empty() => {
                        k = chars.len();
                        Some(rest)
                    }
                    Arg::Required => {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| popt_err(&text, "missing argument"))?;
                        i += 1;
                        Some(v)
                    }
                    Arg::Optional => match args.get(i) {
                        Some(v) if !v.starts_with('-') => {
                            i += 1;
                            Some(v.clone())
                        }
                        _ => None,
                    },
                };
                items.push(Item { tok, text, arg });
            }
        } else {
            positional.push(a.clone());
        }
    }
    Ok((items, positional))
}

/// Everything ipvsadm's `struct ipvs_command_entry` holds while options are applied.
struct Entry {
    cmd: Cmd,
    options: u64,
    proto: Protocol,
    af: Af,
    addr: IpAddr,
    port: u16,
    fwmark: u32,
    sched: String,
    flags: u32,
    timeout: u32,
    netmask: Netmask,
    pe: Option<String>,
    dest_af: Af,
    daddr: IpAddr,
    dport: u16,
    method: ForwardMethod,
    weight: i32,
    u_thresh: u32,
    l_thresh: u32,
    tunnel: TunnelConfig,
    daemon: DaemonConfig,
    list: ListOptions,
}

/// The text ipvsadm prints before exiting 255 when the first option is not a command.
pub fn try_help(prog: &str) -> String {
    format!("Try `{prog} -h' or '{prog} --help' for more information.")
}

/// Parse one command line (without the program name). `prog` is used in the "Try" line.
pub fn parse_command(prog: &str, args: &[String]) -> Result<Command, ParseError> {
    if args.is_empty() {
        return Ok(Command::List(ListOptions::default()));
    }
    let (items, positional) = tokenize(args)?;
    let mut it = items.into_iter();
    let try_help_err = || ParseError {
        message: try_help(prog),
        status: 255,
    };
    let first = it.next().ok_or_else(try_help_err)?;
    let mut daemon_role = None;
    let cmd = match first.tok {
        Tok::Command(c) => c,
        Tok::Help => return Ok(Command::Help),
        Tok::Version => return Ok(Command::Version),
        Tok::StartDaemon | Tok::StopDaemon => {
            let role = match first.arg.as_deref() {
                Some("master") => DaemonRole::Master,
                Some("backup") => DaemonRole::Backup,
                _ if first.tok == Tok::StartDaemon => {
                    return fail("illegal start-daemon parameter specified")
                }
                _ => return fail("illegal start_daemon specified"),
            };
            daemon_role = Some(role);
            if first.tok == Tok::StartDaemon {
                Cmd::StartDaemon
            } else {
                Cmd::StopDaemon
            }
        }
        _ => return Err(try_help_err()),
    };
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut ce = Entry {
        cmd,
        options: 0,
        proto: Protocol::Tcp,
        af: Af::V4,
        addr: any4,
        port: 0,
        fwmark: 0,
        sched: String::new(),
        flags: 0,
        timeout: 0,
        netmask: Netmask::full(Af::V4),
        pe: None,
        dest_af: Af::V4,
        daddr: any4,
        dport: 0,
        method: ForwardMethod::Route,
        weight: 1,
        u_thresh: 0,
        l_thresh: 0,
        tunnel: TunnelConfig::default(),
        daemon: DaemonConfig {
            role: daemon_role.unwrap_or(DaemonRole::Master),
            mcast_ifn: String::new(),
            syncid: 0,
            group: None,
            port: None,
            ttl: None,
            maxlen: None,
        },
        list: ListOptions::default(),
    };
    for item in it {
        apply(&mut ce, item)?;
    }
    finish(ce, positional)
}

/// A number in `min..=max`, or ipvsadm's "illegal WHAT specified".
fn number(arg: &str, min: i64, max: i64, what: &str) -> Result<i64, ParseError> {
    string_to_number(arg, min, max).ok_or_else(|| ParseError {
        message: format!("illegal {what} specified"),
        status: 2,
    })
}

fn set_option(ce: &mut Entry, o: usize) -> Result<(), ParseError> {
    if ce.options & (1 << o) != 0 {
        return fail(format!("multiple '{}' options specified", OPTNAMES[o]));
    }
    ce.options |= 1 << o;
    Ok(())
}

fn has(ce: &Entry, o: usize) -> bool {
    ce.options & (1 << o) != 0
}

/// `-b` as ipvsadm 1.31's `parse_sched_flags` reads it: comma-separated (empty items skipped,
/// as `strtok` does), each error naming the flag.
fn parse_sched_flags(sched: &str, arg: &str) -> Result<u32, ParseError> {
    let sched = if sched.is_empty() { "wlc" } else { sched };
    let mut flags = 0;
    let mut items = arg.split(',').filter(|f| !f.is_empty()).peekable();
    if items.peek().is_none() {
        return fail(format!("invalid scheduler flag `{arg}'"));
    }
    for f in items {
        let (bit, needs) = match f {
            "flag-1" => (SVC_F_SCHED1, None),
            "flag-2" => (SVC_F_SCHED2, None),
            "flag-3" => (SVC_F_SCHED3, None),
            "sh-fallback" => (SVC_F_SCHED1, Some("sh")),
            "sh-port" => (SVC_F_SCHED2, Some("sh")),
            "mh-fallback" => (SVC_F_SCHED1, Some("mh")),
            "mh-port" => (SVC_F_SCHED2, Some("mh")),
            _ => return fail(format!("invalid scheduler flag `{f}'")),
        };
        if needs.is_some_and(|n| n != sched) {
            return fail(format!("incompatible scheduler flag `{f}'"));
        }
        flags |= bit;
    }
    Ok(flags)
}

fn apply(ce: &mut Entry, item: Item) -> Result<(), ParseError> {
    use Tok::*;
    let arg_given = item.arg.is_some();
    let arg = item.arg.unwrap_or_default();
    match item.tok {
        Command(_) | Help | Version | StartDaemon | StopDaemon => {
            return fail(format!("invalid option `{}'", item.text));
        }
        Tcp | Udp | Sctp => {
            set_option(ce, opt::SERVICE)?;
            ce.proto = match item.tok {
                Tcp => Protocol::Tcp,
                Udp => Protocol::Udp,
                _ => Protocol::Sctp,
            };
            let hp = parse_host_port(&arg, ce.proto).ok_or_else(|| ParseError {
                message: "illegal virtual server address[:port] specified".into(),
                status: 2,
            })?;
            ce.addr = hp.addr;
            ce.af = Af::of(&hp.addr);
            if ce.af == Af::V6 {
                ce.netmask = xvs_core::types::Netmask::full(Af::V6);
            }
            if let Some(p) = hp.port {
                ce.port = p;
            }
        }
        Fwmark => {
            set_option(ce, opt::SERVICE)?;
            ce.af = Af::V4;
            ce.proto = Protocol::Tcp;
            let n = string_to_number(&arg, i64::MIN, i64::MAX)
                .filter(|&v| v > 0 && v <= i64::from(u32::MAX));
            match n {
                Some(v) => ce.fwmark = v as u32,
                None => return fail(format!("invalid fwmark value `{arg}' specified")),
            }
        }
        Scheduler => {
            set_option(ce, opt::SCHEDULER)?;
            ce.sched = arg.chars().take(15).collect();
        }
        Persistent => {
            set_option(ce, opt::PERSISTENT)?;
            ce.flags |= SVC_F_PERSISTENT;
            ce.timeout = if arg_given {
                match string_to_number(&arg, 1, MAX_TIMEOUT) {
                    Some(v) => v as u32,
                    None => return fail(format!("invalid timeout value `{arg}' specified")),
                }
            } else {
                DEFAULT_PERSISTENCE
            };
        }
        Netmask => {
            set_option(ce, opt::NETMASK)?;
            if ce.af != Af::V6 {
                match inet_aton(&arg) {
                    Some(m) => ce.netmask = xvs_core::types::Netmask::V4(m),
                    None => return fail("illegal virtual server persistent mask specified"),
                }
            } else {
                // atoi: leading digits, anything after ignored.
                let digits: String = arg
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                let v: u32 = digits.parse().unwrap_or(0);
                if !(1..=128).contains(&v) {
                    return fail("illegal ipv6 netmask specified");
                }
                ce.netmask = xvs_core::types::Netmask::V6(v as u8);
            }
        }
        Server => {
            set_option(ce, opt::SERVER)?;
            let hp = parse_host_port(&arg, ce.proto).ok_or_else(|| ParseError {
                message: "illegal real server address[:port] specified".into(),
                status: 2,
            })?;
            ce.dest_af = Af::of(&hp.addr);
            ce.daddr = hp.addr;
            ce.dport = hp.port.unwrap_or(ce.port);
        }
        Masq | Ipip | Gate => {
            set_option(ce, opt::FORWARD)?;
            ce.method = match item.tok {
                Masq => ForwardMethod::Masq,
                Ipip => ForwardMethod::Tunnel,
                _ => ForwardMethod::Route,
            };
        }
        Weight => {
            set_option(ce, opt::WEIGHT)?;
            ce.weight = number(&arg, 0, 65535, "weight")? as i32;
        }
        UThresh => {
            set_option(ce, opt::UTHRESHOLD)?;
            ce.u_thresh = number(&arg, 0, i64::from(i32::MAX), "u_threshold")? as u32;
        }
        LThresh => {
            set_option(ce, opt::LTHRESHOLD)?;
            ce.l_thresh = number(&arg, 0, i64::from(i32::MAX), "l_threshold")? as u32;
        }
        Numeric => {
            set_option(ce, opt::NUMERIC)?;
            ce.list.numeric = true;
        }
        Connection => {
            set_option(ce, opt::CONNECTION)?;
            ce.list.connections = true;
        }
        McastIfn => {
            set_option(ce, opt::MCAST)?;
            ce.daemon.mcast_ifn = arg.chars().take(15).collect();
        }
        Syncid => {
            set_option(ce, opt::SYNCID)?;
            ce.daemon.syncid = number(&arg, 0, 255, "syncid")? as u8;
        }
        Timeout => {
            set_option(ce, opt::TIMEOUT)?;
            ce.list.timeout = true;
        }
        Daemon => {
            set_option(ce, opt::DAEMON)?;
            ce.list.daemon = true;
        }
        Stats => {
            set_option(ce, opt::STATS)?;
            ce.list.stats = true;
        }
        Rate => {
            set_option(ce, opt::RATE)?;
            ce.list.rate = true;
        }
        Thresholds => {
            set_option(ce, opt::THRESHOLDS)?;
            ce.list.thresholds = true;
        }
        PersistentConn => {
            set_option(ce, opt::PERSISTENTCONN)?;
            ce.list.persistent_conn = true;
        }
        NoSort => {
            set_option(ce, opt::NOSORT)?;
            ce.list.nosort = true;
        }
        Sort => {}
        Exact => {
            set_option(ce, opt::EXACT)?;
            ce.list.exact = true;
        }
        TunInfo => {
            set_option(ce, opt::TUN_INFO)?;
            ce.list.tun_info = true;
        }
        Ipv6 => {
            if ce.fwmark != 0 {
                ce.af = Af::V6;
                ce.netmask = xvs_core::types::Netmask::V6(128);
            } else {
                return fail("-6 used before -f\n");
            }
        }
        Ops => {
            set_option(ce, opt::ONEPACKET)?;
            ce.flags |= SVC_F_ONEPACKET;
        }
        Pe => {
            set_option(ce, opt::PE)?;
            ce.pe = Some(arg.chars().take(15).collect());
        }
        SchedFlags => {
            set_option(ce, opt::SCHED_FLAGS)?;
            let f = parse_sched_flags(&ce.sched, &arg)?;
            ce.flags = (ce.flags & !(SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3)) | f;
        }
        TunType => {
            set_option(ce, opt::TUN_TYPE)?;
            ce.tunnel.kind = match arg.as_str() {
                "ipip" => TunnelType::Ipip,
                "gue" => TunnelType::Gue,
                "gre" => TunnelType::Gre,
                _ => return fail("illegal tunnel type specified"),
            };
        }
        TunPort => {
            set_option(ce, opt::TUN_PORT)?;
            ce.tunnel.port = number(&arg, 1, 65535, "tunnel port")? as u16;
        }
        TunNoCsum => {
            set_option(ce, opt::TUN_NOCSUM)?;
            ce.tunnel.csum = TunnelCsum::NoCsum;
        }
        TunCsum => {
            set_option(ce, opt::TUN_CSUM)?;
            ce.tunnel.csum = TunnelCsum::Csum;
        }
        TunRemCsum => {
            set_option(ce, opt::TUN_REMCSUM)?;
            ce.tunnel.csum = TunnelCsum::RemCsum;
        }
        McastGroup => {
            set_option(ce, opt::MCAST_GROUP)?;
            // The family comes from the text, as ipvsadm decides it: a colon means IPv6.
            let v6 = arg.contains(':');
            match arg.parse::<IpAddr>() {
                Ok(a) if a.is_multicast() && a.is_ipv6() == v6 => ce.daemon.group = Some(a),
                _ if v6 => return fail(format!("invalid IPv6 mcast-group `{arg}'")),
                _ => return fail(format!("invalid IPv4 mcast-group `{arg}'")),
            }
        }
        McastPort => {
            set_option(ce, opt::MCAST_PORT)?;
            ce.daemon.port = Some(number(&arg, 1, 65535, "mcast-port")? as u16);
        }
        McastTtl => {
            set_option(ce, opt::MCAST_TTL)?;
            ce.daemon.ttl = Some(number(&arg, 1, 255, "mcast-ttl")? as u8);
        }
        SyncMaxlen => {
            set_option(ce, opt::SYNC_MAXLEN)?;
            ce.daemon.maxlen = Some(number(&arg, 1, 65507, "sync-maxlen")? as u16);
        }
    }
    Ok(())
}

/// `generic_opt_check`.
fn generic_opt_check(ce: &Entry) -> Result<(), ParseError> {
    let mut last: Option<usize> = None;
    for (j, name) in OPTNAMES.iter().enumerate() {
        let a = allowed(ce.cmd, j);
        if !has(ce, j) {
            if a == b'+' {
                return fail(format!(
                    "You need to supply the '{name}' option for the '{}' command",
                    ce.cmd.name()
                ));
            }
        } else {
            if a == b'x' {
                return fail(format!(
                    "Illegal '{name}' option with the '{}' command",
                    ce.cmd.name()
                ));
            }
            if a == b'1' {
                if let Some(l) = last {
                    return fail(format!(
                        "The option '{name}' conflicts with the '{}' option in the '{}' command",
                        OPTNAMES[l],
                        ce.cmd.name()
                    ));
                }
                last = Some(j);
            }
        }
    }
    Ok(())
}

/// `tunnel_opt_check`: which tunnel options each tunnel type takes (reference §1.4).
fn tunnel_opt_check(ce: &Entry) -> Result<(), ParseError> {
    use opt::*;
    let t = ce.tunnel.kind;
    let name = t.name();
    let rule = |o: usize| -> u8 {
        match (t, o) {
            (TunnelType::Ipip, _) => b'x',
            (TunnelType::Gue, TUN_PORT) => b'+',
            (TunnelType::Gue, _) => b'1',
            (TunnelType::Gre, TUN_NOCSUM | TUN_CSUM) => b'1',
            (TunnelType::Gre, _) => b'x',
        }
    };
    let mut last: Option<usize> = None;
    for o in [TUN_PORT, TUN_NOCSUM, TUN_CSUM, TUN_REMCSUM] {
        let r = rule(o);
        if !has(ce, o) {
            if r == b'+' {
                return fail(format!(
                    "You need to supply the '{}' option for the '{name}' tunnel type",
                    OPTNAMES[o]
                ));
            }
            continue;
        }
        if r == b'x' {
            return fail(format!(
                "Illegal '{}' option with the '{name}' tunnel type",
                OPTNAMES[o]
            ));
        }
        if r == b'1' && o != TUN_PORT {
            if let Some(l) = last {
                return fail(format!(
                    "The option '{}' conflicts with the '{}' option in the '{name}' tunnel type",
                    OPTNAMES[o], OPTNAMES[l]
                ));
            }
            last = Some(o);
        }
    }
    Ok(())
}

fn service_key(ce: &Entry) -> ServiceKey {
    if ce.fwmark != 0 {
        ServiceKey::Fwmark {
            af: ce.af,
            mark: ce.fwmark,
        }
    } else {
        ServiceKey::Addr {
            proto: ce.proto,
            addr: ce.addr,
            port: ce.port,
        }
    }
}

fn finish(mut ce: Entry, positional: Vec<String>) -> Result<Command, ParseError> {
    // --set takes exactly three positionals, parsed before the leftover check.
    let mut pos = positional.into_iter();
    let mut timeouts = (0, 0, 0);
    if ce.cmd == Cmd::Set {
        let (a, b, c) = match (pos.next(), pos.next(), pos.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return fail("--set option requires 3 timeout values"),
        };
        let t = |s: &str| {
            string_to_number(s, 0, MAX_TIMEOUT)
                .map(|v| v as u32)
                .ok_or_else(|| ParseError {
                    message: format!("invalid timeout value `{s}' specified"),
                    status: 2,
                })
        };
        timeouts = (t(&a)?, t(&b)?, t(&c)?);
    }
    if let Some(extra) = pos.next() {
        return fail(format!("unexpected argument {extra}"));
    }
    generic_opt_check(&ce)?;
    let key = service_key(&ce);
    match ce.cmd {
        Cmd::Add | Cmd::Edit => {
            if ce.fwmark == 0 && ce.port == 0 && ce.flags & SVC_F_PERSISTENT == 0 {
                return fail("Zero port specified for non-persistent service");
            }
            if ce.flags & SVC_F_ONEPACKET != 0 && ce.fwmark == 0 && ce.proto != Protocol::Udp {
                return fail("One-Packet Scheduling is only for UDP virtual services");
            }
            if ce.sched.is_empty() {
                ce.sched = "wlc".into();
            }
            let cfg = ServiceConfig {
                key,
                scheduler: ce.sched,
                flags: ce.flags,
                timeout: ce.timeout,
                netmask: ce.netmask,
                pe: ce.pe,
            };
            Ok(if ce.cmd == Cmd::Add {
                Command::AddService(cfg)
            } else {
                Command::EditService(cfg)
            })
        }
        Cmd::Del => Ok(Command::DelService(key)),
        Cmd::Flush => Ok(Command::Clear),
        Cmd::Restore => Ok(Command::Restore),
        Cmd::Save => Ok(Command::Save {
            numeric: ce.list.numeric,
        }),
        Cmd::Zero => Ok(Command::Zero(has(&ce, opt::SERVICE).then_some(key))),
        Cmd::Set => Ok(Command::SetTimeouts(timeouts.0, timeouts.1, timeouts.2)),
        Cmd::List => {
            let o = &ce.options;
            let group1 = (1 << opt::CONNECTION) | (1 << opt::TIMEOUT) | (1 << opt::DAEMON);
            let fmt = (1 << opt::STATS) | (1 << opt::RATE) | (1 << opt::THRESHOLDS);
            let td = (1 << opt::TIMEOUT) | (1 << opt::DAEMON);
            if (o & group1 != 0 && o & fmt != 0)
                || (o & td != 0 && o & (1 << opt::PERSISTENTCONN) != 0)
            {
                return fail("options conflicts in the list command");
            }
            let service = has(&ce, opt::SERVICE).then_some(key);
            let mut list = ce.list;
            list.service = service;
            Ok(Command::List(list))
        }
        Cmd::StartDaemon => {
            if ce.daemon.mcast_ifn.is_empty() {
                ce.daemon.mcast_ifn = "eth0".into();
            }
            Ok(Command::StartDaemon(ce.daemon))
        }
        Cmd::StopDaemon => Ok(Command::StopDaemon(ce.daemon.role)),
        Cmd::AddDest | Cmd::EditDest | Cmd::DelDest => {
            if ce.cmd != Cmd::DelDest {
                if ce.fwmark == 0
                    && matches!(ce.method, ForwardMethod::Tunnel | ForwardMethod::Route)
                {
                    ce.dport = ce.port;
                }
                if ce.dest_af != ce.af && ce.method != ForwardMethod::Tunnel {
                    return fail("Different address family is allowed only for tunneling servers");
                }
                let tun_opts = [
                    opt::TUN_TYPE,
                    opt::TUN_PORT,
                    opt::TUN_NOCSUM,
                    opt::TUN_CSUM,
                    opt::TUN_REMCSUM,
                ];
                if tun_opts.iter().any(|&o| has(&ce, o)) && ce.method != ForwardMethod::Tunnel {
                    return fail("Tunnel options conflict with forward method");
                }
                tunnel_opt_check(&ce)?;
            }
            let d = DestConfig {
                addr: ce.daddr,
                port: ce.dport,
                method: ce.method,
                weight: ce.weight,
                u_threshold: ce.u_thresh,
                l_threshold: ce.l_thresh,
                tunnel: ce.tunnel,
            };
            Ok(match ce.cmd {
                Cmd::AddDest => Command::AddDest(key, d),
                Cmd::EditDest => Command::EditDest(key, d),
                _ => Command::DelDest(key, ce.daddr, ce.dport),
            })
        }
    }
}

/// `-R` input: split a line on spaces, tabs and CR and drop every token that is `ipvsadm`.
/// Returns None for a line with nothing left (skipped).
pub fn restore_line(line: &str) -> Option<Vec<String>> {
    let toks: Vec<String> = line
        .split([' ', '\t', '\r', '\n'])
        .filter(|t| !t.is_empty() && *t != "ipvsadm")
        .map(str::to_string)
        .collect();
    (!toks.is_empty()).then_some(toks)
}
