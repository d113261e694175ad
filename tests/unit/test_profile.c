/* SPDX-License-Identifier: MIT */
/*
 * test_profile.c - the profile builder, its three encoders, the in-process
 * symbolizer, and pb.h's nested-message lengths.
 *
 * The pprof output is checked three ways: decoded here field by field (a
 * small protobuf reader below), accepted by `protoc --decode_raw`, and read
 * by `go tool pprof`.  External tools (protoc, go, readelf, python3, cc,
 * strip, gzip) are required: a missing tool fails its case.
 * Build with -g -fno-omit-frame-pointer; link -lz.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sluice/common.h>

#include "check.h"
#include "obs/pb.h"
#include "obs/profile.h"
#include "proc.h"
#include "util/alloc.h"

/* ---- functions with known names ----------------------------------------- */

static volatile int sink;

__attribute__((noinline)) static void
prof_leaf(void)
{
	sink++;
	sink *= 3;
}

__attribute__((noinline)) static void
prof_mid(void)
{
	prof_leaf();
	sink++;
}

__attribute__((noinline)) static void
prof_other(void)
{
	sink--;
	sink *= 5;
}

__attribute__((noinline)) static void
prof_root(void)
{
	prof_mid();
	prof_other();
}

/* An address inside @fn's body. */
#define IN(fn, off) ((uintptr_t)(fn) + (off))

/* ---- helpers ------------------------------------------------------------ */

static char tmpdir[64]; /* tmpdir_make() */

static void
need_tool(const char *tool)
{
	char cmd[256], out[256];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	if (run_shell(cmd, out, sizeof(out)) != 0) {
		fprintf(stderr, "  required tool missing: %s\n", tool);
		CHECK_FAIL("tool missing");
	}
}

/* ---- a minimal protobuf reader ------------------------------------------ */

struct pbr {
	const uint8_t *p, *end;
};

struct pbf {
	uint32_t field;
	unsigned wire;
	uint64_t v;      /* varint / fixed */
	struct pbr body; /* length-delimited */
};

static uint64_t
rd_varint(struct pbr *r)
{
	uint64_t v = 0;
	unsigned shift = 0;

	for (;;) {
		uint8_t b;

		CHECK(r->p < r->end);
		CHECK(shift < 64);
		b = *r->p++;
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return v;
		shift += 7;
	}
}

/* The next field, or false at the end; a malformed message fails. */
static bool
pb_next(struct pbr *r, struct pbf *f)
{
	uint64_t tag, len;

	if (r->p == r->end)
		return false;
	tag = rd_varint(r);
	f->field = (uint32_t)(tag >> 3);
	f->wire = (unsigned)(tag & 7);
	CHECK(f->field != 0);
	switch (f->wire) {
	case SL_PB_VARINT:
		f->v = rd_varint(r);
		break;
	case SL_PB_I64:
		CHECK(r->end - r->p >= 8);
		memcpy(&f->v, r->p, 8);
		r->p += 8;
		break;
	case SL_PB_LEN:
		len = rd_varint(r);
		CHECK(len <= (uint64_t)(r->end - r->p));
		f->body.p = r->p;
		f->body.end = r->p + len;
		r->p += len;
		break;
	default:
		CHECK_FAIL("unexpected wire type");
	}
	return true;
}

#define MAXN 256

struct dlabel {
	uint64_t key, str, num_unit;
	int64_t num;
};

struct dsample {
	uint64_t locs[SL_PROF_MAX_DEPTH];
	size_t nlocs;
	int64_t vals[SL_PROF_MAX_VALUES];
	size_t nvals;
	struct dlabel labels[4];
	size_t nlabels;
};

struct dmapping {
	uint64_t id, start, limit, offset, filename, build_id, has_functions;
};

struct dlocation {
	uint64_t id, mapping, address, function;
};

struct dfunction {
	uint64_t id, name, system_name;
};

struct dprof {
	char strs[MAXN][128];
	size_t nstrs;
	uint64_t types[SL_PROF_MAX_VALUES][2];
	size_t ntypes;
	struct dsample samples[MAXN];
	size_t nsamples;
	struct dmapping mappings[MAXN];
	size_t nmappings;
	struct dlocation locations[MAXN];
	size_t nlocations;
	struct dfunction functions[MAXN];
	size_t nfunctions;
	uint64_t comments[8];
	size_t ncomments;
	int64_t time_nanos, duration_nanos, period;
	uint64_t period_type[2], default_sample_type;
};

/* Packed or not, as proto3 allows: append each varint to @out. */
static void
rd_repeated(const struct pbf *f, uint64_t *out, size_t *n, size_t max)
{
	struct pbr r = f->body;

	if (f->wire == SL_PB_VARINT) {
		CHECK(*n < max);
		out[(*n)++] = f->v;
		return;
	}
	CHECK_EQ(f->wire, SL_PB_LEN);
	while (r.p < r.end) {
		CHECK(*n < max);
		out[(*n)++] = rd_varint(&r);
	}
}

static void
rd_value_type(struct pbr r, uint64_t *vt)
{
	struct pbf f;

	while (pb_next(&r, &f))
		if (f.field == 1 || f.field == 2)
			vt[f.field - 1] = f.v;
}

