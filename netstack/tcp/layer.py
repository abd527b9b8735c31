"""The TCP layer: guest segments → flow lookup → endpoint; host events; timers.

One dispatch point (STYLE.md §4): :meth:`TcpLayer.segment_from_guest` looks
the flow up in the flow table (O(1), netstack/nat.py) and hands the segment
to its :class:`~netstack.tcp.endpoint.TcpEndpoint`; segments that match no
flow either open one (a SYN, forwarder pattern) or are answered per RFC 9293
§3.10.7.1 (RST).  See netstack/tcp/__init__.py for the interface contract.
"""

from __future__ import annotations

import enum
import hashlib
import random
import struct
from typing import Callable

from ..actions import OpenTcp
from ..events import (
    TcpConnected,
    TcpConnectFailed,
    TcpHostEof,
    TcpHostReset,
    TcpReceived,
    TcpSent,
    TcpWritable,
)
from ..nat import PROTO_TCP, FlowKey, FlowState, FlowTable
from ..wire import Malformed
from ..wire.tcp import ACK, FIN, RST, SYN, TcpHeader, TcpView
from .config import TcpConfig
from .endpoint import ChallengeLimiter, EndpointExport, TcpEndpoint
from .output import IcmpUnreachable, TcpSegment, Unreachable
from .seq import MASK, gt
from .state import State

ISN_CLOCK_HZ = 250_000  # RFC 6528 §3: the ISN clock M ticks every 4 µs
DATAGRAM_QUOTE_MAX = 128  # bytes of a SYN's IP datagram kept for a later ICMP error


_OFFLOADABLE_STATES = frozenset({State.ESTABLISHED, State.SYN_RECEIVED, State.SYN_SENT})


class Disposition(enum.Enum):
    """What happened to one guest segment (for the caller's tracing)."""

    HANDLED = "handled"  # given to a flow, or opened one
    RESET = "reset"  # no flow (or refused): answered with RST
    UNREACHABLE = "unreachable"  # refused by policy with an ICMP request
    DROPPED = "dropped"  # dropped, and a counter says why
    MALFORMED = "malformed"  # option list unparseable; counted under the wire name


class Refusal(enum.Enum):
    """A destination policy's "no" (compat spec §4.2)."""

    RESET = "reset"  # RST: connection refused
    NET_UNREACHABLE = "net"  # ICMP net unreachable (e.g. --disable-host-loopback)
    HOST_UNREACHABLE = "host"  # ICMP host unreachable
    DROP = "drop"  # silence: the guest times out


Policy = Callable[[bytes, int], "tuple[bytes, int] | Refusal"]


def identity_policy(addr: bytes, port: int) -> tuple[bytes, int]:
    return addr, port


_FLOW_STATE = {
    State.CONNECTING: FlowState.OPENING,
    State.SYN_SENT: FlowState.OPENING,
    State.SYN_RECEIVED: FlowState.OPENING,
    State.ESTABLISHED: FlowState.ESTABLISHED,
    State.FIN_WAIT_1: FlowState.CLOSING,
    State.FIN_WAIT_2: FlowState.CLOSING,
    State.CLOSE_WAIT: FlowState.CLOSING,
    State.CLOSING: FlowState.CLOSING,
    State.LAST_ACK: FlowState.CLOSING,
    State.TIME_WAIT: FlowState.CLOSING,
}


