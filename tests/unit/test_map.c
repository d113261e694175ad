/* SPDX-License-Identifier: MIT */
/*
 * test_map.c - unit tests for the sharded map (src/core/map.c).
 *
 * Time-dependent cases run on a virtual clock, so expiry is exact to the
 * nanosecond and nothing sleeps.  The concurrency case checks invariants
 * that only hold if every operation is atomic under its shard lock; run it
 * under TSan and ASan.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <sluice/clock.h>
#include <sluice/map.h>

#include "check.h"
#include "util/alloc.h"

/*
 * Forked cases end with _exit(), which skips LeakSanitizer's check at exit,
 * so under ASan every case asks for a leak check itself when it is done.
 */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_NO_LEAKS() CHECK(__lsan_do_recoverable_leak_check() == 0)
#else
#define CHECK_NO_LEAKS() ((void)0)
#endif

static struct sluice_clock *
vclock(int64_t start)
{
	struct sluice_clock *c = NULL;

	CHECK_OK(sluice_clock_virtual_new(start, &c));
	return c;
}

static struct sluice_map *
map_new(unsigned nshards, size_t cap, const struct sluice_clock *c)
{
	struct sluice_map *m = NULL;

	CHECK_OK(sluice_map_new(nshards, cap, c, &m));
	CHECK(m != NULL);
	return m;
}

static int
puts_(struct sluice_map *m, const char *k, const char *v, int64_t ttl)
{
	return sluice_map_put(m, k, strlen(k), v, strlen(v), ttl);
}

/* Get @k as a NUL-terminated string into @buf (size 64); return the code. */
static int
gets_(struct sluice_map *m, const char *k, char *buf)
{
	size_t len = 63;
	int err;

	memset(buf, 0, 64);
	err = sluice_map_get(m, k, strlen(k), buf, &len);
	if (err == 0)
		CHECK_LE(len, 63);
	return err;
}

static void
test_basic(void)
{
	struct sluice_map *m = map_new(0, 0, sluice_clock_monotonic());
	char buf[64];

	CHECK_EQ(sluice_map_len(m), 0);
	CHECK(!sluice_map_contains(m, "a", 1));
	CHECK_EQ(gets_(m, "a", buf), SLUICE_ENOENT);
	CHECK_OK(puts_(m, "a", "one", 0));
	CHECK_OK(puts_(m, "b", "two", 0));
	CHECK_EQ(sluice_map_len(m), 2);
	CHECK(sluice_map_contains(m, "a", 1));
	CHECK_OK(gets_(m, "a", buf));
	CHECK_STREQ(buf, "one");
	CHECK_OK(gets_(m, "b", buf));
	CHECK_STREQ(buf, "two");
	CHECK_OK(sluice_map_del(m, "a", 1));
	CHECK_EQ(sluice_map_del(m, "a", 1), SLUICE_ENOENT);
	CHECK(!sluice_map_contains(m, "a", 1));
	CHECK_EQ(gets_(m, "a", buf), SLUICE_ENOENT);
	CHECK_EQ(sluice_map_len(m), 1);
	CHECK_OK(gets_(m, "b", buf));
	CHECK_STREQ(buf, "two");
	sluice_map_free(m);
	sluice_map_free(NULL);
	CHECK_NO_LEAKS();
}

