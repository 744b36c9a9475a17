/* SPDX-License-Identifier: MIT */
/*
 * Archives of one model (libarchive): export to tar, tar.gz or tar.zst, and import.
 *
 * DESIGN: an archive holds the manifest first (manifests/<host>/<ns>/<model>/<tag>), then the blobs
 * (blobs/sha256-<hex>). Having the manifest first lets import check every later entry against it as it
 * streams by: a blob entry must be one the manifest names, of the size it declares (so the bytes written are
 * bounded by the manifest, which is itself bounded by import_max_bytes and the free disk space), and must
 * hash to its name. Blobs land in temporary files that become visible only after the whole archive checked
 * out, and the manifest is written last; any failure removes the temporaries, so the store is unchanged.
 */

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "registry-internal.h"

RegistryArchiveFormat registry_archive_format_from_filename(const char *filename) {
        if (!filename)
                return _REGISTRY_ARCHIVE_FORMAT_INVALID;
        if (endswith(filename, ".tar"))
                return REGISTRY_ARCHIVE_TAR;
        if (endswith(filename, ".tar.gz") || endswith(filename, ".tgz"))
                return REGISTRY_ARCHIVE_TAR_GZ;
        if (endswith(filename, ".tar.zst") || endswith(filename, ".tzst"))
                return REGISTRY_ARCHIVE_TAR_ZST;
        return _REGISTRY_ARCHIVE_FORMAT_INVALID;
}

static void archive_writep(struct archive **a) {
        if (*a)
                archive_write_free(*a);
}

static void archive_readp(struct archive **a) {
        if (*a)
                archive_read_free(*a);
}

static void archive_entryp(struct archive_entry **e) {
        if (*e)
                archive_entry_free(*e);
}

typedef struct Progress {
        registry_progress_fn fn;
        void *userdata;
        const char *digest;
        const char *status;
        uint64_t last;
} Progress;

static void report(Progress *p, RegistryProgressKind kind, uint64_t completed, uint64_t total, bool force) {
        if (!p->fn || (!force && now_ns() - p->last < 250000000ULL))
                return;
        p->last = now_ns();
        RegistryProgress ev = {.kind = kind,
                               .digest = p->digest,
                               .total = total,
                               .completed = completed,
                               .status = p->status};
        p->fn(&ev, p->userdata);
}

