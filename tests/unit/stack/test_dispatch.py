"""Stack dispatch: vnet header → Ethernet (MAC filter) → EtherType → IPv4 → protocol.

Every early return on ingress is counted under one name (STYLE.md §3); each
hostile or odd frame here must come back as exactly one counter and nothing
else.
"""

import struct

import pytest

from netstack import events as ev
from netstack.actions import OpenTcp, OpenUdp, SendTcp, SendUdp

from .harness import (
    ARP,
    BROADCAST_MAC,
    DNS,
    DNS_MAC,
    F_DATA_VALID,
    GUEST,
    GUEST_MAC,
    GW,
    GW_MAC,
    ICMP,
    IP,
    OTHER_MAC,
    REMOTE,
    TCP,
    UDP,
    Ether,
    Guest,
    encode,
    packed,
)


def _ip_bytes(pkt) -> bytearray:
    """The full frame (vnet header included), checksums complete, to patch."""
    return bytearray(encode(pkt))


IP_OFF = 10 + 14  # the IPv4 header in a raw frame


def _fix_ip_checksum(raw: bytearray) -> bytearray:
    from scapy.utils import checksum

    ihl = (raw[IP_OFF] & 0xF) * 4
    raw[IP_OFF + 10 : IP_OFF + 12] = b"\0\0"
    raw[IP_OFF + 10 : IP_OFF + 12] = struct.pack("!H", checksum(bytes(raw[IP_OFF : IP_OFF + ihl])))
    return raw


# -- vnet and Ethernet ------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 9])
def test_shorter_than_a_vnet_header(n):
    Guest().send_raw(bytes(n)).dropped("vnet.truncated")


@pytest.mark.parametrize("n", [0, 6, 13])
def test_shorter_than_an_ethernet_header(n):
    Guest().send_raw(bytes(10) + b"\xff" * n).dropped("eth.truncated")


@pytest.mark.parametrize("ethertype", [0x8100, 0x88CC, 0x0842, 0x0600])
def test_unknown_ethertype(ethertype):
    # 802.1Q-tagged frames, LLDP, wake-on-LAN...: nothing we speak.
    Guest().send(Ether(dst=BROADCAST_MAC, src=GUEST_MAC, type=ethertype) / (b"\0" * 46)).dropped(
        "eth.unknown_ethertype"
    )


def test_ipv6_while_ipv6_is_off_is_one_counted_drop():
    from scapy.layers.inet6 import IPv6

    pkt = Ether(dst="33:33:00:00:00:01", src=GUEST_MAC) / IPv6(src="fd00::64", dst="ff02::1") / UDP()
    Guest().send(pkt).dropped("ipv6.disabled")


@pytest.mark.parametrize("dst", [OTHER_MAC, "00:00:00:00:00:00", "52:55:0a:00:02:04"])
def test_unicast_to_a_mac_that_is_not_ours(dst):
    # Addressed to someone else, even an ARP request for the gateway is not ours to answer.
    g = Guest()
    g.send(Ether(dst=dst, src=GUEST_MAC) / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GW)).dropped("eth.not_for_us")
    g.send(g.ip4(GW, mac=dst) / ICMP()).dropped("eth.not_for_us")


@pytest.mark.parametrize("dst_mac", [GW_MAC, DNS_MAC, BROADCAST_MAC, "01:00:5e:00:00:01"])
def test_our_macs_broadcast_and_multicast_are_taken(dst_mac):
    # Both of our MACs and every group address pass the filter; what the
    # datagram is for is up to the layers above (here: ping the gateway).
    g = Guest()
    reply = g.send(g.ip4(GW, mac=dst_mac) / ICMP(id=1, seq=2)).only_frame()
    assert reply.pkt[ICMP].type == 0
    assert reply.pkt[Ether].src == GW_MAC  # the gateway answers with its own MAC


