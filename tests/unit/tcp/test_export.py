"""Export/import of ESTABLISHED endpoints: the hand-off to and from the C datapath."""

import dataclasses

import pytest

from netstack.actions import CloseTcp, ReadTcp, SendTcp, ShutdownTcp
from netstack.events import TcpHostEof, TcpReceived, TcpSent, TcpWritable
from netstack.tcp import Disposition, EndpointExport, State, Tcb

from .helpers import (
    ACK,
    FIN,
    PSH,
    SYN,
    Harness,
    host_read,
    open_close_wait,
    open_established,
    open_syn_received,
    open_syn_sent,
)
from .sim import Sim

M = 0xFFFFFFFF


def test_tcb_dict_round_trip():
    t = Tcb(iss=1, irs=2, snd_una=3, snd_nxt=4, snd_max=5, rcv_nxt=6, ts_ok=True, srtt=0.25)
    d = t.to_dict()
    assert all(isinstance(v, (int, float, bool)) for v in d.values())
    assert Tcb.from_dict(d) == t and t.copy() == t and t.copy() is not t
    with pytest.raises(ValueError):
        Tcb.from_dict({k: v for k, v in d.items() if k != "rcv_nxt"})
    assert Tcb(rcv_nxt=M, rcv_adv=9).rcv_wnd == 10


def test_park_snapshot_and_parked_behaviour():
    h = Harness()
    c = open_established(h)
    host_read(h, c, b"unacked")
    c.expect(ACK | PSH, b"unacked")
    exp = h.layer.park(c.flow)
    assert isinstance(exp, EndpointExport) and exp.state is State.ESTABLISHED
    assert exp.send_bytes == b"unacked" and exp.to_host == b""
    assert exp.tcb["snd_nxt"] == (exp.tcb["snd_una"] + 7) & M
    assert exp.edge_credit == c.credit - 7
    ep = c.ep
    assert ep.parked and ep.deadline() is None
    assert h.layer.next_deadline() is None
    # while parked, nothing reaches the Python endpoint
    assert c.send(ACK, b"lost") is Disposition.DROPPED
    h.event(TcpReceived(c.flow, b"x"))
    assert h.counters["tcp.rx_parked"] == 1 and h.counters["tcp.event_parked"] == 1
    assert h.segments() == [] and h.actions() == []
    assert h.layer.park(c.flow) is None  # already parked


def test_park_refused_when_not_quiescent():
    h = Harness()
    c = open_established(h)
    c.send(ACK, b"in flight to host")
    assert h.layer.park(c.flow) is None  # a SendTcp is outstanding
    h.event(TcpSent(c.flow, 17, 1 << 20))
    h.actions()
    h.segments()
    assert h.layer.park(c.flow) is not None
    c2 = open_close_wait(Harness())
    assert c2.h.layer.park(c2.flow) is None  # not ESTABLISHED
    assert h.layer.park(12345) is None
    with pytest.raises(ValueError):
        c2.ep.export()


def test_export_import_export_is_identity():
    h = Harness()
    c = open_established(h, timestamp=(7, 0))
    host_read(h, c, b"q" * 5000)
    c.recv()
    c.send(ACK, b"to host")
    h.event(TcpSent(c.flow, 3, 1000))  # short write: 4 bytes remain queued
    h.actions()
    c.recv()
    h.event(TcpWritable(c.flow, 1000))
    h.event(TcpSent(c.flow, 0, 0))
    h.actions()
    exp = h.layer.park(c.flow)
    assert exp.to_host == b"host" and exp.host_blocked
    h.layer.resume(h.now, c.flow, exp)
    assert ReadTcp(c.flow, exp.edge_credit) in h.actions()  # the credit is re-issued
    exp2 = h.layer.park(c.flow)
    assert exp2.tcb == exp.tcb and exp2.send_bytes == exp.send_bytes and exp2.to_host == exp.to_host
    assert exp2.host_blocked == exp.host_blocked


