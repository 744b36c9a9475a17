/* SPDX-License-Identifier: MIT */
/*
 * The method table: every method of quantd-protocol(7), implemented once for both front ends. Handlers
 * decode their params with proto_dispatch(), reply at once or hand the request to a job or the scheduler.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <sys/stat.h>

#include "config.h"
#include "daemon-internal.h"
#include "engine.h"
#include "quant.h"

static int reply_simple(Request *r, Reply *rep, int k) {
        if (k < 0) {
                reply_done(rep);
                return k;
        }
        request_reply(r, rep);
        reply_done(rep);
        return 0;
}

/* ---- Hello, Version ---- */

static int pack_backends(msgpack_packer *pk) {
        int n = HAVE_CUDA ? 2 : 1;
        if (msgpack_pack_array(pk, (size_t)n) < 0 || proto_pack_str(pk, "cpu") < 0)
                return -ENOMEM;
        if (HAVE_CUDA && proto_pack_str(pk, "cuda") < 0)
                return -ENOMEM;
        return 0;
}

static int pack_types(msgpack_packer *pk) {
        size_t n = 0;
        for (uint32_t t = 0; t < _GGML_TYPE_MAX; t++)
                n += ggml_type_info(t) != NULL;
        if (msgpack_pack_array(pk, n) < 0)
                return -ENOMEM;
        for (uint32_t t = 0; t < _GGML_TYPE_MAX; t++)
                if (ggml_type_info(t) && proto_pack_str(pk, ggml_type_name(t)) < 0)
                        return -ENOMEM;
        return 0;
}

static int method_hello(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                uint32_t protocol, minor;
        } a = {PROTO_VERSION_MAJOR, 0};
        static const ProtoField fields[] = {
                {"protocol", PROTO_FIELD_U32, offsetof(typeof(a), protocol)},
                {"minor", PROTO_FIELD_U32, offsetof(typeof(a), minor)},
                {},
        };
        Reply rep;
        int k;

        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        if (a.protocol != PROTO_VERSION_MAJOR)
                return qd_error_set(err, EPROTONOSUPPORT,
                                    "This daemon speaks protocol version %u, the client version %" PRIu32
                                    "; install matching versions of quantd and its client.",
                                    PROTO_VERSION_MAJOR, a.protocol);

        size_t n_methods = 0;
        for (const Method *x = daemon_methods; x->name; x++)
                n_methods++;
        reply_init(&rep);
        k = msgpack_pack_map(&rep.pk, 5) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "protocol", PROTO_VERSION_MAJOR);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "minor", PROTO_VERSION_MINOR);
        if (k >= 0)
                k = proto_pack_kv_str(&rep.pk, "version", PACKAGE_VERSION);
        if (k >= 0)
                k = proto_pack_key(&rep.pk, "methods");
        if (k >= 0)
                k = msgpack_pack_array(&rep.pk, n_methods) < 0 ? -ENOMEM : 0;
        for (const Method *x = daemon_methods; k >= 0 && x->name; x++)
                k = proto_pack_str(&rep.pk, x->name);
        if (k >= 0)
                k = proto_pack_key(&rep.pk, "capabilities");
        if (k >= 0)
                k = msgpack_pack_map(&rep.pk, 4) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = proto_pack_key(&rep.pk, "backends");
        if (k >= 0)
                k = pack_backends(&rep.pk);
        if (k >= 0)
                k = proto_pack_key(&rep.pk, "types");
        if (k >= 0)
                k = pack_types(&rep.pk);
        /* What Create's quantize can produce: llama-quantize's mixtures. */
        if (k >= 0)
                k = proto_pack_key(&rep.pk, "quant_types");
        if (k >= 0)
                k = msgpack_pack_array(&rep.pk, _QUANT_MIXTURE_MAX) < 0 ? -ENOMEM : 0;
        for (int q = 0; k >= 0 && q < _QUANT_MIXTURE_MAX; q++)
                k = proto_pack_str(&rep.pk, quant_mixture_name((QuantMixture)q));
        if (k >= 0)
                k = proto_pack_kv_bool(&rep.pk, "may_change_store", request_caller(r)->may_change_store);
        return reply_simple(r, &rep, k);
}

static int method_version(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        Reply rep;
        int k;

        reply_init(&rep);
        k = msgpack_pack_map(&rep.pk, 4) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = proto_pack_kv_str(&rep.pk, "version", PACKAGE_VERSION);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "protocol", PROTO_VERSION_MAJOR);
        if (k >= 0)
                k = proto_pack_key(&rep.pk, "backends");
        if (k >= 0)
                k = pack_backends(&rep.pk);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "uptime_ms", (now_ns() - m->started_ns) / 1000000);
        return reply_simple(r, &rep, k);
}

/* ---- the store ---- */

static int method_list(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        StoreModel *l = NULL;
        size_t n = 0;
        Reply rep;
        int k;

        k = m->store_ops->list(m->store, &l, &n, err);
        if (k < 0)
                return k;
        reply_init(&rep);
        k = msgpack_pack_map(&rep.pk, 1) < 0 || proto_pack_key(&rep.pk, "models") < 0 ||
                            msgpack_pack_array(&rep.pk, n) < 0
                    ? -ENOMEM
                    : 0;
        for (size_t i = 0; k >= 0 && i < n; i++)
                if (msgpack_pack_map(&rep.pk, 4) < 0 || proto_pack_kv_str(&rep.pk, "name", l[i].name) < 0 ||
                    proto_pack_kv_u64(&rep.pk, "size", l[i].size) < 0 ||
                    proto_pack_kv_i64(&rep.pk, "modified_at", l[i].modified_s) < 0 ||
                    proto_pack_kv_str(&rep.pk, "digest", l[i].digest) < 0)
                        k = -ENOMEM;
        store_model_free_many(l, n);
        return reply_simple(r, &rep, k);
}

typedef struct ModelArg {
        const char *model;
} ModelArg;

static const ProtoField model_fields[] = {
        {"model", PROTO_FIELD_STRING, offsetof(ModelArg, model), true},
        {},
};

static int method_show(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        ModelArg a = {};
        _cleanup_free_ char *path = NULL;
        _cleanup_(gguf_freep) Gguf *g = NULL;
        Reply rep;
        int k;

        k = proto_dispatch(call->params, model_fields, &a, call->zone, err);
        if (k < 0)
                return k;
        k = m->store_ops->resolve(m->store, a.model, &path, NULL, err);
        if (k < 0)
                return k;
        k = gguf_open(path, &g, err);
        if (k < 0)
                return k;

        _cleanup_free_ char *arch = NULL, *name = NULL;
        (void)gguf_get_string(g, "general.architecture", &arch);
        (void)gguf_get_string(g, "general.name", &name);
        uint32_t ctx = 0, embd = 0, layers = 0;
        if (arch) {
                char key[128];
                snprintf(key, sizeof(key), "%s.context_length", arch);
                (void)gguf_get_u32(g, key, &ctx);
                snprintf(key, sizeof(key), "%s.embedding_length", arch);
                (void)gguf_get_u32(g, key, &embd);
                snprintf(key, sizeof(key), "%s.block_count", arch);
                (void)gguf_get_u32(g, key, &layers);
        }
        reply_init(&rep);
        k = msgpack_pack_map(&rep.pk, 6) < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = proto_pack_kv_str(&rep.pk, "model", a.model);
        if (k >= 0)
                k = proto_pack_kv_str(&rep.pk, "architecture", arch);
        if (k >= 0)
                k = proto_pack_kv_str(&rep.pk, "general_name", name);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "context_length", ctx);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "embedding_length", embd);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "block_count", layers);
        return reply_simple(r, &rep, k);
}

/* "Q4_0, Q4_1, …": the mixtures, for messages. */
static int mixture_list(Buf *b) {
        int k = 0;
        for (int q = 0; k >= 0 && q < _QUANT_MIXTURE_MAX; q++)
                if (quant_mixture_name((QuantMixture)q))
                        k = buf_printf(b, "%s%s", b->len > 0 ? ", " : "",
                                       quant_mixture_name((QuantMixture)q));
        return k;
}

static int unknown_mixture(const char *name, QdError *err) {
        _cleanup_(buf_free) Buf b = {};
        if (mixture_list(&b) < 0)
                return -ENOMEM;
        return qd_error_set(err, EINVAL, "Unknown quantization type '%s': choose one of %s.", name,
                            (char *)b.data);
}

