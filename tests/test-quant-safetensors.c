/* SPDX-License-Identifier: MIT */
/*
 * The safetensors reader on files this test writes: a good file with every dtype, a sharded model, and each
 * malformed header it must refuse with -EBADMSG and a message naming the tensor or file.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

typedef struct Fixture {
        char dir[64];
        int dirfd;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        if (!f)
                return -1;
        strcpy(f->dir, "/tmp/test-safetensors-XXXXXX");
        if (!mkdtemp(f->dir)) {
                free(f);
                return -1;
        }
        f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        *state = f;
        return f->dirfd < 0 ? -1 : 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        const char *names[] = {"model.safetensors", "a.safetensors", "b.safetensors", SAFETENSORS_INDEX};

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                (void)unlinkat(f->dirfd, names[i], 0);
        close(f->dirfd);
        rmdir(f->dir);
        free(f);
        return 0;
}

/* Writes name: the header's length (or declared_len when not 0), the header, then data_size bytes 0, 1, 2,
 * …. */
static void write_raw(int dirfd, const char *name, const char *header, uint64_t declared_len,
                      size_t data_size) {
        uint64_t len = declared_len ? declared_len : strlen(header);
        uint8_t le[8];
        int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        assert_true(fd >= 0);
        for (unsigned i = 0; i < 8; i++)
                le[i] = (uint8_t)(len >> (8 * i));
        assert_int_equal(write(fd, le, 8), 8);
        assert_int_equal(write(fd, header, strlen(header)), (ssize_t)strlen(header));
        for (size_t i = 0; i < data_size; i++) {
                uint8_t b = (uint8_t)i;
                assert_int_equal(write(fd, &b, 1), 1);
        }
        close(fd);
}

static void write_file(int dirfd, const char *name, const char *header, size_t data_size) {
        write_raw(dirfd, name, header, 0, data_size);
}

static void write_text(int dirfd, const char *name, const char *text) {
        int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
}

static void test_good_file(void **state) {
        Fixture *f = *state;
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        const SafetensorsTensor *t;
        QdError err = {};

        write_file(f->dirfd, "model.safetensors",
                   "{\"__metadata__\":{\"format\":\"pt\"},"
                   "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                   "\"h\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[24,32]},"
                   "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[32,40]},"
                   "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[40,40]}}",
                   40);
        assert_int_equal(safetensors_open_dir(f->dirfd, &s, &err), 0);
        assert_int_equal(safetensors_n_tensors(s), 4);
        /* Sorted by name. */
        assert_string_equal(safetensors_tensor(s, 0)->name, "b");
        assert_string_equal(safetensors_tensor(s, 3)->name, "w");
        assert_null(safetensors_tensor(s, 4));
        assert_null(safetensors_find(s, "__metadata__"));
        assert_null(safetensors_find(s, "x"));

        t = safetensors_find(s, "w");
        assert_non_null(t);
        assert_int_equal(t->type, GGML_TYPE_F32);
        assert_int_equal(t->n_dims, 2);
        assert_int_equal(t->shape[0], 2);
        assert_int_equal(t->shape[1], 3);
        assert_int_equal(t->n_elements, 6);
        assert_int_equal(t->size, 24);
        assert_int_equal(((const uint8_t *)t->data)[0], 0);

        t = safetensors_find(s, "h");
        assert_int_equal(t->type, GGML_TYPE_F16);
        assert_int_equal(t->size, 8);
        assert_int_equal(((const uint8_t *)t->data)[0], 24);

        t = safetensors_find(s, "b");
        assert_int_equal(t->type, GGML_TYPE_BF16);
        assert_int_equal(t->n_dims, 1);
        assert_int_equal(((const uint8_t *)t->data)[7], 39);

        t = safetensors_find(s, "e");
        assert_int_equal(t->n_elements, 0);
        assert_int_equal(t->size, 0);
}

