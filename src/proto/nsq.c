/* SPDX-License-Identifier: MIT */
/*
 * nsq.c - the sans-I/O NSQ V2 codec: server frames in, client commands out.
 *
 * Stateless and allocation-free: every function looks only at its
 * arguments, returns views into the caller's bytes and never reads at or
 * past @buf + @len.  No shared state, so no locking.
 *
 * Decisions the reference (docs/nsq-protocol.md) leaves to the client:
 *  - Frame size checks run in this order, each as soon as its bytes are in:
 *    size negative as int32 or below 4 -> SLUICE_EPROTO, size over
 *    @max_size -> SLUICE_EMSGSIZE (both after 4 bytes), type not 0/1/2 ->
 *    SLUICE_EPROTO (after 8 bytes).  A message frame too short for its
 *    26-byte header passes sl_nsq_frame() and is refused by
 *    sl_nsq_message(), so framing stays independent of the frame type.
 *  - A message with an empty body (size 30) is accepted: nsqd cannot send
 *    one (PUB refuses empty bodies) but it is well-formed.  attempts == 0 is
 *    accepted too: nsqd does not check the uint16 for overflow, so after
 *    65535 deliveries it wraps.  The id is opaque; it is not checked to be
 *    hex.
 *  - A response is JSON when its first byte is '{' (what go-nsq checks);
 *    "OK", "_heartbeat_" and "CLOSE_WAIT" must match exactly.
 *  - An error code is the bytes before the first space, the whole data when
 *    there is none.  An empty code is SLUICE_EPROTO.  A code the table does
 *    not know is fatal (the reference: only three codes are not).
 *  - Encoders refuse what nsqd would answer with a fatal error and what the
 *    encoder can judge alone: invalid names, empty bodies, MPUB with no
 *    message, an id that is not 16 bytes.  An id holding SP, LF or CR is
 *    also refused: it would split or truncate the command line (nsqd only
 *    checks the length, but its ids are hex).  Delays and counts are uint32:
 *    nsqd parses them as unsigned decimal without an overflow check, and a
 *    uint32 of milliseconds cannot overflow its int64 nanoseconds.
 */
#include "proto/nsq.h"

#include <limits.h>
#include <string.h>

#define EPHEMERAL     "#ephemeral"
#define EPHEMERAL_LEN (sizeof(EPHEMERAL) - 1)

/*
 * Largest size field whose frame length (4 + size) fits ssize_t; only below
 * INT32_MAX where ssize_t is 32 bits.
 */
#define FRAME_SIZE_MAX \
	((uint32_t)(SSIZE_MAX - 4 < INT32_MAX ? SSIZE_MAX - 4 : INT32_MAX))

/* Longest decimal uint32: 4294967295. */
#define U32_DIGITS 10

static uint64_t
get_be64(const uint8_t *p)
{
	return (uint64_t)sl_nsq_get_be32(p) << 32 | sl_nsq_get_be32(p + 4);
}

/* ---- decoding ------------------------------------------------------------ */

ssize_t
sl_nsq_frame(const uint8_t *buf, size_t len, size_t max_size,
	     struct sl_nsq_frame *out)
{
	uint32_t size, type;

	if (!buf)
		return len ? SLUICE_EINVAL : 0;
	if (len < 4)
		return 0;
	size = sl_nsq_get_be32(buf);
	if (size > INT32_MAX || size < 4)
		return SLUICE_EPROTO;
	if (size > max_size || size > FRAME_SIZE_MAX)
		return SLUICE_EMSGSIZE;
	if (len < SL_NSQ_FRAME_HDR)
		return 0;
	type = sl_nsq_get_be32(buf + 4);
	if (type > SL_NSQ_FRAME_MESSAGE)
		return SLUICE_EPROTO;
	if (len - 4 < size)
		return 0;
	if (out) {
		out->type = (enum sl_nsq_frame_type)type;
		out->data = buf + SL_NSQ_FRAME_HDR;
		out->len = size - 4;
	}
	return (ssize_t)size + 4;
}

bool
sl_nsq_is_http(const uint8_t *buf, size_t len)
{
	return buf && len >= 4 && memcmp(buf, "HTTP", 4) == 0;
}

