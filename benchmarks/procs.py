"""Processes and namespaces the benchmark starts, and how they are ended.

Every process is started through :func:`spawn`, which records it in one
registry; :func:`stop` ends one by PID (SIGTERM, then SIGKILL) and
:func:`stop_all` ends whatever is left, newest first.  ``python -m benchmarks``
calls ``stop_all`` in a ``finally`` and turns SIGTERM/SIGHUP into an exception,
so a Ctrl-C, a failing row or a crash in the harness leaves nothing behind.
Children run in their own sessions (a terminal's Ctrl-C reaches only the
harness, which then ends them in order) and get PR_SET_PDEATHSIG=SIGKILL
where the kernel keeps it; namespace holders sleep for a bounded time.

Topology, made fresh for every row and repetition (all rootless)::

    real host netns (never used for traffic)
      └─ "host" H   unshare -rn: lo up, ext0 10.0.9.1/24 (veth, peer ext1 in H,
         │           default route via 10.0.9.2 → nothing can leave H)
         │           helpers run here; "host loopback" is H's 127.0.0.1
         └─ "guest" G  unshare -rn inside H (child user + net namespace):
                       tap0 10.0.2.100/24 from the helper, or veth1 (kernel row)

ext0 gives H a routable interface (pasta insists on one) and a non-loopback
local address (pasta splices every connection whose source is loopback, so its
TAP path inbound can only be measured from such an address).  Traffic goes
only to loopback and to H and G.

With IPv6 measurements (``Topology(ipv6=True)``) ext0 also has fd09::1/64 and
H an IPv6 default route via fd09::2 (pasta enables IPv6 only with one); the
guest's addresses are in fd00::/64 (SLAAC from the helper's router
advertisements, pasta's fd00::100, or the kernel row's static fd00::100).
Static addresses are added with ``nodad``; those the guest makes itself are
waited for until duplicate address detection cleared them
(:meth:`Namespace.wait_ipv6_address`).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass

HOLDER_SLEEP_S = 2700  # bounds a namespace holder even if everything else fails (a run takes < 15 min)
STOP_GRACE_S = 3.0
PR_SET_PDEATHSIG = 1

_registry: list[subprocess.Popen] = []
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: list[str], *, env: dict | None = None, pass_fds: tuple[int, ...] = (),
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env,
        pass_fds=pass_fds, start_new_session=True, preexec_fn=_child_setup,
    )
    _registry.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, grace_s: float = STOP_GRACE_S) -> None:
    """End one process we started, by its PID, and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    if proc in _registry:
        _registry.remove(proc)


def stop_all(grace_s: float = 1.0) -> None:
    """End everything still running: SIGTERM to all, then SIGKILL to what is left.

    Fast on purpose: `su` gives its child 2 s after forwarding a signal.
    """
    for proc in reversed(_registry):
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for proc in reversed(_registry):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _registry.clear()


