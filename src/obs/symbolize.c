/* SPDX-License-Identifier: MIT */
/*
 * symbolize.c - the in-process symbolizer of profile.h: program counter to
 * function name and to the mapping (file, offset, GNU build id) holding it.
 *
 * Loaded objects come from dl_iterate_phdr (executable PT_LOAD segments are
 * the mappings; the build id is read from the PT_NOTE segments in memory).
 * Names come from each object's ELF file, mapped read-only: its .symtab,
 * else the .symtab of /usr/lib/debug/.build-id/xx/yyyy.debug, else its
 * .dynsym (exported names only).  The vdso has no file and is read from
 * memory.  Not dladdr: it sees exported symbols only, and static functions
 * are what profiles are mostly made of.
 *
 * Invariants: objects are never freed (sl_sym_mapping hands out their
 * strings for the life of the process); an object's symbols are loaded on
 * its first name lookup and the file mapping they point into is kept.  A
 * dlclose'd object stays in the list marked dead so a later object at the
 * same address is not confused with it.  Only function symbols (FUNC and
 * IFUNC, defined, non-zero) are kept, sorted by address, one per address
 * (the best-ranked alias: no leading underscore, then global, weak, local,
 * then the shortest).
 *
 * Locking: every public call holds `lock` throughout; it allocates and
 * takes the dynamic loader's lock, so never call it from a signal handler.
 */
#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sluice/common.h>

#include "obs/profile.h"
#include "util/alloc.h"

#define MAX_SEGS     4  /* executable PT_LOADs kept per object */
#define MAX_BUILD_ID 64 /* bytes; GNU ld writes 20 (sha1) */
#define DEBUG_DIR    "/usr/lib/debug/.build-id/"

#if __ELF_NATIVE_CLASS == 64
#define NATIVE_CLASS ELFCLASS64
#define SYM_TYPE     ELF64_ST_TYPE
#define SYM_BIND     ELF64_ST_BIND
#else
#define NATIVE_CLASS ELFCLASS32
#define SYM_TYPE     ELF32_ST_TYPE
#define SYM_BIND     ELF32_ST_BIND
#endif

struct sym {
	uintptr_t addr;   /* link-time address (st_value) */
	uintptr_t size;   /* 0: unknown, runs to the next symbol */
	const char *name; /* in the object's mapped string table */
	unsigned rank;    /* lower is preferred among aliases */
};

