"""ICMP toward the guest: echo for the stack's own addresses, errors for refused flows.

Compat spec §4.1: an echo request to the gateway (N+2) or the DNS address
(N+3) is answered by the stack itself with TTL 255 — also with
``--disable-host-loopback`` and ``--disable-dns``.  Echo to any other
address is relayed through host ICMP sockets by the ping NAT (when enabled).

Errors toward the guest (destination unreachable when a host connect fails
or a destination is refused) are built here from the offending datagram,
under RFC 1122 §3.2.2's "never about" rules (icmpv4.may_send_error).

Drops: the wire module's ``icmpv4.*`` names, plus ``icmpv4.no_handler``
(echo to an outside address with no ping NAT), ``icmpv4.ignored`` (replies
and errors from the guest: nothing of ours asked for them).
"""

from __future__ import annotations

from . import actions as act
from .nat import PROTO_ICMP, PROTO_ICMPV6, FlowKey, FlowTable
from .wire import Malformed, icmpv4, icmpv6, ipv4

OWN_ECHO_TTL = 255
ECHO_IDLE_TIMEOUT_S = 60.0


class IcmpLayer:
    __slots__ = ("stack", "echo_relay")

    def __init__(self, stack) -> None:
        self.stack = stack
        self.echo_relay = None  # callable(ip_view, echo, now) for outside destinations

    def from_guest(self, ip: ipv4.Ipv4View, payload, now: float, csum_ok: bool) -> None:
        stack = self.stack
        try:
            view = icmpv4.IcmpView.check(payload)
        except Malformed as err:
            stack.counters.bump(err.counter)
            return
        if view.type != icmpv4.ECHO_REQUEST:
            stack.counters.bump("icmpv4.ignored")
            return
        echo = icmpv4.IcmpEcho.parse(view)
        dst = ip.dst
        if stack.plan.mac_of(dst) is not None:
            reply = echo.reply()
            body = bytearray(reply.buffer_len)
            reply.emit(body)
            stack.send_ip(dst, ip.src, ipv4.PROTO_ICMP, bytes(body), ttl=OWN_ECHO_TTL)
            return
        if self.echo_relay is None:
            stack.counters.bump("icmpv4.no_handler")
            return
        self.echo_relay(ip, echo, now)

    def time_exceeded_reassembly(self, first_fragment: bytes) -> None:
        """RFC 792 / RFC 1122 §3.3.2: reassembly timed out (code 1), sent only
        when the first fragment arrived."""
        try:
            datagram = ipv4.Ipv4View.check_quoted(memoryview(first_fragment))
        except Malformed:
            return
        if not icmpv4.may_send_error(datagram):
            return
        err = icmpv4.IcmpError.time_exceeded(icmpv4.TIME_EXCEEDED_REASSEMBLY, datagram.buf)
        body = bytearray(err.buffer_len)
        err.emit(body)
        self.stack.send_ip(datagram.dst, datagram.src, ipv4.PROTO_ICMP, bytes(body))

    def unreachable_quote(self, src: bytes, dst: bytes, code: int, quote: bytes) -> None:
        """Destination unreachable from ``src`` to the guest at ``dst`` quoting
        ``quote`` (the guest's datagram, or its IP header and 8 bytes
        reconstructed by the caller), under the same "never about" rules."""
        if not icmpv4.may_send_error(ipv4.Ipv4View.check_quoted(memoryview(quote))):
            self.stack.counters.bump("icmpv4.error_suppressed")
            return
        err = icmpv4.IcmpError.dest_unreachable(code, quote)
        body = bytearray(err.buffer_len)
        err.emit(body)
        self.stack.send_ip(src, dst, ipv4.PROTO_ICMP, bytes(body))

    def unreachable(self, datagram: ipv4.Ipv4View, code: int, src: bytes | None = None) -> None:
        """Destination unreachable about ``datagram`` (from the guest), from ``src``
        (default: the datagram's destination, as a router at that address would)."""
        if not icmpv4.may_send_error(datagram):
            self.stack.counters.bump("icmpv4.error_suppressed")
            return
        err = icmpv4.IcmpError.dest_unreachable(code, datagram.buf)
        body = bytearray(err.buffer_len)
        err.emit(body)
        self.stack.send_ip(src or datagram.dst, datagram.src, ipv4.PROTO_ICMP, bytes(body))


