"""Carry out the core's actions on real host sockets and report what happened.

Every action of netstack/actions.py is executed here, non-blocking, and every
outcome becomes an event of netstack/events.py, queued on the Driver, which
feeds it back to the stack.  The sockets of flows are watched through the
Driver's handler table (kinds HOST_TCP / HOST_UDP / HOST_PING).

TCP (forwarder pattern, STYLE.md §7): OpenTcp starts a non-blocking connect
and reports TcpConnected or TcpConnectFailed(errno) when it resolves — never
anything if it never resolves.  SendTcp writes at once and reports
TcpSent(accepted, send_space); a short write arms a one-shot writability
watch that reports TcpWritable.  ReadTcp sets an absolute read credit:
readability is watched only while the credit is positive, so data is read
only as fast as the guest's window allows (backpressure, not buffering).

UDP: one socket per guest flow, unconnected (replies may come from any
address the guest sent to), with IP_RECVERR/IPV6_RECVERR so that an ICMP
error for a datagram we sent comes back with its original destination and
becomes UdpFailed (the core turns ECONNREFUSED into ICMP port unreachable).

ICMP echo: unprivileged ICMP datagram sockets (``net.ipv4.ping_group_range``),
the kernel choosing the identifier and the checksum.

``--outbound-addr`` / ``--outbound-addr6``: every host socket of that family
is bound to the address (port 0) before connect/send.

Send space (:meth:`HostSockets.send_space_of`) is what the socket's own
memory accounting says it will still take, the core's basis for the window
it offers the guest.
"""

from __future__ import annotations

import errno
import socket
import struct

from netstack import actions as act
from netstack import events as ev

from .datapath import IP_RECVERR, IPV6_RECVERR, read_icmp_errors

SO_MEMINFO = 55
_MEMINFO = struct.Struct("=9I")  # SK_MEMINFO_VARS
_MEMINFO_SNDBUF = 3
_MEMINFO_WMEM_QUEUED = 5
RECV_CHUNK = 256 * 1024
TCP_ESTABLISHED = 1  # tcpi_state (include/net/tcp_states.h)
TCP_CLOSE = 7
UDP_RECV_MAX = 65536
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128

_ICMP_HDR = struct.Struct("!BBHHH")


def family_of(addr: bytes) -> int:
    return socket.AF_INET if len(addr) == 4 else socket.AF_INET6


def sockaddr(addr: bytes, port: int) -> tuple:
    text = socket.inet_ntop(family_of(addr), addr)
    return (text, port) if len(addr) == 4 else (text, port, 0, 0)


class TcpConn:
    __slots__ = ("sock", "fd", "credit", "reading", "writing", "connecting")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.credit = 0
        self.reading = False
        self.writing = False
        self.connecting = False


