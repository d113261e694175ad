/* SPDX-License-Identifier: MIT */
/*
 * test_metrics.c - the metrics registry and its Prometheus text rendering.
 *
 * Exact output for a small registry (byte for byte), escaping, name and
 * bound validation, histogram bucket edges, exact sums after concurrent
 * bumps from 8 threads, renders racing bumps and registrations (run under
 * TSan), callbacks run outside the registry lock, allocation failure at
 * every step, and promtool's verdict when promtool is installed (PROMTOOL=
 * path overrides the PATH search).
 */
#include <fcntl.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sluice/metrics.h>

#include "check.h"
#include "util/alloc.h"

static double
read_double(void *ud)
{
	return *(const double *)ud;
}

/*
 * The sample registry of the exact-output and promtool cases; every step
 * returns its error so the allocation-failure case can reuse it.
 */
static int
build_sample(struct sluice_metrics *m, double *depth)
{
	static const char *const outcome[] = { "outcome" };
	static const char *const qmode[] = { "queue", "mode" };
	static const char *const reason[] = { "reason" };
	static const double secs[] = { 0.125, 0.5, 1 };
	static const double sizes[] = { 1, 10 };
	struct sluice_counter_family *msgs = NULL;
	struct sluice_counter *ok = NULL, *dead = NULL, *retries = NULL;
	struct sluice_gauge_family *idle = NULL;
	struct sluice_gauge *busy = NULL;
	struct sluice_histogram_family *batch = NULL;
	struct sluice_histogram *lat = NULL, *bb = NULL;
	int rc;

	rc = sluice_counter_family_register(m, "sluice_messages_total",
					    "Messages settled, by outcome.",
					    outcome, 1, &msgs);
	if (rc == 0)
		rc = sluice_counter_with(msgs, &ok, "ok", SLUICE_LABELS_END);
	if (rc == 0)
		rc = sluice_counter_with(msgs, &dead, "dead",
					 SLUICE_LABELS_END);
	if (rc == 0)
		rc = sluice_counter_register(m, "sluice_retries_total",
					     "Retries scheduled.", &retries);
	if (rc == 0)
		rc = sluice_gauge_register(m, "sluice_workers_busy",
					   "Handlers running now.", &busy);
	/* A labelled family without children: left out of the text. */
	if (rc == 0)
		rc = sluice_gauge_family_register(
			m, "sluice_idle", "Never used.", reason, 1, &idle);
	if (rc == 0)
		rc = sluice_gauge_register_fn(m, "sluice_queue_depth",
					      "Messages waiting in the queue.",
					      read_double, depth);
	if (rc == 0)
		rc = sluice_histogram_register(m, "sluice_handler_seconds",
					       "Handler run time.", secs, 3,
					       &lat);
	if (rc == 0)
		rc = sluice_histogram_family_register(m, "sluice_batch_bytes",
						      "Batch sizes.", sizes, 2,
						      qmode, 2, &batch);
	if (rc == 0)
		rc = sluice_histogram_with(batch, &bb, "in", "batch",
					   SLUICE_LABELS_END);
	if (rc < 0)
		return rc;
	sluice_counter_add(ok, 2);
	sluice_counter_inc(ok);
	sluice_counter_inc(dead);
	sluice_gauge_set(busy, 5);
	sluice_gauge_add(busy, -2);
	*depth = 42.5;
	/* Exact binary fractions, so the sum has one right spelling; 0.125
	 * equals a bound and belongs to its bucket. */
	sluice_histogram_observe(lat, 0.0625);
	sluice_histogram_observe(lat, 0.125);
	sluice_histogram_observe(lat, 0.75);
	sluice_histogram_observe(lat, 3);
	sluice_histogram_observe(bb, 4);
	return 0;
}

