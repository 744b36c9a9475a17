/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * registry: the model store (Ollama-compatible layout on disk) and the client for OCI/Docker registries.
 *
 *   models/manifests/<host>/<namespace>/<model>/<tag>   image manifest JSON (Docker v2 schema 2 or OCI)
 *   models/blobs/sha256-<hex>                           content-addressed blobs, visible once verified
 *   models/blobs/sha256-<hex>-partial[.state]           a download in progress (data and part state)
 *
 * Threads: a RegistryStore may be used from several threads at once (the daemon's main thread lists and
 * shows while workers pull, push, create, import and export); the functions that take a store say so when
 * they block on the network or on large files, and those belong on a worker. Pulls of the same blob, from
 * threads of one process or from several processes, share one download through a lock on the blob's
 * part-state file.
 *
 * Errors follow the project's table: ENOENT no such model or blob, EEXIST name taken, EINVAL bad name or
 * argument, EBADMSG malformed manifest or archive or a digest mismatch, EMSGSIZE over a limit, ECANCELED
 * cancelled, EACCES refused by the registry's authentication, EPROTO an unexpected reply from the registry,
 * ETIMEDOUT the network stalled past the retries, ENOSPC out of disk. Each failure also fills the QdError,
 * when one is passed, with one sentence for the user.
 */

#include <stdatomic.h>

#include "common.h"

#define REGISTRY_DEFAULT_HOST "registry.ollama.ai"
#define REGISTRY_DEFAULT_NAMESPACE "library"
#define REGISTRY_DEFAULT_TAG "latest"

/* Limits on the parts of a name, so that a name always fits a path component and a registry URL. */
#define REGISTRY_HOST_MAX 253
#define REGISTRY_COMPONENT_MAX 80
#define REGISTRY_TAG_MAX 128

/* "sha256:" + 64 hex digits + NUL */
#define REGISTRY_DIGEST_MAX 72

/* Largest manifest we read from a registry, a file or an archive. */
#define REGISTRY_MANIFEST_MAX (4U * 1024U * 1024U)

/* Media types of the layers Ollama defines, and of the manifests and config blob we read and write. */
#define REGISTRY_MEDIA_MODEL "application/vnd.ollama.image.model"
#define REGISTRY_MEDIA_TEMPLATE "application/vnd.ollama.image.template"
#define REGISTRY_MEDIA_SYSTEM "application/vnd.ollama.image.system"
#define REGISTRY_MEDIA_PARAMS "application/vnd.ollama.image.params"
#define REGISTRY_MEDIA_LICENSE "application/vnd.ollama.image.license"
#define REGISTRY_MEDIA_MESSAGES "application/vnd.ollama.image.messages"
#define REGISTRY_MEDIA_ADAPTER "application/vnd.ollama.image.adapter"
#define REGISTRY_MEDIA_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define REGISTRY_MEDIA_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define REGISTRY_MEDIA_DOCKER_CONFIG "application/vnd.docker.container.image.v1+json"

/* ---- configuration ---- */

typedef struct RegistryCredential {
        char *host; /* "registry.example.com" or "127.0.0.1:5000" */
        char *username;
        char *password;
} RegistryCredential;

typedef struct RegistryAlias {
        char *short_name; /* "llama-2-7b" */
        char *target;     /* "library/llama2:7b", resolved against the defaults like any name */
} RegistryAlias;

/*
 * Settings for the store and the client. registry_config_init() fills the defaults; the daemon then applies
 * the config file (registry_config_load()) and its command line. Owned strings are freed by
 * registry_config_done().
 */
