"""Parity: the native datapath and the Python one, same inputs, same outputs.

Every step goes through :class:`Twin` (tests/unit/dp_helpers.py), which
feeds both implementations and asserts that frames to the TAP (vnet header
included), host bytes, slow items, counters and deadlines are identical.  On
top of that each test asserts what the contract says must happen, so that a
rule both implementations got wrong the same way still fails; scapy
dissects what we emit (an oracle independent of our wire code).
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from netstack.wire.checksum import checksum
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, URG
from slirp.datapath import INFLIGHT_MAX, MAX_RTO_RETRIES, Closed, Ejected, Frame, TcpFlow, UdpDatagram, UdpError

from .dp_helpers import (
    DNS,
    GATEWAY,
    GATEWAY6,
    GUEST,
    GUEST6,
    GUEST_MAC,
    KINDS,
    M,
    OUR_MAC,
    GuestTcp,
    Twin,
    base_tcb,
    guest_udp,
    parse_out,
)

pytestmark = pytest.mark.skipif(len(KINDS) < 2, reason="slirp._native not built")

PEEK = pytest.mark.parametrize("peek", [True, False], ids=["peek_off", "peek_fallback"])


def complete(frame: bytes) -> bytes:
    """What the guest kernel does with a NEEDS_CSUM frame: finish the checksum."""
    buf = bytearray(frame)
    if buf[0] & 1:
        cs = buf[6] | (buf[7] << 8)
        co = buf[8] | (buf[9] << 8)
        start = 10 + cs
        value = checksum(bytes(buf[start:]))
        struct.pack_into("!H", buf, start + co, value)
    return bytes(buf[10:])


def assert_valid(frame: bytes):
    """scapy agrees with every checksum once the partial one is finished."""
    pkt = Ether(complete(frame))
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    orig = l4.chksum
    del l4.chksum
    if IP in pkt:
        ip_orig = pkt[IP].chksum
        del pkt[IP].chksum
    again = Ether(bytes(pkt))
    assert (again[TCP] if TCP in again else again[UDP]).chksum == orig
    if IP in again:
        assert again[IP].chksum == ip_orig
        assert again[IP].flags == "DF" and again[IP].ttl == 64
    return pkt


def acks(frames):
    return [parse_out(f) for f in frames if not parse_out(f)["payload"]]


def data(frames):
    return [parse_out(f) for f in frames if parse_out(f)["payload"]]


@pytest.fixture
def twin():
    t = Twin()
    yield t
    t.close()


def established(twin, flow=1, **kw):
    twin.add_tcp(flow, **kw)
    return GuestTcp(**{k: v for k, v in kw.items() if k in ("guest", "gport", "remote", "rport")})


# ---------------------------------------------------------------------- guest → host


def test_in_order_data_coalesced_into_one_ack(twin):
    g = established(twin)
    items, frames = twin.guest(*(g.frame(ACK | PSH, bytes([65 + i]) * 100) for i in range(5)))
    assert items == []
    assert len(frames) == 1, "five segments, one ACK"
    a = parse_out(frames[0])
    assert a["flags"] == ACK and a["ack"] == 5001 + 500 and a["seq"] == 1001
    assert a["sport"] == 80 and a["dport"] == 40000 and a["src"] == GATEWAY and a["dst"] == GUEST
    assert a["dst_mac"] == GUEST_MAC and a["src_mac"] == OUR_MAC
    assert a["ts"] == (int(twin.now * 1000) + 100000, 1000)  # TSval = ms + offset, TSecr = TS.Recent
    assert a["window"] << 5 == 1 << 20, "window follows rcv_buf_max (scaled by 2**5)"
    assert a["vnet"] == (1, 0, 0, 0, 34, 16)
    assert_valid(frames[0])
    assert twin.settle(1) == b"".join(bytes([65 + i]) * 100 for i in range(5))
    assert twin.py.dp.stats()["dp.acks"] == 1


def test_inject_is_one_frame_batch(twin):
    g = established(twin)
    items, frames = twin.inject(g.frame(ACK | PSH, b"handed back"))
    assert items == [] and len(frames) == 1
    assert parse_out(frames[0])["ack"] == 5001 + 11
    assert twin.settle(1) == b"handed back"
    # a frame for no installed flow comes straight back as a slow Frame
    other = GuestTcp(gport=41000).frame(ACK | PSH, b"x")
    items, frames = twin.inject(other)
    assert items == [Frame(other)] and frames == []
    # a SYN: the flow is ejected (its pending ACK first), then the SYN is slow
    items, frames = twin.inject(g.frame(SYN))
    assert [type(i) for i in items] == [Ejected, Frame] and items[0].reason == "segment"
    assert twin.py.dp.stats()["dp.tap_frames"] == 0, "injected frames were not read from the TAP"


@pytest.mark.parametrize("offload", ["csum", "none", "valid"])
def test_super_frame_is_one_send(twin, offload):
    g = established(twin)
    payload = bytes(range(256)) * 250  # 64000 bytes
    frame = g.frame(ACK | PSH, payload, offload=offload, gso=True)
    if offload == "csum":
        assert frame[1] == 1 and frame[4] | (frame[5] << 8) == 1448  # a TSO super-frame
    items, frames = twin.guest(frame)
    assert items == [] and len(frames) == 1
    assert parse_out(frames[0])["ack"] == 5001 + 64000
    assert twin.settle(1) == payload
    assert twin.py.dp.stats()["dp.tcp_to_host_bytes"] == 64000


def test_bad_checksum_without_offload_is_dropped_and_counted(twin):
    g = established(twin)
    items, frames = twin.guest(g.frame(ACK | PSH, b"corrupt", offload="bad"))
    assert items == [] and frames == []
    assert twin.py.dp.stats()["dp.bad_checksum"] == 1
    assert twin.settle(1) == b""


def test_overlapping_retransmission_sends_only_new_bytes(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | PSH, b"0123456789"))
    _, frames = twin.guest(g.frame(ACK | PSH, b"56789abcdef", seq=5001 + 5))
    assert parse_out(frames[0])["ack"] == 5001 + 16
    assert twin.settle(1) == b"0123456789abcdef"


def test_duplicate_and_out_of_order_draw_immediate_acks(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | PSH, b"abc"))
    _, frames = twin.guest(
        g.frame(ACK | PSH, b"abc", seq=5001),  # entirely old
        g.frame(ACK | PSH, b"later", seq=5001 + 10),  # beyond a hole
        g.frame(ACK | PSH, b"later", seq=5001 + 10),
    )
    assert [parse_out(f)["ack"] for f in frames] == [5004, 5004, 5004], "one ACK each, at once"
    st = twin.py.dp.stats()
    assert st["dp.duplicate"] == 1 and st["dp.out_of_order"] == 2
    assert twin.settle(1) == b"abc"


def test_paws_drops_old_timestamps(twin):
    g = established(twin)
    g.tsval = 500  # older than TS.Recent (777)
    _, frames = twin.guest(g.frame(ACK | PSH, b"stale"))
    assert len(frames) == 1 and parse_out(frames[0])["ack"] == 5001
    assert parse_out(frames[0])["ts"][1] == 777
    assert twin.py.dp.stats()["dp.paws"] == 1
    assert twin.settle(1) == b""
    g.tsval = 900
    _, frames = twin.guest(g.frame(ACK | PSH, b"fresh", seq=5001))
    assert parse_out(frames[0])["ts"][1] == 900 and twin.settle(1) == b"fresh"


def test_paws_ignores_a_ts_recent_idle_for_24_days(twin):
    g = established(twin, tcb=base_tcb(ts_recent_at=-(25 * 86400.0)))
    g.tsval = 500
    twin.guest(g.frame(ACK | PSH, b"ok"))
    assert twin.settle(1) == b"ok" and twin.py.dp.stats()["dp.paws"] == 0


def test_ack_of_unsent_data_is_answered_and_dropped(twin):
    g = established(twin)
    _, frames = twin.guest(g.frame(ACK | PSH, b"x", ack=1001 + 50))
    assert len(frames) == 1 and parse_out(frames[0])["seq"] == 1001
    assert twin.py.dp.stats()["dp.ack_unsent"] == 1
    assert twin.settle(1) == b"", "the segment is dropped, payload included"


def test_no_timestamps_flow(twin):
    g = established(twin, tcb=base_tcb(ts_ok=False))
    g.tsval = None
    _, frames = twin.guest(g.frame(ACK | PSH, b"plain"))
    a = parse_out(frames[0])
    assert "ts" not in a and a["ack"] == 5006
    assert twin.settle(1) == b"plain"
    items, _ = twin.host_send(1, b"R" * 3000)
    d = data(_)
    assert d[0]["vnet"][1:4] == (1, 54, 1460), "gso_size is the MSS without timestamps"


# ---------------------------------------------------------------------- host → guest


@PEEK
def test_host_data_becomes_gso_frames(peek):
    with Twin(peek_offset=peek) as twin:
        g = established(twin)
        blob = bytes(i % 251 for i in range(200_000))
        items, frames = twin.host_send(1, blob)
        assert items == []
        d = data(frames)
        assert sum(len(x["payload"]) for x in d) == 200_000
        assert [x["seq"] for x in d] == [1001, 1001 + 65469, 1001 + 2 * 65469, 1001 + 3 * 65469]
        for f, x in zip(frames, d):
            assert len(f) - 10 <= 65535
            assert x["flags"] == ACK | PSH and x["ack"] == 5001
            if len(x["payload"]) > 1448:
                assert x["vnet"] == (1, 1, 66, 1448, 34, 16)
            pkt = assert_valid(f)
            assert bytes(pkt[TCP].payload) == x["payload"]
        assert b"".join(x["payload"] for x in d) == blob
        assert twin.deadline() == pytest.approx(twin.now + 0.2)
        # the guest acknowledges: the bytes leave the socket, the timer stops
        g.ack = (1001 + 200_000) & M
        items, frames = twin.guest(g.frame(ACK))
        assert frames == [] and twin.deadline() is None
        e = twin.eject(1)
        assert e.send_bytes == b"" and e.tcb["snd_una"] == 1001 + 200_000


@PEEK
def test_guest_window_and_inflight_cap_pace_the_reads(peek):
    with Twin(peek_offset=peek) as twin:
        g = established(twin, tcb=base_tcb(snd_wnd=100_000, max_snd_wnd=100_000))
        blob = bytes(i % 253 for i in range(300_000))
        _, frames = twin.host_send(1, blob)
        assert sum(len(x["payload"]) for x in data(frames)) == 100_000, "the guest's window"
        _, frames = twin.host()
        assert frames == []  # nothing more until an ACK (edge-triggered: no busy loop)
        g.ack = (1001 + 50_000) & M
        _, frames = twin.guest(g.frame(ACK, window=100_000 >> 7))
        d = data(frames)
        assert d[0]["seq"] == 1001 + 100_000 and sum(len(x["payload"]) for x in d) == 50_000 - (100_000 % 128)
        got = b"".join(x["payload"] for x in data(frames))
        assert got == blob[100_000 : 100_000 + len(got)]
        # a huge window: the in-flight cap (INFLIGHT_MAX) still holds
        g.ack = (1001 + 100_000) & M
        twin.each(lambda s: s.conns[1].peer.sendall(bytes(2 * INFLIGHT_MAX)))
        _, frames = twin.guest(g.frame(ACK, window=0xFFFF))
        e = twin.eject(1)
        assert (e.tcb["snd_max"] - e.tcb["snd_una"]) & M <= INFLIGHT_MAX
        assert len(e.send_bytes) == (e.tcb["snd_max"] - e.tcb["snd_una"]) & M


@PEEK
def test_duplicate_acks_go_back_n(peek):
    with Twin(peek_offset=peek) as twin:
        g = established(twin)
        blob = bytes(i % 241 for i in range(100_000))
        twin.host_send(1, blob)
        g.ack = 1001 + 30_000
        twin.guest(g.frame(ACK))
        for i in range(2):
            _, frames = twin.guest(g.frame(ACK))
            assert frames == []
        _, frames = twin.guest(g.frame(ACK))  # the third duplicate
        d = data(frames)
        assert d[0]["seq"] == 1001 + 30_000
        assert b"".join(x["payload"] for x in d) == blob[30_000:]
        assert twin.py.dp.stats()["dp.fast_retransmits"] == 1


def test_a_window_change_is_no_duplicate(twin):
    g = established(twin)
    twin.host_send(1, b"z" * 10_000)
    for w in (60000, 60001, 60002):
        _, frames = twin.guest(g.frame(ACK, window=w))
    assert twin.py.dp.stats()["dp.fast_retransmits"] == 0


@PEEK
def test_rto_retransmits_with_backoff_then_times_out(peek):
    with Twin(peek_offset=peek) as twin:
        established(twin)
        twin.host_send(1, b"lost" * 1000)
        rto = 0.2
        for i in range(MAX_RTO_RETRIES - 1):
            deadline = twin.deadline()
            assert deadline == pytest.approx(twin.now + rto)
            items, frames = twin.timers(deadline)
            assert items == []
            d = data(frames)
            assert d[0]["seq"] == 1001 and b"".join(x["payload"] for x in d) == b"lost" * 1000
            rto = min(rto * 2, 60.0)
        items, frames = twin.timers(twin.deadline())
        assert [i.reason for i in items] == ["timeout"] and frames == []
        e = items[0]
        assert e.send_bytes == b"lost" * 1000 and e.tcb["snd_una"] == 1001
        assert e.tcb["rto"] == pytest.approx(0.2 * 2 ** (MAX_RTO_RETRIES - 1))
        assert not twin.py.dp.owns(1)


def test_rtt_sampled_from_tsecr(twin):
    g = established(twin, tcb=base_tcb(srtt=-1.0, rttvar=0.0, rto=1.0))
    twin.host_send(1, b"q" * 100)
    tsval = int(twin.now * 1000) + 100000
    twin.now += 0.05
    g.ack, g.tsecr = 1101, tsval
    twin.guest(g.frame(ACK))
    e = twin.eject(1)
    assert e.tcb["srtt"] == pytest.approx(0.05) and e.tcb["rttvar"] == pytest.approx(0.025)
    assert e.tcb["rto"] == pytest.approx(0.2), "the 200 ms floor"


def test_zero_window_persist_then_ejected(twin):
    g = established(twin)
    twin.guest(g.frame(ACK, window=0))
    _, frames = twin.host_send(1, b"waiting")
    assert frames == [], "nothing fits a closed window"
    deadline = twin.deadline()
    assert deadline == pytest.approx(twin.now + 0.2)
    items, frames = twin.timers(deadline)
    assert [i.reason for i in items] == ["zero_window"]
    assert items[0].tcb["snd_wnd"] == 0 and items[0].send_bytes == b""


def test_window_opening_cancels_persist(twin):
    g = established(twin)
    twin.guest(g.frame(ACK, window=0))
    twin.host_send(1, b"waiting")
    assert twin.deadline() is not None
    _, frames = twin.guest(g.frame(ACK, window=1000))
    assert data(frames)[0]["payload"] == b"waiting"
    assert twin.deadline() == pytest.approx(twin.now + 0.2)  # now a retransmission timer


def test_bidirectional_data_rides_with_the_ack(twin):
    """Host data ready when a guest segment is acknowledged: the data frame carries the ACK."""
    g = established(twin)
    twin.each(lambda s: s.conns[1].peer.sendall(b"response"))
    for s in twin.sides:
        assert s.wait_host()
    _, frames = twin.guest(g.frame(ACK | PSH, b"request"))
    # the host event is still pending (edge-triggered): tap_readable sent only the ACK
    assert [parse_out(f)["ack"] for f in frames] == [5008]
    _, frames = twin.host()
    assert data(frames)[0]["payload"] == b"response" and data(frames)[0]["ack"] == 5008


# ---------------------------------------------------------------------- backpressure


def test_backpressure_window_follows_the_host_socket():
    with Twin() as twin:
        twin.add_tcp(1, sndbuf=32768, peer_rcvbuf=32768)
        g = GuestTcp()
        stream = bytes(i % 249 for i in range(2_000_000))
        sent_to = 0
        windows = []
        for _ in range(30):
            wnd_bytes = g.window << 5
            end = min(len(stream), g.seq - 5001 + max(wnd_bytes, 1))
            start = g.seq - 5001
            frames = [g.frame(ACK | PSH, stream[i : min(i + 60000, end)], seq=5001 + i) for i in range(start, end, 60000)]
            if not frames:
                frames = [g.frame(ACK | PSH, stream[start : start + 1], seq=5001 + start)]  # a window probe
            _, out = twin.guest(*frames)
            last = parse_out(out[-1])
            g.seq = last["ack"]
            g.window = last["window"]
            windows.append(g.window)
            sent_to = max(sent_to, g.seq - 5001)
            if g.window == 0:
                break
        st = twin.py.dp.stats()
        assert st["dp.host_short_writes"] > 0 and min(windows) < 5, windows
        # the peer starts reading: EPOLLOUT fires and a window update goes out
        got = twin.settle(1)
        assert got == stream[: len(got)] and len(got) == g.seq - 5001
        items, frames = twin.host(wait=True)
        upd = acks(frames)
        assert upd and upd[-1]["window"] > g.window and upd[-1]["ack"] == g.seq


# ---------------------------------------------------------------------- ejection


@pytest.mark.parametrize(
    "flags,opts",
    [
        (ACK | RST, {"seq": 1}),  # a RST not at rcv_nxt: netstack challenges it
        (RST, {"seq": 1}),
        (ACK | FIN | SYN, {}),
        (SYN, {}),
        (ACK | URG, {}),
        (ACK | 0x40, {}),  # ECE
        (ACK, {"mss": 1400}),  # an option besides timestamps
        (ACK, {"sack_blocks": ((1, 2),)}),
        (ACK, {"timestamp": None}),  # a timestamp flow without the option
    ],
)
def test_segments_the_fast_path_does_not_take(twin, flags, opts):
    g = established(twin)
    twin.guest(g.frame(ACK | PSH, b"before"))  # ACK-pending data earlier in the batch...
    more = g.frame(ACK | PSH, b"more")
    fr = g.frame(flags, b"data" if flags & ACK else b"", **opts)
    items, frames = twin.guest(more, fr)
    assert [type(i) for i in items] == [Ejected, Frame]
    assert items[0].reason == "segment" and items[1].data == fr
    assert items[0].tcb["rcv_nxt"] == 5001 + 10 and items[0].tcb["rcv_adv"] == (5001 + 10 + parse_out(frames[0])["window"] * 32) & M
    assert [parse_out(f)["ack"] for f in frames] == [5011], "...is acknowledged before the ejection"
    assert not twin.py.dp.owns(1)
    # later frames of the flow are netstack's
    items, _ = twin.guest(g.frame(ACK))
    assert [type(i) for i in items] == [Frame]


def test_old_ack_is_ejected_for_netstack(twin):
    g = established(twin, tcb=base_tcb(snd_una=10**6, snd_nxt=10**6, snd_max=10**6, max_snd_wnd=0, snd_wnd=65535))
    items, _ = twin.guest(g.frame(ACK, ack=10**6 - 70000))
    assert [i.reason if isinstance(i, Ejected) else "frame" for i in items] == ["segment", "frame"]


@PEEK
def test_host_eof_becomes_our_fin_once_everything_is_acked(peek):
    with Twin(peek_offset=peek) as twin:
        g = established(twin)
        twin.host_send(1, b"last words")
        g.ack = 1001 + 4
        twin.guest(g.frame(ACK))
        twin.each(lambda s: s.conns[1].peer.shutdown(socket.SHUT_WR))
        items, frames = twin.host(wait=True)
        assert items == [] and not [f for f in frames if parse_out(f)["flags"] & FIN], "data still in flight"
        g.ack = 1001 + 10
        items, frames = twin.guest(g.frame(ACK))
        assert items == []
        fin = [parse_out(f) for f in frames]
        assert [(f["flags"], f["seq"], f["ack"]) for f in fin] == [(ACK | FIN, 1011, 5001)]
        assert twin.py.dp.stats()["dp.fin_to_guest"] == 1
        assert twin.deadline() == pytest.approx(twin.now + 0.2), "our FIN is retransmitted"
        # the guest ACKs our FIN (FIN_WAIT_2), then closes: TIME_WAIT, the flow is Closed
        g.ack = 1012
        items, frames = twin.guest(g.frame(ACK))
        assert items == [] and frames == [] and twin.deadline() is None
        items, frames = twin.guest(g.frame(ACK | FIN))
        assert items == [Closed(1, "fin", 0)]
        assert [(parse_out(f)["flags"], parse_out(f)["ack"]) for f in frames] == [(ACK, 5002)]
        assert not twin.py.dp.owns(1)
        assert all(s.conns[1].peer.recv(10) == b"" for s in twin.sides), "the guest's FIN: shutdown(SHUT_WR)"
        assert twin.deadline() == pytest.approx(twin.now + 2.0), "TIME_WAIT"


def test_host_reset_sends_rst_to_the_guest(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | PSH, b"abc"))
    for s in twin.sides:
        s.conns[1].peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.conns[1].peer.close()
    items, frames = twin.host(wait=True)
    assert items == [Closed(1, "host_reset", errno.ECONNRESET)]
    rst = [parse_out(f) for f in frames]
    assert [(r["flags"], r["seq"], r["ack"], r["window"], "ts" in r) for r in rst] == [(RST | ACK, 1001, 5004, 0, False)]
    assert_valid(frames[0])
    assert not twin.py.dp.owns(1)
    items, _ = twin.guest(g.frame(ACK))
    assert [type(i) for i in items] == [Frame]


def test_send_to_a_reset_socket_resets_the_guest(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | PSH, b"x"))
    for s in twin.sides:
        s.conns[1].peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.conns[1].peer.close()
        # drain the error so that the next send fails instead
        s.conns[1].edge.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    items, frames = twin.guest(g.frame(ACK | PSH, b"y"))
    assert [(type(i), i.how) for i in items] == [(Closed, "host_reset")]
    assert items[0].errno in (errno.EPIPE, errno.ECONNRESET)
    assert [parse_out(f)["flags"] for f in frames] == [RST | ACK]


def test_requested_ejection_exports_everything(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | PSH, b"in"))
    twin.host_send(1, b"out" * 10)
    e = twin.eject(1)
    assert e.reason == "requested" and e.send_bytes == b"out" * 10 and not e.host_eof
    t = e.tcb
    assert set(t) == set(base_tcb())
    assert (t["snd_una"], t["snd_nxt"], t["snd_max"], t["rcv_nxt"]) == (1001, 1031, 1031, 5003)
    assert t["ts_recent"] == 1000 and t["ts_recent_at"] == twin.now
    with pytest.raises(KeyError):
        twin.py.dp.eject_tcp(1, twin.now)
    for s in twin.sides:
        with pytest.raises(KeyError):
            s.dp.eject_tcp(1, twin.now)
        assert s.conns[1].edge.getsockopt(socket.SOL_SOCKET, 42) == -1, "SO_PEEK_OFF is reset"


# ---------------------------------------------------------------------- IPv6


def test_ipv6_flow_both_ways(twin):
    g = established(twin, v6=True, guest=GUEST6, remote=GATEWAY6)
    g.guest, g.remote = GUEST6, GATEWAY6
    payload = bytes(range(256)) * 200
    _, frames = twin.guest(g.frame(ACK | PSH, payload, gso=True))
    a = parse_out(frames[0])
    assert a["src"] == GATEWAY6 and a["ack"] == 5001 + len(payload)
    assert twin.settle(1) == payload
    _, frames = twin.host_send(1, bytes(100_000))
    d = data(frames)
    assert d[0]["vnet"] == (1, 4, 86, 1448, 54, 16), "GSO_TCPV6, csum_start after the IPv6 header"
    pkt = assert_valid(frames[0])
    assert pkt[IPv6].hlim == 64 and pkt[IPv6].src == "fd00::2"
    assert len(d[0]["payload"]) == 65535 - 14 - 40 - 32


# ---------------------------------------------------------------------- UDP


def udp_twin(**kw):
    twin = Twin(**kw)
    port = None
    for _ in range(20):
        try:
            s = twin.py.udp_server(0)
            port = s.getsockname()[1]
            for side in twin.sides[1:]:
                side.udp_server(port)
            break
        except OSError:
            for side in twin.sides:
                for srv in side.servers.values():
                    srv.close()
                side.servers.clear()
    twin.add_udp(7)
    return twin, port


def server_recv(twin, port):
    out = []
    for s in twin.sides:
        srv = s.servers[(False, port)]
        got = []
        for _ in range(200):
            try:
                got.append(srv.recvfrom(70000))
            except BlockingIOError:
                break
        out.append(got)
        s.client_port = got[0][1][1] if got else None  # ephemeral: differs per side
    return twin.same([[d for d, _ in got] for got in out], "server datagrams")


def test_udp_both_ways_with_address_maps():
    twin, port = udp_twin()
    with twin:
        items, frames = twin.guest(guest_udp(b"ping", dport=port), guest_udp(b"pong", dport=port, offload="none"))
        assert items == [] and frames == []
        assert server_recv(twin, port) == [b"ping", b"pong"]
        assert twin.py.dp.take_activity() == [7] and twin.py.dp.take_activity() == []
        twin.sides[1].dp.take_activity()
        for s in twin.sides:
            s.servers[(False, port)].sendto(b"reply", (s.lo, s.client_port))
        items, frames = twin.host(wait=True)
        assert items == [] and len(frames) == 1
        p = parse_out(frames[0])
        assert (p["src"], p["sport"], p["dst"], p["dport"], p["payload"]) == (GATEWAY, port, GUEST, 5353, b"reply")
        assert p["vnet"] == (1, 0, 0, 0, 34, 6)
        assert_valid(frames[0])
        assert twin.same(twin.each(lambda s: s.dp.take_activity()), "activity") == [7]


def test_udp_slow_destinations_and_unknown_flows():
    twin, port = udp_twin()
    with twin:
        frames_in = [
            guest_udp(b"dns", dst=DNS, dport=53),
            guest_udp(b"mcast", dst=bytes([224, 0, 0, 251]), dport=5353),
            guest_udp(b"bcast", dst=b"\xff\xff\xff\xff", dport=port),
            guest_udp(b"dhcp", dport=67),
            guest_udp(b"zero", dport=0),
            guest_udp(b"other port", sport=999, dport=port),  # no such flow
            guest_udp(b"other mac", dport=port, dst_mac=bytes(6)),
        ]
        items, frames = twin.guest(*frames_in)
        assert [i.data for i in items] == frames_in and frames == []
        assert server_recv(twin, port) == []
        assert twin.py.dp.stats()["dp.slow_frames"] == len(frames_in)


def test_udp_special_destinations_go_to_netstack():
    """Addresses netstack's policy maps, refuses or never forwards as they are
    (host loopback, unspecified, multicast) never leave through the fast path:
    a guest must not reach 127.0.0.1 around --disable-host-loopback."""
    twin, port = udp_twin()
    with twin:
        frames_in = [
            guest_udp(b"loopback", dst=bytes([127, 0, 0, 1]), dport=port),
            guest_udp(b"loopback net", dst=bytes([127, 9, 8, 7]), dport=port),
            guest_udp(b"this host", dst=bytes(4), dport=port),
        ]
        items, frames = twin.guest(*frames_in)
        assert [i.data for i in items] == frames_in and frames == []
        assert server_recv(twin, port) == []


@pytest.mark.parametrize(
    "dst",
    [
        "::1", "::", "::127.0.0.1", "::ffff:127.0.0.1", "fe80::1", "fd00::5", "fd00::3", "ff02::1",
    ],
)  # fmt: skip
def test_udp_special_v6_destinations_go_to_netstack(dst):
    twin = Twin()
    with twin:
        twin.add_udp(8, v6=True)
        frame = guest_udp(b"x", src=GUEST6, dst=socket.inet_pton(socket.AF_INET6, dst), dport=9999)
        items, frames = twin.guest(frame)
        assert [i.data for i in items] == [frame] and frames == []


def test_udp_too_big_and_uso():
    twin, port = udp_twin(mtu=1500)
    with twin:
        uso = bytearray(guest_udp(b"A" * 1000 + b"B" * 1000 + b"C" * 500, dport=port))
        uso[1] = 5  # gso_type UDP_L4
        struct.pack_into("<H", uso, 4, 1000)
        twin.guest(bytes(uso))
        assert server_recv(twin, port) == [b"A" * 1000, b"B" * 1000, b"C" * 500]
        for s in twin.sides:
            s.servers[(False, port)].sendto(b"x" * 1472, (s.lo, s.client_port))
            s.servers[(False, port)].sendto(b"y" * 1473, (s.lo, s.client_port))
        items, frames = twin.host(wait=True)
        assert len(frames) == 1 and len(parse_out(frames[0])["payload"]) == 1472
        assert len(items) == 1 and isinstance(items[0], UdpDatagram)
        assert items[0].data == b"y" * 1473 and items[0].port == port
        assert items[0].addr == socket.inet_aton(twin.py.lo), "the host source, unmapped"


def test_udp_icmp_error_is_reported():
    """The datapath reads the socket's error queue itself: one UdpError per
    ICMP error, with its errno and the destination it was for, and then
    nothing more (EPOLLERR is gone once the queue is empty: no busy loop)."""
    twin, port = udp_twin()
    with twin:
        for s in twin.sides:
            s.udps[7].setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR, as the edge sets it
            s.servers[(False, port)].close()
        refused = UdpError(7, errno.ECONNREFUSED, socket.inet_aton(twin.py.lo), port)
        twin.guest(guest_udp(b"nobody", dport=port))
        items, _ = twin.host(wait=True)
        assert items == [refused]
        for s in twin.sides:
            assert not s.wait_host(0.05), f"{s.kind}: the error is still an event"
            assert s.udps[7].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        twin.guest(guest_udp(b"again", dport=port))
        items, _ = twin.host(wait=True)
        assert items == [refused]
        assert twin.py.dp.stats()["dp.udp_icmp_errors"] == 2


def test_udp_ipv6():
    with Twin() as twin:
        srv = twin.py.udp_server(0, v6=True)
        port = srv.getsockname()[1]
        for side in twin.sides[1:]:
            side.servers[(True, port)] = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        # both sides map fd00::2 to ::1: run them one after the other on one server
        twin.add_udp(9, v6=True)
        twin.guest(guest_udp(b"six", src=GUEST6, dst=GATEWAY6, dport=port))
        got = [srv.recvfrom(100) for _ in twin.sides]
        assert [d for d, _ in got] == [b"six"] * len(twin.sides)
        for (_, addr), s in zip(got, twin.sides):
            srv.sendto(b"back", addr)
        items, frames = twin.host(wait=True)
        p = parse_out(frames[0])
        assert (p["src"], p["dst"], p["payload"]) == (GATEWAY6, GUEST6, b"back")
        assert_valid(frames[0])
        srv.close()


def test_remove_udp_and_errors(twin):
    twin.add_udp(3)
    for s in twin.sides:
        with pytest.raises(ValueError):
            s.add_udp(3)  # same flow id
        s.dp.remove_udp(3)
        assert not s.dp.owns(3)
        with pytest.raises(KeyError):
            s.dp.remove_udp(3)
    items, _ = twin.guest(guest_udp(b"late"))
    assert [type(i) for i in items] == [Frame]


def test_table_is_bounded():
    with Twin(max_flows=2) as twin:
        twin.add_tcp(1)
        twin.add_udp(2)
        for s in twin.sides:
            with pytest.raises(OverflowError):
                s.add_tcp(3, gport=41000)
        for s in twin.sides:
            s.dp.remove_udp(2)
        twin.add_tcp(4, gport=42000)


# ---------------------------------------------------------------------- the rest goes up


def test_non_flow_frames_go_up(twin):
    established(twin)
    arp = bytes(10) + bytes(Ether(src="02:00:00:00:00:64", dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.2.2"))
    unknown = GuestTcp(gport=41000).frame(ACK | PSH, b"unknown flow")
    syn = GuestTcp(gport=41001).frame(SYN, b"")
    items, frames = twin.guest(arp, unknown, syn)
    assert [i.data for i in items] == [arp, unknown, syn] and frames == []
    assert twin.py.dp.owns(1)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda f: f[:5],  # shorter than a vnet header
        lambda f: f[:30],  # truncated IPv4 header
        lambda f: f[:60],  # IP total length beyond the frame
        lambda f: f[:24] + bytes([0x46]) + f[25:],  # IP options (and a wrong header checksum)
        lambda f: f[:34] + b"\xff" + f[35:],  # IPv4 header checksum broken
        lambda f: f[:56] + bytes([0x10]) + f[57:],  # data offset < 5
        lambda f: f[:56] + bytes([0xF0]) + f[57:],  # data offset beyond the segment
    ],
)
def test_malformed_frames_go_up_counted(twin, mangle):
    g = established(twin)
    bad = mangle(g.frame(ACK | PSH, b"payload"))
    items, frames = twin.guest(bad)
    assert items == [Frame(bad)] and frames == []
    assert twin.settle(1) == b""


def test_install_checks(twin):
    established(twin)
    for s in twin.sides:
        with pytest.raises(ValueError):
            s.add_tcp(1, gport=45000)  # flow id in use
        with pytest.raises(ValueError):
            s.add_tcp(2)  # key in use
        with pytest.raises(ValueError):
            s.add_tcp(3, gport=46000, tcb=base_tcb(snd_max=2000))  # data in flight


def test_a_refused_install_leaves_the_flow_whose_fd_it_named_alone(twin):
    """Installing a second flow on an installed flow's socket is refused
    before anything changes: the first flow's peek offset stays, so what it
    sends next is the next bytes, not the unacknowledged ones again."""
    established(twin)
    items, frames = twin.host_send(1, b"abc")
    assert [parse_out(f)["payload"] for f in frames] == [b"abc"]
    for s in twin.sides:
        spec = TcpFlow(flow=2, fd=s.conns[1].edge.fileno(), guest_addr=GUEST, guest_port=46000, remote_addr=GATEWAY,
                       remote_port=80, guest_mac=GUEST_MAC, our_mac=OUR_MAC, tcb=base_tcb(), rcv_buf_max=1 << 20,
                       now=twin.now)  # fmt: skip
        with pytest.raises(ValueError):
            s.dp.install_tcp(spec)
        assert not s.dp.owns(2)
    items, frames = twin.host_send(1, b"def")
    assert [(parse_out(f)["seq"], parse_out(f)["payload"]) for f in frames] == [(1004, b"def")]


def test_fileno_is_readable_only_with_host_events(twin):
    established(twin)
    import select

    for s in twin.sides:
        assert select.select([s.dp.fileno()], [], [], 0)[0] == []
    twin.host_send(1, b"x")
    for s in twin.sides:
        assert select.select([s.dp.fileno()], [], [], 0)[0] == []


def test_receiver_sws_avoidance_keeps_small_openings_back(twin):
    """rcv_adv moves only by at least min(MSS, ...): a 110-byte opening is not offered."""
    g = established(twin, tcb=base_tcb(rcv_adv=5001 + (1 << 20) - 100))
    _, frames = twin.guest(g.frame(ACK | PSH, b"0123456789"))
    a = parse_out(frames[0])
    assert a["ack"] == 5011 and a["window"] == -(-((1 << 20) - 110) // 32)
    # once the opening reaches an MSS, it is offered in full
    _, frames = twin.guest(g.frame(ACK | PSH, bytes(1500)))
    assert parse_out(frames[0])["window"] == (1 << 20) // 32


def test_host_data_and_fin_together(twin):
    """A short peek after the host shut down goes on peeking: data and EOF in one call."""
    established(twin)
    for s in twin.sides:
        s.conns[1].peer.sendall(b"final answer")
        s.conns[1].peer.shutdown(socket.SHUT_WR)
    items, frames = twin.host(wait=True)
    assert data(frames)[0]["payload"] == b"final answer"
    assert items == [] and not [f for f in frames if parse_out(f)["flags"] & FIN]
    # ejected now (for netstack), the export says the host's EOF was seen
    ej = twin.eject(1)
    assert ej.host_eof and ej.send_bytes == b"final answer" and ej.tcb["snd_max"] == 1001 + 12
    assert ej.state == "ESTABLISHED"


def test_closed_window_without_host_data_arms_nothing(twin):
    g = established(twin)
    twin.guest(g.frame(ACK, window=0))
    assert twin.deadline() is None, "nothing to send: no persist, no ejection"
    _, frames = twin.host_send(1, b"now there is")
    assert frames == [] and twin.deadline() == pytest.approx(twin.now + 0.2)


# ---------------------------------------------------------------------- closing in the datapath


def fin_frames(frames):
    return [(p["flags"], p["seq"], p["ack"]) for p in map(parse_out, frames)]


def test_guest_closes_first_then_host_fin_then_last_ack(twin):
    g = established(twin)
    items, frames = twin.guest(g.frame(ACK | PSH | FIN, b"bye"))
    assert items == [] and fin_frames(frames) == [(ACK, 1001, 5001 + 3 + 1)], "data and FIN acknowledged at once"
    assert twin.settle(1) == b"bye"
    assert all(s.conns[1].peer.recv(10) == b"" for s in twin.sides), "shutdown(SHUT_WR) after the data"
    assert twin.py.dp.owns(1) and twin.py.dp.stats()["dp.fin_from_guest"] == 1
    # the host answers and closes: its data, then our FIN once the data is acknowledged
    for s in twin.sides:
        s.conns[1].peer.sendall(b"ok")
        s.conns[1].peer.shutdown(socket.SHUT_WR)
    items, frames = twin.host(wait=True)
    assert items == [] and [(d["payload"], d["ack"]) for d in data(frames)] == [(b"ok", 5005)]
    g.ack = 1003
    items, frames = twin.guest(g.frame(ACK))
    assert items == [] and fin_frames(frames) == [(ACK | FIN, 1003, 5005)]
    g.ack = 1004  # LAST_ACK: the ACK of our FIN ends it, no TIME_WAIT on our side
    items, frames = twin.guest(g.frame(ACK))
    assert items == [Closed(1, "fin", 0)] and frames == []
    assert not twin.py.dp.owns(1) and twin.deadline() is None
    assert twin.py.dp.stats()["dp.closed_fin"] == 1


def test_fin_with_the_host_eof_already_seen_goes_with_the_ack(twin):
    g = established(twin)
    twin.each(lambda s: s.conns[1].peer.shutdown(socket.SHUT_WR))
    items, frames = twin.host(wait=True)
    assert items == [] and fin_frames(frames) == [(ACK | FIN, 1001, 5001)], "nothing in flight: FIN at once"
    items, frames = twin.guest(g.frame(ACK | FIN))  # simultaneous close: our FIN not acked yet
    assert items == [] and fin_frames(frames) == [(ACK, 1002, 5002)]
    g.ack = 1002  # CLOSING -> TIME_WAIT
    items, frames = twin.guest(g.frame(ACK))
    assert items == [Closed(1, "fin", 0)] and frames == []
    assert twin.deadline() == pytest.approx(twin.now + 2.0)


def test_our_fin_is_retransmitted(twin):
    g = established(twin)
    twin.each(lambda s: s.conns[1].peer.shutdown(socket.SHUT_WR))
    twin.host(wait=True)
    items, frames = twin.timers(twin.now + 0.25)
    assert items == [] and fin_frames(frames) == [(ACK | FIN, 1001, 5001)]
    assert twin.deadline() == pytest.approx(twin.now + 0.4), "backed off"
    g.ack = 1002
    items, frames = twin.guest(g.frame(ACK))
    assert items == [] and twin.deadline() is None, "FIN_WAIT_2"


def test_time_wait(twin):
    g = established(twin)
    twin.each(lambda s: s.conns[1].peer.shutdown(socket.SHUT_WR))
    twin.host(wait=True)
    g.ack = 1002
    items, _ = twin.guest(g.frame(ACK | FIN))
    assert items == [Closed(1, "fin", 0)]
    assert not twin.py.dp.owns(1)
    with pytest.raises(KeyError):
        twin.py.dp.eject_tcp(1, twin.now)
    # a retransmitted FIN (our ACK was lost) is acknowledged again and restarts the wait
    twin.now += 1.5
    items, frames = twin.guest(g.frame(ACK | FIN, seq=5001))
    assert items == [] and fin_frames(frames) == [(ACK, 1002, 5002)]
    assert twin.deadline() == pytest.approx(twin.now + 2.0)
    items, frames = twin.guest(g.frame(ACK, seq=5002))  # a pure ACK: nothing to say
    assert items == [] and frames == []
    items, frames = twin.timers(twin.now + 2.0)
    assert items == [] and frames == [] and twin.deadline() is None
    assert twin.py.dp.stats()["dp.time_wait_ended"] == 1
    items, _ = twin.guest(g.frame(ACK, seq=5002))
    assert [type(i) for i in items] == [Frame], "the slot is free: netstack's frame"


def test_time_wait_ends_on_rst_and_on_a_new_syn(twin):
    """A RST ends TIME_WAIT silently; a SYN — or the guest's SYN|ACK to a port
    forward netstack opened on the same key — ends it and goes to netstack."""
    for n, (flags, slow) in enumerate(((RST, False), (SYN, True), (SYN | ACK, True))):
        g = established(twin, flow=10 + n, gport=41000 + n)
        twin.each(lambda s: s.conns[10 + n].peer.shutdown(socket.SHUT_WR))
        twin.host(wait=True)
        g.ack = 1002
        assert twin.guest(g.frame(ACK | FIN))[0] == [Closed(10 + n, "fin", 0)]
        fr = g.frame(flags, seq=9999)
        items, frames = twin.guest(fr)
        assert items == ([Frame(fr)] if slow else []) and frames == []
        assert twin.deadline() is None
    st = twin.py.dp.stats()
    assert st["dp.time_wait_ended"] == 1 and st["dp.time_wait_reused"] == 2


def test_time_wait_gives_way_to_a_new_flow(twin):
    with Twin(max_flows=2) as t:
        for flow in (1, 2):
            g = established(t, flow=flow, gport=40000 + flow)
            t.each(lambda s: s.conns[flow].peer.shutdown(socket.SHUT_WR))
            t.host(wait=True)
            g.ack = 1002
            assert t.guest(g.frame(ACK | FIN))[0] == [Closed(flow, "fin", 0)]
        # the same key as flow 1 (netstack opened a new incarnation): flow 1's slot goes
        t.add_tcp(3, gport=40001)
        # the table is full (flows 2 and 3): the TIME_WAIT flow 2 is recycled
        t.add_tcp(4, gport=40004)
        st = t.py.dp.stats()
        assert st["dp.time_wait_reused"] == 1 and st["dp.time_wait_ended"] == 1
        assert t.py.dp.owns(3) and t.py.dp.owns(4)
        with pytest.raises(OverflowError):
            t.py.dp.install_tcp(replace_flow(t.py, 5, 40005))


def replace_flow(side, flow, gport):
    from slirp.datapath import TcpFlow

    from .dp_helpers import TcpConn

    c = TcpConn()
    side.conns[flow] = c
    return TcpFlow(flow, c.edge.fileno(), GUEST, gport, GATEWAY, 80, GUEST_MAC, OUR_MAC, dict(base_tcb()), 1 << 20, 0.0)


def test_exact_guest_rst_closes_with_reset(twin):
    g = established(twin)
    items, frames = twin.guest(g.frame(ACK | PSH, b"abc"), g.frame(RST | ACK))
    assert items == [Closed(1, "reset", 0)]
    assert frames == [], "no ACK for a reset flow"
    assert twin.settle(1) == b"abc"
    assert twin.py.dp.stats()["dp.closed_reset"] == 1


def test_rst_in_last_ack_with_only_our_fin_unacked_is_graceful(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | FIN))
    twin.each(lambda s: s.conns[1].peer.shutdown(socket.SHUT_WR))
    _, frames = twin.host(wait=True)
    assert fin_frames(frames) == [(ACK | FIN, 1001, 5002)]
    items, _ = twin.guest(g.frame(RST, seq=5002))
    assert items == [Closed(1, "fin", 0)]


def test_data_after_the_guests_fin_is_dropped(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | FIN))
    items, frames = twin.guest(g.frame(ACK | PSH, b"late", seq=5002))
    assert items == [] and fin_frames(frames) == [(ACK, 1001, 5002)]
    assert twin.py.dp.stats()["dp.rx_after_fin"] == 1
    # a retransmitted FIN is a duplicate
    items, frames = twin.guest(g.frame(ACK | FIN, seq=5001))
    assert items == [] and fin_frames(frames) == [(ACK, 1001, 5002)]
    assert twin.py.dp.stats()["dp.duplicate"] == 1


def test_an_ejection_while_closing_exports_the_state(twin):
    g = established(twin)
    twin.guest(g.frame(ACK | FIN))
    items, _ = twin.guest(g.frame(ACK | URG, seq=5002))
    assert [type(i) for i in items] == [Ejected, Frame]
    assert items[0].state == "CLOSE_WAIT" and items[0].tcb["rcv_nxt"] == 5002
    g2 = established(twin, flow=2, gport=42000)
    twin.each(lambda s: s.conns[2].peer.shutdown(socket.SHUT_WR))
    twin.host(wait=True)
    ej = twin.eject(2)
    assert ej.state == "FIN_WAIT_1" and ej.host_eof and ej.send_bytes == b"" and ej.tcb["snd_max"] == 1002
    g2.ack = 1002
    assert [type(i) for i in twin.guest(g2.frame(ACK))[0]] == [Frame]


def to_time_wait(twin, flow, gport):
    g = established(twin, flow=flow, gport=gport)
    twin.each(lambda s: s.conns[flow].peer.shutdown(socket.SHUT_WR))
    twin.host(wait=True)
    g.ack = 1002
    assert twin.guest(g.frame(ACK | FIN))[0] == [Closed(flow, "fin", 0)]
    return g


def test_time_wait_deadlines_follow_entry_and_restart(twin):
    gs = {}
    for flow, dt in ((1, 0.0), (2, 0.5), (3, 0.5)):
        twin.now += dt
        gs[flow] = to_time_wait(twin, flow, 40000 + flow)
    start = twin.now - 1.0
    assert twin.deadline() == pytest.approx(start + 2.0)
    twin.now = start + 1.2  # flow 1's FIN again: its TIME_WAIT restarts
    twin.guest(gs[1].frame(ACK | FIN, seq=5001))
    assert twin.deadline() == pytest.approx(start + 2.5)
    twin.timers(start + 2.6)
    assert twin.py.dp.stats()["dp.time_wait_ended"] == 1
    assert twin.deadline() == pytest.approx(start + 3.0)
    twin.timers(start + 3.3)
    assert twin.py.dp.stats()["dp.time_wait_ended"] == 3 and twin.deadline() is None


# ---------------------------------------------------------------------- handshake (SYN_RECEIVED installs)


def handshake_tcb(**kw) -> dict:
    """A passive open whose SYN-ACK (ISS 1000) is out: only our SYN outstanding,
    no RTT sample yet (netstack's initial RTO), the guest's window not known."""
    base = dict(snd_una=1000, snd_nxt=1001, snd_max=1001, snd_wnd=0, max_snd_wnd=0, snd_wl1=0, snd_wl2=0,
                srtt=-1.0, rttvar=0.0, rto=1.0)  # fmt: skip
    base.update(kw)
    return base_tcb(**base)


def in_handshake(twin, flow=1, **kw):
    twin.add_tcp(flow, tcb=handshake_tcb(), state="SYN_RECEIVED", **kw)
    g = GuestTcp(**{k: v for k, v in kw.items() if k in ("guest", "gport", "remote", "rport")})
    g.tsecr = int(twin.now * 1000) + 100000  # our SYN-ACK's TSval, echoed
    return g


def test_the_guests_ack_of_our_syn_ack_completes_the_handshake_here(twin):
    g = in_handshake(twin)
    assert twin.deadline() == pytest.approx(twin.now + 1.0), "netstack's SYN-ACK retransmission timer"
    twin.now += 0.03
    items, frames = twin.guest(g.frame(ACK | PSH, b"first request"))
    assert items == [], "neither the ACK nor the data goes up"
    assert twin.settle(1) == b"first request"
    (a,) = acks(frames)
    assert a["ack"] == 5001 + 13 and a["seq"] == 1001
    assert twin.deadline() is None, "the retransmission timer stopped"
    e = twin.eject(1)
    assert e.state == "ESTABLISHED" and e.send_bytes == b""
    t = e.tcb
    assert (t["snd_una"], t["snd_nxt"], t["snd_max"]) == (1001, 1001, 1001)
    assert t["snd_wnd"] == t["max_snd_wnd"] == 65535 << 7 and (t["snd_wl1"], t["snd_wl2"]) == (5001, 1001)
    assert t["srtt"] == pytest.approx(0.03) and t["rto"] == pytest.approx(0.2), "RTT from the echoed TSval"
    assert t["ts_recent"] == 1000 and t["rcv_nxt"] == 5014


def test_host_data_waits_for_the_end_of_the_handshake(twin):
    g = in_handshake(twin)
    items, frames = twin.host_send(1, b"banner first")
    assert items == [] and frames == [], "nothing but our SYN-ACK may be out before the guest's ACK"
    items, frames = twin.guest(g.frame(ACK))
    assert items == []
    (d,) = data(frames)
    assert d["payload"] == b"banner first" and d["seq"] == 1001 and d["ack"] == 5001
    assert_valid(frames[0])


@pytest.mark.parametrize(
    "what",
    ["syn_again", "wrong_ack", "old_ack", "fin", "seq_ahead", "paws", "no_ack"],
)
def test_anything_but_the_exact_ack_goes_back_to_netstack(twin, what):
    g = in_handshake(twin)
    frame = {
        "syn_again": lambda: g.frame(SYN, seq=5000, ack=0, mss=1460),
        "wrong_ack": lambda: g.frame(ACK, ack=1005),
        "old_ack": lambda: g.frame(ACK, ack=1000),
        "fin": lambda: g.frame(ACK | FIN),
        "seq_ahead": lambda: g.frame(ACK | PSH, b"x", seq=5003),
        "paws": lambda: g.frame(ACK, tsval=500),
        "no_ack": lambda: g.frame(PSH, b"x"),
    }[what]()
    items, frames = twin.guest(frame)
    assert frames == []
    assert [type(i) for i in items] == [Ejected, Frame] and items[1] == Frame(frame)
    e = items[0]
    assert (e.reason, e.state, e.send_bytes, e.host_eof) == ("segment", "SYN_RECEIVED", b"", False)
    assert (e.tcb["snd_una"], e.tcb["snd_max"], e.tcb["ts_recent"]) == (1000, 1001, 777), "nothing moved"
    assert not twin.py.dp.owns(1)


def test_exact_rst_in_the_handshake_closes_with_reset(twin):
    g = in_handshake(twin)
    items, frames = twin.guest(g.frame(RST, ack=0))
    assert items == [Closed(1, "reset", 0)] and frames == []


def test_unanswered_syn_ack_goes_back_to_netstack_to_be_resent(twin):
    g = in_handshake(twin)
    twin.host_send(1, b"meanwhile")
    items, frames = twin.timers(twin.deadline())
    assert frames == [], "the datapath does not retransmit a SYN-ACK"
    (e,) = items
    assert (e.reason, e.state, e.send_bytes) == ("timeout", "SYN_RECEIVED", b"")
    assert e.tcb["rto"] == 1.0 and e.tcb["snd_max"] == 1001
    assert twin.py.dp.stats()["dp.rto_expiries"] == 1
    assert twin.deadline() is None and not twin.py.dp.owns(1)
    del g


def test_handshake_install_checks(twin):
    for s in twin.sides:
        with pytest.raises(ValueError):
            s.add_tcp(1, tcb=handshake_tcb(snd_una=1001), state="SYN_RECEIVED")  # no SYN outstanding
        with pytest.raises(ValueError):
            s.add_tcp(2, gport=41000, tcb=handshake_tcb(snd_max=1002, snd_nxt=1002), state="SYN_RECEIVED")
        with pytest.raises(ValueError):
            s.add_tcp(3, gport=42000, state="CLOSE_WAIT")  # only ESTABLISHED and SYN_RECEIVED
        with pytest.raises(ValueError):
            s.add_tcp(4, gport=43000, tcb=handshake_tcb(), state="ESTABLISHED")  # data in flight


def test_handshake_ipv6_and_without_timestamps(twin):
    twin.add_tcp(1, v6=True, tcb=handshake_tcb(ts_ok=False, rto=1.0), state="SYN_RECEIVED")
    g = GuestTcp(guest=GUEST6, remote=GATEWAY6, ts=False)
    twin.now += 0.05
    items, frames = twin.guest(g.frame(ACK | PSH, b"v6"))
    assert items == [] and twin.settle(1) == b"v6"
    (a,) = acks(frames)
    assert a["ack"] == 5003 and "ts" not in a
    e = twin.eject(1)
    assert e.tcb["srtt"] == pytest.approx(0.05), "without timestamps: a Karn sample since the install"
    assert e.tcb["rto"] == pytest.approx(0.2)


# ---------------------------------------------------------------------- active opens (SYN_SENT installs)


def syn_sent_tcb(**kw) -> dict:
    """A port forward's SYN (ISS 1000) is out, offering MSS, WS 5 and TS: the
    guest's side is unknown yet (irs, rcv_nxt, its window and scale, its MSS)."""
    base = dict(snd_una=1000, snd_nxt=1001, snd_max=1001, irs=0, rcv_nxt=0, rcv_adv=0, snd_wnd=0, max_snd_wnd=0,
                snd_wl1=0, snd_wl2=0, snd_wscale=0, rcv_wscale=5, mss=536, ts_ok=True, ts_recent=0,
                srtt=-1.0, rttvar=0.0, rto=1.0)  # fmt: skip
    base.update(kw)
    return base_tcb(**base)


def in_syn_sent(twin, flow=1, v6=False, **kw):
    twin.add_tcp(flow, v6=v6, tcb=syn_sent_tcb(**kw), state="SYN_SENT")
    g = GuestTcp(guest=GUEST6 if v6 else GUEST, remote=GATEWAY6 if v6 else GATEWAY, seq=9000, ack=1001)
    g.tsval, g.tsecr = 5000, int(twin.now * 1000) + 100000
    return g


def syn_ack(g, **opts):
    kw = dict(mss=1460, wscale=7)
    kw.update(opts)
    return g.frame(SYN | ACK, seq=9000, advance=False, **{k: v for k, v in kw.items() if v is not None})


def test_the_guests_syn_ack_completes_an_active_open_here(twin):
    g = in_syn_sent(twin)
    assert twin.deadline() == pytest.approx(twin.now + 1.0), "netstack's SYN retransmission timer"
    twin.now += 0.02
    items, frames = twin.guest(syn_ack(g))
    assert items == []
    (a,) = acks(frames)
    assert (a["flags"], a["seq"], a["ack"]) == (ACK, 1001, 9001)
    assert a["ts"] == (int(twin.now * 1000) + 100000, 5000), "TS.Recent is the SYN-ACK's TSval"
    assert_valid(frames[0])
    assert twin.deadline() is None
    # the first guest data goes through the fast path with the negotiated numbers
    g.seq = 9001
    items, frames = twin.guest(g.frame(ACK | PSH, b"hi"))
    assert items == [] and twin.settle(1) == b"hi"
    e = twin.eject(1)
    t = e.tcb
    assert e.state == "ESTABLISHED"
    assert (t["irs"], t["rcv_nxt"], t["snd_una"], t["snd_wscale"], t["rcv_wscale"]) == (9000, 9003, 1001, 7, 5)
    assert t["mss"] == 1460 and t["snd_wnd"] == 65535 << 7 and t["ts_recent"] == 5000
    assert t["srtt"] == pytest.approx(0.02), "RTT from the echoed TSval"


def test_an_active_opens_initial_window_follows_the_negotiated_mss(twin):
    """netstack's export gives IW full-size segments of our MSS; a guest that
    answers with a smaller MSS gets IW segments of its MSS (RFC 6928)."""
    our_eff = 1460 - 12
    g = in_syn_sent(twin, cwnd=10 * our_eff)
    items, _ = twin.guest(syn_ack(g, mss=536))
    assert items == []
    t = twin.eject(1).tcb
    assert t["mss"] == 536 and t["cwnd"] == 10 * (536 - 12)


def test_a_host_reset_before_the_syn_ack_sends_the_guest_nothing(twin):
    in_syn_sent(twin)
    for s in twin.sides:
        s.conns[1].peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.conns[1].peer.close()
    items, frames = twin.host(wait=True)
    assert items == [Closed(1, "host_reset", errno.ECONNRESET)]
    assert frames == [], "no RST for a SYN the guest has not answered (netstack's rule)"


def test_host_data_waiting_rides_with_the_handshakes_ack(twin):
    g = in_syn_sent(twin)
    items, frames = twin.host_send(1, b"client spoke first")
    assert items == [] and frames == [], "nothing but our SYN may be out before the SYN-ACK"
    items, frames = twin.guest(syn_ack(g))
    assert items == []
    (d,) = data(frames)
    assert (d["flags"], d["seq"], d["ack"], d["payload"]) == (ACK | PSH, 1001, 9001, b"client spoke first")
    assert_valid(frames[0])


@pytest.mark.parametrize("mss,v6,want", [(None, False, 536), (None, True, 1220), (50, False, 88), (9000, False, 1460),
                                         (1000, True, 1000)])  # fmt: skip
def test_the_mss_is_negotiated_as_netstack_does(twin, mss, v6, want):
    g = in_syn_sent(twin, v6=v6)
    items, _ = twin.guest(syn_ack(g, mss=mss))
    assert items == []
    assert twin.eject(1).tcb["mss"] == min(want, 1440 if v6 else 1460)


@pytest.mark.parametrize(
    "what", ["no_ts", "no_ws", "big_ws", "wrong_ack", "rst", "simultaneous", "payload", "psh", "bad_mss_len", "cut"]
)
def test_any_other_answer_to_our_syn_goes_back_to_netstack(twin, what):
    g = in_syn_sent(twin)
    if what == "no_ts":
        frame = g.frame(SYN | ACK, seq=9000, advance=False, timestamp=None, mss=1460, wscale=7)
    elif what == "no_ws":
        frame = syn_ack(g, wscale=None)
    elif what == "big_ws":
        frame = syn_ack(g, wscale=15)
    elif what == "wrong_ack":
        frame = g.frame(SYN | ACK, seq=9000, ack=1002, advance=False, mss=1460, wscale=7)
    elif what == "rst":
        frame = g.frame(RST | ACK, seq=0, advance=False)
    elif what == "simultaneous":
        frame = g.frame(SYN, seq=9000, ack=0, advance=False, mss=1460, wscale=7)
    elif what == "payload":
        frame = g.frame(SYN | ACK, b"data on a SYN", seq=9000, advance=False, mss=1460, wscale=7)
    elif what == "psh":
        frame = g.frame(SYN | ACK | PSH, seq=9000, advance=False, mss=1460, wscale=7)
    else:
        buf = bytearray(syn_ack(g))
        opts = 10 + 14 + 20 + 20  # vnet, Ethernet, IPv4, TCP header: the MSS option comes first
        assert buf[opts] == 2 and buf[opts + 1] == 4
        if what == "bad_mss_len":
            buf[opts + 1] = 3
        else:  # an option running past the header
            buf[opts + 1] = 40
        frame = bytes(buf)
    items, frames = twin.guest(frame)
    assert frames == []
    assert [type(i) for i in items] == [Ejected, Frame] and items[1] == Frame(frame)
    e = items[0]
    assert (e.reason, e.state, e.send_bytes) == ("segment", "SYN_SENT", b"")
    assert (e.tcb["irs"], e.tcb["rcv_nxt"], e.tcb["snd_una"]) == (0, 0, 1000), "nothing moved"


def test_an_unanswered_syn_goes_back_to_netstack_to_be_resent(twin):
    in_syn_sent(twin)
    items, frames = twin.timers(twin.deadline())
    assert frames == []
    (e,) = items
    assert (e.reason, e.state, e.send_bytes) == ("timeout", "SYN_SENT", b"")
    assert not twin.py.dp.owns(1)


def test_syn_sent_install_checks(twin):
    for s in twin.sides:
        with pytest.raises(ValueError):
            s.add_tcp(1, tcb=syn_sent_tcb(ts_ok=False), state="SYN_SENT")  # timestamps must have been offered
        with pytest.raises(ValueError):
            s.add_tcp(2, gport=41000, tcb=syn_sent_tcb(snd_una=1001), state="SYN_SENT")
