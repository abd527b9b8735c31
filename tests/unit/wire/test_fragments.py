"""IP fragment reassembly (netstack/fragments.py): scapy-made fragments, every drop rule, bounds, time."""

import random

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6

from netstack.fragments import Expired, Reassembler
from netstack.wire.ipv4 import Ipv4Header, Ipv4View
from netstack.wire.ipv6 import FragmentHeader, Ipv6Header, Ipv6View

SRC4, DST4 = bytes([10, 0, 2, 100]), bytes([93, 184, 216, 34])
SRC6 = bytes.fromhex("fd000000000000000000000000000064")
DST6 = bytes.fromhex("20010db8000000000000000000000001")


def add4(r: Reassembler, raw: bytes, now: float = 0.0):
    return r.add_v4(Ipv4View.check(memoryview(raw)), now)


def add6(r: Reassembler, raw: bytes, now: float = 0.0):
    v = Ipv6View.check(memoryview(raw))
    return r.add_v6(v, v.walk(), now)


def frag4(offset: int, data: bytes, more: bool, ident: int = 1, proto: int = 17, src: bytes = SRC4, df: bool = False,
          options: bytes = b"") -> bytes:
    h = Ipv4Header(src=src, dst=DST4, protocol=proto, payload_len=len(data), ident=ident, more_fragments=more,
                   frag_offset=offset, dont_fragment=df, options=options)
    buf = bytearray(h.total_length)
    h.emit(buf)
    buf[h.buffer_len :] = data
    return bytes(buf)


def frag6(offset: int, data: bytes, more: bool, ident: int = 1, nh: int = 17, src: bytes = SRC6) -> bytes:
    fh = FragmentHeader(nh, offset, more, ident)
    h = Ipv6Header(src=src, dst=DST6, next_header=44, payload_len=8 + len(data))
    buf = bytearray(48 + len(data))
    h.emit(buf)
    fh.emit(buf, 40)
    buf[48:] = data
    return bytes(buf)


BLOB = bytes(random.Random(7).randrange(256) for _ in range(4000))


# -- IPv4 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_v4_scapy_fragments_reassemble_to_the_original(order):
    pkt = IP(src="10.0.2.100", dst="93.184.216.34", id=4242, options=[IPOption_RR()]) / UDP(sport=1, dport=2) / BLOB
    original = bytes(pkt)
    frags = [bytes(f) for f in fragment(IP(original), fragsize=1000)]
    assert len(frags) == 5
    if order == "reverse":
        frags.reverse()
    elif order == "shuffled":
        random.Random(1).shuffle(frags)
    r = Reassembler()
    results = [add4(r, f, now=1.0) for f in frags]
    assert results[:-1] == [None] * 4
    assert results[-1] == original
    assert len(r) == 0 and r.held_bytes == 0
    assert r.counters == {"fragments.reassembled": 1}
    # The result is an ordinary datagram that checks (checksum recomputed).
    v = Ipv4View.check(memoryview(results[-1]))
    assert not v.is_fragment and UDP(bytes(v.payload)).load == BLOB


def test_v4_df_kept_and_key_includes_protocol():
    r = Reassembler()
    assert add4(r, frag4(0, b"A" * 8, True, proto=17, df=True)) is None
    assert add4(r, frag4(8, b"B" * 3, False, proto=6)) is None  # other protocol: another datagram
    assert len(r) == 2
    out = add4(r, frag4(8, b"C" * 3, False, proto=17))
    v = Ipv4View.check(memoryview(out))
    assert v.dont_fragment and not v.more_fragments and v.frag_offset == 0
    assert bytes(v.payload) == b"A" * 8 + b"C" * 3


def test_v4_non_fragment_passes_through():
    raw = frag4(0, b"whole", False)
    assert add4(Reassembler(), raw) == raw


def test_v4_exact_duplicate_is_dropped_alone():
    r = Reassembler()
    assert add4(r, frag4(0, b"a" * 16, True)) is None
    assert add4(r, frag4(0, b"a" * 16, True)) is None
    assert r.counters["fragments.duplicate"] == 1
    assert add4(r, frag4(16, b"end", False)) is not None


