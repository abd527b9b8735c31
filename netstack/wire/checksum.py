"""Internet checksum (RFC 1071) with pseudo-header sums and RFC 1624 updates.

This is the pure-Python twin of native/checksum.c (same names without the
``sn_`` prefix, same contract) and the oracle for the parity tests.

A *partial sum* is the one's-complement sum of big-endian 16-bit words,
returned folded into at most 17 bits so it can be fed back in as ``initial``;
an odd trailing byte is the high byte of a word.  Partial sums chain only
across even-length pieces.  ``csum_fold`` folds to 16 bits without inverting
(the seed a virtio-net NEEDS_CSUM frame carries); ``checksum`` is the
inverted value that goes on the wire.

Speed trick: 2**16 ≡ 1 (mod 0xffff), so the sum of 16-bit words of ``data``
is congruent to ``int.from_bytes(data)`` modulo 0xffff, and one's-complement
folding of a non-zero sum never yields 0.  One big-int ``%`` replaces the
per-word loop.
"""

from __future__ import annotations

__all__ = [
    "csum_partial",
    "csum_fold",
    "checksum",
    "pseudo_sum_v4",
    "pseudo_sum_v6",
    "csum_update16",
    "csum_update32",
]


def _fold_int(value: int) -> int:
    """Fold a non-negative integer to its 16-bit one's-complement sum."""
    if value == 0:
        return 0
    return (value - 1) % 0xFFFF + 1


def csum_partial(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    return _fold_int(int.from_bytes(data, "big") + initial) if (data or initial) else 0


def csum_fold(partial: int) -> int:
    return _fold_int(partial)


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    return ~csum_fold(csum_partial(data, initial)) & 0xFFFF


def pseudo_sum_v4(src: bytes, dst: bytes, proto: int, l4_len: int) -> int:
    return _fold_int(
        int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + (l4_len >> 16) + (l4_len & 0xFFFF)
    )


def pseudo_sum_v6(src: bytes, dst: bytes, next_header: int, l4_len: int) -> int:
    return _fold_int(
        int.from_bytes(src, "big")
        + int.from_bytes(dst, "big")
        + next_header
        + (l4_len >> 16)
        + (l4_len & 0xFFFF)
    )


def csum_update16(csum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')."""
    s = (~csum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    return ~_fold_int(s) & 0xFFFF


def csum_update32(csum: int, old_word: int, new_word: int) -> int:
    s = (
        (~csum & 0xFFFF)
        + (~(old_word >> 16) & 0xFFFF)
        + (~old_word & 0xFFFF)
        + (new_word >> 16)
        + (new_word & 0xFFFF)
    )
    return ~_fold_int(s) & 0xFFFF
