"""The flow table: every NAT flow between a guest endpoint and a host socket.

What it models
--------------
A *flow* joins two sides:

* the **guest side**, named by a :class:`FlowKey` — the guest interface
  (``link``), the IP protocol, the guest's address and port, and the remote
  address and port the guest talks to (for ICMP echo the "ports" are the echo
  identifier and 0).  Addresses are packed bytes (4 or 16), so the table is
  family-neutral;
* the **host side**, named by the flow id (an int unique for the life of the
  table, never reused) that the edge uses for its socket, plus the host
  address/port the flow was mapped to (after destination policy).

The table is protocol-generic: TCP uses it now, UDP and ICMP flows use the
same calls.  A protocol layer hangs its own per-flow object on
``Flow.endpoint``.

Invariants
----------
* ``lookup(key)`` and ``get(flow_id)`` are O(1) dict lookups whatever the
  churn: removed flows leave nothing behind in either dict.
* A flow is in the table iff its state is not CLOSED.
* Per protocol, the number of flows never exceeds that protocol's limit
  (:meth:`insert` raises :class:`FlowTableFull`); the limits are separate so
  that a UDP flood cannot starve TCP and vice versa.
* Each flow has at most one live entry in its protocol's deadline heap; a
  push that would take the heap past 2 x live flows + 64 rebuilds it from the
  live flows, so it never exceeds 2 x the protocol's limit + 65 entries
  (bounded by construction).

States (one guarded :meth:`FlowTable.set_state`, transition table below)::

    OPENING ──► ESTABLISHED ──► CLOSING ──► CLOSED
       │             └──────────────────────►│
       └──────────────► CLOSING / CLOSED ───►┘

OPENING: the host side is being created (TCP connect in progress, or the
guest handshake of a port forward); ESTABLISHED: both sides carry data;
CLOSING: at least one direction is shut down (TCP FIN exchange, TIME_WAIT);
CLOSED: removed from the table.  Which protocol state maps to which flow
state is the protocol layer's business.  An illegal move raises
:class:`IllegalFlowTransition`: it is a bug in a layer, never caused by input.

Timers
------
Each flow has one optional absolute ``deadline`` (idle expiry for UDP/ICMP,
the next TCP timer for TCP).  :meth:`touch` refreshes the idle deadline
(``now + idle_timeout``) in O(1) without touching the heap: entries are
lazy, an entry that fires early is simply re-armed at the real deadline.
:meth:`due` returns the flows whose deadline has passed (their deadline is
cleared; the owner decides: expire, retransmit...); :meth:`expire` is
``due`` + ``remove`` for protocols whose only timer is idleness.

Overflow policy (written down, STYLE.md §6)
-------------------------------------------
:meth:`insert` never evicts by itself; it raises :class:`FlowTableFull` when
the protocol is at its limit.  Flows marked *evictable* (idle UDP/ICMP flows,
TCP flows in TIME_WAIT) are kept in least-recently-active order and
:meth:`evict_lru` removes and returns the oldest one, so the owning layer can
release its host socket.  The layers' policies: TCP recycles the oldest
TIME_WAIT flow, else refuses the new SYN with RST; UDP/ICMP evict their
oldest idle flow.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import OrderedDict
from typing import Iterator, NamedTuple

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

DEFAULT_LIMITS = {PROTO_TCP: 8192, PROTO_UDP: 4096, PROTO_ICMP: 256, PROTO_ICMPV6: 256}
DEFAULT_LIMIT = 256  # for a protocol not in the limits mapping

_HEAP_SLACK = 64  # stale heap entries tolerated beyond 2 x live flows


class FlowKey(NamedTuple):
    """The guest side of a flow, in the guest's orientation."""

    link: int
    proto: int
    guest_addr: bytes
    guest_port: int
    remote_addr: bytes
    remote_port: int


class FlowState(enum.Enum):
    OPENING = "opening"
    ESTABLISHED = "established"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[FlowState, frozenset[FlowState]] = {
    FlowState.OPENING: frozenset({FlowState.ESTABLISHED, FlowState.CLOSING, FlowState.CLOSED}),
    FlowState.ESTABLISHED: frozenset({FlowState.CLOSING, FlowState.CLOSED}),
    FlowState.CLOSING: frozenset({FlowState.CLOSED}),
    FlowState.CLOSED: frozenset(),
}


class FlowTableFull(Exception):
    """The protocol's flow limit is reached (see the overflow policy)."""


class FlowExists(Exception):
    """A flow with this key is already in the table."""


class IllegalFlowTransition(RuntimeError):
    pass


