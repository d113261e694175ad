/* SPDX-License-Identifier: MIT */
/*
 * bench_nsq_pub.c - MPUB throughput of the NSQ producer: publish N bodies
 * of SIZE bytes to one nsqd (fake_nsqd in bench_publish.sh) through
 * sluice_nsq_publish_async(), flush, and print msg/s as
 *   nsq-pub: N msgs of SIZE B in S s: R msg/s, M MB/s, B batches
 * The anchor is NSQ's own bench writer (bench/bench_writer, MPUB of 200-byte
 * bodies in batches of 200), which the reference measured at about 380 k
 * msg/s on this machine against a real nsqd.
 *
 * usage: bench_nsq_pub PORT [N [SIZE [BATCH]]]   (1000000, 200, 200)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sluice/nsq_producer.h>

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	struct sluice_nsq_producer_config cfg;
	struct sluice_nsq_producer_stats st;
	struct sluice_nsq_producer *p;
	unsigned long n = 1000000, size = 200, batch = 200, i;
	char err[256], *body;
	double t0, secs;

	if (argc < 2) {
		fprintf(stderr,
			"usage: bench_nsq_pub PORT [N [SIZE [BATCH]]]\n");
		return 2;
	}
	if (argc > 2)
		n = strtoul(argv[2], NULL, 10);
	if (argc > 3)
		size = strtoul(argv[3], NULL, 10);
	if (argc > 4)
		batch = strtoul(argv[4], NULL, 10);
	if (n == 0 || size == 0 || batch == 0)
		return 2;
	body = malloc(size);
	if (!body)
		return 1;
	memset(body, 'x', size);
	sluice_nsq_producer_config_init(&cfg);
	cfg.port = (uint16_t)strtoul(argv[1], NULL, 10);
	cfg.batch_max = batch;
	if (sluice_nsq_producer_new(&cfg, err, sizeof(err), &p)) {
		fprintf(stderr, "bench_nsq_pub: %s\n", err);
		free(body);
		return 1;
	}
	t0 = now_s();
	for (i = 0; i < n; i++) {
		/* Vary the body a little so nothing can special-case it. */
		body[0] = (char)('a' + i % 26);
		if (sluice_nsq_publish_async(p, "bench", body, size, NULL,
					     NULL)) {
			fprintf(stderr, "bench_nsq_pub: publish refused\n");
			return 1;
		}
	}
	if (sluice_nsq_producer_flush(p, SLUICE_FOREVER))
		return 1;
	secs = now_s() - t0;
	sluice_nsq_producer_stats(p, &st);
	sluice_nsq_producer_free(p);
	free(body);
	if (st.published != n) {
		fprintf(stderr, "bench_nsq_pub: %llu of %lu published\n",
			(unsigned long long)st.published, n);
		return 1;
	}
	printf("nsq-pub: %lu msgs of %lu B in %.2f s: %.0f msg/s, %.1f MB/s, "
	       "%llu batches\n",
	       n, size, secs, (double)n / secs,
	       (double)n * (double)size / secs / 1e6,
	       (unsigned long long)st.commands);
	return 0;
}
