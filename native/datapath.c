/*
 * The native datapath: established TCP and UDP flows moved without Python.
 *
 * Contract: the docstring of slirp/datapath/__init__.py; every rule here has
 * its twin, in the same order, in slirp/datapath/python.py (the oracle of
 * the parity tests).  ABI: native/slirpnet.h.
 *
 * Theory of operation
 * -------------------
 * Flows live in one array of `max_flows` slots (bounded by construction: an
 * install beyond it is refused and the flow stays in netstack).  Two
 * open-addressing tables with linear probing and backward-shift deletion
 * (no tombstones, so churn never slows lookups) map the flow key (proto,
 * guest addr/port, remote addr/port; v4 and v6 alike in a 40-byte canonical
 * key) and the flow id to a slot; their capacity is a power of two >= 2 x
 * max_flows, so the load factor stays <= 1/2.  The key hash is seeded from
 * getrandom(): keys are chosen by the guest.
 *
 * Copies and syscalls per byte (STYLE.md §9):
 *   guest -> host: TAP read into rx (copy 1), send() to the host socket
 *     (copy 2): one send per (super-)frame; ACKs are coalesced per flow per
 *     batch and go out after the batch (or ride on data frames).
 *   host -> guest: MSG_PEEK straight into the payload place of the tx frame,
 *     behind headroom for vnet + Ethernet + IP + TCP headers (copy 1), write
 *     to the TAP (copy 2); one frame per 64 KiB (GSO).  Acknowledged bytes
 *     are dropped from the socket with MSG_TRUNC (no copy).
 * No allocation after sn_dp_new().
 *
 * Host sockets: one epoll set; TCP sockets edge-triggered for input (new
 * data is an event, data waiting for the guest's window is picked up by the
 * ACK that opens it), EPOLLOUT added only while a window update waits for
 * the socket to drain; UDP sockets level-triggered with a per-call budget.
 * epoll_data carries slot + generation, so a stale event is recognised.
 *
 * Hostile input: every length read from a frame is checked against the
 * bytes read before use (see frame_from_guest); nothing is trusted from the
 * vnet header but the checksum flags and, for USO, gso_size (non-zero).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#include <linux/errqueue.h>  /* after <time.h>: it uses struct timespec */

#include "slirpnet.h"

#ifndef SO_PEEK_OFF
#define SO_PEEK_OFF 42
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif
#define SN_MEMINFO_VARS 9     /* SK_MEMINFO_RMEM_ALLOC .. SK_MEMINFO_DROPS */
#define SN_MEMINFO_SNDBUF 3
#define SN_MEMINFO_WMEM_QUEUED 5

#define VNET_LEN 10
#define ETH_LEN 14
#define L3 (VNET_LEN + ETH_LEN)
#define TAP_BUF_LEN (VNET_LEN + 65536 + 14 + 64)
#define TX_BUF_LEN (VNET_LEN + 65536 + 128)
#define MAX_FRAME_LEN 65535
#define F_NEEDS_CSUM 1
#define F_DATA_VALID 2
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10
#define TH_PSH 0x08
#define HALF 0x80000000u
#define RTO_MIN_S 0.2
#define RTO_MAX_S 60.0
#define CLOCK_G_S 0.001
#define PAWS_IDLE_S (24.0 * 86400.0)
#define SKB_COST_EST 1024     /* bytes of send space one small write may cost beyond its payload */
#define TIME_WAIT_S 2.0      /* netstack/tcp/config.py time_wait_s, and why */
#define MIN_MSS 88           /* netstack/tcp/config.py: floor of the guest's MSS option */
#define DEFAULT_MSS_V4 536   /* RFC 9293 §3.7.1: no MSS option */
#define DEFAULT_MSS_V6 1220
#define MAX_MAPS 16
/* While handshakes are being installed (the last one less than CHURN_S ago)
 * the thread sleeps at most NAP_S: a handshake's timer (its RTO, 1 s before
 * any RTT sample, from the event loop's clock, which may lag the thread's by
 * a loop iteration) then does not fall before the thread's wake-up, and
 * installs need no kick (wake_for) — a kick per connection cost a thread
 * wake-up each. */
#define NAP_S 0.5
#define CHURN_S 5.0
/* After a small batch (TAP or host-socket events that moved some payload:
 * less than SPIN_SMALL bytes of TCP, at most two UDP datagrams) the thread polls
 * (epoll_wait with a zero timeout) for up to SPIN_S before it sleeps: the
 * host's reply to a request it just forwarded, or the guest's next request,
 * is then picked up without a sleep and a wake-up (request/response
 * latency).  Bulk batches and the bare ACKs or EPOLLOUTs between them do
 * not spin (bulk throughput and CPU stay as they were), a wake-up that found
 * only timers or the wake eventfd does not spin, so an idle thread sleeps; SPIN_YIELD gives the CPU away between polls.
 * Nor does a batch that queued slow items for Python, or one within
 * SPIN_CHURN_S of a handshake install: then the event loop needs the CPU
 * (spinning cost a quarter of the connection rate on two vCPUs). */
#ifndef SPIN_US
#define SPIN_US 30
#endif
#define SPIN_CHURN_S 0.05 /* no spinning within this long of a handshake install */
#ifndef SPIN_YIELD
#define SPIN_YIELD 1
#endif
#define SPIN_S (SPIN_US * 1e-6)
#define SPIN_SMALL 4096
#define EV_TCP_IN (EPOLLIN | EPOLLRDHUP | EPOLLET)
/* Worst case of one TAP frame's records: an Ejected, then the frame itself. */
#define FRAME_RECS_MAX (2 * sizeof(struct sn_dp_rec) + sizeof(struct sn_dp_ejected) + TAP_BUF_LEN + 16)
#define EJECT_REC_MAX (sizeof(struct sn_dp_rec) + sizeof(struct sn_dp_ejected) + 8)
#define FLUSH_RESERVE (SN_DP_TAP_READ_BUDGET * EJECT_REC_MAX)
#define HOST_RECS_RESERVE (SN_DP_HOST_EVENTS_MAX * EJECT_REC_MAX)
#define UDP_REC_MAX (sizeof(struct sn_dp_rec) + sizeof(struct sn_dp_udp_datagram) + 65536 + 8)
#define UDP_ERR_REC (sizeof(struct sn_dp_rec) + sizeof(struct sn_dp_udp_error))
#define UDP_ERRORS_MAX 16     /* error-queue entries read per call */
/* The thread's slow queue, and the room below which it stops reading until
 * Python took the queue (a TAP batch, a batch of host events, timers). */
#define QUEUE_CAP ((size_t)SN_DP_QUEUE_CAP)
#define STALL_ROOM (FRAME_RECS_MAX + FLUSH_RESERVE + UDP_REC_MAX + HOST_RECS_RESERVE + \
                    SN_DP_HOST_EVENTS_MAX * EJECT_REC_MAX)
/* epoll tags of the thread's own fds in dp->ep (flows carry gen << 32 | slot) */
#define TAG_TAP 0xffffffffu
#define TAG_WAKE 0xfffffffeu

enum { T_NONE = 0, T_RTX = 1, T_PERSIST = 2, T_TIME_WAIT = 3 };
enum { P_TCP = 6, P_UDP = 17 };

struct key {
    uint8_t proto, alen;
    uint16_t gport, rport, pad;
    uint8_t gaddr[16], raddr[16];
};

struct flow {
    struct key key;
    uint64_t id;
    uint64_t khash, ihash;
    uint32_t gen;
    int fd;
    uint8_t used, v6;
    uint8_t gmac[6], omac[6];
    /* UDP */
    uint8_t active;
    /* TCP */
    struct sn_tcb t;
    int64_t rcv_wnd_max, space_max;
    uint32_t our_mss, eff_mss, max_payload, l4off, tcp_hlen, pseudo;
    int timer, retries, dupacks;
    double timer_at;
    uint8_t ack_pending, want_output, space_stale, watching_out, host_fin, kernel_peek;
    /* the last peek found the end of the host's data (short, EAGAIN, or
     * nothing beyond the flight) with the window open: an ACK alone then
     * has nothing to send (new data is an edge-triggered event) */
    uint8_t drained;
    /* closing (enum sn_dp_state): fin_seq valid once fin_sent; fd is -1 in
     * TIME_WAIT (the edge closed the socket; only re-ACKs are left) */
    uint8_t state, host_eof, fin_sent, tlist;
    uint32_t fin_seq;
    uint32_t batch;
    int32_t tprev, tnext;       /* list of flows with an armed timer */
    uint8_t tmpl[VNET_LEN + ETH_LEN + 40 + 32];  /* headers toward the guest */
};

struct addrmap {
    uint8_t a[16], b[16];
    uint32_t alen, blen;
};

struct out {
    uint8_t *buf;
    size_t cap, len;
};

struct touched {
    int32_t idx;
    uint32_t gen;
};

struct ready {                  /* a flow to service: epoll events, or its generation for timers() */
    uint64_t id;
    int32_t idx;
    uint32_t aux;
};

struct sn_dp {
    int tap, ep, mtu, peek_offset;
    uint32_t max_flows, nflows, cap_mask;
    uint64_t seed;
    struct flow *flows;
    int32_t *free_list;
    uint32_t nfree;
    int32_t *by_key, *by_id;
    int32_t timers;             /* head of the armed-timer list (RTX, persist) */
    int32_t tw_head, tw_tail;   /* TIME_WAIT flows, oldest first: their deadlines never decrease */
    uint32_t batch;
    struct touched touched[SN_DP_TAP_READ_BUDGET];
    uint32_t ntouched;
    uint64_t *activity;
    uint32_t nactivity, activity_cap;
    struct ready *due;          /* timers(): max_flows entries */
    struct addrmap fwd[MAX_MAPS], rev[MAX_MAPS], slow[MAX_MAPS];
    uint32_t nfwd, nrev, nslow;
    uint64_t stats[SN_DP_S_COUNT];
    struct out out;
    uint8_t *rx, *tx, *scratch;
    /* the datapath thread (sn_dp_start): everything above is guarded by mu
     * once it runs; the thread holds mu only while it handles a batch */
    pthread_mutex_t mu;
    pthread_t thread;
    int threaded, stop, stalled, notified, tap_gone;
    double sleep_until;         /* the deadline the thread sleeps to (-1: none, -2: awake) */
    double handshake_at;        /* when the last handshake was installed */
    int notify_efd, wake_efd;   /* thread -> Python: items queued; Python -> thread: drained / stop */
    uint8_t *queue;             /* slow items waiting for sn_dp_take (records) */
    size_t qlen;
};

static const char *const stat_names[SN_DP_S_COUNT] = {
    "dp.tap_frames", "dp.tap_read_errors", "dp.slow_frames", "dp.malformed",
    "dp.bad_checksum", "dp.paws", "dp.ack_unsent", "dp.duplicate",
    "dp.out_of_order", "dp.fast_retransmits", "dp.rto_expiries", "dp.acks",
    "dp.tcp_to_host_bytes", "dp.tcp_to_guest_bytes", "dp.tcp_frames_to_guest",
    "dp.host_short_writes", "dp.udp_to_host", "dp.udp_to_guest",
    "dp.udp_too_big", "dp.udp_send_eagain", "dp.udp_send_errors",
    "dp.tap_write_eagain", "dp.tap_write_errors", "dp.ejected_segment",
    "dp.ejected_host_eof", "dp.ejected_host_error", "dp.ejected_timeout",
    "dp.ejected_zero_window", "dp.ejected_requested", "dp.queue_stalls",
    "dp.records_lost", "dp.fin_from_guest", "dp.fin_to_guest", "dp.rst_to_guest",
    "dp.closed_fin", "dp.closed_reset", "dp.closed_host_reset",
    "dp.time_wait_ended", "dp.time_wait_reused", "dp.rx_after_fin",
    "dp.udp_icmp_errors",
};

/* ------------------------------------------------------------------ helpers */

