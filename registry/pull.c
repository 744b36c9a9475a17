/* SPDX-License-Identifier: MIT */
/*
 * Pull: the manifest, then every blob in parallel ranged parts (libcurl multi), verified, then the manifest
 * written last.
 *
 * DESIGN
 * - A blob in progress is two files in blobs/: "sha256-<hex>-partial" (the data, at its final size, parts
 *   written in place) and "sha256-<hex>-partial.state" (the part size and how many bytes of each part are on
 *   disk). The state is rewritten atomically every two seconds and when the pull stops, always after an
 *   fdatasync() of the data, so it never claims bytes that a crash could lose; a restarted pull goes on
 *   with each part where the state says.
 * - Whoever holds an exclusive flock on the data file downloads the blob. A second pull of the same blob, in
 *   this process or another, finds the lock taken and waits until the blob appears (or the lock frees up, in
 *   which case it takes over and resumes): one download for both.
 * - The whole blob is hashed before the rename that makes it visible; a mismatch deletes the partial files.
 * - The pull holds the store's shared lock, so prune never removes a blob fetched for a manifest that is not
 *   written yet.
 * - Per part, errors are retried with backoff; a retry that made progress resets the part's count. A server
 *   that ignores Range (200 for a ranged request) sends us back to one part from the start.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>

#include "registry-http.h"

typedef struct Download Download;

/*
 * The follower: one thread per blob download that hashes the blob's written prefix as it grows and writes
 * the checkpoints (fdatasync, then the part state), so that neither the hash nor the disk flush holds up the
 * thread that drives the network.
 */
typedef struct Follower {
        pthread_t thread;
        bool running;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        /* protected by lock: */
        uint64_t watermark; /* bytes [0, watermark) of the blob are written and will not change */
        uint64_t *snapshot; /* (n_parts) part counters to checkpoint, or NULL */
        bool finish;        /* hash up to the blob's size, then end */
        int error;          /* negative errno of a failed read or checkpoint */
        bool done;          /* digest is final */
        atomic_bool abort;  /* end now */
        /* owned by the thread while it runs: */
        Sha256 hash;
        uint64_t hashed;
        char digest[REGISTRY_DIGEST_MAX];
} Follower;

typedef struct Part {
        Download *dl;
        uint64_t start; /* first byte of the part in the blob */
        uint64_t end;   /* one past the last byte */
        uint64_t done;  /* bytes from start that are written */
        CURL *easy;     /* the transfer in flight, or NULL */
        struct curl_slist *headers;
        long status;            /* HTTP status of the transfer, known from its first body byte */
        bool checked;           /* status and Content-Range checked */
        bool overflow;          /* the server sent more than the part */
        uint64_t content_start; /* from Content-Range, UINT64_MAX when absent */
        uint64_t received;      /* body bytes of this transfer */
        unsigned attempts;      /* failures since the last transfer that made progress */
        uint64_t retry_at;      /* now_ns() before which the part waits */
        char errbuf[CURL_ERROR_SIZE];
} Part;

struct Download {
        RegistryStore *store;
        Http *h;
        const RegistryLayer *layer;
        char data_name[REGISTRY_DIGEST_MAX + 16];  /* "sha256-<hex>-partial" */
        char state_name[REGISTRY_DIGEST_MAX + 16]; /* "sha256-<hex>-partial.state" */
        int fd;                                    /* the data file, flocked */
        Part *parts;                               /* (n_parts) */
        size_t n_parts;
        uint64_t part_size;
        CURLM *multi;
        size_t active;
        bool ranges_unsupported;
        uint64_t start; /* now_ns() when the transfers began, for the bandwidth cap */
        Follower follower;
        uint64_t watermark_sent; /* last watermark handed to the follower */
        size_t first_open;       /* parts before this one are complete */
        int fatal;               /* negative errno that ends the download, 0 while fine */
        QdError fatal_error;
        uint64_t transferred;
        uint64_t last_save;
        uint64_t last_progress;
        registry_progress_fn progress;
        void *userdata;
        RegistryTransferStats *stats;
};

static uint64_t download_completed(const Download *dl) {
        uint64_t c = 0;
        for (size_t i = 0; i < dl->n_parts; i++)
                c += dl->parts[i].done;
        return c;
}

static void report(Download *dl, RegistryProgressKind kind, const char *status, bool force) {
        uint64_t now = now_ns();

        if (!dl->progress || (!force && now - dl->last_progress < 250000000ULL))
                return;
        dl->last_progress = now;
        RegistryProgress p = {
                .kind = kind,
                .digest = dl->layer->digest,
                .total = dl->layer->size,
                .completed = download_completed(dl),
                .transferred = dl->transferred,
                .status = status,
        };
        dl->progress(&p, dl->userdata);
}

