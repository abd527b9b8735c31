"""UDP from the guest: DHCP, the DNS forwarder, and NAT onto host sockets.

Dispatch of a guest datagram, after the length and checksum checks of
netstack/wire/udp.py:

1. IPv4 destination port 67 of the gateway or of 255.255.255.255 → the DHCP
   server (netstack/dhcp.py), as libslirp's udp_input (port 67 elsewhere is
   ordinary NAT); IPv6 destination port 547 at ff02::1:2 or one of the
   stack's own addresses → the DHCPv6 server (netstack/dhcpv6.py);
2. the destination policy (netstack/policy.py): DNS → the forwarder
   (netstack/dns.py); REFUSE → ICMP net unreachable; FORWARD → NAT.

NAT (compat spec §4.2): one host socket per guest source address and port,
whatever the destinations — the flow key's remote part is empty — so a guest
talking from one port to many servers uses one host port, and replies from
any of them come back to the guest port that sent.  A reply's source is
shown to the guest as the policy's reverse mapping (host 127.0.0.1 appears as
the gateway).  Idle flows expire after UDP_IDLE_TIMEOUT_S (240 s, like
libslirp); when the table is full the least recently used idle flow is
evicted (its socket closed).  An ICMP error the host socket reports for a
datagram (IP_RECVERR) comes back as UdpFailed and is turned into the
matching ICMP unreachable toward the guest (port unreachable for
ECONNREFUSED), quoting a reconstruction of the guest's datagram header.  IPv6 is the same with ICMPv6 (RFC 4443
§3.1): port unreachable (code 4) for ECONNREFUSED, address unreachable
(code 3) for EHOSTUNREACH, no route (code 0) otherwise and for refused
destinations (code 3 for foreign link-local ones).

Datagrams toward the guest larger than the MTU are sent as IP fragments
(IPv4, or IPv6 Fragment headers) with a complete UDP checksum; others use
checksum offload.

Drops: ``udp.*`` from the wire module, ``udp.multicast`` (we do not relay
multicast), ``udp.port_zero``, ``udp.no_flow`` (an event for a flow that has
gone), ``udp.evicted``.
"""

from __future__ import annotations

import errno
import struct

from . import actions as act
from .frames import udp_frame
from .nat import PROTO_UDP, FlowKey, FlowTable
from .policy import DNS, REFUSE, Policy
from .wire import Malformed, icmpv4, icmpv6
from .wire import udp as wire_udp
from .wire.checksum import checksum, pseudo_sum_v4, pseudo_sum_v6

UDP_IDLE_TIMEOUT_S = 240.0
DHCP_SERVER_PORT = 67
BROADCAST = b"\xff\xff\xff\xff"
DHCPV6_SERVER_PORT = 547
ALL_DHCP_AGENTS = b"\xff\x02" + bytes(11) + b"\x01\x00\x02"  # ff02::1:2

