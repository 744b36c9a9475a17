/* SPDX-License-Identifier: MIT */
/*
 * GGUF reader: maps a file and validates all of it before anyone uses it.
 *
 * DESIGN
 * A GGUF file is: magic, version, tensor count, key/value count (u64 since v2), the key/value pairs, the tensor
 * infos, padding to the alignment (general.alignment, default 32), then the data section. Everything is
 * little-endian. We decode the metadata into a small tree (GgufKV/GgufValue) whose strings and scalar arrays
 * point into the map, and check every length against the bytes that are left before reading or allocating, so
 * that a hostile file costs at most memory proportional to its own size. Any problem is -EBADMSG plus a
 * message with the byte offset where it was found.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "engine.h"

#define GGUF_MAX_KEY_LEN 65535u
#define GGUF_MAX_NAME_LEN 255u
#define GGUF_MAX_NESTING 4u

typedef struct Reader {
        const uint8_t *base;
        uint64_t size;
        uint64_t pos;
        QdError *err;
} Reader;

static const char *const gguf_type_names[_GGUF_TYPE_MAX] = {
        [GGUF_TYPE_UINT8] = "uint8",     [GGUF_TYPE_INT8] = "int8",     [GGUF_TYPE_UINT16] = "uint16",
        [GGUF_TYPE_INT16] = "int16",     [GGUF_TYPE_UINT32] = "uint32", [GGUF_TYPE_INT32] = "int32",
        [GGUF_TYPE_FLOAT32] = "float32", [GGUF_TYPE_BOOL] = "bool",     [GGUF_TYPE_STRING] = "string",
        [GGUF_TYPE_ARRAY] = "array",     [GGUF_TYPE_UINT64] = "uint64", [GGUF_TYPE_INT64] = "int64",
        [GGUF_TYPE_FLOAT64] = "float64",
};

const char *gguf_type_name(GgufType t) {
        if ((int)t < 0 || t >= _GGUF_TYPE_MAX)
                return "unknown";
        return gguf_type_names[t];
}

size_t gguf_type_size(GgufType t) {
        switch (t) {
        case GGUF_TYPE_UINT8:
        case GGUF_TYPE_INT8:
        case GGUF_TYPE_BOOL:
                return 1;
        case GGUF_TYPE_UINT16:
        case GGUF_TYPE_INT16:
                return 2;
        case GGUF_TYPE_UINT32:
        case GGUF_TYPE_INT32:
        case GGUF_TYPE_FLOAT32:
                return 4;
        case GGUF_TYPE_UINT64:
        case GGUF_TYPE_INT64:
        case GGUF_TYPE_FLOAT64:
                return 8;
        case GGUF_TYPE_STRING:
        case GGUF_TYPE_ARRAY:
        case _GGUF_TYPE_MAX:
        case _GGUF_TYPE_INVALID:
                break;
        }
        return 0;
}

static int rd_take(Reader *r, uint64_t n, const char *what, const uint8_t **ret) {
        uint64_t left = r->size - r->pos;

        if (n > left)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF file truncated at byte %" PRIu64 ": %s needs %" PRIu64
                                    " bytes but only %" PRIu64 " remain",
                                    r->pos, what, n, left);
        *ret = r->base + r->pos;
        r->pos += n;
        return 0;
}

static int rd_u32(Reader *r, const char *what, uint32_t *ret) {
        const uint8_t *p = NULL;
        int k = rd_take(r, 4, what, &p);
        if (k < 0)
                return k;
        memcpy(ret, p, 4);
        return 0;
}

static int rd_u64(Reader *r, const char *what, uint64_t *ret) {
        const uint8_t *p = NULL;
        int k = rd_take(r, 8, what, &p);
        if (k < 0)
                return k;
        memcpy(ret, p, 8);
        return 0;
}

static int rd_string(Reader *r, const char *what, GgufString *ret) {
        uint64_t at = r->pos, len;
        const uint8_t *p = NULL;
        int k;

        k = rd_u64(r, what, &len);
        if (k < 0)
                return k;
        if (len > r->size - r->pos)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF %s at byte %" PRIu64 " has length %" PRIu64
                                    ", more than the %" PRIu64 " bytes left in the file",
                                    what, at, len, r->size - r->pos);
        k = rd_take(r, len, what, &p);
        if (k < 0)
                return k;
        *ret = (GgufString){ len, (const char *)p };
        return 0;
}

/* Reads a key or tensor name: non-empty, no NUL inside, at most max bytes. Returns a NUL-terminated copy. */
static int rd_name(Reader *r, const char *what, uint64_t max, char **ret) {
        uint64_t at = r->pos;
        GgufString s;
        int k;

        k = rd_string(r, what, &s);
        if (k < 0)
                return k;
        if (s.len == 0)
                return qd_error_set(r->err, EBADMSG, "GGUF %s at byte %" PRIu64 " is empty", what, at);
        if (s.len > max)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF %s at byte %" PRIu64 " is %" PRIu64 " bytes long, the limit is %" PRIu64,
                                    what, at, s.len, max);
        if (memchr(s.data, 0, s.len))
                return qd_error_set(r->err, EBADMSG, "GGUF %s at byte %" PRIu64 " contains a NUL byte", what,
                                    at);
        char *c = strndup(s.data, s.len);
        if (!c)
                return -ENOMEM;
        *ret = c;
        return 0;
}