static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_gt(uint32_t a, uint32_t b) { return (int32_t)(b - a) < 0; }
static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void wr16le(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t key_hash(const struct sn_dp *dp, const struct key *k)
{
    uint64_t w[5], h = dp->seed;
    memcpy(w, k, sizeof w);
    for (int i = 0; i < 5; i++)
        h = mix64(h ^ w[i]) + 0x9e3779b97f4a7c15ULL;
    return h;
}

static uint64_t id_hash(const struct sn_dp *dp, uint64_t id) { return mix64(id ^ dp->seed); }

static uint16_t fold16(uint32_t s) { return sn_csum_fold(s); }

/* ------------------------------------------------------------------ tables */

static int32_t find_key(const struct sn_dp *dp, const struct key *k, uint64_t h)
{
    uint32_t i = (uint32_t)h & dp->cap_mask;
    for (;;) {
        int32_t idx = dp->by_key[i];
        if (idx < 0)
            return -1;
        const struct flow *f = &dp->flows[idx];
        if (f->khash == h && memcmp(&f->key, k, sizeof *k) == 0)
            return idx;
        i = (i + 1) & dp->cap_mask;
    }
}

static int32_t find_id(const struct sn_dp *dp, uint64_t id)
{
    uint32_t i = (uint32_t)id_hash(dp, id) & dp->cap_mask;
    for (;;) {
        int32_t idx = dp->by_id[i];
        if (idx < 0)
            return -1;
        if (dp->flows[idx].id == id)
            return idx;
        i = (i + 1) & dp->cap_mask;
    }
}

static void table_put(struct sn_dp *dp, int32_t *tab, uint64_t h, int32_t idx)
{
    uint32_t i = (uint32_t)h & dp->cap_mask;
    while (tab[i] >= 0)
        i = (i + 1) & dp->cap_mask;
    tab[i] = idx;
}

/* Linear-probing deletion by backward shift (Knuth 6.4, Algorithm R). */
static void table_del(struct sn_dp *dp, int32_t *tab, int32_t idx, int by_key)
{
    uint32_t mask = dp->cap_mask;
    uint64_t h = by_key ? dp->flows[idx].khash : dp->flows[idx].ihash;
    uint32_t i = (uint32_t)h & mask;
    while (tab[i] != idx)
        i = (i + 1) & mask;
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        int32_t o = tab[j];
        if (o < 0)
            break;
        uint32_t home = (uint32_t)(by_key ? dp->flows[o].khash : dp->flows[o].ihash) & mask;
        /* move o into the hole at i unless its home lies cyclically in (i, j] */
        int in_range = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_range) {
            tab[i] = o;
            i = j;
        }
    }
    tab[i] = -1;
}

/* Armed timers live in one of two lists (f->tlist): the RTX/persist list,
 * walked in full (only flows with data in flight or a closed window), and
 * the TIME_WAIT FIFO — every entry lasts TIME_WAIT_S, so the oldest is due
 * first and churn that leaves thousands of them costs O(1) per wake-up. */
enum { L_NONE = 0, L_ARMED = 1, L_TIME_WAIT = 2 };

static void timer_unlink(struct sn_dp *dp, int32_t idx)
{
    struct flow *f = &dp->flows[idx];
    if (f->tlist == L_NONE)
        return;
    int32_t *head = f->tlist == L_ARMED ? &dp->timers : &dp->tw_head;
    if (f->tprev >= 0)
        dp->flows[f->tprev].tnext = f->tnext;
    else
        *head = f->tnext;
    if (f->tnext >= 0)
        dp->flows[f->tnext].tprev = f->tprev;
    else if (f->tlist == L_TIME_WAIT)
        dp->tw_tail = f->tprev;
    f->tprev = f->tnext = -2;
    f->tlist = L_NONE;
}

static void timer_set(struct sn_dp *dp, struct flow *f, int kind, double at)
{
    int32_t idx = (int32_t)(f - dp->flows);
    uint8_t want = kind == T_NONE ? L_NONE : kind == T_TIME_WAIT ? L_TIME_WAIT : L_ARMED;
    if (f->tlist != want || want == L_TIME_WAIT)
        timer_unlink(dp, idx); /* a restarted TIME_WAIT goes to the tail */
    f->timer = kind;
    f->timer_at = at;
    if (want == L_NONE || f->tlist == want)
        return;
    f->tlist = want;
    if (want == L_ARMED) {
        f->tprev = -1;
        f->tnext = dp->timers;
        if (dp->timers >= 0)
            dp->flows[dp->timers].tprev = idx;
        dp->timers = idx;
    } else {
        f->tnext = -1;
        f->tprev = dp->tw_tail;
        if (dp->tw_tail >= 0)
            dp->flows[dp->tw_tail].tnext = idx;
        else
            dp->tw_head = idx;
        dp->tw_tail = idx;
    }
}

/* ------------------------------------------------------------------ records */

static uint8_t *rec_begin(struct sn_dp *dp, uint32_t kind, uint64_t flow, uint32_t len)
{
    struct out *o = &dp->out;
    size_t need = sizeof(struct sn_dp_rec) + len;
    if (o->len + need > o->cap) {
        dp->stats[SN_DP_S_RECORDS_LOST]++;
        return NULL;
    }
    struct sn_dp_rec *r = (struct sn_dp_rec *)(o->buf + o->len);
    r->kind = kind;
    r->len = len;
    r->flow = flow;
    uint8_t *body = o->buf + o->len + sizeof *r;
    o->len = (o->len + need + 7) & ~(size_t)7;
    if (o->len > o->cap)
        o->len = o->cap;
    return body;
}

static void slow_frame(struct sn_dp *dp, const uint8_t *b, size_t n, int malformed)
{
    dp->stats[SN_DP_S_SLOW_FRAMES]++;
    if (malformed)
        dp->stats[SN_DP_S_MALFORMED]++;
    uint8_t *body = rec_begin(dp, SN_DP_FRAME, 0, (uint32_t)n);
    if (body)
        memcpy(body, b, n);
}

/* ------------------------------------------------------------------ TAP output */

static int tap_write(struct sn_dp *dp, size_t len)
{
    for (;;) {
        ssize_t w = write(dp->tap, dp->tx, len);
        if (w >= 0)
            return 1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            dp->stats[SN_DP_S_TAP_WRITE_EAGAIN]++;
        else
            dp->stats[SN_DP_S_TAP_WRITE_ERRORS]++;
        return 0;
    }
}

/* vnet + Ethernet + IP header for l4len bytes of `proto` into tx; returns the L4 offset. */
static size_t ip_header(struct sn_dp *dp, int v6, const uint8_t *dmac, const uint8_t *smac,
                        const uint8_t *src, const uint8_t *dst, uint8_t proto, uint32_t l4len)
{
    uint8_t *tx = dp->tx;
    memcpy(tx + VNET_LEN, dmac, 6);
    memcpy(tx + VNET_LEN + 6, smac, 6);
    uint8_t *ip = tx + L3;
    if (v6) {
        tx[L3 - 2] = 0x86;
        tx[L3 - 1] = 0xdd;
        wr32(ip, 0x60000000u);
        wr16(ip + 4, (uint16_t)l4len);
        ip[6] = proto;
        ip[7] = 64;
        memcpy(ip + 8, src, 16);
        memcpy(ip + 24, dst, 16);
        return L3 + 40;
    }
    tx[L3 - 2] = 0x08;
    tx[L3 - 1] = 0x00;
    ip[0] = 0x45;
    ip[1] = 0;
    wr16(ip + 2, (uint16_t)(20 + l4len));
    wr16(ip + 4, 0);
    wr16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = proto;
    wr16(ip + 10, 0);
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    wr16(ip + 10, sn_checksum(ip, 20, 0));
    return L3 + 20;
}

/* ------------------------------------------------------------------ TCP: windows */

static inline uint32_t ts_now(const struct flow *f, double now)
{
    return (uint32_t)((int64_t)(now * 1000.0) + (int64_t)f->t.ts_offset);
}

static int64_t sws(const struct flow *f)
{
    int64_t v = min64(min64(f->space_max / 2, f->rcv_wnd_max / 2), f->our_mss);
    return v < 1 ? 1 : v;
}

/* Send space in bytes we can promise: the kernel takes data while
 * sk_wmem_queued < sk_sndbuf, both in truesize units (SO_MEMINFO gives the two
 * in one call); bytes cost a little more than one unit each, so 1/8 is kept
 * back.  (SO_SNDBUF - SIOCOUTQ counts bytes and over-promises.) */
static void refresh_space(struct flow *f)
{
    uint32_t mi[SN_MEMINFO_VARS];
    socklen_t sl = sizeof mi;
    int64_t space = 0;
    if (f->fd < 0) /* TIME_WAIT: the socket is gone; the last window stays */
        return;
    memset(mi, 0, sizeof mi);
    if (getsockopt(f->fd, SOL_SOCKET, SO_MEMINFO, mi, &sl) == 0) {
        space = max64(0, (int64_t)mi[SN_MEMINFO_SNDBUF] - (int64_t)mi[SN_MEMINFO_WMEM_QUEUED]);
        space -= space / 8;
    }
    f->t.host_space = space;
    if (space > f->space_max)
        f->space_max = space;
    f->space_stale = 0;
}

static uint16_t window_field(struct flow *f)
{
    struct sn_tcb *t = &f->t;
    if (f->space_stale)
        refresh_space(f);
    uint32_t ws = t->rcv_wscale;
    if (seq_gt(t->rcv_nxt, t->rcv_adv))
        t->rcv_adv = t->rcv_nxt;
    uint32_t target = t->rcv_nxt + (uint32_t)min64(t->host_space, f->rcv_wnd_max);
    uint32_t grow = target - t->rcv_adv;
    if (grow < HALF && (int64_t)grow >= sws(f))
        t->rcv_adv = target;
    uint64_t wnd = t->rcv_adv - t->rcv_nxt;
    uint64_t field = (wnd + ((uint64_t)1 << ws) - 1) >> ws;
    if (field > 0xffff)
        field = 0xffff;
    t->rcv_adv = t->rcv_nxt + (uint32_t)(field << ws);
    return (uint16_t)field;
}

static int window_would_open(const struct flow *f)
{
    uint32_t target = f->t.rcv_nxt + (uint32_t)min64(f->t.host_space, f->rcv_wnd_max);
    uint32_t grow = target - f->t.rcv_adv;
    return grow < HALF && (int64_t)grow >= sws(f);
}

/* ------------------------------------------------------------------ TCP: frames */

/* Headers in front of plen payload bytes already in tx at the payload offset; write. */
static void tcp_frame(struct sn_dp *dp, struct flow *f, double now, uint32_t seq, uint8_t flags, uint32_t plen)
{
    uint8_t *tx = dp->tx;
    uint32_t hlen = f->tcp_hlen, l4 = f->l4off, l4len = hlen + plen;
    memcpy(tx, f->tmpl, l4 + hlen);
    uint8_t *ip = tx + L3;
    if (f->v6) {
        wr16(ip + 4, (uint16_t)l4len);
    } else {
        wr16(ip + 2, (uint16_t)(20 + l4len));
        wr16(ip + 10, 0);
        wr16(ip + 10, sn_checksum(ip, 20, 0));
    }
    uint8_t *th = tx + l4;
    wr32(th + 4, seq);
    wr32(th + 8, f->t.rcv_nxt);
    th[13] = flags;
    wr16(th + 14, window_field(f));
    wr16(th + 16, fold16(f->pseudo + l4len));
    if (f->t.ts_ok) {
        wr32(th + 24, ts_now(f, now));
        wr32(th + 28, f->t.ts_recent);
    }
    uint16_t cs = (uint16_t)(l4 - VNET_LEN);
    tx[0] = F_NEEDS_CSUM;
    if (plen > f->eff_mss) {
        tx[1] = f->v6 ? GSO_TCPV6 : GSO_TCPV4;
        wr16le(tx + 2, (uint16_t)(cs + hlen));
        wr16le(tx + 4, (uint16_t)f->eff_mss);
    } else {
        tx[1] = 0;
        wr16le(tx + 2, 0);
        wr16le(tx + 4, 0);
    }
    wr16le(tx + 6, cs);
    wr16le(tx + 8, 16);
    if (tap_write(dp, l4 + l4len) && plen)
        dp->stats[SN_DP_S_TCP_FRAMES_TO_GUEST]++;
}

static void send_ack(struct sn_dp *dp, struct flow *f, double now)
{
    tcp_frame(dp, f, now, f->t.snd_max, TH_ACK, 0);
    dp->stats[SN_DP_S_ACKS]++;
    f->ack_pending = 0;
}

/* ------------------------------------------------------------------ removal, ejection */

