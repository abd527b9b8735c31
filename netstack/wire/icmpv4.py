"""ICMP for IPv4 (RFC 792) with the error rules of RFC 1122 §3.2.2 and RFC 1812 §4.3.2.

Models the messages slirpnet answers or relays:

* echo request (8) / echo reply (0): identifier, sequence number, data;
* destination unreachable (3), all codes (RFC 792 0-5, RFC 1812 §5.2.7.1
  6-15), with the next-hop MTU of code 4 "fragmentation needed and DF set"
  (RFC 1191 §4: low 16 bits of the second word);
* time exceeded (11): code 0 TTL, code 1 fragment reassembly;
* parameter problem (12) with its pointer (high byte of the second word).

Every message starts with type, code, checksum and a 4-byte "rest of header"
word, so :class:`IcmpView` needs 8 bytes and interprets nothing else; the
checksum covers the whole ICMP message (RFC 792 "Checksum").

Errors quote the offending datagram.  RFC 792 asks for its IP header plus
the first 8 payload bytes; slirpnet follows RFC 1812 §4.3.2.3 and quotes as
much as fits in a 576-byte error datagram (our error IP header has no
options, so at most 576 - 20 - 8 = 548 bytes, :data:`MAX_QUOTE_LEN`).
:func:`may_send_error` applies the "never send an error about..." rules of
RFC 1122 §3.2.2 / RFC 1812 §4.3.2.7 that can be read off the datagram.

Drops (counter names): ``icmpv4.truncated`` (< 8 bytes),
``icmpv4.bad_checksum``, ``icmpv4.unsupported_type`` (a type :func:`parse`
has no value for: timestamps, redirects, router discovery...),
``icmpv4.unexpected_type`` (a value's ``parse`` given a view of another
type), ``icmpv4.bad_quote`` (an error whose quote is not an IPv4 header).

Not done here: rate limiting of errors (RFC 1812 §4.3.2.8), redirects,
RFC 4884 multi-part extensions (a received quote is carried as opaque bytes,
extension included; emitted errors have none), and
any decision about *whether* an error is due; that is the stack's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed
from .checksum import checksum
from .ipv4 import PROTO_ICMP, Ipv4View, is_limited_broadcast, is_multicast

HEADER_LEN = 8

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
SOURCE_QUENCH = 4
REDIRECT = 5
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12

# Destination unreachable codes (RFC 792, RFC 1812 §5.2.7.1).
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4
UNREACH_SOURCE_ROUTE_FAILED = 5
UNREACH_NET_UNKNOWN = 6
UNREACH_HOST_UNKNOWN = 7
UNREACH_NET_PROHIBITED = 9
UNREACH_HOST_PROHIBITED = 10
UNREACH_ADMIN_PROHIBITED = 13

# Time exceeded codes.
TIME_EXCEEDED_TTL = 0
TIME_EXCEEDED_REASSEMBLY = 1

ERROR_DATAGRAM_MAX_LEN = 576  # RFC 1812 §4.3.2.3
MAX_QUOTE_LEN = ERROR_DATAGRAM_MAX_LEN - 20 - HEADER_LEN  # 548

ERROR_TYPES = frozenset((DEST_UNREACHABLE, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAMETER_PROBLEM))

_HDR = struct.Struct("!BBHHH")  # type, code, checksum, two 16-bit halves of the rest
_ERR = struct.Struct("!BBHI")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class IcmpView:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview, *, verify_checksum: bool = True) -> IcmpView:
        """``buf`` is the whole IP payload (already trimmed by Ipv4View)."""
        if len(buf) < HEADER_LEN:
            raise Malformed("icmpv4.truncated")
        if verify_checksum and checksum(buf) != 0:
            raise Malformed("icmpv4.bad_checksum")
        return cls(buf)

    @property
    def type(self) -> int:
        return self.buf[0]

    @property
    def code(self) -> int:
        return self.buf[1]

    @property
    def checksum(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def rest(self) -> int:
        """The 32-bit word after the checksum, uninterpreted."""
        return _U32.unpack_from(self.buf, 4)[0]

    @property
    def ident(self) -> int:
        """Echo identifier (meaningful for echo request/reply)."""
        return (self.buf[4] << 8) | self.buf[5]

    @property
    def seq(self) -> int:
        """Echo sequence number (meaningful for echo request/reply)."""
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def next_hop_mtu(self) -> int:
        """RFC 1191 §4 next-hop MTU (meaningful for type 3 code 4; 0 from old routers)."""
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def pointer(self) -> int:
        """Parameter problem pointer (meaningful for type 12)."""
        return self.buf[4]

    @property
    def payload(self) -> memoryview:
        """Echo data, or the quoted datagram of an error."""
        return self.buf[HEADER_LEN:]

    @property
    def is_error(self) -> bool:
        return self.buf[0] in ERROR_TYPES

    def check_quote(self) -> Ipv4View:
        """The quoted datagram of an error message, checked leniently (Ipv4View.check_quoted)."""
        try:
            return Ipv4View.check_quoted(self.buf[HEADER_LEN:])
        except Malformed:
            raise Malformed("icmpv4.bad_quote") from None


def _finish(buf: bytearray, offset: int, length: int) -> None:
    """Fill in the checksum of the message at buf[offset : offset+length] (field zero)."""
    _U16.pack_into(buf, offset + 2, checksum(memoryview(buf)[offset : offset + length]))


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    type: int  # ECHO_REQUEST or ECHO_REPLY
    ident: int
    seq: int
    data: bytes = b""
    code: int = 0

    @classmethod
    def parse(cls, view: IcmpView) -> IcmpEcho:
        t, code, _, ident, seq = _HDR.unpack_from(view.buf, 0)
        if t != ECHO_REQUEST and t != ECHO_REPLY:
            raise Malformed("icmpv4.unexpected_type")
        return cls(t, ident, seq, bytes(view.buf[HEADER_LEN:]), code)

    def reply(self) -> IcmpEcho:
        """The echo reply to this request: same identifier, sequence and data (RFC 792)."""
        return IcmpEcho(ECHO_REPLY, self.ident, self.seq, self.data)

    @property
    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.data)

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        """Write the whole message (header and data) with a complete checksum."""
        n = HEADER_LEN + len(self.data)
        _HDR.pack_into(buf, offset, self.type, self.code, 0, self.ident, self.seq)
        buf[offset + HEADER_LEN : offset + n] = self.data
        _finish(buf, offset, n)


@dataclass(frozen=True, slots=True)
class IcmpError:
    type: int  # DEST_UNREACHABLE, TIME_EXCEEDED or PARAMETER_PROBLEM
    code: int
    quote: bytes  # the offending datagram, from its IP header on, possibly cut
    next_hop_mtu: int = 0  # DEST_UNREACHABLE / UNREACH_FRAG_NEEDED only
    pointer: int = 0  # PARAMETER_PROBLEM only

    @classmethod
    def parse(cls, view: IcmpView) -> IcmpError:
        t = view.buf[0]
        if t != DEST_UNREACHABLE and t != TIME_EXCEEDED and t != PARAMETER_PROBLEM:
            raise Malformed("icmpv4.unexpected_type")
        code = view.buf[1]
        mtu = view.next_hop_mtu if t == DEST_UNREACHABLE and code == UNREACH_FRAG_NEEDED else 0
        pointer = view.buf[4] if t == PARAMETER_PROBLEM else 0
        return cls(t, code, bytes(view.buf[HEADER_LEN:]), mtu, pointer)

    @classmethod
    def for_datagram(
        cls, type: int, code: int, datagram: bytes | memoryview, next_hop_mtu: int = 0, pointer: int = 0
    ) -> IcmpError:
        """An error about ``datagram`` (from its IP header on), quoting at most MAX_QUOTE_LEN bytes."""
        return cls(type, code, bytes(datagram[:MAX_QUOTE_LEN]), next_hop_mtu, pointer)

    @classmethod
    def dest_unreachable(cls, code: int, datagram: bytes | memoryview, next_hop_mtu: int = 0) -> IcmpError:
        return cls.for_datagram(DEST_UNREACHABLE, code, datagram, next_hop_mtu if code == UNREACH_FRAG_NEEDED else 0)

    @classmethod
    def frag_needed(cls, datagram: bytes | memoryview, next_hop_mtu: int) -> IcmpError:
        """Type 3 code 4 with the MTU of the next hop (RFC 1191 §4)."""
        return cls.for_datagram(DEST_UNREACHABLE, UNREACH_FRAG_NEEDED, datagram, next_hop_mtu)

    @classmethod
    def time_exceeded(cls, code: int, datagram: bytes | memoryview) -> IcmpError:
        return cls.for_datagram(TIME_EXCEEDED, code, datagram)

    @property
    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.quote)

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        """Write the whole message (header and quote) with a complete checksum."""
        n = HEADER_LEN + len(self.quote)
        rest = (self.pointer << 24) if self.type == PARAMETER_PROBLEM else (self.next_hop_mtu & 0xFFFF)
        _ERR.pack_into(buf, offset, self.type, self.code, 0, rest)
        buf[offset + HEADER_LEN : offset + n] = self.quote
        _finish(buf, offset, n)


def parse(view: IcmpView) -> IcmpEcho | IcmpError:
    """The value for a checked message; other types raise ``icmpv4.unsupported_type``."""
    t = view.buf[0]
    if t == ECHO_REQUEST or t == ECHO_REPLY:
        return IcmpEcho.parse(view)
    if t == DEST_UNREACHABLE or t == TIME_EXCEEDED or t == PARAMETER_PROBLEM:
        return IcmpError.parse(view)
    raise Malformed("icmpv4.unsupported_type")


def _is_single_host(addr: bytes) -> bool:
    """RFC 1812 §4.3.2.7: not zero, loopback (127/8), broadcast, multicast or class E."""
    first = addr[0]
    return first != 0 and first != 127 and first < 224


def may_send_error(datagram: Ipv4View, *, link_multicast: bool = False, directed_broadcast: bytes | None = None) -> bool:
    """Whether an ICMP error about ``datagram`` is allowed (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7).

    Not about: an ICMP error message (or an ICMP message too short to tell);
    a datagram sent to a multicast or broadcast IP address (the limited one,
    or ``directed_broadcast`` when the caller knows its subnet's) or as a
    link-layer multicast/broadcast (``link_multicast``, from the Ethernet
    header); a non-initial fragment; a source that is not a single host.
    """
    if link_multicast or datagram.frag_offset != 0:
        return False
    dst = datagram.dst
    if is_multicast(dst) or is_limited_broadcast(dst) or dst == directed_broadcast:
        return False
    if not _is_single_host(datagram.src):
        return False
    if datagram.protocol == PROTO_ICMP:
        payload = datagram.payload
        if len(payload) < 1 or payload[0] in ERROR_TYPES:
            return False
    return True