@pytest.mark.parametrize(
    "second",
    [
        (0, b"b" * 16, True),  # same place, other bytes
        (8, b"b" * 16, True),  # straddles the end of the first
        (0, b"b" * 8, True),  # same start, shorter
        (8, b"b" * 3, False),  # last fragment inside the first
    ],
)
def test_v4_overlap_drops_the_whole_datagram(second):
    r = Reassembler()
    assert add4(r, frag4(0, b"a" * 16, True)) is None
    assert add4(r, frag4(*second)) is None
    assert r.counters["fragments.overlap"] + r.counters["fragments.inconsistent_end"] == 1
    assert r.held_bytes == 0
    # Fragments not yet received are dropped too, until the timer runs out.
    assert add4(r, frag4(16, b"z" * 8, False)) is None
    assert r.counters["fragments.dead_datagram"] == 1
    assert r.expire(100.0) == []  # a tombstone is not reported
    assert len(r) == 0
    assert add4(r, frag4(0, b"a" * 16, True), 101.0) is None
    assert add4(r, frag4(16, b"z", False), 101.0) == frag4(0, b"a" * 16 + b"z", False)


def test_v4_overlap_with_previous_piece():
    r = Reassembler()
    add4(r, frag4(16, b"x" * 16, True))
    add4(r, frag4(8, b"y" * 16, True))
    assert r.counters["fragments.overlap"] == 1


@pytest.mark.parametrize(
    "fragments, reason",
    [
        ([(0, b"a" * 8, True), (16, b"b", False), (16, b"bb", False)], "fragments.inconsistent_end"),
        ([(16, b"b", False), (16, b"c" * 8, True)], "fragments.inconsistent_end"),
        ([(32, b"z", False), (16, b"c", False)], "fragments.inconsistent_end"),
    ],
)
def test_v4_conflicting_ends(fragments, reason):
    r = Reassembler()
    for f in fragments:
        assert add4(r, frag4(*f)) is None
    assert r.counters[reason] == 1


@pytest.mark.parametrize("data", [b"", b"abc", b"a" * 9])
def test_v4_bad_length_of_non_last_fragment(data):
    r = Reassembler()
    assert add4(r, frag4(8, data, True)) is None
    assert r.counters["fragments.bad_length"] == 1 and len(r) == 0


def test_v4_ping_of_death():
    r = Reassembler()
    assert add4(r, frag4(65528, b"x" * 8, False)) is None  # 20 + 65536 > 65535
    assert r.counters["fragments.too_big"] == 1 and len(r) == 0
    # The largest legal datagram reassembles.
    payload = bytes(65515)
    pieces = [(o, payload[o : o + 8192], o + 8192 < len(payload)) for o in range(0, len(payload), 8192)]
    outs = [add4(r, frag4(*p)) for p in pieces]
    assert outs[-1] is not None and len(outs[-1]) == 65535


def test_v4_options_of_first_fragment_are_kept():
    r = Reassembler()
    opts = b"\x07\x07\x04" + bytes(5)
    assert add4(r, frag4(8, b"tail", False)) is None
    out = add4(r, frag4(0, b"h" * 8, True, options=opts))
    v = Ipv4View.check(memoryview(out))
    assert bytes(v.options) == opts and bytes(v.payload) == b"h" * 8 + b"tail"


# -- IPv6 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shuffle", [False, True])
def test_v6_scapy_fragments_reassemble(shuffle):
    inner = UDP(sport=7, dport=8) / BLOB
    original = bytes(IPv6(src="fd00::64", dst="2001:db8::1") / inner)
    frags = [bytes(f) for f in fragment6(IPv6(src="fd00::64", dst="2001:db8::1") / IPv6ExtHdrFragment(id=99) / inner, 1280)]
    assert len(frags) == 4
    if shuffle:
        random.Random(3).shuffle(frags)
    r = Reassembler()
    outs = [add6(r, f, 5.0) for f in frags]
    assert outs[:-1] == [None] * 3 and outs[-1] == original
    assert r.counters == {"fragments.reassembled": 1} and r.held_bytes == 0


