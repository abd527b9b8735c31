"""``slirpnet run [OPTION]... -- CMD [ARG]...``: a command with networking, no root needed.

Like ``unshare -rn CMD`` plus slirp4netns in one step: a child process
unshares a new user + network namespace (the caller's uid and gid mapped to
root, as ``unshare -r`` does), waits until the stack has attached and
configured tap0 in it (``--configure``: 10.0.2.100/24, default route via
10.0.2.2), then execs CMD.  This process runs the stack, forwards SIGINT,
SIGTERM, SIGHUP and SIGQUIT to CMD, and exits with CMD's status (128+N if a
signal killed it) once CMD has exited — leaving no process and no socket
file behind.  CMD is killed if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

from . import linux
from .cli import Exit, apply_option, check_settings, emit
from .config import Config, ConfigError
from .gnu_getopt import GetoptError, LongOption, getopt_long
from .lifecycle import STATUS_SLIRPNET_FAILED, serve

RUN_SHORT = "m:a:6p:h"
RUN_LONG = [
    LongOption("mtu", True, "m"),
    LongOption("cidr", True, "cidr"),
    LongOption("disable-host-loopback", False, "disable-host-loopback"),
    LongOption("api-socket", True, "a"),
    LongOption("enable-ipv6", False, "6"),
    LongOption("enable-sandbox", False, "enable-sandbox"),
    LongOption("enable-seccomp", False, "enable-seccomp"),
    LongOption("outbound-addr", True, "outbound-addr"),
    LongOption("outbound-addr6", True, "outbound-addr6"),
    LongOption("disable-dns", False, "disable-dns"),
    LongOption("macaddress", True, "macaddress"),
    LongOption("resolv-conf", True, "resolv-conf"),
    LongOption("publish", True, "p"),
    LongOption("verbose", False, "verbose"),
    LongOption("help", False, "h"),
]

RUN_USAGE = """\
Usage: {prog} run [OPTION]... [--] CMD [ARG]...
Run CMD in a new user + network namespace whose tap0 is connected by slirpnet.

-m, --mtu=MTU            MTU of tap0 (default=1500, max=65521)
--cidr=CIDR              guest network (default=10.0.2.0/24; guest N+100, gateway N+2, DNS N+3)
--disable-host-loopback  do not map the gateway address to the host's 127.0.0.1
--disable-dns            no DNS forwarder at N+3
-6, --enable-ipv6        enable IPv6 (fd00::/64, gateway fd00::2)
-a, --api-socket=PATH    serve the slirp4netns JSON API at PATH
-p, --publish=[ADDR:]HOSTPORT:GUESTPORT[/udp]
                         forward a host port to the namespace's N+100 (10.0.2.100)
                         (repeatable; ADDR defaults to 0.0.0.0 as in Docker;
                         IPv6 in brackets: [::1]:8080:80, [::] is dual-stack)
--outbound-addr=IPv4     bind outbound IPv4 sockets to this address or interface
--outbound-addr6=IPv6    bind outbound IPv6 sockets to this address or interface
--macaddress=MAC         MAC address of tap0
--resolv-conf=PATH       DNS upstreams from PATH (default=/etc/resolv.conf)
--enable-sandbox, --enable-seccomp
                         confine the slirpnet process as slirp4netns does
--verbose                print slirpnet's start-up messages
-h, --help               show this help and exit