static void forget(struct sn_dp *dp, int32_t idx)
{
    struct flow *f = &dp->flows[idx];
    table_del(dp, dp->by_key, idx, 1);
    table_del(dp, dp->by_id, idx, 0);
    timer_unlink(dp, idx);
    if (f->fd >= 0)
        epoll_ctl(dp->ep, EPOLL_CTL_DEL, f->fd, NULL);
    if (f->key.proto == P_TCP && f->kernel_peek && f->fd >= 0) {
        int off = -1;
        setsockopt(f->fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
    }
    f->used = 0;
    f->gen++;
    dp->free_list[dp->nfree++] = idx;
    dp->nflows--;
}

static void eject(struct sn_dp *dp, struct flow *f, int reason, int err, double now)
{
    if (f->ack_pending)
        send_ack(dp, f, now);
    dp->stats[SN_DP_S_EJECTED_SEGMENT + reason]++;
    struct sn_dp_ejected *e = (struct sn_dp_ejected *)rec_begin(dp, SN_DP_EJECTED, f->id, sizeof *e);
    if (e) {
        e->tcb = f->t;
        e->tcb.pad = 0;
        e->reason = reason;
        e->err = err;
        e->fd = f->fd;
        /* in a handshake the one unacknowledged sequence number is our SYN */
        e->send_len = f->state == SN_DP_SYN_RECEIVED || f->state == SN_DP_SYN_SENT
                          ? 0
                          : f->t.snd_max - f->t.snd_una - (f->fin_sent && f->t.snd_max != f->t.snd_una);
        e->state = f->state;
        e->host_eof = f->host_eof;
    }
    forget(dp, (int32_t)(f - dp->flows));
}

/* ------------------------------------------------------------------ TCP: closing
 *
 * An installed flow may end here (netstack's rules, endpoint.py "Closing"):
 * the guest's FIN, taken once every byte before it went to the host socket,
 * becomes shutdown(SHUT_WR) and is ACKed; the host's EOF becomes our FIN
 * once everything before it is acknowledged; the ACK of our FIN in LAST_ACK,
 * or TIME_WAIT (TIME_WAIT_S, restarted by any retransmission from the guest),
 * ends it.  An exact RST from the guest ends it at once (graceful when only
 * our FIN was unacknowledged in CLOSING/LAST_ACK), a failed host socket
 * sends RST|ACK <SEQ=SND.NXT, ACK=RCV.NXT> to the guest.  Each end is one
 * Closed record; the flow's socket is the edge's to close from then on.  A
 * TIME_WAIT flow keeps its slot without a socket (recycled first when the
 * table is full, or when a new flow with its key is installed).
 */

static void closed(struct sn_dp *dp, struct flow *f, int how, int err)
{
    static const int stat[] = {SN_DP_S_CLOSED_FIN, SN_DP_S_CLOSED_RESET, SN_DP_S_CLOSED_HOST_RESET};
    dp->stats[stat[how]]++;
    struct sn_dp_closed *c = (struct sn_dp_closed *)rec_begin(dp, SN_DP_CLOSED, f->id, sizeof *c);
    if (c) {
        c->how = how;
        c->err = err;
        c->fd = f->fd;
        c->pad = 0;
    }
}

/* The connection is over: report it, and give the slot back. */
static void close_flow(struct sn_dp *dp, struct flow *f, int how, int err)
{
    closed(dp, f, how, err);
    forget(dp, (int32_t)(f - dp->flows));
}

static void enter_time_wait(struct sn_dp *dp, struct flow *f, double now)
{
    closed(dp, f, SN_DP_HOW_FIN, 0);
    epoll_ctl(dp->ep, EPOLL_CTL_DEL, f->fd, NULL);
    f->fd = -1;
    f->state = SN_DP_TIME_WAIT;
    f->want_output = 0;
    f->watching_out = 0;
    timer_set(dp, f, T_TIME_WAIT, now + TIME_WAIT_S);
}

static void send_rst(struct sn_dp *dp, struct flow *f)
{
    /* the template without options, window 0 (netstack's _send_rst) */
    uint8_t *tx = dp->tx;
    uint32_t l4 = f->l4off;
    memcpy(tx, f->tmpl, l4 + 20);
    uint8_t *ip = tx + L3;
    if (f->v6) {
        wr16(ip + 4, 20);
    } else {
        wr16(ip + 2, 40);
        wr16(ip + 10, 0);
        wr16(ip + 10, sn_checksum(ip, 20, 0));
    }
    uint8_t *th = tx + l4;
    wr32(th + 4, f->t.snd_nxt);
    wr32(th + 8, f->t.rcv_nxt);
    th[12] = 5 << 4;
    th[13] = TH_RST | TH_ACK;
    wr16(th + 14, 0);
    wr16(th + 16, fold16(f->pseudo + 20));
    memset(tx, 0, VNET_LEN);
    tx[0] = F_NEEDS_CSUM;
    wr16le(tx + 6, (uint16_t)(l4 - VNET_LEN));
    wr16le(tx + 8, 16);
    tap_write(dp, l4 + 20);
    dp->stats[SN_DP_S_RST_TO_GUEST]++;
}

/* The host socket failed: RST to the guest, the flow ends. */
static void host_reset(struct sn_dp *dp, struct flow *f, int err)
{
    if (f->state != SN_DP_SYN_SENT) /* no RST for a SYN the guest has not answered (RFC 9293 ABORT) */
        send_rst(dp, f);
    close_flow(dp, f, SN_DP_HOW_HOST_RESET, err);
}

static void send_fin(struct sn_dp *dp, struct flow *f, double now)
{
    struct sn_tcb *t = &f->t;
    tcp_frame(dp, f, now, t->snd_nxt, TH_ACK | TH_FIN, 0);
    if (!f->fin_sent) {
        f->fin_sent = 1;
        f->fin_seq = t->snd_nxt;
        f->state = f->state == SN_DP_CLOSE_WAIT ? SN_DP_LAST_ACK : SN_DP_FIN_WAIT_1;
        dp->stats[SN_DP_S_FIN_TO_GUEST]++;
    }
    t->snd_nxt = f->fin_seq + 1;
    t->snd_max = t->snd_nxt;
    if (f->timer != T_RTX)
        timer_set(dp, f, T_RTX, now + t->rto);
    f->ack_pending = 0;
}

static void eject_segment(struct sn_dp *dp, struct flow *f, const uint8_t *b, size_t n, double now)
{
    eject(dp, f, SN_DP_R_SEGMENT, 0, now);
    slow_frame(dp, b, n, 0);
}

/* ------------------------------------------------------------------ TCP: guest segments */

static void go_back_n(struct flow *f)
{
    f->t.snd_nxt = f->t.snd_una;
    if (f->kernel_peek) {
        int off = 0;
        setsockopt(f->fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
    }
    f->want_output = 1;
}

static void update_window(struct flow *f, uint32_t seq, uint32_t ack, uint32_t wnd)
{
    struct sn_tcb *t = &f->t;
    if (seq_lt(t->snd_wl1, seq) || (t->snd_wl1 == seq && !seq_gt(t->snd_wl2, ack))) {
        if (wnd != t->snd_wnd)
            f->want_output = 1;
        t->snd_wnd = wnd;
        t->snd_wl1 = seq;
        t->snd_wl2 = ack;
        if (wnd > t->max_snd_wnd)
            t->max_snd_wnd = wnd;
    }
}

/* RFC 6298 §2, floor 200 ms (netstack's config). */
static void rtt_sample(struct flow *f, double sample)
{
    struct sn_tcb *t = &f->t;
    if (t->srtt < 0) {
        t->srtt = sample;
        t->rttvar = sample / 2;
    } else {
        t->rttvar = 0.75 * t->rttvar + 0.25 * fabs(t->srtt - sample);
        t->srtt = 0.875 * t->srtt + 0.125 * sample;
    }
    double var4 = 4 * t->rttvar;
    double rto = t->srtt + (var4 > CLOCK_G_S ? var4 : CLOCK_G_S);
    if (rto < RTO_MIN_S)
        rto = RTO_MIN_S;
    if (rto > RTO_MAX_S)
        rto = RTO_MAX_S;
    t->rto = rto;
}

/* 0 if the flow ended (the ACK of our FIN in LAST_ACK) or entered TIME_WAIT. */
static int new_ack(struct sn_dp *dp, struct flow *f, uint32_t ack, uint32_t tsecr, double now)
{
    struct sn_tcb *t = &f->t;
    int fin_acked = f->fin_sent && ack == f->fin_seq + 1;
    uint32_t acked = ack - t->snd_una - (uint32_t)fin_acked;
    /* drop the acknowledged bytes; the kernel moves the peek offset back */
    ssize_t r = 0;
    while (acked && (r = recv(f->fd, dp->scratch, acked, MSG_TRUNC | MSG_DONTWAIT)) < 0 && errno == EINTR)
        ;
    t->snd_una = ack;
    if (seq_lt(t->snd_nxt, ack))
        t->snd_nxt = ack;
    if (t->ts_ok && tsecr) {
        uint32_t ms = ts_now(f, now) - tsecr;
        if (ms < HALF)
            rtt_sample(f, (double)ms / 1000.0);
    }
    f->retries = 0;
    f->dupacks = 0;
    if (t->snd_max == t->snd_una) {
        if (f->timer == T_RTX)
            timer_set(dp, f, T_NONE, 0.0);
    } else {
        timer_set(dp, f, T_RTX, now + t->rto);
    }
    if (!f->drained || f->host_fin || f->host_eof || f->fin_sent)
        f->want_output = 1;
    if (fin_acked) {
        if (f->state == SN_DP_FIN_WAIT_1) {
            f->state = SN_DP_FIN_WAIT_2;
        } else if (f->state == SN_DP_CLOSING) {
            if (f->ack_pending)
                send_ack(dp, f, now);
            enter_time_wait(dp, f, now);
            return 0;
        } else if (f->state == SN_DP_LAST_ACK) {
            if (f->ack_pending)
                send_ack(dp, f, now);
            close_flow(dp, f, SN_DP_HOW_FIN, 0);
            return 0;
        }
    }
    return 1;
}

static void touch(struct sn_dp *dp, struct flow *f)
{
    if (f->batch != dp->batch && dp->ntouched < SN_DP_TAP_READ_BUDGET) {
        f->batch = dp->batch;
        dp->touched[dp->ntouched].idx = (int32_t)(f - dp->flows);
        dp->touched[dp->ntouched].gen = f->gen;
        dp->ntouched++;
    }
}

/* A segment for a flow in TIME_WAIT (its socket is gone). */
static void time_wait_segment(struct sn_dp *dp, struct flow *f, const uint8_t *b, size_t n, uint8_t flags,
                              uint32_t plen, double now)
{
    if (flags & TH_RST) {
        dp->stats[SN_DP_S_TIME_WAIT_ENDED]++;
        forget(dp, (int32_t)(f - dp->flows));
        return;
    }
    if (flags & TH_SYN) {
        /* a new incarnation (RFC 9293 §3.6.1): the guest's SYN, or its SYN|ACK
         * to a port forward netstack opened on the same key — netstack's */
        dp->stats[SN_DP_S_TIME_WAIT_REUSED]++;
        forget(dp, (int32_t)(f - dp->flows));
        slow_frame(dp, b, n, 0);
        return;
    }
    if (plen || (flags & TH_FIN)) {
        /* a retransmission: our last ACK was lost; stay (netstack restarts too) */
        timer_set(dp, f, T_TIME_WAIT, now + TIME_WAIT_S);
        send_ack(dp, f, now);
    }
}

/* SYN_RECEIVED -> ESTABLISHED on the guest's ACK of our SYN-ACK (netstack's
 * SYN_RECEIVED rule): RTT from TSecr, the guest's window, no timer.  The
 * segment then goes on as any ESTABLISHED one (its payload, if any). */
static void handshake_done(struct sn_dp *dp, struct flow *f, uint32_t seq, uint32_t ack, uint32_t wnd,
                           uint32_t tsecr, double now)
{
    struct sn_tcb *t = &f->t;
    if (t->ts_ok && tsecr) {
        uint32_t ms = ts_now(f, now) - tsecr;
        if (ms < HALF)
            rtt_sample(f, (double)ms / 1000.0);
    } else if (!t->ts_ok && f->timer == T_RTX) {
        /* no timestamps: the SYN-ACK went out when its timer was armed (at
         * the install, never retransmitted here: a retransmitted SYN ejects),
         * so the sample is unambiguous (Karn), as netstack's would be */
        double sent = f->timer_at - t->rto;
        if (now >= sent)
            rtt_sample(f, now - sent);
    }
    t->snd_una = ack;
    t->snd_wnd = t->max_snd_wnd = wnd;
    t->snd_wl1 = seq;
    t->snd_wl2 = ack;
    timer_set(dp, f, T_NONE, 0.0);
    f->retries = 0;
    f->state = SN_DP_ESTABLISHED;
    f->want_output = 1; /* host data that came meanwhile (edge-triggered: no new event) */
}

/* The payload room of a flow with MSS t.mss (and the timestamp block, if any). */
static void derive_mss(struct flow *f)
{
    uint32_t opts = f->t.ts_ok ? 12 : 0, iphlen = f->v6 ? 40 : 20;
    f->eff_mss = f->t.mss > opts + 1 ? f->t.mss - opts : 1;
    f->max_payload = (uint32_t)max64(f->eff_mss, MAX_FRAME_LEN - ETH_LEN - iphlen - 20 - opts);
}

/* SYN_SENT: the guest's SYN-ACK of our SYN (netstack's _segment_syn_sent for
 * its common case): exactly SYN|ACK acking snd_max, no payload, window
 * scaling and timestamps both answered (we offered them), well-formed
 * options.  Anything else is netstack's (Ejected(segment) + Frame). */
static void syn_sent_segment(struct sn_dp *dp, struct flow *f, const uint8_t *b, size_t n, size_t l4,
                             uint32_t l4len, uint32_t doff, double now)
{
    struct sn_tcb *t = &f->t;
    const uint8_t *th = b + l4;
    uint32_t mss_opt = 0, tsval = 0, tsecr = 0;
    int ws = -1, ts = 0, mss_seen = 0;
    if (th[13] != (TH_SYN | TH_ACK) || rd32(th + 8) != t->snd_max || l4len != doff) {
        eject_segment(dp, f, b, n, now);
        return;
    }
    for (uint32_t i = 20; i < doff;) {
        uint8_t kind = th[i];
        if (kind == 0)
            break; /* end of option list */
        if (kind == 1) {
            i++;
            continue;
        }
        uint32_t len = i + 1 < doff ? th[i + 1] : 0;
        if (len < 2 || i + len > doff || (kind == 2 && len != 4) || (kind == 3 && len != 3) ||
            (kind == 8 && len != 10)) {
            eject_segment(dp, f, b, n, now);
            return;
        }
        if (kind == 2) {
            mss_opt = rd16(th + i + 2);
            mss_seen = 1;
        } else if (kind == 3) {
            ws = th[i + 2];
        } else if (kind == 8) {
            ts = 1;
            tsval = rd32(th + i + 2);
            tsecr = rd32(th + i + 6);
        }
        i += len;
    }
    if (ws < 0 || ws > 14 || !ts) {
        eject_segment(dp, f, b, n, now);
        return;
    }
    uint32_t seq = rd32(th + 4), ack = rd32(th + 8);
    uint32_t dflt = f->v6 ? DEFAULT_MSS_V6 : DEFAULT_MSS_V4, want = mss_seen ? mss_opt : dflt;
    t->irs = seq;
    t->rcv_nxt = t->rcv_adv = seq + 1;
    t->ts_recent = tsval;
    t->ts_recent_at = now;
    t->snd_wscale = (uint32_t)ws;
    int64_t initial_segments = t->cwnd / (int64_t)(f->our_mss - 12); /* the export's: IW full-size segments */
    t->mss = want < f->our_mss ? want : f->our_mss;
    if (t->mss < MIN_MSS)
        t->mss = MIN_MSS;
    derive_mss(f);
    t->cwnd = initial_segments * f->eff_mss; /* RFC 6928, in the negotiated MSS (netstack's _established) */
    t->snd_wnd = t->max_snd_wnd = rd16(th + 14); /* never scaled in a SYN (RFC 7323 §2.2) */
    t->snd_wl1 = seq;
    t->snd_wl2 = ack;
    if (tsecr) {
        uint32_t ms = ts_now(f, now) - tsecr;
        if (ms < HALF)
            rtt_sample(f, (double)ms / 1000.0);
    }
    t->snd_una = ack;
    timer_set(dp, f, T_NONE, 0.0);
    f->retries = 0;
    f->state = SN_DP_ESTABLISHED;
    f->want_output = 1; /* host data that came meanwhile */
    f->ack_pending = 1; /* our ACK: with the batch, or on the first data frame */
    touch(dp, f);
}

static void tcp_segment(struct sn_dp *dp, struct flow *f, const uint8_t *b, size_t n, size_t l4, uint32_t l4len,
                        uint32_t doff, double now)
{
    struct sn_tcb *t = &f->t;
    const uint8_t *th = b + l4;
    uint8_t flags = th[13];
    uint32_t tsval = 0, tsecr = 0;
    uint32_t plen = l4len - doff;
    if (f->state == SN_DP_TIME_WAIT) {
        time_wait_segment(dp, f, b, n, flags, plen, now);
        return;
    }
    if (f->state == SN_DP_SYN_SENT) {
        syn_sent_segment(dp, f, b, n, l4, l4len, doff, now);
        return;
    }
    if (flags & TH_RST) {
        /* RFC 5961 §3.2: only an exact RST ends the flow here; netstack
         * challenges the others */
        if ((flags & ~TH_ACK) == TH_RST && rd32(th + 4) == t->rcv_nxt) {
            int graceful = (f->state == SN_DP_CLOSING || f->state == SN_DP_LAST_ACK) && t->snd_una == f->fin_seq;
            close_flow(dp, f, graceful ? SN_DP_HOW_FIN : SN_DP_HOW_RESET, 0);
        } else {
            eject_segment(dp, f, b, n, now);
        }
        return;
    }
    if ((flags & ~(TH_PSH | TH_FIN)) != TH_ACK) {
        eject_segment(dp, f, b, n, now);
        return;
    }
    if (t->ts_ok) {
        if (doff != 32 || th[20] != 1 || th[21] != 1 || th[22] != 8 || th[23] != 10) {
            eject_segment(dp, f, b, n, now);
            return;
        }
        tsval = rd32(th + 24);
        tsecr = rd32(th + 28);
    } else if (doff != 20) {
        eject_segment(dp, f, b, n, now);
        return;
    }
    touch(dp, f);
    uint32_t seq = rd32(th + 4), ack = rd32(th + 8);
    uint32_t wnd = (uint32_t)rd16(th + 14) << t->snd_wscale;
    if (f->state == SN_DP_SYN_RECEIVED) {
        /* 0. the guest's ACK of our SYN-ACK, exactly: at rcv_nxt, acking
         * snd_max, no FIN, passing PAWS; anything else is netstack's */
        if ((flags & TH_FIN) || seq != t->rcv_nxt || ack != t->snd_max ||
            (t->ts_ok && seq_lt(tsval, t->ts_recent) && now - t->ts_recent_at < PAWS_IDLE_S)) {
            eject_segment(dp, f, b, n, now);
            return;
        }
        handshake_done(dp, f, seq, ack, wnd, tsecr, now);
    }
    /* 1. PAWS (RFC 7323 §5.3; a TS.Recent idle for 24 days is void, §5.5) */
    if (t->ts_ok && seq_lt(tsval, t->ts_recent) && now - t->ts_recent_at < PAWS_IDLE_S) {
        dp->stats[SN_DP_S_PAWS]++;
        send_ack(dp, f, now);
        return;
    }
    if (t->ts_ok && !seq_gt(seq, t->rcv_nxt) && !seq_lt(tsval, t->ts_recent)) {
        t->ts_recent = tsval; /* RFC 7323 §4.3 (3) */
        t->ts_recent_at = now;
    }
    /* 2. ACK */
    if (seq_gt(ack, t->snd_max)) {
        dp->stats[SN_DP_S_ACK_UNSENT]++;
        send_ack(dp, f, now);
        return;
    }
    uint32_t bound = (uint32_t)max64(t->max_snd_wnd, 0xffff);
    if (seq_lt(ack, t->snd_una - bound)) {
        eject_segment(dp, f, b, n, now); /* RFC 5961 §5.2: netstack challenges */
        return;
    }
    if (ack == t->snd_una) {
        int dup = plen == 0 && !(flags & TH_FIN) && wnd == t->snd_wnd && t->snd_wnd > 0 && t->snd_max != t->snd_una;
        update_window(f, seq, ack, wnd);
        if (dup && ++f->dupacks == 3) {
            dp->stats[SN_DP_S_FAST_RETRANSMITS]++;
            go_back_n(f);
        }
    } else if (seq_gt(ack, t->snd_una)) {
        update_window(f, seq, ack, wnd);
        if (!new_ack(dp, f, ack, tsecr, now))
            return;
    } else {
        update_window(f, seq, ack, wnd);
    }
    /* 3. payload, then the FIN (sequence space: plen bytes, then the FIN) */
    int fin = (flags & TH_FIN) != 0;
    if (!plen && !fin)
        return;
    int fin_taken = f->state == SN_DP_CLOSE_WAIT || f->state == SN_DP_CLOSING || f->state == SN_DP_LAST_ACK;
    uint32_t back = t->rcv_nxt - seq;
    size_t start = l4 + doff;
    if (back) {
        if (back >= HALF) {
            dp->stats[SN_DP_S_OUT_OF_ORDER]++;
            send_ack(dp, f, now);
            return;
        }
        if (back >= plen + (uint32_t)fin) {
            dp->stats[SN_DP_S_DUPLICATE]++;
            send_ack(dp, f, now);
            return;
        }
        if (back < plen)
            start += back;
        else
            start = l4 + l4len; /* only the FIN is new */
    }
    if (fin_taken) {
        /* after the guest's FIN nothing new can come */
        dp->stats[SN_DP_S_RX_AFTER_FIN]++;
        send_ack(dp, f, now);
        return;
    }
    size_t len = l4 + l4len - start;
    if (len) {
        f->ack_pending = 1;
        ssize_t w;
        do
            w = send(f->fd, b + start, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                host_reset(dp, f, errno);
                return;
            }
            w = 0;
        }
        if (w) {
            t->rcv_nxt += (uint32_t)w;
            dp->stats[SN_DP_S_TCP_TO_HOST_BYTES] += (uint64_t)w;
        }
        if ((size_t)w < len) {
            dp->stats[SN_DP_S_HOST_SHORT_WRITES]++;
            f->space_stale = 1;
        } else {
            /* no SO_MEMINFO per segment: the free space shrank by at most
             * what the socket took, with its overhead; flush() reads it
             * again once this estimate falls below the window we offer */
            t->host_space = max64(0, t->host_space - (int64_t)(w + w / 8 + SKB_COST_EST));
        }
    }
    /* the FIN, once every byte before it went to the host (else the guest
     * retransmits the rest with it) */
    if (fin && t->rcv_nxt == seq + plen) {
        shutdown(f->fd, SHUT_WR);
        t->rcv_nxt++;
        dp->stats[SN_DP_S_FIN_FROM_GUEST]++;
        f->ack_pending = 1;
        if (f->state == SN_DP_ESTABLISHED) {
            f->state = SN_DP_CLOSE_WAIT;
        } else if (f->state == SN_DP_FIN_WAIT_1) {
            f->state = SN_DP_CLOSING;
        } else { /* FIN_WAIT_2 */
            send_ack(dp, f, now);
            enter_time_wait(dp, f, now);
        }
    }
}

/* ------------------------------------------------------------------ TCP: host data to the guest */

/* Host data or EOF waiting (nothing is in flight when this is asked). */
static int host_waiting(const struct flow *f)
{
    int inq = 0;
    return f->host_fin || (ioctl(f->fd, FIONREAD, &inq) == 0 && inq > 0);
}

/* Send what the guest's window and INFLIGHT_MAX allow.  0 if the flow was ejected. */
static int output(struct sn_dp *dp, struct flow *f, double now)
{
    struct sn_tcb *t = &f->t;
    uint8_t *pay = dp->tx + f->l4off + f->tcp_hlen;
    f->drained = 0;
    if (f->fin_sent) {
        /* every byte was acknowledged before our FIN: only it can be due again */
        if (t->snd_nxt == f->fin_seq)
            send_fin(dp, f, now);
        return 1;
    }
    if (f->host_eof && t->snd_nxt == t->snd_max) {
        /* our FIN goes once everything before it is acknowledged (into a
         * closed window too) */
        if (t->snd_una == t->snd_max)
            send_fin(dp, f, now);
        return 1;
    }
    for (;;) {
        int64_t off = (uint32_t)(t->snd_nxt - t->snd_una);
        int64_t n = min64(min64((int64_t)t->snd_wnd - off, SN_DP_INFLIGHT_MAX - off), f->max_payload);
        if (n <= 0 || (n < f->eff_mss && off > 0))
            break;
        ssize_t r;
        if (f->kernel_peek || off == 0) {
            do
                r = recv(f->fd, pay, (size_t)n, MSG_PEEK | MSG_DONTWAIT);
            while (r < 0 && errno == EINTR);
        } else {
            struct iovec iov[2] = {{dp->scratch, (size_t)off}, {pay, (size_t)n}};
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
            do
                r = recvmsg(f->fd, &mh, MSG_PEEK | MSG_DONTWAIT);
            while (r < 0 && errno == EINTR);
            if (r >= 0) {
                r -= off;
                if (r <= 0) {
                    f->drained = 1;
                    break; /* nothing beyond the flight (EOF shows once the flight is acked) */
                }
            }
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                f->drained = 1;
                break;
            }
            host_reset(dp, f, errno);
            return 0;
        }
        if (r == 0) {
            f->host_eof = 1;
            if (t->snd_una == t->snd_nxt && t->snd_nxt == t->snd_max)
                send_fin(dp, f, now);
            return 1;
        }
        tcp_frame(dp, f, now, t->snd_nxt, TH_ACK | TH_PSH, (uint32_t)r);
        dp->stats[SN_DP_S_TCP_TO_GUEST_BYTES] += (uint64_t)r;
        t->snd_nxt += (uint32_t)r;
        if (seq_gt(t->snd_nxt, t->snd_max))
            t->snd_max = t->snd_nxt;
        if (f->timer != T_RTX)
            timer_set(dp, f, T_RTX, now + t->rto);
        f->ack_pending = 0;
        if (r < n && !f->host_fin) {
            f->drained = 1;
            break;
        }
    }
    if (t->snd_wnd == 0 && t->snd_max == t->snd_una && f->timer == T_NONE && host_waiting(f))
        timer_set(dp, f, T_PERSIST, now + t->rto);
    else if (t->snd_wnd && f->timer == T_PERSIST)
        timer_set(dp, f, T_NONE, 0.0);
    return 1;
}

