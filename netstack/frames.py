"""Building frames for the guest: virtio-net header + Ethernet + IP + transport.

Every frame written to the TAP starts with a virtio-net header
(netstack/wire/vnet.py).  Layout built here, in one buffer, no concatenation:

    | vnet (10) | Ethernet (14) | IPv4 (20) or IPv6 (40) | L4 header | payload |
    ^0          ^10             ^24                      ^csum_start

TCP and UDP frames use checksum offload: the vnet header says NEEDS_CSUM
with ``csum_start`` counted from the Ethernet header and ``csum_offset`` the
field's place in the L4 header, and the L4 checksum field holds the folded,
non-inverted pseudo-header sum (tap-offloads.md gotcha 4).  The guest's
kernel finishes it only if it forwards the frame; locally delivered frames are
trusted.  A TCP frame longer than one MSS is a GSO frame (gso_type TCPV4 or
TCPV6, gso_size = the guest's MSS) so the guest's kernel cuts it (gotcha 7).
ICMP and ARP carry complete checksums and a zero vnet header.
"""

from __future__ import annotations

import struct

from .wire import ethernet, ipv4, tcp, vnet
from .wire.checksum import csum_fold, pseudo_sum_v4, pseudo_sum_v6

VNET_LEN = vnet.HEADER_LEN
ETH_LEN = ethernet.HEADER_LEN
L3_OFFSET = VNET_LEN + ETH_LEN
IPV4_LEN = ipv4.MIN_HEADER_LEN
IPV6_LEN = 40

TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6

_VNET = struct.Struct("<BBHHHH")
_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
_UDP = struct.Struct("!HHHH")

_ipv4_ident = 0
_ipv6_ident = 0
_FRAG6 = struct.Struct("!BBHI")
NH_FRAGMENT = 44
FRAGMENT_HEADER_LEN = 8


def _next_ident() -> int:
    global _ipv4_ident
    _ipv4_ident = (_ipv4_ident + 1) & 0xFFFF
    return _ipv4_ident


def _next_ident6() -> int:
    global _ipv6_ident
    _ipv6_ident = (_ipv6_ident + 1) & 0xFFFFFFFF
    return _ipv6_ident


def ethernet_frame(dst_mac: bytes, src_mac: bytes, ethertype: int, body_len: int) -> bytearray:
    """A zeroed vnet header and the Ethernet header; the body is the caller's to fill."""
    buf = bytearray(L3_OFFSET + body_len)
    _ETH.pack_into(buf, VNET_LEN, dst_mac, src_mac, ethertype)
    return buf


def _ip_header(buf: bytearray, src: bytes, dst: bytes, proto: int, l4_len: int, ttl: int) -> int:
    """Write the IPv4 or IPv6 header at L3_OFFSET; returns the L4 offset."""
    if len(src) == 4:
        _IPV4.pack_into(
            buf, L3_OFFSET, 0x45, 0, IPV4_LEN + l4_len, _next_ident(), ipv4.FLAG_DF, ttl, proto, 0, src, dst
        )
        csum = _ipv4_header_checksum(buf)
        _U16.pack_into(buf, L3_OFFSET + 10, csum)
        return L3_OFFSET + IPV4_LEN
    _IPV6.pack_into(buf, L3_OFFSET, 0x60000000, l4_len, proto, ttl, src, dst)
    return L3_OFFSET + IPV6_LEN


def _ipv4_header_checksum(buf: bytearray) -> int:
    s = int.from_bytes(buf[L3_OFFSET : L3_OFFSET + IPV4_LEN], "big")
    s = (s - 1) % 0xFFFF + 1 if s else 0
    return ~s & 0xFFFF


def _ethertype(addr: bytes) -> int:
    return ethernet.ETHERTYPE_IPV4 if len(addr) == 4 else ethernet.ETHERTYPE_IPV6


def _ip_len(addr: bytes) -> int:
    return IPV4_LEN if len(addr) == 4 else IPV6_LEN


def ip_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, body: bytes, ttl: int = 64):
    """An IP datagram whose transport part (checksum included) is ``body`` as is."""
    buf = ethernet_frame(dst_mac, src_mac, _ethertype(src), _ip_len(src) + len(body))
    off = _ip_header(buf, src, dst, proto, len(body), ttl)
    buf[off:] = body
    return buf


