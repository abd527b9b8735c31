"""Join the target's namespaces from a short-lived child and bring back the TAP fd.

setns(CLONE_NEWUSER) needs a single-threaded caller and the network
namespace can't be left again once joined, so — like slirp4netns (compat spec
§3 steps 2–7) — a forked child does the namespace work:

1. join the user namespace (``--userns-path``, or ``/proc/PID/ns/user`` in
   pid mode); failure is ignored (already inside it, or privileged);
2. join the network namespace (``/proc/PID/ns/net`` or the path): fatal;
3. open the TAP (slirp/tap.py) and, with ``-c``, configure it (slirp/configure.py);
4. pass the fd back over a socketpair with SCM_RIGHTS, say
   ``sent tapfd=N for TAP`` on stderr and exit 0.

The parent waits for the child, reports ``child failed(STATUS)`` and exits
with the child's status if it failed, else receives the fd and says
``received tapfd=N``.  The child asks the kernel to SIGKILL it if the parent
dies first (PR_SET_PDEATHSIG), so no helper outlives the caller's process.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys
import traceback
from dataclasses import dataclass

from . import linux, tap
from .configure import ConfigureError, LinkSettings, configure_link


@dataclass(frozen=True, slots=True)
class Target:
    netns_path: str
    userns_path: str | None
    tapname: str
    link: LinkSettings | None  # set when --configure
    quiet: bool = False  # no "sent/received tapfd" lines (errors are always said)


class ChildFailed(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def target_from_config(cfg) -> Target:
    if cfg.netns_type == "pid":
        netns_path = f"/proc/{cfg.pid}/ns/net"
        userns_path = cfg.userns_path or f"/proc/{cfg.pid}/ns/user"
    else:
        netns_path = cfg.target
        userns_path = cfg.userns_path
    link = None
    if cfg.configure:
        link = LinkSettings(
            tapname=cfg.tapname,
            mtu=cfg.mtu,
            mac=cfg.mac,
            address=cfg.plan.guest,
            prefixlen=cfg.plan.prefixlen,
            gateway=cfg.plan.gateway,
        )
    return Target(netns_path, userns_path, cfg.tapname, link, cfg.quiet)


def open_tap_in_target(target: Target) -> int:
    """Fork the namespace child; returns the TAP fd or raises ChildFailed."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            parent_sock.close()
            status = _child_main(target, child_sock)
        except BaseException:  # noqa: BLE001 - the child must never return into the caller's code
            _say(traceback.format_exc())
        finally:
            os._exit(status)
    child_sock.close()
    try:
        _, wstatus = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(wstatus)
        if status != 0:
            _say(f"child failed({status})\n")
            raise ChildFailed(status if status > 0 else 1)
        fd = _recv_fd(parent_sock)
    finally:
        parent_sock.close()
    os.set_blocking(fd, False)
    if not target.quiet:
        _say(f"received tapfd={fd}\n")
    return fd


def _child_main(target: Target, sock: socket.socket) -> int:
    linux.die_with_parent(signal.SIGKILL)
    if target.userns_path:
        try:
            fd = os.open(target.userns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                linux.setns(fd, linux.CLONE_NEWUSER)
            finally:
                os.close(fd)
        except OSError:
            pass  # already inside it, or privileged: slirp4netns ignores this too
    try:
        fd = os.open(target.netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        _say(f"{target.netns_path}: {err.strerror}\n")
        return 1
    try:
        linux.setns(fd, linux.CLONE_NEWNET)
    except OSError as err:
        _say(f"setns(CLONE_NEWNET): {err.strerror}\n")
        return 1
    finally:
        os.close(fd)
    try:
        tapfd = tap.open_tap(target.tapname)
    except OSError as err:
        where = "open(/dev/net/tun)" if err.filename else "ioctl(TUNSETIFF)"
        _say(f"{where}: {err.strerror}\n")
        return 1
    if target.link is not None:
        try:
            configure_link(target.link)
        except ConfigureError as err:
            _say(f"{err}\n")
            return 1
    _send_fd(sock, tapfd)
    if not target.quiet:
        _say(f"sent tapfd={tapfd} for {target.tapname}\n")
    return 0


def _send_fd(sock: socket.socket, fd: int) -> None:
    sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def _recv_fd(sock: socket.socket) -> int:
    fds = array.array("i")
    _, ancdata, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not fds:
        raise ChildFailed(1)
    return fds[0]


def _say(text: str) -> None:
    """Unbuffered stderr, safe in a forked child (no inherited Python buffers)."""
    os.write(2, text.encode())
