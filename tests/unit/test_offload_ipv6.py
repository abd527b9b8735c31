"""IPv6 flows reach the datapath hand-off (slirp/offload.py) the way IPv4 ones do.

The core side of issue 7 item 5: an established IPv6 TCP flow becomes
offloadable, is parked and installed with the guest's MAC (learned from its
traffic) and the MAC of the address it talks to (fd00::3 has the DNS MAC,
everything else the gateway's), and a UDP NAT flow is installed when its
socket opens — for both families, with a fake datapath that records calls.
"""

from __future__ import annotations

import ipaddress
import random
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from netstack import actions as act
from netstack import events as ev
from netstack.addressing import AddressPlan
from netstack.counters import Counters
from netstack.stack import Stack, StackConfig
from slirp.offload import Offload

PLAN = AddressPlan.from_network(ipaddress.IPv4Network("10.0.2.0/24"))
GUEST_MAC = "02:aa:bb:cc:dd:ee"


class FakeDatapath:
    def __init__(self):
        self.tcp, self.udp = [], []

    def install_tcp(self, flow):
        self.tcp.append(flow)

    def install_udp(self, flow):
        self.udp.append(flow)


def harness():
    stack = Stack(StackConfig(plan=PLAN, enable_ipv6=True), rng=random.Random(1))
    conns = {}
    hostsocks = SimpleNamespace(tcp=conns, detach_tcp=lambda flow: conns[flow].__setattr__("detached", True))
    driver = SimpleNamespace(stack=stack, hostsocks=hostsocks, counters=Counters())
    dp = FakeDatapath()
    return stack, conns, Offload(driver, dp), dp


def send(stack, pkt, dst_mac):
    stack.frame_from_guest(memoryview(bytes(10) + bytes(Ether(dst=dst_mac, src=GUEST_MAC) / pkt)), 0.0)


@pytest.mark.parametrize(
    "guest,remote,ip,our_mac",
    [
        ("10.0.2.100", "192.0.2.80", IP, "52:55:0a:00:02:02"),
        ("fd00::64", "2001:db8::50", IPv6, "52:55:0a:00:02:02"),
        ("fd00::64", "fd00::3", IPv6, "52:55:0a:00:02:03"),
    ],
)
def test_established_tcp_flows_are_installed_alike(guest, remote, ip, our_mac):
    stack, conns, offload, dp = harness()
    stack.set_resolvers([bytes([127, 0, 0, 53])])
    port = 53 if remote == "fd00::3" else 80
    send(stack, ip(src=guest, dst=remote) / TCP(sport=40000, dport=port, flags="S", seq=100), our_mac)
    (open_tcp,) = stack.take_actions()
    assert isinstance(open_tcp, act.OpenTcp)
    conns[open_tcp.flow] = SimpleNamespace(fd=99, connecting=False)
    stack.handle_event(ev.TcpConnected(open_tcp.flow, 65536), 0.0)
    synack = Ether(bytes(stack.take_frames()[0][10:]))
    send(stack, ip(src=guest, dst=remote) / TCP(sport=40000, dport=port, flags="A", seq=101, ack=synack[TCP].seq + 1), our_mac)
    stack.take_actions()
    assert open_tcp.flow in stack.tcp.offload_ready
    offload.install_ready(0.0)
    (flow,) = dp.tcp
    assert flow.guest_addr == ipaddress.ip_address(guest).packed
    assert flow.remote_addr == ipaddress.ip_address(remote).packed
    assert flow.guest_mac == bytes.fromhex(GUEST_MAC.replace(":", ""))
    assert flow.our_mac == bytes.fromhex(our_mac.replace(":", ""))
    assert conns[open_tcp.flow].detached


@pytest.mark.parametrize("guest,remote,ip", [("10.0.2.100", "192.0.2.80", IP), ("fd00::64", "2001:db8::50", IPv6)])
def test_udp_nat_flows_are_installed_alike(guest, remote, ip):
    stack, _, offload, dp = harness()
    send(stack, ip(src=guest, dst=remote) / UDP(sport=5000, dport=7) / b"x", "52:55:0a:00:02:02")
    open_udp, _ = stack.take_actions()
    assert offload.udp_opened(open_udp.flow, 42)
    (flow,) = dp.udp
    assert flow.guest_addr == ipaddress.ip_address(guest).packed and flow.guest_port == 5000
    assert flow.guest_mac == bytes.fromhex(GUEST_MAC.replace(":", ""))
