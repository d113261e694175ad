/* SPDX-License-Identifier: MIT */
/*
 * debug_http.c - the debug HTTP server behind sluice_debug_http_*: a
 * libmicrohttpd daemon answering /metrics, /debug/pprof/ and /healthz.
 *
 * MHD runs in thread-per-connection mode with an internal listening thread
 * (observability.md section 7: a later profile?seconds=N request blocks its
 * handler for N seconds, which must not stall the other connections).  The
 * connection threads use poll(), not select(), so a process with more than
 * FD_SETSIZE descriptors (many exec handlers) still works.
 *
 * The access handler answers in two phases: its first call for a request
 * only marks the request, the response is queued on the second.  Queueing
 * on the first call makes MHD close the connection after every response
 * (observability.md section 7 measured a four-fold loss from that), so
 * Prometheus' keep-alive scrapes would reconnect every time.  Methods that
 * are refused get their 405 on the first call on purpose: MHD then closes
 * the connection instead of reading a body nobody wants.
 *
 * The /metrics text is rendered per request and handed to MHD with a free
 * callback that returns it through sluice_metrics_free_text(), since it
 * came from sluice's allocator, not from malloc.
 *
 * Errors at start: MHD_start_daemon() returns NULL without a documented
 * reason.  Its messages go through our logger into the server's logbuf
 * while start runs, and become the caller's error text; errno is read
 * right after the NULL return (libmicrohttpd 0.9.75 leaves bind's errno
 * there, e.g. EADDRINUSE) and taken when it is set, SLUICE_EIO otherwise.
 *
 * Locking: every field of struct sluice_debug_http is immutable once start
 * returns, except the logger's state, guarded by log_mu.  The handler runs
 * on many connection threads at once and only reads; rendering is
 * thread-safe in the registry.  No sluice lock is held while MHD runs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sluice/debug_http.h>
#include <sluice/engine.h>
#include <sluice/heapprof.h>
#include <sluice/metrics.h>
#include <sluice/profile.h>
#include <sluice/trace.h>

#include "obs/pb.h"
#include "obs/profile.h"
#include "util/alloc.h"

#define LOG_BUFSZ  256
#define HOST_BUFSZ 256

struct sluice_debug_http {
	struct MHD_Daemon *daemon;      /* immutable after start */
	struct sluice_metrics *metrics; /* borrowed; immutable; may be NULL */
	_Atomic(struct sluice_engine *) engine; /* /debug/inflight; borrowed */
	uint16_t port;                          /* immutable after start */
	pthread_mutex_t log_mu;                 /* guards logging and logbuf */
	bool logging;            /* capture MHD's messages (start only) */
	char logbuf[LOG_BUFSZ];  /* first message captured, or "" */
	pthread_mutex_t stop_mu; /* guards stopping */
	pthread_cond_t stop_cv;  /* signalled when stopping is set */
	bool stopping;           /* stop() began: cut timed profiles short */
};

/* *con_cls of a GET whose first handler call has been seen. */
static char seen_marker;

/* *con_cls of a POST /debug/pprof/symbol: the body read so far. */
struct post {
	struct sl_buf body;
};

/* Longest symbol request body accepted (about 3000 addresses). */
#define SYMBOL_BODY_MAX (64u * 1024u)

#define INDEX_HEAD                                                        \
	"<!DOCTYPE html>\n"                                               \
	"<html><head><meta charset=\"utf-8\"><title>sluice debug</title>" \
	"</head>\n<body>\n<h1>sluice debug endpoints</h1>\n<ul>\n"
#define INDEX_METRICS                                                      \
	"<li><a href=\"/metrics\">/metrics</a>: metrics, Prometheus text " \
	"format 0.0.4</li>\n"
#define INDEX_TAIL                                                                         \
	"<li><a href=\"/debug/pprof/profile?seconds=30\">profile</a>: CPU profile "        \
	"(?seconds=N, ?hz=N, ?format=pprof|folded|svg)</li>\n"                             \
	"<li><a href=\"/debug/pprof/heap\">heap</a>: sampled live memory (?seconds=N for " \
	"a delta, ?debug=1, ?format=, ?sample_index=)</li>\n"                              \
	"<li><a href=\"/debug/pprof/allocs\">allocs</a>: sampled allocations since the "   \
	"start</li>\n"                                                                     \
	"<li><a href=\"/debug/pprof/block\">block</a>: time spent waiting on sluice's "    \
	"queues</li>\n"                                                                    \
	"<li><a href=\"/debug/pprof/mutex\">mutex</a>: time spent waiting for sluice's "   \
	"contended locks</li>\n"                                                           \
	"<li><a href=\"/debug/pprof/goroutine?debug=2\">goroutine</a>: sluice's threads "  \
	"and what each is doing (?debug=1|2)</li>\n"                                       \
	"<li><a href=\"/debug/pprof/threadcreate?debug=1\">threadcreate</a>: the stacks "  \
	"that started them</li>\n"                                                         \
	"<li><a href=\"/debug/pprof/trace?seconds=1\">trace</a>: execution trace, Chrome " \
	"JSON for ui.perfetto.dev (?seconds=N, ?format=json|perfetto)</li>\n"              \
	"<li><a href=\"/debug/pprof/cmdline\">cmdline</a>: the command line</li>\n"        \
	"<li><a href=\"/debug/pprof/symbol\">symbol</a>: address to name (POST "           \
	"0xADDR+0xADDR)</li>\n"                                                            \
	"<li><a href=\"/debug/inflight\">/debug/inflight</a>: messages in "                \
	"flight and the last failures (?format=json)</li>\n"                               \
	"<li><a href=\"/healthz\">/healthz</a>: \"ok\" while the process "                 \
	"serves</li>\n</ul>\n"                                                             \
	"<p>Profiles cover sluice's own threads; build with "                              \
	"-fno-omit-frame-pointer for whole stacks.</p>\n"                                  \
	"</body></html>\n"