typedef struct RegistryConfig {
        char *default_host;      /* host of names without one (REGISTRY_DEFAULT_HOST) */
        char *default_namespace; /* namespace of names without one (REGISTRY_DEFAULT_NAMESPACE) */
        char **insecure_hosts;   /* NULL-terminated; hosts that may be reached over plain http */
        char *ca_file;           /* PEM bundle to verify TLS peers with, NULL for the system's */
        RegistryCredential *credentials;
        size_t n_credentials;
        RegistryAlias *aliases; /* the short-name catalogue */
        size_t n_aliases;
        unsigned parallel_parts;          /* concurrent ranged requests per blob (4) */
        unsigned loopback_parallel_parts; /* the same for registries on this machine (1) */
        uint64_t part_size;               /* bytes per ranged part (64 MiB) */
        uint64_t max_bandwidth;           /* bytes per second over all parts of a blob, 0 for no cap */
        unsigned stall_timeout_s;         /* a transfer with no bytes for this long is retried (30) */
        unsigned max_retries;             /* retries per request after a network error or 5xx (6) */
        unsigned backoff_ms;              /* first retry delay, doubled each time up to 30 s (500) */
        uint64_t push_chunk_size;         /* blobs larger than this are pushed in PATCH chunks (64 MiB) */
        uint64_t prune_grace_s;    /* unreferenced blobs and partials younger than this survive (3600) */
        uint64_t import_max_bytes; /* largest total an archive may unpack to (1 TiB) */
} RegistryConfig;

void registry_config_init(RegistryConfig *c);
void registry_config_done(RegistryConfig *c);

/*
 * Applies the [Registry], [Credentials] and [Models] sections of an INI-style config file (other sections
 * are ignored, they belong to other components):
 *
 *   [Registry]  DefaultHost=, DefaultNamespace=, Insecure=HOST (repeatable), CAFile=, ParallelParts=,
 *               LoopbackParallelParts=,
 *               PartSize=BYTES, MaxBandwidth=BYTES, StallTimeout=DURATION, Retries=, Backoff=DURATION,
 *               PushChunkSize=BYTES, PruneGrace=DURATION, ImportMaxBytes=BYTES
 *   [Credentials] HOST=USER:PASSWORD
 *   [Models]    SHORT=NAME   (e.g. llama-2-7b=library/llama2:7b)
 *
 * BYTES accept a K, M or G suffix (powers of 1024). Returns 0, -ENOENT when the file is missing, or -EINVAL
 * with the file and line in e.
 */
int registry_config_load(RegistryConfig *c, const char *path, QdError *e);

/*
 * How many ranged requests a pull runs at once for a blob from host ("name[:port]"): loopback_parallel_parts
 * for localhost, 127.0.0.0/8 and [::1], parallel_parts for any other host. Over loopback one connection
 * carries all the bandwidth there is, and more of them only deliver the bytes out of order, which the
 * pull must then read back from disk to hash.
 */
unsigned registry_config_parallel_parts(const RegistryConfig *c, const char *host);

/* ---- names ---- */

typedef struct RegistryName {
        char host[REGISTRY_HOST_MAX + 1];
        char namespace[REGISTRY_COMPONENT_MAX + 1];
        char model[REGISTRY_COMPONENT_MAX + 1];
        char tag[REGISTRY_TAG_MAX + 1];
} RegistryName;

/*
 * Parses "[host/][namespace/]model[:tag]", filling the missing parts from c's defaults (c may be NULL for
 * the built-in defaults). Every part is checked before it can reach a path: host is letters, digits, '.',
 * '-' and an optional ":port"; namespace and model start with a letter or digit and go on with letters,
 * digits, '.', '_' and '-'; the tag is a Docker tag. Returns 0 or -EINVAL with a sentence in e.
 */
int registry_name_parse(const char *s, const RegistryConfig *c, RegistryName *ret, QdError *e);

/*
 * Like registry_name_parse(), but first looks s up in the short-name catalogue of c: "llama-2-7b" becomes
 * the catalogue's target. Use this for names a user typed for pull; names of local models use the parser.
 */
int registry_name_resolve(const char *s, const RegistryConfig *c, RegistryName *ret, QdError *e);

/* "host/namespace/model:tag" into a new string. Returns 0 or -ENOMEM. */
int registry_name_format(const RegistryName *n, char **ret);

