"""The harness's own checks can fail: a test of the oracle before trusting it."""

import struct

import pytest

from netstack.frames import udp_frame

from .harness import (
    GUEST,
    GUEST_MAC,
    GW,
    GW_MAC,
    IP,
    TCP,
    UDP,
    Ether,
    decode,
    encode,
    finish_checksum,
    packed,
)


def _offloaded_udp(seed_delta=0):
    macs = bytes.fromhex("525400123456"), bytes.fromhex("52550a000202")
    frame = bytearray(udp_frame(*macs, packed(GW), packed(GUEST), 53, 40000, b"abc"))
    struct.pack_into("!H", frame, 10 + 34 + 6, (struct.unpack_from("!H", frame, 10 + 34 + 6)[0] + seed_delta) & 0xFFFF)
    return frame


def test_decode_accepts_a_right_seed_and_rejects_a_wrong_one():
    f = decode(_offloaded_udp())
    assert f.pkt[UDP].sport == 53 and bytes(f.pkt[UDP].payload) == b"abc"
    with pytest.raises(AssertionError, match="UDP checksum"):
        decode(_offloaded_udp(seed_delta=1))


def test_decode_rejects_a_bad_ipv4_header_checksum_and_a_wrong_length():
    frame = _offloaded_udp()
    frame[10 + 14 + 10] ^= 0xFF
    with pytest.raises(AssertionError, match="IPv4 header"):
        decode(frame)
    with pytest.raises(AssertionError):
        decode(_offloaded_udp() + b"\0")  # longer than the IP total length


def test_decode_rejects_offload_flags_we_never_write():
    frame = bytearray(_offloaded_udp())
    frame[0] |= 2  # DATA_VALID
    with pytest.raises(AssertionError):
        decode(frame)


def test_encode_offload_is_what_a_kernel_would_finish():
    pkt = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.1") / TCP(sport=1, dport=2) / b"data"
    raw = bytearray(encode(pkt, offload=True))
    flags, gso, _, _, start, off = struct.unpack_from("<BBHHHH", raw)
    assert (flags, gso, start, off) == (1, 0, 34, 16)
    frame = raw[10:]
    assert frame != bytes(pkt)  # the field holds the seed, not the checksum
    finish_checksum(frame, start, off)
    assert bytes(frame) == bytes(pkt)  # finished, it is scapy's complete checksum
