"""ARP as the guest's gateway (compat spec §4.1) and the neighbour table behind it."""

import pytest

from netstack.neighbors import MAX_ENTRIES, MAX_PENDING, MAX_PENDING_ADDRS, Neighbors
from netstack.counters import Counters

from .harness import (
    ARP,
    BROADCAST_MAC,
    DNS_MAC,
    GUEST,
    GUEST_MAC,
    GW,
    GW_MAC,
    OTHER_MAC,
    TCP,
    UDP,
    Ether,
    Guest,
    encode,
    packed,
)


def who_has(target, sender_ip=GUEST, sender_mac=GUEST_MAC, dst=BROADCAST_MAC):
    return Ether(dst=dst, src=GUEST_MAC) / ARP(op=1, hwsrc=sender_mac, psrc=sender_ip, pdst=target)


@pytest.mark.parametrize("target, mac", [(GW, GW_MAC), ("10.0.2.3", DNS_MAC)])
def test_gateway_and_dns_answer_with_52_55_and_their_address(target, mac):
    g = Guest()
    reply = g.send(who_has(target)).only_frame()
    assert reply.pkt[Ether].dst == GUEST_MAC and reply.pkt[Ether].src == mac
    arp = reply.pkt[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (2, mac, target, GUEST_MAC, GUEST)
    assert len(reply.raw) == 14 + 28


def test_unicast_request_to_our_mac_is_answered_too():
    g = Guest()
    assert g.send(who_has(GW, dst=GW_MAC)).only_frame().pkt[ARP].psrc == GW


@pytest.mark.parametrize("options", [{}, {"disable_host_loopback": True, "disable_dns": True}])
def test_answered_whatever_the_loopback_and_dns_options(options):
    g = Guest(**options)
    assert g.send(who_has(GW)).only_frame().pkt[ARP].hwsrc == GW_MAC
    assert g.send(who_has("10.0.2.3")).only_frame().pkt[ARP].hwsrc == DNS_MAC


def test_addresses_follow_the_cidr():
    # compat spec §2 example: 10.0.135.128/25 → gateway .130, DNS .131
    g = Guest(cidr="10.0.135.128/25")
    g.ip = "10.0.135.228"
    assert g.send(who_has("10.0.135.130", sender_ip=g.ip)).only_frame().pkt[ARP].hwsrc == "52:55:0a:00:87:82"
    assert g.send(who_has("10.0.135.131", sender_ip=g.ip)).only_frame().pkt[ARP].hwsrc == "52:55:0a:00:87:83"
    g.send(who_has(GW, sender_ip=g.ip)).dropped("arp.not_for_us")  # 10.0.2.2 means nothing here


@pytest.mark.parametrize("target", ["10.0.2.1", "10.0.2.4", "10.0.2.15", "10.0.2.255", "192.0.2.1", GUEST])
def test_only_our_two_addresses_are_answered(target):
    Guest().send(who_has(target)).dropped("arp.not_for_us")


def test_probe_from_0_0_0_0_is_answered_and_nothing_is_learned():
    # RFC 5227 address probe: the prober learns that 10.0.2.2 is taken.
    g = Guest()
    reply = g.send(who_has(GW, sender_ip="0.0.0.0")).only_frame().pkt[ARP]
    assert (reply.psrc, reply.pdst, reply.hwdst) == (GW, "0.0.0.0", GUEST_MAC)
    assert g.stack.neighbors.lookup(bytes(4)) is None


def test_group_sender_mac_in_the_arp_body_is_refused():
    g = Guest()
    g.send(who_has(GW, sender_mac="01:00:5e:00:00:01")).dropped("arp.bad_sender")
    assert g.stack.neighbors.lookup(packed(GUEST)) is None


@pytest.mark.parametrize(
    "offset, value, counter",
    [
        (0, b"\x00\x06", "arp.bad_hardware_type"),  # IEEE 802 instead of Ethernet
        (2, b"\x86\xdd", "arp.bad_protocol_type"),
        (4, b"\x06\x10", "arp.bad_address_length"),
        (4, b"\x08\x04", "arp.bad_address_length"),
        (6, b"\x00\x03", "arp.bad_operation"),  # RARP request
        (6, b"\x00\x00", "arp.bad_operation"),
    ],
)
def test_malformed_arp(offset, value, counter):
    raw = bytearray(encode(who_has(GW)))
    raw[24 + offset : 24 + offset + len(value)] = value
    Guest().send_raw(bytes(raw)).dropped(counter)


def test_truncated_arp():
    raw = encode(who_has(GW))[: 24 + 27]
    Guest().send_raw(raw).dropped("arp.truncated")


def test_padding_after_the_arp_packet_is_ignored():
    raw = encode(who_has(GW)) + bytes(18)  # padded to the 60-byte minimum
    assert Guest().send_raw(raw).only_frame().pkt[ARP].op == 2


# -- learning and asking ------------------------------------------------------------


def _forward_udp(g, data=b"hello", guest=GUEST):
    """A datagram on a UDP port forward toward the guest (something we must send it)."""
    return g.call(g.stack.udp_forward_from_host, packed(guest), 5353, packed("192.0.2.9"), 7777, data)


def test_an_unknown_guest_is_asked_for_from_the_gateway_and_its_frames_wait():
    g = Guest()
    ask = _forward_udp(g).only_frame()
    assert ask.pkt[Ether].dst == BROADCAST_MAC and ask.pkt[Ether].src == GW_MAC
    arp = ask.pkt[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (1, GW_MAC, GW, "00:00:00:00:00:00", GUEST)
    # The guest answers: the parked datagram goes out to the MAC it gave.
    answer = Ether(dst=GW_MAC, src=OTHER_MAC) / ARP(op=2, hwsrc=OTHER_MAC, psrc=GUEST, hwdst=GW_MAC, pdst=GW)
    sent = g.send(answer).only_frame()
    assert sent.pkt[Ether].dst == OTHER_MAC and bytes(sent.pkt[UDP].payload) == b"hello"
    # Known now: the next one goes straight out.
    assert _forward_udp(g, b"again").only_frame().pkt[Ether].dst == OTHER_MAC


def test_learned_from_ip_datagrams_and_gratuitous_arp_and_updated():
    g = Guest()
    g.send(g.udp("192.0.2.1", 9, b"x"))  # any datagram from the guest teaches its MAC
    assert _forward_udp(g).only_frame().pkt[Ether].dst == GUEST_MAC
    # The guest's MAC changed (announcement): frames follow it.
    g.send(Ether(dst=BROADCAST_MAC, src=OTHER_MAC) / ARP(op=1, hwsrc=OTHER_MAC, psrc=GUEST, pdst=GUEST))
    assert _forward_udp(g).only_frame().pkt[Ether].dst == OTHER_MAC


def test_waiting_frames_keep_their_order():
    g = Guest()
    assert len(_forward_udp(g, b"1").frames) == 1  # the ARP request
    for data in (b"2", b"3"):
        _forward_udp(g, data)
    answer = Ether(dst=GW_MAC, src=GUEST_MAC) / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=GW_MAC, pdst=GW)
    sent = g.send(answer).only_frames()
    assert [bytes(f.pkt[UDP].payload) for f in sent] == [b"1", b"2", b"3"]


# -- the table itself ------------------------------------------------------------------


def test_table_forgets_the_oldest_learned_beyond_its_bound():
    n = Neighbors(Counters())
    for i in range(MAX_ENTRIES + 1):
        n.learn(i.to_bytes(4, "big"), b"\x02" + i.to_bytes(5, "big"))
    assert n.lookup((0).to_bytes(4, "big")) is None
    assert n.lookup((1).to_bytes(4, "big")) == b"\x02" + (1).to_bytes(5, "big")
    assert n.lookup(MAX_ENTRIES.to_bytes(4, "big")) is not None


def test_relearning_with_a_new_mac_makes_an_entry_young_again():
    n = Neighbors(Counters())
    n.learn(b"\0\0\0\0", b"\x02" * 6)
    for i in range(1, MAX_ENTRIES):
        n.learn(i.to_bytes(4, "big"), b"\x02" * 6)
    n.learn(b"\0\0\0\0", b"\x04" * 6)  # a new MAC: learned again, now
    n.learn(b"\xff\0\0\0", b"\x02" * 6)  # one over the bound: the oldest (address 1) goes
    assert n.lookup(b"\0\0\0\0") == b"\x04" * 6
    assert n.lookup(b"\0\0\0\1") is None


# -- an address that does not answer at once ---------------------------------------------


def test_a_forward_to_a_guest_that_missed_the_first_request_is_asked_again():
    # The port forward's SYN arrives before the guest's interface is up: the
    # first ARP request is lost.  Each retransmission asks again, so the
    # connection completes once the guest answers, as with slirp4netns.
    g = Guest()
    first = g.call(g.stack.tcp_open_to_guest, packed(GUEST), 80, packed("127.0.0.1"), 5555, 1 << 20)
    assert first.only_frame().pkt[ARP].pdst == GUEST
    retry = g.run_until(g.stack.next_deadline())  # the SYN's retransmission timer
    assert retry.counters.get("tcp.retransmits") == 1
    assert [f.pkt[ARP].pdst for f in retry.frames] == [GUEST]
    answer = Ether(dst=GW_MAC, src=GUEST_MAC) / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=GW_MAC, pdst=GW)
    syns = g.send(answer).only_frames()
    assert [str(f.pkt[TCP].flags) for f in syns] == ["S", "S"] and syns[-1].pkt[TCP].sport == 5555


