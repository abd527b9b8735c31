"""Fixtures for the namespace tests (marked ``netns``; run as an unprivileged user)."""

from __future__ import annotations

import pytest

from .nsutil import Netns, Slirpnet


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
def start_slirpnet(tmp_path):
    """start_slirpnet(args, ready=True) -> Slirpnet, ready; all are stopped at teardown."""
    started: list[Slirpnet] = []

    def start(args, ready=True, pass_fds=()):
        s = Slirpnet(list(args), tmp_path, pass_fds=pass_fds, ready=ready)
        started.append(s)
        if ready:
            assert s.wait_ready() == b"1", s.stderr()
        return s

    yield start
    for s in started:
        s.close()
