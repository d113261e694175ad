/* SPDX-License-Identifier: MIT */
/*
 * test_debug_http.c - the debug HTTP server, driven over plain sockets.
 *
 * Every case starts its own server on 127.0.0.1 port 0 and speaks HTTP/1.1
 * by hand, so no client library is needed.  Bodies are compared with what
 * the registry renders at the same moment (nothing bumps in between), never
 * with hard-coded text.  Synchronisation with the server's threads is by
 * the protocol itself (a response has arrived) or by mutex and condvar.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sluice/debug_http.h>
#include <sluice/metrics.h>

#include "check.h"
#include "util/alloc.h"

struct resp {
	int status;
	char head[4096]; /* status line and headers, NUL-terminated */
	char *body;      /* malloc'd, NUL-terminated */
	size_t body_len;
};

static int
connect_port(uint16_t port)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK_OK(connect(fd, (struct sockaddr *)&a, sizeof(a)));
	return fd;
}

static void
send_all(int fd, const char *s)
{
	size_t len = strlen(s), off = 0;

	while (off < len) {
		ssize_t n = send(fd, s + off, len - off, MSG_NOSIGNAL);

		CHECK_GT(n, 0);
		off += (size_t)n;
	}
}

/* The value of header @name in @r (case-insensitive), or NULL. */
static const char *
header(const struct resp *r, const char *name, char *buf, size_t bufsz)
{
	const char *p = strstr(r->head, "\r\n");
	size_t nlen = strlen(name);

	while (p && p[2] != '\0') {
		const char *line = p + 2, *end = strstr(line, "\r\n");

		if (!end)
			break;
		if ((size_t)(end - line) > nlen && line[nlen] == ':' &&
		    strncasecmp(line, name, nlen) == 0) {
			const char *v = line + nlen + 1;
			size_t vlen;

			while (*v == ' ')
				v++;
			vlen = (size_t)(end - v);
			CHECK_LT(vlen, bufsz);
			memcpy(buf, v, vlen);
			buf[vlen] = '\0';
			return buf;
		}
		p = end;
	}
	return NULL;
}

/*
 * Read one response from @fd: the head byte by byte up to the blank line,
 * then Content-Length bytes of body (none when @head_only).  Returns false
 * when the connection ends before a status line.
 */
static bool
read_resp(int fd, struct resp *r, bool head_only)
{
	size_t n = 0, clen;
	char buf[64];
	const char *cl;

	memset(r, 0, sizeof(*r));
	while (n < 4 || memcmp(r->head + n - 4, "\r\n\r\n", 4) != 0) {
		ssize_t k;

		CHECK_LT(n, sizeof(r->head) - 1);
		k = recv(fd, r->head + n, 1, 0);
		if (k <= 0) {
			CHECK_EQ(n, 0);
			return false;
		}
		n++;
	}
	r->head[n] = '\0';
	CHECK(sscanf(r->head, "HTTP/1.1 %d ", &r->status) == 1);
	cl = header(r, "Content-Length", buf, sizeof(buf));
	CHECK(cl != NULL);
	clen = (size_t)strtoul(cl, NULL, 10);
	if (head_only)
		clen = 0;
	r->body = malloc(clen + 1);
	CHECK(r->body != NULL);
	for (n = 0; n < clen;) {
		ssize_t k = recv(fd, r->body + n, clen - n, 0);

		CHECK_GT(k, 0);
		n += (size_t)k;
	}
	r->body[clen] = '\0';
	r->body_len = clen;
	return true;
}

/* One request on a fresh connection that the server closes afterwards. */
static void
request(uint16_t port, const char *method, const char *path, const char *extra,
	struct resp *r)
{
	char req[1024];
	int fd = connect_port(port);

	snprintf(req, sizeof(req),
		 "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close"
		 "\r\n\r\n",
		 method, path, extra ? extra : "");
	send_all(fd, req);
	CHECK(read_resp(fd, r, strcmp(method, "HEAD") == 0));
	close(fd);
}

static void
resp_free(struct resp *r)
{
	free(r->body);
	r->body = NULL;
}

static struct sluice_debug_http *
start_local(struct sluice_metrics *m)
{
	struct sluice_debug_http *h = NULL;
	char err[256];

	CHECK_OK(sluice_debug_http_start("127.0.0.1:0", m, &h, err,
					 sizeof(err)));
	CHECK(h != NULL);
	CHECK_STREQ(err, "");
	CHECK_GT(sluice_debug_http_port(h), 0);
	return h;
}

