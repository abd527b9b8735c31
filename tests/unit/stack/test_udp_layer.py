"""UDP through the stack: NAT flows (one host socket per guest port), the
destination rules, idle expiry and eviction, host failures as ICMP, port
forward sessions, and datagrams toward the guest larger than the MTU."""

import errno
import struct

import pytest

from netstack import events as ev
from netstack.actions import CloseUdp, OpenUdp, ReplyUdp, SendUdp
from netstack.nat import DEFAULT_LIMITS, PROTO_UDP
from netstack.udp import UDP_IDLE_TIMEOUT_S

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
    RESOLVER1,
    UDP,
    Guest,
    encode,
    icmp_quote,
    packed,
    reassemble,
)

LOOPBACK = packed("127.0.0.1")


def _open(g, dst=REMOTE, dport=9999, data=b"q", sport=40000):
    opened, sent = g.send(g.udp(dst, dport, data, sport=sport), offload=True).only_actions(OpenUdp, SendUdp)
    assert opened == OpenUdp(sent.flow, packed(GUEST))  # a socket of the guest's family
    return sent


# -- NAT -----------------------------------------------------------------------------------


def test_first_datagram_opens_a_socket_and_sends():
    sent = _open(Guest(), data=b"hello")
    assert (sent.addr, sent.port, sent.data) == (packed(REMOTE), 9999, b"hello")


def test_one_socket_per_guest_port_whatever_the_destination():
    g = Guest()
    flow = _open(g).flow
    again = g.send(g.udp("198.51.100.7", 123, b"ntp")).only_action(SendUdp)
    assert again == SendUdp(flow, packed("198.51.100.7"), 123, b"ntp")
    other = _open(g, sport=40001)
    assert other.flow != flow


def test_replies_from_any_server_reach_the_guest_port():
    g = Guest()
    flow = _open(g).flow
    for src, sport in ((REMOTE, 9999), ("203.0.113.9", 4444)):
        f = g.event(ev.UdpReceived(flow, packed(src), sport, b"answer")).only_frame()
        assert (f.pkt.src, f.pkt.dst) == (GW_MAC, GUEST_MAC)
        assert (f.pkt[IP].src, f.pkt[UDP].sport, f.pkt[IP].dst, f.pkt[UDP].dport) == (src, sport, GUEST, 40000)
        assert bytes(f.pkt[UDP].payload) == b"answer"
        # Checksum offload toward the guest: NEEDS_CSUM at the UDP field.
        assert (f.vnet.flags, f.vnet.csum_start, f.vnet.csum_offset, f.vnet.gso_type) == (1, 34, 6, 0)


@pytest.mark.parametrize("dst, mac", [(GW, GW_MAC), ("255.255.255.255", "ff:ff:ff:ff:ff:ff")])
def test_gateway_and_limited_broadcast_are_host_loopback(dst, mac):
    g = Guest()
    sent = g.send(g.udp(dst, 5000, b"x", mac=mac)).only_actions(OpenUdp, SendUdp)[1]
    assert (sent.addr, sent.port) == (LOOPBACK, 5000)
    back = g.event(ev.UdpReceived(sent.flow, LOOPBACK, 5000, b"y")).only_frame()
    assert back.pkt[IP].src == GW  # host loopback is shown as the gateway


def test_other_addresses_of_the_virtual_network_are_themselves():
    sent = _open(Guest(), dst="10.0.2.50", dport=7)
    assert sent.addr == packed("10.0.2.50")


def test_dns_address_other_ports_are_unreachable():
    g = Guest()
    x = g.send(g.udp(DNS, 80, b"x", mac=DNS_MAC))
    err = x.only_frame()
    assert (err.pkt[IP].src, err.pkt[ICMP].type, err.pkt[ICMP].code) == (DNS, 3, 0)
    assert err.pkt.src == DNS_MAC


def test_with_dns_disabled_the_dns_address_is_an_ordinary_one():
    g = Guest(disable_dns=True)
    for port in (53, 80):
        sent = g.send(g.udp(DNS, port, b"\0\1" + bytes(10), sport=port + 1)).only_actions(OpenUdp, SendUdp)[1]
        assert (sent.addr, sent.port) == (packed(DNS), port)


@pytest.mark.parametrize("dst", ["224.0.0.251", "239.255.255.250", "232.1.1.1"])
def test_multicast_is_not_relayed(dst):
    g = Guest()
    g.send(g.udp(dst, 5353, b"mdns", mac="01:00:5e:00:00:fb")).dropped("udp.multicast")


