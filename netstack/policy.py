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
IPv6 (prefix fd00::/64)
  * fd00::3 port 53: the DNS forwarder; any other fd00::3 port: refused.
  * any other address in fd00::/64 (and the all-nodes multicast ff02::1):
    the host's ::1, or refused with ``--disable-host-loopback``.
  * anything else: itself.

Returns a :class:`Route`: ``kind`` is FORWARD (to ``addr``:``port``), DNS, or
REFUSE (``icmp_code`` says which ICMP unreachable the guest gets).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .addressing import IPV6_DNS, IPV6_GATEWAY, IPV6_PREFIX, AddressPlan

FORWARD = "forward"
DNS = "dns"
REFUSE = "refuse"

UNREACH_NET = 0  # ICMP type 3 code 0 (and the ICMPv6 "no route" code 0)

LOOPBACK4 = bytes([127, 0, 0, 1])
LOOPBACK6 = bytes(15) + b"\x01"
LIMITED_BROADCAST = b"\xff\xff\xff\xff"
ALL_NODES6 = ipaddress.IPv6Address("ff02::1").packed
_PREFIX6 = IPV6_PREFIX.network_address.packed[:8]


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    addr: bytes = b""
    port: int = 0
    icmp_code: int = UNREACH_NET


_DNS_ROUTE = Route(DNS)
_REFUSED = Route(REFUSE)


class Policy:
    __slots__ = ("plan", "disable_host_loopback", "disable_dns")

    def __init__(self, plan: AddressPlan, disable_host_loopback: bool = False, disable_dns: bool = False):
        self.plan = plan
        self.disable_host_loopback = disable_host_loopback
        self.disable_dns = disable_dns

    def route(self, dst: bytes, port: int) -> Route:
        if len(dst) == 4:
            plan = self.plan
            if dst == plan.dns and not self.disable_dns:
                return _DNS_ROUTE if port == 53 else _REFUSED
            if dst == plan.gateway or dst == LIMITED_BROADCAST:
                return _REFUSED if self.disable_host_loopback else Route(FORWARD, LOOPBACK4, port)
            return Route(FORWARD, dst, port)
        if dst == IPV6_DNS and not self.disable_dns:
            return _DNS_ROUTE if port == 53 else _REFUSED
        if dst[:8] == _PREFIX6 or dst == ALL_NODES6:
            return _REFUSED if self.disable_host_loopback else Route(FORWARD, LOOPBACK6, port)
        return Route(FORWARD, dst, port)

    def forward_source(self, peer: bytes) -> bytes:
        """The source the guest sees for a port-forward client at ``peer``
        (compat spec §4.6): the real address, except loopback and unspecified
        peers — and peers that would look like the guest's own network —
        which appear as the gateway."""
        if len(peer) == 4:
            if peer[0] == 127 or peer == b"\0\0\0\0" or self.plan.contains(peer):
                return self.plan.gateway
            return peer
        if peer == LOOPBACK6 or peer == bytes(16) or peer[:8] == _PREFIX6:
            return IPV6_GATEWAY
        if peer[:12] == b"\0" * 10 + b"\xff\xff":  # v4-mapped from a dual-stack listener
            return self.forward_source(peer[12:])
        return peer

    def guest_view_of(self, addr: bytes) -> bytes:
        """The address the guest sees for a host address (the reverse of
        :meth:`route`): host loopback is the gateway."""
        if addr == LOOPBACK4:
            return self.plan.gateway
        if addr == LOOPBACK6:
            return IPV6_GATEWAY
        return addr