static const char sample_text[] =
	"# HELP sluice_messages_total Messages settled, by outcome.\n"
	"# TYPE sluice_messages_total counter\n"
	"sluice_messages_total{outcome=\"ok\"} 3\n"
	"sluice_messages_total{outcome=\"dead\"} 1\n"
	"# HELP sluice_retries_total Retries scheduled.\n"
	"# TYPE sluice_retries_total counter\n"
	"sluice_retries_total 0\n"
	"# HELP sluice_workers_busy Handlers running now.\n"
	"# TYPE sluice_workers_busy gauge\n"
	"sluice_workers_busy 3\n"
	"# HELP sluice_queue_depth Messages waiting in the queue.\n"
	"# TYPE sluice_queue_depth gauge\n"
	"sluice_queue_depth 42.5\n"
	"# HELP sluice_handler_seconds Handler run time.\n"
	"# TYPE sluice_handler_seconds histogram\n"
	"sluice_handler_seconds_bucket{le=\"0.125\"} 2\n"
	"sluice_handler_seconds_bucket{le=\"0.5\"} 2\n"
	"sluice_handler_seconds_bucket{le=\"1\"} 3\n"
	"sluice_handler_seconds_bucket{le=\"+Inf\"} 4\n"
	"sluice_handler_seconds_sum 3.9375\n"
	"sluice_handler_seconds_count 4\n"
	"# HELP sluice_batch_bytes Batch sizes.\n"
	"# TYPE sluice_batch_bytes histogram\n"
	"sluice_batch_bytes_bucket{queue=\"in\",mode=\"batch\",le=\"1\"} 0\n"
	"sluice_batch_bytes_bucket{queue=\"in\",mode=\"batch\",le=\"10\"} 1\n"
	"sluice_batch_bytes_bucket{queue=\"in\",mode=\"batch\",le=\"+Inf\"} 1\n"
	"sluice_batch_bytes_sum{queue=\"in\",mode=\"batch\"} 4\n"
	"sluice_batch_bytes_count{queue=\"in\",mode=\"batch\"} 1\n";

static void
test_render_exact(void)
{
	struct sluice_metrics *m;
	double depth = 0;
	char *text;
	size_t len;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(build_sample(m, &depth));
	CHECK_OK(sluice_metrics_render(m, &text, &len));
	CHECK_EQ(len, strlen(text));
	CHECK_STREQ(text, sample_text);
	sluice_metrics_free_text(text);

	/* The callback is evaluated per render, not at registration. */
	depth = 0.1;
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK(strstr(text, "\nsluice_queue_depth 0.1\n") != NULL);
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
}

static void
test_empty_registry(void)
{
	static const char *const l[] = { "x" };
	struct sluice_counter_family *f;
	struct sluice_metrics *m;
	char *text;
	size_t len = 99;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_metrics_render(m, &text, &len));
	CHECK_EQ(len, 0);
	CHECK_STREQ(text, "");
	sluice_metrics_free_text(text);
	/* A family whose children do not exist yet renders nothing. */
	CHECK_OK(sluice_counter_family_register(m, "a_total", "A.", l, 1, &f));
	CHECK_OK(sluice_metrics_render(m, &text, &len));
	CHECK_STREQ(text, "");
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
	sluice_metrics_free(NULL);
	sluice_metrics_free_text(NULL);
}

static void
test_label_escaping(void)
{
	static const char *const l[] = { "path", "note" };
	static const char *const bad_utf8[] = { "\xc3", "x" };
	static const char *const overlong[] = { "\xc0\xaf", "x" };
	static const char *const surrogate[] = { "\xed\xa0\x80", "x" };
	static const char *const nul_value[] = { NULL, "x" };
	static const char *const utf8[] = { "caf\xc3\xa9", "\xf0\x9f\x90\x8d" };
	struct sluice_counter_family *f;
	struct sluice_counter *c, *c2;
	struct sluice_gauge *g;
	struct sluice_metrics *m;
	char *text;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_family_register(
		m, "esc_total",
		"Help with \\ backslash,\nnewline and \"quote\".", l, 2, &f));
	CHECK_OK(sluice_counter_with(f, &c, "C:\\dir\\", "say \"hi\"\nbye",
				     SLUICE_LABELS_END));
	sluice_counter_inc(c);
	CHECK_OK(sluice_counter_with_values(f, utf8, 2, &c2));
	sluice_counter_add(c2, 7);
	/* No help: no HELP line. */
	CHECK_OK(sluice_gauge_register(m, "nohelp", NULL, &g));
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK_STREQ(
		text,
		"# HELP esc_total Help with \\\\ backslash,\\nnewline and "
		"\"quote\".\n"
		"# TYPE esc_total counter\n"
		"esc_total{path=\"C:\\\\dir\\\\\",note=\"say \\\"hi\\\"\\nbye\"}"
		" 1\n"
		"esc_total{path=\"caf\xc3\xa9\",note=\"\xf0\x9f\x90\x8d\"} 7\n"
		"# TYPE nohelp gauge\n"
		"nohelp 0\n");
	sluice_metrics_free_text(text);

	/* Values must be UTF-8 (Prometheus rejects the line otherwise). */
	CHECK_EQ(sluice_counter_with_values(f, bad_utf8, 2, &c), SLUICE_EINVAL);
	CHECK_EQ(sluice_counter_with_values(f, overlong, 2, &c), SLUICE_EINVAL);
	CHECK_EQ(sluice_counter_with_values(f, surrogate, 2, &c),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_counter_with_values(f, nul_value, 2, &c),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_gauge_register(m, "badhelp", "\xff", &g),
		 SLUICE_EINVAL);
	sluice_metrics_free(m);
}

