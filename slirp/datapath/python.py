"""PythonDatapath: the pure-Python implementation of the datapath contract.

It is the oracle of the parity tests (tests/unit/test_datapath_parity.py)
and the fallback when slirp._native is not built, so it is written for
clarity first; every rule of slirp/datapath/__init__.py lives here in the
same order as in native/datapath.c.  Layout of one call:

* ``tap_readable``: read a frame, classify it (:meth:`_frame_from_guest`),
  handle it (TCP: :meth:`_tcp_segment`, UDP: :meth:`_udp_datagram`) or
  hand it up; at the end of the batch every touched TCP flow is flushed
  (:meth:`_flush`: host data the guest's window allows, then the pending ACK).
* ``host_readable``: epoll (timeout 0), events sorted by flow id, each flow
  serviced once.
* ``timers``: due flows in flow-id order.

Frames toward the guest are built in one reusable buffer with the headers in
front of the payload (``_tx``): the payload is peeked from the host socket
straight into place, then written to the TAP.
"""

from __future__ import annotations

import errno as errno_mod
import fcntl
import os
import select
import socket
import struct
import termios

from netstack.wire.checksum import checksum, csum_fold, csum_partial

from . import (
    EJECT_REASONS,
    HOST_EVENTS_MAX,
    INFLIGHT_MAX,
    MAX_RTO_RETRIES,
    PAWS_IDLE_S,
    RTO_MAX_S,
    RTO_MIN_S,
    TAP_READ_BUDGET,
    UDP_BIG_MAX,
    UDP_RECV_BUDGET,
    CLOCK_GRANULARITY_S,
    STAT_NAMES,
    TIME_WAIT_S,
    Closed,
    Ejected,
    Frame,
    TcpFlow,
    UdpDatagram,
    UdpError,
    UdpFlow,
    read_icmp_errors,
    read_send_bytes,
)

MASK = 0xFFFFFFFF
HALF = 1 << 31
VNET_LEN = 10
ETH_LEN = 14
L3 = VNET_LEN + ETH_LEN
TAP_BUF_LEN = VNET_LEN + 65536 + 14 + 64  # never truncate a 64 KiB frame (gotcha 6)
MAX_FRAME_LEN = 65535  # Ethernet + IP + TCP + payload of one GSO frame
SO_PEEK_OFF = 42
SO_MEMINFO = 55
MEMINFO_SNDBUF = 3
MEMINFO_WMEM_QUEUED = 5
SKB_COST_EST = 1024  # bytes of send space one small write may cost beyond its payload
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10
PSH = 0x08
TS_BLOCK = b"\x01\x01\x08\x0a"

EP_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
EP_OUT = select.EPOLLOUT
EP_UDP = select.EPOLLIN

T_NONE, T_RTX, T_PERSIST, T_TIME_WAIT = 0, 1, 2, 3

# TCP states of an installed flow (native/slirpnet.h enum sn_dp_state)
ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT, SYN_RECEIVED, SYN_SENT = range(9)
STATE_NAMES = (
    "ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK", "TIME_WAIT", "SYN_RECEIVED",
    "SYN_SENT",
)  # fmt: skip
_INSTALL_STATES = {"ESTABLISHED": ESTABLISHED, "SYN_RECEIVED": SYN_RECEIVED, "SYN_SENT": SYN_SENT}
_HANDSHAKE = (SYN_RECEIVED, SYN_SENT)
MIN_MSS = 88  # netstack/tcp/config.py: floor of the guest's MSS option
DEFAULT_MSS_V4 = 536  # RFC 9293 §3.7.1: no MSS option
DEFAULT_MSS_V6 = 1220
_FIN_TAKEN = (CLOSE_WAIT, CLOSING, LAST_ACK)

