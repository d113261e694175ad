/* SPDX-License-Identifier: MIT */
/*
 * test_dlq.c - the dead-letter record format (parsed back with jansson) and
 * the append-only file sink: whole lines under concurrent writers, open and
 * write failures, allocation failures.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sluice/dlq.h>
#include <sluice/error.h>

#include "check.h"
#include "util/alloc.h"

static struct sluice_msg
make_msg(const char *id, size_t id_len, const void *body, size_t len,
	 uint32_t attempts)
{
	struct sluice_msg m;

	memset(&m, 0, sizeof(m));
	m.id = id;
	m.id_len = (uint8_t)id_len;
	m.body = body;
	m.body_len = len;
	m.attempts = attempts;
	return m;
}

/* Format into a heap buffer of exactly the size asked for. */
static char *
format(int64_t t, const char *source, const struct sluice_msg *m,
       const struct sluice_error *why, int64_t *len)
{
	int64_t n = sluice_dlq_format(NULL, 0, t, source, m, why);
	char *buf;

	CHECK_GT(n, 0);
	buf = malloc((size_t)n + 1);
	CHECK(buf != NULL);
	CHECK_EQ(sluice_dlq_format(buf, (size_t)n + 1, t, source, m, why), n);
	CHECK_EQ(strlen(buf), n);
	*len = n;
	return buf;
}

/* A whole line: one '\n', at the end, and a JSON object before it. */
static json_t *
parse_line(const char *line, size_t len)
{
	json_error_t jerr;
	json_t *v;

	CHECK_GT(len, 0);
	CHECK_EQ(line[len - 1], '\n');
	CHECK(memchr(line, '\n', len - 1) == NULL);
	v = json_loadb(line, len - 1, JSON_ALLOW_NUL, &jerr);
	if (!v)
		fprintf(stderr, "  bad JSON: %s\n", jerr.text);
	CHECK(v != NULL);
	CHECK(json_is_object(v));
	return v;
}

static const char *
str_field(json_t *o, const char *key, size_t *len)
{
	json_t *v = json_object_get(o, key);

	CHECK(json_is_string(v));
	if (len)
		*len = json_string_length(v);
	return json_string_value(v);
}

/* RFC 4648 decoder for checking; returns the length or -1. */
static long
b64_decode(const char *s, uint8_t *out)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t n = strlen(s), i, j;
	const char *p;
	long o = 0;
	uint32_t v;
	int pad;

	if (n % 4)
		return -1;
	for (i = 0; i < n; i += 4) {
		v = 0;
		pad = 0;
		for (j = 0; j < 4; j++) {
			v <<= 6;
			if (s[i + j] == '=') {
				if (i + 4 != n || j < 2)
					return -1;
				pad++;
				continue;
			}
			p = strchr(tab, s[i + j]);
			if (pad || !p)
				return -1;
			v |= (uint32_t)(p - tab);
		}
		out[o++] = (uint8_t)(v >> 16);
		if (pad < 2)
			out[o++] = (uint8_t)(v >> 8);
		if (pad < 1)
			out[o++] = (uint8_t)v;
	}
	return o;
}

/* 2026-11-27T13:56:21 UTC, from the example in dlq.h. */
static int64_t
example_time_ns(void)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	tm.tm_year = 2026 - 1900;
	tm.tm_mon = 10;
	tm.tm_mday = 27;
	tm.tm_hour = 13;
	tm.tm_min = 56;
	tm.tm_sec = 21;
	return (int64_t)timegm(&tm) * SLUICE_NS_PER_S;
}

/* ---- format ------------------------------------------------------------- */

static void
test_format_fields(void)
{
	struct sluice_error *why =
		sluice_error_new(SLUICE_CLASS_TEMPORARY, 75, "disk busy");
	struct sluice_msg m = make_msg("abc", 3, "hello", 5, 3);
	char reason[256];
	int64_t n;
	char *line;
	json_t *o;
	size_t len;

	line = format(example_time_ns() + 123999999, "queue", &m, why, &n);
	CHECK(strncmp(line, "{\"time\":", 8) == 0);
	o = parse_line(line, (size_t)n);
	CHECK_STREQ(str_field(o, "time", NULL), "2026-11-27T13:56:21.123Z");
	CHECK_STREQ(str_field(o, "source", NULL), "queue");
	CHECK_STREQ(str_field(o, "id", NULL), "abc");
	CHECK_EQ(json_integer_value(json_object_get(o, "attempts")), 3);
	CHECK_STREQ(str_field(o, "class", NULL), "temporary");
	CHECK_EQ(json_integer_value(json_object_get(o, "code")), 75);
	sluice_error_format(why, reason, sizeof(reason));
	CHECK_STREQ(str_field(o, "reason", NULL), reason);
	CHECK(strstr(reason, "disk busy") != NULL);
	CHECK_STREQ(str_field(o, "body", &len), "hello");
	CHECK_EQ(len, 5);
	CHECK(json_object_get(o, "body_base64") == NULL);
	CHECK(json_object_get(o, "id_base64") == NULL);
	CHECK_EQ(json_object_size(o), 8);
	json_decref(o);
	free(line);
	sluice_error_free(why);
}

