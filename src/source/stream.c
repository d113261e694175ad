/* SPDX-License-Identifier: MIT */
/*
 * stream.c - the stdin / file source: a reader thread feeding a bounded
 * in-process queue.
 *
 * The reader owns the input buffer and everything about parsing; the queue
 * owns the messages.  Framed bodies are views into the buffer until
 * sluice_queue_publish_batch() copies them, so nothing is allocated per
 * message.  A full queue blocks the reader in publish (back-pressure).
 * stop() closes the queue, which ends a blocked publish, and wakes a
 * blocked read through an eventfd.  Each input's end is a message boundary.
 *
 * Threads: the reader thread, and callers of the public functions.  The
 * counters are relaxed atomics; err/errmsg are written by the reader and
 * read only after it was joined.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <sluice/queue.h>
#include <sluice/stream.h>

#include "obs/threads.h"
#include "util/alloc.h"

#define READ_CHUNK ((size_t)64 * 1024)
#define RUN_MAX    256 /* messages published per queue call */

struct sluice_stream {
	struct sluice_stream_config cfg;
	struct sluice_queue *q;
	int *fds;           /* one per input; immutable after open */
	const char **names; /* for messages; immutable after open */
	size_t nfds;
	int stop_efd; /* written by stop() */
	_Atomic bool stopping;
	_Atomic uint64_t messages, bytes;
	_Atomic int eof;
	pthread_t reader;
	bool started, joined; /* owner only */
	int err;              /* reader's result; read after the join */
	char errmsg[256];
};

/* The C library's text for a system error ("No such file or directory"),
 * which users know better than sluice's own names for the codes. */
static const char *
os_error(int e)
{
	const char *t = strerrordesc_np(e);

	return t ? t : sluice_strerror(-e);
}

void
sluice_stream_config_init(struct sluice_stream_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->framing = SLUICE_FRAMING_LINE;
	cfg->max_body = 1024 * 1024;
	cfg->capacity = 1024;
}

/* The reader's input buffer: bytes [off, len) are unparsed. */
struct inbuf {
	uint8_t *p;
	size_t cap, len, off;
};

static int
set_err(struct sluice_stream *s, int err, const char *name, const char *what)
{
	s->err = err;
	snprintf(s->errmsg, sizeof(s->errmsg), "%s: message %llu %s", name,
		 (unsigned long long)(atomic_load_explicit(
					      &s->messages,
					      memory_order_relaxed) +
				      1),
		 what);
	return err;
}

/* Publish @n views; returns 0, or SLUICE_ECLOSED once stop() closed it. */
static int
publish(struct sluice_stream *s, const struct sluice_bytes *run, size_t n)
{
	size_t done = 0;
	int rc;

	while (done < n) {
		rc = sluice_queue_publish_batch(s->q, run + done, n - done,
						SLUICE_FOREVER);
		if (rc <= 0)
			return rc ? rc : SLUICE_ECLOSED;
		done += (size_t)rc;
		atomic_fetch_add_explicit(&s->messages, (uint64_t)rc,
					  memory_order_relaxed);
	}
	return 0;
}

/*
 * Parse and publish every complete frame in @b.  Returns 0, 1 when the
 * limit was reached, or a negative code (error text set).
 */
