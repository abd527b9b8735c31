"""TCP through the stack: the forwarder pattern as the guest sees it on the
wire (SYN → OpenTcp → SYN-ACK only once the host connected; RST or ICMP on
failure), the destination rules, GSO and checksum seeds of what we send,
and port-forward opens toward the guest.  The TCP state machine itself is
tests/unit/tcp's."""

import errno

import pytest

from netstack import events as ev
from netstack.actions import CloseTcp, OpenTcp, ReadTcp, SendTcp, ShutdownTcp

from .harness import (
    DNS,
    GUEST,
    GUEST_MAC,
    GW,
    GW_MAC,
    ICMP,
    IP,
    REMOTE,
    TCP,
    Guest,
    icmp_quote,
    packed,
)

SYN_OPTIONS = [("MSS", 1460), ("WScale", 7)]


def syn_to(g, dst=REMOTE, dport=80, sport=40000, options=SYN_OPTIONS, **enc):
    pkt = g.ip4(dst) / TCP(sport=sport, dport=dport, flags="S", seq=1000, options=options)
    return pkt, g.send(pkt, **enc)


def connected(g, dst=REMOTE, dport=80, options=SYN_OPTIONS):
    """Guest SYN, host connect done, SYN-ACK, guest ACK: (flow, our ISN + 1)."""
    _, x = syn_to(g, dst, dport, options=options)
    flow = x.only_action(OpenTcp).flow
    synack = g.event(ev.TcpConnected(flow, 1 << 20)).only_frame().pkt[TCP]
    ack = TCP(sport=40000, dport=dport, flags="A", seq=1001, ack=synack.seq + 1, window=65535)
    g.send(g.ip4(dst) / ack).only_action(ReadTcp)
    return flow, synack.seq + 1


@pytest.mark.parametrize("offload", [False, True])
def test_syn_opens_a_host_connection_and_nothing_goes_back_yet(offload):
    g = Guest()
    _, x = syn_to(g, offload=offload)
    assert x.only_action(OpenTcp) == OpenTcp(x.actions[0].flow, packed(REMOTE), 80)
    assert x.counters == {"tcp.passive_opens": 1}


@pytest.mark.parametrize("mtu, mss", [(1500, 1460), (576, 536), (65520, 65480)])
def test_connected_answers_the_syn_with_an_offloaded_syn_ack(mtu, mss):
    g = Guest(mtu=mtu)
    _, x = syn_to(g)
    flow = x.actions[0].flow
    f = g.event(ev.TcpConnected(flow, 1 << 20)).only_frame()
    assert (f.pkt.src, f.pkt.dst) == (GW_MAC, GUEST_MAC)
    assert (f.pkt[IP].src, f.pkt[IP].dst, f.pkt[IP].ttl) == (REMOTE, GUEST, 64)
    tcp = f.pkt[TCP]
    assert (tcp.sport, tcp.dport, str(tcp.flags), tcp.ack) == (80, 40000, "SA", 1001)
    assert dict(o for o in tcp.options if o[0] != "NOP")["MSS"] == mss
    # Checksum offload: NEEDS_CSUM at the TCP field from the Ethernet header,
    # the seed finished and checked by the harness; not a GSO frame.
    assert (f.vnet.flags, f.vnet.gso_type, f.vnet.csum_start, f.vnet.csum_offset) == (1, 0, 34, 16)


def test_host_data_goes_out_as_gso_frames_of_the_guests_mss():
    g = Guest()
    flow, our = connected(g, options=[("MSS", 1400)])
    small = g.event(ev.TcpReceived(flow, b"s" * 100)).only_frame()
    assert small.vnet.gso_type == 0 and bytes(small.pkt[TCP].payload) == b"s" * 100
    data = bytes(i % 253 for i in range(10000))  # within the initial window
    big = g.event(ev.TcpReceived(flow, data)).only_frame()
    assert (big.vnet.gso_type, big.vnet.gso_size, big.vnet.hdr_len) == (1, 1400, 14 + 20 + 20)
    assert big.pkt[TCP].seq == our + 100 and bytes(big.pkt[TCP].payload) == data


