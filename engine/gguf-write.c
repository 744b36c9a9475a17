/* SPDX-License-Identifier: MIT */
/*
 * GGUF writer: streams a v3 file to a descriptor.
 *
 * DESIGN
 * The header needs every key/value and tensor info, and tensor offsets need every tensor size, so the caller
 * declares all of them first; the metadata is serialised into a buffer as it is declared. Tensor data then
 * passes straight through in declaration order, each tensor padded with zeros to the alignment, exactly as the
 * reference writers lay files out, so that rewriting a file we read gives the same bytes.
 */

#include <inttypes.h>

#include "engine.h"

typedef struct WTensor {
        char *name;
        uint32_t n_dims;
        uint64_t ne[GGUF_MAX_DIMS];
        uint32_t type;
        uint64_t size;
        uint64_t offset;
} WTensor;

struct GgufWriter {
        int fd;
        uint32_t alignment;
        bool alignment_key; /* general.alignment was declared */
        Buf meta;           /* serialised key/value pairs */
        uint64_t n_kv;
        char **keys; /* (n_kv) for duplicate checks */
        WTensor *tensors;
        uint64_t n_tensors;
        bool header_written;
        uint64_t cur;         /* index of the tensor being written */
        uint64_t cur_written; /* bytes of it written so far */
        uint64_t pos;         /* bytes written to fd */
};

