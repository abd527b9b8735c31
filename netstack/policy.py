"""Where a guest's packet to dst:port really goes (compat spec §4.2, §4.3).

One decision for TCP, UDP and ICMP, so the rules live in one place:

IPv4 (N = the --cidr network)
  * N+3 (the DNS address), DNS enabled: port 53 is the DNS forwarder
    (:data:`DNS`); any other port is refused (the guest sees ICMP net
    unreachable, as slirp4netns's EPERM does).  With ``--disable-dns`` N+3
    is an ordinary remote address.
  * N+2 (the gateway) and 255.255.255.255: the host's 127.0.0.1, same port;
    with ``--disable-host-loopback``: refused (ICMP net unreachable).
  * anything else, other addresses in N included: itself, on the host's
    network.
IPv6 (prefix fd00::/64; only with ``--enable-ipv6``)
  * fd00::3 port 53: the DNS forwarder; any other fd00::3 port: refused.
    With ``--disable-dns`` fd00::3 is just another fd00::/64 address.
  * any other address in fd00::/64, the router's link-local fe80::2 and the
    all-nodes multicast ff02::1: the host's ::1, or refused with
    ``--disable-host-loopback`` (ICMPv6 "no route", code 0).
  * other link-local addresses (fe80::/10): nobody else is on the guest's
    link, so refused as "address unreachable" (ICMPv6 code 3).
  * other multicast: refused (slirpnet relays no multicast).
  * anything else: itself.
Both families
  * addresses that cannot be a real destination on the wire — loopback
    (127/8, ::1), "this host" (0/8, ::), IPv4-mapped and IPv4-compatible
    IPv6 addresses — are refused.  A guest kernel never sends them; a
    hostile one could, and mapping them "as is" would open the host's
    loopback even with ``--disable-host-loopback`` (a host socket connected
    to ::ffff:127.0.0.1 reaches 127.0.0.1).

Returns a :class:`Route`: ``kind`` is FORWARD (to ``addr``:``port``), DNS, or
REFUSE (``icmp_code`` says which ICMP unreachable the guest gets).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .addressing import IPV6_DNS, IPV6_GATEWAY, IPV6_PREFIX, IPV6_ROUTER_LINK_LOCAL, AddressPlan

FORWARD = "forward"
DNS = "dns"
REFUSE = "refuse"

UNREACH_NET = 0  # ICMP type 3 code 0 (and the ICMPv6 "no route" code 0)
UNREACH_ADDRESS_V6 = 3  # ICMPv6 type 1 code 3 (RFC 4443 §3.1 "address unreachable")

LOOPBACK4 = bytes([127, 0, 0, 1])
LOOPBACK6 = bytes(15) + b"\x01"
LIMITED_BROADCAST = b"\xff\xff\xff\xff"
ALL_NODES6 = ipaddress.IPv6Address("ff02::1").packed
NAT64_PREFIX = ipaddress.IPv6Address("64:ff9b::").packed[:12]  # RFC 6052 §2.1 well-known prefix
_PREFIX6 = IPV6_PREFIX.network_address.packed[:8]
_V4_MAPPED = bytes(10) + b"\xff\xff"
_V4_COMPATIBLE = bytes(12)


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    addr: bytes = b""
    port: int = 0
    icmp_code: int = UNREACH_NET


_DNS_ROUTE = Route(DNS)
_REFUSED = Route(REFUSE)
_REFUSED_ADDRESS = Route(REFUSE, icmp_code=UNREACH_ADDRESS_V6)


def v4_of(addr: bytes) -> bytes | None:
    """The IPv4 address ``addr`` stands for: itself, or the IPv4 inside an
    IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer)."""
    if len(addr) == 4:
        return addr
    if addr[:12] == _V4_MAPPED:
        return addr[12:]
    return None


def is_wire_impossible(dst: bytes) -> bool:
    """Destinations no real packet on the guest's link has (see module doc)."""
    if len(dst) == 4:
        return dst[0] == 127 or dst[0] == 0
    return dst[:12] == _V4_MAPPED or dst[:12] == _V4_COMPATIBLE


