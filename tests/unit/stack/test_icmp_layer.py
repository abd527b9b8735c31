"""ICMP through the stack: own echo (TTL 255), the ping relay (EchoNat),
errors toward the guest, reassembly time-outs (compat spec §4.1)."""

import struct

import pytest
from scapy.utils import checksum

from netstack import events as ev
from netstack.actions import ClosePing, OpenPing, SendPing
from netstack.icmp import ECHO_IDLE_TIMEOUT_S
from netstack.nat import DEFAULT_LIMITS, PROTO_ICMP

from .harness import (
    DNS,
    DNS_MAC,
    GUEST,
    GUEST_MAC,
    GW,
    GW_MAC,
    ICMP,
    IP,
    REMOTE,
    UDP,
    Guest,
    encode,
    icmp_quote,
    packed,
    reassemble,
)


def _fragments(g, dst, payload, size):
    """The guest's own fragments of an ICMP echo of ``payload`` (scapy)."""
    from scapy.layers.inet import fragment

    return [g.eth() / f for f in fragment(IP(src=g.ip, dst=dst, id=4242) / ICMP(id=9, seq=1) / payload, fragsize=size)]


# -- the stack's own addresses --------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{}, {"disable_host_loopback": True}, {"disable_dns": True}, {"ping_relay": False}]
)
@pytest.mark.parametrize("dst, mac", [(GW, GW_MAC), (DNS, DNS_MAC)])
def test_echo_to_gateway_and_dns_is_answered_by_the_stack_with_ttl_255(options, dst, mac):
    g = Guest(**options)
    reply = g.send(g.ip4(dst, ttl=3) / ICMP(type=8, id=0x1234, seq=77) / b"ping data").only_frame()
    assert reply.pkt[IP].ttl == 255
    assert (reply.pkt.src, reply.pkt.dst) == (mac, GUEST_MAC)
    assert (reply.pkt[IP].src, reply.pkt[IP].dst) == (dst, GUEST)
    icmp = reply.pkt[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq, bytes(icmp.payload)) == (0, 0, 0x1234, 77, b"ping data")


def test_own_echo_follows_the_cidr():
    g = Guest(cidr="10.0.135.128/25")
    g.ip = "10.0.135.228"
    reply = g.send(g.ip4("10.0.135.131", mac="52:55:0a:00:87:83") / ICMP(id=1, seq=1)).only_frame()
    assert (reply.pkt[IP].src, reply.pkt.src, reply.pkt[IP].ttl) == ("10.0.135.131", "52:55:0a:00:87:83", 255)


def test_big_echo_is_reassembled_and_answered_in_fragments():
    g = Guest()
    payload = bytes(range(256)) * 12  # 3072 bytes: three fragments each way at MTU 1500
    frames = _fragments(g, GW, payload, 1480)
    for f in frames[:-1]:
        g.send(f).nothing()
    out = g.send(frames[-1]).only_frames()
    assert g.stack.counters["fragments.reassembled"] == 1
    assert len(out) == 3
    assert all(len(f.raw) - 14 <= 1500 and f.pkt[IP].ttl == 255 for f in out)
    assert len({f.pkt[IP].id for f in out}) == 1
    whole = reassemble(out)
    assert (whole[ICMP].type, whole[ICMP].id, bytes(whole[ICMP].payload)) == (0, 9, payload)


def test_small_mtu_fragments_to_it():
    g = Guest(mtu=576)
    frames = _fragments(g, GW, b"x" * 1000, 552)
    for f in frames:
        x = g.send(f)
    out = x.only_frames()
    assert all(len(f.raw) - 14 <= 576 for f in out) and len(out) == 2
    assert bytes(reassemble(out)[ICMP].payload) == b"x" * 1000


@pytest.mark.parametrize("icmp_type", [0, 3, 5, 11, 13, 17])
def test_other_icmp_from_the_guest_is_ignored(icmp_type):
    # replies, errors, redirects, timestamps, mask requests: nothing of ours asked
    g = Guest()
    g.send(g.ip4(GW) / ICMP(type=icmp_type, code=0) / (b"\x45" + bytes(27))).dropped("icmpv4.ignored")


# -- the ping relay ------------------------------------------------------------------------


def test_echo_to_an_outside_address_is_relayed_through_a_ping_socket():
    g = Guest()
    x = g.send(g.ip4(REMOTE) / ICMP(id=0x77, seq=1) / b"abc")
    opened, sent = x.only_actions(OpenPing, SendPing)
    assert opened.addr == packed(REMOTE)
    assert sent == SendPing(opened.flow, packed(REMOTE), 1, b"abc")
    # The same guest, identifier and destination: the same flow.
    assert g.send(g.ip4(REMOTE) / ICMP(id=0x77, seq=2) / b"abc").only_actions(SendPing)[0].flow == opened.flow
    # The host socket's reply (the kernel's own identifier) goes back with the guest's.
    reply = g.event(ev.PingReplied(opened.flow, packed(REMOTE), 2, b"abc")).only_frame()
    assert (reply.pkt[IP].src, reply.pkt[IP].dst, reply.pkt[IP].ttl) == (REMOTE, GUEST, 64)
    assert reply.pkt.src == GW_MAC
    icmp = reply.pkt[ICMP]
    assert (icmp.type, icmp.id, icmp.seq, bytes(icmp.payload)) == (0, 0x77, 2, b"abc")


