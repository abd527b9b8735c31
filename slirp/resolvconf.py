"""The host's DNS upstreams: the ``nameserver`` lines of resolv.conf, re-read on change.

Laptops move between networks and resolv.conf changes under a running
stack (NetworkManager and systemd-resolved rewrite or replace it), so the
Driver calls :meth:`ResolvConf.changed` every RESOLV_CONF_CHECK_S seconds:
a stat of the path (which follows symlinks, so a replaced target is seen)
and a re-read only when inode, size or mtime moved.  Addresses come out as
packed bytes, in file order, IPv4 and IPv6 alike (an IPv6 address with a
``%zone`` suffix is skipped: a link-local resolver cannot be reached from a
NAT socket without its scope).  A missing or unreadable file means no
upstreams.
"""

from __future__ import annotations

import ipaddress
import os

RESOLV_CONF_CHECK_S = 2.0
MAX_NAMESERVERS = 8


def parse_nameservers(text: str) -> list[bytes]:
    out: list[bytes] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            addr = ipaddress.ip_address(fields[1])
        except ValueError:
            continue
        if addr.packed not in out:
            out.append(addr.packed)
        if len(out) >= MAX_NAMESERVERS:
            break
    return out


class ResolvConf:
    __slots__ = ("path", "_signature")

    def __init__(self, path: str):
        self.path = path
        self._signature: tuple | None = ()

    def changed(self) -> list[bytes] | None:
        """The nameservers if the file changed since the last call, else None."""
        try:
            st = os.stat(self.path)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            signature = None
        if signature == self._signature:
            return None
        self._signature = signature
        if signature is None:
            return []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return parse_nameservers(f.read())
        except OSError:
            return []
