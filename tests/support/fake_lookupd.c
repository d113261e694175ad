/* SPDX-License-Identifier: MIT */
/*
 * fake_lookupd.c - a stand-in for nsqlookupd's HTTP /lookup endpoint, for
 * the NSQ consumer's discovery tests (docs/nsq-protocol.md section 7.2).
 *
 * Usage: fake_lookupd [PORT]   (0 or absent: ephemeral, on 127.0.0.1)
 * Prints "listening on PORT\n" once it serves.  GET /lookup?topic=T answers
 * 200 with {"channels":[],"producers":[...]} (each producer with
 * remote_address, hostname, broadcast_address, tcp_port, http_port,
 * version) while the producer list is non-empty, 404
 * {"message":"TOPIC_NOT_FOUND"} while it is empty, 400
 * {"message":"MISSING_ARG_TOPIC"} without a topic, 404 NOT_FOUND for other
 * paths; every reply carries X-NSQ-Content-Type: nsq; version=1.0.  The
 * topic is not checked against the list: every topic has the same
 * producers.
 *
 * Control on stdin, one command a line, each answered "ok\n" (or
 * "error\n"): "add HOST TCPPORT", "remove HOST TCPPORT", "fail" (answer
 * 500 from now on), "heal", "quit".  EOF on stdin exits.
 *
 * libmicrohttpd runs the HTTP side on its own thread; the producer list is
 * guarded by `mu`.
 */
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAXP 64

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char hosts[MAXP][128]; /* (mu) */
static int ports[MAXP];       /* (mu) */
static int np;                /* (mu) */
static bool failing;          /* (mu) */
static unsigned long queries; /* (mu) */

static enum MHD_Result
reply(struct MHD_Connection *c, unsigned status, const char *body)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(
		strlen(body), (void *)(uintptr_t)body, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result ret;

	MHD_add_response_header(r, "Content-Type",
				"application/json; charset=utf-8");
	MHD_add_response_header(r, "X-NSQ-Content-Type", "nsq; version=1.0");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
       const char *version, const char *upload, size_t *upload_size,
       void **state)
{
	char body[MAXP * 256 + 64];
	const char *topic;
	size_t off;
	int i;

	(void)cls;
	(void)version;
	(void)upload;
	(void)upload_size;
	(void)state;
	if (strcmp(method, "GET") != 0)
		return reply(c, 405, "{\"message\":\"METHOD_NOT_ALLOWED\"}");
	if (strcmp(url, "/lookup") != 0)
		return reply(c, 404, "{\"message\":\"NOT_FOUND\"}");
	topic = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "topic");
	if (!topic || !*topic)
		return reply(c, 400, "{\"message\":\"MISSING_ARG_TOPIC\"}");
	pthread_mutex_lock(&mu);
	queries++;
	if (failing) {
		pthread_mutex_unlock(&mu);
		return reply(c, 500, "{\"message\":\"INTERNAL_ERROR\"}");
	}
	if (np == 0) {
		pthread_mutex_unlock(&mu);
		return reply(c, 404, "{\"message\":\"TOPIC_NOT_FOUND\"}");
	}
	off = (size_t)snprintf(body, sizeof(body),
			       "{\"channels\":[],\"producers\":[");
	for (i = 0; i < np; i++)
		off += (size_t)snprintf(
			body + off, sizeof(body) - off,
			"%s{\"remote_address\":\"%s:1\",\"hostname\":\"fake\","
			"\"broadcast_address\":\"%s\",\"tcp_port\":%d,"
			"\"http_port\":%d,\"version\":\"1.3.0\"}",
			i ? "," : "", hosts[i], hosts[i], ports[i],
			ports[i] + 1);
	snprintf(body + off, sizeof(body) - off, "]}");
	pthread_mutex_unlock(&mu);
	return reply(c, 200, body);
}

static bool
control(char *line)
{
	char host[128];
	int port, i;
	bool ok = false;

	if (strcmp(line, "quit") == 0)
		exit(0);
	pthread_mutex_lock(&mu);
	if (strcmp(line, "fail") == 0 || strcmp(line, "heal") == 0) {
		failing = line[0] == 'f';
		ok = true;
	} else if (sscanf(line, "add %127s %d", host, &port) == 2) {
		if (np < MAXP) {
			snprintf(hosts[np], sizeof(hosts[np]), "%s", host);
			ports[np++] = port;
			ok = true;
		}
	} else if (sscanf(line, "remove %127s %d", host, &port) == 2) {
		for (i = 0; i < np; i++) {
			if (ports[i] != port || strcmp(hosts[i], host) != 0)
				continue;
			memmove(hosts[i], hosts[i + 1],
				(size_t)(np - i - 1) * sizeof(hosts[0]));
			memmove(&ports[i], &ports[i + 1],
				(size_t)(np - i - 1) * sizeof(ports[0]));
			np--;
			ok = true;
			break;
		}
	}
	pthread_mutex_unlock(&mu);
	return ok;
}

int
main(int argc, char **argv)
{
	struct sockaddr_in a = { 0 };
	const union MHD_DaemonInfo *info;
	struct MHD_Daemon *d;
	char line[512];
	long port = argc > 1 ? strtol(argv[1], NULL, 10) : 0;

	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port,
			     NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR,
			     (struct sockaddr *)&a, MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "fake_lookupd: cannot listen\n");
		return 1;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	printf("listening on %u\n", info ? (unsigned)info->port : 0u);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, "\r\n")] = '\0';
		fputs(control(line) ? "ok\n" : "error\n", stdout);
		fflush(stdout);
	}
	MHD_stop_daemon(d);
	return 0;
}
