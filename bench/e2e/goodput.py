#!/usr/bin/env python3
"""Goodput of full-size TCP through the balancer: iperf3 (Debian's package) from the client
namespace to a real server behind the VIP, 1 and 8 streams, upload and download (-R), for NAT
and DR, through xvsd (default and --busy-poll) and through the kernel on the same rig in the same
run (NAT: IPv4 forwarding + nftables DNAT with conntrack; DR: IPv4 forwarding of the VIP to the
real server, which holds it on its loopback, as LVS-DR does).

Placement, the same for every path: iperf3's client and server on CPU 0, all of the balancer's
work on CPU 1: the kernel's forwarding by RPS of the balancer's interfaces to CPU 1; xvsd's worker
by --cores 1 and its interfaces' receive processing (XDP and the copy into the UMEM) by threaded
NAPI pinned to CPU 1. On veth, whatever a transmission triggers downstream (the bridge, the
receiver's TCP) runs on the transmitting CPU, so CPU 1 also carries that for both paths.
Senders have TX checksum offload and segmentation off (scripts/rig.sh), so every path carries
MTU-sized frames.

The far ends of the balancer's veths receive with GRO, as a NIC's receiver does by default,
for xvsd's paths (beside the XDP program that lets them take frames sent from XDP); the kernel
runs twice, with GRO there ("kernel-gro") and without it ("kernel", where the far ends run no
NAPI), and each cell's ratio is to the better of the two.

Paths run in rounds, each round every cell once in a fixed order; the report gives each cell's
median over the rounds and its ratio to the kernel's better median in the same run.

With both iperf3 ends on CPU 0, a cell whose CPU 0 is saturated measures the ends as much as the
balancer; so each run also reads how busy CPU 1 (the balancer's core) was (/proc/stat), and the
report gives a second table: CPU 1's use and the goodput per busy CPU-1 second, the balancer's
cost of a gigabit whatever limits the cell (--busy-poll spins on CPU 1 by design: no figure).

Writes target/bench-goodput.md, target/bench-goodput.csv (method,path,streams,direction,
round,gbit_s,mtu,cpu1_busy) and target/bench-goodput-plot.csv (for xvs-plot --goodput). Root; bounded (every iperf3 run has a time limit and a timeout).

Usage: bench/e2e/goodput.py [--seconds 5] [--rounds 3] [--methods nat,dr] [--mtu 1500]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "tests", "e2e"))
from nsrig import ROOT, NsRig  # noqa: E402

XVSD = os.path.join(ROOT, "target", "release", "xvsd")
PORT = 5201
# (method, server address behind the VIP)
SERVER = {"nat": "192.168.10.1", "dr": "10.9.0.11"}
# The kernel's paths: its forwarding with the far ends as they come, and with GRO there.
KERNEL = ("kernel", "kernel-gro")
CELLS = [(streams, direction) for streams in (1, 8) for direction in ("up", "down")]
# The balancer's core (every path's forwarding runs there; on one CPU it is the only one).
BALANCER_CPU = 1 if os.cpu_count() >= 2 else 0
# Paths that keep the balancer's core busy whatever the traffic: no cost per gigabit.
SPINS = ("xvsd-busy-poll",)


def pin(cpu):
    return ["taskset", "-c", str(cpu)] if os.cpu_count() >= 2 else []


def rps(rig, ifaces, mask):
    for i in ifaces:
        path = f"/sys/class/net/{i}/queues/rx-0/rps_cpus"
        rig.run("l", ["sh", "-c", f"echo {mask:x} > {path}"], check_rc=True)


def napi_on_cpu1(rig):
    """The receive processing of the balancer's veths (NAPI, where XDP and the copy into the
    UMEM run) in kernel threads on CPU 1, beside the worker: as a NIC's interrupts would be on
    the balancer's CPU. Left alone, veth runs it on the sending CPU, which is the iperf3 one."""
    for i in rig.lb_ifs:
        # (Refused for a moment while the interface's queues are being set up: tried again.)
        for attempt in range(20):
            r = rig.run("l", ["sh", "-c", f"echo 1 > /sys/class/net/{i}/threaded"])
            if r.returncode == 0:
                break
            if attempt == 19:
                raise RuntimeError(f"threaded NAPI on {i}: {r.stderr.decode().strip()}")
            time.sleep(0.1)
    time.sleep(0.3)
    names = tuple(f"napi/{i}-" for i in rig.lb_ifs)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith(names):
            subprocess.run(["taskset", "-pc", "1", pid], capture_output=True, check=True)


