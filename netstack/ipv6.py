"""IPv6 from the guest: checks, neighbour learning, extension headers, reassembly, dispatch.

RFC 8200 as seen by a terminating router (only with ``--enable-ipv6``): a
packet from the guest is checked (netstack/wire/ipv6.py: version, Payload
Length), its source's MAC learned (RFC 4861 §7.2.5 in spirit: the guest's
own traffic keeps the neighbour table warm), its extension-header chain
walked with a bound (:data:`~netstack.wire.ipv6.MAX_EXTENSION_HEADERS`
headers, :data:`~netstack.wire.ipv6.MAX_EXTENSIONS_LEN` bytes: Hop-by-Hop,
Routing with Segments Left 0, Destination Options with no option we must
understand), fragments reassembled (bounded, netstack/fragments.py) and the
reassembled packet walked again, and the upper-layer part dispatched through
the protocol table (ICMPv6, TCP, UDP).  As for IPv4, we are an endpoint:
the hop limit is not decremented.

Sources a guest cannot legitimately use are dropped: multicast (RFC 4291
§2.7), loopback ::1, and IPv4-mapped addresses (RFC 4291 §2.5.5.2).  The
unspecified source :: is allowed (DAD probes, RFC 4862 §5.4.2) but never
learned.  Destinations that cannot appear on a wire — ::, ::1, IPv4-mapped
and -compatible — are dropped too (the policy refuses them as well: a host
socket sent to ::ffff:127.0.0.1 would reach the host's IPv4 loopback).

Drops: the wire module's ``ipv6.*`` names, plus ``ipv6.bad_source``,
``ipv6.bad_destination``, ``ipv6.no_next_header`` (Next Header 59: nothing
to deliver), ``ipv6.unknown_protocol``; ``fragments.*`` from the
reassembler.
"""

from __future__ import annotations

from .policy import is_wire_impossible
from .wire import Malformed, ethernet
from .wire.ipv6 import NH_NONE, Ipv6View

_LOOPBACK = bytes(15) + b"\x01"
_UNSPECIFIED = bytes(16)
_V4_MAPPED = bytes(10) + b"\xff\xff"


class Ipv6Layer:
    __slots__ = ("stack", "protocols", "reassembler", "eth_src")

    def __init__(self, stack, reassembler) -> None:
        self.stack = stack
        self.protocols: dict = {}  # next header -> handler(ip_view, payload, now, csum_ok)
        self.reassembler = reassembler
        self.eth_src = b""  # the current frame's source MAC, valid during from_guest

    def register(self, protocol: int, handler) -> None:
        self.protocols[protocol] = handler

    def from_guest(self, eth, now: float, csum_ok: bool) -> None:
        stack = self.stack
        counters = stack.counters
        try:
            ip = Ipv6View.check(eth.payload)
        except Malformed as err:
            counters.bump(err.counter)
            return
        src = ip.src
        if src[0] == 0xFF or src == _LOOPBACK or src[:12] == _V4_MAPPED:
            counters.bump("ipv6.bad_source")
            return
        dst = ip.dst
        if is_wire_impossible(dst):  # ::, ::1, IPv4-mapped and -compatible
            counters.bump("ipv6.bad_destination")
            return
        mac = eth.src
        if src != _UNSPECIFIED and not ethernet.is_multicast(mac):
            stack.learned(src, mac)
        stack.ndp.guest_heard(now)
        try:
            chain = ip.walk()
        except Malformed as err:
            counters.bump(err.counter)
            return
        if chain.fragment is not None:
            whole = self.reassembler.add_v6(ip, chain, now)
            if whole is None:
                return
            try:
                ip = Ipv6View.check(memoryview(whole))
                chain = ip.walk()
            except Malformed as err:
                counters.bump(err.counter)
                return
            csum_ok = False  # offload flags describe the last fragment, not the packet
        proto = chain.upper_protocol
        handler = self.protocols.get(proto)
        if handler is None:
            counters.bump("ipv6.no_next_header" if proto == NH_NONE else "ipv6.unknown_protocol")
            return
        self.eth_src = mac
        handler(ip, ip.buf[chain.upper_offset :], now, csum_ok)
