/* SPDX-License-Identifier: MIT */
/*
 * qctl: the command-line client of quantd. Verbs are dispatched from a table; each verb has --help.
 */

#include <getopt.h>

#include "client.h"
#include "config.h"

static void help(void) {
        printf("Usage: qctl [OPTIONS] COMMAND [ARGS...]\n\n"
               "Talks to quantd, the local model daemon.\n\n"
               "Commands:\n"
               "  run MODEL [PROMPT]     generate, or chat when no prompt is given\n"
               "  pull MODEL             download a model\n"
               "  push MODEL             upload a model\n"
               "  create NAME -f FILE    build a model from a Modelfile\n"
               "  list, ls               list local models\n"
               "  ps                     list loaded models\n"
               "  show MODEL             show a model's details\n"
               "  cp SRC DST             copy a model\n"
               "  rm MODEL...            remove models\n"
               "  stop MODEL             unload a model\n"
               "  version                show client and daemon versions\n\n"
               "Options:\n"
               "  -h --help              show this help\n"
               "     --version           show the version\n\n"
               "See qctl(1).\n");
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100 };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        int c;

        /* Options end at the verb: the verb parses its own. */
        while ((c = getopt_long(argc, argv, "+h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("qctl %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        return 2;
                }
        if (optind >= argc) {
                help();
                return 2;
        }
        fprintf(stderr, "qctl: '%s' is not available yet: the client's verbs have not landed.\n", argv[optind]);
        return 1;
}
