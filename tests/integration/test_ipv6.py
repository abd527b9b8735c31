"""IPv6 end to end (--enable-ipv6), with real tools inside the namespace.

SLAAC and the default route from our router advertisements, ping -6 of the
stack's addresses, TCP/UDP to the host's ::1 through fd00::2, the loopback
rules, the test world's remote namespace over IPv6 (TCP, UDP, ping relay,
errors), DNS through fd00::3 to IPv6 and IPv4 upstreams, stateless DHCPv6,
port forwards over IPv6 (API JSON, ctl, run -p, dual-stack listeners), IPv6
fragments both ways, and 1 GiB each way.

Traffic goes only to the host's loopback or to namespaces the test made
(the "outside" is the test world, 2001:db8:1::/64).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from .hostpeers import byte_exact_transfer, free_port, guest_udp
from .nsutil import ENV, ROOT, SLIRPNET, World, spawn, stop, wait_ipv6
from .test_api import add_req, request
from .test_outbound_udp import dig

GIB = 1 << 30
CONFINE = ["--enable-sandbox", "--enable-seccomp"]


def snmp6(ns) -> dict[str, int]:
    text = ns.run("cat", "/proc/net/snmp6", check=True).stdout.decode()
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="sn6-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start6(start_slirpnet, ns, *extra, prefix=None):
    s = start_slirpnet(["-c", "-6", *extra, str(ns.pid), "tap0"], prefix=prefix)
    return s, wait_ipv6(ns)


# -- what the guest gets -------------------------------------------------------------


def test_slaac_address_default_route_and_own_addresses(netns, start_slirpnet):
    s, addr = start6(start_slirpnet, netns, "--mtu=1400")
    assert addr.startswith("fd00::")
    assert "WARNING: Support for IPv6 is experimental" in s.stdout()
    routes = netns.run("ip", "-6", "route", "show", "dev", "tap0").stdout.decode()
    assert "fd00::/64" in routes
    default = netns.run("ip", "-6", "route", "show", "default").stdout.decode()
    assert "via fe80::2 dev tap0" in default and "proto ra" in default, default
    assert netns.run("sysctl", "-n", "net.ipv6.conf.tap0.mtu").stdout.decode().strip() == "1400"  # RA MTU option
    for dst in ("fd00::2", "fd00::3", "fe80::2%tap0"):
        res = netns.run("ping", "-6", "-c1", "-W2", dst, timeout=10)
        assert res.returncode == 0 and b"ttl=255" in res.stdout, res.stdout
    neigh = netns.run("ip", "-6", "neigh", "show", "dev", "tap0").stdout.decode()
    assert "fd00::2 lladdr 52:55:0a:00:02:02" in neigh and "fd00::3 lladdr 52:55:0a:00:02:03" in neigh, neigh


def test_dhcpv6_information_request(netns, start_slirpnet, tmp_path):
    start6(start_slirpnet, netns)
    # ISC dhclient in stateless mode (-S: Information-request only), its
    # script printing what it learned.
    script, out = tmp_path / "dhclient-script", tmp_path / "dhclient.out"
    script.write_text(f'#!/bin/sh\necho "$reason $new_dhcp6_name_servers" >> {out}\n')
    script.chmod(0o755)
    res = netns.run(
        "dhclient", "-6", "-S", "-1", "-v", "-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid"),
        "-sf", str(script), "tap0", timeout=30,
    )  # fmt: skip
    assert res.returncode == 0 and b"Reply message on tap0 from fe80::2" in res.stderr, res.stderr
    assert out.read_text().split()[-1] == "fd00::3"
    # The same exchange by hand, to check the Reply's identifiers too.
    code = """
import socket, struct
idx = socket.if_nametoindex("tap0")
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 546))
s.settimeout(3)
def opt(code, value): return struct.pack("!HH", code, len(value)) + value
duid = b"\\x00\\x03\\x00\\x01" + bytes.fromhex("02aabbccddee")
msg = bytes([11, 0xAB, 0xCD, 0xEF]) + opt(1, duid) + opt(6, struct.pack("!H", 23)) + opt(8, b"\\0\\0")
s.sendto(msg, ("ff02::1:2", 547, 0, idx))
data, peer = s.recvfrom(2000)
assert data[0] == 7 and data[1:4] == bytes([0xAB, 0xCD, 0xEF]), data
opts, i = {}, 4
while i + 4 <= len(data):
    c, n = struct.unpack_from("!HH", data, i)
    opts[c] = data[i + 4 : i + 4 + n]
    i += 4 + n
