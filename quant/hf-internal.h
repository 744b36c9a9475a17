/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * quant: what the Hugging Face reader and converter share: reading small files and JSON from a folder given
 * as a descriptor. Any thread; each call stands alone.
 */

#include <json.h>

#include "quant.h"

static inline void json_object_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

/* Reads name under dirfd (at most max bytes) into a NUL-terminated buffer the caller frees. */
int quant_read_file_at(int dirfd, const char *name, size_t max, char **ret, size_t *ret_len, QdError *err);

/* Reads name under dirfd as a JSON object; -EBADMSG with a message when it is not one. */
int quant_read_json_at(int dirfd, const char *name, json_object **ret, QdError *err);

/* o's member key when it is a string, else NULL (also for o NULL). */
const char *quant_json_str(json_object *o, const char *key);

/* Whether o has a member key that reads as true (json-c's boolean of it). */
bool quant_json_true(json_object *o, const char *key);

/* A piece's type as sentencepiece_model.proto numbers them; GGUF's tokenizer.ggml.token_type shares them. */
enum {
        SPM_TYPE_NORMAL = 1,
        SPM_TYPE_UNKNOWN = 2,
        SPM_TYPE_CONTROL = 3,
        SPM_TYPE_USER_DEFINED = 4,
        SPM_TYPE_UNUSED = 5,
        SPM_TYPE_BYTE = 6,
};

/* TrainerSpec.ModelType. */
enum {
        SPM_MODEL_UNIGRAM = 1,
        SPM_MODEL_BPE = 2,
};

typedef struct SpmPiece {
        char *text; /* UTF-8, "▁" for a space */
        float score;
        int32_t type; /* SPM_TYPE_* */
} SpmPiece;

/* What a GGUF "llama" vocabulary takes from a SentencePiece model (tokenizer.model). */
typedef struct SpmModel {
        SpmPiece *pieces; /* (n_pieces), by id */
        size_t n_pieces;
        int32_t model_type; /* SPM_MODEL_* */
        bool byte_fallback;
        int32_t unk_id, bos_id, eos_id, pad_id; /* -1: none */
        bool add_dummy_prefix;                  /* a space is put in front of the text */
} SpmModel;

/* Parses a serialized sentencepiece ModelProto of size bytes. -EBADMSG with a message when it is not one,
 * -EOPNOTSUPP for a word or character model, -ENOMEM. */
int spm_model_parse(const void *data, size_t size, SpmModel **ret, QdError *err);

SpmModel *spm_model_free(SpmModel *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(SpmModel *, spm_model_free);

/* Writes the tokenizer.ggml.* keys and the chat template for the Hugging Face folder dirfd into w: GGUF's
 * "llama" tokenizer from tokenizer.model (preferred) or a SentencePiece-style tokenizer.json, else "gpt2"
 * from a byte-level BPE tokenizer.json, whose pre-tokenizer is pre when given. n_vocab is the model's
 * embedding rows. -EBADMSG or -EOPNOTSUPP with a message, -ENOENT without a tokenizer, -ENOMEM. */
int quant_convert_vocab(GgufWriter *w, int dirfd, json_object *cfg, uint32_t n_vocab, const char *pre,
                        QdError *err);