/* The index, with and without the /metrics line. */
static const char index_with_metrics[] = INDEX_HEAD INDEX_METRICS INDEX_TAIL;
static const char index_no_metrics[] = INDEX_HEAD INDEX_TAIL;

static const char allow_methods[] = "GET, HEAD";

static void
set_err(char *err, size_t errlen, const char *addr, const char *what)
{
	if (!err || errlen == 0)
		return;
	snprintf(err, errlen, "debug http %s: %s", addr, what);
}

static int
gai_code(int rc, int saved_errno)
{
	switch (rc) {
	case EAI_MEMORY:
		return SLUICE_ENOMEM;
	case EAI_AGAIN:
		return SLUICE_EAGAIN;
	case EAI_SYSTEM:
		return saved_errno > 0 ? -saved_errno : SLUICE_EIO;
	default:
		/* EAI_NONAME, EAI_SERVICE, EAI_FAMILY, EAI_NODATA...: the
		 * caller named something that is not an address. */
		return SLUICE_EINVAL;
	}
}

/*
 * Split @addr into @host (NUL-terminated, brackets removed) and @port.
 * Accepts "HOST:PORT", "[V6]:PORT", ":PORT"; an unbracketed host holding a
 * ':' is refused because "::1:80" has no single reading.
 */
static int
split_addr(const char *addr, char *host, size_t hostsz, uint16_t *port,
	   const char **why)
{
	const char *colon, *p, *h = addr;
	size_t hlen;
	unsigned long v = 0;

	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');

		if (!close || close[1] != ':') {
			*why = "expected \"[IPV6]:PORT\"";
			return SLUICE_EINVAL;
		}
		h = addr + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
		if (hlen == 0) {
			*why = "empty IPv6 address";
			return SLUICE_EINVAL;
		}
	} else {
		colon = strrchr(addr, ':');
		if (!colon) {
			*why = "expected \"HOST:PORT\"";
			return SLUICE_EINVAL;
		}
		hlen = (size_t)(colon - addr);
		if (memchr(addr, ':', hlen)) {
			*why = "an IPv6 address needs brackets: \"[V6]:PORT\"";
			return SLUICE_EINVAL;
		}
	}
	if (hlen >= hostsz) {
		*why = "host name too long";
		return SLUICE_EINVAL;
	}
	p = colon + 1;
	if (*p == '\0') {
		*why = "missing port";
		return SLUICE_EINVAL;
	}
	/* Digits only: no sign, no spaces, no hex; at most 5 of them so the
	 * value cannot overflow before the range check. */
	for (; *p; p++) {
		if (*p < '0' || *p > '9' || p - colon > 5) {
			*why = "port must be a decimal number 0..65535";
			return SLUICE_EINVAL;
		}
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v > 65535) {
		*why = "port must be a decimal number 0..65535";
		return SLUICE_EINVAL;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	*port = (uint16_t)v;
	return 0;
}

/* Resolve @host into @ss with @port; an empty host is 127.0.0.1. */
static int
resolve(const char *host, uint16_t port, struct sockaddr_storage *ss,
	const char **why)
{
	struct addrinfo hints, *res = NULL;
	int rc, saved;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host[0] ? host : "127.0.0.1", NULL, &hints, &res);
	saved = errno;
	if (rc != 0) {
		*why = gai_strerror(rc);
		return gai_code(rc, saved);
	}
	if (res->ai_family == AF_INET &&
	    res->ai_addrlen == sizeof(struct sockaddr_in)) {
		struct sockaddr_in *in = (struct sockaddr_in *)(void *)ss;

		memcpy(ss, res->ai_addr, sizeof(*in));
		in->sin_port = htons(port);
	} else if (res->ai_family == AF_INET6 &&
		   res->ai_addrlen == sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)ss;

		memcpy(ss, res->ai_addr, sizeof(*in6));
		in6->sin6_port = htons(port);
	} else {
		freeaddrinfo(res);
		*why = "not an IPv4 or IPv6 address";
		return SLUICE_EINVAL;
	}
	freeaddrinfo(res);
	return 0;
}

/*
 * MHD's error logger.  While start runs it keeps the first message as the
 * reason for a failure; afterwards it drops everything (the library does
 * not print).
 */
