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

/* ---- replacing a file atomically ---- */

/*
 * Creates an empty temporary file in path's folder and returns its descriptor (>= 0), or -errno. It is unnamed
 * (O_TMPFILE, *ret_tmp set to NULL), so a process killed before the commit leaves nothing behind; on file
 * systems without O_TMPFILE it is "path.XXXXXX" (mode 0600), named in *ret_tmp (caller frees and, on giving
 * up, unlinks).
 */
int tmpfile_beside(const char *path, char **ret_tmp);

/*
 * Makes the temporary file written through fd (tmp: its name, or NULL when unnamed) the file at path: mode
 * 0644, fsync, then in place at once. With replace an existing path is replaced; without, it is left alone
 * and the commit fails with -EEXIST. On failure path is left as it was and a named tmp is unlinked. Returns 0
 * or -errno.
 */
int tmpfile_commit(int fd, const char *tmp, const char *path, bool replace);

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

/* ---- wire protocol: msgpack over AF_UNIX, see quantd-protocol(7) ---- */

/*
 * Messages are msgpack-rpc shaped arrays, one after another on a SOCK_STREAM socket, each self-delimiting:
 *   request        [0, msgid, method, params]     msgid 1 … 2^32-1, params a map
 *   response       [1, msgid, error, result]      error nil or {code: "ENOENT", message: "…"}
 *   notification   [2, event, {id: msgid, …}]     streamed output of request msgid, before its response
 * msgid 0 is reserved: the daemon answers a frame it could not read with msgid 0 and closes the connection.
 * Descriptors travel as SCM_RIGHTS in the same sendmsg() as their message's bytes; params name them by index
 * ({fd: 0} is the first descriptor that came with the message).
 *
 * The declarations below name msgpack-c's types; include <msgpack.h> to use them. The reader, packers and
 * dispatcher may be used from any thread, each object by one thread at a time.
 */
typedef struct msgpack_object msgpack_object;
typedef struct msgpack_packer msgpack_packer;
typedef struct msgpack_sbuffer msgpack_sbuffer;
typedef struct msgpack_zone msgpack_zone;

#define PROTO_VERSION_MAJOR 1
#define PROTO_VERSION_MINOR 0
#define PROTO_FRAME_MAX_DEFAULT (16U * 1024U * 1024U) /* bytes in one message */
#define PROTO_FRAME_MIN 64U                           /* the smallest frame limit a reader accepts */
#define PROTO_FDS_MAX 16U                             /* descriptors with one message */
#define PROTO_DEPTH_MAX 32U                           /* nesting of arrays and maps */
#define PROTO_NAME_MAX 64U                            /* bytes in a method or event name */
#define PROTO_MSGID_MAX UINT32_MAX

typedef enum ProtoType {
        PROTO_REQUEST = 0,
        PROTO_RESPONSE = 1,
        PROTO_NOTIFICATION = 2,
        _PROTO_TYPE_MAX,
        _PROTO_TYPE_INVALID = -EINVAL,
} ProtoType;

/*
 * One decoded message. Everything it points to is borrowed from the ProtoReader that produced it and stays
 * valid until the next proto_reader_next() or proto_reader_free() on that reader.
 */
typedef struct ProtoMessage {
        ProtoType type;
        uint64_t msgid;                /* request, response */
        const char *name;              /* request: the method; notification: the event; NUL-terminated */
        const msgpack_object *params;  /* request, notification: a map */
        const msgpack_object *result;  /* response: the result, nil on error */
        int error;                     /* response: the positive errno of error.code, 0 on success */
        const char *error_message;     /* response: error.message, NULL on success */
        int *fds;                      /* descriptors that came with the message, owned by the reader */
        size_t n_fds;                  /* (n_fds) */
        msgpack_zone *zone;            /* the message's memory, for proto_dispatch() */
} ProtoMessage;

/*
 * Takes descriptor number index of m (as a param {fd: index} names it): the caller owns the returned fd. Returns
 * -EBADF with a sentence in err when there is no such descriptor or it was taken already.
 */
int proto_message_take_fd(ProtoMessage *m, uint64_t index, QdError *err);