typedef struct CreateJob {
        Manager *manager;
        char *model;
        int fd; /* the GGUF: passed by the client, or the base model's blob (FROM a local model) */
        int hf_dir; /* a Hugging Face folder passed by the client, converted into fd by the job; or -EBADF */
        int archive; /* a model archive passed by the client, imported by the job; or -EBADF */
        char *template, *system, *parameters, *messages;
        char **licenses;
        int quantize; /* a QuantMixture, or -1 to store the file as it is */
} CreateJob;

static void create_job_free(void *userdata) {
        CreateJob *c = userdata;
        safe_close(c->fd);
        safe_close(c->hf_dir);
        safe_close(c->archive);
        free(c->model);
        free(c->template);
        free(c->system);
        free(c->parameters);
        free(c->messages);
        strv_free(c->licenses);
        free(c);
}

static void store_progress(const char *status, const char *digest, uint64_t completed, uint64_t total,
                           void *userdata) {
        job_progress(userdata, status, digest, total, completed);
}

/* Quantization's progress in source bytes, so that a client can show a rate and the time left; the status
 * names the tensor. */
typedef struct QuantProgress {
        Job *job;
        const Gguf *src;
        uint64_t done, total;
} QuantProgress;

static void quant_progress_init(QuantProgress *q, Job *j, const Gguf *src) {
        *q = (QuantProgress){.job = j, .src = src};
        for (uint64_t i = 0; i < src->n_tensors; i++)
                q->total += src->tensors[i].size;
        job_progress(j, "quantizing", NULL, q->total, 0);
}

static void quant_progress(void *userdata, size_t i, size_t n, const char *name, uint32_t type) {
        QuantProgress *q = userdata;
        char status[128];

        if (i < q->src->n_tensors)
                q->done += q->src->tensors[i].size;
        snprintf(status, sizeof(status), "quantizing %s to %s", name, ggml_type_name(type));
        job_progress(q->job, status, NULL, q->total, MIN(q->done, q->total));
}

/* Writes the quantized model to an unnamed file in the store's directory; returns its descriptor. */
static int quantize_to_tmpfile(Job *j, CreateJob *c, QdError *err) {
        _cleanup_(gguf_freep) Gguf *src = NULL;
        _cleanup_close_ int out = -EBADF;
        int k;

        k = gguf_open_fd(c->fd, &src, err);
        if (k < 0)
                return k;
        out = open(c->manager->models_path, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (out < 0)
                return qd_error_set(err, errno, "Failed to create a temporary file in %s: %s",
                                    c->manager->models_path, strerror(errno));
        QuantParams p = quant_params_default();
        p.mixture = (QuantMixture)c->quantize;
        p.n_threads = c->manager->config.threads;
        p.cancel = job_cancel_flag(j);
        QuantProgress qp;
        quant_progress_init(&qp, j, src);
        p.progress = quant_progress;
        p.userdata = &qp;
        k = quant_file(src, out, &p, err);
        if (k < 0)
                return k;
        if (lseek(out, 0, SEEK_SET) < 0)
                return -errno;
        return TAKE_FD(out);
}

/* Converts the Hugging Face folder into an unnamed GGUF file in the store's directory; returns its descriptor.
 * Only the folder's descriptor is used: the daemon never opens the client's paths. */
static int convert_to_tmpfile(CreateJob *c, QdError *err) {
        _cleanup_close_ int out = -EBADF;
        int k;

        out = open(c->manager->models_path, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (out < 0)
                return qd_error_set(err, errno, "Failed to create a temporary file in %s: %s",
                                    c->manager->models_path, strerror(errno));
        QuantConvertParams p = quant_convert_params_default();
        k = quant_convert_hf(c->hf_dir, out, &p, err);
        if (k < 0)
                return k;
        if (lseek(out, 0, SEEK_SET) < 0)
                return -errno;
        return TAKE_FD(out);
}

static int create_job_run(Job *j, void *userdata, QdError *err) {
        CreateJob *c = userdata;
        Manager *m = c->manager;
        _cleanup_close_ int quantized = -EBADF;

        if (c->archive >= 0) {
                /* The archive's model, with the Modelfile's other instructions on top. */
                StoreCreateSpec over = {
                        .fd = -EBADF,
                        .template = c->template,
                        .system = c->system,
                        .parameters = c->parameters,
                        .messages = c->messages,
                        .licenses = c->licenses,
                };
                job_progress(j, "importing archive", NULL, 0, 0);
                return m->store_ops->import(m->store, c->archive, c->model, &over, store_progress, j,
                                            job_cancel_flag(j), NULL, err);
        }
        if (c->hf_dir >= 0) {
                job_progress(j, "converting from Hugging Face", NULL, 0, 0);
                c->fd = convert_to_tmpfile(c, err);
                if (c->fd < 0)
                        return c->fd;
                c->hf_dir = safe_close(c->hf_dir);
        }
        job_progress(j, "reading model data", NULL, 0, 0);
        if (c->quantize >= 0) {
                quantized = quantize_to_tmpfile(j, c, err);
                if (quantized < 0)
                        return quantized;
        }
        StoreCreateSpec spec = {
                .fd = quantized >= 0 ? quantized : c->fd,
                .template = c->template,
                .system = c->system,
                .parameters = c->parameters,
                .messages = c->messages,
                .licenses = c->licenses,
        };
        return m->store_ops->create(m->store, c->model, &spec, store_progress, j, job_cancel_flag(j), err);
}

/* msgpack to json-c, for the parameters and messages layers. */
static json_object *json_from_msgpack(const msgpack_object *o) {
        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                return NULL;
        case MSGPACK_OBJECT_BOOLEAN:
                return json_object_new_boolean(o->via.boolean);
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                return o->via.u64 <= INT64_MAX ? json_object_new_int64((int64_t)o->via.u64)
                                               : json_object_new_double((double)o->via.u64);
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return json_object_new_int64(o->via.i64);
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                return json_object_new_double(o->via.f64);
        case MSGPACK_OBJECT_STR:
                return json_object_new_string_len(o->via.str.ptr, (int)o->via.str.size);
        case MSGPACK_OBJECT_ARRAY: {
                json_object *a = json_object_new_array();
                for (uint32_t i = 0; a && i < o->via.array.size; i++)
                        json_object_array_add(a, json_from_msgpack(&o->via.array.ptr[i]));
                return a;
        }
        case MSGPACK_OBJECT_MAP: {
                json_object *m = json_object_new_object();
                for (uint32_t i = 0; m && i < o->via.map.size; i++) {
                        const msgpack_object_kv *kv = &o->via.map.ptr[i];
                        if (kv->key.type != MSGPACK_OBJECT_STR)
                                continue;
                        _cleanup_free_ char *key = strndup(kv->key.via.str.ptr, kv->key.via.str.size);
                        if (key)
                                json_object_object_add(m, key, json_from_msgpack(&kv->val));
                }
                return m;
        }
        case MSGPACK_OBJECT_BIN:
        case MSGPACK_OBJECT_EXT:
                break;
        }
        return NULL;
}

static char *json_text(const msgpack_object *o) {
        json_object *j = json_from_msgpack(o);
        if (!j)
                return NULL;
        char *s = strdup(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
        json_object_put(j);
        return s;
}

static int method_create(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                const char *model, *from, *template, *system, *quantize, *requires;
                const msgpack_object *parameters, *license, *messages;
                uint64_t gguf, hf_dir, archive;
        } a = {.gguf = UINT64_MAX, .hf_dir = UINT64_MAX, .archive = UINT64_MAX};
        static const ProtoField fields[] = {
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true},
                {"gguf", PROTO_FIELD_FD, offsetof(typeof(a), gguf)},
                {"hf_dir", PROTO_FIELD_FD, offsetof(typeof(a), hf_dir)},
                {"archive", PROTO_FIELD_FD, offsetof(typeof(a), archive)},
                {"from", PROTO_FIELD_STRING, offsetof(typeof(a), from)},
                {"template", PROTO_FIELD_STRING, offsetof(typeof(a), template)},
                {"system", PROTO_FIELD_STRING, offsetof(typeof(a), system)},
                {"parameters", PROTO_FIELD_MAP, offsetof(typeof(a), parameters)},
                {"license", PROTO_FIELD_ANY, offsetof(typeof(a), license)},
                {"messages", PROTO_FIELD_ARRAY, offsetof(typeof(a), messages)},
                {"quantize", PROTO_FIELD_STRING, offsetof(typeof(a), quantize)},
                {"requires", PROTO_FIELD_STRING, offsetof(typeof(a), requires)},
                {},
        };
        _cleanup_close_ int fd = -EBADF, hf_dir = -EBADF, archive = -EBADF;
        int k, quantize = -1;

        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        if ((a.gguf != UINT64_MAX) + (a.hf_dir != UINT64_MAX) + (a.archive != UINT64_MAX) + !!a.from != 1)
                return qd_error_set(
                        err, EINVAL,
                        "Create takes one of 'gguf' (a descriptor of a GGUF file), 'hf_dir' (a "
                        "descriptor of a Hugging Face folder), 'archive' (a descriptor of a model "
                        "archive) or 'from' (a local model).");
        if (a.template) {
                /* A template that does not parse fails now, not at the first chat. */
                _cleanup_(engine_template_freep) EngineTemplate *t = NULL;
                k = engine_template_parse(a.template, &t, err);
                if (k < 0)
                        return k;
        }
        if (a.quantize) {
                quantize = quant_mixture_from_name(a.quantize);
                if (quantize < 0)
                        return unknown_mixture(a.quantize, err);
                /* The archive's GGUF is in the store only once the job imported it. */
                if (a.archive != UINT64_MAX)
                        return qd_error_set(err, EOPNOTSUPP,
                                            "Quantizing while importing an archive is not supported: import "
                                            "it first, then create a model FROM it with a quantization.");
        }
        if (a.messages)
                for (uint32_t i = 0; i < a.messages->via.array.size; i++) {
                        const msgpack_object *o = &a.messages->via.array.ptr[i];
                        const msgpack_object *role = proto_map_get(o, "role"),
                                             *content = proto_map_get(o, "content");
                        if (!role || role->type != MSGPACK_OBJECT_STR || !content ||
                            content->type != MSGPACK_OBJECT_STR)
                                return qd_error_set(err, EINVAL,
                                                    "Message %" PRIu32
                                                    " must be a map with string role and content.",
                                                    i);
                }

        _cleanup_free_ char *template = NULL, *system = NULL, *parameters = NULL;
        if (a.from) {
                /* FROM a local model: its GGUF (the daemon's own file), and its layers unless given anew. */
                _cleanup_free_ char *path = NULL;
                k = m->store_ops->resolve(m->store, a.from, &path, NULL, err);
                if (k >= 0 && !a.template)
                        k = m->store_ops->read_layer(m->store, a.from, STORE_LAYER_TEMPLATE, &template, err);
                if (k >= 0 && !a.system)
                        k = m->store_ops->read_layer(m->store, a.from, STORE_LAYER_SYSTEM, &system, err);
                if (k >= 0 && !a.parameters)
                        k = m->store_ops->read_layer(m->store, a.from, STORE_LAYER_PARAMS, &parameters, err);
                if (k < 0)
                        return k;
                fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        return qd_error_set(err, errno, "Failed to open the model '%s': %s", a.from,
                                            strerror(errno));
        } else if (a.archive != UINT64_MAX) {
                archive = proto_message_take_fd(call, a.archive, err);
                if (archive < 0)
                        return archive;
        } else if (a.hf_dir != UINT64_MAX) {
                struct stat st;
                hf_dir = proto_message_take_fd(call, a.hf_dir, err);
                if (hf_dir < 0)
                        return hf_dir;
                if (fstat(hf_dir, &st) < 0)
                        return -errno;
                if (!S_ISDIR(st.st_mode))
                        return qd_error_set(err, ENOTDIR, "Parameter 'hf_dir' must be a descriptor of a folder.");
        } else {
                fd = proto_message_take_fd(call, a.gguf, err);
                if (fd < 0)
                        return fd;
        }

        CreateJob *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->manager = m;
        c->fd = TAKE_FD(fd);
        c->hf_dir = TAKE_FD(hf_dir);
        c->archive = TAKE_FD(archive);
        c->quantize = quantize;
        c->model = strdup(a.model);
        c->template = a.template ? strdup(a.template) : TAKE_PTR(template);
        c->system = a.system ? strdup(a.system) : TAKE_PTR(system);
        c->parameters = a.parameters ? json_text(a.parameters) : TAKE_PTR(parameters);
        c->messages = a.messages ? json_text(a.messages) : NULL;
        k = c->model && (!a.template || c->template) && (!a.system || c->system) &&
                            (!a.parameters || c->parameters) && (!a.messages || c->messages)
                    ? 0
                    : -ENOMEM;
        if (k >= 0 && a.license) {
                /* One LICENSE or several. */
                const msgpack_object *l =
                        a.license->type == MSGPACK_OBJECT_ARRAY ? a.license->via.array.ptr : a.license;
                uint32_t n = a.license->type == MSGPACK_OBJECT_ARRAY ? a.license->via.array.size : 1;
                c->licenses = calloc(n + 1, sizeof(char *));
                k = c->licenses ? 0 : -ENOMEM;
                for (uint32_t i = 0; k >= 0 && i < n; i++) {
                        if (l[i].type != MSGPACK_OBJECT_STR) {
                                k = qd_error_set(err, EINVAL,
                                                 "Parameter 'license' must be a string or an array of "
                                                 "strings.");
                                break;
                        }
                        c->licenses[i] = strndup(l[i].via.str.ptr, l[i].via.str.size);
                        if (!c->licenses[i])
                                k = -ENOMEM;
                }
        }
        if (k < 0) {
                create_job_free(c);
                return k;
        }
        return job_start(m, r, "create", a.model, create_job_run, c, create_job_free, NULL);
}