__attribute__((format(printf, 2, 0))) static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct sluice_debug_http *h = cls;
	size_t n;

	if (pthread_mutex_lock(&h->log_mu) != 0)
		return;
	if (h->logging && h->logbuf[0] == '\0') {
		vsnprintf(h->logbuf, sizeof(h->logbuf), fmt, ap);
		n = strlen(h->logbuf);
		while (n > 0 &&
		       (h->logbuf[n - 1] == '\n' || h->logbuf[n - 1] == '\r'))
			h->logbuf[--n] = '\0';
	}
	pthread_mutex_unlock(&h->log_mu);
}

static void
free_rendered(void *text)
{
	sluice_metrics_free_text(text);
}

/* Queue @resp with @status and the headers every answer carries. */
static enum MHD_Result
send_resp(struct MHD_Connection *conn, unsigned int status,
	  struct MHD_Response *resp, const char *ctype)
{
	enum MHD_Result r = MHD_NO;

	if (!resp)
		return MHD_NO;
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				    ctype) == MHD_YES &&
	    MHD_add_response_header(resp, "X-Content-Type-Options",
				    "nosniff") == MHD_YES &&
	    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL,
				    "no-store") == MHD_YES &&
	    (status != MHD_HTTP_METHOD_NOT_ALLOWED ||
	     MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
				     allow_methods) == MHD_YES))
		r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

/* A response over static text (MHD only reads it). */
static enum MHD_Result
send_static(struct MHD_Connection *conn, unsigned int status, const char *text,
	    size_t len, const char *ctype)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		len, (void *)(uintptr_t)text, MHD_RESPMEM_PERSISTENT);

	return send_resp(conn, status, resp, ctype);
}

static enum MHD_Result
send_text(struct MHD_Connection *conn, unsigned int status, const char *text)
{
	return send_static(conn, status, text, strlen(text),
			   "text/plain; charset=utf-8");
}

static enum MHD_Result
serve_metrics(struct sluice_debug_http *h, struct MHD_Connection *conn)
{
	struct MHD_Response *resp;
	char *text = NULL;
	size_t len = 0;

	if (sluice_metrics_render(h->metrics, &text, &len) != 0)
		return send_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				 "rendering the metrics failed: out of "
				 "memory\n");
	resp = MHD_create_response_from_buffer_with_free_callback(
		len, text, free_rendered);
	if (!resp) {
		sluice_metrics_free_text(text);
		return MHD_NO;
	}
	return send_resp(conn, MHD_HTTP_OK, resp, SLUICE_METRICS_CONTENT_TYPE);
}

static enum MHD_Result
serve_index(const struct sluice_debug_http *h, struct MHD_Connection *conn)
{
	if (h->metrics)
		return send_static(conn, MHD_HTTP_OK, index_with_metrics,
				   sizeof(index_with_metrics) - 1,
				   "text/html; charset=utf-8");
	return send_static(conn, MHD_HTTP_OK, index_no_metrics,
			   sizeof(index_no_metrics) - 1,
			   "text/html; charset=utf-8");
}

/* ---- request parameters ------------------------------------------------- */

/*
 * Parse the query parameter @name as a whole number in [@lo, @hi]; absent
 * gives @dflt.  Anything else (a sign, spaces, letters, an empty value, a
 * value out of range) is refused with *@why set, for a 400: Go's handlers
 * silently fall back to 30 s on garbage, which hides typos like
 * "seconds=5s" behind a half-minute wait.
 */
static int
param_int(struct MHD_Connection *conn, const char *name, long lo, long hi,
	  long dflt, long *out, const char **why)
{
	const char *v =
		MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
	long x = 0;
	size_t i;

	if (!v) {
		*out = dflt;
		return 0;
	}
	if (!v[0]) {
		*why = "is empty";
		return SLUICE_EINVAL;
	}
	for (i = 0; v[i]; i++) {
		if (v[i] < '0' || v[i] > '9') {
			*why = "is not a whole non-negative number";
			return SLUICE_EINVAL;
		}
		if (i >= 9) {
			*why = "is too large";
			return SLUICE_EINVAL;
		}
		x = x * 10 + (v[i] - '0');
	}
	if (x < lo || x > hi) {
		*why = x < lo ? "is too small" : "is too large";
		return SLUICE_EINVAL;
	}
	*out = x;
	return 0;
}

/* The value of ?@name= among @choices (NULL-terminated); absent gives
 * index 0.  Returns the index, or -1 for an unknown value. */
static int
param_choice(struct MHD_Connection *conn, const char *name,
	     const char *const *choices)
{
	const char *v =
		MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
	int i;

	if (!v)
		return 0;
	for (i = 0; choices[i]; i++)
		if (strcmp(v, choices[i]) == 0)
			return i;
	return -1;
}

/* ---- replies --------------------------------------------------------------
 */

/* A rendered reply: the handlers fill it, send_reply() hands it to MHD. */
struct reply {
	unsigned int status;
	const char *ctype;
	const char *filename; /* Content-Disposition attachment, or NULL */
	struct sl_buf body;
};

static void
free_buf(void *p)
{
	sl_free(p);
}

