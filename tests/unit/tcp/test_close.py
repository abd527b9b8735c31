"""FIN both ways with half-close, every closing state, RST both ways, TIME_WAIT."""

import errno

import pytest

from netstack.actions import CloseTcp, OpenTcp, ReadTcp, SendTcp, ShutdownTcp
from netstack.events import TcpConnected, TcpHostEof, TcpHostReset, TcpReceived, TcpSent, TcpWritable
from netstack.nat import FlowState
from netstack.tcp import Disposition, State

from .helpers import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Harness,
    host_read,
    open_close_wait,
    open_closing,
    open_established,
    open_fin_wait_1,
    open_fin_wait_2,
    open_last_ack,
    open_time_wait,
)

M = 0xFFFFFFFF

# ------------------------------------------------------------ guest FIN


def test_guest_fin_waits_for_pending_data_to_be_written():
    h = Harness()
    c = open_established(h)
    c.send(ACK | FIN, b"last words")
    assert h.actions() == [SendTcp(c.flow, b"last words")]
    c.expect_none()  # neither data nor FIN acknowledged yet
    assert c.ep.state is State.ESTABLISHED
    h.event(TcpSent(c.flow, 4, 0))  # short write
    c.expect(ACK, ack=(c.seq - 7) & M)
    assert h.actions() == []
    h.event(TcpWritable(c.flow, 1000))
    assert h.actions() == [SendTcp(c.flow, b" words")]
    h.event(TcpSent(c.flow, 6, 1000))
    assert h.actions() == [ShutdownTcp(c.flow)]  # only now
    c.expect(ACK, ack=c.seq)  # FIN covered
    assert c.ep.state is State.CLOSE_WAIT
    assert h.layer.table.get(c.flow).state is FlowState.CLOSING


def test_close_wait_host_data_still_flows():
    h = Harness()
    c = open_close_wait(h)
    host_read(h, c, b"reply")
    s = c.expect(ACK | PSH, b"reply", ack=c.seq)
    c.take_data(s)
    c.send(ACK)
    assert isinstance(h.actions()[0], ReadTcp)


def test_close_wait_retransmitted_fin_is_reacked():
    h = Harness()
    c = open_close_wait(h)
    c.send(FIN | ACK, seq=(c.seq - 1) & M, advance=False)
    c.expect(ACK, ack=c.seq)
    assert h.actions() == []


def test_close_wait_data_after_fin_is_dropped():
    h = Harness()
    c = open_close_wait(h)
    c.send(ACK, b"late")
    c.expect(ACK, ack=(c.seq - 4) & M)
    assert h.actions() == []
    assert h.counters["tcp.rx_after_fin"] == 1


def test_host_eof_in_close_wait_sends_fin_and_last_ack_closes():
    h = Harness()
    c = open_last_ack(h)
    c.ack = (c.fin_seq + 1) & M
    c.send(ACK)
    c.expect_none()
    assert h.actions() == [CloseTcp(c.flow, False)]
    assert h.layer.table.get(c.flow) is None


def test_last_ack_fin_is_retransmitted():
    h = Harness()
    c = open_last_ack(h)
    h.run_until(h.layer.next_deadline())
    c.expect(FIN | ACK, seq=c.fin_seq, ack=c.seq)


def test_last_ack_rst_after_everything_but_fin_acked_is_graceful():
    h = Harness()
    c = open_last_ack(h)
    c.send(RST, seq=c.seq)
    assert h.actions() == [CloseTcp(c.flow, False)]


# ------------------------------------------------------------ host EOF


def test_host_eof_fin_follows_last_byte():
    h = Harness()
    c = open_established(h)
    host_read(h, c, b"abc")
    s = c.expect(ACK | PSH, b"abc")
    h.event(TcpHostEof(c.flow))
    s2 = c.expect(FIN | ACK, seq=(s.header.seq + 3) & M)
    assert c.ep.state is State.FIN_WAIT_1
    assert s2.header.ack == c.seq


def test_host_eof_fin_rides_on_unsent_data():
    h = Harness()
    c = open_established(h, wscale=None)
    c.window = 2
    c.send(ACK)
    h.actions()
    host_read(h, c, b"xyz")
    s = c.expect(ACK, b"xy")
    h.event(TcpHostEof(c.flow))
    c.expect_none()  # "z" does not fit: no FIN yet
    c.take_data(s)
    c.send(ACK)
    c.expect(ACK | PSH | FIN, b"z")
    assert c.ep.state is State.FIN_WAIT_1


def test_fin_wait_1_guest_data_still_relayed():
    h = Harness()
    c = open_fin_wait_1(h)
    c.send(ACK, b"more", ack=c.fin_seq)  # does not ack our FIN yet
    assert h.actions() == [SendTcp(c.flow, b"more")]
    h.event(TcpSent(c.flow, 4, 1 << 20))
    c.expect(ACK, seq=(c.fin_seq + 1) & M, ack=c.seq)
    assert c.ep.state is State.FIN_WAIT_1


