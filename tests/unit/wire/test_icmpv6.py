"""ICMPv6 (netstack/wire/icmpv6.py) against scapy both ways, plus fuzzing."""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6ND_Redirect,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
)
from scapy.layers.inet6 import ICMPv6MLQuery
from scapy.packet import Raw

from netstack.wire import Malformed, icmpv6
from netstack.wire.icmpv6 import (
    DEST_UNREACHABLE,
    ECHO_REPLY,
    ECHO_REQUEST,
    MAX_QUOTE_LEN,
    PACKET_TOO_BIG,
    PARAMETER_PROBLEM,
    TIME_EXCEEDED,
    UNREACH_PORT,
    Icmpv6Echo,
    Icmpv6Error,
    Icmpv6View,
    may_send_error,
)
from netstack.wire.ipv6 import Ipv6Header, Ipv6View

GW = bytes.fromhex("fe800000000000000000000000000002")
GUEST = bytes.fromhex("fd000000000000000000000000000064")
S_GW, S_GUEST = "fe80::2", "fd00::64"


def _msg(layer, src=S_GUEST, dst=S_GW) -> bytes:
    """The ICMPv6 message bytes with scapy's checksum (built under an IPv6 header)."""
    return bytes(IPv6(src=src, dst=dst) / layer)[40:]


def _check(raw: bytes, src=GUEST, dst=GW) -> Icmpv6View:
    return Icmpv6View.check(memoryview(raw), src, dst)


def _emit(value, src=GW, dst=GUEST) -> bytes:
    buf = bytearray(2 + value.buffer_len)
    value.emit(buf, 2, src, dst)
    return bytes(buf[2:])


def _scapy_full(msg: bytes, src=S_GW, dst=S_GUEST) -> IPv6:
    return IPv6(bytes(IPv6(src=src, dst=dst, nh=58, plen=len(msg))) + msg)


def _scapy_checksum_agrees(msg: bytes, src=S_GW, dst=S_GUEST) -> None:
    pkt = _scapy_full(msg, src, dst)
    layer = pkt.payload
    stored = layer.cksum
    del layer.cksum
    assert IPv6(bytes(pkt)).payload.cksum == stored


@pytest.mark.parametrize("data", [b"", b"a", b"ping payload", bytes(range(256)) * 6 + b"odd"])
def test_parse_scapy_echo(data):
    raw = _msg(ICMPv6EchoRequest(id=0xABCD, seq=42, data=data))
    v = _check(raw)
    assert (v.type, v.code, v.ident, v.seq) == (ECHO_REQUEST, 0, 0xABCD, 42) and not v.is_error
    assert icmpv6.parse(v) == Icmpv6Echo(ECHO_REQUEST, 0xABCD, 42, data)


def test_echo_reply_emitted_and_dissected():
    req = Icmpv6Echo.parse(_check(_msg(ICMPv6EchoRequest(id=7, seq=8, data=b"hello"))))
    raw = _emit(req.reply())
    s = _scapy_full(raw)[ICMPv6EchoReply]
    assert (s.type, s.code, s.id, s.seq, s.data) == (129, 0, 7, 8, b"hello")
    _scapy_checksum_agrees(raw)
    assert raw == _msg(ICMPv6EchoReply(id=7, seq=8, data=b"hello"), src=S_GW, dst=S_GUEST)
    assert Icmpv6Echo.parse(_check(raw, GW, GUEST)) == Icmpv6Echo(ECHO_REPLY, 7, 8, b"hello")


def test_checksum_depends_on_addresses():
    raw = _msg(ICMPv6EchoRequest(id=1, seq=1))
    assert _check(raw, GW, GUEST).seq == 1  # the sum is symmetric in source and destination
    with pytest.raises(Malformed) as exc:
        _check(raw, GUEST, GW[:-1] + b"\x03")
    assert exc.value.counter == "icmpv6.bad_checksum"
    assert Icmpv6View.check(memoryview(raw)).seq == 1  # unverified without addresses


