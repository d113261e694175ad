/* SPDX-License-Identifier: MIT */
/*
 * test_framing.c - the stream framing codec: line, nul and length frames,
 * every split point, end of input, the body size limit, encoding and its
 * snprintf-like size answer, and no read past the caller's bytes.
 *
 * The reader simulation (struct reader) does what a real one does: it
 * appends what arrives to an accumulation buffer, calls sluice_frame_next()
 * until it answers 0 or an error, and drops the consumed bytes.  Each call
 * gets a fresh heap copy of exactly the pending bytes, so under ASan any
 * read past @len is caught on every call, not only in the guard page test.
 * Expected frames are built by the test from its own list of bodies, never
 * taken from the codec.
 */
#include <sys/mman.h>
#include <unistd.h>

#include <sluice/framing.h>

#include "check.h"

#define NELEM(a)  (sizeof(a) / sizeof((a)[0]))
#define MAXFRAMES 64
#define ACCCAP    4096

static const enum sluice_framing all[] = { SLUICE_FRAMING_LINE,
					   SLUICE_FRAMING_NUL,
					   SLUICE_FRAMING_LENGTH };

/* ---- helpers ------------------------------------------------------------- */

/* What a parse produced: copies of the bodies, then a final status. */
struct result {
	size_t n;
	size_t len[MAXFRAMES];
	uint8_t data[MAXFRAMES][256];
	int64_t status; /* 0: clean end; < 0: the error that stopped it */
};

struct reader {
	enum sluice_framing f;
	size_t max_body;
	uint8_t acc[ACCCAP];
	size_t acc_len;
	struct result *res;
};

static void
record(struct result *res, struct sluice_bytes b)
{
	CHECK_LT(res->n, MAXFRAMES);
	CHECK_LE(b.len, sizeof(res->data[0]));
	res->len[res->n] = b.len;
	if (b.len)
		memcpy(res->data[res->n], b.ptr, b.len);
	res->n++;
}

/*
 * Append @n bytes and take every complete frame.  Returns 0 when it needs
 * more input (or, at @eof, when the input is used up), or the error.
 */
static int64_t
feed(struct reader *rd, const uint8_t *p, size_t n, int eof)
{
	CHECK_LE(rd->acc_len + n, ACCCAP);
	if (n)
		memcpy(rd->acc + rd->acc_len, p, n);
	rd->acc_len += n;
	for (;;) {
		/* An exact-size copy: ASan flags any read past its end. */
		uint8_t *tmp = malloc(rd->acc_len ? rd->acc_len : 1);
		struct sluice_bytes b = { NULL, 0 };
		int64_t r;

		CHECK(tmp != NULL);
		memcpy(tmp, rd->acc, rd->acc_len);
		r = sluice_frame_next(rd->f, tmp, rd->acc_len, eof,
				      rd->max_body, &b);
		if (r > 0) {
			const uint8_t *bp = b.ptr;

			/* The body is a view inside the frame. */
			CHECK_LE((size_t)r, rd->acc_len);
			CHECK(bp >= tmp);
			CHECK_LE((size_t)(bp - tmp) + b.len, (size_t)r);
			record(rd->res, b);
			memmove(rd->acc, rd->acc + r, rd->acc_len - (size_t)r);
			rd->acc_len -= (size_t)r;
		}
		free(tmp);
		if (r <= 0) {
			if (r == 0 && eof)
				CHECK_EQ(rd->acc_len, 0);
			return r;
		}
	}
}

static void
reader_init(struct reader *rd, enum sluice_framing f, size_t max_body,
	    struct result *res)
{
	memset(res, 0, sizeof(*res));
	rd->f = f;
	rd->max_body = max_body;
	rd->acc_len = 0;
	rd->res = res;
}

/* Parse @s fed as pieces cut at @cuts (ascending), then EOF. */
static void
parse_cut(enum sluice_framing f, size_t max_body, const uint8_t *s, size_t len,
	  const size_t *cuts, size_t ncuts, struct result *res)
{
	static struct reader rd;
	size_t prev = 0, i;
	int64_t r = 0;

	reader_init(&rd, f, max_body, res);
	for (i = 0; i <= ncuts && r == 0; i++) {
		size_t end = i < ncuts ? cuts[i] : len;

		r = feed(&rd, s + prev, end - prev, 0);
		prev = end;
	}
	if (r == 0)
		r = feed(&rd, NULL, 0, 1);
	res->status = r;
}

