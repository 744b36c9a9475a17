/* SPDX-License-Identifier: MIT */
/*
 * Reading the daemon's result maps: typed lookups that tolerate what an older or newer daemon may send (a
 * missing key gives the default), and the conversion to JSON that `--json` prints, done with json-c.
 */

#include <inttypes.h>
#include <json-c/json.h>
#include <msgpack.h>

#include "client.h"

char *result_strdup(const msgpack_object *o, const char *key) {
        const msgpack_object *v = proto_map_get(o, key);

        if (!v || v->type != MSGPACK_OBJECT_STR)
                return NULL;
        return strndup(v->via.str.ptr, v->via.str.size);
}

int64_t result_int(const msgpack_object *o, const char *key, int64_t def) {
        const msgpack_object *v = proto_map_get(o, key);

        if (!v)
                return def;
        switch (v->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                return v->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->via.u64;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return v->via.i64;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                return (int64_t)v->via.f64;
        case MSGPACK_OBJECT_NIL:
        case MSGPACK_OBJECT_BOOLEAN:
        case MSGPACK_OBJECT_STR:
        case MSGPACK_OBJECT_ARRAY:
        case MSGPACK_OBJECT_MAP:
        case MSGPACK_OBJECT_BIN:
        case MSGPACK_OBJECT_EXT:
                break;
        }
        return def;
}

double result_double(const msgpack_object *o, const char *key, double def) {
        const msgpack_object *v = proto_map_get(o, key);

        if (v && (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64))
                return v->via.f64;
        if (v && (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER || v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER))
                return (double)result_int(o, key, 0);
        return def;
}

bool result_bool(const msgpack_object *o, const char *key, bool def) {
        const msgpack_object *v = proto_map_get(o, key);

        return v && v->type == MSGPACK_OBJECT_BOOLEAN ? v->via.boolean : def;
}

const msgpack_object *result_array(const msgpack_object *o, const char *key) {
        const msgpack_object *v = proto_map_get(o, key);

        return v && v->type == MSGPACK_OBJECT_ARRAY ? v : NULL;
}

const msgpack_object *result_map(const msgpack_object *o, const char *key) {
        const msgpack_object *v = proto_map_get(o, key);

        return v && v->type == MSGPACK_OBJECT_MAP ? v : NULL;
}

static bool valid_utf8(const char *s, size_t n) {
        const unsigned char *u = (const unsigned char *)s;

        for (size_t i = 0; i < n;) {
                size_t len = u[i] < 0x80 ? 1 : (u[i] & 0xE0) == 0xC0 ? 2 : (u[i] & 0xF0) == 0xE0 ? 3
                                                  : (u[i] & 0xF8) == 0xF0 ? 4 : 0;
                if (len == 0 || i + len > n)
                        return false;
                for (size_t k = 1; k < len; k++)
                        if ((u[i + k] & 0xC0) != 0x80)
                                return false;
                i += len;
        }
        return true;
}

static struct json_object *to_json(const msgpack_object *o, unsigned depth) {
        /* The reader limits nesting already; this keeps the recursion bounded on its own. */
        if (depth > 64)
                return NULL;
        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                return NULL;
        case MSGPACK_OBJECT_BOOLEAN:
                return json_object_new_boolean(o->via.boolean);
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                return json_object_new_uint64(o->via.u64);
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return json_object_new_int64(o->via.i64);
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                return json_object_new_double(o->via.f64);
        case MSGPACK_OBJECT_STR:
        case MSGPACK_OBJECT_BIN: {
                const char *p = o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : o->via.bin.ptr;
                size_t n = o->type == MSGPACK_OBJECT_STR ? o->via.str.size : o->via.bin.size;
                if (valid_utf8(p, n))
                        return json_object_new_string_len(p, (int)n);
                /* Bytes that are not text print as hex, so that the output stays valid JSON. */
                Buf b = {};
                for (size_t i = 0; i < n; i++)
                        if (buf_printf(&b, "%02x", (unsigned char)p[i]) < 0) {
                                buf_free(&b);
                                return NULL;
                        }
                struct json_object *j = json_object_new_string(b.data ? (char *)b.data : "");
                buf_free(&b);
                return j;
        }
        case MSGPACK_OBJECT_ARRAY: {
                struct json_object *a = json_object_new_array();
                for (uint32_t i = 0; a && i < o->via.array.size; i++)
                        json_object_array_add(a, to_json(&o->via.array.ptr[i], depth + 1));
                return a;
        }
        case MSGPACK_OBJECT_MAP: {
                struct json_object *m = json_object_new_object();
                for (uint32_t i = 0; m && i < o->via.map.size; i++) {
                        const msgpack_object *k = &o->via.map.ptr[i].key;
                        /* JSON keys are strings: other keys are written as their JSON text. */
                        _cleanup_free_ char *key = NULL;
                        if (k->type == MSGPACK_OBJECT_STR)
                                key = strndup(k->via.str.ptr, k->via.str.size);
                        else {
                                struct json_object *jk = to_json(k, depth + 1);
                                key = strdup(json_object_to_json_string_ext(jk, JSON_C_TO_STRING_PLAIN));
                                json_object_put(jk);
                        }
                        if (!key) {
                                json_object_put(m);
                                return NULL;
                        }
                        json_object_object_add(m, key, to_json(&o->via.map.ptr[i].val, depth + 1));
                }
                return m;
        }
        case MSGPACK_OBJECT_EXT:
                return NULL;
        }
        return NULL;
}

int result_to_json(const msgpack_object *o, char **ret) {
        struct json_object *j = to_json(o, 0);
        const char *s = json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                                   JSON_C_TO_STRING_NOSLASHESCAPE);
        char *copy = s ? strdup(s) : NULL;

        json_object_put(j);
        if (!copy)
                return -ENOMEM;
        *ret = copy;
        return 0;
}
