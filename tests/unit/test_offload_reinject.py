"""Offload.deliver hands a slow Frame that hit a parked flow back to the
datapath (once), instead of letting netstack drop it (threaded mode: the
datapath thread can read a segment before the edge installs its flow)."""

from __future__ import annotations

from types import SimpleNamespace

from netstack.counters import Counters
from slirp.datapath import Frame
from slirp.offload import Offload


class FakeStack:
    def __init__(self, parked: set[bytes]):
        self.parked = parked
        self.tcp = SimpleNamespace(parked_drops=0)
        self.seen: list[bytes] = []

    def frame_from_guest(self, view, now):
        data = bytes(view)
        self.seen.append(data)
        if data in self.parked:
            self.tcp.parked_drops += 1


class FakeDp:
    def __init__(self, answers):
        self.answers = answers
        self.injected: list[bytes] = []

    def inject(self, frame, now):
        self.injected.append(frame)
        return self.answers.get(frame, [])


def offload(stack, dp):
    driver = SimpleNamespace(stack=stack, hostsocks=None, counters=Counters())
    return Offload(driver, dp), driver.counters


def test_a_frame_for_a_parked_flow_goes_back_to_the_datapath():
    stack = FakeStack({b"seg"})
    dp = FakeDp({})
    off, counters = offload(stack, dp)
    off.deliver([Frame(b"arp"), Frame(b"seg"), Frame(b"other")], 1.0)
    assert stack.seen == [b"arp", b"seg", b"other"]
    assert dp.injected == [b"seg"]
    assert counters["offload.reinjected"] == 1


def test_reinjection_happens_once():
    # the datapath no longer owns the flow (its Ejected item is still queued
    # behind us): the frame comes back, hits the parked flow again, is dropped
    stack = FakeStack({b"seg"})
    dp = FakeDp({b"seg": [Frame(b"seg")]})
    off, counters = offload(stack, dp)
    off.deliver([Frame(b"seg")], 1.0)
    assert dp.injected == [b"seg"]
    assert stack.seen == [b"seg", b"seg"]
    assert counters["offload.parked_dropped"] == 1
