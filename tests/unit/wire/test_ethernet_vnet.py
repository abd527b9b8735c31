"""Ethernet (netstack/wire/ethernet.py) against scapy both ways, and the
virtio-net header (netstack/wire/vnet.py) against the virtio spec's layout."""

import struct

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import mac2str, str2mac

from netstack.wire import Malformed
from netstack.wire import ethernet, vnet


def test_ethernet_parse_and_emit_against_scapy():
    raw = bytes(Ether(dst="52:54:00:12:34:56", src="52:55:0a:00:02:02", type=0x0806) / b"body")
    view = ethernet.EthernetView.check(memoryview(raw))
    hdr = ethernet.EthernetHeader.parse(view)
    assert hdr == ethernet.EthernetHeader(mac2str("52:54:00:12:34:56"), mac2str("52:55:0a:00:02:02"), 0x0806)
    assert bytes(view.payload) == b"body"
    buf = bytearray(hdr.buffer_len)
    hdr.emit(buf)
    p = Ether(bytes(buf))
    assert (p.dst, p.src, p.type) == ("52:54:00:12:34:56", "52:55:0a:00:02:02", 0x0806)
    with pytest.raises(Malformed, match="eth.truncated"):
        ethernet.EthernetView.check(memoryview(raw[:13]))


@pytest.mark.parametrize(
    "mac, group",
    [
        ("ff:ff:ff:ff:ff:ff", True),
        ("01:00:5e:00:00:01", True),
        ("33:33:00:00:00:01", True),
        ("52:54:00:12:34:56", False),
        ("02:00:00:00:00:00", False),
    ],
)
def test_group_addresses(mac, group):
    assert ethernet.is_multicast(mac2str(mac)) is group


def test_mac_text_both_ways():
    assert ethernet.format_mac(mac2str("52:55:0a:00:02:02")) == "52:55:0a:00:02:02"
    assert str2mac(ethernet.parse_mac("52:55:a:0:2:2")) == "52:55:0a:00:02:02"
    for bad in ("52:55:0a:00:02", "52:55:0a:00:02:02:03", "525:5:0a:00:02:02", "52:55:0a:00:02:zz", "52:55:0a::02:02"):
        with pytest.raises(ValueError):
            ethernet.parse_mac(bad)


def test_vnet_header_fields_are_little_endian():
    # struct virtio_net_hdr: u8 flags, u8 gso_type, le16 hdr_len, le16 gso_size, le16 csum_start, le16 csum_offset
    raw = struct.pack("<BBHHHH", 1, 4, 0x0142, 1448, 54, 16) + b"frame"
    view = vnet.VnetView.check(memoryview(raw))
    fields = (view.flags, view.gso_type, view.hdr_len, view.gso_size, view.csum_start, view.csum_offset)
    assert fields == (1, 4, 0x142, 1448, 54, 16)
    assert bytes(view.frame) == b"frame"
    hdr = vnet.VnetHeader.parse(view)
    assert hdr == vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV6, 0x142, 1448, 54, 16)
    buf = bytearray(vnet.HEADER_LEN)
    hdr.emit(buf)
    assert bytes(buf) == raw[:10]
    with pytest.raises(Malformed, match="vnet.truncated"):
        vnet.VnetView.check(memoryview(raw[:9]))
