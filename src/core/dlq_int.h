/* SPDX-License-Identifier: MIT */
/*
 * dlq_int.h - the dead-letter record, shared by the sinks (internal).
 *
 * Every sink stores the same record: the JSON object described in dlq.h.
 * The file sink appends it as a line; the NSQ sink (dlq_nsq.c) publishes
 * it as a message body without the '\n'.  No state, no locking.
 */
#ifndef SL_CORE_DLQ_INT_H
#define SL_CORE_DLQ_INT_H

#include <stddef.h>

#include <sluice/dlq.h>

/* Takes one record line (with its '\n'); returns 0 or a negative code. */
typedef int sl_dlq_sink_fn(void *ctx, const char *line, size_t len);

/*
 * sl_dlq_emit() - build the record for @msg, stamped with the current
 * wall-clock time, as a JSON line ending in '\n' (on the stack when it
 * fits, else allocated) and hand it to @sink.
 * Returns: what @sink returned, SLUICE_EINVAL (@msg NULL) or SLUICE_ENOMEM.
 */
int sl_dlq_emit(const char *source, const struct sluice_msg *msg,
		const struct sluice_error *why, sl_dlq_sink_fn *sink,
		void *ctx);

#endif /* SL_CORE_DLQ_INT_H */