def test_fin_wait_1_fin_retransmitted_on_rto():
    h = Harness()
    c = open_fin_wait_1(h)
    h.run_until(h.layer.next_deadline())
    c.expect(FIN | ACK, seq=c.fin_seq)


def test_fin_wait_2_half_close_keeps_receiving():
    h = Harness()
    c = open_fin_wait_2(h)
    for chunk in (b"one", b"two"):
        c.send(ACK | PSH, chunk)
        assert h.actions() == [SendTcp(c.flow, chunk)]
        h.event(TcpSent(c.flow, 3, 1 << 20))
        c.expect(ACK, ack=c.seq)
    assert c.ep.state is State.FIN_WAIT_2
    assert h.layer.next_deadline() is None  # no timer kills a half-closed flow


def test_fin_wait_2_fin_enters_time_wait_and_closes_host():
    h = Harness()
    c = open_time_wait(h)
    assert h.layer.table.get(c.flow).evictable
    assert h.layer.next_deadline() == pytest.approx(h.now + h.config.time_wait_s)


def test_fin_and_ack_of_our_fin_together_from_fin_wait_1():
    h = Harness()
    c = open_fin_wait_1(h)
    c.ack = (c.fin_seq + 1) & M
    c.send(FIN | ACK)
    assert h.actions() == [ShutdownTcp(c.flow), CloseTcp(c.flow, False)]
    c.expect(ACK, ack=c.seq)
    assert c.ep.state is State.TIME_WAIT


def test_closing_ack_enters_time_wait():
    h = Harness()
    c = open_closing(h)
    c.ack = (c.fin_seq + 1) & M
    c.send(ACK)
    c.expect_none()
    assert h.actions() == [CloseTcp(c.flow, False)]
    assert c.ep.state is State.TIME_WAIT


def test_closing_retransmits_fin():
    h = Harness()
    c = open_closing(h)
    h.run_until(h.layer.next_deadline())
    c.expect(FIN | ACK, seq=c.fin_seq, ack=c.seq)


# ------------------------------------------------------------ TIME_WAIT


def test_time_wait_reacks_retransmitted_fin_and_restarts_timer():
    h = Harness()
    c = open_time_wait(h)
    h.now += 1.5
    c.send(FIN | ACK, seq=(c.seq - 1) & M, advance=False)
    c.expect(ACK, ack=c.seq)
    assert c.ep.deadline() == pytest.approx(h.now + h.config.time_wait_s)
    assert h.actions() == []
    h.run_until(2.5)  # past the original expiry: still there
    assert c.ep.state is State.TIME_WAIT
    h.run_until(3.5)
    assert h.layer.table.get(c.flow) is None


def test_time_wait_expires_and_frees_flow():
    h = Harness()
    c = open_time_wait(h)
    h.run_until(h.now + h.config.time_wait_s)
    assert h.layer.table.get(c.flow) is None
    assert h.actions() == []  # the host socket was closed on entry
    assert h.layer.next_deadline() is None


def test_time_wait_new_syn_reopens():
    h = Harness()
    c = open_time_wait(h)
    c.send(SYN, seq=(c.seq + 100000) & M)
    (o,) = h.actions()
    assert o.flow != c.flow
    assert h.layer.table.get(c.flow) is None
    assert h.counters["tcp.time_wait_reused"] == 1


def test_time_wait_old_syn_is_challenged():
    h = Harness()
    c = open_time_wait(h)
    c.send(SYN, seq=(c.seq - 100) & M, advance=False)
    assert h.actions() == []
    c.expect(ACK, ack=c.seq)
    assert c.ep.state is State.TIME_WAIT


def test_time_wait_reuse_by_timestamp():
    h = Harness()
    c = open_established(h, timestamp=(100, 0))
    h.event(TcpHostEof(c.flow))
    s = c.expect(FIN | ACK)
    c.ack = (s.header.seq + 1) & M
    c.send(FIN | ACK)
    h.actions()
    c.recv()
    assert c.ep.state is State.TIME_WAIT
    c.send(SYN, seq=(c.seq - 50) & M, timestamp=(9999, 0))  # older seq, newer TS
    assert isinstance(h.actions()[0], OpenTcp)


def test_time_wait_rst_closes_quietly():
    h = Harness()
    c = open_time_wait(h)
    c.send(RST)
    assert h.actions() == []
    assert h.layer.table.get(c.flow) is None


# ------------------------------------------------------------ RST


def test_guest_rst_with_exact_seq_resets_host():
    h = Harness()
    c = open_established(h)
    assert c.send(RST) is Disposition.HANDLED
    c.expect_none()
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None


def test_guest_rst_at_our_ack_point_counts_as_exact():
    h = Harness()
    c = open_established(h)
    base = c.seq
    c.send(ACK, b"queued")  # waits for the host; our ACK point stays at base
    h.actions()
    c.send(RST, seq=base)
    assert h.actions() == [CloseTcp(c.flow, True)]


