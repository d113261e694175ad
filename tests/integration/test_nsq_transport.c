/* SPDX-License-Identifier: MIT */
/*
 * test_nsq_transport.c - the NSQ connection upgrades (source/nsq_transport)
 * against fake_nsqd, switched on by nsq_conn's handshake: SUB, messages
 * received through the non-blocking read/poll contract, FIN, and a PUB round
 * trip, over plain, TLS, deflate (levels), snappy, TLS+snappy and TLS+deflate;
 * AUTH right and wrong; TLS verification failures; and, on a socketpair
 * standing in for nsqd, the reference's [captured] compressed bytes and corrupt
 * streams.
 *
 * TLS material is made at run time with the openssl CLI (tls_certs.h).
 * Waits are poll()s bounded by a guard; no sleeps.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "core/clock_int.h"
#include "fake_nsqd_child.h"
#include "proto/nsq.h"
#include "source/nsq_conn.h"
#include "tls_certs.h"

#define ZLIB_CONST
#include <zlib.h>

#define GUARD_NS (20 * SLUICE_NS_PER_S)
#define BIG_LEN  (300u * 1024u) /* several snappy chunks, many TLS records */

static int64_t
until(void)
{
	return sl_mono_ns() + GUARD_NS;
}

/* Frames read through the I/O-loop contract of nsq_transport.h. */
struct reader {
	uint8_t *buf;
	size_t len, cap;
};

/* The next frame that is not a heartbeat; the reader keeps its bytes. */
static void
next_frame(struct sl_nsq_tp *tp, struct reader *r, struct sl_nsq_frame *f,
	   size_t *used)
{
	int64_t end = until();

	if (!r->buf) {
		r->cap = BIG_LEN + 4096;
		r->buf = malloc(r->cap);
		CHECK(r->buf != NULL);
	}
	for (;;) {
		ssize_t k = sl_nsq_frame(r->buf, r->len,
					 SL_NSQ_FRAME_SIZE_FOR(BIG_LEN), f);
		struct pollfd p;
		ssize_t n;

		CHECK_GE(k, 0);
		if (k > 0 && f->type == SL_NSQ_FRAME_RESPONSE &&
		    sl_nsq_response_kind(f->data, f->len) ==
			    SL_NSQ_RESP_HEARTBEAT) {
			memmove(r->buf, r->buf + k, r->len - (size_t)k);
			r->len -= (size_t)k;
			continue;
		}
		if (k > 0) {
			*used = (size_t)k;
			return;
		}
		if (sl_nsq_tp_wpending(tp)) {
			int rc = sl_nsq_tp_flush(tp);

			CHECK(rc == 0 || rc == SLUICE_EAGAIN);
		}
		p.fd = sl_nsq_tp_fd(tp);
		p.events = sl_nsq_tp_events(tp);
		p.revents = 0;
		if (!sl_nsq_tp_pending(tp)) {
			CHECK_LT(sl_mono_ns(), end);
			CHECK_GE(poll(&p, 1, 1000), 0);
			if (!p.revents)
				continue;
		}
		/* Small reads on purpose: the layers must hold the rest. */
		n = sl_nsq_tp_read(tp, r->buf + r->len,
				   r->cap - r->len < 1000 ? r->cap - r->len
							  : 1000);
		if (n == SLUICE_EAGAIN)
			continue;
		if (n <= 0)
			fprintf(stderr, "  read: %zd %s\n", n,
				sl_nsq_tp_error(tp));
		CHECK_GT(n, 0);
		r->len += (size_t)n;
	}
}

static void
consume(struct reader *r, size_t used)
{
	memmove(r->buf, r->buf + used, r->len - used);
	r->len -= used;
}

static void
expect_ok(struct sl_nsq_tp *tp, struct reader *r)
{
	struct sl_nsq_frame f;
	size_t used;

	next_frame(tp, r, &f, &used);
	if (f.type != SL_NSQ_FRAME_RESPONSE)
		fprintf(stderr, "  got: %.*s\n", (int)f.len,
			(const char *)f.data);
	CHECK_EQ(f.type, SL_NSQ_FRAME_RESPONSE);
	CHECK_EQ(sl_nsq_response_kind(f.data, f.len), SL_NSQ_RESP_OK);
	consume(r, used);
}

