"""UDP header (RFC 768), over IPv4 and IPv6.

Models the 8-byte header: ports, length, checksum.  The length field covers
header and data; a buffer longer than it (the IP payload may carry trailing
bytes) is trimmed to it, a shorter one is Malformed.

Checksum (RFC 768 "Fields"; RFC 8200 §8.1 for IPv6): over the pseudo-header,
the header and the data.  A transmitted 0 means "no checksum" over IPv4 and
is accepted; over IPv6 it is invalid and dropped.  A computed 0 is sent as
0xFFFF (:func:`complete_checksum` does that).  :meth:`UdpView.check`
verifies only when given the IP source and destination (their length picks
the family); a virtio-net NEEDS_CSUM or USO frame carries a partial seed
instead, and its caller must not ask for verification.

Like tcp.py, :meth:`UdpHeader.emit` writes whatever checksum it is given
(0, a complete one, or a NEEDS_CSUM seed); :func:`complete_checksum` fills in
the complete one once the payload is in place.

Drops (counter names): ``udp.truncated`` (buffer shorter than 8 bytes or
than the length field), ``udp.bad_length`` (length field < 8; IPv6
jumbograms, RFC 2675, whose length is 0, are not supported),
``udp.bad_checksum``, ``udp.zero_checksum`` (IPv6 only).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed
from .checksum import checksum, pseudo_sum_v4, pseudo_sum_v6

HEADER_LEN = 8
PROTO_UDP = 17
MAX_PAYLOAD_LEN = 65535 - HEADER_LEN

_HDR = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")


def _pseudo_sum(src: bytes, dst: bytes, length: int) -> int:
    if len(src) == 16:
        return pseudo_sum_v6(src, dst, PROTO_UDP, length)
    return pseudo_sum_v4(src, dst, PROTO_UDP, length)


class UdpView:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview, src: bytes | None = None, dst: bytes | None = None) -> UdpView:
        """Check lengths; with ``src`` and ``dst`` (4 or 16 bytes) verify the checksum too."""
        n = len(buf)
        if n < HEADER_LEN:
            raise Malformed("udp.truncated")
        length = (buf[4] << 8) | buf[5]
        if length < HEADER_LEN:
            raise Malformed("udp.bad_length")
        if length > n:
            raise Malformed("udp.truncated")
        if length != n:
            buf = buf[:length]
        if src is not None and dst is not None:
            if buf[6] == 0 and buf[7] == 0:
                if len(src) == 16:
                    raise Malformed("udp.zero_checksum")
            elif checksum(buf, _pseudo_sum(src, dst, length)) != 0:
                raise Malformed("udp.bad_checksum")
        return cls(buf)

    @property
    def src_port(self) -> int:
        return (self.buf[0] << 8) | self.buf[1]

    @property
    def dst_port(self) -> int:
        return (self.buf[2] << 8) | self.buf[3]

    @property
    def length(self) -> int:
        return (self.buf[4] << 8) | self.buf[5]

    @property
    def checksum(self) -> int:
        return (self.buf[6] << 8) | self.buf[7]

    @property
    def payload(self) -> memoryview:
        return self.buf[HEADER_LEN:]


@dataclass(frozen=True, slots=True)
class UdpHeader:
    src_port: int
    dst_port: int
    payload_len: int

    buffer_len = HEADER_LEN

    @classmethod
    def parse(cls, view: UdpView) -> UdpHeader:
        b = view.buf
        return cls((b[0] << 8) | b[1], (b[2] << 8) | b[3], len(b) - HEADER_LEN)

    @property
    def length(self) -> int:
        return HEADER_LEN + self.payload_len

    def pseudo_sum(self, src: bytes, dst: bytes) -> int:
        """Partial sum of the pseudo-header (family from the address length)."""
        return _pseudo_sum(src, dst, HEADER_LEN + self.payload_len)

    def emit(self, buf: bytearray, offset: int = 0, checksum: int = 0) -> None:
        """Write the header at ``offset`` with ``checksum`` in its field (see module doc)."""
        length = HEADER_LEN + self.payload_len
        if length > 65535:
            raise ValueError("UDP length exceeds 65535")
        _HDR.pack_into(buf, offset, self.src_port, self.dst_port, length, checksum)


def complete_checksum(buf: bytearray, offset: int, src: bytes, dst: bytes) -> int:
    """Compute and store the checksum of the datagram at ``offset`` (header and payload in place).

    The length is read from the header; the field's old content is ignored.
    A computed 0 is stored as 0xFFFF (RFC 768).  Returns the stored value."""
    length = (buf[offset + 4] << 8) | buf[offset + 5]
    buf[offset + 6] = buf[offset + 7] = 0
    value = checksum(memoryview(buf)[offset : offset + length], _pseudo_sum(src, dst, length)) or 0xFFFF
    _U16.pack_into(buf, offset + 6, value)
    return value