static void watch(struct sn_dp *dp, struct flow *f, uint32_t events)
{
    struct epoll_event ev = {.events = events,
                             .data.u64 = ((uint64_t)f->gen << 32) | (uint32_t)(f - dp->flows)};
    epoll_ctl(dp->ep, EPOLL_CTL_MOD, f->fd, &ev);
}

/* Output phase of one flow: host data the windows allow, then the pending
 * ACK (unless a data frame carried it), then EPOLLOUT if the window offered
 * is nearly closed. */
static void flush(struct sn_dp *dp, struct flow *f, double now)
{
    if (f->state == SN_DP_TIME_WAIT) {
        if (f->ack_pending)
            send_ack(dp, f, now);
        return;
    }
    if (f->state == SN_DP_SYN_RECEIVED || f->state == SN_DP_SYN_SENT)
        return; /* nothing but our SYN(-ACK) may be out yet; want_output waits */
    if (f->t.host_space < f->rcv_wnd_max)
        f->space_stale = 1;
    if (f->want_output) {
        f->want_output = 0;
        if (!output(dp, f, now))
            return;
    }
    if (f->ack_pending)
        send_ack(dp, f, now);
    int fin_taken = f->state == SN_DP_CLOSE_WAIT || f->state == SN_DP_CLOSING || f->state == SN_DP_LAST_ACK;
    if (!fin_taken && !f->watching_out && (int64_t)(uint32_t)(f->t.rcv_adv - f->t.rcv_nxt) < sws(f)) {
        f->watching_out = 1;
        watch(dp, f, EV_TCP_IN | EPOLLOUT);
    }
}

