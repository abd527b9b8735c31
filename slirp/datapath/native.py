"""NativeDatapath: the C datapath (native/datapath.c) behind the Python API of the contract.

The C side owns the flow table and does all per-frame and per-byte work; this
wrapper only converts at the edges: flows in (``struct sn_tcp_flow`` /
``struct sn_udp_flow``), records out.  Every call that can produce slow
items hands C one output buffer (SN_DP_OUT_MIN bytes, an anonymous mmap so
its pages cost nothing until touched) and turns the compact records C wrote
there into the contract's dataclasses.  For an Ejected flow the
unacknowledged bytes are read out of the socket here (C leaves them at the
head of its receive queue), exactly as PythonDatapath does.
"""

from __future__ import annotations

import errno as errno_mod
import mmap
import os
import struct

from slirp._native import ffi, lib

from . import (
    CLOSE_HOWS,
    EJECT_REASONS,
    Closed,
    STAT_NAMES,
    Ejected,
    Frame,
    TapError,
    TcpFlow,
    UdpDatagram,
    UdpError,
    UdpFlow,
    read_send_bytes,
)

_REC = struct.Struct("=IIQ")
_UDPD = struct.Struct("=16sII")
_UDPE = struct.Struct("=16sIIi4x")  # struct sn_dp_udp_error
_TCB_U32 = (
    "iss", "irs", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "max_snd_wnd", "snd_wscale",
    "rcv_nxt", "rcv_adv", "rcv_wscale", "mss", "ts_recent", "ts_offset",
)  # fmt: skip
_TCB_OTHER = ("cwnd", "ssthresh", "host_space", "ts_recent_at", "srtt", "rttvar", "rto")

_STATES = (
    "ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK", "TIME_WAIT", "SYN_RECEIVED",
    "SYN_SENT",
)  # fmt: skip (enum sn_dp_state)
_INSTALL_STATES = {"ESTABLISHED": 0, "SYN_RECEIVED": 7, "SYN_SENT": 8}

# struct sn_tcp_flow in one pack (install_tcp runs once per connection: 24
# cdata field stores cost more than the C call); checked against cffi's layout.
_TCP_FLOW = struct.Struct("=QiI16s16sHH6s6sIid18I3q4d")
_TCP_FLOW_FIELDS = ("flow", "fd", "addr_len", "guest_addr", "remote_addr", "guest_port", "remote_port", "guest_mac",
                    "our_mac", "rcv_buf_max", "state", "now", "tcb")  # fmt: skip
_TCP_FLOW_OFFSETS = (0, 8, 12, 16, 32, 48, 50, 52, 58, 64, 68, 72, 80)
_offsets = tuple(ffi.offsetof("struct sn_tcp_flow", f) for f in _TCP_FLOW_FIELDS)
if _TCP_FLOW.size != ffi.sizeof("struct sn_tcp_flow") or ffi.sizeof("struct sn_tcb") != 128 or _offsets != _TCP_FLOW_OFFSETS:
    # pragma: no cover - a header change without this one
    raise ImportError("struct sn_tcp_flow changed: update _TCP_FLOW")
_TCB_PACKED = _TCB_U32[:14]  # iss .. mss; then ts_ok, ts_recent, ts_offset, pad (sn_tcb's order)

_names = tuple(ffi.string(lib.sn_dp_stat_name(i)).decode() for i in range(lib.SN_DP_S_COUNT))
if _names != STAT_NAMES:  # the header and the Python list must agree
    raise ImportError(f"slirp._native counters {_names} differ from STAT_NAMES")


def _check(rc: int, what: str) -> None:
    if rc >= 0:
        return
    err = -rc
    if err in (errno_mod.EEXIST, errno_mod.EINVAL):
        raise ValueError(f"{what}: {os.strerror(err)}")
    if err == errno_mod.ENOSPC:
        raise OverflowError("datapath flow table full")
    raise OSError(err, f"{what}: {os.strerror(err)}")