def test_a_full_queue_keeps_the_newest_frames_and_keeps_asking():
    g = Guest()
    for i in range(MAX_PENDING + 5):
        x = _forward_udp(g, b"%d" % i)
        assert [f.pkt[ARP].pdst for f in x.frames] == [GUEST]  # asked each time
    assert g.stack.counters["neighbors.pending_overflow"] == 5
    answer = Ether(dst=GW_MAC, src=GUEST_MAC) / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=GW_MAC, pdst=GW)
    sent = g.send(answer).only_frames()
    assert [bytes(f.pkt[UDP].payload) for f in sent] == [b"%d" % i for i in range(5, MAX_PENDING + 5)]


def test_too_many_unresolved_addresses_forget_the_one_waiting_longest():
    g = Guest()
    addrs = [f"10.0.2.{i}" for i in range(100, 100 + MAX_PENDING_ADDRS + 1)]
    for addr in addrs:
        assert _forward_udp(g, addr.encode(), guest=addr).only_frame().pkt[ARP].pdst == addr
    assert g.stack.counters["neighbors.pending_overflow"] == 1
    # The newest can still be resolved; the oldest was forgotten.
    for addr, expected in ((addrs[-1], [addrs[-1].encode()]), (addrs[0], [])):
        mac = "52:54:00:00:00:01"
        answer = Ether(dst=GW_MAC, src=mac) / ARP(op=2, hwsrc=mac, psrc=addr, hwdst=GW_MAC, pdst=GW)
        assert [bytes(f.pkt[UDP].payload) for f in g.send(answer).frames] == expected


def test_park_asks_for_a_solicitation_every_time_and_keeps_the_newest():
    n = Neighbors(Counters())
    addr = b"\x0a\0\2\x64"
    assert all([n.park(addr, lambda mac, i=i: (mac, i)) for i in range(MAX_PENDING + 1)])
    assert n.counters["neighbors.pending_overflow"] == 1
    builds = n.learn(addr, b"\x02" * 6)
    assert [build(b"\x02" * 6) for build in builds] == [(b"\x02" * 6, i) for i in range(1, MAX_PENDING + 1)]
    assert n.learn(addr, b"\x02" * 6) == []
