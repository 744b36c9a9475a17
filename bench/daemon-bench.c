/* SPDX-License-Identifier: MIT */
/*
 * quantd-daemon-bench: what the daemon costs on top of the engine. Starts a quantd on a temporary socket,
 * stores the model given with -m, and measures: round trips (p50/p99, requests/s) of Hello and List; time to
 * first token for a cold and a hot model; per-token streaming overhead against generating in-process with
 * the engine; aggregate tokens/s with 1, 4 and 16 concurrent clients (continuous batching should raise it).
 * Prints Markdown tables for docs/performance.md.
 */

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <msgpack.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include "common.h"
#include "engine.h"

/* Every model tokenizes this to a few tokens, with or without a start token. */
#define BENCH_PROMPT "Once upon a time"

static const char *arg_model = NULL;
static const char *arg_quantd = NULL;
static unsigned arg_threads = 2;
static unsigned arg_tokens = 128;
static unsigned arg_requests = 2000;

static char tmpdir[] = "/tmp/quantd-bench-XXXXXX";
static char *socket_path;
static pid_t daemon_pid;

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static int start_daemon(void) {
        _cleanup_free_ char *conf = strdup_printf("%s/quantd.conf", tmpdir);
        _cleanup_free_ char *a_socket = NULL, *a_models = NULL, *a_config = NULL, *log = NULL;
        FILE *f = fopen(conf, "we");

        if (!f)
                return -errno;
        fprintf(f, "[Scheduler]\nNumParallel=16\nThreads=%u\nContextLength=%u\n", arg_threads,
                arg_tokens + 64);
        fclose(f);
        socket_path = strdup_printf("%s/quantd.sock", tmpdir);
        a_socket = strdup_printf("--socket=%s", socket_path);
        a_models = strdup_printf("--models=%s/models", tmpdir);
        a_config = strdup_printf("--config=%s", conf);
        log = strdup_printf("%s/log", tmpdir);
        daemon_pid = fork();
        if (daemon_pid < 0)
                return -errno;
        if (daemon_pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (fd >= 0) {
                        dup2(fd, STDOUT_FILENO);
                        dup2(fd, STDERR_FILENO);
                }
                execl(arg_quantd, arg_quantd, a_socket, a_models, a_config, (char *)NULL);
                _exit(127);
        }
        for (int i = 0; i < 500; i++) {
                ProtoClient *c = NULL;
                if (proto_client_connect(socket_path, &c) >= 0) {
                        proto_client_free(c);
                        return 0;
                }
                usleep(10000);
        }
        return -ETIMEDOUT;
}

static void stop_daemon(void) {
        if (daemon_pid > 0) {
                kill(daemon_pid, SIGTERM);
                waitpid(daemon_pid, NULL, 0);
                daemon_pid = 0;
        }
        _cleanup_free_ char *cmd = strdup_printf("rm -rf '%s'", tmpdir);
        if (cmd)
                (void)!system(cmd);
}

static void pack_generate(msgpack_sbuffer *sb, unsigned n, bool stream) {
        msgpack_packer pk;
        proto_packer_init(&pk, sb);
        msgpack_pack_map(&pk, 4);
        proto_pack_kv_str(&pk, "model", "bench");
        proto_pack_kv_str(&pk, "prompt", BENCH_PROMPT);
        proto_pack_kv_bool(&pk, "stream", stream);
        proto_pack_key(&pk, "options");
        msgpack_pack_map(&pk, 3);
        proto_pack_kv_i64(&pk, "num_predict", n);
        proto_pack_kv_double(&pk, "temperature", 0);
        proto_pack_kv_double(&pk, "repeat_penalty", 1.0);
}

static void round_trips(ProtoClient *c, const char *method) {
        uint64_t *t = calloc(arg_requests, sizeof(uint64_t));
        QdError e = {};

        uint64_t start = now_ns();
        for (unsigned i = 0; i < arg_requests; i++) {
                uint64_t t0 = now_ns();
                if (proto_client_call(c, method, NULL, 0, NULL, 0, NULL, NULL, NULL, &e) < 0) {
                        fprintf(stderr, "%s failed: %s\n", method, e.msg);
                        exit(1);
                }
                t[i] = now_ns() - t0;
        }
        uint64_t wall = now_ns() - start;
        qsort(t, arg_requests, sizeof(uint64_t), cmp_u64);
        printf("| %-7s | %8.1f | %8.1f | %9.0f |\n", method, t[arg_requests / 2] / 1e3,
               t[arg_requests * 99 / 100] / 1e3, arg_requests / (wall / 1e9));
        free(t);
}

typedef struct Timing {
        uint64_t start, first, tokens;
} Timing;

static int on_token(const ProtoMessage *ev, void *userdata) {
        Timing *t = userdata;
        if (t->tokens++ == 0)
                t->first = now_ns();
        return 0;
}

