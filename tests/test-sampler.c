/* SPDX-License-Identifier: MIT */
/*
 * Sampling options, each shown to change what is drawn: distributions over many draws with a fixed seed
 * against the probabilities worked out by hand, filters that must exclude tokens, penalties that must move
 * the argmax.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>

#include "engine.h"

#define DRAWS 20000

static EngineSamplerParams plain(void) {
        /* Every filter and penalty off, temperature 1: draws follow softmax(logits). */
        EngineSamplerParams p = engine_sampler_params_default();
        p.temperature = 1;
        p.top_k = 0;
        p.top_p = 1;
        p.min_p = 0;
        p.typical_p = 1;
        p.repeat_penalty = 1;
        p.seed = 42;
        return p;
}

/* Logits whose softmax is 0.5, 0.3, 0.2 (and nothing for the -infinity ones). */
static void base_logits(float *l, size_t n) {
        l[0] = logf(0.5f);
        l[1] = logf(0.3f);
        l[2] = logf(0.2f);
        for (size_t i = 3; i < n; i++)
                l[i] = -INFINITY;
}

/* Draws DRAWS tokens and checks the frequencies of ids 0..n-1 against want within tol. */
static void expect_distribution(const EngineSamplerParams *p, const float *logits, uint32_t n_vocab,
                                const double *want, size_t n, double tol) {
        _cleanup_(engine_sampler_freep) EngineSampler *s = NULL;
        unsigned counts[16] = {};

        assert_int_equal(engine_sampler_new(p, n_vocab, &s), 0);
        for (int i = 0; i < DRAWS; i++) {
                int32_t t = engine_sampler_sample(s, logits);
                assert_true(t >= 0 && (uint32_t)t < n_vocab && t < 16);
                counts[t]++;
        }
        for (size_t i = 0; i < n; i++) {
                double f = counts[i] / (double)DRAWS;
                if (fabs(f - want[i]) > tol)
                        fail_msg("token %zu drawn %.4f of the time, want %.4f", i, f, want[i]);
        }
}

static void test_defaults(void **state) {
        EngineSamplerParams p = engine_sampler_params_default();

        assert_float_equal(p.temperature, 0.8, 1e-6);
        assert_int_equal(p.top_k, 40);
        assert_float_equal(p.top_p, 0.9, 1e-6);
        assert_float_equal(p.min_p, 0.0, 1e-6);
        assert_float_equal(p.typical_p, 1.0, 1e-6);
        assert_float_equal(p.repeat_penalty, 1.1, 1e-6);
        assert_int_equal(p.repeat_last_n, 64);
        assert_float_equal(p.presence_penalty, 0.0, 1e-6);
        assert_float_equal(p.frequency_penalty, 0.0, 1e-6);
        assert_true(p.seed == ENGINE_SAMPLER_SEED_RANDOM);
        assert_int_equal(engine_sampler_params_check(&p, NULL), 0);
}

static void test_bad_params(void **state) {
        static const struct {
                int which;
                float value;
                const char *msg;
        } cases[] = {
                {0, -0.5f, "temperature cannot be -0.5"},    {0, NAN, "temperature cannot be nan"},
                {1, -0.1f, "top_p cannot be -0.1"},          {2, 1.5f, "min_p cannot be 1.5"},
                {3, 2.0f, "typical_p cannot be 2"},          {4, 0.0f, "repeat_penalty cannot be 0"},
                {4, -1.0f, "repeat_penalty cannot be -1"},   {5, INFINITY, "presence_penalty cannot be inf"},
                {6, NAN, "frequency_penalty cannot be nan"}, {7, -2, "repeat_last_n cannot be -2"},
        };
        EngineSampler *s = NULL;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                EngineSamplerParams p = plain();
                QdError err = {};
                switch (cases[i].which) {
                case 0:
                        p.temperature = cases[i].value;
                        break;
                case 1:
                        p.top_p = cases[i].value;
                        break;
                case 2:
                        p.min_p = cases[i].value;
                        break;
                case 3:
                        p.typical_p = cases[i].value;
                        break;
                case 4:
                        p.repeat_penalty = cases[i].value;
                        break;
                case 5:
                        p.presence_penalty = cases[i].value;
                        break;
                case 6:
                        p.frequency_penalty = cases[i].value;
                        break;
                default:
                        p.repeat_last_n = (int32_t)cases[i].value;
                        break;
                }
                assert_int_equal(engine_sampler_params_check(&p, &err), -EINVAL);
                if (!strstr(err.msg, cases[i].msg))
                        fail_msg("case %zu: '%s', want '%s'", i, err.msg, cases[i].msg);
                assert_int_equal(engine_sampler_new(&p, 8, &s), -EINVAL);
                assert_null(s);
        }
        EngineSamplerParams p = plain();
        assert_int_equal(engine_sampler_new(&p, 0, &s), -EINVAL);
}