static void
rd_sample(struct pbr r, struct dsample *s)
{
	struct pbf f, g;
	uint64_t vals[SL_PROF_MAX_VALUES];
	size_t i;

	memset(s, 0, sizeof(*s));
	while (pb_next(&r, &f)) {
		if (f.field == 1) {
			rd_repeated(&f, s->locs, &s->nlocs, SL_PROF_MAX_DEPTH);
		} else if (f.field == 2) {
			size_t before = s->nvals;

			rd_repeated(&f, vals + before, &s->nvals,
				    SL_PROF_MAX_VALUES);
			for (i = before; i < s->nvals; i++)
				s->vals[i] = (int64_t)vals[i];
		} else if (f.field == 3) {
			struct dlabel *l = &s->labels[s->nlabels];
			struct pbr lr = f.body;

			CHECK(s->nlabels < 4);
			memset(l, 0, sizeof(*l));
			while (pb_next(&lr, &g)) {
				if (g.field == 1)
					l->key = g.v;
				else if (g.field == 2)
					l->str = g.v;
				else if (g.field == 3)
					l->num = (int64_t)g.v;
				else if (g.field == 4)
					l->num_unit = g.v;
			}
			s->nlabels++;
		}
	}
}

/* Varint fields 1..@n of a message into @out[0..n-1]. */
static void
rd_fields(struct pbr r, uint64_t *out, size_t n)
{
	struct pbf f;

	memset(out, 0, n * sizeof(*out));
	while (pb_next(&r, &f))
		if (f.field >= 1 && f.field <= n && f.wire == SL_PB_VARINT)
			out[f.field - 1] = f.v;
}

static void
rd_mapping(struct pbr r, struct dmapping *m)
{
	uint64_t v[7];

	rd_fields(r, v, 7);
	m->id = v[0];
	m->start = v[1];
	m->limit = v[2];
	m->offset = v[3];
	m->filename = v[4];
	m->build_id = v[5];
	m->has_functions = v[6];
}

static void
rd_function(struct pbr r, struct dfunction *fn)
{
	uint64_t v[3];

	rd_fields(r, v, 3);
	fn->id = v[0];
	fn->name = v[1];
	fn->system_name = v[2];
}

static void
rd_location(struct pbr r, struct dlocation *l)
{
	struct pbf f, g;

	memset(l, 0, sizeof(*l));
	while (pb_next(&r, &f)) {
		if (f.field == 1)
			l->id = f.v;
		else if (f.field == 2)
			l->mapping = f.v;
		else if (f.field == 3)
			l->address = f.v;
		else if (f.field == 4) {
			struct pbr lr = f.body;

			CHECK_EQ(l->function, 0); /* one line per location */
			while (pb_next(&lr, &g))
				if (g.field == 1)
					l->function = g.v;
		}
	}
}

static void
decode(const struct sl_buf *gz, struct dprof *d)
{
	unsigned char *raw;
	size_t rawlen;
	struct pbr r;
	struct pbf f;

	memset(d, 0, sizeof(*d));
	raw = gunzip(gz->data, gz->len, &rawlen);
	r.p = raw;
	r.end = raw + rawlen;
	while (pb_next(&r, &f)) {
		switch (f.field) {
		case 1:
			CHECK(d->ntypes < SL_PROF_MAX_VALUES);
			rd_value_type(f.body, d->types[d->ntypes++]);
			break;
		case 2:
			CHECK(d->nsamples < MAXN);
			rd_sample(f.body, &d->samples[d->nsamples++]);
			break;
		case 3:
			CHECK(d->nmappings < MAXN);
			rd_mapping(f.body, &d->mappings[d->nmappings++]);
			break;
		case 4:
			CHECK(d->nlocations < MAXN);
			rd_location(f.body, &d->locations[d->nlocations++]);
			break;
		case 5:
			CHECK(d->nfunctions < MAXN);
			rd_function(f.body, &d->functions[d->nfunctions++]);
			break;
		case 6: {
			size_t n = (size_t)(f.body.end - f.body.p);

			CHECK(d->nstrs < MAXN);
			CHECK(n < sizeof(d->strs[0]));
			memcpy(d->strs[d->nstrs], f.body.p, n);
			d->strs[d->nstrs++][n] = '\0';
			break;
		}
		case 9:
			d->time_nanos = (int64_t)f.v;
			break;
		case 10:
			d->duration_nanos = (int64_t)f.v;
			break;
		case 11:
			rd_value_type(f.body, d->period_type);
			break;
		case 12:
			d->period = (int64_t)f.v;
			break;
		case 13:
			rd_repeated(&f, d->comments, &d->ncomments, 8);
			break;
		case 14:
			d->default_sample_type = f.v;
			break;
		default:
			CHECK_FAIL("unexpected profile field");
		}
	}
	free(raw);
	CHECK(d->nstrs > 0);
	CHECK_STREQ(d->strs[0], "");
}

static const char *
dstr(const struct dprof *d, uint64_t i)
{
	CHECK(i < d->nstrs);
	return d->strs[i];
}

static const struct dlocation *
dloc(const struct dprof *d, uint64_t id)
{
	size_t i;

	for (i = 0; i < d->nlocations; i++)
		if (d->locations[i].id == id)
			return &d->locations[i];
	CHECK_FAIL("no such location");
}