int
sl_nsq_message(const uint8_t *data, size_t len, struct sl_nsq_message *out)
{
	if (!out)
		return SLUICE_EINVAL;
	if (len < SL_NSQ_MSG_HDR)
		return SLUICE_EPROTO;
	if (!data)
		return SLUICE_EINVAL;
	/* Two's complement reinterpretation of the wire's int64. */
	out->timestamp_ns = (int64_t)get_be64(data);
	out->attempts = (uint16_t)((unsigned)data[8] << 8 | data[9]);
	out->id = (const char *)(data + 10);
	out->body = data + SL_NSQ_MSG_HDR;
	out->body_len = len - SL_NSQ_MSG_HDR;
	return 0;
}

static bool
equals(const uint8_t *data, size_t len, const char *lit)
{
	size_t n = strlen(lit);

	return len == n && memcmp(data, lit, n) == 0;
}

enum sl_nsq_response
sl_nsq_response_kind(const uint8_t *data, size_t len)
{
	if (!data || len == 0)
		return SL_NSQ_RESP_OTHER;
	if (data[0] == '{')
		return SL_NSQ_RESP_JSON;
	if (equals(data, len, "OK"))
		return SL_NSQ_RESP_OK;
	if (equals(data, len, "_heartbeat_"))
		return SL_NSQ_RESP_HEARTBEAT;
	if (equals(data, len, "CLOSE_WAIT"))
		return SL_NSQ_RESP_CLOSE_WAIT;
	return SL_NSQ_RESP_OTHER;
}

