/* SPDX-License-Identifier: MIT */
/*
 * test_stream.c - the stdin / file source: what is read comes out whole and
 * in order, files are read in turn with each end a message boundary, the
 * limit stops reading, a full queue holds the reader back, stop() ends a
 * blocked reader, unfinished messages can be taken, and errors name the
 * input and the message.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sluice/queue.h>
#include <sluice/stream.h>

#include "check.h"

static char dir[] = "/tmp/sluice-stream-XXXXXX";

static const char *
write_file(const char *name, const void *data, size_t len)
{
	static char path[8][256];
	static int next;
	char *p = path[next++ % 8];
	int fd;

	if (!dir[0] || strstr(dir, "XXXXXX"))
		CHECK(mkdtemp(dir) != NULL);
	snprintf(p, 256, "%s/%s", dir, name);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK_GE(fd, 0);
	CHECK_EQ(write(fd, data, len), (ssize_t)len);
	close(fd);
	return p;
}

/* Fetch everything until the source closes; ack and release as we go. */
static size_t
drain(struct sluice_stream *s, char bodies[][64], size_t max)
{
	struct sluice_source src = sluice_stream_source(s);
	struct sluice_msg *m[16];
	size_t n = 0;
	int got, i;

	while ((got = src.ops->fetch(src.self, m, 16, SLUICE_FOREVER)) !=
	       SLUICE_ECLOSED) {
		CHECK_GE(got, 0);
		for (i = 0; i < got; i++) {
			CHECK_LT(n, max);
			CHECK_LT(m[i]->body_len, 64);
			memcpy(bodies[n], m[i]->body, m[i]->body_len);
			bodies[n][m[i]->body_len] = 0;
			n++;
		}
		CHECK_EQ(src.ops->ack(src.self, m, (size_t)got), 0);
		src.ops->release(src.self, m, (size_t)got);
	}
	return n;
}

static void
test_files_in_turn_in_order(void)
{
	const char *paths[2];
	struct sluice_stream_config cfg;
	struct sluice_stream_stats st;
	struct sluice_stream *s;
	static char got[16][64];
	char err[128];

	paths[0] = write_file("a", "one\ntwo\nthree", 13); /* no last \n */
	paths[1] = write_file("b", "four\n\nsix\n", 10);
	sluice_stream_config_init(&cfg);
	cfg.paths = paths;
	cfg.npaths = 2;
	CHECK_OK(sluice_stream_open(&cfg, err, sizeof(err), &s));
	CHECK_EQ(drain(s, got, 16), 6);
	CHECK_STREQ(got[0], "one");
	CHECK_STREQ(got[2], "three"); /* the end of a file ends a message */
	CHECK_STREQ(got[3], "four");
	CHECK_STREQ(got[4], "");
	CHECK_STREQ(got[5], "six");
	CHECK_OK(sluice_stream_finish(s, err, sizeof(err)));
	sluice_stream_stats(s, &st);
	CHECK_EQ(st.messages, 6);
	CHECK_EQ(st.bytes, 23);
	CHECK_EQ(st.eof, 1);
	sluice_stream_free(s);
}

static void
test_ids_number_the_messages(void)
{
	const char *path = write_file("ids", "x\ny\nz\n", 6);
	struct sluice_stream_config cfg;
	struct sluice_source src;
	struct sluice_stream *s;
	struct sluice_msg *m[4];
	size_t len;

	sluice_stream_config_init(&cfg);
	cfg.paths = &path;
	cfg.npaths = 1;
	CHECK_OK(sluice_stream_open(&cfg, NULL, 0, &s));
	src = sluice_stream_source(s);
	CHECK_EQ(src.ops->fetch(src.self, m, 1, SLUICE_FOREVER), 1);
	CHECK_MEMEQ(sluice_msg_id(m[0], &len), "0000000000000001", 16);
	CHECK_EQ(len, 16);
	CHECK_EQ(sluice_msg_attempts(m[0]), 1);
	CHECK_EQ(src.ops->ack(src.self, m, 1), 0);
	src.ops->release(src.self, m, 1);
	sluice_stream_free(s); /* with messages still queued: no leak */
}

static void
test_limit_stops_reading(void)
{
	const char *path = write_file("lim", "1\n2\n3\n4\n5\n", 10);
	struct sluice_stream_config cfg;
	struct sluice_stream_stats st;
	struct sluice_stream *s;
	static char got[16][64];

	sluice_stream_config_init(&cfg);
	cfg.paths = &path;
	cfg.npaths = 1;
	cfg.limit = 3;
	CHECK_OK(sluice_stream_open(&cfg, NULL, 0, &s));
	CHECK_EQ(drain(s, got, 16), 3);
	CHECK_STREQ(got[2], "3");
	sluice_stream_stats(s, &st);
	CHECK_EQ(st.messages, 3);
	CHECK_EQ(st.eof, 0);
	sluice_stream_free(s);
}

/* A pipe nobody reads from the other end of: the reader blocks in read()
 * or, with a full queue, in publish; stop() must end both. */
