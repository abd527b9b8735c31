"""Active open toward the guest (port forwards): SYN_SENT."""

from netstack.actions import CloseTcp, ReadTcp
from netstack.nat import FlowState
from netstack.tcp import State

from netstack.tcp.seq import MASK, gt

from .helpers import ACK, GUEST, PSH, REMOTE, RST, SYN, Harness, host_read, open_syn_sent, open_time_wait


def test_syn_carries_our_options():
    h = Harness()
    c = open_syn_sent(h, send_space=4000)
    hdr = c.syn.header
    assert (hdr.src_port, hdr.dst_port) == (55555, 8080)
    assert hdr.mss == 1460 and hdr.wscale == h.config.rcv_wscale
    assert hdr.timestamp is not None and hdr.timestamp[1] == 0
    assert hdr.sack_permitted is False
    assert hdr.window == 4000 and hdr.ack == 0
    assert c.syn.gso_size == 0
    assert h.layer.table.get(c.flow).state is FlowState.OPENING
    assert h.counters["tcp.active_opens"] == 1


def test_syn_without_timestamps_when_disabled():
    h = Harness(timestamps=False, window_scaling=False)
    c = open_syn_sent(h)
    assert c.syn.header.timestamp is None and c.syn.header.wscale is None


def test_syn_ack_establishes():
    h = Harness()
    c = open_syn_sent(h)
    c.send(SYN | ACK, mss=1400, wscale=5, timestamp=(50, c.syn.header.timestamp[0]))
    s = c.expect(ACK, seq=c.ack, ack=c.seq)
    assert s.header.timestamp[1] == 50
    (r,) = h.actions()
    assert isinstance(r, ReadTcp) and r.credit == min(65535, h.config.snd_buf_max)
    ep = c.ep
    assert ep.state is State.ESTABLISHED
    assert ep.tcb.mss == 1400 and ep.tcb.snd_wscale == 5 and ep.tcb.ts_ok
    assert h.layer.table.get(c.flow).state is FlowState.ESTABLISHED
    assert h.layer.next_deadline() is None  # nothing outstanding


def test_syn_ack_without_options_disables_them():
    h = Harness()
    c = open_syn_sent(h)
    c.send(SYN | ACK, window=2000)
    c.expect(ACK)
    t = c.ep.tcb
    assert not t.ts_ok and t.rcv_wscale == 0 and t.snd_wscale == 0 and t.mss == 536
    assert h.actions() == [ReadTcp(c.flow, 2000)]


def test_syn_ack_with_data_ignores_data():
    h = Harness()
    c = open_syn_sent(h)
    c.send(SYN | ACK, b"zzz", advance=False)
    c.seq += 1
    c.expect(ACK, ack=c.seq)  # the data is not acknowledged
    assert h.counters["tcp.rx_syn_data_ignored"] == 1


def test_syn_retransmits_with_backoff_then_reports_failure():
    h = Harness()
    c = open_syn_sent(h)
    times = []
    while h.layer.next_deadline() is not None:
        h.run_until(h.layer.next_deadline())
        for s in h.segments():
            assert s.header.flags == SYN and s.header.seq == c.syn.header.seq
            times.append(h.now)
    assert times == [1.0, 3.0, 7.0, 15.0, 31.0]
    # the edge closes the accepted host socket (abortively)
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None
    assert h.counters["tcp.retransmit_timeout"] == 1


def test_rst_from_guest_reports_failure():
    h = Harness()
    c = open_syn_sent(h)
    c.send(RST | ACK, seq=0, ack=c.ack)
    c.expect_none()
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None


def test_rst_without_ack_is_ignored():
    h = Harness()
    c = open_syn_sent(h)
    c.send(RST, seq=0)
    assert c.ep.state is State.SYN_SENT
    assert h.counters["tcp.rx_rst_out_of_window"] == 1


