"""Passive opens handed to the datapath in SYN_RECEIVED (slirp/offload.py,
"Handshake" in the datapath contract), with the real Stack and each real
datapath: the flow is installed before its SYN-ACK is written, the guest's
ACK and first data never come up, and a handshake the datapath gives back
(a segment it does not take, or our SYN-ACK's time-out) is finished by
netstack exactly as if it had never left."""

from __future__ import annotations

import ipaddress
import random
import select
import socket
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netstack import actions as act
from netstack import events as ev
from netstack.addressing import AddressPlan
from netstack.counters import Counters
from netstack.stack import Stack, StackConfig
from netstack.tcp import State
from netstack.wire.tcp import ACK, FIN, PSH, SYN
from slirp.datapath import Ejected, Frame
from slirp.offload import Offload

from .dp_helpers import KINDS, GuestTcp, Side, TcpConn, parse_out

PLAN = AddressPlan.from_network(ipaddress.IPv4Network("10.0.2.0/24"))
GUEST = "10.0.2.100"
REMOTE = "192.0.2.80"
GUEST_MAC = "02:00:00:00:00:64"  # dp_helpers.GUEST_MAC
GUEST_ISS = 7000


class Edge:
    """The bits of HostSockets the Offload uses, over one real connection."""

    def __init__(self):
        self.tcp = {}
        self.detached = set()
        self.closed = []

    def detach_tcp(self, flow):
        self.detached.add(flow)

    def close_tcp(self, a):
        self.closed.append(a)


@pytest.fixture(params=KINDS)
def rig(request):
    stack = Stack(StackConfig(plan=PLAN), rng=random.Random(3))
    edge = Edge()
    side = Side(request.param)
    conn = TcpConn()
    driver = SimpleNamespace(stack=stack, hostsocks=edge, counters=Counters(), tap_failed=None)
    offload = Offload(driver, side.dp)
    yield SimpleNamespace(stack=stack, edge=edge, side=side, conn=conn, offload=offload, now=10.0)
    conn.close()
    side.close()


def syn_to_syn_ack(rig, gport=40000):
    """Guest SYN → OpenTcp → TcpConnected: the SYN-ACK is made, not yet written."""
    syn = IP(src=GUEST, dst=REMOTE) / TCP(sport=gport, dport=80, flags="S", seq=GUEST_ISS,
                                          options=[("MSS", 1460), ("WScale", 7), ("Timestamp", (1000, 0))])  # fmt: skip
    frame = bytes(10) + bytes(Ether(dst=PLAN.gateway_mac.hex(":"), src=GUEST_MAC) / syn)
    rig.stack.frame_from_guest(memoryview(frame), rig.now)
    (open_tcp,) = rig.stack.take_actions()
    assert isinstance(open_tcp, act.OpenTcp)
    flow = open_tcp.flow
    rig.edge.tcp[flow] = SimpleNamespace(fd=rig.conn.edge.fileno(), connecting=False)
    rig.stack.handle_event(ev.TcpConnected(flow, 1 << 20), rig.now)
    return flow


def written_syn_ack(rig):
    (frame,) = rig.stack.take_frames()
    d = parse_out(bytes(frame))
    assert d["flags"] == SYN | ACK
    d["ts"] = dict(Ether(bytes(frame)[10:])[TCP].options)["Timestamp"]
    return d


def guest_of(rig, synack, gport=40000):
    g = GuestTcp(guest=ipaddress.ip_address(GUEST).packed, gport=gport, remote=ipaddress.ip_address(REMOTE).packed,
                 seq=GUEST_ISS + 1, ack=(synack["seq"] + 1) & 0xFFFFFFFF)  # fmt: skip
    g.tsval, g.tsecr = 1001, synack["ts"][0]
    return g


def endpoint(rig, flow):
    return rig.stack.tcp.endpoint(flow)


