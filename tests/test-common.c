/* SPDX-License-Identifier: MIT */
/* common/: errno names, QdError, number and duration parsing, Buf, logging. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static void test_errno_names(void **state) {
        assert_string_equal(errno_to_name(ENOENT), "ENOENT");
        assert_string_equal(errno_to_name(-EBADMSG), "EBADMSG");
        assert_int_equal(errno_from_name("ECANCELED"), ECANCELED);
        assert_int_equal(errno_from_name("ENOPE"), -EINVAL);
        assert_null(errno_to_name(4095));
        /* Every documented protocol error has a name that maps back to itself. */
        int codes[] = { ENOENT, EEXIST, EBUSY, ENOSPC, EINVAL, EBADMSG, EMSGSIZE, ECANCELED, EOPNOTSUPP, ENOMEM };
        for (size_t i = 0; i < ELEMENTSOF(codes); i++)
                assert_int_equal(errno_from_name(errno_to_name(codes[i])), codes[i]);
}

static void test_qd_error(void **state) {
        QdError e = {};

        assert_int_equal(qd_error_set(&e, EBADMSG, "first %d", 1), -EBADMSG);
        assert_int_equal(qd_error_set(&e, -ENOENT, "second"), -ENOENT);
        assert_int_equal(e.code, EBADMSG);
        assert_string_equal(e.msg, "first 1");
        assert_int_equal(qd_error_set(NULL, ENOMEM, "nobody listens"), -ENOMEM);
        qd_error_clear(&e);
        assert_int_equal(e.code, 0);
        assert_string_equal(e.msg, "");
}

static void test_numbers(void **state) {
        uint64_t u;
        int64_t i;
        double d;

        assert_int_equal(safe_atou64("18446744073709551615", &u), 0);
        assert_true(u == UINT64_MAX);
        assert_int_equal(safe_atou64("18446744073709551616", &u), -ERANGE);
        assert_int_equal(safe_atou64("-1", &u), -EINVAL);
        assert_int_equal(safe_atou64("12x", &u), -EINVAL);
        assert_int_equal(safe_atou64("", &u), -EINVAL);
        assert_int_equal(safe_atoi64("-42", &i), 0);
        assert_int_equal(i, -42);
        assert_int_equal(safe_atoi64("4 2", &i), -EINVAL);
        assert_int_equal(safe_atod("0.25", &d), 0);
        assert_true(d == 0.25);
        assert_int_equal(safe_atod("nan", &d), -EINVAL);
        assert_int_equal(safe_atod(" 1", &d), -EINVAL);
}

static void test_durations(void **state) {
        int64_t ns;

        assert_int_equal(parse_duration_ns("5m", &ns), 0);
        assert_true(ns == 300LL * 1000000000LL);
        assert_int_equal(parse_duration_ns("300", &ns), 0);
        assert_true(ns == 300LL * 1000000000LL);
        assert_int_equal(parse_duration_ns("1h30m", &ns), 0);
        assert_true(ns == 5400LL * 1000000000LL);
        assert_int_equal(parse_duration_ns("500ms", &ns), 0);
        assert_true(ns == 500000000LL);
        assert_int_equal(parse_duration_ns("1.5s", &ns), 0);
        assert_true(ns == 1500000000LL);
        assert_int_equal(parse_duration_ns("-1", &ns), 0);
        assert_true(ns == -1000000000LL);
        assert_int_equal(parse_duration_ns("-1m", &ns), 0);
        assert_true(ns == -60000000000LL);
        assert_int_equal(parse_duration_ns("0", &ns), 0);
        assert_true(ns == 0);
        assert_int_equal(parse_duration_ns("5 minutes", &ns), -EINVAL);
        assert_int_equal(parse_duration_ns("m", &ns), -EINVAL);
        assert_int_equal(parse_duration_ns("", &ns), -EINVAL);
        assert_int_equal(parse_duration_ns("-", &ns), -EINVAL);
}

static void test_buf(void **state) {
        _cleanup_(buf_free) Buf b = {};

        assert_int_equal(buf_append_str(&b, "hello"), 0);
        assert_int_equal(buf_printf(&b, ", %s %d", "world", 42), 0);
        for (int i = 0; i < 1000; i++)
                assert_int_equal(buf_append(&b, "x", 1), 0);
        assert_int_equal(b.len, 5 + 10 + 1000);
        assert_memory_equal(b.data, "hello, world 42x", 16);
        assert_int_equal(b.data[b.len], 0);
        _cleanup_free_ char *s = buf_steal_str(&b);
        assert_int_equal(strlen(s), 1015);
        assert_null(b.data);
}