/*
 * ProtoReader: splits a byte stream into messages. It validates a frame's structure and size before msgpack-c
 * allocates anything for it, so a hostile peer cannot make it reserve more than a small multiple of the frame
 * limit.
 */
typedef struct ProtoReader ProtoReader;

/* frame_max: the largest message accepted, 0 for PROTO_FRAME_MAX_DEFAULT. */
int proto_reader_new(ProtoReader **ret, size_t frame_max);
ProtoReader *proto_reader_free(ProtoReader *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(ProtoReader *, proto_reader_free);

/*
 * Reads once from the socket fd with recvmsg(), collecting passed descriptors (close-on-exec). Returns the
 * number of bytes read, 0 at end of file, -EAGAIN when a non-blocking socket has nothing, -EMSGSIZE when the
 * peer sent more descriptors than a message may carry, or another -errno.
 */
ssize_t proto_reader_fill(ProtoReader *r, int fd);

/* Appends bytes as if they had been read (tests, fuzzing, and the D-Bus front end). */
int proto_reader_feed(ProtoReader *r, const void *data, size_t size);

/*
 * Decodes the next complete message into *ret. Returns 1 with a message, 0 when more bytes are needed,
 * -EBADMSG for a malformed frame, -EMSGSIZE for one over a limit, -ENOMEM; on failure err says what was wrong
 * and the stream cannot be resynchronised (close the connection). The previous message is released first.
 */
int proto_reader_next(ProtoReader *r, ProtoMessage *ret, QdError *err);

/* Bytes received but not yet returned as messages. */
size_t proto_reader_pending(const ProtoReader *r);

/*
 * Packing. Each returns 0 or -ENOMEM. The *_begin functions pack the message's head; the caller packs the
 * rest: a request's params (one map), a response's result (one object), a notification's map entries after
 * "id" (n_more of them).
 */
int proto_pack_request_begin(msgpack_packer *pk, uint64_t msgid, const char *method);
int proto_pack_response_begin(msgpack_packer *pk, uint64_t msgid);
int proto_pack_notification_begin(msgpack_packer *pk, const char *event, uint64_t id, uint32_t n_more);
/* A complete error response; message may be NULL (then strerror's text is sent). */
int proto_pack_error(msgpack_packer *pk, uint64_t msgid, int error, const char *message);
/* s NULL packs nil. */
int proto_pack_str(msgpack_packer *pk, const char *s);
int proto_pack_kv_str(msgpack_packer *pk, const char *key, const char *value);
int proto_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t value);
int proto_pack_kv_i64(msgpack_packer *pk, const char *key, int64_t value);
int proto_pack_kv_double(msgpack_packer *pk, const char *key, double value);
int proto_pack_kv_bool(msgpack_packer *pk, const char *key, bool value);
/* Packs only the key; the caller packs the value. */
int proto_pack_key(msgpack_packer *pk, const char *key);

/* Initialises pk to append to sb (msgpack_sbuffer_write). */
void proto_packer_init(msgpack_packer *pk, msgpack_sbuffer *sb);

/*
 * Typed access to a params map, in the manner of systemd's json_dispatch(): each field names a key, its
 * expected type and where to store it (offset into userdata). A nil value counts as absent. Keys the table
 * does not name are ignored, so a newer client can talk to an older daemon.
 */
typedef enum ProtoFieldType {
        PROTO_FIELD_STRING,   /* const char *, NUL-terminated copy in zone; no embedded NUL */
        PROTO_FIELD_BOOL,     /* bool */
        PROTO_FIELD_U32,      /* uint32_t */
        PROTO_FIELD_U64,      /* uint64_t */
        PROTO_FIELD_I32,      /* int32_t */
        PROTO_FIELD_I64,      /* int64_t */
        PROTO_FIELD_DOUBLE,   /* double; integers are accepted */
        PROTO_FIELD_FLOAT,    /* float; integers are accepted */
        PROTO_FIELD_DURATION, /* int64_t nanoseconds: a number of seconds, or a string like "5m" or "-1" */
        PROTO_FIELD_FD,       /* uint64_t index of a descriptor that came with the message */
        PROTO_FIELD_MAP,      /* const msgpack_object *, a map */
        PROTO_FIELD_ARRAY,    /* const msgpack_object *, an array */
        PROTO_FIELD_ANY,      /* const msgpack_object *, any type */
        _PROTO_FIELD_TYPE_MAX,
        _PROTO_FIELD_TYPE_INVALID = -EINVAL,
} ProtoFieldType;