static enum MHD_Result
send_reply(struct MHD_Connection *conn, struct reply *r)
{
	static char empty[1];
	struct MHD_Response *resp;
	char disp[96];

	if (sl_buf_failed(&r->body)) {
		sl_buf_free(&r->body);
		return send_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				 "out of memory\n");
	}
	resp = MHD_create_response_from_buffer_with_free_callback(
		r->body.len, r->body.data ? (void *)r->body.data : empty,
		r->body.data ? free_buf : NULL);
	if (!resp) {
		sl_buf_free(&r->body);
		return MHD_NO;
	}
	/* MHD owns the bytes now. */
	sl_buf_init(&r->body);
	if (r->filename) {
		snprintf(disp, sizeof(disp), "attachment; filename=\"%s\"",
			 r->filename);
		if (MHD_add_response_header(resp, "Content-Disposition",
					    disp) != MHD_YES) {
			MHD_destroy_response(resp);
			return MHD_NO;
		}
	}
	return send_resp(conn, r->status, resp, r->ctype);
}

/* A 400 naming the parameter and what is wrong with it. */
static enum MHD_Result
bad_param(struct MHD_Connection *conn, struct reply *r, const char *name,
	  const char *why)
{
	sl_buf_free(&r->body);
	r->status = MHD_HTTP_BAD_REQUEST;
	r->ctype = "text/plain; charset=utf-8";
	r->filename = NULL;
	sl_buf_printf(&r->body, "bad parameter %s: %s\n", name, why);
	return send_reply(conn, r);
}

static enum MHD_Result
plain_error(struct MHD_Connection *conn, struct reply *r, unsigned status,
	    const char *text)
{
	sl_buf_free(&r->body);
	r->status = status;
	r->ctype = "text/plain; charset=utf-8";
	r->filename = NULL;
	sl_buf_puts(&r->body, text);
	sl_buf_puts(&r->body, "\n");
	return send_reply(conn, r);
}

/*
 * Wait @seconds, or less when the server stops (sluice_debug_http_stop()
 * joins the connection threads, so a 30 s profile must not hold it).
 * Returns false when cut short.
 */
static bool
wait_seconds(struct sluice_debug_http *h, long seconds)
{
	struct timespec until;
	bool stopping;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += seconds;
	if (pthread_mutex_lock(&h->stop_mu) != 0)
		return false;
	while (!h->stopping && pthread_cond_timedwait(&h->stop_cv, &h->stop_mu,
						      &until) != ETIMEDOUT)
		;
	stopping = h->stopping;
	pthread_mutex_unlock(&h->stop_mu);
	return !stopping;
}

/* ---- endpoints ------------------------------------------------------------
 */

/* /debug/pprof/cmdline: argv joined by NUL bytes, as Go's handler. */
static enum MHD_Result
serve_cmdline(struct MHD_Connection *conn, struct reply *r)
{
	char tmp[4096];
	ssize_t n;
	int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return plain_error(conn, r, MHD_HTTP_INTERNAL_SERVER_ERROR,
				   "cannot read /proc/self/cmdline");
	while ((n = read(fd, tmp, sizeof(tmp))) > 0)
		sl_buf_put(&r->body, tmp, (size_t)n);
	close(fd);
	/* The kernel ends every argument with a NUL; Go joins with one. */
	if (r->body.len && r->body.data[r->body.len - 1] == '\0')
		r->body.len--;
	return send_reply(conn, r);
}

static bool
is_sep(char c)
{
	return c == '+' || c == ' ';
}

/*
 * /debug/pprof/symbol: the "symbolz" protocol pprof speaks for
 * -symbolize=remote.  GET answers "num_symbols: 1"; POST (or GET with a
 * query) of "0xADDR+0xADDR..." answers "0xADDR name" lines for the
 * addresses that resolve, through the same .symtab symbolizer as the
 * profiles (dladdr would only see exported symbols).
 */
static enum MHD_Result
serve_symbol(struct MHD_Connection *conn, struct reply *r, const char *input,
	     size_t len)
{
	char name[256];
	size_t i = 0;

	if (len == 0) {
		sl_buf_puts(&r->body, "num_symbols: 1\n");
		return send_reply(conn, r);
	}
	while (i < len) {
		size_t j = i;
		uintptr_t pc = 0;
		bool ok = len - i > 2 && input[i] == '0' &&
			  (input[i + 1] == 'x' || input[i + 1] == 'X');

		if (ok) {
			for (j = i + 2; j < len && !is_sep(input[j]); j++) {
				int c = input[j], d;

				if (c >= '0' && c <= '9')
					d = c - '0';
				else if (c >= 'a' && c <= 'f')
					d = c - 'a' + 10;
				else if (c >= 'A' && c <= 'F')
					d = c - 'A' + 10;
				else
					break;
				pc = (pc << 4) | (uintptr_t)d;
			}
			ok = j > i + 2 && (j == len || is_sep(input[j]));
		}
		if (!ok)
			return plain_error(conn, r, MHD_HTTP_BAD_REQUEST,
					   "bad symbol request: expected "
					   "0xADDR[+0xADDR...]");
		if (sl_sym_name(pc, name, sizeof(name)) == 0)
			sl_buf_printf(&r->body, "%#" PRIxPTR " %s\n", pc, name);
		i = j + 1;
	}
	return send_reply(conn, r);
}