Exit status: CMD's (128+N if CMD was killed by signal N); 125 if slirpnet
itself failed, 126/127 if CMD could not be executed.
"""

STATUS_CANNOT_EXECUTE = 126
STATUS_NOT_FOUND = 127
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def parse_run_args(argv: list[str], prog: str) -> tuple[Config, list[str]]:
    usage = RUN_USAGE.format(prog=prog)
    try:
        options, command = getopt_long(argv, RUN_SHORT, RUN_LONG, require_order=True)
    except GetoptError as err:
        raise Exit(2, stderr=f"{prog} run: {err}\n{usage}") from None
    cfg = Config(configure=True, netns_type="pid", tapname="tap0")
    cfg.quiet = True
    try:
        for key, value in options:
            if key == "h":
                raise Exit(0, stdout=usage)
            elif key == "p":
                cfg.publish.append(_check_publish(value, prog))
            elif key == "verbose":
                cfg.quiet = False
            else:  # the stack's own options, as the slirp4netns command line takes them
                apply_option(cfg, key, value, prog)
    except ConfigError as err:
        raise Exit(2, stderr=f"{prog} run: {err.message}\n") from None
    if not command:
        raise Exit(2, stderr=f"{prog} run: no command given\n{usage}")
    try:
        check_settings(cfg)
    except Exit as done:
        done.status = 2
        raise
    return cfg, command


def _check_publish(text: str, prog: str) -> str:
    """``-p [HOSTADDR:]HOSTPORT:GUESTPORT[/udp]``: exit status 2 when malformed."""
    from .portfwd import MappingError, parse_publish

    try:
        mapping = parse_publish(text)
    except MappingError as err:
        raise Exit(2, stderr=f"{prog} run: bad --publish {text!r}: {err}\n") from None
    return text


class NamespaceChild:
    """CMD's process: new user + network namespace, held until :meth:`start`."""

    def __init__(self, command: list[str]):
        self.command = command
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            status = STATUS_SLIRPNET_FAILED
            try:
                os.close(ready_r)
                os.close(go_w)
                status = _child(command, ready_w, go_r)
            except BaseException as err:  # noqa: BLE001 - never return into the caller's code
                os.write(2, f"slirpnet run: {err}\n".encode())
            finally:
                os._exit(status)
        os.close(ready_w)
        os.close(go_r)
        self.pid = pid
        self._go = go_w
        ok = os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        if not ok:
            os.close(go_w)
            _, wstatus = os.waitpid(pid, 0)
            raise ChildSetupFailed(exit_status(wstatus))

    def start(self) -> None:
        """Let CMD run: the network is configured."""
        os.write(self._go, b"1")
        os.close(self._go)

    def abandon(self) -> int:
        """The stack failed to start: end the child without running CMD."""
        os.close(self._go)  # the child sees EOF and exits
        _, wstatus = os.waitpid(self.pid, 0)
        return exit_status(wstatus)


class ChildSetupFailed(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _child(command: list[str], ready_w: int, go_r: int) -> int:
    linux.die_with_parent(signal.SIGKILL)
    uid, gid = os.getuid(), os.getgid()
    try:
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNET)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    except OSError as err:
        os.write(2, f"slirpnet run: cannot create a user + network namespace: {err.strerror}\n".encode())
        return STATUS_SLIRPNET_FAILED
    os.write(ready_w, b"1")
    os.close(ready_w)
    if os.read(go_r, 1) != b"1":
        return STATUS_SLIRPNET_FAILED  # the stack did not come up
    os.close(go_r)
    # Resolve like a shell: "not found" only if no PATH entry has it, even
    # when some entries cannot be searched (os.execvp would report EACCES).
    path = command[0] if "/" in command[0] else shutil.which(command[0])
    if path is None:
        os.write(2, f"slirpnet run: {command[0]}: command not found\n".encode())
        return STATUS_NOT_FOUND
    try:
        os.execv(path, command)
    except OSError as err:
        os.write(2, f"slirpnet run: {command[0]}: {err.strerror}\n".encode())
        return STATUS_NOT_FOUND if isinstance(err, FileNotFoundError) else STATUS_CANNOT_EXECUTE
    return STATUS_CANNOT_EXECUTE  # pragma: no cover - execv does not return


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def exit_status(wstatus: int) -> int:
    """Shell convention: the exit code, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(wstatus)
    return code if code >= 0 else 128 - code


def run_main(argv: list[str], prog: str) -> int:
    try:
        cfg, command = parse_run_args(argv, prog)
    except Exit as done:
        emit(done)
        return done.status
    try:
        child = NamespaceChild(command)
    except ChildSetupFailed as failed:
        return failed.status
    cfg.target = str(child.pid)
    return serve(cfg, child=child)