/* ---- part state on disk ---- */

static int set_parts(Download *dl, uint64_t part_size) {
        uint64_t size = dl->layer->size;
        size_t n = size == 0 ? 0 : (size_t)((size + part_size - 1) / part_size);

        free(dl->parts);
        dl->parts = calloc(MAX(n, (size_t)1), sizeof(Part));
        if (!dl->parts)
                return -ENOMEM;
        dl->n_parts = n;
        dl->part_size = part_size;
        for (size_t i = 0; i < n; i++)
                dl->parts[i] =
                        (Part){.dl = dl, .start = i * part_size, .end = MIN((i + 1) * part_size, size)};
        return 0;
}

/* Writes the state file with the part counters done (n_parts); the data they describe must be synced. */
static int write_state(Download *dl, const uint64_t *done) {
        Buf b = {};
        int r;

        r = buf_printf(&b, "quantd-partial 1\n%s\n%" PRIu64 " %" PRIu64 "\n", dl->layer->digest,
                       dl->layer->size, dl->part_size);
        for (size_t i = 0; r >= 0 && i < dl->n_parts; i++)
                r = buf_printf(&b, "%" PRIu64 "\n", done[i]);
        if (r >= 0)
                r = write_file_atomic(dl->store->blobs_fd, dl->state_name, b.data, b.len);
        buf_free(&b);
        return r;
}

/* A checkpoint from the network thread, when the follower is not running. */
static int save_state(Download *dl) {
        _cleanup_free_ uint64_t *done = calloc(MAX(dl->n_parts, (size_t)1), sizeof(uint64_t));

        if (!done)
                return -ENOMEM;
        for (size_t i = 0; i < dl->n_parts; i++)
                done[i] = dl->parts[i].done;
        /* Data first: the state may only describe bytes that are durable. */
        if (fdatasync(dl->fd) < 0)
                return -errno;
        return write_state(dl, done);
}

/* ---- the follower ---- */

static void *follower_main(void *userdata) {
        Download *dl = userdata;
        Follower *f = &dl->follower;
        const size_t bufsize = 1U << 20;
        uint8_t *buf = malloc(bufsize);

        pthread_mutex_lock(&f->lock);
        if (!buf)
                f->error = -ENOMEM;
        while (!f->error && !f->done) {
                while (!atomic_load(&f->abort) && !f->snapshot && f->hashed == f->watermark && !f->finish)
                        pthread_cond_wait(&f->cond, &f->lock);
                if (atomic_load(&f->abort))
                        break;
                uint64_t *snapshot = TAKE_PTR(f->snapshot);
                uint64_t target = f->watermark;
                bool finish = f->finish;
                pthread_mutex_unlock(&f->lock);

                int r = 0;
                if (snapshot) {
                        /* The counters were taken before this fdatasync, so every byte they claim is synced.
                         */
                        r = fdatasync(dl->fd) < 0 ? -errno : write_state(dl, snapshot);
                        free(snapshot);
                }
                while (r >= 0 && f->hashed < target && !atomic_load(&f->abort)) {
                        ssize_t n = pread(dl->fd, buf, (size_t)MIN((uint64_t)bufsize, target - f->hashed),
                                          (off_t)f->hashed);
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n <= 0) {
                                r = n < 0 ? -errno : -EIO;
                                break;
                        }
                        r = sha256_update(&f->hash, buf, (size_t)n);
                        /*
                         * These bytes are final: start writing them to disk now, so that checkpoints and the
                         * fsync before the blob becomes visible find little left to do.
                         */
                        (void)sync_file_range(dl->fd, (off_t)f->hashed, n, SYNC_FILE_RANGE_WRITE);
                        f->hashed += (uint64_t)n;
                }
                bool done = false;
                if (r >= 0 && finish && f->hashed == dl->layer->size && !atomic_load(&f->abort)) {
                        r = sha256_final(&f->hash, f->digest);
                        done = r >= 0;
                }
                pthread_mutex_lock(&f->lock);
                if (r < 0)
                        f->error = r;
                f->done = done;
        }
        pthread_mutex_unlock(&f->lock);
        free(buf);
        return NULL;
}

