"""TCP header (RFC 9293 §3.1) with the options slirpnet uses.

Options understood: EOL/NOP, MSS (RFC 9293 §3.7.1), window scale (RFC 7323
§2), SACK-permitted and SACK blocks (RFC 2018), timestamps (RFC 7323 §3).
Unknown options are skipped by their length.  A malformed option list (a
length byte of 0 or 1, or one that runs past the header) makes the segment
Malformed — RFC 9293 §3.1 requires robustness, and dropping is the robust
choice for a terminating stack.

Invariant of :class:`TcpView`: the buffer holds the whole header, i.e.
20 <= data_offset*4 <= len(buf).  The payload is everything after it (the IP
layer has already trimmed the buffer to the IP payload length).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed

MIN_HEADER_LEN = 20
MAX_HEADER_LEN = 60

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

MAX_WSCALE = 14  # RFC 7323 §2.3

_FIXED = struct.Struct("!HHIIBBHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TS = struct.Struct("!II")


class TcpView:
    __slots__ = ("buf", "header_len")

    def __init__(self, buf: memoryview, header_len: int):
        self.buf = buf
        self.header_len = header_len

    @classmethod
    def check(cls, buf: memoryview) -> TcpView:
        if len(buf) < MIN_HEADER_LEN:
            raise Malformed("tcp.truncated")
        header_len = (buf[12] >> 4) * 4
        if header_len < MIN_HEADER_LEN:
            raise Malformed("tcp.bad_data_offset")
        if header_len > len(buf):
            raise Malformed("tcp.truncated")
        return cls(buf, header_len)

    @property
    def src_port(self) -> int:
        return (self.buf[0] << 8) | self.buf[1]

    @property
    def dst_port(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def seq(self) -> int:
        return _U32.unpack_from(self.buf, 4)[0]

    @property
    def ack(self) -> int:
        return _U32.unpack_from(self.buf, 8)[0]

    @property
    def flags(self) -> int:
        return self.buf[13]

    @property
    def window(self) -> int:
        return (self.buf[14] << 8) | self.buf[15]

    @property
    def checksum(self) -> int:
        return (self.buf[16] << 8) | self.buf[17]

    @property
    def urgent(self) -> int:
        return (self.buf[18] << 8) | self.buf[19]

    @property
    def options(self) -> memoryview:
        return self.buf[MIN_HEADER_LEN : self.header_len]

    @property
    def payload(self) -> memoryview:
        return self.buf[self.header_len :]


@dataclass(frozen=True, slots=True)
class TcpHeader:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int = 0
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamp: tuple[int, int] | None = None  # (TSval, TSecr)
    sack_blocks: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, view: TcpView) -> TcpHeader:
        mss = wscale = timestamp = None
        sack_permitted = False
        sack_blocks: tuple[tuple[int, int], ...] = ()
        opts = view.options
        i, end = 0, len(opts)
        while i < end:
            kind = opts[i]
            if kind == OPT_EOL:
                break
            if kind == OPT_NOP:
                i += 1
                continue
            if i + 1 >= end:
                raise Malformed("tcp.bad_option")
            length = opts[i + 1]
            if length < 2 or i + length > end:
                raise Malformed("tcp.bad_option")
            if kind == OPT_MSS and length == 4:
                mss = _U16.unpack_from(opts, i + 2)[0]
            elif kind == OPT_WSCALE and length == 3:
                wscale = min(opts[i + 2], MAX_WSCALE)
            elif kind == OPT_SACK_PERMITTED and length == 2:
                sack_permitted = True
            elif kind == OPT_TIMESTAMP and length == 10:
                timestamp = _TS.unpack_from(opts, i + 2)
            elif kind == OPT_SACK and length >= 10 and (length - 2) % 8 == 0:
                sack_blocks = tuple(_TS.unpack_from(opts, j) for j in range(i + 2, i + length, 8))
            i += length
        b = view.buf
        return cls(
            src_port=(b[0] << 8) | b[1],
            dst_port=(b[2] << 8) | b[3],
            seq=_U32.unpack_from(b, 4)[0],
            ack=_U32.unpack_from(b, 8)[0],
            flags=b[13],
            window=(b[14] << 8) | b[15],
            urgent=(b[18] << 8) | b[19],
            mss=mss,
            wscale=wscale,
            sack_permitted=sack_permitted,
            timestamp=timestamp,
            sack_blocks=sack_blocks,
        )

    def _options_len(self) -> int:
        n = 0
        if self.mss is not None:
            n += 4
        if self.wscale is not None:
            n += 4  # NOP + 3
        if self.sack_permitted:
            n += 4  # NOP NOP + 2 (or paired with timestamps)
        if self.timestamp is not None:
            n += 12  # NOP NOP + 10
        if self.sack_blocks:
            n += 4 + 8 * len(self.sack_blocks)  # NOP NOP + 2 + 8n
        return n

    @property
    def buffer_len(self) -> int:
        return MIN_HEADER_LEN + self._options_len()

    def emit(self, buf: bytearray, offset: int = 0, checksum: int = 0) -> None:
        """Write the header at ``offset`` with ``checksum`` in its field.

        The caller computes the checksum (complete, or the folded
        pseudo-header seed of a virtio-net NEEDS_CSUM frame)."""
        hlen = self.buffer_len
        _FIXED.pack_into(
            buf,
            offset,
            self.src_port,
            self.dst_port,
            self.seq & 0xFFFFFFFF,
            self.ack & 0xFFFFFFFF,
            (hlen // 4) << 4,
            self.flags,
            self.window,
            checksum,
            self.urgent,
        )
        i = offset + MIN_HEADER_LEN
        if self.mss is not None:
            buf[i : i + 4] = bytes((OPT_MSS, 4)) + _U16.pack(self.mss)
            i += 4
        if self.wscale is not None:
            buf[i : i + 4] = bytes((OPT_NOP, OPT_WSCALE, 3, self.wscale))
            i += 4
        if self.sack_permitted:
            buf[i : i + 4] = bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2))
            i += 4
        if self.timestamp is not None:
            buf[i : i + 12] = bytes((OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10)) + _TS.pack(*self.timestamp)
            i += 12
        if self.sack_blocks:
            n = len(self.sack_blocks)
            buf[i : i + 4] = bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * n))
            i += 4
            for left, right in self.sack_blocks:
                _TS.pack_into(buf, i, left & 0xFFFFFFFF, right & 0xFFFFFFFF)
                i += 8
