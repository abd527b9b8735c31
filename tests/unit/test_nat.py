"""The flow table (netstack/nat.py): keys, states, deadlines, limits, eviction."""

import random

import pytest

from netstack.nat import (
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    DEFAULT_LIMIT,
    FlowExists,
    FlowKey,
    FlowState,
    FlowTable,
    FlowTableFull,
    IllegalFlowTransition,
)

G4 = bytes([10, 0, 2, 100])
R4 = bytes([192, 0, 2, 1])
G6 = bytes.fromhex("fd000000000000000000000000000064")
R6 = bytes.fromhex("20010db8000000000000000000000001")


def key(port=1000, proto=PROTO_UDP, link=0, guest=G4, remote=R4, rport=53):
    return FlowKey(link, proto, guest, port, remote, rport)


def test_insert_lookup_get_remove():
    t = FlowTable()
    f = t.insert(key(), 1.0, host_addr=b"\x7f\0\0\1", host_port=53)
    assert f.state is FlowState.OPENING
    assert t.lookup(key()) is f and t.get(f.id) is f
    assert (f.host_addr, f.host_port, f.created, f.last_active) == (b"\x7f\0\0\1", 53, 1.0, 1.0)
    assert len(t) == 1 and t.count(PROTO_UDP) == 1 and list(t) == [f]
    t.remove(f)
    assert f.state is FlowState.CLOSED
    assert t.lookup(key()) is None and t.get(f.id) is None and len(t) == 0
    t.remove(f)  # idempotent
    assert t.count(PROTO_UDP) == 0


def test_keys_are_family_neutral_and_carry_link_and_proto():
    t = FlowTable()
    a = t.insert(key(guest=G4, remote=R4), 0)
    b = t.insert(key(guest=G6, remote=R6), 0)
    c = t.insert(key(link=1), 0)
    d = t.insert(key(proto=PROTO_TCP), 0)
    assert len({a.id, b.id, c.id, d.id}) == 4
    assert t.lookup(key(guest=G6, remote=R6)) is b and t.lookup(key(link=1)) is c


def test_duplicate_key_raises():
    t = FlowTable()
    t.insert(key(), 0)
    with pytest.raises(FlowExists):
        t.insert(key(), 0)


def test_flow_ids_are_never_reused():
    t = FlowTable()
    seen = set()
    for i in range(50):
        f = t.insert(key(port=1000 + i % 3), i)
        assert f.id not in seen
        seen.add(f.id)
        t.remove(f)


def test_state_machine_guarded():
    t = FlowTable()
    log = []
    t.transition_log = lambda flow, old, new: log.append((old, new))
    f = t.insert(key(), 0)
    t.set_state(f, FlowState.ESTABLISHED)
    t.set_state(f, FlowState.ESTABLISHED)  # no-op
    with pytest.raises(IllegalFlowTransition):
        t.set_state(f, FlowState.OPENING)
    t.set_state(f, FlowState.CLOSING)
    with pytest.raises(IllegalFlowTransition):
        t.set_state(f, FlowState.ESTABLISHED)
    t.remove(f)
    assert log == [
        (FlowState.OPENING, FlowState.ESTABLISHED),
        (FlowState.ESTABLISHED, FlowState.CLOSING),
        (FlowState.CLOSING, FlowState.CLOSED),
    ]


def test_per_protocol_limits():
    t = FlowTable(limits={PROTO_UDP: 2, PROTO_TCP: 1})
    t.insert(key(1), 0)
    t.insert(key(2), 0)
    assert t.is_full(PROTO_UDP) and not t.is_full(PROTO_TCP)
    with pytest.raises(FlowTableFull):
        t.insert(key(3), 0)
    t.insert(key(1, proto=PROTO_TCP), 0)  # separate quota
    assert t.limit(PROTO_ICMP) == DEFAULT_LIMIT


def test_idle_expiry_follows_touch():
    t = FlowTable()
    f = t.insert(key(), 0.0, idle_timeout=10.0)
    g = t.insert(key(2), 0.0, idle_timeout=30.0)
    assert t.next_deadline(PROTO_UDP) == 10.0
    t.touch(f, 5.0)  # now due at 15
    assert t.expire(PROTO_UDP, 10.0) == []  # early wake-up re-arms
    assert t.next_deadline(PROTO_UDP) == 15.0
    assert t.expire(PROTO_UDP, 15.0) == [f]
    assert f.state is FlowState.CLOSED and t.lookup(key()) is None
    assert t.next_deadline() == 30.0
    assert t.expire(PROTO_UDP, 31.0) == [g]
    assert t.next_deadline() is None and t.due(PROTO_UDP, 100) == []


