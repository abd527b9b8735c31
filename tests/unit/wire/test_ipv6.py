"""IPv6 fixed header and extension walk (netstack/wire/ipv6.py) against scapy, plus fuzzing."""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    HAO,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Jumbo,
    Pad1,
    PadN,
    RouterAlert,
    fragment6,
)
from scapy.packet import Raw

from netstack.wire import Malformed
from netstack.wire.checksum import checksum
from netstack.wire.ipv6 import (
    MAX_EXTENSION_HEADERS,
    NH_FRAGMENT,
    NH_ICMPV6,
    NH_NONE,
    NH_TCP,
    NH_UDP,
    FragmentHeader,
    Ipv6Header,
    Ipv6View,
    is_link_local,
    is_multicast,
    multicast_mac,
    solicited_node_multicast,
)

SRC = bytes.fromhex("fd000000000000000000000000000064")
DST = bytes.fromhex("20010db8000000000000000000000001")
SS = ("fd00::64", "2001:db8::1")


def _v(pkt) -> Ipv6View:
    return Ipv6View.check(memoryview(bytes(pkt)))


def _ip(**kw):
    return IPv6(src=SS[0], dst=SS[1], **kw)


def test_parse_scapy_fixed_header():
    raw = bytes(_ip(tc=0xB8, fl=0xABCDE, hlim=3) / UDP(sport=1, dport=2) / b"data")
    v = Ipv6View.check(memoryview(raw))
    assert (v.version, v.traffic_class, v.flow_label, v.payload_length, v.next_header, v.hop_limit) == (
        6, 0xB8, 0xABCDE, 12, NH_UDP, 3)
    assert (v.src, v.dst) == (SRC, DST)
    assert bytes(v.payload) == raw[40:]
    assert Ipv6Header.parse(v) == Ipv6Header(SRC, DST, NH_UDP, 12, 3, 0xB8, 0xABCDE)
    chain = v.walk()
    assert (chain.upper_protocol, chain.upper_offset, chain.fragment) == (NH_UDP, 40, None)


def test_padding_trimmed_and_zero_payload():
    raw = bytes(_ip(nh=NH_NONE))
    v = Ipv6View.check(memoryview(raw + bytes(14)))
    assert v.payload_length == 0 and len(v.buf) == 40 and len(v.payload) == 0
    assert v.walk().upper_protocol == NH_NONE


@pytest.mark.parametrize(
    "raw, counter",
    [
        (b"", "ipv6.truncated"),
        (bytes(_ip())[:39], "ipv6.truncated"),
        (b"\x45" + bytes(_ip())[1:], "ipv6.bad_version"),
        (bytes(_ip() / UDP() / b"abc")[:-1], "ipv6.truncated"),
    ],
)
def test_check_rejects(raw, counter):
    with pytest.raises(Malformed) as exc:
        Ipv6View.check(memoryview(raw))
    assert exc.value.counter == counter


def test_check_quoted():
    raw = bytes(_ip() / UDP(sport=7, dport=8) / (b"x" * 100))
    v = Ipv6View.check_quoted(memoryview(raw[:48]))
    assert v.payload_length == 108 and bytes(v.payload) == raw[40:48]
    assert bytes(Ipv6View.check_quoted(memoryview(raw + b"zz")).payload) == raw[40:]
    with pytest.raises(Malformed):
        Ipv6View.check_quoted(memoryview(raw[:39]))


def test_walk_full_chain_from_scapy():
    pkt = (_ip() / IPv6ExtHdrHopByHop(options=[RouterAlert(), PadN(optdata=b"\0\0")])
           / IPv6ExtHdrDestOpt(options=[Pad1(), Pad1(), PadN(optdata=b"\0" * 9)])
           / IPv6ExtHdrRouting(segleft=0, addresses=["2001:db8::2"])
           / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2, flags="S"))
    raw = bytes(pkt)
    v = Ipv6View.check(memoryview(raw))
    chain = v.walk()
    tcp_at = len(raw) - len(bytes(pkt[TCP]))
    assert (chain.upper_protocol, chain.upper_offset, chain.fragment) == (NH_TCP, tcp_at, None)
    assert bytes(v.buf[chain.upper_offset:]) == bytes(pkt[TCP])
    # The pseudo-header over the upper layer matches scapy's TCP checksum.
    seg = bytearray(v.buf[chain.upper_offset:])
    want = int.from_bytes(seg[16:18], "big")
    seg[16:18] = b"\0\0"
    assert checksum(seg, v.pseudo_sum(NH_TCP, len(seg))) == want


