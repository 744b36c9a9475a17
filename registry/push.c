/* SPDX-License-Identifier: MIT */
/*
 * Push: every blob the registry lacks, then the manifest.
 *
 * DESIGN: a HEAD per blob avoids re-uploading what the registry has. A blob that another local repository of
 * the same host uses is first offered as a cross-repository mount (POST …/uploads/?mount=&from=); a registry
 * that declines answers 202 with an upload session, which we then use. Blobs up to push_chunk_size go in one
 * PUT; larger ones in PATCH chunks with Content-Range, each answered with the session's next Location, and a
 * closing PUT with the digest. The manifest goes last, as stored (its digest is the model's identity).
 */

#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>

#include "registry-http.h"

static void report(registry_progress_fn progress, void *userdata, RegistryProgressKind kind,
                   const char *status, const RegistryLayer *l, uint64_t completed, uint64_t transferred) {
        if (!progress)
                return;
        RegistryProgress p = {.kind = kind,
                              .status = status,
                              .digest = l ? l->digest : NULL,
                              .total = l ? l->size : 0,
                              .completed = completed,
                              .transferred = transferred};
        progress(&p, userdata);
}

static char *append_query(const char *url, const char *query) {
        return strdup_printf("%s%s%s", url, strchr(url, '?') ? "&" : "?", query);
}

static int remote_has_blob(Http *h, const RegistryLayer *l, bool *ret, QdError *e) {
        _cleanup_free_ char *url = http_url(h, "/blobs/%s", l->digest);
        HttpResponse resp = {};

        if (!url)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        int r = http_request(h, "HEAD", url, NULL, NULL, 0, &resp, e);
        if (r < 0)
                return r;
        long st = resp.status;
        http_response_done(&resp);
        if (st == 200) {
                *ret = true;
                return 0;
        }
        if (st == 404) {
                *ret = false;
                return 0;
        }
        return qd_error_set(e, EPROTO, "Registry %s answered HTTP %ld when asked for blob %s.", h->name.host,
                            st, l->digest);
}

/* Starts an upload session (or mounts from from_repo). ret_location is NULL when the mount succeeded. */
static int start_upload(Http *h, const RegistryLayer *l, const char *from_repo, char **ret_location,
                        QdError *e) {
        _cleanup_free_ char *url = NULL;
        HttpResponse resp = {};

        if (from_repo)
                url = http_url(h, "/blobs/uploads/?mount=%s&from=%s", l->digest, from_repo);
        else
                url = http_url(h, "/blobs/uploads/");
        if (!url)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        int r = http_request(h, "POST", url, NULL, NULL, 0, &resp, e);
        if (r < 0)
                return r;
        if (from_repo && resp.status == 201) {
                http_response_done(&resp);
                *ret_location = NULL;
                return 0;
        }
        if (resp.status != 202 || !resp.location) {
                long st = resp.status;
                http_response_done(&resp);
                return qd_error_set(e, EPROTO, "Registry %s refused to start an upload to %s (HTTP %ld).",
                                    h->name.host, h->repo, st);
        }
        *ret_location = TAKE_PTR(resp.location);
        http_response_done(&resp);
        return 0;
}