@pytest.mark.parametrize("src_mac", [BROADCAST_MAC, "01:00:5e:00:00:01", "33:33:00:00:00:01", "00:00:00:00:00:00"])
def test_a_group_or_zero_source_mac_is_dropped_and_not_learned(src_mac):
    # IEEE 802: a source address is always an individual one.  Learning a
    # group MAC for the guest's address would send its unicast traffic to
    # broadcast, which the guest's TCP discards.
    g = Guest()
    pkt = Ether(dst=GW_MAC, src=src_mac) / IP(src=GUEST, dst=GW) / ICMP()
    g.send(pkt).dropped("eth.bad_source")
    # The guest's address was not learned: a frame toward it needs ARP first.
    x = g.call(g.stack.udp_forward_from_host, packed(GUEST), 5000, packed("192.0.2.9"), 7, b"x")
    arp = x.only_frame()
    assert arp.pkt[ARP].op == 1 and arp.pkt[ARP].pdst == GUEST


def test_a_group_source_mac_is_dropped_before_ipv6_too():
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    g = Guest(enable_ipv6=True)
    pkt = Ether(dst=GW_MAC, src=BROADCAST_MAC) / IPv6(src="fd00::64", dst="fd00::2") / ICMPv6EchoRequest()
    g.send(pkt).dropped("eth.bad_source")


# -- IPv4 -------------------------------------------------------------------------------


def test_ipv4_shorter_than_its_header():
    g = Guest()
    g.send(Ether(dst=GW_MAC, src=GUEST_MAC, type=0x0800) / (b"\x45" + bytes(18))).dropped("ipv4.truncated")


def test_ipv4_total_length_beyond_the_frame():
    g = Guest()
    raw = _ip_bytes(g.ip4(GW) / ICMP() / b"abcd")
    raw[IP_OFF + 2 : IP_OFF + 4] = struct.pack("!H", 200)
    g.send_raw(bytes(_fix_ip_checksum(raw))).dropped("ipv4.truncated")


@pytest.mark.parametrize(
    "patch, counter",
    [
        (lambda r: r.__setitem__(IP_OFF, 0x65), "ipv4.bad_version"),
        (lambda r: r.__setitem__(IP_OFF, 0x44), "ipv4.bad_ihl"),
        (lambda r: r.__setitem__(slice(IP_OFF + 2, IP_OFF + 4), b"\x00\x10"), "ipv4.bad_total_length"),
        (lambda r: r.__setitem__(IP_OFF + 8, r[IP_OFF + 8] ^ 1), "ipv4.bad_checksum"),  # TTL changed, checksum not
    ],
)
def test_malformed_ipv4_header(patch, counter):
    g = Guest()
    raw = _ip_bytes(g.ip4(GW) / ICMP())
    patch(raw)
    g.send_raw(bytes(raw)).dropped(counter)


@pytest.mark.parametrize(
    "src", ["127.0.0.1", "127.1.2.3", "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1"]
)
def test_martian_sources(src):
    g = Guest()
    g.send(g.ip4(REMOTE, src=src) / UDP(sport=1, dport=2)).dropped("ipv4.bad_source")


@pytest.mark.parametrize("proto", [0, 2, 47, 50, 132, 255])
def test_unknown_ip_protocol(proto):
    g = Guest()
    g.send(g.ip4(REMOTE, proto=proto) / (b"\0" * 20)).dropped("ipv4.unknown_protocol")


def test_ethernet_padding_never_reaches_the_payload():
    # A short datagram in a 60-byte minimum frame: the echo data is the
    # datagram's, not the pad's.
    g = Guest()
    raw = encode(g.ip4(GW) / ICMP(id=5, seq=6) / b"ab") + b"\xee" * 20
    reply = g.send_raw(raw).only_frame()
    assert bytes(reply.pkt[ICMP].payload) == b"ab"


def test_ip_options_are_skipped():
    from scapy.layers.inet import IPOption_Router_Alert

    g = Guest()
    x = g.send(g.ip4(REMOTE, options=[IPOption_Router_Alert()]) / UDP(sport=4000, dport=4001) / b"opt", offload=True)
    assert x.only_actions(OpenUdp, SendUdp)[1].data == b"opt"


