"""Deterministic simulation: two of our TCP layers back to back.

Layer P terminates a connection passively (its "guest" is layer A); layer A
opened it actively (a port forward toward its "guest", layer P).  Between
them a simulated link loses, delays, reorders, duplicates and optionally
cuts GSO super-segments into MSS pieces (like the kernel would).  Behind
each layer a simulated host socket with a bounded send buffer that drains
at a fixed rate, and a byte stream to read from.  A manual clock jumps to
the next event or layer deadline.  Everything is driven by one seeded RNG.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from netstack.actions import CloseTcp, OpenTcp, ReadTcp, SendTcp, ShutdownTcp, WatchTcpWritable
from netstack.counters import Counters
from netstack.events import TcpConnected, TcpHostEof, TcpReceived, TcpSent, TcpWritable
from netstack.tcp import TcpConfig, TcpLayer
from netstack.wire.tcp import FIN, PSH, TcpHeader, TcpView

from .helpers import segment_bytes

ADDR_P = bytes([10, 0, 2, 100])  # the passive side's "guest" address is A's remote...
ADDR_A = bytes([10, 0, 2, 2])


@dataclass
class SimHost:
    """One host socket as the edge would drive it."""

    out: bytes  # what the host peer sends (read via ReadTcp credit)
    sndbuf: int
    drain_per_ms: int
    rng: random.Random
    got: bytearray = field(default_factory=bytearray)
    queued: int = 0
    pos: int = 0
    credit: int = 0
    eof_sent: bool = False
    shutdown: bool = False
    shutdown_at: float | None = None
    closed: bool = False
    reset: bool | None = None
    want_writable: bool = False


class Sim:
    def __init__(
        self,
        seed: int,
        loss: float,
        nbytes_pa: int = 200_000,
        nbytes_ap: int = 200_000,
        reorder: float = 0.05,
        duplicate: float = 0.02,
        split_gso: float = 0.3,
        sndbuf: int = 64 * 1024,
        drain_per_ms: int = 48 * 1024,
        delay_s: float = 0.0005,
        config: TcpConfig | None = None,
        ipv6: bool = False,
    ):
        self.rng = rng = random.Random(seed)
        self.loss, self.reorder, self.duplicate, self.split_gso = loss, reorder, duplicate, split_gso
        self.delay_s = delay_s
        cfg = config or TcpConfig()
        self.counters_p, self.counters_a = Counters(), Counters()
        self.p = TcpLayer(self.counters_p, config=cfg, rng=random.Random(rng.getrandbits(32)))
        self.a = TcpLayer(self.counters_a, config=cfg, rng=random.Random(rng.getrandbits(32)))
        if ipv6:
            self.addr_p = bytes.fromhex("fd000000000000000000000000000064")
            self.addr_a = bytes.fromhex("fd000000000000000000000000000002")
        else:
            self.addr_p, self.addr_a = ADDR_P, ADDR_A
        self.now = 0.0
        self._events: list = []
        self._seq = itertools.count()
        data_pa = rng.randbytes(nbytes_pa)  # P's host peer → A's host peer
        data_ap = rng.randbytes(nbytes_ap)
        self.host_p: dict[int, SimHost] = {}
        self.host_a: dict[int, SimHost] = {}
        self._p_out = data_pa
        self._p_sndbuf, self._drain = sndbuf, drain_per_ms
        self.expected_at_a = data_pa
        self.expected_at_p = data_ap
        self.delivered = 0
        self.dropped = 0
        # A opens toward P (port forward on A's side)
        flow = self.a.open_to_guest(self.now, 0, self.addr_p, 80, self.addr_a, 40000, sndbuf)
        self.flow_a = flow
        self.host_a[flow] = SimHost(data_ap, sndbuf, drain_per_ms, rng)
        self.flow_p = None
        self._drain_scheduled = False
        self._pump()

    # -- scheduling
    def _schedule(self, delay: float, kind: str, payload) -> None:
        heapq.heappush(self._events, (self.now + delay, next(self._seq), kind, payload))

    def _pump(self) -> None:
        """Move everything both layers produced onto the link / host sockets."""
        for layer, hosts, to in ((self.p, self.host_p, "to_a"), (self.a, self.host_a, "to_p")):
            while True:
                segs = layer.drain_segments()
                acts = layer.drain_actions()
                assert layer.drain_unreachables() == []
                if not segs and not acts:
                    break
                for s in segs:
                    self._transmit(to, s)
                for act in acts:
                    self._act(layer, hosts, act)

    def _transmit(self, to: str, s) -> None:
        rng = self.rng
        pieces = [(s.header, s.payload)]
        if s.gso_size and rng.random() < self.split_gso:
            pieces = []
            h, data, g = s.header, s.payload, s.gso_size
            for off in range(0, len(data), g):
                last = off + g >= len(data)
                flags = h.flags if last else h.flags & ~(FIN | PSH)
                pieces.append((_replace(h, seq=(h.seq + off) & 0xFFFFFFFF, flags=flags), data[off : off + g]))
        for hdr, payload in pieces:
            if rng.random() < self.loss:
                self.dropped += 1
                continue
            copies = 2 if rng.random() < self.duplicate else 1
            for _ in range(copies):
                delay = self.delay_s
                if rng.random() < self.reorder:
                    delay += rng.random() * 4 * self.delay_s
                self._schedule(delay, to, segment_bytes(hdr, payload))

    def _act(self, layer, hosts, act) -> None:
        if isinstance(act, OpenTcp):
            assert layer is self.p
            self.flow_p = act.flow
            hosts[act.flow] = SimHost(self._p_out, self._p_sndbuf, self._drain, self.rng)
            self._schedule(0.0002, "event_p", TcpConnected(act.flow, self._p_sndbuf))
            return
        host = hosts[act.flow]
        ev = "event_p" if layer is self.p else "event_a"
        if isinstance(act, SendTcp):
            assert not host.shutdown and not host.closed
            free = host.sndbuf - host.queued
            n = min(len(act.data), free)
            host.got += act.data[:n]
            host.queued += n
            if n < len(act.data):
                host.want_writable = True
            self._schedule(0.0, ev, TcpSent(act.flow, n, host.sndbuf - host.queued))
            self._want_drain()
        elif isinstance(act, ReadTcp):
            host.credit = act.credit
            self._schedule(0.0001, "read_p" if layer is self.p else "read_a", act.flow)
        elif isinstance(act, WatchTcpWritable):
            host.want_writable = True
            self._want_drain()
        elif isinstance(act, ShutdownTcp):
            assert not host.shutdown
            host.shutdown = True
            host.shutdown_at = self.now
        elif isinstance(act, CloseTcp):
            assert not host.closed, "CloseTcp twice"
            host.closed = True
            host.reset = act.reset
        else:  # pragma: no cover
            raise AssertionError(act)

    def _read(self, layer, hosts, flow) -> None:
        host = hosts[flow]
        if host.closed or host.eof_sent:
            return
        ev_list = []
        while host.credit > 0 and host.pos < len(host.out):
            n = min(host.credit, len(host.out) - host.pos, self.rng.choice((1000, 4096, 16384, 65536)))
            ev_list.append(TcpReceived(flow, host.out[host.pos : host.pos + n]))
            host.pos += n
            host.credit -= n
        if host.pos == len(host.out):
            host.eof_sent = True
            ev_list.append(TcpHostEof(flow))
        for ev in ev_list:
            layer.event_from_host(self.now, ev)

    def _want_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._schedule(0.001, "drain", None)

    def _drain_hosts(self) -> None:
        self._drain_scheduled = False
        busy = False
        for layer, hosts in ((self.p, self.host_p), (self.a, self.host_a)):
            for flow, host in hosts.items():
                if host.closed:
                    continue
                host.queued = max(0, host.queued - host.drain_per_ms)
                if host.want_writable and host.queued <= host.sndbuf // 2:
                    host.want_writable = False
                    layer.event_from_host(self.now, TcpWritable(flow, host.sndbuf - host.queued))
                busy = busy or host.queued > 0 or host.want_writable
        if busy:
            self._want_drain()

    # -- main loop
    def done(self) -> bool:
        hosts = list(self.host_p.values()) + list(self.host_a.values())
        return len(hosts) == 2 and all(h.closed for h in hosts) and len(self.p.table) == 0 and len(self.a.table) == 0

    def run(self, limit_s: float = 3600.0, max_steps: int = 2_000_000) -> None:
        for _ in range(max_steps):
            if self.done():
                return
            nxt = [d for d in (self.p.next_deadline(), self.a.next_deadline()) if d is not None]
            if self._events:
                nxt.append(self._events[0][0])
            if not nxt:
                raise AssertionError("simulation stalled: no event, no deadline")
            self.now = max(self.now, min(nxt))
            assert self.now <= limit_s, "simulation too long"
            while self._events and self._events[0][0] <= self.now:
                _, _, kind, payload = heapq.heappop(self._events)
                self._handle(kind, payload)
                self._pump()
            self.p.poll(self.now)
            self.a.poll(self.now)
            self._pump()
        raise AssertionError("too many steps")

    def _handle(self, kind, payload) -> None:
        if kind == "to_p":
            self.delivered += 1
            self.p.segment_from_guest(self.now, 0, self.addr_a, self.addr_p, TcpView.check(memoryview(payload)))
        elif kind == "to_a":
            self.delivered += 1
            self.a.segment_from_guest(self.now, 0, self.addr_p, self.addr_a, TcpView.check(memoryview(payload)))
        elif kind == "event_p":
            self.p.event_from_host(self.now, payload)
        elif kind == "event_a":
            self.a.event_from_host(self.now, payload)
        elif kind == "read_p":
            self._read(self.p, self.host_p, payload)
        elif kind == "read_a":
            self._read(self.a, self.host_a, payload)
        elif kind == "drain":
            self._drain_hosts()


def _replace(h: TcpHeader, **kw) -> TcpHeader:
    from dataclasses import replace

    return replace(h, **kw)
