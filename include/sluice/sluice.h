/* SPDX-License-Identifier: MIT */
/*
 * sluice.h - the umbrella header: include this to use all of sluice.
 */
#ifndef SLUICE_SLUICE_H
#define SLUICE_SLUICE_H

#include <sluice/backoff.h>
#include <sluice/clock.h>
#include <sluice/common.h>
#include <sluice/ctx.h>
#include <sluice/debug_http.h>
#include <sluice/dlq.h>
#include <sluice/engine.h>
#include <sluice/error.h>
#include <sluice/framing.h>
#include <sluice/handler.h>
#include <sluice/heapprof.h>
#include <sluice/map.h>
#include <sluice/metrics.h>
#include <sluice/msg.h>
#include <sluice/nsq.h>
#include <sluice/nsq_producer.h>
#include <sluice/profile.h>
#include <sluice/queue.h>
#include <sluice/stream.h>
#include <sluice/trace.h>
#include <sluice/version.h>

#endif /* SLUICE_SLUICE_H */