static void
check_body_is_render(struct sluice_metrics *m, const struct resp *r)
{
	char *text = NULL;
	size_t len = 0;

	CHECK_OK(sluice_metrics_render(m, &text, &len));
	CHECK_EQ(r->body_len, len);
	CHECK_MEMEQ(r->body, text, len);
	sluice_metrics_free_text(text);
}

/* /metrics is rendered per request: a bump between two scrapes shows. */
static void
test_metrics_follows_counter(void)
{
	struct sluice_metrics *m;
	struct sluice_counter *c;
	struct sluice_debug_http *h;
	struct resp r1, r2;
	char buf[128];

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_register(m, "test_requests_total",
					 "Requests seen.", &c));
	sluice_counter_add(c, 41);
	h = start_local(m);

	request(sluice_debug_http_port(h), "GET", "/metrics", NULL, &r1);
	CHECK_EQ(r1.status, 200);
	CHECK_STREQ(header(&r1, "Content-Type", buf, sizeof(buf)),
		    "text/plain; version=0.0.4; charset=utf-8");
	CHECK_STREQ(header(&r1, "X-Content-Type-Options", buf, sizeof(buf)),
		    "nosniff");
	check_body_is_render(m, &r1);
	CHECK(strstr(r1.body, "test_requests_total 41\n") != NULL);

	sluice_counter_inc(c);
	request(sluice_debug_http_port(h), "GET", "/metrics", NULL, &r2);
	CHECK_EQ(r2.status, 200);
	check_body_is_render(m, &r2);
	CHECK(strstr(r2.body, "test_requests_total 42\n") != NULL);
	CHECK(strcmp(r1.body, r2.body) != 0);

	resp_free(&r1);
	resp_free(&r2);
	sluice_debug_http_stop(h);
	sluice_metrics_free(m);
}

/*
 * Two requests on one keep-alive connection both get answers: the handler
 * queues on its second call, so MHD does not close after each response.
 */
static void
test_keepalive(void)
{
	static const char req[] =
		"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	struct sluice_debug_http *h = start_local(NULL);
	struct resp r;
	char buf[64];
	int fd = connect_port(sluice_debug_http_port(h)), i;

	for (i = 0; i < 3; i++) {
		send_all(fd, req);
		CHECK(read_resp(fd, &r, false));
		CHECK_EQ(r.status, 200);
		CHECK_STREQ(r.body, "ok");
		CHECK(header(&r, "Connection", buf, sizeof(buf)) == NULL ||
		      strcasecmp(buf, "close") != 0);
		resp_free(&r);
	}
	close(fd);
	sluice_debug_http_stop(h);
}

static void
test_healthz(void)
{
	struct sluice_debug_http *h = start_local(NULL);
	struct resp r;
	char buf[128];

	request(sluice_debug_http_port(h), "GET", "/healthz", NULL, &r);
	CHECK_EQ(r.status, 200);
	CHECK_STREQ(r.body, "ok");
	CHECK_STREQ(header(&r, "Content-Type", buf, sizeof(buf)),
		    "text/plain; charset=utf-8");
	resp_free(&r);
	/* Query parameters are ignored, as Go's handlers do. */
	request(sluice_debug_http_port(h), "GET", "/healthz?verbose=1", NULL,
		&r);
	CHECK_EQ(r.status, 200);
	CHECK_STREQ(r.body, "ok");
	resp_free(&r);
	sluice_debug_http_stop(h);
}

