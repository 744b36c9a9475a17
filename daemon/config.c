/* SPDX-License-Identifier: MIT */
/*
 * quantd.conf: the daemon's INI-style configuration ([Section], Key=value, '#' and ';' comments), in the
 * manner of systemd's unit files. Every key is documented in quantd.conf(5); the table below is the one
 * place that names them. Sections of other components ([Registry], [Credentials], [Models]) are theirs.
 */

#include <ctype.h>
#include <inttypes.h>

#include "daemon.h"

void daemon_config_init(DaemonConfig *c) {
        *c = (DaemonConfig){
                .log_level = -1,
                .workers = 2,
                .max_connections = 256,
                .max_requests = 64,
                .max_frame = PROTO_FRAME_MAX_DEFAULT,
                .max_output = 16U * 1024U * 1024U,
                .finished_jobs = 32,
                .keep_alive_ns = 5LL * 60 * 1000000000LL,
                .max_loaded = 3,
                .memory_budget = 0,
                .load_timeout_ns = 5LL * 60 * 1000000000LL,
                .num_parallel = 4,
                .num_ctx = 2048,
                .threads = 0,
                .gpu_budget = 0,
                /* The CUDA context, cuBLAS and the graphs take memory no estimate counts; Ollama keeps
                 * about this much free for the same reason. */
                .gpu_overhead = 512ULL << 20,
        };
}

void daemon_config_done(DaemonConfig *c) {
        free(c->socket);
        free(c->models);
        free(c->group);
        *c = (DaemonConfig){};
}

int daemon_parse_bytes(const char *s, uint64_t *ret) {
        static const struct {
                char suffix;
                double factor;
        } units[] = {{'K', 1024.0}, {'M', 1048576.0}, {'G', 1073741824.0}, {'T', 1099511627776.0}};
        char buf[64];
        double factor = 1, v;
        size_t n;
        int r;

        if (!s || (n = strlen(s)) == 0 || n >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, s, n + 1);
        if (n > 1 && (buf[n - 1] == 'B' || buf[n - 1] == 'b'))
                buf[--n] = 0;
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (n > 1 && toupper((unsigned char)buf[n - 1]) == units[i].suffix) {
                        factor = units[i].factor;
                        buf[--n] = 0;
                        break;
                }
        if (buf[0] == '-' || buf[0] == '+')
                return -EINVAL;
        r = safe_atod(buf, &v);
        if (r < 0)
                return r;
        v *= factor;
        if (v >= 18446744073709551616.0)
                return -ERANGE;
        *ret = (uint64_t)v;
        return 0;
}

typedef enum ConfigType {
        CONFIG_STRING,
        CONFIG_UNSIGNED,
        CONFIG_BYTES,
        CONFIG_DURATION,
        CONFIG_LOG_LEVEL,
        _CONFIG_TYPE_MAX,
        _CONFIG_TYPE_INVALID = -EINVAL,
} ConfigType;

typedef struct ConfigKey {
        const char *section;
        const char *key;
        ConfigType type;
        size_t offset;
        uint64_t min, max; /* for unsigned and bytes */
} ConfigKey;

#define KEY(sec, k, t, f, lo, hi) \
        { sec, k, t, offsetof(DaemonConfig, f), lo, hi }
static const ConfigKey config_keys[] = {
        KEY("Daemon", "Socket", CONFIG_STRING, socket, 0, 0),
        KEY("Daemon", "Models", CONFIG_STRING, models, 0, 0),
        KEY("Daemon", "Group", CONFIG_STRING, group, 0, 0),
        KEY("Daemon", "LogLevel", CONFIG_LOG_LEVEL, log_level, 0, 0),
        KEY("Daemon", "Workers", CONFIG_UNSIGNED, workers, 1, 256),
        KEY("Daemon", "MaxConnections", CONFIG_UNSIGNED, max_connections, 1, 65536),
        KEY("Daemon", "MaxRequestsPerConnection", CONFIG_UNSIGNED, max_requests, 1, 65536),
        KEY("Daemon", "MaxFrameSize", CONFIG_BYTES, max_frame, 4096, UINT32_MAX),
        KEY("Daemon", "MaxQueuedOutput", CONFIG_BYTES, max_output, 65536, UINT64_MAX),
        KEY("Daemon", "KeepFinishedJobs", CONFIG_UNSIGNED, finished_jobs, 0, 65536),
        KEY("Scheduler", "KeepAlive", CONFIG_DURATION, keep_alive_ns, 0, 0),
        KEY("Scheduler", "MaxLoadedModels", CONFIG_UNSIGNED, max_loaded, 1, 1024),
        KEY("Scheduler", "MemoryBudget", CONFIG_BYTES, memory_budget, 0, UINT64_MAX),
        KEY("Scheduler", "LoadTimeout", CONFIG_DURATION, load_timeout_ns, 0, 0),
        KEY("Scheduler", "NumParallel", CONFIG_UNSIGNED, num_parallel, 1, 256),
        KEY("Scheduler", "ContextLength", CONFIG_UNSIGNED, num_ctx, 16, 1U << 24),
        KEY("Scheduler", "Threads", CONFIG_UNSIGNED, threads, 0, 1024),
        KEY("Scheduler", "GpuMemoryBudget", CONFIG_BYTES, gpu_budget, 0, UINT64_MAX),
        KEY("Scheduler", "GpuOverhead", CONFIG_BYTES, gpu_overhead, 0, UINT64_MAX),
};
#undef KEY

