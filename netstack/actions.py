"""Actions: what the core asks the edge to do with real sockets.

Small frozen values, imperative names (STYLE.md "Names").  The edge
(slirp/hostsock.py) carries each one out and reports the outcome as an event
(netstack/events.py).  ``flow`` is the core's flow id (an int, unique for the
life of the stack).  Addresses are packed bytes — 4 bytes for IPv4, 16 for
IPv6 — so every action is family-neutral.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OpenTcp:
    """Create a host TCP socket and start a non-blocking connect to addr:port.

    Outcome: TcpConnected or TcpConnectFailed.  If the connect never
    completes, nothing is reported (the guest's SYN goes unanswered and the
    core eventually expires the flow with CloseTcp)."""

    flow: int
    addr: bytes
    port: int


@dataclass(frozen=True, slots=True)
class SendTcp:
    """Write data to the flow's host socket without blocking.

    Outcome: TcpSent(accepted=n) with n <= len(data); if n < len(data) the
    edge also reports TcpWritable once the socket can take more."""

    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadTcp:
    """Allow the edge to read up to ``credit`` bytes from the host socket.

    The credit is absolute, not additive: it replaces the previous one.  The
    edge delivers TcpReceived events and lowers the credit by what it
    delivered; at 0 it stops watching the socket for readability."""

    flow: int
    credit: int


@dataclass(frozen=True, slots=True)
class ShutdownTcp:
    """shutdown(SHUT_WR): the guest sent FIN and all its data is written."""

    flow: int


@dataclass(frozen=True, slots=True)
class CloseTcp:
    """Close the host socket; with ``reset`` set, abortively (RST via SO_LINGER 0)."""

    flow: int
    reset: bool = False


@dataclass(frozen=True, slots=True)
class WatchTcpWritable:
    """Report TcpWritable(send_space) once the host socket becomes writable.

    TcpWritable already follows a short write on its own.  This asks for it
    when the last write was *complete* but left the socket (nearly) full:
    the window offered to the guest is then closed and only the edge can see
    the socket drain.  One report per WatchTcpWritable; the core asks again
    if the space is still too small."""

    flow: int


@dataclass(frozen=True, slots=True)
class OpenUdp:
    """Create a host UDP socket of the family of ``addr`` for this flow."""

    flow: int
    addr: bytes


@dataclass(frozen=True, slots=True)
class SendUdp:
    flow: int
    addr: bytes
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseUdp:
    """Close the flow's socket — or, for a port-forward session, forget it."""

    flow: int


@dataclass(frozen=True, slots=True)
class ReplyUdp:
    """Send ``data`` back to the host peer of a UDP port-forward session,
    from the forward's own socket (the peer sees the port it wrote to)."""

    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenPing:
    """Create an unprivileged ICMP/ICMPv6 datagram socket for this flow."""

    flow: int
    addr: bytes


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send an echo request (the kernel picks the identifier)."""

    flow: int
    addr: bytes
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ClosePing:
    flow: int
