#!/usr/bin/env python3
"""Real clients under a SYN flood: xvsd (NAT, a 50,000-entry table) against the kernel (nftables
DNAT, conntrack limited to 50,000 entries), on the namespace rig of the tests (scripts/rig.sh:
a client, the balancer, three real servers running tests/e2e/server.py).

For each path: a spoofed-source SYN flood from the client's namespace at the AF_XDP generator's
full rate for FLOOD seconds, while CLIENTS loops of curl fetch /name through the VIP (each
request given 20 s, as a patient client waits: TCP retransmits a lost SYN after 1, 3, 7 and
15 s); then 20 requests after the flood. Reports, per path, the requests started during the
flood that succeeded, their latency (median, 90th percentile, slowest), and those after it.

conntrack's limit is the host's (a namespace cannot set it): set for the kernel's run, then
restored. Namespaces are the rig's own, removed at the end, also on failure.

Usage: bench/e2e/clients.py [--flood 10] [--clients 8] [--out target/bench-flood-clients.md]
"""
import argparse
import os
import shlex
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from nsrig import NsRig  # noqa: E402

REL = os.path.join(ROOT, "target", "release")
SERVER = os.path.join(ROOT, "tests", "e2e", "server.py")
VIP = "10.0.0.1"
REALS = ["192.168.10.1", "192.168.10.2", "192.168.10.3"]
TABLE = 50_000

ap = argparse.ArgumentParser()
ap.add_argument("--flood", type=float, default=10.0, help="seconds of flood")
ap.add_argument("--clients", type=int, default=8, help="client loops during the flood")
ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-flood-clients.md"))
A = ap.parse_args()


def request(rig):
    """One fetch through the VIP: (succeeded, seconds)."""
    t0 = time.time()
    r = rig.run("c", ["curl", "-s", "-m", "20", f"http://{VIP}/name"], timeout=30)
    return r.returncode == 0 and r.stdout.decode().strip() in ("rs1", "rs2", "rs3"), time.time() - t0


