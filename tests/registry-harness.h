/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Helpers for the programs that run against a real registry (test-registry-remote, bench-registry-pull):
 * starting Debian's docker-registry and tests/registry/fault-proxy.py on loopback ports, plain HTTP requests
 * to them, a self-signed certificate for the TLS tests, and large pseudo-random files. Failures end the
 * program through cmocka's fail_msg(), so the helpers return only on success.
 */

#include <curl/curl.h>

#include "common.h"

typedef struct RegistryServer {
        pid_t pid;
        unsigned port;
        char host[32]; /* "127.0.0.1:<port>" */
} RegistryServer;

typedef struct RegistryServerOptions {
        bool htpasswd;        /* basic authentication with tests/registry/htpasswd */
        const char *tls_cert; /* PEM certificate and key: serve https */
        const char *tls_key;
} RegistryServerOptions;

/* tests/registry, from QUANTD_TEST_REGISTRY_DIR. */
const char *harness_registry_dir(void);

/* A loopback port that was free a moment ago. */
unsigned harness_free_port(void);

/* One request; returns the HTTP status, 0 when nothing answered. body (may be NULL) receives the reply. */
long harness_http(const char *method, const char *url, Buf *body);

/* Starts docker-registry with its storage in dir/name; returns when /v2/ answers. */
void harness_start_registry(RegistryServer *ret, const char *dir, const char *name,
                            const RegistryServerOptions *o);

/* Starts the fault proxy in front of the registry on upstream_port. */
void harness_start_proxy(RegistryServer *ret, unsigned upstream_port);

void harness_stop(RegistryServer *s);

/* The fault proxy's counter key from GET /__stats. */
uint64_t harness_proxy_stat(const RegistryServer *proxy, const char *key);

/* Writes a self-signed certificate for 127.0.0.1 and its key (EC P-256) as PEM files. */
void harness_make_certificate(const char *cert_path, const char *key_path);

/* A memfd of size pseudo-random bytes (xorshift64, the same bytes every time for a seed). */
int harness_random_fd(uint64_t size, uint64_t seed);

/* rm -rf */
void harness_rm_rf(const char *path);
