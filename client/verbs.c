/* SPDX-License-Identifier: MIT */
/*
 * The verbs of qctl: each packs its request, calls the daemon and prints the result the way Ollama's client
 * prints it (tables, progress, streamed tokens). The interactive chat lives in chat-session.c.
 *
 * DESIGN
 * Requests use the method names and parameter keys of quantd-protocol(7), which follow Ollama's API (model,
 * prompt, messages, options, format, keep_alive …) so that the two read alike. Results are read leniently:
 * a missing field prints as empty rather than failing, so that qctl keeps working with a daemon one minor
 * version apart.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <msgpack.h>
#include <sys/stat.h>
#include <time.h>

#include "client-internal.h"
#include "config.h"

int qctl_connect(Qctl *q, QdError *e) {
        if (q->conn)
                return 0;
        return conn_open(q->socket, &q->conn, e);
}

void qctl_done(Qctl *q) {
        q->conn = proto_client_free(q->conn);
}

void packer_open(Packer *p) {
        msgpack_sbuffer_init(&p->sb);
        proto_packer_init(&p->pk, &p->sb);
}

void packer_close(Packer *p) {
        msgpack_sbuffer_destroy(&p->sb);
}

int pack_options(msgpack_packer *pk, const ParamSet *s) {
        size_t n = 0;
        int r;

        /* A repeatable parameter is one key whose value is an array. */
        for (size_t i = 0; i < s->n; i++) {
                bool first = true;
                for (size_t j = 0; j < i; j++)
                        if (s->items[j].info == s->items[i].info)
                                first = false;
                n += first;
        }
        if (msgpack_pack_map(pk, n) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < s->n; i++) {
                const ParamValue *v = &s->items[i];
                bool first = true;
                for (size_t j = 0; j < i; j++)
                        if (s->items[j].info == v->info)
                                first = false;
                if (!first)
                        continue;
                r = proto_pack_key(pk, v->info->name);
                if (r < 0)
                        return r;
                if (v->info->repeatable) {
                        size_t count = 0;
                        for (size_t j = i; j < s->n; j++)
                                count += s->items[j].info == v->info;
                        if (msgpack_pack_array(pk, count) < 0)
                                return -ENOMEM;
                        for (size_t j = i; j < s->n; j++)
                                if (s->items[j].info == v->info && proto_pack_str(pk, s->items[j].s) < 0)
                                        return -ENOMEM;
                        continue;
                }
                switch (v->info->type) {
                case PARAM_INT:
                        r = msgpack_pack_int64(pk, v->i);
                        break;
                case PARAM_FLOAT:
                        r = msgpack_pack_double(pk, v->f);
                        break;
                case PARAM_BOOL:
                        r = v->b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
                        break;
                case PARAM_STRING:
                        r = proto_pack_str(pk, v->s);
                        break;
                case _PARAM_TYPE_MAX:
                case _PARAM_TYPE_INVALID:
                        return -EINVAL;
                }
                if (r < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* Calls a method whose params are just {model: name}. */
static int call_model(Qctl *q, const char *method, const char *model, ProtoMessage *ret, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        int r;

        packer_open(&p);
        if (msgpack_pack_map(&p.pk, 1) < 0 || proto_pack_kv_str(&p.pk, "model", model) < 0)
                return -ENOMEM;
        r = qctl_connect(q, e);
        if (r < 0)
                return r;
        CallHooks h = { .interrupted = q->interrupted };
        return conn_call(q->conn, method, p.sb.data, p.sb.size, NULL, 0, &h, ret, e);
}

/* "sha256:8eeb52dfb3bb…" → "8eeb52dfb3bb", as Ollama's ID column shows digests. */
static void short_digest(const char *digest, char buf[static 13]) {
        const char *d = digest ? (startswith(digest, "sha256:") ?: startswith(digest, "sha256-") ?: digest) : "";
        snprintf(buf, 13, "%s", d);
}

/* A timestamp as the daemon sends it: Unix seconds, or an RFC 3339 string. Returns 0 or -EINVAL. */
static int result_time(const msgpack_object *o, const char *key, int64_t *ret_unix) {
        const msgpack_object *v = proto_map_get(o, key);

        if (!v)
                return -EINVAL;
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER || v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
            v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32) {
                *ret_unix = result_int(o, key, 0);
                return 0;
        }
        _cleanup_free_ char *s = result_strdup(o, key);
        if (!s)
                return -EINVAL;
        struct tm tm = {};
        const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!rest)
                return -EINVAL;
        int64_t t = (int64_t)timegm(&tm);
        if (*rest == '.')
                for (rest++; *rest >= '0' && *rest <= '9'; rest++)
                        ;
        if (*rest == '+' || *rest == '-') {
                int hh = 0, mm = 0;
                if (sscanf(rest + 1, "%2d:%2d", &hh, &mm) != 2)
                        return -EINVAL;
                t -= (*rest == '+' ? 1 : -1) * (hh * 3600 + mm * 60);
        } else if (*rest != 'Z' && *rest != 0)
                return -EINVAL;
        *ret_unix = t;
        return 0;
}

static int print_json(Qctl *q, const msgpack_object *o) {
        _cleanup_free_ char *j = NULL;
        int r = result_to_json(o, &j);

        if (r < 0)
                return r;
        fprintf(q->out, "%s\n", j);
        return 0;
}

static int print_table(Qctl *q, Table *t) {
        Buf b = {};
        int r = table_format(t, &b);

        if (r >= 0)
                fputs((char *)b.data, q->out);
        buf_free(&b);
        return r;
}

static int verb_list(Qctl *q, Command *c, QdError *e) {
        _cleanup_(table_freep) Table *t = NULL;
        ProtoMessage m;
        int r;

        r = qctl_connect(q, e);
        if (r < 0)
                return r;
        r = conn_call(q->conn, "List", NULL, 0, NULL, 0, NULL, &m, e);
        if (r < 0)
                return r;
        if (c->json)
                return print_json(q, m.result);

        r = table_new(&t, 4, (const char *const[]){ "NAME", "ID", "SIZE", "MODIFIED" });
        if (r < 0)
                return r;
        const msgpack_object *models = result_array(m.result, "models");
        int64_t now = (int64_t)time(NULL);
        for (uint32_t i = 0; models && i < models->via.array.size; i++) {
                const msgpack_object *mo = &models->via.array.ptr[i];
                _cleanup_free_ char *name = result_strdup(mo, "name");
                _cleanup_free_ char *digest = result_strdup(mo, "digest");
                char id[13], size[32], modified[64] = "";
                int64_t when;
                short_digest(digest, id);
                format_bytes(size, sizeof(size), (uint64_t)MAX(result_int(mo, "size", 0), 0));
                /* A clock step must not make a modification look future. */
                if (result_time(mo, "modified_at", &when) >= 0)
                        format_human_time(modified, sizeof(modified), MIN(when - now, (int64_t)0) * 1000000000LL);
                r = table_add_row(t, (const char *const[]){ name, id, size, modified });
                if (r < 0)
                        return r;
        }
        return print_table(q, t);
}

