"""Hostile frames into frame_from_guest (STYLE.md §3, DESIGN.md "Testing"):
arbitrary bytes and mutated valid frames never raise; a frame that is
rejected — nothing comes out — moves exactly one drop counter, by one; and
whatever does come out is a well-formed frame whose checksums scapy accepts.

"Rejected" is decided independently of netstack: a frame with no output and
no counter is only fine if scapy sees one of the few things that are
accepted silently (an ARP reply or a neighbour advertisement, which only
teach the guest's MAC; an IPv4 or IPv6 fragment, held for reassembly; a
DHCP RELEASE or DECLINE, which need no answer).  Stacks with and without
``--enable-ipv6`` are tried.
"""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.layers.inet import IP, UDP
from scapy.layers.dhcp import DHCP
from scapy.packet import Raw
from scapy.utils import mac2str

from netstack import events as ev

from .harness import (
    BOOTP,
    BROADCAST_MAC,
    DNS,
    DNS_MAC,
    GUEST,
    GUEST_MAC,
    GW,
    GW_MAC,
    ICMP,
    REMOTE,
    TCP,
    Guest,
    encode,
)

# Counters that record something that happened, not a reason to drop: a
# refused datagram is counted once as refused, and that no ICMP error could
# be sent about it (RFC 1122 §3.2.2) is an event beside it.
NOT_DROPS = frozenset(
    {
        "fragments.reassembled",
        "fragments.evicted",
        "tcp.passive_opens",
        "tcp.active_opens",
        "tcp.time_wait_reused",
        "icmpv4.error_suppressed",
    }
)


def _corpus() -> list[bytes]:
    g = Guest()
    eth = Ether(src=GUEST_MAC, dst=GW_MAC)
    bcast = Ether(src=GUEST_MAC, dst=BROADCAST_MAC)
    dhcp = (
        bcast / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac2str(GUEST_MAC), xid=1) / DHCP(options=[("message-type", "discover"), "end"])
    )  # fmt: skip
    pkts = [
        bcast / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GW),
        bcast / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GUEST),
        eth / IP(src=GUEST, dst=GW) / ICMP(id=1, seq=1) / b"ping",
        eth / IP(src=GUEST, dst=REMOTE) / ICMP(id=1, seq=1) / b"relay",
        eth / IP(src=GUEST, dst=REMOTE) / ICMP(type=3, code=3) / bytes(IP(src=REMOTE, dst=GUEST) / UDP()),
        eth / IP(src=GUEST, dst=REMOTE) / UDP(sport=4000, dport=9) / b"nat",
        eth / IP(src=GUEST, dst=GW) / UDP(sport=4000, dport=9) / b"loopback",
        Ether(src=GUEST_MAC, dst=DNS_MAC) / IP(src=GUEST, dst=DNS) / UDP(sport=4000, dport=53) / bytes(22),
        dhcp,
        eth / IP(src=GUEST, dst=REMOTE) / TCP(sport=4000, dport=80, flags="S", options=[("MSS", 1460), ("WScale", 7)]),
        eth / IP(src=GUEST, dst=REMOTE) / TCP(sport=4000, dport=80, flags="A", seq=1, ack=2) / b"data",
        eth / IP(src=GUEST, dst=GW, options=b"\x94\x04\x00\x00") / UDP(sport=1, dport=2),
    ]
    frags = fragment(IP(src=GUEST, dst=GW, id=99) / ICMP(id=2, seq=2) / (b"f" * 100), fragsize=48)
    pkts += [eth / frags[0], eth / frags[-1]]
    me6, all_nodes = "fd00::5054:ff:fe12:3456", Ether(src=GUEST_MAC, dst="33:33:00:00:00:01")
    pkts += [
        Ether(src=GUEST_MAC, dst="33:33:ff:00:00:02")
        / IPv6(src=me6, dst="ff02::1:ff00:2", hlim=255)
        / ICMPv6ND_NS(tgt="fd00::2")
        / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC),
        all_nodes / IPv6(src=me6, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=me6) / ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC),
        eth / IPv6(src=me6, dst="fd00::2") / ICMPv6EchoRequest(id=1, seq=1, data=b"ping6"),
        eth / IPv6(src=me6, dst="2001:db8::1") / UDP(sport=4000, dport=9) / b"nat6",
        eth / IPv6(src=me6, dst="2001:db8::1") / TCP(sport=4000, dport=80, flags="S"),
    ]
    big6 = IPv6(src=me6, dst="fd00::2") / IPv6ExtHdrFragment(id=5) / ICMPv6EchoRequest(data=b"x" * 200)
    pkts += [eth / f for f in fragment6(big6, 120)]
    out = [encode(p) for p in pkts]
    out += [encode(p, offload=True) for p in pkts if IP in p and (TCP in p or UDP in p) and not p[IP].flags.MF]
    return out