# -- transport headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "l4, counter",
    [
        (b"\x00\x01\x00", "udp.truncated"),
        (bytes.fromhex("0fa00fa1000400000000"), "udp.bad_length"),  # length 4 < 8
        (b"\x9c\x40\x00\x50" + bytes(10), "tcp.truncated"),
        (b"\x9c\x40\x00\x50" + bytes(8) + b"\x40" + bytes(7), "tcp.bad_data_offset"),  # offset 4
        (b"\x08\x00\xf7", "icmpv4.truncated"),
    ],
)
def test_truncated_transport_headers(l4, counter):
    g = Guest()
    proto = {"udp": 17, "tcp": 6, "icmpv4": 1}[counter.split(".")[0]]
    g.send(g.ip4(REMOTE, proto=proto) / l4, flags=F_DATA_VALID).dropped(counter)


def test_udp_checksum_is_verified_unless_offloaded():
    g = Guest()
    good = g.udp(REMOTE, 7, b"payload")
    raw = bytearray(encode(good))
    raw[-1] ^= 0x55  # payload changed after the checksum
    g.send_raw(bytes(raw)).dropped("udp.bad_checksum")
    # The same bytes with NEEDS_CSUM (checksum left to us) or DATA_VALID: taken.
    for flags in (1, F_DATA_VALID):
        raw[0] = flags
        x = g.send_raw(bytes(raw))
        assert x.actions[-1] == SendUdp(x.actions[-1].flow, packed(REMOTE), 7, b"payloa" + bytes([ord("d") ^ 0x55]))


def test_udp_zero_checksum_means_none():
    g = Guest()
    raw = bytearray(encode(g.udp(REMOTE, 7, b"no checksum")))
    raw[IP_OFF + 20 + 6 : IP_OFF + 20 + 8] = b"\0\0"
    assert g.send_raw(bytes(raw)).only_actions(OpenUdp, SendUdp)[1].data == b"no checksum"


def test_tcp_checksum_is_verified_unless_offloaded():
    g = Guest()
    syn = g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="S", seq=1000)
    raw = bytearray(encode(syn))
    raw[IP_OFF + 20 + 16] ^= 0xFF
    g.send_raw(bytes(raw)).dropped("tcp.bad_checksum")
    raw[0] = 1  # NEEDS_CSUM: the field is the guest kernel's partial seed, not ours to check
    x = g.send_raw(bytes(raw))
    assert x.only_action(OpenTcp).addr == packed(REMOTE)


def test_icmp_checksum_is_always_verified():
    g = Guest()
    raw = bytearray(encode(g.ip4(GW) / ICMP(id=1, seq=1) / b"x"))
    raw[-1] ^= 1
    g.send_raw(bytes(raw)).dropped("icmpv4.bad_checksum")
    raw[0] = 1  # offload flags say nothing about ICMP
    g.send_raw(bytes(raw)).dropped("icmpv4.bad_checksum")


def test_tso_super_frame_from_the_guest_is_one_segment():
    # A 20 000-byte TSO frame (NEEDS_CSUM, GSO TCPV4) is handed to the flow whole.
    g = Guest()
    syn = g.send(g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="S", seq=100, options=[("MSS", 1460)]))
    flow = syn.only_action(OpenTcp).flow
    synack = g.event(ev.TcpConnected(flow, 1 << 20)).only_frame().pkt[TCP]
    g.send(g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="A", seq=101, ack=synack.seq + 1))
    data = bytes(range(256)) * 78 + bytes(32)
    assert len(data) == 20000
    seg = g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=synack.seq + 1) / data
    x = g.send(seg, offload=True, gso_size=1448)
    assert [a for a in x.actions if isinstance(a, SendTcp)] == [SendTcp(flow, data)]


def test_unicast_ip_to_the_dns_mac_is_served_like_to_the_gateway_mac():
    g = Guest()
    x = g.send(g.udp(DNS, 53, b"\x00\x01" + bytes(10), mac=DNS_MAC))
    assert [type(a) for a in x.actions] == [OpenUdp, SendUdp]
