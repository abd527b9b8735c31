"""Neighbour Discovery as the guest's one IPv6 router (RFC 4861, RFC 4862, RFC 8106).

What it models (compat spec §4.4): the stack is the only other node on the
guest's link.  It owns three IPv6 addresses — fd00::2 (the gateway, the
host's ::1), fd00::3 (the DNS forwarder) and fe80::2 (the router's
link-local address, source of router advertisements) — whose link-layer
addresses are the gateway's and DNS address's MACs (netstack/addressing.py).

* Neighbour solicitations for those three targets are answered with a
  neighbour advertisement (RFC 4861 §7.2.4): unicast to the solicitor with
  the Solicited flag, or, for a duplicate address detection probe (source
  ::), multicast to all-nodes without it; Router and Override set, the
  target's MAC in a Target Link-Layer Address option.  Other targets are the
  guest's own business (its DAD probes) and are not answered.
* The guest's link-layer addresses are learned into the stack's shared
  neighbour table (netstack/neighbors.py) from the Source Link-Layer Address
  of its RS and NS, from the target and Target Link-Layer Address of its NA
  (RFC 4861 §7.2.5, simplified: the latest wins), and — by the IPv6 layer —
  from the source of every datagram.  For a guest address without an entry
  (a port forward toward a guest that has not spoken yet) the stack parks
  the frames and :meth:`NdpRouter.solicit` sends a neighbour solicitation
  to the target's solicited-node multicast address (§7.2.2).
* Router advertisements (§6.2.3), always multicast from fe80::2 to all-nodes
  with hop limit 255: cur hop limit 64, router lifetime 1800 s, the Other
  configuration flag (stateless DHCPv6 answers Information-requests:
  netstack/dhcpv6.py), M clear (no stateful DHCPv6), the gateway MAC (SLLA),
  the link MTU, the prefix fd00::/64 with L and A (valid 86400 s, preferred
  14400 s) for SLAAC, and RDNSS fd00::3 (RFC 8106, lifetime
  :data:`RDNSS_LIFETIME_S` = 3 × MaxRtrAdvInterval, §5.1's recommendation).
  **RDNSS is announced whenever the DNS forwarder is on** — slirp4netns
  announces it only when the host has an IPv6 nameserver because libslirp
  forwards fd00::3 to IPv6 upstreams only; slirpnet's forwarder reaches the
  host's IPv4 and IPv6 nameservers alike, so fd00::3 works either way.  With
  ``--disable-dns`` nothing answers at fd00::3 port 53, so no RDNSS.
* When: in answer to a router solicitation, and periodically, every
  uniformly random 200–600 s (MinRtrAdvInterval, MaxRtrAdvInterval:
  §6.2.1 defaults for MaxRtrAdvInterval = 600 s are 0.33 × 600 = 200 s),
  the first :data:`MAX_INITIAL_RTR_ADVERTISEMENTS` intervals capped at
  16 s (§6.2.4).  The periodic timer starts when the guest is first heard
  over IPv6 (sans-IO: the core learns time from its callers; until the guest
  speaks IPv6, nobody listens).  Multicast RAs are at most one per
  :data:`MIN_DELAY_BETWEEN_RAS_S` (§6.2.6): a solicitation within that time
  of the last RA is answered when it has passed, so a flood of RS costs
  one RA per 3 s.  Every RA re-arms the periodic timer.

Deliberate differences from RFC 4861: no random 0–0.5 s delay before
answering a solicitation (§6.2.6 asks for it to desynchronise several
routers; there is only one), and no neighbour cache states (the guest is
one hop away on a virtual wire; the table is refreshed by its traffic).

Drops (counter names): the wire module's ``ndp.*`` and ``icmpv6.*``, plus
``ndp.not_for_us`` (an NS for another target, other than a DAD probe),
``ndp.guest_dad`` (the guest's DAD probes: counted, not a fault),
``ndp.ra_from_guest`` (we do not take routes from the guest),
``ndp.claims_our_address`` (an NA from the guest for one of our addresses),
``ndp.bad_source_mac`` (a multicast link-layer address option).
"""

from __future__ import annotations

import random