/* The shortest form users know: "model:tag" for the default host and namespace, else "ns/model:tag"... */
int registry_name_format_short(const RegistryName *n, const RegistryConfig *c, char **ret);

/* ---- manifests ---- */

typedef struct RegistryLayer {
        char *media_type;
        char digest[REGISTRY_DIGEST_MAX];
        uint64_t size;
} RegistryLayer;

typedef struct RegistryManifest {
        char *media_type; /* Docker v2 schema 2 or OCI image manifest */
        RegistryLayer config;
        RegistryLayer *layers; /* (n_layers) */
        size_t n_layers;
} RegistryManifest;

/*
 * Parses and validates manifest JSON: schemaVersion 2, a config and layers whose digests are "sha256:" plus
 * 64 lowercase hex digits and whose sizes are non-negative integers. Returns 0, -EBADMSG or -EMSGSIZE.
 */
int registry_manifest_parse(const void *data, size_t size, RegistryManifest **ret, QdError *e);

/* Formats m as the compact JSON we store and push. Returns 0 or -ENOMEM. */
int registry_manifest_format(const RegistryManifest *m, char **ret);

/* The layer of that media type, or NULL. */
const RegistryLayer *registry_manifest_find_layer(const RegistryManifest *m, const char *media_type);

/* Sum of the config and layer sizes. */
uint64_t registry_manifest_total_size(const RegistryManifest *m);

