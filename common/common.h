/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * common: what every quantd component needs and libc lacks.
 *
 * Cleanup macros in the systemd manner (_cleanup_free_, TAKE_PTR), logging to stderr with the "<N>" priority
 * prefixes journald understands, the errno names used on the wire, an error-with-message carrier (QdError) for
 * library code that must not log, and a few string and buffer helpers.
 *
 * Every function here may be called from any thread.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- attributes and small macros ---- */

#define _cleanup_(f) __attribute__((__cleanup__(f)))
#define _unused_ __attribute__((__unused__))
#define _printf_(a, b) __attribute__((__format__(printf, a, b)))
#define _likely_(x) (__builtin_expect(!!(x), 1))
#define _unlikely_(x) (__builtin_expect(!!(x), 0))
#define _pure_ __attribute__((__pure__))
#define _public_ __attribute__((__visibility__("default")))
#define _noreturn_ __attribute__((__noreturn__))
#define _fallthrough_ __attribute__((__fallthrough__))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : (x) > (hi) ? (hi) : (x))
#define ALIGN_TO(x, a) (((x) + (a) - 1) / (a) * (a))
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* Takes the pointer out of a variable so that its cleanup handler does nothing. */
#define TAKE_PTR(p)                                                                                             \
        ({                                                                                                      \
                __typeof__(p) *_pp_ = &(p);                                                                     \
                __typeof__(p) _p_ = *_pp_;                                                                      \
                *_pp_ = NULL;                                                                                   \
                _p_;                                                                                            \
        })

#define TAKE_FD(fd)                                                                                             \
        ({                                                                                                      \
                int *_fdp_ = &(fd);                                                                             \
                int _fd_ = *_fdp_;                                                                              \
                *_fdp_ = -EBADF;                                                                                \
                _fd_;                                                                                           \
        })

/* Defines func##p(type *p) that calls func(*p) when *p is not NULL, for _cleanup_(). */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                                                                 \
        static inline void func##p(type *p) {                                                                   \
                if (*p)                                                                                         \
                        func(*p);                                                                               \
        }                                                                                                       \
        struct __useless_struct_to_allow_trailing_semicolon__

static inline void freep(void *p) {
        free(*(void **)p);
}

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void)close(fd);
                errno = saved;
        }
        return -EBADF;
}

static inline void closep(int *fd) {
        safe_close(*fd);
}

static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}

#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Returns -errno, never 0: for calls that set errno on failure but may leave it at 0. */
static inline int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}

/* Frees a NULL-terminated array of strings and the array. Returns NULL. */
char **strv_free(char **l);
DEFINE_TRIVIAL_CLEANUP_FUNC(char **, strv_free);
#define _cleanup_strv_free_ _cleanup_(strv_freep)

/* ---- logging ---- */

/* syslog priorities, as in <syslog.h>, without pulling it in. */
enum {
        LOG_LEVEL_ERR = 3,
        LOG_LEVEL_WARNING = 4,
        LOG_LEVEL_NOTICE = 5,
        LOG_LEVEL_INFO = 6,
        LOG_LEVEL_DEBUG = 7,
};

/* Sets the most verbose priority that is printed (default LOG_LEVEL_INFO). */
void log_set_max_level(int level);
int log_get_max_level(void);

/* Parses "err", "warning", "notice", "info", "debug" or a digit 0–7. Returns the level or -EINVAL. */
int log_level_from_string(const char *s);

/*
 * Writes one line "<N>message\n" to stderr with a single writev(), so lines from several threads never mix.
 * error is an errno value (either sign) made available to %m; returns -abs(error), or 0 when error is 0, so
 * that "return log_error_errno(r, "Failed to …: %m");" works.
 */
int log_internal(int level, int error, const char *file, int line, const char *func, const char *fmt, ...)
        _printf_(6, 7);

#define log_full_errno(level, error, ...)                                                                      \
        ({                                                                                                      \
                int _level_ = (level), _e_ = (error);                                                           \
                _level_ <= log_get_max_level()                                                                  \
                        ? log_internal(_level_, _e_, __FILE__, __LINE__, __func__, __VA_ARGS__)                \
                        : (_e_ == 0 ? 0 : -abs(_e_));                                                           \
        })