static int follower_start(Download *dl) {
        Follower *f = &dl->follower;
        int r;

        *f = (Follower){};
        r = sha256_init(&f->hash);
        if (r < 0)
                return r;
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->cond, NULL);
        r = -pthread_create(&f->thread, NULL, follower_main, dl);
        if (r < 0) {
                sha256_done(&f->hash);
                pthread_cond_destroy(&f->cond);
                pthread_mutex_destroy(&f->lock);
                return r;
        }
        (void)pthread_setname_np(f->thread, "registry-hash");
        f->running = true;
        dl->watermark_sent = 0;
        dl->first_open = 0;
        return 0;
}

/*
 * Ends the follower: with finish, after it hashed the whole blob (ret_digest receives the digest); without,
 * at once. Returns the follower's error, if it had one.
 */
static int follower_stop(Download *dl, bool finish, char ret_digest[REGISTRY_DIGEST_MAX]) {
        Follower *f = &dl->follower;
        int r;

        if (!f->running)
                return 0;
        pthread_mutex_lock(&f->lock);
        if (finish) {
                f->watermark = dl->layer->size;
                f->finish = true;
        } else
                atomic_store(&f->abort, true);
        pthread_cond_signal(&f->cond);
        pthread_mutex_unlock(&f->lock);
        pthread_join(f->thread, NULL);
        r = f->error;
        if (r >= 0 && finish && f->done)
                memcpy(ret_digest, f->digest, REGISTRY_DIGEST_MAX);
        else if (r >= 0 && finish)
                r = -ECANCELED;
        free(f->snapshot);
        f->snapshot = NULL;
        sha256_done(&f->hash);
        pthread_cond_destroy(&f->cond);
        pthread_mutex_destroy(&f->lock);
        f->running = false;
        return r;
}

/* Hands the follower the new end of the written prefix, and a checkpoint every two seconds. */
static int follower_update(Download *dl) {
        Follower *f = &dl->follower;
        uint64_t wm = dl->layer->size;
        bool checkpoint = now_ns() - dl->last_save > 2000000000ULL;
        int r;

        while (dl->first_open < dl->n_parts &&
               dl->parts[dl->first_open].done ==
                       dl->parts[dl->first_open].end - dl->parts[dl->first_open].start)
                dl->first_open++;
        if (dl->first_open < dl->n_parts)
                wm = dl->parts[dl->first_open].start + dl->parts[dl->first_open].done;
        /* Wake the follower for every 4 MiB, not for every packet. */
        if (wm - dl->watermark_sent < (4U << 20) && wm != dl->layer->size && !checkpoint)
                return 0;
        pthread_mutex_lock(&f->lock);
        r = f->error;
        f->watermark = wm;
        if (checkpoint && !f->snapshot) {
                f->snapshot = calloc(MAX(dl->n_parts, (size_t)1), sizeof(uint64_t));
                for (size_t i = 0; f->snapshot && i < dl->n_parts; i++)
                        f->snapshot[i] = dl->parts[i].done;
                dl->last_save = now_ns();
        }
        pthread_cond_signal(&f->cond);
        pthread_mutex_unlock(&f->lock);
        dl->watermark_sent = wm;
        return r;
}

/* Reads the state file into dl; -EBADMSG when it does not describe this blob. */
static int load_state(Download *dl) {
        _cleanup_free_ char *text = NULL;
        char digest[REGISTRY_DIGEST_MAX + 1];
        uint64_t size, part_size;
        int r, pos = 0;

        r = read_file_at(dl->store->blobs_fd, dl->state_name, 1U << 20, &text, NULL);
        if (r < 0)
                return r;
        if (sscanf(text, "quantd-partial 1\n%72s\n%" SCNu64 " %" SCNu64 "\n%n", digest, &size, &part_size,
                   &pos) != 3 ||
            pos == 0)
                return -EBADMSG;
        if (!streq(digest, dl->layer->digest) || size != dl->layer->size || part_size < 4096)
                return -EBADMSG;
        r = set_parts(dl, part_size);
        if (r < 0)
                return r;
        const char *p = text + pos;
        for (size_t i = 0; i < dl->n_parts; i++) {
                char *end;
                if (*p < '0' || *p > '9')
                        return -EBADMSG;
                errno = 0;
                unsigned long long v = strtoull(p, &end, 10);
                if (errno != 0 || *end != '\n' || v > dl->parts[i].end - dl->parts[i].start)
                        return -EBADMSG;
                dl->parts[i].done = v;
                p = end + 1;
        }
        return *p == 0 ? 0 : -EBADMSG;
}

/* ---- transfers ---- */

