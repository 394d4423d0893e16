//! The firewall-mark rules in `iptables-save` / `ip6tables-save` syntax: the `-A PREROUTING`
//! rules of the `mangle` table that set a mark (`-j MARK --set-mark` / `--set-xmark`), with the
//! matches LVS set-ups use: `-i`, `-s`, `-d` (prefixes), `-p tcp|udp`, `--dport`/`--sport`-less
//! `-m tcp|udp --dport N[:M]`, `-m multiport --dports a,b:c`, `-m comment`. Rules of other
//! tables or chains are the kernel's and are skipped (and named in the notes); a rule of
//! `mangle` PREROUTING with anything else is refused with its line number.

use std::net::IpAddr;

use xvs_core::marks::{MarkRule, MarkRules, Prefix};
use xvs_core::types::Protocol;

/// Most addresses of one rule's `-d` prefix (each is steered to xvs one by one).
pub const MAX_DST_ADDRESSES: u128 = 4096;

/// Split a line into words, double quotes grouping (as `iptables-save` quotes comments).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn number(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn prefix(s: &str) -> Result<Prefix, String> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| format!("invalid address `{s}'"))?;
    let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match l {
        None => bits,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= bits => n,
            _ => {
                // A dotted mask (`255.255.255.0`), as iptables accepts.
                let m: std::net::Ipv4Addr =
                    l.parse().map_err(|_| format!("invalid prefix `{s}'"))?;
                let m = u32::from(m);
                if m.leading_ones() + m.trailing_zeros() != 32 || !addr.is_ipv4() {
                    return Err(format!("invalid prefix `{s}'"));
                }
                m.leading_ones() as u8
            }
        },
    };
    Ok(Prefix { addr, len })
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port `{s}'");
    let (a, b) = match s.split_once(':') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: u16 = if a.is_empty() {
        0
    } else {
        a.parse().map_err(|_| bad())?
    };
    let b: u16 = if b.is_empty() {
        u16::MAX
    } else {
        b.parse().map_err(|_| bad())?
    };
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// One `-A PREROUTING` rule of `mangle` (its words after `-A PREROUTING`).
fn rule(w: &[String], ifindex: &dyn Fn(&str) -> Option<u32>) -> Result<MarkRule, String> {
    let mut r = MarkRule {
        iface: None,
        src: None,
        dst: None,
        proto: None,
        dports: Vec::new(),
        value: 0,
        mask: 0,
    };
    let mut target = false;
    let mut set = false;
    let mut i = 0;
    let arg = |i: usize| -> Result<&str, String> {
        w.get(i + 1)
            .map(String::as_str)
            .ok_or_else(|| format!("{} wants a value", w[i]))
    };
    while i < w.len() {
        let o = w[i].as_str();
        match o {
            "!" => return Err("negated matches (!) are not supported by xvs".into()),
            "-i" | "--in-interface" => {
                let name = arg(i)?;
                let idx = ifindex(name).ok_or_else(|| format!("no interface `{name}'"))?;
                r.iface = Some((idx, name.to_string()));
                i += 2;
            }
            "-s" | "--source" => {
                r.src = Some(prefix(arg(i)?)?);
                i += 2;
            }
            "-d" | "--destination" => {
                r.dst = Some(prefix(arg(i)?)?);
                i += 2;
            }
            "-p" | "--protocol" => {
                r.proto = Some(match arg(i)? {
                    "tcp" | "6" => Protocol::Tcp,
                    "udp" | "17" => Protocol::Udp,
                    "sctp" | "132" => Protocol::Sctp,
                    p => {
                        return Err(format!(
                            "protocol `{p}' is not supported by xvs (tcp, udp, sctp)"
                        ))
                    }
                });
                i += 2;
            }
            "-m" | "--match" => {
                match arg(i)? {
                    "tcp" | "udp" | "sctp" | "multiport" => {}
                    "comment" => {
                        // `-m comment --comment TEXT`: skipped.
                        if w.get(i + 2).map(String::as_str) == Some("--comment") {
                            i += 2;
                        }
                    }
                    m => return Err(format!("match `{m}' is not supported by xvs")),
                }
                i += 2;
            }
            "--dport" | "--destination-port" => {
                r.dports.push(port_range(arg(i)?)?);
                i += 2;
            }
            "--dports" | "--destination-ports" => {
                for p in arg(i)?.split(',') {
                    r.dports.push(port_range(p)?);
                }
                i += 2;
            }
            "-j" | "--jump" => {
                if arg(i)? != "MARK" {
                    return Err(format!(
                        "target `{}' is not supported by xvs (MARK)",
                        w[i + 1]
                    ));
                }
                target = true;
                i += 2;
            }
            "--set-mark" | "--set-xmark" => {
                let v = arg(i)?;
                let (value, mask) = match v.split_once('/') {
                    Some((a, m)) => (number(a), number(m)),
                    None => (number(v), Some(u32::MAX)),
                };
                let (Some(value), Some(mask)) = (value, mask) else {
                    return Err(format!("invalid mark `{v}'"));
                };
                // --set-mark v/m: zero the bits of m, then OR v: as --set-xmark v/(m|v).
                r.value = value;
                r.mask = if o == "--set-mark" {
                    mask | value
                } else {
                    mask
                };
                set = true;
                i += 2;
            }
            _ => return Err(format!("option `{o}' is not supported by xvs")),
        }
    }
    if !target || !set {
        return Err("only `-j MARK --set-mark' / `--set-xmark' rules are supported".into());
    }
    if !r.dports.is_empty() && r.proto.is_none() {
        return Err("--dport needs -p tcp or -p udp".into());
    }
    let Some(d) = r.dst else {
        return Err("a rule needs -d: xvs steers marked traffic to itself by destination".into());
    };
    let bits = if d.addr.is_ipv4() { 32 } else { 128 };
    if bits - u32::from(d.len) >= 32 || (1u128 << (bits - u32::from(d.len))) > MAX_DST_ADDRESSES {
        return Err(format!(
            "-d {}/{}: at most {MAX_DST_ADDRESSES} addresses per rule",
            d.addr, d.len
        ));
    }
    if r.src.is_some_and(|s| s.addr.is_ipv4() != d.addr.is_ipv4()) {
        return Err("-s and -d of different families".into());
    }
    Ok(r)
}