static void
test_children_identity(void)
{
	static const char *const l[] = { "a", "b" };
	static const char *const v[] = { "1", "2" };
	struct sluice_counter_family *f;
	struct sluice_counter *x, *y, *z;
	struct sluice_metrics *m;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_family_register(m, "c_total", "C.", l, 2, &f));
	CHECK_OK(sluice_counter_with(f, &x, "1", "2", SLUICE_LABELS_END));
	CHECK_OK(sluice_counter_with_values(f, v, 2, &y));
	CHECK(x == y);
	CHECK_OK(sluice_counter_with(f, &z, "1", "3", SLUICE_LABELS_END));
	CHECK(x != z);
	sluice_counter_add(x, 5);
	CHECK_EQ(sluice_counter_value(y), 5);
	CHECK_EQ(sluice_counter_value(z), 0);
	/* Wrong number of values. */
	CHECK_EQ(sluice_counter_with(f, &z, "1", SLUICE_LABELS_END),
		 SLUICE_EINVAL);
	CHECK(z == NULL);
	CHECK_EQ(sluice_counter_with(f, &z, "1", "2", "3", SLUICE_LABELS_END),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_counter_with(f, &z, "1", "2", "3", "4", "5",
				     SLUICE_LABELS_END),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_counter_with_values(f, v, 1, &z), SLUICE_EINVAL);
	sluice_metrics_free(m);
}

static void
test_name_validation(void)
{
	static const char *const good_metric[] = {
		"a", "_", ":", "a:b_c9", "A_Z", "sluice:rate_5m", "__a",
	};
	static const char *const bad_metric[] = {
		"", "9a", "a-b", "a b", "a.b", "é", "a\n",
	};
	static const char *const good_label[] = { "a", "_a", "A9_z", "le" };
	static const char *const bad_label[] = {
		"", "__a", "__", "9a", "a:b", "a-b", "a b",
	};
	static const char *const dup[] = { "x", "x" };
	static const char *const five[] = { "a", "b", "c", "d", "e" };
	static const char *const four[] = { "a", "b", "c", "d" };
	static const char *const le[] = { "le" };
	static const double b[] = { 1 };
	struct sluice_counter_family *cf;
	struct sluice_histogram_family *hf;
	struct sluice_histogram *h;
	struct sluice_counter *c;
	struct sluice_gauge *g;
	struct sluice_metrics *m;
	char name[32];
	size_t i;

	CHECK_OK(sluice_metrics_new(&m));
	for (i = 0; i < sizeof(good_metric) / sizeof(good_metric[0]); i++)
		CHECK_OK(sluice_counter_register(m, good_metric[i], "h", &c));
	for (i = 0; i < sizeof(bad_metric) / sizeof(bad_metric[0]); i++) {
		CHECK_EQ(sluice_counter_register(m, bad_metric[i], "h", &c),
			 SLUICE_EINVAL);
		CHECK(c == NULL);
		CHECK_EQ(sluice_gauge_register(m, bad_metric[i], "h", &g),
			 SLUICE_EINVAL);
		CHECK_EQ(sluice_histogram_register(m, bad_metric[i], "h", b, 1,
						   &h),
			 SLUICE_EINVAL);
		CHECK_EQ(sluice_gauge_register_fn(m, bad_metric[i], "h",
						  read_double, NULL),
			 SLUICE_EINVAL);
	}
	CHECK_EQ(sluice_counter_register(m, NULL, "h", &c), SLUICE_EINVAL);
	for (i = 0; i < sizeof(good_label) / sizeof(good_label[0]); i++) {
		snprintf(name, sizeof(name), "good_%zu_total", i);
		CHECK_OK(sluice_counter_family_register(
			m, name, "h", &good_label[i], 1, &cf));
	}
	for (i = 0; i < sizeof(bad_label) / sizeof(bad_label[0]); i++) {
		snprintf(name, sizeof(name), "bad_%zu_total", i);
		CHECK_EQ(sluice_counter_family_register(m, name, "h",
							&bad_label[i], 1, &cf),
			 SLUICE_EINVAL);
		CHECK(cf == NULL);
	}
	CHECK_EQ(sluice_counter_family_register(m, "d_total", "h", dup, 2, &cf),
		 SLUICE_EINVAL);
	CHECK_EQ(
		sluice_counter_family_register(m, "f_total", "h", five, 5, &cf),
		SLUICE_EINVAL);
	CHECK_OK(sluice_counter_family_register(m, "f_total", "h", four, 4,
						&cf));
	/* "le" belongs to the histogram's buckets. */
	CHECK_EQ(sluice_histogram_family_register(m, "h_seconds", "h", b, 1, le,
						  1, &hf),
		 SLUICE_EINVAL);
	/* One family per name, whatever the kind. */
	CHECK_EQ(sluice_counter_register(m, "a", "h", &c), SLUICE_EEXIST);
	CHECK_EQ(sluice_gauge_register(m, "f_total", "h", &g), SLUICE_EEXIST);
	CHECK_EQ(sluice_gauge_register_fn(m, "a", "h", read_double, NULL),
		 SLUICE_EEXIST);
	CHECK_EQ(sluice_gauge_register_fn(m, "fn", "h", NULL, NULL),
		 SLUICE_EINVAL);
	sluice_metrics_free(m);
}

