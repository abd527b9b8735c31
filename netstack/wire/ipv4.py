"""IPv4 header (RFC 791 §3.1).

Models the fixed 20-byte header plus options, which are carried as opaque
bytes: never interpreted, skipped by IHL on ingress, copied verbatim when a
value with options is emitted.  Fragments are only described here
(identification, DF, MF, offset); reassembly is netstack/fragments.py.

Invariant of :class:`Ipv4View` (from :meth:`Ipv4View.check`):

* version 4, 5 <= IHL and IHL*4 <= total length <= len(buffer);
* the view's buffer is trimmed to the total length, so Ethernet padding after
  a short datagram never reaches the payload (``payload`` is exactly
  total_length - IHL*4 bytes);
* the header checksum is correct (RFC 791 §3.1 "Header Checksum", RFC 1071),
  unless the caller asked not to verify it.

:meth:`Ipv4View.check_quoted` is the lenient variant for the datagram quoted
inside an ICMP error (RFC 792): the quote is cut short by design, so the
total length may exceed the buffer and the checksum is not verified; the
payload is whatever of it is present.

Emit always writes a complete header checksum (the TAP's offloads never cover
the IPv4 header, shared/notes/tap-offloads.md).  ``frag_offset`` is in bytes
everywhere in this module (the field holds it in 8-byte units).  The
reserved flag bit is accepted and visible in ``Ipv4View.flags`` but not
carried by :class:`Ipv4Header` (emit writes it as zero, RFC 791 §3.1).

Drops (counter names): ``ipv4.truncated`` (buffer shorter than 20 bytes, the
IHL or the total length), ``ipv4.bad_version``, ``ipv4.bad_ihl`` (IHL < 5),
``ipv4.bad_total_length`` (total length < header length),
``ipv4.bad_checksum``.

Not done here: option processing (source route, record route, timestamps are
ignored as RFC 1122 §3.2.1.8 allows a host that does not forward to do),
address policy (martian sources, broadcast destinations), TTL handling.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed
from .checksum import checksum, pseudo_sum_v4

MIN_HEADER_LEN = 20
MAX_HEADER_LEN = 60
MAX_TOTAL_LEN = 65535

FLAG_RESERVED = 0x8000
FLAG_DF = 0x4000
FLAG_MF = 0x2000
_OFFSET_MASK = 0x1FFF

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

DEFAULT_TTL = 64

BROADCAST = b"\xff\xff\xff\xff"
UNSPECIFIED = b"\x00\x00\x00\x00"

_FIXED = struct.Struct("!BBHHHBBH4s4s")
_U16 = struct.Struct("!H")


class Ipv4View:
    __slots__ = ("buf", "header_len")

    def __init__(self, buf: memoryview, header_len: int):
        self.buf = buf
        self.header_len = header_len

    @classmethod
    def check(cls, buf: memoryview, *, verify_checksum: bool = True) -> Ipv4View:
        n = len(buf)
        if n < MIN_HEADER_LEN:
            raise Malformed("ipv4.truncated")
        b0 = buf[0]
        if b0 >> 4 != 4:
            raise Malformed("ipv4.bad_version")
        header_len = (b0 & 0x0F) * 4
        if header_len < MIN_HEADER_LEN:
            raise Malformed("ipv4.bad_ihl")
        total = (buf[2] << 8) | buf[3]
        if total < header_len:
            raise Malformed("ipv4.bad_total_length")
        if total > n:
            raise Malformed("ipv4.truncated")
        if verify_checksum and checksum(buf[:header_len]) != 0:
            raise Malformed("ipv4.bad_checksum")
        return cls(buf[:total] if total != n else buf, header_len)

    @classmethod
    def check_quoted(cls, buf: memoryview) -> Ipv4View:
        """Lenient check for a datagram quoted in an ICMP error (see module doc).

        Only the header must be complete; ``payload`` is buf[IHL*4 : min(total,
        len(buf))] and ``total_length`` may be larger than ``len(buf)``."""
        n = len(buf)
        if n < MIN_HEADER_LEN:
            raise Malformed("ipv4.truncated")
        b0 = buf[0]
        if b0 >> 4 != 4:
            raise Malformed("ipv4.bad_version")
        header_len = (b0 & 0x0F) * 4
        if header_len < MIN_HEADER_LEN:
            raise Malformed("ipv4.bad_ihl")
        if header_len > n:
            raise Malformed("ipv4.truncated")
        total = (buf[2] << 8) | buf[3]
        if total < header_len:
            raise Malformed("ipv4.bad_total_length")
        return cls(buf[:total] if total < n else buf, header_len)

    @property
    def version(self) -> int:
        return self.buf[0] >> 4

    @property
    def tos(self) -> int:
        return self.buf[1]

    @property
    def dscp(self) -> int:
        return self.buf[1] >> 2

    @property
    def ecn(self) -> int:
        return self.buf[1] & 3

    @property
    def total_length(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def ident(self) -> int:
        return (self.buf[4] << 8) | self.buf[5]

    @property
    def flags(self) -> int:
        """The three flag bits in place (FLAG_RESERVED | FLAG_DF | FLAG_MF mask)."""
        return ((self.buf[6] << 8) | self.buf[7]) & 0xE000

    @property
    def dont_fragment(self) -> bool:
        return bool(self.buf[6] & 0x40)

    @property
    def more_fragments(self) -> bool:
        return bool(self.buf[6] & 0x20)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes."""
        return (((self.buf[6] << 8) | self.buf[7]) & _OFFSET_MASK) << 3

    @property
    def is_fragment(self) -> bool:
        """Part of a fragmented datagram: MF set or a non-zero offset."""
        return bool(((self.buf[6] << 8) | self.buf[7]) & (FLAG_MF | _OFFSET_MASK))

    @property
    def ttl(self) -> int:
        return self.buf[8]

    @property
    def protocol(self) -> int:
        return self.buf[9]

    @property
    def checksum(self) -> int:
        return (self.buf[10] << 8) | self.buf[11]

    @property
    def src(self) -> bytes:
        return bytes(self.buf[12:16])

    @property
    def dst(self) -> bytes:
        return bytes(self.buf[16:20])

    @property
    def options(self) -> memoryview:
        return self.buf[MIN_HEADER_LEN : self.header_len]

    @property
    def header(self) -> memoryview:
        return self.buf[: self.header_len]

    @property
    def payload(self) -> memoryview:
        return self.buf[self.header_len :]

    def pseudo_sum(self) -> int:
        """Partial sum of the RFC 9293 §3.1 / RFC 768 pseudo-header for this payload."""
        b = self.buf
        return pseudo_sum_v4(bytes(b[12:16]), bytes(b[16:20]), b[9], len(b) - self.header_len)


