/*
 * slirpnet native ABI: this header is the whole interface between Python and C.
 *
 * Calls are coarse (a buffer, a batch), never per field; C never calls back
 * into Python and never allocates Python objects.  Every function here has a
 * pure-Python twin (netstack/wire/checksum.py for the checksum family) that is
 * the oracle in the parity tests.
 *
 * Checksums (RFC 1071).  A "partial sum" is the unfolded 32-bit sum of
 * big-endian 16-bit words; an odd trailing byte counts as the high byte of a
 * word.  Partial sums chain (sum of A then B) only when A has even length.
 * sn_csum_fold() folds to 16 bits WITHOUT inverting, which is what a
 * virtio-net NEEDS_CSUM frame carries in its checksum field as the seed;
 * sn_checksum() is the inverted value that goes on the wire.
 */
#ifndef SLIRPNET_H
#define SLIRPNET_H

#include <stddef.h>
#include <stdint.h>

uint32_t sn_csum_partial(const uint8_t *buf, size_t len, uint32_t sum);
uint16_t sn_csum_fold(uint32_t sum);
uint16_t sn_checksum(const uint8_t *buf, size_t len, uint32_t sum);

/* Pseudo-header partial sums: IPv4 (RFC 793 §3.1) and IPv6 (RFC 8200 §8.1). */
uint32_t sn_pseudo_sum_v4(const uint8_t *src4, const uint8_t *dst4,
                          uint8_t proto, uint32_t l4_len);
uint32_t sn_pseudo_sum_v6(const uint8_t *src16, const uint8_t *dst16,
                          uint8_t next_header, uint32_t l4_len);

/* Incremental update (RFC 1624 eqn. 3): HC' = ~(~HC + ~m + m'). */
uint16_t sn_csum_update16(uint16_t csum, uint16_t old_word, uint16_t new_word);
uint16_t sn_csum_update32(uint16_t csum, uint32_t old_word, uint32_t new_word);

/*
 * Datapath (native/datapath.c): established TCP and UDP flows moved in C.
 * The contract is the docstring of slirp/datapath/__init__.py; the pure-Python
 * twin is slirp/datapath/python.py.  Python installs flows and gets results
 * back as compact records in a buffer it owns; C never calls back.
 *
 * Records: each is a struct sn_dp_rec followed by `len` bytes, the next one
 * starting at the following multiple of 8.  Kinds:
 *   SN_DP_FRAME         a guest frame (vnet header included) for netstack
 *   SN_DP_EJECTED       struct sn_dp_ejected; the caller then reads the
 *                       send_len unacknowledged bytes from fd (the flow is gone)
 *   SN_DP_UDP_DATAGRAM  struct sn_dp_udp_datagram, then the datagram
 *   SN_DP_UDP_ERROR     struct sn_dp_udp_error: an ICMP error the datapath
 *                       read from a UDP socket's error queue (IP_RECVERR)
 *   SN_DP_CLOSED        struct sn_dp_closed: the connection ended in the
 *                       datapath; the edge closes fd (with RST when how is
 *                       SN_DP_HOW_RESET) and netstack forgets the flow
 *   SN_DP_TAP_ERROR     int32 errno: the thread's TAP read failed for good
 *                       (it stopped reading it), or the thread itself stopped
 *                       on an error (threaded mode only)
 * The record calls return the bytes of records written, or -errno (only
 * when no record was written).  `out` must hold SN_DP_OUT_MIN bytes.
 *
 * Two modes.  Synchronous (after sn_dp_new): the caller's event loop watches
 * the TAP and sn_dp_fileno() (the host sockets' epoll set) and calls
 * sn_dp_tap_readable / sn_dp_host_readable / sn_dp_timers, passing its
 * clock.  Threaded (after sn_dp_start): a pthread of the datapath's own runs
 * that loop (the TAP, the host sockets and the flow deadlines in one
 * epoll_wait, its clock CLOCK_MONOTONIC) and queues the records in order
 * (at most SN_DP_QUEUE_CAP bytes; when full, it stops reading until they
 * are taken); sn_dp_fileno() is then an eventfd, readable when records wait,
 * and sn_dp_take() hands them over.  Every call takes the datapath's mutex,
 * which the thread holds only while it handles one batch; the `now` of a
 * call is ignored in threaded mode.  sn_dp_add_addr only before the start.
 * sn_dp_stop (and sn_dp_free) stop and join the thread; a datapath starts
 * at most once (sn_dp_start again: -EALREADY).
 */
enum {
    SN_DP_TAP_READ_BUDGET = 256,
    SN_DP_INFLIGHT_MAX = 1048576,
    SN_DP_MAX_RTO_RETRIES = 8,
    SN_DP_HOST_EVENTS_MAX = 64,
    SN_DP_UDP_RECV_BUDGET = 64,
    SN_DP_UDP_BIG_MAX = 64,
    SN_DP_OUT_MIN = 24 * 1048576,
    SN_DP_QUEUE_CAP = 8 * 1048576,
};

