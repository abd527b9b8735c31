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

``SLIRPNET_DATAPATH`` picks one (:func:`datapath_kind`: native, native-sync —
native without its thread —, python, or off), :func:`open_datapath` opens it.

Contract
========

Construction: ``Datapath(tap_fd, mtu, forward_map, reverse_map, slow_addrs,
*, max_flows=16384, peek_offset=True)``.
``forward_map`` maps a guest destination to the host address the datagram
goes to (the gateway → 127.0.0.1, fd00::/64 addresses are not listed: only
exact addresses); ``reverse_map`` maps a host source address to what the
guest sees (127.0.0.1 → the gateway, ::1 → fd00::2); a guest UDP datagram to
an address in ``slow_addrs`` (the DNS address, refused addresses), to a
multicast/broadcast address, or to port 0 or 67 (DHCP) is a slow Frame.
``max_flows`` bounds the table (TCP and UDP together); ``peek_offset=False``
forces the fallback for kernels without SO_PEEK_OFF on TCP (< 6.9), which is
otherwise chosen per socket when setting SO_PEEK_OFF fails.
``fileno()`` is an epoll fd the event loop watches: readable when a host
socket of an installed flow has something for us.  The TAP fd and the host
sockets must be non-blocking.

Calls (``now`` is the loop's monotonic time in seconds; the datapath never
reads a clock):

* ``tap_readable(now) -> list[item]``: read the TAP until EAGAIN or
  TAP_READ_BUDGET frames, then, per touched TCP flow in first-touch order:
  send host data the guest's window allows (each data frame carries the
  ACK), then the pending ACK if no data frame carried it.  A read error
  other than EAGAIN/EINTR ends the batch (``dp.tap_read_errors``) and is
  raised as OSError when the batch produced no item.
* ``host_readable(now) -> list[item]``: service the ready host sockets
  (at most HOST_EVENTS_MAX per call, in flow-id order).
* ``timers(now) -> list[item]`` (due flows in flow-id order) and
  ``next_deadline() -> float | None``.
* ``install_tcp(TcpFlow)``; ``eject_tcp(flow, now) -> Ejected`` (the edge
  wants the flow back, e.g. to close it); ``install_udp(UdpFlow)``;
  ``remove_udp(flow)`` (the edge closes the socket itself afterwards).
  Installing raises ValueError for a flow id, key or fd already installed
  (or TCP data in flight, or a state other than ESTABLISHED/SYN_RECEIVED/
  SYN_SENT, or a SYN_SENT flow without ts_ok),
  OverflowError when the table is full (the flow stays in netstack);
  eject_tcp/remove_udp raise KeyError for an unknown flow.
* ``owns(flow) -> bool``; ``take_activity() -> list[int]`` (UDP flows that
  carried traffic since the last call, in order of first activity: their
  idle timers must be refreshed); ``stats() -> dict[str, int]`` (the
  counters of STAT_NAMES); ``close()``.

* ``inject(frame, now) -> list[item]``: a guest frame handed back, handled
  as if it had just been read from the TAP (one frame's batch).  The edge
  uses it for a slow Frame that reached netstack for a flow installed
  meanwhile (netstack counts it ``tcp.rx_parked``): in threaded mode the
  thread may read a flow's segment before the edge installs that flow.

Threaded mode (native only): ``start()`` runs the same loop in a pthread of
the datapath's own — one epoll_wait over the TAP, the host sockets and the
flows' deadlines (its clock: CLOCK_MONOTONIC, the base of the event loop's
time) — calling the same functions as the synchronous calls above.  From
then on ``threaded`` is True, the edge no longer calls ``tap_readable``,
``host_readable`` or ``timers`` nor watches the TAP, ``fileno()`` is an
eventfd readable when slow items wait, and ``take() -> list[item]`` returns
them in order (plus :class:`TapError` when the TAP cannot be read any more).
The queue is bounded (SN_DP_QUEUE_CAP bytes of records): when it is nearly
full the thread reads nothing until the edge took it (``dp.queue_stalls``;
never a silent drop — ``dp.records_lost`` stays 0).  Every call takes the
datapath's mutex, which the thread holds only while it handles one batch;
the ``now`` passed to a call is ignored then.  After a small batch with TAP
or host-socket events (one that moved payload: less than 4 KiB of TCP, at
most two UDP datagrams; not a bare ACK) the thread polls (epoll_wait with a zero timeout,
sched_yield between polls) for up to SPIN_US (30 µs) before it sleeps, so
a request/response exchange does not pay a sleep and a wake-up per
message; a wake-up by a timer or by the edge alone does not poll, so an
idle thread sleeps, and neither does a batch that queued slow items or one
within 50 ms of a handshake install (the event loop needs the CPU then).
Start it only once the
process is confined (it inherits the seccomp filter; the sandbox needs a
single-threaded process); ``close()`` stops and joins it before anything is
freed.  The Python twin has no thread (``threaded`` is always False).

