/* SPDX-License-Identifier: MIT */
/*
 * sentencepiece: reads a SentencePiece model (the tokenizer.model of Llama 1/2, Mistral, TinyLlama), a
 * serialized sentencepiece.ModelProto, for the few fields a GGUF "llama" vocabulary is made of: every piece
 * with its score and type, the trainer's model type, byte fallback and special ids, and whether the
 * normalizer adds a dummy space in front.
 *
 * DESIGN: the protobuf wire format is small (a tag varint of field number and wire type, then a varint,
 * 4 or 8 fixed bytes, or a length and that many bytes), so it is read here by hand, with the field numbers
 * of sentencepiece_model.proto. libprotobuf-c would need code generated from the .proto file at build time
 * for four messages of which we read eleven fields; a bounds-checked reader of 100 lines is less to carry.
 * Unknown fields are skipped as protobuf requires; every length is checked against what is left of its
 * message, so a truncated or corrupt file is refused with the offset where it broke, never read past.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hf-internal.h"

enum {
        WIRE_VARINT = 0,
        WIRE_I64 = 1,
        WIRE_LEN = 2,
        WIRE_I32 = 5,
};

/* ModelProto, ModelProto.SentencePiece, TrainerSpec and NormalizerSpec field numbers. */
enum {
        MODEL_PIECES = 1,
        MODEL_TRAINER_SPEC = 2,
        MODEL_NORMALIZER_SPEC = 3,
        PIECE_PIECE = 1,
        PIECE_SCORE = 2,
        PIECE_TYPE = 3,
        TRAINER_MODEL_TYPE = 3,
        TRAINER_BYTE_FALLBACK = 35,
        TRAINER_UNK_ID = 40,
        TRAINER_BOS_ID = 41,
        TRAINER_EOS_ID = 42,
        TRAINER_PAD_ID = 43,
        NORMALIZER_ADD_DUMMY_PREFIX = 3,
};

/* A message being read: [p, end) within the file that starts at base. */
typedef struct Pb {
        const uint8_t *base, *p, *end;
} Pb;

/* One field: its number, wire type, and value (varint or fixed) or bytes (WIRE_LEN). */
typedef struct PbField {
        uint32_t number, wire;
        uint64_t value;
        Pb bytes;
} PbField;

static int pb_fail(const Pb *b, QdError *err, const char *what) {
        return qd_error_set(err, EBADMSG, "tokenizer.model is not a SentencePiece model: %s at byte %zu.",
                            what, (size_t)(b->p - b->base));
}

static int pb_varint(Pb *b, uint64_t *ret, QdError *err) {
        uint64_t v = 0;

        /* At most ten bytes carry 64 bits. */
        for (unsigned shift = 0; shift < 70; shift += 7) {
                uint8_t c;

                if (b->p >= b->end)
                        return pb_fail(b, err, "a number runs past the end");
                c = *b->p++;
                v |= (uint64_t)(c & 0x7f) << shift;
                if (!(c & 0x80)) {
                        *ret = v;
                        return 0;
                }
        }
        return pb_fail(b, err, "a number is longer than ten bytes");
}

/* Reads the next field of b; returns 0 at the end of the message, 1 with *f filled. */
static int pb_next(Pb *b, PbField *f, QdError *err) {
        uint64_t tag, len;
        int r;

        if (b->p >= b->end)
                return 0;
        r = pb_varint(b, &tag, err);
        if (r < 0)
                return r;
        if (tag >> 3 == 0 || tag >> 3 > UINT32_MAX)
                return pb_fail(b, err, "a field number is out of range");
        *f = (PbField){.number = (uint32_t)(tag >> 3), .wire = (uint32_t)(tag & 7)};
        switch (f->wire) {
        case WIRE_VARINT:
                return pb_varint(b, &f->value, err) < 0 ? -EBADMSG : 1;
        case WIRE_I64:
        case WIRE_I32: {
                size_t n = f->wire == WIRE_I64 ? 8 : 4;

                if ((size_t)(b->end - b->p) < n)
                        return pb_fail(b, err, "a fixed-size field runs past the end");
                /* Little-endian on the wire. */
                for (size_t i = 0; i < n; i++)
                        f->value |= (uint64_t)b->p[i] << (8 * i);
                b->p += n;
                return 1;
        }
        case WIRE_LEN:
                r = pb_varint(b, &len, err);
                if (r < 0)
                        return r;
                if (len > (uint64_t)(b->end - b->p))
                        return pb_fail(b, err, "a field's length runs past the end");
                f->bytes = (Pb){.base = b->base, .p = b->p, .end = b->p + len};
                b->p += len;
                return 1;
        default:
                /* 3 and 4 are the deprecated groups, which sentencepiece never writes; 6 and 7 are unused.
                 */
                return pb_fail(b, err, "a field has an unknown wire type");
        }
}

static int pb_expect(const Pb *b, const PbField *f, uint32_t wire, QdError *err) {
        if (f->wire == wire)
                return 0;
        return qd_error_set(err, EBADMSG,
                            "tokenizer.model is not a SentencePiece model: field %" PRIu32
                            " has the wrong wire type before byte %zu.",
                            f->number, (size_t)(b->p - b->base));
}

