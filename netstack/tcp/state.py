"""TCP connection states (RFC 9293 §3.3.2) and the legal moves between them.

One extra state, CONNECTING, models the forwarder pattern (STYLE.md §7,
like gVisor's tcp/forwarder.go): a guest SYN created the endpoint and the
host connect is in progress; nothing has been sent to the guest yet.  There
is no LISTEN endpoint: the flow table plays the wildcard listener, so LISTEN
exists only for completeness and is never entered.

Which fields are valid in which state (see tcb.py for the fields)::

  CONNECTING    irs, rcv_nxt (= irs+1, not yet acknowledged), iss chosen,
                guest's SYN options kept; no window, no buffers.
  SYN_SENT      iss, snd_una = iss, snd_nxt = snd_max = iss+1 (our SYN).
  SYN_RECEIVED  all sequence variables; SYN-ACK outstanding.
  ESTABLISHED   everything; both buffers in use.
  FIN_WAIT_1    our FIN sent (host EOF), not yet acknowledged.
  FIN_WAIT_2    our FIN acknowledged; guest may still send data.
  CLOSE_WAIT    guest FIN received, acknowledged, ShutdownTcp issued.
  CLOSING       both FINs sent, ours not yet acknowledged.
  LAST_ACK      guest FIN received, our FIN sent, waiting for its ACK.
  TIME_WAIT     both FINs acknowledged; host socket closed; buffers freed;
                only re-ACKs a retransmitted guest FIN until the timer.
  CLOSED        terminal: the layer removes the flow.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    CONNECTING = "CONNECTING"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    # Members are singletons compared by identity: hash them by identity too
    # (Enum's default hashes the name in Python code, on every set lookup).
    __hash__ = object.__hash__


S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    # passive open starts in CONNECTING, active open in SYN_SENT; an
    # ESTABLISHED connection handed back by the datapath is imported directly
    S.CLOSED: frozenset({S.CONNECTING, S.SYN_SENT, S.ESTABLISHED}),
    S.LISTEN: frozenset(),
    S.CONNECTING: frozenset({S.SYN_RECEIVED, S.CLOSED}),
    # SYN_SENT -> SYN_RECEIVED is simultaneous open (RFC 9293 §3.5, figure 8)
    S.SYN_SENT: frozenset({S.ESTABLISHED, S.SYN_RECEIVED, S.CLOSED}),
    S.SYN_RECEIVED: frozenset({S.ESTABLISHED, S.CLOSED}),
    S.ESTABLISHED: frozenset({S.FIN_WAIT_1, S.CLOSE_WAIT, S.CLOSED}),
    S.FIN_WAIT_1: frozenset({S.FIN_WAIT_2, S.CLOSING, S.CLOSED}),
    S.FIN_WAIT_2: frozenset({S.TIME_WAIT, S.CLOSED}),
    S.CLOSE_WAIT: frozenset({S.LAST_ACK, S.CLOSED}),
    S.CLOSING: frozenset({S.TIME_WAIT, S.CLOSED}),
    S.LAST_ACK: frozenset({S.CLOSED}),
    S.TIME_WAIT: frozenset({S.CLOSED}),
}

# States in which guest data is accepted (RFC 9293 §3.10.7.4, seventh).
RECEIVING = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
# States in which host data may still be sent to the guest.
SENDING = frozenset({S.ESTABLISHED, S.CLOSE_WAIT})
# States after the guest's FIN was taken (rcv_nxt covers it).
FIN_TAKEN = frozenset({S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK, S.TIME_WAIT})


class IllegalTransition(RuntimeError):
    """set_state() was asked for a move not in TRANSITIONS: a bug, never input."""
