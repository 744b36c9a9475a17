/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr, one writev() per line with a "<N>" priority prefix that journald turns into the
 * record's priority. No shared buffers: each call formats on its own stack, so workers may log freely.
 */

#include <stdatomic.h>
#include <sys/uio.h>

#include "common.h"

static atomic_int log_max_level = LOG_LEVEL_INFO;

void log_set_max_level(int level) {
        atomic_store(&log_max_level, CLAMP(level, 0, LOG_LEVEL_DEBUG));
}

int log_get_max_level(void) {
        return atomic_load(&log_max_level);
}

int log_level_from_string(const char *s) {
        static const char *const names[] = {
                "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
        };

        if (!s)
                return -EINVAL;
        if (s[0] >= '0' && s[0] <= '7' && s[1] == 0)
                return s[0] - '0';
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (streq(s, names[i]))
                        return (int)i;
        if (streq(s, "error"))
                return LOG_LEVEL_ERR;
        if (streq(s, "warn"))
                return LOG_LEVEL_WARNING;
        return -EINVAL;
}

int log_internal(int level, int error, const char *file, int line, const char *func, const char *fmt, ...) {
        char prefix[8], text[2048];
        struct iovec iov[3];
        va_list ap;
        int saved = errno;

        /* %m prints the error we were given, not whatever errno happens to hold. */
        errno = abs(error);
        va_start(ap, fmt);
        int n = vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        if (n < 0)
                n = 0;
        if ((size_t)n >= sizeof(text))
                n = sizeof(text) - 1;
        /* Keep one record per line: a message with embedded newlines is flattened. */
        for (int i = 0; i < n; i++)
                if (text[i] == '\n')
                        text[i] = ' ';

        snprintf(prefix, sizeof(prefix), "<%d>", CLAMP(level, 0, 7));
        iov[0] = (struct iovec){ prefix, strlen(prefix) };
        iov[1] = (struct iovec){ text, (size_t)n };
        iov[2] = (struct iovec){ (char *)"\n", 1 };
        (void)!writev(STDERR_FILENO, iov, 3);

        (void)file;
        (void)line;
        (void)func;
        errno = saved;
        return error == 0 ? 0 : -abs(error);
}