CORPUS = _corpus()


def _silently_accepted(raw: bytes) -> bool:
    if len(raw) < 24:
        return False
    pkt = Ether(raw[10:])
    if ARP in pkt and len(raw) >= 24 + 8 and raw[24 + 6 : 24 + 8] == b"\x00\x02":
        return True
    if IP in pkt and (pkt[IP].flags.MF or pkt[IP].frag):
        return True
    if IPv6ExtHdrFragment in pkt or ICMPv6ND_NA in pkt:
        return True
    if DHCP in pkt:
        for opt in pkt[DHCP].options:
            if isinstance(opt, tuple) and opt[0] == "message-type" and opt[1] in (4, 7):
                return True
    return False


CONFIGS = [{}, {"enable_ipv6": True}, {"disable_host_loopback": True, "disable_dns": True}, {"ping_relay": False}]


def _check_one(raw: bytes, **config) -> None:
    g = Guest(**config)
    x = g.send_raw(raw)  # the harness decodes (and checks) every frame that comes out
    drops = {k: v for k, v in x.counters.items() if k not in NOT_DROPS}
    if not x.frames and not x.actions:
        if drops:
            assert list(drops.values()) == [1], drops
        else:
            assert _silently_accepted(raw), ("rejected without a counter", raw.hex())
    else:
        assert sum(drops.values()) <= 1, drops


def _fix_ipv4_checksum(raw: bytearray) -> None:
    from scapy.utils import checksum

    if len(raw) < 44 or raw[22:24] != b"\x08\x00" or raw[24] >> 4 != 4:
        return
    ihl = (raw[24] & 15) * 4
    if ihl < 20 or 24 + ihl > len(raw):
        return
    raw[34:36] = b"\0\0"
    raw[34:36] = struct.pack("!H", checksum(bytes(raw[24 : 24 + ihl])))


@st.composite
def mutated(draw):
    raw = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["header", "header", "flip", "set", "cut", "extend", "splice"]))
        if kind == "header" and len(raw) > 24:
            # a byte of the Ethernet, IP or transport header: where the decisions are
            i = draw(st.integers(10, min(len(raw), 80) - 1))
            raw[i] = draw(st.integers(0, 255))
        elif kind == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[draw(st.integers(0, len(raw))) :]
        elif kind == "extend":
            raw += draw(st.binary(max_size=64))
        elif kind == "splice" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            chunk = draw(st.binary(min_size=1, max_size=8))
            raw[i : i + len(chunk)] = chunk
    if draw(st.booleans()):
        _fix_ipv4_checksum(raw)  # so that mutations reach the layers above IPv4
    return bytes(raw)


@st.composite
def shaped(draw):
    """Random bytes behind a plausible vnet + Ethernet header (so they get past the MAC filter)."""
    flags = st.sampled_from([bytes(10), b"\x01" + bytes(9), b"\x02" + bytes(9)])
    vnet = draw(flags | st.binary(min_size=10, max_size=10))
    dst = draw(st.sampled_from([GW_MAC, DNS_MAC, BROADCAST_MAC, "01:00:5e:00:00:01", "52:54:00:00:00:09"]))
    src = draw(st.sampled_from([GUEST_MAC, "01:00:00:00:00:01", "00:00:00:00:00:00"]))
    ethertype = draw(st.sampled_from([0x0800, 0x0806, 0x86DD]) | st.integers(0, 0xFFFF))
    head = mac2str(dst) + mac2str(src) + struct.pack("!H", ethertype)
    body = draw(st.binary(max_size=120))
    raw = bytearray(vnet + head + body)
    if ethertype == 0x0800 and draw(st.booleans()):
        raw[24:25] = b"\x45"  # more of them past the version check...
        _fix_ipv4_checksum(raw)  # ...and the header checksum
    elif ethertype == 0x86DD and len(raw) > 24:
        raw[24] = 0x60 | raw[24] & 15  # past the version check
    return bytes(raw)


