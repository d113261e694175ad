/* SPDX-License-Identifier: MIT */
/*
 * test_nsq.c - the NSQ V2 codec: every frame type, every split point of a
 * multi-frame stream, the byte sequences the reference marks [captured]
 * (decoded and encoded byte for byte), oversized and malformed frames, the
 * error table, name rules, the exact bytes of every command with the
 * snprintf-like size answer, and no read past the caller's bytes.
 *
 * Expected values come from docs/nsq-protocol.md (copied here as arrays) or
 * from the test's own frame builder, never from the codec.  The stream
 * reader (struct reader) gives sl_nsq_frame() a fresh heap copy of exactly
 * the pending bytes on every call, so ASan catches any read past @len on
 * every call, not only in the guard page test.
 */
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "proto/nsq.h"

#define NELEM(a)  (sizeof(a) / sizeof((a)[0]))
#define MAXFRAMES 32
#define ACCCAP    4096
#define BIG       ((size_t)1 << 20)

/* ---- [captured] bytes from the reference --------------------------------- */

/* 1.1: reply to magic "  V1". */
static const uint8_t cap_bad_protocol[] = {
	0x00, 0x00, 0x00, 0x12, 0x00, 0x00, 0x00, 0x01, 0x45, 0x5F, 0x42,
	0x41, 0x44, 0x5F, 0x50, 0x52, 0x4F, 0x54, 0x4F, 0x43, 0x4F, 0x4C,
};
/* 1.3 */
static const uint8_t cap_ok[] = { 0x00, 0x00, 0x00, 0x06, 0x00,
				  0x00, 0x00, 0x00, 0x4F, 0x4B };
static const uint8_t cap_heartbeat[] = {
	0x00, 0x00, 0x00, 0x0F, 0x00, 0x00, 0x00, 0x00, 0x5F, 0x68,
	0x65, 0x61, 0x72, 0x74, 0x62, 0x65, 0x61, 0x74, 0x5F,
};
static const uint8_t cap_close_wait[] = {
	0x00, 0x00, 0x00, 0x0E, 0x00, 0x00, 0x00, 0x00, 0x43,
	0x4C, 0x4F, 0x53, 0x45, 0x5F, 0x57, 0x41, 0x49, 0x54,
};
/* 1.3: the table elides the tail; it is "E_INVALID invalid command FOO". */
static const uint8_t cap_error_head[] = { 0x00, 0x00, 0x00, 0x21, 0x00, 0x00,
					  0x00, 0x01, 0x45, 0x5F, 0x49, 0x4E,
					  0x56, 0x41, 0x4C, 0x49, 0x44, 0x20 };
static const char cap_error_text[] = "E_INVALID invalid command FOO";
/* 1.4: delivery of "hello". */
static const uint8_t cap_msg[] = {
	0x00, 0x00, 0x00, 0x23, 0x00, 0x00, 0x00, 0x02, 0x18, 0xEB,
	0xE6, 0xCB, 0x3A, 0xCD, 0x73, 0xF6, 0x00, 0x01, 0x31, 0x38,
	0x61, 0x61, 0x37, 0x37, 0x65, 0x63, 0x35, 0x37, 0x32, 0x36,
	0x39, 0x30, 0x30, 0x30, 0x68, 0x65, 0x6C, 0x6C, 0x6F,
};
static const int64_t cap_msg_ts = (int64_t)0x18EBE6CB3ACD73F6;
static const char cap_msg_id[] = "18aa77ec57269000";
/* 2.1: IDENTIFY reply with feature_negotiation (one line on the wire). */
static const char cap_identify_reply[] =
	"{\"max_rdy_count\":2500,\"version\":\"1.3.0\",\"max_msg_timeout\":"
	"900000,\"msg_timeout\":60000,\"tls_v1\":false,\"deflate\":false,"
	"\"deflate_level\":6,\"max_deflate_level\":6,\"snappy\":false,"
	"\"sample_rate\":0,\"auth_required\":false,\"output_buffer_size\":"
	"16384,\"output_buffer_timeout\":250,\"topology_region\":\"\","
	"\"topology_zone\":\"\"}";
/* Appendix A: its frame header (size 0x134 = 4 + JSON length). */
static const uint8_t cap_identify_reply_hdr[] = { 0x00, 0x00, 0x01, 0x34,
						  0x00, 0x00, 0x00, 0x00 };
/* 2.2: AUTH success reply. */
static const char cap_auth_reply[] = "{\"identity\":\"probe-user\","
				     "\"identity_url\":\"http://x/u\","
				     "\"permission_count\":1}";
/* 1.6, 2.8: error texts. */
static const char cap_fin_failed[] =
	"E_FIN_FAILED FIN 0000000000000000 failed ID not in flight";
static const char cap_mpub_bad_topic[] =
	"E_BAD_TOPIC E_BAD_TOPIC MPUB topic name \"bad*topic\" is not valid";

/* Commands. */
static const uint8_t cap_magic[] = { 0x20, 0x20, 0x56, 0x32 };
/* 2.1 / Appendix A: header for a 116-byte JSON body, and that body. */
static const uint8_t cap_identify_hdr[] = { 0x49, 0x44, 0x45, 0x4E, 0x54,
					    0x49, 0x46, 0x59, 0x0A, 0x00,
					    0x00, 0x00, 0x74 };
static const char cap_identify_json[] =
	"{\"client_id\":\"c1\",\"hostname\":\"h1\",\"feature_negotiation\":true,"
	"\"heartbeat_interval\":30000,\"user_agent\":\"myclient/0.1\"}";
/* 8.2: go-nsq's IDENTIFY body. */
static const char cap_gonsq_json[] =
	"{\"client_id\":\"vm\",\"deflate\":false,\"deflate_level\":6,"
	"\"feature_negotiation\":true,\"heartbeat_interval\":2000,"
	"\"hostname\":\"vm\",\"long_id\":\"vm\",\"msg_timeout\":0,"
	"\"output_buffer_size\":16384,\"output_buffer_timeout\":250,"
	"\"sample_rate\":0,\"short_id\":\"vm\",\"snappy\":false,"
	"\"tls_v1\":false,\"topology_region\":\"\",\"topology_zone\":\"\","
	"\"user_agent\":\"go-nsq/1.1.0\"}";
static const uint8_t cap_sub[] = { 0x53, 0x55, 0x42, 0x20, 0x74, 0x31,
				   0x20, 0x63, 0x68, 0x31, 0x0A };
static const uint8_t cap_rdy10[] = { 0x52, 0x44, 0x59, 0x20, 0x31, 0x30, 0x0A };
static const uint8_t cap_pub[] = { 0x50, 0x55, 0x42, 0x20, 0x74, 0x31,
				   0x0A, 0x00, 0x00, 0x00, 0x05, 0x68,
				   0x65, 0x6C, 0x6C, 0x6F };
