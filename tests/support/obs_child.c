/* SPDX-License-Identifier: MIT */
/*
 * obs_child.c - a busy sluice process for the observability end-to-end
 * tests (tests/e2e/test_obs.sh): what the standard tools (go tool pprof,
 * protoc, promtool, Prometheus) are pointed at.
 *
 * It runs an engine over the in-process queue whose handler burns CPU in
 * busy_checksum(), a producer thread that keeps the queue full, and holds
 * a known amount of memory allocated by alloc_known() through sluice's
 * allocator, then serves the debug endpoints on 127.0.0.1 (an ephemeral
 * port).  On stdout, once everything runs:
 *
 *   port PORT            the debug server
 *   busy 0xADDR          an address inside busy_checksum (for symbol)
 *   known BYTES          what alloc_known() holds live
 *
 * It stops cleanly when stdin reaches EOF (so a dying test leaves no
 * orphan), and prints "stopped" last.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "obs/threads.h"
#include "util/alloc.h"

#define KNOWN_BLOCKS 2048
#define KNOWN_SIZE   8192

static atomic_bool stopping;
static void *known[KNOWN_BLOCKS];
static _Atomic uint64_t sink; /* keeps busy_checksum's result alive */

/* About 100 us of arithmetic per message. */
__attribute__((noinline)) static uint64_t
busy_checksum(const unsigned char *p, size_t len)
{
	uint64_t h = 1469598103934665603ull;
	int round;
	size_t i;

	for (round = 0; round < 2000; round++)
		for (i = 0; i < len; i++)
			h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

__attribute__((noinline)) static void
alloc_known(void)
{
	size_t i;

	for (i = 0; i < KNOWN_BLOCKS; i++) {
		known[i] = sl_malloc(KNOWN_SIZE);
		if (!known[i])
			return;
		memset(known[i], (int)i, KNOWN_SIZE);
	}
}

static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct sluice_bytes b = sluice_msg_body(m);

	(void)ud;
	(void)ctx;
	atomic_fetch_add_explicit(&sink, busy_checksum(b.ptr, b.len),
				  memory_order_relaxed);
	return NULL;
}

static void *
produce(void *arg)
{
	struct sluice_queue *q = arg;
	static const char body[] = "a message of moderate length for hashing";

	while (!atomic_load(&stopping))
		if (sluice_queue_publish(q, NULL, body, sizeof(body) - 1,
					 SLUICE_FOREVER) != 0)
			break;
	return NULL;
}

int
main(void)
{
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_handler h = { handle, NULL };
	struct sluice_batch_handler none = { NULL, NULL };
	struct sluice_metrics *metrics = NULL;
	struct sluice_debug_http *dbg = NULL;
	struct sluice_engine *e = NULL;
	struct sluice_queue *q = NULL;
	pthread_t producer;
	char err[256], c;
	size_t i;

	/* One sample per 64 KiB: about 256 samples of the known 16 MiB, so
	 * the test's +-30 % is five standard deviations (at Go's 512 KiB it
	 * would be 32 samples and under two). */
	(void)sluice_heap_profile_set_rate(64 * 1024);
	sluice_block_profile_set_rate(1);
	(void)sluice_mutex_profile_set_fraction(1);
	alloc_known();
	sluice_queue_config_init(&qc);
	qc.capacity = 256;
	sluice_engine_config_init(&cfg);
	cfg.workers = 2;
	if (sluice_queue_new(&qc, &q) != 0 ||
	    sluice_engine_new(&cfg, sluice_queue_source(q), h, none, NULL,
			      &e) != 0 ||
	    sluice_metrics_new(&metrics) != 0 ||
	    sluice_engine_export_metrics(e, metrics) != 0 ||
	    sluice_engine_start(e) != 0) {
		fprintf(stderr, "obs_child: cannot start the engine\n");
		return 1;
	}
	if (sluice_debug_http_start("127.0.0.1:0", metrics, &dbg, err,
				    sizeof(err)) != 0) {
		fprintf(stderr, "obs_child: %s\n", err);
		return 1;
	}
	sluice_debug_http_set_engine(dbg, e);
	if (sl_thread_create(&producer, "producer", produce, q) != 0)
		return 1;
	printf("port %u\nbusy %#lx\nknown %lu\n",
	       (unsigned)sluice_debug_http_port(dbg),
	       (unsigned long)((uintptr_t)busy_checksum + 16),
	       (unsigned long)KNOWN_BLOCKS * KNOWN_SIZE);
	fflush(stdout);

	while (read(0, &c, 1) > 0)
		;
	atomic_store(&stopping, true);
	sluice_queue_close(q);
	pthread_join(producer, NULL);
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		return 1;
	sluice_debug_http_stop(dbg);
	sluice_engine_free(e);
	sluice_metrics_free(metrics);
	sluice_queue_free(q);
	for (i = 0; i < KNOWN_BLOCKS; i++)
		sl_free(known[i]);
	printf("stopped\n");
	return 0;
}
