"""``--configure``: set up lo and the TAP inside the target namespace (pyroute2).

Runs in the short-lived child, after it has joined the namespaces.  Steps and
error texts follow slirp4netns (compat spec §3 step 5): lo up; TAP up; MTU;
MAC (only if asked); N+100/prefix; default route via N+2.  No IPv6 address is
configured: with -6 the kernel autoconfigures one from our router
advertisements.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class ConfigureError(Exception):
    """``what`` is slirp4netns's perror() prefix; ``errno`` the cause."""

    def __init__(self, what: str, errno: int, strerror: str):
        super().__init__(f"{what}: {strerror}")
        self.what = what
        self.errno = errno


@dataclass(frozen=True, slots=True)
class LinkSettings:
    tapname: str
    mtu: int
    mac: bytes | None
    address: bytes
    prefixlen: int
    gateway: bytes


def configure_link(settings: LinkSettings) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    def step(what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NetlinkError as err:
            import os

            raise ConfigureError(what, err.code, os.strerror(err.code)) from None

    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            step("cannot set lo up", ipr.link, "set", index=lo[0], state="up")
        found = ipr.link_lookup(ifname=settings.tapname)
        if not found:
            raise ConfigureError("cannot find the TAP", 19, "No such device")
        index = found[0]
        step("cannot set device up", ipr.link, "set", index=index, state="up")
        step("cannot set MTU", ipr.link, "set", index=index, mtu=settings.mtu)
        if settings.mac is not None:
            mac = ":".join(f"{b:02x}" for b in settings.mac)
            step("cannot set MAC address", ipr.link, "set", index=index, address=mac)
        step(
            "cannot set device address",
            ipr.addr,
            "add",
            index=index,
            address=str(ipaddress.IPv4Address(settings.address)),
            prefixlen=settings.prefixlen,
        )
        step(
            "set route",
            ipr.route,
            "add",
            dst="0.0.0.0/0",
            gateway=str(ipaddress.IPv4Address(settings.gateway)),
            oif=index,
        )