@pytest.mark.parametrize("sport, dport", [(0, 53), (5000, 0)])
def test_port_zero(sport, dport):
    g = Guest()
    g.send(g.udp(REMOTE, dport, b"x", sport=sport)).dropped("udp.port_zero")


# -- timers and bounds ------------------------------------------------------------------


def test_idle_flows_expire_and_traffic_either_way_keeps_them():
    g = Guest()
    flow = _open(g).flow
    assert g.stack.next_deadline() == UDP_IDLE_TIMEOUT_S == 240  # compat spec §4.2, as libslirp
    g.run_until(100)
    g.send(g.udp(REMOTE, 9999, b"more")).only_action(SendUdp)  # guest activity at 100
    g.run_until(200)
    g.event(ev.UdpReceived(flow, packed(REMOTE), 9999, b"r"))  # host activity at 200
    g.run_until(200 + UDP_IDLE_TIMEOUT_S - 0.5).nothing()
    assert g.run_until(200 + UDP_IDLE_TIMEOUT_S).only_actions() == [CloseUdp(flow)]
    g.event(ev.UdpReceived(flow, packed(REMOTE), 9999, b"late")).dropped("udp.no_flow")
    g.event(ev.UdpFailed(flow, errno.ECONNREFUSED, packed(REMOTE), 9999)).dropped("udp.no_flow")
    # A new datagram from that port gets a new socket.
    assert _open(g).flow != flow


def test_touch_flows_refreshes_idle_timers_of_datapath_traffic():
    g = Guest()
    flow = _open(g).flow
    g.run_until(200)
    g.stack.touch_flows([flow, 12345], g.now)  # a flow id that is gone is ignored
    g.run_until(UDP_IDLE_TIMEOUT_S + 1).nothing()
    assert g.run_until(200 + UDP_IDLE_TIMEOUT_S).only_actions() == [CloseUdp(flow)]


def _template(g, sport=1):
    raw = bytearray(encode(g.udp(REMOTE, 9999, b"f", sport=sport), offload=True))
    return raw, 10 + 14 + 20  # UDP header offset


def test_full_table_evicts_the_least_recently_used_flow():
    g = Guest()
    limit = DEFAULT_LIMITS[PROTO_UDP]
    raw, udp_off = _template(g)
    flows = []
    for sport in range(1, limit + 1):
        struct.pack_into("!H", raw, udp_off, sport)
        flows.append(g.send_raw(bytes(raw)).actions[-1].flow)
    assert len(set(flows)) == limit and g.stack.counters["udp.evicted"] == 0
    struct.pack_into("!H", raw, udp_off, 1)
    g.now = 1.0
    assert g.send_raw(bytes(raw)).only_action(SendUdp).flow == flows[0]  # port 1 is used again
    struct.pack_into("!H", raw, udp_off, limit + 1)
    x = g.send_raw(bytes(raw))
    close, opened, sent = x.only_actions(CloseUdp, OpenUdp, SendUdp)
    assert close == CloseUdp(flows[1])  # port 2: the least recently used
    assert x.counters == {"udp.evicted": 1}


# -- failures reported by the host socket --------------------------------------------------------


@pytest.mark.parametrize(
    "err, code", [(errno.ECONNREFUSED, 3), (errno.EHOSTUNREACH, 1), (errno.ENETUNREACH, 0), (errno.EACCES, 0)]
)
def test_host_icmp_errors_become_icmp_errors_quoting_the_datagram(err, code):
    g = Guest()
    flow = _open(g, sport=40000).flow
    f = g.event(ev.UdpFailed(flow, err, packed(REMOTE), 9999)).only_frame()
    assert (f.pkt[IP].src, f.pkt[IP].dst, f.pkt[ICMP].type, f.pkt[ICMP].code) == (REMOTE, GUEST, 3, code)
    quote = IP(icmp_quote(f))
    assert (quote.src, quote.dst, quote.proto) == (GUEST, REMOTE, 17)
    assert (quote[UDP].sport, quote[UDP].dport) == (40000, 9999)


def test_failure_toward_host_loopback_comes_from_the_gateway():
    g = Guest()
    flow = g.send(g.udp(GW, 5000, b"x")).actions[-1].flow
    f = g.event(ev.UdpFailed(flow, errno.ECONNREFUSED, LOOPBACK, 5000)).only_frame()
    assert (f.pkt[IP].src, f.pkt[ICMP].code) == (GW, 3)
    assert IP(icmp_quote(f)).dst == GW


# -- toward the guest: size ----------------------------------------------------------------------


