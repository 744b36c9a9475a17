/* SPDX-License-Identifier: MIT */
/*
 * Sampling: turning a step's logits into the next token.
 *
 * DESIGN
 * The order is llama.cpp's, which Ollama's options were made for: penalties first (they change logits, so
 * they matter even to greedy decoding), then the filters on the candidates — top_k, typical_p, top_p, min_p
 * — then the temperature and one draw. Candidates are kept sorted by logit, highest first, ties by lower id,
 * which makes every step a pure function of the logits, the history and the PRNG state.
 *
 * top_k (Ollama's default 40) and greedy decoding never copy the vocabulary: one pass over the logits keeps
 * the best k + m in a heap, m being the distinct tokens the penalties touch, most logits failing a single
 * comparison with the heap's worst (blocks of 16 at a time); the penalised tokens then join with their new
 * logits and the best k of those are the candidates. That set is exactly the top k after the penalties: a
 * token untouched by them that belongs there has at most m touched tokens above it before they apply. With
 * top_k off, or k + m near the vocabulary, the penalties go into a copy of every logit and the live ones are
 * sorted (a radix sort in the same order; where min_p is the only filter, just those it keeps).
 *
 * The PRNG is our own (xoshiro256**, seeded through splitmix64) so that a seed draws the same tokens on
 * every machine and libc. Greedy sampling never touches it.
 */

#include <math.h>
#include <string.h>
#include <sys/random.h>

#include "engine.h"

typedef struct Cand {
        int32_t id;
        float logit;
        float p;   /* probability, where a step has computed it */
        float key; /* typical_p's sort key */
} Cand;

struct EngineSampler {
        EngineSamplerParams params;
        uint64_t seed; /* the seed in use, drawn at creation when params.seed asked for a random one */
        uint64_t rng[4];
        uint32_t n_vocab;
        Cand *cand;       /* (n_vocab) this step's candidates */
        uint64_t *keys;   /* (2 n_vocab + 2^SORT_BITS) sort_cands()'s keys, their second buffer and its
                           * counts, made on first use */
        uint32_t *counts; /* (n_vocab) occurrences in the penalty window, zero between steps */
        int32_t *history; /* (n_history) accepted tokens */
        size_t n_history, cap_history;
};

EngineSamplerParams engine_sampler_params_default(void) {
        return (EngineSamplerParams){
                .temperature = 0.8f,
                .top_k = 40,
                .top_p = 0.9f,
                .min_p = 0.0f,
                .typical_p = 1.0f,
                .repeat_penalty = 1.1f,
                .repeat_last_n = 64,
                .presence_penalty = 0.0f,
                .frequency_penalty = 0.0f,
                .seed = ENGINE_SAMPLER_SEED_RANDOM,
        };
}

int engine_sampler_params_check(const EngineSamplerParams *p, QdError *err) {
        const struct {
                const char *name;
                float v, lo, hi;
        } ranges[] = {
                {"temperature", p->temperature, 0, INFINITY},
                {"top_p", p->top_p, 0, INFINITY},
                {"min_p", p->min_p, 0, 1},
                {"typical_p", p->typical_p, 0, 1},
                {"repeat_penalty", p->repeat_penalty, 0, INFINITY},
                {"presence_penalty", p->presence_penalty, -INFINITY, INFINITY},
                {"frequency_penalty", p->frequency_penalty, -INFINITY, INFINITY},
        };

        for (size_t i = 0; i < ELEMENTSOF(ranges); i++)
                if (!isfinite(ranges[i].v) || ranges[i].v < ranges[i].lo || ranges[i].v > ranges[i].hi)
                        return qd_error_set(err, EINVAL, "The sampling option %s cannot be %g.",
                                            ranges[i].name, (double)ranges[i].v);
        if (p->repeat_penalty == 0)
                return qd_error_set(err, EINVAL,
                                    "The sampling option repeat_penalty cannot be 0 (1 turns it off).");
        if (p->repeat_last_n < -1)
                return qd_error_set(
                        err, EINVAL,
                        "The sampling option repeat_last_n cannot be %d (-1 means the whole context).",
                        p->repeat_last_n);
        return 0;
}

