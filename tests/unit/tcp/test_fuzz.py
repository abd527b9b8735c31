"""Hypothesis: random segment and event sequences never raise out of the
layer and never break the invariants (sequence order, buffer bounds, one
SendTcp outstanding, one CloseTcp per flow, table consistency)."""

import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.actions import CloseTcp, OpenTcp, ReadTcp, SendTcp
from netstack.events import (
    TcpConnected,
    TcpConnectFailed,
    TcpHostEof,
    TcpHostReset,
    TcpReceived,
    TcpSent,
    TcpWritable,
)
from netstack.nat import FlowState
from netstack.tcp import State
from netstack.tcp.seq import le, sub
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, URG, TcpHeader

from .helpers import (
    GPORT,
    Harness,
    open_close_wait,
    open_closing,
    open_connecting,
    open_established,
    open_fin_wait_1,
    open_fin_wait_2,
    open_last_ack,
    open_syn_received,
    open_syn_sent,
    open_time_wait,
)

M = 0xFFFFFFFF
FIXTURES = [
    open_connecting,
    open_syn_received,
    open_established,
    open_fin_wait_1,
    open_fin_wait_2,
    open_close_wait,
    open_closing,
    open_last_ack,
    open_time_wait,
    open_syn_sent,
]
FLAG_SETS = [ACK, ACK | PSH, ACK | FIN, FIN, SYN, SYN | ACK, RST, RST | ACK, ACK | URG, 0, SYN | FIN, ACK | FIN | PSH]
ERRNOS = [errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET]


class Edge:
    """Tracks the edge contract while the fuzzer drives the layer."""

    def __init__(self, h: Harness):
        self.h = h
        self.outstanding: dict[int, int] = {}  # flow -> bytes of the SendTcp in flight
        self.blocked: set[int] = set()
        self.closed: set[int] = set()
        self.credit: dict[int, int] = {}
        self.opened: set[int] = set()

    def take(self):
        for a in self.h.layer.drain_actions():
            if isinstance(a, SendTcp):
                assert a.flow not in self.outstanding and a.flow not in self.blocked, "second SendTcp"
                assert a.data
                self.outstanding[a.flow] = len(a.data)
            elif isinstance(a, CloseTcp):
                assert a.flow not in self.closed, "CloseTcp twice"
                self.closed.add(a.flow)
            elif isinstance(a, ReadTcp):
                assert a.credit >= 0
                self.credit[a.flow] = a.credit
            elif isinstance(a, OpenTcp):
                self.opened.add(a.flow)
        for s in self.h.layer.drain_segments():
            hdr = s.header
            buf = bytearray(hdr.buffer_len)
            hdr.emit(buf)  # always encodable
            assert len(s.payload) <= 65535 - 14 - 20 - hdr.buffer_len
            assert s.gso_size == 0 or len(s.payload) > s.gso_size
        self.h.layer.drain_unreachables()


def check_invariants(h: Harness) -> None:
    table = h.layer.table
    for flow in table:
        ep = flow.endpoint
        assert ep.state is not State.CLOSED
        assert flow.state is not FlowState.CLOSED
        t = ep.tcb
        assert le(t.snd_una, t.snd_nxt) and le(t.snd_nxt, t.snd_max), (t.snd_una, t.snd_nxt, t.snd_max)
        assert sub(t.snd_max, t.snd_una) <= len(ep._snd) + 2  # SYN/FIN occupy one each
        assert len(ep._snd) <= h.config.snd_buf_max
        assert ep._to_host_len == sum(len(x) for x in ep._to_host)
        assert ep._to_host_len <= h.config.rcv_buf_max + (1 << t.rcv_wscale)
        assert len(ep._reorder) <= h.config.reorder_max_segments
        assert ep._reorder.nbytes <= h.config.rcv_buf_max
        assert t.cwnd >= 0 and t.rto >= h.config.rto_min_s or ep.state in (State.CONNECTING, State.SYN_SENT)
        if ep.state is State.TIME_WAIT:
            assert len(ep._snd) == 0 and ep._to_host_len == 0
    assert len(table) <= table.limit(6)


