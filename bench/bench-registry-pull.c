/* SPDX-License-Identifier: MIT */
/*
 * quantd-registry-bench: pull throughput from a loopback registry beside curl fetching the same blob
 * (docs/performance.md, "Registry pull").
 *
 * It starts Debian's docker-registry on a free loopback port, creates a model whose one layer is --size MiB
 * of pseudo-random bytes and pushes it once. Then it runs --reps rounds of three contenders, in an order
 * that rotates from round to round so that none always goes first:
 *
 *   pull        registry_pull() into an empty store, in a child process: manifest, ranged parts, SHA-256,
 *               fsync, rename. The blob is durable and verified when it ends.
 *   curl        `curl -sSf -o FILE URL` of the same blob URL: the data is in the page cache when it ends.
 *   curl+sync   the same, then fsync(FILE): durable, not verified.
 *
 * Each run's wall time is measured around the child; CPU time is the child's (all its threads, from wait4())
 * and, separately, the registry server's (from /proc/PID/stat) over the same interval. Every output is
 * deleted before the next run, so the page cache holds the registry's copy of the blob and nothing else.
 * The report gives each run, then the medians, the ratio of the medians and the median of the per-round
 * ratios (pull against the curl runs of its own round, which is steadier on a shared machine).
 */

#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <curl/curl.h>

#include "common.h"
#include "registry.h"

typedef enum ContenderKind {
        CONTENDER_PULL,
        CONTENDER_CURL,
        CONTENDER_CURL_SYNC,
        _CONTENDER_KIND_MAX,
        _CONTENDER_KIND_INVALID = -EINVAL,
} ContenderKind;

typedef struct Contender {
        ContenderKind kind;
        char name[32];
        unsigned parts;   /* for pulls: ParallelParts, 0 for the configuration's default */
        uint64_t part_mb; /* for pulls: PartSize in MiB, 0 for the configuration's default */
} Contender;

#define CONTENDERS_MAX 8
#define REPS_MAX 1000

typedef struct Sample {
        double seconds;
        double cpu;        /* seconds of the child, user + system */
        double server_cpu; /* seconds of the registry server over the same interval */
} Sample;

static uint64_t arg_size_mb = 2048;
static unsigned arg_reps = 5;
static Contender arg_contenders[CONTENDERS_MAX] = {
        {CONTENDER_PULL, "pull", 0, 0},
        {CONTENDER_CURL, "curl", 0, 0},
        {CONTENDER_CURL_SYNC, "curl+sync", 0, 0},
};
static size_t arg_n_contenders = 3;
static const char *arg_dir = NULL; /* scratch directory, default $TMPDIR or /var/tmp */
static const char *arg_registry_config = NULL;
static const char *arg_curl = "curl";
static bool arg_serve = false;

static _noreturn_ void die(const char *fmt, ...) _printf_(1, 2);
static _noreturn_ void die(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        fputs("quantd-registry-bench: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(EXIT_FAILURE);
}

static double timeval_s(struct timeval tv) {
        return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* utime + stime of pid in seconds, from /proc/PID/stat. */
static double proc_cpu_seconds(pid_t pid) {
        char path[64], buf[1024];
        unsigned long long ut = 0, st = 0;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return 0;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        /* Fields after the command name, which is in parentheses and may hold spaces. */
        const char *p = strrchr(buf, ')');
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
                return 0;
        return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static unsigned free_port(void) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);

        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            getsockname(fd, (struct sockaddr *)&a, &len) < 0)
                die("Failed to find a free loopback port: %m");
        close(fd);
        return ntohs(a.sin_port);
}

static size_t discard_cb(char *p, size_t s, size_t n, void *u) {
        return s * n;
}

