/* SPDX-License-Identifier: MIT */
/*
 * main.c - the sluice command: dispatches to its subcommands.
 */
#include <stdio.h>
#include <string.h>

#include <sluice/version.h>

#include "cli.h"

static const char top_usage[] =
	"usage: sluice <command> [flags]\n"
	"\n"
	"Commands:\n"
	"  consume   read messages from stdin or files and process each one,\n"
	"            or each batch, with bounded concurrency, deadlines,\n"
	"            retries and a dead-letter file\n"
	"  publish   read messages from stdin or files and publish them to\n"
	"            an NSQ topic (MPUB batches, or DPUB with --defer)\n"
	"  version   print the version\n"
	"  help      help for a command: sluice help consume\n";

int
main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;

	if (!cmd || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
		fputs(top_usage, cmd ? stdout : stderr);
		return cmd ? EXIT_OK : EXIT_USAGE;
	}
	if (strcmp(cmd, "consume") == 0)
		return cli_consume(argc - 1, argv + 1);
	if (strcmp(cmd, "publish") == 0)
		return cli_publish(argc - 1, argv + 1);
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
		printf("sluice %s\n", SLUICE_VERSION_STRING);
		return EXIT_OK;
	}
	if (strcmp(cmd, "help") == 0) {
		static char help[] = "--help";

		if (argc > 2 && strcmp(argv[2], "consume") == 0) {
			char *v[] = { argv[2], help, NULL };

			return cli_consume(2, v);
		}
		if (argc > 2 && strcmp(argv[2], "publish") == 0) {
			char *v[] = { argv[2], help, NULL };

			return cli_publish(2, v);
		}
		fputs(top_usage, stdout);
		return EXIT_OK;
	}
	fprintf(stderr, "sluice: unknown command '%s'\n\n%s", cmd, top_usage);
	return EXIT_USAGE;
}