static int verb_ps(Qctl *q, Command *c, QdError *e) {
        _cleanup_(table_freep) Table *t = NULL;
        ProtoMessage m;
        int r;

        r = qctl_connect(q, e);
        if (r < 0)
                return r;
        r = conn_call(q->conn, "Ps", NULL, 0, NULL, 0, NULL, &m, e);
        if (r < 0)
                return r;
        if (c->json)
                return print_json(q, m.result);

        r = table_new(&t, 6, (const char *const[]){ "NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL" });
        if (r < 0)
                return r;
        const msgpack_object *models = result_array(m.result, "models");
        int64_t now = (int64_t)time(NULL);
        for (uint32_t i = 0; models && i < models->via.array.size; i++) {
                const msgpack_object *mo = &models->via.array.ptr[i];
                _cleanup_free_ char *name = result_strdup(mo, "name");
                _cleanup_free_ char *digest = result_strdup(mo, "digest");
                char id[13], size[32], proc[48], ctx[32] = "", until[64] = "Forever";
                int64_t bytes = MAX(result_int(mo, "size", 0), 0);
                int64_t vram = CLAMP(result_int(mo, "size_vram", 0), 0, bytes);
                int64_t expires;

                short_digest(digest, id);
                format_bytes(size, sizeof(size), (uint64_t)bytes);
                _cleanup_free_ char *processor = result_strdup(mo, "processor");
                if (processor)
                        snprintf(proc, sizeof(proc), "%s", processor);
                else if (vram == 0)
                        snprintf(proc, sizeof(proc), "100%% CPU");
                else if (vram == bytes)
                        snprintf(proc, sizeof(proc), "100%% GPU");
                else {
                        int gpu = (int)(vram * 100 / bytes);
                        snprintf(proc, sizeof(proc), "%d%%/%d%% CPU/GPU", 100 - gpu, gpu);
                }
                int64_t n_ctx = result_int(mo, "context_length", result_int(mo, "num_ctx", 0));
                if (n_ctx > 0)
                        snprintf(ctx, sizeof(ctx), "%" PRId64, n_ctx);
                /* expires_at -1: in use or kept forever. */
                if (result_int(mo, "keep_alive", 0) >= 0 && result_time(mo, "expires_at", &expires) >= 0 &&
                    expires >= 0) {
                        if (expires <= now)
                                snprintf(until, sizeof(until), "Stopping...");
                        else
                                format_human_time(until, sizeof(until), (expires - now) * 1000000000LL);
                }
                r = table_add_row(t, (const char *const[]){ name, id, size, proc, ctx, until });
                if (r < 0)
                        return r;
        }
        return print_table(q, t);
}

/* A parameter's value as Ollama prints it in show: strings quoted, numbers plain. */
static int format_param_value(const msgpack_object *v, Buf *b) {
        switch (v->type) {
        case MSGPACK_OBJECT_STR:
                return buf_printf(b, "\"%.*s\"", (int)v->via.str.size, v->via.str.ptr);
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                return buf_printf(b, "%" PRIu64, v->via.u64);
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return buf_printf(b, "%" PRId64, v->via.i64);
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                return buf_printf(b, "%g", v->via.f64);
        case MSGPACK_OBJECT_BOOLEAN:
                return buf_append_str(b, v->via.boolean ? "true" : "false");
        case MSGPACK_OBJECT_NIL:
        case MSGPACK_OBJECT_ARRAY:
        case MSGPACK_OBJECT_MAP:
        case MSGPACK_OBJECT_BIN:
        case MSGPACK_OBJECT_EXT:
                break;
        }
        return 0;
}

