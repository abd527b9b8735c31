"""Neighbour Discovery (netstack/wire/ndp.py) against scapy both ways, plus fuzzing."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    IPv6,
)
from scapy.packet import Raw

from netstack.wire import Malformed, ndp
from netstack.wire.icmpv6 import Icmpv6View, finish_checksum
from netstack.wire.ipv6 import Ipv6Header, Ipv6View, solicited_node_multicast
from netstack.wire.ndp import (
    NdpView,
    NeighborAdvertisement,
    NeighborSolicitation,
    PrefixInfo,
    Rdnss,
    RouterAdvertisement,
    RouterSolicitation,
)


def A(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


GW_LL, GUEST_LL, GUEST = A("fe80::2"), A("fe80::aa"), A("fd00::64")
ALL_NODES, ALL_ROUTERS = A("ff02::1"), A("ff02::2")
MAC_GW = bytes.fromhex("525500000202")
MAC_GUEST = bytes.fromhex("02aabbccddee")


def _packet(layer, src: str, dst: str, hlim: int = 255) -> bytes:
    return bytes(IPv6(src=src, dst=dst, hlim=hlim) / layer)


def _packet_raw(msg: bytes, src: str, dst: str) -> bytes:
    """A hand-made ICMPv6 message under an IPv6 header, with its checksum filled in."""
    buf = bytearray(40 + len(msg))
    Ipv6Header(A(src), A(dst), 58, len(msg), hop_limit=255).emit(buf)
    buf[40:] = msg
    finish_checksum(buf, 40, len(msg), A(src), A(dst))
    return bytes(buf)


def _view(raw: bytes) -> NdpView:
    ip = Ipv6View.check(memoryview(raw))
    icmp = Icmpv6View.check(ip.payload, ip.src, ip.dst)
    return NdpView.check(icmp, ip.src, ip.dst, ip.hop_limit)


def _err(raw: bytes) -> str:
    with pytest.raises(Malformed) as exc:
        _view(raw)
    return exc.value.counter


def _emit(value, src: bytes, dst: bytes) -> IPv6:
    """Emit ``value`` under an IPv6 header and let scapy dissect (and check) it."""
    ip = Ipv6Header(src, dst, 58, value.buffer_len, hop_limit=255)
    buf = bytearray(40 + value.buffer_len)
    ip.emit(buf)
    value.emit(buf, 40, src, dst)
    pkt = IPv6(bytes(buf))
    icmp = pkt.payload
    stored = icmp.cksum
    del icmp.cksum
    assert IPv6(bytes(pkt)).payload.cksum == stored
    # And our own checker accepts it.
    assert ndp.parse(_view(bytes(buf))) == value
    return pkt


def test_parse_scapy_rs():
    v = _view(_packet(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr="02:aa:bb:cc:dd:ee"), "fe80::aa", "ff02::2"))
    assert v.type == 133
    assert ndp.parse(v) == RouterSolicitation(MAC_GUEST)
    assert ndp.parse(_view(_packet(ICMPv6ND_RS(), "::", "ff02::2"))) == RouterSolicitation(None)


def test_parse_scapy_ra_with_all_options():
    layer = (ICMPv6ND_RA(chlim=64, M=1, O=1, routerlifetime=1800, reachabletime=30000, retranstimer=1000)
             / ICMPv6NDOptSrcLLAddr(lladdr="52:55:00:00:02:02")
             / ICMPv6NDOptMTU(mtu=65520)
             / ICMPv6NDOptPrefixInfo(prefix="fd00::", prefixlen=64, L=1, A=1, validlifetime=86400,
                                     preferredlifetime=14400)
             / ICMPv6NDOptPrefixInfo(prefix="2001:db8:1::", prefixlen=48, L=0, A=1, validlifetime=0xFFFFFFFF,
                                     preferredlifetime=0)
             / ICMPv6NDOptRDNSS(dns=["fd00::3", "2001:4860:4860::8888"], lifetime=600)
             / ICMPv6NDOptUnknown(type=200, len=2, data=b"\0" * 14))
    ra = ndp.parse(_view(_packet(layer, "fe80::2", "ff02::1")))
    assert ra == RouterAdvertisement(
        cur_hop_limit=64, managed=True, other=True, router_lifetime=1800, reachable_time=30000, retrans_timer=1000,
        source_mac=MAC_GW, mtu=65520,
        prefixes=(PrefixInfo(A("fd00::"), 64, 86400, 14400, True, True),
                  PrefixInfo(A("2001:db8:1::"), 48, 0xFFFFFFFF, 0, False, True)),
        rdnss=(Rdnss(600, (A("fd00::3"), A("2001:4860:4860::8888"))),),
    )


def test_parse_scapy_ns_na():
    ns = ndp.parse(_view(_packet(ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptSrcLLAddr(lladdr="02:aa:bb:cc:dd:ee"),
                                 "fd00::64", "ff02::1:ff00:2")))
    assert ns == NeighborSolicitation(A("fd00::2"), MAC_GUEST) and not ns.is_dad
    dad = ndp.parse(_view(_packet(ICMPv6ND_NS(tgt="fd00::64"), "::", "ff02::1:ff00:64")))
    assert dad == NeighborSolicitation(A("fd00::64"), None) and dad.is_dad
    na = ndp.parse(_view(_packet(ICMPv6ND_NA(tgt="fd00::64", R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(
        lladdr="02:aa:bb:cc:dd:ee"), "fd00::64", "fd00::2")))
    assert na == NeighborAdvertisement(A("fd00::64"), router=False, solicited=True, override=True, target_mac=MAC_GUEST)
    unsolicited = ndp.parse(_view(_packet(ICMPv6ND_NA(tgt="fd00::64", R=1, S=0, O=0), "fd00::64", "ff02::1")))
    assert unsolicited == NeighborAdvertisement(A("fd00::64"), router=True)


def test_ignored_options():
    layer = (ICMPv6ND_RA()
             / ICMPv6NDOptSrcLLAddr(lladdr="52:55:00:00:02:02")
             / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")  # second SLLA: first wins
             / ICMPv6NDOptPrefixInfo(prefix="fd00::", prefixlen=129)  # bad prefix length
             / ICMPv6NDOptRDNSS(dns=[], len=1)  # RDNSS of length 1 (< 3)
             / ICMPv6NDOptUnknown(type=25, len=2, data=bytes(14))  # RDNSS of even length
             / ICMPv6NDOptUnknown(type=5, len=2, data=bytes(14))  # MTU of the wrong length
             / ICMPv6NDOptUnknown(type=3, len=3, data=bytes(22)))  # prefix info of the wrong length
    ra = ndp.parse(_view(_packet(layer, "fe80::2", "ff02::1")))
    assert (ra.source_mac, ra.mtu, ra.prefixes, ra.rdnss) == (MAC_GW, None, (), ())
    # A link-layer address option that is not Ethernet-sized is ignored.
    ns = ndp.parse(_view(_packet(ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptUnknown(type=1, len=2, data=bytes(14)),
                                 "fd00::64", "ff02::1:ff00:2")))
    assert ns.source_mac is None


def test_emit_ra_dissected_by_scapy():
    ra = RouterAdvertisement(
        cur_hop_limit=64, router_lifetime=1800, source_mac=MAC_GW, mtu=1500,
        prefixes=(PrefixInfo(A("fd00::"), 64, 86400, 14400),),
        rdnss=(Rdnss(3600, (A("fd00::3"),)),),
    )
    pkt = _emit(ra, GW_LL, ALL_NODES)
    s = pkt[ICMPv6ND_RA]
    assert (s.type, s.code, s.chlim, s.M, s.O, s.routerlifetime, s.reachabletime, s.retranstimer) == (
        134, 0, 64, 0, 0, 1800, 0, 0)
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == "52:55:00:00:02:02"
    assert pkt[ICMPv6NDOptMTU].mtu == 1500
    p = pkt[ICMPv6NDOptPrefixInfo]
    assert (p.prefix, p.prefixlen, p.L, p.A, p.validlifetime, p.preferredlifetime) == ("fd00::", 64, 1, 1, 86400, 14400)
    r = pkt[ICMPv6NDOptRDNSS]
    assert (r.len, r.lifetime, r.dns) == (3, 3600, ["fd00::3"])


def test_emit_bare_ra_and_multiple_rdnss():
    ra = RouterAdvertisement(managed=True, rdnss=(Rdnss(10, (A("fd00::3"), A("fd00::4"))), Rdnss(0, (A("fd00::5"),))))
    pkt = _emit(ra, GW_LL, GUEST_LL)
    assert pkt[ICMPv6ND_RA].M == 1
    opts = [o for o in pkt[ICMPv6ND_RA].iterpayloads() if isinstance(o, ICMPv6NDOptRDNSS)]
    assert [(o.len, o.dns) for o in opts] == [(5, ["fd00::3", "fd00::4"]), (3, ["fd00::5"])]
    with pytest.raises(ValueError):
        RouterAdvertisement(rdnss=(Rdnss(1, ()),)).emit(bytearray(64), 0, GW_LL, GUEST_LL)


def test_emit_rs_ns_na_dissected_by_scapy():
    pkt = _emit(RouterSolicitation(MAC_GUEST), GUEST_LL, ALL_ROUTERS)
    assert pkt[ICMPv6ND_RS].type == 133 and pkt[ICMPv6NDOptSrcLLAddr].lladdr == "02:aa:bb:cc:dd:ee"
    pkt = _emit(RouterSolicitation(), GUEST_LL, ALL_ROUTERS)
    assert ICMPv6NDOptSrcLLAddr not in pkt
    target = A("fd00::64")
    pkt = _emit(NeighborSolicitation(target, MAC_GW), A("fd00::2"), solicited_node_multicast(target))
    assert pkt[ICMPv6ND_NS].tgt == "fd00::64" and pkt[ICMPv6NDOptSrcLLAddr].lladdr == "52:55:00:00:02:02"
    assert pkt.dst == "ff02::1:ff00:64"
    pkt = _emit(NeighborAdvertisement(A("fd00::2"), router=True, solicited=True, override=True, target_mac=MAC_GW),
                A("fd00::2"), GUEST)
    s = pkt[ICMPv6ND_NA]
    assert (s.tgt, s.R, s.S, s.O) == ("fd00::2", 1, 1, 1) and pkt[ICMPv6NDOptDstLLAddr].lladdr == "52:55:00:00:02:02"
    assert pkt[ICMPv6ND_NA].res == 0


@pytest.mark.parametrize(
    "raw, counter",
    [
        (_packet(ICMPv6ND_RS(), "fe80::aa", "ff02::2", hlim=64), "ndp.bad_hop_limit"),
        (_packet(ICMPv6ND_RS(code=1), "fe80::aa", "ff02::2"), "ndp.bad_code"),
        (_packet(ICMPv6ND_Redirect(), "fe80::2", "fe80::aa"), "ndp.unsupported_type"),
        (_packet_raw(bytes([135, 0, 0, 0]) + bytes(16), "fd00::64", "ff02::1:ff00:2"), "ndp.truncated"),
        (_packet_raw(bytes([134, 0, 0, 0]) + bytes(8), "fe80::2", "ff02::1"), "ndp.truncated"),
        (_packet(ICMPv6ND_RS() / ICMPv6NDOptUnknown(type=1, len=0, data=b"\0" * 6), "fe80::aa", "ff02::2"),
         "ndp.bad_option_length"),
        (_packet(ICMPv6ND_RS() / ICMPv6NDOptUnknown(type=1, len=2, data=b"\0" * 6), "fe80::aa", "ff02::2"),
         "ndp.truncated_option"),
        (_packet(ICMPv6ND_RS() / Raw(b"\x01"), "fe80::aa", "ff02::2"), "ndp.truncated_option"),
        (_packet(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr="02:aa:bb:cc:dd:ee"), "::", "ff02::2"),
         "ndp.slla_from_unspecified"),
        (_packet(ICMPv6ND_NS(tgt="fd00::64") / ICMPv6NDOptSrcLLAddr(lladdr="02:aa:bb:cc:dd:ee"), "::",
                 "ff02::1:ff00:64"), "ndp.slla_from_unspecified"),
        (_packet(ICMPv6ND_NS(tgt="fd00::64"), "::", "fd00::64"), "ndp.bad_dad_destination"),
        (_packet(ICMPv6ND_NS(tgt="ff02::1"), "fd00::64", "ff02::1:ff00:1"), "ndp.multicast_target"),
        (_packet(ICMPv6ND_NA(tgt="ff02::1"), "fd00::64", "fd00::2"), "ndp.multicast_target"),
        (_packet(ICMPv6ND_NA(tgt="fd00::64", S=1), "fd00::64", "ff02::1"), "ndp.solicited_to_multicast"),
        (_packet(ICMPv6ND_RA(), "fd00::2", "ff02::1"), "ndp.ra_not_link_local"),
    ],
)
def test_check_rejects(raw, counter):
    assert _err(raw) == counter


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([133, 134, 135, 136, 137]),
    st.binary(max_size=80),
    st.sampled_from([GW_LL, GUEST, bytes(16)]),
    st.sampled_from([ALL_NODES, GUEST, solicited_node_multicast(GUEST)]),
    st.sampled_from([255, 255, 64]),
)
def test_fuzz_only_malformed(t, body, src, dst, hlim):
    raw = bytes([t, 0, 0, 0]) + body
    raw = raw + bytes(max(0, 8 - len(raw)))
    icmp = Icmpv6View.check(memoryview(raw))
    try:
        value = ndp.parse(NdpView.check(icmp, src, dst, hlim))
    except Malformed as e:
        assert e.counter.startswith("ndp.") and len(e.counter) > 4
    else:
        out = bytearray(value.buffer_len)
        value.emit(out, 0, src, dst)
        # Re-parsing what we emit gives the same value (unknown/ignored options are dropped).
        assert ndp.parse(NdpView.check(Icmpv6View.check(memoryview(out), src, dst), src, dst, 255)) == value


_mac = st.none() | st.binary(min_size=6, max_size=6)
_addr = st.binary(min_size=16, max_size=16).filter(lambda a: a[0] != 0xFF)
_u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 255), st.booleans(), st.booleans(), st.integers(0, 65535), _u32, _u32, _mac, st.none() | _u32,
    st.lists(st.builds(PrefixInfo, _addr, st.integers(0, 128), _u32, _u32, st.booleans(), st.booleans()), max_size=3),
    st.lists(st.builds(Rdnss, _u32, st.lists(_addr, min_size=1, max_size=3).map(tuple)), max_size=2),
)
def test_fuzz_ra_round_trip_scapy(hop, m, o, life, reach, retrans, mac, mtu, prefixes, rdnss):
    ra = RouterAdvertisement(hop, m, o, life, reach, retrans, mac, mtu, tuple(prefixes), tuple(rdnss))
    pkt = _emit(ra, GW_LL, ALL_NODES)
    s = pkt[ICMPv6ND_RA]
    assert (s.chlim, s.M, s.O, s.routerlifetime) == (hop, int(m), int(o), life)
    assert len(bytes(pkt.payload)) == ra.buffer_len
