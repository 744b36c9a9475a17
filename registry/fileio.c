/* SPDX-License-Identifier: MIT */
/*
 * SHA-256 (OpenSSL EVP) and the file primitives of the store: atomic writes, temporary files, full reads and
 * writes. Every function is thread-safe.
 *
 * DESIGN: an atomic write is temp file + fsync + rename + fsync of the directory, so that after a crash the
 * name holds the old contents or the new ones, never a prefix. Temporary files start with ".tmp-" so that
 * prune can recognise and remove the leftovers of a crash.
 */

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "registry-internal.h"

int sha256_init(Sha256 *h) {
        h->ctx = EVP_MD_CTX_new();
        if (!h->ctx)
                return -ENOMEM;
        if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
                sha256_done(h);
                return -EIO;
        }
        return 0;
}

int sha256_update(Sha256 *h, const void *p, size_t n) {
        return EVP_DigestUpdate(h->ctx, p, n) == 1 ? 0 : -EIO;
}

int sha256_final(Sha256 *h, char ret[REGISTRY_DIGEST_MAX]) {
        static const char hex[] = "0123456789abcdef";
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned n = 0;

        if (EVP_DigestFinal_ex(h->ctx, md, &n) != 1 || n != 32)
                return -EIO;
        memcpy(ret, "sha256:", 7);
        for (unsigned i = 0; i < 32; i++) {
                ret[7 + 2 * i] = hex[md[i] >> 4];
                ret[7 + 2 * i + 1] = hex[md[i] & 15];
        }
        ret[71] = 0;
        return 0;
}

void sha256_done(Sha256 *h) {
        EVP_MD_CTX_free(h->ctx);
        h->ctx = NULL;
}

int sha256_data(const void *p, size_t n, char ret[REGISTRY_DIGEST_MAX]) {
        Sha256 h;
        int r = sha256_init(&h);
        if (r < 0)
                return r;
        r = sha256_update(&h, p, n);
        if (r >= 0)
                r = sha256_final(&h, ret);
        sha256_done(&h);
        return r;
}

int sha256_fd(int fd, const atomic_bool *cancel, char ret[REGISTRY_DIGEST_MAX], uint64_t *ret_size) {
        const size_t bufsize = 1U << 20;
        _cleanup_free_ uint8_t *buf = malloc(bufsize);
        uint64_t off = 0;
        Sha256 h;
        int r;

        if (!buf)
                return -ENOMEM;
        r = sha256_init(&h);
        if (r < 0)
                return r;
        for (;;) {
                if (cancelled(cancel)) {
                        r = -ECANCELED;
                        break;
                }
                ssize_t n = pread(fd, buf, bufsize, (off_t)off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                if (n == 0) {
                        r = sha256_final(&h, ret);
                        break;
                }
                r = sha256_update(&h, buf, (size_t)n);
                if (r < 0)
                        break;
                off += (uint64_t)n;
        }
        sha256_done(&h);
        if (r >= 0 && ret_size)
                *ret_size = off;
        return r;
}

void blob_file_name(const char *digest, char ret[REGISTRY_DIGEST_MAX]) {
        snprintf(ret, REGISTRY_DIGEST_MAX, "sha256-%s", digest + 7);
}

int open_tmpfile(int dir_fd, char ret_name[32]) {
        static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";

        for (int attempt = 0; attempt < 16; attempt++) {
                uint8_t rnd[12];
                if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
                        return negative_errno();
                memcpy(ret_name, ".tmp-", 5);
                for (size_t i = 0; i < sizeof(rnd); i++)
                        ret_name[5 + i] = chars[rnd[i] % (sizeof(chars) - 1)];
                ret_name[5 + sizeof(rnd)] = 0;
                int fd = openat(dir_fd, ret_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                if (fd >= 0)
                        return fd;
                if (errno != EEXIST)
                        return -errno;
        }
        return -EEXIST;
}

int write_full(int fd, const void *p, size_t n) {
        const uint8_t *q = p;

        while (n > 0) {
                ssize_t k = write(fd, q, n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                q += k;
                n -= (size_t)k;
        }
        return 0;
}

int pwrite_full(int fd, const void *p, size_t n, uint64_t offset) {
        const uint8_t *q = p;

        while (n > 0) {
                ssize_t k = pwrite(fd, q, n, (off_t)offset);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                q += k;
                n -= (size_t)k;
                offset += (uint64_t)k;
        }
        return 0;
}

int write_file_atomic(int dir_fd, const char *name, const void *data, size_t size) {
        _cleanup_free_ char *dir = NULL;
        _cleanup_close_ int dfd_owned = -EBADF;
        const char *slash = strrchr(name, '/');
        char tmpname[32];
        int dfd = dir_fd, r;

        /* The temporary file lives in the target's directory so that rename() stays on one file system. */
        if (slash) {
                dir = strndup(name, (size_t)(slash - name));
                if (!dir)
                        return -ENOMEM;
                dfd_owned = openat(dir_fd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd_owned < 0)
                        return -errno;
                dfd = dfd_owned;
        }
        const char *base = slash ? slash + 1 : name;

        _cleanup_close_ int fd = open_tmpfile(dfd, tmpname);
        if (fd < 0)
                return fd;
        r = write_full(fd, data, size);
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (r >= 0 && renameat(dfd, tmpname, dfd, base) < 0)
                r = -errno;
        if (r < 0) {
                (void)unlinkat(dfd, tmpname, 0);
                return r;
        }
        if (fsync(dfd) < 0)
                return -errno;
        return 0;
}

int read_file_at(int dir_fd, const char *path, size_t max, char **ret, size_t *ret_size) {
        _cleanup_close_ int fd = openat(dir_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        struct stat st;

        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;
        if ((uint64_t)st.st_size > max)
                return -EMSGSIZE;
        _cleanup_free_ char *buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        size_t got = 0;
        while (got < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                got += (size_t)n;
        }
        buf[got] = 0;
        *ret = TAKE_PTR(buf);
        if (ret_size)
                *ret_size = got;
        return 0;
}

int mkdir_parents_at(int dir_fd, const char *path) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = strchr(p, '/'); s; s = strchr(s + 1, '/')) {
                *s = 0;
                if (mkdirat(dir_fd, p, 0755) >= 0) {
                        /* The new directory's entry must be durable before anything inside it is. */
                        char *slash = strrchr(p, '/');
                        if (slash)
                                *slash = 0;
                        _cleanup_close_ int parent =
                                slash ? openat(dir_fd, p, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -EBADF;
                        if (fsync(slash ? parent : dir_fd) < 0)
                                return -errno;
                        if (slash)
                                *slash = '/';
                } else if (errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        return 0;
}
