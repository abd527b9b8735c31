#!/usr/bin/env python3
"""Micro-benchmark of the datapath alone (not a test): bulk TCP through each
implementation on a socketpair TAP stand-in, plus 1-byte request/response.

    python benchmarks/datapath_micro.py [--impl python,native] [--mb 2000]
                                        [--mode out,in,rr] [--mtu 1500]

Processes: this one runs the datapath loop (epoll on the TAP stand-in and
``dp.fileno()``, as slirp/loop.py does) and is the only one measured (CPU
from getrusage); a forked *guest* speaks TCP over the AF_UNIX SOCK_SEQPACKET
pair with prebuilt frames (64000-byte NEEDS_CSUM super-frames out, one
cumulative ACK per frame in); a forked *host peer* is the far end of a
loopback TCP connection.  ``out`` is guest → host, ``in`` host → guest, ``rr``
the median/p99 round trip of 1 byte each way as the guest sees it.

Profile with e.g. ``perf record -g -p PID`` / ``valgrind --tool=callgrind``
on ``--impl native --mode out``.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import signal
import socket
import statistics
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from netstack.frames import tcp_frame  # noqa: E402
from netstack.tcp import Tcb  # noqa: E402
from netstack.wire.tcp import ACK, PSH, TcpHeader  # noqa: E402
from slirp.datapath import TcpFlow, open_datapath  # noqa: E402

GUEST = bytes([10, 0, 2, 100])
GATEWAY = bytes([10, 0, 2, 2])
GUEST_MAC = bytes.fromhex("020000000064")
OUR_MAC = bytes.fromhex("525500000202")
ISS, IRS = 1000, 5000
CHUNK = 64000
M = 0xFFFFFFFF


def tcb(mss: int) -> dict:
    return Tcb(
        iss=ISS, irs=IRS, snd_una=ISS + 1, snd_nxt=ISS + 1, snd_max=ISS + 1, snd_wnd=0xFFFF << 7,
        snd_wl1=IRS + 1, snd_wl2=ISS + 1, max_snd_wnd=0xFFFF << 7, snd_wscale=7, rcv_nxt=IRS + 1,
        rcv_adv=IRS + 1 + 65535, rcv_wscale=7, mss=mss, ts_ok=True, ts_recent=1, ts_recent_at=0.0,
        ts_offset=0, srtt=0.001, rttvar=0.0005, rto=0.2, cwnd=10 * mss, ssthresh=1 << 30, host_space=1 << 20,
    ).to_dict()  # fmt: skip


def guest_frame(seq: int, ack: int, payload: bytes, mss: int) -> bytearray:
    hdr = TcpHeader(40000, 80, seq, ack, ACK | (PSH if payload else 0), 0xFFFF, timestamp=(1, 0))
    return tcp_frame(OUR_MAC, GUEST_MAC, GUEST, GATEWAY, hdr, payload, mss - 12)


SEQ_OFF = 10 + 14 + 20 + 4
ACK_OFF = SEQ_OFF + 4


def guest_out(tap: socket.socket, total: int, mss: int) -> None:
    """Send `total` bytes as super-frames within the window the ACKs offer;
    go back to the acknowledged point on three duplicate ACKs or 20 ms of
    silence (a lost segment: the host socket was full)."""
    frame = guest_frame(IRS + 1, ISS + 1, bytes(CHUNK), mss)
    seq = IRS + 1
    sent = acked = dups = 0
    window = 1 << 20
    tap.settimeout(0.02)
    buf = bytearray(1 << 17)
    while acked < total:
        while sent < total and window - (sent - acked) >= mss:
            usable = min(window - (sent - acked), total - sent)
            if usable >= CHUNK:
                struct.pack_into("!I", frame, SEQ_OFF, (seq + sent) & M)
                tap.send(frame)
                sent += CHUNK
            else:  # like a real sender: what fits the window, if at least an MSS
                n = max(usable - usable % (mss - 12), min(usable, total - sent))
                tap.send(guest_frame((seq + sent) & M, ISS + 1, bytes(n), mss))
                sent += n
        try:
            n = tap.recv_into(buf)
        except TimeoutError:
            sent = acked
            continue
        if n >= 58:
            a = (struct.unpack_from("!I", buf, ACK_OFF)[0] - IRS - 1) & M
            window = struct.unpack_from("!H", buf, ACK_OFF + 6)[0] << 7
            if a > acked:
                acked, dups = a, 0
            else:
                dups += 1
                if dups == 3:
                    sent = acked
            if acked > sent:
                sent = acked


def guest_in(tap: socket.socket, total: int, mss: int) -> None:
    """Receive `total` bytes of data frames, one cumulative ACK per frame."""
    ackf = guest_frame(IRS + 1, ISS + 1, b"", mss)
    nxt = ISS + 1
    got = 0
    buf = bytearray(1 << 17)
    tap.setblocking(True)
    while got < total:
        n = tap.recv_into(buf)
        if n < 66:
            continue
        seq = struct.unpack_from("!I", buf, SEQ_OFF)[0]
        hlen = (buf[10 + 14 + 20 + 12] >> 4) * 4
        plen = n - (10 + 14 + 20 + hlen)
        if seq == nxt and plen > 0:
            nxt = (nxt + plen) & M
            got += plen
        struct.pack_into("!I", ackf, ACK_OFF, nxt)
        tap.send(ackf)


def guest_rr(tap: socket.socket, rounds: int, mss: int, report) -> None:
    seq = IRS + 1
    nxt = ISS + 1
    buf = bytearray(1 << 17)
    tap.setblocking(True)
    times = []
    for _ in range(rounds):
        f = guest_frame(seq, nxt, b"q", mss)
        t0 = time.perf_counter()
        tap.send(f)
        seq += 1
        while True:
            n = tap.recv_into(buf)
            hlen = (buf[10 + 14 + 20 + 12] >> 4) * 4
            plen = n - (10 + 14 + 20 + hlen)
            if plen > 0:
                break
        times.append(time.perf_counter() - t0)
        nxt = (nxt + plen) & M
    report.send(repr(times).encode())


def peer_main(sock: socket.socket, mode: str, total: int) -> None:
    sock.setblocking(True)
    if mode == "out":
        got = 0
        buf = bytearray(1 << 20)
        while got < total:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
    elif mode == "in":
        chunk = bytes(1 << 20)
        left = total
        while left > 0:
            n = sock.send(chunk[: min(left, len(chunk))])
            left -= n
        time.sleep(30)
    else:
        while True:
            b = sock.recv(1)
            if not b:
                break
            sock.sendall(b"r")


def run(impl: str, mode: str, total: int, mtu: int, rounds: int) -> dict:
    tap_dp, tap_guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (tap_dp, tap_guest):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    edge = socket.create_connection(ls.getsockname())
    peer, _ = ls.accept()
    ls.close()
    edge.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mss = mtu - 40
    rep_r, rep_w = socket.socketpair()
    pids = []
    pid = os.fork()
    if pid == 0:
        tap_dp.close()
        edge.close()
        peer.close()
        try:
            if mode == "out":
                guest_out(tap_guest, total, mss)
            elif mode == "in":
                guest_in(tap_guest, total, mss)
            else:
                guest_rr(tap_guest, rounds, mss, rep_w)
        finally:
            os._exit(0)
    pids.append(pid)
    pid = os.fork()
    if pid == 0:
        tap_dp.close()
        tap_guest.close()
        edge.close()
        try:
            peer_main(peer, mode, total)
        finally:
            os._exit(0)
    pids.append(pid)
    peer.close()
    tap_guest.close()
    tap_dp.setblocking(False)
    edge.setblocking(False)
    dp = open_datapath(impl, tap_fd=tap_dp.fileno(), mtu=mtu, forward_map={}, reverse_map={}, slow_addrs=())
    dp.install_tcp(
        TcpFlow(1, edge.fileno(), GUEST, 40000, GATEWAY, 80, GUEST_MAC, OUR_MAC, tcb(mss), 1 << 20, time.monotonic())
    )
    ep = select.epoll()
    ep.register(tap_dp.fileno(), select.EPOLLIN)
    ep.register(dp.fileno(), select.EPOLLIN)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    key = "dp.tcp_to_host_bytes" if mode == "out" else "dp.tcp_to_guest_bytes"
    slow = 0
    guest_pid = pids[0]
    while True:
        now = time.monotonic()
        if mode != "rr" and dp.stats()[key] >= total:
            break
        if mode == "rr" and os.waitpid(guest_pid, os.WNOHANG)[0]:
            guest_pid = 0
            break
        if now - t0 > 120:
            print(f"  {impl} {mode}: timed out", file=sys.stderr)
            break
        d = dp.next_deadline()
        timeout = 0.2 if d is None else max(0.0, min(0.2, d - now))
        for fd, _ in ep.poll(timeout):
            now = time.monotonic()
            if fd == tap_dp.fileno():
                slow += len(dp.tap_readable(now))
            else:
                slow += len(dp.host_readable(now))
        d = dp.next_deadline()
        if d is not None and d <= time.monotonic():
            slow += len(dp.timers(time.monotonic()))
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    stats = dp.stats()
    result = {"impl": impl, "mode": mode, "mtu": mtu, "wall": wall, "cpu": cpu, "slow": slow}
    if mode == "rr":
        times = eval(rep_r.recv(1 << 22).decode())  # our own child's repr of floats
        times.sort()
        result["median_us"] = statistics.median(times) * 1e6
        result["p99_us"] = times[int(len(times) * 0.99)] * 1e6
        result["min_us"] = times[0] * 1e6
    else:
        nbytes = stats[key]
        result["MB/s"] = nbytes / wall / 1e6
        result["Gbit/s"] = nbytes * 8 / wall / 1e9
        result["cpu_s_per_GB"] = cpu / (nbytes / 1e9)
        result["frames_to_guest"] = stats["dp.tcp_frames_to_guest"]
        result["acks"] = stats["dp.acks"]
    dp.close()
    edge.close()
    tap_dp.close()
    for p in pids:
        if p:
            try:
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", default="native,python")
    ap.add_argument("--mode", default="out,in,rr")
    ap.add_argument("--mb", type=int, default=2000, help="megabytes per bulk run (python gets a tenth)")
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=5000)
    args = ap.parse_args()
    for impl in args.impl.split(","):
        for mode in args.mode.split(","):
            total = args.mb * 1_000_000 // (10 if impl == "python" else 1)
            r = run(impl, mode, total, args.mtu, args.rounds if impl == "native" else args.rounds // 5)
            if mode == "rr":
                print(f"{impl:7} {mode:3} mtu {r['mtu']}: median {r['median_us']:.1f} us, "
                      f"p99 {r['p99_us']:.1f} us, min {r['min_us']:.1f} us")  # fmt: skip
            else:
                print(f"{impl:7} {mode:3} mtu {r['mtu']}: {r['MB/s']:8.0f} MB/s ({r['Gbit/s']:.1f} Gbit/s), "
                      f"datapath CPU {r['cpu_s_per_GB']:.3f} s/GB, {r['frames_to_guest']} data frames, "
                      f"{r['acks']} ACKs, {r['slow']} slow items")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
