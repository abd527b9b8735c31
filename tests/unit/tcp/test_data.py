"""ESTABLISHED: data both ways, windows, backpressure, GSO segments."""

from netstack.actions import ReadTcp, SendTcp, WatchTcpWritable
from netstack.events import TcpReceived, TcpSent, TcpWritable

from .helpers import ACK, FIN, PSH, RST, Harness, host_read, open_established

MB = 1 << 20

# ------------------------------------------------------------ guest → host


def test_guest_data_is_acked_only_once_the_host_took_it():
    h = Harness()
    c = open_established(h)
    c.send(ACK | PSH, b"hello")
    c.expect_none()  # not yet: the host socket has not taken it
    assert h.actions() == [SendTcp(c.flow, b"hello")]
    h.event(TcpSent(c.flow, 5, MB))
    c.expect(ACK, ack=c.seq, window=MB >> 6)
    assert c.ep.tcb.rcv_nxt == c.seq


def test_one_send_outstanding_later_segments_are_batched():
    h = Harness()
    c = open_established(h)
    c.send(ACK, b"a" * 100)
    c.send(ACK, b"b" * 100)
    c.send(ACK, b"c" * 100)
    assert h.actions() == [SendTcp(c.flow, b"a" * 100)]
    h.event(TcpSent(c.flow, 100, MB))
    assert h.actions() == [SendTcp(c.flow, b"b" * 100 + b"c" * 100)]
    c.expect(ACK, ack=(c.seq - 200) & 0xFFFFFFFF)
    h.event(TcpSent(c.flow, 200, MB))
    c.expect(ACK, ack=c.seq)
    assert h.actions() == []


