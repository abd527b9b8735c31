"""ICMPv4 (netstack/wire/icmpv4.py) against scapy both ways, plus fuzzing."""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, fragment
from scapy.packet import Raw

from netstack.wire import Malformed, icmpv4
from netstack.wire.icmpv4 import (
    DEST_UNREACHABLE,
    ECHO_REPLY,
    ECHO_REQUEST,
    ERROR_DATAGRAM_MAX_LEN,
    MAX_QUOTE_LEN,
    PARAMETER_PROBLEM,
    TIME_EXCEEDED,
    TIME_EXCEEDED_REASSEMBLY,
    UNREACH_FRAG_NEEDED,
    UNREACH_HOST,
    UNREACH_NET,
    UNREACH_PORT,
    IcmpEcho,
    IcmpError,
    IcmpView,
    may_send_error,
)
from netstack.wire.ipv4 import PROTO_ICMP, Ipv4Header, Ipv4View

GUEST = bytes([10, 0, 2, 100])
GW = bytes([10, 0, 2, 2])


def _icmp(raw: bytes, **kw) -> IcmpView:
    return IcmpView.check(memoryview(raw), **kw)


def _emit(value) -> bytes:
    buf = bytearray(3 + value.buffer_len)
    value.emit(buf, 3)
    assert buf[:3] == b"\0\0\0"
    return bytes(buf[3:])


def _scapy_checksum_agrees(raw: bytes) -> None:
    s = ICMP(raw)
    stored = s.chksum
    del s.chksum
    assert ICMP(bytes(s)).chksum == stored


@pytest.mark.parametrize("data", [b"", b"x", b"0123456789abcdef" * 3 + b"odd", bytes(range(256)) * 4])
def test_parse_scapy_echo_request(data):
    raw = bytes(ICMP(type=8, id=0x1234, seq=7) / Raw(data)) if data else bytes(ICMP(type=8, id=0x1234, seq=7))
    v = _icmp(raw)
    assert (v.type, v.code, v.ident, v.seq, v.checksum) == (8, 0, 0x1234, 7, ICMP(raw).chksum)
    assert not v.is_error
    e = icmpv4.parse(v)
    assert e == IcmpEcho(ECHO_REQUEST, 0x1234, 7, data)


def test_echo_reply_emitted_and_dissected():
    req = IcmpEcho.parse(_icmp(bytes(ICMP(type=8, id=99, seq=65535) / b"ping-data!")))
    rep = req.reply()
    assert rep == IcmpEcho(ECHO_REPLY, 99, 65535, b"ping-data!")
    raw = _emit(rep)
    s = ICMP(raw)
    assert (s.type, s.code, s.id, s.seq, bytes(s.payload)) == (0, 0, 99, 65535, b"ping-data!")
    _scapy_checksum_agrees(raw)
    assert bytes(ICMP(type=0, id=99, seq=65535) / b"ping-data!") == raw


@pytest.mark.parametrize("n", [0, 1, 7, 1472, 65507])
def test_echo_sizes_round_trip(n):
    e = IcmpEcho(ECHO_REQUEST, 1, 2, bytes([n % 251]) * n)
    raw = _emit(e)
    assert len(raw) == 8 + n
    assert IcmpEcho.parse(_icmp(raw)) == e
    _scapy_checksum_agrees(raw)


def _offending(payload_len: int = 3) -> bytes:
    return bytes(IP(src="10.0.2.100", dst="93.184.216.34", id=5) / UDP(sport=4000, dport=53) / (b"q" * payload_len))


def test_parse_scapy_port_unreachable_and_quote():
    orig = _offending()
    raw = bytes(ICMP(type=3, code=3) / Raw(orig))
    v = _icmp(raw)
    assert v.is_error
    err = icmpv4.parse(v)
    assert err == IcmpError(DEST_UNREACHABLE, UNREACH_PORT, orig)
    q = v.check_quote()
    assert (q.src, q.dst, q.protocol) == (GUEST, bytes([93, 184, 216, 34]), 17)
    assert bytes(q.payload[:4]) == bytes.fromhex("0fa00035")


def test_parse_scapy_frag_needed_mtu():
    raw = bytes(ICMP(type=3, code=4, nexthopmtu=1400) / Raw(_offending()[:28]))
    v = _icmp(raw)
    assert v.next_hop_mtu == 1400
    err = IcmpError.parse(v)
    assert (err.type, err.code, err.next_hop_mtu, err.pointer) == (3, 4, 1400, 0)
    # The MTU is only read for code 4.
    other = IcmpError.parse(_icmp(bytes(ICMP(type=3, code=1, nexthopmtu=1400) / Raw(_offending()[:28]))))
    assert other.next_hop_mtu == 0


