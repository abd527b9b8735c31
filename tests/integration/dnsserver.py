"""A tiny authoritative DNS server for tests (UDP and TCP), built on dnslib.

    python dnsserver.py ADDR PORT NAME=IP [NAME=IP ...]

Answers A/AAAA for the given names (IPv4 or IPv6 literal decides the type),
NXDOMAIN otherwise; prints "ready" on stdout once both sockets listen.
dnslib builds and parses the messages (a well-kept library for exactly this;
hand-written DNS encoding in a test would be a second thing to test).
"""

import selectors
import socket
import struct
import sys

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


def answer(data: bytes, names: dict) -> bytes:
    request = DNSRecord.parse(data)
    reply = request.reply()
    qname = str(request.q.qname).rstrip(".").lower()
    addr = names.get(qname)
    if addr is None:
        reply.header.rcode = RCODE.NXDOMAIN
    elif ":" in addr and request.q.qtype == QTYPE.AAAA:
        reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(addr), ttl=5))
    elif ":" not in addr and request.q.qtype == QTYPE.A:
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(addr), ttl=5))
    return reply.pack()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    names = dict(arg.split("=", 1) for arg in sys.argv[3:])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind((host, port))
    tcp = socket.socket(family, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ)
    sel.register(tcp, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is udp:
                data, peer = udp.recvfrom(4096)
                try:
                    udp.sendto(answer(data, names), peer)
                except Exception:  # noqa: BLE001 - a test server: ignore garbage
                    pass
            else:
                conn, _ = tcp.accept()
                conn.settimeout(5)
                try:
                    (n,) = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))
                    reply = answer(conn.recv(n, socket.MSG_WAITALL), names)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except Exception:  # noqa: BLE001
                    pass
                finally:
                    conn.close()


if __name__ == "__main__":
    main()