static void
check_same(const struct result *a, const struct result *b)
{
	size_t i;

	CHECK_EQ(a->status, b->status);
	CHECK_EQ(a->n, b->n);
	for (i = 0; i < a->n; i++) {
		CHECK_EQ(a->len[i], b->len[i]);
		CHECK_MEMEQ(a->data[i], b->data[i], a->len[i]);
	}
}

/* @res holds exactly the bodies @want (NUL-free strings) and @status. */
static void
check_strings(const struct result *res, const char *const *want, size_t n,
	      int64_t status)
{
	size_t i;

	CHECK_EQ(res->status, status);
	CHECK_EQ(res->n, n);
	for (i = 0; i < n; i++) {
		CHECK_EQ(res->len[i], strlen(want[i]));
		CHECK_MEMEQ(res->data[i], want[i], res->len[i]);
	}
}

/* Encode @n bodies as one stream; returns its length. */
static size_t
encode_all(enum sluice_framing f, const uint8_t *const *bodies,
	   const size_t *lens, size_t n, uint8_t *out, size_t cap)
{
	size_t used = 0, i;

	for (i = 0; i < n; i++) {
		int64_t r = sluice_frame_encode(f, bodies[i], lens[i],
						out + used, cap - used);

		CHECK_EQ(r, (int64_t)lens[i] +
				    (f == SLUICE_FRAMING_LENGTH ? 4 : 1));
		used += (size_t)r;
	}
	return used;
}

static uint64_t
xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* ---- names ----------------------------------------------------------------
 */

static void
test_parse_and_name(void)
{
	static const char *const bad[] = { "",     "LINE", "lines",
					   "nul ", "len",  "length\n" };
	enum sluice_framing f = SLUICE_FRAMING_NUL;
	size_t i;

	for (i = 0; i < NELEM(all); i++) {
		const char *name = sluice_framing_name(all[i]);

		f = (enum sluice_framing)99;
		CHECK_OK(sluice_framing_parse(name, &f));
		CHECK_EQ(f, all[i]);
	}
	CHECK_STREQ(sluice_framing_name(SLUICE_FRAMING_LINE), "line");
	CHECK_STREQ(sluice_framing_name(SLUICE_FRAMING_NUL), "nul");
	CHECK_STREQ(sluice_framing_name(SLUICE_FRAMING_LENGTH), "length");
	CHECK(sluice_framing_name((enum sluice_framing)7) != NULL);
	f = SLUICE_FRAMING_NUL;
	for (i = 0; i < NELEM(bad); i++) {
		CHECK_EQ(sluice_framing_parse(bad[i], &f), SLUICE_EINVAL);
		CHECK_EQ(f, SLUICE_FRAMING_NUL); /* untouched on error */
	}
	CHECK_EQ(sluice_framing_parse(NULL, &f), SLUICE_EINVAL);
	CHECK_EQ(sluice_framing_parse("line", NULL), SLUICE_EINVAL);
}

/* ---- each framing ---------------------------------------------------------
 */

static void
test_line_frames(void)
{
	/* '\r' is kept, an empty line is an empty message. */
	static const char s[] = "a\nbc\r\n\n\nxyz";
	static const char *const want_more[] = { "a", "bc\r", "", "" };
	static const char *const want_eof[] = { "a", "bc\r", "", "", "xyz" };
	const uint8_t *p = (const uint8_t *)s;
	struct sluice_bytes b;
	struct result res;
	static struct reader rd;

	/* Without EOF the last, unterminated line waits for more input. */
	reader_init(&rd, SLUICE_FRAMING_LINE, 100, &res);
	res.status = feed(&rd, p, strlen(s), 0);
	check_strings(&res, want_more, NELEM(want_more), 0);
	CHECK_EQ(rd.acc_len, 3);
	res.status = feed(&rd, NULL, 0, 1);
	check_strings(&res, want_eof, NELEM(want_eof), 0);

	/* The frame's size includes the terminator; the body does not. */
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE, p, strlen(s), 0, 100,
				   &b),
		 2);
	CHECK(b.ptr == p);
	CHECK_EQ(b.len, 1);
	/* "\n\n" is two empty messages. */
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE, (const uint8_t *)"\n\n",
				   2, 1, 100, &b),
		 1);
	CHECK_EQ(b.len, 0);
	/* A NUL is an ordinary byte in a line. */
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE,
				   (const uint8_t *)"a\0b\n", 4, 0, 100, &b),
		 4);
	CHECK_EQ(b.len, 3);
}