def test_walk_stops_at_fragment_header():
    pkt = _ip() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=0xCAFEBABE, offset=0, m=1, nh=NH_UDP) / Raw(b"u" * 16)
    raw = bytes(pkt)
    chain = Ipv6View.check(memoryview(raw)).walk()
    assert chain.fragment == FragmentHeader(NH_UDP, 0, True, 0xCAFEBABE)
    assert (chain.fragment_header_pos, chain.fragment_next_header_pos, chain.upper_offset) == (48, 40, 56)
    assert raw[chain.fragment_next_header_pos] == NH_FRAGMENT
    assert chain.upper_protocol == NH_UDP and not chain.fragment.is_atomic


def test_walk_scapy_fragments():
    pkt = _ip() / IPv6ExtHdrDestOpt() / UDP(sport=9, dport=10) / (b"F" * 3000)
    frags = fragment6(_ip() / IPv6ExtHdrFragment() / pkt.payload, 1280)
    seen = []
    for f in frags:
        raw = bytes(f)
        chain = Ipv6View.check(memoryview(raw)).walk()
        fh = f[IPv6ExtHdrFragment]
        assert chain.fragment == FragmentHeader(fh.nh, fh.offset * 8, bool(fh.m), fh.id)
        assert chain.fragment_header_pos == 40 and chain.fragment_next_header_pos == 6
        seen.append((chain.fragment.offset, chain.fragment.more, len(raw) - chain.upper_offset))
    assert seen[0][0] == 0 and seen[-1][1] is False
    assert sum(n for _, _, n in seen) == len(bytes(pkt.payload))
    assert all(o % 8 == 0 for o, _, _ in seen)


def test_atomic_fragment():
    chain = _v(_ip() / IPv6ExtHdrFragment(offset=0, m=0, id=5) / UDP()).walk()
    assert chain.fragment.is_atomic and chain.upper_protocol == NH_UDP


def _walk_err(pkt) -> str:
    with pytest.raises(Malformed) as exc:
        _v(pkt).walk()
    return exc.value.counter


def test_walk_rejects():
    assert _walk_err(_ip() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()) == "ipv6.misplaced_hop_by_hop"
    assert _walk_err(_ip() / IPv6ExtHdrRouting(segleft=1, addresses=["2001:db8::2"]) / UDP()) == "ipv6.routing_segments_left"
    assert _walk_err(_ip() / IPv6ExtHdrFragment(m=1) / IPv6ExtHdrFragment() / UDP()) == "ipv6.duplicate_fragment_header"
    assert _walk_err(_ip() / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=70000)]) / UDP()) == "ipv6.unrecognized_option"
    assert _walk_err(_ip() / IPv6ExtHdrDestOpt(options=[HAO(hoa="2001:db8::5")]) / UDP()) == "ipv6.unrecognized_option"
    # An action-00 option we do not know is skipped.
    ok = _v(_ip() / IPv6ExtHdrDestOpt(options=[PadN(otype=0x1E, optdata=b"abcd")]) / UDP()).walk()
    assert ok.upper_protocol == NH_UDP
    # An option of action 01 (discard) is dropped.
    assert _walk_err(_ip() / IPv6ExtHdrDestOpt(options=[PadN(otype=0x63, optdata=b"ab")]) / UDP()) == "ipv6.unrecognized_option"


def _raw_chain(nh: int, exts: bytes, tail: bytes = b"") -> bytes:
    body = exts + tail
    return bytes(_ip(nh=nh, plen=len(body))) + body


def test_walk_rejects_bad_lengths():
    # Destination options header claiming 16 bytes with only 8 present.
    assert _walk_err(IPv6(_raw_chain(60, bytes([NH_UDP, 1]) + bytes(6)))) == "ipv6.truncated_extension"
    # One byte of extension header.
    assert _walk_err(IPv6(_raw_chain(60, bytes([NH_UDP])))) == "ipv6.truncated_extension"
    # Fragment header cut short.
    assert _walk_err(IPv6(_raw_chain(44, bytes([NH_UDP, 0, 0, 1])))) == "ipv6.truncated_extension"
    # An option whose length runs past the header (PadN of 7 in a 6-byte option area).
    assert _walk_err(IPv6(_raw_chain(60, bytes([NH_UDP, 0, 1, 7]) + bytes(4)))) == "ipv6.bad_option"
    # A lone option type byte at the very end.
    assert _walk_err(IPv6(_raw_chain(60, bytes([NH_UDP, 0, 0, 0, 0, 0, 0, 1])))) == "ipv6.bad_option"