class TcpLayer:
    __slots__ = (
        "table",
        "counters",
        "config",
        "policy",
        "_rng",
        "_isn_secret",
        "_segments",
        "_actions",
        "_unreachables",
        "_limiter",
        "_quotes",
        "_events",
        "offload_ready",
        "parked_drops",
    )

    def __init__(
        self,
        counters,
        *,
        table: FlowTable | None = None,
        config: TcpConfig | None = None,
        policy: Policy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.table = FlowTable() if table is None else table
        self.counters = counters
        self.config = TcpConfig() if config is None else config
        self.policy = identity_policy if policy is None else policy
        self._rng = random.SystemRandom() if rng is None else rng
        self._isn_secret = self._rng.getrandbits(128).to_bytes(16, "little")
        self._segments: list[TcpSegment] = []
        self._actions: list = []
        self._unreachables: list[IcmpUnreachable] = []
        self._limiter = ChallengeLimiter(self.config.challenge_acks_per_s)
        self._quotes: dict[int, tuple[bytes, bytes | None]] = {}  # flow id -> SYN quote while CONNECTING
        # Flows that just became offloadable (ESTABLISHED, idle): the edge may
        # park them for a datapath.  Cleared by whoever reads it; an edge
        # without a datapath sets it to None (nobody would ever clear it).
        self.offload_ready: set[int] | None = set()
        # Segments dropped because their flow was parked (``tcp.rx_parked``):
        # the owner compares it across a frame to hand such a segment on.
        self.parked_drops = 0
        self._events = {
            TcpConnected: self._connected,
            TcpConnectFailed: self._connect_failed,
            TcpSent: self._sent,
            TcpWritable: self._writable,
            TcpReceived: self._received,
            TcpHostEof: self._host_eof,
            TcpHostReset: self._host_reset,
        }

    # ------------------------------------------------------------------ output

    def drain_segments(self) -> list[TcpSegment]:
        out = self._segments[:]  # endpoints hold the list itself: empty it in place
        self._segments.clear()
        return out

    def drain_actions(self) -> list:
        out = self._actions[:]  # endpoints hold the list itself: empty it in place
        self._actions.clear()
        return out

    def drain_unreachables(self) -> list[IcmpUnreachable]:
        out = self._unreachables[:]  # endpoints hold the list itself: empty it in place
        self._unreachables.clear()
        return out

    # ------------------------------------------------------------------ lookups

    def endpoint(self, flow_id: int) -> TcpEndpoint | None:
        flow = self.table.get(flow_id)
        return None if flow is None or flow.key.proto != PROTO_TCP else flow.endpoint

    def _new_endpoint(self, flow_id: int, key: FlowKey, now: float) -> TcpEndpoint:
        iss, ts_offset = self._initial_numbers(key, now)
        return TcpEndpoint(
            flow=flow_id,
            link=key.link,
            guest_addr=key.guest_addr,
            guest_port=key.guest_port,
            remote_addr=key.remote_addr,
            remote_port=key.remote_port,
            config=self.config,
            counters=self.counters,
            segments=self._segments,
            actions=self._actions,
            limiter=self._limiter,
            iss=iss,
            ts_offset=ts_offset,
        )

    def _initial_numbers(self, key: FlowKey, now: float) -> tuple[int, int]:
        """(ISS, TSval offset) of a new connection on ``key``.

        RFC 6528 §3: ISS = M + F(4-tuple, secret) with M a 4 µs clock, and a
        TSval offset that is F'(4-tuple, secret) (as Linux's secure_tcp_ts_off).
        A new incarnation of a 4-tuple thus starts above the last one in
        sequence space and in timestamps, so a guest still holding that tuple
        in TIME_WAIT accepts our SYN (RFC 6191; Linux's
        tcp_timewait_state_process) instead of answering it with an ACK that
        costs a SYN retransmission (1 s).  Port forwards hit this all the time:
        the host reuses a client port, and the guest server closed first."""
        material = b"".join((
            struct.pack("!IBH", key.link, key.proto, key.guest_port), key.guest_addr,
            struct.pack("!H", key.remote_port), key.remote_addr,
        ))  # fmt: skip
        digest = hashlib.blake2s(material, key=self._isn_secret, digest_size=8).digest()
        iss = (int.from_bytes(digest[:4], "little") + int(now * ISN_CLOCK_HZ)) & MASK
        return iss, int.from_bytes(digest[4:], "little")

    def _after(self, flow, ep: TcpEndpoint, now: float) -> None:
        """Mirror the endpoint's state into the flow table; re-arm its timer."""
        table = self.table
        st = ep.state
        if st is State.CLOSED:
            table.remove(flow)
            self._quotes.pop(flow.id, None)
            return
        table.set_state(flow, _FLOW_STATE[st])
        if st is not State.CONNECTING:
            self._quotes.pop(flow.id, None)
        if st is State.TIME_WAIT and not flow.evictable:
            table.set_evictable(flow, True)
        elif (
            self.offload_ready is not None and st in _OFFLOADABLE_STATES and not ep.parked and ep.offloadable()
        ):  # fmt: skip
            self.offload_ready.add(flow.id)
        table.set_deadline(flow, ep.deadline())
        table.touch(flow, now)

    def _make_room(self) -> bool:
        """Overflow policy for a new TCP flow: recycle the least recently
        active TIME_WAIT flow; without one, refuse."""
        table = self.table
        if not table.is_full(PROTO_TCP):
            return True
        victim = table.evict_lru(PROTO_TCP)
        if victim is None:
            return False
        victim.endpoint.evict()
        self.counters.bump("tcp.time_wait_recycled")
        return True

    # ------------------------------------------------------------------ guest

    def segment_from_guest(
        self,
        now: float,
        link: int,
        src_addr: bytes,
        dst_addr: bytes,
        view: TcpView,
        datagram: memoryview | bytes | None = None,
    ) -> Disposition:
        """One TCP segment from the guest (checksum already verified by the caller).

        ``datagram`` (optional) is the whole IP datagram; its first
        DATAGRAM_QUOTE_MAX bytes are copied only for a SYN that opens a flow,
        to be quoted in a later ICMP error."""
        counters = self.counters
        try:
            h = TcpHeader.parse(view)
        except Malformed as err:
            counters.bump(err.counter)
            return Disposition.MALFORMED
        if h.src_port == 0 or h.dst_port == 0:
            counters.bump("tcp.rx_bad_port")
            return Disposition.DROPPED
        flags = h.flags
        if flags & SYN and flags & (FIN | RST):
            counters.bump("tcp.rx_bad_flags")
            return Disposition.DROPPED
        key = FlowKey(link, PROTO_TCP, src_addr, h.src_port, dst_addr, h.dst_port)
        flow = self.table.lookup(key)
        if flow is not None:
            ep = flow.endpoint
            if ep.parked:
                counters.bump("tcp.rx_parked")
                self.parked_drops += 1
                return Disposition.DROPPED
            if ep.state is State.TIME_WAIT and flags & SYN and not flags & ACK and self._may_reuse(ep, h):
                # RFC 9293 §3.6.1 / RFC 6191: a new incarnation ends TIME_WAIT
                counters.bump("tcp.time_wait_reused")
                ep.evict()
                self._after(flow, ep, now)
            else:
                ep.segment_from_guest(now, h, view.payload)
                self._after(flow, ep, now)
                return Disposition.HANDLED
        return self._no_flow(now, key, h, view, datagram)

    @staticmethod
    def _may_reuse(ep: TcpEndpoint, h: TcpHeader) -> bool:
        t = ep.tcb
        if t.ts_ok and h.timestamp is not None:
            return gt(h.timestamp[0], t.ts_recent)
        return gt(h.seq, t.rcv_nxt)

    def _no_flow(self, now: float, key: FlowKey, h: TcpHeader, view: TcpView, datagram) -> Disposition:
        counters = self.counters
        flags = h.flags
        if flags & RST:
            counters.bump("tcp.rx_rst_no_flow")
            return Disposition.DROPPED
        if not flags & SYN or flags & ACK:
            counters.bump("tcp.rx_no_flow")
            self._reset_for(key, h, len(view.payload))
            return Disposition.RESET
        decision = self.policy(key.remote_addr, key.remote_port)
        if isinstance(decision, Refusal):
            counters.bump("tcp.syn_refused_policy")
            if decision is Refusal.RESET:
                self._reset_for(key, h, len(view.payload))
                return Disposition.RESET
            if decision is Refusal.DROP:
                return Disposition.DROPPED
            reason = Unreachable.HOST if decision is Refusal.HOST_UNREACHABLE else Unreachable.NET
            self._unreachables.append(
                IcmpUnreachable(
                    key.link,
                    key.guest_addr,
                    key.remote_addr,
                    reason,
                    bytes(view.buf[: view.header_len]),
                    None if datagram is None else bytes(datagram[:DATAGRAM_QUOTE_MAX]),
                )
            )
            return Disposition.UNREACHABLE
        host_addr, host_port = decision
        if not self._make_room():
            counters.bump("tcp.syn_refused_full")
            self._reset_for(key, h, len(view.payload))
            return Disposition.RESET
        flow = self.table.insert(key, now, host_addr=host_addr, host_port=host_port)
        ep = flow.endpoint = self._new_endpoint(flow.id, key, now)
        ep.open_passive(now, h)
        self._quotes[flow.id] = (
            bytes(view.buf[: view.header_len]),
            None if datagram is None else bytes(datagram[:DATAGRAM_QUOTE_MAX]),
        )
        self._actions.append(OpenTcp(flow.id, host_addr, host_port))
        counters.bump("tcp.passive_opens")
        self._after(flow, ep, now)
        return Disposition.HANDLED

    def _reset_for(self, key: FlowKey, h: TcpHeader, plen: int) -> None:
        """RFC 9293 §3.10.7.1: the RST answering a segment that has no connection."""
        if h.flags & ACK:
            hdr = TcpHeader(h.dst_port, h.src_port, h.ack, 0, RST, 0)
        else:
            seg_len = plen + (1 if h.flags & SYN else 0) + (1 if h.flags & FIN else 0)
            hdr = TcpHeader(h.dst_port, h.src_port, 0, (h.seq + seg_len) & MASK, RST | ACK, 0)
        self._segments.append(TcpSegment(key.link, key.remote_addr, key.guest_addr, hdr, b"", 0))

    # ------------------------------------------------------------------ host

    def open_to_guest(
        self,
        now: float,
        link: int,
        guest_addr: bytes,
        guest_port: int,
        src_addr: bytes,
        src_port: int,
        send_space: int,
    ) -> int | None:
        """Port forward: the edge accepted a host connection; open toward
        guest_addr:guest_port, appearing to come from src_addr:src_port.

        Returns the flow id (the edge binds the accepted socket to it), or
        None when refused — the key is in use by a live flow, or the table is
        full — and the edge closes the socket.  Failure later (guest RST,
        SYN time-out) comes as CloseTcp(flow, reset=True)."""
        key = FlowKey(link, PROTO_TCP, guest_addr, guest_port, src_addr, src_port)
        table = self.table
        existing = table.lookup(key)
        if existing is not None:
            if existing.endpoint.state is not State.TIME_WAIT:
                self.counters.bump("tcp.open_refused_busy")
                return None
            self.counters.bump("tcp.time_wait_reused")
            existing.endpoint.evict()
            self._after(existing, existing.endpoint, now)
        if not self._make_room():
            self.counters.bump("tcp.open_refused_full")
            return None
        flow = table.insert(key, now)
        ep = flow.endpoint = self._new_endpoint(flow.id, key, now)
        ep.open_active(now, send_space)
        self.counters.bump("tcp.active_opens")
        self._after(flow, ep, now)
        return flow.id

    def event_from_host(self, now: float, event) -> None:
        """An event of netstack/events.py about one of our flows."""
        flow = self.table.get(event.flow)
        if flow is None or flow.key.proto != PROTO_TCP:
            self.counters.bump("tcp.event_no_flow")
            return
        ep = flow.endpoint
        if ep.parked:
            self.counters.bump("tcp.event_parked")
            return
        self._events[type(event)](now, flow, ep, event)
        self._after(flow, ep, now)

    def _connected(self, now, flow, ep, ev) -> None:
        ep.host_connected(now, ev.send_space)

    def _connect_failed(self, now, flow, ep, ev) -> None:
        self._unreachable(flow, ep.host_connect_failed(now, ev.errno))

    def _unreachable(self, flow, reason: Unreachable | None) -> None:
        if reason is None:
            return
        header, datagram = self._quotes.pop(flow.id, (b"", None))
        key = flow.key
        self._unreachables.append(IcmpUnreachable(key.link, key.guest_addr, key.remote_addr, reason, header, datagram))

    def _sent(self, now, flow, ep, ev) -> None:
        ep.host_sent(now, ev.accepted, ev.send_space)

    def _writable(self, now, flow, ep, ev) -> None:
        ep.host_writable(now, ev.send_space)

    def _received(self, now, flow, ep, ev) -> None:
        ep.host_received(now, ev.data)

    def _host_eof(self, now, flow, ep, ev) -> None:
        ep.host_eof(now)

    def _host_reset(self, now, flow, ep, ev) -> None:
        self._unreachable(flow, ep.host_reset(now, ev.errno))

    # ------------------------------------------------------------------ timers

    def poll(self, now: float) -> None:
        for flow in self.table.due(PROTO_TCP, now):
            ep = flow.endpoint
            ep.on_timer(now)
            self._after(flow, ep, now)

    def next_deadline(self) -> float | None:
        return self.table.next_deadline(PROTO_TCP)

    # ------------------------------------------------------------------ datapath hand-off

    def park(self, flow_id: int) -> EndpointExport | None:
        """Detach an ESTABLISHED flow for another owner (the C datapath), or a
        handshake whose first SYN-ACK (SYN_RECEIVED) or SYN (SYN_SENT) is out
        (the other owner may take the guest's answer; its timer stays with
        the endpoint, ours again if the handshake comes back unfinished).

        Returns None if the flow cannot be parked now (not ESTABLISHED, a
        write to the host in flight, segments waiting in the reorder queue,
        FIN pending).  While parked the flow stays in the table, its timer
        is off, and segments/events for it are dropped and counted
        (``tcp.rx_parked``, ``tcp.event_parked``): the owner must resume it
        before handing anything back."""
        flow = self.table.get(flow_id)
        if flow is None or flow.key.proto != PROTO_TCP or not flow.endpoint.can_export():
            return None
        ep = flow.endpoint
        exp = ep.export()
        ep.parked = True
        self.table.set_deadline(flow, None)
        return exp

    def forget(self, flow_id: int) -> None:
        """A parked flow ended with its other owner (the datapath closed the
        connection; the edge closes the socket): drop it from the table.
        Raises KeyError for a flow that is not parked."""
        flow = self.table.get(flow_id)
        if flow is None or flow.key.proto != PROTO_TCP or not flow.endpoint.parked:
            raise KeyError(flow_id)
        self.table.remove(flow)
        self._quotes.pop(flow_id, None)
        self.counters.bump("tcp.closed_by_datapath")

    def resume(self, now: float, flow_id: int, exp: EndpointExport) -> None:
        """Take a parked flow back from an export (its TCB possibly advanced)."""
        flow = self.table.get(flow_id)
        if flow is None or flow.key.proto != PROTO_TCP or not flow.endpoint.parked:
            raise KeyError(flow_id)
        ep = flow.endpoint
        ep.import_(now, exp)
        self._after(flow, ep, now)