def test_parse_scapy_parameter_problem_and_time_exceeded():
    pp = IcmpError.parse(_icmp(bytes(ICMP(type=12, code=0, ptr=9) / Raw(_offending()[:28]))))
    assert (pp.type, pp.pointer, pp.next_hop_mtu) == (PARAMETER_PROBLEM, 9, 0)
    te = icmpv4.parse(_icmp(bytes(ICMP(type=11, code=1) / Raw(_offending()[:28]))))
    assert (te.type, te.code, te.quote) == (TIME_EXCEEDED, TIME_EXCEEDED_REASSEMBLY, _offending()[:28])


@pytest.mark.parametrize(
    "err, fields",
    [
        (IcmpError.dest_unreachable(UNREACH_NET, _offending()), dict(type=3, code=0, nexthopmtu=0)),
        (IcmpError.dest_unreachable(UNREACH_HOST, _offending(), next_hop_mtu=999), dict(type=3, code=1, nexthopmtu=0)),
        (IcmpError.dest_unreachable(UNREACH_PORT, _offending(0)), dict(type=3, code=3)),
        (IcmpError.frag_needed(_offending(), 1280), dict(type=3, code=4, nexthopmtu=1280)),
        (IcmpError.time_exceeded(0, _offending()), dict(type=11, code=0)),
        (IcmpError.time_exceeded(1, _offending()), dict(type=11, code=1)),
        (IcmpError.for_datagram(PARAMETER_PROBLEM, 0, _offending(), pointer=20), dict(type=12, code=0, ptr=20)),
    ],
)
def test_emit_errors_dissected_by_scapy(err, fields):
    raw = _emit(err)
    full = IP(bytes(IP(src="10.0.2.2", dst="10.0.2.100", proto=1) / Raw(raw)))
    s = full[ICMP]
    for k, want in fields.items():
        assert getattr(s, k) == want, k
    _scapy_checksum_agrees(raw)
    inner = s[IPerror]
    assert (inner.src, inner.dst, inner.id) == ("10.0.2.100", "93.184.216.34", 5)
    assert icmpv4.parse(_icmp(raw)) == err


def test_quote_is_capped_at_576_byte_datagram():
    big = _offending(1500 - 28)
    assert len(big) == 1500
    err = IcmpError.dest_unreachable(UNREACH_PORT, memoryview(big))
    assert err.quote == big[:MAX_QUOTE_LEN]
    ip = Ipv4Header(src=GW, dst=GUEST, protocol=PROTO_ICMP, payload_len=err.buffer_len, ttl=255)
    assert ip.total_length == ERROR_DATAGRAM_MAX_LEN
    buf = bytearray(ip.total_length)
    ip.emit(buf)
    err.emit(buf, ip.buffer_len)
    s = IP(bytes(buf))
    assert s.len == 576 and s[ICMP].type == 3
    # Short datagrams are quoted whole, options included.
    small = bytes(IP(src="10.0.2.100", dst="1.1.1.1", options=b"\x94\x04\0\0") / TCP())
    assert IcmpError.time_exceeded(0, small).quote == small


def test_check_quote_rejects_garbage():
    v = _icmp(bytes(ICMP(type=3, code=3) / Raw(b"\x45" + bytes(10))))
    with pytest.raises(Malformed) as exc:
        v.check_quote()
    assert exc.value.counter == "icmpv4.bad_quote"


@pytest.mark.parametrize(
    "raw, counter",
    [
        (b"", "icmpv4.truncated"),
        (bytes(ICMP(type=8))[:7], "icmpv4.truncated"),
        (bytes(ICMP(type=8, chksum=0x1234)), "icmpv4.bad_checksum"),
        (bytes(ICMP(type=8) / b"abc")[:-1], "icmpv4.bad_checksum"),
    ],
)
def test_check_rejects(raw, counter):
    with pytest.raises(Malformed) as exc:
        _icmp(raw)
    assert exc.value.counter == counter


def test_checksum_verification_can_be_skipped():
    assert _icmp(bytes(ICMP(type=8, chksum=0x1234, seq=3)), verify_checksum=False).seq == 3


