/* SPDX-License-Identifier: MIT */
/*
 * safetensors: reads Hugging Face's tensor files (one file, or shards listed by
 * model.safetensors.index.json) through descriptors, maps each file read-only and validates its header
 * before any tensor is handed out.
 *
 * DESIGN: a file is an 8-byte little-endian header length, that many bytes of JSON mapping each tensor name
 * to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the byte after the header), then the
 * data. Everything a converter would trust later is checked here once: the header inside the file, known
 * dtypes, begin <= end inside the data, end - begin equal to the element count times the dtype's size, and
 * no two tensors sharing bytes. The daemon hands us descriptors, never paths, so a folder is a dirfd and
 * shard names from the index are opened with openat() and may not contain '/'.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf-internal.h"

/* A header larger than this is not a model we want to parse (the largest real ones are a few MB). */
#define SAFETENSORS_HEADER_MAX (100U * 1024U * 1024U)

typedef struct SafetensorsMap {
        void *base;
        size_t size;
} SafetensorsMap;

struct Safetensors {
        SafetensorsMap *maps; /* (n_maps) one per file */
        size_t n_maps;
        SafetensorsTensor *tensors; /* (n_tensors) sorted by name */
        size_t n_tensors;
};

Safetensors *safetensors_free(Safetensors *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < s->n_tensors; i++)
                free(s->tensors[i].name);
        free(s->tensors);
        for (size_t i = 0; i < s->n_maps; i++)
                if (s->maps[i].base)
                        munmap(s->maps[i].base, s->maps[i].size);
        free(s->maps);
        free(s);
        return NULL;
}

static int dtype_from_name(const char *s, uint32_t *ret_type, size_t *ret_size) {
        if (streq(s, "F32")) {
                *ret_type = GGML_TYPE_F32;
                *ret_size = 4;
        } else if (streq(s, "F16")) {
                *ret_type = GGML_TYPE_F16;
                *ret_size = 2;
        } else if (streq(s, "BF16")) {
                *ret_type = GGML_TYPE_BF16;
                *ret_size = 2;
        } else
                return -EOPNOTSUPP;
        return 0;
}

static int get_u64(json_object *o, uint64_t *ret) {
        int64_t v;

        if (!json_object_is_type(o, json_type_int))
                return -EBADMSG;
        errno = 0;
        v = json_object_get_int64(o);
        /* json-c clamps values beyond int64 and says so in errno; both are no offset we can hold. */
        if (v < 0 || errno != 0)
                return -EBADMSG;
        *ret = (uint64_t)v;
        return 0;
}

