"""The rows of the benchmark: what carries the guest's traffic, and how to start it.

Each row is started fresh for every repetition inside its own topology
(``procs.Topology``) and ended by PID afterwards.  A row that cannot start
raises :class:`RowFailed` with a short reason; the report prints
``failed: <reason>`` for it and the run goes on.

Ports (the same numbers in H and G; forwards map host port N to guest port N):
the servers for "out" measurements listen in H, those for "in" in G.  IPv6
measurements use the same ports plus 10.

A route is a direction and a family: "out", "in", "out6", "in6".  With
``ipv6=True`` a row also sets up IPv6 (the helper's --enable-ipv6, forwards
from H's ::1 or fd09::1 to the guest's fd00::/64 address) and waits until the
guest's address is usable; the IPv4 measurements of such a run then also run
with IPv6 enabled (as rootless Podman runs its helpers).  What a row cannot do
is listed in ``Running.unsupported`` with the reason (reported as "n/a").
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from . import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUEST_ADDR = "10.0.2.100"
GATEWAY_ADDR = "10.0.2.2"
GUEST_PREFIX6 = "fd00::/64"
GUEST_ADDR6 = "fd00::100"   # pasta's and the kernel row's; slirp rows get a SLAAC one
GATEWAY_ADDR6 = "fd00::2"   # slirp4netns, slirpnet and pasta map it to H's ::1
READY_TIMEOUT_S = 20.0
API_TIMEOUT_S = 3.0


class Ports:
    IPERF_OUT = 5201  # TCP and UDP, server in H
    IPERF_IN = 5202   # server in G, forwarded
    RR_OUT = 5203
    RR_IN = 5204      # forwarded
    CR_OUT = 5205
    CR_IN = 5206      # forwarded
    FORWARDED = (IPERF_IN, RR_IN, CR_IN)
    IPV6_OFFSET = 10  # IPv6 measurements: the same ports plus 10
    FORWARDED6 = (IPERF_IN + IPV6_OFFSET, RR_IN + IPV6_OFFSET, CR_IN + IPV6_OFFSET)


class RowFailed(Exception):
    """The row cannot be measured (reason in args[0])."""


@dataclass
class Running:
    """A started row: where the clients connect, and the helper to watch."""

    out_server_addr: str       # where "out" servers listen in H
    out_target: str            # what the guest connects to for "out"
    in_target: str             # what H connects to for "in"
    expected_dev: str          # guest interface the traffic should cross
    expected_dev_in: str = ""  # if "in" traffic crosses another one (pasta's splice: lo)
    helper: subprocess.Popen | None = None
    # IPv6 (rows started with ipv6=True): the same three addresses
    out_server_addr6: str = ""
    out_target6: str = ""
    in_target6: str = ""
    errors: dict[str, str] = field(default_factory=dict)  # route -> why it failed (e.g. no port forward)
    unsupported: dict[str, str] = field(default_factory=dict)  # route -> why the row cannot do it
    stderr_path: pathlib.Path | None = None
    keep: list = field(default_factory=list)  # fds to close at stop

    def addresses(self, direction: str, ip: int) -> tuple[str, str]:
        """(server bind address, client target) for a direction and family."""
        if direction == "out":
            return (self.out_server_addr, self.out_target) if ip == 4 else (self.out_server_addr6, self.out_target6)
        return ("0.0.0.0", self.in_target) if ip == 4 else ("::", self.in_target6)

    def helper_exit_reason(self) -> str | None:
        if self.helper is None or self.helper.poll() is None:
            return None
        return f"helper exited with status {self.helper.returncode}{_tail(self.stderr_path)}"

    def stop(self) -> None:
        procs.stop(self.helper)
        for fd in self.keep:
            try:
                os.close(fd)
            except OSError:
                pass
        self.keep.clear()


def _tail(path: pathlib.Path | None, limit: int = 160) -> str:
    """The last meaningful line a helper printed, for failure reasons."""
    if path is None or not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    lines = [ln for ln in lines if "syslog" not in ln]
    return f": {lines[-1][:limit]}" if lines else ""


def _wait_ready_fd(fd: int, proc: subprocess.Popen, stderr_path: pathlib.Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RowFailed(f"exited with status {proc.returncode} before ready{_tail(stderr_path)}")
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            data = os.read(fd, 16)
            if data.startswith(b"1"):
                return
            if not data:
                raise RowFailed(f"closed its ready fd without writing 1{_tail(stderr_path)}")
        if time.monotonic() > deadline:
            raise RowFailed(f"not ready after {READY_TIMEOUT_S:.0f} s{_tail(stderr_path)}")


def api_request(path: str, request: dict) -> dict:
    """One slirp4netns-style API call: JSON in, JSON out, connection closed by the server."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(API_TIMEOUT_S)
        s.connect(path)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return json.loads(data.decode())


API_ERROR_PREFIX = "port forward via API socket: "