dns = [socket.inet_ntop(socket.AF_INET6, opts[23][j : j + 16]) for j in range(0, len(opts[23]), 16)]
print(peer[0], peer[1], opts[1] == duid, opts[2].hex(), " ".join(dns))
"""
    res = netns.run(sys.executable, "-c", code, timeout=20)
    # From fe80::2 port 547; our DUID-LL (type 3, Ethernet) is the gateway's MAC.
    assert res.stdout.decode().split() == ["fe80::2", "547", "True", "0003000152550a000202", "fd00::3"], res


# -- the host's loopback through fd00::2 ----------------------------------------------


def test_curl_and_ncat_to_host_loopback_over_ipv6(netns, start_slirpnet, http6):
    start6(start_slirpnet, netns)
    res = netns.run("curl", "-sS", "-g", "--max-time", "10", f"http://[fd00::2]:{http6.port}/", timeout=20)
    assert res.returncode == 0, res.stderr
    assert res.stdout == http6.body
    port = free_port("::1")
    server = spawn(["socat", f"TCP6-LISTEN:{port},bind=[::1],reuseaddr,fork", "EXEC:cat"])
    try:
        time.sleep(0.3)
        res = netns.run("ncat", "-6", "-w3", "fd00::2", str(port), input=b"over ipv6\n", timeout=15)
        assert res.stdout == b"over ipv6\n", res.stderr
    finally:
        stop(server)


def test_udp_and_fragments_both_ways_over_ipv6(netns, start_slirpnet, udp_echo6):
    start6(start_slirpnet, netns)
    assert guest_udp(netns, "fd00::2", udp_echo6.port) == f"fd00::2 {udp_echo6.port} 5 True"
    before = snmp6(netns)
    assert guest_udp(netns, "fd00::2", udp_echo6.port, 30000) == f"fd00::2 {udp_echo6.port} 30000 True"
    after = snmp6(netns)
    assert after["Ip6FragCreates"] > before["Ip6FragCreates"]  # the guest fragmented its datagram
    assert after["Ip6ReasmOKs"] > before["Ip6ReasmOKs"]  # and reassembled ours
    # A closed port: ICMPv6 port unreachable, the guest's socket sees ECONNREFUSED.
    assert guest_udp(netns, "fd00::2", free_port("::1", socket.SOCK_DGRAM)) == "refused"


def test_disable_host_loopback_over_ipv6(netns, start_slirpnet, http6):
    start6(start_slirpnet, netns, "--disable-host-loopback")
    res = netns.run("ncat", "-6", "-w3", "fd00::2", str(http6.port), input=b"", timeout=15)
    assert b"Network is unreachable" in res.stderr, res.stderr
    res = netns.run("ncat", "-6", "-w3", "fd00::3", "80", input=b"", timeout=15)
    assert b"Network is unreachable" in res.stderr, res.stderr
    assert netns.run("ping", "-6", "-c1", "-W2", "fd00::2").returncode == 0


# -- the outside world over IPv6 -------------------------------------------------------


def test_tcp_udp_and_ping_to_a_remote_namespace_over_ipv6(world, start_slirpnet):
    remote = World.REMOTE_ADDR6
    tcp = spawn(world.remote.enter("socat", "TCP6-LISTEN:8080,reuseaddr,fork", "EXEC:cat"))
    udp = spawn(world.remote.enter("socat", "UDP6-RECVFROM:7777,fork", "EXEC:cat"))
    try:
        time.sleep(0.3)
        start6(start_slirpnet, world.guest, prefix=world.slirpnet_prefix())
        res = world.guest.run("sh", "-c", f"echo far away | socat -t2 - TCP6:[{remote}]:8080", timeout=15)
        assert res.stdout == b"far away\n", res.stderr
        res = world.guest.run("sh", "-c", f"echo datagram | socat -t2 - UDP6:[{remote}]:7777", timeout=15)
        assert res.stdout == b"datagram\n", res.stderr
        res = world.guest.run("ping", "-6", "-c2", "-W2", remote, timeout=15)
        assert res.returncode == 0 and b"2 received" in res.stdout, res.stdout
        assert b"ttl=64" in res.stdout  # the remote's own reply, relayed (not ours: 255)
        assert guest_udp(world.guest, remote, 9) == "refused"  # a closed port over there
        # Nobody answers neighbour solicitation for ::3 on the host's veth: address unreachable.
        res = world.guest.run("ncat", "-6", "-w8", "2001:db8:1::3", "80", input=b"", timeout=20)
        assert b"No route to host" in res.stderr, res.stderr
    finally:
        stop(tcp)
        stop(udp)


def test_ping6_relay_refused_by_the_host_warns_and_drops(tmp_path, start_slirpnet):
    world = World(tmp_path, allow_ping=False)
    try:
        s, _ = start6(start_slirpnet, world.guest, prefix=world.slirpnet_prefix())
        assert "ping -6 to outside addresses is off" in s.stderr()
        res = world.guest.run("ping", "-6", "-c1", "-W1", World.REMOTE_ADDR6, timeout=10)
        assert res.returncode == 1 and b"0 received" in res.stdout  # no fake reply
        assert world.guest.run("ping", "-6", "-c1", "-W2", "fd00::2").returncode == 0
    finally:
        world.close()


_PEER_PRINTER6 = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(1000)
    print(peer[0], flush=True)
"""


