"""The bounded queues (buffers.py) and sequence arithmetic (seq.py)."""

import pytest

from netstack.tcp.buffers import ADDED, COVERED, FULL, ReorderQueue, SendBuffer
from netstack.tcp.seq import ge, gt, le, lt, sub

M = 0xFFFFFFFF


def test_sequence_comparisons_wrap():
    assert lt(M, 0) and gt(0, M) and le(5, 5) and ge(5, 5)
    assert lt(M - 10, 10) and not lt(10, M - 10)
    assert sub(3, M) == 4 and sub(M, 3) == M - 3


def test_send_buffer_peek_consume_across_chunks():
    b = SendBuffer(limit=100)
    b.append(b"abc")
    b.append(b"")
    b.append(b"defgh")
    b.append(b"ij")
    assert len(b) == 10 and b.free == 90
    assert b.peek(0, 10) == b"abcdefghij"
    assert b.peek(2, 4) == b"cdef"
    assert b.peek(3, 5) == b"defgh"  # exactly one chunk, not copied
    assert b.peek(8, 50) == b"ij"
    assert b.peek(10, 1) == b"" and b.peek(-1, 1) == b"" and b.peek(0, 0) == b""
    b.consume(4)
    assert b.to_bytes() == b"efghij" and len(b) == 6
    b.consume(4)
    assert b.peek(0, 2) == b"ij"
    b.consume(99)
    assert len(b) == 0 and b.peek(0, 1) == b""
    b.append(b"x" * 100)
    with pytest.raises(OverflowError):
        b.append(b"y")
    b.clear()
    assert len(b) == 0


def test_reorder_queue_orders_trims_and_bounds():
    q = ReorderQueue(max_items=3, max_bytes=1000)
    base = M - 5  # across the wrap
    assert q.add(base, (base + 20) & M, b"C" * 10, False) is ADDED
    assert q.add(base, (base + 10) & M, b"B" * 10, False) is ADDED
    assert q.add(base, (base + 12) & M, b"b" * 5, False) is COVERED
    assert q.add(base, (base + 30) & M, b"", True) is ADDED  # a lone FIN
    assert q.add(base, (base + 40) & M, b"D", False) is FULL  # 3 items
    assert len(q) == 3 and q.nbytes == 20
    assert q.pop_ready(base) is None  # still a hole at base
    base = (base + 15) & M  # the hole filled up to B's middle
    assert q.pop_ready(base) == (base, b"B" * 5, False)
    base = (base + 5) & M
    assert q.pop_ready(base) == (base, b"C" * 10, False)
    base = (base + 10) & M
    assert q.pop_ready(base) == (base, b"", True)
    assert q.pop_ready(base) is None and len(q) == 0


def test_reorder_queue_drops_stale_and_respects_bytes():
    q = ReorderQueue(max_items=10, max_bytes=10)
    assert q.add(0, 5, b"12345", False) is ADDED
    assert q.add(0, 20, b"123456", False) is FULL  # would exceed max_bytes
    assert q.pop_ready(50) is None  # entirely before base: discarded
    assert len(q) == 0 and q.nbytes == 0
    q.add(0, 5, b"xy", False)
    q.clear()
    assert len(q) == 0
