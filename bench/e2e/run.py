#!/usr/bin/env python3
"""End-to-end benchmark of xvs on a veth-namespace rig (root). One run measures, with the same
sender (bench's AF_XDP generator), the same 64-byte frames and the same duration:

  ceiling    sender straight into the sink
  bare       the bare AF_XDP forwarder (xvs-xdp's rings and steering, no engine)
  xvs-dr / xvs-tun / xvs-nat   xvsd with 1 service and 100 real servers,
             (a) established: ACKs over 10,000 flows created first, (b) new: SYNs from new clients
  kernel     IPv4 forwarding, and nftables DNAT over the 100 real servers (numgen, then jhash)

Packets are counted at the receiver (an XDP program on the sink's veth that counts and drops),
never at the sender. The sender runs on CPU 0 and the forwarding thread (xvs-fwd, xvsd's
worker) on CPU 1, so that every path gets the same placement (--no-pin: the scheduler's
choice). The benchmark makes ROUNDS passes over all paths, so that each path's
samples are spread over the whole run and a slow phase of the shared machine does not fall on
one path only. In each pass, a path gets RUNS runs of DURATION seconds at full speed, then one
paced run at a fixed offered load for the CPU cost per packet: CPU time of the forwarding
process (utime+stime of all its threads) and softirq time of the whole machine (/proc/stat),
divided by packets received, and the same two CPU times over the paced run's wall time (the
cores the path keeps busy). The forwarding workers' frames per wake-up come from their rx and
rx_batches counters. The table gives the median and min-max of all full-speed runs of a path and
the medians of the rest; target/bench-e2e.csv feeds bench's xvs-plot.

--paired measures the first target's ratio (xvsd DR, established, against the bare forwarder)
another way: both forwarders run side by side, each on a chain of its own through the balancer's
namespace, and take turns in short bursts (ABBA order), so that each ratio compares two bursts
a second apart instead of two paths minutes apart; the machine's slow and fast spells then fall
on both.

Rig:  snd --veth-- lb --veth-- sink      (and snd --veth-- sink for the ceiling; with --paired
      a second snd --veth-- lb --veth-- sink chain for the bare forwarder)
Usage: bench/e2e/run.py [--rounds 5] [--runs 1] [--duration 3] [--paced 100000] [--only PATH]
       bench/e2e/run.py --scaling | --memory | --paired [--pairs 30] [--burst 1]
"""
import argparse
import ipaddress
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.path.join(ROOT, "target", "release")

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=5,
                help="passes over all paths; each path's runs are spread over the whole benchmark")
ap.add_argument("--runs", type=int, default=1, help="full-speed runs per path and round")
ap.add_argument("--duration", type=float, default=3.0)
ap.add_argument("--paced", type=int, default=100_000, help="offered load for the CPU-cost run, packets/s")
ap.add_argument("--only", default="", help="only the paths containing one of these comma-separated words")
ap.add_argument("--xvsd-args", default="", help="extra xvsd arguments for the xvs paths, e.g. '--prefetch-from 0'")
ap.add_argument("--no-pin", action="store_true",
                help="let the scheduler place the sender and the forwarder (default: sender on CPU 0, "
                     "forwarding thread on CPU 1)")
ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-e2e.md"))
ap.add_argument("--scaling", action="store_true",
                help="instead: xvsd DR, established flows, with 1 and with 2 worker queues")
ap.add_argument("--memory", action="store_true",
                help="instead: RSS of xvsd with 0, 1 M and 10 M connections in its table")
ap.add_argument("--flood", action="store_true",
                help="instead: new flows, 5.5 times a 1 M-entry table, through xvsd DR (against its own "
                     "established rate), the bare forwarder and nftables DNAT with conntrack at the same limit")
ap.add_argument("--paired", action="store_true",
                help="instead: xvsd DR (established) and the bare forwarder side by side, in alternating bursts")
ap.add_argument("--pairs", type=int, default=30, help="--paired: pairs of bursts")
ap.add_argument("--burst", type=float, default=1.0, help="--paired: seconds per burst")
A = ap.parse_args()

ID = f"{os.getpid() & 0xffff:04x}"
NS = {r: f"xvsb{ID}-{r}" for r in ("s", "l", "k", "m")}
VIP = "10.0.0.1"
REALS = [f"10.7.1.{i}" for i in range(1, 101)]


def sh(cmd, check=True, timeout=60):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")
    return r.stdout


def nsx(role, cmd, **kw):
    return sh(f"ip netns exec {NS[role]} {cmd}", **kw)


def mac(role, ifname):
    return nsx(role, f"cat /sys/class/net/{ifname}/address").strip()


