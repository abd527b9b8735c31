"""ICMPv6 toward the guest: echo, Neighbour Discovery hand-off, and errors (RFC 4443).

* Echo request (§4.1) to one of the stack's own addresses — fd00::2, fd00::3,
  fe80::2 — is answered here with hop limit 255, as IPv4 echo to the gateway
  and DNS addresses is (compat spec §4.1), also with
  ``--disable-host-loopback`` and ``--disable-dns``.  Echo to other
  addresses goes through the destination policy like TCP and UDP
  (netstack/policy.py): a forwarded destination is relayed through host
  ICMPv6 datagram sockets by the ping NAT (netstack/icmp.py EchoNat; fd00::/64
  addresses are the host's ::1), a refused one is answered with destination
  unreachable.  slirp4netns drops echo to the outside; slirpnet relays it.
* RS/RA/NS/NA go to the router (netstack/ndp.py).
* Errors toward the guest (:meth:`Icmpv6Layer.unreachable` and friends)
  quote the invoking packet from its IPv6 header on, as much as fits in
  the minimum MTU (§2.4 c, 1232 bytes), under the §2.4 (e) "never about"
  rules (an error, a Redirect, a multicast destination, an unspecified or
  multicast source).  Source address (§2.2): the router's — fd00::2, or
  fe80::2 when the guest wrote from a link-local address — for "no route"
  (code 0) and "address unreachable" (code 3), which a router reports; the
  destination itself for "port unreachable" (code 4), which the destination
  reports; the reassembling destination for time exceeded (code 1,
  RFC 8200 §4.5).

Not done: rate limiting of errors (§2.4 f; each error answers one guest
datagram, so the guest paces them), Packet Too Big (the stack terminates
every flow: nothing it receives is forwarded on a smaller link),
Parameter Problem for bad extension headers (netstack/wire/ipv6.py drops
those silently, counted).

Drops: the wire module's ``icmpv6.*`` names, plus ``icmpv6.ignored``
(echo replies, errors, MLD and others from the guest: nothing of ours asked
for them), ``icmpv6.echo_not_unicast``, ``icmpv6.no_handler`` (echo to an
outside address with no ping NAT), ``icmpv6.error_suppressed``.
"""

from __future__ import annotations

from .addressing import IPV6_GATEWAY, IPV6_ROUTER_LINK_LOCAL
from .policy import FORWARD, REFUSE
from .wire import Malformed, icmpv6
from .wire.ipv6 import NH_ICMPV6, Ipv6View, is_link_local, is_multicast

OWN_ECHO_HOP_LIMIT = 255
_NDP_TYPES = frozenset(
    (icmpv6.ROUTER_SOLICITATION, icmpv6.ROUTER_ADVERTISEMENT, icmpv6.NEIGHBOR_SOLICITATION, icmpv6.NEIGHBOR_ADVERTISEMENT)
)


def router_source_for(guest: bytes) -> bytes:
    """The stack's address an error from "the router" to ``guest`` comes from."""
    return IPV6_ROUTER_LINK_LOCAL if is_link_local(guest) else IPV6_GATEWAY


class Icmpv6Layer:
    __slots__ = ("stack", "ndp", "echo_relay")

    def __init__(self, stack, ndp) -> None:
        self.stack = stack
        self.ndp = ndp
        self.echo_relay = None  # EchoNat.relay_echo, when the ping NAT is on

    def from_guest(self, ip: Ipv6View, payload, now: float, csum_ok: bool, eth_src: bytes = b"") -> None:
        stack = self.stack
        try:
            view = icmpv6.Icmpv6View.check(payload) if csum_ok else icmpv6.Icmpv6View.check(payload, ip.src, ip.dst)
        except Malformed as err:
            stack.counters.bump(err.counter)
            return
        t = view.type
        if t in _NDP_TYPES:
            self.ndp.from_guest(ip, view, eth_src, now)
            return
        if t != icmpv6.ECHO_REQUEST:
            stack.counters.bump("icmpv6.ignored")
            return
        echo = icmpv6.Icmpv6Echo.parse(view)
        src, dst = ip.src, ip.dst
        if stack.plan.mac_of(dst) is not None:
            reply = echo.reply()
            body = bytearray(reply.buffer_len)
            reply.emit(body, 0, dst, src)
            stack.send_ip(dst, src, NH_ICMPV6, bytes(body), ttl=OWN_ECHO_HOP_LIMIT)
            return
        if is_multicast(dst) or is_multicast(src) or src == bytes(16):
            stack.counters.bump("icmpv6.echo_not_unicast")
            return
        route = stack.policy.route(dst, 0)
        if route.kind is REFUSE:
            stack.counters.bump("icmpv6.echo_refused")
            self.unreachable(ip, route.icmp_code)
            return
        if route.kind is not FORWARD or self.echo_relay is None:
            stack.counters.bump("icmpv6.no_handler")
            return
        self.echo_relay(src, echo.ident, dst, route.addr, echo.seq, echo.data, now)

    # -- errors toward the guest ------------------------------------------------

    def unreachable(self, packet: Ipv6View, code: int) -> None:
        """Destination unreachable about the guest's ``packet``."""
        if not icmpv6.may_send_error(packet, icmpv6.DEST_UNREACHABLE, code):
            self.stack.counters.bump("icmpv6.error_suppressed")
            return
        src = packet.dst if code == icmpv6.UNREACH_PORT else router_source_for(packet.src)
        self._send_error(icmpv6.Icmpv6Error.dest_unreachable(code, packet.buf), src, packet.src)

    def unreachable_quote(self, remote: bytes, guest: bytes, code: int, quote: bytes) -> None:
        """Destination unreachable to ``guest`` about its datagram to ``remote``,
        quoting ``quote`` (the IPv6 header and what follows, rebuilt by the caller)."""
        src = remote if code == icmpv6.UNREACH_PORT else router_source_for(guest)
        self._send_error(icmpv6.Icmpv6Error.dest_unreachable(code, quote), src, guest)

    def time_exceeded_reassembly(self, first_fragment: bytes) -> None:
        """RFC 8200 §4.5: reassembly timed out and the first fragment had come."""
        try:
            packet = Ipv6View.check_quoted(memoryview(first_fragment))
        except Malformed:
            return
        if not icmpv6.may_send_error(packet, icmpv6.TIME_EXCEEDED, icmpv6.TIME_EXCEEDED_REASSEMBLY):
            self.stack.counters.bump("icmpv6.error_suppressed")
            return
        err = icmpv6.Icmpv6Error.time_exceeded(icmpv6.TIME_EXCEEDED_REASSEMBLY, packet.buf)
        self._send_error(err, packet.dst, packet.src)

    def _send_error(self, err: icmpv6.Icmpv6Error, src: bytes, dst: bytes) -> None:
        body = bytearray(err.buffer_len)
        err.emit(body, 0, src, dst)
        self.stack.counters.bump("icmpv6.errors_sent")
        self.stack.send_ip(src, dst, NH_ICMPV6, bytes(body))
