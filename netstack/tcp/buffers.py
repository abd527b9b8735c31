"""Bounded byte queues of an endpoint.

* :class:`SendBuffer` — host→guest bytes from ``snd_una`` on (unacknowledged
  plus not yet sent), kept for retransmission.  A deque of immutable chunks
  plus a head offset: append and consume are O(1) per chunk, ``peek`` walks
  the chunks up to the requested offset (a handful: chunks are edge reads of
  up to 64 KiB and the buffer is bounded).  Bounded by its ``limit``; the
  endpoint never asks the edge for more (ReadTcp credit) than fits, and an
  append that would overflow raises :class:`OverflowError` (an edge contract
  violation the endpoint turns into an abort).
* :class:`ReorderQueue` — guest segments that arrived beyond a hole, kept
  (bounded by count and bytes) until the hole is filled, so that one lost
  frame does not cost the whole flight.  Entries are (seq, bytes, fin),
  sorted by distance from the point they wait for.
"""

from __future__ import annotations

from collections import deque

from .seq import HALF, MASK


class SendBuffer:
    __slots__ = ("_chunks", "_head", "_len", "limit")

    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already consumed
        self._len = 0
        self.limit = limit

    def __len__(self) -> int:
        return self._len

    @property
    def free(self) -> int:
        return self.limit - self._len

    def append(self, data: bytes) -> None:
        if not data:
            return
        if self._len + len(data) > self.limit:
            raise OverflowError("send buffer limit")
        self._chunks.append(bytes(data))
        self._len += len(data)

    def peek(self, offset: int, n: int) -> bytes:
        """``n`` bytes starting ``offset`` bytes after the head (clipped to what is there)."""
        if offset < 0 or n <= 0 or offset >= self._len:
            return b""
        n = min(n, self._len - offset)
        pos = offset + self._head
        parts = []
        for chunk in self._chunks:
            clen = len(chunk)
            if pos >= clen:
                pos -= clen
                continue
            take = min(clen - pos, n)
            if pos == 0 and take == clen:
                parts.append(chunk)
            else:
                parts.append(chunk[pos : pos + take])
            n -= take
            pos = 0
            if n == 0:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def consume(self, n: int) -> None:
        """Drop ``n`` bytes from the head (acknowledged by the guest)."""
        n = min(n, self._len)
        self._len -= n
        n += self._head
        chunks = self._chunks
        while chunks and n >= len(chunks[0]):
            n -= len(chunks.popleft())
        self._head = n

    def to_bytes(self) -> bytes:
        return self.peek(0, self._len)

    def clear(self) -> None:
        self._chunks.clear()
        self._head = self._len = 0


ADDED = "added"
COVERED = "covered"  # every byte (and the FIN) is already queued
FULL = "full"  # the count or byte bound would be exceeded


class ReorderQueue:
    __slots__ = ("_items", "_bytes", "max_items", "max_bytes")

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: list[tuple[int, bytes, bool]] = []
        self._bytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def add(self, base: int, seq: int, data: bytes, fin: bool) -> str:
        """Keep a segment that starts ``seq - base`` bytes beyond ``base``.

        Returns ADDED, or COVERED / FULL when nothing was kept."""
        dist = (seq - base) & MASK
        end = dist + len(data)
        items = self._items
        i = 0
        for i, (s, d, f) in enumerate(items):  # noqa: B007 — bounded by max_items
            sdist = (s - base) & MASK
            if sdist <= dist and sdist + len(d) >= end and (f or not fin):
                return COVERED
            if sdist > dist:
                break
        else:
            i = len(items)
        if len(items) >= self.max_items or self._bytes + len(data) > self.max_bytes:
            return FULL
        items.insert(i, (seq, data, fin))
        self._bytes += len(data)
        return ADDED

    def pop_ready(self, base: int) -> tuple[int, bytes, bool] | None:
        """The first queued segment that starts at or before ``base``, trimmed to
        start at ``base``; segments entirely before ``base`` are discarded."""
        items = self._items
        while items:
            seq, data, fin = items[0]
            back = (base - seq) & MASK
            if back >= HALF:
                return None  # starts beyond base: still a hole
            del items[0]
            self._bytes -= len(data)
            if back < len(data) or (back == len(data) and fin):
                return base, data[back:], fin
        return None

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
