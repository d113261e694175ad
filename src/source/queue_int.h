/* SPDX-License-Identifier: MIT */
/*
 * queue_int.h - test hooks of the in-process queue (not public API).
 */
#ifndef SL_QUEUE_INT_H
#define SL_QUEUE_INT_H

#include <stddef.h>

#include <sluice/queue.h>

/* Threads blocked in the queue right now (fetch, publish and wait_idle), so
 * tests can wait until a thread is really blocked instead of sleeping. */
size_t sl_queue_waiters(struct sluice_queue *q);

#endif /* SL_QUEUE_INT_H */