static int parse_tensor(const char *label, const char *name, json_object *desc, const uint8_t *data,
                        uint64_t data_size, SafetensorsTensor *t, uint64_t *ret_begin, QdError *err) {
        json_object *dtype, *shape, *offsets;
        uint64_t begin, end, n = 1, bytes;
        size_t esize, len;
        int r;

        if (!json_object_is_type(desc, json_type_object) ||
            !json_object_object_get_ex(desc, "dtype", &dtype) ||
            !json_object_object_get_ex(desc, "shape", &shape) ||
            !json_object_object_get_ex(desc, "data_offsets", &offsets))
                return qd_error_set(err, EBADMSG,
                                    "Tensor '%s' in '%s' needs dtype, shape and data_offsets in the header.",
                                    name, label);
        if (!json_object_is_type(dtype, json_type_string))
                return qd_error_set(err, EBADMSG, "Tensor '%s' in '%s' has a dtype that is not a string.",
                                    name, label);
        r = dtype_from_name(json_object_get_string(dtype), &t->type, &esize);
        if (r < 0)
                return qd_error_set(
                        err, EBADMSG,
                        "Tensor '%s' in '%s' has dtype '%s'; only F32, F16 and BF16 can be converted.", name,
                        label, json_object_get_string(dtype));

        if (!json_object_is_type(shape, json_type_array))
                return qd_error_set(err, EBADMSG, "Tensor '%s' in '%s' has a shape that is not an array.",
                                    name, label);
        len = json_object_array_length(shape);
        if (len > SAFETENSORS_MAX_DIMS)
                return qd_error_set(err, EBADMSG, "Tensor '%s' in '%s' has %zu dimensions, more than %u.",
                                    name, label, len, SAFETENSORS_MAX_DIMS);
        t->n_dims = (uint32_t)len;
        for (size_t i = 0; i < len; i++) {
                if (get_u64(json_object_array_get_idx(shape, i), &t->shape[i]) < 0)
                        return qd_error_set(
                                err, EBADMSG,
                                "Tensor '%s' in '%s' has a shape entry that is not a non-negative "
                                "integer.",
                                name, label);
                if (MUL_OVERFLOW(n, t->shape[i], &n))
                        return qd_error_set(err, EBADMSG,
                                            "Tensor '%s' in '%s' has a shape too large to hold.", name,
                                            label);
        }
        t->n_elements = n;

        if (!json_object_is_type(offsets, json_type_array) || json_object_array_length(offsets) != 2 ||
            get_u64(json_object_array_get_idx(offsets, 0), &begin) < 0 ||
            get_u64(json_object_array_get_idx(offsets, 1), &end) < 0)
                return qd_error_set(err, EBADMSG, "Tensor '%s' in '%s' needs data_offsets [begin, end].",
                                    name, label);
        if (begin > end)
                return qd_error_set(err, EBADMSG,
                                    "Tensor '%s' in '%s' has data_offsets that begin (%" PRIu64
                                    ") after they end (%" PRIu64 ").",
                                    name, label, begin, end);
        if (end > data_size)
                return qd_error_set(err, EBADMSG,
                                    "Tensor '%s' in '%s' ends at byte %" PRIu64
                                    " of data, beyond the %" PRIu64 " bytes the file holds.",
                                    name, label, end, data_size);
        if (MUL_OVERFLOW(n, (uint64_t)esize, &bytes) || bytes != end - begin)
                return qd_error_set(err, EBADMSG,
                                    "Tensor '%s' in '%s' has %" PRIu64
                                    " bytes of data but its shape and dtype "
                                    "need %" PRIu64 ".",
                                    name, label, end - begin, n * esize);

        t->name = strdup(name);
        if (!t->name)
                return -ENOMEM;
        t->data = data + begin;
        t->size = (size_t)bytes;
        *ret_begin = begin;
        return 0;
}

typedef struct Span {
        uint64_t begin, end;
        const char *name;
} Span;

static int span_cmp(const void *a, const void *b) {
        const Span *x = a, *y = b;

        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        return x->end < y->end ? -1 : x->end > y->end;
}

static int tensor_cmp(const void *a, const void *b) {
        return strcmp(((const SafetensorsTensor *)a)->name, ((const SafetensorsTensor *)b)->name);
}

