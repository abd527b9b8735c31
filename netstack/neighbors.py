"""The guest's link-layer addresses, learned from what the guest sends.

Maps a guest IP address (4 or 16 bytes) to its MAC.  Entries come from the
source of every ARP packet and IP datagram the guest sends (RFC 826 "merge"
rule, RFC 4861 §7.2.3-5 for the v6 equivalents), so in practice the table is
warm before we ever need it.  When it isn't (a port forward toward a guest
that has not spoken yet), the stack asks with ARP / neighbour solicitation and
parks the frames for that address.

Every frame parked for an unresolved address asks again (the caller sends a
solicitation), as slirp4netns does for each packet: a first request that
the guest missed (its interface was not up yet) must not leave the address
unresolved for good, so the retransmissions of whatever waits ask again.

Bounded: at most MAX_ENTRIES addresses (the oldest learned is forgotten) and
MAX_PENDING frames per unresolved address, MAX_PENDING_ADDRS addresses.
Overflow keeps the newest: the oldest frame of that address, or every frame
of the address that has waited longest, is dropped and counted
(``neighbors.pending_overflow``, once per frame).
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

        Returns True: the caller should send a solicitation (always, see the
        module doc; the return value keeps the caller's contract)."""
        pending = self._pending
        waiting = pending.get(addr)
        if waiting is None:
            if len(pending) >= MAX_PENDING_ADDRS:
                oldest = next(iter(pending))
                self.counters.bump("neighbors.pending_overflow", len(pending.pop(oldest)))
            pending[addr] = [build]
            return True
        if len(waiting) >= MAX_PENDING:
            del waiting[0]
            self.counters.bump("neighbors.pending_overflow")
        waiting.append(build)
        return True
