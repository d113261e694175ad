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

/* Sum of the folded lines whose leaf frame is @leaf (or, with @any, that
 * have @leaf anywhere in the stack). */
static int64_t
folded_sum(const char *text, const char *leaf, int any)
{
	size_t ll = strlen(leaf);
	const char *line = text, *nl, *sp, *f;
	int64_t sum = 0;

	for (; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		CHECK(nl != NULL);
		sp = nl;
		while (sp > line && sp[-1] != ' ')
			sp--;
		CHECK(sp > line);
		/* the leaf runs from the last ';' (or the start) to sp-1 */
		for (f = sp - 1; f > line && f[-1] != ';'; f--)
			;
		if ((size_t)(sp - 1 - f) == ll && memcmp(f, leaf, ll) == 0) {
			sum += strtoll(sp, NULL, 10);
			continue;
		}
		if (any) {
			for (f = line; f + ll <= sp; f++)
				if (memcmp(f, leaf, ll) == 0 &&
				    (f == line || f[-1] == ';') &&
				    (f[ll] == ';' || f[ll] == ' ')) {
					sum += strtoll(sp, NULL, 10);
					break;
				}
		}
	}
	return sum;
}

static int64_t
within(int64_t got, int64_t want)
{
	fprintf(stderr, "    estimate %lld, truth %lld\n", (long long)got,
		(long long)want);
	return got >= want * 7 / 10 && got <= want * 13 / 10;
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
	CHECK(within(folded_sum(t, "alloc_buffers", 0), (int64_t)NBUF * BUFSZ));
	/* Freed blocks leave the in-use view (a few may stay unsampled
	 * noise from other sites, never messages). */
	CHECK_EQ(folded_sum(t, "alloc_messages", 0), 0);
	sluice_profile_free(t);

	/* "allocs" defaults to alloc_space. */
	t = encode(SLUICE_PROFILE_ALLOCS, NULL, SLUICE_PROFILE_FOLDED, NULL);
	CHECK(within(folded_sum(t, "alloc_buffers", 0), (int64_t)NBUF * BUFSZ));
	CHECK(within(folded_sum(t, "alloc_messages", 0),
		     (int64_t)NMSG * MSGSZ));
	CHECK_GT(folded_sum(t, "alloc_buffers", 0),
		 folded_sum(t, "alloc_messages", 0));
	sluice_profile_free(t);

	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "inuse_objects");
	CHECK(within(folded_sum(t, "alloc_buffers", 0), NBUF));
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

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Run @argv with HOME and GOCACHE in @dir; its stdout into @out. */
static int
run_capture(char *const argv[], const char *dir, char *out, size_t size)
{
	char home[PATH_MAX], cache[PATH_MAX];
	size_t got = 0;
	int fds[2], st;
	ssize_t n;
	pid_t pid;

	snprintf(home, sizeof(home), "%s", dir);
	snprintf(cache, sizeof(cache), "%s/gocache", dir);
	CHECK_OK(pipe(fds));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		setenv("HOME", home, 1);
		setenv("GOCACHE", cache, 1);
		setenv("GOFLAGS", "-mod=mod", 1);
		execvp(argv[0], argv);
		_exit(127);
	}
	close(fds[1]);
	while ((n = read(fds[0], out + got, size - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(fds[0]);
	while (waitpid(pid, &st, 0) < 0)
		CHECK_EQ(errno, EINTR);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void
test_go_tool_pprof(void)
{
	char dir[] = "/tmp/heapprof.XXXXXX", path[PATH_MAX];
	static char out[1 << 16];
	int rc;

	/* CI installs golang-go (scripts/deps.sh): a missing tool fails. */
	CHECK_EQ(access("/usr/bin/go", X_OK), 0);
	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/heap.pb.gz", dir);
	alloc_buffers();
	CHECK_OK(sluice_profile_write_path(SLUICE_PROFILE_HEAP,
					   SLUICE_PROFILE_PPROF, path));
	{
		char a0[] = "timeout", a1[] = "60", a2[] = "go", a3[] = "tool",
		     a4[] = "pprof", a5[] = "-sample_index=inuse_space",
		     a6[] = "-top";
		char *args[] = { a0, a1, a2, a3, a4, a5, a6, path, NULL };

		rc = run_capture(args, dir, out, sizeof(out));
	}
	if (rc != 0 || !strstr(out, "alloc_buffers"))
		fprintf(stderr, "%s\n", out);
	CHECK_EQ(rc, 0);
	CHECK(strstr(out, "Type: inuse_space") != NULL);
	CHECK(strstr(out, "alloc_buffers") != NULL);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
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

__attribute__((noinline)) static void *
keeper_site(void)
{
	void *r = sl_malloc(777);

	NOT_TAIL();
	return r;
}

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

__attribute__((noinline)) static void *
first_site(void)
{
	void *r = sl_malloc(1000);

	NOT_TAIL();
	return r;
}

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
	char *t;
	void *p, *q;

	CHECK_OK(sluice_heap_profile_set_rate(1));
	p = first_site();
	q = grow_site(p);
	CHECK(q != NULL);
	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "inuse_space");
	CHECK_EQ(folded_sum(t, "first_site", 0), 100000);
	CHECK_EQ(folded_sum(t, "grow_site", 0), 0);
	sluice_profile_free(t);
	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "inuse_objects");
	CHECK_EQ(folded_sum(t, "first_site", 0), 1);
	sluice_profile_free(t);

	/* Freed at the new address: nothing left in use. */
	sl_free(q);
	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "inuse_space");
	CHECK_EQ(folded_sum(t, "first_site", 0), 0);
	sluice_profile_free(t);

	/* An unsampled block that grows is a new allocation for realloc's
	 * caller. */
	CHECK_OK(sluice_heap_profile_set_rate(1L << 40));
	p = first_site();
	CHECK_OK(sluice_heap_profile_set_rate(1));
	q = grow_site(p);
	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "inuse_space");
	CHECK_EQ(folded_sum(t, "grow_site", 0), 100000);
	CHECK_EQ(folded_sum(t, "first_site", 0), 0);
	sluice_profile_free(t);
	sl_free(q);
}