def test_installed_before_the_syn_ack_is_written_then_the_ack_and_data_stay_below(rig):
    flow = syn_to_syn_ack(rig)
    rig.offload.install_handshakes(rig.now)
    assert rig.side.dp.owns(flow), "installed while the SYN-ACK still waits to be written"
    assert flow in rig.edge.detached and endpoint(rig, flow).parked
    assert endpoint(rig, flow).state is State.SYN_RECEIVED
    synack = written_syn_ack(rig)
    g = guest_of(rig, synack)
    rig.side.to_tap(g.frame(ACK | PSH, b"GET / HTTP/1.0\r\n\r\n", dst_mac=_our_mac(rig)))
    assert rig.side.dp.tap_readable(rig.now + 0.01) == []
    got = b""
    while len(got) < 18 and select.select([rig.conn.peer], [], [], 1.0)[0]:
        got += rig.conn.peer.recv(100)
    assert got == b"GET / HTTP/1.0\r\n\r\n"
    (a,) = [parse_out(f) for f in rig.side.from_tap()]
    assert a["flags"] == ACK and a["ack"] == GUEST_ISS + 1 + 18
    # handed back later (e.g. the edge wants it), netstack continues ESTABLISHED
    e = rig.side.dp.eject_tcp(flow, rig.now + 0.02)
    rig.offload.deliver([e], rig.now + 0.02)
    ep = endpoint(rig, flow)
    assert ep.state is State.ESTABLISHED and not ep.parked
    assert ep.tcb.cwnd == 10 * (1460 - 12), "the congestion state ESTABLISHED starts with"
    assert ep.tcb.snd_una == (synack["seq"] + 1) & 0xFFFFFFFF and ep.tcb.rcv_nxt == GUEST_ISS + 1 + 18


def test_a_syn_ack_timeout_goes_back_to_netstack_which_resends_and_keeps_it(rig):
    flow = syn_to_syn_ack(rig)
    rig.offload.install_handshakes(rig.now)
    synack = written_syn_ack(rig)
    deadline = rig.side.dp.next_deadline()
    assert deadline == pytest.approx(rig.now + 1.0)
    items = rig.side.dp.timers(deadline)
    assert [(type(i), i.reason, i.state) for i in items] == [(Ejected, "timeout", "SYN_RECEIVED")]
    rig.offload.deliver(items, deadline)
    ep = endpoint(rig, flow)
    assert ep.state is State.SYN_RECEIVED and not ep.parked
    assert flow not in rig.stack.tcp.offload_ready, "after a time-out the handshake stays with netstack"
    assert rig.stack.next_deadline() == pytest.approx(rig.now + 1.0), "its own timer, due"
    assert rig.edge.closed == [], "a handshake time-out is no host failure"
    rig.stack.poll(deadline)
    again = written_syn_ack(rig)
    assert again["seq"] == synack["seq"], "the same SYN-ACK, resent"
    assert not ep.offloadable(), "a retransmitted handshake is finished here"


def test_a_segment_the_datapath_does_not_take_is_netstacks(rig):
    flow = syn_to_syn_ack(rig)
    rig.offload.install_handshakes(rig.now)
    synack = written_syn_ack(rig)
    g = guest_of(rig, synack)
    # the guest did not get our SYN-ACK and sends its SYN again
    resyn = g.frame(SYN, seq=GUEST_ISS, ack=0, mss=1460, wscale=7, dst_mac=_our_mac(rig))
    rig.side.to_tap(resyn)
    items = rig.side.dp.tap_readable(rig.now + 0.5)
    assert [type(i) for i in items] == [Ejected, Frame]
    rig.offload.deliver(items, rig.now + 0.5)
    again = written_syn_ack(rig)
    assert again["seq"] == synack["seq"] and again["ack"] == GUEST_ISS + 1
    ep = endpoint(rig, flow)
    assert ep.state is State.SYN_RECEIVED and not ep.parked
    assert flow in rig.stack.tcp.offload_ready, "it may go down again before this SYN-ACK is written"
    rig.offload.install_handshakes(rig.now + 0.5)
    assert rig.side.dp.owns(flow)


def _our_mac(rig):
    return rig.stack.our_mac_for(ipaddress.ip_address(REMOTE).packed)


