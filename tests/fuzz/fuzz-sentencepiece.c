/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the SentencePiece model reader (a Hugging Face folder's tokenizer.model, protobuf): any
 * input must parse or fail cleanly; a parsed model's pieces are whole strings. */

#include <string.h>

#include "hf-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        SpmModel *m = NULL;
        QdError err = {};
        volatile size_t sink = 0;

        if (spm_model_parse(data, size, &m, &err) < 0)
                return 0;
        for (size_t i = 0; i < m->n_pieces; i++)
                sink += strlen(m->pieces[i].text) + (size_t)m->pieces[i].type;
        (void)sink;
        spm_model_free(m);
        return 0;
}