/* Section 2.13 of the reference: every code nsqd 1.3.0 sends. */
static const struct {
	const char *code;
	bool fatal;
} errtab[] = {
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

static int
errtab_find(const char *code, size_t len)
{
	size_t i;

	if (!code)
		return -1;
	for (i = 0; i < sizeof(errtab) / sizeof(errtab[0]); i++)
		if (equals((const uint8_t *)code, len, errtab[i].code))
			return (int)i;
	return -1;
}

bool
sl_nsq_error_is_fatal(const char *code, size_t len)
{
	int i = errtab_find(code, len);

	return i < 0 || errtab[i].fatal;
}

bool
sl_nsq_error_is_known(const char *code, size_t len)
{
	return errtab_find(code, len) >= 0;
}

int
sl_nsq_error_parse(const uint8_t *data, size_t len, struct sl_nsq_error *out)
{
	const uint8_t *sp;
	size_t clen;

	if (!out || (!data && len))
		return SLUICE_EINVAL;
	if (len == 0)
		return SLUICE_EPROTO;
	sp = memchr(data, ' ', len);
	clen = sp ? (size_t)(sp - data) : len;
	if (clen == 0)
		return SLUICE_EPROTO;
	out->code = (const char *)data;
	out->code_len = clen;
	out->desc = (const char *)data + (sp ? clen + 1 : len);
	out->desc_len = sp ? len - clen - 1 : 0;
	out->fatal = sl_nsq_error_is_fatal(out->code, clen);
	return 0;
}

/* ---- names --------------------------------------------------------------- */

static bool
name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool
sl_nsq_name_is_valid(const char *name, size_t len)
{
	size_t base = len, i;

	if (!name || len == 0 || len > SL_NSQ_NAME_MAX)
		return false;
	/* The suffix needs at least one name character before it. */
	if (len > EPHEMERAL_LEN &&
	    memcmp(name + len - EPHEMERAL_LEN, EPHEMERAL, EPHEMERAL_LEN) == 0)
		base = len - EPHEMERAL_LEN;
	for (i = 0; i < base; i++)
		if (!name_char(name[i]))
			return false;
	return true;
}

/* A C-string name: valid, and its length in *len. */
static bool
cname_ok(const char *name, size_t *len)
{
	if (!name)
		return false;
	*len = strnlen(name, SL_NSQ_NAME_MAX + 1);
	return sl_nsq_name_is_valid(name, *len);
}

/* ---- encoding ------------------------------------------------------------ */

/* One piece of a command; gather() copies them all or nothing. */
struct part {
	const void *p;
	size_t n;
};

static ssize_t
gather(uint8_t *out, size_t cap, const struct part *parts, size_t n)
{
	size_t need = 0, off = 0, i;

	/* Bodies are capped at INT32_MAX, so this sum cannot wrap. */
	for (i = 0; i < n; i++)
		need += parts[i].n;
	if (need > (size_t)SSIZE_MAX)
		return SLUICE_EMSGSIZE;
	if (need > cap)
		return (ssize_t)need;
	for (i = 0; i < n; i++) {
		/* Cannot happen (need <= cap), but stated so the compiler's
		 * object-size checks (_FORTIFY_SOURCE=3) can see it. */
		if (parts[i].n > cap - off)
			return SLUICE_EMSGSIZE;
		if (parts[i].n)
			memcpy(out + off, parts[i].p, parts[i].n);
		off += parts[i].n;
	}
	return (ssize_t)need;
}

/* Decimal digits of @v into @buf (no terminator); returns their count. */
static size_t
udec(char buf[U32_DIGITS], uint32_t v)
{
	char tmp[U32_DIGITS];
	size_t n = 0, i;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

/* 0, or why @body cannot be a command body (nsqd refuses size <= 0). */
static int
body_check(const void *body, size_t len)
{
	if (len == 0 || !body)
		return SLUICE_EINVAL;
	if (len > INT32_MAX)
		return SLUICE_EMSGSIZE;
	return 0;
}

static bool
id_ok(const char *id, size_t len)
{
	size_t i;

	if (!id || len != SL_NSQ_ID_LEN)
		return false;
	for (i = 0; i < len; i++)
		if (id[i] == ' ' || id[i] == '\n' || id[i] == '\r')
			return false;
	return true;
}

#define PART(ptr, len) ((struct part){ (ptr), (len) })
#define LIT(s)         PART((s), sizeof(s) - 1)

ssize_t
sl_nsq_enc_magic(uint8_t *out, size_t cap)
{
	struct part p[] = { LIT(SL_NSQ_MAGIC) };

	if (!out && cap)
		return SLUICE_EINVAL;
	return gather(out, cap, p, 1);
}

/* "NAME\n" + 4-byte size + body: IDENTIFY and AUTH. */
static ssize_t
enc_body_cmd(uint8_t *out, size_t cap, struct part name, const void *body,
	     size_t len)
{
	uint8_t sz[4];
	struct part p[4];
	int rc;

	if (!out && cap)
		return SLUICE_EINVAL;
	rc = body_check(body, len);
	if (rc)
		return rc;
	sl_nsq_put_be32(sz, (uint32_t)len);
	p[0] = name;
	p[1] = LIT("\n");
	p[2] = PART(sz, 4);
	p[3] = PART(body, len);
	return gather(out, cap, p, 4);
}

ssize_t
sl_nsq_enc_identify(uint8_t *out, size_t cap, const void *json, size_t len)
{
	return enc_body_cmd(out, cap, LIT("IDENTIFY"), json, len);
}

ssize_t
sl_nsq_enc_auth(uint8_t *out, size_t cap, const void *secret, size_t len)
{
	return enc_body_cmd(out, cap, LIT("AUTH"), secret, len);
}

ssize_t
sl_nsq_enc_sub(uint8_t *out, size_t cap, const char *topic, const char *channel)
{
	size_t tl, cl;
	struct part p[6];

	if ((!out && cap) || !cname_ok(topic, &tl) || !cname_ok(channel, &cl))
		return SLUICE_EINVAL;
	p[0] = LIT("SUB ");
	p[1] = PART(topic, tl);
	p[2] = LIT(" ");
	p[3] = PART(channel, cl);
	p[4] = LIT("\n");
	return gather(out, cap, p, 5);
}

ssize_t
sl_nsq_enc_rdy(uint8_t *out, size_t cap, uint32_t count)
{
	char num[U32_DIGITS];
	struct part p[3];

	if (!out && cap)
		return SLUICE_EINVAL;
	p[0] = LIT("RDY ");
	p[1] = PART(num, udec(num, count));
	p[2] = LIT("\n");
	return gather(out, cap, p, 3);
}

/* "NAME id\n": FIN and TOUCH. */
static ssize_t
enc_id_cmd(uint8_t *out, size_t cap, struct part name, const char *id,
	   size_t id_len)
{
	struct part p[3];

	if ((!out && cap) || !id_ok(id, id_len))
		return SLUICE_EINVAL;
	p[0] = name;
	p[1] = PART(id, id_len);
	p[2] = LIT("\n");
	return gather(out, cap, p, 3);
}

ssize_t
sl_nsq_enc_fin(uint8_t *out, size_t cap, const char *id, size_t id_len)
{
	return enc_id_cmd(out, cap, LIT("FIN "), id, id_len);
}

ssize_t
sl_nsq_enc_touch(uint8_t *out, size_t cap, const char *id, size_t id_len)
{
	return enc_id_cmd(out, cap, LIT("TOUCH "), id, id_len);
}

ssize_t
sl_nsq_enc_req(uint8_t *out, size_t cap, const char *id, size_t id_len,
	       uint32_t timeout_ms)
{
	char num[U32_DIGITS];
	struct part p[5];

	if ((!out && cap) || !id_ok(id, id_len))
		return SLUICE_EINVAL;
	p[0] = LIT("REQ ");
	p[1] = PART(id, id_len);
	p[2] = LIT(" ");
	p[3] = PART(num, udec(num, timeout_ms));
	p[4] = LIT("\n");
	return gather(out, cap, p, 5);
}

ssize_t
sl_nsq_enc_cls(uint8_t *out, size_t cap)
{
	struct part p[] = { LIT("CLS\n") };

	if (!out && cap)
		return SLUICE_EINVAL;
	return gather(out, cap, p, 1);
}

ssize_t
sl_nsq_enc_nop(uint8_t *out, size_t cap)
{
	struct part p[] = { LIT("NOP\n") };

	if (!out && cap)
		return SLUICE_EINVAL;
	return gather(out, cap, p, 1);
}

ssize_t
sl_nsq_enc_pub(uint8_t *out, size_t cap, const char *topic, const void *body,
	       size_t len)
{
	uint8_t sz[4];
	size_t tl;
	struct part p[5];
	int rc;

	if ((!out && cap) || !cname_ok(topic, &tl))
		return SLUICE_EINVAL;
	rc = body_check(body, len);
	if (rc)
		return rc;
	sl_nsq_put_be32(sz, (uint32_t)len);
	p[0] = LIT("PUB ");
	p[1] = PART(topic, tl);
	p[2] = LIT("\n");
	p[3] = PART(sz, 4);
	p[4] = PART(body, len);
	return gather(out, cap, p, 5);
}

ssize_t
sl_nsq_enc_dpub(uint8_t *out, size_t cap, const char *topic, uint32_t defer_ms,
		const void *body, size_t len)
{
	char num[U32_DIGITS];
	uint8_t sz[4];
	size_t tl;
	struct part p[7];
	int rc;

	if ((!out && cap) || !cname_ok(topic, &tl))
		return SLUICE_EINVAL;
	rc = body_check(body, len);
	if (rc)
		return rc;
	sl_nsq_put_be32(sz, (uint32_t)len);
	p[0] = LIT("DPUB ");
	p[1] = PART(topic, tl);
	p[2] = LIT(" ");
	p[3] = PART(num, udec(num, defer_ms));
	p[4] = LIT("\n");
	p[5] = PART(sz, 4);
	p[6] = PART(body, len);
	return gather(out, cap, p, 7);
}

ssize_t
sl_nsq_enc_mpub(uint8_t *out, size_t cap, const char *topic,
		const struct sluice_bytes *bodies, size_t n)
{
	/* total = the MPUB body: count, then (size, bytes) per message. */
	size_t tl, total = 4, need, off, i;
	struct part p[3];
	uint8_t *w;
	ssize_t rc;

	if ((!out && cap) || !cname_ok(topic, &tl) || !bodies || n == 0)
		return SLUICE_EINVAL;
	for (i = 0; i < n; i++) {
		rc = body_check(bodies[i].ptr, bodies[i].len);
		if (rc)
			return rc;
	}
	for (i = 0; i < n; i++) {
		/* Checked before adding, so total stays <= INT32_MAX. */
		if (bodies[i].len > (size_t)INT32_MAX - 4 - total)
			return SLUICE_EMSGSIZE;
		total += 4 + bodies[i].len;
	}
	p[0] = LIT("MPUB ");
	p[1] = PART(topic, tl);
	p[2] = LIT("\n");
	/* The line alone, as a size query; then the 4-byte total and body. */
	rc = gather(NULL, 0, p, 3);
	if (rc < 0)
		return rc;
	need = (size_t)rc + 4 + total;
	if (need > (size_t)SSIZE_MAX)
		return SLUICE_EMSGSIZE;
	if (need > cap)
		return (ssize_t)need;
	off = (size_t)gather(out, cap, p, 3);
	w = out + off;
	sl_nsq_put_be32(w, (uint32_t)total);
	sl_nsq_put_be32(w + 4, (uint32_t)n);
	w += 8;
	for (i = 0; i < n; i++) {
		sl_nsq_put_be32(w, (uint32_t)bodies[i].len);
		memcpy(w + 4, bodies[i].ptr, bodies[i].len);
		w += 4 + bodies[i].len;
	}
	return (ssize_t)need;
}
