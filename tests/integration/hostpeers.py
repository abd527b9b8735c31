"""Peers on the host side of the namespace tests: free ports, an HTTP server and
a UDP echo server on a loopback address (IPv4 or IPv6), and the guest's UDP
client that talks to them.

Every server runs in a thread of the test process and is closed by the
fixture that made it.  Traffic goes only to loopback.
"""

from __future__ import annotations

import http.server
import pathlib
import socket
import sys
import threading
import time


def family_of(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def free_port(addr: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port free for ``kind`` on ``addr`` right now."""
    with socket.socket(family_of(addr), kind) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free for TCP and UDP on every IPv4 address right now."""
    held, ports = [], []
    try:
        while len(ports) < n:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(t)
            t.bind(("0.0.0.0", 0))
            port = t.getsockname()[1]
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(u)
            try:
                u.bind(("0.0.0.0", port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


class HttpServer:
    """An HTTP server on ``addr`` serving ``body`` for every GET."""

    def __init__(self, addr: str, body: bytes):
        self.body = body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = family_of(addr)

        self.httpd = Server((addr, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class UdpEcho:
    """A UDP echo server on ``addr``, in a thread; records its peers."""

    def __init__(self, addr: str = "127.0.0.1"):
        self.sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self.peers: list = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(70000)
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer)
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


# Run in the guest: send one datagram of SIZE known bytes and print the reply's
# "PEERADDR PEERPORT LENGTH INTACT", "refused" (an ICMP port unreachable) or
# "timeout".  The socket is connected so that ICMP errors reach it.
GUEST_UDP = """
import socket, sys
addr, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
payload = bytes(i % 251 for i in range(size))
s.connect((addr, port))
s.send(payload)
try:
    data, peer = s.recvfrom(70000)
    print(peer[0], peer[1], len(data), data == payload)
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


def guest_udp(ns, addr: str, port: int, size: int = 5) -> str:
    res = ns.run(sys.executable, "-c", GUEST_UDP, addr, str(port), str(size), timeout=20)
    return res.stdout.decode().strip() or res.stderr.decode()


EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def byte_exact_transfer(ns, start, sums: pathlib.Path, size: int, direction: str, host: str, gateway: str) -> None:
    """``size`` random bytes through one TCP connection between the host's
    ``host`` (a loopback address) and the guest, which reaches it at
    ``gateway``; ``direction`` guest_to_host or host_to_guest.  Both ends
    hash what they saw (sha256 into ``sums``, a directory both users can
    write); the hashes must match.  ``start()`` starts slirpnet once the
    host's end listens."""
    from .nsutil import spawn, stop

    port = free_port(host)
    if ":" in host:
        listen, connect = f"TCP6-LISTEN:{port},bind=[{host}],reuseaddr", f"TCP6:[{gateway}]:{port}"
    else:
        listen, connect = f"TCP-LISTEN:{port},bind={host},reuseaddr", f"TCP:{gateway}:{port}"
    source = f"head -c {size} /dev/urandom | tee >(sha256sum > {sums}/sent)"
    if direction == "guest_to_host":
        server = spawn(["sh", "-c", f"socat -u {listen} - | sha256sum > {sums}/received"])
        client = f"{source} | socat -u - {connect}"
    else:
        server = spawn(["bash", "-c", f"{source} | socat -u - {listen}"])
        client = f"socat -u {connect} - | sha256sum > {sums}/received"
    try:
        time.sleep(0.5)
        start()
        res = ns.run("bash", "-c", client, timeout=240)
        assert res.returncode == 0, res.stderr
        server.wait(timeout=60)
        deadline = time.monotonic() + 10
        while not all((sums / f).exists() and (sums / f).read_text() for f in ("sent", "received")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sent = (sums / "sent").read_text().split()[0]
        received = (sums / "received").read_text().split()[0]
        assert sent == received
        assert sent != EMPTY_SHA256  # not empty
    finally:
        stop(server)