static int method_copy(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                const char *source, *destination;
        } a = {};
        static const ProtoField fields[] = {
                {"source", PROTO_FIELD_STRING, offsetof(typeof(a), source), true},
                {"destination", PROTO_FIELD_STRING, offsetof(typeof(a), destination), true},
                {},
        };
        int k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        k = m->store_ops->copy(m->store, a.source, a.destination, err);
        if (k < 0)
                return k;
        request_reply(r, NULL);
        return 0;
}

static int method_delete(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        ModelArg a = {};
        int k = proto_dispatch(call->params, model_fields, &a, call->zone, err);
        if (k < 0)
                return k;
        /* A loaded model keeps its mapping; unloading first frees the memory at once. */
        (void)scheduler_unload(m->scheduler, a.model, NULL);
        k = m->store_ops->remove(m->store, a.model, err);
        if (k < 0)
                return k;
        request_reply(r, NULL);
        return 0;
}

typedef struct TransferJob {
        Manager *manager;
        char *model;
        bool push;
} TransferJob;

static void transfer_job_free(void *userdata) {
        TransferJob *t = userdata;
        free(t->model);
        free(t);
}

static int transfer_job_run(Job *j, void *userdata, QdError *err) {
        TransferJob *t = userdata;
        Manager *m = t->manager;

        job_progress(j, t->push ? "preparing to push" : "pulling manifest", NULL, 0, 0);
        if (t->push)
                return m->store_ops->push(m->store, t->model, store_progress, j, job_cancel_flag(j), err);
        return m->store_ops->pull(m->store, t->model, store_progress, j, job_cancel_flag(j), err);
}

static int start_transfer(Manager *m, Request *r, ProtoMessage *call, bool push, QdError *err) {
        ModelArg a = {};
        int k = proto_dispatch(call->params, model_fields, &a, call->zone, err);
        if (k < 0)
                return k;
        TransferJob *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->manager = m;
        t->push = push;
        t->model = strdup(a.model);
        if (!t->model) {
                transfer_job_free(t);
                return -ENOMEM;
        }
        return job_start(m, r, push ? "push" : "pull", a.model, transfer_job_run, t, transfer_job_free,
                         NULL);
}

static int method_pull(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        return start_transfer(m, r, call, false, err);
}

static int method_push(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        return start_transfer(m, r, call, true, err);
}

/* ---- files: Quantize and Eval ---- */

typedef struct QuantizeJob {
        Manager *manager;
        int src, dst;
        QuantParams params;
        QuantOverride *overrides; /* (n_overrides), patterns owned */
        size_t n_overrides;
} QuantizeJob;

