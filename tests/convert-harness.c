/* SPDX-License-Identifier: MIT */
/*
 * The converter's tests' helpers (see convert-harness.h): shared by test-quant-convert.c (BPE folders) and
 * test-quant-convert-spm.c (SentencePiece folders), which copy, change and convert folders alike.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert-harness.h"

char *data_path(const char *name) {
        const char *dir = getenv("QUANTD_TEST_DATA");
        return strdup_printf("%s/%s", dir ? dir : "tests/data", name);
}

int open_data_dir(const char *name) {
        _cleanup_free_ char *path = data_path(name);
        int dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (dirfd < 0)
                fail_msg("Cannot open %s: %m", path);
        return dirfd;
}

void copy_file(int from_dir, const char *from, int to_dir, const char *to) {
        int in = openat(from_dir, from, O_RDONLY | O_CLOEXEC), out;
        char buf[65536];
        ssize_t k;

        assert_true(in >= 0);
        out = openat(to_dir, to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(out >= 0);
        while ((k = read(in, buf, sizeof(buf))) > 0)
                assert_int_equal(write(out, buf, (size_t)k), k);
        close(in);
        close(out);
}

Folder *folder_new(const char *name, const char *const *files, size_t n_files) {
        Folder *f = calloc(1, sizeof(Folder));
        int src = open_data_dir(name);

        assert_non_null(f);
        f->files = files;
        f->n_files = n_files;
        strcpy(f->dir, "/tmp/test-convert-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(f->dirfd >= 0);
        for (size_t i = 0; i < n_files; i++)
                copy_file(src, files[i], f->dirfd, files[i]);
        close(src);
        return f;
}

void folder_free(Folder *f) {
        if (!f)
                return;
        for (size_t i = 0; i < f->n_files; i++)
                (void)unlinkat(f->dirfd, f->files[i], 0);
        close(f->dirfd);
        rmdir(f->dir);
        free(f);
}

void folder_write(Folder *f, const char *name, const void *data, size_t len) {
        int fd = openat(f->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, len), (ssize_t)len);
        close(fd);
}

char *folder_read(Folder *f, const char *name, size_t *ret_len) {
        int fd = openat(f->dirfd, name, O_RDONLY | O_CLOEXEC);
        struct stat st;
        char *buf;
        ssize_t k;

        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        buf = calloc(1, (size_t)st.st_size + 1);
        assert_non_null(buf);
        k = read(fd, buf, (size_t)st.st_size);
        assert_int_equal(k, st.st_size);
        close(fd);
        *ret_len = (size_t)k;
        return buf;
}

void folder_edit(Folder *f, const char *name, const char *from, const char *to) {
        size_t len, head, from_len = strlen(from), to_len = strlen(to);
        _cleanup_free_ char *text = folder_read(f, name, &len), *out = NULL;
        char *at = memmem(text, len, from, from_len);

        if (!at)
                fail_msg("'%s' not in %s", from, name);
        head = (size_t)(at - text);
        out = calloc(1, len - from_len + to_len + 1);
        assert_non_null(out);
        memcpy(out, text, head);
        memcpy(out + head, to, to_len);
        memcpy(out + head + to_len, at + from_len, len - head - from_len);
        folder_write(f, name, out, len - from_len + to_len);
}

int try_convert(int dirfd, const QuantConvertParams *p, QdError *err) {
        int fd = memfd_create("converted", MFD_CLOEXEC), r;

        assert_true(fd >= 0);
        r = quant_convert_hf(dirfd, fd, p, err);
        close(fd);
        return r;
}

int convert_dir(int dirfd, const QuantConvertParams *p) {
        QdError err = {};
        int fd = memfd_create("converted", MFD_CLOEXEC), r;

        assert_true(fd >= 0);
        r = quant_convert_hf(dirfd, fd, p, &err);
        if (r < 0)
                fail_msg("conversion failed: %d %s", r, err.msg);
        return fd;
}

void expect_error(Folder *f, int error, const char *needle) {
        QdError err = {};
        int r = try_convert(f->dirfd, NULL, &err);

        if (r != -error || !strstr(err.msg, needle))
                fail_msg("got %d '%s', wanted %d with '%s'", r, err.msg, -error, needle);
}

/* Reads the reference: the token ids and their (n_tokens, n_vocab) logits. */
static float *read_reference(const char *name, int32_t *tokens, uint32_t *ret_n, uint32_t n_vocab) {
        _cleanup_free_ char *path = data_path(name);
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        float *logits;
        uint32_t n;

        assert_non_null(f);
        assert_int_equal(fscanf(f, "tokens %u", &n), 1);
        assert_true(n > 0 && n <= 16);
        for (uint32_t i = 0; i < n; i++)
                assert_int_equal(fscanf(f, "%d", &tokens[i]), 1);
        logits = calloc((size_t)n * n_vocab, sizeof(float));
        assert_non_null(logits);
        for (size_t i = 0; i < (size_t)n * n_vocab; i++)
                assert_int_equal(fscanf(f, "%f", &logits[i]), 1);
        *ret_n = n;
        return logits;
}

void check_logits(int fd, const char *reference, uint32_t n_vocab, double tolerance) {
        EngineModelParams mp = engine_model_params_default();
        EngineModel *m = NULL;
        EngineSeq *seq = NULL;
        QdError err = {};
        int32_t tokens[16];
        uint32_t n;
        _cleanup_free_ float *want = NULL, *got = NULL;
        double worst = 0;

        mp.backend = "cpu";
        mp.n_threads = 1;
        mp.kv_type = GGML_TYPE_F32;
        mp.f32_activations = true;
        if (engine_model_load_fd(fd, &mp, &m, &err) < 0)
                fail_msg("load failed: %s", err.msg);
        assert_int_equal(engine_model_info(m)->n_vocab, n_vocab);
        want = read_reference(reference, tokens, &n, n_vocab);
        got = calloc((size_t)n * n_vocab, sizeof(float));
        assert_non_null(got);
        assert_int_equal(engine_seq_new(m, 64, &seq), 0);
        if (engine_decode_all(m, seq, tokens, n, got, &err) < 0)
                fail_msg("decode failed: %s", err.msg);
        for (size_t i = 0; i < (size_t)n * n_vocab; i++) {
                /* Relative to the row's largest logit, so that logits near 0 do not dominate. */
                double scale = 0;
                size_t row = i / n_vocab;

                for (uint32_t j = 0; j < n_vocab; j++)
                        scale = fmax(scale, fabs(want[row * n_vocab + j]));
                worst = fmax(worst, fabs((double)got[i] - want[i]) / scale);
        }
        print_message("# worst relative logit error %.3g\n", worst);
        assert_true(worst < tolerance);
        engine_seq_free(seq);
        engine_model_unref(m);
}
