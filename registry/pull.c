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
 * - Bytes reach the file through O_DIRECT where the file system allows it: each part collects what arrives
 *   in an aligned 4 MiB stage and writes it with one direct pwrite(), bypassing the page cache. A buffered
 *   write costs about as much CPU as receiving the bytes (page allocation, copy, dirty accounting, and later
 *   the writeback), and a pull has to make every byte durable anyway; the direct write hands the pages to
 *   the disk and leaves only the device flush for the fsync. Unaligned heads and tails (a resumed part, the
 *   blob's last bytes) go through the page cache. The follower reads the bytes back with O_DIRECT to hash
 *   them. Without O_DIRECT (tmpfs, some FUSE file systems) everything is buffered and the follower starts
 *   the writeback of each range as soon as it has hashed it.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>

#include "registry-http.h"

typedef struct Download Download;

/* Direct I/O wants offsets, lengths and buffers aligned to the logical block size; 4096 covers them all. */
#define DIRECT_ALIGN 4096U
/* Bytes a part collects before handing them to the follower: large enough to amortise a write. */
#define STAGE_SIZE (4U << 20)

/* Received bytes of one part on their way to the file: blob bytes [a, b) in buf[a - base, b - base). */
typedef struct Stage {
        struct Stage *next;
        uint8_t *buf;  /* (STAGE_SIZE), aligned to DIRECT_ALIGN */
        uint64_t base; /* blob offset of buf[0], a multiple of DIRECT_ALIGN */
        uint64_t a, b;
        size_t part; /* index into Download.parts */
} Stage;

/*
 * The follower: two threads per blob download behind the network thread. The writer writes the stages the
 * network thread fills, in order of arrival; the hasher hashes the blob's written prefix as it grows (from
 * the stage, when the writer hands over the one next in line, else by reading the file back) and writes the
 * checkpoints (fdatasync, then the part state). Stages travel network -> writer -> hasher -> free list, so
 * that the disk, the hash and the network all work at once.
 */
typedef struct Follower {
        pthread_t thread, writer;
        bool running;
        pthread_mutex_t lock;
        pthread_cond_t cond; /* the threads wait for work, the network thread for a free stage */
        /* protected by lock: */
        Stage *queue, **queue_tail; /* full stages to write, in order of arrival */
        Stage *hashq, **hashq_tail; /* written stages for the hasher */
        Stage *free_stages;
        size_t n_stages;   /* allocated, at most stages_max */
        size_t stages_max; /* ParallelParts + 3: one filling per part, one each writing, hashing, waiting */
        bool checkpoint;   /* write a checkpoint when the queue is empty */
        bool finish;       /* write and hash everything, then end */
        bool abort;        /* write what is queued, then end */
        int error;         /* negative errno of a failed write, read or checkpoint */
        bool done;         /* digest is final */
        uint64_t hashed;   /* bytes [0, hashed) are hashed */
        /* owned by the thread while it runs: */
        Sha256 hash;
        size_t first_open; /* parts before this one are completely written */
        char digest[REGISTRY_DIGEST_MAX];
} Follower;

typedef struct Part {
        Download *dl;
        uint64_t start; /* first byte of the part in the blob */
        uint64_t end;   /* one past the last byte */
        uint64_t done;  /* bytes from start that are written to the file (the follower's, while it runs) */
        uint64_t next;  /* bytes from start that were received (the network thread's) */
        Stage *stage;   /* the stage being filled, or NULL */
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
        int direct_fd;      /* the data file opened with O_DIRECT, or -EBADF for buffered writes */
        int direct_read_fd; /* the same for the follower's reads, or -EBADF */
        Part *parts;        /* (n_parts) */
        size_t n_parts;
        uint64_t part_size;
        CURLM *multi;
        size_t active;
        unsigned parallel_parts; /* transfers at once, registry_config_parallel_parts() */
        bool ranges_unsupported;
        uint64_t start; /* now_ns() when the transfers began, for the bandwidth cap */
        Follower follower;
        int fatal; /* negative errno that ends the download, 0 while fine */
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
                c += dl->parts[i].next;
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

static Stage *stage_free(Stage *st) {
        if (st) {
                free(st->buf);
                free(st);
        }
        return NULL;
}

/* ---- part state on disk ---- */

static int set_parts(Download *dl, uint64_t part_size) {
        uint64_t size = dl->layer->size;
        size_t n = size == 0 ? 0 : (size_t)((size + part_size - 1) / part_size);

        for (size_t i = 0; dl->parts && i < dl->n_parts; i++)
                stage_free(dl->parts[i].stage);
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

/*
 * Reads bytes [off, end) of the blob, at most bufsize of them, into buf: with O_DIRECT when the download has
 * a direct descriptor (whole blocks, then the wanted part is at *ret_skip), else from the page cache.
 * Returns the number of wanted bytes in buf, or a negative errno.
 */
static ssize_t follower_read(Download *dl, bool *direct, uint8_t *buf, size_t bufsize, uint64_t off,
                             uint64_t end, size_t *ret_skip) {
        for (;;) {
                if (*direct) {
                        uint64_t a = off / DIRECT_ALIGN * DIRECT_ALIGN;
                        size_t len =
                                (size_t)MIN((uint64_t)bufsize, ALIGN_TO(end, (uint64_t)DIRECT_ALIGN) - a);
                        ssize_t n = pread(dl->direct_read_fd, buf, len, (off_t)a);
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n < 0 && errno == EINVAL) {
                                *direct = false;
                                continue;
                        }
                        if (n < 0)
                                return -errno;
                        if ((uint64_t)n <= off - a)
                                return -EIO;
                        *ret_skip = (size_t)(off - a);
                        return (ssize_t)MIN((uint64_t)n - (off - a), end - off);
                }
                ssize_t n = pread(dl->fd, buf, (size_t)MIN((uint64_t)bufsize, end - off), (off_t)off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0 ? -errno : -EIO;
                *ret_skip = 0;
                return n;
        }
}

/*
 * Writes the bytes of st to the file: the block-aligned middle with O_DIRECT straight from the stage, an
 * unaligned head or tail (a resumed part, the blob's end) through the page cache. Runs on the follower.
 */
static int stage_write(Download *dl, const Stage *st) {
        uint64_t a = st->a, b = st->b;
        uint64_t mid_a = MIN(ALIGN_TO(a, (uint64_t)DIRECT_ALIGN), b);
        uint64_t mid_b = MAX(b / DIRECT_ALIGN * DIRECT_ALIGN, mid_a);
        int r;

        if (dl->direct_fd >= 0 && mid_b > mid_a) {
                r = pwrite_full(dl->direct_fd, st->buf + (mid_a - st->base), mid_b - mid_a, mid_a);
                if (r == -EINVAL) {
                        /* The file system takes O_DIRECT at open but not at write: buffered from now on. */
                        dl->direct_fd = -EBADF;
                        mid_a = mid_b = b;
                } else if (r < 0)
                        return r;
        } else
                mid_a = mid_b = b;
        if (mid_a > a) {
                r = pwrite_full(dl->fd, st->buf + (a - st->base), mid_a - a, a);
                if (r < 0)
                        return r;
        }
        if (b > mid_b) {
                r = pwrite_full(dl->fd, st->buf + (mid_b - st->base), b - mid_b, mid_b);
                if (r < 0)
                        return r;
        }
        if (dl->direct_fd < 0)
                /* Buffered: start the writeback now, so that checkpoints and the final fsync find little. */
                (void)sync_file_range(dl->fd, (off_t)a, (off_t)(b - a), SYNC_FILE_RANGE_WRITE);
        return 0;
}

/* The end of the written prefix of the blob. Called on the follower, which alone changes done. */
static uint64_t follower_watermark(Download *dl) {
        Follower *f = &dl->follower;

        while (f->first_open < dl->n_parts &&
               dl->parts[f->first_open].done ==
                       dl->parts[f->first_open].end - dl->parts[f->first_open].start)
                f->first_open++;
        if (f->first_open == dl->n_parts)
                return dl->layer->size;
        return dl->parts[f->first_open].start + dl->parts[f->first_open].done;
}

static void *writer_main(void *userdata) {
        Download *dl = userdata;
        Follower *f = &dl->follower;

        pthread_mutex_lock(&f->lock);
        while (!f->error) {
                Stage *st = f->queue;
                if (!st) {
                        if (f->finish || f->abort)
                                break;
                        pthread_cond_wait(&f->cond, &f->lock);
                        continue;
                }
                f->queue = st->next;
                if (!f->queue)
                        f->queue_tail = &f->queue;
                pthread_mutex_unlock(&f->lock);
                int r = stage_write(dl, st);
                pthread_mutex_lock(&f->lock);
                if (r < 0) {
                        f->error = r;
                        stage_free(st);
                        f->n_stages--;
                        break;
                }
                dl->parts[st->part].done += st->b - st->a;
                st->next = NULL;
                *f->hashq_tail = st;
                f->hashq_tail = &st->next;
                pthread_cond_broadcast(&f->cond);
        }
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
        return NULL;
}

static void *follower_main(void *userdata) {
        Download *dl = userdata;
        Follower *f = &dl->follower;
        /* Large reads: with O_DIRECT each one waits for the disk, and the hash waits for each read. */
        const size_t bufsize = 8U << 20;
        bool direct = dl->direct_read_fd >= 0;
        uint8_t *buf = NULL;
        int r = 0;

        if (posix_memalign((void **)&buf, DIRECT_ALIGN, bufsize) != 0)
                buf = NULL;
        pthread_mutex_lock(&f->lock);
        if (!buf)
                f->error = -ENOMEM;
        while (!f->error && !f->done) {
                Stage *st = f->hashq;
                uint64_t wm = follower_watermark(dl);

                if (f->checkpoint && !f->abort) {
                        /* Counters first, then the fdatasync: every byte they claim is synced. */
                        uint64_t *snapshot = calloc(MAX(dl->n_parts, (size_t)1), sizeof(uint64_t));
                        for (size_t i = 0; snapshot && i < dl->n_parts; i++)
                                snapshot[i] = dl->parts[i].done;
                        f->checkpoint = false;
                        pthread_mutex_unlock(&f->lock);
                        uint64_t t0 = now_ns();
                        r = !snapshot ? -ENOMEM : fdatasync(dl->fd) < 0 ? -errno : write_state(dl, snapshot);
                        free(snapshot);
                        log_debug("Blob %s: checkpoint in %.3f s.", dl->layer->digest,
                                  (double)(now_ns() - t0) / 1e9);
                        pthread_mutex_lock(&f->lock);
                        if (r < 0)
                                break;
                } else if (st) {
                        /* Written stages come next: each is hashed from memory when it is next in line. */
                        f->hashq = st->next;
                        if (!f->hashq)
                                f->hashq_tail = &f->hashq;
                        bool hash = !f->abort && st->a == f->hashed;
                        pthread_mutex_unlock(&f->lock);
                        if (hash)
                                r = sha256_update(&f->hash, st->buf + (st->a - st->base), st->b - st->a);
                        pthread_mutex_lock(&f->lock);
                        if (r >= 0 && hash)
                                f->hashed = st->b;
                        /* Out of order: it is on disk, and read back when the bytes before it are. */
                        st->next = f->free_stages;
                        f->free_stages = st;
                        pthread_cond_broadcast(&f->cond);
                        if (r < 0)
                                break;
                } else if (f->abort)
                        break;
                else if (f->hashed < wm) {
                        /* Written out of order, before the bytes ahead of it: read back and hash. */
                        uint64_t from = f->hashed;
                        pthread_mutex_unlock(&f->lock);
                        size_t skip = 0;
                        ssize_t n = follower_read(dl, &direct, buf, bufsize, from, wm, &skip);
                        r = n < 0 ? (int)n : sha256_update(&f->hash, buf + skip, (size_t)n);
                        pthread_mutex_lock(&f->lock);
                        if (r < 0)
                                break;
                        f->hashed = from + (uint64_t)n;
                } else if (f->finish && f->hashed == dl->layer->size) {
                        pthread_mutex_unlock(&f->lock);
                        r = sha256_final(&f->hash, f->digest);
                        pthread_mutex_lock(&f->lock);
                        if (r < 0)
                                break;
                        f->done = true;
                } else
                        pthread_cond_wait(&f->cond, &f->lock);
        }
        if (r < 0)
                f->error = r;
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
        free(buf);
        return NULL;
}

static int follower_start(Download *dl) {
        Follower *f = &dl->follower;
        int r;

        *f = (Follower){};
        f->queue_tail = &f->queue;
        f->hashq_tail = &f->hashq;
        f->stages_max = dl->parallel_parts + 3;
        r = sha256_init(&f->hash);
        if (r < 0)
                return r;
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->cond, NULL);
        r = -pthread_create(&f->thread, NULL, follower_main, dl);
        if (r >= 0) {
                r = -pthread_create(&f->writer, NULL, writer_main, dl);
                if (r < 0) {
                        pthread_mutex_lock(&f->lock);
                        f->abort = true;
                        pthread_cond_broadcast(&f->cond);
                        pthread_mutex_unlock(&f->lock);
                        pthread_join(f->thread, NULL);
                }
        }
        if (r < 0) {
                sha256_done(&f->hash);
                pthread_cond_destroy(&f->cond);
                pthread_mutex_destroy(&f->lock);
                return r;
        }
        (void)pthread_setname_np(f->thread, "registry-hash");
        (void)pthread_setname_np(f->writer, "registry-write");
        f->running = true;
        return 0;
}

/*
 * Ends the follower once it wrote the stages handed to it: with finish, after it hashed the whole blob
 * (ret_digest receives the digest); without, at once. The parts must have handed in their stages. Returns
 * the follower's error, if it had one.
 */
static int follower_stop(Download *dl, bool finish, char ret_digest[REGISTRY_DIGEST_MAX]) {
        Follower *f = &dl->follower;
        int r;

        if (!f->running)
                return 0;
        pthread_mutex_lock(&f->lock);
        if (finish)
                f->finish = true;
        else
                f->abort = true;
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
        pthread_join(f->writer, NULL);
        pthread_join(f->thread, NULL);
        r = f->error;
        if (r >= 0 && finish && f->done)
                memcpy(ret_digest, f->digest, REGISTRY_DIGEST_MAX);
        else if (r >= 0 && finish)
                r = -ECANCELED;
        while (f->queue) {
                Stage *st = f->queue;
                f->queue = st->next;
                stage_free(st);
        }
        while (f->hashq) {
                Stage *st = f->hashq;
                f->hashq = st->next;
                stage_free(st);
        }
        while (f->free_stages) {
                Stage *st = f->free_stages;
                f->free_stages = st->next;
                stage_free(st);
        }
        for (size_t i = 0; i < dl->n_parts; i++)
                dl->parts[i].stage = stage_free(dl->parts[i].stage);
        /* Bytes received but not written are not there: the parts go on after the written ones. */
        for (size_t i = 0; i < dl->n_parts; i++)
                dl->parts[i].next = dl->parts[i].done;
        sha256_done(&f->hash);
        pthread_cond_destroy(&f->cond);
        pthread_mutex_destroy(&f->lock);
        f->running = false;
        return r;
}

/* Asks for a checkpoint every two seconds; returns the follower's error, if it had one. */
static int follower_update(Download *dl) {
        Follower *f = &dl->follower;
        bool checkpoint = now_ns() - dl->last_save > 2000000000ULL;
        int r;

        pthread_mutex_lock(&f->lock);
        r = f->error;
        if (checkpoint) {
                f->checkpoint = true;
                dl->last_save = now_ns();
                pthread_cond_broadcast(&f->cond);
        }
        pthread_mutex_unlock(&f->lock);
        return r;
}

/* A free stage for the network thread, waiting while all of them are full and being written. */
static int stage_get(Download *dl, Stage **ret) {
        Follower *f = &dl->follower;
        Stage *st = NULL;
        int r = 0;

        pthread_mutex_lock(&f->lock);
        for (;;) {
                if (f->error < 0 || f->abort) {
                        r = f->error < 0 ? f->error : -ECANCELED;
                        break;
                }
                if (f->free_stages) {
                        st = f->free_stages;
                        f->free_stages = st->next;
                        break;
                }
                if (f->n_stages < f->stages_max) {
                        st = calloc(1, sizeof(Stage));
                        if (st && posix_memalign((void **)&st->buf, DIRECT_ALIGN, STAGE_SIZE) != 0) {
                                free(st);
                                st = NULL;
                        }
                        if (!st)
                                r = -ENOMEM;
                        else
                                f->n_stages++;
                        break;
                }
                pthread_cond_wait(&f->cond, &f->lock);
        }
        pthread_mutex_unlock(&f->lock);
        if (r < 0)
                return r;
        *ret = st;
        return 0;
}

/* Hands the stage of pt to the follower for writing. */
static void stage_submit(Download *dl, Part *pt) {
        Follower *f = &dl->follower;
        Stage *st = TAKE_PTR(pt->stage);

        if (!st)
                return;
        pthread_mutex_lock(&f->lock);
        if (st->a == st->b) {
                st->next = f->free_stages;
                f->free_stages = st;
        } else {
                st->next = NULL;
                *f->queue_tail = st;
                f->queue_tail = &st->next;
        }
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
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
                dl->parts[i].done = dl->parts[i].next = v;
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

/* Adds received bytes to pt's stage, handing it to the follower whenever it is full or the part complete. */
static int part_stage(Part *pt, const char *p, size_t len) {
        Download *dl = pt->dl;
        int r;

        while (len > 0) {
                if (!pt->stage) {
                        r = stage_get(dl, &pt->stage);
                        if (r < 0)
                                return r;
                        uint64_t at = pt->start + pt->next;
                        /* Same alignment in memory as in the file, so the middle can go out directly. */
                        pt->stage->base = at / DIRECT_ALIGN * DIRECT_ALIGN;
                        pt->stage->a = pt->stage->b = at;
                        pt->stage->part = (size_t)(pt - dl->parts);
                }
                Stage *st = pt->stage;
                size_t k = (size_t)MIN(st->base + STAGE_SIZE - st->b, (uint64_t)len);
                memcpy(st->buf + (st->b - st->base), p, k);
                st->b += k;
                pt->next += k;
                p += k;
                len -= k;
                /* A full stage ends on a block boundary, so the next one starts on one. */
                if (st->b == st->base + STAGE_SIZE || pt->next == pt->end - pt->start)
                        stage_submit(dl, pt);
        }
        return 0;
}

static size_t part_write_cb(char *p, size_t size, size_t n, void *userdata) {
        Part *pt = userdata;
        Download *dl = pt->dl;
        size_t len = size * n;

        if (!pt->checked) {
                pt->checked = true;
                curl_easy_getinfo(pt->easy, CURLINFO_RESPONSE_CODE, &pt->status);
                if (pt->status == 200 && (dl->n_parts > 1 || pt->start + pt->next > 0)) {
                        /* The server ignored Range: its body starts at byte 0. */
                        dl->ranges_unsupported = true;
                        return 0;
                }
                if (pt->status == 206 && pt->content_start != pt->start + pt->next) {
                        pt->overflow = true;
                        return 0;
                }
        }
        if (pt->status != 200 && pt->status != 206)
                return len; /* an error page: dropped, the status decides */
        if (pt->next + len > pt->end - pt->start) {
                pt->overflow = true;
                return 0;
        }
        int r = part_stage(pt, p, len);
        if (r < 0) {
                dl->fatal = qd_error_set(&dl->fatal_error, r, "Failed to write blob %s: %s.",
                                         dl->layer->digest, strerror(-r));
                return 0;
        }
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
        snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-%" PRIu64, pt->start + pt->next,
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
        /* Whatever arrived gets written, so that the part can go on after it. */
        stage_submit(dl, pt);
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
        if (code == CURLE_OK && (status == 200 || status == 206) && pt->next == len) {
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
                        if (pt->next == pt->end - pt->start && !pt->easy)
                                continue;
                        all_done = false;
                        if (pt->easy || dl->active >= dl->parallel_parts || pt->retry_at > now)
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
        _cleanup_close_ int direct_fd = -EBADF, direct_read_fd = -EBADF;
        char got[REGISTRY_DIGEST_MAX];
        uint64_t t_transfers = 0, t_hash_tail = 0, hashed_at_end = 0; /* for the debug log */
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
        if (l->size >= (1U << 20)) {
                /* O_DIRECT where the file system has it (see DESIGN); we hold the lock, so the path is ours.
                 */
                direct_fd = openat(dl->store->blobs_fd, dl->data_name,
                                   O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW);
                direct_read_fd = openat(dl->store->blobs_fd, dl->data_name,
                                        O_RDONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW);
                if (direct_fd < 0 || direct_read_fd < 0) {
                        direct_fd = safe_close(direct_fd);
                        direct_read_fd = safe_close(direct_read_fd);
                }
        }
        dl->direct_fd = direct_fd;
        dl->direct_read_fd = direct_read_fd;
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
                uint64_t t_start = now_ns();
                r = run_transfers(dl, e);
                t_transfers = now_ns() - t_start;
                pthread_mutex_lock(&dl->follower.lock);
                hashed_at_end = dl->follower.hashed;
                pthread_mutex_unlock(&dl->follower.lock);
                if (r < 0) {
                        /* Keep what arrived for the next attempt. */
                        (void)follower_stop(dl, false, NULL);
                        (void)save_state(dl);
                        return r;
                }
                report(dl, REGISTRY_PROGRESS_VERIFYING, "verifying sha256 digest", true);
                r = follower_stop(dl, true, got);
                t_hash_tail = now_ns() - t_start - t_transfers;
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
        uint64_t t_commit = now_ns();
        r = store_commit_blob(dl->store, dl->fd, dl->data_name, l->digest);
        t_commit = now_ns() - t_commit;
        if (r < 0)
                return qd_error_set(e, r, "Failed to store blob %s: %s.", l->digest, strerror(-r));
        (void)unlinkat(dl->store->blobs_fd, dl->state_name, 0);
        log_debug("Blob %s: %" PRIu64 " bytes received in %.3f s (%" PRIu64 " hashed by then), hash done "
                  "%.3f s later, synced and renamed in %.3f s.",
                  l->digest, dl->transferred, (double)t_transfers / 1e9, hashed_at_end,
                  (double)t_hash_tail / 1e9, (double)t_commit / 1e9);
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
                               .direct_fd = -EBADF,
                               .direct_read_fd = -EBADF,
                               .parallel_parts = registry_config_parallel_parts(h->config, h->name.host),
                               .progress = progress,
                               .userdata = userdata,
                               .stats = &st};
                r = download_blob(&dl, e);
                st.bytes_downloaded += dl.transferred;
                for (size_t j = 0; dl.parts && j < dl.n_parts; j++)
                        stage_free(dl.parts[j].stage);
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