static void
test_histogram_bounds_validation(void)
{
	static const double dec[] = { 1, 0.5 };
	static const double eq[] = { 1, 1 };
	const double nan_[] = { 0, (double)NAN };
	const double inf[] = { 0, (double)INFINITY };
	const double ninf[] = { -(double)(double)INFINITY, 0 };
	struct sluice_histogram *h;
	struct sluice_metrics *m;
	char *text;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_EQ(sluice_histogram_register(m, "h", "h", dec, 2, &h),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_histogram_register(m, "h", "h", eq, 2, &h),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_histogram_register(m, "h", "h", nan_, 2, &h),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_histogram_register(m, "h", "h", inf, 2, &h),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_histogram_register(m, "h", "h", ninf, 2, &h),
		 SLUICE_EINVAL);
	CHECK_EQ(sluice_histogram_register(m, "h", "h", NULL, 2, &h),
		 SLUICE_EINVAL);
	/* No bound at all: just the "+Inf" bucket. */
	CHECK_OK(sluice_histogram_register(m, "h", "h", NULL, 0, &h));
	sluice_histogram_observe(h, -1);
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK_STREQ(text, "# HELP h h\n# TYPE h histogram\n"
			  "h_bucket{le=\"+Inf\"} 1\nh_sum -1\nh_count 1\n");
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
}

/* The cumulative count of the bucket with label @le in @text. */
static long long
bucket(const char *text, const char *le)
{
	char key[64];
	const char *p;

	snprintf(key, sizeof(key), "h_bucket{le=\"%s\"} ", le);
	p = strstr(text, key);
	if (!p)
		return -1;
	return strtoll(p + strlen(key), NULL, 10);
}

static void
test_histogram_boundaries(void)
{
	static const double b[] = { -1, 0.1, 1, 2.5, 1e9 };
	struct sluice_histogram *h;
	struct sluice_metrics *m;
	char *text;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_histogram_register(m, "h", "h", b, 5, &h));
	sluice_histogram_observe(h, -5);                  /* le=-1 */
	sluice_histogram_observe(h, -1);                  /* equal: le=-1 */
	sluice_histogram_observe(h, nextafter(-1, 0));    /* le=0.1 */
	sluice_histogram_observe(h, 0.1);                 /* equal: le=0.1 */
	sluice_histogram_observe(h, nextafter(0.1, 1));   /* le=1 */
	sluice_histogram_observe(h, 1);                   /* le=1 */
	sluice_histogram_observe(h, 2.5);                 /* le=2.5 */
	sluice_histogram_observe(h, 1e9);                 /* le=1e+09 */
	sluice_histogram_observe(h, nextafter(1e9, 2e9)); /* +Inf */
	sluice_histogram_observe(h, (double)INFINITY);    /* +Inf */
	CHECK_EQ(sluice_histogram_count(h), 10);
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	/* Bounds print in their shortest round-trip form. */
	CHECK_EQ(bucket(text, "-1"), 2);
	CHECK_EQ(bucket(text, "0.1"), 4);
	CHECK_EQ(bucket(text, "1"), 6);
	CHECK_EQ(bucket(text, "2.5"), 7);
	CHECK_EQ(bucket(text, "1e+09"), 8);
	CHECK_EQ(bucket(text, "+Inf"), 10);
	CHECK(strstr(text, "\nh_sum +Inf\n") != NULL);
	CHECK(strstr(text, "\nh_count 10\n") != NULL);
	sluice_metrics_free_text(text);

	/* NaN: "+Inf" bucket, and the sum is NaN from then on. */
	sluice_histogram_observe(h, (double)NAN);
	CHECK_EQ(sluice_histogram_count(h), 11);
	CHECK(isnan(sluice_histogram_sum(h)));
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK_EQ(bucket(text, "+Inf"), 11);
	CHECK_EQ(bucket(text, "2.5"), 7);
	CHECK(strstr(text, "\nh_sum NaN\n") != NULL);
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
}