static void quantize_job_free(void *userdata) {
        QuantizeJob *q = userdata;
        safe_close(q->src);
        safe_close(q->dst);
        for (size_t i = 0; i < q->n_overrides; i++)
                free((char *)q->overrides[i].pattern);
        free(q->overrides);
        free(q);
}

static int quantize_job_run(Job *j, void *userdata, QdError *err) {
        QuantizeJob *q = userdata;
        _cleanup_(gguf_freep) Gguf *src = NULL;
        QuantProgress qp;
        struct stat st;
        int k;

        k = gguf_open_fd(q->src, &src, err);
        if (k < 0)
                return k;
        quant_progress_init(&qp, j, src);
        q->params.cancel = job_cancel_flag(j);
        q->params.progress = quant_progress;
        q->params.userdata = &qp;
        q->params.overrides = q->overrides;
        q->params.n_overrides = q->n_overrides;
        k = quant_file(src, q->dst, &q->params, err);
        if (k < 0)
                return k;
        if (fsync(q->dst) < 0 && errno != EINVAL)
                return qd_error_set(err, errno, "Failed to write the quantized file: %s", strerror(errno));
        if (fstat(q->dst, &st) < 0)
                return -errno;

        Reply rep;
        reply_init(&rep);
        k = proto_pack_kv_str(&rep.pk, "type", quant_mixture_name(q->params.mixture));
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "source_size", (uint64_t)src->size);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "size", (uint64_t)st.st_size);
        if (k >= 0)
                k = job_set_result(j, rep.sb.data, rep.sb.size, 3);
        reply_done(&rep);
        return k;
}

static int method_quantize(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                uint64_t src, dst;
                const char *type;
                bool pure, leave_output, allow_requantize;
                const msgpack_object *overrides;
        } a = {.src = UINT64_MAX, .dst = UINT64_MAX};
        static const ProtoField fields[] = {
                {"src", PROTO_FIELD_FD, offsetof(typeof(a), src), true},
                {"dst", PROTO_FIELD_FD, offsetof(typeof(a), dst), true},
                {"type", PROTO_FIELD_STRING, offsetof(typeof(a), type), true},
                {"pure", PROTO_FIELD_BOOL, offsetof(typeof(a), pure)},
                {"leave_output", PROTO_FIELD_BOOL, offsetof(typeof(a), leave_output)},
                {"allow_requantize", PROTO_FIELD_BOOL, offsetof(typeof(a), allow_requantize)},
                {"overrides", PROTO_FIELD_ARRAY, offsetof(typeof(a), overrides)},
                {},
        };
        _cleanup_close_ int src = -EBADF, dst = -EBADF;
        struct stat st;
        int k, flags;

        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        QuantMixture mixture = quant_mixture_from_name(a.type);
        if (mixture < 0)
                return unknown_mixture(a.type, err);
        src = proto_message_take_fd(call, a.src, err);
        if (src < 0)
                return src;
        dst = proto_message_take_fd(call, a.dst, err);
        if (dst < 0)
                return dst;
        /* The source is mapped, so it must be a file; the output is written in place. */
        if (fstat(src, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return qd_error_set(err, EINVAL, "Parameter 'src' must be a descriptor of a regular file.");
        if (fstat(dst, &st) < 0 || (flags = fcntl(dst, F_GETFL)) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (flags & O_ACCMODE) == O_RDONLY)
                return qd_error_set(
                        err, EINVAL,
                        "Parameter 'dst' must be a descriptor of a regular file open for writing.");

        _cleanup_free_ QuantizeJob *q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->src = q->dst = -EBADF;
        q->params = quant_params_default();
        q->params.mixture = mixture;
        q->params.pure = a.pure;
        q->params.leave_output = a.leave_output;
        q->params.allow_requantize = a.allow_requantize;
        q->params.n_threads = m->config.threads;
        uint32_t n = a.overrides ? a.overrides->via.array.size : 0;
        if (n > 0) {
                q->overrides = calloc(n, sizeof(QuantOverride));
                if (!q->overrides)
                        return -ENOMEM;
        }
        for (uint32_t i = 0; i < n; i++) {
                struct {
                        const char *pattern, *type;
                } o = {};
                static const ProtoField ofields[] = {
                        {"pattern", PROTO_FIELD_STRING, offsetof(typeof(o), pattern), true},
                        {"type", PROTO_FIELD_STRING, offsetof(typeof(o), type), true},
                        {},
                };
                const msgpack_object *item = &a.overrides->via.array.ptr[i];
                k = item->type == MSGPACK_OBJECT_MAP
                            ? proto_dispatch(item, ofields, &o, call->zone, err)
                            : qd_error_set(err, EINVAL,
                                           "Parameter 'overrides' must be an array of "
                                           "maps {pattern, type}.");
                int type = k >= 0 ? ggml_type_from_name(o.type) : 0;
                if (k >= 0 && (type < 0 || !quant_type_supported((uint32_t)type)))
                        k = qd_error_set(
                                err, EINVAL,
                                "Unknown tensor type '%s' for the tensors matching '%s'; give a type "
                                "such as q8_0, q4_K or f16.",
                                o.type, o.pattern);
                if (k >= 0) {
                        q->overrides[i] =
                                (QuantOverride){.pattern = strdup(o.pattern), .type = (uint32_t)type};
                        k = q->overrides[i].pattern ? 0 : -ENOMEM;
                }
                q->n_overrides = i + (k >= 0);
                if (k < 0) {
                        quantize_job_free(TAKE_PTR(q));
                        return k;
                }
        }
        q->manager = m;
        q->src = TAKE_FD(src);
        q->dst = TAKE_FD(dst);
        return job_start(m, r, "quantize", NULL, quantize_job_run, TAKE_PTR(q), quantize_job_free, NULL);
}

/* Texts to evaluate are read whole; a larger one is surely a mistake. */
#define EVAL_TEXT_MAX (64U * 1024U * 1024U)

typedef struct EvalJob {
        Manager *manager;
        char *model_path, *base_path; /* store models, resolved on the main thread */
        int model_fd, base_fd;        /* or files the client passed */
        int text;
        QuantEvalParams params;
        Job *job;
} EvalJob;

static void eval_job_free(void *userdata) {
        EvalJob *e = userdata;
        free(e->model_path);
        free(e->base_path);
        safe_close(e->model_fd);
        safe_close(e->base_fd);
        safe_close(e->text);
        free(e);
}

static void eval_progress(void *userdata, size_t chunk, size_t n_chunks) {
        EvalJob *e = userdata;
        job_progress(e->job, "evaluating", NULL, n_chunks, chunk + 1);
}

static int eval_load(EvalJob *e, const char *path, int fd, const char *what, EngineModel **ret,
                     QdError *err) {
        /* The CPU: a GPU's memory is the scheduler's to budget, and this model is not in its books. */
        EngineModelParams p = engine_model_params_default();
        p.backend = "cpu";
        p.n_threads = e->manager->config.threads;
        job_progress(e->job, what, NULL, 0, 0);
        return path ? engine_model_load(path, &p, ret, err) : engine_model_load_fd(fd, &p, ret, err);
}

static int read_text(int fd, const atomic_bool *cancel, Buf *ret, QdError *err) {
        char chunk[65536];

        for (;;) {
                if (atomic_load(cancel))
                        return qd_error_set(err, ECANCELED, "The job was cancelled.");
                ssize_t n = read(fd, chunk, sizeof(chunk));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return qd_error_set(err, errno, "Failed to read the text: %s", strerror(errno));
                if (n == 0)
                        return 0;
                if (ret->len + (size_t)n > EVAL_TEXT_MAX)
                        return qd_error_set(err, EMSGSIZE, "The text is larger than %u MiB.",
                                            EVAL_TEXT_MAX >> 20);
                if (buf_append(ret, chunk, (size_t)n) < 0)
                        return -ENOMEM;
        }
}

static int eval_job_run(Job *j, void *userdata, QdError *err) {
        EvalJob *e = userdata;
        _cleanup_(engine_model_unrefp) EngineModel *model = NULL, *base = NULL;
        _cleanup_(buf_free) Buf text = {};
        QuantEvalResult res;
        int k;

        e->job = j;
        k = read_text(e->text, job_cancel_flag(j), &text, err);
        if (k >= 0)
                k = eval_load(e, e->model_path, e->model_fd, "loading model", &model, err);
        if (k >= 0 && (e->base_path || e->base_fd >= 0))
                k = eval_load(e, e->base_path, e->base_fd, "loading base model", &base, err);
        if (k < 0)
                return k;
        e->params.cancel = job_cancel_flag(j);
        e->params.progress = eval_progress;
        e->params.userdata = e;
        job_progress(j, "evaluating", NULL, 0, 0);
        k = quant_eval(model, base, text.data ? (const char *)text.data : "", text.len, &e->params, &res,
                       err);
        if (k < 0)
                return k;

        Reply rep;
        reply_init(&rep);
        uint32_t n = 6;
        k = proto_pack_kv_double(&rep.pk, "perplexity", res.ppl);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "n_ctx", e->params.n_ctx ? e->params.n_ctx : 512);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "chunks", res.n_chunks);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "scored_tokens", res.n_scored);
        if (k >= 0)
                k = proto_pack_kv_u64(&rep.pk, "file_size", res.file_size);
        if (k >= 0)
                k = proto_pack_kv_double(&rep.pk, "bits_per_weight", res.bpw);
        if (k >= 0 && base) {
                n += 4;
                k = proto_pack_kv_double(&rep.pk, "base_perplexity", res.ppl_base);
                if (k >= 0)
                        k = proto_pack_kv_double(&rep.pk, "kld_mean", res.kld_mean);
                if (k >= 0)
                        k = proto_pack_kv_double(&rep.pk, "kld_p99", res.kld_p99);
                if (k >= 0)
                        k = proto_pack_kv_double(&rep.pk, "top1_agreement", res.top1);
        }
        if (k >= 0)
                k = job_set_result(j, rep.sb.data, rep.sb.size, n);
        reply_done(&rep);
        return k;
}

