/* SPDX-License-Identifier: MIT */
/*
 * quantd: the model daemon's entry point. Parses the command line, resolves paths, reads the configuration
 * (the command line beats the environment beats the file) and runs the manager's event loop.
 */

#include <getopt.h>

#include "config.h"
#include "daemon.h"
#include "engine.h"
#if HAVE_DBUS
#include "dbus.h"
#endif

static bool arg_user = false;
static bool arg_foreground = false;
static const char *arg_socket = NULL;
static const char *arg_models = NULL;
static const char *arg_config = NULL;
static const char *arg_backend = NULL;

static void help(void) {
        printf("Usage: quantd [OPTIONS]\n\n"
               "The local model daemon: keeps a registry of models, runs quantization and builds as jobs,\n"
               "keeps hot models resident and serves generation over a Unix socket and D-Bus.\n\n"
               "  -h --help             show this help\n"
               "     --version          show the version\n"
               "     --user             run as a user daemon with XDG paths\n"
               "     --socket=PATH      listen on PATH\n"
               "     --models=DIR       keep models in DIR\n"
               "     --config=FILE      read the configuration from FILE\n"
               "     --foreground       do not detach (the default under systemd)\n"
               "     --log-level=LEVEL  err, warning, notice, info or debug\n"
               "     --backend=NAME     engine (the default) or fake (for tests)\n\n"
               "See quantd(8).\n");
}

int main(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_USER,
                ARG_SOCKET,
                ARG_MODELS,
                ARG_CONFIG,
                ARG_FOREGROUND,
                ARG_LOG_LEVEL,
                ARG_BACKEND,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "user", no_argument, NULL, ARG_USER },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "models", required_argument, NULL, ARG_MODELS },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "foreground", no_argument, NULL, ARG_FOREGROUND },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "backend", required_argument, NULL, ARG_BACKEND },
                {},
        };
        _cleanup_(daemon_paths_done) DaemonPaths paths = {};
        _cleanup_(daemon_config_done) DaemonConfig config = {};
        _cleanup_(manager_freep) Manager *m = NULL;
        bool log_level_set = false;
        QdError err = {};
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("quantd %s\n", PACKAGE_VERSION);
                        printf("backends: cpu%s\n", HAVE_CUDA ? " cuda" : "");
                        if (HAVE_CUDA)
                                printf("cuda devices: %d\n", engine_cuda_devices());
                        return 0;
                case ARG_USER:
                        arg_user = true;
                        break;
                case ARG_SOCKET:
                        arg_socket = optarg;
                        break;
                case ARG_MODELS:
                        arg_models = optarg;
                        break;
                case ARG_CONFIG:
                        arg_config = optarg;
                        break;
                case ARG_FOREGROUND:
                        arg_foreground = true;
                        break;
                case ARG_LOG_LEVEL:
                        r = log_level_from_string(optarg);
                        if (r < 0) {
                                log_error("Unknown log level '%s'.", optarg);
                                return 2;
                        }
                        log_set_max_level(r);
                        log_level_set = true;
                        break;
                case ARG_BACKEND:
                        if (!streq(optarg, "engine") && !streq(optarg, "fake")) {
                                log_error("Unknown backend '%s': use engine or fake.", optarg);
                                return 2;
                        }
                        arg_backend = optarg;
                        break;
                default:
                        return 2;
                }
        if (optind < argc) {
                log_error("quantd takes no arguments, got '%s' (see --help).", argv[optind]);
                return 2;
        }

        r = daemon_paths_resolve(&paths, arg_user);
        if (r < 0) {
                log_error_errno(r, "Failed to resolve the daemon's paths%s: %m",
                                arg_user ? " (is XDG_RUNTIME_DIR set?)" : "");
                return 1;
        }
        daemon_config_init(&config);
        const char *config_path = arg_config ?: paths.config;
        r = daemon_config_load(&config, config_path, &err);
        if (r == -ENOENT && arg_config) {
                log_error("Configuration file %s does not exist.", arg_config);
                return 1;
        }
        if (r < 0 && r != -ENOENT) {
                log_error("%s", err.msg);
                return 1;
        }
        if (log_level_set)
                config.log_level = -1;

        /* The command line beats the environment, which beats the file. */
        const char *e_socket = getenv("QUANTD_SOCKET"), *e_models = getenv("QUANTD_MODELS");
        const char *socket = arg_socket ?: (e_socket && *e_socket) ? paths.socket
                                                                   : config.socket ?: paths.socket;
        const char *models = arg_models ?: (e_models && *e_models) ? paths.models
                                                                   : config.models ?: paths.models;
        _cleanup_free_ char *socket_copy = strdup(socket), *models_copy = strdup(models);
        if (!socket_copy || !models_copy)
                return log_oom(), 1;

        const BackendOps *backend = arg_backend && streq(arg_backend, "fake") ? &backend_fake_ops
                                                                              : &backend_engine_ops;
        ManagerOptions o = {
                .user = arg_user,
                .socket = socket_copy,
                .models = models_copy,
                .config_path = config_path,
                .backend = backend,
                .store = &store_registry_ops,
        };
        /* The daemon never forks: --foreground is accepted for compatibility with service managers. */
        (void)arg_foreground;
        log_info("quantd %s: socket %s, models %s, config %s", PACKAGE_VERSION, socket_copy, models_copy,
                 config_path);
        r = manager_new(&m, &config, &o);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the daemon: %m");
                return 1;
        }
#if HAVE_DBUS
        /* The second front end over the same methods; freed before the manager. Without a bus, the socket
         * still serves (dbus_front_new() said why). */
        _cleanup_(dbus_front_freep) DbusFront *bus = NULL;
        (void)dbus_front_new(&bus, m, &(DbusFrontOptions){ .user = arg_user, .polkit = !arg_user });
#endif
        r = manager_run(m);
        return r < 0 ? 1 : 0;
}