def rig_up(queues=1, second_chain=False):
    for n in NS.values():
        sh(f"ip netns add {n}")
        sh(f"ip netns exec {n} ip link set lo up")
    pairs = [("s0", "s", "l0", "l"), ("l1", "l", "k0", "k"), ("s1", "s", "k1", "k")]
    if second_chain:
        # snd s2 -- m0 lb' m1 -- k2 sink: a second balancer namespace for --paired.
        pairs += [("s2", "s", "m0", "m"), ("m1", "m", "k2", "k")]
    for a, na, b, nb in pairs:
        q = queues if a in ("s0", "l1") else 1
        sh(f"ip link add {a}{ID} numtxqueues {q} numrxqueues {q} type veth peer name {b}{ID} "
           f"numtxqueues {q} numrxqueues {q}")
        sh(f"ip link set {a}{ID} netns {NS[na]}")
        sh(f"ip link set {b}{ID} netns {NS[nb]}")
        nsx(na, f"ip link set {a}{ID} up")
        nsx(nb, f"ip link set {b}{ID} up")
    nsx("s", f"ip addr add 10.8.0.2/24 dev s0{ID}")
    nsx("l", f"ip addr add 10.8.0.1/24 dev l0{ID}")
    nsx("l", f"ip addr add 10.7.0.1/16 dev l1{ID}")
    nsx("k", f"ip addr add 10.7.0.2/16 dev k0{ID}")
    kmac = mac("k", f"k0{ID}")
    # The sink drops everything in XDP (ARP included): the balancer knows the real servers' MAC.
    for r in REALS:
        nsx("l", f"ip neigh replace {r} lladdr {kmac} dev l1{ID} nud permanent")
    nsx("s", f"ip route add 10.0.0.0/24 via 10.8.0.1")
    nsx("l", "sysctl -qw net.ipv4.ip_forward=0")
    if second_chain:
        nsx("m", f"ip addr add 10.8.0.1/24 dev m0{ID}")
        nsx("m", f"ip addr add 10.7.0.1/16 dev m1{ID}")
        kmac2 = mac("k", f"k2{ID}")
        for r in REALS:
            nsx("m", f"ip neigh replace {r} lladdr {kmac2} dev m1{ID} nud permanent")
        nsx("m", "sysctl -qw net.ipv4.ip_forward=0")


def rig_down():
    for n in NS.values():
        sh(f"ip netns del {n}", check=False)


class Proc:
    def __init__(self, role, cmd, stdin=False):
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(["ip", "netns", "exec", NS[role]] + cmd, stdout=subprocess.PIPE if stdin else self.log,
                                  stderr=self.log, stdin=subprocess.PIPE if stdin else None, text=True)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def text(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


class Sink:
    def __init__(self, ifname):
        self.proc = Proc("k", [os.path.join(REL, "xvs-sink"), ifname], stdin=True)
        line = self.proc.p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"sink: {line} {self.proc.text()}")

    def count(self):
        self.proc.p.stdin.write("\n")
        self.proc.p.stdin.flush()
        return int(self.proc.p.stdout.readline())

    def stop(self):
        self.proc.stop()


def cpu_of(pid):
    """CPU time of a process (all its threads), seconds: the scheduler's own count in ns
    (/proc/PID/task/*/schedstat), where utime+stime come in clock ticks (10 ms: 33 ns per
    packet over a paced run's 300,000 packets, 2 % of a forwarder's cost on a fast host). The
    forwarders' threads live as long as the measurement, so none drops out of the sum. Without
    schedstat (a kernel without CONFIG_SCHED_INFO), utime+stime."""
    ns = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            ns.append(int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0]))
        except FileNotFoundError:
            pass  # a thread that just exited, or no schedstat
    if ns:
        return sum(ns) / 1e9
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def softirq():
    f = open("/proc/stat").readline().split()
    return int(f[7]) / os.sysconf("SC_CLK_TCK")


def pin(cpu):
    """Command prefix that runs a process on one CPU (nothing with --no-pin or a single CPU)."""
    return [] if A.no_pin or os.cpu_count() < 2 else ["taskset", "-c", str(cpu)]


def gen_args(dst_mac, iface, new=False, rate=0, count=None, duration=None, flows=None, client_base=None):
    """The generator's command line (flows: 4 M for new connections, 10,000 established by default)."""
    flows = flows or (4_000_000 if new else 10_000)
    args = pin(0) + [os.path.join(REL, "xvs-pktgen"), "--interface", iface, "--dst-mac", dst_mac, "--dst", VIP,
            "--flows", str(flows), "--rate", str(rate)]
    if client_base:
        args += ["--client-base", client_base]
    if new:
        args.append("--new-conns")
    if count:
        args += ["--count", str(count)]
    args += ["--duration", str(duration if duration else A.duration)]
    return ["ip", "netns", "exec", NS["s"]] + args


def gen(dst_mac, iface, **kw):
    r = subprocess.run(gen_args(dst_mac, iface, **kw), capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"pktgen: {r.stderr}")
    return int(r.stdout.strip() or 0)


def per_batch(c0, c1):
    """Frames per wake-up of the forwarding worker between two (rx, rx_batches) readings."""
    if c0 is None or c1 is None or c1[1] == c0[1]:
        return float("nan")
    return (c1[0] - c0[0]) / (c1[1] - c0[1])