The datapath never closes a host socket (the edge owns them) and never
allocates Python objects in C.  While a flow is installed the edge neither
reads nor watches its socket (it may still *send* on a UDP socket).

Slow items, in the order they happened:

* :class:`Frame` — a guest frame (vnet header included) for netstack: not
  IPv4/IPv6 TCP/UDP, IP options or fragments, extension headers, unknown
  flows, frames to another MAC than the flow's, and malformed frames
  (truncated, bad IPv4 header checksum, bad lengths: ``dp.malformed``);
* :class:`Ejected` — a TCP flow given back: the edge resumes it in netstack
  *before* handling any later item.  A pending ACK is sent before the flow
  is ejected.  ``reason``: ``segment`` (the next item is the guest segment
  the fast path does not take: SYN, URG/ECE/CWR, no ACK, a RST not exactly
  at rcv_nxt, options other than the timestamp block, an ACK older than
  RFC 5961 §5.2 allows), ``timeout`` (retransmission limit), ``zero_window``
  (the guest's window stayed closed for an RTO: netstack probes),
  ``requested`` (eject_tcp).  (``host_eof`` and ``host_error`` are no longer
  produced: see "Closing".)  ``state`` is the flow's netstack.tcp.State
  name — a flow may be ejected while closing (CLOSE_WAIT, FIN_WAIT_1/2,
  CLOSING, LAST_ACK; netstack's import_ takes those; SYN_RECEIVED and
  SYN_SENT, see "Handshake") — and ``host_eof`` says the host's EOF was seen (our FIN is
  sent or due);
* :class:`Closed` — the connection ended in the datapath (see "Closing"):
  netstack forgets the flow (``TcpLayer.forget``), the edge closes the
  socket, with RST when ``how`` is ``reset``;