/* ------------------------------------------------------------------ UDP */

static const struct addrmap *map_find(const struct addrmap *m, uint32_t n, const uint8_t *a, uint32_t alen)
{
    for (uint32_t i = 0; i < n; i++)
        if (m[i].alen == alen && memcmp(m[i].a, a, alen) == 0)
            return &m[i];
    return NULL;
}

static void mark_active(struct sn_dp *dp, struct flow *u)
{
    if (u->active)
        return;
    if (dp->nactivity == dp->activity_cap) {
        /* compact: drop ids of removed flows (at most max_flows stay) */
        uint32_t k = 0;
        for (uint32_t i = 0; i < dp->nactivity; i++) {
            int32_t idx = find_id(dp, dp->activity[i]);
            if (idx >= 0 && dp->flows[idx].active)
                dp->activity[k++] = dp->activity[i];
        }
        dp->nactivity = k;
    }
    u->active = 1;
    dp->activity[dp->nactivity++] = u->id;
}

/* Read the ICMP errors queued on a UDP flow's socket (IP_RECVERR) and hand
 * each up as a record: an EPOLLERR stays raised until the queue is empty, so
 * the datapath empties it itself (a level-triggered socket would otherwise be
 * an event again at once).  Entries that are not ICMP errors are consumed and
 * dropped; a pending error with nothing queued is cleared with SO_ERROR. */
static void udp_errors(struct sn_dp *dp, struct flow *u)
{
    int read_any = 0;
    for (int i = 0; i < UDP_ERRORS_MAX; i++) {
        if (dp->out.len + UDP_ERR_REC + HOST_RECS_RESERVE + FLUSH_RESERVE > dp->out.cap)
            return;  /* the rest stays queued: an event again once there is room */
        struct sockaddr_storage dst;
        union {
            char buf[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6))];
            struct cmsghdr align;
        } ctl;
        struct msghdr m = {0};
        m.msg_name = &dst;
        m.msg_namelen = sizeof dst;
        m.msg_control = ctl.buf;
        m.msg_controllen = sizeof ctl.buf;
        ssize_t n;
        do
            n = recvmsg(u->fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            break;
        read_any = 1;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
            if (!((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR) ||
                  (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
                continue;
            struct sock_extended_err ee;
            memcpy(&ee, CMSG_DATA(cm), sizeof ee);
            if (ee.ee_origin != SO_EE_ORIGIN_ICMP && ee.ee_origin != SO_EE_ORIGIN_ICMP6)
                continue;
            struct sn_dp_udp_error e = {0};
            e.err = (int32_t)ee.ee_errno;
            if (dst.ss_family == AF_INET6 && m.msg_namelen >= sizeof(struct sockaddr_in6)) {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&dst;
                memcpy(e.addr, &s6->sin6_addr, 16);
                e.addr_len = 16;
                e.port = ntohs(s6->sin6_port);
            } else if (dst.ss_family == AF_INET && m.msg_namelen >= sizeof(struct sockaddr_in)) {
                struct sockaddr_in *s4 = (struct sockaddr_in *)&dst;
                memcpy(e.addr, &s4->sin_addr, 4);
                e.addr_len = 4;
                e.port = ntohs(s4->sin_port);
            } else {
                continue;
            }
            dp->stats[SN_DP_S_UDP_ICMP_ERRORS]++;
            uint8_t *body = rec_begin(dp, SN_DP_UDP_ERROR, u->id, sizeof e);
            if (body)
                memcpy(body, &e, sizeof e);
        }
    }
    if (!read_any) {
        int err;
        socklen_t el = sizeof err;
        getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    }
}

static void udp_datagram(struct sn_dp *dp, struct flow *u, const uint8_t *b, size_t l4, uint32_t ulen,
                         const uint8_t *dst, uint32_t alen, uint16_t dport)
{
    mark_active(dp, u);
    const struct addrmap *m = map_find(dp->fwd, dp->nfwd, dst, alen);
    const uint8_t *addr = m ? m->b : dst;
    uint32_t addr_len = m ? m->blen : alen;
    const uint8_t *payload = b + l4 + 8;
    uint32_t plen = ulen - 8, step = plen;
    if ((b[1] & 0x7f) == GSO_UDP_L4) {
        uint32_t gso = (uint32_t)b[4] | ((uint32_t)b[5] << 8);
        if (gso == 0) {
            dp->stats[SN_DP_S_MALFORMED]++;
            return;
        }
        step = gso;
    }
    if (addr_len != u->key.alen) {
        dp->stats[SN_DP_S_UDP_SEND_ERRORS]++;
        return;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    if (addr_len == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(dport);
        memcpy(&sin->sin_addr, addr, 4);
        sl = sizeof *sin;
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(dport);
        memcpy(&sin6->sin6_addr, addr, 16);
        sl = sizeof *sin6;
    }
    uint32_t off = 0;
    do {
        uint32_t len = plen - off < step ? plen - off : step;
        ssize_t w;
        do
            w = sendto(u->fd, payload + off, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&ss, sl);
        while (w < 0 && errno == EINTR);
        off += len;
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                dp->stats[SN_DP_S_UDP_SEND_EAGAIN]++;
                continue;
            }
            if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
                udp_errors(dp, u);  /* the error that failed this send is queued */
            else
                dp->stats[SN_DP_S_UDP_SEND_ERRORS]++;
            return;
        }
        dp->stats[SN_DP_S_UDP_TO_HOST]++;
    } while (off < plen);
}

static uint32_t udp_host_event(struct sn_dp *dp, struct flow *u, uint32_t events, uint32_t big)
{
    if (events & EPOLLERR) {
        udp_errors(dp, u);
        return big;
    }
    int v6 = u->v6;
    uint32_t iphlen = v6 ? 40 : 20;
    size_t off = L3 + iphlen + 8;
    uint32_t fits = (uint32_t)dp->mtu - iphlen - 8;
    for (int i = 0; i < SN_DP_UDP_RECV_BUDGET; i++) {
        if (big >= SN_DP_UDP_BIG_MAX)
            break;
        /* room for a too-big datagram and the other flows' records (only a
         * thread's bounded queue can get this full; the socket is
         * level-triggered, so what stays unread is an event again) */
        if (dp->out.len + UDP_REC_MAX + HOST_RECS_RESERVE > dp->out.cap)
            break;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        ssize_t n;
        do
            n = recvfrom(u->fd, dp->tx + off, 65535 - 8, MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                udp_errors(dp, u);
            break;
        }
        mark_active(dp, u);
        uint8_t src[16];
        uint32_t alen;
        uint16_t sport;
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            memcpy(src, &s6->sin6_addr, 16);
            alen = 16;
            sport = ntohs(s6->sin6_port);
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            memcpy(src, &s4->sin_addr, 4);
            alen = 4;
            sport = ntohs(s4->sin_port);
        }
        if ((uint32_t)n > fits) {
            dp->stats[SN_DP_S_UDP_TOO_BIG]++;
            big++;
            struct sn_dp_udp_datagram *d =
                (struct sn_dp_udp_datagram *)rec_begin(dp, SN_DP_UDP_DATAGRAM, u->id, (uint32_t)(sizeof *d + (size_t)n));
            if (d) {
                memset(d, 0, sizeof *d);
                memcpy(d->addr, src, alen);
                d->addr_len = alen;
                d->port = sport;
                memcpy((uint8_t *)(d + 1), dp->tx + off, (size_t)n);
            }
            continue;
        }
        if (alen != u->key.alen) {
            dp->stats[SN_DP_S_UDP_SEND_ERRORS]++;
            continue;
        }
        const struct addrmap *m = map_find(dp->rev, dp->nrev, src, alen);
        const uint8_t *shown = m && m->blen == alen ? m->b : src;
        uint32_t l4len = 8 + (uint32_t)n;
        size_t l4 = ip_header(dp, v6, u->gmac, u->omac, shown, u->key.gaddr, P_UDP, l4len);
        uint8_t *uh = dp->tx + l4;
        uint32_t seed = sn_csum_partial(shown, alen, 0);
        seed = sn_csum_partial(u->key.gaddr, alen, seed);
        wr16(uh, sport);
        wr16(uh + 2, u->key.gport);
        wr16(uh + 4, (uint16_t)l4len);
        wr16(uh + 6, fold16(seed + P_UDP + l4len));
        memset(dp->tx, 0, VNET_LEN);
        dp->tx[0] = F_NEEDS_CSUM;
        wr16le(dp->tx + 6, (uint16_t)(l4 - VNET_LEN));
        wr16le(dp->tx + 8, 6);
        if (tap_write(dp, l4 + l4len))
            dp->stats[SN_DP_S_UDP_TO_GUEST]++;
    }
    return big;
}

/* ------------------------------------------------------------------ guest frames */

static int l4_ok(const uint8_t *seg, uint32_t len, const uint8_t *src, const uint8_t *dst, uint32_t alen,
                 uint8_t proto)
{
    uint32_t s = sn_csum_partial(src, alen, 0);
    s = sn_csum_partial(dst, alen, s);
    s += proto + len; /* len < 65536 */
    return sn_checksum(seg, len, s) == 0;
}

/* Destinations netstack's policy never sends as they are: the host's own
 * loopback and unspecified addresses, IPv4-mapped/-compatible forms of them,
 * link-local and the guest's fd00::/64 (mapped or refused by policy), and
 * multicast/broadcast.  Only an exact forward_map entry makes one of them
 * fast (it is then rewritten); otherwise the datagram goes to netstack, so a
 * guest cannot reach 127.0.0.1 around --disable-host-loopback. */
static int is_special_dst(const uint8_t *d, uint32_t alen)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t ula64[8] = {0xfd, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t zero12[12];
    if (alen == 4)
        return d[0] == 0 || d[0] == 127 || d[0] >= 224;
    return d[0] == 0xff                               /* multicast */
        || (d[0] == 0xfe && (d[1] & 0xc0) == 0x80)    /* fe80::/10 */
        || memcmp(d, ula64, 8) == 0                   /* fd00::/64 */
        || memcmp(d, zero12, 12) == 0                 /* ::, ::1, ::a.b.c.d */
        || memcmp(d, v4mapped, 12) == 0;              /* ::ffff:a.b.c.d */
}

