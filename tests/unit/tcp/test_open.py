"""Passive open (forwarder pattern) and the no-flow paths of the layer."""

import errno

import pytest

from netstack.actions import CloseTcp, OpenTcp, ReadTcp
from netstack.events import TcpConnected, TcpConnectFailed, TcpHostReset
from netstack.nat import PROTO_TCP, FlowKey, FlowState, FlowTable
from netstack.tcp import Disposition, Refusal, State, Unreachable
from netstack.wire.tcp import TcpHeader, TcpView

from .helpers import (
    ACK,
    FIN,
    GPORT,
    GUEST,
    GUEST6,
    GUEST_ISS,
    PSH,
    REMOTE,
    REMOTE6,
    RPORT,
    RST,
    SYN,
    Conn,
    Harness,
    open_connecting,
    open_established,
    open_syn_received,
    open_time_wait,
    view_of,
)

# ------------------------------------------------------------- CONNECTING


def test_syn_opens_flow_and_connects_first():
    h = Harness()
    c = Conn(h)
    assert c.send(SYN, mss=1460, wscale=7) is Disposition.HANDLED
    acts = h.actions()
    assert len(acts) == 1 and acts[0] == OpenTcp(acts[0].flow, REMOTE, RPORT)
    c.flow = acts[0].flow
    c.expect_none()  # nothing to the guest until the host connect succeeds
    assert c.ep.state is State.CONNECTING
    flow = h.layer.table.get(c.flow)
    assert flow.state is FlowState.OPENING
    assert flow.key == FlowKey(0, PROTO_TCP, GUEST, GPORT, REMOTE, RPORT)
    assert (flow.host_addr, flow.host_port) == (REMOTE, RPORT)
    assert h.counters["tcp.passive_opens"] == 1


def test_retransmitted_syn_while_connecting_is_ignored():
    h = Harness()
    c = open_connecting(h)
    for _ in range(3):
        c.send(SYN, seq=GUEST_ISS, mss=1460)
        c.expect_none()
        assert h.actions() == []  # no second OpenTcp
    assert h.counters["tcp.rx_syn_while_connecting"] == 3
    assert len(h.layer.table) == 1


def test_other_segments_while_connecting_are_dropped():
    h = Harness()
    c = open_connecting(h)
    c.send(ACK, seq=GUEST_ISS + 1, ack=12345)
    c.expect_none()
    assert h.counters["tcp.rx_while_connecting"] == 1
    c.send(RST, seq=GUEST_ISS + 7)  # not the exact sequence number
    assert h.counters["tcp.rx_rst_out_of_window"] == 1
    assert c.ep.state is State.CONNECTING


def test_guest_rst_while_connecting_aborts_connect():
    h = Harness()
    c = open_connecting(h)
    c.send(RST, seq=GUEST_ISS + 1)
    c.expect_none()
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None


def test_connect_that_never_completes_expires():
    h = Harness()
    c = open_connecting(h)
    flow = c.flow
    assert h.layer.next_deadline() == h.config.connect_timeout_s
    h.advance(h.config.connect_timeout_s - 0.001)
    assert h.layer.table.get(flow) is not None and h.actions() == []
    h.advance(0.001)
    assert h.actions() == [CloseTcp(flow, True)]
    c.expect_none()  # the guest's SYN simply goes unanswered
    assert h.layer.table.get(flow) is None
    assert h.counters["tcp.connect_timeout"] == 1
    assert h.layer.next_deadline() is None
    # the connect completing late is an event for an unknown flow
    h.event(TcpConnected(flow, 1000))
    assert h.counters["tcp.event_no_flow"] == 1
    # the guest's next SYN retransmission starts a fresh attempt
    c.send(SYN, seq=GUEST_ISS, mss=1460)
    (a,) = h.actions()
    assert isinstance(a, OpenTcp) and a.flow != flow


def test_connection_refused_answers_rst():
    h = Harness()
    c = open_connecting(h)
    h.event(TcpConnectFailed(c.flow, errno.ECONNREFUSED))
    c.expect(RST | ACK, seq=0, ack=GUEST_ISS + 1)
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.unreachables() == []
    assert h.layer.table.get(c.flow) is None
    assert h.counters["tcp.connect_refused"] == 1