def cpu_times(cpu):
    """(busy, total) jiffies of one CPU from /proc/stat: busy is all but idle and iowait."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:9]]
                return sum(v) - v[3] - v[4], sum(v)
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def iperf(rig, streams, direction, seconds):
    cmd = pin(0) + ["iperf3", "-c", "10.0.0.1", "-p", str(PORT), "-t", str(seconds), "-P", str(streams),
                    "-J", "--connect-timeout", "2000"]
    if direction == "down":
        cmd.append("-R")
    try:
        r = rig.run("c", cmd, timeout=seconds + 30)
        j = json.loads(r.stdout)
        if "error" in j:
            return None, j["error"]
        return j["end"]["sum_received"]["bits_per_second"] / 1e9, ""
    except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
        return None, str(e)


# The far ends of the balancer's veths (NsRig.far_ends): an XDP program there lets them take the
# frames xvsd's fast path sends from XDP. The kernel's paths run without it (NAPI without GRO on
# the far end cost the kernel's forwarding about a third in this rig).


def peers_gro(rig, on):
    """GRO at the far ends: the receivers merge TCP segments, as a NIC's receiver does by
    default (on a veth it also runs NAPI there)."""
    for role, dev in rig.far_ends():
        rig.run(role, ["ethtool", "-K", dev, "gro", "on" if on else "off"], check_rc=True)


def peers_xdp(rig, on):
    for role, dev in rig.far_ends():
        if on:
            obj = os.path.join(ROOT, "target", "xdp-pass.bpf.o")
            rig.run(role, ["ip", "-force", "link", "set", "dev", dev, "xdp", "obj", obj, "sec", "xdp.frags"], check_rc=True)
        else:
            rig.run(role, ["ip", "link", "set", "dev", dev, "xdp", "off"], check_rc=True)


class Path:
    """One way through the balancer namespace: started, measured, stopped."""

    def __init__(self, name, rig, method, tmp):
        self.name, self.rig, self.method, self.tmp = name, rig, method, tmp
        self.proc = None

    def start(self):
        rig, real = self.rig, SERVER[self.method]
        if self.name in KERNEL:
            peers_xdp(rig, False)
            peers_gro(rig, self.name == "kernel-gro")
            rig.run("l", ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                          f"net.ipv4.conf.{rig.lb_ifs[0]}.send_redirects=0"], check_rc=True)
            rps(rig, rig.lb_ifs, 2 if os.cpu_count() >= 2 else 1)
            if self.method == "nat":
                for c in ("add table ip xvsg",
                          "add chain ip xvsg pre { type nat hook prerouting priority -100; }",
                          f"add rule ip xvsg pre ip daddr 10.0.0.1 tcp dport {PORT} dnat to {real}"):
                    rig.run("l", ["nft", c], check_rc=True)
            else:
                rig.run("l", ["ip", "route", "add", "10.0.0.1/32", "via", real], check_rc=True)
            return
        peers_xdp(rig, True)
        peers_gro(rig, True)
        flag = "-m" if self.method == "nat" else "-g"
        rules = os.path.join(self.tmp, "rules")
        with open(rules, "w") as f:
            f.write(f"-A -t 10.0.0.1:{PORT} -s rr\n-a -t 10.0.0.1:{PORT} -r {real}:{PORT} {flag}\n")
        args = [XVSD, "--rules", rules, "--control", os.path.join(self.tmp, f"{self.name}.sock")]
        if os.cpu_count() >= 2:
            args += ["--cores", "1"]
        if self.name == "xvsd-busy-poll":
            args.append("--busy-poll")
        if self.name == "xvsd-no-fast-path":
            args += ["--fast-path", "off"]
        for i in rig.lb_ifs:
            args += ["--interface", i]
        self.proc = rig.spawn("l", args, f"{self.name}.log")
        for _ in range(100):
            if os.path.exists(os.path.join(self.tmp, f"{self.name}.sock")):
                break
            time.sleep(0.1)
        if os.cpu_count() >= 2:
            napi_on_cpu1(rig)
        time.sleep(1)

    def stop(self):
        rig = self.rig
        if self.name in KERNEL:
            rps(rig, rig.lb_ifs, 0)
            rig.run("l", ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
            if self.method == "nat":
                rig.run("l", ["nft", "delete table ip xvsg"])
            else:
                rig.run("l", ["ip", "route", "del", "10.0.0.1/32"])
            return
        self.proc.terminate()
        self.proc.wait(timeout=10)
        rig.procs.remove(self.proc)
        os.unlink(os.path.join(self.tmp, f"{self.name}.sock")) if os.path.exists(
            os.path.join(self.tmp, f"{self.name}.sock")) else None


def run_method(method, a, rows):
    rig = NsRig(method)
    try:
        if a.mtu != 1500:
            rig.set_mtu(a.mtu)
        real_role = "r1"
        rig.spawn(real_role, pin(0) + ["iperf3", "-s", "-p", str(PORT)], "iperf3.log")
        time.sleep(0.5)
        for rnd in range(a.rounds):
            for name in a.paths:
                path = Path(name, rig, method, rig.tmp)
                path.start()
                try:
                    for streams, direction in CELLS:
                        b0, t0 = cpu_times(BALANCER_CPU)
                        g, err = iperf(rig, streams, direction, a.seconds)
                        b1, t1 = cpu_times(BALANCER_CPU)
                        busy = (b1 - b0) / (t1 - t0) if t1 > t0 else None
                        rows.append((method, name, streams, direction, rnd, g, busy))
                        shown = f"{g:.2f} Gbit/s" if g is not None else f"failed: {err}"
                        if busy is not None:
                            shown += f", CPU {BALANCER_CPU} {100 * busy:.0f} % busy"
                        print(f"  {method} {name:15} {streams} stream(s) {direction:4} round {rnd}: {shown}",
                              flush=True)
                finally:
                    # The last run's closing segments cross the path before it goes.
                    time.sleep(1)
                    path.stop()
    finally:
        rig.close()


def report(rows, a):
    cell = {}
    for method, name, streams, direction, _rnd, g, _busy in rows:
        cell.setdefault((method, name, streams, direction), []).append(g)
    med = {k: (statistics.median([x for x in v if x is not None]) if any(x is not None for x in v) else None)
           for k, v in cell.items()}
    fails = {k: sum(1 for x in v if x is None) for k, v in cell.items()}
    out = [f"iperf3 through the balancer, MTU {a.mtu}, {a.seconds} s a run, median of {a.rounds} rounds "
           "(Gbit/s; ÷ the kernel's better setting in brackets)", ""]
    knames = [n for n in a.paths if n in KERNEL]
    xnames = [n for n in a.paths if n not in knames]
    out.append("| method | streams | direction | " + " | ".join(knames + xnames) + " |")
    out.append("|---|---|---|" + "---|" * len(knames + xnames))
    fmt = lambda v: "failed" if v is None else f"{v:.2f}"
    for method in a.methods:
        for streams, direction in CELLS:
            ks = [med.get((method, n, streams, direction)) for n in knames]
            k = max((v for v in ks if v is not None), default=None)
            cols = []
            for n in xnames:
                v = med.get((method, n, streams, direction))
                f = fails.get((method, n, streams, direction), 0)
                s = fmt(v) + (f" ({v / k:.2f} x)" if v is not None and k else "")
                if f:
                    s += f", {f} run(s) failed"
                cols.append(s)
            out.append(f"| {method.upper()} | {streams} | {direction} | " + " | ".join([fmt(v) for v in ks] + cols)
                       + " |")
    return "\n".join(out) + "\n\n" + report_cpu(rows, a, knames, xnames)


def report_cpu(rows, a, knames, xnames):
    """CPU 1's median use per cell and path, and the goodput per busy CPU-1 second (the median
    over the rounds of each run's Gbit/s ÷ its busy fraction), xvsd's ÷ the kernel's better."""
    busy, per_core = {}, {}
    for method, name, streams, direction, _rnd, g, b in rows:
        k = (method, name, streams, direction)
        if b is not None:
            busy.setdefault(k, []).append(b)
            if g is not None and b > 0 and name not in SPINS:
                per_core.setdefault(k, []).append(g / b)
    med = lambda d, k: statistics.median(d[k]) if d.get(k) else None
    out = [f"CPU {BALANCER_CPU} (the balancer's core) during the same runs: median % busy, and Gbit/s per busy "
           f"CPU-{BALANCER_CPU} second (÷ the kernel's better in brackets; busy polling spins: no figure)", ""]
    out.append("| method | streams | direction | " + " | ".join(knames + xnames) + " |")
    out.append("|---|---|---|" + "---|" * len(knames + xnames))
    for method in a.methods:
        for streams, direction in CELLS:
            keys = [(method, n, streams, direction) for n in knames + xnames]
            k = max((v for v in (med(per_core, key) for key in keys[:len(knames)]) if v is not None), default=None)
            cols = []
            for n, key in zip(knames + xnames, keys):
                b, e = med(busy, key), med(per_core, key)
                if b is None:
                    cols.append("–")
                    continue
                s = f"{100 * b:.0f} %"
                if e is not None:
                    s += f", {e:.2f}"
                    if n not in knames and k:
                        s += f" ({e / k:.2f} x)"
                cols.append(s)
            out.append(f"| {method.upper()} | {streams} | {direction} | " + " | ".join(cols) + " |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="nat,dr")
    ap.add_argument("--paths", default="kernel,kernel-gro,xvsd,xvsd-busy-poll")
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-goodput"))
    a = ap.parse_args()
    a.methods = a.methods.split(",")
    a.paths = a.paths.split(",")
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    rows = []
    for method in a.methods:
        run_method(method, a, rows)
    text = report(rows, a)
    print(text)
    with open(a.out + ".md", "w") as f:
        f.write(text)
    # For bench's xvs-plot: one bar per cell and path, median with the rounds' min–max.
    with open(a.out + "-plot.csv", "w") as f:
        cells = {}
        for method, name, streams, direction, _rnd, g, _busy in rows:
            if g is not None:
                cells.setdefault((method, streams, direction, name), []).append(g)
        order = {n: i for i, n in enumerate(a.paths)}
        for (method, streams, direction, name), v in sorted(
                cells.items(), key=lambda kv: (a.methods.index(kv[0][0]), kv[0][1], kv[0][2], order[kv[0][3]])):
            label = f"{name} {method.upper()} {streams}x {direction}"
            f.write(f"{label},{statistics.median(v)},{min(v)},{max(v)}\n")
    with open(a.out + ".csv", "w") as f:
        f.write("method,path,streams,direction,round,gbit_s,mtu,cpu1_busy\n")
        for *r, b in rows:
            f.write(",".join("" if x is None else str(x) for x in r) + f",{a.mtu}," + ("" if b is None else str(b))
                    + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
