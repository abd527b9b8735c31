"""ARP for IPv4 over Ethernet (RFC 826).

Models the one combination slirpnet speaks: hardware type Ethernet (1),
protocol type IPv4 (0x0800), address lengths 6 and 4, operations request (1)
and reply (2).  The packet is 28 bytes; a longer buffer (Ethernet pads frames
to 60 bytes) is accepted and the tail ignored.

Invariant of :class:`ArpView`: the buffer holds at least 28 bytes and the
hardware/protocol types and address lengths are the Ethernet/IPv4 ones, so
every accessor reads at a fixed offset.  The operation is checked by
:meth:`ArpPacket.parse` (a semantic rule, not a length one).

Drops (counter names): ``arp.truncated``, ``arp.bad_hardware_type``,
``arp.bad_protocol_type``, ``arp.bad_address_length`` (hlen != 6 or
plen != 4), ``arp.bad_operation`` (not request/reply: RARP and InARP are
not spoken).

Not done here: the ARP table, deciding whom to answer (RFC 826 "Packet
Reception" merge logic), gratuitous-ARP policy (RFC 5227); those belong to
the stack.  :attr:`ArpPacket.is_gratuitous` only reports the wire shape.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed

PACKET_LEN = 28

HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800

OP_REQUEST = 1
OP_REPLY = 2

ZERO_MAC = bytes(6)

_PACKET = struct.Struct("!HHBBH6s4s6s4s")


class ArpView:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview) -> ArpView:
        if len(buf) < PACKET_LEN:
            raise Malformed("arp.truncated")
        if buf[0] != 0 or buf[1] != HTYPE_ETHERNET:
            raise Malformed("arp.bad_hardware_type")
        if buf[2] != 0x08 or buf[3] != 0x00:
            raise Malformed("arp.bad_protocol_type")
        if buf[4] != 6 or buf[5] != 4:
            raise Malformed("arp.bad_address_length")
        return cls(buf)

    @property
    def hardware_type(self) -> int:
        return (self.buf[0] << 8) | self.buf[1]

    @property
    def protocol_type(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def operation(self) -> int:
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def sender_mac(self) -> bytes:
        return bytes(self.buf[8:14])

    @property
    def sender_ip(self) -> bytes:
        return bytes(self.buf[14:18])

    @property
    def target_mac(self) -> bytes:
        return bytes(self.buf[18:24])

    @property
    def target_ip(self) -> bytes:
        return bytes(self.buf[24:28])


@dataclass(frozen=True, slots=True)
class ArpPacket:
    operation: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    buffer_len = PACKET_LEN

    @classmethod
    def parse(cls, view: ArpView) -> ArpPacket:
        _, _, _, _, op, sha, spa, tha, tpa = _PACKET.unpack_from(view.buf, 0)
        if op != OP_REQUEST and op != OP_REPLY:
            raise Malformed("arp.bad_operation")
        return cls(op, sha, spa, tha, tpa)

    @classmethod
    def request(cls, sender_mac: bytes, sender_ip: bytes, target_ip: bytes) -> ArpPacket:
        """A who-has request; the target hardware address is left zero (RFC 826)."""
        return cls(OP_REQUEST, sender_mac, sender_ip, ZERO_MAC, target_ip)

    def reply(self, mac: bytes) -> ArpPacket:
        """The reply to this request from the owner of ``target_ip`` at ``mac``.

        RFC 826 "Packet Reception": swap sender and target, put our own
        hardware address in the sender field, set the opcode to reply."""
        return ArpPacket(OP_REPLY, mac, self.target_ip, self.sender_mac, self.sender_ip)

    @property
    def is_gratuitous(self) -> bool:
        """Sender and target protocol addresses are equal (RFC 5227 §2.3 announcement shape)."""
        return self.sender_ip == self.target_ip

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        _PACKET.pack_into(
            buf,
            offset,
            HTYPE_ETHERNET,
            PTYPE_IPV4,
            6,
            4,
            self.operation,
            self.sender_mac,
            self.sender_ip,
            self.target_mac,
            self.target_ip,
        )