static size_t part_header_cb(char *p, size_t size, size_t n, void *userdata) {
        Part *pt = userdata;
        size_t len = size * n;
        unsigned long long a, b;

        if (len >= 5 && strncmp(p, "HTTP/", 5) == 0)
                pt->content_start = UINT64_MAX;
        else if (len > 14 && strncasecmp(p, "Content-Range:", 14) == 0 &&
                 sscanf(p + 14, " bytes %llu-%llu", &a, &b) == 2)
                pt->content_start = a;
        return len;
}

/*
 * The bandwidth cap, over all parts of the blob: ahead of max_bandwidth bytes per second since the start,
 * the write callback sleeps until the budget catches up. All parts run on this one thread, so the sleep
 * holds them all back, and TCP flow control slows the sender. libcurl's per-transfer limit is not used:
 * parts are short transfers, each of which it would let burst.
 */
static void throttle(Download *dl) {
        uint64_t cap = dl->h->config->max_bandwidth;

        while (cap > 0 && !cancelled(dl->h->cancel)) {
                double elapsed = (double)(now_ns() - dl->start) / 1e9;
                double ahead = (double)dl->transferred - (double)cap * elapsed;
                if (ahead <= 0)
                        break;
                /*
                 * One curl_multi_perform() may run many callbacks that all sleep here, so the loop's
                 * periodic work (checkpoints, progress) happens here as well.
                 */
                int r = follower_update(dl);
                if (r < 0 && dl->fatal >= 0) {
                        dl->fatal = qd_error_set(&dl->fatal_error, r, "Failed to save or hash blob %s: %s.",
                                                 dl->layer->digest, strerror(-r));
                        break;
                }
                report(dl, REGISTRY_PROGRESS_LAYER, "pulling", false);
                double ms = MIN(ahead / (double)cap * 1000.0, 50.0);
                struct timespec ts = {0, (long)(ms * 1e6) + 1};
                nanosleep(&ts, NULL);
        }
}

static size_t part_write_cb(char *p, size_t size, size_t n, void *userdata) {
        Part *pt = userdata;
        Download *dl = pt->dl;
        size_t len = size * n;

        if (!pt->checked) {
                pt->checked = true;
                curl_easy_getinfo(pt->easy, CURLINFO_RESPONSE_CODE, &pt->status);
                if (pt->status == 200 && (dl->n_parts > 1 || pt->start + pt->done > 0)) {
                        /* The server ignored Range: its body starts at byte 0. */
                        dl->ranges_unsupported = true;
                        return 0;
                }
                if (pt->status == 206 && pt->content_start != pt->start + pt->done) {
                        pt->overflow = true;
                        return 0;
                }
        }
        if (pt->status != 200 && pt->status != 206)
                return len; /* an error page: dropped, the status decides */
        if (pt->done + len > pt->end - pt->start) {
                pt->overflow = true;
                return 0;
        }
        int r = pwrite_full(dl->fd, p, len, pt->start + pt->done);
        if (r < 0) {
                dl->fatal = qd_error_set(&dl->fatal_error, r, "Failed to write blob %s: %s.",
                                         dl->layer->digest, strerror(-r));
                return 0;
        }
        pt->done += len;
        pt->received += len;
        dl->transferred += len;
        throttle(dl);
        return len;
}

static int start_part(Download *dl, Part *pt) {
        _cleanup_free_ char *url = http_url(dl->h, "/blobs/%s", dl->layer->digest);
        char range[80];
        CURL *c;

        if (!url)
                return -ENOMEM;
        c = curl_easy_init();
        if (!c)
                return -ENOMEM;
        pt->easy = c;
        pt->status = 0;
        pt->checked = false;
        pt->overflow = false;
        pt->received = 0;
        pt->content_start = UINT64_MAX;
        pt->errbuf[0] = 0;
        http_setup_easy(dl->h, c);
        snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-%" PRIu64, pt->start + pt->done,
                 pt->end - 1);
        pt->headers = curl_slist_append(NULL, range);
        if (pt->headers)
                pt->headers = http_auth_headers(dl->h, pt->headers);
        if (!pt->headers) {
                curl_easy_cleanup(c);
                pt->easy = NULL;
                return -ENOMEM;
        }
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, pt->headers);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, part_write_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, pt);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, part_header_cb);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, pt);
        curl_easy_setopt(c, CURLOPT_PRIVATE, pt);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, pt->errbuf);
        /* Large reads: fewer write callbacks and pwrite() calls per byte. */
        curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024L);
        if (curl_multi_add_handle(dl->multi, c) != CURLM_OK) {
                curl_slist_free_all(pt->headers);
                pt->headers = NULL;
                curl_easy_cleanup(c);
                pt->easy = NULL;
                return -ENOMEM;
        }
        dl->active++;
        return 0;
}

