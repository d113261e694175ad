/* SPDX-License-Identifier: MIT */
/*
 * test_fake_nsqd.c - tests of the fake_nsqd test server against the NSQ
 * protocol reference (docs/nsq-protocol.md in the shared docs).
 *
 * Each case starts the real program (from $SLUICE_FAKE_NSQD, else beside
 * this binary) as a child with its stdin and stdout on pipes, reads
 * "listening on PORT", talks to it over plain sockets and kills it at the
 * end.  Replies are compared byte for byte with the reference's [captured]
 * sequences.  The server's timers run on real time (it is a separate
 * process), so the cases use short intervals; every wait is a poll() with
 * a generous guard, never a sleep.  Absence of a frame is proved with a
 * barrier instead of waiting: the server flushes each loop turn's output
 * before it reads again, so the reply to the second of two PUB round trips
 * comes after anything the first turn produced.
 *
 * The upgrades (section 6) are checked on the wire too: the snappy bytes
 * against the [captured] ones, deflate by inflating what comes (zlib's
 * encoding differs from Go's, so nsqd's captured deflate bytes are decoded
 * by the client's test instead), TLS with OpenSSL in this test and a
 * certificate made at run time (tls_certs.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ZLIB_CONST
#include <zlib.h>

#include "check.h"
#include "proto/nsq.h"
#include "proto/nsq_snappy.h"
#include "tls_certs.h"

#define GUARD_MS 5000
#include "fake_nsqd_child.h"

static int
dial(void)
{
	struct sockaddr_in sa = { 0 };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	CHECK_GE(fd, 0);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)srv.port);
	CHECK_OK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)));
	return fd;
}

static void
put(int fd, const void *p, size_t n)
{
	CHECK_EQ(write(fd, p, n), (ssize_t)n);
}

/* A literal that may hold NUL bytes. */
#define PUTL(fd, lit) put((fd), (lit), sizeof(lit) - 1)

static void
puts_(int fd, const char *s)
{
	put(fd, s, strlen(s));
}

/* Exactly @n bytes within the guard: n, or 0 at EOF. */
static size_t
get(int fd, void *buf, size_t n)
{
	size_t got = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	while (got < n) {
		ssize_t r;

		CHECK_GT(poll(&p, 1, GUARD_MS), 0);
		r = read(fd, (char *)buf + got, n - got);
		CHECK_GE(r, 0);
		if (r == 0)
			return 0;
		got += (size_t)r;
	}
	return n;
}

struct frame {
	uint8_t raw[8 + 4096];
	size_t len; /* of raw */
	int type;
	const uint8_t *data;
	size_t dlen;
};

/* The next frame; false at EOF. */
static bool
frame(int fd, struct frame *f)
{
	uint32_t size;

	if (get(fd, f->raw, 8) == 0)
		return false;
	size = (uint32_t)f->raw[0] << 24 | (uint32_t)f->raw[1] << 16 |
	       (uint32_t)f->raw[2] << 8 | f->raw[3];
	CHECK_GE(size, 4);
	CHECK_LE(size, sizeof(f->raw) - 4);
	CHECK_EQ(get(fd, f->raw + 8, size - 4), size - 4);
	f->len = 4 + size;
	f->type = f->raw[7];
	f->data = f->raw + 8;
	f->dlen = size - 4;
	return true;
}

static bool
is_hb(const struct frame *f)
{
	return f->type == 0 && f->dlen == 11 &&
	       memcmp(f->data, "_heartbeat_", 11) == 0;
}

/* The next frame that is not a heartbeat. */
static void
frame_nohb(int fd, struct frame *f)
{
	do
		CHECK(frame(fd, f));
	while (is_hb(f));
}

static void
expect_bytes(int fd, const uint8_t *want, size_t n)
{
	struct frame f;

	frame_nohb(fd, &f);
	CHECK_EQ(f.len, n);
	CHECK_MEMEQ(f.raw, want, n);
}

static void
expect_text(int fd, int type, const char *text)
{
	struct frame f;

	frame_nohb(fd, &f);
	CHECK_EQ(f.type, type);
	CHECK_EQ(f.dlen, strlen(text));
	CHECK_MEMEQ(f.data, text, f.dlen);
}

/* The server closes: only EOF (after heartbeats at most) may follow. */
static void
expect_eof(int fd)
{
	struct frame f;

	while (frame(fd, &f))
		CHECK(is_hb(&f));
	close(fd);
}

static const uint8_t OK[] = { 0, 0, 0, 6, 0, 0, 0, 0, 0x4F, 0x4B };

static void
pub(int fd, const char *topic, const char *body)
{
	uint8_t buf[256];
	ssize_t n = sl_nsq_enc_pub(buf, sizeof(buf), topic, body, strlen(body));

	CHECK_GT(n, 0);
	put(fd, buf, (size_t)n);
	expect_bytes(fd, OK, sizeof(OK));
}

/* Two round trips: everything the server sent before is in by now. */
static void
barrier(int fd)
{
	pub(fd, "barrier", "x");
	pub(fd, "barrier", "x");
}

/* Dial srv and send the magic and IDENTIFY @json. */
static int
hello(const char *json)
{
	uint8_t buf[512];
	ssize_t n;
	int fd = dial();

	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	n = sl_nsq_enc_identify(buf, sizeof(buf), json, strlen(json));
	CHECK_GT(n, 0);
	put(fd, buf, (size_t)n);
	return fd;
}

