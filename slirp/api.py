"""The slirp4netns JSON API (compat spec §6): a pure request handler and thin socket glue.

Protocol: a UNIX stream socket at PATH; one request per connection; the
server does ONE read of at most :data:`API_READ_MAX` bytes, answers with
compact JSON (no trailing newline), then shutdown(SHUT_RDWR) and close.

    {"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1",
     "host_port":8080,"guest_addr":"","guest_port":80}}  ->  {"return":{"id":1}}
    {"execute":"list_hostfwd"}  ->  {"return":{"entries":[{"id":1,"proto":"tcp",...}]}}
    {"execute":"remove_hostfwd","arguments":{"id":1}}  ->  {"return":{}}
    anything wrong  ->  {"error":{"desc":"bad request: ..."}}

:func:`handle_request` is the whole protocol minus the socket: bytes in,
exact reply bytes out, with the effect applied to a forward table (add, list,
remove on :class:`slirp.portfwd.ForwardRegistry` or anything shaped like it).
It never raises on client input.  Rules, in the order they are checked:

1. a read of exactly 4096 bytes: ``too large message``;
2. the text up to the first NUL, after whitespace (and a UTF-8 BOM), must
   start with a complete JSON value; text after it is ignored (slirp4netns's
   parser is that lenient, and clients send a trailing ``\\n``).  Strict
   JSON otherwise, as slirp4netns's parser (parson): no NaN/Infinity (nor
   1e400), no duplicate keys, no lone surrogates, no ``\\u0000`` in keys:
   ``cannot parse JSON`` (also for an empty request or a silent client).
   A ``\\u0000`` inside a string value ends it, as for slirp4netns's C code;
3. not an object: ``json_object() failed``; no string ``execute``:
   ``no execute found``; another command: ``unknown execute``;
4. per command, the §6.1/§6.3 checks in order (see :func:`_add_hostfwd`).

Numbers (ports, ids) are JSON numbers (``true`` is not one) truncated toward
zero.  Deliberate differences from slirp4netns 1.2.0, all where it crashes
or is undefined:
- missing ``arguments``/``proto`` or a non-string ``proto`` get the proto
  error (1.2.0 dies of SIGSEGV);
- ``list_hostfwd`` answers ``{"return":{"entries":[...]}}`` as slirp4netns's
  manual and API test document (1.2.0 writes the bare ``{"entries":[...]}``;
  DESIGN.md "Compatibility contract" decides for the documented form);
- a number outside C's int range (``1e10``) is a bad argument (1.2.0
  converts it to INT_MIN, an undefined conversion, and binds port 0);
- a ``host_addr``/``guest_addr`` that is present but neither a string nor
  null is a bad argument (1.2.0 treats it as missing and binds 0.0.0.0);
- IPv6 ``host_addr`` and ``guest_addr`` are accepted (an extension: 1.2.0
  answers ``bad arguments.host_addr``/``guest_addr``); an IPv6
  ``guest_addr`` that names no single node (::, ::1, multicast,
  IPv4-mapped) is a bad argument, and one without ``--enable-ipv6`` fails
  the add (see slirp/portfwd.py).

Glue (:class:`ApiServer`): the listener and every connection are watched by
the uvloop Driver, so no client can stall traffic — slirp4netns "stops the
world" per request.  A client that sends nothing within
:data:`API_READ_TIMEOUT_S` is answered as an empty request; at most
:data:`API_MAX_CONNECTIONS` connections are served at once (beyond that the
listener is not watched, so further clients wait in the kernel's backlog of
:data:`API_LISTEN_BACKLOG`, and connect() is refused when that is full);
replies that do not fit the socket buffer are written as the client reads,
for at most :data:`API_WRITE_TIMEOUT_S`.  Log lines on stderr (unless
quiet): ``apifd event`` per connection, ``api_handler: got request: <raw>``,
``api_handler: rc=-1`` for every error reply (the reply text says which).
The socket file is unlinked by :meth:`ApiServer.close` (orderly exit) if it
is still the one we bound.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from .portfwd import PROTOS, AddFailed, Forward, ForwardSpec, UnknownForward, parse_ipv4, parse_ipv6

API_READ_MAX = 4096  # one read; a read of exactly this many bytes is "too large"
API_LISTEN_BACKLOG = 64
API_MAX_CONNECTIONS = 32
API_ACCEPT_BUDGET = 32  # accepts per wake-up
API_READ_TIMEOUT_S = 1.5
API_WRITE_TIMEOUT_S = 5.0
API_ACCEPT_PAUSE_S = 0.25  # after EMFILE and the like
RC_FAILED = -1

# parson (slirp4netns's JSON parser) nests up to 2048 levels; a 4095-byte
# request can nest 2047.  The recursion limit is raised while parsing so that
# Python's decoder accepts every depth parson does.
_PARSE_RECURSION_HEADROOM = 2100
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_JSON_WS = " \t\n\r"
_BOM = "\ufeff"


# -- pure handler ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send (``body``), the handler status (0, or :data:`RC_FAILED`), and an
    optional detail for the log (e.g. why a bind failed)."""

    body: bytes
    rc: int = 0
    detail: str | None = None