static int upload_blob(Http *h, RegistryStore *s, const RegistryLayer *l, const char *location,
                       registry_progress_fn progress, void *userdata, QdError *e) {
        static const char *const octet[] = {"Content-Type: application/octet-stream", NULL};
        _cleanup_free_ char *loc = strdup(location), *final_url = NULL, *q = NULL;
        _cleanup_close_ int fd = -EBADF;
        uint64_t chunk = h->config->push_chunk_size, off = 0;
        HttpResponse resp = {};
        int r;

        if (!loc)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        r = registry_store_open_blob(s, l->digest, &fd, e);
        if (r < 0)
                return r;

        if (l->size > chunk) {
                while (off < l->size) {
                        uint64_t n = MIN(chunk, l->size - off);
                        char range[96];
                        snprintf(range, sizeof(range), "Content-Range: %" PRIu64 "-%" PRIu64, off,
                                 off + n - 1);
                        const char *hdrs[] = {octet[0], range, NULL};
                        HttpBody body = {.fd = fd, .offset = off, .size = n};
                        r = http_request(h, "PATCH", loc, hdrs, &body, 64 * 1024, &resp, e);
                        if (r < 0)
                                return r;
                        if (resp.status != 202 || !resp.location) {
                                long st = resp.status;
                                http_response_done(&resp);
                                return qd_error_set(e, EPROTO,
                                                    "Registry %s refused chunk %" PRIu64 "-%" PRIu64
                                                    " of blob %s (HTTP %ld).",
                                                    h->name.host, off, off + n - 1, l->digest, st);
                        }
                        free(loc);
                        loc = TAKE_PTR(resp.location);
                        http_response_done(&resp);
                        off += n;
                        report(progress, userdata, REGISTRY_PROGRESS_LAYER, "pushing", l, off,
                               h->bytes_uploaded);
                }
        }
        q = strdup_printf("digest=%s", l->digest);
        if (!q)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        final_url = append_query(loc, q);
        if (!final_url)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        HttpBody body = {.fd = fd, .offset = off, .size = l->size - off};
        r = http_request(h, "PUT", final_url, octet, &body, 64 * 1024, &resp, e);
        if (r < 0)
                return r;
        long st = resp.status;
        http_response_done(&resp);
        if (st == 400)
                return qd_error_set(e, EBADMSG, "Registry %s rejected blob %s: digest or size mismatch.",
                                    h->name.host, l->digest);
        if (st != 201)
                return qd_error_set(e, EPROTO, "Registry %s refused blob %s (HTTP %ld).", h->name.host,
                                    l->digest, st);
        report(progress, userdata, REGISTRY_PROGRESS_LAYER, "pushing", l, l->size, h->bytes_uploaded);
        return 0;
}

int registry_push(RegistryStore *s, const RegistryName *name, registry_progress_fn progress, void *userdata,
                  const atomic_bool *cancel, RegistryTransferStats *stats, QdError *e) {
        _cleanup_(http_freep) Http *h = NULL;
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *raw = NULL, *url = NULL, *ctype = NULL;
        RegistryTransferStats st = {};
        HttpResponse resp = {};
        int r;

        r = registry_store_show(s, name, &m, &raw, e);
        if (r < 0)
                return r;
        r = http_new(&h, s, name, true, cancel, e);
        if (r < 0)
                return r;

        for (size_t i = 0; i <= m->n_layers; i++) {
                const RegistryLayer *l = i < m->n_layers ? &m->layers[i] : &m->config;
                _cleanup_free_ char *from = NULL, *location = NULL;
                bool have = false;

                r = remote_has_blob(h, l, &have, e);
                if (r < 0)
                        goto finish;
                if (have) {
                        st.blobs_skipped++;
                        report(progress, userdata, REGISTRY_PROGRESS_LAYER, "exists", l, l->size,
                               h->bytes_uploaded);
                        continue;
                }
                (void)store_find_repo_with_blob(s, name, l->digest, &from);
                r = start_upload(h, l, from, &location, e);
                if (r < 0)
                        goto finish;
                if (!location) {
                        st.blobs_mounted++;
                        report(progress, userdata, REGISTRY_PROGRESS_LAYER, "mounted", l, l->size,
                               h->bytes_uploaded);
                        continue;
                }
                r = upload_blob(h, s, l, location, progress, userdata, e);
                if (r < 0)
                        goto finish;
        }

        report(progress, userdata, REGISTRY_PROGRESS_MANIFEST, "pushing manifest", NULL, 0,
               h->bytes_uploaded);
        url = http_url(h, "/manifests/%s", name->tag);
        ctype = strdup_printf("Content-Type: %s", m->media_type);
        if (!url || !ctype) {
                r = qd_error_set(e, ENOMEM, "Out of memory.");
                goto finish;
        }
        const char *hdrs[] = {ctype, NULL};
        HttpBody body = {.data = raw, .fd = -1, .size = strlen(raw)};
        r = http_request(h, "PUT", url, hdrs, &body, 64 * 1024, &resp, e);
        if (r < 0)
                goto finish;
        if (resp.status != 201) {
                r = qd_error_set(e, EPROTO, "Registry %s refused the manifest of %s:%s (HTTP %ld): %.200s",
                                 h->name.host, h->repo, name->tag, resp.status,
                                 resp.body.data ? (const char *)resp.body.data : "");
                http_response_done(&resp);
                goto finish;
        }
        http_response_done(&resp);
        report(progress, userdata, REGISTRY_PROGRESS_DONE, "success", NULL, 0, h->bytes_uploaded);
finish:
        st.bytes_uploaded = h->bytes_uploaded;
        st.retries = h->retries;
        if (stats)
                *stats = st;
        return r;
}