static void
test_gauge_values(void)
{
	struct sluice_metrics *m;
	struct sluice_gauge *g;
	char *text;
	double v = -(double)(double)INFINITY;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_gauge_register(m, "g", "g", &g));
	sluice_gauge_set(g, INT64_MIN);
	CHECK_EQ(sluice_gauge_value(g), INT64_MIN);
	sluice_gauge_add(g, -1); /* wraps, no UB */
	CHECK_EQ(sluice_gauge_value(g), INT64_MAX);
	sluice_gauge_add(g, -INT64_MAX);
	sluice_gauge_add(g, -7);
	CHECK_EQ(sluice_gauge_value(g), -7);
	CHECK_OK(sluice_gauge_register_fn(m, "f", "f", read_double, &v));
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK(strstr(text, "\ng -7\n") != NULL);
	CHECK(strstr(text, "\nf -Inf\n") != NULL);
	sluice_metrics_free_text(text);
	v = (double)NAN;
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK(strstr(text, "\nf NaN\n") != NULL);
	sluice_metrics_free_text(text);
	v = 1e-300;
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK(strstr(text, "\nf 1e-300\n") != NULL);
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
}

static void
test_float_format(void)
{
	/* Go's strconv.FormatFloat(v, 'g', -1, 64), as the Go client writes
	 * them, so "le" labels match across a mixed fleet. */
	static const struct {
		double v;
		const char *text;
	} cases[] = {
		{ 0, "0" },
		{ -0.0, "-0" },
		{ 0.1, "0.1" },
		{ 2.5, "2.5" },
		{ 1.0 / 3, "0.3333333333333333" },
		{ 0.0001, "0.0001" },
		{ 0.00001, "1e-05" },
		{ 100000, "100000" },
		{ 123456.5, "123456.5" },
		{ 1e6, "1e+06" },
		{ 1234567, "1.234567e+06" },
		{ -42.25, "-42.25" },
		{ 5e-324, "5e-324" },
		{ 1.7976931348623157e308, "1.7976931348623157e+308" },
	};
	struct sluice_metrics *m;
	char *text, want[64];
	double v;
	size_t i;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_gauge_register_fn(m, "f", "f", read_double, &v));
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		v = cases[i].v;
		CHECK_OK(sluice_metrics_render(m, &text, NULL));
		snprintf(want, sizeof(want),
			 "# HELP f f\n# TYPE f gauge\nf %s\n", cases[i].text);
		CHECK_STREQ(text, want);
		sluice_metrics_free_text(text);
	}
	sluice_metrics_free(m);
}

/* ---- callbacks run outside the lock ------------------------------------ */

struct cb_state {
	struct sluice_metrics *m;
	int calls;
	int rc; /* of the registration made inside the callback */
};

static double late_value = 7;

static double
registering_cb(void *ud)
{
	struct cb_state *s = ud;

	/* Takes the registry mutex: would deadlock if render held it. */
	if (s->calls++ == 0)
		s->rc = sluice_gauge_register_fn(s->m, "late", "Late.",
						 read_double, &late_value);
	return (double)s->calls;
}

static void
test_callback_outside_lock(void)
{
	struct cb_state s = { NULL, 0, -1 };
	char *text;

	CHECK_OK(sluice_metrics_new(&s.m));
	CHECK_OK(sluice_gauge_register_fn(s.m, "early", "Early.",
					  registering_cb, &s));
	CHECK_OK(sluice_metrics_render(s.m, &text, NULL));
	CHECK_OK(s.rc);
	CHECK_EQ(s.calls, 1);
	/* Registered during this render: shows from the next one. */
	CHECK_STREQ(text, "# HELP early Early.\n# TYPE early gauge\nearly 1\n");
	sluice_metrics_free_text(text);
	CHECK_EQ(sluice_gauge_register_fn(s.m, "late", "Late.", read_double,
					  &late_value),
		 SLUICE_EEXIST);
	CHECK_OK(sluice_metrics_render(s.m, &text, NULL));
	CHECK_EQ(s.calls, 2);
	CHECK_STREQ(text, "# HELP early Early.\n# TYPE early gauge\nearly 2\n"
			  "# HELP late Late.\n# TYPE late gauge\nlate 7\n");
	sluice_metrics_free_text(text);
	sluice_metrics_free(s.m);
}

