/* SPDX-License-Identifier: MIT */
/*
 * nsq_proxy.h - a recording TCP proxy between an NSQ consumer and its
 * fake_nsqd children, plus the helpers the NSQ consumer tests share around
 * it (starting a fake_nsqd with fast timers, publishing, opening a source).
 *
 * The proxy is one thread of the test: it forwards bytes both ways and
 * parses both directions, so a case can assert on what the stand-in
 * actually received and sent.  Client bytes: the magic, IDENTIFY (its body
 * skipped), then command lines; RDY / TOUCH / FIN / REQ are counted and
 * logged.  Server bytes: frames; every message frame is logged with its
 * id, attempts and the head of its body.  Every event goes into px.ev in
 * the order the proxy saw it, stamped with CLOCK_MONOTONIC: a delivery is
 * logged before it is forwarded and a FIN/REQ before it is forwarded, so
 * for one connection the log orders a message's delivery before the
 * client's answer to it, and an answer before nsqd's reaction to it.
 *
 * The sum of RDY over live connections is counted once all client sockets
 * are drained (a pass that reads nothing), so a RDY moved from one
 * connection to another (the consumer writes the decrease first) is never
 * counted twice.  "In flight" is, per connection, deliveries forwarded
 * minus FIN/REQ seen; as the proxy sees deliveries after nsqd sends them
 * and answers before nsqd gets them, it never exceeds nsqd's own count.
 *
 * Header-only, one proxy per test process (the static px); px.mu guards
 * every field of px below it.  No compression or TLS through the proxy:
 * it parses plaintext.
 */
#ifndef NSQ_PROXY_H
#define NSQ_PROXY_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sluice/nsq.h>

#include "check.h"
#include "fake_nsqd_child.h"

#define PX_MAXC     4    /* upstreams */
#define PX_MAXP     64   /* proxied connections over the proxy's life */
#define PX_MAXEV    8192 /* logged events */
#define PX_BODY     32   /* body bytes kept per delivery (NUL-terminated) */
#define PX_TOPIC    "t"
#define PX_CHANNEL  "c"
#define PX_ID_LEN   16
#define PX_MSG_HEAD 26 /* timestamp 8, attempts 2, id 16 */

enum px_kind { PX_EV_MSG, PX_EV_RDY, PX_EV_FIN, PX_EV_REQ, PX_EV_TOUCH };

/* One thing the stand-in sent (MSG) or received (the rest). */
struct px_ev {
	int64_t ns; /* CLOCK_MONOTONIC when the proxy saw it */
	enum px_kind kind;
	int pair;     /* proxied connection */
	uint32_t arg; /* MSG: attempts; RDY: count; REQ: delay ms */
	char id[PX_ID_LEN + 1];
	char body[PX_BODY]; /* MSG: its head; FIN/REQ/TOUCH: its delivery's */
};

struct px_pair {
	int cfd, ufd;
	bool live;
	uint32_t rdy;
	uint32_t inflight;
	int magic; /* client magic bytes still to skip */
	char line[128];
	size_t len;
	uint32_t skip; /* IDENTIFY body bytes still to skip */
	int hdr;       /* size bytes still to read after IDENTIFY */
	/* server frame parser */
	uint8_t fh[8];
	size_t fhn;
	uint32_t fleft; /* data bytes of the current frame still to come */
	uint32_t ftype;
	uint8_t fd[PX_MSG_HEAD + PX_BODY];
	size_t fdn;
	uint32_t flen; /* data length of the current frame */
};

static struct {
	pthread_mutex_t mu;
	pthread_t t;
	int lfd[PX_MAXC], up[PX_MAXC], port[PX_MAXC], n;
	struct px_pair p[PX_MAXP];
	int np;
	int wake[2];
	bool stop;
	/* what the stand-ins received and sent (mu) */
	uint64_t rdy_sum, max_rdy_sum, touches, fins, reqs, rdy_cmds, msgs;
	uint64_t inflight, max_inflight;
	uint32_t last_rdy;
	bool zero_seen; /* the sum fell to 0 after being > 0 */
	int64_t last_touch_ms;
	struct px_ev ev[PX_MAXEV];
	size_t nev;
} px = { .mu = PTHREAD_MUTEX_INITIALIZER };