static int is_slow_dst(const struct sn_dp *dp, const uint8_t *dst, uint32_t alen, uint16_t dport)
{
    if (dport == 0 || dport == 67)
        return 1;
    if (map_find(dp->slow, dp->nslow, dst, alen))
        return 1;
    return is_special_dst(dst, alen) && !map_find(dp->fwd, dp->nfwd, dst, alen);
}

static void frame_from_guest(struct sn_dp *dp, const uint8_t *b, size_t n, double now)
{
    if (n < L3) {
        slow_frame(dp, b, n, 1);
        return;
    }
    uint16_t etype = rd16(b + L3 - 2);
    const uint8_t *src, *dst;
    uint32_t alen, l4len;
    size_t l4;
    uint8_t proto;
    if (etype == 0x0800) {
        if (n < L3 + 20 || (b[L3] >> 4) != 4) {
            slow_frame(dp, b, n, 1);
            return;
        }
        if (b[L3] != 0x45) {
            slow_frame(dp, b, n, 0); /* IP options: netstack's */
            return;
        }
        uint32_t total = rd16(b + L3 + 2);
        if (total < 20 || L3 + total > n || sn_checksum(b + L3, 20, 0) != 0) {
            slow_frame(dp, b, n, 1);
            return;
        }
        if (rd16(b + L3 + 6) & 0x3fff) {
            slow_frame(dp, b, n, 0); /* a fragment */
            return;
        }
        proto = b[L3 + 9];
        src = b + L3 + 12;
        dst = b + L3 + 16;
        alen = 4;
        l4 = L3 + 20;
        l4len = total - 20;
    } else if (etype == 0x86dd) {
        if (n < L3 + 40 || (b[L3] >> 4) != 6) {
            slow_frame(dp, b, n, 1);
            return;
        }
        l4len = rd16(b + L3 + 4);
        if (L3 + 40 + (size_t)l4len > n) {
            slow_frame(dp, b, n, 1);
            return;
        }
        proto = b[L3 + 6];
        src = b + L3 + 8;
        dst = b + L3 + 24;
        alen = 16;
        l4 = L3 + 40;
    } else {
        slow_frame(dp, b, n, 0);
        return;
    }
    /* from here on: l4 + l4len <= n */
    struct key k;
    memset(&k, 0, sizeof k);
    k.alen = (uint8_t)alen;
    memcpy(k.gaddr, src, alen);
    if (proto == P_TCP) {
        if (l4len < 20) {
            slow_frame(dp, b, n, 1);
            return;
        }
        uint32_t doff = (uint32_t)(b[l4 + 12] >> 4) * 4;
        if (doff < 20 || doff > l4len) {
            slow_frame(dp, b, n, 1);
            return;
        }
        k.proto = P_TCP;
        k.gport = rd16(b + l4);
        k.rport = rd16(b + l4 + 2);
        memcpy(k.raddr, dst, alen);
        int32_t idx = find_key(dp, &k, key_hash(dp, &k));
        if (idx < 0 || memcmp(b + VNET_LEN, dp->flows[idx].omac, 6) != 0) {
            slow_frame(dp, b, n, 0);
            return;
        }
        if (!(b[0] & (F_NEEDS_CSUM | F_DATA_VALID)) && !l4_ok(b + l4, l4len, src, dst, alen, P_TCP)) {
            dp->stats[SN_DP_S_BAD_CHECKSUM]++;
            return;
        }
        tcp_segment(dp, &dp->flows[idx], b, n, l4, l4len, doff, now);
    } else if (proto == P_UDP) {
        if (l4len < 8) {
            slow_frame(dp, b, n, 1);
            return;
        }
        uint32_t ulen = rd16(b + l4 + 4);
        if (ulen < 8 || ulen > l4len) {
            slow_frame(dp, b, n, 1);
            return;
        }
        k.proto = P_UDP;
        k.gport = rd16(b + l4);
        int32_t idx = find_key(dp, &k, key_hash(dp, &k));
        if (idx < 0 || memcmp(b + VNET_LEN, dp->flows[idx].omac, 6) != 0) {
            slow_frame(dp, b, n, 0);
            return;
        }
        uint16_t dport = rd16(b + l4 + 2);
        if (is_slow_dst(dp, dst, alen, dport)) {
            slow_frame(dp, b, n, 0);
            return;
        }
        if (!(b[0] & (F_NEEDS_CSUM | F_DATA_VALID))) {
            int zero = b[l4 + 6] == 0 && b[l4 + 7] == 0;
            if ((zero && alen == 16) || (!zero && !l4_ok(b + l4, ulen, src, dst, alen, P_UDP))) {
                dp->stats[SN_DP_S_BAD_CHECKSUM]++;
                return;
            }
        }
        udp_datagram(dp, &dp->flows[idx], b, l4, ulen, dst, alen, dport);
    } else {
        slow_frame(dp, b, n, 0);
    }
}

/* ------------------------------------------------------------------ API */

struct sn_dp *sn_dp_new(int tap_fd, int mtu, uint32_t max_flows, int peek_offset)
{
    if (max_flows == 0 || max_flows > (1u << 24) || mtu < 68 || mtu > 65535)
        return NULL;
    struct sn_dp *dp = calloc(1, sizeof *dp);
    if (!dp)
        return NULL;
    dp->tap = tap_fd;
    dp->mtu = mtu;
    dp->peek_offset = peek_offset;
    dp->max_flows = max_flows;
    dp->timers = dp->tw_head = dp->tw_tail = -1;
    dp->notify_efd = dp->wake_efd = -1;
    pthread_mutex_init(&dp->mu, NULL);
    uint32_t cap = 1;
    while (cap < 2 * max_flows)
        cap <<= 1;
    dp->cap_mask = cap - 1;
    dp->activity_cap = 2 * max_flows;
    dp->ep = epoll_create1(EPOLL_CLOEXEC);
    dp->flows = calloc(max_flows, sizeof *dp->flows);
    dp->free_list = malloc(max_flows * sizeof *dp->free_list);
    dp->by_key = malloc(cap * sizeof *dp->by_key);
    dp->by_id = malloc(cap * sizeof *dp->by_id);
    dp->activity = malloc(dp->activity_cap * sizeof *dp->activity);
    dp->due = malloc(max_flows * sizeof *dp->due);
    dp->rx = malloc(TAP_BUF_LEN);
    dp->tx = malloc(TX_BUF_LEN);
    dp->scratch = malloc(SN_DP_INFLIGHT_MAX);
    if (dp->ep < 0 || !dp->flows || !dp->free_list || !dp->by_key || !dp->by_id || !dp->activity || !dp->due || !dp->rx ||
        !dp->tx || !dp->scratch) {
        sn_dp_free(dp);
        return NULL;
    }
    memset(dp->tx, 0, TX_BUF_LEN);
    memset(dp->by_key, 0xff, cap * sizeof *dp->by_key);
    memset(dp->by_id, 0xff, cap * sizeof *dp->by_id);
    for (uint32_t i = 0; i < max_flows; i++) {
        dp->free_list[i] = (int32_t)(max_flows - 1 - i);
        dp->flows[i].tprev = dp->flows[i].tnext = -2;
    }
    dp->nfree = max_flows;
    if (getrandom(&dp->seed, sizeof dp->seed, GRND_NONBLOCK) != sizeof dp->seed)
        dp->seed = (uint64_t)(uintptr_t)dp ^ 0x6a09e667f3bcc909ULL;
    return dp;
}

