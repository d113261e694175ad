/* SPDX-License-Identifier: MIT */
/*
 * map.c - the thread-safe sharded hash map behind sluice_map_*.
 *
 * A key's seeded 64-bit hash picks its shard from the high bits and its
 * bucket inside the shard from the low bits, so the two choices stay
 * independent.  Each shard is a chained hash table with its own mutex; every
 * read or write of a shard's fields happens under that mutex, and no path
 * holds two shard locks.  An entry is one allocation holding its key bytes
 * then its value bytes, so copy-in and copy-out are plain memcpy and freeing
 * is one call.  Callers only ever get copies, so no pointer into an entry
 * outlives the lock.
 *
 * Invariants (per shard, under its mutex):
 *   - nbuckets is a power of two >= MIN_BUCKETS; count is the number of
 *     linked entries, expired or not; nttl counts those with an expiry.
 *   - An entry is live while expiry_ns == 0 or now < expiry_ns.  Expired
 *     entries are invisible to every query and are unlinked by whichever
 *     operation finds them on its key, by an insert that hits the cap, and
 *     by sluice_map_sweep().
 * Only when max_entries is set, m->count (an atomic with relaxed ordering:
 * it is a budget, it publishes no data) counts linked entries over all
 * shards; a new entry reserves its unit before it is linked.  Without a cap
 * nothing global is touched, so threads on different shards share no cache
 * line.
 */
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#include <sluice/map.h>

#include "core/clock_int.h"
#include "util/alloc.h"

#define MIN_BUCKETS ((size_t)8)
#define MAX_SHARDS  (1u << 16)
#define CACHE_LINE  64

struct entry {
	struct entry *next; /* bucket chain */
	uint64_t hash;
	int64_t expiry_ns; /* absolute on the map's clock; 0 = never */
	size_t klen;
	size_t vlen;
	unsigned char data[]; /* klen key bytes, then vlen value bytes */
};

/*
 * Aligned to a cache line, and so padded to a multiple of one (the fields
 * take 72 bytes on x86-64, so two lines), so a thread spinning on one
 * shard's mutex does not slow down the shard next to it.
 */
struct shard {
	alignas(CACHE_LINE) pthread_mutex_t mu;
	struct entry **buckets; /* guarded by mu */
	size_t nbuckets;        /* guarded by mu; power of two */
	size_t count;           /* guarded by mu; linked entries */
	size_t nttl;            /* guarded by mu; linked entries with expiry */
};
_Static_assert(sizeof(struct shard) % CACHE_LINE == 0, "shard padding");

struct sluice_map {
	/* Immutable after sluice_map_new(): */
	struct shard *shards; /* nshards, cache-line aligned inside raw */
	void *shards_raw;     /* the allocation shards points into */
	unsigned nshards;
	unsigned shard_bits; /* log2(nshards) */
	size_t max_entries;  /* 0 = no cap */
	const struct sluice_clock *clock;
	uint64_t seed;
	/* Relaxed atomic; maintained only when max_entries != 0. */
	_Atomic size_t count;
};

/*
 * The hash: wyhash's final-v4 structure (multiply-fold of 64x64->128 bit
 * products), written out here because no Debian library offers a tiny keyed
 * hash meant for a per-call, per-key use without pulling in OpenSSL or
 * similar.  The per-map random seed keeps hostile keys from aiming at one
 * bucket.  Byte order of the reads does not matter: hashes never leave the
 * process.
 */
static const uint64_t P0 = 0x2d358dccaa6c78a5ULL;
static const uint64_t P1 = 0x8bb84b93962eacc9ULL;
static const uint64_t P2 = 0x4b33a62ed433d4a3ULL;
static const uint64_t P3 = 0x4d5a2da51de1aa47ULL;

#ifdef __SIZEOF_INT128__
__extension__ typedef unsigned __int128 u128;