from .addressing import IPV6_DNS, IPV6_GATEWAY, IPV6_PREFIX, IPV6_ROUTER_LINK_LOCAL
from .frames import ethernet_frame
from .wire import Malformed, ethernet, ndp
from .wire.icmpv6 import NEIGHBOR_ADVERTISEMENT, NEIGHBOR_SOLICITATION, ROUTER_SOLICITATION
from .wire.ipv6 import NH_ICMPV6, UNSPECIFIED, Ipv6Header, multicast_mac, solicited_node_multicast

ALL_NODES = b"\xff\x02" + bytes(13) + b"\x01"
OWN_ADDRESSES = (IPV6_GATEWAY, IPV6_DNS, IPV6_ROUTER_LINK_LOCAL)

CUR_HOP_LIMIT = 64
ROUTER_LIFETIME_S = 1800
PREFIX_VALID_LIFETIME_S = 86400
PREFIX_PREFERRED_LIFETIME_S = 14400
MIN_RTR_ADV_INTERVAL_S = 200.0
MAX_RTR_ADV_INTERVAL_S = 600.0
RDNSS_LIFETIME_S = int(3 * MAX_RTR_ADV_INTERVAL_S)
MAX_INITIAL_RTR_ADVERT_INTERVAL_S = 16.0
MAX_INITIAL_RTR_ADVERTISEMENTS = 3
MIN_DELAY_BETWEEN_RAS_S = 3.0


