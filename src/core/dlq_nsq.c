/* SPDX-License-Identifier: MIT */
/*
 * dlq_nsq.c - the dead-letter sink that publishes to an NSQ topic.
 *
 * Each record is the file sink's JSON object (sl_dlq_emit(), without the
 * '\n'), published synchronously with sluice_nsq_publish(): write()
 * returns 0 only after nsqd answered OK, so the engine acknowledges the
 * original only then; any other result leaves the message with its source.
 * Workers dead-lettering at the same time are coalesced into MPUBs by the
 * producer.  The sink holds no mutable state (the producer locks its own),
 * so writes need no lock.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <sluice/dlq.h>
#include <sluice/nsq_producer.h>

#include "core/dlq_int.h"
#include "proto/nsq.h"
#include "util/alloc.h"

struct dlq_nsq {
	struct sluice_nsq_producer *p; /* immutable */
	bool own;                      /* immutable */
	char topic[SL_NSQ_NAME_MAX + 1];
};

/* The record without its '\n': a message is already delimited. */
static int
publish_line(void *ctx, const char *line, size_t len)
{
	struct dlq_nsq *d = ctx;

	return sluice_nsq_publish(d->p, d->topic, line, len - 1);
}

static int
nsq_write(void *self, const char *source, const struct sluice_msg *msg,
	  const struct sluice_error *why)
{
	return sl_dlq_emit(source, msg, why, publish_line, self);
}

static void
nsq_close(void *self)
{
	struct dlq_nsq *d = self;

	if (d->own)
		sluice_nsq_producer_free(d->p); /* flushes first */
	sl_free(d);
}

static const struct sluice_dlq_ops nsq_ops = {
	.name = "nsq",
	.write = nsq_write,
	.close = nsq_close,
};

int
sluice_dlq_nsq_open(struct sluice_nsq_producer *p, bool own, const char *topic,
		    struct sluice_dlq *out)
{
	struct dlq_nsq *d;

	if (!p || !out || !topic || !sl_nsq_name_is_valid(topic, strlen(topic)))
		return SLUICE_EINVAL;
	d = sl_malloc(sizeof(*d));
	if (!d)
		return SLUICE_ENOMEM;
	d->p = p;
	d->own = own;
	snprintf(d->topic, sizeof(d->topic), "%s", topic);
	out->ops = &nsq_ops;
	out->self = d;
	return 0;
}
