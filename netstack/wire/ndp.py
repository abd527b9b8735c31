"""Neighbour Discovery for IPv6 (RFC 4861) on Ethernet, with RDNSS (RFC 8106).

Models the four messages a router-for-one-guest needs: Router Solicitation
(133), Router Advertisement (134), Neighbour Solicitation (135), Neighbour
Advertisement (136), and the options Source / Target Link-Layer Address
(1, 2; Ethernet: one 8-byte unit holding the MAC), Prefix Information (3),
MTU (5) and Recursive DNS Server (25, RFC 8106 §5.1).

:class:`NdpView` is checked on top of a checksum-verified
:class:`~netstack.wire.icmpv6.Icmpv6View`, with the IPv6 source, destination
and hop limit, and applies the message validation of RFC 4861 §6.1.1
(RS), §6.1.2 (RA), §7.1.1 (NS) and §7.1.2 (NA):

* hop limit 255 (the packet cannot have come from off-link), code 0;
* the fixed part is present (RS 8, RA 16, NS/NA 24 bytes);
* every option has a non-zero length and fits in the message (§4.6);
* RS / NS from the unspecified address carry no Source Link-Layer Address,
  and such an NS goes to a solicited-node multicast address (DAD);
* an RA comes from a link-local address;
* the NS/NA target is not multicast; an NA to a multicast destination does
  not have the Solicited flag.

After that, the values' ``parse`` cannot fail: an option of a known type
with a length that does not fit its type (a link-layer address that is not
Ethernet, a Prefix Information that is not 4 units, an RDNSS of even length
or < 3, a prefix length > 128) is ignored, as RFC 4861 §4.6 and RFC 8106
§5.1 ask, and unknown options are skipped (§4.6).  Only the first SLLA/TLLA
and MTU option counts.

Every ``emit`` writes the whole ICMPv6 message, options included, with a
complete checksum for the given IPv6 source and destination; the caller
writes the IPv6 header with hop limit 255.

Drops (counter names): ``ndp.unsupported_type`` (Redirect and the rest),
``ndp.bad_hop_limit``, ``ndp.bad_code``, ``ndp.truncated``,
``ndp.bad_option_length`` (length 0), ``ndp.truncated_option``,
``ndp.slla_from_unspecified``, ``ndp.bad_dad_destination``,
``ndp.ra_not_link_local``, ``ndp.multicast_target``,
``ndp.solicited_to_multicast``.

Not done here: Redirect, DNSSL (RFC 8106 §5.2), Route Information
(RFC 4191), router preference bits, SEND; neighbour cache and router logic
belong to the stack.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed
from .icmpv6 import (
    NEIGHBOR_ADVERTISEMENT,
    NEIGHBOR_SOLICITATION,
    ROUTER_ADVERTISEMENT,
    ROUTER_SOLICITATION,
    Icmpv6View,
    finish_checksum,
)
from .ipv6 import UNSPECIFIED, is_link_local, is_multicast

HOP_LIMIT = 255

OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25

RA_MANAGED = 0x80
RA_OTHER = 0x40

NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20

PREFIX_ON_LINK = 0x80
PREFIX_AUTONOMOUS = 0x40

INFINITE_LIFETIME = 0xFFFFFFFF

_FIXED_LEN = {
    ROUTER_SOLICITATION: 8,
    ROUTER_ADVERTISEMENT: 16,
    NEIGHBOR_SOLICITATION: 24,
    NEIGHBOR_ADVERTISEMENT: 24,
}

_RA = struct.Struct("!BBHBBHII")  # type code cksum hop-limit flags lifetime reachable retrans
_HDR4 = struct.Struct("!BBHI")  # type code cksum word
_PREFIX = struct.Struct("!BBBBIII16s")
_PREFIX_BODY = struct.Struct("!BBIII16s")
_MTU = struct.Struct("!BBHI")
_RDNSS = struct.Struct("!BBHI")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")


def _is_solicited_node(addr: bytes) -> bool:
    """ff02::1:ff00:0/104 (RFC 4291 §2.7.1)."""
    return addr[:13] == b"\xff\x02" + bytes(9) + b"\x01\xff"


class NdpView:
    __slots__ = ("buf", "options_offset")

    def __init__(self, buf: memoryview, options_offset: int):
        self.buf = buf
        self.options_offset = options_offset

    @classmethod
    def check(cls, icmp: Icmpv6View, src: bytes, dst: bytes, hop_limit: int) -> NdpView:
        buf = icmp.buf
        t = buf[0]
        fixed = _FIXED_LEN.get(t)
        if fixed is None:
            raise Malformed("ndp.unsupported_type")
        if hop_limit != HOP_LIMIT:
            raise Malformed("ndp.bad_hop_limit")
        if buf[1] != 0:
            raise Malformed("ndp.bad_code")
        n = len(buf)
        if n < fixed:
            raise Malformed("ndp.truncated")
        has_slla = False
        i = fixed
        while i < n:
            if i + 2 > n:
                raise Malformed("ndp.truncated_option")
            units = buf[i + 1]
            if units == 0:
                raise Malformed("ndp.bad_option_length")
            if i + units * 8 > n:
                raise Malformed("ndp.truncated_option")
            if buf[i] == OPT_SOURCE_LLADDR:
                has_slla = True
            i += units * 8
        if t == ROUTER_ADVERTISEMENT:
            if not is_link_local(src):
                raise Malformed("ndp.ra_not_link_local")
        else:
            unspecified = src == UNSPECIFIED
            if unspecified and has_slla:
                raise Malformed("ndp.slla_from_unspecified")
            if t != ROUTER_SOLICITATION:
                if buf[8] == 0xFF:  # target address is multicast
                    raise Malformed("ndp.multicast_target")
                if t == NEIGHBOR_SOLICITATION and unspecified and not _is_solicited_node(dst):
                    raise Malformed("ndp.bad_dad_destination")
                if t == NEIGHBOR_ADVERTISEMENT and is_multicast(dst) and buf[4] & NA_SOLICITED:
                    raise Malformed("ndp.solicited_to_multicast")
        return cls(buf, fixed)

    @property
    def type(self) -> int:
        return self.buf[0]

    @property
    def target(self) -> bytes:
        """NS/NA target address (RS/RA: meaningless)."""
        return bytes(self.buf[8:24]) if len(self.buf) >= 24 else b""

    def options(self):
        """Yield (option type, option body after the type and length bytes); never fails."""
        b = self.buf
        i, n = self.options_offset, len(b)
        while i < n:
            end = i + b[i + 1] * 8
            yield b[i], b[i + 2 : end]
            i = end


def _lladdr(body: memoryview) -> bytes | None:
    return bytes(body[:6]) if len(body) == 6 else None


def _emit_lladdr(buf: bytearray, i: int, kind: int, mac: bytes) -> int:
    buf[i : i + 8] = bytes((kind, 1)) + mac
    return i + 8


@dataclass(frozen=True, slots=True)
class PrefixInfo:
    """Prefix Information option (RFC 4861 §4.6.2); ``prefix`` is 16 bytes."""

    prefix: bytes
    prefix_len: int
    valid_lifetime: int
    preferred_lifetime: int
    on_link: bool = True
    autonomous: bool = True

    buffer_len = 32

    @classmethod
    def parse_body(cls, body: memoryview) -> PrefixInfo | None:
        """From the option body after type and length; None when the option must be ignored."""
        if len(body) != 30 or body[0] > 128:
            return None
        plen, flags, valid, preferred, _, prefix = _PREFIX_BODY.unpack_from(body, 0)
        return cls(prefix, plen, valid, preferred, bool(flags & PREFIX_ON_LINK), bool(flags & PREFIX_AUTONOMOUS))

    def emit_at(self, buf: bytearray, i: int) -> int:
        flags = (PREFIX_ON_LINK if self.on_link else 0) | (PREFIX_AUTONOMOUS if self.autonomous else 0)
        _PREFIX.pack_into(
            buf, i, OPT_PREFIX_INFO, 4, self.prefix_len, flags, self.valid_lifetime, self.preferred_lifetime, 0,
            self.prefix,
        )
        return i + 32


@dataclass(frozen=True, slots=True)
class Rdnss:
    """Recursive DNS Server option (RFC 8106 §5.1): lifetime in seconds, 16-byte addresses."""

    lifetime: int
    servers: tuple[bytes, ...]

    @classmethod
    def parse_body(cls, body: memoryview) -> Rdnss | None:
        n = len(body) - 6
        if n < 16 or n % 16:
            return None  # length < 3 or even (RFC 8106 §5.1: discard the option)
        lifetime = _U32.unpack_from(body, 2)[0]
        return cls(lifetime, tuple(bytes(body[j : j + 16]) for j in range(6, len(body), 16)))

    @property
    def buffer_len(self) -> int:
        return 8 + 16 * len(self.servers)

    def emit_at(self, buf: bytearray, i: int) -> int:
        if not self.servers:
            raise ValueError("an RDNSS option needs at least one server")
        _RDNSS.pack_into(buf, i, OPT_RDNSS, 1 + 2 * len(self.servers), 0, self.lifetime)
        j = i + 8
        for addr in self.servers:
            buf[j : j + 16] = addr
            j += 16
        return j


@dataclass(frozen=True, slots=True)
class RouterSolicitation:
    source_mac: bytes | None = None

    @classmethod
    def parse(cls, view: NdpView) -> RouterSolicitation:
        mac = None
        for kind, body in view.options():
            if kind == OPT_SOURCE_LLADDR and mac is None:
                mac = _lladdr(body)
        return cls(mac)

    @property
    def buffer_len(self) -> int:
        return 8 + (8 if self.source_mac is not None else 0)

    def emit(self, buf: bytearray, offset: int, src: bytes, dst: bytes) -> None:
        _HDR4.pack_into(buf, offset, ROUTER_SOLICITATION, 0, 0, 0)
        if self.source_mac is not None:
            _emit_lladdr(buf, offset + 8, OPT_SOURCE_LLADDR, self.source_mac)
        finish_checksum(buf, offset, self.buffer_len, src, dst)


@dataclass(frozen=True, slots=True)
class RouterAdvertisement:
    cur_hop_limit: int = 64
    managed: bool = False
    other: bool = False
    router_lifetime: int = 1800  # seconds; 0 = not a default router
    reachable_time: int = 0  # milliseconds; 0 = unspecified
    retrans_timer: int = 0  # milliseconds; 0 = unspecified
    source_mac: bytes | None = None
    mtu: int | None = None
    prefixes: tuple[PrefixInfo, ...] = ()
    rdnss: tuple[Rdnss, ...] = ()

    @classmethod
    def parse(cls, view: NdpView) -> RouterAdvertisement:
        _, _, _, hop, flags, lifetime, reachable, retrans = _RA.unpack_from(view.buf, 0)
        mac = mtu = None
        prefixes: list[PrefixInfo] = []
        servers: list[Rdnss] = []
        for kind, body in view.options():
            if kind == OPT_SOURCE_LLADDR:
                if mac is None:
                    mac = _lladdr(body)
            elif kind == OPT_MTU:
                if mtu is None and len(body) == 6:
                    mtu = _U32.unpack_from(body, 2)[0]
            elif kind == OPT_PREFIX_INFO:
                p = PrefixInfo.parse_body(body)
                if p is not None:
                    prefixes.append(p)
            elif kind == OPT_RDNSS:
                r = Rdnss.parse_body(body)
                if r is not None:
                    servers.append(r)
        return cls(
            hop,
            bool(flags & RA_MANAGED),
            bool(flags & RA_OTHER),
            lifetime,
            reachable,
            retrans,
            mac,
            mtu,
            tuple(prefixes),
            tuple(servers),
        )

    @property
    def buffer_len(self) -> int:
        n = 16
        if self.source_mac is not None:
            n += 8
        if self.mtu is not None:
            n += 8
        n += 32 * len(self.prefixes)
        for r in self.rdnss:
            n += r.buffer_len
        return n

    def emit(self, buf: bytearray, offset: int, src: bytes, dst: bytes) -> None:
        flags = (RA_MANAGED if self.managed else 0) | (RA_OTHER if self.other else 0)
        _RA.pack_into(
            buf, offset, ROUTER_ADVERTISEMENT, 0, 0, self.cur_hop_limit, flags, self.router_lifetime,
            self.reachable_time, self.retrans_timer,
        )
        i = offset + 16
        if self.source_mac is not None:
            i = _emit_lladdr(buf, i, OPT_SOURCE_LLADDR, self.source_mac)
        if self.mtu is not None:
            _MTU.pack_into(buf, i, OPT_MTU, 1, 0, self.mtu)
            i += 8
        for p in self.prefixes:
            i = p.emit_at(buf, i)
        for r in self.rdnss:
            i = r.emit_at(buf, i)
        finish_checksum(buf, offset, i - offset, src, dst)


@dataclass(frozen=True, slots=True)
class NeighborSolicitation:
    target: bytes
    source_mac: bytes | None = None

    @classmethod
    def parse(cls, view: NdpView) -> NeighborSolicitation:
        mac = None
        for kind, body in view.options():
            if kind == OPT_SOURCE_LLADDR and mac is None:
                mac = _lladdr(body)
        return cls(bytes(view.buf[8:24]), mac)

    @property
    def is_dad(self) -> bool:
        """Duplicate Address Detection probes carry no SLLA (and come from ::)."""
        return self.source_mac is None

    @property
    def buffer_len(self) -> int:
        return 24 + (8 if self.source_mac is not None else 0)

    def emit(self, buf: bytearray, offset: int, src: bytes, dst: bytes) -> None:
        _HDR4.pack_into(buf, offset, NEIGHBOR_SOLICITATION, 0, 0, 0)
        buf[offset + 8 : offset + 24] = self.target
        if self.source_mac is not None:
            _emit_lladdr(buf, offset + 24, OPT_SOURCE_LLADDR, self.source_mac)
        finish_checksum(buf, offset, self.buffer_len, src, dst)


@dataclass(frozen=True, slots=True)
class NeighborAdvertisement:
    target: bytes
    router: bool = False
    solicited: bool = False
    override: bool = False
    target_mac: bytes | None = None

    @classmethod
    def parse(cls, view: NdpView) -> NeighborAdvertisement:
        mac = None
        for kind, body in view.options():
            if kind == OPT_TARGET_LLADDR and mac is None:
                mac = _lladdr(body)
        flags = view.buf[4]
        return cls(
            bytes(view.buf[8:24]),
            bool(flags & NA_ROUTER),
            bool(flags & NA_SOLICITED),
            bool(flags & NA_OVERRIDE),
            mac,
        )

    @property
    def buffer_len(self) -> int:
        return 24 + (8 if self.target_mac is not None else 0)

    def emit(self, buf: bytearray, offset: int, src: bytes, dst: bytes) -> None:
        flags = (NA_ROUTER if self.router else 0) | (NA_SOLICITED if self.solicited else 0) | (
            NA_OVERRIDE if self.override else 0
        )
        _HDR4.pack_into(buf, offset, NEIGHBOR_ADVERTISEMENT, 0, 0, flags << 24)
        buf[offset + 8 : offset + 24] = self.target
        if self.target_mac is not None:
            _emit_lladdr(buf, offset + 24, OPT_TARGET_LLADDR, self.target_mac)
        finish_checksum(buf, offset, self.buffer_len, src, dst)


_VALUES = {
    ROUTER_SOLICITATION: RouterSolicitation,
    ROUTER_ADVERTISEMENT: RouterAdvertisement,
    NEIGHBOR_SOLICITATION: NeighborSolicitation,
    NEIGHBOR_ADVERTISEMENT: NeighborAdvertisement,
}


def parse(view: NdpView) -> RouterSolicitation | RouterAdvertisement | NeighborSolicitation | NeighborAdvertisement:
    return _VALUES[view.buf[0]].parse(view)
