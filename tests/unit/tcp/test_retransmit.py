"""Retransmission: RTO and backoff, fast retransmit, NewReno, zero-window probes."""

import pytest

from netstack.actions import CloseTcp
from netstack.tcp import State

from .helpers import ACK, PSH, RST, Harness, host_read, open_established

M = 0xFFFFFFFF


def test_rto_retransmits_with_exponential_backoff_then_aborts():
    h = Harness()
    c = open_established(h)
    host_read(h, c, b"d" * 1000)
    first = c.expect(ACK | PSH, b"d" * 1000)
    assert c.ep.tcb.rto == pytest.approx(0.2)  # handshake sample ~0: the floor
    fired = []
    while h.layer.next_deadline() is not None:
        h.run_until(h.layer.next_deadline())
        for s in h.segments():
            fired.append((round(h.now, 3), s.header.flags, s.header.seq, len(s.payload)))
    retrans = [f for f in fired if f[1] != RST | ACK]
    assert all(f[2] == first.header.seq and f[3] == 1000 for f in retrans)
    gaps = [round(b[0] - a[0], 3) for a, b in zip(retrans, retrans[1:])]
    assert gaps == [0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60.0, 60.0, 60.0]  # capped at rto_max
    assert len(retrans) == h.config.max_retries
    assert fired[-1][1] == RST | ACK  # then the connection is aborted
    assert h.actions() == [CloseTcp(c.flow, True)]
    assert h.layer.table.get(c.flow) is None
    assert h.counters["tcp.retransmit_timeout"] == 1


def test_rto_goes_back_n_with_one_segment():
    h = Harness()
    c = open_established(h)
    for _ in range(3):
        host_read(h, c, b"g" * 1000)
    segs = c.recv()
    assert [len(s.payload) for s in segs] == [1000, 1000, 1000]
    base = segs[0].header.seq
    h.run_until(h.layer.next_deadline())
    # cwnd collapses to one MSS: resend from snd_una, one MSS worth
    c.expect(ACK, b"g" * 1460, seq=base)
    c.ack = (base + 1460) & M
    c.send(ACK)
    # slow start again: the rest follows
    s = c.expect(ACK | PSH, b"g" * 1540, seq=(base + 1460) & M)
    assert c.ep.tcb.snd_nxt == c.ep.tcb.snd_max == (base + 3000) & M


def test_fast_retransmit_on_three_duplicate_acks_and_recovery():
    h = Harness()
    c = open_established(h)
    for _ in range(5):
        host_read(h, c, b"f" * 1000)
    segs = c.recv()
    base = segs[0].header.seq
    c.ack = (base + 1000) & M
    c.send(ACK)  # new data acked
    c.expect_none()
    c.send(ACK)
    c.send(ACK)
    c.expect_none()  # two duplicates: nothing yet
    c.send(ACK)  # the third duplicate
    s = c.expect(ACK | PSH, b"f" * 4000, seq=(base + 1000) & M)
    assert h.counters["tcp.fast_retransmits"] == 1
    ep = c.ep
    assert ep._in_recovery
    # a partial ACK retransmits the next hole at once (RFC 6582)
    c.ack = (base + 3000) & M
    c.send(ACK)
    s = c.expect(ACK | PSH, b"f" * 2000, seq=(base + 3000) & M)
    assert ep._in_recovery
    # the full ACK ends recovery with cwnd = ssthresh-ish
    c.ack = (base + 5000) & M
    c.send(ACK)
    assert not ep._in_recovery
    assert ep.tcb.cwnd >= ep._eff_mss


def test_duplicate_acks_with_data_or_window_change_do_not_count():
    h = Harness()
    c = open_established(h)
    for _ in range(3):
        host_read(h, c, b"n" * 1000)
    c.recv()
    for _ in range(3):
        c.send(ACK, b"x")  # carries data: not a duplicate ACK
    for w in (1000, 1001, 1002):
        c.send(ACK, window=w)  # window changes: not duplicates
    assert h.counters["tcp.fast_retransmits"] == 0
    assert all(not s.payload or s.payload[0:1] != b"n" for s in c.recv())