static void
test_stop_ends_a_blocked_reader(void)
{
	struct sluice_stream_config cfg;
	struct sluice_stream_stats st;
	struct sluice_stream *s;
	struct sluice_msg *m[8];
	int p[2], saved, i, n = 0, got;
	char err[64];

	CHECK_OK(pipe(p));
	saved = dup(0);
	CHECK_OK(dup2(p[0], 0) < 0);
	close(p[0]);
	sluice_stream_config_init(&cfg); /* stdin */
	cfg.capacity = 2;                /* full after two messages */
	CHECK_OK(sluice_stream_open(&cfg, err, sizeof(err), &s));
	CHECK_EQ(write(p[1], "a\nb\nc\nd\n", 8), 8);
	/* Two fit; the reader then waits for room.  Wait for them. */
	{
		struct sluice_source src = sluice_stream_source(s);

		while (n < 2) {
			got = src.ops->fetch(src.self, m + n, 2,
					     SLUICE_FOREVER);
			CHECK_GT(got, 0);
			n += got;
		}
		sluice_stream_stop(s);
		CHECK_OK(sluice_stream_finish(s, err, sizeof(err)));
		for (i = 0; i < n; i++)
			CHECK_EQ(src.ops->ack(src.self, m + i, 1), 0);
		src.ops->release(src.self, m, (size_t)n);
	}
	sluice_stream_stats(s, &st);
	CHECK_LE(st.messages, 4);
	CHECK_EQ(st.eof, 0);
	sluice_stream_free(s);
	close(p[1]);
	CHECK_OK(dup2(saved, 0) < 0);
	close(saved);
}

static void
test_unfinished_can_be_taken(void)
{
	const char *path = write_file("unf", "p\nq\nr\n", 6);
	struct sluice_stream_config cfg;
	struct sluice_source src;
	struct sluice_stream *s;
	struct sluice_msg *m[4];
	int n;

	sluice_stream_config_init(&cfg);
	cfg.paths = &path;
	cfg.npaths = 1;
	CHECK_OK(sluice_stream_open(&cfg, NULL, 0, &s));
	src = sluice_stream_source(s);
	CHECK_OK(sluice_stream_finish(s, NULL, 0)); /* all three queued */
	CHECK_EQ(src.ops->fetch(src.self, m, 1, SLUICE_FOREVER), 1);
	/* A retry waiting an hour still counts as unfinished. */
	CHECK_OK(
		src.ops->requeue(src.self, m[0], 3600 * SLUICE_NS_PER_S, true));
	src.ops->release(src.self, m, 1);
	n = sluice_stream_take_unfinished(s, m, 4);
	CHECK_EQ(n, 3);
	CHECK_EQ(src.ops->ack(src.self, m, 3), 0);
	src.ops->release(src.self, m, 3);
	CHECK_EQ(sluice_stream_take_unfinished(s, m, 4), 0);
	CHECK_EQ(src.ops->fetch(src.self, m, 4, 0), SLUICE_ECLOSED);
	sluice_stream_free(s);
}

static void
test_errors_name_input_and_message(void)
{
	static const char trunc[] = {
		0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 9, 'x'
	};
	const char *big = write_file("big", "ok\nthis line is too long\n", 25);
	const char *cut = write_file("cut", trunc, sizeof(trunc));
	const char *missing = "/nonexistent/sluice-input";
	struct sluice_stream_config cfg;
	struct sluice_stream *s;
	static char got[4][64];
	char err[256];

	sluice_stream_config_init(&cfg);
	cfg.paths = &big;
	cfg.npaths = 1;
	cfg.max_body = 8;
	CHECK_OK(sluice_stream_open(&cfg, err, sizeof(err), &s));
	CHECK_EQ(drain(s, got, 4), 1); /* "ok" got through */
	CHECK_EQ(sluice_stream_finish(s, err, sizeof(err)), SLUICE_EMSGSIZE);
	CHECK(strstr(err, "big: message 2 is longer than 8 bytes") != NULL);
	sluice_stream_free(s);

	cfg.paths = &cut;
	cfg.max_body = 64;
	cfg.framing = SLUICE_FRAMING_LENGTH;
	CHECK_OK(sluice_stream_open(&cfg, err, sizeof(err), &s));
	CHECK_EQ(drain(s, got, 4), 1);
	CHECK_STREQ(got[0], "abc");
	CHECK_EQ(sluice_stream_finish(s, err, sizeof(err)), SLUICE_EPROTO);
	CHECK(strstr(err, "cut: message 2 is cut short") != NULL);
	sluice_stream_free(s);

	cfg.paths = &missing;
	CHECK_EQ(sluice_stream_open(&cfg, err, sizeof(err), &s), -ENOENT);
	CHECK(strstr(err, "/nonexistent/sluice-input: No such file") != NULL);
	cfg.capacity = 0;
	CHECK_EQ(sluice_stream_open(&cfg, err, sizeof(err), &s), SLUICE_EINVAL);
}

CHECK_MAIN(test_files_in_turn_in_order, test_ids_number_the_messages,
	   test_limit_stops_reading, test_stop_ends_a_blocked_reader,
	   test_unfinished_can_be_taken, test_errors_name_input_and_message)
