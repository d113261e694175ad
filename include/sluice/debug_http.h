/* SPDX-License-Identifier: MIT */
/*
 * debug_http.h - the debug HTTP endpoint: metrics and (later) profiles,
 * served by libmicrohttpd on a port of its own.
 *
 * Nothing listens until sluice_debug_http_start() is called.  The server
 * binds to loopback unless told otherwise (importing Go's net/http/pprof
 * exposes the same endpoints on whatever the application listens on, often
 * every interface; this one does not), and serves the paths of Go's
 * net/http/pprof so `go tool pprof http://HOST:PORT/debug/pprof/profile`
 * works unchanged:
 *
 *   GET /metrics                 Prometheus text format 0.0.4 (404 when
 *                                started without a registry)
 *   GET /debug/pprof/            an HTML index
 *   GET /debug/pprof/profile     CPU profile: ?seconds=N (30), ?hz=N (100),
 *                                ?format=pprof|folded|svg; one at a time
 *                                (409 "cpu profiling already in use")
 *   GET /debug/pprof/heap        sampled heap (inuse first), allocs (alloc
 *       /debug/pprof/allocs      first), block, mutex: ?seconds=N gives the
 *       /debug/pprof/block       delta over N seconds, ?debug=1 the text
 *       /debug/pprof/mutex       form, ?format= and ?sample_index= as above
 *   GET /debug/pprof/goroutine   sluice's threads and their stacks
 *                                (?debug=1 counts, ?debug=2 one per thread)
 *   GET /debug/pprof/threadcreate  the stacks that started them
 *   GET /debug/pprof/trace       execution trace over ?seconds=N (1):
 *                                Chrome JSON, or ?format=perfetto
 *   GET /debug/pprof/cmdline     argv joined by NUL bytes
 *   GET|POST /debug/pprof/symbol pprof's symbolz protocol
 *   GET /debug/inflight          the engine's in-flight table and last
 *                                failures (?format=json)
 *   GET /healthz                 "ok"
 *
 * A malformed parameter (seconds=-1, seconds=abc, seconds beyond
 * SLUICE_DEBUG_HTTP_MAX_SECONDS, an unknown format) is a 400 naming it.
 * HEAD is answered like GET without the body; POST only on symbol; any
 * other method is 405, any other path 404.
 *
 * Each connection gets its own thread (a future profile?seconds=N request
 * blocks its handler for N seconds, as it does a goroutine in Go), at most
 * SLUICE_DEBUG_HTTP_MAX_CONNS at once; a connection idle for
 * SLUICE_DEBUG_HTTP_IDLE_S seconds is closed.
 */
#ifndef SLUICE_DEBUG_HTTP_H
#define SLUICE_DEBUG_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The address used when sluice_debug_http_start() gets NULL. */
#define SLUICE_DEBUG_HTTP_DEFAULT_ADDR "127.0.0.1:6060"

/* Most connections served at once; more wait in the listen backlog. */
#define SLUICE_DEBUG_HTTP_MAX_CONNS 32

/* Seconds a connection may sit idle before the server closes it. */
#define SLUICE_DEBUG_HTTP_IDLE_S 30

/* Longest ?seconds= a profile or trace request may ask for; more is a
 * 400, as Go answers a duration beyond its server's WriteTimeout. */
#define SLUICE_DEBUG_HTTP_MAX_SECONDS 600

struct sluice_metrics;
struct sluice_engine;
struct sluice_debug_http;

/**
 * sluice_debug_http_start() - start the debug HTTP server.
 * @addr: "HOST:PORT", "[IPV6]:PORT" or ":PORT"; NULL for
 *        SLUICE_DEBUG_HTTP_DEFAULT_ADDR.  HOST is a numeric address or a
 *        name (resolved with getaddrinfo; the first answer is used); an
 *        empty HOST means 127.0.0.1, not every interface (write
 *        "0.0.0.0:PORT" or "[::]:PORT" for that).  PORT is 0..65535 in
 *        decimal; 0 picks a free port (see sluice_debug_http_port()).
 * @metrics: served at /metrics; borrowed until sluice_debug_http_stop()
 *           returns; NULL for none.
 * @out: set to the server, or NULL on failure.
 * @err: if not NULL and @errlen > 0, set to a NUL-terminated message on
 *       failure ("" on success), cut to @errlen bytes.
 *
 * Returns: 0; SLUICE_EINVAL (@out NULL, @addr malformed, a port out of
 * range, a host that does not resolve); -EADDRINUSE, -EACCES,
 * -EADDRNOTAVAIL and other -errno from binding; SLUICE_ENOMEM;
 * SLUICE_EIO when libmicrohttpd fails without saying why.
 * Ownership: *@out is stopped and freed by sluice_debug_http_stop().
 * Threads: any thread; the server runs on its own threads.
 */
SLUICE_API SLUICE_NODISCARD int
sluice_debug_http_start(const char *addr, struct sluice_metrics *metrics,
			struct sluice_debug_http **out, char *err,
			size_t errlen);

/**
 * sluice_debug_http_port() - the port the server listens on (the one the
 * kernel picked when started with port 0).
 *
 * Threads: any thread, until sluice_debug_http_stop().
 */
SLUICE_API uint16_t sluice_debug_http_port(const struct sluice_debug_http *h);

/**
 * sluice_debug_http_stop() - stop listening, close every connection, wait
 * for the requests being answered, and free the server.  NULL is a no-op.
 *
 * Open keep-alive or idle connections do not delay it: they are shut down.
 * Threads: call once, from a thread that is not one of the server's.
 */
SLUICE_API void sluice_debug_http_stop(struct sluice_debug_http *h);

/**
 * sluice_debug_http_set_engine() - serve @e's in-flight table and recent
 * failures at /debug/inflight (404 until set).  @e is borrowed: set NULL
 * (or stop the server) before freeing it.
 * Threads: any thread.
 */
SLUICE_API void sluice_debug_http_set_engine(struct sluice_debug_http *h,
					     struct sluice_engine *e);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_DEBUG_HTTP_H */