#define log_full(level, ...) (void)log_full_errno(level, 0, __VA_ARGS__)

#define log_debug(...) log_full(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_notice(...) log_full(LOG_LEVEL_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_LEVEL_ERR, __VA_ARGS__)

#define log_debug_errno(e, ...) log_full_errno(LOG_LEVEL_DEBUG, e, __VA_ARGS__)
#define log_info_errno(e, ...) log_full_errno(LOG_LEVEL_INFO, e, __VA_ARGS__)
#define log_notice_errno(e, ...) log_full_errno(LOG_LEVEL_NOTICE, e, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_LEVEL_WARNING, e, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_LEVEL_ERR, e, __VA_ARGS__)

#define log_oom() log_error_errno(ENOMEM, "Out of memory.")

/* ---- errno names ---- */

/* "ENOENT" for ENOENT (either sign); NULL for a value without a name in our table. */
const char *errno_to_name(int error);

/* The positive errno for a name such as "ENOENT", or -EINVAL when the name is unknown. */
int errno_from_name(const char *name);

/* ---- errors with a message, for library code that does not log ---- */

/*
 * Library folders (engine, quant, registry) report failures as a negative errno plus, when the caller passes a
 * QdError, one sentence saying what went wrong. The daemon turns both into a log line or an error reply.
 */
typedef struct QdError {
        int code;       /* positive errno, 0 when nothing was set */
        char msg[512];  /* NUL-terminated sentence, without a trailing newline */
} QdError;

/*
 * Records error (either sign) and a formatted message in e (which may be NULL); the first error recorded
 * wins, so that a low-level message is not overwritten by a vaguer one. Returns -abs(error).
 */
int qd_error_set(QdError *e, int error, const char *fmt, ...) _printf_(3, 4);

/* Clears e. */
void qd_error_clear(QdError *e);

/* ---- strings ---- */

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}

static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return streq(a, b);
}

static inline const char *strempty(const char *s) {
        return s ? s : "";
}

static inline const char *strna(const char *s) {
        return s ? s : "n/a";
}

/* Returns a pointer just after prefix in s, or NULL when s does not start with it. */
const char *startswith(const char *s, const char *prefix);
const char *endswith(const char *s, const char *suffix);

/* asprintf() that returns NULL on failure. */
char *strdup_printf(const char *fmt, ...) _printf_(1, 2);

/* Parses a decimal unsigned integer with no sign, whitespace or trailing bytes. */
int safe_atou64(const char *s, uint64_t *ret);
int safe_atoi64(const char *s, int64_t *ret);
int safe_atod(const char *s, double *ret);

/*
 * Parses a duration as Ollama and Go print them: "300" (seconds), "1.5s", "500ms", "5m", "1h30m", "-1", "-1m".
 * Stores nanoseconds; a negative duration stays negative ("keep forever" for keep_alive).
 */
int parse_duration_ns(const char *s, int64_t *ret);

/* Formats bytes as "1.2 GB" (decimal units, as Ollama prints sizes) into buf. Returns buf. */
char *format_bytes(char *buf, size_t size, uint64_t bytes);

/* ---- growable byte buffer ---- */

typedef struct Buf {
        uint8_t *data; /* (cap) bytes, the first len in use; NUL-terminated when non-empty for text use */
        size_t len;
        size_t cap;
} Buf;

/* Makes room for extra more bytes plus a NUL. Returns 0 or -ENOMEM. */
int buf_reserve(Buf *b, size_t extra);
int buf_append(Buf *b, const void *p, size_t n);
int buf_append_str(Buf *b, const char *s);
int buf_printf(Buf *b, const char *fmt, ...) _printf_(2, 3);
/* Returns the contents as a NUL-terminated string owned by the caller and empties b. */
char *buf_steal_str(Buf *b);
void buf_free(Buf *b);

/* ---- overflow-checked arithmetic ---- */

#define MUL_OVERFLOW(a, b, res) __builtin_mul_overflow(a, b, res)
#define ADD_OVERFLOW(a, b, res) __builtin_add_overflow(a, b, res)

/* ---- time ---- */

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);
