"""The DHCP server (RFC 2131) for guests that do not use ``--configure``.

Model (compat spec §4.1): leases come from a pool of 16 addresses starting at
N+15; the first client gets N+15.  Every reply carries the server identifier
(the gateway N+2), subnet mask, router (the gateway), DNS server (N+3, even
with ``--disable-dns``, as slirp4netns does) and a lease time of 86400 s.

* DISCOVER → OFFER of the client's current lease, else the address it asks
  for if free and in the pool, else the first free address;
* REQUEST → ACK if the requested (or, when renewing, ``ciaddr``) address is
  the client's lease or free in the pool; NAK otherwise, and for a REQUEST
  naming another server (the client chose someone else: the offer is dropped);
* RELEASE → the lease is freed; DECLINE → the address is marked unusable
  for the life of the stack (RFC 2131 §3.1 step 5);
* INFORM → ACK with options, no address (RFC 2131 §3.4).

Leases are keyed by client identifier (option 61) when present, else the MAC
(RFC 2131 §4.2).  A pool of 16 is bounded by construction; when it is full,
DISCOVERs go unanswered (``dhcp.pool_exhausted``).  Lease expiry is not
tracked: the pool is the guest's for the life of the stack.

Replies go to the client's MAC at the IPv4 broadcast address (255.255.255.255),
which every client accepts whether or not it set the broadcast flag and
whether or not its interface has an address yet (RFC 2131 §4.1 allows it).

Drops: ``dhcp.*`` from the wire module, ``dhcp.not_request`` (a BOOTREPLY from
the guest), ``dhcp.other_server``, ``dhcp.pool_exhausted``, ``dhcp.ignored``
(message types a server does not answer).
"""

from __future__ import annotations

import ipaddress

from .addressing import DHCP_LEASES, AddressPlan
from .frames import udp_frame
from .wire import Malformed, dhcp, ethernet

LEASE_TIME_S = 86400
BROADCAST = b"\xff\xff\xff\xff"


class DhcpServer:
    __slots__ = ("stack", "plan", "pool", "leases", "declined")

    def __init__(self, stack, plan: AddressPlan):
        self.stack = stack
        self.plan = plan
        first = ipaddress.IPv4Address(plan.dhcp_first)
        self.pool = [(first + i).packed for i in range(DHCP_LEASES)]
        self.leases: dict[bytes, bytes] = {}  # client key -> address
        self.declined: set[bytes] = set()

    def from_guest(self, ip, udp_view, now: float) -> None:
        counters = self.stack.counters
        try:
            msg = dhcp.DhcpMessage.parse(dhcp.DhcpView.check(udp_view.payload))
        except Malformed as err:
            counters.bump(err.counter)
            return
        if msg.op != dhcp.BOOTREQUEST:
            counters.bump("dhcp.not_request")
            return
        client = msg.client_id or msg.chaddr
        kind = msg.message_type
        if kind == dhcp.DISCOVER:
            addr = self._choose(client, msg.requested_ip)
            if addr is None:
                counters.bump("dhcp.pool_exhausted")
                return
            self._reply(msg, dhcp.OFFER, addr)
        elif kind == dhcp.REQUEST:
            if msg.server_id is not None and msg.server_id != self.plan.gateway:
                counters.bump("dhcp.other_server")
                return
            wanted = msg.requested_ip or (msg.ciaddr if msg.ciaddr != dhcp.ZERO_IP else None)
            if wanted is not None and self._grantable(client, wanted):
                self.leases[client] = wanted
                self._reply(msg, dhcp.ACK, wanted)
            else:
                self._reply(msg, dhcp.NAK, dhcp.ZERO_IP)
        elif kind == dhcp.RELEASE:
            if self.leases.get(client) == msg.ciaddr:
                del self.leases[client]
        elif kind == dhcp.DECLINE:
            if msg.requested_ip is not None and self.leases.get(client) == msg.requested_ip:
                del self.leases[client]
                self.declined.add(msg.requested_ip)
        elif kind == dhcp.INFORM:
            self._reply(msg, dhcp.ACK, dhcp.ZERO_IP)
        else:
            counters.bump("dhcp.ignored")

    def _taken(self, addr: bytes, client: bytes) -> bool:
        return addr in self.declined or any(a == addr and c != client for c, a in self.leases.items())

    def _grantable(self, client: bytes, addr: bytes) -> bool:
        if self.leases.get(client) == addr:
            return True
        return addr in self.pool and not self._taken(addr, client)

    def _choose(self, client: bytes, requested: bytes | None) -> bytes | None:
        current = self.leases.get(client)
        if current is not None:
            return current
        if requested is not None and self._grantable(client, requested):
            return requested
        for addr in self.pool:
            if not self._taken(addr, client):
                return addr
        return None

    def _reply(self, request: dhcp.DhcpMessage, kind: int, yiaddr: bytes) -> None:
        plan = self.plan
        if kind == dhcp.NAK:
            reply = dhcp.DhcpMessage(
                op=dhcp.BOOTREPLY, xid=request.xid, chaddr=request.chaddr, message_type=kind,
                broadcast=request.broadcast, giaddr=request.giaddr, server_id=plan.gateway,
            )  # fmt: skip
        else:
            reply = dhcp.DhcpMessage(
                op=dhcp.BOOTREPLY,
                xid=request.xid,
                chaddr=request.chaddr,
                message_type=kind,
                broadcast=request.broadcast,
                ciaddr=request.ciaddr if kind == dhcp.ACK and yiaddr == dhcp.ZERO_IP else dhcp.ZERO_IP,
                yiaddr=yiaddr,
                siaddr=plan.gateway,
                giaddr=request.giaddr,
                server_id=plan.gateway,
                lease_time=None if yiaddr == dhcp.ZERO_IP else LEASE_TIME_S,
                subnet_mask=plan.netmask,
                routers=(plan.gateway,),
                dns_servers=(plan.dns,),
            )
        body = bytearray(reply.buffer_len)
        reply.emit(body)
        frame = udp_frame(
            request.chaddr, plan.gateway_mac, plan.gateway, BROADCAST, dhcp.SERVER_PORT, dhcp.CLIENT_PORT, bytes(body)
        )
        if ethernet.is_multicast(request.chaddr):
            self.stack.counters.bump("dhcp.bad_chaddr")
            return
        self.stack.send_frame(frame)
