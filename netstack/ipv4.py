"""IPv4 from the guest: checks, neighbour learning, reassembly, protocol dispatch.

RFC 791 / RFC 1122 §3.2.1 as seen by a terminating gateway: a datagram from
the guest is checked (netstack/wire/ipv4.py: version, lengths, header
checksum), its source MAC learned, fragments reassembled (bounded,
netstack/fragments.py), and the complete payload dispatched through the
protocol table (ICMP, TCP, UDP).  We are an endpoint, not a router, so the TTL
is not decremented (as in slirp4netns, traceroute through the stack does not
show a hop).

Drops: the wire module's ``ipv4.*`` names, plus ``ipv4.bad_source`` (a
multicast, broadcast or loopback source), ``ipv4.unknown_protocol``.
"""

from __future__ import annotations

from .wire import Malformed, ipv4

_LOOPBACK_NET = 127


class Ipv4Layer:
    __slots__ = ("stack", "protocols", "reassembler")

    def __init__(self, stack, reassembler) -> None:
        self.stack = stack
        self.protocols: dict = {}  # protocol number -> handler(ip_view, payload, now, csum_ok)
        self.reassembler = reassembler

    def register(self, protocol: int, handler) -> None:
        self.protocols[protocol] = handler

    def from_guest(self, eth, now: float, csum_ok: bool) -> None:
        stack = self.stack
        try:
            ip = ipv4.Ipv4View.check(eth.payload)
        except Malformed as err:
            stack.counters.bump(err.counter)
            return
        src = ip.src
        if src[0] == _LOOPBACK_NET or src[0] >= 224:
            stack.counters.bump("ipv4.bad_source")
            return
        if src != b"\0\0\0\0":
            stack.learned(src, eth.src)
        handler = self.protocols.get(ip.protocol)
        if handler is None:
            stack.counters.bump("ipv4.unknown_protocol")
            return
        if ip.is_fragment:
            whole = self.reassembler.add_v4(ip, now)
            if whole is None:
                return
            ip = ipv4.Ipv4View.check(memoryview(whole), verify_checksum=False)
            csum_ok = False  # offload flags describe the last fragment, not the datagram
        handler(ip, ip.payload, now, csum_ok)