/* The name of location @id's function; "" when it has none. */
static const char *
dloc_name(const struct dprof *d, uint64_t id)
{
	const struct dlocation *l = dloc(d, id);
	size_t i;

	if (!l->function)
		return "";
	for (i = 0; i < d->nfunctions; i++)
		if (d->functions[i].id == l->function)
			return dstr(d, d->functions[i].name);
	CHECK_FAIL("no such function");
}

/* ---- shared fixtures ---------------------------------------------------- */

static const struct sl_prof_type cpu_types[] = {
	{ "samples", "count" },
	{ "cpu", "nanoseconds" },
};
static const struct sl_prof_type cpu_period = { "cpu", "nanoseconds" };

static struct sl_prof *
new_cpu(void)
{
	struct sl_prof *p =
		sl_prof_new(cpu_types, 2, "cpu", &cpu_period, 10000000);

	CHECK(p != NULL);
	return p;
}

static void
add(struct sl_prof *p, const uintptr_t *pcs, size_t n, int64_t count,
    const struct sl_prof_label *labels, size_t nlabels)
{
	int64_t v[2] = { count, count * 10000000 };

	CHECK_OK(sl_prof_add(p, pcs, n, v, labels, nlabels));
}

/* The synthetic profile of the folded/SVG/pprof cases. */
static struct sl_prof *
synthetic(void)
{
	struct sl_prof *p = new_cpu();
	const uintptr_t s1[] = { IN(prof_leaf, 1), IN(prof_mid, 1),
				 IN(prof_root, 1) };
	/* Another PC in the same functions: merged by name when folded. */
	const uintptr_t s2[] = { IN(prof_leaf, 2), IN(prof_mid, 1),
				 IN(prof_root, 1) };
	const uintptr_t s3[] = { IN(prof_mid, 2), IN(prof_root, 1) };
	const uintptr_t s4[] = { IN(prof_other, 1), IN(prof_root, 2) };
	const struct sl_prof_label stage = { "stage", "parse", 0, NULL };

	add(p, s1, 3, 3, NULL, 0);
	add(p, s2, 3, 2, &stage, 1);
	add(p, s3, 2, 4, NULL, 0);
	add(p, s4, 2, 1, NULL, 0);
	add(p, s4, 2, 0, &stage, 1); /* zero: no folded line */
	return p;
}

static void
exe_path(char *path, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", path, size - 1);

	CHECK_GT(n, 0);
	path[n] = '\0';
}

/* ---- the symbolizer ----------------------------------------------------- */

static void
test_sym_static_function(void)
{
	char name[128];

	CHECK_OK(sl_sym_name(IN(prof_leaf, 1), name, sizeof(name)));
	CHECK_STREQ(name, "prof_leaf");
	/* The entry address itself, and a return address - 1 in a caller. */
	CHECK_OK(sl_sym_name(IN(prof_root, 0), name, sizeof(name)));
	CHECK_STREQ(name, "prof_root");
	CHECK_OK(sl_sym_name(IN(prof_mid, 1), name, sizeof(name)));
	CHECK_STREQ(name, "prof_mid");
	/* A short buffer truncates. */
	CHECK_OK(sl_sym_name(IN(prof_leaf, 1), name, 5));
	CHECK_STREQ(name, "prof");
	/* Outside every object: the address in hex. */
	CHECK_EQ(sl_sym_name(16, name, sizeof(name)), SLUICE_ENOENT);
	CHECK_STREQ(name, "0x10");
}

static void
test_sym_main_mapping_build_id(void)
{
	struct sl_sym_mapping m, all[64];
	char exe[PATH_MAX], cmd[PATH_MAX + 64], out[8192], *id;
	size_t n;

	exe_path(exe, sizeof(exe));
	CHECK_OK(sl_sym_mapping(IN(prof_leaf, 1), &m));
	CHECK_STREQ(m.path, exe);
	CHECK(m.start <= IN(prof_leaf, 1) && IN(prof_leaf, 1) < m.limit);
	CHECK_EQ(m.start % 4096, 0);
	CHECK_EQ(m.offset % 4096, 0);
	CHECK_EQ(strlen(m.build_id), 40);
	CHECK_EQ(strspn(m.build_id, "0123456789abcdef"), 40);

	need_tool("readelf");
	snprintf(cmd, sizeof(cmd), "readelf -n '%s'", exe);
	CHECK_EQ(run_shell(cmd, out, sizeof(out)), 0);
	id = strstr(out, "Build ID: ");
	CHECK(id != NULL);
	id += strlen("Build ID: ");
	id[strcspn(id, " \n")] = '\0';
	CHECK_STREQ(m.build_id, id);

	/* The list puts the main program first and includes libc. */
	n = sl_sym_mappings(all, 64);
	CHECK_GT(n, 1);
	CHECK_LE(n, 64);
	CHECK_STREQ(all[0].path, exe);
	CHECK_EQ(sl_sym_mappings(NULL, 0), n);
	CHECK_EQ(sl_sym_mapping(16, &m), SLUICE_ENOENT);
}

static void
test_sym_libc_function(void)
{
	struct sl_sym_mapping m;
	void *libc, *fn;
	char name[128];
	const char *base;

	/* dlsym on libc's own handle: not a PLT stub in the executable,
	 * nor a sanitizer's interceptor. */
	libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
	CHECK(libc != NULL);
	fn = dlsym(libc, "getpid");
	CHECK(fn != NULL);
	CHECK_OK(sl_sym_name((uintptr_t)fn, name, sizeof(name)));
	/* getpid is a weak alias of __getpid; either name is right. */
	if (strcmp(name, "getpid") != 0)
		CHECK_STREQ(name, "__getpid");
	CHECK_OK(sl_sym_mapping((uintptr_t)fn, &m));
	base = strrchr(m.path, '/');
	CHECK(base != NULL);
	CHECK_STREQ(base, "/libc.so.6");
	CHECK_GT(strlen(m.build_id), 0);
	dlclose(libc);
}