static int
drain_buffer(struct sluice_stream *s, struct inbuf *b, const char *name,
	     int eof)
{
	struct sluice_bytes run[RUN_MAX];
	size_t n = 0, start = b->off;
	uint64_t limit = s->cfg.limit, have;
	int64_t r = 0;
	int rc;

	for (;;) {
		have = atomic_load_explicit(&s->messages,
					    memory_order_relaxed) +
		       n;
		if (limit && have >= limit)
			break;
		r = sluice_frame_next(s->cfg.framing, b->p + b->off,
				      b->len - b->off, eof, s->cfg.max_body,
				      &run[n]);
		if (r <= 0)
			break;
		b->off += (size_t)r;
		if (++n == RUN_MAX) {
			rc = publish(s, run, n);
			if (rc)
				return rc;
			n = 0;
		}
	}
	rc = publish(s, run, n);
	atomic_fetch_add_explicit(&s->bytes, b->off - start,
				  memory_order_relaxed);
	if (rc)
		return rc;
	if (r == SLUICE_EMSGSIZE) {
		char what[96];

		snprintf(what, sizeof(what), "is longer than %zu bytes",
			 s->cfg.max_body);
		return set_err(s, SLUICE_EMSGSIZE, name, what);
	}
	if (r == SLUICE_EPROTO)
		return set_err(s, SLUICE_EPROTO, name,
			       "is cut short: the input ends inside a length "
			       "frame");
	if (r < 0)
		return set_err(s, (int)r, name, "could not be parsed");
	if (limit &&
	    atomic_load_explicit(&s->messages, memory_order_relaxed) >= limit)
		return 1;
	/* Keep the unparsed tail at the front. */
	memmove(b->p, b->p + b->off, b->len - b->off);
	b->len -= b->off;
	b->off = 0;
	return 0;
}

/* Wait until @fd is readable or stop() was called; true to go on. */
static bool
wait_readable(struct sluice_stream *s, int fd)
{
	struct pollfd p[2] = { { fd, POLLIN, 0 }, { s->stop_efd, POLLIN, 0 } };

	while (!atomic_load(&s->stopping)) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return true; /* let read() report it */
		}
		if (p[1].revents)
			return false;
		if (p[0].revents)
			return true;
	}
	return false;
}

/* Read one input to its end.  Returns 0, 1 (limit/stop), or an error. */
static int
read_one(struct sluice_stream *s, struct inbuf *b, int fd, const char *name)
{
	size_t need = s->cfg.max_body + 8 + READ_CHUNK;
	ssize_t got;
	int rc, e;

	b->len = b->off = 0;
	for (;;) {
		if (b->cap - b->len < READ_CHUNK && b->cap < need) {
			size_t ncap = b->cap * 2 < need ? b->cap * 2 : need;
			uint8_t *np = sl_realloc(b->p, ncap);

			if (!np)
				return set_err(s, SLUICE_ENOMEM, name,
					       "could not be buffered");
			b->p = np;
			b->cap = ncap;
		}
		if (!wait_readable(s, fd))
			return 1;
		got = read(fd, b->p + b->len, b->cap - b->len);
		if (got < 0) {
			e = errno;
			if (e == EINTR || e == EAGAIN)
				continue;
			snprintf(s->errmsg, sizeof(s->errmsg), "%s: read: %s",
				 name, os_error(e));
			s->err = -e;
			return -e;
		}
		b->len += (size_t)got;
		rc = drain_buffer(s, b, name, got == 0);
		if (rc)
			return rc;
		if (got == 0)
			return 0;
	}
}

static void *
reader_main(void *arg)
{
	struct sluice_stream *s = arg;
	struct inbuf b = { NULL, 0, 0, 0 };
	size_t i;
	int rc = 0;

	b.cap = READ_CHUNK;
	b.p = sl_malloc(b.cap);
	if (!b.p)
		rc = set_err(s, SLUICE_ENOMEM, s->names[0],
			     "could not be buffered");
	for (i = 0; rc == 0 && i < s->nfds; i++)
		rc = read_one(s, &b, s->fds[i], s->names[i]);
	if (rc == 0)
		atomic_store(&s->eof, 1);
	if (rc == SLUICE_ECLOSED) /* stop() closed the queue: not an error */
		s->err = 0;
	sl_free(b.p);
	/* No more messages: the source reports ECLOSED once all settled. */
	sluice_queue_close(s->q);
	return NULL;
}

static void
close_inputs(struct sluice_stream *s)
{
	size_t i;

	for (i = 0; i < s->nfds; i++)
		if (s->fds[i] > 0)
			close(s->fds[i]);
	sl_free(s->fds);
	sl_free(s->names);
}