def test_v6_unfragmentable_extension_headers_kept():
    inner = UDP(sport=7, dport=8) / BLOB[:2000]
    base = IPv6(src="fd00::64", dst="2001:db8::1") / IPv6ExtHdrHopByHop()
    original = bytes(base / inner)
    frags = [bytes(f) for f in fragment6(base / IPv6ExtHdrFragment(id=5) / inner, 1280)]
    r = Reassembler()
    outs = [add6(r, f) for f in reversed(frags)]
    assert outs[-1] == original
    v = Ipv6View.check(memoryview(outs[-1]))
    assert v.walk().upper_protocol == 17


def test_v6_atomic_fragment_is_returned_at_once():
    raw = frag6(0, b"whole packet", False, nh=59)
    r = Reassembler()
    out = add6(r, raw)
    assert out == bytes(IPv6(src="fd00::64", dst="2001:db8::1", nh=59) / b"whole packet")
    assert len(r) == 0 and r.counters["fragments.reassembled"] == 0


def test_v6_key_has_no_protocol_and_overlap_drops():
    r = Reassembler()
    assert add6(r, frag6(0, b"a" * 16, True, nh=17)) is None
    assert add6(r, frag6(8, b"b" * 16, True, nh=6)) is None  # same datagram (RFC 8200 key)
    assert r.counters["fragments.overlap"] == 1
    assert add6(r, frag6(32, b"c", False)) is None
    assert r.counters["fragments.dead_datagram"] == 1


def test_v6_bad_length_and_too_big():
    r = Reassembler()
    assert add6(r, frag6(0, b"abc", True)) is None
    assert r.counters["fragments.bad_length"] == 1
    assert add6(r, frag6(65528, b"x" * 8, False)) is None  # 8 + 65528 + 8 > 65535
    assert r.counters["fragments.too_big"] == 1
    assert len(r) == 0


def test_v6_nested_fragment_header_is_dropped():
    inner = bytes(IPv6ExtHdrDestOpt(nh=44)) + bytes(IPv6ExtHdrFragment(nh=59, m=1, id=3))
    r = Reassembler()
    assert add6(r, frag6(0, inner[:8], True, nh=60)) is None
    assert add6(r, frag6(8, inner[8:], False, nh=60)) is None
    assert r.counters["fragments.nested_fragment"] == 1


# -- time -----------------------------------------------------------------------------------------------

def test_expiry_times_and_first_fragment():
    r = Reassembler()
    assert r.next_deadline() is None
    first4 = frag4(0, b"a" * 8, True, ident=1)
    add4(r, first4, now=10.0)
    add4(r, frag4(8, b"b" * 8, True, ident=2), now=11.0)  # no first fragment
    first6 = frag6(0, b"c" * 8, True, ident=3)
    add6(r, first6, now=12.0)
    assert r.next_deadline() == 40.0
    assert r.expire(39.9) == []
    assert r.expire(40.0) == [Expired(4, first4)]
    assert r.next_deadline() == 41.0
    assert r.expire(41.0) == []  # no first fragment: nothing to report
    assert r.next_deadline() == 72.0
    assert r.expire(71.0) == []
    assert r.expire(72.0) == [Expired(6, first6)]
    assert r.next_deadline() is None and r.held_bytes == 0
    assert r.counters["fragments.expired"] == 3


def test_add_purges_expired_and_expire_reports_them_later():
    r = Reassembler(timeout_v4_s=5.0)
    first = frag4(0, b"a" * 8, True, ident=1)
    add4(r, first, now=0.0)
    add4(r, frag4(0, b"x" * 8, True, ident=2), now=10.0)
    assert len(r) == 1 and r.held_bytes == 8
    assert r.next_deadline() == 5.0  # already past: call expire() now
    assert r.expire(10.0) == [Expired(4, first)]
    assert r.next_deadline() == 15.0


def test_datagram_timer_starts_at_first_fragment():
    r = Reassembler()
    add4(r, frag4(0, b"a" * 8, True), now=0.0)
    add4(r, frag4(16, b"c", False), now=29.0)
    assert r.next_deadline() == 30.0
    assert add4(r, frag4(8, b"b" * 8, True), now=30.0) is None  # too late: a new datagram
    assert r.counters["fragments.expired"] == 1


# -- bounds ---------------------------------------------------------------------------------------------

