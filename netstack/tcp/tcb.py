"""The transmission control block: a connection's sequence-space state.

One small object with only ints and bools, so that it can be exported to and
imported from another owner — the C datapath takes over ESTABLISHED flows
and hands them back on FIN/RST/errors (DESIGN.md "Data flow").  Everything
else an endpoint holds (buffers, timers, flags) is either derived from the
TCB or travels next to it in :class:`netstack.tcp.endpoint.EndpointExport`.

Field meanings (sequence numbers are mod 2**32, see seq.py):

* ``iss``/``irs``: our and the guest's initial sequence numbers.
* ``snd_una``: oldest unacknowledged byte; ``snd_nxt``: next byte to send;
  ``snd_max``: highest sequence sent + 1 (``snd_nxt`` < ``snd_max`` after a
  retransmission timeout rewinds ``snd_nxt``).  snd_una <= snd_nxt <= snd_max.
* ``snd_wnd``: the guest's window in bytes (already scaled);
  ``snd_wl1``/``snd_wl2``: seq/ack of the segment that last updated it
  (RFC 9293 §3.10.7.4); ``max_snd_wnd``: the largest window seen.
* ``rcv_nxt``: the cumulative ACK we send.  Forwarder rule: it covers only
  bytes the host socket took (and the guest's FIN once ShutdownTcp went
  out), not bytes still queued toward the host.
* ``rcv_adv``: right edge of the window we last advertised (never moves
  left, RFC 9293 §3.8.6.2.2); ``rcv_wnd`` = rcv_adv - rcv_nxt.
* ``snd_wscale``/``rcv_wscale``: shift counts (RFC 7323 §2), 0 unless both
  sides sent the option.
* ``mss``: maximum segment size toward the guest (the guest's MSS clamped to
  ours), excluding TCP options.
* ``ts_ok``: timestamps negotiated (RFC 7323 §3); ``ts_recent``: the guest's
  TSval to echo, and ``ts_recent_at`` when it was taken (PAWS ignores a
  TS.Recent idle for 24 days, RFC 7323 §5.5); ``ts_offset``: our random
  per-connection TSval offset.
* ``srtt``/``rttvar``/``rto``: RFC 6298 state in seconds (srtt < 0: no
  sample yet).
* ``cwnd``/``ssthresh``: RFC 5681 congestion state in bytes.
* ``host_space``: last send space the edge reported for the host socket
  (drives the window we offer, backpressure).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .seq import sub


@dataclass(slots=True)
class Tcb:
    iss: int = 0
    irs: int = 0
    snd_una: int = 0
    snd_nxt: int = 0
    snd_max: int = 0
    snd_wnd: int = 0
    snd_wl1: int = 0
    snd_wl2: int = 0
    max_snd_wnd: int = 0
    snd_wscale: int = 0
    rcv_nxt: int = 0
    rcv_adv: int = 0
    rcv_wscale: int = 0
    mss: int = 536
    ts_ok: bool = False
    ts_recent: int = 0
    ts_recent_at: float = 0.0
    ts_offset: int = 0
    srtt: float = -1.0
    rttvar: float = 0.0
    rto: float = 1.0
    cwnd: int = 0
    ssthresh: int = 0
    host_space: int = 0

    @property
    def rcv_wnd(self) -> int:
        return sub(self.rcv_adv, self.rcv_nxt)

    def to_dict(self) -> dict:
        """A flat dict of plain ints/floats/bools (what a C side would copy).
        Every field is immutable, so no deep copy (dataclasses.asdict makes
        one per field: it cost more than the rest of an install)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> Tcb:
        missing = _FIELD_SET - d.keys()
        if missing:
            raise ValueError(f"TCB export lacks {sorted(missing)}")
        return cls(**{name: d[name] for name in _FIELDS})

    def copy(self) -> Tcb:
        return Tcb(**self.to_dict())


_FIELDS = tuple(f.name for f in fields(Tcb))
_FIELD_SET = frozenset(_FIELDS)
