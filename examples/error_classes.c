/* SPDX-License-Identifier: MIT */
/*
 * error_classes.c - the seed's lesson 4: errors that say what to do next,
 * like Go's net.Error with Timeout() and Temporary(), drive the retries.
 *
 * First a table: errors made with sluice_error_new(), from errno values
 * (sluice_classify_errno) and from HTTP responses (sluice_error_from_http,
 * with a Retry-After header), each asked sluice_error_is_timeout() and
 * sluice_error_is_temporary().  Then an engine consumes five messages whose
 * external call fails in those ways:
 *   slow      times out once, then succeeds
 *   busy      HTTP 503 with "Retry-After: 1", then succeeds
 *   reset     ECONNRESET twice, then succeeds
 *   bad       HTTP 400: permanent, dead-lettered at once
 *   hopeless  ECONNREFUSED every time: dead-lettered when its 3 attempts
 *             are used up
 * The dead-letter sink is a JSON-lines file made with mkstemp under /tmp and
 * removed at the end.
 *
 * What to look for: temporaries and timeouts come back after the backoff
 * delay (10 ms, then 20 ms; "busy" waits longer because of its Retry-After,
 * capped by the policy's 150 ms max), "bad" gets a single attempt, and the
 * stats add up: delivered = handled + requeued + dead-lettered.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sluice/sluice.h>

#define MS SLUICE_NS_PER_MS

static const char *const names[] = { "slow", "busy", "reset", "bad",
				     "hopeless" };
#define NMSG (sizeof(names) / sizeof(names[0]))

/* When each message's previous attempt ran (one worker per message at a
 * time; the queue's lock orders one attempt before the next). */
static int64_t last_ns[NMSG];

static int64_t
now_ns(void)
{
	return sluice_clock_now_ns(sluice_clock_monotonic());
}

static void
show(const char *what, struct sluice_error *e)
{
	printf("  %-38s Timeout() %-5s Temporary() %-5s -> %-9s retry-after "
	       "%lld ms\n",
	       what, sluice_error_is_timeout(e) ? "true" : "false",
	       sluice_error_is_temporary(e) ? "true" : "false",
	       sluice_class_name(sluice_error_class(e)),
	       (long long)(sluice_error_retry_after_ns(e) / MS));
	sluice_error_free(e);
}

/* The external call of message @i on delivery @attempt. */
static struct sluice_error *
external_call(size_t i, unsigned attempt)
{
	switch (i) {
	case 0:
		if (attempt == 1)
			return sluice_error_new(SLUICE_CLASS_TIMEOUT, ETIMEDOUT,
						"read timed out");
		return NULL;
	case 1:
		if (attempt == 1)
			return sluice_error_from_http(503, "1",
						      (int64_t)time(NULL));
		return NULL;
	case 2:
		if (attempt <= 2)
			return sluice_error_new(
				sluice_classify_errno(ECONNRESET), ECONNRESET,
				"connection reset by peer");
		return NULL;
	case 3:
		return sluice_error_from_http(400, NULL, 0);
	default:
		return sluice_error_new(sluice_classify_errno(ECONNREFUSED),
					ECONNREFUSED, "connection refused");
	}
}

static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct sluice_bytes b = sluice_msg_body(m);
	unsigned attempt = sluice_msg_attempts(m);
	struct sluice_error *err;
	int64_t now = now_ns();
	char gap[32] = "";
	size_t i;

	(void)ud;
	(void)ctx;
	for (i = 0; i < NMSG; i++)
		if (b.len == strlen(names[i]) &&
		    memcmp(b.ptr, names[i], b.len) == 0)
			break;
	if (i == NMSG)
		return sluice_error_new(SLUICE_CLASS_PERMANENT, 0, "unknown");
	if (attempt > 1)
		snprintf(gap, sizeof(gap), " (+%lld ms)",
			 (long long)((now - last_ns[i]) / MS));
	last_ns[i] = now;
	err = external_call(i, attempt);
	printf("  %-8s attempt %u%-11s %s%s%s\n", names[i], attempt, gap,
	       err ? sluice_class_name(sluice_error_class(err)) : "ok",
	       err ? ": " : "", sluice_error_msg(err));
	return err; /* the engine takes it */
}