/* Magic + IDENTIFY @json (+ its reply checked loosely) + SUB t ch. */
static int
consumer(const char *json, const char *topic, const char *ch)
{
	uint8_t buf[512];
	struct frame f;
	ssize_t n;
	int fd = hello(json);

	frame_nohb(fd, &f);
	CHECK_EQ(f.type, 0);
	n = sl_nsq_enc_sub(buf, sizeof(buf), topic, ch);
	CHECK_GT(n, 0);
	put(fd, buf, (size_t)n);
	expect_bytes(fd, OK, sizeof(OK));
	return fd;
}

struct m {
	uint16_t attempts;
	char id[SL_NSQ_ID_LEN + 1];
	char body[64];
	int64_t ts;
};

static void
expect_msg(int fd, struct m *m)
{
	struct sl_nsq_message sm;
	struct frame f;

	frame_nohb(fd, &f);
	CHECK_EQ(f.type, 2);
	CHECK_OK(sl_nsq_message(f.data, f.dlen, &sm));
	CHECK_LT(sm.body_len, sizeof(m->body));
	m->attempts = sm.attempts;
	m->ts = sm.timestamp_ns;
	memcpy(m->id, sm.id, SL_NSQ_ID_LEN);
	m->id[SL_NSQ_ID_LEN] = '\0';
	memcpy(m->body, sm.body, sm.body_len);
	m->body[sm.body_len] = '\0';
}

/* "VERB id\n", or "VERB id arg\n" when @arg >= 0. */
static void
cmd(int fd, const char *verb, const char *id, int arg)
{
	char line[128];

	if (arg < 0)
		snprintf(line, sizeof(line), "%s %s\n", verb, id);
	else
		snprintf(line, sizeof(line), "%s %s %d\n", verb, id, arg);
	puts_(fd, line);
}

/* ---- cases ------------------------------------------------------------- */

static void
test_identify_reply_is_captured(void)
{
	/* Appendix A: the JSON reply with server defaults, size 0x134. */
	static const char want[] =
		"{\"max_rdy_count\":2500,\"version\":\"1.3.0\","
		"\"max_msg_timeout\":900000,\"msg_timeout\":60000,"
		"\"tls_v1\":false,\"deflate\":false,\"deflate_level\":6,"
		"\"max_deflate_level\":6,\"snappy\":false,\"sample_rate\":0,"
		"\"auth_required\":false,\"output_buffer_size\":16384,"
		"\"output_buffer_timeout\":250,\"topology_region\":\"\","
		"\"topology_zone\":\"\"}";
	static const char js[] =
		"{\"client_id\":\"c1\",\"hostname\":\"h1\","
		"\"feature_negotiation\":true,\"heartbeat_interval\":30000,"
		"\"user_agent\":\"myclient/0.1\"}";
	static const uint8_t hdr[] = { 0x49, 0x44, 0x45, 0x4E, 0x54, 0x49, 0x46,
				       0x59, 0x0A, 0x00, 0x00, 0x00, 0x74 };
	static const uint8_t v1[] = { 0x00, 0x00, 0x00, 0x12, 0x00, 0x00,
				      0x00, 0x01, 0x45, 0x5F, 0x42, 0x41,
				      0x44, 0x5F, 0x50, 0x52, 0x4F, 0x54,
				      0x4F, 0x43, 0x4F, 0x4C };
	struct frame f;
	int fd;

	srv_start(NULL);
	CHECK_EQ(strlen(js), 0x74);
	fd = dial();
	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	put(fd, hdr, sizeof(hdr));
	put(fd, js, strlen(js));
	frame_nohb(fd, &f);
	CHECK_EQ(f.raw[0], 0);
	CHECK_EQ(f.raw[1], 0);
	CHECK_EQ(f.raw[2], 0x01);
	CHECK_EQ(f.raw[3], 0x34);
	CHECK_EQ(f.type, 0);
	CHECK_EQ(f.dlen, strlen(want));
	CHECK_MEMEQ(f.data, want, f.dlen);
	close(fd);

	/* Without feature_negotiation: plain OK. */
	fd = dial();
	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	put(fd, "IDENTIFY\n\0\0\0\x02{}", 15);
	expect_bytes(fd, OK, sizeof(OK));
	close(fd);

	/* A wrong magic: the captured E_BAD_PROTOCOL frame, then close. */
	fd = dial();
	puts_(fd, "  V1");
	expect_bytes(fd, v1, sizeof(v1));
	expect_eof(fd);

	/* msg_timeout is negotiated and reported. */
	fd = dial();
	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	PUTL(fd, "IDENTIFY\n\0\0\0\x2f{\"feature_negotiation\":true,"
		 "\"msg_timeout\":5000}");
	frame_nohb(fd, &f);
	CHECK(memmem(f.data, f.dlen, "\"msg_timeout\":5000,", 19) != NULL);
	close(fd);

	/* Out-of-range heartbeat interval: captured text, fatal. */
	fd = dial();
	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	PUTL(fd, "IDENTIFY\n\0\0\0\x1a{\"heartbeat_interval\":500}");
	expect_text(fd, 1,
		    "E_BAD_BODY IDENTIFY heartbeat interval (500) is "
		    "invalid");
	expect_eof(fd);
	srv_stop();
}

