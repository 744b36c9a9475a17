/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the GGUF reader: any input must parse or fail cleanly; parsed files are walked whole. */

#include "engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Gguf *g = NULL;
        QdError err = {};

        if (gguf_open_memory(data, size, &g, &err) < 0)
                return 0;
        /* Touch everything the reader vouched for. */
        volatile uint8_t sink = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const uint8_t *p = g->tensors[i].data;
                if (g->tensors[i].size > 0)
                        sink ^= p[0] ^ p[g->tensors[i].size - 1];
        }
        for (uint64_t i = 0; i < g->n_kv; i++)
                if (g->kv[i].value.type == GGUF_TYPE_STRING && g->kv[i].value.str.len > 0)
                        sink ^= (uint8_t)g->kv[i].value.str.data[g->kv[i].value.str.len - 1];
        (void)sink;
        gguf_free(g);
        return 0;
}