static void
test_format_time_before_epoch(void)
{
	struct sluice_msg m = make_msg("t", 1, "", 0, 1);
	int64_t n;
	char *line;
	json_t *o;

	/* -1.5 ms is 23:59:59.998 on the last day of 1969 (floor, not
	 * truncation toward zero). */
	line = format(-1500000, "s", &m, NULL, &n);
	o = parse_line(line, (size_t)n);
	CHECK_STREQ(str_field(o, "time", NULL), "1969-12-31T23:59:59.998Z");
	json_decref(o);
	free(line);
}

static void
test_format_null_why(void)
{
	struct sluice_msg m = make_msg("x", 1, "b", 1, 7);
	int64_t n;
	char *line;
	json_t *o;

	line = format(0, NULL, &m, NULL, &n);
	o = parse_line(line, (size_t)n);
	CHECK(json_is_null(json_object_get(o, "class")));
	CHECK_EQ(json_integer_value(json_object_get(o, "code")), 0);
	CHECK_STREQ(str_field(o, "reason", NULL), "");
	CHECK_STREQ(str_field(o, "source", NULL), "");
	CHECK_STREQ(str_field(o, "time", NULL), "1970-01-01T00:00:00.000Z");
	CHECK_EQ(json_integer_value(json_object_get(o, "attempts")), 7);
	json_decref(o);
	free(line);
}

/* NUL, newline, quote, backslash, control and multi-byte characters stay a
 * JSON string, escaped so the record remains one line. */
static void
test_format_text_body_escapes(void)
{
	static const char body[] =
		"a\0b\nc\"d\\e\x01\t\xc3\xa9\xf0\x9f\x98\x80";
	struct sluice_msg m = make_msg("id", 2, body, sizeof(body) - 1, 1);
	const char *got;
	int64_t n;
	char *line;
	json_t *o;
	size_t len;

	line = format(0, "q", &m, NULL, &n);
	o = parse_line(line, (size_t)n);
	got = str_field(o, "body", &len);
	CHECK_EQ(len, sizeof(body) - 1);
	CHECK_MEMEQ(got, body, len);
	CHECK(json_object_get(o, "body_base64") == NULL);
	json_decref(o);
	free(line);
}

static void
check_base64_body(const uint8_t *body, size_t len)
{
	struct sluice_msg m = make_msg("id", 2, body, len, 1);
	uint8_t dec[256];
	int64_t n;
	char *line;
	json_t *o;

	line = format(0, "q", &m, NULL, &n);
	o = parse_line(line, (size_t)n);
	CHECK(json_object_get(o, "body") == NULL);
	CHECK_EQ(b64_decode(str_field(o, "body_base64", NULL), dec), (long)len);
	CHECK_MEMEQ(dec, body, len);
	json_decref(o);
	free(line);
}

static void
test_format_binary_body(void)
{
	static const char *const invalid[] = {
		"\xff",             /* never valid */
		"\xc0\xaf",         /* overlong '/' */
		"\xe0\x80\xaf",     /* overlong, 3 bytes */
		"\xed\xa0\x80",     /* surrogate */
		"\xf4\x90\x80\x80", /* above U+10FFFF */
		"ok\xe2\x82",       /* cut short */
		"\x80",             /* lone continuation */
	};
	uint8_t body[100];
	struct sluice_msg m;
	int64_t n;
	char *line;
	json_t *o;
	size_t i, len;
	unsigned x = 12345;

	for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
		check_base64_body((const uint8_t *)invalid[i],
				  strlen(invalid[i]));
	/* Every length, so each padding case is decoded back. */
	for (len = 1; len <= sizeof(body); len++) {
		for (i = 0; i < len; i++) {
			x = x * 1103515245u + 12345u;
			body[i] = (uint8_t)(x >> 16);
		}
		body[0] = 0xff;
		check_base64_body(body, len);
	}
	/* A known vector. */
	m = make_msg("id", 2, "\xff\xfe\xfd\xfc", 4, 1);
	line = format(0, "q", &m, NULL, &n);
	o = parse_line(line, (size_t)n);
	CHECK_STREQ(str_field(o, "body_base64", NULL), "//79/A==");
	json_decref(o);
	free(line);
}

