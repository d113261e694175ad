/* SPDX-License-Identifier: MIT */
/*
 * test_heapprof.c - the sampled heap profile: estimates against a known
 * allocation pattern, the encoders (folded, debug=1 text, pprof read back
 * by `go tool pprof`), free and realloc bookkeeping, the delta profile,
 * the bounded live table, and the whole-process interposer (in the child
 * program tests/support/heap_interpose_child, found through
 * $SLUICE_HEAP_CHILD or beside this binary).
 *
 * Sampling is random, so the pattern tests allow +-30% around the truth:
 * at 512 KiB per sample, 80 MB gives ~160 samples, a standard deviation
 * near 8%.  Exact tests use rate 1 (every allocation, no scaling).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sluice/heapprof.h>

#include "check.h"
#include "folded.h"
#include "proc.h"
#include "util/alloc.h"

/* ASan and TSan own malloc: the interposer compiles to nothing there. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NO_INTERPOSER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NO_INTERPOSER 1
#endif
#endif

/* A site must not end in a tail call (gcc -O2 makes one of
 * "return sl_malloc(n);"), or its frame is gone from every stack. */
#define NOT_TAIL() __asm__ volatile("" ::: "memory")

/* Allocation sites, each its own frame in the stacks: name() returns one
 * block of @size; name(p) fills p[0..@n) with blocks of @size. */
#define MALLOC_SITE(name, size)                           \
	__attribute__((noinline)) static void *name(void) \
	{                                                 \
		void *r = sl_malloc(size);                \
                                                          \
		NOT_TAIL();                               \
		return r;                                 \
	}
#define FILL_SITE(name, n, size)                             \
	__attribute__((noinline)) static void name(void **p) \
	{                                                    \
		int i;                                       \
                                                             \
		for (i = 0; i < (n); i++)                    \
			p[i] = sl_malloc(size);              \
	}

#define NBUF  20000
#define BUFSZ 4096
#define NMSG  200000
#define MSGSZ 256

static void *bufs[NBUF];

__attribute__((noinline)) static void
alloc_buffers(void)
{
	size_t i;

	for (i = 0; i < NBUF; i++) {
		bufs[i] = sl_malloc(BUFSZ);
		CHECK(bufs[i] != NULL);
		memset(bufs[i], 1, 16);
	}
	__asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) static void
alloc_messages(void)
{
	size_t i;
	char *m;

	for (i = 0; i < NMSG; i++) {
		m = sl_malloc(MSGSZ);
		CHECK(m != NULL);
		m[0] = (char)i;
		__asm__ volatile("" : : "r"(m) : "memory");
		sl_free(m);
	}
}

static void
free_buffers(void)
{
	size_t i;

	for (i = 0; i < NBUF; i++)
		sl_free(bufs[i]);
}

/* Profile @kind now (or since @base) as @format, sample type @index. */
static char *
encode(enum sluice_profile_kind kind, struct sluice_profile_snapshot *base,
       enum sluice_profile_format format, const char *index)
{
	struct sluice_profile_snapshot *s;
	char *data = NULL;
	size_t len = 0;

	CHECK_OK(sluice_profile_snapshot(kind, &s));
	CHECK_OK(sluice_profile_encode(s, base, format, index, &data, &len));
	CHECK_EQ(strlen(data), len);
	sluice_profile_snapshot_free(s);
	return data;
}

static int64_t
within(int64_t got, int64_t want)
{
	fprintf(stderr, "    estimate %lld, truth %lld\n", (long long)got,
		(long long)want);
	return got >= want * 7 / 10 && got <= want * 13 / 10;
}

/* The @index total of the stacks whose leaf is @leaf in the heap profile
 * (since @base). */
static int64_t
heap_leaf(struct sluice_profile_snapshot *base, const char *index,
	  const char *leaf)
{
	char *t =
		encode(SLUICE_PROFILE_HEAP, base, SLUICE_PROFILE_FOLDED, index);
	int64_t v = folded_sum(t, leaf, FOLDED_LEAF, NULL);

	sluice_profile_free(t);
	return v;
}

/* The pattern at the default rate: inuse_space of alloc_buffers within
 * 30% of 80 MB; alloc_space ranks buffers over messages; messages are
 * all freed; the debug=1 text names the site. */
