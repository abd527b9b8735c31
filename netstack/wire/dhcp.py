"""DHCPv4 messages (RFC 2131 §2 format, RFC 2132 options) over Ethernet.

Models the BOOTP fixed part (op, xid, secs, flags, ciaddr, yiaddr, siaddr,
giaddr, chaddr; sname and file are read as bytes and emitted as zeros), the
magic cookie 99.130.83.99 (RFC 2131 §3) and the options a small server and
its clients use: message type (53), server identifier (54), requested IP
(50), lease time (51), subnet mask (1), router (3), DNS servers (6),
parameter request list (55), client identifier (61), and pad (0) / end (255).

Invariant of :class:`DhcpView`: at least 240 bytes (fixed part and cookie),
op is BOOTREQUEST or BOOTREPLY, hardware type Ethernet with a 6-byte
address, the cookie is right, and every option TLV in the options field
fits in the buffer (a missing End option is tolerated at the end of the
buffer).  Options are only read from the options field: option overload
(52, RFC 2132 §9.3) is not followed (sname/file are never parsed for
options), which is allowed and cannot crash.

:meth:`DhcpMessage.parse` concatenates repeated options (RFC 3396),
requires a message type (plain BOOTP is not served) and checks the length
of every option it values.  Unknown options are skipped.  ``emit`` writes
the message type first, splits long options per RFC 3396 (in pieces of
252 bytes, whole addresses each) and pads the
message to the 300-byte BOOTP minimum (RFC 1542 §2.1: relays and old
clients expect it).

Drops (counter names): ``dhcp.truncated``, ``dhcp.bad_op``,
``dhcp.bad_hardware``, ``dhcp.bad_cookie``, ``dhcp.bad_option`` (a TLV
running past the buffer), ``dhcp.missing_message_type``,
``dhcp.bad_message_type``, ``dhcp.bad_option_length``.

Not done here: relay agent options (82), FQDN, classless static routes,
lease logic (the stack's DHCP server decides what to offer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import Malformed

FIXED_LEN = 236
OPTIONS_OFFSET = 240
MIN_MESSAGE_LEN = 300  # BOOTP vendor area of 64 bytes (RFC 951)
MAGIC_COOKIE = b"\x63\x82\x53\x63"

SERVER_PORT = 67
CLIENT_PORT = 68

BOOTREQUEST = 1
BOOTREPLY = 2

FLAG_BROADCAST = 0x8000

# Message types (RFC 2132 §9.6).
DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_REQUEST_LIST = 55
OPT_CLIENT_ID = 61
OPT_END = 255

ZERO_IP = bytes(4)

# Long options are cut into pieces of this size: at most 255 (RFC 3396), and a
# multiple of 4 so that naive receivers that do not concatenate still see
# whole addresses in each piece of an address list.
_SPLIT_LEN = 252

_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s")
_U32 = struct.Struct("!I")


class DhcpView:
    __slots__ = ("buf", "options_end")

    def __init__(self, buf: memoryview, options_end: int):
        self.buf = buf
        self.options_end = options_end

    @classmethod
    def check(cls, buf: memoryview) -> DhcpView:
        """``buf`` is the UDP payload."""
        n = len(buf)
        if n < OPTIONS_OFFSET:
            raise Malformed("dhcp.truncated")
        if buf[0] != BOOTREQUEST and buf[0] != BOOTREPLY:
            raise Malformed("dhcp.bad_op")
        if buf[1] != 1 or buf[2] != 6:
            raise Malformed("dhcp.bad_hardware")
        if buf[236:240] != MAGIC_COOKIE:
            raise Malformed("dhcp.bad_cookie")
        i = OPTIONS_OFFSET
        while i < n:
            code = buf[i]
            if code == OPT_END:
                break
            if code == OPT_PAD:
                i += 1
                continue
            if i + 2 > n or i + 2 + buf[i + 1] > n:
                raise Malformed("dhcp.bad_option")
            i += 2 + buf[i + 1]
        return cls(buf, min(i, n))

    @property
    def op(self) -> int:
        return self.buf[0]

    @property
    def hops(self) -> int:
        return self.buf[3]

    @property
    def xid(self) -> int:
        return _U32.unpack_from(self.buf, 4)[0]

    @property
    def secs(self) -> int:
        return (self.buf[8] << 8) | self.buf[9]

    @property
    def flags(self) -> int:
        return (self.buf[10] << 8) | self.buf[11]

    @property
    def ciaddr(self) -> bytes:
        return bytes(self.buf[12:16])

    @property
    def yiaddr(self) -> bytes:
        return bytes(self.buf[16:20])

    @property
    def siaddr(self) -> bytes:
        return bytes(self.buf[20:24])

    @property
    def giaddr(self) -> bytes:
        return bytes(self.buf[24:28])

    @property
    def chaddr(self) -> bytes:
        """The client's Ethernet address (first 6 of the 16 chaddr bytes)."""
        return bytes(self.buf[28:34])

    def options(self):
        """Yield (code, value) for each option of the options field, pad and end excluded; never fails."""
        b = self.buf
        i, end = OPTIONS_OFFSET, self.options_end
        while i < end:
            code = b[i]
            if code == OPT_PAD:
                i += 1
                continue
            nxt = i + 2 + b[i + 1]
            yield code, b[i + 2 : nxt]
            i = nxt


