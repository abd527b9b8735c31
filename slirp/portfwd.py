"""Port forwards: the registry behind ``add/list/remove_hostfwd`` and its host listeners.

What it models (compat spec §4.6, §6.1–§6.3): a table of forwards, each a
host socket — a TCP listener or a bound UDP socket on host_addr:host_port —
whose connections or datagrams are to be carried to guest_addr:guest_port.
The API handler (``slirp/api.py``), ``slirpnet run -p`` and tests all go
through :class:`ForwardRegistry`, so ids and bind rules are the same for all.

Invariants:
- ids start at 1 and grow by one per *successful* add; a failed add (bad
  bind, table full) consumes none; a removed id is never handed out again.
- an entry in the table always owns an open host socket; removing the entry
  closes that socket (and stops watching it) and nothing else: TCP
  connections already accepted belong to whoever took them.
- ports are kept as given (the API lists ``-5`` or ``83536`` back) and bound
  modulo 65536, as slirp4netns does (``bind_port``, ``target_port``).
- the guest target is resolved once at add time: no ``guest_addr`` means the
  recommended guest address N+100; an explicit ``0.0.0.0`` lists as given but
  targets the first DHCP address N+15, as libslirp does.

Sockets: TCP listeners get SO_REUSEADDR (a restarted slirpnet can rebind
over TIME_WAIT) and a real backlog (:data:`LISTEN_BACKLOG`, where slirp4netns
uses 1) because forwarded ports take bursts of short connections.  UDP
sockets get no SO_REUSEADDR, so a second or overlapping UDP forward of the
same port is refused like a TCP one.  IPv6: a forward on ``[::]:P`` is
dual-stack (IPV6_V6ONLY off: IPv4 clients arrive as ::ffff:a.b.c.d, which
the core unwraps), so it overlaps ``0.0.0.0:P`` and the second of the two is
refused; any other IPv6 address is IPV6_V6ONLY.

IPv6 targets: the family of ``guest_addr`` decides the family the core
opens toward the guest; without ``guest_addr`` the target is the IPv4 guest
address N+100 whatever the host address (known in advance, unlike the
guest's SLAAC address).  An IPv6 ``guest_addr`` needs ``--enable-ipv6``
(without it the guest's IPv6 replies would be dropped): the add fails.
How a client appears to the guest across families is the core's rule
(``netstack.policy.Policy.forward_source``).

Hand-off: the registry does not know what happens to traffic.  Each accepted
connection goes to ``host.forward_accepted(forward, conn, peer_addr,
peer_port)`` and each datagram to ``host.forward_datagram(forward, data,
peer_addr, peer_port, reply)`` (the :class:`ForwardHost` protocol, which
``slirp.loop.Driver`` implements).  Peers are passed through unchanged, as
packed addresses: mapping loopback peers to the gateway is the core's rule.

Limits (STYLE.md §6): at most :data:`MAX_FORWARDS` forwards (beyond: the add
fails like a bind failure); at most :data:`ACCEPT_BUDGET` accepts and
:data:`UDP_RECV_BUDGET` datagrams per wake-up.  When accept() fails for
lack of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the listener is not
watched for :data:`ACCEPT_PAUSE_S` (the pending connection keeps it readable,
so watching it would spin), counted as ``portfwd.accept_paused``.

Not done here: carrying traffic into the guest (the core's job),
splice(2) loopback forwarding.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Callable, Protocol

from netstack.addressing import AddressPlan
from netstack.counters import Counters

PROTOS = ("tcp", "udp")
PORT_MODULUS = 65536
LISTEN_BACKLOG = 128
ACCEPT_BUDGET = 64  # connections per wake-up of one listener
UDP_RECV_BUDGET = 64  # datagrams per wake-up of one forward
UDP_RECV_MAX = 65535
ACCEPT_PAUSE_S = 0.25
MAX_FORWARDS = 4096

# accept() errors that mean "no resources now": pause instead of spinning.
_ACCEPT_NO_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """A validated add request: ports as given (any int), addresses parsed.

    ``guest_addr`` None means "the recommended guest address" (N+100)."""

    proto: str
    host_addr: IPAddress
    host_port: int
    guest_addr: IPAddress | None
    guest_port: int


class AddFailed(Exception):
    """The forward could not be created (bind failed, table full); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UnknownForward(KeyError):
    pass


