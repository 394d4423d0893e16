//! Executing ipvsadm command lines against xvs's tables, producing exactly what ipvsadm prints
//! and its exit status. The daemon runs this for each control request; `-R` streams run line by
//! line with ipvsadm's rules.

use std::net::IpAddr;

use xvs_core::director::Director;

use crate::apply::{apply, Applied};
use crate::list::{
    list_all, list_connections, list_daemons, list_service, list_timeout, ConnRow, Names,
};
use crate::parse::{parse_command, restore_line, try_help, Command, DaemonConfig, DaemonRole};
use crate::save::save_with;

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit status.
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Whether the tables or daemon settings changed (the caller publishes and saves state).
    pub changed: bool,
    /// A `-R` stream stopped before its end (a syntax error, or `-R` inside it): the lines
    /// after the one that stopped it were not read.
    pub stopped: bool,
}

impl Output {
    fn err(status: i32, msg: impl AsRef<str>) -> Output {
        Output {
            status,
            stderr: format!("{}\n", msg.as_ref()),
            ..Default::default()
        }
    }
}

/// Everything a command may read or change.
pub struct Session<'a> {
    /// The tables.
    pub director: &'a mut Director,
    /// Configured sync daemons.
    pub daemons: &'a mut Vec<DaemonConfig>,
    /// The connection table's rows, on demand (`-L -c`).
    pub connections: &'a dyn Fn() -> Vec<ConnRow>,
    /// Shown as `size=` in the version line.
    pub conn_tab_size: usize,
    /// Name lookups for listings without `-n`.
    pub names: &'a dyn Names,
    /// Whether the caller may change anything (root).
    pub may_change: bool,
    /// The program name for "Try `prog -h'".
    pub prog: &'a str,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("may_change", &self.may_change)
            .finish_non_exhaustive()
    }
}

/// The version line of `-v`.
pub fn version_text() -> String {
    format!(
        "xvsadm v{} (ipvsadm v1.31 syntax, IPVS v1.2.1)\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The usage text of `-h`: ipvsadm 1.31's (`usage_exit` in `ipvsadm.c`, with its
/// `SCHEDULERS` and `PERSISTENCE_ENGINES` lists), after xvsadm's version line, then xvs's own
/// additions.
pub fn usage_text(prog: &str) -> String {
    format!(
        "{version}
Usage:
  {prog} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]
  {prog} -D virtual-service
  {prog} -C
  {prog} -R
  {prog} -S [-n]
  {prog} -a|e virtual-service -r server-address [options]
  {prog} -d virtual-service -r server-address
  {prog} -L|l [virtual-service] [options]
  {prog} -Z [virtual-service]
  {prog} --set tcp tcpfin udp
  {prog} --start-daemon {{master|backup}} [daemon-options]
  {prog} --stop-daemon {{master|backup}}
  {prog} -h

Commands:
Either long or short options are allowed.
  --add-service     -A        add virtual service with options
  --edit-service    -E        edit virtual service with options
  --delete-service  -D        delete virtual service
  --clear           -C        clear the whole table
  --restore         -R        restore rules from stdin
  --save            -S        save rules to stdout
  --add-server      -a        add real server with options
  --edit-server     -e        edit real server with options
  --delete-server   -d        delete real server
  --list            -L|-l     list the table
  --zero            -Z        zero counters in a service or all services
  --set tcp tcpfin udp        set connection timeout values
  --start-daemon              start connection sync daemon
  --stop-daemon               stop connection sync daemon
  --help            -h        display this help message

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]
  --udp-service|-u  service-address   service-address is host[:port]
  --sctp-service    service-address   service-address is host[:port]
  --fwmark-service|-f fwmark          fwmark is an integer greater than zero

Options:
  --ipv6         -6                   fwmark entry uses IPv6
  --scheduler    -s scheduler         one of rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh,
                                      the default scheduler is wlc.
  --pe            engine              alternate persistence engine may be sip,
                                      not set by default.
  --persistent   -p [timeout]         persistent service
  --netmask      -M netmask           persistent granularity mask
  --real-server  -r server-address    server-address is host (and port)
  --gatewaying   -g                   gatewaying (direct routing) (default)
  --ipip         -i                   ipip encapsulation (tunneling)
  --masquerading -m                   masquerading (NAT)
  --tun-type      type                one of ipip|gue|gre,
                                      the default tunnel type is ipip.
  --tun-port      port                tunnel destination port
  --tun-nocsum                        tunnel encapsulation without checksum
  --tun-csum                          tunnel encapsulation with checksum
  --tun-remcsum                       tunnel encapsulation with remote checksum
  --weight       -w weight            capacity of real server
  --u-threshold  -x uthreshold        upper threshold of connections
  --l-threshold  -y lthreshold        lower threshold of connections
  --connection   -c                   output of current IPVS connections
  --timeout                           output of timeout (tcp tcpfin udp)
  --daemon                            output of daemon information
  --stats                             output of statistics information
  --rate                              output of rate information
  --exact                             expand numbers (display exact values)
  --thresholds                        output of thresholds information
  --persistent-conn                   output of persistent connection info
  --tun-info                          output of tunnel information
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --ops          -o                   one-packet scheduling
  --numeric      -n                   numeric output of addresses and ports
  --sched-flags  -b flags             scheduler flags (comma-separated)
Daemon Options:
  --syncid sid                        syncid for connection sync (default=255)
  --sync-maxlen length                Max sync message length (default=1472)
  --mcast-interface interface         multicast interface for connection sync
  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)
  --mcast-port port                   UDP port (default=8848)
  --mcast-ttl ttl                     Multicast TTL (default=1)

xvs:
  The scheduler twos (power of two choices, Linux 6.x) as well.
xvs's own commands (outside ipvsadm's syntax):
  {prog} --xvs-stats                  the data plane's counters, evictions and DoS defences
  {prog} --sysctl [name[=value]]      list, read or set an IPVS sysctl (net.ipv4.vs.name)
  {prog} --xvs-fwmark-rules [-R]      list the firewall-mark rules (iptables-save syntax), or
                                      replace them with those on standard input
  {prog} --xvs-conn-sync              the connections with their origin (LOCAL or SYNC), as
                                      the kernel's /proc/net/ip_vs_conn_sync
