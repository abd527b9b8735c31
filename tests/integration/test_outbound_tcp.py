"""Outbound TCP through slirpnet, with real tools (curl, socat, ncat) inside the namespace."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest

from .hostpeers import byte_exact_transfer, free_port
from .nsutil import ENV, SLIRPNET, World, spawn, stop

GIB = 1 << 30


def test_http_get_from_host_loopback(netns, start_slirpnet, http_server):
    start_slirpnet(["-c", str(netns.pid), "tap0"])
    res = netns.run("curl", "-sS", "--max-time", "10", f"http://10.0.2.2:{http_server.port}/", timeout=20)
    assert res.returncode == 0, res.stderr
    assert res.stdout == http_server.body


def test_run_curl_fetches_a_page_from_the_host(http_server):
    res = subprocess.run(
        [*SLIRPNET, "run", "--", "curl", "-sS", "--max-time", "10", f"http://10.0.2.2:{http_server.port}/"],
        capture_output=True, env=ENV, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == http_server.body


def test_tcp_echo_with_socat_and_ncat(netns, start_slirpnet):
    port = free_port()
    server = spawn(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"])
    try:
        time.sleep(0.3)
        start_slirpnet(["-c", str(netns.pid), "tap0"])
        res = netns.run("sh", "-c", f"printf 'hello\\n' | socat -t2 - TCP:10.0.2.2:{port}", timeout=15)
        assert res.stdout == b"hello\n"
        res = netns.run("ncat", "-w3", "10.0.2.2", str(port), input=b"ncat says hi\n", timeout=15)
        assert res.stdout == b"ncat says hi\n"
    finally:
        stop(server)


def test_half_close_both_directions(netns, start_slirpnet):
    """The guest shuts down its sending side (nc -N / shutdown(SHUT_WR)); the
    host sees EOF, then answers and closes; the guest reads it all."""
    port = free_port()
    # Server: read everything until EOF, then send back its length and close.
    server_code = f"""
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", {port})); l.listen(1); print("ready", flush=True)
c, _ = l.accept(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    n += len(b)
c.sendall(f"got {{n}} bytes".encode()); c.close()
"""
    server = spawn([sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "ready\n"
        start_slirpnet(["-c", str(netns.pid), "tap0"])
        # socat shuts down its write side at stdin EOF and keeps reading.
        res = netns.run("sh", "-c", f"head -c 100000 /dev/zero | socat -t5 - TCP:10.0.2.2:{port}", timeout=20)
        assert res.stdout == b"got 100000 bytes"
    finally:
        stop(server)
        server.stdout.close()


def test_connection_refused_is_a_reset(netns, start_slirpnet):
    start_slirpnet(["-c", str(netns.pid), "tap0"])
    res = netns.run("curl", "-sS", "--max-time", "5", f"http://10.0.2.2:{free_port()}/", timeout=15)
    assert res.returncode == 7 and b"Couldn't connect" in res.stderr  # immediate: a RST, not a time-out


def test_reset_from_the_host_reaches_the_guest(netns, start_slirpnet):
    port = free_port()
    server_code = f"""
import socket, struct
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", {port})); l.listen(1); print("ready", flush=True)
c, _ = l.accept(); c.recv(10)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
"""
    server = spawn([sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True)
    guest_code = f"""
import socket
s = socket.create_connection(("10.0.2.2", {port}), timeout=5)
s.sendall(b"x")
try:
    print("data" if s.recv(10) else "eof")
except ConnectionResetError:
    print("reset")
"""
    try:
        assert server.stdout.readline() == "ready\n"
        start_slirpnet(["-c", str(netns.pid), "tap0"])
        res = netns.run(sys.executable, "-c", guest_code, timeout=20)
        assert res.stdout.decode().strip() == "reset", res.stderr
    finally:
        stop(server)
        server.stdout.close()


def test_reset_from_the_guest_reaches_the_host(netns, start_slirpnet):
    port = free_port()
    server_code = f"""
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", {port})); l.listen(1); print("ready", flush=True)
c, _ = l.accept(); c.settimeout(10)
try:
    print("data" if c.recv(10) else "eof", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
"""
    server = spawn([sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True)
    guest_code = f"""
import socket, struct
s = socket.create_connection(("10.0.2.2", {port}), timeout=5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
"""
    try:
        assert server.stdout.readline() == "ready\n"
        start_slirpnet(["-c", str(netns.pid), "tap0"])
        netns.run(sys.executable, "-c", guest_code, timeout=20, check=True)
        assert server.stdout.readline().strip() == "reset"
    finally:
        stop(server)
        server.stdout.close()


def test_disable_host_loopback_gives_network_unreachable(netns, start_slirpnet, http_server):
    start_slirpnet(["-c", "--disable-host-loopback", str(netns.pid), "tap0"])
    res = netns.run("ncat", "-w3", "10.0.2.2", str(http_server.port), input=b"", timeout=15)
    assert b"Network is unreachable" in res.stderr, res.stderr


def test_dns_address_other_ports_are_network_unreachable(netns, start_slirpnet):
    start_slirpnet(["-c", str(netns.pid), "tap0"])
    res = netns.run("ncat", "-w3", "10.0.2.3", "80", input=b"", timeout=15)
    assert b"Network is unreachable" in res.stderr, res.stderr


def test_tcp_to_a_remote_namespace(world, start_slirpnet):
    server = spawn(world.remote.enter("socat", "TCP-LISTEN:8080,reuseaddr,fork", "EXEC:cat"))
    try:
        time.sleep(0.3)
        start_slirpnet(["-c", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
        res = world.guest.run("sh", "-c", f"echo far away | socat -t2 - TCP:{World.REMOTE_ADDR}:8080", timeout=15)
        assert res.stdout == b"far away\n"
    finally:
        stop(server)


def test_host_unreachable_and_silent_destinations(world, start_slirpnet):
    start_slirpnet(["-c", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    # 198.51.100.3 is on the host's veth subnet but nobody answers ARP: EHOSTUNREACH.
    res = world.guest.run("ncat", "-w8", "198.51.100.3", "80", input=b"", timeout=20)
    assert b"No route to host" in res.stderr, res.stderr
    # 203.0.113.1 is routed to the remote namespace, which drops it: the connect
    # never completes, so the guest's SYN stays unanswered and the guest times out.
    t0 = time.monotonic()
    res = world.guest.run("ncat", "-w2", "203.0.113.1", "80", input=b"", timeout=20)
    assert b"TIMEOUT" in res.stderr.upper() or b"timed out" in res.stderr, res.stderr
    assert time.monotonic() - t0 >= 1.9


def test_disable_dns_connect_to_dns_address_times_out(world, start_slirpnet):
    """test-slirp4netns-disable-dns: TCP to N+3:53 times out (not refused) —
    the real 10.0.2.3 is tried, inside the test world."""
    start_slirpnet(["-c", "--disable-dns", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    res = world.guest.run("ncat", "-w2", "10.0.2.3", "53", input=b"", timeout=20)
    assert b"TIMEOUT" in res.stderr.upper() or b"timed out" in res.stderr, res.stderr


def test_dns_over_tcp(world, start_slirpnet):
    from .test_outbound_udp import dig

    proc = spawn(
        world.host.enter(sys.executable, str(pathlib.Path(__file__).parent / "dnsserver.py"),
                         "127.0.0.1", "53", "web.test=192.0.2.10"),
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        start_slirpnet(["-c", f"--resolv-conf={world.resolv_conf}", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
        assert dig(world.guest, "+tcp", "@10.0.2.3", "web.test") == "192.0.2.10"
    finally:
        stop(proc)
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.plain_only
@pytest.mark.parametrize("direction", ["guest_to_host", "host_to_guest"])
def test_one_gib_byte_exact(netns, start_slirpnet, tmp_path, direction):
    """sha256 over 1 GiB of random data, each way, through one connection."""
    sums = tmp_path / "sums"
    sums.mkdir()
    sums.chmod(0o777)
    byte_exact_transfer(netns, lambda: start_slirpnet(["-c", str(netns.pid), "tap0"]), sums, GIB, direction,
                        host="127.0.0.1", gateway="10.0.2.2")  # fmt: skip


@pytest.mark.parametrize("kind", ["native", "native-sync", "python", "off"])
def test_every_datapath_carries_the_same_traffic(netns, start_slirpnet, http_server, kind):
    """SLIRPNET_DATAPATH picks what moves established flows (README,
    "Environment"); whichever it is, a page and 4 MB echoed both ways arrive
    intact."""
    port = free_port()
    server = spawn(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"])
    try:
        time.sleep(0.3)
        start_slirpnet(["-c", str(netns.pid), "tap0"], env={"SLIRPNET_DATAPATH": kind})
        res = netns.run("curl", "-sS", "--max-time", "10", f"http://10.0.2.2:{http_server.port}/", timeout=20)
        assert res.stdout == http_server.body, res.stderr
        script = (
            "f=$(mktemp); head -c 4000000 /dev/urandom > $f; a=$(sha256sum < $f); "
            f"b=$(socat -t5 - TCP:10.0.2.2:{port} < $f | sha256sum); rm -f $f; "
            '[ "$a" = "$b" ] && echo intact || echo "differs: $a / $b"'
        )
        assert netns.run("sh", "-c", script, timeout=60).stdout == b"intact\n"
    finally:
        stop(server)