/// The rules of an `iptables-save` (or `ip6tables-save`) text, in order, and notes on what
/// was skipped; `ifindex` resolves `-i` names. An error names its line.
pub fn parse(
    text: &str,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<(MarkRules, Vec<String>), String> {
    let mut rules = MarkRules::default();
    let mut notes = Vec::new();
    // Lines before any `*table` are taken as mangle's (a hand-written file).
    let mut table = "mangle".to_string();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(':') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        let w = words(line);
        let here = |e: String| format!("line {}: {e}", n + 1);
        let (chain, rest) = match w.as_slice() {
            [a, chain, rest @ ..] if a == "-A" || a == "--append" => (chain.as_str(), rest),
            _ => return Err(here(format!("not a rule: `{line}'"))),
        };
        if table != "mangle" || chain != "PREROUTING" {
            notes.push(format!(
                "line {}: a rule of {table} {chain}: the kernel's, skipped",
                n + 1
            ));
            continue;
        }
        rules.rules.push(rule(rest, ifindex).map_err(here)?);
    }
    Ok((rules, notes))
}

/// The rules as `iptables-save` lines of `mangle` PREROUTING (what `parse` reads back).
pub fn to_text(rules: &MarkRules) -> String {
    let mut out = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n");
    for r in &rules.rules {
        out.push_str("-A PREROUTING");
        if let Some((_, name)) = &r.iface {
            out.push_str(&format!(" -i {name}"));
        }
        let p = |x: &Prefix| format!("{}/{}", x.addr, x.len);
        if let Some(s) = &r.src {
            out.push_str(&format!(" -s {}", p(s)));
        }
        if let Some(d) = &r.dst {
            out.push_str(&format!(" -d {}", p(d)));
        }
        if let Some(pr) = r.proto {
            let name = match pr {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            };
            out.push_str(&format!(" -p {name}"));
        }
        if !r.dports.is_empty() {
            let list: Vec<String> = r
                .dports
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}:{b}")
                    }
                })
                .collect();
            out.push_str(&format!(" -m multiport --dports {}", list.join(",")));
        }
        out.push_str(&format!(
            " -j MARK --set-xmark {:#x}/{:#x}\n",
            r.value, r.mask
        ));
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(name: &str) -> Option<u32> {
        (name == "eth0").then_some(2)
    }

    #[test]
    fn an_iptables_save_file_reads_and_writes_back() {
        let text = "# Generated by iptables-save v1.8.9\n*mangle\n:PREROUTING ACCEPT [0:0]\n\
            :INPUT ACCEPT [0:0]\n\
            -A PREROUTING -d 10.0.0.1/32 -p tcp -m multiport --dports 80,443 -j MARK --set-xmark 0x1/0xffffffff\n\
            -A PREROUTING -i eth0 -s 10.9.0.0/255.255.0.0 -d 10.0.0.2 -p udp -m udp --dport 5000:5010 -m comment --comment \"a b\" -j MARK --set-mark 2\n\
            -A PREROUTING -d 10.0.0.3/32 -p sctp -m sctp --dport 3868 -j MARK --set-mark 3\n\
            -A INPUT -j MARK --set-mark 9\nCOMMIT\n*filter\n-A INPUT -p tcp -j ACCEPT\nCOMMIT\n";
        let (rules, notes) = parse(text, &idx).unwrap();
        assert_eq!(rules.rules.len(), 3);
        assert_eq!(rules.rules[2].proto, Some(Protocol::Sctp));
        assert_eq!(rules.rules[2].dports, vec![(3868, 3868)]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        let r = &rules.rules[1];
        assert_eq!(r.iface, Some((2, "eth0".into())));
        assert_eq!(r.src.map(|s| s.len), Some(16));
        assert_eq!((r.value, r.mask), (2, u32::MAX));
        assert_eq!(r.dports, vec![(5000, 5010)]);
        // Written and read again: the same rules.
        let (again, _) = parse(&to_text(&rules), &idx).unwrap();
        assert_eq!(again, rules);
    }

    #[test]
    fn what_xvs_cannot_do_is_refused_with_its_line() {
        let bad = |rule: &str| parse(&format!("*mangle\n{rule}\nCOMMIT\n"), &idx).unwrap_err();
        assert!(
            bad("-A PREROUTING -d 10.0.0.1 -p icmp -j MARK --set-mark 1")
                .contains("line 2: protocol `icmp'")
        );
        assert!(bad("-A PREROUTING ! -d 10.0.0.1 -j MARK --set-mark 1").contains("negated"));
        assert!(bad("-A PREROUTING -d 10.0.0.1 -j CONNMARK --set-mark 1").contains("target"));
        assert!(bad("-A PREROUTING -p tcp --dport 80 -j MARK --set-mark 1").contains("needs -d"));
        assert!(bad("-A PREROUTING -d 10.0.0.0/8 -j MARK --set-mark 1").contains("at most 4096"));
        assert!(
            bad("-A PREROUTING -d 10.0.0.1 -m state --state NEW -j MARK --set-mark 1")
                .contains("match `state'")
        );
        assert!(
            bad("-A PREROUTING -i nosuch -d 10.0.0.1 -j MARK --set-mark 1")
                .contains("no interface")
        );
        assert!(
            bad("-A PREROUTING -d 10.0.0.1 --dport 80 -j MARK --set-mark 1").contains("needs -p")
        );
        assert!(bad("garbage").contains("line 2: not a rule"));
    }
}
