/* SPDX-License-Identifier: MIT */
/*
 * The model store: manifests by name, content-addressed blobs, and the operations on them (list, show, copy,
 * delete, reference counts, prune, adding blobs and models).
 *
 * DESIGN
 * - The manifests are the only record of which blob belongs to which model: reference counts are computed by
 *   reading them, so there is no second index that a crash could leave out of step.
 * - A blob appears under its digest only after it was hashed and synced (store_commit_blob()); readers never
 *   see a half-written or unverified blob.
 * - Writers that add blobs before their manifest exists (pull, import, create) hold a shared flock on
 *   models/.lock for their whole run; prune and the blob removal of delete take it exclusively and without
 *   waiting, so they never remove a blob that a running pull has fetched but not yet referenced. flock works
 *   between threads (each opens its own descriptor) and between processes alike.
 */

#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>

#include "registry-internal.h"

static int mkdir_p(const char *path) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = strchr(p + 1, '/');; s = strchr(s + 1, '/')) {
                if (s)
                        *s = 0;
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        return -errno;
                if (!s)
                        break;
                *s = '/';
        }
        return 0;
}

int registry_store_open(RegistryStore **ret, const char *root, const RegistryConfig *c, QdError *e) {
        _cleanup_(registry_store_freep) RegistryStore *s = calloc(1, sizeof(RegistryStore));
        int r;

        if (!s)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        s->root_fd = s->manifests_fd = s->blobs_fd = -EBADF;
        registry_config_init(&s->default_config);
        s->config = c ? c : &s->default_config;
        s->root = strdup(root);
        if (!s->root)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        r = mkdir_p(root);
        if (r < 0)
                return qd_error_set(e, r, "Failed to create the model store '%s': %s.", root, strerror(-r));
        s->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->root_fd < 0)
                return qd_error_set(e, errno, "Failed to open the model store '%s': %s.", root,
                                    strerror(errno));
        const char *subdirs[] = {"manifests", "blobs"};
        int *fds[] = {&s->manifests_fd, &s->blobs_fd};
        for (size_t i = 0; i < ELEMENTSOF(subdirs); i++) {
                if (mkdirat(s->root_fd, subdirs[i], 0755) < 0 && errno != EEXIST)
                        return qd_error_set(e, errno, "Failed to create '%s/%s': %s.", root, subdirs[i],
                                            strerror(errno));
                *fds[i] = openat(s->root_fd, subdirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
                if (*fds[i] < 0)
                        return qd_error_set(e, errno, "Failed to open '%s/%s': %s.", root, subdirs[i],
                                            strerror(errno));
        }
        *ret = TAKE_PTR(s);
        return 0;
}

RegistryStore *registry_store_free(RegistryStore *s) {
        if (!s)
                return NULL;
        safe_close(s->blobs_fd);
        safe_close(s->manifests_fd);
        safe_close(s->root_fd);
        registry_config_done(&s->default_config);
        free(s->root);
        free(s);
        return NULL;
}

const char *registry_store_root(const RegistryStore *s) {
        return s->root;
}

const RegistryConfig *registry_store_config(const RegistryStore *s) {
        return s->config;
}

int store_lock(RegistryStore *s, bool exclusive, int *ret) {
        _cleanup_close_ int fd =
                openat(s->root_fd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);

        if (fd < 0)
                return -errno;
        if (flock(fd, exclusive ? LOCK_EX | LOCK_NB : LOCK_SH) < 0)
                return errno == EWOULDBLOCK ? -EBUSY : -errno;
        *ret = TAKE_FD(fd);
        return 0;
}

/* ---- walking the manifests ---- */

typedef int (*manifest_visit_fn)(const RegistryName *name, const RegistryManifest *m, const char *raw,
                                 size_t raw_size, const struct stat *st, void *userdata);

