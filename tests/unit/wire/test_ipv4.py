"""IPv4 header (netstack/wire/ipv4.py) against scapy both ways, plus fuzzing."""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, IPOption_Router_Alert, fragment
from scapy.packet import Raw

from netstack.wire import Malformed
from netstack.wire.checksum import checksum
from netstack.wire.ipv4 import (
    MAX_TOTAL_LEN,
    PROTO_UDP,
    Ipv4Header,
    Ipv4View,
    is_limited_broadcast,
    is_multicast,
)

A = bytes([10, 0, 2, 100])
B = bytes([93, 184, 216, 34])


def _view(raw: bytes, **kw) -> Ipv4View:
    return Ipv4View.check(memoryview(raw), **kw)


def _rechecksum(raw: bytes) -> bytes:
    """Recompute the header checksum of a hand-mangled header."""
    b = bytearray(raw)
    hlen = (b[0] & 15) * 4
    b[10:12] = b"\0\0"
    b[10:12] = checksum(b[:hlen]).to_bytes(2, "big")
    return bytes(b)


def test_parse_scapy_udp():
    pkt = IP(src="10.0.2.100", dst="93.184.216.34", ttl=17, id=0xBEEF, tos=0xB9, flags="DF") / UDP(sport=1, dport=2) / b"hello"
    raw = bytes(pkt)
    v = _view(raw)
    s = IP(raw)
    assert (v.version, v.header_len, v.tos, v.dscp, v.ecn) == (4, 20, 0xB9, 0xB9 >> 2, 1)
    assert (v.total_length, v.ident, v.ttl, v.protocol, v.checksum) == (s.len, 0xBEEF, 17, 17, s.chksum)
    assert v.dont_fragment and not v.more_fragments and v.frag_offset == 0 and not v.is_fragment
    assert v.flags == 0x4000
    assert (v.src, v.dst) == (A, B)
    assert bytes(v.payload) == bytes(s.payload) and len(v.payload) == 13
    assert len(v.options) == 0 and bytes(v.header) == raw[:20]
    h = Ipv4Header.parse(v)
    assert h == Ipv4Header(src=A, dst=B, protocol=PROTO_UDP, payload_len=13, ttl=17, ident=0xBEEF,
                           dont_fragment=True, tos=0xB9)
    assert h.total_length == len(raw)


def test_parse_options_are_skipped():
    pkt = IP(src="10.0.2.100", dst="93.184.216.34", options=[IPOption_RR(routers=["1.1.1.1", "2.2.2.2"]), IPOption_NOP(),
                                                            IPOption_Router_Alert()]) / UDP() / b"x"
    raw = bytes(pkt)
    s = IP(raw)
    v = _view(raw)
    assert v.header_len == s.ihl * 4 > 20
    assert bytes(v.options) == raw[20 : s.ihl * 4]
    assert bytes(v.payload) == bytes(s[UDP])
    h = Ipv4Header.parse(v)
    assert h.options == raw[20 : s.ihl * 4] and h.buffer_len == s.ihl * 4
    buf = bytearray(h.buffer_len)
    h.emit(buf)
    assert bytes(buf) == raw[: s.ihl * 4]


def test_max_options_header():
    opts = IPOption_RR(routers=["9.9.9.%d" % i for i in range(9)])  # 3 + 36 = 39 bytes, padded to 40
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8", options=[opts]) / b"")
    v = _view(raw)
    assert v.header_len == 60 and v.total_length == 60 and len(v.payload) == 0


def test_trailing_padding_is_trimmed():
    raw = bytes(IP(src="10.0.2.100", dst="10.0.2.2") / ICMP() / b"ab")
    v = _view(memoryview(raw + b"\xee" * 20))
    assert len(v.buf) == len(raw)
    assert bytes(v.payload) == raw[20:] and len(v.payload) == v.total_length - 20


def test_zero_length_payload():
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=253))
    v = _view(raw)
    assert v.total_length == 20 and len(v.payload) == 0
    assert Ipv4Header.parse(v).payload_len == 0


def test_max_size_datagram():
    payload = bytes(range(256)) * 255 + bytes(MAX_TOTAL_LEN - 20 - 255 * 256)
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=253) / Raw(payload))
    assert len(raw) == MAX_TOTAL_LEN
    v = _view(raw)
    assert v.total_length == MAX_TOTAL_LEN and bytes(v.payload) == payload
    h = Ipv4Header.parse(v)
    buf = bytearray(20)
    h.emit(buf)
    assert bytes(buf) == raw[:20]
    with pytest.raises(ValueError):
        Ipv4Header(src=A, dst=B, protocol=17, payload_len=MAX_TOTAL_LEN - 19).emit(bytearray(20))