static void
test_nul_frames(void)
{
	static const uint8_t s[] = { 'a', '\n', 'b', 0, 0, 'c', '\r', 0, 'd' };
	struct sluice_bytes b;
	struct result res;
	static struct reader rd;

	reader_init(&rd, SLUICE_FRAMING_NUL, 100, &res);
	res.status = feed(&rd, s, sizeof(s), 0);
	CHECK_EQ(res.status, 0);
	CHECK_EQ(res.n, 3);
	CHECK_EQ(res.len[0], 3); /* a newline is an ordinary byte here */
	CHECK_MEMEQ(res.data[0], "a\nb", 3);
	CHECK_EQ(res.len[1], 0);
	CHECK_EQ(res.len[2], 2);
	CHECK_MEMEQ(res.data[2], "c\r", 2);
	res.status = feed(&rd, NULL, 0, 1);
	CHECK_EQ(res.status, 0);
	CHECK_EQ(res.n, 4);
	CHECK_EQ(res.len[3], 1);
	CHECK_EQ(res.data[3][0], 'd');
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_NUL, (const uint8_t *)"ab", 2,
				   0, 100, &b),
		 0);
}

static void
test_length_frames(void)
{
	/* Bodies with NUL, newline, 0xff and a zero-length body. */
	static const uint8_t s[] = { 0, 0, 0, 5, 'a', 0, '\n', 0xff, '\r',
				     0, 0, 0, 0, 0,   0, 0,    1,    '\n' };
	struct sluice_bytes b;
	struct result res;
	static struct reader rd;
	size_t i;

	reader_init(&rd, SLUICE_FRAMING_LENGTH, 100, &res);
	res.status = feed(&rd, s, sizeof(s), 1);
	CHECK_EQ(res.status, 0);
	CHECK_EQ(res.n, 3);
	CHECK_EQ(res.len[0], 5);
	CHECK_MEMEQ(res.data[0], s + 4, 5);
	CHECK_EQ(res.len[1], 0);
	CHECK_EQ(res.len[2], 1);
	CHECK_EQ(res.data[2][0], '\n');

	/* Every proper prefix of a frame is "read more" before EOF. */
	for (i = 0; i < 9; i++)
		CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, i, 0, 100,
					   &b),
			 0);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 9, 0, 100, &b), 9);
	CHECK(b.ptr == s + 4);
	CHECK_EQ(b.len, 5);

	/* A big-endian length: 0x00000102 = 258. */
	{
		static uint8_t big[4 + 258];

		memset(big, 'x', sizeof(big));
		big[0] = 0;
		big[1] = 0;
		big[2] = 1;
		big[3] = 2;
		CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, big,
					   sizeof(big) - 1, 0, 1000, &b),
			 0);
		CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, big,
					   sizeof(big), 0, 1000, &b),
			 262);
		CHECK_EQ(b.len, 258);
	}
}

/* ---- end of input -------------------------------------------------------- */

static void
test_eof(void)
{
	static const uint8_t hdr[] = { 0, 0, 0, 3, 'a', 'b', 'c' };
	struct sluice_bytes b;
	size_t i, k;

	for (i = 0; i < NELEM(all); i++) {
		/* Empty input: nothing yet, and nothing at all at EOF. */
		CHECK_EQ(sluice_frame_next(all[i], (const uint8_t *)"", 0, 0,
					   10, &b),
			 0);
		CHECK_EQ(sluice_frame_next(all[i], (const uint8_t *)"", 0, 1,
					   10, &b),
			 0);
		CHECK_EQ(sluice_frame_next(all[i], NULL, 0, 1, 10, &b), 0);
	}
	/* A final unterminated line / record counts at EOF. */
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE, (const uint8_t *)"abc",
				   3, 0, 10, &b),
		 0);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE, (const uint8_t *)"abc",
				   3, 1, 10, &b),
		 3);
	CHECK_EQ(b.len, 3);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_NUL, (const uint8_t *)"ab\n",
				   3, 1, 10, &b),
		 3);
	CHECK_EQ(b.len, 3);
	/* A terminated last line is not followed by an extra empty one. */
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE, (const uint8_t *)"a\n",
				   2, 1, 10, &b),
		 2);
	CHECK_EQ(b.len, 1);
	/* A partial length frame at EOF, cut anywhere, is a protocol error. */
	for (k = 1; k < sizeof(hdr); k++) {
		CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, hdr, k, 0, 10,
					   &b),
			 0);
		CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, hdr, k, 1, 10,
					   &b),
			 SLUICE_EPROTO);
	}
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, hdr, sizeof(hdr), 1,
				   10, &b),
		 7);
}