static const uint8_t cap_dpub[] = {
	0x44, 0x50, 0x55, 0x42, 0x20, 0x74, 0x31, 0x20, 0x31, 0x35, 0x30,
	0x30, 0x0A, 0x00, 0x00, 0x00, 0x05, 0x68, 0x65, 0x6C, 0x6C, 0x6F,
};
/* 2.5: MPUB of "one" and "two" (an example, not marked captured). */
static const uint8_t ref_mpub[] = {
	0x4D, 0x50, 0x55, 0x42, 0x20, 0x74, 0x31, 0x0A, 0x00, 0x00,
	0x00, 0x12, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03,
	0x6F, 0x6E, 0x65, 0x00, 0x00, 0x00, 0x03, 0x74, 0x77, 0x6F,
};

/* ---- helpers ------------------------------------------------------------- */

static void
be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t
rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/* The test's own frame builder: appends a frame at @out, returns its size. */
static size_t
mkframe(uint8_t *out, uint32_t type, const void *data, size_t len)
{
	be32(out, (uint32_t)(len + 4));
	be32(out + 4, type);
	if (len)
		memcpy(out + 8, data, len);
	return len + 8;
}

/* A heap copy of exactly @n bytes: ASan flags any read past it. */
static uint8_t *
dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);

	CHECK(d != NULL);
	if (n)
		memcpy(d, p, n);
	return d;
}

struct result {
	size_t n;
	int type[MAXFRAMES];
	size_t len[MAXFRAMES];
	uint8_t data[MAXFRAMES][512];
	ssize_t status; /* 0: clean end; < 0: the error that stopped it */
};

struct reader {
	size_t max_size;
	uint8_t acc[ACCCAP];
	size_t acc_len;
	struct result *res;
};

/* Append @n bytes and take every complete frame, as a real reader does. */
static void
feed(struct reader *r, const uint8_t *p, size_t n)
{
	struct sl_nsq_frame f;
	uint8_t *copy;
	ssize_t rc;

	if (r->res->status < 0)
		return;
	CHECK_LE(r->acc_len + n, ACCCAP);
	if (n)
		memcpy(r->acc + r->acc_len, p, n);
	r->acc_len += n;
	for (;;) {
		copy = dup_exact(r->acc, r->acc_len);
		memset(&f, 0xA5, sizeof(f));
		rc = sl_nsq_frame(copy, r->acc_len, r->max_size, &f);
		if (rc > 0) {
			struct result *res = r->res;

			CHECK_LE((size_t)rc, r->acc_len);
			CHECK(f.data == copy + 8);
			CHECK_EQ(f.len, (size_t)rc - 8);
			CHECK_LT(res->n, MAXFRAMES);
			CHECK_LE(f.len, sizeof(res->data[0]));
			res->type[res->n] = (int)f.type;
			res->len[res->n] = f.len;
			if (f.len)
				memcpy(res->data[res->n], f.data, f.len);
			res->n++;
			memmove(r->acc, r->acc + rc, r->acc_len - (size_t)rc);
			r->acc_len -= (size_t)rc;
		}
		free(copy);
		if (rc < 0)
			r->res->status = rc;
		if (rc <= 0)
			return;
	}
}

static void
reader_init(struct reader *r, struct result *res, size_t max_size)
{
	memset(res, 0, sizeof(*res));
	r->max_size = max_size;
	r->acc_len = 0;
	r->res = res;
}

static void
check_same(const struct result *a, const struct result *b)
{
	size_t i;

	CHECK_EQ(a->status, b->status);
	CHECK_EQ(a->n, b->n);
	for (i = 0; i < a->n; i++) {
		CHECK_EQ(a->type[i], b->type[i]);
		CHECK_EQ(a->len[i], b->len[i]);
		CHECK_MEMEQ(a->data[i], b->data[i], a->len[i]);
	}
}

/* The error frame of 1.3, whole: captured head + the elided tail. */
static size_t
cap_error_frame(uint8_t *out)
{
	size_t n = mkframe(out, 1, cap_error_text, strlen(cap_error_text));

	CHECK_EQ(n, 0x21 + 4);
	CHECK_MEMEQ(out, cap_error_head, sizeof(cap_error_head));
	return n;
}

/* ---- frames -------------------------------------------------------------- */

static void
test_frame_captured(void)
{
	static const struct {
		const uint8_t *bytes;
		size_t len;
		int type;
		const char *data;
	} cases[] = {
		{ cap_ok, sizeof(cap_ok), 0, "OK" },
		{ cap_heartbeat, sizeof(cap_heartbeat), 0, "_heartbeat_" },
		{ cap_close_wait, sizeof(cap_close_wait), 0, "CLOSE_WAIT" },
		{ cap_bad_protocol, sizeof(cap_bad_protocol), 1,
		  "E_BAD_PROTOCOL" },
	};
	struct sl_nsq_frame f;
	uint8_t buf[64];
	size_t i, n;

	for (i = 0; i < NELEM(cases); i++) {
		CHECK_EQ(sl_nsq_frame(cases[i].bytes, cases[i].len, BIG, &f),
			 (ssize_t)cases[i].len);
		CHECK_EQ(f.type, cases[i].type);
		CHECK_EQ(f.len, strlen(cases[i].data));
		CHECK_MEMEQ(f.data, cases[i].data, f.len);
		CHECK(f.data == cases[i].bytes + 8);
	}
	n = cap_error_frame(buf);
	CHECK_EQ(sl_nsq_frame(buf, n, BIG, &f), (ssize_t)n);
	CHECK_EQ(f.type, SL_NSQ_FRAME_ERROR);
	CHECK_EQ(f.len, strlen(cap_error_text));
	CHECK_EQ(sl_nsq_frame(cap_msg, sizeof(cap_msg), BIG, &f),
		 (ssize_t)sizeof(cap_msg));
	CHECK_EQ(f.type, SL_NSQ_FRAME_MESSAGE);
	CHECK_EQ(f.len, 26 + 5);
	/* out may be NULL: only the size is wanted. */
	CHECK_EQ(sl_nsq_frame(cap_ok, sizeof(cap_ok), BIG, NULL),
		 (ssize_t)sizeof(cap_ok));
}

static void
test_frame_every_type_and_empty(void)
{
	uint8_t buf[64];
	struct sl_nsq_frame f;
	uint32_t t;
	size_t n;

	for (t = 0; t <= 2; t++) {
		n = mkframe(buf, t, "xyz", 3);
		CHECK_EQ(sl_nsq_frame(buf, n, BIG, &f), 11);
		CHECK_EQ(f.type, t);
		CHECK_EQ(f.len, 3);
		/* Size 4: a frame with no data is well-formed at this layer. */
		n = mkframe(buf, t, NULL, 0);
		CHECK_EQ(sl_nsq_frame(buf, n, BIG, &f), 8);
		CHECK_EQ(f.type, t);
		CHECK_EQ(f.len, 0);
	}
	/* A trailing partial frame does not change the first answer. */
	n = mkframe(buf, 0, "OK", 2);
	buf[n] = 0;
	CHECK_EQ(sl_nsq_frame(buf, n + 1, BIG, &f), (ssize_t)n);
	CHECK_EQ(sl_nsq_frame(NULL, 0, BIG, &f), 0);
	CHECK_EQ(sl_nsq_frame(NULL, 1, BIG, &f), SLUICE_EINVAL);
}