static void
test_pub_sub_message_layout(void)
{
	static const uint8_t pubcap[] = { 0x50, 0x55, 0x42, 0x20, 0x74, 0x31,
					  0x0A, 0x00, 0x00, 0x00, 0x05, 0x68,
					  0x65, 0x6C, 0x6C, 0x6F };
	static const uint8_t subcap[] = { 0x53, 0x55, 0x42, 0x20, 0x74, 0x31,
					  0x20, 0x63, 0x68, 0x31, 0x0A };
	struct timespec t0, t1;
	struct frame f;
	int fd, i;

	srv_start(NULL);
	fd = dial();
	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	put(fd, subcap, sizeof(subcap));
	expect_bytes(fd, OK, sizeof(OK));
	clock_gettime(CLOCK_REALTIME, &t0);
	put(fd, pubcap, sizeof(pubcap));
	expect_bytes(fd, OK, sizeof(OK));
	clock_gettime(CLOCK_REALTIME, &t1);
	puts_(fd, "RDY 10\n");
	frame_nohb(fd, &f);
	/* 00 00 00 23 00 00 00 02 <8 ts> 00 01 <16 id> "hello" */
	CHECK_EQ(f.len, 8 + 31);
	CHECK_MEMEQ(f.raw, "\0\0\0\x23\0\0\0\x02", 8);
	{
		int64_t ts = 0;

		for (i = 0; i < 8; i++)
			ts = (int64_t)((uint64_t)ts << 8 | f.raw[8 + i]);
		CHECK_GE(ts, (int64_t)t0.tv_sec * 1000000000 + t0.tv_nsec);
		CHECK_LE(ts, (int64_t)t1.tv_sec * 1000000000 + t1.tv_nsec);
	}
	CHECK_EQ(f.raw[16], 0);
	CHECK_EQ(f.raw[17], 1);
	for (i = 18; i < 34; i++)
		CHECK((f.raw[i] >= '0' && f.raw[i] <= '9') ||
		      (f.raw[i] >= 'a' && f.raw[i] <= 'f'));
	CHECK_MEMEQ(f.raw + 34, "hello", 5);
	close(fd);
	srv_stop();
}

static void
test_error_frames(void)
{
	static const char foo[] = "\0\0\0\x21\0\0\0\x01"
				  "E_INVALID invalid command FOO";
	int fd;

	srv_start(NULL);
	fd = dial();
	puts_(fd, "  V2FOO\n");
	expect_bytes(fd, (const uint8_t *)foo, sizeof(foo) - 1);
	expect_eof(fd);

	fd = dial();
	puts_(fd, "  V2RDY 1\n");
	expect_text(fd, 1, "E_INVALID cannot RDY in current state");
	expect_eof(fd);

	fd = consumer("{}", "t1", "ch1");
	puts_(fd, "RDY 2501\n");
	expect_text(fd, 1, "E_INVALID RDY count 2501 out of range 0-2500");
	expect_eof(fd);

	fd = consumer("{}", "t1", "ch1");
	puts_(fd, "RDY -1\n");
	expect_text(fd, 1, "E_INVALID RDY could not parse count -1");
	expect_eof(fd);

	/* The three non-fatal errors: the connection keeps working. */
	fd = consumer("{}", "t1", "ch1");
	puts_(fd, "FIN 0000000000000000\n");
	expect_text(fd, 1,
		    "E_FIN_FAILED FIN 0000000000000000 failed ID not "
		    "in flight");
	puts_(fd, "REQ 0000000000000000 0\n");
	expect_text(fd, 1,
		    "E_REQ_FAILED REQ 0000000000000000 failed ID not "
		    "in flight");
	puts_(fd, "TOUCH 0000000000000000\n");
	expect_text(fd, 1,
		    "E_TOUCH_FAILED TOUCH 0000000000000000 failed ID "
		    "not in flight");
	barrier(fd);
	puts_(fd, "REQ 0000000000000000\n");
	expect_text(fd, 1, "E_INVALID REQ insufficient number of params");
	expect_eof(fd);

	fd = consumer("{}", "t1", "ch1");
	puts_(fd, "FIN 00\n");
	expect_text(fd, 1, "E_INVALID invalid message ID");
	expect_eof(fd);

	fd = dial();
	puts_(fd, "  V2SUB t1 ch1\nSUB t1 ch1\n");
	expect_bytes(fd, OK, sizeof(OK));
	expect_text(fd, 1, "E_INVALID cannot SUB in current state");
	expect_eof(fd);

	fd = dial();
	puts_(fd, "  V2nop\n");
	expect_text(fd, 1, "E_INVALID invalid command nop");
	expect_eof(fd);

	fd = dial();
	PUTL(fd, "  V2MPUB t1\n\0\0\0\x04\0\0\0\0");
	expect_text(fd, 1, "E_BAD_BODY MPUB invalid message count 0");
	expect_eof(fd);

	fd = dial();
	PUTL(fd, "  V2DPUB t1 3600001\n\0\0\0\x01x");
	expect_text(fd, 1,
		    "E_INVALID DPUB timeout 3600001 out of range "
		    "0-3600000");
	expect_eof(fd);
	srv_stop();
}