def test_resume_continues_after_the_other_owner_advanced():
    """The 'datapath' relayed traffic while it owned the flow: both sequence
    spaces moved.  Python resumes from its export and carries on."""
    h = Harness()
    c = open_established(h)
    host_read(h, c, b"0123456789")
    s = c.expect(ACK | PSH, b"0123456789")
    exp = h.layer.park(c.flow)
    # meanwhile, in the datapath: the guest acked 4 of our bytes and sent 6
    # bytes that went to the host socket and were acked
    t = dict(exp.tcb)
    t["snd_una"] = (t["snd_una"] + 4) & M
    t["rcv_nxt"] = (t["rcv_nxt"] + 6) & M
    t["rcv_adv"] = (t["rcv_adv"] + 6) & M
    advanced = dataclasses.replace(exp, tcb=t, send_bytes=exp.send_bytes[4:])
    c.seq = (c.seq + 6) & M
    h.layer.resume(h.now, c.flow, advanced)
    acts = h.actions()
    assert [type(a) for a in acts] == [ReadTcp]
    ep = c.ep
    assert not ep.parked and ep.state is State.ESTABLISHED
    assert h.layer.next_deadline() is not None  # 6 bytes outstanding: RTO armed
    c.send(ACK | PSH, b"after")
    assert h.actions() == [SendTcp(c.flow, b"after")]
    h.event(TcpSent(c.flow, 5, 1 << 20))
    c.expect(ACK, ack=c.seq)
    h.run_until(h.layer.next_deadline())
    c.expect(ACK | PSH, b"456789", seq=(s.header.seq + 4) & M)


@pytest.mark.parametrize(
    "change",
    [
        {"snd_nxt_delta": 100},  # snd_nxt beyond snd_max
        {"drop_bytes": 5},  # send bytes do not cover the flight
        {"state": State.TIME_WAIT},  # nothing left to resume
        {"state": State.LAST_ACK},  # our FIN out, yet bytes unsent before it
    ],
)
def test_inconsistent_imports_are_refused(change):
    h = Harness()
    c = open_established(h)
    host_read(h, c, b"0123456789")
    c.recv()
    exp = h.layer.park(c.flow)
    t = dict(exp.tcb)
    if "snd_nxt_delta" in change:
        t["snd_nxt"] = (t["snd_nxt"] + change["snd_nxt_delta"]) & M
    send = exp.send_bytes[change.get("drop_bytes", 0) :]
    bad = dataclasses.replace(exp, tcb=t, send_bytes=send, state=change.get("state", State.ESTABLISHED))
    with pytest.raises(ValueError):
        h.layer.resume(h.now, c.flow, bad)
    assert c.ep.parked  # still owned elsewhere
    with pytest.raises(KeyError):
        h.layer.resume(h.now, 999, exp)


class ParkingSim(Sim):
    """Parks the passive side's flow mid-transfer; while parked, segments to it
    are lost and host events for it wait (as if the datapath held them)."""

    def __init__(self, *a, park_at=0.002, park_for=0.05, **kw):
        self.park_at, self.park_for = park_at, park_for
        self.export = None
        self.parked_events = []
        self.parks = 0
        super().__init__(*a, **kw)

    def _handle(self, kind, payload):
        if kind == "resume":
            self.p.resume(self.now, self.flow_p, self.export)
            self.export = None
            for k, p in self.parked_events:
                self._schedule(0.0, k, p)
            self.parked_events.clear()
            return
        if self.export is not None and kind in ("event_p", "read_p"):
            self.parked_events.append((kind, payload))
            return
        super()._handle(kind, payload)
        if self.export is None and self.parks == 0 and self.flow_p is not None and self.now >= self.park_at:
            exp = self.p.park(self.flow_p)
            if exp is not None:
                self.export, self.parks = exp, 1
                self._schedule(self.park_for, "resume", None)


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_parked_mid_transfer_then_resumed_completes_exactly(loss):
    sim = ParkingSim(seed=9, loss=loss, nbytes_pa=200_000, nbytes_ap=200_000)
    sim.run()
    assert sim.parks == 1
    assert sim.counters_p["tcp.rx_parked"] > 0
    hp, ha = sim.host_p[sim.flow_p], sim.host_a[sim.flow_a]
    assert bytes(hp.got) == sim.expected_at_p and bytes(ha.got) == sim.expected_at_a
    assert hp.reset is False and ha.reset is False


