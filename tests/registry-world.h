/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The world of the daemon's and qctl's registry tests (test-daemon-registry, test-client-registry): a
 * temporary folder holding a real registry (registry-harness.h) and a real quantd on the engine backend that
 * trusts it (daemon-harness.h). Failures end the test through cmocka's fail_msg().
 */

#include "daemon-harness.h"
#include "registry-harness.h"

typedef struct World {
        char dir[64];
        RegistryServer registry;
        RegistryServer proxy; /* started by the tests that want one */
        Harness daemon;       /* started by world_start_daemon() */
        char *name;           /* host/library/stories:v1 */
} World;

/* Creates the folder and starts the registry in it. */
World *world_new(void);
/* Starts quantd --backend=engine with the registry as an insecure host, then the INI lines in config. */
void world_start_daemon(World *w, const char *config);
/* Stops the daemon (which must exit with 0), the proxy and the registry, and removes the folder. */
void world_free(World *w);