static void test_strings(void **state) {
        char buf[32];

        assert_string_equal(startswith("tokenizer.ggml.model", "tokenizer."), "ggml.model");
        assert_null(startswith("abc", "abcd"));
        assert_string_equal(endswith("model.gguf", ".gguf"), ".gguf");
        assert_null(endswith("gguf", "model.gguf"));
        assert_true(streq_ptr(NULL, NULL));
        assert_false(streq_ptr("a", NULL));
        assert_string_equal(format_bytes(buf, sizeof(buf), 999), "999 B");
        assert_string_equal(format_bytes(buf, sizeof(buf), 3825935904ULL), "3.8 GB");
        assert_string_equal(format_bytes(buf, sizeof(buf), 135000000ULL), "135 MB");
        _cleanup_strv_free_ char **l = calloc(3, sizeof(char *));
        l[0] = strdup("a");
        l[1] = strdup("b");
}

/* Entries of dir other than . and .. */
static unsigned count_entries(const char *dir) {
        DIR *d = opendir(dir);
        unsigned n = 0;

        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));)
                n += !streq(de->d_name, ".") && !streq(de->d_name, "..");
        closedir(d);
        return n;
}

static void read_is(const char *path, const char *text) {
        char buf[16] = {};
        _cleanup_close_ int in = open(path, O_RDONLY | O_CLOEXEC);

        assert_true(in >= 0);
        assert_int_equal(read(in, buf, sizeof(buf)), (ssize_t)strlen(text));
        assert_string_equal(buf, text);
}

static void test_tmpfile(void **state) {
        char dir[] = "/tmp/test-common-XXXXXX";
        _cleanup_free_ char *path = NULL, *tmp = NULL, *tmp2 = NULL, *sub = NULL;
        struct stat st;

        assert_non_null(mkdtemp(dir));
        path = strdup_printf("%s/out", dir);
        assert_int_equal(write(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644), "old", 3), 3);

        /* A replacement: the temporary file has no name (this file system has O_TMPFILE), the old content
         * stays until the commit, then the new one is there, 0644, and nothing else is in the folder. */
        int fd = tmpfile_beside(path, &tmp);
        assert_true(fd >= 0);
        assert_null(tmp);
        assert_int_equal(write(fd, "new", 3), 3);
        assert_int_equal(count_entries(dir), 1);
        read_is(path, "old");
        assert_int_equal(tmpfile_commit(fd, tmp, path, true), 0);
        close(fd);
        read_is(path, "new");
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0644);
        assert_int_equal(count_entries(dir), 1);

        /* Without replace: an existing file stays as it was (-EEXIST); a new name is written. */
        fd = tmpfile_beside(path, &tmp);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "newer", 5), 5);
        assert_int_equal(tmpfile_commit(fd, tmp, path, false), -EEXIST);
        read_is(path, "new");
        _cleanup_free_ char *fresh = strdup_printf("%s/fresh", dir);
        assert_int_equal(tmpfile_commit(fd, tmp, fresh, false), 0);
        close(fd);
        read_is(fresh, "newer");
        assert_int_equal(count_entries(dir), 2);

        /* Failures: no folder to put the temporary file in; a target that cannot be replaced (a non-empty
         * folder) leaves nothing behind. */
        _cleanup_free_ char *nowhere = strdup_printf("%s/missing/out", dir);
        assert_int_equal(tmpfile_beside(nowhere, &tmp2), -ENOENT);
        sub = strdup_printf("%s/sub", dir);
        assert_int_equal(mkdir(sub, 0755), 0);
        _cleanup_free_ char *inner = strdup_printf("%s/f", sub);
        close(open(inner, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
        fd = tmpfile_beside(sub, &tmp2);
        assert_true(fd >= 0);
        assert_true(tmpfile_commit(fd, tmp2, sub, true) < 0);
        close(fd);
        assert_int_equal(count_entries(dir), 3);

        unlink(inner);
        rmdir(sub);
        unlink(fresh);
        unlink(path);
        rmdir(dir);
}

static void test_log_levels(void **state) {
        assert_int_equal(log_level_from_string("debug"), LOG_LEVEL_DEBUG);
        assert_int_equal(log_level_from_string("err"), LOG_LEVEL_ERR);
        assert_int_equal(log_level_from_string("5"), LOG_LEVEL_NOTICE);
        assert_int_equal(log_level_from_string("loud"), -EINVAL);
        int saved = log_get_max_level();
        log_set_max_level(LOG_LEVEL_ERR);
        /* Below the threshold nothing is printed, but the error still comes back for "return log_…()". */
        assert_int_equal(log_debug_errno(ENOENT, "hidden %m"), -ENOENT);
        assert_int_equal(log_error_errno(-EIO, "shown on stderr: %m"), -EIO);
        log_set_max_level(saved);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_errno_names), cmocka_unit_test(test_qd_error),
                cmocka_unit_test(test_numbers),     cmocka_unit_test(test_durations),
                cmocka_unit_test(test_buf),         cmocka_unit_test(test_strings),
                cmocka_unit_test(test_log_levels),  cmocka_unit_test(test_tmpfile),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
