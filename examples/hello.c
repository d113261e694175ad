/* SPDX-License-Identifier: MIT */
/*
 * hello.c - the smallest complete sluice program: publish a few messages to
 * the in-process queue, consume them with 4 workers and a deadline, retry the
 * one that fails temporarily, and print the accounting.  Built by CI against
 * the installed library through `pkg-config sluice`.
 *
 *   cc hello.c $(pkg-config --cflags --libs sluice) && ./a.out
 */
#include <stdio.h>
#include <string.h>

#include <sluice/sluice.h>

static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct sluice_bytes body = sluice_msg_body(m);

	(void)ud;
	(void)ctx;
	if (body.len == 5 && memcmp(body.ptr, "flaky", 5) == 0 &&
	    sluice_msg_attempts(m) == 1)
		return sluice_error_new(SLUICE_CLASS_TEMPORARY, 0,
					"upstream busy, try again");
	printf("handled %.*s (attempt %u)\n", (int)body.len,
	       (const char *)body.ptr, sluice_msg_attempts(m));
	return NULL;
}

int
main(void)
{
	static const char *const bodies[] = { "one", "two", "flaky", "four" };
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_handler h = { handle, NULL };
	struct sluice_batch_handler none = { NULL, NULL };
	struct sluice_engine_stats st;
	struct sluice_engine *e;
	struct sluice_queue *q;
	size_t i;

	sluice_queue_config_init(&qc);
	if (sluice_queue_new(&qc, &q) != 0)
		return 1;
	sluice_engine_config_init(&cfg);
	cfg.workers = 4;
	cfg.timeout_ns = 2 * SLUICE_NS_PER_S;
	cfg.retry.min_ns = 10 * SLUICE_NS_PER_MS; /* a quick retry */
	if (sluice_engine_new(&cfg, sluice_queue_source(q), h, none, NULL,
			      &e) != 0 ||
	    sluice_engine_start(e) != 0)
		return 1;
	for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
		if (sluice_queue_publish(q, NULL, bodies[i], strlen(bodies[i]),
					 SLUICE_FOREVER) != 0)
			return 1;
	sluice_queue_close(q); /* the engine stops once all are settled */
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		return 1;
	sluice_engine_stats(e, &st);
	printf("delivered %llu = handled %llu + requeued %llu + "
	       "dead-lettered %llu\n",
	       (unsigned long long)st.delivered, (unsigned long long)st.handled,
	       (unsigned long long)st.requeued,
	       (unsigned long long)st.dead_lettered);
	sluice_engine_free(e);
	sluice_queue_free(q);
	return st.handled == 4 ? 0 : 1;
}