static void
test_rdy_caps_in_flight(void)
{
	static const struct sluice_bytes b[] = {
		{ "m0", 2 }, { "m1", 2 }, { "m2", 2 }, { "m3", 2 }, { "m4", 2 },
		{ "m5", 2 }, { "m6", 2 }, { "m7", 2 }, { "m8", 2 }, { "m9", 2 },
	};
	uint8_t buf[512];
	struct m m[10];
	bool seen[10] = { false };
	ssize_t n;
	int fd, i;

	srv_start(NULL);
	fd = consumer("{}", "rt", "c");
	n = sl_nsq_enc_mpub(buf, sizeof(buf), "rt", b, 10);
	CHECK_GT(n, 0);
	put(fd, buf, (size_t)n);
	expect_bytes(fd, OK, sizeof(OK));
	barrier(fd); /* RDY 0 after SUB: nothing yet */
	puts_(fd, "RDY 3\n");
	for (i = 0; i < 3; i++)
		expect_msg(fd, &m[i]);
	barrier(fd); /* no fourth: barrier's OKs come first */
	/* Each FIN frees one slot: exactly one more each time. */
	for (i = 3; i < 10; i++) {
		cmd(fd, "FIN", m[i - 3].id, -1);
		expect_msg(fd, &m[i]);
		barrier(fd);
	}
	for (i = 0; i < 10; i++) {
		CHECK_EQ(m[i].attempts, 1);
		CHECK(m[i].body[0] == 'm' && m[i].body[1] >= '0' &&
		      m[i].body[1] <= '9');
		CHECK(!seen[m[i].body[1] - '0']);
		seen[m[i].body[1] - '0'] = true;
	}
	/* Lowering RDY below in flight stops delivery until answered. */
	close(fd);
	srv_stop();
}

static void
test_timeout_redelivers_with_attempts(void)
{
	static const char *const a[] = { "--min-interval", "50", NULL };
	struct m m1, m2, m3;
	int64_t t0, t1;
	int fd;

	srv_start(a);
	fd = consumer("{\"msg_timeout\":200}", "tt", "c");
	pub(fd, "tt", "late");
	puts_(fd, "RDY 1\n");
	expect_msg(fd, &m1);
	t0 = mono_ms();
	CHECK_EQ(m1.attempts, 1);
	expect_msg(fd, &m2);
	t1 = mono_ms();
	CHECK_GE(t1 - t0, 190);
	CHECK_STREQ(m2.id, m1.id);
	CHECK_STREQ(m2.body, "late");
	CHECK_EQ(m2.attempts, 2);
	CHECK_EQ(m2.ts, m1.ts);
	expect_msg(fd, &m3);
	CHECK_STREQ(m3.id, m1.id);
	CHECK_EQ(m3.attempts, 3);
	/* Its old delivery timed out: FIN of it now succeeds for m3 only. */
	cmd(fd, "FIN", m3.id, -1);
	barrier(fd);
	cmd(fd, "FIN", m3.id, -1);
	{
		char want[80];

		snprintf(want, sizeof(want),
			 "E_FIN_FAILED FIN %s failed ID not in flight", m3.id);
		expect_text(fd, 1, want);
	}
	close(fd);
	srv_stop();
}

static void
test_fin_stops_redelivery(void)
{
	static const char *const a[] = { "--min-interval", "50", NULL };
	struct m ma, mb, r;
	int fd;

	srv_start(a);
	fd = consumer("{\"msg_timeout\":150}", "ft", "c");
	pub(fd, "ft", "a");
	pub(fd, "ft", "b");
	puts_(fd, "RDY 2\n");
	expect_msg(fd, &ma);
	expect_msg(fd, &mb);
	CHECK_STREQ(ma.body, "a");
	CHECK_STREQ(mb.body, "b");
	cmd(fd, "FIN", ma.id, -1);
	/* a's deadline was not after b's, so an unFINed a would come first. */
	expect_msg(fd, &r);
	CHECK_STREQ(r.body, "b");
	CHECK_EQ(r.attempts, 2);
	cmd(fd, "FIN", r.id, -1);
	barrier(fd);
	close(fd);
	srv_stop();
}

static void
test_req_delay(void)
{
	static const char *const a[] = { "--min-interval", "50", NULL };
	struct m m1, m2, m3;
	int64_t t0;
	int fd;

	srv_start(a);
	fd = consumer("{\"msg_timeout\":60000}", "qt", "c");
	pub(fd, "qt", "q");
	puts_(fd, "RDY 5\n");
	expect_msg(fd, &m1);
	cmd(fd, "REQ", m1.id, 0);
	expect_msg(fd, &m2); /* immediate */
	CHECK_STREQ(m2.id, m1.id);
	CHECK_EQ(m2.attempts, 2);
	t0 = mono_ms();
	cmd(fd, "REQ", m2.id, 300);
	barrier(fd); /* not before the delay */
	expect_msg(fd, &m3);
	CHECK_GE(mono_ms() - t0, 290);
	CHECK_STREQ(m3.id, m1.id);
	CHECK_EQ(m3.attempts, 3);
	CHECK_STREQ(m3.body, "q");
	close(fd);
	srv_stop();
}