static int read_piece(Pb *msg, size_t index, SpmPiece *ret, QdError *err) {
        PbField f;
        int r;

        *ret = (SpmPiece){.type = SPM_TYPE_NORMAL};
        while ((r = pb_next(msg, &f, err)) > 0)
                switch (f.number) {
                case PIECE_PIECE: {
                        size_t len = (size_t)(f.bytes.end - f.bytes.p);

                        if ((r = pb_expect(msg, &f, WIRE_LEN, err)) < 0)
                                return r;
                        if (len == 0 || memchr(f.bytes.p, 0, len))
                                return qd_error_set(err, EBADMSG,
                                                    "tokenizer.model's piece %zu is empty or contains a NUL "
                                                    "byte.",
                                                    index);
                        free(ret->text);
                        ret->text = strndup((const char *)f.bytes.p, len);
                        if (!ret->text)
                                return -ENOMEM;
                        break;
                }
                case PIECE_SCORE: {
                        uint32_t u = (uint32_t)f.value;

                        if ((r = pb_expect(msg, &f, WIRE_I32, err)) < 0)
                                return r;
                        memcpy(&ret->score, &u, sizeof(u));
                        break;
                }
                case PIECE_TYPE:
                        if ((r = pb_expect(msg, &f, WIRE_VARINT, err)) < 0)
                                return r;
                        if (f.value < SPM_TYPE_NORMAL || f.value > SPM_TYPE_BYTE)
                                return qd_error_set(
                                        err, EBADMSG,
                                        "tokenizer.model's piece %zu has the unknown type %" PRIu64 ".",
                                        index, f.value);
                        ret->type = (int32_t)f.value;
                        break;
                default:
                        break;
                }
        if (r < 0)
                return r;
        if (!ret->text)
                return qd_error_set(err, EBADMSG, "tokenizer.model's piece %zu has no text.", index);
        return 0;
}

static int read_trainer_spec(Pb *msg, SpmModel *m, QdError *err) {
        PbField f;
        int r;

        while ((r = pb_next(msg, &f, err)) > 0) {
                int32_t *id = f.number == TRAINER_UNK_ID   ? &m->unk_id
                              : f.number == TRAINER_BOS_ID ? &m->bos_id
                              : f.number == TRAINER_EOS_ID ? &m->eos_id
                              : f.number == TRAINER_PAD_ID ? &m->pad_id
                                                           : NULL;

                if (id || f.number == TRAINER_MODEL_TYPE || f.number == TRAINER_BYTE_FALLBACK) {
                        if ((r = pb_expect(msg, &f, WIRE_VARINT, err)) < 0)
                                return r;
                }
                /* An int32 varint holds a negative number (pad_id -1) sign-extended to 64 bits. */
                if (id)
                        *id = (int32_t)(int64_t)f.value;
                else if (f.number == TRAINER_MODEL_TYPE)
                        m->model_type = (int32_t)f.value;
                else if (f.number == TRAINER_BYTE_FALLBACK)
                        m->byte_fallback = f.value != 0;
        }
        return r;
}

static int read_normalizer_spec(Pb *msg, SpmModel *m, QdError *err) {
        PbField f;
        int r;

        while ((r = pb_next(msg, &f, err)) > 0)
                if (f.number == NORMALIZER_ADD_DUMMY_PREFIX) {
                        if ((r = pb_expect(msg, &f, WIRE_VARINT, err)) < 0)
                                return r;
                        m->add_dummy_prefix = f.value != 0;
                }
        return r;
}

SpmModel *spm_model_free(SpmModel *m) {
        if (!m)
                return NULL;
        for (size_t i = 0; i < m->n_pieces; i++)
                free(m->pieces[i].text);
        free(m->pieces);
        free(m);
        return NULL;
}

int spm_model_parse(const void *data, size_t size, SpmModel **ret, QdError *err) {
        _cleanup_(spm_model_freep) SpmModel *m = NULL;
        Pb b = {.base = data, .p = data, .end = (const uint8_t *)data + size};
        size_t n = 0, cap = 0;
        PbField f;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        /* The proto's defaults, for fields the file leaves out. */
        m->model_type = SPM_MODEL_UNIGRAM;
        m->unk_id = 0;
        m->bos_id = 1;
        m->eos_id = 2;
        m->pad_id = -1;
        m->add_dummy_prefix = true;

        /* Count the pieces first, so that the array is allocated once. */
        for (Pb c = b; (r = pb_next(&c, &f, err)) > 0;)
                if (f.number == MODEL_PIECES)
                        cap++;
        if (r < 0)
                return r;
        if (cap == 0)
                return qd_error_set(err, EBADMSG,
                                    "tokenizer.model is not a SentencePiece model: it has no pieces.");
        m->pieces = calloc(cap, sizeof(SpmPiece));
        if (!m->pieces)
                return -ENOMEM;

        while ((r = pb_next(&b, &f, err)) > 0) {
                if (f.number != MODEL_PIECES && f.number != MODEL_TRAINER_SPEC &&
                    f.number != MODEL_NORMALIZER_SPEC)
                        continue;
                if ((r = pb_expect(&b, &f, WIRE_LEN, err)) < 0)
                        return r;
                if (f.number == MODEL_PIECES) {
                        r = read_piece(&f.bytes, n, &m->pieces[n], err);
                        /* Counted even when it failed, so that its text is freed. */
                        m->n_pieces = ++n;
                } else if (f.number == MODEL_TRAINER_SPEC)
                        r = read_trainer_spec(&f.bytes, m, err);
                else
                        r = read_normalizer_spec(&f.bytes, m, err);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        if (m->model_type != SPM_MODEL_UNIGRAM && m->model_type != SPM_MODEL_BPE)
                return qd_error_set(err, EOPNOTSUPP,
                                    "Cannot convert a SentencePiece model of type %" PRId32
                                    "; only unigram and BPE are known.",
                                    m->model_type);
        *ret = TAKE_PTR(m);
        return 0;
}
