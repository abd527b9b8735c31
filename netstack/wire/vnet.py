"""virtio-net header (virtio spec 1.2 §5.1.6, ``struct virtio_net_hdr``).

Every read from and write to a TAP opened with IFF_VNET_HDR carries this
10-byte header in front of the Ethernet frame, ARP and pure ACKs included
(shared/notes/tap-offloads.md).  Fields are little-endian.

* flags: NEEDS_CSUM (1) — the L4 checksum is partial: the field holds the
  folded, non-inverted pseudo-header sum; csum_start (from the start of the
  Ethernet header) and csum_offset locate it.  DATA_VALID (2) is ignored on
  write by the kernel.
* gso_type: NONE, TCPV4 (1), UDP (3, UFO), TCPV6 (4), UDP_L4 (5, USO); ECN
  (0x80) is or-ed in.  gso_size is the MSS of the segments to cut; 0 with a
  GSO type is EINVAL.  hdr_len is the length of all headers (a hint).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed

HEADER_LEN = 10

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_HDR = struct.Struct("<BBHHHH")

ZERO = bytes(HEADER_LEN)


class VnetView:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview) -> VnetView:
        if len(buf) < HEADER_LEN:
            raise Malformed("vnet.truncated")
        return cls(buf)

    @property
    def flags(self) -> int:
        return self.buf[0]

    @property
    def gso_type(self) -> int:
        return self.buf[1]

    @property
    def hdr_len(self) -> int:
        return self.buf[2] | (self.buf[3] << 8)

    @property
    def gso_size(self) -> int:
        return self.buf[4] | (self.buf[5] << 8)

    @property
    def csum_start(self) -> int:
        return self.buf[6] | (self.buf[7] << 8)

    @property
    def csum_offset(self) -> int:
        return self.buf[8] | (self.buf[9] << 8)

    @property
    def frame(self) -> memoryview:
        return self.buf[HEADER_LEN:]


@dataclass(frozen=True, slots=True)
class VnetHeader:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    buffer_len = HEADER_LEN

    @classmethod
    def parse(cls, view: VnetView) -> VnetHeader:
        return cls(*_HDR.unpack_from(view.buf, 0))

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        _HDR.pack_into(
            buf, offset, self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )
