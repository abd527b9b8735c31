"""The Internet checksum: native (native/checksum.c) against its Python twin
(netstack/wire/checksum.py), and both against a plain word-by-word reference
(RFC 1071 §4.1's algorithm written the slow, obvious way)."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netstack.wire import checksum as py

native = pytest.importorskip("slirp._native", reason="the native module is built by tests/run")
lib, ffi = native.lib, native.ffi


def reference_sum(data: bytes, initial: int = 0) -> int:
    """Folded one's-complement sum of big-endian 16-bit words (RFC 1071 §4.1)."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


EDGE = [
    b"",
    b"\x00",
    b"\xff",
    b"\x00\x00",
    b"\xff\xff",
    b"\xff\xff" * 1000,
    b"\x00" * 65536,
    b"\xff" * 65535,
    bytes(range(256)) * 3 + b"\x7f",
    b"\x45\x00\x00\x73\x00\x00\x40\x00\x40\x11\x00\x00\xc0\xa8\x00\x01\xc0\xa8\x00\xc7",  # RFC 1071 style header
]
INITIALS = [0, 1, 0xFFFF, 0x1FFFE, 0x12345]


@pytest.mark.parametrize("data", EDGE, ids=range(len(EDGE)))
@pytest.mark.parametrize("initial", INITIALS)
def test_edge_cases_agree(data, initial):
    expected = reference_sum(data, initial)
    assert py.csum_fold(py.csum_partial(data, initial)) == expected
    assert lib.sn_csum_fold(lib.sn_csum_partial(data, len(data), initial)) == expected
    assert py.checksum(data, initial) == ~expected & 0xFFFF
    assert lib.sn_checksum(data, len(data), initial) == ~expected & 0xFFFF


def test_random_lengths_and_alignments_agree():
    rng = random.Random(1071)
    buf = os.urandom(70000)
    for _ in range(2000):
        start = rng.randrange(0, 64)
        n = rng.choice((rng.randrange(0, 70), rng.randrange(0, 2000), rng.randrange(0, 65536)))
        data = buf[start : start + n]
        initial = rng.randrange(0, 0x20000)
        # The native code reads through an unaligned pointer into the buffer.
        ptr = ffi.from_buffer(buf)
        c = lib.sn_csum_fold(lib.sn_csum_partial(ptr + start, len(data), initial))
        assert c == py.csum_fold(py.csum_partial(data, initial)) == reference_sum(data, initial)


@given(st.binary(max_size=3000), st.integers(0, 0x1FFFE))
@settings(max_examples=300, deadline=None)
def test_property_native_equals_python(data, initial):
    assert lib.sn_checksum(data, len(data), initial) == py.checksum(data, initial)


def test_a_packet_with_its_checksum_sums_to_zero():
    data = bytearray(os.urandom(101)) + b"\0\0\0"
    csum = py.checksum(bytes(data))
    data[-2:] = csum.to_bytes(2, "big")  # in an even position after 102 bytes
    assert py.checksum(bytes(data)) == 0
    assert lib.sn_checksum(bytes(data), len(data), 0) == 0


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.integers(0, 255), st.integers(0, 0xFFFFFFFF))
@settings(max_examples=300, deadline=None)
def test_pseudo_header_v4(src, dst, proto, length):
    reference = reference_sum(src + dst + bytes([0, proto]) + (length & 0xFFFF).to_bytes(2, "big"), length >> 16)
    assert py.csum_fold(py.pseudo_sum_v4(src, dst, proto, length)) == reference
    assert lib.sn_csum_fold(lib.sn_pseudo_sum_v4(src, dst, proto, length)) == reference


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), st.integers(0, 255), st.integers(0, 0xFFFFFFFF))
@settings(max_examples=300, deadline=None)
def test_pseudo_header_v6(src, dst, nh, length):
    # RFC 8200 §8.1: src, dst, 32-bit length, 3 zero bytes, next header.
    reference = reference_sum(src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, nh]))
    assert py.csum_fold(py.pseudo_sum_v6(src, dst, nh, length)) == reference
    assert lib.sn_csum_fold(lib.sn_pseudo_sum_v6(src, dst, nh, length)) == reference


@given(st.binary(min_size=2, max_size=200).filter(lambda b: len(b) % 2 == 0), st.data())
@settings(max_examples=300, deadline=None)
def test_incremental_update_16_matches_recomputation(data, draw):
    """RFC 1624 eqn. 3: changing one word updates the checksum exactly as a
    full recomputation would.  (Its one exception, RFC 1624 §3: data that is
    all zeros, whose sum is +0 where eqn. 3 yields -0 — no header we update
    can be all zeros.)"""
    index = draw.draw(st.integers(0, len(data) // 2 - 1))
    new = draw.draw(st.integers(0, 0xFFFF))
    old = int.from_bytes(data[2 * index : 2 * index + 2], "big")
    before = py.checksum(data)
    changed = data[: 2 * index] + new.to_bytes(2, "big") + data[2 * index + 2 :]
    assume(any(data) and any(changed))
    after = py.checksum(changed)
    assert py.csum_update16(before, old, new) == after
    assert lib.sn_csum_update16(before, old, new) == after


@given(st.binary(min_size=4, max_size=200).filter(lambda b: len(b) % 2 == 0), st.data())
@settings(max_examples=300, deadline=None)
def test_incremental_update_32_matches_recomputation(data, draw):
    """An address change (32 bits on a 16-bit boundary), as NAT rewriting does."""
    index = draw.draw(st.integers(0, len(data) // 2 - 2))
    new = draw.draw(st.integers(0, 0xFFFFFFFF))
    old = int.from_bytes(data[2 * index : 2 * index + 4], "big")
    before = py.checksum(data)
    changed = data[: 2 * index] + new.to_bytes(4, "big") + data[2 * index + 4 :]
    assume(any(data) and any(changed))  # RFC 1624 §3's exception, as above
    after = py.checksum(changed)
    assert py.csum_update32(before, old, new) == after
    assert lib.sn_csum_update32(before, old, new) == after
