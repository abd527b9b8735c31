"""Bulk transfer between two of our endpoints over a lossy, reordering,
duplicating link, both directions at once, with a manual clock (sim.py)."""

import pytest

from netstack.tcp import TcpConfig

from .sim import Sim


def check_complete(sim: Sim) -> None:
    hp = sim.host_p[sim.flow_p]
    ha = sim.host_a[sim.flow_a]
    # both byte streams arrive exactly, each followed by its EOF
    assert bytes(hp.got) == sim.expected_at_p
    assert bytes(ha.got) == sim.expected_at_a
    assert hp.shutdown and ha.shutdown
    # both host sockets closed exactly once, gracefully
    assert hp.closed and ha.closed
    assert hp.reset is False and ha.reset is False
    # nothing left behind: TIME_WAIT expired, tables empty
    assert len(sim.p.table) == 0 and len(sim.a.table) == 0
    assert sim.p.next_deadline() is None and sim.a.next_deadline() is None


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.10])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_both_ways(seed, loss):
    sim = Sim(seed=seed, loss=loss, nbytes_pa=300_000, nbytes_ap=200_000)
    sim.run()
    check_complete(sim)
    if loss:
        assert sim.dropped > 0
        assert sim.counters_p["tcp.retransmits"] + sim.counters_a["tcp.retransmits"] > 0


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.10])
def test_bulk_small_host_buffers_zero_windows(loss):
    """Host sockets with 4 KiB buffers draining slowly: the window offered
    follows the host's send space, closes, and reopens via WatchTcpWritable."""
    sim = Sim(seed=11, loss=loss, sndbuf=4096, drain_per_ms=2048, nbytes_pa=150_000, nbytes_ap=60_000)
    sim.run()
    check_complete(sim)


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_bulk_ipv6_without_timestamps(loss):
    sim = Sim(seed=5, loss=loss, ipv6=True, config=TcpConfig(mtu=1280, timestamps=False))
    sim.run()
    check_complete(sim)


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_bulk_without_window_scaling_small_buffers(loss):
    cfg = TcpConfig(window_scaling=False, rcv_buf_max=32768, snd_buf_max=40000)
    sim = Sim(seed=6, loss=loss, config=cfg)
    sim.run()
    check_complete(sim)


def test_no_loss_no_reorder_needs_no_retransmission():
    sim = Sim(seed=3, loss=0.0, reorder=0.0, duplicate=0.0, nbytes_pa=1_000_000, nbytes_ap=1_000_000)
    sim.run()
    check_complete(sim)
    for c in (sim.counters_p, sim.counters_a):
        assert c["tcp.retransmits"] == 0
        assert c["tcp.rx_out_of_window"] == 0 and c["tcp.rx_duplicate"] == 0
    # a clean link moves a megabyte each way in well under a simulated second
    assert max(sim.host_p[sim.flow_p].shutdown_at, sim.host_a[sim.flow_a].shutdown_at) < 0.5


def test_many_seeds_lossy():
    """A wider sweep, still fast: every (seed, loss) completes exactly."""
    for seed in range(20, 40):
        sim = Sim(seed=seed, loss=(0.0, 0.01, 0.05, 0.10)[seed % 4], nbytes_pa=60_000, nbytes_ap=60_000)
        sim.run()
        check_complete(sim)