def test_fragments_from_scapy():
    pkt = IP(src="10.0.2.100", dst="93.184.216.34", id=777) / UDP(sport=5, dport=6) / (b"z" * 3000)
    frags = fragment(pkt, fragsize=1480)
    assert len(frags) == 3
    seen = []
    for f in frags:
        v = _view(bytes(f))
        assert v.is_fragment and v.ident == 777
        seen.append((v.frag_offset, v.more_fragments, len(v.payload)))
        h = Ipv4Header.parse(v)
        assert h.frag_offset == f.frag * 8 and h.more_fragments == bool(f.flags.MF)
    assert seen == [(0, True, 1480), (1480, True, 1480), (2960, False, 48)]


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(ttl=1, ident=65535, tos=0xFF),
        dict(dont_fragment=True),
        dict(more_fragments=True, frag_offset=8 * 0x1FFF),
        dict(options=b"\x94\x04\x00\x00"),
        dict(options=b"\x01" * 40),
    ],
)
def test_emit_dissected_by_scapy(kw):
    h = Ipv4Header(src=A, dst=B, protocol=6, payload_len=3, **kw)
    buf = bytearray(2 + h.buffer_len + 3)
    h.emit(buf, 2)
    buf[2 + h.buffer_len :] = b"abc"
    raw = bytes(buf[2:])
    s = IP(raw)
    assert (s.version, s.ihl * 4, s.len, s.id, s.ttl, s.proto, s.tos) == (
        4, h.buffer_len, h.total_length, h.ident, h.ttl, 6, h.tos)
    assert (s.src, s.dst) == ("10.0.2.100", "93.184.216.34")
    assert bool(s.flags.DF) == h.dont_fragment and bool(s.flags.MF) == h.more_fragments
    assert s.frag * 8 == h.frag_offset
    # scapy recomputes the checksum: it must agree with ours.
    stored = s.chksum
    del s.chksum
    assert IP(bytes(s)).chksum == stored
    assert Ipv4Header.parse(_view(raw)) == h


@pytest.mark.parametrize(
    "kw",
    [dict(options=b"\x01\x01"), dict(options=b"\x01" * 44), dict(frag_offset=3), dict(frag_offset=65536)],
)
def test_emit_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        Ipv4Header(src=A, dst=B, protocol=6, payload_len=0, **kw).emit(bytearray(64))


def test_pseudo_sum_gives_scapy_udp_checksum():
    raw = bytes(IP(src="10.0.2.100", dst="93.184.216.34") / UDP(sport=1234, dport=53) / b"odd-length!")
    v = _view(raw)
    seg = bytearray(v.payload)
    want = int.from_bytes(seg[6:8], "big")
    seg[6:8] = b"\0\0"
    assert checksum(seg, v.pseudo_sum()) == want
    assert checksum(seg, Ipv4Header.parse(v).pseudo_sum()) == want


def test_pseudo_sum_tcp_over_trimmed_buffer():
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8") / TCP(sport=1, dport=2, flags="S") / b"xyz")
    v = _view(memoryview(raw + bytes(17)))
    seg = bytearray(v.payload)
    want = int.from_bytes(seg[16:18], "big")
    seg[16:18] = b"\0\0"
    assert checksum(seg, v.pseudo_sum()) == want


GOOD = bytes(IP(src="10.0.2.100", dst="10.0.2.2", id=1) / UDP() / b"payload")


def _mutate(raw: bytes, index: int, value: int, fix: bool = True) -> bytes:
    b = bytearray(raw)
    b[index] = value
    return _rechecksum(bytes(b)) if fix else bytes(b)


@pytest.mark.parametrize(
    "raw, counter",
    [
        (b"", "ipv4.truncated"),
        (GOOD[:19], "ipv4.truncated"),
        (_mutate(GOOD, 0, 0x65), "ipv4.bad_version"),
        (_mutate(GOOD, 0, 0x44), "ipv4.bad_ihl"),
        (_mutate(GOOD, 0, 0x4F), "ipv4.bad_total_length"),  # IHL 60 > total 35
        (_mutate(GOOD, 3, 19), "ipv4.bad_total_length"),
        (_mutate(GOOD, 3, len(GOOD) + 1), "ipv4.truncated"),
        (GOOD[:-1], "ipv4.truncated"),
        (_mutate(GOOD, 8, 1, fix=False), "ipv4.bad_checksum"),
        (_mutate(GOOD, 10, GOOD[10] ^ 1, fix=False), "ipv4.bad_checksum"),
    ],
)
def test_check_rejects(raw, counter):
    with pytest.raises(Malformed) as exc:
        _view(raw)
    assert exc.value.counter == counter


