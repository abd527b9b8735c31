"""Sequence-number arithmetic modulo 2**32 (RFC 9293 §3.4).

Sequence numbers are ints in [0, 2**32).  ``a`` is "before" ``b`` when the
forward distance from ``a`` to ``b`` is in (0, 2**31); comparisons are only
meaningful for numbers less than 2**31 apart, which every window in this
package guarantees (windows are at most 2**30, RFC 7323 §2.3).
"""

from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000


def sub(a: int, b: int) -> int:
    """Forward distance from ``b`` to ``a`` (``a - b`` mod 2**32)."""
    return (a - b) & MASK


def lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & MASK) < HALF


def le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < HALF


def gt(a: int, b: int) -> bool:
    return 0 < ((a - b) & MASK) < HALF


def ge(a: int, b: int) -> bool:
    return ((a - b) & MASK) < HALF
