/* SPDX-License-Identifier: MIT */
/*
 * RegistryConfig: defaults and the registry's sections of the INI-style config file ([Registry],
 * [Credentials], [Models]). Other sections belong to other components and are skipped.
 */

#include <arpa/inet.h>
#include <ctype.h>

#include "registry-internal.h"

void registry_config_init(RegistryConfig *c) {
        *c = (RegistryConfig){
                .parallel_parts = 4,
                .loopback_parallel_parts = 1,
                .part_size = 64ULL << 20,
                .stall_timeout_s = 30,
                .max_retries = 6,
                .backoff_ms = 500,
                .push_chunk_size = 64ULL << 20,
                .prune_grace_s = 3600,
                .import_max_bytes = 1ULL << 40,
        };
}

void registry_config_done(RegistryConfig *c) {
        free(c->default_host);
        free(c->default_namespace);
        strv_free(c->insecure_hosts);
        free(c->ca_file);
        for (size_t i = 0; i < c->n_credentials; i++) {
                free(c->credentials[i].host);
                free(c->credentials[i].username);
                if (c->credentials[i].password)
                        explicit_bzero(c->credentials[i].password, strlen(c->credentials[i].password));
                free(c->credentials[i].password);
        }
        free(c->credentials);
        for (size_t i = 0; i < c->n_aliases; i++) {
                free(c->aliases[i].short_name);
                free(c->aliases[i].target);
        }
        free(c->aliases);
        registry_config_init(c);
}

static int parse_bytes(const char *v, uint64_t *ret) {
        size_t n = strlen(v);
        unsigned shift = 0;
        uint64_t x;

        if (n > 0 && strchr("KMG", v[n - 1])) {
                shift = v[n - 1] == 'K' ? 10 : v[n - 1] == 'M' ? 20 : 30;
                n--;
        }
        _cleanup_free_ char *num = strndup(v, n);
        if (!num)
                return -ENOMEM;
        int r = safe_atou64(num, &x);
        if (r < 0)
                return r;
        if (x > (UINT64_MAX >> shift))
                return -ERANGE;
        *ret = x << shift;
        return 0;
}

static int parse_seconds(const char *v, uint64_t *ret) {
        int64_t ns;
        int r = parse_duration_ns(v, &ns);
        if (r < 0)
                return r;
        if (ns < 0)
                return -EINVAL;
        *ret = (uint64_t)ns / 1000000000ULL;
        return 0;
}

static int parse_uint(const char *v, unsigned max, unsigned *ret) {
        uint64_t x;
        int r = safe_atou64(v, &x);
        if (r < 0)
                return r;
        if (x > max)
                return -ERANGE;
        *ret = (unsigned)x;
        return 0;
}

static int set_str(char **p, const char *v) {
        char *s = strdup(v);
        if (!s)
                return -ENOMEM;
        free(*p);
        *p = s;
        return 0;
}

static int strv_push(char ***l, const char *v) {
        size_t n = 0;
        while (*l && (*l)[n])
                n++;
        char **m = realloc(*l, (n + 2) * sizeof(char *));
        if (!m)
                return -ENOMEM;
        *l = m;
        m[n] = strdup(v);
        m[n + 1] = NULL;
        return m[n] ? 0 : -ENOMEM;
}

static int apply_registry_key(RegistryConfig *c, const char *k, const char *v) {
        uint64_t u;
        int r;

        if (streq(k, "DefaultHost")) {
                RegistryName probe;
                _cleanup_free_ char *s = strdup_printf("%s/x/y", v);
                if (!s)
                        return -ENOMEM;
                if (registry_name_parse(s, NULL, &probe, NULL) < 0)
                        return -EINVAL;
                return set_str(&c->default_host, v);
        }
        if (streq(k, "DefaultNamespace")) {
                RegistryName probe;
                _cleanup_free_ char *s = strdup_printf("%s/y", v);
                if (!s)
                        return -ENOMEM;
                if (registry_name_parse(s, NULL, &probe, NULL) < 0)
                        return -EINVAL;
                return set_str(&c->default_namespace, v);
        }
        if (streq(k, "Insecure"))
                return strv_push(&c->insecure_hosts, v);
        if (streq(k, "CAFile"))
                return set_str(&c->ca_file, v);
        if (streq(k, "ParallelParts")) {
                r = parse_uint(v, 64, &c->parallel_parts);
                return r < 0 ? r : c->parallel_parts == 0 ? -EINVAL : 0;
        }
        if (streq(k, "LoopbackParallelParts")) {
                r = parse_uint(v, 64, &c->loopback_parallel_parts);
                return r < 0 ? r : c->loopback_parallel_parts == 0 ? -EINVAL : 0;
        }
        if (streq(k, "PartSize")) {
                r = parse_bytes(v, &u);
                if (r < 0)
                        return r;
                if (u < 4096)
                        return -EINVAL;
                c->part_size = u;
                return 0;
        }
        if (streq(k, "MaxBandwidth"))
                return parse_bytes(v, &c->max_bandwidth);
        if (streq(k, "StallTimeout")) {
                r = parse_seconds(v, &u);
                if (r < 0)
                        return r;
                if (u == 0 || u > 3600)
                        return -EINVAL;
                c->stall_timeout_s = (unsigned)u;
                return 0;
        }
        if (streq(k, "Retries"))
                return parse_uint(v, 100, &c->max_retries);
        if (streq(k, "Backoff")) {
                int64_t ns;
                r = parse_duration_ns(v, &ns);
                if (r < 0)
                        return r;
                if (ns < 0 || ns > 60000000000LL)
                        return -EINVAL;
                c->backoff_ms = (unsigned)(ns / 1000000);
                return 0;
        }
        if (streq(k, "PushChunkSize")) {
                r = parse_bytes(v, &u);
                if (r < 0)
                        return r;
                if (u < 4096)
                        return -EINVAL;
                c->push_chunk_size = u;
                return 0;
        }
        if (streq(k, "PruneGrace"))
                return parse_seconds(v, &c->prune_grace_s);
        if (streq(k, "ImportMaxBytes"))
                return parse_bytes(v, &c->import_max_bytes);
        return -ENOKEY;
}

