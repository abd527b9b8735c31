"""Stateless DHCPv6 (netstack/wire/dhcpv6.py) against scapy both ways, plus fuzzing."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dhcp6 import (
    DHCP6_InfoRequest,
    DHCP6_RelayForward,
    DHCP6_Reply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptInfoRefreshTime,
    DHCP6OptOptReq,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
    DUID_LL,
)
from scapy.packet import Raw

from netstack.wire import Malformed
from netstack.wire.dhcpv6 import (
    INFORMATION_REQUEST,
    OPT_DNS_SERVERS,
    OPT_IA_NA,
    REPLY,
    SOLICIT,
    Dhcpv6Message,
    Dhcpv6View,
    duid_ll,
)

MAC_GUEST = bytes.fromhex("02aabbccddee")
MAC_GW = bytes.fromhex("525500000202")
DNS = ipaddress.IPv6Address("fd00::3").packed


def _parse(raw: bytes) -> Dhcpv6Message:
    return Dhcpv6Message.parse(Dhcpv6View.check(memoryview(raw)))


def _err(raw: bytes) -> str:
    with pytest.raises(Malformed) as exc:
        _parse(raw)
    return exc.value.counter


def _info_request() -> bytes:
    return bytes(DHCP6_InfoRequest(trid=0x123456)
                 / DHCP6OptClientId(duid=DUID_LL(lladdr="02:aa:bb:cc:dd:ee"))
                 / DHCP6OptElapsedTime(elapsedtime=5)
                 / DHCP6OptOptReq(reqopts=[23, 24, 32]))


def test_parse_scapy_information_request():
    v = Dhcpv6View.check(memoryview(_info_request()))
    assert (v.msg_type, v.transaction_id) == (INFORMATION_REQUEST, 0x123456)
    assert not v.has_option(OPT_IA_NA)
    assert _parse(_info_request()) == Dhcpv6Message(
        INFORMATION_REQUEST, 0x123456, client_id=duid_ll(MAC_GUEST), requested_options=(23, 24, 32), elapsed_time=5)


def test_ia_option_is_visible_and_skipped():
    raw = bytes(DHCP6_Solicit(trid=1) / DHCP6OptClientId(duid=DUID_LL(lladdr="02:aa:bb:cc:dd:ee"))
                / DHCP6OptIA_NA(iaid=7) / DHCP6OptStatusCode(statuscode=0, statusmsg="ok"))
    v = Dhcpv6View.check(memoryview(raw))
    assert v.has_option(OPT_IA_NA) and not v.has_option(OPT_DNS_SERVERS)
    assert _parse(raw) == Dhcpv6Message(SOLICIT, 1, client_id=duid_ll(MAC_GUEST))


def test_parse_scapy_reply():
    raw = bytes(DHCP6_Reply(trid=0xFFFFFF) / DHCP6OptClientId(duid=DUID_LL(lladdr="02:aa:bb:cc:dd:ee"))
                / DHCP6OptServerId(duid=DUID_LL(lladdr="52:55:00:00:02:02"))
                / DHCP6OptDNSServers(dnsservers=["fd00::3", "2001:db8::53"]) / DHCP6OptInfoRefreshTime(reftime=86400))
    assert _parse(raw) == Dhcpv6Message(
        REPLY, 0xFFFFFF, client_id=duid_ll(MAC_GUEST), server_id=duid_ll(MAC_GW),
        dns_servers=(DNS, ipaddress.IPv6Address("2001:db8::53").packed), information_refresh_time=86400)


def test_reply_emitted_and_dissected_by_scapy():
    req = _parse(_info_request())
    rep = req.reply(duid_ll(MAC_GW), (DNS,), information_refresh_time=3600)
    buf = bytearray(3 + rep.buffer_len)
    rep.emit(buf, 3)
    raw = bytes(buf[3:])
    s = DHCP6_Reply(raw)
    assert (s.msgtype, s.trid) == (7, 0x123456)
    assert s[DHCP6OptClientId].duid.lladdr == "02:aa:bb:cc:dd:ee"
    assert s[DHCP6OptServerId].duid.lladdr == "52:55:00:00:02:02"
    assert s[DHCP6OptDNSServers].dnsservers == ["fd00::3"]
    assert s[DHCP6OptInfoRefreshTime].reftime == 3600
    assert len(raw) == len(bytes(s))
    assert _parse(raw) == rep


def test_emit_information_request_dissected_by_scapy():
    m = Dhcpv6Message(INFORMATION_REQUEST, 42, client_id=duid_ll(MAC_GUEST), requested_options=(23,), elapsed_time=0)
    buf = bytearray(m.buffer_len)
    m.emit(buf)
    s = DHCP6_InfoRequest(bytes(buf))
    assert s.trid == 42 and s[DHCP6OptOptReq].reqopts == [23] and s[DHCP6OptElapsedTime].elapsedtime == 0
    # Same bytes as scapy's own rendering of the same message.
    assert bytes(buf) == bytes(DHCP6_InfoRequest(trid=42) / DHCP6OptClientId(duid=DUID_LL(lladdr="02:aa:bb:cc:dd:ee"))
                               / DHCP6OptElapsedTime(elapsedtime=0) / DHCP6OptOptReq(reqopts=[23]))


def test_header_only_message():
    m = _parse(bytes([INFORMATION_REQUEST, 0, 0, 1]))
    assert m == Dhcpv6Message(INFORMATION_REQUEST, 1)
    buf = bytearray(m.buffer_len)
    m.emit(buf)
    assert bytes(buf) == bytes([11, 0, 0, 1])


def _opt(code: int, value: bytes) -> bytes:
    return code.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


@pytest.mark.parametrize(
    "raw, counter",
    [
        (b"", "dhcpv6.truncated"),
        (b"\x0b\x00\x00", "dhcpv6.truncated"),
        (bytes(DHCP6_RelayForward()), "dhcpv6.relay_unsupported"),
        (b"\x0d\x00\x00\x00", "dhcpv6.relay_unsupported"),
        (b"\x00\x00\x00\x00", "dhcpv6.bad_message_type"),
        (b"\x0e\x00\x00\x00", "dhcpv6.bad_message_type"),
        (b"\x0b\x00\x00\x00\x00\x01\x00", "dhcpv6.bad_option"),
        (b"\x0b\x00\x00\x00" + _opt(1, b"\0\3\0\1")[:-1] + b"", "dhcpv6.bad_option"),
        (b"\x0b\x00\x00\x00" + _opt(1, b"\0"), "dhcpv6.bad_option_length"),
        (b"\x0b\x00\x00\x00" + _opt(2, bytes(131)), "dhcpv6.bad_option_length"),
        (b"\x0b\x00\x00\x00" + _opt(6, b"\0\x17\0"), "dhcpv6.bad_option_length"),
        (b"\x0b\x00\x00\x00" + _opt(8, b"\0"), "dhcpv6.bad_option_length"),
        (b"\x07\x00\x00\x00" + _opt(23, bytes(17)), "dhcpv6.bad_option_length"),
        (b"\x07\x00\x00\x00" + _opt(32, bytes(2)), "dhcpv6.bad_option_length"),
    ],
)
def test_rejects(raw, counter):
    assert _err(raw) == counter


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_only_malformed(data):
    try:
        m = _parse(data)
    except Malformed as e:
        assert e.counter.startswith("dhcpv6.") and len(e.counter) > 7
    else:
        buf = bytearray(m.buffer_len)
        m.emit(buf)
        assert _parse(bytes(buf)) == m


_duid = st.none() | st.binary(min_size=2, max_size=130)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([1, 7, 11]), st.integers(0, 2**24 - 1), _duid, _duid,
       st.lists(st.integers(0, 65535), max_size=5).map(tuple), st.none() | st.integers(0, 65535),
       st.lists(st.binary(min_size=16, max_size=16), max_size=4).map(tuple), st.none() | st.integers(0, 2**32 - 1))
def test_fuzz_round_trip_scapy(t, tid, cid, sid, oro, elapsed, dns, refresh):
    m = Dhcpv6Message(t, tid, cid, sid, oro, elapsed, dns, refresh)
    buf = bytearray(m.buffer_len)
    m.emit(buf)
    assert _parse(bytes(buf)) == m
    from scapy.layers.dhcp6 import DHCP6
    s = DHCP6(bytes(buf))
    assert s.msgtype == t and s.trid == tid
    if dns:
        assert [ipaddress.IPv6Address(a).packed for a in s[DHCP6OptDNSServers].dnsservers] == list(dns)