/* ---- max_body ------------------------------------------------------------ */

static void
test_max_body_delimited(void)
{
	static uint8_t s[64];
	struct sluice_bytes b;
	size_t i, max = 10;

	for (i = 0; i < 2; i++) {
		enum sluice_framing f = all[i];
		uint8_t term = f == SLUICE_FRAMING_LINE ? '\n' : 0;

		memset(s, 'x', sizeof(s));
		/* Exactly max_body: accepted, terminated or at EOF. */
		s[max] = term;
		CHECK_EQ(sluice_frame_next(f, s, max + 1, 0, max, &b),
			 (int64_t)max + 1);
		CHECK_EQ(b.len, max);
		CHECK_EQ(sluice_frame_next(f, s, max, 0, max, &b), 0);
		CHECK_EQ(sluice_frame_next(f, s, max, 1, max, &b),
			 (int64_t)max);
		CHECK_EQ(b.len, max);
		/* max_body + 1, terminated: refused. */
		s[max] = 'x';
		s[max + 1] = term;
		CHECK_EQ(sluice_frame_next(f, s, max + 2, 0, max, &b),
			 SLUICE_EMSGSIZE);
		CHECK_EQ(sluice_frame_next(f, s, max + 2, 1, max, &b),
			 SLUICE_EMSGSIZE);
		/* Unterminated and already too long: refused before the
		 * terminator arrives, with or without EOF. */
		CHECK_EQ(sluice_frame_next(f, s, max + 1, 0, max, &b),
			 SLUICE_EMSGSIZE);
		CHECK_EQ(sluice_frame_next(f, s, max + 1, 1, max, &b),
			 SLUICE_EMSGSIZE);
		/* A terminator far past the limit does not rescue it. */
		s[max + 1] = 'x';
		s[40] = term;
		CHECK_EQ(sluice_frame_next(f, s, sizeof(s), 0, max, &b),
			 SLUICE_EMSGSIZE);
		/* max_body 0: only empty records pass. */
		s[0] = term;
		CHECK_EQ(sluice_frame_next(f, s, 1, 0, 0, &b), 1);
		CHECK_EQ(b.len, 0);
		s[0] = 'x';
		CHECK_EQ(sluice_frame_next(f, s, 1, 0, 0, &b), SLUICE_EMSGSIZE);
		/* SIZE_MAX: no limit, no overflow in the scan bound. */
		CHECK_EQ(sluice_frame_next(f, s, 41, 0, SIZE_MAX, &b), 41);
	}
}

static void
test_max_body_length(void)
{
	static uint8_t s[4 + 11];
	struct sluice_bytes b;

	memset(s, 'y', sizeof(s));
	s[0] = s[1] = s[2] = 0;
	s[3] = 10;
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 14, 0, 10, &b),
		 14);
	CHECK_EQ(b.len, 10);
	/* Refused from the header alone, before the body arrives. */
	s[3] = 11;
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 4, 0, 10, &b),
		 SLUICE_EMSGSIZE);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 15, 0, 10, &b),
		 SLUICE_EMSGSIZE);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 15, 0, 11, &b),
		 15);
	/* The largest length a header can say. */
	s[0] = s[1] = s[2] = s[3] = 0xff;
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 4, 0, 10, &b),
		 SLUICE_EMSGSIZE);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 15, 0, SIZE_MAX,
				   &b),
		 0);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, s, 15, 1, SIZE_MAX,
				   &b),
		 SLUICE_EPROTO);
}

