"""Validated settings built from the command line (pure: no I/O).

Each check raises :class:`ConfigError` with slirp4netns's exact message
(compat spec §1–§2); ``usage`` says whether the usage text follows it, as it
does for errors found by slirp4netns's option parser but not for those found
later when it builds its configuration (CIDR, MAC address, outbound address).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from netstack.addressing import DEFAULT_CIDR, AddressPlan

DEFAULT_MTU = 1500
MAX_MTU = 65521
MIN_MTU = 68  # RFC 791: every internet module must forward a 68-octet datagram
MIN_MTU_IPV6 = 1280  # RFC 8200 §5
IFNAMSIZ = 16
UNIX_PATH_MAX = 108


class ConfigError(Exception):
    def __init__(self, message: str, usage: bool = True):
        super().__init__(message)
        self.message = message
        self.usage = usage


@dataclass(slots=True)
class Config:
    # target
    target: str = ""  # PID (pid mode) or path (path mode) or BESS socket path
    tapname: str = "tap0"
    netns_type: str = "pid"  # pid | path
    userns_path: str | None = None
    target_type: str = "netns"  # netns | bess
    # stack
    configure: bool = False
    mtu: int = DEFAULT_MTU
    cidr: str = DEFAULT_CIDR
    enable_ipv6: bool = False
    disable_host_loopback: bool = False
    disable_dns: bool = False
    macaddress: str | None = None
    outbound_addr: str | None = None
    outbound_addr6: str | None = None
    # process
    exit_fd: int | None = None
    ready_fd: int | None = None
    api_socket: str | None = None
    enable_sandbox: bool = False
    enable_seccomp: bool = False
    # slirpnet extensions
    resolv_conf: str = "/etc/resolv.conf"
    publish: list[str] = field(default_factory=list)  # `run -p` specs
    quiet: bool = False  # `run`: no banner or fd chatter
    warnings: list[str] = field(default_factory=list)
    # derived by the post-parse checks
    plan: AddressPlan | None = None
    mac: bytes | None = None
    outbound4: bytes | None = None
    outbound6: bytes | None = None

    @property
    def pid(self) -> int:
        return int(self.target)


def parse_fd(text: str, what: str) -> int:
    value = _strtol(text)
    if value is None or value < 0:
        raise ConfigError(f"{what} must be a non-negative integer")
    return value


def parse_mtu(text: str) -> int:
    value = _strtol(text)
    if value is None or value <= 0 or value > MAX_MTU:
        raise ConfigError(f"MTU must be a positive integer (< {MAX_MTU + 1})")
    return value


def parse_pid(text: str) -> int:
    value = _strtol(text)
    if value is None or value <= 0:
        raise ConfigError("PID must be a positive integer")
    return value


_CIDR_RE = re.compile(r"^(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})/(\d{1,2})$")


def parse_cidr(text: str) -> AddressPlan:
    """The four checks of compat spec §2, in slirp4netns's order."""
    m = _CIDR_RE.match(text)
    if not m:
        raise ConfigError(f"invalid CIDR: {text}", usage=False)
    addr_text, prefix_text = m.groups()
    try:
        addr = ipaddress.IPv4Address(addr_text)
    except ValueError:
        raise ConfigError(f"invalid network address: {addr_text}", usage=False) from None
    prefix = int(prefix_text)
    if not 1 <= prefix <= 25:
        raise ConfigError("prefix length needs to be 1-25", usage=False)
    try:
        network = ipaddress.IPv4Network(f"{addr}/{prefix}", strict=True)
    except ValueError:
        raise ConfigError(
            f"CIDR needs to be a network address like {ipaddress.IPv4Network(f'{addr}/{prefix}', strict=False)}"
            f", not like {text}",
            usage=False,
        ) from None
    return AddressPlan.from_network(network)


_MAC_RE = re.compile(r"^[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}$")


def parse_mac(text: str) -> bytes:
    if not _MAC_RE.match(text):
        raise ConfigError(
            f'"{text}" is an invalid MAC address.\n'
            "macaddress has to be a valid MAC address (hex string, 6 bytes, each byte separated by a ':').",
            usage=False,
        )
    mac = bytes(int(part, 16) for part in text.split(":"))
    if mac[0] & 1:
        raise ConfigError(f'"{text}" is a multicast MAC address: the TAP needs a unicast one.', usage=False)
    return mac


def parse_ip_literal(text: str, version: int) -> bytes | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return addr.packed if addr.version == version else None


def _strtol(text: str) -> int | None:
    """C's strtol(base 10) with the "whole string consumed" check slirp4netns does."""
    if not re.fullmatch(r"\s*[+-]?\d+", text):
        return None
    value = int(text)
    if not -(2**63) <= value < 2**63:
        return None
    return value
