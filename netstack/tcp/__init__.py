"""TCP toward the guest: NAT termination of guest connections onto host sockets.

Interface to the rest of the stack
----------------------------------
Everything goes through one :class:`TcpLayer` per stack (sans-IO: ``now``
is always an argument, in seconds)::

    layer = TcpLayer(counters, table=flow_table, config=TcpConfig(mtu=...),
                     policy=policy, rng=random.Random(seed))

Inputs

* ``layer.segment_from_guest(now, link, src_addr, dst_addr, view, datagram=None)
  -> Disposition`` for every TCP segment from the guest.  ``link`` is the
  guest interface id (part of the flow key, so several guest interfaces
  fit); addresses are packed bytes (4 = IPv4, 16 = IPv6); ``view`` is a
  :class:`netstack.wire.tcp.TcpView` over the IP payload, whose checksum the
  caller has verified (or the vnet header vouched for).  ``datagram``, if
  given, is the whole IP datagram: a SYN that opens a flow keeps its first
  128 bytes to be quoted if the connect fails with an ICMP error.  64 KiB GSO
  super-segments from the guest are ordinary segments here.  The call never
  raises on bad input; the returned :class:`Disposition` is informational
  (RSTs and ICMP requests are already queued).
* ``layer.event_from_host(now, event)`` for the TCP events of
  netstack/events.py (TcpConnected, TcpConnectFailed, TcpSent, TcpWritable,
  TcpReceived, TcpHostEof, TcpHostReset).
* ``layer.open_to_guest(now, link, guest_addr, guest_port, src_addr,
  src_port, send_space) -> flow id | None`` for a port forward whose host
  connection the edge accepted (None: refused, close the socket).
* ``layer.poll(now)`` when ``layer.next_deadline()`` (absolute time or None)
  has passed; waking early is harmless.

Outputs (drain after each input)

* ``layer.drain_segments() -> list[TcpSegment]``: segments for the guest,
  ``TcpSegment(link, src_addr, dst_addr, header: TcpHeader, payload: bytes,
  gso_size: int)``.  ``gso_size`` > 0 means "one GSO frame, cut at this many
  payload bytes" (notes/tap-offloads.md); 0 for a segment of at most one MSS.
* ``layer.drain_actions()``: edge actions (OpenTcp, SendTcp, ReadTcp,
  ShutdownTcp, CloseTcp, WatchTcpWritable), in order.
* ``layer.drain_unreachables() -> list[IcmpUnreachable]``: ICMP destination
  unreachable requests the stack turns into ICMP/ICMPv6 toward the guest
  (``reason`` NET or HOST, the guest's SYN header and datagram quote).

Edge contract (beyond netstack/actions.py): at most one SendTcp per flow is
outstanding (the next waits for TcpSent, or for TcpWritable after a short
write); every flow ends with exactly one CloseTcp (also after
TcpConnectFailed; the edge ignores one for a socket it already dropped);
events for unknown flows are counted and ignored.

Destination policy (not ours): ``policy(dst_addr, dst_port)`` returns the
host ``(addr, port)`` to connect to, or a :class:`Refusal` (RESET,
NET_UNREACHABLE, HOST_UNREACHABLE, DROP).  Default: identity.

Hand-off to the C datapath: ``layer.park(flow_id) -> EndpointExport | None``
detaches an ESTABLISHED flow (TCB + unacknowledged send bytes + bytes still
queued toward the host); ``layer.resume(now, flow_id, export)`` takes it back.

Initial sequence numbers and TSval offsets (RFC 6528 §3): a keyed hash of
the 4-tuple (the key drawn once from ``rng``) plus, for the ISS, a 4 µs clock
taken from ``now``.  A new connection on a 4-tuple thus starts above the
previous one in sequence space and in timestamps, so a guest still holding
the tuple in TIME_WAIT accepts the SYN (port forwards reuse host client ports
all the time).

Flow table overflow: a new flow (guest SYN or port forward) first recycles
the least recently active TIME_WAIT flow; without one the SYN is refused
with RST (``tcp.syn_refused_full``) and open_to_guest returns None.

Counters (``tcp.*``; drops unless noted)
----------------------------------------
Layer: wire ``tcp.truncated``/``tcp.bad_data_offset``/``tcp.bad_option``
(Malformed), ``tcp.rx_bad_port``, ``tcp.rx_bad_flags`` (SYN with FIN/RST),
``tcp.rx_rst_no_flow``, ``tcp.rx_no_flow`` (answered with RST),
``tcp.syn_refused_policy``, ``tcp.syn_refused_full``, ``tcp.rx_parked``,
``tcp.event_no_flow``, ``tcp.event_parked``, ``tcp.open_refused_busy``,
``tcp.open_refused_full``; events: ``tcp.passive_opens``,
``tcp.active_opens``, ``tcp.time_wait_recycled``, ``tcp.time_wait_reused``.

Endpoint: ``tcp.rx_syn_while_connecting``, ``tcp.rx_while_connecting``,
``tcp.rx_closed``, ``tcp.rx_no_syn``, ``tcp.rx_bad_ack``, ``tcp.rx_rst``
(accepted reset), ``tcp.rx_rst_out_of_window``, ``tcp.rx_rst_challenged``,
``tcp.rx_syn_challenged``, ``tcp.rx_syn_retransmit``,
``tcp.rx_syn_data_ignored``, ``tcp.rx_paws``, ``tcp.rx_out_of_window``,
``tcp.rx_no_ack``, ``tcp.rx_ack_unsent``, ``tcp.rx_old_ack``,
``tcp.rx_duplicate``, ``tcp.rx_beyond_window``, ``tcp.rx_out_of_order``
(kept, not a drop), ``tcp.rx_reorder_full``, ``tcp.rx_after_fin``,
``tcp.challenge_ack_limited``, ``tcp.event_unexpected``,
``tcp.host_overrun``; events: ``tcp.connect_refused``,
``tcp.connect_host_unreachable``, ``tcp.connect_net_unreachable``,
``tcp.connect_timeout``, ``tcp.host_reset``, ``tcp.retransmits``,
``tcp.fast_retransmits``, ``tcp.retransmit_timeout``,
``tcp.zero_window_probes``.

Modules: state.py (State, transition table), tcb.py (the exportable TCB),
seq.py (mod 2**32 arithmetic), buffers.py (bounded send buffer, reorder
queue), endpoint.py (one connection), layer.py (dispatch), output.py (values
out), config.py (tunables).
"""

from .config import TcpConfig
from .endpoint import EndpointExport, TcpEndpoint
from .layer import Disposition, Refusal, TcpLayer, identity_policy
from .output import IcmpUnreachable, TcpSegment, Unreachable
from .state import TRANSITIONS, IllegalTransition, State
from .tcb import Tcb

__all__ = [
    "Disposition",
    "EndpointExport",
    "IcmpUnreachable",
    "IllegalTransition",
    "Refusal",
    "State",
    "TRANSITIONS",
    "Tcb",
    "TcpConfig",
    "TcpEndpoint",
    "TcpLayer",
    "TcpSegment",
    "Unreachable",
    "identity_policy",
]