static int
open_inputs(struct sluice_stream *s, char *err, size_t errsize)
{
	size_t n = s->cfg.npaths ? s->cfg.npaths : 1, i;
	const char *path;
	int e;

	s->fds = sl_calloc(n, sizeof(*s->fds));
	s->names = sl_calloc(n, sizeof(*s->names));
	if (!s->fds || !s->names)
		return SLUICE_ENOMEM;
	for (i = 0; i < n; i++) {
		path = s->cfg.npaths ? s->cfg.paths[i] : "-";
		if (strcmp(path, "-") == 0) {
			s->fds[i] = 0;
			s->names[i] = "stdin";
		} else {
			s->fds[i] = open(path, O_RDONLY | O_CLOEXEC);
			s->names[i] = path;
			if (s->fds[i] < 0) {
				e = errno;
				if (err)
					snprintf(err, errsize, "%s: %s", path,
						 os_error(e));
				s->nfds = i;
				return -e;
			}
		}
		s->nfds = i + 1;
	}
	return 0;
}

int
sluice_stream_open(const struct sluice_stream_config *cfg, char *err,
		   size_t errsize, struct sluice_stream **out)
{
	struct sluice_queue_config qc;
	struct sluice_stream *s;
	int rc;

	if (!cfg || !out || cfg->capacity == 0 || cfg->max_body == 0 ||
	    cfg->max_body > UINT32_MAX)
		return SLUICE_EINVAL;
	s = sl_calloc(1, sizeof(*s));
	if (!s)
		return SLUICE_ENOMEM;
	s->cfg = *cfg;
	s->stop_efd = -1;
	rc = open_inputs(s, err, errsize);
	if (rc)
		goto out_inputs;
	rc = SLUICE_ENOMEM;
	s->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->stop_efd < 0) {
		rc = -errno;
		goto out_inputs;
	}
	sluice_queue_config_init(&qc);
	qc.capacity = cfg->capacity;
	qc.max_body = cfg->max_body;
	qc.clock = cfg->clock;
	rc = sluice_queue_new(&qc, &s->q);
	if (rc)
		goto out_efd;
	rc = sl_thread_create(&s->reader, "sluice-reader", reader_main, s);
	if (rc) {
		rc = -rc;
		goto out_queue;
	}
	s->started = true;
	*out = s;
	return 0;

out_queue:
	sluice_queue_free(s->q);
out_efd:
	close(s->stop_efd);
out_inputs:
	close_inputs(s);
	sl_free(s);
	return rc;
}

struct sluice_source
sluice_stream_source(struct sluice_stream *s)
{
	return sluice_queue_source(s->q);
}

void
sluice_stream_stop(struct sluice_stream *s)
{
	uint64_t one = 1;

	if (!s || atomic_exchange(&s->stopping, true))
		return;
	if (write(s->stop_efd, &one, sizeof(one)) < 0) {
		/* The eventfd cannot be full after one write; nothing to do. */
	}
	sluice_queue_close(s->q); /* ends a publish blocked on a full queue */
}

int
sluice_stream_finish(struct sluice_stream *s, char *err, size_t errsize)
{
	if (s->started && !s->joined) {
		pthread_join(s->reader, NULL);
		s->joined = true;
	}
	if (s->err && err)
		snprintf(err, errsize, "%s", s->errmsg);
	return s->err;
}

int
sluice_stream_take_unfinished(struct sluice_stream *s, struct sluice_msg **out,
			      size_t max)
{
	return sluice_queue_take_all(s->q, out, max);
}

void
sluice_stream_stats(struct sluice_stream *s, struct sluice_stream_stats *out)
{
	out->messages =
		atomic_load_explicit(&s->messages, memory_order_relaxed);
	out->bytes = atomic_load_explicit(&s->bytes, memory_order_relaxed);
	out->eof = atomic_load(&s->eof);
}

void
sluice_stream_free(struct sluice_stream *s)
{
	if (!s)
		return;
	sluice_stream_stop(s);
	(void)sluice_stream_finish(s, NULL, 0);
	sluice_queue_free(s->q);
	close(s->stop_efd);
	close_inputs(s);
	sl_free(s);
}
