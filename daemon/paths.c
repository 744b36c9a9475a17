/* SPDX-License-Identifier: MIT */
/*
 * Where quantd keeps its socket, models and config, as ../shared/design.md fixes them: system paths for the
 * system daemon, XDG paths for --user, environment overrides on top.
 */

#include "config.h"
#include "daemon.h"

static int xdg_dir(const char *env, const char *fallback_under_home, char **ret) {
        const char *v = getenv(env);

        if (v && v[0] == '/') {
                *ret = strdup(v);
        } else {
                const char *home = getenv("HOME");
                if (!home || home[0] != '/')
                        return -ENXIO;
                *ret = strdup_printf("%s/%s", home, fallback_under_home);
        }
        return *ret ? 0 : -ENOMEM;
}

int daemon_paths_resolve(DaemonPaths *p, bool user) {
        _cleanup_free_ char *runtime = NULL, *data = NULL, *config = NULL;
        int r;

        *p = (DaemonPaths){};
        if (user) {
                const char *rt = getenv("XDG_RUNTIME_DIR");
                if (!rt || rt[0] != '/')
                        return -ENXIO;
                r = xdg_dir("XDG_DATA_HOME", ".local/share", &data);
                if (r < 0)
                        return r;
                r = xdg_dir("XDG_CONFIG_HOME", ".config", &config);
                if (r < 0)
                        return r;
                p->socket = strdup_printf("%s/quantd/quantd.sock", rt);
                p->models = strdup_printf("%s/quantd/models", data);
                p->config = strdup_printf("%s/quantd/quantd.conf", config);
        } else {
                p->socket = strdup("/run/quantd/quantd.sock");
                p->models = strdup("/var/lib/quantd/models");
                p->config = strdup("/etc/quantd/quantd.conf");
        }
        if (!p->socket || !p->models || !p->config) {
                daemon_paths_done(p);
                return -ENOMEM;
        }

        const char *e = getenv("QUANTD_SOCKET");
        if (e && *e) {
                free(p->socket);
                p->socket = strdup(e);
        }
        e = getenv("QUANTD_MODELS");
        if (e && *e) {
                free(p->models);
                p->models = strdup(e);
        }
        if (!p->socket || !p->models) {
                daemon_paths_done(p);
                return -ENOMEM;
        }
        return 0;
}

void daemon_paths_done(DaemonPaths *p) {
        free(p->socket);
        free(p->models);
        free(p->config);
        *p = (DaemonPaths){};
}