def test_walk_bounds():
    n = MAX_EXTENSION_HEADERS
    ok = _ip() / IPv6ExtHdrHopByHop()
    for _ in range(n - 1):
        ok = ok / IPv6ExtHdrDestOpt()
    assert _v(ok / UDP()).walk().upper_protocol == NH_UDP
    assert _walk_err(ok / IPv6ExtHdrDestOpt() / UDP()) == "ipv6.too_many_extensions"
    # Two 2048-byte destination options headers exceed the byte bound.
    big = IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(253))] * 8)
    assert len(bytes(big)) > 1024
    assert _walk_err(_ip() / big / UDP()) == "ipv6.extensions_too_long"


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(hop_limit=255, traffic_class=0xFF, flow_label=0xFFFFF), dict(payload_len=65535, next_header=59)],
)
def test_emit_dissected_by_scapy(kw):
    fields = dict(src=SRC, dst=DST, next_header=NH_ICMPV6, payload_len=8)
    fields.update(kw)
    h = Ipv6Header(**fields)
    buf = bytearray(1 + h.buffer_len)
    h.emit(buf, 1)
    s = IPv6(bytes(buf[1:]))
    assert (s.version, s.tc, s.fl, s.plen, s.nh, s.hlim) == (6, h.traffic_class, h.flow_label, h.payload_len,
                                                              h.next_header, h.hop_limit)
    assert (s.src, s.dst) == SS
    assert Ipv6Header.parse(Ipv6View.check_quoted(memoryview(buf[1:]))) == h


def test_emit_rejects_oversize():
    with pytest.raises(ValueError):
        Ipv6Header(SRC, DST, 17, 65536).emit(bytearray(40))


def test_pseudo_sum_matches_scapy_icmpv6():
    raw = bytes(_ip() / ICMPv6EchoRequest(id=1, seq=2, data=b"abc"))
    v = Ipv6View.check(memoryview(raw))
    msg = bytearray(v.payload)
    want = int.from_bytes(msg[2:4], "big")
    msg[2:4] = b"\0\0"
    assert checksum(msg, v.pseudo_sum(NH_ICMPV6, len(msg))) == want
    assert checksum(msg, Ipv6Header.parse(v).pseudo_sum()) == want


@pytest.mark.parametrize("off, more, ident", [(0, True, 0), (1232, True, 1), (0xFFF8, False, 0xFFFFFFFF)])
def test_fragment_header_emit_scapy(off, more, ident):
    fh = FragmentHeader(NH_UDP, off, more, ident)
    buf = bytearray(fh.buffer_len)
    fh.emit(buf)
    s = IPv6ExtHdrFragment(bytes(buf))
    assert (s.nh, s.offset * 8, s.m, s.id) == (NH_UDP, off, int(more), ident)
    assert FragmentHeader.parse_at(memoryview(buf), 0) == fh
    with pytest.raises(ValueError):
        FragmentHeader(NH_UDP, 4, True, 0).emit(buf)


def test_address_helpers():
    import ipaddress
    a = ipaddress.IPv6Address("fd00::1234:5678").packed
    assert solicited_node_multicast(a) == ipaddress.IPv6Address("ff02::1:ff34:5678").packed
    assert multicast_mac(solicited_node_multicast(a)) == bytes.fromhex("3333ff345678")
    assert is_multicast(solicited_node_multicast(a)) and not is_multicast(a)
    assert is_link_local(ipaddress.IPv6Address("fe80::2").packed)
    assert is_link_local(ipaddress.IPv6Address("febf::2").packed)
    assert not is_link_local(ipaddress.IPv6Address("fec0::2").packed) and not is_link_local(a)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_only_malformed(data):
    for check in (Ipv6View.check, Ipv6View.check_quoted):
        try:
            v = check(memoryview(data))
            Ipv6Header.parse(v)
            chain = v.walk()
        except Malformed as e:
            assert e.counter.startswith("ipv6.") and len(e.counter) > 5
        else:
            assert 40 <= chain.upper_offset <= len(v.buf)


_NHS = st.sampled_from([0, 43, 44, 60, 6, 17, 58, 59])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NHS, st.binary(min_size=1, max_size=24)), max_size=10), _NHS)
def test_fuzz_random_chains(exts, first):
    """Chains of extension-looking headers with random bodies: walk never crashes."""
    body = bytearray()
    for nh, blob in exts:
        body += bytes([nh]) + blob
    raw = bytes(_ip(nh=first, plen=len(body))) + bytes(body)
    try:
        chain = Ipv6View.check(memoryview(raw)).walk()
    except Malformed as e:
        assert e.counter.startswith("ipv6.")
    else:
        assert 40 <= chain.upper_offset <= len(raw)
        assert chain.upper_offset - 40 <= 1024 + 8
        if chain.fragment is not None:
            assert raw[chain.fragment_next_header_pos] == NH_FRAGMENT


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), st.integers(0, 255),
       st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFFF))
def test_fuzz_emit_round_trip(src, dst, nh, plen, hlim, tc, fl):
    h = Ipv6Header(src, dst, nh, plen, hlim, tc, fl)
    buf = bytearray(40 + plen)
    h.emit(buf)
    assert Ipv6Header.parse(Ipv6View.check(memoryview(buf))) == h
    s = IPv6(bytes(buf[:40]))
    assert (s.plen, s.nh, s.hlim, s.tc, s.fl) == (plen, nh, hlim, tc, fl)
