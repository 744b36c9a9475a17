/* SPDX-License-Identifier: MIT */
/*
 * String, number, duration and buffer helpers that libc lacks.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>
#include <time.h>

#include "common.h"

char **strv_free(char **l) {
        if (!l)
                return NULL;
        for (char **i = l; *i; i++)
                free(*i);
        free(l);
        return NULL;
}

const char *startswith(const char *s, const char *prefix) {
        size_t n = strlen(prefix);

        return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

const char *endswith(const char *s, const char *suffix) {
        size_t a = strlen(s), b = strlen(suffix);

        if (b > a)
                return NULL;
        return streq(s + a - b, suffix) ? s + a - b : NULL;
}

char *strdup_printf(const char *fmt, ...) {
        char *s = NULL;
        va_list ap;

        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        return r < 0 ? NULL : s;
}

int safe_atou64(const char *s, uint64_t *ret) {
        char *end = NULL;

        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno != 0)
                return -errno;
        if (*end != 0)
                return -EINVAL;
        *ret = v;
        return 0;
}

int safe_atoi64(const char *s, int64_t *ret) {
        char *end = NULL;

        if (!s || !(*s == '-' || *s == '+' || (*s >= '0' && *s <= '9')))
                return -EINVAL;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno != 0)
                return -errno;
        if (end == s || *end != 0)
                return -EINVAL;
        *ret = v;
        return 0;
}

int safe_atod(const char *s, double *ret) {
        char *end = NULL;

        if (!s || !*s || *s == ' ' || *s == '\t' || *s == '\n')
                return -EINVAL;
        errno = 0;
        double v = strtod(s, &end);
        if (errno != 0)
                return -errno;
        if (end == s || *end != 0 || !isfinite(v))
                return -EINVAL;
        *ret = v;
        return 0;
}

int parse_duration_ns(const char *s, int64_t *ret) {
        static const struct {
                const char *suffix;
                double ns;
        } units[] = {
                /* Longest suffix first so that "ms" is not read as "m" followed by junk. */
                { "ns", 1.0 }, { "us", 1e3 }, { "µs", 1e3 }, { "ms", 1e6 },
                { "s", 1e9 },  { "m", 60e9 }, { "h", 3600e9 },
        };
        bool negative = false;
        double total = 0;
        const char *p = s;

        if (!s || !*s)
                return -EINVAL;
        if (*p == '-' || *p == '+') {
                negative = *p == '-';
                p++;
        }
        if (!*p)
                return -EINVAL;

        /* A bare number is seconds, as Ollama's keep_alive accepts. */
        uint64_t secs;
        if (safe_atou64(p, &secs) >= 0) {
                if (secs > INT64_MAX / 1000000000ULL)
                        return -ERANGE;
                *ret = (negative ? -1 : 1) * (int64_t)secs * 1000000000LL;
                return 0;
        }

        while (*p) {
                char *end = NULL;
                if (!((*p >= '0' && *p <= '9') || *p == '.'))
                        return -EINVAL;
                double v = strtod(p, &end);
                if (end == p)
                        return -EINVAL;
                p = end;
                size_t k;
                for (k = 0; k < ELEMENTSOF(units); k++)
                        if (startswith(p, units[k].suffix))
                                break;
                if (k == ELEMENTSOF(units))
                        return -EINVAL;
                total += v * units[k].ns;
                p += strlen(units[k].suffix);
        }
        if (total > (double)INT64_MAX)
                return -ERANGE;
        *ret = (negative ? -1 : 1) * (int64_t)llround(total);
        return 0;
}

char *format_bytes(char *buf, size_t size, uint64_t bytes) {
        static const char *const units[] = { "B", "KB", "MB", "GB", "TB", "PB" };
        double v = (double)bytes;
        size_t u = 0;

        while (v >= 1000.0 && u + 1 < ELEMENTSOF(units)) {
                v /= 1000.0;
                u++;
        }
        if (u == 0)
                snprintf(buf, size, "%" PRIu64 " B", bytes);
        else
                snprintf(buf, size, "%.*f %s", v < 10 ? 1 : 0, v, units[u]);
        return buf;
}