struct obj {
	struct obj *next;
	uintptr_t base; /* load bias (dlpi_addr) */
	char *dlname;   /* dlpi_name: with base, the identity on rescans */
	char *path;     /* file to read; the main program's is resolved */
	uintptr_t vdso; /* the vdso's ELF header in memory, else 0 */
	char build_id[2 * MAX_BUILD_ID + 1];
	struct sl_sym_mapping segs[MAX_SEGS];
	size_t nsegs;
	bool alive;  /* seen by the latest dl_iterate_phdr scan */
	bool loaded; /* symbols looked for (found or not) */
	struct sym *syms;
	size_t nsyms;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct obj *objs;             /* lock; scan order, main first */
static bool scanned;                 /* lock; objs reflects the loader */
static unsigned long long seen_adds; /* lock; loader counters at scan */
static unsigned long long seen_subs; /* lock */

static uint32_t
rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/*
 * Find the GNU build id among the ELF notes in [p, p + len) (notes padded
 * to @align) and write it as lower-case hex; false when there is none.
 */
static bool
note_build_id(const uint8_t *p, size_t len, size_t align, char *hex)
{
	static const char digits[] = "0123456789abcdef";

	while (len >= 12) {
		size_t namesz = rd32(p), descsz = rd32(p + 4);
		uint32_t type = rd32(p + 8);
		size_t nsz = (namesz + align - 1) & ~(align - 1);
		size_t dsz = (descsz + align - 1) & ~(align - 1);
		size_t i;

		if (nsz > len - 12 || dsz > len - 12 - nsz)
			return false;
		if (type == NT_GNU_BUILD_ID && namesz == 4 &&
		    memcmp(p + 12, "GNU", 4) == 0 && descsz > 0 &&
		    descsz <= MAX_BUILD_ID) {
			for (i = 0; i < descsz; i++) {
				hex[2 * i] = digits[p[12 + nsz + i] >> 4];
				hex[2 * i + 1] = digits[p[12 + nsz + i] & 15];
			}
			hex[2 * descsz] = '\0';
			return true;
		}
		p += 12 + nsz + dsz;
		len -= 12 + nsz + dsz;
	}
	return false;
}

static size_t
note_align(uintptr_t p_align)
{
	return p_align == 8 ? 8 : 4;
}

/* ---- ELF images (a mapped file, or the vdso in memory) ----------------- */

struct image {
	const uint8_t *p;
	size_t len;
	bool mapped; /* munmap when unused */
};

static bool
image_ehdr(const struct image *im, ElfW(Ehdr) * eh)
{
	if (im->len < sizeof(*eh))
		return false;
	memcpy(eh, im->p, sizeof(*eh));
	return memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 &&
	       eh->e_ident[EI_CLASS] == NATIVE_CLASS;
}

static int
image_map(struct image *im, const char *path)
{
	struct stat st;
	void *p;
	int fd, err;

	memset(im, 0, sizeof(*im));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	if (!S_ISREG(st.st_mode) || st.st_size <= 0 ||
	    (uintmax_t)st.st_size > SIZE_MAX) {
		close(fd);
		return SLUICE_ENOENT;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	err = p == MAP_FAILED ? -errno : 0;
	close(fd);
	if (err)
		return err;
	im->p = p;
	im->len = (size_t)st.st_size;
	im->mapped = true;
	return 0;
}

static void
image_unmap(struct image *im)
{
	if (im->mapped)
		munmap((void *)(uintptr_t)im->p, im->len);
	memset(im, 0, sizeof(*im));
}

/* The vdso: its section headers sit at the end of its image in memory. */
static bool
image_vdso(struct image *im, uintptr_t ehdr)
{
	ElfW(Ehdr) eh;

	memset(im, 0, sizeof(*im));
	memcpy(&eh, (const void *)ehdr, sizeof(eh));
	if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 ||
	    eh.e_shentsize != sizeof(ElfW(Shdr)))
		return false;
	im->p = (const uint8_t *)ehdr;
	im->len = eh.e_shoff + (size_t)eh.e_shnum * sizeof(ElfW(Shdr));
	return true;
}

/* [off, off + size) lies inside the image. */
static bool
image_has(const struct image *im, uintmax_t off, uintmax_t size)
{
	return off <= im->len && size <= im->len - off;
}

/* A table of @num entries of @entsize bytes at @off, entries of @want. */
static bool
image_table(const struct image *im, uintmax_t off, size_t num, size_t entsize,
	    size_t want)
{
	return entsize == want && image_has(im, off, 0) &&
	       num <= (im->len - off) / want;
}

/* The build id in the file's own PT_NOTE segments, for the stale-file
 * check; false when it has none. */
static bool
image_build_id(const struct image *im, char *hex)
{
	ElfW(Ehdr) eh;
	ElfW(Phdr) ph;
	size_t i;

	if (!image_ehdr(im, &eh) || !image_table(im, eh.e_phoff, eh.e_phnum,
						 eh.e_phentsize, sizeof(ph)))
		return false;
	for (i = 0; i < eh.e_phnum; i++) {
		memcpy(&ph, im->p + eh.e_phoff + i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_NOTE ||
		    !image_has(im, ph.p_offset, ph.p_filesz))
			continue;
		if (note_build_id(im->p + ph.p_offset, ph.p_filesz,
				  note_align(ph.p_align), hex))
			return true;
	}
	return false;
}

static int
sym_cmp(const void *a, const void *b)
{
	const struct sym *x = a, *y = b;

	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	if (x->rank != y->rank)
		return x->rank < y->rank ? -1 : 1;
	/* glibc's internal aliases are longer: "__GI___tunables_print". */
	if (strlen(x->name) != strlen(y->name))
		return strlen(x->name) < strlen(y->name) ? -1 : 1;
	return strcmp(x->name, y->name);
}

static bool
keep_sym(const ElfW(Sym) * s)
{
	unsigned type = SYM_TYPE(s->st_info);

	return (type == STT_FUNC || type == STT_GNU_IFUNC) &&
	       s->st_shndx != SHN_UNDEF && s->st_value != 0 && s->st_name;
}

static unsigned
sym_rank(const ElfW(Sym) * s, const char *name)
{
	unsigned bind = SYM_BIND(s->st_info);
	unsigned r = bind == STB_GLOBAL ? 0 : bind == STB_WEAK ? 1 : 2;

	return name[0] == '_' ? r + 3 : r;
}

/*
 * Read the function symbols of the first section of type @type
 * (SHT_SYMTAB or SHT_DYNSYM) into @o, sorted and one per address.  True
 * when at least one was found; then @o->syms point into @im.
 */
static bool
collect(struct obj *o, const struct image *im, uint32_t type)
{
	ElfW(Ehdr) eh;
	ElfW(Shdr) sh, strsh;
	ElfW(Sym) s;
	const char *strtab;
	struct sym *syms;
	size_t i, n = 0, count, kept;

	if (!image_ehdr(im, &eh) || !image_table(im, eh.e_shoff, eh.e_shnum,
						 eh.e_shentsize, sizeof(sh)))
		return false;
	for (i = 0; i < eh.e_shnum; i++) {
		memcpy(&sh, im->p + eh.e_shoff + i * sizeof(sh), sizeof(sh));
		if (sh.sh_type == type)
			break;
	}
	if (i == eh.e_shnum || sh.sh_link >= eh.e_shnum ||
	    sh.sh_entsize != sizeof(s) ||
	    !image_has(im, sh.sh_offset, sh.sh_size))
		return false;
	memcpy(&strsh, im->p + eh.e_shoff + sh.sh_link * sizeof(sh),
	       sizeof(strsh));
	/* A string table must end in NUL, so every name in it is bounded. */
	if (strsh.sh_type != SHT_STRTAB || strsh.sh_size == 0 ||
	    !image_has(im, strsh.sh_offset, strsh.sh_size) ||
	    im->p[strsh.sh_offset + strsh.sh_size - 1] != '\0')
		return false;
	strtab = (const char *)im->p + strsh.sh_offset;
	count = sh.sh_size / sizeof(s);
	if (count == 0)
		return false;
	syms = sl_calloc(count, sizeof(*syms));
	if (!syms)
		return false;
	for (i = 0; i < count; i++) {
		memcpy(&s, im->p + sh.sh_offset + i * sizeof(s), sizeof(s));
		if (!keep_sym(&s) || s.st_name >= strsh.sh_size)
			continue;
		syms[n].addr = (uintptr_t)s.st_value;
		syms[n].size = (uintptr_t)s.st_size;
		syms[n].name = strtab + s.st_name;
		syms[n].rank = sym_rank(&s, syms[n].name);
		n++;
	}
	if (n == 0) {
		sl_free(syms);
		return false;
	}
	qsort(syms, n, sizeof(*syms), sym_cmp);
	/* Aliases: keep the best-ranked name, with the largest size. */
	for (i = 1, kept = 1; i < n; i++) {
		struct sym *last = &syms[kept - 1];

		if (syms[i].addr == last->addr) {
			if (syms[i].size > last->size)
				last->size = syms[i].size;
			continue;
		}
		syms[kept++] = syms[i];
	}
	o->syms = syms;
	o->nsyms = kept;
	return true;
}

/* Try @path's .symtab (or its .dynsym when @dynsym); keep the mapping on
 * success.  A file whose build id differs from the loaded object's is
 * stale (replaced on disk since it was loaded) and not used. */
static bool
load_file(struct obj *o, const char *path, bool dynsym)
{
	struct image im;
	char id[2 * MAX_BUILD_ID + 1];

	if (!path[0] || image_map(&im, path) != 0)
		return false;
	if (o->build_id[0] && image_build_id(&im, id) &&
	    strcmp(id, o->build_id) != 0) {
		image_unmap(&im);
		return false;
	}
	if (collect(o, &im, SHT_SYMTAB) ||
	    (dynsym && collect(o, &im, SHT_DYNSYM)))
		return true; /* the mapping stays: names point into it */
	image_unmap(&im);
	return false;
}

static void
load_syms(struct obj *o)
{
	char dbg[sizeof(DEBUG_DIR) + 4 + 2 * MAX_BUILD_ID + 8];
	struct image im;

	o->loaded = true;
	if (o->vdso) {
		if (image_vdso(&im, o->vdso) && !collect(o, &im, SHT_SYMTAB))
			collect(o, &im, SHT_DYNSYM);
		return;
	}
	if (load_file(o, o->path, false))
		return;
	if (strlen(o->build_id) > 2) {
		snprintf(dbg, sizeof(dbg), "%s%.2s/%s.debug", DEBUG_DIR,
			 o->build_id, o->build_id + 2);
		if (load_file(o, dbg, false))
			return;
	}
	load_file(o, o->path, true);
}

/* ---- the object list ---------------------------------------------------- */

/* A new object for @info; its two strings live in the same block. */
static struct obj *
new_obj(const struct dl_phdr_info *info, bool first)
{
	uintptr_t vdso = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	const char *dlname = info->dlpi_name ? info->dlpi_name : "";
	const char *path = dlname;
	char exe[PATH_MAX];
	size_t i, nlen, plen;
	struct obj *o;

	if (first && !dlname[0]) {
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

		exe[n > 0 ? n : 0] = '\0';
		path = exe;
	}
	nlen = strlen(dlname) + 1;
	plen = strlen(path) + 1;
	o = sl_calloc(1, sizeof(*o) + nlen + plen);
	if (!o)
		return NULL;
	o->dlname = (char *)(o + 1);
	memcpy(o->dlname, dlname, nlen);
	o->path = o->dlname + nlen;
	memcpy(o->path, path, plen);
	o->base = info->dlpi_addr;
	o->alive = true;
	if (vdso && (uintptr_t)info->dlpi_phdr ==
			    vdso + ((const ElfW(Ehdr) *)vdso)->e_phoff)
		o->vdso = vdso;
	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		struct sl_sym_mapping *m;
		uintptr_t start, pad;

		if (ph->p_type == PT_NOTE && !o->build_id[0])
			note_build_id((const uint8_t *)(o->base + ph->p_vaddr),
				      ph->p_memsz, note_align(ph->p_align),
				      o->build_id);
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X) ||
		    o->nsegs == MAX_SEGS)
			continue;
		/* Page-aligned, as /proc/self/maps shows it and pprof
		 * expects: start and offset move down together. */
		start = o->base + ph->p_vaddr;
		pad = start & (page - 1);
		if (pad > ph->p_offset)
			pad = 0;
		m = &o->segs[o->nsegs++];
		m->start = start - pad;
		m->offset = ph->p_offset - pad;
		m->limit = (start + ph->p_memsz + page - 1) & ~(page - 1);
		m->path = o->path;
		m->build_id = o->build_id;
	}
	return o;
}

