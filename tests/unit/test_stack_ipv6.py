"""The stack over IPv6, frames in / frames out, with scapy building what goes in
and dissecting what comes out (STYLE.md §11, §12) and a manual clock.

Covers: NDP answers and learning, router advertisements (contents and
timing), stateless DHCPv6, ICMPv6 echo (own addresses, relay, refusal),
ICMPv6 errors (TCP and UDP, the codes and quotes of RFC 4443), the IPv6
policy, fragments both ways, and hostile input (counted drops, no crash).
"""

from __future__ import annotations

import errno
import ipaddress
import random

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dhcp6 import (
    DHCP6_InfoRequest,
    DHCP6_Reply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptInfoRefreshTime,
    DHCP6OptServerId,
    DUID_LL,
)
from scapy.layers.inet import TCP, UDP, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    RouterAlert,
    fragment6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netstack import actions as act
from netstack import events as ev
from netstack.addressing import AddressPlan
from netstack.ndp import MAX_RTR_ADV_INTERVAL_S, MIN_RTR_ADV_INTERVAL_S
from netstack.policy import DNS, FORWARD, REFUSE, Policy
from netstack.stack import Stack, StackConfig

PLAN = AddressPlan.from_network(ipaddress.IPv4Network("10.0.2.0/24"))
GW_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
GUEST_MAC = "02:aa:bb:cc:dd:ee"
GUEST_LL = "fe80::aa:bbff:fecc:ddee"
GUEST = "fd00::aa:bbff:fecc:ddee"
VNET = bytes(10)


def P(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def make_stack(**kw) -> Stack:
    kw.setdefault("enable_ipv6", True)
    return Stack(StackConfig(plan=PLAN, **kw), rng=random.Random(7))


def send(stack: Stack, pkt, now: float = 0.0, dst_mac: str = GW_MAC, src_mac: str = GUEST_MAC) -> None:
    frame = bytes(Ether(dst=dst_mac, src=src_mac) / pkt)
    stack.frame_from_guest(memoryview(VNET + frame), now)


def out(stack: Stack) -> list:
    return [Ether(bytes(f[10:])) for f in stack.take_frames()]


def one(stack: Stack):
    frames = out(stack)
    assert len(frames) == 1, [f.summary() for f in frames]
    return frames[0]


def check_icmpv6_checksum(frame) -> None:
    """scapy recomputes the checksum: the emitted one must be the same."""
    ip = frame[IPv6]
    layer = ip.payload
    got = layer.cksum
    del layer.cksum
    assert IPv6(bytes(ip))[IPv6].payload.cksum == got


# -- NDP ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,mac", [("fd00::2", GW_MAC), ("fd00::3", DNS_MAC), ("fe80::2", GW_MAC)]
)
def test_neighbor_solicitation_for_our_addresses_is_answered(target, mac):
    stack = make_stack()
    group = "ff02::1:ff00:2" if target.endswith("2") else "ff02::1:ff00:3"
    send(stack, IPv6(src=GUEST_LL, dst=group, hlim=255) / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC),
         dst_mac="33:33:ff:00:00:02")  # fmt: skip
    f = one(stack)
    assert f.dst == GUEST_MAC and f.src == mac
    assert f[IPv6].src == target and f[IPv6].dst == GUEST_LL and f[IPv6].hlim == 255
    na = f[ICMPv6ND_NA]
    assert (na.R, na.S, na.O) == (1, 1, 1) and na.tgt == target
    assert f[ICMPv6NDOptDstLLAddr].lladdr == mac
    check_icmpv6_checksum(f)
    assert stack.neighbors.lookup(P(GUEST_LL)) == bytes.fromhex(GUEST_MAC.replace(":", ""))