static inline int64_t
px_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Log an event (mu held); a full log fails the case. */
static inline struct px_ev *
px_log(enum px_kind k, int pair, uint32_t arg, const char *id)
{
	struct px_ev *e;

	if (px.nev == PX_MAXEV)
		CHECK_FAIL("proxy event log full");
	e = &px.ev[px.nev++];
	memset(e, 0, sizeof(*e));
	e->ns = px_now_ns();
	e->kind = k;
	e->pair = pair;
	e->arg = arg;
	if (id)
		memcpy(e->id, id, PX_ID_LEN);
	return e;
}

/* The body of @id's latest delivery, into @e (mu held). */
static inline void
px_body_of(struct px_ev *e)
{
	size_t i = px.nev - 1;

	while (i-- > 0)
		if (px.ev[i].kind == PX_EV_MSG &&
		    memcmp(px.ev[i].id, e->id, PX_ID_LEN) == 0) {
			memcpy(e->body, px.ev[i].body, PX_BODY);
			return;
		}
}

static inline void
px_recount(void)
{
	uint64_t sum = 0;
	int i;

	for (i = 0; i < px.np; i++)
		if (px.p[i].live)
			sum += px.p[i].rdy;
	if (sum == 0 && px.rdy_sum > 0)
		px.zero_seen = true;
	px.rdy_sum = sum;
	if (sum > px.max_rdy_sum)
		px.max_rdy_sum = sum;
}

/* A FIN or REQ for a message of pair @p (mu held). */
static inline void
px_answered(struct px_pair *p)
{
	if (p->inflight) {
		p->inflight--;
		px.inflight--;
	}
}

static inline void
px_line(struct px_pair *p)
{
	int pi = (int)(p - px.p);
	struct px_ev *e;

	p->line[p->len] = '\0';
	if (strcmp(p->line, "IDENTIFY") == 0) {
		p->hdr = 4;
		p->skip = 0;
	} else if (strncmp(p->line, "RDY ", 4) == 0) {
		p->rdy = (uint32_t)strtoul(p->line + 4, NULL, 10);
		px.last_rdy = p->rdy;
		px.rdy_cmds++;
		(void)px_log(PX_EV_RDY, pi, p->rdy, NULL);
	} else if (strncmp(p->line, "TOUCH ", 6) == 0 && p->len >= 6 + 16) {
		px.touches++;
		px.last_touch_ms = mono_ms();
		px_body_of(px_log(PX_EV_TOUCH, pi, 0, p->line + 6));
	} else if (strncmp(p->line, "FIN ", 4) == 0 && p->len >= 4 + 16) {
		px.fins++;
		px_answered(p);
		px_body_of(px_log(PX_EV_FIN, pi, 0, p->line + 4));
	} else if (strncmp(p->line, "REQ ", 4) == 0 && p->len >= 4 + 16) {
		px.reqs++;
		px_answered(p);
		e = px_log(PX_EV_REQ, pi,
			   (uint32_t)strtoul(p->line + 4 + 17, NULL, 10),
			   p->line + 4);
		px_body_of(e);
	}
	p->len = 0;
}

/* Parse client bytes (px.mu held). */
static inline void
px_parse(struct px_pair *p, const uint8_t *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (p->magic > 0) {
			p->magic--;
			continue;
		}
		if (p->hdr > 0) {
			p->skip = p->skip << 8 | b[i];
			p->hdr--;
			continue;
		}
		if (p->skip > 0) {
			p->skip--;
			continue;
		}
		if (b[i] == '\n')
			px_line(p);
		else if (p->len + 1 < sizeof(p->line))
			p->line[p->len++] = (char)b[i];
	}
}

/* A whole message frame's head is in p->fd (mu held). */
static inline void
px_message(struct px_pair *p)
{
	struct px_ev *e;
	size_t blen = p->flen - PX_MSG_HEAD;

	if (p->flen < PX_MSG_HEAD)
		return;
	e = px_log(PX_EV_MSG, (int)(p - px.p),
		   (uint32_t)p->fd[8] << 8 | p->fd[9], (char *)p->fd + 10);
	if (blen > PX_BODY - 1)
		blen = PX_BODY - 1;
	memcpy(e->body, p->fd + PX_MSG_HEAD, blen);
	px.msgs++;
	p->inflight++;
	if (++px.inflight > px.max_inflight)
		px.max_inflight = px.inflight;
}