static void
test_index_lists_endpoints(void)
{
	/* The server's own pages, then every profile of Go's index. */
	static const char *const links[] = {
		"href=\"/metrics\"",
		"href=\"/healthz\"",
		"href=\"/debug/inflight\"",
		"href=\"/debug/pprof/profile?seconds=",
		"href=\"/debug/pprof/heap\"",
		"href=\"/debug/pprof/allocs\"",
		"href=\"/debug/pprof/block\"",
		"href=\"/debug/pprof/mutex\"",
		"href=\"/debug/pprof/goroutine",
		"href=\"/debug/pprof/threadcreate",
		"href=\"/debug/pprof/trace",
		"href=\"/debug/pprof/cmdline\"",
		"href=\"/debug/pprof/symbol\"",
	};
	struct sluice_metrics *m;
	struct sluice_debug_http *h;
	struct resp r;
	char buf[128];
	size_t i;

	CHECK_OK(sluice_metrics_new(&m));
	h = start_local(m);
	request(sluice_debug_http_port(h), "GET", "/debug/pprof/", NULL, &r);
	CHECK_EQ(r.status, 200);
	CHECK_STREQ(header(&r, "Content-Type", buf, sizeof(buf)),
		    "text/html; charset=utf-8");
	for (i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		if (!strstr(r.body, links[i]))
			fprintf(stderr, "  no %s in the index\n", links[i]);
		CHECK(strstr(r.body, links[i]) != NULL);
	}
	resp_free(&r);
	sluice_debug_http_stop(h);
	sluice_metrics_free(m);
}

/* Without a registry /metrics is 404 and the index does not offer it. */
static void
test_no_registry(void)
{
	struct sluice_debug_http *h = start_local(NULL);
	struct resp r;

	request(sluice_debug_http_port(h), "GET", "/metrics", NULL, &r);
	CHECK_EQ(r.status, 404);
	resp_free(&r);
	request(sluice_debug_http_port(h), "GET", "/debug/pprof/", NULL, &r);
	CHECK_EQ(r.status, 200);
	CHECK(strstr(r.body, "/metrics") == NULL);
	CHECK(strstr(r.body, "href=\"/healthz\"") != NULL);
	resp_free(&r);
	sluice_debug_http_stop(h);
}

static void
test_unknown_path_404(void)
{
	static const char *const paths[] = {
		"/",         "/nope",        "/metrics/",
		"/metricsx", "/debug/pprof", "/debug/pprof/heapx",
		"/healthz/", "/HEALTHZ",     "/debug/pprof/nope",
	};
	struct sluice_metrics *m;
	struct sluice_debug_http *h;
	struct resp r;
	size_t i;

	CHECK_OK(sluice_metrics_new(&m));
	h = start_local(m);
	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		request(sluice_debug_http_port(h), "GET", paths[i], NULL, &r);
		if (r.status != 404)
			fprintf(stderr, "  path %s: %d\n", paths[i], r.status);
		CHECK_EQ(r.status, 404);
		CHECK(r.body_len > 0);
		resp_free(&r);
	}
	sluice_debug_http_stop(h);
	sluice_metrics_free(m);
}

static void
test_non_get_405(void)
{
	static const char *const methods[] = { "POST", "PUT", "DELETE", "PATCH",
					       "OPTIONS" };
	static const char *const paths[] = { "/metrics", "/healthz",
					     "/debug/pprof/", "/nope" };
	struct sluice_metrics *m;
	struct sluice_debug_http *h;
	struct resp r;
	char buf[64];
	size_t i, j;

	CHECK_OK(sluice_metrics_new(&m));
	h = start_local(m);
	for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		for (j = 0; j < sizeof(paths) / sizeof(paths[0]); j++) {
			request(sluice_debug_http_port(h), methods[i], paths[j],
				NULL, &r);
			CHECK_EQ(r.status, 405);
			CHECK_STREQ(header(&r, "Allow", buf, sizeof(buf)),
				    "GET, HEAD");
			resp_free(&r);
		}
	}
	/* A body with the refused request does not confuse the server. */
	request(sluice_debug_http_port(h), "POST", "/metrics",
		"Content-Length: 5\r\n\r\nhello", &r);
	CHECK_EQ(r.status, 405);
	resp_free(&r);
	/* ...and it still serves afterwards. */
	request(sluice_debug_http_port(h), "GET", "/healthz", NULL, &r);
	CHECK_EQ(r.status, 200);
	resp_free(&r);
	sluice_debug_http_stop(h);
	sluice_metrics_free(m);
}