/* A model to evaluate: a store name (resolved now, on the main thread) or a descriptor of a GGUF file. */
static int eval_model_arg(Manager *m, ProtoMessage *call, const char *name, uint64_t fd_index,
                          const char *what, char **ret_path, int *ret_fd, QdError *err) {
        if (!!name == (fd_index != UINT64_MAX))
                return qd_error_set(err, EINVAL, "Eval takes one of '%s' (a model name) and '%s_fd'.", what,
                                    what);
        if (name)
                return m->store_ops->resolve(m->store, name, ret_path, NULL, err);
        int fd = proto_message_take_fd(call, fd_index, err);
        if (fd < 0)
                return fd;
        *ret_fd = fd;
        return 0;
}

static int method_eval(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                const char *model, *base;
                uint64_t model_fd, base_fd, text;
                uint32_t n_ctx, chunks;
        } a = {.model_fd = UINT64_MAX, .base_fd = UINT64_MAX, .text = UINT64_MAX};
        static const ProtoField fields[] = {
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model)},
                {"model_fd", PROTO_FIELD_FD, offsetof(typeof(a), model_fd)},
                {"base", PROTO_FIELD_STRING, offsetof(typeof(a), base)},
                {"base_fd", PROTO_FIELD_FD, offsetof(typeof(a), base_fd)},
                {"text", PROTO_FIELD_FD, offsetof(typeof(a), text), true},
                {"n_ctx", PROTO_FIELD_U32, offsetof(typeof(a), n_ctx)},
                {"chunks", PROTO_FIELD_U32, offsetof(typeof(a), chunks)},
                {},
        };
        struct stat st;
        int k;

        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        if (a.n_ctx != 0 && (a.n_ctx < 4 || a.n_ctx > 1U << 20))
                return qd_error_set(err, EINVAL, "Parameter 'n_ctx' must be between 4 and 1048576.");

        EvalJob *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->model_fd = e->base_fd = e->text = -EBADF;
        e->manager = m;
        e->params.n_ctx = a.n_ctx;
        e->params.max_chunks = a.chunks;
        k = eval_model_arg(m, call, a.model, a.model_fd, "model", &e->model_path, &e->model_fd, err);
        if (k >= 0 && (a.base || a.base_fd != UINT64_MAX))
                k = eval_model_arg(m, call, a.base, a.base_fd, "base", &e->base_path, &e->base_fd, err);
        if (k >= 0) {
                e->text = proto_message_take_fd(call, a.text, err);
                k = e->text;
        }
        if (k >= 0 && fstat(e->text, &st) < 0)
                k = -errno;
        if (k >= 0 && S_ISDIR(st.st_mode))
                k = qd_error_set(err, EISDIR,
                                 "Parameter 'text' must be a descriptor of a file, not a folder.");
        if (k < 0) {
                eval_job_free(e);
                return k;
        }
        return job_start(m, r, "eval", a.model, eval_job_run, e, eval_job_free, NULL);
}

/* An export or an import: the archive's descriptor, the model (NULL: an import under the archive's own
 * name) and, for an export, the archive's format. */
typedef struct ArchiveJob {
        Manager *manager;
        char *model, *format;
        int fd;
} ArchiveJob;

static void archive_job_free(void *userdata) {
        ArchiveJob *x = userdata;
        safe_close(x->fd);
        free(x->model);
        free(x->format);
        free(x);
}

/* Takes the descriptor fd_index of call and copies model and format (either may be NULL). */
static int archive_job_new(Manager *m, ProtoMessage *call, uint64_t fd_index, const char *model,
                           const char *format, ArchiveJob **ret, QdError *err) {
        ArchiveJob *x = calloc(1, sizeof(*x));
        int k;

        if (!x)
                return -ENOMEM;
        x->manager = m;
        x->fd = proto_message_take_fd(call, fd_index, err);
        x->model = model ? strdup(model) : NULL;
        x->format = format ? strdup(format) : NULL;
        k = x->fd < 0 ? x->fd : (!model || x->model) && (!format || x->format) ? 0 : -ENOMEM;
        if (k < 0) {
                archive_job_free(x);
                return k;
        }
        *ret = x;
        return 0;
}

static int export_job_run(Job *j, void *userdata, QdError *err) {
        ArchiveJob *x = userdata;
        Manager *m = x->manager;

        job_progress(j, "exporting", NULL, 0, 0);
        return m->store_ops->export(m->store, x->model, x->fd, x->format, store_progress, j,
                                    job_cancel_flag(j), err);
}

static int method_export(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                const char *model, *format;
                uint64_t fd;
        } a = {.fd = UINT64_MAX};
        static const ProtoField fields[] = {
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true},
                {"fd", PROTO_FIELD_FD, offsetof(typeof(a), fd), true},
                {"format", PROTO_FIELD_STRING, offsetof(typeof(a), format)},
                {},
        };
        _cleanup_free_ char *path = NULL;
        ArchiveJob *x;
        int k;

        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        const char *format = a.format ?: "tar";
        if (!streq(format, "tar") && !streq(format, "tar.gz") && !streq(format, "tar.zst"))
                return qd_error_set(err, EINVAL, "Unknown archive format '%s'; use tar, tar.gz or tar.zst.",
                                    format);
        /* A missing model fails now, not in the job. */
        k = m->store_ops->resolve(m->store, a.model, &path, NULL, err);
        if (k < 0)
                return k;
        k = archive_job_new(m, call, a.fd, a.model, format, &x, err);
        if (k < 0)
                return k;
        return job_start(m, r, "export", a.model, export_job_run, x, archive_job_free, NULL);
}

static int import_job_run(Job *j, void *userdata, QdError *err) {
        ArchiveJob *x = userdata;
        Manager *m = x->manager;
        _cleanup_free_ char *name = NULL;
        Reply rep;
        int k;

        job_progress(j, "importing archive", NULL, 0, 0);
        k = m->store_ops->import(m->store, x->fd, x->model, NULL, store_progress, j, job_cancel_flag(j),
                                 &name, err);
        if (k < 0)
                return k;
        reply_init(&rep);
        k = proto_pack_kv_str(&rep.pk, "name", name);
        if (k >= 0)
                k = job_set_result(j, rep.sb.data, rep.sb.size, 1);
        reply_done(&rep);
        return k;
}

static int method_import(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                const char *model;
                uint64_t archive;
        } a = {.archive = UINT64_MAX};
        static const ProtoField fields[] = {
                {"archive", PROTO_FIELD_FD, offsetof(typeof(a), archive), true},
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model)},
                {},
        };
        ArchiveJob *x;
        int k;

        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        k = archive_job_new(m, call, a.archive, a.model, NULL, &x, err);
        if (k < 0)
                return k;
        return job_start(m, r, "import", a.model, import_job_run, x, archive_job_free, NULL);
}

