"""DHCPv4 (netstack/wire/dhcp.py) against scapy both ways, plus fuzzing."""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from netstack.wire import Malformed
from netstack.wire.dhcp import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    DISCOVER,
    MIN_MESSAGE_LEN,
    NAK,
    OFFER,
    REQUEST,
    DhcpMessage,
    DhcpView,
)

MAC = bytes.fromhex("02aabbccddee")
GW, DNS, LEASE = bytes([10, 0, 2, 2]), bytes([10, 0, 2, 3]), bytes([10, 0, 2, 15])
MASK = bytes([255, 255, 255, 0])


def _bootp(options, **kw) -> bytes:
    fields = dict(op=1, chaddr=MAC, xid=0xDEADBEEF)
    fields.update(kw)
    return bytes(BOOTP(**fields) / DHCP(options=options))


HEAD = bytes(BOOTP(op=1, chaddr=MAC, xid=0xDEADBEEF, options=b"\x63\x82\x53\x63"))[:240]


def _raw(options: bytes) -> bytes:
    """A request with hand-written option bytes after the cookie."""
    return HEAD + options


def _parse(raw: bytes) -> DhcpMessage:
    return DhcpMessage.parse(DhcpView.check(memoryview(raw)))


def _err(raw: bytes) -> str:
    with pytest.raises(Malformed) as exc:
        _parse(raw)
    return exc.value.counter


def test_parse_scapy_discover():
    raw = _bootp([("message-type", "discover"), ("param_req_list", [1, 3, 6, 15, 51]),
                  ("client_id", b"\x01" + MAC), ("requested_addr", "10.0.2.15"), "end"], flags=0x8000, secs=3)
    v = DhcpView.check(memoryview(raw))
    assert (v.op, v.xid, v.secs, v.flags, v.chaddr, v.hops) == (BOOTREQUEST, 0xDEADBEEF, 3, 0x8000, MAC, 0)
    assert _parse(raw) == DhcpMessage(
        op=BOOTREQUEST, xid=0xDEADBEEF, chaddr=MAC, message_type=DISCOVER, secs=3, broadcast=True,
        requested_ip=LEASE, parameter_request_list=bytes([1, 3, 6, 15, 51]), client_id=b"\x01" + MAC,
    )


def test_parse_scapy_request_with_padding_and_unknown_options():
    raw = _bootp(["pad", ("message-type", "request"), ("server_id", "10.0.2.2"), "pad", ("hostname", b"guest"),
                  ("requested_addr", "10.0.2.15"), ("max_dhcp_size", 1500), ("overload", 3), "end", "pad", "pad"],
                 ciaddr="10.0.2.15", giaddr="10.0.3.1", hops=1)
    m = _parse(raw)
    assert (m.message_type, m.server_id, m.requested_ip, m.ciaddr, m.giaddr, m.hops) == (
        REQUEST, GW, LEASE, LEASE, bytes([10, 0, 3, 1]), 1)
    assert m.routers == () and m.lease_time is None and m.client_id is None


def test_parse_scapy_ack_with_all_server_options():
    raw = _bootp([("message-type", "ack"), ("server_id", "10.0.2.2"), ("lease_time", 86400),
                  ("subnet_mask", "255.255.255.0"), ("router", "10.0.2.2"),
                  ("name_server", "10.0.2.3", "8.8.8.8"), "end"], op=2, yiaddr="10.0.2.15", siaddr="10.0.2.2")
    m = _parse(raw)
    assert m == DhcpMessage(op=BOOTREPLY, xid=0xDEADBEEF, chaddr=MAC, message_type=ACK, yiaddr=LEASE, siaddr=GW,
                            server_id=GW, lease_time=86400, subnet_mask=MASK, routers=(GW,),
                            dns_servers=(DNS, bytes([8, 8, 8, 8])))


def test_missing_end_is_tolerated():
    raw = _bootp([("message-type", "discover")])
    assert raw[-1] != 255
    assert _parse(raw).message_type == DISCOVER


def test_repeated_options_are_concatenated():
    # RFC 3396: a DNS list split across two option-6 instances.
    raw = _bootp([("message-type", "offer"), ("name_server", "1.1.1.1"), ("name_server", "1.0.0.1"), "end"])
    assert _parse(raw).dns_servers == (bytes([1, 1, 1, 1]), bytes([1, 0, 0, 1]))


@pytest.mark.parametrize(
    "msg",
    [
        DhcpMessage(op=BOOTREPLY, xid=1, chaddr=MAC, message_type=OFFER, yiaddr=LEASE, siaddr=GW, server_id=GW,
                    lease_time=86400, subnet_mask=MASK, routers=(GW,), dns_servers=(DNS,)),
        DhcpMessage(op=BOOTREPLY, xid=0xFFFFFFFF, chaddr=MAC, message_type=NAK, server_id=GW, broadcast=True),
        DhcpMessage(op=BOOTREQUEST, xid=7, chaddr=MAC, message_type=REQUEST, requested_ip=LEASE, server_id=GW,
                    client_id=b"\x01" + MAC, parameter_request_list=bytes([1, 3, 6]), secs=65535),
    ],
)
def test_emit_dissected_by_scapy(msg):
    buf = bytearray(5 + msg.buffer_len)
    msg.emit(buf, 5)
    raw = bytes(buf[5:])
    assert len(raw) == msg.buffer_len >= MIN_MESSAGE_LEN
    s = BOOTP(raw)
    assert (s.op, s.htype, s.hlen, s.xid, s.secs, s.flags) == (msg.op, 1, 6, msg.xid, msg.secs,
                                                               0x8000 if msg.broadcast else 0)
    assert s.chaddr == MAC + bytes(10) and s.yiaddr == ".".join(map(str, msg.yiaddr))
    opts = {o[0]: o[1:] for o in s[DHCP].options if isinstance(o, tuple)}
    assert opts["message-type"] == (msg.message_type,)
    assert s[DHCP].options[0] == ("message-type", msg.message_type)
    assert "end" in s[DHCP].options
    if msg.server_id:
        assert opts["server_id"] == ("10.0.2.2",)
    if msg.lease_time:
        assert opts["lease_time"] == (86400,)
        assert opts["subnet_mask"] == ("255.255.255.0",) and opts["router"] == ("10.0.2.2",)
        assert opts["name_server"] == ("10.0.2.3",)
    if msg.client_id:
        assert opts["client_id"] == (msg.client_id,) and opts["param_req_list"] == ([1, 3, 6],)
        assert opts["requested_addr"] == ("10.0.2.15",)
    assert _parse(raw) == msg