static void value_done(GgufValue *v) {
        if (v->type != GGUF_TYPE_ARRAY || !v->arr.items)
                return;
        if (v->arr.type == GGUF_TYPE_ARRAY)
                for (uint64_t i = 0; i < v->arr.n; i++)
                        value_done(&v->arr.items[i]);
        free(v->arr.items);
        v->arr.items = NULL;
}

static int rd_value(Reader *r, GgufType type, unsigned depth, GgufValue *ret);

static int rd_array(Reader *r, unsigned depth, GgufArray *ret) {
        uint64_t at = r->pos, n;
        uint32_t et;
        int k;

        if (depth >= GGUF_MAX_NESTING)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF array at byte %" PRIu64 " is nested more than %u levels deep", at,
                                    GGUF_MAX_NESTING);
        k = rd_u32(r, "array element type", &et);
        if (k < 0)
                return k;
        if (et >= _GGUF_TYPE_MAX)
                return qd_error_set(r->err, EBADMSG, "GGUF array at byte %" PRIu64 " has unknown element type %" PRIu32,
                                    at, et);
        k = rd_u64(r, "array length", &n);
        if (k < 0)
                return k;

        uint64_t left = r->size - r->pos;
        size_t es = gguf_type_size(et);
        if (es > 0) {
                /* Scalars stay in the map. */
                if (n > left / es)
                        return qd_error_set(r->err, EBADMSG,
                                            "GGUF array at byte %" PRIu64 " claims %" PRIu64
                                            " elements of %s, more than the %" PRIu64 " bytes left hold",
                                            at, n, gguf_type_name(et), left);
                const uint8_t *p = NULL;
                k = rd_take(r, n * es, "array data", &p);
                if (k < 0)
                        return k;
                if (et == GGUF_TYPE_BOOL)
                        for (uint64_t i = 0; i < n; i++)
                                if (p[i] > 1)
                                        return qd_error_set(r->err, EBADMSG,
                                                            "GGUF bool array element at byte %" PRIu64
                                                            " is %u, not 0 or 1",
                                                            (uint64_t)(p + i - r->base), p[i]);
                *ret = (GgufArray){ .type = et, .n = n, .data = p };
                return 0;
        }

        /* A string takes at least its 8-byte length; an array at least its type and count. */
        uint64_t min = et == GGUF_TYPE_STRING ? 8 : 12;
        if (n > left / min)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF array at byte %" PRIu64 " claims %" PRIu64
                                    " elements of %s, more than the %" PRIu64 " bytes left hold",
                                    at, n, gguf_type_name(et), left);
        GgufValue *items = calloc(n ? n : 1, sizeof(GgufValue));
        if (!items)
                return -ENOMEM;
        for (uint64_t i = 0; i < n; i++) {
                k = rd_value(r, et, depth + 1, &items[i]);
                if (k < 0) {
                        for (uint64_t j = 0; j < i; j++)
                                value_done(&items[j]);
                        free(items);
                        return k;
                }
        }
        *ret = (GgufArray){ .type = et, .n = n, .items = items };
        return 0;
}

