/* SPDX-License-Identifier: MIT */
/*
 * exec.h - run a command per message (or per batch) under a deadline.
 *
 * The exec contract: the command runs through /bin/sh -c in its own process
 * group, with the message bytes on its stdin and SLUICE_* variables in its
 * environment.  Exit 0 is success, 75 (EX_TEMPFAIL) temporary, 65
 * (EX_DATAERR) permanent, death by a signal a crash (temporary: it counts as
 * an attempt), any other code as mapped (default temporary).  When the
 * context is done (deadline or shutdown) the whole process group gets
 * SIGTERM, then SIGKILL after a grace period.  After the child exits, the
 * group is killed again so no descendant outlives it, and every process
 * that can be reaped is: no zombies, no orphans.  The child's stdout and
 * stderr are captured up to a bound; the rest is read and dropped.
 */
#ifndef SLUICE_EXEC_H
#define SLUICE_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sluice/common.h>
#include <sluice/ctx.h>
#include <sluice/error.h>
#include <sluice/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_EXEC_MAP_MAX 32

struct sluice_exec_config {
	const char *command;   /* shell command line; borrowed */
	int64_t kill_grace_ns; /* SIGTERM -> SIGKILL delay; default 2 s */
	size_t capture_max;    /* bytes kept of stdout and of stderr each;
				  default 64 KiB; 0 = keep none */
	enum sluice_class other_exit; /* exit codes not 0/65/75 and not in
					 map; default TEMPORARY */
	/* Explicit exit code -> class mapping, checked before the defaults
	 * (so 75 can even be made permanent). */
	struct {
		int code;
		enum sluice_class cls;
	} map[SLUICE_EXEC_MAP_MAX];
	size_t nmap;
	int stdout_fd; /* >= 0: the child's stdout goes here instead of
			  being captured (e.g. 1 to pass it through) */
};

/** sluice_exec_config_init() - the defaults above; stdout captured. */
SLUICE_API void sluice_exec_config_init(struct sluice_exec_config *cfg);

/**
 * sluice_exec_parse_map() - parse an --exit-codes value such as
 * "3=permanent,4=ok,10-19=temporary" into @cfg's map (appending).
 * Classes: ok, temporary, permanent, timeout.
 * Returns: 0, or SLUICE_EINVAL with @err (if not NULL) naming the bad part.
 */
SLUICE_API int sluice_exec_parse_map(struct sluice_exec_config *cfg,
				     const char *spec, char *err,
				     size_t errsize);

struct sluice_exec_result {
	int wait_status;    /* as from waitpid(); valid when exited */
	bool exited;        /* the child was reaped */
	bool killed;        /* we signalled the group (deadline/cancel) */
	int64_t elapsed_ns; /* spawn to reap, on the context's clock */
	char *out, *err;    /* captured bytes (NUL-terminated); owned */
	size_t out_len, err_len;
	bool out_truncated, err_truncated;
};

/**
 * sluice_exec_run() - run @cfg->command once.
 * @ctx: its deadline and cancellation bound the run (borrowed).
 * @input: @ninput byte strings written to the child's stdin in order, then
 *         stdin is closed.  A child that exits without reading it all is
 *         not an error by itself (EPIPE is ignored).
 * @env: extra "NAME=value" strings (NULL-terminated list, or NULL) added to
 *       the inherited environment.
 * @res: filled in (release with sluice_exec_result_release()); may be NULL.
 *
 * Returns: NULL on success (exit 0 or mapped to ok), else a new error:
 * the exit class with code = exit status; a crash with SLUICE_CODE_CRASH;
 * TIMEOUT (code SLUICE_ETIMEDOUT) when the deadline killed it; CANCELED when
 * a shutdown cancellation killed it; TEMPORARY with -errno when it could
 * not be started.  The message names the command's exit and includes the
 * last line of captured stderr, if any.
 * Threads: any number of runs at once, from any threads.
 */
SLUICE_API struct sluice_error *
sluice_exec_run(const struct sluice_exec_config *cfg, struct sluice_ctx *ctx,
		const struct sluice_bytes *input, size_t ninput,
		const char *const *env, struct sluice_exec_result *res);

/** sluice_exec_result_release() - free the captured output.  NULL ok. */
SLUICE_API void sluice_exec_result_release(struct sluice_exec_result *res);

/**
 * sluice_exec_become_subreaper() - make this process the reaper of orphaned
 * descendants (Linux PR_SET_CHILD_SUBREAPER), so a grandchild that escapes
 * its process group is still reaped by sluice_exec_run's cleanup.
 * Returns: 0 or -errno.  Call once, early, from the program (not from a
 * library that does not own the process).
 */
SLUICE_API int sluice_exec_become_subreaper(void);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_EXEC_H */