/* Queue one command and flush it (the I/O loop's way). */
static void
cmd(struct sl_nsq_tp *tp, const uint8_t *p, ssize_t n)
{
	CHECK_GT(n, 0);
	CHECK_OK(sl_nsq_tp_write(tp, p, (size_t)n));
	CHECK_OK(sl_nsq_tp_send(tp, NULL, 0, until()));
}

static void
pub_big(struct sl_nsq_tp *tp, struct reader *r, const char *topic,
	uint8_t *body)
{
	size_t cap = BIG_LEN + 64;
	uint8_t *c = malloc(cap);
	size_t i;

	CHECK(c != NULL);
	for (i = 0; i < BIG_LEN; i++) /* half compressible, half noise */
		body[i] = i % 2 ? (uint8_t)('a' + i % 7)
				: (uint8_t)((i * 2654435761u) >> 13);
	cmd(tp, c, sl_nsq_enc_pub(c, cap, topic, body, BIG_LEN));
	free(c);
	expect_ok(tp, r);
}

/*
 * After the handshake: SUB, three small messages and one big one arrive,
 * each FIN'd; a final PUB round trip proves no error frame came back.
 */
static void
exercise(struct sl_nsq_tp *tp, const char *topic)
{
	static uint8_t big[BIG_LEN];
	uint8_t c[256];
	struct reader r = { 0 };
	struct sl_nsq_frame f;
	struct sl_nsq_message m;
	char ctl[128];
	bool seen[3] = { false, false, false }, seen_big = false;
	size_t used;
	int i;

	cmd(tp, c, sl_nsq_enc_sub(c, sizeof(c), topic, "ch"));
	expect_ok(tp, &r);
	for (i = 0; i < 3; i++) {
		snprintf(ctl, sizeof(ctl), "pub %s body-%d", topic, i);
		srv_ctl(ctl);
	}
	pub_big(tp, &r, topic, big);
	cmd(tp, c, sl_nsq_enc_rdy(c, sizeof(c), 10));
	for (i = 0; i < 4; i++) {
		next_frame(tp, &r, &f, &used);
		CHECK_EQ(f.type, SL_NSQ_FRAME_MESSAGE);
		CHECK_OK(sl_nsq_message(f.data, f.len, &m));
		CHECK_EQ(m.attempts, 1);
		if (m.body_len == BIG_LEN) {
			CHECK_MEMEQ(m.body, big, BIG_LEN);
			seen_big = true;
		} else {
			CHECK_EQ(m.body_len, 6);
			CHECK_MEMEQ(m.body, "body-", 5);
			CHECK(m.body[5] >= '0' && m.body[5] <= '2');
			CHECK(!seen[m.body[5] - '0']);
			seen[m.body[5] - '0'] = true;
		}
		/* FIN written while the frame is still in the buffer. */
		CHECK_OK(sl_nsq_tp_write(
			tp, c,
			(size_t)sl_nsq_enc_fin(c, sizeof(c), m.id,
					       SL_NSQ_ID_LEN)));
		consume(&r, used);
	}
	CHECK(seen_big && seen[0] && seen[1] && seen[2]);
	/* FINs flush with the PUB; an E_FIN_FAILED would come before OK. */
	cmd(tp, c, sl_nsq_enc_pub(c, sizeof(c), "other", "x", 1));
	expect_ok(tp, &r);
	free(r.buf);
}

/* nsq_conn's handshake with fake_nsqd (connect, IDENTIFY, upgrade, AUTH). */
static int
handshake(struct sl_nsq_conn *c, const struct sl_nsq_conn_config *cfg,
	  char *err, size_t errsize)
{
	sl_nsq_conn_init(c, 0);
	return sl_nsq_conn_handshake(c, "127.0.0.1", (uint16_t)srv.port, cfg,
				     NULL, NULL, until(), err, errsize);
}

