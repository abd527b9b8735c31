"""Traffic through port forwards (issue 5 item 6, compat spec §4.6, §6.3).

slirpnet runs as the unprivileged test user against a namespace the test made;
servers inside it are tests/integration/fwdpeers.py, which tell the client
what peer address the guest saw.  Clients are this process (loopback), or
ncat in the test world's "remote" and "host" namespaces.  Forward listeners
bind ports the kernel picked free on this machine's loopback.  Like the other
test_portfwd* modules, each test that starts slirpnet runs twice: plain and
confined (--enable-sandbox --enable-seccomp, conftest.py).
"""

from __future__ import annotations

import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from .nsutil import ENV, SLIRPNET, Netns, World, spawn, stop
from .hostpeers import free_ports
from .test_api import add_req, can_bind, fd_count, fd_count_becomes, remove_req, request

FWDPEERS = str(pathlib.Path(__file__).with_name("fwdpeers.py"))
GATEWAY = "10.0.2.2"
CHURN_BATCHES = 3
CHURN_CONNECTIONS = 3000
CHURN_MIN_RATIO = 0.8  # the last batch's rate against the first
CHURN_BATCH_MAX_S = 30  # a batch takes 2-6 s; pytest's own timeout is 120 s for the test


@pytest.fixture
def sockdir():
    """A short directory for the API socket (sun_path is 108 bytes at most)."""
    d = tempfile.mkdtemp(prefix="snfwd-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def servers():
    """servers(ns, mode, *ports) -> a fwdpeers.py inside ``ns``, listening; all stopped at teardown."""
    started = []

    def start(ns, mode: str, *ports: int):
        proc = spawn(ns.enter(sys.executable, FWDPEERS, mode, *map(str, ports)), stdout=subprocess.PIPE, text=True)
        started.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline() == "ready\n", f"fwdpeers {mode} did not start"
        return proc

    yield start
    for proc in started:
        stop(proc)
        proc.stdout.close()


@pytest.fixture
def fwd(netns, start_slirpnet, sockdir):
    """slirpnet -c with an API socket: (process, socket path)."""
    path = os.path.join(sockdir, "api.sock")
    s = start_slirpnet(["-c", "--api-socket", path, str(netns.pid), "tap0"])
    return s, path


def add(path: str, proto: str, host_port: int, guest_port: int, host_addr: str = "127.0.0.1") -> int:
    reply = request(path, add_req(proto, host_port, guest_port, host_addr=host_addr))
    assert reply.startswith(b'{"return":{"id":'), reply
    return int(reply.split(b":")[-1].rstrip(b"}"))


def recv_line(sock: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"EOF after {buf!r}"
        buf += chunk
    return buf.decode()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {buf!r}"
        buf += chunk
    return buf


# -- TCP ------------------------------------------------------------------------------------------


def test_100_tcp_forwards_at_once(fwd, netns, servers):
    """100 forwards, 100 connections open at the same time, each reaching its own guest port."""
    s, path = fwd
    guest_ports = list(range(8000, 8100))
    servers(netns, "ident", *guest_ports)
    host_ports = free_ports(100)
    for hp, gp in zip(host_ports, guest_ports):
        add(path, "tcp", hp, gp)
    conns = []
    try:
        for hp in host_ports:
            c = socket.create_connection(("127.0.0.1", hp), timeout=10)
            conns.append(c)
        for i, (c, gp) in enumerate(zip(conns, guest_ports)):
            port, peer, peer_port = recv_line(c).split()
            assert (int(port), peer) == (gp, GATEWAY)  # a loopback client appears as the gateway
            assert int(peer_port) == c.getsockname()[1]  # with its own port
            c.sendall(b"hello %d\n" % i)
        for i, c in enumerate(conns):
            assert recv_exactly(c, len(b"hello %d\n" % i)) == b"hello %d\n" % i
    finally:
        for c in conns:
            c.close()
    assert s.proc.poll() is None


def churn_forward(start_slirpnet, ns, servers, sockdir: str):
    """slirpnet (fd limit 1024, soft and hard: it cannot raise it) serving ``ns``, the
    churn server in ``ns`` and one forward to it: (slirpnet, host port, its fd count)."""
    path = os.path.join(sockdir, f"churn-{ns.pid}.sock")
    s = start_slirpnet(
        ["-c", "--api-socket", path, str(ns.pid), "tap0"], prefix=["prlimit", "--nofile=1024:1024", "--"]
    )
    servers(ns, "churn", 8000)
    (hp,) = free_ports(1)
    fds = fd_count(s.pid) + 1  # and the forward's listener (not the API connection, closed just after)
    add(path, "tcp", hp, 8000)
    return s, hp, fds


def churn_batch(port: int, label: str) -> float:
    """CHURN_CONNECTIONS connections to 127.0.0.1:port, one after another (connect,
    1 byte each way, close): the rate, once all succeeded."""
    failed = []
    started = time.monotonic()
    for i in range(CHURN_CONNECTIONS):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(b"x")
                if c.recv(1) != b"y":
                    failed.append((i, "no reply"))
        except OSError as err:
            failed.append((i, repr(err)))
        if i % 300 == 299:
            elapsed = time.monotonic() - started
            assert elapsed < CHURN_BATCH_MAX_S, f"{label}: only {i + 1} connections in {elapsed:.0f} s"
    assert not failed, f"{label}: {len(failed)} failed, first {failed[:3]}"
    return CHURN_CONNECTIONS / (time.monotonic() - started)


@pytest.mark.slow
def test_forward_churn_keeps_its_rate_and_no_fds(netns, start_slirpnet, sockdir, servers, capsys):
    """3 back-to-back batches of 3,000 short connections (connect, 1 byte each way,
    close) through one forward, with slirpnet's fd limit at 1024 (soft and hard,
    so it cannot raise it): no connection fails, closed connections keep no fds,
    and the last batch is at least 80% as fast as the first.  (slirp4netns 1.2.0
    falls from ~3,500 to ~1,800 connections/s with a raised limit and collapses
    with errors under this one.)

    Rates are wall-clock: on the 2-CPU VMs this runs on, slirpnet's CPU time
    for the very same 3,000 connections (6 frames in, 5 out each) moves by
    ±30% from one batch to the next with nothing else running, in plateaus of
    seconds.  So when the last batch misses the mark, a control decides: a
    batch through a fresh slirpnet, forward and server, then one more through
    the worn one.  Unless the fresh one beats both of the worn one's last two
    batches by the same margin, the machine slowed down, not slirpnet, and the
    test is skipped with the figures; otherwise it fails.  Everything else is
    checked whatever the timing."""
    s, hp, fds = churn_forward(start_slirpnet, netns, servers, sockdir)
    rates = []
    for batch in range(CHURN_BATCHES):
        rates.append(churn_batch(hp, f"batch {batch + 1}"))
        assert fd_count_becomes(s.pid, fds) == fds, f"batch {batch + 1} left fds open"
    assert s.proc.poll() is None
    figures = f"forward churn: {' -> '.join(f'{r:.0f}' for r in rates)} connections/s"
    if rates[-1] < CHURN_MIN_RATIO * rates[0]:
        fresh = Netns()
        try:
            control_s, control_hp, _ = churn_forward(start_slirpnet, fresh, servers, sockdir)
            control = churn_batch(control_hp, "control")
            control_s.close()
        finally:
            fresh.close()
        again = churn_batch(hp, "batch 4")
        figures += f"; then a fresh slirpnet: {control:.0f}, and this one again: {again:.0f}"
        if max(rates[-1], again) >= CHURN_MIN_RATIO * control:
            pytest.skip(f"the machine slowed down, not slirpnet: {figures}")
    with capsys.disabled():
        print("\n" + figures)
    assert rates[-1] >= CHURN_MIN_RATIO * rates[0], figures


def test_guest_sees_the_real_peer_and_the_gateway_for_loopback(world, start_slirpnet, sockdir, servers):
    """Spec §4.6: a client from another machine (the test world's remote namespace)
    appears with its own address; one on the host's loopback appears as the
    gateway ("Connection from 10.0.2.2"), TCP and UDP alike."""
    path = os.path.join(sockdir, "api.sock")
    start_slirpnet(["-c", "--api-socket", path, str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    servers(world.guest, "ident", 8000)
    servers(world.guest, "udp", 5353)
    add(path, "tcp", 8080, 8000, host_addr="0.0.0.0")  # ports of the test world's host namespace
    add(path, "udp", 5353, 5353, host_addr="0.0.0.0")

    res = world.remote.run("ncat", "-w5", World.HOST_ADDR, "8080", input=b"from afar\n", timeout=20)
    banner, echo = res.stdout.decode().splitlines()
    assert banner.split()[:2] == ["8000", World.REMOTE_ADDR] and echo == "from afar", res
    res = world.host.run("ncat", "-w5", "127.0.0.1", "8080", input=b"from here\n", timeout=20)
    banner, echo = res.stdout.decode().splitlines()
    assert banner.split()[:2] == ["8000", GATEWAY] and echo == "from here", res

    res = world.remote.run(sys.executable, FWDPEERS, "ask", World.HOST_ADDR, "5353", "udp afar", timeout=20)
    assert res.stdout.split(b" ")[0].decode() == World.REMOTE_ADDR and res.stdout.endswith(b" udp afar"), res
    res = world.host.run(sys.executable, FWDPEERS, "ask", "127.0.0.1", "5353", "udp here", timeout=20)
    assert res.stdout.split(b" ")[0].decode() == GATEWAY and res.stdout.endswith(b" udp here"), res


def test_removal_closes_the_listener_but_not_its_connections(fwd, netns, servers):
    s, path = fwd
    servers(netns, "ident", 8000)
    (hp,) = free_ports(1)
    fid = add(path, "tcp", hp, 8000)
    with socket.create_connection(("127.0.0.1", hp), timeout=10) as c:
        assert recv_line(c).split()[:2] == ["8000", GATEWAY]
        assert request(path, remove_req(fid)) == b'{"return":{}}'
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", hp), timeout=10).close()
        assert can_bind("tcp", "127.0.0.1", hp)
        for i in range(20):  # the accepted connection lives on, both ways
            c.sendall(b"still here %d\n" % i)
            assert recv_exactly(c, len(b"still here %d\n" % i)) == b"still here %d\n" % i
        c.shutdown(socket.SHUT_WR)
        assert c.recv(100) == b""  # and closes cleanly
    assert s.proc.poll() is None


def test_forward_to_a_port_nobody_listens_on_resets_the_client(fwd, netns, servers):
    """The guest answers the SYN with RST: the host client is reset (or closed), at once."""
    s, path = fwd
    servers(netns, "ident", 8000)
    dead, live = free_ports(2)
    baseline = fd_count(s.pid) + 2  # and the two listeners
    add(path, "tcp", dead, 8999)
    add(path, "tcp", live, 8000)
    for _ in range(5):
        started = time.monotonic()
        try:  # the reset may even beat connect() back to this process, under load
            with socket.create_connection(("127.0.0.1", dead), timeout=10) as c:
                got = c.recv(100)
        except ConnectionResetError:
            got = None
        assert got in (None, b""), got
        assert time.monotonic() - started < 3
    with socket.create_connection(("127.0.0.1", live), timeout=10) as c:  # the others are unaffected
        assert recv_line(c).startswith("8000 ")
    assert fd_count_becomes(s.pid, baseline) == baseline


# -- UDP ------------------------------------------------------------------------------------------


def test_udp_round_trips_reach_the_right_client(fwd, netns, servers):
    """Several clients on one UDP forward, interleaved: every reply goes back to
    the client that asked (the guest sees each as gateway:its own port)."""
    s, path = fwd
    servers(netns, "udp", 5353)
    (hp,) = free_ports(1)
    add(path, "udp", hp, 5353)
    clients = []
    try:
        for _ in range(5):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind(("127.0.0.1", 0))
            c.settimeout(5)
            clients.append(c)
        for rnd in range(20):
            for i, c in enumerate(clients):
                c.sendto(b"client %d round %d" % (i, rnd), ("127.0.0.1", hp))
            for i, c in enumerate(clients):
                data, src = c.recvfrom(65535)
                assert src == ("127.0.0.1", hp)
                peer, peer_port, payload = data.split(b" ", 2)
                assert (peer.decode(), int(peer_port)) == (GATEWAY, c.getsockname()[1])
                assert payload == b"client %d round %d" % (i, rnd)
        big = os.urandom(9000)  # bigger than the MTU: fragmented toward the guest and back
        clients[0].sendto(big, ("127.0.0.1", hp))
        assert clients[0].recvfrom(65535)[0].split(b" ", 2)[2] == big
    finally:
        for c in clients:
            c.close()
    assert s.proc.poll() is None


# -- slirpnet run -p --------------------------------------------------------------------------------


def test_run_publish_serves_a_page(tmp_path):
    """``slirpnet run -p 127.0.0.1:HOSTPORT:80 -- httpd``: curl on the host gets the page."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("published by slirpnet run\n")
    (hp,) = free_ports(1)
    busybox = shutil.which("busybox")
    assert busybox, "busybox is not installed (tests/run installs busybox-static)"
    proc = spawn(
        [*SLIRPNET, "run", "-p", f"127.0.0.1:{hp}:80", "--", busybox, "httpd", "-f", "-p", "80", "-h", str(www)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            res = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{hp}/"], capture_output=True, timeout=15)
            if res.returncode == 0:
                break
            assert proc.poll() is None and time.monotonic() < deadline, res.stderr
            time.sleep(0.2)
        assert res.stdout == b"published by slirpnet run\n"
        os.kill(proc.pid, signal.SIGTERM)  # passed on to httpd; then run exits and unpublishes
        proc.wait(timeout=10)
        assert can_bind("tcp", "127.0.0.1", hp)
    finally:
        stop(proc)
        proc.stderr.close()