static int write_all(GgufWriter *w, const void *p, size_t n) {
        const uint8_t *b = p;

        while (n > 0) {
                ssize_t k = write(w->fd, b, n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                b += k;
                n -= (size_t)k;
                w->pos += (uint64_t)k;
        }
        return 0;
}

static int write_zeros(GgufWriter *w, uint64_t n) {
        static const uint8_t zeros[64];

        while (n > 0) {
                size_t k = MIN(n, sizeof(zeros));
                int r = write_all(w, zeros, k);
                if (r < 0)
                        return r;
                n -= k;
        }
        return 0;
}

int gguf_writer_new(GgufWriter **ret, int fd, uint32_t alignment) {
        if (fd < 0 || alignment == 0 || (alignment & (alignment - 1)) != 0)
                return -EINVAL;
        GgufWriter *w = calloc(1, sizeof(GgufWriter));
        if (!w)
                return -ENOMEM;
        w->fd = fd;
        w->alignment = alignment;
        *ret = w;
        return 0;
}

GgufWriter *gguf_writer_free(GgufWriter *w) {
        if (!w)
                return NULL;
        buf_free(&w->meta);
        for (uint64_t i = 0; i < w->n_kv; i++)
                free(w->keys[i]);
        free(w->keys);
        for (uint64_t i = 0; i < w->n_tensors; i++)
                free(w->tensors[i].name);
        free(w->tensors);
        free(w);
        return NULL;
}

static int put_string(Buf *b, const char *s, size_t len) {
        uint64_t n = len;
        int r = buf_append(b, &n, 8);
        return r < 0 ? r : buf_append(b, s, len);
}

static int begin_kv(GgufWriter *w, const char *key, GgufType type) {
        if (w->header_written || !key || !*key)
                return -EINVAL;
        for (uint64_t i = 0; i < w->n_kv; i++)
                if (streq(w->keys[i], key))
                        return -EEXIST;
        char **k = reallocarray(w->keys, w->n_kv + 1, sizeof(char *));
        if (!k)
                return -ENOMEM;
        w->keys = k;
        w->keys[w->n_kv] = strdup(key);
        if (!w->keys[w->n_kv])
                return -ENOMEM;
        w->n_kv++;

        uint32_t t = (uint32_t)type;
        int r = put_string(&w->meta, key, strlen(key));
        return r < 0 ? r : buf_append(&w->meta, &t, 4);
}

static int add_scalar(GgufWriter *w, const char *key, GgufType type, const void *v) {
        int r = begin_kv(w, key, type);
        return r < 0 ? r : buf_append(&w->meta, v, gguf_type_size(type));
}

int gguf_writer_add_u32(GgufWriter *w, const char *key, uint32_t v) {
        int r = add_scalar(w, key, GGUF_TYPE_UINT32, &v);
        if (r >= 0 && streq(key, "general.alignment")) {
                if (v == 0 || (v & (v - 1)) != 0)
                        return -EINVAL;
                w->alignment = v;
                w->alignment_key = true;
        }
        return r;
}

int gguf_writer_add_i32(GgufWriter *w, const char *key, int32_t v) {
        return add_scalar(w, key, GGUF_TYPE_INT32, &v);
}

int gguf_writer_add_u64(GgufWriter *w, const char *key, uint64_t v) {
        return add_scalar(w, key, GGUF_TYPE_UINT64, &v);
}

int gguf_writer_add_f32(GgufWriter *w, const char *key, float v) {
        return add_scalar(w, key, GGUF_TYPE_FLOAT32, &v);
}

int gguf_writer_add_bool(GgufWriter *w, const char *key, bool v) {
        uint8_t b = v;
        return add_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

int gguf_writer_add_string(GgufWriter *w, const char *key, const char *v) {
        int r = begin_kv(w, key, GGUF_TYPE_STRING);
        return r < 0 ? r : put_string(&w->meta, v, strlen(v));
}

int gguf_writer_add_array(GgufWriter *w, const char *key, GgufType type, const void *data, uint64_t n) {
        size_t es = gguf_type_size(type);
        uint64_t bytes;

        if (es == 0 || MUL_OVERFLOW(n, (uint64_t)es, &bytes))
                return -EINVAL;
        int r = begin_kv(w, key, GGUF_TYPE_ARRAY);
        if (r < 0)
                return r;
        uint32_t t = (uint32_t)type;
        if ((r = buf_append(&w->meta, &t, 4)) < 0 || (r = buf_append(&w->meta, &n, 8)) < 0)
                return r;
        return buf_append(&w->meta, data, bytes);
}

int gguf_writer_add_string_array(GgufWriter *w, const char *key, const char *const *v, uint64_t n) {
        int r = begin_kv(w, key, GGUF_TYPE_ARRAY);
        if (r < 0)
                return r;
        uint32_t t = GGUF_TYPE_STRING;
        if ((r = buf_append(&w->meta, &t, 4)) < 0 || (r = buf_append(&w->meta, &n, 8)) < 0)
                return r;
        for (uint64_t i = 0; i < n; i++)
                if ((r = put_string(&w->meta, v[i], strlen(v[i]))) < 0)
                        return r;
        return 0;
}

/* Serialises a value's payload (not its type tag). */
static int put_value(Buf *b, const GgufValue *v) {
        int r;

        switch (v->type) {
        case GGUF_TYPE_STRING:
                return put_string(b, v->str.data, v->str.len);
        case GGUF_TYPE_ARRAY: {
                uint32_t t = (uint32_t)v->arr.type;
                if ((r = buf_append(b, &t, 4)) < 0 || (r = buf_append(b, &v->arr.n, 8)) < 0)
                        return r;
                size_t es = gguf_type_size(v->arr.type);
                if (es > 0)
                        return buf_append(b, v->arr.data, v->arr.n * es);
                for (uint64_t i = 0; i < v->arr.n; i++)
                        if ((r = put_value(b, &v->arr.items[i])) < 0)
                                return r;
                return 0;
        }
        case GGUF_TYPE_UINT8:
        case GGUF_TYPE_INT8:
        case GGUF_TYPE_UINT16:
        case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32:
        case GGUF_TYPE_INT32:
        case GGUF_TYPE_FLOAT32:
        case GGUF_TYPE_UINT64:
        case GGUF_TYPE_INT64:
        case GGUF_TYPE_FLOAT64:
                return buf_append(b, &v->u64, gguf_type_size(v->type));
        case GGUF_TYPE_BOOL: {
                uint8_t x = v->b;
                return buf_append(b, &x, 1);
        }
        case _GGUF_TYPE_MAX:
        case _GGUF_TYPE_INVALID:
                break;
        }
        return -EINVAL;
}

int gguf_writer_add_value(GgufWriter *w, const char *key, const GgufValue *v) {
        if (v->type == GGUF_TYPE_UINT32 && streq(key, "general.alignment"))
                return gguf_writer_add_u32(w, key, v->u32);
        int r = begin_kv(w, key, v->type);
        return r < 0 ? r : put_value(&w->meta, v);
}

int gguf_writer_add_tensor(GgufWriter *w, const char *name, uint32_t type, uint32_t n_dims, const uint64_t *ne) {
        uint64_t n = 1, size;
        int r;

        if (w->header_written || !name || !*name || strlen(name) > 255 || n_dims == 0 || n_dims > GGUF_MAX_DIMS)
                return -EINVAL;
        for (uint32_t d = 0; d < n_dims; d++)
                if (ne[d] == 0 || MUL_OVERFLOW(n, ne[d], &n))
                        return -EINVAL;
        r = ggml_row_size(type, ne[0], &size);
        if (r < 0)
                return r;
        if (MUL_OVERFLOW(size, n / ne[0], &size))
                return -EOVERFLOW;
        for (uint64_t i = 0; i < w->n_tensors; i++)
                if (streq(w->tensors[i].name, name))
                        return -EEXIST;

        WTensor *t = reallocarray(w->tensors, w->n_tensors + 1, sizeof(WTensor));
        if (!t)
                return -ENOMEM;
        w->tensors = t;
        t = &w->tensors[w->n_tensors];
        *t = (WTensor){ .name = strdup(name), .n_dims = n_dims, .type = type, .size = size };
        if (!t->name)
                return -ENOMEM;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
                t->ne[d] = d < n_dims ? ne[d] : 1;
        w->n_tensors++;
        return 0;
}

int gguf_writer_write_header(GgufWriter *w) {
        _cleanup_(buf_free) Buf h = {};
        uint32_t magic = GGUF_MAGIC, version = 3;
        int r;

        if (w->header_written)
                return -EALREADY;
        /* Readers assume 32 unless told: say so when we use another alignment. */
        if (w->alignment != GGUF_DEFAULT_ALIGNMENT && !w->alignment_key) {
                r = gguf_writer_add_u32(w, "general.alignment", w->alignment);
                if (r < 0)
                        return r;
        }

        if ((r = buf_append(&h, &magic, 4)) < 0 || (r = buf_append(&h, &version, 4)) < 0 ||
            (r = buf_append(&h, &w->n_tensors, 8)) < 0 || (r = buf_append(&h, &w->n_kv, 8)) < 0)
                return r;
        if (w->meta.len > 0 && (r = buf_append(&h, w->meta.data, w->meta.len)) < 0)
                return r;

        uint64_t off = 0;
        for (uint64_t i = 0; i < w->n_tensors; i++) {
                WTensor *t = &w->tensors[i];

                t->offset = off;
                off += ALIGN_TO(t->size, (uint64_t)w->alignment);
                if ((r = put_string(&h, t->name, strlen(t->name))) < 0 || (r = buf_append(&h, &t->n_dims, 4)) < 0 ||
                    (r = buf_append(&h, t->ne, 8 * t->n_dims)) < 0 || (r = buf_append(&h, &t->type, 4)) < 0 ||
                    (r = buf_append(&h, &t->offset, 8)) < 0)
                        return r;
        }
        r = write_all(w, h.data, h.len);
        if (r < 0)
                return r;
        w->header_written = true;
        return write_zeros(w, ALIGN_TO(w->pos, (uint64_t)w->alignment) - w->pos);
}

int gguf_writer_write_tensor_data(GgufWriter *w, const void *data, size_t size) {
        if (!w->header_written || w->cur >= w->n_tensors)
                return -EINVAL;
        WTensor *t = &w->tensors[w->cur];
        if (size > t->size - w->cur_written)
                return -EINVAL;
        int r = write_all(w, data, size);
        if (r < 0)
                return r;
        w->cur_written += size;
        if (w->cur_written == t->size) {
                r = write_zeros(w, ALIGN_TO(t->size, (uint64_t)w->alignment) - t->size);
                if (r < 0)
                        return r;
                w->cur++;
                w->cur_written = 0;
        }
        return 0;
}

int gguf_writer_finish(GgufWriter *w) {
        if (!w->header_written)
                return -EINVAL;
        if (w->cur != w->n_tensors)
                return -EINVAL;
        return 0;
}