def _addr(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if len(value) != 4:
        raise Malformed("dhcp.bad_option_length")
    return value


def _addr_list(value: bytes | None) -> tuple[bytes, ...]:
    if value is None:
        return ()
    if not value or len(value) % 4:
        raise Malformed("dhcp.bad_option_length")
    return tuple(value[j : j + 4] for j in range(0, len(value), 4))


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    op: int
    xid: int
    chaddr: bytes  # 6-byte MAC
    message_type: int
    secs: int = 0
    broadcast: bool = False
    hops: int = 0
    ciaddr: bytes = ZERO_IP
    yiaddr: bytes = ZERO_IP
    siaddr: bytes = ZERO_IP
    giaddr: bytes = ZERO_IP
    server_id: bytes | None = None
    requested_ip: bytes | None = None
    lease_time: int | None = None  # seconds
    subnet_mask: bytes | None = None
    routers: tuple[bytes, ...] = ()
    dns_servers: tuple[bytes, ...] = ()
    parameter_request_list: bytes = b""  # option codes, in the client's order
    client_id: bytes | None = None  # type byte + identifier (RFC 2132 §9.14)

    @classmethod
    def parse(cls, view: DhcpView) -> DhcpMessage:
        opts: dict[int, bytes] = {}
        for code, value in view.options():
            opts[code] = opts[code] + bytes(value) if code in opts else bytes(value)  # RFC 3396 concatenation
        mtype = opts.get(OPT_MESSAGE_TYPE)
        if mtype is None:
            raise Malformed("dhcp.missing_message_type")
        if len(mtype) != 1 or not DISCOVER <= mtype[0] <= INFORM:
            raise Malformed("dhcp.bad_message_type")
        lease = opts.get(OPT_LEASE_TIME)
        if lease is not None:
            if len(lease) != 4:
                raise Malformed("dhcp.bad_option_length")
            lease = _U32.unpack(lease)[0]
        client_id = opts.get(OPT_CLIENT_ID)
        if client_id is not None and len(client_id) < 2:
            raise Malformed("dhcp.bad_option_length")
        prl = opts.get(OPT_PARAMETER_REQUEST_LIST, b"")
        op, _, _, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr = _FIXED.unpack_from(view.buf, 0)
        return cls(
            op=op,
            xid=xid,
            chaddr=chaddr[:6],
            message_type=mtype[0],
            secs=secs,
            broadcast=bool(flags & FLAG_BROADCAST),
            hops=hops,
            ciaddr=ciaddr,
            yiaddr=yiaddr,
            siaddr=siaddr,
            giaddr=giaddr,
            server_id=_addr(opts.get(OPT_SERVER_ID)),
            requested_ip=_addr(opts.get(OPT_REQUESTED_IP)),
            lease_time=lease,
            subnet_mask=_addr(opts.get(OPT_SUBNET_MASK)),
            routers=_addr_list(opts.get(OPT_ROUTER)),
            dns_servers=_addr_list(opts.get(OPT_DNS)),
            parameter_request_list=prl,
            client_id=client_id,
        )

    def _options(self) -> list[tuple[int, bytes]]:
        out = [(OPT_MESSAGE_TYPE, bytes((self.message_type,)))]
        if self.server_id is not None:
            out.append((OPT_SERVER_ID, self.server_id))
        if self.lease_time is not None:
            out.append((OPT_LEASE_TIME, _U32.pack(self.lease_time)))
        if self.subnet_mask is not None:
            out.append((OPT_SUBNET_MASK, self.subnet_mask))
        if self.routers:
            out.append((OPT_ROUTER, b"".join(self.routers)))
        if self.dns_servers:
            out.append((OPT_DNS, b"".join(self.dns_servers)))
        if self.requested_ip is not None:
            out.append((OPT_REQUESTED_IP, self.requested_ip))
        if self.client_id is not None:
            out.append((OPT_CLIENT_ID, self.client_id))
        if self.parameter_request_list:
            out.append((OPT_PARAMETER_REQUEST_LIST, self.parameter_request_list))
        return out

    @property
    def buffer_len(self) -> int:
        n = OPTIONS_OFFSET + 1  # + End
        for _, value in self._options():
            pieces = max(1, -(-len(value) // _SPLIT_LEN))
            n += 2 * pieces + len(value)
        return max(n, MIN_MESSAGE_LEN)

    def emit(self, buf: bytearray, offset: int = 0) -> None:
        """Write the message at ``offset`` (``buffer_len`` bytes, zero padded)."""
        end = offset + self.buffer_len
        buf[offset:end] = bytes(end - offset)
        _FIXED.pack_into(
            buf,
            offset,
            self.op,
            1,
            6,
            self.hops,
            self.xid,
            self.secs,
            FLAG_BROADCAST if self.broadcast else 0,
            self.ciaddr,
            self.yiaddr,
            self.siaddr,
            self.giaddr,
            self.chaddr,
        )
        buf[offset + 236 : offset + 240] = MAGIC_COOKIE
        i = offset + OPTIONS_OFFSET
        for code, value in self._options():
            for j in range(0, max(1, len(value)), _SPLIT_LEN):  # RFC 3396 split
                piece = value[j : j + _SPLIT_LEN]
                buf[i] = code
                buf[i + 1] = len(piece)
                buf[i + 2 : i + 2 + len(piece)] = piece
                i += 2 + len(piece)
        buf[i] = OPT_END
