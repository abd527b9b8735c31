"""The command line: slirp4netns-compatible parsing plus the ``run`` and ``ctl`` subcommands.

``slirpnet [OPTION]... PID|PATH [TAPNAME]`` behaves like slirp4netns 1.2.0
(compat spec §1, §2, §5, §10): same options, same GNU parsing, same messages
and exit codes, a ``--help`` that names every option (Podman and RootlessKit
feature-detect by searching it).  ``slirpnet run`` and ``slirpnet ctl`` are
slirpnet's own; they are recognised only as the very first argument (a netns
file literally called ``run`` can still be given as ``./run``).
"""

from __future__ import annotations

import os
import sys

from . import __version__
from .config import (
    IFNAMSIZ,
    MIN_MTU,
    MIN_MTU_IPV6,
    Config,
    ConfigError,
    UNIX_PATH_MAX,
    parse_cidr,
    parse_fd,
    parse_mac,
    parse_mtu,
    parse_pid,
)
from .ifaddrs import resolve_outbound
from .gnu_getopt import GetoptError, LongOption, getopt_long

SHORT_OPTIONS = "ce:r:m:a:6hv"
# Table order matters: glibc lists ambiguous prefixes in this order.
LONG_OPTIONS = [
    LongOption("configure", False, "c"),
    LongOption("exit-fd", True, "e"),
    LongOption("ready-fd", True, "r"),
    LongOption("mtu", True, "m"),
    LongOption("cidr", True, "cidr"),
    LongOption("disable-host-loopback", False, "disable-host-loopback"),
    LongOption("no-host-loopback", False, "no-host-loopback"),
    LongOption("netns-type", True, "netns-type"),
    LongOption("userns-path", True, "userns-path"),
    LongOption("api-socket", True, "a"),
    LongOption("enable-ipv6", False, "6"),
    LongOption("enable-sandbox", False, "enable-sandbox"),
    LongOption("create-sandbox", False, "create-sandbox"),
    LongOption("enable-seccomp", False, "enable-seccomp"),
    LongOption("help", False, "h"),
    LongOption("version", False, "v"),
    LongOption("outbound-addr", True, "outbound-addr"),
    LongOption("outbound-addr6", True, "outbound-addr6"),
    LongOption("disable-dns", False, "disable-dns"),
    LongOption("macaddress", True, "macaddress"),
    LongOption("target-type", True, "target-type"),
    LongOption("resolv-conf", True, "resolv-conf"),
]

USAGE_BODY = """\
User-mode networking for unprivileged network namespaces (slirpnet, a slirp4netns drop-in).

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating slirp4netns
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default=1500, max=65521)
-6, --enable-ipv6        enable IPv6
-a, --api-socket=PATH    specify API socket path
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--netns-type=TYPE        specify network namespace type ([path|pid], default=pid)
--userns-path=PATH       specify user namespace path
--enable-sandbox         create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)
--enable-seccomp         enable seccomp to limit syscalls
--outbound-addr=IPv4     sets outbound ipv4 address to bound to
--outbound-addr6=IPv6    sets outbound ipv6 address to bound to
--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--target-type=TYPE       specify the target type ([netns|bess], default=netns)
--resolv-conf=PATH       take the DNS forwarder's upstream servers from PATH (default=/etc/resolv.conf)
-h, --help               show this help and exit
-v, --version            show version and exit

slirpnet subcommands (only as the first argument):
  slirpnet run [OPTION]... [-p [ADDR:]HOSTPORT:GUESTPORT[/udp]]... -- CMD [ARG]...
                         run CMD in a new user + network namespace with networking
  slirpnet ctl --api-socket=PATH add|list|remove ...
                         manage port forwards of a running slirpnet
"""


def usage_text(prog: str) -> str:
    return f"Usage: {prog} [OPTION]... PID|PATH [TAPNAME]\n{USAGE_BODY}"


