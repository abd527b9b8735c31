"""Moving flows between the sans-IO core and the datapath (slirp/datapath/).

The Driver owns one :class:`Offload` when a datapath is in use.  It

* reads the TAP through the datapath and hands the slow items to the stack,
  in order (a frame for netstack; an ejected TCP flow, resumed in netstack
  before any later item; a too-big UDP datagram; a UDP error to drain);
* after every flush, installs the TCP flows netstack reports as offloadable
  (ESTABLISHED with nothing in flight: ``TcpLayer.offload_ready``) — park in
  netstack, stop watching the socket in the edge, install in the datapath;
  passive opens whose first SYN-ACK netstack just made are installed in
  SYN_RECEIVED, and port-forward active opens whose first SYN it just made
  in SYN_SENT, before that frame is written (:meth:`install_handshakes`), so
  that the guest's answer, the first data and everything after never come
  up to Python;
* installs UDP NAT flows as their sockets open, and removes them before the
  edge closes them;
* every ACTIVITY_REFRESH_S, refreshes in netstack's flow table the idle
  timers of UDP flows whose traffic only the datapath saw.

A flow the datapath cannot take (its guest MAC unknown yet, say) simply stays
in netstack, which is always correct — only slower.
"""

from __future__ import annotations

import errno

from netstack import actions as act
from netstack import events as ev
from netstack.tcp import EndpointExport, State
from netstack.udp import UdpNatFlow

from .datapath import Closed, Ejected, Frame, TapError, TcpFlow, UdpDatagram, UdpError, UdpFlow

ACTIVITY_REFRESH_S = 5.0
_HANDSHAKE_STATES = (State.SYN_RECEIVED, State.SYN_SENT)


