"""The DNS forwarder at N+3 through the stack (compat spec §4.2, §4.3): relay
to the host's resolvers in order, failover on time-out and on ICMP, answers
from N+3:53, TCP's choice of resolver, bounds, resolv.conf changes."""

import errno
import struct

from netstack import events as ev
from netstack.actions import CloseUdp, OpenTcp, OpenUdp, SendUdp
from netstack.dns import DNS_IDLE_TIMEOUT_S, DNS_TRY_TIMEOUT_S, MAX_PENDING, RESOLVER_PENALTY_S

from .harness import (
    DNS,
    DNS_MAC,
    GUEST,
    GUEST_MAC,
    ICMP,
    IP,
    RESOLVER1,
    RESOLVER2,
    TCP,
    UDP,
    Guest,
    encode,
    packed,
)

R1, R2 = packed(RESOLVER1), packed(RESOLVER2)


def query(ident=0x1234, name=b"example"):
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + bytes([len(name)]) + name + b"\0\0\1\0\1"


def ask(g, q, sport=5000, **enc):
    return g.send(g.udp(DNS, 53, q, sport=sport, mac=DNS_MAC), **enc)


def first_query(g, q, sport=5000):
    opened, sent = ask(g, q, sport).only_actions(OpenUdp, SendUdp)
    assert opened == OpenUdp(sent.flow, sent.addr)  # a socket of the resolver's family
    assert (sent.port, sent.data) == (53, q)
    return sent


def test_query_is_relayed_and_the_answer_comes_from_the_dns_address():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    q = query()
    sent = first_query(g, q)
    assert sent.addr == R1
    answer = q[:2] + b"\x81\x80" + q[4:] + b"answer"
    f = g.event(ev.UdpReceived(sent.flow, R1, 53, answer)).only_frame()
    assert (f.pkt.src, f.pkt.dst) == (DNS_MAC, GUEST_MAC)
    assert (f.pkt[IP].src, f.pkt[UDP].sport, f.pkt[IP].dst, f.pkt[UDP].dport) == (DNS, 53, GUEST, 5000)
    assert bytes(f.pkt[UDP].payload) == answer
    # Answered: the time-out is off, nothing more happens until the flow idles out.
    g.run_until(DNS_TRY_TIMEOUT_S + 1).nothing()


def test_queries_of_one_guest_port_share_the_flow():
    g = Guest()
    flow = first_query(g, query(1)).flow
    assert ask(g, query(2)).only_action(SendUdp).flow == flow
    other = first_query(g, query(1), sport=5001)
    assert other.flow != flow


def test_time_out_fails_over_to_the_next_resolver_then_gives_up():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    q = query()
    first = first_query(g, q)
    g.run_until(DNS_TRY_TIMEOUT_S - 0.1).nothing()
    opened, sent = g.run_until(DNS_TRY_TIMEOUT_S).only_actions(OpenUdp, SendUdp)
    assert (sent.addr, sent.data) == (R2, q) and sent.flow != first.flow
    x = g.run_until(2 * DNS_TRY_TIMEOUT_S)
    x.nothing()
    assert x.counters == {"dns.gave_up": 1}
    g.event(ev.UdpReceived(sent.flow, R2, 53, q)).dropped("dns.unmatched_answer")


def test_a_late_answer_after_failover_still_counts_once():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    q = query()
    first = first_query(g, q)
    g.run_until(DNS_TRY_TIMEOUT_S)
    assert g.event(ev.UdpReceived(first.flow, R1, 53, q)).only_frame().pkt[UDP].dport == 5000
    g.event(ev.UdpReceived(first.flow, R1, 53, q)).dropped("dns.unmatched_answer")


def test_icmp_error_fails_over_at_once():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    q = query()
    first = first_query(g, q)
    x = g.event(ev.UdpFailed(first.flow, errno.ECONNREFUSED, R1, 53))
    opened, sent = x.only_actions(OpenUdp, SendUdp)
    assert sent.addr == R2
    assert g.event(ev.UdpFailed(sent.flow, errno.ECONNREFUSED, R2, 53)).counters == {"dns.gave_up": 1}
    assert g.stack.next_deadline() == DNS_IDLE_TIMEOUT_S  # only the flows' idle timers are left