static pid_t start_registry(const char *dir, const char *host) {
        _cleanup_free_ char *root = strdup_printf("%s/registry", dir);
        _cleanup_free_ char *log = strdup_printf("%s/registry.log", dir);
        _cleanup_free_ char *url = strdup_printf("http://%s/v2/", host);

        if (mkdir(root, 0755) < 0)
                die("Failed to create '%s': %m", root);
        pid_t pid = fork();
        if (pid < 0)
                die("fork: %m");
        if (pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                setenv("REGISTRY_HTTP_ADDR", host, 1);
                setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", root, 1);
                setenv("REGISTRY_HTTP_SECRET", "quantd-bench", 1);
                execlp("docker-registry", "docker-registry", "serve", arg_registry_config, (char *)NULL);
                fprintf(stderr, "docker-registry: %m\n");
                _exit(127);
        }
        for (int i = 0; i < 200; i++) {
                CURL *c = curl_easy_init();
                long status = 0;
                curl_easy_setopt(c, CURLOPT_URL, url);
                curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_cb);
                curl_easy_setopt(c, CURLOPT_TIMEOUT, 5L);
                if (curl_easy_perform(c) == CURLE_OK)
                        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
                curl_easy_cleanup(c);
                if (status != 0)
                        return pid;
                if (waitpid(pid, NULL, WNOHANG) == pid)
                        die("docker-registry exited; see %s", log);
                struct timespec ts = {0, 50 * 1000000L};
                nanosleep(&ts, NULL);
        }
        die("docker-registry did not answer on %s", url);
}

static void rm_rf(const char *path) {
        pid_t pid = fork();
        if (pid == 0) {
                execlp("rm", "rm", "-rf", "--", path, (char *)NULL);
                _exit(127);
        }
        if (pid > 0)
                waitpid(pid, NULL, 0);
}

