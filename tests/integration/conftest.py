"""Fixtures for the namespace tests (marked ``netns``; run as an unprivileged user)."""

from __future__ import annotations

import pytest

from .nsutil import Netns, Slirpnet, World


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.netns)


@pytest.fixture
def netns():
    ns = Netns()
    yield ns
    ns.close()


@pytest.fixture
def world(tmp_path):
    """host / remote / guest namespaces: see nsutil.World."""
    w = World(tmp_path)
    yield w
    w.close()


@pytest.fixture
def start_slirpnet(tmp_path):
    """start_slirpnet(args, ready=True, prefix=None) -> Slirpnet, ready; all are stopped at teardown."""
    started: list[Slirpnet] = []

    def start(args, ready=True, pass_fds=(), prefix=None, env=None):
        s = Slirpnet(list(args), tmp_path, pass_fds=pass_fds, ready=ready, prefix=prefix, env=env)
        started.append(s)
        if ready:
            assert s.wait_ready() == b"1", s.stderr()
        return s

    yield start
    for s in started:
        s.close()
