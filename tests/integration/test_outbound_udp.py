"""Outbound UDP, DNS, DHCP and ping relay, with real tools inside the namespace.

Tests that only need the host's loopback use the plain ``netns`` fixture
(slirpnet runs as the test user; the gateway is the real 127.0.0.1).  Tests
that need "the outside world" use ``world``: slirpnet runs in a test-made host
namespace whose only route leads to a test-made remote namespace.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from .hostpeers import UdpEcho, guest_udp
from .nsutil import ROOT, World, spawn, stop

def snmp(ns, section: str) -> dict[str, int]:
    text = ns.run("cat", "/proc/net/snmp", check=True).stdout.decode()
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith(section + ":")]
    return dict(zip(names, map(int, values)))


def test_udp_to_host_loopback_through_the_gateway(netns, start_slirpnet, udp_echo):
    start_slirpnet(["-c", str(netns.pid), "tap0"])
    assert guest_udp(netns, "10.0.2.2", udp_echo.port) == f"10.0.2.2 {udp_echo.port} 5 True"
    # socat as a real client too.
    res = netns.run("sh", "-c", f"echo hello | socat -t2 - UDP:10.0.2.2:{udp_echo.port}", timeout=10)
    assert res.stdout == b"hello\n"


def test_large_udp_datagrams_fragment_both_ways(netns, start_slirpnet, udp_echo):
    start_slirpnet(["-c", str(netns.pid), "tap0"])
    before = snmp(netns, "Ip")
    assert guest_udp(netns, "10.0.2.2", udp_echo.port, 30000) == f"10.0.2.2 {udp_echo.port} 30000 True"
    after = snmp(netns, "Ip")
    assert after["FragCreates"] > before["FragCreates"]  # the guest fragmented its datagram
    assert after["ReasmOKs"] > before["ReasmOKs"]  # and reassembled ours


def test_one_host_socket_per_guest_port(netns, start_slirpnet):
    servers = [UdpEcho(), UdpEcho()]
    try:
        start_slirpnet(["-c", str(netns.pid), "tap0"])
        code = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for port in sys.argv[1:]:
    s.sendto(b"x", ("10.0.2.2", int(port)))
    print(s.recvfrom(100)[1][1])
"""
        res = netns.run(sys.executable, "-c", code, *(str(s.port) for s in servers), timeout=20)
        assert res.stdout.decode().split() == [str(s.port) for s in servers]
        # Both servers saw the same host source port: one socket for the guest port.
        assert servers[0].peers[0] == servers[1].peers[0]
    finally:
        for s in servers:
            s.close()


def test_udp_to_closed_port_gets_icmp_port_unreachable(netns, start_slirpnet):
    start_slirpnet(["-c", str(netns.pid), "tap0"])
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # now nothing listens there
    code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(("10.0.2.2", {port}))
s.send(b"x")
try:
    s.recv(100)
    print("answer")
except ConnectionRefusedError:
    print("refused")
"""
    res = netns.run(sys.executable, "-c", code, timeout=20)
    assert res.stdout.decode().strip() == "refused"


def test_disable_host_loopback_refuses_the_gateway_but_still_pings(netns, start_slirpnet, udp_echo):
    start_slirpnet(["-c", "--disable-host-loopback", str(netns.pid), "tap0"])
    before = snmp(netns, "Icmp")["InDestUnreachs"]
    res = netns.run("sh", "-c", f"echo hello | socat -t1 - UDP:10.0.2.2:{udp_echo.port}", timeout=10)
    assert res.stdout == b""
    assert snmp(netns, "Icmp")["InDestUnreachs"] > before
    assert udp_echo.peers == []
    assert netns.run("ping", "-c1", "-W2", "10.0.2.2").returncode == 0


def test_ping_and_udp_reach_a_remote_namespace(world, start_slirpnet):
    start_slirpnet(["-c", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    res = world.guest.run("ping", "-c", "2", "-W", "2", World.REMOTE_ADDR, timeout=15)
    assert res.returncode == 0, res.stdout
    assert b"2 received" in res.stdout
    server = spawn(world.remote.enter("socat", "UDP-RECVFROM:7777,fork", "EXEC:cat"))
    try:
        time.sleep(0.3)
        res = world.guest.run("sh", "-c", f"echo hi there | socat -t2 - UDP:{World.REMOTE_ADDR}:7777", timeout=10)
        assert res.stdout == b"hi there\n"
    finally:
        stop(server)


def test_ping_relay_refused_by_the_host_warns_and_drops(tmp_path, start_slirpnet):
    world = World(tmp_path, allow_ping=False)
    try:
        s = start_slirpnet(["-c", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
        assert "ping to outside addresses is off" in s.stderr()
        res = world.guest.run("ping", "-c", "1", "-W", "1", World.REMOTE_ADDR, timeout=10)
        assert res.returncode == 1 and b"0 received" in res.stdout  # no fake reply
        assert world.guest.run("ping", "-c1", "-W2", "10.0.2.2").returncode == 0
    finally:
        s.close()
        world.close()


def test_outbound_addr_binds_host_sockets(world, start_slirpnet):
    # A UDP server on the host namespace's loopback prints each peer's address.
    server = spawn(
        world.host.enter(sys.executable, "-c", _PEER_PRINTER, "127.0.0.1", "9999"),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout.readline() == "ready\n"
        s = start_slirpnet(
            ["-c", f"--outbound-addr={World.HOST_ADDR}", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix()
        )
        assert f"* Outbound IPv4:    {World.HOST_ADDR}\n" in s.stdout()
        world.guest.run("sh", "-c", "echo x | socat -t1 - UDP:10.0.2.2:9999", timeout=10)
        assert server.stdout.readline().strip() == World.HOST_ADDR
    finally:
        stop(server)
        server.stdout.close()


def test_outbound_addr_by_interface_name(world, start_slirpnet):
    server = spawn(
        world.host.enter(sys.executable, "-c", _PEER_PRINTER, "127.0.0.1", "9998"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline() == "ready\n"
        start_slirpnet(["-c", "--outbound-addr=veth-h", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
        world.guest.run("sh", "-c", "echo x | socat -t1 - UDP:10.0.2.2:9998", timeout=10)
        assert server.stdout.readline().strip() == World.HOST_ADDR
    finally:
        stop(server)
        server.stdout.close()


_PEER_PRINTER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(1000)
    print(peer[0], flush=True)
"""


