"""UDP (netstack/wire/udp.py) against scapy both ways, IPv4 and IPv6, plus fuzzing."""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from netstack.wire import Malformed
from netstack.wire.checksum import checksum, csum_partial, csum_fold, pseudo_sum_v4
from netstack.wire.udp import MAX_PAYLOAD_LEN, UdpHeader, UdpView, complete_checksum

V4 = (bytes([10, 0, 2, 100]), bytes([10, 0, 2, 3]))
V6 = (bytes.fromhex("fd000000000000000000000000000064"), bytes.fromhex("fd000000000000000000000000000003"))
S4 = ("10.0.2.100", "10.0.2.3")
S6 = ("fd00::64", "fd00::3")


def _segment(family: int, payload: bytes, **kw) -> bytes:
    if family == 4:
        return bytes((IP(src=S4[0], dst=S4[1]) / UDP(**kw) / Raw(payload))[UDP])
    return bytes((IPv6(src=S6[0], dst=S6[1]) / UDP(**kw) / Raw(payload))[UDP])


def _addrs(family: int):
    return V4 if family == 4 else V6


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("payload", [b"", b"x", b"dns query bytes", bytes(range(256)) * 5 + b"odd"])
def test_parse_scapy(family, payload):
    raw = _segment(family, payload, sport=40000, dport=53)
    v = UdpView.check(memoryview(raw), *_addrs(family))
    assert (v.src_port, v.dst_port, v.length) == (40000, 53, 8 + len(payload))
    assert v.checksum == UDP(raw).chksum != 0
    assert bytes(v.payload) == payload
    assert UdpHeader.parse(v) == UdpHeader(40000, 53, len(payload))


def test_trailing_bytes_beyond_length_are_trimmed():
    raw = _segment(4, b"abc", sport=1, dport=2)
    v = UdpView.check(memoryview(raw + b"junk"), *V4)
    assert bytes(v.payload) == b"abc" and len(v.buf) == 11


def test_zero_checksum_means_none_over_ipv4_only():
    raw = bytearray(_segment(4, b"abc", sport=1, dport=2))
    raw[6:8] = b"\0\0"
    assert UdpView.check(memoryview(raw), *V4).checksum == 0
    raw6 = bytearray(_segment(6, b"abc", sport=1, dport=2))
    raw6[6:8] = b"\0\0"
    with pytest.raises(Malformed) as exc:
        UdpView.check(memoryview(raw6), *V6)
    assert exc.value.counter == "udp.zero_checksum"
    assert UdpView.check(memoryview(raw6)).checksum == 0  # not verified without addresses


@pytest.mark.parametrize("family", [4, 6])
def test_bad_checksum(family):
    raw = bytearray(_segment(family, b"payload", sport=1, dport=2))
    raw[-1] ^= 0x40
    with pytest.raises(Malformed) as exc:
        UdpView.check(memoryview(raw), *_addrs(family))
    assert exc.value.counter == "udp.bad_checksum"
    # Wrong addresses also break it.
    good = _segment(family, b"payload", sport=1, dport=2)
    src, dst = _addrs(family)
    with pytest.raises(Malformed):
        UdpView.check(memoryview(good), dst, src[:-1] + b"\x07")
    assert UdpView.check(memoryview(raw)).length == 15  # unverified


@pytest.mark.parametrize(
    "raw, counter",
    [
        (b"", "udp.truncated"),
        (bytes(7), "udp.truncated"),
        (bytes.fromhex("0001000200070000"), "udp.bad_length"),
        (bytes.fromhex("0001000200000000"), "udp.bad_length"),
        (bytes.fromhex("000100020009000000"[:16]), "udp.truncated"),
        (bytes.fromhex("00010002000a000061"), "udp.truncated"),
    ],
)
def test_check_rejects(raw, counter):
    with pytest.raises(Malformed) as exc:
        UdpView.check(memoryview(raw))
    assert exc.value.counter == counter


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("payload", [b"", b"\x01", b"hello world", bytes(1472)])
def test_emit_with_complete_checksum_dissected_by_scapy(family, payload):
    src, dst = _addrs(family)
    h = UdpHeader(5353, 53, len(payload))
    buf = bytearray(4 + h.buffer_len + len(payload))
    h.emit(buf, 4, checksum=0xDEAD)  # overwritten by complete_checksum
    buf[4 + 8 :] = payload
    value = complete_checksum(buf, 4, src, dst)
    raw = bytes(buf[4:])
    assert raw == _segment(family, payload, sport=5353, dport=53)  # scapy computes the same checksum
    s = UDP(raw)
    assert (s.sport, s.dport, s.len, s.chksum) == (5353, 53, 8 + len(payload), value)
    assert UdpView.check(memoryview(raw), src, dst).payload.tobytes() == payload


def test_emit_passes_checksum_through():
    buf = bytearray(8)
    UdpHeader(1, 2, 0).emit(buf, checksum=0)
    assert bytes(buf) == bytes.fromhex("0001000200080000")
    seed = csum_fold(UdpHeader(1, 2, 100).pseudo_sum(*V4))
    UdpHeader(1, 2, 100).emit(buf, checksum=seed)
    assert int.from_bytes(buf[6:8], "big") == seed == csum_fold(pseudo_sum_v4(*V4, 17, 108))


def test_computed_zero_is_sent_as_all_ones():
    src, dst = V4
    h = UdpHeader(1000, 2000, 2)
    buf = bytearray(10)
    h.emit(buf)
    # Choose the two payload bytes so that the complete checksum comes out as 0.
    partial = csum_fold(csum_partial(bytes(buf[:8]), pseudo_sum_v4(src, dst, 17, 10)))
    buf[8:10] = (0xFFFF - partial).to_bytes(2, "big")
    assert checksum(buf, pseudo_sum_v4(src, dst, 17, 10)) == 0
    assert complete_checksum(buf, 0, src, dst) == 0xFFFF
    assert buf[6:8] == b"\xff\xff"
    assert UdpView.check(memoryview(buf), src, dst).checksum == 0xFFFF
    assert bytes(IP(bytes(IP(src=S4[0], dst=S4[1]) / UDP(sport=1000, dport=2000) / Raw(bytes(buf[8:]))))[UDP])[6:8] == b"\xff\xff"


def test_max_payload():
    h = UdpHeader(1, 2, MAX_PAYLOAD_LEN)
    buf = bytearray(h.length)
    h.emit(buf)
    assert UdpView.check(memoryview(buf)).length == 65535
    with pytest.raises(ValueError):
        UdpHeader(1, 2, MAX_PAYLOAD_LEN + 1).emit(bytearray(8))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([None, 4, 6]))
def test_fuzz_only_malformed(data, family):
    addrs = _addrs(family) if family else (None, None)
    try:
        v = UdpView.check(memoryview(data), *addrs)
        h = UdpHeader.parse(v)
    except Malformed as e:
        assert e.counter.startswith("udp.") and len(e.counter) > 4
    else:
        assert h.length == v.length <= len(data) and len(v.payload) == h.payload_len


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=100), st.sampled_from([4, 6]))
def test_fuzz_round_trip_with_scapy(sport, dport, payload, family):
    src, dst = _addrs(family)
    h = UdpHeader(sport, dport, len(payload))
    buf = bytearray(8 + len(payload))
    h.emit(buf)
    buf[8:] = payload
    complete_checksum(buf, 0, src, dst)
    assert bytes(buf) == _segment(family, payload, sport=sport, dport=dport)
    assert UdpHeader.parse(UdpView.check(memoryview(buf), src, dst)) == h