",
        version = version_text().trim_end()
    )
}

fn is_change(c: &Command) -> bool {
    !matches!(
        c,
        Command::List(_) | Command::Save { .. } | Command::Help | Command::Version
    )
}

/// Whether a command line may change the configuration (everything but listings, `-S`, help
/// and version; a line that does not parse changes nothing).
pub fn is_write(prog: &str, args: &[String]) -> bool {
    parse_command(prog, args).is_ok_and(|c| is_change(&c))
}

/// Defaults the kernel applies to a sync daemon's unset values, and its clamp of
/// `--sync-maxlen` (reference §5.1; mainline v6.12, `ip_vs_sync.c`, `start_sync_thread`). An
/// unset backup `sync_maxlen` depends on the interface's MTU: xvsd fills it in when it starts
/// the daemon.
fn daemon_defaults(mut d: DaemonConfig) -> DaemonConfig {
    let v6 = matches!(d.group, Some(IpAddr::V6(_)));
    d.group.get_or_insert(IpAddr::V4([224, 0, 0, 81].into()));
    d.port.get_or_insert(8848);
    d.ttl.get_or_insert(1);
    let hdr: u16 = if v6 { 48 } else { 28 };
    let min = if d.role == DaemonRole::Backup {
        1024
    } else {
        1
    };
    d.maxlen = match (d.maxlen, d.role) {
        (Some(m), _) => Some(m.clamp(min, u16::MAX - hdr)),
        (None, DaemonRole::Master) => Some(1500 - hdr),
        (None, DaemonRole::Backup) => None,
    };
    d
}

/// Run one command line.
pub fn execute(s: &mut Session<'_>, args: &[String], stdin: &str) -> Output {
    match parse_command(s.prog, args) {
        Err(e) => Output::err(e.status, &e.message),
        Ok(Command::Restore) => restore_stream(s, stdin),
        Ok(cmd) => run_command(s, cmd),
    }
}

