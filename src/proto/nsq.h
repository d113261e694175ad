/* SPDX-License-Identifier: MIT */
/*
 * nsq.h - the sans-I/O codec of the NSQ TCP protocol (nsqd "V2"), internal.
 *
 * Decoding: sl_nsq_frame() finds one server frame in a caller's buffer,
 * sl_nsq_message() splits a message frame's data into its fields,
 * sl_nsq_response_kind() and sl_nsq_error_parse() classify response and
 * error frames.  Encoding: sl_nsq_enc_*() write one client command each into
 * a caller's buffer.  Everything works on views into the caller's bytes:
 * nothing allocates, nothing keeps state, so there is no locking and any
 * thread may call anything.
 *
 * The reference is docs/nsq-protocol.md (shared docs); section numbers in
 * comments point into it.
 *
 * Encoder size contract (like snprintf, but all or nothing): every encoder
 * returns the number of bytes the whole command needs.  When that is more
 * than @cap, nothing is written, so (NULL, 0) asks for the size.  A negative
 * return is an error and nothing was written: SLUICE_EINVAL for an argument
 * nsqd would refuse with a fatal error (invalid name, empty body, message
 * id not 16 bytes), SLUICE_EMSGSIZE for a body whose size does not fit the
 * protocol's signed 32-bit size field.  Limits that depend on the server's
 * configuration (max-msg-size, max-rdy-count, max-req-timeout) are the
 * caller's to check.
 */
#ifndef SL_PROTO_NSQ_H
#define SL_PROTO_NSQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sluice/common.h>
#include <sluice/msg.h>

/* "  V2": the 4 bytes a client sends right after connecting (section 1.1). */
#define SL_NSQ_MAGIC     "  V2"
#define SL_NSQ_MAGIC_LEN 4u

/* Frame header: int32 size (counts type + data) and int32 type. */
#define SL_NSQ_FRAME_HDR 8u
/* Message frame data: int64 timestamp, uint16 attempts, 16-byte id. */
#define SL_NSQ_MSG_HDR   26u
#define SL_NSQ_ID_LEN    16u
/* Topic / channel names: 1..64 bytes, "#ephemeral" included (section 3). */
#define SL_NSQ_NAME_MAX  64u

/*
 * A frame's size field for a message body of @max_msg bytes: the @max_size
 * to give sl_nsq_frame() when the configured max message size is @max_msg.
 */
#define SL_NSQ_FRAME_SIZE_FOR(max_msg) ((size_t)(max_msg) + 4u + SL_NSQ_MSG_HDR)

/* The protocol's integers are big-endian (section 1.2). */
static inline uint32_t
sl_nsq_get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void
sl_nsq_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

enum sl_nsq_frame_type {
	SL_NSQ_FRAME_RESPONSE = 0,
	SL_NSQ_FRAME_ERROR = 1,
	SL_NSQ_FRAME_MESSAGE = 2,
};

/* One frame: a view into the buffer given to sl_nsq_frame(). */
struct sl_nsq_frame {
	enum sl_nsq_frame_type type;
	const uint8_t *data; /* size - 4 bytes; never NULL on success */
	size_t len;
};

/**
 * sl_nsq_frame() - find the frame at the start of @buf[0..@len).
 * @max_size: largest size field accepted (the size field counts the 4 type
 *            bytes and the data, not itself); see SL_NSQ_FRAME_SIZE_FOR().
 * @out: on success the frame, a view into @buf; may be NULL.
 *
 * Decides as early as the bytes allow: a bad size is refused as soon as the
 * 4 size bytes are in, a bad type as soon as the 8 header bytes are in,
 * without waiting for the data.  Never reads at or past @buf + @len.
 *
 * Returns: the bytes the frame occupies (4 + size, > 0: consume them), 0 if
 * @buf holds no complete frame yet, SLUICE_EPROTO for a size below 4 or
 * negative as int32, or a type other than 0/1/2, SLUICE_EMSGSIZE for a size
 * over @max_size, SLUICE_EINVAL for @buf NULL with @len > 0.  After an error
 * the stream has no resume point: drop the connection.
 */
ssize_t sl_nsq_frame(const uint8_t *buf, size_t len, size_t max_size,
		     struct sl_nsq_frame *out);

/**
 * sl_nsq_is_http() - do the first bytes read say "HTTP" (a client connected
 * to an HTTP port by mistake; as a size they read 1213486160)?
 * Useful to word the error after sl_nsq_frame() refused the size.
 */
bool sl_nsq_is_http(const uint8_t *buf, size_t len);

/* The fields of a message frame (section 1.4); views into the frame. */
struct sl_nsq_message {
	int64_t timestamp_ns; /* publish time, ns since the Unix epoch */
	uint16_t attempts;    /* deliveries including this one (see .c) */
	const char *id;       /* SL_NSQ_ID_LEN opaque bytes, not terminated */
	const uint8_t *body;
	size_t body_len; /* may be 0 */
};

