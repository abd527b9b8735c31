"""``slirpnet ctl``: manage the port forwards of a running slirpnet (or slirp4netns) over its API socket.

    slirpnet ctl --api-socket PATH add tcp|udp [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT
    slirpnet ctl --api-socket PATH list
    slirpnet ctl --api-socket PATH remove ID

Each command is one request on one connection (compat spec §6): the JSON
text plus ``\\n``, then shutdown(SHUT_WR), then the reply is read to EOF.
Output is readable by default; ``--json`` prints the server's reply as it
came.  Exit status: 0 on success; 1 if the server answered with an error or
could not be reached (the message says which); 2 for a bad command line.

Parsing, request building and rendering are pure functions; only
:func:`call_api` touches a socket.  Works with slirp4netns too: its bare
``{"entries":[...]}`` list reply is understood as well as the
``{"return":{"entries":[...]}}`` slirpnet sends.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass

from .cli import Exit, emit
from .gnu_getopt import GetoptError, LongOption, getopt_long
from .portfwd import PROTOS, MappingError, parse_port_mapping

CTL_SHORT = "a:h"
CTL_LONG = [
    LongOption("api-socket", True, "a"),
    LongOption("json", False, "json"),
    LongOption("timeout", True, "timeout"),
    LongOption("help", False, "h"),
]

CTL_USAGE = """\
Usage: {prog} ctl --api-socket=PATH [--json] COMMAND [ARG]...
Manage the port forwards of a running slirpnet (or slirp4netns) through its API socket.

