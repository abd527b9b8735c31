"""The measurements: each one starts a server, runs a bounded client, returns numbers.

A measurement returns a dict of raw results (always JSON-serialisable) with
either the scalar metrics it produced under ``"metrics"`` or an ``"error"``.
Directions: "out" is guest → gateway 10.0.2.2 → H's loopback (client in G,
server in H); "in" is H → port forward → guest (client in H, server in G).

Every measurement also records which guest interface carried the bytes
(``"path"``: the one whose rx+tx counters grew most) and, for helper rows, the
helper's CPU time (utime+stime from /proc/PID/stat) over the client's run.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from dataclasses import dataclass

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


# name -> (direction, kind, parallel streams)
MEASUREMENTS = {
    "tcp-out-1": ("out", "tcp", 1),
    "tcp-out-4": ("out", "tcp", 4),
    "tcp-in-1": ("in", "tcp", 1),
    "tcp-in-4": ("in", "tcp", 4),
    "udp-out": ("out", "udp", 1),
    "rr-out": ("out", "rr", 1),
    "rr-in": ("in", "rr", 1),
    "conn-out": ("out", "conn", 1),
    "conn-in": ("in", "conn", 1),
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
}


def select_measurements(tokens: list[str] | None) -> list[str]:
    """Measurements named by tokens: a full name (tcp-out-1), a kind (tcp, rr, conn, udp),
    a direction (out, in) or a kind-direction pair (tcp-in)."""
    if not tokens:
        return list(MEASUREMENTS)
    chosen = []
    for name, (direction, kind, _) in MEASUREMENTS.items():
        keys = {name, kind, direction, f"{kind}-{direction}"}
        if keys & set(tokens):
            chosen.append(name)
    unknown = [t for t in tokens if not any(
        t in {n, k, d, f"{k}-{d}"} for n, (d, k, _) in MEASUREMENTS.items())]
    if unknown:
        raise ValueError(f"unknown measurement(s): {', '.join(unknown)}")
    return chosen


class Bench:
    """Runs measurements for one started row in one topology."""

    def __init__(self, topo: procs.Topology, running: Running, tool: pathlib.Path, durations: Durations):
        self.topo, self.running, self.tool, self.d = topo, running, tool, durations

    # -- plumbing -----------------------------------------------------------
    def _sides(self, direction: str):
        """(server namespace, server bind address, client namespace, client target)."""
        r = self.running
        if direction == "out":
            return self.topo.host, r.out_server_addr, self.topo.guest, r.out_target
        return self.topo.guest, "0.0.0.0", self.topo.host, r.in_target

    def _client_run(self, direction: str, server_argv: list[str], port: int, client_argv: list[str],
                    timeout_s: float, proto: str = "tcp") -> dict:
        srv_ns, _, cli_ns, _ = self._sides(direction)
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
        direction, kind, streams = MEASUREMENTS[name]
        raw = getattr(self, f"_{kind}")(direction, streams)
        if "error" not in raw:
            expected = (self.running.expected_dev_in if direction == "in" and self.running.expected_dev_in
                        else self.running.expected_dev)
            raw["expected_path"] = expected
        return raw

    def _iperf(self, direction: str, streams: int, udp: bool) -> dict:
        _, bind, _, target = self._sides(direction)
        port = Ports.IPERF_OUT if direction == "out" else Ports.IPERF_IN
        secs = self.d.udp_s if udp else self.d.tcp_s
        server = ["iperf3", "-s", "-1", "-B", bind, "-p", str(port)]
        client = ["iperf3", "-c", target, "-p", str(port), "-t", f"{secs:g}", "-J", "--connect-timeout", "3000"]
        if streams > 1:
            client += ["-P", str(streams)]
        if udp:
            client += ["-u", "-b", UDP_RATE, "-l", str(UDP_DATAGRAM_BYTES), "-w", UDP_SOCKET_BUFFER]
        raw = self._client_run(direction, server, port, client, timeout_s=secs + 20)
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
            m = {f"tcp_{direction}_{streams}": gbps}
            if streams == 1 and "helper_cpu_s" in raw and raw["bytes"]:
                m[f"cpu_{direction}"] = raw["helper_cpu_s"] / (raw["bytes"] / 1e9)
            raw["metrics"] = m
        return raw

    def _tcp(self, direction: str, streams: int) -> dict:
        return self._iperf(direction, streams, udp=False)

    def _udp(self, direction: str, streams: int) -> dict:
        return self._iperf(direction, streams, udp=True)

    def _tool_run(self, direction: str, mode: str, port: int, args: list[str], timeout_s: float) -> dict:
        _, bind, _, target = self._sides(direction)
        server = [str(self.tool), f"{mode}-server", bind, str(port)]
        client = [str(self.tool), f"{mode}-client", target, str(port), *args]
        raw = self._client_run(direction, server, port, client, timeout_s)
        try:
            doc = json.loads(raw["stdout"])
        except ValueError:
            doc = {"error": raw["stderr"].strip()[-200:] or f"tcpbench status {raw['rc']}"}
        raw["result"] = doc
        raw["stdout"] = ""
        if raw["rc"] != 0 or "error" in doc:
            raw["error"] = f"tcpbench {mode}: {doc.get('error', 'status %s' % raw['rc'])}"
        return raw

    def _rr(self, direction: str, streams: int) -> dict:
        port = Ports.RR_OUT if direction == "out" else Ports.RR_IN
        raw = self._tool_run(direction, "rr", port, [f"{self.d.rr_s:g}", str(RR_MAX_SAMPLES)],
                             timeout_s=self.d.rr_s + 20)
        if "error" not in raw:
            doc = raw["result"]
            raw["metrics"] = {f"rr_{direction}_min": doc["min_us"], f"rr_{direction}_median": doc["median_us"],
                              f"rr_{direction}_p99": doc["p99_us"]}
        return raw

    def _conn(self, direction: str, streams: int) -> dict:
        port = Ports.CR_OUT if direction == "out" else Ports.CR_IN
        raw = self._tool_run(direction, "cr", port, [str(CR_BATCHES), f"{self.d.conn_batch_s:g}"],
                             timeout_s=CR_BATCHES * (self.d.conn_batch_s + 5) + 20)
        if "error" not in raw:
            batches = raw["result"]["batches"]
            m = {f"conn_{direction}_{i + 1}": b["rate"] for i, b in enumerate(batches)}
            total = sum(b["connections"] for b in batches)
            m[f"conn_{direction}"] = total / sum(b["seconds"] for b in batches)
            raw["metrics"] = m
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