/* A handshake that must fail: its code; the connection is closed. */
static int
handshake_fails(const struct sl_nsq_conn_config *cfg, char *err, size_t errsize)
{
	struct sl_nsq_conn c;
	int rc = handshake(&c, cfg, err, errsize);

	CHECK_NE(rc, 0);
	CHECK(c.tp == NULL);
	CHECK_EQ(c.fd, -1);
	return rc;
}

/* Handshake with @cfg (the reply in *@id), run exercise() on the transport:
 * the connection's, or a plain one over its socket when nothing was
 * upgraded. */
static void
round_trip(const struct sl_nsq_conn_config *cfg, struct sl_nsq_ident *id)
{
	struct sl_nsq_conn c;
	struct sl_nsq_tp *tp;
	char err[256];
	int rc = handshake(&c, cfg, err, sizeof(err));

	if (rc)
		fprintf(stderr, "  handshake: %s\n", err);
	CHECK_OK(rc);
	*id = c.ident;
	CHECK_EQ(c.rbuf.len, 0); /* nothing read past the last reply */
	tp = c.tp;
	if (!tp)
		CHECK_OK(sl_nsq_tp_new(c.fd, 0, &tp));
	CHECK_EQ(sl_nsq_tp_is_tls(tp), id->tls_v1);
	CHECK_EQ(sl_nsq_tp_is_deflate(tp), id->deflate);
	CHECK_EQ(sl_nsq_tp_is_snappy(tp), id->snappy);
	exercise(tp, "tt");
	if (tp != c.tp)
		sl_nsq_tp_free(tp);
	sl_nsq_conn_close(&c);
}

static struct sl_nsq_conn_config
base_cfg(void)
{
	return (struct sl_nsq_conn_config){
		.client_id = "c1",
		.user_agent = "sluice-test/1",
		.heartbeat_ms = 30000,
	};
}

/* ---- cases ------------------------------------------------------------- */

static void
test_plain(void)
{
	struct sl_nsq_conn_config cfg = base_cfg();
	struct sl_nsq_ident fe;

	srv_start(NULL);
	round_trip(&cfg, &fe);
	CHECK(fe.json);
	CHECK(!fe.tls_v1 && !fe.deflate && !fe.snappy && !fe.auth_required);
	CHECK_EQ(fe.max_rdy_count, 2500);
	/* Asked for compression, server has none: stays plain. */
	cfg.snappy = true;
	round_trip(&cfg, &fe);
	CHECK(!fe.snappy);
	srv_stop();
}

static void
test_tls(void)
{
	struct certs ct;
	struct sl_nsq_conn_config cfg = base_cfg();
	struct sl_nsq_ident fe;

	certs_make(&ct);
	{
		const char *a[] = { "--tls-cert", ct.srv_cert,      "--tls-key",
				    ct.srv_key,   "--tls-required", NULL };

		srv_start(a);
	}
	cfg.tls_v1 = true;
	cfg.tls.ca_file = ct.ca;
	cfg.tls.server_name = "localhost";
	round_trip(&cfg, &fe);
	CHECK(fe.tls_v1 && !fe.deflate && !fe.snappy);
	/* The IP literal is in the certificate too. */
	cfg.tls.server_name = "127.0.0.1";
	round_trip(&cfg, &fe);
	srv_stop();
	certs_remove(&ct);
}

static void
test_deflate_levels(void)
{
	static const char *const a[] = { "--deflate", "--max-deflate-level",
					 "5", NULL };
	struct sl_nsq_conn_config cfg = base_cfg();
	struct sl_nsq_ident fe;

	srv_start(a);
	cfg.deflate = true;
	cfg.deflate_level = 1;
	round_trip(&cfg, &fe);
	CHECK(fe.deflate && !fe.snappy && !fe.tls_v1);
	CHECK_EQ(fe.deflate_level, 1);
	cfg.deflate_level = 9; /* clamped by the server for its side */
	round_trip(&cfg, &fe);
	CHECK(fe.deflate);
	CHECK_EQ(fe.deflate_level, 5);
	cfg.deflate_level = 0; /* default 6, clamped to 5 */
	round_trip(&cfg, &fe);
	CHECK_EQ(fe.deflate_level, 5);
	srv_stop();
}