struct scan {
	struct obj **tail;
	unsigned index;
	bool failed;
	bool have_counts;
	unsigned long long adds, subs;
};

static void
scan_counts(const struct dl_phdr_info *info, size_t size, struct scan *s)
{
	if (size >= offsetof(struct dl_phdr_info, dlpi_subs) +
			    sizeof(info->dlpi_subs)) {
		s->have_counts = true;
		s->adds = info->dlpi_adds;
		s->subs = info->dlpi_subs;
	}
}

static int
scan_one(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct scan *s = arg;
	const char *name = info->dlpi_name ? info->dlpi_name : "";
	struct obj *o;

	if (s->index++ == 0)
		scan_counts(info, size, s);
	for (o = objs; o; o = o->next) {
		if (o->base == info->dlpi_addr &&
		    strcmp(o->dlname, name) == 0) {
			o->alive = true;
			return 0;
		}
	}
	o = new_obj(info, s->index == 1);
	if (!o) {
		s->failed = true;
		return 0;
	}
	*s->tail = o;
	s->tail = &o->next;
	return 0;
}

static int
peek_counts(struct dl_phdr_info *info, size_t size, void *arg)
{
	scan_counts(info, size, arg);
	return 1; /* the first object carries the counters: stop */
}

/* Bring the list up to date when the loader's add/remove counters moved
 * (or cannot be read).  Called with the lock held. */