void sn_dp_free(struct sn_dp *dp)
{
    if (!dp)
        return;
    sn_dp_stop(dp); /* the thread ends before anything it uses goes */
    if (dp->flows) {
        for (uint32_t i = 0; i < dp->max_flows; i++) {
            struct flow *f = &dp->flows[i];
            if (f->used && f->key.proto == P_TCP && f->kernel_peek) {
                int off = -1;
                setsockopt(f->fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
            }
        }
    }
    if (dp->ep >= 0)
        close(dp->ep);
    free(dp->flows);
    free(dp->free_list);
    free(dp->by_key);
    free(dp->by_id);
    free(dp->activity);
    free(dp->due);
    free(dp->rx);
    free(dp->tx);
    free(dp->scratch);
    free(dp->queue);
    if (dp->notify_efd >= 0)
        close(dp->notify_efd);
    if (dp->wake_efd >= 0)
        close(dp->wake_efd);
    pthread_mutex_destroy(&dp->mu);
    free(dp);
}

/* The thread never runs while the (unlocked) setup calls run. */
int sn_dp_fileno(const struct sn_dp *dp) { return dp->threaded ? dp->notify_efd : dp->ep; }

/* The TIME_WAIT flow whose time is nearest its end, or -1. */
static int32_t oldest_time_wait(const struct sn_dp *dp) { return dp->tw_head; }

static int32_t alloc_flow(struct sn_dp *dp, uint64_t id, const struct key *k, uint64_t kh, int fd, int *err)
{
    int32_t old = find_key(dp, k, kh);
    int tw = old >= 0 && dp->flows[old].state == SN_DP_TIME_WAIT && dp->flows[old].key.proto == P_TCP;
    if (find_id(dp, id) >= 0 || (old >= 0 && !tw)) {
        *err = -EEXIST;  /* refused before anything changed */
        return -1;
    }
    if (tw) {
        /* a new incarnation of a key in TIME_WAIT (netstack opened it) */
        dp->stats[SN_DP_S_TIME_WAIT_REUSED]++;
        forget(dp, old);
    }
    if (dp->nfree == 0 && (old = oldest_time_wait(dp)) >= 0) {
        /* overflow policy: TIME_WAIT flows are recycled first (as netstack's) */
        dp->stats[SN_DP_S_TIME_WAIT_ENDED]++;
        forget(dp, old);
    }
    if (dp->nfree == 0) {
        *err = -ENOSPC;
        return -1;
    }
    int32_t idx = dp->free_list[dp->nfree - 1];
    struct flow *f = &dp->flows[idx];
    uint32_t gen = f->gen;
    memset(f, 0, sizeof *f);
    f->gen = gen;
    f->tprev = f->tnext = -2;
    f->key = *k;
    f->khash = kh;
    f->id = id;
    f->ihash = id_hash(dp, id);
    f->fd = fd;
    return idx;
}

static int commit_flow(struct sn_dp *dp, int32_t idx, uint32_t events)
{
    struct flow *f = &dp->flows[idx];
    struct epoll_event ev = {.events = events, .data.u64 = ((uint64_t)f->gen << 32) | (uint32_t)idx};
    if (epoll_ctl(dp->ep, EPOLL_CTL_ADD, f->fd, &ev) < 0)
        return -errno;
    f->used = 1;
    dp->nfree--;
    dp->nflows++;
    table_put(dp, dp->by_key, f->khash, idx);
    table_put(dp, dp->by_id, f->ihash, idx);
    return 0;
}

static void efd_kick(int fd);

/* Threaded mode, under mu: a timer was armed at `at`; kick the thread unless
 * it already sleeps to an earlier deadline (or is awake: it looks again). */
static void wake_for(struct sn_dp *dp, double at)
{
    if (dp->threaded && dp->sleep_until != -2.0 && (dp->sleep_until < 0 || at < dp->sleep_until))
        efd_kick(dp->wake_efd);
}

static int install_tcp(struct sn_dp *dp, const struct sn_tcp_flow *s)
{
    const struct sn_tcb *t = &s->tcb;
    if (s->state == SN_DP_SYN_RECEIVED || s->state == SN_DP_SYN_SENT) {
        if (t->snd_una + 1 != t->snd_nxt || t->snd_nxt != t->snd_max)
            return -EINVAL; /* only our SYN is outstanding */
        if (s->state == SN_DP_SYN_SENT && !t->ts_ok)
            return -EINVAL; /* the SYN offered timestamps (see syn_sent_segment) */
    } else if (s->state != SN_DP_ESTABLISHED || t->snd_una != t->snd_nxt || t->snd_nxt != t->snd_max) {
        return -EINVAL;
    }
    if ((s->addr_len != 4 && s->addr_len != 16) || t->rcv_wscale > 14 || t->snd_wscale > 14)
        return -EINVAL;
    struct key k;
    memset(&k, 0, sizeof k);
    k.proto = P_TCP;
    k.alen = (uint8_t)s->addr_len;
    k.gport = s->guest_port;
    k.rport = s->remote_port;
    memcpy(k.gaddr, s->guest_addr, s->addr_len);
    memcpy(k.raddr, s->remote_addr, s->addr_len);
    int err = 0;
    int32_t idx = alloc_flow(dp, s->flow, &k, key_hash(dp, &k), s->fd, &err);
    if (idx < 0)
        return err;
    struct flow *f = &dp->flows[idx];
    f->v6 = s->addr_len == 16;
    memcpy(f->gmac, s->guest_mac, 6);
    memcpy(f->omac, s->our_mac, 6);
    f->t = *t;
    f->t.ts_ok = t->ts_ok ? 1 : 0;
    uint32_t iphlen = f->v6 ? 40 : 20, opts = f->t.ts_ok ? 12 : 0;
    f->rcv_wnd_max = min64(s->rcv_buf_max, (int64_t)0xffff << f->t.rcv_wscale);
    f->our_mss = (uint32_t)dp->mtu - iphlen - 20;
    derive_mss(f);
    f->l4off = L3 + iphlen;
    f->tcp_hlen = 20 + opts;
    uint32_t ps = sn_csum_partial(s->remote_addr, s->addr_len, 0);
    f->pseudo = sn_csum_partial(s->guest_addr, s->addr_len, ps) + P_TCP;
    f->space_stale = 1;
    f->space_max = max64(0, t->host_space);
    f->batch = dp->batch - 1;
    /* header template: vnet (filled per frame), Ethernet, IP, TCP (+TS) */
    ip_header(dp, f->v6, f->gmac, f->omac, s->remote_addr, s->guest_addr, P_TCP, 0);
    memcpy(f->tmpl, dp->tx, f->l4off);
    uint8_t *th = f->tmpl + f->l4off;
    memset(th, 0, f->tcp_hlen);
    wr16(th, s->remote_port);
    wr16(th + 2, s->guest_port);
    th[12] = (uint8_t)((f->tcp_hlen / 4) << 4);
    if (opts) {
        th[20] = 1;
        th[21] = 1;
        th[22] = 8;
        th[23] = 10;
    }
    int rc = commit_flow(dp, idx, EV_TCP_IN);
    if (rc < 0)
        return rc;  /* e.g. EEXIST: the fd is another flow's, whose socket stays as it is */
    if (dp->peek_offset) {  /* no event is handled before this: we hold the lock */
        int off = 0;
        f->kernel_peek = setsockopt(f->fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off) == 0;
    }
    if (s->state == SN_DP_SYN_RECEIVED || s->state == SN_DP_SYN_SENT) {
        f->state = (uint8_t)s->state;
        timer_set(dp, f, T_RTX, s->now + t->rto); /* netstack's SYN(-ACK) retransmission timer */
        dp->handshake_at = s->now;
        wake_for(dp, f->timer_at);
    }
    return 0;
}

static int install_udp(struct sn_dp *dp, const struct sn_udp_flow *s)
{
    if (s->addr_len != 4 && s->addr_len != 16)
        return -EINVAL;
    struct key k;
    memset(&k, 0, sizeof k);
    k.proto = P_UDP;
    k.alen = (uint8_t)s->addr_len;
    k.gport = s->guest_port;
    memcpy(k.gaddr, s->guest_addr, s->addr_len);
    int err = 0;
    int32_t idx = alloc_flow(dp, s->flow, &k, key_hash(dp, &k), s->fd, &err);
    if (idx < 0)
        return err;
    struct flow *f = &dp->flows[idx];
    f->v6 = s->addr_len == 16;
    memcpy(f->gmac, s->guest_mac, 6);
    memcpy(f->omac, s->our_mac, 6);
    return commit_flow(dp, idx, EPOLLIN);
}

static void out_begin(struct sn_dp *dp, uint8_t *out, size_t cap)
{
    dp->out.buf = out;
    dp->out.cap = cap;
    dp->out.len = 0;
}

static void lock(struct sn_dp *dp) { pthread_mutex_lock(&dp->mu); }
static void unlock(struct sn_dp *dp) { pthread_mutex_unlock(&dp->mu); }

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The time of a call.  Synchronous: the caller's (the datapath reads no
 * clock; tests drive it with a manual one).  Threaded: the thread's clock
 * (CLOCK_MONOTONIC, the base of the event loop's time too), so that the
 * timestamps the two threads put on frames never go backwards. */
static double call_now(const struct sn_dp *dp, double now)
{
    return dp->threaded ? mono_now() : now;
}

/* ------------------------------------------------------------------ batches (both modes) */

static void batch_begin(struct sn_dp *dp)
{
    dp->batch++;
    dp->ntouched = 0;
}

static void batch_end(struct sn_dp *dp, double now)
{
    for (uint32_t i = 0; i < dp->ntouched; i++) {
        struct flow *f = &dp->flows[dp->touched[i].idx];
        if (f->used && f->gen == dp->touched[i].gen)
            flush(dp, f, now);
    }
    dp->ntouched = 0;
}

/* Read the TAP into dp->out until EAGAIN, the budget, or too little room
 * for the worst case of another frame.  Returns 0 or the errno of a failed
 * read (counted). */
static int tap_batch(struct sn_dp *dp, double now)
{
    int err = 0;
    batch_begin(dp);
    for (int i = 0; i < SN_DP_TAP_READ_BUDGET; i++) {
        if (dp->out.len + FRAME_RECS_MAX + FLUSH_RESERVE > dp->out.cap)
            break;
        ssize_t n = read(dp->tap, dp->rx, TAP_BUF_LEN);
        if (n < 0) {
            if (errno == EINTR) {
                i--;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                dp->stats[SN_DP_S_TAP_READ_ERRORS]++;
                err = errno;
            }
            break;
        }
        if (n == 0)
            break;
        dp->stats[SN_DP_S_TAP_FRAMES]++;
        frame_from_guest(dp, dp->rx, (size_t)n, now);
    }
    batch_end(dp, now);
    return err;
}

static void tcp_host_event(struct sn_dp *dp, struct flow *f, uint32_t events, double now)
{
    if (events & (EPOLLRDHUP | EPOLLHUP))
        f->host_fin = 1;
    if (events & EPOLLERR) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr) {
            host_reset(dp, f, soerr);
            return;
        }
    }
    if ((events & EPOLLOUT) && f->watching_out) {
        f->watching_out = 0;
        watch(dp, f, EV_TCP_IN);
        refresh_space(f);
        if (window_would_open(f))
            f->ack_pending = 1;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))
        f->want_output = 1;
    if (f->want_output || f->ack_pending)
        flush(dp, f, now);
}

/* Service the flows of n epoll events, in flow-id order (the thread's own
 * fds are not flows: their tags are beyond max_flows). */
static void host_events(struct sn_dp *dp, const struct epoll_event *evs, int n, double now)
{
    struct ready rd[SN_DP_HOST_EVENTS_MAX];
    int m = 0;
    for (int i = 0; i < n; i++) {
        uint32_t idx = (uint32_t)evs[i].data.u64, gen = (uint32_t)(evs[i].data.u64 >> 32);
        if (idx >= dp->max_flows || !dp->flows[idx].used || dp->flows[idx].gen != gen ||
            dp->flows[idx].state == SN_DP_TIME_WAIT) /* an event from before its socket went */
            continue;
        struct ready r = {dp->flows[idx].id, (int32_t)idx, evs[i].events};
        int j = m++;
        while (j > 0 && rd[j - 1].id > r.id) {
            rd[j] = rd[j - 1];
            j--;
        }
        rd[j] = r;
    }
    uint32_t big = 0;
    for (int i = 0; i < m; i++) {
        struct flow *f = &dp->flows[rd[i].idx];
        if (!f->used || f->id != rd[i].id || f->state == SN_DP_TIME_WAIT)
            continue;
        if (f->key.proto == P_TCP)
            tcp_host_event(dp, f, rd[i].aux, now);
        else
            big = udp_host_event(dp, f, rd[i].aux, big);
    }
}

static int ready_by_id(const void *a, const void *b)
{
    uint64_t x = ((const struct ready *)a)->id, y = ((const struct ready *)b)->id;
    return x < y ? -1 : x > y;
}

static void run_timers(struct sn_dp *dp, double now)
{
    /* due flows in flow-id order (the armed list holds only flows with data
     * in flight or a closed window) */
    uint32_t n = 0;
    for (int32_t i = dp->timers; i >= 0; i = dp->flows[i].tnext) {
        const struct flow *f = &dp->flows[i];
        if (f->timer != T_NONE && f->timer_at <= now) {
            dp->due[n].id = f->id;
            dp->due[n].idx = i;
            dp->due[n].aux = f->gen;
            n++;
        }
    }
    for (int32_t i = dp->tw_head; i >= 0 && dp->flows[i].timer_at <= now; i = dp->flows[i].tnext) {
        dp->due[n].id = dp->flows[i].id;
        dp->due[n].idx = i;
        dp->due[n].aux = dp->flows[i].gen;
        n++;
    }
    qsort(dp->due, n, sizeof *dp->due, ready_by_id);
    for (uint32_t k = 0; k < n; k++) {
        struct flow *f = &dp->flows[dp->due[k].idx];
        if (!f->used || f->gen != dp->due[k].aux || f->timer == T_NONE)
            continue;
        if (dp->out.len + EJECT_REC_MAX > dp->out.cap)
            break;
        struct sn_tcb *t = &f->t;
        int kind = f->timer;
        timer_set(dp, f, T_NONE, 0.0);
        if (kind == T_TIME_WAIT) {
            dp->stats[SN_DP_S_TIME_WAIT_ENDED]++;
            forget(dp, (int32_t)(f - dp->flows));
            continue;
        }
        if (kind == T_PERSIST) {
            eject(dp, f, SN_DP_R_ZERO_WINDOW, 0, now);
            continue;
        }
        if (t->snd_max == t->snd_una)
            continue;
        dp->stats[SN_DP_S_RTO_EXPIRIES]++;
        if (f->state == SN_DP_SYN_RECEIVED || f->state == SN_DP_SYN_SENT) {
            /* our SYN(-ACK) went unanswered: netstack retransmits it */
            eject(dp, f, SN_DP_R_TIMEOUT, 0, now);
            continue;
        }
        if (++f->retries >= SN_DP_MAX_RTO_RETRIES) {
            eject(dp, f, SN_DP_R_TIMEOUT, 0, now);
            continue;
        }
        if (t->snd_wnd == 0 && !f->fin_sent) {
            eject(dp, f, SN_DP_R_ZERO_WINDOW, 0, now);
            continue;
        }
        t->rto = t->rto * 2 < RTO_MAX_S ? t->rto * 2 : RTO_MAX_S;
        go_back_n(f);
        timer_set(dp, f, T_RTX, now + t->rto);
        flush(dp, f, now);
    }
}

static double next_deadline(const struct sn_dp *dp)
{
    double best = dp->tw_head >= 0 ? dp->flows[dp->tw_head].timer_at : -1.0;
    for (int32_t i = dp->timers; i >= 0; i = dp->flows[i].tnext) {
        const struct flow *f = &dp->flows[i];
        if (f->timer != T_NONE && (best < 0 || f->timer_at < best))
            best = f->timer_at;
    }
    return best;
}

/* ------------------------------------------------------------------ API: control (locked) */

int sn_dp_add_addr(struct sn_dp *dp, int which, const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen)
{
    struct addrmap *m;
    uint32_t *n;
    if (dp->threaded)
        return -EBUSY;
    if (which == 0) {
        m = dp->fwd;
        n = &dp->nfwd;
    } else if (which == 1) {
        m = dp->rev;
        n = &dp->nrev;
    } else {
        m = dp->slow;
        n = &dp->nslow;
        blen = 0;
    }
    if ((alen != 4 && alen != 16) || (which != 2 && blen != 4 && blen != 16))
        return -EINVAL;
    if (map_find(m, *n, a, alen))
        return -EEXIST;
    if (*n >= MAX_MAPS)
        return -ENOSPC;
    memset(&m[*n], 0, sizeof m[*n]);
    memcpy(m[*n].a, a, alen);
    m[*n].alen = alen;
    if (blen)
        memcpy(m[*n].b, b, blen);
    m[*n].blen = blen;
    (*n)++;
    return 0;
}

int sn_dp_install_tcp(struct sn_dp *dp, const struct sn_tcp_flow *s)
{
    lock(dp);
    int rc = install_tcp(dp, s);
    unlock(dp);
    return rc;
}

int sn_dp_install_udp(struct sn_dp *dp, const struct sn_udp_flow *s)
{
    lock(dp);
    int rc = install_udp(dp, s);
    unlock(dp);
    return rc;
}

long sn_dp_eject_tcp(struct sn_dp *dp, uint64_t flow, double now, uint8_t *out, size_t cap)
{
    lock(dp);
    now = call_now(dp, now);
    int32_t idx = find_id(dp, flow);
    long rc = -ENOENT;
    if (idx >= 0 && dp->flows[idx].key.proto == P_TCP && dp->flows[idx].state != SN_DP_TIME_WAIT) {
        out_begin(dp, out, cap);
        eject(dp, &dp->flows[idx], SN_DP_R_REQUESTED, 0, now);
        rc = (long)dp->out.len;
    }
    unlock(dp);
    return rc;
}

