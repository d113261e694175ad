/* SPDX-License-Identifier: MIT */
/*
 * profile.c - the profile builder of profile.h and its three encodings:
 * pprof's profile.proto (gzip), folded stacks, and an SVG flame graph.
 *
 * The builder keeps one heap block per distinct (stack, labels) key - the
 * struct, its PCs, its labels and their strings together - found through
 * an open-addressing hash table of indices; sl_prof_add() sums values into
 * an existing block or appends a new one.
 *
 * Encoding works on a struct enc: a string table (interned, index 0 is ""
 * as profile.proto requires) and a location table (one entry per distinct
 * PC, symbolized once through sl_sym_name(), named by a string index).
 * The pprof writer turns locations into Location/Function/Mapping
 * messages; folded and SVG build a tree of frames merged by name, root
 * first, and walk it.
 *
 * Invariants: every hash table is a power of two in size and at most half
 * full; item indices fit in 32 bits.  Not thread-safe: one builder, one
 * thread (the symbolizer it calls has its own lock).
 */
#include "obs/profile.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/common.h>

#include "util/alloc.h"

#define MAX_LABELS 1024 /* per sample; bounds the block size arithmetic */
#define NAME_MAX_  256  /* symbol names are cut here */

/* ---- an open-addressing table of item indices ---------------------------
 * Shared by the sample table, the string table and the PC table: the
 * caller owns the items and supplies the equality test.
 */

struct slot {
	uint32_t item; /* item index + 1; 0 = empty */
	uint32_t hash; /* cached, for probing and for rehashing */
};

struct itab {
	struct slot *s; /* sl_calloc'd, cap entries */
	size_t cap, n;
};

typedef bool itab_eq_fn(const void *ctx, uint32_t item, const void *key);

static void
itab_free(struct itab *t)
{
	sl_free(t->s);
	memset(t, 0, sizeof(*t));
}

static bool
itab_grow(struct itab *t)
{
	size_t cap = t->cap ? t->cap * 2 : 64, i, j;
	struct slot *s;

	if (t->n >= UINT32_MAX / 2 || cap > SIZE_MAX / sizeof(*s))
		return false;
	s = sl_calloc(cap, sizeof(*s));
	if (!s)
		return false;
	for (i = 0; i < t->cap; i++) {
		if (!t->s[i].item)
			continue;
		for (j = t->s[i].hash & (cap - 1); s[j].item;
		     j = (j + 1) & (cap - 1))
			;
		s[j] = t->s[i];
	}
	sl_free(t->s);
	t->s = s;
	t->cap = cap;
	return true;
}

/* The slot holding an item equal to @key, or the empty slot where it
 * belongs (fill it with itab_set); NULL on ENOMEM. */
static struct slot *
itab_lookup(struct itab *t, uint32_t hash, itab_eq_fn *eq, const void *ctx,
	    const void *key)
{
	size_t i;

	if ((t->n + 1) * 2 > t->cap && !itab_grow(t))
		return NULL;
	for (i = hash & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
		struct slot *s = &t->s[i];

		if (!s->item || (s->hash == hash && eq(ctx, s->item - 1, key)))
			return s;
	}
}

static void
itab_set(struct itab *t, struct slot *s, uint32_t hash, uint32_t item)
{
	s->item = item + 1;
	s->hash = hash;
	t->n++;
}

/* FNV-1a, folded to 32 bits. */
static uint64_t
fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

#define FNV_INIT 0xcbf29ce484222325ULL

static uint32_t
fold(uint64_t h)
{
	return (uint32_t)(h ^ (h >> 32));
}

/* ---- the builder -------------------------------------------------------- */

struct sample {
	int64_t values[SL_PROF_MAX_VALUES];
	size_t npcs, nlabels;
	uintptr_t *pcs;               /* in this block */
	struct sl_prof_label *labels; /* in this block, strings too */
};

struct type_copy {
	char *type, *unit;
};

struct sl_prof {
	struct type_copy types[SL_PROF_MAX_VALUES];
	size_t ntypes;
	char *default_type; /* NULL: pprof's default (the last type) */
	struct type_copy period_type; /* .type NULL when not given */
	int64_t period;
	int64_t time_nanos, duration_nanos;
	char **comments;
	size_t ncomments;
	struct sample **samples; /* in insertion order */
	size_t nsamples, cap;
	struct itab index; /* samples by (stack, labels) */
};

/* A key being added: the caller's arrays, not yet copied. */
struct key {
	const uintptr_t *pcs;
	size_t npcs;
	const struct sl_prof_label *labels;
	size_t nlabels;
};