def test_import_into_a_fresh_endpoint():
    """An export is self-contained: a new endpoint object (as after a
    hand-back to a fresh owner) continues the connection from it."""
    from netstack.tcp import TcpConfig, TcpEndpoint
    from netstack.tcp.endpoint import ChallengeLimiter
    from netstack.counters import Counters

    h = Harness()
    c = open_established(h)
    host_read(h, c, b"abcdef")
    s = c.expect(ACK | PSH, b"abcdef")
    exp = h.layer.park(c.flow)
    segs, acts = [], []
    ep = TcpEndpoint(
        flow=c.flow, link=0, guest_addr=c.guest, guest_port=c.gport, remote_addr=c.remote,
        remote_port=c.rport, config=TcpConfig(), counters=Counters(), segments=segs,
        actions=acts, limiter=ChallengeLimiter(10), iss=0, ts_offset=0,
    )
    ep.import_(h.now, exp)
    assert ep.state is State.ESTABLISHED and acts == [ReadTcp(c.flow, exp.edge_credit)]
    ep.on_timer(h.now + ep.tcb.rto)  # the unacknowledged bytes are retransmitted
    assert [(x.header.seq, x.payload) for x in segs] == [(s.header.seq, b"abcdef")]
    with pytest.raises(ValueError):
        bad = dataclasses.replace(exp, to_host=bytes(3 << 20))
        TcpEndpoint(
            flow=1, link=0, guest_addr=c.guest, guest_port=1, remote_addr=c.remote, remote_port=2,
            config=TcpConfig(), counters=Counters(), segments=[], actions=[],
            limiter=ChallengeLimiter(1), iss=0, ts_offset=0,
        ).import_(0.0, bad)


def test_resume_with_a_closed_window_watches_the_host_socket():
    """A datapath ejects a flow whose host socket was full (window closed):
    netstack must ask the edge to report the socket draining, or the guest's
    zero-window probes are answered with window 0 forever."""
    from netstack.actions import WatchTcpWritable

    h = Harness()
    c = open_established(h)
    exp = h.layer.park(c.flow)
    t = dict(exp.tcb)
    t["host_space"] = 0
    t["rcv_adv"] = t["rcv_nxt"]
    h.layer.resume(h.now, c.flow, dataclasses.replace(exp, tcb=t))
    assert WatchTcpWritable(c.flow) in h.actions()
    h.event(TcpWritable(c.flow, 1 << 20))
    s = c.expect(ACK)
    assert s.header.window > 0, "the window reopens once the socket drains"


# -- imports in closing states (the C datapath closes connections too) ------------------------------


def closing_export(h, c, state, fin_acked=False):
    """Park ``c`` and make the export another owner would hand back in ``state``:
    the guest's FIN taken (CLOSE_WAIT, CLOSING, LAST_ACK), and/or our FIN sent."""
    exp = h.layer.park(c.flow)
    t = dict(exp.tcb)
    if state in (State.CLOSE_WAIT, State.CLOSING, State.LAST_ACK):
        t["rcv_nxt"] = (t["rcv_nxt"] + 1) & M
        c.seq = (c.seq + 1) & M  # the guest's FIN was acknowledged by the other owner
    fin_sent = state in (State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING, State.LAST_ACK)
    if fin_sent:
        t["snd_nxt"] = t["snd_max"] = (t["snd_max"] + 1) & M
        if fin_acked:
            t["snd_una"] = t["snd_max"]
    return dataclasses.replace(exp, tcb=t, state=state, host_eof=fin_sent)