_UDP = struct.Struct("!HHHH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


class UdpNatFlow:
    """The per-flow object of a NAT flow (Flow.endpoint)."""

    __slots__ = ("guest_addr", "guest_port")

    def __init__(self, guest_addr: bytes, guest_port: int):
        self.guest_addr = guest_addr
        self.guest_port = guest_port


class UdpForwardFlow:
    """Flow.endpoint of a port-forward session: a host peer's datagrams to a
    forwarded port, and the guest's replies that go back through it."""

    __slots__ = ("guest_addr", "guest_port")

    def __init__(self, guest_addr: bytes, guest_port: int):
        self.guest_addr = guest_addr
        self.guest_port = guest_port


class UdpLayer:
    __slots__ = ("stack", "flows", "policy", "dns", "dhcp", "dhcpv6", "link")

    def __init__(self, stack, flows: FlowTable, policy: Policy, dns=None, dhcp=None, link: int = 0, dhcpv6=None):
        self.stack = stack
        self.flows = flows
        self.policy = policy
        self.dns = dns
        self.dhcp = dhcp
        self.dhcpv6 = dhcpv6
        self.link = link

    # -- from the guest ---------------------------------------------------------

    def from_guest(self, ip, payload, now: float, csum_ok: bool) -> None:
        stack = self.stack
        src, dst = ip.src, ip.dst
        try:
            view = wire_udp.UdpView.check(payload) if csum_ok else wire_udp.UdpView.check(payload, src, dst)
        except Malformed as err:
            stack.counters.bump(err.counter)
            return
        dport = view.dst_port
        if len(dst) == 4:
            if dport == DHCP_SERVER_PORT and self.dhcp is not None and (dst == stack.plan.gateway or dst == BROADCAST):
                self.dhcp.from_guest(ip, view, now)
                return
        elif dport == DHCPV6_SERVER_PORT and self.dhcpv6 is not None:
            if dst == ALL_DHCP_AGENTS or stack.plan.mac_of(dst) is not None:
                self.dhcpv6.from_guest(ip, view, now)
                return
        sport = view.src_port
        if sport == 0 or dport == 0:
            stack.counters.bump("udp.port_zero")
            return
        session = self.flows.lookup(FlowKey(self.link, PROTO_UDP, src, sport, dst, dport))
        # A reply within a port-forward session (a DNS forwarder flow has a key
        # of the same shape, guest port → resolver:53, but is not one).
        if session is not None and isinstance(session.endpoint, UdpForwardFlow):
            self.flows.touch(session, now)
            stack.emit(act.ReplyUdp(session.id, bytes(view.payload)))
            return
        if (len(dst) == 4 and dst[0] >= 224 and dst != b"\xff\xff\xff\xff") or (len(dst) == 16 and dst[0] == 0xFF):
            stack.counters.bump("udp.multicast")
            return
        route = self.policy.route(dst, dport)
        if route.kind is REFUSE:
            stack.counters.bump("udp.refused")
            stack.unreachable(ip, route.icmp_code)
            return
        if route.kind is DNS:  # the policy routes to DNS only when the forwarder exists
            self.dns.query_from_guest(src, sport, dst, bytes(view.payload), now)
            return
        flow = self._flow_for(src, sport, now)
        if flow is None:
            return
        stack.emit(act.SendUdp(flow.id, route.addr, route.port, bytes(view.payload)))

    def _flow_for(self, guest_addr: bytes, guest_port: int, now: float):
        key = FlowKey(self.link, PROTO_UDP, guest_addr, guest_port, b"", 0)
        flow, created, victim = self.flows.open_idle_flow(
            key, now, idle_timeout=UDP_IDLE_TIMEOUT_S, endpoint=UdpNatFlow(guest_addr, guest_port)
        )
        self._release(victim)
        if flow is None:
            self.stack.counters.bump("udp.table_full")
        elif created:
            self.stack.emit(act.OpenUdp(flow.id, guest_addr))
        return flow

    def _release(self, victim) -> None:
        """Close the host side of a flow evicted to make room."""
        if victim is not None:
            self.stack.counters.bump("udp.evicted")
            self.stack.emit(act.CloseUdp(victim.id))

    # -- port forwards ---------------------------------------------------------

    def forward_from_host(self, guest_addr: bytes, guest_port: int, src: bytes, sport: int, data: bytes, now: float):
        """A datagram arrived on a UDP port forward from the host peer that the
        guest sees as ``src``:``sport``.  Returns the session flow id (the edge
        keeps the way back under it), or None if the table is full."""
        key = FlowKey(self.link, PROTO_UDP, guest_addr, guest_port, src, sport)
        flow, _, victim = self.flows.open_idle_flow(
            key, now, idle_timeout=UDP_IDLE_TIMEOUT_S, endpoint=UdpForwardFlow(guest_addr, guest_port)
        )
        self._release(victim)
        if flow is None:
            self.stack.counters.bump("udp.table_full")
            return None
        self.send_to_guest(src, sport, guest_addr, guest_port, data)
        return flow.id

    # -- from the host ----------------------------------------------------------

    def received(self, flow_id: int, addr: bytes, port: int, data: bytes, now: float) -> None:
        flow = self.flows.get(flow_id)
        if flow is None:
            self.stack.counters.bump("udp.no_flow")
            return
        endpoint = flow.endpoint
        if not isinstance(endpoint, UdpNatFlow):
            self.dns.answer_from_upstream(flow, addr, port, data, now)
            return
        self.flows.touch(flow, now)
        self.send_to_guest(self.policy.guest_view_of(addr), port, endpoint.guest_addr, endpoint.guest_port, data)

    def failed(self, flow_id: int, err: int, addr: bytes, port: int, now: float) -> None:
        flow = self.flows.get(flow_id)
        if flow is None:
            self.stack.counters.bump("udp.no_flow")
            return
        endpoint = flow.endpoint
        if not isinstance(endpoint, UdpNatFlow):
            self.dns.upstream_failed(flow, err, now)
            return
        remote = self.policy.guest_view_of(addr)
        if len(remote) == 4:
            code = {
                errno.ECONNREFUSED: icmpv4.UNREACH_PORT,
                errno.EHOSTUNREACH: icmpv4.UNREACH_HOST,
            }.get(err, icmpv4.UNREACH_NET)
            quote = _quote_v4(endpoint.guest_addr, remote, endpoint.guest_port, port)
            self.stack.icmp.unreachable_quote(remote, endpoint.guest_addr, code, quote)
        elif self.stack.icmpv6 is not None:
            code = {
                errno.ECONNREFUSED: icmpv6.UNREACH_PORT,
                errno.EHOSTUNREACH: icmpv6.UNREACH_ADDRESS,
            }.get(err, icmpv6.UNREACH_NO_ROUTE)
            quote = _quote_v6(endpoint.guest_addr, remote, endpoint.guest_port, port)
            self.stack.icmpv6.unreachable_quote(remote, endpoint.guest_addr, code, quote)

    def poll(self, now: float) -> None:
        for flow in self.flows.expire(PROTO_UDP, now):
            self.stack.emit(act.CloseUdp(flow.id))

    def next_deadline(self) -> float | None:
        return self.flows.next_deadline(PROTO_UDP)

    # -- toward the guest -----------------------------------------------------

    def send_to_guest(self, src: bytes, sport: int, dst: bytes, dport: int, data: bytes) -> None:
        """A datagram from ``src``:``sport`` to the guest at ``dst``:``dport``."""
        stack = self.stack
        ip_len = 20 if len(src) == 4 else 40
        if ip_len + 8 + len(data) <= stack.config.mtu:
            stack.send_built(dst, lambda mac, our: udp_frame(mac, our, src, dst, sport, dport, data), src)
            return
        # Too big for one frame: a complete checksum, then IP fragments.
        length = 8 + len(data)
        body = bytearray(length)
        _UDP.pack_into(body, 0, sport, dport, length, 0)
        body[8:] = data
        seed = pseudo_sum_v4(src, dst, PROTO_UDP, length) if len(src) == 4 else pseudo_sum_v6(src, dst, PROTO_UDP, length)
        csum = checksum(body, seed) or 0xFFFF
        struct.pack_into("!H", body, 6, csum)
        stack.send_ip(src, dst, PROTO_UDP, bytes(body))


def _quote_v4(guest: bytes, remote: bytes, sport: int, dport: int) -> bytes:
    """IP header + 8 bytes of the guest's datagram, reconstructed for an ICMP quote."""
    header = bytearray(28)
    _IPV4.pack_into(header, 0, 0x45, 0, 28, 0, 0, 64, PROTO_UDP, 0, guest, remote)
    struct.pack_into("!H", header, 10, checksum(header[:20]))
    _UDP.pack_into(header, 20, sport, dport, 8, 0)
    return bytes(header)


def _quote_v6(guest: bytes, remote: bytes, sport: int, dport: int) -> bytes:
    """IPv6 header + UDP header of the guest's datagram, reconstructed for an ICMPv6 quote."""
    header = bytearray(48)
    _IPV6.pack_into(header, 0, 0x60000000, 8, PROTO_UDP, 64, guest, remote)
    _UDP.pack_into(header, 40, sport, dport, 8, 0)
    return bytes(header)