static void
test_frame_incomplete(void)
{
	size_t k;

	/* Every strict prefix of a valid frame is "need more". */
	for (k = 0; k < sizeof(cap_msg); k++) {
		uint8_t *c = dup_exact(cap_msg, k);

		CHECK_EQ(sl_nsq_frame(c, k, BIG, NULL), 0);
		free(c);
	}
}

static void
test_frame_malformed(void)
{
	uint8_t b[8];
	uint32_t sz, t;

	/* Sizes 0..3 cannot hold the type: refused after 4 bytes. */
	for (sz = 0; sz < 4; sz++) {
		be32(b, sz);
		CHECK_EQ(sl_nsq_frame(b, 4, BIG, NULL), SLUICE_EPROTO);
	}
	/* Negative as int32, whatever the limit. */
	be32(b, 0x80000000u);
	CHECK_EQ(sl_nsq_frame(b, 4, SIZE_MAX, NULL), SLUICE_EPROTO);
	be32(b, 0xFFFFFFFFu);
	CHECK_EQ(sl_nsq_frame(b, 4, SIZE_MAX, NULL), SLUICE_EPROTO);
	/* Unknown type: undecided with 4..7 bytes, refused at 8. */
	be32(b, 100);
	for (t = 3; t < 10; t++) {
		size_t k;

		be32(b + 4, t);
		for (k = 4; k < 8; k++)
			CHECK_EQ(sl_nsq_frame(b, k, BIG, NULL), 0);
		CHECK_EQ(sl_nsq_frame(b, 8, BIG, NULL), SLUICE_EPROTO);
	}
	be32(b + 4, 0xFFFFFFFFu);
	CHECK_EQ(sl_nsq_frame(b, 8, BIG, NULL), SLUICE_EPROTO);
	be32(b + 4, 0x80000002u);
	CHECK_EQ(sl_nsq_frame(b, 8, BIG, NULL), SLUICE_EPROTO);
}

static void
test_frame_oversized(void)
{
	uint8_t b[64];
	size_t n, k;

	n = mkframe(b, 2, "0123456789012345678901234567890", 31);
	/* size field = 35: exactly at the limit passes, one over does not. */
	CHECK_EQ(sl_nsq_frame(b, n, 35, NULL), (ssize_t)n);
	CHECK_EQ(sl_nsq_frame(b, n, 34, NULL), SLUICE_EMSGSIZE);
	/* Decided as soon as the size is in, before the rest arrives. */
	for (k = 0; k < 4; k++)
		CHECK_EQ(sl_nsq_frame(b, k, 34, NULL), 0);
	for (k = 4; k <= n; k++)
		CHECK_EQ(sl_nsq_frame(b, k, 34, NULL), SLUICE_EMSGSIZE);
	/* The helper for max-msg-size: 5-byte body -> size 35. */
	CHECK_EQ(SL_NSQ_FRAME_SIZE_FOR(5), 35);
	CHECK_EQ(sl_nsq_frame(cap_msg, sizeof(cap_msg),
			      SL_NSQ_FRAME_SIZE_FOR(5), NULL),
		 (ssize_t)sizeof(cap_msg));
	CHECK_EQ(sl_nsq_frame(cap_msg, sizeof(cap_msg),
			      SL_NSQ_FRAME_SIZE_FOR(4), NULL),
		 SLUICE_EMSGSIZE);
	/* INT32_MAX itself is a legal size when the caller allows it. */
	be32(b, INT32_MAX);
	CHECK_EQ(sl_nsq_frame(b, 8, SIZE_MAX, NULL), 0);
	CHECK_EQ(sl_nsq_frame(b, 8, (size_t)INT32_MAX - 1, NULL),
		 SLUICE_EMSGSIZE);
	/* Connected to an HTTP port: a huge size, and recognisable. */
	memcpy(b, "HTTP/1.1 400 Bad Request", 24);
	CHECK_EQ(rd32(b), 1213486160u);
	CHECK_EQ(sl_nsq_frame(b, 24, 1 << 20, NULL), SLUICE_EMSGSIZE);
	CHECK(sl_nsq_is_http(b, 4));
	CHECK(!sl_nsq_is_http(b, 3));
	CHECK(!sl_nsq_is_http(cap_ok, sizeof(cap_ok)));
	CHECK(!sl_nsq_is_http(NULL, 4));
}

static size_t
add(uint8_t *s, size_t n, struct result *want, const uint8_t *fr, size_t len)
{
	memcpy(s + n, fr, len);
	want->type[want->n] = (int)rd32(fr + 4);
	want->len[want->n] = len - 8;
	memcpy(want->data[want->n], fr + 8, len - 8);
	want->n++;
	return n + len;
}

/* The stream: every captured frame, the IDENTIFY reply and two messages. */
static size_t
build_stream(uint8_t *s, struct result *want)
{
	size_t n = 0, i;
	uint8_t tmp[512], body[66];
	size_t tl;

	memset(want, 0, sizeof(*want));
	tl = mkframe(tmp, 0, cap_identify_reply, strlen(cap_identify_reply));
	CHECK_MEMEQ(tmp, cap_identify_reply_hdr, 8);
	n = add(s, n, want, tmp, tl);
	n = add(s, n, want, cap_ok, sizeof(cap_ok));
	n = add(s, n, want, cap_msg, sizeof(cap_msg));
	n = add(s, n, want, cap_heartbeat, sizeof(cap_heartbeat));
	tl = cap_error_frame(tmp);
	n = add(s, n, want, tmp, tl);
	n = add(s, n, want, cap_msg, sizeof(cap_msg));
	n = add(s, n, want, cap_close_wait, sizeof(cap_close_wait));
	tl = mkframe(tmp, 1, cap_fin_failed, strlen(cap_fin_failed));
	n = add(s, n, want, tmp, tl);
	/* A message whose body holds NUL, LF and a fake frame header. */
	memcpy(body, cap_msg + 8, 26);
	for (i = 0; i < 40; i++)
		body[26 + i] = (uint8_t)(i % 3 == 0   ? 0
					 : i % 3 == 1 ? '\n'
						      : 0xFF);
	memcpy(body + 30, cap_msg, 8);
	tl = mkframe(tmp, 2, body, 66);
	n = add(s, n, want, tmp, tl);
	n = add(s, n, want, cap_bad_protocol, sizeof(cap_bad_protocol));
	return n;
}

static void
test_split_every_point(void)
{
	static uint8_t s[ACCCAP];
	static struct result want, whole, got;
	static struct reader r;
	size_t n, k, i;

	n = build_stream(s, &want);
	reader_init(&r, &whole, BIG);
	feed(&r, s, n);
	CHECK_EQ(r.acc_len, 0);
	check_same(&whole, &want);
	/* One split point anywhere, including 0 and n. */
	for (k = 0; k <= n; k++) {
		reader_init(&r, &got, BIG);
		feed(&r, s, k);
		feed(&r, s + k, n - k);
		CHECK_EQ(r.acc_len, 0);
		check_same(&got, &want);
	}
	/* Two split points. */
	for (k = 0; k <= n; k += 7) {
		for (i = k; i <= n; i += 5) {
			reader_init(&r, &got, BIG);
			feed(&r, s, k);
			feed(&r, s + k, i - k);
			feed(&r, s + i, n - i);
			check_same(&got, &want);
		}
	}
	/* Byte at a time. */
	reader_init(&r, &got, BIG);
	for (k = 0; k < n; k++)
		feed(&r, s + k, 1);
	check_same(&got, &want);
}