class Flow:
    """One flow.  Fields are read freely; change them only through the table."""

    __slots__ = (
        "id",
        "key",
        "state",
        "created",
        "last_active",
        "idle_timeout",
        "deadline",
        "host_addr",
        "host_port",
        "endpoint",
        "evictable",
        "_armed",
    )

    def __init__(self, flow_id: int, key: FlowKey, now: float) -> None:
        self.id = flow_id
        self.key = key
        self.state = FlowState.OPENING
        self.created = now
        self.last_active = now
        self.idle_timeout: float | None = None
        self.deadline: float | None = None
        self.host_addr: bytes | None = None
        self.host_port: int | None = None
        self.endpoint = None  # the protocol layer's per-flow object
        self.evictable = False
        self._armed: float | None = None  # time of this flow's live heap entry

    def __repr__(self) -> str:
        return f"Flow(id={self.id}, key={self.key}, state={self.state.name})"


class FlowTable:
    __slots__ = ("_by_key", "_by_id", "_ids", "_limits", "_count", "_heaps", "_lru", "transition_log")

    def __init__(self, limits: dict[int, int] | None = None) -> None:
        self._by_key: dict[FlowKey, Flow] = {}
        self._by_id: dict[int, Flow] = {}
        self._ids = itertools.count(1)
        self._limits = dict(DEFAULT_LIMITS if limits is None else limits)
        self._count: dict[int, int] = {}
        self._heaps: dict[int, list[tuple[float, int]]] = {}
        self._lru: dict[int, OrderedDict[int, Flow]] = {}
        # Optional callable(flow, old, new): set it to log or trace transitions.
        self.transition_log = None

    # -- lookups --------------------------------------------------------------

    def lookup(self, key: FlowKey) -> Flow | None:
        return self._by_key.get(key)

    def get(self, flow_id: int) -> Flow | None:
        return self._by_id.get(flow_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._by_id.values()))

    def count(self, proto: int) -> int:
        return self._count.get(proto, 0)

    def limit(self, proto: int) -> int:
        return self._limits.get(proto, DEFAULT_LIMIT)

    def is_full(self, proto: int) -> bool:
        return self._count.get(proto, 0) >= self._limits.get(proto, DEFAULT_LIMIT)

    # -- life cycle -----------------------------------------------------------

    def insert(
        self,
        key: FlowKey,
        now: float,
        *,
        host_addr: bytes | None = None,
        host_port: int | None = None,
        endpoint=None,
        idle_timeout: float | None = None,
        evictable: bool = False,
    ) -> Flow:
        """Add a flow in state OPENING and return it.

        Raises :class:`FlowExists` if ``key`` is taken and
        :class:`FlowTableFull` if the protocol is at its limit (the caller
        applies its overflow policy first, see :meth:`evict_lru`)."""
        if key in self._by_key:
            raise FlowExists(key)
        proto = key.proto
        if self.is_full(proto):
            raise FlowTableFull(proto)
        flow = Flow(next(self._ids), key, now)
        flow.host_addr = host_addr
        flow.host_port = host_port
        flow.endpoint = endpoint
        self._by_key[key] = flow
        self._by_id[flow.id] = flow
        self._count[proto] = self._count.get(proto, 0) + 1
        if idle_timeout is not None:
            flow.idle_timeout = idle_timeout
            self.set_deadline(flow, now + idle_timeout)
        if evictable:
            self.set_evictable(flow, True)
        return flow

    def remove(self, flow: Flow) -> None:
        """Take the flow out of the table (state CLOSED).  Idempotent."""
        if flow.state is FlowState.CLOSED:
            return
        self.set_state(flow, FlowState.CLOSED)
        del self._by_key[flow.key]
        del self._by_id[flow.id]
        proto = flow.key.proto
        self._count[proto] -= 1
        if flow.evictable:
            self._lru[proto].pop(flow.id, None)
            flow.evictable = False
        flow.deadline = None
        flow._armed = None  # its heap entry, if any, is now stale

    def set_state(self, flow: Flow, new: FlowState) -> None:
        old = flow.state
        if old is new:
            return
        if new not in TRANSITIONS[old]:
            raise IllegalFlowTransition(f"flow {flow.id}: {old.name} -> {new.name}")
        flow.state = new
        if self.transition_log is not None:
            self.transition_log(flow, old, new)

    # -- activity, eviction ---------------------------------------------------

    def touch(self, flow: Flow, now: float) -> None:
        """The flow saw traffic: refresh its idle deadline and LRU position."""
        flow.last_active = now
        if flow.idle_timeout is not None:
            # Later than before: the lazy heap entry re-arms itself when it fires.
            self.set_deadline(flow, now + flow.idle_timeout)
        if flow.evictable:
            self._lru[flow.key.proto].move_to_end(flow.id)

    def set_idle_timeout(self, flow: Flow, seconds: float | None, now: float) -> None:
        flow.idle_timeout = seconds
        self.set_deadline(flow, None if seconds is None else now + seconds)

    def set_evictable(self, flow: Flow, evictable: bool) -> None:
        if flow.state is FlowState.CLOSED or flow.evictable == evictable:
            return
        lru = self._lru.setdefault(flow.key.proto, OrderedDict())
        flow.evictable = evictable
        if evictable:
            lru[flow.id] = flow
        else:
            del lru[flow.id]

    def evict_lru(self, proto: int) -> Flow | None:
        """Remove and return the least recently active evictable flow of ``proto``."""
        lru = self._lru.get(proto)
        if not lru:
            return None
        _, flow = next(iter(lru.items()))
        self.remove(flow)
        return flow

    def open_idle_flow(
        self,
        key: FlowKey,
        now: float,
        *,
        idle_timeout: float,
        endpoint,
        host_addr: bytes | None = None,
        host_port: int | None = None,
    ) -> tuple[Flow | None, bool, Flow | None]:
        """The flow of a datagram protocol (UDP, ICMP echo) for ``key``.

        An existing flow is touched and returned.  Otherwise a new one is
        inserted ESTABLISHED, evictable, with an idle timer — after making
        room, when the protocol is at its limit, by evicting its least
        recently active evictable flow (the overflow policy of such flows).
        Returns ``(flow, created, victim)``: the caller releases the victim's
        host side and opens the new flow's.  ``flow`` is None only when the
        table is full of flows that cannot be evicted."""
        flow = self._by_key.get(key)
        if flow is not None:
            self.touch(flow, now)
            return flow, False, None
        victim = self.evict_lru(key.proto) if self.is_full(key.proto) else None
        try:
            flow = self.insert(
                key, now, host_addr=host_addr, host_port=host_port, endpoint=endpoint,
                idle_timeout=idle_timeout, evictable=True,
            )  # fmt: skip
        except FlowTableFull:
            return None, False, victim
        self.set_state(flow, FlowState.ESTABLISHED)
        return flow, True, victim

    # -- deadlines ------------------------------------------------------------

    def set_deadline(self, flow: Flow, when: float | None) -> None:
        """Arm (or with None, disarm) the flow's single timer at absolute ``when``."""
        flow.deadline = when
        if when is None or flow.state is FlowState.CLOSED:
            flow._armed = None  # its heap entry, if any, is stale now
            return
        armed = flow._armed
        if armed is not None and armed <= when:
            return  # the armed entry fires first and re-arms at the real deadline
        flow._armed = when
        proto = flow.key.proto
        heap = self._heaps.setdefault(proto, [])
        heapq.heappush(heap, (when, flow.id))
        if len(heap) > 2 * self._count.get(proto, 0) + _HEAP_SLACK:
            self._rebuild_heap(proto)

    def _rebuild_heap(self, proto: int) -> None:
        heap = []
        for flow in self._by_id.values():
            if flow.key.proto == proto and flow.deadline is not None:
                flow._armed = flow.deadline
                heap.append((flow.deadline, flow.id))
            elif flow.key.proto == proto:
                flow._armed = None
        heapq.heapify(heap)
        self._heaps[proto] = heap

    def due(self, proto: int, now: float) -> list[Flow]:
        """Flows of ``proto`` whose deadline is <= now; their deadline is cleared."""
        heap = self._heaps.get(proto)
        if not heap:
            return []
        out = []
        by_id = self._by_id
        while heap and heap[0][0] <= now:
            when, fid = heapq.heappop(heap)
            flow = by_id.get(fid)
            if flow is None or flow._armed != when:
                continue  # stale entry
            flow._armed = None
            deadline = flow.deadline
            if deadline is None:
                continue
            if deadline > now:
                flow._armed = deadline
                heapq.heappush(heap, (deadline, fid))
                continue
            flow.deadline = None
            out.append(flow)
        return out

    def expire(self, proto: int, now: float) -> list[Flow]:
        """Remove and return the flows of ``proto`` whose deadline has passed."""
        flows = self.due(proto, now)
        for flow in flows:
            self.remove(flow)
        return flows

    def next_deadline(self, proto: int | None = None) -> float | None:
        """Earliest armed deadline (of ``proto``, or of all protocols).

        May be earlier than the real one (lazy entries): waking up early is
        harmless, :meth:`due` re-arms."""
        protos = self._heaps.keys() if proto is None else (proto,)
        best = None
        for p in protos:
            heap = self._heaps.get(p)
            while heap:
                when, fid = heap[0]
                flow = self._by_id.get(fid)
                if flow is not None and flow._armed == when:
                    if best is None or when < best:
                        best = when
                    break
                heapq.heappop(heap)  # stale
        return best
