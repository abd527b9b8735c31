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

from .wire import Malformed, icmpv4, ipv4

OWN_ECHO_TTL = 255


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