ADDRS = [GUEST, GW, DNS, REMOTE, "0.0.0.0", "127.0.0.1", "224.0.0.251", "255.255.255.255", "10.0.2.255", "10.0.2.15"]
PORTS = [0, 53, 67, 68, 80, 5353, 40000]


@st.composite
def crafted(draw):
    """Well-formed frames with odd field values: every decision above IPv4."""
    eth = Ether(
        src=draw(st.sampled_from([GUEST_MAC, "52:54:00:00:00:02"])),
        dst=draw(st.sampled_from([GW_MAC, DNS_MAC, BROADCAST_MAC, "01:00:5e:00:00:fb"])),
    )
    if draw(st.integers(0, 4)) == 0:
        arp = ARP(
            op=draw(st.sampled_from([1, 2, 3])),
            hwsrc=draw(st.sampled_from([GUEST_MAC, "01:00:5e:00:00:01"])),
            psrc=draw(st.sampled_from(ADDRS)),
            pdst=draw(st.sampled_from(ADDRS)),
        )
        return encode(eth / arp)
    ip = IP(
        src=draw(st.sampled_from(ADDRS)),
        dst=draw(st.sampled_from(ADDRS)),
        ttl=draw(st.sampled_from([0, 1, 64])),
        flags=draw(st.sampled_from([0, 2])),
    )
    ports = dict(sport=draw(st.sampled_from(PORTS)), dport=draw(st.sampled_from(PORTS)))
    payload = draw(st.binary(max_size=40))
    kind = draw(st.sampled_from(["udp", "tcp", "icmp", "other"]))
    if kind == "udp":
        l4 = UDP(**ports) / payload
    elif kind == "tcp":
        l4 = TCP(**ports, flags=draw(st.integers(0, 255)), seq=5, ack=draw(st.sampled_from([0, 6]))) / payload
    elif kind == "icmp":
        l4 = ICMP(type=draw(st.sampled_from([0, 3, 8, 11, 13, 42])), code=draw(st.integers(0, 3))) / payload
    else:
        ip.proto = draw(st.sampled_from([2, 47, 50, 132]))
        l4 = Raw(payload)
    pkt = eth / ip / l4
    offload = (TCP in pkt or UDP in pkt) and draw(st.booleans())
    return encode(pkt, offload=offload)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=100))
def test_arbitrary_bytes(raw):
    _check_one(raw)


@SETTINGS
@given(shaped(), st.booleans())
def test_random_bodies_behind_plausible_headers(raw, ipv6):
    _check_one(raw, enable_ipv6=ipv6)


@SETTINGS
@given(crafted(), st.sampled_from(CONFIGS))
def test_odd_but_well_formed_frames(raw, config):
    _check_one(raw, **config)


@SETTINGS
@given(mutated(), st.sampled_from(CONFIGS))
def test_mutated_valid_frames(raw, config):
    _check_one(raw, **config)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(mutated(), st.floats(0, 5), st.booleans()), min_size=1, max_size=25))
def test_sequences_with_host_events_and_time_never_raise(steps):
    # One stack through many frames, the edge answering every action and the
    # clock moving: nothing raises and every frame out is well formed.
    g = Guest(mtu=1280, enable_ipv6=True)
    for raw, dt, answer in steps:
        x = g.send_raw(raw)
        if answer:
            for action in x.actions:
                name = type(action).__name__
                if name == "OpenTcp":
                    g.event(ev.TcpConnected(action.flow, 1 << 16))
                elif name == "SendUdp":
                    g.event(ev.UdpReceived(action.flow, action.addr, action.port, action.data * 40))
                elif name == "SendPing":
                    g.event(ev.PingReplied(action.flow, action.addr, action.seq, action.payload))
                elif name == "SendTcp":
                    g.event(ev.TcpSent(action.flow, len(action.data), 1 << 16))
                    g.event(ev.TcpReceived(action.flow, action.data))
        g.advance(dt)
    g.advance(300)