static void
test_split_error_midstream(void)
{
	static uint8_t s[ACCCAP];
	static struct result want, got;
	static struct reader r;
	size_t n = 0, k;

	/* OK, heartbeat, then a frame over the limit: two frames, EMSGSIZE. */
	memcpy(s, cap_ok, sizeof(cap_ok));
	n += sizeof(cap_ok);
	memcpy(s + n, cap_heartbeat, sizeof(cap_heartbeat));
	n += sizeof(cap_heartbeat);
	n += mkframe(s + n, 2, "0123456789012345678901234567890123456789", 40);
	for (k = 0; k <= n; k++) {
		reader_init(&r, &got, 43);
		feed(&r, s, k);
		feed(&r, s + k, n - k);
		if (k == 0)
			want = got;
		check_same(&got, &want);
	}
	CHECK_EQ(want.n, 2);
	CHECK_EQ(want.status, SLUICE_EMSGSIZE);
	/* The same stream with a limit that admits it: three frames. */
	reader_init(&r, &got, 44);
	feed(&r, s, n);
	CHECK_EQ(got.n, 3);
	CHECK_EQ(got.status, 0);
}

/* ---- messages ------------------------------------------------------------ */

static void
test_message_captured(void)
{
	struct sl_nsq_frame f;
	struct sl_nsq_message m;

	CHECK_EQ(sl_nsq_frame(cap_msg, sizeof(cap_msg), BIG, &f), 39);
	CHECK_OK(sl_nsq_message(f.data, f.len, &m));
	CHECK_EQ(m.timestamp_ns, cap_msg_ts);
	CHECK_EQ(m.attempts, 1);
	CHECK_MEMEQ(m.id, cap_msg_id, SL_NSQ_ID_LEN);
	CHECK(m.id == (const char *)cap_msg + 18);
	CHECK_EQ(m.body_len, 5);
	CHECK_MEMEQ(m.body, "hello", 5);
	CHECK(m.body == cap_msg + 34);
}

static void
test_message_fields(void)
{
	uint8_t d[40];
	struct sl_nsq_message m;
	size_t k;

	/* Big-endian, full range: a negative timestamp and attempts 65535. */
	memset(d, 0, sizeof(d));
	d[0] = 0xFF;
	d[7] = 0xFE;
	d[8] = 0xFF;
	d[9] = 0xFF;
	CHECK_OK(sl_nsq_message(d, 26, &m));
	CHECK_EQ(m.timestamp_ns, (int64_t)-0x00FFFFFFFFFFFF02);
	CHECK_EQ(m.attempts, 65535);
	CHECK_EQ(m.body_len, 0);
	d[8] = 0x01;
	d[9] = 0x02;
	CHECK_OK(sl_nsq_message(d, 40, &m));
	CHECK_EQ(m.attempts, 0x0102);
	CHECK_EQ(m.body_len, 14);
	/* Shorter than the 26-byte header: malformed. */
	for (k = 0; k < 26; k++) {
		uint8_t *c = dup_exact(d, k);

		CHECK_EQ(sl_nsq_message(c, k, &m), SLUICE_EPROTO);
		free(c);
	}
	CHECK_EQ(sl_nsq_message(d, 26, NULL), SLUICE_EINVAL);
	CHECK_EQ(sl_nsq_message(NULL, 26, &m), SLUICE_EINVAL);
}

static void
test_message_short_frame(void)
{
	uint8_t b[64];
	struct sl_nsq_frame f;
	struct sl_nsq_message m;
	size_t n;

	/* A message frame of size 29 passes framing, fails decoding. */
	memset(b + 8, '0', 25);
	n = mkframe(b, 2, b + 8, 25);
	CHECK_EQ(sl_nsq_frame(b, n, BIG, &f), (ssize_t)n);
	CHECK_EQ(sl_nsq_message(f.data, f.len, &m), SLUICE_EPROTO);
}

/* ---- responses and errors ------------------------------------------------ */

static void
test_response_kind(void)
{
	static const struct {
		const char *s;
		enum sl_nsq_response k;
	} cases[] = {
		{ "OK", SL_NSQ_RESP_OK },
		{ "_heartbeat_", SL_NSQ_RESP_HEARTBEAT },
		{ "CLOSE_WAIT", SL_NSQ_RESP_CLOSE_WAIT },
		{ "{}", SL_NSQ_RESP_JSON },
		{ "{", SL_NSQ_RESP_JSON },
		{ "ok", SL_NSQ_RESP_OTHER },
		{ "OK ", SL_NSQ_RESP_OTHER },
		{ "O", SL_NSQ_RESP_OTHER },
		{ "OKK", SL_NSQ_RESP_OTHER },
		{ "_heartbeat", SL_NSQ_RESP_OTHER },
		{ "_heartbeat__", SL_NSQ_RESP_OTHER },
		{ "CLOSE_WAIT\n", SL_NSQ_RESP_OTHER },
		{ " {}", SL_NSQ_RESP_OTHER },
		{ "", SL_NSQ_RESP_OTHER },
	};
	struct sl_nsq_frame f;
	uint8_t *c;
	size_t i, n;

	for (i = 0; i < NELEM(cases); i++) {
		n = strlen(cases[i].s);
		c = dup_exact(cases[i].s, n);
		CHECK_EQ(sl_nsq_response_kind(c, n), cases[i].k);
		free(c);
	}
	CHECK_EQ(sl_nsq_response_kind(NULL, 0), SL_NSQ_RESP_OTHER);
	/* The captured frames and replies. */
	CHECK_GT(sl_nsq_frame(cap_ok, sizeof(cap_ok), BIG, &f), 0);
	CHECK_EQ(sl_nsq_response_kind(f.data, f.len), SL_NSQ_RESP_OK);
	CHECK_GT(sl_nsq_frame(cap_heartbeat, sizeof(cap_heartbeat), BIG, &f),
		 0);
	CHECK_EQ(sl_nsq_response_kind(f.data, f.len), SL_NSQ_RESP_HEARTBEAT);
	CHECK_GT(sl_nsq_frame(cap_close_wait, sizeof(cap_close_wait), BIG, &f),
		 0);
	CHECK_EQ(sl_nsq_response_kind(f.data, f.len), SL_NSQ_RESP_CLOSE_WAIT);
	CHECK_EQ(sl_nsq_response_kind((const uint8_t *)cap_identify_reply,
				      strlen(cap_identify_reply)),
		 SL_NSQ_RESP_JSON);
	CHECK_EQ(sl_nsq_response_kind((const uint8_t *)cap_auth_reply,
				      strlen(cap_auth_reply)),
		 SL_NSQ_RESP_JSON);
}