/* Sections that belong to other components: read by them from the same file. */
static const char *const foreign_sections[] = {"Registry", "Credentials", "Models"};

static char *strip(char *s) {
        while (isspace((unsigned char)*s))
                s++;
        size_t n = strlen(s);
        while (n > 0 && isspace((unsigned char)s[n - 1]))
                s[--n] = 0;
        return s;
}

static int assign(DaemonConfig *c, const ConfigKey *k, const char *value, const char *path, unsigned line,
                  QdError *err) {
        void *dst = (uint8_t *)c + k->offset;
        uint64_t u;
        int64_t d;
        int r;

        switch (k->type) {
        case CONFIG_STRING: {
                char *copy = strdup(value);
                if (!copy)
                        return -ENOMEM;
                free(*(char **)dst);
                *(char **)dst = value[0] ? copy : (free(copy), NULL);
                return 0;
        }
        case CONFIG_UNSIGNED:
                r = safe_atou64(value, &u);
                if (r < 0 || u < k->min || u > k->max)
                        return qd_error_set(err, EINVAL,
                                            "%s:%u: %s= must be a number from %" PRIu64 " to %" PRIu64
                                            ", got '%s'.",
                                            path, line, k->key, k->min, k->max, value);
                *(unsigned *)dst = (unsigned)u;
                return 0;
        case CONFIG_BYTES:
                r = daemon_parse_bytes(value, &u);
                if (r < 0 || u < k->min || u > k->max)
                        return qd_error_set(
                                err, EINVAL, "%s:%u: %s= must be a size such as 512M or 8G%s, got '%s'.",
                                path, line, k->key, k->min > 0 ? " within its limits" : "", value);
                *(uint64_t *)dst = u;
                return 0;
        case CONFIG_DURATION:
                r = parse_duration_ns(value, &d);
                if (r < 0)
                        return qd_error_set(err, EINVAL,
                                            "%s:%u: %s= must be a duration such as 5m or 30s, got '%s'.",
                                            path, line, k->key, value);
                *(int64_t *)dst = d;
                return 0;
        case CONFIG_LOG_LEVEL:
                r = log_level_from_string(value);
                if (r < 0)
                        return qd_error_set(err, EINVAL,
                                            "%s:%u: LogLevel= must be err, warning, notice, info or debug, "
                                            "got '%s'.",
                                            path, line, value);
                *(int *)dst = r;
                return 0;
        case _CONFIG_TYPE_MAX:
        case _CONFIG_TYPE_INVALID:
                break;
        }
        return -EINVAL;
}

int daemon_config_load(DaemonConfig *c, const char *path, QdError *err) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        char section[64] = "";
        size_t cap = 0;
        unsigned n = 0;
        bool foreign = false;

        f = fopen(path, "re");
        if (!f) {
                int r = negative_errno();
                if (r == -ENOENT)
                        return r;
                return qd_error_set(err, r, "Failed to open %s: %s", path, strerror(-r));
        }
        while (getline(&line, &cap, f) >= 0) {
                n++;
                char *l = strip(line);
                if (!*l || *l == '#' || *l == ';')
                        continue;
                if (*l == '[') {
                        size_t len = strlen(l);
                        if (l[len - 1] != ']' || len - 2 >= sizeof(section) || len < 3)
                                return qd_error_set(err, EINVAL,
                                                    "%s:%u: a section header must look like [Daemon].", path,
                                                    n);
                        memcpy(section, l + 1, len - 2);
                        section[len - 2] = 0;
                        foreign = false;
                        for (size_t i = 0; i < ELEMENTSOF(foreign_sections); i++)
                                foreign = foreign || streq(section, foreign_sections[i]);
                        bool known = foreign || streq(section, "Daemon") || streq(section, "Scheduler");
                        if (!known)
                                log_warning("%s:%u: unknown section [%s], ignoring.", path, n, section);
                        foreign = foreign || !known;
                        continue;
                }
                char *eq = strchr(l, '=');
                if (!eq)
                        return qd_error_set(err, EINVAL, "%s:%u: expected Key=value, got '%s'.", path, n, l);
                if (foreign)
                        continue;
                if (!section[0])
                        return qd_error_set(err, EINVAL, "%s:%u: '%s' comes before any [Section].", path, n,
                                            l);
                *eq = 0;
                const char *key = strip(l), *value = strip(eq + 1);
                const ConfigKey *k = NULL;
                for (size_t i = 0; i < ELEMENTSOF(config_keys); i++)
                        if (streq(config_keys[i].section, section) && streq(config_keys[i].key, key))
                                k = &config_keys[i];
                if (!k) {
                        log_warning("%s:%u: unknown key %s= in [%s], ignoring.", path, n, key, section);
                        continue;
                }
                int r = assign(c, k, value, path, n, err);
                if (r < 0)
                        return r;
        }
        if (ferror(f)) {
                int r = errno > 0 ? errno : EIO;
                return qd_error_set(err, r, "Failed to read %s: %s", path, strerror(r));
        }
        return 0;
}
