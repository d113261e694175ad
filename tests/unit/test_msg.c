/* SPDX-License-Identifier: MIT */
/*
 * test_msg.c - the message accessors: views of the source's fields, safe on
 * NULL, ids clamped to SLUICE_MSG_ID_MAX.
 */
#include <string.h>

#include <sluice/msg.h>

#include "check.h"

static void
test_accessors_read_the_fields(void)
{
	static const uint8_t body[] = { 'a', 0, 'b' };
	struct sluice_msg m;
	struct sluice_bytes b;
	size_t len = 99;

	memset(&m, 0, sizeof(m));
	m.body = body;
	m.body_len = sizeof(body);
	m.id = "abc";
	m.id_len = 3;
	m.attempts = 4;
	m.timestamp_ns = 12345;
	b = sluice_msg_body(&m);
	CHECK(b.ptr == body);
	CHECK_EQ(b.len, 3);
	CHECK(sluice_msg_id(&m, &len) == m.id);
	CHECK_EQ(len, 3);
	CHECK_EQ(sluice_msg_attempts(&m), 4);
	CHECK_EQ(sluice_msg_timestamp_ns(&m), 12345);
}

static void
test_null_and_oversized_id(void)
{
	static char longid[200];
	struct sluice_msg m;
	size_t len = 99;

	CHECK_EQ(sluice_msg_body(NULL).len, 0);
	CHECK_STREQ(sluice_msg_id(NULL, &len), "");
	CHECK_EQ(len, 0);
	CHECK_EQ(sluice_msg_attempts(NULL), 0);
	memset(&m, 0, sizeof(m));
	CHECK_STREQ(sluice_msg_id(&m, &len), ""); /* no id set */
	CHECK_EQ(len, 0);
	memset(longid, 'x', sizeof(longid));
	m.id = longid;
	m.id_len = 200; /* a broken source: clamped */
	(void)sluice_msg_id(&m, &len);
	CHECK_EQ(len, SLUICE_MSG_ID_MAX);
}

CHECK_MAIN(test_accessors_read_the_fields, test_null_and_oversized_id)
