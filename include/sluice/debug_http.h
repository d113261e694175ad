/* SPDX-License-Identifier: MIT */
/*
 * debug_http.h - the debug HTTP endpoint: metrics and (later) profiles,
 * served by libmicrohttpd on a port of its own.
 *
 * Nothing listens until sluice_debug_http_start() is called.  The server
 * binds to loopback unless told otherwise (importing Go's net/http/pprof
 * exposes the same endpoints on whatever the application listens on, often
 * every interface; this one does not), and serves:
 *
 *   GET /metrics        the registry in the Prometheus text format 0.0.4
 *                       (404 when started without a registry)
 *   GET /debug/pprof/   an HTML index of the endpoints (and of the planned
 *                       ones: profile, heap, allocs, goroutine, trace...)
 *   GET /healthz        "ok"
 *
 * HEAD is answered like GET without the body; any other method on any path
 * is 405, any other path 404.  None of these paths takes query parameters;
 * unknown ones are ignored, as Prometheus and Go's handlers do.
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

struct sluice_metrics;
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

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_DEBUG_HTTP_H */