@pytest.mark.parametrize(
    "err, reason",
    [
        (errno.EHOSTUNREACH, Unreachable.HOST),
        (errno.ENETUNREACH, Unreachable.NET),
        (errno.ETIMEDOUT, Unreachable.NET),
        (errno.EACCES, Unreachable.NET),
    ],
)
def test_connect_errors_ask_for_icmp(err, reason):
    h = Harness()
    c = Conn(h)
    syn = TcpHeader(GPORT, RPORT, GUEST_ISS, 0, SYN, 64240, mss=1460)
    datagram = bytes(20) + bytes(view_of(syn).buf)
    h.deliver(syn, datagram=datagram)
    (open_,) = h.actions()
    h.event(TcpConnectFailed(open_.flow, err))
    c.expect_none()
    (u,) = h.unreachables()
    assert (u.link, u.src_addr, u.dst_addr, u.reason) == (0, GUEST, REMOTE, reason)
    assert TcpHeader.parse(TcpView.check(memoryview(u.tcp_header))) == syn
    assert u.datagram == datagram
    assert h.actions() == [CloseTcp(open_.flow, True)]
    assert h.layer.table.get(open_.flow) is None


def test_host_reset_while_connecting_is_a_connect_failure():
    h = Harness()
    c = open_connecting(h)
    h.event(TcpHostReset(c.flow, errno.EHOSTUNREACH))
    (u,) = h.unreachables()
    assert u.reason is Unreachable.HOST and u.datagram is None


# ----------------------------------------------------------- SYN_RECEIVED


def test_syn_ack_after_connect_with_negotiated_options():
    h = Harness()
    c = open_connecting(h, mss=1400, wscale=7, timestamp=(777, 0), sack_permitted=True)
    h.event(TcpConnected(c.flow, 1 << 20))
    s = c.expect(SYN | ACK, ack=GUEST_ISS + 1, window=65535)
    hdr = s.header
    assert hdr.mss == 1460  # ours, from the MTU
    assert hdr.wscale == h.config.rcv_wscale == 6
    assert hdr.timestamp[1] == 777
    assert hdr.sack_permitted is False  # SACK is not implemented, so never offered
    assert c.ep.state is State.SYN_RECEIVED
    assert c.ep.tcb.mss == 1400  # clamped to the guest's
    assert c.ep.tcb.snd_wscale == 7 and c.ep.tcb.rcv_wscale == 6
    assert h.layer.table.get(c.flow).state is FlowState.OPENING


def test_syn_ack_without_guest_options():
    h = Harness()
    c = open_connecting(h, mss=None, wscale=None)
    h.event(TcpConnected(c.flow, 1000))
    s = c.expect(SYN | ACK, window=1000)  # small host buffer: small window
    assert s.header.wscale is None and s.header.timestamp is None
    t = c.ep.tcb
    assert t.mss == 536 and t.rcv_wscale == 0 and t.snd_wscale == 0 and not t.ts_ok


def test_mss_clamp_ipv6_and_small_guest_mss():
    h = Harness(mtu=9000)
    c = Conn(h, guest=GUEST6, remote=REMOTE6)
    c.send(SYN, mss=8000)
    (o,) = h.actions()
    h.event(TcpConnected(o.flow, 1 << 20))
    s = c.expect(SYN | ACK)
    assert s.header.mss == 9000 - 60
    assert h.layer.endpoint(o.flow).tcb.mss == 8000
    c2 = Conn(h, gport=GPORT + 1)
    c2.send(SYN, mss=20)  # absurd: floored
    (o2,) = h.actions()
    h.event(TcpConnected(o2.flow, 1 << 20))
    c2.expect(SYN | ACK)
    assert h.layer.endpoint(o2.flow).tcb.mss == 88


def test_handshake_ack_establishes_and_grants_credit():
    h = Harness()
    c = open_syn_received(h)
    c.send(ACK)
    c.expect_none()
    (r,) = h.actions()
    assert isinstance(r, ReadTcp) and r.flow == c.flow
    # the guest's window (65535 << 7) capped by the send buffer bound
    assert r.credit == h.config.snd_buf_max
    assert c.ep.state is State.ESTABLISHED
    assert h.layer.table.get(c.flow).state is FlowState.ESTABLISHED