/* Maps fd, validates its header and appends its tensors and map to s. label names the file in messages. */
static int add_file(Safetensors *s, int fd, const char *label, QdError *err) {
        _cleanup_(json_object_putp) json_object *root = NULL;
        _cleanup_free_ Span *spans = NULL;
        json_tokener *tok;
        SafetensorsMap *maps;
        const uint8_t *base;
        uint64_t hlen, data_size;
        size_t n_new = 0, n_spans = 0;
        struct stat st;
        int r;

        if (fstat(fd, &st) < 0)
                return qd_error_set(err, errno, "Failed to stat '%s': %s", label, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return qd_error_set(err, EBADMSG, "'%s' is not a regular file.", label);
        if (st.st_size < 8)
                return qd_error_set(err, EBADMSG, "'%s' is too short to be a safetensors file.", label);

        maps = reallocarray(s->maps, s->n_maps + 1, sizeof(SafetensorsMap));
        if (!maps)
                return -ENOMEM;
        s->maps = maps;
        base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (base == MAP_FAILED)
                return qd_error_set(err, errno, "Failed to map '%s': %s", label, strerror(errno));
        s->maps[s->n_maps++] = (SafetensorsMap){(void *)base, (size_t)st.st_size};

        hlen = 0;
        for (unsigned i = 0; i < 8; i++)
                hlen |= (uint64_t)base[i] << (8 * i);
        if (hlen > (uint64_t)st.st_size - 8 || hlen > SAFETENSORS_HEADER_MAX)
                return qd_error_set(err, EBADMSG,
                                    "'%s' declares a header of %" PRIu64 " bytes but holds only %" PRIu64
                                    ".",
                                    label, hlen, (uint64_t)st.st_size - 8);
        data_size = (uint64_t)st.st_size - 8 - hlen;

        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        root = json_tokener_parse_ex(tok, (const char *)base + 8, (int)hlen);
        r = json_tokener_get_error(tok) == json_tokener_success && root &&
            (size_t)json_tokener_get_parse_end(tok) == hlen;
        json_tokener_free(tok);
        if (!r || !json_object_is_type(root, json_type_object))
                return qd_error_set(err, EBADMSG, "'%s' has a header that is not a JSON object.", label);

        n_new = (size_t)json_object_object_length(root);
        {
                SafetensorsTensor *t =
                        reallocarray(s->tensors, s->n_tensors + n_new, sizeof(SafetensorsTensor));
                if (!t)
                        return -ENOMEM;
                s->tensors = t;
        }
        spans = calloc(n_new ? n_new : 1, sizeof(Span));
        if (!spans)
                return -ENOMEM;

        json_object_object_foreach(root, key, val) {
                SafetensorsTensor *t = &s->tensors[s->n_tensors];
                uint64_t begin = 0;

                if (streq(key, "__metadata__")) {
                        if (!json_object_is_type(val, json_type_object))
                                return qd_error_set(err, EBADMSG,
                                                    "'%s' has __metadata__ that is not an object.", label);
                        continue;
                }
                *t = (SafetensorsTensor){};
                r = parse_tensor(label, key, val, base + 8 + hlen, data_size, t, &begin, err);
                if (r < 0)
                        return r;
                s->n_tensors++;
                spans[n_spans++] = (Span){begin, begin + t->size, t->name};
        }

        qsort(spans, n_spans, sizeof(Span), span_cmp);
        for (size_t i = 1; i < n_spans; i++)
                if (spans[i].begin < spans[i - 1].end && spans[i].begin < spans[i].end)
                        return qd_error_set(err, EBADMSG,
                                            "Tensors '%s' and '%s' in '%s' share bytes of data.",
                                            spans[i - 1].name, spans[i].name, label);
        return 0;
}

static int finish(Safetensors *s, QdError *err) {
        qsort(s->tensors, s->n_tensors, sizeof(SafetensorsTensor), tensor_cmp);
        for (size_t i = 1; i < s->n_tensors; i++)
                if (streq(s->tensors[i].name, s->tensors[i - 1].name))
                        return qd_error_set(err, EBADMSG, "Tensor '%s' appears in more than one file.",
                                            s->tensors[i].name);
        return 0;
}

int safetensors_open_fd(int fd, const char *label, Safetensors **ret, QdError *err) {
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        int r;

        if (fd < 0 || !ret)
                return -EINVAL;
        s = calloc(1, sizeof(Safetensors));
        if (!s)
                return -ENOMEM;
        r = add_file(s, fd, label ? label : "safetensors file", err);
        if (r < 0)
                return r;
        r = finish(s, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

int quant_read_file_at(int dirfd, const char *name, size_t max, char **ret, size_t *ret_len, QdError *err) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t len = 0;

        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return qd_error_set(err, errno, "Failed to open '%s': %s", name, strerror(errno));
        if (fstat(fd, &st) < 0)
                return qd_error_set(err, errno, "Failed to stat '%s': %s", name, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return qd_error_set(err, EBADMSG, "'%s' is not a regular file.", name);
        if ((uint64_t)st.st_size > max)
                return qd_error_set(err, EMSGSIZE, "'%s' is larger than %zu bytes.", name, max);
        buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        while (len < (size_t)st.st_size) {
                ssize_t k = read(fd, buf + len, (size_t)st.st_size - len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return qd_error_set(err, errno, "Failed to read '%s': %s", name, strerror(errno));
                if (k == 0)
                        break;
                len += (size_t)k;
        }
        buf[len] = 0;
        if (ret_len)
                *ret_len = len;
        *ret = TAKE_PTR(buf);
        return 0;
}

int quant_read_json_at(int dirfd, const char *name, json_object **ret, QdError *err) {
        _cleanup_free_ char *text = NULL;
        json_tokener *tok;
        json_object *o;
        size_t len;
        int r;

        r = quant_read_file_at(dirfd, name, 256U * 1024U * 1024U, &text, &len, err);
        if (r < 0)
                return r;
        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        o = json_tokener_parse_ex(tok, text, (int)len);
        r = json_tokener_get_error(tok) == json_tokener_success && o;
        json_tokener_free(tok);
        if (!r || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return qd_error_set(err, EBADMSG, "'%s' is not a JSON object.", name);
        }
        *ret = o;
        return 0;
}

const char *quant_json_str(json_object *o, const char *key) {
        json_object *v;

        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

bool quant_json_true(json_object *o, const char *key) {
        json_object *v;

        return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

static int open_shard(Safetensors *s, int dirfd, const char *name, QdError *err) {
        _cleanup_close_ int fd = -EBADF;

        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return qd_error_set(err, errno, "Failed to open '%s': %s", name, strerror(errno));
        return add_file(s, fd, name, err);
}

static int str_cmp(const void *a, const void *b) {
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int open_index(Safetensors *s, int dirfd, QdError *err) {
        _cleanup_(json_object_putp) json_object *index = NULL;
        _cleanup_free_ const char **files = NULL;
        json_object *map;
        size_t n = 0;
        int r;

        r = quant_read_json_at(dirfd, SAFETENSORS_INDEX, &index, err);
        if (r < 0)
                return r;
        if (!json_object_object_get_ex(index, "weight_map", &map) ||
            !json_object_is_type(map, json_type_object))
                return qd_error_set(err, EBADMSG, "'%s' has no weight_map object.", SAFETENSORS_INDEX);

        files = calloc((size_t)json_object_object_length(map) + 1, sizeof(char *));
        if (!files)
                return -ENOMEM;
        json_object_object_foreach(map, key, val) {
                const char *f;

                if (!json_object_is_type(val, json_type_string))
                        return qd_error_set(err, EBADMSG,
                                            "'%s' maps tensor '%s' to something not a file name.",
                                            SAFETENSORS_INDEX, key);
                f = json_object_get_string(val);
                if (!*f || strchr(f, '/') || streq(f, ".") || streq(f, ".."))
                        return qd_error_set(
                                err, EBADMSG,
                                "'%s' maps tensor '%s' to '%s', which is not a file in the folder.",
                                SAFETENSORS_INDEX, key, f);
                files[n++] = f;
        }
        qsort(files, n, sizeof(char *), str_cmp);
        for (size_t i = 0; i < n; i++) {
                if (i > 0 && streq(files[i], files[i - 1]))
                        continue;
                r = open_shard(s, dirfd, files[i], err);
                if (r < 0)
                        return r;
        }
        r = finish(s, err);
        if (r < 0)
                return r;

        /* Every listed tensor must be where the index says, and every tensor in the shards listed. */
        json_object_object_foreach(map, key2, val2) {
                if (!safetensors_find(s, key2))
                        return qd_error_set(err, EBADMSG, "'%s' lists tensor '%s', which is not in '%s'.",
                                            SAFETENSORS_INDEX, key2, json_object_get_string(val2));
        }
        if (s->n_tensors != (size_t)json_object_object_length(map))
                for (size_t i = 0; i < s->n_tensors; i++)
                        if (!json_object_object_get_ex(map, s->tensors[i].name, NULL))
                                return qd_error_set(err, EBADMSG,
                                                    "Tensor '%s' is in a shard but not in '%s'.",
                                                    s->tensors[i].name, SAFETENSORS_INDEX);
        return 0;
}

int safetensors_open_dir(int dirfd, Safetensors **ret, QdError *err) {
        _cleanup_(safetensors_freep) Safetensors *s = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        s = calloc(1, sizeof(Safetensors));
        if (!s)
                return -ENOMEM;
        if (faccessat(dirfd, SAFETENSORS_INDEX, F_OK, 0) >= 0)
                r = open_index(s, dirfd, err);
        else {
                r = open_shard(s, dirfd, "model.safetensors", err);
                if (r >= 0)
                        r = finish(s, err);
        }
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

size_t safetensors_n_tensors(const Safetensors *s) {
        return s ? s->n_tensors : 0;
}

const SafetensorsTensor *safetensors_tensor(const Safetensors *s, size_t i) {
        return s && i < s->n_tensors ? &s->tensors[i] : NULL;
}

const SafetensorsTensor *safetensors_find(const Safetensors *s, const char *name) {
        SafetensorsTensor key = {.name = (char *)name};

        if (!s || !name || s->n_tensors == 0)
                return NULL;
        return bsearch(&key, s->tensors, s->n_tensors, sizeof(SafetensorsTensor), tensor_cmp);
}