def add_forwards(api_path: str, guest_addr6: str | None = None) -> str | None:
    """Forward 127.0.0.1:N of H to the guest's port N (with guest_addr6: [::1]:N to
    [guest_addr6]:N, the IPv6 ports); the reason if it failed."""
    for port in (Ports.FORWARDED6 if guest_addr6 else Ports.FORWARDED):
        args = {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": port, "guest_port": port}
        if guest_addr6:
            args.update(host_addr="::1", guest_addr=guest_addr6)
        req = {"execute": "add_hostfwd", "arguments": args}
        try:
            reply = api_request(api_path, req)
        except OSError as e:
            return f"{API_ERROR_PREFIX}{e.strerror or e}"
        except ValueError as e:
            return f"{API_ERROR_PREFIX}bad reply ({e})"
        if "return" not in reply:
            desc = reply["error"].get("desc") if isinstance(reply.get("error"), dict) else None
            return f"{API_ERROR_PREFIX}{desc or json.dumps(reply)[:120]}"
    return None


@dataclass
class Row:
    name: str
    label: str
    kind: str                 # kernel | slirp4netns | pasta | slirpnet
    mtu: int = 65520
    variant: str = ""         # pasta: tap | splice; slirpnet: native | python
    description: str = ""
    env: dict = field(default_factory=dict)  # slirpnet: extra environment

    def start(self, topo: procs.Topology, workdir: pathlib.Path, python: str) -> Running:
        """Start the row in TOPO; with IPv6 too if the topology has it."""
        return getattr(self, f"_start_{self.kind}")(topo, workdir, python)

    # -- kernel ---------------------------------------------------------------
    def _start_kernel(self, topo, workdir, python) -> Running:
        topo.add_veth(self.mtu)
        running = Running(out_server_addr=GATEWAY_ADDR, out_target=GATEWAY_ADDR, in_target=GUEST_ADDR,
                          expected_dev="veth1")
        if topo.ipv6:
            running.out_server_addr6 = running.out_target6 = GATEWAY_ADDR6
            running.in_target6 = GUEST_ADDR6
        return running

    # -- slirp4netns and slirpnet: same command line, ready fd, API socket ----
    def _start_slirp4netns(self, topo, workdir, python) -> Running:
        return self._start_slirp_like(["slirp4netns"], None, topo, workdir)

    def _start_slirpnet(self, topo, workdir, python) -> Running:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SLIRPNET_DATAPATH": self.variant,
               "PYTHONUNBUFFERED": "1", **self.env}
        if self.variant.startswith("native"):
            # slirpnet falls back to the Python datapath, silently, when the native one cannot be
            # imported: a "native" row would then measure the python one.
            check = procs.run([python, "-c", "from slirp.datapath.native import NativeDatapath"], 30, env=env)
            if check.returncode != 0:
                last = (check.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
                raise RowFailed(f"no native datapath to measure ({last[:100]})")
        return self._start_slirp_like([python, "-m", "slirp"], env, topo, workdir)

    def _start_slirp_like(self, cmd, env, topo, workdir) -> Running:
        api = tempfile.mktemp(prefix=f"{self.name}-", suffix=".sock", dir=workdir)
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()  # the helper exits when we close exit_w (or die)
        errpath = workdir / f"{self.name}.stderr"
        running = Running(out_server_addr="127.0.0.1", out_target=GATEWAY_ADDR, in_target="127.0.0.1",
                          expected_dev="tap0", stderr_path=errpath, keep=[ready_r, exit_w])
        argv = [*cmd, "-c", f"--mtu={self.mtu}", f"--api-socket={api}", "-r", str(ready_w), "-e", str(exit_r),
                *(["--enable-ipv6"] if topo.ipv6 else []), str(topo.guest.pid), "tap0"]
        with open(errpath, "wb") as err:
            running.helper = procs.spawn(topo.host.enter(argv), env=env, pass_fds=(ready_w, exit_r),
                                         stdout=err, stderr=err)
        os.close(ready_w)
        os.close(exit_r)
        try:
            _wait_ready_fd(ready_r, running.helper, errpath)
            if topo.ipv6:  # the guest's kernel makes its address from the router advertisement
                guest6 = topo.guest.wait_ipv6_address("tap0", GUEST_PREFIX6, running.helper, READY_TIMEOUT_S)
        except RuntimeError as e:
            running.stop()
            raise RowFailed(f"{e}{_tail(errpath)}") from None
        except RowFailed:
            running.stop()
            raise
        if error := add_forwards(api):
            running.errors["in"] = error
        if topo.ipv6:
            running.out_server_addr6, running.out_target6, running.in_target6 = "::1", GATEWAY_ADDR6, "::1"
            if error := add_forwards(api, guest6):
                if self.kind == "slirp4netns":  # 1.2.0 forwards IPv4 only
                    running.unsupported["in6"] = f"no IPv6 port forwarding ({error.removeprefix(API_ERROR_PREFIX)})"
                else:
                    running.errors["in6"] = error
        return running

    # -- pasta ---------------------------------------------------------------
    def _start_pasta(self, topo, workdir, python) -> Running:
        splice = self.variant == "splice"
        bind = "127.0.0.1" if splice else topo.HOST_EXT_ADDR
        bind6 = "::1" if splice else topo.HOST_EXT_ADDR6
        ports = ",".join(str(p) for p in Ports.FORWARDED)
        argv = ["pasta", "-f", "-q", "--config-net", "-I", "tap0", "-a", GUEST_ADDR, "-n", "24",
                "-g", GATEWAY_ADDR, "-m", str(self.mtu), "-t", f"{bind}/{ports}",
                "-u", f"{bind}/{Ports.IPERF_IN}"]
        if topo.ipv6:
            ports6 = ",".join(str(p) for p in Ports.FORWARDED6)
            argv += ["-a", GUEST_ADDR6, "-g", GATEWAY_ADDR6, "-t", f"{bind6}/{ports6}"]
        else:
            argv.append("-4")
        if not splice:
            argv += ["-T", "none", "-U", "none"]
        argv.append(str(topo.guest.pid))
        errpath = workdir / f"{self.name}.stderr"
        with open(errpath, "wb") as err:
            helper = procs.spawn(topo.host.enter(argv), stdout=err, stderr=err)
        running = Running(out_server_addr="127.0.0.1", out_target=GATEWAY_ADDR, in_target=bind,
                          expected_dev="tap0", expected_dev_in="lo" if splice else "",
                          helper=helper, stderr_path=errpath)
        if splice:
            running.unsupported.update({"out": "same path as pasta-tap", "out6": "same path as pasta-tap"})
        forwarded = Ports.FORWARDED
        if topo.ipv6:
            running.out_server_addr6, running.out_target6, running.in_target6 = "::1", GATEWAY_ADDR6, bind6
            forwarded += Ports.FORWARDED6
        # No ready fd: wait for the guest addresses and the forwarded ports.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if helper.poll() is not None:
                raise RowFailed(f"exited with status {helper.returncode} before ready{_tail(errpath)}")
            if all(topo.host.listening(p) for p in forwarded) and "tap0" in topo.guest.dev_bytes():
                res = procs.run(topo.guest.enter(["ip", "-o", "-4", "addr", "show", "dev", "tap0"]), 5)
                if GUEST_ADDR in res.stdout.decode():
                    break
            if time.monotonic() > deadline:
                running.stop()
                raise RowFailed(f"not ready after {READY_TIMEOUT_S:.0f} s{_tail(errpath)}")
            time.sleep(0.02)
        if topo.ipv6:
            try:
                topo.guest.wait_ipv6_address("tap0", f"{GUEST_ADDR6}/128", helper,
                                             max(1.0, deadline - time.monotonic()))
            except RuntimeError as e:
                running.stop()
                raise RowFailed(f"{e}{_tail(errpath)}") from None
        return running


ROWS = [
    Row("kernel", "kernel (veth)", "kernel",
        description="veth pair between the two namespaces: the kernel's own limit, no helper"),
    Row("slirpnet-native", "slirpnet native", "slirpnet", variant="native",
        description="slirpnet with the C datapath (SLIRPNET_DATAPATH=native)"),
    Row("slirpnet-python", "slirpnet python", "slirpnet", variant="python",
        description="slirpnet with the pure-Python datapath (SLIRPNET_DATAPATH=python)"),
    Row("slirpnet-native-1500", "slirpnet native 1500", "slirpnet", mtu=1500, variant="native",
        description="slirpnet native at MTU 1500 (its speed should not depend on the MTU)"),
    Row("slirp4netns-65520", "slirp4netns 65520", "slirp4netns",
        description="slirp4netns 1.2.0, port forwards with add_hostfwd; the reference row"),
    Row("slirp4netns-1500", "slirp4netns 1500", "slirp4netns", mtu=1500,
        description="the same at MTU 1500"),
    Row("pasta-tap", "pasta TAP", "pasta", variant="tap",
        description="pasta with -T none -U none; inbound from H's non-loopback address 10.0.9.1 (IPv6: fd09::1), "
                    "so it takes the TAP path (pasta splices every loopback-sourced connection)"),
    Row("pasta-splice", "pasta splice", "pasta", variant="splice",
        description="pasta's defaults, inbound from 127.0.0.1: spliced to the guest's loopback "
                    "(inbound only; outbound is the same TAP path as pasta-tap)"),
]
EXTRA_ROWS: list[Row] = [  # rows run only when named with --only
    Row("slirpnet-native-sync", "slirpnet native sync", "slirpnet", variant="native-sync",
        description="the C datapath without its thread, called from the event loop (SLIRPNET_DATAPATH=native-sync)"),
]
ALL_ROWS = {r.name: r for r in ROWS + EXTRA_ROWS}
REFERENCE_ROW = "slirp4netns-65520"
