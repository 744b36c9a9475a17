/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Shared between the files of client/ and its tests, not a public interface: request packing and the verbs
 * that the chat reuses.
 */

#include <msgpack.h>

#include "client.h"

/* A msgpack buffer with its packer. */
typedef struct Packer {
        msgpack_sbuffer sb;
        msgpack_packer pk;
} Packer;

void packer_open(Packer *p);
void packer_close(Packer *p);

/* Packs a ParamSet as an options map; a repeatable parameter (stop) becomes an array. */
int pack_options(msgpack_packer *pk, const ParamSet *s);

/* Packs Create's params: the Modelfile's parts, with fd_param ("gguf", "hf_dir" or "archive"): 0 (the first
 * descriptor), or with fd_param NULL "from": NAME. */
int qctl_pack_create(msgpack_packer *pk, const char *name, const Modelfile *mf, const char *fd_param,
                     const char *quantize);

/* Connects on first use. */
int qctl_connect(Qctl *q, QdError *e);

int qctl_show_model(Qctl *q, const char *model, ShowWhat what, bool verbose, bool json, QdError *e);
/* Pull or Push with progress. */
int qctl_transfer(Qctl *q, const char *method, const char *model, bool insecure, QdError *e);
/* Create from a parsed Modelfile; file names it in messages. */
int qctl_create(Qctl *q, const char *name, const Modelfile *mf, const char *file, const char *quantize,
                QdError *e);

/* qctl run: one prompt, or the interactive chat (run.c). */
int verb_run(Qctl *q, Command *c, QdError *e);
