/* SPDX-License-Identifier: MIT */
/*
 * web_service.c - the seed's web service, ported: GET /test fans out 10
 * tasks onto sluice's worker pool and answers "success" once all 10 are
 * done; GET /hello answers at once.  The debug endpoints (/debug/pprof/...,
 * /metrics) listen on a port of their own, so `go tool pprof` and `wrk`
 * can be pointed at it exactly as at the Go original
 * (../shared/anchors/go-web-test).
 *
 *   web_service [--addr HOST:PORT] [--debug-addr HOST:PORT] [--workers N]
 *               [--http-threads N] [--requests N]
 *               (workers and HTTP threads default to the number of CPUs)
 *   wrk -t2 -c100 -d10s http://127.0.0.1:18082/test
 *   go tool pprof -top http://127.0.0.1:6060/debug/pprof/profile?seconds=5
 *
 * How a request flows: a request thread (one of libmicrohttpd's epoll
 * threads)
 * suspends the connection, publishes the 10 tasks to an in-process queue
 * in one batch, and returns to serve other connections; the engine's
 * workers run the tasks ("do: i" on stdout, as the seed prints); the worker
 * finishing the last task of a request resumes its connection, and the
 * response goes out.  No thread ever blocks waiting for a request, which is
 * what a Go handler's wg.Wait() costs a goroutine but a C thread far more.
 *
 * --requests N stops after N answered /test requests (for smoke tests);
 * otherwise it runs until SIGINT/SIGTERM.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sluice/sluice.h>

#define FANOUT 10

/* One /test request in progress. */
struct request {
	struct MHD_Connection *conn;
	atomic_int remaining; /* tasks not yet done */
	int state;            /* 0 seen, 1 suspended, 2 resumed */
};

/* The body of one task: which request, which index. */
struct task {
	struct request *req;
	int i;
};

static struct sluice_queue *tasks;
static atomic_long answered;
static long stop_after; /* 0: run until a signal */
static sigset_t stop_signals;
static const char ok_text[] = "success";
static char seen; /* *con_cls of a first-phase /hello request */

static void
do_something(int i)
{
	printf("do: %d\n", i);
}

static struct sluice_error *
run_task(void *ud, struct sluice_ctx *ctx, const struct sluice_msg *m)
{
	struct sluice_bytes body = sluice_msg_body(m);
	struct task t;

	(void)ud;
	(void)ctx;
	if (body.len != sizeof(t))
		return sluice_error_new(SLUICE_CLASS_PERMANENT, 0,
					"task of the wrong size");
	memcpy(&t, body.ptr, sizeof(t));
	do_something(t.i);
	/* The last task hands the connection back to the server. */
	if (atomic_fetch_sub_explicit(&t.req->remaining, 1,
				      memory_order_acq_rel) == 1)
		MHD_resume_connection(t.req->conn);
	return NULL;
}

static enum MHD_Result
reply(struct MHD_Connection *conn)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(
		sizeof(ok_text) - 1, (void *)(uintptr_t)ok_text,
		MHD_RESPMEM_PERSISTENT);
	enum MHD_Result rc;

	if (!r)
		return MHD_NO;
	rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result
fan_out(struct MHD_Connection *conn, struct request *req)
{
	struct task t[FANOUT];
	struct sluice_bytes b[FANOUT];
	int i;

	req->conn = conn;
	atomic_store(&req->remaining, FANOUT);
	for (i = 0; i < FANOUT; i++) {
		t[i].req = req;
		t[i].i = i;
		b[i].ptr = &t[i];
		b[i].len = sizeof(t[i]);
	}
	/* Suspend before publishing: a worker may finish all ten before
	 * this function returns, and resume must follow suspend. */
	MHD_suspend_connection(conn);
	req->state = 1;
	if (sluice_queue_publish_batch(tasks, b, FANOUT, SLUICE_FOREVER) !=
	    FANOUT) {
		/* Only when the queue is closed: shutting down. */
		req->state = 2;
		MHD_resume_connection(conn);
	}
	return MHD_YES;
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *conn, const char *url,
       const char *method, const char *version, const char *upload,
       size_t *upload_size, void **con_cls)
{
	struct request *req = *con_cls;

	(void)cls;
	(void)version;
	(void)upload;
	/* libmicrohttpd's threads, visible to the CPU profiler (idempotent:
	 * one TLS load after the first call). */
	(void)sluice_thread_register("http");
	if (strcmp(method, "GET") != 0)
		return MHD_NO;
	if (*upload_size) {
		*upload_size = 0;
		return MHD_YES;
	}
	if (strcmp(url, "/hello") == 0) {
		/* Two phases: queueing on the first call makes MHD close
		 * keep-alive connections (docs/observability.md). */
		if (*con_cls != &seen) {
			*con_cls = &seen;
			return MHD_YES;
		}
		return reply(conn);
	}
	if (strcmp(url, "/test") != 0) {
		static const char nf[] = "404 page not found\n";
		struct MHD_Response *r = MHD_create_response_from_buffer(
			sizeof(nf) - 1, (void *)(uintptr_t)nf,
			MHD_RESPMEM_PERSISTENT);
		enum MHD_Result rc;

		if (!r)
			return MHD_NO;
		rc = MHD_queue_response(conn, MHD_HTTP_NOT_FOUND, r);
		MHD_destroy_response(r);
		return rc;
	}
	if (!req) {
		req = calloc(1, sizeof(*req));
		if (!req)
			return MHD_NO;
		*con_cls = req;
		return MHD_YES;
	}
	if (req->state == 0)
		return fan_out(conn, req);
	/* Resumed: every task is done. */
	if (atomic_fetch_add(&answered, 1) + 1 == stop_after)
		kill(getpid(), SIGTERM);
	return reply(conn);
}

