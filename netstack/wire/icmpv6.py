"""ICMPv6 (RFC 4443): echo and the four error messages.

Models:

* echo request (128) / echo reply (129): identifier, sequence, data (§4);
* destination unreachable (1), codes 0-6 (§3.1);
* packet too big (2) with the MTU (§3.2);
* time exceeded (3): code 0 hop limit, code 1 fragment reassembly (§3.3);
* parameter problem (4) with the pointer (§3.4).

Neighbour Discovery messages (133-137) share :class:`Icmpv6View` and are
valued by netstack/wire/ndp.py.  Every message has type, code, checksum and
a 4-byte word after it, so the view needs 8 bytes (shorter messages exist
for no type slirpnet handles).

Checksum (§2.3): over the RFC 8200 §8.1 pseudo-header (next header 58)
and the whole message; it is mandatory.  :meth:`Icmpv6View.check` verifies
it when given the IPv6 source and destination (a caller that omits them
takes responsibility), and every ``emit`` takes them to write a complete
checksum.

Errors quote the invoking packet, from its IPv6 header on, "as much ... as
possible without the ICMPv6 packet exceeding the minimum IPv6 MTU" (§2.4 c):
at most 1280 - 40 - 8 = 1232 bytes (:data:`MAX_QUOTE_LEN`).
:func:`may_send_error` applies the §2.4 (e) rules that can be read off the
invoking packet.

Drops (counter names): ``icmpv6.truncated``, ``icmpv6.bad_checksum``,
``icmpv6.unsupported_type`` (no value here: MLD, NDP, ...; :func:`parse`),
``icmpv6.unexpected_type`` (a value's ``parse`` given another type),
``icmpv6.bad_quote``.

Not done here: rate limiting (§2.4 f), RFC 4884 extensions, MLD.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed
from .checksum import checksum, pseudo_sum_v6
from .ipv6 import MIN_MTU, NH_ICMPV6, Ipv6View, is_multicast

HEADER_LEN = 8
NH = NH_ICMPV6

DEST_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
REDIRECT = 137

# Destination unreachable codes (§3.1).
UNREACH_NO_ROUTE = 0
UNREACH_ADMIN_PROHIBITED = 1
UNREACH_BEYOND_SCOPE = 2
UNREACH_ADDRESS = 3
UNREACH_PORT = 4
UNREACH_SOURCE_POLICY = 5
UNREACH_REJECT_ROUTE = 6

TIME_EXCEEDED_HOP_LIMIT = 0
TIME_EXCEEDED_REASSEMBLY = 1

# Parameter problem codes (§3.4).
PARAM_BAD_HEADER_FIELD = 0
PARAM_UNRECOGNIZED_NEXT_HEADER = 1
PARAM_UNRECOGNIZED_OPTION = 2

MAX_QUOTE_LEN = MIN_MTU - 40 - HEADER_LEN  # 1232

_HDR = struct.Struct("!BBHHH")
_ERR = struct.Struct("!BBHI")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class Icmpv6View:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview, src: bytes | None = None, dst: bytes | None = None) -> Icmpv6View:
        """``buf`` is the upper-layer part of the packet; with ``src``/``dst`` the checksum is verified."""
        n = len(buf)
        if n < HEADER_LEN:
            raise Malformed("icmpv6.truncated")
        if src is not None and dst is not None and checksum(buf, pseudo_sum_v6(src, dst, NH, n)) != 0:
            raise Malformed("icmpv6.bad_checksum")
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
        """The 32-bit word after the checksum: MTU (type 2), pointer (type 4), id+seq (echo)."""
        return _U32.unpack_from(self.buf, 4)[0]

    @property
    def ident(self) -> int:
        return (self.buf[4] << 8) | self.buf[5]

    @property
    def seq(self) -> int:
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def payload(self) -> memoryview:
        """Echo data, the invoking packet of an error, or an NDP message's body after the first word."""
        return self.buf[HEADER_LEN:]

    @property
    def is_error(self) -> bool:
        """Error messages have types 0-127 (§2.1)."""
        return self.buf[0] < 128

    def check_quote(self) -> Ipv6View:
        """The invoking packet of an error, checked leniently (Ipv6View.check_quoted)."""
        try:
            return Ipv6View.check_quoted(self.buf[HEADER_LEN:])
        except Malformed:
            raise Malformed("icmpv6.bad_quote") from None


def finish_checksum(buf: bytearray, offset: int, length: int, src: bytes, dst: bytes) -> None:
    """Fill in the checksum of the ICMPv6 message at buf[offset : offset+length] (field zero)."""
    c = checksum(memoryview(buf)[offset : offset + length], pseudo_sum_v6(src, dst, NH, length))
    _U16.pack_into(buf, offset + 2, c)


@dataclass(frozen=True, slots=True)
class Icmpv6Echo:
    type: int  # ECHO_REQUEST or ECHO_REPLY
    ident: int
    seq: int
    data: bytes = b""
    code: int = 0

    @classmethod
    def parse(cls, view: Icmpv6View) -> Icmpv6Echo:
        t, code, _, ident, seq = _HDR.unpack_from(view.buf, 0)
        if t != ECHO_REQUEST and t != ECHO_REPLY:
            raise Malformed("icmpv6.unexpected_type")
        return cls(t, ident, seq, bytes(view.buf[HEADER_LEN:]), code)

    def reply(self) -> Icmpv6Echo:
        """The echo reply: same identifier, sequence and data (§4.2)."""
        return Icmpv6Echo(ECHO_REPLY, self.ident, self.seq, self.data)

    @property
    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.data)

    def emit(self, buf: bytearray, offset: int, src: bytes, dst: bytes) -> None:
        """Write the whole message with a complete checksum for IPv6 ``src`` → ``dst``."""
        n = HEADER_LEN + len(self.data)
        _HDR.pack_into(buf, offset, self.type, self.code, 0, self.ident, self.seq)
        buf[offset + HEADER_LEN : offset + n] = self.data
        finish_checksum(buf, offset, n, src, dst)


