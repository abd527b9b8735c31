"""Start-up, ready fd, exit fd, signals and orderly shutdown (compat spec §3, §5, §10).

Order of start-up, as slirp4netns (compat spec §3): warnings → namespace
child brings back the TAP → banner → stack → API socket bound and listening
→ ``run -p`` forwards → sandbox → seccomp → ready byte → main loop.  The
sandbox and seccomp steps (:func:`confine`, slirp/sandbox.py,
slirp/seccomp.py) come after every fd the process needs is open and before
anything can reach it.  The ready byte is written from the running loop, so
a client that reads it can use the API at once (RootlessKit relies on that).
The process the caller started is the one that keeps running: we never fork
into the background, so callers can ``kill $!``, read ``/proc/$!/...`` and
wait for us.  An orderly exit (exit fd, SIGTERM/SIGINT, the end of ``run``'s
command) closes the forwards and removes the API socket file.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import sys

from . import sandbox, seccomp, tap
from .config import Config
from .datapath import datapath_kind

STATUS_SLIRPNET_FAILED = 125  # `run`: slirpnet itself failed (as podman/docker run)
from .netns import ChildFailed, open_tap_in_target, target_from_config


def serve(cfg: Config, child=None) -> int:
    """Run the stack for ``cfg`` until the exit fd fires or a signal ends us.

    With ``child`` (a :class:`slirp.run.NamespaceChild`), run until the
    child's command exits and return its status instead."""
    out = open(os.devnull, "w") if cfg.quiet else sys.stdout
    for line in cfg.warnings:
        out.write(line + "\n")
    out.flush()
    if cfg.target_type == "bess":
        sys.stderr.write("--target-type=bess is not supported by slirpnet\n")
        return 1
    try:
        datapath_kind()
    except ValueError as bad:
        sys.stderr.write(f"{bad}\n")
        if child is not None:
            child.abandon()
            return STATUS_SLIRPNET_FAILED
        return 1
    raise_fd_limit()
    try:
        tap_fd = open_tap_in_target(target_from_config(cfg))
    except ChildFailed as failed:
        if child is not None:
            child.abandon()
            return STATUS_SLIRPNET_FAILED
        return failed.status

    from .loop import Driver  # not at the top: loop -> run -> lifecycle

    offloads = tap.enable_offloads(tap_fd)
    out.write(banner(cfg))
    out.flush()
    # resolv.conf is re-read for as long as we run; the sandbox moves the
    # cwd to its new root, so a relative --resolv-conf is fixed now.
    cfg.resolv_conf = os.path.abspath(cfg.resolv_conf)
    driver = Driver(cfg, tap_fd, offloads, child=child)
    if not driver.ping_relay and not cfg.quiet:
        sys.stderr.write(
            "WARNING: ping to outside addresses is off: this user may not open ICMP sockets "
            "(sysctl net.ipv4.ping_group_range); ping of the gateway and DNS addresses works\n"
        )
    if cfg.enable_ipv6 and not driver.ping_relay6 and not cfg.quiet:
        sys.stderr.write(
            "WARNING: ping -6 to outside addresses is off: this user may not open ICMPv6 sockets "
            "(sysctl net.ipv4.ping_group_range, or no IPv6 on the host); ping of fd00::2, fd00::3 and fe80::2 works\n"
        )
    failed = open_edge(cfg, driver)
    if failed is not None:
        driver.close_edge()
        if child is not None:
            sys.stderr.write(f"slirpnet run: {failed}\n")
            sys.stderr.flush()
            child.abandon()
            return STATUS_SLIRPNET_FAILED
        sys.stderr.write(f"{failed}\ndo_slirp is exiting\nparent failed\n")
        sys.stderr.flush()
        return 1

    # --enable-sandbox / --enable-seccomp: after the API socket is bound and
    # the forwards' host sockets exist, before the ready byte (compat spec §3
    # steps 11-13).
    status = confine(cfg, driver, out)
    if status != 0:
        driver.close_edge()
        driver.loop.close()
        if child is not None:
            child.abandon()
            return STATUS_SLIRPNET_FAILED
        return status
    probe = seccomp.probe_from_env() if cfg.enable_seccomp else None
    # The native datapath's thread: after confine() (it inherits the filter;
    # the sandbox needs a single-threaded process), before the ready byte.
    driver.start_datapath()

    def ready() -> None:
        # Called by the running loop: signal handlers are live by now (uvloop
        # drops signals that arrive before run_forever).
        if cfg.ready_fd is not None:
            signal_ready(cfg.ready_fd)
        if child is not None:
            child.start()
        if probe is not None:  # test-only (slirp/seccomp.py): the filter must kill us here
            driver.loop.call_soon(seccomp.probe, probe)

    return driver.run(on_running=ready)