def ipv4_fragments(
    dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, body: bytes, mtu: int, ttl: int = 64
) -> list[bytearray]:
    """``body`` as IPv4 fragments of at most ``mtu`` bytes each (RFC 791 §3.2).

    For datagrams the guest must not receive whole because they exceed its
    MTU (ICMP and UDP; TCP never needs this: its segments are GSO frames)."""
    chunk = (mtu - IPV4_LEN) & ~7
    ident = _next_ident()
    frames = []
    for start in range(0, len(body), chunk):
        part = body[start : start + chunk]
        more = start + chunk < len(body)
        buf = ethernet_frame(dst_mac, src_mac, ethernet.ETHERTYPE_IPV4, IPV4_LEN + len(part))
        frag = (start >> 3) | (ipv4.FLAG_MF if more else 0)
        _IPV4.pack_into(buf, L3_OFFSET, 0x45, 0, IPV4_LEN + len(part), ident, frag, ttl, proto, 0, src, dst)
        _U16.pack_into(buf, L3_OFFSET + 10, _ipv4_header_checksum(buf))
        buf[L3_OFFSET + IPV4_LEN :] = part
        frames.append(buf)
    return frames


def ipv6_fragments(
    dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, body: bytes, mtu: int, hop_limit: int = 64
) -> list[bytearray]:
    """``body`` as IPv6 fragments of at most ``mtu`` bytes each (RFC 8200 §4.5).

    Each fragment is the fixed header, a Fragment header (Next Header
    ``proto``, the offset in 8-byte units, M set on all but the last, one
    identification per datagram) and a piece of ``body`` that is a multiple
    of 8 bytes except in the last fragment.  The source fragments datagrams
    toward the guest that exceed the link MTU (UDP, ICMPv6 echo replies);
    TCP never needs this: its segments are GSO frames."""
    chunk = (mtu - IPV6_LEN - FRAGMENT_HEADER_LEN) & ~7
    ident = _next_ident6()
    frames = []
    for start in range(0, len(body), chunk):
        part = body[start : start + chunk]
        more = start + chunk < len(body)
        plen = FRAGMENT_HEADER_LEN + len(part)
        buf = ethernet_frame(dst_mac, src_mac, ethernet.ETHERTYPE_IPV6, IPV6_LEN + plen)
        _IPV6.pack_into(buf, L3_OFFSET, 0x60000000, plen, NH_FRAGMENT, hop_limit, src, dst)
        _FRAG6.pack_into(buf, L3_OFFSET + IPV6_LEN, proto, 0, start | int(more), ident)
        buf[L3_OFFSET + IPV6_LEN + FRAGMENT_HEADER_LEN :] = part
        frames.append(buf)
    return frames


def tcp_frame(
    dst_mac: bytes,
    src_mac: bytes,
    src: bytes,
    dst: bytes,
    header: tcp.TcpHeader,
    payload: bytes | memoryview = b"",
    gso_size: int = 0,
    ttl: int = 64,
) -> bytearray:
    hlen = header.buffer_len
    l4_len = hlen + len(payload)
    buf = ethernet_frame(dst_mac, src_mac, _ethertype(src), _ip_len(src) + l4_len)
    off = _ip_header(buf, src, dst, 6, l4_len, ttl)
    seed = csum_fold(pseudo_sum_v4(src, dst, 6, l4_len) if len(src) == 4 else pseudo_sum_v6(src, dst, 6, l4_len))
    header.emit(buf, off, seed)
    if payload:
        buf[off + hlen :] = payload
    csum_start = off - VNET_LEN
    if gso_size and len(payload) > gso_size:
        gso_type = vnet.GSO_TCPV4 if len(src) == 4 else vnet.GSO_TCPV6
        _VNET.pack_into(buf, 0, vnet.F_NEEDS_CSUM, gso_type, csum_start + hlen, gso_size, csum_start, TCP_CSUM_OFFSET)
    else:
        _VNET.pack_into(buf, 0, vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, csum_start, TCP_CSUM_OFFSET)
    return buf


def udp_frame(
    dst_mac: bytes,
    src_mac: bytes,
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    payload: bytes | memoryview,
    ttl: int = 64,
) -> bytearray:
    """A UDP datagram with checksum offload (the caller keeps it within the MTU)."""
    l4_len = 8 + len(payload)
    buf = ethernet_frame(dst_mac, src_mac, _ethertype(src), _ip_len(src) + l4_len)
    off = _ip_header(buf, src, dst, 17, l4_len, ttl)
    seed = csum_fold(pseudo_sum_v4(src, dst, 17, l4_len) if len(src) == 4 else pseudo_sum_v6(src, dst, 17, l4_len))
    _UDP.pack_into(buf, off, src_port, dst_port, l4_len, seed)
    buf[off + 8 :] = payload
    _VNET.pack_into(buf, 0, vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, off - VNET_LEN, UDP_CSUM_OFFSET)
    return buf
