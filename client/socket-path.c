/* SPDX-License-Identifier: MIT */
/*
 * Which daemon qctl talks to, in the order ../shared/design.md gives.
 */

#include <sys/stat.h>

#include "client.h"

int client_socket_path(char **ret) {
        const char *e = getenv("QUANTD_SOCKET");
        char *p;

        if (e && *e) {
                p = strdup(e);
                if (!p)
                        return -ENOMEM;
                *ret = p;
                return 0;
        }
        const char *rt = getenv("XDG_RUNTIME_DIR");
        if (rt && rt[0] == '/') {
                struct stat st;
                p = strdup_printf("%s/quantd/quantd.sock", rt);
                if (!p)
                        return -ENOMEM;
                if (stat(p, &st) >= 0 && S_ISSOCK(st.st_mode)) {
                        *ret = p;
                        return 0;
                }
                free(p);
        }
        p = strdup("/run/quantd/quantd.sock");
        if (!p)
                return -ENOMEM;
        *ret = p;
        return 0;
}