static int rd_value(Reader *r, GgufType type, unsigned depth, GgufValue *ret) {
        uint64_t at = r->pos;
        const uint8_t *p = NULL;
        int k;

        *ret = (GgufValue){ .type = type };
        switch (type) {
        case GGUF_TYPE_STRING:
                return rd_string(r, "string value", &ret->str);
        case GGUF_TYPE_ARRAY:
                return rd_array(r, depth, &ret->arr);
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
                k = rd_take(r, gguf_type_size(type), gguf_type_name(type), &p);
                if (k < 0)
                        return k;
                memcpy(&ret->u64, p, gguf_type_size(type));
                return 0;
        case GGUF_TYPE_BOOL:
                k = rd_take(r, 1, "bool", &p);
                if (k < 0)
                        return k;
                if (*p > 1)
                        return qd_error_set(r->err, EBADMSG, "GGUF bool at byte %" PRIu64 " is %u, not 0 or 1", at,
                                            *p);
                ret->b = *p;
                return 0;
        case _GGUF_TYPE_MAX:
        case _GGUF_TYPE_INVALID:
                break;
        }
        return qd_error_set(r->err, EBADMSG, "GGUF value at byte %" PRIu64 " has unknown type %d", at, (int)type);
}

Gguf *gguf_free(Gguf *g) {
        if (!g)
                return NULL;
        for (uint64_t i = 0; i < g->n_kv; i++) {
                free(g->kv[i].key);
                value_done(&g->kv[i].value);
        }
        free(g->kv);
        for (uint64_t i = 0; i < g->n_tensors; i++)
                free(g->tensors[i].name);
        free(g->tensors);
        if (g->mapped && g->base)
                munmap((void *)g->base, g->size);
        free(g);
        return NULL;
}

static int cmp_str_ptr(const void *a, const void *b) {
        return strcmp(**(char *const *const *)a, **(char *const *const *)b);
}

/* Finds a duplicate among n names (each reached through stride-spaced structs); returns it or NULL. */
static const char *find_duplicate(const void *base, uint64_t n, size_t stride, size_t name_off, int *r) {
        _cleanup_free_ char ***v = calloc(n ? n : 1, sizeof(char **));
        if (!v) {
                *r = -ENOMEM;
                return NULL;
        }
        for (uint64_t i = 0; i < n; i++)
                v[i] = (char **)((const uint8_t *)base + i * stride + name_off);
        qsort(v, n, sizeof(char **), cmp_str_ptr);
        for (uint64_t i = 1; i < n; i++)
                if (streq(*v[i - 1], *v[i]))
                        return *v[i];
        return NULL;
}

static int cmp_tensor_offset(const void *a, const void *b) {
        const GgufTensor *x = *(const GgufTensor *const *)a, *y = *(const GgufTensor *const *)b;

        return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int parse_tensor_info(Reader *r, GgufTensor *t) {
        uint64_t at = r->pos;
        int k;

        k = rd_name(r, "tensor name", GGUF_MAX_NAME_LEN, &t->name);
        if (k < 0)
                return k;
        k = rd_u32(r, "tensor dimension count", &t->n_dims);
        if (k < 0)
                return k;
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF tensor '%s' at byte %" PRIu64 " has %" PRIu32
                                    " dimensions, expected 1 to %u",
                                    t->name, at, t->n_dims, GGUF_MAX_DIMS);
        t->n_elements = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
                t->ne[d] = 1;
                if (d >= t->n_dims)
                        continue;
                k = rd_u64(r, "tensor dimension", &t->ne[d]);
                if (k < 0)
                        return k;
                if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
                        return qd_error_set(r->err, EBADMSG,
                                            "GGUF tensor '%s' at byte %" PRIu64 ": dimension %" PRIu32
                                            " is %" PRIu64 ", expected 1 to 2^63-1",
                                            t->name, at, d, t->ne[d]);
                if (MUL_OVERFLOW(t->n_elements, t->ne[d], &t->n_elements) || t->n_elements > (uint64_t)INT64_MAX)
                        return qd_error_set(r->err, EBADMSG,
                                            "GGUF tensor '%s' at byte %" PRIu64
                                            ": its element count overflows 63 bits",
                                            t->name, at);
        }
        k = rd_u32(r, "tensor type", &t->type);
        if (k < 0)
                return k;
        const GgmlTypeInfo *ti = ggml_type_info(t->type);
        if (!ti)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF tensor '%s' at byte %" PRIu64 " has unknown type id %" PRIu32, t->name,
                                    at, t->type);
        if (t->ne[0] % ti->block_size != 0)
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF tensor '%s' at byte %" PRIu64 ": row length %" PRIu64
                                    " is not a multiple of the %s block size %" PRIu32,
                                    t->name, at, t->ne[0], ti->name, ti->block_size);
        uint64_t row;
        k = ggml_row_size(t->type, t->ne[0], &row);
        if (k < 0 || MUL_OVERFLOW(row, t->n_elements / t->ne[0], &t->size))
                return qd_error_set(r->err, EBADMSG,
                                    "GGUF tensor '%s' at byte %" PRIu64 ": its size in bytes overflows 64 bits",
                                    t->name, at);
        return rd_u64(r, "tensor offset", &t->offset);
}