/* ---- split points -------------------------------------------------------- */

/*
 * Cut @s at every offset into two pieces and at every pair of offsets into
 * three, and feed it one byte at a time: each parse must equal the unsplit
 * one.  Returns the unsplit result in @whole.
 */
static void
check_all_splits(enum sluice_framing f, size_t max_body, const uint8_t *s,
		 size_t len, struct result *whole)
{
	static struct result res;
	static struct reader rd;
	size_t cuts[2], i, j;

	parse_cut(f, max_body, s, len, NULL, 0, whole);
	for (i = 0; i <= len; i++) {
		cuts[0] = i;
		parse_cut(f, max_body, s, len, cuts, 1, &res);
		check_same(whole, &res);
		for (j = i; j <= len; j++) {
			cuts[1] = j;
			parse_cut(f, max_body, s, len, cuts, 2, &res);
			check_same(whole, &res);
		}
	}
	reader_init(&rd, f, max_body, &res);
	res.status = 0;
	for (i = 0; i < len && res.status == 0; i++)
		res.status = feed(&rd, s + i, 1, 0);
	if (res.status == 0)
		res.status = feed(&rd, NULL, 0, 1);
	check_same(whole, &res);
}

static void
test_every_split_point(void)
{
	static const char *const text[] = { "alpha",  "", "b\r", "",
					    "gamma!", "", "z" };
	static const uint8_t bin0[] = { 0, '\n', 0xff, 0 };
	static const uint8_t bin1[] = { '\n' };
	static uint8_t s[512];
	const uint8_t *bodies[NELEM(text) + 2];
	size_t lens[NELEM(text) + 2], n, i, k;
	struct result whole;

	for (i = 0; i < NELEM(text); i++) {
		bodies[i] = (const uint8_t *)text[i];
		lens[i] = strlen(text[i]);
	}
	for (k = 0; k < NELEM(all); k++) {
		enum sluice_framing f = all[k];
		size_t nb = NELEM(text);

		if (f == SLUICE_FRAMING_LENGTH) {
			bodies[nb] = bin0;
			lens[nb++] = sizeof(bin0);
			bodies[nb] = bin1;
			lens[nb++] = sizeof(bin1);
		}
		n = encode_all(f, bodies, lens, nb, s, sizeof(s));
		check_all_splits(f, 100, s, n, &whole);
		CHECK_EQ(whole.status, 0);
		CHECK_EQ(whole.n, nb);
		for (i = 0; i < nb; i++) {
			CHECK_EQ(whole.len[i], lens[i]);
			CHECK_MEMEQ(whole.data[i], bodies[i], lens[i]);
		}
		if (f != SLUICE_FRAMING_LENGTH) {
			/* Without the last terminator: the same messages. */
			check_all_splits(f, 100, s, n - 1, &whole);
			CHECK_EQ(whole.status, 0);
			CHECK_EQ(whole.n, nb);
			CHECK_EQ(whole.len[nb - 1], 1);
		} else {
			/* Truncated inside the last frame: EPROTO at EOF
			 * after all the complete frames, at any split. */
			check_all_splits(f, 100, s, n - 1, &whole);
			CHECK_EQ(whole.status, SLUICE_EPROTO);
			CHECK_EQ(whole.n, nb - 1);
		}
	}
}

static void
test_split_points_with_oversized_frame(void)
{
	static const char *const before[] = { "ok", "", "fine" };
	static uint8_t s[512];
	const uint8_t *bodies[4];
	size_t lens[4], n, i, k;
	struct result whole;

	for (i = 0; i < NELEM(before); i++) {
		bodies[i] = (const uint8_t *)before[i];
		lens[i] = strlen(before[i]);
	}
	bodies[3] = (const uint8_t *)"this one is too long";
	lens[3] = 20;
	for (k = 0; k < NELEM(all); k++) {
		n = encode_all(all[k], bodies, lens, 4, s, sizeof(s));
		/* A good frame after the bad one is never reached. */
		n += encode_all(all[k], bodies, lens, 1, s + n, sizeof(s) - n);
		check_all_splits(all[k], 8, s, n, &whole);
		check_strings(&whole, before, NELEM(before), SLUICE_EMSGSIZE);
		/* Cut inside the oversized body, then EOF: still EMSGSIZE
		 * (for length framing the header already said too much). */
		check_all_splits(all[k], 8, s, n - 12, &whole);
		check_strings(&whole, before, NELEM(before), SLUICE_EMSGSIZE);
	}
}

