"""The DHCP server through the stack (compat spec §4.1, RFC 2131): pool
N+15..N+30, the options slirp4netns gives, leases by client id or MAC."""

import pytest
from scapy.utils import mac2str

from netstack.dhcp import LEASE_TIME_S

from .harness import (
    BOOTP,
    BROADCAST_MAC,
    DHCP,
    GW,
    GW_MAC,
    IP,
    UDP,
    Ether,
    Guest,
    dhcp_options,
    encode,
)

TYPES = {"offer": 2, "ack": 5, "nak": 6}


def mac_of(i: int) -> str:
    return f"52:54:00:00:01:{i:02x}"


def dhcp(
    kind, mac="52:54:00:00:01:00", xid=0x1234, ciaddr="0.0.0.0", src="0.0.0.0", dst="255.255.255.255", op=1, **opts
):
    options = [("message-type", kind)] + list(opts.items()) + ["end"]
    return (
        Ether(src=mac, dst=BROADCAST_MAC if dst == "255.255.255.255" else GW_MAC)
        / IP(src=src, dst=dst)
        / UDP(sport=68, dport=67)
        / BOOTP(op=op, chaddr=mac2str(mac), xid=xid, ciaddr=ciaddr)
        / DHCP(options=options)
    )


def reply_of(x, kind, mac="52:54:00:00:01:00", xid=0x1234):
    f = x.only_frame()
    assert (f.pkt.src, f.pkt.dst) == (GW_MAC, mac)
    assert (f.pkt[IP].src, f.pkt[IP].dst, f.pkt[UDP].sport, f.pkt[UDP].dport) == (GW, "255.255.255.255", 67, 68)
    assert f.vnet.flags == 1  # UDP checksum offloaded, finished and checked by the harness
    assert len(f.pkt[UDP].payload) >= 300  # RFC 1542 §2.1 minimum BOOTP size
    bootp = f.pkt[BOOTP]
    assert (bootp.op, bootp.xid, bootp.chaddr[:6]) == (2, xid, mac2str(mac))
    opts = dhcp_options(f.pkt)
    assert opts["message-type"] == TYPES[kind] and opts["server_id"] == GW
    return bootp, opts


def lease(g, mac="52:54:00:00:01:00", **ids):
    """A whole DISCOVER/OFFER/REQUEST/ACK exchange; returns the address."""
    offer, _ = reply_of(g.send(dhcp("discover", mac, **ids)), "offer", mac)
    ack, _ = reply_of(
        g.send(dhcp("request", mac, server_id=GW, requested_addr=offer.yiaddr, **ids)), "ack", mac
    )
    assert ack.yiaddr == offer.yiaddr
    return ack.yiaddr


@pytest.mark.parametrize("options", [{}, {"disable_dns": True}, {"disable_host_loopback": True}])
def test_offer_carries_the_slirp4netns_options(options):
    g = Guest(**options)
    offer, opts = reply_of(g.send(dhcp("discover")), "offer")
    assert (offer.yiaddr, offer.siaddr, offer.ciaddr) == ("10.0.2.15", GW, "0.0.0.0")
    assert opts["lease_time"] == LEASE_TIME_S == 86400
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == GW
    assert opts["name_server"] == "10.0.2.3"  # also with --disable-dns, as slirp4netns


def test_full_exchange_and_the_next_client():
    g = Guest()
    assert lease(g, mac_of(1)) == "10.0.2.15"
    assert lease(g, mac_of(2)) == "10.0.2.16"
    assert lease(g, mac_of(1)) == "10.0.2.15"  # the same client keeps its lease


def test_pool_follows_the_cidr():
    g = Guest(cidr="10.0.135.128/25")
    f = g.send(dhcp("discover")).only_frame()
    opts = dhcp_options(f.pkt)
    assert (f.pkt.src, f.pkt[IP].src, opts["server_id"]) == ("52:55:0a:00:87:82", "10.0.135.130", "10.0.135.130")
    assert f.pkt[BOOTP].yiaddr == "10.0.135.143"
    assert (opts["router"], opts["name_server"]) == ("10.0.135.130", "10.0.135.131")
    assert opts["subnet_mask"] == "255.255.255.128"


def test_sixteen_leases_then_silence_until_one_is_released():
    g = Guest()
    got = [lease(g, mac_of(i)) for i in range(16)]
    assert got == [f"10.0.2.{n}" for n in range(15, 31)]
    g.send(dhcp("discover", mac_of(16))).dropped("dhcp.pool_exhausted")
    g.send(dhcp("release", mac_of(3), ciaddr="10.0.2.18", src="10.0.2.18", dst=GW)).nothing()
    assert lease(g, mac_of(16)) == "10.0.2.18"


def test_release_of_an_address_that_is_not_the_clients_changes_nothing():
    g = Guest()
    lease(g, mac_of(1))
    g.send(dhcp("release", mac_of(2), ciaddr="10.0.2.15", src="10.0.2.15", dst=GW)).nothing()
    assert lease(g, mac_of(2)) == "10.0.2.16"


def test_leases_follow_the_client_identifier_over_the_mac():
    g = Guest()
    a = lease(g, mac_of(1), client_id=b"\x00host-a")
    b = lease(g, mac_of(1), client_id=b"\x00host-b")  # same MAC, another client
    assert (a, b) == ("10.0.2.15", "10.0.2.16")
    assert lease(g, mac_of(9), client_id=b"\x00host-a") == a  # same client, new MAC


@pytest.mark.parametrize(
    "wanted, got", [("10.0.2.20", "10.0.2.20"), ("10.0.2.100", "10.0.2.15"), ("10.0.2.31", "10.0.2.15")]
)
def test_discover_may_ask_for_an_address_of_the_pool(wanted, got):
    g = Guest()
    offer, _ = reply_of(g.send(dhcp("discover", requested_addr=wanted)), "offer")
    assert offer.yiaddr == got