/* HEAD: GET's status and headers (its Content-Length too), no body. */
static void
test_head(void)
{
	struct sluice_metrics *m;
	struct sluice_counter *c;
	struct sluice_debug_http *h;
	struct resp r;
	char buf[128], *text;
	size_t len;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_register(m, "x_total", "", &c));
	h = start_local(m);
	request(sluice_debug_http_port(h), "HEAD", "/metrics", NULL, &r);
	CHECK_EQ(r.status, 200);
	CHECK_OK(sluice_metrics_render(m, &text, &len));
	snprintf(buf, sizeof(buf), "%zu", len);
	{
		char cl[64];

		CHECK_STREQ(header(&r, "Content-Length", cl, sizeof(cl)), buf);
	}
	sluice_metrics_free_text(text);
	CHECK_EQ(r.body_len, 0);
	resp_free(&r);
	sluice_debug_http_stop(h);
	sluice_metrics_free(m);
}

static void
expect_einval(const char *addr)
{
	struct sluice_debug_http *h = (struct sluice_debug_http *)&h;
	char err[256];

	err[0] = 'x';
	err[1] = '\0';
	if (sluice_debug_http_start(addr, NULL, &h, err, sizeof(err)) !=
	    SLUICE_EINVAL)
		fprintf(stderr, "  address \"%s\" not refused\n", addr);
	CHECK_EQ(sluice_debug_http_start(addr, NULL, &h, err, sizeof(err)),
		 SLUICE_EINVAL);
	CHECK(h == NULL);
	CHECK(strstr(err, "debug http") != NULL);
	CHECK(strlen(err) > strlen("debug http : "));
}

static void
test_bad_addresses(void)
{
	static const char *const bad[] = {
		"",
		"nohost",
		"127.0.0.1:99999",
		"127.0.0.1:65536",
		"127.0.0.1:",
		"127.0.0.1:-1",
		"127.0.0.1:+80",
		"127.0.0.1: 80",
		"127.0.0.1:8x",
		"127.0.0.1:0x50",
		"127.0.0.1:000000080",
		"::1:80",
		"[::1",
		"[::1]",
		"[::1]80",
		"[]:80",
	};
	struct sluice_debug_http *h;
	char err[8];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_einval(bad[i]);
	/* No result pointer. */
	CHECK_EQ(sluice_debug_http_start("127.0.0.1:0", NULL, NULL, NULL, 0),
		 SLUICE_EINVAL);
	/* A short buffer gets a cut, terminated message. */
	CHECK_EQ(sluice_debug_http_start("nohost", NULL, &h, err, sizeof(err)),
		 SLUICE_EINVAL);
	CHECK_EQ(strlen(err), sizeof(err) - 1);
	/* No buffer at all is fine. */
	CHECK_EQ(sluice_debug_http_start("nohost", NULL, &h, NULL, 0),
		 SLUICE_EINVAL);
}

/* Forms that are valid: explicit loopback, empty host, port edge 65535. */
static void
test_good_addresses(void)
{
	struct sluice_debug_http *h;
	struct resp r;
	char err[256];

	/* An empty host is loopback: the request over 127.0.0.1 works. */
	CHECK_OK(sluice_debug_http_start(":0", NULL, &h, err, sizeof(err)));
	request(sluice_debug_http_port(h), "GET", "/healthz", NULL, &r);
	CHECK_EQ(r.status, 200);
	resp_free(&r);
	sluice_debug_http_stop(h);

	CHECK_OK(sluice_debug_http_start("localhost:0", NULL, &h, err,
					 sizeof(err)));
	CHECK_GT(sluice_debug_http_port(h), 0);
	sluice_debug_http_stop(h);
}

static void
test_ipv6_loopback(void)
{
	struct sockaddr_in6 a;
	struct sluice_debug_http *h;
	struct resp r;
	char err[256];
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);

	memset(&a, 0, sizeof(a));
	a.sin6_family = AF_INET6;
	a.sin6_addr = in6addr_loopback;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		printf("  (no IPv6 loopback here; skipped)\n");
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);

	CHECK_OK(
		sluice_debug_http_start("[::1]:0", NULL, &h, err, sizeof(err)));
	CHECK_GT(sluice_debug_http_port(h), 0);
	fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	a.sin6_port = htons(sluice_debug_http_port(h));
	CHECK_OK(connect(fd, (struct sockaddr *)&a, sizeof(a)));
	send_all(fd, "GET /healthz HTTP/1.1\r\nHost: [::1]\r\n"
		     "Connection: close\r\n\r\n");
	CHECK(read_resp(fd, &r, false));
	CHECK_EQ(r.status, 200);
	CHECK_STREQ(r.body, "ok");
	resp_free(&r);
	close(fd);
	sluice_debug_http_stop(h);
}