static void
test_snappy(void)
{
	static const char *const a[] = { "--snappy", "--deflate", NULL };
	struct sl_nsq_conn_config cfg = base_cfg();
	struct sl_nsq_ident fe;
	char err[256];

	srv_start(a);
	cfg.snappy = true;
	round_trip(&cfg, &fe);
	CHECK(fe.snappy && !fe.deflate);
	/* Both asked for: refused before anything is sent. */
	cfg.deflate = true;
	CHECK_EQ(handshake_fails(&cfg, err, sizeof(err)), SLUICE_EINVAL);
	srv_stop();
}

static void
tls_plus(const char *flag, bool deflate)
{
	struct certs ct;
	struct sl_nsq_conn_config cfg = base_cfg();
	struct sl_nsq_ident fe;

	certs_make(&ct);
	{
		const char *a[] = { "--tls-cert", ct.srv_cert, "--tls-key",
				    ct.srv_key,   flag,        NULL };

		srv_start(a);
	}
	cfg.tls_v1 = true;
	cfg.tls.ca_file = ct.ca;
	cfg.tls.server_name = "localhost";
	cfg.deflate = deflate;
	cfg.snappy = !deflate;
	cfg.deflate_level = 3;
	round_trip(&cfg, &fe);
	CHECK(fe.tls_v1);
	CHECK_EQ(fe.deflate, deflate);
	CHECK_EQ(fe.snappy, !deflate);
	srv_stop();
	certs_remove(&ct);
}

static void
test_tls_snappy(void)
{
	tls_plus("--snappy", false);
}

static void
test_tls_deflate(void)
{
	tls_plus("--deflate", true);
}

static void
test_auth(void)
{
	static const char *const a[] = { "--auth-secret", "s3cret", "--snappy",
					 NULL };
	struct sl_nsq_conn_config cfg = base_cfg();
	struct sl_nsq_conn c;
	char err[256];

	srv_start(a);
	/* Right secret, through snappy (AUTH after the upgrade). */
	cfg.snappy = true;
	cfg.auth_secret = "s3cret";
	cfg.auth_secret_len = 6;
	CHECK_OK(handshake(&c, &cfg, err, sizeof(err)));
	CHECK(c.ident.auth_required && c.ident.snappy);
	CHECK(c.tp != NULL);
	CHECK_STREQ(c.auth.identity, "fake_nsqd");
	CHECK_STREQ(c.auth.identity_url, "");
	CHECK_EQ(c.auth.permission_count, 1);
	exercise(c.tp, "at");
	sl_nsq_conn_close(&c);

	/* Wrong secret: the server's error text, and no transport. */
	cfg.auth_secret = "guess";
	cfg.auth_secret_len = 5;
	CHECK_EQ(handshake_fails(&cfg, err, sizeof(err)), SLUICE_EPROTO);
	CHECK_STREQ(err, "AUTH refused: E_AUTH_FAILED AUTH failed");

	/* No secret configured but required. */
	cfg.auth_secret = NULL;
	cfg.auth_secret_len = 0;
	CHECK_EQ(handshake_fails(&cfg, err, sizeof(err)), SLUICE_EPROTO);
	CHECK(strstr(err, "requires AUTH") != NULL);
	srv_stop();
}