static void test_greedy(void **state) {
        EngineSamplerParams p = plain();
        _cleanup_(engine_sampler_freep) EngineSampler *s = NULL;
        float l[6] = {0.5f, 2.0f, -1.0f, 2.0f, NAN, 1.0f};
        float masked[3] = {-INFINITY, -INFINITY, NAN};

        p.temperature = 0;
        p.seed = ENGINE_SAMPLER_SEED_RANDOM; /* greedy must not depend on it */
        assert_int_equal(engine_sampler_new(&p, 6, &s), 0);
        /* The highest logit, the lower id on a tie, NaN never. */
        for (int i = 0; i < 100; i++)
                assert_int_equal(engine_sampler_sample(s, l), 1);
        s = engine_sampler_free(s);
        assert_int_equal(engine_sampler_new(&p, 3, &s), 0);
        assert_int_equal(engine_sampler_sample(s, masked), -EINVAL);
}

static void test_temperature(void **state) {
        EngineSamplerParams p = plain();
        float l[8];
        const double t1[] = {0.5, 0.3, 0.2};
        const double t05[] = {0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38};            /* p² renormalised */
        const double t2[] = {0.7071 / 1.7016, 0.5477 / 1.7016, 0.4472 / 1.7016}; /* √p renormalised */

        base_logits(l, 8);
        expect_distribution(&p, l, 8, t1, 3, 0.015);
        p.temperature = 0.5f;
        expect_distribution(&p, l, 8, t05, 3, 0.015);
        p.temperature = 2.0f;
        expect_distribution(&p, l, 8, t2, 3, 0.015);
}

static void test_top_k(void **state) {
        EngineSamplerParams p = plain();
        float l[64];
        const double want[] = {0.625, 0.375, 0};

        base_logits(l, 64);
        /* Plenty of finite tokens, so that the heap path runs. */
        for (size_t i = 3; i < 64; i++)
                l[i] = -10.0f - (float)i;
        p.top_k = 2;
        expect_distribution(&p, l, 64, want, 3, 0.015);
        p.top_k = 1;
        const double only[] = {1, 0, 0};
        expect_distribution(&p, l, 64, only, 3, 0);
}

static void test_top_p(void **state) {
        EngineSamplerParams p = plain();
        float l[3];
        const double two[] = {0.625, 0.375, 0}, one[] = {1, 0, 0};

        base_logits(l, 3);
        p.top_p = 0.7f; /* 0.5 < 0.7 <= 0.8: the first two */
        expect_distribution(&p, l, 3, two, 3, 0.015);
        p.top_p = 0.45f; /* the first one reaches it */
        expect_distribution(&p, l, 3, one, 3, 0);
}

static void test_min_p(void **state) {
        EngineSamplerParams p = plain();
        float l[3];
        const double two[] = {0.625, 0.375, 0}, one[] = {1, 0, 0};

        base_logits(l, 3);
        p.min_p = 0.5f; /* at least 0.25: drops 0.2 */
        expect_distribution(&p, l, 3, two, 3, 0.015);
        p.min_p = 0.7f; /* at least 0.35: drops 0.3 too */
        expect_distribution(&p, l, 3, one, 3, 0);
}

