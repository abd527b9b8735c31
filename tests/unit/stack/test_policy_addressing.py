"""The address plan (compat spec §2), the destination policy (§4.2, §4.3,
§4.6) and the counters: pure values, tested directly."""

import ipaddress

import pytest

from netstack.addressing import IPV6_GATEWAY, AddressPlan
from netstack.counters import Counters
from netstack.policy import DNS, FORWARD, LOOPBACK4, LOOPBACK6, REFUSE, Policy

from .harness import packed


def plan(cidr="10.0.2.0/24"):
    return AddressPlan.from_network(ipaddress.IPv4Network(cidr))


# -- the address plan ------------------------------------------------------------------


@pytest.mark.parametrize(
    "cidr, gw, dns, guest, first, last",
    [
        ("10.0.2.0/24", "10.0.2.2", "10.0.2.3", "10.0.2.100", "10.0.2.15", "10.0.2.30"),
        ("10.0.135.128/25", "10.0.135.130", "10.0.135.131", "10.0.135.228", "10.0.135.143", "10.0.135.158"),
        ("172.16.0.0/12", "172.16.0.2", "172.16.0.3", "172.16.0.100", "172.16.0.15", "172.16.0.30"),
        ("192.168.7.0/24", "192.168.7.2", "192.168.7.3", "192.168.7.100", "192.168.7.15", "192.168.7.30"),
    ],
)
def test_plan_from_cidr(cidr, gw, dns, guest, first, last):
    p = plan(cidr)
    assert (p.gateway, p.dns, p.guest) == (packed(gw), packed(dns), packed(guest))
    assert (p.dhcp_first, p.dhcp_last) == (packed(first), packed(last))
    assert p.gateway_mac == b"\x52\x55" + packed(gw) and p.dns_mac == b"\x52\x55" + packed(dns)
    net = ipaddress.IPv4Network(cidr)
    assert (p.netmask, p.prefixlen) == (net.netmask.packed, net.prefixlen)


def test_plan_membership_and_macs():
    p = plan()
    assert p.contains(packed("10.0.2.255")) and p.contains(packed("10.0.2.0"))
    assert not p.contains(packed("10.0.3.1")) and not p.contains(packed("fd00::2"))
    assert p.mac_of(packed("10.0.2.2")) == bytes.fromhex("52550a000202")
    assert p.mac_of(packed("10.0.2.3")) == bytes.fromhex("52550a000203")
    assert p.mac_of(packed("10.0.2.100")) is None and p.mac_of(packed("192.0.2.2")) is None


# -- the destination policy ------------------------------------------------------------------

DEFAULT = {}
NO_LOOPBACK = {"disable_host_loopback": True}
NO_DNS = {"disable_dns": True}


@pytest.mark.parametrize(
    "options, dst, port, expected",
    [
        (DEFAULT, "10.0.2.3", 53, (DNS, b"", 0)),
        (DEFAULT, "10.0.2.3", 80, (REFUSE, b"", 0)),
        (NO_LOOPBACK, "10.0.2.3", 53, (DNS, b"", 0)),
        (NO_DNS, "10.0.2.3", 53, (FORWARD, packed("10.0.2.3"), 53)),
        (NO_DNS, "10.0.2.3", 80, (FORWARD, packed("10.0.2.3"), 80)),
        (DEFAULT, "10.0.2.2", 8080, (FORWARD, LOOPBACK4, 8080)),
        (DEFAULT, "255.255.255.255", 9, (FORWARD, LOOPBACK4, 9)),
        (NO_LOOPBACK, "10.0.2.2", 8080, (REFUSE, b"", 0)),
        (NO_LOOPBACK, "255.255.255.255", 9, (REFUSE, b"", 0)),
        (DEFAULT, "10.0.2.50", 22, (FORWARD, packed("10.0.2.50"), 22)),
        (DEFAULT, "10.0.2.100", 22, (FORWARD, packed("10.0.2.100"), 22)),
        (DEFAULT, "192.0.2.1", 443, (FORWARD, packed("192.0.2.1"), 443)),
        (DEFAULT, "fd00::3", 53, (DNS, b"", 0)),
        (DEFAULT, "fd00::3", 80, (REFUSE, b"", 0)),
        (DEFAULT, "fd00::2", 80, (FORWARD, LOOPBACK6, 80)),
        (DEFAULT, "fd00::1234", 80, (FORWARD, LOOPBACK6, 80)),
        (DEFAULT, "ff02::1", 5353, (FORWARD, LOOPBACK6, 5353)),
        (NO_DNS, "fd00::3", 53, (FORWARD, LOOPBACK6, 53)),
        (NO_LOOPBACK, "fd00::2", 80, (REFUSE, b"", 0)),
        (DEFAULT, "2001:db8::1", 443, (FORWARD, packed("2001:db8::1"), 443)),
    ],
)
def test_route(options, dst, port, expected):
    route = Policy(plan(), **options).route(packed(dst), port)
    assert (route.kind, route.addr, route.port) == expected
    if route.kind == REFUSE:
        assert route.icmp_code == 0  # net unreachable (slirp4netns's EPERM)


def test_route_follows_the_cidr():
    p = Policy(plan("10.0.135.128/25"))
    assert p.route(packed("10.0.135.130"), 1).addr == LOOPBACK4
    assert p.route(packed("10.0.135.131"), 53).kind == DNS
    assert p.route(packed("10.0.2.2"), 1).addr == packed("10.0.2.2")  # an ordinary address here


@pytest.mark.parametrize(
    "peer, seen",
    [
        ("127.0.0.1", "10.0.2.2"),
        ("127.200.0.1", "10.0.2.2"),
        ("0.0.0.0", "10.0.2.2"),
        ("10.0.2.77", "10.0.2.2"),  # would look like a guest neighbour
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:127.0.0.1", "10.0.2.2"),  # from a dual-stack listener
        ("::ffff:192.0.2.7", "192.0.2.7"),
    ],
)
def test_forward_source_of_ipv4_peers(peer, seen):
    assert Policy(plan()).forward_source(packed(peer)) == packed(seen)


def test_guest_view_of_host_addresses():
    p = Policy(plan())
    assert p.guest_view_of(LOOPBACK4) == packed("10.0.2.2")
    assert p.guest_view_of(LOOPBACK6) == IPV6_GATEWAY
    assert p.guest_view_of(packed("192.0.2.7")) == packed("192.0.2.7")


# -- counters ----------------------------------------------------------------------------------


def test_counters():
    c = Counters()
    assert c["x.never"] == 0
    c.bump("udp.evicted")
    c.bump("udp.evicted", 3)
    c["fragments.expired"] += 1  # the Counter-style spelling some modules use
    snap = c.snapshot()
    c.bump("udp.evicted")
    assert snap == {"udp.evicted": 4, "fragments.expired": 1}  # a copy
    assert c.total("udp.") == 5 and c.total() == 6
