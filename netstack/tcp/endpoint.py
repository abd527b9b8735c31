"""One TCP connection toward the guest, terminated here and relayed to a host socket.

Theory of operation
-------------------
The endpoint speaks TCP (RFC 9293) with the guest and relays the byte
streams to a host socket through edge actions (netstack/actions.py) and
events (netstack/events.py).  It is sans-IO: every entry point takes ``now``
(seconds, float); output goes to two lists owned by the layer (segments for
the guest, actions for the edge); :meth:`deadline` says when
:meth:`on_timer` must run next.

Opening:

* passive (guest SYN) — forwarder pattern: CLOSED → CONNECTING (OpenTcp is
  issued by the layer); TcpConnected → SYN_RECEIVED (SYN-ACK) → guest ACK →
  ESTABLISHED.  Retransmitted SYNs while CONNECTING are ignored; the
  connect is abandoned after ``connect_timeout_s``.  A failed connect
  answers RST (ECONNREFUSED) or asks the layer for ICMP (see
  :meth:`host_connect_failed`).
* active (port forward) — CLOSED → SYN_SENT (SYN, retransmitted with
  backoff, ``syn_retries``) → ESTABLISHED on SYN-ACK; RST or time-out →
  CLOSED with CloseTcp(reset=True) so the edge drops the accepted socket.

Guest → host (backpressure, not buffering): in-order guest bytes are queued
and written with one SendTcp at a time; ``rcv_nxt`` (our ACK) advances only
when TcpSent says the host socket took the bytes.  The window offered is
the host socket's reported send space (capped by ``rcv_buf_max``); its
right edge never moves left (RFC 9293 §3.8.6.2.2), so the queue never holds
more than one window.  A short write waits for TcpWritable; when the window
is nearly closed and no write is pending, WatchTcpWritable asks the edge to
report the socket draining.  Segments beyond a hole wait in a bounded
reorder queue.  The guest's FIN becomes ShutdownTcp once every byte before
it is written, and only then is it acknowledged.

Host → guest: ReadTcp(credit) lets the edge read at most what fits the
guest's window and ``snd_buf_max`` minus what is already buffered (absolute
credit).  Bytes stay in the send buffer until the guest acknowledges them.
Segments carry up to ~64 KiB with ``gso_size`` = effective MSS.  TcpHostEof
becomes a FIN after the last byte.

Loss recovery: RFC 6298 RTO (200 ms floor, see config.py), Karn's rule or
RFC 7323 timestamps for samples, exponential backoff; RFC 5681 slow start
(byte counting: the guest is local), congestion avoidance, fast retransmit
on three duplicate ACKs and RFC 6582 NewReno partial-ACK recovery; go-back-N
after an RTO.  Zero windows are probed with one byte (RFC 9293 §3.8.6.1),
and the connection is never aborted while the guest keeps answering.

Robustness: RFC 7323 PAWS; RFC 5961 — a RST is accepted only at the exact
next sequence number (either our ACK point or the next byte expected, which
differ while bytes wait for the host), an in-window RST or any SYN in a
synchronized state draws a rate-limited challenge ACK, and ACKs older than
the largest window are challenged too.  Every early return bumps a counter.
Deviations, each for the forwarder's two ACK points (see _acceptable and
the TS.Recent update): a segment starting at the next expected byte is
always acceptable (its payload is trimmed to the window), one starting
between our ACK point and the next expected byte is a legitimate
retransmission, and TS.Recent follows the in-order point.

Bounds per flow: bytes toward the host <= the window offered (<=
``rcv_buf_max`` + one window-scale unit); send buffer <= ``snd_buf_max``;
reorder queue <= ``reorder_max_segments`` segments and ``rcv_buf_max``
bytes; one timer.

Not done (deliberately): SACK (so SACK-permitted is never offered), urgent
data (URG is ignored; the bytes are delivered inline), delayed ACKs (ACKs go
out when the host takes bytes, which batches them naturally), ECN, TCP Fast
Open (data on a SYN is not acknowledged; the guest resends it).

Closing: every flow ends with exactly one CloseTcp (graceful when both FINs
are done, reset=True on aborts, also after TcpConnectFailed — the edge
ignores a CloseTcp for a socket it already dropped).  A guest RST in
CLOSING/LAST_ACK when only our FIN is unacknowledged closes gracefully:
nothing was lost.  Our FIN may go out into a zero window.  TIME_WAIT lasts
``time_wait_s`` with all buffers freed, restarted by any retransmission
from the guest (our last ACK was lost).

Export/import: :meth:`export` snapshots an ESTABLISHED endpoint (TCB, the
unacknowledged+unsent send bytes, the bytes still queued toward the host,
a few flags) as an :class:`EndpointExport`; :meth:`import_` resumes from one.
That is the hand-off to and from the C datapath.  A passive open may also be
exported in SYN_RECEIVED right after its first SYN-ACK (the datapath then
takes the guest's ACK of it), and an active open in SYN_SENT right after its
first SYN (the datapath takes the guest's SYN-ACK): either comes back
finished (any importable state: the ESTABLISHED transition happens on
import) or unfinished, in the same state with its own TCB and retransmission
timer as they were (``_import_handshake``).
"""

from __future__ import annotations

import errno as errno_mod
import logging
from collections import deque
from dataclasses import dataclass

from ..actions import CloseTcp, ReadTcp, SendTcp, ShutdownTcp, WatchTcpWritable
from ..wire.tcp import ACK, FIN, PSH, RST, SYN, TcpHeader
from .buffers import ADDED, FULL, ReorderQueue, SendBuffer
from .config import (
    DEFAULT_MSS_V4,
    DEFAULT_MSS_V6,
    ETH_HEADER_LEN,
    MAX_FRAME_LEN,
    MIN_MSS,
    TCP_HEADER_LEN,
    TcpConfig,
    ip_header_len,
)
from .output import TcpSegment, Unreachable
from .seq import HALF, MASK, ge, gt, le, lt, sub
from .state import FIN_TAKEN, RECEIVING, SENDING, TRANSITIONS, IllegalTransition, State
from .tcb import Tcb

_log = logging.getLogger("netstack.tcp")

TS_OPTION_LEN = 12  # NOP NOP + kind/len + 2 x 32 bits (RFC 7323 Appendix A layout)
CLOCK_GRANULARITY_S = 0.001  # our TSval ticks in milliseconds (RFC 6298 "G")
CWND_MAX = 1 << 30
PAWS_IDLE_S = 24 * 86400  # a TS.Recent older than this is invalid (RFC 7323 §5.5)

# timer kinds (one timer per endpoint: the cases never overlap)
T_NONE = 0
T_RETRANSMIT = 1  # SYN, SYN-ACK, data or FIN outstanding
T_PERSIST = 2  # zero window, nothing outstanding, something to send
T_CONNECT = 3  # CONNECTING: the host connect may never complete
T_TIME_WAIT = 4