static void
test_cls_close_wait(void)
{
	static const uint8_t cw[] = { 0x00, 0x00, 0x00, 0x0E, 0x00, 0x00,
				      0x00, 0x00, 0x43, 0x4C, 0x4F, 0x53,
				      0x45, 0x5F, 0x57, 0x41, 0x49, 0x54 };
	struct m m1;
	int fd;

	srv_start(NULL);
	fd = consumer("{}", "ct", "c");
	pub(fd, "ct", "one");
	puts_(fd, "RDY 1\n");
	expect_msg(fd, &m1);
	pub(fd, "ct", "two");
	puts_(fd, "CLS\n");
	expect_bytes(fd, cw, sizeof(cw));
	/* Still open: FIN of the in-flight message is accepted. */
	cmd(fd, "FIN", m1.id, -1);
	puts_(fd, "RDY 1\n"); /* ignored in closing */
	barrier(fd);          /* neither an error nor "two" came */
	puts_(fd, "CLS\n");
	expect_text(fd, 1, "E_INVALID cannot CLS in current state");
	expect_eof(fd);
	/* "two" is still there for the next consumer. */
	fd = consumer("{}", "ct", "c");
	puts_(fd, "RDY 1\n");
	expect_msg(fd, &m1);
	CHECK_STREQ(m1.body, "two");
	close(fd);
	srv_stop();
}

static void
test_heartbeats(void)
{
	static const char *const a[] = { "--min-interval", "50", NULL };
	static const uint8_t hb[] = { 0x00, 0x00, 0x00, 0x0F, 0x00, 0x00, 0x00,
				      0x00, 0x5F, 0x68, 0x65, 0x61, 0x72, 0x74,
				      0x62, 0x65, 0x61, 0x74, 0x5F };
	uint8_t buf[128];
	struct frame f;
	int64_t t0;
	ssize_t n;
	int fd, i;
	const char *js = "{\"heartbeat_interval\":100}";

	srv_start(a);
	fd = dial();
	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	n = sl_nsq_enc_identify(buf, sizeof(buf), js, strlen(js));
	put(fd, buf, (size_t)n);
	CHECK(frame(fd, &f));
	CHECK_EQ(f.len, sizeof(OK));
	/* Answered heartbeats keep coming; the connection stays up. */
	for (i = 0; i < 5; i++) {
		CHECK(frame(fd, &f));
		CHECK_EQ(f.len, sizeof(hb));
		CHECK_MEMEQ(f.raw, hb, sizeof(hb));
		puts_(fd, "NOP\n");
	}
	/* Unanswered: closed 2 intervals after the last command. */
	t0 = mono_ms();
	expect_eof(fd);
	CHECK_GE(mono_ms() - t0, 100);
	srv_stop();
}

static void
test_fault_drop_and_malformed(void)
{
	static const char *const a[] = { "--drop-after", "2", NULL };
	static const uint8_t bad[] = { 0, 0, 0, 6, 0, 0, 0, 7, 0x4F, 0x4B };
	struct frame f;
	struct m m;
	int fd, i;

	srv_start(a);
	fd = consumer("{}", "dt", "c");
	for (i = 0; i < 3; i++)
		pub(fd, "dt", "x");
	puts_(fd, "RDY 3\n");
	expect_msg(fd, &m);
	expect_msg(fd, &m);
	expect_eof(fd);

	fd = consumer("{}", "mt", "c");
	srv_ctl("malformed");
	CHECK(frame(fd, &f));
	CHECK_EQ(f.len, sizeof(bad));
	CHECK_MEMEQ(f.raw, bad, sizeof(bad));
	CHECK_EQ(sl_nsq_frame(f.raw, f.len, 1024, NULL), SLUICE_EPROTO);
	srv_ctl("drop");
	expect_eof(fd);
	srv_stop();
}

static void
test_fault_oversized_and_stall(void)
{
	static const char *const a[] = { "--max-msg-size", "100",
					 "--oversized-after", "1", NULL };
	uint8_t hdr[8];
	struct pollfd p;
	struct m m;
	int fd;

	srv_start(a);
	fd = consumer("{}", "ot", "c");
	pub(fd, "ot", "x");
	puts_(fd, "RDY 1\n");
	expect_msg(fd, &m);
	CHECK_EQ(get(fd, hdr, 8), 8);
	CHECK_EQ(sl_nsq_frame(hdr, 8, SL_NSQ_FRAME_SIZE_FOR(100), NULL),
		 SLUICE_EMSGSIZE);
	CHECK_EQ(sl_nsq_frame(hdr, 8, SL_NSQ_FRAME_SIZE_FOR(101), NULL), 0);
	close(fd);

	/* Stall: a PUB's OK is held back until resume. */
	fd = consumer("{}", "st", "c");
	srv_ctl("stall");
	PUTL(fd, "PUB st\n\0\0\0\x01y");
	p.fd = fd;
	p.events = POLLIN;
	CHECK_EQ(poll(&p, 1, 100), 0);
	srv_ctl("resume");
	expect_bytes(fd, OK, sizeof(OK));
	close(fd);
	srv_stop();
}