/* A stripped shared object, loaded after the symbolizer has scanned:
 * exported functions are named from .dynsym, static ones come back as
 * "[module]"; after dlclose its addresses are unknown again. */
static const char lib_src[] =
	"static int hidden(int x) { return x * 7 + 1; }\n"
	"int exported(int x) { return hidden(x) + 1; }\n"
	"unsigned long get_hidden(void) { return (unsigned long)&hidden; }\n";

/* A versioned definition: .symtab calls it "foo@@V1". */
static const char ver_src[] = "int foo_v1(int x) { return x + 1; }\n"
			      "__asm__(\".symver foo_v1, foo@@V1\");\n";
static const char ver_map[] = "V1 { global: foo; local: *; };\n";

/* Compile @code into tmpdir/@name.so with @flags, then run @post on it
 * (may be ""); dlopen it.  The path goes to @so. */
static void *
build_lib(const char *name, const char *code, const char *flags,
	  const char *post, char *so, size_t size)
{
	char src[128], cmd[1024], out[4096];
	void *h;

	need_tool("cc");
	snprintf(src, sizeof(src), "%s/%s.c", tmpdir, name);
	snprintf(so, size, "%s/%s.so", tmpdir, name);
	write_file(src, code, strlen(code));
	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && cc -shared -fPIC -O0 %s -o '%s' '%s' 2>&1 %s",
		 tmpdir, flags, so, src, post);
	CHECK_EQ(run_shell(cmd, out, sizeof(out)), 0);
	h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
	CHECK(h != NULL);
	return h;
}

/* Objects loaded after the symbolizer's first scan are found.  A stripped
 * one: exported functions are named from .dynsym, static ones come back
 * as "[module]"; after dlclose its addresses are unknown again.  A symbol
 * version suffix is cut from the name. */
static void
test_sym_dlopen_stripped_versioned(void)
{
	char so[128], vso[128], name[128], map[128];
	struct sl_sym_mapping m;
	uintptr_t (*get_hidden)(void);
	uintptr_t exported, hidden, foo;
	void *h, *vh, *sym;

	CHECK_OK(sl_sym_name(IN(prof_leaf, 1), name, sizeof(name)));
	tmpdir_make(tmpdir, sizeof(tmpdir), "sluice-prof");
	need_tool("strip");
	h = build_lib("libstripped", lib_src, "",
		      "&& strip --strip-all libstripped.so 2>&1", so,
		      sizeof(so));
	exported = (uintptr_t)dlsym(h, "exported");
	sym = dlsym(h, "get_hidden");
	CHECK(sym != NULL);
	memcpy(&get_hidden, &sym, sizeof(sym));
	CHECK(exported != 0 && get_hidden != NULL);
	hidden = get_hidden();

	CHECK_OK(sl_sym_name(exported + 1, name, sizeof(name)));
	CHECK_STREQ(name, "exported");
	CHECK_EQ(sl_sym_name(hidden + 1, name, sizeof(name)), SLUICE_ENOENT);
	CHECK_STREQ(name, "[libstripped.so]");
	CHECK_OK(sl_sym_mapping(hidden + 1, &m));
	CHECK_STREQ(m.path, so);
	CHECK_OK(dlclose(h));
	CHECK_EQ(sl_sym_mapping(exported + 1, &m), SLUICE_ENOENT);

	snprintf(map, sizeof(map), "%s/v.map", tmpdir);
	write_file(map, ver_map, strlen(ver_map));
	vh = build_lib("libver", ver_src, "-Wl,--version-script=v.map", "", vso,
		       sizeof(vso));
	foo = (uintptr_t)dlsym(vh, "foo");
	CHECK(foo != 0);
	CHECK_OK(sl_sym_name(foo + 1, name, sizeof(name)));
	CHECK_STREQ(name, "foo");
	CHECK_OK(dlclose(vh));
	tmpdir_remove(tmpdir);
}

struct sym_thread {
	pthread_t thr;
	int failures;
};

static void *
sym_thread_main(void *arg)
{
	struct sym_thread *t = arg;
	const uintptr_t pcs[] = { IN(prof_leaf, 1), IN(prof_mid, 1),
				  IN(prof_root, 1), IN(prof_other, 1) };
	const char *want[] = { "prof_leaf", "prof_mid", "prof_root",
			       "prof_other" };
	struct sl_sym_mapping m;
	char name[64];
	int i;

	for (i = 0; i < 200; i++) {
		size_t k = (size_t)i % 4;

		if (sl_sym_name(pcs[k], name, sizeof(name)) != 0 ||
		    strcmp(name, want[k]) != 0 ||
		    sl_sym_mapping(pcs[k], &m) != 0)
			t->failures++;
	}
	return NULL;
}