static void test_typical_p(void **state) {
        EngineSamplerParams p = plain();
        float l[3];
        /* Entropy 1.0297; surprises 0.693, 1.204, 1.609: token 1 is the most typical, then 0, then 2. */
        const double one[] = {0, 1, 0}, two[] = {0.625, 0.375, 0};

        base_logits(l, 3);
        p.typical_p = 0.25f;
        expect_distribution(&p, l, 3, one, 3, 0);
        p.typical_p = 0.75f;
        expect_distribution(&p, l, 3, two, 3, 0.015);
}

static int32_t greedy_after(EngineSamplerParams p, const float *l, uint32_t n, const int32_t *hist,
                            size_t n_hist) {
        _cleanup_(engine_sampler_freep) EngineSampler *s = NULL;

        p.temperature = 0;
        assert_int_equal(engine_sampler_new(&p, n, &s), 0);
        for (size_t i = 0; i < n_hist; i++)
                engine_sampler_accept(s, hist[i]);
        return engine_sampler_sample(s, l);
}

static void test_repeat_penalty(void **state) {
        EngineSamplerParams p = plain();
        const float pos[4] = {2.0f, 1.9f, 0, 0}, neg[4] = {-1.0f, -1.05f, -5, -5};
        const int32_t once[] = {0}, old[] = {0, 2, 3};

        assert_int_equal(greedy_after(p, pos, 4, once, 1), 0);
        p.repeat_penalty = 1.1f; /* 2.0 / 1.1 = 1.82 < 1.9 */
        assert_int_equal(greedy_after(p, pos, 4, once, 1), 1);
        /* A negative logit is multiplied: -1.0 × 1.1 = -1.1 < -1.05. */
        assert_int_equal(greedy_after(p, neg, 4, once, 1), 1);
        /* Out of the window of 2, token 0 is not penalised; with -1 (all) or a window of 3 it is. */
        p.repeat_last_n = 2;
        assert_int_equal(greedy_after(p, pos, 4, old, 3), 0);
        p.repeat_last_n = 3;
        assert_int_equal(greedy_after(p, pos, 4, old, 3), 1);
        p.repeat_last_n = -1;
        assert_int_equal(greedy_after(p, pos, 4, old, 3), 1);
        p.repeat_last_n = 0;
        assert_int_equal(greedy_after(p, pos, 4, old, 3), 0);
        /* Ids out of range in the history are ignored. */
        const int32_t bad[] = {-1, 4, 99};
        p.repeat_last_n = 64;
        assert_int_equal(greedy_after(p, pos, 4, bad, 3), 0);
}

static void test_presence_frequency(void **state) {
        EngineSamplerParams p = plain();
        const float l[3] = {1.0f, 0.8f, 0};
        const int32_t twice[] = {0, 0}, once[] = {0};

        p.presence_penalty = 0.1f; /* 0.9 > 0.8, however often */
        assert_int_equal(greedy_after(p, l, 3, twice, 2), 0);
        p.presence_penalty = 0.3f; /* 0.7 */
        assert_int_equal(greedy_after(p, l, 3, once, 1), 1);
        p.presence_penalty = 0;
        p.frequency_penalty = 0.15f; /* once: 0.85 > 0.8; twice: 0.7 < 0.8 */
        assert_int_equal(greedy_after(p, l, 3, once, 1), 0);
        assert_int_equal(greedy_after(p, l, 3, twice, 2), 1);
        /* A negative penalty encourages repeating. */
        p.frequency_penalty = -0.5f;
        const float l2[3] = {0.8f, 1.0f, 0};
        assert_int_equal(greedy_after(p, l2, 3, once, 1), 0);
}

