"""Harnesses for the datapath parity tests (no namespaces needed).

The TAP is stood in for by an AF_UNIX SOCK_SEQPACKET socketpair (one frame
per read/write); host sockets are real loopback TCP connections and UDP
sockets.  A :class:`Side` is one datapath implementation with its own TAP
pair and host sockets; a :class:`Twin` drives a Python and a native Side
with the same inputs and asserts that everything observable is identical:
frames written to the TAP (vnet header included), bytes the host peers
receive, slow items (Ejected TCBs compared field by field, floats exactly),
counters and deadlines.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import struct
import time

from netstack.frames import tcp_frame, udp_frame
from netstack.tcp import Tcb
from netstack.wire.checksum import checksum
from netstack.wire.tcp import ACK, TcpHeader
from slirp.datapath import Closed, Ejected, Frame, TcpFlow, UdpDatagram, UdpError, UdpFlow, open_datapath

try:
    import slirp._native  # noqa: F401

    HAVE_NATIVE = True
except ImportError:  # pragma: no cover - CI builds it
    HAVE_NATIVE = False

KINDS = ("python", "native") if HAVE_NATIVE else ("python",)

GUEST = bytes([10, 0, 2, 100])
GATEWAY = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
REMOTE = bytes([192, 0, 2, 80])
GUEST6 = bytes.fromhex("fd000000000000000000000000000064")
GATEWAY6 = bytes.fromhex("fd000000000000000000000000000002")
GUEST_MAC = bytes.fromhex("020000000064")
OUR_MAC = bytes.fromhex("525500000202")
DNS_MAC = bytes.fromhex("525500000203")
LO = bytes([127, 0, 0, 1])
LO6 = bytes(15) + b"\x01"
M = 0xFFFFFFFF
BIG_SNDBUF = 4 << 20

SIDE_LOOPBACK = {"python": "127.0.0.1", "native": "127.0.0.2"}


def base_tcb(**kw) -> dict:
    t = Tcb(
        iss=1000,
        irs=5000,
        snd_una=1001,
        snd_nxt=1001,
        snd_max=1001,
        snd_wnd=65535 << 7,
        snd_wl1=5001,
        snd_wl2=1001,
        max_snd_wnd=65535 << 7,
        snd_wscale=7,
        rcv_nxt=5001,
        rcv_adv=5001 + 65535,
        rcv_wscale=5,
        mss=1460,
        ts_ok=True,
        ts_recent=777,
        ts_recent_at=0.0,
        ts_offset=100000,
        srtt=0.01,
        rttvar=0.005,
        rto=0.2,
        cwnd=14600,
        ssthresh=1 << 30,
        host_space=1 << 20,
    ).to_dict()
    t.update(kw)
    return t


class GuestTcp:
    """Builds the guest's segments of one flow (frames as the guest's TAP hands them over)."""

    def __init__(self, guest=GUEST, gport=40000, remote=GATEWAY, rport=80, seq=5001, ack=1001, ts=True, mss=1460):
        self.guest, self.gport, self.remote, self.rport = guest, gport, remote, rport
        self.seq, self.ack = seq, ack
        self.tsval = 1000 if ts else None
        self.tsecr = 0
        self.window = 65535
        self.mss = mss

    def frame(
        self,
        flags=ACK,
        payload=b"",
        seq=None,
        ack=None,
        window=None,
        offload="csum",
        gso=True,
        tsval=None,
        timestamp="auto",
        advance=True,
        dst_mac=OUR_MAC,
        **opts,
    ) -> bytes:
        if timestamp == "auto":
            timestamp = None if self.tsval is None else (self.tsval if tsval is None else tsval, self.tsecr)
        hdr = TcpHeader(
            self.gport,
            self.rport,
            self.seq if seq is None else seq,
            self.ack if ack is None else ack,
            flags,
            self.window if window is None else window,
            timestamp=timestamp,
            **opts,
        )
        eff = self.mss - (12 if timestamp else 0)
        buf = tcp_frame(dst_mac, GUEST_MAC, self.guest, self.remote, hdr, payload, eff if gso else 0)
        if offload != "csum":
            finish(buf, offload)
        if advance and seq is None:
            self.seq = (self.seq + len(payload)) & M
        return bytes(buf)


def finish(buf: bytearray, offload: str) -> None:
    """Turn a NEEDS_CSUM frame into one with a complete checksum (``none``:
    all-zero vnet header, ``valid``: DATA_VALID) or a wrong one (``bad``)."""
    cs = buf[6] | (buf[7] << 8)
    co = buf[8] | (buf[9] << 8)
    l4 = 10 + cs
    full = checksum(bytes(buf[l4:]))
    if offload == "bad":
        full ^= 0x0101
    struct.pack_into("!H", buf, l4 + co, full)
    buf[0:10] = bytes(10)
    if offload == "valid":
        buf[0] = 2


def guest_udp(payload, sport=5353, dst=GATEWAY, dport=9, src=GUEST, offload="csum", dst_mac=OUR_MAC) -> bytes:
    buf = udp_frame(dst_mac, GUEST_MAC, src, dst, sport, dport, payload)
    if offload != "csum":
        finish(buf, offload)
    return bytes(buf)


def normalize(item, side=None):
    if isinstance(item, Ejected):
        return ("Ejected", item.flow, item.reason, item.errno, tuple(sorted(item.tcb.items())), item.send_bytes,
                item.host_eof, item.state)  # fmt: skip
    if isinstance(item, Closed):
        return ("Closed", item.flow, item.how, item.errno)
    if isinstance(item, Frame):
        return ("Frame", item.data)
    if isinstance(item, UdpDatagram):
        addr = item.addr
        if side is not None and addr == socket.inet_aton(side.lo):
            addr = "this side's loopback"  # each side has its own (SIDE_LOOPBACK)
        return ("UdpDatagram", item.flow, addr, item.port, item.data)
    if isinstance(item, UdpError):
        addr = item.addr
        if side is not None and addr == socket.inet_aton(side.lo):
            addr = "this side's loopback"
        return ("UdpError", item.flow, item.errno, addr, item.port)
    raise TypeError(item)


class TcpConn:
    """A loopback TCP connection: ``edge`` is the datapath's socket, ``peer`` the far end."""

    def __init__(self, v6=False, sndbuf=BIG_SNDBUF, peer_rcvbuf=None):
        fam, host = (socket.AF_INET6, "::1") if v6 else (socket.AF_INET, "127.0.0.1")
        ls = socket.socket(fam, socket.SOCK_STREAM)
        ls.bind((host, 0))
        ls.listen(1)
        self.edge = socket.socket(fam, socket.SOCK_STREAM)
        if sndbuf:
            self.edge.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        # peeked bytes stay in the receive queue until the guest acks them:
        # room for INFLIGHT_MAX and more, independent of autotuning
        self.edge.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.edge.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.edge.connect(ls.getsockname()[:2])
        self.peer, _ = ls.accept()
        ls.close()
        if peer_rcvbuf:
            self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
        self.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.edge.setblocking(False)
        self.peer.setblocking(False)

    def close(self):
        self.edge.close()
        self.peer.close()


