/* SPDX-License-Identifier: MIT */
/*
 * Model names: "[host/][namespace/]model[:tag]", their validation and the short-name catalogue.
 *
 * DESIGN: a name becomes a path below manifests/ and a URL path on a registry, so every part is checked
 * against a whitelist of characters before anything else sees it. Parts may not start with '.', '-' or '_',
 * which rules out "." and ".." without a special case.
 */

#include "registry-internal.h"

static bool is_alnum(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool valid_component(const char *s, size_t n, size_t max) {
        if (n == 0 || n > max || !is_alnum(s[0]))
                return false;
        for (size_t i = 1; i < n; i++)
                if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
                        return false;
        return true;
}

static bool valid_tag(const char *s, size_t n) {
        if (n == 0 || n > REGISTRY_TAG_MAX || !(is_alnum(s[0]) || s[0] == '_'))
                return false;
        for (size_t i = 1; i < n; i++)
                if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
                        return false;
        return true;
}

static bool valid_host(const char *s, size_t n) {
        const char *colon = memchr(s, ':', n);
        size_t hn = colon ? (size_t)(colon - s) : n;

        if (hn == 0 || n > REGISTRY_HOST_MAX || !is_alnum(s[0]) || !is_alnum(s[hn - 1]))
                return false;
        for (size_t i = 0; i < hn; i++)
                if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '-')
                        return false;
        if (strstr(s, "..") && (size_t)(strstr(s, "..") - s) < hn)
                return false;
        if (colon) {
                size_t pn = n - hn - 1;
                if (pn == 0 || pn > 5)
                        return false;
                unsigned port = 0;
                for (size_t i = hn + 1; i < n; i++) {
                        if (s[i] < '0' || s[i] > '9')
                                return false;
                        port = port * 10 + (unsigned)(s[i] - '0');
                }
                if (port == 0 || port > 65535)
                        return false;
        }
        return true;
}

int registry_name_parse(const char *s, const RegistryConfig *c, RegistryName *ret, QdError *e) {
        const char *parts[3];
        size_t lens[3], n = 0;
        RegistryName name = {};

        if (!s || !*s)
                return qd_error_set(e, EINVAL, "The model name is empty.");
        if (strlen(s) > REGISTRY_HOST_MAX + 2 * REGISTRY_COMPONENT_MAX + REGISTRY_TAG_MAX + 3)
                return qd_error_set(e, EINVAL, "The model name is too long.");
        if (strchr(s, '@'))
                return qd_error_set(e, EINVAL,
                                    "Model '%s': names with a digest (@sha256:…) are not supported.", s);

        for (const char *p = s;;) {
                const char *slash = strchr(p, '/');
                if (n == 3)
                        return qd_error_set(e, EINVAL,
                                            "Model name '%s' has too many parts; expected "
                                            "[host/][namespace/]model[:tag].",
                                            s);
                parts[n] = p;
                lens[n] = slash ? (size_t)(slash - p) : strlen(p);
                n++;
                if (!slash)
                        break;
                p = slash + 1;
        }

        /* The tag is after the last ':' of the last part (a ':' in the host is its port). */
        const char *model = parts[n - 1];
        size_t model_len = lens[n - 1];
        const char *colon = memchr(model, ':', model_len);
        const char *tag = REGISTRY_DEFAULT_TAG;
        size_t tag_len = strlen(tag);
        if (colon) {
                tag = colon + 1;
                tag_len = model_len - (size_t)(colon - model) - 1;
                model_len = (size_t)(colon - model);
                if (!valid_tag(tag, tag_len))
                        return qd_error_set(e, EINVAL,
                                            "Model name '%s' has an invalid tag; a tag is up to %d letters, "
                                            "digits, '_', '.' or '-'.",
                                            s, REGISTRY_TAG_MAX);
        }
        if (!valid_component(model, model_len, REGISTRY_COMPONENT_MAX))
                return qd_error_set(e, EINVAL,
                                    "Model name '%s' is invalid; a model name is up to %d letters, digits, "
                                    "'_', '.' or '-' and starts with a letter or digit.",
                                    s, REGISTRY_COMPONENT_MAX);

        const char *host = c && c->default_host ? c->default_host : REGISTRY_DEFAULT_HOST;
        const char *ns = c && c->default_namespace ? c->default_namespace : REGISTRY_DEFAULT_NAMESPACE;
        size_t host_len = strlen(host), ns_len = strlen(ns);
        if (n >= 2) {
                ns = parts[n - 2];
                ns_len = lens[n - 2];
        }
        if (n == 3) {
                host = parts[0];
                host_len = lens[0];
        }
        if (!valid_component(ns, ns_len, REGISTRY_COMPONENT_MAX))
                return qd_error_set(e, EINVAL, "Model name '%s' has an invalid namespace.", s);
        if (!valid_host(host, host_len))
                return qd_error_set(e, EINVAL, "Model name '%s' has an invalid registry host.", s);

        memcpy(name.host, host, host_len);
        memcpy(name.namespace, ns, ns_len);
        memcpy(name.model, model, model_len);
        memcpy(name.tag, tag, tag_len);
        *ret = name;
        return 0;
}

int registry_name_resolve(const char *s, const RegistryConfig *c, RegistryName *ret, QdError *e) {
        if (c && s)
                for (size_t i = 0; i < c->n_aliases; i++)
                        if (streq(c->aliases[i].short_name, s))
                                return registry_name_parse(c->aliases[i].target, c, ret, e);
        return registry_name_parse(s, c, ret, e);
}

int registry_name_format(const RegistryName *n, char **ret) {
        char *s = strdup_printf("%s/%s/%s:%s", n->host, n->namespace, n->model, n->tag);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int registry_name_format_short(const RegistryName *n, const RegistryConfig *c, char **ret) {
        const char *host = c && c->default_host ? c->default_host : REGISTRY_DEFAULT_HOST;
        const char *ns = c && c->default_namespace ? c->default_namespace : REGISTRY_DEFAULT_NAMESPACE;
        char *s;

        if (!streq(n->host, host))
                s = strdup_printf("%s/%s/%s:%s", n->host, n->namespace, n->model, n->tag);
        else if (!streq(n->namespace, ns))
                s = strdup_printf("%s/%s:%s", n->namespace, n->model, n->tag);
        else
                s = strdup_printf("%s:%s", n->model, n->tag);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int manifest_rel_path(const RegistryName *name, char **ret) {
        char *s = strdup_printf("%s/%s/%s/%s", name->host, name->namespace, name->model, name->tag);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}