/* ---- encode -------------------------------------------------------------- */

static void
test_encode_round_trip(void)
{
	static uint8_t body[300], out[310];
	struct sluice_bytes b;
	uint64_t seed = 0x1234567;
	size_t k, len;

	for (k = 0; k < NELEM(all); k++) {
		enum sluice_framing f = all[k];
		size_t over = f == SLUICE_FRAMING_LENGTH ? 4 : 1;

		for (len = 0; len < sizeof(body); len += 1 + len / 4) {
			size_t i;
			int64_t r;

			for (i = 0; i < len; i++) {
				uint8_t c = (uint8_t)xorshift(&seed);

				/* Delimited bodies cannot hold their
				 * terminator. */
				if (f == SLUICE_FRAMING_LINE && c == '\n')
					c = 'n';
				if (f == SLUICE_FRAMING_NUL && c == 0)
					c = '0';
				body[i] = c;
			}
			r = sluice_frame_encode(f, body, len, out, sizeof(out));
			CHECK_EQ(r, (int64_t)(len + over));
			if (f == SLUICE_FRAMING_LENGTH) {
				CHECK_EQ(out[0], (len >> 24) & 0xff);
				CHECK_EQ(out[1], (len >> 16) & 0xff);
				CHECK_EQ(out[2], (len >> 8) & 0xff);
				CHECK_EQ(out[3], len & 0xff);
			} else {
				CHECK_EQ(out[len],
					 f == SLUICE_FRAMING_LINE ? '\n' : 0);
			}
			CHECK_EQ(sluice_frame_next(f, out, (size_t)r, 0, len,
						   &b),
				 r);
			CHECK_EQ(b.len, len);
			CHECK_MEMEQ(b.ptr, body, len);
		}
	}
}

static void
test_encode_size_and_errors(void)
{
	uint8_t out[16];
	size_t k, cap;

	for (k = 0; k < NELEM(all); k++) {
		enum sluice_framing f = all[k];
		int64_t need = f == SLUICE_FRAMING_LENGTH ? 9 : 6;

		/* Too small: the size is returned, nothing is written. */
		for (cap = 0; cap < (size_t)need; cap++) {
			memset(out, 0xaa, sizeof(out));
			CHECK_EQ(sluice_frame_encode(f, "hello", 5, out, cap),
				 need);
			for (size_t i = 0; i < sizeof(out); i++)
				CHECK_EQ(out[i], 0xaa);
		}
		/* snprintf(NULL, 0) style size query. */
		CHECK_EQ(sluice_frame_encode(f, "hello", 5, NULL, 0), need);
		/* Exactly enough: written, and not one byte more. */
		memset(out, 0xaa, sizeof(out));
		CHECK_EQ(sluice_frame_encode(f, "hello", 5, out, (size_t)need),
			 need);
		CHECK_EQ(out[need], 0xaa);
		/* An empty body is one terminator or a zero header. */
		CHECK_EQ(sluice_frame_encode(f, NULL, 0, out, sizeof(out)),
			 need - 5);
		CHECK_EQ(out[0], f == SLUICE_FRAMING_LINE ? '\n' : 0);
		/* Bad arguments. */
		CHECK_EQ(sluice_frame_encode(f, NULL, 1, out, sizeof(out)),
			 SLUICE_EINVAL);
		CHECK_EQ(sluice_frame_encode(f, "x", 1, NULL, 4),
			 SLUICE_EINVAL);
	}
	memset(out, 0xaa, sizeof(out));
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_LINE, "a\nb", 3, out,
				     sizeof(out)),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_LINE, "a\0b", 3, out,
				     sizeof(out)),
		 4);
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_NUL, "a\0b", 3, out,
				     sizeof(out)),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_NUL, "a\nb", 3, out,
				     sizeof(out)),
		 4);
	/* The terminator is refused even when the buffer is too small. */
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_LINE, "a\n", 2, NULL, 0),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_frame_encode((enum sluice_framing)9, "a", 1, out,
				     sizeof(out)),
		 SLUICE_EINVAL);