def test_a_connection_from_handshake_to_close_in_the_datapath_is_forgotten(rig):
    flow = syn_to_syn_ack(rig)
    rig.offload.install_handshakes(rig.now)
    g = guest_of(rig, written_syn_ack(rig))
    mac = _our_mac(rig)
    rig.side.to_tap(g.frame(ACK | PSH, b"x", dst_mac=mac))
    rig.side.to_tap(g.frame(ACK | FIN, dst_mac=mac))
    assert rig.side.dp.tap_readable(rig.now) == []
    assert select.select([rig.conn.peer], [], [], 1.0)[0] and rig.conn.peer.recv(10) == b"x"
    rig.conn.peer.shutdown(socket.SHUT_WR)
    assert rig.side.wait_host()
    assert rig.side.dp.host_readable(rig.now) == []
    fin = [parse_out(f) for f in rig.side.from_tap() if parse_out(f)["flags"] & 1]
    assert len(fin) == 1
    g.seq += 1
    rig.side.to_tap(g.frame(ACK, ack=(fin[0]["seq"] + 1) & 0xFFFFFFFF, dst_mac=mac))
    items = rig.side.dp.tap_readable(rig.now)
    assert [(type(i).__name__, i.how) for i in items] == [("Closed", "fin")]
    rig.offload.deliver(items, rig.now)
    assert endpoint(rig, flow) is None, "netstack forgot the flow"
    assert [a.flow for a in rig.edge.closed] == [flow]


# ---------------------------------------------------------------- port forwards (SYN_SENT)


def open_to_guest(rig, sport=55555):
    """A host client accepted on a forward: netstack's SYN toward the guest is made, not yet written."""
    rig.stack.learned(ipaddress.ip_address(GUEST).packed, bytes.fromhex(GUEST_MAC.replace(":", "")))
    flow = rig.stack.tcp_open_to_guest(ipaddress.ip_address(GUEST).packed, 8080, bytes([10, 0, 2, 2]), sport,
                                       1 << 20, rig.now)  # fmt: skip
    assert flow is not None
    rig.edge.tcp[flow] = SimpleNamespace(fd=rig.conn.edge.fileno(), connecting=False)
    return flow


def written_syn(rig):
    (frame,) = rig.stack.take_frames()
    pkt = Ether(bytes(frame)[10:])
    assert pkt[TCP].flags == "S"
    return pkt


def test_a_port_forward_open_is_installed_before_its_syn_and_finished_below(rig):
    flow = open_to_guest(rig)
    rig.offload.install_handshakes(rig.now)
    assert rig.side.dp.owns(flow) and endpoint(rig, flow).state is State.SYN_SENT
    syn = written_syn(rig)
    opts = dict(syn[TCP].options)
    assert "Timestamp" in opts and "WScale" in opts, "what the datapath relies on was offered"
    rig.conn.peer.sendall(b"client hello")
    g = GuestTcp(guest=ipaddress.ip_address(GUEST).packed, gport=8080, remote=bytes([10, 0, 2, 2]), rport=55555,
                 seq=30000, ack=(syn[TCP].seq + 1) & 0xFFFFFFFF)  # fmt: skip
    g.tsval, g.tsecr = 777, opts["Timestamp"][0]
    mac = rig.stack.our_mac_for(bytes([10, 0, 2, 2]))
    rig.side.to_tap(g.frame(SYN | ACK, seq=30000, advance=False, mss=1460, wscale=7, dst_mac=mac))
    assert rig.side.dp.tap_readable(rig.now + 0.001) == [], "the SYN-ACK does not come up"
    (d,) = [parse_out(f) for f in rig.side.from_tap()]
    assert d["payload"] == b"client hello" and d["ack"] == 30001
    e = rig.side.dp.eject_tcp(flow, rig.now + 0.01)
    rig.offload.deliver([e], rig.now + 0.01)
    ep = endpoint(rig, flow)
    assert ep.state is State.ESTABLISHED and ep.tcb.irs == 30000 and ep.tcb.snd_wscale == 7
    assert ep.tcb.rcv_wscale == rig.stack.tcp.config.rcv_wscale and ep.tcb.ts_ok


def test_an_unanswered_port_forward_syn_is_resent_by_netstack(rig):
    flow = open_to_guest(rig)
    rig.offload.install_handshakes(rig.now)
    syn = written_syn(rig)
    deadline = rig.side.dp.next_deadline()
    items = rig.side.dp.timers(deadline)
    assert [(i.reason, i.state) for i in items] == [("timeout", "SYN_SENT")]
    rig.offload.deliver(items, deadline)
    assert flow not in rig.stack.tcp.offload_ready and rig.edge.closed == []
    rig.stack.poll(deadline)
    again = written_syn(rig)
    assert again[TCP].seq == syn[TCP].seq and endpoint(rig, flow).state is State.SYN_SENT