def _invoking(n: int = 10) -> bytes:
    return bytes(IPv6(src="fd00::64", dst="2001:db8::1") / UDP(sport=5000, dport=53) / (b"q" * n))


@pytest.mark.parametrize(
    "layer, want",
    [
        (ICMPv6DestUnreach(code=4), (DEST_UNREACHABLE, 4, 0, 0)),
        (ICMPv6DestUnreach(code=0), (DEST_UNREACHABLE, 0, 0, 0)),
        (ICMPv6PacketTooBig(mtu=1280), (PACKET_TOO_BIG, 0, 1280, 0)),
        (ICMPv6TimeExceeded(code=1), (TIME_EXCEEDED, 1, 0, 0)),
        (ICMPv6ParamProblem(code=2, ptr=48), (PARAMETER_PROBLEM, 2, 0, 48)),
    ],
)
def test_parse_scapy_errors(layer, want):
    raw = _msg(layer / Raw(_invoking()))
    v = _check(raw)
    assert v.is_error
    e = icmpv6.parse(v)
    assert (e.type, e.code, e.mtu, e.pointer) == want
    assert e.quote == _invoking()
    q = v.check_quote()
    assert q.src == GUEST and q.next_header == 17 and bytes(q.payload[:4]) == bytes.fromhex("13880035")


@pytest.mark.parametrize(
    "err, cls, fields",
    [
        (Icmpv6Error.dest_unreachable(UNREACH_PORT, _invoking()), ICMPv6DestUnreach, dict(type=1, code=4)),
        (Icmpv6Error.packet_too_big(_invoking(), 1400), ICMPv6PacketTooBig, dict(type=2, code=0, mtu=1400)),
        (Icmpv6Error.time_exceeded(0, _invoking()), ICMPv6TimeExceeded, dict(type=3, code=0)),
        (Icmpv6Error.parameter_problem(1, _invoking(), 6), ICMPv6ParamProblem, dict(type=4, code=1, ptr=6)),
    ],
)
def test_emit_errors_dissected_by_scapy(err, cls, fields):
    raw = _emit(err)
    s = _scapy_full(raw)[cls]
    for k, v in fields.items():
        assert getattr(s, k) == v, k
    inner = s[IPerror6]
    assert (inner.src, inner.dst) == ("fd00::64", "2001:db8::1")
    _scapy_checksum_agrees(raw)
    assert icmpv6.parse(_check(raw, GW, GUEST)) == err


def test_quote_capped_at_minimum_mtu():
    big = _invoking(1500 - 48)
    assert len(big) == 1500
    err = Icmpv6Error.packet_too_big(memoryview(big), 1280)
    assert err.quote == big[:MAX_QUOTE_LEN]
    ip = Ipv6Header(GW, GUEST, 58, err.buffer_len, hop_limit=255)
    buf = bytearray(40 + err.buffer_len)
    ip.emit(buf)
    err.emit(buf, 40, GW, GUEST)
    assert len(buf) == 1280
    s = IPv6(bytes(buf))
    assert s[ICMPv6PacketTooBig].mtu == 1280
    assert Icmpv6Error.time_exceeded(0, _invoking(3)).quote == _invoking(3)


def test_check_quote_rejects_garbage():
    v = _check(_msg(ICMPv6DestUnreach() / Raw(b"\x45" * 50)))
    with pytest.raises(Malformed) as exc:
        v.check_quote()
    assert exc.value.counter == "icmpv6.bad_quote"


@pytest.mark.parametrize(
    "raw, counter",
    [(b"", "icmpv6.truncated"), (_msg(ICMPv6EchoRequest())[:7], "icmpv6.truncated"),
     (_msg(ICMPv6EchoRequest(data=b"abc"))[:-1], "icmpv6.bad_checksum")],
)
def test_check_rejects(raw, counter):
    with pytest.raises(Malformed) as exc:
        _check(raw)
    assert exc.value.counter == counter