static bool
str_eq(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

static uint64_t
hash_str(uint64_t h, const char *s)
{
	/* NULL and "" differ: a label is a string or a number. */
	return s ? fnv(h, s, strlen(s) + 1) : fnv(h, "\xff", 1);
}

static uint32_t
key_hash(const struct key *k)
{
	uint64_t h = fnv(FNV_INIT, k->pcs, k->npcs * sizeof(*k->pcs));
	size_t i;

	for (i = 0; i < k->nlabels; i++) {
		const struct sl_prof_label *l = &k->labels[i];

		h = hash_str(h, l->key);
		h = hash_str(h, l->str);
		h = fnv(h, &l->num, sizeof(l->num));
		h = hash_str(h, l->num_unit);
	}
	return fold(h);
}

static bool
sample_eq(const void *ctx, uint32_t item, const void *key)
{
	const struct sample *s = ((const struct sl_prof *)ctx)->samples[item];
	const struct key *k = key;
	size_t i;

	if (s->npcs != k->npcs || s->nlabels != k->nlabels ||
	    memcmp(s->pcs, k->pcs, k->npcs * sizeof(*k->pcs)) != 0)
		return false;
	for (i = 0; i < k->nlabels; i++) {
		const struct sl_prof_label *a = &s->labels[i],
					   *b = &k->labels[i];

		if (!str_eq(a->key, b->key) || !str_eq(a->str, b->str) ||
		    a->num != b->num || !str_eq(a->num_unit, b->num_unit))
			return false;
	}
	return true;
}

static bool
copy_type(struct type_copy *dst, const struct sl_prof_type *src)
{
	dst->type = sl_strdup(src->type ? src->type : "");
	dst->unit = sl_strdup(src->unit ? src->unit : "");
	return dst->type && dst->unit;
}

static void
free_type(struct type_copy *t)
{
	sl_free(t->type);
	sl_free(t->unit);
}

struct sl_prof *
sl_prof_new(const struct sl_prof_type *types, size_t ntypes,
	    const char *default_type, const struct sl_prof_type *period_type,
	    int64_t period)
{
	struct sl_prof *p;
	size_t i;

	if (!types || ntypes == 0 || ntypes > SL_PROF_MAX_VALUES)
		return NULL;
	p = sl_calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->ntypes = ntypes;
	for (i = 0; i < ntypes; i++)
		if (!copy_type(&p->types[i], &types[i]))
			goto fail;
	if (default_type) {
		p->default_type = sl_strdup(default_type);
		if (!p->default_type)
			goto fail;
	}
	if (period_type && !copy_type(&p->period_type, period_type))
		goto fail;
	p->period = period;
	return p;

fail:
	sl_prof_free(p);
	return NULL;
}

void
sl_prof_free(struct sl_prof *p)
{
	size_t i;

	if (!p)
		return;
	for (i = 0; i < p->ntypes; i++)
		free_type(&p->types[i]);
	free_type(&p->period_type);
	sl_free(p->default_type);
	for (i = 0; i < p->ncomments; i++)
		sl_free(p->comments[i]);
	sl_free(p->comments);
	for (i = 0; i < p->nsamples; i++)
		sl_free(p->samples[i]);
	sl_free(p->samples);
	itab_free(&p->index);
	sl_free(p);
}

void
sl_prof_set_time(struct sl_prof *p, int64_t time_nanos, int64_t duration_nanos)
{
	p->time_nanos = time_nanos;
	p->duration_nanos = duration_nanos;
}

int
sl_prof_add_comment(struct sl_prof *p, const char *text)
{
	char **c, *s;

	s = sl_strdup(text);
	if (!s)
		return SLUICE_ENOMEM;
	c = sl_realloc(p->comments, (p->ncomments + 1) * sizeof(*c));
	if (!c) {
		sl_free(s);
		return SLUICE_ENOMEM;
	}
	c[p->ncomments++] = s;
	p->comments = c;
	return 0;
}

static size_t
opt_len(const char *s)
{
	return s ? strlen(s) + 1 : 0;
}

/* Copy @s into the block at *@at; NULL stays NULL. */
static const char *
place_str(char **at, const char *s)
{
	char *d = *at;
	size_t n = opt_len(s);

	if (!s)
		return NULL;
	memcpy(d, s, n);
	*at += n;
	return d;
}

/* One block: the sample, its PCs, its labels, then the label strings. */
static struct sample *
new_sample(const struct key *k, const int64_t *values, size_t nvalues)
{
	size_t size = sizeof(struct sample) + k->npcs * sizeof(uintptr_t) +
		      k->nlabels * sizeof(struct sl_prof_label);
	struct sample *s;
	char *strs;
	size_t i;

	for (i = 0; i < k->nlabels; i++)
		size += opt_len(k->labels[i].key) + opt_len(k->labels[i].str) +
			opt_len(k->labels[i].num_unit);
	s = sl_calloc(1, size);
	if (!s)
		return NULL;
	memcpy(s->values, values, nvalues * sizeof(*values));
	s->npcs = k->npcs;
	s->nlabels = k->nlabels;
	s->pcs = (uintptr_t *)(s + 1);
	if (k->npcs)
		memcpy(s->pcs, k->pcs, k->npcs * sizeof(*k->pcs));
	s->labels = (struct sl_prof_label *)(s->pcs + k->npcs);
	strs = (char *)(s->labels + k->nlabels);
	for (i = 0; i < k->nlabels; i++) {
		s->labels[i].key = place_str(
			&strs, k->labels[i].key ? k->labels[i].key : "");
		s->labels[i].str = place_str(&strs, k->labels[i].str);
		s->labels[i].num = k->labels[i].num;
		s->labels[i].num_unit = place_str(&strs, k->labels[i].num_unit);
	}
	return s;
}

int
sl_prof_add(struct sl_prof *p, const uintptr_t *pcs, size_t npcs,
	    const int64_t *values, const struct sl_prof_label *labels,
	    size_t nlabels)
{
	struct key k = { pcs, npcs, labels, nlabels };
	struct sample *s, **arr;
	struct slot *slot;
	uint32_t h;
	size_t i;

	if (nlabels > MAX_LABELS || (npcs && !pcs) || (nlabels && !labels))
		return SLUICE_EINVAL;
	if (k.npcs > SL_PROF_MAX_DEPTH)
		k.npcs = SL_PROF_MAX_DEPTH; /* keep the leaf end */
	h = key_hash(&k);
	slot = itab_lookup(&p->index, h, sample_eq, p, &k);
	if (!slot)
		return SLUICE_ENOMEM;
	if (slot->item) {
		s = p->samples[slot->item - 1];
		for (i = 0; i < p->ntypes; i++)
			s->values[i] += values[i];
		return 0;
	}
	if (p->nsamples == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 64;

		arr = sl_realloc(p->samples, cap * sizeof(*arr));
		if (!arr)
			return SLUICE_ENOMEM;
		p->samples = arr;
		p->cap = cap;
	}
	s = new_sample(&k, values, p->ntypes);
	if (!s)
		return SLUICE_ENOMEM;
	p->samples[p->nsamples] = s;
	itab_set(&p->index, slot, h, (uint32_t)p->nsamples);
	p->nsamples++;
	return 0;
}

/* ---- encoding state: strings and locations ----------------------------- */

struct loc {
	uintptr_t pc;
	uint32_t name;    /* string index of the function name (or
			     fallback) */
	uint32_t mapping; /* 1-based mapping id, 0 = none (pprof only) */
	bool named;       /* the symbolizer found a function */
};

struct enc {
	const struct sl_prof *p;
	char **strs; /* string table; strs[0] is "" */
	size_t nstrs, capstrs;
	struct itab strindex;
	struct loc *locs;
	size_t nlocs, caplocs;
	struct itab locindex;
	bool failed; /* ENOMEM somewhere: the output is not usable */
};

/* @arr with room for item @n (moved, *@cap updated), or NULL with @arr
 * untouched. */
static void *
grow(void *arr, size_t *cap, size_t n, size_t size)
{
	size_t c = *cap ? *cap * 2 : 64;
	void *q;

	if (n < *cap)
		return arr;
	if (c > SIZE_MAX / size)
		return NULL;
	q = sl_realloc(arr, c * size);
	if (q)
		*cap = c;
	return q;
}

static bool
strs_eq(const void *ctx, uint32_t item, const void *key)
{
	return strcmp(((const struct enc *)ctx)->strs[item], key) == 0;
}

/* The index of @s in the string table, adding it; 0 after ENOMEM. */
static uint32_t
intern(struct enc *e, const char *s)
{
	uint32_t h = fold(fnv(FNV_INIT, s, strlen(s)));
	struct slot *slot;
	char *copy, **strs;

	if (e->failed)
		return 0;
	slot = itab_lookup(&e->strindex, h, strs_eq, e, s);
	if (slot && slot->item)
		return slot->item - 1;
	copy = sl_strdup(s);
	strs = grow(e->strs, &e->capstrs, e->nstrs, sizeof(*e->strs));
	if (!slot || !copy || !strs) {
		sl_free(copy);
		e->failed = true;
		return 0;
	}
	e->strs = strs;
	e->strs[e->nstrs] = copy;
	itab_set(&e->strindex, slot, h, (uint32_t)e->nstrs);
	return (uint32_t)e->nstrs++;
}

static bool
locs_eq(const void *ctx, uint32_t item, const void *key)
{
	return ((const struct enc *)ctx)->locs[item].pc ==
	       *(const uintptr_t *)key;
}

/* The location of @pc (symbolized on first sight); 0 after ENOMEM. */
static uint32_t
loc_of(struct enc *e, uintptr_t pc)
{
	uint32_t h = fold(fnv(FNV_INIT, &pc, sizeof(pc)));
	char name[NAME_MAX_];
	struct slot *slot;
	struct loc *l;

	if (e->failed)
		return 0;
	slot = itab_lookup(&e->locindex, h, locs_eq, e, &pc);
	if (slot && slot->item)
		return slot->item - 1;
	l = slot ? grow(e->locs, &e->caplocs, e->nlocs, sizeof(*e->locs))
		 : NULL;
	if (!l) {
		e->failed = true;
		return 0;
	}
	e->locs = l;
	l = &e->locs[e->nlocs];
	memset(l, 0, sizeof(*l));
	l->pc = pc;
	l->named = sl_sym_name(pc, name, sizeof(name)) == 0;
	l->name = intern(e, name);
	itab_set(&e->locindex, slot, h, (uint32_t)e->nlocs);
	return (uint32_t)e->nlocs++;
}

static void
enc_init(struct enc *e, const struct sl_prof *p)
{
	memset(e, 0, sizeof(*e));
	e->p = p;
	intern(e, ""); /* index 0, as profile.proto requires */
}

static void
enc_free(struct enc *e)
{
	size_t i;

	for (i = 0; i < e->nstrs; i++)
		sl_free(e->strs[i]);
	sl_free(e->strs);
	itab_free(&e->strindex);
	sl_free(e->locs);
	itab_free(&e->locindex);
}

/* ---- profile.proto ------------------------------------------------------ */

/* Field numbers of google/pprof proto/profile.proto. */
enum {
	PROFILE_SAMPLE_TYPE = 1,
	PROFILE_SAMPLE = 2,
	PROFILE_MAPPING = 3,
	PROFILE_LOCATION = 4,
	PROFILE_FUNCTION = 5,
	PROFILE_STRING_TABLE = 6,
	PROFILE_TIME_NANOS = 9,
	PROFILE_DURATION_NANOS = 10,
	PROFILE_PERIOD_TYPE = 11,
	PROFILE_PERIOD = 12,
	PROFILE_COMMENT = 13,
	PROFILE_DEFAULT_SAMPLE_TYPE = 14,
	VALUETYPE_TYPE = 1,
	VALUETYPE_UNIT = 2,
	SAMPLE_LOCATION_ID = 1,
	SAMPLE_VALUE = 2,
	SAMPLE_LABEL = 3,
	LABEL_KEY = 1,
	LABEL_STR = 2,
	LABEL_NUM = 3,
	LABEL_NUM_UNIT = 4,
	MAPPING_ID = 1,
	MAPPING_MEMORY_START = 2,
	MAPPING_MEMORY_LIMIT = 3,
	MAPPING_FILE_OFFSET = 4,
	MAPPING_FILENAME = 5,
	MAPPING_BUILD_ID = 6,
	MAPPING_HAS_FUNCTIONS = 7,
	LOCATION_ID = 1,
	LOCATION_MAPPING_ID = 2,
	LOCATION_ADDRESS = 3,
	LOCATION_LINE = 4,
	LINE_FUNCTION_ID = 1,
	FUNCTION_ID = 1,
	FUNCTION_NAME = 2,
	FUNCTION_SYSTEM_NAME = 3,
};

static void
put_value_type(struct enc *e, struct sl_buf *b, uint32_t field,
	       const struct type_copy *t)
{
	size_t m = sl_pb_begin(b, field);

	sl_pb_uint(b, VALUETYPE_TYPE, intern(e, t->type));
	sl_pb_uint(b, VALUETYPE_UNIT, intern(e, t->unit));
	sl_pb_end(b, m);
}

static void
put_sample(struct enc *e, struct sl_buf *b, const struct sample *s)
{
	size_t m = sl_pb_begin(b, PROFILE_SAMPLE), m2, i;

	if (s->npcs) {
		m2 = sl_pb_begin(b, SAMPLE_LOCATION_ID);
		for (i = 0; i < s->npcs; i++)
			sl_pb_varint(b, loc_of(e, s->pcs[i]) + 1ULL);
		sl_pb_end(b, m2);
	}
	m2 = sl_pb_begin(b, SAMPLE_VALUE);
	for (i = 0; i < e->p->ntypes; i++)
		sl_pb_varint(b, (uint64_t)s->values[i]);
	sl_pb_end(b, m2);
	for (i = 0; i < s->nlabels; i++) {
		const struct sl_prof_label *l = &s->labels[i];

		m2 = sl_pb_begin(b, SAMPLE_LABEL);
		sl_pb_uint(b, LABEL_KEY, intern(e, l->key));
		if (l->str) {
			sl_pb_uint(b, LABEL_STR, intern(e, l->str));
		} else {
			sl_pb_int(b, LABEL_NUM, l->num);
			if (l->num_unit)
				sl_pb_uint(b, LABEL_NUM_UNIT,
					   intern(e, l->num_unit));
		}
		sl_pb_end(b, m2);
	}
	sl_pb_end(b, m);
}

/*
 * Mappings (all executable segments of loaded objects, main program
 * first), each location's mapping id, then the Mapping messages:
 * has_functions only when every location in the mapping was named, so
 * pprof still tries its own symbolization for the others.
 */
static void
put_mappings(struct enc *e, struct sl_buf *b)
{
	struct sl_sym_mapping *maps = NULL;
	size_t n, got, i, j, m;
	bool *unnamed = NULL;

	n = sl_sym_mappings(NULL, 0);
	if (n) {
		maps = sl_calloc(n, sizeof(*maps));
		unnamed = sl_calloc(n, sizeof(*unnamed));
		if (!maps || !unnamed) {
			e->failed = true;
			goto out;
		}
		got = sl_sym_mappings(maps, n); /* a dlclose since? */
		if (got < n)
			n = got;
	}
	for (i = 0; i < e->nlocs; i++) {
		struct loc *l = &e->locs[i];

		for (j = 0; j < n; j++) {
			if (l->pc >= maps[j].start && l->pc < maps[j].limit) {
				l->mapping = (uint32_t)(j + 1);
				unnamed[j] = unnamed[j] || !l->named;
				break;
			}
		}
	}
	for (j = 0; j < n; j++) {
		m = sl_pb_begin(b, PROFILE_MAPPING);
		sl_pb_uint(b, MAPPING_ID, j + 1);
		sl_pb_uint(b, MAPPING_MEMORY_START, maps[j].start);
		sl_pb_uint(b, MAPPING_MEMORY_LIMIT, maps[j].limit);
		sl_pb_uint(b, MAPPING_FILE_OFFSET, maps[j].offset);
		sl_pb_uint(b, MAPPING_FILENAME, intern(e, maps[j].path));
		sl_pb_uint(b, MAPPING_BUILD_ID, intern(e, maps[j].build_id));
		if (!unnamed[j])
			sl_pb_uint(b, MAPPING_HAS_FUNCTIONS, 1);
		sl_pb_end(b, m);
	}
out:
	sl_free(maps);
	sl_free(unnamed);
}

/* Locations, then one Function per distinct name (ids in order of first
 * use, so the second pass emits each when its id comes up). */
static void
put_locations(struct enc *e, struct sl_buf *b)
{
	uint32_t *fn_of_str, nfns = 0, done = 0;
	size_t i, m, m2;

	fn_of_str = sl_calloc(e->nstrs, sizeof(*fn_of_str));
	if (!fn_of_str) {
		e->failed = true;
		return;
	}
	for (i = 0; i < e->nlocs; i++) {
		const struct loc *l = &e->locs[i];

		m = sl_pb_begin(b, PROFILE_LOCATION);
		sl_pb_uint(b, LOCATION_ID, i + 1);
		if (l->mapping)
			sl_pb_uint(b, LOCATION_MAPPING_ID, l->mapping);
		sl_pb_uint(b, LOCATION_ADDRESS, l->pc);
		if (l->named) {
			if (!fn_of_str[l->name])
				fn_of_str[l->name] = ++nfns;
			m2 = sl_pb_begin(b, LOCATION_LINE);
			sl_pb_uint(b, LINE_FUNCTION_ID, fn_of_str[l->name]);
			sl_pb_end(b, m2);
		}
		sl_pb_end(b, m);
	}
	for (i = 0; i < e->nlocs && done < nfns; i++) {
		const struct loc *l = &e->locs[i];

		if (!l->named || fn_of_str[l->name] != done + 1)
			continue;
		done++;
		m = sl_pb_begin(b, PROFILE_FUNCTION);
		sl_pb_uint(b, FUNCTION_ID, done);
		sl_pb_uint(b, FUNCTION_NAME, l->name);
		sl_pb_uint(b, FUNCTION_SYSTEM_NAME, l->name);
		sl_pb_end(b, m);
	}
	sl_free(fn_of_str);
}

int
sl_prof_write_pprof(struct sl_prof *p, struct sl_buf *out)
{
	struct sl_buf b;
	struct enc e;
	size_t i;
	int rc;

	sl_buf_init(&b);
	enc_init(&e, p);
	for (i = 0; i < p->ntypes; i++)
		put_value_type(&e, &b, PROFILE_SAMPLE_TYPE, &p->types[i]);
	for (i = 0; i < p->nsamples; i++)
		put_sample(&e, &b, p->samples[i]);
	/* Mappings before locations: they set each location's mapping. */
	put_mappings(&e, &b);
	put_locations(&e, &b);
	for (i = 0; i < p->ncomments; i++)
		sl_pb_uint(&b, PROFILE_COMMENT, intern(&e, p->comments[i]));
	if (p->time_nanos)
		sl_pb_int(&b, PROFILE_TIME_NANOS, p->time_nanos);
	if (p->duration_nanos)
		sl_pb_int(&b, PROFILE_DURATION_NANOS, p->duration_nanos);
	if (p->period_type.type) {
		put_value_type(&e, &b, PROFILE_PERIOD_TYPE, &p->period_type);
		sl_pb_int(&b, PROFILE_PERIOD, p->period);
	}
	if (p->default_type)
		sl_pb_uint(&b, PROFILE_DEFAULT_SAMPLE_TYPE,
			   intern(&e, p->default_type));
	/* Last: every string is interned by now. */
	for (i = 0; i < e.nstrs; i++)
		sl_pb_string(&b, PROFILE_STRING_TABLE, e.strs[i]);
	if (e.failed || sl_buf_failed(&b))
		rc = SLUICE_ENOMEM;
	else
		rc = sl_gzip(b.data, b.len, out);
	sl_buf_free(&b);
	enc_free(&e);
	return rc;
}

/* ---- the frame tree (folded, SVG) --------------------------------------- */

struct node {
	uint32_t name;    /* string index */
	uint32_t child;   /* first child + 1, 0 = none */
	uint32_t sibling; /* next sibling + 1, 0 = none */
	int64_t total;    /* this frame and everything above it */
	int64_t self;     /* stacks ending here */
};

struct tree {
	struct enc e;
	struct node *n; /* n[0] is the root, "all" */
	size_t len, cap;
	size_t depth; /* deepest stack */
};

static uint32_t
child_of(struct tree *t, uint32_t parent, uint32_t name)
{
	uint32_t c, *link;
	struct node *n;

	for (c = t->n[parent].child; c; c = t->n[c - 1].sibling)
		if (t->n[c - 1].name == name)
			return c - 1;
	n = grow(t->n, &t->cap, t->len, sizeof(*t->n));
	if (!n) {
		t->e.failed = true;
		return 0;
	}
	t->n = n;
	link = &t->n[parent].child;
	while (*link)
		link = &t->n[*link - 1].sibling;
	memset(&t->n[t->len], 0, sizeof(t->n[0]));
	t->n[t->len].name = name;
	*link = (uint32_t)(t->len + 1);
	return (uint32_t)t->len++;
}

/* Build the tree of sample type @index; ENOMEM or EINVAL. */
static int
tree_build(struct tree *t, const struct sl_prof *p, size_t index)
{
	size_t i, f;

	memset(t, 0, sizeof(*t));
	enc_init(&t->e, p);
	if (index >= p->ntypes)
		return SLUICE_EINVAL;
	t->n = grow(NULL, &t->cap, 0, sizeof(*t->n));
	if (!t->n)
		return SLUICE_ENOMEM;
	memset(&t->n[0], 0, sizeof(t->n[0]));
	t->n[0].name = intern(&t->e, "all");
	t->len = 1;
	for (i = 0; i < p->nsamples && !t->e.failed; i++) {
		const struct sample *s = p->samples[i];
		int64_t v = s->values[index];
		uint32_t cur = 0;

		t->n[0].total += v;
		for (f = s->npcs; f-- > 0 && !t->e.failed;) {
			uint32_t l = loc_of(&t->e, s->pcs[f]);

			if (t->e.failed)
				break;
			cur = child_of(t, cur, t->e.locs[l].name);
			t->n[cur].total += v;
		}
		t->n[cur].self += v;
		if (s->npcs > t->depth)
			t->depth = s->npcs;
	}
	return t->e.failed ? SLUICE_ENOMEM : 0;
}

static void
tree_free(struct tree *t)
{
	enc_free(&t->e);
	sl_free(t->n);
}

/* ---- folded stacks ------------------------------------------------------ */

struct lines {
	struct sl_buf text; /* NUL-terminated lines, value included */
	size_t *off;        /* start of each line in text */
	size_t n, cap;
	bool failed;
};

/* A name as a folded frame: ';' separates frames and ' ' the value. */
static void
put_frame_name(struct sl_buf *b, const char *s)
{
	for (; *s; s++) {
		char c = *s;

		if (c == ';' || c == ' ' || c == '\n' || c == '\r')
			c = '_';
		sl_buf_put(b, &c, 1);
	}
}

static void
fold_node(struct tree *t, uint32_t node, uint32_t *path, size_t depth,
	  struct lines *ls)
{
	const struct node *nd = &t->n[node];
	uint32_t c;
	size_t i;

	if (node) /* the root "all" is not a frame */
		path[depth++] = nd->name;
	if (nd->self && depth) {
		size_t *off = grow(ls->off, &ls->cap, ls->n, sizeof(*ls->off));

		if (!off) {
			ls->failed = true;
			return;
		}
		ls->off = off;
		ls->off[ls->n++] = ls->text.len;
		for (i = 0; i < depth; i++) {
			if (i)
				sl_buf_put(&ls->text, ";", 1);
			put_frame_name(&ls->text, t->e.strs[path[i]]);
		}
		sl_buf_printf(&ls->text, " %jd", (intmax_t)nd->self);
		sl_buf_put(&ls->text, "", 1);
	}
	for (c = nd->child; c; c = t->n[c - 1].sibling)
		fold_node(t, c - 1, path, depth, ls);
}

static int
cmp_line(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int
sl_prof_write_folded(struct sl_prof *p, size_t index, struct sl_buf *out)
{
	uint32_t path[SL_PROF_MAX_DEPTH + 1];
	struct lines ls;
	struct tree t;
	const char **v = NULL;
	size_t i;
	int rc;

	memset(&ls, 0, sizeof(ls));
	rc = tree_build(&t, p, index);
	if (rc)
		goto out;
	fold_node(&t, 0, path, 0, &ls);
	if (ls.failed || sl_buf_failed(&ls.text)) {
		rc = SLUICE_ENOMEM;
		goto out;
	}
	/* Sorted, as flamegraph.pl's stackcollapse tools print them. */
	if (ls.n) {
		v = sl_calloc(ls.n, sizeof(*v));
		if (!v) {
			rc = SLUICE_ENOMEM;
			goto out;
		}
		for (i = 0; i < ls.n; i++)
			v[i] = (const char *)ls.text.data + ls.off[i];
		qsort(v, ls.n, sizeof(*v), cmp_line);
	}
	for (i = 0; i < ls.n; i++) {
		sl_buf_puts(out, v[i]);
		sl_buf_put(out, "\n", 1);
	}
	rc = sl_buf_failed(out) ? SLUICE_ENOMEM : 0;
out:
	sl_free(v);
	sl_free(ls.off);
	sl_buf_free(&ls.text);
	tree_free(&t);
	return rc;
}

/* ---- SVG flame graph ---------------------------------------------------- */

/* Layout as flamegraph.pl draws it. */
#define SVG_WIDTH     1200
#define SVG_FRAME_H   16
#define SVG_FONT      12
#define SVG_CHAR_W    (SVG_FONT * 0.59) /* average glyph width */
#define SVG_XPAD      10
#define SVG_TOP       (SVG_FONT * 3)
#define SVG_BOTTOM    (SVG_FONT * 2 + 10)
#define SVG_MIN_WIDTH 0.1 /* px: narrower frames are not drawn */

struct svg {
	struct tree *t;
	struct sl_buf *out;
	const char *unit; /* "samples" for counts */
	double scale;     /* px per unit of value */
	double total;
	int height;
};

/* XML text or attribute: escaped; bytes outside printable ASCII become
 * '?' (symbol names are ASCII; anything else could break the XML). */
static void
put_xml(struct sl_buf *b, const char *s, size_t max)
{
	size_t i;

	for (i = 0; i < max && s[i]; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '&')
			sl_buf_puts(b, "&amp;");
		else if (c == '<')
			sl_buf_puts(b, "&lt;");
		else if (c == '>')
			sl_buf_puts(b, "&gt;");
		else if (c == '"')
			sl_buf_puts(b, "&quot;");
		else if (c < 0x20 || c >= 0x7f)
			sl_buf_put(b, "?", 1);
		else
			sl_buf_put(b, &s[i], 1);
	}
}

/* Warm colours from the name's hash, stable across runs. */
static void
put_color(struct sl_buf *b, const char *name)
{
	uint64_t h = fnv(FNV_INIT, name, strlen(name));

	sl_buf_printf(b, "rgb(%u,%u,%u)", 205 + (unsigned)(h % 51),
		      (unsigned)((h >> 16) % 231), (unsigned)((h >> 32) % 56));
}

struct child_ref {
	const char *name;
	uint32_t node;
};

static int
cmp_child(const void *a, const void *b)
{
	return strcmp(((const struct child_ref *)a)->name,
		      ((const struct child_ref *)b)->name);
}

static void
svg_frame(struct svg *g, uint32_t node, size_t depth, int64_t offset)
{
	const struct node *nd = &g->t->n[node];
	const char *name = g->t->e.strs[nd->name];
	double x = SVG_XPAD + (double)offset * g->scale;
	double w = (double)nd->total * g->scale;
	double y = g->height - SVG_BOTTOM - (double)(depth + 1) * SVG_FRAME_H;
	struct child_ref *kids = NULL;
	size_t n = 0, i, fit, len = strlen(name);
	uint32_t c;
	struct sl_buf *b = g->out;

	if (nd->total <= 0 || w < SVG_MIN_WIDTH)
		return;
	sl_buf_printf(b,
		      "<g class=\"f\" data-x=\"%.2f\" data-w=\"%.2f\" "
		      "data-y=\"%.1f\" data-n=\"",
		      x, w, y);
	put_xml(b, name, len);
	sl_buf_puts(b, "\"><title>");
	put_xml(b, name, len);
	sl_buf_printf(b, " (%jd %s, %.2f%%)</title>", (intmax_t)nd->total,
		      g->unit, 100.0 * (double)nd->total / g->total);
	sl_buf_printf(b,
		      "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" "
		      "height=\"%d\" fill=\"",
		      x, y, w, SVG_FRAME_H - 1);
	put_color(b, name);
	sl_buf_printf(b, "\" rx=\"2\" ry=\"2\"/><text x=\"%.2f\" y=\"%.1f\">",
		      x + 3, y + SVG_FRAME_H - 4.5);
	/* Clip the label to the frame, "..." style, as flamegraph.pl. */
	fit = (size_t)(w / SVG_CHAR_W);
	if (fit >= 3) {
		if (len <= fit) {
			put_xml(b, name, len);
		} else {
			put_xml(b, name, fit - 2);
			sl_buf_puts(b, "..");
		}
	}
	sl_buf_puts(b, "</text></g>\n");

	for (c = nd->child; c; c = g->t->n[c - 1].sibling)
		n++;
	if (!n)
		return;
	kids = sl_calloc(n, sizeof(*kids));
	if (!kids) {
		g->t->e.failed = true;
		return;
	}
	for (c = nd->child, i = 0; c; c = g->t->n[c - 1].sibling, i++) {
		kids[i].node = c - 1;
		kids[i].name = g->t->e.strs[g->t->n[c - 1].name];
	}
	qsort(kids, n, sizeof(*kids), cmp_child);
	for (i = 0; i < n; i++) {
		const struct node *k = &g->t->n[kids[i].node];

		svg_frame(g, kids[i].node, depth + 1, offset);
		if (k->total > 0)
			offset += k->total;
	}
	sl_free(kids);
}

/* Click a frame to zoom into it (its ancestors stretch, dimmed; everything
 * else hides); click "Reset Zoom" to undo; hovering shows the title. */
#define SVG_SCRIPT                                                               \
	"var W=%d,XP=%d,CW=%.3f;\n"                                              \
	"function fit(t,w){var n=Math.floor(w/CW);if(n<3)return \"\";"           \
	"return t.length<=n?t:t.substring(0,n-2)+\"..\";}\n"                     \
	"function num(f,a){return parseFloat(f.getAttribute(a));}\n"             \
	"function show(f,x,w,on,dim){var r=f.getElementsByTagName(\"rect\")[0]," \
	"t=f.getElementsByTagName(\"text\")[0];r.setAttribute(\"x\",x);"         \
	"r.setAttribute(\"width\",w);t.setAttribute(\"x\",x+3);"                 \
	"t.textContent=fit(f.getAttribute(\"data-n\"),w);"                       \
	"f.style.display=on?\"\":\"none\";f.style.opacity=dim?\"0.5\":\"\";}\n"  \
	"function frames(){return document.querySelectorAll(\"g.f\");}\n"        \
	"function zoom(g){var cx=num(g,\"data-x\"),cw=num(g,\"data-w\"),"        \
	"cy=num(g,\"data-y\"),s=(W-2*XP)/cw,fs=frames(),e=0.001;\n"              \
	" for(var i=0;i<fs.length;i++){var f=fs[i],x=num(f,\"data-x\"),"         \
	"w=num(f,\"data-w\"),y=num(f,\"data-y\");\n"                             \
	"  if(y>cy){if(x<=cx+e&&x+w>=cx+cw-e)show(f,XP,W-2*XP,true,true);"       \
	"else show(f,x,w,false,false);}\n"                                       \
	"  else if(x>=cx-e&&x+w<=cx+cw+e)show(f,XP+(x-cx)*s,w*s,true,false);\n"  \
	"  else show(f,x,w,false,false);}\n"                                     \
	" document.getElementById(\"reset\").style.opacity=\"1\";}\n"            \
	"function reset(){var fs=frames();for(var i=0;i<fs.length;i++)"          \
	"show(fs[i],num(fs[i],\"data-x\"),num(fs[i],\"data-w\"),true,false);"    \
	"document.getElementById(\"reset\").style.opacity=\"0\";}\n"             \
	"function frame(e){var n=e.target;while(n&&n.getAttribute&&"             \
	"n.getAttribute(\"class\")!==\"f\")n=n.parentNode;"                      \
	"return n&&n.getAttribute?n:null;}\n"                                    \
	"document.addEventListener(\"click\",function(e){"                       \
	"if(e.target.id===\"reset\"){reset();return;}"                           \
	"var f=frame(e);if(f)zoom(f);},false);\n"                                \
	"document.addEventListener(\"mouseover\",function(e){var f=frame(e);"    \
	"document.getElementById(\"details\").textContent=f?"                    \
	"f.getElementsByTagName(\"title\")[0].textContent:\" \";},false);\n"

int
sl_prof_write_svg(struct sl_prof *p, size_t index, const char *title,
		  struct sl_buf *out)
{
	struct tree t;
	struct svg g;
	int rc;

	rc = tree_build(&t, p, index);
	if (rc) {
		tree_free(&t);
		return rc;
	}
	memset(&g, 0, sizeof(g));
	g.t = &t;
	g.out = out;
	g.unit = strcmp(p->types[index].unit, "count") == 0
			 ? "samples"
			 : p->types[index].unit;
	g.total = (double)t.n[0].total;
	g.scale = t.n[0].total > 0 ? (SVG_WIDTH - 2 * SVG_XPAD) / g.total : 0;
	g.height = (int)(t.depth + 1) * SVG_FRAME_H + SVG_TOP + SVG_BOTTOM;

	sl_buf_printf(out,
		      "<?xml version=\"1.0\" standalone=\"no\"?>\n"
		      "<svg version=\"1.1\" width=\"%d\" height=\"%d\" "
		      "viewBox=\"0 0 %d %d\" "
		      "xmlns=\"http://www.w3.org/2000/svg\">\n"
		      "<style>text{font-family:Verdana,sans-serif;"
		      "font-size:%dpx;fill:#000}g.f:hover rect{stroke:#000;"
		      "stroke-width:0.5}g.f{cursor:pointer}"
		      "#reset{cursor:pointer}</style>\n<script><![CDATA[\n",
		      SVG_WIDTH, g.height, SVG_WIDTH, g.height, SVG_FONT);
	sl_buf_printf(out, SVG_SCRIPT, SVG_WIDTH, SVG_XPAD, SVG_CHAR_W);
	sl_buf_printf(out,
		      "]]></script>\n"
		      "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" "
		      "fill=\"#f8f8f0\"/>\n"
		      "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" "
		      "style=\"font-size:17px\">",
		      SVG_WIDTH, g.height, SVG_WIDTH / 2, SVG_FONT * 2);
	put_xml(out, title ? title : "Flame Graph", SIZE_MAX);
	sl_buf_printf(out,
		      "</text>\n<text id=\"reset\" x=\"%d\" y=\"%d\" "
		      "style=\"opacity:0\">Reset Zoom</text>\n"
		      "<text id=\"details\" x=\"%d\" y=\"%d\"> </text>\n",
		      SVG_XPAD, SVG_FONT * 2, SVG_XPAD, g.height - SVG_FONT);
	if (t.n[0].total > 0)
		svg_frame(&g, 0, 0, 0);
	else
		sl_buf_printf(out,
			      "<text x=\"%d\" y=\"%d\" "
			      "text-anchor=\"middle\">no samples</text>\n",
			      SVG_WIDTH / 2, g.height / 2);
	sl_buf_puts(out, "</svg>\n");
	rc = t.e.failed || sl_buf_failed(out) ? SLUICE_ENOMEM : 0;
	tree_free(&t);
	return rc;
}

/* ---- handing a profile out ---------------------------------------------- */

int
sl_prof_encode(struct sl_prof *p, enum sluice_profile_format format,
	       size_t index, const char *title, char **data, size_t *len)
{
	struct sl_buf b;
	int rc;

	sl_buf_init(&b);
	switch (format) {
	case SLUICE_PROFILE_PPROF:
		rc = sl_prof_write_pprof(p, &b);
		break;
	case SLUICE_PROFILE_FOLDED:
		rc = sl_prof_write_folded(p, index, &b);
		break;
	case SLUICE_PROFILE_SVG:
		rc = sl_prof_write_svg(p, index, title, &b);
		break;
	default:
		rc = SLUICE_EINVAL;
		break;
	}
	rc = sl_buf_finish(&b, rc, len);
	if (rc == 0)
		*data = (char *)b.data;
	return rc;
}