static void stop_part(Download *dl, Part *pt) {
        if (!pt->easy)
                return;
        curl_multi_remove_handle(dl->multi, pt->easy);
        curl_easy_cleanup(pt->easy);
        curl_slist_free_all(pt->headers);
        pt->easy = NULL;
        pt->headers = NULL;
        dl->active--;
}

static void finish_part(Download *dl, Part *pt, CURLcode code) {
        const RegistryConfig *cfg = dl->h->config;
        uint64_t len = pt->end - pt->start;
        long status = pt->status;

        if (status == 0)
                curl_easy_getinfo(pt->easy, CURLINFO_RESPONSE_CODE, &status);
        stop_part(dl, pt);
        if (dl->ranges_unsupported || dl->fatal < 0 || code == CURLE_ABORTED_BY_CALLBACK)
                return;
        if (pt->overflow) {
                dl->fatal = qd_error_set(&dl->fatal_error, EPROTO,
                                         "Registry %s sent bytes outside the requested range of blob %s.",
                                         dl->h->name.host, dl->layer->digest);
                return;
        }
        if (code == CURLE_OK && (status == 200 || status == 206) && pt->done == len) {
                pt->attempts = 0;
                return;
        }
        if (code == CURLE_OK && status == 401) {
                /* The token expired: a plain request renews it through the usual challenge. */
                _cleanup_free_ char *url = http_url(dl->h, "/blobs/%s", dl->layer->digest);
                HttpResponse resp = {};
                QdError e = {};
                int r = url ? http_request(dl->h, "HEAD", url, NULL, NULL, 0, &resp, &e) : -ENOMEM;
                long st = resp.status;
                http_response_done(&resp);
                if (r < 0 || st == 401 || st == 403) {
                        dl->fatal = r < 0 ? qd_error_set(&dl->fatal_error, r, "%s", e.msg)
                                          : qd_error_set(&dl->fatal_error, EACCES,
                                                         "Registry %s denied access to blob %s.",
                                                         dl->h->name.host, dl->layer->digest);
                        return;
                }
        } else if (code == CURLE_OK && status == 404) {
                dl->fatal = qd_error_set(&dl->fatal_error, ENOENT, "Blob %s is missing on registry %s.",
                                         dl->layer->digest, dl->h->name.host);
                return;
        } else if (code == CURLE_OK && status >= 400 && status < 500 && status != 408 && status != 429) {
                dl->fatal =
                        qd_error_set(&dl->fatal_error, EPROTO, "Registry %s answered HTTP %ld for blob %s.",
                                     dl->h->name.host, status, dl->layer->digest);
                return;
        }

        /* Transient: a network error, a stall, a short body, 408, 429 or 5xx. */
        if (pt->received > 0)
                pt->attempts = 0;
        pt->attempts++;
        dl->h->retries++;
        if (pt->attempts > cfg->max_retries) {
                int err = code == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT
                          : code != CURLE_OK               ? EHOSTUNREACH
                                                           : EPROTO;
                if (code != CURLE_OK)
                        dl->fatal = qd_error_set(&dl->fatal_error, err,
                                                 "Failed to download blob %s from %s after %u retries: %s.",
                                                 dl->layer->digest, dl->h->name.host, cfg->max_retries,
                                                 pt->errbuf[0] ? pt->errbuf : curl_easy_strerror(code));
                else
                        dl->fatal = qd_error_set(
                                &dl->fatal_error, err,
                                "Failed to download blob %s from %s after %u retries: HTTP %ld.",
                                dl->layer->digest, dl->h->name.host, cfg->max_retries, status);
                return;
        }
        uint64_t ms = cfg->backoff_ms;
        for (unsigned i = 1; i < pt->attempts && ms < 30000; i++)
                ms *= 2;
        pt->retry_at = now_ns() + MIN(ms, (uint64_t)30000) * 1000000ULL;
        report(dl, REGISTRY_PROGRESS_RETRYING, "retrying", true);
}

