#!/usr/bin/env python3
"""Added latency of xvsd: UDP request/response round trips from a client namespace to a real
server through the VIP (xvsd NAT, both directions through AF_XDP), then — with xvsd stopped —
to the same real server through the same balancer namespace by kernel IP forwarding (the same
path without xvs). Prints median and p99 in microseconds. Root; bounded (N round trips per
path, 0.2 s timeout per request).

xvsd is measured in its three polling modes: --spin-us 0 (a worker sleeps in poll(2) as soon
as its rings are empty), the default (after receiving it keeps polling for 50 µs before it
sleeps) and --busy-poll (it never sleeps); after each, the share of a core xvsd uses over 3 s
without traffic. Every round trip is written to target/bench-latency.csv (path,µs)
for bench's xvs-plot.

Every path runs with the same placement: the client on CPU 0, the real server and xvsd's worker
on CPU 1 (the forwarder on CPU 1, as in run.py). Left to the scheduler, the client and the
server sometimes share a CPU, and then the kernel path is one CPU's softirq work end to end:
18.5 µs at the median against 50–62 µs when they do not (docs/performance-history.md, "Added latency").

Usage: bench/e2e/latency.py [-n 5000]
"""
import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ap = argparse.ArgumentParser()
ap.add_argument("-n", type=int, default=5000)
A = ap.parse_args()

CLIENT = r"""
import socket, sys, time
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
rtts = []
for i in range(n + 100):
    t = time.perf_counter_ns()
    s.sendto(b"x", (dst, 53))
    try:
        s.recvfrom(100)
    except socket.timeout:
        continue
    if i >= 100:
        rtts.append((time.perf_counter_ns() - t) / 1000)
print("\n".join(f"{r:.1f}" for r in rtts))
"""


def pin(cpu):
    """Command prefix that runs a process on one CPU (nothing on a single-CPU machine)."""
    return ["taskset", "-c", str(cpu)] if os.cpu_count() >= 2 else []


def cpu_ns(pid):
    """CPU time of every thread of a process, in nanoseconds (the scheduler's own count)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def main():
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    out = subprocess.run([os.path.join(ROOT, "scripts", "rig.sh"), "up", "nat"], check=True, capture_output=True,
                         text=True).stdout
    env = dict(kv.split("=", 1) for kv in shlex.split(out.strip().splitlines()[-1]))
    rid = env["RIG_ID"]
    ns = lambda r: ["ip", "netns", "exec", f"xvs{rid}-{r}"]
    procs = []
    tmp = tempfile.mkdtemp(prefix="xvslat")
    try:
        procs.append(subprocess.Popen(ns("r1") + pin(1) + [sys.executable, os.path.join(ROOT, "tests", "e2e", "server.py"),
                                                  "rs1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rules = os.path.join(tmp, "rules")
        open(rules, "w").write("-A -u 10.0.0.1:53 -s rr\n-a -u 10.0.0.1:53 -r 192.168.10.1:53 -m\n")
        # Kernel forwarding for the direct path: the client reaches the real server through the
        # balancer namespace; XDP passes that traffic (not a VIP, not from a NAT source port).
        subprocess.run(ns("l") + ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        subprocess.run(ns("c") + ["ip", "route", "add", "192.168.10.0/24", "via", "10.9.0.1"], check=True)
        res = {}
        cores = ["--cores", "1"] if os.cpu_count() >= 2 else []

        def measure(name, dst):
            r = subprocess.run(ns("c") + pin(0) + [sys.executable, "-c", CLIENT, dst, str(A.n)], capture_output=True,
                               text=True, timeout=600)
            res[name] = sorted(float(x) for x in r.stdout.split())

        idle = {}
        for name, extra in (("xvsd --spin-us 0 (NAT)", ["--spin-us", "0"]), ("xvsd (NAT)", []),
                            ("xvsd --busy-poll (NAT)", ["--busy-poll"])):
            xvsd = subprocess.Popen(ns("l") + [os.path.join(ROOT, "target", "release", "xvsd"), "-i", f"xl{rid}",
                                               "-i", f"xs{rid}", "--rules", rules, "--control",
                                               os.path.join(tmp, "sock")] + cores + extra, stderr=subprocess.DEVNULL)
            procs.append(xvsd)
            time.sleep(2)
            measure(name, "10.0.0.1")
            # Idle: the share of a core xvsd's threads use over 3 s without traffic.
            c0, t0 = cpu_ns(xvsd.pid), time.time()
            time.sleep(3)
            idle[name] = (cpu_ns(xvsd.pid) - c0) / 1e9 / (time.time() - t0)
            # Its XDP program goes with it.
            xvsd.terminate()
            xvsd.wait(timeout=10)
        # Without xvs: the kernel forwards on the same path.
        measure("kernel forwarding (no xvs)", "192.168.10.1")
        pct = lambda v, q: v[min(len(v) - 1, int(len(v) * q))] if v else float("nan")
        print("| path | round trips | median µs | p99 µs | idle CPU, % of a core |")
        print("|---|---|---|---|---|")
        for k, v in res.items():
            cpu = f"{100 * idle[k]:.2f}" if k in idle else "–"
            print(f"| {k} | {len(v)} | {pct(v, 0.5):.1f} | {pct(v, 0.99):.1f} | {cpu} |")
        base = res["kernel forwarding (no xvs)"]
        for k, v in res.items():
            if v is not base:
                print(f"added by {k}: median {pct(v, 0.5) - pct(base, 0.5):+.1f} µs, "
                      f"p99 {pct(v, 0.99) - pct(base, 0.99):+.1f} µs")
        with open(os.path.join(ROOT, "target", "bench-latency.csv"), "w") as f:
            for k, v in res.items():
                f.writelines(f"{k},{x}\n" for x in v)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        subprocess.run([os.path.join(ROOT, "scripts", "rig.sh"), "down", rid], capture_output=True)
    return 0


sys.exit(main())