static const char *const fmt_profile[] = { "pprof", "folded", "svg", NULL };

/* Move a profile the public API returned (sluice_profile_free()'d) into
 * the reply's body. */
static void
take_profile(struct reply *r, char *data, size_t len)
{
	sl_buf_put(&r->body, data, len);
	sluice_profile_free(data);
}

/* The reply headers of a profile in @format. */
static void
profile_reply(struct reply *r, enum sluice_profile_format format,
	      const char *filename)
{
	switch (format) {
	case SLUICE_PROFILE_PPROF:
		r->ctype = SLUICE_PROFILE_PPROF_CONTENT_TYPE;
		r->filename = filename;
		break;
	case SLUICE_PROFILE_SVG:
		r->ctype = SLUICE_PROFILE_SVG_CONTENT_TYPE;
		break;
	default:
		r->ctype = SLUICE_PROFILE_TEXT_CONTENT_TYPE;
		break;
	}
}

/* ?format= among pprof, folded, svg; *@why set when unknown. */
static int
param_format(struct MHD_Connection *conn, enum sluice_profile_format *out)
{
	int f = param_choice(conn, "format", fmt_profile);

	if (f < 0)
		return SLUICE_EINVAL;
	*out = f == 0   ? SLUICE_PROFILE_PPROF
	       : f == 1 ? SLUICE_PROFILE_FOLDED
			: SLUICE_PROFILE_SVG;
	return 0;
}

/* ?debug= (0 to @max_debug) then ?format=: debug=1 asks for Go's text,
 * debug=2 for one stack per thread, 0 for ?format.  Returns NULL, or the
 * name of the parameter at fault with *@why. */
static const char *
param_debug_format(struct MHD_Connection *conn, int max_debug,
		   enum sluice_profile_format *out, const char **why)
{
	static const char *const debug_values[] = { "0", "1", "2", NULL };
	int debug = param_choice(conn, "debug", debug_values);

	if (debug < 0 || debug > max_debug) {
		*why = max_debug == 2 ? "not 0, 1 or 2" : "not 0 or 1";
		return "debug";
	}
	if (param_format(conn, out) != 0) {
		*why = "not pprof, folded or svg";
		return "format";
	}
	if (debug == 1)
		*out = SLUICE_PROFILE_TEXT;
	else if (debug == 2)
		*out = SLUICE_PROFILE_TEXT_THREADS;
	return NULL;
}

/* Reply with the profile @data (taken) in @format, or a 500 for @rc. */
static enum MHD_Result
send_profile(struct MHD_Connection *conn, struct reply *r, int rc,
	     enum sluice_profile_format format, char *data, size_t len,
	     const char *filename)
{
	if (rc != 0)
		return plain_error(conn, r, MHD_HTTP_INTERNAL_SERVER_ERROR,
				   sluice_strerror(rc));
	take_profile(r, data, len);
	profile_reply(r, format, filename);
	return send_reply(conn, r);
}

static enum MHD_Result
serve_cpu(struct sluice_debug_http *h, struct MHD_Connection *conn,
	  struct reply *r)
{
	enum sluice_profile_format format;
	const char *why = NULL;
	char err[160];
	char *data = NULL;
	size_t len = 0;
	long seconds, hz;
	int rc;

	if (param_int(conn, "seconds", 1, SLUICE_DEBUG_HTTP_MAX_SECONDS, 30,
		      &seconds, &why) != 0)
		return bad_param(conn, r, "seconds", why);
	if (param_int(conn, "hz", 1, 1000, 100, &hz, &why) != 0)
		return bad_param(conn, r, "hz", why);
	if (param_format(conn, &format) != 0)
		return bad_param(conn, r, "format", "not pprof, folded or svg");
	rc = sluice_cpu_profile_start((int)hz, err, sizeof(err));
	if (rc == SLUICE_EBUSY)
		return plain_error(conn, r, MHD_HTTP_CONFLICT, err);
	if (rc != 0)
		return plain_error(conn, r, MHD_HTTP_INTERNAL_SERVER_ERROR,
				   err);
	if (!wait_seconds(h, seconds)) {
		/* Stopping: the profile is dropped, nobody waits for it. */
		if (sluice_cpu_profile_stop(format, &data, &len) == 0)
			sluice_profile_free(data);
		return plain_error(conn, r, MHD_HTTP_SERVICE_UNAVAILABLE,
				   "the server is stopping");
	}
	rc = sluice_cpu_profile_stop(format, &data, &len);
	return send_profile(conn, r, rc, format, data, len, "profile");
}

/* heap, allocs, block, mutex: a snapshot, or the delta over ?seconds=N. */
static enum MHD_Result
serve_sampled(struct sluice_debug_http *h, struct MHD_Connection *conn,
	      struct reply *r, enum sluice_profile_kind kind, const char *name)
{
	struct sluice_profile_snapshot *base = NULL, *now = NULL;
	enum sluice_profile_format format;
	const char *why = NULL, *bad, *index;
	char *data = NULL;
	size_t len = 0;
	long seconds;
	int rc;