/* Calls fn for each (name, value) of a parameters map, once per element of an array value (stop). */
static int for_each_param(const msgpack_object *params, int (*fn)(const char *name, const msgpack_object *v, void *u),
                          void *userdata) {
        for (uint32_t i = 0; params && i < params->via.map.size; i++) {
                const msgpack_object *k = &params->via.map.ptr[i].key, *v = &params->via.map.ptr[i].val;
                if (k->type != MSGPACK_OBJECT_STR)
                        continue;
                _cleanup_free_ char *name = strndup(k->via.str.ptr, k->via.str.size);
                if (!name)
                        return -ENOMEM;
                if (v->type == MSGPACK_OBJECT_ARRAY) {
                        for (uint32_t j = 0; j < v->via.array.size; j++) {
                                int r = fn(name, &v->via.array.ptr[j], userdata);
                                if (r < 0)
                                        return r;
                        }
                } else {
                        int r = fn(name, v, userdata);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int param_to_table(const char *name, const msgpack_object *v, void *u) {
        Buf b = {};
        int r = format_param_value(v, &b);
        if (r >= 0)
                r = table_add_row(u, (const char *const[]){ name, b.data ? (char *)b.data : "" });
        buf_free(&b);
        return r;
}

static int param_to_modelfile(const char *name, const msgpack_object *v, void *u) {
        Buf *b = u;
        const ParamInfo *info = param_lookup(name);
        int r = buf_printf(b, "PARAMETER %s ", name);

        if (r >= 0 && v->type == MSGPACK_OBJECT_STR) {
                _cleanup_free_ char *s = strndup(v->via.str.ptr, v->via.str.size);
                if (!s)
                        return -ENOMEM;
                /* A string parameter is written so that it reads back: quoted when it needs to be. */
                r = info && info->type == PARAM_STRING ? modelfile_quote(s, b) : buf_append_str(b, s);
        } else if (r >= 0) {
                Buf tmp = {};
                r = format_param_value(v, &tmp);
                if (r >= 0 && tmp.data)
                        r = buf_append_str(b, (char *)tmp.data);
                buf_free(&tmp);
        }
        return r < 0 ? r : buf_append_str(b, "\n");
}

/* The license as one text: a string, or an array of strings separated by blank lines. */
static char *show_license(const msgpack_object *res) {
        const msgpack_object *l = result_array(res, "license");
        Buf b = {};

        if (!l)
                return result_strdup(res, "license");
        for (uint32_t i = 0; i < l->via.array.size; i++)
                if (l->via.array.ptr[i].type == MSGPACK_OBJECT_STR &&
                    buf_printf(&b, "%s%.*s", i > 0 ? "\n\n" : "", (int)l->via.array.ptr[i].via.str.size,
                               l->via.array.ptr[i].via.str.ptr) < 0) {
                        buf_free(&b);
                        return NULL;
                }
        return b.data ? buf_steal_str(&b) : NULL;
}

/* The Modelfile of a model: the daemon's text when it sends one, else rebuilt from the parts. */
static int show_modelfile(const char *model, const msgpack_object *res, char **ret) {
        char *text = result_strdup(res, "modelfile");
        Buf b = {};
        int r;

        if (text) {
                *ret = text;
                return 0;
        }
        _cleanup_free_ char *template_ = result_strdup(res, "template"), *system = result_strdup(res, "system");
        r = buf_printf(&b, "# Modelfile generated by \"qctl show\"\n# To build a new Modelfile based on this, "
                           "replace FROM with:\n# FROM %s\n\nFROM %s\n",
                       model, model);
        if (r >= 0 && template_) {
                r = buf_append_str(&b, "TEMPLATE ");
                if (r >= 0)
                        r = modelfile_quote(template_, &b);
                if (r >= 0)
                        r = buf_append_str(&b, "\n");
        }
        if (r >= 0 && system) {
                r = buf_append_str(&b, "SYSTEM ");
                if (r >= 0)
                        r = modelfile_quote(system, &b);
                if (r >= 0)
                        r = buf_append_str(&b, "\n");
        }
        if (r >= 0)
                r = for_each_param(result_map(res, "parameters"), param_to_modelfile, &b);
        const msgpack_object *msgs = result_array(res, "messages");
        for (uint32_t i = 0; r >= 0 && msgs && i < msgs->via.array.size; i++) {
                _cleanup_free_ char *role = result_strdup(&msgs->via.array.ptr[i], "role");
                _cleanup_free_ char *content = result_strdup(&msgs->via.array.ptr[i], "content");
                r = buf_printf(&b, "MESSAGE %s ", strempty(role));
                if (r >= 0)
                        r = modelfile_quote(strempty(content), &b);
                if (r >= 0)
                        r = buf_append_str(&b, "\n");
        }
        const msgpack_object *lic = result_array(res, "license");
        for (uint32_t i = 0; r >= 0 && lic && i < lic->via.array.size; i++) {
                if (lic->via.array.ptr[i].type != MSGPACK_OBJECT_STR)
                        continue;
                _cleanup_free_ char *s = strndup(lic->via.array.ptr[i].via.str.ptr, lic->via.array.ptr[i].via.str.size);
                if (!s)
                        return -ENOMEM;
                r = buf_append_str(&b, "LICENSE ");
                if (r >= 0)
                        r = modelfile_quote(s, &b);
                if (r >= 0)
                        r = buf_append_str(&b, "\n");
        }
        if (r >= 0 && !lic) {
                _cleanup_free_ char *s = result_strdup(res, "license");
                if (s) {
                        r = buf_append_str(&b, "LICENSE ");
                        if (r >= 0)
                                r = modelfile_quote(s, &b);
                        if (r >= 0)
                                r = buf_append_str(&b, "\n");
                }
        }
        if (r < 0) {
                buf_free(&b);
                return r;
        }
        *ret = buf_steal_str(&b);
        return *ret ? 0 : -ENOMEM;
}

/* A value from model_info (GGUF metadata) or details, found under any of the given keys. */
static const msgpack_object *info_get(const msgpack_object *res, const char *arch, const char *const *keys) {
        const msgpack_object *mi = result_map(res, "model_info"), *d = result_map(res, "details");

        for (const char *const *k = keys; *k; k++) {
                const msgpack_object *v = NULL;
                if (startswith(*k, "ARCH.")) {
                        if (!arch)
                                continue;
                        _cleanup_free_ char *full = strdup_printf("%s.%s", arch, *k + 5);
                        if (!full)
                                return NULL;
                        v = proto_map_get(mi, full);
                } else
                        v = proto_map_get(mi, *k) ?: proto_map_get(d, *k) ?: proto_map_get(res, *k);
                if (v && v->type != MSGPACK_OBJECT_NIL)
                        return v;
        }
        return NULL;
}

static int value_text(const msgpack_object *v, Buf *b) {
        if (v->type == MSGPACK_OBJECT_STR)
                return buf_printf(b, "%.*s", (int)v->via.str.size, v->via.str.ptr);
        if (v->type == MSGPACK_OBJECT_ARRAY)
                return buf_printf(b, "[%" PRIu32 " values]", v->via.array.size);
        return format_param_value(v, b);
}

/* An indented section: "  Title" then rows of the table indented by four. */
static int print_section(Qctl *q, const char *title, Table *t) {
        Buf b = {};
        int r = table_format(t, &b);

        if (r < 0)
                return r;
        fprintf(q->out, "  %s\n", title);
        /* table_format() puts the headers first; sections have none, so skip that first (empty) line. */
        const char *s = strchr((char *)b.data, '\n');
        for (s = s ? s + 1 : ""; *s;) {
                const char *nl = strchr(s, '\n');
                fprintf(q->out, "    %.*s\n", (int)(nl - s), s);
                s = nl + 1;
        }
        fputc('\n', q->out);
        buf_free(&b);
        return 0;
}

static int print_text_section(Qctl *q, const char *title, const char *text) {
        fprintf(q->out, "  %s\n", title);
        /* Long texts (licenses) show their first two lines, as Ollama does; --license prints all. */
        const char *s = text;
        for (int n = 0; *s && n < 2; n++) {
                const char *nl = strchrnul(s, '\n');
                fprintf(q->out, "    %.*s\n", (int)(nl - s), s);
                s = *nl ? nl + 1 : nl;
        }
        if (*s)
                fprintf(q->out, "    ...\n");
        fputc('\n', q->out);
        return 0;
}

static int show_info(Qctl *q, const char *model, const msgpack_object *res, bool verbose) {
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_free_ char *arch = NULL;
        int r;

        const msgpack_object *a = info_get(res, NULL, (const char *const[]){ "general.architecture", "family",
                                                                           "architecture", NULL });
        if (a && a->type == MSGPACK_OBJECT_STR)
                arch = strndup(a->via.str.ptr, a->via.str.size);

        r = table_new(&t, 2, (const char *const[]){ "", "" });
        if (r < 0)
                return r;
        static const struct {
                const char *label;
                const char *keys[4];
        } rows[] = {
                { "architecture", { "general.architecture", "family", "architecture", NULL } },
                { "parameters", { "general.parameter_count", "parameter_size", "parameters", NULL } },
                { "context length", { "ARCH.context_length", "context_length", NULL } },
                { "embedding length", { "ARCH.embedding_length", "embedding_length", NULL } },
                { "quantization", { "quantization_level", "quantization", "file_type", NULL } },
        };
        for (size_t i = 0; i < ELEMENTSOF(rows); i++) {
                const msgpack_object *v = info_get(res, arch, rows[i].keys);
                Buf b = {};
                if (!v)
                        continue;
                if (i == 1 && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                        char cnt[32];
                        r = buf_append_str(&b, format_count(cnt, sizeof(cnt), v->via.u64));
                } else
                        r = value_text(v, &b);
                if (r >= 0)
                        r = table_add_row(t, (const char *const[]){ rows[i].label, b.data ? (char *)b.data : "" });
                buf_free(&b);
                if (r < 0)
                        return r;
        }
        fputc('\n', q->out);
        r = print_section(q, "Model", t);
        if (r < 0)
                return r;

        const msgpack_object *params = result_map(res, "parameters");
        if (params && params->via.map.size > 0) {
                _cleanup_(table_freep) Table *pt = NULL;
                r = table_new(&pt, 2, (const char *const[]){ "", "" });
                if (r >= 0)
                        r = for_each_param(params, param_to_table, pt);
                if (r >= 0)
                        r = print_section(q, "Parameters", pt);
                if (r < 0)
                        return r;
        }
        _cleanup_free_ char *system = result_strdup(res, "system");
        if (system && *system)
                print_text_section(q, "System", system);
        _cleanup_free_ char *license = show_license(res);
        if (license && *license)
                print_text_section(q, "License", license);

        if (verbose) {
                const msgpack_object *mi = result_map(res, "model_info");
                _cleanup_(table_freep) Table *mt = NULL;
                r = table_new(&mt, 2, (const char *const[]){ "", "" });
                for (uint32_t i = 0; r >= 0 && mi && i < mi->via.map.size; i++) {
                        const msgpack_object *k = &mi->via.map.ptr[i].key;
                        if (k->type != MSGPACK_OBJECT_STR)
                                continue;
                        _cleanup_free_ char *key = strndup(k->via.str.ptr, k->via.str.size);
                        Buf b = {};
                        r = key ? value_text(&mi->via.map.ptr[i].val, &b) : -ENOMEM;
                        if (r >= 0)
                                r = table_add_row(mt, (const char *const[]){ key, b.data ? (char *)b.data : "" });
                        buf_free(&b);
                }
                if (r >= 0)
                        r = print_section(q, "Metadata", mt);
                if (r < 0)
                        return r;
        }
        return 0;
}

int qctl_show_model(Qctl *q, const char *model, ShowWhat what, bool verbose, bool json, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        ProtoMessage m;
        int r;

        packer_open(&p);
        if (msgpack_pack_map(&p.pk, 2) < 0 || proto_pack_kv_str(&p.pk, "model", model) < 0 ||
            proto_pack_kv_bool(&p.pk, "verbose", verbose || json) < 0)
                return -ENOMEM;
        r = qctl_connect(q, e);
        if (r < 0)
                return r;
        r = conn_call(q->conn, "Show", p.sb.data, p.sb.size, NULL, 0, NULL, &m, e);
        if (r < 0)
                return r;
        if (json)
                return print_json(q, m.result);

        switch (what) {
        case SHOW_INFO:
                return show_info(q, model, m.result, verbose);
        case SHOW_MODELFILE: {
                _cleanup_free_ char *text = NULL;
                r = show_modelfile(model, m.result, &text);
                if (r < 0)
                        return r;
                fputs(text, q->out);
                return 0;
        }
        case SHOW_PARAMETERS: {
                const msgpack_object *params = result_map(m.result, "parameters");
                _cleanup_free_ char *s = result_strdup(m.result, "parameters");
                if (s) {
                        fprintf(q->out, "%s\n", s);
                        return 0;
                }
                _cleanup_(table_freep) Table *t = NULL;
                r = table_new(&t, 2, (const char *const[]){ "", "" });
                if (r >= 0)
                        r = for_each_param(params, param_to_table, t);
                if (r < 0)
                        return r;
                Buf b = {};
                r = table_format(t, &b);
                if (r >= 0) {
                        const char *body = strchr((char *)b.data, '\n');
                        fputs(body ? body + 1 : "", q->out);
                }
                buf_free(&b);
                return r;
        }
        case SHOW_TEMPLATE:
        case SHOW_SYSTEM: {
                _cleanup_free_ char *s = result_strdup(m.result, what == SHOW_TEMPLATE ? "template" : "system");
                if (s && *s)
                        fprintf(q->out, "%s%s", s, endswith(s, "\n") ? "" : "\n");
                return 0;
        }
        case SHOW_LICENSE: {
                _cleanup_free_ char *s = show_license(m.result);
                if (s && *s)
                        fprintf(q->out, "%s%s", s, endswith(s, "\n") ? "" : "\n");
                return 0;
        }
        case _SHOW_WHAT_MAX:
        case _SHOW_WHAT_INVALID:
                break;
        }
        return -EINVAL;
}

/* Progress events of pull, push and create: {status, digest, total, completed}. */
static int on_progress(const ProtoMessage *m, void *userdata) {
        Progress *p = userdata;
        _cleanup_free_ char *status = result_strdup(m->params, "status");
        _cleanup_free_ char *digest = result_strdup(m->params, "digest");

        if (!status && !digest)
                return 0;
        /* The job's own last event; qctl says "success" once, after the reply. */
        if (status && !digest && streq(status, "success"))
                return 0;
        return progress_update(p, status ?: "working", digest, (uint64_t)MAX(result_int(m->params, "completed", 0), 0),
                               (uint64_t)MAX(result_int(m->params, "total", 0), 0), now_ns());
}

/* Progress of Quantize (and create -q): one line for all tensors, counted in source bytes. */
static int on_quantize_progress(const ProtoMessage *m, void *userdata) {
        _cleanup_free_ char *status = result_strdup(m->params, "status");

        if (!status || !startswith(status, "quantizing"))
                return on_progress(m, userdata);
        return progress_update(userdata, "quantizing", NULL,
                               (uint64_t)MAX(result_int(m->params, "completed", 0), 0),
                               (uint64_t)MAX(result_int(m->params, "total", 0), 0), now_ns());
}

/* Calls a method whose job reports progress (pull, push, create, quantize, export, import), drawn on q->err
 * by on_event; the reply goes to *ret (may be NULL) as conn_call() gives it. */
static int call_with_progress(Qctl *q, const char *method, const Packer *p, const int *fds, size_t n_fds,
                              int (*on_event)(const ProtoMessage *m, void *userdata), ProtoMessage *ret,
                              QdError *e) {
        _cleanup_(progress_freep) Progress *pr = NULL;
        int r;

        r = qctl_connect(q, e);
        if (r < 0)
                return r;
        r = progress_new(&pr, q->err, q->err_tty, q->width);
        if (r < 0)
                return r;
        CallHooks h = { .on_event = on_event, .interrupted = q->interrupted, .userdata = pr };
        r = conn_call(q->conn, method, p->sb.data, p->sb.size, fds, n_fds, &h, ret, e);
        progress_finish(pr);
        return r;
}

int qctl_transfer(Qctl *q, const char *method, const char *model, bool insecure, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        int r;

        packer_open(&p);
        if (msgpack_pack_map(&p.pk, 2) < 0 || proto_pack_kv_str(&p.pk, "model", model) < 0 ||
            proto_pack_kv_bool(&p.pk, "insecure", insecure) < 0)
                return -ENOMEM;
        r = call_with_progress(q, method, &p, NULL, 0, on_progress, NULL, e);
        if (r < 0)
                return r;
        fprintf(q->err, "success\n");
        return 0;
}

/* Whether the file starts as a model archive does: a tar header, or gzip's or zstd's magic around one. */
static bool is_archive(int fd) {
        uint8_t head[512];
        ssize_t n = pread(fd, head, sizeof(head), 0);

        if (n >= 2 && head[0] == 0x1f && head[1] == 0x8b)
                return true;
        if (n >= 4 && memcmp(head, "\x28\xb5\x2f\xfd", 4) == 0)
                return true;
        return n == (ssize_t)sizeof(head) && memcmp(head + 257, "ustar", 5) == 0;
}

enum { FROM_GGUF, FROM_HF_DIR, FROM_ARCHIVE };

/* Opens what FROM names, for the daemon: a file, a model archive or a Hugging Face folder is passed as a
 * descriptor, never as a path. Returns which of them it is. */
static int open_from(const Modelfile *mf, const char *file, int *ret_fd, QdError *e) {
        struct stat st;
        int fd = open(mf->from_path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

        if (fd < 0)
                return qd_error_set(e, errno, "%s:%u: FROM names '%s', which cannot be opened: %s.", file, mf->from_line,
                                    mf->from_path, strerror(errno));
        if (fstat(fd, &st) < 0) {
                int r = -errno;
                safe_close(fd);
                return qd_error_set(e, r, "Cannot stat '%s': %s.", mf->from_path, strerror(-r));
        }
        if (S_ISDIR(st.st_mode)) {
                /* Reopened as a folder: the daemon reads it only through this descriptor, with openat(). */
                safe_close(fd);
                fd = open(mf->from_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (fd < 0)
                        return qd_error_set(e, errno, "%s:%u: FROM names the folder '%s', which cannot be opened: %s.",
                                            file, mf->from_line, mf->from_path, strerror(errno));
                *ret_fd = fd;
                return FROM_HF_DIR;
        }
        if (!S_ISREG(st.st_mode)) {
                safe_close(fd);
                return qd_error_set(e, EINVAL, "%s:%u: FROM names '%s', which is not a regular file.", file,
                                    mf->from_line, mf->from_path);
        }
        *ret_fd = fd;
        return is_archive(fd) ? FROM_ARCHIVE : FROM_GGUF;
}

int qctl_pack_create(msgpack_packer *pk, const char *name, const Modelfile *mf, const char *fd_param,
                     const char *quantize) {
        uint32_t n = 2 + !!mf->template_ + !!mf->system + (mf->params.n > 0) + !!mf->licenses +
                     (mf->n_messages > 0) + !!mf->requires + !!quantize;
        int r = 0;

        if (msgpack_pack_map(pk, n) < 0 || proto_pack_kv_str(pk, "model", name) < 0)
                return -ENOMEM;
        /* Descriptor 0 of the message is the GGUF file or the Hugging Face folder. */
        r = fd_param ? proto_pack_kv_u64(pk, fd_param, 0) : proto_pack_kv_str(pk, "from", mf->from);
        if (r >= 0 && mf->template_)
                r = proto_pack_kv_str(pk, "template", mf->template_);
        if (r >= 0 && mf->system)
                r = proto_pack_kv_str(pk, "system", mf->system);
        if (r >= 0 && mf->params.n > 0) {
                r = proto_pack_key(pk, "parameters");
                if (r >= 0)
                        r = pack_options(pk, &mf->params);
        }
        if (r >= 0 && mf->licenses) {
                size_t k = 0;
                while (mf->licenses[k])
                        k++;
                r = proto_pack_key(pk, "license");
                if (r >= 0 && msgpack_pack_array(pk, k) < 0)
                        r = -ENOMEM;
                for (size_t i = 0; r >= 0 && i < k; i++)
                        r = proto_pack_str(pk, mf->licenses[i]);
        }
        if (r >= 0 && mf->n_messages > 0) {
                r = proto_pack_key(pk, "messages");
                if (r >= 0 && msgpack_pack_array(pk, mf->n_messages) < 0)
                        r = -ENOMEM;
                for (size_t i = 0; r >= 0 && i < mf->n_messages; i++) {
                        if (msgpack_pack_map(pk, 2) < 0)
                                return -ENOMEM;
                        r = proto_pack_kv_str(pk, "role", message_role_to_string(mf->messages[i].role));
                        if (r >= 0)
                                r = proto_pack_kv_str(pk, "content", mf->messages[i].content);
                }
        }
        if (r >= 0 && mf->requires)
                r = proto_pack_kv_str(pk, "requires", mf->requires);
        if (r >= 0 && quantize)
                r = proto_pack_kv_str(pk, "quantize", quantize);
        return r;
}

int qctl_create(Qctl *q, const char *name, const Modelfile *mf, const char *file, const char *quantize,
                QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        _cleanup_close_ int fd = -EBADF;
        int r, kind = FROM_GGUF;

        if (mf->adapter)
                return qd_error_set(e, EOPNOTSUPP,
                                    "%s: ADAPTER is not supported yet: quantd cannot apply LoRA adapters.", file);
        if (mf->from_path) {
                r = open_from(mf, file, &fd, e);
                if (r < 0)
                        return r;
                kind = r;
        }
        packer_open(&p);
        r = qctl_pack_create(&p.pk, name, mf,
                             fd < 0                 ? NULL
                             : kind == FROM_HF_DIR  ? "hf_dir"
                             : kind == FROM_ARCHIVE ? "archive"
                                                    : "gguf",
                             quantize);
        if (r < 0)
                return r;
        for (int attempt = 0;; attempt++) {
                r = call_with_progress(q, "Create", &p, fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0,
                                       on_quantize_progress, NULL, e);
                if (r != -ENOENT || fd >= 0 || attempt > 0)
                        break;
                /* FROM a model that is not stored: pulled first, as `ollama create` does. */
                fprintf(q->err, "%s Pulling it.\n", e->msg);
                qd_error_clear(e);
                r = qctl_transfer(q, "Pull", mf->from, false, e);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        fprintf(q->err, "success\n");
        return 0;
}

static int verb_create(Qctl *q, Command *c, QdError *e) {
        _cleanup_(modelfile_freep) Modelfile *mf = NULL;
        int r;

        r = modelfile_load(c->file, &mf, e);
        if (r == -ENOENT && streq(c->file, "Modelfile")) {
                /* The default file is the usual reason: say how to name another. */
                qd_error_clear(e);
                return qd_error_set(e, ENOENT, "No Modelfile in the current folder: name one with -f FILE.");
        }
        if (r < 0)
                return r;
        for (char **w = mf->warnings; w && *w; w++)
                fprintf(q->err, "Warning: %s.\n", *w);
        return qctl_create(q, c->args[0], mf, c->file, c->quantize, e);
}

static int verb_cp(Qctl *q, Command *c, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        int r;

        packer_open(&p);
        if (msgpack_pack_map(&p.pk, 2) < 0 || proto_pack_kv_str(&p.pk, "source", c->args[0]) < 0 ||
            proto_pack_kv_str(&p.pk, "destination", c->args[1]) < 0)
                return -ENOMEM;
        r = qctl_connect(q, e);
        if (r < 0)
                return r;
        r = conn_call(q->conn, "Copy", p.sb.data, p.sb.size, NULL, 0, NULL, NULL, e);
        if (r < 0)
                return r;
        fprintf(q->out, "copied '%s' to '%s'\n", c->args[0], c->args[1]);
        return 0;
}

static int verb_rm(Qctl *q, Command *c, QdError *e) {
        for (size_t i = 0; i < c->n_args; i++) {
                int r = call_model(q, "Delete", c->args[i], NULL, e);
                if (r < 0)
                        return r;
                fprintf(q->out, "deleted '%s'\n", c->args[i]);
        }
        return 0;
}

static int verb_stop(Qctl *q, Command *c, QdError *e) {
        return call_model(q, "Unload", c->args[0], NULL, e);
}

/* ---- quantize and eval ---- */

/* A temporary file that is removed unless it was committed (the name freed and set to NULL). */
static void unlink_tmpp(char **p) {
        if (*p) {
                (void)unlink(*p);
                free(*p);
        }
}

/* Opens a GGUF file to pass to the daemon, checking its magic first for a quick, clear error. */
static int open_gguf(const char *path, int *ret, QdError *e) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        char magic[4];
        struct stat st;

        if (fd < 0)
                return qd_error_set(e, errno, "Cannot open '%s': %s.", path, strerror(errno));
        if (fstat(fd, &st) < 0)
                return qd_error_set(e, errno, "Cannot stat '%s': %s.", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return qd_error_set(e, EINVAL, "'%s' is not a regular file.", path);
        if (pread(fd, magic, sizeof(magic), 0) != (ssize_t)sizeof(magic) || memcmp(magic, "GGUF", 4) != 0)
                return qd_error_set(e, EBADMSG, "'%s' is not a GGUF file: it does not start with \"GGUF\".",
                                    path);
        *ret = TAKE_FD(fd);
        return 0;
}

/* Creates the temporary file that a job writes and commit_output() makes path: beside it, so that the final
 * rename stays in one file system. Without force, refuses a path that exists. Returns the descriptor. */
static int open_output(const char *path, bool force, char **ret_tmp, QdError *e) {
        int fd;

        if (access(path, F_OK) >= 0 && !force)
                return qd_error_set(e, EEXIST, "'%s' exists: add --force to replace it.", path);
        fd = tmpfile_beside(path, ret_tmp);
        if (fd < 0)
                return qd_error_set(e, -fd, "Cannot create a file beside '%s': %s.", path, strerror(-fd));
        return fd;
}

/* Makes *tmp the file at path once the job wrote it, and says "success"; without force, fails with EEXIST
 * when path appeared while the job was doing (a word for the error, such as "exporting"). */
static int commit_output(Qctl *q, int fd, char **tmp, const char *path, bool force, const char *doing,
                         QdError *e) {
        int r = tmpfile_commit(fd, *tmp, path, force);

        if (r == -EEXIST)
                return qd_error_set(e, EEXIST, "'%s' appeared while %s: add --force to replace it.", path,
                                    doing);
        if (r < 0)
                return qd_error_set(e, -r, "Cannot write '%s': %s.", path, strerror(-r));
        free(TAKE_PTR(*tmp));
        fprintf(q->err, "success\n");
        return 0;
}

static int verb_quantize(Qctl *q, Command *c, QdError *e) {
        const char *src_path = c->args[0], *dst_path = c->args[1], *type = c->args[2];
        _cleanup_(unlink_tmpp) char *tmp = NULL;
        _cleanup_(packer_close) Packer p = {};
        _cleanup_close_ int src = -EBADF, dst = -EBADF;
        struct stat sst, dst_st;
        int r;

        r = open_gguf(src_path, &src, e);
        if (r < 0)
                return r;
        if (fstat(src, &sst) < 0)
                return -errno;
        if (stat(dst_path, &dst_st) >= 0 && dst_st.st_dev == sst.st_dev && dst_st.st_ino == sst.st_ino)
                return qd_error_set(e, EINVAL, "'%s' is the source file: give another DST.", dst_path);
        dst = open_output(dst_path, c->force, &tmp, e);
        if (dst < 0)
                return dst;

        packer_open(&p);
        uint32_t n = 3 + c->pure + c->leave_output + c->allow_requantize + (c->n_tensor_types > 0);
        r = msgpack_pack_map(&p.pk, n) < 0 ? -ENOMEM : 0;
        if (r >= 0)
                r = proto_pack_kv_u64(&p.pk, "src", 0);
        if (r >= 0)
                r = proto_pack_kv_u64(&p.pk, "dst", 1);
        if (r >= 0)
                r = proto_pack_kv_str(&p.pk, "type", type);
        if (r >= 0 && c->pure)
                r = proto_pack_kv_bool(&p.pk, "pure", true);
        if (r >= 0 && c->leave_output)
                r = proto_pack_kv_bool(&p.pk, "leave_output", true);
        if (r >= 0 && c->allow_requantize)
                r = proto_pack_kv_bool(&p.pk, "allow_requantize", true);
        if (r >= 0 && c->n_tensor_types > 0) {
                r = proto_pack_key(&p.pk, "overrides");
                if (r >= 0 && msgpack_pack_array(&p.pk, c->n_tensor_types) < 0)
                        r = -ENOMEM;
                for (size_t i = 0; r >= 0 && i < c->n_tensor_types; i++) {
                        /* PATTERN=TYPE split at the last '=', as a pattern may hold one. */
                        const char *s = c->tensor_types[i], *eq = strrchr(s, '=');
                        _cleanup_free_ char *pattern = strndup(s, (size_t)(eq - s));
                        if (!pattern || msgpack_pack_map(&p.pk, 2) < 0)
                                return -ENOMEM;
                        r = proto_pack_kv_str(&p.pk, "pattern", pattern);
                        if (r >= 0)
                                r = proto_pack_kv_str(&p.pk, "type", eq + 1);
                }
        }
        if (r < 0)
                return r;
        const int fds[2] = { src, dst };
        r = call_with_progress(q, "Quantize", &p, fds, 2, on_quantize_progress, NULL, e);
        if (r < 0)
                return r;
        return commit_output(q, dst, &tmp, dst_path, c->force, "quantizing", e);
}

/* qctl export: the archive's format by FILE's suffix; FILE is written as quantize's DST is. */
static int verb_export(Qctl *q, Command *c, QdError *e) {
        const char *model = c->args[0], *path = c->args[1];
        _cleanup_(unlink_tmpp) char *tmp = NULL;
        _cleanup_(packer_close) Packer p = {};
        _cleanup_close_ int fd = -EBADF;
        const char *format;
        int r;

        if (endswith(path, ".tar"))
                format = "tar";
        else if (endswith(path, ".tar.gz") || endswith(path, ".tgz"))
                format = "tar.gz";
        else if (endswith(path, ".tar.zst"))
                format = "tar.zst";
        else
                return qd_error_set(e, EINVAL,
                                    "qctl export: FILE must end in .tar, .tar.gz, .tgz or .tar.zst.");
        fd = open_output(path, c->force, &tmp, e);
        if (fd < 0)
                return fd;

        packer_open(&p);
        if (msgpack_pack_map(&p.pk, 3) < 0 || proto_pack_kv_str(&p.pk, "model", model) < 0 ||
            proto_pack_kv_u64(&p.pk, "fd", 0) < 0 || proto_pack_kv_str(&p.pk, "format", format) < 0)
                return -ENOMEM;
        r = call_with_progress(q, "Export", &p, &fd, 1, on_progress, NULL, e);
        if (r < 0)
                return r;
        return commit_output(q, fd, &tmp, path, c->force, "exporting", e);
}

/* qctl import: the archive travels as a descriptor, read by the daemon's job. */
static int verb_import(Qctl *q, Command *c, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        _cleanup_close_ int fd = open(c->args[0], O_RDONLY | O_CLOEXEC | O_NOCTTY);
        const char *model = c->args[1];
        ProtoMessage m;
        struct stat st;
        int r;

        if (fd < 0)
                return qd_error_set(e, errno, "Cannot open '%s': %s.", c->args[0], strerror(errno));
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return qd_error_set(e, EINVAL, "'%s' is a folder; give an archive that qctl export wrote.",
                                    c->args[0]);
        packer_open(&p);
        if (msgpack_pack_map(&p.pk, 1 + !!model) < 0 || proto_pack_kv_u64(&p.pk, "archive", 0) < 0 ||
            (model && proto_pack_kv_str(&p.pk, "model", model) < 0))
                return -ENOMEM;
        r = call_with_progress(q, "Import", &p, &fd, 1, on_progress, &m, e);
        if (r < 0)
                return r;
        _cleanup_free_ char *name = result_strdup(m.result, "name");
        fprintf(q->out, "imported '%s'\n", strna(name ?: model));
        return 0;
}

/* A model for eval: an existing file or a name ending in .gguf is opened and passed; anything else names a
 * model in the store. Packs key (or key_fd) and returns the descriptor to send, or -EBADF for a name. */
static int pack_eval_model(msgpack_packer *pk, const char *key, const char *arg, int *fd, size_t fd_index,
                           QdError *e) {
        struct stat st;
        char fd_key[32];
        int r;

        if (!endswith(arg, ".gguf") && !(stat(arg, &st) >= 0 && S_ISREG(st.st_mode)))
                return proto_pack_kv_str(pk, key, arg);
        r = open_gguf(arg, fd, e);
        if (r < 0)
                return r;
        snprintf(fd_key, sizeof(fd_key), "%s_fd", key);
        return proto_pack_kv_u64(pk, fd_key, fd_index);
}

typedef struct EvalDisplay {
        Qctl *q;
        bool drawn;
} EvalDisplay;

/* Eval's steps: loading, then chunks, on one line redrawn on a terminal; nothing elsewhere, so that a log or
 * a script sees only the figures (or the error). */
static int on_eval_progress(const ProtoMessage *m, void *userdata) {
        EvalDisplay *d = userdata;
        _cleanup_free_ char *status = result_strdup(m->params, "status");
        int64_t done = result_int(m->params, "completed", 0), total = result_int(m->params, "total", 0);
        char line[128];

        if (!status || streq(status, "success"))
                return 0;
        if (total > 0)
                snprintf(line, sizeof(line), "%s: chunk %" PRId64 " of %" PRId64, status, done, total);
        else
                snprintf(line, sizeof(line), "%s", status);
        if (d->q->err_tty) {
                fprintf(d->q->err, "\r%s\033[K", line);
                fflush(d->q->err);
                d->drawn = true;
        }
        return 0;
}

static int verb_eval(Qctl *q, Command *c, QdError *e) {
        _cleanup_(packer_close) Packer p = {};
        _cleanup_close_ int text = -EBADF, model = -EBADF, base = -EBADF;
        struct stat st;
        ProtoMessage m;
        int r;

        text = open(c->file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (text < 0)
                return qd_error_set(e, errno, "Cannot open the text '%s': %s.", c->file, strerror(errno));
        if (fstat(text, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return qd_error_set(e, EINVAL, "The text '%s' is a folder; give a text file.", c->file);

        packer_open(&p);
        uint32_t n = 2 + !!c->base + (c->n_ctx > 0) + (c->chunks > 0);
        r = msgpack_pack_map(&p.pk, n) < 0 ? -ENOMEM : 0;
        if (r >= 0)
                r = proto_pack_kv_u64(&p.pk, "text", 0);
        if (r >= 0)
                r = pack_eval_model(&p.pk, "model", c->args[0], &model, 1, e);
        if (r >= 0 && c->base)
                r = pack_eval_model(&p.pk, "base", c->base, &base, model >= 0 ? 2 : 1, e);
        if (r >= 0 && c->n_ctx > 0)
                r = proto_pack_kv_u64(&p.pk, "n_ctx", c->n_ctx);
        if (r >= 0 && c->chunks > 0)
                r = proto_pack_kv_u64(&p.pk, "chunks", c->chunks);
        if (r < 0)
                return r;
        int fds[3] = { text };
        size_t n_fds = 1;
        if (model >= 0)
                fds[n_fds++] = model;
        if (base >= 0)
                fds[n_fds++] = base;

        r = qctl_connect(q, e);
        if (r < 0)
                return r;
        EvalDisplay d = { .q = q };
        CallHooks h = { .on_event = on_eval_progress, .interrupted = q->interrupted, .userdata = &d };
        r = conn_call(q->conn, "Eval", p.sb.data, p.sb.size, fds, n_fds, &h, &m, e);
        if (d.drawn)
                fputs("\r\033[K", q->err);
        if (r < 0)
                return r;
        if (c->json)
                return print_json(q, m.result);

        const msgpack_object *res = m.result;
        char size[32];
        format_bytes(size, sizeof(size), (uint64_t)MAX(result_int(res, "file_size", 0), 0));
        fprintf(q->out, "model              %s\n", c->args[0]);
        fprintf(q->out, "file size          %s (%.2f bits per weight)\n", size,
                result_double(res, "bits_per_weight", 0));
        fprintf(q->out, "scored tokens      %" PRId64 " in %" PRId64 " chunks of %" PRId64 "\n",
                result_int(res, "scored_tokens", 0), result_int(res, "chunks", 0),
                result_int(res, "n_ctx", 0));
        fprintf(q->out, "perplexity         %.4f\n", result_double(res, "perplexity", 0));
        if (c->base) {
                fprintf(q->out, "base               %s\n", c->base);
                fprintf(q->out, "base perplexity    %.4f\n", result_double(res, "base_perplexity", 0));
                fprintf(q->out, "mean KLD           %.6f\n", result_double(res, "kld_mean", 0));
                fprintf(q->out, "99%% KLD            %.6f\n", result_double(res, "kld_p99", 0));
                fprintf(q->out, "top-1 agreement    %.2f%%\n",
                        100.0 * result_double(res, "top1_agreement", 0));
        }
        return 0;
}

static int verb_version(Qctl *q, Command *c, QdError *e) {
        ProtoMessage m;
        QdError ce = {};
        int r;

        r = qctl_connect(q, &ce);
        if (r >= 0)
                r = conn_call(q->conn, "Version", NULL, 0, NULL, 0, NULL, &m, &ce);
        if (r < 0) {
                /* Still useful without a daemon, as `ollama --version` is. */
                fprintf(q->err, "Warning: could not get the daemon's version: %s\n", ce.msg);
                fprintf(q->out, "qctl version is %s\n", PACKAGE_VERSION);
                return 0;
        }
        _cleanup_free_ char *v = result_strdup(m.result, "version");
        fprintf(q->out, "quantd version is %s\n", strna(v));
        fprintf(q->out, "qctl version is %s\n", PACKAGE_VERSION);
        return 0;
}

int qctl_run_command(Qctl *q, Command *c, QdError *e) {
        switch (c->verb) {
        case VERB_RUN:
                return verb_run(q, c, e);
        case VERB_PULL:
                return qctl_transfer(q, "Pull", c->args[0], c->insecure, e);
        case VERB_PUSH:
                return qctl_transfer(q, "Push", c->args[0], c->insecure, e);
        case VERB_CREATE:
                return verb_create(q, c, e);
        case VERB_LIST:
                return verb_list(q, c, e);
        case VERB_PS:
                return verb_ps(q, c, e);
        case VERB_SHOW:
                return qctl_show_model(q, c->args[0], c->show, c->verbose, c->json, e);
        case VERB_CP:
                return verb_cp(q, c, e);
        case VERB_RM:
                return verb_rm(q, c, e);
        case VERB_STOP:
                return verb_stop(q, c, e);
        case VERB_QUANTIZE:
                return verb_quantize(q, c, e);
        case VERB_EVAL:
                return verb_eval(q, c, e);
        case VERB_EXPORT:
                return verb_export(q, c, e);
        case VERB_IMPORT:
                return verb_import(q, c, e);
        case VERB_VERSION:
                return verb_version(q, c, e);
        case _VERB_MAX:
        case _VERB_INVALID:
                break;
        }
        return -EINVAL;
}