/* Threads racing on a cold symbolizer all get the right answers. */
static void
test_sym_threads(void)
{
	struct sym_thread t[4];
	size_t i;

	memset(t, 0, sizeof(t));
	for (i = 0; i < 4; i++)
		CHECK_OK(pthread_create(&t[i].thr, NULL, sym_thread_main,
					&t[i]));
	for (i = 0; i < 4; i++) {
		CHECK_OK(pthread_join(t[i].thr, NULL));
		CHECK_EQ(t[i].failures, 0);
	}
}

/* ---- the builder and the pprof encoding --------------------------------- */

static const struct dsample *
find_sample(const struct dprof *d, const char *leaf, const char *label)
{
	size_t i, j;

	for (i = 0; i < d->nsamples; i++) {
		const struct dsample *s = &d->samples[i];
		const char *l = NULL;

		for (j = 0; j < s->nlabels; j++)
			if (strcmp(dstr(d, s->labels[j].key), "stage") == 0)
				l = dstr(d, s->labels[j].str);
		if (s->nlocs && strcmp(dloc_name(d, s->locs[0]), leaf) == 0 &&
		    (label ? l && strcmp(l, label) == 0 : !l))
			return s;
	}
	return NULL;
}

static void
test_builder_merges_identical_keys(void)
{
	struct sl_prof *p = new_cpu();
	const uintptr_t a[] = { IN(prof_leaf, 1), IN(prof_mid, 1),
				IN(prof_root, 1) };
	const uintptr_t b[] = { IN(prof_other, 1), IN(prof_root, 2) };
	const struct sl_prof_label parse = { "stage", "parse", 0, NULL };
	const struct sl_prof_label route = { "stage", "route", 0, NULL };
	const struct sl_prof_label parse2 = { "stage", "parse", 0, NULL };
	const struct sl_prof_label thr = { "thread", NULL, 42, "id" };
	const struct dsample *s;
	struct sl_buf out;
	struct dprof *d = calloc(1, sizeof(*d));
	uintptr_t deep[SL_PROF_MAX_DEPTH + 8];
	size_t i;

	CHECK(d != NULL);
	add(p, a, 3, 1, &parse, 1);
	add(p, a, 3, 2, &parse2, 1); /* equal label, other storage */
	add(p, a, 3, 4, &route, 1);
	add(p, b, 2, 8, NULL, 0);
	add(p, b, 2, 16, NULL, 0);
	add(p, b, 2, 32, &thr, 1);
	add(p, a, 2, 64, NULL, 0); /* a prefix is another stack */
	for (i = 0; i < SL_PROF_MAX_DEPTH + 8; i++)
		deep[i] = IN(prof_leaf, 1);
	add(p, deep, SL_PROF_MAX_DEPTH + 8, 128, NULL, 0); /* truncated */

	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_pprof(p, &out));
	CHECK(!sl_buf_failed(&out));
	decode(&out, d);
	CHECK_EQ(d->nsamples, 6);
	s = find_sample(d, "prof_leaf", "parse");
	CHECK(s != NULL);
	CHECK_EQ(s->nvals, 2);
	CHECK_EQ(s->vals[0], 3);
	CHECK_EQ(s->vals[1], 30000000);
	CHECK_EQ(s->nlocs, 3);
	s = find_sample(d, "prof_leaf", "route");
	CHECK(s != NULL);
	CHECK_EQ(s->vals[0], 4);
	s = find_sample(d, "prof_other", NULL);
	CHECK(s != NULL);
	CHECK_EQ(s->nlabels, 0);
	CHECK_EQ(s->vals[0], 24);
	for (i = 0; i < d->nsamples; i++) {
		s = &d->samples[i];
		if (s->nlabels == 1 &&
		    strcmp(dstr(d, s->labels[0].key), "thread") == 0) {
			CHECK_EQ(s->labels[0].str, 0);
			CHECK_EQ(s->labels[0].num, 42);
			CHECK_STREQ(dstr(d, s->labels[0].num_unit), "id");
			CHECK_EQ(s->vals[0], 32);
		}
		if (s->vals[0] == 64)
			CHECK_EQ(s->nlocs, 2);
		if (s->vals[0] == 128)
			CHECK_EQ(s->nlocs, SL_PROF_MAX_DEPTH);
	}
	sl_buf_free(&out);
	sl_prof_free(p);
	free(d);
}