def test_unacceptable_ack_answers_rst():
    h = Harness()
    c = open_syn_sent(h)
    c.send(SYN | ACK, ack=(c.ack + 10) & 0xFFFFFFFF, advance=False)
    c.expect(RST, seq=(c.ack + 10) & 0xFFFFFFFF)
    assert c.ep.state is State.SYN_SENT
    c.send(RST | ACK, ack=(c.ack + 10) & 0xFFFFFFFF, advance=False)
    c.expect_none()  # never a RST for a RST
    assert h.counters["tcp.rx_bad_ack"] == 2


def test_segment_without_syn_is_dropped():
    h = Harness()
    c = open_syn_sent(h)
    c.send(ACK, advance=False)
    c.expect_none()
    assert h.counters["tcp.rx_no_syn"] == 1


def test_simultaneous_open():
    h = Harness()
    c = open_syn_sent(h)
    c.send(SYN, mss=1460)
    s = c.expect(SYN | ACK, seq=c.syn.header.seq, ack=c.seq)
    assert c.ep.state is State.SYN_RECEIVED
    c.send(ACK)
    assert c.ep.state is State.ESTABLISHED
    assert isinstance(h.actions()[0], ReadTcp)
    assert s.header.mss == 1460


def test_host_reset_in_syn_sent_closes_quietly():
    from netstack.events import TcpHostReset

    h = Harness()
    c = open_syn_sent(h)
    h.event(TcpHostReset(c.flow, 104))
    c.expect_none()
    assert h.actions() == [CloseTcp(c.flow, True)]


def test_open_refused_while_key_busy_and_time_wait_is_recycled():
    h = Harness()
    c = open_syn_sent(h)
    assert h.layer.open_to_guest(0.0, 0, GUEST, 8080, REMOTE, 55555, 1000) is None
    assert h.counters["tcp.open_refused_busy"] == 1
    tw = open_time_wait(h)
    new = h.layer.open_to_guest(0.0, 0, tw.guest, tw.gport, tw.remote, tw.rport, 1000)
    assert new is not None and new != tw.flow
    assert h.layer.table.get(tw.flow) is None
    assert h.counters["tcp.time_wait_reused"] == 1
    assert c.ep.state is State.SYN_SENT


def test_open_refused_when_full():
    from netstack.nat import PROTO_TCP, FlowTable

    h = Harness(table=FlowTable(limits={PROTO_TCP: 1}))
    open_syn_sent(h)
    assert h.layer.open_to_guest(0.0, 0, GUEST, 8081, REMOTE, 1, 1000) is None
    assert h.counters["tcp.open_refused_full"] == 1


def test_a_new_incarnation_of_a_4_tuple_starts_above_the_last_one():
    """RFC 6528 / RFC 6191: a SYN reusing a 4-tuple must be "newer" than the
    last connection on it (sequence number and TSval), or a guest that still
    holds the tuple in TIME_WAIT answers with an ACK and the connection waits
    for a SYN retransmission (1 s).  Random ISS/TSval offsets fail this half
    the time; 32 tuples make a coincidence impossible."""
    h = Harness()
    for port in range(50000, 50032):
        c = open_syn_sent(h, src_port=port)
        ts_syn = c.syn.header.timestamp[0]
        c.send(SYN | ACK, timestamp=(7, ts_syn))
        c.expect(ACK)
        h.actions()
        h.advance(0.05)
        host_read(h, c, b"x" * 100)
        s = c.expect(ACK | PSH, b"x" * 100)
        last_seq_end = (s.header.seq + len(s.payload)) & MASK
        last_tsval = s.header.timestamp[0]
        c.send(RST | ACK, ack=last_seq_end, advance=False)  # gone; the guest may keep the tuple
        h.actions()
        h.advance(0.01)
        again = open_syn_sent(h, src_port=port)
        assert gt(again.syn.header.seq, last_seq_end), port
        assert gt(again.syn.header.timestamp[0], last_tsval), port
        again.send(RST | ACK, seq=0, ack=again.ack)
        h.actions()