static void
test_error_parse(void)
{
	static const struct {
		const char *s, *code, *desc;
		bool fatal;
	} cases[] = {
		{ "E_INVALID invalid command FOO", "E_INVALID",
		  "invalid command FOO", true },
		{ "E_BAD_PROTOCOL", "E_BAD_PROTOCOL", "", true },
		{ "E_FIN_FAILED FIN 0000000000000000 failed ID not in flight",
		  "E_FIN_FAILED",
		  "FIN 0000000000000000 failed ID not in flight", false },
		{ "E_BAD_TOPIC E_BAD_TOPIC MPUB topic name \"bad*topic\" is "
		  "not valid",
		  "E_BAD_TOPIC",
		  "E_BAD_TOPIC MPUB topic name \"bad*topic\" is not valid",
		  true },
		{ "E_REQ_FAILED ", "E_REQ_FAILED", "", false },
		{ "E_TOUCH_FAILED  x", "E_TOUCH_FAILED", " x", false },
		{ "E_AUTH_FIRST AUTH required before PUB", "E_AUTH_FIRST",
		  "AUTH required before PUB", true },
		{ "E_SOMETHING_NEW what", "E_SOMETHING_NEW", "what", true },
	};
	struct sl_nsq_error e;
	uint8_t *c;
	size_t i, n;

	CHECK_EQ(strcmp(cases[0].s, cap_error_text), 0);
	CHECK_EQ(strcmp(cases[2].s, cap_fin_failed), 0);
	CHECK_EQ(strcmp(cases[3].s, cap_mpub_bad_topic), 0);
	for (i = 0; i < NELEM(cases); i++) {
		n = strlen(cases[i].s);
		c = dup_exact(cases[i].s, n);
		memset(&e, 0xA5, sizeof(e));
		CHECK_OK(sl_nsq_error_parse(c, n, &e));
		CHECK_EQ(e.code_len, strlen(cases[i].code));
		CHECK_MEMEQ(e.code, cases[i].code, e.code_len);
		CHECK(e.code == (const char *)c);
		CHECK_EQ(e.desc_len, strlen(cases[i].desc));
		CHECK_MEMEQ(e.desc, cases[i].desc, e.desc_len);
		CHECK(e.desc >= (const char *)c &&
		      e.desc + e.desc_len <= (const char *)c + n);
		CHECK_EQ(e.fatal, cases[i].fatal);
		free(c);
	}
	/* No code at all. */
	c = dup_exact(" x", 2);
	CHECK_EQ(sl_nsq_error_parse(c, 2, &e), SLUICE_EPROTO);
	CHECK_EQ(sl_nsq_error_parse(c, 1, &e), SLUICE_EPROTO);
	free(c);
	CHECK_EQ(sl_nsq_error_parse(NULL, 0, &e), SLUICE_EPROTO);
	CHECK_EQ(sl_nsq_error_parse(NULL, 3, &e), SLUICE_EINVAL);
	CHECK_EQ(sl_nsq_error_parse((const uint8_t *)"E_X", 3, NULL),
		 SLUICE_EINVAL);
}

static void
test_error_table(void)
{
	/* Section 2.13, in the reference's order. */
	static const struct {
		const char *code;
		bool fatal;
	} ref[] = {
		{ "E_BAD_PROTOCOL", true },    { "E_INVALID", true },
		{ "E_BAD_BODY", true },        { "E_BAD_TOPIC", true },
		{ "E_BAD_CHANNEL", true },     { "E_BAD_MESSAGE", true },
		{ "E_IDENTIFY_FAILED", true }, { "E_SUB_FAILED", true },
		{ "E_PUB_FAILED", true },      { "E_MPUB_FAILED", true },
		{ "E_DPUB_FAILED", true },     { "E_AUTH_DISABLED", true },
		{ "E_AUTH_ERROR", true },      { "E_AUTH_FIRST", true },
		{ "E_AUTH_FAILED", true },     { "E_UNAUTHORIZED", true },
		{ "E_FIN_FAILED", false },     { "E_REQ_FAILED", false },
		{ "E_TOUCH_FAILED", false },
	};
	static const char *const unknown[] = {
		"E_FIN",          "E_FIN_FAILEDX",
		"e_fin_failed",   "E_FIN_FAILED ",
		"FIN_FAILED",     "E_",
		"E_REQ_FAILE",    "X",
		"E_TOUCH_FAILEE",
	};
	char *c;
	size_t i, n;

	for (i = 0; i < NELEM(ref); i++) {
		n = strlen(ref[i].code);
		c = (char *)dup_exact(ref[i].code, n);
		CHECK(sl_nsq_error_is_known(c, n));
		CHECK_EQ(sl_nsq_error_is_fatal(c, n), ref[i].fatal);
		/* A prefix is another (unknown, hence fatal) code. */
		CHECK(!sl_nsq_error_is_known(c, n - 1));
		CHECK(sl_nsq_error_is_fatal(c, n - 1));
		free(c);
	}
	for (i = 0; i < NELEM(unknown); i++) {
		n = strlen(unknown[i]);
		CHECK(!sl_nsq_error_is_known(unknown[i], n));
		CHECK(sl_nsq_error_is_fatal(unknown[i], n));
	}
	CHECK(sl_nsq_error_is_fatal(NULL, 0));
	CHECK(sl_nsq_error_is_fatal("", 0));
	/* The code with an embedded NUL is not the listed one. */
	CHECK(sl_nsq_error_is_fatal("E_FIN_FAILED\0", 13));
}

/* ---- names --------------------------------------------------------------- */

static bool
ref_name_char(int c)
{
	return c != 0 &&
	       strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		      "0123456789._-",
		      c) != NULL;
}

static bool
valid(const char *s)
{
	size_t n = strlen(s);
	char *c = (char *)dup_exact(s, n);
	bool v = sl_nsq_name_is_valid(c, n);

	free(c);
	return v;
}

static void
test_names(void)
{
	char name[80];
	int ch;

	/* Length 1..64 incl. the suffix; the reference's captured cases. */
	memset(name, 'a', sizeof(name));
	name[64] = '\0';
	CHECK(valid(name));
	name[64] = 'a';
	name[65] = '\0';
	CHECK(!valid(name));
	CHECK(valid("a"));
	CHECK(!valid(""));
	CHECK(valid("a.b-c_d#ephemeral"));
	memset(name, 'a', sizeof(name));
	memcpy(name + 54, "#ephemeral", 11); /* 54 + 10 = 64 */
	CHECK(valid(name));
	memset(name, 'a', sizeof(name));
	memcpy(name + 55, "#ephemeral", 11); /* 65 */
	CHECK(!valid(name));
	CHECK(valid("a#ephemeral"));
	CHECK(!valid("#ephemeral"));
	CHECK(!valid("#"));
	CHECK(!valid("a#"));
	CHECK(!valid("a#ephemera"));
	CHECK(!valid("a#ephemeralx"));
	CHECK(!valid("a#Ephemeral"));
	CHECK(!valid("a#ephemeral#ephemeral"));
	CHECK(!valid("a#b"));
	CHECK(!valid("#ephemeral#ephemeral"));
	CHECK(valid("."));
	CHECK(valid(".."));
	CHECK(valid("Orders"));
	CHECK(valid("-_."));
	CHECK(!valid("a b"));
	CHECK(!valid("abc\n"));
	CHECK(!valid("bad*topic"));
	/* Every byte alone and in the middle, against the regex's class. */
	for (ch = 0; ch < 256; ch++) {
		name[0] = (char)ch;
		CHECK_EQ(sl_nsq_name_is_valid(name, 1), ref_name_char(ch));
		memcpy(name, "ab", 2);
		name[2] = (char)ch;
		memcpy(name + 3, "cd#ephemeral", 12);
		CHECK_EQ(sl_nsq_name_is_valid(name, 15), ref_name_char(ch));
	}
	CHECK(!sl_nsq_name_is_valid(NULL, 0));
	CHECK(!sl_nsq_name_is_valid(NULL, 3));
	CHECK(!sl_nsq_name_is_valid("a\0b", 3));
}