typedef struct ProtoField {
        const char *name;
        ProtoFieldType type;
        size_t offset;  /* offsetof() the destination in userdata */
        bool required;
} ProtoField;

/*
 * Stores the fields of the map params into userdata. params NULL or nil is an empty map. Returns 0, or -EINVAL
 * with a sentence in err naming the key, the expected and the actual type ("Parameter 'keep_alive' must be a
 * duration (seconds or a string like \"5m\"), got an array."). zone holds the copied strings (the message's).
 */
int proto_dispatch(const msgpack_object *params, const ProtoField *fields, void *userdata, msgpack_zone *zone,
                   QdError *err);

/* Looks up key in a map object; NULL when obj is not a map or lacks the key. */
const msgpack_object *proto_map_get(const msgpack_object *obj, const char *key);

/* Whether a str object equals the NUL-terminated s. */
bool proto_str_eq(const msgpack_object *obj, const char *s);

/* "a string", "an array", … for error messages. */
const char *proto_object_type_name(const msgpack_object *obj);

/*
 * Sends size bytes with one sendmsg() (MSG_NOSIGNAL), the descriptors attached to the first byte. Returns the
 * bytes sent (maybe fewer than size on a non-blocking socket; the descriptors went with the first) or -errno.
 */
ssize_t proto_send(int fd, const void *data, size_t size, const int *fds, size_t n_fds);

/* ---- protocol client (qctl, tests): one connection, blocking, single-threaded ---- */

typedef struct ProtoClient ProtoClient;

/* Connects to the socket at path (blocking, close-on-exec). */
int proto_client_connect(const char *path, ProtoClient **ret);
/* Wraps a connected socket; takes fd, also on failure. */
int proto_client_new_take_fd(int fd, ProtoClient **ret);
ProtoClient *proto_client_free(ProtoClient *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(ProtoClient *, proto_client_free);
int proto_client_fd(const ProtoClient *c);

/*
 * Sends request method with params, the bytes of one packed msgpack map (NULL for an empty map), and the
 * descriptors (copied by the kernel; the caller still owns them). *ret_msgid (may be NULL) gets its msgid.
 */
int proto_client_send(ProtoClient *c, const char *method, const void *params, size_t params_size,
                      const int *fds, size_t n_fds, uint64_t *ret_msgid);

/*
 * Waits up to timeout_ms (negative: forever) for the next message. Returns 1 with *ret (valid until the next
 * read), -ETIMEDOUT, -ECONNRESET when the daemon closed the connection, or the reader's errors with err set.
 */
int proto_client_read(ProtoClient *c, int timeout_ms, ProtoMessage *ret, QdError *err);

/* Called for each notification of the request being waited for; a negative return aborts the wait. */
typedef int (*ProtoEventHandler)(const ProtoMessage *event, void *userdata);

/*
 * Sends a request and waits for its response, handing its notifications to on_event (may be NULL). Returns 0
 * with the response in *ret (may be NULL; valid until the next read), or -errno: a response's error code with
 * its message in err, or a transport error. A frame-level error from the daemon (msgid 0) also ends the wait.
 */
int proto_client_call(ProtoClient *c, const char *method, const void *params, size_t params_size,
                      const int *fds, size_t n_fds, ProtoEventHandler on_event, void *userdata, ProtoMessage *ret,
                      QdError *err);

/*
 * Says Hello with this build's protocol version; fails with -EPROTONOSUPPORT and a sentence when the daemon
 * speaks another major version. *ret (may be NULL) gets the Hello response.
 */
int proto_client_hello(ProtoClient *c, ProtoMessage *ret, QdError *err);