def test_no_fast_retransmit_right_after_a_timeout():
    h = Harness()
    c = open_established(h)
    for _ in range(4):
        host_read(h, c, b"t" * 1000)
    c.recv()
    h.run_until(h.layer.next_deadline())  # RTO: recover = snd_max
    c.recv()
    for _ in range(3):
        c.send(ACK)
    assert h.counters["tcp.fast_retransmits"] == 0


def test_karn_rule_without_timestamps():
    h = Harness()
    c = open_established(h)
    assert not c.ep.tcb.ts_ok
    host_read(h, c, b"k" * 100)
    s = c.expect(ACK | PSH, b"k" * 100)
    h.run_until(h.layer.next_deadline())  # retransmitted: rto doubled
    c.recv()
    assert c.ep.tcb.rto == pytest.approx(0.4)
    h.now += 0.05
    c.take_data(s)
    c.send(ACK)  # acks a retransmitted segment: no sample (Karn)
    assert c.ep.tcb.rto == pytest.approx(0.4)
    host_read(h, c, b"k" * 100)
    s = c.expect(ACK | PSH, b"k" * 100)
    h.now += 0.3
    c.take_data(s)
    c.send(ACK)  # a clean sample of 0.3 s
    t = c.ep.tcb
    assert t.srtt == pytest.approx(0.875 * 0 + 0.125 * 0.3)
    assert t.rto == pytest.approx(t.srtt + 4 * t.rttvar)


def test_rtt_from_timestamps():
    h = Harness()
    c = open_established(h, timestamp=(1, 0))
    host_read(h, c, b"s" * 100)
    s = c.expect(ACK | PSH, b"s" * 100)
    h.now += 0.5
    c.take_data(s)
    c.ts = (5001, s.header.timestamp[0])
    c.send(ACK)
    t = c.ep.tcb
    # first real sample was the handshake (0); this one is 0.5 s
    assert t.srtt == pytest.approx(0.125 * 0.5, abs=0.002)
    assert t.rto >= 0.5


def test_zero_window_probing_never_aborts_while_the_guest_answers():
    h = Harness()
    c = open_established(h, wscale=None)
    c.window = 0
    c.send(ACK)
    host_read(h, c, b"z" * 3000)
    c.expect_none()  # nothing fits
    base = c.ack
    probes = 0
    for _ in range(20):  # far more than max_retries
        h.run_until(h.layer.next_deadline())
        s = c.expect(ACK, b"z", seq=base)  # one byte of new data (RFC 9293 §3.8.6.1)
        probes += 1
        c.send(ACK)  # not accepted: the window is still zero
    assert c.ep.state is State.ESTABLISHED
    assert h.counters["tcp.zero_window_probes"] >= 1
    # the window opens: the whole backlog goes out
    c.window = 65535
    c.send(ACK)
    s = c.expect(ACK | PSH, b"z" * 3000, seq=base)


def test_accepted_probe_byte_advances():
    h = Harness()
    c = open_established(h, wscale=None)
    c.window = 0
    c.send(ACK)
    host_read(h, c, b"ab")
    h.run_until(h.layer.next_deadline())
    s = c.expect(ACK, b"a")
    c.take_data(s)
    c.window = 100
    c.send(ACK)  # the guest took the byte and opened its window
    c.expect(ACK | PSH, b"b", seq=c.ack)


def test_old_ack_beyond_rfc5961_bound_is_challenged():
    h = Harness()
    c = open_established(h)
    c.send(ACK, ack=(c.ack - 10_000_000) & M, advance=False)
    c.expect(ACK, ack=c.seq)
    assert h.counters["tcp.rx_old_ack"] == 1


def test_sender_sws_avoidance_waits_for_ack():
    h = Harness()
    c = open_established(h, wscale=None)
    c.window = 1500
    c.send(ACK)
    host_read(h, c, b"a" * 1460)
    s = c.expect(ACK | PSH, b"a" * 1460)
    host_read(h, c, b"b" * 2000)
    c.expect_none()  # only 40 bytes of window left, data in flight: wait
    c.take_data(s)
    c.send(ACK)
    c.expect(ACK, b"b" * 1500)
