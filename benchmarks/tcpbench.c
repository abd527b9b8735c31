/*
 * tcpbench: tiny TCP request/response and connection-rate tools for the
 * slirpnet benchmark harness (benchmarks/).  Compiled at benchmark time.
 *
 * Python's own per-call overhead (tens of µs) would swamp a ~45 µs kernel
 * round trip, so the timing loops live here.  Every mode is bounded in time
 * and prints exactly one JSON object on stdout; errors also print
 * {"error": "..."} and exit non-zero.
 *
 *   tcpbench rr-server ADDR PORT
 *       accept connections one after another; echo every byte back.
 *   tcpbench rr-client ADDR PORT SECONDS MAX_SAMPLES
 *       one connection, TCP_NODELAY; 1-byte request, 1-byte response;
 *       200 warm-up round trips, then samples until SECONDS or MAX_SAMPLES;
 *       prints min/median/p99/mean in µs.
 *   tcpbench cr-server ADDR PORT
 *       accept; read 1 byte; write 1 byte; wait for EOF; close.
 *   tcpbench cr-client ADDR PORT BATCHES SECONDS
 *       BATCHES back-to-back batches of SECONDS each, connections one after
 *       another: connect, write 1 byte, read 1 byte, close (the client
 *       closes first); prints the rate of each batch.  A connection that
 *       fails or stalls (3 s) counts as an error and the run goes on (the
 *       time it took stays in the rate); failing before any connection
 *       succeeded is an error of the whole run.
 *
 * ADDR is a numeric IPv4 or IPv6 address (e.g. 10.0.2.2, fd00::2).
 *
 * Every blocking step has a 3 s limit (OP_TIMEOUT_MS); a step that times out
 * ends the run with an error.  Servers run until they are killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define OP_TIMEOUT_MS 3000
#define RR_WARMUP 200
#define CR_MAX_BATCHES 16

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fail(const char *what)
{
	/* strerror text has no quotes or backslashes: safe inside JSON. */
	printf("{\"error\": \"%s: %s\"}\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void fail_msg(const char *msg)
{
	printf("{\"error\": \"%s\"}\n", msg);
	fflush(stdout);
	exit(1);
}

/* ADDR is a numeric IPv4 or IPv6 address (no brackets, no zone). */
static struct sockaddr_storage parse_addr(const char *addr, const char *port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *sa4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sa6 = (struct sockaddr_in6 *)&ss;
	unsigned short p = htons((unsigned short)atoi(port));
	if (inet_pton(AF_INET, addr, &sa4->sin_addr) == 1) {
		sa4->sin_family = AF_INET;
		sa4->sin_port = p;
	} else if (inet_pton(AF_INET6, addr, &sa6->sin6_addr) == 1) {
		sa6->sin6_family = AF_INET6;
		sa6->sin6_port = p;
	} else {
		fail_msg("bad IPv4 or IPv6 address");
	}
	return ss;
}

static socklen_t addr_len(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static void set_nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void set_timeouts(int fd)
{
	struct timeval tv = { OP_TIMEOUT_MS / 1000, (OP_TIMEOUT_MS % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int listen_on(const char *addr, const char *port)
{
	struct sockaddr_storage sa = parse_addr(addr, port);
	int one = 1;
	int fd = socket(sa.ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		fail("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&sa, addr_len(&sa)) < 0)
		fail("bind");
	if (listen(fd, 128) < 0)
		fail("listen");
	return fd;
}

/* Connect with a time limit; returns the fd or -1 with errno set. */
static int connect_to(const struct sockaddr_storage *sa)
{
	int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)sa, addr_len(sa)) < 0) {
		if (errno != EINPROGRESS)
			goto err;
		struct pollfd p = { fd, POLLOUT, 0 };
		int n = poll(&p, 1, OP_TIMEOUT_MS);
		if (n == 0) {
			errno = ETIMEDOUT;
			goto err;
		}
		if (n < 0)
			goto err;
		int soerr = 0;
		socklen_t len = sizeof soerr;
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
		if (soerr) {
			errno = soerr;
			goto err;
		}
	}
	int flags = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
	set_timeouts(fd);
	return fd;
err:;
	int saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

/* One byte each way; 0 on success, -1 with errno set. */
static int exchange_byte(int fd, char *b)
{
	ssize_t n = write(fd, b, 1);
	if (n != 1)
		return -1;
	n = read(fd, b, 1);
	if (n == 0)
		errno = ECONNRESET;
	else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		errno = ETIMEDOUT; /* SO_RCVTIMEO */
	return n == 1 ? 0 : -1;
}

/* Read until the peer's FIN; 0 on EOF, -1 with errno set. */
static int wait_eof(int fd)
{
	char buf[16];
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) > 0)
		;
	return n == 0 ? 0 : -1;
}

static __attribute__((noreturn)) void rr_server(const char *addr, const char *port)
{
	int lfd = listen_on(addr, port);
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			continue;
		set_nodelay(fd);
		char b;
		while (read(fd, &b, 1) == 1)
			if (write(fd, &b, 1) != 1)
				break;
		close(fd);
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int rr_client(const char *addr, const char *port, double seconds, long max_samples)
{
	struct sockaddr_storage sa = parse_addr(addr, port);
	int fd = connect_to(&sa);
	if (fd < 0)
		fail("connect");
	set_nodelay(fd);
	char b = 'x';
	for (int i = 0; i < RR_WARMUP; i++)
		if (exchange_byte(fd, &b) < 0)
			fail("warm-up round trip");
	double *us = malloc(sizeof(double) * (size_t)max_samples);
	if (!us)
		fail("malloc");
	long n = 0;
	double end = now_s() + seconds, sum = 0;
	while (n < max_samples) {
		double t0 = now_s();
		if (exchange_byte(fd, &b) < 0)
			fail("round trip");
		double t1 = now_s();
		us[n++] = (t1 - t0) * 1e6;
		sum += (t1 - t0) * 1e6;
		if (t1 >= end)
			break;
	}
	close(fd);
	qsort(us, (size_t)n, sizeof(double), cmp_double);
	/* Nearest-rank percentiles. */
	long med = (n + 1) / 2 - 1, p99 = (long)((n * 99 + 99) / 100) - 1;
	printf("{\"samples\": %ld, \"min_us\": %.2f, \"median_us\": %.2f, \"p99_us\": %.2f, \"mean_us\": %.2f}\n",
	       n, us[0], us[med], us[p99], sum / n);
	free(us);
	return 0;
}

static __attribute__((noreturn)) void cr_server(const char *addr, const char *port)
{
	int lfd = listen_on(addr, port);
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			continue;
		set_timeouts(fd);
		char b;
		if (read(fd, &b, 1) == 1 && write(fd, &b, 1) == 1)
			wait_eof(fd);
		close(fd);
	}
}

static int cr_client(const char *addr, const char *port, int batches, double seconds)
{
	struct sockaddr_storage sa = parse_addr(addr, port);
	long done[CR_MAX_BATCHES] = { 0 }, errors[CR_MAX_BATCHES] = { 0 }, total_done = 0;
	double took[CR_MAX_BATCHES] = { 0 };
	int last_errno = 0;
	if (batches < 1 || batches > CR_MAX_BATCHES)
		fail_msg("BATCHES must be 1..16");
	for (int i = 0; i < batches; i++) {
		double t0 = now_s(), end = t0 + seconds, t1 = t0;
		while (t1 < end) {
			int fd = connect_to(&sa);
			char b = 'x';
			if (fd < 0 || exchange_byte(fd, &b) < 0) {
				last_errno = errno;
				errors[i]++;
				if (total_done == 0) /* it never worked: nothing to measure */
					fail("connection");
			} else {
				done[i]++;
				total_done++;
			}
			if (fd >= 0)
				close(fd);
			t1 = now_s();
		}
		took[i] = t1 - t0;
	}
	printf("{\"batches\": [");
	for (int i = 0; i < batches; i++)
		printf("%s{\"connections\": %ld, \"errors\": %ld, \"seconds\": %.4f, \"rate\": %.1f}", i ? ", " : "",
		       done[i], errors[i], took[i], done[i] / took[i]);
	printf("], \"last_error\": \"%s\"}\n", last_errno ? strerror(last_errno) : "");
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	if (argc == 4 && !strcmp(argv[1], "rr-server"))
		rr_server(argv[2], argv[3]);
	if (argc == 6 && !strcmp(argv[1], "rr-client"))
		return rr_client(argv[2], argv[3], atof(argv[4]), atol(argv[5]));
	if (argc == 4 && !strcmp(argv[1], "cr-server"))
		cr_server(argv[2], argv[3]);
	if (argc == 6 && !strcmp(argv[1], "cr-client"))
		return cr_client(argv[2], argv[3], atoi(argv[4]), atof(argv[5]));
	fprintf(stderr, "usage: tcpbench rr-server|cr-server ADDR PORT\n"
			"       tcpbench rr-client ADDR PORT SECONDS MAX_SAMPLES\n"
			"       tcpbench cr-client ADDR PORT BATCHES SECONDS\n");
	return 2;
}