def test_an_address_leased_to_another_is_not_offered_and_not_acked():
    g = Guest()
    lease(g, mac_of(1))
    offer, _ = reply_of(g.send(dhcp("discover", mac_of(2), requested_addr="10.0.2.15")), "offer", mac_of(2))
    assert offer.yiaddr == "10.0.2.16"
    nak, opts = reply_of(g.send(dhcp("request", mac_of(2), requested_addr="10.0.2.15")), "nak", mac_of(2))
    assert nak.yiaddr == "0.0.0.0" and "lease_time" not in opts and "router" not in opts


def test_init_reboot_outside_the_pool_is_refused():
    g = Guest()
    reply_of(g.send(dhcp("request", requested_addr="10.0.2.100")), "nak")
    reply_of(g.send(dhcp("request")), "nak")  # nothing asked for at all


def test_request_naming_another_server_is_not_answered():
    g = Guest()
    g.send(dhcp("request", server_id="10.0.2.99", requested_addr="10.0.2.15")).dropped("dhcp.other_server")


def test_renewal_by_ciaddr():
    g = Guest()
    addr = lease(g)
    ack, opts = reply_of(g.send(dhcp("request", ciaddr=addr, src=addr, dst=GW)), "ack")
    assert ack.yiaddr == addr and opts["lease_time"] == 86400


def test_decline_takes_the_address_out_of_the_pool():
    g = Guest()
    addr = lease(g, mac_of(1))
    g.send(dhcp("decline", mac_of(1), requested_addr=addr, server_id=GW)).nothing()
    assert lease(g, mac_of(1)) == "10.0.2.16"
    assert lease(g, mac_of(2)) == "10.0.2.17"  # 10.0.2.15 stays out


def test_inform_gets_options_without_an_address():
    g = Guest()
    ack, opts = reply_of(g.send(dhcp("inform", ciaddr="10.0.2.100", src="10.0.2.100", dst=GW)), "ack")
    assert (ack.yiaddr, ack.ciaddr) == ("0.0.0.0", "10.0.2.100")
    assert "lease_time" not in opts
    assert (opts["router"], opts["name_server"], opts["subnet_mask"]) == (GW, "10.0.2.3", "255.255.255.0")


@pytest.mark.parametrize("kind", ["offer", "ack", "nak"])
def test_server_messages_from_the_guest_are_ignored(kind):
    Guest().send(dhcp(kind)).dropped("dhcp.ignored")


def test_a_bootreply_from_the_guest_is_not_a_request():
    Guest().send(dhcp("discover", op=2)).dropped("dhcp.not_request")


def test_a_group_chaddr_gets_no_reply():
    g = Guest()
    pkt = dhcp("discover")
    pkt[BOOTP].chaddr = mac2str(BROADCAST_MAC)
    g.send(pkt).dropped("dhcp.bad_chaddr")


BOOTP_AT = 10 + 14 + 20 + 8  # the UDP payload in a raw frame


def _raw_dhcp(payload: bytes) -> bytes:
    return encode(
        Ether(src="52:54:00:00:01:00", dst=BROADCAST_MAC)
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / payload
    )


def _discover_payload() -> bytearray:
    return bytearray(bytes(dhcp("discover")[BOOTP]))


@pytest.mark.parametrize(
    "payload, counter",
    [
        (bytes(_discover_payload()[:239]), "dhcp.truncated"),
        (bytes([3]) + bytes(_discover_payload()[1:]), "dhcp.bad_op"),
        (bytes([1, 6]) + bytes(_discover_payload()[2:]), "dhcp.bad_hardware"),
        (bytes(_discover_payload()[:236]) + b"\x63\x82\x53\x64" + bytes(_discover_payload()[240:]), "dhcp.bad_cookie"),
        (bytes(_discover_payload()[:240]) + b"\x35\x01\x01\x0c\x20abc", "dhcp.bad_option"),
        (bytes(_discover_payload()[:240]) + b"\x35\x01\x09\xff", "dhcp.bad_message_type"),
        (bytes(_discover_payload()[:240]) + b"\x35\x01\x01\x36\x03\x0a\x00\x02\xff", "dhcp.bad_option_length"),
    ],
)
def test_malformed_messages(payload, counter):
    Guest().send_raw(_raw_dhcp(payload)).dropped(counter)


def test_no_message_type_is_plain_bootp_and_not_served():
    g = Guest()
    pkt = dhcp("discover")
    pkt[DHCP].options = ["end"]
    g.send(pkt).dropped("dhcp.missing_message_type")


def test_reply_reaches_a_guest_whose_mac_is_unknown_without_arp():
    # The client has no address yet: no ARP, straight to chaddr.
    g = Guest()
    x = g.send(dhcp("discover"))
    assert len(x.frames) == 1 and x.frames[0].pkt.haslayer(BOOTP)


def test_only_the_gateway_and_broadcast_port_67_are_ours():
    # As libslirp's udp_input: DHCP to another server (a relay, a test
    # server on the host's network) is ordinary NAT, not answered by us.
    from netstack.actions import OpenUdp, SendUdp

    g = Guest()
    pkt = dhcp("discover", src="10.0.2.100", dst="192.0.2.67")
    sent = g.send(pkt).only_actions(OpenUdp, SendUdp)[1]
    assert (sent.addr, sent.port, sent.data) == (bytes([192, 0, 2, 67]), 67, bytes(pkt[BOOTP]))
    reply_of(g.send(dhcp("discover", src="10.0.2.100", dst=GW)), "offer")