class ForwardTable(Protocol):
    """The effects a request can have (``slirp.portfwd.ForwardRegistry``)."""

    def add(self, spec: ForwardSpec) -> Forward: ...

    def remove(self, fid: int) -> Forward: ...

    def entries(self) -> list[Forward]: ...


ERR_TOO_LARGE = "bad request: too large message"
ERR_PARSE = "bad request: cannot parse JSON"
ERR_NOT_OBJECT = "bad request: json_object() failed"
ERR_NO_EXECUTE = "bad request: no execute found"
ERR_UNKNOWN_EXECUTE = "bad request: unknown execute"
ERR_ADD_PROTO = "bad request: add_hostfwd: bad arguments.proto"
ERR_ADD_HOST_ADDR = "bad request: add_hostfwd: bad arguments.host_addr"
ERR_ADD_HOST_PORT = "bad request: add_hostfwd: bad arguments.host_port"
ERR_ADD_GUEST_ADDR = "bad request: add_hostfwd: bad arguments.guest_addr"
ERR_ADD_GUEST_PORT = "bad request: add_hostfwd: bad arguments.guest_port"
ERR_ADD_FAILED = "bad request: add_hostfwd: slirp_add_hostfwd failed"
ERR_REMOVE_ID = "bad request: remove_hostfwd: bad arguments.id"
ERR_REMOVE_FAILED = "bad request: remove_hostfwd: slirp_remove_hostfwd failed"

ERRORS = (
    ERR_TOO_LARGE,
    ERR_PARSE,
    ERR_NOT_OBJECT,
    ERR_NO_EXECUTE,
    ERR_UNKNOWN_EXECUTE,
    ERR_ADD_PROTO,
    ERR_ADD_HOST_ADDR,
    ERR_ADD_HOST_PORT,
    ERR_ADD_GUEST_ADDR,
    ERR_ADD_GUEST_PORT,
    ERR_ADD_FAILED,
    ERR_REMOVE_ID,
    ERR_REMOVE_FAILED,
)


class RemoveFailed(Exception):
    """A table may refuse to release a forward's host socket (slirp_remove_hostfwd failed)."""


