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
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <sluice/debug_http.h>
#include <sluice/metrics.h>

#include "util/alloc.h"

#define LOG_BUFSZ  256
#define HOST_BUFSZ 256

struct sluice_debug_http {
	struct MHD_Daemon *daemon;      /* immutable after start */
	struct sluice_metrics *metrics; /* borrowed; immutable; may be NULL */
	uint16_t port;                  /* immutable after start */
	pthread_mutex_t log_mu;         /* guards logging and logbuf */
	bool logging;           /* capture MHD's messages (start only) */
	char logbuf[LOG_BUFSZ]; /* first message captured, or "" */
};

/* *con_cls of a request whose first handler call has been seen. */
static char seen_marker;

#define INDEX_HEAD                                                        \
	"<!DOCTYPE html>\n"                                               \
	"<html><head><meta charset=\"utf-8\"><title>sluice debug</title>" \
	"</head>\n<body>\n<h1>sluice debug endpoints</h1>\n<ul>\n"
#define INDEX_METRICS                                                      \
	"<li><a href=\"/metrics\">/metrics</a>: metrics, Prometheus text " \
	"format 0.0.4</li>\n"
#define INDEX_TAIL                                                           \
	"<li><a href=\"/debug/pprof/\">/debug/pprof/</a>: this index</li>\n" \
	"<li><a href=\"/healthz\">/healthz</a>: \"ok\" while the process "   \
	"serves</li>\n</ul>\n"                                               \
	"<p>Planned, not served yet: profile (CPU, pprof format), heap, "    \
	"allocs, block, mutex, goroutine (worker threads), threadcreate, "   \
	"symbol, cmdline, trace (Chrome/Perfetto JSON).</p>\n"               \
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

static enum MHD_Result
handle(void *cls, struct MHD_Connection *conn, const char *url,
       const char *method, const char *version, const char *upload_data,
       size_t *upload_data_size, void **con_cls)
{
	struct sluice_debug_http *h = cls;
	bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
		   strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;

	(void)version;
	(void)upload_data;
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
	if (strcmp(url, "/metrics") == 0 && h->metrics)
		return serve_metrics(h, conn);
	if (strcmp(url, "/debug/pprof/") == 0)
		return serve_index(h, conn);
	if (strcmp(url, "/healthz") == 0)
		return send_static(conn, MHD_HTTP_OK, "ok", 2,
				   "text/plain; charset=utf-8");
	return send_text(conn, MHD_HTTP_NOT_FOUND, "404 page not found\n");
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
		MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_END);
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
		pthread_mutex_destroy(&h->log_mu);
		sl_free(h);
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
	MHD_stop_daemon(h->daemon);
	pthread_mutex_destroy(&h->log_mu);
	sl_free(h);
}