fn run_command(s: &mut Session<'_>, cmd: Command) -> Output {
    if is_change(&cmd) && !s.may_change {
        return Output::err(255, "Permission denied (you must be root)");
    }
    match cmd {
        Command::Help => Output {
            stdout: usage_text(s.prog),
            ..Default::default()
        },
        Command::Version => Output {
            stdout: version_text(),
            ..Default::default()
        },
        Command::Save { numeric } => Output {
            stdout: save_with(s.director.services(), numeric, s.names, false),
            ..Default::default()
        },
        Command::List(o) => {
            let stdout = if o.connections {
                list_connections(&(s.connections)(), &o, s.names)
            } else if let Some(k) = o.service {
                match s.director.service(&k) {
                    Some(svc) => list_service(svc, &o, s.names),
                    None => return Output::err(1, "No such service"),
                }
            } else if o.timeout {
                let (a, b, c) = s.director.timeouts().shown();
                list_timeout(a, b, c)
            } else if o.daemon {
                list_daemons(s.daemons)
            } else {
                list_all(s.director.services(), &o, s.conn_tab_size, s.names)
            };
            Output {
                stdout,
                ..Default::default()
            }
        }
        Command::StartDaemon(d) => {
            if s.daemons.iter().any(|x| x.role == d.role) {
                return Output::err(255, "Daemon has already run");
            }
            s.daemons.push(daemon_defaults(d));
            Output {
                changed: true,
                ..Default::default()
            }
        }
        Command::StopDaemon(role) => {
            let before = s.daemons.len();
            s.daemons.retain(|x| x.role != role);
            if s.daemons.len() == before {
                return Output::err(255, "No daemon is running");
            }
            Output {
                changed: true,
                ..Default::default()
            }
        }
        Command::Restore => Output::err(255, try_help(s.prog)),
        table_change => match apply(s.director, table_change) {
            Applied::Ok => Output {
                changed: true,
                ..Default::default()
            },
            Applied::Failed(e) => Output::err(255, e.to_string()),
            Applied::NotATableChange(_) => Output::default(),
        },
    }
}

/// `-R`: each line is a command line; `ipvsadm` tokens are dropped and blank lines skipped; a
/// table error prints and continues, the first syntax error stops the stream (the lines before
/// it stay applied); `-R` inside `-R` is refused. The status is that of the last line.
fn restore_stream(s: &mut Session<'_>, stdin: &str) -> Output {
    let mut out = Output::default();
    for line in stdin.lines() {
        let Some(args) = restore_line(line) else {
            continue;
        };
        let r = match parse_command(s.prog, &args) {
            Ok(Command::Restore) => {
                let o = Output::err(255, try_help(s.prog));
                out.stderr.push_str(&o.stderr);
                out.status = o.status;
                out.stopped = true;
                return out;
            }
            Ok(cmd) => run_command(s, cmd),
            Err(e) => {
                out.stderr.push_str(&e.message);
                if !e.message.ends_with('\n') {
                    out.stderr.push('\n');
                }
                out.status = e.status;
                out.stopped = true;
                return out;
            }
        };
        out.stdout.push_str(&r.stdout);
        out.stderr.push_str(&r.stderr);
        out.status = r.status;
        out.changed |= r.changed;
    }
    out
}

/// The whole configuration as `-R` input: the rules with thresholds, `--set` timeouts and the
/// sync daemons. Loading it with `-R` rebuilds the same state (xvsd's `--state` file).
pub fn state_text(director: &Director, daemons: &[DaemonConfig]) -> String {
    let mut out = String::from("-C\n");
    out.push_str(&save_with(
        director.services(),
        true,
        &crate::list::Numeric,
        true,
    ));
    let (tcp, fin, udp) = director.timeouts().shown();
    out.push_str(&format!("--set {tcp} {fin} {udp}\n"));
    for d in daemons {
        let role = if d.role == DaemonRole::Master {
            "master"
        } else {
            "backup"
        };
        out.push_str(&format!(
            "--start-daemon {role} --mcast-interface {} --syncid {}",
            d.mcast_ifn, d.syncid
        ));
        if let Some(g) = d.group {
            out.push_str(&format!(" --mcast-group {g}"));
        }
        if let Some(p) = d.port {
            out.push_str(&format!(" --mcast-port {p}"));
        }
        if let Some(t) = d.ttl {
            out.push_str(&format!(" --mcast-ttl {t}"));
        }
        if let Some(m) = d.maxlen {
            out.push_str(&format!(" --sync-maxlen {m}"));
        }
        out.push('\n');
    }
    out
}