static void
test_bad_args(void)
{
	struct sluice_map *m = NULL;

	CHECK_EQ(sluice_map_new(0, 0, NULL, NULL), SLUICE_EINVAL);
	CHECK_EQ(sluice_map_new((1u << 16) + 1, 0, NULL, &m), SLUICE_EINVAL);
	CHECK(m == NULL);
	m = map_new(3, 0, NULL);
	CHECK_EQ(sluice_map_put(m, NULL, 1, "v", 1, 0), SLUICE_EINVAL);
	CHECK_EQ(sluice_map_put(m, "k", 1, NULL, 1, 0), SLUICE_EINVAL);
	CHECK_EQ(sluice_map_put(m, "k", 1, "v", 1, -1), SLUICE_EINVAL);
	CHECK_EQ(sluice_map_len(m), 0);
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

static void
test_replace(void)
{
	struct sluice_map *m = map_new(4, 0, NULL);
	char buf[64];

	CHECK_OK(puts_(m, "k", "first", 0));
	CHECK_OK(puts_(m, "k", "a longer second value", 0));
	CHECK_EQ(sluice_map_len(m), 1);
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "a longer second value");
	/* Same length: may be overwritten in place; must read back whole. */
	CHECK_OK(puts_(m, "k", "A LONGER SECOND VALUE", 0));
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "A LONGER SECOND VALUE");
	CHECK_OK(puts_(m, "k", "s", 0));
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "s");
	CHECK_EQ(sluice_map_len(m), 1);
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

static void
test_binary_keys(void)
{
	struct sluice_map *m = map_new(2, 0, NULL);
	const char k1[] = { 'a', 0, 'b' }, k2[] = { 'a', 0, 'c' };
	const char v1[] = { 0, 1, 0, 2 }, v2[] = { 0, 0 };
	char buf[8];
	size_t len;

	CHECK_OK(sluice_map_put(m, k1, 3, v1, 4, 0));
	CHECK_OK(sluice_map_put(m, k2, 3, v2, 2, 0));
	CHECK_OK(sluice_map_put(m, "a", 1, "x", 1, 0));
	/* The zero-length key is a key like any other. */
	CHECK_OK(sluice_map_put(m, "", 0, "empty", 5, 0));
	/* A zero-length value is present, not absent. */
	CHECK_OK(sluice_map_put(m, "z", 1, NULL, 0, 0));
	CHECK_EQ(sluice_map_len(m), 5);

	len = sizeof(buf);
	CHECK_OK(sluice_map_get(m, k1, 3, buf, &len));
	CHECK_EQ(len, 4);
	CHECK_MEMEQ(buf, v1, 4);
	len = sizeof(buf);
	CHECK_OK(sluice_map_get(m, k2, 3, buf, &len));
	CHECK_EQ(len, 2);
	CHECK_MEMEQ(buf, v2, 2);
	len = sizeof(buf);
	CHECK_OK(sluice_map_get(m, "a", 1, buf, &len));
	CHECK_EQ(len, 1);
	CHECK_EQ(buf[0], 'x');
	len = sizeof(buf);
	CHECK_OK(sluice_map_get(m, NULL, 0, buf, &len));
	CHECK_EQ(len, 5);
	CHECK_MEMEQ(buf, "empty", 5);
	len = sizeof(buf);
	CHECK_OK(sluice_map_get(m, "z", 1, buf, &len));
	CHECK_EQ(len, 0);
	CHECK(sluice_map_contains(m, "z", 1));
	/* A key that is a prefix of another is a different key. */
	CHECK(!sluice_map_contains(m, k1, 2));
	CHECK_OK(sluice_map_del(m, "", 0));
	CHECK(!sluice_map_contains(m, "", 0));
	CHECK(sluice_map_contains(m, k1, 3));
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

static void
test_get_small_buffer(void)
{
	struct sluice_map *m = map_new(1, 0, NULL);
	char buf[16];
	size_t len;

	CHECK_OK(puts_(m, "k", "hello world", 0));
	memset(buf, '#', sizeof(buf));
	len = 5;
	CHECK_OK(sluice_map_get(m, "k", 1, buf, &len));
	CHECK_EQ(len, 11);
	CHECK_MEMEQ(buf, "hello#", 6); /* prefix only, nothing past it */

	len = 0;
	CHECK_OK(sluice_map_get(m, "k", 1, NULL, &len));
	CHECK_EQ(len, 11);

	len = 7;
	CHECK_EQ(sluice_map_get(m, "nope", 4, buf, &len), SLUICE_ENOENT);
	CHECK_EQ(len, 7);
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

static void
test_put_if_absent(void)
{
	struct sluice_map *m = map_new(0, 0, NULL);
	char buf[64];

	CHECK_OK(sluice_map_put_if_absent(m, "k", 1, "v1", 2, 0));
	CHECK_EQ(sluice_map_put_if_absent(m, "k", 1, "v2", 2, 0),
		 SLUICE_EEXIST);
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "v1");
	CHECK_EQ(sluice_map_len(m), 1);
	CHECK_OK(sluice_map_del(m, "k", 1));
	CHECK_OK(sluice_map_put_if_absent(m, "k", 1, "v3", 2, 0));
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "v3");
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

static void
test_cas(void)
{
	struct sluice_map *m = map_new(0, 0, NULL);
	char buf[64];

	CHECK_EQ(sluice_map_cas(m, "k", 1, "a", 1, "b", 1, 0), SLUICE_ENOENT);
	CHECK(!sluice_map_contains(m, "k", 1));
	CHECK_OK(puts_(m, "k", "abc", 0));
	CHECK_EQ(sluice_map_cas(m, "k", 1, "abd", 3, "x", 1, 0), SLUICE_EBUSY);
	/* A prefix of the value is not equal to it. */
	CHECK_EQ(sluice_map_cas(m, "k", 1, "ab", 2, "x", 1, 0), SLUICE_EBUSY);
	CHECK_EQ(sluice_map_cas(m, "k", 1, "abcd", 4, "x", 1, 0), SLUICE_EBUSY);
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "abc");
	CHECK_OK(sluice_map_cas(m, "k", 1, "abc", 3, "xyz", 3, 0));
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "xyz");
	CHECK_OK(sluice_map_cas(m, "k", 1, "xyz", 3, "longer", 6, 0));
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "longer");
	CHECK_EQ(sluice_map_cas(m, "k", 1, "xyz", 3, "q", 1, 0), SLUICE_EBUSY);
	CHECK_EQ(sluice_map_len(m), 1);
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

