/* SPDX-License-Identifier: MIT */
/*
 * msg.c - read-only accessors for struct sluice_msg.
 *
 * A message's fields are set by its source before delivery and never change
 * while a handler borrows it, so these read without locks.  They tolerate
 * NULL (an empty message) and an id_len larger than the id array (clamped),
 * so a buggy source cannot make a handler read out of bounds.
 */
#include <sluice/msg.h>

struct sluice_bytes
sluice_msg_body(const struct sluice_msg *m)
{
	struct sluice_bytes b = { .ptr = NULL, .len = 0 };

	if (m && m->body) {
		b.ptr = m->body;
		b.len = m->body_len;
	}
	return b;
}

const char *
sluice_msg_id(const struct sluice_msg *m, size_t *len)
{
	size_t n = 0;

	if (m) {
		n = m->id_len;
		if (n > SLUICE_MSG_ID_MAX)
			n = SLUICE_MSG_ID_MAX;
	}
	if (len)
		*len = n;
	return m && m->id ? m->id : "";
}

uint32_t
sluice_msg_attempts(const struct sluice_msg *m)
{
	return m ? m->attempts : 0;
}

int64_t
sluice_msg_timestamp_ns(const struct sluice_msg *m)
{
	return m ? m->timestamp_ns : 0;
}