@st.composite
def segment(draw, ep, gport, rport):
    t = ep.tcb if ep is not None else None
    if t is None:
        seq_anchor = ack_anchor = 0
    else:
        seq_anchor = draw(st.sampled_from([t.rcv_nxt, ep._rx_end(), t.rcv_adv, t.irs]))
        ack_anchor = draw(st.sampled_from([t.snd_una, t.snd_nxt, t.snd_max, t.iss]))
    seq = (seq_anchor + draw(st.sampled_from([0, 0, 0, 1, -1, 100, -100, 1460, 70000, 1 << 31]))) & M
    ack = (ack_anchor + draw(st.sampled_from([0, 0, 1, -1, 1000, -5000, 1 << 30]))) & M
    flags = draw(st.sampled_from(FLAG_SETS))
    window = draw(st.sampled_from([0, 1, 1000, 65535]))
    plen = draw(st.sampled_from([0, 0, 1, 100, 1460, 5000, 66000]))
    opts = {}
    if draw(st.booleans()):
        opts["timestamp"] = (draw(st.sampled_from([0, 4999, 5000, 5001, 1 << 31])), draw(st.integers(0, M)))
    if flags & SYN and draw(st.booleans()):
        opts["mss"] = draw(st.sampled_from([1, 536, 1460, 65535]))
        opts["wscale"] = draw(st.integers(0, 14))
    return TcpHeader(gport, rport, seq, ack, flags, window, **opts), bytes(plen)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_sequences_keep_invariants(data):
    h = Harness(seed=data.draw(st.integers(0, 3)), rcv_buf_max=200_000, snd_buf_max=150_000)
    fixture = data.draw(st.sampled_from(FIXTURES))
    c = fixture(h)
    ep = c.ep
    edge = Edge(h)
    edge.take()
    for _ in range(data.draw(st.integers(1, 40))):
        ep = h.layer.endpoint(c.flow)
        op = data.draw(st.integers(0, 9))
        if op <= 4:
            hdr, payload = data.draw(segment(ep, c.gport, c.rport))
            h.deliver(hdr, payload, src=c.guest, dst=c.remote)
        elif op == 5:
            h.advance(data.draw(st.sampled_from([0.001, 0.2, 1.0, 5.0, 80.0])))
        elif op == 6 and c.flow in edge.outstanding:
            n = edge.outstanding.pop(c.flow)
            acc = data.draw(st.sampled_from([0, n // 2, n, n]))
            if acc < n:
                edge.blocked.add(c.flow)
            h.event(TcpSent(c.flow, acc, data.draw(st.sampled_from([0, 100, 5000, 1 << 20]))))
        elif op == 7:
            edge.blocked.discard(c.flow)
            h.event(TcpWritable(c.flow, data.draw(st.sampled_from([0, 1000, 1 << 20]))))
        elif op == 8:
            credit = edge.credit.get(c.flow, 0)
            n = min(credit, data.draw(st.sampled_from([1, 1000, 70000])))
            if data.draw(st.integers(0, 20)) == 0:
                n += 1  # an occasional contract violation: must abort cleanly
            if n:
                edge.credit[c.flow] = max(0, credit - n)
                h.event(TcpReceived(c.flow, bytes(n)))
        else:
            ev = data.draw(
                st.sampled_from(
                    [
                        TcpHostEof(c.flow),
                        TcpHostReset(c.flow, data.draw(st.sampled_from(ERRNOS))),
                        TcpConnected(c.flow, data.draw(st.sampled_from([0, 1000, 1 << 20]))),
                        TcpConnectFailed(c.flow, data.draw(st.sampled_from(ERRNOS))),
                    ]
                )
            )
            h.event(ev)
        edge.take()
        check_invariants(h)
    # whatever happened, time eventually cleans everything up
    for _ in range(200):
        d = h.layer.next_deadline()
        if d is None:
            break
        h.run_until(d)
        edge.take()
        check_invariants(h)
    for flow in h.layer.table:
        # without timers left, only flows that legitimately wait forever on
        # the guest or the host socket remain (an idle connection, a half-close)
        assert flow.endpoint.state in (State.ESTABLISHED, State.FIN_WAIT_2, State.CLOSE_WAIT)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FLAG_SETS), st.integers(0, M), st.integers(0, M), st.binary(max_size=64)), max_size=30))
def test_garbage_without_flows_never_raises(segs):
    h = Harness(table=None)
    for flags, seq, ack, payload in segs:
        h.deliver(TcpHeader(GPORT, 80, seq, ack, flags, 1000), payload)
        h.segments()
        h.actions()
    # only SYNs may have opened flows, each with exactly one OpenTcp
    for flow in h.layer.table:
        assert flow.endpoint.state is State.CONNECTING
