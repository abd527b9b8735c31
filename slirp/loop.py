"""The uvloop driver: one handler table keyed by fd kind (STYLE.md §4).

Every fd the process watches is registered with :meth:`Driver.watch` under a
kind; readiness calls the one handler for that kind.  The TAP handler reads
frames until EAGAIN or a budget (a guest must not starve host sockets, and
unread guest frames are dropped by the TUN queue, tap-offloads.md gotcha 8),
hands each to the sans-IO stack, then :meth:`flush` writes the stack's frames
to the TAP, carries out its actions through the host-socket edge, and re-arms
the one timer for the stack's next deadline.  This module is the only place
that reads the clock (:func:`clock`: CLOCK_MONOTONIC seconds, the datapath
thread's clock too — uvloop's ``loop.time()`` has the same base but lags by
up to a millisecond, and a netstack resuming a flow must not see time earlier
than the thread stamped on it).

The edge's other fds are watched here too: the API socket and its clients
(``API_*`` kinds, served by :class:`slirp.api.ApiServer`, never blocking the
loop) and the port-forward host sockets (``FORWARD_*``, owned by
:class:`slirp.portfwd.ForwardRegistry`).  What arrives on a forward is handed
to :meth:`Driver.forward_accepted` / :meth:`Driver.forward_datagram`, the
entry points of the TCP/UDP datapath toward the guest.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

import uvloop

from netstack.addressing import IPV6_DNS, IPV6_GATEWAY, IPV6_ROUTER_LINK_LOCAL
from netstack.policy import LOOPBACK4, LOOPBACK6
from netstack.stack import Stack, StackConfig

from .api import ApiServer
from .config import Config
from .datapath import datapath_kind, open_datapath
from .hostsock import HostSockets, ping_sockets_allowed
from .offload import ACTIVITY_REFRESH_S, Offload
from .resolvconf import RESOLV_CONF_CHECK_S, ResolvConf
from .portfwd import ForwardRegistry
from .run import exit_status
from .tap import VNET_HDR_LEN

TAP_READ_BUDGET = 256  # frames per wake-up
TAP_BUF_LEN = VNET_HDR_LEN + 65536 + 14 + 64  # never truncate a 64 KiB frame (gotcha 6)
FLUSH_ROUNDS = 64  # action -> event -> action rounds per flush before yielding

clock = time.monotonic  # the one clock of the edge (see the module docstring)


class FdKind(enum.Enum):
    TAP = "tap"
    EXIT = "exit"
    CHILD = "child"  # `run`: pidfd of the command
    HOST_TCP = "host_tcp"  # a flow's TCP socket, readable
    HOST_UDP = "host_udp"
    HOST_PING = "host_ping"
    DATAPATH = "datapath"  # the datapath's epoll fd: host sockets of offloaded flows
    DATAPATH_ITEMS = "datapath_items"  # the datapath thread's eventfd: slow items queued
    API_LISTENER = "api_listener"  # the API socket (slirp/api.py)
    API_CONN = "api_conn"  # an API client, readable: its one request
    API_REPLY = "api_reply"  # an API client, writable: the rest of a long reply
    FORWARD_TCP = "forward_tcp"  # a port-forward listener (slirp/portfwd.py)
    FORWARD_UDP = "forward_udp"  # a port-forward UDP socket


class Driver:
    def __init__(self, cfg: Config, tap_fd: int, offloads: int, child=None):
        self.cfg = cfg
        self.tap_fd = tap_fd
        self.child = child
        self.loop = uvloop.new_event_loop()
        self.ping_relay = ping_sockets_allowed()
        self.ping_relay6 = cfg.enable_ipv6 and ping_sockets_allowed(socket.AF_INET6)
        self.stack = Stack(stack_config(cfg, self.ping_relay, self.ping_relay6))
        self.counters = self.stack.counters
        self.events: list = []
        self.hostsocks = HostSockets(self, cfg.outbound4, cfg.outbound6)
        self.resolv_conf = ResolvConf(cfg.resolv_conf)
        self.offload = make_offload(self, cfg, tap_fd)
        if self.offload is None:
            self.stack.tcp.offload_ready = None  # no datapath to hand flows to
        self.forwards = ForwardRegistry(cfg.plan, host=self, counters=self.counters, enable_ipv6=cfg.enable_ipv6)
        self.api = None  # an ApiServer once open_api() succeeded
        self.handlers = {
            FdKind.TAP: self.tap_readable_handler,
            FdKind.EXIT: self.exit_handler,
            FdKind.CHILD: self.child_exited_handler,
            FdKind.HOST_TCP: self.hostsocks.tcp_readable_handler,
            FdKind.HOST_UDP: self.hostsocks.udp_readable_handler,
            FdKind.HOST_PING: self.hostsocks.ping_readable_handler,
            FdKind.DATAPATH: self.datapath_readable_handler,
            FdKind.DATAPATH_ITEMS: self.datapath_items_handler,
            FdKind.API_LISTENER: self.api_listener_handler,
            FdKind.API_CONN: self.api_request_handler,
            FdKind.API_REPLY: self.api_reply_handler,
            FdKind.FORWARD_TCP: self.forward_tcp_handler,
            FdKind.FORWARD_UDP: self.forward_udp_handler,
        }
        self._tap_buf = bytearray(TAP_BUF_LEN)
        self._tap_view = memoryview(self._tap_buf)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stack_deadline: float | None = None  # as of the last flush
        self._exit_poll: select.epoll | None = None
        self.status = 0
        self._flushing = False
        # Opened now, not when the loop starts: pidfd_open is on the seccomp
        # deny-list, and the filter is loaded before run().
        self._pidfd = os.pidfd_open(child.pid) if child is not None else None

    def start_thread_pool(self) -> None:
        """Start libuv's worker threads now (uvloop starts them at the first
        getaddrinfo).  Each worker names itself with prctl(PR_SET_NAME), which
        the seccomp filter forbids; started before the filter (and after the
        sandbox, so they inherit its root and capabilities), they never need
        it again."""
        # No socket type: with one, uvloop answers an IP literal itself.
        # getnameinfo too, in case a later uvloop shortcuts this one as well
        # (there may be no /proc to count threads in by now).
        self.loop.run_until_complete(self.loop.getaddrinfo("127.0.0.1", 0, flags=socket.AI_NUMERICHOST))
        self.loop.run_until_complete(
            self.loop.getnameinfo(("127.0.0.1", 0), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
        )

    def start_datapath(self) -> None:
        """Start the native datapath's own thread (threaded mode: it reads the
        TAP and its host sockets itself and queues slow items for us).  Called
        once the process is confined — the thread inherits the seccomp filter
        and must not exist when the sandbox checks that we are single-threaded
        — and before the ready byte.  Without it (python datapath,
        SLIRPNET_DATAPATH=native-sync, or a failed start) everything runs in
        this thread, synchronously."""
        dp = self.offload.dp if self.offload is not None else None
        if dp is None or not hasattr(dp, "start") or datapath_kind() == "native-sync":
            return
        try:
            dp.start()
        except OSError as err:
            self.counters.bump("datapath.thread_failed")
            if not self.cfg.quiet:
                sys.stderr.write(f"WARNING: datapath thread not started ({err.strerror or err}): running synchronously\n")

    @property
    def _threaded(self) -> bool:
        return self.offload is not None and self.offload.dp.threaded

    # -- registration -------------------------------------------------------

    def watch(self, fd: int, kind: FdKind | str, *args) -> None:
        self.loop.add_reader(fd, self.handlers[FdKind(kind)], *args)

    def unwatch(self, fd: int) -> None:
        self.loop.remove_reader(fd)

    def watch_writable(self, fd: int, kind: FdKind | str, *args) -> None:
        self.loop.add_writer(fd, self.handlers[FdKind(kind)], *args)

    def unwatch_writable(self, fd: int) -> None:
        self.loop.remove_writer(fd)

    def call_later(self, delay_s: float, callback, *args) -> asyncio.TimerHandle:
        return self.loop.call_later(delay_s, callback, *args)

    # -- edge: API socket and port forwards -------------------------------------

    def open_api(self, path: str) -> None:
        """Bind and listen on the API socket (raises OSError); watched from now on."""
        log = None if self.cfg.quiet else sys.stderr.buffer
        server = ApiServer(path, self.forwards, host=self, kinds=FdKind, log=log, counters=self.counters)
        server.open()
        self.api = server

    def close_edge(self) -> None:
        """Orderly exit: close API clients and listener (unlinking the socket file),
        and every forward's host socket.  Idempotent."""
        if self.api is not None:
            self.api.close()
            self.api = None
        self.forwards.close_all()

    # ForwardHost (slirp/portfwd.py): the registry tells us what to watch.

    def listener_opened(self, forward) -> None:
        kind = FdKind.FORWARD_TCP if forward.proto == "tcp" else FdKind.FORWARD_UDP
        self.watch(forward.sock.fileno(), kind, forward)

    def listener_closing(self, forward) -> None:
        if not forward.paused:
            self.unwatch(forward.sock.fileno())

    def listener_paused(self, forward, seconds: float) -> None:
        self.unwatch(forward.sock.fileno())
        self.loop.call_later(seconds, self._forward_resume, forward)

    def _forward_resume(self, forward) -> None:
        if self.forwards.resume(forward):
            self.listener_opened(forward)

    # The hand-off to the core.  Until the TCP/UDP datapath carries forwarded
    # traffic, both close/drop what they are given, count it, and log the
    # first one per forward.

    def forward_accepted(self, forward, conn, peer_addr: bytes, peer_port: int) -> None:
        """A host client connected to ``forward`` (a TCP forward): open toward
        the guest's ``forward.target_addr``:``forward.target_port`` and carry
        the connection (``conn`` is ours from now on).  The guest sees the
        client's address, or the gateway for loopback clients (spec §4.6).
        Called from :meth:`slirp.portfwd.ForwardRegistry.accept_ready`."""
        now = clock()
        space = self.hostsocks.send_space_of(conn)
        flow = self.stack.tcp_open_to_guest(forward.target_addr, forward.target_port, peer_addr, peer_port, space, now)
        if flow is None:
            self.counters.bump("portfwd.tcp_refused")
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not EOF
            except OSError:
                pass
            conn.close()
            return
        self.hostsocks.adopt_tcp(flow, conn)
        self.flush()

    def forward_datagram(self, forward, data: bytes, peer_addr: bytes, peer_port: int, reply) -> None:
        """A datagram from a host peer on ``forward`` (a UDP forward): deliver
        it to the guest in a session whose replies go back through ``reply``.
        Called from :meth:`slirp.portfwd.ForwardRegistry.datagrams_ready`."""
        now = clock()
        flow = self.stack.udp_forward_from_host(forward.target_addr, forward.target_port, peer_addr, peer_port, data, now)
        if flow is None:
            self.counters.bump("portfwd.udp_refused")
            return
        self.hostsocks.forward_session(flow, reply)
        self.flush()

    # -- main ---------------------------------------------------------------

    def run(self, on_running=None) -> int:
        """Serve until stopped; ``on_running`` is called once the loop runs."""
        asyncio.set_event_loop(self.loop)
        try:
            if not self._watch_exit_fd():
                return self.finish(0)
            if self._threaded:
                # the datapath thread reads the TAP; we hear of slow items only
                self.watch(self.offload.dp.fileno(), FdKind.DATAPATH_ITEMS)
            else:
                self.watch(self.tap_fd, FdKind.TAP)
                if self.offload is not None:
                    self.watch(self.offload.dp.fileno(), FdKind.DATAPATH)
            if self.offload is not None:
                self.loop.call_later(ACTIVITY_REFRESH_S, self.activity_handler)
            if self.child is not None:
                self.watch(self._pidfd, FdKind.CHILD)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                    self.loop.add_signal_handler(sig, self.forward_signal_handler, sig)
            else:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self.loop.add_signal_handler(sig, self.signal_handler, sig)
            self.resolv_conf_handler()
            if on_running is not None:
                self.loop.call_soon(on_running)
            self.loop.run_forever()
        finally:
            if self.offload is not None:
                self.offload.dp.close()  # the datapath thread stops and joins before any fd closes
            self.close_edge()
            self.hostsocks.close_all()
            self.loop.close()
        return self.status

    def stop(self, status: int) -> None:
        self.status = status
        self.loop.stop()

    def finish(self, status: int) -> int:
        """Orderly exit: what slirp4netns prints and removes on the exit fd."""
        self.close_edge()
        if not self.cfg.quiet:
            sys.stderr.write("do_slirp is exiting\n")
            sys.stderr.flush()
        sys.stdout.flush()
        return status

    # -- handlers -------------------------------------------------------------

    def tap_readable_handler(self) -> None:
        if self.offload is not None:
            now = clock()
            items = self.offload.dp.tap_readable(now)
            if items:
                self.offload.deliver(items, now)
                self.flush()
            else:
                self._datapath_only()
            return
        stack = self.stack
        view = self._tap_view
        fd = self.tap_fd
        now = clock()
        for _ in range(TAP_READ_BUDGET):
            try:
                n = os.readv(fd, (self._tap_buf,))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno == errno.EBADFD:
                    # The TAP went away under us (device deleted): nothing left to serve.
                    self.counters.bump("tap.gone")
                    self.stop(1)
                    return
                raise
            if n == 0:
                break
            stack.frame_from_guest(view[:n], now)
        self.flush()

    def exit_handler(self) -> None:
        sys.stderr.write("exitfd event\n")
        sys.stderr.flush()
        self.stop(self.finish(0))

    def signal_handler(self, sig: int) -> None:
        # Clean up like the exit fd would, then die of the signal as
        # slirp4netns does (callers see the usual 128+N status).
        self.finish(0)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)

    def forward_signal_handler(self, sig: int) -> None:
        try:
            os.kill(self.child.pid, sig)
        except ProcessLookupError:
            pass

    def api_listener_handler(self) -> None:
        self.api.accept_handler()

    def api_request_handler(self, conn) -> None:
        self.api.request_handler(conn)

    def api_reply_handler(self, conn) -> None:
        self.api.reply_handler(conn)

    def forward_tcp_handler(self, forward) -> None:
        self.forwards.accept_ready(forward)

    def forward_udp_handler(self, forward) -> None:
        self.forwards.datagrams_ready(forward)

    def child_exited_handler(self) -> None:
        _, wstatus = os.waitpid(self.child.pid, 0)
        self.unwatch(self._pidfd)
        os.close(self._pidfd)
        self.stop(exit_status(wstatus))

    def resolv_conf_handler(self) -> None:
        """Re-read the DNS upstreams when resolv.conf changed; runs periodically."""
        resolvers = self.resolv_conf.changed()
        if resolvers is not None:
            self.stack.set_resolvers(resolvers)
        self.loop.call_later(RESOLV_CONF_CHECK_S, self.resolv_conf_handler)

    def timer_handler(self) -> None:
        self._timer = None
        self._timer_at = None
        now = clock()
        self.stack.poll(now)
        if self.offload is not None and not self.offload.dp.threaded:
            self.offload.deliver(self.offload.dp.timers(now), now)
        self.flush()

    def datapath_readable_handler(self) -> None:
        """Host sockets of offloaded flows are ready."""
        now = clock()
        items = self.offload.dp.host_readable(now)
        if items:
            self.offload.deliver(items, now)
            self.flush()
        else:
            self._datapath_only()

    def datapath_items_handler(self) -> None:
        """Threaded mode: the datapath thread queued slow items."""
        items = self.offload.dp.take()
        if items:
            self.offload.deliver(items, clock())  # after take(): no earlier than the thread's stamps
            self.flush()

    def tap_failed(self, err: int) -> None:
        """The datapath thread could not read the TAP any more (the device
        went away): nothing is left to serve."""
        self.counters.bump("tap.gone" if err == errno.EBADFD else "tap.read_failed")
        if not self.cfg.quiet:
            sys.stderr.write(f"TAP read failed: {os.strerror(err)}\n")
        self.stop(1)

    def _datapath_only(self) -> None:
        """The datapath handled everything itself: the stack has nothing new
        to say, so only the datapath's deadline can have moved (this is the
        per-wake-up cost of every offloaded byte: keep it small)."""
        dp_deadline = self.offload.dp.next_deadline()
        if dp_deadline is not None and (self._stack_deadline is None or dp_deadline < self._stack_deadline):
            self._arm_timer(dp_deadline)
        else:
            self._arm_timer(self._stack_deadline)

    def activity_handler(self) -> None:
        """Refresh netstack's idle timers of flows only the datapath saw."""
        self.offload.refresh_activity(clock())
        self.loop.call_later(ACTIVITY_REFRESH_S, self.activity_handler)

    # -- output ---------------------------------------------------------------

    def udp_opened(self, flow: int, fd: int) -> bool:
        """A UDP flow's socket is open: True if a datapath took it over."""
        return self.offload.udp_opened(flow, fd) if self.offload is not None else False

    def udp_closing(self, flow: int) -> None:
        if self.offload is not None:
            self.offload.forget(flow)

    def post_event(self, event) -> None:
        """An outcome from the host side, for the stack (hostsock.py calls this)."""
        self.events.append(event)

    def flush(self) -> None:
        """Until quiet: write the stack's frames, carry out its actions, feed
        the outcomes back; then re-arm the deadline timer."""
        if self._flushing:
            return  # a handler called from inside a flush: the outer loop picks it up
        self._flushing = True
        try:
            stack = self.stack
            offload = self.offload
            for _ in range(FLUSH_ROUNDS):
                if offload is not None:
                    offload.install_handshakes(clock())
                self._write_frames(stack.take_frames())
                actions = stack.take_actions()
                for action in actions:
                    self.hostsocks.execute(action)
                if not self.events:
                    if not actions:
                        break
                    continue
                events, self.events = self.events, []
                now = clock()
                for event in events:
                    stack.handle_event(event, now)
            else:
                self.loop.call_soon(self.flush)  # more to do: yield to other fds first
            if offload is not None:
                offload.install_handshakes(clock())
            self._write_frames(stack.take_frames())
            if self.offload is not None:
                self.offload.install_ready(clock())
        finally:
            self._flushing = False
        deadline = self._stack_deadline = self.stack.next_deadline()
        if self.offload is not None and not self.offload.dp.threaded:
            dp_deadline = self.offload.dp.next_deadline()
            if dp_deadline is not None and (deadline is None or dp_deadline < deadline):
                deadline = dp_deadline
        self._arm_timer(deadline)

    def _write_frames(self, frames: list) -> None:
        fd = self.tap_fd
        for frame in frames:
            try:
                os.write(fd, frame)
            except BlockingIOError:
                self.counters.bump("tap.write_eagain")
            except OSError as err:
                if err.errno in (errno.EINVAL, errno.EIO):
                    self.counters.bump("tap.write_rejected")
                else:
                    raise

    def _arm_timer(self, deadline: float | None) -> None:
        """One timer for the earliest deadline.  A timer already armed earlier
        than ``deadline`` is kept (waking early is harmless: the handler asks
        again), so deadlines that only move later — a retransmission timer
        pushed back by every ACK — cost nothing per packet."""
        armed = self._timer_at
        if deadline is None or (armed is not None and armed <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self.timer_handler)

    def _watch_exit_fd(self) -> bool:
        """Watch the exit fd for HUP/ERR only (readable data must not end us).

        An epoll set with the fd registered for no events reports exactly
        EPOLLHUP/EPOLLERR; the loop watches the epoll fd.  Returns False when
        the fd is not open at all (slirp4netns's POLLNVAL: exit at once)."""
        fd = self.cfg.exit_fd
        if fd is None:
            return True
        ep = select.epoll(flags=select.EPOLL_CLOEXEC)
        try:
            ep.register(fd, 0)
        except OSError as err:
            ep.close()
            if err.errno == errno.EBADF:
                sys.stderr.write("exitfd event\n")
                return False
            return True  # e.g. a regular file: it can never hang up
        self._exit_poll = ep
        self.watch(ep.fileno(), FdKind.EXIT)
        return True