	if (param_int(conn, "seconds", 0, SLUICE_DEBUG_HTTP_MAX_SECONDS, 0,
		      &seconds, &why) != 0)
		return bad_param(conn, r, "seconds", why);
	bad = param_debug_format(conn, 1, &format, &why);
	if (bad)
		return bad_param(conn, r, bad, why);
	index = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
					    "sample_index");
	if (seconds > 0) {
		rc = sluice_profile_snapshot(kind, &base);
		if (rc != 0)
			return plain_error(conn, r,
					   MHD_HTTP_INTERNAL_SERVER_ERROR,
					   sluice_strerror(rc));
		if (!wait_seconds(h, seconds)) {
			sluice_profile_snapshot_free(base);
			return plain_error(conn, r,
					   MHD_HTTP_SERVICE_UNAVAILABLE,
					   "the server is stopping");
		}
	}
	rc = sluice_profile_snapshot(kind, &now);
	if (rc == 0)
		rc = sluice_profile_encode(now, base, format, index, &data,
					   &len);
	sluice_profile_snapshot_free(now);
	sluice_profile_snapshot_free(base);
	if (rc == SLUICE_EINVAL && index)
		return bad_param(conn, r, "sample_index",
				 "not a sample type of this profile");
	return send_profile(conn, r, rc, format, data, len,
			    seconds > 0 ? "delta" : name);
}

/* goroutine (?debug=0|1|2) and threadcreate (?debug=0|1). */
static enum MHD_Result
serve_threads(struct MHD_Connection *conn, struct reply *r, bool goroutine)
{
	enum sluice_profile_format format;
	const char *why = NULL, *bad;
	char *data = NULL;
	size_t len = 0;
	int rc;

	bad = param_debug_format(conn, goroutine ? 2 : 1, &format, &why);
	if (bad)
		return bad_param(conn, r, bad, why);
	rc = goroutine ? sluice_goroutine_profile(format, &data, &len)
		       : sluice_threadcreate_profile(format, &data, &len);
	return send_profile(conn, r, rc, format, data, len,
			    goroutine ? "goroutine" : "threadcreate");
}

static enum MHD_Result
serve_trace(struct sluice_debug_http *h, struct MHD_Connection *conn,
	    struct reply *r)
{
	static const char *const formats[] = { "json", "perfetto", NULL };
	const char *why = NULL;
	void *data = NULL;
	size_t len = 0;
	long seconds;
	int format, rc;

	if (param_int(conn, "seconds", 1, SLUICE_DEBUG_HTTP_MAX_SECONDS, 1,
		      &seconds, &why) != 0)
		return bad_param(conn, r, "seconds", why);
	format = param_choice(conn, "format", formats);
	if (format < 0)
		return bad_param(conn, r, "format", "not json or perfetto");
	rc = sluice_trace_start(NULL);
	if (rc == SLUICE_EBUSY)
		return plain_error(conn, r, MHD_HTTP_CONFLICT,
				   "tracing already in use");
	if (rc != 0)
		return plain_error(conn, r, MHD_HTTP_INTERNAL_SERVER_ERROR,
				   sluice_strerror(rc));
	if (!wait_seconds(h, seconds)) {
		(void)sluice_trace_stop();
		return plain_error(conn, r, MHD_HTTP_SERVICE_UNAVAILABLE,
				   "the server is stopping");
	}
	(void)sluice_trace_stop();
	rc = sluice_trace_write(format == 0 ? SLUICE_TRACE_JSON
					    : SLUICE_TRACE_PERFETTO,
				&data, &len);
	if (rc != 0)
		return plain_error(conn, r, MHD_HTTP_INTERNAL_SERVER_ERROR,
				   sluice_strerror(rc));
	sl_buf_put(&r->body, data, len);
	sluice_trace_free(data);
	r->ctype =
		format == 0 ? "application/json" : "application/octet-stream";
	r->filename = format == 0 ? "trace.json" : "trace.perfetto-trace";
	return send_reply(conn, r);
}

static enum MHD_Result
serve_inflight(struct sluice_debug_http *h, struct MHD_Connection *conn,
	       struct reply *r)
{
	static const char *const formats[] = { "text", "json", NULL };
	struct sluice_engine *e =
		atomic_load_explicit(&h->engine, memory_order_acquire);
	char *data = NULL;
	size_t len = 0;
	int format, rc;

	format = param_choice(conn, "format", formats);
	if (format < 0)
		return bad_param(conn, r, "format", "not text or json");
	if (!e)
		return plain_error(conn, r, MHD_HTTP_NOT_FOUND,
				   "no engine attached to this server");
	rc = sluice_engine_inflight(
		e, format == 1 ? SLUICE_INFLIGHT_JSON : SLUICE_INFLIGHT_TEXT,
		&data, &len);
	if (rc != 0)
		return plain_error(conn, r, MHD_HTTP_INTERNAL_SERVER_ERROR,
				   sluice_strerror(rc));
	sl_buf_put(&r->body, data, len);
	sluice_engine_free_text(data);
	r->ctype =
		format == 1 ? "application/json" : "text/plain; charset=utf-8";
	return send_reply(conn, r);
}