/* ---- PRNG ---- */

static uint64_t splitmix64(uint64_t *x) {
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
        return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4]) {
        uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) {
        return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

static void rng_seed(EngineSampler *s) {
        uint64_t x = s->seed;
        for (int i = 0; i < 4; i++)
                s->rng[i] = splitmix64(&x);
}

/* ---- lifecycle ---- */

int engine_sampler_new(const EngineSamplerParams *p, uint32_t n_vocab, EngineSampler **ret) {
        _cleanup_(engine_sampler_freep) EngineSampler *s = NULL;

        if (n_vocab == 0 || n_vocab > INT32_MAX || engine_sampler_params_check(p, NULL) < 0)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->params = *p;
        s->n_vocab = n_vocab;
        s->cand = calloc(n_vocab, sizeof(Cand));
        s->counts = calloc(n_vocab, sizeof(uint32_t));
        if (!s->cand || !s->counts)
                return -ENOMEM;
        s->seed = p->seed;
        if (s->seed == ENGINE_SAMPLER_SEED_RANDOM) {
                if (getrandom(&s->seed, sizeof(s->seed), 0) != sizeof(s->seed))
                        s->seed = now_ns() ^ ((uint64_t)getpid() << 32);
                if (s->seed == ENGINE_SAMPLER_SEED_RANDOM)
                        s->seed--;
        }
        rng_seed(s);
        *ret = TAKE_PTR(s);
        return 0;
}

EngineSampler *engine_sampler_free(EngineSampler *s) {
        if (!s)
                return NULL;
        free(s->history);
        free(s->counts);
        free(s->cand);
        free(s->keys);
        free(s);
        return NULL;
}

void engine_sampler_reset(EngineSampler *s) {
        s->n_history = 0;
        rng_seed(s);
}

void engine_sampler_accept(EngineSampler *s, int32_t token) {
        if (token < 0 || (uint32_t)token >= s->n_vocab)
                return;
        if (s->n_history == s->cap_history) {
                /* Only the window is ever read, so a bounded window keeps memory bounded too. */
                size_t keep = s->params.repeat_last_n >= 0 ? (size_t)s->params.repeat_last_n : SIZE_MAX;
                if (keep != SIZE_MAX && s->n_history > keep && s->n_history >= 1024) {
                        memmove(s->history, s->history + s->n_history - keep, keep * sizeof(int32_t));
                        s->n_history = keep;
                } else {
                        size_t cap = s->cap_history ? s->cap_history * 2 : 256;
                        int32_t *h = realloc(s->history, cap * sizeof(int32_t));
                        if (!h)
                                return; /* the penalties then see a shorter history; nothing else breaks */
                        s->history = h;
                        s->cap_history = cap;
                }
        }
        s->history[s->n_history++] = token;
}

/* ---- the steps ---- */

static int cand_cmp(const void *a, const void *b) {
        const Cand *x = a, *y = b;
        if (x->logit != y->logit)
                return x->logit > y->logit ? -1 : 1;
        return x->id < y->id ? -1 : x->id > y->id;
}

/*
 * Sorts cand[0..n) (logits above -infinity) as qsort() with cand_cmp() would, by an LSD radix sort of 64-bit
 * keys: the logit's bits turned to order as an unsigned integer and inverted (descending), above the id
 * (ascending). 13 bits a pass, four passes for ids of up to 20 bits; -0 counts as +0, as == has it. Sorting
 * a 128,256-token vocabulary took 17 ms a token with qsort() (top_k off).
 */
#define SORT_BITS 13
static void sort_cands(EngineSampler *s, Cand *cand, size_t n) {
        unsigned id_bits = 0;

        while (id_bits < 32 && (1ull << id_bits) < s->n_vocab)
                id_bits++;
        if (n < 1024 || 32 + id_bits > 4 * SORT_BITS) {
                qsort(cand, n, sizeof(Cand), cand_cmp);
                return;
        }
        if (!s->keys && !(s->keys = malloc((2 * (size_t)s->n_vocab + (1u << SORT_BITS)) * sizeof(uint64_t)))) {
                qsort(cand, n, sizeof(Cand), cand_cmp);
                return;
        }
        uint64_t *k = s->keys, *tmp = s->keys + s->n_vocab, *count = s->keys + 2 * (size_t)s->n_vocab;
        for (size_t i = 0; i < n; i++) {
                uint32_t u;
                float l = cand[i].logit == 0 ? 0.0f : cand[i].logit;
                memcpy(&u, &l, sizeof(u));
                u = u & 0x80000000u ? ~u : u | 0x80000000u; /* ascending as the floats */
                k[i] = (uint64_t)~u << id_bits | (uint32_t)cand[i].id;
        }
        for (unsigned shift = 0; shift < 32 + id_bits; shift += SORT_BITS) {
                const uint64_t mask = (1u << SORT_BITS) - 1;
                memset(count, 0, (1u << SORT_BITS) * sizeof(*count));
                for (size_t i = 0; i < n; i++)
                        count[k[i] >> shift & mask]++;
                if (count[k[0] >> shift & mask] == n)
                        continue; /* one digit for all: nothing to move */
                for (uint64_t d = 0, sum = 0; d <= mask; d++) {
                        uint64_t c = count[d];
                        count[d] = sum;
                        sum += c;
                }
                for (size_t i = 0; i < n; i++)
                        tmp[count[k[i] >> shift & mask]++] = k[i];
                uint64_t *t = k;
                k = tmp, tmp = t;
        }
        for (size_t i = 0; i < n; i++) {
                uint32_t u = ~(uint32_t)(k[i] >> id_bits);
                u = u & 0x80000000u ? u & 0x7fffffffu : ~u;
                memcpy(&cand[i].logit, &u, sizeof(u));
                cand[i].id = (int32_t)(k[i] & ((1ull << id_bits) - 1));
        }
}

/* Where the penalties' window starts in the history: n_history when there is nothing to penalise. */
static size_t penalty_from(const EngineSampler *s) {
        const EngineSamplerParams *p = &s->params;
        size_t n = s->n_history;

        if (p->repeat_last_n == 0 || n == 0 ||
            (p->repeat_penalty == 1 && p->presence_penalty == 0 && p->frequency_penalty == 0))
                return n;
        return p->repeat_last_n < 0 || (size_t)p->repeat_last_n >= n ? 0 : n - (size_t)p->repeat_last_n;
}

/* A logit after the penalties of a token that occurs c times in the window. */
static float penalised(const EngineSamplerParams *p, float l, uint32_t c) {
        l = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
        return l - ((float)c * p->frequency_penalty + p->presence_penalty);
}

/* The penalties applied to cand[] indexed by id (the full path). */
static void penalize(EngineSampler *s) {
        size_t n = s->n_history, from = penalty_from(s);

        for (size_t i = from; i < n; i++)
                s->counts[s->history[i]]++;
        for (size_t i = from; i < n; i++) {
                int32_t t = s->history[i];
                if (s->counts[t] == 0)
                        continue; /* already done */
                s->cand[t].logit = penalised(&s->params, s->cand[t].logit, s->counts[t]);
                s->counts[t] = 0;
        }
}

/* GCC's generic vectors: SSE or NEON where there is one, plain code elsewhere. */
typedef float V4 __attribute__((vector_size(16)));
typedef int32_t V4i __attribute__((vector_size(16)));

/* Adds c to the heap h[0..*n) of at most k candidates whose root is the worst of them. */
static void heap_offer(Cand *h, size_t *n, size_t k, Cand c) {
        size_t j;

        if (*n < k) {
                j = (*n)++;
                while (j > 0 && cand_cmp(&c, &h[(j - 1) / 2]) > 0) {
                        h[j] = h[(j - 1) / 2];
                        j = (j - 1) / 2;
                }
        } else {
                if (cand_cmp(&c, &h[0]) >= 0)
                        return;
                j = 0;
                for (;;) {
                        size_t w = 2 * j + 1;
                        if (w >= k)
                                break;
                        if (w + 1 < k && cand_cmp(&h[w + 1], &h[w]) > 0)
                                w++;
                        if (cand_cmp(&h[w], &c) <= 0)
                                break;
                        h[j] = h[w];
                        j = w;
                }
        }
        h[j] = c;
}

/* The best k of logits[0..n) above -infinity (not NaN) into h, in heap order; returns how many there are. */
static size_t scan_top(const float *logits, uint32_t n, size_t k, Cand *h) {
        size_t m = 0;
        uint32_t i = 0;

        /* Until the heap is full every live logit goes in. */
        for (; i < n && m < k; i++)
                if (logits[i] > -INFINITY)
                        heap_offer(h, &m, k, (Cand){.id = (int32_t)i, .logit = logits[i]});
        /* Then only those above its worst: equal ones come later, so have higher ids, so lose. Blocks of 16
         * none of which is above it (four vector compares; NaN compares false) are passed over whole: 4x
         * faster than a scalar maximum of each block. */
        float worst = m == k ? h[0].logit : INFINITY;
        for (; i + 16 <= n; i += 16) {
                const V4 wv = {worst, worst, worst, worst};
                V4 q[4];
                uint64_t any[2];
                memcpy(q, logits + i, sizeof(q));
                const V4i hit = (q[0] > wv) | (q[1] > wv) | (q[2] > wv) | (q[3] > wv);
                memcpy(any, &hit, sizeof(any));
                if (!(any[0] | any[1]))
                        continue;
                for (int e = 0; e < 16; e++)
                        if (logits[i + e] > worst) {
                                heap_offer(h, &m, k, (Cand){.id = (int32_t)(i + e), .logit = logits[i + e]});
                                worst = h[0].logit;
                        }
        }
        for (; i < n; i++)
                if (logits[i] > worst) {
                        heap_offer(h, &m, k, (Cand){.id = (int32_t)i, .logit = logits[i]});
                        worst = h[0].logit;
                }
        return m;
}

/*
 * The best k candidates after the penalties into cand[0..), sorted, without copying the vocabulary
 * (DESIGN); returns how many (0: no logit above -infinity), or SIZE_MAX when that would not pay (k + m
 * near the vocabulary) and the caller should take the full path.
 */
static size_t top_after_penalties(EngineSampler *s, const float *logits, size_t k) {
        size_t n = s->n_history, from = penalty_from(s), m = 0;

        for (size_t i = from; i < n; i++)
                if (s->counts[s->history[i]]++ == 0)
                        m++;
        if (k + 2 * m > s->n_vocab / 2) {
                for (size_t i = from; i < n; i++)
                        s->counts[s->history[i]] = 0;
                return SIZE_MAX;
        }
        /* cand[0..k + m): the heap over the raw logits; cand[k + m..): the penalised tokens, each once (its
         * count marked done with the top bit; counts stay non-zero, marking the touched tokens, until the
         * end). */
        Cand *pc = s->cand + k + m;
        size_t np = 0;
        for (size_t i = from; i < n; i++) {
                int32_t t = s->history[i];
                uint32_t c = s->counts[t];
                if (c & 0x80000000u)
                        continue; /* already done */
                pc[np++] = (Cand){.id = t, .logit = penalised(&s->params, logits[t], c)};
                s->counts[t] = c | 0x80000000u;
        }
        size_t nh = scan_top(logits, s->n_vocab, k + m, s->cand), nc = 0;
        /* The heap's tokens the penalties did not touch, then the touched ones that are still live. */
        for (size_t i = 0; i < nh; i++)
                if (!s->counts[s->cand[i].id])
                        s->cand[nc++] = s->cand[i];
        for (size_t i = 0; i < np; i++) {
                s->counts[pc[i].id] = 0;
                if (pc[i].logit > -INFINITY)
                        s->cand[nc++] = pc[i];
        }
        sort_cands(s, s->cand, nc);
        return nc < k ? nc : k;
}

/* Fills in p over cand[0..n) (sorted, so cand[0] has the highest logit). */
static void softmax(Cand *cand, size_t n) {
        double sum = 0;
        for (size_t i = 0; i < n; i++) {
                cand[i].p = expf(cand[i].logit - cand[0].logit);
                sum += cand[i].p;
        }
        for (size_t i = 0; i < n; i++)
                cand[i].p = (float)(cand[i].p / sum);
}

static size_t top_p(Cand *cand, size_t n, float p) {
        double cum = 0;
        softmax(cand, n);
        for (size_t i = 0; i < n; i++) {
                cum += cand[i].p;
                if (cum >= p)
                        return i + 1;
        }
        return n;
}

static size_t min_p(Cand *cand, size_t n, float p) {
        float floor = cand[0].logit + logf(p);
        size_t k = 1;
        while (k < n && cand[k].logit >= floor)
                k++;
        return k;
}

static int key_cmp(const void *a, const void *b) {
        const Cand *x = a, *y = b;
        if (x->key != y->key)
                return x->key < y->key ? -1 : 1;
        return x->id < y->id ? -1 : x->id > y->id;
}

/* Locally typical sampling: keep the tokens whose surprise (-log p) is closest to the distribution's
 * entropy, until their probability adds up to p; the survivors go back into logit order. */
static size_t typical_p(Cand *cand, size_t n, float p) {
        double entropy = 0, cum = 0;
        size_t k = n;

        softmax(cand, n);
        for (size_t i = 0; i < n; i++)
                if (cand[i].p > 0)
                        entropy -= cand[i].p * log(cand[i].p);
        for (size_t i = 0; i < n; i++)
                cand[i].key = cand[i].p > 0 ? (float)fabs(-log(cand[i].p) - entropy) : INFINITY;
        qsort(cand, n, sizeof(Cand), key_cmp);
        for (size_t i = 0; i < n; i++) {
                cum += cand[i].p;
                if (cum >= p) {
                        k = i + 1;
                        break;
                }
        }
        qsort(cand, k, sizeof(Cand), cand_cmp);
        return k;
}

int32_t engine_sampler_sample(EngineSampler *s, const float *logits) {
        const EngineSamplerParams *p = &s->params;
        size_t n = s->n_vocab;
        Cand *cand = s->cand;
        double r, cum = 0;

        /* Greedy decoding is the best one; top_k the best k. */
        const size_t k = p->temperature <= 0 ? 1 : p->top_k > 0 ? (size_t)p->top_k : 0;
        if (k > 0 && (n = top_after_penalties(s, logits, k)) != SIZE_MAX) {
                if (n == 0)
                        return -EINVAL;
                if (p->temperature <= 0)
                        return cand[0].id;
        } else {
                float max = -INFINITY;
                int32_t best = -1;

                for (uint32_t i = 0; i < s->n_vocab; i++)
                        cand[i] = (Cand){.id = (int32_t)i, .logit = logits[i]};
                penalize(s);
                for (uint32_t i = 0; i < s->n_vocab; i++)
                        if (cand[i].logit > max) {
                                max = cand[i].logit;
                                best = (int32_t)i;
                        }
                if (best < 0)
                        return -EINVAL;
                if (p->temperature <= 0)
                        return best;

                /* Tokens at -infinity (masked out) never take part. Where min_p is the only filter that
                 * follows, what it keeps (the sorted prefix down to max + log(min_p)) is all that needs
                 * sorting. */
                const float floor = p->min_p > 0 && p->top_p >= 1 && p->typical_p >= 1 ? max + logf(p->min_p)
                                                                                      : -INFINITY;
                size_t live = 0;
                for (size_t i = 0; i < s->n_vocab; i++)
                        if (cand[i].logit > -INFINITY && cand[i].logit >= floor)
                                cand[live++] = cand[i];
                n = live;
                sort_cands(s, cand, n);
                if (p->top_k > 0 && (size_t)p->top_k < n)
                        n = (size_t)p->top_k;
        }
        if (p->typical_p < 1)
                n = typical_p(cand, n, p->typical_p);
        if (p->top_p < 1)
                n = top_p(cand, n, p->top_p);
        if (p->min_p > 0)
                n = min_p(cand, n, p->min_p);

        for (size_t i = 0; i < n; i++)
                cand[i].logit /= p->temperature;
        softmax(cand, n);
        r = rng_uniform(s->rng);
        for (size_t i = 0; i < n; i++) {
                cum += cand[i].p;
                if (r < cum)
                        return cand[i].id;
        }
        /* Rounding left the sum a hair under 1 and r above it. */
        return cand[n - 1].id;
}