static void
test_known_pattern(void)
{
	char *t;

	CHECK_EQ(sluice_heap_profile_rate(), SLUICE_HEAP_PROFILE_DEFAULT_RATE);
	alloc_buffers();
	alloc_messages();

	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED, NULL);
	CHECK(within(folded_sum(t, "alloc_buffers", FOLDED_LEAF, NULL),
		     (int64_t)NBUF * BUFSZ));
	/* Freed blocks leave the in-use view (a few may stay unsampled
	 * noise from other sites, never messages). */
	CHECK_EQ(folded_sum(t, "alloc_messages", FOLDED_LEAF, NULL), 0);
	sluice_profile_free(t);

	/* "allocs" defaults to alloc_space. */
	t = encode(SLUICE_PROFILE_ALLOCS, NULL, SLUICE_PROFILE_FOLDED, NULL);
	CHECK(within(folded_sum(t, "alloc_buffers", FOLDED_LEAF, NULL),
		     (int64_t)NBUF * BUFSZ));
	CHECK(within(folded_sum(t, "alloc_messages", FOLDED_LEAF, NULL),
		     (int64_t)NMSG * MSGSZ));
	CHECK_GT(folded_sum(t, "alloc_buffers", FOLDED_LEAF, NULL),
		 folded_sum(t, "alloc_messages", FOLDED_LEAF, NULL));
	sluice_profile_free(t);

	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "inuse_objects");
	CHECK(within(folded_sum(t, "alloc_buffers", FOLDED_LEAF, NULL), NBUF));
	sluice_profile_free(t);

	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_TEXT, NULL);
	CHECK(strncmp(t, "heap profile: ", 14) == 0);
	CHECK(strstr(t, "@ heap/1048576\n") != NULL);
	CHECK(strstr(t, "\talloc_buffers\n") != NULL);
	sluice_profile_free(t);

	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_SVG, NULL);
	CHECK(strstr(t, "<svg") != NULL);
	CHECK(strstr(t, "alloc_buffers") != NULL);
	sluice_profile_free(t);
	free_buffers();
}

static void
test_bad_arguments(void)
{
	struct sluice_profile_snapshot *h, *b;
	char *data;
	size_t len;

	CHECK_EQ(sluice_heap_profile_set_rate(-1), SLUICE_EINVAL);
	CHECK_EQ(sluice_profile_snapshot(SLUICE_PROFILE_HEAP, NULL),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_profile_snapshot((enum sluice_profile_kind)9, &h),
		 SLUICE_EINVAL);
	CHECK(h == NULL);
	CHECK_OK(sluice_profile_snapshot(SLUICE_PROFILE_HEAP, &h));
	CHECK_OK(sluice_profile_snapshot(SLUICE_PROFILE_BLOCK, &b));
	CHECK_EQ(sluice_profile_encode(h, b, SLUICE_PROFILE_PPROF, NULL, &data,
				       &len),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_profile_encode(h, NULL, SLUICE_PROFILE_FOLDED, "delay",
				       &data, &len),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_profile_encode(h, NULL, SLUICE_PROFILE_TEXT_THREADS,
				       NULL, &data, &len),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_profile_encode(h, NULL, SLUICE_PROFILE_PPROF, NULL,
				       NULL, &len),
		 SLUICE_EINVAL);
	sluice_profile_snapshot_free(h);
	sluice_profile_snapshot_free(b);
	sluice_profile_snapshot_free(NULL);
}

/* ---- go tool pprof ----------------------------------------------------- */

static void
test_go_tool_pprof(void)
{
	char dir[64], path[128];
	static char out[1 << 16];
	int rc;

	/* CI installs golang-go (scripts/deps.sh): a missing tool fails. */
	CHECK_EQ(access("/usr/bin/go", X_OK), 0);
	tmpdir_make(dir, sizeof(dir), "heapprof");
	snprintf(path, sizeof(path), "%s/heap.pb.gz", dir);
	alloc_buffers();
	CHECK_OK(sluice_profile_write_path(SLUICE_PROFILE_HEAP,
					   SLUICE_PROFILE_PPROF, path));
	rc = go_pprof(dir, "-sample_index=inuse_space -top", path, out,
		      sizeof(out));
	if (rc != 0 || !strstr(out, "alloc_buffers"))
		fprintf(stderr, "%s\n", out);
	CHECK_EQ(rc, 0);
	CHECK(strstr(out, "Type: inuse_space") != NULL);
	CHECK(strstr(out, "alloc_buffers") != NULL);
	tmpdir_remove(dir);
	free_buffers();
}

/* ---- exact bookkeeping at rate 1 --------------------------------------- */

/* The "heap profile: INUSE_N: INUSE_B [ALLOC_N: ALLOC_B]" totals. */
static void
text_totals(long long v[4])
{
	char *t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_TEXT, NULL);

	CHECK_EQ(sscanf(t, "heap profile: %lld: %lld [%lld: %lld]", &v[0],
			&v[1], &v[2], &v[3]),
		 4);
	sluice_profile_free(t);
}