# -- DNS ----------------------------------------------------------------------


@pytest.fixture
def dns_server(world):
    """The test DNS server on the host namespace's 127.0.0.1:53 (UDP and TCP)."""
    proc = spawn(
        world.host.enter(
            sys.executable, str(ROOT / "tests/integration/dnsserver.py"), "127.0.0.1", "53",
            "web.test=192.0.2.10", "web6.test=2001:db8::10",
        ),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    yield proc
    stop(proc)
    proc.stdout.close()


def dig(ns, *args: str) -> str:
    res = ns.run("dig", "+time=4", "+tries=1", "+short", *args, timeout=20)
    return res.stdout.decode().strip()


def test_dns_lookups_through_the_forwarder(world, start_slirpnet, dns_server):
    start_slirpnet(["-c", f"--resolv-conf={world.resolv_conf}", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    assert dig(world.guest, "@10.0.2.3", "web.test") == "192.0.2.10"
    assert dig(world.guest, "@10.0.2.3", "AAAA", "web6.test") == "2001:db8::10"
    res = world.guest.run("nslookup", "web.test", "10.0.2.3", timeout=20)
    assert b"192.0.2.10" in res.stdout


def test_dns_fails_over_to_the_next_resolver(world, start_slirpnet, dns_server):
    # First: nothing listens (ICMP port unreachable: immediate failover);
    # second: a silent black hole (the remote namespace drops it: timeout);
    # third: the real server.
    world.resolv_conf.write_text("nameserver 127.0.0.2\nnameserver 203.0.113.1\nnameserver 127.0.0.1\n")
    start_slirpnet(["-c", f"--resolv-conf={world.resolv_conf}", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    t0 = time.monotonic()
    assert dig(world.guest, "@10.0.2.3", "+time=8", "web.test") == "192.0.2.10"
    assert 1.5 < time.monotonic() - t0 < 7  # one try timed out, then the next answered


def test_resolv_conf_is_reread_when_it_changes(world, start_slirpnet, dns_server):
    world.resolv_conf.write_text("nameserver 127.0.0.2\n")  # nothing listens there
    start_slirpnet(["-c", f"--resolv-conf={world.resolv_conf}", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    assert "192.0.2.10" not in dig(world.guest, "@10.0.2.3", "+time=2", "web.test")
    world.resolv_conf.write_text("# moved to another network\nnameserver 127.0.0.1\n")
    deadline = time.monotonic() + 10
    while dig(world.guest, "@10.0.2.3", "+time=1", "web.test") != "192.0.2.10":
        assert time.monotonic() < deadline, "the new resolv.conf was not picked up"
        time.sleep(0.5)


def test_dns_address_other_ports_are_unreachable(world, start_slirpnet, dns_server):
    start_slirpnet(["-c", f"--resolv-conf={world.resolv_conf}", str(world.guest.pid), "tap0"], prefix=world.slirpnet_prefix())
    before = snmp(world.guest, "Icmp")["InDestUnreachs"]
    world.guest.run("sh", "-c", "echo x | socat -t1 - UDP:10.0.2.3:5353", timeout=10)
    assert snmp(world.guest, "Icmp")["InDestUnreachs"] > before
    assert world.guest.run("ping", "-c1", "-W2", "10.0.2.3").returncode == 0


def test_disable_dns_makes_the_dns_address_ordinary(world, start_slirpnet, dns_server):
    start_slirpnet(
        ["-c", "--disable-dns", f"--resolv-conf={world.resolv_conf}", str(world.guest.pid), "tap0"],
        prefix=world.slirpnet_prefix(),
    )
    # The query goes to the real 10.0.2.3 — inside the test world, where nothing answers.
    out = dig(world.guest, "@10.0.2.3", "+time=2", "web.test")
    assert "192.0.2.10" not in out and "timed out" in out
    assert world.guest.run("ping", "-c1", "-W2", "10.0.2.3").returncode == 0  # still answered locally


# -- DHCP ---------------------------------------------------------------------


def test_dhcp_gives_the_first_pool_address(netns, start_slirpnet):
    start_slirpnet([str(netns.pid), "tap0"])  # no --configure: the guest asks
    netns.run("ip", "link", "set", "tap0", "up", check=True)
    res = netns.run("udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "3", "-s", "/bin/true", timeout=30)
    out = (res.stdout + res.stderr).decode()
    assert "lease of 10.0.2.15 obtained from 10.0.2.2, lease time 86400" in out, out


def test_dhcp_with_custom_cidr(netns, start_slirpnet):
    start_slirpnet(["--cidr=10.0.135.128/25", str(netns.pid), "tap0"])
    netns.run("ip", "link", "set", "tap0", "up", check=True)
    res = netns.run("udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "3", "-s", "/bin/true", timeout=30)
    out = (res.stdout + res.stderr).decode()
    assert "lease of 10.0.135.143 obtained from 10.0.135.130, lease time 86400" in out, out