static void
test_format_binary_id(void)
{
	struct sluice_msg m = make_msg("\xfe\x01", 2, "b", 1, 1);
	uint8_t dec[8];
	int64_t n;
	char *line;
	json_t *o;

	line = format(0, "q", &m, NULL, &n);
	o = parse_line(line, (size_t)n);
	CHECK(json_object_get(o, "id") == NULL);
	CHECK_EQ(b64_decode(str_field(o, "id_base64", NULL), dec), 2);
	CHECK_MEMEQ(dec, "\xfe\x01", 2);
	json_decref(o);
	free(line);
}

/* Free-form text keeps its valid characters; bad bytes become '?'. */
static void
test_format_invalid_text(void)
{
	struct sluice_error *why = sluice_error_new(SLUICE_CLASS_PERMANENT, 65,
						    "bad \xff byte \xc3\xa9");
	struct sluice_msg m = make_msg("i", 1, "b", 1, 1);
	int64_t n;
	char *line;
	json_t *o;

	line = format(0, "src\xfe", &m, why, &n);
	o = parse_line(line, (size_t)n);
	CHECK(strstr(str_field(o, "reason", NULL), "bad ? byte \xc3\xa9"));
	CHECK_STREQ(str_field(o, "source", NULL), "src?");
	CHECK_STREQ(str_field(o, "class", NULL), "permanent");
	json_decref(o);
	free(line);
	sluice_error_free(why);
}

static void
test_format_long_reason(void)
{
	struct sluice_error *why = NULL;
	struct sluice_msg m = make_msg("i", 1, "b", 1, 1);
	char text[200], *full;
	size_t need;
	int64_t n;
	char *line;
	json_t *o;
	int i;

	memset(text, 'r', sizeof(text) - 1);
	text[sizeof(text) - 1] = 0;
	for (i = 0; i < 5; i++)
		why = sluice_error_wrap(why, SLUICE_CLASS_TEMPORARY, i, "%s",
					text);
	need = sluice_error_format(why, NULL, 0);
	CHECK_GT(need, 900);
	full = malloc(need + 1);
	CHECK(full != NULL);
	sluice_error_format(why, full, need + 1);
	line = format(0, "q", &m, why, &n);
	o = parse_line(line, (size_t)n);
	CHECK_STREQ(str_field(o, "reason", NULL), full);
	CHECK_EQ(json_integer_value(json_object_get(o, "code")), 4);
	json_decref(o);
	free(line);
	free(full);
	sluice_error_free(why);
}

/* snprintf's contract: the needed length, the text only when it fits. */
static void
test_format_small_buffer(void)
{
	struct sluice_msg m = make_msg("abc", 3, "hello", 5, 1);
	char buf[512], ref[512];
	int64_t n;

	n = sluice_dlq_format(ref, sizeof(ref), 0, "q", &m, NULL);
	CHECK_GT(n, 10);
	CHECK_EQ(strlen(ref), n);
	CHECK_EQ(sluice_dlq_format(NULL, 0, 0, "q", &m, NULL), n);
	memset(buf, 'Z', sizeof(buf));
	CHECK_EQ(sluice_dlq_format(buf, 10, 0, "q", &m, NULL), n);
	CHECK_EQ(buf[0], '\0');
	CHECK_EQ(buf[10], 'Z'); /* nothing past size */
	CHECK_EQ(sluice_dlq_format(buf, (size_t)n, 0, "q", &m, NULL), n);
	CHECK_EQ(buf[0], '\0');
	CHECK_EQ(sluice_dlq_format(buf, (size_t)n + 1, 0, "q", &m, NULL), n);
	CHECK_STREQ(buf, ref);
	CHECK_EQ(sluice_dlq_format(NULL, 5, 0, "q", &m, NULL), SLUICE_EINVAL);
	CHECK_EQ(sluice_dlq_format(buf, 5, 0, "q", NULL, NULL), SLUICE_EINVAL);
}

