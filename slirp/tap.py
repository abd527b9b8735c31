"""The TAP device: open it (inside the target namespace) and set up offloads.

The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: every frame read
or written carries a 10-byte virtio-net header, which is what lets the guest
hand us 64 KiB TSO super-frames and accept 64 KiB GSO frames from us
(shared/notes/tap-offloads.md).  Offloads are negotiated on the fd after it
has been passed back to the long-running process — TUNSETOFFLOAD needs no
privilege once TUNSETIFF is done (gotcha 12) — and they take their flags by
value (gotcha 1).  An existing persistent TAP (RootlessKit pre-creates tap0)
is attached to; a busy one fails with EBUSY.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

VNET_HDR_LEN = 10

# Most to least capable; the first the kernel accepts wins.
OFFLOAD_CHOICES = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM,
    0,
)


def open_tap(name: str) -> int:
    """Open /dev/net/tun and attach to (or create) TAP ``name``; returns the fd.

    Raises OSError with ``filename`` naming the step that failed."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError:
        os.close(fd)
        raise
    return fd


def tap_name(fd: int) -> str:
    ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    return ifr[:16].rstrip(b"\0").decode()


def enable_offloads(fd: int) -> int:
    """Set the vnet header size and the richest offload set the kernel takes.

    Returns the TUN_F_* flags in force."""
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    for flags in OFFLOAD_CHOICES:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)  # by value: gotcha 1
        except OSError:
            continue
        return flags
    return 0
