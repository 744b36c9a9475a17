/* SPDX-License-Identifier: MIT */
/*
 * Image manifests (Docker v2 schema 2 and OCI), parsed and written with json-c.
 *
 * DESIGN: we keep a manifest's bytes exactly as the registry sent them (its digest is the model's identity),
 * so the parsed form is only for reading; registry_manifest_format() is used for manifests we create
 * ourselves. Validation is strict where the values reach paths or arithmetic (digests, sizes) and lenient
 * about unknown members and media types, which registries add over time.
 */

#include <json-c/json.h>

#include "registry-internal.h"

/* 1 PiB: larger "sizes" are damage or an attack, and the limit keeps every sum of 4096 sizes exact. */
#define REGISTRY_BLOB_SIZE_MAX (INT64_C(1) << 50)

bool registry_digest_is_valid(const char *s) {
        const char *h = s ? startswith(s, "sha256:") : NULL;

        if (!h || strlen(h) != 64)
                return false;
        for (size_t i = 0; i < 64; i++)
                if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
                        return false;
        return true;
}

static int parse_layer(json_object *o, RegistryLayer *l, const char *what, QdError *e) {
        json_object *mt, *dg, *sz;

        if (!json_object_is_type(o, json_type_object))
                return qd_error_set(e, EBADMSG, "Malformed manifest: %s is not an object.", what);
        if (!json_object_object_get_ex(o, "mediaType", &mt) || !json_object_is_type(mt, json_type_string))
                return qd_error_set(e, EBADMSG, "Malformed manifest: %s has no mediaType.", what);
        if (!json_object_object_get_ex(o, "digest", &dg) || !json_object_is_type(dg, json_type_string) ||
            !registry_digest_is_valid(json_object_get_string(dg)))
                return qd_error_set(e, EBADMSG, "Malformed manifest: %s has no valid sha256 digest.", what);
        if (!json_object_object_get_ex(o, "size", &sz) || !json_object_is_type(sz, json_type_int) ||
            json_object_get_int64(sz) < 0 || json_object_get_int64(sz) > REGISTRY_BLOB_SIZE_MAX)
                return qd_error_set(e, EBADMSG, "Malformed manifest: %s has no valid size.", what);
        l->media_type = strdup(json_object_get_string(mt));
        if (!l->media_type)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        snprintf(l->digest, sizeof(l->digest), "%s", json_object_get_string(dg));
        l->size = (uint64_t)json_object_get_int64(sz);
        return 0;
}

