"""The JSON API (slirp/api.py): the pure handler byte for byte (compat spec §6), fuzzed,
and the socket glue driven by hand through a fake event-loop host.

Expected replies are slirp4netns 1.2.0's (observed), except where DESIGN.md's
compatibility contract decides otherwise: list_hostfwd has the ``return``
wrapper, and requests that crash 1.2.0 get the documented error.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from netstack.addressing import AddressPlan
from slirp import api
from slirp.api import (
    API_MAX_CONNECTIONS,
    API_READ_MAX,
    API_READ_TIMEOUT_S,
    ERRORS,
    ApiServer,
    RemoveFailed,
    handle_request,
)
from slirp.portfwd import ForwardRegistry

PLAN = AddressPlan.from_network(ipaddress.IPv4Network("10.0.2.0/24"))


class NullHost:
    def listener_opened(self, fwd):
        pass

    def listener_closing(self, fwd):
        pass


class FakeSock:
    def __init__(self, proto, addr, port):
        self.bound = (proto, str(addr), port)

    def close(self):
        pass


class Opener:
    """Binds nothing; refuses what is in ``busy`` as EADDRINUSE."""

    def __init__(self):
        self.busy = set()
        self.calls = []

    def __call__(self, proto, addr, port):
        self.calls.append((proto, str(addr), port))
        if (proto, str(addr), port) in self.busy:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return FakeSock(proto, addr, port)


@pytest.fixture
def table():
    reg = ForwardRegistry(PLAN, NullHost(), opener=Opener())
    return reg


def ask(table, request) -> bytes:
    if isinstance(request, str):
        request = request.encode()
    return handle_request(request, table).body


def err(desc: str) -> bytes:
    return ('{"error":{"desc":"' + desc + '"}}').encode()


def add(args: str) -> str:
    return '{"execute":"add_hostfwd","arguments":{' + args + "}}"


E = api  # short names for the error constants below

# (request, exact reply).  Each row also shows the order of the checks: the
# first failing check answers even if later fields are also wrong.
ERROR_CASES = [
    # framing and top level
    ("", err(E.ERR_PARSE)),
    (" \n\t", err(E.ERR_PARSE)),
    ("nope", err(E.ERR_PARSE)),
    ("{", err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd",}', err(E.ERR_PARSE)),
    ("{'execute':'list_hostfwd'}", err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd","n":NaN}', err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd","n":Infinity}', err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd","n":1e400}', err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd","n":01}', err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd","n":0x10}', err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd","x":"a\tb"}', err(E.ERR_PARSE)),  # raw control character
    ('{"execute":"list_hostfwd","\\u0000":1}', err(E.ERR_PARSE)),  # NUL in a key
    ('{"execute":"list_hostfwd","x":"\\ud800"}', err(E.ERR_PARSE)),  # lone surrogates
    ('{"execute":"list_hostfwd","x":"\\udc00"}', err(E.ERR_PARSE)),
    ('{"execute":"list_hostfwd","\\ud800":1}', err(E.ERR_PARSE)),
    ('{"execute":"add_hostfwd","execute":"list_hostfwd"}', err(E.ERR_PARSE)),  # duplicate key
    ("/* c */ {}", err(E.ERR_PARSE)),
    ('\0{"execute":"list_hostfwd"}', err(E.ERR_PARSE)),  # the request ends at the first NUL
    ("[1,2]", err(E.ERR_NOT_OBJECT)),
    ('"str"', err(E.ERR_NOT_OBJECT)),
    ("1abc", err(E.ERR_NOT_OBJECT)),
    ("null", err(E.ERR_NOT_OBJECT)),
    ("true", err(E.ERR_NOT_OBJECT)),
    ("[" * 2040 + "]" * 2040, err(E.ERR_NOT_OBJECT)),  # parson nests this deep; so do we
    ("{}", err(E.ERR_NO_EXECUTE)),
    ('{"execute":null}', err(E.ERR_NO_EXECUTE)),
    ('{"execute":5}', err(E.ERR_NO_EXECUTE)),
    ('{"execute":["add_hostfwd"]}', err(E.ERR_NO_EXECUTE)),
    ('{"Execute":"list_hostfwd"}', err(E.ERR_NO_EXECUTE)),
    ('{"execute":"x"}', err(E.ERR_UNKNOWN_EXECUTE)),
    ('{"execute":"LIST_HOSTFWD"}', err(E.ERR_UNKNOWN_EXECUTE)),
    ('{"execute":""}', err(E.ERR_UNKNOWN_EXECUTE)),
    # add_hostfwd: proto first (also where slirp4netns 1.2.0 crashes)
    ('{"execute":"add_hostfwd"}', err(E.ERR_ADD_PROTO)),
    ('{"execute":"add_hostfwd","arguments":null}', err(E.ERR_ADD_PROTO)),
    ('{"execute":"add_hostfwd","arguments":[1]}', err(E.ERR_ADD_PROTO)),
    ('{"execute":"add_hostfwd","arguments":"tcp"}', err(E.ERR_ADD_PROTO)),
    (add(""), err(E.ERR_ADD_PROTO)),
    (add('"proto":5,"host_addr":"x"'), err(E.ERR_ADD_PROTO)),
    (add('"proto":null'), err(E.ERR_ADD_PROTO)),
    (add('"proto":"TCP","host_addr":"x"'), err(E.ERR_ADD_PROTO)),
    (add('"proto":"sctp","host_port":1,"guest_port":1'), err(E.ERR_ADD_PROTO)),
    (add('"proto":"tcp ","host_port":1,"guest_port":1'), err(E.ERR_ADD_PROTO)),
    # then host_addr
    (add('"proto":"tcp","host_addr":"x","host_port":"1"'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":"[::1]","host_port":18090,"guest_port":80'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":"fe80::1%lo","host_port":18090,"guest_port":80'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":":::1","host_port":18090,"guest_port":80'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":"127.1","host_port":1,"guest_port":1'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":"127.0.0.01","host_port":1,"guest_port":1'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":" 127.0.0.1","host_port":1,"guest_port":1'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":"1.2.3.4.5","host_port":1,"guest_port":1'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":5,"host_port":1,"guest_port":1'), err(E.ERR_ADD_HOST_ADDR)),
    (add('"proto":"tcp","host_addr":["0.0.0.0"],"host_port":1,"guest_port":1'), err(E.ERR_ADD_HOST_ADDR)),
    # then host_port
    (add('"proto":"tcp","guest_addr":"bad","guest_port":0'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":"18082","guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":0,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":0.5,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":-0.9,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":true,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":null,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":1e10,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":2147483648,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    (add('"proto":"tcp","host_port":-2147483649,"guest_port":80'), err(E.ERR_ADD_HOST_PORT)),
    # then guest_addr
    (add('"proto":"tcp","host_port":18092,"guest_addr":"bad","guest_port":0'), err(E.ERR_ADD_GUEST_ADDR)),
    (add('"proto":"tcp","host_port":1,"guest_addr":"fd00::64:","guest_port":1'), err(E.ERR_ADD_GUEST_ADDR)),
    (add('"proto":"tcp","host_port":1,"guest_addr":"::","guest_port":1'), err(E.ERR_ADD_GUEST_ADDR)),
    (add('"proto":"tcp","host_port":1,"guest_addr":"::1","guest_port":1'), err(E.ERR_ADD_GUEST_ADDR)),
    (add('"proto":"tcp","host_port":1,"guest_addr":"ff02::1","guest_port":1'), err(E.ERR_ADD_GUEST_ADDR)),
    (add('"proto":"tcp","host_port":1,"guest_addr":"::ffff:10.0.2.100","guest_port":1'), err(E.ERR_ADD_GUEST_ADDR)),
    (add('"proto":"tcp","host_port":1,"guest_addr":7,"guest_port":1'), err(E.ERR_ADD_GUEST_ADDR)),
    # then guest_port
    (add('"proto":"tcp","host_port":18093,"guest_addr":"0.0.0.0","guest_port":0'), err(E.ERR_ADD_GUEST_PORT)),
    (add('"proto":"tcp","host_port":18094,"guest_addr":"0.0.0.0","guest_port":-0.9'), err(E.ERR_ADD_GUEST_PORT)),
    (add('"proto":"tcp","host_port":18084,"guest_port":true'), err(E.ERR_ADD_GUEST_PORT)),
    (add('"proto":"tcp","host_port":18084'), err(E.ERR_ADD_GUEST_PORT)),
    (add('"proto":"tcp","host_port":18084,"guest_port":"80"'), err(E.ERR_ADD_GUEST_PORT)),
    # remove_hostfwd
    ('{"execute":"remove_hostfwd"}', err(E.ERR_REMOVE_ID)),
    ('{"execute":"remove_hostfwd","arguments":5}', err(E.ERR_REMOVE_ID)),
    ('{"execute":"remove_hostfwd","arguments":{"id":"1"}}', err(E.ERR_REMOVE_ID)),
    ('{"execute":"remove_hostfwd","arguments":{"id":true}}', err(E.ERR_REMOVE_ID)),
    ('{"execute":"remove_hostfwd","arguments":{"id":0}}', err(E.ERR_REMOVE_ID)),
    ('{"execute":"remove_hostfwd","arguments":{"id":-1}}', err(E.ERR_REMOVE_ID)),
    ('{"execute":"remove_hostfwd","arguments":{"id":9}}', err(E.ERR_REMOVE_ID)),
    ('{"execute":"remove_hostfwd","arguments":{"id":2147483648}}', err(E.ERR_REMOVE_ID)),
]


@pytest.mark.parametrize("request_text, reply", ERROR_CASES)
def test_error_replies_exactly(table, request_text, reply):
    result = handle_request(request_text.encode(), table)
    assert result.body == reply
    assert result.rc == api.RC_FAILED
    assert len(table) == 0, "a failed request changes nothing"


def test_ipv6_host_and_guest_addresses():
    opener = Opener()
    table = ForwardRegistry(PLAN, NullHost(), opener=opener, enable_ipv6=True)
    assert ask(table, add('"proto":"tcp","host_addr":"::1","host_port":8080,"guest_port":80')) == b'{"return":{"id":1}}'
    assert ask(table, add('"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"fd00::100","guest_port":53')) == (
        b'{"return":{"id":2}}'
    )
    assert ask(table, add('"proto":"tcp","host_port":8081,"guest_addr":"FD00:0::64","guest_port":80')) == b'{"return":{"id":3}}'
    assert opener.calls == [("tcp", "::1", 8080), ("udp", "::", 5353), ("tcp", "0.0.0.0", 8081)]
    entries = json.loads(ask(table, '{"execute":"list_hostfwd"}'))["return"]["entries"]
    assert [(e["host_addr"], e["guest_addr"]) for e in entries] == [
        ("::1", "10.0.2.100"),  # no guest_addr: the IPv4 guest N+100, whatever the host side
        ("::", "fd00::100"),
        ("0.0.0.0", "fd00::64"),
    ]
    assert [f.target_addr for f in table.entries()] == [
        PLAN.guest, ipaddress.IPv6Address("fd00::100").packed, ipaddress.IPv6Address("fd00::64").packed,
    ]  # fmt: skip


def test_ipv6_guest_address_needs_enable_ipv6(table):
    result = handle_request(add('"proto":"tcp","host_port":8080,"guest_addr":"fd00::64","guest_port":80').encode(), table)
    assert result.body == err(E.ERR_ADD_FAILED) and "--enable-ipv6" in result.detail
    assert ask(table, add('"proto":"tcp","host_addr":"::1","host_port":8080,"guest_port":80')) == b'{"return":{"id":1}}'


def test_every_documented_error_string_is_covered():
    used = {json.loads(reply)["error"]["desc"] for _, reply in ERROR_CASES}
    # The three not reachable through a bare table are tested below.
    assert used | {E.ERR_TOO_LARGE, E.ERR_ADD_FAILED, E.ERR_REMOVE_FAILED} == set(ERRORS)
    assert len(ERRORS) == 13


def test_error_strings_are_slirp4netns_texts():
    assert ERRORS == (
        "bad request: too large message",
        "bad request: cannot parse JSON",
        "bad request: json_object() failed",
        "bad request: no execute found",
        "bad request: unknown execute",
        "bad request: add_hostfwd: bad arguments.proto",
        "bad request: add_hostfwd: bad arguments.host_addr",
        "bad request: add_hostfwd: bad arguments.host_port",
        "bad request: add_hostfwd: bad arguments.guest_addr",
        "bad request: add_hostfwd: bad arguments.guest_port",
        "bad request: add_hostfwd: slirp_add_hostfwd failed",
        "bad request: remove_hostfwd: bad arguments.id",
        "bad request: remove_hostfwd: slirp_remove_hostfwd failed",
    )


# -- success paths -----------------------------------------------------------------------------

PODMAN_ADD = (
    b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1",'
    b'"host_port":8080,"guest_addr":"","guest_port":80}}\n'
)
ROOTLESSKIT_ADD = (
    b'{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"0.0.0.0",'
    b'"host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}}\n'
)


def test_add_list_remove(table):
    assert ask(table, PODMAN_ADD) == b'{"return":{"id":1}}'
    assert ask(table, ROOTLESSKIT_ADD) == b'{"return":{"id":2}}'
    assert ask(table, '{"execute":"list_hostfwd"}') == (
        b'{"return":{"entries":['
        b'{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},'
        b'{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}'
        b"]}}"
    )
    assert ask(table, '{"execute":"remove_hostfwd","arguments":{"id":1}}') == b'{"return":{}}'
    assert ask(table, '{"execute":"remove_hostfwd","arguments":{"id":1}}') == err(E.ERR_REMOVE_ID)
    assert ask(table, '{"execute":"list_hostfwd","arguments":{"id":2}}') == (
        b'{"return":{"entries":['
        b'{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}'
        b"]}}"
    )
    ask(table, '{"execute":"remove_hostfwd","arguments":{"id":2}}')
    assert ask(table, '{"execute":"list_hostfwd"}') == b'{"return":{"entries":[]}}'


def test_defaults_host_0000_guest_n100_and_explicit_0000_listed_as_given(table):
    assert ask(table, add('"proto":"tcp","host_port":8080,"guest_port":80')) == b'{"return":{"id":1}}'
    assert ask(table, add('"proto":"tcp","host_addr":"","host_port":8081,"guest_port":80')) == b'{"return":{"id":2}}'
    assert ask(table, add('"proto":"tcp","host_addr":null,"host_port":8082,"guest_addr":null,"guest_port":80'))
    assert ask(table, add('"proto":"tcp","host_port":8083,"guest_addr":"0.0.0.0","guest_port":80'))
    entries = [f.entry() for f in table.entries()]
    assert [(e["host_addr"], e["guest_addr"]) for e in entries] == [
        ("0.0.0.0", "10.0.2.100"),
        ("0.0.0.0", "10.0.2.100"),
        ("0.0.0.0", "10.0.2.100"),
        ("0.0.0.0", "0.0.0.0"),
    ]
    assert table.get(4).target_addr == bytes([10, 0, 2, 15])


def test_ids_are_never_reused_and_failures_consume_none(table):
    opener = table._open
    opener.busy.add(("tcp", "0.0.0.0", 8080))
    assert ask(table, add('"proto":"tcp","host_port":8080,"guest_port":80')) == err(E.ERR_ADD_FAILED)
    assert ask(table, add('"proto":"tcp","host_port":8081,"guest_port":80')) == b'{"return":{"id":1}}'
    assert ask(table, add('"proto":"tcp","host_port":"x","guest_port":80')) == err(E.ERR_ADD_HOST_PORT)
    assert ask(table, add('"proto":"tcp","host_port":8082,"guest_port":80')) == b'{"return":{"id":2}}'
    ask(table, '{"execute":"remove_hostfwd","arguments":{"id":2}}')
    ask(table, '{"execute":"remove_hostfwd","arguments":{"id":1}}')
    assert ask(table, add('"proto":"tcp","host_port":8082,"guest_port":80')) == b'{"return":{"id":3}}'


def test_add_failure_reply_and_log_detail(table):
    table._open.busy.add(("udp", "127.0.0.1", 53))
    result = handle_request(add('"proto":"udp","host_addr":"127.0.0.1","host_port":53,"guest_port":53').encode(), table)
    assert result.body == b'{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}'
    assert result.rc == -1 and "udp 127.0.0.1:53: Address already in use" in result.detail


def test_remove_failed_is_reported():
    class Stubborn:
        def remove(self, fid):
            raise RemoveFailed("listener busy")

    assert ask(Stubborn(), '{"execute":"remove_hostfwd","arguments":{"id":1}}') == err(E.ERR_REMOVE_FAILED)


def test_numbers_are_truncated_toward_zero(table):
    assert ask(table, add('"proto":"tcp","host_port":18083.7,"guest_port":80.9')) == b'{"return":{"id":1}}'
    assert ask(table, add('"proto":"tcp","host_port":-1.5,"guest_port":1E+2')) == b'{"return":{"id":2}}'
    assert [(f.host_port, f.guest_port) for f in table.entries()] == [(18083, 80), (-1, 100)]
    assert ask(table, '{"execute":"remove_hostfwd","arguments":{"id":1.9}}') == b'{"return":{}}'
    assert [f.id for f in table.entries()] == [2]


def test_out_of_range_ports_are_listed_as_given_and_bound_modulo_65536(table):
    assert ask(table, add('"proto":"tcp","host_port":-5,"guest_port":70000')) == b'{"return":{"id":1}}'
    assert ask(table, add('"proto":"udp","host_port":83536,"guest_port":-1')) == b'{"return":{"id":2}}'
    assert table._open.calls == [("tcp", "0.0.0.0", 65531), ("udp", "0.0.0.0", 18000)]
    listed = json.loads(ask(table, '{"execute":"list_hostfwd"}'))["return"]["entries"]
    assert [(e["host_port"], e["guest_port"]) for e in listed] == [(-5, 70000), (83536, -1)]
    assert [f.target_port for f in table.entries()] == [4464, 65535]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b'{"execute":"list_hostfwd"} garbage',
        b'{"execute":"list_hostfwd"}{"execute":"x"}',
        b'{"execute":"list_hostfwd"}\n',
        b'\t\r\n {"execute":"list_hostfwd"}',
        b'\xef\xbb\xbf{"execute":"list_hostfwd"}',  # UTF-8 BOM
        b'{"execute":"list_hostfwd"}\x00junk',
        b'{"execute":"list_hostfwd"} /* c */',
        b'{"execute":"list_hostfwd"}\xff\xfe',
        b'{"execute":"list_hostfwd","x":"\xff"}',  # invalid UTF-8 inside a string
        b'{"execute":"list_hostfwd","arguments":{"a":"\xc3\xa9"},"\xc3\xa9":1}',
        b'{"execute":"list_hostfwd","x":"\\ud83d\\ude00"}',  # a valid surrogate pair
        b'{"execute":"list_hostfwd","x":"\\u0000"}',  # NUL inside a value: fine
        b'{"execute":"list_hostfwd\\u0000anything"}',  # ...and the value ends there
        b'{"execute":"list_hostfwd","n":[' + b"[" * 1500 + b"]" * 1500 + b"]}",
    ],
)
def test_lenient_parsing(table, request_bytes):
    assert ask(table, request_bytes) == b'{"return":{"entries":[]}}'


def test_a_nul_escape_ends_a_string_value_as_in_c(table):
    body = ask(table, add('"proto":"tcp\\u0000x","host_addr":"127.0.0.1\\u0000junk","host_port":1,"guest_addr":"\\u0000","guest_port":2'))
    assert body == b'{"return":{"id":1}}'
    assert table.get(1).entry()["host_addr"] == "127.0.0.1"
    assert table.get(1).entry()["guest_addr"] == "10.0.2.100"  # "" after the cut: the default


def test_the_4096_byte_rule(table):
    request = b'{"execute":"list_hostfwd"}'
    at_limit = request + b" " * (API_READ_MAX - 1 - len(request))
    assert len(at_limit) == 4095 and ask(table, at_limit) == b'{"return":{"entries":[]}}'
    too_large = at_limit + b" "
    assert ask(table, too_large) == b'{"error":{"desc":"bad request: too large message"}}'
    # Checked before anything else: even valid JSON is refused.
    assert ask(table, ADD_8080_PADDED) == b'{"error":{"desc":"bad request: too large message"}}'
    assert len(table) == 0


ADD_8080_PADDED = (add('"proto":"tcp","host_port":8080,"guest_port":80') + " " * 4096).encode()[:4096]


def test_recursion_limit_is_restored(table):
    import sys

    before = sys.getrecursionlimit()
    ask(table, "[" * 2040 + "]" * 2040)
    ask(table, "[" * 4000)
    assert sys.getrecursionlimit() == before


def test_replies_are_compact_without_newline(table):
    ask(table, add('"proto":"tcp","host_port":8080,"guest_port":80'))
    for request in ('{"execute":"list_hostfwd"}', "", '{"execute":"add_hostfwd"}'):
        body = ask(table, request)
        assert not body.endswith(b"\n") and b'": ' not in body and b", " not in body
        assert json.dumps(json.loads(body), separators=(",", ":")).encode() == body


# -- fuzz ----------------------------------------------------------------------------------------

ERROR_SET = set(ERRORS)


def check_documented(body: bytes, table) -> None:
    """``body`` is one of the replies §6 documents (with the list wrapper)."""
    assert isinstance(body, bytes) and not body.endswith(b"\n")
    value = json.loads(body)
    assert json.dumps(value, separators=(",", ":")).encode() == body
    assert isinstance(value, dict) and len(value) == 1
    if "error" in value:
        assert list(value["error"]) == ["desc"] and value["error"]["desc"] in ERROR_SET
        return
    ret = value["return"]
    if ret == {}:
        return
    if list(ret) == ["id"]:
        assert isinstance(ret["id"], int) and ret["id"] >= 1
        return
    assert list(ret) == ["entries"]
    for e in ret["entries"]:
        assert list(e) == ["id", "proto", "host_addr", "host_port", "guest_addr", "guest_port"]
        assert e["proto"] in ("tcp", "udp")
        ipaddress.IPv4Address(e["host_addr"])
        ipaddress.IPv4Address(e["guest_addr"])
        assert all(isinstance(e[k], int) for k in ("id", "host_port", "guest_port"))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["tcp", "udp", "", "0.0.0.0", "127.0.0.1", "10.0.2.15", "::1", "add_hostfwd"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
PORTS = st.one_of(
    st.integers(min_value=-70000, max_value=140000), st.floats(-1e6, 1e6), st.integers(1, 65535), json_values
)
ADDRS = st.one_of(
    st.sampled_from(["", "0.0.0.0", "127.0.0.1", "10.0.2.15", "1.2.3", "::1", "127.0.0.01", None]), json_values
)
PROTO = st.one_of(st.sampled_from(["tcp", "udp"]), st.sampled_from(["TCP", "", "sctp"]), json_values)
add_arguments = st.one_of(
    st.fixed_dictionaries(
        {"proto": PROTO},
        optional={"host_addr": ADDRS, "host_port": PORTS, "guest_addr": ADDRS, "guest_port": PORTS},
    ),
    st.fixed_dictionaries(  # mostly well-formed: reaches the later checks and the bind
        {"proto": st.sampled_from(["tcp", "udp"]), "host_port": PORTS, "guest_port": PORTS},
        optional={"host_addr": ADDRS, "guest_addr": ADDRS},
    ),
)
near_add = st.fixed_dictionaries(
    {"execute": st.just("add_hostfwd")},
    optional={"arguments": st.one_of(add_arguments, add_arguments, json_values)},
)
near_remove = st.fixed_dictionaries(
    {"execute": st.just("remove_hostfwd")},
    optional={"arguments": st.one_of(st.fixed_dictionaries({}, optional={"id": PORTS}), json_values)},
)
listing = st.fixed_dictionaries({"execute": st.just("list_hostfwd")}, optional={"arguments": json_values})
generic = st.fixed_dictionaries({"execute": json_values}, optional={"arguments": json_values})
requests = st.one_of(near_add, near_add, near_remove, listing, generic)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_fuzz_arbitrary_bytes(data):
    table = ForwardRegistry(PLAN, NullHost(), opener=Opener())
    check_documented(handle_request(data, table).body, table)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(requests, json_values), min_size=1, max_size=8), st.sampled_from(["", "\n", " x", "}"]))
def test_fuzz_json_requests(values, tail):
    table = ForwardRegistry(PLAN, NullHost(), opener=Opener())
    seen_ids = set()
    for value in values:
        raw = json.dumps(value).encode() + tail.encode()
        body = handle_request(raw, table).body
        check_documented(body, table)
        reply = json.loads(body)
        if isinstance(reply.get("return"), dict) and "id" in reply["return"]:
            assert reply["return"]["id"] not in seen_ids, "ids are never reused"
            seen_ids.add(reply["return"]["id"])


@settings(max_examples=300, deadline=None)
@given(requests, st.binary(max_size=50))
def test_fuzz_mutated_requests(value, noise):
    table = ForwardRegistry(PLAN, NullHost(), opener=Opener())
    raw = bytearray(json.dumps(value).encode())
    for i, b in enumerate(noise):
        if raw:
            raw[(i * 7919 + b) % len(raw)] = b
    check_documented(handle_request(bytes(raw), table).body, table)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["tcp", "udp"]),
            st.one_of(st.integers(-70000, 140000), st.floats(-70000, 140000)),
            st.one_of(st.integers(-70000, 140000), st.floats(-70000, 140000)),
        ),
        st.tuples(st.just("remove"), st.one_of(st.integers(-2, 12), st.floats(-2, 12))),
        st.tuples(st.just("list")),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_fuzz_against_a_model(sequence):
    """Well-formed operations with arbitrary numbers: the table matches a simple model."""
    table = ForwardRegistry(PLAN, NullHost(), opener=Opener())
    model: dict[int, tuple] = {}
    next_id = 1
    bound: set[tuple] = set()
    for op in sequence:
        if op[0] == "add":
            _, proto, hp, gp = op
            request = {"execute": "add_hostfwd", "arguments": {"proto": proto, "host_port": hp, "guest_port": gp}}
            body = ask(table, json.dumps(request))
            hp_i, gp_i = int(hp), int(gp)
            key = (proto, hp_i % 65536)
            if hp_i == 0:
                assert body == err(E.ERR_ADD_HOST_PORT)
            elif gp_i == 0:
                assert body == err(E.ERR_ADD_GUEST_PORT)
            elif key in bound:
                assert body == err(E.ERR_ADD_FAILED)
            else:
                assert body == b'{"return":{"id":%d}}' % next_id
                model[next_id] = (proto, hp_i, gp_i)
                bound.add(key)
                table._open.busy.add((proto, "0.0.0.0", hp_i % 65536))  # bound now: a second bind fails
                next_id += 1
        elif op[0] == "remove":
            fid = int(op[1])
            body = ask(table, json.dumps({"execute": "remove_hostfwd", "arguments": {"id": op[1]}}))
            if fid in model:
                assert body == b'{"return":{}}'
                proto, hp_i, _ = model.pop(fid)
                bound.discard((proto, hp_i % 65536))
                table._open.busy.discard((proto, "0.0.0.0", hp_i % 65536))
            else:
                assert body == err(E.ERR_REMOVE_ID)
        else:
            entries = json.loads(ask(table, '{"execute":"list_hostfwd"}'))["return"]["entries"]
            assert [(e["id"], e["proto"], e["host_port"], e["guest_port"]) for e in entries] == [
                (fid, *v) for fid, v in model.items()
            ]


# -- the socket glue, driven by hand ------------------------------------------------------------


class Timer:
    def __init__(self, delay, callback, args):
        self.delay, self.callback, self.args = delay, callback, args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def fire(self):
        assert not self.cancelled
        self.callback(*self.args)


class Kinds:
    API_LISTENER = "listener"
    API_CONN = "conn"
    API_REPLY = "reply"


class LoopHost:
    """Stands in for the Driver: records watched fds and timers."""

    def __init__(self):
        self.readers = {}
        self.writers = {}
        self.timers = []

    def watch(self, fd, kind, *args):
        assert fd not in self.readers
        self.readers[fd] = (kind, args)

    def unwatch(self, fd):
        del self.readers[fd]

    def watch_writable(self, fd, kind, *args):
        assert fd not in self.writers
        self.writers[fd] = (kind, args)

    def unwatch_writable(self, fd):
        del self.writers[fd]

    def call_later(self, delay, callback, *args):
        t = Timer(delay, callback, args)
        self.timers.append(t)
        return t

    def live_timers(self):
        return [t for t in self.timers if not t.cancelled]

    def kinds(self):
        return sorted(k for k, _ in self.readers.values())


@pytest.fixture
def server(tmp_path, table):
    host = LoopHost()
    srv = ApiServer(str(tmp_path / "api.sock"), table, host, Kinds)
    srv.open()
    yield srv, host
    srv.close()


def client(srv) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect(srv.path)
    return c


def read_all(c) -> bytes:
    out = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_open_replaces_an_existing_file_and_close_unlinks_it(tmp_path, table):
    path = tmp_path / "api.sock"
    path.write_text("stale")
    srv = ApiServer(str(path), table, LoopHost(), Kinds)
    srv.open()
    assert path.is_socket()
    srv.close()
    assert not path.exists()


def test_close_leaves_a_socket_file_that_is_no_longer_ours(tmp_path, table):
    path = tmp_path / "api.sock"
    srv = ApiServer(str(path), table, LoopHost(), Kinds)
    srv.open()
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))  # someone else's socket now
    try:
        srv.close()
        assert path.is_socket()
    finally:
        other.close()


def test_open_failure_leaves_no_fd(tmp_path, table):
    before = len(os.listdir("/proc/self/fd"))
    srv = ApiServer(str(tmp_path / "missing-dir" / "api.sock"), table, LoopHost(), Kinds)
    with pytest.raises(OSError):
        srv.open()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "sub").mkdir()
    srv = ApiServer(str(tmp_path / "dir" / "sub"), table, LoopHost(), Kinds)  # a directory is in the way
    with pytest.raises(OSError):
        srv.open()
    assert len(os.listdir("/proc/self/fd")) == before


def test_one_request_one_reply_then_closed(server):
    srv, host = server
    assert host.kinds() == ["listener"]
    c = client(srv)
    srv.accept_handler()
    assert host.kinds() == ["conn", "listener"]
    c.sendall(PODMAN_ADD)
    (conn,) = srv.conns.values()
    srv.request_handler(conn)
    assert read_all(c) == b'{"return":{"id":1}}'
    assert host.kinds() == ["listener"] and srv.conns == {} and host.live_timers() == []
    c.close()


def test_spurious_wake_up_keeps_waiting(server):
    srv, host = server
    c = client(srv)
    srv.accept_handler()
    (conn,) = srv.conns.values()
    srv.request_handler(conn)  # nothing to read yet
    assert conn.fd in host.readers
    c.sendall(b'{"execute":"list_hostfwd"}')
    srv.request_handler(conn)
    assert read_all(c) == b'{"return":{"entries":[]}}'
    c.close()


def test_silent_client_is_answered_as_an_empty_request(server):
    srv, host = server
    c = client(srv)
    srv.accept_handler()
    (timer,) = host.live_timers()
    assert timer.delay == API_READ_TIMEOUT_S
    timer.fire()
    assert read_all(c) == b'{"error":{"desc":"bad request: cannot parse JSON"}}'
    assert srv.conns == {}
    c.close()


def test_client_that_hangs_up_is_answered_as_empty_and_nothing_breaks(server):
    srv, host = server
    c = client(srv)
    srv.accept_handler()
    c.close()
    (conn,) = srv.conns.values()
    srv.request_handler(conn)  # EOF: empty request; the reply goes nowhere
    assert srv.conns == {} and host.kinds() == ["listener"]


def test_at_most_api_max_connections_then_the_listener_waits(server):
    srv, host = server
    clients = [client(srv) for _ in range(API_MAX_CONNECTIONS + 3)]
    try:
        srv.accept_handler()
        assert len(srv.conns) == API_MAX_CONNECTIONS
        assert "listener" not in host.kinds(), "busy: not accepting"
        first = next(iter(srv.conns.values()))
        clients[0].sendall(b'{"execute":"list_hostfwd"}')
        srv.request_handler(first)
        assert read_all(clients[0]) == b'{"return":{"entries":[]}}'
        assert "listener" in host.kinds(), "a slot is free: accepting again"
        srv.accept_handler()
        assert len(srv.conns) == API_MAX_CONNECTIONS  # one more taken from the backlog
    finally:
        for c in clients:
            c.close()


def test_long_reply_is_written_as_the_client_reads(tmp_path):
    table = ForwardRegistry(PLAN, NullHost(), opener=Opener())
    for port in range(1, 4001):
        table.add(api.ForwardSpec("tcp", ipaddress.IPv4Address("0.0.0.0"), port, None, port))
    host = LoopHost()
    srv = ApiServer(str(tmp_path / "api.sock"), table, host, Kinds)
    srv.open()
    c = client(srv)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        srv.accept_handler()
        (conn,) = srv.conns.values()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        c.sendall(b'{"execute":"list_hostfwd"}')
        srv.request_handler(conn)
        assert conn.fd in host.writers, "the reply did not fit: wait for the client"
        got = b""
        while conn.fd in host.writers:
            got += c.recv(65536)
            srv.reply_handler(conn)
        got += read_all(c)
        entries = json.loads(got)["return"]["entries"]
        assert len(entries) == 4000 and entries[-1]["host_port"] == 4000
        assert srv.conns == {}
    finally:
        c.close()
        srv.close()


def test_a_reader_that_never_reads_is_dropped_after_the_write_deadline(tmp_path):
    table = ForwardRegistry(PLAN, NullHost(), opener=Opener())
    for port in range(1, 4001):
        table.add(api.ForwardSpec("tcp", ipaddress.IPv4Address("0.0.0.0"), port, None, port))
    host = LoopHost()
    srv = ApiServer(str(tmp_path / "api.sock"), table, host, Kinds)
    srv.open()
    c = client(srv)
    try:
        srv.accept_handler()
        (conn,) = srv.conns.values()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        c.sendall(b'{"execute":"list_hostfwd"}')
        srv.request_handler(conn)
        (timer,) = host.live_timers()
        assert timer.delay == api.API_WRITE_TIMEOUT_S
        timer.fire()
        assert srv.conns == {} and host.writers == {}
    finally:
        c.close()
        srv.close()


def test_log_lines(tmp_path, table):
    import io

    log = io.BytesIO()
    host = LoopHost()
    srv = ApiServer(str(tmp_path / "api.sock"), table, host, Kinds, log=log)
    srv.open()
    try:
        for request in (b'{"execute":"list_hostfwd"}\n', b"nope", b"x" * 5000):
            c = client(srv)
            c.sendall(request)
            srv.accept_handler()
            (conn,) = srv.conns.values()
            srv.request_handler(conn)
            c.close()
    finally:
        srv.close()
    assert log.getvalue() == (
        b"apifd event\n"
        b'api_handler: got request: {"execute":"list_hostfwd"}\n\n'
        b"apifd event\n"
        b"api_handler: got request: nope\n"
        b"api_handler: rc=-1\n"
        b"apifd event\n"
        b"api_handler: rc=-1\n"  # too large: not echoed
    )


def test_close_ends_open_connections(server):
    srv, host = server
    c = client(srv)
    srv.accept_handler()
    srv.close()
    assert srv.conns == {} and host.readers == {} and host.live_timers() == []
    assert c.recv(10) == b""
    c.close()


def test_fd_exhaustion_on_accept_pauses_the_listener(server):
    srv, host = server
    real = srv.sock

    class NoFds:
        calls = 0

        def accept(self):
            NoFds.calls += 1
            raise OSError(errno.EMFILE, "Too many open files")

        def fileno(self):
            return real.fileno()

    srv.sock = NoFds()
    c = client(srv)
    try:
        srv.accept_handler()
        assert NoFds.calls == 1 and "listener" not in host.kinds(), "not watched while out of fds"
        (timer,) = host.live_timers()
        assert timer.delay == api.API_ACCEPT_PAUSE_S
        srv.sock = real
        timer.fire()
        assert "listener" in host.kinds()
        srv.accept_handler()
        assert len(srv.conns) == 1
    finally:
        srv.sock = real
        c.close()