def test_largest_unfragmented_reply_fits_the_mtu_exactly():
    g = Guest()
    flow = _open(g).flow
    f = g.event(ev.UdpReceived(flow, packed(REMOTE), 9999, b"z" * 1472)).only_frame()
    assert len(f.raw) == 14 + 1500 and not f.is_fragment and f.vnet.flags == 1


@pytest.mark.parametrize("size, mtu, count", [(1473, 1500, 2), (4000, 1500, 3), (65507, 1500, 45), (1000, 576, 2)])
def test_bigger_replies_are_fragmented_with_a_complete_checksum(size, mtu, count):
    g = Guest(mtu=mtu)
    flow = _open(g).flow
    data = bytes(i % 251 for i in range(size))
    frames = g.event(ev.UdpReceived(flow, packed(REMOTE), 9999, data)).only_frames()
    assert len(frames) == count
    assert all(len(f.raw) - 14 <= mtu and f.vnet.flags == 0 for f in frames)
    whole = reassemble(frames)
    assert (whole.src, whole[UDP].sport, whole[UDP].dport) == (REMOTE, 9999, 40000)
    assert bytes(whole[UDP].payload) == data


# -- port forwards -------------------------------------------------------------------------------


def _forward(g, data, peer="127.0.0.1", peer_port=4444, guest_port=5353):
    return g.call(g.stack.udp_forward_from_host, packed(GUEST), guest_port, packed(peer), peer_port, data)


@pytest.mark.parametrize(
    "peer, seen", [("127.0.0.1", GW), ("127.9.9.9", GW), ("0.0.0.0", GW), ("10.0.2.77", GW), ("192.0.2.7", "192.0.2.7")]
)
def test_forward_sessions_show_loopback_peers_as_the_gateway(peer, seen):
    g = Guest()
    g.hello()
    x = _forward(g, b"to guest", peer=peer)
    f = x.only_frame()
    assert (f.pkt[IP].src, f.pkt[UDP].sport, f.pkt[IP].dst, f.pkt[UDP].dport) == (seen, 4444, GUEST, 5353)
    assert bytes(f.pkt[UDP].payload) == b"to guest"
    session = x.result
    # The guest's answer goes back through the forward's socket.
    reply = g.send(g.udp(seen, 4444, b"from guest", sport=5353)).only_action(ReplyUdp)
    assert reply == ReplyUdp(session, b"from guest")
    assert _forward(g, b"again", peer=peer).result == session


def test_forward_sessions_idle_out():
    g = Guest()
    g.hello()
    session = _forward(g, b"x").result
    g.run_until(UDP_IDLE_TIMEOUT_S - 1).nothing()
    assert g.run_until(UDP_IDLE_TIMEOUT_S).only_actions() == [CloseUdp(session)]
    # Without the session, the guest's datagram to the gateway is ordinary NAT.
    assert [type(a) for a in g.send(g.udp(GW, 4444, b"x", sport=5353)).actions] == [OpenUdp, SendUdp]


def test_a_direct_query_to_a_resolver_is_not_taken_for_a_forward_session_reply():
    # musl's resolver sends to every nameserver from one socket: to 10.0.2.3
    # and, when the container's resolv.conf also lists the host's resolver,
    # to that one directly.  The forwarder's flow toward that resolver has the
    # same 5-tuple as the direct query, but it is not a port-forward session.
    g = Guest()
    query = b"\x12\x34" + bytes(10)
    g.send(g.udp(DNS, 53, query, sport=5000, mac=DNS_MAC)).only_actions(OpenUdp, SendUdp)
    opened, sent = g.send(g.udp(RESOLVER1, 53, query, sport=5000)).only_actions(OpenUdp, SendUdp)
    assert (sent.addr, sent.port, sent.data) == (packed(RESOLVER1), 53, query)
    answer = g.event(ev.UdpReceived(sent.flow, packed(RESOLVER1), 53, query)).only_frame()
    assert (answer.pkt[IP].src, answer.pkt[UDP].dport) == (RESOLVER1, 5000)


def test_a_full_table_makes_room_for_a_forward_session():
    g = Guest()
    g.hello()
    raw, udp_off = _template(g)
    first = None
    for sport in range(1, DEFAULT_LIMITS[PROTO_UDP] + 1):
        struct.pack_into("!H", raw, udp_off, sport)
        flow = g.send_raw(bytes(raw)).actions[-1].flow
        first = first or flow
    x = _forward(g, b"in")
    assert x.actions == [CloseUdp(first)] and x.result not in (None, first)
    assert len(x.frames) == 1 and bytes(x.frames[0].pkt[UDP].payload) == b"in"