def version_text() -> str:
    from . import buildinfo  # only --version needs it

    return (
        f"slirpnet version {__version__}\n"
        f"commit: {buildinfo.commit()}\n"
        f"libslirp: none (slirpnet netstack {__version__})\n"
        "SLIRP_CONFIG_VERSION_MAX: 4\n"
        f"libseccomp: {buildinfo.libseccomp_version()}\n"
    )


class Exit(Exception):
    """Leave with ``status``; ``stdout``/``stderr`` texts are printed first."""

    def __init__(self, status: int, stdout: str = "", stderr: str = ""):
        super().__init__(status)
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


def parse_args(argv: list[str], prog: str = "slirpnet") -> Config:
    """slirp4netns's parse_args() and the config checks that follow it.

    Raises :class:`Exit` for --help/--version and for every error, carrying
    the exact texts; warnings for the caller to print are in ``Config.warnings``.
    """
    cfg = Config()
    usage = usage_text(prog)
    try:
        options, positionals = getopt_long(argv, SHORT_OPTIONS, LONG_OPTIONS)
    except GetoptError as err:
        raise Exit(1, stdout=usage, stderr=f"{prog}: {err}\n") from None

    def fail(message: str) -> Exit:
        return Exit(1, stdout=_warnings(cfg) + usage, stderr=message + "\n")

    try:
        for key, value in options:
            apply_option(cfg, key, value, prog)
    except ConfigError as err:
        raise fail(err.message) from None
    except Exit as done:
        done.stdout = _warnings(cfg) + done.stdout
        raise

    if cfg.macaddress is not None and not cfg.configure:
        raise fail("--macaddr cannot be specified when --configure or -c is not specified")

    if cfg.target_type == "bess":
        for flag, conflict in (
            ("--configure", cfg.configure),
            ("--netns-type", cfg.netns_type != "pid" or _given(options, "netns-type")),
            ("--userns-path", cfg.userns_path is not None),
        ):
            if conflict:
                raise fail(f"{flag} conflicts with --target-type=bess")
        if len(positionals) < 1:
            raise Exit(1, stdout=usage)
        if len(positionals) > 1:
            cfg.warnings.append("WARNING: too many arguments")
        cfg.target = positionals[0]
        cfg.tapname = ""
        check_settings(cfg)
        return cfg

    if len(positionals) < 2:
        raise Exit(1, stdout=_warnings(cfg) + usage)
    if len(positionals) > 2:
        cfg.warnings.append("WARNING: too many arguments")
    target, tapname = positionals[0], positionals[1]
    try:
        if cfg.netns_type == "pid":
            parse_pid(target)
        elif not os.path.exists(target):
            raise ConfigError(f"existing path expected when --netns-type=path: {os.strerror(2)}")
    except ConfigError as err:
        raise fail(err.message) from None
    except OSError as err:  # pragma: no cover - os.path.exists does not raise
        raise fail(f"existing path expected when --netns-type=path: {err.strerror}") from None
    cfg.target = target
    cfg.tapname = tapname.encode()[: IFNAMSIZ - 1].decode(errors="ignore")

    check_settings(cfg)
    return cfg


def check_settings(cfg: Config) -> None:
    """The checks slirp4netns makes after parsing, when it builds its config
    (their errors come without the usage text)."""

    def fail(message: str) -> Exit:
        return Exit(1, stdout=_warnings(cfg), stderr=message + "\n")

    try:
        cfg.plan = parse_cidr(cfg.cidr)
        if cfg.macaddress is not None:
            cfg.mac = parse_mac(cfg.macaddress)
    except ConfigError as err:
        raise fail(err.message) from None
    if cfg.outbound_addr is not None:
        cfg.outbound4 = resolve_outbound(cfg.outbound_addr, 4)
        if cfg.outbound4 is None:
            raise fail("outbound-addr has to be valid ipv4 address or interface name.")
    if cfg.outbound_addr6 is not None:
        cfg.outbound6 = resolve_outbound(cfg.outbound_addr6, 6)
        if cfg.outbound6 is None:
            raise fail("outbound-addr6 has to be valid ipv6 address or interface name.")
    if cfg.mtu < MIN_MTU:
        raise fail(f"MTU {cfg.mtu} is too small: the stack needs at least {MIN_MTU}")
    if cfg.enable_ipv6 and cfg.mtu < MIN_MTU_IPV6:
        raise fail(f"MTU {cfg.mtu} is too small for IPv6 (needs at least {MIN_MTU_IPV6})")
    if cfg.api_socket is not None and len(cfg.api_socket.encode()) >= UNIX_PATH_MAX:
        raise fail(f"the specified API socket path is too long (>= {UNIX_PATH_MAX})")