static int list_dir(int dir_fd, const char *path, char ***ret) {
        int fd = path ? openat(dir_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
                      : openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        DIR *d = fdopendir(fd);
        if (!d) {
                safe_close(fd);
                return -errno;
        }
        char **l = calloc(1, sizeof(char *));
        size_t n = 0;
        struct dirent *de;
        while (l && (de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                char **m = realloc(l, (n + 2) * sizeof(char *));
                if (!m) {
                        l = strv_free(l);
                        break;
                }
                l = m;
                l[n] = strdup(de->d_name);
                l[++n] = NULL;
                if (!l[n - 1])
                        l = strv_free(l);
        }
        closedir(d);
        if (!l)
                return -ENOMEM;
        *ret = l;
        return 0;
}

static int walk_manifests(RegistryStore *s, manifest_visit_fn visit, void *userdata) {
        _cleanup_strv_free_ char **hosts = NULL;
        int r = list_dir(s->manifests_fd, NULL, &hosts);
        if (r < 0)
                return r;
        for (char **h = hosts; *h; h++) {
                _cleanup_strv_free_ char **nss = NULL;
                if (list_dir(s->manifests_fd, *h, &nss) < 0)
                        continue;
                for (char **ns = nss; *ns; ns++) {
                        _cleanup_free_ char *p1 = strdup_printf("%s/%s", *h, *ns);
                        _cleanup_strv_free_ char **models = NULL;
                        if (!p1)
                                return -ENOMEM;
                        if (list_dir(s->manifests_fd, p1, &models) < 0)
                                continue;
                        for (char **mo = models; *mo; mo++) {
                                _cleanup_free_ char *p2 = strdup_printf("%s/%s", p1, *mo);
                                _cleanup_strv_free_ char **tags = NULL;
                                if (!p2)
                                        return -ENOMEM;
                                if (list_dir(s->manifests_fd, p2, &tags) < 0)
                                        continue;
                                for (char **t = tags; *t; t++) {
                                        _cleanup_free_ char *full =
                                                strdup_printf("%s/%s/%s:%s", *h, *ns, *mo, *t);
                                        _cleanup_free_ char *rel = strdup_printf("%s/%s", p2, *t);
                                        _cleanup_free_ char *raw = NULL;
                                        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
                                        RegistryName name;
                                        struct stat st;
                                        size_t size;
                                        if (!full || !rel)
                                                return -ENOMEM;
                                        /* Entries that are no valid name or manifest are not ours: skip. */
                                        if (registry_name_parse(full, NULL, &name, NULL) < 0)
                                                continue;
                                        if (fstatat(s->manifests_fd, rel, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
                                            !S_ISREG(st.st_mode))
                                                continue;
                                        if (read_file_at(s->manifests_fd, rel, REGISTRY_MANIFEST_MAX, &raw,
                                                         &size) < 0)
                                                continue;
                                        if (registry_manifest_parse(raw, size, &m, NULL) < 0)
                                                continue;
                                        r = visit(&name, m, raw, size, &st, userdata);
                                        if (r != 0)
                                                return r;
                                }
                        }
                }
        }
        return 0;
}

/* ---- list ---- */

typedef struct ListState {
        RegistryModelInfo *items;
        size_t n;
} ListState;

static int list_visit(const RegistryName *name, const RegistryManifest *m, const char *raw, size_t raw_size,
                      const struct stat *st, void *userdata) {
        ListState *ls = userdata;
        RegistryModelInfo *items = realloc(ls->items, (ls->n + 1) * sizeof(*items));

        if (!items)
                return -ENOMEM;
        ls->items = items;
        RegistryModelInfo *i = &items[ls->n];
        *i = (RegistryModelInfo){
                .name = *name, .size = registry_manifest_total_size(m), .modified_s = st->st_mtim.tv_sec};
        int r = sha256_data(raw, raw_size, i->digest);
        if (r < 0)
                return r;
        ls->n++;
        return 0;
}

static int info_cmp(const void *a, const void *b) {
        const RegistryName *x = &((const RegistryModelInfo *)a)->name,
                           *y = &((const RegistryModelInfo *)b)->name;
        int c = strcmp(x->host, y->host);
        if (c == 0)
                c = strcmp(x->namespace, y->namespace);
        if (c == 0)
                c = strcmp(x->model, y->model);
        if (c == 0)
                c = strcmp(x->tag, y->tag);
        return c;
}

int registry_store_list(RegistryStore *s, RegistryModelInfo **ret, size_t *ret_n, QdError *e) {
        ListState ls = {};
        int r = walk_manifests(s, list_visit, &ls);

        if (r < 0) {
                free(ls.items);
                return qd_error_set(e, r, "Failed to list the models in '%s': %s.", s->root, strerror(-r));
        }
        if (ls.n > 1)
                qsort(ls.items, ls.n, sizeof(*ls.items), info_cmp);
        *ret = ls.items;
        *ret_n = ls.n;
        return 0;
}

/* ---- show, copy, delete ---- */

bool store_has_blob(RegistryStore *s, const char *digest, uint64_t size) {
        char fn[REGISTRY_DIGEST_MAX];
        struct stat st;

        if (!registry_digest_is_valid(digest))
                return false;
        blob_file_name(digest, fn);
        if (fstatat(s->blobs_fd, fn, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                return false;
        return size == UINT64_MAX || (uint64_t)st.st_size == size;
}

static int read_manifest(RegistryStore *s, const RegistryName *name, RegistryManifest **ret, char **ret_raw,
                         size_t *ret_size, QdError *e) {
        _cleanup_free_ char *rel = NULL, *raw = NULL, *pretty = NULL;
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        size_t size;
        int r;

        r = manifest_rel_path(name, &rel);
        if (r < 0)
                return qd_error_set(e, r, "Out of memory.");
        r = registry_name_format_short(name, s->config, &pretty);
        if (r < 0)
                return qd_error_set(e, r, "Out of memory.");
        r = read_file_at(s->manifests_fd, rel, REGISTRY_MANIFEST_MAX, &raw, &size);
        if (r == -ENOENT || r == -ENOTDIR)
                return qd_error_set(e, ENOENT, "Model '%s' not found; 'qctl list' shows the local models.", pretty);
        if (r == -EMSGSIZE)
                return qd_error_set(e, EBADMSG, "The manifest of model '%s' is corrupt (too large).",
                                    pretty);
        if (r < 0)
                return qd_error_set(e, r, "Failed to read the manifest of model '%s': %s.", pretty,
                                    strerror(-r));
        QdError pe = {};
        r = registry_manifest_parse(raw, size, &m, &pe);
        if (r < 0)
                return qd_error_set(e, EBADMSG, "The manifest of model '%s' is corrupt: %s", pretty, pe.msg);
        *ret = TAKE_PTR(m);
        if (ret_raw)
                *ret_raw = TAKE_PTR(raw);
        if (ret_size)
                *ret_size = size;
        return 0;
}

static int check_blobs(RegistryStore *s, const RegistryName *name, const RegistryManifest *m, QdError *e) {
        for (size_t i = 0; i <= m->n_layers; i++) {
                const RegistryLayer *l = i < m->n_layers ? &m->layers[i] : &m->config;
                char fn[REGISTRY_DIGEST_MAX];
                struct stat st;

                blob_file_name(l->digest, fn);
                if (fstatat(s->blobs_fd, fn, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        return qd_error_set(e, ENOENT,
                                            "Model '%s/%s/%s:%s' is incomplete: blob %s is missing; pull or "
                                            "create it again.",
                                            name->host, name->namespace, name->model, name->tag, l->digest);
                if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != l->size)
                        return qd_error_set(e, EBADMSG,
                                            "Model '%s/%s/%s:%s' is damaged: blob %s has %jd bytes, the "
                                            "manifest says %ju.",
                                            name->host, name->namespace, name->model, name->tag, l->digest,
                                            (intmax_t)st.st_size, (uintmax_t)l->size);
        }
        return 0;
}

int registry_store_show(RegistryStore *s, const RegistryName *name, RegistryManifest **ret, char **ret_raw,
                        QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *raw = NULL;

        int r = read_manifest(s, name, &m, &raw, NULL, e);
        if (r < 0)
                return r;
        r = check_blobs(s, name, m, e);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        if (ret_raw)
                *ret_raw = TAKE_PTR(raw);
        return 0;
}

int registry_store_model_digest(RegistryStore *s, const RegistryName *name, char ret[REGISTRY_DIGEST_MAX],
                                QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *raw = NULL;
        size_t size;

        int r = read_manifest(s, name, &m, &raw, &size, e);
        if (r < 0)
                return r;
        r = sha256_data(raw, size, ret);
        if (r < 0)
                return qd_error_set(e, r, "Failed to hash the manifest: %s", strerror(-r));
        return 0;
}

bool registry_store_has_model(RegistryStore *s, const RegistryName *name) {
        _cleanup_free_ char *rel = NULL;
        struct stat st;

        if (manifest_rel_path(name, &rel) < 0)
                return false;
        return fstatat(s->manifests_fd, rel, &st, AT_SYMLINK_NOFOLLOW) >= 0 && S_ISREG(st.st_mode);
}

int registry_store_write_manifest(RegistryStore *s, const RegistryName *name, const void *raw, size_t size,
                                  QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *rel = NULL;
        int r;

        r = registry_manifest_parse(raw, size, &m, e);
        if (r < 0)
                return r;
        r = check_blobs(s, name, m, e);
        if (r < 0)
                return r;
        r = manifest_rel_path(name, &rel);
        if (r < 0)
                return qd_error_set(e, r, "Out of memory.");
        r = mkdir_parents_at(s->manifests_fd, rel);
        if (r >= 0)
                r = write_file_atomic(s->manifests_fd, rel, raw, size);
        if (r < 0)
                return qd_error_set(e, r, "Failed to write the manifest of '%s/%s/%s:%s': %s.", name->host,
                                    name->namespace, name->model, name->tag, strerror(-r));
        return 0;
}

int registry_store_copy(RegistryStore *s, const RegistryName *src, const RegistryName *dst, bool replace,
                        QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *raw = NULL;
        size_t size;

        int r = read_manifest(s, src, &m, &raw, &size, e);
        if (r < 0)
                return r;
        if (!replace && registry_store_has_model(s, dst))
                return qd_error_set(e, EEXIST, "Model '%s/%s/%s:%s' already exists.", dst->host,
                                    dst->namespace, dst->model, dst->tag);
        return registry_store_write_manifest(s, dst, raw, size, e);
}

typedef struct RefState {
        const char *digest;
        unsigned refs;
        const RegistryName *except;
        char *repo; /* for store_find_repo_with_blob() */
} RefState;

static bool manifest_uses(const RegistryManifest *m, const char *digest) {
        if (streq(m->config.digest, digest))
                return true;
        for (size_t i = 0; i < m->n_layers; i++)
                if (streq(m->layers[i].digest, digest))
                        return true;
        return false;
}

static int refs_visit(const RegistryName *name, const RegistryManifest *m, const char *raw, size_t raw_size,
                      const struct stat *st, void *userdata) {
        RefState *rs = userdata;

        if (manifest_uses(m, rs->digest))
                rs->refs++;
        return 0;
}

int registry_store_blob_refs(RegistryStore *s, const char *digest, unsigned *ret, QdError *e) {
        RefState rs = {.digest = digest};

        if (!registry_digest_is_valid(digest))
                return qd_error_set(e, EINVAL, "'%s' is not a sha256 digest.", strna(digest));
        int r = walk_manifests(s, refs_visit, &rs);
        if (r < 0)
                return qd_error_set(e, r, "Failed to read the manifests: %s.", strerror(-r));
        *ret = rs.refs;
        return 0;
}

static int repo_visit(const RegistryName *name, const RegistryManifest *m, const char *raw, size_t raw_size,
                      const struct stat *st, void *userdata) {
        RefState *rs = userdata;

        if (!streq(name->host, rs->except->host) ||
            (streq(name->namespace, rs->except->namespace) && streq(name->model, rs->except->model)))
                return 0;
        if (!manifest_uses(m, rs->digest))
                return 0;
        rs->repo = strdup_printf("%s/%s", name->namespace, name->model);
        return rs->repo ? 1 : -ENOMEM;
}

int store_find_repo_with_blob(RegistryStore *s, const RegistryName *except, const char *digest, char **ret) {
        RefState rs = {.digest = digest, .except = except};
        int r = walk_manifests(s, repo_visit, &rs);

        if (r < 0)
                return r;
        if (!rs.repo)
                return -ENOENT;
        *ret = rs.repo;
        return 0;
}

/* Set of digests referenced by any manifest, for prune and delete. */
typedef struct DigestSet {
        char (*d)[REGISTRY_DIGEST_MAX];
        size_t n;
} DigestSet;

static bool digest_set_has(const DigestSet *ds, const char *digest) {
        for (size_t i = 0; i < ds->n; i++)
                if (streq(ds->d[i], digest))
                        return true;
        return false;
}

static int digest_set_add(DigestSet *ds, const char *digest) {
        if (digest_set_has(ds, digest))
                return 0;
        void *p = realloc(ds->d, (ds->n + 1) * sizeof(*ds->d));
        if (!p)
                return -ENOMEM;
        ds->d = p;
        snprintf(ds->d[ds->n++], REGISTRY_DIGEST_MAX, "%s", digest);
        return 0;
}

static int used_visit(const RegistryName *name, const RegistryManifest *m, const char *raw, size_t raw_size,
                      const struct stat *st, void *userdata) {
        int r = digest_set_add(userdata, m->config.digest);
        for (size_t i = 0; r >= 0 && i < m->n_layers; i++)
                r = digest_set_add(userdata, m->layers[i].digest);
        return r < 0 ? r : 0;
}

int registry_store_delete(RegistryStore *s, const RegistryName *name, QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *rel = NULL;
        _cleanup_close_ int lock = -EBADF;
        DigestSet used = {};
        int r;

        r = read_manifest(s, name, &m, NULL, NULL, e);
        if (r == -EBADMSG) {
                /* A corrupt manifest can still be deleted; its blobs are left to prune. */
                qd_error_clear(e);
        } else if (r < 0)
                return r;
        r = manifest_rel_path(name, &rel);
        if (r < 0)
                return qd_error_set(e, r, "Out of memory.");
        if (unlinkat(s->manifests_fd, rel, 0) < 0)
                return qd_error_set(e, errno, "Failed to delete model '%s/%s/%s:%s': %s.", name->host,
                                    name->namespace, name->model, name->tag, strerror(errno));
        (void)fsync(s->manifests_fd);
        /* Remove the directories the manifest leaves empty; rmdir fails harmlessly on the others. */
        for (char *slash = strrchr(rel, '/'); slash; slash = strrchr(rel, '/')) {
                *slash = 0;
                if (unlinkat(s->manifests_fd, rel, AT_REMOVEDIR) < 0)
                        break;
        }
        if (!m)
                return 0;

        /* Blobs are removed only when no pull is running; else prune collects them later. */
        if (store_lock(s, true, &lock) < 0)
                return 0;
        r = walk_manifests(s, used_visit, &used);
        if (r < 0) {
                free(used.d);
                return 0;
        }
        for (size_t i = 0; i <= m->n_layers; i++) {
                const char *d = i < m->n_layers ? m->layers[i].digest : m->config.digest;
                char fn[REGISTRY_DIGEST_MAX];
                if (digest_set_has(&used, d))
                        continue;
                blob_file_name(d, fn);
                (void)unlinkat(s->blobs_fd, fn, 0);
        }
        free(used.d);
        return 0;
}

/* ---- prune ---- */

static bool is_hex64(const char *s) {
        for (size_t i = 0; i < 64; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

int registry_store_prune(RegistryStore *s, uint64_t grace_s, RegistryPruneStats *stats, QdError *e) {
        _cleanup_close_ int lock = -EBADF;
        RegistryPruneStats st = {};
        DigestSet used = {};
        int r;

        r = store_lock(s, true, &lock);
        if (r == -EBUSY) {
                /* A pull, create or import is running: prune next time. */
                if (stats)
                        *stats = st;
                return 0;
        }
        if (r < 0)
                return qd_error_set(e, r, "Failed to lock the model store: %s.", strerror(-r));
        r = walk_manifests(s, used_visit, &used);
        if (r < 0) {
                free(used.d);
                return qd_error_set(e, r, "Failed to read the manifests: %s.", strerror(-r));
        }

        /* list_dir() skips dot files; temporaries are handled in a second pass below. */
        DIR *d = fdopendir(openat(s->blobs_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!d) {
                free(used.d);
                return qd_error_set(e, errno, "Failed to read '%s/blobs': %s.", s->root, strerror(errno));
        }
        time_t now = time(NULL);
        struct dirent *de;
        while ((de = readdir(d))) {
                const char *n = de->d_name, *hex = startswith(n, "sha256-");
                struct stat sb;
                bool partial = false;

                if (streq(n, ".") || streq(n, ".."))
                        continue;
                if (fstatat(s->blobs_fd, n, &sb, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(sb.st_mode))
                        continue;
                if ((uint64_t)(now - sb.st_mtim.tv_sec) < grace_s && sb.st_mtim.tv_sec <= now)
                        continue;
                if (startswith(n, ".tmp-"))
                        partial = true;
                else if (hex && strlen(hex) >= 64 && is_hex64(hex)) {
                        if (streq(hex + 64, "-partial") || streq(hex + 64, "-partial.state"))
                                partial = true;
                        else if (hex[64] != 0)
                                continue;
                        else {
                                char digest[REGISTRY_DIGEST_MAX];
                                snprintf(digest, sizeof(digest), "sha256:%s", hex);
                                if (digest_set_has(&used, digest))
                                        continue;
                        }
                } else
                        continue; /* not ours */
                if (unlinkat(s->blobs_fd, n, 0) < 0)
                        continue;
                st.bytes_freed += (uint64_t)sb.st_size;
                if (partial)
                        st.partials_removed++;
                else
                        st.blobs_removed++;
        }
        closedir(d);
        free(used.d);
        (void)fsync(s->blobs_fd);
        if (stats)
                *stats = st;
        return 0;
}

/* ---- blobs ---- */

int registry_store_open_blob(RegistryStore *s, const char *digest, int *ret, QdError *e) {
        char fn[REGISTRY_DIGEST_MAX];

        if (!registry_digest_is_valid(digest))
                return qd_error_set(e, EINVAL, "'%s' is not a sha256 digest.", strna(digest));
        blob_file_name(digest, fn);
        int fd = openat(s->blobs_fd, fn, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return qd_error_set(e, errno, "Blob %s is missing: %s.", digest, strerror(errno));
        *ret = fd;
        return 0;
}

int registry_store_blob_path(RegistryStore *s, const char *digest, char **ret) {
        if (!registry_digest_is_valid(digest))
                return -EINVAL;
        char *p = strdup_printf("%s/blobs/sha256-%s", s->root, digest + 7);
        if (!p)
                return -ENOMEM;
        *ret = p;
        return 0;
}

int registry_store_verify(RegistryStore *s, const RegistryName *name, QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        int r = registry_store_show(s, name, &m, NULL, e);

        if (r < 0)
                return r;
        for (size_t i = 0; i <= m->n_layers; i++) {
                const RegistryLayer *l = i < m->n_layers ? &m->layers[i] : &m->config;
                _cleanup_close_ int fd = -EBADF;
                char got[REGISTRY_DIGEST_MAX];
                r = registry_store_open_blob(s, l->digest, &fd, e);
                if (r < 0)
                        return r;
                r = sha256_fd(fd, NULL, got, NULL);
                if (r < 0)
                        return qd_error_set(e, r, "Failed to read blob %s: %s.", l->digest, strerror(-r));
                if (!streq(got, l->digest))
                        return qd_error_set(e, EBADMSG, "Blob %s is damaged: its contents hash to %s.",
                                            l->digest, got);
        }
        return 0;
}

int store_commit_blob(RegistryStore *s, int fd, const char *tmp_name, const char *digest) {
        char fn[REGISTRY_DIGEST_MAX];

        blob_file_name(digest, fn);
        if (store_has_blob(s, digest, UINT64_MAX)) {
                /* Same digest, same bytes: keep the existing inode, which readers may have mapped. */
                (void)unlinkat(s->blobs_fd, tmp_name, 0);
                return 0;
        }
        if (fsync(fd) < 0)
                return -errno;
        if (renameat(s->blobs_fd, tmp_name, s->blobs_fd, fn) < 0)
                return -errno;
        if (fsync(s->blobs_fd) < 0)
                return -errno;
        return 0;
}

/* registry_store_add_blob() with LAYER progress events (digest NULL: it is known only at the end). */
static int add_blob(RegistryStore *s, int fd, const void *data, size_t size, const atomic_bool *cancel,
                    registry_progress_fn progress, void *userdata, char ret_digest[REGISTRY_DIGEST_MAX],
                    uint64_t *ret_size, QdError *e) {
        const size_t bufsize = 1U << 20;
        struct stat st;
        uint64_t expected = fd >= 0 && fstat(fd, &st) >= 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0,
                 last_report = 0;
        _cleanup_free_ uint8_t *buf = NULL;
        char tmp[32], digest[REGISTRY_DIGEST_MAX];
        uint64_t total = 0;
        Sha256 h;
        int r;

        _cleanup_close_ int out = open_tmpfile(s->blobs_fd, tmp);
        if (out < 0)
                return qd_error_set(e, out, "Failed to create a file in '%s/blobs': %s.", s->root,
                                    strerror(-out));
        r = sha256_init(&h);
        if (r < 0) {
                (void)unlinkat(s->blobs_fd, tmp, 0);
                return qd_error_set(e, r, "Failed to set up SHA-256.");
        }
        if (fd < 0) {
                r = sha256_update(&h, data, size);
                if (r >= 0)
                        r = write_full(out, data, size);
                total = size;
        } else {
                buf = malloc(bufsize);
                r = buf ? 0 : -ENOMEM;
                while (r >= 0) {
                        if (cancelled(cancel)) {
                                r = -ECANCELED;
                                break;
                        }
                        ssize_t n = read(fd, buf, bufsize);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                r = -errno;
                                break;
                        }
                        if (n == 0)
                                break;
                        r = sha256_update(&h, buf, (size_t)n);
                        if (r >= 0)
                                r = write_full(out, buf, (size_t)n);
                        total += (uint64_t)n;
                        if (progress && now_ns() - last_report > 250000000ULL) {
                                RegistryProgress p = {.kind = REGISTRY_PROGRESS_LAYER,
                                                      .total = MAX(expected, total),
                                                      .completed = total,
                                                      .status = "copying model data"};
                                progress(&p, userdata);
                                last_report = now_ns();
                        }
                }
        }
        if (r >= 0)
                r = sha256_final(&h, digest);
        sha256_done(&h);
        if (r >= 0)
                r = store_commit_blob(s, out, tmp, digest);
        if (r < 0) {
                (void)unlinkat(s->blobs_fd, tmp, 0);
                if (r == -ECANCELED)
                        return qd_error_set(e, r, "Cancelled.");
                return qd_error_set(e, r, "Failed to store a blob: %s.", strerror(-r));
        }
        memcpy(ret_digest, digest, REGISTRY_DIGEST_MAX);
        if (ret_size)
                *ret_size = total;
        if (progress) {
                RegistryProgress p = {.kind = REGISTRY_PROGRESS_LAYER,
                                      .digest = digest,
                                      .total = total,
                                      .completed = total,
                                      .status = "copying model data"};
                progress(&p, userdata);
        }
        return 0;
}

int registry_store_add_blob(RegistryStore *s, int fd, const void *data, size_t size,
                            const atomic_bool *cancel, char ret_digest[REGISTRY_DIGEST_MAX],
                            uint64_t *ret_size, QdError *e) {
        return add_blob(s, fd, data, size, cancel, NULL, NULL, ret_digest, ret_size, e);
}

/* ---- create ---- */

static int make_config_blob(RegistryStore *s, const RegistryLayer *layers, size_t n, const char *extra,
                            RegistryLayer *ret, QdError *e) {
        json_object *root = NULL, *rootfs, *ids;
        int r;

        if (extra) {
                root = json_tokener_parse(extra);
                if (!root || !json_object_is_type(root, json_type_object)) {
                        json_object_put(root);
                        return qd_error_set(e, EINVAL, "The model config must be a JSON object.");
                }
        } else
                root = json_object_new_object();
        rootfs = json_object_new_object();
        ids = json_object_new_array();
        if (!root || !rootfs || !ids) {
                json_object_put(root);
                json_object_put(rootfs);
                json_object_put(ids);
                return qd_error_set(e, ENOMEM, "Out of memory.");
        }
        for (size_t i = 0; i < n; i++)
                json_object_array_add(ids, json_object_new_string(layers[i].digest));
        json_object_object_add(rootfs, "type", json_object_new_string("layers"));
        json_object_object_add(rootfs, "diff_ids", ids);
        if (!json_object_object_get_ex(root, "model_format", NULL))
                json_object_object_add(root, "model_format", json_object_new_string("gguf"));
        json_object_object_add(root, "rootfs", rootfs);
        const char *txt = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
                                                                       JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!txt) {
                json_object_put(root);
                return qd_error_set(e, ENOMEM, "Out of memory.");
        }
        r = registry_store_add_blob(s, -1, txt, strlen(txt), NULL, ret->digest, &ret->size, e);
        json_object_put(root);
        if (r < 0)
                return r;
        ret->media_type = (char *)REGISTRY_MEDIA_DOCKER_CONFIG;
        return 0;
}

int registry_store_create(RegistryStore *s, const RegistryName *name, const RegistryCreateLayer *layers,
                          size_t n_layers, const char *config_extra, registry_progress_fn progress,
                          void *userdata, const atomic_bool *cancel, QdError *e) {
        _cleanup_free_ RegistryLayer *ls = calloc(MAX(n_layers, (size_t)1), sizeof(RegistryLayer));
        _cleanup_free_ char *raw = NULL;
        _cleanup_close_ int lock = -EBADF;
        int r;

        if (!ls)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        r = store_lock(s, false, &lock);
        if (r < 0)
                return qd_error_set(e, r, "Failed to lock the model store: %s.", strerror(-r));
        for (size_t i = 0; i < n_layers; i++) {
                if (!layers[i].media_type || !startswith(layers[i].media_type, "application/"))
                        return qd_error_set(e, EINVAL, "Layer %zu has no valid media type.", i);
                r = add_blob(s, layers[i].fd, layers[i].data, layers[i].size, cancel, progress, userdata,
                             ls[i].digest, &ls[i].size, e);
                if (r < 0)
                        return r;
                ls[i].media_type = (char *)layers[i].media_type;
        }
        RegistryManifest m = {
                .media_type = (char *)REGISTRY_MEDIA_DOCKER_MANIFEST, .layers = ls, .n_layers = n_layers};
        r = make_config_blob(s, ls, n_layers, config_extra, &m.config, e);
        if (r < 0)
                return r;
        r = registry_manifest_format(&m, &raw);
        if (r < 0)
                return qd_error_set(e, r, "Out of memory.");
        r = registry_store_write_manifest(s, name, raw, strlen(raw), e);
        if (r < 0)
                return r;
        if (progress) {
                RegistryProgress p = {.kind = REGISTRY_PROGRESS_DONE, .status = "success"};
                progress(&p, userdata);
        }
        return 0;
}

int registry_store_resolve(RegistryStore *s, const char *name, RegistryName *ret_name, char **ret_model_path,
                           QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        RegistryName n;
        int r;

        r = registry_name_parse(name, s->config, &n, e);
        if (r < 0)
                return r;
        r = registry_store_show(s, &n, &m, NULL, e);
        if (r < 0)
                return r;
        if (ret_model_path) {
                const RegistryLayer *l = registry_manifest_find_layer(m, REGISTRY_MEDIA_MODEL);
                if (!l)
                        return qd_error_set(e, EBADMSG, "Model '%s' has no model layer.", name);
                r = registry_store_blob_path(s, l->digest, ret_model_path);
                if (r < 0)
                        return qd_error_set(e, r, "Out of memory.");
        }
        if (ret_name)
                *ret_name = n;
        return 0;
}
