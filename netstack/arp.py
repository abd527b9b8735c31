"""ARP (RFC 826) as the guest's gateway: answer for our addresses, learn the guest's.

What it models (compat spec §4.1): requests are answered only for the
gateway (N+2) and DNS (N+3) addresses, with the MAC 52:55:<IPv4 bytes>;
every request, reply and gratuitous announcement from the guest updates the
neighbour table.  We ask for a guest address with the gateway as sender when
a frame for it has no known MAC (Neighbors.park).

Drops: the wire module's ``arp.*`` names, plus ``arp.not_for_us`` (a request
for an address that is not ours), ``arp.bad_sender`` (a multicast/broadcast
sender MAC).
"""

from __future__ import annotations

from .frames import ethernet_frame
from .wire import Malformed, arp, ethernet


class ArpLayer:
    __slots__ = ("stack",)

    def __init__(self, stack) -> None:
        self.stack = stack

    def from_guest(self, eth: ethernet.EthernetView, now: float) -> None:
        stack = self.stack
        try:
            packet = arp.ArpPacket.parse(arp.ArpView.check(eth.payload))
        except Malformed as err:
            stack.counters.bump(err.counter)
            return
        if ethernet.is_multicast(packet.sender_mac):
            stack.counters.bump("arp.bad_sender")
            return
        if packet.sender_ip != b"\0\0\0\0":
            stack.learned(packet.sender_ip, packet.sender_mac)
        if packet.operation != arp.OP_REQUEST:
            return
        mac = stack.plan.mac_of(packet.target_ip)
        if mac is None:
            stack.counters.bump("arp.not_for_us")
            return
        reply = packet.reply(mac)
        frame = ethernet.EthernetHeader(packet.sender_mac, mac, ethernet.ETHERTYPE_ARP)
        stack.send_frame(_arp_frame(frame, reply))

    def request(self, target_ip: bytes) -> None:
        """Who-has ``target_ip``, from the gateway (broadcast)."""
        plan = self.stack.plan
        packet = arp.ArpPacket.request(plan.gateway_mac, plan.gateway, target_ip)
        frame = ethernet.EthernetHeader(ethernet.BROADCAST, plan.gateway_mac, ethernet.ETHERTYPE_ARP)
        self.stack.send_frame(_arp_frame(frame, packet))


def _arp_frame(eth: ethernet.EthernetHeader, packet: arp.ArpPacket) -> bytearray:
    buf = ethernet_frame(eth.dst, eth.src, eth.ethertype, packet.buffer_len)
    packet.emit(buf, len(buf) - packet.buffer_len)
    return buf