static int add_credential(RegistryConfig *c, const char *host, const char *v) {
        const char *colon = strchr(v, ':');
        if (!colon || colon == v)
                return -EINVAL;
        RegistryCredential *m = realloc(c->credentials, (c->n_credentials + 1) * sizeof(*m));
        if (!m)
                return -ENOMEM;
        c->credentials = m;
        RegistryCredential *cr = &m[c->n_credentials];
        *cr = (RegistryCredential){
                .host = strdup(host),
                .username = strndup(v, (size_t)(colon - v)),
                .password = strdup(colon + 1),
        };
        c->n_credentials++;
        return cr->host && cr->username && cr->password ? 0 : -ENOMEM;
}

static int add_alias(RegistryConfig *c, const char *k, const char *v) {
        RegistryName probe;

        if (registry_name_parse(v, c, &probe, NULL) < 0)
                return -EINVAL;
        RegistryAlias *m = realloc(c->aliases, (c->n_aliases + 1) * sizeof(*m));
        if (!m)
                return -ENOMEM;
        c->aliases = m;
        m[c->n_aliases] = (RegistryAlias){.short_name = strdup(k), .target = strdup(v)};
        c->n_aliases++;
        return m[c->n_aliases - 1].short_name && m[c->n_aliases - 1].target ? 0 : -ENOMEM;
}

static char *strip(char *s) {
        while (isspace((unsigned char)*s))
                s++;
        size_t n = strlen(s);
        while (n > 0 && isspace((unsigned char)s[n - 1]))
                s[--n] = 0;
        return s;
}

int registry_config_load(RegistryConfig *c, const char *path, QdError *e) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        _cleanup_free_ char *line = NULL;
        _cleanup_free_ char *section = NULL;
        size_t cap = 0;
        unsigned lineno = 0;

        if (!f)
                return qd_error_set(e, errno, "Failed to open config file '%s': %s.", path, strerror(errno));
        for (;;) {
                errno = 0;
                ssize_t n = getline(&line, &cap, f);
                if (n < 0) {
                        if (errno != 0)
                                return qd_error_set(e, errno, "Failed to read config file '%s'.", path);
                        break;
                }
                lineno++;
                char *l = strip(line);
                if (*l == 0 || *l == '#' || *l == ';')
                        continue;
                if (*l == '[') {
                        char *end = strchr(l, ']');
                        if (!end || end[1] != 0)
                                return qd_error_set(e, EINVAL, "%s:%u: malformed section header.", path,
                                                    lineno);
                        free(section);
                        section = strndup(l + 1, (size_t)(end - l - 1));
                        if (!section)
                                return -ENOMEM;
                        continue;
                }
                char *eq = strchr(l, '=');
                if (!eq)
                        return qd_error_set(e, EINVAL, "%s:%u: expected Key=value.", path, lineno);
                *eq = 0;
                char *k = strip(l), *v = strip(eq + 1);
                int r;
                if (!section)
                        return qd_error_set(e, EINVAL, "%s:%u: assignment outside of a section.", path,
                                            lineno);
                if (streq(section, "Registry"))
                        r = apply_registry_key(c, k, v);
                else if (streq(section, "Credentials"))
                        r = add_credential(c, k, v);
                else if (streq(section, "Models"))
                        r = add_alias(c, k, v);
                else
                        continue;
                if (r == -ENOMEM)
                        return qd_error_set(e, ENOMEM, "Out of memory.");
                if (r == -ENOKEY)
                        return qd_error_set(e, EINVAL, "%s:%u: unknown key '%s' in [%s].", path, lineno, k,
                                            section);
                if (r < 0)
                        return qd_error_set(e, EINVAL, "%s:%u: invalid value for '%s' in [%s].", path,
                                            lineno, k, section);
        }
        return 0;
}

unsigned registry_config_parallel_parts(const RegistryConfig *c, const char *host) {
        char name[REGISTRY_HOST_MAX + 1];
        size_t n;

        if (host[0] == '[') {
                /* "[::1]:port" */
                const char *end = strchr(host, ']');
                n = end ? (size_t)(end - host - 1) : 0;
                host++;
        } else {
                const char *colon = strchr(host, ':');
                n = colon ? (size_t)(colon - host) : strlen(host);
        }
        if (n == 0 || n >= sizeof(name))
                return c->parallel_parts;
        memcpy(name, host, n);
        name[n] = 0;
        struct in_addr a;
        if (streq(name, "localhost") || streq(name, "::1") ||
            (inet_pton(AF_INET, name, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127))
                return c->loopback_parallel_parts;
        return c->parallel_parts;
}
