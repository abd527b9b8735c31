"""Events: what the edge reports back to the core about real sockets.

Past-tense names (STYLE.md "Names").  Each answers an action of
netstack/actions.py or reports something the host side did on its own.
``send_space`` is the edge's estimate of how many more bytes the host socket
will take now (SO_SNDBUF minus what is queued); the core uses it to size the
receive window it offers the guest (backpressure, not buffering).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TcpConnected:
    flow: int
    send_space: int


@dataclass(frozen=True, slots=True)
class TcpConnectFailed:
    flow: int
    errno: int


@dataclass(frozen=True, slots=True)
class TcpSent:
    flow: int
    accepted: int
    send_space: int


@dataclass(frozen=True, slots=True)
class TcpWritable:
    flow: int
    send_space: int


@dataclass(frozen=True, slots=True)
class TcpReceived:
    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TcpHostEof:
    """The host peer closed its sending side (recv returned 0)."""

    flow: int


@dataclass(frozen=True, slots=True)
class TcpHostReset:
    """The host socket failed (ECONNRESET, EPIPE, ...): abort toward the guest."""

    flow: int
    errno: int


@dataclass(frozen=True, slots=True)
class UdpReceived:
    flow: int
    addr: bytes
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UdpFailed:
    """An ICMP error came back for a datagram the flow sent (IP_RECVERR).

    ``addr``/``port`` is the destination of the datagram that failed."""

    flow: int
    errno: int
    addr: bytes
    port: int


@dataclass(frozen=True, slots=True)
class PingReplied:
    flow: int
    addr: bytes
    seq: int
    payload: bytes