class HostSockets:
    def __init__(self, driver, outbound4: bytes | None = None, outbound6: bytes | None = None):
        self.driver = driver
        self.loop = driver.loop
        self.emit = driver.post_event
        self.counters = driver.counters
        self.outbound = {socket.AF_INET: outbound4, socket.AF_INET6: outbound6}
        self.tcp: dict[int, TcpConn] = {}
        self.udp: dict[int, socket.socket] = {}
        self.udp_replies: dict[int, object] = {}  # port-forward sessions: flow -> reply(data)
        self.ping: dict[int, socket.socket] = {}
        self._table = {
            act.OpenTcp: self.open_tcp,
            act.SendTcp: self.send_tcp,
            act.ReadTcp: self.read_tcp,
            act.ShutdownTcp: self.shutdown_tcp,
            act.CloseTcp: self.close_tcp,
            act.WatchTcpWritable: self.watch_tcp_writable,
            act.OpenUdp: self.open_udp,
            act.SendUdp: self.send_udp,
            act.CloseUdp: self.close_udp,
            act.ReplyUdp: self.reply_udp,
            act.OpenPing: self.open_ping,
            act.SendPing: self.send_ping,
            act.ClosePing: self.close_ping,
        }

    def execute(self, action) -> None:
        self._table[type(action)](action)

    def _bind_outbound(self, sock: socket.socket, family: int) -> None:
        addr = self.outbound[family]
        if addr is not None:
            sock.bind(sockaddr(addr, 0))

    # -- TCP ------------------------------------------------------------------

    def adopt_tcp(self, flow: int, sock: socket.socket) -> None:
        """Take over an accepted (port-forward) connection as ``flow``."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tcp[flow] = TcpConn(sock)

    def open_tcp(self, a: act.OpenTcp) -> None:
        family = family_of(a.addr)
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as err:
            self.counters.bump("host.tcp_socket_failed")
            self.emit(ev.TcpConnectFailed(a.flow, err.errno))
            return
        conn = TcpConn(sock)
        self.tcp[a.flow] = conn
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._bind_outbound(sock, family)
            rc = sock.connect_ex(sockaddr(a.addr, a.port))
        except OSError as err:
            rc = err.errno
        if rc == errno.EINPROGRESS:
            rc = self._connect_outcome(sock)
        if rc == 0:
            self.emit(ev.TcpConnected(a.flow, self._send_space(conn)))
        elif rc == errno.EINPROGRESS:
            conn.connecting = True
            self._watch_writable(a.flow, conn)
        else:
            self._drop_tcp(a.flow)
            self.emit(ev.TcpConnectFailed(a.flow, rc))

    @staticmethod
    def _connect_outcome(sock: socket.socket) -> int:
        """What a connect that said EINPROGRESS came to already: 0, an errno,
        or EINPROGRESS.  Toward loopback (the gateway) the kernel runs the
        whole handshake, or the refusal, inside connect() itself; telling
        now saves an event-loop round (a writability watch) per connection."""
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            if state == TCP_ESTABLISHED:
                return 0
            if state == TCP_CLOSE:
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.EINPROGRESS
        except OSError:
            pass
        return errno.EINPROGRESS

    def tcp_writable_handler(self, flow: int) -> None:
        conn = self.tcp.get(flow)
        if conn is None:
            return
        self._unwatch_writable(conn)
        if conn.connecting:
            conn.connecting = False
            rc = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc:
                self._drop_tcp(flow)
                self.emit(ev.TcpConnectFailed(flow, rc))
            else:
                self.emit(ev.TcpConnected(flow, self._send_space(conn)))
        else:
            self.emit(ev.TcpWritable(flow, self._send_space(conn)))
        self.driver.flush()

    def send_tcp(self, a: act.SendTcp) -> None:
        conn = self.tcp.get(a.flow)
        if conn is None:
            self.counters.bump("host.tcp_no_socket")
            return
        try:
            n = conn.sock.send(a.data)
        except BlockingIOError:
            n = 0
        except OSError as err:
            self.emit(ev.TcpHostReset(a.flow, err.errno))
            return
        if n < len(a.data):
            self._watch_writable(a.flow, conn)
        self.emit(ev.TcpSent(a.flow, n, self._send_space(conn)))

    def watch_tcp_writable(self, a: act.WatchTcpWritable) -> None:
        conn = self.tcp.get(a.flow)
        if conn is not None:
            self._watch_writable(a.flow, conn)

    def read_tcp(self, a: act.ReadTcp) -> None:
        conn = self.tcp.get(a.flow)
        if conn is None:
            return
        conn.credit = a.credit
        if a.credit > 0 and not conn.reading:
            conn.reading = True
            self.driver.watch(conn.fd, "host_tcp", a.flow)
        elif a.credit <= 0 and conn.reading:
            conn.reading = False
            self.driver.unwatch(conn.fd)

    def tcp_readable_handler(self, flow: int) -> None:
        conn = self.tcp.get(flow)
        if conn is None:
            return
        try:
            data = conn.sock.recv(min(conn.credit, RECV_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._stop_reading(conn)
            self.emit(ev.TcpHostReset(flow, err.errno))
            self.driver.flush()
            return
        if not data:
            self._stop_reading(conn)
            self.emit(ev.TcpHostEof(flow))
        else:
            conn.credit -= len(data)
            if conn.credit <= 0:
                self._stop_reading(conn)
            self.emit(ev.TcpReceived(flow, data))
        self.driver.flush()

    def detach_tcp(self, flow: int) -> None:
        """A datapath takes the flow over: stop watching its socket (it stays ours)."""
        conn = self.tcp.get(flow)
        if conn is not None:
            conn.credit = 0
            self._stop_reading(conn)
            self._unwatch_writable(conn)

    def shutdown_tcp(self, a: act.ShutdownTcp) -> None:
        conn = self.tcp.get(a.flow)
        if conn is None:
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset: the read side reports it

    def close_tcp(self, a: act.CloseTcp) -> None:
        conn = self.tcp.get(a.flow)
        if conn is None:
            return
        if a.reset:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._drop_tcp(a.flow)

    def _drop_tcp(self, flow: int) -> None:
        conn = self.tcp.pop(flow)
        self._stop_reading(conn)
        self._unwatch_writable(conn)
        conn.sock.close()

    def _stop_reading(self, conn: TcpConn) -> None:
        if conn.reading:
            conn.reading = False
            self.driver.unwatch(conn.fd)

    def _watch_writable(self, flow: int, conn: TcpConn) -> None:
        if not conn.writing:
            conn.writing = True
            self.loop.add_writer(conn.fd, self.tcp_writable_handler, flow)

    def _unwatch_writable(self, conn: TcpConn) -> None:
        if conn.writing:
            conn.writing = False
            self.loop.remove_writer(conn.fd)

    @staticmethod
    def _send_space(conn: TcpConn) -> int:
        return HostSockets.send_space_of(conn.sock)

    @staticmethod
    def send_space_of(sock: socket.socket) -> int:
        """How much more the socket will take now, as the datapath computes it:
        SO_MEMINFO's sndbuf minus wmem_queued (both in the kernel's memory
        units, which is what its own "writable" test compares; SO_SNDBUF minus
        SIOCOUTQ counts payload bytes and over-promises), 1/8 kept back."""
        try:
            mi = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
        except (OSError, struct.error):
            return 0
        space = max(0, mi[_MEMINFO_SNDBUF] - mi[_MEMINFO_WMEM_QUEUED])
        return space - space // 8

    # -- UDP ------------------------------------------------------------------

    def open_udp(self, a: act.OpenUdp) -> None:
        family = family_of(a.addr)
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError:
            self.counters.bump("host.udp_socket_failed")
            return
        try:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            self._bind_outbound(sock, family)
        except OSError:
            self.counters.bump("host.udp_bind_failed")
            sock.close()
            return
        self.udp[a.flow] = sock
        if not self.driver.udp_opened(a.flow, sock.fileno()):
            self.driver.watch(sock.fileno(), "host_udp", a.flow)

    def send_udp(self, a: act.SendUdp) -> None:
        sock = self.udp.get(a.flow)
        if sock is None:
            self.counters.bump("host.udp_no_socket")
            return
        try:
            sock.sendto(a.data, sockaddr(a.addr, a.port))
        except BlockingIOError:
            self.counters.bump("host.udp_send_eagain")
        except OSError as err:
            # A pending ICMP error may surface here; the error queue tells which.
            if err.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                self._drain_udp_errors(a.flow, sock)
            else:
                self.counters.bump("host.udp_send_failed")
                self.emit(ev.UdpFailed(a.flow, err.errno, a.addr, a.port))

    def udp_readable_handler(self, flow: int) -> None:
        sock = self.udp.get(flow)
        if sock is None:
            return
        for _ in range(64):
            try:
                data, peer = sock.recvfrom(UDP_RECV_MAX)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drain_udp_errors(flow, sock)
                continue
            self.emit(ev.UdpReceived(flow, socket.inet_pton(sock.family, peer[0]), peer[1], data))
        self.driver.flush()

    def _drain_udp_errors(self, flow: int, sock: socket.socket) -> None:
        for err, addr, port in read_icmp_errors(sock, 64):
            self.emit(ev.UdpFailed(flow, err, addr, port))

    def forward_session(self, flow: int, reply) -> None:
        """Remember how to answer the host peer of UDP forward session ``flow``."""
        self.udp_replies[flow] = reply

    def reply_udp(self, a: act.ReplyUdp) -> None:
        reply = self.udp_replies.get(a.flow)
        if reply is None or not reply(a.data):
            self.counters.bump("host.udp_reply_failed")

    def close_udp(self, a: act.CloseUdp) -> None:
        if self.udp_replies.pop(a.flow, None) is not None:
            return
        sock = self.udp.pop(a.flow, None)
        if sock is not None:
            self.driver.udp_closing(a.flow)
            self.driver.unwatch(sock.fileno())
            sock.close()

    # -- ICMP echo --------------------------------------------------------------

    def open_ping(self, a: act.OpenPing) -> None:
        family = family_of(a.addr)
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
            self._bind_outbound(sock, family)
        except OSError:
            self.counters.bump("host.ping_socket_refused")
            return
        self.ping[a.flow] = sock
        self.driver.watch(sock.fileno(), "host_ping", a.flow)

    def send_ping(self, a: act.SendPing) -> None:
        sock = self.ping.get(a.flow)
        if sock is None:
            self.counters.bump("host.ping_no_socket")
            return
        kind = ICMP_ECHO_REQUEST if sock.family == socket.AF_INET else ICMPV6_ECHO_REQUEST
        packet = _ICMP_HDR.pack(kind, 0, 0, 0, a.seq) + a.payload
        try:
            sock.sendto(packet, sockaddr(a.addr, 0))
        except OSError:
            self.counters.bump("host.ping_send_failed")

    def ping_readable_handler(self, flow: int) -> None:
        sock = self.ping.get(flow)
        if sock is None:
            return
        for _ in range(64):
            try:
                packet, peer = sock.recvfrom(UDP_RECV_MAX)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counters.bump("host.ping_recv_error")
                continue
            if len(packet) < _ICMP_HDR.size:
                continue
            _, _, _, _, seq = _ICMP_HDR.unpack_from(packet)
            addr = socket.inet_pton(sock.family, peer[0])
            self.emit(ev.PingReplied(flow, addr, seq, packet[_ICMP_HDR.size :]))
        self.driver.flush()

    def close_ping(self, a: act.ClosePing) -> None:
        sock = self.ping.pop(a.flow, None)
        if sock is not None:
            self.driver.unwatch(sock.fileno())
            sock.close()

    # -- teardown -------------------------------------------------------------

    def close_all(self) -> None:
        for flow in list(self.tcp):
            self._drop_tcp(flow)
        for table in (self.udp, self.ping):
            for sock in table.values():
                sock.close()
            table.clear()
        self.udp_replies.clear()


def ping_sockets_allowed(family: int = socket.AF_INET) -> bool:
    """Whether this process may open unprivileged ICMP sockets (ping_group_range)."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        socket.socket(family, socket.SOCK_DGRAM, proto).close()
    except OSError:
        return False
    return True