def test_gso_size_leaves_room_for_timestamps():
    g = Guest()
    flow, _ = connected(g, options=[("MSS", 1460), ("Timestamp", (1, 0))])
    big = g.event(ev.TcpReceived(flow, b"t" * 10000)).frames[0]
    assert (big.vnet.gso_size, big.vnet.hdr_len) == (1448, 14 + 20 + 32)


def test_guest_data_and_close_reach_the_edge():
    g = Guest()
    flow, our = connected(g)
    x = g.send(g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=our) / b"GET /", offload=True)
    assert x.actions == [SendTcp(flow, b"GET /")]
    g.event(ev.TcpSent(flow, 5, 1 << 20))
    x = g.send(g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="FA", seq=1006, ack=our))
    assert ShutdownTcp(flow) in x.actions
    assert x.frames[-1].pkt[TCP].ack == 1007


def test_refused_connect_resets_the_guest():
    g = Guest()
    _, x = syn_to(g)
    flow = x.actions[0].flow
    x = g.event(ev.TcpConnectFailed(flow, errno.ECONNREFUSED))
    rst = x.frames
    assert len(rst) == 1 and str(rst[0].pkt[TCP].flags) == "RA" and rst[0].pkt[TCP].ack == 1001
    assert (rst[0].pkt[IP].src, rst[0].pkt[TCP].sport) == (REMOTE, 80)
    assert all(isinstance(a, CloseTcp) for a in x.actions)


@pytest.mark.parametrize("err, code", [(errno.ENETUNREACH, 0), (errno.EHOSTUNREACH, 1), (errno.ETIMEDOUT, 0)])
def test_unreachable_connect_gets_icmp_quoting_the_syn(err, code):
    g = Guest()
    pkt, x = syn_to(g)
    flow = x.actions[0].flow
    x = g.event(ev.TcpConnectFailed(flow, err))
    icmp = [f for f in x.frames if ICMP in f.pkt]
    assert len(icmp) == 1 and len(x.frames) == 1
    f = icmp[0]
    assert (f.pkt[IP].src, f.pkt[IP].dst, f.pkt[ICMP].type, f.pkt[ICMP].code) == (REMOTE, GUEST, 3, code)
    assert icmp_quote(f) == bytes(pkt[IP])  # the SYN as the guest sent it


def test_gateway_is_host_loopback():
    g = Guest()
    for dst in (GW, "255.255.255.255"):
        _, x = syn_to(g, dst=dst, dport=8080, sport=40001 if dst == GW else 40002)
        assert (x.only_action(OpenTcp).addr, x.actions[0].port) == (packed("127.0.0.1"), 8080)


def test_gateway_without_host_loopback_is_net_unreachable():
    g = Guest(disable_host_loopback=True)
    pkt, x = syn_to(g, dst=GW, dport=8080)
    f = x.only_frame()
    assert x.counters == {"tcp.syn_refused_policy": 1}
    assert (f.pkt[IP].src, f.pkt[ICMP].type, f.pkt[ICMP].code) == (GW, 3, 0)
    assert icmp_quote(f) == bytes(pkt[IP])


def test_other_addresses_of_the_virtual_network_are_themselves():
    g = Guest()
    _, x = syn_to(g, dst="10.0.2.50")
    assert x.only_action(OpenTcp).addr == packed("10.0.2.50")


def test_segments_without_a_flow():
    g = Guest()
    ack = g.send(g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="A", seq=5, ack=77)).only_frame()
    assert (str(ack.pkt[TCP].flags), ack.pkt[TCP].seq) == ("R", 77)
    g.send(g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="R", seq=5)).dropped("tcp.rx_rst_no_flow")
    g.send(g.ip4(REMOTE) / TCP(sport=0, dport=80, flags="S")).dropped("tcp.rx_bad_port")


def test_events_for_unknown_flows_are_counted():
    g = Guest()
    g.event(ev.TcpConnected(4242, 1)).dropped("tcp.event_no_flow")


def test_a_datapath_can_take_a_flow_and_give_it_back():
    g = Guest()
    flow, our = connected(g)
    export = g.stack.tcp.park(flow)
    assert export is not None
    seg = g.ip4(REMOTE) / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=our) / b"data"
    g.send(seg).dropped("tcp.rx_parked")  # the datapath owns it now
    g.call(g.stack.tcp_resume, flow, export).only_action(ReadTcp)  # reading from the host again
    assert SendTcp(flow, b"data") in g.send(seg).actions


