"""The DNS forwarder at N+3 (and fd00::3): UDP queries relayed to the host's resolvers.

Model (compat spec §4.2, issue "Outbound connectivity" item 5): a query the
guest sends to the DNS address, port 53, is relayed unchanged to the first
upstream resolver — the ``nameserver`` lines of the host's resolv.conf, which
the edge reads and re-reads when the file changes (:meth:`set_resolvers`);
a loopback stub such as 127.0.0.53 is used as is, even with
``--disable-host-loopback``.  The answer goes back to the guest from the DNS
address, port 53.  If no answer comes within DNS_TRY_TIMEOUT_S, or the
upstream reports an error (ICMP port unreachable: nothing listens), the same
query goes to the next resolver, in order, until all were tried (failover).

Each (guest address, guest port, resolver) pair is its own UDP flow — its own
host socket of the resolver's family — so IPv4 and IPv6 upstreams mix
freely; DNS flows idle out after DNS_IDLE_TIMEOUT_S.  Outstanding queries are
matched by (guest address, guest port, DNS id), bounded by MAX_PENDING
(the oldest is forgotten first).  The forwarder does not parse or cache DNS
messages: it reads only the 2-byte id.

TCP on port 53 is not handled here: the TCP layer connects to the first
resolver that has not just failed a UDP query (:meth:`resolver_for_tcp`),
so TCP follows the same order and the same failover.

Drops: ``dns.short_query`` (< 12 bytes, no DNS header), ``dns.no_resolver``,
``dns.unmatched_answer``, ``dns.gave_up`` (every resolver failed or timed
out), ``dns.pending_overflow``.
"""

from __future__ import annotations

from collections import OrderedDict

from . import actions as act
from .nat import PROTO_UDP, FlowKey, FlowTable

DNS_PORT = 53
DNS_TRY_TIMEOUT_S = 2.0
DNS_IDLE_TIMEOUT_S = 10.0
RESOLVER_PENALTY_S = 30.0  # a resolver that failed is skipped by TCP this long
MAX_PENDING = 1024
MIN_DNS_LEN = 12


class DnsUpstreamFlow:
    """Flow.endpoint of a guest-port → resolver flow."""

    __slots__ = ("guest_addr", "guest_port", "resolver")

    def __init__(self, guest_addr: bytes, guest_port: int, resolver: bytes):
        self.guest_addr = guest_addr
        self.guest_port = guest_port
        self.resolver = resolver


class _Query:
    __slots__ = ("guest_addr", "guest_port", "dns_addr", "data", "tried", "deadline")

    def __init__(self, guest_addr, guest_port, dns_addr, data, deadline):
        self.guest_addr = guest_addr
        self.guest_port = guest_port
        self.dns_addr = dns_addr
        self.data = data
        self.tried = 0
        self.deadline = deadline


class DnsForwarder:
    def __init__(self, stack, flows: FlowTable, link: int = 0):
        self.stack = stack
        self.flows = flows
        self.link = link
        self.resolvers: list[bytes] = []
        self._pending: OrderedDict[tuple, _Query] = OrderedDict()
        self._failed_until: dict[bytes, float] = {}

    def set_resolvers(self, resolvers: list[bytes]) -> None:
        self.resolvers = list(resolvers)
        self._failed_until.clear()

    def resolver_for_tcp(self, now: float) -> bytes | None:
        """The upstream for a TCP query at ``now``: the first that has not failed lately."""
        for resolver in self.resolvers:
            if self._failed_until.get(resolver, 0.0) <= now:
                return resolver
        return self.resolvers[0] if self.resolvers else None

    def _penalize(self, resolver: bytes, now: float) -> None:
        self._failed_until[resolver] = now + RESOLVER_PENALTY_S

    # -- queries --------------------------------------------------------------

    def query_from_guest(self, guest_addr: bytes, guest_port: int, dns_addr: bytes, data: bytes, now: float):
        counters = self.stack.counters
        if len(data) < MIN_DNS_LEN:
            counters.bump("dns.short_query")
            return
        if not self.resolvers:
            counters.bump("dns.no_resolver")
            return
        key = (guest_addr, guest_port, data[:2])
        query = self._pending.pop(key, None)
        if query is None:
            query = _Query(guest_addr, guest_port, dns_addr, data, 0.0)
        else:
            query.data = data  # the guest retried: start over from the first resolver
            query.tried = 0
        self._pending[key] = query
        if len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
            counters.bump("dns.pending_overflow")
        self._send(query, now)

    def _send(self, query: _Query, now: float) -> None:
        """Send ``query`` to the resolver at index ``query.tried``."""
        resolver = self.resolvers[query.tried % len(self.resolvers)]
        flow = self._flow_for(query.guest_addr, query.guest_port, resolver, now)
        query.deadline = now + DNS_TRY_TIMEOUT_S
        if flow is not None:
            self.stack.emit(act.SendUdp(flow.id, resolver, DNS_PORT, query.data))

    def _flow_for(self, guest_addr: bytes, guest_port: int, resolver: bytes, now: float):
        key = FlowKey(self.link, PROTO_UDP, guest_addr, guest_port, resolver, DNS_PORT)
        flow, created, victim = self.flows.open_idle_flow(
            key, now, idle_timeout=DNS_IDLE_TIMEOUT_S, endpoint=DnsUpstreamFlow(guest_addr, guest_port, resolver),
            host_addr=resolver, host_port=DNS_PORT,
        )  # fmt: skip
        if victim is not None:
            self.stack.emit(act.CloseUdp(victim.id))
        if flow is None:
            self.stack.counters.bump("dns.table_full")
        elif created:
            self.stack.emit(act.OpenUdp(flow.id, resolver))
        return flow

    # -- answers and failures -------------------------------------------------

    def answer_from_upstream(self, flow, addr: bytes, port: int, data: bytes, now: float) -> None:
        endpoint = flow.endpoint
        self.flows.touch(flow, now)
        query = self._pending.pop((endpoint.guest_addr, endpoint.guest_port, data[:2]), None)
        if query is None:
            self.stack.counters.bump("dns.unmatched_answer")
            return
        self.stack.udp.send_to_guest(query.dns_addr, DNS_PORT, query.guest_addr, query.guest_port, data)

    def upstream_failed(self, flow, err: int, now: float) -> None:
        """The resolver of ``flow`` refused (e.g. nothing listens): fail over
        every query of that guest port that was waiting on it."""
        endpoint = flow.endpoint
        self._penalize(endpoint.resolver, now)
        for key, query in list(self._pending.items()):
            if (query.guest_addr, query.guest_port) != (endpoint.guest_addr, endpoint.guest_port):
                continue
            if self.resolvers and self.resolvers[query.tried % len(self.resolvers)] == endpoint.resolver:
                self._next(key, query, now)

    def _next(self, key: tuple, query: _Query, now: float) -> None:
        if self.resolvers:
            self._penalize(self.resolvers[query.tried % len(self.resolvers)], now)
        query.tried += 1
        if query.tried >= len(self.resolvers):
            del self._pending[key]
            self.stack.counters.bump("dns.gave_up")
            return
        self._send(query, now)

    # -- timers ---------------------------------------------------------------

    def poll(self, now: float) -> None:
        for key, query in list(self._pending.items()):
            if query.deadline <= now:
                self._next(key, query, now)

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return min(q.deadline for q in self._pending.values())
