//! The IPVS sysctls (`/proc/sys/net/ipv4/vs/`) by their kernel names: set at start
//! (`xvsd --sysctl NAME=VALUE`, `xvsd --sysctl-file FILE` in sysctl.conf syntax, so an
//! existing `sysctl.d` fragment works) and read or set live (`xvsadm --sysctl [NAME[=VALUE]]`).
//! Every name of mainline's `vs_vars` (v6.12, `ip_vs_ctl.c`) is known: most work with the
//! kernel's semantics; a few take only the value that describes what xvs does (`FIXED`), and
//! the estimator threads' and the debug level are refused (`REFUSED`), each with its reason.

use std::sync::atomic::Ordering::Relaxed;

use xvs_core::defence;
use xvs_core::director::Director;
use xvs_core::Engine;

/// The sysctls of the connection settings ([`xvs_core::service::Settings`]).
const SETTINGS: [&str; 9] = [
    "conn_reuse_mode",
    "expire_nodest_conn",
    "expire_quiescent_template",
    "lblc_expiration",
    "lblcr_expiration",
    "nat_icmp_send",
    "run_estimation",
    "sloppy_sctp",
    "sloppy_tcp",
];

/// The sysctls of connection synchronisation ([`xvs_core::sync::SyncSettings`]).
const SYNC: [&str; 9] = [
    "backup_only",
    "sync_persist_mode",
    "sync_ports",
    "sync_qlen_max",
    "sync_refresh_period",
    "sync_retries",
    "sync_sock_size",
    "sync_threshold",
    "sync_version",
];

/// The sysctls whose one value is what xvs does: (name, value, why no other).
const FIXED: [(&str, i32, &str); 6] = [
    (
        "cache_bypass",
        0,
        "an xvs connection always has a real server; a fwmark service with none answers port \
         unreachable",
    ),
    (
        "conntrack",
        0,
        "xvs forwards outside netfilter, so there are no conntrack entries to keep",
    ),
    (
        "ignore_tunneled",
        1,
        "the packets the kernel decapsulates never reach xvs, so tunnelled traffic is never \
         balanced again",
    ),
    (
        "pmtu_disc",
        1,
        "xvs does not fragment: a packet too big for a tunnel gets ICMP fragmentation needed",
    ),
    (
        "schedule_icmp",
        0,
        "an ICMP error about no connection is passed to the kernel, never scheduled",
    ),
    (
        "snat_reroute",
        1,
        "a NAT reply is always routed by its destination after the rewrite",
    ),
];

/// Mainline's names xvs refuses: (name, why).
const REFUSED: [(&str, &str); 3] = [
    (
        "debug_level",
        "a kernel built with CONFIG_IP_VS_DEBUG's; xvsd logs through RUST_LOG",
    ),
    (
        "est_cpulist",
        "the kernel's estimator threads'; xvs's estimator runs in xvsd's control thread",
    ),
    (
        "est_nice",
        "the kernel's estimator threads'; xvs's estimator runs in xvsd's control thread",
    ),
];

/// The prefix of the kernel's full names.
pub const PREFIX: &str = "net.ipv4.vs.";

/// Every name xvs implements, sorted.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&str> = defence::NAMES
        .iter()
        .chain(&SETTINGS)
        .chain(&SYNC)
        .copied()
        .chain(FIXED.iter().map(|f| f.0))
        .collect();
    v.sort_unstable();
    v
}

/// The short name of `name` (`net.ipv4.vs.X`, `net/ipv4/vs/X` or `X`).
fn short(name: &str) -> &str {
    let n = name.trim();
    n.strip_prefix(PREFIX)
        .or_else(|| n.strip_prefix("net/ipv4/vs/"))
        .unwrap_or(n)
}

fn unsupported(name: &str) -> String {
    match REFUSED.iter().find(|r| r.0 == name) {
        Some((_, why)) => format!("sysctl {PREFIX}{name}: not supported by xvs ({why})"),
        None => format!("sysctl {PREFIX}{name}: no such IPVS sysctl"),
    }
}