/* Parse server bytes: size (4), type (4), data (px.mu held). */
static inline void
px_parse_server(struct px_pair *p, const uint8_t *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (p->fhn < 8) {
			p->fh[p->fhn++] = b[i];
			if (p->fhn < 8)
				continue;
			p->flen = ((uint32_t)p->fh[0] << 24 |
				   (uint32_t)p->fh[1] << 16 |
				   (uint32_t)p->fh[2] << 8 | p->fh[3]) -
				  4;
			p->ftype = (uint32_t)p->fh[7];
			p->fleft = p->flen;
			p->fdn = 0;
		} else {
			if (p->fdn < sizeof(p->fd))
				p->fd[p->fdn++] = b[i];
			p->fleft--;
		}
		if (p->fleft == 0) {
			if (p->ftype == 2)
				px_message(p);
			p->fhn = 0;
		}
	}
}

static inline int
px_connect(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static inline void
px_kill(struct px_pair *p)
{
	if (!p->live)
		return;
	close(p->cfd);
	close(p->ufd);
	p->live = false;
	p->rdy = 0;
	px.inflight -= p->inflight; /* nsqd times those out */
	p->inflight = 0;
}

static inline void *
px_main(void *arg)
{
	struct pollfd f[PX_MAXC + 2 * PX_MAXP + 1];
	int map[PX_MAXC + 2 * PX_MAXP + 1];
	static uint8_t buf[65536]; /* only this thread uses it */

	(void)arg;
	for (;;) {
		int k = 0, i, j;

		pthread_mutex_lock(&px.mu);
		if (px.stop) {
			pthread_mutex_unlock(&px.mu);
			break;
		}
		f[k] = (struct pollfd){ .fd = px.wake[0], .events = POLLIN };
		map[k++] = -1;
		for (i = 0; i < px.n; i++) {
			f[k] = (struct pollfd){ .fd = px.lfd[i],
						.events = POLLIN };
			map[k++] = 1000 + i;
		}
		for (i = 0; i < px.np; i++) {
			if (!px.p[i].live)
				continue;
			f[k] = (struct pollfd){ .fd = px.p[i].cfd,
						.events = POLLIN };
			map[k++] = 2 * i;
			f[k] = (struct pollfd){ .fd = px.p[i].ufd,
						.events = POLLIN };
			map[k++] = 2 * i + 1;
		}
		pthread_mutex_unlock(&px.mu);
		if (poll(f, (nfds_t)k, 1000) <= 0)
			continue;
		pthread_mutex_lock(&px.mu);
		for (j = 1; j < k; j++) {
			struct px_pair *p;
			ssize_t r;

			if (!f[j].revents)
				continue;
			if (map[j] >= 1000) {
				int cfd = accept(f[j].fd, NULL, NULL);
				int ufd =
					cfd >= 0 ? px_connect(
							   px.up[map[j] - 1000])
						 : -1;

				if (cfd >= 0 && (ufd < 0 || px.np == PX_MAXP)) {
					close(cfd);
					if (ufd >= 0)
						close(ufd);
					continue;
				}
				if (cfd >= 0)
					px.p[px.np++] = (struct px_pair){
						.cfd = cfd,
						.ufd = ufd,
						.live = true,
						.magic = 4,
					};
				continue;
			}
			p = &px.p[map[j] / 2];
			if (!p->live || map[j] % 2 == 0)
				continue;
			r = read(p->ufd, buf, sizeof(buf));
			if (r <= 0) {
				px_kill(p);
			} else {
				px_parse_server(p, buf, (size_t)r);
				(void)!write(p->cfd, buf, (size_t)r);
			}
		}
		/* Client bytes: read every connection until a whole pass
		 * finds nothing, then count: whatever was written before
		 * the last bytes seen has been seen too (top comment). */
		for (;;) {
			bool more = false;

			for (i = 0; i < px.np; i++) {
				struct px_pair *p = &px.p[i];
				ssize_t r;

				if (!p->live)
					continue;
				r = recv(p->cfd, buf, sizeof(buf),
					 MSG_DONTWAIT);
				if (r == 0 || (r < 0 && errno != EAGAIN)) {
					px_kill(p);
					more = true;
				} else if (r > 0) {
					px_parse(p, buf, (size_t)r);
					(void)!write(p->ufd, buf, (size_t)r);
					more = true;
				}
			}
			if (!more)
				break;
		}
		px_recount();
		pthread_mutex_unlock(&px.mu);
		if (f[0].revents) {
			char c;

			(void)!read(px.wake[0], &c, 1);
		}
	}
	return NULL;
}

/* Proxy a listener on a free port to each of @up[0..@n). */
static inline void
px_start(const int *up, int n)
{
	int i;

	CHECK_OK(pipe(px.wake));
	for (i = 0; i < n; i++) {
		struct sockaddr_in a = { .sin_family = AF_INET };
		socklen_t len = sizeof(a);
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		CHECK_OK(bind(fd, (struct sockaddr *)&a, sizeof(a)));
		CHECK_OK(listen(fd, 16));
		CHECK_OK(getsockname(fd, (struct sockaddr *)&a, &len));
		px.lfd[i] = fd;
		px.up[i] = up[i];
		px.port[i] = ntohs(a.sin_port);
	}
	px.n = n;
	CHECK_OK(pthread_create(&px.t, NULL, px_main, NULL));
}

static inline void
px_stop(void)
{
	int i;

	pthread_mutex_lock(&px.mu);
	px.stop = true;
	pthread_mutex_unlock(&px.mu);
	(void)!write(px.wake[1], "x", 1);
	CHECK_OK(pthread_join(px.t, NULL));
	for (i = 0; i < px.np; i++)
		px_kill(&px.p[i]);
	for (i = 0; i < px.n; i++)
		close(px.lfd[i]);
}

enum pxf {
	PX_RDY_SUM,
	PX_MAX_RDY_SUM,
	PX_TOUCHES,
	PX_FINS,
	PX_REQS,
	PX_LAST_RDY,
	PX_ZERO_SEEN,
	PX_LAST_TOUCH,
	PX_MSGS,
	PX_INFLIGHT,
	PX_MAX_INFLIGHT,
	PX_RDY_CMDS,
	PX_NEV
};

/* One of the proxy's records, read under its lock. */
static inline int64_t
px_get(enum pxf f)
{
	int64_t v = 0;

	pthread_mutex_lock(&px.mu);
	switch (f) {
	case PX_RDY_SUM:
		v = (int64_t)px.rdy_sum;
		break;
	case PX_MAX_RDY_SUM:
		v = (int64_t)px.max_rdy_sum;
		break;
	case PX_TOUCHES:
		v = (int64_t)px.touches;
		break;
	case PX_FINS:
		v = (int64_t)px.fins;
		break;
	case PX_REQS:
		v = (int64_t)px.reqs;
		break;
	case PX_LAST_RDY:
		v = px.last_rdy;
		break;
	case PX_ZERO_SEEN:
		v = px.zero_seen;
		break;
	case PX_LAST_TOUCH:
		v = px.last_touch_ms;
		break;
	case PX_MSGS:
		v = (int64_t)px.msgs;
		break;
	case PX_INFLIGHT:
		v = (int64_t)px.inflight;
		break;
	case PX_MAX_INFLIGHT:
		v = (int64_t)px.max_inflight;
		break;
	case PX_RDY_CMDS:
		v = (int64_t)px.rdy_cmds;
		break;
	case PX_NEV:
		v = (int64_t)px.nev;
		break;
	}
	pthread_mutex_unlock(&px.mu);
	return v;
}

/* Events of @kind whose body starts with @prefix ("" = any). */
static inline int64_t
px_count(enum px_kind kind, const char *prefix)
{
	size_t i, pl = strlen(prefix);
	int64_t c = 0;

	pthread_mutex_lock(&px.mu);
	for (i = 0; i < px.nev; i++)
		c += px.ev[i].kind == kind &&
		     strncmp(px.ev[i].body, prefix, pl) == 0;
	pthread_mutex_unlock(&px.mu);
	return c;
}

/* Copy the log into a new array (free() it); *@n gets its length. */
static inline struct px_ev *
px_snapshot(size_t *n)
{
	struct px_ev *ev;

	pthread_mutex_lock(&px.mu);
	*n = px.nev;
	ev = malloc((px.nev ? px.nev : 1) * sizeof(*ev));
	CHECK(ev != NULL);
	memcpy(ev, px.ev, px.nev * sizeof(*ev));
	pthread_mutex_unlock(&px.mu);
	return ev;
}

/* ---- the NSQ test helpers around it ------------------------------------ */

#define WAIT_FOR(cond) WAIT_UNTIL(cond, "WAIT_FOR: " #cond)

/* fake_nsqd on @port (0 = any) with fast timers and the NULL-terminated
 * @extra arguments (may be NULL). */
static inline void
nsqd_start(struct child *c, int port, const char *const *extra)
{
	char p[16];
	const char *args[16] = { p, "--min-interval", "100" };
	size_t i = 3;

	while (extra && *extra && i < 15)
		args[i++] = *extra++;
	args[i] = NULL;
	snprintf(p, sizeof(p), "%d", port);
	child_start(c, "SLUICE_FAKE_NSQD", "fake_nsqd", args);
}

static inline void
pub(struct child *c, const char *body)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "pub " PX_TOPIC " %s", body);
	child_ctl(c, cmd);
}

