//! xvsd's control socket: a Unix stream socket serving ipvsadm command lines (the protocol is
//! in `xvs_ipvsadm::control` and `docs/control-protocol.md`). Each connection has its own
//! thread; the tables are locked only while a command runs, never while a client is read, so a
//! slow or hostile client cannot stall the others or the workers (which never take this lock:
//! they read published snapshots).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use xvs_core::conn::{Eviction, CONN_F_TEMPLATE, TPL_S_ASSURED};
use xvs_core::{Director, Engine, Tables, Time};
use xvs_ipvsadm::control::{decode_request, encode_response, header, Response, MAX_REQUEST};
use xvs_ipvsadm::exec::{execute, Output, Session};
use xvs_ipvsadm::list::{ConnRow, Names};
use xvs_ipvsadm::parse::DaemonConfig;

use crate::sysctl;

/// Most clients served at once; more are answered with an error and closed.
const MAX_CLIENTS: usize = 64;
/// Slots only root's clients may take: members of `--control-group` cannot hold every slot.
const ROOT_SLOTS: usize = 16;
/// A client that starts no request for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request must arrive whole within this time of its first byte.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// A reply must be taken whole within this time, or the client is disconnected.
const REPLY_DEADLINE: Duration = Duration::from_secs(30);
/// Largest request a client other than root may send (it may only read: no `-R` input).
const MAX_REQUEST_UNPRIVILEGED: usize = 64 << 10;
/// Bytes of replies all clients may hold at once while they are being written: a large reply
/// that would go beyond while others wait is refused (try again), so clients that never read
/// cannot pin memory beyond it and the reply being written.
const REPLY_BUDGET: usize = 512 << 20;

/// The configuration the control socket edits.
#[derive(Debug, Default)]
pub struct CtlState {
    /// Services and destinations.
    pub director: Director,
    /// Sync daemon settings.
    pub daemons: Vec<DaemonConfig>,
}

/// Lines of a `-R` stream applied per hold of the configuration's lock: readers (`-L`) wait
/// for one chunk at most, never for a whole large `-R`.
const RESTORE_CHUNK: usize = 1000;