def test_an_error_only_fails_over_queries_waiting_on_that_resolver():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    a = first_query(g, query(1))
    g.run_until(DNS_TRY_TIMEOUT_S)  # query 1 moved on to R2
    ask(g, query(2))  # query 2 waits on R1
    x = g.event(ev.UdpFailed(a.flow, errno.ECONNREFUSED, R1, 53))
    moved = [act for act in x.actions if isinstance(act, SendUdp)]
    assert [(m.addr, m.data[:2]) for m in moved] == [(R2, b"\0\2")]


def test_guest_retry_starts_again_from_the_first_resolver():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    q = query()
    first = first_query(g, q)
    g.run_until(DNS_TRY_TIMEOUT_S)  # now on R2
    assert ask(g, q).only_action(SendUdp) == SendUdp(first.flow, R1, 53, q)


def test_short_queries_and_no_resolvers_are_dropped():
    g = Guest()
    ask(g, b"\x12\x34" + bytes(9)).dropped("dns.short_query")
    g = Guest(resolvers=())
    ask(g, query()).dropped("dns.no_resolver")


def test_resolv_conf_changes_apply_to_the_next_query():
    g = Guest(resolvers=(RESOLVER1,))
    first_query(g, query(1))
    g.stack.set_resolvers([R2])
    assert first_query(g, query(2)).addr == R2


def test_a_loopback_resolver_is_used_as_is_even_without_host_loopback():
    g = Guest(disable_host_loopback=True, resolvers=("127.0.0.53",))
    assert first_query(g, query()).addr == packed("127.0.0.53")


def test_an_ipv6_resolver_serves_an_ipv4_guest():
    g = Guest(resolvers=("2001:db8::53",))
    q = query()
    sent = first_query(g, q)
    assert sent.addr == packed("2001:db8::53")
    f = g.event(ev.UdpReceived(sent.flow, packed("2001:db8::53"), 53, q)).only_frame()
    assert (f.pkt[IP].src, f.pkt[UDP].sport) == (DNS, 53)


def test_dns_flows_idle_out_quickly():
    assert DNS_IDLE_TIMEOUT_S == 10  # compat spec §4.2: ~10 s after a reply
    g = Guest()
    sent = first_query(g, query())
    g.event(ev.UdpReceived(sent.flow, R1, 53, query()))
    g.run_until(DNS_IDLE_TIMEOUT_S - 0.1).nothing()
    assert g.run_until(DNS_IDLE_TIMEOUT_S).only_actions() == [CloseUdp(sent.flow)]


def test_pending_queries_are_bounded_oldest_first():
    g = Guest()
    raw = bytearray(encode(g.udp(DNS, 53, query(0), sport=5000, mac=DNS_MAC), offload=True))
    ident_at = 10 + 14 + 20 + 8
    flow = None
    for ident in range(MAX_PENDING + 1):
        struct.pack_into("!H", raw, ident_at, ident)
        x = g.send_raw(bytes(raw))
        flow = x.actions[-1].flow
    assert x.counters == {"dns.pending_overflow": 1}
    g.event(ev.UdpReceived(flow, R1, 53, query(0))).dropped("dns.unmatched_answer")  # forgotten
    assert g.event(ev.UdpReceived(flow, R1, 53, query(1))).only_frame().pkt[UDP].dport == 5000


def test_dns_address_other_ports_and_disabled_dns():
    g = Guest()
    f = g.send(g.udp(DNS, 5353, query(), mac=DNS_MAC)).only_frame()
    assert (f.pkt[IP].src, f.pkt[ICMP].type, f.pkt[ICMP].code) == (DNS, 3, 0)
    g = Guest(disable_dns=True)
    sent = g.send(g.udp(DNS, 53, query(), mac=DNS_MAC)).only_actions(OpenUdp, SendUdp)[1]
    assert (sent.addr, sent.port) == (packed(DNS), 53)  # the real 10.0.2.3 on the host's network


# -- TCP to N+3:53 ------------------------------------------------------------------------


def syn(g, dport=53, sport=6000):
    return g.send(g.ip4(DNS, mac=DNS_MAC) / TCP(sport=sport, dport=dport, flags="S", seq=1))