int registry_manifest_parse(const void *data, size_t size, RegistryManifest **ret, QdError *e) {
        _cleanup_(registry_manifest_freep) RegistryManifest *m = NULL;
        json_object *sv, *mt, *cfg, *layers;
        int r;

        if (size > REGISTRY_MANIFEST_MAX)
                return qd_error_set(e, EMSGSIZE, "Manifest of %zu bytes is over the limit of %u bytes.",
                                    size, REGISTRY_MANIFEST_MAX);
        json_tokener *tok = json_tokener_new();
        if (!tok)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        json_object *root = json_tokener_parse_ex(tok, data, (int)size);
        bool trailing = root && tok->char_offset != (int)size;
        enum json_tokener_error jerr = json_tokener_get_error(tok);
        json_tokener_free(tok);
        if (!root || jerr != json_tokener_success || trailing) {
                json_object_put(root);
                return qd_error_set(e, EBADMSG, "Malformed manifest: not valid JSON.");
        }

        m = calloc(1, sizeof(*m));
        if (!m) {
                json_object_put(root);
                return qd_error_set(e, ENOMEM, "Out of memory.");
        }
        r = -EBADMSG;
        if (!json_object_is_type(root, json_type_object)) {
                qd_error_set(e, EBADMSG, "Malformed manifest: not a JSON object.");
                goto out;
        }
        if (!json_object_object_get_ex(root, "schemaVersion", &sv) ||
            !json_object_is_type(sv, json_type_int) || json_object_get_int64(sv) != 2) {
                qd_error_set(e, EBADMSG, "Unsupported manifest: schemaVersion must be 2.");
                goto out;
        }
        if (json_object_object_get_ex(root, "mediaType", &mt)) {
                if (!json_object_is_type(mt, json_type_string)) {
                        qd_error_set(e, EBADMSG, "Malformed manifest: mediaType is not a string.");
                        goto out;
                }
                const char *s = json_object_get_string(mt);
                if (!streq(s, REGISTRY_MEDIA_DOCKER_MANIFEST) && !streq(s, REGISTRY_MEDIA_OCI_MANIFEST)) {
                        qd_error_set(e, EBADMSG, "Unsupported manifest media type '%s'.", s);
                        goto out;
                }
                m->media_type = strdup(s);
        } else
                /* OCI makes mediaType optional; the content is an image manifest by its shape. */
                m->media_type = strdup(REGISTRY_MEDIA_OCI_MANIFEST);
        if (!m->media_type) {
                r = qd_error_set(e, ENOMEM, "Out of memory.");
                goto out;
        }
        if (!json_object_object_get_ex(root, "config", &cfg)) {
                qd_error_set(e, EBADMSG, "Malformed manifest: no config.");
                goto out;
        }
        r = parse_layer(cfg, &m->config, "the config", e);
        if (r < 0)
                goto out;
        r = -EBADMSG;
        if (!json_object_object_get_ex(root, "layers", &layers) ||
            !json_object_is_type(layers, json_type_array)) {
                qd_error_set(e, EBADMSG, "Malformed manifest: no layers array.");
                goto out;
        }
        size_t n = json_object_array_length(layers);
        if (n > 4096) {
                r = qd_error_set(e, EMSGSIZE, "Manifest has %zu layers, more than 4096.", n);
                goto out;
        }
        m->layers = calloc(MAX(n, (size_t)1), sizeof(RegistryLayer));
        if (!m->layers) {
                r = qd_error_set(e, ENOMEM, "Out of memory.");
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                char what[32];
                snprintf(what, sizeof(what), "layer %zu", i);
                r = parse_layer(json_object_array_get_idx(layers, i), &m->layers[i], what, e);
                if (r < 0)
                        goto out;
                m->n_layers++;
        }
        r = 0;
        *ret = TAKE_PTR(m);
out:
        json_object_put(root);
        return r;
}

static json_object *layer_to_json(const RegistryLayer *l) {
        json_object *o = json_object_new_object();
        if (!o)
                return NULL;
        if (json_object_object_add(o, "mediaType", json_object_new_string(l->media_type)) < 0 ||
            json_object_object_add(o, "digest", json_object_new_string(l->digest)) < 0 ||
            json_object_object_add(o, "size", json_object_new_int64((int64_t)l->size)) < 0) {
                json_object_put(o);
                return NULL;
        }
        return o;
}

int registry_manifest_format(const RegistryManifest *m, char **ret) {
        json_object *root = json_object_new_object(), *layers = json_object_new_array();
        int r = -ENOMEM;

        if (!root || !layers) {
                json_object_put(root);
                json_object_put(layers);
                return -ENOMEM;
        }
        if (json_object_object_add(root, "schemaVersion", json_object_new_int(2)) < 0 ||
            json_object_object_add(root, "mediaType", json_object_new_string(m->media_type)) < 0 ||
            json_object_object_add(root, "config", layer_to_json(&m->config)) < 0) {
                json_object_put(layers);
                goto out;
        }
        for (size_t i = 0; i < m->n_layers; i++)
                if (json_object_array_add(layers, layer_to_json(&m->layers[i])) < 0) {
                        json_object_put(layers);
                        goto out;
                }
        if (json_object_object_add(root, "layers", layers) < 0)
                goto out;
        const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
                                                                     JSON_C_TO_STRING_NOSLASHESCAPE);
        if (s) {
                *ret = strdup(s);
                r = *ret ? 0 : -ENOMEM;
        }
out:
        json_object_put(root);
        return r;
}

const RegistryLayer *registry_manifest_find_layer(const RegistryManifest *m, const char *media_type) {
        for (size_t i = 0; i < m->n_layers; i++)
                if (streq(m->layers[i].media_type, media_type))
                        return &m->layers[i];
        return NULL;
}

uint64_t registry_manifest_total_size(const RegistryManifest *m) {
        uint64_t t = m->config.size;
        for (size_t i = 0; i < m->n_layers; i++)
                t += m->layers[i].size;
        return t;
}

RegistryManifest *registry_manifest_free(RegistryManifest *m) {
        if (!m)
                return NULL;
        free(m->media_type);
        free(m->config.media_type);
        for (size_t i = 0; i < m->n_layers; i++)
                free(m->layers[i].media_type);
        free(m->layers);
        free(m);
        return NULL;
}