static void
test_port_in_use(void)
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);
	struct sluice_debug_http *h, *h2 = NULL;
	char addr[64], err[256];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	/* A listener that is not ours. */
	CHECK(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK_OK(bind(fd, (struct sockaddr *)&a, sizeof(a)));
	CHECK_OK(listen(fd, 1));
	CHECK_OK(getsockname(fd, (struct sockaddr *)&a, &alen));
	snprintf(addr, sizeof(addr), "127.0.0.1:%u",
		 (unsigned)ntohs(a.sin_port));
	CHECK_EQ(sluice_debug_http_start(addr, NULL, &h2, err, sizeof(err)),
		 -EADDRINUSE);
	CHECK(h2 == NULL);
	CHECK(strstr(err, addr) != NULL);
	close(fd);

	/* One debug server on another one's port. */
	h = start_local(NULL);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u",
		 (unsigned)sluice_debug_http_port(h));
	CHECK_EQ(sluice_debug_http_start(addr, NULL, &h2, err, sizeof(err)),
		 -EADDRINUSE);
	CHECK(h2 == NULL);
	sluice_debug_http_stop(h);
}

/*
 * Stop returns although clients hold connections open: one idle, one
 * keep-alive after a full request, one mid-request.  Afterwards those
 * connections are closed and the port refuses new ones.
 */
static void
test_stop_with_open_connections(void)
{
	struct sluice_debug_http *h = start_local(NULL);
	uint16_t port = sluice_debug_http_port(h);
	struct sockaddr_in a;
	struct resp r;
	char c;
	int idle, kept, partial, fd;

	idle = connect_port(port);
	kept = connect_port(port);
	send_all(kept, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	CHECK(read_resp(kept, &r, false));
	CHECK_EQ(r.status, 200);
	resp_free(&r);
	partial = connect_port(port);
	send_all(partial, "GET /metr");

	sluice_debug_http_stop(h);

	CHECK_LE(recv(kept, &c, 1, 0), 0);
	CHECK_LE(recv(partial, &c, 1, 0), 0);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK_EQ(connect(fd, (struct sockaddr *)&a, sizeof(a)), -1);
	CHECK_EQ(errno, ECONNREFUSED);
	close(fd);
	close(idle);
	close(kept);
	close(partial);
}

static void
test_stop_null(void)
{
	sluice_debug_http_stop(NULL);
}

/*
 * A request being answered finishes before stop returns: a callback gauge
 * blocks the render until released, and stop is called meanwhile.
 */
struct gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool entered, release;
	atomic_bool done;
	atomic_bool stopped;
	struct sluice_debug_http *h;
	uint16_t port;
	int client_status;
};

static double
gate_fn(void *ud)
{
	struct gate *g = ud;

	pthread_mutex_lock(&g->mu);
	g->entered = true;
	pthread_cond_broadcast(&g->cv);
	while (!g->release)
		pthread_cond_wait(&g->cv, &g->mu);
	pthread_mutex_unlock(&g->mu);
	atomic_store(&g->done, true);
	return 7.0;
}

static void *
gate_client(void *arg)
{
	struct gate *g = arg;
	struct resp r;
	int fd = connect_port(g->port);

	send_all(fd, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
		     "Connection: close\r\n\r\n");
	g->client_status = read_resp(fd, &r, false) ? r.status : -1;
	resp_free(&r);
	close(fd);
	return NULL;
}

static void *
gate_stopper(void *arg)
{
	struct gate *g = arg;

	sluice_debug_http_stop(g->h);
	/* The render had finished by the time stop returned. */
	CHECK(atomic_load(&g->done));
	atomic_store(&g->stopped, true);
	return NULL;
}