class NdpRouter:
    __slots__ = ("stack", "rng", "dns_enabled", "_next_periodic", "_initial_left", "_last_ra", "_answer_at")

    def __init__(self, stack, rng: random.Random | None = None, dns_enabled: bool = True):
        self.stack = stack
        self.rng = rng if rng is not None else random.Random()
        self.dns_enabled = dns_enabled
        self._next_periodic: float | None = None  # armed once the guest is heard over IPv6
        self._initial_left = MAX_INITIAL_RTR_ADVERTISEMENTS
        self._last_ra: float | None = None
        self._answer_at: float | None = None  # a rate-limited answer to a solicitation

    # -- from the guest -------------------------------------------------------

    def guest_heard(self, now: float) -> None:
        """The guest sent an IPv6 datagram: it has IPv6, so advertise from now on."""
        if self._next_periodic is None:
            self._arm_periodic(now)

    def from_guest(self, ip, icmp, eth_src: bytes, now: float) -> None:
        """An RS, RA, NS or NA (type already checked by the ICMPv6 layer)."""
        stack = self.stack
        try:
            view = ndp.NdpView.check(icmp, ip.src, ip.dst, ip.hop_limit)
            msg = ndp.parse(view)
        except Malformed as err:
            stack.counters.bump(err.counter)
            return
        t = icmp.type
        if t == NEIGHBOR_SOLICITATION:
            self._solicitation(ip.src, msg, eth_src)
        elif t == ROUTER_SOLICITATION:
            if msg.source_mac is not None and not self._learn(ip.src, msg.source_mac):
                return
            self._router_solicitation(now)
        elif t == NEIGHBOR_ADVERTISEMENT:
            self._advertisement(msg, eth_src)
        else:  # ROUTER_ADVERTISEMENT
            stack.counters.bump("ndp.ra_from_guest")

    def _learn(self, addr: bytes, mac: bytes) -> bool:
        if ethernet.is_multicast(mac):
            self.stack.counters.bump("ndp.bad_source_mac")
            return False
        if addr != UNSPECIFIED:
            self.stack.learned(addr, mac)
        return True

    def _solicitation(self, src: bytes, ns: ndp.NeighborSolicitation, eth_src: bytes) -> None:
        stack = self.stack
        if ns.source_mac is not None and not self._learn(src, ns.source_mac):
            return
        target = ns.target
        mac = stack.plan.mac_of(target) if target in OWN_ADDRESSES else None
        if mac is None:
            stack.counters.bump("ndp.guest_dad" if src == UNSPECIFIED else "ndp.not_for_us")
            return
        if src == UNSPECIFIED:
            # Someone probes one of our addresses for duplicates: it is taken (§7.2.4).
            na = ndp.NeighborAdvertisement(target, router=True, solicited=False, override=True, target_mac=mac)
            self._send(target, ALL_NODES, multicast_mac(ALL_NODES), mac, na)
            return
        na = ndp.NeighborAdvertisement(target, router=True, solicited=True, override=True, target_mac=mac)
        guest_mac = ns.source_mac or stack.neighbors.lookup(src) or eth_src
        self._send(target, src, guest_mac, mac, na)

    def _advertisement(self, na: ndp.NeighborAdvertisement, eth_src: bytes) -> None:
        if na.target in OWN_ADDRESSES:
            self.stack.counters.bump("ndp.claims_our_address")
            return
        self._learn(na.target, na.target_mac if na.target_mac is not None else eth_src)

    # -- router advertisements ------------------------------------------------

    def advertisement(self) -> ndp.RouterAdvertisement:
        """The RA the stack sends (see module doc)."""
        stack = self.stack
        prefix = ndp.PrefixInfo(
            IPV6_PREFIX.network_address.packed, IPV6_PREFIX.prefixlen,
            PREFIX_VALID_LIFETIME_S, PREFIX_PREFERRED_LIFETIME_S, on_link=True, autonomous=True,
        )  # fmt: skip
        rdnss = (ndp.Rdnss(RDNSS_LIFETIME_S, (IPV6_DNS,)),) if self.dns_enabled else ()
        return ndp.RouterAdvertisement(
            cur_hop_limit=CUR_HOP_LIMIT,
            managed=False,
            other=True,
            router_lifetime=ROUTER_LIFETIME_S,
            source_mac=stack.plan.gateway_mac,
            mtu=stack.config.mtu,
            prefixes=(prefix,),
            rdnss=rdnss,
        )

    def _router_solicitation(self, now: float) -> None:
        if self._last_ra is None or now - self._last_ra >= MIN_DELAY_BETWEEN_RAS_S:
            self._send_ra(now)
        elif self._answer_at is None:
            self._answer_at = self._last_ra + MIN_DELAY_BETWEEN_RAS_S

    def _send_ra(self, now: float) -> None:
        mac = self.stack.plan.gateway_mac
        self._send(IPV6_ROUTER_LINK_LOCAL, ALL_NODES, multicast_mac(ALL_NODES), mac, self.advertisement())
        self.stack.counters.bump("ndp.ra_sent")
        self._last_ra = now
        self._answer_at = None
        self._arm_periodic(now)

    def _arm_periodic(self, now: float) -> None:
        interval = self.rng.uniform(MIN_RTR_ADV_INTERVAL_S, MAX_RTR_ADV_INTERVAL_S)
        if self._initial_left > 0:
            interval = min(interval, MAX_INITIAL_RTR_ADVERT_INTERVAL_S)
        self._next_periodic = now + interval

    def poll(self, now: float) -> None:
        if self._answer_at is not None and self._answer_at <= now:
            self._send_ra(now)
        elif self._next_periodic is not None and self._next_periodic <= now:
            if self._initial_left > 0:
                self._initial_left -= 1
            self._send_ra(now)

    def next_deadline(self) -> float | None:
        times = [t for t in (self._answer_at, self._next_periodic) if t is not None]
        return min(times) if times else None

    # -- toward the guest -------------------------------------------------------

    def solicit(self, target: bytes) -> None:
        """Ask for the link-layer address of the guest's ``target`` (RFC 4861 §7.2.2)."""
        mac = self.stack.plan.gateway_mac
        group = solicited_node_multicast(target)
        self._send(IPV6_ROUTER_LINK_LOCAL, group, multicast_mac(group), mac, ndp.NeighborSolicitation(target, mac))
        self.stack.counters.bump("ndp.ns_sent")

    def _send(self, src: bytes, dst: bytes, dst_mac: bytes, src_mac: bytes, msg) -> None:
        n = msg.buffer_len
        buf = ethernet_frame(dst_mac, src_mac, ethernet.ETHERTYPE_IPV6, 40 + n)
        off = len(buf) - 40 - n
        Ipv6Header(src, dst, NH_ICMPV6, n, hop_limit=ndp.HOP_LIMIT).emit(buf, off)
        msg.emit(buf, off + 40, src, dst)
        self.stack.send_frame(buf)