/* ---- encoders ------------------------------------------------------------ */

#define FILL 0xA5

/*
 * The size contract: (NULL, 0) gives the size; one byte short writes
 * nothing; exactly enough writes @want and nothing after it.  @enc is
 * called through a small closure struct so every command shares it.
 */
struct enc {
	int which;
	const char *topic, *channel, *id;
	size_t id_len;
	uint32_t num;
	const void *body;
	size_t len;
	const struct sluice_bytes *bodies;
	size_t n;
};

enum {
	MAGIC,
	IDENT,
	AUTH,
	SUB,
	RDY,
	FIN,
	REQ,
	TOUCH,
	CLS,
	NOP,
	PUB,
	DPUB,
	MPUB
};

static ssize_t
run(const struct enc *e, uint8_t *out, size_t cap)
{
	switch (e->which) {
	case MAGIC:
		return sl_nsq_enc_magic(out, cap);
	case IDENT:
		return sl_nsq_enc_identify(out, cap, e->body, e->len);
	case AUTH:
		return sl_nsq_enc_auth(out, cap, e->body, e->len);
	case SUB:
		return sl_nsq_enc_sub(out, cap, e->topic, e->channel);
	case RDY:
		return sl_nsq_enc_rdy(out, cap, e->num);
	case FIN:
		return sl_nsq_enc_fin(out, cap, e->id, e->id_len);
	case REQ:
		return sl_nsq_enc_req(out, cap, e->id, e->id_len, e->num);
	case TOUCH:
		return sl_nsq_enc_touch(out, cap, e->id, e->id_len);
	case CLS:
		return sl_nsq_enc_cls(out, cap);
	case NOP:
		return sl_nsq_enc_nop(out, cap);
	case PUB:
		return sl_nsq_enc_pub(out, cap, e->topic, e->body, e->len);
	case DPUB:
		return sl_nsq_enc_dpub(out, cap, e->topic, e->num, e->body,
				       e->len);
	case MPUB:
		return sl_nsq_enc_mpub(out, cap, e->topic, e->bodies, e->n);
	}
	CHECK_FAIL("bad encoder");
}

static bool
untouched(const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i] != FILL)
			return false;
	return true;
}

static void
expect_enc(const struct enc *e, const void *want, size_t n)
{
	uint8_t *buf = malloc(n + 16);
	size_t cap;

	CHECK(buf != NULL);
	CHECK_EQ(run(e, NULL, 0), (ssize_t)n);
	/* Every short capacity: the size, and no byte written. */
	for (cap = 0; cap < n; cap++) {
		memset(buf, FILL, n + 16);
		CHECK_EQ(run(e, buf, cap), (ssize_t)n);
		CHECK(untouched(buf, n + 16));
	}
	memset(buf, FILL, n + 16);
	CHECK_EQ(run(e, buf, n), (ssize_t)n);
	CHECK_MEMEQ(buf, want, n);
	CHECK(untouched(buf + n, 16));
	memset(buf, FILL, n + 16);
	CHECK_EQ(run(e, buf, n + 16), (ssize_t)n);
	CHECK_MEMEQ(buf, want, n);
	CHECK(untouched(buf + n, 16));
	/* out NULL with room claimed is a caller bug. */
	CHECK_EQ(run(e, NULL, n), SLUICE_EINVAL);
	free(buf);
}

static void
expect_err(const struct enc *e, ssize_t err)
{
	uint8_t buf[256];

	memset(buf, FILL, sizeof(buf));
	CHECK_EQ(run(e, buf, sizeof(buf)), err);
	CHECK(untouched(buf, sizeof(buf)));
	CHECK_EQ(run(e, NULL, 0), err);
}

static void
test_enc_captured(void)
{
	struct sluice_bytes two[] = { { "one", 3 }, { "two", 3 } };
	uint8_t want[512];
	size_t n;

	expect_enc(&(struct enc){ .which = MAGIC }, cap_magic,
		   sizeof(cap_magic));
	CHECK_MEMEQ(SL_NSQ_MAGIC, cap_magic, SL_NSQ_MAGIC_LEN);
	expect_enc(
		&(struct enc){ .which = SUB, .topic = "t1", .channel = "ch1" },
		cap_sub, sizeof(cap_sub));
	expect_enc(&(struct enc){ .which = RDY, .num = 10 }, cap_rdy10,
		   sizeof(cap_rdy10));
	expect_enc(&(struct enc){ .which = PUB,
				  .topic = "t1",
				  .body = "hello",
				  .len = 5 },
		   cap_pub, sizeof(cap_pub));
	expect_enc(&(struct enc){ .which = DPUB,
				  .topic = "t1",
				  .num = 1500,
				  .body = "hello",
				  .len = 5 },
		   cap_dpub, sizeof(cap_dpub));
	expect_enc(
		&(struct enc){
			.which = MPUB, .topic = "t1", .bodies = two, .n = 2 },
		ref_mpub, sizeof(ref_mpub));
	/* IDENTIFY: the captured header + the 116-byte body it announces. */
	n = strlen(cap_identify_json);
	CHECK_EQ(n, 0x74);
	memcpy(want, cap_identify_hdr, sizeof(cap_identify_hdr));
	memcpy(want + sizeof(cap_identify_hdr), cap_identify_json, n);
	expect_enc(&(struct enc){ .which = IDENT,
				  .body = cap_identify_json,
				  .len = n },
		   want, sizeof(cap_identify_hdr) + n);
	/* go-nsq's body: same header shape, its own length. */
	n = strlen(cap_gonsq_json);
	memcpy(want, "IDENTIFY\n", 9);
	be32(want + 9, (uint32_t)n);
	memcpy(want + 13, cap_gonsq_json, n);
	expect_enc(&(struct enc){ .which = IDENT,
				  .body = cap_gonsq_json,
				  .len = n },
		   want, 13 + n);
}

