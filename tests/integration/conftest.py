"""Fixtures for the namespace tests (marked ``netns``; run as an unprivileged user)."""

from __future__ import annotations

import os

import pytest

from .hostpeers import HttpServer, UdpEcho
from .nsutil import Netns, Slirpnet, World


# Modules whose tests run twice: as written, and with slirpnet confined the
# way rootless Podman starts it (compat spec §7, §8) — the stack must do all
# it does under the sandbox and the seccomp filter too.
CONFINED_MODULE_PREFIXES = ("test_outbound", "test_portfwd", "test_port_forward", "test_api")
CONFINE_FLAGS = ("--enable-sandbox", "--enable-seccomp")


def pytest_generate_tests(metafunc):
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "start_slirpnet" in metafunc.fixturenames and module.startswith(CONFINED_MODULE_PREFIXES):
        if metafunc.definition.get_closest_marker("plain_only"):
            return  # heavy tests whose confined twin adds time, not coverage
        metafunc.parametrize("slirpnet_flags", [(), CONFINE_FLAGS], ids=["plain", "confined"])


@pytest.fixture
def slirpnet_flags():
    """Options start_slirpnet puts before every argv (see CONFINED_MODULE_PREFIXES)."""
    return ()


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
def start_slirpnet(tmp_path, slirpnet_flags):
    """start_slirpnet(args, ready=True, prefix=None) -> Slirpnet, ready; all are stopped at teardown."""
    started: list[Slirpnet] = []

    def start(args, ready=True, pass_fds=(), prefix=None, env=None):
        s = Slirpnet([*slirpnet_flags, *args], tmp_path, pass_fds=pass_fds, ready=ready, prefix=prefix, env=env)
        started.append(s)
        if ready:
            assert s.wait_ready() == b"1", s.stderr()
            if "--enable-seccomp" in slirpnet_flags:  # really confined, not just asked
                assert "seccomp: The following syscalls are blocked: " in s.stdout()
                assert os.path.exists(f"/proc/{s.pid}/root/home") is False
        return s

    yield start
    for s in started:
        s.close()


# Host-side servers on loopback (hostpeers), one per test.
HTTP_BODY = b"<html><body>slirpnet test page</body></html>\n" * 100


@pytest.fixture
def http_server():
    server = HttpServer("127.0.0.1", HTTP_BODY)
    yield server
    server.close()


@pytest.fixture
def http6():
    server = HttpServer("::1", HTTP_BODY)
    yield server
    server.close()


@pytest.fixture
def udp_echo():
    server = UdpEcho("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def udp_echo6():
    server = UdpEcho("::1")
    yield server
    server.close()