/* ---- threads ------------------------------------------------------------ */

#define NTHREADS 8
#define ITERS    100000

struct bump_shared {
	pthread_barrier_t start;
	struct sluice_counter *plain;
	struct sluice_counter *child;
	struct sluice_gauge *gauge;
	struct sluice_histogram *hist;
	struct sluice_counter_family *fam;
};

static void *
bumper(void *arg)
{
	struct bump_shared *s = arg;
	struct sluice_counter *mine;
	static const double vals[] = { 0.5, 1, 2 };
	int i, rc;

	pthread_barrier_wait(&s->start);
	/* Every thread asks for the same child: one object for all. */
	rc = sluice_counter_with(s->fam, &mine, "shared", SLUICE_LABELS_END);
	if (rc != 0 || mine != s->child)
		return (void *)1;
	for (i = 0; i < ITERS; i++) {
		sluice_counter_inc(s->plain);
		sluice_counter_add(mine, 2);
		sluice_gauge_add(s->gauge, 1);
		sluice_histogram_observe(s->hist, vals[i % 3]);
	}
	return NULL;
}

static void
test_concurrent_bumps(void)
{
	static const char *const l[] = { "k" };
	static const double b[] = { 1 };
	struct bump_shared s;
	struct sluice_metrics *m;
	pthread_t t[NTHREADS];
	uint64_t per[3] = { 0, 0, 0 }, le1, total;
	double sum;
	char *text, line[128];
	void *ret;
	int i;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_register(m, "p_total", "p", &s.plain));
	CHECK_OK(sluice_counter_family_register(m, "c_total", "c", l, 1,
						&s.fam));
	CHECK_OK(sluice_counter_with(s.fam, &s.child, "shared",
				     SLUICE_LABELS_END));
	CHECK_OK(sluice_gauge_register(m, "g", "g", &s.gauge));
	CHECK_OK(sluice_histogram_register(m, "h", "h", b, 1, &s.hist));
	CHECK_OK(pthread_barrier_init(&s.start, NULL, NTHREADS));
	for (i = 0; i < NTHREADS; i++)
		CHECK_OK(pthread_create(&t[i], NULL, bumper, &s));
	for (i = 0; i < NTHREADS; i++) {
		CHECK_OK(pthread_join(t[i], &ret));
		CHECK(ret == NULL);
	}
	pthread_barrier_destroy(&s.start);

	for (i = 0; i < ITERS; i++)
		per[i % 3]++;
	le1 = NTHREADS * (per[0] + per[1]);
	total = (uint64_t)NTHREADS * ITERS;
	sum = NTHREADS * (0.5 * (double)per[0] + 1.0 * (double)per[1] +
			  2.0 * (double)per[2]);
	CHECK_EQ(sluice_counter_value(s.plain), total);
	CHECK_EQ(sluice_counter_value(s.child), 2 * total);
	CHECK_EQ(sluice_gauge_value(s.gauge), (int64_t)total);
	CHECK_EQ(sluice_histogram_count(s.hist), total);
	CHECK(sluice_histogram_sum(s.hist) == sum);

	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	snprintf(line, sizeof(line), "\np_total %llu\n",
		 (unsigned long long)total);
	CHECK(strstr(text, line) != NULL);
	snprintf(line, sizeof(line), "\nc_total{k=\"shared\"} %llu\n",
		 (unsigned long long)(2 * total));
	CHECK(strstr(text, line) != NULL);
	snprintf(line, sizeof(line), "\nh_bucket{le=\"1\"} %llu\n",
		 (unsigned long long)le1);
	CHECK(strstr(text, line) != NULL);
	snprintf(line, sizeof(line), "\nh_bucket{le=\"+Inf\"} %llu\n",
		 (unsigned long long)total);
	CHECK(strstr(text, line) != NULL);
	snprintf(line, sizeof(line), "\nh_sum %.17g\n", sum);
	CHECK(strstr(text, line) != NULL);
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
}

struct race {
	struct sluice_counter *c;
	struct sluice_histogram *h;
	struct sluice_counter_family *fam;
	atomic_bool stop;
	atomic_int started;
	uint64_t done[4]; /* each written by its bumper, read after join */
	int nregistered;  /* written by the registrar, read after join */
};

struct race_arg {
	struct race *r;
	int idx;
};

static void *
race_bumper(void *arg)
{
	struct race_arg *a = arg;
	uint64_t n = 0;

	atomic_fetch_add(&a->r->started, 1);
	/* At least a few bumps, then until told to stop. */
	while (n < 1000 || !atomic_load(&a->r->stop)) {
		sluice_counter_inc(a->r->c);
		sluice_histogram_observe(a->r->h, (double)(n % 4));
		n++;
	}
	a->r->done[a->idx] = n;
	return NULL;
}

