/* SPDX-License-Identifier: MIT */
/*
 * dlq.c - the dead-letter file sink and the JSON line it writes.
 *
 * A record is one compact JSON object built with jansson and ended by '\n'
 * (field list in dlq.h).  Text fields must be valid UTF-8 for JSON: the id
 * and the body fall back to "id_base64" / "body_base64" when they are not,
 * so the original bytes survive; free-form text (source name, reason) has
 * its invalid bytes replaced by '?'.
 *
 * The sink appends each record with a single write(2) on an O_APPEND
 * descriptor, which the kernel applies atomically to a regular file, so
 * concurrent writers (every worker thread) need no lock and never
 * interleave lines.  The sink keeps no mutable state besides the
 * descriptor, which only close() touches.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/dlq.h>
#include <sluice/error.h>

#include "core/dlq_int.h"
#include "util/alloc.h"

#define LINE_STACK 4096 /* most records fit; larger ones are allocated */
#define PAD        64   /* index of '=' in the base64 table */

struct dlq_file {
	int fd;          /* immutable until close */
	bool fsync_each; /* immutable */
};

/* ---- text ---------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence starting @s (@n bytes), or 0. */
static size_t
utf8_seq(const uint8_t *s, size_t n)
{
	uint32_t c;
	size_t len, i;

	if (s[0] < 0x80)
		return 1;
	if (s[0] < 0xc2 || s[0] > 0xf4)
		return 0;
	len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : 2;
	if (n < len)
		return 0;
	c = s[0] & (0x7FU >> len);
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3FU);
	}
	/* Overlong forms, surrogates, beyond U+10FFFF. */
	if ((len == 3 && c < 0x800) || (len == 4 && c < 0x10000) ||
	    c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	return len;
}

static bool
utf8_valid(const void *p, size_t n)
{
	const uint8_t *s = p;
	size_t k;

	while (n > 0) {
		k = utf8_seq(s, n);
		if (!k)
			return false;
		s += k;
		n -= k;
	}
	return true;
}

/*
 * A JSON string of @n bytes of free-form text, its invalid UTF-8 bytes
 * replaced by '?'.  NULL only when out of memory.
 */
static json_t *
text_value(const char *p, size_t n)
{
	const uint8_t *s = (const uint8_t *)p;
	json_t *v;
	char *copy;
	size_t i = 0, k;

	if (utf8_valid(p, n))
		return json_stringn(p, n);
	copy = sl_malloc(n);
	if (!copy)
		return NULL;
	while (i < n) {
		k = utf8_seq(s + i, n - i);
		if (k) {
			memcpy(copy + i, p + i, k);
			i += k;
		} else {
			copy[i++] = '?';
		}
	}
	v = json_stringn(copy, n);
	sl_free(copy);
	return v;
}

/*
 * Base64 (RFC 4648, padded).  Hand-written because jansson has no encoder
 * and twenty lines are not worth a dependency on OpenSSL.
 */
static json_t *
base64_value(const uint8_t *in, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
	size_t i, o = 0, len;
	uint32_t v;
	json_t *j;
	char *out;

	if (n > (SIZE_MAX / 4 - 1) * 3)
		return NULL;
	len = (n + 2) / 3 * 4;
	out = sl_malloc(len ? len : 1);
	if (!out)
		return NULL;
	for (i = 0; i + 2 < n; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 |
		    in[i + 2];
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 0x3f];
		out[o++] = tab[(v >> 6) & 0x3f];
		out[o++] = tab[v & 0x3f];
	}
	if (i < n) {
		v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 0x3f];
		out[o++] = tab[i + 1 < n ? (v >> 6) & 0x3f : PAD];
		out[o++] = tab[PAD];
	}
	j = json_stringn(out, o);
	sl_free(out);
	return j;
}

/* "2026-11-27T13:56:21.123Z" for @time_ns since the epoch. */
static int
rfc3339(char *buf, size_t size, int64_t time_ns)
{
	int64_t sec = time_ns / SLUICE_NS_PER_S,
		rem = time_ns % SLUICE_NS_PER_S;
	struct tm tm;
	time_t t;

	if (rem < 0) {
		rem += SLUICE_NS_PER_S;
		sec--;
	}
	t = (time_t)sec;
	if (!gmtime_r(&t, &tm))
		return SLUICE_EINVAL;
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(rem / SLUICE_NS_PER_MS));
	return 0;
}

/* ---- the record ---------------------------------------------------------- */

/* Add the raw bytes as @key, or base64 as @key_b64 when not UTF-8. */
static int
set_bytes(json_t *obj, const char *key, const char *key_b64, const void *p,
	  size_t n)
{
	if (n == 0)
		p = ""; /* json_stringn() refuses NULL even for no bytes */
	if (utf8_valid(p, n))
		return json_object_set_new(obj, key, json_stringn(p, n));
	return json_object_set_new(obj, key_b64, base64_value(p, n));
}

static int
set_reason(json_t *obj, const struct sluice_error *why)
{
	char small[256], *text = small;
	size_t need;
	int rc;

	if (!why)
		return json_object_set_new(obj, "reason", json_string(""));
	need = sluice_error_format(why, small, sizeof(small));
	if (need >= sizeof(small)) {
		text = sl_malloc(need + 1);
		if (!text)
			return -1;
		sluice_error_format(why, text, need + 1);
	}
	rc = json_object_set_new(obj, "reason", text_value(text, need));
	if (text != small)
		sl_free(text);
	return rc;
}

/*
 * The record as a JSON object (jansson keeps insertion order when dumping).
 * json_object_set_new() fails, and frees nothing leaked, when handed NULL,
 * so allocation failures collect in one flag.  Returns new or NULL.
 */
