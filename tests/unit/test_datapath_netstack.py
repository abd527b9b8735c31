"""End to end with netstack: a flow opened by TcpLayer (passive open), parked,
installed in the datapath, data moved both ways there, ejected on the guest's
FIN, resumed in netstack and closed cleanly — for each implementation.

The edge is played by :class:`MiniEdge` (real loopback sockets, actions
carried out by hand); the guest by the test, which checks every byte it gets
from either owner of the flow: the byte streams must continue exactly across
both hand-offs.
"""

from __future__ import annotations

import select
import socket

import pytest

from netstack.actions import CloseTcp, ReadTcp, SendTcp, ShutdownTcp, WatchTcpWritable
from netstack.events import TcpHostEof, TcpReceived, TcpSent, TcpWritable
from netstack.tcp import EndpointExport, State
from netstack.wire.tcp import ACK, FIN, PSH, TcpView
from slirp.datapath import Closed, Ejected, Frame, TcpFlow

from .dp_helpers import GUEST, GUEST_MAC, KINDS, M, OUR_MAC, GuestTcp, Side, TcpConn, parse_out
from .tcp.helpers import REMOTE, Harness, open_established

CHUNK = 60000


class MiniEdge:
    """Carries out netstack's TCP actions on one real connection."""

    def __init__(self, h: Harness, conn: TcpConn, flow: int):
        self.h, self.conn, self.flow = h, conn, flow
        self.credit = 0
        self.closed = None
        self.shut = False
        self.eof_sent = False

    def space(self) -> int:
        return 1 << 20

    def pump(self):
        for _ in range(100):
            acts = self.h.actions()
            for a in acts:
                if isinstance(a, SendTcp):
                    n = self.conn.edge.send(a.data)
                    self.h.event(TcpSent(self.flow, n, self.space()))
                elif isinstance(a, ReadTcp):
                    self.credit = a.credit
                elif isinstance(a, ShutdownTcp):
                    self.conn.edge.shutdown(socket.SHUT_WR)
                    self.shut = True
                elif isinstance(a, CloseTcp):
                    self.closed = a
                elif isinstance(a, WatchTcpWritable):
                    self.h.event(TcpWritable(self.flow, self.space()))
            if self.credit > 0 and not self.eof_sent and self.closed is None:
                if select.select([self.conn.edge], [], [], 0.05)[0]:
                    data = self.conn.edge.recv(min(self.credit, 1 << 16))
                    if data:
                        self.credit -= len(data)
                        self.h.event(TcpReceived(self.flow, data))
                    else:
                        self.eof_sent = True
                        self.h.event(TcpHostEof(self.flow))
                    continue
            if not acts:
                return


class Guest:
    """The guest's side of the byte streams, fed by netstack segments and datapath frames."""

    def __init__(self, c):
        self.rcv_nxt = c.ack  # next byte expected from us
        self.snd_nxt = c.seq
        self.got = bytearray()
        self.fin = False

    def take_segments(self, segs):
        for s in segs:
            self._take(s.header.seq, s.payload, bool(s.header.flags & FIN))

    def take_frames(self, frames):
        for f in frames:
            p = parse_out(f)
            self._take(p["seq"], p["payload"], bool(p["flags"] & FIN))

    def _take(self, seq, payload, fin):
        if payload and seq == self.rcv_nxt:
            self.got += payload
            self.rcv_nxt = (self.rcv_nxt + len(payload)) & M
        elif payload and ((self.rcv_nxt - seq) & M) < len(payload):
            back = (self.rcv_nxt - seq) & M
            self.got += payload[back:]
            self.rcv_nxt = (seq + len(payload)) & M
        if fin and (seq + len(payload)) & M == self.rcv_nxt:
            self.fin = True
            self.rcv_nxt = (self.rcv_nxt + 1) & M