def measure(name, sink, dst_mac, iface, new, fwd_pid, counters=lambda: None):
    """RUNS full-speed runs and one paced run of one path; returns its raw samples. `counters`
    reads the forwarding worker's (rx, rx_batches), for the frames per wake-up."""
    rates = []
    w0 = counters()
    for _ in range(A.runs):
        c0 = sink.count()
        t0 = time.time()
        gen(dst_mac, iface, new=new)
        time.sleep(0.05)
        rates.append((sink.count() - c0) / (time.time() - t0 - 0.05))
    # CPU cost at a fixed offered load.
    w1 = counters()
    c0, s0 = sink.count(), softirq()
    p0 = cpu_of(fwd_pid) if fwd_pid else 0.0
    t0 = time.time()
    gen(dst_mac, iface, new=new, rate=A.paced, duration=A.duration)
    time.sleep(0.05)
    n = sink.count() - c0
    p1 = cpu_of(fwd_pid) if fwd_pid else 0.0
    s1 = softirq()
    wall = time.time() - t0
    w2 = counters()
    nan = float("nan")
    res = {"path": name, "rates": rates, "proc_ns": [(p1 - p0) / n * 1e9 if n else nan],
           "softirq_ns": [(s1 - s0) / n * 1e9 if n else nan],
           # Cores kept busy at the paced load: the forwarding process's CPU time, and the softirq
           # time of all CPUs (the veths' receive work on both sides, and all of a kernel path's
           # forwarding), each over the wall time of the paced run.
           "proc_cores": [(p1 - p0) / wall], "softirq_cores": [(s1 - s0) / wall],
           "batch_full": [per_batch(w0, w1)], "batch_paced": [per_batch(w1, w2)]}
    print(f"{name:20s} {' '.join(f'{r / 1e6:.3f}' for r in rates)} Mpps  paced rx={n} "
          f"proc={res['proc_ns'][0]:.0f} ns/pkt softirq={res['softirq_ns'][0]:.0f} ns/pkt "
          f"cores={res['proc_cores'][0]:.2f}+{res['softirq_cores'][0]:.2f} "
          f"frames/wake-up full={res['batch_full'][0]:.1f} paced={res['batch_paced'][0]:.1f}", flush=True)
    return res


def worker_counters(text):
    """(rx, rx_batches) summed over the worker lines of `xvsadm --xvs-stats` or of xvs-fwd's
    stats file; None when there are none."""
    rx = nb = 0
    found = False
    for line in text.splitlines():
        f = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if "rx" in f and "rx_batches" in f:
            rx, nb, found = rx + int(f["rx"]), nb + int(f["rx_batches"]), True
    return (rx, nb) if found else None