def test_dad_probe_for_our_address_gets_a_multicast_advertisement():
    stack = make_stack()
    send(stack, IPv6(src="::", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fd00::2"), dst_mac="33:33:ff:00:00:02")
    f = one(stack)
    assert f.dst == "33:33:00:00:00:01" and f[IPv6].dst == "ff02::1"
    assert f[ICMPv6ND_NA].S == 0 and f[ICMPv6ND_NA].O == 1
    assert stack.neighbors.lookup(bytes(16)) is None


def test_guest_dad_and_foreign_targets_are_not_answered():
    stack = make_stack()
    send(stack, IPv6(src="::", dst="ff02::1:ffcc:ddee", hlim=255) / ICMPv6ND_NS(tgt=GUEST), dst_mac="33:33:ff:cc:dd:ee")
    send(stack, IPv6(src=GUEST_LL, dst="fd00::9", hlim=255) / ICMPv6ND_NS(tgt="fd00::9") / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))
    assert out(stack) == []
    assert stack.counters["ndp.guest_dad"] == 1 and stack.counters["ndp.not_for_us"] == 1


def test_ndp_with_a_bad_hop_limit_is_dropped():
    stack = make_stack()
    send(stack, IPv6(src=GUEST_LL, dst="ff02::1:ff00:2", hlim=64) / ICMPv6ND_NS(tgt="fd00::2"), dst_mac="33:33:ff:00:00:02")
    assert out(stack) == [] and stack.counters["ndp.bad_hop_limit"] == 1


def test_advertisements_teach_the_guest_mac_and_parked_frames_leave():
    stack = make_stack()
    other_mac = "02:11:22:33:44:55"
    # A port forward toward a guest address nobody has heard of: solicited, parked.
    flow = stack.udp_forward_from_host(P("fd00::100"), 53, P("::1"), 4000, b"hello", 0.0)
    assert flow is not None
    ns = one(stack)
    assert ns[IPv6].dst == "ff02::1:ff00:100" and ns.dst == "33:33:ff:00:01:00"
    assert ns[ICMPv6ND_NS].tgt == "fd00::100" and ns[ICMPv6NDOptSrcLLAddr].lladdr == GW_MAC
    assert ns[IPv6].src == "fe80::2" and ns[IPv6].hlim == 255
    check_icmpv6_checksum(ns)
    send(stack, IPv6(src="fd00::100", dst="fe80::2", hlim=255) / ICMPv6ND_NA(tgt="fd00::100", S=1)
         / ICMPv6NDOptDstLLAddr(lladdr=other_mac), src_mac=other_mac)  # fmt: skip
    f = one(stack)
    assert f.dst == other_mac and f[IPv6].src == "fd00::2" and f[UDP].dport == 53 and bytes(f[UDP].payload) == b"hello"


def test_an_advertisement_claiming_our_address_is_ignored():
    stack = make_stack()
    send(stack, IPv6(src=GUEST_LL, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt="fd00::2") / ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC),
         dst_mac="33:33:00:00:00:01")  # fmt: skip
    assert stack.counters["ndp.claims_our_address"] == 1
    assert stack.neighbors.lookup(P("fd00::2")) is None


# -- router advertisements -----------------------------------------------------------


def rs(stack, now, src=GUEST_LL):
    pkt = IPv6(src=src, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
    if src != "::":
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)
    send(stack, pkt, now, dst_mac="33:33:00:00:00:02")


def test_router_advertisement_contents():
    stack = make_stack(mtu=1400)
    rs(stack, 1.0)
    f = one(stack)
    assert f.dst == "33:33:00:00:00:01" and f.src == GW_MAC
    assert f[IPv6].src == "fe80::2" and f[IPv6].dst == "ff02::1" and f[IPv6].hlim == 255
    ra = f[ICMPv6ND_RA]
    assert (ra.chlim, ra.M, ra.O, ra.routerlifetime) == (64, 0, 1, 1800)
    assert f[ICMPv6NDOptSrcLLAddr].lladdr == GW_MAC
    assert f[ICMPv6NDOptMTU].mtu == 1400
    p = f[ICMPv6NDOptPrefixInfo]
    assert (p.prefix, p.prefixlen, p.L, p.A, p.validlifetime, p.preferredlifetime) == ("fd00::", 64, 1, 1, 86400, 14400)
    r = f[ICMPv6NDOptRDNSS]
    assert r.dns == ["fd00::3"] and r.lifetime == 1800
    check_icmpv6_checksum(f)


def test_no_rdnss_with_disable_dns():
    stack = make_stack(disable_dns=True)
    rs(stack, 1.0)
    f = one(stack)
    assert ICMPv6NDOptRDNSS not in f and ICMPv6NDOptPrefixInfo in f