static int run_transfers(Download *dl, QdError *e) {
        const RegistryConfig *cfg = dl->h->config;
        int r;

        dl->multi = curl_multi_init();
        if (!dl->multi)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        dl->last_save = now_ns();
        dl->start = now_ns();
        for (;;) {
                bool all_done = true;
                uint64_t now = now_ns();

                if (cancelled(dl->h->cancel)) {
                        r = qd_error_set(e, ECANCELED, "Cancelled.");
                        break;
                }
                if (dl->fatal < 0) {
                        r = qd_error_set(e, dl->fatal, "%s", dl->fatal_error.msg);
                        break;
                }
                if (dl->ranges_unsupported) {
                        for (size_t i = 0; i < dl->n_parts; i++)
                                stop_part(dl, &dl->parts[i]);
                        dl->ranges_unsupported = false;
                        /* The prefix hashed so far will be written again: hash it again too. */
                        (void)follower_stop(dl, false, NULL);
                        r = set_parts(dl, MAX(dl->layer->size, (uint64_t)4096));
                        if (r >= 0)
                                r = follower_start(dl);
                        if (r < 0) {
                                r = qd_error_set(e, r, "Failed to restart the download of %s: %s.",
                                                 dl->layer->digest, strerror(-r));
                                break;
                        }
                        continue;
                }
                r = 0;
                for (size_t i = 0; r >= 0 && i < dl->n_parts; i++) {
                        Part *pt = &dl->parts[i];
                        if (pt->done == pt->end - pt->start && !pt->easy)
                                continue;
                        all_done = false;
                        if (pt->easy || dl->active >= cfg->parallel_parts || pt->retry_at > now)
                                continue;
                        r = start_part(dl, pt);
                }
                if (r < 0) {
                        r = qd_error_set(e, r, "Out of memory.");
                        break;
                }
                if (all_done) {
                        r = 0;
                        break;
                }
                int running = 0;
                CURLMcode mc = curl_multi_perform(dl->multi, &running);
                if (mc != CURLM_OK) {
                        r = qd_error_set(e, EIO, "libcurl failed: %s.", curl_multi_strerror(mc));
                        break;
                }
                CURLMsg *msg;
                int left;
                bool finished = false;
                while ((msg = curl_multi_info_read(dl->multi, &left)))
                        if (msg->msg == CURLMSG_DONE) {
                                Part *pt = NULL;
                                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&pt);
                                finish_part(dl, pt, msg->data.result);
                                finished = true;
                        }
                report(dl, REGISTRY_PROGRESS_LAYER, "pulling", false);
                r = follower_update(dl);
                if (r < 0) {
                        r = qd_error_set(e, r, "Failed to save or hash blob %s: %s.", dl->layer->digest,
                                         strerror(-r));
                        break;
                }
                /* A finished part frees a slot for the next one, or ends the blob: no waiting then. */
                if (!finished)
                        curl_multi_poll(dl->multi, NULL, 0, 100, NULL);
        }
        for (size_t i = 0; i < dl->n_parts; i++)
                stop_part(dl, &dl->parts[i]);
        curl_multi_cleanup(dl->multi);
        dl->multi = NULL;
        return r;
}

/* ---- one blob ---- */

