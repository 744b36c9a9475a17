/* SPDX-License-Identifier: MIT */
/*
 * Time of one engine_sampler_sample() with Ollama's default options (temperature 0.8, top_k 40, top_p 0.9,
 * repeat_penalty 1.1 over the last 64 tokens), greedy, and top_k off with min_p 0.05 (top_p 1, the usual
 * min_p setting), over random logits of vocabularies the size of
 * Llama 2's, SmolLM2's and Llama 3's, with 64 tokens of history. The host cost of every sampled token on
 * either backend. bench/sampler-compare.sh runs it against the sampler of another revision.
 *
 *   sampler-bench [REPS]
 */

#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "engine.h"

int main(int argc, char **argv) {
        const uint32_t vocabs[] = {32000, 49152, 128256};
        unsigned reps = argc > 1 ? (unsigned)atoi(argv[1]) : 500;

        if (reps == 0)
                reps = 1;
        for (size_t v = 0; v < ELEMENTSOF(vocabs); v++)
                for (int mode = 0; mode < 3; mode++) {
                        const uint32_t n = vocabs[v];
                        float *l = malloc(n * sizeof(float));
                        EngineSamplerParams p = engine_sampler_params_default();
                        EngineSampler *s = NULL;
                        uint64_t x = 1, t0, sum = 0;

                        if (!l)
                                return EXIT_FAILURE;
                        for (uint32_t i = 0; i < n; i++) {
                                x = x * 6364136223846793005ull + 1442695040888963407ull;
                                l[i] = (float)(x >> 40) / (float)(1 << 24) * 20.0f - 10.0f;
                        }
                        p.seed = 42;
                        if (mode == 1)
                                p.temperature = 0;
                        if (mode == 2)
                                p.top_k = 0, p.top_p = 1, p.min_p = 0.05f;
                        if (engine_sampler_new(&p, n, &s) < 0)
                                return EXIT_FAILURE;
                        for (uint32_t i = 0; i < 64; i++)
                                engine_sampler_accept(s, (int32_t)(i * 7919u % n));
                        t0 = now_ns();
                        const unsigned nr = mode == 2 ? (reps + 9) / 10 : reps; /* slow before */
                        for (unsigned r = 0; r < nr; r++)
                                sum += (uint64_t)engine_sampler_sample(s, l);
                        printf("vocab %6u %-8s %9.2f us a token (checksum %llu)\n", n,
                               mode == 0 ? "default" : mode == 1 ? "greedy" : "min_p", (now_ns() - t0) / 1e3 / nr,
                               (unsigned long long)sum);
                        engine_sampler_free(s);
                        free(l);
                }
        return EXIT_SUCCESS;
}