class NativeDatapath:
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
        dp = lib.sn_dp_new(tap_fd, mtu, max_flows, 1 if peek_offset else 0)
        if dp == ffi.NULL:
            raise OSError(errno_mod.ENOMEM, "sn_dp_new failed (bad mtu/max_flows, or out of memory)")
        self._dp = dp
        try:
            for which, table in ((0, forward_map or {}), (1, reverse_map or {})):
                for a, b in table.items():
                    _check(lib.sn_dp_add_addr(dp, which, a, len(a), b, len(b)), "address map")
            for a in slow_addrs:
                _check(lib.sn_dp_add_addr(dp, 2, a, len(a), ffi.NULL, 0), "slow address")
        except Exception:
            self.close()
            raise
        self._mm = mmap.mmap(-1, lib.SN_DP_OUT_MIN)
        self._out = ffi.from_buffer(self._mm)
        self._mv = memoryview(self._mm)
        self._stats = ffi.new("uint64_t[]", lib.SN_DP_S_COUNT)
        self._act = ffi.new("uint64_t[]", 1024)

    # ------------------------------------------------------------------ api

    threaded = False  # True once start() ran

    def fileno(self) -> int:
        return lib.sn_dp_fileno(self._dp)

    def start(self) -> None:
        """Run the datapath in its own thread from now on (see the contract)."""
        _check(lib.sn_dp_start(self._dp), "start the datapath thread")
        self.threaded = True

    def take(self) -> list:
        """Threaded mode: the slow items the thread queued, in order."""
        return self._records(lib.sn_dp_take(self._dp, self._out, len(self._mm)))

    def inject(self, frame: bytes, now: float) -> list:
        return self._records(lib.sn_dp_inject(self._dp, frame, len(frame), now, self._out, len(self._mm)))

    def close(self) -> None:
        if self._dp is not None:
            lib.sn_dp_free(self._dp)
            self._dp = None

    def __del__(self):
        dp = getattr(self, "_dp", None)
        if dp is not None:
            lib.sn_dp_free(dp)
            self._dp = None

    def owns(self, flow: int) -> bool:
        return bool(lib.sn_dp_owns(self._dp, flow))

    def stats(self) -> dict[str, int]:
        lib.sn_dp_stats(self._dp, self._stats)
        return dict(zip(STAT_NAMES, self._stats))

    def take_activity(self) -> list[int]:
        out: list[int] = []
        cap = len(self._act)
        while True:
            n = lib.sn_dp_take_activity(self._dp, self._act, cap)
            out.extend(self._act[0:n])
            if n < cap:
                return out

    def next_deadline(self) -> float | None:
        d = lib.sn_dp_next_deadline(self._dp)
        return None if d < 0 else d

    def install_tcp(self, spec: TcpFlow) -> None:
        alen = len(spec.guest_addr)
        if alen not in (4, 16) or len(spec.remote_addr) != alen or len(spec.guest_mac) != 6 or len(spec.our_mac) != 6:
            raise ValueError("install_tcp: bad addresses")
        state = _INSTALL_STATES.get(spec.state)
        if state is None:
            raise ValueError(f"install_tcp: cannot install a flow in {spec.state}")
        d = spec.tcb
        try:
            packed = _TCP_FLOW.pack(
                spec.flow, spec.fd, alen, spec.guest_addr, spec.remote_addr, spec.guest_port, spec.remote_port,
                spec.guest_mac, spec.our_mac, spec.rcv_buf_max, state, spec.now,
                *[d[name] & 0xFFFFFFFF for name in _TCB_PACKED], 1 if d["ts_ok"] else 0,
                d["ts_recent"] & 0xFFFFFFFF, d["ts_offset"] & 0xFFFFFFFF, 0,
                *[d[name] for name in _TCB_OTHER],
            )  # fmt: skip
        except struct.error as err:
            raise ValueError(f"install_tcp: {err}") from None
        s = ffi.from_buffer("struct sn_tcp_flow *", packed)
        _check(lib.sn_dp_install_tcp(self._dp, s), f"install_tcp flow {spec.flow}")

    def install_udp(self, spec: UdpFlow) -> None:
        s = ffi.new("struct sn_udp_flow *")
        alen = len(spec.guest_addr)
        if alen not in (4, 16):
            raise ValueError("install_udp: bad address")
        s.flow = spec.flow
        s.fd = spec.fd
        s.addr_len = alen
        ffi.memmove(s.guest_addr, spec.guest_addr, alen)
        s.guest_port = spec.guest_port
        ffi.memmove(s.guest_mac, spec.guest_mac, 6)
        ffi.memmove(s.our_mac, spec.our_mac, 6)
        _check(lib.sn_dp_install_udp(self._dp, s), f"install_udp flow {spec.flow}")

    def eject_tcp(self, flow: int, now: float) -> Ejected:
        n = lib.sn_dp_eject_tcp(self._dp, flow, now, self._out, len(self._mm))
        if n == -errno_mod.ENOENT:
            raise KeyError(flow)
        items = self._records(n)
        return items[-1]

    def remove_udp(self, flow: int) -> None:
        if lib.sn_dp_remove_udp(self._dp, flow) < 0:
            raise KeyError(flow)

    def tap_readable(self, now: float) -> list:
        return self._records(lib.sn_dp_tap_readable(self._dp, now, self._out, len(self._mm)))

    def host_readable(self, now: float) -> list:
        return self._records(lib.sn_dp_host_readable(self._dp, now, self._out, len(self._mm)))

    def timers(self, now: float) -> list:
        return self._records(lib.sn_dp_timers(self._dp, now, self._out, len(self._mm)))

    # ------------------------------------------------------------------ records

    def _records(self, n: int) -> list:
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        items = []
        mv = self._mv
        off = 0
        while off < n:
            kind, length, flow = _REC.unpack_from(mv, off)
            body = off + _REC.size
            if kind == lib.SN_DP_FRAME:
                items.append(Frame(bytes(mv[body : body + length])))
            elif kind == lib.SN_DP_EJECTED:
                items.append(self._ejected(flow, body))
            elif kind == lib.SN_DP_UDP_DATAGRAM:
                addr, alen, port = _UDPD.unpack_from(mv, body)
                data = bytes(mv[body + _UDPD.size : body + length])
                items.append(UdpDatagram(flow, addr[:alen], port, data))
            elif kind == lib.SN_DP_UDP_ERROR:
                addr, alen, port, err = _UDPE.unpack_from(mv, body)
                items.append(UdpError(flow, err, addr[:alen], port))
            elif kind == lib.SN_DP_CLOSED:
                how, err = struct.unpack_from("=ii", mv, body)
                items.append(Closed(flow, CLOSE_HOWS[how], err))
            elif kind == lib.SN_DP_TAP_ERROR:
                items.append(TapError(struct.unpack_from("=i", mv, body)[0]))
            else:  # pragma: no cover - a C bug
                raise RuntimeError(f"unknown datapath record kind {kind}")
            off = (body + length + 7) & ~7
        return items

    def _ejected(self, flow: int, body: int) -> Ejected:
        e = ffi.cast("struct sn_dp_ejected *", self._out + body)
        t = e.tcb
        tcb = {name: getattr(t, name) for name in _TCB_U32}
        tcb["ts_ok"] = bool(t.ts_ok)
        for name in _TCB_OTHER:
            tcb[name] = getattr(t, name)
        reason = EJECT_REASONS[e.reason]
        send_bytes = read_send_bytes(e.fd, e.send_len, tcb)
        return Ejected(flow, reason, e.err, tcb, send_bytes, bool(e.host_eof), _STATES[e.state])
