"""What the TCP layer hands to the rest of the stack (besides edge actions).

* :class:`TcpSegment` — one segment for the guest.  ``gso_size`` is 0 for a
  segment that fits one MSS, else the guest's effective MSS (payload bytes per
  wire segment): the frame layer builds a single virtio-net GSO frame
  (gso_type TCPV4/TCPV6, NEEDS_CSUM) that the kernel cuts into segments of
  that size (notes/tap-offloads.md).  The frame layer computes the checksum.
* :class:`IcmpUnreachable` — "tell the guest its SYN could not be
  delivered": the host connect failed with EHOSTUNREACH (``HOST``) or another
  error (``NET``), or policy refused the destination (compat spec §4.2).  The
  TCP layer cannot build ICMP; the stack does, quoting ``datagram`` (the
  leading bytes of the guest's SYN datagram, IP header included) when the
  caller provided it, else an IP header it synthesizes from the addresses
  followed by ``tcp_header``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..wire.tcp import TcpHeader


@dataclass(frozen=True, slots=True)
class TcpSegment:
    link: int
    src_addr: bytes
    dst_addr: bytes
    header: TcpHeader
    payload: bytes = b""
    gso_size: int = 0


class Unreachable(enum.Enum):
    NET = "net"  # ICMPv4 3/0, ICMPv6 1/0 (no route)
    HOST = "host"  # ICMPv4 3/1, ICMPv6 1/3 (address unreachable)


@dataclass(frozen=True, slots=True)
class IcmpUnreachable:
    link: int
    src_addr: bytes  # the guest (source of the offending SYN)
    dst_addr: bytes  # where the guest tried to connect
    reason: Unreachable
    tcp_header: bytes  # the guest SYN's TCP header
    datagram: bytes | None = None  # leading bytes of the guest's IP datagram, if given