static void
test_ctl_pub_and_dpub(void)
{
	static const char *const a[] = { "--min-interval", "50", NULL };
	struct m m;
	int64_t t0;
	int fd;

	srv_start(a);
	fd = consumer("{}", "cp", "c");
	puts_(fd, "RDY 2\n");
	srv_ctl("pub cp from stdin");
	expect_msg(fd, &m);
	CHECK_STREQ(m.body, "from stdin");
	t0 = mono_ms();
	PUTL(fd, "DPUB cp 200\n\0\0\0\x01z");
	expect_bytes(fd, OK, sizeof(OK));
	barrier(fd);
	expect_msg(fd, &m);
	CHECK_GE(mono_ms() - t0, 190);
	CHECK_STREQ(m.body, "z");
	CHECK_EQ(m.attempts, 1);
	close(fd);
	srv_stop();
}

/* ---- upgrades and AUTH -------------------------------------------------- */

/* Magic + IDENTIFY @json; returns the reply frame's data (JSON). */
static int
identify(const char *json, struct frame *f)
{
	int fd = hello(json);

	CHECK(frame(fd, f));
	CHECK_EQ(f->type, 0);
	return fd;
}

static bool
has(const struct frame *f, const char *text)
{
	return memmem(f->data, f->dlen, text, strlen(text)) != NULL;
}

static const uint8_t snappy_ok[] = {
	0xFF, 0x06, 0x00, 0x00, 0x73, 0x4E, 0x61, 0x50, 0x70, 0x59,
	0x01, 0x0E, 0x00, 0x00, 0x26, 0x98, 0x2B, 0xCF, 0x00, 0x00,
	0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x4F, 0x4B,
};

/* One snappy chunk of @p (the identifier first when @first). */
static void
put_snappy(int fd, const void *p, size_t n, bool first)
{
	uint8_t c[256];
	ssize_t k = sl_snappy_enc_chunk(p, n, c, sizeof(c));

	CHECK_GT(k, 0);
	if (first)
		put(fd, SL_SNAPPY_STREAM_ID, SL_SNAPPY_STREAM_ID_LEN);
	put(fd, c, (size_t)k);
}

static void
test_upgrade_snappy_captured(void)
{
	static const char *const a[] = { "--snappy", NULL };
	static const uint8_t pub5[] = { 'P', 'U', 'B', ' ', 't', '5', '\n',
					0,   0,   0,   3,   'x', 'y', 'z' };
	uint8_t buf[64];
	struct frame f;
	int fd;

	srv_start(a);
	fd = identify("{\"feature_negotiation\":true,\"snappy\":true}", &f);
	CHECK(has(&f, "\"deflate\":false,\"deflate_level\":6,"
		      "\"max_deflate_level\":6,\"snappy\":true,"));
	CHECK(has(&f, "\"tls_v1\":false"));
	/* Right after the JSON: exactly nsqd's captured bytes. */
	CHECK_EQ(get(fd, buf, sizeof(snappy_ok)), sizeof(snappy_ok));
	CHECK_MEMEQ(buf, snappy_ok, sizeof(snappy_ok));
	/* The captured client stream gets the captured answer. */
	{
		uint8_t c[64];
		ssize_t k =
			sl_snappy_enc_chunk(pub5, sizeof(pub5), c, sizeof(c));

		CHECK_EQ(k, 4 + 4 + (ssize_t)sizeof(pub5));
		CHECK_MEMEQ(c, "\x01\x12\x00\x00", 4);
	}
	put_snappy(fd, pub5, sizeof(pub5), true);
	CHECK_EQ(get(fd, buf, sizeof(snappy_ok) - 10), sizeof(snappy_ok) - 10);
	CHECK_MEMEQ(buf, snappy_ok + 10, sizeof(snappy_ok) - 10);
	close(fd);

	/* Data without the stream identifier: nsqd closes. */
	fd = identify("{\"feature_negotiation\":true,\"snappy\":true}", &f);
	CHECK_EQ(get(fd, buf, sizeof(snappy_ok)), sizeof(snappy_ok));
	put_snappy(fd, "NOP\n", 4, false);
	CHECK_EQ(get(fd, buf, 1), 0);
	close(fd);

	/* A command pipelined behind IDENTIFY is lost, as in nsqd. */
	fd = dial();
	PUTL(fd, "  V2IDENTIFY\n\0\0\0\x2a{\"feature_negotiation\":true,"
		 "\"snappy\":true}FOO\n");
	CHECK(frame(fd, &f));
	CHECK_EQ(get(fd, buf, sizeof(snappy_ok)), sizeof(snappy_ok));
	put_snappy(fd, pub5, sizeof(pub5), true);
	CHECK_EQ(get(fd, buf, sizeof(snappy_ok) - 10), sizeof(snappy_ok) - 10);
	CHECK_MEMEQ(buf, snappy_ok + 10, sizeof(snappy_ok) - 10);
	close(fd);

	/* Not enabled on the server: granted false, nothing follows. */
	srv_stop();
	srv_start(NULL);
	fd = identify("{\"feature_negotiation\":true,\"snappy\":true}", &f);
	CHECK(has(&f, "\"snappy\":false"));
	pub(fd, "t5", "x"); /* plain OK: still uncompressed */
	close(fd);
	srv_stop();
}