# What import_ accepts from another owner, and the states in which our FIN is out.
_IMPORTABLE = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING, State.LAST_ACK}
)
_FIN_SENT = frozenset({State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING, State.LAST_ACK})
_OUTPUT_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})


class ChallengeLimiter:
    """RFC 5961 §7: at most ``per_second`` challenge ACKs per layer per second."""

    __slots__ = ("per_second", "_window_start", "_left")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window_start = float("-inf")
        self._left = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._left = self.per_second
        if self._left <= 0:
            return False
        self._left -= 1
        return True


@dataclass(frozen=True, slots=True)
class EndpointExport:
    """An ESTABLISHED endpoint, detached: what another owner needs to continue.

    ``send_bytes`` starts at ``tcb['snd_una']`` (unacknowledged, then unsent
    bytes); ``to_host`` starts at ``tcb['rcv_nxt']`` (guest bytes accepted in
    order but not yet taken by the host socket).  ``edge_credit`` is the
    ReadTcp credit the edge currently holds."""

    tcb: dict
    state: State
    send_bytes: bytes
    to_host: bytes
    host_eof: bool
    host_blocked: bool
    edge_credit: int


class TcpEndpoint:
    __slots__ = (
        "flow",
        "link",
        "guest_addr",
        "guest_port",
        "remote_addr",
        "remote_port",
        "state",
        "tcb",
        "cfg",
        "counters",
        "parked",
        "_segs",
        "_acts",
        "_limiter",
        "_ip_hlen",
        "_our_mss",
        "_eff_mss",
        "_max_payload",
        "_rcv_wnd_max",
        "_snd",
        "_host_eof",
        "_fin_sent",
        "_fin_seq",
        "_to_host",
        "_to_host_len",
        "_host_inflight",
        "_host_blocked",
        "_watching",
        "_host_space_max",
        "_reorder",
        "_fin_pending",
        "_edge_credit",
        "_timer_kind",
        "_timer_at",
        "_retries",
        "_dupacks",
        "_in_recovery",
        "_probing",
        "_recover",
        "_rtt_seq",
        "_rtt_at",
        "_host_closed",
        "_syn",
        "_offer_ts",
        "_offer_ws",
    )

    def __init__(
        self,
        *,
        flow: int,
        link: int,
        guest_addr: bytes,
        guest_port: int,
        remote_addr: bytes,
        remote_port: int,
        config: TcpConfig,
        counters,
        segments: list,
        actions: list,
        limiter: ChallengeLimiter,
        iss: int,
        ts_offset: int,
    ) -> None:
        self.flow = flow
        self.link = link
        self.guest_addr = guest_addr
        self.guest_port = guest_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.state = State.CLOSED
        self.cfg = config
        self.counters = counters
        self.parked = False
        self._segs = segments
        self._acts = actions
        self._limiter = limiter
        t = self.tcb = Tcb()
        t.iss = t.snd_una = t.snd_nxt = t.snd_max = iss & MASK
        t.ts_offset = ts_offset & MASK
        t.rto = config.rto_initial_s
        self._ip_hlen = ip_header_len(remote_addr)
        self._our_mss = config.our_mss(remote_addr)
        self._snd = SendBuffer(config.snd_buf_max)
        self._host_eof = False
        self._fin_sent = False
        self._fin_seq = 0
        self._to_host: deque[bytes] = deque()
        self._to_host_len = 0
        self._host_inflight = 0
        self._host_blocked = False
        self._watching = False
        self._host_space_max = 0
        self._reorder = ReorderQueue(config.reorder_max_segments, config.rcv_buf_max)
        self._fin_pending = False
        self._edge_credit = 0
        self._timer_kind = T_NONE
        self._timer_at = 0.0
        self._retries = 0
        self._dupacks = 0
        self._in_recovery = False
        self._probing = False
        self._recover: int | None = None
        self._rtt_seq: int | None = None
        self._rtt_at = 0.0
        self._host_closed = False
        self._syn: TcpHeader | None = None
        self._offer_ts = False
        self._offer_ws = False
        self._negotiate(None, False, False)

    def __repr__(self) -> str:
        return f"TcpEndpoint(flow={self.flow}, state={self.state.name})"

    # ------------------------------------------------------------------ state

    def set_state(self, new: State) -> None:
        """The only place the state changes; an illegal move raises IllegalTransition."""
        old = self.state
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"flow {self.flow}: {old.name} -> {new.name}")
        self.state = new
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("flow %d: %s -> %s", self.flow, old.name, new.name)

    def deadline(self) -> float | None:
        if self.parked or self._timer_kind == T_NONE:
            return None
        return self._timer_at

    # ------------------------------------------------------- derived metrics

    def _negotiate(self, mss_opt: int | None, ts_ok: bool, ws_ok: bool) -> None:
        """Fix MSS, timestamps and window scaling from the handshake."""
        t = self.tcb
        default = DEFAULT_MSS_V4 if self._ip_hlen == 20 else DEFAULT_MSS_V6
        t.mss = max(MIN_MSS, min(self._our_mss, default if mss_opt is None else mss_opt))
        t.ts_ok = ts_ok
        if ws_ok:
            t.rcv_wscale = self.cfg.rcv_wscale
        else:
            t.rcv_wscale = t.snd_wscale = 0
        self._derive()

    def _derive(self) -> None:
        t = self.tcb
        opts = TS_OPTION_LEN if t.ts_ok else 0
        self._eff_mss = max(1, t.mss - opts)
        room = MAX_FRAME_LEN - ETH_HEADER_LEN - self._ip_hlen - TCP_HEADER_LEN - opts
        self._max_payload = max(self._eff_mss, room)
        self._rcv_wnd_max = min(self.cfg.rcv_buf_max, 0xFFFF << t.rcv_wscale)

    def _ts_now(self, now: float) -> int:
        return (int(now * 1000) + self.tcb.ts_offset) & MASK

    # -------------------------------------------------------------- opening

    def open_passive(self, now: float, syn: TcpHeader) -> None:
        """A guest SYN created this endpoint; the layer issues OpenTcp."""
        t = self.tcb
        t.irs = syn.seq
        t.rcv_nxt = t.rcv_adv = (syn.seq + 1) & MASK
        t.snd_wnd = syn.window  # never scaled in a SYN (RFC 7323 §2.2)
        t.snd_wl1 = syn.seq
        self._syn = syn
        self.set_state(State.CONNECTING)
        self._set_timer(T_CONNECT, now + self.cfg.connect_timeout_s)

    def open_active(self, now: float, send_space: int) -> None:
        """Port forward: connect toward the guest (SYN)."""
        t = self.tcb
        t.host_space = max(0, send_space)
        self._host_space_max = t.host_space
        t.snd_nxt = t.snd_max = (t.iss + 1) & MASK
        self._offer_ts = self.cfg.timestamps
        self._offer_ws = self.cfg.window_scaling
        self.set_state(State.SYN_SENT)
        self._send_syn(now, with_ack=False)
        self._set_timer(T_RETRANSMIT, now + self.tcb.rto)

    def _send_syn(self, now: float, with_ack: bool) -> None:
        t = self.tcb
        avail = min(t.host_space, self.cfg.rcv_buf_max, 0xFFFF)
        if with_ack:
            ts = (self._ts_now(now), t.ts_recent) if t.ts_ok else None
            ws = t.rcv_wscale if self._offer_ws else None
            flags, ack = SYN | ACK, t.rcv_nxt
            t.rcv_adv = (t.rcv_nxt + avail) & MASK
        else:
            ts = (self._ts_now(now), 0) if self._offer_ts else None
            ws = self.cfg.rcv_wscale if self._offer_ws else None
            flags, ack = SYN, 0
        hdr = TcpHeader(
            self.remote_port, self.guest_port, t.iss, ack, flags, avail, mss=self._our_mss, wscale=ws, timestamp=ts
        )
        self._segs.append(TcpSegment(self.link, self.remote_addr, self.guest_addr, hdr, b"", 0))
        if self._retries == 0:
            self._rtt_seq, self._rtt_at = (t.iss + 1) & MASK, now

    def host_connected(self, now: float, send_space: int) -> None:
        if self.state is not State.CONNECTING:
            self.counters.bump("tcp.event_unexpected")
            return
        syn = self._syn
        t = self.tcb
        t.host_space = max(0, send_space)
        self._host_space_max = t.host_space
        ts_ok = self.cfg.timestamps and syn.timestamp is not None
        ws_ok = self.cfg.window_scaling and syn.wscale is not None
        self._offer_ws = ws_ok
        if ts_ok:
            t.ts_recent = syn.timestamp[0]
            t.ts_recent_at = now
        if ws_ok:
            t.snd_wscale = syn.wscale
        self._negotiate(syn.mss, ts_ok, ws_ok)
        t.snd_nxt = t.snd_max = (t.iss + 1) & MASK
        self.set_state(State.SYN_RECEIVED)
        self._send_syn(now, with_ack=True)
        self._set_timer(T_RETRANSMIT, now + t.rto)

    def host_connect_failed(self, now: float, err: int) -> Unreachable | None:
        """The host connect failed: RST for ECONNREFUSED, else ICMP (returned)."""
        if self.state is not State.CONNECTING:
            self.counters.bump("tcp.event_unexpected")
            return None
        t = self.tcb
        result = None
        if err == errno_mod.ECONNREFUSED:
            self.counters.bump("tcp.connect_refused")
            self._send_rst(0, t.rcv_nxt)
        elif err == errno_mod.EHOSTUNREACH:
            self.counters.bump("tcp.connect_host_unreachable")
            result = Unreachable.HOST
        else:
            self.counters.bump("tcp.connect_net_unreachable")
            result = Unreachable.NET
        self._close(now, reset=True)
        return result

    def _established(self, now: float) -> None:
        t = self.tcb
        self.set_state(State.ESTABLISHED)
        self._syn = None
        t.cwnd = self.cfg.initial_cwnd_segments * self._eff_mss
        t.ssthresh = CWND_MAX
        self._retries = 0

    # ------------------------------------------------------ guest segments

    def segment_from_guest(self, now: float, h: TcpHeader, payload: memoryview) -> None:
        """Process one guest segment (the layer checked flags sanity and ports)."""
        st = self.state
        if st is State.CONNECTING:
            self._segment_connecting(now, h)
        elif st is State.SYN_SENT:
            self._segment_syn_sent(now, h, payload)
        elif st is State.CLOSED:
            self.counters.bump("tcp.rx_closed")
        else:
            self._segment_synced(now, h, payload)
            if self.state is not State.CLOSED:
                self._update_credit()
                self._update_timer(now)

    def _segment_connecting(self, now: float, h: TcpHeader) -> None:
        flags = h.flags
        t = self.tcb
        if flags & RST:
            if h.seq == t.rcv_nxt:
                self.counters.bump("tcp.rx_rst")
                self._close(now, reset=True)
            else:
                self.counters.bump("tcp.rx_rst_out_of_window")
        elif flags & SYN:
            # The guest retransmits its SYN while the host connect runs:
            # no second connection, no answer (forwarder pattern).
            self.counters.bump("tcp.rx_syn_while_connecting")
        else:
            self.counters.bump("tcp.rx_while_connecting")

    def _segment_syn_sent(self, now: float, h: TcpHeader, payload: memoryview) -> None:
        """RFC 9293 §3.10.7.3."""
        flags = h.flags
        t = self.tcb
        if flags & ACK and h.ack != t.snd_max:
            self.counters.bump("tcp.rx_bad_ack")
            if not flags & RST:
                self._send_rst(h.ack, None)
            return
        if flags & RST:
            if flags & ACK:
                self.counters.bump("tcp.rx_rst")
                self._close(now, reset=True)
            else:
                self.counters.bump("tcp.rx_rst_out_of_window")
            return
        if not flags & SYN:
            self.counters.bump("tcp.rx_no_syn")
            return
        t.irs = h.seq
        t.rcv_nxt = t.rcv_adv = (h.seq + 1) & MASK
        ts_ok = self._offer_ts and h.timestamp is not None
        ws_ok = self._offer_ws and h.wscale is not None
        self._offer_ws = ws_ok
        if ts_ok:
            t.ts_recent = h.timestamp[0]
            t.ts_recent_at = now
        if ws_ok:
            t.snd_wscale = h.wscale
        self._negotiate(h.mss, ts_ok, ws_ok)
        t.snd_wnd = t.max_snd_wnd = h.window
        t.snd_wl1 = h.seq
        if payload:
            self.counters.bump("tcp.rx_syn_data_ignored")
        if flags & ACK:
            t.snd_wl2 = h.ack
            self._rtt_on_ack(now, h, h.ack)
            t.snd_una = h.ack
            self._established(now)
            self._send_ack(now)
            self._set_timer(T_NONE, 0.0)
            self._update_credit()
            self._update_timer(now)
        else:
            # simultaneous open (RFC 9293 figure 8)
            self.set_state(State.SYN_RECEIVED)
            self._send_syn(now, with_ack=True)

    def _rx_end(self) -> int:
        """Next sequence number expected from the guest (bytes queued to the host
        and a FIN waiting for them included)."""
        t = self.tcb
        return (t.rcv_nxt + self._to_host_len + self._fin_pending) & MASK

    def _acceptable(self, seq: int, seg_len: int, rx_end: int) -> bool:
        """RFC 9293 §3.10.7.4 first check, with two allowances: a segment
        starting exactly at the next expected byte is always taken (its
        payload is trimmed to the window later), so zero-window probes and
        FINs get through; and one starting between our ACK point and the next
        expected byte is a retransmission of bytes still queued toward the
        host, which the guest rightly resends — its ACK field counts."""
        t = self.tcb
        if seq == rx_end or (le(t.rcv_nxt, seq) and lt(seq, rx_end)):
            return True
        wnd = sub(t.rcv_adv, rx_end)
        if wnd >= HALF or wnd == 0:
            return False
        if sub(seq, rx_end) < wnd:
            return True
        return seg_len > 0 and sub((seq + seg_len - 1) & MASK, rx_end) < wnd

    def _segment_synced(self, now: float, h: TcpHeader, payload: memoryview) -> None:
        t = self.tcb
        flags = h.flags
        seq = h.seq
        plen = len(payload)
        counters = self.counters
        ts = h.timestamp
        if flags & SYN and self.state is State.SYN_RECEIVED and seq == t.irs and not flags & ACK:
            # the guest did not get our SYN-ACK and retransmits its SYN; echo
            # the new TSval, or the guest would measure the whole wait as RTT
            counters.bump("tcp.rx_syn_retransmit")
            if t.ts_ok and ts is not None:
                t.ts_recent = ts[0]
                t.ts_recent_at = now
            self._send_syn(now, with_ack=True)
            return
        # PAWS (RFC 7323 §5.3)
        if (
            t.ts_ok
            and ts is not None
            and not flags & RST
            and lt(ts[0], t.ts_recent)
            and now - t.ts_recent_at < PAWS_IDLE_S  # RFC 7323 §5.5: TS.Recent goes stale
        ):
            counters.bump("tcp.rx_paws")
            self._send_ack(now)
            return
        rx_end = self._rx_end()
        if ts is not None and t.ts_ok and not flags & (RST | SYN) and le(seq, rx_end) and ge(ts[0], t.ts_recent):
            # RFC 7323 §5.3 R2, before the window check so that the ACK of a
            # duplicate echoes the retransmission's TSval.  The RFC compares
            # with Last.ACK.sent; ours lags the in-order point while bytes
            # wait for the host, so a hole-filling segment would never be
            # echoed and the guest's RTO would balloon: rx_end keeps the intent.
            t.ts_recent = ts[0]
            t.ts_recent_at = now
        if not self._acceptable(seq, plen + (flags & SYN and 1) + (flags & FIN and 1), rx_end):
            if flags & RST:
                counters.bump("tcp.rx_rst_out_of_window")
                return
            counters.bump("tcp.rx_out_of_window")
            if self.state is State.TIME_WAIT:
                # The guest still retransmits: our last ACK was lost.  Stay
                # (RFC 9293 restarts on a FIN; any retransmission shows it).
                self._set_timer(T_TIME_WAIT, now + self.cfg.time_wait_s)
            self._send_ack(now)
            return
        if flags & RST:
            # RFC 5961 §3.2: only an exact match resets; our ACK point and the
            # next expected byte both count as exact (they differ while bytes
            # wait for the host).
            if seq == rx_end or seq == t.rcv_nxt:
                counters.bump("tcp.rx_rst")
                # In CLOSING/LAST_ACK with every byte but our FIN acknowledged
                # (and the guest's FIN taken), nothing is lost: close the host
                # socket gracefully.  (Typically the guest's TIME_WAIT ended
                # before our retransmitted FIN arrived.)
                graceful = self.state in (State.CLOSING, State.LAST_ACK) and t.snd_una == self._fin_seq
                self._close(now, reset=not graceful)
            else:
                counters.bump("tcp.rx_rst_challenged")
                self._challenge_ack(now)
            return
        if flags & SYN:
            counters.bump("tcp.rx_syn_challenged")  # RFC 5961 §4.2
            self._challenge_ack(now)
            return
        if not flags & ACK:
            counters.bump("tcp.rx_no_ack")
            return
        ack = h.ack
        if self.state is State.SYN_RECEIVED:
            if not (lt(t.snd_una, ack) and le(ack, t.snd_max)):
                counters.bump("tcp.rx_bad_ack")
                self._send_rst(ack, None)
                return
            self._rtt_on_ack(now, h, ack)
            t.snd_una = ack
            t.snd_wnd = t.max_snd_wnd = h.window << t.snd_wscale
            t.snd_wl1, t.snd_wl2 = seq, ack
            self._established(now)
            self._set_timer(T_NONE, 0.0)
        elif not self._process_ack(now, h, seq, ack, plen):
            return
        need_ack = False
        st = self.state
        if plen or flags & FIN:
            if st in RECEIVING:
                need_ack = self._receive_text(now, seq, payload, bool(flags & FIN))
            else:
                # after the guest's FIN: nothing new can come
                if plen:
                    counters.bump("tcp.rx_after_fin")
                if st is State.TIME_WAIT:
                    self._set_timer(T_TIME_WAIT, now + self.cfg.time_wait_s)
                need_ack = True
        if self.state is not State.CLOSED:
            self._output(now, force_ack=need_ack)

    def _process_ack(self, now: float, h: TcpHeader, seq: int, ack: int, plen: int) -> bool:
        """ACK field processing (RFC 9293 §3.10.7.4 fifth, RFC 5681, RFC 6582).
        Returns False when the segment must be dropped."""
        t = self.tcb
        counters = self.counters
        if gt(ack, t.snd_max):
            counters.bump("tcp.rx_ack_unsent")
            self._send_ack(now)
            return False
        if lt(ack, (t.snd_una - max(t.max_snd_wnd, 0xFFFF)) & MASK):
            counters.bump("tcp.rx_old_ack")  # RFC 5961 §5.2
            self._challenge_ack(now)
            return False
        wnd = h.window << t.snd_wscale
        outstanding = t.snd_max != t.snd_una
        if ack == t.snd_una:
            dup = (
                outstanding
                and plen == 0
                and not h.flags & (SYN | FIN)
                and wnd == t.snd_wnd
                and t.snd_wnd > 0
            )
            self._update_window(seq, ack, wnd)
            if dup:
                self._duplicate_ack(now)
        elif gt(ack, t.snd_una):
            self._update_window(seq, ack, wnd)
            self._new_ack(now, h, ack)
            if self.state in (State.CLOSED, State.TIME_WAIT):
                return False
        else:
            self._update_window(seq, ack, wnd)  # old but within the RFC 5961 bound
        return True

    def _update_window(self, seq: int, ack: int, wnd: int) -> None:
        t = self.tcb
        if lt(t.snd_wl1, seq) or (t.snd_wl1 == seq and le(t.snd_wl2, ack)):
            if self._probing and wnd and ack == t.snd_una:
                # the window opened but our probe byte was refused: send it
                # again with the rest instead of leaving a hole
                self._probing = False
                t.snd_nxt = t.snd_una
            t.snd_wnd = wnd
            t.snd_wl1 = seq
            t.snd_wl2 = ack
            if wnd > t.max_snd_wnd:
                t.max_snd_wnd = wnd
        if t.snd_wnd == 0:
            self._retries = 0  # the guest answers: never abort on a zero window

    def _duplicate_ack(self, now: float) -> None:
        t = self.tcb
        self._dupacks += 1
        if self._in_recovery:
            t.cwnd = min(t.cwnd + self._eff_mss, CWND_MAX)  # RFC 5681 §3.2 (4)
        elif self._dupacks == 3 and self._recover is None:
            # RFC 5681 §3.2 (2)-(3), RFC 6582 §3.2 (1)
            self.counters.bump("tcp.fast_retransmits")
            flight = sub(t.snd_max, t.snd_una)
            t.ssthresh = max(flight // 2, 2 * self._eff_mss)
            self._in_recovery = True
            self._recover = t.snd_max
            self._retransmit_head(now)
            t.cwnd = t.ssthresh + 3 * self._eff_mss
            self._rtt_seq = None

    def _new_ack(self, now: float, h: TcpHeader, ack: int) -> None:
        t = self.tcb
        acked = sub(ack, t.snd_una)
        fin_acked = self._fin_sent and ack == (self._fin_seq + 1) & MASK
        self._rtt_on_ack(now, h, ack)
        self._snd.consume(acked - fin_acked)
        t.snd_una = ack
        if lt(t.snd_nxt, ack):
            t.snd_nxt = ack
        self._probing = False
        self._retries = 0
        self._dupacks = 0
        eff = self._eff_mss
        if self._in_recovery:
            if ge(ack, self._recover):
                # full ACK (RFC 6582 §3.2 (3))
                self._in_recovery = False
                self._recover = None
                t.cwnd = max(min(t.ssthresh, sub(t.snd_max, t.snd_una) + eff), eff)
            else:
                # partial ACK: the next hole is at snd_una
                self._retransmit_head(now)
                t.cwnd = max(t.cwnd - acked + eff, eff)
        else:
            if self._recover is not None and ge(ack, self._recover):
                self._recover = None
            if t.cwnd < t.ssthresh:
                t.cwnd += acked  # slow start, byte counting (local guest)
            else:
                t.cwnd += max(1, eff * acked // t.cwnd)
            if t.cwnd > CWND_MAX:
                t.cwnd = CWND_MAX
        self._set_timer(T_NONE, 0.0)  # RFC 6298 (5.3): restart on new data acknowledged
        if fin_acked:
            st = self.state
            if st is State.FIN_WAIT_1:
                self.set_state(State.FIN_WAIT_2)
            elif st is State.CLOSING:
                self._enter_time_wait(now)
            elif st is State.LAST_ACK:
                self._close(now, reset=False)

    def _rtt_on_ack(self, now: float, h: TcpHeader, ack: int) -> None:
        t = self.tcb
        sample = None
        ts = h.timestamp
        if t.ts_ok and ts is not None and ts[1]:
            ms = sub(self._ts_now(now), ts[1])
            if ms < HALF:
                sample = ms / 1000.0
        elif self._rtt_seq is not None and ge(ack, self._rtt_seq):
            sample = now - self._rtt_at
        if self._rtt_seq is not None and ge(ack, self._rtt_seq):
            self._rtt_seq = None
        if sample is None or sample < 0:
            return
        # RFC 6298 §2
        if t.srtt < 0:
            t.srtt = sample
            t.rttvar = sample / 2
        else:
            t.rttvar = 0.75 * t.rttvar + 0.25 * abs(t.srtt - sample)
            t.srtt = 0.875 * t.srtt + 0.125 * sample
        cfg = self.cfg
        t.rto = min(max(t.srtt + max(CLOCK_GRANULARITY_S, 4 * t.rttvar), cfg.rto_min_s), cfg.rto_max_s)

    def _receive_text(self, now: float, seq: int, payload: memoryview, fin: bool) -> bool:
        """Take guest payload/FIN (state in RECEIVING, segment acceptable).
        Returns True when an immediate ACK is due."""
        t = self.tcb
        counters = self.counters
        rx_end = (t.rcv_nxt + self._to_host_len) & MASK
        if self._fin_pending:
            # rx_end is the FIN's sequence number: anything reaching past it is bogus
            end = (seq + len(payload)) & MASK
            late = gt(end, rx_end) or (fin and end != rx_end)
            counters.bump("tcp.rx_after_fin" if late else "tcp.rx_duplicate")
            return True
        back = sub(rx_end, seq)
        plen = len(payload)
        if back < HALF:
            # starts at or before rx_end
            if back > plen or (back == plen and not fin):
                counters.bump("tcp.rx_duplicate")
                return True
            if back:
                payload = payload[back:]
                plen -= back
            room = sub(t.rcv_adv, rx_end)
            if room >= HALF:
                room = 0
            need_ack = False
            if plen > room:
                counters.bump("tcp.rx_beyond_window")
                payload = payload[:room]
                plen = room
                fin = False
                need_ack = True
            if plen:
                self._to_host.append(bytes(payload))
                self._to_host_len += plen
            if fin:
                self._fin_pending = True
            reorder = self._reorder
            while reorder and not self._fin_pending:
                ready = reorder.pop_ready((t.rcv_nxt + self._to_host_len) & MASK)
                if ready is None:
                    break
                _, data, rfin = ready
                if data:
                    self._to_host.append(data)
                    self._to_host_len += len(data)
                if rfin:
                    self._fin_pending = True
            if self._fin_pending and reorder:
                reorder.clear()
            self._flush_to_host(now)
            return need_ack
        # beyond a hole: keep it for later, answer a duplicate ACK (RFC 5681 §4.2)
        dist = sub(seq, rx_end)
        room = sub(t.rcv_adv, rx_end)
        if room >= HALF or dist >= room:
            counters.bump("tcp.rx_beyond_window")
            return True
        if plen > room - dist:
            counters.bump("tcp.rx_beyond_window")
            payload = payload[: room - dist]
            fin = False
        outcome = self._reorder.add(rx_end, seq, bytes(payload), fin)
        if outcome is ADDED:
            counters.bump("tcp.rx_out_of_order")
        elif outcome is FULL:
            counters.bump("tcp.rx_reorder_full")
        else:
            counters.bump("tcp.rx_duplicate")
        return True

    # ------------------------------------------------------ guest → host

    def _flush_to_host(self, now: float) -> bool:
        """Start the next SendTcp, or take a waiting FIN.  True if the FIN was
        taken (which sent its ACK)."""
        if self._host_inflight or self._host_blocked:
            return False
        q = self._to_host
        if q:
            if len(q) > 1:
                data = b"".join(q)
                q.clear()
                q.append(data)
            else:
                data = q[0]
            self._host_inflight = len(data)
            self._acts.append(SendTcp(self.flow, data))
        elif self._fin_pending:
            self._take_fin(now)
            return True
        return False

    def _take_fin(self, now: float) -> None:
        """Every byte before the guest's FIN is written: shut the host side down."""
        t = self.tcb
        self._fin_pending = False
        self._acts.append(ShutdownTcp(self.flow))
        t.rcv_nxt = (t.rcv_nxt + 1) & MASK
        st = self.state
        if st is State.ESTABLISHED:
            self.set_state(State.CLOSE_WAIT)
            self._output(now, force_ack=True)
        elif st is State.FIN_WAIT_1:
            self.set_state(State.CLOSING)
            self._output(now, force_ack=True)
        else:  # FIN_WAIT_2
            self._send_ack(now)
            self._enter_time_wait(now)

    def host_sent(self, now: float, accepted: int, send_space: int) -> None:
        """TcpSent: the host socket took ``accepted`` bytes of our SendTcp."""
        inflight = self._host_inflight
        if not inflight:
            self.counters.bump("tcp.event_unexpected")
            return
        t = self.tcb
        accepted = max(0, min(accepted, inflight))
        self._host_inflight = 0
        if accepted:
            q = self._to_host
            head = q[0]
            if accepted == len(head):
                q.popleft()
            else:
                q[0] = head[accepted:]
            self._to_host_len -= accepted
            t.rcv_nxt = (t.rcv_nxt + accepted) & MASK
        if accepted < inflight:
            self._host_blocked = True
        self._set_host_space(send_space)
        if not self._flush_to_host(now):
            self._output(now, force_ack=accepted > 0 or self._window_would_open())
        self._maybe_watch()
        self._update_timer(now)

    def host_writable(self, now: float, send_space: int) -> None:
        self._host_blocked = False
        self._watching = False
        self._set_host_space(send_space)
        if self.state in (State.CLOSED, State.CONNECTING, State.SYN_SENT) or self.state in FIN_TAKEN:
            return
        if not self._flush_to_host(now):
            self._output(now, force_ack=self._window_would_open())
        self._maybe_watch()
        self._update_timer(now)

    def _set_host_space(self, space: int) -> None:
        space = max(0, space)
        self.tcb.host_space = space
        if space > self._host_space_max:
            self._host_space_max = space

    def _sws_threshold(self) -> int:
        """RFC 9293 §3.8.6.2.2: open the window in steps of min(buffer/2, MSS)."""
        return max(1, min(self._host_space_max // 2, self._rcv_wnd_max // 2, self._our_mss))

    def _window_would_open(self) -> bool:
        t = self.tcb
        target = (t.rcv_nxt + min(t.host_space, self._rcv_wnd_max)) & MASK
        grow = sub(target, t.rcv_adv)
        return grow < HALF and grow >= self._sws_threshold()

    def _maybe_watch(self) -> None:
        """The window offered is (nearly) closed and no write is pending:
        only the edge can see the host socket drain, so ask it to say when
        (no TcpWritable would come otherwise)."""
        if self._watching or self._host_inflight or self._host_blocked:
            return
        if self.state not in RECEIVING:
            return
        t = self.tcb
        if sub(t.rcv_adv, t.rcv_nxt) < self._sws_threshold():
            self._watching = True
            self._acts.append(WatchTcpWritable(self.flow))

    def _window_field(self) -> int:
        """Window for a non-SYN segment; moves rcv_adv (never left)."""
        t = self.tcb
        ws = t.rcv_wscale
        if gt(t.rcv_nxt, t.rcv_adv):
            t.rcv_adv = t.rcv_nxt  # a FIN taken at a zero window
        if self._window_would_open():
            t.rcv_adv = (t.rcv_nxt + min(t.host_space, self._rcv_wnd_max)) & MASK
        wnd = sub(t.rcv_adv, t.rcv_nxt)
        field = (wnd + (1 << ws) - 1) >> ws
        if field > 0xFFFF:
            field = 0xFFFF
        t.rcv_adv = (t.rcv_nxt + (field << ws)) & MASK
        return field

    # ------------------------------------------------------ host → guest

    def host_received(self, now: float, data: bytes) -> None:
        """TcpReceived: bytes read from the host socket within our credit."""
        if self.state not in SENDING or self._host_eof:
            self.counters.bump("tcp.event_unexpected")
            return
        if len(data) > self._snd.free:
            # The edge read beyond the credit we gave: a contract violation.
            self.counters.bump("tcp.host_overrun")
            self._abort(now)
            return
        self._snd.append(data)
        self._edge_credit = max(0, self._edge_credit - len(data))
        self._output(now)
        self._update_credit()
        self._update_timer(now)

    def host_eof(self, now: float) -> None:
        """TcpHostEof: FIN to the guest after the last byte."""
        if self._host_eof or self.state not in (State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT):
            self.counters.bump("tcp.event_unexpected")
            return
        self._host_eof = True
        self._edge_credit = 0
        self._output(now)
        self._update_timer(now)

    def host_reset(self, now: float, err: int) -> Unreachable | None:
        """TcpHostReset: abort toward the guest."""
        st = self.state
        if st is State.CONNECTING:
            return self.host_connect_failed(now, err)
        if st in (State.CLOSED, State.TIME_WAIT):
            self.counters.bump("tcp.event_unexpected")
            return None
        self.counters.bump("tcp.host_reset")
        if st is State.SYN_SENT:
            self._close(now, reset=True)
        else:
            self._abort(now)
        return None

    def _update_credit(self, force: bool = False) -> None:
        """Re-issue ReadTcp when the credit the edge holds is out of date.

        Credit = min(guest window (at least one MSS, so that a zero window
        can be probed with data), snd_buf_max) - bytes already buffered."""
        if self._host_eof or self.state not in SENDING:
            return
        t = self.tcb
        snd = self._snd
        limit = min(max(t.snd_wnd, self._eff_mss), snd.limit)
        credit = max(0, limit - len(snd))
        old = self._edge_credit
        if credit == old and not force:
            return
        if force or credit < old or credit - old >= min(self._eff_mss, snd.limit // 2) or not len(snd):
            self._edge_credit = credit
            self._acts.append(ReadTcp(self.flow, credit))

    def _output(self, now: float, force_ack: bool = False) -> None:
        """Send what the windows allow (plus our FIN after host EOF)."""
        sent = False
        if self.state in _OUTPUT_STATES:
            t = self.tcb
            snd = self._snd
            buflen = len(snd)
            eff = self._eff_mss
            while True:
                off = sub(t.snd_nxt, t.snd_una)
                unsent = buflen - off
                if unsent < 0:
                    break  # our FIN is out
                usable = min(t.snd_wnd, t.cwnd) - off
                n = min(unsent, usable, self._max_payload)
                if n < 0:
                    n = 0
                fin = self._host_eof and n == unsent
                if n == 0 and not fin:
                    break
                if n < unsent and n < eff and off > 0:
                    break  # sender SWS avoidance: wait for the ACK of what is out
                payload = snd.peek(off, n) if n else b""
                flags = ACK
                if n and n == unsent:
                    flags |= PSH
                if fin:
                    flags |= FIN
                self._send_segment(now, t.snd_nxt, flags, payload)
                new_nxt = (t.snd_nxt + n + fin) & MASK
                if gt(new_nxt, t.snd_max):
                    if self._rtt_seq is None and not t.ts_ok:
                        self._rtt_seq, self._rtt_at = new_nxt, now
                    t.snd_max = new_nxt
                t.snd_nxt = new_nxt
                sent = True
                if fin:
                    if not self._fin_sent:
                        self._fin_sent = True
                        self._fin_seq = (new_nxt - 1) & MASK
                        self.set_state(State.FIN_WAIT_1 if self.state is State.ESTABLISHED else State.LAST_ACK)
                    break
        if force_ack and not sent:
            self._send_ack(now)

    def _retransmit_head(self, now: float) -> None:
        """Resend from snd_una (fast retransmit / partial ACK), snd_nxt unchanged."""
        t = self.tcb
        self.counters.bump("tcp.retransmits")
        avail = len(self._snd)
        n = min(avail, sub(t.snd_max, t.snd_una), self._max_payload)
        fin = self._fin_sent and n == avail and gt(t.snd_max, self._fin_seq)
        if n == 0 and not fin:
            return
        flags = ACK | (PSH if n else 0) | (FIN if fin else 0)
        self._send_segment(now, t.snd_una, flags, self._snd.peek(0, n))

    def _send_probe(self, now: float) -> None:
        """Zero-window probe: one byte of new data at snd_nxt (RFC 9293 §3.8.6.1)."""
        t = self.tcb
        off = sub(t.snd_nxt, t.snd_una)
        if off >= len(self._snd):
            return
        self.counters.bump("tcp.zero_window_probes")
        self._send_segment(now, t.snd_nxt, ACK, self._snd.peek(off, 1))
        self._probing = True
        t.snd_nxt = (t.snd_nxt + 1) & MASK
        if gt(t.snd_nxt, t.snd_max):
            t.snd_max = t.snd_nxt

    # ------------------------------------------------------ segment output

    def _send_segment(self, now: float, seq: int, flags: int, payload: bytes) -> None:
        t = self.tcb
        ts = (self._ts_now(now), t.ts_recent) if t.ts_ok else None
        hdr = TcpHeader(
            self.remote_port, self.guest_port, seq, t.rcv_nxt, flags, self._window_field(), timestamp=ts
        )
        gso = self._eff_mss if len(payload) > self._eff_mss else 0
        self._segs.append(TcpSegment(self.link, self.remote_addr, self.guest_addr, hdr, payload, gso))

    def _send_ack(self, now: float) -> None:
        # snd_max, not snd_nxt: after a timeout rewound snd_nxt, the guest has
        # possibly received up to snd_max, and an ACK below its next expected
        # byte would be unacceptable to it.
        self._send_segment(now, self.tcb.snd_max, ACK, b"")

    def _challenge_ack(self, now: float) -> None:
        if self._limiter.allow(now):
            self._send_ack(now)
        else:
            self.counters.bump("tcp.challenge_ack_limited")

    def _send_rst(self, seq: int, ack: int | None) -> None:
        flags = RST if ack is None else RST | ACK
        hdr = TcpHeader(self.remote_port, self.guest_port, seq, ack or 0, flags, 0)
        self._segs.append(TcpSegment(self.link, self.remote_addr, self.guest_addr, hdr, b"", 0))

    # ------------------------------------------------------ timers

    def _set_timer(self, kind: int, at: float) -> None:
        self._timer_kind = kind
        self._timer_at = at

    def _update_timer(self, now: float) -> None:
        """Arm the one timer the current situation needs (RFC 6298 §5)."""
        st = self.state
        kind = self._timer_kind
        if st is State.CONNECTING or st is State.TIME_WAIT or st is State.CLOSED:
            return
        t = self.tcb
        if t.snd_max != t.snd_una:
            if kind != T_RETRANSMIT:
                self._set_timer(T_RETRANSMIT, now + t.rto)
        elif sub(t.snd_nxt, t.snd_una) < len(self._snd) and t.snd_wnd == 0:
            if kind != T_PERSIST:
                self._set_timer(T_PERSIST, now + t.rto)
        elif kind != T_NONE:
            self._set_timer(T_NONE, 0.0)

    def on_timer(self, now: float) -> None:
        kind = self._timer_kind
        if kind == T_NONE or now < self._timer_at or self.parked:
            return
        self._timer_kind = T_NONE
        cfg = self.cfg
        t = self.tcb
        if kind == T_CONNECT:
            self.counters.bump("tcp.connect_timeout")
            self._close(now, reset=True)
            return
        if kind == T_TIME_WAIT:
            self.set_state(State.CLOSED)
            return
        if kind == T_PERSIST:
            t.rto = min(t.rto * 2, cfg.rto_max_s)
            self._send_probe(now)
        else:
            self._retransmit_timeout(now)
            if self.state is State.CLOSED:
                return
        self._update_timer(now)

    def _retransmit_timeout(self, now: float) -> None:
        t = self.tcb
        cfg = self.cfg
        st = self.state
        self._retries += 1
        handshake = st in (State.SYN_SENT, State.SYN_RECEIVED)
        if self._retries > (cfg.syn_retries if handshake else cfg.max_retries):
            self.counters.bump("tcp.retransmit_timeout")
            if handshake:
                self._close(now, reset=True)
            else:
                self._abort(now)
            return
        t.rto = min(t.rto * 2, cfg.rto_max_s)
        self._rtt_seq = None  # Karn
        if t.snd_wnd == 0 and len(self._snd) and not handshake:
            # probing a zero window: a lost probe says nothing about
            # congestion, so cwnd stays (RFC 9293 §3.8.6.1)
            t.snd_nxt = t.snd_una
            self._send_probe(now)
            self._set_timer(T_RETRANSMIT, now + t.rto)
            return
        self.counters.bump("tcp.retransmits")
        if handshake:
            self._send_syn(now, with_ack=st is State.SYN_RECEIVED)
            self._set_timer(T_RETRANSMIT, now + t.rto)
            return
        eff = self._eff_mss
        if self._retries == 1:
            t.ssthresh = max(sub(t.snd_max, t.snd_una) // 2, 2 * eff)  # RFC 5681 (4)
        t.cwnd = eff
        self._in_recovery = False
        self._dupacks = 0
        self._recover = t.snd_max
        t.snd_nxt = t.snd_una  # go back N
        self._output(now)
        self._set_timer(T_RETRANSMIT, now + t.rto)

    # ------------------------------------------------------ closing

    def _enter_time_wait(self, now: float) -> None:
        self.set_state(State.TIME_WAIT)
        self._close_host(reset=False)
        self._free()
        self._set_timer(T_TIME_WAIT, now + self.cfg.time_wait_s)

    def _abort(self, now: float) -> None:
        """RST to the guest (RFC 9293 §3.10.7.4: <SEQ=SND.NXT><CTL=RST>), close the host side."""
        t = self.tcb
        self._send_rst(t.snd_nxt, t.rcv_nxt)
        self._close(now, reset=True)

    def _close(self, now: float, reset: bool) -> None:
        self._close_host(reset)
        self._free()
        self._set_timer(T_NONE, 0.0)
        self.set_state(State.CLOSED)

    def _close_host(self, reset: bool) -> None:
        if not self._host_closed:
            self._host_closed = True
            self._acts.append(CloseTcp(self.flow, reset))

    def _free(self) -> None:
        self._snd.clear()
        self._to_host.clear()
        self._to_host_len = 0
        self._reorder.clear()
        self._syn = None

    def evict(self) -> None:
        """The layer recycles this TIME_WAIT endpoint (table full or port reuse)."""
        self._set_timer(T_NONE, 0.0)
        self.set_state(State.CLOSED)

    # ------------------------------------------------------ export / import

    def can_export(self) -> bool:
        if self.state is State.SYN_RECEIVED:
            # a passive open whose first SYN-ACK is out: a datapath may take
            # the guest's ACK of it (after a retransmission the handshake
            # stays here, with the retry count that ends it)
            return not self.parked and self._retries == 0 and self._syn is not None
        if self.state is State.SYN_SENT:
            # an active open whose first SYN is out, offering window scaling
            # and timestamps: a datapath may take the guest's SYN-ACK
            return not self.parked and self._retries == 0 and self._offer_ts and self._offer_ws
        return (
            self.state is State.ESTABLISHED
            and not self.parked
            and not self._host_inflight
            and not self._reorder
            and not self._fin_pending
            and not self._fin_sent
        )

    def offloadable(self) -> bool:
        """Exportable with nothing in flight either way (no unacknowledged or
        unsent bytes, nothing queued toward the host, no EOF seen): a
        datapath can take the connection over from here."""
        return (
            self.can_export()
            and len(self._snd) == 0
            and self._to_host_len == 0
            and not self._host_eof
            and not self._host_blocked
        )

    def export(self) -> EndpointExport:
        """Snapshot an ESTABLISHED endpoint for another owner (see can_export).
        In SYN_RECEIVED the other owner may finish the handshake: the TCB
        carries the congestion state ESTABLISHED starts with."""
        if not self.can_export():
            raise ValueError(f"flow {self.flow}: cannot export in {self.state.name}")
        tcb = self.tcb.to_dict()
        if self.state is State.SYN_RECEIVED:
            tcb["cwnd"] = self.cfg.initial_cwnd_segments * self._eff_mss
            tcb["ssthresh"] = CWND_MAX
        elif self.state is State.SYN_SENT:
            # what our SYN offered (the SYN-ACK decides: see the datapath
            # contract's "Handshake"), and ESTABLISHED's start for our MSS
            tcb["ts_ok"] = True
            tcb["rcv_wscale"] = self.cfg.rcv_wscale
            tcb["cwnd"] = self.cfg.initial_cwnd_segments * (self._our_mss - TS_OPTION_LEN)
            tcb["ssthresh"] = CWND_MAX
        return EndpointExport(
            tcb=tcb,
            state=self.state,
            send_bytes=self._snd.to_bytes(),
            to_host=b"".join(self._to_host),
            host_eof=self._host_eof,
            host_blocked=self._host_blocked,
            edge_credit=self._edge_credit,
        )

    def _import_handshake(self, exp: EndpointExport) -> None:
        """Resume a handshake the other owner gave back unfinished (the
        segment it does not take comes next, or our SYN-ACK's time ran out):
        nothing moved but the TCB it had; the retransmission timer armed when
        the SYN(-ACK) went out is ours again (due already after a time-out);
        our own TCB is kept (the export's may carry what our SYN offered)."""
        if self.state is not exp.state or not self.parked:
            raise ValueError("cannot import a handshake into a connection that did not export one")
        t = Tcb.from_dict(exp.tcb)
        if sub(t.snd_max, t.snd_una) != 1 or t.snd_nxt != t.snd_max or exp.send_bytes or exp.to_host:
            raise ValueError("a handshake has only our SYN outstanding")
        if (t.iss, t.snd_una, t.rcv_nxt) != (self.tcb.iss, self.tcb.snd_una, self.tcb.rcv_nxt):
            raise ValueError("not the handshake we exported")
        self.parked = False

    def import_(self, now: float, exp: EndpointExport) -> None:
        """Resume a connection from an export (possibly advanced by its other
        owner, which may have taken it into a closing state: the guest's FIN
        taken — rcv_nxt covers it and the host socket is shut down — and/or
        our FIN sent, as the last sequence number, after the host's EOF).
        Raises ValueError if the export is inconsistent."""
        if exp.state is State.SYN_RECEIVED or exp.state is State.SYN_SENT:
            self._import_handshake(exp)
            return
        if exp.state not in _IMPORTABLE or self.state not in (
            State.CLOSED, State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED
        ):  # fmt: skip
            raise ValueError(f"cannot import a connection in {exp.state.name}")
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED) and not self.parked:
            raise ValueError("a handshake in progress here was not exported")
        t = Tcb.from_dict(exp.tcb)
        fin_sent = exp.state in _FIN_SENT
        fin_out = fin_sent and exp.state is not State.FIN_WAIT_2  # our FIN not yet acknowledged
        if fin_sent and (len(exp.send_bytes) or not exp.host_eof):
            raise ValueError("our FIN went out after the last byte, on the host's EOF")
        in_flight = sub(t.snd_max, t.snd_una) - fin_out
        if not (le(t.snd_una, t.snd_nxt) and le(t.snd_nxt, t.snd_max)):
            raise ValueError("inconsistent send sequence space")
        if in_flight > len(exp.send_bytes) or len(exp.send_bytes) > self.cfg.snd_buf_max:
            raise ValueError("send bytes do not cover the flight or exceed the buffer")
        if len(exp.to_host) > self.cfg.rcv_buf_max + (1 << t.rcv_wscale):
            raise ValueError("to_host exceeds the receive buffer")
        if self.state is State.CLOSED:
            self.set_state(State.ESTABLISHED)
        elif self.state is State.SYN_RECEIVED or self.state is State.SYN_SENT:
            # the other owner finished the handshake (its TCB carries the
            # congestion state ESTABLISHED starts with: see export)
            self._syn = None
            self.set_state(State.ESTABLISHED)
        if exp.state is not State.ESTABLISHED:
            # a hand-off, not a transition: the other owner made the moves
            self.state = exp.state
        self.tcb = t
        self._derive()
        self._snd.clear()
        self._snd.append(exp.send_bytes)
        self._to_host.clear()
        if exp.to_host:
            self._to_host.append(exp.to_host)
        self._to_host_len = len(exp.to_host)
        self._host_inflight = 0
        self._host_blocked = exp.host_blocked
        self._host_eof = exp.host_eof
        self._host_space_max = max(self._host_space_max, t.host_space)
        self._edge_credit = exp.edge_credit
        self._dupacks = 0
        self._in_recovery = False
        self._probing = False
        self._recover = None
        self._rtt_seq = None
        self._retries = 0
        self._fin_pending = False
        self._fin_sent = fin_sent
        if fin_sent:
            self._fin_seq = (t.snd_max - 1) & MASK if fin_out else (t.snd_una - 1) & MASK
        self._reorder.clear()
        self.parked = False
        self._set_timer(T_NONE, 0.0)
        self._flush_to_host(now)
        self._output(now)
        self._update_credit(force=True)
        self._update_timer(now)
        # The other owner may hand back a window closed by a full host
        # socket: only the edge can see it drain (else probes get 0 forever).
        self._maybe_watch()