/* MHD_KeyValueIterator: copy the first query key into the sl_buf. */
static enum MHD_Result
first_key(void *cls, enum MHD_ValueKind kind, const char *key,
	  const char *value)
{
	(void)kind;
	(void)value;
	sl_buf_puts(cls, key);
	return MHD_NO;
}

/* Route a GET (or HEAD) whose request is complete. */
static enum MHD_Result
route(struct sluice_debug_http *h, struct MHD_Connection *conn, const char *url)
{
	static const char prefix[] = "/debug/pprof/";
	struct reply r = { MHD_HTTP_OK,
			   "text/plain; charset=utf-8",
			   NULL,
			   { NULL, 0, 0, false } };
	const char *name;

	if (strcmp(url, "/metrics") == 0 && h->metrics)
		return serve_metrics(h, conn);
	if (strcmp(url, "/healthz") == 0)
		return send_static(conn, MHD_HTTP_OK, "ok", 2,
				   "text/plain; charset=utf-8");
	if (strcmp(url, "/debug/inflight") == 0)
		return serve_inflight(h, conn, &r);
	if (strncmp(url, prefix, sizeof(prefix) - 1) != 0)
		return send_text(conn, MHD_HTTP_NOT_FOUND,
				 "404 page not found\n");
	name = url + sizeof(prefix) - 1;
	if (name[0] == '\0')
		return serve_index(h, conn);
	if (strcmp(name, "profile") == 0)
		return serve_cpu(h, conn, &r);
	if (strcmp(name, "heap") == 0)
		return serve_sampled(h, conn, &r, SLUICE_PROFILE_HEAP, "heap");
	if (strcmp(name, "allocs") == 0)
		return serve_sampled(h, conn, &r, SLUICE_PROFILE_ALLOCS,
				     "allocs");
	if (strcmp(name, "block") == 0)
		return serve_sampled(h, conn, &r, SLUICE_PROFILE_BLOCK,
				     "block");
	if (strcmp(name, "mutex") == 0)
		return serve_sampled(h, conn, &r, SLUICE_PROFILE_MUTEX,
				     "mutex");
	if (strcmp(name, "goroutine") == 0)
		return serve_threads(conn, &r, true);
	if (strcmp(name, "threadcreate") == 0)
		return serve_threads(conn, &r, false);
	if (strcmp(name, "trace") == 0)
		return serve_trace(h, conn, &r);
	if (strcmp(name, "cmdline") == 0)
		return serve_cmdline(conn, &r);
	if (strcmp(name, "symbol") == 0) {
		/* GET with the addresses as the query, as Go accepts; MHD
		 * has parsed "?0x1+0x2" into one key "0x1 0x2". */
		struct sl_buf q;
		enum MHD_Result rc;

		sl_buf_init(&q);
		MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND,
					  first_key, &q);
		rc = serve_symbol(conn, &r, (const char *)q.data, q.len);
		sl_buf_free(&q);
		return rc;
	}
	return send_text(conn, MHD_HTTP_NOT_FOUND, "404 page not found\n");
}