/* One streamed generation; returns wall ns, *ret_first the time to the first token. */
static uint64_t generate_once(ProtoClient *c, unsigned n, uint64_t *ret_first, uint64_t *ret_tokens) {
        msgpack_sbuffer sb;
        QdError e = {};
        Timing t = {.start = now_ns()};

        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, n, true);
        if (proto_client_call(c, "Generate", sb.data, sb.size, NULL, 0, on_token, &t, NULL, &e) < 0) {
                fprintf(stderr, "Generate failed: %s\n", e.msg);
                exit(1);
        }
        msgpack_sbuffer_destroy(&sb);
        uint64_t end = now_ns();
        if (ret_first)
                *ret_first = t.first - t.start;
        if (ret_tokens)
                *ret_tokens = t.tokens;
        return end - t.start;
}

/*
 * The same greedy generation in this process: the engine alone, with the model loaded once (as the daemon
 * keeps it hot). Returns ns for n tokens after the first.
 */
static EngineModel *local_model;
static EngineVocab *local_vocab;

static uint64_t in_process(unsigned n) {
        EngineModelParams p = engine_model_params_default();
        _cleanup_(engine_seq_freep) EngineSeq *s = NULL;
        _cleanup_(engine_sampler_freep) EngineSampler *sp = NULL;
        QdError e = {};

        p.n_threads = arg_threads;
        if (!local_model && (engine_model_load(arg_model, &p, &local_model, &e) < 0 ||
                             engine_vocab_new(engine_model_gguf(local_model), &local_vocab, &e) < 0)) {
                fprintf(stderr, "Failed to load %s: %s\n", arg_model, e.msg);
                exit(1);
        }
        EngineModel *m = local_model;
        EngineVocab *v = local_vocab;
        EngineSamplerParams sp_p = engine_sampler_params_default();
        sp_p.temperature = 0;
        sp_p.repeat_penalty = 1;
        uint32_t n_vocab = engine_model_info(m)->n_vocab;
        float *logits = malloc(sizeof(float) * n_vocab);
        if (!logits || engine_seq_new(m, n + 64, &s) < 0 || engine_sampler_new(&sp_p, n_vocab, &sp) < 0)
                exit(1);
        _cleanup_free_ int32_t *prompt = NULL;
        size_t n_prompt = 0;
        if (engine_tokenize(v, BENCH_PROMPT, strlen(BENCH_PROMPT), true, true, &prompt, &n_prompt) < 0 ||
            n_prompt == 0)
                exit(1);
        int32_t tok = 0;
        uint64_t t0 = 0;
        Buf text = {};
        for (unsigned i = 0; i <= n; i++) {
                /* The prompt in one step, then one token per step, as the daemon runs it. */
                const int32_t *tp = i == 0 ? prompt : &tok;
                uint32_t one = i == 0 ? (uint32_t)n_prompt : 1;
                EngineSeq *seqs[1] = {s};
                float *lp[1] = {logits};
                if (engine_decode(m, seqs, &tp, &one, 1, lp, NULL, &e) < 0)
                        exit(1);
                tok = engine_sampler_sample(sp, logits);
                (void)engine_token_piece(v, tok, false, &text);
                if (i == 0)
                        t0 = now_ns();
        }
        uint64_t dt = now_ns() - t0;
        buf_free(&text);
        free(logits);
        return dt;
}