/* Opens and locks the data file into ret; -EBUSY when someone else downloads the blob. */
static int lock_partial(Download *dl, int *ret) {
        for (;;) {
                struct stat a, b;
                _cleanup_close_ int fd = openat(dl->store->blobs_fd, dl->data_name,
                                                O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (fd < 0)
                        return -errno;
                if (flock(fd, LOCK_EX | LOCK_NB) < 0)
                        return errno == EWOULDBLOCK ? -EBUSY : -errno;
                /* The holder before us may have renamed the file into the blob: ours must be the path's. */
                if (fstat(fd, &a) < 0)
                        return -errno;
                if (fstatat(dl->store->blobs_fd, dl->data_name, &b, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno == ENOENT)
                                continue;
                        return -errno;
                }
                if (a.st_ino != b.st_ino || a.st_dev != b.st_dev)
                        continue;
                *ret = TAKE_FD(fd);
                return 0;
        }
}

static void wait_progress(Download *dl) {
        _cleanup_free_ char *text = NULL;
        uint64_t done = 0;

        if (!dl->progress)
                return;
        if (read_file_at(dl->store->blobs_fd, dl->state_name, 1U << 20, &text, NULL) >= 0) {
                /* Sum the part counters after the three header lines. */
                const char *p = text;
                for (int i = 0; i < 3 && p; i++) {
                        p = strchr(p, '\n');
                        if (p)
                                p++;
                }
                while (p && *p) {
                        done += strtoull(p, NULL, 10);
                        p = strchr(p, '\n');
                        if (p)
                                p++;
                }
        }
        RegistryProgress pr = {.kind = REGISTRY_PROGRESS_WAITING,
                               .digest = dl->layer->digest,
                               .total = dl->layer->size,
                               .completed = MIN(done, dl->layer->size),
                               .status = "waiting for another download"};
        dl->progress(&pr, dl->userdata);
}

static int download_blob(Download *dl, QdError *e) {
        const RegistryLayer *l = dl->layer;
        const char *hex = l->digest + 7;
        _cleanup_close_ int fd = -EBADF; /* the locked data file, dl->fd while we hold it */
        char got[REGISTRY_DIGEST_MAX];
        int r;

        snprintf(dl->data_name, sizeof(dl->data_name), "sha256-%s-partial", hex);
        snprintf(dl->state_name, sizeof(dl->state_name), "sha256-%s-partial.state", hex);

        for (bool waited = false;; waited = true) {
                if (store_has_blob(dl->store, l->digest, l->size)) {
                        if (!waited && dl->stats)
                                dl->stats->blobs_skipped++;
                        report(dl, REGISTRY_PROGRESS_LAYER, "pulling", true);
                        return 0;
                }
                if (store_has_blob(dl->store, l->digest, UINT64_MAX))
                        return qd_error_set(
                                e, EBADMSG,
                                "Blob %s in the store has the wrong size; remove it or run prune.",
                                l->digest);
                r = lock_partial(dl, &fd);
                if (r >= 0)
                        break;
                if (r != -EBUSY)
                        return qd_error_set(e, r, "Failed to open '%s/blobs/%s': %s.", dl->store->root,
                                            dl->data_name, strerror(-r));
                /* Someone else is downloading this blob: wait for the blob or for the lock. */
                wait_progress(dl);
                for (int i = 0; i < 10; i++) {
                        if (cancelled(dl->h->cancel))
                                return qd_error_set(e, ECANCELED, "Cancelled.");
                        struct timespec ts = {0, 20 * 1000000L};
                        nanosleep(&ts, NULL);
                }
        }
        dl->fd = fd;

        /* With the lock held, the blob may have appeared meanwhile: then the partial file is ours to drop.
         */
        if (store_has_blob(dl->store, l->digest, l->size)) {
                (void)unlinkat(dl->store->blobs_fd, dl->data_name, 0);
                (void)unlinkat(dl->store->blobs_fd, dl->state_name, 0);
                report(dl, REGISTRY_PROGRESS_LAYER, "pulling", true);
                return 0;
        }
        struct stat st;
        if (fstat(dl->fd, &st) < 0)
                return qd_error_set(e, errno, "Failed to inspect '%s': %s.", dl->data_name, strerror(errno));
        r = (uint64_t)st.st_size == l->size ? load_state(dl) : -EBADMSG;
        bool resumed = r >= 0;
        for (;;) {
                if (r < 0) {
                        r = set_parts(dl, dl->h->config->part_size);
                        if (r < 0)
                                return qd_error_set(e, r, "Out of memory.");
                        if (ftruncate(dl->fd, 0) < 0 || ftruncate(dl->fd, (off_t)l->size) < 0)
                                return qd_error_set(e, errno,
                                                    "Failed to allocate %" PRIu64 " bytes for blob %s: %s.",
                                                    l->size, l->digest, strerror(errno));
                }
                report(dl, REGISTRY_PROGRESS_LAYER, "pulling", true);

                r = follower_start(dl);
                if (r < 0)
                        return qd_error_set(e, r, "Failed to start hashing blob %s: %s.", l->digest,
                                            strerror(-r));
                r = run_transfers(dl, e);
                if (r < 0) {
                        /* Keep what arrived for the next attempt. */
                        (void)follower_stop(dl, false, NULL);
                        (void)save_state(dl);
                        return r;
                }
                report(dl, REGISTRY_PROGRESS_VERIFYING, "verifying sha256 digest", true);
                r = follower_stop(dl, true, got);
                if (r < 0) {
                        (void)save_state(dl);
                        return qd_error_set(e, r, "Failed to hash blob %s: %s.", l->digest, strerror(-r));
                }
                if (streq(got, l->digest))
                        break;
                (void)unlinkat(dl->store->blobs_fd, dl->state_name, 0);
                /*
                 * After a resume the damage may be ours (a checkpoint that outlived its data in a power
                 * loss): download once more from scratch before blaming the registry.
                 */
                if (!resumed) {
                        (void)unlinkat(dl->store->blobs_fd, dl->data_name, 0);
                        return qd_error_set(e, EBADMSG,
                                            "Blob %s from %s is corrupt: its contents hash to %s. It was "
                                            "discarded; pull again.",
                                            l->digest, dl->h->name.host, got);
                }
                resumed = false;
                r = -EBADMSG;
        }
        r = store_commit_blob(dl->store, dl->fd, dl->data_name, l->digest);
        if (r < 0)
                return qd_error_set(e, r, "Failed to store blob %s: %s.", l->digest, strerror(-r));
        (void)unlinkat(dl->store->blobs_fd, dl->state_name, 0);
        report(dl, REGISTRY_PROGRESS_LAYER, "pulling", true);
        return 0;
}

/* ---- the manifest ---- */

static int fetch_manifest(Http *h, char **ret_raw, size_t *ret_size, RegistryManifest **ret, QdError *e) {
        static const char *const headers[] = {
                "Accept: " REGISTRY_MEDIA_DOCKER_MANIFEST ", " REGISTRY_MEDIA_OCI_MANIFEST,
                NULL,
        };
        _cleanup_free_ char *url = http_url(h, "/manifests/%s", h->name.tag);
        HttpResponse resp = {};
        char got[REGISTRY_DIGEST_MAX];
        QdError pe = {};
        int r;

        if (!url)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        r = http_request(h, "GET", url, headers, NULL, REGISTRY_MANIFEST_MAX, &resp, e);
        if (r < 0)
                return r;
        if (resp.status == 404) {
                http_response_done(&resp);
                return qd_error_set(e, ENOENT, "Model '%s/%s:%s' not found on registry %s.",
                                    h->name.namespace, h->name.model, h->name.tag, h->name.host);
        }
        if (resp.status != 200) {
                http_response_done(&resp);
                return qd_error_set(e, EPROTO, "Registry %s answered HTTP %ld for the manifest of %s:%s.",
                                    h->name.host, resp.status, h->repo, h->name.tag);
        }
        r = registry_manifest_parse(resp.body.data, resp.body.len, ret, &pe);
        if (r < 0) {
                http_response_done(&resp);
                return qd_error_set(e, r, "Registry %s sent a bad manifest for %s:%s: %s", h->name.host,
                                    h->repo, h->name.tag, pe.msg);
        }
        r = sha256_data(resp.body.data, resp.body.len, got);
        if (r >= 0 && resp.docker_digest && !streq(resp.docker_digest, got)) {
                http_response_done(&resp);
                *ret = registry_manifest_free(*ret);
                return qd_error_set(e, EBADMSG,
                                    "The manifest of %s:%s from %s does not match its digest %s.", h->repo,
                                    h->name.tag, h->name.host, resp.docker_digest);
        }
        *ret_size = resp.body.len;
        *ret_raw = buf_steal_str(&resp.body);
        http_response_done(&resp);
        return 0;
}

int registry_pull(RegistryStore *s, const RegistryName *name, registry_progress_fn progress, void *userdata,
                  const atomic_bool *cancel, RegistryTransferStats *stats, QdError *e) {
        _cleanup_(http_freep) Http *h = NULL;
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        _cleanup_free_ char *raw = NULL;
        _cleanup_close_ int lock = -EBADF;
        RegistryTransferStats st = {};
        size_t raw_size = 0;
        int r;

        r = http_new(&h, s, name, false, cancel, e);
        if (r < 0)
                return r;
        r = store_lock(s, false, &lock);
        if (r < 0)
                return qd_error_set(e, r, "Failed to lock the model store: %s.", strerror(-r));
        if (progress) {
                RegistryProgress p = {.kind = REGISTRY_PROGRESS_MANIFEST, .status = "pulling manifest"};
                progress(&p, userdata);
        }
        r = fetch_manifest(h, &raw, &raw_size, &m, e);
        if (r < 0)
                goto finish;

        for (size_t i = 0; i <= m->n_layers; i++) {
                const RegistryLayer *l = i < m->n_layers ? &m->layers[i] : &m->config;
                Download dl = {.store = s,
                               .h = h,
                               .layer = l,
                               .fd = -EBADF,
                               .progress = progress,
                               .userdata = userdata,
                               .stats = &st};
                r = download_blob(&dl, e);
                st.bytes_downloaded += dl.transferred;
                free(dl.parts);
                if (r < 0)
                        goto finish;
        }
        r = registry_store_write_manifest(s, name, raw, raw_size, e);
        if (r < 0)
                goto finish;
        if (progress) {
                RegistryProgress p = {.kind = REGISTRY_PROGRESS_DONE, .status = "success"};
                progress(&p, userdata);
        }
finish:
        st.retries = h->retries;
        if (stats)
                *stats = st;
        return r;
}