/* POST /debug/pprof/symbol: gather the body, then answer. */
static enum MHD_Result
handle_post(struct MHD_Connection *conn, const char *upload,
	    size_t *upload_size, void **con_cls)
{
	struct reply r = { MHD_HTTP_OK,
			   "text/plain; charset=utf-8",
			   NULL,
			   { NULL, 0, 0, false } };
	struct post *p = *con_cls;
	enum MHD_Result rc;

	if (!p) {
		p = sl_calloc(1, sizeof(*p));
		if (!p)
			return MHD_NO;
		*con_cls = p;
		return MHD_YES;
	}
	if (*upload_size) {
		if (p->body.len + *upload_size > SYMBOL_BODY_MAX)
			return send_text(conn, MHD_HTTP_CONTENT_TOO_LARGE,
					 "symbol request too large\n");
		sl_buf_put(&p->body, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	/* Trailing newlines or spaces, as curl -d or a pipe may add. */
	while (p->body.len && (p->body.data[p->body.len - 1] == '\n' ||
			       p->body.data[p->body.len - 1] == '\r' ||
			       p->body.data[p->body.len - 1] == ' '))
		p->body.len--;
	rc = serve_symbol(conn, &r, (const char *)p->body.data, p->body.len);
	return rc;
}

static void
completed(void *cls, struct MHD_Connection *conn, void **con_cls,
	  enum MHD_RequestTerminationCode toe)
{
	struct post *p = *con_cls;

	(void)cls;
	(void)conn;
	(void)toe;
	if (p && *con_cls != (void *)&seen_marker) {
		sl_buf_free(&p->body);
		sl_free(p);
	}
	*con_cls = NULL;
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *conn, const char *url,
       const char *method, const char *version, const char *upload_data,
       size_t *upload_data_size, void **con_cls)
{
	struct sluice_debug_http *h = cls;
	bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
		   strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;

	(void)version;
	if (!get && strcmp(method, MHD_HTTP_METHOD_POST) == 0 &&
	    strcmp(url, "/debug/pprof/symbol") == 0)
		return handle_post(conn, upload_data, upload_data_size,
				   con_cls);
	if (!get)
		return send_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
				 "method not allowed\n");
	if (*con_cls != &seen_marker) {
		*con_cls = &seen_marker;
		return MHD_YES;
	}
	if (*upload_data_size != 0) {
		/* A GET with a body: drop it, answer once it is read. */
		*upload_data_size = 0;
		return MHD_YES;
	}
	return route(h, conn, url);
}

static void
destroy(struct sluice_debug_http *h)
{
	pthread_cond_destroy(&h->stop_cv);
	pthread_mutex_destroy(&h->stop_mu);
	pthread_mutex_destroy(&h->log_mu);
	sl_free(h);
}

int
sluice_debug_http_start(const char *addr, struct sluice_metrics *metrics,
			struct sluice_debug_http **out, char *err,
			size_t errlen)
{
	struct sluice_debug_http *h;
	struct sockaddr_storage ss;
	const union MHD_DaemonInfo *info;
	const char *why = NULL;
	char host[HOST_BUFSZ];
	unsigned int flags;
	uint16_t port = 0;
	int rc, saved;

	if (err && errlen > 0)
		err[0] = '\0';
	if (!addr)
		addr = SLUICE_DEBUG_HTTP_DEFAULT_ADDR;
	if (!out) {
		set_err(err, errlen, addr, "no place for the result");
		return SLUICE_EINVAL;
	}
	*out = NULL;
	memset(&ss, 0, sizeof(ss));
	rc = split_addr(addr, host, sizeof(host), &port, &why);
	if (rc == 0)
		rc = resolve(host, port, &ss, &why);
	if (rc != 0) {
		set_err(err, errlen, addr, why);
		return rc;
	}

	h = sl_calloc(1, sizeof(*h));
	if (!h) {
		set_err(err, errlen, addr, sluice_strerror(SLUICE_ENOMEM));
		return SLUICE_ENOMEM;
	}
	rc = pthread_mutex_init(&h->log_mu, NULL);
	if (rc != 0) {
		sl_free(h);
		set_err(err, errlen, addr, sluice_strerror(-rc));
		return -rc;
	}
	rc = pthread_mutex_init(&h->stop_mu, NULL);
	if (rc == 0) {
		/* wait_seconds() measures on CLOCK_MONOTONIC. */
		pthread_condattr_t ca;

		rc = pthread_condattr_init(&ca);
		if (rc == 0) {
			rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
			if (rc == 0)
				rc = pthread_cond_init(&h->stop_cv, &ca);
			pthread_condattr_destroy(&ca);
		}
		if (rc != 0)
			pthread_mutex_destroy(&h->stop_mu);
	}
	if (rc != 0) {
		pthread_mutex_destroy(&h->log_mu);
		sl_free(h);
		set_err(err, errlen, addr, sluice_strerror(-rc));
		return -rc;
	}
	h->metrics = metrics;
	h->logging = true;

	flags = MHD_USE_THREAD_PER_CONNECTION |
		MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
		MHD_USE_ERROR_LOG;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* The logger must be the first option, or MHD prints the messages
	 * about the options before it on stderr itself. */
	errno = 0;
	h->daemon = MHD_start_daemon(
		flags, port, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER,
		mhd_log, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		MHD_OPTION_CONNECTION_LIMIT,
		(unsigned int)SLUICE_DEBUG_HTTP_MAX_CONNS,
		MHD_OPTION_CONNECTION_TIMEOUT,
		(unsigned int)SLUICE_DEBUG_HTTP_IDLE_S,
		MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_NOTIFY_COMPLETED,
		completed, NULL, MHD_OPTION_END);
	saved = errno;

	/* From here on MHD's threads may log; stop capturing first. */
	if (pthread_mutex_lock(&h->log_mu) == 0) {
		h->logging = false;
		pthread_mutex_unlock(&h->log_mu);
	}
	if (!h->daemon) {
		rc = saved > 0 ? -saved : SLUICE_EIO;
		if (h->logbuf[0])
			set_err(err, errlen, addr, h->logbuf);
		else
			set_err(err, errlen, addr, sluice_strerror(rc));
		destroy(h);
		return rc;
	}
	info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info ? info->port : port;
	*out = h;
	return 0;
}

uint16_t
sluice_debug_http_port(const struct sluice_debug_http *h)
{
	return h->port;
}

void
sluice_debug_http_stop(struct sluice_debug_http *h)
{
	if (!h)
		return;
	/* Closes the listener, shuts every connection down and joins the
	 * connection threads, so a request being answered finishes first
	 * and nothing touches h or the registry afterwards. */
	if (pthread_mutex_lock(&h->stop_mu) == 0) {
		h->stopping = true;
		pthread_cond_broadcast(&h->stop_cv);
		pthread_mutex_unlock(&h->stop_mu);
	}
	MHD_stop_daemon(h->daemon);
	destroy(h);
}

void
sluice_debug_http_set_engine(struct sluice_debug_http *h,
			     struct sluice_engine *e)
{
	atomic_store_explicit(&h->engine, e, memory_order_release);
}
