"""Hypothesis: random frame sequences (well-formed, hostile and in between)
and host events into both datapaths → identical outputs, no exceptions.

This is also the C path's fuzzer: every frame goes through
native/datapath.c's parser first.  (tools/asan_fuzz.sh runs it under
AddressSanitizer.)
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, URG

from .dp_helpers import DNS, GATEWAY, GATEWAY6, GUEST6, KINDS, M, GuestTcp, Twin, base_tcb, guest_udp

pytestmark = pytest.mark.skipif(len(KINDS) < 2, reason="slirp._native not built")

EXAMPLES = int(os.environ.get("SLIRPNET_FUZZ_EXAMPLES", "60"))

flags_st = st.sampled_from([ACK, ACK, ACK | PSH, ACK | PSH, ACK | FIN, ACK | PSH | FIN, RST, ACK | RST, SYN, ACK | URG,
                            ACK | 0x80, 0, SYN | ACK, SYN | ACK])  # fmt: skip
offload_st = st.sampled_from(["csum", "csum", "none", "valid", "bad"])

tcp_step = st.fixed_dictionaries(
    {
        "kind": st.just("tcp"),
        "flow": st.sampled_from([1, 2]),
        "flags": flags_st,
        "seq_delta": st.sampled_from([0, 0, 0, -5, 5, 100, -(1 << 31), 70000]),
        "ack_delta": st.integers(-70000, 300_000),
        "plen": st.sampled_from([0, 0, 1, 10, 1448, 30000, 64000]),
        "window": st.sampled_from([0, 1, 100, 0xFFFF, 0xFFFF, 0xFFFF]),
        "ts_delta": st.sampled_from([1, 1, 0, -10, 1 << 31, None]),
        "offload": offload_st,
        "mutate": st.one_of(st.none(), st.tuples(st.integers(0, 120), st.integers(0, 255))),
        "cut": st.one_of(st.none(), st.integers(0, 120)),
    }
)
udp_step = st.fixed_dictionaries(
    {
        "kind": st.just("udp"),
        "dst": st.sampled_from(["gw", "gw", "dns", "mcast", "bcast"]),
        "dport": st.sampled_from([0, 67, 9999]),
        "plen": st.sampled_from([0, 5, 1400, 3000]),
        "offload": offload_st,
        "uso": st.sampled_from([0, 0, 500]),
    }
)
host_step = st.fixed_dictionaries({"kind": st.just("host"), "flow": st.sampled_from([1, 2]),
                                   "n": st.sampled_from([0, 1, 5000, 200_000, -1])})  # fmt: skip
time_step = st.fixed_dictionaries({"kind": st.just("time"), "dt": st.sampled_from([0.001, 0.2, 0.5, 3.0])})
raw_step = st.fixed_dictionaries({"kind": st.just("raw"), "data": st.binary(min_size=0, max_size=200)})
eject_step = st.fixed_dictionaries({"kind": st.just("eject"), "flow": st.sampled_from([1, 2])})

steps_st = st.lists(st.one_of(tcp_step, tcp_step, tcp_step, udp_step, host_step, time_step, raw_step, eject_step),
                    min_size=1, max_size=25)  # fmt: skip


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=steps_st, peek=st.booleans(), handshake=st.sampled_from([None, "SYN_RECEIVED", "SYN_SENT"]))
def test_random_sequences_same_outputs(steps, peek, handshake):
    with Twin(peek_offset=peek) as twin:
        if handshake == "SYN_RECEIVED":
            # flow 1's SYN-ACK (ISS 1000) is out: the guest's ACK of it next
            twin.add_tcp(1, tcb=base_tcb(snd_una=1000, srtt=-1.0, rttvar=0.0, rto=1.0), state="SYN_RECEIVED")
        elif handshake == "SYN_SENT":
            # flow 1's SYN (ISS 1000) is out: the guest's SYN-ACK next
            twin.add_tcp(1, tcb=base_tcb(snd_una=1000, irs=0, rcv_nxt=0, rcv_adv=0, snd_wnd=0, max_snd_wnd=0,
                                         snd_wscale=0, mss=536, srtt=-1.0, rttvar=0.0, rto=1.0), state="SYN_SENT")  # fmt: skip
        else:
            twin.add_tcp(1)
        twin.add_tcp(2, v6=True, tcb=base_tcb(ts_ok=False, snd_wscale=0, rcv_wscale=0, snd_wnd=30000))
        twin.add_udp(7)
        guests = {1: GuestTcp(), 2: GuestTcp(guest=GUEST6, remote=GATEWAY6, ts=False)}
        port = twin.py.udp_server(0).getsockname()[1]
        for side in twin.sides[1:]:
            side.udp_server(port)
        for step in steps:
            k = step["kind"]
            if k == "tcp":
                g = guests[step["flow"]]
                ts = "auto"
                if g.tsval is not None:
                    if step["ts_delta"] is None:
                        ts = None
                    else:
                        g.tsval = (g.tsval + step["ts_delta"]) & M
                syn_opts = {"mss": 1400, "wscale": 7} if step["flags"] & SYN else {}
                frame = bytearray(
                    g.frame(
                        step["flags"],
                        bytes(step["plen"]),
                        seq=(g.seq + step["seq_delta"]) & M,
                        ack=(g.ack + step["ack_delta"]) & M,
                        window=step["window"],
                        offload=step["offload"],
                        timestamp=ts,
                        **syn_opts,
                    )
                )
                if step["mutate"] is not None:
                    i, v = step["mutate"]
                    if i < len(frame):
                        frame[i] = v
                if step["cut"] is not None:
                    frame = frame[: step["cut"]]
                twin.guest(bytes(frame))
                if step["seq_delta"] == 0 and step["flags"] & ACK:
                    g.seq = (g.seq + step["plen"] + (1 if step["flags"] & FIN else 0)) & M
            elif k == "udp":
                dst = {"gw": GATEWAY, "dns": DNS, "mcast": bytes([239, 1, 1, 1]), "bcast": b"\xff" * 4}[step["dst"]]
                dport = port if step["dport"] == 9999 else step["dport"]
                frame = bytearray(guest_udp(bytes(step["plen"]), dst=dst, dport=dport, offload=step["offload"]))
                if step["uso"]:
                    frame[1] = 5
                    frame[4:6] = step["uso"].to_bytes(2, "little")
                twin.guest(bytes(frame))
                for side in twin.sides:
                    srv = side.servers[(False, port)]
                    try:
                        while True:
                            _, addr = srv.recvfrom(70000)
                            srv.sendto(b"r" * (step["plen"] // 2), addr)
                    except BlockingIOError:
                        pass
                for side in twin.sides:
                    side.wait_host(0.02)
                twin.host()
            elif k == "host":
                sent = False
                for side in twin.sides:
                    c = side.conns[step["flow"]]
                    try:
                        if step["n"] > 0:
                            c.peer.send(bytes(step["n"]))
                        elif step["n"] == 0:
                            c.peer.shutdown(1)
                        else:  # a reset from the host
                            c.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            c.peer.close()
                        sent = True
                    except OSError:
                        pass
                if sent:
                    for side in twin.sides:
                        side.wait_host(0.02)
                twin.host()
            elif k == "time":
                twin.now += step["dt"]
                twin.timers()
            elif k == "raw":
                twin.guest(step["data"])
            elif k == "eject":
                owned = twin.same(twin.each(lambda s: s.dp.owns(step["flow"])), "owns")
                if owned:
                    twin.eject(step["flow"])
        twin.same(twin.each(lambda s: [s.dp.owns(f) for f in (1, 2, 7)]), "owned flows")
        twin.same(twin.each(lambda s: sorted(s.dp.take_activity())), "activity")