# -- port forwards: opens toward the guest ------------------------------------------------


def forward_open(g, peer="127.0.0.1", peer_port=5555, guest=GUEST, guest_port=80):
    return g.call(g.stack.tcp_open_to_guest, packed(guest), guest_port, packed(peer), peer_port, 1 << 20)


@pytest.mark.parametrize(
    "peer, seen", [("127.0.0.1", GW), ("0.0.0.0", GW), ("10.0.2.77", GW), ("203.0.113.5", "203.0.113.5")]
)
def test_forward_syn_shows_loopback_peers_as_the_gateway(peer, seen):
    g = Guest()
    g.hello()
    x = forward_open(g, peer=peer)
    f = x.only_frame()
    assert x.result is not None and x.counters == {"tcp.active_opens": 1}
    assert (f.pkt.src, f.pkt.dst) == (GW_MAC, GUEST_MAC)
    assert (f.pkt[IP].src, f.pkt[TCP].sport, f.pkt[IP].dst, f.pkt[TCP].dport) == (seen, 5555, GUEST, 80)
    assert str(f.pkt[TCP].flags) == "S" and f.vnet.flags == 1


def test_forward_handshake_completes_and_reads_from_the_host():
    g = Guest()
    g.hello()
    x = forward_open(g)
    flow, syn = x.result, x.frames[0].pkt[TCP]
    synack = g.ip4(GW) / TCP(sport=80, dport=5555, flags="SA", seq=7000, ack=syn.seq + 1, options=[("MSS", 1460)])
    x = g.send(synack)
    assert str(x.frames[0].pkt[TCP].flags) == "A" and x.frames[0].pkt[TCP].ack == 7001
    assert x.actions == [ReadTcp(flow, x.actions[0].credit)]


def test_forward_refused_by_the_guest_closes_the_host_socket():
    g = Guest()
    g.hello()
    x = forward_open(g)
    flow, syn = x.result, x.frames[0].pkt[TCP]
    x = g.send(g.ip4(GW) / TCP(sport=80, dport=5555, flags="RA", seq=0, ack=syn.seq + 1))
    assert x.actions == [CloseTcp(flow, reset=True)]


def test_forward_to_a_busy_key_is_refused():
    g = Guest()
    g.hello()
    assert forward_open(g).result is not None
    x = forward_open(g)
    assert x.result is None and x.counters == {"tcp.open_refused_busy": 1}
    x.nothing()


def test_forward_to_a_guest_not_yet_known_asks_for_it_first():
    g = Guest()
    from .harness import ARP

    f = forward_open(g).only_frame()
    assert f.pkt[ARP].pdst == GUEST and f.pkt[ARP].psrc == GW


def test_dns_flows_answer_with_the_dns_mac():
    from .harness import DNS_MAC

    g = Guest()
    _, x = syn_to(g, dst=DNS, dport=53)
    f = g.event(ev.TcpConnected(x.only_action(OpenTcp).flow, 1 << 16)).only_frame()
    assert (f.pkt.src, f.pkt[IP].src) == (DNS_MAC, DNS)


def test_no_icmp_about_a_syn_to_the_broadcast_address():
    # RFC 1122 §3.2.2, as for UDP: no error about a datagram sent to a
    # broadcast or multicast address (it would come from that address).
    g = Guest(disable_host_loopback=True)
    _, x = syn_to(g, dst="255.255.255.255")
    x.nothing()
    assert x.counters == {"tcp.syn_refused_policy": 1, "icmpv4.error_suppressed": 1}


def test_no_icmp_about_a_syn_to_a_multicast_address():
    g = Guest()
    _, x = syn_to(g, dst="224.0.0.9")  # not refused by policy: the host connect fails
    x = g.event(ev.TcpConnectFailed(x.only_action(OpenTcp).flow, errno.ENETUNREACH))
    assert [f for f in x.frames if ICMP in f.pkt] == []
    assert x.counters.get("icmpv4.error_suppressed") == 1