def drain_peer(conn: TcpConn, into: bytearray, want: int, timeout=2.0):
    while len(into) < want:
        if not select.select([conn.peer], [], [], timeout)[0]:
            break
        chunk = conn.peer.recv(1 << 20)
        if not chunk:
            break
        into += chunk


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_the_datapath(kind):
    h = Harness(seed=7)
    h.now = 50.0
    c = open_established(h, timestamp=(4000, 0))
    ts_ours = c.ts[1]
    side = Side(kind)
    conn = TcpConn()
    edge = MiniEdge(h, conn, c.flow)
    guest = Guest(c)
    to_host = bytes(i * 7 % 256 for i in range(3 * CHUNK + 123))
    to_guest = bytes(i * 13 % 256 for i in range(150_000))
    host_got = bytearray()
    try:
        # -- park and install
        exp = h.layer.park(c.flow)
        assert exp is not None and exp.send_bytes == b"" and exp.to_host == b""
        side.dp.install_tcp(
            TcpFlow(c.flow, conn.edge.fileno(), GUEST, c.gport, REMOTE, c.rport, GUEST_MAC, OUR_MAC, exp.tcb,
                    h.config.rcv_buf_max, h.now)  # fmt: skip
        )
        assert side.dp.owns(c.flow)
        g = GuestTcp(guest=GUEST, gport=c.gport, remote=REMOTE, rport=c.rport, seq=guest.snd_nxt, ack=guest.rcv_nxt)
        g.tsval, g.tsecr = 6000, ts_ours
        g.window = 0xFFFF
        # -- guest → host through the datapath (64 KiB-class super-frames)
        h.now += 0.001
        frames = [g.frame(ACK | PSH, to_host[i : i + CHUNK]) for i in range(0, len(to_host), CHUNK)]
        for fr in frames:
            side.to_tap(fr)
        items = side.dp.tap_readable(h.now)
        out = side.from_tap()
        assert items == [] and len(out) == 1
        assert parse_out(out[0])["ack"] == (c.seq + len(to_host)) & M
        drain_peer(conn, host_got, len(to_host))
        assert bytes(host_got) == to_host
        # -- host → guest through the datapath
        conn.peer.sendall(to_guest)
        sent = 0
        while guest.rcv_nxt != (c.ack + len(to_guest)) & M:
            assert side.wait_host() or sent, "no host event"
            h.now += 0.001
            items = side.dp.host_readable(h.now)
            assert items == []
            out = side.from_tap()
            guest.take_frames(out)
            sent += len(out)
            g.ack = guest.rcv_nxt
            g.tsval += 1
            side.to_tap(g.frame(ACK))
            side.dp.tap_readable(h.now)
            side.from_tap()
        assert bytes(guest.got) == to_guest
        # some host bytes in flight, not yet acknowledged by the guest
        conn.peer.sendall(b"unacked tail")
        assert side.wait_host()
        guest_before = guest.rcv_nxt
        items = side.dp.host_readable(h.now)
        guest.take_frames(side.from_tap())
        assert bytes(guest.got).endswith(b"unacked tail")
        # -- the guest's FIN: taken in the datapath (shutdown, ACK): CLOSE_WAIT there
        g.ack = guest_before  # the tail is not acknowledged
        g.tsval += 1
        side.to_tap(g.frame(ACK | FIN))
        assert side.dp.tap_readable(h.now) == []
        out = side.from_tap()
        assert [parse_out(f)["ack"] for f in out] == [(g.seq + 1) & M], "the datapath acknowledged the FIN"
        # -- handed back to netstack in CLOSE_WAIT (the edge wants it back)
        e = side.dp.eject_tcp(c.flow, h.now)
        assert e.state == "CLOSE_WAIT" and e.send_bytes == b"unacked tail" and not side.dp.owns(c.flow)
        h.layer.resume(
            h.now,
            c.flow,
            EndpointExport(tcb=e.tcb, state=State[e.state], send_bytes=e.send_bytes, to_host=b"",
                           host_eof=e.host_eof, host_blocked=False, edge_credit=0),  # fmt: skip
        )
        edge.pump()
        assert not edge.shut, "the datapath shut the host socket down already"
        guest.take_segments(h.segments())
        assert c.ep.state is State.CLOSE_WAIT
        # -- the guest acks the tail; the host answers and closes; netstack finishes
        c.seq, c.ts = (g.seq + 1) & M, (g.tsval + 1, ts_ours)
        c.ack = guest.rcv_nxt
        c.send(ACK)
        conn.peer.sendall(b"goodbye")
        conn.peer.shutdown(socket.SHUT_WR)
        for _ in range(20):
            edge.pump()
            guest.take_segments(h.segments())
            if guest.fin:
                break
        assert guest.fin and bytes(guest.got) == to_guest + b"unacked tail" + b"goodbye"
        assert c.ep.state is State.LAST_ACK
        c.ack = guest.rcv_nxt
        c.send(ACK)
        edge.pump()
        assert edge.closed == CloseTcp(c.flow, False), "closed cleanly"
        assert h.layer.endpoint(c.flow) is None
        drain_peer(conn, host_got, len(to_host) + 1)
        assert bytes(host_got) == to_host
        assert conn.peer.recv(10) == b"", "the host saw our FIN"
        assert h.counters["tcp.rx_parked"] == 0 and h.counters["tcp.event_parked"] == 0
    finally:
        conn.close()
        side.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_that_ends_in_the_datapath_is_forgotten_by_netstack(kind):
    """Installed, then closed both ways in the datapath: one Closed item, and
    netstack drops the parked flow (TcpLayer.forget)."""
    h = Harness(seed=9)
    h.now = 10.0
    c = open_established(h, timestamp=(4000, 0))
    side = Side(kind)
    conn = TcpConn()
    try:
        exp = h.layer.park(c.flow)
        side.dp.install_tcp(
            TcpFlow(c.flow, conn.edge.fileno(), GUEST, c.gport, REMOTE, c.rport, GUEST_MAC, OUR_MAC, exp.tcb,
                    h.config.rcv_buf_max, h.now)  # fmt: skip
        )
        g = GuestTcp(guest=GUEST, gport=c.gport, remote=REMOTE, rport=c.rport, seq=c.seq, ack=c.ack)
        g.tsval, g.tsecr = 6000, c.ts[1]
        side.to_tap(g.frame(ACK | PSH | FIN, b"q"))
        assert side.dp.tap_readable(h.now) == []
        got = bytearray()
        drain_peer(conn, got, 2)
        assert bytes(got) == b"q" and conn.peer.recv(10) == b""
        conn.peer.sendall(b"a")
        conn.peer.shutdown(socket.SHUT_WR)
        assert side.wait_host()
        assert side.dp.host_readable(h.now) == []
        guest = Guest(c)
        guest.take_frames(side.from_tap())
        assert bytes(guest.got) == b"a"
        g.ack = guest.rcv_nxt
        g.tsval += 1
        side.to_tap(g.frame(ACK))
        assert side.dp.tap_readable(h.now) == []  # our FIN goes now
        guest.take_frames(side.from_tap())
        assert guest.fin
        g.ack = guest.rcv_nxt
        g.tsval += 1
        side.to_tap(g.frame(ACK))
        assert side.dp.tap_readable(h.now) == [Closed(c.flow, "fin", 0)]
        h.layer.forget(c.flow)
        assert h.layer.endpoint(c.flow) is None and h.counters["tcp.closed_by_datapath"] == 1
        with pytest.raises(KeyError):
            h.layer.forget(c.flow)
    finally:
        conn.close()
        side.close()