static int gguf_parse(const uint8_t *base, uint64_t size, bool mapped, Gguf **ret, QdError *err) {
        _cleanup_(gguf_freep) Gguf *g = NULL;
        Reader r = { .base = base, .size = size, .err = err };
        uint32_t magic;
        int k;

        g = calloc(1, sizeof(Gguf));
        if (!g) {
                if (mapped)
                        munmap((void *)base, size);
                return -ENOMEM;
        }
        g->base = base;
        g->size = size;
        g->mapped = mapped;
        g->alignment = GGUF_DEFAULT_ALIGNMENT;

        k = rd_u32(&r, "magic", &magic);
        if (k < 0)
                return k;
        if (magic != GGUF_MAGIC)
                return qd_error_set(err, EBADMSG, "Not a GGUF file: byte 0 holds magic 0x%08" PRIx32
                                    ", expected 0x%08x (\"GGUF\")", magic, GGUF_MAGIC);
        k = rd_u32(&r, "version", &g->version);
        if (k < 0)
                return k;
        if (g->version == 1)
                return qd_error_set(err, EOPNOTSUPP,
                                    "GGUF version 1 is not supported: convert the model with a current tool");
        if ((g->version & 0xffffu) == 0 && __builtin_bswap32(g->version) <= 3)
                return qd_error_set(err, EOPNOTSUPP, "Big-endian GGUF files are not supported");
        if (g->version != 2 && g->version != 3)
                return qd_error_set(err, EOPNOTSUPP,
                                    "GGUF version %" PRIu32 " is not supported (versions 2 and 3 are)", g->version);

        uint64_t n_tensors, n_kv;
        k = rd_u64(&r, "tensor count", &n_tensors);
        if (k < 0)
                return k;
        k = rd_u64(&r, "metadata count", &n_kv);
        if (k < 0)
                return k;
        /* A key/value pair takes at least 8 + 1 + 4 + 1 bytes, a tensor info 8 + 1 + 4 + 8 + 4 + 8. */
        if (n_kv > (size - r.pos) / 14)
                return qd_error_set(err, EBADMSG,
                                    "GGUF header claims %" PRIu64 " metadata entries, more than the file can hold",
                                    n_kv);
        if (n_tensors > (size - r.pos) / 33)
                return qd_error_set(err, EBADMSG,
                                    "GGUF header claims %" PRIu64 " tensors, more than the file can hold",
                                    n_tensors);

        g->kv = calloc(n_kv ? n_kv : 1, sizeof(GgufKV));
        if (!g->kv)
                return -ENOMEM;
        for (uint64_t i = 0; i < n_kv; i++) {
                GgufKV *kv = &g->kv[i];
                uint32_t type;

                kv->offset = r.pos;
                k = rd_name(&r, "metadata key", GGUF_MAX_KEY_LEN, &kv->key);
                if (k < 0)
                        return k;
                g->n_kv = i + 1;
                uint64_t at = r.pos;
                k = rd_u32(&r, "metadata value type", &type);
                if (k < 0)
                        return k;
                if (type >= _GGUF_TYPE_MAX)
                        return qd_error_set(err, EBADMSG,
                                            "GGUF metadata '%s' at byte %" PRIu64 " has unknown value type %" PRIu32,
                                            kv->key, at, type);
                k = rd_value(&r, type, 0, &kv->value);
                if (k < 0)
                        return k;
        }
        k = 0;
        const char *dup = find_duplicate(g->kv, g->n_kv, sizeof(GgufKV), offsetof(GgufKV, key), &k);
        if (k < 0)
                return k;
        if (dup)
                return qd_error_set(err, EBADMSG, "GGUF metadata key '%s' appears more than once", dup);

        const GgufKV *al = gguf_find_kv(g, "general.alignment");
        if (al) {
                if (al->value.type != GGUF_TYPE_UINT32)
                        return qd_error_set(err, EBADMSG,
                                            "GGUF general.alignment at byte %" PRIu64 " is a %s, expected uint32",
                                            al->offset, gguf_type_name(al->value.type));
                uint32_t a = al->value.u32;
                if (a == 0 || (a & (a - 1)) != 0)
                        return qd_error_set(err, EBADMSG,
                                            "GGUF general.alignment at byte %" PRIu64 " is %" PRIu32
                                            ", not a power of two",
                                            al->offset, a);
                g->alignment = a;
        }

        g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(GgufTensor));
        if (!g->tensors)
                return -ENOMEM;
        for (uint64_t i = 0; i < n_tensors; i++) {
                g->n_tensors = i + 1;
                k = parse_tensor_info(&r, &g->tensors[i]);
                if (k < 0)
                        return k;
        }
        dup = find_duplicate(g->tensors, g->n_tensors, sizeof(GgufTensor), offsetof(GgufTensor, name), &k);
        if (k < 0)
                return k;
        if (dup)
                return qd_error_set(err, EBADMSG, "GGUF tensor name '%s' appears more than once", dup);

        /* The data section starts at the next multiple of the alignment. */
        g->data_offset = ALIGN_TO(r.pos, (uint64_t)g->alignment);
        if (g->n_tensors > 0 && g->data_offset > size)
                return qd_error_set(err, EBADMSG,
                                    "GGUF file truncated: its data section would start at byte %" PRIu64
                                    " but the file has %" PRIu64 " bytes",
                                    g->data_offset, size);
        uint64_t data_size = g->data_offset <= size ? size - g->data_offset : 0;

        _cleanup_free_ GgufTensor **order = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(GgufTensor *));
        if (!order)
                return -ENOMEM;
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                GgufTensor *t = &g->tensors[i];

                if (t->offset % g->alignment != 0)
                        return qd_error_set(err, EBADMSG,
                                            "GGUF tensor '%s' has data offset %" PRIu64
                                            ", not a multiple of the alignment %" PRIu32,
                                            t->name, t->offset, g->alignment);
                if (t->offset > data_size || t->size > data_size - t->offset)
                        return qd_error_set(err, EBADMSG,
                                            "GGUF tensor '%s' (%" PRIu64 " bytes at data offset %" PRIu64
                                            ", file byte %" PRIu64 ") extends past the end of the file (%" PRIu64
                                            " bytes)",
                                            t->name, t->size, t->offset, g->data_offset + t->offset, size);
                t->data = base + g->data_offset + t->offset;
                order[i] = t;
        }
        qsort(order, g->n_tensors, sizeof(GgufTensor *), cmp_tensor_offset);
        for (uint64_t i = 1; i < g->n_tensors; i++)
                if (order[i - 1]->offset + order[i - 1]->size > order[i]->offset)
                        return qd_error_set(err, EBADMSG, "GGUF tensors '%s' and '%s' overlap in the data section",
                                            order[i - 1]->name, order[i]->name);

        *ret = TAKE_PTR(g);
        return 0;
}