def open_edge(cfg: Config, driver) -> str | None:
    """The API socket, then the ``run -p`` forwards; returns an error message or None."""
    from .portfwd import AddFailed, ForwardSpec, parse_ipv4, parse_publish

    if cfg.api_socket is not None:
        try:
            driver.open_api(cfg.api_socket)
        except OSError as err:
            return f"cannot listen on the API socket {cfg.api_socket}: {err.strerror or err}"
    for text in cfg.publish:
        mapping = parse_publish(text)  # checked when the command line was parsed
        host_addr = mapping.host_addr if mapping.host_addr is not None else parse_ipv4("0.0.0.0")
        spec = ForwardSpec(mapping.proto, host_addr, mapping.host_port, None, mapping.guest_port)
        try:
            driver.forwards.add(spec)
        except AddFailed as failed:
            return f"cannot publish {text}: {failed.reason}"
    return None


def confine(cfg: Config, driver, out) -> int:
    """--enable-sandbox, then --enable-seccomp (compat spec §3 step 12, §7, §8).

    Returns 0, or 1 after saying why on stderr (as slirp4netns: the failed
    step, then ``parent failed``)."""

    def warn(text: str) -> None:
        if not cfg.quiet:
            _say(text)

    if cfg.enable_sandbox:
        try:
            sandbox.apply(cfg, warn)
        except sandbox.SandboxError as err:
            _say(str(err))
            _say("parent failed")
            return 1
    if cfg.enable_seccomp:
        try:
            driver.start_thread_pool()
            blocked = seccomp.apply(warn)
        except seccomp.SeccompError as err:
            _say(str(err))
            _say("enable_seccomp failed")
            _say("parent failed")
            return 1
        out.write(seccomp.blocked_line(blocked) + "\n")
        out.flush()
    return 0


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def raise_fd_limit() -> None:
    """Every flow costs a host fd: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def signal_ready(fd: int) -> None:
    """Write the single byte ``1`` and close (errors other than EINTR are ignored)."""
    try:
        os.write(fd, b"1")
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


def _ip(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def banner(cfg: Config) -> str:
    plan = cfg.plan
    lines = [
        "Starting slirp",
        f"* MTU:             {cfg.mtu}",
        f"* Network:         {plan.network.network_address}",
        f"* Netmask:         {plan.network.netmask}",
        f"* Gateway:         {_ip(plan.gateway)}",
        f"* DNS:             {_ip(plan.dns)}",
        f"* DHCP begin:      {_ip(plan.dhcp_first)}",
        f"* DHCP end:        {_ip(plan.dhcp_last)}",
        f"* Recommended IP:  {_ip(plan.guest)}",
    ]
    if cfg.api_socket is not None:
        lines.append(f"* API Socket:      {cfg.api_socket}")
    if cfg.outbound4 is not None:
        lines.append(f"* Outbound IPv4:    {_ip(cfg.outbound4)}")  # sic: slirp4netns has one more space
    if cfg.outbound6 is not None:
        lines.append(f"* Outbound IPv6:    {_ip(cfg.outbound6)}")
    if cfg.mac is not None:
        lines.append(f"* MAC address:     {':'.join(f'{b:02x}' for b in cfg.mac)}")
    if not cfg.disable_host_loopback:
        gw = _ip(plan.gateway)
        lines.append(
            f"WARNING: 127.0.0.1:* on the host is accessible as {gw} "
            "(set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)"
        )
    return "".join(line + "\n" for line in lines)