class EchoNatFlow:
    __slots__ = ("guest_addr", "ident", "remote")

    def __init__(self, guest_addr: bytes, ident: int, remote: bytes):
        self.guest_addr = guest_addr
        self.ident = ident
        self.remote = remote  # the destination as the guest sees it (replies come from it)


class EchoNat:
    """Echo requests to outside addresses, relayed through host ICMP sockets.

    One flow — one unprivileged ICMP (IPv4) or ICMPv6 (IPv6) datagram
    socket on the host — per guest (address, echo identifier, destination).
    The host kernel picks its own identifier; replies are matched by flow
    and carry the guest's identifier and the sequence number back.  Idle
    flows expire after ECHO_IDLE_TIMEOUT_S.  The family's layer (IcmpLayer
    here, netstack/icmpv6.py for IPv6) decides which destinations are
    relayed and where to (``host``: an IPv6 destination in fd00::/64 is the
    host's ::1, as for TCP and UDP); replies are shown as coming from the
    destination the guest pinged.  When the host forbids ICMP sockets
    (``net.ipv4.ping_group_range``, which governs ICMPv6 ping sockets too)
    the edge says so once at start and the stack is built with the relay off
    for that family: requests are dropped and counted (``icmpv4.no_handler``,
    ``icmpv6.no_handler``) — never answered with fake replies.
    """

    __slots__ = ("stack", "flows", "link")

    def __init__(self, stack, flows: FlowTable, link: int = 0):
        self.stack = stack
        self.flows = flows
        self.link = link

    def relay(self, ip: ipv4.Ipv4View, echo: icmpv4.IcmpEcho, now: float) -> None:
        """An IPv4 echo request from the guest to an outside address."""
        dst = ip.dst
        if dst[0] >= 224 or dst[0] == 0 or dst[0] == 127:
            self.stack.counters.bump("icmpv4.echo_not_unicast")
            return
        self.relay_echo(ip.src, echo.ident, dst, dst, echo.seq, echo.data, now)

    def relay_echo(self, guest: bytes, ident: int, dst: bytes, host: bytes, seq: int, data: bytes, now: float) -> None:
        """Send the guest's echo (``guest`` → ``dst``) from the host to ``host``."""
        flows = self.flows
        proto = PROTO_ICMP if len(dst) == 4 else PROTO_ICMPV6
        key = FlowKey(self.link, proto, guest, ident, dst, 0)
        flow, created, victim = flows.open_idle_flow(
            key, now, idle_timeout=ECHO_IDLE_TIMEOUT_S, endpoint=EchoNatFlow(guest, ident, dst), host_addr=host
        )
        if victim is not None:
            self.stack.emit(act.ClosePing(victim.id))
        if flow is None:
            self.stack.counters.bump("icmpv4.table_full" if proto == PROTO_ICMP else "icmpv6.table_full")
            return
        if created:
            self.stack.emit(act.OpenPing(flow.id, host))
        self.stack.emit(act.SendPing(flow.id, flow.host_addr, seq, data))

    def replied(self, flow_id: int, addr: bytes, seq: int, payload: bytes, now: float) -> None:
        flow = self.flows.get(flow_id)
        if flow is None:
            self.stack.counters.bump("icmpv4.no_flow" if len(addr) == 4 else "icmpv6.no_flow")
            return
        self.flows.touch(flow, now)
        ep = flow.endpoint
        if len(ep.remote) == 4:
            reply = icmpv4.IcmpEcho(icmpv4.ECHO_REPLY, ep.ident, seq, payload)
            body = bytearray(reply.buffer_len)
            reply.emit(body)
            self.stack.send_ip(ep.remote, ep.guest_addr, ipv4.PROTO_ICMP, bytes(body))
            return
        reply6 = icmpv6.Icmpv6Echo(icmpv6.ECHO_REPLY, ep.ident, seq, payload)
        body = bytearray(reply6.buffer_len)
        reply6.emit(body, 0, ep.remote, ep.guest_addr)
        self.stack.send_ip(ep.remote, ep.guest_addr, PROTO_ICMPV6, bytes(body))

    def poll(self, now: float) -> None:
        for proto in (PROTO_ICMP, PROTO_ICMPV6):
            for flow in self.flows.expire(proto, now):
                self.stack.emit(act.ClosePing(flow.id))

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.flows.next_deadline(p) for p in (PROTO_ICMP, PROTO_ICMPV6)) if d is not None]
        return min(deadlines) if deadlines else None