def test_import_in_last_ack_closes_on_the_ack_of_our_fin():
    h = Harness()
    c = open_established(h)
    fin_seq = c.ack
    h.layer.resume(h.now, c.flow, closing_export(h, c, State.LAST_ACK))
    assert c.ep.state is State.LAST_ACK and h.actions() == [] and c.recv() == []
    # our FIN is retransmitted on time-out
    h.run_until(h.layer.next_deadline())
    c.expect(ACK | FIN, seq=fin_seq, ack=c.seq)
    c.send(ACK, ack=(fin_seq + 1) & M)
    assert CloseTcp(c.flow, False) in h.actions()
    assert c.ep is None


def test_import_in_fin_wait_2_takes_the_guests_fin_into_time_wait():
    h = Harness()
    c = open_established(h)
    h.layer.resume(h.now, c.flow, closing_export(h, c, State.FIN_WAIT_2, fin_acked=True))
    assert c.ep.state is State.FIN_WAIT_2 and h.layer.next_deadline() is None
    c.ack = (c.ack + 1) & M
    c.send(ACK | FIN)
    acts = h.actions()
    assert ShutdownTcp(c.flow) in acts and CloseTcp(c.flow, False) in acts
    c.expect(ACK, ack=c.seq)
    assert c.ep.state is State.TIME_WAIT


def test_import_in_close_wait_sends_our_fin_after_the_hosts_eof():
    h = Harness()
    c = open_established(h)
    h.layer.resume(h.now, c.flow, closing_export(h, c, State.CLOSE_WAIT))
    assert c.ep.state is State.CLOSE_WAIT
    assert not [a for a in h.actions() if isinstance(a, ShutdownTcp)], "the other owner shut it down"
    h.event(TcpHostEof(c.flow))
    c.expect(ACK | FIN, ack=c.seq)
    assert c.ep.state is State.LAST_ACK


def test_import_in_fin_wait_1_and_closing():
    for state in (State.FIN_WAIT_1, State.CLOSING):
        h = Harness()
        c = open_established(h)
        fin_seq = c.ack
        h.layer.resume(h.now, c.flow, closing_export(h, c, state))
        assert c.ep.state is state
        c.send(ACK, ack=(fin_seq + 1) & M)
        assert c.ep.state is (State.FIN_WAIT_2 if state is State.FIN_WAIT_1 else State.TIME_WAIT)


# ---------------------------------------------------------------- handshakes (SYN_RECEIVED)


def test_without_a_datapath_nothing_collects_offloadable_flows():
    """An edge with no datapath sets offload_ready to None: flows that become
    offloadable are not remembered (the set would only ever grow)."""
    h = Harness()
    h.layer.offload_ready = None
    c = open_syn_received(h, timestamp=(4000, 0))
    assert c.ep.offloadable() and h.layer.offload_ready is None


def test_a_first_syn_ack_can_be_parked_and_comes_back_unfinished():
    h = Harness()
    c = open_syn_received(h, timestamp=(4000, 0))
    assert c.flow in h.layer.offload_ready and c.ep.offloadable()
    deadline = h.layer.next_deadline()
    exp = h.layer.park(c.flow)
    assert exp.state is State.SYN_RECEIVED and exp.send_bytes == b"" and exp.to_host == b""
    assert (sub := (exp.tcb["snd_max"] - exp.tcb["snd_una"]) & M) == 1, sub
    assert exp.tcb["cwnd"] == h.config.initial_cwnd_segments * (1460 - 12), "ESTABLISHED's start"
    assert c.ep.tcb.cwnd == 0, "the endpoint's own TCB is untouched"
    assert h.layer.next_deadline() is None
    h.layer.resume(h.now, c.flow, exp)
    assert c.ep.state is State.SYN_RECEIVED and not c.ep.parked
    assert h.layer.next_deadline() == deadline, "the SYN-ACK's retransmission timer, as it was"
    h.run_until(deadline)
    again = c.expect(SYN | ACK)
    assert again.header.seq == c.synack.header.seq
    assert not c.ep.can_export(), "after a retransmission the handshake stays here"
    c.send(ACK)
    assert c.ep.state is State.ESTABLISHED