static void
test_enc_commands(void)
{
	const char *id = cap_msg_id;
	uint8_t want[128];

	expect_enc(&(struct enc){ .which = FIN, .id = id, .id_len = 16 },
		   "FIN 18aa77ec57269000\n", 21);
	expect_enc(&(struct enc){ .which = TOUCH, .id = id, .id_len = 16 },
		   "TOUCH 18aa77ec57269000\n", 23);
	expect_enc(&(struct enc){ .which = REQ, .id = id, .id_len = 16 },
		   "REQ 18aa77ec57269000 0\n", 23);
	expect_enc(
		&(struct enc){
			.which = REQ, .id = id, .id_len = 16, .num = 90000 },
		"REQ 18aa77ec57269000 90000\n", 27);
	expect_enc(&(struct enc){ .which = REQ,
				  .id = id,
				  .id_len = 16,
				  .num = UINT32_MAX },
		   "REQ 18aa77ec57269000 4294967295\n", 32);
	expect_enc(&(struct enc){ .which = CLS }, "CLS\n", 4);
	expect_enc(&(struct enc){ .which = NOP }, "NOP\n", 4);
	expect_enc(&(struct enc){ .which = RDY, .num = 0 }, "RDY 0\n", 6);
	expect_enc(&(struct enc){ .which = RDY, .num = 1 }, "RDY 1\n", 6);
	expect_enc(&(struct enc){ .which = RDY, .num = 2500 }, "RDY 2500\n", 9);
	expect_enc(&(struct enc){ .which = RDY, .num = UINT32_MAX },
		   "RDY 4294967295\n", 15);
	expect_enc(&(struct enc){ .which = DPUB,
				  .topic = "t",
				  .num = 0,
				  .body = "x",
				  .len = 1 },
		   "DPUB t 0\n\0\0\0\1x", 14);
	/* An opaque (non-hex) id is echoed verbatim. */
	expect_enc(&(struct enc){ .which = FIN,
				  .id = "\x01\xFFZZZZZZZZZZZZ\t\0",
				  .id_len = 16 },
		   "FIN \x01\xFFZZZZZZZZZZZZ\t\0\n", 21);
	/* AUTH: the secret is length-prefixed and may hold any byte. */
	memcpy(want, "AUTH\n\0\0\0\7s3\n\0cr\xFF", 16);
	expect_enc(&(struct enc){ .which = AUTH,
				  .body = "s3\n\0cr\xFF",
				  .len = 7 },
		   want, 16);
	/* Binary bodies with LF and NUL. */
	expect_enc(&(struct enc){ .which = PUB,
				  .topic = "a.b-c_d#ephemeral",
				  .body = "\n\0\n",
				  .len = 3 },
		   "PUB a.b-c_d#ephemeral\n\0\0\0\3\n\0\n", 29);
	expect_enc(&(struct enc){ .which = SUB,
				  .topic = "t#ephemeral",
				  .channel = "c#ephemeral" },
		   "SUB t#ephemeral c#ephemeral\n", 28);
}

/* An independent MPUB parser: checks the layout the reference gives. */
static void
check_mpub(const uint8_t *p, size_t n, const char *topic,
	   const struct sluice_bytes *bodies, size_t count)
{
	size_t line = 5 + strlen(topic) + 1, off, i, sum = 4;

	CHECK_GE(n, line + 8);
	CHECK_MEMEQ(p, "MPUB ", 5);
	CHECK_MEMEQ(p + 5, topic, strlen(topic));
	CHECK_EQ(p[line - 1], '\n');
	for (i = 0; i < count; i++)
		sum += 4 + bodies[i].len;
	CHECK_EQ(rd32(p + line), sum);
	CHECK_EQ(n, line + 4 + sum);
	CHECK_EQ(rd32(p + line + 4), count);
	off = line + 8;
	for (i = 0; i < count; i++) {
		CHECK_EQ(rd32(p + off), bodies[i].len);
		CHECK_MEMEQ(p + off + 4, bodies[i].ptr, bodies[i].len);
		off += 4 + bodies[i].len;
	}
	CHECK_EQ(off, n);
}

static void
test_enc_mpub_layout(void)
{
	static uint8_t data[4096], out[16384];
	struct sluice_bytes b[40];
	size_t count, i, used;
	ssize_t rc;

	for (i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 31 + 7);
	for (count = 1; count <= NELEM(b); count++) {
		used = 0;
		for (i = 0; i < count; i++) {
			/* Sizes 1, 2, ... with a jump past 255 and 65535. */
			b[i].len = i == 5 ? 300 : i == 9 ? 1000 : i % 7 + 1;
			b[i].ptr = data + used;
			used += b[i].len;
		}
		rc = sl_nsq_enc_mpub(NULL, 0, "topic.x", b, count);
		CHECK_GT(rc, 0);
		CHECK_LE((size_t)rc, sizeof(out));
		CHECK_EQ(sl_nsq_enc_mpub(out, sizeof(out), "topic.x", b, count),
			 rc);
		check_mpub(out, (size_t)rc, "topic.x", b, count);
		/* And one byte short writes nothing. */
		memset(out, FILL, sizeof(out));
		CHECK_EQ(sl_nsq_enc_mpub(out, (size_t)rc - 1, "topic.x", b,
					 count),
			 rc);
		CHECK(untouched(out, (size_t)rc));
	}
	/* One message of 65536 + 3 bytes: every size byte used. */
	{
		static uint8_t big[65539], bigout[65600];

		memset(big, 'q', sizeof(big));
		b[0].ptr = big;
		b[0].len = sizeof(big);
		rc = sl_nsq_enc_mpub(bigout, sizeof(bigout), "t", b, 1);
		CHECK_GT(rc, 0);
		check_mpub(bigout, (size_t)rc, "t", b, 1);
	}
}

