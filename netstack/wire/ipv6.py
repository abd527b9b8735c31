"""IPv6 fixed header and extension-header walk (RFC 8200 §3, §4).

:class:`Ipv6View` checks the 40-byte fixed header and trims the buffer to
40 + Payload Length (Ethernet padding never reaches the payload).
:meth:`Ipv6View.walk` then follows the Next Header chain through the
extension headers a host must understand (RFC 8200 §4.1):

* Hop-by-Hop Options (0): only directly after the fixed header (§4.3);
* Routing (43): ignored when Segments Left is 0; otherwise the packet asks
  us to forward it, which a host does not do: dropped (§4.4, RFC 5095 for
  type 0);
* Fragment (44): parsed into a :class:`FragmentHeader`, and the walk stops
  there, because what follows is fragment data; the caller reassembles
  (netstack/fragments.py) and walks the reassembled packet again.  A second
  Fragment header is dropped: fragmentation is done once, by the source
  (§4.5), so a fragment inside a fragment is never legitimate (a Fragment
  header directly after one is caught here; one further down the chain is
  caught by the reassembler, which re-walks what it rebuilt);
* Destination Options (60).

In the two options headers every TLV is length-checked (§4.2); an option
whose type has the "action" bits (two high-order bits) other than 00 is one
we do not recognise by definition (we implement none of them: Jumbo Payload,
Home Address, RPL...) and the packet is dropped.  RFC 8200 §4.2 asks for an
ICMPv6 Parameter Problem for actions 10/11; that is not generated (limit).

Any other Next Header value ends the walk and is the upper-layer protocol:
TCP, UDP, ICMPv6, No Next Header (59), and also AH/ESP/Mobility/HIP/Shim6,
which slirpnet does not speak (the caller drops them as unknown protocols).

Bounds (a hard stop against long chains, RFC 8504 §5.3 style limits): at
most :data:`MAX_EXTENSION_HEADERS` headers and :data:`MAX_EXTENSIONS_LEN`
bytes of them.

Drops (counter names): ``ipv6.truncated``, ``ipv6.bad_version``,
``ipv6.truncated_extension``, ``ipv6.misplaced_hop_by_hop``,
``ipv6.bad_option`` (a TLV running past its header),
``ipv6.unrecognized_option``, ``ipv6.routing_segments_left``,
``ipv6.duplicate_fragment_header``, ``ipv6.too_many_extensions``,
``ipv6.extensions_too_long``.

Not done here: jumbograms (RFC 2675: a Payload Length of 0 is read as an
empty payload, and the Jumbo option is unrecognised), address policy
(multicast sources, scopes), emitting extension headers other than Fragment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed
from .checksum import pseudo_sum_v6

HEADER_LEN = 40

NH_HOP_BY_HOP = 0
NH_TCP = 6
NH_UDP = 17
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ESP = 50
NH_AH = 51
NH_ICMPV6 = 58
NH_NONE = 59
NH_DEST_OPTS = 60

FRAGMENT_HEADER_LEN = 8

MAX_EXTENSION_HEADERS = 8
MAX_EXTENSIONS_LEN = 1024  # bytes of extension headers before the upper layer

DEFAULT_HOP_LIMIT = 64
MIN_MTU = 1280  # RFC 8200 §5

UNSPECIFIED = bytes(16)

_FIXED = struct.Struct("!IHBB16s16s")
_FRAG = struct.Struct("!BBHI")


def _check_options(buf: memoryview, start: int, end: int) -> None:
    """Validate the TLVs of an options header occupying buf[start:end] (RFC 8200 §4.2)."""
    i = start + 2
    while i < end:
        kind = buf[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 2 > end:
            raise Malformed("ipv6.bad_option")
        nxt = i + 2 + buf[i + 1]
        if nxt > end:
            raise Malformed("ipv6.bad_option")
        if kind & 0xC0:
            raise Malformed("ipv6.unrecognized_option")
        i = nxt


class Ipv6View:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview) -> Ipv6View:
        n = len(buf)
        if n < HEADER_LEN:
            raise Malformed("ipv6.truncated")
        if buf[0] >> 4 != 6:
            raise Malformed("ipv6.bad_version")
        total = HEADER_LEN + ((buf[4] << 8) | buf[5])
        if total > n:
            raise Malformed("ipv6.truncated")
        return cls(buf[:total] if total != n else buf)

    @classmethod
    def check_quoted(cls, buf: memoryview) -> Ipv6View:
        """Lenient check for a packet quoted in an ICMPv6 error: only the fixed
        header must be present; the payload is what is there, up to Payload Length."""
        n = len(buf)
        if n < HEADER_LEN:
            raise Malformed("ipv6.truncated")
        if buf[0] >> 4 != 6:
            raise Malformed("ipv6.bad_version")
        total = HEADER_LEN + ((buf[4] << 8) | buf[5])
        return cls(buf[:total] if total < n else buf)

    @property
    def version(self) -> int:
        return self.buf[0] >> 4

    @property
    def traffic_class(self) -> int:
        return ((self.buf[0] & 0x0F) << 4) | (self.buf[1] >> 4)

    @property
    def flow_label(self) -> int:
        return ((self.buf[1] & 0x0F) << 16) | (self.buf[2] << 8) | self.buf[3]

    @property
    def payload_length(self) -> int:
        return (self.buf[4] << 8) | self.buf[5]

    @property
    def next_header(self) -> int:
        return self.buf[6]

    @property
    def hop_limit(self) -> int:
        return self.buf[7]

    @property
    def src(self) -> bytes:
        return bytes(self.buf[8:24])

    @property
    def dst(self) -> bytes:
        return bytes(self.buf[24:40])

    @property
    def payload(self) -> memoryview:
        return self.buf[HEADER_LEN:]

    def pseudo_sum(self, upper_protocol: int, upper_len: int) -> int:
        """Partial sum of the RFC 8200 §8.1 pseudo-header for an upper-layer packet."""
        b = self.buf
        return pseudo_sum_v6(bytes(b[8:24]), bytes(b[24:40]), upper_protocol, upper_len)

    def walk(self) -> Ipv6Chain:
        """Follow the extension headers (see module doc); Malformed on a bad chain."""
        b = self.buf
        end = len(b)
        nh = b[6]
        nh_pos = 6
        off = HEADER_LEN
        count = 0
        while nh == NH_HOP_BY_HOP or nh == NH_ROUTING or nh == NH_DEST_OPTS or nh == NH_FRAGMENT:
            count += 1
            if count > MAX_EXTENSION_HEADERS:
                raise Malformed("ipv6.too_many_extensions")
            if nh == NH_FRAGMENT:
                if off + FRAGMENT_HEADER_LEN > end:
                    raise Malformed("ipv6.truncated_extension")
                if off + FRAGMENT_HEADER_LEN - HEADER_LEN > MAX_EXTENSIONS_LEN:
                    raise Malformed("ipv6.extensions_too_long")
                frag = FragmentHeader.parse_at(b, off)
                if frag.next_header == NH_FRAGMENT:
                    raise Malformed("ipv6.duplicate_fragment_header")
                return Ipv6Chain(frag.next_header, off + FRAGMENT_HEADER_LEN, frag, off, nh_pos)
            if nh == NH_HOP_BY_HOP and off != HEADER_LEN:
                raise Malformed("ipv6.misplaced_hop_by_hop")
            if off + 2 > end:
                raise Malformed("ipv6.truncated_extension")
            hdr_end = off + ((b[off + 1] + 1) << 3)
            if hdr_end > end:
                raise Malformed("ipv6.truncated_extension")
            if hdr_end - HEADER_LEN > MAX_EXTENSIONS_LEN:
                raise Malformed("ipv6.extensions_too_long")
            if nh == NH_ROUTING:
                if b[off + 3]:  # Segments Left (hdr_end >= off + 8: present)
                    raise Malformed("ipv6.routing_segments_left")
            else:
                _check_options(b, off, hdr_end)
            nh = b[off]
            nh_pos = off
            off = hdr_end
        return Ipv6Chain(nh, off, None, 0, 0)


@dataclass(frozen=True, slots=True)
class FragmentHeader:
    """RFC 8200 §4.5 Fragment header; ``offset`` is in bytes (a multiple of 8)."""

    next_header: int
    offset: int
    more: bool
    ident: int

    buffer_len = FRAGMENT_HEADER_LEN

    @classmethod
    def parse_at(cls, buf: memoryview, pos: int) -> FragmentHeader:
        """Parse the 8 bytes at ``pos`` (the caller checked they are there)."""
        nh, _, off_m, ident = _FRAG.unpack_from(buf, pos)
        return cls(nh, off_m & 0xFFF8, bool(off_m & 1), ident)

    @property
    def is_atomic(self) -> bool:
        """Offset 0 and M clear: a whole packet in one "fragment" (RFC 6946)."""
        return self.offset == 0 and not self.more

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        if self.offset & 7 or not 0 <= self.offset <= 0xFFF8:
            raise ValueError("fragment offset must be a multiple of 8, at most 65528")
        _FRAG.pack_into(buf, offset, self.next_header, 0, self.offset | int(self.more), self.ident)


@dataclass(frozen=True, slots=True)
class Ipv6Chain:
    """Result of :meth:`Ipv6View.walk`.  Offsets count from the start of the IPv6 header."""

    upper_protocol: int  # next header after the last extension (or the fragment's)
    upper_offset: int  # where the upper-layer header (or fragment data) starts
    fragment: FragmentHeader | None
    fragment_header_pos: int  # where the Fragment header starts (0 when none): end of the unfragmentable part
    fragment_next_header_pos: int  # the Next Header byte that names the Fragment header (0 when none)


@dataclass(frozen=True, slots=True)
class Ipv6Header:
    src: bytes
    dst: bytes
    next_header: int
    payload_len: int
    hop_limit: int = DEFAULT_HOP_LIMIT
    traffic_class: int = 0
    flow_label: int = 0

    buffer_len = HEADER_LEN

    @classmethod
    def parse(cls, view: Ipv6View) -> Ipv6Header:
        word, plen, nh, hlim, src, dst = _FIXED.unpack_from(view.buf, 0)
        return cls(src, dst, nh, plen, hlim, (word >> 20) & 0xFF, word & 0xFFFFF)

    def pseudo_sum(self) -> int:
        """Pseudo-header sum for ``next_header`` over ``payload_len`` (valid when no extension headers)."""
        return pseudo_sum_v6(self.src, self.dst, self.next_header, self.payload_len)

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        if not 0 <= self.payload_len <= 0xFFFF:
            raise ValueError("IPv6 payload length exceeds 65535")
        word = (6 << 28) | ((self.traffic_class & 0xFF) << 20) | (self.flow_label & 0xFFFFF)
        _FIXED.pack_into(buf, offset, word, self.payload_len, self.next_header, self.hop_limit, self.src, self.dst)


def is_multicast(addr: bytes) -> bool:
    """ff00::/8 (RFC 4291 §2.7)."""
    return addr[0] == 0xFF


def is_link_local(addr: bytes) -> bool:
    """fe80::/10 (RFC 4291 §2.5.6)."""
    return addr[0] == 0xFE and addr[1] & 0xC0 == 0x80


def solicited_node_multicast(addr: bytes) -> bytes:
    """ff02::1:ffXX:XXXX for ``addr`` (RFC 4291 §2.7.1)."""
    return b"\xff\x02" + bytes(9) + b"\x01\xff" + addr[13:16]


def multicast_mac(addr: bytes) -> bytes:
    """The Ethernet group address of an IPv6 multicast address: 33:33 + last 32 bits (RFC 2464 §7)."""
    return b"\x33\x33" + addr[12:16]
