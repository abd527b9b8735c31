"""Ethernet II framing (IEEE 802.3 with EtherType >= 0x0600).

Models: destination, source, EtherType; no 802.1Q tags (a tagged frame is
delivered with EtherType 0x8100 and dropped by the dispatcher as unknown), no
FCS (the TAP strips it).  Invariant of :class:`EthernetView`: the buffer holds
at least the 14-byte header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed

HEADER_LEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD

BROADCAST = b"\xff" * 6

_HDR = struct.Struct("!6s6sH")


class EthernetView:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview) -> EthernetView:
        if len(buf) < HEADER_LEN:
            raise Malformed("eth.truncated")
        return cls(buf)

    @property
    def dst(self) -> bytes:
        return bytes(self.buf[0:6])

    @property
    def src(self) -> bytes:
        return bytes(self.buf[6:12])

    @property
    def ethertype(self) -> int:
        return (self.buf[12] << 8) | self.buf[13]

    @property
    def payload(self) -> memoryview:
        return self.buf[HEADER_LEN:]


@dataclass(frozen=True, slots=True)
class EthernetHeader:
    dst: bytes
    src: bytes
    ethertype: int

    buffer_len = HEADER_LEN

    @classmethod
    def parse(cls, view: EthernetView) -> EthernetHeader:
        return cls(view.dst, view.src, view.ethertype)

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        _HDR.pack_into(buf, offset, self.dst, self.src, self.ethertype)


def is_multicast(mac: bytes) -> bool:
    """True for group addresses (broadcast included): the I/G bit is set."""
    return bool(mac[0] & 1)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` → 6 bytes; ValueError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(text)
    return bytes(int(p, 16) for p in parts)
