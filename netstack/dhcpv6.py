"""Stateless DHCPv6 (RFC 8415 §6.1): DNS information for SLAAC guests.

What it models: our router advertisements set the Other-configuration flag
and leave Managed clear (netstack/ndp.py), so a guest that runs a DHCPv6
client asks for "other configuration" only, with an Information-request
(RFC 8415 §18.2.6) to All_DHCP_Relay_Agents_and_Servers (ff02::1:2), port
547.  The server answers with a Reply (§18.3.6) from fe80::2 (fd00::2 when
the request came from a global address) to the client's address and port,
carrying:

* Server Identifier: a DUID-LL of the gateway's MAC (§11.4) — stable for the
  life of the network, since the MAC derives from ``--cidr``;
* the client's Client Identifier, echoed when it sent one;
* DNS Recursive Name Server (RFC 3646): fd00::3, unless ``--disable-dns``
  (then nothing answers DNS at fd00::3, as with RDNSS);
* Information Refresh Time (§21.23): :data:`INFORMATION_REFRESH_TIME_S`
  (IRT_DEFAULT, 86400 s).

Intercepted: UDP to port 547 at ff02::1:2 or at one of the stack's own
addresses (the UDP layer decides); anything else to port 547 is ordinary
NAT traffic.

Discarded, each counted (RFC 8415 §16.12 for the Information-request rules):
``dhcpv6.*`` from the wire module; ``dhcpv6.ignored`` (Solicit, Request,
Renew... — no stateful service, and the RA's M flag says so; Replies and
Advertises from the guest); ``dhcpv6.ia_option`` (an Information-request
carrying IA_NA/IA_TA/IA_PD); ``dhcpv6.other_server`` (a Server Identifier
that is not ours); ``dhcpv6.unspecified_source`` (nowhere to answer).
"""

from __future__ import annotations

from .addressing import IPV6_DNS, IPV6_GATEWAY, IPV6_ROUTER_LINK_LOCAL
from .frames import udp_frame
from .wire import Malformed, dhcpv6
from .wire.ipv6 import is_link_local

INFORMATION_REFRESH_TIME_S = 86400


class Dhcpv6Server:
    __slots__ = ("stack", "duid", "dns_servers")

    def __init__(self, stack, dns_enabled: bool = True):
        self.stack = stack
        self.duid = dhcpv6.duid_ll(stack.plan.gateway_mac)
        self.dns_servers = (IPV6_DNS,) if dns_enabled else ()

    def from_guest(self, ip, udp_view, now: float) -> None:
        counters = self.stack.counters
        try:
            view = dhcpv6.Dhcpv6View.check(udp_view.payload)
            msg = dhcpv6.Dhcpv6Message.parse(view)
        except Malformed as err:
            counters.bump(err.counter)
            return
        if ip.src == bytes(16):
            counters.bump("dhcpv6.unspecified_source")
            return
        if msg.msg_type != dhcpv6.INFORMATION_REQUEST:
            counters.bump("dhcpv6.ignored")
            return
        if view.has_option(dhcpv6.OPT_IA_NA) or view.has_option(dhcpv6.OPT_IA_TA) or view.has_option(dhcpv6.OPT_IA_PD):
            counters.bump("dhcpv6.ia_option")
            return
        if msg.server_id is not None and msg.server_id != self.duid:
            counters.bump("dhcpv6.other_server")
            return
        reply = msg.reply(self.duid, self.dns_servers, INFORMATION_REFRESH_TIME_S)
        body = bytearray(reply.buffer_len)
        reply.emit(body)
        client, port = ip.src, udp_view.src_port
        ours = IPV6_ROUTER_LINK_LOCAL if is_link_local(client) else IPV6_GATEWAY
        data = bytes(body)
        counters.bump("dhcpv6.replies")
        self.stack.send_built(
            client,
            lambda mac, our: udp_frame(mac, our, ours, client, dhcpv6.SERVER_PORT, port, data),
            ours,
        )
