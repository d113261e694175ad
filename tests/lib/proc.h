/* SPDX-License-Identifier: MIT */
/*
 * proc.h - test helpers for running other programs on what a test wrote:
 * scratch directories, whole files, a shell command with its output
 * captured, `go tool pprof` and a Python checker in a sandbox, gunzip.
 *
 * Header-only (static inline, so a test includes what it uses).  Every
 * failure is a CHECK failure; the helpers use the C library's heap (a
 * test's own memory, not sluice's).  Not thread-safe: call from the
 * test's main thread.
 */
#ifndef PROC_H
#define PROC_H

#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"

/* A new scratch directory "/tmp/@tag.XXXXXX" into @dir (@size bytes). */
static inline void
tmpdir_make(char *dir, size_t size, const char *tag)
{
	CHECK_LT(snprintf(dir, size, "/tmp/%s.XXXXXX", tag), (int)size);
	CHECK(mkdtemp(dir) != NULL);
}

static inline int
tmpdir_rm_one_(const char *path, const struct stat *st, int flag,
	       struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Remove @dir and everything under it. */
static inline void
tmpdir_remove(const char *dir)
{
	CHECK_OK(nftw(dir, tmpdir_rm_one_, 16, FTW_DEPTH | FTW_PHYS));
}

static inline void
write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");

	CHECK(f != NULL);
	CHECK_EQ(fwrite(p, 1, n, f), n);
	CHECK_EQ(fclose(f), 0);
}

/* The exit status of a wait()ed child: its code, 128 + a killing signal. */
static inline int
exit_status(int st)
{
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 255;
}

/* Run @cmd through the shell; its stdout (and stderr when the command
 * redirects it) into @out, cut at @size - 1 bytes and NUL-terminated;
 * returns the exit status. */
static inline int
run_shell(const char *cmd, char *out, size_t size)
{
	FILE *f = popen(cmd, "r");
	size_t n = 0, got;
	int st;

	CHECK(f != NULL);
	while ((got = fread(out + n, 1, size - 1 - n, f)) > 0)
		n += got;
	out[n] = '\0';
	st = pclose(f);
	CHECK(st != -1);
	return exit_status(st);
}

/* `go tool pprof @flags @file` under a 60 s timeout, everything go writes
 * (home, caches, pprof's own files) kept in @dir; stdout and stderr into
 * @out as run_shell(); returns the exit status. */
static inline int
go_pprof(const char *dir, const char *flags, const char *file, char *out,
	 size_t size)
{
	char cmd[6 * PATH_MAX];

	CHECK_LT(snprintf(cmd, sizeof(cmd),
			  "cd '%s' && HOME='%s' GOCACHE='%s/gocache' "
			  "GOPATH='%s/gopath' GOFLAGS= GOTOOLCHAIN=local "
			  "GOTELEMETRY=off PPROF_TMPDIR='%s' "
			  "timeout 60 go tool pprof %s '%s' 2>&1",
			  dir, dir, dir, dir, dir, flags, file),
		 (int)sizeof(cmd));
	return run_shell(cmd, out, size);
}

/* Run the Python program in the file @py with @args on its command line,
 * under a 60 s timeout; @quiet hides its stderr (for runs meant to fail).
 * Returns its exit status. */
static inline int
run_python_file(const char *py, const char *args, bool quiet)
{
	char cmd[2 * PATH_MAX];
	int st;

	CHECK_LT(snprintf(cmd, sizeof(cmd), "timeout 60 python3 '%s' %s%s", py,
			  args, quiet ? " 2>/dev/null" : ""),
		 (int)sizeof(cmd));
	st = system(cmd);
	CHECK(st != -1);
	return exit_status(st);
}

/* The same for the program text @script (written to a scratch file). */
static inline int
run_python(const char *script, const char *args, bool quiet)
{
	char dir[64], py[96];
	int st;

	tmpdir_make(dir, sizeof(dir), "sluice-py");
	snprintf(py, sizeof(py), "%s/check.py", dir);
	write_file(py, script, strlen(script));
	st = run_python_file(py, args, quiet);
	tmpdir_remove(dir);
	return st;
}

#ifdef SLUICE_TEST_LIB_DIR
/* tests/lib/check_trace.py on @path with the expectations @expect
 * ("KEY=VALUE ..."; see the script); returns its exit status. */
static inline int
check_trace_file(const char *path, const char *expect, bool quiet)
{
	char args[2048];

	CHECK_LT(snprintf(args, sizeof(args), "'%s' %s", path, expect),
		 (int)sizeof(args));
	return run_python_file(SLUICE_TEST_LIB_DIR "/check_trace.py", args,
			       quiet);
}
#endif

/* gunzip @len bytes of @in into a malloc'd buffer of *@outlen bytes (plus
 * a NUL after them); the whole input must be one gzip member. */
static inline unsigned char *
gunzip(const void *in, size_t len, size_t *outlen)
{
	size_t cap = 1 << 16;
	unsigned char *out = malloc(cap + 1);
	z_stream z;
	int rc;

	CHECK(out != NULL);
	memset(&z, 0, sizeof(z));
	CHECK_EQ(inflateInit2(&z, 15 + 16), Z_OK);
	z.next_in = (unsigned char *)(uintptr_t)in;
	z.avail_in = (uInt)len;
	for (;;) {
		z.next_out = out + z.total_out;
		z.avail_out = (uInt)(cap - z.total_out);
		rc = inflate(&z, Z_NO_FLUSH);
		if (rc == Z_STREAM_END)
			break;
		CHECK_EQ(rc, Z_OK);
		if (z.avail_out == 0) {
			unsigned char *bigger;

			cap *= 2;
			bigger = realloc(out, cap + 1);
			CHECK(bigger != NULL);
			out = bigger;
		}
	}
	CHECK_EQ(z.avail_in, 0);
	*outlen = z.total_out;
	out[*outlen] = '\0';
	inflateEnd(&z);
	return out;
}

#endif /* PROC_H */