__attribute__((noinline)) static void
before_window(void **keep)
{
	int i;

	for (i = 0; i < 50; i++)
		keep[i] = sl_malloc(100);
}

__attribute__((noinline)) static void
in_window(void **keep)
{
	int i;

	for (i = 0; i < 30; i++)
		keep[i] = sl_malloc(300);
}

/* heap?seconds=N: only what happened between the two snapshots. */
static void
test_delta(void)
{
	struct sluice_profile_snapshot *s0;
	void *a[50], *b[30];
	char *t;
	int i;

	CHECK_OK(sluice_heap_profile_set_rate(1));
	before_window(a);
	CHECK_OK(sluice_profile_snapshot(SLUICE_PROFILE_HEAP, &s0));
	in_window(b);
	for (i = 0; i < 20; i++)
		sl_free(a[i]);

	t = encode(SLUICE_PROFILE_HEAP, s0, SLUICE_PROFILE_FOLDED,
		   "alloc_objects");
	CHECK_EQ(folded_sum(t, "in_window", 0), 30);
	CHECK_EQ(folded_sum(t, "before_window", 0), 0);
	sluice_profile_free(t);
	/* In-use change: before_window's 20 frees show as negative. */
	t = encode(SLUICE_PROFILE_HEAP, s0, SLUICE_PROFILE_FOLDED,
		   "inuse_objects");
	CHECK_EQ(folded_sum(t, "in_window", 0), 30);
	CHECK_EQ(folded_sum(t, "before_window", 0), -20);
	sluice_profile_free(t);
	/* Without the base, everything. */
	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "alloc_objects");
	CHECK_EQ(folded_sum(t, "before_window", 0), 50);
	sluice_profile_free(t);
	sluice_profile_snapshot_free(s0);
	for (i = 20; i < 50; i++)
		sl_free(a[i]);
	for (i = 0; i < 30; i++)
		sl_free(b[i]);
}

__attribute__((noinline)) static void *
off_site(void)
{
	void *r = sl_malloc(5000);

	NOT_TAIL();
	return r;
}

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
	CHECK_EQ(folded_sum(t, "off_site", 0), 0);
	sluice_profile_free(t);
	CHECK_OK(sluice_heap_profile_set_rate(1));
	sl_free(p[0]);
	p[0] = off_site();
	t = encode(SLUICE_PROFILE_ALLOCS, NULL, SLUICE_PROFILE_FOLDED,
		   "alloc_objects");
	CHECK_EQ(folded_sum(t, "off_site", 0), 1);
	sluice_profile_free(t);
	for (i = 0; i < 100; i++)
		sl_free(p[i]);
}

#define NLIVE 40000

__attribute__((noinline)) static void
many_site(void **p)
{
	int i;

	for (i = 0; i < NLIVE; i++)
		p[i] = sl_malloc(16);
}

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
	CHECK_EQ(folded_sum(t, "many_site", 0), NLIVE);
	sluice_profile_free(t);
	t = encode(SLUICE_PROFILE_HEAP, NULL, SLUICE_PROFILE_FOLDED,
		   "inuse_objects");
	CHECK_LE(folded_sum(t, "many_site", 0), 32768);
	CHECK_GT(folded_sum(t, "many_site", 0), 32000);
	sluice_profile_free(t);
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
	char path[PATH_MAX + 32], dir[] = "/tmp/heapint.XXXXXX";
	static char out[1 << 20];
	char *argv[2];

	child_path(path, sizeof(path));
	CHECK(mkdtemp(dir) != NULL);
	argv[0] = path;
	argv[1] = NULL;
	CHECK_EQ(run_capture(argv, dir, out, sizeof(out)), 0);
	rmdir(dir);
	CHECK(within(folded_sum(out, "plain_alloc", 0), 4000 * 16384));
	/* sl_malloc is sampled once, by the interposer, not twice. */
	CHECK(within(folded_sum(out, "sl_alloc_site", 0), 4000 * 16384));
	/* glibc's own allocations go through it too.  glibc has no frame
	 * pointers, so strdup's callers are lost (observability.md 8). */
	CHECK_GT(folded_sum(out, "strdup", 0), 0);
#endif
}

CHECK_MAIN(test_known_pattern, test_bad_arguments, test_go_tool_pprof,
	   test_free_unsampled, test_realloc_moves_record, test_delta,
	   test_rate_zero_records_nothing, test_live_table_bounded,
	   test_interposer)
