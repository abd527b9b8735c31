"""The forward registry (slirp/portfwd.py): ids, defaults, ports modulo 65536, bind rules,
the accept/datagram hand-off, EMFILE pausing, and the textual port mappings.

Table tests use a fake socket opener; the bind-rule and hand-off tests use
real sockets on 127.0.0.1 with kernel-chosen ports (host_port 65536 binds
port 0), so they cannot collide with anything else on the machine.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import time

import pytest

from netstack.addressing import AddressPlan
from slirp.portfwd import (
    ACCEPT_BUDGET,
    ACCEPT_PAUSE_S,
    LISTEN_BACKLOG,
    AddFailed,
    ForwardRegistry,
    ForwardSpec,
    MappingError,
    PortMapping,
    UnknownForward,
    open_listener,
    parse_ipv4,
    parse_port_mapping,
    parse_publish,
)

PLAN = AddressPlan.from_network(ipaddress.IPv4Network("10.0.2.0/24"))
ANY = ipaddress.IPv4Address("0.0.0.0")
LO = ipaddress.IPv4Address("127.0.0.1")
EPHEMERAL = 65536  # bound modulo 65536: port 0, the kernel picks one


class FakeHost:
    """Records what the registry asks of the event loop."""

    def __init__(self):
        self.events = []
        self.accepted = []
        self.datagrams = []

    def listener_opened(self, fwd):
        self.events.append(("opened", fwd.id))

    def listener_closing(self, fwd):
        assert fwd.sock is not None, "told before the socket is closed"
        self.events.append(("closing", fwd.id))

    def listener_paused(self, fwd, seconds):
        self.events.append(("paused", fwd.id, seconds))

    def forward_accepted(self, fwd, conn, peer_addr, peer_port):
        self.accepted.append((fwd.id, conn, peer_addr, peer_port))

    def forward_datagram(self, fwd, data, peer_addr, peer_port, reply):
        self.datagrams.append((fwd.id, data, peer_addr, peer_port, reply))


class FakeSock:
    def __init__(self, proto, addr, port):
        self.bound = (proto, str(addr), port)
        self.closed = False

    def close(self):
        self.closed = True


class FakeOpener:
    """Binds nothing; refuses (proto, addr, port) triples listed in ``busy``."""

    def __init__(self):
        self.busy = set()
        self.opened = []

    def __call__(self, proto, addr, port):
        if (proto, str(addr), port) in self.busy:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        sock = FakeSock(proto, addr, port)
        self.opened.append(sock)
        return sock


def spec(proto="tcp", host_addr=ANY, host_port=8080, guest_addr=None, guest_port=80):
    return ForwardSpec(proto, host_addr, host_port, guest_addr, guest_port)


@pytest.fixture
def fake():
    host, opener = FakeHost(), FakeOpener()
    return ForwardRegistry(PLAN, host, opener=opener), host, opener


@pytest.fixture
def real():
    host = FakeHost()
    reg = ForwardRegistry(PLAN, host)
    yield reg, host
    reg.close_all()
    for _, conn, *_ in host.accepted:
        conn.close()


# -- the table ------------------------------------------------------------------------


def test_ids_start_at_1_and_are_never_reused(fake):
    reg, host, opener = fake
    assert [reg.add(spec(host_port=p)).id for p in (1001, 1002, 1003)] == [1, 2, 3]
    reg.remove(3)  # even the last one
    reg.remove(1)
    assert reg.add(spec(host_port=1004)).id == 4
    assert [f.id for f in reg.entries()] == [2, 4]  # insertion order


def test_a_failed_add_consumes_no_id_and_leaves_nothing(fake):
    reg, host, opener = fake
    opener.busy.add(("tcp", "0.0.0.0", 8080))
    with pytest.raises(AddFailed) as info:
        reg.add(spec())
    assert "0.0.0.0:8080: Address already in use" in info.value.reason
    assert reg.entries() == [] and host.events == []
    assert reg.add(spec(host_port=8081)).id == 1
    assert reg.counters["portfwd.bind_failed"] == 1


def test_defaults_and_guest_targets(fake):
    reg, _, _ = fake
    default = reg.add(spec(host_port=1))
    assert default.entry()["guest_addr"] == "10.0.2.100"
    assert default.target_addr == bytes([10, 0, 2, 100])
    dhcp = reg.add(spec(host_port=2, guest_addr=ANY))
    assert dhcp.entry()["guest_addr"] == "0.0.0.0"  # listed as given
    assert dhcp.target_addr == bytes([10, 0, 2, 15])  # libslirp: the first DHCP address
    explicit = reg.add(spec(host_port=3, guest_addr=ipaddress.IPv4Address("10.0.2.77")))
    assert explicit.target_addr == bytes([10, 0, 2, 77])


def test_guest_default_follows_the_cidr():
    plan = AddressPlan.from_network(ipaddress.IPv4Network("10.0.135.128/25"))
    reg = ForwardRegistry(plan, FakeHost(), opener=FakeOpener())
    assert reg.add(spec()).entry()["guest_addr"] == "10.0.135.228"
    assert reg.add(spec(host_port=2, guest_addr=ANY)).target_addr == bytes([10, 0, 135, 143])


@pytest.mark.parametrize(
    "given, bound", [(8080, 8080), (83536, 18000), (-5, 65531), (65536, 0), (-65536, 0), (131071, 65535)]
)
def test_ports_are_listed_as_given_and_used_modulo_65536(fake, given, bound):
    reg, _, opener = fake
    fwd = reg.add(spec(host_port=given, guest_port=given))
    assert opener.opened[-1].bound == ("tcp", "0.0.0.0", bound)
    assert (fwd.bind_port, fwd.target_port) == (bound, bound)
    assert fwd.entry()["host_port"] == given and fwd.entry()["guest_port"] == given


def test_entry_keys_in_slirp4netns_order(fake):
    reg, _, _ = fake
    entry = reg.add(spec(proto="udp", host_addr=LO, host_port=5353, guest_port=53)).entry()
    assert list(entry.items()) == [
        ("id", 1),
        ("proto", "udp"),
        ("host_addr", "127.0.0.1"),
        ("host_port", 5353),
        ("guest_addr", "10.0.2.100"),
        ("guest_port", 53),
    ]


def test_remove_unwatches_then_closes_and_unknown_ids_raise(fake):
    reg, host, opener = fake
    fwd = reg.add(spec())
    sock = fwd.sock
    assert reg.remove(1) is fwd
    assert host.events == [("opened", 1), ("closing", 1)] and sock.closed and fwd.sock is None
    with pytest.raises(UnknownForward):
        reg.remove(1)
    with pytest.raises(UnknownForward):
        reg.remove(99)


def test_the_table_is_bounded(fake):
    host, opener = FakeHost(), FakeOpener()
    reg = ForwardRegistry(PLAN, host, opener=opener, max_forwards=3)
    for p in (1, 2, 3):
        reg.add(spec(host_port=p))
    with pytest.raises(AddFailed, match="too many forwards"):
        reg.add(spec(host_port=4))
    assert len(opener.opened) == 3 and reg.counters["portfwd.table_full"] == 1
    reg.remove(2)
    assert reg.add(spec(host_port=4)).id == 4


def test_close_all_closes_everything(fake):
    reg, host, opener = fake
    for p in (1, 2, 3):
        reg.add(spec(host_port=p))
    reg.close_all()
    assert len(reg) == 0 and all(s.closed for s in opener.opened)
    assert sorted(e for e in host.events if e[0] == "closing") == [("closing", 1), ("closing", 2), ("closing", 3)]


# -- real sockets on 127.0.0.1 --------------------------------------------------------------


def port_of(fwd) -> int:
    return fwd.sock.getsockname()[1]


def test_tcp_listener_options(real):
    reg, _ = real
    fwd = reg.add(spec(host_addr=LO, host_port=EPHEMERAL))
    s = fwd.sock
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert s.getblocking() is False and s.get_inheritable() is False


def test_the_backlog_holds_a_burst_of_connections_before_any_accept(real):
    """slirp4netns listens with a backlog of 1: a burst of clients then waits for SYN
    retransmits (1 s and more).  Ours completes LISTEN_BACKLOG handshakes at once."""
    reg, _ = real
    fwd = reg.add(spec(host_addr=LO, host_port=EPHEMERAL))
    n = LISTEN_BACKLOG
    clients = []
    try:
        for _ in range(n):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port_of(fwd)))
            except BlockingIOError:
                pass
            clients.append(c)
        deadline = time.monotonic() + 0.5  # well before the first SYN retransmit (1 s)
        pending = set(clients)
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], 0.05)
            for c in writable:
                if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    pending.discard(c)
        assert not pending, f"{len(pending)} of {n} handshakes did not complete"
    finally:
        for c in clients:
            c.close()


def test_overlapping_and_identical_binds_are_refused_tcp_and_udp_coexist(real):
    reg, _ = real
    wild = reg.add(spec(host_addr=ANY, host_port=EPHEMERAL))
    p = port_of(wild)
    for proto, addr in (("tcp", LO), ("tcp", ANY)):
        with pytest.raises(AddFailed, match="Address already in use"):
            reg.add(spec(proto=proto, host_addr=addr, host_port=p))
    udp = reg.add(spec(proto="udp", host_addr=LO, host_port=p))  # another protocol: fine
    for addr in (LO, ANY):
        with pytest.raises(AddFailed):
            reg.add(spec(proto="udp", host_addr=addr, host_port=p))
    assert [f.id for f in reg.entries()] == [wild.id, udp.id]
    # The other way round: a specific address first, then the wildcard.
    lo = reg.add(spec(host_addr=LO, host_port=EPHEMERAL))
    with pytest.raises(AddFailed):
        reg.add(spec(host_addr=ANY, host_port=port_of(lo)))


def test_non_local_address_is_refused(real):
    reg, _ = real
    with pytest.raises(AddFailed, match="Cannot assign requested address"):
        reg.add(spec(host_addr=ipaddress.IPv4Address("192.0.2.1"), host_port=EPHEMERAL))


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except OSError:
        return 1024


@pytest.mark.skipif(os.geteuid() == 0 or _unprivileged_port_start() <= 1, reason="may bind port 1 here")
def test_privileged_port_is_refused(real):
    reg, _ = real
    with pytest.raises(AddFailed, match="Permission denied"):
        reg.add(spec(host_addr=LO, host_port=1))


def test_removing_closes_the_listener_so_the_port_can_be_bound_again(real):
    reg, _ = real
    fwd = reg.add(spec(host_addr=LO, host_port=EPHEMERAL))
    p = port_of(fwd)
    reg.remove(fwd.id)
    again = reg.add(spec(host_addr=LO, host_port=p))
    assert port_of(again) == p


def test_accepted_connections_go_to_the_host_with_the_real_peer(real):
    reg, host = real
    fwd = reg.add(spec(host_addr=LO, host_port=EPHEMERAL))
    clients = [socket.create_connection(("127.0.0.1", port_of(fwd)), timeout=5) for _ in range(3)]
    try:
        reg.accept_ready(fwd)
        assert len(host.accepted) == 3
        for client, (fid, conn, peer_addr, peer_port) in zip(clients, host.accepted):
            assert fid == fwd.id
            assert peer_addr == bytes([127, 0, 0, 1]) and peer_port == client.getsockname()[1]
            assert conn.getblocking() is False
            conn.sendall(b"x")
            assert client.recv(1) == b"x"
        reg.accept_ready(fwd)  # nothing pending: returns at once
        assert len(host.accepted) == 3
        # Removing the forward leaves accepted connections alone.
        reg.remove(fwd.id)
        host.accepted[0][1].sendall(b"y")
        assert clients[0].recv(1) == b"y"
    finally:
        for c in clients:
            c.close()


def test_accept_is_bounded_per_wake_up(real):
    reg, host = real
    fwd = reg.add(spec(host_addr=LO, host_port=EPHEMERAL))
    clients = [socket.create_connection(("127.0.0.1", port_of(fwd)), timeout=5) for _ in range(ACCEPT_BUDGET + 5)]
    try:
        reg.accept_ready(fwd)
        assert len(host.accepted) == ACCEPT_BUDGET
        reg.accept_ready(fwd)
        assert len(host.accepted) == ACCEPT_BUDGET + 5
    finally:
        for c in clients:
            c.close()


def test_udp_datagrams_and_replies_go_to_the_right_peer(real):
    reg, host = real
    fwd = reg.add(spec(proto="udp", host_addr=LO, host_port=EPHEMERAL, guest_port=53))
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
        a.sendto(b"from a", ("127.0.0.1", port_of(fwd)))
        b.sendto(b"from b", ("127.0.0.1", port_of(fwd)))
        deadline = time.monotonic() + 5
        while len(host.datagrams) < 2 and time.monotonic() < deadline:
            reg.datagrams_ready(fwd)
        got = {d[1]: d for d in host.datagrams}
        assert set(got) == {b"from a", b"from b"}
        assert got[b"from a"][2:4] == (bytes([127, 0, 0, 1]), a.getsockname()[1])
        assert got[b"from b"][4](b"to b") is True
        assert got[b"from a"][4](b"to a") is True
        assert b.recvfrom(100) == (b"to b", ("127.0.0.1", port_of(fwd)))
        assert a.recv(100) == b"to a"
        reply = got[b"from a"][4]
        reg.remove(fwd.id)
        assert reply(b"late") is False  # the socket is gone: dropped, no exception
    finally:
        a.close()
        b.close()


class NoFdsSock:
    """A listener whose accept() fails like a process out of fds."""

    def __init__(self, err=errno.EMFILE):
        self.err = err
        self.calls = 0
        self.closed = False

    def accept(self):
        self.calls += 1
        raise OSError(self.err, "Too many open files")

    def close(self):
        self.closed = True


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_fd_exhaustion_pauses_the_listener_instead_of_spinning(err):
    host = FakeHost()
    sock = NoFdsSock(err)
    reg = ForwardRegistry(PLAN, host, opener=lambda *a: sock)
    fwd = reg.add(spec())
    reg.accept_ready(fwd)
    assert sock.calls == 1, "one failed accept, then stop"
    assert host.events[-1] == ("paused", fwd.id, ACCEPT_PAUSE_S) and fwd.paused
    assert reg.counters["portfwd.accept_paused"] == 1
    assert reg.resume(fwd) is True and not fwd.paused
    reg.remove(fwd.id)
    assert reg.resume(fwd) is False  # removed while paused: not watched again


def test_other_accept_errors_skip_that_connection():
    class Flaky:
        def __init__(self):
            self.n = 0

        def accept(self):
            self.n += 1
            if self.n == 1:
                raise ConnectionAbortedError(errno.ECONNABORTED, "aborted")
            raise BlockingIOError

        def close(self):
            pass

    host = FakeHost()
    sock = Flaky()
    reg = ForwardRegistry(PLAN, host, opener=lambda *a: sock)
    reg.accept_ready(reg.add(spec()))
    assert sock.n == 2 and reg.counters["portfwd.accept_error"] == 1 and not host.accepted


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_ipv6_listeners_are_v6only_except_the_unspecified_one(proto):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = open_listener(proto, ipaddress.IPv6Address("::1"), 0)
    except OSError as err:
        pytest.skip(f"no ::1 here: {err}")
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        sock.close()
    sock = open_listener(proto, ipaddress.IPv6Address("::"), 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        # Dual-stack: the IPv4 wildcard on the same port overlaps and is refused.
        with pytest.raises(OSError):
            open_listener(proto, ipaddress.IPv4Address("0.0.0.0"), port)
    finally:
        sock.close()


# -- textual mappings ------------------------------------------------------------------------

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.mark.parametrize(
    "text, want",
    [
        ("8080:80", PortMapping(None, 8080, None, 80)),
        ("127.0.0.1:8080:80", PortMapping(V4("127.0.0.1"), 8080, None, 80)),
        ("8080:10.0.2.15:80", PortMapping(None, 8080, V4("10.0.2.15"), 80)),
        ("0.0.0.0:1:10.0.2.15:65535", PortMapping(V4("0.0.0.0"), 1, V4("10.0.2.15"), 65535)),
        ("[::1]:8080:80", PortMapping(V6("::1"), 8080, None, 80)),
        ("[::]:8080:[fd00::64]:80", PortMapping(V6("::"), 8080, V6("fd00::64"), 80)),
    ],
)
def test_port_mapping_parses(text, want):
    assert parse_port_mapping(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8080",
        "8080:",
        ":80",
        "0:80",
        "8080:0",
        "65536:80",
        "8080:65536",
        "-1:80",
        "+80:80",
        "8080:80:80",
        "x:8080:80",
        "127.1:8080:80",
        "127.0.0.01:8080:80",
        "256.0.0.1:8080:80",
        "::1:8080:80",
        "[::1:8080:80",
        "::1]:8080:80",
        "[127.0.0.1]:8080:80",
        "[nope]:8080:80",
        "1.2.3.4:8080:5.6.7.8:80:1",
        "８０:80",
        " 8080:80",
    ],
)
def test_port_mapping_errors(text):
    with pytest.raises(MappingError):
        parse_port_mapping(text)


def test_publish_adds_the_protocol_and_takes_no_guest_address():
    assert parse_publish("8080:80") == PortMapping(None, 8080, None, 80, "tcp")
    assert parse_publish("127.0.0.1:5353:53/udp") == PortMapping(V4("127.0.0.1"), 5353, None, 53, "udp")
    assert parse_publish("8080:80/tcp").proto == "tcp"
    for bad in ("8080:80/sctp", "8080:80/", "8080:10.0.2.15:80", "8080:80/udp/tcp"):
        with pytest.raises(MappingError):
            parse_publish(bad)


@pytest.mark.parametrize(
    "text, ok",
    [
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("10.0.2.100", True),
        ("256.1.1.1", False),
        ("1.2.3", False),
        ("1.2.3.4.5", False),
        ("01.2.3.4", False),
        ("127.1", False),
        (" 1.2.3.4", False),
        ("1.2.3.4 ", False),
        ("::1", False),
        ("", False),
        ("١.٢.٣.٤", False),
    ],
)
def test_parse_ipv4_is_strict_dotted_quad(text, ok):
    assert (parse_ipv4(text) is not None) is ok