enum sn_dp_rec_kind {
    SN_DP_FRAME = 1,
    SN_DP_EJECTED = 2,
    SN_DP_UDP_DATAGRAM = 3,
    SN_DP_UDP_ERROR = 4,
    SN_DP_TAP_ERROR = 5,
    SN_DP_CLOSED = 6,
};

/* TCP states of an installed flow (netstack.tcp.State names). */
enum sn_dp_state {
    SN_DP_ESTABLISHED = 0,
    SN_DP_CLOSE_WAIT = 1,
    SN_DP_FIN_WAIT_1 = 2,
    SN_DP_FIN_WAIT_2 = 3,
    SN_DP_CLOSING = 4,
    SN_DP_LAST_ACK = 5,
    SN_DP_TIME_WAIT = 6,
    SN_DP_SYN_RECEIVED = 7,     /* installed with our SYN-ACK out: the guest's ACK of it is next */
    SN_DP_SYN_SENT = 8,         /* installed with our SYN out (MSS, WS, TS offered): the guest's SYN-ACK is next */
};

/* How a connection ended in the datapath (slirp.datapath.CLOSE_HOWS). */
enum sn_dp_how {
    SN_DP_HOW_FIN = 0,          /* both FINs exchanged: close the socket */
    SN_DP_HOW_RESET = 1,        /* the guest reset: close the socket with RST */
    SN_DP_HOW_HOST_RESET = 2,   /* the host socket failed (err): RST sent to the guest */
};

/* Ejection reasons, in the order of slirp.datapath.EJECT_REASONS. */
enum sn_dp_reason {
    SN_DP_R_SEGMENT = 0,
    SN_DP_R_HOST_EOF = 1,
    SN_DP_R_HOST_ERROR = 2,
    SN_DP_R_TIMEOUT = 3,
    SN_DP_R_ZERO_WINDOW = 4,
    SN_DP_R_REQUESTED = 5,
};

/* Counters, in the order of slirp.datapath.STAT_NAMES (sn_dp_stat_name). */
enum sn_dp_stat {
    SN_DP_S_TAP_FRAMES, SN_DP_S_TAP_READ_ERRORS, SN_DP_S_SLOW_FRAMES,
    SN_DP_S_MALFORMED, SN_DP_S_BAD_CHECKSUM, SN_DP_S_PAWS, SN_DP_S_ACK_UNSENT,
    SN_DP_S_DUPLICATE, SN_DP_S_OUT_OF_ORDER, SN_DP_S_FAST_RETRANSMITS,
    SN_DP_S_RTO_EXPIRIES, SN_DP_S_ACKS, SN_DP_S_TCP_TO_HOST_BYTES,
    SN_DP_S_TCP_TO_GUEST_BYTES, SN_DP_S_TCP_FRAMES_TO_GUEST,
    SN_DP_S_HOST_SHORT_WRITES, SN_DP_S_UDP_TO_HOST, SN_DP_S_UDP_TO_GUEST,
    SN_DP_S_UDP_TOO_BIG, SN_DP_S_UDP_SEND_EAGAIN, SN_DP_S_UDP_SEND_ERRORS,
    SN_DP_S_TAP_WRITE_EAGAIN, SN_DP_S_TAP_WRITE_ERRORS,
    SN_DP_S_EJECTED_SEGMENT, SN_DP_S_EJECTED_HOST_EOF,
    SN_DP_S_EJECTED_HOST_ERROR, SN_DP_S_EJECTED_TIMEOUT,
    SN_DP_S_EJECTED_ZERO_WINDOW, SN_DP_S_EJECTED_REQUESTED,
    SN_DP_S_QUEUE_STALLS, SN_DP_S_RECORDS_LOST,
    SN_DP_S_FIN_FROM_GUEST, SN_DP_S_FIN_TO_GUEST, SN_DP_S_RST_TO_GUEST,
    SN_DP_S_CLOSED_FIN, SN_DP_S_CLOSED_RESET, SN_DP_S_CLOSED_HOST_RESET,
    SN_DP_S_TIME_WAIT_ENDED, SN_DP_S_TIME_WAIT_REUSED, SN_DP_S_RX_AFTER_FIN,
    SN_DP_S_UDP_ICMP_ERRORS,
    SN_DP_S_COUNT
};

/* netstack.tcp.Tcb, field for field (sequence numbers mod 2**32). */
struct sn_tcb {
    uint32_t iss, irs, snd_una, snd_nxt, snd_max, snd_wnd, snd_wl1, snd_wl2;
    uint32_t max_snd_wnd, snd_wscale, rcv_nxt, rcv_adv, rcv_wscale, mss;
    uint32_t ts_ok, ts_recent, ts_offset, pad;
    int64_t cwnd, ssthresh, host_space;
    double ts_recent_at, srtt, rttvar, rto;
};

