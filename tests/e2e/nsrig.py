"""A namespace rig from scripts/rig.sh (client, balancer, three real servers on veth pairs, with
unique names), the processes started in it, and its removal: the tests' and the benchmarks'."""
import os
import shlex
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RIG = os.path.join(ROOT, "scripts", "rig.sh")


class NsRig:
    """A rig of `mode` (nat, dr, tun) whose balancer veths have `queues` queues."""

    def __init__(self, mode, queues=1):
        self.mode = mode
        out = subprocess.run([RIG, "up", mode, str(queues)], check=True, capture_output=True, text=True,
                             timeout=60).stdout
        env = dict(kv.split("=", 1) for kv in shlex.split(out.strip().splitlines()[-1]))
        self.id = env["RIG_ID"]
        self.lb_ifs = env["RIG_LB_IFS"].split()
        self.procs = []
        self.tmp = tempfile.mkdtemp(prefix=f"xvs{self.id}-")

    def far_ends(self):
        """The far ends of the balancer's veths, where its frames arrive (scripts/rig.sh
        `napi_peer`): (namespace role, interface) pairs."""
        prefixes = [("c", "xc"), ("w", "xw")] if self.mode == "nat" else [("w", "xm")]
        return [(role, f"{p}{self.id}") for role, p in prefixes]

    def ns(self, role):
        return f"xvs{self.id}-{role}"

    def run(self, role, cmd, timeout=30, check_rc=False, input=None):
        return subprocess.run(["ip", "netns", "exec", self.ns(role)] + cmd, capture_output=True,
                              timeout=timeout, check=check_rc, input=input)

    def spawn(self, role, cmd, log):
        """Start `cmd` in namespace `role`, its output in the rig's file `log`; stopped by close()."""
        f = open(os.path.join(self.tmp, log), "wb")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(role)] + cmd, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def set_mtu(self, mtu):
        """Every link of every namespace of the rig at `mtu` (the bridge follows its ports)."""
        for role in ("c", "l", "w", "r1", "r2", "r3"):
            out = self.run(role, ["ip", "-o", "link", "show"], check_rc=True).stdout.decode()
            for line in out.splitlines():
                name = line.split(":")[1].strip().split("@")[0]
                if name != "lo":
                    self.run(role, ["ip", "link", "set", name, "mtu", str(mtu)], check_rc=True)

    def log(self, name):
        try:
            with open(os.path.join(self.tmp, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        """Stop every process started here (by PID), then remove the namespaces."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        subprocess.run([RIG, "down", self.id], capture_output=True, timeout=60)