static inline struct sluice_nsq_stats
nsq_stats(struct sluice_nsq *n)
{
	struct sluice_nsq_stats st;

	sluice_nsq_stats(n, &st);
	return st;
}

/* Topic, channel and short timers: 200 ms heartbeats, 1 s leases. */
static inline void
nsq_cfg_base(struct sluice_nsq_config *cfg)
{
	sluice_nsq_config_init(cfg);
	cfg->topic = PX_TOPIC;
	cfg->channel = PX_CHANNEL;
	cfg->heartbeat_ms = 200;
	cfg->msg_timeout_ms = 1000;
	cfg->reconnect_min_ns = 50 * SLUICE_NS_PER_MS;
	cfg->reconnect_max_ns = 200 * SLUICE_NS_PER_MS;
	cfg->rdy_redistribute_ns = 50 * SLUICE_NS_PER_MS;
	cfg->low_rdy_idle_ns = 200 * SLUICE_NS_PER_MS;
	cfg->low_rdy_ns = 400 * SLUICE_NS_PER_MS;
	cfg->backoff_unit_ns = 200 * SLUICE_NS_PER_MS;
	cfg->backoff_max_ns = 2 * SLUICE_NS_PER_S;
}

static inline struct sluice_nsq *
open_nsq(struct sluice_nsq_config *cfg)
{
	struct sluice_nsq *n = NULL;
	char err[256];
	int rc = sluice_nsq_open(cfg, err, sizeof(err), &n);

	if (rc)
		fprintf(stderr, "  open: %s (%s)\n", err, sluice_err_name(rc));
	CHECK_OK(rc);
	return n;
}

static inline const char *
addr_of(char *buf, size_t cap, int port)
{
	snprintf(buf, cap, "127.0.0.1:%d", port);
	return buf;
}

/* Aim @cfg at the one nsqd on 127.0.0.1:@port; @a (32 bytes) and @addrs
 * hold the address until the open copies it. */
static inline void
aim(struct sluice_nsq_config *cfg, const char **addrs, char *a, int port)
{
	addrs[0] = addr_of(a, 32, port);
	cfg->nsqd = addrs;
	cfg->n_nsqd = 1;
}

/* Open a source with @cfg on the proxy's first listener. */
static inline struct sluice_nsq *
open_via_proxy(struct sluice_nsq_config *cfg)
{
	char a[32];
	const char *addrs[1];

	aim(cfg, addrs, a, px.port[0]);
	return open_nsq(cfg); /* the addresses are copied */
}

#endif /* NSQ_PROXY_H */