def test_guest_rst_in_window_but_not_exact_is_challenged():
    h = Harness()
    c = open_established(h)
    c.send(RST, seq=(c.seq + 100) & M, advance=False)
    c.expect(ACK, ack=c.seq)
    assert h.actions() == []
    assert c.ep.state is State.ESTABLISHED
    assert h.counters["tcp.rx_rst_challenged"] == 1


def test_guest_rst_out_of_window_is_dropped():
    h = Harness()
    c = open_established(h)
    c.send(RST, seq=(c.seq - 5000) & M, advance=False)
    c.expect_none()
    assert h.counters["tcp.rx_rst_out_of_window"] == 1


def test_syn_in_established_is_challenged_and_rate_limited():
    h = Harness(challenge_acks_per_s=2)
    c = open_established(h)
    for _ in range(3):
        c.send(SYN, seq=(c.seq + 10) & M, advance=False)
    assert len(c.recv()) == 2
    assert h.counters["tcp.rx_syn_challenged"] == 3
    assert h.counters["tcp.challenge_ack_limited"] == 1
    h.now += 1.0
    c.send(SYN, seq=(c.seq + 10) & M, advance=False)
    assert len(c.recv()) == 1
    assert c.ep.state is State.ESTABLISHED


def test_host_reset_sends_rst_to_guest():
    h = Harness()
    c = open_established(h)
    h.event(TcpHostReset(c.flow, errno.ECONNRESET))
    c.expect(RST | ACK, seq=c.ack, ack=c.seq)
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None
    assert h.counters["tcp.host_reset"] == 1


def test_host_reset_in_time_wait_is_ignored():
    h = Harness()
    c = open_time_wait(h)
    h.event(TcpHostReset(c.flow, errno.EPIPE))
    c.expect_none()
    assert h.counters["tcp.event_unexpected"] == 1


def test_host_events_after_eof_are_unexpected():
    h = Harness()
    c = open_fin_wait_1(h)
    h.event(TcpHostEof(c.flow))
    h.event(TcpReceived(c.flow, b"x"))
    assert h.counters["tcp.event_unexpected"] == 2
    c.expect_none()


def test_paws_drops_old_timestamp():
    h = Harness()
    c = open_established(h, timestamp=(100, 0))
    c.send(ACK, b"old", timestamp=(50, 0), advance=False)
    c.expect(ACK, ack=c.seq)
    assert h.actions() == []
    assert h.counters["tcp.rx_paws"] == 1


def test_connection_churn_stays_bounded():
    """Thousands of short connections through a small table: TIME_WAIT flows
    are recycled, lookups stay dict lookups, the timer heap stays bounded."""
    from netstack.nat import PROTO_TCP, FlowTable

    from .helpers import Conn

    h = Harness(table=FlowTable(limits={PROTO_TCP: 64}))
    table = h.layer.table
    for i in range(3000):
        c = Conn(h, gport=1024 + i)
        c.send(SYN)
        (o,) = h.actions()
        c.flow = o.flow
        h.event(TcpConnected(c.flow, 1 << 16))
        s = c.expect(SYN | ACK)
        c.ack = (s.header.seq + 1) & M
        c.send(ACK | FIN)  # handshake ACK with a FIN: ShutdownTcp at once
        h.event(TcpHostEof(c.flow))
        acts = h.actions()
        assert ShutdownTcp(c.flow) in acts
        segs = c.recv()
        assert segs[-1].header.flags & FIN
        c.ack = (segs[-1].header.seq + 1) & M
        c.send(ACK)
        assert h.actions() == [CloseTcp(c.flow, False)]  # LAST_ACK -> CLOSED
        h.now += 0.001
        assert len(table) <= 64
        assert len(table._heaps.get(PROTO_TCP, ())) <= 2 * 64 + 64 + 1
    assert len(table) == 0
    assert h.counters["tcp.passive_opens"] == 3000


def test_segments_while_fin_waits_for_the_host():
    h = Harness()
    c = open_established(h)
    c.send(ACK | FIN, b"abc")
    h.actions()  # SendTcp outstanding: the FIN waits
    c.send(ACK | FIN, b"abc", seq=(c.seq - 4) & M, advance=False)  # retransmission
    c.expect(ACK, ack=(c.seq - 4) & M)
    assert h.counters["tcp.rx_duplicate"] == 1
    c.send(ACK, b"zz", seq=(c.seq - 1) & M, advance=False)  # data where the FIN is
    c.expect(ACK)
    assert h.counters["tcp.rx_after_fin"] == 1


def test_paws_ignores_a_stale_ts_recent():
    h = Harness()
    c = open_established(h, timestamp=(4000, 0))  # TS.Recent becomes 5000
    c.send(ACK, b"old", timestamp=(10, 0), advance=False)
    assert h.counters["tcp.rx_paws"] == 1  # an older TSval: dropped...
    c.recv()
    h.now += 25 * 86400  # ...but after 25 idle days TS.Recent is stale
    c.send(ACK, b"new", timestamp=(10, 0))
    assert h.actions() == [SendTcp(c.flow, b"new")]
    assert h.counters["tcp.rx_paws"] == 1