static int write_entry(struct archive *a, const char *path, uint64_t size, int fd, const void *data,
                       Progress *progress, const atomic_bool *cancel, QdError *e) {
        _cleanup_(archive_entryp) struct archive_entry *ent = archive_entry_new();
        const size_t bufsize = 1U << 20;
        _cleanup_free_ uint8_t *buf = NULL;

        if (!ent)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        archive_entry_set_pathname(ent, path);
        archive_entry_set_filetype(ent, AE_IFREG);
        archive_entry_set_perm(ent, 0644);
        archive_entry_set_size(ent, (la_int64_t)size);
        archive_entry_set_mtime(ent, time(NULL), 0);
        if (archive_write_header(a, ent) != ARCHIVE_OK)
                return qd_error_set(e, EIO, "Failed to write the archive: %s.", archive_error_string(a));
        if (fd < 0) {
                if (archive_write_data(a, data, size) != (la_ssize_t)size)
                        return qd_error_set(e, EIO, "Failed to write the archive: %s.",
                                            archive_error_string(a));
                return 0;
        }
        buf = malloc(bufsize);
        if (!buf)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        for (uint64_t off = 0; off < size;) {
                if (cancelled(cancel))
                        return qd_error_set(e, ECANCELED, "Cancelled.");
                ssize_t n = pread(fd, buf, (size_t)MIN((uint64_t)bufsize, size - off), (off_t)off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return qd_error_set(e, n < 0 ? errno : EBADMSG, "Failed to read blob for '%s'.",
                                            path);
                if (archive_write_data(a, buf, (size_t)n) != n)
                        return qd_error_set(e, EIO, "Failed to write the archive: %s.",
                                            archive_error_string(a));
                off += (uint64_t)n;
                report(progress, REGISTRY_PROGRESS_LAYER, off, size, off == size);
        }
        return 0;
}

int registry_export(RegistryStore *s, const RegistryName *name, int fd, RegistryArchiveFormat format,
                    registry_progress_fn progress, void *userdata, const atomic_bool *cancel, QdError *e) {
        Progress pr = {.fn = progress, .userdata = userdata, .status = "exporting"};
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_(archive_writep) struct archive *a = NULL;
        _cleanup_free_ char *raw = NULL, *rel = NULL, *mpath = NULL;
        int r;

        r = registry_store_show(s, name, &m, &raw, e);
        if (r < 0)
                return r;
        a = archive_write_new();
        if (!a)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        /* pax: no 8 GiB limit on entry sizes, unlike ustar. */
        r = archive_write_set_format_pax_restricted(a);
        switch (format) {
        case REGISTRY_ARCHIVE_TAR:
                break;
        case REGISTRY_ARCHIVE_TAR_GZ:
                r = r == ARCHIVE_OK ? archive_write_add_filter_gzip(a) : r;
                break;
        case REGISTRY_ARCHIVE_TAR_ZST:
                r = r == ARCHIVE_OK ? archive_write_add_filter_zstd(a) : r;
                break;
        case _REGISTRY_ARCHIVE_FORMAT_MAX:
        case _REGISTRY_ARCHIVE_FORMAT_INVALID:
                return qd_error_set(e, EINVAL, "Unknown archive format; use .tar, .tar.gz or .tar.zst.");
        }
        if (r != ARCHIVE_OK)
                return qd_error_set(e, EOPNOTSUPP, "This libarchive cannot write that format: %s.",
                                    archive_error_string(a));
        if (archive_write_open_fd(a, fd) != ARCHIVE_OK)
                return qd_error_set(e, EIO, "Failed to start the archive: %s.", archive_error_string(a));

        r = manifest_rel_path(name, &rel);
        if (r < 0)
                return qd_error_set(e, r, "Out of memory.");
        mpath = strdup_printf("manifests/%s", rel);
        if (!mpath)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        r = write_entry(a, mpath, strlen(raw), -1, raw, &pr, cancel, e);
        if (r < 0)
                return r;
        for (size_t i = 0; i <= m->n_layers; i++) {
                const RegistryLayer *l = i < m->n_layers ? &m->layers[i] : &m->config;
                bool dup = false;
                for (size_t j = 0; j < i && !dup; j++)
                        dup = streq(m->layers[j].digest, l->digest);
                if (dup)
                        continue;
                _cleanup_close_ int bfd = -EBADF;
                char path[REGISTRY_DIGEST_MAX + 8];
                r = registry_store_open_blob(s, l->digest, &bfd, e);
                if (r < 0)
                        return r;
                snprintf(path, sizeof(path), "blobs/sha256-%s", l->digest + 7);
                pr.digest = l->digest;
                report(&pr, REGISTRY_PROGRESS_LAYER, 0, l->size, true);
                r = write_entry(a, path, l->size, bfd, NULL, &pr, cancel, e);
                if (r < 0)
                        return r;
        }
        if (archive_write_close(a) != ARCHIVE_OK)
                return qd_error_set(e, EIO, "Failed to finish the archive: %s.", archive_error_string(a));
        pr.digest = NULL;
        report(&pr, REGISTRY_PROGRESS_DONE, 0, 0, true);
        return 0;
}

/* ---- import ---- */

typedef struct Pending {
        const RegistryLayer *layer;
        char tmp[32]; /* temporary file in blobs/, empty until the entry arrived */
} Pending;

static void pending_cleanup(RegistryStore *s, Pending *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (p[i].tmp[0])
                        (void)unlinkat(s->blobs_fd, p[i].tmp, 0);
}

static int parse_manifest_path(const char *path, RegistryName *ret, QdError *e) {
        const char *rest = startswith(path, "manifests/");
        char parts[4][REGISTRY_HOST_MAX + 1];
        size_t n = 0;

        if (!rest)
                return qd_error_set(e, EBADMSG, "The archive does not start with a model manifest.");
        for (const char *p = rest; n < 4;) {
                const char *slash = strchr(p, '/');
                size_t len = slash ? (size_t)(slash - p) : strlen(p);
                if (len == 0 || len > REGISTRY_HOST_MAX || (slash && n == 3) || (!slash && n < 3))
                        return qd_error_set(
                                e, EBADMSG,
                                "The archive's manifest path '%s' is not host/namespace/model/tag.", path);
                memcpy(parts[n], p, len);
                parts[n][len] = 0;
                n++;
                if (!slash)
                        break;
                p = slash + 1;
        }
        _cleanup_free_ char *full = strdup_printf("%s/%s/%s:%s", parts[0], parts[1], parts[2], parts[3]);
        if (!full)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        QdError ne = {};
        if (registry_name_parse(full, NULL, ret, &ne) < 0)
                return qd_error_set(e, EBADMSG,
                                    "The archive's manifest path '%s' is not a valid model name.", path);
        return 0;
}

static int check_entry_type(struct archive_entry *ent, const char *path, QdError *e) {
        if (path[0] == '/')
                return qd_error_set(e, EBADMSG, "The archive holds an absolute path '%s'; refusing it.",
                                    path);
        if (streq(path, "..") || startswith(path, "../") || strstr(path, "/../") || endswith(path, "/.."))
                return qd_error_set(e, EBADMSG, "The archive holds a path with '..' ('%s'); refusing it.",
                                    path);
        if (archive_entry_hardlink(ent) || archive_entry_symlink(ent) ||
            archive_entry_filetype(ent) == AE_IFLNK)
                return qd_error_set(e, EBADMSG, "The archive holds a link '%s'; refusing it.", path);
        if (archive_entry_filetype(ent) != AE_IFREG)
                return qd_error_set(e, EBADMSG,
                                    "The archive holds '%s', which is not a regular file; refusing it.",
                                    path);
        return 0;
}

static int read_blob_entry(RegistryStore *s, struct archive *a, Pending *p, Progress *progress,
                           const atomic_bool *cancel, QdError *e) {
        const size_t bufsize = 1U << 20;
        _cleanup_free_ uint8_t *buf = malloc(bufsize);
        char got[REGISTRY_DIGEST_MAX];
        uint64_t total = 0;
        Sha256 h;
        int r;

        if (!buf)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        _cleanup_close_ int fd = open_tmpfile(s->blobs_fd, p->tmp);
        if (fd < 0) {
                p->tmp[0] = 0;
                return qd_error_set(e, fd, "Failed to create a file in '%s/blobs': %s.", s->root,
                                    strerror(-fd));
        }
        r = sha256_init(&h);
        if (r < 0)
                return qd_error_set(e, r, "Failed to set up SHA-256.");
        for (;;) {
                if (cancelled(cancel)) {
                        r = qd_error_set(e, ECANCELED, "Cancelled.");
                        break;
                }
                la_ssize_t n = archive_read_data(a, buf, bufsize);
                if (n < 0) {
                        r = qd_error_set(e, EBADMSG, "The archive is damaged: %s.", archive_error_string(a));
                        break;
                }
                if (n == 0)
                        break;
                total += (uint64_t)n;
                if (total > p->layer->size) {
                        r = qd_error_set(e, EMSGSIZE,
                                         "Blob %s in the archive is larger than its manifest says.",
                                         p->layer->digest);
                        break;
                }
                r = sha256_update(&h, buf, (size_t)n);
                if (r >= 0)
                        r = write_full(fd, buf, (size_t)n);
                if (r < 0) {
                        r = qd_error_set(e, r, "Failed to write blob %s: %s.", p->layer->digest,
                                         strerror(-r));
                        break;
                }
                report(progress, REGISTRY_PROGRESS_LAYER, total, p->layer->size, total == p->layer->size);
        }
        if (r >= 0)
                r = sha256_final(&h, got);
        sha256_done(&h);
        if (r < 0)
                return r;
        if (total != p->layer->size)
                return qd_error_set(e, EBADMSG,
                                    "Blob %s in the archive has %ju bytes, its manifest says %ju.",
                                    p->layer->digest, (uintmax_t)total, (uintmax_t)p->layer->size);
        if (!streq(got, p->layer->digest))
                return qd_error_set(
                        e, EBADMSG,
                        "Blob %s in the archive is corrupt: its contents hash to %s. Nothing was imported.",
                        p->layer->digest, got);
        if (fsync(fd) < 0)
                return qd_error_set(e, errno, "Failed to sync blob %s: %s.", p->layer->digest,
                                    strerror(errno));
        return 0;
}

int registry_import(RegistryStore *s, int fd, const RegistryName *rename, registry_progress_fn progress,
                    void *userdata, const atomic_bool *cancel, RegistryName *ret_name, QdError *e) {
        Progress pr = {.fn = progress, .userdata = userdata, .status = "importing"};
        _cleanup_(archive_readp) struct archive *a = archive_read_new();
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *raw = NULL;
        _cleanup_free_ Pending *pending = NULL;
        _cleanup_close_ int lock = -EBADF;
        struct archive_entry *ent;
        RegistryName name;
        size_t n_pending = 0, raw_size = 0;
        int r;

        if (!a)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        archive_read_support_filter_all(a);
        archive_read_support_format_tar(a);
        if (archive_read_open_fd(a, fd, 64 * 1024) != ARCHIVE_OK)
                return qd_error_set(e, EBADMSG, "Not a model archive: %s.", archive_error_string(a));
        r = store_lock(s, false, &lock);
        if (r < 0)
                return qd_error_set(e, r, "Failed to lock the model store: %s.", strerror(-r));

        /* The manifest, first. */
        r = archive_read_next_header(a, &ent);
        if (r != ARCHIVE_OK)
                return qd_error_set(e, EBADMSG, "Not a model archive: %s.",
                                    r == ARCHIVE_EOF ? "it is empty" : archive_error_string(a));
        const char *path = archive_entry_pathname(ent);
        if (!path)
                return qd_error_set(e, EBADMSG, "The archive holds an entry without a name.");
        r = check_entry_type(ent, path, e);
        if (r < 0)
                return r;
        r = parse_manifest_path(path, &name, e);
        if (r < 0)
                return r;
        if (archive_entry_size(ent) > (la_int64_t)REGISTRY_MANIFEST_MAX)
                return qd_error_set(e, EMSGSIZE, "The archive's manifest is over %u bytes.",
                                    REGISTRY_MANIFEST_MAX);
        raw = malloc(REGISTRY_MANIFEST_MAX + 1);
        if (!raw)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        for (;;) {
                la_ssize_t k = archive_read_data(a, raw + raw_size, REGISTRY_MANIFEST_MAX + 1 - raw_size);
                if (k < 0)
                        return qd_error_set(e, EBADMSG, "The archive is damaged: %s.",
                                            archive_error_string(a));
                if (k == 0)
                        break;
                raw_size += (size_t)k;
                if (raw_size > REGISTRY_MANIFEST_MAX)
                        return qd_error_set(e, EMSGSIZE, "The archive's manifest is over %u bytes.",
                                            REGISTRY_MANIFEST_MAX);
        }
        QdError pe = {};
        r = registry_manifest_parse(raw, raw_size, &m, &pe);
        if (r < 0)
                return qd_error_set(e, r, "The archive's manifest is invalid: %s", pe.msg);
        if (rename)
                name = *rename;
        if (registry_store_has_model(s, &name))
                return qd_error_set(
                        e, EEXIST,
                        "Model '%s/%s/%s:%s' already exists; delete it or import under another name.",
                        name.host, name.namespace, name.model, name.tag);

        /* Bound what the archive may write before reading any of it. */
        uint64_t total = registry_manifest_total_size(m);
        if (total > s->config->import_max_bytes)
                return qd_error_set(e, EMSGSIZE,
                                    "The archive's model has %ju bytes, over the import limit of %ju.",
                                    (uintmax_t)total, (uintmax_t)s->config->import_max_bytes);
        struct statvfs vfs;
        if (fstatvfs(s->blobs_fd, &vfs) >= 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < total)
                return qd_error_set(e, ENOSPC, "The model needs %ju bytes, more than the free disk space.",
                                    (uintmax_t)total);

        pending = calloc(m->n_layers + 1, sizeof(Pending));
        if (!pending)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        for (size_t i = 0; i <= m->n_layers; i++) {
                const RegistryLayer *l = i < m->n_layers ? &m->layers[i] : &m->config;
                bool dup = false;
                for (size_t j = 0; j < n_pending && !dup; j++)
                        dup = streq(pending[j].layer->digest, l->digest);
                if (!dup)
                        pending[n_pending++].layer = l;
        }

        /* The blobs. */
        for (;;) {
                r = archive_read_next_header(a, &ent);
                if (r == ARCHIVE_EOF)
                        break;
                if (r != ARCHIVE_OK) {
                        r = qd_error_set(e, EBADMSG, "The archive is damaged: %s.", archive_error_string(a));
                        goto fail;
                }
                path = archive_entry_pathname(ent);
                if (!path) {
                        r = qd_error_set(e, EBADMSG, "The archive holds an entry without a name.");
                        goto fail;
                }
                r = check_entry_type(ent, path, e);
                if (r < 0)
                        goto fail;
                const char *hex = startswith(path, "blobs/sha256-");
                char digest[REGISTRY_DIGEST_MAX];
                snprintf(digest, sizeof(digest), "sha256:%s", hex ? hex : "");
                if (!hex || !registry_digest_is_valid(digest)) {
                        r = qd_error_set(e, EBADMSG, "The archive holds an unexpected entry '%s'.", path);
                        goto fail;
                }
                Pending *p = NULL;
                for (size_t j = 0; j < n_pending && !p; j++)
                        if (streq(pending[j].layer->digest, digest))
                                p = &pending[j];
                if (!p) {
                        r = qd_error_set(e, EBADMSG,
                                         "The archive holds blob %s, which its manifest does not use.",
                                         digest);
                        goto fail;
                }
                if (p->tmp[0]) {
                        r = qd_error_set(e, EBADMSG, "The archive holds blob %s twice.", digest);
                        goto fail;
                }
                if (archive_entry_size_is_set(ent) && (uint64_t)archive_entry_size(ent) != p->layer->size) {
                        r = qd_error_set(
                                e, archive_entry_size(ent) > (la_int64_t)p->layer->size ? EMSGSIZE : EBADMSG,
                                "Blob %s in the archive has %jd bytes, its manifest says %ju.", digest,
                                (intmax_t)archive_entry_size(ent), (uintmax_t)p->layer->size);
                        goto fail;
                }
                pr.digest = p->layer->digest;
                report(&pr, REGISTRY_PROGRESS_LAYER, 0, p->layer->size, true);
                r = read_blob_entry(s, a, p, &pr, cancel, e);
                if (r < 0)
                        goto fail;
        }

        /* Every blob must have come with the archive or be in the store already. */
        for (size_t j = 0; j < n_pending; j++)
                if (!pending[j].tmp[0] &&
                    !store_has_blob(s, pending[j].layer->digest, pending[j].layer->size)) {
                        r = qd_error_set(e, EBADMSG, "The archive lacks blob %s of its model.",
                                         pending[j].layer->digest);
                        goto fail;
                }
        for (size_t j = 0; j < n_pending; j++) {
                if (!pending[j].tmp[0])
                        continue;
                _cleanup_close_ int bfd = openat(s->blobs_fd, pending[j].tmp, O_RDONLY | O_CLOEXEC);
                r = bfd < 0 ? -errno : store_commit_blob(s, bfd, pending[j].tmp, pending[j].layer->digest);
                if (r < 0) {
                        r = qd_error_set(e, r, "Failed to store blob %s: %s.", pending[j].layer->digest,
                                         strerror(-r));
                        goto fail;
                }
                pending[j].tmp[0] = 0;
        }
        r = registry_store_write_manifest(s, &name, raw, raw_size, e);
        if (r < 0)
                goto fail;
        if (ret_name)
                *ret_name = name;
        pr.digest = NULL;
        report(&pr, REGISTRY_PROGRESS_DONE, 0, 0, true);
        return 0;
fail:
        pending_cleanup(s, pending, n_pending);
        return r;
}