static void
refresh(void)
{
	struct scan s;
	struct obj *o;

	memset(&s, 0, sizeof(s));
	dl_iterate_phdr(peek_counts, &s);
	if (scanned && s.have_counts && s.adds == seen_adds &&
	    s.subs == seen_subs)
		return;
	memset(&s, 0, sizeof(s));
	s.tail = &objs;
	for (o = objs; o; o = o->next) {
		o->alive = false;
		s.tail = &o->next;
	}
	dl_iterate_phdr(scan_one, &s);
	scanned = !s.failed && s.have_counts;
	seen_adds = s.adds;
	seen_subs = s.subs;
}

static struct obj *
find(uintptr_t pc, const struct sl_sym_mapping **seg)
{
	struct obj *o;
	size_t i;

	for (o = objs; o; o = o->next) {
		if (!o->alive)
			continue;
		for (i = 0; i < o->nsegs; i++) {
			if (pc >= o->segs[i].start && pc < o->segs[i].limit) {
				*seg = &o->segs[i];
				return o;
			}
		}
	}
	return NULL;
}

static const struct sym *
find_sym(const struct obj *o, uintptr_t pc)
{
	uintptr_t a = pc - o->base;
	size_t lo = 0, hi = o->nsyms;
	const struct sym *s;

	/* The last symbol at or below a. */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (o->syms[mid].addr <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	s = &o->syms[lo - 1];
	if (s->size && a - s->addr >= s->size)
		return NULL;
	return s;
}

static void
put_name(char *name, size_t size, const char *sym)
{
	size_t n = strcspn(sym, "@"); /* "memcpy@@GLIBC_2.14" */

	if (n >= size)
		n = size - 1;
	memcpy(name, sym, n);
	name[n] = '\0';
}

int
sl_sym_name(uintptr_t pc, char *name, size_t size)
{
	const struct sl_sym_mapping *seg = NULL;
	const struct sym *s = NULL;
	const char *base;
	struct obj *o;

	if (size == 0)
		return SLUICE_EINVAL;
	pthread_mutex_lock(&lock);
	refresh();
	o = find(pc, &seg);
	if (o) {
		if (!o->loaded)
			load_syms(o);
		s = find_sym(o, pc);
	}
	if (s) {
		put_name(name, size, s->name);
	} else if (o && o->path[0]) {
		base = strrchr(o->path, '/');
		snprintf(name, size, "[%s]", base ? base + 1 : o->path);
	} else {
		snprintf(name, size, "0x%jx", (uintmax_t)pc);
	}
	pthread_mutex_unlock(&lock);
	return s ? 0 : SLUICE_ENOENT;
}

int
sl_sym_mapping(uintptr_t pc, struct sl_sym_mapping *out)
{
	const struct sl_sym_mapping *seg = NULL;

	pthread_mutex_lock(&lock);
	refresh();
	if (find(pc, &seg))
		*out = *seg;
	pthread_mutex_unlock(&lock);
	return seg ? 0 : SLUICE_ENOENT;
}

size_t
sl_sym_mappings(struct sl_sym_mapping *out, size_t max)
{
	struct obj *o;
	size_t i, n = 0;

	pthread_mutex_lock(&lock);
	refresh();
	for (o = objs; o; o = o->next) {
		if (!o->alive)
			continue;
		for (i = 0; i < o->nsegs; i++, n++)
			if (n < max)
				out[n] = o->segs[i];
	}
	pthread_mutex_unlock(&lock);
	return n;
}