#if SIZE_MAX > UINT32_MAX
	/* Over 4 GiB - 1 cannot be length framed; the body is not read. */
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_LENGTH, out,
				     (size_t)UINT32_MAX + 1, NULL, 0),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_LENGTH, out,
				     (size_t)UINT32_MAX, NULL, 0),
		 (int64_t)UINT32_MAX + 4);
#endif
}

static void
test_invalid_arguments(void)
{
	struct sluice_bytes b = { NULL, 0 };

	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE, NULL, 1, 0, 10, &b),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_frame_next((enum sluice_framing)5,
				   (const uint8_t *)"a\n", 2, 0, 10, &b),
		 SLUICE_EINVAL);
	/* @body is optional: the size alone is still answered. */
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LINE, (const uint8_t *)"a\n",
				   2, 0, 10, NULL),
		 2);
}

/* ---- no read past the end ------------------------------------------------ */

static void
test_no_read_past_end(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t page = (size_t)pg;
	uint8_t *map, *end;
	struct sluice_bytes b;
	size_t k;

	CHECK_GT(pg, 0);
	map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(map != MAP_FAILED);
	CHECK_OK(mprotect(map + page, page, PROT_NONE));
	end = map + page; /* the first byte that faults */
	memset(map, 'x', page);

	for (k = 0; k < 2; k++) {
		enum sluice_framing f = all[k];
		uint8_t term = f == SLUICE_FRAMING_LINE ? '\n' : 0;

		/* Unterminated input up to the guard, no limit to stop the
		 * scan early: only @len bounds it. */
		CHECK_EQ(sluice_frame_next(f, end - 100, 100, 0, SIZE_MAX, &b),
			 0);
		CHECK_EQ(sluice_frame_next(f, end - 100, 100, 1, SIZE_MAX, &b),
			 100);
		CHECK_EQ(sluice_frame_next(f, end - 100, 100, 0, 99, &b),
			 SLUICE_EMSGSIZE);
		CHECK_EQ(sluice_frame_next(f, end - 100, 100, 0, 100, &b), 0);
		/* The terminator is the very last readable byte. */
		end[-1] = term;
		CHECK_EQ(sluice_frame_next(f, end - 5, 5, 0, 10, &b), 5);
		CHECK_EQ(b.len, 4);
		CHECK_EQ(sluice_frame_next(f, end - 1, 1, 1, 10, &b), 1);
		CHECK_EQ(b.len, 0);
		end[-1] = 'x';
		CHECK_EQ(sluice_frame_next(f, end, 0, 1, 10, &b), 0);
		/* Encode right up to the guard. */
		CHECK_EQ(sluice_frame_encode(f, "abc", 3, end - 4, 4), 4);
		CHECK_EQ(end[-1], term);
	}
	/* Length frames: a header cut by the guard, a body cut by it, and a
	 * frame that ends exactly at it. */
	end[-2] = 0;
	end[-1] = 0;
	CHECK_EQ(
		sluice_frame_next(SLUICE_FRAMING_LENGTH, end - 2, 2, 0, 10, &b),
		0);
	CHECK_EQ(
		sluice_frame_next(SLUICE_FRAMING_LENGTH, end - 2, 2, 1, 10, &b),
		SLUICE_EPROTO);
	CHECK_EQ(sluice_frame_encode(SLUICE_FRAMING_LENGTH, "abcdef", 6,
				     end - 10, 10),
		 10);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, end - 10, 10, 0, 10,
				   &b),
		 10);
	CHECK_EQ(b.len, 6);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, end - 10, 9, 0, 10,
				   &b),
		 0);
	CHECK_EQ(sluice_frame_next(SLUICE_FRAMING_LENGTH, end - 10, 9, 1, 10,
				   &b),
		 SLUICE_EPROTO);
	CHECK_OK(munmap(map, 2 * page));
}

CHECK_MAIN(test_parse_and_name, test_line_frames, test_nul_frames,
	   test_length_frames, test_eof, test_max_body_delimited,
	   test_max_body_length, test_every_split_point,
	   test_split_points_with_oversized_frame, test_encode_round_trip,
	   test_encode_size_and_errors, test_invalid_arguments,
	   test_no_read_past_end)