static inline void
mum(uint64_t *a, uint64_t *b)
{
	u128 r = (u128)*a * *b;

	*a = (uint64_t)r;
	*b = (uint64_t)(r >> 64);
}
#else
static inline void
mum(uint64_t *a, uint64_t *b)
{
	uint64_t ha = *a >> 32, hb = *b >> 32;
	uint64_t la = (uint32_t)*a, lb = (uint32_t)*b;
	uint64_t rh = ha * hb, rm0 = ha * lb, rm1 = hb * la, rl = la * lb;
	uint64_t t = rl + (rm0 << 32), c = t < rl;
	uint64_t lo = t + (rm1 << 32);

	c += lo < t;
	*a = lo;
	*b = rh + (rm0 >> 32) + (rm1 >> 32) + c;
}
#endif

static inline uint64_t
mix(uint64_t a, uint64_t b)
{
	mum(&a, &b);
	return a ^ b;
}

static inline uint64_t
rd8(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint64_t
rd4(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t
hash_bytes(const void *key, size_t len, uint64_t seed)
{
	const unsigned char *p = key;
	uint64_t a, b;

	if (len <= 16) {
		if (len >= 4) {
			size_t off = (len >> 3) << 2;

			a = (rd4(p) << 32) | rd4(p + off);
			b = (rd4(p + len - 4) << 32) | rd4(p + len - 4 - off);
		} else if (len > 0) {
			a = ((uint64_t)p[0] << 16) |
			    ((uint64_t)p[len >> 1] << 8) | p[len - 1];
			b = 0;
		} else {
			a = b = 0;
		}
	} else {
		size_t i = len;

		if (i > 48) {
			uint64_t s1 = seed, s2 = seed;

			do {
				seed = mix(rd8(p) ^ P1, rd8(p + 8) ^ seed);
				s1 = mix(rd8(p + 16) ^ P2, rd8(p + 24) ^ s1);
				s2 = mix(rd8(p + 32) ^ P3, rd8(p + 40) ^ s2);
				p += 48;
				i -= 48;
			} while (i > 48);
			seed ^= s1 ^ s2;
		}
		while (i > 16) {
			seed = mix(rd8(p) ^ P1, rd8(p + 8) ^ seed);
			i -= 16;
			p += 16;
		}
		a = rd8(p + i - 16);
		b = rd8(p + i - 8);
	}
	a ^= P1;
	b ^= seed;
	mum(&a, &b);
	return mix(a ^ P0 ^ (uint64_t)len, b ^ P1);
}

static uint64_t
make_seed(const void *salt)
{
	uint64_t s;
	ssize_t n = getrandom(&s, sizeof(s), GRND_NONBLOCK);

	/* Without entropy (early boot, seccomp), time and ASLR still make
	 * the seed hard to guess from outside. */
	if (n != (ssize_t)sizeof(s)) {
		s = mix((uint64_t)sl_mono_ns() ^ P2,
			(uint64_t)(uintptr_t)salt ^ P3);
	}
	/* wyhash's seed preparation. */
	return s ^ mix(s ^ P0, P1);
}

/* The time, read from the map's clock at most once per operation and only
 * when an entry's expiry or a new TTL needs it. */
struct now {
	const struct sluice_clock *clock;
	int64_t ns;
	bool have;
};

static int64_t
now_ns(struct now *n)
{
	if (!n->have) {
		n->ns = sluice_clock_now_ns(n->clock);
		n->have = true;
	}
	return n->ns;
}

static bool
is_expired(const struct entry *e, struct now *n)
{
	return e->expiry_ns != 0 && now_ns(n) >= e->expiry_ns;
}

/* memcmp/memcpy with a length of 0 may be given NULL pointers here, which
 * the C library's nonnull attributes forbid. */
static bool
bytes_eq(const void *a, const void *b, size_t n)
{
	return n == 0 || memcmp(a, b, n) == 0;
}

static void
bytes_copy(void *dst, const void *src, size_t n)
{
	if (n)
		memcpy(dst, src, n);
}

static unsigned char *
value_of(struct entry *e)
{
	return e->data + e->klen;
}

static struct shard *
shard_of(const struct sluice_map *m, uint64_t h)
{
	/* High bits pick the shard; the bucket uses the low bits. */
	if (m->shard_bits == 0)
		return &m->shards[0];
	return &m->shards[h >> (64 - m->shard_bits)];
}

static struct entry *
entry_new(uint64_t h, const void *key, size_t klen, const void *val,
	  size_t vlen, int64_t expiry_ns)
{
	struct entry *e;

	if (klen > SIZE_MAX - sizeof(*e) || vlen > SIZE_MAX - sizeof(*e) - klen)
		return NULL;
	e = sl_malloc(sizeof(*e) + klen + vlen);
	if (!e)
		return NULL;
	e->next = NULL;
	e->hash = h;
	e->expiry_ns = expiry_ns;
	e->klen = klen;
	e->vlen = vlen;
	bytes_copy(e->data, key, klen);
	bytes_copy(e->data + klen, val, vlen);
	return e;
}

/* Unlink and free *@pp.  Called with s->mu held. */
static void
unlink_entry(struct sluice_map *m, struct shard *s, struct entry **pp)
{
	struct entry *e = *pp;

	*pp = e->next;
	s->count--;
	if (e->expiry_ns)
		s->nttl--;
	if (m->max_entries)
		atomic_fetch_sub_explicit(&m->count, 1, memory_order_relaxed);
	sl_free(e);
}

/*
 * The link that points at @key's live entry, or NULL.  An expired entry for
 * @key is unlinked and freed on the way.  Called with s->mu held.
 */
static struct entry **
find(struct sluice_map *m, struct shard *s, uint64_t h, const void *key,
     size_t klen, struct now *now)
{
	struct entry **pp;

	for (pp = &s->buckets[h & (s->nbuckets - 1)]; *pp; pp = &(*pp)->next) {
		struct entry *e = *pp;

		if (e->hash != h || e->klen != klen ||
		    !bytes_eq(e->data, key, klen))
			continue;
		if (is_expired(e, now)) {
			unlink_entry(m, s, pp);
			return NULL;
		}
		return pp;
	}
	return NULL;
}

/* Free every expired entry of @s.  Called with s->mu held. */
static size_t
sweep_shard(struct sluice_map *m, struct shard *s, struct now *now)
{
	size_t i, freed = 0;

	for (i = 0; i < s->nbuckets && s->nttl > 0; i++) {
		struct entry **pp = &s->buckets[i];

		while (*pp) {
			if (is_expired(*pp, now)) {
				unlink_entry(m, s, pp);
				freed++;
			} else {
				pp = &(*pp)->next;
			}
		}
	}
	return freed;
}

static bool
try_reserve(struct sluice_map *m)
{
	size_t n = atomic_load_explicit(&m->count, memory_order_relaxed);

	do {
		if (n >= m->max_entries)
			return false;
	} while (!atomic_compare_exchange_weak_explicit(&m->count, &n, n + 1,
							memory_order_relaxed,
							memory_order_relaxed));
	return true;
}

/*
 * Take one unit of the global cap for a new entry.  At the cap, reclaim this
 * shard's expired entries first (the others' locks are not ours to take).
 * Called with s->mu held.
 */
static bool
reserve(struct sluice_map *m, struct shard *s, struct now *now)
{
	if (!m->max_entries)
		return true;
	if (try_reserve(m))
		return true;
	if (sweep_shard(m, s, now) == 0)
		return false;
	return try_reserve(m);
}

static void
unreserve(struct sluice_map *m)
{
	if (m->max_entries)
		atomic_fetch_sub_explicit(&m->count, 1, memory_order_relaxed);
}

/*
 * Double the bucket array once the load passes 3/4.  If that allocation
 * fails the table stays as it is, just with longer chains: every entry is
 * already linked, so nothing is lost.  Called with s->mu held.
 */
static void
maybe_grow(struct shard *s)
{
	struct entry **nb;
	size_t n, i;

	if (s->count <= s->nbuckets / 4 * 3)
		return;
	if (s->nbuckets > SIZE_MAX / 2 / sizeof(struct entry *))
		return;
	n = s->nbuckets * 2;
	nb = sl_calloc(n, sizeof(struct entry *));
	if (!nb)
		return;
	for (i = 0; i < s->nbuckets; i++) {
		struct entry *e = s->buckets[i], *next;

		for (; e; e = next) {
			size_t b = (size_t)(e->hash & (n - 1));

			next = e->next;
			e->next = nb[b];
			nb[b] = e;
		}
	}
	sl_free(s->buckets);
	s->buckets = nb;
	s->nbuckets = n;
}

static int64_t
expiry_after(struct now *now, int64_t ttl_ns)
{
	int64_t t;

	if (ttl_ns == SLUICE_MAP_NO_TTL)
		return 0;
	t = now_ns(now);
	return t > INT64_MAX - ttl_ns ? INT64_MAX : t + ttl_ns;
}

/* Give @e a new expiry, keeping s->nttl right.  Called with s->mu held. */
static void
set_expiry(struct shard *s, struct entry *e, int64_t expiry_ns)
{
	if (e->expiry_ns)
		s->nttl--;
	if (expiry_ns)
		s->nttl++;
	e->expiry_ns = expiry_ns;
}

enum store_mode {
	STORE_PUT,
	STORE_IF_ABSENT,
	STORE_CAS,
};

struct store_req {
	const void *key, *val, *expect;
	size_t klen, vlen, elen;
	int64_t ttl_ns;
	enum store_mode mode;
};

/*
 * Replace the live entry at *@pp with @r's value.  Same length: overwrite in
 * place (no allocation, so a CAS of a fixed-size counter cannot fail);
 * otherwise swap in a new entry.  Called with s->mu held.
 */
static int
replace(struct shard *s, struct entry **pp, const struct store_req *r,
	int64_t expiry_ns)
{
	struct entry *e = *pp, *ne;

	if (e->vlen == r->vlen) {
		bytes_copy(value_of(e), r->val, r->vlen);
		set_expiry(s, e, expiry_ns);
		return 0;
	}
	ne = entry_new(e->hash, r->key, r->klen, r->val, r->vlen, expiry_ns);
	if (!ne)
		return SLUICE_ENOMEM;
	ne->next = e->next;
	*pp = ne;
	if (e->expiry_ns)
		s->nttl--;
	if (expiry_ns)
		s->nttl++;
	sl_free(e);
	return 0;
}

/* Link a new entry for @r at its bucket's head.  Called with s->mu held. */
static int
insert(struct sluice_map *m, struct shard *s, uint64_t h,
       const struct store_req *r, int64_t expiry_ns, struct now *now)
{
	struct entry *e, **head;

	if (!reserve(m, s, now))
		return SLUICE_ENOMEM;
	e = entry_new(h, r->key, r->klen, r->val, r->vlen, expiry_ns);
	if (!e) {
		unreserve(m);
		return SLUICE_ENOMEM;
	}
	head = &s->buckets[h & (s->nbuckets - 1)];
	e->next = *head;
	*head = e;
	s->count++;
	if (expiry_ns)
		s->nttl++;
	maybe_grow(s);
	return 0;
}

static int
store(struct sluice_map *m, const struct store_req *r)
{
	struct now now = { .clock = m->clock };
	struct entry **pp;
	struct shard *s;
	int64_t expiry_ns;
	uint64_t h;
	int err;

	h = hash_bytes(r->key, r->klen, m->seed);
	s = shard_of(m, h);
	pthread_mutex_lock(&s->mu);
	expiry_ns = expiry_after(&now, r->ttl_ns);
	pp = find(m, s, h, r->key, r->klen, &now);
	if (pp && r->mode == STORE_IF_ABSENT) {
		err = SLUICE_EEXIST;
	} else if (!pp && r->mode == STORE_CAS) {
		err = SLUICE_ENOENT;
	} else if (pp && r->mode == STORE_CAS &&
		   ((*pp)->vlen != r->elen ||
		    !bytes_eq(value_of(*pp), r->expect, r->elen))) {
		err = SLUICE_EBUSY;
	} else if (pp) {
		err = replace(s, pp, r, expiry_ns);
	} else {
		err = insert(m, s, h, r, expiry_ns, &now);
	}
	pthread_mutex_unlock(&s->mu);
	return err;
}

static bool
args_ok(const struct sluice_map *m, const void *key, size_t klen,
	const void *val, size_t vlen, int64_t ttl_ns)
{
	return m && (key || !klen) && (val || !vlen) && ttl_ns >= 0;
}

int
sluice_map_put(struct sluice_map *m, const void *key, size_t klen,
	       const void *val, size_t vlen, int64_t ttl_ns)
{
	struct store_req r = { .key = key,
			       .klen = klen,
			       .val = val,
			       .vlen = vlen,
			       .ttl_ns = ttl_ns,
			       .mode = STORE_PUT };

	if (!args_ok(m, key, klen, val, vlen, ttl_ns))
		return SLUICE_EINVAL;
	return store(m, &r);
}

int
sluice_map_put_if_absent(struct sluice_map *m, const void *key, size_t klen,
			 const void *val, size_t vlen, int64_t ttl_ns)
{
	struct store_req r = { .key = key,
			       .klen = klen,
			       .val = val,
			       .vlen = vlen,
			       .ttl_ns = ttl_ns,
			       .mode = STORE_IF_ABSENT };

	if (!args_ok(m, key, klen, val, vlen, ttl_ns))
		return SLUICE_EINVAL;
	return store(m, &r);
}

int
sluice_map_cas(struct sluice_map *m, const void *key, size_t klen,
	       const void *expect, size_t elen, const void *val, size_t vlen,
	       int64_t ttl_ns)
{
	struct store_req r = { .key = key,
			       .klen = klen,
			       .val = val,
			       .vlen = vlen,
			       .expect = expect,
			       .elen = elen,
			       .ttl_ns = ttl_ns,
			       .mode = STORE_CAS };

	if (!args_ok(m, key, klen, val, vlen, ttl_ns) || (!expect && elen))
		return SLUICE_EINVAL;
	return store(m, &r);
}

int
sluice_map_get(struct sluice_map *m, const void *key, size_t klen, void *buf,
	       size_t *len)
{
	struct now now;
	struct entry **pp;
	struct shard *s;
	uint64_t h;
	int err = 0;

	if (!m || (!key && klen))
		return SLUICE_EINVAL;
	now = (struct now){ .clock = m->clock };
	h = hash_bytes(key, klen, m->seed);
	s = shard_of(m, h);
	pthread_mutex_lock(&s->mu);
	pp = find(m, s, h, key, klen, &now);
	if (!pp) {
		err = SLUICE_ENOENT;
	} else if (len) {
		struct entry *e = *pp;

		if (buf) {
			bytes_copy(buf, value_of(e),
				   e->vlen < *len ? e->vlen : *len);
		}
		*len = e->vlen;
	}
	pthread_mutex_unlock(&s->mu);
	return err;
}

bool
sluice_map_contains(struct sluice_map *m, const void *key, size_t klen)
{
	return sluice_map_get(m, key, klen, NULL, NULL) == 0;
}

int
sluice_map_del(struct sluice_map *m, const void *key, size_t klen)
{
	struct now now;
	struct entry **pp;
	struct shard *s;
	uint64_t h;
	int err = 0;

	if (!m || (!key && klen))
		return SLUICE_EINVAL;
	now = (struct now){ .clock = m->clock };
	h = hash_bytes(key, klen, m->seed);
	s = shard_of(m, h);
	pthread_mutex_lock(&s->mu);
	pp = find(m, s, h, key, klen, &now);
	if (pp) {
		unlink_entry(m, s, pp);
	} else {
		err = SLUICE_ENOENT;
	}
	pthread_mutex_unlock(&s->mu);
	return err;
}

/* Live entries of @s.  Called with s->mu held. */
static size_t
live_count(struct shard *s, struct now *now)
{
	size_t i, n = 0;
	struct entry *e;

	if (s->nttl == 0)
		return s->count;
	for (i = 0; i < s->nbuckets; i++) {
		for (e = s->buckets[i]; e; e = e->next)
			n += !is_expired(e, now);
	}
	return n;
}

size_t
sluice_map_len(struct sluice_map *m)
{
	size_t i, n = 0;

	if (!m)
		return 0;
	for (i = 0; i < m->nshards; i++) {
		struct shard *s = &m->shards[i];
		struct now now = { .clock = m->clock };

		pthread_mutex_lock(&s->mu);
		n += live_count(s, &now);
		pthread_mutex_unlock(&s->mu);
	}
	return n;
}

size_t
sluice_map_sweep(struct sluice_map *m)
{
	size_t i, n = 0;

	if (!m)
		return 0;
	for (i = 0; i < m->nshards; i++) {
		struct shard *s = &m->shards[i];
		struct now now = { .clock = m->clock };

		pthread_mutex_lock(&s->mu);
		n += sweep_shard(m, s, &now);
		pthread_mutex_unlock(&s->mu);
	}
	return n;
}

/*
 * foreach snapshots one shard into a flat buffer of records, each a header
 * followed by the key and value bytes, padded so the next header is aligned.
 */
struct rec {
	size_t klen;
	size_t vlen;
};

static size_t
rec_size(const struct entry *e)
{
	size_t n = sizeof(struct rec) + e->klen + e->vlen;

	return (n + alignof(struct rec) - 1) & ~(alignof(struct rec) - 1);
}

/* Bytes needed to snapshot @s.  Called with s->mu held. */
static size_t
snapshot_size(struct shard *s, struct now *now)
{
	size_t i, n = 0;
	struct entry *e;

	for (i = 0; i < s->nbuckets; i++) {
		for (e = s->buckets[i]; e; e = e->next) {
			if (!is_expired(e, now))
				n += rec_size(e);
		}
	}
	return n;
}

/* Copy @s's live entries into @buf.  Called with s->mu held. */
static void
snapshot(struct shard *s, struct now *now, unsigned char *buf)
{
	struct entry *e;
	size_t i;

	for (i = 0; i < s->nbuckets; i++) {
		for (e = s->buckets[i]; e; e = e->next) {
			struct rec r = { .klen = e->klen, .vlen = e->vlen };

			if (is_expired(e, now))
				continue;
			memcpy(buf, &r, sizeof(r));
			memcpy(buf + sizeof(r), e->data, e->klen + e->vlen);
			buf += rec_size(e);
		}
	}
}

/* Call @fn on each record of @buf[0..@n); false if it asked to stop. */
static bool
visit(const unsigned char *buf, size_t n, sluice_map_visit_fn *fn, void *ud)
{
	size_t off = 0;

	while (off < n) {
		const unsigned char *p = buf + off;
		struct rec r;

		memcpy(&r, p, sizeof(r));
		p += sizeof(r);
		if (!fn(ud, p, r.klen, p + r.klen, r.vlen))
			return false;
		off += (sizeof(r) + r.klen + r.vlen + alignof(struct rec) - 1) &
		       ~(alignof(struct rec) - 1);
	}
	return true;
}

int
sluice_map_foreach(struct sluice_map *m, sluice_map_visit_fn *fn, void *ud)
{
	unsigned char *buf = NULL;
	size_t i, cap = 0;
	int err = 0;

	if (!m || !fn)
		return SLUICE_EINVAL;
	for (i = 0; i < m->nshards; i++) {
		struct shard *s = &m->shards[i];
		struct now now = { .clock = m->clock };
		size_t need;
		bool more;

		pthread_mutex_lock(&s->mu);
		need = snapshot_size(s, &now);
		if (need > cap) {
			unsigned char *nb = sl_realloc(buf, need);

			if (!nb) {
				pthread_mutex_unlock(&s->mu);
				err = SLUICE_ENOMEM;
				break;
			}
			buf = nb;
			cap = need;
		}
		if (need)
			snapshot(s, &now, buf);
		pthread_mutex_unlock(&s->mu);
		/* The callback runs on copies with no lock held, so it may
		 * call back into the map. */
		more = visit(buf, need, fn, ud);
		if (!more)
			break;
	}
	sl_free(buf);
	return err;
}

static void
shard_clear(struct shard *s)
{
	size_t i;

	for (i = 0; i < s->nbuckets; i++) {
		struct entry *e = s->buckets[i], *next;

		for (; e; e = next) {
			next = e->next;
			sl_free(e);
		}
	}
	sl_free(s->buckets);
}

int
sluice_map_new(unsigned nshards, size_t max_entries,
	       const struct sluice_clock *clock, struct sluice_map **out)
{
	struct sluice_map *m;
	unsigned n = 1, bits = 0, i;
	uintptr_t pad;
	int err;

	if (!out)
		return SLUICE_EINVAL;
	*out = NULL;
	if (nshards == 0)
		nshards = 16;
	if (nshards > MAX_SHARDS)
		return SLUICE_EINVAL;
	while (n < nshards) {
		n <<= 1;
		bits++;
	}
	m = sl_calloc(1, sizeof(*m));
	if (!m)
		return SLUICE_ENOMEM;
	m->shards_raw = sl_calloc(1, n * sizeof(struct shard) + CACHE_LINE - 1);
	if (!m->shards_raw) {
		err = SLUICE_ENOMEM;
		goto free_map;
	}
	pad = (CACHE_LINE - (uintptr_t)m->shards_raw % CACHE_LINE) % CACHE_LINE;
	m->shards =
		(struct shard *)(void *)((unsigned char *)m->shards_raw + pad);
	m->nshards = n;
	m->shard_bits = bits;
	m->max_entries = max_entries;
	m->clock = clock;
	atomic_init(&m->count, 0);
	for (i = 0; i < n; i++) {
		struct shard *s = &m->shards[i];
		int rc;

		s->nbuckets = MIN_BUCKETS;
		s->buckets = sl_calloc(MIN_BUCKETS, sizeof(struct entry *));
		if (!s->buckets) {
			err = SLUICE_ENOMEM;
			goto free_shards;
		}
		rc = pthread_mutex_init(&s->mu, NULL);
		if (rc) {
			sl_free(s->buckets);
			err = -rc;
			goto free_shards;
		}
	}
	m->seed = make_seed(m);
	*out = m;
	return 0;

free_shards:
	while (i-- > 0) {
		pthread_mutex_destroy(&m->shards[i].mu);
		sl_free(m->shards[i].buckets);
	}
	sl_free(m->shards_raw);
free_map:
	sl_free(m);
	return err;
}

void
sluice_map_free(struct sluice_map *m)
{
	unsigned i;

	if (!m)
		return;
	for (i = 0; i < m->nshards; i++) {
		shard_clear(&m->shards[i]);
		pthread_mutex_destroy(&m->shards[i].mu);
	}
	sl_free(m->shards_raw);
	sl_free(m);
}
