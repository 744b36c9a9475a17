/* SPDX-License-Identifier: MIT */
/*
 * Hostile GGUF input: a small valid file is built byte by byte, then broken one way at a time. Each variant must
 * be rejected with the right error and a message naming the problem; none may crash (the suite also runs under
 * ASan/UBSan in CI).
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>

#include <cmocka.h>

#include "engine.h"

typedef enum Break {
        OK,
        BAD_MAGIC,
        VERSION_1,
        VERSION_BIG_ENDIAN,
        VERSION_4,
        HUGE_KV_COUNT,
        HUGE_TENSOR_COUNT,
        HUGE_KEY_LENGTH,
        EMPTY_KEY,
        NUL_IN_KEY,
        UNKNOWN_VALUE_TYPE,
        BOOL_TWO,
        HUGE_ARRAY_COUNT,
        ARRAY_UNKNOWN_ELEMENT,
        DEEP_NESTING,
        DUPLICATE_KEY,
        ALIGNMENT_WRONG_TYPE,
        ALIGNMENT_NOT_POWER_OF_TWO,
        TOO_MANY_DIMS,
        ZERO_DIM,
        OVERFLOWING_DIMS,
        RETIRED_TYPE,
        UNKNOWN_TYPE,
        ROW_NOT_BLOCK_MULTIPLE,
        MISALIGNED_OFFSET,
        OFFSET_PAST_END,
        OVERLAP,
        DUPLICATE_TENSOR,
        LONG_TENSOR_NAME,
        HUGE_STRING_LENGTH,
        _BREAK_MAX,
} Break;

static void u32(Buf *b, uint32_t v) {
        assert_int_equal(buf_append(b, &v, 4), 0);
}

static void u64(Buf *b, uint64_t v) {
        assert_int_equal(buf_append(b, &v, 8), 0);
}

static void str(Buf *b, const char *s) {
        u64(b, strlen(s));
        assert_int_equal(buf_append(b, s, strlen(s)), 0);
}

static void tensor(Buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
        str(b, name);
        u32(b, n_dims);
        for (uint32_t i = 0; i < n_dims; i++)
                u64(b, ne[i]);
        u32(b, type);
        u64(b, off);
}

/*
 * The valid file: 4 key/value pairs (a string, general.alignment, a bool, a string array) and two tensors, an
 * F32 8x2 at offset 0 (64 bytes) and a Q4_0 of 32 at offset 64 (18 bytes).
 */
static void build(Buf *b, Break k) {
        u32(b, k == BAD_MAGIC ? 0x47475546u : GGUF_MAGIC);
        u32(b, k == VERSION_1 ? 1 : k == VERSION_BIG_ENDIAN ? 0x03000000u : k == VERSION_4 ? 4 : 3);
        u64(b, k == HUGE_TENSOR_COUNT ? UINT64_MAX / 2 : 2);
        u64(b, k == HUGE_KV_COUNT ? (1ULL << 60) : k == DUPLICATE_KEY ? 5 : 4);

        if (k == HUGE_KEY_LENGTH) {
                u64(b, 1ULL << 40);
                assert_int_equal(buf_append(b, "general.architecture", 20), 0);
        } else if (k == EMPTY_KEY)
                str(b, "");
        else if (k == NUL_IN_KEY) {
                u64(b, 3);
                assert_int_equal(buf_append(b, "a\0b", 3), 0);
        } else
                str(b, "general.architecture");
        u32(b, k == UNKNOWN_VALUE_TYPE ? 13 : GGUF_TYPE_STRING);
        if (k == HUGE_STRING_LENGTH)
                u64(b, UINT64_MAX);
        else
                str(b, "llama");

        str(b, "general.alignment");
        if (k == ALIGNMENT_WRONG_TYPE) {
                u32(b, GGUF_TYPE_UINT64);
                u64(b, 32);
        } else {
                u32(b, GGUF_TYPE_UINT32);
                u32(b, k == ALIGNMENT_NOT_POWER_OF_TWO ? 24 : 32);
        }

        str(b, "test.flag");
        u32(b, GGUF_TYPE_BOOL);
        uint8_t flag = k == BOOL_TWO ? 2 : 1;
        assert_int_equal(buf_append(b, &flag, 1), 0);

        str(b, "test.list");
        u32(b, GGUF_TYPE_ARRAY);
        if (k == DEEP_NESTING) {
                for (int i = 0; i < 6; i++) {
                        u32(b, GGUF_TYPE_ARRAY);
                        u64(b, 1);
                }
                u32(b, GGUF_TYPE_UINT8);
                u64(b, 0);
        } else {
                u32(b, k == ARRAY_UNKNOWN_ELEMENT ? 99 : GGUF_TYPE_STRING);
                u64(b, k == HUGE_ARRAY_COUNT ? (1ULL << 61) : 2);
                str(b, "a");
                str(b, "bc");
        }
        if (k == DUPLICATE_KEY) {
                str(b, "test.flag");
                u32(b, GGUF_TYPE_UINT8);
                uint8_t x = 0;
                assert_int_equal(buf_append(b, &x, 1), 0);
        }

        uint64_t ne_a[5] = { 8, 2, 1, 1, 1 };
        uint32_t dims_a = 2, type_a = GGML_TYPE_F32;
        uint64_t off_a = 0, off_b = 64;
        uint64_t ne_b[1] = { 32 };
        const char *name_a = "a", *name_b = "b";
        char long_name[300];

        switch ((int)k) {
        case TOO_MANY_DIMS:
                dims_a = 5;
                break;
        case ZERO_DIM:
                ne_a[1] = 0;
                break;
        case OVERFLOWING_DIMS:
                ne_a[0] = 1ULL << 40;
                ne_a[1] = 1ULL << 40;
                break;
        case RETIRED_TYPE:
                type_a = 4;
                break;
        case UNKNOWN_TYPE:
                type_a = 1000;
                break;
        case ROW_NOT_BLOCK_MULTIPLE:
                ne_b[0] = 33;
                break;
        case MISALIGNED_OFFSET:
                off_b = 66;
                break;
        case OFFSET_PAST_END:
                off_b = 4096;
                break;
        case OVERLAP:
                off_b = 32;
                break;
        case DUPLICATE_TENSOR:
                name_b = "a";
                break;
        case LONG_TENSOR_NAME:
                memset(long_name, 'x', 299);
                long_name[299] = 0;
                name_a = long_name;
                break;
        default:
                break;
        }
        tensor(b, name_a, dims_a, ne_a, type_a, off_a);
        tensor(b, name_b, 1, ne_b, GGML_TYPE_Q4_0, off_b);

        /* Padding to 32, then 64 + 18 bytes of data padded to 96. */
        size_t pad = ALIGN_TO(b->len, (size_t)32) - b->len;
        uint8_t zeros[96] = {};
        assert_int_equal(buf_append(b, zeros, pad), 0);
        uint8_t data[96];
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (uint8_t)(i * 7 + 1);
        assert_int_equal(buf_append(b, data, sizeof(data)), 0);
}