def test_another_identifier_or_destination_is_another_flow():
    g = Guest()
    flows = set()
    for dst, ident in ((REMOTE, 1), (REMOTE, 2), ("198.51.100.1", 1)):
        flows.add(g.send(g.ip4(dst) / ICMP(id=ident, seq=1)).only_actions(OpenPing, SendPing)[0].flow)
    assert len(flows) == 3


def test_idle_relay_flows_close_after_their_timeout_and_replies_keep_them():
    g = Guest()
    flow = g.send(g.ip4(REMOTE) / ICMP(id=1, seq=1)).actions[0].flow
    g.run_until(40)
    g.event(ev.PingReplied(flow, packed(REMOTE), 1, b""))  # activity at 40
    g.run_until(40 + ECHO_IDLE_TIMEOUT_S - 1).nothing()
    assert g.run_until(40 + ECHO_IDLE_TIMEOUT_S).only_actions() == [ClosePing(flow)]
    assert g.stack.next_deadline() is None
    g.event(ev.PingReplied(flow, packed(REMOTE), 2, b"")).dropped("icmpv4.no_flow")


def test_relay_table_full_evicts_the_least_recently_used():
    g = Guest()
    limit = DEFAULT_LIMITS[PROTO_ICMP]
    first = g.send(g.ip4(REMOTE) / ICMP(id=0, seq=1)).actions[0].flow
    second = g.send(g.ip4(REMOTE) / ICMP(id=1, seq=1)).actions[0].flow
    g.send(g.ip4(REMOTE) / ICMP(id=0, seq=2))  # the first is used again
    raw = bytearray(encode(g.ip4(REMOTE) / ICMP(id=0, seq=1)))
    for ident in range(2, limit):  # the same echo with other identifiers, patched (scapy is slow)
        raw[-8:] = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        raw[-6:-4] = struct.pack("!H", checksum(bytes(raw[-8:])))
        assert [type(a) for a in g.send_raw(bytes(raw)).actions] == [OpenPing, SendPing]
    x = g.send(g.ip4(REMOTE) / ICMP(id=limit, seq=1))
    close, opened, _ = x.only_actions(ClosePing, OpenPing, SendPing)
    assert close == ClosePing(second) and opened.flow not in (first, second)


def test_without_ping_sockets_echo_to_outside_is_dropped_not_faked():
    g = Guest(ping_relay=False)
    g.send(g.ip4(REMOTE) / ICMP(id=1, seq=1)).dropped("icmpv4.no_handler")


@pytest.mark.parametrize("dst", ["224.0.0.1", "239.1.2.3", "255.255.255.255", "0.0.0.0", "0.1.2.3"])
def test_echo_to_group_addresses_is_not_relayed(dst):
    g = Guest()
    g.send(g.ip4(dst, mac="ff:ff:ff:ff:ff:ff") / ICMP(id=1, seq=1)).dropped("icmpv4.echo_not_unicast")


# -- errors toward the guest -----------------------------------------------------------------


def test_reassembly_time_out_sends_time_exceeded_quoting_the_first_fragment():
    g = Guest()
    first = _fragments(g, REMOTE, b"y" * 3000, 1480)[0]
    g.send(first).nothing()
    assert g.stack.next_deadline() == 30.0
    g.run_until(29.9).nothing()
    err = g.run_until(30).only_frame()
    assert g.stack.counters["fragments.expired"] == 1
    assert (err.pkt[IP].src, err.pkt[IP].dst) == (REMOTE, GUEST)
    icmp = err.pkt[ICMP]
    assert (icmp.type, icmp.code) == (11, 1)
    quote = icmp_quote(err)
    sent = bytes(first[IP])
    assert len(quote) == 548 and quote == sent[:548]  # RFC 1812 §4.3.2.3: as much as fits in 576
    assert g.stack.next_deadline() is None


def test_reassembly_time_out_without_the_first_fragment_is_silent():
    g = Guest()
    g.send(_fragments(g, REMOTE, b"y" * 3000, 1480)[1]).nothing()
    x = g.run_until(31)
    x.nothing()
    assert x.counters == {"fragments.expired": 1}


def test_no_error_about_an_error():
    # RFC 1122 §3.2.2: a lost fragment of an ICMP error gets no Time Exceeded.
    from scapy.layers.inet import fragment

    g = Guest()
    quote = bytes(IP(src=REMOTE, dst=g.ip) / UDP()) + bytes(2000)
    err = IP(src=g.ip, dst=REMOTE, id=7) / ICMP(type=3, code=3) / quote
    g.send(g.eth() / fragment(err, fragsize=1480)[0]).nothing()
    g.run_until(31).nothing()


def test_refused_udp_gets_net_unreachable_quoting_the_datagram():
    g = Guest(disable_host_loopback=True)
    sent = g.udp(GW, 5000, b"to host loopback")
    x = g.send(sent)
    err = x.only_frame()
    assert x.counters == {"udp.refused": 1}
    assert (err.pkt[IP].src, err.pkt[IP].dst, err.pkt[ICMP].type, err.pkt[ICMP].code) == (GW, GUEST, 3, 0)
    assert icmp_quote(err) == bytes(sent[IP])


def test_no_error_about_a_broadcast_datagram():
    g = Guest(disable_host_loopback=True)
    x = g.send(g.udp("255.255.255.255", 5000, b"x", mac="ff:ff:ff:ff:ff:ff"))
    x.nothing()
    assert x.counters == {"udp.refused": 1, "icmpv4.error_suppressed": 1}