def test_a_handshake_finished_elsewhere_is_imported_established():
    h = Harness()
    c = open_syn_received(h, timestamp=(4000, 0))
    exp = h.layer.park(c.flow)
    tcb = dict(exp.tcb, snd_una=exp.tcb["snd_max"], snd_wnd=65535, max_snd_wnd=65535)
    h.layer.resume(h.now, c.flow, dataclasses.replace(exp, tcb=tcb, state=State.ESTABLISHED))
    assert c.ep.state is State.ESTABLISHED and not c.ep.parked
    assert h.layer.next_deadline() is None, "nothing outstanding, no timer"
    (read,) = h.actions()
    assert isinstance(read, ReadTcp) and read.credit > 0, "the edge reads the host socket from now on"
    host_read(h, c, b"hello")
    s = c.expect(ACK | PSH, b"hello")
    assert s.header.seq == tcb["snd_una"]


def test_handshake_imports_are_checked():
    h = Harness()
    c = open_syn_received(h)
    exp = h.layer.park(c.flow)
    for bad in (dict(exp.tcb, snd_una=exp.tcb["snd_max"]), dict(exp.tcb, snd_nxt=exp.tcb["snd_una"])):
        with pytest.raises(ValueError):
            c.ep.import_(h.now, dataclasses.replace(exp, tcb=bad))
    with pytest.raises(ValueError):
        c.ep.import_(h.now, dataclasses.replace(exp, send_bytes=b"x"))
    h.layer.resume(h.now, c.flow, exp)
    with pytest.raises(ValueError):  # not exported any more
        c.ep.import_(h.now, exp)
    with pytest.raises(ValueError):
        c.ep.import_(h.now, dataclasses.replace(exp, state=State.ESTABLISHED))


def test_a_first_syn_can_be_parked_with_what_it_offered_and_comes_back_unfinished():
    h = Harness()
    c = open_syn_sent(h)
    own = c.ep.tcb.to_dict()
    assert c.flow in h.layer.offload_ready
    deadline = h.layer.next_deadline()
    exp = h.layer.park(c.flow)
    assert exp.state is State.SYN_SENT and exp.send_bytes == b""
    assert exp.tcb["ts_ok"] is True and exp.tcb["rcv_wscale"] == h.config.rcv_wscale, "what the SYN offered"
    h.layer.resume(h.now, c.flow, exp)
    assert c.ep.state is State.SYN_SENT and c.ep.tcb.to_dict() == own, "our own TCB, not the export's"
    assert h.layer.next_deadline() == deadline
    h.run_until(deadline)
    again = c.expect(SYN)
    assert again.header.seq == own["iss"] and not c.ep.can_export()


def test_an_active_open_without_timestamps_is_not_exported_early():
    h = Harness(timestamps=False)
    c = open_syn_sent(h)
    assert not c.ep.can_export() and h.layer.park(c.flow) is None


def test_an_active_open_finished_elsewhere_is_imported_established():
    h = Harness()
    c = open_syn_sent(h)
    exp = h.layer.park(c.flow)
    una = (exp.tcb["iss"] + 1) & M
    tcb = dict(exp.tcb, snd_una=una, irs=9000, rcv_nxt=9001, rcv_adv=9001, snd_wscale=7, mss=1400,
               snd_wnd=65535, max_snd_wnd=65535, ts_recent=55)  # fmt: skip
    h.layer.resume(h.now, c.flow, dataclasses.replace(exp, tcb=tcb, state=State.ESTABLISHED))
    assert c.ep.state is State.ESTABLISHED and c.ep.tcb.mss == 1400 and c.ep.tcb.rcv_nxt == 9001
    reads = [a for a in h.actions() if isinstance(a, ReadTcp)]
    assert len(reads) == 1 and reads[0].credit > 0, "the edge reads the host socket from now on"