def test_checksum_verification_can_be_skipped():
    raw = _mutate(GOOD, 8, 1, fix=False)
    assert _view(raw, verify_checksum=False).ttl == 1


def test_check_quoted_accepts_a_cut_datagram():
    quote = GOOD[:28]
    with pytest.raises(Malformed):
        _view(quote)
    v = Ipv4View.check_quoted(memoryview(quote))
    assert v.total_length == len(GOOD) and len(v.payload) == 8 and bytes(v.payload) == GOOD[20:28]
    assert Ipv4Header.parse(v).payload_len == len(GOOD) - 20
    longer = Ipv4View.check_quoted(memoryview(GOOD + b"pad"))
    assert bytes(longer.payload) == GOOD[20:]
    for raw, counter in [(GOOD[:19], "ipv4.truncated"), (_mutate(GOOD, 0, 0x65), "ipv4.bad_version"),
                         (_mutate(GOOD, 0, 0x43), "ipv4.bad_ihl"), (_mutate(GOOD, 0, 0x46)[:22], "ipv4.truncated"),
                         (_mutate(GOOD, 3, 4), "ipv4.bad_total_length")]:
        with pytest.raises(Malformed) as exc:
            Ipv4View.check_quoted(memoryview(raw))
        assert exc.value.counter == counter


def test_reserved_flag_is_accepted_and_dropped_on_emit():
    raw = _mutate(GOOD, 6, 0x80)
    v = _view(raw)
    assert v.flags == 0x8000 and not v.dont_fragment and not v.is_fragment
    h = Ipv4Header.parse(v)
    out = bytearray(20)
    h.emit(out)
    assert out[6] == 0 and IP(bytes(out)).flags == 0


def test_address_helpers():
    assert is_multicast(bytes([224, 0, 0, 1])) and is_multicast(bytes([239, 255, 255, 250]))
    assert not is_multicast(bytes([223, 255, 255, 255])) and not is_multicast(bytes([240, 0, 0, 1]))
    assert is_limited_broadcast(b"\xff" * 4) and not is_limited_broadcast(bytes([10, 0, 2, 255]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_fuzz_only_malformed(data, verify):
    for check in (lambda b: Ipv4View.check(b, verify_checksum=verify), Ipv4View.check_quoted):
        try:
            v = check(memoryview(data))
            h = Ipv4Header.parse(v)
        except Malformed as e:
            assert e.counter.startswith("ipv4.") and len(e.counter) > 5
        else:
            assert 20 <= v.header_len <= len(v.buf) <= len(data)
            assert len(v.payload) <= h.payload_len


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=80), st.integers(5, 15))
def test_fuzz_fixed_up_headers(data, ihl):
    """Random headers with version, IHL, total length and checksum made plausible."""
    b = bytearray(data)
    b[0] = 0x40 | ihl
    b[6] &= 0x7F  # the value does not carry the reserved flag (test_reserved_flag)
    b[2:4] = min(len(b), max(b[2] << 8 | b[3], ihl * 4)).to_bytes(2, "big")
    if ihl * 4 <= len(b):
        b[:] = _rechecksum(bytes(b))
    try:
        v = Ipv4View.check(memoryview(bytes(b)))
    except Malformed as e:
        assert ihl * 4 > len(b) and e.counter in ("ipv4.truncated", "ipv4.bad_total_length")
    else:
        h = Ipv4Header.parse(v)
        out = bytearray(h.buffer_len)
        h.emit(out)
        assert bytes(out) == bytes(b[: v.header_len])
        assert len(v.payload) == v.total_length - v.header_len


@settings(max_examples=200, deadline=None)
@given(
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    proto=st.integers(0, 255),
    payload_len=st.integers(0, 200),
    ttl=st.integers(0, 255),
    ident=st.integers(0, 65535),
    df=st.booleans(),
    mf=st.booleans(),
    off=st.integers(0, 0x1FFF),
    tos=st.integers(0, 255),
    olen=st.integers(0, 10),
)
def test_fuzz_emit_round_trip_and_scapy(src, dst, proto, payload_len, ttl, ident, df, mf, off, tos, olen):
    h = Ipv4Header(src=src, dst=dst, protocol=proto, payload_len=payload_len, ttl=ttl, ident=ident,
                   dont_fragment=df, more_fragments=mf, frag_offset=off * 8, tos=tos, options=b"\x01" * (4 * olen))
    buf = bytearray(h.total_length)
    h.emit(buf)
    assert Ipv4Header.parse(Ipv4View.check(memoryview(buf))) == h
    s = IP(bytes(buf))
    assert (s.len, s.frag, s.id, s.ttl) == (h.total_length, off, ident, ttl)
    stored = s.chksum
    del s.chksum
    assert IP(bytes(s)).chksum == stored