def test_max_datagrams_evicts_the_oldest():
    r = Reassembler(max_datagrams=3)
    for i in range(3):
        add4(r, frag4(0, b"a" * 8, True, ident=i), now=float(i))
    add6(r, frag6(0, b"b" * 8, True, ident=9), now=3.0)
    assert len(r) == 3 and r.counters["fragments.evicted"] == 1
    # ident 0 is gone: its last fragment starts a new datagram instead of completing.
    assert add4(r, frag4(8, b"z", False, ident=0), now=4.0) is None
    assert add4(r, frag4(8, b"z", False, ident=2), now=4.0) is not None


def test_max_held_bytes_evicts_others():
    r = Reassembler(max_held_bytes=100)
    add4(r, frag4(0, b"a" * 48, True, ident=1))
    add6(r, frag6(0, b"b" * 48, True, ident=2))
    assert r.held_bytes == 96
    add4(r, frag4(0, b"c" * 16, True, ident=3))
    assert r.counters["fragments.evicted"] == 1 and r.held_bytes == 64
    assert r.held_bytes <= 100


def test_held_bytes_limit_below_one_fragment():
    r = Reassembler(max_held_bytes=10)
    assert add4(r, frag4(0, b"a" * 16, True)) is None
    assert r.counters["fragments.datagram_over_limit"] == 1 and r.held_bytes == 0


def test_max_fragments_and_max_datagram_bytes():
    r = Reassembler(max_fragments=4)
    for i in range(4):
        add4(r, frag4(8 * i, b"x" * 8, True))
    add4(r, frag4(32, b"x" * 8, True))
    assert r.counters["fragments.too_many_fragments"] == 1 and r.held_bytes == 0
    r = Reassembler(max_datagram_bytes=1000)
    add6(r, frag6(0, b"y" * 992, True))
    add6(r, frag6(992, b"y" * 16, True))
    assert r.counters["fragments.datagram_over_limit"] == 1 and r.held_bytes == 0


# -- fuzz -----------------------------------------------------------------------------------------------

_frag_st = st.tuples(
    st.sampled_from([4, 6]),
    st.integers(0, 3),  # ident
    st.integers(0, 40).map(lambda n: n * 8),  # offset
    st.integers(0, 40),  # length
    st.booleans(),  # more
    st.floats(0, 5),  # time step
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frag_st, max_size=40))
def test_fuzz_random_fragments_keep_invariants(frags):
    r = Reassembler(max_datagrams=4, max_held_bytes=600, max_fragments=8)
    now = 0.0
    for family, ident, off, n, more, step in frags:
        now += step * 10
        data = bytes([ident]) * n
        out = add4(r, frag4(off, data, more, ident=ident), now) if family == 4 else add6(
            r, frag6(off, data, more, ident=ident), now)
        if out is not None:
            if family == 4:
                v = Ipv4View.check(memoryview(out))
                assert not v.is_fragment and set(bytes(v.payload)) <= {ident}
            else:
                v = Ipv6View.check(memoryview(out))
                assert v.walk().fragment is None
        assert 0 <= r.held_bytes <= 600
        assert len(r) <= 4
        assert r.held_bytes == sum(d.received for t in (r._v4, r._v6) for d in t.values())
    r.expire(now + 1000)
    assert len(r) == 0 and r.held_bytes == 0 and r.next_deadline() is None
    assert all(name.startswith("fragments.") and v > 0 for name, v in r.counters.items())


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 40), st.randoms(use_true_random=False), st.booleans(),
       st.sampled_from([4, 6]))
def test_fuzz_any_order_with_duplicates_reassembles(data, unit8, rnd, dup, family):
    size = unit8 * 8
    pieces = [(o, data[o : o + size], o + size < len(data)) for o in range(0, len(data), size)]
    if dup:
        pieces += rnd.sample(pieces, k=min(3, len(pieces)))
    rnd.shuffle(pieces)
    # A duplicate of the completing fragment arrives after completion: it starts a new datagram.
    r = Reassembler()
    outs = [add4(r, frag4(*p)) if family == 4 else add6(r, frag6(*p)) for p in pieces]
    done = [o for o in outs if o is not None]
    assert len(done) >= 1
    if family == 4:
        assert done[0] == frag4(0, data, False)
    else:
        head = bytearray(40)
        Ipv6Header(SRC6, DST6, 17, len(data)).emit(head)
        assert done[0] == bytes(head) + data
    assert r.counters["fragments.overlap"] == 0