class Forward:
    """One live forward.  ``sock`` is open for as long as the forward is in the table.

    Listed fields (``id``, ``proto``, ``host_addr``, ``host_port``,
    ``guest_addr``, ``guest_port``) are what the API shows; ``bind_port``,
    ``target_addr`` (packed, 4 or 16 bytes) and ``target_port`` are what the
    sockets and the core use."""

    __slots__ = (
        "id",
        "proto",
        "host_addr",
        "host_port",
        "guest_addr",
        "guest_port",
        "bind_port",
        "target_addr",
        "target_port",
        "sock",
        "paused",
    )

    def __init__(self, fid: int, spec: ForwardSpec, guest_addr: IPAddress, target_addr: bytes, sock):
        self.id = fid
        self.proto = spec.proto
        self.host_addr = spec.host_addr
        self.host_port = spec.host_port
        self.guest_addr = guest_addr
        self.guest_port = spec.guest_port
        self.bind_port = spec.host_port % PORT_MODULUS
        self.target_addr = target_addr
        self.target_port = spec.guest_port % PORT_MODULUS
        self.sock = sock
        self.paused = False

    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def entry(self) -> dict:
        """The list_hostfwd entry, keys in slirp4netns's order."""
        return {
            "id": self.id,
            "proto": self.proto,
            "host_addr": str(self.host_addr),
            "host_port": self.host_port,
            "guest_addr": str(self.guest_addr),
            "guest_port": self.guest_port,
        }

    def describe(self) -> str:
        return (
            f"{self.proto} {format_endpoint(self.host_addr, self.host_port)}"
            f" -> {format_endpoint(self.guest_addr, self.guest_port)}"
        )

    def reply_to(self, peer: tuple) -> Callable[[bytes], bool]:
        """A function that sends one datagram back to ``peer`` from this forward's socket.

        Returns False (and drops the datagram) if the socket is gone or
        the send fails; UDP makes no delivery promise anyway."""

        def reply(payload: bytes) -> bool:
            sock = self.sock
            if sock is None:
                return False
            try:
                sock.sendto(payload, peer)
            except OSError:
                return False
            return True

        return reply


class ForwardHost(Protocol):
    """What the registry needs from the event loop (``slirp.loop.Driver``)."""

    def listener_opened(self, forward: Forward) -> None:
        """Start watching ``forward.sock`` for readability."""

    def listener_closing(self, forward: Forward) -> None:
        """Stop watching ``forward.sock`` (it is closed right after)."""

    def listener_paused(self, forward: Forward, seconds: float) -> None:
        """Stop watching ``forward.sock`` for ``seconds``, then watch it again if still open."""

    def forward_accepted(self, forward: Forward, conn: socket.socket, peer_addr: bytes, peer_port: int) -> None:
        """A host client connected through a TCP forward; the callee owns ``conn``."""

    def forward_datagram(
        self, forward: Forward, data: bytes, peer_addr: bytes, peer_port: int, reply: Callable[[bytes], bool]
    ) -> None:
        """A datagram arrived on a UDP forward; ``reply(payload)`` answers the peer."""