static void *
race_registrar(void *arg)
{
	struct race *r = arg;
	struct sluice_counter *c;
	char v[32];
	int i = 0;

	atomic_fetch_add(&r->started, 1);
	while (i < 50 || !atomic_load(&r->stop)) {
		snprintf(v, sizeof(v), "v%d", i);
		if (sluice_counter_with(r->fam, &c, v, SLUICE_LABELS_END) != 0)
			return (void *)1;
		sluice_counter_inc(c);
		i++;
	}
	r->nregistered = i;
	return NULL;
}

static uint64_t
value_after(const char *text, const char *key)
{
	const char *p = strstr(text, key);

	if (!p)
		return UINT64_MAX;
	return strtoull(p + strlen(key), NULL, 10);
}

static void
test_render_while_bumping(void)
{
	static const char *const l[] = { "v" };
	static const double b[] = { 0.5, 1.5, 2.5 };
	struct race r;
	struct race_arg args[4];
	struct sluice_metrics *m;
	pthread_t t[5];
	uint64_t prev = 0, cur, inf, cnt, total = 0;
	char *text, line[64];
	void *ret;
	int i, renders = 0;

	memset(&r, 0, sizeof(r));
	atomic_init(&r.stop, false);
	atomic_init(&r.started, 0);
	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_register(m, "r_total", "r", &r.c));
	CHECK_OK(sluice_histogram_register(m, "h", "h", b, 3, &r.h));
	CHECK_OK(sluice_counter_family_register(m, "v_total", "v", l, 1,
						&r.fam));
	for (i = 0; i < 4; i++) {
		args[i].r = &r;
		args[i].idx = i;
		CHECK_OK(pthread_create(&t[i], NULL, race_bumper, &args[i]));
	}
	CHECK_OK(pthread_create(&t[4], NULL, race_registrar, &r));
	/* Render until every thread has started and 200 renders are done;
	 * each render must be self-consistent and counters never go back. */
	while (renders < 200 || atomic_load(&r.started) < 5) {
		CHECK_OK(sluice_metrics_render(m, &text, NULL));
		cur = value_after(text, "\nr_total ");
		CHECK_NE(cur, UINT64_MAX);
		CHECK_GE(cur, prev);
		prev = cur;
		inf = value_after(text, "h_bucket{le=\"+Inf\"} ");
		cnt = value_after(text, "\nh_count ");
		CHECK_EQ(inf, cnt);
		CHECK_EQ(text[strlen(text) - 1], '\n');
		sluice_metrics_free_text(text);
		renders++;
	}
	atomic_store(&r.stop, true);
	for (i = 0; i < 5; i++) {
		CHECK_OK(pthread_join(t[i], &ret));
		CHECK(ret == NULL);
	}
	for (i = 0; i < 4; i++)
		total += r.done[i];
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK_EQ(value_after(text, "# TYPE r_total counter\nr_total "), total);
	CHECK_EQ(value_after(text, "h_count "), total);
	snprintf(line, sizeof(line), "v_total{v=\"v%d\"} ", r.nregistered - 1);
	CHECK_EQ(value_after(text, line), 1);
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
}

/* ---- allocation failure ------------------------------------------------- */

static int
sample_and_render(void)
{
	struct sluice_metrics *m;
	double depth = 0;
	char *text = NULL;
	int rc;

	rc = sluice_metrics_new(&m);
	if (rc < 0)
		return rc;
	rc = build_sample(m, &depth);
	if (rc == 0)
		rc = sluice_metrics_render(m, &text, NULL);
	if (rc == 0 && strcmp(text, sample_text) != 0)
		rc = -12345;
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
	return rc;
}

static void
test_alloc_failure(void)
{
	unsigned long n;
	int rc;

	/* Fail allocation n and all after it, for every n, until the whole
	 * scenario fits; every failure must be a clean SLUICE_ENOMEM (ASan
	 * and LeakSanitizer check the unwinding). */
	for (n = 1; n < 10000; n++) {
		sl_alloc_fail_after(n, 1);
		rc = sample_and_render();
		sl_alloc_fail_after(0, 0);
		if (rc == 0)
			break;
		CHECK_EQ(rc, SLUICE_ENOMEM);
	}
	CHECK_GT(n, 10);
	CHECK_LT(n, 10000);
	/* And one-shot failures: a later success must still be exact. */
	for (n = 1; n < 10000; n++) {
		sl_alloc_fail_after(n, 0);
		rc = sample_and_render();
		sl_alloc_fail_after(0, 0);
		if (rc == 0)
			break;
		CHECK_EQ(rc, SLUICE_ENOMEM);
	}
	CHECK_GT(n, 10);
}