/// The value of `name`, as the proc file shows it.
pub fn get(engine: &Engine, director: &Director, name: &str) -> Result<String, String> {
    let n = short(name);
    if let Some(v) = engine.defence.get(n) {
        return Ok(v.to_string());
    }
    let s = director.settings();
    let y = &engine.sync.settings;
    let u = |a: &std::sync::atomic::AtomicU32| a.load(Relaxed).to_string();
    let b = |a: &std::sync::atomic::AtomicBool| u8::from(a.load(Relaxed)).to_string();
    Ok(match n {
        "conn_reuse_mode" => s.conn_reuse_mode.to_string(),
        "expire_nodest_conn" => u8::from(s.expire_nodest_conn).to_string(),
        "expire_quiescent_template" => u8::from(s.expire_quiescent_template).to_string(),
        "sloppy_tcp" => u8::from(s.sloppy_tcp).to_string(),
        "sloppy_sctp" => u8::from(s.sloppy_sctp).to_string(),
        "nat_icmp_send" => u8::from(s.nat_icmp_send).to_string(),
        "run_estimation" => u8::from(s.run_estimation).to_string(),
        "lblc_expiration" => (s.lblc_expiration_ms / 1000).to_string(),
        "lblcr_expiration" => (s.lblcr_expiration_ms / 1000).to_string(),
        "backup_only" => b(&y.backup_only),
        "sync_persist_mode" => b(&y.persist_mode),
        "sync_ports" => u(&y.ports),
        "sync_qlen_max" => u(&y.qlen_max),
        "sync_refresh_period" => u(&y.refresh_period),
        "sync_retries" => u(&y.retries),
        "sync_sock_size" => u(&y.sock_size),
        "sync_threshold" => format!("{}\t{}", u(&y.threshold), u(&y.period)),
        "sync_version" => u(&y.version),
        _ => match FIXED.iter().find(|f| f.0 == n) {
            Some(f) => f.1.to_string(),
            None => return Err(unsupported(n)),
        },
    })
}

