"""The guest's link-layer addresses, learned from what the guest sends.

Maps a guest IP address (4 or 16 bytes) to its MAC.  Entries come from the
source of every ARP packet and IP datagram the guest sends (RFC 826 "merge"
rule, RFC 4861 §7.2.3-5 for the v6 equivalents), so in practice the table is
warm before we ever need it.  When it isn't (a port forward toward a guest
that has not spoken yet), the stack asks with ARP / neighbour solicitation and
parks the frames for that address.

Bounded: at most MAX_ENTRIES addresses (the oldest learned is forgotten) and
MAX_PENDING frames per unresolved address, MAX_PENDING_ADDRS addresses
(overflow: drop and count ``neighbors.pending_overflow``).
"""

from __future__ import annotations

from collections import OrderedDict

MAX_ENTRIES = 1024
MAX_PENDING = 16
MAX_PENDING_ADDRS = 64


class Neighbors:
    __slots__ = ("_macs", "_pending", "counters")

    def __init__(self, counters) -> None:
        self._macs: OrderedDict[bytes, bytes] = OrderedDict()
        self._pending: dict[bytes, list] = {}
        self.counters = counters

    def learn(self, addr: bytes, mac: bytes) -> list:
        """Record ``addr`` at ``mac``; returns frames that were waiting for it."""
        macs = self._macs
        if macs.get(addr) != mac:
            macs[addr] = mac
            macs.move_to_end(addr)
            if len(macs) > MAX_ENTRIES:
                macs.popitem(last=False)
        return self._pending.pop(addr, []) if self._pending else []

    def lookup(self, addr: bytes) -> bytes | None:
        return self._macs.get(addr)

    def park(self, addr: bytes, build) -> bool:
        """Keep ``build`` (mac -> frame) until ``addr`` resolves.

        Returns True if this is the first frame parked for ``addr`` (the caller
        should then send a solicitation)."""
        waiting = self._pending.get(addr)
        if waiting is None:
            if len(self._pending) >= MAX_PENDING_ADDRS:
                self.counters.bump("neighbors.pending_overflow")
                return False
            self._pending[addr] = [build]
            return True
        if len(waiting) >= MAX_PENDING:
            self.counters.bump("neighbors.pending_overflow")
            return False
        waiting.append(build)
        return False
