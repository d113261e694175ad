/* SPDX-License-Identifier: MIT */
/*
 * nsq_conn.c - the blocking nsqd handshake shared by the NSQ consumer and
 * producer (see nsq_conn.h for the contract).
 *
 * Everything waits with poll() against an absolute deadline on the
 * monotonic clock, so a handshake never blocks longer than its caller's
 * budget however the server misbehaves.  Replies are read into c->rbuf and
 * decoded with the sans-I/O codec (proto/nsq.h); nothing is consumed from
 * the buffer past the frame a step needs, so the first frames after SUB
 * (messages, heartbeats) stay in c->rbuf for the caller's reader.
 *
 * No locking: a connection belongs to one thread at a time.
 */
#include "source/nsq_conn.h"

#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sluice/version.h>

#include "core/clock_int.h"
#include "util/alloc.h"

#define DEFAULT_CLIENT   "sluice"
#define DEFAULT_MAX_BODY ((size_t)1 << 20)

int
sl_nsq_buf_reserve(struct sl_nsq_buf *b, size_t more)
{
	if (more > SIZE_MAX - b->len)
		return SLUICE_ENOMEM;
	return sl_nsq_grow(&b->p, &b->cap, b->len + more, 256);
}

void
sl_nsq_buf_consume(struct sl_nsq_buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

void
sl_nsq_buf_free(struct sl_nsq_buf *b)
{
	sl_free(b->p);
	*b = (struct sl_nsq_buf){ 0 };
}

void
sl_nsq_conn_init(struct sl_nsq_conn *c, size_t max_body)
{
	*c = (struct sl_nsq_conn){ .fd = -1 };
	c->max_frame =
		SL_NSQ_FRAME_SIZE_FOR(max_body ? max_body : DEFAULT_MAX_BODY);
}

void
sl_nsq_conn_close(struct sl_nsq_conn *c)
{
	sl_nsq_tp_free(c->tp); /* no close_notify wait: see the transport */
	c->tp = NULL;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	sl_nsq_buf_free(&c->rbuf);
}

void
sl_nsq_kick(int evfd, atomic_bool *kicked)
{
	uint64_t one = 1;
	ssize_t r;

	if (atomic_exchange(kicked, true))
		return;
	do
		r = write(evfd, &one, sizeof(one));
	while (r < 0 && errno == EINTR);
}

/* ---- raw I/O: the one place a transport plugs in ----------------------- */

ssize_t
sl_nsq_conn_read(struct sl_nsq_conn *c, size_t want)
{
	ssize_t r;

	if (sl_nsq_buf_reserve(&c->rbuf, want) < 0)
		return SLUICE_ENOMEM;
	if (c->tp) {
		r = sl_nsq_tp_read(c->tp, c->rbuf.p + c->rbuf.len,
				   c->rbuf.cap - c->rbuf.len);
		if (r == SLUICE_EAGAIN)
			return 0;
		if (r == 0)
			return SLUICE_EIO;
		if (r > 0)
			c->rbuf.len += (size_t)r;
		return r;
	}
	do
		r = read(c->fd, c->rbuf.p + c->rbuf.len,
			 c->rbuf.cap - c->rbuf.len);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EAGAIN ? 0 : -errno;
	if (r == 0)
		return SLUICE_EIO;
	c->rbuf.len += (size_t)r;
	return r;
}

ssize_t
sl_nsq_conn_write(struct sl_nsq_conn *c, const void *p, size_t len)
{
	ssize_t r;
	int rc;

	if (c->tp) {
		rc = sl_nsq_tp_write(c->tp, p, len);
		if (rc == 0)
			rc = sl_nsq_tp_flush(c->tp);
		return rc == 0 || rc == SLUICE_EAGAIN ? (ssize_t)len : rc;
	}
	do
		r = send(c->fd, p, len, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EAGAIN ? 0 : -errno;
	return r;
}

short
sl_nsq_conn_events(const struct sl_nsq_conn *c, bool want_write)
{
	if (c->tp)
		return sl_nsq_tp_events(c->tp);
	return (short)(POLLIN | (want_write ? POLLOUT : 0));
}

bool
sl_nsq_conn_pending(const struct sl_nsq_conn *c)
{
	return c->tp && sl_nsq_tp_pending(c->tp);
}

bool
sl_nsq_conn_wpending(const struct sl_nsq_conn *c)
{
	return c->tp && sl_nsq_tp_wpending(c->tp);
}

int
sl_nsq_conn_flush(struct sl_nsq_conn *c)
{
	return c->tp ? sl_nsq_tp_flush(c->tp) : 0;
}

/* ---- blocking helpers -------------------------------------------------- */

int
sl_nsq_conn_send(struct sl_nsq_conn *c, const void *p, size_t len,
		 int64_t until)
{
	const uint8_t *q = p;

	if (c->tp)
		return sl_nsq_tp_send(c->tp, p, len, until);
	while (len) {
		ssize_t r = sl_nsq_conn_write(c, q, len);
		int rc;

		if (r < 0)
			return (int)r;
		if (r > 0) {
			q += r;
			len -= (size_t)r;
			continue;
		}
		rc = sl_nsq_wait_fd(c->fd, POLLOUT, until);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int
sl_nsq_conn_frame(struct sl_nsq_conn *c, int64_t until, struct sl_nsq_frame *f,
		  size_t *used)
{
	for (;;) {
		ssize_t k =
			sl_nsq_frame(c->rbuf.p, c->rbuf.len, c->max_frame, f);
		int rc;

		if (k < 0)
			return (int)k;
		if (k > 0 && f->type == SL_NSQ_FRAME_RESPONSE &&
		    sl_nsq_response_kind(f->data, f->len) ==
			    SL_NSQ_RESP_HEARTBEAT) {
			uint8_t nop[8];
			ssize_t m = sl_nsq_enc_nop(nop, sizeof(nop));

			sl_nsq_buf_consume(&c->rbuf, (size_t)k);
			rc = m > 0 ? sl_nsq_conn_send(c, nop, (size_t)m, until)
				   : (int)m;
			if (rc < 0)
				return rc;
			continue;
		}
		if (k > 0) {
			*used = (size_t)k;
			return 0;
		}
		k = sl_nsq_conn_read(c, 4096);
		if (k < 0)
			return (int)k;
		if (k == 0 && !sl_nsq_conn_pending(c)) {
			rc = sl_nsq_wait_fd(c->fd, sl_nsq_conn_events(c, false),
					    until);
			if (rc < 0)
				return rc;
		}
	}
}

/* ---- steps ------------------------------------------------------------- */

int
sl_nsq_conn_connect(struct sl_nsq_conn *c, const char *host, uint16_t port,
		    int64_t until, char *err, size_t errsize)
{
	struct addrinfo hints = { 0 }, *ai = NULL, *a;
	char ports[8];
	int rc, one = 1;

	snprintf(ports, sizeof(ports), "%u", (unsigned)port);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host, ports, &hints, &ai);
	if (rc != 0) {
		sl_nsq_seterr(err, errsize, "cannot resolve %s: %s", host,
			      gai_strerror(rc));
		return SLUICE_ENOENT;
	}
	rc = SLUICE_ENOENT;
	for (a = ai; a; a = a->ai_next) {
		int fd = socket(a->ai_family,
				SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int soerr = 0;
		socklen_t sl = sizeof(soerr);

		if (fd < 0) {
			rc = -errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
			if (errno != EINPROGRESS) {
				rc = -errno;
				close(fd);
				continue;
			}
			rc = sl_nsq_wait_fd(fd, POLLOUT, until);
			if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR,
						  &soerr, &sl) < 0)
				rc = -errno;
			else if (rc == 0 && soerr)
				rc = -soerr;
			if (rc < 0) {
				close(fd);
				continue;
			}
		}
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				 sizeof(one));
		c->fd = fd;
		rc = 0;
		break;
	}
	freeaddrinfo(ai);
	if (rc < 0)
		sl_nsq_seterr(err, errsize, "cannot connect to %s:%u: %s", host,
			      (unsigned)port, sluice_strerror(rc));
	return rc;
}

static uint32_t
json_u32(json_t *o, const char *key, uint32_t dflt)
{
	json_t *v = json_object_get(o, key);
	json_int_t i;

	if (!json_is_integer(v))
		return dflt;
	i = json_integer_value(v);
	return i >= 0 && i <= (json_int_t)UINT32_MAX ? (uint32_t)i : dflt;
}

/* The IDENTIFY body (section 2.1: integers as integers, booleans). */
static int
identify_json(const struct sl_nsq_conn_config *cfg, char *js, size_t cap,
	      size_t *len)
{
	char host[256];
	json_t *o;
	size_t n;

	if (gethostname(host, sizeof(host)) < 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	o = json_pack("{s:s, s:s, s:s, s:b, s:b, s:b, s:b}", "client_id",
		      cfg->client_id ? cfg->client_id : DEFAULT_CLIENT,
		      "hostname", host, "user_agent",
		      cfg->user_agent ? cfg->user_agent
				      : "sluice/" SLUICE_VERSION_STRING,
		      "feature_negotiation", 1, "tls_v1", cfg->tls_v1, "snappy",
		      cfg->snappy, "deflate", cfg->deflate);
	if (!o)
		return SLUICE_ENOMEM;
	if (cfg->heartbeat_ms)
		json_object_set_new(o, "heartbeat_interval",
				    json_integer(cfg->heartbeat_ms));
	if (cfg->msg_timeout_ms)
		json_object_set_new(o, "msg_timeout",
				    json_integer(cfg->msg_timeout_ms));
	if (cfg->sample_rate)
		json_object_set_new(o, "sample_rate",
				    json_integer(cfg->sample_rate));
	if (cfg->deflate && cfg->deflate_level > 0)
		json_object_set_new(o, "deflate_level",
				    json_integer(cfg->deflate_level));
	n = json_dumpb(o, js, cap, JSON_COMPACT);
	json_decref(o);
	if (n == 0 || n > cap)
		return SLUICE_EINVAL;
	*len = n;
	return 0;
}

/* Parse the JSON IDENTIFY reply into c->ident. */
static int
parse_ident(struct sl_nsq_conn *c, const struct sl_nsq_frame *f)
{
	struct sl_nsq_ident *id = &c->ident;
	json_error_t je;
	json_t *o, *v;

	o = json_loadb((const char *)f->data, f->len, 0, &je);
	if (!json_is_object(o)) {
		json_decref(o);
		return SLUICE_EPROTO;
	}
	id->json = true;
	id->max_rdy_count = json_u32(o, "max_rdy_count", id->max_rdy_count);
	if (id->max_rdy_count == 0)
		id->max_rdy_count = SL_NSQ_DEFAULT_MAX_RDY;
	id->msg_timeout_ms = json_u32(o, "msg_timeout", id->msg_timeout_ms);
	if (id->msg_timeout_ms == 0)
		id->msg_timeout_ms = SL_NSQ_DEFAULT_MSG_TO_MS;
	id->max_msg_timeout_ms = json_u32(o, "max_msg_timeout", 0);
	/* nsqd does not echo it; take it if a server does. */
	id->heartbeat_ms = json_u32(o, "heartbeat_interval", id->heartbeat_ms);
	if (id->heartbeat_ms == 0)
		id->heartbeat_ms = SL_NSQ_DEFAULT_HB_MS;
	id->output_buffer_timeout_ms = json_u32(o, "output_buffer_timeout", 0);
	id->sample_rate = json_u32(o, "sample_rate", 0);
	id->deflate_level = (int)json_u32(o, "deflate_level", 0);
	id->tls_v1 = json_is_true(json_object_get(o, "tls_v1"));
	id->snappy = json_is_true(json_object_get(o, "snappy"));
	id->deflate = json_is_true(json_object_get(o, "deflate"));
	id->auth_required = json_is_true(json_object_get(o, "auth_required"));
	v = json_object_get(o, "version");
	if (json_is_string(v))
		snprintf(id->version, sizeof(id->version), "%s",
			 json_string_value(v));
	json_decref(o);
	return 0;
}

/* Read one response frame and require "OK"; @what names the step. */
static int
expect_ok(struct sl_nsq_conn *c, const char *what, int64_t until, char *err,
	  size_t errsize)
{
	struct sl_nsq_frame f;
	size_t used = 0;
	int rc = sl_nsq_conn_frame(c, until, &f, &used);

	if (rc < 0) {
		sl_nsq_seterr(err, errsize, "%s: %s", what,
			      sluice_strerror(rc));
		return rc;
	}
	if (f.type != SL_NSQ_FRAME_RESPONSE ||
	    sl_nsq_response_kind(f.data, f.len) != SL_NSQ_RESP_OK)
		return sl_nsq_refused(&f, what, err, errsize);
	sl_nsq_buf_consume(&c->rbuf, used);
	return 0;
}

/*
 * The upgrade step (section 6.1), right after the IDENTIFY reply: TLS, then
 * "OK" over TLS; then snappy or deflate, then a compressed "OK"
 * (nsq_transport.c does both).  Bytes already read behind the JSON reply
 * belong to the new layers: they are handed over as "early" bytes.
 */
static int
upgrade(struct sl_nsq_conn *c, const struct sl_nsq_conn_config *cfg,
	int64_t until, char *err, size_t errsize)
{
	struct sl_nsq_features feat = {
		.json = c->ident.json,
		.tls_v1 = c->ident.tls_v1,
		.deflate = c->ident.deflate,
		.snappy = c->ident.snappy,
		.auth_required = c->ident.auth_required,
		.deflate_level = c->ident.deflate_level,
		.max_rdy_count = c->ident.max_rdy_count,
		.msg_timeout = c->ident.msg_timeout_ms,
		.max_msg_timeout = c->ident.max_msg_timeout_ms,
	};
	int rc;

	if (cfg->tls_v1 && !c->ident.tls_v1) {
		sl_nsq_seterr(err, errsize,
			      "TLS was asked for and nsqd did not grant it");
		return SLUICE_EPROTO;
	}
	if (!feat.tls_v1 && !feat.snappy && !feat.deflate)
		return 0;
	rc = sl_nsq_tp_new(c->fd, c->max_frame, &c->tp);
	if (rc < 0)
		return rc;
	rc = sl_nsq_tp_upgrade(c->tp, &feat, &cfg->tls, cfg->deflate_level,
			       c->rbuf.p, c->rbuf.len, until, err, errsize);
	c->rbuf.len = 0;
	return rc;
}

static int
auth(struct sl_nsq_conn *c, const struct sl_nsq_conn_config *cfg, int64_t until,
     char *err, size_t errsize)
{
	struct sl_nsq_frame f;
	uint8_t *buf;
	size_t used = 0;
	ssize_t n;
	int rc;

	if (!cfg->auth_secret || cfg->auth_secret_len == 0) {
		sl_nsq_seterr(err, errsize,
			      "nsqd requires AUTH and no secret is configured");
		return SLUICE_EPROTO;
	}
	n = sl_nsq_enc_auth(NULL, 0, cfg->auth_secret, cfg->auth_secret_len);
	if (n < 0)
		return (int)n;
	buf = sl_malloc((size_t)n);
	if (!buf)
		return SLUICE_ENOMEM;
	(void)sl_nsq_enc_auth(buf, (size_t)n, cfg->auth_secret,
			      cfg->auth_secret_len);
	rc = sl_nsq_conn_send(c, buf, (size_t)n, until);
	sl_free(buf);
	if (rc == 0)
		rc = sl_nsq_conn_frame(c, until, &f, &used);
	if (rc < 0) {
		sl_nsq_seterr(err, errsize, "AUTH: %s", sluice_strerror(rc));
		return rc;
	}
	if (f.type != SL_NSQ_FRAME_RESPONSE ||
	    sl_nsq_response_kind(f.data, f.len) != SL_NSQ_RESP_JSON)
		return sl_nsq_refused(&f, "AUTH", err, errsize);
	if (sl_nsq_auth_parse(f.data, f.len, &c->auth) < 0)
		return sl_nsq_refused(&f, "AUTH (unreadable reply)", err,
				      errsize);
	sl_nsq_buf_consume(&c->rbuf, used);
	return 0;
}

int
sl_nsq_conn_identify(struct sl_nsq_conn *c,
		     const struct sl_nsq_conn_config *cfg, int64_t until,
		     char *err, size_t errsize)
{
	uint8_t buf[1024];
	char js[768];
	struct sl_nsq_frame f;
	size_t jlen = 0, used = 0;
	ssize_t m, k;
	int rc;

	if (cfg->snappy && cfg->deflate) {
		sl_nsq_seterr(err, errsize, "snappy and deflate are exclusive");
		return SLUICE_EINVAL;
	}
	rc = identify_json(cfg, js, sizeof(js), &jlen);
	if (rc < 0) {
		sl_nsq_seterr(err, errsize, "cannot build the IDENTIFY body");
		return rc;
	}
	m = sl_nsq_enc_magic(buf, sizeof(buf));
	if (m < 0 || (size_t)m > sizeof(buf))
		return SLUICE_EINVAL;
	k = sl_nsq_enc_identify(buf + m, sizeof(buf) - (size_t)m, js, jlen);
	if (k < 0 || (size_t)k > sizeof(buf) - (size_t)m)
		return SLUICE_EINVAL;
	m += k;
	rc = sl_nsq_conn_send(c, buf, (size_t)m, until);
	if (rc == 0)
		rc = sl_nsq_conn_frame(c, until, &f, &used);
	if (rc < 0) {
		sl_nsq_seterr(err, errsize, "IDENTIFY: %s",
			      sluice_strerror(rc));
		return rc;
	}
	if (f.type != SL_NSQ_FRAME_RESPONSE)
		return sl_nsq_refused(&f, "IDENTIFY", err, errsize);
	c->ident = (struct sl_nsq_ident){
		.max_rdy_count = SL_NSQ_DEFAULT_MAX_RDY,
		.msg_timeout_ms = cfg->msg_timeout_ms
					  ? cfg->msg_timeout_ms
					  : SL_NSQ_DEFAULT_MSG_TO_MS,
		.heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms
						  : SL_NSQ_DEFAULT_HB_MS,
	};
	switch (sl_nsq_response_kind(f.data, f.len)) {
	case SL_NSQ_RESP_JSON:
		if (parse_ident(c, &f) < 0)
			return sl_nsq_refused(&f, "IDENTIFY (unreadable reply)",
					      err, errsize);
		break;
	case SL_NSQ_RESP_OK:
		break;
	default:
		return sl_nsq_refused(&f, "IDENTIFY", err, errsize);
	}
	sl_nsq_buf_consume(&c->rbuf, used);
	rc = upgrade(c, cfg, until, err, errsize);
	if (rc == 0 && c->ident.auth_required)
		rc = auth(c, cfg, until, err, errsize);
	return rc;
}

int
sl_nsq_conn_sub(struct sl_nsq_conn *c, const char *topic, const char *channel,
		int64_t until, char *err, size_t errsize)
{
	uint8_t buf[2 * SL_NSQ_NAME_MAX + 16];
	ssize_t m = sl_nsq_enc_sub(buf, sizeof(buf), topic, channel);
	int rc;

	if (m < 0 || (size_t)m > sizeof(buf)) {
		sl_nsq_seterr(err, errsize, "invalid topic or channel name");
		return SLUICE_EINVAL;
	}
	rc = sl_nsq_conn_send(c, buf, (size_t)m, until);
	if (rc < 0) {
		sl_nsq_seterr(err, errsize, "SUB: %s", sluice_strerror(rc));
		return rc;
	}
	return expect_ok(c, "SUB", until, err, errsize);
}

int
sl_nsq_conn_handshake(struct sl_nsq_conn *c, const char *host, uint16_t port,
		      const struct sl_nsq_conn_config *cfg, const char *topic,
		      const char *channel, int64_t until, char *err,
		      size_t errsize)
{
	int rc = sl_nsq_conn_connect(c, host, port, until, err, errsize);

	if (rc == 0)
		rc = sl_nsq_conn_identify(c, cfg, until, err, errsize);
	if (rc == 0 && topic)
		rc = sl_nsq_conn_sub(c, topic, channel, until, err, errsize);
	if (rc < 0)
		sl_nsq_conn_close(c);
	return rc;
}
