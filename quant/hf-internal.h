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