def test_tcp_goes_to_the_first_resolver_and_answers_from_the_dns_mac():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    opened = syn(g).only_action(OpenTcp)
    assert (opened.addr, opened.port) == (R1, 53)
    synack = g.event(ev.TcpConnected(opened.flow, 1 << 16)).only_frame()
    assert (synack.pkt.src, synack.pkt[IP].src, synack.pkt[TCP].sport) == (DNS_MAC, DNS, 53)


def test_tcp_skips_a_resolver_that_just_failed_for_a_while():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    first_query(g, query())
    sent = g.run_until(DNS_TRY_TIMEOUT_S).actions[-1]  # R1 timed out: penalised
    g.event(ev.UdpReceived(sent.flow, R2, 53, query())).only_frame()  # R2 answered
    assert syn(g, sport=6000).only_action(OpenTcp).addr == R2
    g.run_until(DNS_TRY_TIMEOUT_S + RESOLVER_PENALTY_S - 1)
    assert syn(g, sport=6001).only_action(OpenTcp).addr == R2
    g.run_until(DNS_TRY_TIMEOUT_S + RESOLVER_PENALTY_S + 100)
    assert syn(g, sport=6002).only_action(OpenTcp).addr == R1


def test_tcp_with_every_resolver_penalised_takes_the_first():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    first_query(g, query())
    g.run_until(2 * DNS_TRY_TIMEOUT_S)  # both failed
    assert syn(g).only_action(OpenTcp).addr == R1


def test_new_resolvers_forget_old_penalties():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    first_query(g, query())
    g.run_until(DNS_TRY_TIMEOUT_S)
    g.stack.set_resolvers([R1, R2])
    assert syn(g).only_action(OpenTcp).addr == R1


def test_tcp_without_resolvers_is_refused():
    g = Guest(resolvers=())
    rst = syn(g).only_frame()
    assert rst.pkt[TCP].flags == "RA" and rst.pkt[TCP].ack == 2


def test_tcp_to_another_port_of_the_dns_address_is_unreachable():
    g = Guest()
    err = syn(g, dport=80).only_frame()
    assert (err.pkt[IP].src, err.pkt[ICMP].type, err.pkt[ICMP].code) == (DNS, 3, 0)


def test_tcp_with_dns_disabled_goes_to_the_real_address():
    # compat spec §4.3: test-slirp4netns-disable-dns expects a time-out, i.e. a
    # connect to the real 10.0.2.3 on the host network.
    g = Guest(disable_dns=True)
    opened = syn(g).only_action(OpenTcp)
    assert (opened.addr, opened.port) == (packed(DNS), 53)


def test_a_penalty_ends_on_time_even_when_nothing_polled_since():
    # The event loop polls only at deadlines: after the last DNS flow idled
    # out nothing moves the forwarder's clock, and TCP's choice must still
    # see that R1's penalty is over.
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    first_query(g, query())
    sent = g.run_until(DNS_TRY_TIMEOUT_S).actions[-1]
    g.event(ev.UdpReceived(sent.flow, R2, 53, query())).only_frame()
    g.run_until(DNS_TRY_TIMEOUT_S + RESOLVER_PENALTY_S + 60)
    assert g.stack.next_deadline() is None
    assert syn(g).only_action(OpenTcp).addr == R1


def test_an_error_leaves_other_guest_ports_alone():
    g = Guest(resolvers=(RESOLVER1, RESOLVER2))
    a = first_query(g, query(1), sport=5000)
    first_query(g, query(2), sport=5001)  # another port, also waiting on R1
    x = g.event(ev.UdpFailed(a.flow, errno.ECONNREFUSED, R1, 53))
    assert [(s.addr, s.data[:2]) for s in x.actions if isinstance(s, SendUdp)] == [(R2, b"\0\1")]


def test_a_full_udp_table_makes_room_for_a_dns_flow():
    from netstack.nat import DEFAULT_LIMITS, PROTO_UDP

    g = Guest()
    raw = bytearray(encode(g.udp("192.0.2.80", 9, b"x", sport=1), offload=True))
    for sport in range(1, DEFAULT_LIMITS[PROTO_UDP] + 1):
        struct.pack_into("!H", raw, 10 + 14 + 20, sport)
        g.send_raw(bytes(raw))
    x = ask(g, query(), sport=60000)
    close, opened, sent = x.only_actions(CloseUdp, OpenUdp, SendUdp)
    assert sent.addr == R1 and close.flow != sent.flow
