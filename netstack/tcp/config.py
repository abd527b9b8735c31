"""Tunables of the TCP endpoint, with units in their names (STYLE.md "Names").

Choices for a guest that is *local* (a TAP in the same machine):

* ``rto_min_s`` = 200 ms instead of RFC 6298's 1 s: the only "network" is a
  kernel queue, RTTs are microseconds, and a loss (a full TUN ring, notes/
  tap-offloads.md gotcha 8) should be repaired quickly.  Linux uses the same
  floor (TCP_RTO_MIN).  The initial RTO stays 1 s (RFC 6298 §2.1) because
  the first SYN may wait for the guest to come up.
* ``time_wait_s`` = 2 s instead of 2*MSL: no segment can linger in a queue
  for minutes, and TIME_WAIT only needs to re-ACK a retransmitted guest FIN
  (guest RTO >= 200 ms, so 2 s covers three retransmissions).  TIME_WAIT
  flows are also the first to be recycled when the table is full.
* ``rcv_buf_max``/``snd_buf_max`` bound each flow's buffering in either
  direction (window offered to the guest; bytes read from the host and not
  yet acknowledged).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FRAME_LEN = 65535  # Ethernet + IP + TCP + payload of one GSO frame we emit
ETH_HEADER_LEN = 14
TCP_HEADER_LEN = 20
MIN_MSS = 88  # floor for the guest's MSS option (as Linux's TCP_MIN_MSS)
DEFAULT_MSS_V4 = 536  # RFC 9293 §3.7.1 when the guest sends no MSS option
DEFAULT_MSS_V6 = 1220  # RFC 8200 §5 minimum MTU 1280 - 60


def ip_header_len(addr: bytes) -> int:
    return 20 if len(addr) == 4 else 40


@dataclass(frozen=True, slots=True)
class TcpConfig:
    mtu: int = 1500
    rcv_buf_max: int = 1 << 20
    snd_buf_max: int = 1 << 20
    rto_initial_s: float = 1.0
    rto_min_s: float = 0.2
    rto_max_s: float = 60.0
    syn_retries: int = 5  # SYN / SYN-ACK: gives up after 1+2+4+8+16+32 s
    max_retries: int = 12  # data/FIN: ~5 minutes with the 60 s cap
    connect_timeout_s: float = 75.0  # host connect that never completes
    time_wait_s: float = 2.0
    initial_cwnd_segments: int = 10  # RFC 6928
    reorder_max_segments: int = 64
    timestamps: bool = True  # offer on active open; passive opens echo the guest
    window_scaling: bool = True
    challenge_acks_per_s: int = 100  # RFC 5961 §7, for the whole layer

    def our_mss(self, addr: bytes) -> int:
        """MSS we announce: MTU - 40 (IPv4) or - 60 (IPv6)."""
        return self.mtu - ip_header_len(addr) - TCP_HEADER_LEN

    @property
    def rcv_wscale(self) -> int:
        """Smallest shift that can express twice rcv_buf_max (RFC 7323 §2.3, max 14)."""
        shift = 0
        while shift < 14 and (0xFFFF << shift) < 2 * self.rcv_buf_max:
            shift += 1
        return shift
