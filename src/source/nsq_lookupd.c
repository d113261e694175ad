/* SPDX-License-Identifier: MIT */
/*
 * nsq_lookupd.c - nsqlookupd /lookup queries for the NSQ consumer's
 * discovery (docs/nsq-protocol.md sections 7.2 and 8.6).
 *
 * One blocking libcurl easy request per query; the body is collected into
 * a bounded buffer (a lookup reply is small: refuse more than 4 MiB) and
 * parsed with jansson.  No state survives a call; libcurl's global init
 * runs once under pthread_once.
 */
#include "source/nsq_lookupd.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <sluice/common.h>

#include "source/nsq_conn.h"
#include "util/alloc.h"

#define BODY_MAX ((size_t)4 << 20)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void
curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

void
sl_nsq_addrs_free(struct sl_nsq_addrs *a)
{
	size_t i;

	for (i = 0; i < a->n; i++)
		sl_free(a->v[i]);
	sl_free(a->v);
	a->v = NULL;
	a->n = 0;
}

static int
addrs_add(struct sl_nsq_addrs *a, const char *host, json_int_t port)
{
	char buf[320], **v;
	size_t i, len;
	bool v6 = strchr(host, ':') != NULL;

	if (port <= 0 || port > 65535 || !*host || strlen(host) > 255)
		return 0; /* unusable entry: skip it */
	snprintf(buf, sizeof(buf), v6 ? "[%s]:%d" : "%s:%d", host, (int)port);
	for (i = 0; i < a->n; i++)
		if (strcmp(a->v[i], buf) == 0)
			return 0;
	v = sl_realloc(a->v, (a->n + 1) * sizeof(*v));
	if (!v)
		return SLUICE_ENOMEM;
	a->v = v;
	len = strlen(buf) + 1;
	v[a->n] = sl_malloc(len);
	if (!v[a->n])
		return SLUICE_ENOMEM;
	memcpy(v[a->n], buf, len);
	a->n++;
	return 0;
}

int
sl_nsq_lookupd_parse(const void *body, size_t len, struct sl_nsq_addrs *out)
{
	json_error_t je;
	json_t *o, *root, *prods, *p;
	size_t i;
	int rc = 0;

	*out = (struct sl_nsq_addrs){ 0 };
	root = json_loadb(body, len, 0, &je);
	o = root;
	if (json_is_object(o) && json_is_object(json_object_get(o, "data")))
		o = json_object_get(o, "data"); /* the old wrapper */
	prods = json_is_object(o) ? json_object_get(o, "producers") : NULL;
	if (!json_is_array(prods) && !json_is_null(prods)) {
		json_decref(root);
		return SLUICE_EPROTO;
	}
	json_array_foreach(prods, i, p)
	{
		json_t *h = json_object_get(p, "broadcast_address");
		json_t *port = json_object_get(p, "tcp_port");

		if (!json_is_string(h) || !json_is_integer(port))
			continue;
		rc = addrs_add(out, json_string_value(h),
			       json_integer_value(port));
		if (rc < 0)
			break;
	}
	json_decref(root);
	if (rc < 0)
		sl_nsq_addrs_free(out);
	return rc;
}

int
sl_nsq_lookupd_url(const char *base, const char *topic, char *out, size_t cap)
{
	const char *scheme = strstr(base, "://") ? "" : "http://";
	const char *rest = *scheme ? base : strstr(base, "://") + 3;
	const char *slash = strchr(rest, '/');
	const char *path = "/lookup", *q;
	size_t hostlen = slash ? (size_t)(slash - rest) : strlen(rest);
	char *esc;
	int n;

	if (!topic || !*rest || !hostlen)
		return SLUICE_EINVAL;
	if (slash && strcmp(slash, "/") != 0)
		path = slash;
	esc = curl_easy_escape(NULL, topic, 0);
	if (!esc)
		return SLUICE_ENOMEM;
	q = strchr(path, '?') ? "&" : "?";
	n = snprintf(out, cap, "%s%.*s%.*s%s%stopic=%s", scheme,
		     (int)(*scheme ? 0 : (size_t)(rest - base)), base,
		     (int)hostlen, rest, path, q, esc);
	curl_free(esc);
	if (n < 0 || (size_t)n >= cap)
		return SLUICE_EMSGSIZE;
	return 0;
}

static size_t
on_body(char *p, size_t size, size_t nmemb, void *ud)
{
	struct sl_nsq_buf *b = ud;
	size_t n = size * nmemb;

	if (b->len + n > BODY_MAX || sl_nsq_buf_reserve(b, n) < 0)
		return 0; /* aborts the transfer */
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return n;
}

int
sl_nsq_lookupd_query(const char *base, const char *topic, int64_t timeout_ns,
		     struct sl_nsq_addrs *out, char *err, size_t errsize)
{
	struct sl_nsq_buf body = { 0 };
	struct curl_slist *hdr = NULL;
	char url[1024];
	long status = 0, ms;
	CURLcode cc;
	CURL *h;
	int rc;

	*out = (struct sl_nsq_addrs){ 0 };
	rc = sl_nsq_lookupd_url(base, topic, url, sizeof(url));
	if (rc < 0) {
		snprintf(err, errsize, "bad lookupd address %s", base);
		return rc;
	}
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return SLUICE_EIO;
	h = curl_easy_init();
	if (!h)
		return SLUICE_ENOMEM;
	ms = (long)(timeout_ns / SLUICE_NS_PER_MS);
	hdr = curl_slist_append(hdr,
				"Accept: application/vnd.nsq; version=1.0");
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, ms > 0 ? ms : 1L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
	cc = curl_easy_perform(h);
	if (cc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(h);
	curl_slist_free_all(hdr);
	if (cc != CURLE_OK) {
		snprintf(err, errsize, "lookupd %s: %s", url,
			 curl_easy_strerror(cc));
		rc = SLUICE_EIO;
	} else if (status == 404) {
		rc = 0; /* TOPIC_NOT_FOUND: nothing published yet */
	} else if (status != 200) {
		snprintf(err, errsize, "lookupd %s: HTTP %ld", url, status);
		rc = SLUICE_EIO;
	} else {
		rc = sl_nsq_lookupd_parse(body.p, body.len, out);
		if (rc == SLUICE_EPROTO)
			snprintf(err, errsize, "lookupd %s: unreadable reply",
				 url);
	}
	sl_nsq_buf_free(&body);
	return rc;
}