def _warnings(cfg: Config) -> str:
    return "".join(w + "\n" for w in cfg.warnings)


def _given(options: list[tuple[str, str | None]], key: str) -> bool:
    return any(k == key for k, _ in options)


_DEPRECATED = {
    "no-host-loopback": "WARNING: --no-host-loopback is deprecated and will be removed in future releases, "
    "please use --disable-host-loopback instead.",
    "create-sandbox": "WARNING: --create-sandbox is deprecated and will be removed in future releases, "
    "please use --enable-sandbox instead.",
}


def apply_option(cfg: Config, key: str, value: str | None, prog: str) -> None:
    if key == "c":
        cfg.configure = True
    elif key == "e":
        cfg.exit_fd = parse_fd(value, "exit-fd")
    elif key == "r":
        cfg.ready_fd = parse_fd(value, "ready-fd")
    elif key == "m":
        cfg.mtu = parse_mtu(value)
    elif key == "6":
        if not cfg.enable_ipv6:
            cfg.warnings.append("WARNING: Support for IPv6 is experimental")
        cfg.enable_ipv6 = True
    elif key == "a":
        cfg.api_socket = value
    elif key == "cidr":
        cfg.cidr = value
    elif key in ("disable-host-loopback", "no-host-loopback"):
        if key in _DEPRECATED:
            cfg.warnings.append(_DEPRECATED[key])
        cfg.disable_host_loopback = True
    elif key == "netns-type":
        # slirp4netns: "pid" is pid mode, anything else is path mode.
        cfg.netns_type = "pid" if value == "pid" else "path"
    elif key == "userns-path":
        if not os.path.exists(value):
            raise ConfigError(f"userns path doesn't exist: {value}")
        cfg.userns_path = value
    elif key in ("enable-sandbox", "create-sandbox"):
        if key in _DEPRECATED:
            cfg.warnings.append(_DEPRECATED[key])
        cfg.enable_sandbox = True
    elif key == "enable-seccomp":
        cfg.warnings.append("WARNING: Support for seccomp is experimental")
        cfg.enable_seccomp = True
    elif key == "outbound-addr":
        cfg.outbound_addr = value
    elif key == "outbound-addr6":
        cfg.outbound_addr6 = value
    elif key == "disable-dns":
        cfg.disable_dns = True
    elif key == "macaddress":
        cfg.macaddress = value
    elif key == "target-type":
        if value not in ("netns", "bess"):
            raise ConfigError('--target-type must be either "netns" or "bess"')
        cfg.target_type = value
    elif key == "resolv-conf":
        cfg.resolv_conf = value
    elif key == "h":
        raise Exit(0, stdout=usage_text(prog))
    elif key == "v":
        raise Exit(0, stdout=version_text())


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "slirpnet"
    if argv[:1] == ["run"]:
        from .run import run_main

        return run_main(argv[1:], prog)
    if argv[:1] == ["ctl"]:
        from .ctl import ctl_main

        return ctl_main(argv[1:], prog)
    try:
        cfg = parse_args(argv, prog)
    except Exit as done:
        emit(done)
        return done.status
    from .lifecycle import serve

    return serve(cfg)


def emit(done: Exit) -> None:
    if done.stdout:
        sys.stdout.write(done.stdout)
        sys.stdout.flush()
    if done.stderr:
        sys.stderr.write(done.stderr)
        sys.stderr.flush()