class Side:
    """One datapath implementation with its own TAP stand-in."""

    def __init__(self, kind, mtu=1500, slow=(DNS,), peek_offset=True, max_flows=16384):
        self.kind = kind
        self.lo = SIDE_LOOPBACK[kind]
        lo = socket.inet_aton(self.lo)
        self.tap_dp, self.tap_guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.tap_dp, self.tap_guest):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.tap_dp.setblocking(False)
        self.tap_guest.setblocking(False)
        self.dp = open_datapath(
            kind,
            tap_fd=self.tap_dp.fileno(),
            mtu=mtu,
            forward_map={GATEWAY: lo, GATEWAY6: LO6},
            reverse_map={lo: GATEWAY, LO6: GATEWAY6},
            slow_addrs=slow,
            peek_offset=peek_offset,
            max_flows=max_flows,
        )
        self.conns = {}
        self.udps = {}
        self.servers = {}
        self.host_rx = {}

    # -- flows
    def add_tcp(self, flow, v6=False, tcb=None, guest=None, remote=None, gport=40000, rport=80,
                rcv_buf_max=1 << 20, now=0.0, state="ESTABLISHED", **conn_kw):  # fmt: skip
        c = TcpConn(v6=v6, **conn_kw)
        self.conns[flow] = c
        self.host_rx[flow] = bytearray()
        spec = TcpFlow(
            flow=flow,
            fd=c.edge.fileno(),
            guest_addr=guest or (GUEST6 if v6 else GUEST),
            guest_port=gport,
            remote_addr=remote or (GATEWAY6 if v6 else GATEWAY),
            remote_port=rport,
            guest_mac=GUEST_MAC,
            our_mac=OUR_MAC,
            tcb=dict(tcb or base_tcb()),
            rcv_buf_max=rcv_buf_max,
            now=now,
            state=state,
        )
        self.dp.install_tcp(spec)
        return c

    def add_udp(self, flow, v6=False, gport=5353, guest=None, server_port=None):
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setblocking(False)
        self.udps[flow] = s
        self.dp.install_udp(
            UdpFlow(flow=flow, fd=s.fileno(), guest_addr=guest or (GUEST6 if v6 else GUEST), guest_port=gport,
                    guest_mac=GUEST_MAC, our_mac=OUR_MAC)  # fmt: skip
        )
        return s

    def udp_server(self, port, v6=False):
        fam, host = (socket.AF_INET6, "::1") if v6 else (socket.AF_INET, self.lo)
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((host, port))
        s.setblocking(False)
        self.servers[(v6, s.getsockname()[1])] = s
        return s

    # -- I/O
    def to_tap(self, frame: bytes):
        self.tap_guest.send(frame)

    def from_tap(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.tap_guest.recv(1 << 17))
            except BlockingIOError:
                return out

    def drain_host(self, flow) -> bytes:
        c = self.conns[flow]
        while True:
            try:
                chunk = c.peer.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                break
            if not chunk:
                break
            self.host_rx[flow] += chunk
        return bytes(self.host_rx[flow])

    def wait_host(self, timeout=1.0) -> bool:
        r, _, _ = select.select([self.dp.fileno()], [], [], timeout)
        return bool(r)

    def close(self):
        self.dp.close()
        for c in self.conns.values():
            c.close()
        for s in list(self.udps.values()) + list(self.servers.values()):
            s.close()
        self.tap_dp.close()
        self.tap_guest.close()


