"""Frames in, frames out: the guest's side of one Stack, with a manual clock.

STYLE.md §11/§12.  The guest builds its frames with scapy and writes them as
its kernel would to a TAP opened with IFF_VNET_HDR: a 10-byte virtio-net
header, then the Ethernet frame —

* ``offload=False``: every checksum complete (scapy computes them), the vnet
  header all zero;
* ``offload=True``: TX checksum offload, as a Linux guest does for TCP and
  UDP: the L4 checksum field holds the folded, non-inverted pseudo-header
  sum, the header says NEEDS_CSUM with csum_start (from the Ethernet header)
  and csum_offset locating the field (``seed=`` overrides the field, e.g.
  with garbage: nothing may verify it); ``gso_size`` makes it a TSO
  super-frame.

What comes out is dissected independently of netstack: the vnet header is
unpacked here, a NEEDS_CSUM checksum is finished the way the guest kernel's
skb_checksum_help does (ones' complement sum from csum_start to the end, the
seed included, folded and inverted into the field), and scapy then checks
every checksum (IPv4 header; TCP/UDP with its pseudo-header; ICMP).  A frame
whose seed is wrong therefore fails here, although a real guest would
accept it on local delivery (shared/notes/tap-offloads.md gotcha 4).

:class:`Guest` sends one frame (or event, or clock step) and returns an
:class:`Exchange`: the dissected frames, the actions and the counter deltas
it caused, with helpers that assert exactly what came back.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

# The scapy layers the tests use are imported from here too (BOOTP, ICMP...).
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.l2 import ARP, Ether
from scapy.utils import checksum

from netstack.addressing import AddressPlan
from netstack.stack import Stack, StackConfig

VNET = struct.Struct("<BBHHHH")
VNET_LEN = 10
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4

GUEST_MAC = "52:54:00:12:34:56"
OTHER_MAC = "52:54:00:ab:cd:ef"
GW_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
GUEST = "10.0.2.100"
GW = "10.0.2.2"
DNS = "10.0.2.3"
REMOTE = "192.0.2.80"
RESOLVER1 = "192.0.2.53"
RESOLVER2 = "198.51.100.53"

NET = ipaddress.IPv4Network("10.0.2.0/24")


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


# -- guest → stack -------------------------------------------------------------


def _pseudo_sum(src: str, dst: str, proto: int, length: int) -> int:
    """Folded, non-inverted ones' complement sum of the IPv4 pseudo-header
    (written here from RFC 9293 §3.1, not taken from netstack)."""
    words = packed(src) + packed(dst) + struct.pack("!BBH", 0, proto, length)
    s = sum(struct.unpack("!6H", words))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def encode(
    pkt, *, offload: bool = False, seed: int | None = None, gso_size: int = 0, flags: int | None = None
) -> bytes:
    """The bytes a guest kernel writes to the TAP for scapy packet ``pkt``."""
    frame = bytearray(bytes(pkt))
    if not offload:
        return VNET.pack(0 if flags is None else flags, 0, 0, 0, 0, 0) + bytes(frame)
    p = Ether(bytes(frame))
    ip = p[IP]
    ihl = ip.ihl * 4
    if TCP in p:
        l4, off = p[TCP], 16
    elif UDP in p:
        l4, off = p[UDP], 6
    else:
        raise ValueError("checksum offload is for TCP and UDP")
    start = 14 + ihl
    l4_len = ip.len - ihl
    value = _pseudo_sum(ip.src, ip.dst, ip.proto, l4_len) if seed is None else seed
    struct.pack_into("!H", frame, start + off, value)
    gso_type, hdr_len = GSO_NONE, 0
    if gso_size:
        gso_type, hdr_len = GSO_TCPV4, start + l4.dataofs * 4
    return VNET.pack(F_NEEDS_CSUM if flags is None else flags, gso_type, hdr_len, gso_size, start, off) + bytes(frame)


# -- stack → guest -------------------------------------------------------------


@dataclass(frozen=True)
class Vnet:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


@dataclass
class Frame:
    """One frame the stack wrote toward the guest, checksums finished and verified."""

    vnet: Vnet
    pkt: Ether
    raw: bytes  # the Ethernet frame, checksum finished

    @property
    def is_fragment(self) -> bool:
        return IP in self.pkt and (self.pkt[IP].flags.MF or self.pkt[IP].frag != 0)

    def __repr__(self) -> str:
        return f"Frame({self.vnet}, {self.pkt.summary()})"


def finish_checksum(frame: bytearray, csum_start: int, csum_offset: int) -> None:
    """What the guest kernel does with NEEDS_CSUM (skb_checksum_help): sum
    from csum_start to the end with the seed in the field, fold, invert."""
    assert csum_start + csum_offset + 2 <= len(frame), (csum_start, csum_offset, len(frame))
    value = checksum(bytes(frame[csum_start:])) or 0xFFFF  # CSUM_MANGLED_0
    struct.pack_into("!H", frame, csum_start + csum_offset, value)


def verify_checksums(pkt: Ether) -> None:
    """scapy checks every checksum it knows of this frame."""
    if IPv6 in pkt:
        ip6 = pkt[IPv6]
        if ip6.nh in (6, 17, 58):
            assert in6_chksum(ip6.nh, ip6, bytes(ip6.payload)) == 0, "checksum over IPv6"
        return
    if IP not in pkt:
        return
    ip = pkt[IP]
    raw_ip = bytes(ip)
    assert checksum(raw_ip[: ip.ihl * 4]) == 0, "IPv4 header checksum"
    if ip.flags.MF or ip.frag:
        return  # the L4 checksum covers the whole datagram: see reassemble()
    l4 = bytes(ip.payload)
    if ip.proto in (6, 17):
        assert ip.proto != 17 or pkt[UDP].chksum != 0, "we always send UDP checksums"
        assert in4_chksum(ip.proto, ip, l4) == 0, f"{'TCP' if ip.proto == 6 else 'UDP'} checksum"
    elif ip.proto == 1:
        assert checksum(l4) == 0, "ICMP checksum"


def decode(buf) -> Frame:
    """Dissect one frame from the stack: vnet header, finished checksum, scapy."""
    buf = bytes(buf)
    assert len(buf) >= VNET_LEN + 14, len(buf)
    vnet = Vnet(*VNET.unpack_from(buf, 0))
    frame = bytearray(buf[VNET_LEN:])
    assert vnet.flags & ~F_NEEDS_CSUM == 0, vnet  # DATA_VALID means nothing on write
    if vnet.flags & F_NEEDS_CSUM:
        finish_checksum(frame, vnet.csum_start, vnet.csum_offset)
    else:
        assert vnet == Vnet(0, 0, 0, 0, 0, 0), vnet  # complete checksums, no GSO
    pkt = Ether(bytes(frame))
    # The TAP trims writes longer than the IP total length and drops shorter ones.
    if IP in pkt:
        assert pkt[IP].len == len(frame) - 14, (pkt[IP].len, len(frame))
    elif IPv6 in pkt:
        assert pkt[IPv6].plen == len(frame) - 14 - 40, (pkt[IPv6].plen, len(frame))
    verify_checksums(pkt)
    if vnet.gso_type != GSO_NONE:
        assert TCP in pkt and vnet.gso_type == (GSO_TCPV4 if IP in pkt else GSO_TCPV6), vnet
        tcp = pkt[TCP]
        assert vnet.gso_size > 0
        l3_len = pkt[IP].ihl * 4 if IP in pkt else 40
        assert vnet.hdr_len == 14 + l3_len + tcp.dataofs * 4, vnet
        assert len(tcp.payload) > vnet.gso_size, "a GSO frame is longer than one segment"
    return Frame(vnet, pkt, bytes(frame))


def reassemble(frames: list[Frame]) -> IP:
    """Put IPv4 fragments from the stack back together (scapy) and check the result."""
    from scapy.layers.inet import defragment

    assert frames and all(f.is_fragment for f in frames), frames
    whole = defragment([f.pkt[IP] for f in frames])
    assert len(whole) == 1, whole
    ip = IP(bytes(whole[0]))
    ip.flags = 0
    del ip.chksum
    ip = IP(bytes(ip))
    l4 = bytes(ip.payload)
    if ip.proto in (6, 17):
        assert in4_chksum(ip.proto, ip, l4) == 0, "checksum of the reassembled datagram"
    elif ip.proto == 1:
        assert checksum(l4) == 0, "ICMP checksum of the reassembled datagram"
    return ip


# -- one exchange ----------------------------------------------------------------


@dataclass
class Exchange:
    """What one input caused: frames for the guest, actions for the edge, counter deltas."""

    frames: list[Frame] = field(default_factory=list)
    actions: list = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    result: object = None  # the return value of the call, if any

    def only_frame(self) -> Frame:
        assert not self.actions, self.actions
        assert len(self.frames) == 1, self.frames
        return self.frames[0]

    def only_frames(self) -> list[Frame]:
        assert not self.actions, self.actions
        assert self.frames, "no frames"
        return self.frames

    def only_actions(self, *types) -> list:
        assert not self.frames, self.frames
        if types:
            assert [type(a) for a in self.actions] == list(types), self.actions
        return self.actions

    def only_action(self, kind=None):
        assert not self.frames, self.frames
        assert len(self.actions) == 1, self.actions
        if kind is not None:
            assert isinstance(self.actions[0], kind), self.actions
        return self.actions[0]

    def dropped(self, counter: str) -> None:
        """Nothing came out and exactly this one counter moved, by one."""
        assert not self.frames, self.frames
        assert not self.actions, self.actions
        assert self.counters == {counter: 1}, self.counters

    def nothing(self) -> None:
        assert not self.frames, self.frames
        assert not self.actions, self.actions


class Guest:
    """One Stack and the guest in front of it; ``now`` is the manual clock."""

    def __init__(self, *, cidr: str = "10.0.2.0/24", mtu: int = 1500, resolvers=(RESOLVER1,), **config):
        self.plan = AddressPlan.from_network(ipaddress.IPv4Network(cidr))
        self.stack = Stack(StackConfig(plan=self.plan, mtu=mtu, **config))
        if resolvers:
            self.stack.set_resolvers([packed(r) for r in resolvers])
        self.now = 0.0
        self.mac = GUEST_MAC
        self.ip = text(self.plan.guest)
        self.gw = text(self.plan.gateway)
        self.dns = text(self.plan.dns)

    # -- building frames
    def eth(self, dst: str | None = None, src: str | None = None) -> Ether:
        return Ether(dst=dst or GW_MAC, src=src or self.mac)

    def ip4(self, dst: str, src: str | None = None, mac: str | None = None, **kw) -> Ether:
        return self.eth(mac) / IP(src=src or self.ip, dst=dst, **kw)

    def udp(self, dst: str, dport: int, payload: bytes = b"", sport: int = 40000, **kw) -> Ether:
        return self.ip4(dst, **kw) / UDP(sport=sport, dport=dport) / payload

    # -- running
    def _collect(self, before: dict, result=None) -> Exchange:
        after = self.stack.counters.snapshot()
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        frames = [decode(f) for f in self.stack.take_frames()]
        return Exchange(frames, self.stack.take_actions(), delta, result)

    def send_raw(self, raw: bytes) -> Exchange:
        before = self.stack.counters.snapshot()
        self.stack.frame_from_guest(memoryview(raw), self.now)
        return self._collect(before)

    def send(self, pkt, **enc) -> Exchange:
        return self.send_raw(encode(pkt, **enc))

    def event(self, event) -> Exchange:
        before = self.stack.counters.snapshot()
        self.stack.handle_event(event, self.now)
        return self._collect(before)

    def call(self, fn, *args) -> Exchange:
        """A public Stack entry point that takes ``now`` last."""
        before = self.stack.counters.snapshot()
        result = fn(*args, self.now)
        return self._collect(before, result)

    def run_until(self, t: float) -> Exchange:
        """Advance the clock to ``t``, polling at every deadline on the way, in
        order, and only then (as the event loop does: its timer is armed at
        next_deadline())."""
        before = self.stack.counters.snapshot()
        while True:
            deadline = self.stack.next_deadline()
            if deadline is None or deadline > t:
                break
            self.now = max(self.now, deadline)
            self.stack.poll(self.now)
        self.now = max(self.now, t)
        return self._collect(before)

    def advance(self, dt: float) -> Exchange:
        return self.run_until(self.now + dt)

    def hello(self) -> None:
        """Let the stack learn the guest's MAC (a gratuitous ARP announcement)."""
        x = self.send(
            Ether(dst=BROADCAST_MAC, src=self.mac)
            / ARP(op=2, hwsrc=self.mac, psrc=self.ip, hwdst=BROADCAST_MAC, pdst=self.ip)
        )
        x.nothing()


def icmp_quote(frame: Frame) -> bytes:
    """The datagram an ICMP error quotes, as raw bytes (scapy reads a quote
    longer than 128 bytes as RFC 4884 extensions)."""
    ip = frame.pkt[IP]
    return frame.raw[14 + ip.ihl * 4 + 8 :]


def dhcp_options(pkt) -> dict:
    """DHCP options of a scapy packet as a dict (name → value)."""
    out = {}
    for opt in pkt[DHCP].options:
        if isinstance(opt, tuple):
            out[opt[0]] = opt[1] if len(opt) == 2 else opt[1:]
    return out