/* Every allocation of ours that can fail reports ENOMEM, leaking nothing. */
static void
test_format_alloc_failures(void)
{
	struct sluice_error *why = NULL;
	uint8_t body[300];
	struct sluice_msg m;
	char text[200];
	unsigned long k;
	int64_t n = 0;
	int i;

	memset(text, 'r', sizeof(text) - 1);
	text[sizeof(text) - 1] = 0;
	for (i = 0; i < 3; i++)
		why = sluice_error_wrap(why, SLUICE_CLASS_TEMPORARY, i, "%s",
					text);
	memset(body, 0xff, sizeof(body));
	m = make_msg("\xff", 1, body, sizeof(body), 1);
	for (k = 1; k < 20; k++) {
		sl_alloc_fail_after(k, 0);
		n = sluice_dlq_format(NULL, 0, 0, "q\xff", &m, why);
		sl_alloc_fail_after(0, 0);
		if (n > 0)
			break;
		CHECK_EQ(n, SLUICE_ENOMEM);
	}
	CHECK_GT(n, 0);
	CHECK_GT(k, 3); /* reason, source, id and body each allocated */
	sluice_error_free(why);
}

/* ---- the file sink ----------------------------------------------------- */

struct tmpdir {
	char dir[64];
	char path[128];
};

static void
tmp_make(struct tmpdir *t)
{
	snprintf(t->dir, sizeof(t->dir), "/tmp/test_dlq.XXXXXX");
	CHECK(mkdtemp(t->dir) != NULL);
	snprintf(t->path, sizeof(t->path), "%s/dead.jsonl", t->dir);
}

static void
tmp_remove(struct tmpdir *t)
{
	unlink(t->path);
	rmdir(t->dir);
}

static char *
slurp(const char *path, size_t *len)
{
	struct stat st;
	char *buf;
	ssize_t r;
	int fd;

	fd = open(path, O_RDONLY);
	CHECK_GE(fd, 0);
	CHECK_OK(fstat(fd, &st));
	buf = malloc((size_t)st.st_size + 1);
	CHECK(buf != NULL);
	r = read(fd, buf, (size_t)st.st_size);
	CHECK_EQ(r, st.st_size);
	buf[r] = 0;
	close(fd);
	*len = (size_t)r;
	return buf;
}

/* Calls @fn for each line (with its '\n'); returns the line count. */
static size_t
each_line(char *buf, size_t len, void (*fn)(json_t *, void *), void *arg)
{
	size_t count = 0, start = 0, i;
	json_t *o;

	for (i = 0; i < len; i++) {
		if (buf[i] != '\n')
			continue;
		o = parse_line(buf + start, i + 1 - start);
		if (fn)
			fn(o, arg);
		json_decref(o);
		start = i + 1;
		count++;
	}
	CHECK_EQ(start, len); /* no partial line at the end */
	return count;
}

static void
collect_ids(json_t *o, void *arg)
{
	char *ids = arg;

	strncat(ids, str_field(o, "id", NULL), 8);
}

static void
test_file_appends_lines(void)
{
	struct sluice_error *why =
		sluice_error_new(SLUICE_CLASS_PERMANENT, 1, "no");
	char big[9000], ids[64] = { 0 }, *buf;
	struct sluice_msg m;
	struct sluice_dlq d;
	struct tmpdir t;
	struct stat st;
	size_t len;
	mode_t old;

	memset(big, 'b', sizeof(big));
	tmp_make(&t);
	old = umask(0);
	CHECK_OK(sluice_dlq_file_open(t.path, false, &d));
	umask(old);
	CHECK_STREQ(d.ops->name, "file");
	m = make_msg("1", 1, "one", 3, 1);
	CHECK_OK(d.ops->write(d.self, "q", &m, why));
	m = make_msg("2", 1, big, sizeof(big), 2); /* over the stack line */
	CHECK_OK(d.ops->write(d.self, "q", &m, why));
	sluice_dlq_close(&d);
	CHECK(d.ops == NULL);
	sluice_dlq_close(&d); /* a no-op now */
	CHECK_OK(stat(t.path, &st));
	CHECK_EQ(st.st_mode & 0777, 0644);
	/* Reopening appends; fsync_each works on a regular file. */
	CHECK_OK(sluice_dlq_file_open(t.path, true, &d));
	m = make_msg("3", 1, "three", 5, 1);
	CHECK_OK(d.ops->write(d.self, "q", &m, NULL));
	sluice_dlq_close(&d);
	buf = slurp(t.path, &len);
	CHECK_EQ(each_line(buf, len, collect_ids, ids), 3);
	CHECK_STREQ(ids, "123");
	free(buf);
	tmp_remove(&t);
	sluice_error_free(why);
}

#define WRITERS 8
#define RECORDS 200

struct writer {
	struct sluice_dlq *d;
	int no;
	int failed;
};

static char writer_body[6000]; /* filled before the writers start */

