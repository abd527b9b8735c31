"""Peers on the host side of the namespace tests: free ports, an HTTP server and
a UDP echo server on a loopback address (IPv4 or IPv6), and the guest's UDP
client that talks to them.

Every server runs in a thread of the test process and is closed by the
fixture that made it.  Traffic goes only to loopback.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading


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