/* Inflate what the server sends until @n plaintext bytes are out. */
static void
inflate_get(int fd, z_stream *z, uint8_t *out, size_t n)
{
	uint8_t in[256];
	size_t got = 0;

	while (got < n) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t r;

		CHECK_GT(poll(&p, 1, GUARD_MS), 0);
		r = read(fd, in, sizeof(in));
		CHECK_GT(r, 0);
		z->next_in = in;
		z->avail_in = (unsigned)r;
		z->next_out = out + got;
		z->avail_out = (unsigned)(n - got);
		CHECK(inflate(z, Z_SYNC_FLUSH) == Z_OK);
		CHECK_EQ(z->avail_in, 0); /* nothing beyond the frame */
		got = n - z->avail_out;
		/* Each frame ends with a sync flush. */
		CHECK_MEMEQ(in + r - 4, "\x00\x00\xff\xff", 4);
	}
}

static void
test_upgrade_deflate(void)
{
	static const char *const a[] = { "--deflate", "--max-deflate-level",
					 "4", NULL };
	uint8_t buf[64], wire[128];
	z_stream zi = { 0 }, zo = { 0 };
	struct frame f;
	int fd;

	srv_start(a);
	/* Off: the level asked for is ignored, 6 clamped to the max. */
	fd = identify("{\"feature_negotiation\":true,\"deflate_level\":3}", &f);
	CHECK(has(&f, "\"deflate\":false,\"deflate_level\":4,"
		      "\"max_deflate_level\":4,"));
	close(fd);
	fd = identify("{\"feature_negotiation\":true,\"deflate\":true,"
		      "\"deflate_level\":3}",
		      &f);
	CHECK(has(&f, "\"deflate\":true,\"deflate_level\":3,"
		      "\"max_deflate_level\":4,\"snappy\":false,"));
	CHECK_EQ(inflateInit2(&zi, -15), Z_OK);
	inflate_get(fd, &zi, buf, sizeof(OK));
	CHECK_MEMEQ(buf, OK, sizeof(OK));
	/* A compressed PUB (sync-flushed) is answered with OK. */
	CHECK_EQ(deflateInit2(&zo, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY),
		 Z_OK);
	zo.next_in = (const uint8_t *)"PUB t1\n\0\0\0\x05hello";
	zo.avail_in = 16;
	zo.next_out = wire;
	zo.avail_out = sizeof(wire);
	CHECK_EQ(deflate(&zo, Z_SYNC_FLUSH), Z_OK);
	put(fd, wire, sizeof(wire) - zo.avail_out);
	inflate_get(fd, &zi, buf, sizeof(OK));
	CHECK_MEMEQ(buf, OK, sizeof(OK));
	/* Garbage: the connection is closed. */
	put(fd, "\xff\xff\xff\xff", 4);
	CHECK_EQ(get(fd, buf, 1), 0);
	close(fd);
	inflateEnd(&zi);
	deflateEnd(&zo);
	srv_stop();
}

static void
test_both_compressions(void)
{
	static const char *const both[] = { "--snappy", "--deflate", NULL };
	static const char *const one[] = { "--snappy", NULL };
	static const char js[] = "{\"feature_negotiation\":true,"
				 "\"snappy\":true,\"deflate\":true}";
	uint8_t buf[128];
	struct frame f;
	int fd;

	srv_start(both);
	fd = dial();
	put(fd, SL_NSQ_MAGIC, SL_NSQ_MAGIC_LEN);
	CHECK_EQ(sl_nsq_enc_identify(buf, sizeof(buf), js, strlen(js)),
		 (ssize_t)(13 + strlen(js)));
	put(fd, buf, 13 + strlen(js));
	expect_text(fd, 1,
		    "E_IDENTIFY_FAILED cannot enable both deflate and snappy "
		    "compression");
	expect_eof(fd);
	srv_stop();
	/* Only one enabled on the server: that one is granted. */
	srv_start(one);
	fd = identify(js, &f);
	CHECK(has(&f, "\"deflate\":false") && has(&f, "\"snappy\":true"));
	CHECK_EQ(get(fd, buf, sizeof(snappy_ok)), sizeof(snappy_ok));
	CHECK_MEMEQ(buf, snappy_ok, sizeof(snappy_ok));
	close(fd);
	srv_stop();
}