/* Bodies up to 6000 bytes: beyond PIPE_BUF, still one write(2). */
static void *
writer_main(void *p)
{
	const char *body = writer_body;
	struct writer *w = p;
	struct sluice_msg m;
	char id[16];
	int i, n;

	for (i = 0; i < RECORDS; i++) {
		n = snprintf(id, sizeof(id), "%d-%d", w->no, i);
		m = make_msg(id, (size_t)n, body,
			     (size_t)(i * 37 % (int)sizeof(writer_body)), 1);
		if (w->d->ops->write(w->d->self, "q", &m, NULL) != 0)
			w->failed++;
	}
	return NULL;
}

static void
count_writer(json_t *o, void *arg)
{
	int *counts = arg, no = -1, i = -1;

	CHECK_EQ(sscanf(str_field(o, "id", NULL), "%d-%d", &no, &i), 2);
	CHECK(no >= 0 && no < WRITERS);
	CHECK(i >= 0 && i < RECORDS);
	counts[no]++;
}

static void
test_file_concurrent_writers(void)
{
	struct writer w[WRITERS];
	pthread_t th[WRITERS];
	int counts[WRITERS] = { 0 }, i;
	struct sluice_dlq d;
	struct tmpdir t;
	size_t len;
	char *buf;

	memset(writer_body, 'w', sizeof(writer_body));
	tmp_make(&t);
	CHECK_OK(sluice_dlq_file_open(t.path, false, &d));
	for (i = 0; i < WRITERS; i++) {
		w[i].d = &d;
		w[i].no = i;
		w[i].failed = 0;
		CHECK_OK(pthread_create(&th[i], NULL, writer_main, &w[i]));
	}
	for (i = 0; i < WRITERS; i++) {
		CHECK_OK(pthread_join(th[i], NULL));
		CHECK_EQ(w[i].failed, 0);
	}
	sluice_dlq_close(&d);
	buf = slurp(t.path, &len);
	CHECK_EQ(each_line(buf, len, count_writer, counts), WRITERS * RECORDS);
	for (i = 0; i < WRITERS; i++)
		CHECK_EQ(counts[i], RECORDS);
	free(buf);
	tmp_remove(&t);
}

static void
test_file_open_fails(void)
{
	struct sluice_dlq d = { 0 };
	struct tmpdir t;

	CHECK_EQ(sluice_dlq_file_open("/nonexistent-sluice-dir/x", false, &d),
		 -ENOENT);
	CHECK(d.ops == NULL);
	tmp_make(&t);
	CHECK_EQ(sluice_dlq_file_open(t.dir, false, &d), -EISDIR);
	CHECK_EQ(sluice_dlq_file_open(NULL, false, &d), SLUICE_EINVAL);
	sluice_dlq_close(&d); /* ops NULL: a no-op */
	sluice_dlq_close(NULL);
	tmp_remove(&t);
}

static void
test_file_write_fails(void)
{
	struct sluice_msg m = make_msg("x", 1, "body", 4, 1);
	struct sluice_dlq d;

	if (access("/dev/full", W_OK) != 0) {
		fprintf(stderr, "  (no /dev/full; skipped)\n");
		return;
	}
	CHECK_OK(sluice_dlq_file_open("/dev/full", false, &d));
	CHECK_EQ(d.ops->write(d.self, "q", &m, NULL), -ENOSPC);
	sluice_dlq_close(&d);
}

/*
 * A file size limit cuts a record short: the sink reports failure (so the
 * engine keeps the message) rather than a half line as success.  Each case
 * runs in its own child, so the limit stays there.
 */
static void
test_file_short_write(void)
{
	struct sluice_msg m;
	struct sluice_dlq d;
	struct rlimit rl;
	struct tmpdir t;
	char body[300];
	int rc;

	memset(body, 's', sizeof(body));
	m = make_msg("x", 1, body, sizeof(body), 1);
	tmp_make(&t);
	CHECK_OK(sluice_dlq_file_open(t.path, false, &d));
	signal(SIGXFSZ, SIG_IGN);
	rl.rlim_cur = rl.rlim_max = 100;
	CHECK_OK(setrlimit(RLIMIT_FSIZE, &rl));
	rc = d.ops->write(d.self, "q", &m, NULL);
	CHECK_LT(rc, 0);
	CHECK(rc == -EFBIG || rc == SLUICE_EIO);
	sluice_dlq_close(&d);
	tmp_remove(&t);
}

CHECK_MAIN(test_format_fields, test_format_time_before_epoch,
	   test_format_null_why, test_format_text_body_escapes,
	   test_format_binary_body, test_format_binary_id,
	   test_format_invalid_text, test_format_long_reason,
	   test_format_small_buffer, test_format_alloc_failures,
	   test_file_appends_lines, test_file_concurrent_writers,
	   test_file_open_fails, test_file_write_fails, test_file_short_write)
