/* SPDX-License-Identifier: MIT */
/*
 * obs.c - the profile and trace files of the command line tool, for runs
 * without a debug server (the seed's runtime/pprof case):
 *
 *   --cpuprofile FILE   CPU profile of the whole run (pprof format)
 *   --memprofile FILE   heap profile at exit (pprof; inuse and alloc)
 *   --trace FILE        execution trace of the whole run: Chrome JSON, or
 *                       Perfetto protobuf when FILE ends in .pftrace or
 *                       .perfetto-trace
 *
 * and the same from SLUICE_CPUPROFILE, SLUICE_MEMPROFILE, SLUICE_TRACE
 * (cli_parse_flags() maps them; a flag wins).  cli_obs_start() runs
 * before the engine starts, cli_obs_finish() after it stopped, so the
 * files cover the whole run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sluice/heapprof.h>
#include <sluice/profile.h>
#include <sluice/trace.h>

#include "cli.h"

/* Create (or empty) @path now, so a bad path fails before the run, not
 * after it. */
static int
can_create(const char *cmd, const char *flag, const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		fprintf(stderr, "%s: --%s %s: %s\n", cmd, flag, path,
			sluice_strerror(-errno));
		return EXIT_CANTCREAT;
	}
	fclose(f);
	return EXIT_OK;
}

static int
ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

int
cli_obs_start(const struct cli_obs *o, const char *cmd)
{
	char err[160];
	int rc;

	if ((o->cpuprofile &&
	     (rc = can_create(cmd, "cpuprofile", o->cpuprofile)) != 0) ||
	    (o->memprofile &&
	     (rc = can_create(cmd, "memprofile", o->memprofile)) != 0) ||
	    (o->trace && (rc = can_create(cmd, "trace", o->trace)) != 0))
		return rc;
	if (o->cpuprofile) {
		rc = sluice_cpu_profile_start(0, err, sizeof(err));
		if (rc != 0) {
			fprintf(stderr, "%s: --cpuprofile: %s\n", cmd, err);
			return EXIT_SOFTWARE;
		}
	}
	if (o->trace) {
		rc = sluice_trace_start(NULL);
		if (rc != 0) {
			fprintf(stderr, "%s: --trace: %s\n", cmd,
				sluice_strerror(rc));
			return EXIT_SOFTWARE;
		}
	}
	return EXIT_OK;
}

int
cli_obs_finish(const struct cli_obs *o, const char *cmd)
{
	int status = EXIT_OK, rc;

	if (o->cpuprofile && sluice_cpu_profile_running()) {
		rc = sluice_cpu_profile_stop_path(SLUICE_PROFILE_PPROF,
						  o->cpuprofile);
		if (rc != 0) {
			fprintf(stderr, "%s: --cpuprofile %s: %s\n", cmd,
				o->cpuprofile, sluice_strerror(rc));
			status = EXIT_CANTCREAT;
		}
	}
	if (o->trace && sluice_trace_enabled()) {
		enum sluice_trace_format f =
			ends_with(o->trace, ".pftrace") ||
					ends_with(o->trace, ".perfetto-trace")
				? SLUICE_TRACE_PERFETTO
				: SLUICE_TRACE_JSON;

		(void)sluice_trace_stop();
		rc = sluice_trace_write_path(o->trace, f);
		if (rc != 0) {
			fprintf(stderr, "%s: --trace %s: %s\n", cmd, o->trace,
				sluice_strerror(rc));
			status = EXIT_CANTCREAT;
		}
	}
	if (o->memprofile) {
		rc = sluice_profile_write_path(SLUICE_PROFILE_HEAP,
					       SLUICE_PROFILE_PPROF,
					       o->memprofile);
		if (rc != 0) {
			fprintf(stderr, "%s: --memprofile %s: %s\n", cmd,
				o->memprofile, sluice_strerror(rc));
			status = EXIT_CANTCREAT;
		}
	}
	return status;
}
