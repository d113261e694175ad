/* SPDX-License-Identifier: MIT */
/*
 * file_profile.c - the seed's profiling for programs without a web server
 * (Go's runtime/pprof and runtime/trace), ported: an execution trace of a
 * hand-off between two threads (the seed's goroutine sending on a channel),
 * a CPU profile of some work on sluice's worker pool, and a heap profile
 * written at the end (pprof.WriteHeapProfile).
 *
 *   file_profile [DIR]        writes DIR/trace.json, DIR/cpu.pb.gz and
 *                             DIR/heap.pb.gz (DIR defaults to ".")
 *   go tool pprof -top DIR/cpu.pb.gz
 *   go tool pprof -sample_index=inuse_space -top DIR/heap.pb.gz
 *   open DIR/trace.json in https://ui.perfetto.dev
 *
 * Linked with sluice_heapprof (the whole-process malloc sampler), so the
 * heap profile sees this program's own malloc() calls, not only sluice's.
 * The sluice CLI gives the same with --cpuprofile, --memprofile, --trace.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/sluice.h>

#define MESSAGES 2000
#define BLOCKS   64
#define BLOCK    (256 * 1024)

static void *kept[BLOCKS];

/* Some arithmetic per message, so the CPU profile has something to show. */
__attribute__((noinline)) static unsigned long
crunch(const unsigned char *p, size_t len)
{
	unsigned long h = 5381;
	int round;
	size_t i;

	for (round = 0; round < 4000; round++)
		for (i = 0; i < len; i++)
			h = h * 33 + p[i];
	return h;
}

static struct sluice_error *
handle(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct sluice_bytes b = sluice_msg_body(m);
	unsigned long *sum = ud;

	(void)ctx;
	__atomic_fetch_add(sum, crunch(b.ptr, b.len), __ATOMIC_RELAXED);
	return NULL;
}

/* 16 MiB kept live, so the heap profile has something to show. */
__attribute__((noinline)) static int
keep_buffers(void)
{
	int i;

	for (i = 0; i < BLOCKS; i++) {
		kept[i] = malloc(BLOCK);
		if (!kept[i])
			return -1;
		memset(kept[i], i, BLOCK);
	}
	return 0;
}

static int
run_engine(unsigned long *sum)
{
	struct sluice_queue_config qc;
	struct sluice_engine_config cfg;
	struct sluice_handler h = { handle, sum };
	struct sluice_batch_handler none = { NULL, NULL };
	struct sluice_engine *e;
	struct sluice_queue *q;
	char body[32];
	int i, n;

	sluice_queue_config_init(&qc);
	sluice_engine_config_init(&cfg);
	cfg.workers = 2;
	if (sluice_queue_new(&qc, &q) != 0 ||
	    sluice_engine_new(&cfg, sluice_queue_source(q), h, none, NULL,
			      &e) != 0 ||
	    sluice_engine_start(e) != 0)
		return -1;
	for (i = 0; i < MESSAGES; i++) {
		n = snprintf(body, sizeof(body), "message %d", i);
		if (sluice_queue_publish(q, NULL, body, (size_t)n,
					 SLUICE_FOREVER) != 0)
			return -1;
	}
	sluice_queue_close(q);
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		return -1;
	sluice_engine_free(e);
	sluice_queue_free(q);
	return 0;
}

int
main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : ".";
	char trace_path[4096], cpu_path[4096], heap_path[4096], err[160];
	unsigned long sum = 0;
	int i, rc;

	snprintf(trace_path, sizeof(trace_path), "%s/trace.json", dir);
	snprintf(cpu_path, sizeof(cpu_path), "%s/cpu.pb.gz", dir);
	snprintf(heap_path, sizeof(heap_path), "%s/heap.pb.gz", dir);

	/* trace.Start(f) ... defer trace.Stop() */
	if (sluice_trace_start(NULL) != 0)
		return 1;
	/* pprof.StartCPUProfile(f) ... defer pprof.StopCPUProfile() */
	if (sluice_cpu_profile_start(100, err, sizeof(err)) != 0) {
		fprintf(stderr, "file_profile: %s\n", err);
		return 1;
	}

	if (keep_buffers() != 0 || run_engine(&sum) != 0) {
		fprintf(stderr, "file_profile: the work failed\n");
		return 1;
	}

	rc = sluice_cpu_profile_stop_path(SLUICE_PROFILE_PPROF, cpu_path);
	if (rc == 0) {
		(void)sluice_trace_stop();
		rc = sluice_trace_write_path(trace_path, SLUICE_TRACE_JSON);
	}
	/* pprof.WriteHeapProfile(f) */
	if (rc == 0)
		rc = sluice_profile_write_path(SLUICE_PROFILE_HEAP,
					       SLUICE_PROFILE_PPROF, heap_path);
	if (rc != 0) {
		fprintf(stderr, "file_profile: writing the profiles: %s\n",
			sluice_strerror(rc));
		return 1;
	}
	printf("checksum %lu\nwrote %s, %s, %s\n", sum, trace_path, cpu_path,
	       heap_path);
	for (i = 0; i < BLOCKS; i++)
		free(kept[i]);
	return 0;
}