def test_solicitations_are_rate_limited_to_one_ra_per_3_s():
    stack = make_stack()
    rs(stack, 10.0)
    assert len(out(stack)) == 1
    for t in (10.5, 11.0, 12.0):
        rs(stack, t)
    assert out(stack) == []
    assert stack.next_deadline() == pytest.approx(13.0)
    stack.poll(12.9)
    assert out(stack) == []
    stack.poll(13.0)
    assert len(out(stack)) == 1
    rs(stack, 16.5)  # 3.5 s after the last: at once
    assert len(out(stack)) == 1


def test_periodic_advertisements_start_when_the_guest_is_heard():
    stack = make_stack()
    assert stack.next_deadline() is None  # nobody speaks IPv6 yet: nothing to advertise
    send(stack, IPv6(src=GUEST_LL, dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport2(),
         100.0, dst_mac="33:33:00:00:00:16")  # fmt: skip
    assert out(stack) == [] and stack.counters["icmpv6.ignored"] == 1
    times = []
    now = 100.0
    for _ in range(8):
        now = stack.next_deadline()
        stack.poll(now)
        f = one(stack)
        assert ICMPv6ND_RA in f
        times.append(now)
    gaps = [b - a for a, b in zip([100.0] + times, times)]
    assert all(0 < g <= 16.0 for g in gaps[:3]), gaps  # RFC 4861 §6.2.4 initial advertisements
    assert all(MIN_RTR_ADV_INTERVAL_S <= g <= MAX_RTR_ADV_INTERVAL_S for g in gaps[3:]), gaps
    assert len({round(g, 3) for g in gaps[3:]}) > 1  # random, not a fixed period


def test_a_solicited_ra_restarts_the_periodic_timer():
    stack = make_stack()
    rs(stack, 1.0)
    out(stack)
    first = stack.next_deadline()
    assert 1.0 < first <= 17.0
    rs(stack, first - 0.5)
    assert len(out(stack)) == 1
    assert stack.next_deadline() > first


# -- DHCPv6 --------------------------------------------------------------------------


def info_request(trid=0x123456, **opts):
    pkt = DHCP6_InfoRequest(trid=trid) / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC))
    for o in opts.get("extra", ()):
        pkt = pkt / o
    return IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / pkt


def test_dhcpv6_information_request_gets_dns():
    stack = make_stack()
    send(stack, info_request(), dst_mac="33:33:00:01:00:02")
    f = one(stack)
    assert f[IPv6].src == "fe80::2" and f[IPv6].dst == GUEST_LL and f.dst == GUEST_MAC
    assert f[UDP].sport == 547 and f[UDP].dport == 546
    reply = DHCP6_Reply(bytes(f[UDP].payload))
    assert reply.trid == 0x123456
    assert reply[DHCP6OptServerId].duid.lladdr == GW_MAC
    assert reply[DHCP6OptClientId].duid.lladdr == GUEST_MAC
    assert reply[DHCP6OptDNSServers].dnsservers == ["fd00::3"]
    assert reply[DHCP6OptInfoRefreshTime].reftime == 86400