/* The folder that holds path: "." for a bare name. */
static char *dir_of(const char *path) {
        const char *slash = strrchr(path, '/');

        if (!slash)
                return strdup(".");
        return slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
}

int tmpfile_beside(const char *path, char **ret_tmp) {
        _cleanup_free_ char *dir = dir_of(path), *tmp = NULL;
        int fd;

        if (!dir)
                return -ENOMEM;
        /* Unnamed until the commit: nothing is left behind, whatever happens to this process before it. */
        fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0) {
                *ret_tmp = NULL;
                return fd;
        }
        if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
                return -errno;
        /* A file system without O_TMPFILE: a named file beside path. */
        tmp = strdup_printf("%s.XXXXXX", path);
        if (!tmp)
                return -ENOMEM;
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        *ret_tmp = TAKE_PTR(tmp);
        return fd;
}

/* Links the unnamed file fd at path; without replace, an existing path fails with -EEXIST. */
static int link_tmpfile(int fd, const char *path, bool replace) {
        char proc[64];

        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        if (!replace)
                return linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) < 0 ? -errno : 0;
        /* linkat() never replaces: link under a free name beside path, then rename that over path. */
        for (unsigned attempt = 0; attempt < 16; attempt++) {
                uint32_t v = 0;
                if (getrandom(&v, sizeof(v), GRND_NONBLOCK) < 0)
                        v = (uint32_t)now_ns() + attempt;
                _cleanup_free_ char *name = strdup_printf("%s.%08" PRIx32, path, v);
                if (!name)
                        return -ENOMEM;
                if (linkat(AT_FDCWD, proc, AT_FDCWD, name, AT_SYMLINK_FOLLOW) < 0) {
                        if (errno == EEXIST)
                                continue;
                        return -errno;
                }
                if (rename(name, path) < 0) {
                        int r = -errno;
                        (void)unlink(name);
                        return r;
                }
                return 0;
        }
        return -EEXIST;
}

int tmpfile_commit(int fd, const char *tmp, const char *path, bool replace) {
        int r = 0;

        if (fchmod(fd, 0644) < 0 || fsync(fd) < 0)
                r = -errno;
        else if (!tmp)
                return link_tmpfile(fd, path, replace);
        else if ((replace ? rename(tmp, path) : renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE)) < 0)
                r = -errno;
        if (r < 0 && tmp)
                (void)unlink(tmp);
        return r;
}

int buf_reserve(Buf *b, size_t extra) {
        size_t need;

        if (ADD_OVERFLOW(b->len, extra, &need) || ADD_OVERFLOW(need, (size_t)1, &need))
                return -ENOMEM;
        if (need <= b->cap)
                return 0;
        size_t cap = MAX(b->cap * 2, MAX(need, (size_t)64));
        uint8_t *p = realloc(b->data, cap);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->cap = cap;
        return 0;
}

int buf_append(Buf *b, const void *p, size_t n) {
        int r = buf_reserve(b, n);
        if (r < 0)
                return r;
        if (n > 0)
                memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = 0;
        return 0;
}

int buf_append_str(Buf *b, const char *s) {
        return buf_append(b, s, strlen(s));
}

int buf_printf(Buf *b, const char *fmt, ...) {
        va_list ap, aq;

        va_start(ap, fmt);
        va_copy(aq, ap);
        int n = vsnprintf(NULL, 0, fmt, aq);
        va_end(aq);
        if (n < 0) {
                va_end(ap);
                return -EINVAL;
        }
        int r = buf_reserve(b, (size_t)n);
        if (r < 0) {
                va_end(ap);
                return r;
        }
        vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t)n;
        return 0;
}

char *buf_steal_str(Buf *b) {
        char *s = b->data ? (char *)b->data : strdup("");
        *b = (Buf){};
        return s;
}

void buf_free(Buf *b) {
        free(b->data);
        *b = (Buf){};
}

uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}
