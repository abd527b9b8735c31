"""ARP (netstack/wire/arp.py) against scapy both ways, plus fuzzing."""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.l2 import ARP, Ether

from netstack.wire import Malformed
from netstack.wire.arp import OP_REPLY, OP_REQUEST, PACKET_LEN, ArpPacket, ArpView

MAC_A = bytes.fromhex("525500000202")
MAC_B = bytes.fromhex("02aabbccddee")
IP_A = bytes([10, 0, 2, 2])
IP_B = bytes([10, 0, 2, 100])


def _scapy_arp(**kw) -> bytes:
    """scapy's ARP defaults look at the host's routes; pin every address."""
    fields = dict(hwsrc="02:aa:bb:cc:dd:ee", psrc="10.0.2.100", hwdst="00:00:00:00:00:00", pdst="10.0.2.2")
    fields.update(kw)
    return bytes(ARP(**fields))


def test_parse_scapy_request():
    raw = _scapy_arp(op=1, hwsrc="02:aa:bb:cc:dd:ee", psrc="10.0.2.100", hwdst="00:00:00:00:00:00", pdst="10.0.2.2")
    view = ArpView.check(memoryview(raw))
    assert view.operation == OP_REQUEST
    assert view.hardware_type == 1 and view.protocol_type == 0x0800
    pkt = ArpPacket.parse(view)
    assert pkt == ArpPacket(OP_REQUEST, MAC_B, IP_B, bytes(6), IP_A)
    assert not pkt.is_gratuitous


def test_parse_scapy_reply_with_ethernet_padding():
    frame = bytes(Ether(dst="02:aa:bb:cc:dd:ee", src="52:55:00:00:02:02") / ARP(
        op=2, hwsrc="52:55:00:00:02:02", psrc="10.0.2.2", hwdst="02:aa:bb:cc:dd:ee", pdst="10.0.2.100"))
    frame = frame + bytes(60 - len(frame))  # minimum Ethernet frame
    pkt = ArpPacket.parse(ArpView.check(memoryview(frame)[14:]))
    assert pkt == ArpPacket(OP_REPLY, MAC_A, IP_A, MAC_B, IP_B)


def test_gratuitous():
    raw = _scapy_arp(op=1, hwsrc="02:aa:bb:cc:dd:ee", psrc="10.0.2.100", pdst="10.0.2.100")
    assert ArpPacket.parse(ArpView.check(memoryview(raw))).is_gratuitous


def test_emit_request_dissected_by_scapy():
    pkt = ArpPacket.request(MAC_A, IP_A, IP_B)
    buf = bytearray(4 + pkt.buffer_len)
    pkt.emit(buf, 4)
    assert buf[:4] == bytes(4)
    s = ARP(bytes(buf[4:]))
    assert (s.hwtype, s.ptype, s.hwlen, s.plen, s.op) == (1, 0x0800, 6, 4, 1)
    assert (s.hwsrc, s.psrc, s.hwdst, s.pdst) == ("52:55:00:00:02:02", "10.0.2.2", "00:00:00:00:00:00", "10.0.2.100")
    assert bytes(buf[4:]) == _scapy_arp(op=1, hwsrc="52:55:00:00:02:02", psrc="10.0.2.2",
                                       hwdst="00:00:00:00:00:00", pdst="10.0.2.100")


def test_reply_swaps_fields_and_round_trips():
    req = ArpPacket.parse(ArpView.check(memoryview(_scapy_arp(
        op=1, hwsrc="02:aa:bb:cc:dd:ee", psrc="10.0.2.100", pdst="10.0.2.2"))))
    rep = req.reply(MAC_A)
    assert rep == ArpPacket(OP_REPLY, MAC_A, IP_A, MAC_B, IP_B)
    buf = bytearray(PACKET_LEN)
    rep.emit(buf)
    s = ARP(bytes(buf))
    assert s.op == 2 and s.hwsrc == "52:55:00:00:02:02" and s.pdst == "10.0.2.100" and s.hwdst == "02:aa:bb:cc:dd:ee"
    assert ArpPacket.parse(ArpView.check(memoryview(buf))) == rep


@pytest.mark.parametrize(
    "raw, counter",
    [
        (bytes(27), "arp.truncated"),
        (b"", "arp.truncated"),
        (_scapy_arp(hwtype=6), "arp.bad_hardware_type"),
        (_scapy_arp(hwtype=0x0101), "arp.bad_hardware_type"),
        (_scapy_arp(ptype=0x86DD), "arp.bad_protocol_type"),
        (_scapy_arp(ptype=0x0000), "arp.bad_protocol_type"),
        (_scapy_arp(hwlen=8), "arp.bad_address_length"),
        (_scapy_arp(plen=16), "arp.bad_address_length"),
    ],
)
def test_check_rejects(raw, counter):
    with pytest.raises(Malformed) as exc:
        ArpView.check(memoryview(raw))
    assert exc.value.counter == counter


@pytest.mark.parametrize("op", [0, 3, 4, 8, 0x0101])
def test_parse_rejects_other_operations(op):
    view = ArpView.check(memoryview(_scapy_arp(op=op)))
    assert view.operation == op
    with pytest.raises(Malformed) as exc:
        ArpPacket.parse(view)
    assert exc.value.counter == "arp.bad_operation"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_only_malformed(data):
    try:
        pkt = ArpPacket.parse(ArpView.check(memoryview(data)))
    except Malformed as e:
        assert e.counter.startswith("arp.") and len(e.counter) > 4
    else:
        buf = bytearray(PACKET_LEN)
        pkt.emit(buf)
        assert bytes(buf) == data[:PACKET_LEN]


@settings(max_examples=200, deadline=None)
@given(
    op=st.sampled_from([OP_REQUEST, OP_REPLY]),
    macs=st.tuples(st.binary(min_size=6, max_size=6), st.binary(min_size=6, max_size=6)),
    ips=st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
)
def test_fuzz_emit_parse_round_trip(op, macs, ips):
    pkt = ArpPacket(op, macs[0], ips[0], macs[1], ips[1])
    buf = bytearray(PACKET_LEN)
    pkt.emit(buf)
    assert ArpPacket.parse(ArpView.check(memoryview(buf))) == pkt
    assert ARP(bytes(buf)).op == op