static void
test_tls_verify_failures(void)
{
	struct certs ct;
	struct sl_nsq_conn_config cfg = base_cfg();
	struct sl_nsq_ident fe;
	char err[256];

	certs_make(&ct);
	{
		const char *a[] = { "--tls-cert", ct.srv_cert, "--tls-key",
				    ct.srv_key, NULL };

		srv_start(a);
	}
	cfg.tls_v1 = true;
	cfg.tls.server_name = "localhost";
	/* A CA that did not sign the server's certificate. */
	cfg.tls.ca_file = ct.other_ca;
	CHECK_EQ(handshake_fails(&cfg, err, sizeof(err)), SLUICE_EPROTO);
	CHECK(strstr(err, "TLS certificate verification failed") != NULL);
	/* The right CA, the wrong name. */
	cfg.tls.ca_file = ct.ca;
	cfg.tls.server_name = "nsqd.example.com";
	CHECK_EQ(handshake_fails(&cfg, err, sizeof(err)), SLUICE_EPROTO);
	CHECK(strstr(err, "TLS certificate verification failed") != NULL);
	CHECK(strstr(err, "mismatch") != NULL);
	/* A CA file that does not exist. */
	cfg.tls.ca_file = "/nonexistent/ca.pem";
	CHECK_EQ(handshake_fails(&cfg, err, sizeof(err)), SLUICE_EINVAL);
	CHECK(strstr(err, "cannot load CA file") != NULL);
	/* skip_verify accepts anything. */
	cfg.tls.ca_file = ct.other_ca;
	cfg.tls.skip_verify = true;
	round_trip(&cfg, &fe);
	srv_stop();
	certs_remove(&ct);
}

static void
test_tls_not_granted(void)
{
	struct sl_nsq_conn_config cfg = base_cfg();
	char err[256];

	srv_start(NULL);
	cfg.tls_v1 = true;
	CHECK_EQ(handshake_fails(&cfg, err, sizeof(err)), SLUICE_EPROTO);
	CHECK(strstr(err, "did not grant") != NULL);
	srv_stop();
}

/* ---- a socketpair standing in for nsqd ---------------------------------- */

static const uint8_t ok_frame[] = { 0, 0, 0, 6, 0, 0, 0, 0, 0x4F, 0x4B };

static void
pair(int sv[2], struct sl_nsq_tp **tp)
{
	CHECK_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
	CHECK_OK(sl_nsq_tp_new(sv[0], 0, tp));
}

/* Read what is there now (until EAGAIN) into @got at *@have. */
static void
drain(struct sl_nsq_tp *tp, uint8_t *got, size_t cap, size_t *have)
{
	for (;;) {
		ssize_t n = sl_nsq_tp_read(tp, got + *have,
					   cap - *have < 5 ? cap - *have : 5);

		if (n == SLUICE_EAGAIN)
			break;
		CHECK_GT(n, 0);
		*have += (size_t)n;
	}
	CHECK(!sl_nsq_tp_pending(tp));
}

static void
test_captured_deflate(void)
{
	/* nsqd's bytes after the JSON with deflate_level 3 (section 6.3),
	 * handed over as if read together with the JSON reply. */
	static const uint8_t early[] = { 0x62, 0x60, 0x60, 0x60, 0x63, 0x60,
					 0x60, 0x60, 0xF0, 0xF7, 0x06, 0x00,
					 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00,
					 0x00, 0xFF, 0xFF };
	static const uint8_t next[] = { 0x42, 0xB0, 0x00, 0x00,
					0x00, 0x00, 0xFF, 0xFF };
	struct sl_nsq_features fe = { .json = true, .deflate = true };
	struct sl_nsq_tp *tp;
	uint8_t buf[64];
	char err[128];
	size_t i, have = 0;
	int sv[2];

	pair(sv, &tp);
	CHECK_OK(sl_nsq_tp_upgrade(tp, &fe, NULL, 3, early, sizeof(early),
				   until(), err, sizeof(err)));
	CHECK(sl_nsq_tp_is_deflate(tp));
	/* The second captured reply, fed one byte at a time. */
	CHECK_EQ(sl_nsq_tp_read(tp, buf, sizeof(buf)), SLUICE_EAGAIN);
	for (i = 0; i < sizeof(next); i++) {
		CHECK_EQ(write(sv[1], next + i, 1), 1);
		drain(tp, buf, sizeof(buf), &have);
	}
	CHECK_EQ(have, sizeof(ok_frame));
	CHECK_MEMEQ(buf, ok_frame, sizeof(ok_frame));
	/* Garbage: a clear error, and it sticks. */
	CHECK_EQ(write(sv[1], "\xff\xff\xff\xff", 4), 4);
	CHECK_EQ(sl_nsq_tp_read(tp, buf, sizeof(buf)), SLUICE_EPROTO);
	CHECK(strstr(sl_nsq_tp_error(tp), "deflate:") != NULL);
	CHECK_EQ(sl_nsq_tp_read(tp, buf, sizeof(buf)), SLUICE_EPROTO);
	sl_nsq_tp_free(tp);
	close(sv[0]);
	close(sv[1]);
}