def encode(value) -> bytes:
    """Compact JSON, no trailing newline."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def error_reply(desc: str, detail: str | None = None) -> Reply:
    return Reply(encode({"error": {"desc": desc}}), RC_FAILED, detail)


def is_too_large(raw: bytes) -> bool:
    return len(raw) >= API_READ_MAX


def handle_request(raw: bytes, table: ForwardTable) -> Reply:
    """One request (the bytes of the one read) → the reply; applies the effect to ``table``."""
    if is_too_large(raw):
        return error_reply(ERR_TOO_LARGE)
    try:
        request = parse_json_prefix(raw)
    except ValueError:
        return error_reply(ERR_PARSE)
    if not isinstance(request, dict):
        return error_reply(ERR_NOT_OBJECT)
    execute = request.get("execute")
    if not isinstance(execute, str):
        return error_reply(ERR_NO_EXECUTE)
    command = _COMMANDS.get(execute)
    if command is None:
        return error_reply(ERR_UNKNOWN_EXECUTE)
    arguments = request.get("arguments")
    return command(arguments if isinstance(arguments, dict) else {}, table)


def parse_json_prefix(raw: bytes):
    """The first complete JSON value of ``raw`` (up to the first NUL); ValueError if none."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    # Invalid UTF-8 becomes U+FFFD: harmless inside strings (as parson keeps
    # such bytes), a syntax error elsewhere.
    text = raw.decode("utf-8", errors="replace")
    start = 0
    if text.startswith(_BOM):
        start = len(_BOM)
    while start < len(text) and text[start] in _JSON_WS:
        start += 1
    decoder = json.JSONDecoder(
        parse_float=_finite_float, parse_constant=_reject_constant, object_pairs_hook=_object_without_duplicates
    )
    try:
        with _recursion_headroom(_PARSE_RECURSION_HEADROOM):
            value, _ = decoder.raw_decode(text, start)
            return _as_c_strings(value)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError("number out of range")  # parson refuses an overflowing strtod
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _object_without_duplicates(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _as_c_strings(value):
    """Strings as slirp4netns sees them: parson keeps ``\\u0000`` in values, and
    the C code reads them up to the NUL; keys with a NUL, and lone surrogates
    anywhere, are parse errors in parson.  Edits the fresh value in place
    (iteratively: it may nest 2047 deep)."""
    if isinstance(value, str):
        return _c_string(value)
    stack = [value]
    while stack:
        container = stack.pop()
        if isinstance(container, dict):
            for key, item in container.items():
                _check_surrogates(key)
                if "\0" in key:
                    raise ValueError("NUL in a key")
                if isinstance(item, str):
                    container[key] = _c_string(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
        elif isinstance(container, list):
            for i, item in enumerate(container):
                if isinstance(item, str):
                    container[i] = _c_string(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
    return value


def _c_string(s: str) -> str:
    _check_surrogates(s)
    return s.split("\0", 1)[0]


def _check_surrogates(s: str) -> None:
    # Python's decoder joins valid pairs; what is left is a lone surrogate.
    if any("\ud800" <= ch <= "\udfff" for ch in s):
        raise ValueError("lone surrogate")


@contextmanager
def _recursion_headroom(extra: int):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(old + extra)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _int_arg(value) -> int | None:
    """A JSON number truncated toward zero, None if not a number or outside C's int."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (_INT_MIN - 1 < value < _INT_MAX + 1):
        return None  # also NaN/inf, which the parser does not produce anyway
    n = int(value)
    return n if _INT_MIN <= n <= _INT_MAX else None


def _addr_arg(arguments: dict, key: str):
    """(present, address): missing, null or "" → (False, None); bad → (True, None).

    IPv4 as slirp4netns (strict dotted quad); IPv6 in the usual text form
    (no brackets, no zone index) — a slirpnet extension."""
    value = arguments.get(key)
    if value is None or value == "":
        return False, None
    if not isinstance(value, str):
        return True, None
    if ":" in value:
        return True, parse_ipv6(value)
    return True, parse_ipv4(value)


def _guest_ipv6_ok(addr) -> bool:
    """An IPv6 guest address must name one node: not unspecified, loopback,
    multicast or IPv4-mapped (those mean nothing inside the namespace)."""
    return not (addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.ipv4_mapped is not None)


def _add_hostfwd(arguments: dict, table: ForwardTable) -> Reply:
    """§6.1: proto, host_addr, host_port, guest_addr, guest_port, then the bind."""
    proto = arguments.get("proto")
    if not isinstance(proto, str) or proto not in PROTOS:
        return error_reply(ERR_ADD_PROTO)
    given, host_addr = _addr_arg(arguments, "host_addr")
    if not given:
        host_addr = parse_ipv4("0.0.0.0")
    elif host_addr is None:
        return error_reply(ERR_ADD_HOST_ADDR)
    host_port = _int_arg(arguments.get("host_port"))
    if not host_port:
        return error_reply(ERR_ADD_HOST_PORT)
    given, guest_addr = _addr_arg(arguments, "guest_addr")
    if given and (guest_addr is None or (guest_addr.version == 6 and not _guest_ipv6_ok(guest_addr))):
        return error_reply(ERR_ADD_GUEST_ADDR)
    guest_port = _int_arg(arguments.get("guest_port"))
    if not guest_port:
        return error_reply(ERR_ADD_GUEST_PORT)
    spec = ForwardSpec(proto, host_addr, host_port, guest_addr, guest_port)
    try:
        forward = table.add(spec)
    except AddFailed as failed:
        return error_reply(ERR_ADD_FAILED, f"add_hostfwd: {failed.reason}")
    return Reply(encode({"return": {"id": forward.id}}), detail=f"add_hostfwd: id {forward.id}: {forward.describe()}")


def _list_hostfwd(arguments: dict, table: ForwardTable) -> Reply:
    entries = [forward.entry() for forward in table.entries()]
    return Reply(encode({"return": {"entries": entries}}))


def _remove_hostfwd(arguments: dict, table: ForwardTable) -> Reply:
    fid = _int_arg(arguments.get("id"))
    if fid is None:
        return error_reply(ERR_REMOVE_ID)
    try:
        forward = table.remove(fid)
    except UnknownForward:
        return error_reply(ERR_REMOVE_ID)
    except RemoveFailed as failed:
        return error_reply(ERR_REMOVE_FAILED, f"remove_hostfwd: {failed}")
    return Reply(encode({"return": {}}), detail=f"remove_hostfwd: id {forward.id}")


_COMMANDS = {
    "add_hostfwd": _add_hostfwd,
    "list_hostfwd": _list_hostfwd,
    "remove_hostfwd": _remove_hostfwd,
}


# -- socket glue -------------------------------------------------------------------


class ApiHost(Protocol):
    """What the glue needs from the event loop (``slirp.loop.Driver``)."""

    def watch(self, fd: int, kind, *args) -> None: ...

    def unwatch(self, fd: int) -> None: ...

    def watch_writable(self, fd: int, kind, *args) -> None: ...

    def unwatch_writable(self, fd: int) -> None: ...

    def call_later(self, delay_s: float, callback, *args): ...


class ApiConnection:
    """One client: reading its request, then writing the reply."""

    __slots__ = ("sock", "fd", "timer", "out", "reading", "writing")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.timer = None  # read deadline, then write deadline
        self.out = memoryview(b"")
        self.reading = False  # watched for readability
        self.writing = False  # watched for writability


class ApiServer:
    """The listening socket and its clients, driven by the Driver's handler table."""

    def __init__(self, path: str, table: ForwardTable, host: ApiHost, kinds, log=None, counters=None):
        """``kinds``: an object with API_LISTENER, API_CONN and API_REPLY fd kinds;
        ``log``: a binary stream for the log lines, or None for quiet."""
        self.path = path
        self.table = table
        self.host = host
        self.kinds = kinds
        self.log = log
        self.counters = counters
        self.sock: socket.socket | None = None
        self.conns: dict[int, ApiConnection] = {}
        self._listening = False
        self._dirfd: int | None = None
        self._name = ""
        self._ident: tuple[int, int] | None = None
        self._pause_timer = None
        self._closed = False

    # -- lifetime ------------------------------------------------------------------

    def open(self) -> None:
        """Unlink PATH, bind, listen, start watching; raises OSError."""
        directory, name = os.path.split(self.path)
        dirfd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                os.unlink(name, dir_fd=dirfd)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # e.g. a directory: bind reports the problem
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.bind(self.path)
                sock.listen(API_LISTEN_BACKLOG)
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except BaseException:
                sock.close()
                raise
        except BaseException:
            os.close(dirfd)
            raise
        # Unlink through a directory fd at exit: still right after a sandbox
        # has changed the root or the working directory.
        self._dirfd, self._name = dirfd, name
        self._ident = (st.st_dev, st.st_ino)
        self.sock = sock
        self._listen()

    def close(self) -> None:
        """Close every connection and the listener; unlink the socket file if it is still ours."""
        self._closed = True
        for conn in list(self.conns.values()):
            self._finish(conn)
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        if self.sock is not None:
            self._unlisten()
            self.sock.close()
            self.sock = None
        if self._dirfd is not None:
            try:
                st = os.stat(self._name, dir_fd=self._dirfd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == self._ident:
                    os.unlink(self._name, dir_fd=self._dirfd)
            except OSError:
                pass
            os.close(self._dirfd)
            self._dirfd = None

    def _listen(self) -> None:
        if not self._listening and self.sock is not None and not self._closed:
            self.host.watch(self.sock.fileno(), self.kinds.API_LISTENER)
            self._listening = True

    def _unlisten(self) -> None:
        if self._listening:
            self.host.unwatch(self.sock.fileno())
            self._listening = False

    # -- handlers (the Driver's table calls these) ---------------------------------

    def accept_handler(self) -> None:
        for _ in range(API_ACCEPT_BUDGET):
            if len(self.conns) >= API_MAX_CONNECTIONS:
                break
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._bump("api.accept_paused")
                    self._unlisten()
                    self._pause_timer = self.host.call_later(API_ACCEPT_PAUSE_S, self._resume)
                    return
                self._bump("api.accept_error")
                continue
            sock.setblocking(False)
            conn = ApiConnection(sock)
            self.conns[conn.fd] = conn
            self._log(b"apifd event\n")
            self.host.watch(conn.fd, self.kinds.API_CONN, conn)
            conn.reading = True
            conn.timer = self.host.call_later(API_READ_TIMEOUT_S, self.read_timeout_handler, conn)
        if len(self.conns) >= API_MAX_CONNECTIONS:
            # Busy: leave further clients in the backlog until a slot frees.
            self._bump("api.busy")
            self._unlisten()

    def request_handler(self, conn: ApiConnection) -> None:
        try:
            data = conn.sock.recv(API_READ_MAX)
        except (BlockingIOError, InterruptedError):
            return  # spurious wake-up: keep waiting (the timer still runs)
        except OSError as err:
            self._log(f"api_handler: read: {err.strerror}\n".encode())
            self._bump("api.read_error")
            self._finish(conn)
            return
        self._answer(conn, data)

    def read_timeout_handler(self, conn: ApiConnection) -> None:
        conn.timer = None
        self._bump("api.read_timeout")
        self._answer(conn, b"")

    def reply_handler(self, conn: ApiConnection) -> None:
        self._write(conn)

    def write_timeout_handler(self, conn: ApiConnection) -> None:
        conn.timer = None
        self._bump("api.write_timeout")
        self._finish(conn)

    # -- internals -----------------------------------------------------------------

    def _answer(self, conn: ApiConnection, data: bytes) -> None:
        if conn.reading:
            self.host.unwatch(conn.fd)
            conn.reading = False
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if not is_too_large(data):
            self._log(b"api_handler: got request: " + data.split(b"\0", 1)[0] + b"\n")
        reply = handle_request(data, self.table)
        if reply.detail is not None and self.log is not None:
            self._log(f"api_handler: {reply.detail}\n".encode(errors="replace"))
        if reply.rc != 0:
            self._bump("api.error_replies")
            self._log(f"api_handler: rc={reply.rc}\n".encode())
        conn.out = memoryview(reply.body)
        self._write(conn)

    def _write(self, conn: ApiConnection) -> None:
        while conn.out:
            try:
                n = conn.sock.send(conn.out)
            except InterruptedError:
                continue
            except BlockingIOError:
                if not conn.writing:
                    conn.writing = True
                    self.host.watch_writable(conn.fd, self.kinds.API_REPLY, conn)
                    conn.timer = self.host.call_later(API_WRITE_TIMEOUT_S, self.write_timeout_handler, conn)
                return
            except OSError:
                # The client went away (EPIPE, ECONNRESET): nothing more to say.
                self._bump("api.write_error")
                break
            conn.out = conn.out[n:]
        self._finish(conn)

    def _finish(self, conn: ApiConnection) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if conn.writing:
            self.host.unwatch_writable(conn.fd)
            conn.writing = False
        if conn.reading:
            self.host.unwatch(conn.fd)
            conn.reading = False
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.sock.close()
        if self._pause_timer is None and len(self.conns) < API_MAX_CONNECTIONS:
            self._listen()

    def _resume(self) -> None:
        self._pause_timer = None
        if len(self.conns) < API_MAX_CONNECTIONS:
            self._listen()

    def _log(self, line: bytes) -> None:
        if self.log is None:
            return
        try:
            self.log.write(line)
            self.log.flush()
        except (OSError, ValueError):
            pass

    def _bump(self, name: str) -> None:
        if self.counters is not None:
            self.counters.bump(name)
