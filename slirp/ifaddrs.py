"""Look up a host interface's address (for --outbound-addr=IFNAME).

IPv4 through the SIOCGIFADDR ioctl, IPv6 from /proc/net/if_inet6 (global
scope preferred) — the two things getifaddrs(3) would give slirp4netns.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from .config import IFNAMSIZ, parse_ip_literal

SIOCGIFADDR = 0x8915


def resolve_outbound(value: str, version: int) -> bytes | None:
    """An IP literal of the right family, or the first address of interface ``value``."""
    literal = parse_ip_literal(value, version)
    if literal is not None:
        return literal
    if not value or len(value.encode()) >= IFNAMSIZ:
        return None
    return interface_address_v4(value) if version == 4 else interface_address_v6(value)


def interface_address_v4(ifname: str) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            ifreq = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("16s16x", ifname.encode()))
        except OSError:
            return None
    return ifreq[20:24]


def interface_address_v6(ifname: str, path: str = "/proc/net/if_inet6") -> bytes | None:
    best: tuple[int, bytes] | None = None
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or fields[5] != ifname:
            continue
        addr, scope = bytes.fromhex(fields[0]), int(fields[3], 16)
        rank = 0 if scope == 0 else 1  # global first, then link-local and others
        if best is None or rank < best[0]:
            best = (rank, addr)
    return best[1] if best else None
