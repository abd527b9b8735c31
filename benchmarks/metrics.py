"""The measurements: each one starts a server, runs a bounded client, returns numbers.

A measurement returns a dict of raw results (always JSON-serialisable) with
either the scalar metrics it produced under ``"metrics"`` or an ``"error"``.
Directions: "out" is guest → gateway 10.0.2.2 → H's loopback (client in G,
server in H); "in" is H → port forward → guest (client in H, server in G).
IPv6 measurements (kinds tcp6, rr6; metrics tcp6_out_1, rr6_in_median, ...)
do the same over IPv6: guest → fd00::2 → H's ::1, and H's ::1 (pasta TAP:
fd09::1) → forward → the guest's fd00::/64 address.

Every measurement also records which guest interface carried the bytes
(``"path"``: the one whose rx+tx counters grew most) and, for helper rows, the
helper's CPU time (utime+stime from /proc/PID/stat) over the client's run.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from dataclasses import dataclass
from typing import NamedTuple

from . import procs
from .rows import Ports, Running

UDP_RATE = "1G"
UDP_DATAGRAM_BYTES = 1400  # fits a 1500-byte MTU: every row sees the same datagrams
# iperf3 -w for UDP: socket buffers of the iperf3 client and server.  With the default
# (212 KiB here) the iperf3 server's own socket overflows in bursts and even the kernel
# row loses ~20-40% at 1 Gbit/s; with 4 MiB (capped by net.core.rmem_max) it loses none,
# so the loss left is the carrier's.
UDP_SOCKET_BUFFER = "4M"
RR_MAX_SAMPLES = 200_000
CR_BATCHES = 3


@dataclass
class Durations:
    tcp_s: float = 3.0
    udp_s: float = 3.0
    rr_s: float = 2.0
    conn_batch_s: float = 1.0
    # IPv6 measurements are shorter: with them a full run still takes under 15 minutes
    tcp6_s: float = 2.0
    rr6_s: float = 1.0


class Measurement(NamedTuple):
    direction: str  # out | in
    kind: str       # tcp | udp | rr | conn
    streams: int    # parallel streams (TCP)
    ip: int = 4     # 4 | 6

    @property
    def route(self) -> str:
        """Direction and family: out, in, out6, in6 (what a row may not support)."""
        return self.direction + ("6" if self.ip == 6 else "")

    @property
    def family_kind(self) -> str:
        """The kind as named in measurement and metric names: tcp, tcp6, rr6, ..."""
        return self.kind + ("6" if self.ip == 6 else "")

    def tokens(self, name: str) -> set[str]:
        """What selects it on --metrics: its name, kind, direction, kind-direction, family."""
        k = self.family_kind
        return {name, k, self.direction, f"{k}-{self.direction}", f"ipv{self.ip}"}


MEASUREMENTS = {
    "tcp-out-1": Measurement("out", "tcp", 1),
    "tcp-out-4": Measurement("out", "tcp", 4),
    "tcp-in-1": Measurement("in", "tcp", 1),
    "tcp-in-4": Measurement("in", "tcp", 4),
    "udp-out": Measurement("out", "udp", 1),
    "rr-out": Measurement("out", "rr", 1),
    "rr-in": Measurement("in", "rr", 1),
    "conn-out": Measurement("out", "conn", 1),
    "conn-in": Measurement("in", "conn", 1),
    "tcp6-out-1": Measurement("out", "tcp", 1, ip=6),
    "tcp6-in-1": Measurement("in", "tcp", 1, ip=6),
    "rr6-out": Measurement("out", "rr", 1, ip=6),
    "rr6-in": Measurement("in", "rr", 1, ip=6),
}
# Scalar metrics each measurement yields (the report's columns).
PRODUCES = {
    "tcp-out-1": ["tcp_out_1", "cpu_out"],
    "tcp-out-4": ["tcp_out_4"],
    "tcp-in-1": ["tcp_in_1", "cpu_in"],
    "tcp-in-4": ["tcp_in_4"],
    "udp-out": ["udp_out", "udp_loss"],
    "rr-out": ["rr_out_min", "rr_out_median", "rr_out_p99"],
    "rr-in": ["rr_in_min", "rr_in_median", "rr_in_p99"],
    "conn-out": ["conn_out_1", "conn_out_2", "conn_out_3", "conn_out"],
    "conn-in": ["conn_in_1", "conn_in_2", "conn_in_3", "conn_in"],
    "tcp6-out-1": ["tcp6_out_1"],
    "tcp6-in-1": ["tcp6_in_1"],
    "rr6-out": ["rr6_out_min", "rr6_out_median", "rr6_out_p99"],
    "rr6-in": ["rr6_in_min", "rr6_in_median", "rr6_in_p99"],
}


def select_measurements(tokens: list[str] | None) -> list[str]:
    """Measurements named by tokens: a full name (tcp-out-1), a kind (tcp, rr, conn, udp; tcp6,
    rr6 for IPv6), a direction (out, in: both families), a kind-direction pair (tcp-in,
    rr6-out) or a family (ipv4, ipv6)."""
    if not tokens:
        return list(MEASUREMENTS)
    wanted = set(tokens)
    chosen = [name for name, m in MEASUREMENTS.items() if m.tokens(name) & wanted]
    known = set().union(*(m.tokens(n) for n, m in MEASUREMENTS.items()))
    unknown = [t for t in tokens if t not in known]
    if unknown:
        raise ValueError(f"unknown measurement(s): {', '.join(unknown)}")
    return chosen


def needs_ipv6(names: list[str]) -> bool:
    return any(MEASUREMENTS[n].ip == 6 for n in names)


class Bench:
    """Runs measurements for one started row in one topology."""

    def __init__(self, topo: procs.Topology, running: Running, tool: pathlib.Path, durations: Durations):
        self.topo, self.running, self.tool, self.d = topo, running, tool, durations

    # -- plumbing -----------------------------------------------------------
    def _namespaces(self, direction: str):
        """(server namespace, client namespace): "out" servers listen in H, "in" ones in G."""
        return (self.topo.host, self.topo.guest) if direction == "out" else (self.topo.guest, self.topo.host)

    def _client_run(self, direction: str, server_argv: list[str], port: int, client_argv: list[str],
                    timeout_s: float, proto: str = "tcp") -> dict:
        srv_ns, cli_ns = self._namespaces(direction)
        server = procs.spawn(srv_ns.enter(server_argv))
        try:
            srv_ns.wait_listening(port, server, proto="tcp")
            dev0 = self.topo.guest.dev_bytes()
            helper = self.running.helper
            cpu0 = procs.cpu_ticks(helper.pid) if helper else None
            res = procs.run(cli_ns.enter(client_argv), timeout_s)
            cpu1 = procs.cpu_ticks(helper.pid) if helper else None
            dev1 = self.topo.guest.dev_bytes()
        finally:
            procs.stop(server, grace_s=1.0)
        deltas = {k: dev1.get(k, 0) - dev0.get(k, 0) for k in dev1}
        raw = {
            "rc": res.returncode,
            "stdout": res.stdout.decode(errors="replace"),
            "stderr": res.stderr.decode(errors="replace")[-400:],
            "path": max(deltas, key=deltas.get) if any(deltas.values()) else None,
            "dev_bytes": deltas,
        }
        if cpu0 is not None and cpu1 is not None:
            raw["helper_cpu_s"] = (cpu1 - cpu0) / procs.CLK_TCK
        return raw

    # -- measurements -------------------------------------------------------
    def measure(self, name: str) -> dict:
        m = MEASUREMENTS[name]
        raw = getattr(self, f"_{m.kind}")(m)
        if "error" not in raw:
            expected = (self.running.expected_dev_in if m.direction == "in" and self.running.expected_dev_in
                        else self.running.expected_dev)
            raw["expected_path"] = expected
        return raw

    @staticmethod
    def _port(m: Measurement, out_port: int, in_port: int) -> int:
        return (out_port if m.direction == "out" else in_port) + (Ports.IPV6_OFFSET if m.ip == 6 else 0)

    def _iperf(self, m: Measurement, udp: bool) -> dict:
        direction, streams = m.direction, m.streams
        bind, target = self.running.addresses(direction, m.ip)
        port = self._port(m, Ports.IPERF_OUT, Ports.IPERF_IN)
        secs = self.d.udp_s if udp else self.d.tcp6_s if m.ip == 6 else self.d.tcp_s
        server = ["iperf3", "-s", "-1", "-B", bind, "-p", str(port)]
        client = ["iperf3", "-c", target, "-p", str(port), "-t", f"{secs:g}", "-J", "--connect-timeout", "3000"]
        if streams > 1:
            client += ["-P", str(streams)]
        if udp:
            client += ["-u", "-b", UDP_RATE, "-l", str(UDP_DATAGRAM_BYTES), "-w", UDP_SOCKET_BUFFER]
        raw = self._client_run(direction, server, port, client, timeout_s=secs + 20)
        raw["target"] = target
        try:
            doc = json.loads(raw["stdout"])
        except ValueError:
            doc = {}
        raw["stdout"] = ""  # the parsed figures are kept below; the full JSON is large
        if raw["rc"] != 0 or "error" in doc or "end" not in doc:
            msg = doc.get("error") or raw["stderr"].strip().splitlines()[-1:] or [f"iperf3 status {raw['rc']}"]
            raw["error"] = "iperf3: " + (msg if isinstance(msg, str) else msg[0])
            return raw
        end = doc["end"]
        recv = end.get("sum_received") or end["sum"]
        raw["seconds"] = recv["seconds"]
        raw["bytes"] = recv["bytes"]
        gbps = recv["bits_per_second"] / 1e9
        if udp:
            raw["sent_gbps"] = end["sum_sent"]["bits_per_second"] / 1e9 if "sum_sent" in end else None
            raw["metrics"] = {"udp_out": gbps, "udp_loss": recv["lost_percent"]}
        else:
            raw["retransmits"] = end.get("sum_sent", {}).get("retransmits")
            out = {f"{m.family_kind}_{direction}_{streams}": gbps}
            if m.ip == 4 and streams == 1 and "helper_cpu_s" in raw and raw["bytes"]:
                out[f"cpu_{direction}"] = raw["helper_cpu_s"] / (raw["bytes"] / 1e9)
            raw["metrics"] = out
        return raw

    def _tcp(self, m: Measurement) -> dict:
        return self._iperf(m, udp=False)

    def _udp(self, m: Measurement) -> dict:
        return self._iperf(m, udp=True)

    def _tool_run(self, m: Measurement, mode: str, port: int, args: list[str], timeout_s: float) -> dict:
        bind, target = self.running.addresses(m.direction, m.ip)
        server = [str(self.tool), f"{mode}-server", bind, str(port)]
        client = [str(self.tool), f"{mode}-client", target, str(port), *args]
        raw = self._client_run(m.direction, server, port, client, timeout_s)
        raw["target"] = target
        try:
            doc = json.loads(raw["stdout"])
        except ValueError:
            doc = {"error": raw["stderr"].strip()[-200:] or f"tcpbench status {raw['rc']}"}
        raw["result"] = doc
        raw["stdout"] = ""
        if raw["rc"] != 0 or "error" in doc:
            raw["error"] = f"tcpbench {mode}: {doc.get('error', 'status %s' % raw['rc'])}"
        return raw

    def _rr(self, m: Measurement) -> dict:
        port = self._port(m, Ports.RR_OUT, Ports.RR_IN)
        secs = self.d.rr6_s if m.ip == 6 else self.d.rr_s
        raw = self._tool_run(m, "rr", port, [f"{secs:g}", str(RR_MAX_SAMPLES)], timeout_s=secs + 20)
        if "error" not in raw:
            doc = raw["result"]
            prefix = f"{m.family_kind}_{m.direction}"
            raw["metrics"] = {f"{prefix}_min": doc["min_us"], f"{prefix}_median": doc["median_us"],
                              f"{prefix}_p99": doc["p99_us"]}
        return raw

    def _conn(self, m: Measurement) -> dict:
        direction = m.direction
        port = self._port(m, Ports.CR_OUT, Ports.CR_IN)
        raw = self._tool_run(m, "cr", port, [str(CR_BATCHES), f"{self.d.conn_batch_s:g}"],
                             timeout_s=CR_BATCHES * (self.d.conn_batch_s + 5) + 20)
        if "error" not in raw:
            batches = raw["result"]["batches"]
            out = {f"conn_{direction}_{i + 1}": b["rate"] for i, b in enumerate(batches)}
            total = sum(b["connections"] for b in batches)
            out[f"conn_{direction}"] = total / sum(b["seconds"] for b in batches)
            raw["metrics"] = out
            failed = sum(b["errors"] for b in batches)
            if failed:
                raw["warning"] = (f"{failed} of {total + failed} connections failed or stalled "
                                  f"(last: {raw['result'].get('last_error') or '?'}; a stall costs 3 s)")
        return raw


def build_tool(src: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    exe = out_dir / "tcpbench"
    res = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"gcc failed: {res.stderr.strip()}")
    return exe