static void
test_enc_invalid(void)
{
	static const char *const bad_names[] = {
		"",
		"a b",
		"bad*topic",
		"#ephemeral",
		"a\n",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	};
	struct sluice_bytes ok2[] = { { "a", 1 }, { "b", 1 } };
	struct sluice_bytes empty2[] = { { "a", 1 }, { "", 0 } };
	struct sluice_bytes null2[] = { { "a", 1 }, { NULL, 1 } };
	struct sluice_bytes huge2[] = { { "a", (size_t)INT32_MAX / 2 },
					{ "b", (size_t)INT32_MAX / 2 } };
	struct sluice_bytes huge1[] = { { "a", (size_t)INT32_MAX - 8 } };
	size_t i;

	CHECK_EQ(strlen(bad_names[5]), 65);
	for (i = 0; i < NELEM(bad_names); i++) {
		const char *t = bad_names[i];

		expect_err(&(struct enc){ .which = SUB,
					  .topic = t,
					  .channel = "c" },
			   SLUICE_EINVAL);
		expect_err(&(struct enc){ .which = SUB,
					  .topic = "t",
					  .channel = t },
			   SLUICE_EINVAL);
		expect_err(&(struct enc){ .which = PUB,
					  .topic = t,
					  .body = "x",
					  .len = 1 },
			   SLUICE_EINVAL);
		expect_err(&(struct enc){ .which = DPUB,
					  .topic = t,
					  .body = "x",
					  .len = 1 },
			   SLUICE_EINVAL);
		expect_err(&(struct enc){ .which = MPUB,
					  .topic = t,
					  .bodies = ok2,
					  .n = 2 },
			   SLUICE_EINVAL);
	}
	expect_err(&(struct enc){ .which = SUB, .channel = "c" },
		   SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = SUB, .topic = "t" }, SLUICE_EINVAL);
	/* Empty or missing bodies: nsqd refuses size <= 0 (fatal). */
	expect_err(
		&(struct enc){
			.which = PUB, .topic = "t", .body = "", .len = 0 },
		SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = PUB, .topic = "t", .len = 1 },
		   SLUICE_EINVAL);
	expect_err(
		&(struct enc){
			.which = DPUB, .topic = "t", .body = "", .len = 0 },
		SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = IDENT, .body = "{}", .len = 0 },
		   SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = AUTH, .body = "", .len = 0 },
		   SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = AUTH, .len = 3 }, SLUICE_EINVAL);
	expect_err(
		&(struct enc){
			.which = MPUB, .topic = "t", .bodies = ok2, .n = 0 },
		SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = MPUB, .topic = "t", .n = 1 },
		   SLUICE_EINVAL);
	expect_err(
		&(struct enc){
			.which = MPUB, .topic = "t", .bodies = empty2, .n = 2 },
		SLUICE_EINVAL);
	expect_err(
		&(struct enc){
			.which = MPUB, .topic = "t", .bodies = null2, .n = 2 },
		SLUICE_EINVAL);
	/* Sizes past the signed 32-bit field (never read: refused first). */
	expect_err(&(struct enc){ .which = PUB,
				  .topic = "t",
				  .body = "x",
				  .len = (size_t)INT32_MAX + 1 },
		   SLUICE_EMSGSIZE);
	expect_err(&(struct enc){ .which = AUTH,
				  .body = "x",
				  .len = (size_t)INT32_MAX + 1 },
		   SLUICE_EMSGSIZE);
	expect_err(
		&(struct enc){
			.which = MPUB, .topic = "t", .bodies = huge2, .n = 2 },
		SLUICE_EMSGSIZE);
	/* 4 + 4 + (INT32_MAX - 8) == INT32_MAX: fits, so only a size. */
	CHECK_EQ(sl_nsq_enc_mpub(NULL, 0, "t", huge1, 1),
		 (ssize_t)7 + 4 + INT32_MAX);
	huge1[0].len++;
	CHECK_EQ(sl_nsq_enc_mpub(NULL, 0, "t", huge1, 1), SLUICE_EMSGSIZE);
	/* Ids: exactly 16 bytes, and none that would break the line. */
	expect_err(
		&(struct enc){ .which = FIN, .id = cap_msg_id, .id_len = 15 },
		SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = FIN,
				  .id = "18aa77ec572690001",
				  .id_len = 17 },
		   SLUICE_EINVAL);
	expect_err(
		&(struct enc){ .which = TOUCH, .id = cap_msg_id, .id_len = 0 },
		SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = REQ, .id_len = 16 }, SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = REQ,
				  .id = "18aa77ec 7269000",
				  .id_len = 16 },
		   SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = FIN,
				  .id = "18aa77ec5726900\n",
				  .id_len = 16 },
		   SLUICE_EINVAL);
	expect_err(&(struct enc){ .which = TOUCH,
				  .id = "18aa77ec5726900\r",
				  .id_len = 16 },
		   SLUICE_EINVAL);
}

/* ---- guard page ---------------------------------------------------------- */

static void
test_guard_page(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint8_t *map, *end, *p;
	struct sl_nsq_frame f;
	struct sl_nsq_message m;
	struct sl_nsq_error e;
	uint8_t out[64];
	size_t k, n;

	CHECK_GT(pg, 0);
	map = mmap(NULL, (size_t)pg * 2, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(map != MAP_FAILED);
	CHECK_OK(mprotect(map + pg, (size_t)pg, PROT_NONE));
	end = map + pg;

	/* Every prefix of the message frame, ending on the guard. */
	for (k = 0; k <= sizeof(cap_msg); k++) {
		p = end - k;
		memcpy(p, cap_msg, k);
		CHECK_EQ(sl_nsq_frame(p, k, BIG, &f),
			 k == sizeof(cap_msg) ? (ssize_t)k : 0);
	}
	p = end - sizeof(cap_msg);
	CHECK_EQ(sl_nsq_frame(p, sizeof(cap_msg), BIG, &f),
		 (ssize_t)sizeof(cap_msg));
	CHECK_OK(sl_nsq_message(f.data, f.len, &m));
	CHECK_MEMEQ(m.body, "hello", 5);
	for (k = 0; k < 26; k++)
		CHECK_EQ(sl_nsq_message(end - k, k, &m), SLUICE_EPROTO);
	/* Header-only errors right at the end. */
	memcpy(end - 8, "\0\0\0\2\0\0\0\3", 8);
	CHECK_EQ(sl_nsq_frame(end - 8, 8, BIG, NULL), SLUICE_EPROTO);
	memcpy(end - 4, "HTTP", 4);
	CHECK_EQ(sl_nsq_frame(end - 4, 4, BIG, NULL), SLUICE_EMSGSIZE);
	CHECK(sl_nsq_is_http(end - 4, 4));
	/* Responses, errors and names that end on the guard. */
	memcpy(end - 2, "OK", 2);
	CHECK_EQ(sl_nsq_response_kind(end - 2, 2), SL_NSQ_RESP_OK);
	CHECK_EQ(sl_nsq_response_kind(end - 1, 1), SL_NSQ_RESP_OTHER);
	memcpy(end - 11, "_heartbeat_", 11);
	CHECK_EQ(sl_nsq_response_kind(end - 11, 11), SL_NSQ_RESP_HEARTBEAT);
	n = strlen("E_BAD_PROTOCOL");
	memcpy(end - n, "E_BAD_PROTOCOL", n);
	CHECK_OK(sl_nsq_error_parse(end - n, n, &e));
	CHECK_EQ(e.code_len, n);
	CHECK_EQ(e.desc_len, 0);
	CHECK(e.fatal);
	CHECK(sl_nsq_error_is_fatal((const char *)end - 3, 3));
	memcpy(end - 17, "a.b-c_d#ephemeral", 17);
	CHECK(sl_nsq_name_is_valid((const char *)end - 17, 17));
	/* Encoder inputs ending on the guard: id, body, topic string. */
	memcpy(end - 16, cap_msg_id, 16);
	CHECK_EQ(sl_nsq_enc_fin(out, sizeof(out), (const char *)end - 16, 16),
		 21);
	CHECK_MEMEQ(out, "FIN 18aa77ec57269000\n", 21);
	CHECK_EQ(
		sl_nsq_enc_req(out, sizeof(out), (const char *)end - 16, 16, 7),
		23);
	memcpy(end - 3, "t1", 3);
	CHECK_EQ(sl_nsq_enc_pub(out, sizeof(out), (const char *)end - 3,
				end - 16, 16),
		 7 + 4 + 16);
	CHECK_EQ(sl_nsq_enc_sub(out, sizeof(out), (const char *)end - 3,
				(const char *)end - 3),
		 10);
	CHECK_MEMEQ(out, "SUB t1 t1\n", 10);
	CHECK_OK(munmap(map, (size_t)pg * 2));
}

CHECK_MAIN(test_frame_captured, test_frame_every_type_and_empty,
	   test_frame_incomplete, test_frame_malformed, test_frame_oversized,
	   test_split_every_point, test_split_error_midstream,
	   test_message_captured, test_message_fields, test_message_short_frame,
	   test_response_kind, test_error_parse, test_error_table, test_names,
	   test_enc_captured, test_enc_commands, test_enc_mpub_layout,
	   test_enc_invalid, test_guard_page)