def run(argv: list[str], timeout_s: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run to completion with a time limit; the process is ended by PID on timeout."""
    proc = spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc, grace_s=0.5)
        out, err = proc.communicate()
        err = (err or b"") + f"\n(timed out after {timeout_s:.0f} s)".encode()
        return subprocess.CompletedProcess(argv, -9, out, err)
    finally:
        if proc in _registry:
            _registry.remove(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


CLK_TCK = os.sysconf("SC_CLK_TCK")


class CpuShare:
    """CPU time that processes other than this run used while it ran (shared machines).

    Busy time of all CPUs (user+nice+system from /proc/stat; interrupt time left out,
    since our own packets are counted there) minus this process's and its reaped
    children's CPU time.  ``start()``, then ``other_fraction()`` after every child of
    the interval was reaped: 0.0 means nothing else ran, 1.0 one whole CPU's worth.
    """

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system = (int(v) for v in fields[:3])
        return (user + nice + system) / CLK_TCK

    @staticmethod
    def _ours_s() -> float:
        import resource
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), self._busy_s(), self._ours_s()

    def other_fraction(self) -> float:
        elapsed = time.monotonic() - self.t0
        other = (self._busy_s() - self.busy0) - (self._ours_s() - self.ours0)
        return max(0.0, other) / elapsed if elapsed > 0 else 0.0


# Flags of /proc/net/if_inet6 (include/uapi/linux/if_addr.h)
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


@dataclass(frozen=True)
class Inet6Address:
    """One line of /proc/net/if_inet6: an IPv6 address of an interface."""

    address: ipaddress.IPv6Address
    ifindex: int
    prefix_len: int
    scope: int  # 0: global, 0x20: link
    flags: int
    dev: str

    @property
    def usable(self) -> bool:
        """Past duplicate address detection (or never subject to it)."""
        return not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def parse_if_inet6(text: str) -> list[Inet6Address]:
    """The addresses in /proc/net/if_inet6: 32 hex digits, then index, prefix length,
    scope and flags in hex, then the device name."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 6 or len(parts[0]) != 32:
            continue
        out.append(Inet6Address(ipaddress.IPv6Address(int(parts[0], 16)), int(parts[1], 16), int(parts[2], 16),
                                int(parts[3], 16), int(parts[4], 16), parts[5]))
    return out


class Namespace:
    """A sleeping process in a new user + network namespace (``unshare -rn``).

    ``parent`` nests it: the new namespaces are children of the parent's.
    """

    def __init__(self, name: str, parent: Namespace | None = None):
        self.name = name
        argv = ["unshare", "-rn", "sleep", str(HOLDER_SLEEP_S)]
        self.proc = spawn(parent.enter(argv) if parent else argv)
        self.pid = self.proc.pid
        base = os.readlink(f"/proc/{parent.pid}/ns/net") if parent else os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        # nsenter and unshare exec, so this PID ends up as sleep in the new namespaces.  unshare
        # writes the uid/gid maps after creating them and then execs sleep: wait for sleep, or
        # an nsenter racing the maps would find itself unmapped (EPERM).
        while True:
            try:
                with open(f"/proc/{self.pid}/comm") as f:
                    if f.read().strip() == "sleep" and os.readlink(f"/proc/{self.pid}/ns/net") != base:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"could not create namespace {name} (unshare -rn failed)")
            time.sleep(0.005)

    def enter(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-U", "-n", "--preserve-credentials", *argv]

    def sh(self, script: str, timeout_s: float = 10) -> None:
        res = run(self.enter(["sh", "-ec", script]), timeout_s)
        if res.returncode != 0:
            raise RuntimeError(f"{self.name}: {script!r} failed: {res.stderr.decode(errors='replace').strip()}")

    def listening(self, port: int, proto: str = "tcp") -> bool:
        """Is something in this namespace bound to PORT (TCP: listening)?"""
        want = f":{port:04X}"
        for fam in ("", "6"):
            try:
                with open(f"/proc/{self.pid}/net/{proto}{fam}") as f:
                    next(f)
                    for line in f:
                        parts = line.split()
                        if parts[1].endswith(want) and (proto != "tcp" or parts[3] == "0A"):
                            return True
            except OSError:
                pass
        return False

    def wait_listening(self, port: int, proc: subprocess.Popen | None = None, proto: str = "tcp",
                       timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.listening(port, proto):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server for port {port} exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {self.name} port {port} after {timeout_s:.0f} s")
            time.sleep(0.01)

    def dev_bytes(self) -> dict[str, int]:
        """rx+tx bytes per interface, as this namespace sees them."""
        counts = {}
        try:
            with open(f"/proc/{self.pid}/net/dev") as f:
                for line in list(f)[2:]:
                    name, rest = line.split(":", 1)
                    v = rest.split()
                    counts[name.strip()] = int(v[0]) + int(v[8])
        except OSError:
            pass
        return counts

    def ipv6_addresses(self, dev: str) -> list[Inet6Address]:
        try:
            with open(f"/proc/{self.pid}/net/if_inet6") as f:
                text = f.read()
        except OSError:
            return []
        return [a for a in parse_if_inet6(text) if a.dev == dev]

    def wait_ipv6_address(self, dev: str, prefix: str, proc: subprocess.Popen | None = None,
                          timeout_s: float = 15.0) -> str:
        """An address of DEV in PREFIX once it is usable (SLAAC and DAD take seconds)."""
        net = ipaddress.IPv6Network(prefix)
        deadline = time.monotonic() + timeout_s
        while True:
            addrs = [a for a in self.ipv6_addresses(dev) if a.address in net]
            if any(a.flags & IFA_F_DADFAILED for a in addrs):
                raise RuntimeError(f"{self.name}: duplicate address detection failed on {dev} ({addrs[0].address})")
            for a in addrs:
                if a.usable:
                    return str(a.address)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"exited with status {proc.returncode} before {dev} had an address in {prefix}")
            if time.monotonic() > deadline:
                state = ", ".join(f"{a.address} flags {a.flags:#x}" for a in addrs) or "none"
                raise RuntimeError(f"{self.name}: no usable address in {prefix} on {dev} after "
                                   f"{timeout_s:.0f} s (have: {state})")
            time.sleep(0.05)

    def close(self) -> None:
        stop(self.proc, grace_s=1.0)


class Topology:
    """H (the helper's host) and G (the guest) for one row and repetition."""

    HOST_EXT_ADDR = "10.0.9.1"
    HOST_EXT_ADDR6 = "fd09::1"
    # Both client namespaces get a wide ephemeral port range (the benchmark's servers use 52xx)
    # and tcp_tw_reuse=1 (the default, 2, allows it on loopback only): the connection-rate
    # clients close first and leave ~15k TIME_WAIT ports per second; without reuse, connect()
    # soon scans thousands of busy ports (even ones first) and the kernel of the client, not
    # what carries the connections, sets the rate of the third batch.
    CLIENT_SYSCTLS = (
        "echo '10000 65535' > /proc/sys/net/ipv4/ip_local_port_range\n"
        "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse\n"
    )

    def __init__(self, ipv6: bool = False):
        self.host = self.guest = None
        self.ipv6 = ipv6
        ext6 = (f"ip addr add {self.HOST_EXT_ADDR6}/64 dev ext0 nodad\n"
                "ip -6 route add default via fd09::2 dev ext0\n") if ipv6 else ""
        try:
            self.host = Namespace("host")
            self.host.sh(
                "ip link set lo up\n"
                "ip link add ext0 type veth peer name ext1\n"
                f"ip addr add {self.HOST_EXT_ADDR}/24 dev ext0\n"
                "ip link set ext0 up\n"
                "ip link set ext1 up\n"
                "ip route add default via 10.0.9.2 dev ext0\n" + ext6 + self.CLIENT_SYSCTLS
            )
            self.guest = Namespace("guest", parent=self.host)
            self.guest.sh("ip link set lo up\n" + self.CLIENT_SYSCTLS)
        except BaseException:
            self.close()
            raise

    def add_veth(self, mtu: int) -> None:
        """The kernel row: veth0 10.0.2.2 in H, veth1 10.0.2.100 in G (and fd00::2, fd00::100)."""
        v6 = self.ipv6
        self.host.sh(
            f"ip link add veth0 mtu {mtu} type veth peer name veth1 mtu {mtu} netns {self.guest.pid}\n"
            "ip addr add 10.0.2.2/24 dev veth0\n"
            + ("ip addr add fd00::2/64 dev veth0 nodad\n" if v6 else "")
            + "ip link set veth0 up\n"
        )
        self.guest.sh("ip addr add 10.0.2.100/24 dev veth1\n"
                      + ("ip addr add fd00::100/64 dev veth1 nodad\n" if v6 else "")
                      + "ip link set veth1 up")

    def close(self) -> None:
        if self.guest:
            self.guest.close()
        if self.host:
            self.host.close()