class Policy:
    __slots__ = ("plan", "disable_host_loopback", "disable_dns")

    def __init__(self, plan: AddressPlan, disable_host_loopback: bool = False, disable_dns: bool = False):
        self.plan = plan
        self.disable_host_loopback = disable_host_loopback
        self.disable_dns = disable_dns

    def route(self, dst: bytes, port: int) -> Route:
        if is_wire_impossible(dst):
            return _REFUSED
        if len(dst) == 4:
            plan = self.plan
            if dst == plan.dns and not self.disable_dns:
                return _DNS_ROUTE if port == 53 else _REFUSED
            if dst == plan.gateway or dst == LIMITED_BROADCAST:
                return _REFUSED if self.disable_host_loopback else Route(FORWARD, LOOPBACK4, port)
            return Route(FORWARD, dst, port)
        if dst == IPV6_DNS and not self.disable_dns:
            return _DNS_ROUTE if port == 53 else _REFUSED
        if dst[:8] == _PREFIX6 or dst == ALL_NODES6 or dst == IPV6_ROUTER_LINK_LOCAL:
            return _REFUSED if self.disable_host_loopback else Route(FORWARD, LOOPBACK6, port)
        if dst[0] == 0xFE and dst[1] & 0xC0 == 0x80:
            return _REFUSED_ADDRESS
        if dst[0] == 0xFF:
            return _REFUSED
        return Route(FORWARD, dst, port)

    def forward_source(self, peer: bytes, guest_addr: bytes | None = None) -> bytes:
        """The source the guest sees for a port-forward client at ``peer``
        when the forward targets ``guest_addr`` (its length is the family;
        None: IPv4).  Compat spec §4.6: the real address, except loopback and
        unspecified peers — and peers that would look like the guest's own
        network — which appear as the gateway.  Across families (a
        dual-stack or IPv6 listener forwarding to an IPv4 guest address, or
        the reverse):

        * IPv4 target: an IPv4 peer (also IPv4-mapped, from a dual-stack
          listener) follows the IPv4 rule; an IPv6 peer cannot be written
          in 32 bits and appears as the gateway N+2;
        * IPv6 target: an IPv6 peer follows the IPv6 rule (::1, ::, fd00::/64
          and link-local peers appear as fd00::2); an IPv4 peer appears as
          fd00::2 if it is loopback/unspecified/in N, otherwise embedded in
          the RFC 6052 well-known prefix, 64:ff9b::a.b.c.d, so the guest
          still sees who it is (an IPv4-mapped source would be dropped by
          the guest's TCP: RFC 4291 §2.5.5.2 keeps those off the wire)."""
        v4 = v4_of(peer)
        if guest_addr is None or len(guest_addr) == 4:
            if v4 is None:
                return self.plan.gateway
            if v4[0] == 127 or v4 == b"\0\0\0\0" or self.plan.contains(v4):
                return self.plan.gateway
            return v4
        if v4 is not None:
            if v4[0] == 127 or v4 == b"\0\0\0\0" or self.plan.contains(v4):
                return IPV6_GATEWAY
            return NAT64_PREFIX + v4
        if peer == LOOPBACK6 or peer == bytes(16) or peer[:8] == _PREFIX6 or (peer[0] == 0xFE and peer[1] & 0xC0 == 0x80):
            return IPV6_GATEWAY
        return peer

    def guest_view_of(self, addr: bytes) -> bytes:
        """The address the guest sees for a host address (the reverse of
        :meth:`route`): host loopback is the gateway."""
        if addr == LOOPBACK4:
            return self.plan.gateway
        if addr == LOOPBACK6:
            return IPV6_GATEWAY
        return addr