class Offload:
    def __init__(self, driver, datapath):
        self.driver = driver
        self.dp = datapath
        self.stack = driver.stack
        self.hostsocks = driver.hostsocks
        self.counters = driver.counters

    # -- slow items -----------------------------------------------------------

    def deliver(self, items: list, now: float, reinject: bool = True) -> None:
        stack = self.stack
        tcp = stack.tcp
        for item in items:
            kind = type(item)
            if kind is Frame:
                parked = tcp.parked_drops
                stack.frame_from_guest(memoryview(item.data), now)
                if tcp.parked_drops != parked:
                    # A segment read before its flow was installed (the
                    # datapath thread queued it while we parked the flow):
                    # the datapath owns the flow now.  Once only: should
                    # the datapath have ejected the flow meanwhile (its
                    # Ejected item is still ahead of us), the segment is
                    # dropped and the guest retransmits it.
                    self.counters.bump("offload.reinjected" if reinject else "offload.parked_dropped")
                    if reinject:
                        self.deliver(self.dp.inject(item.data, now), now, False)
            elif kind is Ejected:
                self._resume(item, now)
            elif kind is Closed:
                self._closed(item)
            elif kind is UdpDatagram:
                stack.handle_event(ev.UdpReceived(item.flow, item.addr, item.port, item.data), now)
            elif kind is UdpError:
                stack.handle_event(ev.UdpFailed(item.flow, item.errno, item.addr, item.port), now)
            elif kind is TapError:
                self.driver.tap_failed(item.errno)

    def _resume(self, ej: Ejected, now: float) -> None:
        self.counters.bump(f"offload.ejected_{ej.reason}")
        export = EndpointExport(
            tcb=ej.tcb,
            state=State[ej.state],
            send_bytes=ej.send_bytes,
            to_host=b"",
            host_eof=ej.host_eof,
            host_blocked=False,
            edge_credit=0,
        )
        self.stack.tcp_resume(ej.flow, export, now)
        if ej.state in ("SYN_RECEIVED", "SYN_SENT"):
            if ej.reason == "timeout":
                # our SYN(-ACK) went unanswered: netstack's timer (due) resends
                # it, and the handshake stays there from now on
                self.stack.tcp.offload_ready.discard(ej.flow)
            return
        if ej.reason == "host_error":
            self.stack.handle_event(ev.TcpHostReset(ej.flow, ej.errno), now)
        elif ej.reason == "timeout":
            # The guest stopped acknowledging for MAX_RTO_RETRIES timeouts:
            # give up as a host failure would (RST toward the guest, close).
            self.stack.handle_event(ev.TcpHostReset(ej.flow, errno.ETIMEDOUT), now)

    def _closed(self, item: Closed) -> None:
        """The connection ended in the datapath: netstack forgets the flow,
        the edge closes the socket (RST toward the host for a guest reset)."""
        self.counters.bump(f"offload.closed_{item.how}")
        try:
            self.stack.tcp_forget(item.flow)
        except KeyError:
            self.counters.bump("offload.closed_unknown")
        self.hostsocks.close_tcp(act.CloseTcp(item.flow, item.how == "reset"))

    # -- installing -----------------------------------------------------------

    def install_ready(self, now: float) -> None:
        """Take over the flows netstack just made offloadable."""
        tcp = self.stack.tcp
        ready = tcp.offload_ready
        if not ready:
            return
        flows = list(ready)
        ready.clear()
        for flow_id in flows:
            self._install_tcp(flow_id, now)

    def install_handshakes(self, now: float) -> None:
        """Install the handshakes netstack just made its first SYN-ACK
        (SYN_RECEIVED) or SYN (SYN_SENT) for — called before the stack's
        frames are written, so the datapath has the flow before the guest
        can answer.  The others wait for :meth:`install_ready` after the
        flush (an ESTABLISHED flow's last frames must reach the guest before
        the datapath's)."""
        tcp = self.stack.tcp
        ready = tcp.offload_ready
        if not ready:
            return
        for flow_id in [f for f in ready if (ep := tcp.endpoint(f)) is not None and ep.state in _HANDSHAKE_STATES]:
            ready.discard(flow_id)
            self._install_tcp(flow_id, now)

    def _install_tcp(self, flow_id: int, now: float) -> None:
        stack = self.stack
        ep = stack.tcp.endpoint(flow_id)
        conn = self.hostsocks.tcp.get(flow_id)
        if ep is None or ep.parked or not ep.offloadable() or conn is None or conn.connecting:
            return
        guest_mac = stack.neighbors.lookup(ep.guest_addr)
        if guest_mac is None:
            self.counters.bump("offload.no_guest_mac")
            return
        export = stack.tcp.park(flow_id)
        if export is None:
            return
        spec = TcpFlow(
            flow=flow_id,
            fd=conn.fd,
            guest_addr=ep.guest_addr,
            guest_port=ep.guest_port,
            remote_addr=ep.remote_addr,
            remote_port=ep.remote_port,
            guest_mac=guest_mac,
            our_mac=stack.our_mac_for(ep.remote_addr),
            tcb=export.tcb,
            rcv_buf_max=stack.tcp.config.rcv_buf_max,
            now=now,
            state=export.state.name,
        )
        try:
            self.dp.install_tcp(spec)
        except (ValueError, OverflowError):
            # The datapath is full (or refuses this TCB): netstack keeps the flow.
            self.counters.bump("offload.tcp_install_refused")
            stack.tcp_resume(flow_id, export, now)
            return
        self.hostsocks.detach_tcp(flow_id)
        self.counters.bump("offload.tcp_installed")

    def udp_opened(self, flow_id: int, fd: int) -> bool:
        """A UDP socket was opened for ``flow_id``: True if the datapath took it
        (the edge must then not watch it)."""
        stack = self.stack
        flow = stack.flows.get(flow_id)
        if flow is None or not isinstance(flow.endpoint, UdpNatFlow):
            return False  # DNS upstream flows stay with netstack's forwarder
        ep = flow.endpoint
        guest_mac = stack.neighbors.lookup(ep.guest_addr)
        if guest_mac is None:
            return False
        # Replies come from many remotes, all through the gateway's MAC (DNS
        # flows, the only ones from the DNS address, are not installed).
        try:
            self.dp.install_udp(UdpFlow(flow_id, fd, ep.guest_addr, ep.guest_port, guest_mac, stack.plan.gateway_mac))
        except (ValueError, OverflowError):
            self.counters.bump("offload.udp_install_refused")
            return False
        self.counters.bump("offload.udp_installed")
        return True

    def forget(self, flow_id: int) -> None:
        """The edge is about to close ``flow_id``'s socket."""
        if self.dp.owns(flow_id):
            self.dp.remove_udp(flow_id)

    def refresh_activity(self, now: float) -> None:
        self.stack.touch_flows(self.dp.take_activity(), now)
