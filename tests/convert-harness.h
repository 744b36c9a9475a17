/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Helpers of the converter's tests (test-quant-convert*.c): the test data, a temporary copy of a Hugging
 * Face folder that a test may change, conversion into a memfd, and the check of a converted model's logits
 * against the reference that transformers wrote. Each fails the test (cmocka) rather than returning an
 * error.
 */

#include "quant.h"

/* A temporary copy of a data folder's files (those in files), removed by folder_free(). */
typedef struct Folder {
        char dir[64];
        int dirfd;
        const char *const *files;
        size_t n_files;
} Folder;

/* The path of name under the test data (QUANTD_TEST_DATA, else tests/data). */
char *data_path(const char *name);
/* Opens the folder name under the test data. */
int open_data_dir(const char *name);
/* Copies the file from in from_dir to to in to_dir. */
void copy_file(int from_dir, const char *from, int to_dir, const char *to);

/* Copies the n_files files of the data folder name into a new temporary folder. */
Folder *folder_new(const char *name, const char *const *files, size_t n_files);
/* Removes the copied files and the folder; NULL-safe. */
void folder_free(Folder *f);
/* Replaces the folder's file name by len bytes of data. */
void folder_write(Folder *f, const char *name, const void *data, size_t len);
/* The folder's file name in memory, NUL-terminated; *ret_len its size. */
char *folder_read(Folder *f, const char *name, size_t *ret_len);
/* Replaces the first occurrence of from with to in the folder's file name (which may be binary). */
void folder_edit(Folder *f, const char *name, const char *from, const char *to);

/* Converts the folder at dirfd with p (may be NULL) into a memfd that it closes; returns the converter's
 * result, with its message in err. */
int try_convert(int dirfd, const QuantConvertParams *p, QdError *err);
/* Converts the folder at dirfd with p (may be NULL) into a memfd and returns it; fails the test with the
 * converter's message. */
int convert_dir(int dirfd, const QuantConvertParams *p);
/* The folder's conversion fails with -error and a message that contains needle. */
void expect_error(Folder *f, int error, const char *needle);

/* The converted model in fd, run by the CPU engine in F32, gives the logits of the reference file (token
 * ids, then (n_tokens, n_vocab) logits) within tolerance relative to each row's largest logit. */
void check_logits(int fd, const char *reference, uint32_t n_vocab, double tolerance);