class Twin:
    """The same inputs into every implementation; every output compared."""

    def __init__(self, kinds=KINDS, **side_kw):
        self.sides = [Side(k, **side_kw) for k in kinds]
        self.now = 100.0

    def close(self):
        for s in self.sides:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def py(self) -> Side:
        return self.sides[0]

    def each(self, fn):
        return [fn(s) for s in self.sides]

    def same(self, values, what):
        first = values[0]
        for kind, v in zip((s.kind for s in self.sides[1:]), values[1:]):
            assert v == first, f"{what}: python != {kind}:\n  python: {_short(first)}\n  {kind}: {_short(v)}"
        return first

    def _outputs(self, items_per_side, what):
        self.same(
            [[normalize(i, s) for i in items] for s, items in zip(self.sides, items_per_side)], what + " items"
        )
        items = items_per_side[0]
        frames = self.same(self.each(lambda s: s.from_tap()), what + " frames")
        self.same(self.each(lambda s: s.dp.stats()), what + " stats")
        self.same(self.each(lambda s: s.dp.next_deadline()), what + " deadline")
        return items, frames

    # -- steps
    def add_tcp(self, flow, **kw):
        self.each(lambda s: s.add_tcp(flow, now=self.now, **kw))

    def add_udp(self, flow, **kw):
        self.each(lambda s: s.add_udp(flow, **kw))

    def guest(self, *frames):
        """Frames from the guest; one tap_readable call.  Returns (items, frames to the guest)."""
        for s in self.sides:
            for fr in frames:
                s.to_tap(fr)
        return self._outputs(self.each(lambda s: s.dp.tap_readable(self.now)), "tap_readable")

    def inject(self, frame: bytes):
        """One frame handed back with inject().  Returns (items, frames to the guest)."""
        return self._outputs(self.each(lambda s: s.dp.inject(frame, self.now)), "inject")

    def host_send(self, flow, data: bytes):
        for s in self.sides:
            s.conns[flow].peer.sendall(data)
        return self.host(wait=True)

    def host(self, wait=False):
        if wait:
            for s in self.sides:
                assert s.wait_host(), f"{s.kind}: epoll fd not readable"
        return self._outputs(self.each(lambda s: s.dp.host_readable(self.now)), "host_readable")

    def settle(self, flow):
        """Wait until the host side has received the same bytes on every side."""
        deadline = time.monotonic() + 2
        while True:
            got = self.each(lambda s: s.drain_host(flow))
            if all(g == got[0] for g in got) or time.monotonic() > deadline:
                return self.same(got, "host bytes")
            time.sleep(0.005)

    def timers(self, now=None):
        if now is not None:
            self.now = now
        return self._outputs(self.each(lambda s: s.dp.timers(self.now)), "timers")

    def eject(self, flow):
        items = self.each(lambda s: [s.dp.eject_tcp(flow, self.now)])
        return self._outputs(items, "eject")[0][0]

    def deadline(self):
        return self.same(self.each(lambda s: s.dp.next_deadline()), "deadline")


def _short(v):
    text = repr(v)
    return text if len(text) < 600 else text[:600] + "..."


def parse_out(frame: bytes) -> dict:
    """Dissect a frame the datapath wrote (vnet + Ethernet + IPv4/IPv6 + TCP/UDP)."""
    vnet = struct.unpack_from("<BBHHHH", frame, 0)
    etype = struct.unpack_from("!H", frame, 22)[0]
    d = {"vnet": vnet, "dst_mac": frame[10:16], "src_mac": frame[16:22]}
    if etype == 0x0800:
        proto = frame[33]
        d.update(src=frame[36:40], dst=frame[40:44], l4=44, ip_len=struct.unpack_from("!H", frame, 26)[0])
    else:
        proto = frame[30]
        d.update(src=frame[32:48], dst=frame[48:64], l4=64, ip_len=40 + struct.unpack_from("!H", frame, 28)[0])
    l4 = d["l4"]
    d["proto"] = proto
    if proto == 6:
        sport, dport, seq, ack, off, flags, win = struct.unpack_from("!HHIIBBH", frame, l4)
        hlen = (off >> 4) * 4
        d.update(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=win, payload=frame[l4 + hlen :])
        if hlen == 32:
            d["ts"] = struct.unpack_from("!II", frame, l4 + 24)
    else:
        sport, dport, ulen, _ = struct.unpack_from("!HHHH", frame, l4)
        d.update(sport=sport, dport=dport, payload=frame[l4 + 8 : l4 + ulen])
    return d


def replace(obj, **kw):
    return dataclasses.replace(obj, **kw)