def open_listener(proto: str, addr: IPAddress, port: int) -> socket.socket:
    """The host socket of a forward: a non-blocking TCP listener or bound UDP socket.

    Raises OSError (the socket is closed) when it cannot be created or bound."""
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            # [::] is dual-stack; a specific IPv6 address can only be IPv6 anyway.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr.packed == bytes(16) else 1)
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(addr), port))
        if proto == "tcp":
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class ForwardRegistry:
    """The forward table: ids, host sockets, and the hand-off of what arrives on them."""

    def __init__(
        self,
        plan: AddressPlan,
        host: ForwardHost,
        counters: Counters | None = None,
        opener: Callable[[str, IPAddress, int], object] = open_listener,
        max_forwards: int = MAX_FORWARDS,
        enable_ipv6: bool = False,
    ):
        self.plan = plan
        self.enable_ipv6 = enable_ipv6
        self.host = host
        self.counters = counters if counters is not None else Counters()
        self._open = opener
        self.max_forwards = max_forwards
        self._forwards: dict[int, Forward] = {}  # insertion order = list order
        self._last_id = 0

    # -- table ----------------------------------------------------------------

    def add(self, spec: ForwardSpec) -> Forward:
        """Bind the host socket and enter the forward; raises :class:`AddFailed`."""
        if spec.proto not in PROTOS:
            raise AddFailed(f"unknown protocol {spec.proto!r}")
        if len(self._forwards) >= self.max_forwards:
            self.counters.bump("portfwd.table_full")
            raise AddFailed(f"too many forwards (at most {self.max_forwards})")
        if spec.guest_addr is not None and spec.guest_addr.version == 6 and not self.enable_ipv6:
            self.counters.bump("portfwd.ipv6_disabled")
            raise AddFailed(f"IPv6 guest address {spec.guest_addr} needs --enable-ipv6")
        guest_addr, target = self._guest_target(spec.guest_addr)
        try:
            sock = self._open(spec.proto, spec.host_addr, spec.host_port % PORT_MODULUS)
        except OSError as err:
            self.counters.bump("portfwd.bind_failed")
            where = format_endpoint(spec.host_addr, spec.host_port % PORT_MODULUS)
            raise AddFailed(f"{spec.proto} {where}: {err.strerror or err}") from None
        self._last_id += 1
        forward = Forward(self._last_id, spec, guest_addr, target, sock)
        self._forwards[forward.id] = forward
        self.host.listener_opened(forward)
        return forward

    def remove(self, fid: int) -> Forward:
        """Close the forward's host socket and drop it; raises :class:`UnknownForward`."""
        forward = self._forwards.pop(fid, None)
        if forward is None:
            raise UnknownForward(fid)
        self._close(forward)
        return forward

    def get(self, fid: int) -> Forward | None:
        return self._forwards.get(fid)

    def entries(self) -> list[Forward]:
        return list(self._forwards.values())

    def __len__(self) -> int:
        return len(self._forwards)

    def close_all(self) -> None:
        while self._forwards:
            _, forward = self._forwards.popitem()
            self._close(forward)

    def _close(self, forward: Forward) -> None:
        sock = forward.sock
        if sock is None:
            return
        self.host.listener_closing(forward)
        forward.sock = None
        sock.close()

    def _guest_target(self, guest_addr: IPAddress | None) -> tuple[IPAddress, bytes]:
        """(address as listed, packed address the core connects to)."""
        if guest_addr is None:
            guest = ipaddress.IPv4Address(self.plan.guest)
            return guest, guest.packed
        if guest_addr.version == 4 and guest_addr.packed == bytes(4):
            return guest_addr, self.plan.dhcp_first  # libslirp: 0.0.0.0 means the first DHCP address
        return guest_addr, guest_addr.packed

    # -- readiness (called by the Driver's handlers) --------------------------------

    def accept_ready(self, forward: Forward) -> None:
        """Accept up to :data:`ACCEPT_BUDGET` connections and hand each to the host."""
        counters = self.counters
        for _ in range(ACCEPT_BUDGET):
            sock = forward.sock
            if sock is None:  # removed by a hook during this batch
                return
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in _ACCEPT_NO_RESOURCES:
                    counters.bump("portfwd.accept_paused")
                    forward.paused = True
                    self.host.listener_paused(forward, ACCEPT_PAUSE_S)
                    return
                # ECONNABORTED, EPROTO, EPERM (netfilter)...: that one connection is gone.
                counters.bump("portfwd.accept_error")
                continue
            conn.setblocking(False)
            counters.bump("portfwd.tcp_accepted")
            self.host.forward_accepted(forward, conn, packed_peer(peer[0]), peer[1])

    def datagrams_ready(self, forward: Forward) -> None:
        """Receive up to :data:`UDP_RECV_BUDGET` datagrams and hand each to the host."""
        counters = self.counters
        for _ in range(UDP_RECV_BUDGET):
            sock = forward.sock
            if sock is None:
                return
            try:
                data, peer = sock.recvfrom(UDP_RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. a queued ICMP error (ECONNREFUSED) for an earlier reply.
                counters.bump("portfwd.udp_recv_error")
                continue
            counters.bump("portfwd.udp_received")
            self.host.forward_datagram(forward, data, packed_peer(peer[0]), peer[1], forward.reply_to(peer))

    def resume(self, forward: Forward) -> bool:
        """After a pause: True if the forward is still open and should be watched again."""
        forward.paused = False
        return forward.sock is not None


def packed_peer(host: str) -> bytes:
    """A peer address from accept()/recvfrom() as packed bytes (4 or 16)."""
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    return socket.inet_pton(socket.AF_INET, host)


def format_endpoint(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


# -- textual port mappings: `slirpnet ctl add` and `slirpnet run -p` -------------

_DOTTED_QUAD = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Strict dotted-quad IPv4 (what inet_pton(AF_INET) accepts): no ``127.1``, no leading zeros."""
    if not _DOTTED_QUAD.fullmatch(text):
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:  # an octet above 255
        return None


def parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    """An IPv6 address in text form, without brackets or a zone index (``%eth0``)."""
    if "%" in text:
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PortMapping:
    """``[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT``; addresses None when not given."""

    host_addr: IPAddress | None
    host_port: int
    guest_addr: IPAddress | None
    guest_port: int
    proto: str = "tcp"


class MappingError(ValueError):
    pass


def parse_port_mapping(text: str, allow_guest_addr: bool = True) -> PortMapping:
    """Parse ``[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT`` (ports 1..65535).

    IPv6 addresses go in brackets (``[::1]:8080:80``).  With three fields,
    the one that is not a number is the address: ``127.0.0.1:8080:80`` vs
    ``8080:10.0.2.15:80``.  Raises :class:`MappingError` with a readable
    message."""
    fields = _split_fields(text)
    n = len(fields)
    if n == 2:
        host_addr, host_port, guest_addr, guest_port = None, fields[0], None, fields[1]
    elif n == 3:
        if _is_port_text(fields[0]) and not _is_port_text(fields[1]):
            host_addr, host_port, guest_addr, guest_port = None, fields[0], fields[1], fields[2]
        else:
            host_addr, host_port, guest_addr, guest_port = fields[0], fields[1], None, fields[2]
    elif n == 4:
        host_addr, host_port, guest_addr, guest_port = fields
    else:
        raise MappingError("expected [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT")
    if guest_addr is not None and not allow_guest_addr:
        raise MappingError("expected [HOSTADDR:]HOSTPORT:GUESTPORT")
    return PortMapping(
        host_addr=None if host_addr is None else _parse_mapping_addr(host_addr, "host"),
        host_port=_parse_mapping_port(host_port, "host"),
        guest_addr=None if guest_addr is None else _parse_mapping_addr(guest_addr, "guest"),
        guest_port=_parse_mapping_port(guest_port, "guest"),
    )


def parse_publish(text: str) -> PortMapping:
    """``slirpnet run -p``: Docker's ``[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]``."""
    spec, proto = text, "tcp"
    if "/" in text:
        spec, proto = text.rsplit("/", 1)
        if proto not in PROTOS:
            raise MappingError(f"unknown protocol {proto!r} (tcp or udp)")
    m = parse_port_mapping(spec, allow_guest_addr=False)
    return PortMapping(m.host_addr, m.host_port, m.guest_addr, m.guest_port, proto)


def _split_fields(text: str) -> list[str]:
    """Split on ``:`` outside ``[...]``."""
    fields, cur, depth = [], [], 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise MappingError("unbalanced ']'")
        if ch == ":" and depth == 0:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise MappingError("unbalanced '['")
    fields.append("".join(cur))
    return fields


def _is_port_text(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_mapping_port(text: str, what: str) -> int:
    if not _is_port_text(text) or not 1 <= int(text) <= 65535:
        raise MappingError(f"bad {what} port {text!r} (1..65535)")
    return int(text)


def _parse_mapping_addr(text: str, what: str) -> IPAddress:
    if text.startswith("[") and text.endswith("]"):
        addr6 = parse_ipv6(text[1:-1])
        if addr6 is None:
            raise MappingError(f"bad {what} address {text!r}")
        return addr6
    if "[" in text or "]" in text:
        raise MappingError(f"bad {what} address {text!r}")
    addr = parse_ipv4(text)
    if addr is None:
        raise MappingError(f"bad {what} address {text!r} (IPv4 dotted quad, or [IPv6])")
    return addr