/* ---- jobs ---- */

static int method_jobs(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                uint64_t job;
                bool watch;
        } a = {};
        static const ProtoField fields[] = {
                {"job", PROTO_FIELD_U64, offsetof(typeof(a), job)},
                {"watch", PROTO_FIELD_BOOL, offsetof(typeof(a), watch)},
                {},
        };
        Reply rep;
        int k;

        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        if (a.watch) {
                Job *j = job_find(m, a.job);
                if (!j)
                        return qd_error_set(err, ENOENT, "No job %" PRIu64 ".", a.job);
                /* The reply comes when the job ends, with its progress events before it. */
                return job_watch(j, r);
        }
        reply_init(&rep);
        k = msgpack_pack_map(&rep.pk, 1) < 0 || proto_pack_key(&rep.pk, "jobs") < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = jobs_pack(m, a.job, &rep.pk, err);
        return reply_simple(r, &rep, k);
}

static int method_cancel(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                uint64_t id, job;
        } a = {};
        static const ProtoField fields[] = {
                {"id", PROTO_FIELD_U64, offsetof(typeof(a), id)},
                {"job", PROTO_FIELD_U64, offsetof(typeof(a), job)},
                {},
        };
        int k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        if ((a.id == 0) == (a.job == 0))
                return qd_error_set(err, EINVAL,
                                    "Cancel takes either 'id' (a request of this client) or 'job'.");
        if (a.job != 0) {
                Job *j = job_find(m, a.job);
                if (!j)
                        return qd_error_set(err, ENOENT, "No job %" PRIu64 ".", a.job);
                if (!request_caller(r)->may_change_store)
                        return qd_error_set(err, EPERM,
                                            "Cancelling a job needs the right to change the store.");
                job_cancel(j);
        } else {
                Request *target =
                        r->frontend && r->frontend->find_sibling ? r->frontend->find_sibling(r, a.id) : NULL;
                if (!target)
                        return qd_error_set(err, ENOENT,
                                            "No request %" PRIu64 " in flight on this connection.", a.id);
                request_cancel(target);
        }
        request_reply(r, NULL);
        return 0;
}

/* ---- models: scheduler ---- */

static int method_ps(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        Reply rep;
        reply_init(&rep);
        int k = msgpack_pack_map(&rep.pk, 1) < 0 || proto_pack_key(&rep.pk, "models") < 0 ? -ENOMEM : 0;
        if (k >= 0)
                k = scheduler_pack_ps(m->scheduler, &rep.pk);
        return reply_simple(r, &rep, k);
}

static int apply_model_params(const char *json, GenerateParams *p, QdError *err);

/* The options that decide how model is loaded, from its Modelfile and then the request's options map (NULL:
 * none), into p; other options are for generations and ignored here. */
static int load_options(Manager *m, ProtoMessage *call, const char *model, const msgpack_object *options,
                        GenerateParams *p, QdError *err) {
        static const ProtoField fields[] = {
                {"num_ctx", PROTO_FIELD_U32, offsetof(GenerateParams, num_ctx)},
                {"num_gpu", PROTO_FIELD_I32, offsetof(GenerateParams, num_gpu)},
                {"num_thread", PROTO_FIELD_U32, offsetof(GenerateParams, num_thread)},
                {},
        };
        _cleanup_free_ char *model_params = NULL;
        int k = m->store_ops->read_layer(m->store, model, STORE_LAYER_PARAMS, &model_params, err);
        if (k >= 0 && model_params)
                k = apply_model_params(model_params, p, err);
        if (k >= 0)
                k = proto_dispatch(options, fields, p, call->zone, err);
        return k;
}

/* Load takes the options that decide how a model is loaded, as Generate does. */
static int method_load(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        _cleanup_(generate_params_done) GenerateParams p = {.num_gpu = -1};
        struct {
                const char *model;
                int64_t keep_alive;
                const msgpack_object *options;
        } a = {.keep_alive = INT64_MIN};
        static const ProtoField fields[] = {
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true},
                {"keep_alive", PROTO_FIELD_DURATION, offsetof(typeof(a), keep_alive)},
                {"options", PROTO_FIELD_MAP, offsetof(typeof(a), options)},
                {},
        };
        int k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k >= 0)
                k = load_options(m, call, a.model, a.options, &p, err);
        if (k < 0)
                return k;
        return scheduler_load(m->scheduler, r, a.model, a.keep_alive, a.keep_alive != INT64_MIN, &p, err);
}

static int method_unload(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        ModelArg a = {};
        int k = proto_dispatch(call->params, model_fields, &a, call->zone, err);
        if (k < 0)
                return k;
        k = scheduler_unload(m->scheduler, a.model, err);
        if (k < 0)
                return k;
        request_reply(r, NULL);
        return 0;
}

void generate_params_done(GenerateParams *p) {
        free(p->model);
        free(p->prompt);
        free(p->tokens);
        strv_free(p->stop);
        *p = (GenerateParams){};
}

/* Ollama's defaults, so that the same request samples the same way here. */
static SamplerParams sampler_defaults(void) {
        return (SamplerParams){
                .temperature = 0.8f,
                .top_k = 40,
                .top_p = 0.9f,
                .min_p = 0.0f,
                .typical_p = 1.0f,
                .repeat_penalty = 1.1f,
                .repeat_last_n = 64,
                .seed = UINT64_MAX,
        };
}

static int decode_stop(const msgpack_object *o, char ***ret, QdError *err) {
        if (o->type != MSGPACK_OBJECT_ARRAY)
                return qd_error_set(err, EINVAL, "Option 'stop' must be an array of strings, got %s.",
                                    proto_object_type_name(o));
        char **l = calloc(o->via.array.size + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (uint32_t i = 0; i < o->via.array.size; i++) {
                const msgpack_object *s = &o->via.array.ptr[i];
                if (s->type != MSGPACK_OBJECT_STR || s->via.str.size == 0) {
                        strv_free(l);
                        return qd_error_set(err, EINVAL,
                                            "Option 'stop' must be an array of non-empty strings.");
                }
                l[i] = strndup(s->via.str.ptr, s->via.str.size);
                if (!l[i]) {
                        strv_free(l);
                        return -ENOMEM;
                }
        }
        *ret = l;
        return 0;
}

/* Decodes Chat's 'messages' ([{role, content}, …]) into msgs, borrowing the strings from zone. */
static int decode_messages(const msgpack_object *messages, msgpack_zone *zone, EngineChatMessage **ret,
                           uint32_t *ret_n, QdError *err) {
        _cleanup_free_ EngineChatMessage *msgs = NULL;
        uint32_t n = messages->via.array.size;
        int k;

        if (n == 0)
                return qd_error_set(err, EINVAL, "Parameter 'messages' must hold at least one message.");
        msgs = calloc(n, sizeof(EngineChatMessage));
        if (!msgs)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
                static const ProtoField fields[] = {
                        {"role", PROTO_FIELD_STRING, offsetof(EngineChatMessage, role), true},
                        {"content", PROTO_FIELD_STRING, offsetof(EngineChatMessage, content), true},
                        {},
                };
                const msgpack_object *o = &messages->via.array.ptr[i];
                QdError e = {};
                if (o->type != MSGPACK_OBJECT_MAP)
                        return qd_error_set(err, EINVAL,
                                            "Message %" PRIu32 " must be a map {role, content}, got %s.", i,
                                            proto_object_type_name(o));
                k = proto_dispatch(o, fields, &msgs[i], zone, &e);
                if (k < 0)
                        return qd_error_set(err, k, "Message %" PRIu32 ": %s", i, e.msg);
                if (!streq(msgs[i].role, "system") && !streq(msgs[i].role, "user") &&
                    !streq(msgs[i].role, "assistant") && !streq(msgs[i].role, "tool"))
                        return qd_error_set(err, EINVAL,
                                            "Message %" PRIu32
                                            " has role '%s'; roles are system, user, assistant "
                                            "and tool.",
                                            i, msgs[i].role);
        }
        *ret = TAKE_PTR(msgs);
        *ret_n = n;
        return 0;
}