@dataclass(frozen=True, slots=True)
class Ipv4Header:
    src: bytes
    dst: bytes
    protocol: int
    payload_len: int
    ttl: int = DEFAULT_TTL
    ident: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    frag_offset: int = 0  # bytes, a multiple of 8
    tos: int = 0
    options: bytes = b""  # raw, a multiple of 4 bytes, at most 40

    @classmethod
    def parse(cls, view: Ipv4View) -> Ipv4Header:
        b = view.buf
        hlen = view.header_len
        ver_ihl, tos, total, ident, frag, ttl, proto, _, src, dst = _FIXED.unpack_from(b, 0)
        return cls(
            src=src,
            dst=dst,
            protocol=proto,
            payload_len=total - hlen,  # as the header says (a quoted view holds less)
            ttl=ttl,
            ident=ident,
            dont_fragment=bool(frag & FLAG_DF),
            more_fragments=bool(frag & FLAG_MF),
            frag_offset=(frag & _OFFSET_MASK) << 3,
            tos=tos,
            options=bytes(b[MIN_HEADER_LEN:hlen]),
        )

    @property
    def buffer_len(self) -> int:
        return MIN_HEADER_LEN + len(self.options)

    @property
    def total_length(self) -> int:
        return MIN_HEADER_LEN + len(self.options) + self.payload_len

    def pseudo_sum(self) -> int:
        """Partial sum of the transport pseudo-header for ``payload_len`` bytes."""
        return pseudo_sum_v4(self.src, self.dst, self.protocol, self.payload_len)

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        """Write the header at ``offset`` with a complete header checksum."""
        olen = len(self.options)
        if olen & 3 or olen > MAX_HEADER_LEN - MIN_HEADER_LEN:
            raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        hlen = MIN_HEADER_LEN + olen
        total = hlen + self.payload_len
        if total > MAX_TOTAL_LEN:
            raise ValueError("IPv4 total length exceeds 65535")
        if self.frag_offset & 7 or not 0 <= self.frag_offset <= _OFFSET_MASK << 3:
            raise ValueError("IPv4 fragment offset must be a multiple of 8, at most 65528")
        frag = (self.frag_offset >> 3) | (FLAG_DF if self.dont_fragment else 0) | (FLAG_MF if self.more_fragments else 0)
        _FIXED.pack_into(
            buf,
            offset,
            0x40 | (hlen >> 2),
            self.tos,
            total,
            self.ident,
            frag,
            self.ttl,
            self.protocol,
            0,
            self.src,
            self.dst,
        )
        if olen:
            buf[offset + MIN_HEADER_LEN : offset + hlen] = self.options
        _U16.pack_into(buf, offset + 10, checksum(memoryview(buf)[offset : offset + hlen]))


def is_multicast(addr: bytes) -> bool:
    """224.0.0.0/4 (RFC 5771)."""
    return addr[0] & 0xF0 == 0xE0


def is_limited_broadcast(addr: bytes) -> bool:
    return addr == BROADCAST