@pytest.mark.parametrize("t", [4, 5, 9, 10, 13, 14, 17, 200])
def test_unsupported_types(t):
    v = _icmp(bytes(ICMP(type=t) / (b"\0" * 8)))
    with pytest.raises(Malformed) as exc:
        icmpv4.parse(v)
    assert exc.value.counter == "icmpv4.unsupported_type"


def test_values_refuse_views_of_other_types():
    with pytest.raises(Malformed) as exc:
        IcmpEcho.parse(_icmp(bytes(ICMP(type=3))))
    assert exc.value.counter == "icmpv4.unexpected_type"
    with pytest.raises(Malformed) as exc:
        IcmpError.parse(_icmp(bytes(ICMP(type=8))))
    assert exc.value.counter == "icmpv4.unexpected_type"


def _ipv(pkt) -> Ipv4View:
    return Ipv4View.check(memoryview(bytes(pkt)))


@pytest.mark.parametrize(
    "pkt, kw, allowed",
    [
        (IP(src="10.0.2.100", dst="8.8.8.8") / UDP(), {}, True),
        (IP(src="10.0.2.100", dst="8.8.8.8") / ICMP(type=8), {}, True),
        (IP(src="10.0.2.100", dst="8.8.8.8") / ICMP(type=0), {}, True),
        (IP(src="10.0.2.100", dst="8.8.8.8") / ICMP(type=3) / Raw(_offending()), {}, False),
        (IP(src="10.0.2.100", dst="8.8.8.8") / ICMP(type=11), {}, False),
        (IP(src="10.0.2.100", dst="8.8.8.8") / ICMP(type=12), {}, False),
        (IP(src="10.0.2.100", dst="8.8.8.8") / ICMP(type=5), {}, False),
        (IP(src="10.0.2.100", dst="8.8.8.8", proto=1), {}, False),  # ICMP too short to tell
        (IP(src="10.0.2.100", dst="224.0.0.251") / UDP(), {}, False),
        (IP(src="10.0.2.100", dst="255.255.255.255") / UDP(), {}, False),
        (IP(src="10.0.2.100", dst="10.0.2.255") / UDP(), dict(directed_broadcast=bytes([10, 0, 2, 255])), False),
        (IP(src="10.0.2.100", dst="10.0.2.255") / UDP(), {}, True),
        (IP(src="10.0.2.100", dst="8.8.8.8") / UDP(), dict(link_multicast=True), False),
        (IP(src="0.0.0.0", dst="8.8.8.8") / UDP(), {}, False),
        (IP(src="127.0.0.1", dst="8.8.8.8") / UDP(), {}, False),
        (IP(src="240.0.0.1", dst="8.8.8.8") / UDP(), {}, False),
        (IP(src="239.1.1.1", dst="8.8.8.8") / UDP(), {}, False),
        (IP(src="10.0.2.100", dst="8.8.8.8", flags="MF") / UDP(), {}, True),
        (IP(src="10.0.2.100", dst="8.8.8.8", frag=185) / UDP(), {}, False),
    ],
)
def test_may_send_error(pkt, kw, allowed):
    assert may_send_error(_ipv(pkt), **kw) is allowed


def test_may_send_error_on_scapy_fragments():
    frags = fragment(IP(src="10.0.2.100", dst="8.8.8.8") / UDP() / (b"x" * 3000), fragsize=1000)
    assert [may_send_error(_ipv(f)) for f in frags] == [True, False, False, False]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_fuzz_only_malformed(data, verify):
    try:
        v = IcmpView.check(memoryview(data), verify_checksum=verify)
        value = icmpv4.parse(v)
        if v.is_error:
            v.check_quote()
    except Malformed as e:
        assert e.counter.startswith("icmpv4.") and len(e.counter) > 7
    else:
        out = bytearray(value.buffer_len)
        value.emit(out)
        assert ICMP(bytes(out)).type == value.type


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=120))
def test_fuzz_with_valid_checksum_round_trips(data):
    b = bytearray(data)
    b[2:4] = b"\0\0"
    from netstack.wire.checksum import checksum
    b[2:4] = checksum(b).to_bytes(2, "big")
    try:
        value = icmpv4.parse(IcmpView.check(memoryview(b)))
    except Malformed as e:
        assert e.counter == "icmpv4.unsupported_type"
        assert b[0] not in (0, 3, 8, 11, 12)
    else:
        out = bytearray(value.buffer_len)
        value.emit(out)
        # Bytes the value does not carry (unused words) are emitted as zero.
        assert out[:2] == b[:2] and out[8:] == b[8:]
        _scapy_checksum_agrees(bytes(out))