/* The client's deflate output is one raw stream, sync-flushed per flush. */
static void
test_deflate_flush_boundaries(void)
{
	static const uint8_t early[] = { 0x62, 0x60, 0x60, 0x60, 0x63, 0x60,
					 0x60, 0x60, 0xF0, 0xF7, 0x06, 0x00,
					 0x00, 0x00, 0xFF, 0xFF };
	static const char *const cmds[] = { "NOP\n", "RDY 1\nNOP\n" };
	struct sl_nsq_features fe = { .json = true, .deflate = true };
	struct sl_nsq_tp *tp;
	uint8_t wire[256], plain[64];
	z_stream z = { 0 };
	char err[128];
	ssize_t n;
	int sv[2], i;

	pair(sv, &tp);
	CHECK_OK(sl_nsq_tp_upgrade(tp, &fe, NULL, 9, early, sizeof(early),
				   until(), err, sizeof(err)));
	CHECK_EQ(inflateInit2(&z, -15), Z_OK);
	for (i = 0; i < 2; i++) {
		CHECK_OK(sl_nsq_tp_write(tp, cmds[i], strlen(cmds[i])));
		CHECK(sl_nsq_tp_wpending(tp));
		CHECK_EQ(recv(sv[1], wire, sizeof(wire), MSG_DONTWAIT), -1);
		CHECK_OK(sl_nsq_tp_flush(tp));
		CHECK(!sl_nsq_tp_wpending(tp));
		n = read(sv[1], wire, sizeof(wire));
		CHECK_GE(n, 4);
		CHECK_MEMEQ(wire + n - 4, "\x00\x00\xff\xff", 4);
		z.next_in = wire;
		z.avail_in = (unsigned)n;
		z.next_out = plain;
		z.avail_out = sizeof(plain);
		CHECK_EQ(inflate(&z, Z_SYNC_FLUSH), Z_OK);
		CHECK_EQ(z.avail_in, 0);
		CHECK_EQ(sizeof(plain) - z.avail_out, strlen(cmds[i]));
		CHECK_MEMEQ(plain, cmds[i], strlen(cmds[i]));
	}
	inflateEnd(&z);
	sl_nsq_tp_free(tp);
	close(sv[0]);
	close(sv[1]);
}

/* nsqd's bytes after the JSON when snappy was granted (section 6.4). */
static const uint8_t good[] = {
	0xFF, 0x06, 0x00, 0x00, 0x73, 0x4E, 0x61, 0x50, 0x70, 0x59,
	0x01, 0x0E, 0x00, 0x00, 0x26, 0x98, 0x2B, 0xCF, 0x00, 0x00,
	0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x4F, 0x4B,
};

