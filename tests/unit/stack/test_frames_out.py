"""netstack/frames.py: what every frame toward the guest looks like — the
virtio-net header, NEEDS_CSUM seeds, GSO, IPv4 fragments — dissected by
the harness (which finishes the checksums as the guest kernel would and has
scapy check them)."""

import pytest
from scapy.layers.inet6 import IPv6

from netstack import frames
from netstack.wire.tcp import ACK, PSH, SYN, TcpHeader

from .harness import ICMP, IP, TCP, UDP, decode, packed

G_MAC, OUR_MAC = bytes.fromhex("525400123456"), bytes.fromhex("52550a000202")
SRC, DST = packed("192.0.2.80"), packed("10.0.2.100")
SRC6, DST6 = packed("2001:db8::80"), packed("fd00::64")


def test_ip_frame_carries_the_body_with_a_complete_header_and_no_offload():
    body = bytes.fromhex("0000ffff00010002") + b"echo"  # an ICMP echo reply, checksum filled below
    from scapy.utils import checksum

    body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
    f = decode(frames.ip_frame(G_MAC, OUR_MAC, SRC, DST, 1, body, ttl=255))
    assert f.vnet.flags == 0
    ip = f.pkt[IP]
    assert (ip.src, ip.dst, ip.proto, ip.ttl, str(ip.flags), ip.frag) == ("192.0.2.80", "10.0.2.100", 1, 255, "DF", 0)
    assert bytes(ip.payload) == body and ICMP in f.pkt


def test_ip_identification_changes_per_datagram():
    a = decode(frames.ip_frame(G_MAC, OUR_MAC, SRC, DST, 253, bytes(8))).pkt[IP].id
    b = decode(frames.ip_frame(G_MAC, OUR_MAC, SRC, DST, 253, bytes(8))).pkt[IP].id
    assert b == (a + 1) & 0xFFFF


@pytest.mark.parametrize("src, dst, start", [(SRC, DST, 34), (SRC6, DST6, 54)])
def test_udp_frame_seeds_the_checksum(src, dst, start):
    f = decode(frames.udp_frame(G_MAC, OUR_MAC, src, dst, 53, 40000, b"answer"))
    assert (f.vnet.flags, f.vnet.gso_type, f.vnet.csum_start, f.vnet.csum_offset) == (1, 0, start, 6)
    assert (f.pkt[UDP].sport, f.pkt[UDP].dport, bytes(f.pkt[UDP].payload)) == (53, 40000, b"answer")
    assert (IPv6 in f.pkt) == (len(src) == 16)


def _tcp(src, dst, payload, gso):
    hdr = TcpHeader(80, 40000, 1000, 2000, ACK | PSH, 512, timestamp=(1, 2))
    return decode(frames.tcp_frame(G_MAC, OUR_MAC, src, dst, hdr, payload, gso))


@pytest.mark.parametrize("src, dst, start, gso_type", [(SRC, DST, 34, 1), (SRC6, DST6, 54, 4)])
def test_tcp_frame_is_gso_only_beyond_one_segment(src, dst, start, gso_type):
    one = _tcp(src, dst, b"x" * 1448, 1448)
    assert (one.vnet.flags, one.vnet.gso_type, one.vnet.csum_start, one.vnet.csum_offset) == (1, 0, start, 16)
    more = _tcp(src, dst, b"y" * 1449, 1448)
    v = more.vnet
    assert (v.flags, v.gso_type, v.gso_size, v.csum_start, v.csum_offset) == (1, gso_type, 1448, start, 16)
    assert v.hdr_len == start + 32  # all headers: 20 + 12 of timestamps
    assert bytes(more.pkt[TCP].payload) == b"y" * 1449
    assert _tcp(src, dst, b"z" * 5000, 0).vnet.gso_type == 0  # no MSS known: never GSO


def test_tcp_frame_header_fields():
    hdr = TcpHeader(80, 40000, 0xFFFFFFFF, 7, SYN | ACK, 65535, mss=1460, wscale=7)
    f = decode(frames.tcp_frame(G_MAC, OUR_MAC, SRC, DST, hdr))
    t = f.pkt[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, str(t.flags), t.window) == (80, 40000, 0xFFFFFFFF, 7, "SA", 65535)
    assert ("MSS", 1460) in t.options and ("WScale", 7) in t.options


@pytest.mark.parametrize("size, mtu", [(1481, 1500), (3000, 1500), (65515, 1500), (1000, 576), (100, 68)])
def test_ipv4_fragments(size, mtu):
    body = bytes(i % 256 for i in range(size))
    out = [decode(b) for b in frames.ipv4_fragments(G_MAC, OUR_MAC, SRC, DST, 17, body, mtu, ttl=64)]
    assert len(out) == -(-size // ((mtu - 20) & ~7))
    assert len({f.pkt[IP].id for f in out}) == 1
    for i, f in enumerate(out):
        ip = f.pkt[IP]
        assert f.vnet.flags == 0 and len(f.raw) - 14 <= mtu
        assert bool(ip.flags.MF) == (i < len(out) - 1) and not ip.flags.DF
        assert ip.frag * 8 == i * ((mtu - 20) & ~7)
    from scapy.layers.inet import defragment

    whole = defragment([f.pkt[IP] for f in out])[0]
    assert bytes(whole[IP].payload)[: len(body)] == body