static void
test_pprof_fields(void)
{
	struct sl_prof *p = synthetic();
	struct dprof *d = calloc(1, sizeof(*d));
	char exe[PATH_MAX];
	struct sl_sym_mapping m;
	struct sl_buf out;
	size_t i, j;

	CHECK(d != NULL);
	exe_path(exe, sizeof(exe));
	CHECK_OK(sl_sym_mapping(IN(prof_leaf, 1), &m));
	sl_prof_set_time(p, 1700000000123456789LL, 3000000000LL);
	CHECK_OK(sl_prof_add_comment(p, "sluice test"));
	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_pprof(p, &out));
	/* gzip magic: pprof sniffs it. */
	CHECK_GT(out.len, 2);
	CHECK_EQ(out.data[0], 0x1f);
	CHECK_EQ(out.data[1], 0x8b);
	decode(&out, d);

	CHECK_EQ(d->ntypes, 2);
	CHECK_STREQ(dstr(d, d->types[0][0]), "samples");
	CHECK_STREQ(dstr(d, d->types[0][1]), "count");
	CHECK_STREQ(dstr(d, d->types[1][0]), "cpu");
	CHECK_STREQ(dstr(d, d->types[1][1]), "nanoseconds");
	CHECK_STREQ(dstr(d, d->default_sample_type), "cpu");
	CHECK_STREQ(dstr(d, d->period_type[0]), "cpu");
	CHECK_STREQ(dstr(d, d->period_type[1]), "nanoseconds");
	CHECK_EQ(d->period, 10000000);
	CHECK_EQ(d->time_nanos, 1700000000123456789LL);
	CHECK_EQ(d->duration_nanos, 3000000000LL);
	CHECK_EQ(d->ncomments, 1);
	CHECK_STREQ(dstr(d, d->comments[0]), "sluice test");
	CHECK_EQ(d->nsamples, 5);

	/* The main program's mapping comes first, with its build id. */
	CHECK_GT(d->nmappings, 0);
	CHECK_EQ(d->mappings[0].id, 1);
	CHECK_STREQ(dstr(d, d->mappings[0].filename), exe);
	CHECK_STREQ(dstr(d, d->mappings[0].build_id), m.build_id);
	CHECK_EQ(d->mappings[0].start, m.start);
	CHECK_EQ(d->mappings[0].limit, m.limit);
	CHECK_EQ(d->mappings[0].offset, m.offset);
	CHECK_EQ(d->mappings[0].has_functions, 1);

	/* One location per distinct PC: 7 of them in synthetic(). */
	CHECK_EQ(d->nlocations, 7);
	for (i = 0; i < d->nlocations; i++) {
		CHECK_EQ(d->locations[i].mapping, 1);
		CHECK_NE(d->locations[i].function, 0);
		for (j = 0; j < i; j++)
			CHECK_NE(d->locations[i].address,
				 d->locations[j].address);
	}
	/* One function per name. */
	CHECK_EQ(d->nfunctions, 4);
	for (i = 0; i < d->nfunctions; i++)
		CHECK_STREQ(dstr(d, d->functions[i].system_name),
			    dstr(d, d->functions[i].name));
	for (i = 0; i < d->nsamples; i++) {
		const struct dsample *s = &d->samples[i];

		if (s->nlocs == 3) {
			CHECK_STREQ(dloc_name(d, s->locs[0]), "prof_leaf");
			CHECK_STREQ(dloc_name(d, s->locs[1]), "prof_mid");
			CHECK_STREQ(dloc_name(d, s->locs[2]), "prof_root");
			CHECK_EQ(dloc(d, s->locs[1])->address, IN(prof_mid, 1));
		}
	}
	/* Strings are not repeated. */
	for (i = 0; i < d->nstrs; i++)
		for (j = 0; j < i; j++)
			CHECK(strcmp(d->strs[i], d->strs[j]) != 0);
	sl_buf_free(&out);
	sl_prof_free(p);
	free(d);
}

static void
write_pprof_file(struct sl_prof *p, char *path, size_t size)
{
	struct sl_buf out;

	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_pprof(p, &out));
	snprintf(path, size, "%s/profile.pb.gz", tmpdir);
	write_file(path, out.data, out.len);
	sl_buf_free(&out);
}

static void
test_pprof_protoc_decode_raw(void)
{
	struct sl_prof *p = synthetic();
	char path[128], cmd[512], *out;
	const size_t outsize = 1 << 20;

	need_tool("protoc");
	need_tool("gzip");
	out = malloc(outsize);
	CHECK(out != NULL);
	tmpdir_make(tmpdir, sizeof(tmpdir), "sluice-prof");
	write_pprof_file(p, path, sizeof(path));
	snprintf(cmd, sizeof(cmd),
		 "gzip -dc '%s' > '%s.raw' && protoc --decode_raw < '%s.raw' "
		 "2>&1",
		 path, path, path);
	CHECK_EQ(run_shell(cmd, out, outsize), 0);
	CHECK(strstr(out, "6: \"prof_leaf\"") != NULL);
	CHECK(strstr(out, "6: \"nanoseconds\"") != NULL);
	CHECK(strstr(out, "12: 10000000") != NULL);
	tmpdir_remove(tmpdir);
	sl_prof_free(p);
	free(out);
}

static void
test_pprof_go_tool_pprof(void)
{
	struct sl_prof *p = synthetic();
	char path[128], *out;
	const size_t outsize = 1 << 20;

	need_tool("go");
	need_tool("timeout");
	out = malloc(outsize);
	CHECK(out != NULL);
	tmpdir_make(tmpdir, sizeof(tmpdir), "sluice-prof");
	write_pprof_file(p, path, sizeof(path));
	CHECK_EQ(go_pprof(tmpdir, "-top", path, out, outsize), 0);
	/* -top: the leaf functions' flat time and the profile type. */
	if (!strstr(out, "prof_leaf") || !strstr(out, "prof_mid") ||
	    !strstr(out, "Type: cpu"))
		fprintf(stderr, "go tool pprof said:\n%s\n", out);
	CHECK(strstr(out, "prof_leaf") != NULL);
	CHECK(strstr(out, "prof_mid") != NULL);
	CHECK(strstr(out, "Type: cpu") != NULL);

	CHECK_EQ(go_pprof(tmpdir, "-raw", path, out, outsize), 0);
	CHECK(strstr(out, "prof_root") != NULL);
	CHECK(strstr(out, "prof_other") != NULL);
	CHECK(strstr(out, "stage:[parse]") != NULL);
	tmpdir_remove(tmpdir);
	sl_prof_free(p);
	free(out);
}