/// What the control thread shares with the rest of the daemon.
pub struct Control {
    /// The configuration.
    pub state: Mutex<CtlState>,
    /// Held by a `-R` stream for its whole length, which takes `state` chunk by chunk, and by
    /// every other change: writers one at a time, readers between a stream's chunks.
    restoring: Mutex<()>,
    /// Published snapshot for the workers.
    pub tables: Arc<ArcSwap<Tables>>,
    /// The connection table (for `-L -c`).
    pub engine: Arc<Engine>,
    /// Run after each publish (the XDP program's steering maps).
    pub on_publish: Box<dyn Fn(&Tables) + Send + Sync>,
    /// Where the whole configuration is saved after every change.
    pub state_file: Option<PathBuf>,
    /// Name lookups for listings.
    pub names: Box<dyn Names + Send + Sync>,
    /// The data path's clock zero.
    pub epoch: Instant,
    /// Data-plane counters for `xvsadm --xvs-stats` (empty without interfaces).
    pub data_stats: Box<dyn Fn() -> String + Send + Sync>,
    /// Every 100 ms, with the seconds since the last call: admission (with interfaces).
    pub admission: Box<dyn Fn(f64) + Send + Sync>,
    /// The sync daemons, started and stopped as the configuration says.
    pub sync: Mutex<crate::sync::SyncDaemons>,
    clients: AtomicUsize,
    /// Bytes of replies being written now (see [`REPLY_BUDGET`]).
    reply_bytes: AtomicUsize,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// A control plane over `state`.
    pub fn new(
        state: CtlState,
        tables: Arc<ArcSwap<Tables>>,
        engine: Arc<Engine>,
        on_publish: Box<dyn Fn(&Tables) + Send + Sync>,
        state_file: Option<PathBuf>,
        names: Box<dyn Names + Send + Sync>,
        epoch: Instant,
    ) -> Control {
        let sync = crate::sync::SyncDaemons::new(engine.clone(), tables.clone(), epoch);
        Control {
            state: Mutex::new(state),
            restoring: Mutex::new(()),
            tables,
            engine,
            on_publish,
            state_file,
            names,
            epoch,
            data_stats: Box::new(String::new),
            admission: Box::new(|_| {}),
            sync: Mutex::new(sync),
            clients: AtomicUsize::new(0),
            reply_bytes: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish the tables to the workers and the XDP program.
    pub fn publish(&self, st: &CtlState) {
        let t = Arc::new(st.director.snapshot());
        self.tables.store(t.clone());
        (self.on_publish)(&t);
    }

    /// Save the whole configuration to the state file (if there is one).
    pub fn save(&self, st: &CtlState) -> Result<(), String> {
        match &self.state_file {
            Some(path) => crate::state::save(
                path,
                &crate::state::text(&self.engine, &st.director, &st.daemons),
            )
            .map_err(|e| format!("saving state to {}: {e}", path.display())),
            None => Ok(()),
        }
    }

    fn connections(&self) -> Vec<ConnRow> {
        let now = Time(self.epoch.elapsed().as_millis() as u64);
        let mut rows = Vec::new();
        // SIP templates (the only ones with a client port): their Call-IDs, read after the
        // walk, which holds each shard's lock (the data path locks the Call-IDs first).
        let mut sip = Vec::new();
        self.engine.conns.for_each(|k, c| {
            if c.flags & CONN_F_TEMPLATE != 0 && k.cport != 0 {
                sip.push((rows.len(), *k));
            }
            let template = c.flags & CONN_F_TEMPLATE != 0;
            let proto = match k.proto {
                6 => "TCP",
                17 => "UDP",
                132 => "SCTP",
                _ => "IP",
            };
            let state = if template {
                if c.state == TPL_S_ASSURED {
                    "ASSURED"
                } else {
                    "NONE"
                }
            } else if k.proto == 17 {
                "UDP"
            } else {
                xvs_core::proto::state_name(k.proto, c.state)
            };
            rows.push(ConnRow {
                proto,
                expires: now.until(c.expires) / 1000,
                state,
                client: (k.caddr, k.cport),
                virt: (k.vaddr, k.vport),
                dest: (c.dest.addr, c.dport),
                synced: c.flags & xvs_core::conn::CONN_F_SYNC != 0,
                pe_data: None,
            });
        });
        for (i, k) in sip {
            rows[i].client.1 = 0;
            rows[i].pe_data = self
                .engine
                .sip
                .get(&k)
                .map(|c| String::from_utf8_lossy(&c).into_owned());
        }
        rows
    }

    /// `xvsadm --xvs-stats`: the data plane's counters (outside ipvsadm's syntax).
    fn xvs_stats(&self) -> Response {
        use std::fmt::Write as _;
        let mut out = (self.data_stats)();
        let c = &self.engine.counters;
        let t = &self.engine.conns.counters;
        counter_line(
            &mut out,
            "engine",
            &[
                ("forwarded", c.forwarded.load(Relaxed)),
                ("icmp_sent", c.icmp_sent.load(Relaxed)),
                ("passed", c.passed.load(Relaxed)),
                ("no_dest", c.no_dest.load(Relaxed)),
                ("connections", self.engine.conns.len() as u64),
                ("capacity", self.engine.conns.capacity() as u64),
                ("full", t.full.load(Relaxed)),
                ("expired", t.expired.load(Relaxed)),
            ],
        );
        for (name, n) in c.drop_counts() {
            let _ = writeln!(out, "drop {name}={n}");
        }
        let _ = write!(out, "table:");
        for e in Eviction::ALL {
            let _ = write!(out, " {}={}", e.name(), t.evicted[e as usize].load(Relaxed));
        }
        let _ = writeln!(out);
        let d = &self.engine.defence;
        let _ = writeln!(
            out,
            "defence: drop_entry={} drop_packet={} secure_tcp={} drop_rate={} \
             dropped_packets={} dropped_entries={} short_seconds={} secure_switches={} \
             free_pages={}",
            d.get("drop_entry").unwrap_or(0),
            d.get("drop_packet").unwrap_or(0),
            d.get("secure_tcp").unwrap_or(0),
            d.drop_rate(),
            d.counters.dropped_packets.load(Relaxed),
            d.counters.dropped_entries.load(Relaxed),
            d.counters.short_updates.load(Relaxed),
            d.counters.secure_switches.load(Relaxed),
            self.engine.conns.free_pages(),
        );
        let y = &self.engine.sync.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        let mut synced = 0u64;
        self.engine.conns.for_each(|_, c| {
            synced += u64::from(c.flags & xvs_core::conn::CONN_F_SYNC != 0);
        });
        let _ = write!(
            out,
            "sync: entries_synced={synced} queued={} queue_full={} sent_msgs={} sent_conns={} sent_bytes={} \
             send_dropped={} rx_msgs={} rx_applied={} rx_bad_records={} rx_no_service={} \
             rx_no_dest={} rx_table_full={}",
            l(&y.queued),
            l(&y.queue_full),
            l(&y.sent_msgs),
            l(&y.sent_conns),
            l(&y.sent_bytes),
            l(&y.send_dropped),
            l(&y.rx_msgs),
            l(&y.rx_applied),
            l(&y.rx_bad_records),
            l(&y.rx_no_service),
            l(&y.rx_no_dest),
            l(&y.rx_table_full),
        );
        for (e, n) in xvs_core::sync::MessageError::ALL.iter().zip(&y.rx_refused) {
            let _ = write!(out, " rx_{}={}", e.name(), l(n));
        }
        let _ = writeln!(out);
        Response {
            status: 0,
            stdout: out,
            stderr: String::new(),
        }
    }

    /// `xvsadm --xvs-fwmark-rules [-R]`: list the firewall-mark rules, or (root) replace them
    /// with the iptables-save text on standard input.
    fn fwmark_rules(&self, arg: Option<&str>, stdin: &str, uid: u32) -> Response {
        let reply = |status, stdout: String, stderr: String| Response {
            status,
            stdout,
            stderr,
        };
        match arg {
            None => {
                let st = self.lock();
                reply(
                    0,
                    xvs_ipvsadm::marks::to_text(st.director.marks()),
                    String::new(),
                )
            }
            Some("-R") if uid != 0 => reply(
                255,
                String::new(),
                "Permission denied (you must be root)\n".into(),
            ),
            Some("-R") => match xvs_ipvsadm::marks::parse(stdin, &crate::daemon::ifindex_of) {
                Ok((rules, notes)) => {
                    let _writer = self.restoring.lock().unwrap_or_else(|e| e.into_inner());
                    let mut st = self.lock();
                    let before = self.backup(&st);
                    st.director.set_marks(rules);
                    // Saved and published like every change (undone when it cannot be saved).
                    let mut out = Output {
                        stderr: notes.iter().map(|n| format!("{n}\n")).collect(),
                        ..Default::default()
                    };
                    self.commit(&mut st, before, &mut out);
                    reply(out.status, out.stdout, out.stderr)
                }
                Err(e) => reply(1, String::new(), format!("{e}\n")),
            },
            Some(a) => reply(
                2,
                String::new(),
                format!("--xvs-fwmark-rules: unknown argument `{a}'\n"),
            ),
        }
    }

    /// `xvsadm --sysctl [NAME[=VALUE]]`: list, read or (root) set the IPVS sysctls.
    fn sysctl(&self, arg: Option<&str>, uid: u32) -> Response {
        let mut st = self.lock();
        let reply = |status, stdout: String, stderr: String| Response {
            status,
            stdout,
            stderr,
        };
        let Some(arg) = arg else {
            return reply(0, sysctl::show(&self.engine, &st.director), String::new());
        };
        match arg.split_once('=') {
            None => match sysctl::get(&self.engine, &st.director, arg) {
                Ok(v) => reply(0, format!("{v}\n"), String::new()),
                Err(e) => reply(1, String::new(), format!("{e}\n")),
            },
            Some(_) if uid != 0 => reply(
                255,
                String::new(),
                "Permission denied (you must be root)\n".into(),
            ),
            Some((name, value)) => {
                // Saved with the rest of the state; a value that cannot be saved is put back.
                let old = sysctl::get(&self.engine, &st.director, name);
                match sysctl::set(&self.engine, &mut st.director, name, value) {
                    Ok(_) => {
                        if let Err(e) = self.save(&st) {
                            if let Ok(v) = old {
                                let _ = sysctl::set(&self.engine, &mut st.director, name, &v);
                            }
                            tracing::error!("{e}; the change is undone");
                            return reply(
                                1,
                                String::new(),
                                format!("xvsd: {e}: the change is not applied\n"),
                            );
                        }
                        tracing::info!("sysctl {name} = {value}");
                        self.publish(&st);
                        reply(0, String::new(), String::new())
                    }
                    Err(e) => reply(1, String::new(), format!("{e}\n")),
                }
            }
        }
    }

    /// Run `args` on `director` and `daemons` as ipvsadm would.
    fn run(
        &self,
        director: &mut Director,
        daemons: &mut Vec<DaemonConfig>,
        may_change: bool,
        args: &[String],
        stdin: &str,
    ) -> Output {
        let connections = || self.connections();
        let mut s = Session {
            director,
            daemons,
            connections: &connections,
            conn_tab_size: self.engine.conns.capacity(),
            names: &*self.names,
            may_change,
            prog: "xvsadm",
        };
        execute(&mut s, args, stdin)
    }

    /// After a change: save it, then publish it; or, when it cannot be saved, go back to
    /// `before` (the configuration before the change) and say so in `out`.
    fn commit(
        &self,
        st: &mut CtlState,
        before: Option<(Director, Vec<DaemonConfig>)>,
        out: &mut Output,
    ) {
        for e in self.reconcile_sync(st) {
            out.status = 1;
            out.stderr.push_str(&format!("xvsadm: {e}\n"));
        }
        if let Err(e) = self.save(st) {
            tracing::error!("{e}; the change is undone");
            if let Some((director, daemons)) = before {
                st.director = director;
                st.daemons = daemons;
            }
            out.status = 1;
            out.stderr
                .push_str(&format!("xvsd: {e}: the change is not applied\n"));
        }
        self.publish(st);
    }

    /// Start and stop the sync daemons as `st` says; a daemon that cannot start leaves the
    /// configuration, and its error is returned.
    pub fn reconcile_sync(&self, st: &mut CtlState) -> Vec<String> {
        let errors = self
            .sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconcile(&mut st.daemons);
        for e in &errors {
            tracing::error!("{e}");
        }
        errors
    }

    /// Stop the sync daemons.
    pub fn stop_sync(&self) {
        self.sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop_all();
    }

    /// The configuration as it is now, to go back to (only when there is a state file).
    fn backup(&self, st: &CtlState) -> Option<(Director, Vec<DaemonConfig>)> {
        self.state_file
            .is_some()
            .then(|| (st.director.clone(), st.daemons.clone()))
    }

    /// Run one request for a peer with user id `uid`.
    pub fn handle(&self, args: &[String], stdin: &str, uid: u32) -> Response {
        if args.len() == 1 && args[0] == "--xvs-stats" {
            return self.xvs_stats();
        }
        if args.first().is_some_and(|a| a == "--xvs-fwmark-rules") && args.len() <= 2 {
            return self.fwmark_rules(args.get(1).map(String::as_str), stdin, uid);
        }
        if args.len() == 1 && args[0] == "--xvs-conn-sync" {
            return Response {
                status: 0,
                stdout: xvs_ipvsadm::list::conn_sync_table(&self.connections()),
                stderr: String::new(),
            };
        }
        if args.first().is_some_and(|a| a == "--sysctl") && args.len() <= 2 {
            return self.sysctl(args.get(1).map(String::as_str), uid);
        }
        if uid == 0 && args.len() == 1 && args[0] == "-R" {
            return self.restore(stdin);
        }
        let out = if !xvs_ipvsadm::exec::is_write("xvsadm", args) {
            // Reads work on a copy taken under the lock (the services are shared, not copied):
            // a long listing never holds the configuration from writers.
            let (mut director, mut daemons) = {
                let st = self.lock();
                (st.director.clone(), st.daemons.clone())
            };
            self.run(&mut director, &mut daemons, false, args, stdin)
        } else {
            // Writers wait for a `-R` in progress (it may still be undone as a whole).
            let _writer = self.restoring.lock().unwrap_or_else(|e| e.into_inner());
            let mut st = self.lock();
            // A change is applied and acknowledged only once it is in the state file.
            let before = if uid == 0 { self.backup(&st) } else { None };
            let CtlState { director, daemons } = &mut *st;
            let mut out = self.run(director, daemons, uid == 0, args, stdin);
            if out.changed {
                self.commit(&mut st, before, &mut out);
            }
            out
        };
        Response {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// `-R` from root: applied in chunks of [`RESTORE_CHUNK`] lines, the configuration's lock
    /// taken per chunk, so that listings are served meanwhile (as with IPVS, where each line is
    /// a command of its own, a listing may show a stream half applied). Saved and published
    /// once, at the end; a stream that cannot be saved is undone as a whole.
    fn restore(&self, stdin: &str) -> Response {
        let _one = self.restoring.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.backup(&self.lock());
        let lines: Vec<&str> = stdin.lines().collect();
        let mut out = Output::default();
        for chunk in lines.chunks(RESTORE_CHUNK) {
            let mut text = chunk.join("\n");
            text.push('\n');
            let mut st = self.lock();
            let CtlState { director, daemons } = &mut *st;
            let o = self.run(director, daemons, true, &["-R".to_string()], &text);
            out.stdout.push_str(&o.stdout);
            out.stderr.push_str(&o.stderr);
            out.status = o.status;
            out.changed |= o.changed;
            if o.stopped {
                break;
            }
        }
        if out.changed {
            self.commit(&mut self.lock(), before, &mut out);
        }
        Response {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// Once a second: the DoS defences' levels and `drop_entry`'s pass.
    pub fn defence_tick(&self) {
        let now = Time(self.epoch.elapsed().as_millis() as u64);
        let n = self.engine.defence_tick(now);
        if n > 0 {
            tracing::debug!("drop_entry removed {n} entries");
        }
    }

    /// Periodic work: the rate estimator and scheduler housekeeping.
    pub fn tick(&self) {
        let mut st = self.lock();
        st.director.estimate();
        st.director
            .tick(Time(self.epoch.elapsed().as_millis() as u64));
    }
}

/// After an error reply to a garbled stream: stop writing, swallow a bounded amount of what the
/// peer still sends (so it can read the reply instead of a reset), then close.
fn refuse(mut stream: UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Create the listening socket: refuses when another xvsd answers on it, replaces a stale one,
/// and sets mode 0600 (0660 with a control group).
pub fn listen(path: &Path, group: Option<&str>) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another xvsd is serving {}; stop it first",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("removing stale {}: {e}", path.display()))?;
    }
    // Bound, listening and given its mode under a temporary name, then linked into place: a
    // client that sees the path can connect (bind creates the file before listen), and of two
    // daemons started at once on one path only one gets it (link refuses an existing name).
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(|e| format!("binding {}: {e}", tmp.display()))?;
    let placed = (|| {
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        if let Some(g) = group {
            let grp = nix::unistd::Group::from_name(g)
                .map_err(|e| format!("looking up group {g}: {e}"))?
                .ok_or_else(|| format!("no such group: {g}"))?;
            nix::unistd::chown(&tmp, None, Some(grp.gid))
                .map_err(|e| format!("chown {}: {e}", tmp.display()))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
        std::fs::hard_link(&tmp, path).map_err(|e| format!("binding {}: {e}", path.display()))
    })();
    let _ = std::fs::remove_file(&tmp);
    placed?;
    Ok(l)
}

/// Accept clients until `stop` is set (the listener must be non-blocking).
pub fn serve(ctl: Arc<Control>, listener: UnixListener, stop: Arc<AtomicBool>) {
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // Who connected (the credentials of connect(2)), before anything is read.
                let Ok(uid) = getsockopt(&stream, PeerCredentials).map(|c| c.uid()) else {
                    continue;
                };
                let limit = if uid == 0 {
                    MAX_CLIENTS
                } else {
                    MAX_CLIENTS - ROOT_SLOTS
                };
                if ctl.clients.fetch_add(1, Relaxed) >= limit {
                    ctl.clients.fetch_sub(1, Relaxed);
                    let mut s = stream;
                    let _ = s.set_nonblocking(true);
                    let _ = s.write_all(&encode_response(&Response::failure(
                        255,
                        "xvsd: too many control clients, try again\n",
                    )));
                    continue;
                }
                let ctl = ctl.clone();
                let spawned = std::thread::Builder::new()
                    .name("xvs-control".into())
                    .spawn(move || {
                        client(&ctl, stream, uid);
                        ctl.clients.fetch_sub(1, Relaxed);
                    });
                if let Err(e) = spawned {
                    tracing::error!("control: cannot spawn a client thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Until a client connects (at most a quarter of a second, to see `stop`): an
                // idle daemon wakes rarely.
                use std::os::fd::AsFd;
                let mut fds = [nix::poll::PollFd::new(
                    listener.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(250u16));
            }
            Err(e) => {
                tracing::warn!("control: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Fill `buf` from the stream before `deadline`. False on EOF, error or the deadline.
fn read_by(stream: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> bool {
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buf[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Write all of `buf` before `deadline`. False on error or the deadline.
fn write_by(stream: &mut UnixStream, buf: &[u8], deadline: Instant) -> bool {
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_write_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.write(&buf[at..(at + (64 << 10)).min(buf.len())]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

impl Control {
    /// Send a reply within [`REPLY_DEADLINE`], if the bytes of all replies being written stay
    /// within [`REPLY_BUDGET`] (else a short refusal). False when the client is gone.
    fn reply(&self, stream: &mut UnixStream, r: &Response) -> bool {
        let bytes = encode_response(r);
        let others = self.reply_bytes.fetch_add(bytes.len(), Relaxed);
        // A reply alone always goes (a listing of ten million connections is a gigabyte); a
        // large one beyond the budget while others wait for their readers does not.
        let ok = if others > 0 && others + bytes.len() > REPLY_BUDGET && bytes.len() > (1 << 20) {
            tracing::warn!(
                "control: a reply of {} bytes refused: replies not yet read by other clients hold the budget",
                bytes.len()
            );
            let refusal = encode_response(&Response::failure(
                255,
                "xvsd: too much output waiting for other clients to read it, try again\n",
            ));
            self.reply_bytes.fetch_sub(bytes.len(), Relaxed);
            drop(bytes);
            return write_by(stream, &refusal, Instant::now() + REPLY_DEADLINE);
        } else {
            write_by(stream, &bytes, Instant::now() + REPLY_DEADLINE)
        };
        self.reply_bytes.fetch_sub(bytes.len(), Relaxed);
        ok
    }
}

/// Serve one client (`uid`: its user, from the connection's credentials) until it closes, is
/// idle for [`IDLE_TIMEOUT`], sends a request slower than [`REQUEST_DEADLINE`] or does not
/// take a reply within [`REPLY_DEADLINE`].
fn client(ctl: &Control, mut stream: UnixStream, uid: u32) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let max = if uid == 0 {
        MAX_REQUEST
    } else {
        MAX_REQUEST_UNPRIVILEGED
    };
    loop {
        // The first byte may take the idle time; the rest of the request its deadline.
        let mut h = [0u8; 8];
        if !read_by(&mut stream, &mut h[..1], Instant::now() + IDLE_TIMEOUT) {
            return;
        }
        let deadline = Instant::now() + REQUEST_DEADLINE;
        if !read_by(&mut stream, &mut h[1..], deadline) {
            return;
        }
        let len = match header(&h, max) {
            Ok(n) => n,
            Err(e) => {
                ctl.reply(&mut stream, &Response::failure(2, format!("xvsd: {e}\n")));
                refuse(stream);
                return;
            }
        };
        // Grown as the bytes arrive: a header alone allocates nothing.
        let mut payload = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        while payload.len() < len {
            let n = chunk.len().min(len - payload.len());
            if !read_by(&mut stream, &mut chunk[..n], deadline) {
                return;
            }
            payload.extend_from_slice(&chunk[..n]);
        }
        let resp = match decode_request(&payload) {
            Ok(req) => ctl.handle(&req.args, &req.stdin, uid),
            Err(e) => Response::failure(2, format!("xvsd: {e}\n")),
        };
        drop(payload);
        if !ctl.reply(&mut stream, &resp) {
            return;
        }
    }
}

/// One line of `--xvs-stats`: `label: name=value ...`.
pub(crate) fn counter_line(out: &mut String, label: &str, fields: &[(&str, u64)]) {
    out.push_str(label);
    out.push(':');
    for (name, value) in fields {
        out.push(' ');
        out.push_str(name);
        out.push('=');
        out.push_str(&value.to_string());
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket takes connections as soon as its path exists, with mode 0600 and no
    /// temporary name left behind; a second daemon on a served path is refused; a stale
    /// socket (its daemon gone) is replaced.
    #[test]
    fn the_control_socket_appears_ready_and_alone() {
        let dir = std::env::temp_dir().join(format!("xvs-listen-{}", std::process::id()));
        let path = dir.join("ctl.sock");
        let l = listen(&path, None).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ctl.sock")]);
        let e = listen(&path, None).unwrap_err();
        assert!(e.contains("another xvsd is serving"), "{e}");
        drop(l);
        let l2 = listen(&path, None).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(l2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
