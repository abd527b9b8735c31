"""IP fragment reassembly for IPv4 (RFC 791 §3.2) and IPv6 (RFC 8200 §4.5), sans-IO.

One :class:`Reassembler` serves both families.  A datagram is keyed by
(source, destination, identification, protocol) for IPv4 and (source,
destination, identification, None) for IPv6 (RFC 8200 §4.5 leaves the
protocol out); the address length tells the families apart.  Fragments go in
through :meth:`Reassembler.add_v4` / :meth:`Reassembler.add_v6` with ``now``
(seconds, monotonic, from the caller: nothing here reads a clock); a complete
datagram comes out as the bytes of an ordinary, unfragmented packet that the
caller dispatches like any other (IPv4: the first fragment's header, options
included, with MF and offset cleared, the total length set and the checksum
recomputed; IPv6: the first fragment's unfragmentable part with the
Fragment header removed and the Next Header and Payload Length fixed up).

Strictness.  Overlapping fragments drop the whole datagram, for IPv6 as
RFC 5722 §4 requires and for IPv4 just as strictly (overlaps are how
reassembly-based evasion and the old teardrop crashes work).  Exact
duplicates (same offset, same bytes) are dropped alone, as RFC 5722 §4
allows.  A dropped datagram leaves a tombstone until its timer runs out, so
its later fragments are dropped too ("including those not yet received").
Conflicting ends (two last fragments, data past the last fragment) are
treated like overlaps.  A fragment that is wrong on its own is dropped alone:
a non-last fragment whose length is not a multiple of 8 (or is 0), or one
that would make the datagram exceed 65535 bytes (RFC 8200 §4.5; for IPv4
this is the ping-of-death check).  IPv6 atomic fragments (offset 0, M clear)
are returned at once without touching the table (RFC 6946 §4).  A
reassembled IPv6 packet that contains another Fragment header is dropped
(fragmentation happens once, at the source).

Bounds (STYLE.md §6), all constructor arguments:

* ``max_datagrams`` in flight, tombstones included: a new datagram beyond it
  evicts the oldest one;
* ``max_held_bytes`` of fragment data held in total: going over evicts the
  oldest other datagrams until it fits;
* ``max_datagram_bytes`` of data and ``max_fragments`` per datagram: going
  over drops that datagram (tombstone);
* time: each datagram lives ``timeout_v4_s`` (30 s: RFC 791 §3.2 suggests
  at least 15 s, RFC 1122 §3.3.2 recommends 60-120 s; 30 s is Linux's
  ipfrag_time) or ``timeout_v6_s`` (60 s, RFC 8200 §4.5) from its first
  fragment; ``now`` must not go backwards.  :meth:`expire` removes the
  expired ones and returns, for each that had its first fragment, that
  fragment (IP header on) so the caller may send ICMP Time Exceeded code 1
  (RFC 792, RFC 1122 §3.3.2; RFC 8200 §4.5 / RFC 4443 §3.3).
  :meth:`next_deadline` says when to call it.  ``add_*`` also purge expired
  datagrams before accounting, so stale entries never cause evictions; what
  they purge is reported by the next :meth:`expire`.

Every drop increments ``counters["fragments.<reason>"]``, once per event:
``bad_length``, ``too_big``, ``duplicate``, ``overlap``,
``inconsistent_end``, ``too_many_fragments``, ``datagram_over_limit``,
``dead_datagram`` (a fragment of a tombstoned datagram), ``evicted``,
``expired``, ``nested_fragment``; and ``fragments.reassembled`` counts
successes.

Limits: the first IPv6 fragment is not required to hold the whole header
chain (RFC 7112); reassembly here happens before any header inspection, so
that rule protects nothing for us.  No ICMP is generated here (Parameter
Problem for bad lengths is left out; Time Exceeded is the caller's, from
:meth:`expire`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

from .wire import Malformed
from .wire.checksum import checksum
from .wire.ipv4 import Ipv4View
from .wire.ipv6 import HEADER_LEN as IPV6_HEADER_LEN
from .wire.ipv6 import Ipv6Chain, Ipv6View

MAX_DATAGRAMS = 64
MAX_HELD_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM_BYTES = 65535
MAX_FRAGMENTS = 256
TIMEOUT_V4_S = 30.0
TIMEOUT_V6_S = 60.0

_MAX_IP_LEN = 65535


@dataclass(frozen=True, slots=True)
class Expired:
    """A datagram that timed out; ``first_fragment`` is its first fragment (IP header on) if it came."""

    family: int  # 4 or 6
    first_fragment: bytes | None


class _Datagram:
    __slots__ = ("family", "deadline", "created", "starts", "pieces", "received", "end", "head", "dead")

    def __init__(self, family: int, now: float, deadline: float):
        self.family = family
        self.created = now
        self.deadline = deadline
        self.starts: list[int] = []  # sorted starts of ``pieces``
        self.pieces: list[tuple[int, int, bytes]] = []  # (start, end, data), no overlaps
        self.received = 0  # bytes of data held
        self.end: int | None = None  # known once the last fragment came
        # Headers of the first fragment: IPv4 header; IPv6 everything up to and
        # including the Fragment header (with the Ipv6Chain positions).
        self.head: tuple[bytes, Ipv6Chain | None] | None = None
        self.dead = False


class Reassembler:
    def __init__(
        self,
        *,
        max_datagrams: int = MAX_DATAGRAMS,
        max_held_bytes: int = MAX_HELD_BYTES,
        max_datagram_bytes: int = MAX_DATAGRAM_BYTES,
        max_fragments: int = MAX_FRAGMENTS,
        timeout_v4_s: float = TIMEOUT_V4_S,
        timeout_v6_s: float = TIMEOUT_V6_S,
    ):
        self.max_datagrams = max_datagrams
        self.max_held_bytes = max_held_bytes
        self.max_datagram_bytes = max_datagram_bytes
        self.max_fragments = max_fragments
        self.timeout_v4_s = timeout_v4_s
        self.timeout_v6_s = timeout_v6_s
        self.counters: Counter[str] = Counter()
        # One table per family: insertion order is deadline order (fixed
        # timeout per family, non-decreasing ``now``).
        self._v4: dict[tuple, _Datagram] = {}
        self._v6: dict[tuple, _Datagram] = {}
        self._held = 0
        self._pending: list[tuple[float, Expired]] = []  # purged by add_*, reported by expire()

    # -- introspection ------------------------------------------------------

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)

    @property
    def held_bytes(self) -> int:
        return self._held

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`expire` has work to do, or None when idle."""
        times = [t for t, _ in self._pending]
        for table in (self._v4, self._v6):
            for d in table.values():
                times.append(d.deadline)
                break
        return min(times) if times else None

    # -- time ---------------------------------------------------------------

    def expire(self, now: float) -> list[Expired]:
        """Drop datagrams whose time is up; return those worth an ICMP Time Exceeded."""
        self._purge(now)
        out = [e for _, e in self._pending if e.first_fragment is not None]
        self._pending.clear()
        return out

    def _purge(self, now: float) -> None:
        for table in (self._v4, self._v6):
            while table:
                key, d = next(iter(table.items()))
                if d.deadline > now:
                    break
                self._remove(table, key)
                if not d.dead:
                    self.counters["fragments.expired"] += 1
                    if len(self._pending) < self.max_datagrams:
                        self._pending.append((d.deadline, Expired(d.family, self._first_fragment(d))))

    @staticmethod
    def _first_fragment(d: _Datagram) -> bytes | None:
        if d.head is None or not d.pieces or d.pieces[0][0] != 0:
            return None
        return d.head[0] + d.pieces[0][2]

    # -- table upkeep ---------------------------------------------------------

    def _remove(self, table: dict, key: tuple) -> None:
        d = table.pop(key)
        self._held -= d.received

    def _kill(self, d: _Datagram, reason: str) -> None:
        """Drop the datagram's data and keep a tombstone until its deadline."""
        self.counters[reason] += 1
        self._held -= d.received
        d.received = 0
        d.pieces = []
        d.starts = []
        d.head = None
        d.dead = True

    def _evict_oldest(self, keep: _Datagram | None) -> bool:
        """Remove the oldest datagram other than ``keep``; False if there is none."""
        best = None
        for table in (self._v4, self._v6):
            for key, d in table.items():  # oldest first; skip ``keep`` if it is the head
                if d is keep:
                    continue
                if best is None or d.created < best[2].created:
                    best = (table, key, d)
                break
        if best is None:
            return False
        self._remove(best[0], best[1])
        self.counters["fragments.evicted"] += 1
        return True

    def _lookup(self, table: dict, key: tuple, family: int, now: float) -> _Datagram:
        d = table.get(key)
        if d is None:
            while len(self) >= self.max_datagrams and self._evict_oldest(None):
                pass
            timeout = self.timeout_v4_s if family == 4 else self.timeout_v6_s
            d = table[key] = _Datagram(family, now, now + timeout)
        return d

    # -- the common core ------------------------------------------------------

    def _insert(self, table: dict, key: tuple, d: _Datagram, start: int, more: bool, data: memoryview) -> bool:
        """Add one fragment's data; True when the datagram became complete."""
        if d.dead:
            self.counters["fragments.dead_datagram"] += 1
            return False
        end = start + len(data)
        if not more:
            if (d.end is not None and d.end != end) or (d.pieces and d.pieces[-1][1] > end):
                self._kill(d, "fragments.inconsistent_end")
                return False
            d.end = end
        elif d.end is not None and end > d.end:
            self._kill(d, "fragments.inconsistent_end")
            return False
        if end > start:
            i = bisect.bisect_left(d.starts, start)
            if i < len(d.pieces) and d.pieces[i][0] == start:
                s, e, old = d.pieces[i]
                if e == end and old == data:
                    self.counters["fragments.duplicate"] += 1
                    return False
                self._kill(d, "fragments.overlap")
                return False
            if (i > 0 and d.pieces[i - 1][1] > start) or (i < len(d.pieces) and d.pieces[i][0] < end):
                self._kill(d, "fragments.overlap")
                return False
            if len(d.pieces) >= self.max_fragments:
                self._kill(d, "fragments.too_many_fragments")
                return False
            if d.received + len(data) > self.max_datagram_bytes:
                self._kill(d, "fragments.datagram_over_limit")
                return False
            while self._held + len(data) > self.max_held_bytes:
                if not self._evict_oldest(d):
                    self._kill(d, "fragments.datagram_over_limit")
                    return False
            d.starts.insert(i, start)
            d.pieces.insert(i, (start, end, bytes(data)))
            d.received += len(data)
            self._held += len(data)
        return d.end is not None and d.received == d.end and d.head is not None

    def _take(self, table: dict, key: tuple, d: _Datagram) -> bytes:
        self._remove(table, key)
        self.counters["fragments.reassembled"] += 1
        return b"".join(p[2] for p in d.pieces)

    # -- IPv4 -------------------------------------------------------------------

    def add_v4(self, ip: Ipv4View, now: float) -> bytes | None:
        """Add an IPv4 fragment (a checked view); the whole datagram once complete.

        A datagram that is not a fragment is returned as is."""
        if not ip.is_fragment:
            return bytes(ip.buf)
        data = ip.payload
        start = ip.frag_offset
        more = ip.more_fragments
        if more and (len(data) & 7 or not data):
            self.counters["fragments.bad_length"] += 1
            return None
        if ip.header_len + start + len(data) > _MAX_IP_LEN:
            self.counters["fragments.too_big"] += 1
            return None
        if self._pending or self._v4 or self._v6:
            self._purge(now)
        b = ip.buf
        key = (bytes(b[12:16]), bytes(b[16:20]), (b[4] << 8) | b[5], b[9])
        d = self._lookup(self._v4, key, 4, now)
        if start == 0 and not d.dead and d.head is None:
            d.head = (bytes(ip.header), None)
        if not self._insert(self._v4, key, d, start, more, data):
            return None
        header = bytearray(d.head[0])
        payload = self._take(self._v4, key, d)
        hlen = len(header)
        total = hlen + len(payload)
        header[2] = total >> 8
        header[3] = total & 0xFF
        header[6] &= 0x40  # keep DF, clear reserved, MF and the offset
        header[7] = 0
        header[10] = header[11] = 0
        c = checksum(header)
        header[10] = c >> 8
        header[11] = c & 0xFF
        return bytes(header) + payload

    # -- IPv6 -------------------------------------------------------------------

    def add_v6(self, ip: Ipv6View, chain: Ipv6Chain, now: float) -> bytes | None:
        """Add an IPv6 fragment (a checked view and its walk, with ``chain.fragment`` set).

        Returns the reassembled packet without the Fragment header once
        complete (at once for an atomic fragment)."""
        frag = chain.fragment
        if frag is None:
            return bytes(ip.buf)
        b = ip.buf
        data = b[chain.upper_offset :]
        unfrag_len = chain.fragment_header_pos
        if frag.is_atomic:
            return self._rebuild_v6(bytes(b[: chain.upper_offset]), chain, bytes(data))
        if frag.more and (len(data) & 7 or not data):
            self.counters["fragments.bad_length"] += 1
            return None
        if unfrag_len - IPV6_HEADER_LEN + frag.offset + len(data) > _MAX_IP_LEN:
            self.counters["fragments.too_big"] += 1
            return None
        if self._pending or self._v4 or self._v6:
            self._purge(now)
        key = (bytes(b[8:24]), bytes(b[24:40]), frag.ident, None)
        d = self._lookup(self._v6, key, 6, now)
        if frag.offset == 0 and not d.dead and d.head is None:
            d.head = (bytes(b[: chain.upper_offset]), chain)
        if not self._insert(self._v6, key, d, frag.offset, frag.more, data):
            return None
        head, first_chain = d.head
        payload = self._take(self._v6, key, d)
        if first_chain.fragment_header_pos - IPV6_HEADER_LEN + len(payload) > _MAX_IP_LEN:
            self.counters["fragments.too_big"] += 1  # only if the first fragment's header grew
            return None
        return self._rebuild_v6(head, first_chain, payload)

    def _rebuild_v6(self, head: bytes, chain: Ipv6Chain, payload: bytes) -> bytes | None:
        unfrag = bytearray(head[: chain.fragment_header_pos])
        unfrag[chain.fragment_next_header_pos] = chain.fragment.next_header
        plen = len(unfrag) - IPV6_HEADER_LEN + len(payload)
        unfrag[4] = plen >> 8
        unfrag[5] = plen & 0xFF
        packet = bytes(unfrag) + payload
        try:
            nested = Ipv6View.check(memoryview(packet)).walk().fragment
        except Malformed:
            nested = None  # not ours to judge: the caller's walk counts it
        if nested is not None:
            self.counters["fragments.nested_fragment"] += 1
            return None
        return packet