int sn_dp_remove_udp(struct sn_dp *dp, uint64_t flow)
{
    lock(dp);
    int32_t idx = find_id(dp, flow);
    int rc = -ENOENT;
    if (idx >= 0 && dp->flows[idx].key.proto == P_UDP) {
        forget(dp, idx);
        rc = 0;
    }
    unlock(dp);
    return rc;
}

int sn_dp_owns(struct sn_dp *dp, uint64_t flow)
{
    lock(dp);
    int32_t idx = find_id(dp, flow);
    int rc = idx >= 0 && dp->flows[idx].state != SN_DP_TIME_WAIT;
    unlock(dp);
    return rc;
}

long sn_dp_inject(struct sn_dp *dp, const uint8_t *frame, size_t len, double now, uint8_t *out, size_t cap)
{
    if (len > TAP_BUF_LEN)
        return -EMSGSIZE;
    lock(dp);
    now = call_now(dp, now);
    out_begin(dp, out, cap);
    memcpy(dp->rx, frame, len);
    batch_begin(dp);
    frame_from_guest(dp, dp->rx, len, now);
    batch_end(dp, now);
    long rc = (long)dp->out.len;
    double dl = next_deadline(dp);
    if (dl >= 0)
        wake_for(dp, dl); /* a timer it armed may be due before the thread wakes */
    unlock(dp);
    return rc;
}

/* ------------------------------------------------------------------ API: synchronous mode */

long sn_dp_tap_readable(struct sn_dp *dp, double now, uint8_t *out, size_t cap)
{
    lock(dp);
    now = call_now(dp, now);
    out_begin(dp, out, cap);
    int err = tap_batch(dp, now);
    long rc = (dp->out.len == 0 && err) ? -err : (long)dp->out.len;
    unlock(dp);
    return rc;
}

long sn_dp_host_readable(struct sn_dp *dp, double now, uint8_t *out, size_t cap)
{
    struct epoll_event evs[SN_DP_HOST_EVENTS_MAX];
    lock(dp);
    now = call_now(dp, now);
    out_begin(dp, out, cap);
    int n;
    do
        n = epoll_wait(dp->ep, evs, SN_DP_HOST_EVENTS_MAX, 0);
    while (n < 0 && errno == EINTR);
    long rc = n < 0 ? -errno : 0;
    if (n > 0)
        host_events(dp, evs, n, now);
    if (rc == 0)
        rc = (long)dp->out.len;
    unlock(dp);
    return rc;
}

long sn_dp_timers(struct sn_dp *dp, double now, uint8_t *out, size_t cap)
{
    lock(dp);
    now = call_now(dp, now);
    out_begin(dp, out, cap);
    run_timers(dp, now);
    long rc = (long)dp->out.len;
    unlock(dp);
    return rc;
}

double sn_dp_next_deadline(struct sn_dp *dp)
{
    lock(dp);
    double d = next_deadline(dp);
    unlock(dp);
    return d;
}

size_t sn_dp_take_activity(struct sn_dp *dp, uint64_t *out, size_t max)
{
    lock(dp);
    size_t k = 0;
    uint32_t i = 0;
    for (; i < dp->nactivity && k < max; i++) {
        int32_t idx = find_id(dp, dp->activity[i]);
        if (idx >= 0 && dp->flows[idx].active) {
            dp->flows[idx].active = 0;
            out[k++] = dp->activity[i];
        }
    }
    /* what did not fit stays for the next call */
    memmove(dp->activity, dp->activity + i, (dp->nactivity - i) * sizeof *dp->activity);
    dp->nactivity -= i;
    unlock(dp);
    return k;
}

void sn_dp_stats(struct sn_dp *dp, uint64_t *out)
{
    lock(dp);
    memcpy(out, dp->stats, sizeof dp->stats);
    unlock(dp);
}

const char *sn_dp_stat_name(int i) { return (i >= 0 && i < SN_DP_S_COUNT) ? stat_names[i] : NULL; }

/* ------------------------------------------------------------------ the datapath thread
 *
 * One loop: epoll_wait over dp->ep, which then holds the TAP (tag TAG_TAP,
 * level-triggered), the wake eventfd (TAG_WAKE) and the host sockets of the
 * flows, with the earliest flow deadline as its timeout.  Each wake-up is
 * one batch under mu: the TAP batch, the host events, the due timers — the
 * same functions as the synchronous calls, writing their records into the
 * queue.  When a batch queued something and Python has not been told yet,
 * notify_efd is written; sn_dp_take hands the queue over.  With less than
 * STALL_ROOM left in the queue the thread reads nothing (it waits for the
 * wake eventfd only) until Python took the queue: back-pressure, never a
 * silent drop (dp.queue_stalls counts it).  The thread blocks every signal
 * (they are the Python thread's business) and never touches a Python
 * object.
 */

static void efd_drain(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
}

static void efd_kick(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void *dp_main(void *arg)
{
    struct sn_dp *dp = arg;
    struct epoll_event evs[SN_DP_HOST_EVENTS_MAX];
    int spin = 0; /* the last batch was a small one (see SPIN_S) */
    lock(dp);
    while (!dp->stop) {
        double now = mono_now();
        if (!dp->stalled && QUEUE_CAP - dp->qlen < STALL_ROOM) {
            dp->stalled = 1;
            dp->stats[SN_DP_S_QUEUE_STALLS]++;
        }
        int stalled = dp->stalled, timeout = -1;
        double dl = next_deadline(dp), wake = dl;
        if (now - dp->handshake_at < CHURN_S && (wake < 0 || wake > now + NAP_S))
            wake = now + NAP_S;
        if (wake >= 0)
            timeout = wake <= now ? 0 : (int)ceil((wake - now) * 1000.0);
        dp->sleep_until = stalled ? -2.0 : wake;
        unlock(dp);
        int n;
        if (stalled) {
            struct pollfd p = {.fd = dp->wake_efd, .events = POLLIN};
            n = poll(&p, 1, -1);
        } else {
            n = 0;
            if (spin && timeout != 0) {
                /* poll a little before sleeping (see SPIN_S) */
                double until = now + SPIN_S;
                while ((n = epoll_wait(dp->ep, evs, SN_DP_HOST_EVENTS_MAX, 0)) == 0 && mono_now() < until)
                    if (SPIN_YIELD)
                        sched_yield();
            }
            if (n == 0)
                n = epoll_wait(dp->ep, evs, SN_DP_HOST_EVENTS_MAX, timeout);
        }
        spin = 0;
        lock(dp);
        dp->sleep_until = -2.0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* a bug (EBADF): stop rather than spin, and say so */
            int err = errno;
            out_begin(dp, dp->queue + dp->qlen, QUEUE_CAP - dp->qlen);
            uint8_t *body = rec_begin(dp, SN_DP_TAP_ERROR, 0, sizeof(int32_t));
            if (body)
                memcpy(body, &err, sizeof err);
            dp->qlen += dp->out.len;
            dp->notified = 1;
            efd_kick(dp->notify_efd);
            break;
        }
        if (stalled) {
            efd_drain(dp->wake_efd);
            continue;
        }
        now = call_now(dp, now);
        size_t before = dp->qlen;
        uint64_t tcp0 = dp->stats[SN_DP_S_TCP_TO_HOST_BYTES] + dp->stats[SN_DP_S_TCP_TO_GUEST_BYTES];
        uint64_t udp0 = dp->stats[SN_DP_S_UDP_TO_HOST] + dp->stats[SN_DP_S_UDP_TO_GUEST];
        out_begin(dp, dp->queue + dp->qlen, QUEUE_CAP - dp->qlen);
        int tap = 0;
        for (int i = 0; i < n; i++) {
            uint32_t tag = (uint32_t)evs[i].data.u64;
            if (tag == TAG_TAP)
                tap = 1;
            else if (tag == TAG_WAKE)
                efd_drain(dp->wake_efd);
            else
                spin = 1; /* a host socket */
        }
        spin |= tap;
        if (tap) {
            int err = tap_batch(dp, now);
            if (err && err != ENOBUFS && err != ENOMEM) {
                /* the TAP is unusable (e.g. EBADFD: the device went away):
                 * stop watching it and tell Python once */
                epoll_ctl(dp->ep, EPOLL_CTL_DEL, dp->tap, NULL);
                uint8_t *body = rec_begin(dp, SN_DP_TAP_ERROR, 0, sizeof(int32_t));
                if (body)
                    memcpy(body, &err, sizeof err);
                dp->tap_gone = 1;
            }
        }
        host_events(dp, evs, n, now);
        if (dl >= 0 && dl <= now)
            run_timers(dp, now);
        if (spin) {
            uint64_t tcp = dp->stats[SN_DP_S_TCP_TO_HOST_BYTES] + dp->stats[SN_DP_S_TCP_TO_GUEST_BYTES] - tcp0;
            uint64_t udp = dp->stats[SN_DP_S_UDP_TO_HOST] + dp->stats[SN_DP_S_UDP_TO_GUEST] - udp0;
            spin = (tcp > 0 || udp > 0) && tcp < SPIN_SMALL && udp <= 2;
            /* not while Python has work from us (a slow item queued) or
             * connections are being opened: the event loop needs the CPU */
            if (dp->out.len || dp->qlen || now - dp->handshake_at < SPIN_CHURN_S)
                spin = 0;
        }
        dp->qlen += dp->out.len;
        if (dp->qlen != before && !dp->notified) {
            dp->notified = 1;
            efd_kick(dp->notify_efd);
        }
    }
    unlock(dp);
    return NULL;
}

int sn_dp_start(struct sn_dp *dp)
{
    if (dp->threaded || dp->queue)  /* once per datapath: a stopped one stays stopped */
        return -EALREADY;
    int err = 0;
    dp->queue = malloc(QUEUE_CAP);
    dp->notify_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    dp->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!dp->queue || dp->notify_efd < 0 || dp->wake_efd < 0) {
        err = dp->queue ? errno : ENOMEM;
        goto fail;
    }
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TAG_TAP};
    struct epoll_event wev = {.events = EPOLLIN, .data.u64 = TAG_WAKE};
    if (epoll_ctl(dp->ep, EPOLL_CTL_ADD, dp->tap, &tev) < 0) {
        err = errno;
        goto fail;
    }
    if (epoll_ctl(dp->ep, EPOLL_CTL_ADD, dp->wake_efd, &wev) < 0) {
        err = errno;
        epoll_ctl(dp->ep, EPOLL_CTL_DEL, dp->tap, NULL);
        goto fail;
    }
    dp->qlen = 0;
    dp->stop = dp->stalled = dp->notified = 0;
    dp->sleep_until = -2.0; /* not asleep yet: it reads the deadlines first */
    dp->threaded = 1;
    /* the thread is born with every signal blocked */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&dp->thread, NULL, dp_main, dp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        dp->threaded = 0;
        epoll_ctl(dp->ep, EPOLL_CTL_DEL, dp->tap, NULL);
        epoll_ctl(dp->ep, EPOLL_CTL_DEL, dp->wake_efd, NULL);
        goto fail;
    }
    return 0;
fail:
    free(dp->queue);
    dp->queue = NULL;
    if (dp->notify_efd >= 0)
        close(dp->notify_efd);
    if (dp->wake_efd >= 0)
        close(dp->wake_efd);
    dp->notify_efd = dp->wake_efd = -1;
    return -err;
}

void sn_dp_stop(struct sn_dp *dp)
{
    if (!dp->threaded)
        return;
    lock(dp);
    dp->stop = 1;
    unlock(dp);
    efd_kick(dp->wake_efd);
    pthread_join(dp->thread, NULL);
    dp->threaded = 0;
    if (!dp->tap_gone)
        epoll_ctl(dp->ep, EPOLL_CTL_DEL, dp->tap, NULL);
    epoll_ctl(dp->ep, EPOLL_CTL_DEL, dp->wake_efd, NULL);
}

long sn_dp_take(struct sn_dp *dp, uint8_t *out, size_t cap)
{
    if (cap < QUEUE_CAP)
        return -EINVAL;
    lock(dp);
    if (dp->notify_efd >= 0)
        efd_drain(dp->notify_efd);
    size_t n = dp->qlen;
    if (n)
        memcpy(out, dp->queue, n);
    dp->qlen = 0;
    dp->notified = 0;
    if (dp->stalled) {
        dp->stalled = 0;
        efd_kick(dp->wake_efd);
    }
    unlock(dp);
    return (long)n;
}