def test_credit_follows_small_guest_window():
    h = Harness()
    c = open_syn_received(h, wscale=None)
    c.send(ACK, window=3000)
    (r,) = h.actions()
    assert r == ReadTcp(c.flow, 3000)


def test_third_ack_may_carry_data_and_fin():
    h = Harness()
    c = open_syn_received(h)
    c.send(ACK | PSH | FIN, b"hello")
    acts = h.actions()
    assert [type(a).__name__ for a in acts] == ["SendTcp", "ReadTcp"]
    assert acts[0].data == b"hello"
    c.expect_none()


def test_syn_retransmitted_in_syn_received_resends_syn_ack():
    h = Harness()
    c = open_syn_received(h, timestamp=(100, 0))
    first = c.synack
    h.now = 0.5
    c.send(SYN, seq=GUEST_ISS, mss=1460, wscale=7, timestamp=(600, 0), advance=False)
    s = c.expect(SYN | ACK, seq=first.header.seq, ack=GUEST_ISS + 1)
    assert s.header.timestamp[1] == 600  # echoes the retransmission
    assert h.counters["tcp.rx_syn_retransmit"] == 1


def test_syn_ack_retransmits_with_backoff_then_gives_up():
    h = Harness()
    c = open_syn_received(h)
    times = []
    while h.layer.next_deadline() is not None:
        h.run_until(h.layer.next_deadline())
        segs = h.segments()
        if segs:
            assert [s.header.flags for s in segs] == [SYN | ACK]
            times.append(h.now)
    assert times == [1.0, 3.0, 7.0, 15.0, 31.0]
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None
    assert h.counters["tcp.retransmit_timeout"] == 1


def test_bad_ack_in_syn_received_answers_rst():
    h = Harness()
    c = open_syn_received(h)
    c.send(ACK, ack=(c.ack + 5) & 0xFFFFFFFF, advance=False)
    c.expect(RST, seq=(c.ack + 5) & 0xFFFFFFFF)
    assert c.ep.state is State.SYN_RECEIVED
    assert h.counters["tcp.rx_bad_ack"] == 1


def test_segment_without_ack_in_syn_received_is_dropped():
    h = Harness()
    c = open_syn_received(h)
    c.send(PSH, b"x", advance=False)
    c.expect_none()
    assert h.counters["tcp.rx_no_ack"] == 1


def test_rst_in_syn_received_closes_host_socket():
    h = Harness()
    c = open_syn_received(h)
    c.send(RST)
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None


def test_host_reset_in_syn_received_resets_guest():
    h = Harness()
    c = open_syn_received(h)
    h.event(TcpHostReset(c.flow, errno.ECONNRESET))
    c.expect(RST | ACK, seq=c.ack, ack=GUEST_ISS + 1)
    assert h.actions() == [CloseTcp(c.flow, True)]


# ------------------------------------------------------------- no flow


def test_ack_without_flow_answers_rst_seq_ack():
    h = Harness()
    c = Conn(h)
    assert c.send(ACK, b"data", ack=4242) is Disposition.RESET
    c.expect(RST, seq=4242, ack=0)
    assert h.counters["tcp.rx_no_flow"] == 1


def test_fin_without_ack_and_without_flow_answers_rst_ack():
    h = Harness()
    c = Conn(h)
    c.send(FIN, b"ab")
    c.expect(RST | ACK, seq=0, ack=GUEST_ISS + 3)


def test_syn_ack_without_flow_answers_rst():
    h = Harness()
    c = Conn(h)
    assert c.send(SYN | ACK, ack=99) is Disposition.RESET
    c.expect(RST, seq=99)
    assert h.actions() == []


def test_rst_without_flow_is_dropped_silently():
    h = Harness()
    c = Conn(h)
    assert c.send(RST) is Disposition.DROPPED
    c.expect_none()
    assert h.counters["tcp.rx_rst_no_flow"] == 1


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | RST, SYN | FIN | ACK])
def test_syn_with_fin_or_rst_is_dropped(flags):
    h = Harness()
    c = Conn(h)
    assert c.send(flags) is Disposition.DROPPED
    c.expect_none()
    assert h.actions() == []
    assert h.counters["tcp.rx_bad_flags"] == 1