Commands:
  add tcp|udp [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT
                         forward HOSTADDR:HOSTPORT on the host (HOSTADDR default
                         0.0.0.0) to GUESTADDR:GUESTPORT in the namespace
                         (GUESTADDR default: the guest address N+100); IPv6
                         addresses go in brackets: [::1]:8080:80
  list                   show the forwards
  remove ID              remove a forward (its listener closes; open
                         connections stay)

Options:
  -a, --api-socket=PATH  the API socket (slirpnet/slirp4netns --api-socket)
  --json                 print the server's JSON reply as it is
  --timeout=SECONDS      give up waiting for the server (default 10)
  -h, --help             show this help and exit

Exit status: 0 ok; 1 the server refused the request or could not be reached;
2 bad command line.
"""

DEFAULT_TIMEOUT_S = 10.0
MAX_REPLY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CtlCommand:
    socket_path: str
    action: str  # add | list | remove
    json_output: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    proto: str = ""
    mapping_text: str = ""
    arguments: dict | None = None  # add: the add_hostfwd arguments; remove: {"id": n}


def parse_ctl_args(argv: list[str], prog: str) -> CtlCommand:
    """The command line → a :class:`CtlCommand`; raises :class:`Exit` (2 for errors, 0 for -h)."""
    usage = CTL_USAGE.format(prog=prog)

    def bad(message: str) -> Exit:
        return Exit(2, stderr=f"{prog} ctl: {message}\nTry '{prog} ctl --help'.\n")

    try:
        options, words = getopt_long(argv, CTL_SHORT, CTL_LONG)
    except GetoptError as err:
        raise bad(str(err)) from None
    path, json_output, timeout_s = None, False, DEFAULT_TIMEOUT_S
    for key, value in options:
        if key == "h":
            raise Exit(0, stdout=usage)
        if key == "a":
            path = value
        elif key == "json":
            json_output = True
        elif key == "timeout":
            try:
                timeout_s = float(value)
            except ValueError:
                timeout_s = -1.0
            if not 0 < timeout_s < 1e6:
                raise bad(f"bad --timeout {value!r} (seconds, > 0)")
    if not words:
        raise bad("no command given (add, list or remove)")
    if path is None:
        raise bad("--api-socket=PATH is required")
    if not path:
        raise bad("the API socket path is empty")
    action, args = words[0], words[1:]
    common = dict(socket_path=path, json_output=json_output, timeout_s=timeout_s)
    if action == "list":
        if args:
            raise bad("list takes no arguments")
        return CtlCommand(action="list", **common)
    if action == "remove":
        if len(args) != 1:
            raise bad("usage: remove ID")
        text = args[0]
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 2**31 - 1:
            raise bad(f"bad forward id {text!r} (a positive integer, as `list` shows)")
        return CtlCommand(action="remove", arguments={"id": int(text)}, **common)
    if action == "add":
        if len(args) != 2:
            raise bad("usage: add tcp|udp [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT")
        proto, text = args
        if proto not in PROTOS:
            raise bad(f"bad protocol {proto!r} (tcp or udp)")
        try:
            m = parse_port_mapping(text)
        except MappingError as err:
            raise bad(f"bad mapping {text!r}: {err}") from None
        arguments: dict = {"proto": proto}
        if m.host_addr is not None:
            arguments["host_addr"] = str(m.host_addr)
        arguments["host_port"] = m.host_port
        if m.guest_addr is not None:
            arguments["guest_addr"] = str(m.guest_addr)
        arguments["guest_port"] = m.guest_port
        return CtlCommand(action="add", proto=proto, mapping_text=text, arguments=arguments, **common)
    raise bad(f"unknown command {action!r} (add, list or remove)")


def build_request(cmd: CtlCommand) -> bytes:
    """The request as Podman and RootlessKit send it: compact JSON and a newline."""
    request: dict = {"execute": f"{cmd.action}_hostfwd"}
    if cmd.arguments is not None:
        request["arguments"] = cmd.arguments
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


class ApiUnreachable(Exception):
    pass


def call_api(path: str, request: bytes, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """One request, one reply (read to EOF).  Raises :class:`ApiUnreachable` with a readable reason."""
    deadline = time.monotonic() + timeout_s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ApiUnreachable(f"no API socket at {path} (is slirpnet running with --api-socket?)") from None
        except ConnectionRefusedError:
            raise ApiUnreachable(f"connection to {path} refused (nothing is serving this API socket)") from None
        except socket.timeout:
            raise ApiUnreachable(f"timed out connecting to {path}") from None
        except OSError as err:
            raise ApiUnreachable(f"cannot connect to {path}: {err.strerror or err}") from None
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError as err:
            raise ApiUnreachable(f"cannot send the request to {path}: {err.strerror or err}") from None
        reply = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiUnreachable(f"timed out waiting for the reply from {path}")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise ApiUnreachable(f"timed out waiting for the reply from {path}") from None
            except ConnectionResetError:
                break  # the server closed with our request unread (e.g. too large): keep what came
            except OSError as err:
                raise ApiUnreachable(f"cannot read the reply from {path}: {err.strerror or err}") from None
            if not chunk:
                break
            reply += chunk
            if len(reply) > MAX_REPLY_BYTES:
                raise ApiUnreachable(f"the reply from {path} is larger than {MAX_REPLY_BYTES} bytes")
        if not reply:
            raise ApiUnreachable(f"{path} closed the connection without a reply")
        return bytes(reply)
    finally:
        sock.close()


def render(cmd: CtlCommand, reply: bytes) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) for the server's ``reply``."""
    if cmd.json_output:
        text = reply.decode("utf-8", errors="replace")
        status = 0
        try:
            value = json.loads(text)
            if not isinstance(value, dict) or "error" in value:
                status = 1
        except ValueError:
            status = 1
        return status, text + "\n", ""
    try:
        value = json.loads(reply)
    except ValueError:
        return 1, "", f"unexpected reply from the server: {reply[:200]!r}\n"
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        desc = value["error"].get("desc", "")
        return 1, "", f"the server refused the request: {desc}\n"
    if not isinstance(value, dict):
        return 1, "", f"unexpected reply from the server: {reply[:200]!r}\n"
    ret = value.get("return", value)  # slirp4netns lists without the "return" wrapper
    if cmd.action == "add":
        fid = ret.get("id") if isinstance(ret, dict) else None
        if not isinstance(fid, int):
            return 1, "", f"unexpected reply from the server: {reply[:200]!r}\n"
        return 0, f"added forward {fid}: {cmd.proto} {cmd.mapping_text} ({_describe_add(cmd.arguments)})\n", ""
    if cmd.action == "remove":
        return 0, f"removed forward {cmd.arguments['id']}\n", ""
    entries = ret.get("entries") if isinstance(ret, dict) else None
    if not isinstance(entries, list):
        return 1, "", f"unexpected reply from the server: {reply[:200]!r}\n"
    return 0, format_table(entries), ""


def _describe_add(arguments: dict) -> str:
    host = _endpoint(arguments.get("host_addr", "0.0.0.0"), arguments["host_port"])
    guest_addr = arguments.get("guest_addr")
    guest = _endpoint(guest_addr, arguments["guest_port"]) if guest_addr else f"guest port {arguments['guest_port']}"
    return f"{host} -> {guest}"


def _endpoint(addr, port) -> str:
    addr = str(addr)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def format_table(entries: list) -> str:
    """The forwards as an aligned table (``no forwards`` when empty)."""
    if not entries:
        return "no forwards\n"
    rows = [("ID", "PROTO", "HOST", "GUEST")]
    for e in entries:
        if not isinstance(e, dict):
            continue
        rows.append(
            (
                str(e.get("id", "?")),
                str(e.get("proto", "?")),
                _endpoint(e.get("host_addr", "?"), e.get("host_port", "?")),
                _endpoint(e.get("guest_addr", "?"), e.get("guest_port", "?")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}\n" for row in rows
    )


def ctl_main(argv: list[str], prog: str) -> int:
    try:
        cmd = parse_ctl_args(argv, prog)
    except Exit as done:
        emit(done)
        return done.status
    try:
        reply = call_api(cmd.socket_path, build_request(cmd), cmd.timeout_s)
    except ApiUnreachable as err:
        sys.stderr.write(f"{prog} ctl: {err}\n")
        return 1
    status, out, err = render(cmd, reply)
    sys.stdout.write(out)
    sys.stdout.flush()
    if err:
        sys.stderr.write(f"{prog} ctl: {err}")
    return status