def test_deadline_moved_earlier_and_disarmed():
    t = FlowTable()
    f = t.insert(key(), 0.0)
    t.set_deadline(f, 50.0)
    t.set_deadline(f, 5.0)
    assert t.next_deadline(PROTO_UDP) == 5.0
    assert t.due(PROTO_UDP, 5.0) == [f]
    assert f.deadline is None and f.state is FlowState.OPENING  # due() does not remove
    assert t.due(PROTO_UDP, 60.0) == []  # the stale 50.0 entry is skipped
    t.set_deadline(f, 7.0)
    t.set_deadline(f, None)
    assert t.due(PROTO_UDP, 10.0) == []
    t.set_idle_timeout(f, 3.0, 10.0)
    assert t.due(PROTO_UDP, 13.0) == [f]
    t.set_idle_timeout(f, None, 13.0)
    assert f.deadline is None


def test_removed_flows_leave_no_live_timer():
    t = FlowTable()
    f = t.insert(key(), 0.0, idle_timeout=1.0)
    t.remove(f)
    assert t.next_deadline(PROTO_UDP) is None
    t.set_deadline(f, 5.0)  # ignored for a closed flow
    assert t.due(PROTO_UDP, 10.0) == []


def test_heap_stays_bounded_under_churn():
    t = FlowTable(limits={PROTO_TCP: 100})
    for i in range(20000):
        f = t.insert(key(i % 50, proto=PROTO_TCP), float(i))
        t.set_deadline(f, i + 1000.0)
        t.set_deadline(f, i + 500.0)  # earlier: a second entry
        t.remove(f)
    assert len(t._heaps[PROTO_TCP]) <= 2 * 0 + 64 + 2
    assert t.next_deadline(PROTO_TCP) is None


def test_lru_eviction_of_evictable_flows_only():
    t = FlowTable(limits={PROTO_UDP: 3})
    a = t.insert(key(1), 0.0, evictable=True)
    b = t.insert(key(2), 1.0)
    c = t.insert(key(3), 2.0, evictable=True)
    t.touch(a, 3.0)  # a is now more recent than c
    assert t.evict_lru(PROTO_UDP) is c and c.state is FlowState.CLOSED
    assert t.evict_lru(PROTO_UDP) is a
    assert t.evict_lru(PROTO_UDP) is None  # b is not evictable
    assert t.lookup(key(2)) is b
    t.set_evictable(b, True)
    t.set_evictable(b, False)
    assert t.evict_lru(PROTO_UDP) is None
    assert t.evict_lru(PROTO_TCP) is None
    t.set_evictable(b, True)
    t.remove(b)
    assert t.evict_lru(PROTO_UDP) is None


def test_random_operations_keep_invariants():
    rng = random.Random(7)
    t = FlowTable(limits={PROTO_UDP: 20, PROTO_TCP: 20})
    live = {}
    now = 0.0
    for _ in range(5000):
        now += rng.random()
        op = rng.random()
        proto = rng.choice((PROTO_UDP, PROTO_TCP))
        k = key(rng.randrange(40), proto=proto)
        if op < 0.4:
            if k in live or t.is_full(proto):
                continue
            live[k] = t.insert(k, now, idle_timeout=rng.choice((None, 5.0, 20.0)), evictable=rng.random() < 0.5)
        elif op < 0.6 and k in live:
            t.touch(live[k], now)
        elif op < 0.7 and k in live:
            t.set_deadline(live[k], now + rng.random() * 10)
        elif op < 0.8 and k in live:
            t.remove(live.pop(k))
        elif op < 0.9:
            for f in t.expire(proto, now):
                assert f.key in live
                del live[f.key]
        else:
            f = t.evict_lru(proto)
            if f is not None:
                del live[f.key]
        assert len(t) == len(live)
        for k2, f in live.items():
            assert t.lookup(k2) is f and f.state is not FlowState.CLOSED
            if f.deadline is not None:
                assert f._armed is not None and f._armed <= f.deadline
        for p in (PROTO_UDP, PROTO_TCP):
            assert t.count(p) <= 20
            assert len(t._heaps.get(p, ())) <= 2 * t.count(p) + 64 + 1


def test_open_idle_flow_touches_inserts_and_evicts_the_least_recent():
    table = FlowTable(limits={PROTO_UDP: 2})
    keys = [FlowKey(0, PROTO_UDP, b"\x0a\x00\x02\x64", port, b"", 0) for port in (1000, 1001, 1002)]
    a, created, victim = table.open_idle_flow(keys[0], 0.0, idle_timeout=240.0, endpoint="a")
    assert created and victim is None and a.state is FlowState.ESTABLISHED and a.evictable
    b, created, _ = table.open_idle_flow(keys[1], 1.0, idle_timeout=240.0, endpoint="b")
    assert created
    same, created, victim = table.open_idle_flow(keys[0], 2.0, idle_timeout=240.0, endpoint="ignored")
    assert same is a and not created and victim is None and a.endpoint == "a"
    c, created, victim = table.open_idle_flow(keys[2], 3.0, idle_timeout=240.0, endpoint="c")
    assert created and victim is b  # b was touched last at 1.0, a at 2.0
    assert table.lookup(keys[1]) is None and table.count(PROTO_UDP) == 2
    assert table.next_deadline(PROTO_UDP) == 240.0  # a's first deadline is still armed (lazy)