/*
 * The prompt of a chat or of a templated Generate: the model's Modelfile TEMPLATE (Go text/template) when it has
 * one, else the format recognised from its GGUF's tokenizer.chat_template, with the Modelfile's SYSTEM (or the
 * request's system) or the format's default system prompt. A model with no template at all is an error for Chat;
 * for Generate (raw_fallback) its prompt is used as it is, as Ollama does.
 */
static int render_prompt(Manager *m, const char *model, const char *system_override, const EngineChatMessage *msgs,
                         uint32_t n, const char *raw_fallback, char **ret, QdError *err) {
        _cleanup_free_ char *template = NULL, *system = NULL, *path = NULL, *jinja = NULL, *default_system = NULL;
        _cleanup_(engine_template_freep) EngineTemplate *t = NULL;
        _cleanup_(buf_free) Buf out = {};
        int k;

        k = m->store_ops->read_layer(m->store, model, STORE_LAYER_TEMPLATE, &template, err);
        if (k >= 0)
                k = m->store_ops->read_layer(m->store, model, STORE_LAYER_SYSTEM, &system, err);
        if (k < 0)
                return k;
        const char *sys = system_override ?: system;
        if (template) {
                k = engine_template_parse(template, &t, err);
                if (k >= 0)
                        k = engine_template_render(t, sys, msgs, n, &out, err);
        } else {
                _cleanup_(gguf_freep) Gguf *g = NULL;
                EngineChatFormat f;
                k = m->store_ops->resolve(m->store, model, &path, NULL, err);
                if (k >= 0)
                        k = gguf_open(path, &g, raw_fallback ? NULL : err);
                if (k < 0 && raw_fallback && k != -ENOENT) {
                        /* Not a GGUF we can read: loading it will say why; the prompt stays as it is. */
                        *ret = strdup(raw_fallback);
                        return *ret ? 0 : -ENOMEM;
                }
                if (k < 0)
                        return k;
                if (gguf_get_string(g, "tokenizer.chat_template", &jinja) < 0) {
                        if (raw_fallback) {
                                *ret = strdup(raw_fallback);
                                return *ret ? 0 : -ENOMEM;
                        }
                        return qd_error_set(err, EOPNOTSUPP,
                                            "Model '%s' has no chat template (no TEMPLATE in its Modelfile, no "
                                            "tokenizer.chat_template in its GGUF); use Generate.", model);
                }
                k = engine_chat_format_detect(jinja, &f, &default_system);
                if (k < 0) {
                        if (raw_fallback) {
                                *ret = strdup(raw_fallback);
                                return *ret ? 0 : -ENOMEM;
                        }
                        return qd_error_set(err, EOPNOTSUPP,
                                            "The chat template of '%s' is of a family quantd does not know; give the "
                                            "model a TEMPLATE in its Modelfile.", model);
                }
                k = engine_chat_format_render(f, sys ?: default_system, msgs, n, &out, err);
        }
        if (k < 0)
                return k;
        *ret = out.len > 0 ? buf_steal_str(&out) : strdup("");
        return *ret ? 0 : -ENOMEM;
}

/*
 * The model's own defaults, from its Modelfile PARAMETERs (Ollama's params layer, a JSON object); the
 * request's options override them.
 */
