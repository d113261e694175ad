/* SPDX-License-Identifier: MIT */
/*
 * tls_certs.h - throwaway TLS material for tests, made at run time with the
 * `openssl` command into a fresh temporary directory (nothing committed,
 * nothing that expires in the tree): a CA, a server certificate it signed
 * for DNS:localhost and IP:127.0.0.1 (1 day), and an unrelated second CA
 * that verifies nothing.  EC P-256 keys: fast to make.
 *
 * Header-only; certs_make() fills a struct certs, certs_remove() deletes
 * the directory.  Every step is checked; a missing `openssl` fails the
 * case with a clear message.
 */
#ifndef TLS_CERTS_H
#define TLS_CERTS_H

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

struct certs {
	char dir[64];
	char ca[PATH_MAX];       /* the CA that signed srv */
	char srv_cert[PATH_MAX]; /* CN=localhost, SAN localhost/127.0.0.1 */
	char srv_key[PATH_MAX];
	char other_ca[PATH_MAX]; /* a CA that signed nothing here */
};

/* In @c's directory: openssl req -x509 with a fresh EC P-256 key, valid
 * 1 day, and @args (the files, subject, issuer and extensions). */
static inline void
certs_req(const struct certs *c, const char *args)
{
	char cmd[4 * PATH_MAX];

	snprintf(cmd, sizeof(cmd),
		 "cd %s && openssl req -x509 -newkey ec "
		 "-pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 %s "
		 ">/dev/null 2>&1",
		 c->dir, args);
	if (system(cmd) != 0) {
		fprintf(stderr, "  failed: %s\n", cmd);
		CHECK_FAIL(
			"openssl (the CLI) could not make test certificates");
	}
}

static inline void
certs_make(struct certs *c)
{
	snprintf(c->dir, sizeof(c->dir), "/tmp/sluice-certs-XXXXXX");
	CHECK(mkdtemp(c->dir) != NULL);
	snprintf(c->ca, sizeof(c->ca), "%s/ca.pem", c->dir);
	snprintf(c->srv_cert, sizeof(c->srv_cert), "%s/srv.pem", c->dir);
	snprintf(c->srv_key, sizeof(c->srv_key), "%s/srv.key", c->dir);
	snprintf(c->other_ca, sizeof(c->other_ca), "%s/other.pem", c->dir);
	certs_req(c, "-keyout ca.key -out ca.pem -subj /CN=sluice-test-ca "
		     "-addext basicConstraints=critical,CA:TRUE "
		     "-addext keyUsage=critical,keyCertSign");
	certs_req(c, "-keyout other.key -out other.pem "
		     "-subj /CN=sluice-other-ca");
	certs_req(c, "-keyout srv.key -out srv.pem -subj /CN=localhost "
		     "-CA ca.pem -CAkey ca.key "
		     "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
		     "-addext basicConstraints=CA:FALSE");
}

static inline void
certs_remove(const struct certs *c)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", c->dir);
	(void)system(cmd);
}

#endif /* TLS_CERTS_H */
