"""Peers for the port-forward tests, run inside the test's namespaces.

Servers (in the guest):

    python fwdpeers.py ident PORT [PORT ...]   TCP: on accept, send "PORT PEERADDR PEERPORT\\n",
                                               then echo until EOF and close
    python fwdpeers.py churn PORT              TCP: read 1 byte, send b"y", close (one at a time)
    python fwdpeers.py udp PORT                UDP: answer each datagram with
                                               b"PEERADDR PEERPORT " + the datagram

Each prints "ready" on stdout once its sockets listen, and runs until killed.
The peer address is what the guest sees: the point of several tests.

Client (in another namespace):

    python fwdpeers.py ask ADDR PORT TEXT      UDP: send TEXT, print the first reply
                                               (exit 1 if none comes within 5 s)
"""

import selectors
import socket
import sys


def listener(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1024)
    return s


def ident(ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        sel.register(listener(port), selectors.EVENT_READ, ("listener", port))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            if kind == "listener":
                conn, peer = key.fileobj.accept()
                conn.sendall(f"{port} {peer[0]} {peer[1]}\n".encode())
                sel.register(conn, selectors.EVENT_READ, ("conn", port))
                continue
            try:
                data = key.fileobj.recv(65536)
            except ConnectionError:
                data = b""
            if data:
                key.fileobj.sendall(data)
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()


def churn(port: int) -> None:
    srv = listener(port)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        try:
            if conn.recv(1):
                conn.sendall(b"y")
        except ConnectionError:
            pass
        conn.close()


def udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(f"{peer[0]} {peer[1]} ".encode() + data, peer)


def ask(addr: str, port: int, text: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(text.encode(), (addr, port))
    try:
        sys.stdout.buffer.write(s.recv(65535))
    except TimeoutError:
        sys.exit("no reply")


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "ask":
        ask(args[0], int(args[1]), args[2])
        sys.exit(0)
    ports = [int(a) for a in args]
    if mode == "ident":
        ident(ports)
    elif mode == "churn":
        churn(ports[0])
    elif mode == "udp":
        udp(ports[0])
    else:
        sys.exit(f"unknown mode {mode}")
