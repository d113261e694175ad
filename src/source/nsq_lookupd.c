/* SPDX-License-Identifier: MIT */
/*
 * nsq_lookupd.c - nsqlookupd /lookup queries for the NSQ consumer's
 * discovery (docs/nsq-protocol.md sections 7.2 and 8.6).
 *
 * One blocking libcurl easy request per query; the body is collected into
 * a bounded buffer (a lookup reply is small: refuse more than 4 MiB) and
 * parsed with jansson.  No state survives a call.
 *
 * libcurl is loaded with dlopen() on the first query, not linked: with
 * its dependencies (GSSAPI, LDAP, nghttp2, libssh2, ...) it adds about
 * 6 MB to the resident size of every process that links it, and only a
 * consumer given nsqlookupd addresses needs it.  The headers still come
 * from libcurl4-openssl-dev; the table below holds the eight calls used,
 * resolved once under pthread_once.
 */
#include "source/nsq_lookupd.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <sluice/common.h>

#include "source/nsq_conn.h"
#include "util/alloc.h"

#define BODY_MAX ((size_t)4 << 20)

/* The libcurl calls used, from dlopen; written once under curl_once. */
static struct {
	CURLcode (*global_init)(long flags);
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *h, CURLoption opt, ...);
	CURLcode (*easy_perform)(CURL *h);
	CURLcode (*easy_getinfo)(CURL *h, CURLINFO info, ...);
	void (*easy_cleanup)(CURL *h);
	const char *(*easy_strerror)(CURLcode cc);
	struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
	void (*slist_free_all)(struct curl_slist *l);
} cu;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static char curl_why[192]; /* "" once loaded and initialised */

/* dlsym into a function pointer (POSIX's idiom: ISO C has no cast from
 * an object pointer to a function pointer). */
static bool
sym(void *lib, const char *name, void *fnp)
{
	void *p = dlsym(lib, name);

	if (!p) {
		snprintf(curl_why, sizeof(curl_why), "libcurl lacks %s", name);
		return false;
	}
	memcpy(fnp, &p, sizeof(p));
	return true;
}

static void
curl_init(void)
{
	void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);

	if (!lib) {
		snprintf(curl_why, sizeof(curl_why),
			 "nsqlookupd discovery needs libcurl (libcurl4): %s",
			 dlerror());
		return;
	}
	if (!sym(lib, "curl_global_init", &cu.global_init) ||
	    !sym(lib, "curl_easy_init", &cu.easy_init) ||
	    !sym(lib, "curl_easy_setopt", &cu.easy_setopt) ||
	    !sym(lib, "curl_easy_perform", &cu.easy_perform) ||
	    !sym(lib, "curl_easy_getinfo", &cu.easy_getinfo) ||
	    !sym(lib, "curl_easy_cleanup", &cu.easy_cleanup) ||
	    !sym(lib, "curl_easy_strerror", &cu.easy_strerror) ||
	    !sym(lib, "curl_slist_append", &cu.slist_append) ||
	    !sym(lib, "curl_slist_free_all", &cu.slist_free_all))
		return; /* the library stays loaded: harmless */
	if (cu.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(curl_why, sizeof(curl_why),
			 "libcurl failed to initialise");
		return;
	}
	curl_why[0] = '\0';
}

/* Percent-encode @s (RFC 3986 unreserved characters pass) into @out. */
static int
escape(const char *s, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		    c == '_' || c == '~') {
			if (n + 1 >= cap)
				return SLUICE_EMSGSIZE;
			out[n++] = (char)c;
		} else {
			if (n + 3 >= cap)
				return SLUICE_EMSGSIZE;
			out[n++] = '%';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		}
	}
	out[n] = '\0';
	return 0;
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
	char esc[3 * 64 + 1]; /* a topic name is at most 64 bytes */
	int n;

	if (!topic || !*rest || !hostlen)
		return SLUICE_EINVAL;
	if (slash && strcmp(slash, "/") != 0)
		path = slash;
	if (escape(topic, esc, sizeof(esc)) != 0)
		return SLUICE_EINVAL;
	q = strchr(path, '?') ? "&" : "?";
	n = snprintf(out, cap, "%s%.*s%.*s%s%stopic=%s", scheme,
		     (int)(*scheme ? 0 : (size_t)(rest - base)), base,
		     (int)hostlen, rest, path, q, esc);
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
	if (curl_why[0]) {
		snprintf(err, errsize, "lookupd %s: %s", url, curl_why);
		return SLUICE_EIO;
	}
	h = cu.easy_init();
	if (!h)
		return SLUICE_ENOMEM;
	ms = (long)(timeout_ns / SLUICE_NS_PER_MS);
	hdr = cu.slist_append(hdr, "Accept: application/vnd.nsq; version=1.0");
	cu.easy_setopt(h, CURLOPT_URL, url);
	cu.easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	cu.easy_setopt(h, CURLOPT_TIMEOUT_MS, ms > 0 ? ms : 1L);
	cu.easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	cu.easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	cu.easy_setopt(h, CURLOPT_WRITEDATA, &body);
	cc = cu.easy_perform(h);
	if (cc == CURLE_OK)
		cu.easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	cu.easy_cleanup(h);
	cu.slist_free_all(hdr);
	if (cc != CURLE_OK) {
		snprintf(err, errsize, "lookupd %s: %s", url,
			 cu.easy_strerror(cc));
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