_VNET = struct.Struct("<BBHHHH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_TS = struct.Struct("!4sII")
_UDP = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_INT = struct.Struct("i")
_MEMINFO = struct.Struct("9I")  # SK_MEMINFO_RMEM_ALLOC .. SK_MEMINFO_DROPS


def _lt(a: int, b: int) -> bool:
    return ((a - b) & MASK) >= HALF


def _gt(a: int, b: int) -> bool:
    return ((b - a) & MASK) >= HALF


def _sub(a: int, b: int) -> int:
    return (a - b) & MASK


class _Tcp:
    """One installed TCP flow (TCB fields flat, plus fast-path state)."""

    __slots__ = (
        "flow", "fd", "sock", "key", "v6", "gaddr", "gport", "raddr", "rport", "gmac", "omac",
        "iss", "irs", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "max_snd_wnd",
        "snd_wscale", "rcv_nxt", "rcv_adv", "rcv_wscale", "mss", "ts_ok", "ts_recent", "ts_recent_at",
        "ts_offset", "srtt", "rttvar", "rto", "cwnd", "ssthresh", "host_space",
        "rcv_wnd_max", "our_mss", "eff_mss", "max_payload", "l4off", "tcp_hlen", "pseudo",
        "timer", "timer_at", "retries", "dupacks", "ack_pending", "want_output", "drained", "space_stale",
        "space_max", "watching_out", "host_fin", "kernel_peek", "batch",
        "state", "host_eof", "fin_sent", "fin_seq", "tw_seq",
    )  # fmt: skip


class _Udp:
    __slots__ = ("flow", "fd", "sock", "key", "v6", "gaddr", "gport", "gmac", "omac")


_TCB_FIELDS = (
    "iss", "irs", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "max_snd_wnd", "snd_wscale",
    "rcv_nxt", "rcv_adv", "rcv_wscale", "mss", "ts_ok", "ts_recent", "ts_recent_at", "ts_offset", "srtt",
    "rttvar", "rto", "cwnd", "ssthresh", "host_space",
)  # fmt: skip


_ULA64 = b"\xfd" + bytes(7)
_ZERO12 = bytes(12)
_V4MAPPED = bytes(10) + b"\xff\xff"


def _special_dst(d: bytes) -> bool:
    """Destinations netstack's policy never sends as they are (see
    is_special_dst in native/datapath.c): loopback, unspecified, IPv4-mapped
    and -compatible, link-local, fd00::/64, multicast/broadcast."""
    if len(d) == 4:
        return d[0] == 0 or d[0] == 127 or d[0] >= 224
    return (
        d[0] == 0xFF
        or (d[0] == 0xFE and d[1] & 0xC0 == 0x80)
        or d[:8] == _ULA64
        or d[:12] == _ZERO12
        or d[:12] == _V4MAPPED
    )


class PythonDatapath:
    def __init__(
        self,
        tap_fd: int,
        mtu: int,
        forward_map: dict[bytes, bytes] | None = None,
        reverse_map: dict[bytes, bytes] | None = None,
        slow_addrs=(),
        *,
        max_flows: int = 16384,
        peek_offset: bool = True,
    ) -> None:
        self._tap = tap_fd
        self._mtu = mtu
        self._fwd = dict(forward_map or {})
        self._rev = dict(reverse_map or {})
        self._slow_addrs = frozenset(slow_addrs)
        self._max_flows = max_flows
        self._peek_offset = peek_offset
        self._ep = select.epoll()
        self._keys: dict[tuple, object] = {}
        self._ids: dict[int, object] = {}
        self._fds: dict[int, object] = {}
        self._rx = bytearray(TAP_BUF_LEN)
        self._rxv = memoryview(self._rx)
        self._tx = bytearray(VNET_LEN + 65536 + 128)
        self._txv = memoryview(self._tx)
        self._scratch = bytearray(INFLIGHT_MAX)
        self._scratchv = memoryview(self._scratch)
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._activity: dict[int, None] = {}
        self._items: list = []
        self._batch = 0
        self._touched: list[_Tcp] = []
        self._tap_error = 0
        self._tw_seq = 0

    # ------------------------------------------------------------------ api

    threaded = False  # the Python twin always runs synchronously in the caller's thread

    def fileno(self) -> int:
        return self._ep.fileno()

    def close(self) -> None:
        for f in list(self._ids.values()):
            self._forget(f)
        self._ep.close()

    def owns(self, flow: int) -> bool:
        f = self._ids.get(flow)
        return f is not None and not (type(f) is _Tcp and f.state == TIME_WAIT)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def take_activity(self) -> list[int]:
        out = list(self._activity)
        self._activity.clear()
        return out

    def next_deadline(self) -> float | None:
        best = None
        for f in self._ids.values():
            if type(f) is _Tcp and f.timer != T_NONE and (best is None or f.timer_at < best):
                best = f.timer_at
        return best

    def install_tcp(self, spec: TcpFlow) -> None:
        t = spec.tcb
        state = _INSTALL_STATES.get(spec.state)
        if state is None:
            raise ValueError(f"install_tcp: cannot install a flow in {spec.state}")
        if state in _HANDSHAKE:
            if not ((t["snd_una"] + 1) & MASK == t["snd_nxt"] == t["snd_max"]):
                raise ValueError("install_tcp: more than our SYN outstanding")
            if state == SYN_SENT and not t["ts_ok"]:
                raise ValueError("install_tcp: the SYN offered timestamps (see _syn_sent_segment)")
        elif not (t["snd_una"] == t["snd_nxt"] == t["snd_max"]):
            raise ValueError("install_tcp: data in flight")
        v6 = len(spec.guest_addr) == 16
        if len(spec.remote_addr) != len(spec.guest_addr) or len(spec.guest_addr) not in (4, 16):
            raise ValueError("install_tcp: bad addresses")
        key = (6, spec.guest_addr, spec.guest_port, spec.remote_addr, spec.remote_port)
        self._check_new(spec.flow, spec.fd, key)
        f = _Tcp()
        f.flow, f.fd, f.key, f.v6 = spec.flow, spec.fd, key, v6
        f.gaddr, f.gport, f.raddr, f.rport = spec.guest_addr, spec.guest_port, spec.remote_addr, spec.remote_port
        f.gmac, f.omac = bytes(spec.guest_mac), bytes(spec.our_mac)
        for name in _TCB_FIELDS:
            setattr(f, name, t[name])
        f.ts_ok = bool(t["ts_ok"])
        iphlen = 40 if v6 else 20
        opts = 12 if f.ts_ok else 0
        f.rcv_wnd_max = min(spec.rcv_buf_max, 0xFFFF << f.rcv_wscale)
        f.our_mss = self._mtu - iphlen - 20
        self._derive_mss(f)
        f.l4off = L3 + iphlen
        f.tcp_hlen = 20 + opts
        f.pseudo = csum_partial(f.raddr + f.gaddr, 6)
        f.timer, f.timer_at = T_NONE, 0.0
        f.retries = f.dupacks = 0
        f.ack_pending = f.want_output = f.drained = False
        f.space_stale = True
        f.space_max = max(0, f.host_space)
        f.watching_out = f.host_fin = False
        f.state, f.host_eof, f.fin_sent, f.fin_seq, f.tw_seq = ESTABLISHED, False, False, 0, 0
        f.batch = -1
        f.sock = socket.socket(fileno=f.fd)
        f.kernel_peek = False
        if self._peek_offset:
            try:
                f.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
                f.kernel_peek = True
            except OSError:
                pass
        try:
            self._ep.register(f.fd, EP_IN)
        except OSError:
            f.sock.detach()
            raise
        self._add(f)
        if state in _HANDSHAKE:
            f.state = state
            f.timer, f.timer_at = T_RTX, spec.now + f.rto  # netstack's SYN(-ACK) retransmission timer

    def install_udp(self, spec: UdpFlow) -> None:
        if len(spec.guest_addr) not in (4, 16):
            raise ValueError("install_udp: bad address")
        key = (17, spec.guest_addr, spec.guest_port)
        self._check_new(spec.flow, spec.fd, key)
        u = _Udp()
        u.flow, u.fd, u.key, u.v6 = spec.flow, spec.fd, key, len(spec.guest_addr) == 16
        u.gaddr, u.gport, u.gmac, u.omac = spec.guest_addr, spec.guest_port, bytes(spec.guest_mac), bytes(spec.our_mac)
        u.sock = socket.socket(fileno=u.fd)
        try:
            self._ep.register(u.fd, EP_UDP)
        except OSError:
            u.sock.detach()
            raise
        self._add(u)

    def eject_tcp(self, flow: int, now: float) -> Ejected:
        f = self._ids.get(flow)
        if type(f) is not _Tcp or f.state == TIME_WAIT:
            raise KeyError(flow)
        self._items = []
        self._eject(f, "requested", 0, now)
        return self._items.pop()

    def remove_udp(self, flow: int) -> None:
        u = self._ids.get(flow)
        if type(u) is not _Udp:
            raise KeyError(flow)
        self._forget(u)
        self._activity.pop(flow, None)

    def tap_readable(self, now: float) -> list:
        items = self._items = []
        self._batch += 1
        self._touched = []
        fd = self._tap
        rx = self._rx
        stats = self._stats
        for _ in range(TAP_READ_BUDGET):
            try:
                n = os.readv(fd, (rx,))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as err:
                stats["dp.tap_read_errors"] += 1
                self._tap_error = err.errno
                break
            if n <= 0:
                break
            stats["dp.tap_frames"] += 1
            self._frame_from_guest(self._rxv[:n], now)
        self._batch_end(now)
        if not items and self._tap_error:
            err, self._tap_error = self._tap_error, 0
            raise OSError(err, os.strerror(err))
        self._tap_error = 0
        return items

    def inject(self, frame: bytes, now: float) -> list:
        items = self._items = []
        self._batch += 1
        self._touched = []
        self._frame_from_guest(memoryview(bytes(frame)), now)
        self._batch_end(now)
        return items

    def _batch_end(self, now: float) -> None:
        for f in self._touched:
            if self._ids.get(f.flow) is f:
                self._flush(f, now)
        self._touched = []

    def host_readable(self, now: float) -> list:
        items = self._items = []
        events = self._ep.poll(0, HOST_EVENTS_MAX)
        ready = []
        for fd, ev in events:
            f = self._fds.get(fd)
            if f is not None:
                ready.append((f.flow, f, ev))
        ready.sort(key=lambda r: r[0])
        big = 0
        for _, f, ev in ready:
            if self._ids.get(f.flow) is not f:
                continue
            if type(f) is _Tcp:
                self._tcp_host_event(f, ev, now)
            else:
                big = self._udp_host_event(f, ev, big)
        return items

    def timers(self, now: float) -> list:
        items = self._items = []
        due = sorted(
            (f.flow, f) for f in self._ids.values() if type(f) is _Tcp and f.timer != T_NONE and f.timer_at <= now
        )
        for _, f in due:
            if self._ids.get(f.flow) is not f:
                continue
            kind = f.timer
            f.timer = T_NONE
            if kind == T_TIME_WAIT:
                self._stats["dp.time_wait_ended"] += 1
                self._forget(f)
                continue
            if kind == T_PERSIST:
                self._eject(f, "zero_window", 0, now)
                continue
            if f.snd_max == f.snd_una:
                continue
            self._stats["dp.rto_expiries"] += 1
            if f.state in _HANDSHAKE:
                self._eject(f, "timeout", 0, now)  # our SYN(-ACK) went unanswered: netstack retransmits it
                continue
            f.retries += 1
            if f.retries >= MAX_RTO_RETRIES:
                self._eject(f, "timeout", 0, now)
                continue
            if f.snd_wnd == 0 and not f.fin_sent:
                self._eject(f, "zero_window", 0, now)
                continue
            f.rto = min(f.rto * 2, RTO_MAX_S)
            self._go_back_n(f)
            f.timer, f.timer_at = T_RTX, now + f.rto
            self._flush(f, now)
        return items

    # ------------------------------------------------------------------ table

    def _check_new(self, flow: int, fd: int, key: tuple) -> None:
        old = self._keys.get(key)
        time_wait = type(old) is _Tcp and old.state == TIME_WAIT
        if flow in self._ids or (old is not None and not time_wait) or fd in self._fds:
            raise ValueError(f"flow {flow}: already installed (id, key or fd)")  # before anything changed
        if time_wait:
            # a new incarnation of a key in TIME_WAIT (netstack opened it)
            self._stats["dp.time_wait_reused"] += 1
            self._forget(old)
        if len(self._ids) >= self._max_flows:
            # overflow policy: TIME_WAIT flows are recycled first (as netstack's)
            waiting = [f for f in self._ids.values() if type(f) is _Tcp and f.timer == T_TIME_WAIT]
            if not waiting:
                raise OverflowError("datapath flow table full")
            self._stats["dp.time_wait_ended"] += 1
            self._forget(min(waiting, key=lambda f: (f.timer_at, f.tw_seq)))  # the oldest

    def _add(self, f) -> None:
        self._keys[f.key] = f
        self._ids[f.flow] = f
        self._fds[f.fd] = f

    def _forget(self, f) -> None:
        del self._keys[f.key]
        del self._ids[f.flow]
        if f.fd < 0:
            return  # TIME_WAIT: the socket went with the Closed item
        del self._fds[f.fd]
        try:
            self._ep.unregister(f.fd)
        except OSError:
            pass
        if type(f) is _Tcp and f.kernel_peek:
            try:
                f.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
            except OSError:
                pass
        f.sock.detach()

    # ------------------------------------------------------------------ guest → us

    def _slow(self, frame: memoryview, malformed: bool = False) -> None:
        st = self._stats
        st["dp.slow_frames"] += 1
        if malformed:
            st["dp.malformed"] += 1
        self._items.append(Frame(bytes(frame)))

    def _frame_from_guest(self, b: memoryview, now: float) -> None:
        n = len(b)
        if n < L3:
            self._slow(b, True)
            return
        etype = (b[L3 - 2] << 8) | b[L3 - 1]
        if etype == 0x0800:
            if n < L3 + 20 or b[L3] >> 4 != 4:
                self._slow(b, True)
                return
            if b[L3] != 0x45:
                self._slow(b)  # IP options: netstack's
                return
            total = (b[L3 + 2] << 8) | b[L3 + 3]
            if total < 20 or L3 + total > n or checksum(b[L3 : L3 + 20]) != 0:
                self._slow(b, True)
                return
            if ((b[L3 + 6] << 8) | b[L3 + 7]) & 0x3FFF:
                self._slow(b)  # a fragment
                return
            proto = b[L3 + 9]
            src, dst = bytes(b[L3 + 12 : L3 + 16]), bytes(b[L3 + 16 : L3 + 20])
            l4, l4len = L3 + 20, total - 20
        elif etype == 0x86DD:
            if n < L3 + 40 or b[L3] >> 4 != 6:
                self._slow(b, True)
                return
            l4len = (b[L3 + 4] << 8) | b[L3 + 5]
            if L3 + 40 + l4len > n:
                self._slow(b, True)
                return
            proto = b[L3 + 6]
            src, dst = bytes(b[L3 + 8 : L3 + 24]), bytes(b[L3 + 24 : L3 + 40])
            l4 = L3 + 40
        else:
            self._slow(b)
            return
        if proto == 6:
            if l4len < 20:
                self._slow(b, True)
                return
            doff = (b[l4 + 12] >> 4) * 4
            if doff < 20 or doff > l4len:
                self._slow(b, True)
                return
            key = (6, src, (b[l4] << 8) | b[l4 + 1], dst, (b[l4 + 2] << 8) | b[l4 + 3])
            f = self._keys.get(key)
            if f is None or bytes(b[VNET_LEN : VNET_LEN + 6]) != f.omac:
                self._slow(b)
                return
            if not b[0] & (F_NEEDS_CSUM | F_DATA_VALID) and not self._l4_ok(b, l4, l4len, src, dst, 6):
                self._stats["dp.bad_checksum"] += 1
                return
            self._tcp_segment(f, b, l4, l4len, doff, now)
        elif proto == 17:
            if l4len < 8:
                self._slow(b, True)
                return
            ulen = (b[l4 + 4] << 8) | b[l4 + 5]
            if ulen < 8 or ulen > l4len:
                self._slow(b, True)
                return
            u = self._keys.get((17, src, (b[l4] << 8) | b[l4 + 1]))
            if u is None or bytes(b[VNET_LEN : VNET_LEN + 6]) != u.omac:
                self._slow(b)
                return
            dport = (b[l4 + 2] << 8) | b[l4 + 3]
            if (
                dport == 0
                or dport == 67
                or dst in self._slow_addrs
                or (_special_dst(dst) and dst not in self._fwd)
            ):
                self._slow(b)
                return
            if not b[0] & (F_NEEDS_CSUM | F_DATA_VALID):
                zero = b[l4 + 6] == 0 and b[l4 + 7] == 0
                if (zero and len(dst) == 16) or (not zero and not self._l4_ok(b, l4, ulen, src, dst, 17)):
                    self._stats["dp.bad_checksum"] += 1
                    return
            self._udp_datagram(u, b, l4, ulen, dst, dport)
        else:
            self._slow(b)

    @staticmethod
    def _l4_ok(b: memoryview, l4: int, length: int, src: bytes, dst: bytes, proto: int) -> bool:
        seed = csum_partial(src + dst, proto + length)
        return checksum(b[l4 : l4 + length], seed) == 0

    # ------------------------------------------------------------------ UDP

    def _udp_datagram(self, u: _Udp, b: memoryview, l4: int, ulen: int, dst: bytes, dport: int) -> None:
        self._activity[u.flow] = None
        addr = self._fwd.get(dst, dst)
        target = (socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr), dport)
        payload = b[l4 + 8 : l4 + ulen]
        gso = b[4] | (b[5] << 8)
        if b[1] & 0x7F == GSO_UDP_L4:
            if gso == 0:
                self._stats["dp.malformed"] += 1
                return
            chunks = [payload[i : i + gso] for i in range(0, len(payload), gso)] or [payload]
        else:
            chunks = [payload]
        st = self._stats
        if len(addr) != len(u.gaddr):
            st["dp.udp_send_errors"] += 1
            return
        for chunk in chunks:
            try:
                u.sock.sendto(chunk, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, target)
            except BlockingIOError:
                st["dp.udp_send_eagain"] += 1
                continue
            except OSError as err:
                if err.errno in (errno_mod.ECONNREFUSED, errno_mod.EHOSTUNREACH, errno_mod.ENETUNREACH):
                    self._udp_errors(u)  # the error that failed this send is queued
                else:
                    st["dp.udp_send_errors"] += 1
                return
            st["dp.udp_to_host"] += 1

    def _udp_errors(self, u: _Udp) -> None:
        for err, addr, port in read_icmp_errors(u.sock):
            self._stats["dp.udp_icmp_errors"] += 1
            self._items.append(UdpError(u.flow, err, addr, port))

    def _udp_host_event(self, u: _Udp, ev: int, big: int) -> int:
        if ev & select.EPOLLERR:
            self._udp_errors(u)
            return big
        iphlen = 40 if u.v6 else 20
        off = L3 + iphlen + 8
        fits = self._mtu - iphlen - 8
        txv = self._txv
        st = self._stats
        for _ in range(UDP_RECV_BUDGET):
            if big >= UDP_BIG_MAX:
                break
            try:
                n, peer = u.sock.recvfrom_into(txv[off : off + 65535 - 8], 65535 - 8, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._udp_errors(u)
                break
            self._activity[u.flow] = None
            fam = socket.AF_INET6 if u.v6 else socket.AF_INET
            src = socket.inet_pton(fam, peer[0].partition("%")[0])
            if n > fits:
                st["dp.udp_too_big"] += 1
                big += 1
                self._items.append(UdpDatagram(u.flow, src, peer[1], bytes(txv[off : off + n])))
                continue
            shown = self._rev.get(src, src)
            l4len = 8 + n
            self._ip_header(u.v6, u.gmac, u.omac, shown, u.gaddr, 17, l4len)
            l4 = L3 + iphlen
            seed = csum_fold(csum_partial(shown + u.gaddr, 17 + l4len))
            _UDP.pack_into(self._tx, l4, peer[1], u.gport, l4len, seed)
            _VNET.pack_into(self._tx, 0, F_NEEDS_CSUM, GSO_NONE, 0, 0, l4 - VNET_LEN, 6)
            if self._write(l4 + l4len):
                st["dp.udp_to_guest"] += 1
        return big

    # ------------------------------------------------------------------ TCP from the guest

    def _touch(self, f: _Tcp) -> None:
        if f.batch != self._batch:
            f.batch = self._batch
            self._touched.append(f)

    def _time_wait_segment(self, f: _Tcp, b: memoryview, flags: int, plen: int, now: float) -> None:
        """A segment for a flow in TIME_WAIT (its socket is gone)."""
        st = self._stats
        if flags & RST:
            st["dp.time_wait_ended"] += 1
            self._forget(f)
            return
        if flags & SYN:
            # a new incarnation (RFC 9293 §3.6.1): the guest's SYN, or its SYN|ACK
            # to a port forward netstack opened on the same key — netstack's
            st["dp.time_wait_reused"] += 1
            self._forget(f)
            self._slow(b)
            return
        if plen or flags & FIN:
            # a retransmission: our last ACK was lost; stay (netstack restarts too)
            self._time_wait_timer(f, now)
            self._send_ack(f, now)

    def _tcp_segment(self, f: _Tcp, b: memoryview, l4: int, l4len: int, doff: int, now: float) -> None:
        st = self._stats
        flags = b[l4 + 13]
        plen = l4len - doff
        if f.state == TIME_WAIT:
            self._time_wait_segment(f, b, flags, plen, now)
            return
        if f.state == SYN_SENT:
            self._syn_sent_segment(f, b, l4, l4len, doff, now)
            return
        if flags & RST:
            # RFC 5961 §3.2: only an exact RST ends the flow here; netstack challenges the others
            if flags & ~ACK == RST and _U32.unpack_from(b, l4 + 4)[0] == f.rcv_nxt:
                graceful = f.state in (CLOSING, LAST_ACK) and f.snd_una == f.fin_seq
                self._close_flow(f, "fin" if graceful else "reset", 0)
            else:
                self._eject_segment(f, b, now)
            return
        if flags & ~(PSH | FIN) != ACK:
            self._eject_segment(f, b, now)
            return
        if f.ts_ok:
            if doff != 32 or b[l4 + 20 : l4 + 24] != TS_BLOCK:
                self._eject_segment(f, b, now)
                return
            tsval, tsecr = _U32.unpack_from(b, l4 + 24)[0], _U32.unpack_from(b, l4 + 28)[0]
        elif doff != 20:
            self._eject_segment(f, b, now)
            return
        else:
            tsval = tsecr = 0
        self._touch(f)
        seq = _U32.unpack_from(b, l4 + 4)[0]
        ack = _U32.unpack_from(b, l4 + 8)[0]
        wnd = ((b[l4 + 14] << 8) | b[l4 + 15]) << f.snd_wscale
        if f.state == SYN_RECEIVED:
            # 0. the guest's ACK of our SYN-ACK, exactly: at rcv_nxt, acking
            # snd_max, no FIN, passing PAWS; anything else is netstack's
            if (
                flags & FIN
                or seq != f.rcv_nxt
                or ack != f.snd_max
                or (f.ts_ok and _lt(tsval, f.ts_recent) and now - f.ts_recent_at < PAWS_IDLE_S)
            ):
                self._eject_segment(f, b, now)
                return
            self._handshake_done(f, seq, ack, wnd, tsecr, now)
        # 1. PAWS (RFC 7323 §5.3; a TS.Recent idle for 24 days is void, §5.5)
        if f.ts_ok and _lt(tsval, f.ts_recent) and now - f.ts_recent_at < PAWS_IDLE_S:
            st["dp.paws"] += 1
            self._send_ack(f, now)
            return
        if f.ts_ok and not _gt(seq, f.rcv_nxt) and not _lt(tsval, f.ts_recent):
            f.ts_recent, f.ts_recent_at = tsval, now  # RFC 7323 §4.3 (3)
        # 2. ACK
        if _gt(ack, f.snd_max):
            st["dp.ack_unsent"] += 1
            self._send_ack(f, now)
            return
        if _lt(ack, (f.snd_una - max(f.max_snd_wnd, 0xFFFF)) & MASK):
            self._eject_segment(f, b, now)  # RFC 5961 §5.2: netstack challenges
            return
        if ack == f.snd_una:
            dup = plen == 0 and not flags & FIN and wnd == f.snd_wnd and f.snd_wnd > 0 and f.snd_max != f.snd_una
            self._update_window(f, seq, ack, wnd)
            if dup:
                f.dupacks += 1
                if f.dupacks == 3:
                    st["dp.fast_retransmits"] += 1
                    self._go_back_n(f)
        elif _gt(ack, f.snd_una):
            self._update_window(f, seq, ack, wnd)
            if not self._new_ack(f, ack, tsecr, now):
                return
        else:
            self._update_window(f, seq, ack, wnd)
        # 3. payload, then the FIN (sequence space: plen bytes, then the FIN)
        fin = 1 if flags & FIN else 0
        if not plen and not fin:
            return
        back = _sub(f.rcv_nxt, seq)
        start = l4 + doff
        if back:
            if back >= HALF:
                st["dp.out_of_order"] += 1
                self._send_ack(f, now)
                return
            if back >= plen + fin:
                st["dp.duplicate"] += 1
                self._send_ack(f, now)
                return
            start = start + back if back < plen else l4 + l4len  # else only the FIN is new
        if f.state in _FIN_TAKEN:
            st["dp.rx_after_fin"] += 1  # after the guest's FIN nothing new can come
            self._send_ack(f, now)
            return
        data = b[start : l4 + l4len]
        if data:
            f.ack_pending = True
            try:
                n = f.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError:
                n = 0
            except OSError as err:
                self._host_reset(f, err.errno)
                return
            if n:
                f.rcv_nxt = (f.rcv_nxt + n) & MASK
                st["dp.tcp_to_host_bytes"] += n
            if n < len(data):
                st["dp.host_short_writes"] += 1
                f.space_stale = True
            else:
                # no SO_MEMINFO per segment: the free space shrank by at most
                # what the socket took, with its overhead; _flush reads it
                # again once this estimate falls below the window we offer
                f.host_space = max(0, f.host_space - (n + n // 8 + SKB_COST_EST))
        # the FIN, once every byte before it went to the host (else the guest
        # retransmits the rest with it)
        if fin and f.rcv_nxt == (seq + plen) & MASK:
            try:
                f.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            f.rcv_nxt = (f.rcv_nxt + 1) & MASK
            st["dp.fin_from_guest"] += 1
            f.ack_pending = True
            if f.state == ESTABLISHED:
                f.state = CLOSE_WAIT
            elif f.state == FIN_WAIT_1:
                f.state = CLOSING
            else:  # FIN_WAIT_2
                self._send_ack(f, now)
                self._enter_time_wait(f, now)

    @staticmethod
    def _derive_mss(f: _Tcp) -> None:
        """The payload room of a flow with MSS f.mss (and the timestamp block, if any)."""
        opts = 12 if f.ts_ok else 0
        f.eff_mss = max(1, f.mss - opts)
        f.max_payload = max(f.eff_mss, MAX_FRAME_LEN - ETH_LEN - (40 if f.v6 else 20) - 20 - opts)

    def _syn_sent_segment(self, f: _Tcp, b: memoryview, l4: int, l4len: int, doff: int, now: float) -> None:
        """SYN_SENT: the guest's SYN-ACK of our SYN (netstack's _segment_syn_sent
        for its common case): exactly SYN|ACK acking snd_max, no payload, window
        scaling and timestamps both answered (we offered them), well-formed
        options.  Anything else is netstack's (Ejected(segment) + Frame)."""
        ack = _U32.unpack_from(b, l4 + 8)[0]
        if b[l4 + 13] != SYN | ACK or ack != f.snd_max or l4len != doff:
            self._eject_segment(f, b, now)
            return
        mss_opt = ws = tsval = tsecr = None
        i = 20
        while i < doff:
            kind = b[l4 + i]
            if kind == 0:
                break  # end of option list
            if kind == 1:
                i += 1
                continue
            length = b[l4 + i + 1] if i + 1 < doff else 0
            if (
                length < 2
                or i + length > doff
                or (kind == 2 and length != 4)
                or (kind == 3 and length != 3)
                or (kind == 8 and length != 10)
            ):
                self._eject_segment(f, b, now)
                return
            if kind == 2:
                mss_opt = _U16.unpack_from(b, l4 + i + 2)[0]
            elif kind == 3:
                ws = b[l4 + i + 2]
            elif kind == 8:
                tsval, tsecr = _U32.unpack_from(b, l4 + i + 2)[0], _U32.unpack_from(b, l4 + i + 6)[0]
            i += length
        if ws is None or ws > 14 or tsval is None:
            self._eject_segment(f, b, now)
            return
        seq = _U32.unpack_from(b, l4 + 4)[0]
        want = (DEFAULT_MSS_V6 if f.v6 else DEFAULT_MSS_V4) if mss_opt is None else mss_opt
        f.irs = seq
        f.rcv_nxt = f.rcv_adv = (seq + 1) & MASK
        f.ts_recent, f.ts_recent_at = tsval, now
        f.snd_wscale = ws
        initial_segments = f.cwnd // (f.our_mss - 12)  # the export's cwnd is IW full-size segments
        f.mss = max(MIN_MSS, min(f.our_mss, want))
        self._derive_mss(f)
        f.cwnd = initial_segments * f.eff_mss  # RFC 6928, in the negotiated MSS (netstack's _established)
        f.snd_wnd = f.max_snd_wnd = (b[l4 + 14] << 8) | b[l4 + 15]  # never scaled in a SYN (RFC 7323 §2.2)
        f.snd_wl1, f.snd_wl2 = seq, ack
        if tsecr:
            ms = _sub(self._ts_now(f, now), tsecr)
            if ms < HALF:
                self._rtt_sample(f, ms / 1000.0)
        f.snd_una = ack
        f.timer, f.timer_at = T_NONE, 0.0
        f.retries = 0
        f.state = ESTABLISHED
        f.want_output = True  # host data that came meanwhile
        f.ack_pending = True  # our ACK: with the batch, or on the first data frame
        self._touch(f)

    def _handshake_done(self, f: _Tcp, seq: int, ack: int, wnd: int, tsecr: int, now: float) -> None:
        """SYN_RECEIVED -> ESTABLISHED on the guest's ACK of our SYN-ACK
        (netstack's SYN_RECEIVED rule): RTT from TSecr, the guest's window,
        no timer.  The segment then goes on as any ESTABLISHED one."""
        if f.ts_ok and tsecr:
            ms = _sub(self._ts_now(f, now), tsecr)
            if ms < HALF:
                self._rtt_sample(f, ms / 1000.0)
        elif not f.ts_ok and f.timer == T_RTX:
            # no timestamps: the SYN-ACK went out when its timer was armed (at
            # the install, never retransmitted here: a retransmitted SYN ejects),
            # so the sample is unambiguous (Karn), as netstack's would be
            sent = f.timer_at - f.rto
            if now >= sent:
                self._rtt_sample(f, now - sent)
        f.snd_una = ack
        f.snd_wnd = f.max_snd_wnd = wnd
        f.snd_wl1, f.snd_wl2 = seq, ack
        f.timer, f.timer_at = T_NONE, 0.0
        f.retries = 0
        f.state = ESTABLISHED
        f.want_output = True  # host data that came meanwhile (edge-triggered: no new event)

    def _update_window(self, f: _Tcp, seq: int, ack: int, wnd: int) -> None:
        """RFC 9293 §3.10.7.4: SND.WL1/SND.WL2 say whether the window is newer."""
        if _lt(f.snd_wl1, seq) or (f.snd_wl1 == seq and not _gt(f.snd_wl2, ack)):
            if wnd != f.snd_wnd:
                f.want_output = True
            f.snd_wnd, f.snd_wl1, f.snd_wl2 = wnd, seq, ack
            if wnd > f.max_snd_wnd:
                f.max_snd_wnd = wnd

    def _new_ack(self, f: _Tcp, ack: int, tsecr: int, now: float) -> bool:
        """False if the flow ended (the ACK of our FIN in LAST_ACK) or entered TIME_WAIT."""
        fin_acked = f.fin_sent and ack == (f.fin_seq + 1) & MASK
        acked = _sub(ack, f.snd_una) - fin_acked
        if acked:
            try:
                f.sock.recv_into(self._scratch, acked, socket.MSG_TRUNC | socket.MSG_DONTWAIT)
            except OSError:
                pass  # the bytes are gone with the connection; the read side reports it
        f.snd_una = ack
        if _lt(f.snd_nxt, ack):
            f.snd_nxt = ack
        if f.ts_ok and tsecr:
            ms = _sub(self._ts_now(f, now), tsecr)
            if ms < HALF:
                self._rtt_sample(f, ms / 1000.0)
        f.retries = 0
        f.dupacks = 0
        if f.snd_max == f.snd_una:
            if f.timer == T_RTX:
                f.timer = T_NONE
        else:
            f.timer, f.timer_at = T_RTX, now + f.rto
        if not f.drained or f.host_fin or f.host_eof or f.fin_sent:
            f.want_output = True  # else the last peek found the end: nothing new to send
        if fin_acked:
            if f.state == FIN_WAIT_1:
                f.state = FIN_WAIT_2
            elif f.state == CLOSING:
                if f.ack_pending:
                    self._send_ack(f, now)
                self._enter_time_wait(f, now)
                return False
            elif f.state == LAST_ACK:
                if f.ack_pending:
                    self._send_ack(f, now)
                self._close_flow(f, "fin", 0)
                return False
        return True

    @staticmethod
    def _rtt_sample(f: _Tcp, sample: float) -> None:
        """RFC 6298 §2 (floor 200 ms like netstack's config)."""
        if f.srtt < 0:
            f.srtt = sample
            f.rttvar = sample / 2
        else:
            f.rttvar = 0.75 * f.rttvar + 0.25 * abs(f.srtt - sample)
            f.srtt = 0.875 * f.srtt + 0.125 * sample
        f.rto = min(max(f.srtt + max(CLOCK_GRANULARITY_S, 4 * f.rttvar), RTO_MIN_S), RTO_MAX_S)

    def _go_back_n(self, f: _Tcp) -> None:
        f.snd_nxt = f.snd_una
        if f.kernel_peek:
            try:
                f.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            except OSError:
                pass
        f.want_output = True

    @staticmethod
    def _ts_now(f: _Tcp, now: float) -> int:
        return (int(now * 1000) + f.ts_offset) & MASK

    # ------------------------------------------------------------------ TCP toward the guest

    def _flush(self, f: _Tcp, now: float) -> None:
        """Output phase of one flow: host data the windows allow, then the
        pending ACK (unless a data frame carried it), then EPOLLOUT if the
        window offered is nearly closed."""
        if f.state == TIME_WAIT:
            if f.ack_pending:
                self._send_ack(f, now)
            return
        if f.state in _HANDSHAKE:
            return  # nothing but our SYN(-ACK) may be out yet; want_output waits
        if f.host_space < f.rcv_wnd_max:
            f.space_stale = True
        if f.want_output:
            f.want_output = False
            if not self._output(f, now):
                return
        if f.ack_pending:
            self._send_ack(f, now)
        if f.state not in _FIN_TAKEN and not f.watching_out and _sub(f.rcv_adv, f.rcv_nxt) < self._sws(f):
            f.watching_out = True
            self._ep.modify(f.fd, EP_IN | EP_OUT)

    def _output(self, f: _Tcp, now: float) -> bool:
        """Send what the guest's window and INFLIGHT_MAX allow.  False if the flow was ejected."""
        txv = self._txv
        pay = f.l4off + f.tcp_hlen
        st = self._stats
        f.drained = False
        if f.fin_sent:
            # every byte was acknowledged before our FIN: only it can be due again
            if f.snd_nxt == f.fin_seq:
                self._send_fin(f, now)
            return True
        if f.host_eof and f.snd_nxt == f.snd_max:
            # our FIN goes once everything before it is acknowledged (into a closed window too)
            if f.snd_una == f.snd_max:
                self._send_fin(f, now)
            return True
        while True:
            off = _sub(f.snd_nxt, f.snd_una)
            n = min(f.snd_wnd - off, INFLIGHT_MAX - off, f.max_payload)
            if n <= 0 or (n < f.eff_mss and off > 0):
                break
            try:
                if f.kernel_peek or off == 0:
                    r = f.sock.recv_into(txv[pay : pay + n], n, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                else:
                    bufs = [self._scratchv[:off], txv[pay : pay + n]]
                    r = f.sock.recvmsg_into(bufs, 0, socket.MSG_PEEK | socket.MSG_DONTWAIT)[0] - off
                    if r <= 0:
                        f.drained = True
                        break  # nothing beyond the flight (EOF shows once the flight is acked)
            except BlockingIOError:
                f.drained = True
                break
            except InterruptedError:
                break
            except OSError as err:
                self._host_reset(f, err.errno)
                return False
            if r == 0:
                f.host_eof = True
                if f.snd_una == f.snd_nxt == f.snd_max:
                    self._send_fin(f, now)
                return True
            self._tcp_frame(f, now, f.snd_nxt, ACK | PSH, r)
            st["dp.tcp_to_guest_bytes"] += r
            f.snd_nxt = (f.snd_nxt + r) & MASK
            if _gt(f.snd_nxt, f.snd_max):
                f.snd_max = f.snd_nxt
            if f.timer != T_RTX:
                f.timer, f.timer_at = T_RTX, now + f.rto
            f.ack_pending = False
            if r < n and not f.host_fin:
                f.drained = True
                break
        if f.snd_wnd == 0 and f.snd_max == f.snd_una and f.timer == T_NONE and self._host_waiting(f):
            f.timer, f.timer_at = T_PERSIST, now + f.rto
        elif f.snd_wnd and f.timer == T_PERSIST:
            f.timer = T_NONE
        return True

    @staticmethod
    def _host_waiting(f: _Tcp) -> bool:
        """Host data or EOF waiting (nothing is in flight when this is asked)."""
        if f.host_fin:
            return True
        try:
            return _INT.unpack(fcntl.ioctl(f.fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0
        except OSError:
            return False

    def _send_ack(self, f: _Tcp, now: float) -> None:
        self._tcp_frame(f, now, f.snd_max, ACK, 0)
        self._stats["dp.acks"] += 1
        f.ack_pending = False

    def _sws(self, f: _Tcp) -> int:
        """RFC 9293 §3.8.6.2.2: open the window in steps of min(buffer/2, MSS)."""
        return max(1, min(f.space_max // 2, f.rcv_wnd_max // 2, f.our_mss))

    def _refresh_space(self, f: _Tcp) -> None:
        """Send space we can promise (contract rule 4): SO_MEMINFO's sndbuf -
        wmem_queued (truesize units, the kernel's own test), 1/8 kept back."""
        try:
            mi = _MEMINFO.unpack(f.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
            space = max(0, mi[MEMINFO_SNDBUF] - mi[MEMINFO_WMEM_QUEUED])
            space -= space // 8
        except (OSError, struct.error):
            space = 0
        f.host_space = space
        if space > f.space_max:
            f.space_max = space
        f.space_stale = False

    def _window_field(self, f: _Tcp) -> int:
        """Window for a segment; moves rcv_adv right only, by at least the SWS step."""
        if f.space_stale:
            self._refresh_space(f)
        ws = f.rcv_wscale
        if _gt(f.rcv_nxt, f.rcv_adv):
            f.rcv_adv = f.rcv_nxt
        target = (f.rcv_nxt + min(f.host_space, f.rcv_wnd_max)) & MASK
        grow = _sub(target, f.rcv_adv)
        if grow < HALF and grow >= self._sws(f):
            f.rcv_adv = target
        wnd = _sub(f.rcv_adv, f.rcv_nxt)
        field = (wnd + (1 << ws) - 1) >> ws
        if field > 0xFFFF:
            field = 0xFFFF
        f.rcv_adv = (f.rcv_nxt + (field << ws)) & MASK
        return field

    def _window_would_open(self, f: _Tcp) -> bool:
        target = (f.rcv_nxt + min(f.host_space, f.rcv_wnd_max)) & MASK
        grow = _sub(target, f.rcv_adv)
        return grow < HALF and grow >= self._sws(f)

    def _ip_header(self, v6: bool, dmac: bytes, smac: bytes, src: bytes, dst: bytes, proto: int, l4len: int) -> None:
        tx = self._tx
        tx[VNET_LEN : VNET_LEN + 6] = dmac
        tx[VNET_LEN + 6 : VNET_LEN + 12] = smac
        if v6:
            tx[L3 - 2], tx[L3 - 1] = 0x86, 0xDD
            _IPV6.pack_into(tx, L3, 0x60000000, l4len, proto, 64, src, dst)
        else:
            tx[L3 - 2], tx[L3 - 1] = 0x08, 0x00
            _IPV4.pack_into(tx, L3, 0x45, 0, 20 + l4len, 0, 0x4000, 64, proto, 0, src, dst)
            _U16.pack_into(tx, L3 + 10, checksum(self._txv[L3 : L3 + 20]))

    def _tcp_frame(self, f: _Tcp, now: float, seq: int, flags: int, plen: int) -> None:
        """Headers in front of ``plen`` payload bytes already at the payload offset; write."""
        tx = self._tx
        hlen = f.tcp_hlen
        l4 = f.l4off
        l4len = hlen + plen
        self._ip_header(f.v6, f.gmac, f.omac, f.raddr, f.gaddr, 6, l4len)
        seed = csum_fold(f.pseudo + l4len)
        _TCP.pack_into(tx, l4, f.rport, f.gport, seq, f.rcv_nxt, (hlen // 4) << 4, flags, self._window_field(f), seed, 0)
        if f.ts_ok:
            _TS.pack_into(tx, l4 + 20, TS_BLOCK, self._ts_now(f, now), f.ts_recent)
        cs = l4 - VNET_LEN
        if plen > f.eff_mss:
            gso = GSO_TCPV6 if f.v6 else GSO_TCPV4
            _VNET.pack_into(tx, 0, F_NEEDS_CSUM, gso, cs + hlen, f.eff_mss, cs, 16)
        else:
            _VNET.pack_into(tx, 0, F_NEEDS_CSUM, GSO_NONE, 0, 0, cs, 16)
        if self._write(l4 + l4len) and plen:
            self._stats["dp.tcp_frames_to_guest"] += 1

    def _write(self, length: int) -> bool:
        try:
            os.write(self._tap, self._txv[:length])
        except BlockingIOError:
            self._stats["dp.tap_write_eagain"] += 1
            return False
        except OSError:
            self._stats["dp.tap_write_errors"] += 1
            return False
        return True

    # ------------------------------------------------------------------ host events

    def _tcp_host_event(self, f: _Tcp, ev: int, now: float) -> None:
        if ev & (select.EPOLLRDHUP | select.EPOLLHUP):
            f.host_fin = True
        if ev & select.EPOLLERR:
            err = f.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._host_reset(f, err)
                return
        if ev & select.EPOLLOUT and f.watching_out:
            f.watching_out = False
            self._ep.modify(f.fd, EP_IN)
            self._refresh_space(f)
            if self._window_would_open(f):
                f.ack_pending = True
        if ev & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP):
            f.want_output = True
        if f.want_output or f.ack_pending:
            self._flush(f, now)

    # ------------------------------------------------------------------ ejection

    def _eject_segment(self, f: _Tcp, b: memoryview, now: float) -> None:
        self._eject(f, "segment", 0, now)
        self._stats["dp.slow_frames"] += 1
        self._items.append(Frame(bytes(b)))

    def _eject(self, f: _Tcp, reason: str, err: int, now: float) -> None:
        if f.ack_pending:
            self._send_ack(f, now)
        self._stats["dp.ejected_" + reason] += 1
        self._forget(f)
        tcb = {name: getattr(f, name) for name in _TCB_FIELDS}
        tcb["ts_ok"] = bool(f.ts_ok)
        fin_out = 1 if f.fin_sent and f.snd_max != f.snd_una else 0
        # in a handshake the one unacknowledged sequence number is our SYN
        unacked = 0 if f.state in _HANDSHAKE else _sub(f.snd_max, f.snd_una) - fin_out
        send_bytes = read_send_bytes(f.fd, unacked, tcb)
        self._items.append(Ejected(f.flow, reason, err, tcb, send_bytes, f.host_eof, STATE_NAMES[f.state]))

    # ------------------------------------------------------------------ closing (contract: "Closing")

    def _closed(self, f: _Tcp, how: str, err: int) -> None:
        self._stats["dp.closed_" + how] += 1
        self._items.append(Closed(f.flow, how, err))

    def _close_flow(self, f: _Tcp, how: str, err: int) -> None:
        """The connection is over: report it, and give the slot back."""
        self._closed(f, how, err)
        self._forget(f)

    def _enter_time_wait(self, f: _Tcp, now: float) -> None:
        self._closed(f, "fin", 0)
        del self._fds[f.fd]
        try:
            self._ep.unregister(f.fd)
        except OSError:
            pass
        f.sock.detach()
        f.fd = -1
        f.state = TIME_WAIT
        f.want_output = f.watching_out = False
        self._time_wait_timer(f, now)

    def _time_wait_timer(self, f: _Tcp, now: float) -> None:
        """(Re)start TIME_WAIT; ``tw_seq`` orders equal deadlines as native's FIFO does."""
        self._tw_seq += 1
        f.timer, f.timer_at, f.tw_seq = T_TIME_WAIT, now + TIME_WAIT_S, self._tw_seq

    def _send_rst(self, f: _Tcp) -> None:
        """RST|ACK <SEQ=SND.NXT><ACK=RCV.NXT>, no options, window 0 (netstack's _send_rst)."""
        tx = self._tx
        l4 = f.l4off
        self._ip_header(f.v6, f.gmac, f.omac, f.raddr, f.gaddr, 6, 20)
        _TCP.pack_into(tx, l4, f.rport, f.gport, f.snd_nxt, f.rcv_nxt, 5 << 4, RST | ACK, 0, csum_fold(f.pseudo + 20), 0)
        _VNET.pack_into(tx, 0, F_NEEDS_CSUM, GSO_NONE, 0, 0, l4 - VNET_LEN, 16)
        self._write(l4 + 20)
        self._stats["dp.rst_to_guest"] += 1

    def _host_reset(self, f: _Tcp, err: int) -> None:
        """The host socket failed: RST to the guest, the flow ends."""
        if f.state != SYN_SENT:  # no RST for a SYN the guest has not answered (RFC 9293 ABORT)
            self._send_rst(f)
        self._close_flow(f, "host_reset", err)

    def _send_fin(self, f: _Tcp, now: float) -> None:
        self._tcp_frame(f, now, f.snd_nxt, ACK | FIN, 0)
        if not f.fin_sent:
            f.fin_sent = True
            f.fin_seq = f.snd_nxt
            f.state = LAST_ACK if f.state == CLOSE_WAIT else FIN_WAIT_1
            self._stats["dp.fin_to_guest"] += 1
        f.snd_nxt = f.snd_max = (f.fin_seq + 1) & MASK
        if f.timer != T_RTX:
            f.timer, f.timer_at = T_RTX, now + f.rto
        f.ack_pending = False


assert set(EJECT_REASONS) == {"segment", "host_eof", "host_error", "timeout", "zero_window", "requested"}