def test_short_write_waits_for_writable():
    h = Harness()
    c = open_established(h)
    base = c.seq
    c.send(ACK, b"0123456789")
    h.actions()
    h.event(TcpSent(c.flow, 4, 0))
    s = c.expect(ACK, ack=base + 4)
    # no space left, but the right edge already offered never moves left
    assert s.header.window == -(-(65535 - 4) // 64)
    c.send(ACK, b"zz")  # within the offered window: queued, not acked
    c.expect_none()
    assert h.actions() == []  # no second SendTcp while blocked
    h.event(TcpWritable(c.flow, 5000))
    assert h.actions() == [SendTcp(c.flow, b"456789zz")]
    h.event(TcpSent(c.flow, 8, 5000))
    c.expect(ACK, ack=c.seq)


def test_window_follows_host_send_space_and_watch_reopens_it():
    h = Harness()
    c = open_established(h, send_space=2000)
    c.send(ACK, b"x" * 1500)
    h.actions()
    h.event(TcpSent(c.flow, 1500, 500))
    s = c.expect(ACK, ack=c.seq)
    # right edge = rcv_nxt + send space; never moved left
    assert s.header.window << 6 >= 500
    assert h.actions() == [WatchTcpWritable(c.flow)]  # nothing else will reopen it
    h.event(TcpWritable(c.flow, 2000))
    s = c.expect(ACK, ack=c.seq)  # window update
    assert s.header.window == -(-2000 // 64)


def test_window_is_never_shrunk():
    h = Harness()
    c = open_established(h)
    c.send(ACK, b"x" * 10)
    h.actions()
    h.event(TcpSent(c.flow, 10, MB))
    s = c.expect(ACK, ack=c.seq)
    edge = s.header.ack + (s.header.window << 6)
    assert edge - s.header.ack >= MB - 64
    c.send(ACK, b"y" * 1000)
    h.actions()
    h.event(TcpSent(c.flow, 1000, 100))  # the host reports much less space
    s = c.expect(ACK, ack=c.seq)
    assert s.header.ack + (s.header.window << 6) >= edge


def test_out_of_order_segments_wait_for_the_hole():
    h = Harness()
    c = open_established(h)
    base = c.seq
    c.send(ACK, b"B" * 100, seq=base + 100)
    c.expect(ACK, ack=base)  # immediate duplicate ACK
    assert h.actions() == []
    c.send(ACK, b"C" * 100, seq=base + 200)
    c.expect(ACK, ack=base)
    c.send(ACK, b"A" * 100, seq=base)
    assert h.actions() == [SendTcp(c.flow, b"A" * 100 + b"B" * 100 + b"C" * 100)]
    h.event(TcpSent(c.flow, 300, MB))
    c.expect(ACK, ack=base + 300)
    assert h.counters["tcp.rx_out_of_order"] == 2


def test_out_of_order_fin_is_kept():
    h = Harness()
    c = open_established(h)
    base = c.seq
    c.send(ACK | FIN, b"B" * 10, seq=base + 10)
    c.expect(ACK, ack=base)
    c.send(ACK, b"A" * 10, seq=base)
    assert h.actions() == [SendTcp(c.flow, b"A" * 10 + b"B" * 10)]
    h.event(TcpSent(c.flow, 20, MB))
    acts = h.actions()
    assert [type(a).__name__ for a in acts] == ["ShutdownTcp"]
    c.expect(ACK, ack=base + 21)


def test_duplicate_and_overlapping_data():
    h = Harness()
    c = open_established(h)
    base = c.seq
    c.send(ACK, b"abcdef")
    h.actions()
    h.event(TcpSent(c.flow, 6, MB))
    c.expect(ACK, ack=base + 6)
    c.send(ACK, b"abcdef", seq=base)  # a pure duplicate
    c.expect(ACK, ack=base + 6)
    assert h.actions() == []
    c.send(ACK, b"defghi", seq=base + 3)  # overlaps: only "ghi" is new
    assert h.actions() == [SendTcp(c.flow, b"ghi")]
    assert h.counters["tcp.rx_out_of_window"] == 1


def test_retransmission_of_bytes_queued_for_host_is_trimmed():
    h = Harness()
    c = open_established(h)
    base = c.seq
    c.send(ACK, b"abc")
    assert h.actions() == [SendTcp(c.flow, b"abc")]
    c.send(ACK, b"abc", seq=base)  # the guest retransmits before our ACK
    c.expect(ACK, ack=base)
    assert h.counters["tcp.rx_duplicate"] == 1
    assert h.actions() == []


def test_guest_super_segment_is_an_ordinary_segment():
    h = Harness()
    c = open_established(h)
    data = bytes(range(256)) * 250  # 64000 bytes in one segment
    c.send(ACK, data)
    assert h.actions() == [SendTcp(c.flow, data)]


def test_data_beyond_window_is_trimmed():
    h = Harness()
    c = open_established(h, send_space=1000)
    # window offered in the SYN-ACK: 1000 bytes
    c.send(ACK, b"y" * 1500)
    c.expect(ACK, ack=(c.seq - 1500) & 0xFFFFFFFF)
    assert h.actions() == [SendTcp(c.flow, b"y" * 1000)]
    assert h.counters["tcp.rx_beyond_window"] == 1


def test_segment_far_outside_window_draws_an_ack():
    h = Harness()
    c = open_established(h)
    c.send(ACK, b"q", seq=(c.seq + (1 << 30)) & 0xFFFFFFFF, advance=False)
    c.expect(ACK, ack=c.seq)
    assert h.counters["tcp.rx_out_of_window"] == 1


# ------------------------------------------------------------ host → guest


def test_host_data_becomes_one_gso_segment():
    h = Harness()
    c = open_established(h)
    data = bytes(range(256)) * 40  # 10240 bytes: within the initial cwnd
    host_read(h, c, data)
    s = c.expect(ACK | PSH, data, seq=c.ack, ack=c.seq, gso=1460)
    c.take_data(s)
    c.send(ACK)
    (r,) = h.actions()
    assert isinstance(r, ReadTcp)


def test_small_host_data_is_not_gso():
    h = Harness()
    c = open_established(h)
    host_read(h, c, b"x" * 1460)
    c.expect(ACK | PSH, b"x" * 1460, gso=0)


def test_gso_size_accounts_for_timestamps():
    h = Harness()
    c = open_established(h, timestamp=(1, 0))
    host_read(h, c, b"x" * 3000)
    s = c.expect(ACK | PSH, b"x" * 3000, gso=1460 - 12)
    assert s.header.timestamp is not None


def test_initial_cwnd_limits_the_first_flight():
    h = Harness()
    c = open_established(h)
    host_read(h, c, b"z" * 200_000)
    s = c.expect(ACK, b"z" * 14600, gso=1460)  # 10 segments (RFC 6928)
    c.take_data(s)
    c.send(ACK)  # slow start, byte counting: cwnd doubles
    s = c.expect(ACK, b"z" * 29200)
    c.take_data(s)
    c.send(ACK)
    s = c.expect(ACK, b"z" * 58400)
    c.take_data(s)
    c.send(ACK)
    segs = c.recv()
    # one segment stops at ~64 KiB (MAX_FRAME_LEN minus headers)
    assert all(len(x.payload) <= 65535 - 14 - 20 - 20 for x in segs)
    assert [len(x.payload) for x in segs] == [65535 - 14 - 20 - 20, 200_000 - 102_200 - 65481]
    assert [x.gso_size for x in segs] == [1460, 1460]


def test_sending_respects_the_guest_window():
    h = Harness()
    c = open_established(h, wscale=None)
    c.window = 3000
    c.send(ACK)
    h.actions()
    host_read(h, c, b"w" * 5000)
    s = c.expect(ACK, b"w" * 3000)
    c.take_data(s)
    c.send(ACK)  # acks 3000 and opens the window again
    s = c.expect(ACK | PSH, b"w" * 2000)


def test_credit_is_window_minus_buffered():
    h = Harness()
    c = open_established(h, wscale=None)
    c.window = 10000
    c.send(ACK)
    assert h.actions() == [ReadTcp(c.flow, 10000)]
    host_read(h, c, b"r" * 4000)
    s = c.expect(ACK | PSH, b"r" * 4000)
    assert h.actions() == []  # the edge already lowered its credit to 6000
    c.take_data(s)
    c.send(ACK)
    assert h.actions() == [ReadTcp(c.flow, 10000)]


def test_host_overrun_aborts():
    h = Harness(snd_buf_max=5000)
    c = open_established(h)
    assert c.credit == 5000
    h.event(TcpReceived(c.flow, b"o" * 6000))
    c.expect(RST | ACK)
    assert h.counters["tcp.host_overrun"] == 1
    assert h.layer.table.get(c.flow) is None


def test_window_update_from_guest_restarts_sending():
    h = Harness()
    c = open_established(h, wscale=None)
    c.window = 0
    c.send(ACK)
    host_read(h, c, b"p" * 100)
    c.expect_none()  # zero window: nothing may be sent
    c.window = 5000
    c.send(ACK)
    c.expect(ACK | PSH, b"p" * 100)


def test_ack_of_unsent_data_is_answered_and_dropped():
    h = Harness()
    c = open_established(h)
    c.send(ACK, b"data", ack=(c.ack + 1000) & 0xFFFFFFFF, advance=False)
    c.expect(ACK, ack=c.seq)
    assert h.actions() == []
    assert h.counters["tcp.rx_ack_unsent"] == 1


def test_events_in_wrong_states_are_counted():
    h = Harness()
    c = open_established(h)
    h.event(TcpSent(c.flow, 10, 10))  # no SendTcp outstanding
    h.event(TcpWritable(c.flow + 100, 10))
    assert h.counters["tcp.event_unexpected"] == 1
    assert h.counters["tcp.event_no_flow"] == 1


def test_reorder_queue_full_is_counted():
    h = Harness(reorder_max_segments=2)
    c = open_established(h)
    base = c.seq
    for i in range(1, 4):
        c.send(ACK, b"o" * 10, seq=base + 20 * i, advance=False)
        c.expect(ACK, ack=base)
    assert h.counters["tcp.rx_out_of_order"] == 2
    assert h.counters["tcp.rx_reorder_full"] == 1
    c.send(ACK, b"o" * 10, seq=base + 20, advance=False)  # already queued
    c.expect(ACK, ack=base)
    assert h.counters["tcp.rx_duplicate"] == 1


def test_out_of_order_segment_is_trimmed_to_the_window():
    h = Harness()
    c = open_established(h, send_space=1000)  # window offered: 1000
    base = c.seq
    c.send(ACK | FIN, b"t" * 800, seq=base + 500, advance=False)  # ends 300 beyond
    c.expect(ACK, ack=base)
    assert h.counters["tcp.rx_beyond_window"] == 1  # 300 bytes and the FIN trimmed
    # the ACK rounded the window up to its scale unit: 16 << 6 = 1024
    c.send(ACK, b"u" * 10, seq=base + 1024, advance=False)  # starts at the edge
    c.expect(ACK, ack=base, window=16)
    assert h.counters["tcp.rx_out_of_window"] == 1
    c.send(ACK, b"s" * 500, seq=base, advance=False)
    assert h.actions() == [SendTcp(c.flow, b"s" * 500 + b"t" * 500)]  # trimmed, FIN dropped


def test_fin_is_taken_at_a_zero_window():
    h = Harness()
    c = open_established(h, send_space=10)
    c.send(ACK, b"0123456789")
    h.actions()
    h.event(TcpSent(c.flow, 10, 0))
    c.expect(ACK, ack=c.seq, window=0)
    assert h.actions() == [WatchTcpWritable(c.flow)]
    c.send(ACK | FIN)  # FIN exactly at the closed window's edge
    assert [type(a).__name__ for a in h.actions()] == ["ShutdownTcp"]
    c.expect(ACK, ack=c.seq, window=0)
