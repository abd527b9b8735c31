"""``slirpnet ctl`` (slirp/ctl.py): argument parsing, the requests it sends, how replies
are shown; ``slirpnet run -p`` parsing.  The socket client is tested against a
real slirpnet in tests/integration/test_api.py."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from slirp.cli import Exit
from slirp.ctl import ApiUnreachable, build_request, call_api, ctl_main, format_table, parse_ctl_args, render
from slirp.run import parse_run_args

PROG = "slirpnet"
S = ["--api-socket", "/run/x.sock"]


def request_of(argv) -> dict:
    return json.loads(build_request(parse_ctl_args(argv, PROG)))


@pytest.mark.parametrize(
    "argv, want",
    [
        (S + ["list"], {"execute": "list_hostfwd"}),
        (["list", "--api-socket=/run/x.sock"], {"execute": "list_hostfwd"}),  # options anywhere
        (["-a", "/run/x.sock", "list"], {"execute": "list_hostfwd"}),
        (["--api", "/run/x.sock", "list"], {"execute": "list_hostfwd"}),  # unambiguous prefix
        (S + ["remove", "7"], {"execute": "remove_hostfwd", "arguments": {"id": 7}}),
        (
            S + ["add", "tcp", "8080:80"],
            {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 8080, "guest_port": 80}},
        ),
        (
            S + ["add", "udp", "127.0.0.1:5353:53"],
            {
                "execute": "add_hostfwd",
                "arguments": {"proto": "udp", "host_addr": "127.0.0.1", "host_port": 5353, "guest_port": 53},
            },
        ),
        (
            S + ["add", "tcp", "8080:10.0.2.15:80"],
            {
                "execute": "add_hostfwd",
                "arguments": {"proto": "tcp", "host_port": 8080, "guest_addr": "10.0.2.15", "guest_port": 80},
            },
        ),
        (
            S + ["add", "tcp", "0.0.0.0:8080:10.0.2.15:80"],
            {
                "execute": "add_hostfwd",
                "arguments": {
                    "proto": "tcp",
                    "host_addr": "0.0.0.0",
                    "host_port": 8080,
                    "guest_addr": "10.0.2.15",
                    "guest_port": 80,
                },
            },
        ),
        (
            S + ["add", "tcp", "[::1]:8080:80"],  # parsed; the server decides
            {
                "execute": "add_hostfwd",
                "arguments": {"proto": "tcp", "host_addr": "::1", "host_port": 8080, "guest_port": 80},
            },
        ),
    ],
)
def test_requests(argv, want):
    assert request_of(argv) == want


def test_request_bytes_are_compact_json_and_a_newline_like_podman():
    raw = build_request(parse_ctl_args(S + ["add", "tcp", "127.0.0.1:8080:80"], PROG))
    assert raw == b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_port":80}}\n'


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no command given"),
        (["list"], "--api-socket=PATH is required"),
        (["--api-socket", "", "list"], "path is empty"),
        (S, "no command given"),
        (S + ["frobnicate"], "unknown command 'frobnicate'"),
        (S + ["list", "extra"], "list takes no arguments"),
        (S + ["remove"], "usage: remove ID"),
        (S + ["remove", "1", "2"], "usage: remove ID"),
        (S + ["remove", "x"], "bad forward id 'x'"),
        (S + ["remove", "0"], "bad forward id '0'"),
        (S + ["remove", "--", "-1"], "bad forward id '-1'"),
        (S + ["remove", "99999999999"], "bad forward id"),
        (S + ["add"], "usage: add tcp|udp"),
        (S + ["add", "tcp"], "usage: add tcp|udp"),
        (S + ["add", "sctp", "80:80"], "bad protocol 'sctp'"),
        (S + ["add", "TCP", "80:80"], "bad protocol 'TCP'"),
        (S + ["add", "tcp", "80"], "bad mapping '80'"),
        (S + ["add", "tcp", "0:80"], "bad host port '0'"),
        (S + ["add", "tcp", "80:70000"], "bad guest port '70000'"),
        (S + ["add", "tcp", "127.1:80:80"], "bad host address '127.1'"),
        (S + ["add", "tcp", "::1:80:80"], "bad mapping"),
        (S + ["--bogus", "list"], "unrecognized option '--bogus'"),
        (["-a"], "option requires an argument -- 'a'"),
        (S + ["--timeout", "0", "list"], "bad --timeout"),
        (S + ["--timeout", "x", "list"], "bad --timeout"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(argv, message):
    with pytest.raises(Exit) as info:
        parse_ctl_args(argv, PROG)
    assert info.value.status == 2
    assert message in info.value.stderr and info.value.stderr.startswith("slirpnet ctl: ")
    assert "--help" in info.value.stderr


def test_help():
    with pytest.raises(Exit) as info:
        parse_ctl_args(["-h"], PROG)
    assert info.value.status == 0
    for word in ("add tcp|udp", "list", "remove ID", "--api-socket", "--json", "[::1]:8080:80"):
        assert word in info.value.stdout


def cmd(*words, json_output=False):
    argv = S + (["--json"] if json_output else []) + list(words)
    return parse_ctl_args(argv, PROG)


LISTED = (
    b'{"return":{"entries":['
    b'{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},'
    b'{"id":12,"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_addr":"10.0.2.15","guest_port":53}]}}'
)


def test_render_list_table():
    status, out, err = render(cmd("list"), LISTED)
    assert status == 0 and err == ""
    assert out == (
        "ID  PROTO  HOST            GUEST\n"
        "1   tcp    127.0.0.1:8080  10.0.2.100:80\n"
        "12  udp    0.0.0.0:5353    10.0.2.15:53\n"
    )


def test_render_list_of_slirp4netns_without_return_wrapper():
    bare = LISTED[len(b'{"return":') : -1]
    assert render(cmd("list"), bare)[1] == render(cmd("list"), LISTED)[1]


def test_render_empty_list_ipv6_and_odd_entries():
    assert render(cmd("list"), b'{"return":{"entries":[]}}') == (0, "no forwards\n", "")
    out = format_table([{"id": 3, "proto": "tcp", "host_addr": "::1", "host_port": 80, "guest_addr": "fd00::64", "guest_port": 8}, 5])
    assert "[::1]:80" in out and "[fd00::64]:8" in out


def test_render_add_and_remove():
    assert render(cmd("add", "tcp", "127.0.0.1:8080:80"), b'{"return":{"id":4}}') == (
        0,
        "added forward 4: tcp 127.0.0.1:8080:80 (127.0.0.1:8080 -> guest port 80)\n",
        "",
    )
    assert render(cmd("add", "udp", "53:10.0.2.15:53"), b'{"return":{"id":5}}')[1] == (
        "added forward 5: udp 53:10.0.2.15:53 (0.0.0.0:53 -> 10.0.2.15:53)\n"
    )
    assert render(cmd("remove", "4"), b'{"return":{}}') == (0, "removed forward 4\n", "")


def test_render_server_errors_exit_1():
    reply = b'{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}'
    status, out, err = render(cmd("add", "tcp", "80:80"), reply)
    assert status == 1 and out == ""
    assert err == "the server refused the request: bad request: add_hostfwd: slirp_add_hostfwd failed\n"
    for junk in (b"", b"nope", b"[1]", b'{"return":{"id":"x"}}', b'{"return":5}'):
        assert render(cmd("add", "tcp", "80:80"), junk)[0] == 1
    assert render(cmd("list"), b'{"return":{}}')[0] == 1


def test_render_json_prints_the_reply_as_it_came():
    assert render(cmd("list", json_output=True), LISTED) == (0, LISTED.decode() + "\n", "")
    reply = b'{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}'
    assert render(cmd("remove", "3", json_output=True), reply) == (1, reply.decode() + "\n", "")


# -- the client against a tiny in-process server ----------------------------------------------


def serve_once(path, reply: bytes, received: list, close_early=False):
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        if not close_early:
            received.append(conn.recv(4096))
        conn.sendall(reply)
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_call_api_sends_once_and_reads_to_eof(tmp_path):
    path = str(tmp_path / "s")
    got = []
    t = serve_once(path, b'{"return":{}}', got)
    assert call_api(path, b'{"execute":"list_hostfwd"}\n', 5) == b'{"return":{}}'
    t.join(5)
    assert got == [b'{"execute":"list_hostfwd"}\n']


def test_call_api_errors_are_readable(tmp_path):
    with pytest.raises(ApiUnreachable, match="no API socket at .*is slirpnet running"):
        call_api(str(tmp_path / "missing"), b"{}", 2)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale"))
    stale.close()  # a socket file with nobody behind it
    with pytest.raises(ApiUnreachable, match="refused"):
        call_api(str(tmp_path / "stale"), b"{}", 2)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ApiUnreachable, match="refused|cannot connect"):
        call_api(str(tmp_path / "plain"), b"{}", 2)
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(tmp_path / "silent"))
    silent.listen(1)
    try:
        with pytest.raises(ApiUnreachable, match="timed out"):
            call_api(str(tmp_path / "silent"), b"{}", 0.3)
    finally:
        silent.close()


def test_ctl_main_reports_unreachable_socket(tmp_path, capsys):
    assert ctl_main(["--api-socket", str(tmp_path / "nope"), "list"], PROG) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("slirpnet ctl: no API socket at ")


# -- slirpnet run -p ------------------------------------------------------------------------------


def test_run_publish_is_repeatable_and_kept():
    cfg, command = parse_run_args(["-p", "8080:80", "--publish=127.0.0.1:5353:53/udp", "--", "true"], PROG)
    assert cfg.publish == ["8080:80", "127.0.0.1:5353:53/udp"] and command == ["true"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("80", "bad --publish '80'"),
        ("0:80", "bad host port"),
        ("8080:80/sctp", "unknown protocol 'sctp'"),
        ("x:8080:80", "bad host address"),
        ("8080:10.0.2.15:80", "expected [HOSTADDR:]HOSTPORT:GUESTPORT"),
        ("[fe80::1%eth0]:8080:80", "bad host address"),
    ],
)
def test_run_bad_publish_exits_2(spec, message):
    with pytest.raises(Exit) as info:
        parse_run_args(["-p", spec, "--", "true"], PROG)
    assert info.value.status == 2 and message in info.value.stderr