def make_offload(driver: Driver, cfg: Config, tap_fd: int) -> Offload | None:
    """The datapath $SLIRPNET_DATAPATH names (datapath_kind), wrapped for the
    Driver; None for ``off``."""
    kind = datapath_kind()
    if kind == "off":
        return None
    if kind == "native-sync":
        kind = "native"
    plan = cfg.plan
    forward_map, slow_addrs = {}, set()
    # The router's link-local fe80::2 is the gateway too (netstack/policy.py).
    if cfg.disable_host_loopback:
        slow_addrs.update((plan.gateway, IPV6_GATEWAY, IPV6_ROUTER_LINK_LOCAL))
    else:
        forward_map.update({plan.gateway: LOOPBACK4, IPV6_GATEWAY: LOOPBACK6, IPV6_ROUTER_LINK_LOCAL: LOOPBACK6})
    if not cfg.disable_dns:
        slow_addrs.update((plan.dns, IPV6_DNS))
    reverse_map = {LOOPBACK4: plan.gateway, LOOPBACK6: IPV6_GATEWAY}
    dp = open_datapath(
        kind, tap_fd=tap_fd, mtu=cfg.mtu, forward_map=forward_map, reverse_map=reverse_map, slow_addrs=slow_addrs
    )
    return Offload(driver, dp)


def stack_config(cfg: Config, ping_relay: bool, ping_relay6: bool = False) -> StackConfig:
    return StackConfig(
        plan=cfg.plan,
        mtu=cfg.mtu,
        disable_host_loopback=cfg.disable_host_loopback,
        disable_dns=cfg.disable_dns,
        enable_ipv6=cfg.enable_ipv6,
        ping_relay=ping_relay,
        ping_relay6=ping_relay6,
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop()