static json_t *
record(int64_t time_ns, const char *source, const struct sluice_msg *msg,
       const struct sluice_error *why, int *err)
{
	char stamp[96];
	json_t *obj;
	int bad = 0;

	*err = rfc3339(stamp, sizeof(stamp), time_ns);
	if (*err)
		return NULL;
	*err = SLUICE_ENOMEM;
	obj = json_object();
	if (!obj)
		return NULL;
	if (!source)
		source = "";
	bad |= json_object_set_new(obj, "time", json_string(stamp));
	bad |= json_object_set_new(obj, "source",
				   text_value(source, strlen(source)));
	bad |= set_bytes(obj, "id", "id_base64", msg->id, msg->id_len);
	bad |= json_object_set_new(obj, "attempts",
				   json_integer(msg->attempts));
	bad |= json_object_set_new(
		obj, "class",
		why ? json_string(sluice_class_name(sluice_error_class(why)))
		    : json_null());
	bad |= json_object_set_new(obj, "code",
				   json_integer(sluice_error_code(why)));
	bad |= set_reason(obj, why);
	bad |= set_bytes(obj, "body", "body_base64", msg->body, msg->body_len);
	if (bad) {
		json_decref(obj);
		return NULL;
	}
	*err = 0;
	return obj;
}

/* Dump @obj and its '\n' into @buf; snprintf's contract (see dlq.h). */
static int64_t
dump(const json_t *obj, char *buf, size_t size)
{
	size_t n = json_dumpb(obj, buf, size, JSON_COMPACT);

	if (n == 0)
		return SLUICE_ENOMEM;
	if (n + 2 <= size) {
		buf[n] = '\n';
		buf[n + 1] = '\0';
	} else if (size > 0) {
		buf[0] = '\0'; /* json_dumpb left it undefined */
	}
	return (int64_t)n + 1;
}

int64_t
sluice_dlq_format(char *buf, size_t size, int64_t time_ns, const char *source,
		  const struct sluice_msg *msg, const struct sluice_error *why)
{
	json_t *obj;
	int64_t n;
	int err;

	if (!msg || (!buf && size))
		return SLUICE_EINVAL;
	obj = record(time_ns, source, msg, why, &err);
	if (!obj)
		return err;
	n = dump(obj, buf, size);
	json_decref(obj);
	return n;
}

/* ---- the file sink ------------------------------------------------------- */

/*
 * One write(2) per record.  A short write on a regular O_APPEND file means
 * the disk filled up or a limit was hit; the rest is written so the line
 * is whole, but the record is reported failed, because another writer may
 * have appended between the two parts: the engine then keeps the message
 * and retries, so a broken line costs a duplicate record, never a loss.
 */
static int
write_all(int fd, const char *p, size_t n)
{
	bool short_write = false;
	ssize_t w;

	while (n > 0) {
		w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return SLUICE_EIO;
		if ((size_t)w < n)
			short_write = true;
		p += w;
		n -= (size_t)w;
	}
	return short_write ? SLUICE_EIO : 0;
}

int
sl_dlq_emit(const char *source, const struct sluice_msg *msg,
	    const struct sluice_error *why, sl_dlq_sink_fn *sink, void *ctx)
{
	char stack[LINE_STACK], *line = stack;
	struct timespec ts;
	json_t *obj;
	int64_t n;
	int err;

	if (!msg)
		return SLUICE_EINVAL;
	clock_gettime(CLOCK_REALTIME, &ts);
	obj = record((int64_t)ts.tv_sec * SLUICE_NS_PER_S + ts.tv_nsec, source,
		     msg, why, &err);
	if (!obj)
		return err;
	n = dump(obj, stack, sizeof(stack));
	if (n >= (int64_t)sizeof(stack)) {
		line = sl_malloc((size_t)n + 1);
		n = line ? dump(obj, line, (size_t)n + 1) : SLUICE_ENOMEM;
	}
	json_decref(obj);
	err = n < 0 ? (int)n : sink(ctx, line, (size_t)n);
	if (line != stack)
		sl_free(line);
	return err;
}

static int
file_line(void *ctx, const char *line, size_t len)
{
	struct dlq_file *f = ctx;
	int err = write_all(f->fd, line, len);

	if (!err && f->fsync_each && fdatasync(f->fd) < 0)
		err = -errno;
	return err;
}

static int
file_write(void *self, const char *source, const struct sluice_msg *msg,
	   const struct sluice_error *why)
{
	return sl_dlq_emit(source, msg, why, file_line, self);
}

static void
file_close(void *self)
{
	struct dlq_file *f = self;

	/* Records written without fsync_each become durable here. */
	if (!f->fsync_each)
		fdatasync(f->fd);
	close(f->fd);
	sl_free(f);
}

static const struct sluice_dlq_ops file_ops = {
	.name = "file",
	.write = file_write,
	.close = file_close,
};

int
sluice_dlq_file_open(const char *path, bool fsync_each, struct sluice_dlq *out)
{
	struct dlq_file *f;
	int err;

	if (!path || !out)
		return SLUICE_EINVAL;
	f = sl_malloc(sizeof(*f));
	if (!f)
		return SLUICE_ENOMEM;
	f->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (f->fd < 0) {
		err = -errno;
		sl_free(f);
		return err;
	}
	f->fsync_each = fsync_each;
	out->ops = &file_ops;
	out->self = f;
	return 0;
}

void
sluice_dlq_close(struct sluice_dlq *d)
{
	if (!d || !d->ops)
		return;
	if (d->ops->close)
		d->ops->close(d->self);
	d->ops = NULL;
	d->self = NULL;
}
