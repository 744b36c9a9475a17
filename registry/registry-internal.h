/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Shared by the files of registry/ only: the store's layout, SHA-256 helpers and atomic file writes. Nothing
 * outside this folder includes it.
 */

#include <openssl/evp.h>
#include <pthread.h>

#include "registry.h"

struct RegistryStore {
        char *root;
        int root_fd;      /* models/ */
        int manifests_fd; /* models/manifests */
        int blobs_fd;     /* models/blobs */
        const RegistryConfig *config;
        RegistryConfig default_config; /* used when the caller passed none */
};

/* ---- SHA-256 through OpenSSL's EVP interface ---- */

typedef struct Sha256 {
        EVP_MD_CTX *ctx;
} Sha256;

int sha256_init(Sha256 *h);
int sha256_update(Sha256 *h, const void *p, size_t n);
/* Writes "sha256:<hex>" into ret. */
int sha256_final(Sha256 *h, char ret[REGISTRY_DIGEST_MAX]);
void sha256_done(Sha256 *h);
int sha256_data(const void *p, size_t n, char ret[REGISTRY_DIGEST_MAX]);
/* Hashes fd from offset 0 to EOF (pread, so the file offset is unchanged), counting bytes into ret_size. */
int sha256_fd(int fd, const atomic_bool *cancel, char ret[REGISTRY_DIGEST_MAX], uint64_t *ret_size);

/* ---- files ---- */

/* "sha256-<hex>" for "sha256:<hex>"; digest must be valid. */
void blob_file_name(const char *digest, char ret[REGISTRY_DIGEST_MAX]);

/* Writes data to dir_fd/name through a temporary file, fsync, rename and fsync of the directory. */
int write_file_atomic(int dir_fd, const char *name, const void *data, size_t size);

/* Opens a fresh temporary file ".tmp-<random>" in dir_fd; its name goes to ret_name (32 bytes). */
int open_tmpfile(int dir_fd, char ret_name[32]);

/* Reads a whole file below dir_fd, failing with -EMSGSIZE past max bytes. */
int read_file_at(int dir_fd, const char *path, size_t max, char **ret, size_t *ret_size);

/* Creates the directories of path (every component but the last) below dir_fd. */
int mkdir_parents_at(int dir_fd, const char *path);

/* Fully writes or reads n bytes at offset. */
int pwrite_full(int fd, const void *p, size_t n, uint64_t offset);
int write_full(int fd, const void *p, size_t n);

/* "host/namespace/model/tag" for the manifest of name. */
int manifest_rel_path(const RegistryName *name, char **ret);

/* Makes the verified blob visible: fsync fd (open on blobs/tmp_name), rename it, fsync the directory. */
int store_commit_blob(RegistryStore *s, int fd, const char *tmp_name, const char *digest);

/*
 * Takes the store's lock: shared (waits) for writers that add blobs before their manifest, exclusive (never
 * waits, -EBUSY) for removing unreferenced blobs. The lock is held until the returned fd is closed.
 */
int store_lock(RegistryStore *s, bool exclusive, int *ret);

/* Whether the blob exists with that size (size UINT64_MAX: any size). */
bool store_has_blob(RegistryStore *s, const char *digest, uint64_t size);

/* Finds another local repository on host that holds digest, for a cross-repository mount. */
int store_find_repo_with_blob(RegistryStore *s, const RegistryName *except, const char *digest, char **ret);

static inline bool cancelled(const atomic_bool *cancel) {
        return cancel && atomic_load(cancel);
}