MALLOC_SITE(keeper_site, 777)

/* With a sampled block live, free() of unsampled pointers must leave it
 * alone, and stay cheap (a filter probe, no lock). */
static void
test_free_unsampled(void)
{
	long long v[4];
	struct timespec a, b;
	void *keep, *p;
	double secs;
	int i;

	CHECK_OK(sluice_heap_profile_set_rate(1));
	keep = keeper_site();
	CHECK_OK(sluice_heap_profile_set_rate(1L << 40));
	text_totals(v);
	CHECK_EQ(v[0], 1);
	CHECK_EQ(v[1], 777);

	clock_gettime(CLOCK_MONOTONIC, &a);
	for (i = 0; i < 200000; i++) {
		p = sl_malloc(64);
		CHECK(p != NULL);
		sl_free(p);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	secs = (double)(b.tv_sec - a.tv_sec) +
	       (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	fprintf(stderr, "    200k malloc+free pairs: %.1f ns each\n",
		secs * 1e9 / 200000);
	CHECK(secs < 5.0); /* loose: sanitizers, a shared machine */

	text_totals(v);
	CHECK_EQ(v[0], 1);
	CHECK_EQ(v[1], 777);
	sl_free(keep);
	text_totals(v);
	CHECK_EQ(v[0], 0);
	CHECK_EQ(v[1], 0);
	CHECK_EQ(v[2], 1);
	CHECK_EQ(v[3], 777);
}

MALLOC_SITE(first_site, 1000)

__attribute__((noinline)) static void *
grow_site(void *p)
{
	void *r = sl_realloc(p, 100000);

	NOT_TAIL();
	return r;
}

/* A sampled block's record follows it through realloc: in use it is one
 * object of the new size, still charged to the stack that allocated it. */
static void
test_realloc_moves_record(void)
{
	void *p, *q;

	CHECK_OK(sluice_heap_profile_set_rate(1));
	p = first_site();
	q = grow_site(p);
	CHECK(q != NULL);
	CHECK_EQ(heap_leaf(NULL, "inuse_space", "first_site"), 100000);
	CHECK_EQ(heap_leaf(NULL, "inuse_space", "grow_site"), 0);
	CHECK_EQ(heap_leaf(NULL, "inuse_objects", "first_site"), 1);

	/* Freed at the new address: nothing left in use. */
	sl_free(q);
	CHECK_EQ(heap_leaf(NULL, "inuse_space", "first_site"), 0);

	/* An unsampled block that grows is a new allocation for realloc's
	 * caller. */
	CHECK_OK(sluice_heap_profile_set_rate(1L << 40));
	p = first_site();
	CHECK_OK(sluice_heap_profile_set_rate(1));
	q = grow_site(p);
	CHECK_EQ(heap_leaf(NULL, "inuse_space", "grow_site"), 100000);
	CHECK_EQ(heap_leaf(NULL, "inuse_space", "first_site"), 0);
	sl_free(q);
}

FILL_SITE(before_window, 50, 100)

FILL_SITE(in_window, 30, 300)

/* heap?seconds=N: only what happened between the two snapshots. */
static void
test_delta(void)
{
	struct sluice_profile_snapshot *s0;
	void *a[50], *b[30];
	int i;

	CHECK_OK(sluice_heap_profile_set_rate(1));
	before_window(a);
	CHECK_OK(sluice_profile_snapshot(SLUICE_PROFILE_HEAP, &s0));
	in_window(b);
	for (i = 0; i < 20; i++)
		sl_free(a[i]);

	CHECK_EQ(heap_leaf(s0, "alloc_objects", "in_window"), 30);
	CHECK_EQ(heap_leaf(s0, "alloc_objects", "before_window"), 0);
	/* In-use change: before_window's 20 frees show as negative. */
	CHECK_EQ(heap_leaf(s0, "inuse_objects", "in_window"), 30);
	CHECK_EQ(heap_leaf(s0, "inuse_objects", "before_window"), -20);
	/* Without the base, everything. */
	CHECK_EQ(heap_leaf(NULL, "alloc_objects", "before_window"), 50);
	sluice_profile_snapshot_free(s0);
	for (i = 20; i < 50; i++)
		sl_free(a[i]);
	for (i = 0; i < 30; i++)
		sl_free(b[i]);
}

MALLOC_SITE(off_site, 5000)

static void
test_rate_zero_records_nothing(void)
{
	void *p[100];
	char *t;
	int i;

	CHECK_OK(sluice_heap_profile_set_rate(0));
	CHECK_EQ(sluice_heap_profile_rate(), 0);
	for (i = 0; i < 100; i++)
		p[i] = off_site();
	t = encode(SLUICE_PROFILE_ALLOCS, NULL, SLUICE_PROFILE_FOLDED,
		   "alloc_objects");
	CHECK_EQ(folded_sum(t, "off_site", FOLDED_LEAF, NULL), 0);
	sluice_profile_free(t);
	CHECK_OK(sluice_heap_profile_set_rate(1));
	sl_free(p[0]);
	p[0] = off_site();
	t = encode(SLUICE_PROFILE_ALLOCS, NULL, SLUICE_PROFILE_FOLDED,
		   "alloc_objects");
	CHECK_EQ(folded_sum(t, "off_site", FOLDED_LEAF, NULL), 1);
	sluice_profile_free(t);
	for (i = 0; i < 100; i++)
		sl_free(p[i]);
}

#define NLIVE 40000

FILL_SITE(many_site, NLIVE, 16)

/* Past the live table's bound, a sampled block is counted allocated and
 * freed at once, and the profile says how many. */
static void
test_live_table_bounded(void)
{
	void **p = sl_calloc(NLIVE, sizeof(*p));
	long long lost = -1;
	const char *c;
	char *t;
	int i;

	CHECK(p != NULL);
	CHECK_OK(sluice_heap_profile_set_rate(1));
	many_site(p);
	t = encode(SLUICE_PROFILE_ALLOCS, NULL, SLUICE_PROFILE_FOLDED,
		   "alloc_objects");
	CHECK_EQ(folded_sum(t, "many_site", FOLDED_LEAF, NULL), NLIVE);
	sluice_profile_free(t);
	CHECK_LE(heap_leaf(NULL, "inuse_objects", "many_site"), 32768);
	CHECK_GT(heap_leaf(NULL, "inuse_objects", "many_site"), 32000);
	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_TEXT, NULL);
	c = strstr(t, "lost to a full stack table, ");
	CHECK(c != NULL);
	CHECK_EQ(sscanf(c, "lost to a full stack table, %lld", &lost), 1);
	CHECK_GE(lost, NLIVE - 32768);
	sluice_profile_free(t);
	for (i = 0; i < NLIVE; i++)
		sl_free(p[i]);
	sl_free(p);
}

/* ---- whole process ----------------------------------------------------- */

#ifndef NO_INTERPOSER
static void
child_path(char *out, size_t size)
{
	const char *e = getenv("SLUICE_HEAP_CHILD");
	char self[PATH_MAX - 32];
	ssize_t n;
	char *slash;

	if (e && *e) {
		snprintf(out, size, "%s", e);
		return;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	CHECK(n > 0);
	self[n] = '\0';
	slash = strrchr(self, '/');
	CHECK(slash != NULL);
	*slash = '\0';
	CHECK_LT(snprintf(out, size, "%s/heap_interpose_child", self),
		 (int)size);
}
#endif

/* The child allocates 64 MiB with plain malloc() and 64 MiB with
 * sl_malloc(), keeps both, and prints its folded inuse_space profile. */
static void
test_interposer(void)
{
#ifdef NO_INTERPOSER
	fprintf(stderr, "    skipped: AddressSanitizer/ThreadSanitizer "
			"replace malloc, so the interposer is compiled out\n");
#else
	char path[PATH_MAX + 32], cmd[PATH_MAX + 64];
	static char out[1 << 20];

	child_path(path, sizeof(path));
	snprintf(cmd, sizeof(cmd), "'%s'", path);
	CHECK_EQ(run_shell(cmd, out, sizeof(out)), 0);
	CHECK(within(folded_sum(out, "plain_alloc", FOLDED_LEAF, NULL),
		     4000 * 16384));
	/* sl_malloc is sampled once, by the interposer, not twice. */
	CHECK(within(folded_sum(out, "sl_alloc_site", FOLDED_LEAF, NULL),
		     4000 * 16384));
	/* glibc's own allocations go through it too.  glibc has no frame
	 * pointers, so strdup's callers are lost (observability.md 8). */
	CHECK_GT(folded_sum(out, "strdup", FOLDED_LEAF, NULL), 0);
#endif
}

CHECK_MAIN(test_known_pattern, test_bad_arguments, test_go_tool_pprof,
	   test_free_unsampled, test_realloc_moves_record, test_delta,
	   test_rate_zero_records_nothing, test_live_table_bounded,
	   test_interposer)