@pytest.mark.parametrize("layer", [ICMPv6ND_NS(tgt="fe80::2"), ICMPv6MLQuery(), Raw(bytes([200, 0, 0, 0, 0, 0, 0, 0]))])
def test_unsupported_types(layer):
    raw = _msg(layer) if not isinstance(layer, Raw) else bytes(layer)
    v = Icmpv6View.check(memoryview(raw))
    with pytest.raises(Malformed) as exc:
        icmpv6.parse(v)
    assert exc.value.counter == "icmpv6.unsupported_type"
    for cls in (Icmpv6Echo, Icmpv6Error):
        with pytest.raises(Malformed) as exc:
            cls.parse(v)
        assert exc.value.counter == "icmpv6.unexpected_type"


def _ip6(pkt) -> Ipv6View:
    return Ipv6View.check(memoryview(bytes(pkt)))


@pytest.mark.parametrize(
    "pkt, etype, ecode, kw, allowed",
    [
        (IPv6(src="fd00::64", dst="2001:db8::1") / UDP(), 1, 4, {}, True),
        (IPv6(src="fd00::64", dst="2001:db8::1") / ICMPv6EchoRequest(), 1, 0, {}, True),
        (IPv6(src="fd00::64", dst="2001:db8::1") / ICMPv6DestUnreach(), 1, 0, {}, False),
        (IPv6(src="fd00::64", dst="2001:db8::1") / ICMPv6PacketTooBig(), 2, 0, {}, False),
        (IPv6(src="fd00::64", dst="2001:db8::1") / ICMPv6ND_Redirect(), 1, 0, {}, False),
        (IPv6(src="fd00::64", dst="2001:db8::1") / IPv6ExtHdrDestOpt() / ICMPv6TimeExceeded(), 1, 0, {}, False),
        (IPv6(src="fd00::64", dst="2001:db8::1", nh=58), 1, 0, {}, False),  # too short to tell
        (IPv6(src="fd00::64", dst="ff02::1") / UDP(), 1, 4, {}, False),
        (IPv6(src="fd00::64", dst="ff02::1") / UDP(), 2, 0, {}, True),
        (IPv6(src="fd00::64", dst="ff02::1") / UDP(), 4, 2, {}, True),
        (IPv6(src="fd00::64", dst="ff02::1") / UDP(), 4, 0, {}, False),
        (IPv6(src="fd00::64", dst="2001:db8::1") / UDP(), 1, 4, dict(link_multicast=True), False),
        (IPv6(src="fd00::64", dst="2001:db8::1") / UDP(), 2, 0, dict(link_multicast=True), True),
        (IPv6(src="::", dst="2001:db8::1") / UDP(), 1, 4, {}, False),
        (IPv6(src="ff05::1", dst="2001:db8::1") / UDP(), 2, 0, {}, False),
        (IPv6(src="fd00::64", dst="2001:db8::1") / IPv6ExtHdrFragment(offset=10, nh=58) / Raw(bytes([1]) * 8), 3, 1,
         {}, True),
    ],
)
def test_may_send_error(pkt, etype, ecode, kw, allowed):
    assert may_send_error(_ip6(pkt), etype, ecode, **kw) is allowed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_fuzz_only_malformed(data, verify):
    try:
        v = Icmpv6View.check(memoryview(data), GUEST if verify else None, GW if verify else None)
        value = icmpv6.parse(v)
        if v.is_error:
            v.check_quote()
    except Malformed as e:
        assert e.counter.startswith("icmpv6.") and len(e.counter) > 7
    else:
        out = bytearray(value.buffer_len)
        value.emit(out, 0, GW, GUEST)
        assert out[0] == value.type
        Icmpv6View.check(memoryview(out), GW, GUEST)  # our emit always checks


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, 2, 3, 4, 128, 129]), st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=60))
def test_fuzz_emit_round_trip_scapy(t, code, rest, body):
    if t >= 128:
        value = Icmpv6Echo(t, rest >> 16, rest & 0xFFFF, body, code)
    else:
        value = Icmpv6Error(t, code, body, rest if t == 2 else 0, rest if t == 4 else 0)
    raw = _emit(value)
    assert icmpv6.parse(_check(raw, GW, GUEST)) == value
    _scapy_checksum_agrees(raw)