static void draw_sequence(uint64_t seed, int32_t *out, size_t n) {
        EngineSamplerParams p = plain();
        _cleanup_(engine_sampler_freep) EngineSampler *s = NULL;
        float l[100];

        for (size_t i = 0; i < 100; i++)
                l[i] = sinf((float)i) * 2;
        p.seed = seed;
        assert_int_equal(engine_sampler_new(&p, 100, &s), 0);
        for (size_t i = 0; i < n; i++)
                out[i] = engine_sampler_sample(s, l);
        /* reset restarts the PRNG: the first draw comes again. */
        engine_sampler_reset(s);
        assert_int_equal(engine_sampler_sample(s, l), out[0]);
}

static void test_seed(void **state) {
        int32_t a[200], b[200], c[200];
        size_t differ = 0;

        draw_sequence(7, a, 200);
        draw_sequence(7, b, 200);
        draw_sequence(8, c, 200);
        assert_memory_equal(a, b, sizeof(a));
        for (size_t i = 0; i < 200; i++)
                differ += a[i] != c[i];
        assert_true(differ > 100);
}

/* The penalised logit of token t after history[from..n), as engine.h defines the penalties. */
static float penalised(const EngineSamplerParams *p, const float *l, const int32_t *hist, size_t n, int32_t t) {
        size_t from = p->repeat_last_n < 0 || (size_t)p->repeat_last_n >= n ? 0 : n - (size_t)p->repeat_last_n;
        unsigned c = 0;

        for (size_t i = from; i < n && p->repeat_last_n != 0; i++)
                c += hist[i] == t;
        if (c == 0)
                return l[t];
        float v = l[t] > 0 ? l[t] / p->repeat_penalty : l[t] * p->repeat_penalty;
        return v - ((float)c * p->frequency_penalty + p->presence_penalty);
}

/*
 * top_k and greedy decoding take the best k without copying the vocabulary (sampler.c's DESIGN): they must
 * draw exactly what the full path draws from the same candidates. For random logits with ties, NaNs and
 * -infinities, histories with repeats and every filter and penalty (negative ones too), the sampler with
 * top_k = k on the logits against one with top_k off on logits where every token outside the best k after
 * the penalties is -infinity, the same seed, 60 steps each accepting its draw; greedy against the argmax
 * worked out here.
 */
static const float *order_pv;

static int order_cmp(const void *a, const void *b) {
        const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
        if (order_pv[x] != order_pv[y])
                return order_pv[x] > order_pv[y] ? -1 : 1;
        return x < y ? -1 : x > y;
}