static void
test_stop_waits_for_request(void)
{
	struct sluice_metrics *m;
	struct gate g;
	pthread_t client, stopper;

	memset(&g, 0, sizeof(g));
	CHECK_OK(pthread_mutex_init(&g.mu, NULL));
	CHECK_OK(pthread_cond_init(&g.cv, NULL));
	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_gauge_register_fn(m, "gate", "", gate_fn, &g));
	g.h = start_local(m);
	g.port = sluice_debug_http_port(g.h);

	CHECK_OK(pthread_create(&client, NULL, gate_client, &g));
	pthread_mutex_lock(&g.mu);
	while (!g.entered)
		pthread_cond_wait(&g.cv, &g.mu);
	pthread_mutex_unlock(&g.mu);

	CHECK_OK(pthread_create(&stopper, NULL, gate_stopper, &g));
	/* The client's connection is shut down by stop while the render is
	 * still blocked: once it has ended, stop is under way. */
	CHECK_OK(pthread_join(client, NULL));
	CHECK(!atomic_load(&g.stopped));
	CHECK(!atomic_load(&g.done));

	pthread_mutex_lock(&g.mu);
	g.release = true;
	pthread_cond_broadcast(&g.cv);
	pthread_mutex_unlock(&g.mu);
	CHECK_OK(pthread_join(stopper, NULL));
	CHECK(atomic_load(&g.stopped));
	sluice_metrics_free(m);
	pthread_cond_destroy(&g.cv);
	pthread_mutex_destroy(&g.mu);
}

/* A render that runs out of memory is a 500; the next one works. */
static void
test_render_enomem_500(void)
{
	struct sluice_metrics *m;
	struct sluice_counter *c;
	struct sluice_debug_http *h;
	struct resp r;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_register(m, "y_total", "", &c));
	h = start_local(m);
	/* Only the render allocates through sluice from here on. */
	sl_alloc_fail_after(1, 1);
	request(sluice_debug_http_port(h), "GET", "/metrics", NULL, &r);
	sl_alloc_fail_after(0, 0);
	CHECK_EQ(r.status, 500);
	CHECK(strstr(r.body, "out of memory") != NULL);
	resp_free(&r);
	request(sluice_debug_http_port(h), "GET", "/metrics", NULL, &r);
	CHECK_EQ(r.status, 200);
	check_body_is_render(m, &r);
	resp_free(&r);
	sluice_debug_http_stop(h);
	sluice_metrics_free(m);
}

/* Several scrapers at once while the counter moves: all get 200. */
#define SCRAPERS 4
#define SCRAPES  25

struct scraper {
	uint16_t port;
	int ok;
	unsigned long long last;
	bool monotonic;
};

static void *
scrape(void *arg)
{
	struct scraper *s = arg;
	int i;

	s->monotonic = true;
	for (i = 0; i < SCRAPES; i++) {
		struct resp r;
		const char *p;
		unsigned long long v;

		request(s->port, "GET", "/metrics", NULL, &r);
		if (r.status == 200) {
			s->ok++;
			p = strstr(r.body, "\nz_total ");
			if (p) {
				v = strtoull(p + 9, NULL, 10);
				if (v < s->last)
					s->monotonic = false;
				s->last = v;
			}
		}
		resp_free(&r);
	}
	return NULL;
}

static void
test_concurrent_scrapes(void)
{
	struct sluice_metrics *m;
	struct sluice_counter *c;
	struct sluice_debug_http *h;
	struct scraper s[SCRAPERS];
	pthread_t t[SCRAPERS];
	int i;

	CHECK_OK(sluice_metrics_new(&m));
	CHECK_OK(sluice_counter_register(m, "z_total", "Moves.", &c));
	h = start_local(m);
	memset(s, 0, sizeof(s));
	for (i = 0; i < SCRAPERS; i++) {
		s[i].port = sluice_debug_http_port(h);
		CHECK_OK(pthread_create(&t[i], NULL, scrape, &s[i]));
	}
	for (i = 0; i < 10000; i++)
		sluice_counter_inc(c);
	for (i = 0; i < SCRAPERS; i++) {
		CHECK_OK(pthread_join(t[i], NULL));
		CHECK_EQ(s[i].ok, SCRAPES);
		CHECK(s[i].monotonic);
		CHECK_LE(s[i].last, 10000);
	}
	sluice_debug_http_stop(h);
	sluice_metrics_free(m);
}

CHECK_MAIN(test_metrics_follows_counter, test_keepalive, test_healthz,
	   test_index_lists_endpoints, test_no_registry, test_unknown_path_404,
	   test_non_get_405, test_head, test_bad_addresses, test_good_addresses,
	   test_ipv6_loopback, test_port_in_use,
	   test_stop_with_open_connections, test_stop_null,
	   test_stop_waits_for_request, test_render_enomem_500,
	   test_concurrent_scrapes)