static void
done(void *cls, struct MHD_Connection *conn, void **con_cls,
     enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	if (*con_cls != &seen)
		free(*con_cls);
	*con_cls = NULL;
}

static int
port_of(const char *addr)
{
	const char *c = strrchr(addr, ':');
	long v;
	char *end;

	if (!c)
		return -1;
	v = strtol(c + 1, &end, 10);
	return (*end || v < 0 || v > 65535) ? -1 : (int)v;
}

int
main(int argc, char **argv)
{
	const char *addr = "127.0.0.1:18082", *debug_addr = "127.0.0.1:6060";
	struct sluice_engine_config cfg;
	struct sluice_queue_config qc;
	struct sluice_handler h = { run_task, NULL };
	struct sluice_batch_handler none = { NULL, NULL };
	struct sluice_metrics *metrics = NULL;
	struct sluice_debug_http *dbg = NULL;
	struct sluice_engine *e = NULL;
	struct MHD_Daemon *d;
	struct sockaddr_in sa;
	char err[256];
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int workers, http_threads, port, sig, i;

	/* One worker and one HTTP thread per CPU, as Go's GOMAXPROCS. */
	workers = http_threads = ncpu > 0 && ncpu < 256 ? (int)ncpu : 2;
	for (i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--addr") == 0)
			addr = argv[i + 1];
		else if (strcmp(argv[i], "--debug-addr") == 0)
			debug_addr = argv[i + 1];
		else if (strcmp(argv[i], "--workers") == 0)
			workers = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--http-threads") == 0)
			http_threads = (int)strtol(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--requests") == 0)
			stop_after = strtol(argv[i + 1], NULL, 10);
		else
			break;
	}
	port = port_of(addr);
	if (i != argc || port < 0 || workers < 1 || http_threads < 1) {
		fprintf(stderr,
			"usage: %s [--addr 127.0.0.1:PORT] "
			"[--debug-addr HOST:PORT] [--workers N] "
			"[--requests N]\n",
			argv[0]);
		return 2;
	}
	/* SIGINT/SIGTERM are taken by sigwait below, on this thread. */
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

	sluice_queue_config_init(&qc);
	qc.capacity = 65536;
	sluice_engine_config_init(&cfg);
	cfg.workers = (unsigned)workers;
	if (sluice_queue_new(&qc, &tasks) != 0 ||
	    sluice_engine_new(&cfg, sluice_queue_source(tasks), h, none, NULL,
			      &e) != 0 ||
	    sluice_metrics_new(&metrics) != 0 ||
	    sluice_engine_export_metrics(e, metrics) != 0 ||
	    sluice_engine_start(e) != 0) {
		fprintf(stderr, "web_service: cannot start the engine\n");
		return 1;
	}
	if (sluice_debug_http_start(debug_addr, metrics, &dbg, err,
				    sizeof(err)) != 0) {
		fprintf(stderr, "web_service: %s\n", err);
		return 1;
	}
	sluice_debug_http_set_engine(dbg, e);

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr) != 1)
		return 1;
	{
		char host[64];
		size_t hl = (size_t)(strrchr(addr, ':') - addr);

		if (hl && hl < sizeof(host)) {
			memcpy(host, addr, hl);
			host[hl] = '\0';
			if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
				fprintf(stderr, "web_service: --addr takes "
						"an IPv4 address\n");
				return 2;
			}
		}
	}
	d = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD |
				     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO,
			     0, NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR,
			     (struct sockaddr *)&sa,
			     MHD_OPTION_NOTIFY_COMPLETED, done, NULL,
			     MHD_OPTION_CONNECTION_LIMIT, 10000u,
			     MHD_OPTION_THREAD_POOL_SIZE,
			     (unsigned)http_threads, MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "web_service: cannot listen on %s: %s\n", addr,
			strerror(errno));
		return 1;
	}
	{
		const union MHD_DaemonInfo *info =
			MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
		char host[INET_ADDRSTRLEN];

		if (!inet_ntop(AF_INET, &sa.sin_addr, host, sizeof(host)))
			return 1;
		fprintf(stderr,
			"web_service: listening: /test on http://%s:%u, "
			"debug on http://127.0.0.1:%u\n",
			host, info ? (unsigned)info->port : (unsigned)port,
			(unsigned)sluice_debug_http_port(dbg));
	}

	while (sigwait(&stop_signals, &sig) != 0)
		;
	/* Stop taking requests, then drain the tasks already published. */
	MHD_quiesce_daemon(d);
	sluice_queue_close(tasks);
	if (sluice_engine_wait(e, SLUICE_FOREVER) != 0)
		return 1;
	MHD_stop_daemon(d);
	sluice_debug_http_stop(dbg);
	sluice_engine_free(e);
	sluice_metrics_free(metrics);
	sluice_queue_free(tasks);
	fflush(stdout);
	fprintf(stderr, "web_service: stopped after %ld /test requests\n",
		atomic_load(&answered));
	return 0;
}