static void test_top_k_exact(void **state) {
        enum { V = 9000 };
        static float l[V], masked[V];
        static float pv[V];
        static int32_t order[V];
        /* 2500: the heap path for top_k, and more than 1024 live tokens for the full path's radix sort;
         * 4600: the full path for both */
        const int32_t ks[] = {1, 5, 40, 300, 2500, 4600};
        uint64_t x = 12345;

        for (size_t round = 0; round < 24; round++) {
                EngineSamplerParams p = engine_sampler_params_default();
                p.seed = 1000 + round;
                p.top_k = ks[round % ELEMENTSOF(ks)];
                p.temperature = round % 6 == 5 ? 0 : 0.7f + 0.1f * (float)(round % 3);
                p.top_p = round % 4 == 1 ? 0.8f : 1;
                p.min_p = round % 4 == 2 ? 0.05f : 0;
                p.typical_p = round % 4 == 3 ? 0.9f : 1;
                p.repeat_penalty = round % 2 ? 1.3f : 0.8f;
                p.presence_penalty = round % 3 == 0 ? 0.5f : -0.25f;
                p.frequency_penalty = round % 5 == 0 ? 0.2f : 0;
                p.repeat_last_n = round % 7 == 6 ? -1 : 48;
                for (size_t i = 0; i < V; i++) {
                        x = x * 6364136223846793005ull + 1442695040888963407ull;
                        uint32_t u = (uint32_t)(x >> 33);
                        /* coarse values so that many tie (+0 with -0 too); some masked out, a few NaN; every
                         * eighth round flat (0 and -1/64), so that draws land among the ties */
                        const int span = round % 8 == 2 ? 2 : 4001;
                        l[i] = u % 97 == 0 ? -INFINITY : u % 211 == 0 ? NAN : u % 7 == 0 ? -0.0f
                                                                               : (float)((int)(u % span) - span / 2) / 64.0f;
                }
                _cleanup_(engine_sampler_freep) EngineSampler *a = NULL, *b = NULL;
                EngineSamplerParams pb = p;
                pb.top_k = 0;
                assert_int_equal(engine_sampler_new(&p, V, &a), 0);
                assert_int_equal(engine_sampler_new(&pb, V, &b), 0);
                int32_t hist[256];
                size_t nh = 0;
                /* a prompt with repeats, biased to the likely tokens so that the penalties matter */
                for (; nh < 40; nh++) {
                        x = x * 6364136223846793005ull + 1442695040888963407ull;
                        hist[nh] = (int32_t)((x >> 33) % (nh % 2 ? 50 : V));
                        engine_sampler_accept(a, hist[nh]);
                        engine_sampler_accept(b, hist[nh]);
                }
                for (int step = 0; step < 60; step++) {
                        size_t live = 0;
                        for (int32_t t = 0; t < V; t++) {
                                pv[t] = penalised(&p, l, hist, nh, t);
                                if (pv[t] > -INFINITY)
                                        order[live++] = t;
                        }
                        size_t k = (size_t)p.top_k < live ? (size_t)p.top_k : live;
                        order_pv = pv;
                        qsort(order, live, sizeof(int32_t), order_cmp);
                        for (int32_t t = 0; t < V; t++)
                                masked[t] = -INFINITY;
                        for (size_t j = 0; j < k; j++)
                                masked[order[j]] = l[order[j]];
                        int32_t ta = engine_sampler_sample(a, l);
                        if (p.temperature <= 0) {
                                assert_int_equal(ta, order[0]);
                        } else {
                                int32_t tb = engine_sampler_sample(b, masked);
                                if (ta != tb)
                                        fail_msg("round %zu step %d (top_k %d): %d against %d", round, step,
                                                 p.top_k, ta, tb);
                        }
                        engine_sampler_accept(a, ta);
                        engine_sampler_accept(b, ta);
                        if (nh < ELEMENTSOF(hist))
                                hist[nh++] = ta;
                        else
                                break;
                }
        }
}

/* Every logit -infinity or NaN: no token to draw, greedy or not, on both paths. */
static void test_no_candidates(void **state) {
        float l[64];
        for (size_t i = 0; i < 64; i++)
                l[i] = i % 2 ? NAN : -INFINITY;
        for (int k = 0; k <= 5; k += 5)
                for (int greedy = 0; greedy <= 1; greedy++) {
                        EngineSamplerParams p = engine_sampler_params_default();
                        _cleanup_(engine_sampler_freep) EngineSampler *s = NULL;
                        p.top_k = k;
                        p.temperature = greedy ? 0 : 0.8f;
                        assert_int_equal(engine_sampler_new(&p, 64, &s), 0);
                        engine_sampler_accept(s, 3);
                        assert_int_equal(engine_sampler_sample(s, l), -EINVAL);
                }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),       cmocka_unit_test(test_bad_params),
                cmocka_unit_test(test_greedy),         cmocka_unit_test(test_temperature),
                cmocka_unit_test(test_top_k),          cmocka_unit_test(test_top_p),
                cmocka_unit_test(test_min_p),          cmocka_unit_test(test_typical_p),
                cmocka_unit_test(test_repeat_penalty), cmocka_unit_test(test_presence_frequency),
                cmocka_unit_test(test_seed),           cmocka_unit_test(test_top_k_exact),
                cmocka_unit_test(test_no_candidates),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