static void
test_upgrade_tls(void)
{
	struct certs ct;
	SSL_CTX *ctx;
	SSL *ssl;
	uint8_t buf[64];
	struct pollfd p;
	struct frame f;
	int fd;

	certs_make(&ct);
	{
		const char *a[] = { "--tls-cert", ct.srv_cert,      "--tls-key",
				    ct.srv_key,   "--tls-required", "--snappy",
				    NULL };

		srv_start(a);
	}
	/* TLS required: anything but IDENTIFY before TLS is fatal. */
	fd = dial();
	puts_(fd, "  V2SUB t1 ch1\n");
	expect_text(fd, 1,
		    "E_INVALID cannot SUB in current state (TLS required)");
	expect_eof(fd);
	fd = identify("{\"feature_negotiation\":true,\"tls_v1\":true}", &f);
	CHECK(has(&f, "\"tls_v1\":true") && has(&f, "\"snappy\":false"));
	/* nsqd writes nothing until the ClientHello. */
	p.fd = fd;
	p.events = POLLIN;
	CHECK_EQ(poll(&p, 1, 100), 0);
	ctx = SSL_CTX_new(TLS_client_method());
	CHECK(ctx != NULL);
	CHECK_EQ(SSL_CTX_load_verify_locations(ctx, ct.ca, NULL), 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	ssl = SSL_new(ctx);
	CHECK(ssl != NULL);
	CHECK_EQ(SSL_set1_host(ssl, "localhost"), 1);
	CHECK_EQ(SSL_set_fd(ssl, fd), 1);
	CHECK_EQ(SSL_connect(ssl), 1);
	/* The "OK" through TLS, then commands work (TLS satisfied). */
	CHECK_EQ(SSL_read(ssl, buf, sizeof(OK)), (int)sizeof(OK));
	CHECK_MEMEQ(buf, OK, sizeof(OK));
	CHECK_EQ(SSL_write(ssl, "SUB t1 ch1\n", 11), 11);
	CHECK_EQ(SSL_read(ssl, buf, sizeof(OK)), (int)sizeof(OK));
	CHECK_MEMEQ(buf, OK, sizeof(OK));
	SSL_free(ssl);
	close(fd);
	/* TLS then snappy: "OK" through TLS, then the snappy stream. */
	fd = identify("{\"feature_negotiation\":true,\"tls_v1\":true,"
		      "\"snappy\":true}",
		      &f);
	CHECK(has(&f, "\"tls_v1\":true") && has(&f, "\"snappy\":true"));
	ssl = SSL_new(ctx);
	CHECK(ssl != NULL);
	CHECK_EQ(SSL_set_fd(ssl, fd), 1);
	CHECK_EQ(SSL_connect(ssl), 1);
	CHECK_EQ(SSL_read(ssl, buf, sizeof(OK)), (int)sizeof(OK));
	CHECK_MEMEQ(buf, OK, sizeof(OK));
	CHECK_EQ(SSL_read(ssl, buf, sizeof(snappy_ok)), (int)sizeof(snappy_ok));
	CHECK_MEMEQ(buf, snappy_ok, sizeof(snappy_ok));
	SSL_free(ssl);
	close(fd);
	SSL_CTX_free(ctx);
	srv_stop();
	certs_remove(&ct);
}

static void
test_auth_errors(void)
{
	static const char *const a[] = { "--auth-secret", "s3cret", NULL };
	static const char reply[] = "{\"identity\":\"fake_nsqd\","
				    "\"identity_url\":\"\","
				    "\"permission_count\":1}";
#define IN(lit) lit, sizeof(lit) - 1
	/* Each on a fresh connection: input, then the fatal error. */
	static const struct {
		const char *in;
		size_t len;
		const char *want;
	} fatal[] = {
		{ IN("  V2SUB t1 ch1\n"),
		  "E_AUTH_FIRST AUTH required before SUB" },
		{ IN("  V2MPUB t1\n"),
		  "E_AUTH_FIRST AUTH required before MPUB" },
		{ IN("  V2AUTH x\n\0\0\0\x01x"),
		  "E_INVALID AUTH invalid number of parameters" },
		{ IN("  V2AUTH\n\0\0\0\0"),
		  "E_BAD_BODY AUTH invalid body size 0" },
		{ IN("  V2AUTH\n\0\0\0\x05guess"),
		  "E_AUTH_FAILED AUTH failed" },
	};
#undef IN
	struct frame f;
	size_t i;
	int fd;

	srv_start(NULL);
	fd = dial();
	PUTL(fd, "  V2AUTH\n\0\0\0\x01x");
	expect_text(fd, 1, "E_AUTH_DISABLED AUTH disabled");
	expect_eof(fd);
	srv_stop();

	srv_start(a);
	fd = identify("{\"feature_negotiation\":true}", &f);
	CHECK(has(&f, "\"auth_required\":true"));
	PUTL(fd, "PUB t1\n\0\0\0\x05hello");
	expect_text(fd, 1, "E_AUTH_FIRST AUTH required before PUB");
	expect_eof(fd);
	for (i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++) {
		fd = dial();
		put(fd, fatal[i].in, fatal[i].len);
		expect_text(fd, 1, fatal[i].want);
		expect_eof(fd);
	}
	/* Right secret: the JSON reply; then SUB works; AUTH once only. */
	fd = dial();
	PUTL(fd, "  V2AUTH\n\0\0\0\x06s3cret");
	expect_text(fd, 0, reply);
	pub(fd, "t1", "hello");
	PUTL(fd, "AUTH\n\0\0\0\x06s3cret");
	expect_text(fd, 1, "E_INVALID AUTH already set");
	expect_eof(fd);
	fd = dial();
	PUTL(fd, "  V2AUTH\n\0\0\0\x06s3cret");
	expect_text(fd, 0, reply);
	puts_(fd, "SUB t1 ch1\n");
	expect_bytes(fd, OK, sizeof(OK));
	PUTL(fd, "AUTH\n\0\0\0\x06s3cret");
	expect_text(fd, 1, "E_INVALID cannot AUTH in current state");
	expect_eof(fd);
	srv_stop();
}

CHECK_MAIN(test_identify_reply_is_captured, test_pub_sub_message_layout,
	   test_error_frames, test_rdy_caps_in_flight,
	   test_timeout_redelivers_with_attempts, test_fin_stops_redelivery,
	   test_req_delay, test_cls_close_wait, test_heartbeats,
	   test_fault_drop_and_malformed, test_fault_oversized_and_stall,
	   test_ctl_pub_and_dpub, test_upgrade_snappy_captured,
	   test_upgrade_deflate, test_both_compressions, test_upgrade_tls,
	   test_auth_errors)
