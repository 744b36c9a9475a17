/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * daemon: quantd's manager (event loop, socket server, jobs, scheduler). Everything here runs on the main
 * thread unless a function says otherwise.
 */

#include "common.h"

/* The paths of the design's table, resolved for the system daemon or for --user. */
typedef struct DaemonPaths {
        char *socket;
        char *models;
        char *config;
} DaemonPaths;

/*
 * Fills p from the defaults for the mode (user: XDG directories; system: /run, /var/lib, /etc), then the
 * environment (QUANTD_SOCKET, QUANTD_MODELS). Command-line overrides are applied by the caller afterwards.
 */
int daemon_paths_resolve(DaemonPaths *p, bool user);
void daemon_paths_done(DaemonPaths *p);
