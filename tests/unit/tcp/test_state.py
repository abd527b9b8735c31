"""The state machine: transition table, guarded set_state, logging."""

import logging

import pytest

from netstack.tcp import TRANSITIONS, IllegalTransition, State

from .helpers import Harness, open_established, open_time_wait


def test_table_covers_every_state_and_closed_is_reachable():
    assert set(TRANSITIONS) == set(State)
    for state, targets in TRANSITIONS.items():
        assert targets <= set(State)
        if state not in (State.CLOSED, State.LISTEN):
            assert State.CLOSED in targets, state  # an abort is always possible
    assert TRANSITIONS[State.CLOSED] == {State.CONNECTING, State.SYN_SENT, State.ESTABLISHED}
    assert TRANSITIONS[State.TIME_WAIT] == {State.CLOSED}


def test_illegal_move_raises():
    h = Harness()
    c = open_established(h)
    with pytest.raises(IllegalTransition):
        c.ep.set_state(State.SYN_SENT)
    assert c.ep.state is State.ESTABLISHED
    c2 = open_time_wait(Harness())
    with pytest.raises(IllegalTransition):
        c2.ep.set_state(State.ESTABLISHED)


def test_transitions_are_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="netstack.tcp"):
        h = Harness()
        open_established(h)
    lines = [r.getMessage() for r in caplog.records if r.name == "netstack.tcp"]
    assert lines == [
        "flow 1: CLOSED -> CONNECTING",
        "flow 1: CONNECTING -> SYN_RECEIVED",
        "flow 1: SYN_RECEIVED -> ESTABLISHED",
    ]
