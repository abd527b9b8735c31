"""DHCPv6 client/server messages for stateless service (RFC 8415 §8, §21; RFC 3646).

slirpnet answers an Information-request (RFC 8415 §18.2.6) with a Reply
carrying the DNS servers (option 23, RFC 3646 §3), so this module models the
client/server message format (msg-type, 24-bit transaction-id, options) and
the options of that exchange: Client Identifier (1), Server Identifier (2),
Option Request (6), Elapsed Time (8), DNS Recursive Name Server (23) and
Information Refresh Time (32, RFC 8415 §21.23).  Other options (IA_NA,
status codes, ...) are skipped by :meth:`Dhcpv6Message.parse`; the view's
:meth:`Dhcpv6View.has_option` lets a server apply RFC 8415 §16.12 (discard
an Information-request that carries an IA option).

Invariant of :class:`Dhcpv6View`: at least the 4-byte header, a
client/server message type (relay messages, 12 and 13, have another format
and are not supported), and every option TLV fits in the buffer.

Values check the length of each option they read: a DUID is 2 to 130 bytes
(RFC 8415 §11.1), the option request list and elapsed time are made of
16-bit fields, DNS servers are 16-byte addresses.  The first Client/Server
Identifier counts.

Drops (counter names): ``dhcpv6.truncated``, ``dhcpv6.relay_unsupported``,
``dhcpv6.bad_message_type`` (0, or above 13), ``dhcpv6.bad_option`` (a TLV
running past the buffer), ``dhcpv6.bad_option_length``.

Not done here: stateful address assignment, prefix delegation, relays,
authentication, Domain Search List (24) encoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed

HEADER_LEN = 4

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS_AND_RELAYS = b"\xff\x02" + bytes(11) + b"\x01\x00\x02"  # ff02::1:2

SOLICIT = 1
ADVERTISE = 2
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
DECLINE = 9
RECONFIGURE = 10
INFORMATION_REQUEST = 11
RELAY_FORW = 12
RELAY_REPL = 13

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_ORO = 6
OPT_ELAPSED_TIME = 8
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24
OPT_IA_PD = 25
OPT_INFORMATION_REFRESH_TIME = 32

MIN_DUID_LEN = 2
MAX_DUID_LEN = 130

_OPT = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def duid_ll(mac: bytes) -> bytes:
    """DUID-LL for an Ethernet address (RFC 8415 §11.4): type 3, hardware type 1, the MAC."""
    return b"\x00\x03\x00\x01" + mac


class Dhcpv6View:
    __slots__ = ("buf",)

    def __init__(self, buf: memoryview):
        self.buf = buf

    @classmethod
    def check(cls, buf: memoryview) -> Dhcpv6View:
        """``buf`` is the UDP payload."""
        n = len(buf)
        if n < HEADER_LEN:
            raise Malformed("dhcpv6.truncated")
        t = buf[0]
        if t == RELAY_FORW or t == RELAY_REPL:
            raise Malformed("dhcpv6.relay_unsupported")
        if not SOLICIT <= t <= INFORMATION_REQUEST:
            raise Malformed("dhcpv6.bad_message_type")
        i = HEADER_LEN
        while i < n:
            if i + 4 > n:
                raise Malformed("dhcpv6.bad_option")
            i += 4 + ((buf[i + 2] << 8) | buf[i + 3])
            if i > n:
                raise Malformed("dhcpv6.bad_option")
        return cls(buf)

    @property
    def msg_type(self) -> int:
        return self.buf[0]

    @property
    def transaction_id(self) -> int:
        return (self.buf[1] << 16) | (self.buf[2] << 8) | self.buf[3]

    def options(self):
        """Yield (code, value) for each top-level option; never fails."""
        b = self.buf
        i, n = HEADER_LEN, len(b)
        while i < n:
            code, length = _OPT.unpack_from(b, i)
            yield code, b[i + 4 : i + 4 + length]
            i += 4 + length

    def has_option(self, code: int) -> bool:
        return any(c == code for c, _ in self.options())


def _duid(value: memoryview) -> bytes:
    if not MIN_DUID_LEN <= len(value) <= MAX_DUID_LEN:
        raise Malformed("dhcpv6.bad_option_length")
    return bytes(value)


@dataclass(frozen=True, slots=True)
class Dhcpv6Message:
    msg_type: int
    transaction_id: int  # 24 bits
    client_id: bytes | None = None  # DUID
    server_id: bytes | None = None  # DUID
    requested_options: tuple[int, ...] = ()  # Option Request option
    elapsed_time: int | None = None  # hundredths of a second
    dns_servers: tuple[bytes, ...] = ()
    information_refresh_time: int | None = None  # seconds

    @classmethod
    def parse(cls, view: Dhcpv6View) -> Dhcpv6Message:
        client_id = server_id = elapsed = refresh = None
        oro: tuple[int, ...] = ()
        dns: tuple[bytes, ...] = ()
        for code, value in view.options():
            n = len(value)
            if code == OPT_CLIENTID:
                if client_id is None:
                    client_id = _duid(value)
            elif code == OPT_SERVERID:
                if server_id is None:
                    server_id = _duid(value)
            elif code == OPT_ORO:
                if n & 1:
                    raise Malformed("dhcpv6.bad_option_length")
                oro += tuple(_U16.unpack_from(value, j)[0] for j in range(0, n, 2))
            elif code == OPT_ELAPSED_TIME:
                if n != 2:
                    raise Malformed("dhcpv6.bad_option_length")
                elapsed = _U16.unpack_from(value, 0)[0]
            elif code == OPT_DNS_SERVERS:
                if n % 16:
                    raise Malformed("dhcpv6.bad_option_length")
                dns += tuple(bytes(value[j : j + 16]) for j in range(0, n, 16))
            elif code == OPT_INFORMATION_REFRESH_TIME:
                if n != 4:
                    raise Malformed("dhcpv6.bad_option_length")
                refresh = _U32.unpack_from(value, 0)[0]
        return cls(view.buf[0], view.transaction_id, client_id, server_id, oro, elapsed, dns, refresh)

    def reply(self, server_id: bytes, dns_servers: tuple[bytes, ...], information_refresh_time: int | None = None) -> Dhcpv6Message:
        """The Reply to this message: same transaction id, the client's DUID echoed (RFC 8415 §18.3.6)."""
        return Dhcpv6Message(
            REPLY,
            self.transaction_id,
            client_id=self.client_id,
            server_id=server_id,
            dns_servers=dns_servers,
            information_refresh_time=information_refresh_time,
        )

    def _options(self) -> list[tuple[int, bytes]]:
        out = []
        if self.client_id is not None:
            out.append((OPT_CLIENTID, self.client_id))
        if self.server_id is not None:
            out.append((OPT_SERVERID, self.server_id))
        if self.elapsed_time is not None:
            out.append((OPT_ELAPSED_TIME, _U16.pack(self.elapsed_time)))
        if self.requested_options:
            out.append((OPT_ORO, b"".join(_U16.pack(c) for c in self.requested_options)))
        if self.dns_servers:
            out.append((OPT_DNS_SERVERS, b"".join(self.dns_servers)))
        if self.information_refresh_time is not None:
            out.append((OPT_INFORMATION_REFRESH_TIME, _U32.pack(self.information_refresh_time)))
        return out

    @property
    def buffer_len(self) -> int:
        return HEADER_LEN + sum(4 + len(v) for _, v in self._options())

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        tid = self.transaction_id
        buf[offset : offset + 4] = bytes((self.msg_type, (tid >> 16) & 0xFF, (tid >> 8) & 0xFF, tid & 0xFF))
        i = offset + HEADER_LEN
        for code, value in self._options():
            if len(value) > 0xFFFF:
                raise ValueError("DHCPv6 option too long")
            _OPT.pack_into(buf, i, code, len(value))
            buf[i + 4 : i + 4 + len(value)] = value
            i += 4 + len(value)