static void
test_ttl_expiry_exact(void)
{
	struct sluice_clock *c = vclock(1000);
	struct sluice_map *m = map_new(4, 0, c);
	char buf[64];

	CHECK_OK(puts_(m, "k", "v", 100));
	CHECK_OK(puts_(m, "forever", "f", SLUICE_MAP_NO_TTL));
	CHECK_OK(sluice_clock_advance(c, 99));
	CHECK(sluice_map_contains(m, "k", 1));
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "v");
	CHECK_EQ(sluice_map_len(m), 2);
	CHECK_EQ(sluice_map_sweep(m), 0);
	CHECK_EQ(sluice_map_put_if_absent(m, "k", 1, "w", 1, 0), SLUICE_EEXIST);

	CHECK_OK(sluice_clock_advance(c, 1)); /* exactly at expiry */
	CHECK_EQ(sluice_map_len(m), 1);
	CHECK(!sluice_map_contains(m, "k", 1));
	CHECK_EQ(gets_(m, "k", buf), SLUICE_ENOENT);
	CHECK_EQ(sluice_map_cas(m, "k", 1, "v", 1, "x", 1, 0), SLUICE_ENOENT);
	CHECK_EQ(sluice_map_del(m, "k", 1), SLUICE_ENOENT);
	CHECK_OK(sluice_map_put_if_absent(m, "k", 1, "w", 1, 50));
	CHECK_OK(gets_(m, "k", buf));
	CHECK_STREQ(buf, "w");
	CHECK_EQ(sluice_map_len(m), 2);

	/* The new TTL counts from the time of the put (1100). */
	CHECK_OK(sluice_clock_advance(c, 49));
	CHECK(sluice_map_contains(m, "k", 1));
	CHECK_OK(sluice_clock_advance(c, 1));
	CHECK(!sluice_map_contains(m, "k", 1));

	/* A put without TTL over an entry with one makes it permanent. */
	CHECK_OK(puts_(m, "p", "1", 10));
	CHECK_OK(puts_(m, "p", "2", SLUICE_MAP_NO_TTL));
	CHECK_OK(sluice_clock_advance(c, 1000000));
	CHECK_OK(gets_(m, "p", buf));
	CHECK_STREQ(buf, "2");
	CHECK_OK(gets_(m, "forever", buf));
	CHECK_STREQ(buf, "f");
	/* cas sets the TTL it is given. */
	CHECK_OK(sluice_map_cas(m, "p", 1, "2", 1, "3", 1, 5));
	CHECK_OK(sluice_clock_advance(c, 5));
	CHECK(!sluice_map_contains(m, "p", 1));
	sluice_map_free(m);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