int gguf_open_memory(const void *data, size_t size, Gguf **ret, QdError *err) {
        return gguf_parse(data, size, false, ret, err);
}

int gguf_open_fd(int fd, Gguf **ret, QdError *err) {
        struct stat st;

        if (fstat(fd, &st) < 0)
                return qd_error_set(err, errno, "Failed to stat the GGUF file: %s", strerror(errno));
        if (!S_ISREG(st.st_mode))
                return qd_error_set(err, EBADMSG, "Not a GGUF file: not a regular file");
        if (st.st_size < 24)
                return qd_error_set(err, EBADMSG,
                                    "GGUF file truncated: %jd bytes, less than the 24-byte header",
                                    (intmax_t)st.st_size);
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
                return qd_error_set(err, errno, "Failed to map the GGUF file: %s", strerror(errno));
        return gguf_parse(p, (uint64_t)st.st_size, true, ret, err);
}

int gguf_open(const char *path, Gguf **ret, QdError *err) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return qd_error_set(err, errno, "Failed to open '%s': %s", path, strerror(errno));
        return gguf_open_fd(fd, ret, err);
}

const GgufKV *gguf_find_kv(const Gguf *g, const char *key) {
        for (uint64_t i = 0; i < g->n_kv; i++)
                if (streq(g->kv[i].key, key))
                        return &g->kv[i];
        return NULL;
}