/// Set a sync sysctl, with mainline's checks (`proc_do_sync_threshold`, `proc_do_sync_mode`,
/// `proc_do_sync_ports`).
fn set_sync(engine: &Engine, n: &str, value: &str) -> Result<(), String> {
    let y = &engine.sync.settings;
    let bad = || format!("sysctl {PREFIX}{n}: invalid value `{}'", value.trim());
    let ints: Vec<i64> = value
        .split_whitespace()
        .map(|w| w.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let one = || match ints.as_slice() {
        [v] => Ok(*v),
        _ => Err(bad()),
    };
    let nonneg = |v: i64| u32::try_from(v).map_err(|_| bad());
    match n {
        "sync_threshold" => {
            let [t, p] = ints.as_slice() else {
                return Err(bad());
            };
            let (t, p) = (nonneg(*t)?, nonneg(*p)?);
            if p != 0 && t >= p {
                return Err(bad());
            }
            y.threshold.store(t, Relaxed);
            y.period.store(p, Relaxed);
        }
        "sync_version" => match one()? {
            v @ (0 | 1) => y.version.store(v as u32, Relaxed),
            _ => return Err(bad()),
        },
        "sync_ports" => {
            let v = nonneg(one()?)?;
            if v == 0 || !v.is_power_of_two() {
                return Err(bad());
            }
            y.ports.store(v, Relaxed);
        }
        "sync_retries" => y.retries.store(nonneg(one()?)?.min(3), Relaxed),
        "sync_refresh_period" => y.refresh_period.store(nonneg(one()?)?, Relaxed),
        "sync_qlen_max" => y.qlen_max.store(nonneg(one()?)?, Relaxed),
        "sync_sock_size" => y.sock_size.store(nonneg(one()?)?, Relaxed),
        "sync_persist_mode" => y.persist_mode.store(one()? != 0, Relaxed),
        "backup_only" => y.backup_only.store(one()? != 0, Relaxed),
        _ => return Err(unsupported(n)),
    }
    Ok(())
}

/// Set `name` to `value` (text, as written to the proc file). Returns whether the director's
/// settings changed (the caller publishes them).
pub fn set(
    engine: &Engine,
    director: &mut Director,
    name: &str,
    value: &str,
) -> Result<bool, String> {
    let n = short(name);
    if !names().contains(&n) {
        return Err(unsupported(n));
    }
    if SYNC.contains(&n) {
        return set_sync(engine, n, value).map(|()| false);
    }
    let v: i32 = value
        .trim()
        .parse()
        .map_err(|_| format!("sysctl {PREFIX}{n}: invalid value `{}'", value.trim()))?;
    if defence::NAMES.contains(&n) {
        return engine
            .set_defence(n, v)
            .map(|()| false)
            .map_err(|_| format!("sysctl {PREFIX}{n}: invalid value `{v}' (0 to 3)"));
    }
    if let Some(&(_, only, why)) = FIXED.iter().find(|f| f.0 == n) {
        // The kernel's booleans take any non-zero value as 1.
        let norm = if only == 1 { i32::from(v != 0) } else { v };
        if norm != only {
            return Err(format!(
                "sysctl {PREFIX}{n}: only {only} is supported by xvs ({why})"
            ));
        }
        return Ok(false);
    }
    let mut s = director.settings();
    match n {
        // The kernel keeps the bits it knows (`proc_dointvec`, read as a bit mask).
        "conn_reuse_mode" => s.conn_reuse_mode = (v & 0xff) as u8,
        "expire_nodest_conn" => s.expire_nodest_conn = v != 0,
        "expire_quiescent_template" => s.expire_quiescent_template = v != 0,
        "sloppy_tcp" => s.sloppy_tcp = v != 0,
        "sloppy_sctp" => s.sloppy_sctp = v != 0,
        "nat_icmp_send" => s.nat_icmp_send = v != 0,
        "run_estimation" => s.run_estimation = v != 0,
        // `proc_dointvec_jiffies`: seconds, not negative.
        "lblc_expiration" | "lblcr_expiration" => {
            let ms = u64::try_from(v)
                .map_err(|_| format!("sysctl {PREFIX}{n}: invalid value `{v}'"))?
                * 1000;
            if n == "lblc_expiration" {
                s.lblc_expiration_ms = ms;
            } else {
                s.lblcr_expiration_ms = ms;
            }
        }
        _ => unreachable!("every name of SETTINGS is handled"),
    }
    director.set_settings(s);
    Ok(true)
}

/// The sysctls as lines of the state file (`--sysctl NAME=VALUE`, which xvsd reads back at
/// start; ipvsadm's `-R` has no such command).
pub fn state_lines(engine: &Engine, director: &Director) -> String {
    values(engine, director)
        .map(|(n, v)| format!("{STATE_LINE}{PREFIX}{n}={v}\n"))
        .collect()
}

/// Every implemented sysctl with its value.
fn values<'a>(
    engine: &'a Engine,
    director: &'a Director,
) -> impl Iterator<Item = (&'static str, String)> + 'a {
    names()
        .into_iter()
        .filter_map(move |n| get(engine, director, n).ok().map(|v| (n, v)))
}

/// How a sysctl line of the state file starts.
pub const STATE_LINE: &str = "--sysctl ";

/// `NAME = VALUE` lines, as `sysctl` prints them.
pub fn show(engine: &Engine, director: &Director) -> String {
    values(engine, director)
        .map(|(n, v)| format!("{PREFIX}{n} = {v}\n"))
        .collect()
}

/// Apply a sysctl.conf text (`sysctl -p`'s syntax: `key = value`, `#` and `;` comments, a
/// leading `-` to ignore a failing line). Keys outside `net.ipv4.vs.` are skipped and listed
/// in the returned notes; a failing line of ours stops with its line number.
pub fn apply_conf(
    engine: &Engine,
    director: &mut Director,
    text: &str,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (ignore, line) = match line.strip_prefix('-') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `key = value'", i + 1));
        };
        let key = key.trim().replace('/', ".");
        if !key.starts_with(PREFIX) {
            notes.push(format!(
                "line {}: {key} is not an IPVS sysctl, ignored",
                i + 1
            ));
            continue;
        }
        match set(engine, director, &key, value) {
            Ok(_) => {}
            Err(e) if ignore => notes.push(format!("line {}: {e} (ignored)", i + 1)),
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sysctl_d_fragment_applies_and_other_keys_are_noted() {
        let engine = Engine::new(1000, 1);
        let mut d = Director::new();
        let text = "# IPVS\nnet.ipv4.vs.sloppy_tcp = 1\nnet/ipv4/vs/drop_packet=3\n\
                    net.ipv4.ip_forward = 1\n; comment\nnet.ipv4.vs.am_droprate = 5\n\
                    -net.ipv4.vs.conntrack = 1\nnet.ipv4.vs.conntrack = 0\n\
                    net.ipv4.vs.lblcr_expiration = 3600\nnet.ipv4.vs.nat_icmp_send = 1\n";
        let notes = apply_conf(&engine, &mut d, text).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("ip_forward"));
        assert!(notes[1].contains("conntrack: only 0 is supported by xvs"));
        assert_eq!(d.settings().lblcr_expiration_ms, 3_600_000);
        assert!(d.settings().nat_icmp_send);
        assert_eq!(get(&engine, &d, "lblcr_expiration"), Ok("3600".into()));
        assert_eq!(get(&engine, &d, "lblc_expiration"), Ok("86400".into()));
        assert_eq!(get(&engine, &d, "snat_reroute"), Ok("1".into()));
        assert!(d.settings().sloppy_tcp);
        assert_eq!(get(&engine, &d, "drop_packet"), Ok("3".into()));
        assert_eq!(get(&engine, &d, "net.ipv4.vs.am_droprate"), Ok("5".into()));
        // As in the kernel, a new am_droprate takes effect at the next once-a-second update.
        assert_eq!(engine.defence.drop_rate(), 10);
        engine.defence_tick(xvs_core::Time(1000));
        assert_eq!(engine.defence.drop_rate(), 5);
        let shown = show(&engine, &d);
        assert!(shown.contains("net.ipv4.vs.sloppy_tcp = 1\n"), "{shown}");
        assert_eq!(shown.lines().count(), names().len());
    }

    #[test]
    fn bad_lines_name_themselves() {
        let engine = Engine::new(1000, 1);
        let mut d = Director::new();
        let e = apply_conf(&engine, &mut d, "\nnet.ipv4.vs.secure_tcp = 7\n").unwrap_err();
        assert_eq!(
            e,
            "line 2: sysctl net.ipv4.vs.secure_tcp: invalid value `7' (0 to 3)"
        );
        let e = apply_conf(&engine, &mut d, "net.ipv4.vs.cache_bypass = 1").unwrap_err();
        assert!(
            e.contains("cache_bypass: only 0 is supported by xvs ("),
            "{e}"
        );
        let e = apply_conf(&engine, &mut d, "net.ipv4.vs.est_nice = 5").unwrap_err();
        assert!(
            e.contains("est_nice: not supported by xvs (the kernel's estimator"),
            "{e}"
        );
        let e = apply_conf(&engine, &mut d, "net.ipv4.vs.lblc_expiration = -1").unwrap_err();
        assert!(e.contains("invalid value `-1'"), "{e}");
        let e = apply_conf(&engine, &mut d, "net.ipv4.vs.nonsense = 1").unwrap_err();
        assert!(e.contains("no such IPVS sysctl"), "{e}");
        let e = apply_conf(&engine, &mut d, "net.ipv4.vs.sloppy_tcp = yes").unwrap_err();
        assert!(e.contains("invalid value `yes'"), "{e}");
        let e = apply_conf(&engine, &mut d, "net.ipv4.vs.sloppy_tcp").unwrap_err();
        assert!(e.contains("expected `key = value'"), "{e}");
    }
}