@dataclass(frozen=True, slots=True)
class Icmpv6Error:
    type: int  # DEST_UNREACHABLE, PACKET_TOO_BIG, TIME_EXCEEDED or PARAMETER_PROBLEM
    code: int
    quote: bytes  # the invoking packet from its IPv6 header on, possibly cut
    mtu: int = 0  # PACKET_TOO_BIG only
    pointer: int = 0  # PARAMETER_PROBLEM only: offset of the error in the invoking packet

    @classmethod
    def parse(cls, view: Icmpv6View) -> Icmpv6Error:
        t = view.buf[0]
        if t != DEST_UNREACHABLE and t != PACKET_TOO_BIG and t != TIME_EXCEEDED and t != PARAMETER_PROBLEM:
            raise Malformed("icmpv6.unexpected_type")
        rest = view.rest
        return cls(
            t,
            view.buf[1],
            bytes(view.buf[HEADER_LEN:]),
            rest if t == PACKET_TOO_BIG else 0,
            rest if t == PARAMETER_PROBLEM else 0,
        )

    @classmethod
    def for_packet(
        cls, type: int, code: int, packet: bytes | memoryview, mtu: int = 0, pointer: int = 0
    ) -> Icmpv6Error:
        """An error about ``packet`` (IPv6 header on), quoting at most MAX_QUOTE_LEN bytes."""
        return cls(type, code, bytes(packet[:MAX_QUOTE_LEN]), mtu, pointer)

    @classmethod
    def dest_unreachable(cls, code: int, packet: bytes | memoryview) -> Icmpv6Error:
        return cls.for_packet(DEST_UNREACHABLE, code, packet)

    @classmethod
    def packet_too_big(cls, packet: bytes | memoryview, mtu: int) -> Icmpv6Error:
        return cls.for_packet(PACKET_TOO_BIG, 0, packet, mtu=mtu)

    @classmethod
    def time_exceeded(cls, code: int, packet: bytes | memoryview) -> Icmpv6Error:
        return cls.for_packet(TIME_EXCEEDED, code, packet)

    @classmethod
    def parameter_problem(cls, code: int, packet: bytes | memoryview, pointer: int) -> Icmpv6Error:
        return cls.for_packet(PARAMETER_PROBLEM, code, packet, pointer=pointer)

    @property
    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.quote)

    def emit(self, buf: bytearray, offset: int, src: bytes, dst: bytes) -> None:
        """Write the whole message with a complete checksum for IPv6 ``src`` → ``dst``."""
        n = HEADER_LEN + len(self.quote)
        if self.type == PACKET_TOO_BIG:
            rest = self.mtu
        elif self.type == PARAMETER_PROBLEM:
            rest = self.pointer
        else:
            rest = 0
        _ERR.pack_into(buf, offset, self.type, self.code, 0, rest)
        buf[offset + HEADER_LEN : offset + n] = self.quote
        finish_checksum(buf, offset, n, src, dst)


def parse(view: Icmpv6View) -> Icmpv6Echo | Icmpv6Error:
    """The value for a checked echo or error message; other types raise ``icmpv6.unsupported_type``."""
    t = view.buf[0]
    if t == ECHO_REQUEST or t == ECHO_REPLY:
        return Icmpv6Echo.parse(view)
    if 1 <= t <= 4:
        return Icmpv6Error.parse(view)
    raise Malformed("icmpv6.unsupported_type")


def may_send_error(packet: Ipv6View, error_type: int, error_code: int = 0, *, link_multicast: bool = False) -> bool:
    """Whether an ICMPv6 error of this type/code about ``packet`` is allowed (RFC 4443 §2.4 e).

    Not about: an ICMPv6 error or a Redirect (also when the chain cannot be
    read far enough to tell); a packet to a multicast address or sent as a
    link-layer multicast/broadcast (``link_multicast``), except for Packet Too
    Big and Parameter Problem code 2 (e.3-e.5); a source that is not one node:
    unspecified or multicast (e.6).
    """
    src = packet.src
    if src == bytes(16) or is_multicast(src):
        return False
    if link_multicast or is_multicast(packet.dst):
        if not (error_type == PACKET_TOO_BIG or (error_type == PARAMETER_PROBLEM and error_code == PARAM_UNRECOGNIZED_OPTION)):
            return False
    try:
        chain = packet.walk()
    except Malformed:
        return True  # not ICMPv6 as far as can be told; the chain's own error is what is reported
    if chain.upper_protocol != NH_ICMPV6:
        return True
    if chain.fragment is not None and chain.fragment.offset != 0:
        return True  # a later fragment: its data is not an ICMPv6 header
    b = packet.buf
    if chain.upper_offset >= len(b):
        return False
    t = b[chain.upper_offset]
    return t >= 128 and t != REDIRECT