def test_outbound_addr6_binds_host_sockets(world, start_slirpnet):
    server = spawn(
        world.host.enter(sys.executable, "-c", _PEER_PRINTER6, "::1", "9999"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline() == "ready\n"
        s, _ = start6(start_slirpnet, world.guest, f"--outbound-addr6={World.HOST_ADDR6}", prefix=world.slirpnet_prefix())
        assert f"* Outbound IPv6:    {World.HOST_ADDR6}\n" in s.stdout()
        world.guest.run("sh", "-c", "echo x | socat -t1 - UDP6:[fd00::2]:9999", timeout=10)
        assert server.stdout.readline().strip() == World.HOST_ADDR6
    finally:
        stop(server)
        server.stdout.close()


@pytest.mark.parametrize("upstreams", ["::1", "127.0.0.2 ::1"], ids=["ipv6_upstream", "ipv4_refused_then_ipv6"])
def test_dns_aaaa_through_fd00_3(world, start_slirpnet, upstreams):
    proc = spawn(
        world.host.enter(sys.executable, str(ROOT / "tests/integration/dnsserver.py"), "::1", "53",
                         "web.test=192.0.2.10", "web6.test=2001:db8::10"),
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        world.resolv_conf.write_text("".join(f"nameserver {u}\n" for u in upstreams.split()))
        start6(start_slirpnet, world.guest, f"--resolv-conf={world.resolv_conf}", prefix=world.slirpnet_prefix())
        assert dig(world.guest, "@fd00::3", "AAAA", "web6.test") == "2001:db8::10"
        assert dig(world.guest, "@fd00::3", "web.test") == "192.0.2.10"
        assert dig(world.guest, "+tcp", "@fd00::3", "AAAA", "web6.test") == "2001:db8::10"
    finally:
        stop(proc)
        proc.stdout.close()


def test_dns_through_fd00_3_to_an_ipv4_upstream(world, start_slirpnet):
    proc = spawn(
        world.host.enter(sys.executable, str(ROOT / "tests/integration/dnsserver.py"), "127.0.0.1", "53",
                         "web6.test=2001:db8::10"),
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        start6(start_slirpnet, world.guest, f"--resolv-conf={world.resolv_conf}", prefix=world.slirpnet_prefix())
        assert dig(world.guest, "@fd00::3", "AAAA", "web6.test") == "2001:db8::10"
    finally:
        stop(proc)
        proc.stdout.close()


# -- port forwards over IPv6 ----------------------------------------------------------

GUEST_TCP_SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
l = socket.socket(family, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(8)
print("ready", flush=True)
while True:
    c, peer = l.accept()
    data = c.recv(100)
    c.sendall(peer[0].encode() + b" " + data)
    c.close()
"""

GUEST_UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2000)
    s.sendto(peer[0].encode() + b" " + data, peer)
"""


def tcp_ask(addr: str, port: int, data: bytes = b"hi", source: str | None = None) -> bytes:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        if source is not None:
            c.bind((source, 0))
        c.connect((addr, port))
        c.sendall(data)
        out = b""
        while chunk := c.recv(1000):
            out += chunk
        return out


def udp_ask(addr: str, port: int, data: bytes = b"hi") -> bytes:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.sendto(data, (addr, port))
        return c.recvfrom(2000)[0]


def guest_server(ns, code: str, addr: str, port: int):
    proc = spawn(ns.enter(sys.executable, "-c", code, addr, str(port)), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_ipv6_forwards_through_the_api_and_ctl(netns, start_slirpnet, sockdir):
    path = os.path.join(sockdir, "api.sock")
    _, guest6 = start6(start_slirpnet, netns, "--api-socket", path)
    servers = [
        guest_server(netns, GUEST_TCP_SERVER, "::", 80),
        guest_server(netns, GUEST_UDP_SERVER, "::", 53),
    ]
    try:
        tport, uport, vport = free_port("::1"), free_port("::1", socket.SOCK_DGRAM), free_port("::1")
        # The API JSON with IPv6 addresses on both sides.
        assert request(path, add_req("tcp", tport, 80, host_addr="::1", guest_addr=guest6)) == b'{"return":{"id":1}}'
        assert tcp_ask("::1", tport) == b"fd00::2 hi"  # a loopback client appears as the gateway
        # ctl, UDP, bracketed addresses.
        ctl = [*SLIRPNET, "ctl", "--api-socket", path]
        res = subprocess.run([*ctl, "add", "udp", f"[::1]:{uport}:[{guest6}]:53"], capture_output=True, env=ENV, timeout=20)
        assert res.returncode == 0, res.stderr
        assert udp_ask("::1", uport, b"query") == b"fd00::2 query"
        # No guest address: the IPv4 guest N+100 (the guest's [::] server is dual-stack).
        res = subprocess.run([*ctl, "add", "tcp", f"[::1]:{vport}:80"], capture_output=True, env=ENV, timeout=20)
        assert res.returncode == 0, res.stderr
        assert tcp_ask("::1", vport) == b"::ffff:10.0.2.2 hi"
        listed = json.loads(request(path, b'{"execute":"list_hostfwd"}'))["return"]["entries"]
        assert [(e["proto"], e["host_addr"], e["guest_addr"]) for e in listed] == [
            ("tcp", "::1", guest6), ("udp", "::1", guest6), ("tcp", "::1", "10.0.2.100"),
        ]  # fmt: skip
        assert request(path, b'{"execute":"remove_hostfwd","arguments":{"id":1}}') == b'{"return":{}}'
        with pytest.raises(ConnectionRefusedError):
            tcp_ask("::1", tport)
    finally:
        for proc in servers:
            stop(proc)
            proc.stdout.close()


def test_dual_stack_forward_presents_clients_by_family(world, start_slirpnet, sockdir):
    """[::] listens for both families; toward an IPv6 guest address, an IPv4
    client appears as 64:ff9b::a.b.c.d and an IPv6 client as itself."""
    path = os.path.join(sockdir, "api.sock")
    _, guest6 = start6(start_slirpnet, world.guest, "--api-socket", path, prefix=world.slirpnet_prefix())
    server = guest_server(world.guest, GUEST_TCP_SERVER, "::", 80)
    try:
        reply = request(path, add_req("tcp", 8080, 80, host_addr="::", guest_addr=guest6))
        assert reply == b'{"return":{"id":1}}', reply
        code = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
c = socket.socket(family, socket.SOCK_STREAM)
c.settimeout(10)
c.bind((sys.argv[1], 0))
c.connect((sys.argv[1], 8080))
c.sendall(b"x")
print(c.recv(100).decode())
"""
        for client, seen in [
            (World.HOST_ADDR, "64:ff9b::c633:6401"),  # 198.51.100.1
            (World.HOST_ADDR6, World.HOST_ADDR6),
            ("127.0.0.1", "fd00::2"),
        ]:
            res = world.host.run(sys.executable, "-c", code, client, timeout=20)
            assert res.stdout.decode().strip() == f"{seen} x", (client, res.stderr)
    finally:
        stop(server)
        server.stdout.close()


def test_run_publish_ipv6(tmp_path):
    port = free_port("::1")
    guest = (
        "import socket, sys\n"
        "l = socket.socket(socket.AF_INET); l.bind(('0.0.0.0', 8000)); l.listen(1)\n"
        "open(sys.argv[1], 'w').close()\n"
        "c, peer = l.accept(); c.sendall(peer[0].encode() + b' ' + c.recv(10)); c.close()\n"
    )
    flag = tmp_path / "listening"
    proc = spawn(
        [*SLIRPNET, "run", "-6", "-p", f"[::1]:{port}:8000", "--", sys.executable, "-c", guest, str(flag)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not flag.exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
            time.sleep(0.1)
        assert tcp_ask("::1", port, b"run") == b"10.0.2.2 run"  # IPv6 client, IPv4 target: the gateway
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)
        proc.stdout.close()
        proc.stderr.close()


# -- confined, and big -------------------------------------------------------------------


def test_ipv6_under_sandbox_and_seccomp(netns, start_slirpnet, http6):
    s, _ = start6(start_slirpnet, netns, *CONFINE)
    assert "seccomp: The following syscalls are blocked: " in s.stdout()
    assert netns.run("ping", "-6", "-c1", "-W2", "fd00::2").returncode == 0
    res = netns.run("curl", "-sS", "-g", "--max-time", "10", f"http://[fd00::2]:{http6.port}/", timeout=20)
    assert res.stdout == http6.body, res.stderr


@pytest.mark.slow
@pytest.mark.plain_only
@pytest.mark.parametrize("direction", ["guest_to_host", "host_to_guest"])
def test_one_gib_byte_exact_over_ipv6(netns, start_slirpnet, tmp_path, direction):
    """sha256 over 1 GiB of random data, each way, through one IPv6 connection."""
    sums = tmp_path / "sums"
    sums.mkdir()
    sums.chmod(0o777)
    byte_exact_transfer(netns, lambda: start6(start_slirpnet, netns), sums, GIB, direction,
                        host="::1", gateway="fd00::2")  # fmt: skip
