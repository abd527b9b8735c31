"""The datapath: established TCP and UDP flows moved without the sans-IO core.

DESIGN.md "Data flow" step 3 and STYLE.md §8.  netstack terminates every
connection and decides everything; once a TCP flow is ESTABLISHED and idle
(nothing in flight either way) the edge *installs* it here, and once a UDP
NAT flow exists its host socket is installed too.  From then on the datapath
reads the TAP, recognises the frames of its flows and handles them itself —
payload to the host socket, ACKs and window updates back — and reads the
host sockets of its flows and turns their data into (GSO) frames for the
guest.  Everything else is a *slow item* handed back, in order, to the edge,
which gives it to netstack.  Two implementations with one contract:

* ``native`` — C in native/datapath.c (slirp._native), the default;
* ``python`` — slirp/datapath/python.py, the oracle of the parity tests and
  the fallback when the C module is not built.

``SLIRPNET_DATAPATH=python|native`` picks one (:func:`open_datapath`).

Contract
========

Construction: ``Datapath(tap_fd, mtu, forward_map, reverse_map, slow_addrs)``.
``forward_map`` maps a guest destination to the host address the datagram
goes to (the gateway → 127.0.0.1, fd00::/64 addresses are not listed: only
exact addresses); ``reverse_map`` maps a host source address to what the
guest sees (127.0.0.1 → the gateway, ::1 → fd00::2); a guest UDP datagram to
an address in ``slow_addrs`` (the DNS address, refused addresses) or to a
multicast/broadcast address is a slow Frame.  ``fileno()`` is an epoll fd the
event loop watches: readable when a host socket of an installed flow is.

Calls (``now`` is the loop's monotonic time in seconds; the datapath never
reads a clock):

* ``tap_readable(now) -> list[item]``: read the TAP until EAGAIN or
  TAP_READ_BUDGET frames, then, per touched TCP flow in first-touch order:
  send the pending ACK, then send host data the guest's window allows.
* ``host_readable(now) -> list[item]``: service the ready host sockets.
* ``timers(now) -> list[item]`` and ``next_deadline() -> float | None``.
* ``install_tcp(TcpFlow)``; ``eject_tcp(flow, now) -> Ejected`` (the edge
  wants the flow back, e.g. to close it); ``install_udp(UdpFlow)``;
  ``remove_udp(flow)`` (the edge closes the socket itself afterwards).
* ``owns(flow) -> bool``; ``take_activity() -> list[int]`` (UDP flows that
  carried traffic since the last call: their idle timers must be refreshed);
  ``stats() -> dict[str, int]`` (named counters, ``dp.*``); ``close()``.

The datapath never closes a host socket (the edge owns them) and never
allocates Python objects in C.  While a flow is installed the edge neither
reads nor watches its socket (it may still *send* on a UDP socket).

Slow items, in the order they happened:

* :class:`Frame` — a guest frame (vnet header included) for netstack;
* :class:`Ejected` — a TCP flow given back: the edge resumes it in netstack
  *before* handling any later item.  ``reason``: ``segment`` (the next item
  is the guest segment the fast path does not take: SYN/FIN/RST/URG, options
  other than timestamps, an ACK of unsent data...), ``host_eof``,
  ``host_error`` (``errno`` set), ``timeout`` (retransmission limit),
  ``zero_window`` (the guest's window stayed closed for an RTO: netstack
  probes), ``requested`` (eject_tcp);
* :class:`UdpDatagram` — a host datagram too big for one frame (netstack
  fragments it);
* :class:`UdpError` — an ICMP error is queued on a UDP socket (EPOLLERR): the
  edge drains the error queue.

TCP fast path, exactly (both implementations; the parity tests hold them to
it).  A guest frame is taken only if: vnet + Ethernet + IPv4 without options
or fragmentation, or IPv6 with TCP/UDP as the first next header; it belongs
to an installed flow (key: proto, guest addr/port, remote addr/port) and is
addressed to the flow's MAC; its checksum is vouched for by the vnet header
(NEEDS_CSUM or DATA_VALID) or verifies (else it is dropped, ``dp.bad_checksum``).
A TCP segment must have exactly ACK or ACK|PSH and, if the flow uses
timestamps, exactly the option block NOP NOP TS (else none): otherwise
Ejected(segment) + Frame.

1. PAWS (ts flows): TSval older than TS.Recent → dup ACK, drop (``dp.paws``).
2. ACK: beyond snd_max → ACK, drop (``dp.ack_unsent``); advancing → the acked
   bytes are discarded from the host socket (recv MSG_TRUNC), snd_una moves,
   RTT sampled from TSecr (RFC 6298, RTO floor 200 ms), the retransmission
   timer re-armed (or stopped when all is acked), the RTO backoff reset;
   equal, no payload, same window, data in flight → duplicate; the third
   rewinds snd_nxt to snd_una (go-back-N, ``dp.fast_retransmits``).  Window
   update per RFC 9293 (snd_wl1/snd_wl2).
3. Payload at rcv_nxt (the part of an overlapping retransmission past
   rcv_nxt too): written to the host socket (send, MSG_DONTWAIT|MSG_NOSIGNAL);
   rcv_nxt advances by what it took (forwarder rule: only that is ACKed);
   EAGAIN takes nothing; EPIPE/ECONNRESET/other errors → Ejected(host_error).
   TS.Recent = TSval.  Out of order → dup ACK, drop (``dp.out_of_order``).
   Anything acceptable marks the flow ACK-pending.
4. ACK emission (once per flow per batch): window = min(SO_SNDBUF − SIOCOUTQ,
   rcv_buf_max, 0xFFFF << rcv_wscale); rcv_adv moves right only, and only by
   at least min(MSS, window/2) (receiver SWS avoidance); the window field is
   rounded up to the scale.  A window below one MSS arms EPOLLOUT: when the
   socket drains, a window update is sent.
5. Host → guest: while the guest's window (snd_una + snd_wnd − snd_nxt) and
   the in-flight cap (INFLIGHT_MAX = 1 MiB, netstack's send buffer) allow:
   MSG_PEEK the next bytes (SO_PEEK_OFF keeps the offset at snd_nxt −
   snd_una; without it, the in-flight bytes are skipped into a scratch
   buffer), at most one GSO frame's worth (65535 − headers), build one frame
   (ACK|PSH, gso_size = MSS − 12 with timestamps, NEEDS_CSUM) and write it.
   Closed window → stop watching the socket for input until an ACK opens it;
   if nothing is in flight, a persist timer (one RTO) → Ejected(zero_window).
   Peek returns 0 → Ejected(host_eof).
6. RTO expiry with data in flight: go-back-N, RTO doubled (≤ 60 s); after
   MAX_RTO_RETRIES consecutive expiries → Ejected(timeout).
An ejected flow's export matches netstack.tcp.EndpointExport: the TCB dict
(every field of netstack.tcp.Tcb, updated), ``send_bytes`` = the
unacknowledged bytes [snd_una, snd_max) read out of the socket,
``to_host`` empty, ``host_eof``, ``host_blocked`` False, ``edge_credit`` 0.

UDP fast path: a guest datagram of an installed flow (key: guest addr/port)
to an ordinary destination is sent with sendto (destination rewritten by
``forward_map``); a host datagram is framed with the source rewritten by
``reverse_map`` (checksum offload), or handed up as UdpDatagram when it does
not fit the MTU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TAP_READ_BUDGET = 256
INFLIGHT_MAX = 1 << 20
MAX_RTO_RETRIES = 8


@dataclass(frozen=True, slots=True)
class TcpFlow:
    """What install_tcp needs: an ESTABLISHED flow with nothing in flight."""

    flow: int
    fd: int
    guest_addr: bytes
    guest_port: int
    remote_addr: bytes  # as the guest sees it
    remote_port: int
    guest_mac: bytes
    our_mac: bytes
    tcb: dict  # netstack.tcp.Tcb.to_dict(): snd_una == snd_nxt == snd_max
    rcv_buf_max: int
    now: float


@dataclass(frozen=True, slots=True)
class UdpFlow:
    flow: int
    fd: int
    guest_addr: bytes
    guest_port: int
    guest_mac: bytes
    our_mac: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ejected:
    flow: int
    reason: str
    errno: int
    tcb: dict
    send_bytes: bytes
    host_eof: bool


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    flow: int
    addr: bytes
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UdpError:
    flow: int


def open_datapath(kind: str | None = None, **kwargs):
    """The datapath named by ``kind`` or $SLIRPNET_DATAPATH (default: native,
    falling back to python when the C module is not built)."""
    kind = kind or os.environ.get("SLIRPNET_DATAPATH", "native")
    if kind == "native":
        try:
            from .native import NativeDatapath
        except ImportError:
            kind = "python"
        else:
            return NativeDatapath(**kwargs)
    if kind != "python":
        raise ValueError(f"SLIRPNET_DATAPATH must be native or python, not {kind!r}")
    from .python import PythonDatapath

    return PythonDatapath(**kwargs)