static int open_broken(Break k, QdError *err) {
        _cleanup_(buf_free) Buf b = {};
        _cleanup_(gguf_freep) Gguf *g = NULL;

        build(&b, k);
        qd_error_clear(err);
        int r = gguf_open_memory(b.data, b.len, &g, err);
        if (r < 0) {
                assert_null(g);
                assert_true(err->msg[0] != 0);
                assert_int_equal(err->code, -r);
        }
        return r;
}

static void test_valid(void **state) {
        _cleanup_(buf_free) Buf b = {};
        _cleanup_(gguf_freep) Gguf *g = NULL;
        QdError err = {};

        build(&b, OK);
        assert_int_equal(gguf_open_memory(b.data, b.len, &g, &err), 0);
        assert_int_equal(g->n_kv, 4);
        assert_int_equal(g->n_tensors, 2);
        assert_int_equal(g->tensors[1].size, 18);
        assert_int_equal(((const uint8_t *)g->tensors[1].data)[0], (uint8_t)(64 * 7 + 1));
}

static const struct {
        Break k;
        int error;
        const char *message; /* a substring the message must contain */
} cases[] = {
        { BAD_MAGIC, EBADMSG, "Not a GGUF file" },
        { VERSION_1, EOPNOTSUPP, "version 1" },
        { VERSION_BIG_ENDIAN, EOPNOTSUPP, "Big-endian" },
        { VERSION_4, EOPNOTSUPP, "version 4" },
        { HUGE_KV_COUNT, EBADMSG, "metadata entries, more than the file can hold" },
        { HUGE_TENSOR_COUNT, EBADMSG, "tensors, more than the file can hold" },
        { HUGE_KEY_LENGTH, EBADMSG, "metadata key at byte 24 has length 1099511627776" },
        { EMPTY_KEY, EBADMSG, "metadata key at byte 24 is empty" },
        { NUL_IN_KEY, EBADMSG, "contains a NUL byte" },
        { UNKNOWN_VALUE_TYPE, EBADMSG, "unknown value type 13" },
        { BOOL_TWO, EBADMSG, "not 0 or 1" },
        { HUGE_ARRAY_COUNT, EBADMSG, "claims 2305843009213693952 elements" },
        { ARRAY_UNKNOWN_ELEMENT, EBADMSG, "unknown element type 99" },
        { DEEP_NESTING, EBADMSG, "nested more than" },
        { DUPLICATE_KEY, EBADMSG, "key 'test.flag' appears more than once" },
        { ALIGNMENT_WRONG_TYPE, EBADMSG, "is a uint64, expected uint32" },
        { ALIGNMENT_NOT_POWER_OF_TWO, EBADMSG, "is 24, not a power of two" },
        { TOO_MANY_DIMS, EBADMSG, "has 5 dimensions" },
        { ZERO_DIM, EBADMSG, "dimension 1 is 0" },
        { OVERFLOWING_DIMS, EBADMSG, "overflows" },
        { RETIRED_TYPE, EBADMSG, "unknown type id 4" },
        { UNKNOWN_TYPE, EBADMSG, "unknown type id 1000" },
        { ROW_NOT_BLOCK_MULTIPLE, EBADMSG, "row length 33 is not a multiple of the q4_0 block size 32" },
        { MISALIGNED_OFFSET, EBADMSG, "not a multiple of the alignment 32" },
        { OFFSET_PAST_END, EBADMSG, "extends past the end of the file" },
        { OVERLAP, EBADMSG, "'a' and 'b' overlap" },
        { DUPLICATE_TENSOR, EBADMSG, "tensor name 'a' appears more than once" },
        { LONG_TENSOR_NAME, EBADMSG, "the limit is 255" },
        { HUGE_STRING_LENGTH, EBADMSG, "string value at byte" },
};

