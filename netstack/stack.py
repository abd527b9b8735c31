"""The stack: one dispatch point per layer (STYLE.md §4), sans-IO.

    frame_from_guest(buf, now)  →  vnet → Ethernet → EtherType table
                                   → IP protocol table → flow lookup
    handle_event(event, now)    ←  host socket outcomes (netstack/events.py)
    poll(now)                   ←  timers; next_deadline() says when
    take_frames(), take_actions()  →  frames for the TAP, actions for the edge

Buffers passed in are only valid during the call: anything kept is copied.
Frames come out as bytes-like objects with the virtio-net header in front,
ready to write to the TAP.

Ingress drops, each counted: ``vnet.*``/``eth.*`` from the wire modules,
``eth.not_for_us`` (unicast to a MAC that is not the gateway's or DNS's),
``eth.bad_source`` (a group or all-zero source MAC: IEEE 802 source
addresses are individual ones, and learning such a MAC as the guest's would
send its unicast traffic to a group address), ``eth.unknown_ethertype``,
``ipv6.disabled`` (an IPv6 frame without ``--enable-ipv6``).

IPv6 (``StackConfig.enable_ipv6``) adds the EtherType 0x86DD entry: the
IPv6 layer (netstack/ipv6.py) with its own protocol table — ICMPv6
(netstack/icmpv6.py, which hands Neighbour Discovery to netstack/ndp.py),
TCP and UDP, the same TCP and UDP layers as IPv4 — plus the DHCPv6 server
(netstack/dhcpv6.py).  Everything below the IP layer is family-neutral:
flows, policy, the DNS forwarder, the neighbour table, frames.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import events as ev
from .addressing import AddressPlan
from .arp import ArpLayer
from .counters import Counters
from .dhcp import DhcpServer
from .dhcpv6 import Dhcpv6Server
from .dns import DnsForwarder
from .fragments import Reassembler
from .frames import IPV4_LEN as IPV4_HEADER_LEN
from .frames import IPV6_LEN as IPV6_HEADER_LEN
from .frames import ip_frame, ipv4_fragments, ipv6_fragments, tcp_frame
from .icmp import EchoNat, IcmpLayer
from .icmpv6 import Icmpv6Layer
from .ipv4 import Ipv4Layer
from .ipv6 import Ipv6Layer
from .nat import FlowTable
from .ndp import NdpRouter
from .neighbors import Neighbors
from .policy import DNS, REFUSE, UNREACH_ADDRESS_V6, Policy
from .tcp import Refusal, TcpConfig, TcpLayer, Unreachable
from .udp import UdpLayer
from .wire import Malformed, ethernet, icmpv4, icmpv6, ipv4, vnet
from .wire import ipv6 as wire_ipv6
from .wire import tcp as wire_tcp
from .wire.checksum import checksum, pseudo_sum_v4, pseudo_sum_v6

_ZERO_MAC = bytes(6)
_UNREACH_CODE = {Unreachable.NET: icmpv4.UNREACH_NET, Unreachable.HOST: icmpv4.UNREACH_HOST}
_UNREACH_CODE_V6 = {Unreachable.NET: icmpv6.UNREACH_NO_ROUTE, Unreachable.HOST: icmpv6.UNREACH_ADDRESS}
_TCP_EVENTS = (
    ev.TcpConnected, ev.TcpConnectFailed, ev.TcpSent, ev.TcpWritable, ev.TcpReceived, ev.TcpHostEof, ev.TcpHostReset,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StackConfig:
    plan: AddressPlan
    mtu: int = 1500
    disable_host_loopback: bool = False
    disable_dns: bool = False
    enable_ipv6: bool = False
    ping_relay: bool = True  # echo to outside addresses through host ICMP sockets
    ping_relay6: bool = True  # the same for ICMPv6 (IPv6 may be missing on the host)


class _ReassemblyTimer:
    """Expires fragments of both families; Time Exceeded to the guest per family."""

    __slots__ = ("stack",)

    def __init__(self, stack) -> None:
        self.stack = stack

    def poll(self, now: float) -> None:
        stack = self.stack
        for expired in stack.reassembler.expire(now):
            if expired.family == 4:
                stack.icmp.time_exceeded_reassembly(expired.first_fragment)
            elif stack.icmpv6 is not None:
                stack.icmpv6.time_exceeded_reassembly(expired.first_fragment)

    def next_deadline(self) -> float | None:
        return self.stack.reassembler.next_deadline()


class Stack:
    def __init__(self, config: StackConfig, rng: random.Random | None = None):
        """``rng`` drives the randomised timers (router advertisements); tests
        pass a seeded one."""
        self.config = config
        self.plan = config.plan
        self.counters = Counters()
        self.neighbors = Neighbors(self.counters)
        self._frames: list = []
        self._actions: list = []
        self._now = 0.0  # the time of the guest segment being handled
        self._our_macs = frozenset((self.plan.gateway_mac, self.plan.dns_mac))
        self.flows = FlowTable()
        self.policy = Policy(self.plan, config.disable_host_loopback, config.disable_dns)
        self.arp = ArpLayer(self)
        self.reassembler = Reassembler()
        self.reassembler.counters = self.counters
        self.ipv4 = Ipv4Layer(self, self.reassembler)
        self.icmp = IcmpLayer(self)
        self.dns = None if config.disable_dns else DnsForwarder(self, self.flows)
        self.dhcp = DhcpServer(self, self.plan)
        self.udp = UdpLayer(self, self.flows, self.policy, self.dns, self.dhcp)
        self.echo = EchoNat(self, self.flows) if (config.ping_relay or config.ping_relay6) else None
        if self.echo is not None and config.ping_relay:
            self.icmp.echo_relay = self.echo.relay
        self.tcp = TcpLayer(self.counters, table=self.flows, config=TcpConfig(mtu=config.mtu), policy=self._tcp_route)
        self.ipv4.register(ipv4.PROTO_ICMP, self.icmp.from_guest)
        self.ipv4.register(ipv4.PROTO_UDP, self.udp.from_guest)
        self.ipv4.register(ipv4.PROTO_TCP, self._tcp_from_guest)
        self._ethertypes = {
            ethernet.ETHERTYPE_ARP: self._arp_from_guest,
            ethernet.ETHERTYPE_IPV4: self._ipv4_from_guest,
            ethernet.ETHERTYPE_IPV6: self._ipv6_disabled,
        }
        self.ipv6 = self.ndp = self.icmpv6 = self.dhcpv6 = None
        if config.enable_ipv6:
            dns_on = not config.disable_dns
            self.ndp = NdpRouter(self, rng, dns_enabled=dns_on)
            self.icmpv6 = Icmpv6Layer(self, self.ndp)
            if self.echo is not None and config.ping_relay6:
                self.icmpv6.echo_relay = self.echo.relay_echo
            self.dhcpv6 = self.udp.dhcpv6 = Dhcpv6Server(self, dns_enabled=dns_on)
            self.ipv6 = Ipv6Layer(self, self.reassembler)
            self.ipv6.register(wire_ipv6.NH_ICMPV6, self._icmpv6_from_guest)
            self.ipv6.register(wire_ipv6.NH_UDP, self.udp.from_guest)
            self.ipv6.register(wire_ipv6.NH_TCP, self._tcp_from_guest)
            self._ethertypes[ethernet.ETHERTYPE_IPV6] = self._ipv6_from_guest
        # Objects with poll(now) and next_deadline().
        self._timers: list = [
            t for t in (_ReassemblyTimer(self), self.udp, self.dns, self.echo, self.tcp, self.ndp) if t is not None
        ]
        self._events = {
            ev.UdpReceived: lambda e, now: self.udp.received(e.flow, e.addr, e.port, e.data, now),
            ev.UdpFailed: lambda e, now: self.udp.failed(e.flow, e.errno, e.addr, e.port, now),
            ev.PingReplied: self._ping_replied,
        }
        for kind in _TCP_EVENTS:
            self._events[kind] = self._tcp_event

    # -- ingress --------------------------------------------------------------

    def frame_from_guest(self, buf: memoryview, now: float) -> None:
        counters = self.counters
        try:
            vhdr = vnet.VnetView.check(buf)
            eth = ethernet.EthernetView.check(vhdr.frame)
        except Malformed as err:
            counters.bump(err.counter)
            return
        dst0 = eth.buf[0]
        if not dst0 & 1 and eth.dst not in self._our_macs:
            counters.bump("eth.not_for_us")
            return
        if eth.buf[6] & 1 or eth.src == _ZERO_MAC:
            counters.bump("eth.bad_source")
            return
        handler = self._ethertypes.get(eth.ethertype)
        if handler is None:
            counters.bump("eth.unknown_ethertype")
            return
        handler(vhdr, eth, now)

    def _arp_from_guest(self, vhdr, eth, now: float) -> None:
        self.arp.from_guest(eth, now)

    def _ipv4_from_guest(self, vhdr, eth, now: float) -> None:
        # NEEDS_CSUM: the guest left the L4 checksum to us (partial);
        # DATA_VALID: already checked.  Either way there is nothing to verify.
        csum_ok = bool(vhdr.flags & (vnet.F_NEEDS_CSUM | vnet.F_DATA_VALID))
        self.ipv4.from_guest(eth, now, csum_ok)

    def _ipv6_from_guest(self, vhdr, eth, now: float) -> None:
        csum_ok = bool(vhdr.flags & (vnet.F_NEEDS_CSUM | vnet.F_DATA_VALID))
        self.ipv6.from_guest(eth, now, csum_ok)

    def _ipv6_disabled(self, vhdr, eth, now: float) -> None:
        self.counters.bump("ipv6.disabled")

    def _icmpv6_from_guest(self, ip, payload, now: float, csum_ok: bool) -> None:
        self.icmpv6.from_guest(ip, payload, now, csum_ok, self.ipv6.eth_src)

    def handle_event(self, event, now: float) -> None:
        """An outcome reported by the edge (netstack/events.py)."""
        self._events[type(event)](event, now)

    # -- TCP --------------------------------------------------------------------

    def _tcp_from_guest(self, ip, payload, now: float, csum_ok: bool) -> None:
        try:
            view = wire_tcp.TcpView.check(payload)
        except Malformed as err:
            self.counters.bump(err.counter)
            return
        if not csum_ok:
            src, dst = ip.src, ip.dst
            seed = pseudo_sum_v4(src, dst, 6, len(payload)) if len(src) == 4 else pseudo_sum_v6(src, dst, 6, len(payload))
            if checksum(payload, seed) != 0:
                self.counters.bump("tcp.bad_checksum")
                return
        self._now = now  # for _tcp_route: the TCP layer asks its policy without a clock
        self.tcp.segment_from_guest(now, 0, ip.src, ip.dst, view, ip.buf)
        self._drain_tcp()

    def _tcp_event(self, event, now: float) -> None:
        self.tcp.event_from_host(now, event)
        self._drain_tcp()

    def _tcp_route(self, dst: bytes, port: int):
        route = self.policy.route(dst, port)
        if route.kind is REFUSE:
            return Refusal.HOST_UNREACHABLE if route.icmp_code == UNREACH_ADDRESS_V6 else Refusal.NET_UNREACHABLE
        if route.kind is DNS:
            resolver = self.dns.resolver_for_tcp(self._now) if self.dns is not None else None
            return (resolver, 53) if resolver is not None else Refusal.RESET
        return route.addr, route.port

    def tcp_open_to_guest(self, guest_addr: bytes, guest_port: int, src: bytes, src_port: int, send_space: int, now: float):
        """Port forward: a host connection was accepted; open toward the guest.

        ``src`` is the host peer's address; the guest sees the policy's
        forward_source of it (in the family of ``guest_addr``).  Returns the
        flow id or None."""
        src = self.policy.forward_source(src, guest_addr)
        flow = self.tcp.open_to_guest(now, 0, guest_addr, guest_port, src, src_port, send_space)
        self._drain_tcp()
        return flow

    def udp_forward_from_host(self, guest_addr: bytes, guest_port: int, peer: bytes, peer_port: int, data: bytes, now: float):
        """A datagram from host peer ``peer``:``peer_port`` on a UDP forward to
        the guest's ``guest_addr``:``guest_port``; returns the session flow id."""
        src = self.policy.forward_source(peer, guest_addr)
        return self.udp.forward_from_host(guest_addr, guest_port, src, peer_port, data, now)

    def tcp_resume(self, flow: int, export, now: float) -> None:
        """Take back a TCP flow a datapath had (see TcpLayer.resume)."""
        self.tcp.resume(now, flow, export)
        self._drain_tcp()

    def tcp_forget(self, flow: int) -> None:
        """A TCP flow a datapath had ended there (see TcpLayer.forget)."""
        self.tcp.forget(flow)

    def touch_flows(self, flow_ids, now: float) -> None:
        """These flows carried traffic the core did not see (a datapath moved
        it): refresh their idle timers."""
        flows = self.flows
        for flow_id in flow_ids:
            flow = flows.get(flow_id)
            if flow is not None:
                flows.touch(flow, now)

    def our_mac_for(self, addr: bytes) -> bytes:
        """The MAC frames from ``addr`` carry toward the guest: the DNS
        address has its own, everything else comes through the gateway."""
        return self.plan.mac_of(addr) or self.plan.gateway_mac

    def _drain_tcp(self) -> None:
        tcp = self.tcp
        for seg in tcp.drain_segments():
            self.send_built(
                seg.dst_addr,
                lambda mac, our, seg=seg: tcp_frame(
                    mac, our, seg.src_addr, seg.dst_addr, seg.header, seg.payload, seg.gso_size
                ),
                seg.src_addr,
            )
        self._actions.extend(tcp.drain_actions())
        for req in tcp.drain_unreachables():
            self._tcp_unreachable(req)

    def _tcp_unreachable(self, req) -> None:
        if len(req.src_addr) != 4:
            if self.icmpv6 is None:
                self.counters.bump("icmpv6.unreachable_not_sent")
                return
            if req.datagram is not None:
                quote = req.datagram
            else:
                header = bytearray(40)
                header[0], header[6], header[7] = 0x60, 6, 64
                header[4:6] = len(req.tcp_header).to_bytes(2, "big")
                header[8:24], header[24:40] = req.src_addr, req.dst_addr
                quote = bytes(header) + req.tcp_header
            self.icmpv6.unreachable_quote(req.dst_addr, req.src_addr, _UNREACH_CODE_V6[req.reason], quote)
            return
        code = _UNREACH_CODE[req.reason]
        if req.datagram is not None:
            quote = req.datagram
        else:
            header = bytearray(20)
            header[0], header[8], header[9] = 0x45, 64, 6
            header[2:4] = (20 + len(req.tcp_header)).to_bytes(2, "big")
            header[12:16], header[16:20] = req.src_addr, req.dst_addr
            header[10:12] = checksum(header).to_bytes(2, "big")
            quote = bytes(header) + req.tcp_header
        self.icmp.unreachable_quote(req.dst_addr, req.src_addr, code, quote[: icmpv4.MAX_QUOTE_LEN])

    def _ping_replied(self, e: ev.PingReplied, now: float) -> None:
        if self.echo is not None:
            self.echo.replied(e.flow, e.addr, e.seq, e.payload, now)

    def set_resolvers(self, resolvers: list[bytes]) -> None:
        """The host's DNS upstreams, in order (the edge reads resolv.conf)."""
        if self.dns is not None:
            self.dns.set_resolvers(resolvers)

    def emit(self, action) -> None:
        """Queue an action for the edge (netstack/actions.py)."""
        self._actions.append(action)

    def unreachable(self, ip, code: int) -> None:
        """ICMP destination unreachable about the guest's datagram ``ip``."""
        if len(ip.src) == 4:
            self.icmp.unreachable(ip, code)
        elif self.icmpv6 is not None:
            self.icmpv6.unreachable(ip, code)
        else:
            self.counters.bump("icmpv6.unreachable_not_sent")

    # -- timers ---------------------------------------------------------------

    def poll(self, now: float) -> None:
        for timer in self._timers:
            timer.poll(now)
        self._drain_tcp()

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (t.next_deadline() for t in self._timers) if d is not None]
        return min(deadlines) if deadlines else None

    # -- egress ---------------------------------------------------------------

    def learned(self, addr: bytes, mac: bytes) -> None:
        """A guest address was seen at ``mac``: send anything waiting for it."""
        for build in self.neighbors.learn(addr, mac):
            self._queue(build(mac))

    def _queue(self, built) -> None:
        """A frame, or a list of frames (fragments), for the TAP."""
        if isinstance(built, list):
            self._frames.extend(built)
        else:
            self._frames.append(built)

    def send_frame(self, frame) -> None:
        self._frames.append(frame)

    def send_ip(self, src: bytes, dst: bytes, proto: int, body: bytes, ttl: int = 64) -> None:
        """An IP datagram to the guest at ``dst`` whose transport part is ``body``,
        fragmented to the MTU when it does not fit (IPv4 fragments, or IPv6
        Fragment headers)."""
        mtu = self.config.mtu
        if len(src) == 4:
            if IPV4_HEADER_LEN + len(body) > mtu:
                self.send_built(dst, lambda mac, our: ipv4_fragments(mac, our, src, dst, proto, body, mtu, ttl), src)
                return
        elif IPV6_HEADER_LEN + len(body) > mtu:
            self.send_built(dst, lambda mac, our: ipv6_fragments(mac, our, src, dst, proto, body, mtu, ttl), src)
            return
        self.send_built(dst, lambda mac, our_mac: ip_frame(mac, our_mac, src, dst, proto, body, ttl), src)

    def send_built(self, dst: bytes, build, src: bytes | None = None) -> None:
        """Send ``build(guest_mac, our_mac)`` to the guest at ``dst``, resolving its MAC."""
        our_mac = self.our_mac_for(src) if src is not None else self.plan.gateway_mac
        mac = self.neighbors.lookup(dst)
        if mac is not None:
            self._queue(build(mac, our_mac))
            return
        if self.neighbors.park(dst, lambda m: build(m, our_mac)):
            if len(dst) == 4:
                self.arp.request(dst)
            elif self.ndp is not None:
                self.ndp.solicit(dst)

    def take_frames(self) -> list:
        frames, self._frames = self._frames, []
        return frames

    def take_actions(self) -> list:
        actions, self._actions = self._actions, []
        return actions
