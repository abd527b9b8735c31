"""Frames-in/frames-out helpers for the TCP layer, with a manual clock.

A :class:`Harness` is one TcpLayer plus a clock.  A :class:`Conn` is the
guest's view of one connection: it sends one segment with the guest's
current sequence numbers and asserts exactly what came back (in the spirit
of smoltcp's socket tests).
"""

from __future__ import annotations

import random

from netstack.actions import CloseTcp, OpenTcp, ReadTcp, SendTcp, ShutdownTcp
from netstack.counters import Counters
from netstack.events import TcpConnected, TcpHostEof, TcpReceived, TcpSent
from netstack.tcp import State, TcpConfig, TcpLayer
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpHeader, TcpView

GUEST = bytes([10, 0, 2, 100])
REMOTE = bytes([192, 0, 2, 80])
GUEST6 = bytes.fromhex("fd000000000000000000000000000064")
REMOTE6 = bytes.fromhex("20010db8000000000000000000000050")
GPORT = 40000
RPORT = 80
GUEST_ISS = 1_000_000
MASK = 0xFFFFFFFF



def segment_bytes(hdr: TcpHeader, payload: bytes = b"") -> bytes:
    buf = bytearray(hdr.buffer_len + len(payload))
    hdr.emit(buf)
    buf[hdr.buffer_len :] = payload
    return bytes(buf)


def view_of(hdr: TcpHeader, payload: bytes = b"") -> TcpView:
    return TcpView.check(memoryview(segment_bytes(hdr, payload)))


class Harness:
    def __init__(self, seed=1, policy=None, table=None, **cfg):
        self.counters = Counters()
        self.config = TcpConfig(**cfg)
        self.layer = TcpLayer(self.counters, config=self.config, policy=policy, table=table, rng=random.Random(seed))
        self.now = 0.0

    def deliver(self, hdr, payload=b"", src=GUEST, dst=REMOTE, link=0, datagram=None):
        return self.layer.segment_from_guest(self.now, link, src, dst, view_of(hdr, payload), datagram)

    def event(self, ev):
        self.layer.event_from_host(self.now, ev)

    def advance(self, dt):
        self.now += dt
        self.layer.poll(self.now)

    def run_until(self, t):
        """Fire every deadline up to t, in order."""
        while True:
            d = self.layer.next_deadline()
            if d is None or d > t:
                break
            self.now = max(self.now, d)
            self.layer.poll(self.now)
        self.now = max(self.now, t)

    def segments(self):
        return self.layer.drain_segments()

    def actions(self):
        return self.layer.drain_actions()

    def unreachables(self):
        return self.layer.drain_unreachables()