RegistryManifest *registry_manifest_free(RegistryManifest *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(RegistryManifest *, registry_manifest_free);

/* True when s is "sha256:" followed by exactly 64 lowercase hex digits. */
bool registry_digest_is_valid(const char *s);

/* ---- progress, for pull, push, create, import and export ---- */

typedef enum RegistryProgressKind {
        REGISTRY_PROGRESS_MANIFEST,  /* pulling or pushing the manifest */
        REGISTRY_PROGRESS_LAYER,     /* bytes of one blob; total and completed set */
        REGISTRY_PROGRESS_WAITING,   /* another pull is downloading this blob */
        REGISTRY_PROGRESS_VERIFYING, /* hashing a downloaded blob */
        REGISTRY_PROGRESS_RETRYING,  /* a part failed and is retried after a delay */
        REGISTRY_PROGRESS_DONE,      /* the manifest is written (pull) or accepted (push) */
        _REGISTRY_PROGRESS_KIND_MAX,
        _REGISTRY_PROGRESS_KIND_INVALID = -EINVAL,
} RegistryProgressKind;

typedef struct RegistryProgress {
        RegistryProgressKind kind;
        const char *digest;   /* the blob, for per-layer events */
        uint64_t total;       /* bytes of the blob */
        uint64_t completed;   /* bytes on disk or uploaded so far, resumed bytes included */
        uint64_t transferred; /* bytes that went over the network in this call */
        const char *status;   /* a short sentence, as Ollama's progress "status" */
} RegistryProgress;

/* Called on the worker thread that runs the operation, at most a few times per second per layer. */
typedef void (*registry_progress_fn)(const RegistryProgress *p, void *userdata);

/* ---- the store ---- */

typedef struct RegistryStore RegistryStore;

typedef struct RegistryModelInfo {
        RegistryName name;
        char digest[REGISTRY_DIGEST_MAX]; /* SHA-256 of the manifest file, Ollama's model ID */
        uint64_t size;                    /* bytes of all blobs */
        int64_t modified_s;               /* mtime of the manifest, seconds since the epoch */
} RegistryModelInfo;

typedef struct RegistryPruneStats {
        unsigned blobs_removed;
        unsigned partials_removed;
        uint64_t bytes_freed;
} RegistryPruneStats;

/*
 * Opens (creating when missing) the store at root. The config is borrowed and must outlive the store; NULL
 * means the built-in defaults. Returns 0 or a negative errno with e filled.
 */
int registry_store_open(RegistryStore **ret, const char *root, const RegistryConfig *c, QdError *e);
RegistryStore *registry_store_free(RegistryStore *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(RegistryStore *, registry_store_free);

const char *registry_store_root(const RegistryStore *s);
const RegistryConfig *registry_store_config(const RegistryStore *s);

/* Every model with a valid manifest, sorted by name. Manifests that do not parse are skipped. */
int registry_store_list(RegistryStore *s, RegistryModelInfo **ret, size_t *ret_n, QdError *e);

/*
 * Reads and validates the manifest of name and checks that each blob it names exists with the right size.
 * ret_raw (optional) receives the manifest bytes as stored. Returns 0, -ENOENT (no such model or a blob is
 * missing), -EBADMSG (corrupt manifest or a blob of the wrong size).
 */
int registry_store_show(RegistryStore *s, const RegistryName *name, RegistryManifest **ret, char **ret_raw,
                        QdError *e);

/* The model's ID as registry_store_list() gives it, "sha256:" and the hex SHA-256 of its manifest as stored.
 * Returns 0, -ENOENT or -EBADMSG. */
int registry_store_model_digest(RegistryStore *s, const RegistryName *name, char ret[REGISTRY_DIGEST_MAX],
                                QdError *e);

/* Whether a manifest for name exists (it is not validated). */
bool registry_store_has_model(RegistryStore *s, const RegistryName *name);

/* Copies the manifest of src to dst. -EEXIST when dst exists and replace is false. */
int registry_store_copy(RegistryStore *s, const RegistryName *src, const RegistryName *dst, bool replace,
                        QdError *e);

/* Removes the manifest of name, then the blobs that no other manifest uses and no running pull holds. */
int registry_store_delete(RegistryStore *s, const RegistryName *name, QdError *e);

/* How many manifests name digest as a layer or config. */
int registry_store_blob_refs(RegistryStore *s, const char *digest, unsigned *ret, QdError *e);

/*
 * Removes blobs that no manifest references and partial downloads and temporary files, when they are older
 * than grace_s (use the config's prune_grace_s for the daemon's timer) and no pull in any process holds
 * them. stats may be NULL.
 */
int registry_store_prune(RegistryStore *s, uint64_t grace_s, RegistryPruneStats *stats, QdError *e);

/* Opens the verified blob digest read-only. Returns 0 with the fd in ret, or -ENOENT. */
int registry_store_open_blob(RegistryStore *s, const char *digest, int *ret, QdError *e);

/* The blob's path, for mmap by the engine. */
int registry_store_blob_path(RegistryStore *s, const char *digest, char **ret);

/*
 * Re-hashes every blob of name. Returns 0, -ENOENT for a missing blob or -EBADMSG when one does not match
 * its digest (the damaged blob is named in e).
 */
int registry_store_verify(RegistryStore *s, const RegistryName *name, QdError *e);

/*
 * Adds bytes as a blob: read from fd until EOF (fd >= 0) or taken from data/size. The blob becomes visible
 * only after it was hashed and synced. ret_digest receives "sha256:<hex>", ret_size the byte count.
 * Blocks on large files: call from a worker.
 */
int registry_store_add_blob(RegistryStore *s, int fd, const void *data, size_t size,
                            const atomic_bool *cancel, char ret_digest[REGISTRY_DIGEST_MAX],
                            uint64_t *ret_size, QdError *e);

/* Writes raw manifest bytes for name atomically, after checking that they parse and their blobs exist. */
int registry_store_write_manifest(RegistryStore *s, const RegistryName *name, const void *raw, size_t size,
                                  QdError *e);

/* One layer of a model being created: either the contents of an fd (a GGUF) or bytes in memory (a template).
 */
typedef struct RegistryCreateLayer {
        const char *media_type;
        int fd;           /* read to EOF when >= 0 */
        const void *data; /* used when fd < 0 */
        size_t size;
} RegistryCreateLayer;

/*
 * Creates model name from layers (used by `qctl create`: the GGUF arrives as an fd): each layer becomes a
 * blob, then a config blob ({"model_format":"gguf", "rootfs": …} plus config_extra's members when it is a
 * JSON object, such as model_family or file_type), then the manifest. The manifest replaces an existing one.
 */
int registry_store_create(RegistryStore *s, const RegistryName *name, const RegistryCreateLayer *layers,
                          size_t n_layers, const char *config_extra, registry_progress_fn progress,
                          void *userdata, const atomic_bool *cancel, QdError *e);

/*
 * Parses name (with the config's defaults), checks the model as registry_store_show() does, and returns its
 * canonical name and the path of its model layer (the GGUF), for the engine to map. Either output may be
 * NULL.
 */
int registry_store_resolve(RegistryStore *s, const char *name, RegistryName *ret_name, char **ret_model_path,
                           QdError *e);

/* ---- the registry client: pull and push ---- */

typedef struct RegistryTransferStats {
        uint64_t bytes_downloaded; /* body bytes received for blobs */
        uint64_t bytes_uploaded;
        unsigned retries;
        unsigned blobs_skipped; /* already present locally (pull) or remotely (push) */
        unsigned blobs_mounted; /* cross-repository mounts (push) */
} RegistryTransferStats;

/*
 * Pulls name (already resolved with registry_name_resolve()) into the store: the manifest, every blob in
 * parallel ranged parts with resumable state on disk, verification, then the manifest, written last. cancel
 * (may be NULL) is polled; when it becomes true the pull stops with -ECANCELED and keeps what it has for a
 * later resume. progress and stats may be NULL. Blocks: call from a worker.
 */
int registry_pull(RegistryStore *s, const RegistryName *name, registry_progress_fn progress, void *userdata,
                  const atomic_bool *cancel, RegistryTransferStats *stats, QdError *e);

/*
 * Pushes the local model name to its registry: blobs the registry lacks (mounted from another repository of
 * the same host when a local manifest there has it, else uploaded by POST and PUT or PATCH chunks), then the
 * manifest. Blocks: call from a worker.
 */
int registry_push(RegistryStore *s, const RegistryName *name, registry_progress_fn progress, void *userdata,
                  const atomic_bool *cancel, RegistryTransferStats *stats, QdError *e);

/* ---- archives ---- */

typedef enum RegistryArchiveFormat {
        REGISTRY_ARCHIVE_TAR,
        REGISTRY_ARCHIVE_TAR_GZ,
        REGISTRY_ARCHIVE_TAR_ZST,
        _REGISTRY_ARCHIVE_FORMAT_MAX,
        _REGISTRY_ARCHIVE_FORMAT_INVALID = -EINVAL,
} RegistryArchiveFormat;

/* The format for a file name by its suffix (.tar, .tar.gz/.tgz, .tar.zst), or -EINVAL. */
RegistryArchiveFormat registry_archive_format_from_filename(const char *filename);

/*
 * Writes model name to fd as a tar archive: its manifest first (manifests/<host>/<ns>/<model>/<tag>), then
 * its blobs (blobs/sha256-<hex>). Blocks: call from a worker.
 */
int registry_export(RegistryStore *s, const RegistryName *name, int fd, RegistryArchiveFormat format,
                    registry_progress_fn progress, void *userdata, const atomic_bool *cancel, QdError *e);

/*
 * Reads an archive written by registry_export() (compression detected) from fd and adds its model, under
 * rename when not NULL. The manifest must come first; every other entry must be a regular file named
 * blobs/sha256-<hex> that the manifest references, of the size it declares and hashing to its name. Absolute
 * paths, "..", links, devices, unknown entries, oversized totals and digest mismatches fail with -EBADMSG or
 * -EMSGSIZE and a sentence, and leave the store unchanged. ret_name (optional) receives the model's name.
 */
int registry_import(RegistryStore *s, int fd, const RegistryName *rename, registry_progress_fn progress,
                    void *userdata, const atomic_bool *cancel, RegistryName *ret_name, QdError *e);
