"""The native datapath in threaded mode (sn_dp_start): its own pthread reads
the TAP stand-in and the host sockets, answers by itself, queues slow items
in order behind an eventfd, pushes back when that queue is full, runs its
flows' timers, and stops cleanly.  The logic per frame is the synchronous
one (the parity tests hold it to the Python twin); these tests hold the
thread to the same results without any call from Python per packet.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time

import pytest

from slirp.datapath import Closed, Ejected, Frame, UdpError

from .dp_helpers import HAVE_NATIVE, GuestTcp, Side, base_tcb, guest_udp, parse_out
from netstack.wire.tcp import ACK, FIN, PSH, URG

pytestmark = pytest.mark.skipif(not HAVE_NATIVE, reason="slirp._native not built")


def threaded_side(**kw) -> Side:
    side = Side("native", **kw)
    side.dp.start()
    assert side.dp.threaded
    return side


def wait_readable(fd, timeout=2.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def frames_until(side: Side, pred, timeout=2.0) -> list[bytes]:
    """Frames the datapath wrote to the TAP stand-in, until ``pred(frames)``."""
    got: list[bytes] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if wait_readable(side.tap_guest, 0.05):
            got += side.from_tap()
            if pred(got):
                return got
    return got


def take_until(side: Side, n: int, timeout=3.0) -> list:
    items: list = []
    end = time.monotonic() + timeout
    while len(items) < n and time.monotonic() < end:
        if wait_readable(side.dp.fileno(), 0.05):
            items += side.dp.take()
    return items


def host_bytes(side: Side, flow: int, n: int, timeout=2.0) -> bytes:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = side.drain_host(flow)
        if len(got) >= n:
            return got
        time.sleep(0.002)
    return side.drain_host(flow)


def not_ip(i: int, size: int = 60) -> bytes:
    """A slow frame (an unknown EtherType) numbered ``i``."""
    body = struct.pack("!I", i) + bytes(max(0, size - 28))
    return bytes(10) + bytes.fromhex("525500000202020000000064") + b"\x88\xb5" + body


def test_established_flow_moves_both_ways_with_no_python_call_per_packet():
    side = threaded_side()
    try:
        side.add_tcp(1)
        g = GuestTcp()
        side.to_tap(g.frame(ACK | PSH, b"ping"))
        assert host_bytes(side, 1, 4) == b"ping"
        acks = frames_until(side, lambda fs: any(parse_out(f)["ack"] == 5005 for f in fs))
        assert acks and parse_out(acks[-1])["ack"] == 5005
        side.conns[1].peer.send(b"pong")
        out = frames_until(side, lambda fs: any(parse_out(f)["payload"] for f in fs))
        data = [parse_out(f) for f in out if parse_out(f)["payload"]]
        assert data[0]["payload"] == b"pong" and data[0]["seq"] == 1001
        # nothing was slow: the eventfd never became readable
        assert not wait_readable(side.dp.fileno(), 0.05)
        assert side.dp.take() == []
        st = side.dp.stats()
        assert st["dp.tcp_to_host_bytes"] == 4 and st["dp.tcp_to_guest_bytes"] == 4
    finally:
        side.close()


def test_slow_items_are_queued_in_order_behind_the_eventfd():
    side = threaded_side()
    try:
        side.add_tcp(1)
        g = GuestTcp()
        side.to_tap(not_ip(0))
        side.to_tap(g.frame(ACK | PSH, b"abc"))
        side.to_tap(g.frame(ACK | URG))  # ejects the flow: Ejected, then the segment itself
        side.to_tap(not_ip(1))
        items = take_until(side, 4)
        assert [type(i) for i in items] == [Frame, Ejected, Frame, Frame]
        assert items[0].data == not_ip(0)
        assert items[1].flow == 1 and items[1].reason == "segment"
        assert items[1].tcb["rcv_nxt"] == 5004  # the data before the FIN went to the host
        assert parse_out(items[2].data)["flags"] & URG
        assert items[3].data == not_ip(1)
        assert not side.dp.owns(1)
        assert host_bytes(side, 1, 3) == b"abc"
    finally:
        side.close()


def test_a_full_queue_stops_the_thread_reading_until_python_takes_it():
    side = threaded_side()
    try:
        n, size = 400, 60000  # 24 MB of slow frames: the 8 MiB queue fills several times
        sent = 0
        # phase 1: nobody takes; the thread must stop reading once the queue is full
        end = time.monotonic() + 10
        while side.dp.stats()["dp.queue_stalls"] == 0 and time.monotonic() < end:
            try:
                side.tap_guest.send(not_ip(sent, size))
                sent += 1
            except BlockingIOError:
                time.sleep(0.01)
        assert side.dp.stats()["dp.queue_stalls"] >= 1
        read = side.dp.stats()["dp.tap_frames"]
        time.sleep(0.1)
        assert side.dp.stats()["dp.tap_frames"] == read, "a stalled thread reads nothing"
        # phase 2: take and send the rest; nothing is lost, everything in order
        items: list = []
        end = time.monotonic() + 20
        while (sent < n or len(items) < n) and time.monotonic() < end:
            while sent < n:
                try:
                    side.tap_guest.send(not_ip(sent, size))
                except BlockingIOError:
                    break
                sent += 1
            if wait_readable(side.dp.fileno(), 0.05):
                items += side.dp.take()
        assert len(items) == n
        assert [struct.unpack_from("!I", i.data, 24)[0] for i in items] == list(range(n))
        st = side.dp.stats()
        assert st["dp.records_lost"] == 0
        assert st["dp.slow_frames"] == n
    finally:
        side.close()


def test_the_thread_runs_retransmission_timers():
    side = threaded_side()
    try:
        side.add_tcp(1, tcb=base_tcb(rto=0.2))
        side.conns[1].peer.send(b"x" * 100)
        first = frames_until(side, lambda fs: any(parse_out(f)["payload"] for f in fs))
        assert any(parse_out(f)["seq"] == 1001 for f in first)
        t0 = time.monotonic()
        again = frames_until(side, lambda fs: any(parse_out(f)["payload"] for f in fs), timeout=3)
        took = time.monotonic() - t0
        assert [parse_out(f)["seq"] for f in again if parse_out(f)["payload"]][:1] == [1001]
        assert 0.1 < took < 1.5
        assert side.dp.stats()["dp.rto_expiries"] >= 1
    finally:
        side.close()


def test_control_calls_while_the_thread_runs():
    side = threaded_side()
    try:
        for flow in range(1, 51):
            side.add_tcp(flow, gport=40000 + flow)
        assert all(side.dp.owns(f) for f in range(1, 51))
        ej = side.dp.eject_tcp(7, 0.0)
        assert isinstance(ej, Ejected) and ej.reason == "requested" and not side.dp.owns(7)
        # a frame for the ejected flow is slow now; one for an installed flow is not
        side.to_tap(GuestTcp(gport=40007).frame(ACK | PSH, b"late"))
        side.to_tap(GuestTcp(gport=40008).frame(ACK | PSH, b"on time"))
        items = take_until(side, 1)
        assert len(items) == 1 and parse_out(items[0].data)["payload"] == b"late"
        assert host_bytes(side, 8, 7) == b"on time"
    finally:
        side.close()


def test_inject_hands_a_frame_to_an_installed_flow():
    side = threaded_side()
    try:
        side.add_tcp(1)
        assert side.dp.inject(GuestTcp().frame(ACK | PSH, b"again"), 0.0) == []
        assert host_bytes(side, 1, 5) == b"again"
        # not for a flow: handed back as a slow Frame at once
        assert [type(i) for i in side.dp.inject(not_ip(3), 0.0)] == [Frame]
    finally:
        side.close()


def test_an_icmp_error_on_a_udp_flow_is_one_item_not_a_busy_loop():
    """A guest datagram to a closed host port: the thread reads the ICMP
    error off the socket's error queue and queues exactly one UdpError (it
    used to re-queue one per epoll_wait while EPOLLERR stayed raised)."""
    side = threaded_side()
    try:
        srv = side.udp_server(0)
        port = srv.getsockname()[1]
        srv.close()
        sock = side.add_udp(7)
        sock.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR, as the edge sets it
        cpu = time.process_time()
        side.to_tap(guest_udp(b"nobody", dport=port))
        items = take_until(side, 1)
        time.sleep(0.2)
        items += side.dp.take()
        assert items == [UdpError(7, errno.ECONNREFUSED, socket.inet_aton(side.lo), port)]
        assert time.process_time() - cpu < 0.15, "the thread kept spinning"
        assert side.dp.stats()["dp.udp_icmp_errors"] == 1
    finally:
        side.close()


def test_a_datapath_starts_at_most_once():
    side = threaded_side()
    try:
        with pytest.raises(OSError) as again:
            side.dp.start()
        assert again.value.errno == errno.EALREADY
    finally:
        side.close()


def test_stop_joins_a_thread_that_is_waiting_or_stalled():
    for stall in (False, True):
        side = threaded_side()
        if stall:
            end = time.monotonic() + 5
            while side.dp.stats()["dp.queue_stalls"] == 0 and time.monotonic() < end:
                try:
                    side.tap_guest.send(not_ip(0, 60000))
                except BlockingIOError:
                    time.sleep(0.01)
            assert side.dp.stats()["dp.queue_stalls"] >= 1
        t0 = time.monotonic()
        side.close()  # sn_dp_free: stop, join, then free
        assert time.monotonic() - t0 < 1.0


def test_a_connection_closes_in_the_thread():
    side = threaded_side()
    try:
        side.add_tcp(1)
        g = GuestTcp()
        side.to_tap(g.frame(ACK | PSH | FIN, b"bye"))
        assert host_bytes(side, 1, 3) == b"bye"
        side.conns[1].peer.shutdown(__import__("socket").SHUT_WR)
        fins = frames_until(side, lambda fs: any(parse_out(f)["flags"] & FIN for f in fs))
        fin = [parse_out(f) for f in fins if parse_out(f)["flags"] & FIN][0]
        assert fin["seq"] == 1001 and fin["ack"] == 5005
        g.ack = 1002
        side.to_tap(g.frame(ACK))
        assert take_until(side, 1) == [Closed(1, "fin", 0)]
        assert not side.dp.owns(1)
    finally:
        side.close()


@pytest.mark.parametrize("rto", [0.1, 0.8], ids=["before_the_nap", "after_the_nap"])
def test_a_handshake_timer_fires_in_time_whether_or_not_the_install_woke_the_thread(rto):
    """An installed handshake arms a timer the sleeping thread did not know of:
    earlier than its next wake-up, the install kicks it; otherwise (its RTO
    beyond the thread's nap while connections are being opened) it is
    found when the thread wakes.  Either way the SYN-ACK's time-out comes on
    time, with nothing else happening."""
    side = threaded_side()
    try:
        time.sleep(0.05)  # the thread is asleep, with no deadline
        now = time.monotonic()
        tcb = base_tcb(snd_una=1000, srtt=-1.0, rttvar=0.0, rto=rto)
        side.add_tcp(1, tcb=tcb, state="SYN_RECEIVED", now=now)
        side.add_tcp(2, gport=40002, tcb=base_tcb(snd_una=1000, srtt=-1.0, rttvar=0.0, rto=rto + 0.3),
                     state="SYN_RECEIVED", now=time.monotonic())  # fmt: skip
        items = take_until(side, 2, timeout=rto + 2.0)
        took = time.monotonic() - now
        assert [(i.flow, i.reason, i.state) for i in items] == [(1, "timeout", "SYN_RECEIVED"),
                                                              (2, "timeout", "SYN_RECEIVED")]  # fmt: skip
        assert rto + 0.3 <= took < rto + 0.3 + 0.25, took
    finally:
        side.close()