static void
test_corrupt_snappy(void)
{
	struct sl_nsq_features fe = { .json = true, .snappy = true };
	struct sl_nsq_tp *tp;
	uint8_t bad[sizeof(good)], buf[64];
	char err[128];
	int sv[2];

	/* The captured bytes: upgrade succeeds. */
	pair(sv, &tp);
	CHECK_OK(sl_nsq_tp_upgrade(tp, &fe, NULL, 0, good, sizeof(good),
				   until(), err, sizeof(err)));
	CHECK(sl_nsq_tp_is_snappy(tp));
	/* Then a chunk with a bad CRC arrives. */
	memcpy(bad, good + 10, sizeof(good) - 10);
	bad[5] ^= 0x01;
	CHECK_EQ(write(sv[1], bad, sizeof(good) - 10),
		 (ssize_t)(sizeof(good) - 10));
	CHECK_EQ(sl_nsq_tp_read(tp, buf, sizeof(buf)), SLUICE_EPROTO);
	CHECK_STREQ(sl_nsq_tp_error(tp), "snappy: checksum mismatch");
	sl_nsq_tp_free(tp);
	close(sv[0]);
	close(sv[1]);

	/* A corrupt OK during the upgrade: the step and the reason. */
	memcpy(bad, good, sizeof(good));
	bad[sizeof(good) - 1] ^= 0x20;
	pair(sv, &tp);
	CHECK_EQ(sl_nsq_tp_upgrade(tp, &fe, NULL, 0, bad, sizeof(bad), until(),
				   err, sizeof(err)),
		 SLUICE_EPROTO);
	CHECK_STREQ(err, "snappy: snappy: checksum mismatch");
	sl_nsq_tp_free(tp);
	close(sv[0]);
	close(sv[1]);

	/* No stream identifier. */
	pair(sv, &tp);
	CHECK_EQ(sl_nsq_tp_upgrade(tp, &fe, NULL, 0, good + 10,
				   sizeof(good) - 10, until(), err,
				   sizeof(err)),
		 SLUICE_EPROTO);
	CHECK(strstr(err, "stream identifier") != NULL);
	sl_nsq_tp_free(tp);
	close(sv[0]);
	close(sv[1]);

	/* EOF in the middle of a chunk during the upgrade. */
	pair(sv, &tp);
	CHECK_EQ(write(sv[1], good, 20), 20);
	close(sv[1]);
	CHECK_EQ(sl_nsq_tp_upgrade(tp, &fe, NULL, 0, NULL, 0, until(), err,
				   sizeof(err)),
		 SLUICE_EIO);
	CHECK(strstr(err, "closed") != NULL);
	sl_nsq_tp_free(tp);
	close(sv[0]);
}

/* Snappy: our own stream, split at every byte, reads back exactly. */
static void
test_snappy_every_split(void)
{
	static const char want[] = "RDY 10\nFIN 0123456789abcdef\nNOP\n";
	struct sl_nsq_features fe = { .json = true, .snappy = true };
	struct sl_nsq_tp *tx, *rx;
	uint8_t wire[512], got[256];
	char err[128];
	size_t cut, have;
	ssize_t w;
	int sv[2];

	pair(sv, &tx);
	CHECK_OK(sl_nsq_tp_upgrade(tx, &fe, NULL, 0, good, sizeof(good),
				   until(), err, sizeof(err)));
	CHECK_OK(sl_nsq_tp_write(tx, want, 28));
	CHECK_OK(sl_nsq_tp_flush(tx));
	CHECK_OK(sl_nsq_tp_write(tx, want + 28, 4));
	CHECK_OK(sl_nsq_tp_flush(tx));
	w = read(sv[1], wire, sizeof(wire));
	CHECK_GT(w, 10);
	CHECK_MEMEQ(wire, "\xff\x06\x00\x00sNaPpY", 10);
	sl_nsq_tp_free(tx);
	close(sv[0]);
	close(sv[1]);
	for (cut = 0; cut <= (size_t)w; cut++) {
		pair(sv, &rx);
		CHECK_OK(sl_nsq_tp_upgrade(rx, &fe, NULL, 0, good, sizeof(good),
					   until(), err, sizeof(err)));
		/* A second identifier mid-stream is allowed. */
		have = 0;
		CHECK_EQ(write(sv[1], wire, cut), (ssize_t)cut);
		drain(rx, got, sizeof(got), &have);
		CHECK_EQ(write(sv[1], wire + cut, (size_t)w - cut),
			 (ssize_t)((size_t)w - cut));
		drain(rx, got, sizeof(got), &have);
		CHECK_EQ(have, 32);
		CHECK_MEMEQ(got, want, 32);
		sl_nsq_tp_free(rx);
		close(sv[0]);
		close(sv[1]);
	}
}

CHECK_MAIN(test_plain, test_tls, test_deflate_levels, test_snappy,
	   test_tls_snappy, test_tls_deflate, test_auth,
	   test_tls_verify_failures, test_tls_not_granted,
	   test_captured_deflate, test_deflate_flush_boundaries,
	   test_corrupt_snappy, test_snappy_every_split)