static void concurrent(unsigned clients, unsigned n) {
        ProtoClient *cs[16];
        bool done[16] = {};
        uint64_t tokens = 0;
        msgpack_sbuffer sb;
        QdError e = {};

        msgpack_sbuffer_init(&sb);
        pack_generate(&sb, n, true);
        uint64_t t0 = now_ns();
        for (unsigned i = 0; i < clients; i++)
                if (proto_client_connect(socket_path, &cs[i]) < 0 ||
                    proto_client_send(cs[i], "Generate", sb.data, sb.size, NULL, 0, NULL) < 0)
                        exit(1);
        msgpack_sbuffer_destroy(&sb);
        for (unsigned left = clients; left > 0;) {
                /* Sleep until a stream has data: a spinning client would steal the daemon's CPU. */
                struct pollfd pfd[16];
                for (unsigned i = 0; i < clients; i++)
                        pfd[i] = (struct pollfd){.fd = done[i] ? -1 : proto_client_fd(cs[i]),
                                                 .events = POLLIN};
                (void)poll(pfd, clients, 1000);
                for (unsigned i = 0; i < clients; i++) {
                        ProtoMessage m;
                        if (done[i])
                                continue;
                        /* Everything that has arrived, buffered or not. */
                        int k;
                        while ((k = proto_client_read(cs[i], 0, &m, &e)) == 1 &&
                               m.type == PROTO_NOTIFICATION)
                                ;
                        if (k == -ETIMEDOUT)
                                continue;
                        if (k < 0)
                                exit(1);
                        if (m.error) {
                                fprintf(stderr, "Generate failed: %s\n", m.error_message);
                                exit(1);
                        }
                        tokens += proto_map_get(m.result, "eval_count")->via.u64;
                        done[i] = true;
                        left--;
                }
        }
        uint64_t wall = now_ns() - t0;
        for (unsigned i = 0; i < clients; i++)
                proto_client_free(cs[i]);
        printf("| %7u | %8" PRIu64 " | %8.0f |\n", clients, tokens, tokens / (wall / 1e9));
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                {"model", required_argument, NULL, 'm'},
                {"quantd", required_argument, NULL, 'q'},
                {"threads", required_argument, NULL, 't'},
                {"tokens", required_argument, NULL, 'n'},
                {"requests", required_argument, NULL, 'r'},
                {"help", no_argument, NULL, 'h'},
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "m:q:t:n:r:h", options, NULL)) >= 0)
                switch (c) {
                case 'm':
                        arg_model = optarg;
                        break;
                case 'q':
                        arg_quantd = optarg;
                        break;
                case 't':
                        arg_threads = (unsigned)atoi(optarg);
                        break;
                case 'n':
                        arg_tokens = (unsigned)atoi(optarg);
                        break;
                case 'r':
                        arg_requests = (unsigned)atoi(optarg);
                        break;
                case 'h':
                        printf("Usage: quantd-daemon-bench -m MODEL.gguf -q PATH/TO/quantd [-t THREADS] [-n "
                               "TOKENS] "
                               "[-r REQUESTS]\n");
                        return 0;
                default:
                        return 2;
                }
        if (!arg_model || !arg_quantd || arg_tokens == 0 || arg_requests == 0) {
                fprintf(stderr, "Need -m MODEL.gguf and -q PATH/TO/quantd (see --help).\n");
                return 2;
        }
        signal(SIGPIPE, SIG_IGN);
        /* Every exit, the error paths' exit(1) included, stops the daemon and removes its directory. */
        atexit(stop_daemon);
        if (!mkdtemp(tmpdir) || start_daemon() < 0) {
                fprintf(stderr, "Failed to start %s.\n", arg_quantd);
                stop_daemon();
                return 1;
        }

        ProtoClient *cl = NULL;
        QdError e = {};
        int fd = open(arg_model, O_RDONLY | O_CLOEXEC);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        proto_packer_init(&pk, &sb);
        msgpack_pack_map(&pk, 2);
        proto_pack_kv_str(&pk, "model", "bench");
        proto_pack_kv_u64(&pk, "gguf", 0);
        if (fd < 0 || proto_client_connect(socket_path, &cl) < 0 ||
            proto_client_call(cl, "Create", sb.data, sb.size, &fd, 1, NULL, NULL, NULL, &e) < 0) {
                fprintf(stderr, "Failed to create the model: %s\n", e.msg);
                stop_daemon();
                return 1;
        }
        msgpack_sbuffer_destroy(&sb);
        safe_close(fd);

        printf("## Round trips (%u requests, one client)\n\n", arg_requests);
        printf("| method  | p50 (µs) | p99 (µs) | requests/s "
               "|\n|---------|----------|----------|-----------|\n");
        round_trips(cl, "Hello");
        round_trips(cl, "List");

        uint64_t cold_first, hot_first;
        (void)generate_once(cl, 1, &cold_first, NULL);
        (void)generate_once(cl, 1, &hot_first, NULL);
        printf("\n## Time to first token\n\n| model | ms |\n|-------|----|\n| cold (load + prompt) | %.2f "
               "|\n"
               "| hot | %.2f |\n",
               cold_first / 1e6, hot_first / 1e6);

        /* Streaming overhead: tokens after the first, over the socket against in-process, best of 3 each. */
        uint64_t best_sock = UINT64_MAX, best_local = UINT64_MAX;
        for (int i = 0; i < 3; i++) {
                uint64_t first, tokens;
                uint64_t wall = generate_once(cl, arg_tokens + 1, &first, &tokens);
                best_sock = MIN(best_sock, wall - first);
                best_local = MIN(best_local, in_process(arg_tokens));
        }
        printf("\n## Streaming %u tokens (after the first), best of 3\n\n| path | ms | tokens/s |\n"
               "|------|----|----------|\n| in-process engine | %.2f | %.0f |\n| over the socket | %.2f | "
               "%.0f |\n"
               "\nOverhead: %+.1f %%\n",
               arg_tokens, best_local / 1e6, arg_tokens / (best_local / 1e9), best_sock / 1e6,
               arg_tokens / (best_sock / 1e9), 100.0 * ((double)best_sock / best_local - 1));

        printf("\n## Aggregate throughput, %u tokens per client\n\n| clients | tokens | tokens/s |\n"
               "|---------|----------|----------|\n",
               arg_tokens);
        concurrent(1, arg_tokens);
        concurrent(4, arg_tokens);
        concurrent(16, arg_tokens);

        proto_client_free(cl);
        stop_daemon();
        engine_vocab_free(local_vocab);
        engine_model_unref(local_model);
        return 0;
}