static int apply_model_params(const char *json, GenerateParams *p, QdError *err) {
        static const struct {
                const char *name;
                char kind; /* 'f' float, 'i' int32, 'u' uint32, 'U' uint64 */
                size_t offset;
        } keys[] = {
                {"temperature", 'f', offsetof(GenerateParams, sampler.temperature)},
                {"top_k", 'i', offsetof(GenerateParams, sampler.top_k)},
                {"top_p", 'f', offsetof(GenerateParams, sampler.top_p)},
                {"min_p", 'f', offsetof(GenerateParams, sampler.min_p)},
                {"typical_p", 'f', offsetof(GenerateParams, sampler.typical_p)},
                {"repeat_penalty", 'f', offsetof(GenerateParams, sampler.repeat_penalty)},
                {"repeat_last_n", 'i', offsetof(GenerateParams, sampler.repeat_last_n)},
                {"presence_penalty", 'f', offsetof(GenerateParams, sampler.presence_penalty)},
                {"frequency_penalty", 'f', offsetof(GenerateParams, sampler.frequency_penalty)},
                {"seed", 'U', offsetof(GenerateParams, sampler.seed)},
                {"num_predict", 'i', offsetof(GenerateParams, num_predict)},
                {"num_ctx", 'u', offsetof(GenerateParams, num_ctx)},
                {"num_gpu", 'i', offsetof(GenerateParams, num_gpu)},
                {"num_thread", 'u', offsetof(GenerateParams, num_thread)},
        };
        json_object *root = json_tokener_parse(json), *v;

        if (!root || !json_object_is_type(root, json_type_object)) {
                json_object_put(root);
                return qd_error_set(err, EBADMSG,
                                    "The model's parameters are not a JSON object; recreate it.");
        }
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                if (!json_object_object_get_ex(root, keys[i].name, &v) ||
                    !(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
                        continue;
                void *dst = (uint8_t *)p + keys[i].offset;
                switch (keys[i].kind) {
                case 'f':
                        *(float *)dst = (float)json_object_get_double(v);
                        break;
                case 'i':
                        *(int32_t *)dst = (int32_t)json_object_get_int64(v);
                        break;
                case 'u':
                        *(uint32_t *)dst = (uint32_t)MAX(json_object_get_int64(v), (int64_t)0);
                        break;
                default:
                        *(uint64_t *)dst = json_object_get_uint64(v);
                        break;
                }
        }
        if (json_object_object_get_ex(root, "stop", &v) && json_object_is_type(v, json_type_array)) {
                size_t n = json_object_array_length(v);
                char **l = calloc(n + 1, sizeof(char *));
                for (size_t i = 0, j = 0; l && i < n; i++) {
                        const char *s = json_object_get_string(json_object_array_get_idx(v, i));
                        if (s && *s && !(l[j++] = strdup(s))) {
                                strv_free(l);
                                l = NULL;
                        }
                }
                if (!l) {
                        json_object_put(root);
                        return -ENOMEM;
                }
                strv_free(p->stop);
                p->stop = l;
        }
        json_object_put(root);
        return 0;
}

/* Generate and Chat: the same options and the same path through the scheduler. */
static int start_generation(Manager *m, Request *r, ProtoMessage *call, bool chat, QdError *err) {
        _cleanup_(generate_params_done) GenerateParams p = {
                .num_predict = -1,
                .num_gpu = -1,
                .stream = true,
        };
        struct {
                const char *model, *prompt, *system;
                const msgpack_object *options, *messages;
                int64_t keep_alive;
                bool raw, stream, return_tokens;
        } a = {.keep_alive = INT64_MIN, .stream = true};
        const ProtoField fields[] = {
                { "model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true },
                chat ? (ProtoField){ "messages", PROTO_FIELD_ARRAY, offsetof(typeof(a), messages), true }
                     : (ProtoField){ "prompt", PROTO_FIELD_STRING, offsetof(typeof(a), prompt), true },
                { "options", PROTO_FIELD_MAP, offsetof(typeof(a), options) },
                { "keep_alive", PROTO_FIELD_DURATION, offsetof(typeof(a), keep_alive) },
                { "raw", PROTO_FIELD_BOOL, offsetof(typeof(a), raw) },
                { "system", PROTO_FIELD_STRING, offsetof(typeof(a), system) },
                { "stream", PROTO_FIELD_BOOL, offsetof(typeof(a), stream) },
                { "return_tokens", PROTO_FIELD_BOOL, offsetof(typeof(a), return_tokens) },
                {},
        };
        SamplerParams *s = &p.sampler;
        const msgpack_object *stop = NULL;
        const ProtoField options[] = {
                {"temperature", PROTO_FIELD_FLOAT, offsetof(GenerateParams, sampler.temperature)},
                {"top_k", PROTO_FIELD_I32, offsetof(GenerateParams, sampler.top_k)},
                {"top_p", PROTO_FIELD_FLOAT, offsetof(GenerateParams, sampler.top_p)},
                {"min_p", PROTO_FIELD_FLOAT, offsetof(GenerateParams, sampler.min_p)},
                {"typical_p", PROTO_FIELD_FLOAT, offsetof(GenerateParams, sampler.typical_p)},
                {"repeat_penalty", PROTO_FIELD_FLOAT, offsetof(GenerateParams, sampler.repeat_penalty)},
                {"repeat_last_n", PROTO_FIELD_I32, offsetof(GenerateParams, sampler.repeat_last_n)},
                {"presence_penalty", PROTO_FIELD_FLOAT, offsetof(GenerateParams, sampler.presence_penalty)},
                {"frequency_penalty", PROTO_FIELD_FLOAT,
                 offsetof(GenerateParams, sampler.frequency_penalty)},
                {"seed", PROTO_FIELD_U64, offsetof(GenerateParams, sampler.seed)},
                {"num_predict", PROTO_FIELD_I32, offsetof(GenerateParams, num_predict)},
                {"num_ctx", PROTO_FIELD_U32, offsetof(GenerateParams, num_ctx)},
                {"num_gpu", PROTO_FIELD_I32, offsetof(GenerateParams, num_gpu)},
                {"num_thread", PROTO_FIELD_U32, offsetof(GenerateParams, num_thread)},
                {},
        };
        int k;

        *s = sampler_defaults();
        k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        _cleanup_free_ char *model_params = NULL;
        k = m->store_ops->read_layer(m->store, a.model, STORE_LAYER_PARAMS, &model_params, err);
        if (k >= 0 && model_params)
                k = apply_model_params(model_params, &p, err);
        if (k < 0)
                return k;
        k = proto_dispatch(a.options, options, &p, call->zone, err);
        if (k < 0)
                return k;
        if (s->temperature < 0)
                return qd_error_set(err, EINVAL, "Option 'temperature' must not be negative.");
        stop = proto_map_get(a.options, "stop");
        if (stop && stop->type != MSGPACK_OBJECT_NIL) {
                /* The request's stop strings replace the model's. */
                p.stop = strv_free(p.stop);
                k = decode_stop(stop, &p.stop, err);
                if (k < 0)
                        return k;
        }
        if (chat && a.raw)
                return qd_error_set(err, EINVAL,
                                    "Chat renders its prompt with the model's template; 'raw' is for "
                                    "Generate.");
        if (chat) {
                _cleanup_free_ EngineChatMessage *msgs = NULL;
                uint32_t n = 0;
                k = decode_messages(a.messages, call->zone, &msgs, &n, err);
                if (k >= 0)
                        k = render_prompt(m, a.model, a.system, msgs, n, NULL, &p.prompt, err);
                if (k < 0)
                        return k;
        } else if (a.raw)
                p.prompt = strdup(a.prompt);
        else {
                /* Generate goes through the template too, as one user turn, unless the request says raw. */
                EngineChatMessage one = { .role = "user", .content = a.prompt };
                k = render_prompt(m, a.model, a.system, &one, 1, a.prompt, &p.prompt, err);
                if (k < 0)
                        return k;
        }
        log_debug("Prompt for '%s': %s", a.model, strna(p.prompt));
        p.model = strdup(a.model);
        if (!p.model || !p.prompt)
                return -ENOMEM;
        p.raw = a.raw;
        p.chat = chat;
        p.stream = a.stream;
        p.return_tokens = a.return_tokens;
        p.keep_alive_set = a.keep_alive != INT64_MIN;
        p.keep_alive_ns = p.keep_alive_set ? a.keep_alive : m->config.keep_alive_ns;
        return scheduler_generate(m->scheduler, r, &p, err);
}

static int method_generate(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        return start_generation(m, r, call, false, err);
}

static int method_chat(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        return start_generation(m, r, call, true, err);
}

static int method_embed(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        _cleanup_(generate_params_done) GenerateParams p = {.num_gpu = -1};
        struct {
                const char *model;
                const msgpack_object *input;
                int64_t keep_alive;
                const msgpack_object *options;
        } a = {.keep_alive = INT64_MIN};
        static const ProtoField fields[] = {
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true},
                {"input", PROTO_FIELD_ANY, offsetof(typeof(a), input), true},
                {"keep_alive", PROTO_FIELD_DURATION, offsetof(typeof(a), keep_alive)},
                {"options", PROTO_FIELD_MAP, offsetof(typeof(a), options)},
                {},
        };
        int k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k >= 0)
                k = load_options(m, call, a.model, a.options, &p, err);
        if (k < 0)
                return k;

        /* One string, or an array of them. */
        const msgpack_object *items =
                a.input->type == MSGPACK_OBJECT_ARRAY ? a.input->via.array.ptr : a.input;
        uint32_t n = a.input->type == MSGPACK_OBJECT_ARRAY ? a.input->via.array.size : 1;
        if (n == 0 || n > 1024)
                return qd_error_set(err, EINVAL, "Parameter 'input' must hold 1 to 1024 strings.");
        char **inputs = calloc(n + 1, sizeof(char *));
        if (!inputs)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
                if (items[i].type != MSGPACK_OBJECT_STR ||
                    memchr(items[i].via.str.ptr, 0, items[i].via.str.size)) {
                        strv_free(inputs);
                        return qd_error_set(err, EINVAL,
                                            "Parameter 'input' must be a string or an array of strings.");
                }
                inputs[i] = strndup(items[i].via.str.ptr, items[i].via.str.size);
                if (!inputs[i]) {
                        strv_free(inputs);
                        return -ENOMEM;
                }
        }
        return scheduler_embed(m->scheduler, r, a.model, inputs, a.keep_alive, a.keep_alive != INT64_MIN, &p,
                               err);
}

static int method_tokenize(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                const char *model, *text;
        } a = {};
        static const ProtoField fields[] = {
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true},
                {"text", PROTO_FIELD_STRING, offsetof(typeof(a), text), true},
                {},
        };
        int k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        return scheduler_tokenize(m->scheduler, r, a.model, a.text, NULL, err);
}

static int method_detokenize(Manager *m, Request *r, ProtoMessage *call, QdError *err) {
        struct {
                const char *model;
                const msgpack_object *tokens;
        } a = {};
        static const ProtoField fields[] = {
                {"model", PROTO_FIELD_STRING, offsetof(typeof(a), model), true},
                {"tokens", PROTO_FIELD_ARRAY, offsetof(typeof(a), tokens), true},
                {},
        };
        int k = proto_dispatch(call->params, fields, &a, call->zone, err);
        if (k < 0)
                return k;
        for (uint32_t i = 0; i < a.tokens->via.array.size; i++) {
                const msgpack_object *t = &a.tokens->via.array.ptr[i];
                if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 > INT32_MAX)
                        return qd_error_set(
                                err, EINVAL,
                                "Parameter 'tokens' must be an array of token ids; element %" PRIu32
                                " is not one.",
                                i);
        }
        return scheduler_tokenize(m->scheduler, r, a.model, NULL, a.tokens, err);
}

const Method daemon_methods[] = {
        {"Hello", method_hello, 0},
        {"Version", method_version, 0},
        {"List", method_list, 0},
        {"Show", method_show, 0},
        {"Ps", method_ps, 0},
        {"Generate", method_generate, METHOD_STREAMS},
        {"Chat", method_chat, METHOD_STREAMS},
        {"Embed", method_embed, 0},
        {"Tokenize", method_tokenize, 0},
        {"Detokenize", method_detokenize, 0},
        {"Pull", method_pull, METHOD_CHANGES_STORE | METHOD_STREAMS | METHOD_SURVIVES_CLIENT},
        {"Push", method_push, METHOD_CHANGES_STORE | METHOD_STREAMS | METHOD_SURVIVES_CLIENT},
        {"Create", method_create, METHOD_CHANGES_STORE | METHOD_STREAMS | METHOD_SURVIVES_CLIENT},
        {"Import", method_import, METHOD_CHANGES_STORE | METHOD_STREAMS | METHOD_SURVIVES_CLIENT},
        /* These write to or read the client's files only: they end with the client. */
        {"Quantize", method_quantize, METHOD_STREAMS},
        {"Eval", method_eval, METHOD_STREAMS},
        {"Export", method_export, METHOD_STREAMS},
        {"Copy", method_copy, METHOD_CHANGES_STORE},
        {"Delete", method_delete, METHOD_CHANGES_STORE},
        {"Load", method_load, 0},
        {"Unload", method_unload, 0},
        {"Cancel", method_cancel, 0},
        {"Jobs", method_jobs, METHOD_STREAMS},
        {},
};