struct sn_tcp_flow {
    uint64_t flow;
    int32_t fd;
    uint32_t addr_len;          /* 4 or 16 */
    uint8_t guest_addr[16];
    uint8_t remote_addr[16];    /* as the guest sees it */
    uint16_t guest_port, remote_port;
    uint8_t guest_mac[6], our_mac[6];
    uint32_t rcv_buf_max;
    int32_t state;              /* SN_DP_ESTABLISHED, SN_DP_SYN_RECEIVED or SN_DP_SYN_SENT */
    double now;
    struct sn_tcb tcb;
};

struct sn_udp_flow {
    uint64_t flow;
    int32_t fd;
    uint32_t addr_len;
    uint8_t guest_addr[16];
    uint16_t guest_port;
    uint8_t guest_mac[6], our_mac[6];
};

struct sn_dp_rec {
    uint32_t kind;
    uint32_t len;               /* bytes after this header */
    uint64_t flow;
};

struct sn_dp_ejected {
    struct sn_tcb tcb;
    int32_t reason;             /* enum sn_dp_reason */
    int32_t err;                /* errno for SN_DP_R_HOST_ERROR */
    int32_t fd;
    uint32_t send_len;          /* snd_max - snd_una, less our FIN if it is out */
    int32_t state;              /* enum sn_dp_state (never TIME_WAIT) */
    int32_t host_eof;           /* the host's EOF was seen (our FIN sent or due) */
};

struct sn_dp_closed {
    int32_t how;                /* enum sn_dp_how */
    int32_t err;                /* errno for SN_DP_HOW_HOST_RESET */
    int32_t fd;
    int32_t pad;
};

struct sn_dp_udp_datagram {
    uint8_t addr[16];           /* host source, as the socket reported it */
    uint32_t addr_len;
    uint32_t port;
};

struct sn_dp_udp_error {
    uint8_t addr[16];           /* where the failed datagram went (host address) */
    uint32_t addr_len;
    uint32_t port;
    int32_t err;                /* ee_errno: ECONNREFUSED, EHOSTUNREACH, ... */
    int32_t pad;
};

struct sn_dp;

/* peek_offset: 1 = use SO_PEEK_OFF where the socket takes it, 0 = never. */
struct sn_dp *sn_dp_new(int tap_fd, int mtu, uint32_t max_flows, int peek_offset);
void sn_dp_free(struct sn_dp *dp);
int sn_dp_fileno(const struct sn_dp *dp);
/* which: 0 forward map (a -> b), 1 reverse map (a -> b), 2 slow address (a). */
int sn_dp_add_addr(struct sn_dp *dp, int which, const uint8_t *a, uint32_t alen,
                   const uint8_t *b, uint32_t blen);
/* 0, -EEXIST (id, key or fd installed, or data in flight: -EINVAL),
 * -ENOSPC (table full), or another -errno from epoll_ctl. */
int sn_dp_install_tcp(struct sn_dp *dp, const struct sn_tcp_flow *spec);
int sn_dp_install_udp(struct sn_dp *dp, const struct sn_udp_flow *spec);
long sn_dp_eject_tcp(struct sn_dp *dp, uint64_t flow, double now, uint8_t *out, size_t cap);
int sn_dp_remove_udp(struct sn_dp *dp, uint64_t flow);
int sn_dp_owns(struct sn_dp *dp, uint64_t flow);
/* A guest frame handed back (e.g. one that reached netstack for a flow
 * installed meanwhile): handled as if read from the TAP now. */
long sn_dp_inject(struct sn_dp *dp, const uint8_t *frame, size_t len, double now,
                  uint8_t *out, size_t cap);
long sn_dp_tap_readable(struct sn_dp *dp, double now, uint8_t *out, size_t cap);
long sn_dp_host_readable(struct sn_dp *dp, double now, uint8_t *out, size_t cap);
long sn_dp_timers(struct sn_dp *dp, double now, uint8_t *out, size_t cap);
/* The earliest timer, or a negative value when none is armed. */
double sn_dp_next_deadline(struct sn_dp *dp);
size_t sn_dp_take_activity(struct sn_dp *dp, uint64_t *out, size_t max);
void sn_dp_stats(struct sn_dp *dp, uint64_t *out);
/* Threaded mode: 0 or -errno.  Start only once the process is confined
 * (sandbox, seccomp): the thread inherits the filter.  (Busy-polling for
 * a while after each wake-up was measured: no gain, worse p99.) */
int sn_dp_start(struct sn_dp *dp);
void sn_dp_stop(struct sn_dp *dp);
/* The queued records (cap >= SN_DP_QUEUE_CAP); clears fileno()'s readiness. */
long sn_dp_take(struct sn_dp *dp, uint8_t *out, size_t cap);
const char *sn_dp_stat_name(int i);

#endif
