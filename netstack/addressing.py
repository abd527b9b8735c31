"""The address plan of one guest network, derived from ``--cidr`` as slirp4netns does.

| item                         | IPv4 (N = network)  | IPv6              |
|------------------------------|---------------------|-------------------|
| gateway ("host", vhost)      | N+2                 | fd00::2           |
| DNS forwarder (vnameserver)  | N+3                 | fd00::3           |
| DHCP pool                    | N+15 .. N+30        | —                 |
| recommended guest address    | N+100               | SLAAC in fd00::/64|
| router link-local (RA source)| —                   | fe80::2           |
| MAC of gateway / DNS         | 52:55 + IPv4 bytes  | same              |

(compat spec §2).  The IPv6 addresses share the MACs of their IPv4
counterparts: fd00::2 and fe80::2 answer neighbour solicitations with the
gateway's MAC, fd00::3 with the DNS address's, so a frame from any of the
stack's addresses carries the same MAC whatever the family.  Addresses are kept as packed bytes (4 or 16) like
everywhere in netstack; ``ipaddress`` objects are only used to build the plan.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_CIDR = "10.0.2.0/24"
GATEWAY_OFFSET = 2
DNS_OFFSET = 3
DHCP_FIRST_OFFSET = 15
DHCP_LEASES = 16
GUEST_OFFSET = 100

IPV6_PREFIX = ipaddress.IPv6Network("fd00::/64")
IPV6_GATEWAY = ipaddress.IPv6Address("fd00::2").packed
IPV6_DNS = ipaddress.IPv6Address("fd00::3").packed
IPV6_ROUTER_LINK_LOCAL = ipaddress.IPv6Address("fe80::2").packed


def virtual_mac(ipv4: bytes) -> bytes:
    """52:55:a:b:c:d — the MAC the stack uses for one of its own IPv4 addresses."""
    return b"\x52\x55" + ipv4


@dataclass(frozen=True, slots=True)
class AddressPlan:
    network: ipaddress.IPv4Network
    gateway: bytes
    dns: bytes
    guest: bytes
    dhcp_first: bytes
    dhcp_last: bytes
    gateway_mac: bytes
    dns_mac: bytes

    @classmethod
    def from_network(cls, network: ipaddress.IPv4Network) -> AddressPlan:
        base = network.network_address
        gateway = (base + GATEWAY_OFFSET).packed
        dns = (base + DNS_OFFSET).packed
        return cls(
            network=network,
            gateway=gateway,
            dns=dns,
            guest=(base + GUEST_OFFSET).packed,
            dhcp_first=(base + DHCP_FIRST_OFFSET).packed,
            dhcp_last=(base + DHCP_FIRST_OFFSET + DHCP_LEASES - 1).packed,
            gateway_mac=virtual_mac(gateway),
            dns_mac=virtual_mac(dns),
        )

    @property
    def netmask(self) -> bytes:
        return self.network.netmask.packed

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def contains(self, addr: bytes) -> bool:
        return len(addr) == 4 and ipaddress.IPv4Address(addr) in self.network

    def mac_of(self, addr: bytes) -> bytes | None:
        """The MAC the stack answers ARP (or NDP) with for ``addr``, or None if not ours."""
        if addr == self.gateway or addr == IPV6_GATEWAY or addr == IPV6_ROUTER_LINK_LOCAL:
            return self.gateway_mac
        if addr == self.dns or addr == IPV6_DNS:
            return self.dns_mac
        return None