def read_file(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def median_ci(v, level=0.95):
    """Distribution-free confidence interval of the median of sorted samples `v` (order statistics
    from the binomial distribution); (None, None) when there are too few samples for the level."""
    n = len(v)
    cdf = lambda k: sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    k = max((k for k in range(n // 2 + 1) if cdf(k - 1) <= (1 - level) / 2), default=0)
    if k < 1:
        return None, None
    return v[k - 1], v[n - k]


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")


def rules(method):
    out = [f"-A -t {VIP}:80 -s rr"] + [f"-a -t {VIP}:80 -r {r}:80 {method}" for r in REALS]
    return "\n".join(out) + "\n"


def scaling(tmp):
    """xvsd DR with established flows: one worker queue, then two (a rig whose veths have two
    queues, with one generator per queue, so each worker gets half the flows)."""
    rows = []
    for queues in (1, 2):
        rig_down()
        rig_up(queues)
        sink = Sink(f"k0{ID}")
        path = os.path.join(tmp, "rules")
        open(path, "w").write(rules("-g"))
        sock = os.path.join(tmp, f"sock{queues}")
        xv = Proc("l", [os.path.join(REL, "xvsd"), "-i", f"l0{ID}", "-i", f"l1{ID}", "--rules", path, "--control", sock])
        time.sleep(2)
        lmac = mac("l", f"l0{ID}")
        base = lambda q: ["ip", "netns", "exec", NS["s"], os.path.join(REL, "xvs-pktgen"), "--interface", f"s0{ID}",
                          "--queue", str(q), "--dst-mac", lmac, "--dst", VIP, "--flows", "5000",
                          "--client-base", f"10.{200 + q}.0.0"]
        for q in range(queues):
            subprocess.run(base(q) + ["--new-conns", "--count", "5000", "--rate", "20000", "--duration", "5"],
                           capture_output=True, timeout=60)
        rates = []
        for _ in range(A.runs * A.rounds):
            c0, t0 = sink.count(), time.time()
            ps = [subprocess.Popen(base(q) + ["--duration", str(A.duration)], stdout=subprocess.DEVNULL)
                  for q in range(queues)]
            for p in ps:
                p.wait(timeout=120)
            time.sleep(0.05)
            rates.append((sink.count() - c0) / (time.time() - t0 - 0.05) / 1e6)
        rates.sort()
        stats = subprocess.run([os.path.join(REL, "xvsadm"), "--xvs-stats"], capture_output=True, text=True,
                               env=dict(os.environ, XVS_CONTROL=sock)).stdout
        workers = [l.split()[2] for l in stats.splitlines() if l.startswith("worker ")]
        rows.append((queues, rates[len(rates) // 2], rates[0], rates[-1], " ".join(workers)))
        print(f"scaling: {queues} queue(s) {rows[-1][1]:.3f} Mpps ({rows[-1][2]:.3f}-{rows[-1][3]:.3f}) {rows[-1][4]}",
              flush=True)
        xv.stop()
        sink.stop()
    lines = ["| worker queues | Mpps (median) | min–max | per-worker rx |", "|---|---|---|---|"]
    lines += [f"| {q} | {m:.3f} | {lo:.3f}–{hi:.3f} | {w} |" for q, m, lo, hi, w in rows]
    return "\n".join(lines)


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def huge_kib(pid):
    """Of its resident memory, how much is on transparent huge pages."""
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def memory(tmp):
    """RSS of xvsd (DR, 100 real servers) with 0, 1 M and 10 M connections in the table."""
    path = os.path.join(tmp, "rules")
    open(path, "w").write(rules("-g"))
    sock = os.path.join(tmp, "sock")
    cap = 12_000_000
    xv = Proc("l", [os.path.join(REL, "xvsd"), "-i", f"l0{ID}", "-i", f"l1{ID}", "--rules", path, "--control", sock,
                    "--conn-capacity", str(cap)])
    time.sleep(3)
    conns = lambda: int(next(w.split("=")[1] for w in subprocess.run(
        [os.path.join(REL, "xvsadm"), "--xvs-stats"], capture_output=True, text=True,
        env=dict(os.environ, XVS_CONTROL=sock)).stdout.split() if w.startswith("connections=")))
    lmac = mac("l", f"l0{ID}")
    rows = [(0, rss_kib(xv.p.pid), huge_kib(xv.p.pid))]
    seq = 0
    for target in (1_000_000, 10_000_000):
        # SYNs from distinct clients: the generator's stride walks a 2^24 space without repeats,
        # and each run continues where the last stopped. Bounded: at most 20 runs per stage.
        # 250,000 a second: SYN_RECV entries expire after 60 s, so a slower fill levels off
        # below 10 M (150,000/s: about 9.1 M); a SYN the worker misses is sent again by the
        # next run.
        for _ in range(20):
            missing = target - conns()
            if missing <= 0:
                break
            r = subprocess.run(["ip", "netns", "exec", NS["s"], os.path.join(REL, "xvs-pktgen"), "--interface",
                                f"s0{ID}", "--dst-mac", lmac, "--dst", VIP, "--flows", str(1 << 24), "--new-conns",
                                "--count", str(missing), "--rate", "250000", "--duration", "120",
                                "--seq-start", str(seq)], capture_output=True, text=True, timeout=200)
            seq += int(r.stdout.strip() or 0)
        rows.append((conns(), rss_kib(xv.p.pid), huge_kib(xv.p.pid)))
        print(f"memory: {rows[-1][0]} connections, RSS {rows[-1][1]} KiB, {rows[-1][2]} KiB on huge pages",
              flush=True)
    xv.stop()
    base = rows[0][1]
    lines = ["| connections | RSS (MiB) | bytes per connection above the empty table | on huge pages (MiB) |",
             "|---|---|---|---|"]
    for n, kib, huge in rows:
        per = f"{(kib - base) * 1024 / n:.0f}" if n else "–"
        lines.append(f"| {n:,} | {kib / 1024:.0f} | {per} | {huge / 1024:.0f} |")
    lines.append(f"\n(capacity {cap:,}; the table's maps grow with the connections)")
    return "\n".join(lines)


def establish(name, lmac, stats, iface=None):
    """Create the 10,000 flows with SYNs first (same client/port space as the ACKs), slowly enough
    that none is lost, and check that the table holds them all."""
    conns = []
    for _ in range(5):
        subprocess.run(["ip", "netns", "exec", NS["s"], os.path.join(REL, "xvs-pktgen"),
                        "--interface", iface or f"s0{ID}", "--dst-mac", lmac, "--dst", VIP, "--flows", "10000",
                        "--new-conns", "--count", "10000", "--duration", "5", "--rate", "20000"],
                       capture_output=True, timeout=60)
        conns = [int(w.split("=")[1]) for w in stats().split() if w.startswith("connections=")]
        if conns and conns[0] >= 10_000:
            break
    print(f"  {name}: {conns[0] if conns else '?'} connections before the run", flush=True)


def xvsd_drops(stats):
    """The drop reasons xvsd counted (`reason=count`, those above 0), from its --xvs-stats reader."""
    return [l.split()[1] for l in stats().splitlines() if l.startswith("drop ") and not l.endswith("=0")]


def start_xvsd(tmp, method, role="l", capacity=1 << 22):
    """xvsd in balancer namespace `role` ("l", or "m" of --paired's second chain) on its interfaces
    0 (clients) and 1 (real servers) with the benchmark's service; returns it and a function that
    reads its --xvs-stats."""
    path = os.path.join(tmp, f"rules-{role}")
    open(path, "w").write(rules(method))
    cores = [] if not pin(1) else ["--cores", "1"]
    sock = os.path.join(tmp, f"sock-{role}")
    xv = Proc(role, [os.path.join(REL, "xvsd"), "-i", f"{role}0{ID}", "-i", f"{role}1{ID}", "--rules", path,
                     "--control", sock, "--conn-capacity", str(capacity)] + cores + shlex.split(A.xvsd_args))
    time.sleep(2)
    stats = lambda: subprocess.run([os.path.join(REL, "xvsadm"), "--xvs-stats"], capture_output=True,
                                   text=True, env=dict(os.environ, XVS_CONTROL=sock)).stdout
    return xv, stats


# --flood: the table's capacity, and the new flows sent: 5.5 times as many, all different.
FLOOD_TABLE = 1 << 20
FLOOD_FLOWS = 5_767_168


def flood_rate(sink, lmac):
    """Send FLOOD_FLOWS SYNs from as many new clients at full speed, reading the sink every 0.25 s;
    returns (packets/s over the whole flood, packets/s once 2 M had arrived: the table full,
    seconds)."""
    p = subprocess.Popen(gen_args(lmac, f"s0{ID}", new=True, count=FLOOD_FLOWS, duration=60,
                                  flows=1 << 23), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    c0, t0 = sink.count(), time.time()
    samples = []
    while p.poll() is None:
        time.sleep(0.25)
        samples.append((sink.count() - c0, time.time() - t0))
    time.sleep(0.05)
    n, t = sink.count() - c0, time.time() - t0 - 0.05
    full = next(((c, s) for c, s in samples if c >= 2_000_000), None)
    late = (n - full[0]) / (t - full[1]) if full and t > full[1] else float("nan")
    return n / t, late, t


def flood(tmp):
    """New flows, 5.5 times the table's capacity, at full speed through xvsd DR with a 1 M-entry
    table, the bare forwarder and nftables DNAT with conntrack limited to 1 M entries; then each
    forwarder's established rate (ACKs over 10,000 flows) with its table full of the flood."""
    lmac = mac("l", f"l0{ID}")
    sink = Sink(f"k0{ID}")
    rows = []
    want = lambda p: not A.only or any(o in p for o in A.only.split(","))
    if want("xvs-dr"):
        flood_xvsd(tmp, sink, lmac, rows)
    if want("bare"):
        flood_bare(sink, lmac, rows)
    if want("kernel"):
        flood_kernel(sink, lmac, rows)
    sink.stop()
    return flood_table(rows)


def flood_xvsd(tmp, sink, lmac, rows):
    """xvsd DR with a FLOOD_TABLE-entry table."""
    xv, stats = start_xvsd(tmp, "-g", capacity=FLOOD_TABLE)
    whole, late, secs = flood_rate(sink, lmac)
    establish("xvs-dr", lmac, stats)
    est = median([gen_rate(sink, lmac) for _ in range(3)])
    st = stats()
    table = next((l for l in st.splitlines() if l.startswith("table:")), "")
    eng = next((l for l in st.splitlines() if l.startswith("engine:")), "")
    rows.append(("xvs-dr", whole, late, est, secs, " ".join(xvsd_drops(stats)), f"{eng} | {table}"))
    xv.stop()


def flood_bare(sink, lmac, rows):
    """The bare forwarder under the same flood (it keeps no state)."""
    fwd = Proc("l", pin(1) + [os.path.join(REL, "xvs-fwd"), "--in", f"l0{ID}", "--out", f"l1{ID}",
                              "--next-hop-mac", mac("k", f"k0{ID}"), "--vip", VIP])
    time.sleep(1)
    whole, late, secs = flood_rate(sink, lmac)
    est = median([gen_rate(sink, lmac) for _ in range(3)])
    rows.append(("bare", whole, late, est, secs, "", ""))
    fwd.stop()
    if not whole:
        print(f"  bare forwarder: {fwd.text()[-500:]}", flush=True)


def flood_kernel(sink, lmac, rows):
    """nftables DNAT over the 100 real servers. conntrack's limit is the host's (a namespace
    cannot set it): set to the table's capacity for the run, then restored."""
    old = sh("sysctl -n net.netfilter.nf_conntrack_max", check=False).strip()
    try:
        sh(f"sysctl -qw net.netfilter.nf_conntrack_max={FLOOD_TABLE}")
        nsx("l", "sysctl -qw net.ipv4.ip_forward=1")
        m = ", ".join(f"{i} : {r}" for i, r in enumerate(REALS))
        nsx("l", "nft add table ip xvsb")
        nsx("l", "nft add chain ip xvsb pre '{ type nat hook prerouting priority -100; }'")
        nsx("l", f"nft add rule ip xvsb pre ip daddr {VIP} tcp dport 80 dnat to numgen inc mod 100 map {{ {m} }}")
        whole, late, secs = flood_rate(sink, lmac)
        count = nsx("l", "cat /proc/sys/net/netfilter/nf_conntrack_count", check=False).strip()
        est = median([gen_rate(sink, lmac) for _ in range(3)])
        rows.append(("kernel-nft-dnat", whole, late, est, secs, "", f"conntrack entries after the flood: {count}"))
    finally:
        nsx("l", "nft delete table ip xvsb", check=False)
        nsx("l", "sysctl -qw net.ipv4.ip_forward=0", check=False)
        if old:
            sh(f"sysctl -qw net.netfilter.nf_conntrack_max={old}", check=False)


def flood_table(rows):
    """The --flood table from its rows."""
    for r in rows:
        print(f"  {r[0]}: new {r[1] / 1e6:.3f} Mpps (table full {r[2] / 1e6:.3f}), established {r[3] / 1e6:.3f}, "
              f"{r[4]:.1f} s; {r[5]} {r[6]}", flush=True)
    ratio = lambda a, b: f"{a / b:.2f}" if b and b == b else "–"
    bare = next((r[2] for r in rows if r[0] == "bare"), None)
    kern = next((r[2] for r in rows if r[0] == "kernel-nft-dnat"), None)
    lines = [f"{FLOOD_FLOWS:,} SYNs from as many new clients (5.5 × a {FLOOD_TABLE:,}-entry table) at full speed; "
             "the rate of new flows is read once 2 M had arrived (the table full); the established rate "
             "(ACKs over 10,000 flows, median of three 3-second runs) with the table still full", "",
             "| path | new flows, Mpps (whole flood) | new flows, Mpps (table full) | established, Mpps "
             "| new (table full) ÷ established | ÷ bare (new) | ÷ kernel (new) | flood seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, whole, late, est, secs, _, _ in rows:
        lines.append(f"| {name} | {whole / 1e6:.3f} | {late / 1e6:.3f} | {est / 1e6:.3f} | {ratio(late, est)} | "
                     f"{ratio(late, bare)} | {ratio(late, kern)} | {secs:.1f} |")
    for name, _, _, _, _, drops, extra in rows:
        if drops or extra:
            lines.append(f"\n{name}: drops {drops or 'none'}; {extra}")
    return "\n".join(lines)


def gen_rate(sink, lmac):
    """One full-speed run of ACKs over the 10,000 established flows; packets/s at the sink."""
    c0, t0 = sink.count(), time.time()
    gen(lmac, f"s0{ID}")
    time.sleep(0.05)
    return (sink.count() - c0) / (time.time() - t0 - 0.05)


# --paired: (A, B, what A ÷ B should reach). A runs on the first chain (namespace l), B on the second (m).
PAIRED = [("xvs-dr-est", "bare", 0.95), ("xvs-dr-new", "xvs-dr-est", 0.70), ("xvs-tun-new", "xvs-tun-est", 0.70),
          ("xvs-nat-new", "xvs-nat-est", 0.70)]


def start_path(tmp, path, role):
    """Start the forwarder of `path` in balancer namespace `role`; returns (process, whether it takes
    new connections)."""
    if path == "bare":
        fwd = Proc(role, pin(1) + [os.path.join(REL, "xvs-fwd"), "--in", f"{role}0{ID}", "--out", f"{role}1{ID}",
                                   "--next-hop-mac", mac("k", f"k{'0' if role == 'l' else '2'}{ID}"), "--vip", VIP])
        time.sleep(1)
        return fwd, False, None
    method = {"dr": "-g", "tun": "-i", "nat": "-m"}[path.split("-")[1]]
    new = path.endswith("-new")
    # New connections live 60 s in SYN_RECV, and a comparison's bursts of SYNs (30 of 1 s, one
    # every 2–3 s) all fall within a minute: room for 33 M of them, 0.6 Mpps for 55 s. A table
    # that fills drops new connections (counted, and reported under the table by `paired`).
    xv, stats = start_xvsd(tmp, method, role, capacity=(1 << 25) if new else (1 << 22))
    if not new:
        establish(path, mac(role, f"{role}0{ID}"), stats, f"s{'0' if role == 'l' else '2'}{ID}")
    return xv, new, stats


def paired(tmp):
    """Each comparison of PAIRED: path A on the first chain and path B on the second, both alive;
    bursts at full speed alternate between them (ABBA), and each pair of bursts gives one ratio."""
    sinks = {"l": Sink(f"k0{ID}"), "m": Sink(f"k2{ID}")}
    lines = [f"{A.pairs} pairs of {A.burst:g}-second bursts at full speed per comparison, alternating (ABBA); "
             "the two paths run side by side on two chains of the rig", "",
             "| ratio | median | 95 % confidence interval of the median | quartiles | min–max | pairs ≥ target |",
             "|---|---|---|---|---|---|"]
    dropped = []
    try:
        for a, b, goal in PAIRED:
            if A.only and not any(o in a or o in b for o in A.only.split(",")):
                continue
            procs = {}
            try:
                for path, role in ((a, "l"), (b, "m")):
                    procs[role] = start_path(tmp, path, role)
                rows = []
                for i in range(A.pairs):
                    got = {}
                    for role in (("m", "l") if i % 2 == 0 else ("l", "m")):
                        proc, new, _ = procs[role]
                        c0, p0, t0 = sinks[role].count(), cpu_of(proc.p.pid), time.time()
                        # Every burst of SYNs from clients of its own (the generator starts its walk of
                        # the client space afresh each time; 4 M flows span 245 addresses).
                        base = str(ipaddress.IPv4Address("10.200.0.0") + 256 * (i + 1)) if new else None
                        gen(mac(role, f"{role}0{ID}"), f"s{'0' if role == 'l' else '2'}{ID}", new=new,
                            duration=A.burst, client_base=base)
                        time.sleep(0.05)
                        n = sinks[role].count() - c0
                        got[role] = (n / (time.time() - t0 - 0.05),
                                     (cpu_of(proc.p.pid) - p0) / n * 1e9 if n else float("nan"))
                    rows.append(got)
                    print(f"  {a} ÷ {b}, pair {i + 1}: {got['l'][0] / 1e6:.3f} / {got['m'][0] / 1e6:.3f} Mpps = "
                          f"{got['l'][0] / got['m'][0]:.3f}", flush=True)
                # The drops of xvsd's paths over the comparison: a ratio is only as good as the
                # paths' forwarding (a full table, say, would show as a rate near zero).
                for role, (_, _, stats) in procs.items():
                    path = a if role == "l" else b
                    drops = [] if stats is None else xvsd_drops(stats)
                    if drops:
                        dropped.append(f"{path} (in {a} ÷ {b}): {' '.join(drops)}")
                        print(f"  {path} drops: {' '.join(drops)}", flush=True)
            finally:
                for proc, _, _ in procs.values():
                    proc.stop()
            q = lambda v, f: v[min(len(v) - 1, int(f * len(v)))]

            def row(label, v, goal):
                lo, hi = median_ci(v)
                ci = f"{lo:.3f}–{hi:.3f}" if lo is not None else "–"
                hits = f"{sum(x >= goal for x in v)} of {len(v)} (≥ {goal:g})" if goal else "–"
                return (f"| {label} | {median(v):.3f} | {ci} | {q(v, 0.25):.3f}–{q(v, 0.75):.3f} | "
                        f"{v[0]:.3f}–{v[-1]:.3f} | {hits} |")
            lines.append(row(f"{a} ÷ {b}, Mpps", sorted(g["l"][0] / g["m"][0] for g in rows), goal))
            if b == "bare":
                lines.append(row(f"{a} ÷ {b}, process CPU per packet at full speed",
                                 sorted(g["l"][1] / g["m"][1] for g in rows), None))
    finally:
        for s in sinks.values():
            s.stop()
    lines += ["", "Drops counted by xvsd during the bursts: " + ("; ".join(dropped) if dropped else "none")]
    return "\n".join(lines)


def one_round(tmp):
    """Every path once, in order; returns their raw samples."""
    results = []
    want = lambda p: not A.only or any(o in p for o in A.only.split(","))
    lmac = mac("l", f"l0{ID}")
    # 1. ceiling: sender straight into the sink.
    if want("ceiling"):
        sink = Sink(f"k1{ID}")
        results.append(measure("ceiling", sink, mac("k", f"k1{ID}"), f"s1{ID}", False, None))
        sink.stop()
    sink = Sink(f"k0{ID}")
    # 2. bare AF_XDP forwarder.
    if want("bare"):
        fstats = os.path.join(tmp, "fwd-stats")
        fwd = Proc("l", pin(1) + [os.path.join(REL, "xvs-fwd"), "--in", f"l0{ID}", "--out", f"l1{ID}",
                         "--next-hop-mac", mac("k", f"k0{ID}"), "--vip", VIP, "--stats", fstats])
        time.sleep(1)

        def fwd_counters():
            time.sleep(0.2)  # the file is rewritten every 100 ms
            return worker_counters(read_file(fstats))
        results.append(measure("bare", sink, lmac, f"s0{ID}", False, fwd.p.pid, fwd_counters))
        fwd.stop()
    # 3. xvsd in DR, tunnel and NAT modes, established and new connections.
    for method, label in (("-g", "dr"), ("-i", "tun"), ("-m", "nat")):
        for new in (False, True):
            name = f"xvs-{label}-{'new' if new else 'est'}"
            if not want(name):
                continue
            xv, stats = start_xvsd(tmp, method)
            if not new:
                establish(name, lmac, stats)
            r = measure(name, sink, lmac, f"s0{ID}", new, xv.p.pid, lambda: worker_counters(stats()))
            drops = xvsd_drops(stats)
            r["drops"] = " ".join(drops)
            if drops:
                print(f"  {name} drops: {r['drops']}", flush=True)
            results.append(r)
            xv.stop()
    sink.stop()
    # 4. The kernel: plain forwarding, then nftables DNAT over the 100 real servers.
    if want("kernel"):
        sink = Sink(f"k0{ID}")
        nsx("l", "sysctl -qw net.ipv4.ip_forward=1")
        nsx("l", f"ip route add {VIP}/32 via {REALS[0]}")
        results.append(measure("kernel-fwd", sink, lmac, f"s0{ID}", False, None))
        m = ", ".join(f"{i} : {r}" for i, r in enumerate(REALS))
        nsx("l", "nft add table ip xvsb")
        nsx("l", "nft add chain ip xvsb pre '{ type nat hook prerouting priority -100; }'")
        nsx("l", f"nft add rule ip xvsb pre ip daddr {VIP} tcp dport 80 dnat to numgen inc mod 100 map {{ {m} }}")
        results.append(measure("kernel-nft-dnat-est", sink, lmac, f"s0{ID}", False, None))
        results.append(measure("kernel-nft-dnat-new", sink, lmac, f"s0{ID}", True, None))
        # The same with nftables' other balancing expression: a hash of the client side.
        nsx("l", "nft flush chain ip xvsb pre")
        nsx("l", f"nft add rule ip xvsb pre ip daddr {VIP} tcp dport 80 "
                 f"dnat to jhash ip saddr . tcp sport mod 100 map {{ {m} }}")
        results.append(measure("kernel-nft-jhash-est", sink, lmac, f"s0{ID}", False, None))
        results.append(measure("kernel-nft-jhash-new", sink, lmac, f"s0{ID}", True, None))
        sink.stop()
        # Back to the state the next round starts from.
        nsx("l", "nft delete table ip xvsb")
        nsx("l", f"ip route del {VIP}/32")
        nsx("l", "sysctl -qw net.ipv4.ip_forward=0")
    return results


# The targets' ratios, each taken within one round (the two paths ran minutes apart, on the
# machine as it was then), then summarised over the rounds.
RATIOS = [
    ("xvs-dr-est ÷ bare, Mpps", "xvs-dr-est", "bare", "rates"),
    ("xvs-dr-est ÷ kernel-nft-dnat-est, Mpps", "xvs-dr-est", "kernel-nft-dnat-est", "rates"),
    ("xvs-dr-est ÷ kernel-nft-jhash-est, Mpps", "xvs-dr-est", "kernel-nft-jhash-est", "rates"),
    ("xvs-dr-est ÷ bare, process CPU per packet", "xvs-dr-est", "bare", "proc_ns"),
    ("xvs-dr-new ÷ xvs-dr-est, Mpps", "xvs-dr-new", "xvs-dr-est", "rates"),
    ("xvs-tun-new ÷ xvs-tun-est, Mpps", "xvs-tun-new", "xvs-tun-est", "rates"),
    ("xvs-nat-new ÷ xvs-nat-est, Mpps", "xvs-nat-new", "xvs-nat-est", "rates"),
]


def paired_ratios(per_round):
    lines = ["| ratio (per round) | median | min–max | rounds |", "|---|---|---|---|"]
    for label, a, b, key in RATIOS:
        v = []
        for rnd in per_round:
            if a in rnd and b in rnd and rnd[a][key] and rnd[b][key]:
                x, y = median(sorted(rnd[a][key])), median(sorted(rnd[b][key]))
                if y:
                    v.append(x / y)
        if v:
            lines.append(f"| {label} | {median(sorted(v)):.2f} | {min(v):.2f}–{max(v):.2f} | "
                         + ", ".join(f"{x:.2f}" for x in v) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main():
    if os.geteuid() != 0:
        print("bench/e2e/run.py: needs root", file=sys.stderr)
        return 1
    for b in ("xvs-pktgen", "xvs-sink", "xvs-fwd", "xvsd", "xvsadm"):
        if not os.access(os.path.join(REL, b), os.X_OK):
            print(f"build first: cargo build --release -p xvs-bench -p xvsd -p xvsadm ({b} missing)",
                  file=sys.stderr)
            return 1
    merged = {}
    rig_up(second_chain=A.paired)
    tmp = tempfile.mkdtemp(prefix="xvsb")
    if A.memory or A.scaling or A.paired or A.flood:
        try:
            table = (memory(tmp) if A.memory else scaling(tmp) if A.scaling else flood(tmp) if A.flood
                     else paired(tmp))
        finally:
            rig_down()
        print(table)
        suffix = ("-memory.md" if A.memory else "-scaling.md" if A.scaling else "-flood.md" if A.flood
                  else "-paired.md")
        with open(A.out.replace(".md", suffix), "w") as f:
            f.write(table + "\n")
        return 0
    per_round = []
    try:
        for rnd in range(A.rounds):
            print(f"== round {rnd + 1} of {A.rounds}", flush=True)
            got = one_round(tmp)
            per_round.append({r["path"]: r for r in got})
            for r in got:
                acc = merged.setdefault(r["path"], {"path": r["path"], "rates": [], "proc_ns": [],
                                                    "softirq_ns": [], "proc_cores": [], "softirq_cores": [],
                                                    "batch_full": [], "batch_paced": [], "drops": ""})
                for k in ("rates", "proc_ns", "softirq_ns", "proc_cores", "softirq_cores", "batch_full",
                          "batch_paced"):
                    acc[k] += r[k]
                acc["drops"] = (acc["drops"] + " " + r.get("drops", "")).strip()
    finally:
        rig_down()
    results = []
    for r in merged.values():
        rates = sorted(r["rates"])
        results.append({"path": r["path"], "mpps": median(rates) / 1e6, "min": rates[0] / 1e6,
                        "max": rates[-1] / 1e6, "proc_ns": median(r["proc_ns"]),
                        "softirq_ns": median(r["softirq_ns"]), "drops": r["drops"],
                        "cores": (median(r["proc_cores"]), median(r["softirq_cores"])),
                        "batch": [median([b for b in r[k] if b == b]) for k in ("batch_full", "batch_paced")]})
    bare = next((r["mpps"] for r in results if r["path"] == "bare"), None)
    kern = next((r["mpps"] for r in results if r["path"] == "kernel-nft-dnat-est"), None)
    lines = ["| path | Mpps (median) | min–max | ÷ bare | ÷ kernel nft | process ns/pkt | softirq ns/pkt "
             "| cores busy, paced (process + softirq) | frames/wake-up (full, paced) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rb = f"{r['mpps'] / bare:.2f}" if bare else "–"
        rk = f"{r['mpps'] / kern:.2f}" if kern else "–"
        wb = ", ".join(f"{b:.1f}" for b in r["batch"]) if all(b == b for b in r["batch"]) else "–"
        lines.append(f"| {r['path']} | {r['mpps']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {rb} | {rk} | "
                     f"{r['proc_ns']:.0f} | {r['softirq_ns']:.0f} | {r['cores'][0]:.2f} + {r['cores'][1]:.2f} | {wb} |")
    # What xvsd dropped over the rounds (e.g. a connection table that filled): a rate is only as
    # good as the path's forwarding.
    dropped = [f"{r['path']}: {r['drops']}" for r in results if r["drops"]]
    lines += ["", "Drops counted by xvsd over the rounds: " + ("; ".join(dropped) if dropped else "none")]
    table = "\n".join(lines)
    print(table)
    with open(A.out, "w") as f:
        f.write(table + "\n")
    ratios = paired_ratios(per_round)
    if ratios:
        print(ratios)
        with open(A.out.replace(".md", "-ratios.md"), "w") as f:
            f.write(ratios + "\n")
    # For bench's xvs-plot.
    with open(A.out.replace(".md", ".csv"), "w") as f:
        for r in results:
            f.write(f"{r['path']},{r['mpps']},{r['min']},{r['max']},{r['proc_ns']}\n")
    return 0


sys.exit(main())