/* A memfd of size pseudo-random bytes (xorshift64): incompressible, the same for every run. */
static int random_fd(uint64_t size) {
        int fd = memfd_create("blob", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
                die("Failed to make a %ju byte blob: %m", (uintmax_t)size);
        uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
                die("mmap: %m");
        uint64_t x = 0x9e3779b97f4a7c15ULL;
        for (uint64_t i = 0; i < size / 8; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = x;
        }
        munmap(p, size);
        return fd;
}

static void config_for(RegistryConfig *c, const char *host, const Contender *pull) {
        registry_config_init(c);
        c->insecure_hosts = calloc(2, sizeof(char *));
        if (!c->insecure_hosts || !(c->insecure_hosts[0] = strdup(host)))
                die("Out of memory.");
        if (pull && pull->parts > 0)
                c->parallel_parts = pull->parts;
        if (pull && pull->part_mb > 0)
                c->part_size = pull->part_mb << 20;
}

/* Creates the model from a random blob and pushes it; returns the blob's digest. */
static void push_blob(const char *dir, const char *host, const char *name, uint64_t size,
                      char ret_digest[REGISTRY_DIGEST_MAX]) {
        _cleanup_free_ char *root = strdup_printf("%s/src", dir);
        RegistryConfig config;
        RegistryStore *store = NULL;
        RegistryManifest *m = NULL;
        RegistryName n;
        QdError e = {};

        config_for(&config, host, NULL);
        if (registry_store_open(&store, root, &config, &e) < 0 ||
            registry_name_parse(name, &config, &n, &e) < 0)
                die("%s", e.msg);
        int fd = random_fd(size);
        RegistryCreateLayer layer = {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd};
        if (registry_store_create(store, &n, &layer, 1, NULL, NULL, NULL, NULL, &e) < 0)
                die("Failed to create the model: %s", e.msg);
        close(fd);
        if (registry_push(store, &n, NULL, NULL, NULL, NULL, &e) < 0)
                die("Failed to push: %s", e.msg);
        if (registry_store_show(store, &n, &m, NULL, &e) < 0)
                die("%s", e.msg);
        memcpy(ret_digest, registry_manifest_find_layer(m, REGISTRY_MEDIA_MODEL)->digest,
               REGISTRY_DIGEST_MAX);
        registry_manifest_free(m);
        registry_store_free(store);
        registry_config_done(&config);
        /* The source store is not needed any more: give its disk space and page cache back. */
        rm_rf(root);
}

/* The child of a pull run: one registry_pull() into an empty store. */
static _noreturn_ void pull_child(const Contender *c, const char *root, const char *host, const char *name) {
        RegistryConfig config;
        RegistryStore *store = NULL;
        RegistryName n;
        QdError e = {};

        config_for(&config, host, c);
        if (registry_store_open(&store, root, &config, &e) < 0 ||
            registry_name_parse(name, &config, &n, &e) < 0 ||
            registry_pull(store, &n, NULL, NULL, NULL, NULL, &e) < 0) {
                fprintf(stderr, "quantd-registry-bench: pull: %s\n", e.msg);
                _exit(EXIT_FAILURE);
        }
        registry_store_free(store);
        registry_config_done(&config);
        _exit(EXIT_SUCCESS);
}

static Sample run_one(const Contender *c, const char *dir, const char *host, const char *name,
                      const char *url, pid_t server, uint64_t size) {
        _cleanup_free_ char *out = strdup_printf("%s/out", dir);
        struct rusage ru;
        int status;
        Sample s;

        double server0 = proc_cpu_seconds(server);
        uint64_t t0 = now_ns();
        pid_t pid = fork();
        if (pid < 0)
                die("fork: %m");
        if (pid == 0) {
                if (c->kind == CONTENDER_PULL)
                        pull_child(c, out, host, name);
                execlp(arg_curl, arg_curl, "-sSf", "-o", out, url, (char *)NULL);
                fprintf(stderr, "%s: %m\n", arg_curl);
                _exit(127);
        }
        if (wait4(pid, &status, 0, &ru) != pid)
                die("wait4: %m");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                die("The %s run failed.", c->name);
        double sync_cpu = 0;
        if (c->kind == CONTENDER_CURL_SYNC) {
                struct rusage a, b;
                getrusage(RUSAGE_SELF, &a);
                int fd = open(out, O_RDONLY | O_CLOEXEC);
                if (fd < 0 || fsync(fd) < 0)
                        die("Failed to sync '%s': %m", out);
                close(fd);
                getrusage(RUSAGE_SELF, &b);
                sync_cpu = timeval_s(b.ru_utime) - timeval_s(a.ru_utime) + timeval_s(b.ru_stime) -
                           timeval_s(a.ru_stime);
        }
        s.seconds = (double)(now_ns() - t0) / 1e9;
        s.cpu = timeval_s(ru.ru_utime) + timeval_s(ru.ru_stime) + sync_cpu;
        s.server_cpu = proc_cpu_seconds(server) - server0;

        if (c->kind != CONTENDER_PULL) {
                struct stat st;
                if (stat(out, &st) < 0 || (uint64_t)st.st_size != size)
                        die("curl wrote %jd bytes, not %ju.", (intmax_t)st.st_size, (uintmax_t)size);
        }
        rm_rf(out);
        return s;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static double median(double *v, size_t n) {
        qsort(v, n, sizeof(double), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void help(void) {
        printf("Usage: quantd-registry-bench [OPTIONS]\n\n"
               "Pull throughput from a loopback docker-registry beside curl fetching the same blob.\n\n"
               "  -s, --size=MIB             blob size (2048)\n"
               "  -n, --reps=N               rounds of all contenders (5)\n"
               "  -p, --parts=N              ParallelParts of the pull (the default config's)\n"
               "  -P, --part-size=MIB        PartSize of the pull (the default config's)\n"
               "      --variant=NxMIB        one more pull contender with N parts of MIB (repeatable)\n"
               "  -d, --dir=DIR              scratch directory (default $TMPDIR or /var/tmp)\n"
               "  -c, --registry-config=FILE docker-registry config (tests/registry/config.yml)\n"
               "      --curl=PATH            the curl program (curl)\n"
               "      --pull-only            leave curl out (for profiling)\n"
               "      --serve                push, print the URL and keep the registry up until Ctrl+C\n"
               "  -v, --verbose              the pull's debug log (timings per blob) on stderr\n"
               "  -h, --help                 this text\n");
}

static void parse_argv(int argc, char **argv) {
        enum { ARG_CURL = 0x100, ARG_PULL_ONLY, ARG_VARIANT, ARG_SERVE };
        static const struct option options[] = {
                {"size", required_argument, NULL, 's'},
                {"reps", required_argument, NULL, 'n'},
                {"parts", required_argument, NULL, 'p'},
                {"part-size", required_argument, NULL, 'P'},
                {"variant", required_argument, NULL, ARG_VARIANT},
                {"dir", required_argument, NULL, 'd'},
                {"registry-config", required_argument, NULL, 'c'},
                {"curl", required_argument, NULL, ARG_CURL},
                {"pull-only", no_argument, NULL, ARG_PULL_ONLY},
                {"serve", no_argument, NULL, ARG_SERVE},
                {"verbose", no_argument, NULL, 'v'},
                {"help", no_argument, NULL, 'h'},
                {},
        };
        bool pull_only = false;
        uint64_t v;
        int c;

        while ((c = getopt_long(argc, argv, "s:n:p:P:d:c:vh", options, NULL)) >= 0)
                switch (c) {
                case 's':
                        if (safe_atou64(optarg, &arg_size_mb) < 0 || arg_size_mb == 0)
                                die("--size wants a number of MiB, not '%s'.", optarg);
                        break;
                case 'n':
                        if (safe_atou64(optarg, &v) < 0 || v == 0 || v > REPS_MAX)
                                die("--reps wants a number from 1 to %d, not '%s'.", REPS_MAX, optarg);
                        arg_reps = (unsigned)v;
                        break;
                case 'p':
                        if (safe_atou64(optarg, &v) < 0 || v == 0 || v > 64)
                                die("--parts wants a number from 1 to 64, not '%s'.", optarg);
                        arg_contenders[0].parts = (unsigned)v;
                        break;
                case 'P':
                        if (safe_atou64(optarg, &v) < 0 || v == 0 || v > 1024 * 1024)
                                die("--part-size wants a number of MiB, not '%s'.", optarg);
                        arg_contenders[0].part_mb = v;
                        break;
                case ARG_VARIANT: {
                        unsigned parts;
                        unsigned long long mib;
                        int end = 0;
                        if (sscanf(optarg, "%ux%llu%n", &parts, &mib, &end) != 2 || optarg[end] != 0 ||
                            parts == 0 || parts > 64 || mib == 0 || mib > 1024 * 1024)
                                die("--variant wants PARTSxMIB such as 4x16, not '%s'.", optarg);
                        if (arg_n_contenders >= CONTENDERS_MAX)
                                die("At most %d contenders.", CONTENDERS_MAX);
                        Contender *k = &arg_contenders[arg_n_contenders++];
                        *k = (Contender){.kind = CONTENDER_PULL, .parts = parts, .part_mb = mib};
                        snprintf(k->name, sizeof(k->name), "pull %ux%llu", parts, mib);
                        break;
                }
                case 'd':
                        arg_dir = optarg;
                        break;
                case 'c':
                        arg_registry_config = optarg;
                        break;
                case ARG_CURL:
                        arg_curl = optarg;
                        break;
                case ARG_PULL_ONLY:
                        pull_only = true;
                        break;
                case ARG_SERVE:
                        arg_serve = true;
                        break;
                case 'v':
                        log_set_max_level(LOG_LEVEL_DEBUG);
                        break;
                case 'h':
                        help();
                        exit(EXIT_SUCCESS);
                default:
                        exit(EXIT_FAILURE);
                }
        if (optind < argc)
                die("Unexpected argument '%s'; see --help.", argv[optind]);
        if (pull_only) {
                /* Keep the pulls only, in their order. */
                size_t n = 0;
                for (size_t i = 0; i < arg_n_contenders; i++)
                        if (arg_contenders[i].kind == CONTENDER_PULL)
                                arg_contenders[n++] = arg_contenders[i];
                arg_n_contenders = n;
        }
        if (!arg_registry_config)
                arg_registry_config = getenv("QUANTD_BENCH_REGISTRY_CONFIG");
        if (!arg_registry_config)
                arg_registry_config = QUANTD_SOURCE_ROOT "/tests/registry/config.yml";
        if (!arg_dir)
                arg_dir = getenv("TMPDIR");
        if (!arg_dir)
                arg_dir = "/var/tmp";
}

static double mb_per_s(uint64_t size, double seconds) {
        return (double)size / 1e6 / seconds;
}

int main(int argc, char **argv) {
        static double secs[CONTENDERS_MAX][REPS_MAX], cpu[CONTENDERS_MAX][REPS_MAX],
                server[CONTENDERS_MAX][REPS_MAX], ratio_curl[CONTENDERS_MAX][REPS_MAX],
                ratio_sync[CONTENDERS_MAX][REPS_MAX];
        char digest[REGISTRY_DIGEST_MAX];
        char host[32];

        parse_argv(argc, argv);
        uint64_t size = arg_size_mb << 20;
        double gb = (double)size / 1e9;
        size_t n = arg_n_contenders;
        ssize_t i_curl = -1, i_sync = -1;
        for (size_t k = 0; k < n; k++) {
                if (arg_contenders[k].kind == CONTENDER_CURL)
                        i_curl = (ssize_t)k;
                if (arg_contenders[k].kind == CONTENDER_CURL_SYNC)
                        i_sync = (ssize_t)k;
        }

        _cleanup_free_ char *dir = strdup_printf("%s/quantd-registry-bench-XXXXXX", arg_dir);
        if (!mkdtemp(dir))
                die("Failed to create a directory under %s: %m", arg_dir);
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                die("curl_global_init failed.");
        snprintf(host, sizeof(host), "127.0.0.1:%u", free_port());
        pid_t server_pid = start_registry(dir, host);
        _cleanup_free_ char *name = strdup_printf("%s/bench/blob:v1", host);

        push_blob(dir, host, name, size, digest);
        _cleanup_free_ char *url = strdup_printf("http://%s/v2/bench/blob/blobs/%s", host, digest);
        printf("# blob: %ju MiB, %s\n# url: %s\n# %u rounds; MB/s are 10^6 bytes per second; CPU s/GB per "
               "10^9 bytes\n",
               (uintmax_t)arg_size_mb, digest, url, arg_reps);
        if (arg_serve) {
                /* For profiling by hand: the registry stays up until SIGINT or SIGTERM. */
                sigset_t mask;
                int sig;
                sigemptyset(&mask);
                sigaddset(&mask, SIGINT);
                sigaddset(&mask, SIGTERM);
                sigprocmask(SIG_BLOCK, &mask, NULL);
                printf("# serving %s until Ctrl+C\n", name);
                fflush(stdout);
                sigwait(&mask, &sig);
                arg_reps = 0;
        }
        printf("%-5s %-12s %9s %8s %9s %16s\n", "round", "contender", "seconds", "MB/s", "CPU s/GB",
               "server CPU s/GB");
        fflush(stdout);

        for (unsigned r = 0; r < arg_reps; r++) {
                for (size_t j = 0; j < n; j++) {
                        size_t k = (r + j) % n;
                        Sample s = run_one(&arg_contenders[k], dir, host, name, url, server_pid, size);
                        secs[k][r] = s.seconds;
                        cpu[k][r] = s.cpu / gb;
                        server[k][r] = s.server_cpu / gb;
                        printf("%-5u %-12s %9.3f %8.1f %9.2f %16.2f\n", r + 1, arg_contenders[k].name,
                               s.seconds, mb_per_s(size, s.seconds), s.cpu / gb, s.server_cpu / gb);
                        fflush(stdout);
                }
                for (size_t k = 0; k < n; k++) {
                        if (i_curl >= 0)
                                ratio_curl[k][r] = secs[i_curl][r] / secs[k][r];
                        if (i_sync >= 0)
                                ratio_sync[k][r] = secs[i_sync][r] / secs[k][r];
                }
        }

        if (arg_reps == 0)
                goto finish;
        /* median() sorts: the per-round ratios were taken above, before any sorting. */
        double med_secs[CONTENDERS_MAX];
        printf("# medians over %u rounds:\n", arg_reps);
        for (size_t k = 0; k < n; k++) {
                med_secs[k] = median(secs[k], arg_reps);
                printf("# %-12s %8.1f MB/s %6.2f CPU s/GB  (server %.2f CPU s/GB)\n", arg_contenders[k].name,
                       mb_per_s(size, med_secs[k]), median(cpu[k], arg_reps), median(server[k], arg_reps));
        }
        for (size_t k = 0; k < n; k++) {
                if (arg_contenders[k].kind != CONTENDER_PULL)
                        continue;
                if (i_curl >= 0)
                        printf("# %s / curl:      %.2fx (medians), %.2fx (median of per-round ratios)\n",
                               arg_contenders[k].name, med_secs[i_curl] / med_secs[k],
                               median(ratio_curl[k], arg_reps));
                if (i_sync >= 0)
                        printf("# %s / curl+sync: %.2fx (medians), %.2fx (median of per-round ratios)\n",
                               arg_contenders[k].name, med_secs[i_sync] / med_secs[k],
                               median(ratio_sync[k], arg_reps));
        }

finish:
        kill(server_pid, SIGTERM);
        waitpid(server_pid, NULL, 0);
        rm_rf(dir);
        curl_global_cleanup();
        return EXIT_SUCCESS;
}