const GgufTensor *gguf_find_tensor(const Gguf *g, const char *name) {
        for (uint64_t i = 0; i < g->n_tensors; i++)
                if (streq(g->tensors[i].name, name))
                        return &g->tensors[i];
        return NULL;
}

static int value_as_i128(const GgufValue *v, __int128 *ret) {
        switch (v->type) {
        case GGUF_TYPE_UINT8:
                *ret = v->u8;
                return 0;
        case GGUF_TYPE_INT8:
                *ret = v->i8;
                return 0;
        case GGUF_TYPE_UINT16:
                *ret = v->u16;
                return 0;
        case GGUF_TYPE_INT16:
                *ret = v->i16;
                return 0;
        case GGUF_TYPE_UINT32:
                *ret = v->u32;
                return 0;
        case GGUF_TYPE_INT32:
                *ret = v->i32;
                return 0;
        case GGUF_TYPE_UINT64:
                *ret = v->u64;
                return 0;
        case GGUF_TYPE_INT64:
                *ret = v->i64;
                return 0;
        case GGUF_TYPE_FLOAT32:
        case GGUF_TYPE_FLOAT64:
        case GGUF_TYPE_BOOL:
        case GGUF_TYPE_STRING:
        case GGUF_TYPE_ARRAY:
        case _GGUF_TYPE_MAX:
        case _GGUF_TYPE_INVALID:
                break;
        }
        return -EBADMSG;
}

static int get_int(const Gguf *g, const char *key, __int128 lo, __int128 hi, __int128 *ret) {
        const GgufKV *kv = gguf_find_kv(g, key);
        __int128 v;

        if (!kv)
                return -ENOENT;
        if (value_as_i128(&kv->value, &v) < 0)
                return -EBADMSG;
        if (v < lo || v > hi)
                return -ERANGE;
        *ret = v;
        return 0;
}

int gguf_get_u64(const Gguf *g, const char *key, uint64_t *ret) {
        __int128 v;
        int r = get_int(g, key, 0, UINT64_MAX, &v);
        if (r < 0)
                return r;
        *ret = (uint64_t)v;
        return 0;
}

int gguf_get_u32(const Gguf *g, const char *key, uint32_t *ret) {
        __int128 v;
        int r = get_int(g, key, 0, UINT32_MAX, &v);
        if (r < 0)
                return r;
        *ret = (uint32_t)v;
        return 0;
}

int gguf_get_i64(const Gguf *g, const char *key, int64_t *ret) {
        __int128 v;
        int r = get_int(g, key, INT64_MIN, INT64_MAX, &v);
        if (r < 0)
                return r;
        *ret = (int64_t)v;
        return 0;
}

int gguf_get_f32(const Gguf *g, const char *key, float *ret) {
        const GgufKV *kv = gguf_find_kv(g, key);

        if (!kv)
                return -ENOENT;
        if (kv->value.type == GGUF_TYPE_FLOAT32)
                *ret = kv->value.f32;
        else if (kv->value.type == GGUF_TYPE_FLOAT64)
                *ret = (float)kv->value.f64;
        else
                return -EBADMSG;
        return 0;
}

int gguf_get_bool(const Gguf *g, const char *key, bool *ret) {
        const GgufKV *kv = gguf_find_kv(g, key);

        if (!kv)
                return -ENOENT;
        if (kv->value.type != GGUF_TYPE_BOOL)
                return -EBADMSG;
        *ret = kv->value.b;
        return 0;
}

int gguf_get_string(const Gguf *g, const char *key, char **ret) {
        const GgufKV *kv = gguf_find_kv(g, key);

        if (!kv)
                return -ENOENT;
        if (kv->value.type != GGUF_TYPE_STRING)
                return -EBADMSG;
        char *s = strndup(kv->value.str.data, kv->value.str.len);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int gguf_get_array(const Gguf *g, const char *key, const GgufArray **ret) {
        const GgufKV *kv = gguf_find_kv(g, key);

        if (!kv)
                return -ENOENT;
        if (kv->value.type != GGUF_TYPE_ARRAY)
                return -EBADMSG;
        *ret = &kv->value.arr;
        return 0;
}
