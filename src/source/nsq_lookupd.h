/* SPDX-License-Identifier: MIT */
/*
 * nsq_lookupd.h - one nsqlookupd query (GET /lookup?topic=T), internal.
 *
 * Blocking (libcurl easy handle, bounded by a timeout); called from the
 * consumer's dialer thread.  Thread-safe: no shared state except libcurl's
 * one-time global init, done under pthread_once.
 */
#ifndef SL_SOURCE_NSQ_LOOKUPD_H
#define SL_SOURCE_NSQ_LOOKUPD_H

#include <stddef.h>
#include <stdint.h>

/* "HOST:PORT" strings ("[v6]:PORT" for IPv6 literals), sl_malloc'd. */
struct sl_nsq_addrs {
	char **v;
	size_t n;
};

void sl_nsq_addrs_free(struct sl_nsq_addrs *a);

/**
 * sl_nsq_lookupd_url() - section 8.6's normalisation of @base: add
 * "http://" when there is no scheme, "/lookup" when the path is empty or
 * "/", then "?topic=" (or "&topic=") and the topic, into @out.
 * Returns: 0, SLUICE_EMSGSIZE when @cap is too small, SLUICE_EINVAL.
 */
int sl_nsq_lookupd_url(const char *base, const char *topic, char *out,
		       size_t cap);

/**
 * sl_nsq_lookupd_parse() - the producers of a /lookup reply body, both the
 * v1 shape and the old {"status_code":..,"data":{..}} wrapper (section 7.2),
 * as broadcast_address:tcp_port, duplicates removed.
 * Returns: 0, SLUICE_EPROTO (not the expected JSON), SLUICE_ENOMEM.
 */
int sl_nsq_lookupd_parse(const void *body, size_t len,
			 struct sl_nsq_addrs *out);

/**
 * sl_nsq_lookupd_query() - GET the lookup URL of @base for @topic within
 * @timeout_ns.  A 404 (TOPIC_NOT_FOUND: nothing published yet) is a
 * success with no producers.
 * Returns: 0 and *@out, SLUICE_EIO (transport error or other status; @err
 * says which), SLUICE_EPROTO, SLUICE_ENOMEM, SLUICE_EINVAL.
 */
int sl_nsq_lookupd_query(const char *base, const char *topic,
			 int64_t timeout_ns, struct sl_nsq_addrs *out,
			 char *err, size_t errsize);

#endif /* SL_SOURCE_NSQ_LOOKUPD_H */