/**
 * sl_nsq_message() - decode the data of a message frame.
 * Returns: 0, SLUICE_EPROTO when @len < SL_NSQ_MSG_HDR, or SLUICE_EINVAL for
 * NULL arguments.
 */
int sl_nsq_message(const uint8_t *data, size_t len, struct sl_nsq_message *out);

enum sl_nsq_response {
	SL_NSQ_RESP_OTHER = 0,      /* none of the below */
	SL_NSQ_RESP_OK = 1,         /* "OK" */
	SL_NSQ_RESP_HEARTBEAT = 2,  /* "_heartbeat_": answer with NOP */
	SL_NSQ_RESP_CLOSE_WAIT = 3, /* the reply to CLS */
	SL_NSQ_RESP_JSON = 4,       /* '{'...: IDENTIFY (or AUTH) reply */
};

/** sl_nsq_response_kind() - classify the data of a response frame. */
enum sl_nsq_response sl_nsq_response_kind(const uint8_t *data, size_t len);

/* An error frame's data "CODE SP description" (section 1.6). */
struct sl_nsq_error {
	const char *code; /* views into the frame, not terminated */
	size_t code_len;
	const char *desc; /* for humans only; may be empty */
	size_t desc_len;
	bool fatal; /* nsqd closes the connection after this error */
};

/**
 * sl_nsq_error_parse() - split an error frame's data into code and text.
 * Returns: 0, SLUICE_EPROTO when the code is empty (no data, or data that
 * starts with a space), SLUICE_EINVAL for NULL arguments.
 */
int sl_nsq_error_parse(const uint8_t *data, size_t len,
		       struct sl_nsq_error *out);

/**
 * sl_nsq_error_is_fatal() - does nsqd close the connection after sending
 * the error @code (@len bytes, e.g. "E_FIN_FAILED")?  Only E_FIN_FAILED,
 * E_REQ_FAILED and E_TOUCH_FAILED are not fatal; any other code, including
 * one this table does not know, is (section 1.6: "every other error is
 * fatal").
 */
bool sl_nsq_error_is_fatal(const char *code, size_t len);

/**
 * sl_nsq_error_is_known() - is @code one of the codes nsqd 1.3.0 sends
 * (section 2.13)?  For logging an unexpected code; fatality does not
 * depend on it.
 */
bool sl_nsq_error_is_known(const char *code, size_t len);

/**
 * sl_nsq_name_is_valid() - is @name[0..@len) a valid topic or channel name:
 * 1..64 bytes, "#ephemeral" included, of [.a-zA-Z0-9_-] with an optional
 * literal "#ephemeral" suffix (section 3)?  @name NULL is invalid.
 */
bool sl_nsq_name_is_valid(const char *name, size_t len);

/* Encoders: see the size contract at the top.  Names are C strings. */
ssize_t sl_nsq_enc_magic(uint8_t *out, size_t cap);
/* IDENTIFY\n + size + @json (the caller's JSON object, 1..INT32_MAX bytes) */
ssize_t sl_nsq_enc_identify(uint8_t *out, size_t cap, const void *json,
			    size_t len);
/* AUTH\n + size + @secret (1..INT32_MAX bytes) */
ssize_t sl_nsq_enc_auth(uint8_t *out, size_t cap, const void *secret,
			size_t len);
ssize_t sl_nsq_enc_sub(uint8_t *out, size_t cap, const char *topic,
		       const char *channel);
ssize_t sl_nsq_enc_rdy(uint8_t *out, size_t cap, uint32_t count);
/* @id: the SL_NSQ_ID_LEN bytes from the message; @id_len must equal it. */
ssize_t sl_nsq_enc_fin(uint8_t *out, size_t cap, const char *id, size_t id_len);
ssize_t sl_nsq_enc_req(uint8_t *out, size_t cap, const char *id, size_t id_len,
		       uint32_t timeout_ms);
ssize_t sl_nsq_enc_touch(uint8_t *out, size_t cap, const char *id,
			 size_t id_len);
ssize_t sl_nsq_enc_cls(uint8_t *out, size_t cap);
ssize_t sl_nsq_enc_nop(uint8_t *out, size_t cap);
/* PUB topic\n + size + @body (1..INT32_MAX bytes) */
ssize_t sl_nsq_enc_pub(uint8_t *out, size_t cap, const char *topic,
		       const void *body, size_t len);
/* DPUB topic defer_ms\n + size + @body */
ssize_t sl_nsq_enc_dpub(uint8_t *out, size_t cap, const char *topic,
			uint32_t defer_ms, const void *body, size_t len);
/*
 * MPUB topic\n + total size + count + (size, bytes) per body.  @n >= 1,
 * every body non-empty; the total 4 + sum(4 + len) must fit INT32_MAX.
 */
ssize_t sl_nsq_enc_mpub(uint8_t *out, size_t cap, const char *topic,
			const struct sluice_bytes *bodies, size_t n);

#endif /* SL_PROTO_NSQ_H */