class Conn:
    """The guest side of one connection driven by hand."""

    def __init__(self, harness: Harness, gport=GPORT, rport=RPORT, guest=GUEST, remote=REMOTE):
        self.h = harness
        self.gport, self.rport = gport, rport
        self.guest, self.remote = guest, remote
        self.seq = GUEST_ISS  # guest's next sequence number
        self.ack = 0  # guest's rcv_nxt (our next sequence number)
        self.window = 65535
        self.flow = None
        self.ts = None  # (TSval, TSecr) to send, if timestamps are used

    # -- guest → layer
    def send(self, flags=ACK, payload=b"", seq=None, ack=None, window=None, advance=True, **opts):
        if self.ts is not None and "timestamp" not in opts:
            opts["timestamp"] = self.ts
        hdr = TcpHeader(
            self.gport,
            self.rport,
            self.seq if seq is None else seq,
            (self.ack if ack is None else ack) if flags & ACK else 0,
            flags,
            self.window if window is None else window,
            **opts,
        )
        disp = self.h.deliver(hdr, payload, src=self.guest, dst=self.remote)
        if advance and seq is None:
            self.seq = (self.seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & MASK
        return disp

    # -- layer → guest
    def recv(self):
        return self.h.segments()

    def expect(self, flags, payload=b"", seq=None, ack=None, window=None, gso=None):
        segs = self.h.segments()
        assert len(segs) == 1, [(hex(x.header.flags), x.header.seq, len(x.payload)) for x in segs]
        s = segs[0]
        assert (s.src_addr, s.dst_addr) == (self.remote, self.guest)
        assert (s.header.src_port, s.header.dst_port) == (self.rport, self.gport)
        assert s.header.flags == flags, (hex(s.header.flags), hex(flags), s.header, len(s.payload))
        assert s.payload == payload, (len(s.payload), len(payload))
        if seq is not None:
            assert s.header.seq == seq, (s.header.seq, seq)
        if ack is not None:
            assert s.header.ack == ack, (s.header.ack, ack)
        if window is not None:
            assert s.header.window == window, (s.header.window, window)
        if gso is not None:
            assert s.gso_size == gso, (s.gso_size, gso)
        return s

    def expect_none(self):
        segs = self.h.segments()
        assert segs == [], [(x.header, len(x.payload)) for x in segs]

    def take_data(self, s):
        """Account a data segment from the layer as received by the guest."""
        self.ack = (s.header.seq + len(s.payload) + (1 if s.header.flags & (SYN | FIN) else 0)) & MASK

    @property
    def ep(self):
        return self.h.layer.endpoint(self.flow)


# ----------------------------------------------------------------- fixtures


def open_connecting(h: Harness, **syn_opts) -> Conn:
    """Guest SYN → CONNECTING (OpenTcp issued)."""
    c = Conn(h)
    opts = {"mss": 1460, "wscale": 7}
    opts.update(syn_opts)
    c.send(SYN, **opts)
    acts = h.actions()
    assert len(acts) == 1 and isinstance(acts[0], OpenTcp), acts
    c.flow = acts[0].flow
    c.expect_none()
    assert c.ep.state is State.CONNECTING
    return c


def open_syn_received(h: Harness, send_space=1 << 20, **syn_opts) -> Conn:
    c = open_connecting(h, **syn_opts)
    h.event(TcpConnected(c.flow, send_space))
    s = c.expect(SYN | ACK, ack=GUEST_ISS + 1)
    c.synack = s
    c.ack = (s.header.seq + 1) & MASK
    if s.header.timestamp is not None:
        c.ts = (5000, s.header.timestamp[0])
    assert c.ep.state is State.SYN_RECEIVED
    return c


def open_established(h: Harness, send_space=1 << 20, **syn_opts) -> Conn:
    c = open_syn_received(h, send_space, **syn_opts)
    c.send(ACK)
    c.expect_none()
    acts = h.actions()
    assert len(acts) == 1 and isinstance(acts[0], ReadTcp), acts
    c.credit = acts[0].credit
    assert c.ep.state is State.ESTABLISHED
    return c


def open_close_wait(h: Harness) -> Conn:
    """Guest sent FIN, it was taken: CLOSE_WAIT."""
    c = open_established(h)
    c.send(FIN | ACK)
    assert h.actions() == [ShutdownTcp(c.flow)]
    c.expect(ACK, ack=c.seq)
    assert c.ep.state is State.CLOSE_WAIT
    return c


def open_fin_wait_1(h: Harness) -> Conn:
    """Host EOF: our FIN is out, unacknowledged."""
    c = open_established(h)
    h.event(TcpHostEof(c.flow))
    s = c.expect(FIN | ACK, seq=c.ack)
    c.fin_seq = s.header.seq
    assert c.ep.state is State.FIN_WAIT_1
    return c


def open_fin_wait_2(h: Harness) -> Conn:
    c = open_fin_wait_1(h)
    c.ack = (c.fin_seq + 1) & MASK
    c.send(ACK)
    c.expect_none()
    assert c.ep.state is State.FIN_WAIT_2
    return c


def open_closing(h: Harness) -> Conn:
    """Both FINs sent at once, ours not yet acknowledged."""
    c = open_fin_wait_1(h)
    c.send(FIN | ACK, ack=c.fin_seq)  # guest's FIN does not ack ours
    assert h.actions() == [ShutdownTcp(c.flow)]
    c.expect(ACK, seq=(c.fin_seq + 1) & MASK, ack=c.seq)
    assert c.ep.state is State.CLOSING
    return c


def open_last_ack(h: Harness) -> Conn:
    c = open_close_wait(h)
    h.event(TcpHostEof(c.flow))
    s = c.expect(FIN | ACK, seq=c.ack)
    c.fin_seq = s.header.seq
    assert c.ep.state is State.LAST_ACK
    return c


def open_time_wait(h: Harness) -> Conn:
    c = open_fin_wait_2(h)
    c.send(FIN | ACK)
    acts = h.actions()
    assert acts == [ShutdownTcp(c.flow), CloseTcp(c.flow, False)], acts
    c.expect(ACK, ack=c.seq)
    assert c.ep.state is State.TIME_WAIT
    return c


def open_syn_sent(h: Harness, send_space=1 << 20, guest_port=8080, src_port=55555) -> Conn:
    """Port forward: SYN toward the guest."""
    c = Conn(h, gport=guest_port, rport=src_port)
    c.flow = h.layer.open_to_guest(h.now, 0, GUEST, guest_port, REMOTE, src_port, send_space)
    assert c.flow is not None
    s = c.expect(SYN)
    c.syn = s
    c.ack = (s.header.seq + 1) & MASK
    assert c.ep.state is State.SYN_SENT
    return c


def host_write_all(h: Harness, c: Conn, space=1 << 20):
    """Answer every SendTcp with a complete write; returns the bytes written."""
    out = b""
    for a in h.actions():
        if isinstance(a, SendTcp):
            out += a.data
            h.event(TcpSent(c.flow, len(a.data), space))
    return out


def host_read(h: Harness, c: Conn, data: bytes):
    h.event(TcpReceived(c.flow, data))