def test_port_zero_is_dropped():
    h = Harness()
    c = Conn(h, gport=0)
    assert c.send(SYN) is Disposition.DROPPED
    assert h.counters["tcp.rx_bad_port"] == 1


def test_malformed_options_are_counted():
    h = Harness()
    raw = bytearray(view_of(TcpHeader(GPORT, RPORT, 1, 0, SYN, 100, mss=1460)).buf)
    raw[21] = 1  # MSS option with length 1
    disp = h.layer.segment_from_guest(0.0, 0, GUEST, REMOTE, TcpView.check(memoryview(bytes(raw))))
    assert disp is Disposition.MALFORMED
    assert h.counters["tcp.bad_option"] == 1
    assert h.segments() == [] and h.actions() == []


def test_syn_data_is_not_acknowledged():
    h = Harness()
    c = Conn(h)
    c.send(SYN, b"early", mss=1460)
    (o,) = h.actions()
    h.event(TcpConnected(o.flow, 1 << 20))
    c.expect(SYN | ACK, ack=GUEST_ISS + 1)  # the 5 bytes are not covered


# ------------------------------------------------------------- policy


def test_policy_maps_destination():
    h = Harness(policy=lambda a, p: (bytes([127, 0, 0, 1]), p + 1) if a == REMOTE else (a, p))
    c = Conn(h)
    c.send(SYN)
    (o,) = h.actions()
    assert (o.addr, o.port) == (bytes([127, 0, 0, 1]), RPORT + 1)


@pytest.mark.parametrize(
    "refusal, disposition, answer",
    [
        (Refusal.RESET, Disposition.RESET, "rst"),
        (Refusal.NET_UNREACHABLE, Disposition.UNREACHABLE, Unreachable.NET),
        (Refusal.HOST_UNREACHABLE, Disposition.UNREACHABLE, Unreachable.HOST),
        (Refusal.DROP, Disposition.DROPPED, None),
    ],
)
def test_policy_refusals(refusal, disposition, answer):
    h = Harness(policy=lambda a, p: refusal)
    c = Conn(h)
    assert c.send(SYN) is disposition
    assert h.actions() == [] and len(h.layer.table) == 0
    assert h.counters["tcp.syn_refused_policy"] == 1
    if answer == "rst":
        c.expect(RST | ACK, seq=0, ack=GUEST_ISS + 1)
    else:
        c.expect_none()
    us = h.unreachables()
    if isinstance(answer, Unreachable):
        assert [u.reason for u in us] == [answer]
    else:
        assert us == []


# ------------------------------------------------------------- flow table


def test_flows_are_keyed_by_link_and_both_ends():
    h = Harness()
    a = Conn(h)
    a.send(SYN)
    b = Conn(h, gport=GPORT + 1)
    b.send(SYN)
    hdr = TcpHeader(GPORT, RPORT, GUEST_ISS, 0, SYN, 1000)
    h.deliver(hdr, link=1)  # same 4-tuple on another guest interface
    flows = [a.flow for a in h.actions()]
    assert len(set(flows)) == 3 and len(h.layer.table) == 3


def test_full_table_refuses_syn_with_rst():
    h = Harness(table=FlowTable(limits={PROTO_TCP: 2}))
    open_established(h)
    Conn(h, gport=GPORT + 1).send(SYN)
    h.actions()
    c = Conn(h, gport=GPORT + 2)
    assert c.send(SYN) is Disposition.RESET
    c.expect(RST | ACK, seq=0, ack=GUEST_ISS + 1)
    assert h.actions() == []
    assert h.counters["tcp.syn_refused_full"] == 1


def test_full_table_recycles_oldest_time_wait():
    h = Harness(table=FlowTable(limits={PROTO_TCP: 2}))
    old = open_time_wait(h)
    Conn(h, gport=GPORT + 1).send(SYN)
    h.actions()
    c = Conn(h, gport=GPORT + 2)
    assert c.send(SYN) is Disposition.HANDLED
    (o,) = h.actions()
    assert isinstance(o, OpenTcp)
    assert h.layer.table.get(old.flow) is None
    assert h.counters["tcp.time_wait_recycled"] == 1
    assert len(h.layer.table) == 2