def test_long_option_is_split_and_rejoined():
    servers = tuple(bytes([10, 0, i // 256, i % 256]) for i in range(100))  # 400 bytes: two pieces
    msg = DhcpMessage(op=BOOTREPLY, xid=1, chaddr=MAC, message_type=ACK, dns_servers=servers)
    buf = bytearray(msg.buffer_len)
    msg.emit(buf)
    s = BOOTP(bytes(buf))
    pieces = [o for o in s[DHCP].options if isinstance(o, tuple) and o[0] == "name_server"]
    assert len(pieces) == 2
    assert pieces[0][1:] + pieces[1][1:] == tuple(".".join(map(str, a)) for a in servers)
    assert _parse(bytes(buf)).dns_servers == servers


@pytest.mark.parametrize(
    "raw, counter",
    [
        (b"", "dhcp.truncated"),
        (_bootp([("message-type", 1), "end"])[:239], "dhcp.truncated"),
        (_bootp([("message-type", 1), "end"], op=3), "dhcp.bad_op"),
        (_bootp([("message-type", 1), "end"], htype=6), "dhcp.bad_hardware"),
        (_bootp([("message-type", 1), "end"], hlen=16), "dhcp.bad_hardware"),
        (bytes(BOOTP(op=1, chaddr=MAC, options=b"\x63\x82\x53\x64\x35\x01\x01\xff")), "dhcp.bad_cookie"),
        (_raw(b"\x35\x01\x01\x06\x08\x01\x01\x01\x01"), "dhcp.bad_option"),
        (_raw(b"\x35\x01\x01\x06"), "dhcp.bad_option"),
        (_bootp([("hostname", b"x"), "end"]), "dhcp.missing_message_type"),
        (_raw(b"\xff" + bytes(59)), "dhcp.missing_message_type"),  # plain BOOTP (vendor area of 64)
        (bytes(BOOTP(op=1, chaddr=MAC)), "dhcp.truncated"),  # no vendor area at all
        (_bootp([("message-type", 9), "end"]), "dhcp.bad_message_type"),
        (_bootp([("message-type", 0), "end"]), "dhcp.bad_message_type"),
        (_raw(b"\x35\x02\x01\x01\xff"), "dhcp.bad_message_type"),
        (_raw(b"\x35\x01\x01\x36\x03\x0a\x00\x02\xff"), "dhcp.bad_option_length"),  # server id of 3
        (_raw(b"\x35\x01\x01\x32\x05\x0a\x00\x02\x0f\x00\xff"), "dhcp.bad_option_length"),  # requested ip of 5
        (_raw(b"\x35\x01\x01\x01\x02\xff\xff\xff"), "dhcp.bad_option_length"),  # subnet mask of 2
        (_raw(b"\x35\x01\x01\x03\x05\x0a\x00\x02\x02\x0a\xff"), "dhcp.bad_option_length"),  # router of 5
        (_raw(b"\x35\x01\x01\x06\x00\xff"), "dhcp.bad_option_length"),  # empty DNS list
        (_raw(b"\x35\x01\x01\x33\x02\x00\x01\xff"), "dhcp.bad_option_length"),  # lease time of 2
        (_raw(b"\x35\x01\x01\x3d\x01\x01\xff"), "dhcp.bad_option_length"),  # client id of 1
        (_raw(b"\x35\x00\xff"), "dhcp.bad_message_type"),
    ],
)
def test_rejects(raw, counter):
    assert _err(raw) == counter


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_options_only_malformed(tail):
    raw = _raw(tail)
    try:
        m = _parse(raw)
    except Malformed as e:
        assert e.counter.startswith("dhcp.") and len(e.counter) > 5
    else:
        buf = bytearray(m.buffer_len)
        m.emit(buf)
        assert _parse(bytes(buf)) == m


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=320))
def test_fuzz_anything_only_malformed(data):
    try:
        _parse(data)
    except Malformed as e:
        assert e.counter.startswith("dhcp.")


_ip = st.binary(min_size=4, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([BOOTREQUEST, BOOTREPLY]), st.integers(0, 2**32 - 1), st.integers(1, 8), st.booleans(),
    st.none() | _ip, st.none() | st.integers(0, 2**32 - 1), st.lists(_ip, max_size=70).map(tuple),
    st.binary(max_size=300), st.none() | st.binary(min_size=2, max_size=300),
)
def test_fuzz_emit_round_trip_scapy(op, xid, mtype, bcast, server, lease, dns, prl, cid):
    m = DhcpMessage(op=op, xid=xid, chaddr=MAC, message_type=mtype, broadcast=bcast, server_id=server,
                    lease_time=lease, dns_servers=dns, parameter_request_list=prl, client_id=cid)
    buf = bytearray(m.buffer_len)
    m.emit(buf)
    assert _parse(bytes(buf)) == m
    s = BOOTP(bytes(buf))
    assert s.xid == xid and s[DHCP].options[0] == ("message-type", mtype)