/* ---- locale ------------------------------------------------------------- */

static void
test_decimal_point_locale(void)
{
	static const char *const names[] = { "de_DE.UTF-8", "de_DE.utf8",
					     "fr_FR.UTF-8", "ru_RU.UTF-8" };
	struct sluice_metrics *m;
	double v = 0.5;
	char *text, tmp[16];
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (setlocale(LC_NUMERIC, names[i]))
			break;
	snprintf(tmp, sizeof(tmp), "%.1f", v);
	if (i == sizeof(names) / sizeof(names[0]) || strcmp(tmp, "0,5") != 0) {
		printf("  skipped: no installed locale with a decimal comma\n");
		return;
	}
	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_gauge_register_fn(m, "f", "f", read_double, &v));
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK(strstr(text, "\nf 0.5\n") != NULL);
	sluice_metrics_free_text(text);
	/* The caller's locale is back. */
	snprintf(tmp, sizeof(tmp), "%.1f", v);
	CHECK_STREQ(tmp, "0,5");
	sluice_metrics_free(m);
}

/* ---- promtool ----------------------------------------------------------- */

static bool
find_promtool(char *path, size_t size)
{
	const char *env = getenv("PROMTOOL");
	const char *p, *end;
	size_t n;

	if (env && *env) {
		snprintf(path, size, "%s", env);
		return access(path, X_OK) == 0;
	}
	for (p = getenv("PATH"); p && *p; p = *end ? end + 1 : end) {
		end = strchr(p, ':');
		if (!end)
			end = p + strlen(p);
		n = (size_t)(end - p);
		if (n == 0)
			continue;
		snprintf(path, size, "%.*s/promtool", (int)n, p);
		if (access(path, X_OK) == 0)
			return true;
	}
	return false;
}

/* promtool check metrics < @text; its exit status (-1 if it died).  With
 * @quiet its output goes to /dev/null (for inputs meant to fail). */
static int
promtool_check(const char *tool, const char *text, bool quiet)
{
	char file[] = "/tmp/test_metrics_XXXXXX";
	size_t len = strlen(text);
	int fd, st;
	pid_t pid;

	fd = mkstemp(file);
	CHECK(fd >= 0);
	unlink(file);
	CHECK_EQ(write(fd, text, len), (ssize_t)len);
	CHECK_EQ(lseek(fd, 0, SEEK_SET), 0);
	fflush(NULL);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		dup2(fd, 0);
		if (quiet) {
			int null = open("/dev/null", O_WRONLY);

			dup2(null, 1);
			dup2(null, 2);
		}
		execl(tool, "promtool", "check", "metrics", (char *)NULL);
		_exit(127);
	}
	close(fd);
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void
test_promtool(void)
{
	static const char *const l[] = { "path" };
	struct sluice_counter_family *f;
	struct sluice_counter *c;
	struct sluice_metrics *m;
	double depth = 0;
	char tool[512], *text;

	if (!find_promtool(tool, sizeof(tool))) {
		printf("  skipped: promtool not found (apt-get install "
		       "prometheus, or PROMTOOL=/path/to/promtool)\n");
		return;
	}
	/* The checker itself must be able to say no. */
	CHECK_NE(promtool_check(tool, "# TYPE x counter\nx{a=\"b} 1\n", true),
		 0);
	CHECK_NE(promtool_check(tool, "# HELP x X.\n# TYPE x counter\nx 1\n",
				true),
		 0);

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(build_sample(m, &depth));
	CHECK_OK(sluice_counter_family_register(m, "sluice_escaped_total",
						"Odd \\ help\nover lines.", l,
						1, &f));
	CHECK_OK(sluice_counter_with(f, &c, "a\\b\"c\nd", SLUICE_LABELS_END));
	sluice_counter_inc(c);
	CHECK_OK(sluice_metrics_render(m, &text, NULL));
	CHECK_EQ(promtool_check(tool, text, false), 0);
	sluice_metrics_free_text(text);
	sluice_metrics_free(m);
}

CHECK_MAIN(test_render_exact, test_empty_registry, test_label_escaping,
	   test_children_identity, test_name_validation,
	   test_histogram_bounds_validation, test_histogram_boundaries,
	   test_gauge_values, test_float_format, test_callback_outside_lock,
	   test_concurrent_bumps, test_render_while_bumping, test_alloc_failure,
	   test_decimal_point_locale, test_promtool)