def test_dhcpv6_discards_stateful_requests_and_foreign_servers():
    stack = make_stack()
    solicit = IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_Solicit(trid=1) / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC))
    send(stack, solicit, dst_mac="33:33:00:01:00:02")
    send(stack, info_request(extra=[DHCP6OptIA_NA(iaid=1)]), dst_mac="33:33:00:01:00:02")
    send(stack, info_request(extra=[DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:01"))]), dst_mac="33:33:00:01:00:02")
    assert out(stack) == []
    c = stack.counters
    assert (c["dhcpv6.ignored"], c["dhcpv6.ia_option"], c["dhcpv6.other_server"]) == (1, 1, 1)
    # Naming our server identifier is fine.
    send(stack, info_request(extra=[DHCP6OptServerId(duid=DUID_LL(lladdr=GW_MAC))]), dst_mac="33:33:00:01:00:02")
    assert DHCP6OptDNSServers in DHCP6_Reply(bytes(one(stack)[UDP].payload))


def test_dhcpv6_without_dns_announces_none():
    stack = make_stack(disable_dns=True)
    send(stack, info_request(), dst_mac="33:33:00:01:00:02")
    assert DHCP6OptDNSServers not in DHCP6_Reply(bytes(one(stack)[UDP].payload))


# -- ICMPv6 echo ---------------------------------------------------------------------


@pytest.mark.parametrize("dst", ["fd00::2", "fd00::3", "fe80::2"])
def test_echo_to_our_addresses_is_answered_with_hop_limit_255(dst):
    stack = make_stack(disable_host_loopback=True, disable_dns=True)
    src = GUEST_LL if dst.startswith("fe80") else GUEST
    mac = DNS_MAC if dst == "fd00::3" else GW_MAC
    send(stack, IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=0x4242, seq=7, data=b"ping!"), dst_mac=mac)
    f = one(stack)
    assert f.src == mac and f[IPv6].src == dst and f[IPv6].dst == src and f[IPv6].hlim == 255
    r = f[ICMPv6EchoReply]
    assert (r.id, r.seq, r.data) == (0x4242, 7, b"ping!")
    check_icmpv6_checksum(f)
    assert stack.take_actions() == []


def test_echo_to_outside_is_relayed_and_replied():
    stack = make_stack()
    send(stack, IPv6(src=GUEST, dst="2001:db8:1::2") / ICMPv6EchoRequest(id=9, seq=1, data=b"abc"))
    actions = stack.take_actions()
    assert isinstance(actions[0], act.OpenPing) and actions[0].addr == P("2001:db8:1::2")
    send_ping = actions[1]
    assert isinstance(send_ping, act.SendPing) and (send_ping.seq, send_ping.payload) == (1, b"abc")
    stack.handle_event(ev.PingReplied(send_ping.flow, P("2001:db8:1::2"), 1, b"abc"), 0.1)
    f = one(stack)
    assert f[IPv6].src == "2001:db8:1::2" and f[IPv6].dst == GUEST
    assert (f[ICMPv6EchoReply].id, f[ICMPv6EchoReply].seq, f[ICMPv6EchoReply].data) == (9, 1, b"abc")
    check_icmpv6_checksum(f)


def test_echo_to_another_fd00_address_goes_to_the_host_loopback():
    stack = make_stack()
    send(stack, IPv6(src=GUEST, dst="fd00::9") / ICMPv6EchoRequest(id=1, seq=1))
    actions = stack.take_actions()
    assert actions[0].addr == P("::1")
    stack.handle_event(ev.PingReplied(actions[1].flow, P("::1"), 1, b""), 0.1)
    assert one(stack)[IPv6].src == "fd00::9"


def test_echo_relay_off_drops_and_counts():
    stack = make_stack(ping_relay6=False)
    send(stack, IPv6(src=GUEST, dst="2001:db8:1::2") / ICMPv6EchoRequest())
    assert out(stack) == [] and stack.take_actions() == []
    assert stack.counters["icmpv6.no_handler"] == 1


def test_echo_refused_with_disable_host_loopback_is_no_route():
    stack = make_stack(disable_host_loopback=True)
    send(stack, IPv6(src=GUEST, dst="fd00::9") / ICMPv6EchoRequest(id=1, seq=1))
    f = one(stack)
    assert f[ICMPv6DestUnreach].code == 0 and f[IPv6].src == "fd00::2"


# -- TCP and UDP: policy and errors ---------------------------------------------------


def syn(dst, dport, src=GUEST, sport=40000):
    return IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=1000, options=[("MSS", 1440)])


def test_tcp_to_the_gateway_connects_to_host_loopback_with_mss_mtu_minus_60():
    stack = make_stack()
    send(stack, syn("fd00::2", 8080))
    (open_tcp,) = stack.take_actions()
    assert isinstance(open_tcp, act.OpenTcp) and (open_tcp.addr, open_tcp.port) == (P("::1"), 8080)
    stack.handle_event(ev.TcpConnected(open_tcp.flow, 65536), 0.01)
    f = one(stack)
    assert f[IPv6].src == "fd00::2" and f[TCP].flags == "SA"
    assert dict(f[TCP].options)["MSS"] == 1500 - 60


@pytest.mark.parametrize(
    "errno_,code,src",
    [(errno.ENETUNREACH, 0, "fd00::2"), (errno.EHOSTUNREACH, 3, "fd00::2"), (errno.ECONNREFUSED, None, None)],
)
def test_tcp_connect_failures(errno_, code, src):
    stack = make_stack()
    pkt = syn("2001:db8:1::2", 80)
    send(stack, pkt)
    (open_tcp,) = stack.take_actions()
    stack.handle_event(ev.TcpConnectFailed(open_tcp.flow, errno_), 0.01)
    f = one(stack)
    if code is None:
        assert f[TCP].flags == "RA"
        return
    assert f[ICMPv6DestUnreach].code == code and f[IPv6].src == src and f[IPv6].dst == GUEST
    quoted = f[ICMPv6DestUnreach].payload
    assert quoted[IPerror6].dst == "2001:db8:1::2" and quoted[TCPerror].dport == 80 and quoted[TCPerror].seq == 1000
    check_icmpv6_checksum(f)


def test_tcp_refused_with_disable_host_loopback_is_network_unreachable():
    stack = make_stack(disable_host_loopback=True)
    send(stack, syn("fd00::2", 8080))
    assert stack.take_actions() == []
    f = one(stack)
    assert f[ICMPv6DestUnreach].code == 0
    assert f[ICMPv6DestUnreach].payload[TCPerror].dport == 8080


def test_foreign_link_local_is_address_unreachable():
    stack = make_stack()
    send(stack, syn("fe80::99", 80, src=GUEST_LL))
    f = one(stack)
    assert f[ICMPv6DestUnreach].code == 3 and f[IPv6].src == "fe80::2"


def test_udp_port_unreachable_comes_from_the_destination():
    stack = make_stack()
    send(stack, IPv6(src=GUEST, dst="2001:db8:1::2") / UDP(sport=5000, dport=9) / b"x")
    open_udp, send_udp = stack.take_actions()
    assert send_udp.addr == P("2001:db8:1::2")
    stack.handle_event(ev.UdpFailed(open_udp.flow, errno.ECONNREFUSED, P("2001:db8:1::2"), 9), 0.1)
    f = one(stack)
    err = f[ICMPv6DestUnreach]
    assert err.code == 4 and f[IPv6].src == "2001:db8:1::2"
    assert err.payload[UDPerror].sport == 5000 and err.payload[UDPerror].dport == 9 and err.payload[IPerror6].src == GUEST
    check_icmpv6_checksum(f)


def test_udp_refused_is_no_route_and_dns_goes_to_the_forwarder():
    stack = make_stack(disable_host_loopback=True)
    stack.set_resolvers([P("127.0.0.53"), P("2001:db8::53")])
    send(stack, IPv6(src=GUEST, dst="fd00::2") / UDP(sport=5000, dport=9) / b"x")
    assert one(stack)[ICMPv6DestUnreach].code == 0
    query = bytes.fromhex("abcd01000001000000000000") + b"\x03www\x00\x00\x1c\x00\x01"
    send(stack, IPv6(src=GUEST, dst="fd00::3") / UDP(sport=5001, dport=53) / query, dst_mac=DNS_MAC)
    open_udp, send_udp = stack.take_actions()
    assert open_udp.addr == P("127.0.0.53") and send_udp.data == query
    stack.handle_event(ev.UdpReceived(open_udp.flow, P("127.0.0.53"), 53, query), 0.1)
    f = one(stack)
    assert f[IPv6].src == "fd00::3" and f.src == DNS_MAC and f[UDP].sport == 53


def test_policy_v6_rules():
    policy = Policy(PLAN)
    assert policy.route(P("fd00::3"), 53).kind is DNS
    assert policy.route(P("fd00::3"), 80).kind is REFUSE
    r = policy.route(P("fd00::1234"), 80)
    assert (r.kind, r.addr, r.port) == (FORWARD, P("::1"), 80)
    assert policy.route(P("fe80::2"), 80).addr == P("::1")
    assert policy.route(P("fe80::3"), 80).icmp_code == 3
    assert policy.route(P("2001:db8::1"), 443).addr == P("2001:db8::1")
    for bad in ("::1", "::", "::ffff:127.0.0.1", "::ffff:10.0.2.2", "::127.0.0.1", "ff05::1", "127.0.0.1", "0.0.0.1"):
        assert policy.route(P(bad), 80).kind is REFUSE, bad
    off = Policy(PLAN, disable_host_loopback=True, disable_dns=True)
    assert off.route(P("fd00::2"), 80).kind is REFUSE
    assert off.route(P("fd00::3"), 53).kind is REFUSE  # an ordinary fd00::/64 address: the host's ::1, refused


def test_policy_forward_sources_across_families():
    policy = Policy(PLAN)
    v4, v6 = PLAN.guest, P("fd00::100")
    assert policy.forward_source(P("127.0.0.1"), v4) == PLAN.gateway
    assert policy.forward_source(P("::ffff:192.0.2.7"), v4) == P("192.0.2.7")
    assert policy.forward_source(P("::1"), v4) == PLAN.gateway
    assert policy.forward_source(P("2001:db8::7"), v4) == PLAN.gateway
    assert policy.forward_source(P("::1"), v6) == P("fd00::2")
    assert policy.forward_source(P("fe80::1"), v6) == P("fd00::2")
    assert policy.forward_source(P("2001:db8::7"), v6) == P("2001:db8::7")
    assert policy.forward_source(P("::ffff:127.0.0.1"), v6) == P("fd00::2")
    assert policy.forward_source(P("192.0.2.7"), v6) == P("64:ff9b::c000:207")
    assert policy.forward_source(P("::ffff:192.0.2.7"), v6) == P("64:ff9b::c000:207")


def test_tcp_forward_to_a_v6_guest_presents_v4_clients_in_64_ff9b():
    stack = make_stack()
    send(stack, IPv6(src="fd00::100", dst="fd00::2") / ICMPv6EchoRequest())  # guest known
    out(stack)
    flow = stack.tcp_open_to_guest(P("fd00::100"), 80, P("::ffff:192.0.2.7"), 5555, 65536, 0.0)
    assert flow is not None
    f = one(stack)
    assert f[IPv6].src == "64:ff9b::c000:207" and f[IPv6].dst == "fd00::100" and f[TCP].flags == "S"
    assert dict(f[TCP].options)["MSS"] == 1440


# -- fragments ------------------------------------------------------------------------


def test_fragmented_echo_is_reassembled_and_the_big_reply_fragmented():
    stack = make_stack()
    data = bytes(range(256)) * 12  # 3072 bytes: over the 1500 MTU both ways
    pkt = IPv6(src=GUEST, dst="fd00::2") / IPv6ExtHdrFragment(id=77) / ICMPv6EchoRequest(id=5, seq=6, data=data)
    for frag in fragment6(pkt, 1280):
        send(stack, frag)
    frames = out(stack)
    assert len(frames) == 3 and all(len(bytes(f)) <= 14 + 1500 for f in frames)
    assert stack.counters["fragments.reassembled"] == 1
    ids = {f[IPv6ExtHdrFragment].id for f in frames}
    assert len(ids) == 1
    assert [f[IPv6ExtHdrFragment].m for f in frames] == [1, 1, 0]
    whole = b"".join(bytes(f[IPv6ExtHdrFragment].payload) for f in frames)
    rebuilt = IPv6(src="fd00::2", dst=GUEST, nh=58, hlim=255) / Raw(whole)
    reply = IPv6(bytes(rebuilt))
    assert reply[ICMPv6EchoReply].data == data and (reply[ICMPv6EchoReply].id, reply[ICMPv6EchoReply].seq) == (5, 6)
    check_icmpv6_checksum(reply)


def test_large_udp_toward_the_guest_is_fragmented_with_a_complete_checksum():
    stack = make_stack()
    send(stack, IPv6(src=GUEST, dst="2001:db8:1::2") / UDP(sport=5000, dport=7) / b"q")
    open_udp, _ = stack.take_actions()
    payload = bytes(i % 253 for i in range(4000))
    stack.handle_event(ev.UdpReceived(open_udp.flow, P("2001:db8:1::2"), 7, payload), 0.1)
    frames = out(stack)
    assert len(frames) == 3
    whole = b"".join(bytes(f[IPv6ExtHdrFragment].payload) for f in frames)
    pkt = IPv6(bytes(IPv6(src="2001:db8:1::2", dst=GUEST, nh=17) / Raw(whole)))
    assert bytes(pkt[UDP].payload) == payload
    got = pkt[UDP].chksum
    del pkt[UDP].chksum
    assert IPv6(bytes(pkt))[UDP].chksum == got


def test_reassembly_timeout_sends_time_exceeded():
    stack = make_stack()
    pkt = IPv6(src=GUEST, dst="fd00::2") / IPv6ExtHdrFragment(id=78) / ICMPv6EchoRequest(data=b"z" * 3000)
    first = fragment6(pkt, 1280)[0]
    send(stack, first, 5.0)
    assert out(stack) == []
    assert stack.reassembler.next_deadline() == pytest.approx(65.0)  # RFC 8200 §4.5: 60 s
    stack.poll(64.9)
    assert not [f for f in out(stack) if ICMPv6TimeExceeded in f]
    stack.poll(65.0)
    (f,) = [f for f in out(stack) if ICMPv6TimeExceeded in f]
    assert f[ICMPv6TimeExceeded].code == 1 and f[IPv6].src == "fd00::2" and f[IPv6].dst == GUEST


def test_extension_headers_are_walked():
    stack = make_stack()
    pkt = IPv6(src=GUEST, dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest(id=3)
    send(stack, pkt)
    assert one(stack)[ICMPv6EchoReply].id == 3


# -- off, and hostile input ----------------------------------------------------------


def test_without_enable_ipv6_frames_are_dropped_and_counted():
    stack = make_stack(enable_ipv6=False)
    send(stack, IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS())
    send(stack, syn("fd00::2", 80))
    assert out(stack) == [] and stack.take_actions() == []
    assert stack.counters["ipv6.disabled"] == 2
    assert stack.next_deadline() is None


@pytest.mark.parametrize(
    "pkt,counter",
    [
        (IPv6(src="ff02::1", dst="fd00::2") / ICMPv6EchoRequest(), "ipv6.bad_source"),
        (IPv6(src="::1", dst="fd00::2") / ICMPv6EchoRequest(), "ipv6.bad_source"),
        (IPv6(src=GUEST, dst="::ffff:127.0.0.1") / TCP(dport=80, flags="S"), "ipv6.bad_destination"),
        (IPv6(src=GUEST, dst="::1") / UDP(dport=53), "ipv6.bad_destination"),
        (IPv6(src=GUEST, dst="fd00::2", nh=59), "ipv6.no_next_header"),
        (IPv6(src=GUEST, dst="fd00::2", nh=50) / Raw(b"x" * 16), "ipv6.unknown_protocol"),
        (IPv6(src=GUEST, dst="fd00::2") / IPv6ExtHdrDestOpt(options=[]) / Raw(b""), "ipv6.no_next_header"),
    ],
)
def test_hostile_packets_are_counted_drops(pkt, counter):
    stack = make_stack()
    send(stack, pkt)
    assert out(stack) == [] and stack.take_actions() == []
    assert stack.counters[counter] == 1


def test_bad_icmpv6_checksum_is_dropped():
    stack = make_stack()
    pkt = IPv6(src=GUEST, dst="fd00::2") / ICMPv6EchoRequest(cksum=0x1234)
    send(stack, pkt)
    assert out(stack) == [] and stack.counters["icmpv6.bad_checksum"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 255), st.sampled_from([0, 6, 17, 43, 44, 58, 60]))
def test_garbage_after_an_ipv6_header_never_raises(body, hlim, nh):
    stack = make_stack()
    frame = bytes(Ether(dst=GW_MAC, src=GUEST_MAC) / IPv6(src=GUEST, dst="fd00::2", nh=nh, hlim=hlim) / Raw(body))
    stack.frame_from_guest(memoryview(VNET + frame), 0.0)
    stack.frame_from_guest(memoryview(VNET + frame[: 14 + 40 + len(body) // 2]), 0.0)
    stack.take_frames()
    stack.take_actions()
    assert stack.counters.total() >= 1