static void test_broken_variants(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                QdError err = {};
                int r = open_broken(cases[i].k, &err);
                print_message("# variant %d: %s\n", cases[i].k, err.msg);
                assert_int_equal(r, -cases[i].error);
                if (!strstr(err.msg, cases[i].message))
                        fail_msg("variant %d: message \"%s\" lacks \"%s\"", cases[i].k, err.msg, cases[i].message);
        }
}

/* Every proper prefix of the valid file is rejected: truncation in the header, the metadata, the tensor
 * infos, the padding and the data section alike. */
static void test_every_truncation(void **state) {
        _cleanup_(buf_free) Buf b = {};

        build(&b, OK);
        /* The last tensor ends before the final padding; only cuts before its end break the file. */
        size_t end;
        {
                _cleanup_(gguf_freep) Gguf *g = NULL;
                assert_int_equal(gguf_open_memory(b.data, b.len, &g, NULL), 0);
                end = g->data_offset + g->tensors[1].offset + g->tensors[1].size;
                assert_true(end < b.len);
        }
        for (size_t n = 0; n < b.len; n++) {
                _cleanup_(gguf_freep) Gguf *g = NULL;
                QdError err = {};
                /* A copy of exactly n bytes, so that ASan sees any read past the end. */
                _cleanup_free_ uint8_t *copy = malloc(n ? n : 1);
                memcpy(copy, b.data, n);
                int r = gguf_open_memory(copy, n, &g, &err);
                if (n >= end) {
                        assert_int_equal(r, 0);
                        continue;
                }
                if (r != -EBADMSG)
                        fail_msg("prefix of %zu bytes: got %d (%s)", n, r, err.msg);
                if (!strstr(err.msg, "truncated") && !strstr(err.msg, "past the end") && !strstr(err.msg, "more than"))
                        fail_msg("prefix of %zu bytes: unexpected message \"%s\"", n, err.msg);
        }
}

/* Flipping any single byte must never crash: the result is either a valid file or a clean error. */
static void test_every_byte_flip(void **state) {
        _cleanup_(buf_free) Buf b = {};

        build(&b, OK);
        _cleanup_free_ uint8_t *copy = malloc(b.len);
        for (size_t i = 0; i < b.len; i++)
                for (int bit = 0; bit < 8; bit++) {
                        _cleanup_(gguf_freep) Gguf *g = NULL;
                        QdError err = {};
                        memcpy(copy, b.data, b.len);
                        copy[i] ^= (uint8_t)(1u << bit);
                        int r = gguf_open_memory(copy, b.len, &g, &err);
                        if (r < 0)
                                assert_true(err.msg[0] != 0);
                        else
                                assert_non_null(g);
                }
}

static void test_open_errors(void **state) {
        _cleanup_(gguf_freep) Gguf *g = NULL;
        QdError err = {};

        assert_int_equal(gguf_open("/nonexistent/model.gguf", &g, &err), -ENOENT);
        assert_non_null(strstr(err.msg, "/nonexistent/model.gguf"));
        qd_error_clear(&err);
        assert_int_equal(gguf_open("/", &g, &err), -EBADMSG);
        assert_non_null(strstr(err.msg, "not a regular file"));
        qd_error_clear(&err);
        assert_int_equal(gguf_open("/dev/null", &g, &err), -EBADMSG);
        qd_error_clear(&err);
        /* A file shorter than the header. */
        char path[] = "/tmp/test-gguf-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "GGUF", 4), 4);
        assert_int_equal(gguf_open_fd(fd, &g, &err), -EBADMSG);
        assert_non_null(strstr(err.msg, "less than the 24-byte header"));
        close(fd);
        unlink(path);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid),           cmocka_unit_test(test_broken_variants),
                cmocka_unit_test(test_every_truncation), cmocka_unit_test(test_every_byte_flip),
                cmocka_unit_test(test_open_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