static void
test_ttl_sweep_count(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_map *m = map_new(8, 0, c);
	char key[32];
	int i;

	for (i = 0; i < 10; i++) {
		snprintf(key, sizeof(key), "short%d", i);
		CHECK_OK(puts_(m, key, "v", 50));
	}
	for (i = 0; i < 5; i++) {
		snprintf(key, sizeof(key), "long%d", i);
		CHECK_OK(puts_(m, key, "v", 200));
	}
	for (i = 0; i < 3; i++) {
		snprintf(key, sizeof(key), "none%d", i);
		CHECK_OK(puts_(m, key, "v", 0));
	}
	CHECK_EQ(sluice_map_len(m), 18);
	CHECK_EQ(sluice_map_sweep(m), 0);
	CHECK_OK(sluice_clock_advance(c, 50));
	CHECK_EQ(sluice_map_len(m), 8);
	/* Touching an expired key frees it at once, so sweep finds one less. */
	CHECK(!sluice_map_contains(m, "short0", 6));
	CHECK_EQ(sluice_map_sweep(m), 9);
	CHECK_EQ(sluice_map_sweep(m), 0);
	CHECK_EQ(sluice_map_len(m), 8);
	CHECK_OK(sluice_clock_advance(c, 150));
	CHECK_EQ(sluice_map_sweep(m), 5);
	CHECK_EQ(sluice_map_len(m), 3);
	sluice_map_free(m);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

static void
test_max_entries(void)
{
	struct sluice_map *m = map_new(8, 4, NULL);
	char key[16];
	int i;

	for (i = 0; i < 4; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		CHECK_OK(puts_(m, key, "v", 0));
	}
	CHECK_EQ(puts_(m, "k4", "v", 0), SLUICE_ENOMEM);
	CHECK_EQ(sluice_map_put_if_absent(m, "k4", 2, "v", 1, 0),
		 SLUICE_ENOMEM);
	CHECK(!sluice_map_contains(m, "k4", 2));
	/* Replacing is not a new entry, at any length. */
	CHECK_OK(puts_(m, "k0", "a different length", 0));
	CHECK_OK(sluice_map_cas(m, "k1", 2, "v", 1, "ww", 2, 0));
	CHECK_EQ(sluice_map_len(m), 4);
	CHECK_OK(sluice_map_del(m, "k2", 2));
	CHECK_OK(puts_(m, "k4", "v", 0));
	CHECK_EQ(puts_(m, "k5", "v", 0), SLUICE_ENOMEM);
	CHECK_EQ(sluice_map_len(m), 4);
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

static void
test_max_entries_reclaims_expired(void)
{
	struct sluice_clock *c = vclock(0);
	/* One shard, so the inserting shard holds the expired entries. */
	struct sluice_map *m = map_new(1, 3, c);

	CHECK_OK(puts_(m, "t1", "v", 10));
	CHECK_OK(puts_(m, "t2", "v", 20));
	CHECK_OK(puts_(m, "p", "v", 0));
	CHECK_EQ(puts_(m, "n1", "v", 0), SLUICE_ENOMEM);
	CHECK_OK(sluice_clock_advance(c, 10));
	/* t1 is expired: the insert at the cap reclaims it. */
	CHECK_OK(puts_(m, "n1", "v", 0));
	CHECK_EQ(puts_(m, "n2", "v", 0), SLUICE_ENOMEM);
	CHECK_EQ(sluice_map_len(m), 3);
	CHECK_OK(sluice_clock_advance(c, 10));
	CHECK_OK(sluice_map_put_if_absent(m, "n2", 2, "v", 1, 0));
	CHECK_EQ(sluice_map_len(m), 3);
	CHECK_EQ(sluice_map_sweep(m), 0); /* nothing left to reclaim */
	CHECK(sluice_map_contains(m, "p", 1));
	CHECK(sluice_map_contains(m, "n1", 2));
	CHECK(sluice_map_contains(m, "n2", 2));
	sluice_map_free(m);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

static void
test_growth(void)
{
	struct sluice_map *m = map_new(4, 0, NULL);
	char key[32];
	uint32_t v;
	size_t len;
	int i, n = 20000;

	for (i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "key-%d", i);
		v = (uint32_t)i * 2654435761u;
		CHECK_OK(sluice_map_put(m, key, strlen(key), &v, sizeof(v), 0));
	}
	CHECK_EQ(sluice_map_len(m), (size_t)n);
	for (i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "key-%d", i);
		len = sizeof(v);
		CHECK_OK(sluice_map_get(m, key, strlen(key), &v, &len));
		CHECK_EQ(len, sizeof(v));
		CHECK_EQ(v, (uint32_t)i * 2654435761u);
	}
	for (i = 0; i < n; i += 2) {
		snprintf(key, sizeof(key), "key-%d", i);
		CHECK_OK(sluice_map_del(m, key, strlen(key)));
	}
	CHECK_EQ(sluice_map_len(m), (size_t)n / 2);
	for (i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "key-%d", i);
		CHECK_EQ(sluice_map_contains(m, key, strlen(key)), i % 2 == 1);
	}
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

#define NVISIT 1000

struct visit_state {
	unsigned char seen[NVISIT];
	int calls;
	int stop_after; /* 0 = never */
	bool bad;
	struct sluice_map *del_from; /* delete each visited key, if set */
};

static bool
visit_fn(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct visit_state *st = ud;
	uint32_t k, v;

	st->calls++;
	if (klen != sizeof(k) || vlen != sizeof(v)) {
		st->bad = true;
		return false;
	}
	memcpy(&k, key, sizeof(k));
	memcpy(&v, val, sizeof(v));
	if (k >= NVISIT || v != k * 3 + 1) {
		st->bad = true;
		return false;
	}
	st->seen[k]++;
	/* No lock is held here, so calling into the map must not deadlock. */
	if (st->del_from && sluice_map_del(st->del_from, key, klen) != 0)
		st->bad = true;
	return st->stop_after == 0 || st->calls < st->stop_after;
}

static void
test_foreach(void)
{
	struct sluice_clock *c = vclock(0);
	struct sluice_map *m = map_new(8, 0, c);
	struct visit_state st;
	uint32_t k, v;
	int i;

	for (k = 0; k < NVISIT; k++) {
		v = k * 3 + 1;
		CHECK_OK(sluice_map_put(m, &k, sizeof(k), &v, sizeof(v), 0));
	}
	/* Expired entries are not visited. */
	for (k = NVISIT; k < NVISIT + 50; k++)
		CHECK_OK(sluice_map_put(m, &k, sizeof(k), &k, sizeof(k), 5));
	CHECK_OK(sluice_clock_advance(c, 5));

	memset(&st, 0, sizeof(st));
	CHECK_OK(sluice_map_foreach(m, visit_fn, &st));
	CHECK(!st.bad);
	CHECK_EQ(st.calls, NVISIT);
	for (i = 0; i < NVISIT; i++)
		CHECK_EQ(st.seen[i], 1);

	memset(&st, 0, sizeof(st));
	st.stop_after = 10;
	CHECK_OK(sluice_map_foreach(m, visit_fn, &st));
	CHECK(!st.bad);
	CHECK_EQ(st.calls, 10);

	memset(&st, 0, sizeof(st));
	st.del_from = m;
	CHECK_OK(sluice_map_foreach(m, visit_fn, &st));
	CHECK(!st.bad);
	CHECK_EQ(st.calls, NVISIT);
	CHECK_EQ(sluice_map_len(m), 0);
	sluice_map_free(m);
	sluice_clock_free(c);
	CHECK_NO_LEAKS();
}

static void
test_alloc_failure(void)
{
	struct sluice_map *m = NULL;
	struct visit_state st;
	unsigned long n;
	char buf[64], key[32];
	uint32_t k, v;
	int err, i;

	/* map_new fails cleanly at every allocation (ASan checks leaks). */
	for (n = 1;; n++) {
		sl_alloc_fail_after(n, 0);
		err = sluice_map_new(4, 3, NULL, &m);
		sl_alloc_fail_after(0, 0);
		if (err == 0)
			break;
		CHECK_EQ(err, SLUICE_ENOMEM);
		CHECK(m == NULL);
	}
	CHECK_GT(n, 1);

	CHECK_OK(puts_(m, "a", "1", 0));
	sl_alloc_fail_after(1, 1);
	CHECK_EQ(puts_(m, "b", "2", 0), SLUICE_ENOMEM);
	CHECK_EQ(sluice_map_put_if_absent(m, "b", 1, "2", 1, 0), SLUICE_ENOMEM);
	CHECK_EQ(puts_(m, "a", "longer", 0), SLUICE_ENOMEM);
	sl_alloc_fail_after(0, 0);
	CHECK(!sluice_map_contains(m, "b", 1));
	CHECK_OK(gets_(m, "a", buf));
	CHECK_STREQ(buf, "1");
	CHECK_EQ(sluice_map_len(m), 1);
	/* The failed inserts gave back their share of the cap (3). */
	CHECK_OK(puts_(m, "b", "2", 0));
	CHECK_OK(puts_(m, "c", "3", 0));
	CHECK_EQ(puts_(m, "d", "4", 0), SLUICE_ENOMEM);

	/* foreach's snapshot buffer. */
	memset(&st, 0, sizeof(st));
	sl_alloc_fail_after(1, 1);
	CHECK_EQ(sluice_map_foreach(m, visit_fn, &st), SLUICE_ENOMEM);
	sl_alloc_fail_after(0, 0);
	CHECK_EQ(st.calls, 0);
	sluice_map_free(m);

	/* Growth failing leaves a fuller but working table: each put may
	 * allocate its entry (1st) but never a bigger bucket array (2nd). */
	m = map_new(1, 0, NULL);
	for (i = 0; i < 2000; i++) {
		snprintf(key, sizeof(key), "g%d", i);
		sl_alloc_fail_after(2, 1);
		err = puts_(m, key, key, 0);
		sl_alloc_fail_after(0, 0);
		CHECK_OK(err);
	}
	CHECK_EQ(sluice_map_len(m), 2000);
	for (i = 0; i < 2000; i++) {
		snprintf(key, sizeof(key), "g%d", i);
		CHECK_OK(gets_(m, key, buf));
		CHECK_STREQ(buf, key);
	}
	/* Growth still works once memory is back. */
	for (k = 0; k < 100; k++) {
		v = k * 3 + 1;
		CHECK_OK(sluice_map_put(m, &k, sizeof(k), &v, sizeof(v), 0));
	}
	CHECK_EQ(sluice_map_len(m), 2100);
	sluice_map_free(m);
	CHECK_NO_LEAKS();
}

/*
 * Concurrency: 8 threads on a 4-shard map with a cap, each mixing
 *   - private keys (only it writes them): what it reads back must be
 *     exactly what it last wrote;
 *   - shared keys written by everyone with short TTLs, while thread 0
 *     advances the clock and sweeps: a read must never see a torn value;
 *   - shared counters incremented by get + cas loops: their final sum
 *     must equal the number of increments, which only holds if cas is
 *     atomic against every other writer.
 * Afterwards the cap's bookkeeping must still be exact.
 */
#define NTHREADS  8
#define ITERS     6000
#define NPRIVATE  64
#define NSHARED   32
#define NCOUNTERS 16
#define CAP       4096

struct conc {
	struct sluice_map *m;
	struct sluice_clock *clock;
	pthread_barrier_t start;
};

struct worker {
	struct conc *c;
	int id;
	bool failed;
	uint64_t incs;
	uint64_t priv[NPRIVATE]; /* last value written; 0 = deleted */
};

struct shared_val {
	uint64_t a, b; /* always equal when written */
};

static void
counter_inc(struct sluice_map *m, int idx, struct worker *w)
{
	char key[16];
	uint64_t old, nv;
	size_t len;
	int err;

	snprintf(key, sizeof(key), "ctr%d", idx);
	for (;;) {
		len = sizeof(old);
		if (sluice_map_get(m, key, strlen(key), &old, &len) != 0 ||
		    len != sizeof(old)) {
			w->failed = true;
			return;
		}
		nv = old + 1;
		err = sluice_map_cas(m, key, strlen(key), &old, sizeof(old),
				     &nv, sizeof(nv), 0);
		if (err == 0)
			break;
		if (err != SLUICE_EBUSY) {
			w->failed = true;
			return;
		}
	}
	w->incs++;
}

static bool
count_fn(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
	(void)key;
	(void)klen;
	(void)val;
	(void)vlen;
	(*(size_t *)ud)++;
	return true;
}

static void
private_op(struct worker *w, int i)
{
	struct sluice_map *m = w->c->m;
	int slot = (i * 13) % NPRIVATE;
	char key[32];
	uint64_t v;
	size_t len = sizeof(v);
	int err;

	snprintf(key, sizeof(key), "t%d-%d", w->id, slot);
	if (i % 3 == 2) {
		err = sluice_map_del(m, key, strlen(key));
		if (err != (w->priv[slot] ? 0 : SLUICE_ENOENT))
			w->failed = true;
		w->priv[slot] = 0;
		return;
	}
	v = ((uint64_t)w->id << 32) | (uint64_t)(i + 1);
	if (sluice_map_put(m, key, strlen(key), &v, sizeof(v), 0) != 0)
		w->failed = true;
	w->priv[slot] = v;
	v = 0;
	if (sluice_map_get(m, key, strlen(key), &v, &len) != 0 ||
	    len != sizeof(v) || v != w->priv[slot])
		w->failed = true;
}

static void
shared_op(struct worker *w, int i)
{
	struct sluice_map *m = w->c->m;
	struct shared_val sv;
	char key[16];
	size_t len = sizeof(sv);
	int err;

	snprintf(key, sizeof(key), "sh%d", (i + w->id) % NSHARED);
	switch (i % 4) {
	case 0:
		sv.a = sv.b = ((uint64_t)w->id << 32) | (uint64_t)i;
		if (sluice_map_put(m, key, strlen(key), &sv, sizeof(sv), 3))
			w->failed = true;
		break;
	case 1:
		sv.a = sv.b = (uint64_t)i;
		err = sluice_map_put_if_absent(m, key, strlen(key), &sv,
					       sizeof(sv), 0);
		if (err != 0 && err != SLUICE_EEXIST)
			w->failed = true;
		break;
	case 2:
		err = sluice_map_get(m, key, strlen(key), &sv, &len);
		if (err == 0 && (len != sizeof(sv) || sv.a != sv.b))
			w->failed = true;
		else if (err != 0 && err != SLUICE_ENOENT)
			w->failed = true;
		break;
	default:
		err = sluice_map_del(m, key, strlen(key));
		if (err != 0 && err != SLUICE_ENOENT)
			w->failed = true;
		break;
	}
}

static void *
conc_worker(void *arg)
{
	struct worker *w = arg;
	struct sluice_map *m = w->c->m;
	int i;

	pthread_barrier_wait(&w->c->start);
	for (i = 0; i < ITERS; i++) {
		private_op(w, i);
		shared_op(w, i);
		counter_inc(m, (i * 7 + w->id) % NCOUNTERS, w);
		if (w->id == 0 && i % 200 == 0) {
			size_t visited = 0;

			if (sluice_clock_advance(w->c->clock, 1) != 0 ||
			    sluice_map_foreach(m, count_fn, &visited) != 0)
				w->failed = true;
			(void)sluice_map_sweep(m);
			(void)sluice_map_len(m);
		}
	}
	return NULL;
}

static void
test_concurrency(void)
{
	static struct worker w[NTHREADS];
	pthread_t th[NTHREADS];
	struct conc c;
	uint64_t v, sum = 0, incs = 0;
	size_t len, n, visited = 0, priv_live = 0;
	char key[32];
	int i, j;

	c.clock = vclock(0);
	c.m = map_new(4, CAP, c.clock);
	CHECK_OK(pthread_barrier_init(&c.start, NULL, NTHREADS));
	v = 0;
	for (i = 0; i < NCOUNTERS; i++) {
		snprintf(key, sizeof(key), "ctr%d", i);
		CHECK_OK(sluice_map_put(c.m, key, strlen(key), &v, sizeof(v),
					0));
	}
	for (i = 0; i < NTHREADS; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].c = &c;
		w[i].id = i;
		CHECK_OK(pthread_create(&th[i], NULL, conc_worker, &w[i]));
	}
	for (i = 0; i < NTHREADS; i++)
		CHECK_OK(pthread_join(th[i], NULL));

	for (i = 0; i < NTHREADS; i++) {
		CHECK(!w[i].failed);
		incs += w[i].incs;
		for (j = 0; j < NPRIVATE; j++) {
			snprintf(key, sizeof(key), "t%d-%d", i, j);
			len = sizeof(v);
			if (w[i].priv[j]) {
				priv_live++;
				CHECK_OK(sluice_map_get(c.m, key, strlen(key),
							&v, &len));
				CHECK_EQ(v, w[i].priv[j]);
			} else {
				CHECK(!sluice_map_contains(c.m, key,
							   strlen(key)));
			}
		}
	}
	CHECK_EQ(incs, (uint64_t)NTHREADS * ITERS);
	for (i = 0; i < NCOUNTERS; i++) {
		snprintf(key, sizeof(key), "ctr%d", i);
		len = sizeof(v);
		CHECK_OK(sluice_map_get(c.m, key, strlen(key), &v, &len));
		sum += v;
	}
	CHECK_EQ(sum, incs);

	(void)sluice_map_sweep(c.m);
	n = sluice_map_len(c.m);
	CHECK_OK(sluice_map_foreach(c.m, count_fn, &visited));
	CHECK_EQ(visited, n);
	CHECK_GE(n, priv_live + NCOUNTERS);
	CHECK_LE(n, priv_live + NCOUNTERS + NSHARED);
	/* The cap's count is exact: exactly CAP - n more entries fit. */
	for (i = 0;; i++) {
		snprintf(key, sizeof(key), "fill%d", i);
		if (sluice_map_put(c.m, key, strlen(key), "x", 1, 0) != 0)
			break;
	}
	CHECK_EQ((size_t)i, CAP - n);
	CHECK_EQ(sluice_map_len(c.m), CAP);

	pthread_barrier_destroy(&c.start);
	sluice_map_free(c.m);
	sluice_clock_free(c.clock);
	CHECK_NO_LEAKS();
}

CHECK_MAIN(test_basic, test_bad_args, test_replace, test_binary_keys,
	   test_get_small_buffer, test_put_if_absent, test_cas,
	   test_ttl_expiry_exact, test_ttl_sweep_count, test_max_entries,
	   test_max_entries_reclaims_expired, test_growth, test_foreach,
	   test_alloc_failure, test_concurrency)