/* Opens a single file written from header and data_size and expects -EBADMSG with needle in the message. */
static void expect_bad(Fixture *f, const char *header, uint64_t declared_len, size_t data_size,
                       const char *needle) {
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        QdError err = {};
        int fd, r;

        write_raw(f->dirfd, "model.safetensors", header, declared_len, data_size);
        fd = openat(f->dirfd, "model.safetensors", O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        r = safetensors_open_fd(fd, "model.safetensors", &s, &err);
        close(fd);
        if (r != -EBADMSG || !strstr(err.msg, needle))
                fail_msg("header %s: got %d '%s', wanted -EBADMSG naming '%s'", header, r, err.msg, needle);
        assert_null(s);
}

static void test_malformed(void **state) {
        Fixture *f = *state;

        /* The header's length runs past the end of the file. */
        expect_bad(f, "{}", 4096, 0, "declares a header of 4096 bytes");
        expect_bad(f, "not json", 0, 0, "not a JSON object");
        expect_bad(f, "[1,2]", 0, 0, "not a JSON object");
        /* Trailing bytes inside the declared header. */
        expect_bad(f, "{} {}", 0, 0, "not a JSON object");
        expect_bad(f, "{\"__metadata__\":[1]}", 0, 0, "__metadata__");
        expect_bad(f, "{\"t1\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 0, 8,
                   "Tensor 't1' in 'model.safetensors' has dtype 'I64'");
        expect_bad(f, "{\"t2\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, "'t2'");
        expect_bad(f, "{\"t3\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 4, "'t3'");
        expect_bad(f, "{\"t4\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 0, 4, "'t4'");
        expect_bad(f, "{\"t5\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 0, 4, "'t5'");
        expect_bad(f, "{\"t6\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 0,
                   4, "'t6'");
        expect_bad(f, "{\"t7\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 0, 4,
                   "Tensor 't7' in 'model.safetensors' has data_offsets that begin (4) after they end (0).");
        expect_bad(f, "{\"t8\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 4,
                   "Tensor 't8' in 'model.safetensors' ends at byte 8");
        expect_bad(f, "{\"t9\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 0, 8,
                   "Tensor 't9' in 'model.safetensors' has 4 bytes of data but its shape and dtype need 8.");
        expect_bad(f, "{\"ta\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 0, 4, "'ta'");
        expect_bad(f, "{\"tb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 0, 4, "'tb'");
        expect_bad(f,
                   "{\"tc\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
                   0, 4, "'tc'");
        expect_bad(f, "{\"td\":[]}", 0, 0, "'td'");
        expect_bad(f,
                   "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                   0, 12, "Tensors 'x' and 'y' in 'model.safetensors' share bytes of data.");
}

static void test_short_file(void **state) {
        Fixture *f = *state;
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        QdError err = {};

        write_text(f->dirfd, "model.safetensors", "abc");
        assert_int_equal(safetensors_open_dir(f->dirfd, &s, &err), -EBADMSG);
        assert_non_null(strstr(err.msg, "too short"));
}

static void test_missing(void **state) {
        Fixture *f = *state;
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        QdError err = {};

        assert_int_equal(safetensors_open_dir(f->dirfd, &s, &err), -ENOENT);
        assert_non_null(strstr(err.msg, "model.safetensors"));
        assert_int_equal(safetensors_open_fd(-1, NULL, &s, NULL), -EINVAL);
}

static void write_shards(Fixture *f) {
        write_file(f->dirfd, "a.safetensors",
                   "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"y\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]}}",
                   12);
        write_file(f->dirfd, "b.safetensors",
                   "{\"z\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 6);
}

static void test_sharded(void **state) {
        Fixture *f = *state;
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        QdError err = {};

        write_shards(f);
        write_text(f->dirfd, SAFETENSORS_INDEX,
                   "{\"metadata\":{\"total_size\":18},\"weight_map\":{\"x\":\"a.safetensors\","
                   "\"y\":\"a.safetensors\",\"z\":\"b.safetensors\"}}");
        assert_int_equal(safetensors_open_dir(f->dirfd, &s, &err), 0);
        assert_int_equal(safetensors_n_tensors(s), 3);
        assert_int_equal(safetensors_find(s, "z")->type, GGML_TYPE_BF16);
        assert_int_equal(((const uint8_t *)safetensors_find(s, "z")->data)[5], 5);
        assert_int_equal(((const uint8_t *)safetensors_find(s, "y")->data)[0], 8);
}

static void expect_bad_index(Fixture *f, const char *index, const char *needle) {
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        QdError err = {};
        int r;

        write_text(f->dirfd, SAFETENSORS_INDEX, index);
        r = safetensors_open_dir(f->dirfd, &s, &err);
        if (r != -EBADMSG || !strstr(err.msg, needle))
                fail_msg("index %s: got %d '%s', wanted -EBADMSG naming '%s'", index, r, err.msg, needle);
}

static void test_sharded_bad(void **state) {
        Fixture *f = *state;
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        QdError err = {};

        write_shards(f);
        expect_bad_index(f, "{}", "no weight_map");
        expect_bad_index(f, "[]", "not a JSON object");
        expect_bad_index(f, "{\"weight_map\":{\"x\":1}}", "tensor 'x'");
        expect_bad_index(f, "{\"weight_map\":{\"x\":\"../a.safetensors\"}}", "'../a.safetensors'");
        expect_bad_index(f, "{\"weight_map\":{\"x\":\"..\"}}", "not a file in the folder");
        /* y and z are in the shards but the index does not list them. */
        expect_bad_index(f, "{\"weight_map\":{\"x\":\"a.safetensors\",\"z\":\"b.safetensors\"}}",
                         "Tensor 'y' is in a shard but not in");
        /* w is listed but in no shard. */
        expect_bad_index(f,
                         "{\"weight_map\":{\"w\":\"a.safetensors\",\"x\":\"a.safetensors\","
                         "\"y\":\"a.safetensors\",\"z\":\"b.safetensors\"}}",
                         "lists tensor 'w'");
        /* x in two shards. */
        write_file(f->dirfd, "b.safetensors",
                   "{\"x\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 6);
        expect_bad_index(
                f,
                "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"a.safetensors\",\"z\":\"b.safetensors\"}}",
                "Tensor 'x' appears in more than one file.");
        /* A shard's own header is validated too, and named. */
        write_file(f->dirfd, "b.safetensors",
                   "{\"z\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 6);
        expect_bad_index(
                f,
                "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"a.safetensors\",\"z\":\"b.safetensors\"}}",
                "Tensor 'z' in 'b.safetensors'");
        /* A missing shard. */
        unlinkat(f->dirfd, "b.safetensors", 0);
        write_text(f->dirfd, SAFETENSORS_INDEX, "{\"weight_map\":{\"z\":\"b.safetensors\"}}");
        assert_int_equal(safetensors_open_dir(f->dirfd, &s, &err), -ENOENT);
        assert_non_null(strstr(err.msg, "b.safetensors"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_good_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_short_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_sharded, setup, teardown),
                cmocka_unit_test_setup_teardown(test_sharded_bad, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