def under_flood(rig, rate=0):
    """Flood (at `rate` packets/s; 0: full speed) and fetch; returns (results during the flood,
    results after it, frames sent)."""
    lmac = rig.run("l", ["cat", f"/sys/class/net/{rig.lb_ifs[0]}/address"]).stdout.decode().strip()
    cmd = [os.path.join(REL, "xvs-pktgen"), "--interface", f"xc{rig.id}", "--dst-mac", lmac, "--dst", VIP,
           "--flows", "4000000", "--new-conns", "--duration", str(A.flood), "--rate", str(rate)]
    if os.cpu_count() > 1:
        cmd = ["taskset", "-c", "0"] + cmd
    gen = rig.spawn("c", cmd, "gen.log")
    time.sleep(0.5)
    during = []

    def loop():
        while gen.poll() is None:
            during.append(request(rig))

    threads = [threading.Thread(target=loop) for _ in range(A.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    gen.wait(timeout=30)
    after = [request(rig) for _ in range(20)]
    sent = open(os.path.join(rig.tmp, "gen.log")).read().strip()
    return during, after, sent


def xvsd_path(rig, rate=0):
    rules = os.path.join(rig.tmp, "rules")
    with open(rules, "w") as f:
        f.write(f"-A -t {VIP}:80 -s rr\n" + "".join(f"-a -t {VIP}:80 -r {r}:80 -m\n" for r in REALS))
    sock = os.path.join(rig.tmp, "sock")
    args = [os.path.join(REL, "xvsd"), "--rules", rules, "--control", sock, "--conn-capacity", str(TABLE)]
    for i in rig.lb_ifs:
        args += ["--interface", i]
    rig.spawn("l", args, "xvsd.log")
    deadline = time.time() + 10
    while "balancing on" not in open(os.path.join(rig.tmp, "xvsd.log")).read() and time.time() < deadline:
        time.sleep(0.1)
    result = under_flood(rig, rate)
    stats = subprocess.run([os.path.join(REL, "xvsadm"), "--xvs-stats"], capture_output=True, text=True,
                           env=dict(os.environ, XVS_CONTROL=sock)).stdout
    note = " ".join(l for l in stats.splitlines() if l.startswith(("table:", "socket xl")))
    return result, note


def kernel_path(rig):
    old = subprocess.run(["sysctl", "-n", "net.netfilter.nf_conntrack_max"], capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["sysctl", "-qw", f"net.netfilter.nf_conntrack_max={TABLE}"], check=True)
        rig.run("l", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        m = ", ".join(f"{i} : {r}" for i, r in enumerate(REALS))
        for c in ("add table ip xvsc", "add chain ip xvsc pre { type nat hook prerouting priority -100; }",
                  f"add rule ip xvsc pre ip daddr {VIP} tcp dport 80 dnat to numgen inc mod 3 map {{ {m} }}"):
            r = rig.run("l", ["nft"] + shlex.split(c))
            if r.returncode != 0:
                raise RuntimeError(f"nft {c}: {r.stderr.decode()}")
        result = under_flood(rig)
        count = rig.run("l", ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout.decode().strip()
        return result, f"conntrack entries after the flood: {count}"
    finally:
        if old:
            subprocess.run(["sysctl", "-qw", f"net.netfilter.nf_conntrack_max={old}"])


def pct(v, q):
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main():
    if os.geteuid() != 0:
        print("bench/e2e/clients.py: needs root", file=sys.stderr)
        return 1
    for b in ("xvs-pktgen", "xvsd", "xvsadm"):
        if not os.access(os.path.join(REL, b), os.X_OK):
            print(f"build first: cargo build --release -p xvs-bench -p xvsd -p xvsadm ({b} missing)",
                  file=sys.stderr)
            return 1
    lines = [f"A spoofed-source SYN flood at the generator's full rate for {A.flood:g} s against a "
             f"{TABLE:,}-entry table, {A.clients} client loops fetching through the VIP meanwhile "
             "(20 s per request), then 20 requests", "",
             "| path | requests started during the flood | succeeded | latency median / p90 / slowest, s "
             "| after the flood | flood frames sent |", "|---|---|---|---|---|---|"]
    notes = []
    # The kernel forwards in the sender's own system call (the veth's receive work runs there),
    # so its flood is as slow as its forwarding; xvsd's workers take frames from a ring the
    # sender fills at its own speed. The third run floods xvsd at the rate the kernel's run
    # reached, for a comparison at the same offered load.
    kernel_rate = 0
    for name, path in (("xvsd NAT", xvsd_path), ("kernel nftables DNAT", kernel_path),
                       ("xvsd NAT, flood at the kernel's rate", None)):
        rig = NsRig("nat")
        try:
            for n in (1, 2, 3):
                rig.spawn(f"r{n}", [sys.executable, SERVER, f"rs{n}"], f"server{n}.log")
            time.sleep(1)
            if path is None:
                (during, after, sent), note = xvsd_path(rig, kernel_rate)
                name += f" ({kernel_rate:,}/s)"
            else:
                (during, after, sent), note = path(rig)
            if path is kernel_path:
                kernel_rate = int(int(sent or 0) / A.flood)
        finally:
            rig.close()
        ok = sorted(d for good, d in during if good)
        n_ok = len(ok)
        row = (f"| {name} | {len(during)} | {n_ok} ({100 * n_ok / max(1, len(during)):.1f} %) | "
               f"{pct(ok, 0.5):.3f} / {pct(ok, 0.9):.3f} / {ok[-1] if ok else float('nan'):.3f} | "
               f"{sum(1 for g, _ in after if g)} of {len(after)} | {sent} |")
        print(row, flush=True)
        lines.append(row)
        notes.append(f"{name}: {note}")
    table = "\n".join(lines + [""] + notes)
    print(table)
    with open(A.out, "w") as f:
        f.write(table + "\n")
    return 0


sys.exit(main())
