"""Helpers for namespace tests: target namespaces, slirpnet processes, commands inside.

Everything started here is ended by PID by the fixture that started it.
Traffic goes only to loopback or to namespaces the test made.
"""

from __future__ import annotations

import os
import pathlib
import select
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
SLIRPNET = [sys.executable, "-m", "slirp"]
READY_TIMEOUT_S = 20


class Netns:
    """A process in a new user + network namespace (``unshare -rn``): the target.

    With ``parent``, a new network namespace only, made from inside the
    parent's namespaces (so it belongs to the parent's user namespace)."""

    def __init__(self, extra: tuple[str, ...] = (), parent: Netns | None = None):
        argv = ["unshare", "-rn", *extra, "sleep", "3600"]
        if parent is not None:
            argv = parent.enter("unshare", "-n", *extra, "sleep", "3600")
        # nsenter and unshare exec (no pid namespace: no fork), so the
        # process started is the sleeper itself.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        outer = os.readlink(f"/proc/{parent.pid}/ns/net" if parent is not None else "/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while (
            _netns_of(self.pid) in (outer, None)
            or _comm(self.pid) != "sleep"  # unshare has finished (uid_map written) and exec'd
            or (parent is None and not _uid_map(self.pid))
        ):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("unshare -n did not start")
            time.sleep(0.01)

    def enter(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-U", "-n", "--preserve-credentials", *argv]

    def run(self, *argv: str, timeout: float = 30, check: bool = False, input: bytes | None = None):
        return subprocess.run(self.enter(*argv), capture_output=True, timeout=timeout, check=check, input=input)

    def sh(self, script: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter("sh", "-c", script), capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        stop(self.proc)


def _netns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _uid_map(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/uid_map") as f:
            return f.read().strip()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class World:
    """A small private internet for tests that must reach "the outside".

    host   — user + network namespace where slirpnet runs (plays the machine);
             its ONLY route leads to remote, so nothing can leave the box;
             loopback up; unprivileged ICMP sockets allowed; a resolv.conf
             file of its own for the DNS forwarder.
    remote — a network namespace behind a veth pair (198.51.100.2/24 and
             2001:db8:1::2/64), the "world" the guest reaches through
             slirpnet; host is 198.51.100.1 and 2001:db8:1::1 on it, with
             IPv4 and IPv6 default routes toward remote (documentation
             prefixes, and only inside this world).
    guest  — the network namespace slirpnet serves (the container).
    host and remote are owned by host's user namespace, so root there can
    bind low ports and wire them up.
    """

    HOST_ADDR = "198.51.100.1"
    REMOTE_ADDR = "198.51.100.2"
    HOST_ADDR6 = "2001:db8:1::1"
    REMOTE_ADDR6 = "2001:db8:1::2"

    def __init__(self, tmp: pathlib.Path, allow_ping: bool = True):
        self.tmp = tmp
        self.host = Netns()
        try:
            self.remote = Netns(parent=self.host)
            self.guest = Netns(parent=self.host)
            h = self.host
            h.run("ip", "link", "set", "lo", "up", check=True)
            h.run("ip", "link", "add", "veth-h", "type", "veth", "peer", "name", "veth-r", "netns", str(self.remote.pid), check=True)
            h.run("ip", "addr", "add", f"{self.HOST_ADDR}/24", "dev", "veth-h", check=True)
            h.run("ip", "link", "set", "veth-h", "up", check=True)
            h.run("ip", "route", "add", "default", "via", self.REMOTE_ADDR, check=True)
            # nodad: usable at once (no duplicate address detection on a private veth).
            h.run("ip", "-6", "addr", "add", f"{self.HOST_ADDR6}/64", "dev", "veth-h", "nodad", check=True)
            h.run("ip", "-6", "route", "add", "default", "via", self.REMOTE_ADDR6, check=True)
            if allow_ping:  # a new netns starts with "1 0": nobody may
                h.run("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0", check=True)
            r = self.remote
            r.run("ip", "link", "set", "lo", "up", check=True)
            r.run("ip", "addr", "add", f"{self.REMOTE_ADDR}/24", "dev", "veth-r", check=True)
            r.run("ip", "link", "set", "veth-r", "up", check=True)
            r.run("ip", "route", "add", "default", "via", self.HOST_ADDR, check=True)
            r.run("ip", "-6", "addr", "add", f"{self.REMOTE_ADDR6}/64", "dev", "veth-r", "nodad", check=True)
            r.run("ip", "-6", "route", "add", "default", "via", self.HOST_ADDR6, check=True)
        except BaseException:
            self.close()
            raise
        self.resolv_conf = tmp / "resolv.conf"
        self.resolv_conf.write_text("nameserver 127.0.0.1\n")

    def slirpnet_prefix(self) -> list[str]:
        return self.host.enter()

    def close(self) -> None:
        for ns in ("guest", "remote"):
            if hasattr(self, ns):
                getattr(self, ns).close()
        self.host.close()


class Slirpnet:
    """A slirpnet process; ``start()`` waits for its ready byte."""

    def __init__(
        self,
        args: list[str],
        tmp: pathlib.Path,
        pass_fds: tuple[int, ...] = (),
        ready: bool = True,
        prefix: list[str] | None = None,
        env: dict | None = None,
    ):
        self.out_path = tmp / f"slirpnet-{time.monotonic_ns()}.out"
        self.err_path = tmp / f"slirpnet-{time.monotonic_ns()}.err"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.ready_fd = None
        fds = list(pass_fds)
        argv = list(args)
        if ready:
            r, w = os.pipe()
            self.ready_fd = r
            fds.append(w)
            argv = ["-r", str(w), *argv]
        self.proc = subprocess.Popen(
            [*(prefix or []), *SLIRPNET, *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            pass_fds=fds,
            env={**ENV, **(env or {})},
            start_new_session=True,
        )
        if ready:
            os.close(w)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bytes:
        """The bytes read from the ready fd up to EOF (b"1" when all is well)."""
        got = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ready byte; stderr: {self.stderr()}")
            r, _, _ = select.select([self.ready_fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.ready_fd, 16)
            if not chunk:
                os.close(self.ready_fd)
                self.ready_fd = None
                return got
            got += chunk

    def stdout(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        stop(self.proc)
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        self._out.close()
        self._err.close()


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    """Start a helper process (a server, a pipeline) in a session of its own,
    so that :func:`stop` ends it with everything it started."""
    return subprocess.Popen(argv, start_new_session=True, **kwargs)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End ``proc`` by PID (TERM, then KILL) and reap it.

    A process started in a session of its own (``start_new_session=True``,
    as every shell pipeline in these tests is) is ended with its whole
    process group — the group whose id is that PID — so the members of a
    pipeline do not outlive it."""
    group = _leads_group(proc.pid)
    if proc.poll() is None:
        try:
            _signal(proc.pid, sig, group)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal(proc.pid, signal.SIGKILL, group)
            proc.wait(timeout=5)
        except ProcessLookupError:
            proc.wait(timeout=5)
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the pipeline
        except ProcessLookupError:
            pass


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, sig: int, group: bool) -> None:
    if group:
        os.killpg(pid, sig)
    else:
        os.kill(pid, sig)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a /proc entry: treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_ipv6(ns: Netns, dev: str = "tap0", timeout: float = 15) -> str:
    """Wait until ``dev`` has a usable (not tentative) global IPv6 address from
    SLAAC and an IPv6 default route; returns the address."""
    deadline = time.monotonic() + timeout
    while True:
        addrs = ns.run("ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "global", "-tentative").stdout.decode()
        route = ns.run("ip", "-6", "route", "show", "default").stdout.decode()
        if "inet6 " in addrs and "default" in route:
            return addrs.split("inet6 ", 1)[1].split("/", 1)[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SLAAC address on {dev}: {addrs!r} {route!r}")
        time.sleep(0.2)


def read_until_eof(fd: int, timeout: float) -> bytes:
    """What ``fd`` (a ready-fd pipe) carries until EOF, then close it; fails the
    test when EOF does not come within ``timeout`` seconds."""
    import pytest

    got = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not r:
                break
            chunk = os.read(fd, 16)
            if not chunk:
                return got
            got += chunk
        pytest.fail(f"no EOF on the ready fd (got {got!r})")
    finally:
        os.close(fd)