* :class:`UdpDatagram` — a host datagram too big for one frame (netstack
  fragments it); ``addr``/``port`` are the host source as the socket
  reported it (not mapped: netstack's UdpReceived).  At most UDP_BIG_MAX per
  host_readable call;
* :class:`UdpError` — an ICMP error was queued on a UDP socket (EPOLLERR, or
  sendto/recvfrom failed with it): the datapath reads the error queue itself
  (at most UDP_ERRORS_MAX entries per call; an EPOLLERR stays raised until
  it is empty) and hands up each ICMP-origin entry; the edge gives it to
  netstack as UdpFailed.

TCP fast path, exactly (both implementations; the parity tests hold them to
it).  A guest frame is taken only if: vnet + Ethernet + IPv4 without options
or fragmentation (header checksum verified), or IPv6 with TCP/UDP as the
first next header; it belongs to an installed flow (key: proto, guest
addr/port, remote addr/port) and is addressed to the flow's MAC; its
checksum is vouched for by the vnet header (NEEDS_CSUM or DATA_VALID) or
verifies (else it is dropped, ``dp.bad_checksum``).  A TCP segment must
have exactly ACK or ACK|PSH and, if the flow uses timestamps, exactly the
option block NOP NOP TS (else none): otherwise Ejected(segment) + Frame.

1. PAWS (ts flows): TSval older than TS.Recent (unless TS.Recent is idle
   for 24 days, RFC 7323 §5.5) → ACK, drop (``dp.paws``).  Then TS.Recent =
   TSval when SEG.SEQ <= RCV.NXT (RFC 7323 §4.3).
2. ACK: beyond snd_max → ACK, drop (``dp.ack_unsent``; as netstack does, no
   ejection); older than snd_una − max(max_snd_wnd, 65535) → Ejected(segment);
   advancing → the acked bytes are discarded from the host socket (recv
   MSG_TRUNC), snd_una moves (snd_nxt with it if behind), RTT sampled from
   a non-zero TSecr (RFC 6298, RTO floor 200 ms; flows without timestamps
   keep their RTO), the retransmission timer re-armed (or stopped when all
   is acked), the retry count and duplicate count reset; equal, no payload,
   same window, window open, data in flight → duplicate; the third rewinds
   snd_nxt to snd_una (go-back-N, ``dp.fast_retransmits``).  Window update
   per RFC 9293 (snd_wl1/snd_wl2), before the duplicate test counts.
3. Payload at rcv_nxt (the part of an overlapping retransmission past
   rcv_nxt too; nothing is trimmed to the window): written to the host
   socket (send, MSG_DONTWAIT|MSG_NOSIGNAL); rcv_nxt advances by what it
   took (forwarder rule: only that is ACKed); EAGAIN takes nothing;
   EPIPE/ECONNRESET/other errors → host reset (see "Closing").  Out of order → ACK,
   drop (``dp.out_of_order``); entirely old → ACK, drop (``dp.duplicate``).
   A segment with payload at or across rcv_nxt marks the flow ACK-pending.
   The ACKs of rules 1–3 go out at once (they are the duplicate ACKs the
   guest's fast retransmit counts); ACK-pending ones once per flow per batch.
4. Window (every segment we send): host space = sndbuf − wmem_queued from
   SO_MEMINFO (truesize units: the kernel's own sk_stream_memory_free test),
   less 1/8 for the per-byte overhead — SO_SNDBUF − SIOCOUTQ counts bytes
   and over-promises, so that the guest's data found the socket full — read
   again after a short write, on EPOLLOUT, or while it is below rcv_buf_max
   (a whole write of w bytes only lowers the known space by w + w/8 + 1024:
   no getsockopt per segment while the space is comfortably larger);
   window = min(host space, rcv_buf_max, 0xFFFF << rcv_wscale); rcv_adv moves right only, and only by at least
   min(our MSS, rcv_buf_max/2, largest host space/2) (receiver SWS
   avoidance, netstack's rule); the window field is rounded up to the scale.
   After a flush that leaves less than that step open, EPOLLOUT is watched:
   when it fires it is dropped and, if the window would open, a window
   update is sent.
5. Host → guest: while the guest's window (snd_una + snd_wnd − snd_nxt) and
   the in-flight cap (INFLIGHT_MAX = 1 MiB, netstack's send buffer) allow
   (and, with data in flight, at least one effective MSS: sender SWS
   avoidance): MSG_PEEK the next bytes (SO_PEEK_OFF keeps the offset at
   snd_nxt − snd_una; without it, the in-flight bytes are peeked into a
   scratch buffer in front), at most one GSO frame's worth (65535 −
   headers), build one frame (ACK|PSH, gso_size = MSS − 12 with timestamps,
   NEEDS_CSUM) and write it.  A short peek ends the round unless the host
   has shut down its side (EPOLLRDHUP seen), when peeking goes on to find
   the end.  A round that ended at the end of the host's data (a short
   peek, EAGAIN, or nothing beyond the flight) leaves the flow drained: an
   ACK then only drops the acknowledged bytes and peeks no further (nothing
   new can be there without an event), unless the host's EOF or FIN is
   involved; a changed window, a host event or a retransmission still
   start a round.  Peek returns 0: the host's EOF (the fallback sees it only once
   nothing is in flight), see "Closing".  Host sockets are watched edge-triggered
   (EPOLLIN|EPOLLRDHUP|EPOLLET): new host data is an event; data that waits
   for the guest's window is picked up by the ACK that opens it.  Closed
   window with nothing in flight and host data (FIONREAD) or EOF waiting →
   a persist timer (one RTO) → Ejected(zero_window) unless the window opens
   first; an idle flow behind a closed window stays.
6. RTO expiry with data in flight: go-back-N, RTO doubled (≤ 60 s); the
   MAX_RTO_RETRIES-th consecutive expiry → Ejected(timeout) instead; an
   expiry while the guest's window is closed → Ejected(zero_window).
Handshake: a passive open may be installed in SYN_RECEIVED (``TcpFlow.state``)
once netstack sent its first SYN-ACK — before that frame reaches the TAP, so
the guest's answer finds the flow here: snd_una + 1 == snd_nxt == snd_max
(only our SYN is outstanding); the retransmission timer is armed at
``now`` + rto.  A segment the fast path takes (flags, options and checksum as
above) that is exactly the guest's ACK of it — SEG.SEQ = rcv_nxt, SEG.ACK =
snd_max, no FIN, passing PAWS — completes the handshake as netstack's
SYN_RECEIVED rule does: RTT sampled from a non-zero TSecr (without
timestamps: the time since the timer was armed, our SYN-ACK never having
been retransmitted here — Karn), snd_una = SEG.ACK, snd_wnd = max_snd_wnd = the
scaled window, snd_wl1/snd_wl2 = SEG.SEQ/SEG.ACK, timer stopped →
ESTABLISHED; the segment then goes on through rules 1–3 (its payload goes
to the host).  Any other segment: Ejected(segment) + Frame (a retransmitted
SYN, a wrong ACK, a FIN...; an exact RST ends the flow as below).  Nothing
is sent toward the guest before that (host data and EOF wait: output starts
with the handshake's end).  The timer's expiry: Ejected(timeout) with state
SYN_RECEIVED, ``send_bytes`` empty — netstack retransmits the SYN-ACK (its
own timer is due), it does not give up.  A failed host socket meanwhile
resets as below.
A port forward's active open may be installed in SYN_SENT the same way,
before its SYN is written, when that SYN offered timestamps and window
scaling: the TCB says what it offered (``ts_ok`` true, ``rcv_wscale`` our
shift, ``mss`` a placeholder); snd_una + 1 == snd_nxt == snd_max; timer as
above.  The guest's SYN-ACK is taken when it is exactly SYN|ACK with SEG.ACK
= snd_max, no payload, and options that parse (EOL, NOP, then kind/length
with MSS length 4, WS length 3, TS length 10, other kinds skipped by their
length ≥ 2 within the header) carrying WS (shift ≤ 14) and TS: irs =
SEG.SEQ, rcv_nxt = rcv_adv = SEG.SEQ + 1, TS.Recent = its TSval,
snd_wscale = its shift, mss = max(88, min(our MSS, its MSS option or 536
(IPv4) / 1220 (IPv6))) — netstack's _negotiate —, cwnd = as many segments
of the negotiated MSS as the TCB's cwnd held of ours (RFC 6928's initial
window, netstack's _established), snd_wnd = max_snd_wnd =
the window field unscaled (RFC 7323 §2.2), snd_wl1/snd_wl2 = SEG.SEQ/SEG.ACK,
RTT from a non-zero TSecr, snd_una = SEG.ACK, timer stopped → ESTABLISHED;
our ACK is pending (it rides on the first data frame when host data waits).
Anything else — RST, a bare SYN (simultaneous open), a SYN-ACK without TS or
WS, with payload or with malformed options — is Ejected(segment) + Frame;
the timer's expiry is Ejected(timeout) with state SYN_SENT (netstack
retransmits the SYN).
Closing (netstack's rules, netstack/tcp/endpoint.py "Closing"; the fast
path takes exactly ACK, ACK|PSH, and those with FIN, plus RST):
* the guest's FIN is taken once every byte before it went to the host
  socket (else the guest retransmits the rest with it): shutdown(SHUT_WR),
  rcv_nxt covers it, it is ACKed with the batch (ESTABLISHED → CLOSE_WAIT,
  FIN_WAIT_1 → CLOSING, FIN_WAIT_2 → TIME_WAIT).  Data after it is ACKed
  and dropped (``dp.rx_after_fin``), a retransmitted FIN is a duplicate;
* the host's EOF (peek returns 0) becomes our FIN once every byte before it
  is acknowledged — into a closed window too — retransmitted like data
  (ESTABLISHED → FIN_WAIT_1, CLOSE_WAIT → LAST_ACK); its ACK moves
  FIN_WAIT_1 → FIN_WAIT_2, CLOSING → TIME_WAIT, and ends LAST_ACK:
  Closed(fin);
* TIME_WAIT: Closed(fin) at once (the socket is the edge's to close); the
  flow keeps its slot without a socket for TIME_WAIT_S, restarted by a
  retransmission from the guest (re-ACKed); a RST ends it silently, a
  segment with SYN too and is a slow Frame (a new incarnation: the guest's
  SYN, or its SYN|ACK to a forward netstack opened on the same key).  An
  install with its key, or into a full table, recycles a TIME_WAIT flow
  first (``dp.time_wait_reused`` / ``dp.time_wait_ended``);
* a RST from the guest exactly at rcv_nxt (RFC 5961 §3.2) ends the flow:
  Closed(reset), or Closed(fin) in CLOSING/LAST_ACK when only our FIN was
  unacknowledged;
* a failed host socket (send, peek, EPOLLERR with SO_ERROR): RST|ACK
  <SEQ=SND.NXT, ACK=RCV.NXT>, window 0, no options, to the guest (in
  SYN_SENT nothing: the guest has not answered our SYN, RFC 9293 ABORT);
  Closed(host_reset, errno).

Frames toward the guest: vnet header as netstack/frames.py builds it
(NEEDS_CSUM with the folded pseudo-header seed, GSO TCPV4/TCPV6 when the
payload exceeds gso_size, hdr_len = all headers then), IPv4 with DF, TTL 64
and identification 0 (RFC 6864 §4.1: atomic datagrams), IPv6 hop limit 64;
pure ACKs have seq = snd_max.
An ejected flow's export matches netstack.tcp.EndpointExport: the TCB dict
(every field of netstack.tcp.Tcb, updated), ``send_bytes`` = the
unacknowledged bytes [snd_una, snd_max) read out of the socket (should the
socket have lost them — a reset — snd_nxt/snd_max are cut back to what was
read), ``to_host`` empty, ``host_eof``, ``host_blocked`` False,
``edge_credit`` 0.

UDP fast path: a guest datagram of an installed flow (key: guest addr/port)
to an ordinary destination is sent with sendto (destination rewritten by
``forward_map``; a USO frame, gso_type UDP_L4, is cut into gso_size
datagrams; EAGAIN drops and counts; ECONNREFUSED/EHOSTUNREACH/ENETUNREACH →
UdpError); a host datagram is framed with the source rewritten by
``reverse_map`` (checksum offload), or handed up as UdpDatagram when it does
not fit the MTU.  At most UDP_RECV_BUDGET datagrams per socket per call
(the socket is watched level-triggered).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

TAP_READ_BUDGET = 256
INFLIGHT_MAX = 1 << 20
MAX_RTO_RETRIES = 8
HOST_EVENTS_MAX = 64  # epoll events per host_readable call
UDP_RECV_BUDGET = 64  # datagrams per UDP socket per host_readable call
UDP_BIG_MAX = 64  # UdpDatagram items per host_readable call
UDP_ERRORS_MAX = 16  # error-queue entries read per call (native: UDP_ERRORS_MAX)
RTO_MIN_S = 0.2
RTO_MAX_S = 60.0
CLOCK_GRANULARITY_S = 0.001
PAWS_IDLE_S = 24 * 86400
TIME_WAIT_S = 2.0  # netstack/tcp/config.py time_wait_s (and why)

EJECT_REASONS = ("segment", "host_eof", "host_error", "timeout", "zero_window", "requested")
CLOSE_HOWS = ("fin", "reset", "host_reset")  # native/slirpnet.h enum sn_dp_how

# The counters of stats(), in the order of native/slirpnet.h's enum sn_dp_stat.
STAT_NAMES = (
    "dp.tap_frames",
    "dp.tap_read_errors",
    "dp.slow_frames",
    "dp.malformed",
    "dp.bad_checksum",
    "dp.paws",
    "dp.ack_unsent",
    "dp.duplicate",
    "dp.out_of_order",
    "dp.fast_retransmits",
    "dp.rto_expiries",
    "dp.acks",
    "dp.tcp_to_host_bytes",
    "dp.tcp_to_guest_bytes",
    "dp.tcp_frames_to_guest",
    "dp.host_short_writes",
    "dp.udp_to_host",
    "dp.udp_to_guest",
    "dp.udp_too_big",
    "dp.udp_send_eagain",
    "dp.udp_send_errors",
    "dp.tap_write_eagain",
    "dp.tap_write_errors",
) + tuple("dp.ejected_" + r for r in EJECT_REASONS) + (
    "dp.queue_stalls",
    "dp.records_lost",
    "dp.fin_from_guest",
    "dp.fin_to_guest",
    "dp.rst_to_guest",
) + tuple("dp.closed_" + h for h in CLOSE_HOWS) + (
    "dp.time_wait_ended",
    "dp.time_wait_reused",
    "dp.rx_after_fin",
    "dp.udp_icmp_errors",
)


@dataclass(frozen=True, slots=True)
class TcpFlow:
    """What install_tcp needs: an ESTABLISHED flow with nothing in flight, or
    a handshake with only our SYN-ACK (SYN_RECEIVED) or SYN (SYN_SENT) out
    (see "Handshake")."""

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
    state: str = "ESTABLISHED"  # or "SYN_RECEIVED", "SYN_SENT"


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
    state: str = "ESTABLISHED"  # a netstack.tcp.State name (never TIME_WAIT)


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection ended in the datapath: netstack forgets the flow, the
    edge closes its socket (with RST for ``reset``).  ``how``: ``fin`` (both
    FINs done), ``reset`` (the guest reset it), ``host_reset`` (the host
    socket failed with ``errno``; the guest got a RST)."""

    flow: int
    how: str
    errno: int


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    flow: int
    addr: bytes
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UdpError:
    """An ICMP error the datapath read from the flow's socket's error queue:
    the datagram to ``addr``/``port`` (host address, unmapped) failed with
    ``errno`` (netstack's UdpFailed)."""

    flow: int
    errno: int
    addr: bytes
    port: int


@dataclass(frozen=True, slots=True)
class TapError:
    """Threaded mode: the datapath thread's TAP read failed for good (errno)."""

    errno: int


IP_RECVERR = 11
IPV6_RECVERR = 25
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err


def read_icmp_errors(sock: socket.socket, limit: int = UDP_ERRORS_MAX) -> list[tuple[int, bytes, int]]:
    """Empty (up to ``limit`` entries of) a UDP socket's error queue
    (IP_RECVERR): ``(errno, destination address, destination port)`` of each
    ICMP error, in order; other entries are dropped.  A pending error with
    nothing queued is cleared (SO_ERROR), so that EPOLLERR stops."""
    errors = []
    read_any = False
    for _ in range(limit):
        try:
            _, ancdata, _, dest = sock.recvmsg(0, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except OSError:  # EAGAIN: empty
            break
        read_any = True
        for level, kind, data in ancdata:
            if (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
                ee_errno, origin = _EE.unpack_from(data)[:2]
                if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6) and dest:
                    errors.append((ee_errno, socket.inet_pton(sock.family, dest[0].partition("%")[0]), dest[1]))
    if not read_any:
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return errors


def read_send_bytes(fd: int, n: int, tcb: dict) -> bytes:
    """Read the ``n`` unacknowledged bytes of an ejected flow out of its socket
    (they are at the head of its receive queue).  Should fewer be there (the
    connection was reset), ``tcb``'s snd_nxt/snd_max are cut back to match."""
    parts = []
    got = 0
    while got < n:
        try:
            chunk = os.read(fd, n - got)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    if got < n:
        end = (tcb["snd_una"] + got) & 0xFFFFFFFF
        tcb["snd_max"] = end
        if ((end - tcb["snd_nxt"]) & 0xFFFFFFFF) >= 1 << 31:
            tcb["snd_nxt"] = end
    return b"".join(parts)


DATAPATH_KINDS = ("native", "native-sync", "python", "off")


def datapath_kind(environ=os.environ) -> str:
    """$SLIRPNET_DATAPATH, checked: one of DATAPATH_KINDS (default native).
    ``native-sync`` is native without its thread; ``off``: no datapath, the
    core moves every byte itself."""
    kind = environ.get("SLIRPNET_DATAPATH") or "native"
    if kind not in DATAPATH_KINDS:
        raise ValueError(f"SLIRPNET_DATAPATH must be one of {', '.join(DATAPATH_KINDS)}, not {kind!r}")
    return kind


def open_datapath(kind: str, **kwargs):
    """The datapath ``kind`` names (native or python; native falls back to
    python when the C module is not built)."""
    if kind == "native":
        try:
            from .native import NativeDatapath
        except ImportError:
            kind = "python"
        else:
            return NativeDatapath(**kwargs)
    if kind != "python":
        raise ValueError(f"no datapath {kind!r}: native or python")
    from .python import PythonDatapath

    return PythonDatapath(**kwargs)