/* ---- folded and SVG ----------------------------------------------------- */

static void
test_folded_exact(void)
{
	struct sl_prof *p = synthetic();
	struct sl_buf out;

	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_folded(p, 0, &out));
	sl_buf_put(&out, "", 1);
	/* Same functions merge whatever the PC or label; sorted; zero
	 * totals omitted. */
	CHECK_STREQ((const char *)out.data, "prof_root;prof_mid 4\n"
					    "prof_root;prof_mid;prof_leaf 5\n"
					    "prof_root;prof_other 1\n");
	sl_buf_free(&out);

	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_folded(p, 1, &out));
	sl_buf_put(&out, "", 1);
	CHECK_STREQ((const char *)out.data,
		    "prof_root;prof_mid 40000000\n"
		    "prof_root;prof_mid;prof_leaf 50000000\n"
		    "prof_root;prof_other 10000000\n");
	sl_buf_free(&out);

	sl_buf_init(&out);
	CHECK_EQ(sl_prof_write_folded(p, 2, &out), SLUICE_EINVAL);
	sl_buf_free(&out);
	sl_prof_free(p);
}

/* Frames the symbolizer cannot name are written as it names them. */
static void
test_folded_unknown_frame(void)
{
	struct sl_prof *p = new_cpu();
	const uintptr_t s[] = { 0x10, IN(prof_root, 1) };
	struct sl_buf out;

	add(p, s, 2, 9, NULL, 0);
	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_folded(p, 0, &out));
	sl_buf_put(&out, "", 1);
	CHECK_STREQ((const char *)out.data, "prof_root;0x10 9\n");
	sl_buf_free(&out);
	sl_prof_free(p);
}

static void
parse_svg(const struct sl_buf *svg, char *out, size_t size)
{
	char path[128], cmd[1024];

	need_tool("python3");
	snprintf(path, sizeof(path), "%s/flame.svg", tmpdir);
	write_file(path, svg->data, svg->len);
	/* Well-formed XML; print each frame's title. */
	snprintf(cmd, sizeof(cmd),
		 "python3 -c 'import xml.etree.ElementTree as E,sys\n"
		 "t=E.parse(sys.argv[1])\n"
		 "n=\"{http://www.w3.org/2000/svg}\"\n"
		 "for g in t.iter(n+\"g\"):\n"
		 "  print(g.find(n+\"title\").text)' '%s' 2>&1",
		 path);
	CHECK_EQ(run_shell(cmd, out, size), 0);
}

static void
test_svg_well_formed(void)
{
	struct sl_prof *p = synthetic();
	struct sl_buf svg;
	char out[8192];

	tmpdir_make(tmpdir, sizeof(tmpdir), "sluice-prof");
	sl_buf_init(&svg);
	CHECK_OK(sl_prof_write_svg(p, 0, "CPU <&> \"test\"", &svg));
	CHECK(!sl_buf_failed(&svg));
	parse_svg(&svg, out, sizeof(out));
	/* Every frame once, with its total and share of the 10 samples. */
	CHECK(strstr(out, "all (10 samples, 100.00%)\n") != NULL);
	CHECK(strstr(out, "prof_root (10 samples, 100.00%)\n") != NULL);
	CHECK(strstr(out, "prof_mid (9 samples, 90.00%)\n") != NULL);
	CHECK(strstr(out, "prof_leaf (5 samples, 50.00%)\n") != NULL);
	CHECK(strstr(out, "prof_other (1 samples, 10.00%)\n") != NULL);
	CHECK(strstr((const char *)svg.data, "<script") != NULL);
	CHECK(strstr((const char *)svg.data, "&lt;&amp;&gt;") != NULL);
	sl_buf_free(&svg);

	/* Other units are named. */
	sl_buf_init(&svg);
	CHECK_OK(sl_prof_write_svg(p, 1, NULL, &svg));
	parse_svg(&svg, out, sizeof(out));
	CHECK(strstr(out, "prof_leaf (50000000 nanoseconds, 50.00%)\n") !=
	      NULL);
	sl_buf_free(&svg);
	tmpdir_remove(tmpdir);
	sl_prof_free(p);
}

static void
test_empty_profile(void)
{
	struct sl_prof *p = new_cpu();
	struct dprof *d = calloc(1, sizeof(*d));
	struct sl_buf out;
	char buf[4096];

	CHECK(d != NULL);
	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_pprof(p, &out));
	decode(&out, d);
	CHECK_EQ(d->nsamples, 0);
	CHECK_EQ(d->nlocations, 0);
	CHECK_EQ(d->ntypes, 2);
	sl_buf_free(&out);

	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_folded(p, 0, &out));
	CHECK_EQ(out.len, 0);
	sl_buf_free(&out);

	tmpdir_make(tmpdir, sizeof(tmpdir), "sluice-prof");
	sl_buf_init(&out);
	CHECK_OK(sl_prof_write_svg(p, 0, "empty", &out));
	parse_svg(&out, buf, sizeof(buf));
	CHECK_STREQ(buf, "");
	sl_buf_free(&out);
	tmpdir_remove(tmpdir);
	sl_prof_free(p);
	free(d);
}