static int
print_dead_letters(const char *path)
{
	char line[512];
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	printf("dead-letter file:\n");
	while (fgets(line, sizeof(line), f)) {
		/* Skip the "time" and "source" fields to keep lines short. */
		const char *id = strstr(line, "\"id\"");

		line[strcspn(line, "\n")] = '\0';
		printf("  {%s\n", id ? id : line);
	}
	fclose(f);
	return 0;
}

int
main(void)
{
	char path[] = "/tmp/sluice-dlq-XXXXXX";
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_engine_stats st;
	struct sluice_engine *e = NULL;
	struct sluice_queue *q = NULL;
	struct sluice_dlq dlq = { NULL, NULL };
	int fd, rc = 1;
	size_t i;

	printf("lesson 4: errors that know whether to retry\n");
	show("new(TIMEOUT, \"read timed out\")",
	     sluice_error_new(SLUICE_CLASS_TIMEOUT, ETIMEDOUT,
			      "read timed out"));
	show("errno ECONNRESET",
	     sluice_error_new(sluice_classify_errno(ECONNRESET), ECONNRESET,
			      "reset"));
	show("errno EACCES",
	     sluice_error_new(sluice_classify_errno(EACCES), EACCES, "denied"));
	show("HTTP 503, Retry-After: 1",
	     sluice_error_from_http(503, "1", (int64_t)time(NULL)));
	show("HTTP 404", sluice_error_from_http(404, NULL, 0));

	fd = mkstemp(path);
	if (fd < 0)
		return 1;
	close(fd);
	if (sluice_dlq_file_open(path, false, &dlq) != 0)
		goto out;
	sluice_queue_config_init(&qc);
	if (sluice_queue_new(&qc, &q) != 0)
		goto out;
	sluice_engine_config_init(&cfg);
	cfg.workers = 2;
	cfg.timeout_ns = 2 * SLUICE_NS_PER_S;
	cfg.retry.min_ns = 10 * MS;
	cfg.retry.max_ns = 150 * MS;
	cfg.retry.factor = 2.0;
	cfg.retry.jitter = SLUICE_JITTER_NONE; /* readable delays */
	cfg.retry.max_attempts = 3;
	if (sluice_engine_new(&cfg, sluice_queue_source(q),
			      (struct sluice_handler){ handle, NULL },
			      (struct sluice_batch_handler){ NULL, NULL }, &dlq,
			      &e) != 0 ||
	    sluice_engine_start(e) != 0)
		goto out;
	printf("the engine: backoff 10 ms x2 up to 150 ms, 3 attempts\n");
	for (i = 0; i < NMSG; i++)
		if (sluice_queue_publish(q, NULL, names[i], strlen(names[i]),
					 SLUICE_FOREVER) != 0)
			goto out;
	sluice_queue_close(q);
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		goto out;
	sluice_engine_stats(e, &st);
	printf("stats: delivered %llu = handled %llu + requeued %llu + "
	       "dead-lettered %llu\n"
	       "       timeouts %llu, temporary %llu, permanent %llu, "
	       "exhausted %llu\n",
	       (unsigned long long)st.delivered, (unsigned long long)st.handled,
	       (unsigned long long)st.requeued,
	       (unsigned long long)st.dead_lettered,
	       (unsigned long long)st.timeouts,
	       (unsigned long long)st.temporary,
	       (unsigned long long)st.permanent,
	       (unsigned long long)st.exhausted);
	sluice_engine_free(e);
	e = NULL;
	sluice_dlq_close(&dlq);
	dlq.ops = NULL;
	if (print_dead_letters(path) == 0)
		rc = 0;
out:
	sluice_engine_free(e);
	sluice_dlq_close(&dlq);
	sluice_queue_free(q);
	unlink(path);
	return rc;
}