static void
test_new_rejects_bad_types(void)
{
	struct sl_prof_type many[SL_PROF_MAX_VALUES + 1];

	memset(many, 0, sizeof(many));
	CHECK(sl_prof_new(cpu_types, 0, NULL, NULL, 0) == NULL);
	CHECK(sl_prof_new(many, SL_PROF_MAX_VALUES + 1, NULL, NULL, 0) == NULL);
	CHECK(sl_prof_new(NULL, 1, NULL, NULL, 0) == NULL);
}

/* Every allocation failure is reported, leaks nothing, and a retry
 * works.  The symbolizer warms up first: its cache lives forever. */
static void
test_enomem_everywhere(void)
{
	char name[64];
	unsigned long n;
	bool done = false;

	CHECK_OK(sl_sym_name(IN(prof_leaf, 1), name, sizeof(name)));
	for (n = 1; !done; n++) {
		struct sl_prof *p;
		struct sl_buf a, b, c;
		const uintptr_t s[] = { IN(prof_leaf, 1), IN(prof_root, 1) };
		const struct sl_prof_label l = { "k", "v", 0, NULL };
		const int64_t v[2] = { 1, 2 };
		int r1 = -1, r2 = -1, r3 = -1, r4 = -1;

		CHECK_LT(n, 10000);
		sl_buf_init(&a);
		sl_buf_init(&b);
		sl_buf_init(&c);
		sl_alloc_fail_after(n, 1);
		p = sl_prof_new(cpu_types, 2, "cpu", &cpu_period, 1);
		if (p) {
			r1 = sl_prof_add(p, s, 2, v, &l, 1);
			CHECK(r1 == 0 || r1 == SLUICE_ENOMEM);
			r2 = sl_prof_write_pprof(p, &a);
			CHECK(r2 == 0 || r2 == SLUICE_ENOMEM);
			r3 = sl_prof_write_folded(p, 0, &b);
			CHECK(r3 == 0 || r3 == SLUICE_ENOMEM);
			r4 = sl_prof_write_svg(p, 0, "t", &c);
			CHECK(r4 == 0 || r4 == SLUICE_ENOMEM);
		}
		sl_alloc_fail_after(0, 0);
		done = p && r1 == 0 && r2 == 0 && r3 == 0 && r4 == 0;
		sl_prof_free(p);
		sl_buf_free(&a);
		sl_buf_free(&b);
		sl_buf_free(&c);
	}
	CHECK_GT(n, 5);
}

/* ---- pb.h: nested messages of every length class ------------------------ */

static void
test_pb_nested_long(void)
{
	static const size_t lens[] = { 0,     1,     125,   126,   127,
				       128,   129,   300,   16380, 16381,
				       16382, 16383, 16384, 20000, 2100000 };
	size_t i, k;
	uint8_t *payload = malloc(2100000);

	CHECK(payload != NULL);
	for (k = 0; k < 2100000; k++)
		payload[k] = (uint8_t)(k * 31 + 7);
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		struct sl_buf b;
		struct pbr r, inner, deeper;
		struct pbf f;
		size_t outer, mid;

		/* outer { 1: 99, mid { 2: payload }, 3: 7 }, then 4: 5 */
		sl_buf_init(&b);
		outer = sl_pb_begin(&b, 10);
		sl_pb_uint(&b, 1, 99);
		mid = sl_pb_begin(&b, 11);
		sl_pb_bytes(&b, 2, payload, lens[i]);
		sl_pb_end(&b, mid);
		sl_pb_uint(&b, 3, 7);
		sl_pb_end(&b, outer);
		sl_pb_uint(&b, 4, 5);
		CHECK(!sl_buf_failed(&b));

		r.p = b.data;
		r.end = b.data + b.len;
		CHECK(pb_next(&r, &f));
		CHECK_EQ(f.field, 10);
		CHECK_EQ(f.wire, SL_PB_LEN);
		inner = f.body;
		CHECK(pb_next(&r, &f));
		CHECK_EQ(f.field, 4);
		CHECK_EQ(f.v, 5);
		CHECK(!pb_next(&r, &f));

		CHECK(pb_next(&inner, &f));
		CHECK_EQ(f.field, 1);
		CHECK_EQ(f.v, 99);
		CHECK(pb_next(&inner, &f));
		CHECK_EQ(f.field, 11);
		deeper = f.body;
		CHECK(pb_next(&inner, &f));
		CHECK_EQ(f.field, 3);
		CHECK_EQ(f.v, 7);
		CHECK(!pb_next(&inner, &f));

		CHECK(pb_next(&deeper, &f));
		CHECK_EQ(f.field, 2);
		CHECK_EQ(f.body.end - f.body.p, lens[i]);
		CHECK_MEMEQ(f.body.p, payload, lens[i]);
		CHECK(!pb_next(&deeper, &f));
		sl_buf_free(&b);
	}
	free(payload);
}

CHECK_MAIN(test_sym_static_function, test_sym_main_mapping_build_id,
	   test_sym_libc_function, test_sym_dlopen_stripped_versioned,
	   test_sym_threads, test_builder_merges_identical_keys,
	   test_pprof_fields, test_pprof_protoc_decode_raw,
	   test_pprof_go_tool_pprof, test_folded_exact,
	   test_folded_unknown_frame, test_svg_well_formed, test_empty_profile,
	   test_new_rejects_bad_types, test_enomem_everywhere,
	   test_pb_nested_long)
